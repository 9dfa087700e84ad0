//! Pub/sub commands: SUBSCRIBE, PSUBSCRIBE and their opposites.

use bytes::Bytes;

use super::{copy, Cx};
use crate::resp::client::Client;
use crate::resp::notify;
use crate::resp::reply::Out;
use crate::resp::Shared;

/// SUBSCRIBE and PSUBSCRIBE.
pub(super) fn subscribe(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
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

/// UNSUBSCRIBE and PUNSUBSCRIBE; without arguments, from everything.
pub(super) fn unsubscribe(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
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

/// UNSUBSCRIBE / PUNSUBSCRIBE without arguments (`Some(pattern)`), or both
/// for RESET (`None`, no replies).
pub(super) fn unsubscribe_all(sh: &Shared, c: &mut Client, out: &mut Out, which: Option<bool>) {
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
