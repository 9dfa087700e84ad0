//! `meshbench`: the benchmark report of docs/design.md's performance targets.
//!
//! Run through `scripts/bench.sh`, which starts the redis-server baselines
//! on fixed loopback ports, passes them here, and stops them at the end.
//! The rows that compare with redis-server over the Redis protocol (1 and
//! 2) and the memory bound (9) run `meshcache node` processes, as the
//! baselines are redis-server processes (`nodes`). Elsewhere meshcache
//! peers run in this process (QUIC + mutual TLS on 127.0.0.1), except in
//! row 3's second half and row 10, where each of three peers is a child
//! meshbench process (`--child-peer`) driven over its stdin and stdout;
//! rows 8 and 11 serve embedded peers through `meshcache::resp::serve` on
//! fixed ports. RESP is driven with `redis-benchmark` and a tiny RESP
//! client. The heal row partitions its peers with fault-injecting sockets.
//!
//! Nothing here asserts a timing: figures are printed, written to
//! `<out>/latest.json` and charted in `<out>/latest.svg`. The exit status is
//! non-zero only when the harness itself failed (a row could not run).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use meshcache::resp::{serve, RespConfig};
use meshcache::stats::{median, percentile};
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::wait::Wait;
use meshcache::{Mesh, MeshConfig, MeshStats};

mod bound;
mod nodes;

/// The `meshcache` command's allocator, so that the embedded peers and the
/// child peer processes are measured as the command runs; row 6 also
/// reads its count, which is what redis-server's `used_memory` is of its
/// own jemalloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes per key, as `redis-benchmark -r` makes them (`key:000000012345`).
const KEY_LEN: usize = 16;
/// Bytes per value, as `redis-benchmark -d 100`.
const VALUE_LEN: usize = 100;
/// Every wait for convergence gives up after this long.
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "meshcache benchmarks against docs/design.md's targets (run through scripts/bench.sh)")]
struct Args {
    /// Tiny sizes: seconds of runtime, validates the harness only.
    #[arg(long)]
    quick: bool,
    /// Where latest.json and latest.svg (quick.json and quick.svg with --quick) are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A standalone redis-server (throughput and memory baselines).
    #[arg(long, default_value = "127.0.0.1:16379")]
    redis: SocketAddr,
    /// A redis primary with two replicas, one of them --redis-replica: the
    /// baseline for a peer that replicates to two others (throughput and
    /// lag).
    #[arg(long, default_value = "127.0.0.1:16380")]
    redis_primary: SocketAddr,
    /// A replica of --redis-primary (the lag baseline reads it).
    #[arg(long, default_value = "127.0.0.1:16381")]
    redis_replica: SocketAddr,
    /// First of three fixed loopback ports for the meshcache peers' RESP servers.
    #[arg(long, default_value_t = 16390)]
    resp_base: u16,
    /// The `meshcache` command that row 9 runs as processes.
    #[arg(long, default_value = "target/release/meshcache")]
    meshcache: PathBuf,
    /// Only these row groups (comma-separated, 1-11); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// The exact command line, recorded in the report.
    #[arg(long, default_value = "")]
    command: String,
    /// Internal: run as one peer of row 3's three-process mesh, named so,
    /// answering the parent's commands on stdin.
    #[arg(long, hide = true, requires = "child_certs")]
    child_peer: Option<String>,
    /// Internal: the certificate directory of --child-peer.
    #[arg(long, hide = true)]
    child_certs: Option<PathBuf>,
    /// Internal: the seed of --child-peer.
    #[arg(long, hide = true)]
    child_seed: Option<SocketAddr>,
}

/// Sizes of one run.
struct Sizes {
    resp_requests: u64,
    resp_requests_pipelined: u64,
    repeats: usize,
    lag_keys: usize,
    replicated: usize,
    divergent: usize,
    bootstrap: usize,
    local_keys: usize,
    local_secs: f64,
    zipf_keys: usize,
    zipf_requests: usize,
    bound_writes: u64,
    fill_keys: usize,
    tracking_keys: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                resp_requests: 5_000,
                resp_requests_pipelined: 20_000,
                repeats: 1,
                lag_keys: 100,
                replicated: 20_000,
                divergent: 4_000,
                bootstrap: 20_000,
                local_keys: 10_000,
                local_secs: 0.1,
                zipf_keys: 10_000,
                zipf_requests: 100_000,
                bound_writes: 200_000,
                fill_keys: 100,
                tracking_keys: 1_000,
            }
        } else {
            Sizes {
                resp_requests: 100_000,
                resp_requests_pipelined: 500_000,
                repeats: 3,
                lag_keys: 2_000,
                replicated: 200_000,
                divergent: 100_000,
                bootstrap: 1_000_000,
                local_keys: 100_000,
                local_secs: 1.0,
                zipf_keys: 1_000_000,
                zipf_requests: 10_000_000,
                bound_writes: 4_000_000,
                fill_keys: 1_000,
                tracking_keys: 100_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Report rows.

/// One figure of the report.
struct Row {
    group: u8,
    name: String,
    unit: String,
    mesh: f64,
    redis: Option<f64>,
    ratio: Option<f64>,
    target: String,
    /// Measured / target, oriented so that >= 1 meets the target.
    score: Option<f64>,
    note: String,
}

impl Row {
    fn new(group: u8, name: impl Into<String>, unit: &str, mesh: f64) -> Row {
        Row {
            group,
            name: name.into(),
            unit: unit.into(),
            mesh,
            redis: None,
            ratio: None,
            target: String::new(),
            score: None,
            note: String::new(),
        }
    }
    /// A redis baseline; the ratio is meshcache / redis.
    fn redis(mut self, r: f64) -> Row {
        self.redis = Some(r);
        self.ratio = (r > 0.0).then(|| self.mesh / r);
        self
    }
    fn ratio_at_least(mut self, t: f64) -> Row {
        self.target = format!(">= {t}x redis");
        self.score = self.ratio.map(|r| r / t);
        self
    }
    fn ratio_at_most(mut self, t: f64) -> Row {
        self.target = format!("<= {t}x redis");
        self.score = self.ratio.map(|r| if r > 0.0 { t / r } else { f64::INFINITY });
        self
    }
    fn at_least(mut self, t: f64, text: &str) -> Row {
        self.target = text.into();
        self.score = Some(self.mesh / t);
        self
    }
    fn at_most(mut self, t: f64, text: &str) -> Row {
        self.target = text.into();
        self.score = Some(if self.mesh > 0.0 { t / self.mesh } else { f64::INFINITY });
        self
    }
    fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }
    fn verdict(&self) -> &'static str {
        match self.score {
            None => "",
            Some(s) if s >= 1.0 => "meets",
            Some(_) => "SHORT",
        }
    }
}

struct Report {
    rows: Vec<Row>,
    errors: Vec<String>,
    load_start: String,
}

/// The 1, 5 and 15 minute load averages: the machine is shared.
fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

impl Report {
    fn push(&mut self, r: Row) {
        let redis = r.redis.map(fmt_num).unwrap_or_default();
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
        eprintln!(
            "  [{}] {:<44} {:>14} {:>14} {:>8}  {}",
            r.group,
            r.name,
            format!("{} {}", fmt_num(r.mesh), r.unit),
            redis,
            ratio,
            r.verdict()
        );
        self.rows.push(r);
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        let s = format!("{}", x.round() as i64);
        let neg = s.starts_with('-');
        let digits = s.trim_start_matches('-');
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if neg {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn key(prefix: &str, i: usize) -> Bytes {
    // 16 bytes for a one-letter prefix: "k:" + 14 digits.
    let k = format!("{prefix}:{i:0width$}", width = KEY_LEN - prefix.len() - 1);
    Bytes::from(k)
}

fn value(i: usize) -> Bytes {
    let mut v = format!("v{i}-").into_bytes();
    v.resize(VALUE_LEN, b'.');
    Bytes::from(v)
}

/// jemalloc's count of the bytes the process has allocated, and of its own
/// metadata; `None` if it cannot be read.
fn heap() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some((stats::allocated::read().ok()? as u64, stats::metadata::read().ok()? as u64))
}

fn rss_bytes() -> u64 {
    rss_at("/proc/self/status").map_or(0, |b| b as u64)
}

/// VmRSS from a `/proc/*/status` file, in bytes.
fn rss_at(status: &str) -> Option<usize> {
    let s = std::fs::read_to_string(status).ok()?;
    let kb: usize =
        s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// MeshConfig's defaults (anti-entropy every 1 s, push delay 0) on a free
/// loopback port. Only the heal row shortens the anti-entropy interval.
fn bench_config(name: &str) -> MeshConfig {
    MeshConfig { name: name.into(), listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..MeshConfig::default() }
}

async fn start_peer(ca: &EphemeralCa, name: &str, seeds: &[SocketAddr]) -> Result<Mesh> {
    start_peer_with(ca, bench_config(name), seeds).await
}

async fn start_peer_with(ca: &EphemeralCa, config: MeshConfig, seeds: &[SocketAddr]) -> Result<Mesh> {
    let name = config.name.clone();
    let id = ca.issue(&name).map_err(|e| anyhow!("issuing {name}'s certificate: {e}"))?;
    Mesh::builder()
        .config(config)
        .seeds(seeds.iter().copied())
        .tls(id)
        .start()
        .await
        .map_err(|e| anyhow!("starting peer {name}: {e}"))
}

/// a, then b and c seeded with a; returns once all are booted and connected.
async fn start_three(ca: &EphemeralCa, tag: &str) -> Result<Vec<Mesh>> {
    start_three_with(ca, tag, bench_config).await
}

async fn start_three_with(ca: &EphemeralCa, tag: &str, config: fn(&str) -> MeshConfig) -> Result<Vec<Mesh>> {
    let a = start_peer_with(ca, config(&format!("{tag}a")), &[]).await?;
    let b = start_peer_with(ca, config(&format!("{tag}b")), &[a.local_addr()]).await?;
    let c = start_peer_with(ca, config(&format!("{tag}c")), &[a.local_addr()]).await?;
    let peers = vec![a, b, c];
    wait_until("peers to connect", || peers.iter().all(|p| p.is_ready() && p.stats().connected == 2)).await?;
    Ok(peers)
}

async fn shutdown_all(peers: &[Mesh]) {
    let tasks: Vec<_> = peers.iter().cloned().map(|p| tokio::spawn(async move { p.shutdown().await })).collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Polls `done` every millisecond (the time is reported); returns the time
/// it took.
async fn wait_until(what: &str, done: impl FnMut() -> bool) -> Result<Duration> {
    Ok(Wait::new(DEADLINE).every(Duration::from_millis(1)).until(what, done).await?)
}

fn roots_equal(peers: &[Mesh]) -> bool {
    let r0 = peers[0].replica().store().root();
    peers[1..].iter().all(|p| p.replica().store().root() == r0)
}

// ---------------------------------------------------------------------------
// A tiny blocking RESP2 client.

#[derive(Debug, PartialEq)]
enum Reply {
    Nil,
    Bulk(Vec<u8>),
    Simple(String),
    Int(i64),
    Error(String),
    Array(Vec<Reply>),
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client { r: BufReader::new(s.try_clone()?), w: s, buf: Vec::new() })
    }

    fn encode(&mut self, args: &[&[u8]]) {
        let _ = write!(self.buf, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.buf, "${}\r\n", a.len());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.encode(args);
        self.flush()?;
        self.read()
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            bail!("connection closed");
        }
        Ok(l.trim_end_matches("\r\n").to_string())
    }

    fn read(&mut self) -> Result<Reply> {
        let l = self.line()?;
        let (t, rest) = l.split_at(1);
        Ok(match t {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    let mut v = vec![0; n as usize + 2];
                    self.r.read_exact(&mut v)?;
                    v.truncate(n as usize);
                    Reply::Bulk(v)
                }
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    Reply::Array((0..n).map(|_| self.read()).collect::<Result<_>>()?)
                }
            }
            _ => bail!("bad reply line {l:?}"),
        })
    }

    /// A field of `INFO section`.
    fn info_field(&mut self, section: &str, field: &str) -> Result<String> {
        match self.cmd(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(b) => String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
                .ok_or_else(|| anyhow!("INFO {section} has no {field}")),
            r => bail!("INFO: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// redis-benchmark.

/// `redis-benchmark -t set,get ...`: requests/s of SET and GET.
async fn redis_benchmark(port: u16, n: u64, pipeline: u32) -> Result<(f64, f64)> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get", "-d", "100", "-c", "50"])
        .args(["-r", "100000", "-n", &n.to_string(), "-P", &pipeline.to_string(), "--csv"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running redis-benchmark")?;
    if !out.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rps: HashMap<String, f64> = HashMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
        if f.len() >= 2 {
            if let Ok(v) = f[1].parse::<f64>() {
                rps.insert(f[0].to_string(), v);
            }
        }
    }
    match (rps.get("SET"), rps.get("GET")) {
        (Some(s), Some(g)) => Ok((*s, *g)),
        _ => bail!("no SET/GET figures in redis-benchmark's output: {text}"),
    }
}

/// A background writer load against `port`, until killed.
fn background_load(port: u16) -> Result<Child> {
    Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set", "-d", "100", "-c", "4"])
        .args(["-r", "100000", "-n", "2000000000", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the background redis-benchmark")
}

struct Resp {
    peers: Vec<Mesh>,
    ports: Vec<u16>,
    stop: tokio_util_stop::Stop,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A minimal shutdown signal for the RESP servers (no extra dependency).
mod tokio_util_stop {
    use tokio::sync::watch;
    #[derive(Clone)]
    pub struct Stop(pub watch::Sender<bool>);
    impl Stop {
        pub fn new() -> Stop {
            Stop(watch::channel(false).0)
        }
        pub fn fire(&self) {
            let _ = self.0.send(true);
        }
        pub async fn wait(self) {
            let mut rx = self.0.subscribe();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// Three peers, each serving RESP on `base`, `base+1`, `base+2`.
async fn start_resp(ca: &EphemeralCa, tag: &str, base: u16) -> Result<Resp> {
    let peers = start_three(ca, tag).await?;
    let stop = tokio_util_stop::Stop::new();
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let port = base + i as u16;
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding the RESP port 127.0.0.1:{port}"))?;
        servers.push(tokio::spawn(serve(p.clone(), l, RespConfig::default(), stop.clone().wait())));
        ports.push(port);
    }
    Ok(Resp { peers, ports, stop, servers })
}

impl Resp {
    async fn stop(self) {
        self.stop.fire();
        for s in self.servers {
            let _ = s.await;
        }
        shutdown_all(&self.peers).await;
    }
}

// ---------------------------------------------------------------------------
// Rows.

/// 1. RESP throughput.
async fn row_throughput(args: &Args, z: &Sizes, rep: &mut Report) -> Result<()> {
    // Three `meshcache node` processes, as the redis baseline is three
    // redis-server processes.
    let dir = nodes::TempDir::new("resp")?;
    let peers = nodes::start_mesh(&args.meshcache, &dir.0, &["ta", "tb", "tc"], &[]).await?;
    let mesh_port = peers[0].resp.port();
    let mut res = Ok(());
    for pipeline in [1u32, 16] {
        let n = if pipeline == 1 { z.resp_requests } else { z.resp_requests_pipelined };
        let (mut ms, mut mg, mut rs, mut rg, mut ps, mut pg) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..z.repeats {
            // Alternate targets so that drift in machine load hits all.
            let r = async {
                let (s, g) = redis_benchmark(args.redis.port(), n, pipeline).await?;
                rs.push(s);
                rg.push(g);
                let (s, g) = redis_benchmark(args.redis_primary.port(), n, pipeline).await?;
                ps.push(s);
                pg.push(g);
                let (s, g) = redis_benchmark(mesh_port, n, pipeline).await?;
                ms.push(s);
                mg.push(g);
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = r {
                res = Err(e);
                break;
            }
        }
        if res.is_err() {
            break;
        }
        let note = format!("median of {}; -n {n}; the peer replicates to 2 others", z.repeats);
        for (cmd, m, r, p) in [("SET", ms, rs, ps), ("GET", mg, rg, pg)] {
            rep.push(
                Row::new(1, format!("RESP {cmd} -P {pipeline}, vs redis + 2 replicas"), "ops/s", median(&m))
                    .redis(median(&p))
                    .ratio_at_least(1.0)
                    .note(format!("{note}; redis: a primary with two --replicaof replicas")),
            );
            let lone = Row::new(1, format!("RESP {cmd} -P {pipeline}, vs lone redis"), "ops/s", median(&m))
                .redis(median(&r))
                .note(format!("{note}; redis: one redis-server, no replica"));
            // A lone server does less work than a peer that replicates:
            // only reads are held to it.
            rep.push(if cmd == "GET" { lone.ratio_at_least(1.0) } else { lone });
        }
    }
    // A failed run is reported as it failed, not as a failed read of INFO.
    res?;
    let overflows = tokio::task::spawn_blocking(move || -> Result<u64> {
        Ok(Client::connect(peers[0].resp)?.info_field("meshcache", "queue_overflows")?.trim().parse()?)
    })
    .await??;
    if overflows > 0 {
        rep.errors.push(format!("note: {overflows} push queue overflows during RESP throughput"));
    }
    Ok(())
}

/// Row 11: GET with client tracking on against GET without, what a
/// tracked read (taken under its key's shard lock, and recorded in the
/// tracking table) costs. Peer A of three, `CONNS` connections in blocking threads,
/// each a GET at a time on random keys of `tracking_keys` preloaded,
/// `local_secs` a run; off and on alternate, median of `repeats`.
async fn row_tracking(args: &Args, z: &Sizes, ca: &EphemeralCa, rep: &mut Report) -> Result<()> {
    const CONNS: usize = 8;
    let resp = start_resp(ca, "k", args.resp_base).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], resp.ports[0]));
    let (keys, secs, repeats) = (z.tracking_keys, z.local_secs, z.repeats);
    let res = tokio::task::spawn_blocking(move || -> Result<(Vec<f64>, Vec<f64>)> {
        let mut c = Client::connect(addr)?;
        for i in 0..keys {
            match c.cmd(&[b"SET", &key("k", i), &value(i)])? {
                Reply::Simple(s) if s == "OK" => {}
                r => bail!("SET: {r:?}"),
            }
        }
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            off.push(get_load(addr, CONNS, keys, false, secs)?);
            on.push(get_load(addr, CONNS, keys, true, secs)?);
        }
        Ok((off, on))
    })
    .await;
    resp.stop().await;
    let (off, on) = res??;
    let (off_m, on_m) = (median(&off), median(&on));
    rep.push(Row::new(11, "GET with CLIENT TRACKING on", "ops/s", on_m).note(format!(
        "{CONNS} connections, one GET at a time, {keys} keys; off: {off_m:.0}/s; on / off = {:.2}; median of \
             {repeats} runs of {secs} s each, alternating",
        on_m / off_m
    )));
    Ok(())
}

/// GETs on random keys over `conns` connections for `secs`, with CLIENT
/// TRACKING on or off; GETs per second.
fn get_load(addr: SocketAddr, conns: usize, keys: usize, tracking: bool, secs: f64) -> Result<f64> {
    let end = meshcache::env::stopwatch().into_std() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|t| {
            std::thread::spawn(move || -> Result<u64> {
                let mut c = Client::connect(addr)?;
                if tracking {
                    match c.cmd(&[b"CLIENT", b"TRACKING", b"ON"])? {
                        Reply::Simple(s) if s == "OK" => {}
                        r => bail!("CLIENT TRACKING ON: {r:?}"),
                    }
                }
                let (mut n, mut i) = (0u64, t * 7919);
                while std::time::Instant::now() < end {
                    i = (i + 104_729) % keys;
                    match c.cmd(&[b"GET", &key("k", i)])? {
                        Reply::Bulk(_) => n += 1,
                        r => bail!("GET: {r:?}"),
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| anyhow!("a load thread panicked"))??;
    }
    Ok(total as f64 / secs)
}

/// One lag probe's samples (us), each sorted: the whole lag (from sending
/// the SET to the GET that sees it), the SET's round trip (until its
/// reply), and what follows the reply (replication, and the polling GETs'
/// round trips); and how many GETs a sample took, on average.
struct Lag {
    total: Vec<f64>,
    reply: Vec<f64>,
    after: Vec<f64>,
    gets: f64,
}

/// Writes on `a` and polls `b` until the value is visible, `n` keys one
/// at a time.
fn lag_probe(a: SocketAddr, b: SocketAddr, n: usize, tag: &str) -> Result<Lag> {
    let mut ca = Client::connect(a)?;
    let mut cb = Client::connect(b)?;
    let (mut total, mut reply, mut after) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut gets = 0u64;
    for i in 0..n + 50 {
        let k = key(tag, i);
        let v = value(i + 7);
        let t0 = meshcache::env::stopwatch().into_std();
        match ca.cmd(&[b"SET", &k, &v])? {
            Reply::Simple(s) if s == "OK" => {}
            r => bail!("SET on {a}: {r:?}"),
        }
        let replied = t0.elapsed();
        let mut polls = 0u64;
        loop {
            polls += 1;
            if let Reply::Bulk(got) = cb.cmd(&[b"GET", &k])? {
                if got == v[..] {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("key {i} written on {a} not visible on {b} within 10 s");
            }
        }
        let seen = t0.elapsed();
        if i >= 50 {
            // The first 50 are warm-up.
            total.push(seen.as_secs_f64() * 1e6);
            reply.push(replied.as_secs_f64() * 1e6);
            after.push((seen - replied).as_secs_f64() * 1e6);
            gets += polls;
        }
    }
    for v in [&mut total, &mut reply, &mut after] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Lag { total, reply, after, gets: gets as f64 / n.max(1) as f64 })
}

/// Round trips (us, sorted) of `n` SETs on `a`, one every `gap`: a writer
/// that leaves the peer idle between writes, where the lag probe writes
/// again as soon as the last write is seen.
fn paced_sets(a: SocketAddr, n: usize, gap: Duration) -> Result<Vec<f64>> {
    let mut c = Client::connect(a)?;
    let mut trips = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let (k, v) = (key("p", i), value(i + 3));
        std::thread::sleep(gap);
        let t0 = meshcache::env::stopwatch().into_std();
        match c.cmd(&[b"SET", &k, &v])? {
            Reply::Simple(s) if s == "OK" => {}
            r => bail!("SET on {a}: {r:?}"),
        }
        if i >= 50 {
            trips.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    trips.sort_by(f64::total_cmp);
    Ok(trips)
}

/// One lag probe from `a` to `b`, with a background load on `a` if `loaded`.
async fn probe(a: SocketAddr, b: SocketAddr, n: usize, tag: &'static str, loaded: bool) -> Result<Lag> {
    let child = if loaded { Some(background_load(a.port())?) } else { None };
    if child.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let lat = tokio::task::spawn_blocking(move || lag_probe(a, b, n, tag)).await;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    lat?
}

/// 2. Read-after-write lag.
async fn row_lag(args: &Args, z: &Sizes, rep: &mut Report) -> Result<()> {
    let dir = nodes::TempDir::new("lag")?;
    let peers = nodes::start_mesh(&args.meshcache, &dir.0, &["la", "lb", "lc"], &[]).await?;
    let (ma, mb) = (peers[0].resp, peers[1].resp);
    let (ra, rb) = (args.redis_primary, args.redis_replica);
    let n = z.lag_keys;
    let mut res = Ok(());
    for loaded in [false, true] {
        let r = async {
            let redis = probe(ra, rb, n, "r", loaded).await?;
            let mesh = probe(ma, mb, n, "m", loaded).await?;
            anyhow::Ok((redis, mesh))
        }
        .await;
        let (redis, mesh) = match r {
            Ok(x) => x,
            Err(e) => {
                res = Err(e);
                break;
            }
        };
        let cond = if loaded { "loaded" } else { "idle" };
        let note = if loaded {
            format!("{n} keys; background redis-benchmark -t set -c 4 on the writer")
        } else {
            format!("{n} keys, one at a time")
        };
        rep.push(
            Row::new(2, format!("lag p50, {cond}"), "us", percentile(&mesh.total, 50.0))
                .redis(percentile(&redis.total, 50.0))
                .ratio_at_most(1.0)
                .note(note.clone()),
        );
        rep.push(
            Row::new(2, format!("lag p99, {cond}"), "us", percentile(&mesh.total, 99.0))
                .redis(percentile(&redis.total, 99.0))
                .ratio_at_most(1.2)
                .note(note.clone()),
        );
        rep.push(
            Row::new(2, format!("lag max, {cond}"), "us", *mesh.total.last().unwrap_or(&0.0))
                .redis(*redis.total.last().unwrap_or(&0.0))
                .note(note),
        );
        // Where the lag goes: the SET's round trip on the writer, and what
        // follows its reply (replication, then the reader's GETs).
        rep.push(
            Row::new(2, format!("lag p50, {cond}: until the SET's reply"), "us", percentile(&mesh.reply, 50.0))
                .redis(percentile(&redis.reply, 50.0))
                .note("the writer's round trip: RESP parse, the write, the reply"),
        );
        rep.push(
            Row::new(2, format!("lag p50, {cond}: after the SET's reply"), "us", percentile(&mesh.after, 50.0))
                .redis(percentile(&redis.after, 50.0))
                .note(format!(
                    "replication, and the reader's GETs until one sees the value: {:.2} GETs a sample (redis {:.2})",
                    mesh.gets, redis.gets
                )),
        );
    }
    if res.is_ok() {
        let gap = Duration::from_millis(2);
        let r =
            tokio::task::spawn_blocking(move || anyhow::Ok((paced_sets(ra, n, gap)?, paced_sets(ma, n, gap)?))).await;
        match r {
            Ok(Ok((redis, mesh))) => {
                let note = format!("{n} SETs one every 2 ms, each answered before the next; the peer replicates to 2 others, redis to 2 replicas");
                for p in [50.0, 99.0] {
                    rep.push(
                        Row::new(2, format!("SET round trip p{p:.0}, paced"), "us", percentile(&mesh, p))
                            .redis(percentile(&redis, p))
                            .note(note.clone()),
                    );
                }
            }
            Ok(Err(e)) => res = Err(e),
            Err(e) => res = Err(e.into()),
        }
    }
    drop(peers);
    res
}

/// Writes `n` keys from `start` on `p` in a blocking thread.
async fn write_range(p: Mesh, prefix: &'static str, start: usize, n: usize) -> Result<Duration> {
    write_items(p, items(prefix, start, n)).await
}

/// Keys and their values, in the order they are put.
type Items = Vec<(Bytes, Bytes)>;

/// The keys `start..start + n` with `prefix` and their values. A timed
/// write makes them before its clock starts, as row 7 makes its keys and
/// redis-benchmark its commands: formatting them as it goes took about an
/// eighth of row 3's writer thread.
fn items(prefix: &str, start: usize, n: usize) -> Items {
    (start..start + n).map(|i| (key(prefix, i), value(i))).collect()
}

/// Puts `items` into `p`, in order, on a thread of its own.
async fn write_items(p: Mesh, items: Items) -> Result<Duration> {
    tokio::task::spawn_blocking(move || {
        let t = meshcache::env::stopwatch().into_std();
        for (k, v) in items {
            p.insert(k, v)?;
        }
        anyhow::Ok(t.elapsed())
    })
    .await?
}

/// Row 3: replicated updates/s and wire bytes per update, with three peers
/// in this process, then with three peer processes.
async fn row_replicated(z: &Sizes, ca: &EphemeralCa, rep: &mut Report) -> Result<()> {
    let mut failed = Vec::new();
    for (mode, run) in [("one writer", 0usize), ("3 writers", 1)] {
        if let Err(e) = replicated_mode(z, ca, rep, mode, run).await {
            failed.push(format!("{mode}, 1 process: {e:#}"));
        }
    }
    for (mode, all) in [("one writer", false), ("3 writers", true)] {
        if let Err(e) = replicated_processes(z, rep, mode, all).await {
            failed.push(format!("{mode}, 3 processes: {e:#}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

async fn replicated_mode(z: &Sizes, ca: &EphemeralCa, rep: &mut Report, mode: &str, run: usize) -> Result<()> {
    let m = z.replicated;
    {
        let mut rates = Vec::new();
        let mut wire = Vec::new();
        let mut overflows = 0;
        for r in 0..z.repeats {
            let peers = start_three(ca, &format!("r{run}{r}")).await?;
            let before: Vec<_> = peers.iter().map(Mesh::stats).collect();
            let batches: Vec<_> = if run == 0 {
                vec![items("u", 0, m)]
            } else {
                (0..3).map(|w| items("u", w * (m / 3), m / 3)).collect()
            };
            let res = async {
                let t = meshcache::env::stopwatch().into_std();
                let writers: Vec<_> = batches
                    .into_iter()
                    .enumerate()
                    .map(|(w, b)| tokio::spawn(write_items(peers[w].clone(), b)))
                    .collect();
                for w in writers {
                    w.await??;
                }
                let total = if run == 0 { m } else { 3 * (m / 3) } as u64;
                wait_until("replicated writes", || roots_equal(&peers) && peers[0].replica().store().root().1 == total)
                    .await
                    .map_err(|e| {
                        let held: Vec<String> =
                            peers.iter().map(|p| p.replica().store().root().1.to_string()).collect();
                        let over: u64 = peers.iter().map(|p| p.stats().queue_overflows).sum();
                        anyhow!("{e} (registers held: {}; queue overflows: {over})", held.join(", "))
                    })?;
                anyhow::Ok((total, t.elapsed()))
            }
            .await;
            let after: Vec<_> = peers.iter().map(Mesh::stats).collect();
            shutdown_all(&peers).await;
            let (total, took) = res?;
            rates.push(total as f64 / took.as_secs_f64());
            let bytes: u64 = after.iter().zip(&before).map(|(a, b)| a.push_bytes_sent - b.push_bytes_sent).sum();
            let deltas: u64 = after.iter().zip(&before).map(|(a, b)| a.deltas_sent - b.deltas_sent).sum();
            overflows += after.iter().zip(&before).map(|(a, b)| a.queue_overflows - b.queue_overflows).sum::<u64>();
            if deltas > 0 {
                wire.push(bytes as f64 / deltas as f64);
            }
        }
        replicated_rows(rep, z, mode, "1 process", "3 peers in 1 process", rates, wire, overflows);
    }
    Ok(())
}

/// Row 3's two figures for one setup: median updates/s and push bytes per
/// update.
#[allow(clippy::too_many_arguments)]
fn replicated_rows(
    rep: &mut Report,
    z: &Sizes,
    mode: &str,
    label: &str,
    how: &str,
    rates: Vec<f64>,
    wire: Vec<f64>,
    overflows: u64,
) {
    let note = format!(
        "{} puts of {KEY_LEN}+{VALUE_LEN} B (made before the clock starts), {how}, until equal digests; median of {}{}",
        z.replicated,
        z.repeats,
        if overflows > 0 { format!("; {overflows} queue overflows (repaired by AE)") } else { String::new() }
    );
    // The targets: 600,000/s with one writer, 500,000/s with three.
    let (target, text) =
        if mode.starts_with("one") { (600_000.0, ">= 600,000/s") } else { (500_000.0, ">= 500,000/s") };
    rep.push(
        Row::new(3, format!("replicated updates/s, {mode}, {label}"), "upd/s", median(&rates))
            .at_least(target, text)
            .note(note),
    );
    let bound = 1.2 * (KEY_LEN + VALUE_LEN + 16) as f64;
    rep.push(
        Row::new(3, format!("push bytes per update, {mode}, {label}"), "B", median(&wire))
            .at_most(bound, &format!("<= {bound:.0} B (1.2x (k+v+16))"))
            .note(format!("push_bytes_sent / deltas_sent; key+value = {} B", KEY_LEN + VALUE_LEN)),
    );
}

/// One peer of the three-process mesh: a child meshbench started with
/// `--child-peer`, driven by one-line commands on its stdin.
struct PeerProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    addr: SocketAddr,
}

/// A peer process's answer to `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcState {
    root: (u64, u64),
    connected: usize,
    push_bytes_sent: u64,
    deltas_sent: u64,
    queue_overflows: u64,
}

impl PeerProcess {
    async fn spawn(name: &str, certs: &std::path::Path, seed: Option<SocketAddr>) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().context("finding meshbench's own executable")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("--child-peer").arg(name).arg("--child-certs").arg(certs);
        if let Some(s) = seed {
            cmd.arg("--child-seed").arg(s.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a peer process")?;
        let stdin = child.stdin.take().context("peer process stdin")?;
        let stdout = child.stdout.take().context("peer process stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("peer process did not start within 30 s")??
            .context("peer process exited before starting")?;
        let addr = first
            .strip_prefix("addr ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("peer process said {first:?}, not its address"))?;
        Ok(PeerProcess { child, stdin, lines, addr })
    }

    async fn send(&mut self, cmd: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.context("writing to a peer process")?;
        self.stdin.flush().await.context("writing to a peer process")
    }

    async fn recv(&mut self) -> Result<String> {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .context("peer process did not answer")??
            .context("peer process exited")?;
        match line.strip_prefix("error ") {
            Some(e) => bail!("peer process: {e}"),
            None => Ok(line),
        }
    }

    async fn state(&mut self) -> Result<ProcState> {
        self.send("state").await?;
        let line = self.recv().await?;
        let v: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        match v[..] {
            [h, n, connected, push_bytes_sent, deltas_sent, queue_overflows] => Ok(ProcState {
                root: (h, n),
                connected: connected as usize,
                push_bytes_sent,
                deltas_sent,
                queue_overflows,
            }),
            _ => bail!("peer process state {line:?}"),
        }
    }

    async fn quit(mut self) {
        if self.send("quit").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        }
        let _ = self.child.kill().await;
    }
}

/// The child side of [`PeerProcess`]: starts a peer with
/// [`bench_config`], prints `addr <address>`, then answers, one line each:
/// `state` (digest root, register count, connections, push bytes, deltas
/// sent, queue overflows), `prepare START N` (makes keys `START..START+N`
/// with prefix `u` and their values; answers `ready`), `write START N`
/// (puts them, made now unless prepared; answers `done`), `fill ROUND KEYS
/// CALLERS MS` (see [`fill_callers`]), `quit`.
async fn child_main(name: &str, certs: &std::path::Path, seed: Option<SocketAddr>) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let id = meshcache::transport::certs::load_identity(certs, name).map_err(|e| anyhow!("{e}"))?;
    let p = Mesh::builder()
        .config(bench_config(name))
        .seeds(seed)
        .tls(id)
        .start()
        .await
        .map_err(|e| anyhow!("starting peer {name}: {e}"))?;
    let mut out = tokio::io::stdout();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut answer = format!("addr {}", p.local_addr());
    let mut prepared: Option<(usize, usize, Items)> = None;
    loop {
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
        let Some(line) = lines.next_line().await? else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        answer = match words[..] {
            ["state"] => {
                let s = p.stats();
                let (h, n) = p.replica().store().root();
                format!("{h} {n} {} {} {} {}", s.connected, s.push_bytes_sent, s.deltas_sent, s.queue_overflows)
            }
            ["prepare", start, n] => match (start.parse(), n.parse()) {
                (Ok(start), Ok(n)) => {
                    prepared = Some((start, n, items("u", start, n)));
                    "ready".into()
                }
                _ => format!("error bad prepare command {line:?}"),
            },
            ["write", start, n] => match (start.parse(), n.parse()) {
                (Ok(start), Ok(n)) => {
                    let batch = match prepared.take() {
                        Some((s, c, b)) if (s, c) == (start, n) => b,
                        _ => items("u", start, n),
                    };
                    match write_items(p.clone(), batch).await {
                        Ok(_) => "done".into(),
                        Err(e) => format!("error {e:#}"),
                    }
                }
                _ => format!("error bad write command {line:?}"),
            },
            ["fill", round, keys, callers, ms] => match (keys.parse(), callers.parse(), ms.parse()) {
                (Ok(keys), Ok(callers), Ok(ms)) => match fill_callers(&p, round, keys, callers, ms).await {
                    Ok(loaded) => format!("done {}", if loaded.is_empty() { "-".into() } else { loaded.join(",") }),
                    Err(e) => format!("error {e:#}"),
                },
                _ => format!("error bad fill command {line:?}"),
            },
            ["quit"] => break,
            _ => format!("error unknown command {line:?}"),
        };
    }
    p.shutdown().await;
    Ok(())
}

/// `callers` tasks on peer `p`, each asking `Mesh::get_or_load` for every
/// one of `keys` cold keys (`f<round>:<i>`), starting at its own place in
/// the list, so that the callers of every peer ask for the same keys at
/// about the same moments. The loader sleeps `ms`. Returns the indices of
/// the keys this peer loaded.
async fn fill_callers(p: &Mesh, round: &str, keys: usize, callers: usize, ms: u64) -> Result<Vec<String>> {
    let loaded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..callers {
        let (p, loaded, round) = (p.clone(), loaded.clone(), round.to_string());
        tasks.spawn(async move {
            let offset = c * keys / callers;
            for i in 0..keys {
                let k = (offset + i) % keys;
                let loaded = loaded.clone();
                let loader = move || async move {
                    loaded.lock().expect("not poisoned").push(k.to_string());
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, std::io::Error>(Bytes::from(vec![b'v'; VALUE_LEN]))
                };
                p.get_or_load(format!("f{round}:{k}"), None, loader).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let out = loaded.lock().expect("not poisoned").clone();
    Ok(out)
}

/// Row 10: cold keys loaded through `Mesh::get_or_load`. Three peer
/// processes, `CALLERS` concurrent callers on each asking for the same cold
/// keys, a loader that takes `LOADER_MS`; how many times each key was
/// loaded.
async fn row_fill(z: &Sizes, rep: &mut Report) -> Result<()> {
    const CALLERS: usize = 64;
    const LOADER_MS: u64 = 20;
    let certs = std::env::temp_dir().join(format!("meshbench-fill-certs-{}", std::process::id()));
    let names = ["fa", "fb", "fc"];
    for n in names {
        meshcache::transport::certs::dev_identity(&certs, n).map_err(|e| anyhow!("certificates for {n}: {e}"))?;
    }
    let mut procs = Vec::new();
    let res = async {
        procs.push(PeerProcess::spawn(names[0], &certs, None).await?);
        let seed = procs[0].addr;
        for n in &names[1..] {
            procs.push(PeerProcess::spawn(n, &certs, Some(seed)).await?);
        }
        all_connected(&mut procs).await?;
        let keys = z.fill_keys;
        let (mut means, mut maxes, mut secs, mut repeated) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..z.repeats {
            let t = meshcache::env::stopwatch().into_std();
            for p in procs.iter_mut() {
                p.send(&format!("fill {round} {keys} {CALLERS} {LOADER_MS}")).await?;
            }
            let mut per_key = vec![0usize; keys];
            for p in procs.iter_mut() {
                let line = p.recv().await?;
                let list = line.strip_prefix("done ").ok_or_else(|| anyhow!("fill answered {line:?}"))?;
                for k in list.split(',').filter(|k| *k != "-") {
                    per_key[k.parse::<usize>()?] += 1;
                }
            }
            secs.push(t.elapsed().as_secs_f64());
            if let Some(k) = per_key.iter().position(|&n| n == 0) {
                bail!("key {k} was never loaded, yet every caller got a value");
            }
            means.push(per_key.iter().sum::<usize>() as f64 / keys as f64);
            repeated.push(per_key.iter().filter(|&&n| n > 1).count().to_string());
            maxes.push(*per_key.iter().max().unwrap_or(&0) as f64);
        }
        let how = format!(
            "3 peer processes x {CALLERS} callers, {keys} cold keys, {LOADER_MS} ms loader; naive: {} loads per key \
             (every caller), local single-flight only: 3 (one per peer); median of {} (means {}; keys loaded more \
             than once: {}; rounds took {:.2} s)",
            3 * CALLERS,
            z.repeats,
            means.iter().map(|m| format!("{m:.3}")).collect::<Vec<_>>().join(", "),
            repeated.join(", "),
            median(&secs)
        );
        rep.push(
            Row::new(10, "get_or_load: loads per key, mean", "loads", median(&means))
                .at_most(1.0, "<= 1.0")
                .note(how.clone()),
        );
        rep.push(
            Row::new(10, "get_or_load: loads of the most loaded key", "loads", median(&maxes))
                .at_most(2.0, "<= 2")
                .note(how),
        );
        anyhow::Ok(())
    }
    .await;
    for p in procs {
        p.quit().await;
    }
    let _ = std::fs::remove_dir_all(&certs);
    res
}

/// Waits until each of the peer processes is connected to all the others.
async fn all_connected(procs: &mut [PeerProcess]) -> Result<()> {
    let t = meshcache::env::stopwatch().into_std();
    let others = procs.len() - 1;
    loop {
        let mut up = true;
        for p in procs.iter_mut() {
            up &= p.state().await?.connected == others;
        }
        if up {
            return Ok(());
        }
        if t.elapsed() > DEADLINE {
            bail!("peer processes did not connect within {} s", DEADLINE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Row 3 with each peer in its own process.
async fn replicated_processes(z: &Sizes, rep: &mut Report, mode: &str, all: bool) -> Result<()> {
    let certs = std::env::temp_dir().join(format!("meshbench-certs-{}", std::process::id()));
    let names = ["pa", "pb", "pc"];
    for n in names {
        meshcache::transport::certs::dev_identity(&certs, n).map_err(|e| anyhow!("certificates for {n}: {e}"))?;
    }
    let res = replicated_processes_inner(z, rep, mode, all, &certs, &names).await;
    let _ = std::fs::remove_dir_all(&certs);
    res
}

async fn replicated_processes_inner(
    z: &Sizes,
    rep: &mut Report,
    mode: &str,
    all: bool,
    certs: &std::path::Path,
    names: &[&str; 3],
) -> Result<()> {
    let m = z.replicated;
    let (mut rates, mut wire, mut overflows) = (Vec::new(), Vec::new(), 0);
    for _ in 0..z.repeats {
        let mut procs = vec![PeerProcess::spawn(names[0], certs, None).await?];
        let seed = procs[0].addr;
        for n in &names[1..] {
            procs.push(PeerProcess::spawn(n, certs, Some(seed)).await?);
        }
        let res = async {
            all_connected(&mut procs).await?;
            let mut before = Vec::new();
            for p in procs.iter_mut() {
                before.push(p.state().await?);
            }
            let writers = if all { 3 } else { 1 };
            let per = m / writers;
            let total = (per * writers) as u64;
            for (w, p) in procs.iter_mut().take(writers).enumerate() {
                p.send(&format!("prepare {} {per}", w * per)).await?;
                let answer = p.recv().await?;
                if answer != "ready" {
                    bail!("peer process answered {answer:?} to prepare");
                }
            }
            let t = meshcache::env::stopwatch().into_std();
            for (w, p) in procs.iter_mut().take(writers).enumerate() {
                p.send(&format!("write {} {per}", w * per)).await?;
            }
            for p in procs.iter_mut().take(writers) {
                p.recv().await?;
            }
            let after = loop {
                let mut states = Vec::new();
                for p in procs.iter_mut() {
                    states.push(p.state().await?);
                }
                if states.iter().all(|s| s.root == states[0].root) && states[0].root.1 == total {
                    break states;
                }
                if t.elapsed() > DEADLINE {
                    let held: Vec<String> = states.iter().map(|s| s.root.1.to_string()).collect();
                    bail!(
                        "replicated writes: not done within {} s (registers held: {})",
                        DEADLINE.as_secs(),
                        held.join(", ")
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let took = t.elapsed();
            let sum = |v: &[ProcState], f: fn(&ProcState) -> u64| -> u64 { v.iter().map(f).sum() };
            let bytes = sum(&after, |s| s.push_bytes_sent) - sum(&before, |s| s.push_bytes_sent);
            let deltas = sum(&after, |s| s.deltas_sent) - sum(&before, |s| s.deltas_sent);
            let over = sum(&after, |s| s.queue_overflows) - sum(&before, |s| s.queue_overflows);
            anyhow::Ok((total as f64 / took.as_secs_f64(), (deltas > 0).then(|| bytes as f64 / deltas as f64), over))
        }
        .await;
        for p in procs {
            p.quit().await;
        }
        let (rate, per_update, over) = res?;
        rates.push(rate);
        wire.extend(per_update);
        overflows += over;
    }
    let how = "3 peer processes (polled over pipes every ms)";
    replicated_rows(rep, z, mode, "3 processes", how, rates, wire, overflows);
    Ok(())
}

/// 4. Convergence after a heal.
///
/// Three peers over fault-injecting sockets (real UDP on loopback, see
/// `meshcache::transport::faults`): {a, b} and {c} are partitioned until
/// the QUIC connections across the cut time out; 50,000 keys are written
/// on a (pushed to b) and 50,000 others on c; then the partition heals and
/// the peers redial and repair the difference by anti-entropy.
async fn row_heal(z: &Sizes, ca: &EphemeralCa, rep: &mut Report) -> Result<()> {
    let faults = Faults::with_seed(4);
    let mut peers: Vec<Mesh> = Vec::new();
    for name in ["ha", "hb", "hc"] {
        let seeds: Vec<SocketAddr> = peers.first().map(Mesh::local_addr).into_iter().collect();
        let socket = faults.socket(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding a faulty socket")?;
        let id = ca.issue(name).map_err(|e| anyhow!("issuing {name}'s certificate: {e}"))?;
        let started =
            Mesh::builder().config(MeshConfig::for_test(name)).seeds(seeds).socket(socket).tls(id).start().await;
        match started {
            Ok(p) => peers.push(p),
            Err(e) => {
                shutdown_all(&peers).await;
                bail!("starting peer {name}: {e}");
            }
        }
    }
    let res = async {
        wait_until("peers to connect", || peers.iter().all(|p| p.is_ready() && p.stats().connected == 2)).await?;
        heal_inner(z, &faults, &peers, rep).await
    }
    .await;
    shutdown_all(&peers).await;
    res
}

async fn heal_inner(z: &Sizes, faults: &Faults, peers: &[Mesh], rep: &mut Report) -> Result<()> {
    // Let the start-up rounds finish.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let half = z.divergent / 2;
    let sum = |f: fn(&MeshStats) -> u64| -> u64 { peers.iter().map(|p| f(&p.stats())).sum() };
    // One in-sync round: AE bytes over quiet seconds, per round.
    let (b0, r0, d0) = (sum(|s| s.ae_bytes_sent), sum(|s| s.ae_rounds), sum(|s| s.ae_declined));
    tokio::time::sleep(Duration::from_millis(if z.repeats > 1 { 2000 } else { 500 })).await;
    let (b1, r1, d1) = (sum(|s| s.ae_bytes_sent), sum(|s| s.ae_rounds), sum(|s| s.ae_declined));
    if r1 > r0 {
        // A declined round (two peers opening rounds to each other at
        // once) sends bytes and is not a round: said, so that a reading
        // over the bound can be told apart from a costlier round.
        rep.push(
            Row::new(4, "AE bytes of one in-sync round", "B", (b1 - b0) as f64 / (r1 - r0) as f64)
                .at_most(128.0, "<= 64 B per peer (128 B per pair)")
                .note(format!(
                    "{} rounds between 3 idle peers, and {} declined (their bytes are counted); both directions",
                    r1 - r0,
                    d1 - d0
                )),
        );
    }
    // The split, for real: no datagram crosses it until the connections
    // across it have timed out (idle timeout 3 s).
    let (a, b, c) = (&peers[0], &peers[1], &peers[2]);
    faults.partition(&[a.local_addr(), b.local_addr()], &[c.local_addr()]);
    let cut = meshcache::env::stopwatch().into_std();
    wait_until("the connections across the cut to close", || {
        a.stats().connected == 1 && b.stats().connected == 1 && c.stats().connected == 0
    })
    .await?;
    let (wa, wc) =
        (tokio::spawn(write_range(a.clone(), "d", 0, half)), tokio::spawn(write_range(c.clone(), "e", 0, half)));
    wa.await??;
    wc.await??;
    let count = |p: &Mesh| p.replica().store().root().1 as usize;
    wait_until("a and b to agree", || {
        a.replica().store().root() == b.replica().store().root() && count(a) == half && count(c) == half
    })
    .await?;
    // A round between a and b may still run, repairing what their pushes
    // dropped while some of it arrives by push meanwhile; a session counts
    // what it sent when it ends. What it sends is not the heal's: wait for
    // each to end two sessions (one runs at a time, so the second started
    // after they agreed).
    let ended = |p: &Mesh| {
        let st = p.stats();
        st.ae_rounds + st.ae_failed
    };
    let agreed = (ended(a), ended(b));
    wait_until("a and b to end the sessions in flight", || ended(a) >= agreed.0 + 2 && ended(b) >= agreed.1 + 2)
        .await?;
    let cut_for = cut.elapsed();
    let before: Vec<MeshStats> = peers.iter().map(Mesh::stats).collect();
    let crossed = faults.stats().dropped_cut;
    faults.heal();
    // Repair starts when the first link across the cut is up again.
    let redial = wait_until("a link across the cut to reopen", || c.stats().connected >= 1).await?;
    let total = wait_until("heal", || roots_equal(peers) && count(a) == 2 * half).await? + redial;
    // A session's bytes are counted when it ends, which can be after the
    // digests already match (its Finish exchange): let the sessions in
    // flight end before reading the counters. Idle rounds in that second
    // add about 1 KB.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<MeshStats> = peers.iter().map(Mesh::stats).collect();
    let delta = |f: fn(&MeshStats) -> u64| -> u64 { after.iter().zip(&before).map(|(x, y)| f(x) - f(y)).sum() };
    let pairs = 3 * half;
    let divergent = (pairs * (KEY_LEN + VALUE_LEN)) as f64;
    let ae_bytes = delta(|s| s.ae_bytes_sent) as f64;
    let push_bytes = delta(|s| s.push_bytes_sent);
    let entries = delta(|s| s.ae_entries_sent);
    let failed = delta(|s| s.ae_failed);
    let setting = format!(
        "a and b cut off from c (fault-injecting sockets) for {:.1} s, {crossed} datagrams dropped at the cut; AE \
         every 200 ms +-20% (for_test)",
        cut_for.as_secs_f64()
    );
    rep.push(
        Row::new(4, format!("heal: {} divergent keys, reconnect to equal digests", 2 * half), "ms", {
            (total - redial).as_secs_f64() * 1e3
        })
        .at_most(1000.0, "<= 1,000 ms")
        .note(format!("{setting}; from the first link across the cut reopening; an AE round starts on every new link")),
    );
    rep.push(
        Row::new(4, "heal: partition lifted to equal digests", "ms", total.as_secs_f64() * 1e3)
            .at_most(300.0, "<= 300 ms")
            .note(format!(
                "includes {:.0} ms until a link across the cut reopened (each side probes a lost link's address for \
             10 s, an Initial at least every 150 ms on loopback, then dials with backoff: src/node/links.rs)",
                redial.as_secs_f64() * 1e3
            )),
    );
    rep.push(Row::new(4, "heal: AE bytes / divergent data", "x", ae_bytes / divergent).at_most(1.2, "<= 1.2x").note(
        format!(
            "{} AE bytes sent (all peers, read 1 s after equal digests) vs {} B = (k+v) x {pairs} missing (peer, key) \
             pairs; {entries} registers sent by AE for {pairs} needed; {push_bytes} push bytes after the heal; \
             {failed} failed AE sessions",
            fmt_num(ae_bytes),
            fmt_num(divergent),
        ),
    ));
    Ok(())
}

/// 6 and 5: memory per entry on a lone peer, then a new peer bootstraps
/// from it.
async fn row_memory_bootstrap(args: &Args, z: &Sizes, ca: &EphemeralCa, rep: &mut Report, rows: &[u8]) -> Result<()> {
    let n = z.bootstrap;
    let a = start_peer(ca, "ma", &[]).await?;
    let res = async {
        let rss0 = rss_bytes();
        let heap0 = heap();
        let aa = a.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            for i in 0..n {
                aa.insert(key("key", i), value(i))?;
            }
            Ok(())
        })
        .await??;
        let rss1 = rss_bytes();
        let heap1 = heap();
        if rows.contains(&6) {
            let per = (rss1.saturating_sub(rss0)) as f64 / n as f64;
            // What jemalloc counts as allocated is what redis-server's
            // used_memory counts of its own; the row itself stays on the
            // resident set, which also holds jemalloc's metadata.
            let heap = match (heap0, heap1) {
                (Some((a0, m0)), Some((a1, m1))) => format!(
                    "; jemalloc: allocated delta {:.1} B/entry ({:.1} beyond k+v), its metadata {:.1} B/entry",
                    a1.saturating_sub(a0) as f64 / n as f64,
                    a1.saturating_sub(a0) as f64 / n as f64 - (KEY_LEN + VALUE_LEN) as f64,
                    m1.saturating_sub(m0) as f64 / n as f64
                ),
                _ => String::new(),
            };
            let redis = redis_memory(args.redis, n).await;
            let mut row = Row::new(6, "memory overhead per entry (beyond k+v)", "B", per - (KEY_LEN + VALUE_LEN) as f64)
                .at_most(64.0, "<= 64 B");
            row = match redis {
                Ok(r) => row.redis(r - (KEY_LEN + VALUE_LEN) as f64).note(format!(
                    "{n} entries of {KEY_LEN}+{VALUE_LEN} B; VmRSS delta {:.1} B/entry{heap}; redis: used_memory delta {:.1} B/key",
                    per, r
                )),
                Err(e) => row.note(format!("VmRSS delta {per:.1} B/entry{heap}; redis baseline failed: {e}")),
            };
            rep.push(row);
        }
        if rows.contains(&5) {
            let t = meshcache::env::stopwatch().into_std();
            let b = start_peer(ca, "mb", &[a.local_addr()]).await?;
            let r = async {
                wait_until("bootstrap ready", || b.is_ready()).await?;
                let ready = t.elapsed();
                wait_until("bootstrap", || b.replica().store().root() == a.replica().store().root()).await?;
                anyhow::Ok((ready, t.elapsed()))
            }
            .await;
            let errors = a.stats().protocol_errors + b.stats().protocol_errors;
            let failed = a.stats().ae_failed + b.stats().ae_failed;
            b.shutdown().await;
            let (ready, total) = r?;
            rep.push(
                Row::new(5, format!("bootstrap of {n} entries"), "ms", total.as_secs_f64() * 1e3)
                    .at_most(5000.0 * n as f64 / 1e6, &format!("<= {:.0} ms", 5000.0 * n as f64 / 1e6))
                    .note(format!(
                        "from starting the new peer until its digest equals the seed's; ready (writes accepted) after \
                         {:.0} ms; {errors} connections closed for protocol errors, {failed} failed AE sessions",
                        ready.as_secs_f64() * 1e3
                    )),
            );
        }
        anyhow::Ok(())
    }
    .await;
    a.shutdown().await;
    res
}

/// Redis's `used_memory` per key for `n` keys like ours, loaded pipelined.
async fn redis_memory(addr: SocketAddr, n: usize) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(addr)?;
        c.cmd(&[b"FLUSHALL"])?;
        let used0: f64 = c.info_field("memory", "used_memory")?.trim().parse()?;
        let mut i = 0;
        while i < n {
            let end = (i + 1000).min(n);
            for j in i..end {
                let (k, v) = (key("key", j), value(j));
                c.encode(&[b"SET", &k, &v]);
            }
            c.flush()?;
            for _ in i..end {
                if let Reply::Error(e) = c.read()? {
                    bail!("SET: {e}");
                }
            }
            i = end;
        }
        let used1: f64 = c.info_field("memory", "used_memory")?.trim().parse()?;
        c.cmd(&[b"FLUSHALL"])?;
        Ok((used1 - used0) / n as f64)
    })
    .await?
}

/// Row 8: the hit ratio of a cache-aside application under a memory bound:
/// a Zipf-distributed trace (s = 0.99) of GETs, each miss followed by a SET
/// of the key, replayed against meshcache and redis-server at the same
/// `maxmemory` with each LRU and LFU policy. The bound is what redis-server
/// uses for a tenth of the keys. The trace is replayed in pipelined batches
/// of `HIT_BATCH` GETs followed by the SETs of their distinct misses, the
/// same way against both.
async fn row_hit_ratio(args: &Args, z: &Sizes, ca: &EphemeralCa, rep: &mut Report) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let (keys, requests) = (z.zipf_keys, z.zipf_requests);
    let zipf = rand_distr::Zipf::new(keys as f64, 0.99).map_err(|e| anyhow!("zipf: {e}"))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(8);
    let trace: Arc<Vec<u32>> = Arc::new((0..requests).map(|_| rng.sample(zipf) as u32 - 1).collect());
    let bound = {
        let redis = args.redis;
        tokio::task::spawn_blocking(move || redis_bytes_for(redis, keys / 10)).await??
    };
    let policies = ["allkeys-lru", "allkeys-lfu"];
    let mut redis_ratios = Vec::new();
    for policy in policies {
        let (redis, t) = (args.redis, trace.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<(f64, i64)> {
            let mut c = Client::connect(redis)?;
            c.cmd(&[b"FLUSHALL"])?;
            c.cmd(&[b"CONFIG", b"SET", b"maxmemory", bound.to_string().as_bytes()])?;
            c.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", policy.as_bytes()])?;
            let ratio = replay_cache_aside(&mut c, &t);
            let held = match c.cmd(&[b"DBSIZE"]) {
                Ok(Reply::Int(n)) => n,
                _ => -1,
            };
            // Leave the shared baseline server as the other rows expect it.
            c.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"0"])?;
            c.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"])?;
            c.cmd(&[b"FLUSHALL"])?;
            Ok((ratio?, held))
        })
        .await??;
        redis_ratios.push(r);
    }
    let mut mesh_ratios = Vec::new();
    for policy in policies {
        let mut config = bench_config("hit");
        config.max_bytes = Some(bound);
        config.eviction_policy = policy.parse().map_err(|e| anyhow!("{e}"))?;
        let peer = start_peer_with(ca, config, &[]).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.resp_base))
            .await
            .with_context(|| format!("binding the RESP port 127.0.0.1:{}", args.resp_base))?;
        let stop = tokio_util_stop::Stop::new();
        let server = tokio::spawn(serve(peer.clone(), listener, RespConfig::default(), stop.clone().wait()));
        let (port, t) = (args.resp_base, trace.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<(f64, i64)> {
            let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
            let ratio = replay_cache_aside(&mut c, &t)?;
            let held = match c.cmd(&[b"DBSIZE"])? {
                Reply::Int(n) => n,
                _ => -1,
            };
            Ok((ratio, held))
        })
        .await;
        stop.fire();
        let _ = server.await;
        peer.shutdown().await;
        mesh_ratios.push(r??);
    }
    let best = |v: &[(f64, i64)]| v.iter().map(|r| r.0).fold(0.0, f64::max);
    let detail = |v: &[(f64, i64)]| {
        policies
            .iter()
            .zip(v)
            .map(|(p, (ratio, held))| format!("{p} {:.2}% ({held} keys held)", ratio * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rep.push(
        Row::new(8, "hit ratio, Zipf 0.99 cache-aside, best policy", "%", best(&mesh_ratios) * 100.0)
            .redis(best(&redis_ratios) * 100.0)
            .ratio_at_least(1.0)
            .note(format!(
                "{requests} GETs over {keys} keys of {VALUE_LEN} B, maxmemory {bound} B (redis-server's used_memory \
                 for {} keys); meshcache: {}; redis: {}",
                keys / 10,
                detail(&mesh_ratios),
                detail(&redis_ratios)
            )),
    );
    Ok(())
}

/// GETs per pipelined batch in row 8.
const HIT_BATCH: usize = 100;

/// The key of rank `i` in row 8's trace.
fn zipf_key(i: u32) -> Vec<u8> {
    format!("zipf:{i:010}").into_bytes()
}

/// Replays `trace` as a cache-aside application would: GET, and SET on a
/// miss. Returns hits / requests.
fn replay_cache_aside(c: &mut Client, trace: &[u32]) -> Result<f64> {
    let value = vec![b'v'; VALUE_LEN];
    let mut hits = 0usize;
    let mut missed = Vec::with_capacity(HIT_BATCH);
    for batch in trace.chunks(HIT_BATCH) {
        for k in batch {
            c.encode(&[b"GET", &zipf_key(*k)]);
        }
        c.flush()?;
        missed.clear();
        for k in batch {
            match c.read()? {
                Reply::Bulk(_) => hits += 1,
                Reply::Nil => missed.push(*k),
                r => bail!("GET: {r:?}"),
            }
        }
        missed.sort_unstable();
        missed.dedup();
        for k in &missed {
            c.encode(&[b"SET", &zipf_key(*k), &value]);
        }
        c.flush()?;
        for _ in &missed {
            if let Reply::Error(e) = c.read()? {
                bail!("SET: {e}");
            }
        }
    }
    Ok(hits as f64 / trace.len().max(1) as f64)
}

/// redis-server's `used_memory` with `n` of row 8's keys loaded: the bound
/// that holds them.
fn redis_bytes_for(addr: SocketAddr, n: usize) -> Result<usize> {
    let mut c = Client::connect(addr)?;
    c.cmd(&[b"FLUSHALL"])?;
    let value = vec![b'v'; VALUE_LEN];
    for chunk in (0..n as u32).collect::<Vec<_>>().chunks(1000) {
        for k in chunk {
            c.encode(&[b"SET", &zipf_key(*k), &value]);
        }
        c.flush()?;
        for _ in chunk {
            if let Reply::Error(e) = c.read()? {
                bail!("SET: {e}");
            }
        }
    }
    let used: usize = c.info_field("memory", "used_memory")?.trim().parse()?;
    c.cmd(&[b"FLUSHALL"])?;
    Ok(used)
}

/// 7. Local get and put through the embedded API.
async fn row_local(z: &Sizes, ca: &EphemeralCa, rep: &mut Report) -> Result<()> {
    let p = start_peer(ca, "local", &[]).await?;
    let keys: Arc<Vec<Bytes>> = Arc::new((0..z.local_keys).map(|i| key("key", i)).collect());
    for (i, k) in keys.iter().enumerate() {
        p.insert(k.clone(), value(i))?;
    }
    let secs = z.local_secs;
    let pp = p.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<(String, f64, usize)>> {
        let mut out = Vec::new();
        for op in ["get", "get_with", "put"] {
            for threads in [1usize, 2] {
                let mut runs = Vec::new();
                for _ in 0..3 {
                    let total: u64 = std::thread::scope(|s| {
                        let hs: Vec<_> = (0..threads)
                            .map(|t| {
                                let (p, keys) = (&pp, &keys);
                                s.spawn(move || {
                                    let v = Bytes::from(vec![b'x'; VALUE_LEN]);
                                    let mut buf = Vec::with_capacity(VALUE_LEN);
                                    let start = meshcache::env::stopwatch().into_std();
                                    let mut ops = 0u64;
                                    let mut i = t * 7919;
                                    while start.elapsed().as_secs_f64() < secs {
                                        for _ in 0..1024 {
                                            let k = &keys[i % keys.len()];
                                            match op {
                                                "get" => {
                                                    std::hint::black_box(p.get(k));
                                                }
                                                "get_with" => {
                                                    // Copied into a buffer that is kept, as RESP
                                                    // copies it into its reply buffer: every byte
                                                    // of the value is read.
                                                    buf.clear();
                                                    p.get_with(k, |v| buf.extend_from_slice(v));
                                                    std::hint::black_box(&buf);
                                                }
                                                _ => {
                                                    let _ = std::hint::black_box(p.insert(k.clone(), v.clone()));
                                                }
                                            }
                                            i += 1;
                                        }
                                        ops += 1024;
                                    }
                                    ops as f64 / start.elapsed().as_secs_f64()
                                })
                            })
                            .collect();
                        hs.into_iter().map(|h| h.join().unwrap_or(0.0) as u64).sum()
                    });
                    runs.push(total as f64);
                }
                out.push((op.to_string(), median(&runs), threads));
            }
        }
        Ok(out)
    })
    .await?;
    p.shutdown().await;
    for (op, rate, threads) in res? {
        let per = rate / threads as f64;
        let how = match op.as_str() {
            "get" => "Mesh::get: the value copied out; ",
            "get_with" => {
                "Mesh::get_with: the value lent to a closure that copies it into a kept buffer, as RESP GET does; "
            }
            _ => "",
        };
        let mut row = Row::new(7, format!("local {op}, {threads} thread(s), per thread"), "ops/s", per).note(format!(
            "{how}total {} ops/s; {} keys of {VALUE_LEN} B; median of 3",
            fmt_num(rate),
            z.local_keys
        ));
        if op.starts_with("get") {
            row = row.at_least(10_000_000.0, ">= 10M/s per thread");
        }
        rep.push(row);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

/// `latest` for a full run (committed), `quick` for a --quick run (ignored
/// by git), so that a harness check never overwrites the real figures.
fn stem(args: &Args) -> &'static str {
    if args.quick {
        "quick"
    } else {
        "latest"
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    (cpus, model)
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_json(args: &Args, rep: &Report, secs: f64) -> Result<()> {
    let (cpus, model) = machine();
    let mut j = String::from("{\n");
    let _ = writeln!(j, "  \"mode\": {},", json_str(if args.quick { "quick" } else { "full" }));
    let _ = writeln!(j, "  \"command\": {},", json_str(&args.command));
    let _ = writeln!(j, "  \"unix_time\": {},", meshcache::env::system_ms() / 1000);
    let _ = writeln!(j, "  \"git\": {},", json_str(&command_output("git", &["rev-parse", "--short", "HEAD"])));
    let _ = writeln!(j, "  \"cpus\": {cpus},");
    let _ = writeln!(j, "  \"cpu_model\": {},", json_str(&model));
    let _ = writeln!(j, "  \"redis_version\": {},", json_str(&command_output("redis-server", &["--version"])));
    let _ = writeln!(j, "  \"runtime_s\": {secs:.1},");
    let _ = writeln!(j, "  \"loadavg_start\": {},", json_str(&rep.load_start));
    let _ = writeln!(j, "  \"loadavg_end\": {},", json_str(&loadavg()));
    let errs: Vec<String> = rep.errors.iter().map(|e| json_str(e)).collect();
    let _ = writeln!(j, "  \"errors\": [{}],", errs.join(", "));
    j.push_str("  \"rows\": [\n");
    for (i, r) in rep.rows.iter().enumerate() {
        let _ = write!(
            j,
            "    {{\"group\": {}, \"name\": {}, \"unit\": {}, \"meshcache\": {}, \"redis\": {}, \"ratio\": {}, \
             \"target\": {}, \"score\": {}, \"verdict\": {}, \"note\": {}}}",
            r.group,
            json_str(&r.name),
            json_str(&r.unit),
            json_num(Some(r.mesh)),
            json_num(r.redis),
            json_num(r.ratio),
            json_str(&r.target),
            json_num(r.score),
            json_str(r.verdict()),
            json_str(&r.note)
        );
        j.push_str(if i + 1 < rep.rows.len() { ",\n" } else { "\n" });
    }
    j.push_str("  ]\n}\n");
    std::fs::write(args.out.join(format!("{}.json", stem(args))), j)?;
    Ok(())
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A bar per row with a target: measured as a fraction of the target
/// (log scale, 1.0 = target met).
fn write_svg(args: &Args, rep: &Report) -> Result<()> {
    let rows: Vec<&Row> = rep.rows.iter().filter(|r| r.score.is_some()).collect();
    let (w, label_w, bar_w, h_row, top) = (960.0, 360.0, 520.0, 22.0, 60.0);
    let h = top + h_row * rows.len() as f64 + 50.0;
    // log10 scale from 0.01x to 10x of target.
    let x = |s: f64| label_w + bar_w * ((s.clamp(0.01, 10.0).log10() + 2.0) / 3.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let (cpus, model) = machine();
    let _ = writeln!(
        s,
        r##"<text x="10" y="20" font-size="15" font-weight="bold">meshcache vs docs/design.md's targets ({} run)</text>"##,
        if args.quick { "quick" } else { "full" }
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">measured / target, log scale; right of the line meets the target. {cpus} CPUs, {}</text>"##,
        xml(&model)
    );
    for tick in [0.01, 0.1, 1.0, 10.0] {
        let tx = x(tick);
        let color = if tick == 1.0 { "#000" } else { "#ccc" };
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="{color}"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{tick}x</text>"##,
            top - 8.0,
            h - 40.0,
            h - 25.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + h_row * i as f64;
        let sc = r.score.unwrap_or(0.0);
        let color = if sc >= 1.0 { "#3a8f3a" } else { "#c0392b" };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">[{}] {}</text>"##,
            label_w - 8.0,
            y + 14.0,
            r.group,
            xml(&r.name)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"##,
            y + 3.0,
            (x(sc) - label_w).max(1.0),
            h_row - 6.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">{:.2}x ({} {})</text>"##,
            x(sc).min(label_w + bar_w) + 4.0,
            y + 14.0,
            sc,
            xml(&fmt_num(r.mesh)),
            xml(&r.unit)
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(args.out.join(format!("{}.svg", stem(args))), s)?;
    Ok(())
}

fn print_table(rep: &Report) {
    println!();
    println!(
        "| # | measurement | meshcache | redis | ratio | target | verdict | note |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &rep.rows {
        println!(
            "| {} | {} | {} {} | {} | {} | {} | {} | {} |",
            r.group,
            r.name,
            fmt_num(r.mesh),
            r.unit,
            r.redis.map(fmt_num).unwrap_or_default(),
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.target,
            r.verdict(),
            r.note
        );
    }
    for e in &rep.errors {
        println!("\n{e}");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if let (Some(name), Some(certs)) = (&args.child_peer, &args.child_certs) {
        return child_main(name, certs, args.child_seed).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.command.is_empty() {
        args.command = std::env::args().collect::<Vec<_>>().join(" ");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let z = Sizes::new(args.quick);
    let rows: Vec<u8> = if args.only.is_empty() { (1..=11).collect() } else { args.only.clone() };
    let (cpus, model) = machine();
    eprintln!(
        "meshbench ({} mode{}): {cpus} CPUs, {model}",
        if args.quick { "quick" } else { "full" },
        if cfg!(debug_assertions) { ", DEBUG build" } else { "" }
    );
    let ca = EphemeralCa::new().map_err(|e| anyhow!("in-memory CA: {e}"))?;
    let mut rep = Report { rows: Vec::new(), errors: Vec::new(), load_start: loadavg() };
    let start = meshcache::env::stopwatch().into_std();
    // Memory first, while this process is fresh, then bootstrap from the
    // same peer.
    if rows.contains(&5) || rows.contains(&6) {
        eprintln!("rows 6 and 5: memory per entry, bootstrap ({} entries)", z.bootstrap);
        if let Err(e) = row_memory_bootstrap(&args, &z, &ca, &mut rep, &rows).await {
            rep.errors.push(format!("rows 5/6 failed: {e:#}"));
        }
    }
    type Step = for<'a> fn(
        &'a Args,
        &'a Sizes,
        &'a EphemeralCa,
        &'a mut Report,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;
    let steps: [(u8, &str, Step); 9] = [
        (7, "local get and put", |_, z, ca, r| Box::pin(row_local(z, ca, r))),
        (3, "replicated updates", |_, z, ca, r| Box::pin(row_replicated(z, ca, r))),
        (4, "convergence after a heal", |_, z, ca, r| Box::pin(row_heal(z, ca, r))),
        (1, "RESP throughput", |a, z, _, r| Box::pin(row_throughput(a, z, r))),
        (2, "read-after-write lag", |a, z, _, r| Box::pin(row_lag(a, z, r))),
        (8, "hit ratio under a memory bound", |a, z, ca, r| Box::pin(row_hit_ratio(a, z, ca, r))),
        (9, "processes under a memory bound", |a, z, _, r| Box::pin(bound::row_bound(&a.meshcache, z, r))),
        (10, "cold keys through get_or_load", |_, z, _, r| Box::pin(row_fill(z, r))),
        (11, "GET with client tracking", |a, z, ca, r| Box::pin(row_tracking(a, z, ca, r))),
    ];
    for (n, what, f) in steps {
        if !rows.contains(&n) {
            continue;
        }
        eprintln!("row {n}: {what}");
        if let Err(e) = f(&args, &z, &ca, &mut rep).await {
            eprintln!("  row {n} FAILED: {e:#}");
            rep.errors.push(format!("row {n} ({what}) failed: {e:#}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    print_table(&rep);
    write_json(&args, &rep, secs)?;
    write_svg(&args, &rep)?;
    println!("\nload average at start {}, at end {}", rep.load_start, loadavg());
    println!("\nwrote {0}/{1}.json and {0}/{1}.svg ({secs:.0} s)", args.out.display(), stem(&args));
    if rep.errors.iter().any(|e| e.contains("failed")) {
        bail!("{} row group(s) failed", rep.errors.iter().filter(|e| e.contains("failed")).count());
    }
    Ok(())
}
