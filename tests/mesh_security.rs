//! I6 and I7 over real QUIC on loopback: only holders of a certificate from
//! the cluster CA join or send data, and malformed frames from an
//! authenticated peer close that connection while the mesh carries on.

mod common;

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
