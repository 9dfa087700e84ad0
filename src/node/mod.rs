//! The tokio + quinn shell around the core, and the embedded API: [`Mesh`].
//!
//! One QUIC connection per peer pair, with traffic split by kind:
//!
//! - the first bi stream carries the hello exchange (version, clocks, name);
//!   a peer counts as authenticated only once it is done;
//! - one long-lived uni stream per direction carries pushed delta batches;
//! - every anti-entropy session runs on a bi stream of its own.
//!
//! Locks are never held across an `.await`: the store's are taken inside
//! synchronous core calls, and the peer table's only to look up or swap an
//! entry.

mod links;
mod peer;
mod queue;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, MeshConfig};
use crate::env::Env;
use crate::hlc::{NodeId, Stamp};
use crate::membership::{Incarnation, MemberId, Status};
use crate::replica::{Replica, WriteError};
use crate::store::{ChangeKind, Slot, StoreConfig, StoreStats, Written};
use crate::transport::certs::{CertError, Identity};
use crate::wire::FrameCodec;
use queue::PushQueue;

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A write through this peer's API.
    Local,
    /// A write replicated from another peer.
    Remote,
}

/// A change to the keyspace, streamed to subscribers so that an
/// application's own near cache can drop stale copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key (empty for [`ChangeKind::Flush`]).
    pub key: Bytes,
    /// What happened.
    pub kind: ChangeKind,
    /// Where it came from.
    pub origin: Origin,
    /// The stamp of the write.
    pub stamp: Stamp,
}

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The settings are invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No TLS identity was given (`MeshBuilder::tls`).
    #[error("no TLS identity: call MeshBuilder::tls with a certificate from the cluster CA")]
    NoIdentity,
    /// The TLS identity is unusable.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The identity's certificate is for another name.
    #[error("the certificate is for {cert:?}, but this peer is named {name:?}")]
    NameMismatch {
        /// Name in the certificate.
        cert: String,
        /// Configured name.
        name: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A local write was refused; see [`WriteError::is_retryable`].
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The key and value are too large to replicate in one frame.
    #[error("key and value of {len} bytes exceed the largest replicable write ({max} bytes, from max_frame)")]
    TooLarge {
        /// Key plus value bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl MeshError {
    /// Whether retrying later can succeed (a peer still loading).
    pub fn is_retryable(&self) -> bool {
        matches!(self, MeshError::Write(w) if w.is_retryable())
    }
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
}

/// Counters of the peer's replication traffic. Monotonic.
#[derive(Default, Debug)]
struct Counters {
    deltas_sent: AtomicU64,
    deltas_received: AtomicU64,
    push_batches_sent: AtomicU64,
    push_bytes_sent: AtomicU64,
    queue_overflows: AtomicU64,
    ae_rounds: AtomicU64,
    ae_failed: AtomicU64,
    ae_bytes_sent: AtomicU64,
    ae_bytes_received: AtomicU64,
    ae_entries_sent: AtomicU64,
    ae_entries_received: AtomicU64,
    refused_peers: AtomicU64,
    protocol_errors: AtomicU64,
}

/// A snapshot of the peer's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Bytes sent in anti-entropy sessions.
    pub ae_bytes_sent: u64,
    /// Bytes received in anti-entropy sessions.
    pub ae_bytes_received: u64,
    /// Registers sent in anti-entropy sessions (a register another peer
    /// also sent is repair done twice).
    pub ae_entries_sent: u64,
    /// Registers received in anti-entropy sessions.
    pub ae_entries_received: u64,
    /// Peers refused at the hello (version, skew, superseded, name).
    pub refused_peers: u64,
    /// Connections closed because a peer broke the protocol.
    pub protocol_errors: u64,
    /// Remote clock readings refused for running too far ahead.
    pub clock_refused: u64,
    /// Member entries ignored: a gossiped or announced name no certificate
    /// can carry, or an address no one can dial.
    pub members_invalid: u64,
    /// New member names ignored because the view held `max_members`.
    pub members_over_cap: u64,
}

/// The link to a peer incarnation: the connection its pushes go over.
struct PeerConn {
    id: MemberId,
    conn: quinn::Connection,
    queue: Arc<PushQueue>,
}

struct Inner {
    replica: Arc<Replica>,
    /// The peer's only clock and random source.
    env: Env,
    /// Woken when an anti-entropy session ends or bootstrap times out:
    /// what `Mesh::wait_ready` waits on.
    sessions_ended: tokio::sync::Notify,
    config: MeshConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    local_addr: SocketAddr,
    advertise: SocketAddr,
    codec: FrameCodec,
    peers: Mutex<BTreeMap<String, PeerConn>>,
    events: broadcast::Sender<Change>,
    /// The connection-level protocol (which connection is a peer's link,
    /// when rounds run, when to dial), driven by `peer::drive`.
    links: Mutex<peer::Driver>,
    /// Wakes the driver: an event may have moved the machine's deadline.
    links_changed: tokio::sync::Notify,
    counters: Counters,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// When this peer started, on tokio's clock (simulated runtimes move it).
    started: tokio::time::Instant,
}

/// An embedded meshcache peer: this process becomes a member of the mesh.
///
/// Reads are local and never touch the network; writes are local and then
/// pushed to every connected peer; anti-entropy repairs what pushes miss.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use meshcache::transport::certs::EphemeralCa;
/// use meshcache::Mesh;
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
/// b.put("greeting", "hello")?;
/// assert_eq!(b.get(b"greeting").as_deref(), Some(&b"hello"[..]));
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
    inner: Arc<Inner>,
    /// Held by handles only, never by the peer's own tasks (which hold
    /// `inner`): its drop is the last handle's.
    _handle: Arc<HandleGuard>,
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
            inner.endpoint.close(peer::CODE_GOODBYE, b"goodbye");
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
                    peer::say_goodbye(&inner).await;
                    inner.endpoint.close(peer::CODE_GOODBYE, b"goodbye");
                });
            }
            Err(_) => inner.endpoint.close(peer::CODE_GOODBYE, b"goodbye"),
        }
    }
}

/// Builds a [`Mesh`]. See [`MeshConfig`] for every setting.
#[must_use]
#[derive(Default)]
pub struct MeshBuilder {
    config: MeshConfig,
    identity: Option<Identity>,
    socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    env: Option<Env>,
    crypto: Option<Arc<rustls::crypto::CryptoProvider>>,
}

impl MeshBuilder {
    /// Starts from a whole configuration.
    pub fn config(mut self, config: MeshConfig) -> Self {
        self.config = config;
        self
    }
    /// This peer's name (also its certificate's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }
    /// Where to accept peers (port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }
    /// The address other peers should dial, if not `listen`.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.config.advertise = Some(addr);
        self
    }
    /// Peers to join through.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.config.seeds = seeds.into_iter().collect();
        self
    }
    /// The TLS identity: this peer's certificate and key, and the cluster CA.
    pub fn tls(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }
    /// Anti-entropy period.
    pub fn anti_entropy_interval(mut self, d: Duration) -> Self {
        self.config.anti_entropy_interval = d;
        self
    }
    /// Push batching delay (at most 1 ms).
    pub fn push_delay(mut self, d: Duration) -> Self {
        self.config.push_delay = d;
        self
    }
    /// Memory bound for values, in bytes.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.config.max_bytes = Some(bytes);
        self
    }
    /// Budget of tombstones and stubs before compaction.
    pub fn max_tombstones(mut self, n: usize) -> Self {
        self.config.max_tombstones = n;
        self
    }
    /// How long a seeded peer waits for a seed before starting alone.
    pub fn bootstrap_timeout(mut self, d: Duration) -> Self {
        self.config.bootstrap_timeout = d;
        self
    }

    /// Carries QUIC over this socket instead of binding `listen`: a
    /// fault-injecting wrapper around real UDP, or a simulated network.
    /// `listen` is then ignored; the socket's own address is used.
    pub fn socket(mut self, socket: Arc<dyn quinn::AsyncUdpSocket>) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Where the peer reads the time and draws random numbers (default:
    /// the system clock and OS entropy). A simulation passes its virtual
    /// clock and a seed, so that a run replays exactly.
    pub fn env(mut self, env: Env) -> Self {
        self.env = Some(env);
        self
    }

    /// The TLS crypto provider (default: ring's). A simulation that is to
    /// replay exactly passes one whose randomness and key exchange are
    /// seeded (TLS randomness decides how a stray datagram is read). Never
    /// outside a simulation: seeded keys are predictable keys.
    pub fn crypto_provider(mut self, provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        self.crypto = Some(provider);
        self
    }

    /// Validates the settings, binds the listen address and starts the peer.
    pub async fn start(self) -> Result<Mesh, MeshError> {
        let env = self.env.unwrap_or_default();
        let crypto = self.crypto.unwrap_or_else(crate::transport::tls::default_provider);
        let identity = self.identity.ok_or(MeshError::NoIdentity)?;
        Mesh::start(self.config, identity, self.socket, env, crypto).await
    }
}

fn transport_config(c: &MeshConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(c.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(c.idle_timeout).unwrap_or(quinn::VarInt::from_u32(10_000).into()),
    ));
    // Anti-entropy sessions are short-lived bi streams; allow several at
    // once per connection (both directions, plus the hello).
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(16));
    Arc::new(t)
}

impl Mesh {
    /// A builder with default settings.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    async fn start(
        config: MeshConfig,
        identity: Identity,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
        env: Env,
        crypto: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Mesh, MeshError> {
        config.validate()?;
        if identity.name != config.name {
            return Err(MeshError::NameMismatch { cert: identity.name.clone(), name: config.name.clone() });
        }
        let mut server = crate::transport::tls::quinn_server_config_with(&identity, crypto.clone())?;
        server.transport_config(transport_config(&config));
        let mut client_config = crate::transport::tls::quinn_client_config_with(&identity, crypto)?;
        client_config.transport_config(transport_config(&config));
        // quinn's own draws come from the env too when it is seeded, so
        // that a seeded run replays (see `transport::seeded`).
        let endpoint_config = if env.is_seeded() {
            crate::transport::seeded::seed_quinn(&env, &mut server, &mut client_config)
        } else {
            quinn::EndpointConfig::default()
        };
        let endpoint = match socket {
            Some(socket) => quinn::Endpoint::new_with_abstract_socket(
                endpoint_config,
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            ),
            None => std::net::UdpSocket::bind(config.listen)
                .and_then(|s| quinn::Endpoint::new(endpoint_config, Some(server), s, Arc::new(quinn::TokioRuntime))),
        }
        .map_err(|source| MeshError::Bind { addr: config.listen, source })?;
        let local_addr = endpoint.local_addr().map_err(|source| MeshError::Bind { addr: config.listen, source })?;
        let advertise = config.advertise.unwrap_or(local_addr);
        let node = NodeId(env.random_u64() | 1);
        let me = MemberId { name: config.name.clone(), incarnation: Incarnation { started_ms: env.now_ms(), node } };
        let store = StoreConfig {
            shards: std::num::NonZeroUsize::new(config.shards).expect("validated"),
            max_bytes: config.max_bytes.and_then(std::num::NonZeroUsize::new),
            max_tombstones: std::num::NonZeroUsize::new(config.max_tombstones).expect("validated"),
            max_offset_ms: config.max_offset.as_millis() as u64,
            seed: node.0,
        };
        let replica =
            Arc::new(Replica::new(me.clone(), store, config.seeds.is_empty()).expect("shards validated above"));
        replica.set_my_addr(advertise);
        replica.set_max_members(config.max_members);
        let (events, _) = broadcast::channel(4096);
        let links = links::Links::new(
            me.clone(),
            links::Timings::new(config.anti_entropy_interval),
            vec![advertise, local_addr],
            config.seeds.clone(),
            env.random_u64(),
            env.instant().into_std(),
        );
        let inner = Arc::new(Inner {
            replica,
            started: env.instant(),
            env,
            codec: FrameCodec::new(config.max_frame),
            config,
            endpoint,
            client_config,
            local_addr,
            advertise,
            peers: Mutex::new(BTreeMap::new()),
            events,
            links: Mutex::new(peer::Driver::new(links)),
            links_changed: tokio::sync::Notify::new(),
            counters: Counters::default(),
            sessions_ended: tokio::sync::Notify::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        tracing::info!(name = %me.name, node = %me.incarnation.node, listen = %local_addr, seeds = ?inner.config.seeds, "peer started");
        inner.tasks.spawn(peer::accept_loop(inner.clone()));
        inner.tasks.spawn(peer::drive(inner.clone()));
        inner.tasks.spawn(timer_loop(inner.clone()));
        Ok(Mesh { _handle: Arc::new(HandleGuard { inner: inner.clone() }), inner })
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

    /// Reads `key` from the local replica: no network, no await.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.inner.replica.get(key, self.now_ms())
    }

    /// The peer's clock (Unix ms): what its stamps, TTLs and expiry use.
    pub fn now_ms(&self) -> u64 {
        self.inner.env.now_ms()
    }

    /// The peer's clock and random source.
    pub fn env(&self) -> &Env {
        &self.inner.env
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

    /// Writes `key`; the write is pushed to every connected peer.
    pub fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), MeshError> {
        let (key, value) = (key.into(), value.into());
        self.check_size(&key, &value)?;
        let w = self.inner.replica.put(key, value, None, self.now_ms())?;
        self.inner.after_write(w, ChangeKind::Put);
        Ok(())
    }

    /// Writes `key` with a time to live.
    pub fn put_with_ttl(&self, key: impl Into<Bytes>, value: impl Into<Bytes>, ttl: Duration) -> Result<(), MeshError> {
        let ttl = ttl.as_millis().max(1) as u64;
        let (key, value) = (key.into(), value.into());
        self.check_size(&key, &value)?;
        let w = self.inner.replica.put(key, value, Some(ttl), self.now_ms())?;
        self.inner.after_write(w, ChangeKind::Put);
        Ok(())
    }

    /// Deletes `key` everywhere. Returns whether it was visible here.
    pub fn delete(&self, key: impl Into<Bytes>) -> Result<bool, MeshError> {
        let w = self.inner.replica.delete(key.into(), self.now_ms())?;
        let existed = w.previous.is_some();
        self.inner.after_write(w, ChangeKind::Delete);
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
        let max = self.max_write_bytes();
        let mut too_large = None;
        let w = self.inner.replica.write_with(key.clone(), self.now_ms(), |cur, stamp| {
            let slot = f(cur, stamp)?;
            let len = key.len() + slot.payload_len();
            if len > max {
                too_large = Some(len);
                return None;
            }
            Some(slot)
        })?;
        if let Some(len) = too_large {
            return Err(MeshError::TooLarge { len, max });
        }
        if let Some(w) = &w {
            let kind = if w.register.val.is_tombstone() { ChangeKind::Delete } else { ChangeKind::Put };
            self.inner.after_write(w.clone(), kind);
        }
        Ok(w)
    }

    /// FLUSHALL: deletes every key older than now, on every peer.
    pub fn flush_all(&self) -> Result<(), MeshError> {
        let stamp = self.inner.replica.flush_all(self.now_ms())?;
        for p in self.inner.peers.lock().values() {
            p.queue.force();
        }
        self.inner.publish(Change { key: Bytes::new(), kind: ChangeKind::Flush, origin: Origin::Local, stamp });
        Ok(())
    }

    /// A stream of changes, local and remote. A subscriber that falls more
    /// than 4,096 changes behind is told how many it missed.
    pub fn subscribe(&self) -> tokio_stream::wrappers::BroadcastStream<Change> {
        tokio_stream::wrappers::BroadcastStream::new(self.inner.events.subscribe())
    }

    /// Every member known, with its state.
    pub fn members(&self) -> Vec<MemberStatus> {
        let connected: HashMap<String, MemberId> =
            self.inner.peers.lock().iter().map(|(n, p)| (n.clone(), p.id.clone())).collect();
        self.inner
            .replica
            .members_all()
            .into_iter()
            .map(|(id, status, synced_ms, addr)| MemberStatus {
                connected: connected.get(&id.name) == Some(&id),
                id,
                status,
                addr,
                synced_ms,
            })
            .collect()
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
        MeshStats {
            store: self.inner.replica.store().stats(),
            members: self.inner.replica.members().len(),
            connected: self.inner.peers.lock().len(),
            booted: self.inner.replica.is_booted(),
            deltas_sent: l(&c.deltas_sent),
            deltas_received: l(&c.deltas_received),
            push_batches_sent: l(&c.push_batches_sent),
            push_bytes_sent: l(&c.push_bytes_sent),
            queue_overflows: l(&c.queue_overflows),
            ae_rounds: l(&c.ae_rounds),
            ae_failed: l(&c.ae_failed),
            ae_bytes_sent: l(&c.ae_bytes_sent),
            ae_bytes_received: l(&c.ae_bytes_received),
            ae_entries_sent: l(&c.ae_entries_sent),
            ae_entries_received: l(&c.ae_entries_received),
            refused_peers: l(&c.refused_peers),
            protocol_errors: l(&c.protocol_errors),
            clock_refused: self.inner.replica.store().clock().refused(),
            members_invalid: ignored.invalid,
            members_over_cap: ignored.over_cap,
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
    /// failure testing.
    pub async fn halt(&self) {
        self.inner.cancel.cancel();
        self.inner.endpoint.close(peer::CODE_SUPERSEDED, b"halt");
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.tasks.wait()).await;
    }

    /// Leaves the mesh gracefully: says goodbye to every peer (so that they
    /// stop waiting for this incarnation), closes connections, and waits
    /// for every task to finish.
    pub async fn shutdown(&self) {
        peer::say_goodbye(&self.inner).await;
        self.inner.cancel.cancel();
        self.inner.endpoint.close(peer::CODE_GOODBYE, b"goodbye");
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        tracing::info!(name = %self.inner.replica.me().name, "peer stopped");
    }
}

impl Inner {
    fn publish(&self, c: Change) {
        // No subscriber is fine.
        let _ = self.events.send(c);
    }

    fn publish_all(&self, changes: Vec<crate::store::Change>, origin: Origin) {
        if self.events.receiver_count() == 0 {
            return;
        }
        for c in changes {
            self.publish(Change { key: c.key, kind: c.kind, origin, stamp: c.stamp });
        }
    }

    fn after_write(&self, w: Written, kind: ChangeKind) {
        if !w.applied {
            return;
        }
        for p in self.peers.lock().values() {
            p.queue.push(w.key.clone(), w.register.clone());
        }
        if self.events.receiver_count() > 0 {
            self.publish(Change { key: w.key, kind, origin: Origin::Local, stamp: w.register.marker });
        }
    }
}

/// The shortest time between two warnings about ignored member entries.
const IGNORED_WARN_EVERY: Duration = Duration::from_secs(60);

/// Timer work: expiry, collection, bootstrap timeout, gauges.
async fn timer_loop(inner: Arc<Inner>) {
    let mut iv = tokio::time::interval(inner.config.tick_interval);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ignored_warned = (crate::membership::Ignored::default(), None::<tokio::time::Instant>);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        let r = &inner.replica;
        if !r.is_booted() && inner.env.instant() - inner.started >= inner.config.bootstrap_timeout {
            r.force_boot();
            inner.sessions_ended.notify_waiters();
            tracing::warn!(
                timeout_ms = inner.config.bootstrap_timeout.as_millis() as u64,
                "no seed answered within the bootstrap timeout: accepting writes without an initial sync"
            );
        }
        if r.is_superseded() {
            inner.with_links(|d, _| d.links.handle_superseded());
            return;
        }
        // Membership news normally reaches the dialer as it arrives; this
        // catches any path that changed it without saying so.
        inner.note_members();
        let tick = r.tick(inner.env.now_ms());
        if let Some(c) = tick.compaction {
            tracing::warn!(
                clear_below = %c.clear_below, tombstones = c.tombstones, values = c.values,
                "tombstone budget exceeded: compacted by raising clear_below (older values flushed)"
            );
        }
        inner.publish_all(tick.expired, Origin::Local);
        // Peers gossip their whole view again and again: the same ignored
        // entries come back every round, so one line a minute at most.
        let ignored = r.members_ignored();
        if ignored != ignored_warned.0 && ignored_warned.1.is_none_or(|t| inner.env.instant() - t >= IGNORED_WARN_EVERY)
        {
            tracing::warn!(
                invalid = ignored.invalid,
                over_cap = ignored.over_cap,
                max_members = inner.config.max_members,
                "member entries ignored: names no certificate can carry or addresses no one can dial (invalid), \
                 or new names while the view is full (over_cap; raise max_members if the mesh is that large)"
            );
            ignored_warned = (ignored, Some(inner.env.instant()));
        }
        let st = r.store().stats();
        metrics::gauge!("meshcache_entries").set(st.entries as f64);
        metrics::gauge!("meshcache_bytes").set(st.bytes as f64);
        metrics::gauge!("meshcache_tombstones").set(st.tombstones as f64);
        metrics::gauge!("meshcache_stubs").set(st.stubs as f64);
        metrics::gauge!("meshcache_members").set(r.members().len() as f64);
        metrics::gauge!("meshcache_connected_peers").set(inner.peers.lock().len() as f64);
        metrics::gauge!("meshcache_clock_refused").set(r.store().clock().refused() as f64);
        metrics::gauge!("meshcache_collected_tombstones").set(st.collected_tombstones as f64);
        metrics::gauge!("meshcache_compactions").set(st.compactions as f64);
    }
}
