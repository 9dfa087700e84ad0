//! The driver of the connection-level machine ([`Links`]): feeds it events
//! under one lock, executes its actions, and wakes it at its deadlines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};

use super::conn::{watch_close, CODE_DUPLICATE, CODE_SUPERSEDED};
use super::dial::dial;
use super::hello::HELLO_TIMEOUT;
use super::inner::{Inner, PeerConn};
use super::links::{Action, Close, ConnId, Core, Links, SessionId};
use super::push::{push_sender, uni_acceptor};
use super::queue::PushQueue;
use super::sessions::{bi_acceptor, initiate};
use crate::hlc::SkewError;
use crate::membership::{Incarnation, Learned, MemberId, Status};
use crate::wire::{Refusal, OLDEST_VERSION};

/// How long a seed name's lookup may take before it counts as failed.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The machine and what the shell keeps to execute its actions, under one
/// lock: an action names a connection or a session that the same critical
/// section registered.
pub(super) struct Driver {
    pub(super) links: Links,
    /// Authenticated connections the machine knows, until closed.
    pub(super) conns: HashMap<ConnId, (quinn::Connection, MemberId)>,
    /// Responders waiting for [`Action::Respond`] or [`Action::Decline`].
    pub(super) responders: HashMap<SessionId, oneshot::Sender<Go>>,
    /// Dials under way, each told by [`Action::Restart`] to start afresh.
    dials: HashMap<SocketAddr, Arc<Notify>>,
    /// The membership version last given to the machine.
    members_version: u64,
}

/// What a waiting responder is told.
#[derive(Clone, Copy, Debug)]
pub(super) enum Go {
    Respond,
    /// Answer `Busy`.
    Decline,
}

impl Driver {
    pub(super) fn new(links: Links) -> Self {
        Driver {
            links,
            conns: HashMap::new(),
            responders: HashMap::new(),
            dials: HashMap::new(),
            members_version: u64::MAX,
        }
    }
}

/// The machine's name for a connection.
pub(super) fn conn_id(conn: &quinn::Connection) -> ConnId {
    ConnId(conn.stable_id())
}

impl Inner {
    /// Feeds the machine an event and executes the actions it queued, in
    /// order, before the lock is released: executing one only spawns tasks,
    /// closes connections or wakes a responder, never awaits. The driver
    /// task is woken, since its next deadline may have moved.
    pub(super) fn with_links<R>(self: &Arc<Self>, f: impl FnOnce(&mut Driver, std::time::Instant) -> R) -> R {
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
    pub(super) fn note_members(self: &Arc<Self>) {
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
pub(super) async fn drive(inner: Arc<Inner>) {
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

/// Executes one of the machine's actions: spawns the tasks it asks for,
/// closes a connection or wakes a responder; never awaits.
fn execute(inner: &Arc<Inner>, d: &mut Driver, action: Action) {
    match action {
        Action::Dial(addr) | Action::Probe(addr) => {
            let probe = matches!(action, Action::Probe(_));
            let inner2 = inner.clone();
            let restart = Arc::new(Notify::new());
            d.dials.insert(addr, restart.clone());
            inner.tasks.spawn(async move {
                let r = tokio::time::timeout(HELLO_TIMEOUT, dial(&inner2, addr, probe, &restart)).await;
                let ok = matches!(r, Ok(Ok(_)));
                if let Ok(Err(e)) = &r {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
                inner2.with_links(|d, now| {
                    d.dials.remove(&addr);
                    d.links.handle_dial_result(now, addr, ok)
                });
            });
        }
        Action::Restart(addr) => {
            if let Some(restart) = d.dials.get(&addr) {
                restart.notify_one();
            }
        }
        Action::Resolve { name, host, port } => {
            let inner2 = inner.clone();
            inner.tasks.spawn(async move {
                // The system resolver (getaddrinfo, on a blocking thread):
                // it follows /etc/hosts and resolv.conf's search domains,
                // as a headless Service's short name needs.
                let lookup = tokio::net::lookup_host((host.as_str(), port));
                let found = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => Ok(addrs.collect::<Vec<_>>()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer in {} s", RESOLVE_TIMEOUT.as_secs())),
                };
                let (addrs, why) = match found {
                    Ok(a) if a.is_empty() => (None, Some("no addresses".to_owned())),
                    Ok(a) => (Some(a), None),
                    Err(e) => (None, Some(e)),
                };
                let seed = format!("{host}:{port}");
                match &addrs {
                    Some(a) => tracing::debug!(%seed, addrs = ?a, "seed name resolved"),
                    None => tracing::debug!(%seed, "seed name not resolved"),
                }
                if addrs.is_none() {
                    inner2.counters.seed_lookups_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("meshcache_seed_lookups_failed_total").increment(1);
                }
                let first = inner2.with_links(|d, now| d.links.handle_resolved(now, name, addrs));
                if let (Some(why), true) = (why, first) {
                    tracing::warn!(%seed, error = %why, "cannot resolve a seed name; retrying with backoff");
                }
            });
        }
        Action::Link { peer, conn } => {
            let version = d.links.version(conn).unwrap_or(OLDEST_VERSION);
            let Some((conn, _)) = d.conns.get(&conn).cloned() else { return };
            let queue = Arc::new(PushQueue::new(inner.config.push_queue_bytes, version));
            let old = inner.peers.lock().insert(
                peer.name.clone(),
                PeerConn { id: peer.clone(), conn: conn.clone(), queue: queue.clone(), version },
            );
            // Writes queued for an older link (or an older incarnation) are
            // never redirected: anti-entropy repairs what they carried.
            if let Some(old) = old {
                old.queue.close();
            }
            tracing::info!(peer = %peer, remote = %conn.remote_address(), version, "peer connected");
            inner.counters.links_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("meshcache_connections_total").increment(1);
            inner.tasks.spawn(push_sender(inner.clone(), conn.clone(), peer.clone(), queue.clone()));
            inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), peer.clone(), version));
            inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), peer.clone(), version));
            inner.tasks.spawn(watch_close(inner.clone(), conn, peer, Some(queue)));
        }
        Action::Serve { peer, conn } => {
            let version = d.links.version(conn).unwrap_or(OLDEST_VERSION);
            let Some((conn, _)) = d.conns.get(&conn).cloned() else { return };
            tracing::debug!(peer = %peer, remote = %conn.remote_address(), "retiring a duplicate connection");
            inner.tasks.spawn(uni_acceptor(inner.clone(), conn.clone(), peer.clone(), version));
            inner.tasks.spawn(bi_acceptor(inner.clone(), conn.clone(), peer.clone(), version));
            inner.tasks.spawn(watch_close(inner.clone(), conn, peer, None));
        }
        Action::Close { conn, why: Close::Duplicate } => {
            if let Some((conn, _)) = d.conns.remove(&conn) {
                conn.close(CODE_DUPLICATE, b"duplicate");
            }
        }
        Action::StartSession { session, conn, .. } => {
            let version = d.links.version(conn).unwrap_or(OLDEST_VERSION);
            let Some((conn, id)) = d.conns.get(&conn).cloned() else {
                // Closed meanwhile: the machine hears of it from the close
                // watcher, and of the round's end from here, after the lock.
                let inner2 = inner.clone();
                inner.tasks.spawn(async move {
                    inner2.with_links(|d, now| d.links.handle_session_finished(now, session));
                });
                return;
            };
            inner.tasks.spawn(initiate(inner.clone(), conn, id, version, session));
        }
        Action::Respond { session } => {
            if let Some(tx) = d.responders.remove(&session) {
                let _ = tx.send(Go::Respond);
            }
        }
        Action::Decline { session } => {
            if let Some(tx) = d.responders.remove(&session) {
                let _ = tx.send(Go::Decline);
            }
        }
        Action::Stop => {
            tracing::error!(name = %inner.replica.me().name, "a newer incarnation of this peer exists, or it was forgotten: stopping");
            inner.superseded.store(true, std::sync::atomic::Ordering::Relaxed);
            inner.cancel.cancel();
            inner.endpoint.close(CODE_SUPERSEDED, b"superseded");
        }
    }
}

/// What the machine asks of the core.
pub(super) struct CoreView<'a> {
    pub(super) inner: &'a Inner,
    pub(super) now_ms: u64,
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
