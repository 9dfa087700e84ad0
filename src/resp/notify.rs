//! Pub/sub and keyspace notifications.
//!
//! The [`Hub`] holds every subscription of one server. While at least one
//! client is subscribed and `notify-keyspace-events` enables the keyspace
//! (`K`) or keyevent (`E`) channels, every change of the mesh (local *and*
//! replicated) is published on Redis's channels:
//!
//! | change | event | class |
//! |---|---|---|
//! | a write (`SET`, `MSET`, a replicated write) | `set` | `$` |
//! | `SET` with a TTL (local) | `set`, then `expire` | `$`, `g` |
//! | `EXPIRE` family (local) | `expire` | `g` |
//! | `PERSIST` (local) | `persist` | `g` |
//! | a delete (`DEL`, a replicated delete, `EXPIRE` in the past) | `del` | `g` |
//! | a TTL running out (told by the expiry sweep, or first by a write that finds the key past its TTL, before its own) | `expired` | `x` |
//! | FLUSHALL, here or replicated, or compaction | `flushall` | `g` |
//!
//! `__keyspace@0__:<key>` carries the event name, `__keyevent@0__:<event>`
//! the key. `flushall` has no key and goes to `__keyevent@0__:flushall` only,
//! with an empty message. A replicated write carries only its register, so
//! an `EXPIRE` or `PERSIST` done on another peer is reported as `set`.
//!
//! A `del` is reported whenever a delete is written or arrives, even if the
//! key was not visible here: a delete is replicated whether or not the key
//! was held.
//!
//! The hub hears changes through a tap on the mesh (`node::taps`): on the
//! thread that applies each change, under its key's shard lock, as a Redis
//! command publishes its own notifications. So it cannot fall behind a
//! burst of writes, however many clients pipeline them at once
//! (`scripts/notify-load`), and the changes of one key are published in
//! the order they were applied, however many threads race on it.
//!
//! A FLUSHALL (or a compaction, or a `clear_below` from another peer) is
//! told under every shard's lock, before its sweep, which removes its
//! keys silently: so `flushall` comes after every change it removes and
//! before every change it does not. A value it leaves (stamped at or
//! above it: a write that raced another peer's FLUSHALL, or a value newer
//! than a compaction's bar) is told again as a write, published as `set`,
//! by the sweep that follows it, under the value's shard lock.
//!
//! With no subscriber, the tap is stopped, so writes pay nothing for
//! notifications.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::reply::Out;
use crate::hlc::Stamp;
use crate::locks::Mutex;
use crate::store::ChangeKind;
use crate::wire::Publication;
use crate::Mesh;

// Event classes, as Redis's NOTIFY_* bits.
pub(crate) const KEYSPACE: u32 = 1 << 0; // K
pub(crate) const KEYEVENT: u32 = 1 << 1; // E
pub(crate) const GENERIC: u32 = 1 << 2; // g
pub(crate) const STRING: u32 = 1 << 3; // $
const LIST: u32 = 1 << 4; // l
const SET: u32 = 1 << 5; // s
const HASH: u32 = 1 << 6; // h
const ZSET: u32 = 1 << 7; // z
pub(crate) const EXPIRED: u32 = 1 << 8; // x
const EVICTED: u32 = 1 << 9; // e
const STREAM: u32 = 1 << 10; // t
const KEY_MISS: u32 = 1 << 11; // m
const MODULE: u32 = 1 << 12; // d
const NEW: u32 = 1 << 13; // n
const ALL: u32 = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// Parses a `notify-keyspace-events` value (Redis's letters). `None` on an
/// unknown letter. `m` and `n` are kept, so that a setting made for Redis
/// reads back as it was set, and publish nothing: a key miss is no change
/// on the mesh's stream, and a write does not say whether it created its
/// key (a difference README.md lists with the others).
pub(crate) fn parse_flags(s: &[u8]) -> Option<u32> {
    let mut f = 0;
    for c in s {
        f |= match c {
            b'A' => ALL,
            b'g' => GENERIC,
            b'$' => STRING,
            b'l' => LIST,
            b's' => SET,
            b'h' => HASH,
            b'z' => ZSET,
            b'x' => EXPIRED,
            b'e' => EVICTED,
            b't' => STREAM,
            b'd' => MODULE,
            b'm' => KEY_MISS,
            b'n' => NEW,
            b'K' => KEYSPACE,
            b'E' => KEYEVENT,
            _ => return None,
        };
    }
    Some(f)
}

/// Renders flags as Redis's CONFIG GET does (`KEA` reads back as `AKE`).
pub(crate) fn flags_to_string(f: u32) -> String {
    let mut s = String::new();
    if f & ALL == ALL {
        s.push('A');
    } else {
        for (bit, c) in [
            (GENERIC, 'g'),
            (STRING, '$'),
            (LIST, 'l'),
            (SET, 's'),
            (HASH, 'h'),
            (ZSET, 'z'),
            (EXPIRED, 'x'),
            (EVICTED, 'e'),
            (STREAM, 't'),
            (MODULE, 'd'),
        ] {
            if f & bit != 0 {
                s.push(c);
            }
        }
    }
    for (bit, c) in [(KEYSPACE, 'K'), (KEYEVENT, 'E'), (KEY_MISS, 'm'), (NEW, 'n')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    s
}

/// Events that a local command knows better than the change stream does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hint {
    /// `set` then `expire`.
    SetWithTtl,
    /// `expire` (EXPIRE family).
    Expire,
    /// `persist`.
    Persist,
    /// A string command's own event (`append`, `incrby`, `setrange`...).
    String(&'static str),
    /// A keyspace command's own event (`rename_from`, `rename_to`,
    /// `copy_to`).
    Generic(&'static str),
}

/// Output queued for one subscribed client by the hub, drained by its
/// connection. Bounded: past `limit` bytes the client is killed (Redis's
/// `client-output-buffer-limit pubsub`).
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    /// Signalled when something is queued.
    pub(crate) ready: Notify,
    /// Cancelled when the limit is exceeded: the connection must close.
    pub(crate) kill: CancellationToken,
    limit: usize,
}

#[derive(Debug)]
struct OutboxState {
    out: Out,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState { out: Out::new() }),
            ready: Notify::new(),
            kill: CancellationToken::new(),
            limit,
        }
    }

    /// Switches the encoding of future messages (HELLO, RESET).
    pub(crate) fn set_resp3(&self, resp3: bool) {
        self.state.lock().out.resp3 = resp3;
    }

    /// Moves everything queued into `out` (the connection's reply buffer),
    /// keeping the order of messages and replies.
    pub(crate) fn drain_into(&self, out: &mut Out) {
        let mut st = self.state.lock();
        if st.out.is_empty() {
            return;
        }
        let (chunks, buf) = st.out.parts();
        debug_assert!(chunks.is_empty(), "messages are never chunked");
        out.raw(buf);
        st.out.written();
    }

    fn message(&self, channel: &[u8], payload: &[u8]) {
        self.queue(|o| {
            o.push(3);
            o.bulk(b"message");
            o.bulk(channel);
            o.bulk(payload);
        });
    }

    fn smessage(&self, channel: &[u8], payload: &[u8]) {
        self.queue(|o| {
            o.push(3);
            o.bulk(b"smessage");
            o.bulk(channel);
            o.bulk(payload);
        });
    }

    fn pmessage(&self, pattern: &[u8], channel: &[u8], payload: &[u8]) {
        self.queue(|o| {
            o.push(4);
            o.bulk(b"pmessage");
            o.bulk(pattern);
            o.bulk(channel);
            o.bulk(payload);
        });
    }

    /// An invalidation of `keys` (`None`: of every key) for a tracking
    /// client, as Redis sends it: an `invalidate` push to a RESP3
    /// connection; to a RESP2 one only if it is a redirect target in
    /// pub/sub mode (`as_message`), as a message on `__redis__:invalidate`.
    pub(crate) fn invalidate(&self, keys: Option<&[&[u8]]>, as_message: bool) {
        let resp3 = self.state.lock().out.resp3;
        if !resp3 && !as_message {
            return;
        }
        self.queue(|o| {
            if o.resp3 {
                o.push(2);
                o.bulk(b"invalidate");
            } else {
                o.push(3);
                o.bulk(b"message");
                o.bulk(b"__redis__:invalidate");
            }
            match keys {
                Some(keys) => {
                    o.array(keys.len());
                    for k in keys {
                        o.bulk(k);
                    }
                }
                None => o.null(),
            }
        });
    }

    /// Tells a RESP3 tracking client that the connection its
    /// invalidations were redirected to (`id`) is gone. A RESP2 client
    /// cannot be told (as in Redis).
    pub(crate) fn redirect_broken(&self, id: u64) {
        if !self.state.lock().out.resp3 {
            return;
        }
        self.queue(|o| {
            o.push(2);
            o.bulk(b"tracking-redir-broken");
            o.int(id as i64);
        });
    }

    fn queue(&self, f: impl FnOnce(&mut Out)) {
        if self.kill.is_cancelled() {
            return;
        }
        let over = {
            let mut st = self.state.lock();
            f(&mut st.out);
            st.out.len() > self.limit
        };
        if over {
            self.state.lock().out.clear();
            self.kill.cancel();
        }
        self.ready.notify_one();
    }
}

/// One subscriber of a channel or pattern.
#[derive(Clone, Debug)]
struct Sub {
    client: u64,
    outbox: Arc<Outbox>,
}

#[derive(Debug, Default)]
struct Subs {
    channels: HashMap<Bytes, Vec<Sub>>,
    patterns: Vec<(Bytes, Sub)>,
    /// Shard channels (SSUBSCRIBE): a namespace apart, as in Redis.
    shard_channels: HashMap<Bytes, Vec<Sub>>,
    /// Whether keyspace notifications are published now (someone listens
    /// and they are enabled).
    notifying: bool,
    /// The last change published per key: kept under this lock, so that
    /// what it admits is delivered in the order it admitted it.
    order: Order,
    /// A channel name being built, kept for its allocation.
    chan: Vec<u8>,
}

impl Subs {
    /// Queues `payload` on `channel` for its channel and pattern
    /// subscribers. Returns how many.
    fn deliver(&self, channel: &[u8], payload: &[u8]) -> usize {
        let mut n = 0;
        if let Some(v) = self.channels.get(channel) {
            for sub in v {
                sub.outbox.message(channel, payload);
                n += 1;
            }
        }
        for (pat, sub) in &self.patterns {
            if glob_match(pat, channel) {
                sub.outbox.pmessage(pat, channel, payload);
                n += 1;
            }
        }
        n
    }
}

/// The subscriptions of one server, and its keyspace notifications.
pub(crate) struct Hub {
    mesh: Mesh,
    /// `notify-keyspace-events`.
    flags: AtomicU32,
    subs: Mutex<Subs>,
    /// Mirrors `Subs::notifying`, readable without a lock.
    notifying: AtomicBool,
    /// Better event names for local writes.
    hints: Hints,
    /// Messages delivered (for INFO).
    pub(crate) delivered: AtomicU64,
    /// Cancelled on server shutdown: notifications stop.
    shutdown: CancellationToken,
    /// The tap on the mesh's changes, started while notifying; `None`
    /// before [`Hub::listen`] and after [`Hub::close`].
    tap: Mutex<Option<crate::node::taps::ChangeTap>>,
    /// The mesh's pub/sub messages reach this server's subscribers through
    /// it, for as long as the hub lives.
    listener: Mutex<Option<crate::MessageListener>>,
}

/// Hints left behind by writes that were never published (a write voided
/// by a concurrent FLUSHALL) are dropped past this many in one shard.
const MAX_HINTS: usize = 4 * 1024;
/// Shards of [`Hints`]: writers of different keys rarely wait for one
/// another.
const HINT_SHARDS: usize = 16;

/// The event names of local writes, by stamp and key (a transaction's
/// writes share one stamp), left by the command for its notification. A
/// key is held as a 64-bit hash, so that neither side copies it: two keys
/// of one transaction sharing a hash (odds of 2^-64) could swap their
/// names, never lose a message.
struct Hints {
    hasher: foldhash::fast::RandomState,
    shards: [HintShard; HINT_SHARDS],
}

/// One shard of [`Hints`], by stamp and key hash.
type HintShard = Mutex<HashMap<(Stamp, u64), Hint, foldhash::fast::FixedState>>;

impl Hints {
    fn new() -> Self {
        Hints { hasher: Default::default(), shards: std::array::from_fn(|_| Mutex::new(HashMap::default())) }
    }

    fn shard(&self, key: &[u8]) -> (u64, &HintShard) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        (h, &self.shards[(h >> 60) as usize % HINT_SHARDS])
    }

    fn insert(&self, stamp: Stamp, key: &[u8], hint: Hint) {
        let (h, shard) = self.shard(key);
        let mut m = shard.lock();
        if m.len() >= MAX_HINTS {
            m.clear();
        }
        m.insert((stamp, h), hint);
    }

    fn take(&self, stamp: Stamp, key: &[u8]) -> Option<Hint> {
        let (h, shard) = self.shard(key);
        shard.lock().remove(&(stamp, h))
    }

    fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }
}

impl Hub {
    pub(crate) fn new(mesh: Mesh, flags: u32, shutdown: CancellationToken) -> Self {
        Hub {
            mesh,
            flags: AtomicU32::new(flags),
            subs: Mutex::new(Subs::default()),
            notifying: AtomicBool::new(false),
            hints: Hints::new(),
            delivered: AtomicU64::new(0),
            shutdown,
            tap: Mutex::new(None),
            listener: Mutex::new(None),
        }
    }

    /// Starts taking the mesh's pub/sub messages (published here, by this
    /// server's PUBLISH or the embedding application, or by other peers)
    /// to this server's subscribers.
    pub(crate) fn listen(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        let l = self.mesh.on_message(move |m| hub.upgrade().map_or(0, |h| h.deliver(m)));
        *self.listener.lock() = Some(l);
        // And the mesh's changes, for keyspace notifications, once anyone
        // listens for them.
        let hub = Arc::downgrade(self);
        let tap = self.mesh.tap_changes(move |key, kind, stamp| {
            if let Some(h) = hub.upgrade() {
                h.changed(key, kind, stamp);
            }
        });
        *self.tap.lock() = Some(tap);
        let mut s = self.subs.lock();
        self.reconcile(&mut s);
    }

    /// Stops hearing the mesh (the server stopped).
    pub(crate) fn close(&self) {
        // Each is dropped once its lock is released: unregistering takes
        // the mesh's own locks, and no lock here need be held meanwhile.
        let tap = self.tap.lock().take();
        drop(tap);
        let listener = self.listener.lock().take();
        drop(listener);
    }

    /// Hands one pub/sub message to its subscribers here; how many.
    fn deliver(&self, m: &Publication) -> usize {
        if !m.sharded {
            return self.publish(&m.channel, &m.message);
        }
        let s = self.subs.lock();
        let subs = s.shard_channels.get(&m.channel).map_or(&[][..], |v| &v[..]);
        for sub in subs {
            sub.outbox.smessage(&m.channel, &m.message);
        }
        let n = subs.len();
        drop(s);
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// CONFIG SET notify-keyspace-events.
    pub(crate) fn set_flags(self: &Arc<Self>, flags: u32) {
        self.flags.store(flags, Ordering::Relaxed);
        let mut s = self.subs.lock();
        self.reconcile(&mut s);
    }

    /// Whether local writes should leave hints (notifications are being
    /// published).
    pub(crate) fn listening(&self) -> bool {
        self.notifying.load(Ordering::Relaxed)
    }

    /// Records the events of a local write stamped `stamp`. Called from
    /// inside `Mesh::write_with`, before the change is published.
    pub(crate) fn hint(&self, stamp: Stamp, key: &[u8], hint: Hint) {
        self.hints.insert(stamp, key, hint);
    }

    /// Numbers of channels and patterns with subscribers (INFO).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let s = self.subs.lock();
        (s.channels.len(), s.patterns.iter().map(|(p, _)| p).collect::<HashSet<_>>().len())
    }

    /// Channels (or shard channels) with subscribers here matching
    /// `pattern` (PUBSUB CHANNELS, SHARDCHANNELS).
    pub(crate) fn channels(&self, sharded: bool, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let s = self.subs.lock();
        let map = if sharded { &s.shard_channels } else { &s.channels };
        map.keys().filter(|c| pattern.is_none_or(|p| glob_match(p, c))).cloned().collect()
    }

    /// Subscribers here of `channel` (PUBSUB NUMSUB, SHARDNUMSUB).
    pub(crate) fn subscribers(&self, sharded: bool, channel: &[u8]) -> usize {
        let s = self.subs.lock();
        let map = if sharded { &s.shard_channels } else { &s.channels };
        map.get(channel).map_or(0, Vec::len)
    }

    /// Pattern subscriptions here, counted once per client and pattern
    /// (PUBSUB NUMPAT).
    pub(crate) fn numpat(&self) -> usize {
        self.subs.lock().patterns.len()
    }

    /// Subscribes `client` to shard channel `channel`. Returns false if it
    /// already was. Shard channels carry no keyspace notifications, so
    /// notifying does not change.
    pub(crate) fn ssubscribe(&self, client: u64, outbox: &Arc<Outbox>, channel: Bytes) -> bool {
        let mut s = self.subs.lock();
        let v = s.shard_channels.entry(channel).or_default();
        if v.iter().any(|x| x.client == client) {
            return false;
        }
        v.push(Sub { client, outbox: outbox.clone() });
        true
    }

    pub(crate) fn sunsubscribe(&self, client: u64, channel: &[u8]) {
        let mut s = self.subs.lock();
        if let Some(v) = s.shard_channels.get_mut(channel) {
            v.retain(|x| x.client != client);
            if v.is_empty() {
                s.shard_channels.remove(channel);
            }
        }
    }

    /// Subscribes `client` to `channel`. Returns false if it already was.
    pub(crate) fn subscribe(self: &Arc<Self>, client: u64, outbox: &Arc<Outbox>, channel: Bytes) -> bool {
        let mut s = self.subs.lock();
        let v = s.channels.entry(channel).or_default();
        if v.iter().any(|x| x.client == client) {
            return false;
        }
        v.push(Sub { client, outbox: outbox.clone() });
        self.reconcile(&mut s);
        true
    }

    /// Subscribes `client` to `pattern`. Returns false if it already was.
    pub(crate) fn psubscribe(self: &Arc<Self>, client: u64, outbox: &Arc<Outbox>, pattern: Bytes) -> bool {
        let mut s = self.subs.lock();
        if s.patterns.iter().any(|(p, x)| x.client == client && *p == pattern) {
            return false;
        }
        s.patterns.push((pattern, Sub { client, outbox: outbox.clone() }));
        self.reconcile(&mut s);
        true
    }

    pub(crate) fn unsubscribe(self: &Arc<Self>, client: u64, channel: &[u8]) {
        let mut s = self.subs.lock();
        if let Some(v) = s.channels.get_mut(channel) {
            v.retain(|x| x.client != client);
            if v.is_empty() {
                s.channels.remove(channel);
            }
        }
        self.reconcile(&mut s);
    }

    pub(crate) fn punsubscribe(self: &Arc<Self>, client: u64, pattern: &[u8]) {
        let mut s = self.subs.lock();
        s.patterns.retain(|(p, x)| !(x.client == client && p == pattern));
        self.reconcile(&mut s);
    }

    /// Starts or stops notifying: while someone listens and notifications
    /// are enabled. Started under the lock, before the SUBSCRIBE reply, so
    /// that every change made after that reply is heard.
    fn reconcile(&self, s: &mut Subs) {
        let wanted = (!s.channels.is_empty() || !s.patterns.is_empty())
            && self.flags() & (KEYSPACE | KEYEVENT) != 0
            && !self.shutdown.is_cancelled();
        if s.notifying == wanted {
            return;
        }
        s.notifying = wanted;
        self.notifying.store(wanted, Ordering::Relaxed);
        if let Some(tap) = self.tap.lock().as_ref() {
            tap.set_active(wanted);
        }
        if !wanted {
            self.hints.clear();
        }
    }

    /// Publishes `payload` on `channel` to channel and pattern subscribers.
    /// Returns the number of receivers.
    pub(crate) fn publish(&self, channel: &[u8], payload: &[u8]) -> usize {
        let n = self.subs.lock().deliver(channel, payload);
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Publishes the notifications of one change, told by the mesh's tap,
    /// unless notifying stopped or [`Order`] finds it older than what was
    /// published before it for its key.
    fn changed(&self, key: &[u8], kind: ChangeKind, stamp: Stamp) {
        let flags = self.flags();
        // The hint is taken whatever becomes of the change, so that none is
        // left behind.
        let events: &[(&str, u32)] = match kind {
            ChangeKind::Put => match self.hints.take(stamp, key) {
                None => &[("set", STRING)],
                Some(Hint::SetWithTtl) => &[("set", STRING), ("expire", GENERIC)],
                Some(Hint::Expire) => &[("expire", GENERIC)],
                Some(Hint::Persist) => &[("persist", GENERIC)],
                Some(Hint::String(event)) => &[(event, STRING)][..],
                Some(Hint::Generic(event)) => &[(event, GENERIC)][..],
            },
            ChangeKind::Delete => match self.hints.take(stamp, key) {
                Some(Hint::Generic(event)) => &[(event, GENERIC)][..],
                _ => &[("del", GENERIC)],
            },
            ChangeKind::Expire => &[("expired", EXPIRED)],
            ChangeKind::Evict => &[("evicted", EVICTED)],
            ChangeKind::Flush => &[("flushall", GENERIC)],
        };
        let mut s = self.subs.lock();
        if !s.notifying {
            return;
        }
        let admitted = match kind {
            ChangeKind::Flush => {
                s.order.flushed(stamp);
                true
            }
            _ => s.order.admit(key, stamp, matches!(kind, ChangeKind::Expire | ChangeKind::Evict)),
        };
        if !admitted {
            return;
        }
        let mut chan = std::mem::take(&mut s.chan);
        let mut n = 0;
        for &(event, class) in events {
            if flags & class == 0 {
                continue;
            }
            if flags & KEYSPACE != 0 && kind != ChangeKind::Flush {
                chan.clear();
                chan.extend_from_slice(b"__keyspace@0__:");
                chan.extend_from_slice(key);
                n += s.deliver(&chan, event.as_bytes());
            }
            if flags & KEYEVENT != 0 {
                chan.clear();
                chan.extend_from_slice(b"__keyevent@0__:");
                chan.extend_from_slice(event.as_bytes());
                n += s.deliver(&chan, key);
            }
        }
        s.chan = chan;
        drop(s);
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Unsubscribes a client from everything (its connection ended).
    pub(crate) fn drop_client(self: &Arc<Self>, client: u64, channels: &HashSet<Bytes>, patterns: &HashSet<Bytes>) {
        let mut s = self.subs.lock();
        // Shard channels are found by client here, so that the connection
        // loop needs to hand over no more than it did.
        s.shard_channels.retain(|_, v| {
            v.retain(|x| x.client != client);
            !v.is_empty()
        });
        if channels.is_empty() && patterns.is_empty() {
            return;
        }
        for c in channels {
            if let Some(v) = s.channels.get_mut(c) {
                v.retain(|x| x.client != client);
                if v.is_empty() {
                    s.channels.remove(c);
                }
            }
        }
        s.patterns.retain(|(_, x)| x.client != client);
        self.reconcile(&mut s);
    }
}

/// Slots of [`Order`]: keys changed within the moment two changes race
/// rarely share one.
const ORDER_SLOTS: usize = 4096;

/// Drops a change that would make a key's last message name a state older
/// than one already published. A key's changes are told under its lock, in
/// the order applied, and its stamps only grow as they are (a write is
/// stamped under the key's lock, and a merge applies only a newer register;
/// an expiry, an eviction or a refusal reply carries the stamp it removes),
/// so this drops nothing they tell in order. What it does drop: a change
/// stamped below the last `clear_below` told after the FLUSHALL that
/// removed it (which the store does not do: it tells a FLUSHALL under
/// every shard's lock, and hides what it removes until swept); and the
/// same write merged again in place of its own eviction's
/// stub (an expiry or an eviction shares its stamp with the write whose
/// value it ends, and comes after it), which only a store without a bound
/// does (its bound lifted since), and only while the key's slot still
/// remembers it: its key then reads a value that was last heard `evicted`.
///
/// Keys share a fixed number of slots, each holding the hash of the last
/// key published in it, that change's stamp, and whether it ended the
/// value. A key whose slot another has taken since is not checked; missing
/// a late change that way takes a second key of its slot changing in the
/// moment the two changes race.
struct Order {
    hasher: std::hash::RandomState,
    slots: Box<[(u64, Stamp, bool)]>,
    clear_below: Stamp,
}

impl Default for Order {
    fn default() -> Self {
        Order::new()
    }
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Order").field("clear_below", &self.clear_below).finish()
    }
}

impl Order {
    fn new() -> Self {
        Order {
            hasher: std::hash::RandomState::new(),
            slots: vec![(0, Stamp::ZERO, false); ORDER_SLOTS].into_boxed_slice(),
            clear_below: Stamp::ZERO,
        }
    }

    /// Whether a change to `key` stamped `stamp` is to be published; if it
    /// is, it becomes the last one of its key. `ends` says whether it ends
    /// the value of the write stamped `stamp` (an expiry, an eviction).
    fn admit(&mut self, key: &[u8], stamp: Stamp, ends: bool) -> bool {
        use std::hash::BuildHasher;
        if stamp < self.clear_below {
            return false;
        }
        let h = self.hasher.hash_one(key);
        let slot = &mut self.slots[h as usize % ORDER_SLOTS];
        if slot.0 == h && (stamp, ends) < (slot.1, slot.2) {
            return false;
        }
        *slot = (h, stamp, ends);
        true
    }

    /// Everything stamped below `clear_below` is gone.
    fn flushed(&mut self, clear_below: Stamp) {
        self.clear_below = self.clear_below.max(clear_below);
    }
}

/// Redis's glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`,
/// and `\` escapes. Iterative, so a hostile pattern costs O(pattern × text)
/// and no stack.
pub(crate) fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            if pat[p] == b'*' {
                while p < pat.len() && pat[p] == b'*' {
                    p += 1;
                }
                if p == pat.len() {
                    return true;
                }
                star = Some((p, i));
                continue;
            }
            if let Some(next) = match_one(pat, p, s[i]) {
                p = next;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches one non-`*` pattern element at `p` against `c`; the index after
/// the element if it matches.
fn match_one(pat: &[u8], mut p: usize, c: u8) -> Option<usize> {
    match pat[p] {
        b'?' => Some(p + 1),
        b'[' => {
            p += 1;
            let not = pat.get(p) == Some(&b'^');
            if not {
                p += 1;
            }
            let mut matched = false;
            loop {
                if p >= pat.len() {
                    // Unterminated class: it ends with the pattern.
                    break;
                }
                if pat[p] == b'\\' && p + 1 < pat.len() {
                    matched |= pat[p + 1] == c;
                    p += 2;
                } else if pat[p] == b']' {
                    p += 1;
                    break;
                } else if p + 2 < pat.len() && pat[p + 1] == b'-' {
                    let (a, b) = (pat[p].min(pat[p + 2]), pat[p].max(pat[p + 2]));
                    matched |= (a..=b).contains(&c);
                    p += 3;
                } else {
                    matched |= pat[p] == c;
                    p += 1;
                }
            }
            (matched != not).then_some(p)
        }
        b'\\' if p + 1 < pat.len() => (pat[p + 1] == c).then_some(p + 2),
        x => (x == c).then_some(p + 1),
    }
}

/// An encoded subscribe-family confirmation (`subscribe`, `psubscribe`,
/// `unsubscribe`, `punsubscribe`): a push in RESP3, an array in RESP2.
pub(crate) fn confirm(out: &mut Out, kind: &[u8], name: Option<&[u8]>, count: usize) {
    out.push(3);
    out.bulk(kind);
    match name {
        Some(n) => out.bulk(n),
        None => out.null(),
    }
    out.int(count as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_redis() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("__keyspace@0__:*", "__keyspace@0__:user:1"));
        assert!(!m("__keyspace@0__:*", "__keyevent@0__:set"));
        assert!(m("h?llo", "hello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a*", "a"));
        assert!(!m("a", "ab"));
        assert!(!m("ab", "a"));
        assert!(m("[abc", "b"));
        // A hostile pattern finishes quickly.
        let p = "*a".repeat(100);
        assert!(!glob_match(
            p.as_bytes(),
            "a".repeat(5000).as_bytes()[..].iter().chain(b"b").copied().collect::<Vec<_>>().as_slice()
        ));
    }

    /// A peer alone, to feed a hub.
    async fn lone_mesh(name: &str) -> Mesh {
        let ca = crate::transport::certs::EphemeralCa::new().unwrap();
        let tls = ca.issue(name).unwrap();
        Mesh::builder().config(crate::MeshConfig::for_test(name)).tls(tls).start().await.unwrap()
    }

    /// Messages queued in `outbox`, taken out.
    fn take(outbox: &Outbox) -> Vec<u8> {
        let mut out = Out::new();
        outbox.drain_into(&mut out);
        out.parts().1.to_vec()
    }

    /// One client subscribes and leaves, and another subscribes: each
    /// change is heard once, by the one subscribed, by the time the write
    /// returns; with no one subscribed nothing is, and once the hub is
    /// closed nothing is either.
    #[tokio::test]
    async fn a_change_is_heard_once_by_those_subscribed_when_it_is_made() {
        let mesh = lone_mesh("tap").await;
        let hub = Arc::new(Hub::new(mesh.clone(), parse_flags(b"KA").unwrap(), CancellationToken::new()));
        hub.listen();
        let (leaving, staying) = (Arc::new(Outbox::new(1 << 20)), Arc::new(Outbox::new(1 << 20)));
        let pmessages = |b: &[u8]| b.windows(8).filter(|w| w == b"pmessage").count();
        for round in 0..64 {
            assert!(hub.psubscribe(1, &leaving, Bytes::from_static(b"*")));
            hub.punsubscribe(1, b"*");
            mesh.insert(format!("unheard{round}"), "v").unwrap();
            assert!(hub.psubscribe(2, &staying, Bytes::from_static(b"*")));
            mesh.insert(format!("k{round}"), "v").unwrap();
            let heard = take(&staying);
            assert_eq!(pmessages(&heard), 1, "round {round}: {}", String::from_utf8_lossy(&heard));
            assert!(take(&leaving).is_empty(), "round {round}");
            hub.punsubscribe(2, b"*");
        }
        assert!(hub.psubscribe(2, &staying, Bytes::from_static(b"*")));
        hub.close();
        mesh.insert("after", "v").unwrap();
        assert!(take(&staying).is_empty(), "a closed hub hears nothing");
        mesh.shutdown().await;
    }

    /// Changes that reach the hub late (older than one already published
    /// for their key, a write after the expiry or eviction of its own
    /// value, or below a FLUSHALL already published) are dropped; changes
    /// in order, and those of other keys, are not.
    #[tokio::test]
    async fn late_changes_are_dropped_and_the_last_message_names_the_state() {
        use crate::hlc::NodeId;
        use crate::store::{Change, Origin};
        let mesh = lone_mesh("order").await;
        let hub = Hub::new(mesh.clone(), parse_flags(b"KEA").unwrap(), CancellationToken::new());
        let sub = Arc::new(Outbox::new(1 << 20));
        hub.subs.lock().patterns.push((Bytes::from_static(b"*"), Sub { client: 1, outbox: sub.clone() }));
        hub.subs.lock().notifying = true;
        let at = |hlc: u64| Stamp { hlc, node: NodeId(1) };
        let change = |key: &'static str, kind: ChangeKind, hlc: u64| Change {
            key: Bytes::from_static(key.as_bytes()),
            kind,
            origin: Origin::Local,
            stamp: at(hlc),
        };
        let flushed = |hlc: u64| change("", ChangeKind::Flush, hlc);
        for event in [
            change("a", ChangeKind::Put, 20),
            change("a", ChangeKind::Delete, 10), // late: dropped
            change("b", ChangeKind::Delete, 10),
            change("b", ChangeKind::Put, 20),
            change("b", ChangeKind::Expire, 20), // the write it removes
            change("b", ChangeKind::Put, 20),    // the write it ended, late: dropped
            change("d", ChangeKind::Evict, 22),
            change("d", ChangeKind::Put, 22), // the write it evicted, late: dropped
            flushed(30),
            change("c", ChangeKind::Put, 25), // below the FLUSHALL: dropped
            change("c", ChangeKind::Put, 40),
        ] {
            hub.changed(&event.key, event.kind, event.stamp);
        }
        let want = Outbox::new(1 << 20);
        for (key, event) in [("a", "set"), ("b", "del"), ("b", "set"), ("b", "expired"), ("d", "evicted")] {
            want.pmessage(b"*", format!("__keyspace@0__:{key}").as_bytes(), event.as_bytes());
            want.pmessage(b"*", format!("__keyevent@0__:{event}").as_bytes(), key.as_bytes());
        }
        want.pmessage(b"*", b"__keyevent@0__:flushall", b"");
        want.pmessage(b"*", b"__keyspace@0__:c", b"set");
        want.pmessage(b"*", b"__keyevent@0__:set", b"c");
        let (heard, want) = (take(&sub), take(&want));
        assert_eq!(String::from_utf8_lossy(&heard), String::from_utf8_lossy(&want));
        mesh.shutdown().await;
    }

    #[test]
    fn flags_round_trip() {
        assert_eq!(flags_to_string(parse_flags(b"KEA").unwrap()), "AKE");
        assert_eq!(flags_to_string(parse_flags(b"Kg$x").unwrap()), "g$xK");
        assert_eq!(parse_flags(b""), Some(0));
        assert_eq!(parse_flags(b"Q"), None);
    }
}
