//! A peer lives as long as a handle to it: dropping the last `Mesh` stops
//! it (tasks end, connections close after a goodbye, the socket is freed),
//! while anything that serves through a handle keeps it running. Over real
//! QUIC on loopback.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::mesh::pair;
use common::wait::eventually;
use meshcache::membership::Status;
use meshcache::transport::certs::EphemeralCa;
use meshcache::Mesh;

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
