//! I3, no resurrection: the tombstone scenarios that broke simpler designs,
//! written out step by step against real replicas and real sessions.

use crate::common;

use std::num::NonZeroUsize;

use bytes::Bytes;
use common::*;
use meshcache::replica::Replica;
use meshcache::store::StoreConfig;

/// Full mesh of `names`, every pair synced once so that all know all.
fn mesh(names: &[&str]) -> Vec<Replica> {
    let rs: Vec<Replica> = names.iter().enumerate().map(|(i, n)| replica(n, i as u64 + 1)).collect();
    sync_all(&rs, T0);
    rs
}

fn sync_all(rs: &[Replica], now: u64) {
    for i in 0..rs.len() {
        for j in i + 1..rs.len() {
            sync(&rs[i], &rs[j], now).unwrap();
        }
    }
}

fn fingerprint(rs: &[Replica]) -> Vec<String> {
    rs.iter().map(|r| format!("{:?}", r.store().snapshot())).collect()
}

/// Rounds of all-pairs sync and timer work until nothing changes for three
/// rounds in a row; returns the time reached. Panics if stores never settle.
fn settle(rs: &[Replica], mut now: u64) -> u64 {
    let mut last = fingerprint(rs);
    let mut quiet = 0;
    for _ in 0..50 {
        now += 1_000;
        sync_all(rs, now);
        for r in rs {
            r.tick(now);
        }
        let fp = fingerprint(rs);
        quiet = if fp == last { quiet + 1 } else { 0 };
        last = fp;
        if quiet == 3 {
            return now;
        }
    }
    panic!("stores keep changing: {last:#?}");
}

#[test]
fn tombstone_collected_on_some_replicas_before_others_stays_deleted() {
    let rs = mesh(&["a", "b", "c"]);
    let (a, bb, c) = (&rs[0], &rs[1], &rs[2]);
    a.put(b("k"), b("v"), None, T0 + 1).unwrap();
    sync_all(&rs, T0 + 2);
    a.delete(b("k"), T0 + 3).unwrap();
    sync(a, bb, T0 + 4).unwrap();
    sync(a, c, T0 + 4).unwrap();
    // a syncs again with both, so it alone knows the tombstone is stable.
    sync(a, bb, T0 + 5).unwrap();
    sync(a, c, T0 + 5).unwrap();
    assert_eq!(a.tick(T0 + 6).collected_tombstones, 1);
    assert_eq!(bb.tick(T0 + 6).collected_tombstones, 0, "b has not seen c since the tombstone");
    assert_eq!(bb.store().stats().tombstones, 1);
    // b sends its tombstone back to a, which has just collected it: a refuses
    // it by its floor, and b drops its copy on the reply.
    let (sb, sa) = sync(bb, a, T0 + 7).unwrap();
    assert_eq!(sa.refused, 1);
    assert_eq!(sb.dropped_on_reply, 1);
    assert_eq!(bb.store().stats().tombstones, 0);
    let now = settle(&rs, T0 + 8);
    for r in &rs {
        assert_eq!(r.get(b"k", now), None, "{}", r.me());
        assert!(r.store().is_empty());
    }
}

#[test]
fn delayed_push_of_an_older_value_after_collection_is_refused() {
    let rs = mesh(&["a", "b"]);
    let (a, bb) = (&rs[0], &rs[1]);
    let w = a.put(b("k"), b("old"), None, T0 + 1).unwrap();
    // The push of `w` to b is delayed in the network...
    let delayed = a.deltas(vec![(w.key.clone(), w.register.clone())], false);
    // ...while anti-entropy delivers the write and then its delete.
    sync(a, bb, T0 + 2).unwrap();
    a.delete(b("k"), T0 + 3).unwrap();
    sync(a, bb, T0 + 4).unwrap();
    sync(a, bb, T0 + 5).unwrap();
    assert_eq!(a.tick(T0 + 6).collected_tombstones, 1);
    assert_eq!(bb.tick(T0 + 6).collected_tombstones, 1);
    let out = bb.handle_deltas(delayed, T0 + 7).unwrap();
    assert_eq!(out.refused.len(), 1, "below b's gc_floor, for a key b does not hold");
    assert!(out.changes.is_empty());
    assert_eq!(bb.get(b"k", T0 + 7), None);
    assert!(bb.store().is_empty());
}

#[test]
fn compaction_under_a_small_budget_never_resurrects() {
    let small = StoreConfig { max_tombstones: NonZeroUsize::new(4).unwrap(), ..StoreConfig::default() };
    let a = replica_with("a", 1, small, true);
    let bb = replica("b", 2);
    let mut newest_value = meshcache::hlc::Stamp::ZERO;
    for i in 0..10 {
        newest_value = a.put(Bytes::from(format!("k{i}")), b("v"), None, T0).unwrap().register.marker;
    }
    sync(&a, &bb, T0 + 1).unwrap();
    // A long partition: b is known but unreachable, so nothing is stable and
    // a's tombstones pile up until the budget forces a compaction.
    for i in 0..10 {
        a.delete(Bytes::from(format!("k{i}")), T0 + 10 + i).unwrap();
        assert!(a.store().stats().tombstones <= 4);
    }
    let after = a.put(b("after"), b("kept"), None, T0 + 100).unwrap();
    let st = a.store().stats();
    assert!(st.compactions >= 1, "{st:?}");
    assert_eq!(a.tick(T0 + 200).collected_tombstones, 0, "b has not synced since");
    // b, still holding all ten values, heals.
    let rs = [a, bb];
    let now = settle(&rs, T0 + 3_600_000);
    for r in &rs {
        for i in 0..10 {
            assert_eq!(r.get(format!("k{i}").as_bytes(), now), None, "{} k{i}", r.me());
        }
        assert_eq!(r.get(b"after", now), Some(b("kept")));
        // The range tombstone replicated, and covers every deleted value.
        assert!(r.store().floors().clear_below > newest_value);
    }
    assert!(after.register.marker >= rs[0].store().floors().clear_below);
    assert_eq!(rs[0].store().snapshot(), rs[1].store().snapshot());
}

#[test]
fn restarted_replica_writing_below_a_peers_floor_converges() {
    let a = replica("a", 1);
    let bb = replica("b", 2);
    sync(&a, &bb, T0).unwrap();
    bb.put(b("k"), b("v"), None, T0 + 1_000).unwrap();
    bb.delete(b("k"), T0 + 1_000).unwrap();
    sync(&a, &bb, T0 + 1_001).unwrap();
    sync(&a, &bb, T0 + 1_002).unwrap();
    assert_eq!(bb.tick(T0 + 1_003).collected_tombstones, 1);
    let floor = bb.store().floors().gc_floor;
    // a crashes and restarts as a new, empty incarnation, without seeds and
    // with a clock that lags b's by 300 ms: its first write is stamped below
    // b's floor.
    drop(a);
    let a2 = replica("a", 3);
    let w = a2.put(b("k"), b("new"), None, T0 + 703).unwrap();
    assert!(w.register.marker < floor);
    let (s_a2, s_b) = sync_at(&a2, T0 + 704, &bb, T0 + 1_004).unwrap();
    // b refuses the register by its floor and says so; a2 drops its copy.
    assert_eq!(s_b.refused, 1);
    assert_eq!(s_a2.dropped_on_reply, 1);
    // Both end in the same state: the write is lost (a cache may lose an old
    // write), and nobody serves a value older than the delete.
    assert_eq!(a2.get(b"k", T0 + 704), None);
    assert_eq!(bb.get(b"k", T0 + 1_004), None);
    assert_eq!(a2.store().snapshot().1, bb.store().snapshot().1);
    // a2's clock observed b's in the session: its next write wins.
    let w2 = a2.put(b("k"), b("newer"), None, T0 + 705).unwrap();
    assert!(w2.register.marker > floor);
    sync_at(&a2, T0 + 706, &bb, T0 + 1_006).unwrap();
    assert_eq!(bb.get(b"k", T0 + 1_006), Some(b("newer")));
}

#[test]
fn two_replicas_stamping_in_the_same_millisecond_agree_on_the_winner() {
    let a = replica("a", 1);
    let bb = replica("b", 2);
    // Both write the same key in the same millisecond, many times over.
    let mut stamps = std::collections::HashSet::new();
    for i in 0..100u64 {
        let wa = a.put(b("k"), Bytes::from(format!("a{i}")), None, T0).unwrap();
        let wb = bb.put(b("k"), Bytes::from(format!("b{i}")), None, T0).unwrap();
        assert_eq!(wa.register.marker.physical_ms(), T0);
        assert_eq!(wb.register.marker.physical_ms(), T0);
        assert!(stamps.insert(wa.register.marker) && stamps.insert(wb.register.marker), "stamps are unique");
    }
    let winner = a.store().register(b"k").unwrap().marker.max(bb.store().register(b"k").unwrap().marker);
    sync(&a, &bb, T0).unwrap();
    for r in [&a, &bb] {
        assert_eq!(r.store().register(b"k").unwrap().marker, winner);
    }
    assert_eq!(a.get(b"k", T0), bb.get(b"k", T0));
    assert_eq!(a.get(b"k", T0), Some(b("b99")), "b's node id is higher, so its same-ms stamp wins");
}

/// A peer started with seeds that reaches none of them boots by timeout and
/// takes writes, but must not collect: its view holds itself alone, so its
/// own delete looks stable at once. Collected, the delete lives only in
/// that peer's floor: it is lost if the peer stops before the partition
/// heals, and the value it deleted comes back everywhere (a turmoil
/// schedule found it so); and after a heal that floor refuses every older
/// write of a key the peer does not hold, so other peers drop their live
/// writes (this test fails that way without the rule).
#[test]
fn a_peer_booted_by_timeout_collects_nothing_until_it_has_synced() {
    let mut rs = mesh(&["a", "b"]);
    rs[0].put(b("k"), b("old"), None, T0 + 1).unwrap();
    rs[1].put(b("other"), b("live"), None, T0 + 2).unwrap();
    sync_all(&rs, T0 + 3);
    // c restarts alone on the far side of a partition; no seed answers.
    let c = replica_with("c", 3, StoreConfig::default(), false);
    c.force_boot();
    c.delete(b("k"), T0 + 10).unwrap();
    let tick = c.tick(T0 + 20_000);
    assert_eq!(tick.collected_tombstones, 0, "a peer that knows no one collected its own delete");
    assert!(c.store().register(b"k").is_some_and(|r| r.val.is_tombstone()), "the delete must stay a register");
    assert!(!c.knows_the_mesh());
    // When the partition heals, the delete wins everywhere and the other
    // key's live write survives: no floor refuses it.
    rs.push(c);
    sync_all(&rs, T0 + 30_000);
    assert!(rs[2].knows_the_mesh());
    settle(&rs, T0 + 30_001);
    for r in &rs {
        assert_eq!(r.get(b"k", T0 + 90_000), None, "{}: the delete was undone", r.me());
        assert_eq!(r.get(b"other", T0 + 90_000), Some(b("live")), "{}: a live write was lost", r.me());
    }
}
