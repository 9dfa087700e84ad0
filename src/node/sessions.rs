//! Anti-entropy sessions on bi streams, both ways: the rounds this peer
//! starts, and those it answers once the machine lets them run.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::conn::note_protocol_error;
use super::driver::{conn_id, Go};
use super::inner::Inner;
use super::links::SessionId;
use super::memory::traffic_check;
use super::stream::{run_session, SessionResult};
use crate::membership::MemberId;
use crate::sync::Session;
use crate::wire::HashKey;

/// Accepts the peer's bi streams: anti-entropy sessions it initiates. Each
/// runs once the machine lets it (see `Links::handle_session_offered`).
pub(super) async fn bi_acceptor(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, version: u16) {
    loop {
        let (send, recv) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = conn.accept_bi() => match r { Ok(r) => r, Err(_) => return },
        };
        let (tx, go) = oneshot::channel();
        let session = inner.with_links(|d, now| {
            let s = d.links.handle_session_offered(now, conn_id(&conn), &id.name);
            // Before the lock is released, so that the go-ahead, which may
            // be among the actions queued just now, finds it.
            d.responders.insert(s, tx);
            s
        });
        let (inner, conn, id) = (inner.clone(), conn.clone(), id.clone());
        inner.clone().tasks.spawn(async move {
            let go = tokio::select! {
                _ = inner.cancel.cancelled() => None,
                r = go => r.ok(),
            };
            if let Some(go) = go {
                let now = inner.env.now_ms();
                let s = match go {
                    Go::Respond => Session::respond(now),
                    Go::Decline => Session::decline(now),
                }
                .with_version(version)
                .with_hash_key(HashKey(inner.env.random_u64(), inner.env.random_u64()));
                let env = inner.env.clone();
                let publish = |c| inner.publish_all(c);
                let r = run_session(
                    &inner.replica,
                    s,
                    send,
                    recv,
                    inner.codec,
                    move || env.now_ms(),
                    || {},
                    publish,
                    traffic_check(&inner),
                )
                .await;
                finish_session(&inner, &conn, &id, r);
            }
            inner.with_links(|d, now| d.links.handle_session_finished(now, session));
            inner.note_members();
        });
    }
}

/// Runs a round this peer started, reporting its accept and its end.
pub(super) async fn initiate(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    id: MemberId,
    version: u16,
    session: SessionId,
) {
    if let Ok((send, recv)) = conn.open_bi().await {
        let s = Session::initiate(&inner.replica, inner.env.now_ms())
            .with_version(version)
            .with_hash_key(HashKey(inner.env.random_u64(), inner.env.random_u64()));
        let accepted = {
            let inner = inner.clone();
            move || inner.with_links(|d, _| d.links.handle_session_accepted(session))
        };
        let env = inner.env.clone();
        let publish = |c| inner.publish_all(c);
        let r = run_session(
            &inner.replica,
            s,
            send,
            recv,
            inner.codec,
            move || env.now_ms(),
            accepted,
            publish,
            traffic_check(&inner),
        )
        .await;
        let declined = r.declined;
        finish_session(&inner, &conn, &id, r);
        if declined {
            inner.counters.ae_declined.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("meshcache_ae_declined_total").increment(1);
            inner.with_links(|d, now| d.links.handle_session_declined(now, session));
            inner.note_members();
            return;
        }
    }
    inner.with_links(|d, now| d.links.handle_session_finished(now, session));
    inner.note_members();
}

/// Accounts for a session, and publishes what it merged: a session that
/// failed half-way merged what it received before it failed.
fn finish_session(inner: &Inner, conn: &quinn::Connection, id: &MemberId, res: SessionResult) {
    inner.sessions_ended.notify_waiters();
    let c = &inner.counters;
    c.ae_bytes_sent.fetch_add(res.stats.bytes_sent, Ordering::Relaxed);
    c.ae_bytes_received.fetch_add(res.stats.bytes_received, Ordering::Relaxed);
    c.ae_entries_sent.fetch_add(res.stats.entries_sent, Ordering::Relaxed);
    c.ae_entries_received.fetch_add(res.stats.entries_received, Ordering::Relaxed);
    c.ae_summaries_deferred.fetch_add(res.stats.summaries_deferred, Ordering::Relaxed);
    c.ae_summary_window_waits.fetch_add(res.stats.summary_window_waits, Ordering::Relaxed);
    metrics::counter!("meshcache_ae_bytes_sent_total").increment(res.stats.bytes_sent);
    match &res.error {
        None if res.declined => {
            tracing::debug!(peer = %id, "anti-entropy round declined: the peer waits on a round of its own")
        }
        None => {
            if res.complete {
                c.ae_rounds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("meshcache_ae_rounds_total").increment(1);
            }
            tracing::debug!(peer = %id, mode = ?res.stats.mode, sent = res.stats.bytes_sent,
                received = res.stats.bytes_received, changes = res.changes.len(), "anti-entropy round");
        }
        Some(e) => {
            c.ae_failed.fetch_add(1, Ordering::Relaxed);
            c.ae_entries_sent_failed.fetch_add(res.stats.entries_sent, Ordering::Relaxed);
            note_protocol_error(inner, conn, "anti-entropy", e);
            if !inner.cancel.is_cancelled() {
                tracing::warn!(peer = %id, error = %e, sent = res.stats.bytes_sent, merged = res.changes.len(),
                    "anti-entropy round failed");
            }
        }
    }
    inner.publish_all(res.changes);
}
