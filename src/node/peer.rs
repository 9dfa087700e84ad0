//! Connections: dialing and accepting, the hello, and the tasks that carry
//! pushes and anti-entropy sessions over one connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, not std's: it is what a paused or simulated runtime moves.
use tokio::time::Instant;

use quinn::VarInt;
use rand::seq::IndexedRandom;
use rand::Rng;
use tokio::sync::mpsc;

use super::queue::PushQueue;
use super::stream::{kind, run_session, write_message, FrameReader, StreamError};
use super::{now_ms, Inner, Origin, PeerConn};
use crate::membership::{Learned, MemberId};
use crate::replica::PeerError;
use crate::sync::Session;
use crate::transport::tls;
use crate::wire::{Hello, Message, Refusal, PROTOCOL_VERSION};

/// Connection close codes (application level).
pub(crate) const CODE_GOODBYE: VarInt = VarInt::from_u32(0);
pub(crate) const CODE_DUPLICATE: VarInt = VarInt::from_u32(1);
pub(crate) const CODE_REFUSED: VarInt = VarInt::from_u32(2);
pub(crate) const CODE_PROTOCOL: VarInt = VarInt::from_u32(3);
pub(crate) const CODE_SUPERSEDED: VarInt = VarInt::from_u32(4);

/// How long a hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Redial backoff bounds; jittered so that a mesh restarting at once does
/// not dial in lockstep.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn my_hello(inner: &Inner) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        from: inner.replica.me().clone(),
        physical_ms: now_ms(),
        hlc: inner.replica.store().clock().last(),
        listen: Some(inner.advertise),
    })
}

/// Checks a peer's hello. `Ok(None)` means a connection to ourselves.
fn check_hello(inner: &Inner, conn: &quinn::Connection, h: &Hello) -> Result<Option<()>, Refusal> {
    if h.version != PROTOCOL_VERSION {
        return Err(Refusal::Version { ours: PROTOCOL_VERSION });
    }
    let me = inner.replica.me();
    if h.from == *me {
        return Ok(None);
    }
    let now = now_ms();
    if let Err(e) = inner.replica.store().clock().check_skew(h.physical_ms, now) {
        tracing::error!(peer = %h.from, offset_ms = e.offset_ms, max_offset_ms = e.max_offset_ms,
            "refusing peer: clock offset exceeds max_offset; no data exchanged");
        metrics::counter!("meshcache_skew_refusals_total").increment(1);
        return Err(Refusal::Skew { offset_ms: e.offset_ms, max_offset_ms: e.max_offset_ms });
    }
    match tls::peer_name(conn) {
        Some(n) if n == h.from.name => {}
        other => {
            tracing::error!(peer = %h.from, cert = ?other, "refusing peer: hello name differs from its certificate");
            return Err(Refusal::Superseded { current: None });
        }
    }
    match inner.replica.learn_peer(&h.from) {
        Ok(Learned::SelfSuperseded) => {
            tracing::error!(peer = %h.from, "a newer incarnation of this peer's name is running");
            return Err(Refusal::Superseded { current: None });
        }
        Ok(_) => {}
        Err(r) => return Err(r),
    }
    let _ = inner.replica.store().clock().observe(h.hlc, now);
    if let Some(a) = h.listen {
        inner.replica.set_peer_addr(&h.from, a);
    }
    Ok(Some(()))
}

fn refused(inner: &Inner, peer: &str, r: &Refusal) {
    inner.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("meshcache_refused_peers_total").increment(1);
    tracing::warn!(peer, reason = ?r, "peer refused at hello");
}

/// Accepts incoming connections until shutdown.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(HELLO_TIMEOUT, accept_one(&inner2, incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "incoming connection failed"),
                Err(_) => tracing::debug!(%remote, "incoming connection: hello timed out"),
            }
        });
    }
}

async fn accept_one(
    inner: &Arc<Inner>,
    incoming: quinn::Incoming,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The TLS handshake verified the client's certificate against the CA.
    let conn = incoming.await?;
    let (mut send, recv) = conn.accept_bi().await?;
    let mut reader = FrameReader::new(recv, inner.codec);
    let h = match reader.next().await {
        Ok(Some(Message::Hello(h))) => h,
        Ok(other) => {
            conn.close(CODE_PROTOCOL, b"expected hello");
            return Err(format!("expected a hello, got {:?}", other.as_ref().map(kind)).into());
        }
        Err(e) => {
            note_protocol_error(inner, &conn, "hello", &e);
            return Err(e.into());
        }
    };
    match check_hello(inner, &conn, &h) {
        Ok(Some(())) => {
            write_message(&mut send, &inner.codec, &my_hello(inner)).await?;
            let _ = send.finish();
            register(inner, conn, h.from, false, h.listen);
            Ok(())
        }
        Ok(None) => {
            conn.close(CODE_DUPLICATE, b"self");
            Ok(())
        }
        Err(r) => {
            refused(inner, &h.from.to_string(), &r);
            let _ = write_message(&mut send, &inner.codec, &Message::Refused(r)).await;
            let _ = send.finish();
            // Give the refusal time to arrive before the close.
            let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
            conn.close(CODE_REFUSED, b"refused");
            Ok(())
        }
    }
}

/// Dials `addr` and runs the hello. Returns the peer's name on success.
async fn dial(inner: &Arc<Inner>, addr: SocketAddr) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let conn = inner.endpoint.connect_with(inner.client_config.clone(), addr, tls::SERVER_NAME)?.await?;
    // Under TLS 1.3 a client the server rejects still sees the handshake
    // succeed: authentication counts only once the hello exchange is done.
    let (mut send, recv) = conn.open_bi().await?;
    write_message(&mut send, &inner.codec, &my_hello(inner)).await?;
    let _ = send.finish();
    let mut reader = FrameReader::new(recv, inner.codec);
    match reader.next().await? {
        Some(Message::Hello(h)) => match check_hello(inner, &conn, &h) {
            Ok(Some(())) => {
                let name = h.from.name.clone();
                register(inner, conn, h.from, true, Some(addr));
                Ok(name)
            }
            Ok(None) => {
                conn.close(CODE_DUPLICATE, b"self");
                Err("dialed itself".into())
            }
            Err(r) => {
                refused(inner, &h.from.to_string(), &r);
                conn.close(CODE_REFUSED, b"refused");
                Err(format!("refused {}: {r:?}", h.from).into())
            }
        },
        Some(Message::Refused(r)) => {
            tracing::error!(%addr, reason = ?r, "peer refused this peer's hello");
            if let Refusal::Superseded { current: Some(c) } = &r {
                // The mesh may know a newer incarnation of our own name.
                if inner.replica.learn_own_successor(*c) {
                    tracing::error!(current = ?c, "a newer incarnation of this peer's name runs in the mesh");
                }
            }
            Err(format!("refused by {addr}: {r:?}").into())
        }
        other => {
            conn.close(CODE_PROTOCOL, b"expected hello");
            Err(format!("expected a hello, got {:?}", other.as_ref().map(kind)).into())
        }
    }
}

/// Installs an authenticated connection, resolving duplicates, and starts
/// its tasks.
fn register(inner: &Arc<Inner>, conn: quinn::Connection, id: MemberId, dialed_by_me: bool, addr: Option<SocketAddr>) {
    let me = inner.replica.me().name.clone();
    let queue = Arc::new(PushQueue::new(inner.config.push_queue_bytes));
    {
        let mut peers = inner.peers.lock();
        if let Some(cur) = peers.get(&id.name) {
            let keep_new = if cur.id.incarnation > id.incarnation {
                false
            } else if cur.id.incarnation < id.incarnation {
                true
            } else if cur.dialed_by_me == dialed_by_me {
                // A redial from the same side: the old link is dead or dying.
                true
            } else {
                // Both sides dialed at once: both keep the connection dialed
                // by the smaller name, so they agree without talking.
                dialed_by_me == (me < id.name)
            };
            if !keep_new {
                drop(peers);
                conn.close(CODE_DUPLICATE, b"duplicate");
                return;
            }
            if cur.id != id {
                // A restarted peer: writes queued for the old process are
                // never redirected to the new one.
                tracing::info!(peer = %id, old = %cur.id, "peer restarted as a new incarnation");
            }
            cur.queue.close();
            cur.conn.close(CODE_DUPLICATE, b"duplicate");
        }
        peers.insert(
            id.name.clone(),
            PeerConn { id: id.clone(), conn: conn.clone(), queue: queue.clone(), dialed_by_me, addr },
        );
    }
    tracing::info!(peer = %id, remote = %conn.remote_address(), dialed = dialed_by_me, "peer connected");
    metrics::counter!("meshcache_connections_total").increment(1);
    inner.tasks.spawn(push_sender(inner.clone(), conn.clone(), id.clone(), queue.clone()));
    inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), id.clone()));
    inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), id.clone()));
    inner.tasks.spawn(watch_close(inner.clone(), conn, id.clone(), queue));
    // Repair whatever was missed while apart, at once. One side is enough:
    // the dialer (a joining peer dials its seeds, so it bootstraps at once).
    if dialed_by_me {
        let _ = inner.ae_requests.send(id.name);
    }
}

async fn watch_close(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, queue: Arc<PushQueue>) {
    let reason = tokio::select! {
        r = conn.closed() => r,
        _ = inner.cancel.cancelled() => return,
    };
    queue.close();
    let mut peers = inner.peers.lock();
    if peers.get(&id.name).is_some_and(|p| p.conn.stable_id() == conn.stable_id()) {
        peers.remove(&id.name);
        drop(peers);
        // The member stays known (and pauses collection) until it says
        // goodbye, is superseded, or is forgotten.
        tracing::info!(peer = %id, %reason, "peer disconnected");
    }
}

fn note_protocol_error(inner: &Inner, conn: &quinn::Connection, what: &str, e: &StreamError) {
    if e.is_protocol() {
        inner.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meshcache_protocol_errors_total").increment(1);
        tracing::error!(remote = %conn.remote_address(), what, error = %e, "malformed input from peer: closing the connection");
        conn.close(CODE_PROTOCOL, b"protocol error");
    }
}

/// Pushes queued writes to one peer over one long-lived uni stream.
async fn push_sender(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, queue: Arc<PushQueue>) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut sent_members_version = u64::MAX;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = conn.closed() => return,
            _ = queue.notify.notified() => {}
        }
        if queue.is_closed() {
            return;
        }
        if !inner.config.push_delay.is_zero() {
            tokio::time::sleep(inner.config.push_delay).await;
        }
        loop {
            let batch = queue.take(inner.config.push_batch_bytes);
            if batch.overflowed {
                inner.counters.queue_overflows.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("meshcache_push_queue_overflows_total").increment(1);
                tracing::warn!(peer = %id, "push queue overflowed: falling back to anti-entropy");
                let _ = inner.ae_requests.send(id.name.clone());
            }
            if batch.entries.is_empty() && !batch.force {
                break;
            }
            let version = inner.replica.members_version();
            let with_members = version != sent_members_version;
            sent_members_version = version;
            let n = batch.entries.len() as u64;
            let msg = Message::Deltas(inner.replica.deltas(batch.entries, with_members));
            let frame = match inner.codec.encode_to_bytes(&msg) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(peer = %id, error = %e, "cannot encode a push batch; the peer will be repaired by anti-entropy");
                    let _ = inner.ae_requests.send(id.name.clone());
                    continue;
                }
            };
            if send.write_all(&frame).await.is_err() {
                return;
            }
            let c = &inner.counters;
            c.deltas_sent.fetch_add(n, Ordering::Relaxed);
            c.push_batches_sent.fetch_add(1, Ordering::Relaxed);
            c.push_bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
            metrics::counter!("meshcache_deltas_sent_total").increment(n);
            metrics::counter!("meshcache_push_bytes_sent_total").increment(frame.len() as u64);
            if !queue.has_more() {
                break;
            }
        }
    }
}

/// Accepts the peer's uni streams: pushes and goodbyes.
async fn uni_acceptor(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId) {
    loop {
        let recv = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = conn.accept_uni() => match r { Ok(r) => r, Err(_) => return },
        };
        let (inner, conn, id) = (inner.clone(), conn.clone(), id.clone());
        inner.clone().tasks.spawn(async move {
            let mut reader = FrameReader::new(recv, inner.codec);
            loop {
                let m = tokio::select! {
                    _ = inner.cancel.cancelled() => return,
                    m = reader.next() => m,
                };
                match m {
                    Ok(Some(Message::Deltas(batch))) => {
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
                        match inner.replica.handle_deltas(batch, now_ms()) {
                            Ok(out) => {
                                inner.counters.deltas_received.fetch_add(n, Ordering::Relaxed);
                                metrics::counter!("meshcache_deltas_received_total").increment(n);
                                inner.publish_all(out.changes, Origin::Remote);
                            }
                            Err(PeerError::SelfSuperseded) => return,
                            Err(e) => tracing::warn!(peer = %id, error = %e, "push dropped"),
                        }
                    }
                    Ok(Some(Message::Goodbye(who))) => {
                        if who == id {
                            tracing::info!(peer = %id, "peer left the mesh");
                            inner.replica.handle_goodbye(&who);
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

/// Accepts the peer's bi streams: anti-entropy sessions it initiates.
async fn bi_acceptor(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId) {
    loop {
        let (send, recv) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = conn.accept_bi() => match r { Ok(r) => r, Err(_) => return },
        };
        let (inner, conn, id) = (inner.clone(), conn.clone(), id.clone());
        *inner.ae_running.lock().entry(id.name.clone()).or_insert(0) += 1;
        inner.clone().tasks.spawn(async move {
            let session = Session::respond(now_ms());
            let r = run_session(&inner.replica, session, send, recv, inner.codec, now_ms).await;
            finish_session(&inner, &conn, &id, r);
            session_over(&inner, &id.name);
        });
    }
}

fn session_over(inner: &Inner, peer: &str) {
    let mut running = inner.ae_running.lock();
    if let Some(n) = running.get_mut(peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            running.remove(peer);
            drop(running);
            if inner.ae_deferred.lock().remove(peer) {
                let _ = inner.ae_requests.send(peer.to_owned());
            }
        }
    }
}

fn finish_session(
    inner: &Inner,
    conn: &quinn::Connection,
    id: &MemberId,
    r: Result<super::stream::SessionResult, StreamError>,
) {
    let c = &inner.counters;
    match r {
        Ok(res) => {
            c.ae_bytes_sent.fetch_add(res.stats.bytes_sent, Ordering::Relaxed);
            c.ae_bytes_received.fetch_add(res.stats.bytes_received, Ordering::Relaxed);
            c.ae_entries_sent.fetch_add(res.stats.entries_sent, Ordering::Relaxed);
            c.ae_entries_received.fetch_add(res.stats.entries_received, Ordering::Relaxed);
            metrics::counter!("meshcache_ae_bytes_sent_total").increment(res.stats.bytes_sent);
            if res.complete {
                c.ae_rounds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("meshcache_ae_rounds_total").increment(1);
            }
            tracing::debug!(peer = %id, mode = ?res.stats.mode, sent = res.stats.bytes_sent,
                received = res.stats.bytes_received, changes = res.changes.len(), "anti-entropy round");
            inner.publish_all(res.changes, Origin::Remote);
        }
        Err(e) => {
            c.ae_failed.fetch_add(1, Ordering::Relaxed);
            note_protocol_error(inner, conn, "anti-entropy", &e);
            if !inner.cancel.is_cancelled() {
                tracing::warn!(peer = %id, error = %e, "anti-entropy round failed");
            }
        }
    }
}

/// Periodic anti-entropy with a random connected peer, and on request
/// (after a connect, after a push queue overflow).
pub(crate) async fn anti_entropy_loop(inner: Arc<Inner>, mut requests: mpsc::UnboundedReceiver<String>) {
    let base = inner.config.anti_entropy_interval;
    loop {
        // Jitter of ±20% keeps peers from syncing in lockstep.
        let wait = base.mul_f64(rand::rng().random_range(0.8..1.2));
        let (target, requested) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {
                let names: Vec<String> = inner.peers.lock().keys().cloned().collect();
                match names.choose(&mut rand::rng()) { Some(n) => (n.clone(), false), None => continue }
            }
            r = requests.recv() => match r { Some(n) => (n, true), None => return },
        };
        let conn = match inner.peers.lock().get(&target) {
            Some(p) => (p.conn.clone(), p.id.clone()),
            None => continue,
        };
        {
            let mut running = inner.ae_running.lock();
            let n = running.entry(target.clone()).or_insert(0);
            if *n > 0 {
                // A round with this peer is under way; one that was asked
                // for (a reconnect, an overflowed queue) runs after it.
                if requested {
                    inner.ae_deferred.lock().insert(target);
                }
                continue;
            }
            *n += 1;
        }
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let (conn, id) = conn;
            if let Ok((send, recv)) = conn.open_bi().await {
                let session = Session::initiate(&inner2.replica, now_ms());
                let r = run_session(&inner2.replica, session, send, recv, inner2.codec, now_ms).await;
                finish_session(&inner2, &conn, &id, r);
            }
            session_over(&inner2, &id.name);
        });
    }
}

/// Dials seeds and known members that are not connected, with jittered
/// exponential backoff per address.
pub(crate) async fn connect_loop(inner: Arc<Inner>) {
    let mut backoff: HashMap<SocketAddr, (Instant, Duration)> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(SocketAddr, bool)>();
    let mut iv = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = iv.tick() => {}
            Some((addr, ok)) = done_rx.recv() => {
                inner.dialing.lock().remove(&addr);
                if ok {
                    backoff.remove(&addr);
                } else {
                    let d = backoff.get(&addr).map_or(BACKOFF_MIN, |b| (b.1 * 2).min(BACKOFF_MAX));
                    let jittered = d.mul_f64(rand::rng().random_range(0.75..1.25));
                    backoff.insert(addr, (Instant::now() + jittered, d));
                }
                continue;
            }
        }
        let connected: Vec<(String, Option<SocketAddr>)> =
            inner.peers.lock().iter().map(|(n, p)| (n.clone(), p.addr)).collect();
        let mut targets: Vec<SocketAddr> = inner.config.seeds.clone();
        for (id, status, _, addr) in inner.replica.members_all() {
            if status == crate::membership::Status::Active && !connected.iter().any(|(n, _)| *n == id.name) {
                if let Some(a) = addr {
                    targets.push(a);
                }
            }
        }
        for addr in targets {
            if addr == inner.advertise || addr == inner.local_addr {
                continue;
            }
            if connected.iter().any(|(_, a)| *a == Some(addr)) {
                continue;
            }
            if backoff.get(&addr).is_some_and(|(t, _)| Instant::now() < *t) {
                continue;
            }
            if !inner.dialing.lock().insert(addr) {
                continue;
            }
            let (inner2, tx) = (inner.clone(), done_tx.clone());
            inner.tasks.spawn(async move {
                let r = tokio::time::timeout(HELLO_TIMEOUT, dial(&inner2, addr)).await;
                let ok = matches!(r, Ok(Ok(_)));
                if let Ok(Err(e)) = &r {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
                let _ = tx.send((addr, ok));
            });
        }
    }
}

/// Tells every connected peer that this incarnation leaves for good.
pub(crate) async fn say_goodbye(inner: &Arc<Inner>) {
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

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(fs: impl Iterator<Item = F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in fs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
