//! The `meshcache` command: run a peer, make certificates, ask a running
//! peer for its state, and show the mesh at work.
//!
//! - `meshcache node`: one peer. Settings are layered: defaults, then the
//!   TOML file of `--config` (a [`MeshConfig`]), then `MESHCACHE_*`
//!   environment variables, then flags. Stops gracefully on SIGINT or
//!   SIGTERM; on SIGHUP reads its certificate files again (see
//!   `meshcache reload`).
//! - `meshcache certs init | issue NAME`: the cluster CA and node
//!   certificates.
//! - `meshcache status | forget NAME | reload`: requests to a peer's admin
//!   port ([`meshcache::admin`]).
//! - `meshcache demo`: three peers in this process; measures replication.
//!
//! Exit codes: 0 success; 1 a runtime failure (a port in use, a peer that
//! stopped on its own, a demo that did not converge, an admin port that does
//! not answer); 2 bad input (flags, configuration, certificates).

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use meshcache::hlc::Stamp;
use meshcache::store::Slot;
use meshcache::transport::certs::{self, EphemeralCa, Identity};
use meshcache::{admin, Mesh, MeshConfig, MeshError};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// jemalloc counts what the process allocates, which `--max-bytes` bounds
/// (see [`allocated`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes the process has allocated, by jemalloc's count: what
/// `--max-bytes` bounds and INFO reports as `used_memory`. jemalloc
/// refreshes its statistics when the epoch advances.
fn allocated() -> Option<usize> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok()
}

/// How long jemalloc keeps freed pages before it gives them back (ms). Its
/// default, 10 s, lets the resident set run tens of megabytes above what
/// is allocated while eviction churns; `--max-bytes` is a bound on the
/// process, and the resident set is what the system sees of it.
const DIRTY_DECAY_MS: isize = 1_000;

/// Sets `DIRTY_DECAY_MS` on the arenas that exist and on those made later.
fn return_freed_pages_sooner() {
    // SAFETY: both names are jemalloc's, and both take an `ssize_t`.
    // 4096 is MALLCTL_ARENAS_ALL: every existing arena.
    unsafe {
        let _ = tikv_jemalloc_ctl::raw::write(b"arenas.dirty_decay_ms\0", DIRTY_DECAY_MS);
        let _ = tikv_jemalloc_ctl::raw::write(b"arena.4096.dirty_decay_ms\0", DIRTY_DECAY_MS);
    }
}

/// Where `node` serves, and `status` and `forget` look for, the admin port:
/// one above the default peer port (7946).
const DEFAULT_ADMIN: &str = "127.0.0.1:7947";
/// Redis's port plus one, so that a local redis-server on 6379 can stay.
const DEFAULT_RESP: &str = "127.0.0.1:6380";

/// Where `node` keeps development certificates when no `--certs` is given.
const DEV_CERTS: &str = "./certs";

const NODE_HELP: &str = "\
Settings, lowest precedence first: defaults; the --config TOML file (fields \
of MeshConfig, durations in ms except push_delay in µs, unknown fields refused); MESHCACHE_* \
environment variables; flags.

Without --certs, development certificates are made (once) under ./certs: \
fine on one machine, not for production. Real ones: `meshcache certs init`, \
then `meshcache certs issue NAME --ip ADDR` for each node, then --certs DIR.

The admin port (default 127.0.0.1:7947, `--admin off` to disable) answers \
`meshcache status`, `meshcache forget NAME` and `meshcache reload`. It has no \
authentication, so it only binds loopback addresses; give each node on one \
host its own.

On SIGHUP (or `meshcache reload`) the node reads ca.crt, NAME.crt and NAME.key \
again (from --certs, or ./certs without it) and uses them for new connections; \
connections already up keep theirs. Files that fail the checks are refused \
with an error in the log, and the current ones stay in use. ca.crt may hold \
several CAs, all trusted: that is how a new CA is rolled out.";

#[derive(Parser)]
#[command(name = "meshcache", about = "A CRDT cache mesh: every peer holds the whole keyspace.")]
#[command(arg_required_else_help = true, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one peer of the mesh.
    #[command(after_long_help = NODE_HELP)]
    Node(Box<NodeArgs>),
    /// Make the cluster CA and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show a running peer's state, counters and members (via its admin port).
    Status(AdminArgs),
    /// Make a running peer read its certificate files again (as SIGHUP does).
    ///
    /// New connections use the new certificate, key and CAs; connections
    /// already up keep theirs. Files that fail the checks are refused, the
    /// peer keeps its current ones, and this exits 1 saying why.
    Reload(AdminArgs),
    /// Remove a member that is gone for good (tombstone collection stops waiting for it).
    ///
    /// Never for a member that may come back with its data: its deletes could be undone.
    Forget {
        /// The member's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start three peers in this process and measure replication; needs no setup.
    ///
    /// Measures write-to-visible latency, deletes, concurrent writes to the
    /// same keys, replicated writes per second, and checks equal digests.
    Demo {
        /// Smaller counts (1,000 keys, 20,000 for throughput): a few seconds.
        #[arg(long)]
        quick: bool,
        /// The peers' push delay in µs, to compare batching against latency
        /// (default: MeshConfig's).
        #[arg(long, value_name = "US")]
        push_delay_us: Option<u64>,
    },
    /// Print the version and the wire protocol versions it speaks.
    Version,
}

#[derive(Args)]
struct NodeArgs {
    /// This peer's name: unique in the mesh, and the name in its certificate.
    #[arg(long, env = "MESHCACHE_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Where to accept peers (QUIC over UDP). Default 127.0.0.1:7946.
    #[arg(long, env = "MESHCACHE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The address other peers should dial, if not --listen (required when
    /// --listen is a wildcard such as 0.0.0.0).
    #[arg(long, env = "MESHCACHE_ADVERTISE", value_name = "ADDR")]
    advertise: Option<SocketAddr>,
    /// A peer to join through, ADDR:PORT or NAME:PORT; repeat for more
    /// (MESHCACHE_SEEDS: comma-separated). A name is resolved again on
    /// every dial round, and each of its A and AAAA records is a seed.
    #[arg(long = "seed", env = "MESHCACHE_SEEDS", value_name = "HOST:PORT", value_delimiter = ',')]
    seeds: Vec<meshcache::Seed>,
    /// Directory of ca.crt, NAME.crt and NAME.key (made by `meshcache certs`).
    #[arg(long, env = "MESHCACHE_CERTS", value_name = "DIR")]
    certs: Option<PathBuf>,
    /// TOML settings file (MeshConfig fields).
    #[arg(long, env = "MESHCACHE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve HTTP on this address: Prometheus metrics at /metrics, and the
    /// liveness and readiness probes at /healthz and /readyz.
    #[arg(long, env = "MESHCACHE_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// The admin port (loopback only), or `off`.
    #[arg(long, env = "MESHCACHE_ADMIN", value_name = "ADDR|off", default_value = DEFAULT_ADMIN, value_parser = parse_admin)]
    admin: AdminAddr,
    /// The Redis-protocol port for clients, or `off`. Loopback by default;
    /// set --requirepass before exposing it.
    #[arg(long, env = "MESHCACHE_RESP", value_name = "ADDR|off", default_value = DEFAULT_RESP, value_parser = parse_admin)]
    resp: AdminAddr,
    /// Password clients must give with AUTH on the Redis-protocol port.
    #[arg(long, env = "MESHCACHE_REQUIREPASS", value_name = "PASSWORD")]
    requirepass: Option<String>,
    /// Memory bound for the whole process, at least 16M: bytes, or with a K,
    /// M or G suffix (powers of 1024, e.g. 256M), or `off` for none.
    #[arg(long, env = "MESHCACHE_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<MaxBytes>,
    /// What to evict first past --max-bytes: allkeys-lru (the default),
    /// allkeys-lfu, allkeys-random, volatile-lru, volatile-lfu,
    /// volatile-random, volatile-ttl or noeviction (Redis's names).
    #[arg(long, env = "MESHCACHE_EVICTION_POLICY", value_name = "POLICY", value_parser = parse_policy)]
    eviction_policy: Option<meshcache::store::EvictionPolicy>,
    /// Budget of tombstones before compaction, and of eviction stubs before
    /// the oldest become ghosts early; under a memory bound, each is also
    /// at most an eighth of it.
    #[arg(long, env = "MESHCACHE_MAX_TOMBSTONES", value_name = "N")]
    max_tombstones: Option<usize>,
    /// Most members kept in this peer's view; past it, new names are ignored.
    #[arg(long, env = "MESHCACHE_MAX_MEMBERS", value_name = "N")]
    max_members: Option<usize>,
    /// Period of anti-entropy rounds, in ms.
    #[arg(long, env = "MESHCACHE_ANTI_ENTROPY_MS", value_name = "MS")]
    anti_entropy_ms: Option<u64>,
    /// How long a seeded peer waits for a seed before starting alone, in ms.
    #[arg(long, env = "MESHCACHE_BOOTSTRAP_TIMEOUT_MS", value_name = "MS")]
    bootstrap_timeout_ms: Option<u64>,
    /// On SIGTERM: how long to wait for the Redis clients' commands in
    /// flight, then for the peers to confirm every queued write, in ms.
    #[arg(long, env = "MESHCACHE_DRAIN_TIMEOUT_MS", value_name = "MS")]
    drain_timeout_ms: Option<u64>,
    /// Largest clock offset tolerated between peers, in ms.
    #[arg(long, env = "MESHCACHE_MAX_OFFSET_MS", value_name = "MS")]
    max_offset_ms: Option<u64>,
    /// How long a push waits to batch more writes, in µs (at most 1000; 0,
    /// the default, sends once the tasks ready to run have run).
    #[arg(long, env = "MESHCACHE_PUSH_DELAY_US", value_name = "US")]
    push_delay_us: Option<u64>,
    /// Worker threads of the runtime that serves clients and peers, 1 to
    /// 1024 (default: one per core). Where several busy processes share
    /// a few cores, as several peers on one small host do, fewer threads
    /// than cores spare the wake-ups of threads that take turns: README,
    /// "Threads".
    #[arg(long, env = "MESHCACHE_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Once every port is open, write their addresses to FILE, one
    /// `NAME ADDR` a line: `quic`, then `resp`, `admin` and `metrics` when
    /// on. With port 0 in an address the system picks a free port; this is
    /// where to read it (the `ready` log line says the same).
    #[arg(long, env = "MESHCACHE_ADDR_FILE", value_name = "FILE")]
    addr_file: Option<PathBuf>,
    /// Print the resulting settings as TOML and exit, without starting.
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make the cluster CA: DIR/ca.crt and DIR/ca.key (keep ca.key secret).
    Init {
        /// The certificate directory.
        #[arg(long, env = "MESHCACHE_CERTS", value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// Overwrite an existing CA (every node certificate must then be re-issued).
        #[arg(long)]
        force: bool,
    },
    /// Issue node NAME's certificate: DIR/NAME.crt and DIR/NAME.key, signed by the CA in DIR.
    Issue {
        /// The node's name (as given to `meshcache node --name`).
        name: String,
        /// The certificate directory.
        #[arg(long, env = "MESHCACHE_CERTS", value_name = "DIR", default_value = "certs")]
        dir: PathBuf,
        /// An IP address to add to the certificate; repeat for more.
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
        /// A DNS name to add to the certificate; repeat for more.
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Overwrite an existing certificate and key.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// The peer's admin port.
    #[arg(long, env = "MESHCACHE_ADMIN", value_name = "ADDR", default_value = DEFAULT_ADMIN, value_parser = parse_admin)]
    admin: AdminAddr,
}

/// An admin address, or none.
#[derive(Clone, Copy, Debug)]
enum AdminAddr {
    Off,
    At(SocketAddr),
}

fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminAddr::Off);
    }
    s.parse().map(AdminAddr::At).map_err(|_| "expected IP:PORT (such as 127.0.0.1:7947) or `off`".to_owned())
}

fn parse_policy(s: &str) -> Result<meshcache::store::EvictionPolicy, String> {
    s.parse().map_err(|e: meshcache::store::evict::UnknownPolicy| e.to_string())
}

/// A `--max-bytes` value.
#[derive(Clone, Copy, Debug)]
enum MaxBytes {
    Unbounded,
    Bound(usize),
}

fn parse_size(s: &str) -> Result<MaxBytes, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(MaxBytes::Unbounded);
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("expected bytes, such as 268435456, 256M or 2G, or `off`; got {s:?}");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(unit)
        .and_then(|b| usize::try_from(b).ok())
        .map(MaxBytes::Bound)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `println!` that ignores a closed stdout (`meshcache demo | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod demo;

/// Writes `text` to stdout as is, ignoring a closed stdout.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// How the process ends: a one-line message on stderr and an exit code.
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

/// Bad input: exit code 2.
fn usage(message: impl Into<String>) -> Exit {
    Exit { code: 2, message: message.into() }
}

/// A runtime failure: exit code 1.
fn failure(message: impl Into<String>) -> Exit {
    Exit { code: 1, message: message.into() }
}

fn version() -> String {
    format!("{} (protocol {})", env!("CARGO_PKG_VERSION"), meshcache::wire::PROTOCOL_VERSIONS)
}

fn main() -> ExitCode {
    return_freed_pages_sooner();
    // An empty MESHCACHE_* variable counts as unset (clap would otherwise
    // try to parse the empty string). Done before any thread starts.
    for (k, v) in std::env::vars_os() {
        if v.is_empty() && k.to_str().is_some_and(|k| k.starts_with("MESHCACHE_")) {
            std::env::remove_var(k);
        }
    }
    // Leaked once: clap wants a 'static version string.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let threads = match &cli.command {
        Command::Node(args) => args.threads,
        _ => None,
    };
    let result = match runtime(threads) {
        Ok(rt) => rt.block_on(run(cli.command, version)),
        Err(e) => Err(failure(format!("cannot start the async runtime: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcache: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// The multi-threaded runtime, with `threads` workers if given (otherwise
/// tokio's default: `TOKIO_WORKER_THREADS`, else one per core).
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.into());
    }
    b.build()
}

async fn run(command: Command, version: &str) -> Result<(), Exit> {
    match command {
        Command::Node(args) => node(*args).await,
        Command::Certs(c) => certs(c),
        Command::Status(a) => {
            let reply = admin_request(a.admin, "status".to_owned()).await?;
            // Exits non-zero when the peer should not be sent traffic, so
            // that scripts and exec probes can use it.
            match reply.lines().find_map(|l| l.strip_prefix("readiness:")).map(str::trim) {
                Some(r) if r != "ready" => Err(failure(format!("not ready: {r}"))),
                _ => Ok(()),
            }
        }
        Command::Reload(a) => admin_request(a.admin, "reload".to_owned()).await.map(drop),
        Command::Forget { name, admin } => {
            meshcache::config::validate_name(&name).map_err(|e| usage(e.to_string()))?;
            admin_request(admin.admin, format!("forget {name}")).await.map(drop)
        }
        Command::Demo { quick, push_delay_us } => demo::demo(quick, push_delay_us.map(Duration::from_micros)).await,
        Command::Version => {
            say!("meshcache {version}");
            Ok(())
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (else `default`).
fn init_logging(default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&s).unwrap_or_else(|e| {
            eprintln!("meshcache: ignoring RUST_LOG={s:?} ({e}); logging at {default}");
            tracing_subscriber::EnvFilter::new(default)
        }),
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

// ---- node -------------------------------------------------------------

/// Layers the settings: defaults < config file < environment < flags
/// (clap already resolved environment against flags), then validates.
fn node_config(args: &NodeArgs) -> Result<MeshConfig, Exit> {
    let mut c = match &args.config {
        Some(path) => read_config(path)?,
        None => MeshConfig::default(),
    };
    if let Some(n) = &args.name {
        c.name = n.clone();
    }
    if let Some(l) = args.listen {
        c.listen = l;
    }
    if let Some(a) = args.advertise {
        c.advertise = Some(a);
    }
    if !args.seeds.is_empty() {
        c.seeds = args.seeds.clone();
    }
    match args.max_bytes {
        Some(MaxBytes::Unbounded) => c.max_bytes = None,
        Some(MaxBytes::Bound(b)) => c.max_bytes = Some(b),
        None => {}
    }
    if let Some(p) = args.eviction_policy {
        c.eviction_policy = p;
    }
    if let Some(t) = args.max_tombstones {
        c.max_tombstones = t;
    }
    if let Some(n) = args.max_members {
        c.max_members = n;
    }
    if let Some(ms) = args.anti_entropy_ms {
        c.anti_entropy_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.drain_timeout_ms {
        c.drain_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.bootstrap_timeout_ms {
        c.bootstrap_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.max_offset_ms {
        c.max_offset = Duration::from_millis(ms);
    }
    if let Some(us) = args.push_delay_us {
        c.push_delay = Duration::from_micros(us);
    }
    if c.name.is_empty() {
        return Err(usage("no peer name: give --name NAME (or MESHCACHE_NAME, or `name` in the config file)"));
    }
    if let Some(b) = c.max_bytes.filter(|b| *b < meshcache::node::MIN_PROCESS_BYTES) {
        return Err(usage(format!(
            "max_bytes {b} is below the {} MiB a peer process needs to run (it bounds the whole process: \
             runtime, buffers, tables and values); give at least --max-bytes 16M, or off",
            meshcache::node::MIN_PROCESS_BYTES >> 20
        )));
    }
    c.validate().map_err(|e| usage(e.to_string()))?;
    c.fit_to_bound();
    Ok(c)
}

fn read_config(path: &Path) -> Result<MeshConfig, Exit> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().trim().replace('\n', "; ");
        match e.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
                usage(format!("invalid config file {}, line {line}, column {column}: {msg}", path.display()))
            }
            None => usage(format!("invalid config file {}: {msg}", path.display())),
        }
    })
}

/// Loads the TLS identity from `--certs`, or makes development
/// certificates under ./certs.
fn node_identity(certs: Option<&Path>, name: &str) -> Result<Identity, Exit> {
    if let Some(dir) = certs {
        return certs::load_identity(dir, name).map_err(|e| usage(e.to_string()));
    }
    let dir = Path::new(DEV_CERTS);
    let (identity, created) =
        certs::dev_identity(dir, name).map_err(|e| usage(format!("{e} (no --certs given, so {DEV_CERTS} is used)")))?;
    if created {
        warn!(
            "DEVELOPMENT CERTIFICATES: no --certs given, so a development CA and a certificate for {name:?} were \
             created under {DEV_CERTS}. They are NOT for production: anyone who can read {DEV_CERTS}/ca.key can \
             join this mesh. Make real ones with `meshcache certs init --dir DIR` and `meshcache certs issue NAME \
             --dir DIR --ip ADDR` (one per node), then start each node with --certs DIR."
        );
    } else {
        warn!("no --certs given: using the certificates under {DEV_CERTS} (for development only)");
    }
    Ok(identity)
}

/// What SIGHUP and the admin port's `reload` run: reads `dir`'s ca.crt,
/// NAME.crt and NAME.key again and hands them to the peer, logging the
/// outcome either way. Never creates files, not even in the development
/// directory.
fn reloader(dir: PathBuf) -> admin::Reload {
    Arc::new(move |mesh: &Mesh| {
        let name = &mesh.id().name;
        let result = certs::load_identity(&dir, name)
            .map_err(|e| e.to_string())
            .and_then(|id| mesh.reload_tls(id).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                let now = mesh.certificate().map_or_else(|| "unreadable".to_owned(), |c| c.to_string());
                info!(
                    certs = %dir.display(),
                    "TLS certificates reloaded: certificate {now}; new connections use them, connections already up \
                     keep theirs"
                );
                Ok(format!("certificate {now}"))
            }
            Err(e) => {
                error!(certs = %dir.display(), "TLS certificates NOT reloaded, the current ones stay in use: {e}");
                Err(e)
            }
        }
    })
}

fn mesh_error(e: MeshError) -> Exit {
    match e {
        MeshError::Bind { .. } | MeshError::Write(_) => failure(e.to_string()),
        _ => usage(e.to_string()),
    }
}

async fn node(args: NodeArgs) -> Result<(), Exit> {
    let config = node_config(&args)?;
    if args.print_config {
        let text = toml::to_string(&config).map_err(|e| failure(format!("cannot print the settings: {e}")))?;
        emit(&text);
        return Ok(());
    }
    let admin_addr = match args.admin {
        AdminAddr::Off => None,
        AdminAddr::At(a) if !a.ip().is_loopback() => {
            return Err(usage(format!(
                "--admin {a}: the admin port has no authentication, so it only binds a loopback address \
                 (such as 127.0.0.1:7947), or give --admin off"
            )))
        }
        AdminAddr::At(a) => Some(a),
    };
    init_logging("info");
    let identity = node_identity(args.certs.as_deref(), &config.name)?;
    // Before anything starts, so that an early signal is not lost (and a
    // SIGHUP, whose default action ends the process, never does).
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| failure(format!("cannot handle SIGTERM: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| failure(format!("cannot handle SIGINT: {e}")))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| failure(format!("cannot handle SIGHUP: {e}")))?;
    let reload = reloader(args.certs.clone().unwrap_or_else(|| PathBuf::from(DEV_CERTS)));
    let metrics_listener = match args.metrics {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a).await.map_err(|e| failure(format!("cannot serve metrics on {a}: {e}")))?,
        ),
        None => None,
    };
    let admin_listener = match admin_addr {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
            failure(format!("cannot open the admin port {a}: {e}; pick another with --admin ADDR, or --admin off"))
        })?),
        None => None,
    };
    let resp_listener = match args.resp {
        AdminAddr::At(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
            failure(format!(
                "cannot open the Redis-protocol port {a}: {e}; pick another with --resp ADDR, or --resp off"
            ))
        })?),
        AdminAddr::Off => None,
    };
    let bound = |l: &Option<tokio::net::TcpListener>| -> Result<Option<SocketAddr>, Exit> {
        l.as_ref().map(|l| l.local_addr()).transpose().map_err(|e| failure(format!("cannot read a bound address: {e}")))
    };
    let (metrics_at, admin_at, resp_at) = (bound(&metrics_listener)?, bound(&admin_listener)?, bound(&resp_listener)?);
    let metrics = match metrics_listener {
        Some(l) => Some((l, install_metrics()?)),
        None => None,
    };
    let (max_bytes, drain_timeout) = (config.max_bytes, config.drain_timeout);
    let mesh = Mesh::builder()
        .config(config)
        .tls(identity)
        .memory_probe(Arc::new(allocated))
        .start()
        .await
        .map_err(mesh_error)?;
    if let Some((l, handle)) = metrics {
        // For as long as the process runs: probes keep their answers
        // through a drain.
        tokio::spawn(meshcache::http::serve(l, mesh.clone(), Some(handle), std::future::pending::<()>()));
    }
    // Cancelled when a drain begins: the Redis-protocol port stops taking
    // clients and commands, and each connection ends after the command it
    // is running, its reply sent.
    let drain = tokio_util::sync::CancellationToken::new();
    let resp_task = resp_listener.map(|l| {
        let mut cfg = meshcache::resp::RespConfig { requirepass: args.requirepass.clone(), ..Default::default() };
        if let Some(max) = max_bytes {
            cfg.fit_to_bound(max);
        }
        let (m, drain) = (mesh.clone(), drain.clone());
        tokio::spawn(meshcache::resp::serve(mesh.clone(), l, cfg, async move {
            tokio::select! {
                _ = m.stopped() => {}
                _ = drain.cancelled() => {}
            }
        }))
    });
    let mut admin_task = admin_listener.map(|l| {
        let m = mesh.clone();
        tokio::spawn(admin::serve_with_reload(mesh.clone(), l, Some(reload.clone()), async move { m.stopped().await }))
    });
    let addrs: Vec<(&str, SocketAddr)> =
        [("quic", Some(mesh.local_addr())), ("resp", resp_at), ("admin", admin_at), ("metrics", metrics_at)]
            .into_iter()
            .filter_map(|(name, a)| Some((name, a?)))
            .collect();
    if let Some(path) = &args.addr_file {
        if let Err(e) = write_addr_file(path, &addrs) {
            mesh.shutdown().await;
            return Err(failure(format!("cannot write --addr-file {}: {e}", path.display())));
        }
    }
    let listening = addrs.iter().map(|(name, a)| format!("{name} {a}")).collect::<Vec<_>>().join(", ");
    match admin_at {
        Some(a) => info!("ready on {listening}: `meshcache status --admin {a}` shows this peer"),
        None => info!("ready on {listening} (admin port off)"),
    }

    // A block of its own: `admin_done` borrows `admin_task` until it ends.
    {
        let admin_done = async {
            match admin_task.as_mut() {
                Some(t) => t.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(admin_done);
        loop {
            tokio::select! {
                _ = sighup.recv() => {
                    info!("SIGHUP: reading the certificate files again");
                    let (m, reload) = (mesh.clone(), reload.clone());
                    // Its outcome is logged by `reload`; a failure leaves the
                    // current certificates in use, and the peer running.
                    let _ = tokio::task::spawn_blocking(move || reload(&m)).await;
                }
                _ = sigterm.recv() => {
                    info!("SIGTERM: draining, then leaving the mesh");
                    break;
                }
                _ = sigint.recv() => {
                    info!("SIGINT: draining, then leaving the mesh");
                    break;
                }
                _ = mesh.stopped() => {
                    error!("the peer stopped on its own: a newer incarnation of this name joined, or it was forgotten");
                    return Err(failure("the peer stopped on its own: superseded or forgotten (see the log above)"));
                }
                r = &mut admin_done => {
                    error!(result = ?r, "the admin port stopped unexpectedly; leaving the mesh");
                    mesh.shutdown().await;
                    return Err(failure("the admin port stopped unexpectedly"));
                }
            }
        }
    }
    // The drain: readiness turns to `draining`; the Redis clients'
    // commands in flight finish (bounded by drain_timeout), so that every
    // write acknowledged is in the push queues; then `shutdown` sends what
    // is queued and waits for each peer to confirm it (bounded by
    // drain_timeout again), and says goodbye. A second signal cuts it short.
    mesh.start_draining();
    drain.cancel();
    let second = || failure("second signal: stopped without finishing the drain and the goodbye");
    if let Some(t) = resp_task {
        tokio::select! {
            r = tokio::time::timeout(drain_timeout, t) => if r.is_err() {
                warn!(timeout_ms = drain_timeout.as_millis() as u64, "drain_timeout passed with Redis clients' commands in flight");
            },
            _ = sigterm.recv() => return Err(second()),
            _ = sigint.recv() => return Err(second()),
        }
    }
    tokio::select! {
        _ = mesh.shutdown() => {}
        _ = sigterm.recv() => return Err(second()),
        _ = sigint.recv() => return Err(second()),
    }
    if let Some(t) = admin_task {
        // Requests in flight are bounded by the admin timeout.
        let _ = tokio::time::timeout(admin::TIMEOUT + Duration::from_secs(1), t).await;
    }
    Ok(())
}

/// Installs the Prometheus recorder (every metric the process records
/// goes to it from then on) and keeps its histograms trimmed.
fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, Exit> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| failure(format!("cannot record metrics: {e}")))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Writes `addrs` to `path`, one `NAME ADDR` a line, whole or not at all:
/// a reader that finds the file finds every line.
fn write_addr_file(path: &Path, addrs: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let text: String = addrs.iter().map(|(name, a)| format!("{name} {a}\n")).collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

// ---- certs, status, forget ------------------------------------------------

fn certs(command: CertsCommand) -> Result<(), Exit> {
    match command {
        CertsCommand::Init { dir, force } => {
            let crt = certs::init_ca(&dir, force).map_err(|e| usage(e.to_string()))?;
            say!("wrote {} (the cluster CA certificate)", crt.display());
            say!(
                "wrote {} (mode 0600: whoever holds it can admit nodes; keep it secret)",
                dir.join(certs::CA_KEY_FILE).display()
            );
            say!("next: meshcache certs issue NAME --dir {} --ip ADDR (one per node)", dir.display());
        }
        CertsCommand::Issue { name, dir, ips, dns, force } => {
            let (crt, key) = certs::issue(&dir, &name, &ips, &dns, force).map_err(|e| usage(e.to_string()))?;
            say!(
                "wrote {} (node {name}'s certificate, signed by {})",
                crt.display(),
                dir.join(certs::CA_CERT_FILE).display()
            );
            say!("wrote {} (mode 0600)", key.display());
            say!("run: meshcache node --name {name} --certs {} ...", dir.display());
        }
    }
    Ok(())
}

/// Sends `line` to the admin port, prints the reply and returns it.
async fn admin_request(addr: AdminAddr, line: String) -> Result<String, Exit> {
    let AdminAddr::At(addr) = addr else {
        return Err(usage("--admin off: give the address of the peer's admin port"));
    };
    let reply = admin::request(addr, &line).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused; is `meshcache node` running, with this --admin address?".to_owned()
            }
            _ => e.to_string(),
        };
        failure(format!("cannot reach the admin port at {addr}: {hint}"))
    })?;
    if reply.starts_with("ERR") {
        return Err(failure(reply.trim_end().trim_start_matches("ERR ").replace('\n', "; ")));
    }
    emit(&reply);
    Ok(reply)
}
