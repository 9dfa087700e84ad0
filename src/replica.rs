//! The sans-IO core of one peer: the store, the membership view and the
//! bootstrap state, with the rules that tie them together.
//!
//! The shell (tokio + quinn) owns a `Replica` and feeds it local writes,
//! pushed batches, anti-entropy sessions ([`crate::sync::Session`]) and timer
//! ticks, always with the current time as an argument. The simulation tests
//! drive the very same type with virtual time.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::hlc::Stamp;
use crate::locks::Mutex;
use crate::membership::{Learned, MemberId, MemberInfo, Members, Status};
use crate::store::{
    Change, ChangeKind, Compaction, MergeOutcome, Origin, Register, Slot, Store, StoreConfig, StoreConfigError, Written,
};
use crate::wire::{DeltaBatch, Refusal, SyncHello};

/// Why a local write was refused. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The peer was started with seeds and has not completed its first
    /// anti-entropy round yet (Redis's `-LOADING`). Retry shortly.
    #[error("LOADING meshcache is loading the dataset from its peers")]
    Loading,
    /// A newer incarnation of this peer's name exists, or an operator forgot
    /// it: this process must stop.
    #[error("this peer was superseded by a newer incarnation and no longer accepts writes")]
    Superseded,
    /// The store is over its memory bound and its eviction policy may not
    /// make room (`noeviction`, or a volatile policy with no value that has
    /// a TTL). Deletes and writes that add no memory still succeed.
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    OutOfMemory,
}

impl From<crate::store::OutOfMemory> for WriteError {
    fn from(_: crate::store::OutOfMemory) -> Self {
        WriteError::OutOfMemory
    }
}

impl WriteError {
    /// Whether retrying the same write later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WriteError::Loading)
    }
}

/// Why a peer's message was not applied. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The sender is a superseded, departed or forgotten incarnation, or
    /// one this view does not hold (an invalid name, or a full view).
    #[error("peer {0} is superseded, has left, was forgotten, or is not admitted to the view")]
    Refused(MemberId),
    /// This process learned that it has itself been superseded.
    #[error("this peer was superseded by a newer incarnation")]
    SelfSuperseded,
}

/// What one timer tick did.
#[derive(Debug, Default, Clone)]
pub struct Tick {
    /// Values whose TTL ran out since the last tick.
    pub expired: Vec<Change>,
    /// Tombstones collected.
    pub collected_tombstones: usize,
    /// Expired values collected.
    pub collected_expired: usize,
    /// A compaction, if the tombstone budget was exceeded.
    pub compaction: Option<Compaction>,
}

/// The core of one peer. Thread-safe: reads and local writes go straight to
/// the sharded store; the membership view sits behind a mutex that is never
/// held across a store operation (`tick` reads the watermark, releases the
/// mutex, then collects).
#[derive(Debug)]
pub struct Replica {
    me: MemberId,
    store: Store,
    members: Mutex<Members>,
    /// False until the first complete anti-entropy round, for a peer started
    /// with seeds (or until the shell gives up waiting, [`Replica::force_boot`]).
    /// While false, local writes get [`WriteError::Loading`].
    booted: AtomicBool,
    /// False until the first complete anti-entropy round with a booted
    /// peer, for a peer started with seeds; never set by a timeout. While
    /// false nothing is collected: the view of who exists holds this peer
    /// alone, so every tombstone would look stable at once, and the floor
    /// it raised would stand for deletes that no other peer has seen.
    view_known: AtomicBool,
}

impl Replica {
    /// A new replica for `me`. `bootstrapped` is false for a peer started
    /// with seeds: it refuses writes until it has synced with one.
    pub fn new(me: MemberId, config: StoreConfig, bootstrapped: bool) -> Result<Self, StoreConfigError> {
        let store = Store::new(me.incarnation.node, config)?;
        Ok(Replica {
            members: Mutex::new(Members::new(me.clone())),
            me,
            store,
            booted: AtomicBool::new(bootstrapped),
            view_known: AtomicBool::new(bootstrapped),
        })
    }

    /// This peer.
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether bootstrap is complete.
    pub fn is_booted(&self) -> bool {
        self.booted.load(Ordering::Acquire)
    }

    /// Ends bootstrap without a sync: the shell calls this after
    /// `bootstrap_timeout` when no seed ever answered. Writes are accepted
    /// from then on; collection still waits for a first complete round with
    /// a booted peer (see `view_known`), and the tombstone budget bounds
    /// what waits.
    pub fn force_boot(&self) {
        self.booted.store(true, Ordering::Release);
    }

    /// Whether this process learned that it was superseded.
    pub fn is_superseded(&self) -> bool {
        self.members.lock().self_superseded()
    }

    pub(crate) fn check_writable(&self) -> Result<(), WriteError> {
        if !self.is_booted() {
            return Err(WriteError::Loading);
        }
        if self.is_superseded() {
            return Err(WriteError::Superseded);
        }
        Ok(())
    }

    /// Reads `key` (local, no network).
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<Bytes> {
        self.store.get(key, now_ms)
    }

    /// Reads `key` and lends the value to `f`; see [`Store::get_with`].
    pub fn get_with<R>(&self, key: &[u8], now_ms: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.store.get_with(key, now_ms, f)
    }

    /// Reads `key` and lends the value to `f`, reading `clock` only if the
    /// key has an expiry; see [`Store::get_with_clock`].
    pub fn get_with_clock<R>(&self, key: &[u8], clock: impl FnOnce() -> u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.store.get_with_clock(key, clock, f)
    }

    /// Writes a value with an optional TTL in ms.
    pub fn put(&self, key: Bytes, value: Bytes, ttl_ms: Option<u64>, now_ms: u64) -> Result<Written, WriteError> {
        self.check_writable()?;
        Ok(self.store.put(key, value, ttl_ms, now_ms)?)
    }

    /// Deletes `key`.
    pub fn delete(&self, key: Bytes, now_ms: u64) -> Result<Written, WriteError> {
        self.check_writable()?;
        Ok(self.store.delete(key, now_ms))
    }

    /// Local read-modify-write; see [`Store::write_with`].
    pub fn write_with(
        &self,
        key: Bytes,
        now_ms: u64,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, WriteError> {
        self.check_writable()?;
        Ok(self.store.write_with(key, now_ms, f)?)
    }

    /// A local write that does not read the value it replaces; see
    /// [`Store::write_blind`].
    pub fn write_blind(
        &self,
        key: Bytes,
        now_ms: u64,
        f: impl FnOnce(Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, WriteError> {
        self.check_writable()?;
        Ok(self.store.write_blind(key, now_ms, f)?)
    }

    /// FLUSHALL: a mesh-wide range tombstone at a fresh stamp.
    pub fn flush_all(&self, now_ms: u64) -> Result<Stamp, WriteError> {
        self.check_writable()?;
        Ok(self.store.flush_all(now_ms).0)
    }

    /// Wraps registers written here into a batch for pushing.
    pub fn deltas(&self, entries: Vec<(Bytes, Register)>, with_members: bool) -> DeltaBatch {
        // The membership's lock is held only for its gossip, as in
        // `sync_hello`.
        let clear_below = self.store.floors().clear_below;
        let members = with_members.then(|| self.members.lock().gossip());
        DeltaBatch { from: self.me.clone(), hlc: self.store.clock().last(), clear_below, members, entries }
    }

    /// Applies a pushed batch. Pushes from a superseded incarnation are
    /// dropped; everything else goes through the floor filter like
    /// anti-entropy (but a push refused by the floor gets no reply).
    pub fn handle_deltas(&self, batch: DeltaBatch, now_ms: u64) -> Result<MergeOutcome, PeerError> {
        let mut out = MergeOutcome::default();
        match self.contact(&batch.from, batch.members.as_deref(), batch.hlc, batch.clear_below, now_ms) {
            Ok(changes) => out.changes = changes,
            Err(SyncRefused::SelfSuperseded) => return Err(PeerError::SelfSuperseded),
            Err(SyncRefused::Peer(_)) => return Err(PeerError::Refused(batch.from)),
        }
        let merged = self.store.merge(batch.entries, now_ms);
        out.changes.extend(merged.changes);
        out.refused = merged.refused;
        out.stale = merged.stale;
        out.refused_ghost = merged.refused_ghost;
        out.below_clear = merged.below_clear;
        out.future = merged.future;
        Ok(out)
    }

    /// Learns of a peer by direct contact (a hello). Returns what changed,
    /// or the refusal to send back: a name no certificate can carry, a
    /// superseded or departed incarnation, or a new name once the view is
    /// full.
    pub fn learn_peer(&self, id: &MemberId) -> Result<Learned, Refusal> {
        let mut m = self.members.lock();
        if crate::membership::name_problem(&id.name).is_some() {
            m.note_invalid();
            return Err(Refusal::InvalidName);
        }
        if m.is_refused(id) {
            return Err(Refusal::Superseded { current: m.incarnation_of(&id.name) });
        }
        match m.learn(id, Status::Active) {
            Learned::Ignored => Err(Refusal::Full),
            l => Ok(l),
        }
    }

    /// Bounds the members this peer keeps in its view (see
    /// [`crate::config::MeshConfig::max_members`]).
    pub fn set_max_members(&self, n: usize) {
        self.members.lock().set_max_members(n);
    }

    /// Member entries ignored so far: invalid ones, and new names over the
    /// cap.
    pub fn members_ignored(&self) -> crate::membership::Ignored {
        self.members.lock().ignored()
    }

    /// A peer reports that `current` runs this peer's name: if it is newer
    /// than this process, this process is superseded and must stop.
    /// Returns whether it is.
    pub fn learn_own_successor(&self, current: crate::membership::Incarnation) -> bool {
        let mut m = self.members.lock();
        let me = m.me().clone();
        m.learn(&MemberId { name: me.name, incarnation: current }, Status::Active);
        m.self_superseded()
    }

    /// A graceful goodbye from `id`: collection stops waiting for it.
    pub fn handle_goodbye(&self, id: &MemberId) -> Learned {
        self.members.lock().leave(id)
    }

    /// An operator removes `name` from the mesh.
    pub fn forget(&self, name: &str) -> bool {
        self.members.lock().forget(name).is_some()
    }

    /// Active members other than this one, with their `synced` watermark.
    pub fn members(&self) -> Vec<(MemberId, Option<u64>)> {
        self.members.lock().active().collect()
    }

    /// Every member known other than this one: status, `synced`, address.
    pub fn members_all(&self) -> Vec<(MemberId, Status, Option<u64>, Option<std::net::SocketAddr>)> {
        self.members.lock().all()
    }

    /// A counter bumped whenever the membership view changes.
    pub fn members_version(&self) -> u64 {
        self.members.lock().version()
    }

    /// Sets the address this peer advertises in gossip.
    pub fn set_my_addr(&self, addr: std::net::SocketAddr) {
        self.members.lock().set_my_addr(addr);
    }

    /// Records where a peer accepts connections (from its hello).
    pub fn set_peer_addr(&self, id: &MemberId, addr: std::net::SocketAddr) {
        self.members.lock().set_addr(id, addr);
    }

    /// The opening of an anti-entropy session from this side.
    pub(crate) fn sync_hello(&self) -> SyncHello {
        // One lock at a time: a transaction checks the membership
        // (`check_writable`) holding its shards' locks, so reading the
        // shards (`holds_part`) holding the membership's lock, as a guard
        // made inside the struct literal below would be until its end,
        // deadlocks with it.
        let (root, count) = self.store.root();
        let clear_below = self.store.floors().clear_below;
        let members = self.members.lock().gossip();
        let holds_part = self.store.holds_part();
        SyncHello {
            from: self.me.clone(),
            hlc: self.store.clock().last(),
            booted: self.is_booted(),
            clear_below,
            members,
            root,
            count,
            holds_part,
        }
    }

    /// Applies a peer's session opening: contact, gossip, clock, floors.
    pub(crate) fn observe_sync_hello(&self, h: &SyncHello, now_ms: u64) -> Result<Vec<Change>, SyncRefused> {
        self.contact(&h.from, Some(&h.members), h.hlc, h.clear_below, now_ms)
    }

    /// What every message from a peer carries: who it is, its view, its
    /// clock and its `clear_below`. Refuses a superseded, departed or
    /// forgotten sender; otherwise learns it, merges its view, observes its
    /// clock (a clock too far ahead is counted, not adopted) and raises
    /// `clear_below`. A sender whose name is invalid, or new to a full view,
    /// is refused.
    fn contact(
        &self,
        from: &MemberId,
        view: Option<&[MemberInfo]>,
        hlc: u64,
        clear_below: Stamp,
        now_ms: u64,
    ) -> Result<Vec<Change>, SyncRefused> {
        {
            let mut m = self.members.lock();
            if crate::membership::name_problem(&from.name).is_some() {
                m.note_invalid();
                return Err(SyncRefused::Peer(Refusal::InvalidName));
            }
            if m.is_refused(from) {
                return Err(SyncRefused::Peer(Refusal::Superseded { current: m.incarnation_of(&from.name) }));
            }
            // Data from a member the view does not hold would be merged
            // without collection ever waiting for it.
            if m.learn(from, Status::Active) == Learned::Ignored {
                return Err(SyncRefused::Peer(Refusal::Full));
            }
            if let Some(v) = view {
                m.learn_gossip(v);
            }
            if m.self_superseded() {
                return Err(SyncRefused::SelfSuperseded);
            }
        }
        let _ = self.store.clock().observe(hlc, now_ms);
        let mut changes = Vec::new();
        if let Ok(n) = self.store.raise_clear_below(clear_below, now_ms) {
            if n > 0 {
                changes.push(Change {
                    key: Bytes::new(),
                    kind: ChangeKind::Flush,
                    origin: Origin::Remote,
                    stamp: clear_below,
                });
            }
        }
        Ok(changes)
    }

    /// Records a complete anti-entropy round with `peer`, started at local
    /// time `started_ms`. A round with a bootstrapped peer ends bootstrap.
    pub(crate) fn complete_sync(&self, peer: &MemberId, started_ms: u64, peer_booted: bool) {
        self.members.lock().record_sync(peer, started_ms);
        if peer_booted {
            self.booted.store(true, Ordering::Release);
            self.view_known.store(true, Ordering::Release);
        }
    }

    /// Whether this peer has learned who else exists (it founded the mesh,
    /// or completed a round with a booted peer): only then does it collect.
    pub fn knows_the_mesh(&self) -> bool {
        self.view_known.load(Ordering::Acquire)
    }

    /// Timer work: expiry, collection, the tombstone budget.
    pub fn tick(&self, now_ms: u64) -> Tick {
        let expired = self.store.expire(now_ms);
        // The view of who exists is incomplete until a first round with a
        // booted peer (a timeout does not complete it), so nothing is known
        // to be stable before then.
        let stable_before = if self.knows_the_mesh() { self.members.lock().stable_before() } else { 0 };
        let (collected_tombstones, collected_expired) = self.store.collect(now_ms, stable_before);
        let compaction = self.store.compact_if_needed(now_ms);
        Tick { expired, collected_tombstones, collected_expired, compaction }
    }
}

/// Why a session opening was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncRefused {
    /// The peer is refused; tell it.
    Peer(Refusal),
    /// This process is superseded.
    SelfSuperseded,
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::hlc::NodeId;
    use crate::membership::Incarnation;

    /// An anti-entropy opening reads the shards while transactions, holding
    /// their shards' locks, check the membership: neither waits on the
    /// other for good. Bounded by count; the deadline only bounds a
    /// deadlock.
    #[test]
    fn an_opening_and_a_transaction_take_their_locks_in_no_crossing_order() {
        let me = MemberId { name: "a".into(), incarnation: Incarnation { started_ms: 0, node: NodeId(1) } };
        let r = Arc::new(Replica::new(me, StoreConfig::default(), true).unwrap());
        let (done, finished) = mpsc::channel();
        let openings = std::thread::spawn({
            let (r, done) = (r.clone(), done.clone());
            move || {
                for _ in 0..20_000 {
                    r.sync_hello();
                }
                done.send(()).unwrap();
            }
        });
        let transactions = std::thread::spawn(move || {
            for i in 0..20_000u64 {
                let _locked = r.store().lock([format!("k{}", i % 64)], 1_700_000_000_000 + i);
                r.check_writable().unwrap();
            }
            done.send(()).unwrap();
        });
        for _ in 0..2 {
            finished.recv_timeout(Duration::from_secs(60)).expect("an opening and a transaction deadlocked");
        }
        openings.join().unwrap();
        transactions.join().unwrap();
    }
}
