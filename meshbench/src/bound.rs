//! Row 9: `meshcache node` processes under `--max-bytes`, written far past
//! their bound by redis-benchmark (random keys, 200-byte values): their
//! resident memory against the target of 1.15 x the bound + 40 MB, and
//! their `used_memory` (jemalloc's count) against `maxmemory`, sampled
//! every 200 ms while the writes run and for a few seconds after. Once
//! alone, once replicating to two peers with the same bound.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::nodes::{start_mesh, TempDir};
use super::{Client, Reply, Report, Row, Sizes};

/// The bound under test.
const BOUND: usize = 64 << 20;
const VALUE_LEN: usize = 200;
/// How long sampling goes on after the writes, while peers catch up.
const SETTLE: Duration = Duration::from_secs(5);

/// The largest figures seen while sampling one node.
#[derive(Clone, Copy, Default)]
struct Peak {
    rss: usize,
    used: usize,
}

pub(super) async fn row_bound(bin: &Path, z: &Sizes, rep: &mut Report) -> Result<()> {
    for peers in [0, 2] {
        let dir = TempDir::new(&format!("bound-{peers}"))?;
        let r = run(bin, &dir.0, z.bound_writes, peers).await;
        let (peaks, held, rate) = r?;
        let target = 1.15 * BOUND as f64 / 1e6 + 40.0;
        let label = if peers == 0 { "alone".to_string() } else { format!("replicating to {peers} peers") };
        let others = peaks[1..].iter().map(|p| format!("{:.1} MB", p.rss as f64 / 1e6)).collect::<Vec<_>>();
        let written = peaks[0];
        rep.push(
            Row::new(9, format!("max RSS under --max-bytes 64M, {label}"), "MB", written.rss as f64 / 1e6)
                .at_most(target, &format!("<= {target:.0} MB (1.15x + 40 MB)"))
                .note(format!(
                    "{n} SETs of {VALUE_LEN} B on random keys (redis-benchmark -r 100000000 -P 16 -c 50, {rate:.0}/s), \
                     sampled every 200 ms and for {settle} s after; {held} keys held at the end{peers_note}",
                    n = z.bound_writes,
                    settle = SETTLE.as_secs(),
                    peers_note = if others.is_empty() {
                        String::new()
                    } else {
                        format!("; the peers' max RSS {}", others.join(", "))
                    }
                )),
        );
        let worst = peaks.iter().map(|p| p.used).max().unwrap_or(0);
        rep.push(
            Row::new(9, format!("max used_memory under --max-bytes 64M, {label}"), "MB", worst as f64 / 1e6)
                .at_most(BOUND as f64 / 1e6, &format!("<= maxmemory ({:.1} MB)", BOUND as f64 / 1e6))
                .note(format!(
                    "jemalloc's allocated bytes as INFO reports them, sampled as above; per process (the written \
                     one first): {}",
                    peaks.iter().map(|p| format!("{:.1} MB", p.used as f64 / 1e6)).collect::<Vec<_>>().join(", ")
                )),
        );
    }
    Ok(())
}

/// Starts the nodes, writes, samples. Returns each node's peaks (the
/// written one first), the keys it holds at the end, and the write rate.
async fn run(bin: &Path, dir: &Path, writes: u64, peers: usize) -> Result<(Vec<Peak>, i64, f64)> {
    let names: Vec<String> = (0..=peers).map(|i| format!("b{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut nodes = start_mesh(bin, dir, &names, &["--max-bytes", &BOUND.to_string()]).await?;
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id().unwrap_or(0)).collect();
    let resps: Vec<SocketAddr> = nodes.iter().map(|n| n.resp).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let (pids, resps) = (pids.clone(), resps.clone());
        tokio::task::spawn_blocking(move || sample(&pids, &resps, &stop))
    };
    let t = std::time::Instant::now();
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &resps[0].port().to_string(), "-t", "set", "-c", "50", "-P", "16"])
        .args(["-d", &VALUE_LEN.to_string(), "-r", "100000000", "-n", &writes.to_string(), "-q"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running redis-benchmark")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("Error") {
        bail!(
            "redis-benchmark failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    tokio::time::sleep(SETTLE).await;
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.await??;
    let held = {
        let a = resps[0];
        tokio::task::spawn_blocking(move || -> Result<i64> {
            match Client::connect(a)?.cmd(&[b"DBSIZE"])? {
                Reply::Int(n) => Ok(n),
                r => bail!("DBSIZE: {r:?}"),
            }
        })
        .await??
    };
    for n in &mut nodes {
        let _ = n.child.kill().await;
    }
    Ok((peaks, held, writes as f64 / secs))
}

/// Samples every node's RSS and `used_memory` every 200 ms until `stop`.
fn sample(pids: &[u32], resps: &[SocketAddr], stop: &AtomicBool) -> Result<Vec<Peak>> {
    let mut peaks = vec![Peak::default(); pids.len()];
    let mut clients = resps.iter().map(|a| Client::connect(*a)).collect::<Result<Vec<_>>>()?;
    loop {
        let last = stop.load(Ordering::Relaxed);
        for ((pid, c), p) in pids.iter().zip(&mut clients).zip(&mut peaks) {
            p.rss = p.rss.max(rss_of(*pid).ok_or_else(|| anyhow!("process {pid} is gone"))?);
            p.used = p.used.max(c.info_field("memory", "used_memory")?.trim().parse()?);
        }
        if last {
            return Ok(peaks);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_of(pid: u32) -> Option<usize> {
    super::rss_at(&format!("/proc/{pid}/status"))
}
