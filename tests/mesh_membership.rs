//! Membership over real QUIC: members are removed only by goodbye, by a
//! newer incarnation, or by an operator; never by a timeout. A superseded
//! incarnation is told so and stops. Peers of different protocol versions
//! link at the highest version both speak, and are refused only when their
//! ranges do not meet.

use crate::common;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::mesh::start;
use common::wait::{eventually, holds_until, DEADLINE};
use meshcache::hlc::{NodeId, Stamp};
use meshcache::membership::{Incarnation, MemberId, Status};
use meshcache::transport::certs::{self, EphemeralCa};
use meshcache::transport::faults::Faults;
use meshcache::transport::tls;
use meshcache::wire::{FrameCodec, Hello, Message, Refusal, VersionRange, PROTOCOL_VERSION, PROTOCOL_VERSIONS};
use meshcache::{Mesh, MeshConfig, Readiness, Seed};

fn status_of(m: &Mesh, name: &str) -> Option<(Status, bool)> {
    m.members().into_iter().find(|s| s.id.name == name).map(|s| (s.status, s.connected))
}

/// A window that ends once each of `peers` has completed `rounds` more
/// anti-entropy rounds and at least `at_least` has passed: rounds that
/// would let a peer collect a tombstone were nobody else holding it back.
fn rounds_and_time(peers: &[&Mesh], rounds: u64, at_least: Duration) -> impl FnMut() -> bool {
    let from: Vec<(Mesh, u64)> = peers.iter().map(|p| ((*p).clone(), p.stats().ae_rounds)).collect();
    let start = meshcache::env::stopwatch();
    move || start.elapsed() >= at_least && from.iter().all(|(p, n)| p.stats().ae_rounds >= n + rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_pauses_collection_until_it_restarts_or_is_forgotten() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let b = start(&ca, "b", &[a.local_addr()]).await;
    let c = start(&ca, "c", &[a.local_addr()]).await;
    eventually("full mesh", || [&a, &b, &c].iter().all(|m| m.stats().connected == 2)).await;
    c.halt().await;
    eventually("c's links noticed dead", || a.stats().connected == 1 && b.stats().connected == 1).await;
    // Far past every timeout, c is still a member and pauses collection.
    // The window is one the property must hold through: past the link
    // timeouts and redials, and long enough for anti-entropy rounds between
    // a and b that would have let a collect the tombstone without c.
    a.insert("k", "v").unwrap();
    a.invalidate("k").unwrap();
    let paused = || {
        let st = a.stats().store;
        status_of(&a, "c") == Some((Status::Active, false)) && st.tombstones == 1 && st.collected_tombstones == 0
    };
    let window = rounds_and_time(&[&a, &b], 3, Duration::from_secs(4));
    holds_until("c stays a member and collection waits for it", paused, "a window of rounds and time", window).await;

    // c restarts as a new, empty incarnation: it supersedes the old one.
    let c2 = start(&ca, "c", &[b.local_addr()]).await;
    assert!(c2.wait_ready(DEADLINE).await);
    eventually("new incarnation known", || a.members().iter().any(|m| m.id == *c2.id() && m.connected)).await;
    eventually("collection resumes", || a.stats().store.tombstones == 0 && b.stats().store.tombstones == 0).await;
    // Collected on at least one side; the other may have dropped its copy
    // on that side's refusal reply instead (the same tombstone, refused by
    // the floor its collection raised).
    let (sa, sb) = (a.stats().store, b.stats().store);
    assert!(sa.collected_tombstones + sb.collected_tombstones >= 1, "{sa:?} {sb:?}");
    assert_eq!(sa.collected_tombstones + sa.refusal_drops, 1, "{sa:?}");

    // An operator forgets a member that is gone for good.
    c2.halt().await;
    a.insert("j", "v").unwrap();
    a.invalidate("j").unwrap();
    let window = rounds_and_time(&[&a, &b], 3, Duration::from_secs(1));
    holds_until("collection waits for c", || a.stats().store.tombstones == 1, "a window of rounds and time", window)
        .await;
    assert!(a.forget("c"));
    eventually("forget gossips to b", || status_of(&b, "c").map(|s| s.0) == Some(Status::Forgotten)).await;
    eventually("collection resumes after forget", || a.stats().store.tombstones == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_incarnation_is_told_so_and_stops() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let old = start(&ca, "z", &[a.local_addr()]).await;
    eventually("old z joined", || a.stats().connected == 1).await;
    assert!(old.wait_ready(DEADLINE).await);
    assert_eq!(old.readiness(), Readiness::Ready);
    // A second process with the same name starts later: it is newer.
    let new = start(&ca, "z", &[a.local_addr()]).await;
    eventually("a talks to the new z", || a.members().iter().any(|m| m.id == *new.id() && m.connected)).await;
    tokio::time::timeout(DEADLINE, old.stopped()).await.expect("the old incarnation stops");
    assert!(old.replica().is_superseded());
    assert_eq!(old.readiness(), Readiness::Superseded);
    #[cfg(feature = "server")]
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        tokio::spawn(meshcache::http::serve(listener, old.clone(), None, std::future::pending::<()>()));
        let (status, body) = common::http::request(http, "GET", "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("superseded: a newer incarnation of this name joined"), "{body}");
    }
    assert!(old.insert("x", "y").is_err(), "a superseded peer refuses writes");
    // The old incarnation may learn it was replaced before the new one's
    // first round (its bootstrap) is over.
    assert!(new.wait_ready(DEADLINE).await);
    new.insert("x", "y").unwrap();
    eventually("new z replicates", || a.get(b"x").is_some()).await;
    a.shutdown().await;
    new.shutdown().await;
}

/// Seeds by name: `localhost` is looked up with the system resolver and the
/// peer joins through what it resolves to; a name that cannot resolve
/// (`.invalid`, RFC 6761) is counted and looked up again with backoff, and
/// never stops the peer. (That every address a name resolves to is a seed
/// is checked on the connection machine, `src/node/links/tests.rs`:
/// `localhost` may resolve to one address only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_by_name_are_resolved_and_a_name_that_does_not_resolve_is_retried() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let port = a.local_addr().port();
    let seeds: Vec<Seed> =
        vec!["no-such-seed.invalid:7946".parse().unwrap(), format!("localhost:{port}").parse().unwrap()];
    let b = Mesh::builder().config(MeshConfig::for_test("b")).seeds(seeds).tls(ca.issue("b").unwrap()).start().await;
    let b = b.unwrap();
    assert!(b.wait_ready(DEADLINE).await, "b never joined through the name localhost");
    eventually("a and b linked", || a.stats().connected == 1 && b.stats().connected == 1).await;
    b.insert("k", "v").unwrap();
    eventually("b's write reaches a", || a.get("k").as_deref() == Some(&b"v"[..])).await;
    eventually("the name that does not resolve is looked up again", || b.stats().seed_lookups_failed >= 3).await;
    assert_eq!(a.stats().seed_lookups_failed, 0, "a has no seeds");
    assert_eq!(b.stats().connected, 1, "b still runs, linked to a");
}

/// A peer that speaks only `versions`, over a fault-injecting socket.
async fn start_speaking(
    ca: &EphemeralCa,
    faults: &Faults,
    name: &str,
    seeds: &[SocketAddr],
    versions: RangeInclusive<u16>,
) -> Mesh {
    Mesh::builder()
        .config(MeshConfig::for_test(name))
        .seeds(seeds.iter().copied())
        .socket(faults.socket("127.0.0.1:0".parse().unwrap()).unwrap())
        .protocol_versions(versions)
        .tls(ca.issue(name).unwrap())
        .start()
        .await
        .unwrap()
}

fn version_of(m: &Mesh, name: &str) -> Option<u16> {
    m.members().into_iter().find(|s| s.id.name == name).and_then(|s| s.version)
}

/// Counts the pub/sub messages a peer's listeners hear.
fn heard(m: &Mesh) -> (Arc<AtomicUsize>, meshcache::MessageListener) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let l = m.on_message(move |_| {
        n2.fetch_add(1, Ordering::Relaxed);
        1
    });
    (n, l)
}

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

/// A rolling upgrade's middle: one peer still speaks only version 6 (no
/// fill leases), two speak every version this build does. Writes and
/// deletes reach every peer both ways by push, anti-entropy repairs both
/// ways after a partition, pub/sub (a version 6 kind) reaches the old peer
/// too, and fill leases (version 7) travel between the new peers only: the
/// old peer, which would take one for a protocol violation and drop the
/// link, never gets one. `get_or_load` returns on every peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_mesh_of_old_and_new_peers_replicates_both_ways() {
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(21);
    let n1 = start_speaking(&ca, &faults, "n1", &[], PROTOCOL_VERSIONS.lo..=PROTOCOL_VERSIONS.hi).await;
    let old = start_speaking(&ca, &faults, "old", &[n1.local_addr()], 6..=6).await;
    let n2 = start_speaking(&ca, &faults, "n2", &[n1.local_addr()], PROTOCOL_VERSIONS.lo..=PROTOCOL_VERSIONS.hi).await;
    let all = [&n1, &old, &n2];
    for m in all {
        assert!(m.wait_ready(DEADLINE).await);
    }
    eventually("full mesh", || all.iter().all(|m| m.stats().connected == 2)).await;
    assert_eq!((version_of(&n1, "old"), version_of(&n1, "n2")), (Some(6), Some(PROTOCOL_VERSION)));
    assert_eq!((version_of(&n2, "old"), version_of(&n2, "n1")), (Some(6), Some(PROTOCOL_VERSION)));
    assert_eq!((version_of(&old, "n1"), version_of(&old, "n2")), (Some(6), Some(6)));

    // Pushes, both ways.
    old.insert("from-old", "o").unwrap();
    n1.insert("from-new", "n").unwrap();
    eventually("writes reach every peer", || {
        all.iter().all(|m| m.get(b"from-old").is_some() && m.get(b"from-new").is_some())
    })
    .await;
    old.invalidate("from-new").unwrap();
    n2.invalidate("from-old").unwrap();
    eventually("deletes reach every peer", || {
        all.iter().all(|m| m.get(b"from-old").is_none() && m.get(b"from-new").is_none())
    })
    .await;

    // Pub/sub is spoken at 6: it reaches the old peer and comes from it.
    let listeners: Vec<_> = all.iter().map(|m| heard(m)).collect();
    n1.publish("news", "from n1", false).unwrap();
    old.publish("news", "from old", false).unwrap();
    eventually("every publication reaches every other peer", || {
        listeners.iter().all(|(n, _)| n.load(Ordering::Relaxed) == 2)
    })
    .await;

    // A fill on a new peer: its lease reaches the other new peer, which
    // waits for its value instead of loading.
    let release = Arc::new(tokio::sync::Notify::new());
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |value: &'static str, gate: Option<Arc<tokio::sync::Notify>>| {
        let loads = loads.clone();
        move || {
            loads.fetch_add(1, Ordering::Relaxed);
            async move {
                if let Some(g) = gate {
                    g.notified().await;
                }
                Ok::<_, Never>(Bytes::from_static(value.as_bytes()))
            }
        }
    };
    let fill_n1 = tokio::spawn({
        let (n1, l) = (n1.clone(), loader("n1's", Some(release.clone())));
        async move { n1.get_or_load("cold", None, l).await }
    });
    eventually("n1's lease reaches n2", || n2.stats().fill_leases == 1).await;
    // n1 loads only once its lease has settled; the old peer's value,
    // arriving before that, would be taken instead of loading.
    eventually("n1 loads", || n1.stats().fill_loads == 1).await;
    let fill_n2 = tokio::spawn({
        let (n2, l) = (n2.clone(), loader("n2's", None));
        async move { n2.get_or_load("cold", None, l).await }
    });
    // The old peer knows nothing of the lease: it loads the key itself, at
    // most once more than a mesh of new peers would, and returns.
    let on_old = old.get_or_load("cold", None, loader("old's", None)).await.unwrap();
    assert_eq!(old.stats().fill_leases, 0, "no lease reached the old peer (its own ended)");
    release.notify_one();
    let (v1, v2) = (fill_n1.await.unwrap().unwrap(), fill_n2.await.unwrap().unwrap());
    assert_eq!(v1, Bytes::from_static(b"n1's"));
    assert!(v2 == v1 || v2 == on_old, "n2 took a value loaded elsewhere: {v2:?}");
    assert_eq!(n2.stats().fill_loads, 0, "n2 waited for n1's lease instead of loading");
    assert_eq!((n1.stats().fill_loads, old.stats().fill_loads), (1, 1));
    eventually("the values converge", || {
        let v = n1.get(b"cold");
        v.is_some() && all.iter().all(|m| m.get(b"cold") == v)
    })
    .await;
    // A fill on the old peer alone: no lease goes out, and it loads.
    assert_eq!(old.get_or_load("cold-old", None, loader("old", None)).await.unwrap(), Bytes::from_static(b"old"));
    eventually("its value reaches the new peers", || n1.get(b"cold-old").is_some() && n2.get(b"cold-old").is_some())
        .await;

    // Nothing the old peer received broke its protocol, and its links held.
    for m in all {
        let s = m.stats();
        assert_eq!((s.protocol_errors, s.version_refusals, s.refused_peers), (0, 0, 0), "{}", m.id());
    }
    assert_eq!(old.stats().connected, 2);

    // Anti-entropy, both ways: the old peer is cut off, both sides write and
    // delete, the links die, and the heal repairs each side from the other.
    old.insert("old-doomed", "x").unwrap();
    n1.insert("new-doomed", "x").unwrap();
    eventually("before the partition", || {
        all.iter().all(|m| m.get(b"old-doomed").is_some() && m.get(b"new-doomed").is_some())
    })
    .await;
    faults.partition(&[old.local_addr()], &[n1.local_addr(), n2.local_addr()]);
    old.insert("ae-old", "o").unwrap();
    old.invalidate("new-doomed").unwrap();
    n2.insert("ae-new", "n").unwrap();
    n2.invalidate("old-doomed").unwrap();
    holds_until(
        "nothing crosses the partition",
        || old.get(b"ae-new").is_none() && n1.get(b"ae-old").is_none(),
        "the links across it die",
        || old.stats().connected == 0 && n1.stats().connected == 1 && n2.stats().connected == 1,
    )
    .await;
    let received: Vec<u64> = all.iter().map(|m| m.stats().ae_entries_received).collect();
    faults.heal();
    eventually("anti-entropy repairs both sides", || {
        all.iter().all(|m| {
            m.get(b"ae-old").is_some()
                && m.get(b"ae-new").is_some()
                && m.get(b"old-doomed").is_none()
                && m.get(b"new-doomed").is_none()
        })
    })
    .await;
    // A session counts its entries when it ends, which can be just after
    // what it merged is read.
    let entries = |m: &Mesh| m.stats().ae_entries_received;
    eventually("the old peer was repaired by anti-entropy", || entries(&old) > received[1]).await;
    eventually("a new peer was repaired by anti-entropy", || entries(&n1) + entries(&n2) > received[0] + received[2])
        .await;
    eventually("relinked at the same versions", || {
        version_of(&n1, "old") == Some(6) && version_of(&old, "n1") == Some(6) && version_of(&old, "n2") == Some(6)
    })
    .await;
    for m in all {
        assert_eq!(m.stats().protocol_errors, 0, "{}", m.id());
        m.shutdown().await;
    }
}

/// Peers whose ranges do not meet are refused, each side counts it, and
/// each can say what the other speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_whose_versions_do_not_meet_are_refused_and_say_so() {
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(22);
    let new = start_speaking(&ca, &faults, "new", &[], 7..=7).await;
    let old = start_speaking(&ca, &faults, "old", &[new.local_addr()], 6..=6).await;
    eventually("both sides counted the refusal", || {
        new.stats().version_refusals > 0 && old.stats().version_refusals > 0
    })
    .await;
    let by_new = new.version_refusal().unwrap();
    assert_eq!((by_new.peer.as_str(), by_new.by_us), ("old", true));
    assert_eq!((by_new.ours, by_new.theirs), (VersionRange::single(7), VersionRange::single(6)));
    assert!(new.stats().refused_peers > 0);
    let of_old = old.version_refusal().unwrap();
    assert_eq!((of_old.peer, of_old.by_us), (new.local_addr().to_string(), false));
    assert_eq!((of_old.ours, of_old.theirs), (VersionRange::single(6), VersionRange::single(7)));
    assert_eq!((new.stats().connected, old.stats().connected), (0, 0));
    assert!(new.members().iter().all(|m| m.id.name != "old"), "a refused peer never becomes a member");
    new.shutdown().await;
    old.shutdown().await;
}

/// What a peer of the build before version ranges (protocol 7 or 6, one
/// version each) sees on the hello stream: its own version back, then a
/// frame it never reads; or, for a version this build does not speak, the
/// refusal it decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_version_peer_is_answered_in_its_own_terms() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    for (name, version) in [("r7", 7u16), ("r6", 6), ("r5", 5)] {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(tls::quinn_client_config(&ca.issue(name).unwrap()).unwrap());
        let conn = ep.connect(a.local_addr(), certs::SERVER_NAME).unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let ms = meshcache::env::system_ms();
        let hello = Hello {
            version,
            from: MemberId { name: name.into(), incarnation: Incarnation { started_ms: ms, node: NodeId(99) } },
            physical_ms: ms,
            hlc: Stamp::pack(ms, 0),
            listen: None,
        };
        // As that build wrote it: the hello alone.
        send.write_all(&FrameCodec::default().encode_to_bytes(&Message::Hello(hello)).unwrap()).await.unwrap();
        send.finish().unwrap();
        let reply = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 16)).await.unwrap().unwrap();
        let msgs = FrameCodec::default().decode_all(&reply).unwrap();
        match (version, &msgs[..]) {
            // The newest version a single-version peer can have: 7.
            (5, [Message::Refused(r)]) => {
                assert_eq!(*r, Refusal::Version { ours: PROTOCOL_VERSIONS.hello_version() })
            }
            (6 | 7, [Message::Hello(h), Message::Versions(v)]) => {
                assert_eq!((h.version, *v), (version, PROTOCOL_VERSIONS), "its own version first");
            }
            _ => panic!("version {version}: {msgs:?}"),
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    }
    let refused = a.version_refusal().unwrap();
    assert_eq!((refused.peer.as_str(), refused.theirs), ("r5", VersionRange::single(5)));
    assert_eq!(a.stats().version_refusals, 1);
    a.shutdown().await;
}

/// A peer of the build of protocol 6 (one version) refuses a hello naming
/// 7 with the refusal it knows; this build dials it again naming 6, and
/// links at 6. The old peer is a bare QUIC server answering as that build
/// did: its hello's first frame only, equality of versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refused_by_a_single_version_peer_it_can_speak_to_dials_again_in_its_version() {
    let ca = EphemeralCa::new().unwrap();
    let id = ca.issue("r6").unwrap();
    let server =
        quinn::Endpoint::server(tls::quinn_server_config(&id).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let serving = tokio::spawn(async move {
        let codec = FrameCodec::default();
        let mut conns = Vec::new();
        while let Some(incoming) = server.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { continue };
            let mut buf = bytes::BytesMut::new();
            let hello = loop {
                match codec.decode(&mut buf) {
                    Ok(Some(Message::Hello(h))) => break h,
                    Ok(None) => match recv.read_chunk(1 << 16, true).await {
                        Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                        _ => panic!("the hello never came"),
                    },
                    other => panic!("not a hello: {other:?}"),
                }
            };
            let _ = seen_tx.send(hello.version);
            let ms = meshcache::env::system_ms();
            let reply = if hello.version == 6 {
                Message::Hello(Hello {
                    version: 6,
                    from: MemberId { name: "r6".into(), incarnation: Incarnation { started_ms: ms, node: NodeId(61) } },
                    physical_ms: ms,
                    hlc: Stamp::pack(ms, 0),
                    listen: Some(addr),
                })
            } else {
                Message::Refused(Refusal::Version { ours: 6 })
            };
            send.write_all(&codec.encode_to_bytes(&reply).unwrap()).await.unwrap();
            send.finish().unwrap();
            // Held open, as a linked peer's connection is.
            conns.push(conn);
        }
    });
    let a = start(&ca, "a", &[addr]).await;
    let first = tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap();
    assert_eq!(first, Some(PROTOCOL_VERSIONS.hello_version()), "the newest a single-version peer can have first");
    assert_eq!(tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap(), Some(6), "then its own");
    eventually("linked at 6", || version_of(&a, "r6") == Some(6)).await;
    assert_eq!((a.stats().version_refusals, a.stats().protocol_errors), (0, 0));
    a.shutdown().await;
    serving.abort();
}
