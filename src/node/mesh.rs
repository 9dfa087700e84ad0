//! The embedded API: a [`Mesh`] handle, and what it reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::conn::CODE_GOODBYE;
use super::inner::Inner;
use super::pubsub::MessageListener;
use super::push::say_goodbye;
use super::{MeshBuilder, MeshError, Readiness};
use crate::env::Env;
use crate::hlc::Stamp;
use crate::membership::{MemberId, Status};
use crate::replica::Replica;
use crate::store::{Change, ChangeKind, Origin, Slot, StoreStats, Written};
use crate::wire::Publication;

/// What a read-modify-write may write: a key and value that fit in one
/// frame. A slot past that is not written, and the write fails.
pub(super) struct SizeCheck {
    max: usize,
    too_large: Option<usize>,
}

impl SizeCheck {
    pub(super) fn new(max: usize) -> Self {
        SizeCheck { max, too_large: None }
    }

    /// `slot`, unless it is too large to write with `key`.
    pub(super) fn check(&mut self, key: &[u8], slot: Slot) -> Option<Slot> {
        let len = key.len() + slot.payload_len();
        if len > self.max {
            self.too_large = Some(len);
            return None;
        }
        Some(slot)
    }

    pub(super) fn result(self) -> Result<(), MeshError> {
        match self.too_large {
            Some(len) => Err(MeshError::TooLarge { len, max: self.max }),
            None => Ok(()),
        }
    }
}

/// A TTL in whole milliseconds, at least one.
pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// A member as this peer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member.
    pub id: MemberId,
    /// Its status (active members pause tombstone collection until synced).
    pub status: Status,
    /// Whether a connection to it is up.
    pub connected: bool,
    /// Where it accepts peers, if known.
    pub addr: Option<SocketAddr>,
    /// Local time (Unix ms) of the start of the last complete anti-entropy
    /// round with it.
    pub synced_ms: Option<u64>,
    /// The protocol version of its link, while connected: the highest
    /// version both peers speak.
    pub version: Option<u16>,
}

/// A snapshot of the peer's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshStats {
    /// The store's gauges and counters.
    pub store: StoreStats,
    /// Active members known, other than this peer.
    pub members: usize,
    /// Peers connected now.
    pub connected: usize,
    /// Whether bootstrap is complete (writes accepted).
    pub booted: bool,
    /// Writes pushed to peers (counted once per peer).
    pub deltas_sent: u64,
    /// Writes received in pushes.
    pub deltas_received: u64,
    /// Push batches sent.
    pub push_batches_sent: u64,
    /// Bytes of push frames sent.
    pub push_bytes_sent: u64,
    /// Push queues dropped on overflow (each repaired by anti-entropy).
    pub queue_overflows: u64,
    /// Anti-entropy sessions completed.
    pub ae_rounds: u64,
    /// Anti-entropy sessions that failed.
    pub ae_failed: u64,
    /// Rounds this peer started that its peer declined: the peer's own
    /// round was waiting for its accept, and running both at once would
    /// have two peers ship the same data to it. Each is asked for again
    /// shortly after.
    pub ae_declined: u64,
    /// Summaries this peer, under a memory bound, held back in its
    /// sessions until the registers it had queued for the peer were sent
    /// (the session's queue stays within a 64th of the bound).
    pub ae_summaries_deferred: u64,
    /// Times this peer's summary waited, in its sessions, for the peer to
    /// answer for the keys it had summarised (protocol 9: the summary side
    /// holds at most a window of them).
    pub ae_summary_window_waits: u64,
    /// Bytes sent in anti-entropy sessions.
    pub ae_bytes_sent: u64,
    /// Bytes received in anti-entropy sessions.
    pub ae_bytes_received: u64,
    /// Registers sent in anti-entropy sessions (a register another peer
    /// also sent is repair done twice).
    pub ae_entries_sent: u64,
    /// The part of `ae_entries_sent` sent by sessions that failed: a later
    /// round may send some of them again (those the peer had not merged).
    pub ae_entries_sent_failed: u64,
    /// Registers received in anti-entropy sessions.
    pub ae_entries_received: u64,
    /// Peers refused at the hello (version, skew, superseded, name).
    pub refused_peers: u64,
    /// Connections that ended in their TLS handshake, either way: a peer's
    /// certificate from no CA this peer trusts (or none at all), or this
    /// peer's refused by the other. Each is logged as a warning.
    pub tls_refused: u64,
    /// Links made to peers: a reconnection counts again, a connection that
    /// stays up does not.
    pub links_made: u64,
    /// Dials under way (handshake or hello not yet done). While any is,
    /// `links_made` may still move: two peers that dialed each other at
    /// once both end on the connection the smaller name dialed.
    pub dials: usize,
    /// Connections closed because a peer broke the protocol.
    pub protocol_errors: u64,
    /// Remote clock readings refused for running too far ahead.
    pub clock_refused: u64,
    /// Member entries ignored: a gossiped or announced name no certificate
    /// can carry, or an address no one can dial.
    pub members_invalid: u64,
    /// Lookups of a seed name that failed or found no address (each is
    /// retried after a backoff).
    pub seed_lookups_failed: u64,
    /// New member names ignored because the view held `max_members`.
    pub members_over_cap: u64,
    /// Pub/sub messages published on this peer ([`Mesh::publish`]).
    pub messages_published: u64,
    /// Pub/sub messages received from peers.
    pub messages_received: u64,
    /// Loaders [`Mesh::get_or_load`] ran on this peer.
    pub fill_loads: u64,
    /// Fill leases this peer knows of (its own and other peers').
    pub fill_leases: usize,
    /// Hellos refused because the two peers' protocol version ranges do not
    /// meet, by this peer or by the other ([`Mesh::version_refusal`] has the
    /// last one).
    pub version_refusals: u64,
}

/// An embedded meshcache peer: this process becomes a member of the mesh.
///
/// Reads are local and never touch the network; writes are local and then
/// pushed to every connected peer; anti-entropy repairs what pushes miss.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use meshcache::{EphemeralCa, Mesh};
///
/// let ca = EphemeralCa::new()?;
/// let a = Mesh::builder().name("a").listen("127.0.0.1:0".parse()?).tls(ca.issue("a")?).start().await?;
/// let b = Mesh::builder()
///     .name("b")
///     .listen("127.0.0.1:0".parse()?)
///     .seeds([a.local_addr()])
///     .tls(ca.issue("b")?)
///     .start()
///     .await?;
/// b.wait_ready(std::time::Duration::from_secs(5)).await;
/// b.insert("greeting", "hello")?;
/// assert_eq!(b.get("greeting").as_deref(), Some(&b"hello"[..]));
/// a.shutdown().await;
/// b.shutdown().await;
/// # Ok(()) }
/// ```
///
/// Handles are cheap clones of one peer. Dropping the last one stops the
/// peer, like any Rust resource: its tasks end and its socket closes, after
/// a best-effort goodbye when a tokio runtime is at hand. [`Mesh::shutdown`]
/// is the graceful stop that can be awaited. A RESP or admin server holds a
/// handle for as long as it serves.
#[derive(Clone)]
pub struct Mesh {
    pub(super) inner: Arc<Inner>,
    /// Held by handles only, never by the peer's own tasks (which hold
    /// `inner`, or a `Mesh::internal` without it): its drop is the last
    /// handle's.
    _handle: Option<Arc<HandleGuard>>,
}

/// Stops the peer when the last [`Mesh`] handle goes.
struct HandleGuard {
    inner: Arc<Inner>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        if inner.cancel.is_cancelled() {
            // Already stopped (shutdown, halt, or superseded).
            inner.endpoint.close(CODE_GOODBYE, b"goodbye");
            return;
        }
        tracing::info!(name = %inner.replica.me().name, "last handle dropped: leaving the mesh");
        // The tasks stop taking new work at once; the goodbye needs only
        // the connections, which the endpoint's close then ends.
        inner.cancel.cancel();
        inner.tasks.close();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    say_goodbye(&inner).await;
                    inner.endpoint.close(CODE_GOODBYE, b"goodbye");
                });
            }
            Err(_) => inner.endpoint.close(CODE_GOODBYE, b"goodbye"),
        }
    }
}

impl Mesh {
    /// A builder with default settings.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// The first handle of a peer just started.
    pub(super) fn new(inner: Arc<Inner>) -> Mesh {
        Mesh { _handle: Some(Arc::new(HandleGuard { inner: inner.clone() })), inner }
    }

    /// A `Mesh` for one of the peer's own tasks: it does not keep the peer
    /// running once the application's last handle is gone.
    pub(super) fn internal(inner: Arc<Inner>) -> Mesh {
        Mesh { _handle: None, inner }
    }

    /// The address peers are accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This peer's identity (name and incarnation).
    pub fn id(&self) -> &MemberId {
        self.inner.replica.me()
    }

    /// The core replica, for advanced use (RESP front door, tests).
    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    /// Reads `key` from the local replica: no network, no await. The value
    /// is a copy (the store keeps each entry in one compact allocation).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<Bytes> {
        self.get_with(key, Bytes::copy_from_slice)
    }

    /// Reads `key` like [`Mesh::get`], but lends the value to `f` instead of
    /// copying it: the faster read when the caller copies or parses it
    /// anyway. `f` runs under a shard's read lock, so it should be short,
    /// and must not call this mesh: a write of a key in the same shard
    /// would wait for that lock for good, and a read of one can, queued
    /// behind a writer waiting for it (a debug build panics on both).
    pub fn get_with<R>(&self, key: impl AsRef<[u8]>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // The clock is read only for a key with an expiry; the access is
        // stamped with the time the timer and writes last gave the store.
        self.inner.replica.get_with_clock(key.as_ref(), || self.now_ms(), f)
    }

    /// Whether `key` has a value here (as [`Mesh::get`] would find it).
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.get_with(key, |_| ()).is_some()
    }

    /// Values held here, including expired ones not yet reclaimed (as
    /// moka's `entry_count`, an upper bound on what reads would find).
    pub fn len(&self) -> usize {
        let st = self.inner.replica.store().stats();
        st.entries.saturating_sub(st.tombstones + st.stubs)
    }

    /// Whether no value is held here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads several keys as one, lending each value (`None`: absent) to
    /// `f` in order: a [`Mesh::transaction`]'s writes, local or from a
    /// peer, are seen all or none. `f` runs under the keys' shard read
    /// locks, so it should be short, and must not use this mesh.
    pub fn get_many_with<K: AsRef<[u8]>>(&self, keys: &[K], f: impl FnMut(Option<&[u8]>)) {
        self.inner.replica.store().get_many_with(keys, self.now_ms(), f)
    }

    /// The peer's clock (Unix ms): what its stamps, TTLs and expiry use.
    pub fn now_ms(&self) -> u64 {
        self.inner.env.now_ms()
    }

    /// The peer's clock and random source.
    pub fn env(&self) -> &Env {
        &self.inner.env
    }

    /// Bytes the process has allocated, from the [`super::MemoryProbe`]
    /// given at start (`None` without one).
    pub fn allocated_bytes(&self) -> Option<usize> {
        self.inner.memory.as_ref().and_then(|probe| probe())
    }

    /// The largest key plus value a write may carry: it must fit in one
    /// frame, with room for the batch header.
    pub fn max_write_bytes(&self) -> usize {
        self.inner.config.max_frame - 4096
    }

    fn check_size(&self, key: &Bytes, value: &Bytes) -> Result<(), MeshError> {
        let len = key.len() + value.len();
        let max = self.max_write_bytes();
        if len > max {
            return Err(MeshError::TooLarge { len, max });
        }
        Ok(())
    }

    /// Writes `key` (with the builder's default TTL, if it set one); the
    /// write is pushed to every connected peer. Refused while the peer is
    /// still loading ([`Mesh::wait_ready`]).
    pub fn insert(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), MeshError> {
        let ttl = self.inner.default_ttl.map(ttl_ms);
        self.insert_ttl_ms(key.into(), value.into(), ttl)
    }

    /// Writes `key` with a time to live.
    pub fn insert_with_ttl(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), MeshError> {
        self.insert_ttl_ms(key.into(), value.into(), Some(ttl_ms(ttl)))
    }

    fn insert_ttl_ms(&self, key: Bytes, value: Bytes, ttl: Option<u64>) -> Result<(), MeshError> {
        // Checked before the write, which may evict to make room.
        self.check_size(&key, &value)?;
        self.write_blind(key, |stamp| {
            Some(Slot::Value { data: value, expires_at_ms: ttl.map(|t| stamp.physical_ms().saturating_add(t)) })
        })
        .map(drop)
    }

    /// Deletes `key` everywhere. Returns whether it was visible here.
    pub fn invalidate(&self, key: impl Into<Bytes>) -> Result<bool, MeshError> {
        let w = self.inner.replica.delete(key.into(), self.now_ms())?;
        let existed = w.previous.is_some();
        self.inner.after_write(w);
        Ok(existed)
    }

    /// Atomic local read-modify-write (NX, XX, KEEPTTL, EXPIRE): `f` sees the
    /// visible slot and the new stamp and returns the slot to write, or
    /// `None` to write nothing. The result is replicated like any write.
    pub fn write_with(
        &self,
        key: impl Into<Bytes>,
        f: impl FnOnce(Option<&Slot>, Stamp) -> Option<Slot>,
    ) -> Result<Option<Written>, MeshError> {
        let key = key.into();
        let mut size = SizeCheck::new(self.max_write_bytes());
        let w =
            self.inner.replica.write_with(key.clone(), self.now_ms(), |cur, stamp| size.check(&key, f(cur, stamp)?))?;
        size.result()?;
        if let Some(w) = &w {
            self.inner.after_write(w.clone());
        }
        Ok(w)
    }

    /// As [`Mesh::write_with`], for a write that does not depend on the
    /// value it replaces: `f` is not shown it ([`Store::write_blind`]).
    /// Returns whether `f` wrote.
    ///
    /// [`Store::write_blind`]: crate::store::Store::write_blind
    pub(crate) fn write_blind(
        &self,
        key: impl Into<Bytes>,
        f: impl FnOnce(Stamp) -> Option<Slot>,
    ) -> Result<bool, MeshError> {
        let key = key.into();
        let mut size = SizeCheck::new(self.max_write_bytes());
        let w = self.inner.replica.write_blind(key.clone(), self.now_ms(), |stamp| size.check(&key, f(stamp)?))?;
        size.result()?;
        let Some(w) = w else { return Ok(false) };
        self.inner.after_write(w);
        Ok(true)
    }

    /// Deletes every key written before now, on every peer (Redis's
    /// FLUSHALL).
    pub fn invalidate_all(&self) -> Result<(), MeshError> {
        let stamp = self.inner.replica.flush_all(self.now_ms())?;
        for p in self.inner.peers.lock().values() {
            p.queue.force();
        }
        self.inner.publish(Change { key: Bytes::new(), kind: ChangeKind::Flush, origin: Origin::Local, stamp });
        Ok(())
    }

    /// Publishes `message` on `channel` (on the shard channel namespace if
    /// `sharded`): this peer's listeners ([`Mesh::on_message`]) get it at
    /// once, and it is pushed to every connected peer behind the writes
    /// queued before it, for their listeners. Returns the receivers this
    /// peer's listeners reported (what Redis's `PUBLISH` answers in a
    /// cluster). At most once, and only to peers connected now; see the
    /// `pubsub` module docs.
    ///
    /// Refused if channel and message do not fit in one push frame.
    pub fn publish(
        &self,
        channel: impl Into<Bytes>,
        message: impl Into<Bytes>,
        sharded: bool,
    ) -> Result<usize, MeshError> {
        let m = Publication { channel: channel.into(), message: message.into(), sharded };
        let len = m.channel.len() + m.message.len();
        let max = self.max_write_bytes();
        if len > max {
            return Err(MeshError::TooLarge { len, max });
        }
        self.inner.counters.messages_published.fetch_add(1, Ordering::Relaxed);
        for p in self.inner.peers.lock().values() {
            p.queue.push_message(m.clone());
        }
        Ok(self.inner.listeners.deliver(&m))
    }

    /// Calls `f` with every pub/sub message published on this peer or
    /// received from another, until the returned listener is dropped. `f`
    /// returns how many receivers it handed the message to. It runs on the
    /// task that delivers the message, so it must not block: hand the
    /// message off if it needs work.
    pub fn on_message(&self, f: impl Fn(&Publication) -> usize + Send + Sync + 'static) -> MessageListener {
        self.inner.listeners.add(Arc::new(f))
    }

    /// Every member known, with its state.
    pub fn members(&self) -> Vec<MemberStatus> {
        let connected: HashMap<String, (MemberId, u16)> =
            self.inner.peers.lock().iter().map(|(n, p)| (n.clone(), (p.id.clone(), p.version))).collect();
        self.inner
            .replica
            .members_all()
            .into_iter()
            .map(|(id, status, synced_ms, addr)| {
                let version = connected.get(&id.name).filter(|(c, _)| *c == id).map(|(_, v)| *v);
                MemberStatus { connected: version.is_some(), version, id, status, addr, synced_ms }
            })
            .collect()
    }

    /// The protocol versions this peer speaks: each link uses the highest
    /// version both of its ends speak.
    pub fn protocol_versions(&self) -> crate::wire::VersionRange {
        self.inner.versions
    }

    /// The last hello refused because protocol version ranges did not meet
    /// (this peer refusing a peer, or refused by one), if any.
    pub fn version_refusal(&self) -> Option<super::VersionRefusal> {
        self.inner.version_state.last_refusal()
    }

    /// Operator removal of a member that is gone for good (`meshcache
    /// forget`): collection stops waiting for it. Never do this to a member
    /// that may come back with its data: its deletes could be undone.
    pub fn forget(&self, name: &str) -> bool {
        let forgotten = self.inner.replica.forget(name);
        self.inner.note_members();
        forgotten
    }

    /// Whether bootstrap is complete, so that writes are accepted.
    pub fn is_ready(&self) -> bool {
        self.inner.replica.is_booted()
    }

    /// Waits until bootstrap is complete, or `timeout`. Returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so that a session ending in
                // between still wakes this wait.
                let ended = self.inner.sessions_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.is_ready() {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() || self.is_ready()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> MeshStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ignored = self.inner.replica.members_ignored();
        // Each lock is taken and released in its own statement: in the
        // struct's expression a guard would live to the end of it, and the
        // driver takes `links` then `peers`.
        let connected = self.inner.peers.lock().len();
        let dials = self.inner.links.lock().links.dials_under_way();
        MeshStats {
            store: self.inner.replica.store().stats(),
            members: self.inner.replica.members().len(),
            connected,
            booted: self.inner.replica.is_booted(),
            deltas_sent: l(&c.deltas_sent),
            deltas_received: l(&c.deltas_received),
            push_batches_sent: l(&c.push_batches_sent),
            push_bytes_sent: l(&c.push_bytes_sent),
            queue_overflows: l(&c.queue_overflows),
            ae_rounds: l(&c.ae_rounds),
            ae_failed: l(&c.ae_failed),
            ae_declined: l(&c.ae_declined),
            ae_summaries_deferred: l(&c.ae_summaries_deferred),
            ae_summary_window_waits: l(&c.ae_summary_window_waits),
            ae_bytes_sent: l(&c.ae_bytes_sent),
            ae_bytes_received: l(&c.ae_bytes_received),
            ae_entries_sent: l(&c.ae_entries_sent),
            ae_entries_sent_failed: l(&c.ae_entries_sent_failed),
            ae_entries_received: l(&c.ae_entries_received),
            refused_peers: l(&c.refused_peers),
            tls_refused: l(&c.tls_refused),
            links_made: l(&c.links_made),
            dials,
            protocol_errors: l(&c.protocol_errors),
            clock_refused: self.inner.replica.store().clock().refused(),
            members_invalid: ignored.invalid,
            seed_lookups_failed: l(&c.seed_lookups_failed),
            members_over_cap: ignored.over_cap,
            messages_published: l(&c.messages_published),
            messages_received: l(&c.messages_received),
            fill_loads: l(&c.fill_loads),
            fill_leases: self.inner.leases.len(),
            version_refusals: l(&c.version_refusals),
        }
    }

    /// Resolves when the peer stops (after `shutdown`, or on its own when it
    /// learns it was superseded).
    pub async fn stopped(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Stops without saying goodbye, as a crash would: peers keep this
    /// incarnation as a member, pausing tombstone collection, until a newer
    /// incarnation of its name appears or an operator forgets it. For
    /// failure testing; only with the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub async fn halt(&self) {
        self.inner.cancel.cancel();
        self.inner.endpoint.close(super::conn::CODE_SUPERSEDED, b"halt");
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.tasks.wait()).await;
    }

    /// Whether this peer should be sent traffic, and if not, why (what a
    /// readiness probe reports).
    pub fn readiness(&self) -> Readiness {
        let inner = &self.inner;
        if inner.superseded.load(Ordering::Relaxed) {
            Readiness::Superseded
        } else if inner.cancel.is_cancelled() {
            Readiness::Stopped
        } else if inner.draining.load(Ordering::Relaxed) {
            Readiness::Draining
        } else if !inner.replica.is_booted() {
            Readiness::Loading
        } else {
            Readiness::Ready
        }
    }

    /// Marks the peer as leaving ([`Readiness::Draining`]) without
    /// stopping anything: it still takes writes and replicates them. For an
    /// application that stops its own front door first (as the `meshcache`
    /// command does with its Redis clients) and then calls
    /// [`Mesh::shutdown`].
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Leaves the mesh gracefully. First drains: each peer's push stream
    /// sends what is queued for it and ends, and the peer confirms it
    /// received all of it (each waits at most `drain_timeout`; one not
    /// confirmed in time is logged, and may miss those writes until
    /// anti-entropy with another peer repairs it). Then says goodbye to
    /// every peer (so that they stop waiting for this incarnation), closes
    /// connections, and waits for every task to finish. Writes made after
    /// the drain began may not reach every peer.
    pub async fn shutdown(&self) {
        self.start_draining();
        let queues: Vec<(String, Arc<super::queue::PushQueue>)> =
            self.inner.peers.lock().iter().map(|(name, p)| (name.clone(), p.queue.clone())).collect();
        let mut ends = tokio::task::JoinSet::new();
        for (i, (_, q)) in queues.iter().enumerate() {
            q.drain();
            let q = q.clone();
            ends.spawn(async move { (i, q.ended().await) });
        }
        let mut flushed = vec![false; queues.len()];
        let collect = async {
            while let Some(Ok((i, ok))) = ends.join_next().await {
                flushed[i] = ok;
            }
        };
        match tokio::time::timeout(self.inner.config.drain_timeout, collect).await {
            Ok(()) => {
                let missed: Vec<&str> =
                    queues.iter().zip(&flushed).filter(|(_, ok)| !**ok).map(|((n, _), _)| n.as_str()).collect();
                if missed.is_empty() {
                    tracing::info!(peers = queues.len(), "drained: every peer confirmed every queued write");
                } else {
                    tracing::warn!(?missed, "drained: these peers' links ended before they confirmed every write");
                }
            }
            Err(_) => tracing::warn!(
                timeout_ms = self.inner.config.drain_timeout.as_millis() as u64,
                "drain_timeout passed before every peer confirmed every queued write"
            ),
        }
        say_goodbye(&self.inner).await;
        self.inner.cancel.cancel();
        self.inner.endpoint.close(CODE_GOODBYE, b"goodbye");
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        tracing::info!(name = %self.inner.replica.me().name, "peer stopped");
    }
}
