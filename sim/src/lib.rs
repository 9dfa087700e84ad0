//! Whole meshes in turmoil's simulated network and virtual time: a quinn
//! socket over `turmoil::net::UdpSocket`, and a harness that starts one
//! [`Mesh`] per simulated host and lets a driver cut, delay, heal, crash and
//! restart them. `tests/turmoil_sim.rs` holds the schedules.
//!
//! A package of its own, not a module of meshcache's tests, because the
//! schedules run optimized. As one of meshcache's tests, their release
//! build took in every test-only dependency (redis, criterion, proptest,
//! ...), which widened the features of crates the command uses too, so
//! that the command's release build could reuse few of them. Here the
//! schedules build only what they use, without the command's `server`
//! feature; what still differs from the command's build is tokio (turmoil
//! needs its `test-util`) and what depends on it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use meshcache::env::Env;
use meshcache::store::Bug;
use meshcache::transport::certs::EphemeralCa;
use meshcache::{Mesh, MeshConfig};
use parking_lot::Mutex;
use quinn::udp::{RecvMeta, Transmit};

mod seeded_tls;

/// The port every peer listens on (each host has its own address).
pub const PORT: u16 = 7000;
/// turmoil's step: every host runs this much virtual time per step. A
/// simulation costs about the same per step whatever happens in it, so the
/// step sets what the schedules' hours of virtual time cost (the 200
/// random schedules: 297 s at 5 ms, 184 s at 10 ms on a 2-core machine).
/// 10 ms is still well below every timer of the protocol (a dial's first
/// resent Initial at 75 ms, the 50 ms connect settle, 500 ms keep-alives);
/// the network's latency (1-10 ms at random, below) is unchanged.
pub const TICK: Duration = Duration::from_millis(10);
/// The virtual Unix time (ms) at which every simulation starts: peers'
/// clocks read this plus the simulation's elapsed time, so that a seed
/// fixes every stamp.
pub const ORIGIN_MS: u64 = 1_800_000_000_000;

/// The simulation's wall clock, as every host reads it.
pub fn virtual_now_ms() -> u64 {
    ORIGIN_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// How peers' wall clocks run against the simulation's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clocks {
    /// Each incarnation's clock is off by up to this much, either way
    /// (drawn per incarnation: a restarted peer may come back on a host
    /// whose clock lags). Keep it under half of `max_offset`. A restart
    /// waits twice this long after its crash: incarnations are ordered by
    /// their start on the wall clock, and a restart within the skew could
    /// start "before" the incarnation it replaces, which then supersedes
    /// it (a real deployment restarting a name on a host whose clock lags
    /// by more than the restart takes has that problem too).
    pub skew_ms: u64,
    /// Wall-clock milliseconds advance once per this many virtual ones (1:
    /// in step). A slow wall clock crowds many writes into one millisecond,
    /// which exercises the HLC's logical counter and stamp ties.
    pub slowdown: u64,
    /// Every restarted incarnation's clock runs this much further behind
    /// (a peer coming back on a host whose clock lags).
    pub restart_lag_ms: u64,
}

impl Clocks {
    /// The clock of one incarnation, whose seed draws its skew.
    fn clock(self, incarnation_seed: u64, restarted: bool) -> impl Fn() -> u64 + Send + Sync + 'static {
        let span = 2 * self.skew_ms + 1;
        let lag = if restarted { self.restart_lag_ms as i64 } else { 0 };
        let skew = (incarnation_seed % span) as i64 - self.skew_ms as i64 - lag;
        let slowdown = self.slowdown.max(1);
        move || {
            let v = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
            (ORIGIN_MS + v / slowdown).saturating_add_signed(skew)
        }
    }
}

/// A running hash of what a simulated run did, in order: every datagram
/// delivered (when, from, to, how long) and every client operation the
/// driver records. Two runs of one seed must end with the same value.
#[derive(Default)]
pub struct Trace {
    hasher: xxhash_rust::xxh3::Xxh3Default,
    pub datagrams: u64,
    pub events: u64,
    /// Every entry, when the layout asks for them (to show where two runs
    /// part ways).
    pub lines: Option<Vec<String>>,
}

impl Trace {
    pub fn datagram(&mut self, at_ms: u64, from: SocketAddr, to: SocketAddr, len: usize) {
        self.datagrams += 1;
        self.add(format!("d {at_ms} {from} {to} {len}"));
    }

    pub fn event(&mut self, what: &str) {
        self.events += 1;
        self.add(what.to_owned());
    }

    fn add(&mut self, line: String) {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b";");
        if let Some(l) = &mut self.lines {
            l.push(line);
        }
    }

    pub fn digest(&self) -> u64 {
        self.hasher.digest()
    }
}

pub type SharedTrace = Arc<Mutex<Trace>>;

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// quinn's socket over a turmoil UDP socket. Must be used (sent on,
/// received on, dropped) from inside the host that bound it.
pub struct TurmoilUdp {
    sock: Arc<turmoil::net::UdpSocket>,
    trace: Option<SharedTrace>,
    /// The pending wait for a datagram, while the receive queue is empty.
    readable: std::sync::Mutex<Option<Readable>>,
}

impl TurmoilUdp {
    pub fn new(sock: turmoil::net::UdpSocket) -> Self {
        TurmoilUdp { sock: Arc::new(sock), trace: None, readable: std::sync::Mutex::new(None) }
    }

    /// Records every datagram this socket receives in `trace`.
    pub fn traced(mut self, trace: SharedTrace) -> Self {
        self.trace = Some(trace);
        self
    }
}

impl fmt::Debug for TurmoilUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdp").field("sock", &self.sock).finish()
    }
}

/// turmoil's UDP has no back-pressure: always writable.
#[derive(Debug)]
struct Writable;

impl quinn::UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl quinn::AsyncUdpSocket for TurmoilUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(Writable)
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        for d in t.contents.chunks(seg) {
            // A datagram the network refuses is a datagram lost.
            if let Err(e) = self.sock.try_send_to(d, t.destination) {
                tracing::debug!(error = %e, dst = %t.destination, "turmoil send failed");
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut pending = self.readable.lock().unwrap();
        loop {
            if let Some(f) = pending.as_mut() {
                let r = ready!(f.as_mut().poll(cx));
                *pending = None;
                r?;
            }
            let mut n = 0;
            while n < bufs.len().min(meta.len()) {
                match self.sock.try_recv_from(&mut bufs[n]) {
                    Ok((len, addr)) => {
                        if let Some(t) = &self.trace {
                            let to = self.sock.local_addr().unwrap_or(addr);
                            t.lock().datagram(virtual_now_ms(), addr, to, len);
                        }
                        meta[n] = RecvMeta { addr, len, stride: len, ecn: None, dst_ip: None };
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            let sock = self.sock.clone();
            *pending = Some(Box::pin(async move { sock.readable().await }));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

/// What the driver asks the loop outside the simulation to do.
enum Cmd {
    Crash(String),
    Restart(String),
}

/// How a simulated mesh is laid out.
#[derive(Clone, Debug)]
pub struct Layout {
    pub seed: u64,
    pub peers: usize,
    /// `max_tombstones` per peer (index = peer).
    pub budgets: Vec<usize>,
    /// `max_bytes` per peer: a bounded peer evicts (index = peer).
    pub max_bytes: Vec<Option<usize>>,
    /// Virtual time the simulation may run at most.
    pub duration: Duration,
    /// Probability that a link starts dropping datagrams (turmoil's
    /// `fail_rate`; each broken link repairs with probability 1/2 per
    /// datagram, so losses come in short bursts). 0 for none.
    pub loss: f64,
    /// Keep the trace's lines, not only its hash.
    pub keep_trace: bool,
    /// Bugs planted in peers (by index), in every incarnation.
    pub bugs: Vec<(usize, Bug)>,
    /// How the peers' wall clocks run.
    pub clocks: Clocks,
}

/// The driver's view: the live peers' handles, and crash/restart requests.
#[derive(Clone)]
pub struct Net {
    meshes: Arc<Mutex<HashMap<String, Mesh>>>,
    cmds: Arc<Mutex<Vec<Cmd>>>,
    /// Peer names, in order: `p0`, `p1`, ...
    pub names: Vec<String>,
    /// Compactions counted on incarnations that were crashed.
    pub lost_compactions: Arc<Mutex<u64>>,
    /// What the run did, for the replay check.
    pub trace: SharedTrace,
    /// The shortest time from a crash to the restart of that peer, and
    /// when each peer last crashed.
    restart_gap: Duration,
    crashed_at: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
}

impl Net {
    /// The live peer called `name`, if it is up.
    pub fn mesh(&self, name: &str) -> Option<Mesh> {
        self.meshes.lock().get(name).cloned()
    }

    /// Every live peer, in name order.
    pub fn live(&self) -> Vec<Mesh> {
        let m = self.meshes.lock();
        self.names.iter().filter_map(|n| m.get(n).cloned()).collect()
    }

    /// The address of host `name`.
    pub fn ip(&self, name: &str) -> std::net::IpAddr {
        turmoil::lookup(name.to_owned())
    }

    /// Crashes `name` (no goodbye): its tasks and socket are dropped.
    pub async fn crash(&self, name: &str) {
        if let Some(m) = self.meshes.lock().get(name) {
            *self.lost_compactions.lock() += m.stats().store.compactions;
        }
        self.cmds.lock().push(Cmd::Crash(name.to_owned()));
        while self.meshes.lock().contains_key(name) {
            tokio::time::sleep(TICK).await;
        }
        self.crashed_at.lock().insert(name.to_owned(), tokio::time::Instant::now());
    }

    /// Restarts `name` as a new, empty incarnation; returns once it is up.
    pub async fn restart(&self, name: &str) {
        let crashed = self.crashed_at.lock().get(name).copied();
        if let Some(at) = crashed {
            tokio::time::sleep_until(at + self.restart_gap).await;
        }
        self.cmds.lock().push(Cmd::Restart(name.to_owned()));
        while !self.meshes.lock().contains_key(name) {
            tokio::time::sleep(TICK).await;
        }
    }
}

/// The seed of the `start`-th incarnation of peer `index` in a schedule.
fn incarnation_seed(schedule: u64, index: usize, start: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{schedule}/{index}/{start}").as_bytes())
}

/// Runs `driver` against a mesh laid out as `layout`, in virtual time.
/// Returns the driver's error or turmoil's (a host failing, or the
/// simulation running past `layout.duration`).
pub fn run<F, Fut>(layout: &Layout, driver: F) -> Result<(), String>
where
    F: FnOnce(Net) -> Fut,
    Fut: Future<Output = turmoil::Result> + 'static,
{
    let mut b = turmoil::Builder::new();
    b.rng_seed(layout.seed)
        .simulation_duration(layout.duration)
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .udp_capacity(8192);
    if layout.loss > 0.0 {
        b.fail_rate(layout.loss).repair_rate(0.5);
    }
    let mut sim = b.build();
    let names: Vec<String> = (0..layout.peers).map(|i| format!("p{i}")).collect();
    let net = Net {
        meshes: Arc::new(Mutex::new(HashMap::new())),
        cmds: Arc::new(Mutex::new(Vec::new())),
        names: names.clone(),
        lost_compactions: Arc::new(Mutex::new(0)),
        // Twice the skew on the wall clock, which may run slow.
        restart_gap: Duration::from_millis((2 * layout.clocks.skew_ms + 1) * layout.clocks.slowdown.max(1)),
        crashed_at: Arc::new(Mutex::new(HashMap::new())),
        trace: Arc::new(Mutex::new(Trace { lines: layout.keep_trace.then(Vec::new), ..Trace::default() })),
    };
    let ca = Rc::new(EphemeralCa::seeded(layout.seed).map_err(|e| e.to_string())?);
    for (i, name) in names.iter().enumerate() {
        let (ca, meshes, names, name) = (ca.clone(), net.meshes.clone(), names.clone(), name.clone());
        let trace = net.trace.clone();
        let schedule = layout.seed;
        let clocks = layout.clocks;
        let bugs: Vec<Bug> = layout.bugs.iter().filter(|(p, _)| *p == i).map(|(_, b)| *b).collect();
        let budget = layout.budgets[i];
        let max_bytes = layout.max_bytes[i];
        let starts = Rc::new(std::cell::Cell::new(0u32));
        sim.host(name.clone(), move || {
            let (ca, meshes, names, name, starts, trace, bugs) =
                (ca.clone(), meshes.clone(), names.clone(), name.clone(), starts.clone(), trace.clone(), bugs.clone());
            async move {
                starts.set(starts.get() + 1);
                // One seed per incarnation, from the schedule's seed: node
                // ids, jitter and peer choices replay with the schedule.
                let seed = incarnation_seed(schedule, i, starts.get());
                let env = Env::new(clocks.clock(seed, starts.get() > 1), seed);
                let identity = ca.issue(&name)?;
                let sock = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
                let me = SocketAddr::new(turmoil::lookup(name.clone()), PORT);
                // p0 founds the mesh; every later start (p0's restarts too)
                // joins through whichever other peer answers.
                let seeds: Vec<SocketAddr> = if name == "p0" && starts.get() == 1 {
                    Vec::new()
                } else {
                    names
                        .iter()
                        .filter(|n| **n != name)
                        .map(|n| SocketAddr::new(turmoil::lookup(n.clone()), PORT))
                        .collect()
                };
                let config = MeshConfig {
                    max_tombstones: budget,
                    max_bytes,
                    anti_entropy_interval: Duration::from_secs(1),
                    ..MeshConfig::for_test(&name)
                };
                let mesh = Mesh::builder()
                    .config(config)
                    .socket(Arc::new(TurmoilUdp::new(sock).traced(trace)))
                    .env(env)
                    .crypto_provider(seeded_tls::seeded_provider(seed ^ 0x715))
                    .advertise(me)
                    .seeds(seeds)
                    .tls(identity)
                    .start()
                    .await?;
                for bug in bugs {
                    mesh.replica().store().plant(bug, true);
                }
                meshes.lock().insert(name.clone(), mesh.clone());
                mesh.stopped().await;
                Err(format!("{name} stopped on its own").into())
            }
        });
    }
    sim.client("driver", driver(net.clone()));
    loop {
        let done = sim.step().map_err(|e| e.to_string())?;
        let cmds: Vec<Cmd> = std::mem::take(&mut *net.cmds.lock());
        for c in cmds {
            match c {
                Cmd::Crash(name) => {
                    // Drop the driver's handle first, so that the peer's
                    // socket is dropped inside its own host by the crash.
                    net.meshes.lock().remove(&name);
                    sim.crash(name);
                }
                Cmd::Restart(name) => sim.bounce(name),
            }
        }
        if done {
            return Ok(());
        }
    }
}
