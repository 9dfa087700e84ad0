//! The replicated keyspace: a sharded map from key to LWW register.
//!
//! # Concurrency
//!
//! The keyspace is split into shards, each behind its own `RwLock`; a key's
//! shard is fixed by its hash. Reads take one shard's read lock, writes one
//! shard's write lock, so readers never take a global lock and writes to
//! different shards run in parallel. The two store-wide stamps
//! ([`Floors`]) sit behind a separate lock that is always taken *after* a
//! shard lock, never before one, so the two cannot deadlock.
//!
//! # Tombstones
//!
//! See ALGORITHM.md, "Tombstones and their collection". The store implements
//! the mechanics (arrival times, the collection queue, `gc_floor`, the
//! refusal reply, `clear_below` and compaction); the [`crate::replica`]
//! decides *when* collection is safe from the per-member `synced` watermarks.

mod bugs;
pub mod digest;
pub mod evict;
mod keys;
mod observe;
mod shard;
pub mod slot;
mod table;
mod txn;

use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::hlc::{Clock, ClockError, NodeId, Stamp};
use crate::locks::{Mutex, RwLock};
#[cfg(any(test, feature = "testing"))]
pub use bugs::Bug;
#[cfg(not(any(test, feature = "testing")))]
pub(crate) use bugs::Bug;
use digest::{key_hash, BUCKETS, BUCKET_BITS};
pub use evict::EvictionPolicy;
use evict::POOL_SIZE;
pub use keys::KeyAccess;
pub use observe::Observer;
use observe::Observers;
use shard::{Delta, Shard};
pub use slot::{Change, ChangeKind, Origin, Register, Slot};
pub use txn::{Locked, TxnError};

/// The first half of a local read-modify-write of `key` in shard `g`,
/// under its lock: the slot `f` returns for the value visible at `now_ms`
/// and the new `stamp`, with that value; `None` when `f` writes nothing.
/// Refused when the store is `full` and the slot would hold more than the
/// register it replaces. Unless `read`, `f` is shown no value and none is
/// returned: a write that does not depend on the value it replaces is
/// spared copying it out.
#[allow(clippy::too_many_arguments)]
fn decide(
    g: &Shard,
    kh: u64,
    key: &[u8],
    now_ms: u64,
    stamp: Stamp,
    full: bool,
    read: bool,
    f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
) -> Result<Option<Decided>, OutOfMemory> {
    let found = g.find(kh, key);
    let id = found.map(|(id, _)| id);
    let held = found.map(|(_, r)| r);
    // A value a raised `clear_below` deleted is absent, though its sweep has
    // yet to remove it: the write comes after the FLUSHALL.
    let current = held.filter(|r| read && g.shows(*r, now_ms)).map(|r| r.slot());
    let held = held.map_or(0, shard::record_cost);
    let Some(slot) = f(current.as_ref(), stamp) else { return Ok(None) };
    // Moved out once `f` is done with it: a clone would turn the copy into
    // a shared buffer, one more allocation per overwrite.
    let previous = match current {
        Some(Slot::Value { data, .. }) => Some(data),
        _ => None,
    };
    if matches!(slot, Slot::Value { .. }) && full && shard::cost(key, &slot) > held {
        return Err(OutOfMemory);
    }
    Ok(Some(Decided { slot, previous, held: id }))
}

/// What a write decided (see [`decide`]).
struct Decided {
    /// What the key is to hold.
    slot: Slot,
    /// The value that was visible before, if any.
    previous: Option<Bytes>,
    /// The id of the key's record, if one is held: the write stores into it.
    held: Option<u32>,
}

/// Registers merged together under their shards' locks (see
/// [`Store::merge_together`]): enough lookups in a row for their cache
/// misses to overlap, and at most 8 of the 64 default shards locked at
/// once, for about a microsecond. Groups of 32 were a little faster but
/// held up to half the shards, and with them row 10 of BENCHMARKS.md
/// (cold keys loaded once) saw keys loaded twice in 2 rounds of 13, none
/// in 18 with groups of 8 ("Merges in groups").
const MERGE_GROUP: usize = 8;

/// One register of a bucket summary: key, stamp, and whether it is a stub.
pub type SummaryItem = (Bytes, Stamp, bool);

/// Stubs a peer that knows no other member keeps, at most. It keeps them
/// only against a peer it has not met that holds older values (a restart
/// without seeds while the others run on); a peer alone for good should not
/// pay a stub per evicted key for that.
pub const LONE_STUBS: usize = 10_000;

/// Bytes the memory bound counts for one entry beyond its key and value.
pub const ENTRY_OVERHEAD: usize = shard::ENTRY_OVERHEAD;

/// Under a memory bound, stubs and tombstones may each take about this
/// share of it (1/`SHARE_DIVISOR`): neither can be evicted like a value,
/// so their budgets shrink with the bound (see [`Store::stub_budget`]).
const SHARE_DIVISOR: usize = 8;

/// What a stub or a tombstone is taken to cost when a budget is derived
/// from the bound: the entry overhead and a 32-byte key.
const NOMINAL_DEAD_COST: usize = ENTRY_OVERHEAD + 32;

/// The least a bound's share allows of stubs and of tombstones, however
/// small the bound: a few hundred kilobytes.
const MIN_SHARE_COUNT: usize = 1_000;

/// Store settings. Every field is documented with why it exists.
///
/// Start from the default (`StoreConfig { shards, ..StoreConfig::default() }`)
/// rather than listing every field, so that a setting added later needs no
/// change.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Number of shards (a power of two, at most [`BUCKETS`]). More shards
    /// mean less write contention and a smaller stall per clear_below scan.
    pub shards: NonZeroUsize,
    /// Memory bound for values, in accounted bytes (key + value + per-entry
    /// overhead of every register that holds a value). Past it, values are
    /// evicted into ghosts or stubs as `policy` chooses. Stubs and
    /// tombstones are bounded separately, by `max_stubs` and
    /// `max_tombstones`, and each by an eighth of this bound
    /// ([`Store::stub_budget`], [`Store::tombstone_budget`]). A process
    /// that bounds all its memory also sets [`Store::set_value_budget`].
    /// `None` means unbounded. The
    /// starting value: [`Store::set_max_bytes`] changes it at run time.
    pub max_bytes: Option<NonZeroUsize>,
    /// What to evict first (Redis's `maxmemory-policy`). The starting value:
    /// [`Store::set_policy`] changes it at run time.
    pub policy: EvictionPolicy,
    /// Entries sampled per eviction (Redis's `maxmemory-samples`), 1 to
    /// [`evict::MAX_SAMPLES`]. The starting value: [`Store::set_samples`]
    /// changes it at run time.
    pub samples: NonZeroUsize,
    /// Budget for tombstones. Past it the store compacts by raising
    /// `clear_below` past the oldest of them (a partial flush), so that they
    /// stay bounded even while collection is paused by a member that is
    /// down.
    pub max_tombstones: NonZeroUsize,
    /// Budget for eviction stubs (values evicted before they were stable,
    /// kept as key and stamp). Past it the oldest become ghosts before they
    /// are stable, which has a price (ALGORITHM.md, "Eviction").
    pub max_stubs: NonZeroUsize,
    /// The HLC's bound on remote clocks running ahead of local time, in ms.
    /// Also the grace period before an expired value may be collected.
    pub max_offset_ms: u64,
    /// Seed for eviction sampling (randomness is a parameter of the core).
    pub seed: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: NonZeroUsize::new(64).expect("nonzero"),
            max_bytes: None,
            policy: EvictionPolicy::default(),
            samples: NonZeroUsize::new(evict::DEFAULT_SAMPLES).expect("nonzero"),
            max_tombstones: NonZeroUsize::new(1_000_000).expect("nonzero"),
            max_stubs: NonZeroUsize::new(1_000_000).expect("nonzero"),
            max_offset_ms: 500,
            seed: 0,
        }
    }
}

/// The eviction pool and the RNG that samples for it.
struct Evictor {
    pool: evict::Pool,
    rng: SmallRng,
}

/// The two store-wide stamps of the tombstone protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Floors {
    /// The range tombstone: every register stamped below it is deleted, and
    /// refused on arrival. A replicated max-register (FLUSHALL, compaction).
    pub clear_below: Stamp,
    /// The highest stamp this replica ever collected. An incoming register at
    /// or below it, for a key not held, is refused (it may be a delete's
    /// victim coming back).
    pub gc_floor: Stamp,
}

/// A local write refused because the store is over its bound and its
/// policy may not evict what would make room (Redis's `OOM` error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("OOM command not allowed when used memory > 'maxmemory'.")]
pub struct OutOfMemory;

/// What a write hands back (to be pushed to peers): the store's own copies
/// of the key and the value, in one buffer. `key` and the value given may be
/// slices of a larger buffer (a client's read buffer), which a queued slice
/// would keep alive whole, uncounted; and one buffer shared from the start
/// costs two allocations, where a copy of each costs four once it is cloned
/// for a peer's push queue (the first clone of a `Bytes` made from a vector
/// allocates its shared header).
fn own_copies(key: &[u8], slot: Slot) -> (Bytes, Slot) {
    let value: &[u8] = match &slot {
        Slot::Value { data, .. } => data,
        _ => &[],
    };
    let mut buf = bytes::BytesMut::with_capacity(key.len() + value.len());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let key = buf.split_to(key.len()).freeze();
    let slot = match slot {
        Slot::Value { expires_at_ms, .. } => Slot::Value { data: buf.freeze(), expires_at_ms },
        other => other,
    };
    (key, slot)
}

/// The result of a local write.
#[derive(Clone, Debug)]
pub struct Written {
    /// The key written. It shares one buffer with the register's value:
    /// keeping the key keeps the value's memory too (copy the key to keep
    /// it alone).
    pub key: Bytes,
    /// The new register, to be pushed to peers.
    pub register: Register,
    /// The value that was visible before the write, if any.
    pub previous: Option<Bytes>,
    /// False when a concurrent `clear_below` overtook the write's stamp: the
    /// write is void, exactly as if the flush had come right after it.
    pub applied: bool,
}

/// What a merge of remote registers did.
#[derive(Clone, Debug, Default)]
pub struct MergeOutcome {
    /// Keys whose register changed, for subscribers.
    pub changes: Vec<Change>,
    /// Registers refused by the `gc_floor` filter. An anti-entropy receiver
    /// sends these back ("refused key@stamp") so the sender drops them too.
    pub refused: Vec<(Bytes, Stamp)>,
    /// Registers older than (or equal to) what is held: no change.
    pub stale: usize,
    /// Registers for keys not held, at or below their bucket's floor:
    /// possibly older than a ghost, so not stored (and not replied to).
    pub refused_ghost: usize,
    /// Registers below `clear_below`: deleted by the range tombstone.
    pub below_clear: usize,
    /// Registers stamped further ahead than `max_offset`: not stored (a peer
    /// clock running away); they are accepted once local time catches up.
    pub future: usize,
}

/// What [`Store::on_compaction`] sets.
type CompactionHook = Box<dyn Fn(&Compaction) + Send + Sync>;

/// What [`Store::on_eviction`] sets.
type EvictionHook = Box<dyn Fn(&[u8], Stamp) + Send + Sync>;

/// What [`Store::on_change`] sets.
type ChangeHook = Box<dyn Fn(&[u8], ChangeKind, Stamp) + Send + Sync>;

/// What a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The new `clear_below`.
    pub clear_below: Stamp,
    /// Tombstones dropped.
    pub tombstones: usize,
    /// Live values dropped with them (the price of the memory bound).
    pub values: usize,
}

/// Counters for metrics. Each is monotonic.
#[derive(Debug, Default)]
struct Counters {
    refused_floor: AtomicU64,
    refused_future: AtomicU64,
    below_clear: AtomicU64,
    collected_tombstones: AtomicU64,
    collected_expired: AtomicU64,
    refusal_drops: AtomicU64,
    evictions: AtomicU64,
    ghosted: AtomicU64,
    stubs_ghosted_early: AtomicU64,
    refused_ghost: AtomicU64,
    compactions: AtomicU64,
    compacted_values: AtomicU64,
}

/// A point-in-time copy of the store's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Registers held (values, tombstones and stubs).
    pub entries: usize,
    /// Accounted bytes.
    pub bytes: usize,
    /// Tombstones held.
    pub tombstones: usize,
    /// Eviction stubs held.
    pub stubs: usize,
    /// Incoming registers refused by the `gc_floor` filter.
    pub refused_floor: u64,
    /// Incoming registers stamped too far in the future.
    pub refused_future: u64,
    /// Incoming registers below `clear_below`.
    pub below_clear: u64,
    /// Tombstones collected.
    pub collected_tombstones: u64,
    /// Expired values collected.
    pub collected_expired: u64,
    /// Registers dropped because a peer refused them (refusal reply).
    pub refusal_drops: u64,
    /// Values evicted (into ghosts or stubs).
    pub evictions: u64,
    /// Registers that became ghosts: evicted values that were stable, and
    /// stubs once they were.
    pub ghosted: u64,
    /// Stubs ghosted before they were stable, because stubs passed their
    /// budget ([`Store::stub_budget`]).
    pub stubs_ghosted_early: u64,
    /// Incoming registers for keys not held, at or below their bucket's
    /// floor: refused without a reply.
    pub refused_ghost: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Live values flushed by compactions.
    pub compacted_values: u64,
    /// The current floors.
    pub floors: Floors,
}

/// What [`Store::expiring`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiring {
    /// Values held that carry a TTL.
    pub values: usize,
    /// Their mean time to live left, in milliseconds; 0 when there are none.
    pub avg_ttl_ms: u64,
}

/// The sharded LWW store of one replica. See the module docs.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// `BUCKET_BITS - log2(shards)`: a bucket's shard is `bucket >> shift`.
    shard_shift: u32,
    clock: Clock,
    floors: RwLock<Floors>,
    config: StoreConfig,
    /// Global gauges, summed from shard deltas without a global lock.
    entries: AtomicIsize,
    bytes: AtomicIsize,
    tombstones: AtomicIsize,
    stubs: AtomicIsize,
    /// The part of `bytes` held by registers with a value: what the bound
    /// applies to.
    value_bytes: AtomicIsize,
    /// The bound in force (0: none), the policy and the samples per
    /// eviction, all settable at run time.
    max_bytes: AtomicUsize,
    /// A tighter bound for values set by a process that also counts the
    /// memory outside the store (0: none; see [`Store::set_value_budget`]).
    value_budget: AtomicUsize,
    policy: AtomicU8,
    samples: AtomicUsize,
    /// The eviction pool and its sampling RNG (seeded: eviction is
    /// deterministic under simulation). One for the whole store, so that a
    /// victim is the best candidate of every shard sampled, not of one.
    evictor: Mutex<Evictor>,
    /// The policy changed since the last eviction: its pool is stale.
    policy_changed: AtomicBool,
    /// The collection watermark last passed to [`Store::collect`] (`u64::MAX`
    /// when no other member is known): see [`Store::ghost_before`].
    stable_before: AtomicU64,
    /// The latest local time a write, a merge, an expiry pass or a read
    /// that needed the time was given: what a read of a key without an
    /// expiry stamps its access with, so that it reads no clock. Redis
    /// stamps accesses from a clock cached per event-loop pass (and LRU at
    /// a second's resolution) for the same reason.
    recent_ms: AtomicU64,
    counters: Counters,
    /// Told of each change under its shard's lock (see `observe`).
    observers: Observers,
    /// Told of each compaction, wherever it happens (a delete, a merge, a
    /// transaction, a new bound, a tick): see [`Store::on_compaction`].
    on_compaction: OnceLock<CompactionHook>,
    /// Told of each eviction, under the evicted key's shard lock: see
    /// [`Store::on_eviction`].
    on_eviction: OnceLock<EvictionHook>,
    /// [`Store::on_change`].
    on_change: OnceLock<ChangeHook>,
    /// [`Store::on_change_heard`].
    on_change_heard: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Bugs planted by checks that must catch them.
    #[cfg(any(test, feature = "testing"))]
    bugs: bugs::Planted,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("node", &self.clock.node()).field("stats", &self.stats()).finish()
    }
}

/// Why a store could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreConfigError {
    /// `shards` must be a power of two no larger than the bucket count.
    #[error("shards must be a power of two between 1 and {BUCKETS}, got {0}")]
    Shards(usize),
    /// `samples` is above [`evict::MAX_SAMPLES`].
    #[error("samples must be between 1 and {max} inclusive, got {0}", max = evict::MAX_SAMPLES)]
    Samples(usize),
}

impl Store {
    /// A new, empty store stamping for `node`.
    pub fn new(node: NodeId, config: StoreConfig) -> Result<Self, StoreConfigError> {
        let n = config.shards.get();
        if !n.is_power_of_two() || n > BUCKETS {
            return Err(StoreConfigError::Shards(n));
        }
        if config.samples.get() > evict::MAX_SAMPLES {
            return Err(StoreConfigError::Samples(config.samples.get()));
        }
        let per = BUCKETS / n;
        let shards = (0..n).map(|_| RwLock::new(Shard::new(per))).collect();
        Ok(Store {
            shards,
            shard_shift: BUCKET_BITS - n.trailing_zeros(),
            clock: Clock::new(node, config.max_offset_ms),
            floors: RwLock::new(Floors::default()),
            entries: AtomicIsize::new(0),
            bytes: AtomicIsize::new(0),
            tombstones: AtomicIsize::new(0),
            stubs: AtomicIsize::new(0),
            value_bytes: AtomicIsize::new(0),
            max_bytes: AtomicUsize::new(config.max_bytes.map_or(0, |b| b.get())),
            value_budget: AtomicUsize::new(0),
            policy: AtomicU8::new(config.policy.to_u8()),
            samples: AtomicUsize::new(config.samples.get()),
            stable_before: AtomicU64::new(0),
            recent_ms: AtomicU64::new(0),
            policy_changed: AtomicBool::new(false),
            evictor: Mutex::new(Evictor { pool: evict::Pool::default(), rng: SmallRng::seed_from_u64(config.seed) }),
            config,
            counters: Counters::default(),
            observers: Observers::default(),
            on_compaction: OnceLock::new(),
            on_eviction: OnceLock::new(),
            on_change: OnceLock::new(),
            on_change_heard: OnceLock::new(),
            #[cfg(any(test, feature = "testing"))]
            bugs: bugs::Planted::default(),
        })
    }

    /// The store's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The configuration the store was built with. The bound, the policy
    /// and the samples may have changed since: see [`Store::max_bytes`],
    /// [`Store::policy`] and [`Store::samples`].
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The memory bound in force.
    pub fn max_bytes(&self) -> Option<NonZeroUsize> {
        NonZeroUsize::new(self.max_bytes.load(Ordering::Relaxed))
    }

    /// The eviction policy in force.
    pub fn policy(&self) -> EvictionPolicy {
        EvictionPolicy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    /// Entries sampled per eviction.
    pub fn samples(&self) -> usize {
        self.samples.load(Ordering::Relaxed)
    }

    /// Changes the bound (`None`: unbounded) and evicts down to it at once,
    /// at local time `now_ms`.
    pub fn set_max_bytes(&self, max: Option<NonZeroUsize>, now_ms: u64) {
        self.max_bytes.store(max.map_or(0, |b| b.get()), Ordering::Relaxed);
        if self.enforce_bound(now_ms).0 > 0 {
            self.compact_if_needed(now_ms);
        }
    }

    /// Changes the bound without evicting now: for a caller holding a
    /// transaction's locks, which evicts down to the bound as it ends.
    pub fn set_max_bytes_later(&self, max: Option<NonZeroUsize>) {
        self.max_bytes.store(max.map_or(0, |b| b.get()), Ordering::Relaxed);
    }

    /// Changes the eviction policy.
    ///
    /// The pool of candidates, sampled under the old policy, is cleared by
    /// the next eviction: taking the evictor's lock here could deadlock
    /// with an eviction waiting for a shard that a transaction calling this
    /// (CONFIG SET in EXEC) holds.
    pub fn set_policy(&self, policy: EvictionPolicy) {
        if self.policy.swap(policy.to_u8(), Ordering::Relaxed) != policy.to_u8() {
            self.policy_changed.store(true, Ordering::Relaxed);
        }
    }

    /// Changes the entries sampled per eviction (1 to
    /// [`evict::MAX_SAMPLES`]).
    pub fn set_samples(&self, samples: NonZeroUsize) -> Result<(), StoreConfigError> {
        if samples.get() > evict::MAX_SAMPLES {
            return Err(StoreConfigError::Samples(samples.get()));
        }
        self.samples.store(samples.get(), Ordering::Relaxed);
        Ok(())
    }

    /// Bytes held by values: what the bound applies to.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes.load(Ordering::Relaxed).max(0) as usize
    }

    /// What values may hold now: the bound, or the value budget when one
    /// is set and smaller. 0: no bound.
    pub fn value_limit(&self) -> usize {
        let (max, budget) = (self.max_bytes.load(Ordering::Relaxed), self.value_budget.load(Ordering::Relaxed));
        if max == 0 || budget == 0 {
            max
        } else {
            budget.min(max)
        }
    }

    /// Sets how many bytes values may hold, below the bound (`None`: the
    /// bound alone), and evicts down to it at once. A process that bounds
    /// all of its memory by `max_bytes` calls this as its other memory
    /// (stubs, tombstones, tables, buffers) grows and shrinks: values are
    /// the part that can give way. Without a bound it does nothing.
    pub fn set_value_budget(&self, budget: Option<NonZeroUsize>, now_ms: u64) {
        self.value_budget.store(budget.map_or(0, |b| b.get()), Ordering::Relaxed);
        if self.over_bound() && self.enforce_bound(now_ms).0 > 0 {
            self.compact_if_needed(now_ms);
        }
    }

    fn over_bound(&self) -> bool {
        let limit = self.value_limit();
        limit != 0 && self.value_bytes() > limit
    }

    /// Evicts values until they fit the bound or the policy finds nothing
    /// more to evict. Each eviction samples shards from a random one on
    /// until it has its samples, offers them to the store's pool, and evicts
    /// the pool's best candidate. Shard locks are taken one at a time, after
    /// the evictor's, so this runs after a write has released its own.
    /// Returns how many values were evicted, and whether the store is still
    /// over its bound because the policy found nothing more to evict.
    fn enforce_bound(&self, now_ms: u64) -> (usize, bool) {
        let policy = self.policy();
        if policy == EvictionPolicy::Noeviction {
            return (0, self.over_bound());
        }
        let samples = self.samples();
        let shift = self.shard_shift;
        let n = self.shards.len();
        let mut ev = self.evictor.lock();
        let Evictor { pool, rng } = &mut *ev;
        if self.policy_changed.swap(false, Ordering::Relaxed) {
            pool.clear();
        }
        let mut evicted = 0;
        // Pool candidates that were stale (deleted or rewritten since they
        // were sampled) or shards sampled in vain: a bound on both keeps a
        // store with nothing left to evict from spinning.
        let mut misses = 0;
        loop {
            if !self.over_bound() {
                return (evicted, false);
            }
            if misses >= 2 * n + POOL_SIZE {
                return (evicted, true);
            }
            if policy.is_random() {
                // No candidate is better than another: evict the latest.
                pool.clear();
            }
            // `volatile-ttl` asks every shard for its soonest expiry (each
            // shard knows it exactly), so that the victim is the soonest of
            // the store; the others sample shards from a random one on.
            let want = if policy == EvictionPolicy::VolatileTtl { usize::MAX } else { samples };
            let first = rng.random_range(0..n);
            let mut offered = 0;
            for s in (first..n).chain(0..first) {
                let per_shard = if want == usize::MAX { 1 } else { samples };
                offered += self.shards[s].read().sample(s, policy, per_shard, now_ms, rng, pool);
                if offered >= want {
                    break;
                }
            }
            let Some(victim) = pool.take() else { return (evicted, true) };
            let stable_before = if self.planted(Bug::GhostUnstable) { u64::MAX } else { self.ghost_before() };
            let mut g = self.shards[victim.shard as usize].write();
            let stamp = victim.stamp;
            let evicting = |key: &[u8]| {
                self.observers.changed(key);
                if let Some(f) = self.on_eviction.get() {
                    f(key, stamp);
                }
            };
            match g.evict(
                victim,
                policy,
                now_ms,
                stable_before,
                |h| digest::bucket_of(h) & ((1 << shift) - 1),
                evicting,
            ) {
                Some((d, ghosted)) => {
                    g.tidy();
                    drop(g);
                    evicted += 1;
                    self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                    if ghosted {
                        self.counters.ghosted.fetch_add(1, Ordering::Relaxed);
                    }
                    self.apply(d);
                }
                None => misses += 1,
            }
        }
    }

    /// The current floors.
    pub fn floors(&self) -> Floors {
        *self.floors.read()
    }

    fn locate(&self, kh: u64) -> (usize, usize) {
        let b = digest::bucket_of(kh);
        (b >> self.shard_shift, b & ((1 << self.shard_shift) - 1))
    }

    fn apply(&self, d: Delta) {
        if d.entries != 0 {
            self.entries.fetch_add(d.entries, Ordering::Relaxed);
        }
        if d.bytes != 0 {
            self.bytes.fetch_add(d.bytes, Ordering::Relaxed);
        }
        if d.tombstones != 0 {
            self.tombstones.fetch_add(d.tombstones, Ordering::Relaxed);
        }
        if d.stubs != 0 {
            self.stubs.fetch_add(d.stubs, Ordering::Relaxed);
        }
        if d.value_bytes != 0 {
            self.value_bytes.fetch_add(d.value_bytes, Ordering::Relaxed);
        }
    }

    /// Stores a winning register in its (locked) shard.
    ///
    /// `held` is the id of `key`'s record in `g`, as the caller found it
    /// under the same lock (`None`: not held): a lookup costs a few cache
    /// misses, and every write and merge has made one already.
    ///
    /// `tell`: whether the change is told to [`Store::on_change`] here (a
    /// transaction tells its writes at its end instead).
    #[allow(clippy::too_many_arguments)]
    fn store_in(
        &self,
        g: &mut Shard,
        key: &[u8],
        kh: u64,
        lb: usize,
        held: Option<u32>,
        reg: &Register,
        now_ms: u64,
        tell: bool,
    ) -> Delta {
        debug_assert_eq!(held, g.table.find(kh, key), "the caller's lookup of the key");
        // Observers hear of a change to what the key reads as: a delete of
        // a key that was not visible (replicated all the same) changes
        // nothing a reader could have cached, and Redis is silent on it too.
        // A value past its TTL that the sweep has not reached is told of
        // all the same: a reader may have cached it before its TTL ran
        // out, and once replaced the sweep will not tell of it.
        let ended = held.and_then(|id| g.untold_expiry(id, now_ms));
        let observed = self.observers.wanted()
            && (matches!(reg.val, Slot::Value { .. }) && !reg.val.is_expired(now_ms)
                || ended.is_some()
                || held.is_some_and(|id| g.shows(g.table.get(id), now_ms)));
        let d = g.store(key, kh, lb, held, reg, now_ms, now_ms, self.policy().is_lfu());
        if observed {
            self.observers.changed(key);
        }
        // Its expiry is told before the write, as Redis publishes `expired`
        // for a key a command finds past its TTL before the command's own
        // event; the write's is told now or, in a transaction, at its end.
        if let Some(stamp) = ended {
            self.tell(key, ChangeKind::Expire, stamp);
        }
        if tell {
            self.tell(key, ChangeKind::of_stored(&reg.val, now_ms), reg.marker);
        }
        d
    }

    /// Adds an observer of every change, told under the changed key's
    /// shard lock (see [`Observer`]). It is told nothing until it says it
    /// wants changes ([`Store::want_changes`]).
    pub fn add_observer(&self, o: Arc<dyn Observer>) {
        self.observers.add(o);
    }

    /// Sets what is told of every compaction, once the registers below its
    /// new `clear_below` are gone, under no lock. A compaction removes
    /// values as a FLUSHALL does, so whoever keeps copies of them must
    /// hear of it; most compactions happen inside a write, whose caller is
    /// not shown them. Only the first call takes effect.
    pub fn on_compaction(&self, f: impl Fn(&Compaction) + Send + Sync + 'static) {
        let _ = self.on_compaction.set(Box::new(f));
    }

    /// Sets what is told of every eviction: the key and the stamp of the
    /// value evicted, under that key's shard lock, so that no later change
    /// of the key is told before it. It must be quick and must not call
    /// back into the store, as an [`Observer`] must not. Evictions happen
    /// inside writes and merges, whose callers are not shown them. Only
    /// the first call takes effect.
    pub fn on_eviction(&self, f: impl Fn(&[u8], Stamp) + Send + Sync + 'static) {
        let _ = self.on_eviction.set(Box::new(f));
    }

    /// Sets what is told of every change to a key, under that key's shard
    /// lock, so in the order the changes are applied: each write and
    /// merged register as it is stored (a transaction's last write of each
    /// key, at its end, its locks still held), each expiry swept, each
    /// register dropped by a refusal reply; and each raise of
    /// `clear_below` (a FLUSHALL, here or replicated, or a compaction), as
    /// [`ChangeKind::Flush`] with an empty key, under every shard's lock,
    /// before its sweep, and each value a raise from elsewhere leaves, as
    /// a write again, as the sweep passes it. Evictions are told by
    /// [`Store::on_eviction`]. It must be quick and must not call back
    /// into the store, as an [`Observer`] must not. Only the first call
    /// takes effect.
    pub fn on_change(&self, f: impl Fn(&[u8], ChangeKind, Stamp) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    /// Sets how the store asks whether [`Store::on_change`]'s hook is heard
    /// by anyone now (without it: whenever a hook is set). Only what
    /// costs more than the telling asks: the values a `clear_below` from
    /// elsewhere leaves, told again by its sweep (see
    /// [`Store::raise_clear_below`]). Only the first call takes effect.
    pub fn on_change_heard(&self, f: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.on_change_heard.set(Box::new(f));
    }

    fn change_heard(&self) -> bool {
        self.on_change.get().is_some() && self.on_change_heard.get().is_none_or(|f| f())
    }

    /// Tells [`Store::on_change`]'s hook, under the key's shard lock.
    #[inline]
    pub(crate) fn tell(&self, key: &[u8], kind: ChangeKind, stamp: Stamp) {
        if let Some(f) = self.on_change.get() {
            f(key, kind, stamp);
        }
    }

    /// Removes an observer added by [`Store::add_observer`].
    pub fn remove_observer(&self, o: &Arc<dyn Observer>) {
        self.observers.remove(o);
    }

    /// An observer starts or stops wanting changes; calls must pair. While
    /// no observer wants them, a change costs one relaxed load.
    pub fn want_changes(&self, on: bool) {
        self.observers.want(on);
    }

    /// Reads `key` at `now_ms`: a copy of the value, unless it is absent,
    /// deleted, evicted or expired. Local; takes one shard read lock. A hit
    /// counts as an access for the eviction policy.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<Bytes> {
        self.get_with(key, now_ms, Bytes::copy_from_slice)
    }

    /// Reads `key` at `now_ms` like [`Store::get`], but lends the value to
    /// `f` under the shard's read lock instead of copying it out: for a
    /// caller that copies it somewhere anyway (a reply buffer). `f` must
    /// not call back into the store.
    #[inline]
    pub fn get_with<R>(&self, key: &[u8], now_ms: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.saw_time(now_ms);
        self.read(key, || now_ms, Some(now_ms), f)
    }

    /// Reads `key` like [`Store::get_with`], calling `clock` (local Unix
    /// ms) only when the key has an expiry to check. The access is stamped
    /// with the latest time the store was given (see `recent_ms`), which
    /// the shell's timer keeps within a tick of the clock: most keys have
    /// no expiry, and a clock read would cost a read of a cached value
    /// several times over.
    #[inline]
    pub fn get_with_clock<R>(&self, key: &[u8], clock: impl FnOnce() -> u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.read(key, clock, None, f)
    }

    /// A read at `at`, or else at `clock` if the key has an expiry, and
    /// stamped with the latest time the store was given if neither.
    #[inline]
    fn read<R>(
        &self,
        key: &[u8],
        clock: impl FnOnce() -> u64,
        at: Option<u64>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let kh = key_hash(key);
        let (s, _) = self.locate(kh);
        let g = self.shards[s].read();
        let (_, r) = g.find_live(kh, key)?;
        let mut now = at;
        let v = r.visible_at(|| *now.get_or_insert_with(clock))?;
        let stamp = now.unwrap_or_else(|| self.recent_ms.load(Ordering::Relaxed));
        r.access().touch(self.policy().is_lfu(), stamp);
        Some(f(v))
    }

    /// Reads several keys as one, at `now_ms`: their shards' read locks are
    /// held together (taken in increasing order, as transactions take
    /// theirs), so a transaction's writes are seen all or none. `f` gets
    /// each key's value (`None`: absent), in order.
    pub fn get_many_with<K: AsRef<[u8]>>(&self, keys: &[K], now_ms: u64, mut f: impl FnMut(Option<&[u8]>)) {
        self.saw_time(now_ms);
        let mut want = vec![false; self.shards.len()];
        for k in keys {
            want[self.locate(key_hash(k.as_ref())).0] = true;
        }
        let guards: Vec<_> = want.iter().enumerate().map(|(s, &w)| w.then(|| self.shards[s].read())).collect();
        let lfu = self.policy().is_lfu();
        for k in keys {
            let (key, kh) = (k.as_ref(), key_hash(k.as_ref()));
            let g = guards[self.locate(kh).0].as_ref().expect("locked above");
            let v = g.find_live(kh, key).and_then(|(_, r)| {
                let v = r.visible(now_ms)?;
                r.access().touch(lfu, now_ms);
                Some(v)
            });
            f(v);
        }
    }

    /// Notes local time `now_ms` (see `recent_ms`). A store only when it
    /// moved, so that readers on several threads share the line.
    #[inline]
    fn saw_time(&self, now_ms: u64) {
        if now_ms > self.recent_ms.load(Ordering::Relaxed) {
            self.recent_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    /// The register held for `key`, whatever it holds (tests, TTL queries),
    /// unless a FLUSHALL deleted it.
    pub fn register(&self, key: &[u8]) -> Option<Register> {
        let kh = key_hash(key);
        let (s, _) = self.locate(kh);
        self.shards[s].read().find_live(kh, key).map(|(_, r)| r.register())
    }

    /// How many registers were stored in `key`'s digest bucket (wrapping):
    /// writes, merges and deletes, not removals. A key absent at two
    /// readings that found the same count was not written in between, even
    /// if what a write left has since been removed (collected, flushed).
    pub fn writes_of(&self, key: &[u8]) -> u32 {
        let (s, b) = self.locate(key_hash(key));
        self.shards[s].read().writes_of(b)
    }

    /// The watermark below which an evicted or stable register may become a
    /// ghost: the collection watermark, or 0 (none) on a peer that knows no
    /// other member (see `collect`).
    fn ghost_before(&self) -> u64 {
        match self.stable_before.load(Ordering::Relaxed) {
            u64::MAX => 0,
            t => t,
        }
    }

    /// Whether `key`'s register is stable: it arrived before the eviction
    /// watermark, so every member has since completed a session with this
    /// peer (ALGORITHM.md, "Eviction stays local").
    pub fn is_stable(&self, key: &[u8]) -> bool {
        let kh = key_hash(key);
        let (s, _) = self.locate(kh);
        let before = self.ghost_before();
        self.shards[s].read().find(kh, key).is_some_and(|(_, r)| r.arrival_ms() < before)
    }

    /// Writes a value with an optional TTL (ms), stamped now.
    pub fn put(&self, key: Bytes, value: Bytes, ttl_ms: Option<u64>, now_ms: u64) -> Result<Written, OutOfMemory> {
        self.write_with(key, now_ms, |_, stamp| {
            Some(Slot::Value { data: value, expires_at_ms: ttl_ms.map(|t| stamp.physical_ms().saturating_add(t)) })
        })
        .map(|w| w.expect("the closure always writes"))
    }

    /// Deletes `key` by writing a tombstone, stamped now. The tombstone is
    /// written even when the key is absent here: a peer may hold it. A
    /// delete is never refused for memory.
    pub fn delete(&self, key: Bytes, now_ms: u64) -> Written {
        self.write_with(key, now_ms, |_, _| Some(Slot::Tombstone))
            .expect("a tombstone is never refused")
            .expect("the closure always writes")
    }

    /// Local read-modify-write: `f` sees the currently visible slot (values
    /// only) and the new stamp, and returns the slot to write, or `None` to
    /// write nothing. The shard's write lock is held throughout, so NX, XX,
    /// EXPIRE and KEEPTTL are atomic on this replica.
    ///
    /// Over the bound, the policy evicts first; a write that would still add
    /// memory past the bound is refused with [`OutOfMemory`] (with
    /// `noeviction`, or a volatile policy and no value with a TTL left).
    /// Writes that add nothing (a delete, an EXPIRE, a smaller value) are
    /// never refused.
    pub fn write_with(
        &self,
        key: Bytes,
        now_ms: u64,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, OutOfMemory> {
        self.write(key, now_ms, true, f)
    }

    /// A blind write: as [`Store::write_with`], but `f` is not shown the
    /// value it replaces, and [`Written::previous`] is `None`. A plain
    /// overwrite (SET without NX, XX, GET or KEEPTTL; MSET;
    /// [`Mesh::insert`]) needs neither, and reading them costs a copy of
    /// the old value: an allocation, a copy and a free on every overwrite.
    ///
    /// [`Mesh::insert`]: crate::Mesh::insert
    pub fn write_blind(
        &self,
        key: Bytes,
        now_ms: u64,
        f: impl FnOnce(Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, OutOfMemory> {
        self.write(key, now_ms, false, |_, stamp| f(stamp))
    }

    fn write(
        &self,
        key: Bytes,
        now_ms: u64,
        read: bool,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, OutOfMemory> {
        // Only eviction that found nothing to evict refuses a write. Being
        // over the bound is not enough: with writers on several threads the
        // bound is crossed by one write and restored by the next eviction,
        // and a write seeing the crossing must not fail for it.
        self.saw_time(now_ms);
        let (mut evicted, mut full) = (0, false);
        if self.over_bound() {
            (evicted, full) = self.enforce_bound(now_ms);
        }
        let kh = key_hash(&key);
        let (s, lb) = self.locate(kh);
        let mut g = self.shards[s].write();
        g.warm(lb);
        let stamp = self.clock.now(now_ms);
        let Some(Decided { slot, previous, held }) = decide(&g, kh, &key, now_ms, stamp, full, read, f)? else {
            return Ok(None);
        };
        let (key, slot) = own_copies(&key, slot);
        let register = Register { val: slot, marker: stamp };
        let cb = self.floors.read().clear_below;
        if stamp < cb {
            return Ok(Some(Written { key, register, previous, applied: false }));
        }
        let is_tomb = register.val.is_tombstone();
        let d = self.store_in(&mut g, &key, kh, lb, held, &register, now_ms, true);
        drop(g);
        self.apply(d);
        if self.over_bound() {
            evicted += self.enforce_bound(now_ms).0;
        }
        if is_tomb || evicted > 0 {
            self.compact_if_needed(now_ms);
        }
        Ok(Some(Written { key, register, previous, applied: true }))
    }

    /// Raises `clear_below` to a new FLUSHALL stamp, deleting every register
    /// older than now, here and (once replicated) everywhere. Returns the
    /// stamp and how many registers the sweep removed.
    pub fn flush_all(&self, now_ms: u64) -> (Stamp, usize) {
        // The stamp is taken with every shard locked: a write stamped after
        // it cannot have read a value it deletes.
        let stamp = self.raise_bar(|| self.clock.now(now_ms)).expect("a fresh stamp is above every clear_below seen");
        (stamp, self.sweep_below(stamp, None))
    }

    /// Merges a `clear_below` received from a peer. Returns how many
    /// registers it removed. A stamp too far in the future is refused.
    /// Values it leaves are told again as writes (see `sweep_below`).
    pub fn raise_clear_below(&self, c: Stamp, now_ms: u64) -> Result<usize, ClockError> {
        if c <= self.floors.read().clear_below {
            return Ok(0);
        }
        self.clock.observe(c.hlc, now_ms)?;
        Ok(self.raise_clear_below_unchecked(c, now_ms))
    }

    fn raise_clear_below_unchecked(&self, c: Stamp, now_ms: u64) -> usize {
        match self.raise_bar(|| c) {
            Some(c) => self.sweep_below(c, Some(now_ms)),
            None => 0,
        }
    }

    /// Raises `clear_below` to `bar()` (unless it is there already) with
    /// every shard's write lock held, and tells the observers and the
    /// change hook of it under them. Returns the new `clear_below`.
    ///
    /// So a FLUSHALL is one step for everything under the shard locks: a
    /// write or a transaction is wholly before it (stamped below it, and
    /// told before it) or wholly after it (shown none of the values it
    /// deletes, and told after it). The sweep that removes those values
    /// runs after, a shard at a time, while reads and writes go on; until
    /// it reaches a shard, that shard's `bar` hides them.
    fn raise_bar(&self, bar: impl FnOnce() -> Stamp) -> Option<Stamp> {
        if self.planted(Bug::FlushSweptFirst) {
            let c = bar();
            let mut f = self.floors.write();
            if c <= f.clear_below {
                return None;
            }
            f.clear_below = c;
            return Some(c);
        }
        // In increasing order, as transactions take theirs; the floors
        // lock comes after shard locks, as in every write.
        let mut guards: Vec<_> = self.shards.iter().map(|sh| sh.write()).collect();
        let c = bar();
        {
            let mut f = self.floors.write();
            if c <= f.clear_below {
                return None;
            }
            f.clear_below = c;
        }
        for g in &mut guards {
            g.bar = c;
        }
        self.observers.flushed();
        self.tell(b"", ChangeKind::Flush, c);
        Some(c)
    }

    /// Removes every register below `c`, a `clear_below` just raised, a
    /// shard at a time. Returns how many it removed.
    ///
    /// A bar taken from this store's clock is above every stamp held, so
    /// nothing outlives it. A bar from elsewhere (another peer's FLUSHALL,
    /// a compaction) can leave values stamped at or above it: writes that
    /// raced the FLUSHALL on other peers, or the newer values a compaction
    /// keeps. With `survivors` (the time now), the sweep tells each again
    /// as a write ([`ChangeKind::Put`], its own stamp) under its shard's
    /// lock, so that a subscriber that drops everything on a flush learns
    /// what is still held once the sweep is done. A key written between
    /// the raise and the sweep of its shard is told twice. Only shards
    /// that stored a stamp at or above the bar are walked for it, and only
    /// while the hook is heard ([`Store::on_change_heard`]): a compaction
    /// keeps most values, and under one lock at a time their telling
    /// holds up no more than a shard.
    fn sweep_below(&self, c: Stamp, survivors: Option<u64>) -> usize {
        let survivors = survivors.filter(|_| !self.planted(Bug::FlushSweptFirst) && self.change_heard());
        let mut removed = 0;
        for sh in self.shards.iter() {
            let mut g = sh.write();
            let retell = survivors.filter(|_| g.high >= c);
            let mut victims: Vec<(u32, u64)> = Vec::new();
            for (id, r) in g.table.iter() {
                // The shard's bar, not `c`: a later raise may have passed
                // `c` already, and what it deleted is not to be told again.
                // (`c` alone where the bug planted leaves the bar unset.)
                if g.flushed(r) || r.stamp() < c {
                    victims.push((id, key_hash(r.key())));
                } else if let Some(now_ms) = retell {
                    if r.visible(now_ms).is_some() {
                        self.tell(r.key(), ChangeKind::Put, r.stamp());
                    }
                }
            }
            let mut d = Delta::default();
            for (id, kh) in victims {
                let (_, lb) = self.locate(kh);
                d.add(g.remove(id, kh, lb));
                removed += 1;
            }
            g.tidy();
            g.clear_ghosts_below(c);
            drop(g);
            self.apply(d);
        }
        if self.planted(Bug::FlushSweptFirst) {
            self.observers.flushed();
            self.tell(b"", ChangeKind::Flush, c);
        }
        removed
    }

    /// Merges registers received from a peer (push or anti-entropy) at local
    /// time `now_ms`. Applies, in order: the future-stamp check, the HLC
    /// observation, `clear_below`, the `gc_floor` filter, then LWW.
    ///
    /// A run of registers with one stamp is one transaction's writes (see
    /// `txn`): they are merged under all their shards' locks at once, so no
    /// reader here sees part of them. Other registers are merged in small
    /// groups, each under its shards' locks at once, so that their table
    /// lookups overlap.
    pub fn merge(&self, regs: impl IntoIterator<Item = (Bytes, Register)>, now_ms: u64) -> MergeOutcome {
        self.saw_time(now_ms);
        // What the merge changes is one group for the observers (a near
        // cache's BCAST clients hear it in one message a prefix), released
        // once every shard lock is.
        let _gathering = self.observers.gather();
        let mut out = MergeOutcome::default();
        let mut added_tombstone = false;
        // One buffer for every group: each is drained as it is merged.
        let mut group = Vec::with_capacity(MERGE_GROUP);
        let mut regs = regs.into_iter().peekable();
        while let Some((key, reg)) = regs.next() {
            let marker = reg.marker;
            let in_run = regs.peek().is_some_and(|(_, r)| r.marker == marker);
            if !in_run {
                if self.observe(marker, 1, now_ms, &mut out) {
                    group.push((key, reg));
                }
                if group.len() == MERGE_GROUP {
                    self.merge_together(&mut group, now_ms, &mut out, &mut added_tombstone);
                }
                continue;
            }
            self.merge_together(&mut group, now_ms, &mut out, &mut added_tombstone);
            let mut run = vec![(key, reg)];
            while let Some(next) = regs.next_if(|(_, r)| r.marker == marker) {
                run.push(next);
            }
            if !self.observe(marker, run.len(), now_ms, &mut out) {
                continue;
            }
            if self.planted(Bug::MergesRunsApart) {
                for (key, reg) in run {
                    self.merge_alone(key, reg, now_ms, &mut out, &mut added_tombstone);
                }
                continue;
            }
            self.merge_together(&mut run, now_ms, &mut out, &mut added_tombstone);
        }
        self.merge_together(&mut group, now_ms, &mut out, &mut added_tombstone);
        // A write from a peer is never refused for memory: refusing it would
        // leave this replica on the older value. The policy evicts instead
        // (with `noeviction`, the values stay over the bound; see README).
        if self.over_bound() && self.enforce_bound(now_ms).0 > 0 {
            added_tombstone = true;
        }
        if added_tombstone {
            self.compact_if_needed(now_ms);
        }
        out
    }

    /// Merges registers (already observed), draining `regs`, under all their
    /// shards' locks at once, taken in increasing shard order as
    /// transactions take them.
    ///
    /// Each merge starts with a table lookup, a chain of dependent cache
    /// misses (the index's slot, the record, the blob) that is most of what
    /// a merge costs once the table outgrows the caches. The lookups of
    /// different keys do not depend on one another, so all of them run
    /// first, back to back: the processor overlaps their misses, and the
    /// merges that follow find the lines loaded. Taking each shard's lock
    /// once per group rather than once per register leaves no locked
    /// instruction between two lookups to hold the next one back.
    fn merge_together(
        &self,
        regs: &mut Vec<(Bytes, Register)>,
        now_ms: u64,
        out: &mut MergeOutcome,
        added_tombstone: &mut bool,
    ) {
        match regs.len() {
            0 => return,
            1 => {
                let (key, reg) = regs.pop().expect("one register");
                return self.merge_alone(key, reg, now_ms, out, added_tombstone);
            }
            _ => {}
        }
        let located: Vec<(u64, usize, usize)> = regs
            .iter()
            .map(|(k, _)| {
                let kh = key_hash(k);
                let (s, lb) = self.locate(kh);
                (kh, s, lb)
            })
            .collect();
        // The shards touched, each once, locked in increasing order; a
        // register finds its shard's guard by the shard's place among them.
        let mut touched: Vec<usize> = located.iter().map(|&(_, s, _)| s).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut guards: Vec<_> = touched.iter().map(|&s| self.shards[s].write()).collect();
        let guard_of = |s: usize| touched.binary_search(&s).expect("locked above");
        for ((key, _), &(kh, s, lb)) in regs.iter().zip(&located) {
            let g = &guards[guard_of(s)];
            std::hint::black_box(g.find(kh, key).map(|(id, _)| id));
            g.warm(lb);
        }
        let mut d = shard::Delta::default();
        for ((key, reg), (kh, s, lb)) in regs.drain(..).zip(located) {
            let g = &mut guards[guard_of(s)];
            d.add(self.merge_into(g, key, kh, lb, reg, now_ms, out, added_tombstone));
        }
        drop(guards);
        self.apply(d);
    }

    /// The HLC observation of `n` remote registers stamped `marker`:
    /// whether they may be merged (not stamped too far ahead).
    fn observe(&self, marker: Stamp, n: usize, now_ms: u64, out: &mut MergeOutcome) -> bool {
        if self.clock.observe(marker.hlc, now_ms).is_ok() {
            return true;
        }
        out.future += n;
        self.counters.refused_future.fetch_add(n as u64, Ordering::Relaxed);
        false
    }

    /// Merges one remote register under its own shard's lock.
    fn merge_alone(&self, key: Bytes, reg: Register, now_ms: u64, out: &mut MergeOutcome, added_tombstone: &mut bool) {
        let kh = key_hash(&key);
        let (s, lb) = self.locate(kh);
        let mut g = self.shards[s].write();
        let d = self.merge_into(&mut g, key, kh, lb, reg, now_ms, out, added_tombstone);
        drop(g);
        self.apply(d);
    }

    /// Merges one remote register into its shard, held by the caller.
    #[allow(clippy::too_many_arguments)]
    fn merge_into(
        &self,
        g: &mut Shard,
        key: Bytes,
        kh: u64,
        lb: usize,
        reg: Register,
        now_ms: u64,
        out: &mut MergeOutcome,
        added_tombstone: &mut bool,
    ) -> Delta {
        g.warm(lb);
        let floors = *self.floors.read();
        if reg.marker < floors.clear_below {
            out.below_clear += 1;
            self.counters.below_clear.fetch_add(1, Ordering::Relaxed);
            return Delta::default();
        }
        let found = g.find(kh, &key);
        match found.map(|(_, r)| r) {
            None if reg.marker <= floors.gc_floor && !self.planted(Bug::NoFloorFilter) => {
                self.counters.refused_floor.fetch_add(1, Ordering::Relaxed);
                out.refused.push((key, reg.marker));
                return Delta::default();
            }
            // No reply: the sender's copy is not deleted, only older
            // than what this replica chose not to hold.
            None if reg.marker <= g.floor_of(lb) => {
                self.counters.refused_ghost.fetch_add(1, Ordering::Relaxed);
                out.refused_ghost += 1;
                return Delta::default();
            }
            // A value replaces the stub of its own write, but not on a
            // bounded store: there the stub is its own eviction, or a
            // value it would evict again.
            Some(cur) if !self.remote_wins(cur.stamp(), reg.marker) && !self.refills(cur, &reg) => {
                debug_assert!(
                    cur.stamp() != reg.marker || cur.slot().same_write(&reg.val),
                    "two different writes share stamp {}",
                    reg.marker
                );
                out.stale += 1;
                return Delta::default();
            }
            _ => {}
        }
        let kind = ChangeKind::of_stored(&reg.val, now_ms);
        *added_tombstone |= !matches!(reg.val, Slot::Value { .. });
        let stamp = reg.marker;
        let d = self.store_in(g, &key, kh, lb, found.map(|(id, _)| id), &reg, now_ms, true);
        out.changes.push(Change { key, kind, origin: Origin::Remote, stamp });
        d
    }

    /// Whether `remote` is the value a held stub stood for (same stamp), on a
    /// store without a bound: it replaces the stub.
    fn refills(&self, held: table::Entry<'_>, remote: &Register) -> bool {
        held.stamp() == remote.marker
            && held.kind() == table::Kind::Stub
            && matches!(remote.val, Slot::Value { .. })
            && self.max_bytes.load(Ordering::Relaxed) == 0
    }

    /// LWW: whether a remote register replaces the one held. The higher
    /// stamp wins, by `hlc` and then by node id (unless a bug is planted).
    #[inline(always)]
    fn remote_wins(&self, held: Stamp, remote: Stamp) -> bool {
        if self.planted(Bug::TakesOlder) && held > remote {
            return true;
        }
        if self.planted(Bug::ReversedTieBreak) && held.hlc == remote.hlc {
            return remote.node < held.node;
        }
        remote > held
    }

    /// Whether `bug` is planted here (always false without `testing`).
    pub(crate) fn has_planted(&self, bug: Bug) -> bool {
        self.planted(bug)
    }

    /// Plants (or removes) a known bug in this store, for checks that must
    /// show they catch it. Never in production.
    #[cfg(any(test, feature = "testing"))]
    pub fn plant(&self, bug: Bug, on: bool) {
        self.bugs.set(bug, on);
    }

    #[cfg(any(test, feature = "testing"))]
    #[inline(always)]
    fn planted(&self, bug: Bug) -> bool {
        self.bugs.has(bug)
    }

    #[cfg(not(any(test, feature = "testing")))]
    #[inline(always)]
    fn planted(&self, _bug: Bug) -> bool {
        false
    }

    /// The refusal reply: a peer refused `key@stamp` by its floor, so drop
    /// our copy too if we still hold exactly that register, and raise our own
    /// `gc_floor` to it. Returns the change if something visible went (or
    /// a value past its TTL that the sweep had yet to report).
    pub fn drop_refused(&self, key: &Bytes, stamp: Stamp, now_ms: u64) -> Option<Change> {
        if self.planted(Bug::NoRefusalReply) {
            return None;
        }
        let kh = key_hash(key);
        let (s, lb) = self.locate(kh);
        let mut g = self.shards[s].write();
        let (id, r) = g.find(kh, key).filter(|(_, r)| r.stamp() == stamp)?;
        let was_visible = g.shows(r, now_ms);
        // A value past its TTL, dropped before the sweep told of it, is
        // told of here as the sweep would have.
        let untold = was_visible || g.untold_expiry(id, now_ms).is_some();
        let d = g.remove(id, kh, lb);
        g.tidy();
        let (kind, origin) =
            if was_visible { (ChangeKind::Delete, Origin::Remote) } else { (ChangeKind::Expire, Origin::Local) };
        if untold {
            self.observers.changed(key);
            self.tell(key, kind, stamp);
        }
        {
            let mut f = self.floors.write();
            f.gc_floor = f.gc_floor.max(stamp);
        }
        drop(g);
        self.apply(d);
        self.counters.refusal_drops.fetch_add(1, Ordering::Relaxed);
        untold.then(|| Change { key: key.clone(), kind, origin, stamp })
    }

    /// Marks values whose TTL ran out as dead (queued for collection) and
    /// reports them. Call it from a timer; reads treat expired values as
    /// absent whether or not this has run.
    pub fn expire(&self, now_ms: u64) -> Vec<Change> {
        self.saw_time(now_ms);
        let mut out = Vec::new();
        for sh in self.shards.iter() {
            let mut g = sh.write();
            for (key, stamp, was_value) in g.expire(now_ms) {
                if was_value {
                    self.observers.changed(&key);
                    self.tell(&key, ChangeKind::Expire, stamp);
                    out.push(Change { key, kind: ChangeKind::Expire, origin: Origin::Local, stamp });
                }
            }
        }
        out
    }

    /// Collects dead registers that every member is known to have seen:
    /// tombstones, and values expired more than `max_offset` ago, whose local
    /// arrival time is before `stable_before` (the oldest `synced` watermark
    /// over every known member). Raises `gc_floor` to each collected stamp.
    /// Returns (tombstones, expired values) collected.
    ///
    /// Stubs whose arrival is before `stable_before` become ghosts here on a
    /// bounded store, raising their bucket's floor, not `gc_floor`; a store
    /// without a bound collects them like tombstones (see ALGORITHM.md,
    /// "Eviction"). The watermark is also kept for eviction.
    pub fn collect(&self, now_ms: u64, stable_before: u64) -> (usize, usize) {
        // Ghosts need a member that has synced with this peer. One that
        // knows no other member (`u64::MAX`) cannot know that no peer it has
        // not met holds an older value, and a ghost could never tell that
        // peer, as a collected tombstone's refusal reply does: it keeps
        // stubs, which do.
        self.stable_before.store(stable_before, Ordering::Relaxed);
        let ghost_before = self.ghost_before();
        let bounded = self.max_bytes.load(Ordering::Relaxed) != 0;
        let grace = self.config.max_offset_ms;
        let (mut tombs, mut expired, mut ghosted) = (0, 0, 0);
        for sh in self.shards.iter() {
            let mut g = sh.write();
            let mut d = Delta::default();
            let mut high = Stamp::ZERO;
            // The last entry passed over (a stub not yet to be ghosted).
            let mut passed: Option<(u64, u32)> = None;
            loop {
                let next = match passed {
                    None => g.dead.first().copied(),
                    Some(p) => g.dead.range((Bound::Excluded(p), Bound::Unbounded)).next().copied(),
                };
                let Some((arrival, id)) = next else { break };
                if arrival >= stable_before {
                    break;
                }
                let Some(e) = g.table.used(id) else {
                    g.dead.remove(&(arrival, id));
                    continue;
                };
                let kh = key_hash(e.key());
                let lb = self.locate(kh).1;
                // A stable stub on a bounded peer becomes a ghost. A peer
                // without a bound never holds a bucket in part (it would stop
                // asking for keys there): a stub it received stands, once
                // stable, for a value every peer evicted, and is collected
                // like a tombstone.
                if e.kind() == table::Kind::Stub && bounded {
                    if arrival >= ghost_before {
                        passed = Some((arrival, id));
                        continue;
                    }
                    d.add(g.ghost(id, kh, lb));
                    ghosted += 1;
                    continue;
                }
                if let Some(exp) = e.expires_at_ms() {
                    // Wait out the skew: a peer whose clock lags may still
                    // read the value as live.
                    if now_ms <= exp.saturating_add(grace) {
                        break;
                    }
                }
                let stamp = e.stamp();
                let tomb = !e.is_value();
                d.add(g.remove(id, kh, lb));
                high = high.max(stamp);
                if tomb {
                    tombs += 1;
                } else {
                    expired += 1;
                }
            }
            if high > Stamp::ZERO {
                // Raised under the shard lock, so no merge into this shard can
                // slip a collected key's old register past the floor.
                let mut f = self.floors.write();
                f.gc_floor = f.gc_floor.max(high);
            }
            g.tidy();
            drop(g);
            self.apply(d);
        }
        self.counters.collected_tombstones.fetch_add(tombs as u64, Ordering::Relaxed);
        self.counters.collected_expired.fetch_add(expired as u64, Ordering::Relaxed);
        self.counters.ghosted.fetch_add(ghosted, Ordering::Relaxed);
        (tombs, expired)
    }

    /// The share of a bound of `max` bytes that stubs, or tombstones, may
    /// take, as a count (unbounded without a bound).
    fn share_of(max: usize) -> usize {
        match max {
            0 => usize::MAX,
            m => (m / SHARE_DIVISOR / NOMINAL_DEAD_COST).max(MIN_SHARE_COUNT),
        }
    }

    /// How many stubs the store keeps before it ghosts the oldest early:
    /// `max_stubs`, at most an eighth of the memory bound (a stub is memory
    /// the bound must count, and it cannot be evicted), and at most
    /// [`LONE_STUBS`] on a peer that knows no other member.
    pub fn stub_budget(&self) -> usize {
        let mut budget = self.config.max_stubs.get().min(Self::share_of(self.max_bytes.load(Ordering::Relaxed)));
        if self.stable_before.load(Ordering::Relaxed) == u64::MAX {
            budget = budget.min(LONE_STUBS);
        }
        budget
    }

    /// How many tombstones the store keeps before it compacts:
    /// `max_tombstones`, and at most an eighth of the memory bound. A
    /// tombstone cannot be evicted (it would bring its value back), so a
    /// smaller bound compacts sooner; tombstones pile up only while a
    /// member is unreachable, which is what compaction is for.
    pub fn tombstone_budget(&self) -> usize {
        self.config.max_tombstones.get().min(Self::share_of(self.max_bytes.load(Ordering::Relaxed)))
    }

    /// Bounds the stubs: past [`Store::stub_budget`] of them, the oldest are made
    /// ghosts before they are stable, down to half the budget. Stubs wait
    /// for stability only while a member is unreachable, so this happens
    /// during a long partition with eviction under way; the price is
    /// written in ALGORITHM.md ("Eviction").
    fn ghost_excess_stubs(&self) {
        // A peer without a bound never holds a bucket in part; the stubs it
        // holds are ones it received, each standing in for a stub a bounded
        // peer keeps within its own budget, and it collects them at
        // stability like tombstones.
        if self.max_bytes.load(Ordering::Relaxed) == 0 {
            return;
        }
        let budget = self.stub_budget();
        let held = self.stubs.load(Ordering::Relaxed).max(0) as usize;
        if held <= budget {
            return;
        }
        let mut excess = held - budget / 2;
        let per_shard = excess.div_ceil(self.shards.len());
        for sh in self.shards.iter() {
            if excess == 0 {
                break;
            }
            let mut g = sh.write();
            let oldest: Vec<(u32, u64)> = g
                .dead
                .iter()
                .filter_map(|&(_, id)| g.table.used(id).filter(|r| r.kind() == table::Kind::Stub).map(|r| (id, r)))
                .take(per_shard.min(excess))
                .map(|(id, r)| (id, key_hash(r.key())))
                .collect();
            let mut d = Delta::default();
            for (id, kh) in oldest {
                let lb = self.locate(kh).1;
                d.add(g.ghost(id, kh, lb));
                excess -= 1;
                self.counters.ghosted.fetch_add(1, Ordering::Relaxed);
                self.counters.stubs_ghosted_early.fetch_add(1, Ordering::Relaxed);
            }
            g.tidy();
            drop(g);
            self.apply(d);
        }
    }

    /// Enforces the tombstone budget: past [`Store::tombstone_budget`] tombstones,
    /// raises `clear_below` just above the oldest of them so that the newest
    /// half of the budget remains. Values older than the bar go too. Stubs
    /// never cause a compaction (memory pressure must not delete data on
    /// other peers): past their own budget they become ghosts instead.
    pub fn compact_if_needed(&self, now_ms: u64) -> Option<Compaction> {
        self.ghost_excess_stubs();
        let budget = self.tombstone_budget();
        let held = self.tombstones.load(Ordering::Relaxed).max(0);
        if held as usize <= budget {
            return None;
        }
        let mut stamps: Vec<Stamp> = Vec::new();
        for sh in self.shards.iter() {
            let g = sh.read();
            stamps.extend(g.table.iter().filter(|(_, r)| r.kind() == table::Kind::Tombstone).map(|(_, r)| r.stamp()));
        }
        if stamps.len() <= budget {
            return None;
        }
        stamps.sort_unstable();
        let keep = budget / 2;
        let bar = stamps[stamps.len() - keep - 1].successor();
        let mut values = 0;
        for sh in self.shards.iter() {
            let g = sh.read();
            values += g.table.iter().filter(|(_, r)| r.stamp() < bar && r.is_value()).count();
        }
        let tombstones = stamps.len() - keep;
        self.raise_clear_below_unchecked(bar, now_ms);
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters.compacted_values.fetch_add(values as u64, Ordering::Relaxed);
        let c = Compaction { clear_below: bar, tombstones, values };
        if let Some(f) = self.on_compaction.get() {
            f(&c);
        }
        Some(c)
    }

    /// Registers held, of every kind.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed).max(0) as usize
    }

    /// True when no register is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values that carry a TTL, and their average time left at `now_ms`,
    /// as Redis reports them in INFO's keyspace line: values past due but
    /// not yet swept are counted, and pull the average down by how late
    /// they are. Reads every shard's sums.
    pub fn expiring(&self, now_ms: u64) -> Expiring {
        let (mut values, mut sum) = (0u128, 0u128);
        for sh in self.shards.iter() {
            let g = sh.read();
            values += g.expiries.len() as u128;
            sum += g.expiry_sum;
        }
        // The mean deadline less now, floored at zero.
        let avg_ttl_ms = sum.checked_div(values).map_or(0, |mean| mean.saturating_sub(u128::from(now_ms)) as u64);
        Expiring { values: values as usize, avg_ttl_ms }
    }

    /// Gauges and counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicIsize| a.load(Ordering::Relaxed).max(0) as usize;
        StoreStats {
            entries: g(&self.entries),
            bytes: g(&self.bytes),
            tombstones: g(&self.tombstones),
            stubs: g(&self.stubs),
            refused_floor: l(&c.refused_floor),
            refused_future: l(&c.refused_future),
            below_clear: l(&c.below_clear),
            collected_tombstones: l(&c.collected_tombstones),
            collected_expired: l(&c.collected_expired),
            refusal_drops: l(&c.refusal_drops),
            evictions: l(&c.evictions),
            ghosted: l(&c.ghosted),
            stubs_ghosted_early: l(&c.stubs_ghosted_early),
            refused_ghost: l(&c.refused_ghost),
            compactions: l(&c.compactions),
            compacted_values: l(&c.compacted_values),
            floors: self.floors(),
        }
    }

    /// Every register held, sorted by key, with the floors. For tests and
    /// debugging: it copies the whole store.
    pub fn snapshot(&self) -> (Floors, Vec<(Bytes, Register)>) {
        let mut all = Vec::with_capacity(self.len());
        for sh in self.shards.iter() {
            let g = sh.read();
            all.extend(g.table.iter().map(|(_, r)| (Bytes::copy_from_slice(r.key()), r.register())));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        (self.floors(), all)
    }

    // ---- digest access for anti-entropy -------------------------------

    /// The root of the digest tree and the number of registers held.
    pub fn root(&self) -> (u64, u64) {
        let mut h = 0u64;
        let mut n = 0u64;
        for sh in self.shards.iter() {
            let g = sh.read();
            h = h.wrapping_add(g.total);
            n += g.table.len() as u64;
        }
        (h, n)
    }

    /// The digest of buckets `[lo, hi)`.
    pub fn range_digest(&self, lo: usize, hi: usize) -> u64 {
        let per = 1usize << self.shard_shift;
        let mut h = 0u64;
        let mut b = lo;
        while b < hi {
            let s = b / per;
            let g = self.shards[s].read();
            let start = b % per;
            if start == 0 && hi - b >= per {
                h = h.wrapping_add(g.total);
                b += per;
            } else {
                let end = (hi - s * per).min(per);
                for x in &g.buckets[start..end] {
                    h = h.wrapping_add(x.digest);
                }
                b = s * per + end;
            }
        }
        h
    }

    /// Keys and stamps of the registers in each of `buckets` (sorted,
    /// deduplicated). Each shard touched is scanned once, so asking for many
    /// buckets costs one pass over the store, not one per bucket.
    pub fn bucket_summaries(&self, buckets: &[usize]) -> Vec<(usize, Vec<SummaryItem>)> {
        self.scan_buckets(buckets, |r| (Bytes::copy_from_slice(r.key()), r.stamp(), r.kind() == table::Kind::Stub))
    }

    fn scan_buckets<T>(&self, buckets: &[usize], f: impl Fn(table::Entry<'_>) -> T) -> Vec<(usize, Vec<T>)> {
        let mut out: Vec<(usize, Vec<T>)> = buckets.iter().map(|b| (*b, Vec::new())).collect();
        let mut i = 0;
        while i < buckets.len() {
            let s = buckets[i] >> self.shard_shift;
            let mut j = i;
            while j < buckets.len() && buckets[j] >> self.shard_shift == s {
                j += 1;
            }
            let g = self.shards[s].read();
            for (_, r) in g.table.iter() {
                let b = digest::bucket_of(key_hash(r.key()));
                if let Ok(pos) = buckets[i..j].binary_search(&b) {
                    out[i + pos].1.push(f(r));
                }
            }
            i = j;
        }
        out
    }

    /// The floor of bucket `b`: `Stamp::ZERO` when this replica holds the
    /// bucket whole, otherwise the highest stamp among what it chose not to
    /// hold there (see ALGORITHM.md, "Eviction").
    pub fn bucket_floor(&self, b: usize) -> Stamp {
        let s = b >> self.shard_shift;
        self.shards[s].read().floor_of(b & ((1 << self.shard_shift) - 1))
    }

    /// How many times bucket `b`'s registers have changed (wrapping; counted
    /// only once its shard holds part of the keyspace).
    pub fn bucket_changes(&self, b: usize) -> u32 {
        let s = b >> self.shard_shift;
        self.shards[s].read().changes_of(b & ((1 << self.shard_shift) - 1))
    }

    /// Whether this replica holds only part of some bucket.
    pub fn holds_part(&self) -> bool {
        self.shards.iter().any(|sh| sh.read().floor.iter().any(|f| *f != Stamp::ZERO))
    }

    /// The highest stamp this replica knows of in each of `buckets`
    /// (sorted): of the registers it holds there, and of its floor.
    pub fn bucket_max_stamps(&self, buckets: &[usize]) -> Vec<Stamp> {
        self.scan_buckets(buckets, |r| r.stamp())
            .into_iter()
            .map(|(b, stamps)| stamps.into_iter().max().unwrap_or(Stamp::ZERO).max(self.bucket_floor(b)))
            .collect()
    }

    /// Makes bucket `b`'s digest equal to a peer's, `remote_digest`: what
    /// the registers held here do not make becomes the bucket's ghost share,
    /// and its floor rises to `remote_max`, the peer's highest stamp there.
    /// Anti-entropy calls it once the two replicas hold the same register
    /// for every key both hold, so the ghost stands only for keys this
    /// replica does not hold.
    pub fn adopt_ghost(&self, b: usize, remote_digest: u64, remote_max: Stamp) {
        let s = b >> self.shard_shift;
        self.shards[s].write().adopt(b & ((1 << self.shard_shift) - 1), remote_digest, remote_max);
    }

    /// The registers of every bucket in shard `shard`: a whole-shard copy,
    /// used to stream a store to a nearly empty peer one shard at a time.
    pub fn shard_registers(&self, shard: usize) -> Vec<(Bytes, Register)> {
        let g = self.shards[shard].read();
        g.table.iter().map(|(_, r)| (Bytes::copy_from_slice(r.key()), r.register())).collect()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod evict_tests;
#[cfg(test)]
mod flush_tests;
#[cfg(test)]
mod ghost_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
