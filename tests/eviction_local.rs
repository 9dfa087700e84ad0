//! Eviction stays local: a peer short of memory evicts into ghosts, deletes
//! nothing on the peers that have room, and anti-entropy goes quiet again
//! once eviction settles (ALGORITHM.md, "Eviction").

use crate::common;

use std::num::NonZeroUsize;

use bytes::Bytes;
use common::*;
use meshcache::replica::Replica;
use meshcache::store::StoreConfig;
use meshcache::sync::Mode;

const VALUE: usize = 100;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key{i:07}"))
}

fn value(i: usize) -> Bytes {
    let mut v = vec![b'v'; VALUE];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(v)
}

/// A replica whose values fit in about `n` entries.
fn bounded(name: &str, node: u64, n: usize) -> Replica {
    let cfg = StoreConfig {
        max_bytes: NonZeroUsize::new(n * 300),
        max_tombstones: NonZeroUsize::new(1_000).unwrap(),
        seed: node,
        ..StoreConfig::default()
    };
    replica_with(name, node, cfg, true)
}

/// Writes keys `range` on `from`, pushing each to `to`, with a round of
/// anti-entropy each way and timer work on both every `every` writes.
fn load(from: &Replica, to: &Replica, range: std::ops::Range<usize>, now: &mut u64, every: usize) {
    for i in range {
        *now += 1;
        let w = from.put(key(i), value(i), None, *now).unwrap();
        to.handle_deltas(from.deltas(vec![(w.key, w.register)], false), *now).unwrap();
        if i % every == every - 1 {
            *now += 10;
            sync(from, to, *now).unwrap();
            sync(to, from, *now).unwrap();
            from.tick(*now);
            to.tick(*now);
        }
    }
}

/// Rounds both ways until a round finds the two in sync; returns how many
/// it took, or panics past `limit`.
fn settle(a: &Replica, b: &Replica, now: &mut u64, limit: usize) -> usize {
    settle_or_not(a, b, now, limit).unwrap_or_else(|| panic!("still not in sync after {limit} rounds each way"))
}

/// Like `settle`, but reports rather than panics.
fn settle_or_not(a: &Replica, b: &Replica, now: &mut u64, limit: usize) -> Option<usize> {
    for round in 1..=limit {
        *now += 10;
        a.tick(*now);
        b.tick(*now);
        let (x, _) = sync(a, b, *now).unwrap();
        let (y, _) = sync(b, a, *now).unwrap();
        if x.mode == Mode::InSync && y.mode == Mode::InSync {
            return Some(round);
        }
    }
    None
}

/// Every register `small` holds is the one `big` holds: no older value.
fn no_older_value(small: &Replica, big: &Replica) {
    let (_, held) = small.store().snapshot();
    for (k, r) in held {
        let theirs = big.store().register(&k).unwrap_or_else(|| panic!("{k:?} held only by the bounded peer"));
        assert!(r.marker >= theirs.marker, "{k:?}: the bounded peer holds an older register");
    }
}

#[test]
fn one_peers_memory_pressure_deletes_nothing_elsewhere_and_anti_entropy_goes_quiet() {
    let s = replica("s", 1);
    let t = bounded("t", 2, 200);
    let mut now = T0;
    // A key written before the load, on the peer with room.
    let before = s.put(b("written-before"), b("kept"), None, now).unwrap();
    t.handle_deltas(s.deltas(vec![(before.key, before.register)], false), now).unwrap();
    sync(&s, &t, now).unwrap();
    load(&s, &t, 0..5_000, &mut now, 250);
    let rounds = settle(&s, &t, &mut now, 10);

    // The peer with room lost nothing.
    let st = s.store().stats();
    assert_eq!(st.entries, 5_001, "{st:?}");
    assert_eq!(s.store().get(b"written-before", now), Some(b("kept")));
    assert!((0..5_000).all(|i| s.store().get(&key(i), now) == Some(value(i))));
    // The bounded peer kept its bound, without a range tombstone.
    let tt = t.store().stats();
    assert!(t.store().value_bytes() <= t.store().max_bytes().unwrap().get(), "{tt:?}");
    assert_eq!(
        (tt.compactions, st.floors.clear_below, tt.floors.clear_below),
        (0, Default::default(), Default::default())
    );
    assert!(tt.ghosted > 4_000, "{tt:?}");
    no_older_value(&t, &s);
    // Quiet: a round between the two is one root exchange each way.
    now += 10;
    let (x, y) = sync(&s, &t, now).unwrap();
    assert_eq!(x.mode, Mode::InSync);
    assert!(x.bytes_sent < 200 && y.bytes_sent < 200, "{x:?} {y:?}");
    println!("in sync after {rounds} settling round(s) each way; t: {tt:?}");
}

#[test]
fn a_ghosted_key_written_again_is_read_again_and_the_digests_agree() {
    let s = replica("s", 1);
    let t = bounded("t", 2, 50);
    let mut now = T0;
    load(&s, &t, 0..1_000, &mut now, 100);
    settle(&s, &t, &mut now, 10);
    let ghosted = (0..1_000).find(|i| t.store().get(&key(*i), now).is_none()).expect("t evicted something");
    // The key is written again on s: t takes the newer write and serves it,
    // although its ghost still counts the old one...
    now += 1;
    let w = s.put(key(ghosted), b("again"), None, now).unwrap();
    t.handle_deltas(s.deltas(vec![(w.key, w.register)], false), now).unwrap();
    assert_eq!(t.store().get(&key(ghosted), now), Some(b("again")));
    // ...until a round started by s makes t adopt s's digest.
    now += 10;
    let (_, ty) = sync(&s, &t, now).unwrap();
    assert!(ty.ghosts_adopted >= 1, "{ty:?}");
    now += 10;
    assert_eq!(sync(&s, &t, now).unwrap().0.mode, Mode::InSync);
    no_older_value(&t, &s);
}

#[test]
fn two_bounded_peers_converge_quietly_and_never_hold_an_older_value() {
    let a = bounded("a", 1, 300);
    let c = bounded("c", 2, 300);
    let mut now = T0;
    // Writes on both sides, overlapping keys, pushed both ways.
    for i in 0..3_000 {
        now += 1;
        let (from, to) = if i % 2 == 0 { (&a, &c) } else { (&c, &a) };
        let w = from.put(key(i % 2_000), value(i), None, now).unwrap();
        to.handle_deltas(from.deltas(vec![(w.key, w.register)], false), now).unwrap();
        if i % 300 == 299 {
            now += 10;
            sync(&a, &c, now).unwrap();
            sync(&c, &a, now).unwrap();
            a.tick(now);
            c.tick(now);
        }
    }
    settle(&a, &c, &mut now, 10);
    for (x, y) in [(&a, &c), (&c, &a)] {
        assert!(x.store().value_bytes() <= x.store().max_bytes().unwrap().get());
        assert_eq!(x.store().stats().compactions, 0);
        // Where both hold a key, they hold the same register.
        let (_, held) = x.store().snapshot();
        for (k, r) in held {
            if let Some(o) = y.store().register(&k) {
                assert_eq!(r.marker, o.marker, "{k:?}");
            }
        }
    }
}

/// Runs a session, `a` initiating, and calls `mid` once, right after `b`
/// has taken in `a`'s first summary: a write that reaches `b` then is not in
/// `a`'s final digest.
fn sync_with_a_push_mid_session(a: &Replica, b: &Replica, now: u64, mut mid: impl FnMut()) {
    use meshcache::sync::Session;
    use meshcache::wire::SyncMsg;
    let mut pushed = false;
    let seen = |m: &SyncMsg| {
        if matches!(m, SyncMsg::Summary(_)) && !pushed {
            mid();
            pushed = true;
        }
    };
    drive(a, Session::initiate(a, now), now, b, Session::respond(now), now, seen).unwrap();
    assert!(pushed, "the session summarised nothing");
}

/// A third peer's newer write reaches the bounded peer t in the middle of a
/// round started by s, in a bucket t holds in part. Returns whether s ends
/// up with it after later rounds (adopting s's digest then would hide it).
fn mid_session_write_reaches_s(plant_adopt_blind: bool) -> bool {
    use meshcache::store::digest::{bucket_of, key_hash};
    let s = replica("s", 1);
    let t = bounded("t", 2, 200);
    t.store().plant(meshcache::store::Bug::AdoptBlind, plant_adopt_blind);
    let r = replica("r", 3);
    let mut now = T0;
    load(&s, &t, 0..3_000, &mut now, 250);
    settle(&s, &t, &mut now, 10);
    // A key t holds, in a bucket it holds in part.
    let (_, held) = t.store().snapshot();
    let (k, _) = held
        .into_iter()
        .find(|(k, _)| t.store().bucket_floor(bucket_of(key_hash(k))) != Default::default())
        .expect("t holds a key in a bucket it holds in part");
    let bucket = bucket_of(key_hash(&k));
    // s writes another key of that bucket and the push to t is lost: the
    // bucket differs, so the next round summarises it.
    let other = (0..).map(|i| Bytes::from(format!("other{i}"))).find(|x| bucket_of(key_hash(x)) == bucket).unwrap();
    now += 1;
    s.put(other, b("v"), None, now).unwrap();
    // A third peer's newer write of `k` reaches t in the middle of that
    // round; its push to s is lost.
    now += 1;
    let newer = r.put(k.clone(), b("newer"), None, now).unwrap();
    now += 1;
    sync_with_a_push_mid_session(&s, &t, now, || {
        t.handle_deltas(r.deltas(vec![(newer.key.clone(), newer.register.clone())], false), now).unwrap();
    });
    // Had t adopted s's digest, the two would now look in sync with s
    // still serving the older value. Later rounds bring s the newer one.
    let _ = settle_or_not(&s, &t, &mut now, 10);
    s.store().register(&k).unwrap().marker == newer.register.marker
}

#[test]
fn a_write_that_arrives_during_the_session_is_not_hidden_by_adoption() {
    assert!(mid_session_write_reaches_s(false), "s was left on the older value");
}

#[test]
fn adopting_without_the_checks_is_caught() {
    assert!(!mid_session_write_reaches_s(true), "Bug::AdoptBlind planted, yet s got the newer write");
}

#[test]
fn final_digests_are_cut_into_frames_and_every_bucket_is_adopted() {
    use meshcache::sync::Session;
    use meshcache::wire::SyncMsg;
    let s = replica("s", 1);
    let t = bounded("t", 2, 50);
    let mut now = T0;
    load(&s, &t, 0..2_000, &mut now, 100);
    settle(&s, &t, &mut now, 10);
    // Many ghosted keys written again on s and pushed to t: t serves each,
    // and each of their buckets differs until t adopts s's digest there.
    let ghosted: Vec<usize> = (0..2_000).filter(|i| t.store().get(&key(*i), now).is_none()).take(300).collect();
    assert_eq!(ghosted.len(), 300);
    for &i in &ghosted {
        now += 1;
        let w = s.put(key(i), b("again"), None, now).unwrap();
        t.handle_deltas(s.deltas(vec![(w.key, w.register)], false), now).unwrap();
    }
    // One round started by s, with frames of at most a few digests.
    now += 10;
    let mut digest_frames = 0;
    let count = |m: &SyncMsg| {
        if let SyncMsg::Digests(d) = m {
            assert!(d.len() <= 4, "{} digests in one frame", d.len());
            digest_frames += 1;
        }
    };
    let (_, st) = drive(
        &s,
        Session::initiate(&s, now).with_batch_bytes(64),
        now,
        &t,
        Session::respond(now).with_batch_bytes(64),
        now,
        count,
    )
    .unwrap();
    assert!(digest_frames > 10, "{digest_frames} Digests frames");
    // t adopted every bucket it held in part, so the next round is quiet.
    assert!(st.ghosts_adopted > 10, "{st:?}");
    now += 10;
    let (x, y) = sync(&s, &t, now).unwrap();
    assert_eq!((x.mode, y.mode), (Mode::InSync, Mode::InSync));
    no_older_value(&t, &s);
}

#[test]
fn a_mesh_of_bounded_peers_only_goes_quiet() {
    // Three peers, each with room for a different share of 3,000 keys, each
    // taking a third of the writes; pushes reach one other peer only, so
    // anti-entropy carries the rest.
    let peers = [bounded("a", 1, 300), bounded("b", 2, 600), bounded("c", 3, 900)];
    let mut now = T0;
    for i in 0..3_000 {
        now += 1;
        let (from, to) = (&peers[i % 3], &peers[(i + 1) % 3]);
        let w = from.put(key(i), value(i), None, now).unwrap();
        to.handle_deltas(from.deltas(vec![(w.key, w.register)], false), now).unwrap();
        if i % 300 == 299 {
            now += 10;
            for (x, y) in [(0, 1), (1, 2), (2, 0)] {
                sync(&peers[x], &peers[y], now).unwrap();
            }
            for p in &peers {
                p.tick(now);
            }
        }
    }
    // Rounds among all three until one finds every pair in sync.
    let mut quiet = None;
    for round in 1..=20 {
        now += 10;
        for p in &peers {
            p.tick(now);
        }
        let mut all = true;
        for (x, y) in [(0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)] {
            let (s, t) = sync(&peers[x], &peers[y], now).unwrap();
            all &= s.mode == Mode::InSync && t.mode == Mode::InSync;
        }
        if all {
            quiet = Some(round);
            break;
        }
    }
    let round = quiet.expect("bounded peers still not in sync after 20 rounds");
    for p in &peers {
        assert!(p.store().value_bytes() <= p.store().max_bytes().unwrap().get());
        assert_eq!(p.store().stats().compactions, 0);
    }
    // Where two hold a key, they hold the same register.
    for x in &peers {
        for y in &peers {
            let (_, held) = x.store().snapshot();
            for (k, r) in held {
                if let Some(o) = y.store().register(&k) {
                    assert_eq!(r.marker, o.marker, "{k:?}");
                }
            }
        }
    }
    now += 10;
    let (s, t) = sync(&peers[0], &peers[1], now).unwrap();
    assert!(s.bytes_sent < 200 && t.bytes_sent < 200, "{s:?} {t:?}");
    println!("quiet after {round} round(s)");
}

#[test]
fn a_bounded_peer_that_differs_in_more_buckets_than_its_adoption_budget_adopts_the_rest_in_later_rounds() {
    // `t`'s bound is small enough that its adoption state per session
    // (at least 64 KiB) covers about a thousand buckets; the load makes it
    // ghost in about five thousand.
    let s = replica("s", 1);
    let t = bounded("t", 2, 200);
    let mut now = T0;
    for i in 0..5_000 {
        now += 1;
        let w = s.put(key(i), value(i), None, now).unwrap();
        t.handle_deltas(s.deltas(vec![(w.key, w.register)], false), now).unwrap();
    }
    // Every member has synced since: what `t` evicts from here on is
    // stable, and becomes a ghost (most of it already during these rounds,
    // which adopt too: whichever side starts a round, `t` receives the
    // summary).
    let (mut deferred, mut adopted) = (0, 0);
    let mut round = |now: u64| {
        let (x, y) = sync(&s, &t, now).unwrap();
        let (p, q) = sync(&t, &s, now).unwrap();
        deferred += x.adoptions_deferred + y.adoptions_deferred + p.adoptions_deferred + q.adoptions_deferred;
        adopted += x.ghosts_adopted + y.ghosts_adopted + p.ghosts_adopted + q.ghosts_adopted;
        x.mode == Mode::InSync && p.mode == Mode::InSync
    };
    for _ in 0..2 {
        now += 10;
        round(now);
        s.tick(now);
        t.tick(now);
    }
    let mut quiet = false;
    for _ in 0..30 {
        now += 10;
        s.tick(now);
        t.tick(now);
        if round(now) {
            quiet = true;
            break;
        }
    }
    assert!(deferred > 0, "the budget never deferred an adoption ({adopted} adopted): the test shows nothing");
    assert!(quiet, "not in sync after 30 rounds each way ({deferred} deferred, {adopted} adopted)");
    assert_eq!(s.store().stats().entries, 5_000);
    no_older_value(&t, &s);
}
