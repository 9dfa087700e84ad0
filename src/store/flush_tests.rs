//! A FLUSHALL is one step: what it deletes is hidden, and it is told, with
//! every shard locked, before a sweep removes those registers a shard at a
//! time. So every write is wholly before it or wholly after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

const T0: u64 = 1_700_000_000_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A key of `s` held by shard `shard`.
fn key_in_shard(s: &Store, shard: usize, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|k| s.locate(key_hash(k.as_bytes())).0 == shard).expect("some key")
}

/// An INCR: the value read plus one, from 0 for an absent key.
fn incr(s: &Store, key: &str, now_ms: u64) -> Written {
    s.write_with(b(key), now_ms, |cur, _| {
        let n = match cur {
            Some(Slot::Value { data, .. }) => std::str::from_utf8(data).unwrap().parse::<u64>().unwrap(),
            _ => 0,
        };
        Some(Slot::Value { data: Bytes::from((n + 1).to_string()), expires_at_ms: None })
    })
    .unwrap()
    .expect("an INCR always writes")
}

fn count(w: &Written) -> u64 {
    match &w.register.val {
        Slot::Value { data, .. } => std::str::from_utf8(data).unwrap().parse().unwrap(),
        other => panic!("an INCR wrote {other:?}"),
    }
}

/// Between the raise and the sweep, the registers below the new
/// `clear_below` are still in the table: every read and write must pass
/// over them, and nothing may be told of them.
#[test]
fn what_a_flushall_deletes_is_gone_before_its_sweep_reaches_it() {
    let s = store_with_hook();
    let (s, told) = (&s.0, &s.1);
    s.put(b("a"), b("v"), None, T0).unwrap();
    s.put(b("n"), b("41"), None, T0).unwrap();
    let ttl = s.put(b("t"), b("v"), Some(10), T0).unwrap().register.val.expires_at_ms().unwrap();
    told.lock().unwrap().clear();

    let c = s.raise_bar(|| s.clock.now(T0 + 1)).expect("raised");
    assert_eq!(s.len(), 3, "the sweep has not run");
    assert_eq!(s.get(b"a", T0 + 1), None);
    assert_eq!(s.register(b"a"), None);
    assert_eq!(s.keys(T0 + 1, |_| true), Vec::<Bytes>::new());
    assert_eq!(s.scan(0, 100, T0 + 1).0, Vec::<Bytes>::new());
    let mut many = Vec::new();
    s.get_many_with(&[b"a", b"n"], T0 + 1, |v| many.push(v.map(<[u8]>::to_vec)));
    assert_eq!(many, [None, None]);
    {
        let t = s.lock([b"a"], T0 + 1);
        assert_eq!(t.get_with(b"a", <[u8]>::to_vec).unwrap(), None);
        assert_eq!(t.register(b"a").unwrap(), None);
    }
    // A read-modify-write after the FLUSHALL starts from nothing.
    let w = incr(s, "n", T0 + 2);
    assert_eq!((count(&w), w.previous.clone()), (1, None));
    assert!(w.register.marker > c);
    // The TTL of a value already deleted runs out untold.
    assert!(s.expire(ttl + 1).is_empty());
    // Eviction passes over the deleted values: only `n` is left to evict.
    s.set_max_bytes(std::num::NonZeroUsize::new(1), ttl + 1);
    assert_eq!(s.stats().evictions, 1);
    let heard = told.lock().unwrap().clone();
    assert_eq!(
        heard,
        [
            (Vec::new(), ChangeKind::Flush, c),
            (b"n".to_vec(), ChangeKind::Put, w.register.marker),
            (b"n".to_vec(), ChangeKind::Evict, w.register.marker),
        ]
    );

    assert_eq!(s.sweep_below(c, None), 2, "a and t");
    assert_eq!(told.lock().unwrap().len(), 3, "the sweep tells nothing");
    assert_eq!(s.get(b"n", ttl + 1), None);
}

/// A `clear_below` from another peer can be below values held here (a
/// write that raced that peer's FLUSHALL): each is told again after the
/// flush, for a subscriber that dropped everything on it. The bug that
/// tells a flush after its sweep, the order this store once had, tells
/// none.
#[test]
fn a_flush_from_another_peer_tells_again_what_it_leaves() {
    for planted in [false, true] {
        let (s, told) = store_with_hook();
        s.plant(Bug::FlushSweptFirst, planted);
        let old = s.put(b("old"), b("v"), None, T0).unwrap().register.marker;
        let new = s.put(b("new"), b("v"), None, T0 + 10).unwrap().register.marker;
        let gone = s.put(b("gone"), b("v"), Some(20), T0 + 11).unwrap().register.marker;
        s.delete(b("del"), T0 + 12);
        told.lock().unwrap().clear();
        let c = Stamp { hlc: (old.hlc + new.hlc) / 2, node: NodeId(2) };
        // `gone`'s TTL has run out: it is no longer held as a value.
        assert_eq!(s.raise_clear_below(c, T0 + 40), Ok(1));
        assert_eq!((s.get(b"old", T0 + 40), s.get(b"new", T0 + 40)), (None, Some(b("v"))));
        let heard = told.lock().unwrap().clone();
        let want = [(Vec::new(), ChangeKind::Flush, c), (b"new".to_vec(), ChangeKind::Put, new)];
        assert_eq!(heard == want, !planted, "planted {planted}: {heard:?}");
        assert!(gone > c);
    }
    // With no one listening, the walk for them is skipped.
    let (s, told) = store_with_hook();
    s.on_change_heard(|| false);
    let old = s.put(b("old"), b("v"), None, T0).unwrap().register.marker;
    let new = s.put(b("new"), b("v"), None, T0 + 10).unwrap().register.marker;
    told.lock().unwrap().clear();
    let c = Stamp { hlc: (old.hlc + new.hlc) / 2, node: NodeId(2) };
    assert_eq!(s.raise_clear_below(c, T0 + 40), Ok(1));
    assert_eq!(*told.lock().unwrap(), [(Vec::new(), ChangeKind::Flush, c)]);
}

type Told = Arc<Mutex<Vec<(Vec<u8>, ChangeKind, Stamp)>>>;

/// A store whose changes, evictions included, are kept in the order told.
fn store_with_hook() -> (Arc<Store>, Told) {
    let s = Arc::new(Store::new(NodeId(1), StoreConfig::default()).unwrap());
    let told: Told = Arc::default();
    let t = told.clone();
    s.on_change(move |key, kind, stamp| t.lock().unwrap().push((key.to_vec(), kind, stamp)));
    let t = told.clone();
    s.on_eviction(move |key, stamp| t.lock().unwrap().push((key.to_vec(), ChangeKind::Evict, stamp)));
    (s, told)
}

/// What went wrong in one round of [`a_write_racing_a_flushall_is_wholly_before_or_after_it`].
fn race_once(planted: bool) -> Vec<String> {
    let (s, told) = store_with_hook();
    s.plant(Bug::FlushSweptFirst, planted);
    let last = s.shards.len() - 1;
    // A counter in the shard swept last, a key written in the shard swept
    // first, and enough other keys for the sweep to take a while.
    let (n, w) = (key_in_shard(&s, last, "n"), key_in_shard(&s, 0, "w"));
    for i in 0..20_000 {
        s.put(b(&format!("f{i}")), b("filler"), None, T0).unwrap();
    }
    s.put(b(&n), b("1000000"), None, T0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, stop, n, w) = (s.clone(), stop.clone(), n.clone(), w.clone());
        std::thread::spawn(move || {
            let mut incrs = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                incrs.push(incr(&s, &n, T0 + 1));
                s.put(b(&w), Bytes::from(i.to_string()), None, T0 + 1).unwrap();
                i += 1;
            }
            incrs
        })
    };
    // The writer is under way before the FLUSHALL.
    while s.get(w.as_bytes(), T0 + 1).is_none() {
        std::thread::yield_now();
    }
    let (c, _) = s.flush_all(T0 + 1);
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    let incrs = writer.join().unwrap();

    let mut wrong = Vec::new();
    // An INCR stamped after the FLUSHALL read no value it deleted.
    for x in incrs.iter().filter(|x| x.applied) {
        let after = x.register.marker > c;
        if after == (count(x) > 1_000_000) {
            wrong.push(format!("an INCR stamped {} (FLUSHALL {c}) counted {}", x.register.marker, count(x)));
            break;
        }
    }
    // Every change told before the FLUSHALL is below it; every one after,
    // above it.
    let heard = told.lock().unwrap().clone();
    let at = heard.iter().position(|(_, kind, _)| *kind == ChangeKind::Flush).expect("the FLUSHALL is told");
    if let Some((k, kind, stamp)) = heard[..at].iter().find(|(_, _, stamp)| *stamp > c) {
        wrong.push(format!("{kind:?} of {} stamped {stamp} told before the FLUSHALL {c}", String::from_utf8_lossy(k)));
    }
    if let Some((k, kind, stamp)) = heard[at + 1..].iter().find(|(_, _, stamp)| *stamp < c) {
        wrong.push(format!("{kind:?} of {} stamped {stamp} told after the FLUSHALL {c}", String::from_utf8_lossy(k)));
    }
    wrong
}

/// Writes race a FLUSHALL of a store large enough for its sweep to take a
/// while: a counter in the shard swept last is incremented, and a key in
/// the shard swept first is written, throughout. Every INCR stamped after
/// the FLUSHALL must count from nothing, and every change must be told on
/// the side of the FLUSHALL its stamp puts it. With the bug planted that
/// sweeps before telling and hides nothing meanwhile (the order this store
/// once had), an INCR revives the value deleted, and a write the sweep
/// has passed is told before the FLUSHALL.
#[test]
fn a_write_racing_a_flushall_is_wholly_before_or_after_it() {
    for round in 0..10 {
        let wrong = race_once(false);
        assert!(wrong.is_empty(), "round {round}: {wrong:?}");
    }
    let caught = (0..50).map(|_| race_once(true)).find(|w| !w.is_empty());
    assert!(caught.is_some(), "the planted bug was not caught in 50 rounds");
}
