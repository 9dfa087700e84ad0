//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH.
//!
//! EXEC runs the queued commands as one [`crate::Mesh::transaction`] over
//! the keys they name and the keys watched (the whole keyspace if one of
//! them walks it): no reader on this peer sees part of it, and its writes
//! are pushed to the peers together, where they are merged as one. WATCH
//! notes the stamp of each key's value, and its digest bucket's write
//! count; EXEC, holding the keys' locks, aborts if any changed (the count
//! is compared for a key without a value at both, whose register a write
//! may have left and a collection or FLUSHALL removed), so a write from a
//! peer merged since the WATCH aborts it too. See README.md, "Redis clients".

use bytes::Bytes;

use super::{copy, run, Cx, Db, Spec};
use crate::resp::client::{Client, Multi, Queued, Watched};
use crate::resp::reply::Out;
use crate::resp::Shared;
use crate::store::{Register, Slot};

/// Commands that run at once between MULTI and EXEC instead of being
/// queued, as in Redis.
pub(super) fn runs_at_once(spec: &Spec) -> bool {
    matches!(spec.name, "exec" | "discard" | "multi" | "watch" | "quit" | "reset")
}

/// Why a command may not be queued, if it may not.
pub(super) fn refused_in_multi(spec: &Spec) -> Option<&'static str> {
    match spec.name {
        "save" => Some("Command not allowed inside a transaction"),
        // A FLUSHALL sweeps every shard under its own locks and raises the
        // mesh-wide `clear_below` to its stamp, which inside a transaction
        // would also be the stamp of the writes beside it.
        "flushall" | "flushdb" => Some("Command not allowed inside a transaction (FLUSHALL and FLUSHDB run alone)"),
        _ => None,
    }
}

/// Bytes one queued argument holds beyond its contents.
const ARG_OVERHEAD: usize = std::mem::size_of::<Bytes>();

/// Queues a command and answers QUEUED. EXEC runs the queue as one
/// command, so it is bounded as one is, by `max_command_bytes`: past it the
/// command is refused, and the transaction with it.
pub(super) fn queue(sh: &Shared, c: &mut Client, spec: &'static Spec, args: &[Bytes], out: &mut Out) {
    let m = c.multi.as_mut().expect("queued in MULTI");
    let bytes: usize = args.iter().map(|a| a.len() + ARG_OVERHEAD).sum();
    if m.bytes + bytes > sh.config.max_command_bytes {
        // Nothing queued will run: free it now.
        m.queued = Vec::new();
        m.dirty = true;
        return out.error("ERR the transaction is too large: its commands would exceed max_command_bytes");
    }
    m.bytes += bytes;
    // Copied: a queued slice would keep its whole read buffer alive.
    m.queued.push(Queued { spec, args: args.iter().map(copy).collect() });
    out.simple("QUEUED");
}

pub(super) fn multi(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    if cx.c.multi.is_some() {
        return out.error("ERR MULTI calls can not be nested");
    }
    cx.c.multi = Some(Multi::default());
    out.ok();
}

pub(super) fn discard(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    if cx.c.multi.take().is_none() {
        return out.error("ERR DISCARD without MULTI");
    }
    cx.c.watched.clear();
    out.ok();
}

/// A key's state as WATCH notes it and EXEC compares it: the stamp of its
/// value, or `None` when it has none (absent, deleted, expired, evicted).
fn state(reg: Option<Register>, now_ms: u64) -> Option<crate::hlc::Stamp> {
    reg.filter(|r| matches!(r.val, Slot::Value { .. }) && !r.val.is_expired(now_ms)).map(|r| r.marker)
}

pub(super) fn watch(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if cx.c.multi.is_some() {
        return out.error("ERR WATCH inside MULTI is not allowed");
    }
    let now = cx.db.now_ms();
    for k in &args[1..] {
        if cx.c.watched.iter().any(|w| w.key == *k) {
            continue;
        }
        // The count first: a write after it moves it, whatever `seen` saw.
        let writes = cx.db.writes_of(k);
        let seen = state(cx.db.register(k), now);
        cx.c.watched.push(Watched { key: copy(k), seen, writes });
    }
    out.ok();
}

pub(super) fn unwatch(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    cx.c.watched.clear();
    out.ok();
}

pub(super) fn exec(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    let Some(m) = cx.c.multi.take() else { return out.error("ERR EXEC without MULTI") };
    let watched = std::mem::take(&mut cx.c.watched);
    if m.dirty {
        return out.error("EXECABORT Transaction discarded because of previous errors.");
    }
    let whole = m.queued.iter().any(|q| q.spec.walks_keyspace());
    let keys = watched.iter().map(|w| &w.key).chain(m.queued.iter().flat_map(|q| q.spec.keys(&q.args)));
    let (sh, c) = (cx.sh, &mut *cx.c);
    let body = |t: &mut crate::Transaction<'_>| {
        let now = t.now_ms();
        // Holding the keys' locks: nothing can change them between this
        // check and the commands.
        // A key with a value has a new stamp after any write. One without
        // a value then and now may still have been written since (a value
        // and its delete, or a delete, which is a write mesh-wide), and
        // what the write left removed (collected, or under a FLUSHALL): its
        // bucket's write count tells. The count also moves for writes to
        // other keys of the bucket (a 65,536th of the keyspace), an abort
        // Redis would not make, but a write is never missed; a removal alone
        // does not move it.
        let changed = watched.iter().any(|w| {
            let now_seen = state(t.register(&w.key).ok().flatten(), now);
            now_seen != w.seen || (w.seen.is_none() && t.writes_of(&w.key).ok() != Some(w.writes))
        });
        if changed {
            return false;
        }
        // As for a single read (`run_tracking`), under the keys' locks:
        // pending invalidations go before the reply, and each read's keys
        // are tracked as it runs, as in Redis, so that a write earlier in
        // the transaction does not invalidate a key read after it.
        super::tracking::pending_into(c, out);
        out.array(m.queued.len());
        for q in &m.queued {
            if q.spec.is("readonly") {
                super::tracking::remember_reads(sh, c, q.spec.keys(&q.args));
            }
            run(&mut Cx { sh, c, spec: q.spec, db: Db::Txn(t) }, &q.args, out);
        }
        true
    };
    let ran = if whole { sh.mesh.transaction_whole(body) } else { sh.mesh.transaction(keys, body) };
    if !ran {
        out.null_array();
    }
}
