//! The Redis-protocol front door: a RESP2/RESP3 server in front of a
//! [`Mesh`], so that applications in any language use the mesh through
//! their usual Redis client.
//!
//! ```no_run
//! # async fn demo(mesh: meshcache::Mesh) -> std::io::Result<()> {
//! use meshcache::resp::{bind_and_serve, RespConfig};
//! let config = RespConfig { requirepass: Some("secret".into()), ..RespConfig::default() };
//! bind_and_serve(mesh, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Protocol
//!
//! Connections start in RESP2; `HELLO 3` switches to RESP3 (maps, nulls,
//! push frames for pub/sub). Requests are multibulk or inline (`PING\r\n`,
//! as typed in telnet). Pipelining is supported: every complete command in
//! a read is executed and the replies go out in one write.
//!
//! Commands, with Redis's semantics, replies and error texts: `PING ECHO GET
//! SET (EX PX EXAT PXAT NX XX KEEPTTL GET) SETNX SETEX PSETEX GETDEL GETEX
//! GETSET STRLEN APPEND GETRANGE SUBSTR SETRANGE INCR DECR INCRBY DECRBY
//! INCRBYFLOAT SETBIT GETBIT BITCOUNT LCS DEL UNLINK EXISTS TOUCH TYPE MGET
//! MSET KEYS SCAN RANDOMKEY RENAME RENAMENX COPY OBJECT EXPIRE PEXPIRE
//! EXPIREAT PEXPIREAT (NX XX GT LT) TTL PTTL EXPIRETIME PEXPIRETIME PERSIST
//! DBSIZE INFO CLIENT COMMAND SELECT 0 QUIT RESET FLUSHALL FLUSHDB AUTH
//! HELLO CONFIG TIME PUBLISH SPUBLISH PUBSUB SUBSCRIBE PSUBSCRIBE SSUBSCRIBE
//! UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE WAIT LASTSAVE SAVE BGSAVE SLOWLOG
//! ROLE MEMORY`. There is one database, 0.
//!
//! Nothing is persisted: `SAVE` and `BGSAVE` answer an error, `LASTSAVE`
//! the server's start. `WAIT` answers 0 at once: no peer acknowledges a
//! write (writes are pushed and anti-entropy repairs what a push misses),
//! so there is nothing to wait for.
//!
//! # Consistency: what differs from a single Redis
//!
//! Reads are served by the local replica; writes are applied locally and
//! replicated (last writer wins, by hybrid-logical-clock stamp).
//!
//! - **Conditional writes are local.** `SET ... NX`, `SET ... XX`,
//!   `KEEPTTL`, `SET ... GET`, `GETDEL`, the `EXPIRE` family and `PERSIST`
//!   are atomic on *this* peer (the read and the write happen under one
//!   shard lock, through [`Mesh::write_with`]), but the condition is
//!   checked against the local replica only. Two clients on two peers can
//!   both succeed at `SET lock x NX` before either write has reached the
//!   other peer; the later stamp then wins everywhere. That is eventual
//!   semantics: do not build a distributed lock on it.
//! - `MSET` writes each key separately: other clients may see some of the
//!   keys before the others.
//! - `PUBLISH` reaches subscribers on every connected peer, after the
//!   writes made before it, at most once (`Mesh::publish`); it answers the
//!   receivers on this peer, and `PUBSUB` counts this peer's subscribers.
//! - `RENAME` and `COPY` are two writes (the new key, then for `RENAME`
//!   the old one deleted): a reader may see both keys for a moment.
//! - Read-modify-write commands (`INCR` and its relatives, `APPEND`,
//!   `SETRANGE`, `SETBIT`, `GETEX`, `GETSET`) are atomic on this peer and
//!   replicate the resulting value as one write: two peers incrementing
//!   the same counter at once converge on one of the two results.
//! - `DEL` always writes a tombstone, even for a key not visible here,
//!   because another peer may hold it; it returns the number of keys that
//!   were visible here.
//! - `FLUSHALL` and `FLUSHDB` are mesh-wide: a range tombstone that every
//!   peer applies (`ASYNC`/`SYNC` are accepted and mean the same).
//! - TTLs are absolute instants computed by the writer, so every peer
//!   expires a key at the same moment, within clock skew.
//! - A peer started with seeds answers writes with `-LOADING` until it has
//!   synced with one of them; reads are served meanwhile.
//! - `DBSIZE` (and `keys=` in INFO's keyspace section) counts the values
//!   held, which, as in Redis, includes values whose TTL ran out but that
//!   were not reclaimed yet; tombstones and eviction stubs are not counted.
//!
//! # Keyspace notifications
//!
//! Redis's channels, `__keyspace@0__:<key>` and `__keyevent@0__:<event>`,
//! through SUBSCRIBE and PSUBSCRIBE, for local *and* replicated changes:
//! this is how an application in any language learns what to invalidate.
//! Events and their classes are listed in the `notify` module docs (`set`,
//! `del`, `expire`, `expired`, `persist`, `flushall`).
//!
//! **Default: on (`KEA`)**, unlike Redis, whose default is off.
//! Notifications are the invalidation channel for non-Rust applications
//! (docs/design.md, "Who uses it"), and managed Redis deployments often
//! forbid `CONFIG SET`, so a client should not have to turn them on. It
//! costs nothing while nobody subscribes: the server only follows the
//! mesh's change stream while at least one client is subscribed.
//! `CONFIG SET notify-keyspace-events ""` turns them off, and
//! [`RespConfig::notify_keyspace_events`] sets the starting value; flags
//! `K E g $ x A` (and Redis's other letters) are accepted.
//!
//! In RESP2, a subscribed client may only send (P)SUBSCRIBE,
//! (P)UNSUBSCRIBE, PING, QUIT and RESET, as in Redis; in RESP3 it may send
//! anything.
//!
//! # Limits and bad input
//!
//! Malformed input, and any bulk string or command beyond the limits in
//! [`RespConfig`], gets `-ERR Protocol error: ...` and the connection is
//! closed; the server and its other clients carry on. A client that does
//! not read its pub/sub messages is disconnected once
//! [`RespConfig::output_buffer_limit`] bytes are queued for it, so it cannot
//! grow the server's memory.
//!
//! # Metrics
//!
//! `meshcache_resp_commands_total`, `meshcache_resp_errors_total` (error
//! replies), `meshcache_resp_protocol_errors_total` (connections closed for
//! malformed input), `meshcache_resp_clients` (gauge).

mod client;
mod cmd;
mod db;
mod errorstats;
mod info;
mod latency;
mod notify;
mod parse;
mod rates;
mod reply;
mod server;
mod slowlog;
mod sparkline;
mod tracking;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Mesh;

/// Settings of the Redis-protocol server.
///
/// Start from the default (`RespConfig { requirepass, ..RespConfig::default() }`)
/// rather than listing every field, so that a setting added later needs no
/// change.
#[derive(Clone, PartialEq, Eq)]
pub struct RespConfig {
    /// Where to accept clients ([`bind_and_serve`]). Default
    /// `127.0.0.1:6380`: loopback only, and beside a local Redis on 6379.
    pub addr: SocketAddr,
    /// When set, clients must `AUTH <password>` (or `AUTH default
    /// <password>`, or `HELLO 3 AUTH default <password>`) before any other
    /// command; until then they get `-NOAUTH Authentication required.` and
    /// Redis's small request limits for unauthenticated clients. Default:
    /// none.
    pub requirepass: Option<String>,
    /// Largest bulk string accepted in a request, like Redis's
    /// `proto-max-bulk-len`. Default 512 MiB. A bulk string is also bounded
    /// by [`RespConfig::max_command_bytes`], the smaller of the two
    /// applying.
    pub max_request_bytes: usize,
    /// Largest whole command (every argument with its framing). Default
    /// 64 MiB. This bounds the memory one client can make the server buffer
    /// before a command runs. Note that values larger than the mesh's
    /// `max_frame` cannot be replicated.
    pub max_command_bytes: usize,
    /// Most clients connected at once; the next one gets `-ERR max number of
    /// clients reached` and is closed. Default 10,000, as Redis.
    pub max_clients: usize,
    /// Most bytes of output held for one client: pub/sub messages queued
    /// for a client that does not read them, or one reply. Past it the
    /// client is disconnected, like Redis's `client-output-buffer-limit`.
    /// Default 64 MiB.
    pub output_buffer_limit: usize,
    /// The starting value of `notify-keyspace-events` (Redis's letters).
    /// Default `"KEA"`: every notification on (see the module docs for why
    /// this differs from Redis's default).
    pub notify_keyspace_events: String,
    /// Most keys the CLIENT TRACKING table remembers, like Redis's
    /// `tracking-table-max-keys` (0: no bound). Past it the keys tracked
    /// longest are invalidated early. Default 1,000,000, as Redis.
    pub tracking_table_max_keys: usize,
}

impl RespConfig {
    /// Shrinks the per-client limits to a quarter of a process memory
    /// bound of `max_bytes`, so that no one request or reply can take more
    /// of it (and what clients buffer is counted in the bound anyway).
    pub fn fit_to_bound(&mut self, max_bytes: usize) {
        let quarter = max_bytes / 4;
        self.max_request_bytes = self.max_request_bytes.min(quarter);
        self.max_command_bytes = self.max_command_bytes.min(quarter);
        self.output_buffer_limit = self.output_buffer_limit.min(quarter);
    }
}

impl Default for RespConfig {
    fn default() -> Self {
        RespConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 6380)),
            requirepass: None,
            max_request_bytes: 512 << 20,
            max_command_bytes: 64 << 20,
            max_clients: 10_000,
            output_buffer_limit: 64 << 20,
            notify_keyspace_events: "KEA".into(),
            tracking_table_max_keys: tracking::DEFAULT_MAX_KEYS,
        }
    }
}

impl std::fmt::Debug for RespConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespConfig")
            .field("addr", &self.addr)
            .field("requirepass", &self.requirepass.as_ref().map(|_| "<redacted>"))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_command_bytes", &self.max_command_bytes)
            .field("max_clients", &self.max_clients)
            .field("output_buffer_limit", &self.output_buffer_limit)
            .field("notify_keyspace_events", &self.notify_keyspace_events)
            .field("tracking_table_max_keys", &self.tracking_table_max_keys)
            .finish()
    }
}

/// One command's counters, for INFO commandstats.
#[derive(Debug, Default)]
struct CommandStat {
    /// Calls run, failed ones included (as Redis counts them).
    calls: AtomicU64,
    /// Time spent running them, in nanoseconds (summed before rounding, so
    /// that calls shorter than a microsecond still count).
    nanos: AtomicU64,
    /// Calls refused before running (arity, authentication, context).
    rejected: AtomicU64,
    /// Calls that ran and answered an error.
    failed: AtomicU64,
}

impl CommandStat {
    /// Adds what one connection counted since its last read.
    fn add(&self, t: &client::Tally) {
        self.calls.fetch_add(t.calls, Ordering::Relaxed);
        self.nanos.fetch_add(t.nanos, Ordering::Relaxed);
        self.rejected.fetch_add(t.rejected, Ordering::Relaxed);
        self.failed.fetch_add(t.failed, Ordering::Relaxed);
    }
}

/// Counters of one server, for INFO.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    rejected: AtomicU64,
    commands: AtomicU64,
    errors: AtomicU64,
    protocol_errors: AtomicU64,
    output_limit_closes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Bytes read from clients and written to them.
    net_in: AtomicU64,
    net_out: AtomicU64,
    /// The store's `expired_keys` and `evicted_keys` at the last CONFIG
    /// RESETSTAT: INFO shows the counts since.
    expired_base: AtomicU64,
    evicted_base: AtomicU64,
}

impl Stats {
    /// What the per-second figures are rates of.
    fn reading(&self) -> rates::Reading {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        rates::Reading { commands: l(&self.commands), net_in: l(&self.net_in), net_out: l(&self.net_out) }
    }
}

/// State shared by the accept loop and every connection.
struct Shared {
    mesh: Mesh,
    config: RespConfig,
    hub: Arc<notify::Hub>,
    next_id: AtomicU64,
    clients: AtomicUsize,
    /// The live connections, for CLIENT LIST and CLIENT KILL.
    registry: client::Registry,
    /// CLIENT TRACKING's table, an observer of the mesh's store.
    tracking: Arc<tracking::Table>,
    stats: Stats,
    /// Per command, by its place in the command table.
    commands: Box<[CommandStat]>,
    /// Commands that ran long (SLOWLOG).
    slowlog: slowlog::Slowlog,
    /// Commands that ran long, by kind and second (LATENCY).
    latency: latency::Monitor,
    /// Error replies by code (INFO errorstats).
    errorstats: errorstats::ErrorStats,
    /// INFO's per-second figures and memory peak.
    rates: rates::Rates,
    /// INFO's `run_id`: 40 hex digits, new at every start of the peer.
    run_id: String,
    started: tokio::time::Instant,
    /// When the server started, in Unix seconds: LASTSAVE's answer (as a
    /// Redis that never saved answers its start time).
    started_unix: u64,
    local_addr: SocketAddr,
}

impl Shared {
    /// Whether commands are timed: for the slow log, the latency monitor,
    /// or both.
    #[inline]
    fn timing(&self) -> bool {
        self.slowlog.enabled() || self.latency.enabled()
    }

    /// CONFIG RESETSTAT: what Redis resets starts again from zero (the
    /// server's counters, commandstats, errorstats); the slow log, the
    /// latency monitor's events, the per-second figures, the memory peak
    /// and the mesh's own counters are kept.
    fn reset_stats(&self) {
        let st = &self.stats;
        let counters = [
            &st.connections,
            &st.rejected,
            &st.commands,
            &st.errors,
            &st.protocol_errors,
            &st.output_limit_closes,
            &st.hits,
            &st.misses,
            &st.net_in,
            &st.net_out,
        ];
        for c in counters {
            c.store(0, Ordering::Relaxed);
        }
        // The store's counts belong to the mesh (its metrics, `Mesh::stats`):
        // INFO shows them from here on instead.
        let store = self.mesh.replica().store().stats();
        st.expired_base.store(store.collected_expired, Ordering::Relaxed);
        st.evicted_base.store(store.evictions, Ordering::Relaxed);
        for c in self.commands.iter() {
            for a in [&c.calls, &c.nanos, &c.rejected, &c.failed] {
                a.store(0, Ordering::Relaxed);
            }
        }
        self.errorstats.reset();
    }
}

/// Serves Redis clients on `listener` in front of `mesh` until `shutdown`
/// resolves; then stops accepting, closes every connection (after the
/// command it is running, if any) and returns once all are gone.
///
/// Errors only if the configuration is invalid (an unknown
/// `notify_keyspace_events` letter); accept errors are logged and retried.
pub async fn serve(
    mesh: Mesh,
    listener: TcpListener,
    config: RespConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let flags = notify::parse_flags(config.notify_keyspace_events.as_bytes()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid notify_keyspace_events {:?}: use Redis's letters 'KEg$x...A'",
                config.notify_keyspace_events
            ),
        )
    })?;
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let started_unix = mesh.now_ms() / 1000;
    let run_id = info::run_id(mesh.id());
    let tracking = Arc::new(tracking::Table::new(mesh.clone(), config.tracking_table_max_keys));
    let shared = Arc::new(Shared {
        hub: Arc::new(notify::Hub::new(mesh.clone(), flags, stop.clone())),
        mesh,
        config,
        next_id: AtomicU64::new(1),
        clients: AtomicUsize::new(0),
        registry: client::Registry::default(),
        tracking,
        stats: Stats::default(),
        commands: (0..cmd::table_len()).map(|_| CommandStat::default()).collect(),
        slowlog: slowlog::Slowlog::default(),
        latency: latency::Monitor::default(),
        errorstats: errorstats::ErrorStats::default(),
        rates: rates::Rates::default(),
        run_id,
        started: crate::env::stopwatch(),
        started_unix,
        local_addr,
    });
    shared.hub.listen();
    let observer: Arc<dyn crate::store::Observer> = shared.tracking.clone();
    shared.mesh.replica().store().add_observer(observer.clone());
    tracing::info!(addr = %local_addr, "RESP server listening");
    let tracker = TaskTracker::new();
    tracker.spawn(rates::sample_every(shared.clone(), stop.clone()));
    tokio::select! {
        _ = server::accept_loop(shared.clone(), listener, stop.clone(), tracker.clone()) => {}
        _ = shutdown => {}
    }
    // Broadcast the shutdown to every connection and wait for them.
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    shared.mesh.replica().store().remove_observer(&observer);
    shared.hub.close();
    tracing::info!(addr = %local_addr, "RESP server stopped");
    Ok(())
}

/// Binds [`RespConfig::addr`] and [`serve`]s on it.
pub async fn bind_and_serve(mesh: Mesh, config: RespConfig, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let listener = TcpListener::bind(config.addr).await?;
    serve(mesh, listener, config, shutdown).await
}
