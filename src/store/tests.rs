use super::*;

const T0: u64 = 1_700_000_000_000;

fn store(node: u64) -> Store {
    Store::new(NodeId(node), StoreConfig::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Recomputes the root from scratch, to check the O(1) upkeep.
fn recomputed_root(s: &Store) -> (u64, u64) {
    let (_, all) = s.snapshot();
    let h = all.iter().fold(0u64, |acc, (k, r)| acc.wrapping_add(digest::register_hash(key_hash(k), r)));
    (h, all.len() as u64)
}

#[test]
fn put_get_delete() {
    let s = store(1);
    assert_eq!(s.get(b"k", T0), None);
    let w = s.put(b("k"), b("v1"), None, T0).unwrap();
    assert!(w.applied);
    assert_eq!(w.previous, None);
    assert_eq!(s.get(b"k", T0), Some(b("v1")));
    let w = s.put(b("k"), b("v2"), None, T0).unwrap();
    assert_eq!(w.previous, Some(b("v1")));
    let d = s.delete(b("k"), T0);
    assert_eq!(d.previous, Some(b("v2")));
    assert_eq!(s.get(b"k", T0), None);
    assert_eq!(s.stats().tombstones, 1);
    assert_eq!(s.root(), recomputed_root(&s));
}

#[test]
fn a_blind_write_lands_as_a_read_write_does_without_reading() {
    let (blind, read) = (store(1), store(1));
    for s in [&blind, &read] {
        s.put(b("k"), b("old"), None, T0).unwrap();
    }
    let value = |stamp: Stamp| Some(Slot::Value { data: b("new"), expires_at_ms: Some(stamp.physical_ms() + 50) });
    let wb = blind.write_blind(b("k"), T0 + 1, value).unwrap().unwrap();
    let wr = read
        .write_with(b("k"), T0 + 1, |cur, stamp| {
            assert_eq!(cur, Some(&Slot::Value { data: b("old"), expires_at_ms: None }));
            value(stamp)
        })
        .unwrap()
        .unwrap();
    assert_eq!(wb.previous, None, "the value replaced is not read");
    assert_eq!(wr.previous, Some(b("old")));
    assert_eq!((&wb.key, &wb.register, wb.applied), (&wr.key, &wr.register, wr.applied));
    assert_eq!(blind.get(b"k", T0 + 1), Some(b("new")));
    assert_eq!(blind.stats().entries, 1);
    assert_eq!(blind.root(), read.root());
    assert_eq!(blind.root(), recomputed_root(&blind));
    // A blind write of nothing writes nothing; a blind tombstone deletes.
    assert!(blind.write_blind(b("k"), T0 + 2, |_| None).unwrap().is_none());
    assert_eq!(blind.get(b"k", T0 + 2), Some(b("new")));
    let d = blind.write_blind(b("k"), T0 + 3, |_| Some(Slot::Tombstone)).unwrap().unwrap();
    assert_eq!((d.previous, d.register.val), (None, Slot::Tombstone));
    assert_eq!(blind.get(b"k", T0 + 3), None);
    assert_eq!(blind.stats().tombstones, 1);
    assert_eq!(blind.root(), recomputed_root(&blind));
}

#[test]
fn ttl_expires_at_writer_stamp_plus_ttl() {
    let s = store(1);
    let w = s.put(b("k"), b("v"), Some(100), T0).unwrap();
    let exp = w.register.val.expires_at_ms().unwrap();
    assert_eq!(exp, w.register.marker.physical_ms() + 100);
    assert_eq!(s.get(b"k", exp), Some(b("v")), "live until now > expires_at");
    assert_eq!(s.get(b"k", exp + 1), None);
    let ch = s.expire(exp + 1);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].kind, ChangeKind::Expire);
    assert!(s.expire(exp + 2).is_empty(), "an expiry is reported once");
}

#[test]
fn a_read_calls_the_clock_only_for_a_key_with_an_expiry() {
    let s = store(1);
    s.put(b("plain"), b("v"), None, T0).unwrap();
    let w = s.put(b("ttl"), b("v"), Some(100), T0).unwrap();
    let exp = w.register.val.expires_at_ms().unwrap();
    let calls = std::cell::Cell::new(0);
    let clock = |t: u64| {
        let calls = &calls;
        move || {
            calls.set(calls.get() + 1);
            t
        }
    };
    assert_eq!(s.get_with_clock(b"plain", clock(exp + 1), |v| v.to_vec()), Some(b"v".to_vec()));
    assert_eq!(calls.get(), 0);
    assert_eq!(s.get_with_clock(b"ttl", clock(exp), |v| v.to_vec()), Some(b"v".to_vec()));
    assert_eq!(s.get_with_clock(b"ttl", clock(exp + 1), |v| v.to_vec()), None);
    assert_eq!(calls.get(), 2);
    assert_eq!(s.get_with_clock(b"absent", clock(exp), |v| v.to_vec()), None);
    assert_eq!(calls.get(), 2, "a miss needs no time");
}

#[test]
fn higher_stamp_wins_either_order() {
    let a = store(1);
    let c = store(2);
    let w1 = a.put(b("k"), b("a"), None, T0).unwrap();
    let w2 = c.put(b("k"), b("c"), None, T0).unwrap();
    assert_ne!(w1.register.marker, w2.register.marker, "same millisecond, distinct stamps");
    let winner = if w1.register.marker > w2.register.marker { b("a") } else { b("c") };
    a.merge([(w2.key.clone(), w2.register.clone())], T0);
    c.merge([(w1.key.clone(), w1.register.clone())], T0);
    assert_eq!(a.get(b"k", T0), Some(winner.clone()));
    assert_eq!(c.get(b"k", T0), Some(winner));
    assert_eq!(a.root(), c.root());
}

/// Registers merged in one batch (in groups, each under its shards' locks
/// at once) end where the same registers merged one at a time end, keys
/// repeated within a group included.
#[test]
fn a_batch_merges_as_its_registers_one_at_a_time() {
    let a = store(1);
    let mut regs = Vec::new();
    for i in 0..150u64 {
        let key = format!("k{}", i % 23);
        let w = if i % 11 == 0 {
            a.delete(b(&key), T0 + i)
        } else {
            a.put(b(&key), b(&format!("v{i}")), None, T0 + i).unwrap()
        };
        regs.push((w.key, w.register));
    }
    // A key's writes side by side, so that groups hold several of them:
    // newest first for the keys of two bytes, oldest first for the others.
    regs.sort_by_key(|(k, r)| (k.clone(), if k.len() == 2 { u64::MAX - r.marker.hlc } else { r.marker.hlc }));
    let (batch, alone) = (store(2), store(3));
    let out = batch.merge(regs.clone(), T0 + 200);
    let (mut changes, mut stale) = (0, 0);
    for r in regs {
        let o = alone.merge([r], T0 + 200);
        changes += o.changes.len();
        stale += o.stale;
    }
    assert_eq!((out.changes.len(), out.stale), (changes, stale));
    assert_eq!(batch.root(), alone.root());
    assert_eq!(batch.root(), a.root());
    assert_eq!(batch.root(), recomputed_root(&batch));
    for i in 0..23 {
        let key = format!("k{i}");
        assert_eq!(batch.get(key.as_bytes(), T0 + 200), a.get(key.as_bytes(), T0 + 200), "{key}");
    }
}

#[test]
fn merge_is_idempotent_and_reports_changes() {
    let a = store(1);
    let c = store(2);
    let w = a.put(b("k"), b("v"), None, T0).unwrap();
    let out = c.merge([(w.key.clone(), w.register.clone())], T0);
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].kind, ChangeKind::Put);
    let out = c.merge([(w.key.clone(), w.register.clone())], T0);
    assert!(out.changes.is_empty());
    assert_eq!(out.stale, 1);
}

#[test]
fn clear_below_drops_older_and_refuses_them_later() {
    let s = store(1);
    let old = s.put(b("a"), b("1"), None, T0).unwrap();
    s.delete(b("b"), T0);
    let (bar, removed) = s.flush_all(T0);
    assert_eq!(removed, 2);
    assert!(s.is_empty());
    assert_eq!(s.stats().tombstones, 0);
    let out = s.merge([(old.key, old.register)], T0);
    assert_eq!(out.below_clear, 1);
    assert!(s.is_empty());
    let newer = s.put(b("a"), b("2"), None, T0).unwrap();
    assert!(newer.register.marker > bar);
    assert_eq!(s.get(b"a", T0), Some(b("2")));
}

#[test]
fn remote_clear_below_is_a_max_register() {
    let s = store(1);
    let hi = Stamp { hlc: Stamp::pack(T0, 5), node: NodeId(9) };
    let lo = Stamp { hlc: Stamp::pack(T0, 1), node: NodeId(9) };
    s.raise_clear_below(hi, T0).unwrap();
    s.raise_clear_below(lo, T0).unwrap();
    assert_eq!(s.floors().clear_below, hi);
    assert!(s.put(b("k"), b("v"), None, T0).unwrap().register.marker > hi, "the clock observed the bar");
}

#[test]
fn collection_waits_for_the_watermark_and_raises_the_floor() {
    let s = store(1);
    let d = s.delete(b("k"), T0);
    assert_eq!(s.collect(T0 + 10, T0), (0, 0), "arrived at T0, not before T0");
    assert_eq!(s.stats().tombstones, 1);
    assert_eq!(s.collect(T0 + 10, T0 + 1), (1, 0));
    assert!(s.is_empty());
    assert_eq!(s.floors().gc_floor, d.register.marker);
    assert_eq!(s.root(), (0, 0));
}

#[test]
fn floor_filter_refuses_absent_keys_only() {
    let a = store(1);
    let s = store(2);
    let old = a.put(b("k"), b("old"), None, T0).unwrap();
    let held = a.put(b("h"), b("held-old"), None, T0).unwrap();
    s.merge([(held.key.clone(), held.register.clone())], T0);
    let newer = a.put(b("h"), b("held-new"), None, T0 + 1).unwrap();
    // `s` collects a tombstone stamped above `old` and `held`.
    s.delete(b("x"), T0 + 2);
    s.collect(T0 + 5, T0 + 5);
    assert!(s.floors().gc_floor > newer.register.marker);
    let out = s.merge([(old.key.clone(), old.register.clone()), (newer.key.clone(), newer.register.clone())], T0 + 5);
    assert_eq!(out.refused, vec![(old.key.clone(), old.register.marker)], "absent key below the floor is refused");
    assert_eq!(s.get(b"h", T0 + 5), Some(b("held-new")), "a held key still takes a newer register");
    assert_eq!(s.stats().refused_floor, 1);
}

#[test]
fn refusal_reply_drops_exact_register_and_raises_floor() {
    let s = store(1);
    let w = s.put(b("k"), b("v"), None, T0).unwrap();
    let other = Stamp { hlc: w.register.marker.hlc, node: NodeId(77) };
    assert!(s.drop_refused(&w.key, other, T0).is_none(), "a different register is kept");
    let ch = s.drop_refused(&w.key, w.register.marker, T0).unwrap();
    assert_eq!(ch.kind, ChangeKind::Delete);
    assert!(s.is_empty());
    assert_eq!(s.floors().gc_floor, w.register.marker);
    let out = s.merge([(w.key.clone(), w.register.clone())], T0);
    assert_eq!(out.refused.len(), 1, "the dropped register cannot come back");
}

#[test]
fn expired_values_are_collected_after_the_skew_grace() {
    let s = store(1);
    let w = s.put(b("k"), b("v"), Some(10), T0).unwrap();
    let exp = w.register.val.expires_at_ms().unwrap();
    s.expire(exp + 1);
    assert_eq!(s.collect(exp + 1, u64::MAX), (0, 0), "grace of max_offset not over");
    let grace = s.config().max_offset_ms;
    assert_eq!(s.collect(exp + grace + 1, u64::MAX), (0, 1));
    assert_eq!(s.floors().gc_floor, w.register.marker);
}

#[test]
fn compaction_bounds_tombstones() {
    let cfg = StoreConfig { max_tombstones: NonZeroUsize::new(10).unwrap(), ..StoreConfig::default() };
    let s = Store::new(NodeId(1), cfg).unwrap();
    let survivor = s.put(b("old-value"), b("v"), None, T0).unwrap();
    for i in 0..11 {
        s.delete(Bytes::from(format!("k{i}")), T0 + i);
    }
    let st = s.stats();
    assert!(st.tombstones <= 10, "{st:?}");
    assert_eq!(st.compactions, 1);
    assert_eq!(st.compacted_values, 1);
    assert!(st.floors.clear_below > survivor.register.marker);
    assert_eq!(s.get(b"old-value", T0 + 20), None, "a partial flush takes older values too");
    // The newest half of the budget remains.
    assert_eq!(st.tombstones, 5);
    assert_eq!(s.root(), recomputed_root(&s));
}

#[test]
fn eviction_leaves_stubs_that_read_as_misses() {
    let cfg = StoreConfig {
        shards: NonZeroUsize::new(1).unwrap(),
        max_bytes: NonZeroUsize::new(20 * (shard::ENTRY_OVERHEAD + 200)),
        max_tombstones: NonZeroUsize::new(1000).unwrap(),
        ..StoreConfig::default()
    };
    let small = Store::new(NodeId(1), cfg).unwrap();
    let big = store(2);
    let value = Bytes::from(vec![7u8; 200]);
    for i in 0..100u64 {
        let w = small.put(Bytes::from(format!("k{i:03}")), value.clone(), None, T0 + i).unwrap();
        big.merge([(w.key, w.register)], T0 + i);
    }
    let st = small.stats();
    assert!(st.evictions > 0 && st.stubs > 0, "{st:?}");
    let stub_bytes = st.stubs * (shard::ENTRY_OVERHEAD + 4);
    assert!(st.bytes - stub_bytes <= 20 * (shard::ENTRY_OVERHEAD + 200), "values within the bound: {st:?}");
    assert_ne!(small.root(), big.root(), "a stub's share of the digest is not its value's");
    assert_eq!(small.root(), recomputed_root(&small));
    let (_, all) = small.snapshot();
    let stub = all.iter().find(|(_, r)| matches!(r.val, Slot::Evicted { .. })).unwrap();
    assert_eq!(small.get(&stub.0, T0 + 200), None, "a stub reads as a miss");
    assert_eq!(big.get(&stub.0, T0 + 200), Some(value.clone()));
    // A newer write replaces the stub.
    let w = big.put(stub.0.clone(), b("new"), None, T0 + 300).unwrap();
    small.merge([(w.key.clone(), w.register)], T0 + 300);
    assert_eq!(small.get(&w.key, T0 + 300), Some(b("new")));
}

#[test]
fn future_stamps_are_refused_not_adopted() {
    let s = store(1);
    let far = Register {
        val: Slot::Value { data: b("v"), expires_at_ms: None },
        marker: Stamp { hlc: Stamp::pack(T0 + 10_000, 0), node: NodeId(2) },
    };
    let out = s.merge([(b("k"), far.clone())], T0);
    assert_eq!(out.future, 1);
    assert!(s.is_empty());
    assert!(s.put(b("j"), b("v"), None, T0).unwrap().register.marker.physical_ms() < T0 + 1000);
    // Once local time catches up, the register is accepted.
    assert_eq!(s.merge([(b("k"), far)], T0 + 10_000).changes.len(), 1);
}

#[test]
fn digest_ranges_sum_to_root() {
    let s = store(1);
    for i in 0..500 {
        s.put(Bytes::from(format!("k{i}")), b("v"), None, T0).unwrap();
    }
    let (root, n) = s.root();
    assert_eq!(n, 500);
    assert_eq!(s.range_digest(0, BUCKETS), root);
    let halves = s.range_digest(0, BUCKETS / 2).wrapping_add(s.range_digest(BUCKETS / 2, BUCKETS));
    assert_eq!(halves, root);
    let odd = s.range_digest(0, 777).wrapping_add(s.range_digest(777, BUCKETS));
    assert_eq!(odd, root);
    let all: Vec<usize> = (0..BUCKETS).collect();
    let count: usize = s.bucket_summaries(&all).iter().map(|(_, v)| v.len()).sum();
    assert_eq!(count, 500);
}

#[test]
fn bad_shard_counts_are_refused() {
    for n in [3, 1 << 17] {
        let cfg = StoreConfig { shards: NonZeroUsize::new(n).unwrap(), ..StoreConfig::default() };
        assert_eq!(Store::new(NodeId(1), cfg).unwrap_err(), StoreConfigError::Shards(n));
    }
}

#[test]
fn write_with_sees_the_visible_value_atomically() {
    let s = store(1);
    // NX: write only if absent.
    let nx = |cur: Option<&Slot>, _| cur.is_none().then(|| Slot::Value { data: b("x"), expires_at_ms: None });
    assert!(s.write_with(b("k"), T0, nx).unwrap().is_some());
    assert!(s.write_with(b("k"), T0, nx).unwrap().is_none());
    assert_eq!(s.get(b"k", T0), Some(b("x")));
}

#[test]
fn stubs_are_bounded_by_their_budget_without_compaction() {
    let cfg = StoreConfig {
        shards: NonZeroUsize::new(1).unwrap(),
        max_bytes: NonZeroUsize::new(4 * (shard::ENTRY_OVERHEAD + 100)),
        max_tombstones: NonZeroUsize::new(20).unwrap(),
        max_stubs: NonZeroUsize::new(20).unwrap(),
        ..StoreConfig::default()
    };
    let s = Store::new(NodeId(1), cfg).unwrap();
    for i in 0..200u64 {
        s.put(Bytes::from(format!("k{i:03}")), Bytes::from(vec![1u8; 100]), None, T0 + i).unwrap();
        let st = s.stats();
        assert!(st.stubs <= 20, "after {i}: {st:?}");
    }
    let st = s.stats();
    assert_eq!(st.compactions, 0, "memory pressure never raises clear_below: {st:?}");
    assert!(st.stubs_ghosted_early > 0, "{st:?}");
    assert!(st.entries <= 20 + 4 + 1, "keys stay bounded: {st:?}");
}

/// `Store::expiring` against the values a reader sees: after every step of
/// writes, deletes, merges, evictions and sweeps, the count is the keys
/// that read as a value with a TTL, and the average is the mean of their
/// times left.
#[test]
fn the_expiring_count_and_average_are_those_of_the_values_readable() {
    use rand::{Rng, SeedableRng};
    let entry = shard::cost(&b("k00"), &Slot::Value { data: b("v"), expires_at_ms: None });
    let cfg = StoreConfig {
        // Room for about 25 of the 40 keys: writes evict.
        max_bytes: NonZeroUsize::new(25 * (entry + 8)),
        max_tombstones: NonZeroUsize::new(100_000).unwrap(),
        ..StoreConfig::default()
    };
    let s = Store::new(NodeId(1), cfg).unwrap();
    let other = store(2);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut now = T0;
    let (mut evicted, mut swept) = (0, 0);
    for step in 0..4000 {
        let key = Bytes::from(format!("k{:02}", rng.random_range(0..40)));
        let ttl = Some(rng.random_range(1..5_000));
        match rng.random_range(0..6) {
            0 => drop(s.put(key, b("v"), None, now)),
            1 => drop(s.put(key, b("v"), ttl, now)),
            2 => drop(s.delete(key, now)),
            3 => {
                let w = other.put(key, b("v"), ttl, now).unwrap();
                s.merge([(w.key, w.register)], now);
            }
            4 => {
                // PERSIST or EXPIRE: the value kept, its TTL changed.
                let deadline = ttl.map(|t| now + t).filter(|_| rng.random_bool(0.5));
                let _ = s.write_with(key, now, |cur, _| match cur {
                    Some(Slot::Value { data, .. }) => Some(Slot::Value { data: data.clone(), expires_at_ms: deadline }),
                    _ => None,
                });
            }
            _ => now += rng.random_range(0..2_000),
        }
        swept += s.expire(now).len();
        let mut left = Vec::new();
        for i in 0..40 {
            let key = format!("k{i:02}");
            if s.get(key.as_bytes(), now).is_none() {
                continue;
            }
            if let Some(Slot::Value { expires_at_ms: Some(e), .. }) = s.register(key.as_bytes()).map(|r| r.val) {
                left.push(e - now);
            }
        }
        let avg = if left.is_empty() { 0 } else { left.iter().sum::<u64>() / left.len() as u64 };
        assert_eq!(s.expiring(now), Expiring { values: left.len(), avg_ttl_ms: avg }, "step {step}");
        evicted = s.stats().evictions;
    }
    assert!(evicted > 100 && swept > 100, "the run evicted {evicted} and swept {swept}: too few to tell");
}

/// A value past its TTL that the sweep has not reached is told of when a
/// write or a refusal replaces it first: a reader may have cached it while
/// it was readable, and once it is replaced the sweep cannot tell of it.
/// One the sweep has told of is not told of again.
#[test]
fn a_value_replaced_past_its_ttl_before_the_sweep_is_told_of() {
    struct Heard(Mutex<Vec<Vec<u8>>>);
    impl Observer for Heard {
        fn changed(&self, key: &[u8]) {
            self.0.lock().push(key.to_vec());
        }
        fn flushed(&self) {}
    }
    let s = store(1);
    let heard = Arc::new(Heard(Mutex::new(Vec::new())));
    s.add_observer(heard.clone());
    s.want_changes(true);
    let told = Arc::new(Mutex::new(Vec::new()));
    s.on_change({
        let told = told.clone();
        move |key, kind, _| told.lock().push((key.to_vec(), kind))
    });
    let take = || (std::mem::take(&mut *heard.0.lock()), std::mem::take(&mut *told.lock()));
    let other = store(2);
    let ttl = 10;

    // Replaced by another peer's delete, which arrives past the TTL.
    let exp = s.put(b("k"), b("v"), Some(ttl), T0).unwrap().register.val.expires_at_ms().unwrap();
    take();
    let d = other.delete(b("k"), exp + 1);
    s.merge([(d.key, d.register)], exp + 1);
    let k = || b"k".to_vec();
    assert_eq!(take(), (vec![k()], vec![(k(), ChangeKind::Expire), (k(), ChangeKind::Delete)]));
    assert!(s.expire(exp + 2).is_empty());
    assert_eq!(take(), (vec![], vec![]), "nothing left for the sweep");

    // Dropped by a refusal reply past its TTL: told as its expiry.
    let w = s.put(b("j"), b("v"), Some(ttl), T0).unwrap();
    let exp = w.register.val.expires_at_ms().unwrap();
    take();
    let change = s.drop_refused(&b("j"), w.register.marker, exp + 1).expect("a change");
    assert_eq!((change.kind, change.origin), (ChangeKind::Expire, Origin::Local));
    assert_eq!(take(), (vec![b"j".to_vec()], vec![(b"j".to_vec(), ChangeKind::Expire)]));

    // Swept first: told once, by the sweep.
    let exp = s.put(b("i"), b("v"), Some(ttl), T0).unwrap().register.val.expires_at_ms().unwrap();
    take();
    assert_eq!(s.expire(exp + 1).len(), 1);
    assert_eq!(take(), (vec![b"i".to_vec()], vec![(b"i".to_vec(), ChangeKind::Expire)]));
    let d = other.delete(b("i"), exp + 2);
    s.merge([(d.key, d.register)], exp + 2);
    assert_eq!(take().0, Vec::<Vec<u8>>::new(), "a reader holds nothing of it since the sweep");
}

/// A write that finds its key's value past its TTL, with the sweep yet to
/// reach it, tells of that expiry first (stamped with the value's own
/// write), as Redis publishes `expired` for a key a command finds past its
/// TTL before the command's own event: a local write, a transaction's (the
/// expiry as it writes, its write at its end) and another peer's. The
/// sweep has nothing left to tell afterwards, and a value still readable,
/// or already swept, is not told of as expired.
#[test]
fn a_write_over_a_value_past_its_ttl_tells_its_expiry_first() {
    let s = store(1);
    let told = Arc::new(Mutex::new(Vec::new()));
    s.on_change({
        let told = told.clone();
        move |key, kind, stamp| told.lock().push((String::from_utf8(key.to_vec()).unwrap(), kind, stamp))
    });
    let take = || std::mem::take(&mut *told.lock());
    let ev = |k: &str, kind, stamp| (k.to_string(), kind, stamp);
    let ttl = 10;
    let short = |k: &str, now| {
        let w = s.put(b(k), b("v"), Some(ttl), now).unwrap();
        (w.register.marker, w.register.val.expires_at_ms().unwrap())
    };

    // A local write.
    let (v, exp) = short("k", T0);
    take();
    let w = s.put(b("k"), b("w"), None, exp + 1).unwrap().register.marker;
    assert_eq!(take(), vec![ev("k", ChangeKind::Expire, v), ev("k", ChangeKind::Put, w)]);

    // A transaction's.
    let (v, exp) = short("t", exp + 1);
    take();
    let mut t = s.lock(["t"], exp + 1);
    let w = t.stamp();
    t.write_with(b("t"), |cur, _| {
        assert_eq!(cur, None, "a value past its TTL reads as absent");
        Some(Slot::Value { data: b("1"), expires_at_ms: None })
    })
    .unwrap();
    assert_eq!(take(), vec![ev("t", ChangeKind::Expire, v)], "told as the transaction writes");
    t.finish();
    assert_eq!(take(), vec![ev("t", ChangeKind::Put, w)]);

    // Another peer's.
    let (v, exp) = short("r", exp + 1);
    take();
    let other = store(2);
    let w = other.put(b("r"), b("x"), None, exp + 1).unwrap();
    s.merge([(w.key, w.register.clone())], exp + 1);
    assert_eq!(take(), vec![ev("r", ChangeKind::Expire, v), ev("r", ChangeKind::Put, w.register.marker)]);
    assert!(s.expire(exp + 100).is_empty(), "nothing left for the sweep");
    assert_eq!(take(), vec![]);

    // Still readable at its last millisecond: only the write.
    let (_, exp) = short("n", exp + 100);
    take();
    let w = s.put(b("n"), b("w"), None, exp).unwrap().register.marker;
    assert_eq!(take(), vec![ev("n", ChangeKind::Put, w)]);

    // Swept first: told once, by the sweep.
    let (v, exp) = short("o", exp);
    take();
    assert_eq!(s.expire(exp + 1).len(), 1);
    assert_eq!(take(), vec![ev("o", ChangeKind::Expire, v)]);
    let w = s.put(b("o"), b("w"), None, exp + 2).unwrap().register.marker;
    assert_eq!(take(), vec![ev("o", ChangeKind::Put, w)]);
}

/// A read lent to a closure that reads the store again takes its shard's
/// lock twice, which can deadlock behind a waiting writer: debug builds
/// panic on it at once (`crate::locks`), whether or not a writer waits.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "Found cycle in mutex dependency graph")]
fn a_read_inside_a_lent_read_of_the_same_shard_panics_in_debug_builds() {
    let s = store(1);
    s.put(b("k"), b("v"), None, T0).unwrap();
    s.get_with(b"k", T0, |_| s.get(b"k", T0));
}
