//! Three real `meshcache node` processes on loopback, driven through their
//! Redis-protocol ports by the `redis` crate: replication, deletes, races,
//! and a peer killed with SIGKILL, written around, and restarted.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::http::request;
use common::process::{exited, node_addrs, sigterm, Addrs, Guard, TempDir, BIN};
use common::wait::{eventually, eventually_async, DEADLINE};
use meshcache::wait::Wait;
use redis::AsyncCommands;

struct Node {
    name: &'static str,
    /// Whether it serves Prometheus metrics.
    metrics: bool,
    /// Anti-entropy period, in ms.
    anti_entropy_ms: u64,
    /// Where the running process listens (each start gets new ports).
    addrs: Option<Addrs>,
    child: Option<Guard>,
    log: PathBuf,
}

impl Node {
    fn addrs(&self) -> Addrs {
        self.addrs.expect("started")
    }
}

fn run_ok(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `n` on ports the system picks, and waits until it says which.
async fn spawn(dir: &Path, n: &mut Node, seeds: &[SocketAddr]) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
    let addr_file = dir.join(format!("{}.addrs", n.name));
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--name", n.name, "--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0"])
        .args(["--certs", dir.join("certs").to_str().unwrap(), "--admin", "off"])
        .args(["--anti-entropy-ms", &n.anti_entropy_ms.to_string()])
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "meshcache=info")
        .stdout(Stdio::null())
        .stderr(log);
    for s in seeds {
        cmd.args(["--seed", &s.to_string()]);
    }
    if n.metrics {
        cmd.args(["--metrics", "127.0.0.1:0"]);
    }
    let mut child = Guard(cmd.spawn().unwrap());
    n.addrs = Some(node_addrs(&mut child.0, &addr_file, &n.log).await);
    n.child = Some(child);
}

/// Nodes a, b and c under `dir` (a serving metrics), with certificates
/// from one CA and anti-entropy every `anti_entropy_ms`; b and c seeded
/// with a. Returns them with a client of each.
async fn three(dir: &Path, anti_entropy_ms: u64) -> (Vec<Node>, Vec<redis::aio::MultiplexedConnection>) {
    let certs = dir.join("certs");
    run_ok(&["certs", "init", "--dir", certs.to_str().unwrap()]);
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            run_ok(&["certs", "issue", name, "--dir", certs.to_str().unwrap(), "--ip", "127.0.0.1"]);
            Node {
                name,
                metrics: name == "a",
                anti_entropy_ms,
                addrs: None,
                child: None,
                log: dir.join(format!("{name}.log")),
            }
        })
        .collect();
    spawn(dir, &mut nodes[0], &[]).await;
    let seed = nodes[0].addrs().quic;
    for n in &mut nodes[1..] {
        spawn(dir, n, &[seed]).await;
    }
    let mut cs = Vec::new();
    for n in &nodes {
        cs.push(client(n).await);
    }
    (nodes, cs)
}

/// A client of `n`'s Redis-protocol port (open: `spawn` waited for it).
async fn client(n: &Node) -> redis::aio::MultiplexedConnection {
    let c = redis::Client::open(format!("redis://{}/", n.addrs().resp.unwrap())).unwrap();
    c.get_multiplexed_async_connection_with_config(&common::patient())
        .await
        .unwrap_or_else(|e| panic!("{} refused a client ({e}); log:\n{}", n.name, log_of(n)))
}

fn log_of(n: &Node) -> String {
    std::fs::read_to_string(&n.log).unwrap_or_default()
}

/// SET, retrying while the peer is still loading from its seeds.
async fn set(c: &mut redis::aio::MultiplexedConnection, k: &str, v: &str) {
    eventually_async(&format!("SET {k} accepted (not LOADING)"), || {
        let mut c = c.clone();
        async move {
            match c.set::<_, _, ()>(k, v).await {
                Ok(()) => true,
                Err(e) if e.to_string().to_lowercase().contains("loading") => false,
                Err(e) => panic!("SET {k}: {e}"),
            }
        }
    })
    .await
}

async fn eventually_get(c: &mut redis::aio::MultiplexedConnection, k: &str, want: Option<&str>, who: &Node) {
    let got = Wait::new(DEADLINE)
        .until_async(&format!("{}: GET {k} = {want:?}", who.name), || {
            let mut c = c.clone();
            async move { c.get::<_, Option<String>>(k).await.unwrap().as_deref() == want }
        })
        .await;
    if let Err(e) = got {
        panic!("{e}; log:\n{}", log_of(who));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_replicate_and_survive_a_sigkill() {
    let tmp = TempDir::new("cluster");
    let dir = &tmp.0;
    let (mut nodes, mut cs) = three(dir, 300).await;
    let seed = nodes[0].addrs().quic;

    // A write on any peer is readable on every other.
    for i in 0..3 {
        set(&mut cs[i], &format!("from-{}", nodes[i].name), "v").await;
    }
    for (i, n) in nodes.iter().enumerate() {
        for w in &nodes {
            eventually_get(&mut cs[i], &format!("from-{}", w.name), Some("v"), n).await;
        }
    }
    // Deletes reach all of them.
    let _: i64 = cs[1].del("from-a").await.unwrap();
    for (i, n) in nodes.iter().enumerate() {
        eventually_get(&mut cs[i], "from-a", None, n).await;
    }
    // Concurrent writes to one key: one winner everywhere.
    let (c0, rest) = cs.split_at_mut(1);
    let (c1, c2) = rest.split_at_mut(1);
    for round in 0..20 {
        let k = format!("race-{round}");
        tokio::join!(set(&mut c0[0], &k, "a"), set(&mut c1[0], &k, "b"), set(&mut c2[0], &k, "c"));
    }
    for round in 0..20 {
        let k = format!("race-{round}");
        eventually_async(&format!("{k} converges to one value"), || {
            let mut cs = cs.clone();
            let k = k.clone();
            async move {
                let mut vals = Vec::new();
                for c in cs.iter_mut() {
                    vals.push(c.get::<_, Option<String>>(&k).await.unwrap());
                }
                vals[0].is_some() && vals.iter().all(|v| *v == vals[0])
            }
        })
        .await;
    }

    // SIGKILL c; write around it; restart it (on new ports: the system
    // may have handed the old ones to anyone since).
    let mut c = nodes[2].child.take().unwrap();
    c.0.kill().unwrap();
    c.0.wait().unwrap();
    for i in 0..200 {
        set(&mut cs[i % 2], &format!("while-down-{i}"), &format!("{i}")).await;
    }
    for i in (0..200).step_by(3) {
        let _: i64 = cs[(i + 1) % 2].del(format!("while-down-{i}")).await.unwrap();
    }
    set(&mut cs[0], "race-0", "after-kill").await;
    spawn(dir, &mut nodes[2], &[seed]).await;
    cs[2] = client(&nodes[2]).await;
    for i in 0..200 {
        let want = if i % 3 == 0 { None } else { Some(i.to_string()) };
        for (j, n) in nodes.iter().enumerate() {
            eventually_get(&mut cs[j], &format!("while-down-{i}"), want.as_deref(), n).await;
        }
    }
    for (j, n) in nodes.iter().enumerate() {
        eventually_get(&mut cs[j], "race-0", Some("after-kill"), n).await;
        eventually_get(&mut cs[j], "from-b", Some("v"), n).await;
        eventually_get(&mut cs[j], "from-a", None, n).await;
    }
    // The restarted process takes writes again, and they reach the others.
    set(&mut cs[2], "from-new-c", "v").await;
    for (j, n) in nodes.iter().enumerate() {
        eventually_get(&mut cs[j], "from-new-c", Some("v"), n).await;
    }
    let sizes: Vec<i64> = {
        let mut v = Vec::new();
        for c in cs.iter_mut() {
            v.push(redis::cmd("DBSIZE").query_async(c).await.unwrap());
        }
        v
    };
    assert!(sizes.iter().all(|s| *s == sizes[0]), "DBSIZE differs: {sizes:?}");

    // Prometheus metrics on a, and its probes.
    let http = nodes[0].addrs().metrics.expect("a serves metrics");
    let (status, body) = request(http, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    for metric in
        ["meshcache_entries", "meshcache_members", "meshcache_deltas_received_total", "meshcache_ae_rounds_total"]
    {
        assert!(body.contains(metric), "{metric} missing from /metrics:\n{body}");
    }
    assert_eq!(request(http, "GET", "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(request(http, "GET", "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(request(http, "HEAD", "/readyz").await, (200, String::new()));
    let (status, body) = request(http, "GET", "/nothing").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/healthz") && body.contains("/readyz"), "{body}");
    assert_eq!(request(http, "POST", "/readyz").await.0, 405);

    // SIGTERM: each leaves gracefully and exits 0.
    for n in nodes.iter_mut() {
        let mut child = n.child.take().unwrap();
        sigterm(&child.0);
        let status = exited(&mut child.0, DEADLINE).await;
        let status = status.unwrap_or_else(|| panic!("{} did not exit on SIGTERM; log:\n{}", n.name, log_of(n)));
        assert!(status.success(), "{} exited with {status}; log:\n{}", n.name, log_of(n));
    }
}

/// SIGTERM while clients write to a peer as fast as they can: every write
/// the peer acknowledged, before the signal or during its drain, is on
/// both other peers afterwards, and the peer exits 0. Anti-entropy runs
/// once an hour here, so only the drain's pushes can carry the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_acknowledged_write_to_the_other_peers() {
    const WRITERS: usize = 4;
    const MAX_WRITES: usize = 50_000;
    let tmp = TempDir::new("drain");
    let dir = &tmp.0;
    let (mut nodes, mut cs) = three(dir, 3_600_000).await;
    set(&mut cs[0], "linked", "v").await;
    for (j, n) in nodes.iter().enumerate() {
        eventually_get(&mut cs[j], "linked", Some("v"), n).await;
    }

    // Writers on a, each recording the writes a acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (mut c, acked) = (cs[0].clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..MAX_WRITES {
                let k = format!("drain-{w}-{i}");
                let r: redis::RedisResult<()> = c.set(&k, i).await;
                if r.is_err() {
                    break;
                }
                acked.lock().unwrap().push(k);
            }
        }));
    }
    eventually("a acknowledged 2,000 writes", || acked.lock().unwrap().len() >= 2_000).await;
    let mut a = nodes[0].child.take().unwrap();
    sigterm(&a.0);
    let at_signal = acked.lock().unwrap().len();
    let status = exited(&mut a.0, DEADLINE).await;
    let status = status.unwrap_or_else(|| panic!("a did not exit on SIGTERM; log:\n{}", log_of(&nodes[0])));
    assert!(status.success(), "a exited with {status}; log:\n{}", log_of(&nodes[0]));
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < WRITERS * MAX_WRITES, "the writers never met the drain");
    eprintln!("{} writes acknowledged, {} of them after SIGTERM was sent", acked.len(), acked.len() - at_signal);
    for (j, n) in nodes.iter().enumerate().skip(1) {
        for chunk in acked.chunks(500) {
            let got = Wait::new(DEADLINE)
                .until_async(&format!("{}: holds a's acknowledged writes", n.name), || {
                    let mut c = cs[j].clone();
                    async move {
                        let vals: Vec<Option<String>> = c.mget(chunk).await.unwrap();
                        vals.iter().zip(chunk).all(|(v, k)| v.as_deref() == k.rsplit('-').next())
                    }
                })
                .await;
            if let Err(e) = got {
                panic!("{e}; a's log:\n{}", log_of(&nodes[0]));
            }
        }
    }
    assert!(log_of(&nodes[0]).contains("drained: every peer confirmed every queued write"), "{}", log_of(&nodes[0]));
}
