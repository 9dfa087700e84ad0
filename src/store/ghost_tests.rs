//! Ghosts: eviction that leaves digests equal without keeping the key, the
//! floor that keeps older registers out, and stubs that wait for stability.

use super::*;

const T0: u64 = 1_700_000_000_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key{i:05}"))
}

fn value() -> Bytes {
    Bytes::from(vec![7u8; 100])
}

/// A store whose values fit in `n` entries like `key(i)` => `value()`.
fn bounded(node: u64, n: usize) -> Store {
    let per = shard::cost(&key(0), &Slot::Value { data: value(), expires_at_ms: None });
    let cfg = StoreConfig {
        max_bytes: NonZeroUsize::new(n * per),
        max_tombstones: NonZeroUsize::new(50).unwrap(),
        max_stubs: NonZeroUsize::new(50).unwrap(),
        seed: node,
        ..StoreConfig::default()
    };
    Store::new(NodeId(node), cfg).unwrap()
}

fn unbounded(node: u64) -> Store {
    Store::new(NodeId(node), StoreConfig::default()).unwrap()
}

/// Writes `keys` on `from` and merges each write into `to`.
fn replicate(from: &Store, to: &Store, keys: std::ops::Range<u64>, now: u64) {
    for i in keys {
        let w = from.put(key(i), value(), None, now).unwrap();
        to.merge([(w.key, w.register)], now);
    }
}

#[test]
fn stable_values_are_evicted_into_ghosts_and_digests_stay_equal() {
    let (big, small) = (unbounded(1), bounded(2, 20));
    // Nothing is stable yet: the first evictions leave stubs.
    replicate(&big, &small, 0..30, T0);
    assert_eq!(small.stats().stubs, 10);
    // A stub's share of the digest is not its value's: a peer holding the
    // value sees the bucket differ (and the bounded peer takes its digest).
    assert_ne!(small.root().0, big.root().0);
    let differ = small.root().0.wrapping_sub(big.root().0);
    // Once every member has seen them, the stubs become ghosts, keeping
    // their share...
    small.collect(T0 + 1, T0 + 1);
    let st = small.stats();
    assert_eq!((st.stubs, st.ghosted), (0, 10), "{st:?}");
    assert_eq!(small.root().0.wrapping_sub(big.root().0), differ, "ghosts keep the digest");
    // ...and stable values are evicted straight into ghosts, keeping the
    // value's share: the difference stays what the stubs made.
    small.collect(T0 + 2, T0 + 10);
    replicate(&big, &small, 30..100, T0 + 3);
    let st = small.stats();
    assert_eq!(st.stubs, 0, "{st:?}");
    assert_eq!(st.ghosted, 80);
    assert_eq!(st.entries, 20, "only the values within the bound are held");
    assert_eq!(small.root().0.wrapping_sub(big.root().0), differ);
    assert!(small.value_bytes() <= small.max_bytes().unwrap().get());
    // A ghost reads as a miss; its bucket now has a floor.
    let gone = (0..100).find(|i| small.get(&key(*i), T0 + 3).is_none()).unwrap();
    assert!(small.bucket_floor(digest::bucket_of(key_hash(&key(gone)))) > Stamp::ZERO);
}

#[test]
fn the_floor_refuses_older_registers_without_a_reply_and_admits_newer() {
    let (a, small) = (unbounded(1), bounded(2, 1));
    small.collect(T0, T0 + 10);
    let old = a.put(b("k"), b("old"), None, T0).unwrap();
    let w = a.put(b("k"), value(), None, T0 + 1).unwrap();
    small.merge([(w.key.clone(), w.register.clone())], T0 + 1);
    // Another key pushes "k" out: it arrived before the watermark, so it
    // becomes a ghost.
    let other = a.put(b("other"), value(), None, T0 + 2).unwrap();
    small.merge([(other.key, other.register)], T0 + 2);
    assert_eq!(small.get(b"k", T0 + 2), None);
    assert_eq!(small.stats().ghosted, 1);
    // The older write, arriving late, would be a stale read: refused, and
    // no refusal reply (the sender's copy is not deleted).
    let out = small.merge([(old.key.clone(), old.register.clone())], T0 + 3);
    assert_eq!(out.refused_ghost, 1);
    assert!(out.refused.is_empty() && out.changes.is_empty());
    assert_eq!(small.get(b"k", T0 + 3), None);
    // A newer write is admitted.
    let newer = a.put(b("k"), b("newer"), None, T0 + 4).unwrap();
    small.merge([(newer.key, newer.register)], T0 + 4);
    assert_eq!(small.get(b"k", T0 + 4), Some(b("newer")));
}

#[test]
fn stubs_never_compact_and_past_their_budget_become_ghosts() {
    let (big, small) = (unbounded(1), bounded(2, 10));
    // No watermark: every eviction leaves a stub; the budget is 50.
    replicate(&big, &small, 0..200, T0);
    let st = small.stats();
    assert_eq!(st.compactions, 0, "eviction never raises clear_below: {st:?}");
    assert_eq!(st.floors.clear_below, Stamp::ZERO);
    assert!(st.stubs <= 50, "{st:?}");
    assert!(st.stubs_ghosted_early > 0, "{st:?}");
    // The other peer lost nothing.
    assert_eq!(big.stats().entries, 200);
}

#[test]
fn a_range_tombstone_above_the_floor_clears_the_ghosts() {
    let (big, small) = (unbounded(1), bounded(2, 5));
    small.collect(T0, T0 + 1_000_000);
    replicate(&big, &small, 0..40, T0);
    assert!(small.stats().ghosted > 0);
    let (bar, _) = big.flush_all(T0 + 10);
    small.raise_clear_below(bar, T0 + 10).unwrap();
    assert_eq!(small.root(), (0, 0), "no register and no ghost is left");
    assert_eq!(big.root(), (0, 0));
    assert!((0..digest::BUCKETS).all(|b| small.bucket_floor(b) == Stamp::ZERO));
}

#[test]
fn adopting_a_peer_digest_makes_the_bucket_agree() {
    let (a, c) = (unbounded(1), unbounded(2));
    for i in 0..50 {
        a.put(key(i), value(), None, T0).unwrap();
    }
    // c holds one of a's keys in the same bucket as another it lacks.
    let bucket = |k: &Bytes| digest::bucket_of(key_hash(k));
    let (k0, w) = (key(0), a.register(&key(0)).unwrap());
    c.merge([(k0.clone(), w)], T0);
    let b0 = bucket(&k0);
    let remote = a.range_digest(b0, b0 + 1);
    let max = a.bucket_max_stamps(&[b0])[0];
    c.adopt_ghost(b0, remote, max);
    assert_eq!(c.range_digest(b0, b0 + 1), remote);
    assert_eq!(c.bucket_floor(b0), max);
    // The held key is still read; a key of the bucket not held is a miss.
    assert_eq!(c.get(&k0, T0), Some(value()));
}

#[test]
fn a_peer_that_knows_no_other_member_keeps_stubs() {
    let (big, small) = (unbounded(1), bounded(2, 5));
    replicate(&big, &small, 0..20, T0);
    // Alone (`u64::MAX`): a member it has not met may hold older values,
    // which only a stub can tell; tombstones would still be collected.
    small.collect(T0 + 1, u64::MAX);
    let st = small.stats();
    assert_eq!((st.stubs, st.ghosted), (15, 0), "{st:?}");
    // Once every known member has synced after them, they become ghosts.
    small.collect(T0 + 2, T0 + 2);
    let st = small.stats();
    assert_eq!((st.stubs, st.ghosted), (0, 15), "{st:?}");
}

#[test]
fn a_peer_alone_keeps_a_bounded_number_of_stubs_and_still_finds_values_to_evict() {
    // Ten values among thousands of stubs: random probes alone would miss
    // them and refuse the writes for memory.
    let cfg = StoreConfig {
        shards: NonZeroUsize::new(4).unwrap(),
        max_bytes: NonZeroUsize::new(10 * shard::cost(&key(0), &Slot::Value { data: value(), expires_at_ms: None })),
        ..StoreConfig::default()
    };
    let small = Store::new(NodeId(2), cfg).unwrap();
    small.collect(T0, u64::MAX);
    for i in 0..(super::LONE_STUBS as u64 + 2_000) {
        small.put(key(i), value(), None, T0 + 1 + i / 1000).unwrap_or_else(|e| panic!("{i}: {e:?}"));
    }
    small.compact_if_needed(T0 + 2);
    let st = small.stats();
    assert!(st.stubs <= super::LONE_STUBS, "{st:?}");
    assert!(st.stubs_ghosted_early > 0, "{st:?}");
}
