//! One shard of the store: a slice of the keyspace with its own lock, its own
//! digest buckets and its own collection queues.
//!
//! Every method here runs under the shard's lock, held by the caller in
//! `store/mod.rs`; nothing here takes another lock.

use std::collections::BTreeSet;

use bytes::Bytes;
use indexmap::IndexMap;
use rand::rngs::SmallRng;
use rand::Rng;

use super::digest::register_hash;
use super::evict::{Access, EvictionPolicy, Pool};
use super::slot::{Register, Slot};
use crate::hlc::Stamp;

/// A stored register and the local time it arrived.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) reg: Register,
    /// Local time (Unix ms) at which this register was stored here. Collection
    /// compares it with the per-member `synced` watermarks: a register that
    /// arrived before the last complete anti-entropy round with every member
    /// started is held by every member (or something newer is).
    pub(crate) arrival_ms: u64,
    /// The key's hash, kept so that digest upkeep on removal needs no rehash.
    pub(crate) key_hash: u64,
    /// When (LRU) or how often (LFU) the entry was last read or written.
    pub(crate) access: Access,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            reg: self.reg.clone(),
            arrival_ms: self.arrival_ms,
            key_hash: self.key_hash,
            access: self.access.copy(),
        }
    }
}

/// Estimated bytes one entry costs beyond its key and value bytes, used for
/// the memory bound (row 6 of BENCHMARKS.md measures the real figure):
/// - the map's slot (hash, key handle, entry), times 3/2: a table that
///   doubles when full is on average about two thirds full;
/// - the index, a `usize` per slot at a load of at most 7/8, and the same
///   slack;
/// - two `bytes` headers of 32 bytes: the key and the value each get one
///   the first time they are shared (a push, a read);
/// - 16 bytes of allocator rounding for the key and the value together.
///
/// Close is enough: a process that bounds all of its memory corrects for
/// the difference with its allocator's count (`node::memory`), and the
/// closer the estimate, the steadier that correction.
pub(crate) const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<(u64, Bytes, Entry)>() * 3 / 2 + std::mem::size_of::<usize>() * 2 + 2 * 32 + 16;

/// Capacity below which a shard's table is never shrunk.
const MIN_TABLE: usize = 64;

pub(crate) struct Shard {
    pub(crate) map: IndexMap<Bytes, Entry, foldhash::fast::RandomState>,
    /// Digest of each bucket this shard owns: the wrapping sum of
    /// `entry_hash(key, stamp)` over its entries. Order-independent, so it is
    /// kept up to date in O(1) per change.
    pub(crate) buckets: Box<[u64]>,
    /// Entry count per bucket, to size bucket transfers.
    pub(crate) bucket_counts: Box<[u32]>,
    /// Wrapping sum of `buckets`, so that the root costs one read per shard.
    pub(crate) total: u64,
    /// Registers waiting for collection, by local arrival time: tombstones, and
    /// values (or stubs) whose TTL has run out. Collection pops from the front
    /// while arrivals are older than the stability watermark.
    pub(crate) dead: BTreeSet<(u64, Bytes)>,
    /// Live values and stubs that carry a TTL, by expiry time.
    pub(crate) expiries: BTreeSet<(u64, Bytes)>,
    /// Accounted bytes (keys, values and `ENTRY_OVERHEAD` per entry).
    pub(crate) bytes: usize,
    /// The part of `bytes` held by registers with a value: what eviction
    /// keeps under the memory bound.
    pub(crate) value_bytes: usize,
    pub(crate) tombstones: usize,
    pub(crate) stubs: usize,
    /// Per local bucket, the digest share of the registers this replica
    /// chose not to hold (its ghosts: see ALGORITHM.md, "Eviction"), already
    /// included in `buckets`. Empty until the shard first ghosts something.
    pub(crate) ghost: Vec<u64>,
    /// Per local bucket, the highest stamp among its ghosts (the bucket's
    /// floor): an arriving register for a key not held, at or below it, may
    /// be older than what was ghosted and is refused. `Stamp::ZERO` for a
    /// bucket held whole. Allocated with `ghost`.
    pub(crate) floor: Vec<Stamp>,
    /// Per local bucket, how many times its registers changed (a store or a
    /// removal), wrapping. Anti-entropy adopts a peer's digest for a bucket
    /// only if nothing but its own session changed the bucket meanwhile,
    /// and offers its own digest only on the same condition.
    pub(crate) changes: Box<[u32]>,
}

/// What `Shard::store` did to the accounting the store keeps globally.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Delta {
    pub(crate) entries: isize,
    pub(crate) bytes: isize,
    pub(crate) tombstones: isize,
    pub(crate) stubs: isize,
    /// The part of `bytes` held by registers with a value.
    pub(crate) value_bytes: isize,
}

impl Delta {
    pub(crate) fn add(&mut self, o: Delta) {
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.value_bytes += o.value_bytes;
        self.tombstones += o.tombstones;
        self.stubs += o.stubs;
    }
}

/// Accounted bytes of one entry.
pub(crate) fn cost(key: &Bytes, slot: &Slot) -> usize {
    key.len() + slot.payload_len() + ENTRY_OVERHEAD
}

impl Shard {
    pub(crate) fn new(buckets: usize) -> Self {
        Shard {
            map: IndexMap::default(),
            buckets: vec![0; buckets].into_boxed_slice(),
            bucket_counts: vec![0; buckets].into_boxed_slice(),
            total: 0,
            dead: BTreeSet::new(),
            expiries: BTreeSet::new(),
            bytes: 0,
            value_bytes: 0,
            tombstones: 0,
            stubs: 0,
            ghost: Vec::new(),
            floor: Vec::new(),
            changes: vec![0; buckets].into_boxed_slice(),
        }
    }

    fn digest_add(&mut self, local_bucket: usize, h: u64) {
        self.buckets[local_bucket] = self.buckets[local_bucket].wrapping_add(h);
        self.total = self.total.wrapping_add(h);
    }

    fn digest_sub(&mut self, local_bucket: usize, h: u64) {
        self.buckets[local_bucket] = self.buckets[local_bucket].wrapping_sub(h);
        self.total = self.total.wrapping_sub(h);
    }

    /// Removes the bookkeeping of an entry that is being replaced or dropped.
    fn unindex(&mut self, key: &Bytes, e: &Entry, local_bucket: usize) -> Delta {
        self.digest_sub(local_bucket, register_hash(e.key_hash, &e.reg));
        self.bucket_counts[local_bucket] -= 1;
        let mut d = Delta { entries: -1, bytes: -(cost(key, &e.reg.val) as isize), ..Delta::default() };
        match &e.reg.val {
            Slot::Tombstone => {
                self.tombstones -= 1;
                d.tombstones = -1;
                self.dead.remove(&(e.arrival_ms, key.clone()));
            }
            Slot::Evicted { .. } => {
                self.stubs -= 1;
                d.stubs = -1;
                self.dead.remove(&(e.arrival_ms, key.clone()));
            }
            Slot::Value { expires_at_ms, .. } => {
                if let Some(exp) = *expires_at_ms {
                    if !self.expiries.remove(&(exp, key.clone())) {
                        self.dead.remove(&(e.arrival_ms, key.clone()));
                    }
                }
            }
        }
        self.bytes = (self.bytes as isize + d.bytes) as usize;
        if matches!(e.reg.val, Slot::Value { .. }) {
            let c = cost(key, &e.reg.val);
            self.value_bytes -= c;
            d.value_bytes = -(c as isize);
        }
        d
    }

    /// Adds the bookkeeping of a newly stored entry.
    fn index(&mut self, key: &Bytes, e: &Entry, local_bucket: usize, now_ms: u64) -> Delta {
        self.digest_add(local_bucket, register_hash(e.key_hash, &e.reg));
        self.bucket_counts[local_bucket] += 1;
        let c = cost(key, &e.reg.val);
        self.bytes += c;
        let mut d = Delta { entries: 1, bytes: c as isize, ..Delta::default() };
        if matches!(e.reg.val, Slot::Value { .. }) {
            self.value_bytes += c;
            d.value_bytes = c as isize;
        }
        match &e.reg.val {
            Slot::Tombstone => {
                self.tombstones += 1;
                d.tombstones = 1;
                self.dead.insert((e.arrival_ms, key.clone()));
            }
            Slot::Evicted { .. } => {
                // A stub waits in the same queue as the dead, by arrival,
                // until it is stable and can become a ghost.
                self.stubs += 1;
                d.stubs = 1;
                self.dead.insert((e.arrival_ms, key.clone()));
            }
            Slot::Value { expires_at_ms, .. } => {
                if let Some(exp) = *expires_at_ms {
                    if now_ms > exp {
                        // Already expired on arrival: a tombstone in effect.
                        self.dead.insert((e.arrival_ms, key.clone()));
                    } else {
                        self.expiries.insert((exp, key.clone()));
                    }
                }
            }
        }
        d
    }

    /// Stores `reg` for `key`, replacing whatever was there. The caller has
    /// checked that `reg` wins. A write counts as an access under `lfu` (or
    /// LRU when false). Returns the replaced entry.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store(
        &mut self,
        key: Bytes,
        key_hash: u64,
        local_bucket: usize,
        reg: Register,
        arrival_ms: u64,
        now_ms: u64,
        lfu: bool,
    ) -> (Option<Entry>, Delta) {
        let access = Access::written(self.map.get(&key).map(|e| &e.access), lfu, now_ms);
        self.put_entry(key, local_bucket, Entry { reg, arrival_ms, key_hash, access }, now_ms)
    }

    fn put_entry(&mut self, key: Bytes, local_bucket: usize, new: Entry, now_ms: u64) -> (Option<Entry>, Delta) {
        let mut delta = Delta::default();
        let old = self.map.get(&key).cloned();
        if let Some(o) = &old {
            delta.add(self.unindex(&key, o, local_bucket));
        }
        delta.add(self.index(&key, &new, local_bucket, now_ms));
        self.map.insert(key, new);
        self.count_change(local_bucket);
        (old, delta)
    }

    fn count_change(&mut self, local_bucket: usize) {
        if let Some(c) = self.changes.get_mut(local_bucket) {
            *c = c.wrapping_add(1);
        }
    }

    /// How many times a local bucket's registers changed (wrapping).
    pub(crate) fn changes_of(&self, local_bucket: usize) -> u32 {
        self.changes[local_bucket]
    }

    /// Removes `key` entirely (collection, clear_below, refusal reply).
    pub(crate) fn remove(&mut self, key: &Bytes, local_bucket: usize) -> Option<(Entry, Delta)> {
        let e = self.map.swap_remove(key)?;
        let d = self.unindex(key, &e, local_bucket);
        self.count_change(local_bucket);
        // A table keeps its largest size unless told otherwise; after a
        // flush or a wave of ghosting that is memory the bound pays for
        // and nothing uses. Halving the slack each time it passes 3/4 of
        // the table costs O(1) per removal, amortized.
        let cap = self.map.capacity();
        if cap > MIN_TABLE && self.map.len() * 4 < cap {
            self.map.shrink_to(self.map.len() * 2);
        }
        Some((e, d))
    }

    /// The floor of a local bucket: `Stamp::ZERO` when it is held whole.
    pub(crate) fn floor_of(&self, local_bucket: usize) -> Stamp {
        self.floor.get(local_bucket).copied().unwrap_or(Stamp::ZERO)
    }

    /// The part of a local bucket's digest that registers held here make.
    pub(crate) fn held_sum(&self, local_bucket: usize) -> u64 {
        self.buckets[local_bucket].wrapping_sub(self.ghost.get(local_bucket).copied().unwrap_or(0))
    }

    fn ensure_ghosts(&mut self) {
        if self.ghost.is_empty() {
            self.ghost = vec![0; self.buckets.len()];
            self.floor = vec![Stamp::ZERO; self.buckets.len()];
        }
    }

    /// Drops `key`'s register but keeps its share of the digest, as a ghost:
    /// digests stay equal to peers that hold it, so anti-entropy neither
    /// pulls it back nor tells anyone else to drop it. Raises the bucket's
    /// floor to its stamp.
    pub(crate) fn ghost(&mut self, key: &Bytes, local_bucket: usize) -> Option<(Entry, Delta)> {
        let (e, d) = self.remove(key, local_bucket)?;
        let h = register_hash(e.key_hash, &e.reg);
        self.ensure_ghosts();
        self.ghost[local_bucket] = self.ghost[local_bucket].wrapping_add(h);
        self.digest_add(local_bucket, h);
        self.floor[local_bucket] = self.floor[local_bucket].max(e.reg.marker);
        Some((e, d))
    }

    /// Makes a local bucket's digest equal to a peer's, `remote_digest`, by
    /// setting its ghost share to what the registers held here do not make,
    /// and raises its floor to `remote_max`, the peer's highest stamp there.
    /// The caller has checked that every key both hold has the same stamp
    /// on both sides, so the ghost covers only keys not held here.
    pub(crate) fn adopt(&mut self, local_bucket: usize, remote_digest: u64, remote_max: Stamp) {
        self.ensure_ghosts();
        let ghost = remote_digest.wrapping_sub(self.held_sum(local_bucket));
        self.digest_sub(local_bucket, self.ghost[local_bucket]);
        self.digest_add(local_bucket, ghost);
        self.ghost[local_bucket] = ghost;
        self.floor[local_bucket] = self.floor[local_bucket].max(remote_max);
    }

    /// Forgets the ghosts of every bucket whose floor is below `clear_below`:
    /// a range tombstone deleted every register they stand for, everywhere,
    /// so the bucket is held whole again.
    pub(crate) fn clear_ghosts_below(&mut self, clear_below: Stamp) {
        for lb in 0..self.floor.len() {
            if self.floor[lb] != Stamp::ZERO && self.floor[lb] < clear_below {
                let g = std::mem::take(&mut self.ghost[lb]);
                self.digest_sub(lb, g);
                self.floor[lb] = Stamp::ZERO;
            }
        }
    }

    /// Turns values whose TTL ran out into dead registers (queued for
    /// collection). Returns their keys and stamps.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<(Bytes, Stamp, bool)> {
        let mut out = Vec::new();
        while let Some((exp, _)) = self.expiries.first() {
            if *exp >= now_ms {
                break;
            }
            let (_, key) = self.expiries.pop_first().expect("first() was Some");
            if let Some(e) = self.map.get(&key) {
                self.dead.insert((e.arrival_ms, key.clone()));
                out.push((key, e.reg.marker, matches!(e.reg.val, Slot::Value { .. })));
            }
        }
        out
    }

    /// Evicts `key` if it still holds a value `policy` may evict. A value
    /// that arrived before `stable_before` (every member holds it, or
    /// something newer) becomes a ghost; a newer one becomes a stub, which
    /// keeps its key and stamp until it is stable. Returns what that did to
    /// the accounting, and whether it left a ghost.
    pub(crate) fn evict(
        &mut self,
        key: &Bytes,
        policy: EvictionPolicy,
        now_ms: u64,
        stable_before: u64,
        local_bucket: impl Fn(u64) -> usize,
    ) -> Option<(Delta, bool)> {
        if !self.is_value(key) || (policy.volatile_only() && !self.has_ttl(key)) {
            return None;
        }
        let e = self.map.get(key).cloned().expect("checked above");
        let lb = local_bucket(e.key_hash);
        if e.arrival_ms < stable_before {
            return self.ghost(key, lb).map(|(_, d)| (d, true));
        }
        let stub = Slot::Evicted { expires_at_ms: e.reg.val.expires_at_ms() };
        // Keep the arrival time and access history: eviction is local and
        // is not a new write.
        let entry = Entry {
            reg: Register { val: stub, marker: e.reg.marker },
            arrival_ms: e.arrival_ms,
            key_hash: e.key_hash,
            access: e.access,
        };
        let (_, d) = self.put_entry(key.clone(), lb, entry, now_ms);
        Some((d, false))
    }

    fn is_value(&self, key: &Bytes) -> bool {
        matches!(self.map.get(key).map(|e| &e.reg.val), Some(Slot::Value { .. }))
    }

    fn has_ttl(&self, key: &Bytes) -> bool {
        self.map.get(key).is_some_and(|e| e.reg.val.expires_at_ms().is_some())
    }

    /// Offers up to `samples` eviction candidates of this shard to `pool`:
    /// random values for the allkeys policies; for the volatile ones, a run
    /// of values with a TTL from a random point of the expiry index (the
    /// shard keeps no random access to them alone), and for `volatile-ttl`
    /// the soonest expiries. Returns how many were offered.
    pub(crate) fn sample(
        &self,
        policy: EvictionPolicy,
        samples: usize,
        now_ms: u64,
        rng: &mut SmallRng,
        pool: &mut Pool,
    ) -> usize {
        let lfu = policy.is_lfu();
        let score = |e: &Entry| match policy {
            EvictionPolicy::VolatileTtl => u64::MAX - e.reg.val.expires_at_ms().unwrap_or(u64::MAX),
            p if p.is_random() => 0,
            _ => e.access.idle(lfu, now_ms),
        };
        let mut found = 0;
        if policy.volatile_only() {
            let (Some(lo), Some(hi)) = (self.expiries.first().map(|x| x.0), self.expiries.last().map(|x| x.0)) else {
                return 0;
            };
            let from = if policy == EvictionPolicy::VolatileTtl { lo } else { rng.random_range(lo..=hi) };
            let start = (from, Bytes::new());
            let run = self.expiries.range(&start..).chain(self.expiries.range(..&start));
            for (_, k) in run.take(samples * 4) {
                if let Some(e) = self.map.get(k).filter(|e| matches!(e.reg.val, Slot::Value { .. })) {
                    pool.offer(score(e), k);
                    found += 1;
                    if found == samples {
                        break;
                    }
                }
            }
            return found;
        }
        let n = self.map.len();
        if n <= samples {
            // A shard this small is offered whole: random probes would offer
            // its few values over and over.
            for (k, e) in self.map.iter().filter(|(_, e)| matches!(e.reg.val, Slot::Value { .. })) {
                pool.offer(score(e), k);
                found += 1;
            }
            return found;
        }
        let values = n.saturating_sub(self.tombstones + self.stubs);
        if values == 0 {
            return 0;
        }
        if values * 8 < n {
            // Mostly stubs and tombstones (a long partition with eviction
            // under way): random probes would miss, and a write would be
            // refused for memory with values still to evict. Walk from a
            // random entry instead, however far the next values are.
            let start = rng.random_range(0..n);
            for i in (start..n).chain(0..start) {
                let (k, e) = self.map.get_index(i).expect("index in range");
                if matches!(e.reg.val, Slot::Value { .. }) {
                    pool.offer(score(e), k);
                    found += 1;
                    if found == samples {
                        break;
                    }
                }
            }
            return found;
        }
        // Stubs and tombstones are skipped; the probe limit keeps a shard
        // made mostly of them from spinning.
        for _ in 0..samples * 4 {
            if found == samples || n == 0 {
                break;
            }
            let (k, e) = self.map.get_index(rng.random_range(0..n)).expect("index in range");
            if matches!(e.reg.val, Slot::Value { .. }) {
                pool.offer(score(e), k);
                found += 1;
            }
        }
        found
    }
}
