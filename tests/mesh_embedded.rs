//! The embedded API over real QUIC on loopback: five in-process peers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mesh::{silent_seed, start};
use common::wait::{eventually, DEADLINE};
use meshcache::store::ChangeKind;
use meshcache::transport::certs::EphemeralCa;
use meshcache::{Mesh, MeshConfig, Origin};
use tokio_stream::StreamExt;

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
    peers[0].put("k", "v1").unwrap();
    eventually("put reaches every peer", || peers.iter().all(|p| p.get(b"k").as_deref() == Some(&b"v1"[..]))).await;
    let ev = tokio::time::timeout(DEADLINE, events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.key.as_ref(), ev.kind, ev.origin), (&b"k"[..], ChangeKind::Put, Origin::Remote));

    assert!(peers[3].delete("k").unwrap());
    eventually("delete reaches every peer", || peers.iter().all(|p| p.get(b"k").is_none())).await;
    let ev = tokio::time::timeout(DEADLINE, events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((ev.kind, ev.origin), (ChangeKind::Delete, Origin::Remote));

    // Concurrent writes to one key from every peer: one winner everywhere.
    for (i, p) in peers.iter().enumerate() {
        p.put("race", format!("from p{i}")).unwrap();
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
    peers[1].put_with_ttl("ttl", "x", Duration::from_millis(300)).unwrap();
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
        seed.put(format!("k{i}"), "v").unwrap();
    }
    let cfg = MeshConfig { bootstrap_timeout: Duration::from_secs(30), ..MeshConfig::for_test("joiner") };
    let joiner =
        Mesh::builder().config(cfg).seeds([seed.local_addr()]).tls(ca.issue("joiner").unwrap()).start().await.unwrap();
    let third = start(&ca, "third", &[seed.local_addr()]).await;
    assert!(joiner.wait_ready(DEADLINE).await);
    eventually("bootstrap copied the store", || joiner.replica().store().len() == 1000).await;
    joiner.put("after", "boot").unwrap();
    eventually("third learns of joiner", || third.stats().connected == 2).await;
    // The seed dies; the other two carry on.
    seed.shutdown().await;
    joiner.put("without-seed", "yes").unwrap();
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
    let err = m.put("k", "v").unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().starts_with("LOADING"), "{err}");
    assert!(!m.is_ready());
    m.shutdown().await;
    // The bootstrap timeout ends loading: then writes are accepted.
    let m = lonely("lonely", Duration::from_millis(800)).await.unwrap();
    assert!(m.wait_ready(DEADLINE).await, "bootstrap_timeout ends loading");
    m.put("k", "v").unwrap();
    m.shutdown().await;
}
