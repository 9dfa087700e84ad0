//! Client-side caching: Redis's `CLIENT TRACKING`, fed by every change this
//! peer makes or learns of.
//!
//! The [`Table`] is an observer of the store (`store::Observer`): it is
//! told of each write, delete, expiry and eviction under the lock of the
//! key's shard, and of a FLUSHALL under every shard's lock, whether the
//! change was made here, pushed by another peer, or repaired by
//! anti-entropy. It queues each invalidation in the outbox of the client
//! that must hear it, which its connection drains.
//!
//! # Ordering against replies
//!
//! A tracking client's command that reads keys runs holding its keys'
//! shard locks (`cmd::execute`, as a transaction over them): under those
//! locks it records the keys as tracked, moves its pending invalidations
//! into its output, and reads. A change to one of those keys takes the same
//! lock and queues its invalidation under it, so:
//!
//! - an invalidation for a change the reply shows is already queued when
//!   the reply is read, and goes out before it;
//! - an invalidation for a change made after the read is queued after the
//!   reply is written, and goes out after it.
//!
//! The second point is what keeps a near cache from storing a value older
//! than an invalidation it has already handled; the first means no reply
//! shows a new value while the invalidation of the old one is still held
//! back. A FLUSHALL's null invalidation is queued under every shard's
//! lock, so this holds for it too. A client's own writes invalidate after
//! their reply, as in Redis 7.
//!
//! # The table
//!
//! In default mode a key a client read is tracked for that client until it
//! is invalidated once. The table holds at most `tracking-table-max-keys`
//! keys (0: no bound); past it the keys tracked longest are invalidated
//! early, as if they had changed, never forgotten silently. In BCAST mode
//! nothing is remembered per key: every change under one of the client's
//! prefixes is sent.
//!
//! # BCAST
//!
//! As in Redis, a BCAST client hears once per prefix: a change under two
//! of its prefixes is sent twice. The changes a connection's commands
//! make between two writes of its replies (the commands of one read, a
//! pipeline; all of an EXEC's) are gathered and sent before that write,
//! one push per client and prefix listing its keys sorted, as Redis sends
//! what one turn of its event loop changed: each command's through
//! [`Table::batch`], then together through [`Table::send_gathered`], with
//! NOLOOP applied by the writer's mode then, as Redis applies it. So a
//! reply on another connection may show such a change just before its
//! invalidation arrives, which costs that client a cached value, never a
//! stale one. The changes one merge makes (a message from another peer)
//! are gathered the same way: the store opens a group around it
//! ([`Observer::gather`]). A client that turns tracking off and on again
//! within one pipeline gets the invalidations of the commands before the
//! switch that its prefixes then match, where Redis drops those pending
//! for a prefix nobody tracks any more: an extra invalidation, never a
//! missing one.
//!
//! A client whose outbox passes the output limit is disconnected (its
//! connection closes), so an invalidation is never dropped while the
//! client keeps its cache.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::client::Handle;
use crate::locks::Mutex;
use crate::store::Observer;

/// Redis's default `tracking-table-max-keys`.
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

thread_local! {
    /// The client whose command is running on this thread (0: none), for
    /// NOLOOP: a change is told to the observer by the thread that makes
    /// it, before the command returns.
    static WRITER: Cell<u64> = const { Cell::new(0) };
}

thread_local! {
    /// The BCAST invalidations of the command or merge running on this
    /// thread, to be sent when it ends (`Table::batch`, `Observer::gather`):
    /// prefix, client, key.
    static BATCH: RefCell<Option<Vec<(Bytes, u64, Bytes)>>> = const { RefCell::new(None) };
}

/// Runs `f` (one command of client `id`) with `id` known as the writer of
/// the changes it makes.
pub(crate) fn as_writer<R>(id: u64, f: impl FnOnce() -> R) -> R {
    struct Reset(u64);
    impl Drop for Reset {
        fn drop(&mut self) {
            WRITER.with(|w| w.set(self.0));
        }
    }
    let _reset = Reset(WRITER.with(|w| w.replace(id)));
    f()
}

/// How one client tracks (CLIENT TRACKING ON's options).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mode {
    pub(crate) bcast: bool,
    pub(crate) optin: bool,
    pub(crate) optout: bool,
    pub(crate) noloop: bool,
    /// The client invalidations go to instead (0: this one).
    pub(crate) redirect: u64,
}

/// One tracking client.
struct Tracker {
    handle: Arc<Handle>,
    mode: Mode,
    /// The redirect target's connection, while it lives.
    target: Option<Arc<Handle>>,
    /// BCAST prefixes ("" for every key).
    prefixes: Vec<Bytes>,
}

struct Entry {
    clients: Vec<u64>,
    /// Which registration in `order` is this entry's.
    generation: u64,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, Tracker>,
    keys: HashMap<Bytes, Entry, foldhash::fast::RandomState>,
    /// Keys in the order they were first tracked, for the bound. Entries
    /// of keys since invalidated stay until they reach the front (or the
    /// queue is compacted).
    order: VecDeque<(Bytes, u64)>,
    next_generation: u64,
    /// Client-key pairs tracked.
    items: usize,
    /// The store tells this table of changes (`Table::observe`).
    observing: bool,
}

/// BCAST invalidations gathered and not yet sent: prefix, client, key.
pub(crate) type Gathered = Vec<(Bytes, u64, Bytes)>;

/// The BCAST invalidations of one command, sent when it is dropped unless
/// taken first (the RESP server takes them, to send them with those of
/// the commands around it).
pub(crate) struct Batch<'t>(&'t Table);

impl Batch<'_> {
    /// The command's invalidations, for the caller to send with those of
    /// the commands around it ([`Table::send_gathered`]).
    pub(crate) fn take(self) -> Gathered {
        BATCH.with_borrow_mut(Option::take).unwrap_or_default()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The tracking table of one server.
pub(crate) struct Table {
    state: Mutex<State>,
    /// BCAST prefixes of every client, written under `state`'s lock and
    /// read without it by every command.
    prefixes: AtomicUsize,
    max_keys: AtomicUsize,
    /// Keys invalidated early because the table was full (INFO).
    pub(crate) early: AtomicU64,
    store: crate::Mesh,
}

impl Table {
    pub(crate) fn new(mesh: crate::Mesh, max_keys: usize) -> Self {
        Table {
            state: Mutex::new(State::default()),
            prefixes: AtomicUsize::new(0),
            max_keys: AtomicUsize::new(max_keys),
            early: AtomicU64::new(0),
            store: mesh,
        }
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    /// CONFIG SET tracking-table-max-keys: a smaller bound invalidates the
    /// excess at once.
    pub(crate) fn set_max_keys(&self, max: usize) {
        self.max_keys.store(max, Ordering::Relaxed);
        let mut st = self.state.lock();
        self.bound(&mut st);
    }

    /// CLIENT TRACKING ON for `handle`'s client, its options checked.
    /// `target` is the redirect target's connection (checked to exist).
    pub(crate) fn enable(&self, handle: &Arc<Handle>, mode: Mode, target: Option<Arc<Handle>>, prefixes: Vec<Bytes>) {
        let mut st = self.state.lock();
        let id = handle.id;
        let mut kept = Vec::new();
        if let Some(old) = st.clients.remove(&id) {
            kept = old.prefixes;
        }
        // BCAST without PREFIX adds the empty prefix, even beside the
        // client's others, as in Redis.
        if mode.bcast && prefixes.is_empty() && !kept.iter().any(|p| p.is_empty()) {
            kept.push(Bytes::new());
        }
        for p in prefixes {
            if !kept.contains(&p) {
                kept.push(p);
            }
        }
        if !mode.bcast {
            kept.clear();
        }
        handle.set_tracking(Some(&mode), false);
        st.clients.insert(id, Tracker { handle: handle.clone(), mode, target, prefixes: kept });
        self.prefixes.store(st.clients.values().map(|t| t.prefixes.len()).sum(), Ordering::Relaxed);
        self.observe(&mut st);
    }

    /// CLIENT TRACKING OFF, RESET, or the connection closed. The keys it
    /// tracked stay in the table until they change, as in Redis: a client
    /// that turns tracking on again hears of those that change later.
    pub(crate) fn disable(&self, id: u64) {
        let mut st = self.state.lock();
        let Some(t) = st.clients.remove(&id) else { return };
        t.handle.set_tracking(None, false);
        self.prefixes.fetch_sub(t.prefixes.len(), Ordering::Relaxed);
        self.observe(&mut st);
    }

    /// Has the store tell this table of changes while a client tracks or a
    /// key is tracked: a key's entry is dropped at its next change even
    /// when nobody tracks at that moment. Until then every write costs a
    /// lookup here, under this table's lock.
    fn observe(&self, st: &mut State) {
        let want = !st.clients.is_empty() || !st.keys.is_empty();
        if !want {
            st.order.clear();
        }
        if want != st.observing {
            st.observing = want;
            self.store.replica().store().want_changes(want);
        }
    }

    /// A connection closed: it stops tracking, and clients redirecting
    /// to it hear `tracking-redir-broken` at once (Redis says so only at
    /// their next invalidation, which it then loses; it is sent then too).
    pub(crate) fn gone(&self, id: u64) {
        self.disable(id);
        let mut st = self.state.lock();
        for t in st.clients.values_mut() {
            if t.mode.redirect == id && t.target.take().is_some() {
                t.handle.set_tracking(Some(&t.mode), true);
                t.handle.outbox.redirect_broken(id);
            }
        }
    }

    /// The options `id` tracks with, and its prefixes (sorted, as Redis
    /// lists them), if it tracks.
    pub(crate) fn mode_of(&self, id: u64) -> Option<(Mode, bool, Vec<Bytes>)> {
        let st = self.state.lock();
        let t = st.clients.get(&id)?;
        let mut p = t.prefixes.clone();
        p.sort();
        Some((t.mode.clone(), t.mode.redirect != 0 && t.target.is_none(), p))
    }

    /// Tracks `keys` for client `id` (a read in default mode). Called
    /// holding the keys' shard locks; see the module docs.
    pub(crate) fn remember<'k>(&self, id: u64, keys: impl IntoIterator<Item = &'k Bytes>) {
        let mut st = self.state.lock();
        let st = &mut *st;
        for k in keys {
            match st.keys.get_mut(&k[..]) {
                Some(e) => {
                    if !e.clients.contains(&id) {
                        e.clients.push(id);
                        st.items += 1;
                    }
                }
                None => {
                    let generation = st.next_generation;
                    st.next_generation += 1;
                    let key = Bytes::copy_from_slice(k);
                    st.order.push_back((key.clone(), generation));
                    st.keys.insert(key, Entry { clients: vec![id], generation });
                    st.items += 1;
                }
            }
        }
        self.bound(st);
    }

    /// Invalidates the keys tracked longest while the table is over its
    /// bound, and drops queue entries of keys no longer tracked once they
    /// outnumber the live ones.
    fn bound(&self, st: &mut State) {
        let max = self.max_keys();
        while max > 0 && st.keys.len() > max {
            let Some((key, generation)) = st.order.pop_front() else { break };
            if st.keys.get(&key).is_some_and(|e| e.generation == generation) {
                let e = st.keys.remove(&key).expect("just found");
                st.items -= e.clients.len();
                self.early.fetch_add(1, Ordering::Relaxed);
                for id in e.clients {
                    if let Some(t) = st.clients.get(&id) {
                        send(t, Some(&[&key[..]]));
                    }
                }
            }
        }
        if st.order.len() > 2 * st.keys.len() + 1024 {
            let keys = &st.keys;
            st.order.retain(|(k, g)| keys.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    /// Gathers the BCAST invalidations of the command about to run on
    /// this thread until the batch is dropped, when some client tracks in
    /// BCAST mode. A change made meanwhile by a command that began with
    /// none is sent at once.
    pub(crate) fn batch(&self) -> Option<Batch<'_>> {
        self.gather().then_some(Batch(self))
    }

    /// Sends gathered BCAST invalidations of changes made by client
    /// `writer` (0: by none): one push per client and prefix, its keys
    /// sorted and each once; none to the writer if it is in NOLOOP mode.
    pub(crate) fn send_gathered(&self, mut items: Gathered, writer: u64) {
        if items.is_empty() {
            return;
        }
        items.sort_unstable();
        items.dedup();
        let st = self.state.lock();
        for group in items.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1) {
            let (prefix, id, _) = &group[0];
            // The client may have stopped tracking since, on its own thread.
            let own = |t: &&Tracker| t.mode.noloop && *id == writer;
            if let Some(t) = st.clients.get(id).filter(|t| t.prefixes.contains(prefix) && !own(t)) {
                let keys: Vec<&[u8]> = group.iter().map(|(_, _, k)| &k[..]).collect();
                send(t, Some(&keys));
            }
        }
    }

    /// INFO: tracking clients, keys, client-key pairs, prefixes.
    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        let st = self.state.lock();
        (st.clients.len(), st.keys.len(), st.items, self.prefixes.load(Ordering::Relaxed))
    }
}

impl Observer for Table {
    fn changed(&self, key: &[u8]) {
        let writer = WRITER.with(Cell::get);
        let mut st = self.state.lock();
        if let Some(e) = st.keys.remove(key) {
            st.items -= e.clients.len();
            if st.clients.is_empty() {
                // The key's clients stopped tracking: it is forgotten.
                return self.observe(&mut st);
            }
            for id in e.clients {
                if let Some(t) = st.clients.get(&id) {
                    // A client that read the key in default mode and has
                    // since switched to BCAST hears of it by its prefixes
                    // alone, as in Redis.
                    if !(t.mode.bcast || t.mode.noloop && id == writer) {
                        send(t, Some(&[key]));
                    }
                }
            }
        }
        if self.prefixes.load(Ordering::Relaxed) > 0 {
            BATCH.with_borrow_mut(|batch| {
                // One copy of the key, shared by every client and prefix.
                let mut copy: Option<Bytes> = None;
                for (id, t) in st.clients.iter() {
                    for p in t.prefixes.iter().filter(|p| key.starts_with(p)) {
                        match batch {
                            // NOLOOP is applied when the group is sent, with
                            // the client's mode then, as Redis applies it
                            // when it sends what a turn of its loop changed.
                            Some(b) => {
                                let k = copy.get_or_insert_with(|| Bytes::copy_from_slice(key)).clone();
                                b.push((p.clone(), *id, k));
                            }
                            None if t.mode.noloop && *id == writer => {}
                            None => send(t, Some(&[key])),
                        }
                    }
                }
            });
        }
    }

    fn flushed(&self) {
        let mut st = self.state.lock();
        st.keys.clear();
        st.order.clear();
        st.items = 0;
        for t in st.clients.values() {
            send(t, None);
        }
        self.observe(&mut st);
    }

    /// Opens this thread's BCAST group, when some client tracks in BCAST
    /// mode and none is open (an EXEC's commands run inside its own).
    fn gather(&self) -> bool {
        self.prefixes.load(Ordering::Relaxed) > 0
            && BATCH.with_borrow_mut(|b| b.is_none().then(|| *b = Some(Vec::new()))).is_some()
    }

    /// Sends the group's invalidations ([`Table::send_gathered`]), as
    /// changes of the client running on this thread (none for a merge).
    fn release(&self) {
        if let Some(items) = BATCH.with_borrow_mut(Option::take) {
            self.send_gathered(items, WRITER.with(Cell::get));
        }
    }
}

/// Queues an invalidation of `keys` (`None`: of everything) for `t`: in
/// its own connection, or the one it redirects to. A redirect whose
/// target closed gets `tracking-redir-broken` instead, as in Redis.
fn send(t: &Tracker, keys: Option<&[&[u8]]>) {
    match (&t.target, t.mode.redirect) {
        (_, 0) => t.handle.outbox.invalidate(keys, false),
        (Some(target), _) => target.outbox.invalidate(keys, target.subscribed()),
        (None, id) => t.handle.outbox.redirect_broken(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_is_restored() {
        assert_eq!(WRITER.with(Cell::get), 0);
        as_writer(7, || {
            assert_eq!(WRITER.with(Cell::get), 7);
            as_writer(9, || assert_eq!(WRITER.with(Cell::get), 9));
            assert_eq!(WRITER.with(Cell::get), 7);
        });
        assert_eq!(WRITER.with(Cell::get), 0);
    }
}
