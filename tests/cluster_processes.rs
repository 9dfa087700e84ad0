//! Three real `meshcache node` processes on loopback, driven through their
//! Redis-protocol ports by the `redis` crate: replication, deletes, races,
//! and a peer killed with SIGKILL, written around, and restarted.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;

const BIN: &str = env!("CARGO_BIN_EXE_meshcache");
/// Generous: convergence is checked against a deadline, never timed.
const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    name: &'static str,
    quic: SocketAddr,
    resp: SocketAddr,
    metrics: Option<SocketAddr>,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn run_ok(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn spawn(dir: &Path, n: &mut Node, seeds: &[SocketAddr]) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--name", n.name, "--listen", &n.quic.to_string(), "--resp", &n.resp.to_string()])
        .args(["--certs", dir.join("certs").to_str().unwrap(), "--admin", "off", "--anti-entropy-ms", "300"])
        .env("RUST_LOG", "meshcache=info")
        .stdout(Stdio::null())
        .stderr(log);
    for s in seeds {
        cmd.args(["--seed", &s.to_string()]);
    }
    if let Some(m) = n.metrics {
        cmd.args(["--metrics", &m.to_string()]);
    }
    n.child = Some(cmd.spawn().unwrap());
}

async fn client(n: &Node) -> redis::aio::MultiplexedConnection {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let c = redis::Client::open(format!("redis://{}/", n.resp)).unwrap();
        if let Ok(Ok(conn)) =
            tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection_with_config(&patient()))
                .await
        {
            return conn;
        }
        assert!(tokio::time::Instant::now() < end, "{} never accepted clients; log: {}", n.name, log_of(n));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(n: &Node) -> String {
    std::fs::read_to_string(&n.log).unwrap_or_default()
}

/// SET, retrying while the peer is still loading from its seeds.
async fn set(c: &mut redis::aio::MultiplexedConnection, k: &str, v: &str) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        match c.set::<_, _, ()>(k, v).await {
            Ok(()) => return,
            Err(e) if e.to_string().to_lowercase().contains("loading") && tokio::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("SET {k}: {e}"),
        }
    }
}

async fn eventually_get(c: &mut redis::aio::MultiplexedConnection, k: &str, want: Option<&str>, who: &Node) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got: Option<String> = c.get(k).await.unwrap();
        if got.as_deref() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{}: GET {k} = {got:?}, want {want:?}; log:\n{}",
            who.name,
            log_of(who)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_replicate_and_survive_a_sigkill() {
    let dir = std::env::temp_dir().join(format!("meshcache-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.join("certs");
    run_ok(&["certs", "init", "--dir", certs.to_str().unwrap()]);
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            run_ok(&["certs", "issue", name, "--dir", certs.to_str().unwrap(), "--ip", "127.0.0.1"]);
            let metrics = (name == "a").then(free_tcp);
            Node {
                name,
                quic: free_udp(),
                resp: free_tcp(),
                metrics,
                child: None,
                log: dir.join(format!("{name}.log")),
            }
        })
        .collect();
    let seed = nodes[0].quic;
    for (i, n) in nodes.iter_mut().enumerate() {
        spawn(&dir, n, if i == 0 { &[] } else { std::slice::from_ref(&seed) });
    }
    let mut cs = Vec::new();
    for n in &nodes {
        cs.push(client(n).await);
    }

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
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut vals = Vec::new();
            for c in cs.iter_mut() {
                vals.push(c.get::<_, Option<String>>(&k).await.unwrap());
            }
            if vals[0].is_some() && vals.iter().all(|v| *v == vals[0]) {
                break;
            }
            assert!(tokio::time::Instant::now() < end, "{k} never converged: {vals:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // SIGKILL c; write around it; restart it.
    nodes[2].child.as_mut().unwrap().kill().unwrap();
    nodes[2].child.as_mut().unwrap().wait().unwrap();
    for i in 0..200 {
        set(&mut cs[i % 2], &format!("while-down-{i}"), &format!("{i}")).await;
    }
    for i in (0..200).step_by(3) {
        let _: i64 = cs[(i + 1) % 2].del(format!("while-down-{i}")).await.unwrap();
    }
    set(&mut cs[0], "race-0", "after-kill").await;
    let n2 = &mut nodes[2];
    spawn(&dir, n2, &[seed]);
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

    // Prometheus metrics on a.
    let body = http_get(nodes[0].metrics.unwrap(), "/metrics");
    for metric in
        ["meshcache_entries", "meshcache_members", "meshcache_deltas_received_total", "meshcache_ae_rounds_total"]
    {
        assert!(body.contains(metric), "{metric} missing from /metrics:\n{body}");
    }

    // SIGTERM: each leaves gracefully and exits 0.
    for n in nodes.iter_mut() {
        let mut child = n.child.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let end = std::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < end, "{} did not exit on SIGTERM", n.name);
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{} exited with {status}; log:\n{}", n.name, log_of(n));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The redis crate waits 500 ms for a reply by default: a timing that a
/// loaded CI machine can miss. Tests check behaviour, not speed.
fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(60)))
        .set_connection_timeout(Some(std::time::Duration::from_secs(30)))
}
