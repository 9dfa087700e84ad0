//! Connections: dialing and accepting, the hello, and the tasks that carry
//! pushes and anti-entropy sessions over one connection. What to do with a
//! connection, and when rounds run, is decided by [`Links`]; this module
//! feeds it events and executes its actions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::sync::oneshot;

use super::links::{Action, ConnId, Core, Links, SessionId, Side, Verdict};
use super::queue::PushQueue;
use super::stream::{kind, run_session, write_message, FrameReader, StreamError};
use super::{Inner, Origin, PeerConn};
use crate::hlc::SkewError;
use crate::membership::{Incarnation, Learned, MemberId, Status};
use crate::replica::PeerError;
use crate::sync::Session;
use crate::transport::{certs, tls};
use crate::wire::{Hello, Message, Refusal, PROTOCOL_VERSION};

/// Connection close codes (application level).
pub(crate) const CODE_GOODBYE: VarInt = VarInt::from_u32(0);
pub(crate) const CODE_DUPLICATE: VarInt = VarInt::from_u32(1);
pub(crate) const CODE_REFUSED: VarInt = VarInt::from_u32(2);
pub(crate) const CODE_PROTOCOL: VarInt = VarInt::from_u32(3);
pub(crate) const CODE_SUPERSEDED: VarInt = VarInt::from_u32(4);

/// How long a hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The machine and what the shell keeps to execute its actions, under one
/// lock: an action names a connection or a session that the same critical
/// section registered.
pub(crate) struct Driver {
    pub(crate) links: Links,
    /// Authenticated connections the machine knows, until closed.
    conns: HashMap<ConnId, (quinn::Connection, MemberId)>,
    /// Responders waiting for [`Action::Respond`].
    responders: HashMap<SessionId, oneshot::Sender<()>>,
    /// The membership version last given to the machine.
    members_version: u64,
}

impl Driver {
    pub(crate) fn new(links: Links) -> Self {
        Driver { links, conns: HashMap::new(), responders: HashMap::new(), members_version: u64::MAX }
    }
}

fn conn_id(conn: &quinn::Connection) -> ConnId {
    ConnId(conn.stable_id())
}

impl Inner {
    /// Feeds the machine an event and executes the actions it queued, in
    /// order, before the lock is released: executing one only spawns tasks,
    /// closes connections or wakes a responder, never awaits. The driver
    /// task is woken, since its next deadline may have moved.
    pub(crate) fn with_links<R>(self: &Arc<Self>, f: impl FnOnce(&mut Driver, std::time::Instant) -> R) -> R {
        let r = self.with_links_quiet(f);
        self.links_changed.notify_one();
        r
    }

    fn with_links_quiet<R>(self: &Arc<Self>, f: impl FnOnce(&mut Driver, std::time::Instant) -> R) -> R {
        let mut d = self.links.lock();
        // tokio's clock, which a paused or simulated runtime moves.
        let r = f(&mut d, self.env.instant().into_std());
        while let Some(a) = d.links.poll_action() {
            execute(self, &mut d, a);
        }
        r
    }

    /// Gives the machine the members to dial when the membership changed
    /// (a hello, a push batch or a session may carry news).
    pub(crate) fn note_members(self: &Arc<Self>) {
        let version = self.replica.members_version();
        if self.links.lock().members_version == version {
            return;
        }
        self.with_links(|d, now| {
            // Read under the lock, so that an older view never replaces a
            // newer one.
            let version = self.replica.members_version();
            if d.members_version == version {
                return;
            }
            d.members_version = version;
            let members = self
                .replica
                .members_all()
                .into_iter()
                .filter(|(_, status, _, _)| *status == Status::Active)
                .filter_map(|(id, _, _, addr)| addr.map(|a| (id.name, a)))
                .collect();
            d.links.handle_members(now, members);
        });
    }
}

/// Runs the machine's deadlines until shutdown.
pub(crate) async fn drive(inner: Arc<Inner>) {
    loop {
        let deadline = inner.with_links_quiet(|d, now| {
            d.links.handle_timeout(now);
            d.links.poll_timeout()
        });
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.links_changed.notified() => {}
            _ = sleep => {}
        }
    }
}

fn execute(inner: &Arc<Inner>, d: &mut Driver, action: Action) {
    match action {
        Action::Dial(addr) => {
            let inner2 = inner.clone();
            inner.tasks.spawn(async move {
                let r = tokio::time::timeout(HELLO_TIMEOUT, dial(&inner2, addr)).await;
                let ok = matches!(r, Ok(Ok(_)));
                if let Ok(Err(e)) = &r {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
                inner2.with_links(|d, now| d.links.handle_dial_result(now, addr, ok));
            });
        }
        Action::Link { peer, conn } => {
            let Some((conn, _)) = d.conns.get(&conn).cloned() else { return };
            let queue = Arc::new(PushQueue::new(inner.config.push_queue_bytes));
            let old = inner
                .peers
                .lock()
                .insert(peer.name.clone(), PeerConn { id: peer.clone(), conn: conn.clone(), queue: queue.clone() });
            // Writes queued for an older link (or an older incarnation) are
            // never redirected: anti-entropy repairs what they carried.
            if let Some(old) = old {
                old.queue.close();
            }
            tracing::info!(peer = %peer, remote = %conn.remote_address(), "peer connected");
            metrics::counter!("meshcache_connections_total").increment(1);
            inner.tasks.spawn(push_sender(inner.clone(), conn.clone(), peer.clone(), queue.clone()));
            inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), peer.clone()));
            inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), peer.clone()));
            inner.tasks.spawn(watch_close(inner.clone(), conn, peer, Some(queue)));
        }
        Action::Serve { peer, conn } => {
            let Some((conn, _)) = d.conns.get(&conn).cloned() else { return };
            tracing::debug!(peer = %peer, remote = %conn.remote_address(), "retiring a duplicate connection");
            inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), peer.clone()));
            inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), peer.clone()));
            inner.tasks.spawn(watch_close(inner.clone(), conn, peer, None));
        }
        Action::Close { conn, why: super::links::Close::Duplicate } => {
            if let Some((conn, _)) = d.conns.remove(&conn) {
                conn.close(CODE_DUPLICATE, b"duplicate");
            }
        }
        Action::StartSession { session, conn, .. } => {
            let Some((conn, id)) = d.conns.get(&conn).cloned() else {
                // Closed meanwhile: the machine hears of it from the close
                // watcher, and of the round's end from here, after the lock.
                let inner2 = inner.clone();
                inner.tasks.spawn(async move {
                    inner2.with_links(|d, now| d.links.handle_session_finished(now, session));
                });
                return;
            };
            inner.tasks.spawn(initiate(inner.clone(), conn, id, session));
        }
        Action::Respond { session } => {
            if let Some(tx) = d.responders.remove(&session) {
                let _ = tx.send(());
            }
        }
        Action::Stop => {
            tracing::error!(name = %inner.replica.me().name, "a newer incarnation of this peer exists, or it was forgotten: stopping");
            inner.cancel.cancel();
            inner.endpoint.close(CODE_SUPERSEDED, b"superseded");
        }
    }
}

/// What the machine asks of the core.
struct CoreView<'a> {
    inner: &'a Inner,
    now_ms: u64,
}

impl Core for CoreView<'_> {
    fn check_skew(&mut self, physical_ms: u64) -> Result<(), SkewError> {
        let r = self.inner.replica.store().clock().check_skew(physical_ms, self.now_ms);
        if r.is_err() {
            metrics::counter!("meshcache_skew_refusals_total").increment(1);
        }
        r
    }
    fn learn_peer(&mut self, id: &MemberId) -> Result<Learned, Refusal> {
        self.inner.replica.learn_peer(id)
    }
    fn learn_own_successor(&mut self, current: Incarnation) -> bool {
        self.inner.replica.learn_own_successor(current)
    }
    fn booted(&self) -> bool {
        self.inner.replica.is_booted()
    }
}

fn my_hello(inner: &Inner) -> Message {
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
fn check_hello(inner: &Arc<Inner>, conn: &quinn::Connection, side: Side, h: &Hello) -> Verdict {
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
    match check_hello(inner, &conn, Side::Acceptor, &h) {
        Verdict::Accept => {
            write_message(&mut send, &inner.codec, &my_hello(inner)).await?;
            let _ = send.finish();
            Ok(())
        }
        Verdict::ToSelf => {
            conn.close(CODE_DUPLICATE, b"self");
            Ok(())
        }
        Verdict::Refuse(r) => {
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
    let conn = inner.endpoint.connect_with(inner.client_config.clone(), addr, certs::SERVER_NAME)?.await?;
    // Under TLS 1.3 a client the server rejects still sees the handshake
    // succeed: authentication counts only once the hello exchange is done.
    let (mut send, recv) = conn.open_bi().await?;
    write_message(&mut send, &inner.codec, &my_hello(inner)).await?;
    let _ = send.finish();
    let mut reader = FrameReader::new(recv, inner.codec);
    match reader.next().await? {
        Some(Message::Hello(h)) => match check_hello(inner, &conn, Side::Dialer(addr), &h) {
            Verdict::Accept => Ok(h.from.name),
            Verdict::ToSelf => {
                conn.close(CODE_DUPLICATE, b"self");
                Err("dialed itself".into())
            }
            Verdict::Refuse(r) => {
                refused(inner, &h.from.to_string(), &r);
                conn.close(CODE_REFUSED, b"refused");
                Err(format!("refused {}: {r:?}", h.from).into())
            }
        },
        Some(Message::Refused(r)) => {
            tracing::error!(%addr, reason = ?r, "peer refused this peer's hello");
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

async fn watch_close(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, queue: Option<Arc<PushQueue>>) {
    let reason = tokio::select! {
        r = conn.closed() => r,
        _ = inner.cancel.cancelled() => return,
    };
    if let Some(q) = &queue {
        q.close();
    }
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
                inner.with_links(|d, now| d.links.handle_queue_overflow(now, &id.name));
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
                    inner.with_links(|d, now| d.links.request_round(now, &id.name));
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
                                inner.note_members();
                            }
                            Err(PeerError::SelfSuperseded) => return,
                            Err(e) => tracing::warn!(peer = %id, error = %e, "push dropped"),
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

/// Accepts the peer's bi streams: anti-entropy sessions it initiates. Each
/// runs once the machine lets it (see `Links::handle_session_offered`).
async fn bi_acceptor(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId) {
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
            let allowed = tokio::select! {
                _ = inner.cancel.cancelled() => false,
                r = go => r.is_ok(),
            };
            if allowed {
                let s = Session::respond(inner.env.now_ms());
                let env = inner.env.clone();
                let r = run_session(&inner.replica, s, send, recv, inner.codec, move || env.now_ms(), || {}).await;
                finish_session(&inner, &conn, &id, r);
            }
            inner.with_links(|d, now| d.links.handle_session_finished(now, session));
            inner.note_members();
        });
    }
}

/// Runs a round this peer started, reporting its accept and its end.
async fn initiate(inner: Arc<Inner>, conn: quinn::Connection, id: MemberId, session: SessionId) {
    if let Ok((send, recv)) = conn.open_bi().await {
        let s = Session::initiate(&inner.replica, inner.env.now_ms());
        let accepted = {
            let inner = inner.clone();
            move || inner.with_links(|d, _| d.links.handle_session_accepted(session))
        };
        let env = inner.env.clone();
        let r = run_session(&inner.replica, s, send, recv, inner.codec, move || env.now_ms(), accepted).await;
        finish_session(&inner, &conn, &id, r);
    }
    inner.with_links(|d, now| d.links.handle_session_finished(now, session));
    inner.note_members();
}

/// Accounts for a session, and publishes what it merged: a session that
/// failed half-way merged what it received before it failed.
fn finish_session(inner: &Inner, conn: &quinn::Connection, id: &MemberId, res: super::stream::SessionResult) {
    inner.sessions_ended.notify_waiters();
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
