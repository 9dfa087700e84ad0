//! Pub/sub commands: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and their
//! opposites, PUBLISH, SPUBLISH, PUBSUB.
//!
//! A message published on any peer reaches the subscribers of every peer
//! connected to it (`Mesh::publish`), at most once; `PUBLISH` answers the
//! receivers on this peer, as Redis Cluster answers those on one node, and
//! PUBSUB's counts are this peer's.

use bytes::Bytes;

use super::{copy, eq, help, lossy, unknown_subcommand, write_error, wrong_args, Cx};
use crate::resp::client::Client;
use crate::resp::notify;
use crate::resp::reply::Out;
use crate::resp::Shared;

/// SUBSCRIBE and PSUBSCRIBE.
pub(super) fn subscribe(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    let pattern = cx.spec.name == "psubscribe";
    c.outbox.set_resp3(out.resp3);
    for ch in &args[1..] {
        let ch = copy(ch);
        if pattern {
            if sh.hub.psubscribe(c.id, &c.outbox, ch.clone()) {
                c.patterns.insert(ch.clone());
            }
        } else if sh.hub.subscribe(c.id, &c.outbox, ch.clone()) {
            c.channels.insert(ch.clone());
        }
        let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
        notify::confirm(out, kind, Some(&ch), c.subscriptions());
    }
}

/// PUBLISH and SPUBLISH.
pub(super) fn publish(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sharded = cx.spec.name == "spublish";
    match cx.sh.mesh.publish(copy(&args[1]), copy(&args[2]), sharded) {
        Ok(n) => out.int(n as i64),
        Err(e) => write_error(out, e),
    }
}

/// SSUBSCRIBE.
pub(super) fn ssubscribe(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    c.outbox.set_resp3(out.resp3);
    for ch in &args[1..] {
        let ch = copy(ch);
        if sh.hub.ssubscribe(c.id, &c.outbox, ch.clone()) {
            c.shard_channels.insert(ch.clone());
        }
        notify::confirm(out, b"ssubscribe", Some(&ch), c.shard_channels.len());
    }
}

/// SUNSUBSCRIBE; without arguments, from every shard channel.
pub(super) fn sunsubscribe(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    if args.len() == 1 {
        return sunsubscribe_all(sh, c, Some(out));
    }
    for ch in &args[1..] {
        c.shard_channels.remove(ch);
        sh.hub.sunsubscribe(c.id, ch);
        notify::confirm(out, b"sunsubscribe", Some(ch), c.shard_channels.len());
    }
}

/// SUNSUBSCRIBE without arguments, or RESET (no replies).
pub(super) fn sunsubscribe_all(sh: &Shared, c: &mut Client, out: Option<&mut Out>) {
    let chans: Vec<Bytes> = c.shard_channels.drain().collect();
    for ch in &chans {
        sh.hub.sunsubscribe(c.id, ch);
    }
    if let Some(out) = out {
        if chans.is_empty() {
            notify::confirm(out, b"sunsubscribe", None, 0);
        }
        for (i, ch) in chans.iter().enumerate() {
            notify::confirm(out, b"sunsubscribe", Some(ch), chans.len() - i - 1);
        }
    }
}

/// PUBSUB CHANNELS | NUMSUB | NUMPAT | SHARDCHANNELS | SHARDNUMSUB | HELP,
/// counted on this peer.
pub(super) fn pubsub(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let hub = &cx.sh.hub;
    let sub = &args[1];
    let n = args.len();
    if (eq(sub, "channels") || eq(sub, "shardchannels")) && n <= 3 {
        let sharded = eq(sub, "shardchannels");
        let chans = hub.channels(sharded, args.get(2).map(|p| &p[..]));
        out.array(chans.len());
        for c in &chans {
            out.bulk(c);
        }
    } else if eq(sub, "numsub") || eq(sub, "shardnumsub") {
        let sharded = eq(sub, "shardnumsub");
        // A flat array in RESP3 too, as Redis answers it.
        out.array(2 * (n - 2));
        for ch in &args[2..] {
            out.bulk(ch);
            out.int(hub.subscribers(sharded, ch) as i64);
        }
    } else if eq(sub, "numpat") && n == 2 {
        out.int(hub.numpat() as i64);
    } else if eq(sub, "help") && n == 2 {
        help(
            out,
            "PUBSUB",
            &[
                "CHANNELS [<pattern>]",
                "    Return the currently active channels matching a <pattern> (default: '*').",
                "NUMPAT",
                "    Return number of subscriptions to patterns.",
                "NUMSUB [<channel> ...]",
                "    Return the number of subscribers for the specified channels, excluding",
                "    pattern subscriptions(default: no channels).",
                "SHARDCHANNELS [<pattern>]",
                "    Return the currently active shard level channels matching a <pattern> (default: '*').",
                "SHARDNUMSUB [<shardchannel> ...]",
                "    Return the number of subscribers for the specified shard level channel(s)",
            ],
        );
    } else if eq(sub, "channels") || eq(sub, "shardchannels") {
        // The subcommand takes any number by its arity; Redis refuses the
        // extra arguments in the command itself, in these words.
        let sub = lossy(&sub[..sub.len().min(128)]);
        out.error(&format!("ERR unknown subcommand or wrong number of arguments for '{sub}'. Try PUBSUB HELP."));
    } else if ["numpat", "help"].iter().any(|s| eq(sub, s)) {
        wrong_args(out, &format!("pubsub|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "PUBSUB");
    }
}

/// UNSUBSCRIBE and PUNSUBSCRIBE; without arguments, from everything.
pub(super) fn unsubscribe(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    let pattern = cx.spec.name == "punsubscribe";
    if args.len() == 1 {
        return unsubscribe_all(sh, c, out, Some(pattern));
    }
    for ch in &args[1..] {
        if pattern {
            c.patterns.remove(ch);
            sh.hub.punsubscribe(c.id, ch);
        } else {
            c.channels.remove(ch);
            sh.hub.unsubscribe(c.id, ch);
        }
        let kind: &[u8] = if pattern { b"punsubscribe" } else { b"unsubscribe" };
        notify::confirm(out, kind, Some(ch), c.subscriptions());
    }
}

/// UNSUBSCRIBE / PUNSUBSCRIBE without arguments (`Some(pattern)`), or
/// everything, shard channels too, for RESET (`None`, no replies).
pub(super) fn unsubscribe_all(sh: &Shared, c: &mut Client, out: &mut Out, which: Option<bool>) {
    if which.is_none() {
        sunsubscribe_all(sh, c, None);
    }
    if which != Some(true) {
        let chans: Vec<Bytes> = c.channels.drain().collect();
        for ch in &chans {
            sh.hub.unsubscribe(c.id, ch);
        }
        if which.is_some() {
            if chans.is_empty() {
                notify::confirm(out, b"unsubscribe", None, c.subscriptions());
            }
            for (i, ch) in chans.iter().enumerate() {
                notify::confirm(out, b"unsubscribe", Some(ch), c.subscriptions() + chans.len() - i - 1);
            }
        }
    }
    if which != Some(false) {
        let pats: Vec<Bytes> = c.patterns.drain().collect();
        for p in &pats {
            sh.hub.punsubscribe(c.id, p);
        }
        if which.is_some() {
            if pats.is_empty() {
                notify::confirm(out, b"punsubscribe", None, c.subscriptions());
            }
            for (i, p) in pats.iter().enumerate() {
                notify::confirm(out, b"punsubscribe", Some(p), c.subscriptions() + pats.len() - i - 1);
            }
        }
    }
}
