//! Walking the keyspace: SCAN's cursor, KEYS, RANDOMKEY, and what OBJECT
//! reports of one key.
//!
//! A key's digest bucket is fixed by its hash, and buckets are laid out
//! shard by shard in increasing order, so a cursor that names the next
//! bucket to visit visits every bucket exactly once however the tables
//! grow, shrink or compact meanwhile: a key present for the whole scan is
//! returned (at least once), whatever is written or evicted beside it.

use bytes::Bytes;

use super::digest::{bucket_of, key_hash, BUCKETS};
use super::shard::Shard;
use super::Store;

/// What OBJECT reports of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAccess {
    /// Milliseconds since the key was last read or written (LRU policies).
    pub idle_ms: u64,
    /// The logarithmic access counter (LFU policies), 0 to 255.
    pub freq: u8,
}

impl Store {
    /// One step of a scan from bucket `cursor` (0 to start): the keys of
    /// the values visible at `now_ms` in a run of whole buckets, and the
    /// cursor to continue from (0 once every bucket was visited). A step
    /// goes on until it has about `count` keys; within a shard it takes at
    /// least a sixteenth of the shard's buckets, so that a whole scan reads
    /// each shard's table at most sixteen times however small `count` is,
    /// and it passes over empty buckets without reading the table at all.
    pub fn scan(&self, cursor: u64, count: usize, now_ms: u64) -> (Vec<Bytes>, u64) {
        scan(self, self, cursor, count, now_ms)
    }

    /// Every key with a value visible at `now_ms` that `keep` accepts.
    pub fn keys(&self, now_ms: u64, keep: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
        keys(self, self, now_ms, keep)
    }

    /// A key with a visible value, chosen from a random bucket on (the keys
    /// of the first step of a scan from there that finds any); `None` when
    /// no value is visible. `pick(n)` chooses an index below `n`.
    pub fn random_key(&self, now_ms: u64, pick: impl FnMut(usize) -> usize) -> Option<Bytes> {
        random_key(self, self, now_ms, pick)
    }

    /// How recently and how often `key` was used, if it has a visible value.
    pub fn access_of(&self, key: &[u8], now_ms: u64) -> Option<KeyAccess> {
        access_of(self, self, key, now_ms)
    }
}

/// Read access to a store's shards: each under its read lock in turn, or
/// through the guards a transaction holds.
pub(super) trait Shards {
    fn read_shard<R>(&self, s: usize, f: impl FnOnce(&Shard) -> R) -> R;
}

impl Shards for Store {
    fn read_shard<R>(&self, s: usize, f: impl FnOnce(&Shard) -> R) -> R {
        f(&self.shards[s].read())
    }
}

pub(super) fn scan(store: &Store, src: &impl Shards, cursor: u64, count: usize, now_ms: u64) -> (Vec<Bytes>, u64) {
    let Ok(mut b) = usize::try_from(cursor) else { return (Vec::new(), 0) };
    let shift = store.shard_shift;
    let per = 1usize << shift;
    let mut keys = Vec::new();
    while b < BUCKETS && keys.len() < count {
        let (s, lo) = (b >> shift, b & (per - 1));
        let need = count - keys.len();
        let hi = src.read_shard(s, |g| {
            let (mut hi, mut seen) = (lo, 0usize);
            while hi < per && (seen < need || hi - lo < (per / 16).max(1)) {
                seen += g.buckets[hi].count as usize;
                hi += 1;
            }
            if seen > 0 {
                for (_, r) in g.table.iter() {
                    let bucket = bucket_of(key_hash(r.key())) & (per - 1);
                    if (lo..hi).contains(&bucket) && g.shows(r, now_ms) {
                        keys.push(Bytes::copy_from_slice(r.key()));
                    }
                }
            }
            hi
        });
        b = (s << shift) + hi;
    }
    (keys, if b >= BUCKETS { 0 } else { b as u64 })
}

pub(super) fn keys(store: &Store, src: &impl Shards, now_ms: u64, keep: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
    let mut out = Vec::new();
    for s in 0..store.shards.len() {
        src.read_shard(s, |g| {
            for (_, r) in g.table.iter() {
                if g.shows(r, now_ms) && keep(r.key()) {
                    out.push(Bytes::copy_from_slice(r.key()));
                }
            }
        });
    }
    out
}

pub(super) fn random_key(
    store: &Store,
    src: &impl Shards,
    now_ms: u64,
    mut pick: impl FnMut(usize) -> usize,
) -> Option<Bytes> {
    let start = pick(BUCKETS) as u64;
    let mut cursor = start;
    let mut wrapped = false;
    loop {
        let (mut keys, next) = scan(store, src, cursor, 1, now_ms);
        if !keys.is_empty() {
            let i = pick(keys.len());
            return Some(keys.swap_remove(i));
        }
        // Once round the ring of buckets, back to where it started.
        if next == 0 {
            if wrapped || start == 0 {
                return None;
            }
            wrapped = true;
        }
        if wrapped && next >= start {
            return None;
        }
        cursor = next;
    }
}

pub(super) fn access_of(store: &Store, src: &impl Shards, key: &[u8], now_ms: u64) -> Option<KeyAccess> {
    let kh = key_hash(key);
    let (s, _) = store.locate(kh);
    let lfu = store.policy().is_lfu();
    src.read_shard(s, |g| {
        let (_, r) = g.find_live(kh, key)?;
        r.visible(now_ms)?;
        let a = r.access();
        Some(KeyAccess {
            idle_ms: if lfu { 0 } else { a.idle(false, now_ms) },
            freq: if lfu { (255 - a.idle(true, now_ms)) as u8 } else { 0 },
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::hlc::NodeId;
    use crate::store::StoreConfig;

    const NOW: u64 = 1_700_000_000_000;

    fn store_with(n: usize) -> Store {
        let s = Store::new(NodeId(1), StoreConfig::default()).unwrap();
        for i in 0..n {
            s.put(Bytes::from(format!("k{i}")), Bytes::from_static(b"v"), None, NOW).unwrap();
        }
        s
    }

    fn scan_all(s: &Store, count: usize, mut between: impl FnMut(usize)) -> (Vec<Bytes>, usize) {
        let (mut all, mut cursor, mut steps) = (Vec::new(), 0u64, 0);
        loop {
            let (keys, next) = s.scan(cursor, count, NOW);
            all.extend(keys);
            steps += 1;
            between(steps);
            if next == 0 {
                return (all, steps);
            }
            assert!(next > cursor, "the cursor moves forward");
            cursor = next;
        }
    }

    #[test]
    fn a_scan_returns_every_key_once_in_a_bounded_number_of_steps() {
        let s = store_with(5_000);
        let (all, steps) = scan_all(&s, 10, |_| {});
        let set: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 5_000, "no key twice");
        assert_eq!(set.len(), 5_000);
        let shards = StoreConfig::default().shards.get();
        assert!(steps <= shards * 16, "{steps} steps");
        // An empty store is walked in one step.
        let empty = Store::new(NodeId(9), StoreConfig::default()).unwrap();
        assert_eq!(empty.scan(0, 10, NOW), (Vec::new(), 0));
        // A larger count takes fewer steps and returns the same keys.
        let (big, big_steps) = scan_all(&s, 1_000, |_| {});
        assert_eq!(big.iter().cloned().collect::<HashSet<_>>(), set);
        assert!(big_steps < steps);
    }

    #[test]
    fn a_scan_misses_no_key_present_throughout_while_others_come_and_go() {
        let s = store_with(2_000);
        // Between steps: 3,000 new keys, half of the first keys' odd ones
        // deleted and rewritten, tables growing (and compacting after the
        // deletes): none of that may hide a key that stayed.
        let (all, _) = scan_all(&s, 10, |step| {
            for j in 0..30 {
                let k = Bytes::from(format!("new{step}-{j}"));
                s.put(k, Bytes::from_static(b"w"), None, NOW).unwrap();
            }
            let victim = Bytes::from(format!("k{}", (step * 2 + 1) % 2_000));
            s.delete(victim, NOW);
        });
        let got: HashSet<_> = all.into_iter().collect();
        for i in (0..2_000).step_by(2) {
            assert!(got.contains(format!("k{i}").as_bytes()), "k{i} was present throughout and not returned");
        }
    }

    #[test]
    fn keys_and_random_keys_come_from_visible_values_only() {
        let s = store_with(100);
        s.delete(Bytes::from_static(b"k7"), NOW);
        s.put(Bytes::from_static(b"ttl"), Bytes::from_static(b"v"), Some(10), NOW).unwrap();
        let keys = s.keys(NOW + 100, |k| k.starts_with(b"k"));
        assert_eq!(keys.len(), 99);
        assert!(!keys.iter().any(|k| k == "k7"));
        assert!(s.keys(NOW + 100, |k| k == b"ttl").is_empty(), "an expired key is not listed");
        let mut x = 12345u64;
        let mut pick = |n: usize| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize % n
        };
        for _ in 0..200 {
            let k = s.random_key(NOW + 100, &mut pick).unwrap();
            assert!(k != "k7" && k != "ttl");
        }
        let empty = Store::new(NodeId(2), StoreConfig::default()).unwrap();
        assert_eq!(empty.random_key(NOW, &mut pick), None);
        let one = Store::new(NodeId(3), StoreConfig::default()).unwrap();
        one.put(Bytes::from_static(b"only"), Bytes::from_static(b"v"), None, NOW).unwrap();
        for _ in 0..20 {
            assert_eq!(one.random_key(NOW, &mut pick).as_deref(), Some(&b"only"[..]));
        }
    }
}
