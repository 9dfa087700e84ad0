//! A connection's end: its close codes, closing it on a protocol error, and
//! what its close undoes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::VarInt;

use super::driver::conn_id;
use super::inner::Inner;
use super::queue::PushQueue;
use super::stream::StreamError;
use crate::membership::MemberId;

/// Connection close codes (application level).
pub(super) const CODE_GOODBYE: VarInt = VarInt::from_u32(0);
pub(super) const CODE_DUPLICATE: VarInt = VarInt::from_u32(1);
pub(super) const CODE_REFUSED: VarInt = VarInt::from_u32(2);
pub(super) const CODE_PROTOCOL: VarInt = VarInt::from_u32(3);
pub(super) const CODE_SUPERSEDED: VarInt = VarInt::from_u32(4);

/// Waits for a connection to close, then unlinks it: from the peer table if
/// it was the peer's link, and from the machine.
pub(super) async fn watch_close(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    id: MemberId,
    queue: Option<Arc<PushQueue>>,
) {
    let reason = tokio::select! {
        r = conn.closed() => r,
        _ = inner.cancel.cancelled() => return,
    };
    if let Some(q) = &queue {
        q.close();
    }
    inner.rtts.remember(conn.remote_address(), conn.rtt());
    let removed = {
        let mut peers = inner.peers.lock();
        let current = peers.get(&id.name).is_some_and(|p| p.conn.stable_id() == conn.stable_id());
        if current {
            peers.remove(&id.name);
        }
        current
    };
    if removed {
        // The member stays known (and pauses collection) until it says
        // goodbye, is superseded, or is forgotten.
        tracing::info!(peer = %id, %reason, "peer disconnected");
    }
    let cid = conn_id(&conn);
    inner.with_links(|d, now| {
        d.conns.remove(&cid);
        d.links.handle_conn_closed(now, cid);
    });
}

/// Counts and logs a peer's malformed input, and closes the connection:
/// one that breaks the protocol cannot be trusted with the next frame.
pub(super) fn note_protocol_error(inner: &Inner, conn: &quinn::Connection, what: &str, e: &StreamError) {
    if e.is_protocol() {
        inner.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meshcache_protocol_errors_total").increment(1);
        tracing::error!(remote = %conn.remote_address(), what, error = %e, "malformed input from peer: closing the connection");
        conn.close(CODE_PROTOCOL, b"protocol error");
    }
}

/// Whether a connection ended in its TLS handshake: a certificate refused,
/// by this peer or by the other (QUIC carries TLS alerts as the crypto
/// error codes 0x100-0x1ff).
fn tls_refusal(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// Counts and logs a connection that ended in its TLS handshake, and
/// returns whether it did. A warning, since it is what an operator sees of
/// a peer with a certificate from a CA this peer does not trust (or the
/// reverse), as during a CA roll-over done out of order.
pub(super) fn note_tls_refusal(
    inner: &Inner,
    remote: std::net::SocketAddr,
    dialed: bool,
    e: &quinn::ConnectionError,
) -> bool {
    if !tls_refusal(e) {
        return false;
    }
    inner.counters.tls_refused.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("meshcache_tls_refused_total").increment(1);
    let side = if dialed { "dialed" } else { "incoming" };
    tracing::warn!(%remote, side, error = %e, "TLS handshake refused: a certificate not trusted on one side");
    true
}
