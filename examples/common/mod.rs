//! What the partition examples share: their command line, starting a mesh
//! over fault-injecting sockets, sampling divergence, and the exit status.
//! Each example uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshcache::check::History;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::wait::Wait;
use meshcache::{Mesh, MeshConfig};

/// Generous: convergence is checked against it, never timed by it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The command line every partition example takes.
pub struct Opts {
    /// Small sizes (`--quick`, or `MESHCACHE_QUICK=1`).
    pub quick: bool,
    /// Where to write divergent keys over time (`--csv PATH`).
    pub csv: Option<String>,
    /// The seed of the fault RNG and of the workload (`--seed N`).
    pub seed: u64,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts { quick: std::env::var("MESHCACHE_QUICK").is_ok_and(|v| v == "1"), csv: None, seed: 42 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--csv" => o.csv = Some(args.next().ok_or("--csv needs a path")?),
            "--seed" => o.seed = args.next().and_then(|s| s.parse().ok()).ok_or("--seed needs a number")?,
            other => return Err(format!("unknown argument {other:?} (expected --quick, --csv PATH, --seed N)")),
        }
    }
    Ok(o)
}

/// Parses the command line, runs the example, prints `PASS` or `FAIL` and
/// turns the outcome into the exit status (2 for a bad command line).
pub async fn main<F, Fut>(name: &str, run: F) -> ExitCode
where
    F: FnOnce(Opts) -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(o).await {
        Ok(true) => {
            println!("PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts one peer per config, each on its own fault-injecting loopback
/// socket, all seeded with the first; returns once every peer is booted and
/// connected to every other.
pub async fn start_peers(ca: &EphemeralCa, faults: &Faults, configs: Vec<MeshConfig>) -> Result<Vec<Mesh>, String> {
    let n = configs.len();
    let mut peers: Vec<Mesh> = Vec::new();
    for config in configs {
        let socket = faults.socket(([127, 0, 0, 1], 0).into()).map_err(|e| e.to_string())?;
        let id = ca.issue(&config.name).map_err(|e| e.to_string())?;
        let m = Mesh::builder()
            .config(config)
            .seeds(peers.first().map(|p| p.local_addr()))
            .socket(socket)
            .tls(id)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        peers.push(m);
    }
    Wait::new(DEADLINE)
        .until("the mesh forms", || peers.iter().all(|p| p.is_ready() && p.stats().connected == n - 1))
        .await
        .map_err(|e| e.to_string())?;
    Ok(peers)
}

/// Waits for the peers to converge (equal digests, I1) and then for their
/// digests to settle, each within [`DEADLINE`]. Returns the time to
/// converge, or what did not happen.
pub async fn converge(h: &History, peers: &[Mesh]) -> Result<Duration, String> {
    let took = h.wait_converged(peers, DEADLINE).await.ok_or_else(|| format!("NOT converged within {DEADLINE:?}"))?;
    if !History::wait_settled(peers, DEADLINE).await {
        return Err(format!("digests did not settle within {DEADLINE:?} after converging"));
    }
    Ok(took)
}

/// What a heal came to.
pub struct Healed {
    /// Every key written through the checker so far.
    pub keys: Vec<Bytes>,
    /// How many of them diverged when the heal began.
    pub at_heal: usize,
    /// The time to converge, or what did not happen ([`converge`]).
    pub took: Result<Duration, String>,
    /// Divergent keys over time, in ms since the heal (when sampled).
    pub samples: Vec<(u64, usize)>,
}

/// Heals every fault and waits for the peers to converge and settle
/// ([`converge`]); with `sampled`, samples the divergent keys meanwhile.
pub async fn heal(h: &History, peers: &[Mesh], faults: &Faults, sampled: bool) -> Result<Healed, String> {
    let keys: Vec<Bytes> = h.ops().into_iter().map(|op| op.key).collect::<BTreeSet<_>>().into_iter().collect();
    let at_heal = History::divergent(peers, &keys);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sampled.then(|| sample(peers.to_vec(), keys.clone(), Instant::now(), stop.clone()));
    faults.heal();
    let took = converge(h, peers).await;
    stop.store(true, Ordering::Relaxed);
    let samples = match sampler {
        Some(s) => s.await.map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    Ok(Healed { keys, at_heal, took, samples })
}

/// `MeshConfig::for_test` for peers `p0..pN`.
pub fn test_configs(n: usize) -> Vec<MeshConfig> {
    (0..n).map(|i| MeshConfig::for_test(&format!("p{i}"))).collect()
}

/// Samples the number of divergent keys every 25 ms until `stop`; times are
/// milliseconds since `t0`.
pub fn sample(
    peers: Vec<Mesh>,
    keys: Vec<Bytes>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, usize)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        loop {
            out.push((t0.elapsed().as_millis() as u64, History::divergent(&peers, &keys)));
            if stop.load(Ordering::Relaxed) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// Writes the CSV timeline and says where.
pub fn write_csv(path: &str, csv: &str) -> Result<(), String> {
    std::fs::write(path, csv).map_err(|e| format!("{path}: {e}"))?;
    println!("timeline written to {path}");
    Ok(())
}
