//! The hello, from either side: what this peer says, and the machine's
//! verdict on what the other says.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::driver::{conn_id, CoreView};
use super::inner::Inner;
use super::links::{Side, Verdict};
use crate::transport::tls;
use crate::wire::{Hello, Message, Refusal, PROTOCOL_VERSION};

/// How long a hello may take.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// This peer's hello.
pub(super) fn my_hello(inner: &Inner) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        from: inner.replica.me().clone(),
        physical_ms: inner.env.now_ms(),
        hlc: inner.replica.store().clock().last(),
        listen: Some(inner.advertise),
    })
}

/// Has the machine check a peer's hello; an accepted connection is then
/// the peer's link or a retired duplicate, as the machine's actions say.
pub(super) fn check_hello(inner: &Arc<Inner>, conn: &quinn::Connection, side: Side, h: &Hello) -> Verdict {
    let id = conn_id(conn);
    let cert = tls::peer_name(conn);
    let now_ms = inner.env.now_ms();
    let verdict = inner.with_links(|d, now| {
        // Registered first: the actions executed on the way out name it.
        d.conns.insert(id, (conn.clone(), h.from.clone()));
        let v = d.links.handle_hello(now, id, side, h, cert.as_deref(), &mut CoreView { inner, now_ms });
        if v != Verdict::Accept {
            d.conns.remove(&id);
        }
        v
    });
    if verdict == Verdict::Accept {
        let _ = inner.replica.store().clock().observe(h.hlc, now_ms);
        if let Some(a) = h.listen {
            inner.replica.set_peer_addr(&h.from, a);
        }
        inner.note_members();
    }
    verdict
}

/// Counts and logs a peer refused at its hello.
pub(super) fn refused(inner: &Inner, peer: &str, r: &Refusal) {
    inner.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("meshcache_refused_peers_total").increment(1);
    tracing::warn!(peer, reason = ?r, "peer refused at hello");
}
