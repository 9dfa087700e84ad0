//! The hello, from either side: what this peer says, and the machine's
//! verdict on what the other says.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::driver::{conn_id, CoreView};
use super::inner::Inner;
use super::links::{Side, Verdict};
use super::versions::refused_peer;
use crate::membership::MemberId;
use crate::transport::tls;
use crate::wire::{Hello, Refusal, VersionRange};

/// How long a hello may take.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Has the machine check a peer's hello and the version range it sent
/// after it, if any; an accepted connection is then the peer's link or a
/// retired duplicate, as the machine's actions say.
pub(super) fn check_hello(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    side: Side,
    h: &Hello,
    versions: Option<VersionRange>,
) -> Verdict {
    let id = conn_id(conn);
    let cert = tls::peer_name(conn);
    let now_ms = inner.env.now_ms();
    let verdict = inner.with_links(|d, now| {
        // Registered first: the actions executed on the way out name it.
        d.conns.insert(id, (conn.clone(), h.from.clone()));
        let v = d.links.handle_hello(now, id, side, h, versions, cert.as_deref(), &mut CoreView { inner, now_ms });
        if !matches!(v, Verdict::Accept { .. }) {
            d.conns.remove(&id);
        }
        v
    });
    if let Verdict::Accept { version } = verdict {
        if version < inner.versions.hi {
            tracing::info!(peer = %h.from, version, ours = %inner.versions,
                "peer speaks an older protocol: its link uses version {version}");
        }
        let _ = inner.replica.store().clock().observe(h.hlc, now_ms);
        if let Some(a) = h.listen {
            inner.replica.set_peer_addr(&h.from, a);
        }
        inner.note_members();
    }
    verdict
}

/// Counts and logs a peer refused at its hello; `theirs` is the version
/// range it speaks.
pub(super) fn refused(inner: &Inner, peer: &MemberId, r: &Refusal, theirs: VersionRange) {
    inner.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("meshcache_refused_peers_total").increment(1);
    tracing::warn!(%peer, reason = ?r, "peer refused at hello");
    refused_peer(inner, &peer.name, r, theirs);
}
