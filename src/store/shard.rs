//! One shard of the store: a slice of the keyspace with its own lock, its own
//! digest buckets and its own collection queues.
//!
//! Every method here runs under the shard's lock, held by the caller in
//! `store/mod.rs`; nothing here takes another lock.

use std::collections::BTreeSet;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::Rng;

use super::digest::{key_hash, stamp_hash};
use super::evict::{Access, Candidate, EvictionPolicy, Pool};
use super::slot::{Register, Slot};
use super::table::{Entry, Kind, Record, Table};
use crate::hlc::Stamp;

/// Estimated bytes one entry costs beyond its key and value bytes, used for
/// the memory bound (row 6 of BENCHMARKS.md measures the real figure):
/// - the record (32 bytes);
/// - the index: 4 bytes and a control byte a slot, at a load between 7/16
///   and 7/8, so about 8 bytes;
/// - the blob's header (two varints: the key's length, and the arrival
///   time, 2 bytes for a short key written here or pushed, up to 7 for a
///   register anti-entropy brought long after its write) and the
///   allocator's rounding of it, about 14 bytes together.
///
/// Close is enough: a process that bounds all of its memory corrects for
/// the difference with its allocator's count (`node::memory`), and the
/// closer the estimate, the steadier that correction.
pub(crate) const ENTRY_OVERHEAD: usize = std::mem::size_of::<Record>() + 8 + 14;

/// What a shard keeps of one digest bucket it owns. The three are kept
/// side by side because every change to a register updates all three:
/// one cache line rather than three arrays' worth of misses a write.
#[derive(Clone, Copy, Default)]
pub(crate) struct Bucket {
    /// The wrapping sum of `entry_hash(key, stamp)` over its entries.
    /// Order-independent, so it is kept up to date in O(1) per change.
    pub(crate) digest: u64,
    /// Entry count, to size bucket transfers.
    pub(crate) count: u32,
    /// How many times its registers changed (a store or a removal),
    /// wrapping. Anti-entropy adopts a peer's digest for a bucket only if
    /// nothing but its own session changed the bucket meanwhile, and
    /// offers its own digest only on the same condition.
    pub(crate) changes: u32,
    /// How many registers were stored in it (written, merged, deleted as
    /// tombstones; not removed), wrapping: WATCH compares it for a key
    /// absent at both of its readings, which a removal leaves absent.
    pub(crate) writes: u32,
}

pub(crate) struct Shard {
    pub(crate) table: Table,
    /// Each bucket this shard owns, by local bucket.
    pub(crate) buckets: Box<[Bucket]>,
    /// Wrapping sum of the buckets' digests, so that the root costs one read per shard.
    pub(crate) total: u64,
    /// Records waiting for collection, by local arrival time and record id:
    /// tombstones, and values (or stubs) whose TTL has run out. Collection
    /// pops from the front while arrivals are older than the stability
    /// watermark.
    pub(crate) dead: BTreeSet<(u64, u32)>,
    /// Live values that carry a TTL, by expiry time and record id. Changed
    /// only through `expiry_*`, which keep `expiry_sum`.
    pub(crate) expiries: BTreeSet<(u64, u32)>,
    /// The sum of `expiries`' times, for INFO's average TTL without a walk
    /// of the set.
    pub(crate) expiry_sum: u128,
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
    /// The `clear_below` this shard was last told of: its records below it
    /// are deleted. They stay in the table until the sweep that follows
    /// the raise reaches this shard, and until then every read and write
    /// passes over them as over an absent key.
    pub(crate) bar: Stamp,
    /// At least the highest stamp stored in this shard: a raised
    /// `clear_below` above it leaves no value here to announce again.
    pub(crate) high: Stamp,
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
pub(crate) fn cost(key: &[u8], slot: &Slot) -> usize {
    key.len() + slot.payload_len() + ENTRY_OVERHEAD
}

/// Accounted bytes of a stored record.
pub(crate) fn record_cost(r: Entry<'_>) -> usize {
    r.key().len() + r.payload_len() + ENTRY_OVERHEAD
}

/// What the shard's bookkeeping needs to know of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Facts {
    kind: Kind,
    stamp: Stamp,
    arrival_ms: u64,
    expires_at_ms: Option<u64>,
    cost: usize,
}

impl Facts {
    fn of(r: Entry<'_>) -> Facts {
        Facts {
            kind: r.kind(),
            stamp: r.stamp(),
            arrival_ms: r.arrival_ms(),
            expires_at_ms: r.expires_at_ms(),
            cost: record_cost(r),
        }
    }

    /// The facts of the record that storing `slot` for `key`, stamped
    /// `stamp`, at `arrival_ms`, makes: what [`Facts::of`] would read back
    /// from it, without parsing the blob just written.
    fn stored(key: &[u8], slot: &Slot, stamp: Stamp, arrival_ms: u64) -> Facts {
        Facts { kind: Kind::of(slot), stamp, arrival_ms, expires_at_ms: slot.expires_at_ms(), cost: cost(key, slot) }
    }

    fn hash(&self, kh: u64) -> u64 {
        stamp_hash(kh, &self.stamp, self.kind == Kind::Stub)
    }
}

impl Shard {
    pub(crate) fn new(buckets: usize) -> Self {
        Shard {
            table: Table::default(),
            buckets: vec![Bucket::default(); buckets].into_boxed_slice(),
            total: 0,
            dead: BTreeSet::new(),
            expiries: BTreeSet::new(),
            expiry_sum: 0,
            bytes: 0,
            value_bytes: 0,
            tombstones: 0,
            stubs: 0,
            ghost: Vec::new(),
            floor: Vec::new(),
            bar: Stamp::ZERO,
            high: Stamp::ZERO,
        }
    }

    /// The record held for `key`, with its id; `kh` is the key's hash.
    #[inline]
    pub(crate) fn find(&self, kh: u64, key: &[u8]) -> Option<(u32, Entry<'_>)> {
        self.table.find(kh, key).map(|id| (id, self.table.get(id)))
    }

    /// As [`Shard::find`], but `None` for a record a raised `clear_below`
    /// deleted (see `bar`): what a read finds.
    #[inline]
    pub(crate) fn find_live(&self, kh: u64, key: &[u8]) -> Option<(u32, Entry<'_>)> {
        self.find(kh, key).filter(|(_, r)| !self.flushed(*r))
    }

    /// Whether a raised `clear_below` deleted record `r`, which its sweep
    /// has yet to remove.
    #[inline]
    pub(crate) fn flushed(&self, r: Entry<'_>) -> bool {
        // A stamp's clock part decides all but a tie, and costs no load of
        // the stamp's node.
        r.hlc() <= self.bar.hlc && r.stamp() < self.bar
    }

    /// Whether record `r` shows a value at `now_ms`: one that is neither
    /// past its TTL nor deleted by a raised `clear_below` not yet swept.
    #[inline]
    pub(crate) fn shows(&self, r: Entry<'_>, now_ms: u64) -> bool {
        !self.flushed(r) && r.visible(now_ms).is_some()
    }

    /// Starts loading a local bucket's line, which a change to one of its
    /// registers updates after the table lookup: the lookup's cache misses
    /// follow one another, and this one, independent of them, can overlap
    /// them rather than come after.
    #[inline]
    pub(crate) fn warm(&self, local_bucket: usize) {
        std::hint::black_box(self.buckets[local_bucket].digest);
    }

    fn digest_add(&mut self, local_bucket: usize, h: u64) {
        let b = &mut self.buckets[local_bucket].digest;
        *b = b.wrapping_add(h);
        self.total = self.total.wrapping_add(h);
    }

    fn digest_sub(&mut self, local_bucket: usize, h: u64) {
        let b = &mut self.buckets[local_bucket].digest;
        *b = b.wrapping_sub(h);
        self.total = self.total.wrapping_sub(h);
    }

    fn expiry_add(&mut self, exp: u64, id: u32) {
        if self.expiries.insert((exp, id)) {
            self.expiry_sum += u128::from(exp);
        }
    }

    fn expiry_remove(&mut self, exp: u64, id: u32) -> bool {
        let held = self.expiries.remove(&(exp, id));
        if held {
            self.expiry_sum -= u128::from(exp);
        }
        held
    }

    /// Removes the bookkeeping of record `id`, which is being replaced or
    /// dropped.
    fn unindex(&mut self, id: u32, f: Facts, kh: u64, local_bucket: usize) -> Delta {
        self.digest_sub(local_bucket, f.hash(kh));
        self.buckets[local_bucket].count -= 1;
        let mut d = Delta { entries: -1, bytes: -(f.cost as isize), ..Delta::default() };
        match f.kind {
            Kind::Tombstone => {
                self.tombstones -= 1;
                d.tombstones = -1;
                self.dead.remove(&(f.arrival_ms, id));
            }
            Kind::Stub => {
                self.stubs -= 1;
                d.stubs = -1;
                self.dead.remove(&(f.arrival_ms, id));
            }
            Kind::Value => {
                if let Some(exp) = f.expires_at_ms {
                    if !self.expiry_remove(exp, id) {
                        self.dead.remove(&(f.arrival_ms, id));
                    }
                }
                self.value_bytes -= f.cost;
                d.value_bytes = -(f.cost as isize);
            }
        }
        self.bytes -= f.cost;
        d
    }

    /// Adds the bookkeeping of record `id`, newly stored.
    fn index(&mut self, id: u32, f: Facts, kh: u64, local_bucket: usize, now_ms: u64) -> Delta {
        self.digest_add(local_bucket, f.hash(kh));
        self.buckets[local_bucket].count += 1;
        self.bytes += f.cost;
        let mut d = Delta { entries: 1, bytes: f.cost as isize, ..Delta::default() };
        match f.kind {
            Kind::Tombstone => {
                self.tombstones += 1;
                d.tombstones = 1;
                self.dead.insert((f.arrival_ms, id));
            }
            Kind::Stub => {
                // A stub waits in the same queue as the dead, by arrival,
                // until it is stable and can become a ghost.
                self.stubs += 1;
                d.stubs = 1;
                self.dead.insert((f.arrival_ms, id));
            }
            Kind::Value => {
                self.value_bytes += f.cost;
                d.value_bytes = f.cost as isize;
                if let Some(exp) = f.expires_at_ms {
                    if now_ms > exp {
                        // Already expired on arrival: a tombstone in effect.
                        self.dead.insert((f.arrival_ms, id));
                    } else {
                        self.expiry_add(exp, id);
                    }
                }
            }
        }
        d
    }

    /// Stores `reg` for `key` (hash `kh`), replacing whatever was there:
    /// record `held`, as the caller found it. The caller has checked that
    /// `reg` wins. A write counts as an access
    /// under `lfu` (or LRU when false).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store(
        &mut self,
        key: &[u8],
        kh: u64,
        local_bucket: usize,
        held: Option<u32>,
        reg: &Register,
        arrival_ms: u64,
        now_ms: u64,
        lfu: bool,
    ) -> Delta {
        let access = Access::written(held.map(|id| self.table.get(id).access()), lfu, now_ms);
        self.high = self.high.max(reg.marker);
        match held {
            Some(id) => self.rewrite(id, kh, local_bucket, &reg.val, reg.marker, arrival_ms, access, now_ms),
            None => {
                let id = self.table.insert(kh, key, &reg.val, reg.marker, arrival_ms, access);
                self.indexed(id, Facts::stored(key, &reg.val, reg.marker, arrival_ms), kh, local_bucket, now_ms)
            }
        }
    }

    /// Replaces record `id`'s contents, keeping its id, with their
    /// bookkeeping: a winning write, or an eviction into a stub.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &mut self,
        id: u32,
        kh: u64,
        local_bucket: usize,
        slot: &Slot,
        stamp: Stamp,
        arrival_ms: u64,
        access: Access,
        now_ms: u64,
    ) -> Delta {
        let held = self.table.get(id);
        let (old, new) = (Facts::of(held), Facts::stored(held.key(), slot, stamp, arrival_ms));
        let mut delta = self.unindex(id, old, kh, local_bucket);
        self.table.replace(id, slot, stamp, arrival_ms, access);
        delta.add(self.indexed(id, new, kh, local_bucket, now_ms));
        delta
    }

    /// Adds the bookkeeping of record `id`, newly stored with facts `f`,
    /// and counts the change and the write.
    fn indexed(&mut self, id: u32, f: Facts, kh: u64, local_bucket: usize, now_ms: u64) -> Delta {
        debug_assert_eq!(f, Facts::of(self.table.get(id)), "the facts of the record stored");
        let delta = self.index(id, f, kh, local_bucket, now_ms);
        self.count_change(local_bucket);
        let w = &mut self.buckets[local_bucket].writes;
        *w = w.wrapping_add(1);
        delta
    }

    fn count_change(&mut self, local_bucket: usize) {
        let c = &mut self.buckets[local_bucket].changes;
        *c = c.wrapping_add(1);
    }

    /// How many times a local bucket's registers changed (wrapping).
    pub(crate) fn changes_of(&self, local_bucket: usize) -> u32 {
        self.buckets[local_bucket].changes
    }

    /// How many registers were stored in a local bucket (wrapping).
    pub(crate) fn writes_of(&self, local_bucket: usize) -> u32 {
        self.buckets[local_bucket].writes
    }

    /// Removes record `id` (of key hash `kh`) entirely: collection,
    /// clear_below, a refusal reply. Record ids stay valid until the caller
    /// calls [`Shard::tidy`].
    pub(crate) fn remove(&mut self, id: u32, kh: u64, local_bucket: usize) -> Delta {
        let f = Facts::of(self.table.get(id));
        let d = self.unindex(id, f, kh, local_bucket);
        self.table.remove(kh, id);
        self.count_change(local_bucket);
        d
    }

    /// Compacts the table if it is mostly free (after a flush, or a wave of
    /// ghosting), renumbering the queues' record ids. Callers run it once
    /// they hold no record id.
    pub(crate) fn tidy(&mut self) {
        if !self.table.sparse() {
            return;
        }
        let renumber = self.table.compact();
        let remap = |set: &mut BTreeSet<(u64, u32)>| {
            *set = std::mem::take(set).into_iter().map(|(t, id)| (t, renumber[id as usize])).collect();
        };
        remap(&mut self.dead);
        remap(&mut self.expiries);
    }

    /// The floor of a local bucket: `Stamp::ZERO` when it is held whole.
    pub(crate) fn floor_of(&self, local_bucket: usize) -> Stamp {
        self.floor.get(local_bucket).copied().unwrap_or(Stamp::ZERO)
    }

    /// The part of a local bucket's digest that registers held here make.
    pub(crate) fn held_sum(&self, local_bucket: usize) -> u64 {
        self.buckets[local_bucket].digest.wrapping_sub(self.ghost.get(local_bucket).copied().unwrap_or(0))
    }

    fn ensure_ghosts(&mut self) {
        if self.ghost.is_empty() {
            self.ghost = vec![0; self.buckets.len()];
            self.floor = vec![Stamp::ZERO; self.buckets.len()];
        }
    }

    /// Drops record `id`'s register but keeps its share of the digest, as a
    /// ghost: digests stay equal to peers that hold it, so anti-entropy
    /// neither pulls it back nor tells anyone else to drop it. Raises the
    /// bucket's floor to its stamp.
    pub(crate) fn ghost(&mut self, id: u32, kh: u64, local_bucket: usize) -> Delta {
        let f = Facts::of(self.table.get(id));
        let d = self.remove(id, kh, local_bucket);
        let h = f.hash(kh);
        self.ensure_ghosts();
        self.ghost[local_bucket] = self.ghost[local_bucket].wrapping_add(h);
        self.digest_add(local_bucket, h);
        self.floor[local_bucket] = self.floor[local_bucket].max(f.stamp);
        d
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

    /// The stamp of the value record `id` holds, if its TTL ran out before
    /// `now_ms` and the expiry sweep has yet to tell of it (which it will
    /// not, once the record is replaced or dropped).
    pub(crate) fn untold_expiry(&self, id: u32, now_ms: u64) -> Option<Stamp> {
        // Every write asks: a shard whose keys have no TTL answers at once.
        if self.expiries.is_empty() {
            return None;
        }
        let r = self.table.get(id);
        if !r.is_value() || self.flushed(r) {
            return None;
        }
        let e = r.expires_at_ms()?;
        (now_ms > e && self.expiries.contains(&(e, id))).then(|| r.stamp())
    }

    /// Turns values whose TTL ran out into dead registers (queued for
    /// collection). Returns their keys and stamps, but for values a raised
    /// `clear_below` deleted first: their end was told with it.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<(Bytes, Stamp, bool)> {
        let mut out = Vec::new();
        while let Some(&(exp, id)) = self.expiries.first() {
            if exp >= now_ms {
                break;
            }
            self.expiry_remove(exp, id);
            if let Some(r) = self.table.used(id) {
                let (arrival, entry) = (r.arrival_ms(), (Bytes::copy_from_slice(r.key()), r.stamp(), r.is_value()));
                let flushed = self.flushed(r);
                self.dead.insert((arrival, id));
                if !flushed {
                    out.push(entry);
                }
            }
        }
        out
    }

    /// Evicts candidate `c` if its record still holds the value sampled
    /// and `policy` may evict it. A value that arrived before
    /// `stable_before` (every member holds it, or something newer) becomes
    /// a ghost; a newer one becomes a stub, which keeps its key and stamp
    /// until it is stable. Returns what that did to the accounting, and
    /// whether it left a ghost.
    pub(crate) fn evict(
        &mut self,
        c: Candidate,
        policy: EvictionPolicy,
        now_ms: u64,
        stable_before: u64,
        local_bucket: impl Fn(u64) -> usize,
        evicting: impl FnOnce(&[u8]),
    ) -> Option<(Delta, bool)> {
        let r = self.table.used(c.id).filter(|r| r.stamp() == c.stamp && r.is_value() && !self.flushed(*r))?;
        let expires_at_ms = r.expires_at_ms();
        if policy.volatile_only() && expires_at_ms.is_none() {
            return None;
        }
        evicting(r.key());
        let kh = key_hash(r.key());
        let lb = local_bucket(kh);
        if r.arrival_ms() < stable_before {
            return Some((self.ghost(c.id, kh, lb), true));
        }
        // Keep the arrival time and access history: eviction is local and
        // is not a new write.
        let (arrival, access) = (r.arrival_ms(), r.access().copy());
        let stub = Slot::Evicted { expires_at_ms };
        Some((self.rewrite(c.id, kh, lb, &stub, c.stamp, arrival, access, now_ms), false))
    }

    /// Offers up to `samples` eviction candidates of this shard (number
    /// `shard`) to `pool`: random values for the allkeys policies; for the
    /// volatile ones, a run of values with a TTL from a random point of the
    /// expiry index (the shard keeps no random access to them alone), and
    /// for `volatile-ttl` the soonest expiries. Returns how many were
    /// offered.
    pub(crate) fn sample(
        &self,
        shard: usize,
        policy: EvictionPolicy,
        samples: usize,
        now_ms: u64,
        rng: &mut SmallRng,
        pool: &mut Pool,
    ) -> usize {
        let lfu = policy.is_lfu();
        let score = |r: Entry<'_>| match policy {
            EvictionPolicy::VolatileTtl => u64::MAX - r.expires_at_ms().unwrap_or(u64::MAX),
            p if p.is_random() => 0,
            _ => r.access().idle(lfu, now_ms),
        };
        // A value a raised `clear_below` deleted is not offered: its sweep
        // is on the way, and evicting it would tell of a key already gone.
        let mut offer = |id: u32, r: Entry<'_>| {
            if !self.flushed(r) {
                pool.offer(score(r), Candidate { shard: shard as u32, id, stamp: r.stamp() });
            }
        };
        let mut found = 0;
        if policy.volatile_only() {
            let (Some(lo), Some(hi)) = (self.expiries.first().map(|x| x.0), self.expiries.last().map(|x| x.0)) else {
                return 0;
            };
            let from = if policy == EvictionPolicy::VolatileTtl { lo } else { rng.random_range(lo..=hi) };
            let start = (from, 0);
            let run = self.expiries.range(start..).chain(self.expiries.range(..start));
            for &(_, id) in run.take(samples * 4) {
                if let Some(r) = self.table.used(id).filter(|r| r.is_value()) {
                    offer(id, r);
                    found += 1;
                    if found == samples {
                        break;
                    }
                }
            }
            return found;
        }
        let n = self.table.len();
        if n <= samples {
            // A shard this small is offered whole: random probes would offer
            // its few values over and over.
            for (id, r) in self.table.iter().filter(|(_, r)| r.is_value()) {
                offer(id, r);
                found += 1;
            }
            return found;
        }
        let values = n.saturating_sub(self.tombstones + self.stubs);
        if values == 0 {
            return 0;
        }
        let cap = self.table.capacity();
        if values * 8 < cap {
            // Mostly stubs and tombstones (a long partition with eviction
            // under way), or mostly free records (a table of one chunk):
            // random probes would miss, and a write would be refused for
            // memory with values still to evict. Walk from a random record
            // instead, however far the next values are.
            let start = rng.random_range(0..cap) as u32;
            for id in (start..cap as u32).chain(0..start) {
                if let Some(r) = self.table.used(id).filter(|r| r.is_value()) {
                    offer(id, r);
                    found += 1;
                    if found == samples {
                        break;
                    }
                }
            }
            return found;
        }
        // Free records, stubs and tombstones are skipped: at least an eighth
        // of the records hold values, so the probes find about half the
        // samples asked for, and their limit keeps a shard from spinning.
        // Probes go in batches whose records are all read before any is
        // looked at: each is a cache miss in a table larger than the
        // caches, and one at a time (a branch on each) they were most of
        // what an eviction cost under replicated writes.
        const BATCH: usize = 8;
        let mut probes = 0;
        while found < samples && probes < samples * 4 {
            let ids: [u32; BATCH] = std::array::from_fn(|_| rng.random_range(0..cap) as u32);
            let holds = ids.map(|id| self.table.holds_value(id));
            probes += BATCH;
            for (id, _) in ids.into_iter().zip(holds).filter(|(_, h)| *h) {
                if found == samples {
                    break;
                }
                if let Some(r) = self.table.used(id) {
                    offer(id, r);
                    found += 1;
                }
            }
        }
        found
    }
}
