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
use tokio::sync::mpsc;

use super::queue::PushQueue;
use super::stream::{kind, run_session, write_message, FrameReader, StreamError};
use super::{Inner, Origin, PeerConn};
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
/// How long after a connection is up its first anti-entropy round starts
/// (see `register`).
const CONNECT_SETTLE: Duration = Duration::from_millis(50);

/// Redial backoff bounds; jittered so that a mesh restarting at once does
/// not dial in lockstep.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn my_hello(inner: &Inner) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        from: inner.replica.me().clone(),
        physical_ms: inner.env.now_ms(),
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
    let now = inner.env.now_ms();
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
            return Err(Refusal::Name { certificate: other });
        }
    }
    match inner.replica.learn_peer(&h.from) {
        Ok(Learned::SelfSuperseded) => {
            tracing::error!(peer = %h.from, "a newer incarnation of this peer's name is running");
            return Err(Refusal::Stopping);
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
            // Both sides dialed at once: the losing connection may already
            // carry a round that the other side started on it before it saw
            // the winner. It is retired, not cut: served until its rounds
            // are over, then closed.
            let crossed = cur.id == id && cur.dialed_by_me != dialed_by_me;
            if !keep_new {
                drop(peers);
                if crossed {
                    retire(inner, conn, id, true);
                } else {
                    conn.close(CODE_DUPLICATE, b"duplicate");
                }
                return;
            }
            if cur.id != id {
                // A restarted peer: writes queued for the old process are
                // never redirected to the new one.
                tracing::info!(peer = %id, old = %cur.id, "peer restarted as a new incarnation");
            }
            cur.queue.close();
            if crossed {
                retire(inner, cur.conn.clone(), cur.id.clone(), false);
            } else {
                cur.conn.close(CODE_DUPLICATE, b"duplicate");
            }
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
    // Repair whatever was missed while apart. One side is enough: the
    // dialer (a joining peer dials its seeds, so it bootstraps at once).
    // After a heal both sides' pending handshakes tend to complete
    // together, and one of the two connections is then closed as a
    // duplicate: wait a moment so that the round runs on the connection
    // that stays (the anti-entropy loop looks the connection up by name),
    // rather than half-way over one that is closed under it. A peer still
    // bootstrapping does not wait: its writes wait for that round.
    if dialed_by_me && !inner.replica.is_booted() {
        let _ = inner.ae_requests.send(id.name);
    } else if dialed_by_me {
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            tokio::select! {
                _ = inner2.cancel.cancelled() => {}
                _ = tokio::time::sleep(CONNECT_SETTLE) => {
                    let _ = inner2.ae_requests.send(id.name);
                }
            }
        });
    }
}

/// The shortest time a retired connection stays open: long enough for a
/// round the other side asks for right after connecting (see
/// [`CONNECT_SETTLE`]) to be seen.
const RETIRE_LINGER: Duration = Duration::from_millis(500);

/// Closes a connection that lost to a duplicate once no anti-entropy
/// session runs over it (at most [`SLOT_WAIT_MAX`] later). `serve`: it was
/// never registered, so its streams need acceptors meanwhile. No pushes
/// are sent over it.
fn retire(inner: &Arc<Inner>, conn: quinn::Connection, id: MemberId, serve: bool) {
    tracing::debug!(peer = %id, remote = %conn.remote_address(), "retiring a duplicate connection");
    if serve {
        inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), id.clone()));
        inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), id));
    }
    let inner = inner.clone();
    inner.clone().tasks.spawn(async move {
        let start = inner.env.instant();
        loop {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = conn.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let idle = !inner.conn_sessions.lock().contains_key(&conn.stable_id());
            let waited = inner.env.instant() - start;
            if (idle && waited >= RETIRE_LINGER) || waited >= SLOT_WAIT_MAX {
                conn.close(CODE_DUPLICATE, b"duplicate");
                return;
            }
        }
    });
}

/// Counts an anti-entropy session on a connection while it lives.
struct ConnSession {
    inner: Arc<Inner>,
    id: usize,
}

impl ConnSession {
    fn new(inner: &Arc<Inner>, conn: &quinn::Connection) -> Self {
        let id = conn.stable_id();
        *inner.conn_sessions.lock().entry(id).or_insert(0) += 1;
        ConnSession { inner: inner.clone(), id }
    }
}

impl Drop for ConnSession {
    fn drop(&mut self) {
        let mut m = self.inner.conn_sessions.lock();
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
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
                        match inner.replica.handle_deltas(batch, inner.env.now_ms()) {
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
        // Both sides may start a round with each other at once (after a
        // reconnect both dialed, say): the two sessions would ship the same
        // difference twice, and each would wait for the other's slot. The
        // round started by the smaller name goes first, without the slot;
        // the other waits until it is over, then finds little to do.
        let crossed = {
            let mut running = inner.ae_running.lock();
            let n = running.entry(id.name.clone()).or_insert(0);
            *n += 1;
            *n > 1
        };
        let me_first = inner.replica.me().name < id.name;
        let on_conn = ConnSession::new(&inner, &conn);
        inner.clone().tasks.spawn(async move {
            let _on_conn = on_conn;
            let slot = match (crossed, me_first) {
                (false, _) => wait_for_slot(&inner).await,
                (true, false) => None,
                (true, true) => {
                    wait_for_crossed(&inner, &id.name).await;
                    None
                }
            };
            let session = Session::respond(inner.env.now_ms());
            let env = inner.env.clone();
            let r = run_session(&inner.replica, session, send, recv, inner.codec, move || env.now_ms(), None).await;
            finish_session(&inner, &conn, &id, r);
            drop(slot);
            session_over(&inner, &id.name);
        });
    }
}

/// The longest a responder waits for this peer's anti-entropy slot, or
/// for a crossed round, before it runs anyway: a safety net only. Waits
/// cannot form a cycle: a responder waits only for a session that is
/// running (accepted by its peer), and a crossed pair lets the smaller
/// name's round go first.
const SLOT_WAIT_MAX: Duration = Duration::from_secs(30);

/// The responder's side of the anti-entropy slot: waits for it while the
/// session holding it is running. `None` when this peer's own round holds it
/// and awaits its peer's accept (that round may be waiting for a slot
/// itself), when the safety net ran out, or when the peer is stopping.
async fn wait_for_slot(inner: &Inner) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let acquire = inner.ae_slot.clone().acquire_owned();
    tokio::pin!(acquire);
    let end = inner.env.instant() + SLOT_WAIT_MAX;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return None,
            r = &mut acquire => return r.ok(),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {
                if inner.ae_awaiting_accept.load(Ordering::Relaxed) {
                    tracing::debug!("anti-entropy slot held by a round not yet accepted: responding at once");
                    return None;
                }
                if inner.env.instant() > end {
                    tracing::warn!("anti-entropy slot busy for {SLOT_WAIT_MAX:?}: responding anyway");
                    return None;
                }
            }
        }
    }
}

/// Waits until this peer's other sessions with `peer` are over (at most
/// [`SLOT_WAIT_MAX`]).
async fn wait_for_crossed(inner: &Inner, peer: &str) {
    let end = inner.env.instant() + SLOT_WAIT_MAX;
    while inner.ae_running.lock().get(peer).is_some_and(|n| *n > 1) && inner.env.instant() < end {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Counts a session with `peer` as over. Once no session runs, the rounds
/// that were asked for meanwhile go again.
fn session_over(inner: &Inner, peer: &str) {
    let mut running = inner.ae_running.lock();
    if let Some(n) = running.get_mut(peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            running.remove(peer);
        }
    }
    if running.is_empty() {
        drop(running);
        for p in std::mem::take(&mut *inner.ae_deferred.lock()) {
            let _ = inner.ae_requests.send(p);
        }
    }
}

/// Accounts for a session, and publishes what it merged: a session that
/// failed half-way merged what it received before it failed.
fn finish_session(inner: &Inner, conn: &quinn::Connection, id: &MemberId, res: super::stream::SessionResult) {
    let c = &inner.counters;
    c.ae_bytes_sent.fetch_add(res.stats.bytes_sent, Ordering::Relaxed);
    c.ae_bytes_received.fetch_add(res.stats.bytes_received, Ordering::Relaxed);
    c.ae_entries_sent.fetch_add(res.stats.entries_sent, Ordering::Relaxed);
    c.ae_entries_received.fetch_add(res.stats.entries_received, Ordering::Relaxed);
    metrics::counter!("meshcache_ae_bytes_sent_total").increment(res.stats.bytes_sent);
    match &res.error {
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
            note_protocol_error(inner, conn, "anti-entropy", e);
            if !inner.cancel.is_cancelled() {
                tracing::warn!(peer = %id, error = %e, sent = res.stats.bytes_sent, merged = res.changes.len(),
                    "anti-entropy round failed");
            }
        }
    }
    inner.publish_all(res.changes, Origin::Remote);
}

/// Periodic anti-entropy with a random connected peer, and on request
/// (after a connect, after a push queue overflow).
pub(crate) async fn anti_entropy_loop(inner: Arc<Inner>, mut requests: mpsc::UnboundedReceiver<String>) {
    let base = inner.config.anti_entropy_interval;
    loop {
        // Jitter of ±20% keeps peers from syncing in lockstep.
        let wait = base.mul_f64(inner.env.random_f64(0.8, 1.2));
        let (target, requested) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {
                let names: Vec<String> = inner.peers.lock().keys().cloned().collect();
                if names.is_empty() {
                    continue;
                }
                (names[inner.env.random_index(names.len())].clone(), false)
            }
            r = requests.recv() => match r { Some(n) => (n, true), None => return },
        };
        let conn = match inner.peers.lock().get(&target) {
            Some(p) => (p.conn.clone(), p.id.clone()),
            None => continue,
        };
        // One session at a time on this peer, either role: a round starts
        // only when no session is under way here (or with the target, which
        // may be answering someone else without this peer's slot). One
        // that was asked for (a reconnect, an overflowed queue) runs after.
        let slot = {
            let mut running = inner.ae_running.lock();
            let busy = running.get(&target).is_some_and(|n| *n > 0);
            match inner.ae_slot.clone().try_acquire_owned() {
                Ok(slot) if !busy => {
                    *running.entry(target.clone()).or_insert(0) += 1;
                    slot
                }
                _ => {
                    if requested {
                        inner.ae_deferred.lock().insert(target);
                    }
                    continue;
                }
            }
        };
        inner.ae_awaiting_accept.store(true, Ordering::Relaxed);
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let (conn, id) = conn;
            let _on_conn = ConnSession::new(&inner2, &conn);
            if let Ok((send, recv)) = conn.open_bi().await {
                let session = Session::initiate(&inner2.replica, inner2.env.now_ms());
                let flag = Some(&inner2.ae_awaiting_accept);
                let env = inner2.env.clone();
                let r =
                    run_session(&inner2.replica, session, send, recv, inner2.codec, move || env.now_ms(), flag).await;
                finish_session(&inner2, &conn, &id, r);
            }
            inner2.ae_awaiting_accept.store(false, Ordering::Relaxed);
            drop(slot);
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
                    let jittered = d.mul_f64(inner.env.random_f64(0.75, 1.25));
                    backoff.insert(addr, (inner.env.instant() + jittered, d));
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
            if backoff.get(&addr).is_some_and(|(t, _)| inner.env.instant() < *t) {
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
