//! The embedded API over real QUIC on loopback: five in-process peers.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::mesh::{silent_seed, start, start_faulty, start_faulty_with};
use common::wait::{eventually, DEADLINE};
use meshcache::store::ChangeKind;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::{Event, Mesh, MeshConfig, Origin, Why};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_replicate_and_stream_remote_changes() {
    let ca = EphemeralCa::new().unwrap();
    let first = start(&ca, "p0", &[]).await;
    let mut peers = vec![first.clone()];
    for i in 1..5 {
        // Each joins through the previous one only: the rest is learned.
        let seed = peers[i - 1].local_addr();
        peers.push(start(&ca, &format!("p{i}"), &[seed]).await);
    }
    for p in &peers {
        assert!(p.wait_ready(DEADLINE).await, "{} never finished bootstrap", p.id());
    }
    eventually("full mesh", || peers.iter().all(|p| p.stats().connected == 4)).await;

    let mut events = peers[4].subscribe();
    peers[0].insert("k", "v1").unwrap();
    eventually("put reaches every peer", || peers.iter().all(|p| p.get(b"k").as_deref() == Some(&b"v1"[..]))).await;
    let Event::Changed(ev) = tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap() else {
        panic!("a change")
    };
    assert_eq!((ev.key.as_ref(), ev.kind, ev.origin), (&b"k"[..], ChangeKind::Put, Origin::Remote));

    assert!(peers[3].invalidate("k").unwrap());
    eventually("delete reaches every peer", || peers.iter().all(|p| p.get(b"k").is_none())).await;
    let Event::Changed(ev) = tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap() else {
        panic!("a change")
    };
    assert_eq!((ev.kind, ev.origin), (ChangeKind::Delete, Origin::Remote));

    // Concurrent writes to one key from every peer: one winner everywhere.
    for (i, p) in peers.iter().enumerate() {
        p.insert("race", format!("from p{i}")).unwrap();
    }
    eventually("race converges", || {
        let v: Vec<Option<Bytes>> = peers.iter().map(|p| p.get(b"race")).collect();
        v[0].is_some() && v.iter().all(|x| *x == v[0])
    })
    .await;
    eventually("digests equal", || {
        let r = peers[0].replica().store().root();
        peers.iter().all(|p| p.replica().store().root() == r)
    })
    .await;

    // TTL expires everywhere.
    peers[1].insert_with_ttl("ttl", "x", Duration::from_millis(300)).unwrap();
    eventually("ttl value replicated", || peers.iter().all(|p| p.get(b"ttl").is_some())).await;
    eventually("ttl value expired everywhere", || peers.iter().all(|p| p.get(b"ttl").is_none())).await;

    // Members: everyone knows everyone.
    for p in &peers {
        let m = p.members();
        assert_eq!(m.len(), 4, "{:?}", m);
        assert!(m.iter().all(|s| s.connected && s.addr.is_some()), "{m:?}");
    }
    // A graceful leave: the others stop waiting for p4.
    peers[4].shutdown().await;
    eventually("goodbye recorded", || {
        peers[..4]
            .iter()
            .all(|p| p.members().iter().any(|m| m.id.name == "p4" && m.status == meshcache::membership::Status::Left))
    })
    .await;
    for p in &peers[..4] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_peer_refuses_writes_until_synced_and_survives_its_seed() {
    let ca = EphemeralCa::new().unwrap();
    let seed = start(&ca, "seed", &[]).await;
    for i in 0..1000 {
        seed.insert(format!("k{i}"), "v").unwrap();
    }
    let cfg = MeshConfig { bootstrap_timeout: Duration::from_secs(30), ..MeshConfig::for_test("joiner") };
    let joiner =
        Mesh::builder().config(cfg).seeds([seed.local_addr()]).tls(ca.issue("joiner").unwrap()).start().await.unwrap();
    let third = start(&ca, "third", &[seed.local_addr()]).await;
    assert!(joiner.wait_ready(DEADLINE).await);
    eventually("bootstrap copied the store", || joiner.replica().store().len() == 1000).await;
    joiner.insert("after", "boot").unwrap();
    eventually("third learns of joiner", || third.stats().connected == 2).await;
    // The seed dies; the other two carry on.
    seed.shutdown().await;
    joiner.insert("without-seed", "yes").unwrap();
    eventually("writes flow without the seed", || third.get(b"without-seed").is_some()).await;
    joiner.shutdown().await;
    third.shutdown().await;
}

#[tokio::test]
async fn writes_are_refused_while_loading() {
    let ca = EphemeralCa::new().unwrap();
    let seed = silent_seed();
    let lonely = |name: &str, bootstrap_timeout| {
        let cfg = MeshConfig { bootstrap_timeout, ..MeshConfig::for_test(name) };
        Mesh::builder().config(cfg).seeds([seed.local_addr().unwrap()]).tls(ca.issue(name).unwrap()).start()
    };
    // While its only seed stays silent, a peer is loading for as long as
    // its bootstrap timeout, here far longer than the test: it refuses
    // writes.
    let m = lonely("loading", Duration::from_secs(3600)).await.unwrap();
    let err = m.insert("k", "v").unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().starts_with("LOADING"), "{err}");
    assert!(!m.is_ready());
    m.shutdown().await;
    // The bootstrap timeout ends loading: then writes are accepted.
    let m = lonely("lonely", Duration::from_millis(800)).await.unwrap();
    assert!(m.wait_ready(DEADLINE).await, "bootstrap_timeout ends loading");
    m.insert("k", "v").unwrap();
    m.shutdown().await;
}

/// A message published after a write is heard, on another peer, only once
/// that write is applied there: a listener reading the key it is told of
/// at the moment the message arrives reads the write or a later one. And
/// a listener hears nothing once dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_arrives_after_the_writes_before_it() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let b = start(&ca, "b", &[a.local_addr()]).await;
    assert!(b.wait_ready(DEADLINE).await);
    eventually("connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    let heard = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let listener = b.on_message({
        let (heard, b) = (heard.clone(), b.clone());
        move |m| {
            // Read at delivery, on the task that delivers.
            let now = b.get(&m.message).map(|v| String::from_utf8_lossy(&v).into_owned());
            heard.lock().push((m.channel.clone(), String::from_utf8_lossy(&m.message).into_owned(), now));
            1
        }
    });
    for i in 0..500 {
        let key = format!("k{}", i % 7);
        a.insert(key.clone(), format!("{i}")).unwrap();
        assert_eq!(a.publish("changed", key, false).unwrap(), 0, "no listener on a");
    }
    eventually("every message heard", || heard.lock().len() == 500).await;
    for (i, (channel, key, value)) in heard.lock().iter().enumerate() {
        assert_eq!(channel, "changed");
        assert_eq!(key, &format!("k{}", i % 7), "in order");
        let v: usize = value.as_deref().expect("the key is there").parse().unwrap();
        assert!(v >= i, "message {i} heard while {key} held {v}");
    }
    drop(listener);
    a.publish("changed", "k0", false).unwrap();
    a.insert("after", "x").unwrap();
    eventually("the write after it arrives", || b.get(b"after").is_some()).await;
    assert_eq!(heard.lock().len(), 500, "a dropped listener hears nothing");
    assert_eq!(b.stats().messages_received, 501);
    b.shutdown().await;
    a.shutdown().await;
}

/// The cache vocabulary: insert (with the builder's default TTL),
/// contains_key, len, invalidate, invalidate_all; and the change stream's
/// two events that drop everything, a FLUSHALL from another peer and a
/// subscriber that fell behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_vocabulary_and_the_events_that_drop_everything() {
    let ca = EphemeralCa::new().unwrap();
    let a = common::mesh::start(&ca, "a", &[]).await;
    let b = Mesh::builder()
        .config(MeshConfig::for_test("b"))
        .seeds([a.local_addr()])
        .tls(ca.issue("b").unwrap())
        .default_ttl(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    assert!(b.wait_ready(DEADLINE).await);
    eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;

    // b's inserts carry its default TTL; a's do not.
    b.insert("short", "x").unwrap();
    a.insert("long", "x").unwrap();
    assert!(b.contains_key("short") && !b.contains_key("nothing"));
    eventually("both keys everywhere", || [&a, &b].iter().all(|m| m.contains_key("short") && m.contains_key("long")))
        .await;
    assert_eq!((a.len(), b.len()), (2, 2));
    eventually("b's default TTL ran out on both", || !a.contains_key("short") && !b.contains_key("short")).await;
    assert!(a.contains_key("long"));
    assert!(a.invalidate("long").unwrap());
    assert!(!a.invalidate("long").unwrap(), "no longer visible");

    // A FLUSHALL on a is an InvalidateAll on b.
    let mut events = b.subscribe();
    a.invalidate_all().unwrap();
    let flushed = next_invalidate_all(&mut events).await;
    assert!(matches!(flushed, Why::Flushed { origin: Origin::Remote, .. }), "{flushed:?}");

    // A subscriber that does not read while 5,000 changes happen is told
    // it missed some, as an InvalidateAll, before anything else.
    let mut slow = b.subscribe();
    for i in 0..5_000 {
        b.insert(format!("k{i}"), "v").unwrap();
    }
    let first = tokio::time::timeout(DEADLINE, slow.recv()).await.unwrap().unwrap();
    assert!(matches!(first, Event::InvalidateAll(Why::Lagged { missed }) if missed >= 5_000 - 4_096), "{first:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// The next InvalidateAll `events` delivers, changes before it skipped.
async fn next_invalidate_all(events: &mut meshcache::Changes) -> Why {
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await.expect("an InvalidateAll in time").unwrap() {
            Event::Changed(_) => continue,
            Event::InvalidateAll(why) => break why,
        }
    }
}

/// A compaction drops older values everywhere, as a FLUSHALL does. It
/// happens inside a delete here (the tombstone budget exceeded while the
/// other peer is cut off, so nothing can be collected), and the peer's own
/// subscribers must hear it as an InvalidateAll, as the other peer's do
/// once the raised `clear_below` reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_is_an_invalidate_all_here_and_there() {
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(0);
    let a = start_faulty_with(MeshConfig { max_tombstones: 4, ..MeshConfig::for_test("a") }, &ca, &faults, &[]).await;
    let b = start_faulty(&ca, &faults, "b", &[a.local_addr()]).await;
    eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(DEADLINE).await);
    a.insert("old", "v").unwrap();
    eventually("b holds old", || b.contains_key("old")).await;

    faults.partition(&[a.local_addr()], &[b.local_addr()]);
    let (mut here, mut there) = (a.subscribe(), b.subscribe());
    for i in 0..8 {
        a.insert(format!("k{i}"), "v").unwrap();
        assert!(a.invalidate(format!("k{i}")).unwrap());
    }
    let why = next_invalidate_all(&mut here).await;
    assert!(matches!(why, Why::Flushed { origin: Origin::Local, .. }), "{why:?}");
    assert!(a.replica().store().stats().compactions >= 1);
    assert!(!a.contains_key("old"), "the compaction dropped the value older than its bar");

    faults.heal();
    let why = next_invalidate_all(&mut there).await;
    assert!(matches!(why, Why::Flushed { origin: Origin::Remote, .. }), "{why:?}");
    assert!(!b.contains_key("old"));
    a.shutdown().await;
    b.shutdown().await;
}

/// Readings of a peer's memory probe, by the task that made each.
type Readings = Arc<Mutex<HashMap<Option<tokio::task::Id>, usize>>>;

/// The process bound of the peers that note their probe's readings.
const PROBED_BOUND: usize = 64 << 20;

/// Bytes of a session's or a push stream's traffic between two of its
/// readings under [`PROBED_BOUND`]: 1/256 of it.
const PROBED_EVERY: u64 = (PROBED_BOUND / 256) as u64;

/// Peer `t` (from `cfg`), seeded with `seed`, bounded to [`PROBED_BOUND`],
/// with a probe that notes which task reads it and gives a figure well
/// within the bound (the budget it sets evicts nothing).
async fn probed_peer(ca: &EphemeralCa, mut cfg: MeshConfig, seed: std::net::SocketAddr) -> (Mesh, Readings) {
    let readings = Readings::default();
    let probe = {
        let readings = readings.clone();
        Arc::new(move || {
            *readings.lock().unwrap().entry(tokio::task::try_id()).or_default() += 1;
            Some(1 << 20)
        })
    };
    cfg.max_bytes = Some(PROBED_BOUND);
    let t = Mesh::builder()
        .config(cfg)
        .seeds([seed])
        .tls(ca.issue("t").unwrap())
        .memory_probe(probe)
        .start()
        .await
        .unwrap();
    assert!(t.wait_ready(DEADLINE).await, "t never finished bootstrap");
    (t, readings)
}

/// The readings so far, and the one task that goes on reading while the
/// mesh is idle: the memory loop.
async fn readings_and_the_loop(
    readings: &Readings,
) -> (HashMap<Option<tokio::task::Id>, usize>, Option<tokio::task::Id>) {
    let during = readings.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = readings.lock().unwrap().clone();
    let the_loop: Vec<_> = after.iter().filter(|(id, n)| during.get(id) != Some(n)).map(|(id, _)| *id).collect();
    assert_eq!(the_loop.len(), 1, "one task reads while the mesh is idle: {after:?}");
    (during, the_loop[0])
}

/// A peer that bounds its whole process reads its memory as an
/// anti-entropy session's traffic grows, not only every 10 ms in its memory
/// loop: a session's state can grow by megabytes between two of the loop's
/// readings when the machine is busy (ALGORITHM.md, "The memory bound").
/// Here a bootstrap streams about 6.5 MB; the probe notes which task reads
/// it. The loop is the task that goes on reading once the mesh is idle; the
/// sessions' readings are the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_the_process_memory_as_its_traffic_grows() {
    const KEYS: usize = 30_000;
    let ca = EphemeralCa::new().unwrap();
    let s = start(&ca, "s", &[]).await;
    for i in 0..KEYS {
        s.insert(format!("key{i:07}"), vec![b'v'; 200]).unwrap();
    }
    let (t, readings) = probed_peer(&ca, MeshConfig::for_test("t"), s.local_addr()).await;
    eventually("t holds every key", || t.len() == KEYS).await;
    // A session's bytes are counted when it has finished, which may come
    // after its last register is merged.
    let traffic = || {
        let st = t.stats();
        st.ae_bytes_sent + st.ae_bytes_received
    };
    eventually("the bootstrap's session is counted", || traffic() > 20 * PROBED_EVERY).await;

    let traffic = traffic();
    let (during, the_loop) = readings_and_the_loop(&readings).await;
    let by_sessions: usize = during.iter().filter(|(id, _)| id.is_some() && **id != the_loop).map(|(_, n)| n).sum();
    // One reading per 1/256 of the bound of a session's traffic.
    assert!(
        by_sessions as u64 >= traffic / PROBED_EVERY / 2,
        "{by_sessions} readings by sessions for {traffic} bytes of anti-entropy (one expected per {PROBED_EVERY})"
    );
    t.shutdown().await;
    s.shutdown().await;
}

/// Pushes read the process's memory as they arrive, as sessions do: a
/// peer written to fast fills another's memory with merged values and
/// QUIC's buffers between two of the memory loop's readings when the
/// machine is busy. Anti-entropy rounds are an hour apart here and the
/// peers start empty, so the pushes of about 6.9 MB are the only traffic;
/// the probe notes which task reads, and the loop is the task that goes on
/// reading once the mesh is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_read_the_process_memory_as_they_arrive() {
    const KEYS: usize = 30_000;
    let quiet =
        |name: &str| MeshConfig { anti_entropy_interval: Duration::from_secs(3600), ..MeshConfig::for_test(name) };
    let ca = EphemeralCa::new().unwrap();
    let s = Mesh::builder().config(quiet("s")).tls(ca.issue("s").unwrap()).start().await.unwrap();
    let (t, readings) = probed_peer(&ca, quiet("t"), s.local_addr()).await;
    eventually("s and t connected", || s.stats().connected == 1 && t.stats().connected == 1).await;
    let before = readings.lock().unwrap().clone();
    let ae = || t.stats().ae_bytes_sent + t.stats().ae_bytes_received;
    let ae_before = ae();

    for i in 0..KEYS {
        s.insert(format!("key{i:07}"), vec![b'v'; 200]).unwrap();
    }
    eventually("t holds every key", || t.len() == KEYS).await;
    let pushed = s.stats().push_bytes_sent;
    let (during, the_loop) = readings_and_the_loop(&readings).await;
    let ae = ae() - ae_before;
    assert!(ae < PROBED_EVERY, "{ae} bytes of anti-entropy while the pushes ran: its sessions read the memory too");
    assert_eq!(s.stats().queue_overflows, 0, "a queue overflowed: its writes went by anti-entropy");
    let by_pushes: usize = during
        .iter()
        .filter(|(id, _)| id.is_some() && **id != the_loop)
        .map(|(id, n)| n - before.get(id).copied().unwrap_or(0))
        .sum();
    // One reading per 1/256 of the bound of a stream's traffic.
    assert!(
        by_pushes as u64 >= pushed / PROBED_EVERY / 2,
        "{by_pushes} readings by push streams for {pushed} bytes of pushes (one expected per {PROBED_EVERY})"
    );
    t.shutdown().await;
    s.shutdown().await;
}
