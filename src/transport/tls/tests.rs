//! Mutual TLS over real QUIC on loopback: who is accepted, who is refused,
//! and who sees which name.

use std::time::Duration as StdDuration;

use super::*;
use crate::transport::certs::{EphemeralCa, SERVER_NAME};
use rustls::RootCertStore;

const WAIT: StdDuration = StdDuration::from_secs(10);

/// What the server saw of the one connection attempt. (The strings are
/// read only through `Debug`, in assertion messages.)
#[derive(Debug)]
#[allow(dead_code)]
enum Served {
    /// The handshake failed on the server.
    Refused(String),
    /// The connection was accepted but no stream with data arrived.
    NoStream(String),
    /// A stream with data arrived (and was answered).
    Data { peer: Option<String>, data: Vec<u8> },
}

/// Runs one server (accepting one connection) and one client against
/// it. Returns the client's outcome (reply and server name, or the
/// error) and what the server saw.
async fn exchange(
    server_cfg: quinn::ServerConfig,
    client_cfg: quinn::ClientConfig,
) -> (Result<(Vec<u8>, Option<String>), String>, Served) {
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let accepting = server.clone();
    let server_task = tokio::spawn(async move {
        let incoming = accepting.accept().await.expect("endpoint open");
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(e) => return Served::Refused(e.to_string()),
        };
        let peer = peer_name(&conn);
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Served::NoStream(e.to_string()),
        };
        let data = match recv.read_to_end(1024).await {
            Ok(d) => d,
            Err(e) => return Served::NoStream(e.to_string()),
        };
        let mut reply = b"pong:".to_vec();
        reply.extend_from_slice(&data);
        let _ = send.write_all(&reply).await;
        let _ = send.finish();
        // Keep the connection until the client has read the reply and closed.
        let _ = conn.closed().await;
        Served::Data { peer, data }
    });

    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    let client_run = async {
        let conn = client.connect(addr, SERVER_NAME).map_err(|e| format!("connect: {e}"))?.await;
        let conn = conn.map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(b"ping").await.map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let reply = recv.read_to_end(1024).await.map_err(|e| format!("read: {e} ({e:?})"))?;
        let name = peer_name(&conn);
        conn.close(0u32.into(), b"done");
        Ok::<_, String>((reply, name))
    };
    let client_result = tokio::time::timeout(WAIT, client_run).await.expect("client timed out");
    let served = tokio::time::timeout(WAIT, server_task).await.expect("server timed out").unwrap();
    client.close(0u32.into(), b"bye");
    server.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(WAIT, client.wait_idle()).await;
    let _ = tokio::time::timeout(WAIT, server.wait_idle()).await;
    (client_result, served)
}

#[tokio::test]
async fn quic_mutual_tls_round_trip() {
    let ca = EphemeralCa::new().unwrap();
    let (alpha, beta) = (ca.issue("alpha").unwrap(), ca.issue("beta").unwrap());
    let (client, served) = exchange(quinn_server_config(&alpha).unwrap(), quinn_client_config(&beta).unwrap()).await;
    let (reply, server_name) = client.expect("client exchange");
    assert_eq!(reply, b"pong:ping");
    assert_eq!(server_name.as_deref(), Some("alpha"), "client sees the server's node name");
    match served {
        Served::Data { peer, data } => {
            assert_eq!(data, b"ping");
            assert_eq!(peer.as_deref(), Some("beta"), "server sees the client's node name");
        }
        other => panic!("server did not serve: {other:?}"),
    }
}

#[tokio::test]
async fn quic_refuses_client_from_foreign_ca() {
    let ca = EphemeralCa::new().unwrap();
    let server = ca.issue("alpha").unwrap();
    let foreign = EphemeralCa::new().unwrap().issue("mallory").unwrap();
    // The client trusts the real CA (so it accepts the server) but
    // presents a certificate from a foreign CA.
    let client = Identity { cas: vec![ca.ca_der()], ..foreign };
    let (result, served) = exchange(quinn_server_config(&server).unwrap(), quinn_client_config(&client).unwrap()).await;
    // The client's handshake may complete (TLS 1.3): the refusal shows
    // on the first stream operation at the latest.
    assert!(result.is_err(), "client with a foreign certificate exchanged data: {result:?}");
    assert!(matches!(&served, Served::Refused(r) if r.contains("BadSignature")), "server: {served:?}");
}

#[tokio::test]
async fn quic_refuses_client_without_certificate() {
    let ca = EphemeralCa::new().unwrap();
    let server = ca.issue("alpha").unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let client_cfg =
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let (result, served) = exchange(quinn_server_config(&server).unwrap(), client_cfg).await;
    assert!(result.is_err(), "client without a certificate exchanged data: {result:?}");
    assert!(matches!(&served, Served::Refused(r) if r.contains("no certificates")), "server: {served:?}");
}

#[tokio::test]
async fn quic_client_refuses_server_from_foreign_ca() {
    let ca = EphemeralCa::new().unwrap();
    let client = ca.issue("beta").unwrap();
    let foreign = EphemeralCa::new().unwrap().issue("alpha").unwrap();
    let (result, served) =
        exchange(quinn_server_config(&foreign).unwrap(), quinn_client_config(&client).unwrap()).await;
    let err = result.expect_err("client accepted a server from a foreign CA");
    assert!(err.starts_with("handshake:"), "the client refuses during its handshake: {err}");
    assert!(!matches!(served, Served::Data { .. }), "server: {served:?}");
}
