//! Transactions on one store, and the merge of a transaction's writes.

use std::sync::Arc;
use std::time::Duration;

use super::*;

const T0: u64 = 1_700_000_000_000;

fn store(node: u64) -> Store {
    Store::new(NodeId(node), StoreConfig::default()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn value(v: &str) -> Slot {
    Slot::Value { data: b(v), expires_at_ms: None }
}

fn shard_of(s: &Store, k: &str) -> usize {
    s.locate(key_hash(k.as_bytes())).0
}

/// Two keys on different shards, the first on the higher one.
fn keys_apart(s: &Store) -> (String, String) {
    let y = "y".to_string();
    let x = (0..).map(|i| format!("x{i}")).find(|x| shard_of(s, x) > shard_of(s, &y)).expect("some key");
    (x, y)
}

#[test]
fn a_transaction_stamps_its_writes_alike_and_hands_back_each_keys_last_write() {
    let s = store(1);
    s.put(b("a"), b("old"), None, T0).unwrap();
    let mut t = s.lock(["a", "b"], T0);
    let stamp = t.stamp();
    assert_eq!(t.get_with(b"a", |v| v.to_vec()), Ok(Some(b"old".to_vec())));
    t.write_with(b("a"), |_, _| Some(value("1"))).unwrap();
    t.write_with(b("b"), |_, _| Some(value("1"))).unwrap();
    let w = t.write_with(b("a"), |cur, _| {
        assert_eq!(cur, Some(&value("1")), "a transaction reads its own writes");
        Some(value("2"))
    });
    assert_eq!(w.unwrap().unwrap().register.marker, stamp);
    assert_eq!(t.write_with(b("c"), |_, _| Some(value("x"))).unwrap_err(), TxnError::NotLocked);
    assert_eq!(t.scan(0, 10).unwrap_err(), TxnError::NotLocked, "walking the keys needs every shard");
    let written = t.finish();
    let got: Vec<_> = written.iter().map(|w| (w.key.clone(), w.register.clone())).collect();
    assert_eq!(
        got,
        vec![
            (b("a"), Register { val: value("2"), marker: stamp }),
            (b("b"), Register { val: value("1"), marker: stamp }),
        ]
    );
    assert_eq!(s.get(b"a", T0), Some(b("2")));
    assert_eq!(s.len(), 2, "the gauges took the transaction's writes");
    assert!(s.put(b("a"), b("3"), None, T0).unwrap().register.marker > stamp);
}

#[test]
fn a_whole_keyspace_transaction_walks_the_keys_it_holds() {
    let s = store(1);
    for k in ["a", "b", "c"] {
        s.put(b(k), b("v"), None, T0).unwrap();
    }
    let mut t = s.lock_all(T0);
    t.write_with(b("d"), |_, _| Some(value("v"))).unwrap();
    t.write_with(b("a"), |_, _| Some(Slot::Tombstone)).unwrap();
    let mut keys = t.keys(|_| true).unwrap();
    keys.sort();
    assert_eq!(keys, vec![b("b"), b("c"), b("d")]);
    let (mut scanned, cursor) = t.scan(0, 1000).unwrap();
    scanned.sort();
    assert_eq!((scanned, cursor), (keys, 0));
    assert_eq!(t.values_added(), 0, "one value added, one deleted");
}

/// A reader of several keys (MGET) sees a transaction whole or not at
/// all: no transaction runs between its reads of two keys. The reader
/// lets one in after its first key, if it can, and waits for it.
#[test]
fn a_reader_of_several_keys_sees_a_transaction_whole_or_not_at_all() {
    let s = Arc::new(store(1));
    let (x, y) = keys_apart(&s);
    s.put(b(&x), b("old"), None, T0).unwrap();
    s.put(b(&y), b("old"), None, T0).unwrap();
    let (first_read, wait_read) = std::sync::mpsc::channel();
    let (committed, wait_commit) = std::sync::mpsc::channel();
    let writer = {
        let (s, x, y) = (s.clone(), x.clone(), y.clone());
        std::thread::spawn(move || {
            wait_read.recv().unwrap();
            let mut t = s.lock([&x, &y], T0);
            t.write_with(b(&x), |_, _| Some(value("new"))).unwrap();
            t.write_with(b(&y), |_, _| Some(value("new"))).unwrap();
            drop(t);
            committed.send(()).unwrap();
        })
    };
    let mut seen = Vec::new();
    s.get_many_with(&[x, y], T0, |v| {
        seen.push(v.map(<[u8]>::to_vec));
        if seen.len() == 1 {
            first_read.send(()).unwrap();
            let _ = wait_commit.recv_timeout(Duration::from_millis(300));
        }
    });
    writer.join().unwrap();
    let (old, new) = (Some(b"old".to_vec()), Some(b"new".to_vec()));
    assert!(seen == [old.clone(), old] || seen == [new.clone(), new], "saw half a transaction: {seen:?}");
}

/// A run of registers with one stamp (a transaction's writes from a peer)
/// is merged under all its shards' locks. Checked by holding the lower
/// shard: the merge must not apply the key on the higher one meanwhile.
/// With the bug planted that merges the run key by key, it does.
#[test]
fn a_run_of_one_stamp_is_merged_under_all_its_shards_locks() {
    for planted in [false, true] {
        let s = Arc::new(store(1));
        s.plant(Bug::MergesRunsApart, planted);
        let (x, y) = keys_apart(&s);
        s.put(b(&x), b("old"), None, T0).unwrap();
        s.put(b(&y), b("old"), None, T0).unwrap();
        let remote = Stamp { hlc: s.clock().now(T0).hlc + 1000, node: NodeId(2) };
        let run = vec![
            (b(&x), Register { val: value("new"), marker: remote }),
            (b(&y), Register { val: value("new"), marker: remote }),
        ];
        let held = s.lock([&y], T0);
        let merger = {
            let s = s.clone();
            std::thread::spawn(move || s.merge(run, T0).changes.len())
        };
        // x is read from its own shard, which the merge (waiting for y's,
        // the lower) holds only once it has y's too.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut x_seen = s.get(x.as_bytes(), T0);
        while planted && x_seen.as_deref() != Some(&b"new"[..]) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            x_seen = s.get(x.as_bytes(), T0);
        }
        if !planted {
            std::thread::sleep(Duration::from_millis(200));
            x_seen = s.get(x.as_bytes(), T0);
        }
        let y_seen = held.get_with(y.as_bytes(), <[u8]>::to_vec).unwrap();
        let half = x_seen.as_deref() == Some(&b"new"[..]) && y_seen.as_deref() == Some(&b"old"[..]);
        assert_eq!(half, planted, "planted {planted}: x {x_seen:?}, y {y_seen:?}");
        drop(held);
        assert_eq!(merger.join().unwrap(), 2);
        assert_eq!((s.get(x.as_bytes(), T0), s.get(y.as_bytes(), T0)), (Some(b("new")), Some(b("new"))));
    }
}

/// An eviction holds the evictor's lock while it waits for shards; a
/// transaction holding those shards must not wait for that lock in turn
/// (CONFIG SET maxmemory-policy inside EXEC). A writer is made to wait in
/// eviction for a whole-keyspace transaction, which then changes the
/// policy: that must return at once.
#[test]
fn changing_the_policy_inside_a_transaction_does_not_wait_for_an_eviction() {
    let s = Arc::new(store(1));
    for i in 0..200 {
        s.put(b(&format!("k{i}")), Bytes::from(vec![b'v'; 1024]), None, T0).unwrap();
    }
    let t = s.lock_all(T0);
    // CONFIG SET maxmemory in the transaction: the next write evicts.
    s.set_max_bytes_later(std::num::NonZeroUsize::new(64 << 10));
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.put(b("more"), b("v"), None, T0).is_ok())
    };
    // Time for the writer to take the evictor's lock and wait for a shard.
    std::thread::sleep(Duration::from_millis(200));
    let (done, wait_done) = std::sync::mpsc::channel();
    let setter = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.set_policy(EvictionPolicy::AllkeysLfu);
            done.send(()).unwrap();
        })
    };
    let returned = wait_done.recv_timeout(Duration::from_secs(5)).is_ok();
    drop(t);
    assert!(returned, "set_policy waited for an eviction that waited for the transaction");
    setter.join().unwrap();
    assert!(writer.join().unwrap());
    assert!(s.stats().evictions > 0);
}
