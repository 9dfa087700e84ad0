//! [`MeshBuilder`]: the settings of a peer, and assembling and starting
//! one from them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::accept_loop;
use super::driver::{drive, Driver};
use super::inner::{Counters, Inner};
use super::links;
use super::memory::MemoryProbe;
use super::reload::Tls;
use super::timer::timer_loop;
use super::{Mesh, MeshError};
use crate::config::{MeshConfig, Seed};
use crate::env::Env;
use crate::hlc::NodeId;
use crate::locks::Mutex;
use crate::membership::{Incarnation, MemberId};
use crate::replica::Replica;
use crate::store::{Change, ChangeKind, Origin, StoreConfig};
use crate::transport::certs::Identity;
use crate::wire::{FrameCodec, VersionRange, PROTOCOL_VERSIONS};

/// Builds a [`Mesh`]. See [`MeshConfig`] for every setting.
#[must_use]
#[derive(Default)]
pub struct MeshBuilder {
    config: MeshConfig,
    identity: Option<Identity>,
    socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    env: Option<Env>,
    crypto: Option<Arc<rustls::crypto::CryptoProvider>>,
    memory: Option<MemoryProbe>,
    default_ttl: Option<Duration>,
    fill: super::fill::FillConfig,
    versions: Option<VersionRange>,
}

impl MeshBuilder {
    /// A time to live for every [`Mesh::insert`] (without one, values live
    /// until deleted or evicted). [`Mesh::insert_with_ttl`] still sets its
    /// own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How long a [`Mesh::get_or_load`] fill lease holds without renewal
    /// (default 5 s): how long the other peers wait for a holder that was
    /// cut off or died before one of them loads the key itself.
    pub fn fill_lease(mut self, lease: Duration) -> Self {
        self.fill.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long a fill waits between taking its lease and loading, for a
    /// lease taken elsewhere at the same moment to arrive (default: twice
    /// the slowest round trip to the connected peers, within 3–50 ms).
    pub fn fill_settle(mut self, settle: Duration) -> Self {
        self.fill.settle = Some(settle);
        self
    }

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
    /// Peers to join through: socket addresses, or [`Seed`]s (which may be
    /// DNS names, resolved again on every dial round).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = impl Into<Seed>>) -> Self {
        self.config.seeds = seeds.into_iter().map(Into::into).collect();
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
    /// Memory bound, in bytes: for the values, or for the whole process
    /// with a [`MeshBuilder::memory_probe`].
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
    /// `listen` is then ignored; the socket's own address is used. Only with
    /// the `faults` feature.
    #[cfg(any(test, feature = "faults"))]
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

    /// How the peer reads the process's allocated bytes. With one, and a
    /// `max_bytes`, the bound covers everything the process allocates, not
    /// only the store's values: see [`MemoryProbe`]. A probe must be cheap;
    /// it is read every 10 ms.
    pub fn memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.memory = Some(probe);
        self
    }

    /// Speaks only `versions` of the protocol versions this build speaks
    /// (`wire::PROTOCOL_VERSIONS`), as a peer of an older build would: a
    /// link to it uses at most `versions.end()`, and it never sends a
    /// message kind newer than that. For tests of mixed meshes; only with
    /// the `testing` feature. [`MeshBuilder::start`] refuses a range that
    /// is empty or reaches outside what this build speaks.
    #[cfg(any(test, feature = "testing"))]
    pub fn protocol_versions(mut self, versions: std::ops::RangeInclusive<u16>) -> Self {
        self.versions = Some(VersionRange { lo: *versions.start(), hi: *versions.end() });
        self
    }

    /// Validates the settings, binds the listen address and starts the peer.
    pub async fn start(self) -> Result<Mesh, MeshError> {
        let env = self.env.unwrap_or_default();
        let crypto = self.crypto.unwrap_or_else(crate::transport::tls::default_provider);
        let identity = self.identity.ok_or(MeshError::NoIdentity)?;
        let (config, socket, memory) = (self.config, self.socket, self.memory);
        config.validate()?;
        let versions = self.versions.unwrap_or(PROTOCOL_VERSIONS);
        if versions.lo > versions.hi
            || !PROTOCOL_VERSIONS.contains(versions.lo)
            || !PROTOCOL_VERSIONS.contains(versions.hi)
        {
            return Err(MeshError::ProtocolVersions { asked: versions, speaks: PROTOCOL_VERSIONS });
        }
        if identity.name != config.name {
            return Err(MeshError::NameMismatch { cert: identity.name.clone(), name: config.name.clone() });
        }
        let transport = transport_config(&config, None);
        let mut server = crate::transport::tls::quinn_server_config_with(&identity, crypto.clone())?;
        server.transport_config(transport.clone());
        let mut client_config = crate::transport::tls::quinn_client_config_with(&identity, crypto.clone())?;
        client_config.transport_config(transport.clone());
        // quinn's own draws come from the env too when it is seeded, so
        // that a seeded run replays (see `transport::seeded`).
        let (endpoint_config, dst_cids) = if env.is_seeded() {
            let (endpoint, dst_cids) = crate::transport::seeded::seed_quinn(&env, &mut server, &mut client_config);
            (endpoint, Some(dst_cids))
        } else {
            (quinn::EndpointConfig::default(), None)
        };
        let tls = Tls::new(crypto, transport, dst_cids, server.clone(), client_config, identity.info());
        let endpoint = match socket {
            Some(socket) => quinn::Endpoint::new_with_abstract_socket(
                endpoint_config,
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            ),
            None => crate::transport::socket::bind(config.listen)
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
            policy: config.eviction_policy,
            samples: std::num::NonZeroUsize::new(config.eviction_samples).expect("validated"),
            max_tombstones: std::num::NonZeroUsize::new(config.max_tombstones).expect("validated"),
            // One budget for both, for the operator: registers without a
            // value.
            max_stubs: std::num::NonZeroUsize::new(config.max_tombstones).expect("validated"),
            max_offset_ms: config.max_offset.as_millis() as u64,
            seed: node.0,
        };
        let replica =
            Arc::new(Replica::new(me.clone(), store, config.seeds.is_empty()).expect("shards validated above"));
        replica.set_my_addr(advertise);
        replica.set_max_members(config.max_members);
        let (events, _) = broadcast::channel::<Change>(4096);
        let taps = Arc::new(super::taps::Taps::default());
        // A compaction drops older values everywhere, like a FLUSHALL: this
        // peer's subscribers hear it as one (the others do once its
        // `clear_below` reaches them). The taps heard it from the store.
        let told = events.clone();
        replica.store().on_compaction(move |c| {
            tracing::warn!(
                clear_below = %c.clear_below, tombstones = c.tombstones, values = c.values,
                "tombstone budget exceeded: compacted by raising clear_below (older values flushed)"
            );
            let _ = told.send(Change {
                key: bytes::Bytes::new(),
                kind: ChangeKind::Flush,
                origin: Origin::Local,
                stamp: c.clear_below,
            });
        });
        // An eviction is told under the key's lock, so a later write of the
        // key is never published before it. Without a listener it costs a
        // look at the channel and the taps, and no copy of the key.
        let (told, tapped) = (events.clone(), taps.clone());
        replica.store().on_eviction(move |key, stamp| {
            tapped.tell(key, ChangeKind::Evict, stamp);
            if told.receiver_count() > 0 {
                let _ = told.send(Change {
                    key: bytes::Bytes::copy_from_slice(key),
                    kind: ChangeKind::Evict,
                    origin: Origin::Local,
                    stamp,
                });
            }
        });
        // Every other change of a key is told to the taps under its lock
        // too, in the order the key's changes are applied.
        let tapped = taps.clone();
        replica.store().on_change(move |key, kind, stamp| tapped.tell(key, kind, stamp));
        let tapped = taps.clone();
        replica.store().on_change_heard(move || tapped.active());
        let mut links = links::Links::new(
            me.clone(),
            links::Timings::new(config.anti_entropy_interval),
            vec![advertise, local_addr],
            config.seeds.clone(),
            env.random_u64(),
            env.instant().into_std(),
        );
        links.set_versions(versions);
        let inner = Arc::new(Inner {
            replica,
            started: env.instant(),
            env,
            codec: FrameCodec::new(config.max_frame),
            versions,
            version_state: Default::default(),
            config,
            endpoint,
            tls,
            local_addr,
            advertise,
            peers: Mutex::new(BTreeMap::new()),
            events,
            taps,
            links: Mutex::new(Driver::new(links)),
            links_changed: tokio::sync::Notify::new(),
            counters: Counters::default(),
            sessions_ended: tokio::sync::Notify::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            memory,
            listeners: Default::default(),
            default_ttl: self.default_ttl,
            flights: Default::default(),
            rtts: Default::default(),
            leases: Default::default(),
            fill: self.fill,
            draining: Default::default(),
            superseded: Default::default(),
        });
        tracing::info!(name = %me.name, node = %me.incarnation.node, listen = %local_addr, seeds = ?inner.config.seeds,
            protocol = %versions, "peer started");
        inner.tasks.spawn(accept_loop(inner.clone()));
        inner.tasks.spawn(drive(inner.clone()));
        inner.tasks.spawn(timer_loop(inner.clone()));
        inner.tasks.spawn(super::memory::memory_loop(inner.clone()));
        Ok(Mesh::new(inner))
    }
}

/// quinn's transport settings for a peer's connections; a dial to an
/// address measured before passes that RTT as `initial_rtt` (`rtt`).
pub(super) fn transport_config(c: &MeshConfig, initial_rtt: Option<Duration>) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if let Some(rtt) = initial_rtt {
        t.initial_rtt(rtt);
    }
    t.keep_alive_interval(Some(c.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(c.idle_timeout).unwrap_or(quinn::VarInt::from_u32(10_000).into()),
    ));
    // Anti-entropy sessions are short-lived bi streams; allow several at
    // once per connection (both directions, plus the hello).
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(16));
    if let Some(w) = c.receive_window {
        // Validated to fit a VarInt.
        let w = quinn::VarInt::from_u64(w as u64).unwrap_or(quinn::VarInt::MAX);
        t.receive_window(w);
        t.stream_receive_window(w.min(quinn::VarInt::from_u32(1_250_000)));
        t.send_window(w.into_inner());
    }
    Arc::new(t)
}
