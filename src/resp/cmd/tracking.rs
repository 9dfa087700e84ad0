//! CLIENT TRACKING, CLIENT CACHING, CLIENT GETREDIR and CLIENT
//! TRACKINGINFO, with Redis's options, checks and errors. The table they
//! change is `resp::tracking`.

use bytes::Bytes;

use super::{copy, eq, lossy, SYNTAX};
use crate::resp::client::Client;
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::resp::tracking::Mode;
use crate::resp::Shared;

/// CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p]... [BCAST] [OPTIN]
/// [OPTOUT] [NOLOOP].
pub(super) fn tracking(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) {
    let mut mode = Mode::default();
    let mut prefixes: Vec<Bytes> = Vec::new();
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        let a = &args[j];
        if eq(a, "redirect") && more {
            j += 1;
            if mode.redirect != 0 {
                return out.error("ERR A client can only redirect to a single other client");
            }
            let Some(id) = parse_i64(&args[j]) else {
                return out.error(super::NOT_INT);
            };
            if id <= 0 || sh.registry.get(id as u64).is_none() {
                return out.error("ERR The client ID you want redirect to does not exist");
            }
            mode.redirect = id as u64;
        } else if eq(a, "bcast") {
            mode.bcast = true;
        } else if eq(a, "optin") {
            mode.optin = true;
        } else if eq(a, "optout") {
            mode.optout = true;
        } else if eq(a, "noloop") {
            mode.noloop = true;
        } else if eq(a, "prefix") && more {
            j += 1;
            prefixes.push(copy(&args[j]));
        } else {
            return out.error(SYNTAX);
        }
        j += 1;
    }
    if eq(&args[2], "off") {
        sh.tracking.disable(c.id);
        c.tracking = None;
        c.caching = false;
        return out.ok();
    }
    if !eq(&args[2], "on") {
        return out.error(SYNTAX);
    }
    if !mode.bcast && !prefixes.is_empty() {
        return out.error("ERR PREFIX option requires BCAST mode to be enabled");
    }
    let old = c.tracking.clone();
    if old.as_ref().is_some_and(|o| o.bcast != mode.bcast) {
        return out.error(
            "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then \
             re-enabling it with a different mode.",
        );
    }
    if mode.bcast && (mode.optin || mode.optout) {
        return out.error("ERR OPTIN and OPTOUT are not compatible with BCAST");
    }
    if mode.optin && mode.optout {
        return out.error("ERR You can't specify both OPTIN mode and OPTOUT mode");
    }
    if old.as_ref().is_some_and(|o| (mode.optin && o.optout) || (mode.optout && o.optin)) {
        return out.error(
            "ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then \
             re-enabling it with a different mode.",
        );
    }
    if mode.bcast {
        let existing = sh.tracking.mode_of(c.id).map(|(_, _, p)| p).unwrap_or_default();
        for (i, p) in prefixes.iter().enumerate() {
            if let Some(e) = existing.iter().find(|e| overlap(e, p)) {
                return out.error(&format!(
                    "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must \
                     not overlap.",
                    lossy(p),
                    lossy(e)
                ));
            }
            if let Some(o) = prefixes[i + 1..].iter().find(|o| overlap(p, o)) {
                return out.error(&format!(
                    "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client \
                     must not overlap.",
                    lossy(p),
                    lossy(o)
                ));
            }
        }
    }
    let target = match mode.redirect {
        0 => None,
        id => sh.registry.get(id),
    };
    sh.tracking.enable(&c.handle, mode.clone(), target, prefixes);
    if mode.redirect != 0 && sh.registry.get(mode.redirect).is_none() {
        // The target closed since it was looked up, before `enable` could
        // be told of it.
        sh.tracking.gone(mode.redirect);
    }
    c.tracking = Some(mode);
    out.ok();
}

/// Whether one prefix starts the other (Redis's `stringCheckPrefix`).
fn overlap(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// CLIENT CACHING YES|NO: whether the next command's keys are tracked, in
/// OPTIN (YES) or OPTOUT (NO) mode.
pub(super) fn caching(c: &mut Client, args: &[Bytes], out: &mut Out) {
    let Some(mode) = &c.tracking else {
        return out.error(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT \
             mode enabled",
        );
    };
    if eq(&args[2], "yes") {
        if !mode.optin {
            return out.error("ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.");
        }
    } else if eq(&args[2], "no") {
        if !mode.optout {
            return out.error("ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.");
        }
    } else {
        return out.error(SYNTAX);
    }
    c.caching = true;
    out.ok();
}

/// CLIENT GETREDIR: the redirect target, 0 when tracking without one, -1
/// when not tracking.
pub(super) fn getredir(c: &mut Client, out: &mut Out) {
    out.int(c.tracking.as_ref().map_or(-1, |m| m.redirect as i64));
}

/// CLIENT TRACKINGINFO: flags, redirect and prefixes, as Redis lists them.
pub(super) fn trackinginfo(sh: &Shared, c: &mut Client, out: &mut Out) {
    let info = sh.tracking.mode_of(c.id);
    let mut flags: Vec<&str> = Vec::new();
    let (redirect, prefixes) = match &info {
        None => {
            flags.push("off");
            (-1, &[][..])
        }
        Some((m, broken, prefixes)) => {
            flags.push("on");
            if m.bcast {
                flags.push("bcast");
            }
            if m.optin {
                flags.push("optin");
                if c.caching {
                    flags.push("caching-yes");
                }
            }
            if m.optout {
                flags.push("optout");
                if c.caching {
                    flags.push("caching-no");
                }
            }
            if m.noloop {
                flags.push("noloop");
            }
            if *broken {
                flags.push("broken_redirect");
            }
            (m.redirect as i64, &prefixes[..])
        }
    };
    out.map(3);
    out.bulk(b"flags");
    out.set(flags.len());
    for f in flags {
        out.bulk(f.as_bytes());
    }
    out.bulk(b"redirect");
    out.int(redirect);
    out.bulk(b"prefixes");
    out.array(prefixes.len());
    for p in prefixes {
        out.bulk(p);
    }
}

/// What a tracking client does before it reads, holding the shard locks
/// of the keys it reads (see `resp::tracking`): records `keys` as tracked
/// when its mode tracks this read, and moves its pending invalidations
/// into `out`, ahead of the reply.
pub(super) fn before_reads<'k>(sh: &Shared, c: &Client, keys: impl IntoIterator<Item = &'k Bytes>, out: &mut Out) {
    remember_reads(sh, c, keys);
    pending_into(c, out);
}

/// Moves a tracking client's pending invalidations into `out`, ahead of
/// the reply about to be written.
pub(super) fn pending_into(c: &Client, out: &mut Out) {
    if c.tracking.is_some() {
        c.outbox.drain_into(out);
    }
}

/// Records `keys` as tracked for this client when its mode tracks this
/// read, holding their shard locks.
pub(super) fn remember_reads<'k>(sh: &Shared, c: &Client, keys: impl IntoIterator<Item = &'k Bytes>) {
    if c.tracking.as_ref().is_some_and(|mode| tracks_reads(mode, c.caching)) {
        sh.tracking.remember(c.id, keys);
    }
}

/// Whether a read by this client is tracked (default mode): always, but
/// in OPTIN mode only right after CLIENT CACHING YES, and in OPTOUT mode
/// not right after CLIENT CACHING NO.
fn tracks_reads(mode: &Mode, caching: bool) -> bool {
    if mode.bcast {
        return false;
    }
    if mode.optin {
        caching
    } else {
        !(mode.optout && caching)
    }
}
