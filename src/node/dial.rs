//! Dialing peers: the outgoing side of the hello.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;

use super::builder::transport_config;
use super::conn::{note_tls_refusal, CODE_DUPLICATE, CODE_PROTOCOL, CODE_REFUSED};
use super::driver::CoreView;
use super::hello::{check_hello, refused};
use super::inner::Inner;
use super::links::{Side, Verdict};
use super::stream::{kind, FrameReader};
use super::versions::{hello_frames, hello_version, read_versions, refused_by, spoke_range};
use crate::transport::certs;
use crate::wire::{Message, VersionRange};

/// Dials `addr` and runs the hello, as a probe of a link lost moments ago
/// if `probe` (`links`). Returns the peer's name on success. Until the
/// handshake completes, `restart` starts it afresh (`Action::Restart`).
pub(super) async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    probe: bool,
    restart: &Notify,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let conn = loop {
        let plan = inner.rtts.plan(addr, probe);
        let mut client = inner.tls.client();
        if plan.initial_rtt.is_some() {
            client.transport_config(transport_config(&inner.config, plan.initial_rtt));
        }
        let connecting = inner.endpoint.connect_with(client, addr, certs::SERVER_NAME)?;
        let limit = plan.timeout.unwrap_or(inner.config.idle_timeout);
        let attempt = tokio::select! {
            r = tokio::time::timeout(limit, connecting) => r,
            // Dropping the attempt abandons it: its Initials went into a
            // cut that has lifted, and a new one sends its own at once.
            _ = restart.notified() => {
                tracing::debug!(%addr, "the network carries again: dialing afresh");
                continue;
            }
        };
        match attempt {
            Ok(Ok(conn)) => break conn,
            Ok(Err(e)) => {
                if !note_tls_refusal(inner, addr, true, &e) && matches!(e, quinn::ConnectionError::TimedOut) {
                    inner.rtts.timed_out(addr);
                }
                return Err(e.into());
            }
            // Dropping the attempt abandons it; the machine backs off and
            // dials again with a fresh probe timeout (`rtt`).
            Err(_) => {
                inner.rtts.timed_out(addr);
                return Err("no handshake in time".into());
            }
        }
    };
    inner.rtts.remember(addr, conn.rtt());
    // Under TLS 1.3 a client the server rejects still sees the handshake
    // succeed: authentication counts only once the hello exchange is done,
    // and a refusal of this peer's certificate shows in the close.
    let refused_tls = |e: Box<dyn std::error::Error + Send + Sync>| {
        if let Some(reason) = conn.close_reason() {
            note_tls_refusal(inner, addr, true, &reason);
        }
        e
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|e| refused_tls(e.into()))?;
    let sent = hello_version(inner, addr);
    send.write_all(&hello_frames(inner, sent)?).await.map_err(|e| refused_tls(e.into()))?;
    let _ = send.finish();
    let mut reader = FrameReader::new(recv, inner.codec);
    match reader.next().await.map_err(|e| refused_tls(e.into()))? {
        Some(Message::Hello(h)) => {
            let versions = read_versions(&mut reader).await?;
            if versions.is_some() {
                spoke_range(inner, addr);
            }
            match check_hello(inner, &conn, Side::Dialer(addr), &h, versions) {
                Verdict::Accept { .. } => Ok(h.from.name),
                Verdict::ToSelf => {
                    conn.close(CODE_DUPLICATE, b"self");
                    Err("dialed itself".into())
                }
                Verdict::Refuse(r) => {
                    refused(inner, &h.from, &r, versions.unwrap_or(VersionRange::single(h.version)));
                    conn.close(CODE_REFUSED, b"refused");
                    Err(format!("refused {}: {r:?}", h.from).into())
                }
            }
        }
        Some(Message::Refused(r)) => {
            if !refused_by(inner, addr, &r, sent) {
                tracing::error!(%addr, reason = ?r, "peer refused this peer's hello");
            }
            let now_ms = inner.env.now_ms();
            inner.with_links(|d, _| d.links.handle_refused(&r, &mut CoreView { inner, now_ms }));
            Err(format!("refused by {addr}: {r:?}").into())
        }
        other => {
            conn.close(CODE_PROTOCOL, b"expected hello");
            Err(format!("expected a hello, got {:?}", other.as_ref().map(kind)).into())
        }
    }
}
