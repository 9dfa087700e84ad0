//! The eviction policies: each keeps what it promises to keep, and the
//! bound holds.

use super::*;
use std::collections::{HashMap, HashSet};

const T0: u64 = 1_700_000_000_000;
const VALUE: usize = 100;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn value() -> Bytes {
    Bytes::from(vec![7u8; VALUE])
}

/// The accounted cost of one `key{i:04}` entry holding `value()`.
fn entry_cost() -> usize {
    shard::cost(&b("key0000"), &Slot::Value { data: value(), expires_at_ms: None })
}

/// A store whose bound holds `n` entries, with `policy`.
fn bounded(n: usize, policy: EvictionPolicy) -> Store {
    let cfg = StoreConfig {
        max_bytes: NonZeroUsize::new(n * entry_cost()),
        policy,
        max_tombstones: NonZeroUsize::new(100_000).unwrap(),
        seed: 7,
        ..StoreConfig::default()
    };
    Store::new(NodeId(1), cfg).unwrap()
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key{i:04}"))
}

fn within_bound(s: &Store) {
    let max = s.max_bytes().unwrap().get();
    assert!(s.value_bytes() <= max, "{} value bytes over the bound of {max}", s.value_bytes());
}

/// Ten keys read between every write, then a long run of keys written once:
/// how many of the ten are still held.
fn hot_keys_kept_while_read(policy: EvictionPolicy) -> usize {
    let s = bounded(100, policy);
    let mut now = T0;
    for i in 0..2_000 {
        now += 1;
        s.put(key(i), value(), None, now).unwrap();
        for h in 0..10 {
            s.get(&key(h), now);
        }
        within_bound(&s);
    }
    (0..10).filter(|h| s.get(&key(*h), now).is_some()).count()
}

/// As `hot_keys_kept_while_read` under LRU, reading as `Mesh` does: the
/// keys have no expiry, so no read may call the clock, and the accesses
/// are stamped with the time the writes gave the store.
#[test]
fn reads_that_read_no_clock_still_keep_the_keys_being_read() {
    let s = bounded(100, EvictionPolicy::AllkeysLru);
    let mut now = T0;
    for i in 0..2_000 {
        now += 1;
        s.put(key(i), value(), None, now).unwrap();
        for h in 0..10 {
            s.get_with_clock(&key(h), || panic!("a key without an expiry read the clock"), |_| ());
        }
    }
    assert_eq!((0..10).filter(|h| s.get(&key(*h), now).is_some()).count(), 10);
}

#[test]
fn lru_keeps_the_keys_being_read() {
    assert_eq!(hot_keys_kept_while_read(EvictionPolicy::AllkeysLru), 10);
    // Random eviction has no such preference: with a hundred slots and
    // 1,900 evictions, a key survives with odds of about (1 - 1/100)^1900.
    assert!(hot_keys_kept_while_read(EvictionPolicy::AllkeysRandom) < 3);
}

/// Ten keys read a hundred times each, then a scan of keys written once and
/// never read: how many of the ten survive the scan.
fn frequent_keys_kept_through_a_scan(policy: EvictionPolicy) -> usize {
    let s = bounded(100, policy);
    let mut now = T0;
    for h in 0..10 {
        s.put(key(h), value(), None, now).unwrap();
    }
    for _ in 0..100 {
        now += 1;
        for h in 0..10 {
            s.get(&key(h), now);
        }
    }
    for i in 10..2_000 {
        now += 1;
        s.put(key(i), value(), None, now).unwrap();
        within_bound(&s);
    }
    (0..10).filter(|h| s.get(&key(*h), now).is_some()).count()
}

#[test]
fn lfu_keeps_frequent_keys_through_a_scan_and_lru_does_not() {
    assert_eq!(frequent_keys_kept_through_a_scan(EvictionPolicy::AllkeysLfu), 10);
    assert_eq!(frequent_keys_kept_through_a_scan(EvictionPolicy::AllkeysLru), 0);
}

#[test]
fn volatile_ttl_evicts_the_soonest_expiry_and_spares_keys_without_ttl() {
    let s = bounded(20, EvictionPolicy::VolatileTtl);
    for i in 0..10 {
        s.put(key(i), value(), None, T0).unwrap();
    }
    // TTLs that shrink as i grows: the later keys expire first.
    for i in 10..20 {
        s.put(key(i), value(), Some(1_000_000 - i * 1_000), T0).unwrap();
    }
    within_bound(&s);
    s.put(key(20), value(), Some(2_000_000), T0).unwrap();
    assert_eq!(s.get(&key(19), T0), None, "the soonest expiry went first");
    assert!((10..19).all(|i| s.get(&key(i), T0).is_some()));
    for i in 21..30 {
        s.put(key(i), value(), Some(2_000_000), T0).unwrap();
    }
    assert!((0..10).all(|i| s.get(&key(i), T0).is_some()), "keys without a TTL are never evicted");
    within_bound(&s);
}

#[test]
fn volatile_lru_refuses_writes_once_no_key_has_a_ttl() {
    let s = bounded(20, EvictionPolicy::VolatileLru);
    for i in 0..5 {
        s.put(key(100 + i), value(), Some(60_000), T0).unwrap();
    }
    let mut refused = None;
    for i in 0..40 {
        if let Err(e) = s.put(key(i), value(), None, T0 + i) {
            refused = Some((i, e));
            break;
        }
    }
    let (at, e) = refused.expect("a write is refused once only keys without a TTL remain");
    assert_eq!(e, OutOfMemory);
    // Five TTL keys made room for five more, and the write that filled the
    // bound exactly was admitted with one more (refused only once over).
    assert_eq!(at, 21);
    assert!((100..105).all(|i| s.get(&key(i), T0 + 40).is_none()), "every key with a TTL went");
    assert!((0..21).all(|i| s.get(&key(i), T0 + 40).is_some()));
}

#[test]
fn noeviction_refuses_writes_that_add_memory_and_nothing_else() {
    let s = bounded(20, EvictionPolicy::Noeviction);
    let mut i = 0;
    while s.put(key(i), value(), None, T0).is_ok() {
        i += 1;
        assert!(i < 100, "writes are refused once over the bound");
    }
    // Redis's rule: refused once the bound is passed, so the last admitted
    // write may pass it by one entry.
    assert!(s.value_bytes() <= s.max_bytes().unwrap().get() + entry_cost());
    assert_eq!(s.stats().evictions, 0);
    assert!((0..i).all(|k| s.get(&key(k), T0).is_some()), "nothing was evicted");
    // Writes that add nothing still succeed: a same-size overwrite, a delete.
    s.put(key(0), Bytes::from(vec![9u8; VALUE]), None, T0 + 1).unwrap();
    assert_eq!(s.put(key(1), Bytes::from(vec![1u8; 2 * VALUE]), None, T0 + 1).unwrap_err(), OutOfMemory);
    s.delete(key(1), T0 + 1);
    // Below the bound again, writes are admitted.
    s.put(key(1001), value(), None, T0 + 2).unwrap();
}

#[test]
fn noeviction_refuses_blind_writes_as_it_refuses_puts() {
    let s = bounded(20, EvictionPolicy::Noeviction);
    let blind = |k: u64, v: Bytes, t: u64| {
        s.write_blind(key(k), t, |_| Some(Slot::Value { data: v, expires_at_ms: None })).map(|w| w.is_some())
    };
    let mut i = 0;
    while blind(i, value(), T0) == Ok(true) {
        i += 1;
        assert!(i < 100, "blind writes are refused once over the bound");
    }
    assert_eq!(blind(i, value(), T0), Err(OutOfMemory));
    assert!(s.value_bytes() <= s.max_bytes().unwrap().get() + entry_cost());
    assert_eq!(s.stats().evictions, 0);
    // The same-size overwrite adds nothing and is admitted; a larger one is
    // refused, and the value it would have replaced stays.
    assert_eq!(blind(0, Bytes::from(vec![9u8; VALUE]), T0 + 1), Ok(true));
    assert_eq!(blind(1, Bytes::from(vec![1u8; 2 * VALUE]), T0 + 1), Err(OutOfMemory));
    assert_eq!(s.get(&key(1), T0 + 1), Some(value()));
}

#[test]
fn a_write_from_a_peer_is_never_refused() {
    let s = bounded(10, EvictionPolicy::Noeviction);
    let peer = Store::new(NodeId(2), StoreConfig::default()).unwrap();
    for i in 0..30 {
        let w = peer.put(key(i), value(), None, T0).unwrap();
        s.merge([(w.key, w.register)], T0);
    }
    assert!((0..30).all(|i| s.get(&key(i), T0).is_some()), "noeviction keeps replicated writes past the bound");
    // Under an evicting policy, the bound holds for replicated writes too.
    let t = bounded(10, EvictionPolicy::AllkeysLru);
    for i in 0..30 {
        let w = peer.put(key(100 + i), value(), None, T0).unwrap();
        t.merge([(w.key, w.register)], T0);
    }
    within_bound(&t);
    assert_eq!(t.stats().evictions, 20);
}

#[test]
fn a_lower_bound_set_at_run_time_evicts_at_once() {
    let s = Store::new(NodeId(1), StoreConfig::default()).unwrap();
    for i in 0..100 {
        s.put(key(i), value(), None, T0 + i).unwrap();
    }
    s.set_max_bytes(NonZeroUsize::new(30 * entry_cost()), T0 + 100);
    within_bound(&s);
    let st = s.stats();
    assert_eq!(st.evictions, 70);
    assert_eq!(st.stubs, 70);
    s.set_policy(EvictionPolicy::AllkeysLfu);
    assert_eq!(s.policy(), EvictionPolicy::AllkeysLfu);
    s.set_max_bytes(None, T0 + 101);
    for i in 100..200 {
        s.put(key(i), value(), None, T0 + i).unwrap();
    }
    assert_eq!(s.stats().evictions, 70, "no bound, no eviction");
    assert_eq!(s.set_samples(NonZeroUsize::new(65).unwrap()), Err(StoreConfigError::Samples(65)));
}

#[test]
fn lru_evicts_the_least_recent_even_in_a_nearly_empty_store() {
    // Two or three keys over 64 shards: every shard is offered whole, and a
    // key sampled again is scored again (its pool score had gone stale).
    let s = bounded(1, EvictionPolicy::AllkeysLru);
    s.put(key(0), value(), None, T0 + 1).unwrap();
    s.put(key(1), value(), None, T0 + 2).unwrap();
    assert_eq!((s.get(&key(0), T0 + 2), s.get(&key(1), T0 + 2).is_some()), (None, true));
    s.put(key(2), value(), None, T0 + 4).unwrap();
    assert_eq!((s.get(&key(1), T0 + 4), s.get(&key(2), T0 + 4).is_some()), (None, true));
}

#[test]
fn writers_on_several_threads_are_never_refused_while_something_can_be_evicted() {
    // Each writer crosses the bound and the next eviction restores it; a
    // write that sees another's crossing must evict, not fail.
    let s = std::sync::Arc::new(bounded(50, EvictionPolicy::AllkeysLru));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..5_000 {
                    s.put(key(t * 100_000 + i), value(), None, T0 + i).expect("evicts instead of refusing");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every writer has returned, so every eviction it owed has run.
    within_bound(&s);
    assert!(s.stats().evictions >= 20_000 - 50, "{:?}", s.stats());
}

#[test]
fn a_value_budget_below_the_bound_evicts_down_to_it_and_lifting_it_restores_the_bound() {
    let s = bounded(100, EvictionPolicy::AllkeysLru);
    for i in 0..100 {
        s.put(key(i), value(), None, T0 + i).unwrap();
    }
    let held = |s: &Store| (0..100).filter(|i| s.get(&key(*i), T0 + 200).is_some()).count();
    assert_eq!(held(&s), 100);
    s.set_value_budget(NonZeroUsize::new(40 * entry_cost()), T0 + 100);
    assert_eq!(s.value_limit(), 40 * entry_cost());
    assert!(s.value_bytes() <= 40 * entry_cost(), "{} over the budget", s.value_bytes());
    assert_eq!(held(&s), 40);
    // A budget above the bound does not lift the bound.
    s.set_value_budget(NonZeroUsize::new(1_000 * entry_cost()), T0 + 300);
    assert_eq!(s.value_limit(), 100 * entry_cost());
    s.set_value_budget(None, T0 + 300);
    for i in 100..300 {
        s.put(key(i), value(), None, T0 + 300 + i).unwrap();
    }
    within_bound(&s);
    assert_eq!((100..300).filter(|i| s.get(&key(*i), T0 + 600).is_some()).count(), 100);
}

#[test]
fn a_written_value_does_not_keep_the_buffer_it_was_cut_from() {
    // A client's read buffer holds many commands; the store must not keep
    // it alive through the slices it was handed.
    let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let s = Store::new(NodeId(1), StoreConfig::default()).unwrap();
    let w = s.put(buffer.slice(0..8), buffer.slice(8..108), None, T0).unwrap();
    let got = s.get(&buffer[0..8], T0).unwrap();
    let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
    assert!(!range.contains(&(got.as_ptr() as usize)), "the value is a slice of the client's buffer");
    // What the write hands on to peers' push queues: its own copies, the
    // key and the value in one buffer (one allocation, shared from the
    // start, so that each peer's clone costs no allocation of its own).
    let Slot::Value { data, .. } = &w.register.val else { panic!("a value was written") };
    assert_eq!((&w.key[..], &data[..]), (&buffer[0..8], &buffer[8..108]));
    assert!(!range.contains(&(w.key.as_ptr() as usize)), "the pushed key is a slice of the client's buffer");
    assert_eq!(data.as_ptr() as usize, w.key.as_ptr() as usize + 8, "key and value share one buffer");
    let (_, regs) = s.snapshot();
    assert!(!range.contains(&(regs[0].0.as_ptr() as usize)), "the key is a slice of the client's buffer");
}

#[test]
fn stub_and_tombstone_budgets_shrink_with_the_bound() {
    let s = bounded(100, EvictionPolicy::AllkeysLru);
    // A tiny bound keeps the floor of its share.
    assert_eq!(s.stub_budget(), MIN_SHARE_COUNT);
    assert_eq!(s.tombstone_budget(), MIN_SHARE_COUNT);
    let big = 64usize << 20;
    s.set_max_bytes(NonZeroUsize::new(big), T0);
    assert_eq!(s.tombstone_budget(), big / SHARE_DIVISOR / NOMINAL_DEAD_COST);
    s.set_max_bytes(None, T0);
    assert_eq!(s.tombstone_budget(), 100_000, "max_tombstones alone without a bound");
}

#[test]
fn candidates_sampled_before_a_table_shrank_are_passed_over() {
    // The pool keeps candidates between evictions. A flush compacts the
    // table, so ids sampled before it may lie past its new end; evicting
    // must skip them, not index past the records.
    let cfg = StoreConfig {
        shards: NonZeroUsize::new(1).unwrap(),
        max_bytes: NonZeroUsize::new(4_000 * entry_cost()),
        seed: 7,
        ..StoreConfig::default()
    };
    let s = Store::new(NodeId(1), cfg).unwrap();
    let mut now = T0;
    for i in 0..4_500 {
        now += 1;
        s.put(key(i), value(), None, now).unwrap();
    }
    assert!(s.stats().evictions > 0);
    now += 1;
    s.flush_all(now);
    s.set_max_bytes(NonZeroUsize::new(1_000 * entry_cost()), now);
    for i in 10_000..11_500 {
        now += 1;
        s.put(key(i), value(), None, now).unwrap();
        within_bound(&s);
    }
    assert!(s.stats().evictions >= 4_500 - 4_000 + 500, "{:?}", s.stats());
}

#[test]
fn a_budget_that_falls_and_rises_holds_after_every_change_and_refuses_no_write() {
    // What a process bound does to the store as its other memory grows and
    // shrinks: the value budget moves under a steady stream of new keys.
    let cfg = StoreConfig { max_bytes: NonZeroUsize::new(8 << 20), seed: 7, ..StoreConfig::default() };
    let s = Store::new(NodeId(1), cfg).unwrap();
    let mut now = T0;
    for round in 0..12u64 {
        for i in 0..5_000u64 {
            now += 1;
            let k = Bytes::from(format!("key:{:012}", (i * 7919 + round * 1_000_003) % 100_000_000));
            // allkeys-lru always has a value to evict.
            s.put(k, Bytes::from(vec![1u8; 200]), None, now).unwrap();
        }
        let budget = if round % 2 == 0 { 2 << 20 } else { 5 << 20 };
        s.set_value_budget(NonZeroUsize::new(budget), now);
        assert_eq!(s.value_limit(), budget, "round {round}");
        assert!(s.value_bytes() <= budget, "round {round}: {} value bytes over {budget}", s.value_bytes());
    }
    assert!(s.stats().evictions > 0, "{:?}", s.stats());
}

#[test]
fn every_eviction_is_told_with_the_key_and_the_stamp_it_ends() {
    let s = bounded(100, EvictionPolicy::AllkeysLru);
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    s.on_eviction(move |key, stamp| t.lock().push((Bytes::copy_from_slice(key), stamp)));
    let mut stamps = HashMap::new();
    for i in 0..500 {
        let w = s.put(key(i), value(), None, T0 + i).unwrap();
        stamps.insert(key(i), w.register.marker);
    }
    // Taken out of the lock the eviction hook takes under a shard's: the
    // reads below take shards' locks.
    let told = std::mem::take(&mut *told.lock());
    assert_eq!(told.len() as u64, s.stats().evictions);
    let mut evicted = HashSet::new();
    for (k, stamp) in told.iter() {
        assert_eq!(Some(stamp), stamps.get(k), "{k:?} told with another write's stamp");
        assert!(s.get(k, T0 + 500).is_none(), "{k:?} told evicted and still held");
        assert!(evicted.insert(k.clone()), "{k:?} told twice");
    }
    let held = (0..500).filter(|i| s.get(&key(*i), T0 + 500).is_some()).count();
    assert_eq!(held + evicted.len(), 500, "a value went without being told");
}
