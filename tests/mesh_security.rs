//! I6 and I7 over real QUIC on loopback: only holders of a certificate from
//! the cluster CA join or send data, and malformed frames from an
//! authenticated peer close that connection while the mesh carries on.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::mesh::{pair, start_with as start};
use common::wait::{eventually, holds_until, DEADLINE};
use meshcache::hlc::{NodeId, Stamp};
use meshcache::membership::{Incarnation, MemberId};
use meshcache::store::{Register, Slot};
use meshcache::transport::certs::{self, EphemeralCa, Identity};
use meshcache::transport::tls;
use meshcache::wire::{DeltaBatch, FrameCodec, Hello, Message, Refusal, PROTOCOL_VERSION};

fn now_ms() -> u64 {
    meshcache::env::system_ms()
}

fn frame(m: &Message) -> Bytes {
    FrameCodec::default().encode_to_bytes(m).unwrap()
}

fn hello(name: &str) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        from: MemberId { name: name.into(), incarnation: Incarnation { started_ms: now_ms(), node: NodeId(99) } },
        physical_ms: now_ms(),
        hlc: Stamp::pack(now_ms(), 0),
        listen: None,
    })
}

fn injected_batch(name: &str, key: &str) -> Message {
    let from = MemberId { name: name.into(), incarnation: Incarnation { started_ms: now_ms(), node: NodeId(99) } };
    let reg = Register {
        val: Slot::Value { data: Bytes::from_static(b"evil"), expires_at_ms: None },
        marker: Stamp { hlc: Stamp::pack(now_ms(), 0), node: NodeId(99) },
    };
    Message::Deltas(DeltaBatch {
        from,
        hlc: reg.marker.hlc,
        clear_below: Stamp::ZERO,
        members: None,
        entries: vec![(Bytes::from(key.to_string()), reg)],
    })
}

/// A bare quinn client that tries to speak anyway: hello, then a push.
/// Returns the connection, or `None` if the handshake itself failed.
async fn raw_client(
    client: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    name: &str,
    key: &str,
) -> Option<quinn::Connection> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    // Under TLS 1.3 the client usually believes it connected; the server's
    // refusal shows on the first stream operation.
    let conn = ep.connect(addr, certs::SERVER_NAME).unwrap().await.ok()?;
    if let Ok((mut s, _r)) = conn.open_bi().await {
        let _ = s.write_all(&frame(&hello(name))).await;
        let _ = s.finish();
    }
    if let Ok(mut u) = conn.open_uni().await {
        let _ = u.write_all(&frame(&injected_batch(name, key))).await;
        let _ = u.finish();
    }
    Some(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_certless_peers_cannot_join_or_inject() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(ca.issue("a").unwrap(), &[]).await;
    let b = start(ca.issue("b").unwrap(), &[a.local_addr()]).await;
    eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;

    // A full peer with a certificate from another CA, seeded with a.
    let foreign = EphemeralCa::new().unwrap();
    let rogue = start(foreign.issue("rogue").unwrap(), &[a.local_addr()]).await;
    // It never finishes bootstrap through a, so it writes after its timeout.
    assert!(rogue.wait_ready(DEADLINE).await);
    rogue.insert("rogue-key", "evil").unwrap();

    // A bare client presenting the foreign certificate, trusting our CA.
    let rogue_id = foreign.issue("rogue2").unwrap();
    let trusting = Identity { cas: vec![ca.ca_der()], ..rogue_id };
    let c1 = raw_client(tls::quinn_client_config(&trusting).unwrap(), a.local_addr(), "rogue2", "raw-foreign").await;
    // A bare client with no certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut nocert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    nocert.alpn_protocols = vec![tls::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(nocert).unwrap();
    let c2 = raw_client(quinn::ClientConfig::new(Arc::new(qc)), a.local_addr(), "nocert", "raw-nocert").await;

    // The bare clients' connections are refused: nothing more can come
    // over them.
    for c in [c1, c2].into_iter().flatten() {
        let closed = tokio::time::timeout(DEADLINE, c.closed()).await;
        assert!(closed.is_ok(), "a rejected connection must be closed");
    }
    // Give the rogue peer every chance: its redials, and several
    // anti-entropy rounds between a and b, during which nothing of the
    // intruders' may appear anywhere.
    a.insert("legit", "1").unwrap();
    eventually("legit write reaches b", || b.get(b"legit").is_some()).await;
    let kept_out = || {
        [&a, &b].iter().all(|m| {
            ["rogue-key", "raw-foreign", "raw-nocert"].iter().all(|k| m.get(k.as_bytes()).is_none())
                && m.members().iter().all(|s| s.id.name == "a" || s.id.name == "b")
                && m.stats().connected == 1
        }) && rogue.stats().connected == 0
            && rogue.members().is_empty()
    };
    let (from_a, from_b, start) = (a.stats().ae_rounds, b.stats().ae_rounds, meshcache::env::stopwatch());
    let window = || {
        start.elapsed() >= Duration::from_secs(2)
            && a.stats().ae_rounds >= from_a + 5
            && b.stats().ae_rounds >= from_b + 5
    };
    holds_until("the intruders stay out", kept_out, "several rounds and the rogue's redials", window).await;
    for m in [a, b, rogue] {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    let ca = EphemeralCa::new().unwrap();
    let (a, b) = pair(&ca).await;

    // An authenticated peer (valid certificate, valid hello) that then
    // sends garbage on a push stream.
    let evil = ca.issue("evil").unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(tls::quinn_client_config(&evil).unwrap());
    let conn = ep.connect(a.local_addr(), certs::SERVER_NAME).unwrap().await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&frame(&hello("evil"))).await.unwrap();
    s.finish().unwrap();
    let reply = tokio::time::timeout(DEADLINE, r.read_to_end(1 << 20)).await.unwrap().unwrap();
    let msgs = FrameCodec::default().decode_all(&reply).unwrap();
    assert!(matches!(msgs.first(), Some(Message::Hello(_))), "{msgs:?}");
    let mut u = conn.open_uni().await.unwrap();
    let mut garbage = BytesMut::new();
    garbage.extend_from_slice(&[0, 0, 0, 12]);
    garbage.extend_from_slice(b"\xff\xff\xff\xff not postcard");
    u.write_all(&garbage).await.unwrap();
    let _ = u.finish();
    let closed = tokio::time::timeout(DEADLINE, conn.closed()).await.expect("a closes the connection");
    assert!(format!("{closed:?}").contains("protocol"), "{closed:?}");
    eventually("counted", || a.stats().protocol_errors >= 1).await;

    // The mesh carries on.
    a.insert("after", "ok").unwrap();
    eventually("replication continues", || b.get(b"after").is_some()).await;
    b.insert("back", "ok").unwrap();
    eventually("both ways", || a.get(b"back").is_some()).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer whose hello names someone other than its certificate is refused,
/// and told why: the certificate's name, not "superseded" (which would tell
/// a healthy peer to stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_someone_else_is_refused_with_that_reason() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(ca.issue("a").unwrap(), &[]).await;
    let mallory = ca.issue("mallory").unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(tls::quinn_client_config(&mallory).unwrap());
    let conn = ep.connect(a.local_addr(), certs::SERVER_NAME).unwrap().await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&frame(&hello("b"))).await.unwrap();
    s.finish().unwrap();
    let reply = tokio::time::timeout(DEADLINE, r.read_to_end(1 << 20)).await.unwrap().unwrap();
    let msgs = FrameCodec::default().decode_all(&reply).unwrap();
    assert_eq!(msgs, vec![Message::Refused(Refusal::Name { certificate: Some("mallory".into()) })]);
    eventually("counted", || a.stats().refused_peers >= 1).await;
    assert!(a.members().iter().all(|m| m.id.name != "b" && m.id.name != "mallory"), "{:?}", a.members());
    a.shutdown().await;
}

/// An authenticated peer's gossip is validated and the view is capped: a
/// name no certificate can carry, or an address no one can dial, is
/// ignored; past `max_members`, new names are ignored, and a new peer's
/// hello is refused with that reason. Each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_members_are_validated_and_capped() {
    use meshcache::membership::{MemberInfo, Status};
    use meshcache::{Mesh, MeshConfig};
    const CAP: usize = 4;
    let ca = EphemeralCa::new().unwrap();
    let config = MeshConfig { max_members: CAP, ..MeshConfig::for_test("a") };
    let a = Mesh::builder().config(config).tls(ca.issue("a").unwrap()).start().await.unwrap();

    let connect = |name: &str| {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(tls::quinn_client_config(&ca.issue(name).unwrap()).unwrap());
        ep.connect(a.local_addr(), certs::SERVER_NAME).unwrap()
    };
    async fn say_hello(conn: &quinn::Connection, hello: &Message) -> Vec<Message> {
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(&frame(hello)).await.unwrap();
        s.finish().unwrap();
        let reply = tokio::time::timeout(DEADLINE, r.read_to_end(1 << 20)).await.unwrap().unwrap();
        FrameCodec::default().decode_all(&reply).unwrap()
    }
    let conn = connect("gossip").await.unwrap();
    let Message::Hello(h) = hello("gossip") else { unreachable!() };
    let from = h.from.clone();
    let reply = say_hello(&conn, &Message::Hello(h)).await;
    assert!(matches!(reply.first(), Some(Message::Hello(_))), "{reply:?}");

    let member = |name: &str, addr: Option<&str>| MemberInfo {
        id: MemberId { name: name.into(), incarnation: Incarnation { started_ms: now_ms(), node: NodeId(7) } },
        status: Status::Active,
        addr: addr.map(|a| a.parse().unwrap()),
    };
    let invalid = [
        member(".hidden", None),
        member("no spaces", None),
        member(&"x".repeat(64), None),
        member("wildcard", Some("0.0.0.0:7946")),
        member("port0", Some("127.0.0.1:0")),
        member("multicast", Some("224.0.0.1:7946")),
    ];
    // With "gossip" itself, the view holds CAP - 1 of these.
    let valid: Vec<MemberInfo> = (0..10).map(|i| member(&format!("g{i}"), None)).collect();
    let push = Message::Deltas(DeltaBatch {
        from,
        hlc: Stamp::pack(now_ms(), 0),
        clear_below: Stamp::ZERO,
        members: Some(invalid.iter().chain(&valid).cloned().collect()),
        entries: Vec::new(),
    });
    let mut u = conn.open_uni().await.unwrap();
    u.write_all(&frame(&push)).await.unwrap();
    u.finish().unwrap();
    let over = (valid.len() - (CAP - 1)) as u64;
    eventually("gossip counted", || a.stats().members_over_cap >= over).await;
    let st = a.stats();
    assert_eq!((st.members_invalid, st.members_over_cap), (invalid.len() as u64, over), "{st:?}");
    let names: Vec<String> = a.members().into_iter().map(|m| m.id.name).collect();
    assert_eq!(names.len(), CAP, "{names:?}");
    assert!(names.iter().all(|n| n == "gossip" || n.starts_with('g') && n.len() == 2), "{names:?}");

    // The view is full: a new peer is refused at its hello, and told why.
    let late = connect("late").await.unwrap();
    let reply = say_hello(&late, &hello("late")).await;
    assert_eq!(reply, vec![Message::Refused(Refusal::Full)]);
    eventually("refusal counted", || a.stats().refused_peers >= 1).await;
    assert_eq!(a.stats().members_over_cap, over + 1);
    assert!(a.members().iter().all(|m| m.id.name != "late"));
    // The peer admitted before the view filled stays connected.
    assert_eq!(a.stats().connected, 1);
    conn.close(0u32.into(), b"done");
    a.shutdown().await;
}

/// `ca`'s certificate for `name`, trusting `cas`.
fn issued(ca: &EphemeralCa, name: &str, cas: &[&EphemeralCa]) -> Identity {
    Identity { cas: cas.iter().map(|c| c.ca_der()).collect(), ..ca.issue(name).unwrap() }
}

/// Keys written on `peers` by a task, round-robin, until stopped (or a
/// bound on the count): writes keep flowing while the peers reload.
struct Writer {
    written: Arc<parking_lot::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(peers: &[meshcache::Mesh]) -> Writer {
        const MAX_WRITES: usize = 50_000;
        let written = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, s, peers) = (written.clone(), stop.clone(), peers.to_vec());
        let task = tokio::spawn(async move {
            for i in 0..MAX_WRITES {
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{i}");
                peers[i % peers.len()].insert(key.clone(), format!("v{i}")).unwrap();
                w.lock().push(key);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { written, stop, task }
    }

    fn so_far(&self) -> Vec<String> {
        self.written.lock().clone()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let written = self.written.lock().clone();
        written
    }
}

/// Every key of `keys` holds its value on every peer.
async fn converged(what: &str, peers: &[meshcache::Mesh], keys: &[String]) {
    let value = |k: &str| format!("v{}", &k[1..]);
    eventually(what, || {
        peers.iter().all(|m| keys.iter().all(|k| m.get(k.as_bytes()).as_deref() == Some(value(k).as_bytes())))
    })
    .await;
}

/// No peer has refused another, at the hello or in the TLS handshake.
fn none_refused(peers: &[meshcache::Mesh]) {
    for m in peers {
        let s = m.stats();
        assert_eq!((s.refused_peers, s.tls_refused), (0, 0), "{}: {s:?}", m.id());
    }
}

/// Cuts every link of `peers` until each has timed out, then heals: every
/// link is made again, in new TLS handshakes both ways.
async fn reconnect_all(step: &str, faults: &meshcache::transport::faults::Faults, peers: &[meshcache::Mesh]) {
    let made: Vec<u64> = peers.iter().map(|m| m.stats().links_made).collect();
    for m in peers {
        faults.isolate(m.local_addr());
    }
    eventually(&format!("{step}: every link timed out"), || peers.iter().all(|m| m.stats().connected == 0)).await;
    faults.heal();
    eventually(&format!("{step}: every link made again"), || {
        peers.iter().zip(&made).all(|(m, &before)| {
            let s = m.stats();
            s.connected == peers.len() - 1 && s.links_made >= before + (peers.len() - 1) as u64
        })
    })
    .await;
    // Two peers that dialed each other across the heal make a link on
    // each connection, the second replacing the first: until no dial is
    // left, `links_made` may still move, and the next step counts from it.
    eventually(&format!("{step}: no dial left"), || peers.iter().all(|m| m.stats().dials == 0)).await;
}

/// Certificates rotate, then the cluster CA rolls over (old, old + new,
/// new), on a running three-peer mesh with writes flowing. After each
/// step every link is made again, so that the new material is what the
/// handshakes use: nothing written is lost, no peer is refused, and the
/// links that were up when a peer reloaded stay up. At the end a peer
/// holding only a certificate of the retired CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_and_the_ca_rolls_over_while_writes_flow() {
    use common::mesh::start_faulty;
    use meshcache::transport::faults::Faults;
    let (ca1, ca2) = (EphemeralCa::new().unwrap(), EphemeralCa::new().unwrap());
    let faults = Faults::new();
    let a = start_faulty(&ca1, &faults, "a", &[]).await;
    let b = start_faulty(&ca1, &faults, "b", &[a.local_addr()]).await;
    let c = start_faulty(&ca1, &faults, "c", &[a.local_addr()]).await;
    let peers = vec![a, b, c];
    eventually("a full mesh", || peers.iter().all(|m| m.stats().connected == 2)).await;
    for m in &peers {
        assert!(m.wait_ready(DEADLINE).await, "{} never finished bootstrap", m.id());
    }
    let writer = Writer::start(&peers);

    type Step<'a> = (&'a str, &'a EphemeralCa, Vec<&'a EphemeralCa>);
    let steps: [Step; 4] = [
        ("new node certificates from the same CA", &ca1, vec![&ca1]),
        ("the new CA trusted beside the old", &ca1, vec![&ca1, &ca2]),
        ("node certificates from the new CA", &ca2, vec![&ca1, &ca2]),
        ("the old CA retired", &ca2, vec![&ca2]),
    ];
    for (step, issuer, cas) in steps {
        let made: Vec<u64> = peers.iter().map(|m| m.stats().links_made).collect();
        for m in &peers {
            let before = m.certificate().unwrap();
            m.reload_tls(issued(issuer, &m.id().name, &cas)).unwrap_or_else(|e| panic!("{step}: {e}"));
            let now = m.certificate().unwrap();
            assert!(now.serial != before.serial && now.cas == cas.len(), "{step}: {before} -> {now}");
        }
        // The links that were up stay up: what is written after the reload
        // arrives over them, and none was made again.
        let reloaded_at = writer.so_far().len();
        eventually("writes after the reload", || writer.so_far().len() >= reloaded_at + 30).await;
        converged(&format!("{step}: writes over the links made before"), &peers, &writer.so_far()).await;
        let now: Vec<u64> = peers.iter().map(|m| m.stats().links_made).collect();
        assert_eq!(now, made, "{step}: a reload dropped a link");
        assert!(peers.iter().all(|m| m.stats().connected == 2), "{step}");
        // New handshakes, with the new material on both sides.
        reconnect_all(step, &faults, &peers).await;
        converged(&format!("{step}: writes after new handshakes"), &peers, &writer.so_far()).await;
        none_refused(&peers);
    }
    let written = writer.finish().await;
    assert!(written.len() > 100, "writes flowed throughout: {}", written.len());
    converged("every write on every peer", &peers, &written).await;
    none_refused(&peers);

    // A peer with only the retired CA: it refuses the peers' certificates,
    // and they refuse its own.
    let refused_before = peers[0].stats().tls_refused;
    let old_only = start(issued(&ca1, "old-only", &[&ca1]), &[peers[0].local_addr()]).await;
    eventually("the old-only peer refused in the handshake", || {
        old_only.stats().tls_refused >= 1 && peers[0].stats().tls_refused > refused_before
    })
    .await;
    // One that trusts both CAs but holds a certificate of the retired one:
    // refused by the peers' trust in the new CA alone.
    let refused_before = peers[0].stats().tls_refused;
    let old_cert = start(issued(&ca1, "old-cert", &[&ca1, &ca2]), &[peers[0].local_addr()]).await;
    eventually("the old-certificate peer refused in the handshake", || peers[0].stats().tls_refused > refused_before)
        .await;
    let outsiders = ["old-only", "old-cert"];
    for m in &peers {
        assert!(m.members().iter().all(|s| !outsiders.contains(&s.id.name.as_str())), "{:?}", m.members());
        assert_eq!((m.stats().connected, m.stats().refused_peers), (2, 0), "{}", m.id());
    }
    for m in [&old_only, &old_cert] {
        assert_eq!(m.stats().connected, 0, "{}", m.id());
        assert!(m.members().is_empty(), "{:?}", m.members());
    }
    for m in peers.into_iter().chain([old_only, old_cert]) {
        m.shutdown().await;
    }
}

/// A reload with bad material is refused with an error that says what is
/// wrong, and the peer keeps its certificate: new connections, both ways,
/// still succeed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_is_refused_and_the_old_certificate_stays() {
    use common::mesh::{faulty_pair, start_faulty};
    use meshcache::transport::certs::CertError;
    use meshcache::transport::faults::Faults;
    use meshcache::MeshError;
    use rustls::pki_types::CertificateDer;
    let (ca, foreign) = (EphemeralCa::new().unwrap(), EphemeralCa::new().unwrap());
    let faults = Faults::new();
    let (a, b) = faulty_pair(&ca, &faults).await;
    let before = a.certificate().unwrap();
    let good = issued(&ca, "a", &[&ca]);

    let garbage = CertificateDer::from(b"garbage".to_vec());
    type Expected = fn(&MeshError) -> bool;
    let cases: Vec<(&str, Identity, Expected)> = vec![
        ("a key not the certificate's", Identity { key: ca.issue("a").unwrap().key, ..good.clone() }, |e| {
            matches!(e, MeshError::Tls(CertError::KeyMismatch { .. }))
        }),
        ("an identity for another name", issued(&ca, "z", &[&ca]), |e| matches!(e, MeshError::NameMismatch { .. })),
        ("a certificate for another name", Identity { name: "a".into(), ..issued(&ca, "z", &[&ca]) }, |e| {
            matches!(e, MeshError::Tls(CertError::Unusable { .. }))
        }),
        ("a garbage certificate", Identity { chain: vec![garbage.clone()], ..good.clone() }, |e| {
            matches!(e, MeshError::Tls(CertError::BadPem { .. }))
        }),
        ("a garbage CA", Identity { cas: vec![garbage], ..good.clone() }, |e| {
            matches!(e, MeshError::Tls(CertError::BadPem { .. }))
        }),
        ("no CA", Identity { cas: vec![], ..good.clone() }, |e| matches!(e, MeshError::Tls(CertError::BadPem { .. }))),
        ("a certificate of no CA in the bundle", issued(&foreign, "a", &[&ca]), |e| {
            matches!(e, MeshError::Tls(CertError::WrongCa { .. }))
        }),
    ];
    for (what, id, expected) in cases {
        let err = a.reload_tls(id).expect_err(what);
        assert!(expected(&err), "{what}: {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(a.certificate().as_ref(), Some(&before), "{what}: the certificate changed");
    }

    // New connections still succeed with the old material: a newcomer is
    // accepted, and every link is made again.
    let c = start_faulty(&ca, &faults, "c", &[a.local_addr()]).await;
    let peers = vec![a, b, c];
    eventually("c joins", || peers.iter().all(|m| m.stats().connected == 2)).await;
    reconnect_all("after the bad reloads", &faults, &peers).await;
    peers[0].insert("after", "bad reloads").unwrap();
    eventually("replication continues", || peers.iter().all(|m| m.get(b"after").is_some())).await;
    none_refused(&peers);
    for m in peers {
        m.shutdown().await;
    }
}
