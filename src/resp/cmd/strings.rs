//! String commands: GET, SET and their relatives.

use bytes::Bytes;

use super::{copy, eq, int_arg, value_of, write_error, wrong_args, Cx, NOT_INT, SYNTAX};
use crate::hlc::Stamp;
use crate::resp::notify::Hint;
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::resp::Shared;
use crate::store::Slot;
use crate::MeshError;

pub(super) fn get(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if cx.db.get_with(&args[1], |v| out.bulk_lent(v)).is_some() {
        cx.c.hits += 1;
    } else {
        cx.c.misses += 1;
        out.null();
    }
}

/// MGET: the keys are read as one (a transaction is seen whole or not at
/// all).
pub(super) fn mget(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let keys = &args[1..];
    out.array(keys.len());
    let (mut hits, mut misses) = (0, 0);
    cx.db.get_many_with(keys, |v| match v {
        Some(v) => {
            hits += 1;
            out.bulk_lent(v);
        }
        None => {
            misses += 1;
            out.null();
        }
    });
    cx.c.hits += hits;
    cx.c.misses += misses;
}

pub(super) fn set(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (mut cond, mut ttl, mut get) = (Cond::Always, Ttl::None, false);
    let mut expire: Option<(&[u8], &Bytes)> = None;
    let mut j = 3;
    while j < args.len() {
        let a = &args[j][..];
        let next = args.get(j + 1);
        if eq(a, "nx") && cond != Cond::Xx {
            cond = Cond::Nx;
        } else if eq(a, "xx") && cond != Cond::Nx {
            cond = Cond::Xx;
        } else if eq(a, "get") {
            get = true;
        } else if eq(a, "keepttl") && expire.is_none() {
            ttl = Ttl::Keep;
        } else if let Some(v) = next.filter(|_| {
            (eq(a, "ex") || eq(a, "px") || eq(a, "exat") || eq(a, "pxat")) && ttl != Ttl::Keep && expire.is_none()
        }) {
            expire = Some((a, v));
            j += 1;
        } else {
            return out.error(SYNTAX);
        }
        j += 1;
    }
    if let Some((unit, v)) = expire {
        let Some(n) = int_arg(out, v) else { return };
        let bad = || "ERR invalid expire time in 'set' command";
        if n <= 0 {
            return out.error(bad());
        }
        let secs = eq(unit, "ex") || eq(unit, "exat");
        let Some(ms) = (if secs { n.checked_mul(1000) } else { Some(n) }) else { return out.error(bad()) };
        let relative = eq(unit, "ex") || eq(unit, "px");
        if relative && (cx.db.now_ms() as i64).checked_add(ms).is_none() {
            return out.error(bad());
        }
        ttl = if relative { Ttl::Rel(ms as u64) } else { Ttl::Abs(ms as u64) };
    }
    match write(cx, &args[1], &args[2], cond, ttl, get) {
        Ok((written, old)) => {
            if get {
                out.opt_bulk(old.as_ref())
            } else if written {
                out.ok()
            } else {
                out.null()
            }
        }
        Err(e) => write_error(out, e),
    }
}

pub(super) fn setnx(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    match write(cx, &args[1], &args[2], Cond::Nx, Ttl::None, false) {
        Ok((written, _)) => out.int(written as i64),
        Err(e) => write_error(out, e),
    }
}

/// SETEX and PSETEX.
pub(super) fn setex(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(t) = int_arg(out, &args[2]) else { return };
    let name = cx.spec.name;
    let ms = if name == "setex" { t.checked_mul(1000) } else { Some(t) };
    let Some(ms) = ms.filter(|&m| m > 0 && (cx.db.now_ms() as i64).checked_add(m).is_some()) else {
        return out.error(&format!("ERR invalid expire time in '{name}' command"));
    };
    match write(cx, &args[1], &args[3], Cond::Always, Ttl::Rel(ms as u64), false) {
        Ok(_) => out.ok(),
        Err(e) => write_error(out, e),
    }
}

pub(super) fn getdel(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let mut old = None;
    let r = cx.db.write_with(args[1].clone(), |cur, _| {
        old = value_of(cur);
        old.as_ref().map(|_| Slot::Tombstone)
    });
    match r {
        Ok(_) => out.opt_bulk(old.as_ref()),
        Err(e) => write_error(out, e),
    }
}

/// MSET, as one transaction: no reader on this peer sees some of the keys
/// written and not the others, and the writes are replicated together.
pub(super) fn mset(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if args.len().is_multiple_of(2) {
        return wrong_args(out, cx.spec.name);
    }
    let nx = cx.spec.name == "msetnx";
    // Copied before the transaction locks anything.
    let pairs: Vec<(Bytes, Bytes)> = args[1..].chunks_exact(2).map(|kv| (copy(&kv[0]), copy(&kv[1]))).collect();
    let r = cx.db.atomically(pairs.iter().map(|(k, _)| k), |db| {
        if nx && pairs.iter().any(|(k, _)| db.get_with(k, |_| ()).is_some()) {
            return Ok(false);
        }
        for (k, v) in &pairs {
            db.put(k.clone(), v.clone())?;
        }
        Ok(true)
    });
    match r {
        Ok(_) if !nx => out.ok(),
        Ok(set) => out.int(set as i64),
        Err(e) => write_error(out, e),
    }
}

/// A SET's condition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cond {
    Always,
    Nx,
    Xx,
}

/// A SET's expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ttl {
    None,
    Keep,
    /// Milliseconds after the write's stamp.
    Rel(u64),
    /// Absolute Unix milliseconds.
    Abs(u64),
}

/// SET and its relatives as one atomic local read-modify-write. Returns
/// whether it wrote, and the value that was visible before if `want_old`
/// (a plain SET does not keep it).
fn write(
    cx: &mut Cx<'_, '_>,
    key: &Bytes,
    value: &Bytes,
    cond: Cond,
    ttl: Ttl,
    want_old: bool,
) -> Result<(bool, Option<Bytes>), MeshError> {
    let sh = cx.sh;
    let (mut written, mut old) = (false, None);
    let listening = sh.hub.listening();
    let value = value.clone();
    let slot = |cur: Option<&Slot>, stamp: Stamp| {
        if want_old {
            old = value_of(cur);
        }
        match cond {
            Cond::Nx if cur.is_some() => return None,
            Cond::Xx if cur.is_none() => return None,
            _ => {}
        }
        written = true;
        let now = stamp.physical_ms();
        let expires_at_ms = match ttl {
            Ttl::None => None,
            Ttl::Keep => cur.and_then(Slot::expires_at_ms),
            Ttl::Rel(ms) => Some(now.saturating_add(ms)),
            Ttl::Abs(at) if at <= now => return Some(Slot::Tombstone),
            Ttl::Abs(at) => Some(at),
        };
        if listening && expires_at_ms.is_some() && ttl != Ttl::Keep {
            sh.hub.hint(stamp, key, Hint::SetWithTtl);
        }
        Some(Slot::Value { data: value, expires_at_ms })
    };
    // Only these options read the value replaced; without them it is not
    // copied out for the write.
    if want_old || cond != Cond::Always || ttl == Ttl::Keep {
        cx.db.write_with(key.clone(), slot)?;
    } else {
        cx.db.write_blind(key.clone(), |stamp| slot(None, stamp))?;
    }
    Ok((written, old))
}

/// GETSET: SET ... GET without the options; the TTL is dropped.
pub(super) fn getset(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    match write(cx, &args[1], &args[2], Cond::Always, Ttl::None, true) {
        Ok((_, old)) => out.opt_bulk(old.as_ref()),
        Err(e) => write_error(out, e),
    }
}

/// GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST]: the value, and
/// its TTL changed if an option says so. As in Redis, the options' syntax
/// is checked first, and an invalid expire time is an error only for a key
/// that exists (a missing key answers nil).
pub(super) fn getex(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sh = cx.sh;
    let mut option: Option<(&str, Option<&Bytes>)> = None;
    let mut j = 2;
    while j < args.len() {
        let a = &args[j][..];
        let unit = ["ex", "px", "exat", "pxat"].into_iter().find(|u| eq(a, u));
        match (unit, args.get(j + 1)) {
            (Some(unit), Some(v)) if option.is_none() => {
                option = Some((unit, Some(v)));
                j += 2;
            }
            _ if eq(a, "persist") && option.is_none() => {
                option = Some(("persist", None));
                j += 1;
            }
            _ => return out.error(SYNTAX),
        }
    }
    let change = match option {
        None => return get(cx, args, out),
        Some((_, None)) => Ok(Ttl::None),
        Some((unit, Some(v))) => getex_ttl(unit, v, cx.db.now_ms()),
    };
    let ttl = match change {
        Ok(ttl) => ttl,
        // Redis reads the expire time only for a key it found.
        Err(e) if cx.db.get_with(&args[1], |_| ()).is_some() => return out.error(e),
        Err(_) => return get(cx, args, out),
    };
    let listening = sh.hub.listening();
    let mut old = None;
    let key = &args[1];
    let r = cx.db.write_with(key.clone(), |cur, stamp| {
        let Some(Slot::Value { data, expires_at_ms }) = cur else { return None };
        old = Some(data.clone());
        let now = stamp.physical_ms();
        let at = match ttl {
            // PERSIST on a key without a TTL writes nothing.
            Ttl::None if expires_at_ms.is_none() => return None,
            Ttl::None | Ttl::Keep => None,
            Ttl::Rel(ms) => Some(now.saturating_add(ms)),
            Ttl::Abs(at) if at <= now => return Some(Slot::Tombstone),
            Ttl::Abs(at) => Some(at),
        };
        if listening {
            sh.hub.hint(stamp, key, if at.is_some() { Hint::Expire } else { Hint::Persist });
        }
        Some(Slot::Value { data: data.clone(), expires_at_ms: at })
    });
    match r {
        Ok(_) => {
            if old.is_some() {
                cx.c.hits += 1;
            } else {
                cx.c.misses += 1;
            }
            out.opt_bulk(old.as_ref())
        }
        Err(e) => write_error(out, e),
    }
}

/// GETEX's expire option `unit` with value `v`, at local time `now_ms`, or
/// Redis's error for it.
fn getex_ttl(unit: &str, v: &[u8], now_ms: u64) -> Result<Ttl, &'static str> {
    let bad = "ERR invalid expire time in 'getex' command";
    let n = parse_i64(v).ok_or(NOT_INT)?;
    let secs = unit == "ex" || unit == "exat";
    let ms = (if secs { n.checked_mul(1000) } else { Some(n) }).filter(|&m| m > 0).ok_or(bad)?;
    let relative = unit == "ex" || unit == "px";
    if relative && (now_ms as i64).checked_add(ms).is_none() {
        return Err(bad);
    }
    Ok(if relative { Ttl::Rel(ms as u64) } else { Ttl::Abs(ms as u64) })
}

pub(super) fn strlen(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let n = cx.db.get_with(&args[1], |v| v.len()).unwrap_or(0);
    out.int(n as i64);
}

/// GETRANGE and SUBSTR: the bytes from `start` to `end` inclusive, both
/// counted from the end when negative, clamped to the value.
pub(super) fn getrange(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(start) = int_arg(out, &args[2]) else { return };
    let Some(end) = int_arg(out, &args[3]) else { return };
    let lent = cx.db.get_with(&args[1], |v| match range(start, end, v.len() as i64) {
        Some((s, e)) => out.bulk(&v[s as usize..=e as usize]),
        None => out.bulk(b""),
    });
    if lent.is_none() {
        out.bulk(b"");
    }
}

/// Redis's range rule (GETRANGE, BITCOUNT): negative ends count from
/// `len`, then both are clamped; `None` when the range is empty.
pub(super) fn range(start: i64, end: i64, len: i64) -> Option<(i64, i64)> {
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let start = if start < 0 { len.saturating_add(start).max(0) } else { start };
    let end = if end < 0 { len.saturating_add(end).max(0) } else { end.min(len - 1) };
    (len > 0 && start <= end).then_some((start, end))
}

/// The largest value a command may build (APPEND, SETRANGE, SETBIT):
/// Redis's `proto-max-bulk-len`, and what one write can carry to peers.
pub(super) fn max_value(sh: &Shared, key: &[u8]) -> usize {
    sh.config.max_request_bytes.min(sh.mesh.max_write_bytes().saturating_sub(key.len()))
}

pub(super) const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// A read-modify-write of one string value that keeps its TTL, as Redis's
/// APPEND, SETRANGE, INCR and SETBIT do: `f` gets the visible value and
/// returns the value to write, `None` to write nothing, or an error reply.
/// Returns whether it went through (otherwise the error is in `out`).
pub(super) fn update(
    cx: &mut Cx<'_, '_>,
    key: &Bytes,
    out: &mut Out,
    f: impl FnOnce(Option<&Bytes>) -> Result<Option<Bytes>, String>,
) -> bool {
    let mut refused = None;
    let (hub, event) = (&cx.sh.hub, event_of(cx.spec.name));
    let listening = hub.listening();
    let r = cx.db.write_with(key.clone(), |cur, stamp| {
        let (data, expires_at_ms) = match cur {
            Some(Slot::Value { data, expires_at_ms }) => (Some(data), *expires_at_ms),
            _ => (None, None),
        };
        match f(data) {
            Ok(Some(data)) => {
                if listening {
                    hub.hint(stamp, key, Hint::String(event));
                }
                Some(Slot::Value { data, expires_at_ms })
            }
            Ok(None) => None,
            Err(e) => {
                refused = Some(e);
                None
            }
        }
    });
    if let Some(e) = refused {
        out.error(&e);
        return false;
    }
    if let Err(e) = r {
        write_error(out, e);
        return false;
    }
    true
}

/// The keyspace event of a read-modify-write command, as Redis names it.
fn event_of(command: &'static str) -> &'static str {
    match command {
        "incr" | "decr" | "incrby" | "decrby" => "incrby",
        "bitfield" => "setbit",
        other => other,
    }
}

/// APPEND: the new length; a missing key is created.
pub(super) fn append(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let max = max_value(cx.sh, &args[1]);
    let mut len = 0;
    let ok = update(cx, &args[1], out, |cur| {
        let cur = cur.map_or(&[][..], |v| &v[..]);
        len = cur.len() + args[2].len();
        if len > max {
            return Err(TOO_BIG.into());
        }
        // Appending nothing is a write all the same, as in Redis: it
        // creates a missing key empty, and it aborts an EXEC that watched
        // the key and invalidates it for tracking clients.
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(cur);
        v.extend_from_slice(&args[2]);
        Ok(Some(v.into()))
    });
    if ok {
        out.int(len as i64);
    }
}

/// SETRANGE: overwrites from `offset`, padding with zero bytes; the new
/// length. An empty value writes nothing (and creates no key).
pub(super) fn setrange(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(offset) = int_arg(out, &args[2]) else { return };
    if offset < 0 {
        return out.error("ERR offset is out of range");
    }
    let max = max_value(cx.sh, &args[1]);
    let value = &args[3];
    let mut len = 0;
    let ok = update(cx, &args[1], out, |cur| {
        let cur = cur.map_or(&[][..], |v| &v[..]);
        if value.is_empty() {
            len = cur.len();
            return Ok(None);
        }
        // Checked before anything is allocated: a short command must not
        // make the server build a huge value it cannot keep.
        let end = (offset as u64).saturating_add(value.len() as u64);
        if end > max as u64 {
            return Err(TOO_BIG.into());
        }
        let (offset, end) = (offset as usize, end as usize);
        len = cur.len().max(end);
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(cur);
        v.resize(len, 0);
        v[offset..end].copy_from_slice(value);
        Ok(Some(v.into()))
    });
    if ok {
        out.int(len as i64);
    }
}
