//! `--max-bytes` bounds the whole `meshcache node` process: real processes
//! on loopback, written to far past their bound through the Redis
//! protocol, alone and with a peer. What is checked is memory, never time:
//! `used_memory` (jemalloc's count) at or below `maxmemory`, and the
//! resident set within 1.15 x the bound + 40 MB, the target of the bound's
//! benchmark row (row 9).

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::process::{node_addrs, Addrs, Guard, TempDir, BIN};

/// The bound: the smallest a peer process accepts.
const BOUND: usize = 16 << 20;
/// Distinct keys written: about three times the bound in key and value
/// bytes alone.
const KEYS: usize = 300_000;
const VALUE: usize = 150;
/// SETs per pipeline.
const BATCH: usize = 1_000;

fn run_ok(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn certs(dir: &Path, names: &[&str]) {
    let certs = dir.join("certs");
    run_ok(&["certs", "init", "--dir", certs.to_str().unwrap()]);
    for n in names {
        run_ok(&["certs", "issue", n, "--dir", certs.to_str().unwrap(), "--ip", "127.0.0.1"]);
    }
}

async fn spawn(dir: &Path, name: &str, bound: Option<usize>, seeds: &[SocketAddr]) -> (Guard, Addrs) {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let addr_file = dir.join(format!("{name}.addrs"));
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--name", name, "--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0"])
        .args(["--certs", dir.join("certs").to_str().unwrap(), "--admin", "off", "--anti-entropy-ms", "300"])
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(log);
    match bound {
        Some(b) => cmd.args(["--max-bytes", &b.to_string()]),
        None => cmd.args(["--max-bytes", "off"]),
    };
    for s in seeds {
        cmd.args(["--seed", &s.to_string()]);
    }
    let mut child = Guard(cmd.spawn().unwrap());
    let addrs = node_addrs(&mut child.0, &addr_file, &log_path).await;
    (child, addrs)
}

async fn client(a: &Addrs) -> redis::aio::MultiplexedConnection {
    let c = redis::Client::open(format!("redis://{}/", a.resp.unwrap())).unwrap();
    c.get_multiplexed_async_connection_with_config(&common::patient()).await.unwrap()
}

/// Writes `KEYS` distinct keys of `VALUE` bytes in pipelines, retrying a
/// batch while the peer is still loading from its seeds. An OOM error fails
/// the test: under `allkeys-lru` a bounded peer always has something to
/// evict.
async fn write_all(c: &mut redis::aio::MultiplexedConnection, tag: &str) {
    let value = vec![b'v'; VALUE];
    for start in (0..KEYS).step_by(BATCH) {
        let mut pipe = redis::pipe();
        for i in start..(start + BATCH).min(KEYS) {
            pipe.cmd("SET").arg(format!("{tag}:{i:08}")).arg(&value).ignore();
        }
        let mut tries = 0;
        loop {
            match pipe.query_async::<()>(c).await {
                Ok(()) => break,
                Err(e) if e.to_string().to_lowercase().contains("loading") && tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("SET batch at {start}: {e}"),
            }
        }
    }
}

/// `used_memory`, `maxmemory` and `used_memory_rss` from INFO. Checks on
/// the way that `used_memory` is the allocator's count, not the store's
/// own estimate (`used_memory_dataset`), which leaves out the runtime and
/// so is always smaller.
async fn memory(c: &mut redis::aio::MultiplexedConnection) -> (usize, usize, usize) {
    let info: String = redis::cmd("INFO").arg("memory").query_async(c).await.unwrap();
    let field = |name: &str| -> usize {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in INFO memory:\n{info}"))
            .trim()
            .parse()
            .unwrap()
    };
    let used = field("used_memory");
    assert!(used > field("used_memory_dataset"), "used_memory is not the allocator's count:\n{info}");
    (used, field("maxmemory"), field("used_memory_rss"))
}

fn rss_of(child: &Guard) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

fn within_rss_target(rss: usize) -> bool {
    (rss as f64) <= 1.15 * BOUND as f64 + 40e6
}

async fn dbsize(c: &mut redis::aio::MultiplexedConnection) -> usize {
    redis::cmd("DBSIZE").query_async(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_peer_stays_within_its_bound() {
    let dir = TempDir::new("bound-lone");
    certs(&dir.0, &["a"]);
    let (a, addrs) = spawn(&dir.0, "a", Some(BOUND), &[]).await;
    let mut c = client(&addrs).await;
    write_all(&mut c, "lone").await;
    let (used, max, rss_reported) = memory(&mut c).await;
    let rss = rss_of(&a);
    let held = dbsize(&mut c).await;
    assert_eq!(max, BOUND);
    assert!(used <= max, "used_memory {used} over maxmemory {max}");
    assert!(within_rss_target(rss), "RSS {rss} over 1.15 x {BOUND} + 40 MB");
    assert!(rss_reported > 0, "used_memory_rss reported");
    // Eviction made room rather than refusing, and kept a working set.
    assert!(held > 1_000 && held < KEYS, "{held} keys held of {KEYS} written");
    // At run time too, the bound may not go below what the process needs.
    let refused = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("8mb").query_async::<()>(&mut c).await;
    let e = refused.expect_err("a bound below 16 MiB is refused");
    assert!(e.to_string().contains("16 MiB"), "{e}");
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("32mb").query_async(&mut c).await.unwrap();
    assert_eq!(memory(&mut c).await.1, 32 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_peer_fed_by_an_unbounded_one_stays_within_its_bound() {
    let dir = TempDir::new("bound-peer");
    certs(&dir.0, &["s", "t"]);
    let (_s, s_addrs) = spawn(&dir.0, "s", None, &[]).await;
    let (t, t_addrs) = spawn(&dir.0, "t", Some(BOUND), &[s_addrs.quic]).await;
    let mut cs = client(&s_addrs).await;
    let mut ct = client(&t_addrs).await;
    write_all(&mut cs, "fed").await;
    // Everything written on `s` reaches `t` by pushes and anti-entropy
    // while the writes run and for a while after. The resident set must
    // stay within the target throughout; `used_memory` at or below the
    // bound once `t` has caught up (while it catches up, the anti-entropy
    // sessions' bookkeeping may pass it for a moment: ALGORITHM.md, "The
    // memory bound").
    let mut worst_rss = rss_of(&t);
    for _ in 0..20 {
        worst_rss = worst_rss.max(rss_of(&t));
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(dbsize(&mut cs).await, KEYS, "the unbounded peer keeps every key");
    assert!(within_rss_target(worst_rss), "t's RSS reached {worst_rss}, over 1.15 x {BOUND} + 40 MB");
    let settled = meshcache::wait::Wait::new(common::wait::DEADLINE)
        .until_async("t's used_memory at or below maxmemory", || {
            let mut ct = ct.clone();
            async move {
                let (used, max, _) = memory(&mut ct).await;
                used <= max
            }
        })
        .await;
    let (used, max, _) = memory(&mut ct).await;
    assert!(settled.is_ok(), "t's used_memory stayed at {used}, over maxmemory {max}");
    assert_eq!(max, BOUND);
    let held = dbsize(&mut ct).await;
    assert!(held > 1_000 && held < KEYS, "t holds {held} keys of {KEYS}");
}
