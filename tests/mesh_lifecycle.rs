//! A peer lives as long as a handle to it: dropping the last `Mesh` stops
//! it (tasks end, connections close after a goodbye, the socket is freed),
//! while anything that serves through a handle keeps it running. Its
//! readiness follows bootstrap, drain and stop; a shutdown drains what is
//! queued for each peer before it leaves. Over real QUIC on loopback.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::mesh::{pair, silent_seed, start};
use common::wait::{eventually, DEADLINE};
use meshcache::membership::Status;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::{Mesh, MeshConfig, Readiness};

/// Whether `a` saw the member called `name` leave (its goodbye).
fn left(a: &Mesh, name: &str) -> bool {
    a.members().iter().any(|m| m.id.name == name && m.status == Status::Left)
}

fn port_free(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_peer() {
    let ca = EphemeralCa::new().unwrap();
    let (a, b) = pair(&ca).await;
    let b_addr = b.local_addr();
    assert!(!port_free(b_addr), "b's socket holds its port while it runs");

    // Dropping one handle of two changes nothing.
    let other = b.clone();
    drop(b);
    other.insert("still", "up").unwrap();
    eventually("b still replicates", || a.get(b"still").is_some()).await;
    assert_eq!(a.stats().connected, 1);

    drop(other);
    eventually("a sees b disconnect", || a.stats().connected == 0).await;
    eventually("b said goodbye", || left(&a, "b")).await;
    eventually("b's port is free again", || port_free(b_addr)).await;
    a.shutdown().await;
}

/// The RESP server holds a handle while it serves: the peer outlives the
/// application's own handle, and stops when the server does.
#[cfg(feature = "server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_resp_server_keeps_the_peer_until_it_stops() {
    use meshcache::resp::{serve, RespConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let ca = EphemeralCa::new().unwrap();
    let (a, b) = pair(&ca).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(b.clone(), listener, RespConfig::default(), async move {
        let _ = stopped.await;
    }));
    drop(b);

    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\nserved\r\n").await.unwrap();
    let mut reply = [0u8; 5];
    c.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    eventually("the write through b reaches a", || a.get(b"k").as_deref() == Some(&b"served"[..])).await;
    assert_eq!(a.stats().connected, 1);

    drop(c);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    eventually("b stops with its server", || a.stats().connected == 0).await;
    eventually("b said goodbye", || left(&a, "b")).await;
    a.shutdown().await;
}

/// Serves `mesh`'s HTTP endpoints (without a metrics recorder) on a port
/// the system picks, for the rest of the test.
#[cfg(feature = "server")]
async fn probes(mesh: &Mesh) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshcache::http::serve(listener, mesh.clone(), None, std::future::pending::<()>()));
    addr
}

/// Readiness: `loading` until a seeded peer has synced, `ready`, then
/// `draining` and `stopped`; the readiness probe answers 503 with the
/// reason for each but `ready`, and the liveness probe 200 throughout.
#[cfg(feature = "server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_bootstrap_drain_and_stop_and_the_probes_say_so() {
    use common::http::request;
    let ca = EphemeralCa::new().unwrap();
    let silent = silent_seed();
    let config = MeshConfig { bootstrap_timeout: Duration::from_secs(3600), ..MeshConfig::for_test("p") };
    let p = Mesh::builder().config(config).seeds([silent.local_addr().unwrap()]).tls(ca.issue("p").unwrap());
    let p = p.start().await.unwrap();
    let http = probes(&p).await;
    assert_eq!(p.readiness(), Readiness::Loading);
    let (status, body) = request(http, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("loading: not yet synced with a seed"), "{body}");
    assert_eq!(request(http, "GET", "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(request(http, "GET", "/metrics").await.0, 404, "no recorder given");

    let a = start(&ca, "a", &[]).await;
    let http = probes(&a).await;
    assert_eq!(a.readiness(), Readiness::Ready, "a peer without seeds is ready at once");
    assert_eq!(request(http, "GET", "/readyz").await, (200, "ready\n".to_owned()));
    a.start_draining();
    assert_eq!(a.readiness(), Readiness::Draining);
    a.insert("k", "still taken while draining").unwrap();
    let (status, body) = request(http, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining: leaving the mesh\n"));
    a.shutdown().await;
    assert_eq!(a.readiness(), Readiness::Stopped);
    let (status, body) = request(http, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "stopped: the peer left the mesh\n"));
    assert_eq!(request(http, "GET", "/healthz").await.0, 200);
    p.shutdown().await;
}

/// A shutdown first drains: each peer's pushes are sent and confirmed
/// before the goodbye. Here the link is slow (10 ms each way) and the
/// receiver's window small (64 KiB), so 1.6 MB of writes take seconds to
/// cross, longer than a goodbye; anti-entropy cannot help once `a` is
/// gone. Every write `a` took
/// before its shutdown is on `b` afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_every_queued_write_to_its_peers_first() {
    const WRITES: usize = 400;
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(7);
    let start_faulty = |name: &str, seeds: Vec<SocketAddr>| {
        let config = MeshConfig {
            receive_window: Some(64 * 1024),
            drain_timeout: Duration::from_secs(60),
            ..MeshConfig::for_test(name)
        };
        Mesh::builder()
            .config(config)
            .seeds(seeds)
            .socket(faults.socket("127.0.0.1:0".parse().unwrap()).unwrap())
            .tls(ca.issue(name).unwrap())
            .start()
    };
    let a = start_faulty("a", Vec::new()).await.unwrap();
    let b = start_faulty("b", vec![a.local_addr()]).await.unwrap();
    eventually("a and b linked", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(DEADLINE).await);
    faults.delay(Duration::from_millis(10));
    let value = vec![b'v'; 4096];
    for i in 0..WRITES {
        a.insert(format!("k{i}"), value.clone()).unwrap();
    }
    let before = b.len();
    a.shutdown().await;
    assert!(before < WRITES, "the writes crossed before the shutdown ({before}): the test shows nothing");
    eventually("b says a left", || left(&b, "a")).await;
    // What b received it applies, even after a closed the connection.
    let missing = || (0..WRITES).filter(|i| !b.contains_key(format!("k{i}"))).collect::<Vec<usize>>();
    let all = meshcache::wait::Wait::new(DEADLINE).until("b holds every write a took", || missing().is_empty()).await;
    if all.is_err() {
        let m = missing();
        panic!("{} of {WRITES} writes missing on b, such as k{}", m.len(), m[0]);
    }
    b.shutdown().await;
}
