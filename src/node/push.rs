//! The uni streams, both ways: pushed delta batches, pub/sub messages and
//! goodbyes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::conn::note_protocol_error;
use super::inner::Inner;
use super::memory::traffic_check;
use super::queue::{Aside, PushQueue};
use super::stream::{kind, write_message, FrameReader, StreamError};
use crate::membership::MemberId;
use crate::replica::PeerError;
use crate::wire::{Lease, Message, Publication};

/// Pushes queued writes, then the messages queued behind them, to one
/// peer over one long-lived uni stream, until the connection or the peer
/// stops, or the queue drains (the peer is leaving); then tells the queue
/// how it ended.
pub(super) async fn push_sender(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, queue: Arc<PushQueue>) {
    let flushed = send_pushes(&inner, &conn, &id, &queue).await;
    queue.set_ended(flushed);
}

/// The sender's loop. True only if it drained: every write queued was
/// sent and the other side acknowledged all of it.
async fn send_pushes(inner: &Arc<Inner>, conn: &quinn::Connection, id: &MemberId, queue: &PushQueue) -> bool {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return false,
    };
    let mut sent_members_version = u64::MAX;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return false,
            _ = conn.closed() => return false,
            _ = queue.notify.notified() => {}
        }
        if queue.is_closed() {
            return false;
        }
        if !inner.config.push_delay.is_zero() && !queue.is_draining() {
            tokio::time::sleep(inner.config.push_delay).await;
        } else {
            // The write that woke us is usually one of many that tasks
            // ready on this runtime (clients' connections) are about to
            // make: let them run first, so that one batch carries their
            // writes rather than one batch, one frame and one datagram
            // each. An idle runtime comes straight back.
            tokio::task::yield_now().await;
        }
        loop {
            let batch = queue.take(inner.config.push_batch_bytes, inner.config.max_frame - 4096);
            if batch.overflowed {
                inner.counters.queue_overflows.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("meshcache_push_queue_overflows_total").increment(1);
                tracing::warn!(peer = %id, "push queue overflowed: falling back to anti-entropy");
                inner.with_links(|d, now| d.links.handle_queue_overflow(now, &id.name));
            }
            if batch.entries.is_empty() && !batch.force && batch.messages.is_empty() {
                break;
            }
            let writes = !batch.entries.is_empty() || batch.force;
            if writes && !push_writes(inner, &mut send, id, batch.entries, &mut sent_members_version).await {
                return false;
            }
            if !batch.messages.is_empty() && !push_messages(inner, &mut send, id, batch.messages).await {
                return false;
            }
            if !queue.has_more() {
                break;
            }
        }
        if queue.is_draining() && !queue.has_more() {
            // Everything queued is written. Finishing the stream and
            // waiting until the other side acknowledged all of it tells
            // that it holds every write; data it has received stays
            // readable after this peer closes the connection.
            if send.finish().is_err() {
                return false;
            }
            return tokio::select! {
                _ = inner.cancel.cancelled() => false,
                r = send.stopped() => matches!(r, Ok(None)),
            };
        }
    }
}

/// Sends one batch of writes. False once the stream is gone.
async fn push_writes(
    inner: &Arc<Inner>,
    send: &mut quinn::SendStream,
    id: &MemberId,
    entries: Vec<(bytes::Bytes, crate::store::Register)>,
    sent_members_version: &mut u64,
) -> bool {
    let version = inner.replica.members_version();
    let with_members = version != *sent_members_version;
    *sent_members_version = version;
    let n = entries.len() as u64;
    // The path's trace points (target `meshcache::path`, here, on the
    // receiving side and around RESP requests) time a write's way to a
    // peer: scripts/lag-path.
    tracing::trace!(target: "meshcache::path", peer = %id.name, writes = n, "push batch taken");
    let msg = Message::Deltas(inner.replica.deltas(entries, with_members));
    let frame = match inner.codec.encode_to_bytes(&msg) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(peer = %id, error = %e, "cannot encode a push batch; the peer will be repaired by anti-entropy");
            inner.with_links(|d, now| d.links.request_round(now, &id.name));
            return true;
        }
    };
    let len = frame.len() as u64;
    // The frame itself goes into the stream's send buffer, not a copy of
    // it (`write_all` would copy a 64 KiB batch once more).
    if send.write_chunk(frame).await.is_err() {
        return false;
    }
    tracing::trace!(target: "meshcache::path", peer = %id.name, writes = n, "push batch written");
    let c = &inner.counters;
    c.deltas_sent.fetch_add(n, Ordering::Relaxed);
    c.push_batches_sent.fetch_add(1, Ordering::Relaxed);
    c.push_bytes_sent.fetch_add(len, Ordering::Relaxed);
    metrics::counter!("meshcache_deltas_sent_total").increment(n);
    metrics::counter!("meshcache_push_bytes_sent_total").increment(len);
    true
}

/// Sends pub/sub messages and leases, a frame per run of one kind, in
/// order. False once the stream is gone.
async fn push_messages(inner: &Inner, send: &mut quinn::SendStream, id: &MemberId, messages: Vec<Aside>) -> bool {
    let mut published = Vec::new();
    let mut leases = Vec::new();
    for m in messages {
        match m {
            Aside::Message(p) => {
                if !leases.is_empty() && !push_leases(inner, send, id, std::mem::take(&mut leases)).await {
                    return false;
                }
                published.push(p);
            }
            Aside::Lease(l) => {
                if !published.is_empty() && !push_published(inner, send, id, std::mem::take(&mut published)).await {
                    return false;
                }
                leases.push(l);
            }
        }
    }
    (published.is_empty() || push_published(inner, send, id, published).await)
        && (leases.is_empty() || push_leases(inner, send, id, leases).await)
}

/// Sends leases. A lease that cannot be encoded is dropped: its peers then
/// load the key themselves, which leases only save them from.
async fn push_leases(inner: &Inner, send: &mut quinn::SendStream, id: &MemberId, leases: Vec<Lease>) -> bool {
    let frame = match inner.codec.encode_to_bytes(&Message::Leases(leases)) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(peer = %id, error = %e, "fill leases dropped");
            return true;
        }
    };
    let len = frame.len() as u64;
    if send.write_chunk(frame).await.is_err() {
        return false;
    }
    inner.counters.push_bytes_sent.fetch_add(len, Ordering::Relaxed);
    true
}

/// Sends pub/sub messages. False once the stream is gone; a message that
/// cannot be encoded (larger than a frame) is dropped, as at most once
/// allows.
async fn push_published(
    inner: &Inner,
    send: &mut quinn::SendStream,
    id: &MemberId,
    messages: Vec<Publication>,
) -> bool {
    let n = messages.len();
    let frame = match inner.codec.encode_to_bytes(&Message::Published(messages)) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(peer = %id, error = %e, messages = n, "pub/sub messages dropped");
            return true;
        }
    };
    let len = frame.len() as u64;
    if send.write_chunk(frame).await.is_err() {
        return false;
    }
    inner.counters.push_bytes_sent.fetch_add(len, Ordering::Relaxed);
    metrics::counter!("meshcache_push_bytes_sent_total").increment(len);
    true
}

/// Accepts the peer's uni streams: pushes (writes and pub/sub messages)
/// and goodbyes, over a link at protocol `version`.
pub(super) async fn uni_acceptor(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, version: u16) {
    loop {
        let recv = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = conn.accept_uni() => match r { Ok(r) => r, Err(_) => return },
        };
        let (inner, conn, id) = (inner.clone(), conn.clone(), id.clone());
        inner.clone().tasks.spawn(async move {
            let mut reader = FrameReader::new(recv, inner.codec);
            // A peer writing fast fills this one's memory with what it
            // merges and what QUIC buffers, faster than the memory loop
            // reads it on a saturated machine: the stream reads it too.
            let check = traffic_check(&inner);
            let mut checked_at = 0;
            loop {
                let m = tokio::select! {
                    _ = inner.cancel.cancelled() => return,
                    m = reader.next() => m,
                };
                if check.every > 0 && reader.received() - checked_at >= check.every {
                    checked_at = reader.received();
                    (check.run)();
                }
                match m {
                    // What a peer of that version could not decode.
                    Ok(Some(m)) if m.since() > version => {
                        note_protocol_error(
                            &inner,
                            &conn,
                            "push",
                            &StreamError::Protocol(format!("{} on a link at protocol version {version}", kind(&m))),
                        );
                        return;
                    }
                    Ok(Some(Message::Deltas(batch))) => {
                        tracing::trace!(target: "meshcache::path", peer = %id.name, writes = batch.entries.len(), "push batch read");
                        if batch.from.name != id.name {
                            note_protocol_error(
                                &inner,
                                &conn,
                                "push",
                                &StreamError::Protocol(format!("push from {} on {}'s connection", batch.from, id)),
                            );
                            return;
                        }
                        let n = batch.entries.len() as u64;
                        match inner.replica.handle_deltas(batch, inner.env.now_ms()) {
                            Ok(out) => {
                                inner.counters.deltas_received.fetch_add(n, Ordering::Relaxed);
                                metrics::counter!("meshcache_deltas_received_total").increment(n);
                                inner.publish_all(out.changes);
                                inner.note_members();
                                tracing::trace!(target: "meshcache::path", peer = %id.name, "push batch merged");
                            }
                            Err(PeerError::SelfSuperseded) => return,
                            Err(e) => tracing::warn!(peer = %id, error = %e, "push dropped"),
                        }
                    }
                    Ok(Some(Message::Leases(leases))) => {
                        let now = inner.env.now_ms();
                        for l in leases {
                            inner.leases.handle(l, now);
                        }
                    }
                    Ok(Some(Message::Published(messages))) => {
                        inner.counters.messages_received.fetch_add(messages.len() as u64, Ordering::Relaxed);
                        for m in &messages {
                            inner.listeners.deliver(m);
                        }
                    }
                    Ok(Some(Message::Goodbye(who))) => {
                        if who == id {
                            tracing::info!(peer = %id, "peer left the mesh");
                            inner.replica.handle_goodbye(&who);
                            inner.note_members();
                        }
                        return;
                    }
                    Ok(Some(other)) => {
                        note_protocol_error(
                            &inner,
                            &conn,
                            "push",
                            &StreamError::Protocol(format!("{} on a push stream", kind(&other))),
                        );
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        note_protocol_error(&inner, &conn, "push", &e);
                        return;
                    }
                }
            }
        });
    }
}

/// Tells every connected peer that this incarnation leaves for good.
pub(super) async fn say_goodbye(inner: &Arc<Inner>) {
    let conns: Vec<(quinn::Connection, MemberId)> =
        inner.peers.lock().values().map(|p| (p.conn.clone(), p.id.clone())).collect();
    let me = inner.replica.me().clone();
    let sends = conns.into_iter().map(|(conn, id)| {
        let (codec, me) = (inner.codec, me.clone());
        async move {
            let r = async {
                let mut s = conn.open_uni().await.ok()?;
                write_message(&mut s, &codec, &Message::Goodbye(me)).await.ok()?;
                s.finish().ok()?;
                s.stopped().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(1), r).await.is_err() {
                tracing::debug!(peer = %id, "goodbye not acknowledged");
            }
        }
    });
    futures_join_all(sends).await;
}

/// Runs every future to its end, concurrently.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(fs: impl Iterator<Item = F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in fs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
