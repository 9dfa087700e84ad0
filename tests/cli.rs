//! The `meshcache` binary, run as a user would: exit codes, messages,
//! certificate files, a real node with its admin port, and the demo.
//!
//! Every command runs in a fresh directory under the system temp dir, with
//! every `MESHCACHE_*` variable cleared, on loopback only; every wait is
//! bounded.

use crate::common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{exited, node_addrs, sigterm, Addrs, Guard, TempDir, BIN};
use common::redis_ref::Raw;
use common::wait::block_on;

/// Bound on any one short command.
const SHORT: Duration = Duration::from_secs(60);

/// `meshcache ARGS` in `dir`, with no `MESHCACHE_*` variable set.
fn meshcache(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(dir).env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESHCACHE_") {
            c.env_remove(k);
        }
    }
    c
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `c` to completion, killing it after `limit`.
fn run(mut c: Command, limit: Duration) -> Out {
    let mut child = Guard(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn meshcache"));
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(child.0.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = pipe(child.0.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let status = block_on(exited(&mut child.0, limit))
        .unwrap_or_else(|| panic!("meshcache {:?} did not finish within {limit:?}", c.get_args()));
    Out { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn run_in(dir: &Path, args: &[&str]) -> Out {
    run(meshcache(dir, args), SHORT)
}

/// Starts `meshcache node` as n1 in `tmp` (a new CA and certificate in
/// `c`, every port from the system: the node says which in its address
/// file) with `args` added, logging to the returned path; returns once
/// the address file is written.
fn start_n1(tmp: &TempDir, args: &[&str]) -> (Guard, Addrs, PathBuf) {
    assert_eq!(run_in(&tmp.0, &["certs", "init", "--dir", "c"]).code, Some(0));
    assert_eq!(run_in(&tmp.0, &["certs", "issue", "n1", "--dir", "c", "--ip", "127.0.0.1"]).code, Some(0));
    let (log, addr_file) = (tmp.path("node.log"), tmp.path("node.addrs"));
    let mut c = meshcache(&tmp.0, &["node", "--name", "n1", "--certs", "c", "--listen", "127.0.0.1:0"]);
    c.args(args).arg("--addr-file").arg(&addr_file);
    c.stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap());
    let mut node = Guard(c.spawn().expect("spawn node"));
    let addrs = block_on(node_addrs(&mut node.0, &addr_file, &log));
    (node, addrs, log)
}

#[test]
fn version() {
    let tmp = TempDir::new("version");
    for args in [&["version"][..], &["--version"][..]] {
        let out = run_in(&tmp.0, args);
        assert_eq!(out.code, Some(0), "{out:?}");
        let protocols = format!("(protocol {})", meshcache::wire::PROTOCOL_VERSIONS);
        assert!(out.stdout.starts_with("meshcache ") && out.stdout.contains(&protocols), "{out:?}");
    }
}

#[test]
fn bad_flag_exits_2() {
    let tmp = TempDir::new("badflag");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--no-such-flag"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--no-such-flag"), "{out:?}");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--max-bytes", "lots"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--eviction-policy", "lru"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("allkeys-lru"), "the error lists the policies: {out:?}");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--threads", "0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("1..=1024"), "the error gives the range: {out:?}");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--admin", "0.0.0.0:0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("loopback"), "{out:?}");
    // The bound covers the whole process, which needs 16 MiB to run.
    let out = run_in(&tmp.0, &["node", "--name", "a", "--max-bytes", "8M", "--print-config"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("16 MiB"), "the error names the minimum: {out:?}");
    let out = run_in(&tmp.0, &["node", "--name", "a", "--max-bytes", "16M", "--print-config"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // Buffers that would not fit shrink with the bound.
    assert!(out.stdout.lines().any(|l| l == "push_queue_bytes = 524288"), "{out:?}");
    assert!(out.stdout.lines().any(|l| l == "receive_window = 262144"), "{out:?}");
}

#[test]
fn invalid_config_files_exit_2_and_name_the_problem() {
    let tmp = TempDir::new("config");
    fs::write(tmp.path("unknown.toml"), "name = \"a\"\nnmae = \"b\"\n").unwrap();
    let out = run_in(&tmp.0, &["node", "--config", "unknown.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("nmae") && out.stderr.contains("line 2"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:?}");

    fs::write(tmp.path("broken.toml"), "name = \"a\"\nlisten = \n").unwrap();
    let out = run_in(&tmp.0, &["node", "--config", "broken.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("broken.toml") && out.stderr.contains("line 2"), "{out:?}");

    fs::write(tmp.path("policy.toml"), "name = \"a\"\neviction_policy = \"lru\"\n").unwrap();
    let out = run_in(&tmp.0, &["node", "--config", "policy.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("line 2") && out.stderr.contains("allkeys-lru"), "{out:?}");

    fs::write(tmp.path("invalid.toml"), "name = \"a\"\nmax_tombstones = 1\n").unwrap();
    let out = run_in(&tmp.0, &["node", "--config", "invalid.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("max_tombstones"), "{out:?}");

    let out = run_in(&tmp.0, &["node", "--config", "missing.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("missing.toml"), "{out:?}");
}

#[test]
fn settings_layer_file_then_environment_then_flags() {
    let tmp = TempDir::new("layers");
    fs::write(
        tmp.path("m.toml"),
        "name = \"file\"\nmax_tombstones = 10\nanti_entropy_interval = 250\nmax_members = 7\n\
         eviction_policy = \"volatile-ttl\"\n",
    )
    .unwrap();
    let mut c = meshcache(
        &tmp.0,
        &["node", "--config", "m.toml", "--max-tombstones", "30", "--push-delay-us", "50", "--print-config"],
    );
    c.env("MESHCACHE_NAME", "env").env("MESHCACHE_MAX_TOMBSTONES", "20");
    c.env("MESHCACHE_MAX_MEMBERS", "9").env("MESHCACHE_EVICTION_POLICY", "allkeys-lfu");
    c.env("MESHCACHE_SEEDS", "127.0.0.1:7000,meshcache-0.meshcache.cache.svc:7946,[::1]:7001");
    c.env("MESHCACHE_MAX_BYTES", "16M");
    let out = run(c, SHORT);
    assert_eq!(out.code, Some(0), "{out:?}");
    for line in [
        "name = \"env\"",
        "max_tombstones = 30",
        "anti_entropy_interval = 250",
        "max_bytes = 16777216",
        "push_delay = 50",
        "seeds = [\"127.0.0.1:7000\", \"meshcache-0.meshcache.cache.svc:7946\", \"[::1]:7001\"]",
        "max_members = 9",
        "eviction_policy = \"allkeys-lfu\"",
    ] {
        assert!(out.stdout.lines().any(|l| l == line), "missing {line:?}: {out:?}");
    }
    // A flag wins over the environment, and 0 is refused by name.
    let mut c = meshcache(&tmp.0, &["node", "--config", "m.toml", "--max-members", "11", "--print-config"]);
    c.env("MESHCACHE_MAX_MEMBERS", "9");
    let out = run(c, SHORT);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.lines().any(|l| l == "max_members = 11"), "{out:?}");
    let out = run_in(&tmp.0, &["node", "--config", "m.toml", "--max-members", "0", "--print-config"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("max_members"), "{out:?}");
    // A seed without a port, or with a host that is no name, is refused
    // with the form a seed takes.
    for bad in ["meshcache.cache.svc", "::1:7946", "a b:7946", "host:0"] {
        let out = run_in(&tmp.0, &["node", "--config", "m.toml", "--seed", bad, "--print-config"]);
        assert_eq!(out.code, Some(2), "{bad}: {out:?}");
        assert!(out.stderr.contains("--seed") && out.stderr.contains(bad), "{bad}: {out:?}");
    }
}

#[test]
fn invalid_name_exits_2() {
    let tmp = TempDir::new("name");
    let out = run_in(&tmp.0, &["node", "--name", "no spaces", "--listen", "127.0.0.1:0", "--admin", "off"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("name"), "{out:?}");
    let out = run_in(&tmp.0, &["node", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--name"), "{out:?}");
    assert!(!tmp.path("certs").exists(), "nothing is made before the settings are valid");
}

#[test]
fn certs_issue_before_init_says_certs_init() {
    let tmp = TempDir::new("noinit");
    let out = run_in(&tmp.0, &["certs", "issue", "a", "--dir", "c"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("certs init"), "{out:?}");
}

#[test]
fn certs_init_twice_says_force() {
    let tmp = TempDir::new("twice");
    let out = run_in(&tmp.0, &["certs", "init", "--dir", "c"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run_in(&tmp.0, &["certs", "init", "--dir", "c"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--force"), "{out:?}");
    let out = run_in(&tmp.0, &["certs", "init", "--dir", "c", "--force"]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn certs_init_and_issue_write_private_keys_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("issue");
    assert_eq!(run_in(&tmp.0, &["certs", "init", "--dir", "c"]).code, Some(0));
    let out = run_in(&tmp.0, &["certs", "issue", "a", "--dir", "c", "--ip", "127.0.0.1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("a.crt") && out.stdout.contains("a.key"), "{out:?}");
    for f in ["ca.crt", "ca.key", "a.crt", "a.key"] {
        assert!(tmp.path("c").join(f).is_file(), "{f} missing");
    }
    for key in ["ca.key", "a.key"] {
        let mode = fs::metadata(tmp.path("c").join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // A node whose certificate was not issued is told how to make it.
    let out = run_in(&tmp.0, &["node", "--name", "b", "--certs", "c", "--listen", "127.0.0.1:0", "--admin", "off"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("certs issue b"), "{out:?}");
}

#[test]
fn status_without_a_node_exits_1() {
    let tmp = TempDir::new("nonode");
    // A port that refuses connections: bound, so that nothing else takes
    // it, but not listening.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    let out = run_in(&tmp.0, &["status", "--admin", &addr]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("connection refused"), "{out:?}");
}

#[test]
fn node_serves_status_and_stops_on_sigterm() {
    let tmp = TempDir::new("node");
    let (mut node, addrs, log) = start_n1(&tmp, &["--admin", "127.0.0.1:0", "--resp", "127.0.0.1:0"]);
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let (listen, admin) = (addrs.quic.to_string(), addrs.admin.expect("an admin line").to_string());
    assert!(addrs.resp.is_some() && addrs.metrics.is_none(), "{addrs:?}");
    assert!(log_text().contains(&format!("status --admin {admin}")), "{}", log_text());

    // The admin port is open once the address file is written.
    let status = run_in(&tmp.0, &["status", "--admin", &admin]);
    assert_eq!(status.code, Some(0), "{status:?}\nnode log:\n{}", log_text());
    assert!(status.stdout.lines().any(|l| l.starts_with("name:") && l.ends_with(" n1")), "{status:?}");
    assert!(status.stdout.contains(&listen), "{status:?}");
    assert!(status.stdout.contains("members:"), "{status:?}");

    let out = run_in(&tmp.0, &["forget", "nobody", "--admin", &admin]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no active member"), "{out:?}");

    sigterm(&node.0);
    let status = block_on(exited(&mut node.0, SHORT))
        .unwrap_or_else(|| panic!("node still running {SHORT:?} after SIGTERM:\n{}", log_text()));
    assert_eq!(status.code(), Some(0), "node log:\n{}", log_text());
    assert!(log_text().contains("SIGTERM"), "{}", log_text());
}

/// `--threads N` sets the runtime's workers, which `INFO meshcache`
/// reports (3 is no machine's default here: the test fails if the flag is
/// ignored).
#[test]
fn threads_sets_the_runtime_workers() {
    let tmp = TempDir::new("threads");
    let (mut node, addrs, log) = start_n1(&tmp, &["--admin", "off", "--resp", "127.0.0.1:0", "--threads", "3"]);
    let port = addrs.resp.expect("a resp line").port();
    let info = block_on(async move { Raw::connect(port).await.cmd(&["INFO", "meshcache"]).await });
    assert!(info.contains("\r\nruntime_workers:3\r\n"), "{info}");
    sigterm(&node.0);
    let status = block_on(exited(&mut node.0, SHORT)).expect("the node stops on SIGTERM");
    assert_eq!(status.code(), Some(0), "node log:\n{}", fs::read_to_string(&log).unwrap_or_default());
}

/// A peer waiting for its seeds is not ready: `meshcache status` exits 1
/// saying why, and the readiness probe answers 503 `loading` while the
/// liveness probe answers 200.
#[test]
fn a_loading_peer_is_not_ready_to_status_or_the_probe() {
    let tmp = TempDir::new("loading");
    let silent = common::mesh::silent_seed();
    let seed = silent.local_addr().unwrap().to_string();
    let (mut node, addrs, _log) = start_n1(
        &tmp,
        &[
            "--admin",
            "127.0.0.1:0",
            "--resp",
            "off",
            "--metrics",
            "127.0.0.1:0",
            "--seed",
            &seed,
            "--bootstrap-timeout-ms",
            "3600000",
        ],
    );
    let (admin, http) = (addrs.admin.unwrap().to_string(), addrs.metrics.unwrap());

    let status = run_in(&tmp.0, &["status", "--admin", &admin]);
    assert_eq!(status.code, Some(1), "{status:?}");
    assert!(status.stdout.lines().any(|l| l.starts_with("readiness:") && l.contains("loading")), "{status:?}");
    assert!(status.stderr.contains("not ready: loading"), "{status:?}");
    let (code, body) = block_on(common::http::request(http, "GET", "/readyz"));
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("loading"), "{body}");
    assert_eq!(block_on(common::http::request(http, "GET", "/healthz")), (200, "ok\n".to_owned()));
    sigterm(&node.0);
    let status = block_on(exited(&mut node.0, SHORT)).expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn demo_quick_converges_and_reports() {
    let tmp = TempDir::new("demo");
    let mut c = meshcache(&tmp.0, &["demo", "--quick"]);
    c.env("RUST_LOG", "warn");
    let out = run(c, Duration::from_secs(180));
    assert_eq!(out.code, Some(0), "{out:?}");
    for needle in ["write-to-visible latency: p50", "p99", "replicated writes/s:", "equal on every peer", "converged"] {
        assert!(out.stdout.contains(needle), "missing {needle:?}: {out:?}");
    }
}

/// Sends SIGHUP to `child`.
fn sighup(child: &std::process::Child) {
    let id = child.id().to_string();
    let sent = Command::new("kill").args(["-HUP", &id]).status().expect("`kill` (procps) sends SIGHUP");
    assert!(sent.success(), "kill -HUP {id}: {sent}");
}

/// The `certificate:` line of `meshcache status`.
fn certificate_line(dir: &Path, admin: &str) -> String {
    let out = run_in(dir, &["status", "--admin", admin]);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.lines().find(|l| l.starts_with("certificate:")).unwrap_or_else(|| panic!("{out:?}")).to_owned()
}

/// A running node rolls over to a new CA: SIGHUP reads its files again
/// (old and new CA trusted, a certificate of the new one), a peer that
/// trusts only the new CA then joins it, and `meshcache reload` does the
/// same as SIGHUP. Bad files are refused, `meshcache reload` says why and
/// exits 1, and the node keeps running on its current certificates.
#[test]
fn sighup_and_reload_roll_a_running_node_over_to_a_new_ca() {
    use common::wait::{eventually, eventually_async};
    let tmp = TempDir::new("rotate");
    for dir in ["ca1", "ca2"] {
        assert_eq!(run_in(&tmp.0, &["certs", "init", "--dir", dir]).code, Some(0));
    }
    for (dir, name) in [("ca1", "n1"), ("ca2", "n1"), ("ca2", "j")] {
        let out = run_in(&tmp.0, &["certs", "issue", name, "--dir", dir, "--ip", "127.0.0.1"]);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    // The node's own directory starts with the old CA's files.
    let (ca1, ca2, n1) = (tmp.path("ca1"), tmp.path("ca2"), tmp.path("n1certs"));
    fs::create_dir(&n1).unwrap();
    for f in ["ca.crt", "n1.crt", "n1.key"] {
        fs::copy(ca1.join(f), n1.join(f)).unwrap();
    }
    let start = |name: &str, certs: &str, seed: Option<String>| {
        let (log, addr_file) = (tmp.path(&format!("{name}.log")), tmp.path(&format!("{name}.addrs")));
        let mut c = meshcache(&tmp.0, &["node", "--name", name, "--certs", certs, "--listen", "127.0.0.1:0"]);
        c.args(["--admin", "127.0.0.1:0", "--resp", "off", "--addr-file"]).arg(&addr_file);
        if let Some(seed) = seed {
            c.args(["--seed", &seed]);
        }
        c.stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap());
        let mut node = Guard(c.spawn().expect("spawn node"));
        let addrs = block_on(node_addrs(&mut node.0, &addr_file, &log));
        (node, addrs, log)
    };
    let (mut node, addrs, log) = start("n1", "n1certs", None);
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let admin = addrs.admin.expect("an admin line").to_string();
    let first = certificate_line(&tmp.0, &admin);
    assert!(first.ends_with(", 1 trusted CA"), "{first}");

    // Old and new CA trusted, and a certificate of the new one.
    let bundle = [fs::read_to_string(ca1.join("ca.crt")).unwrap(), fs::read_to_string(ca2.join("ca.crt")).unwrap()];
    fs::write(n1.join("ca.crt"), bundle.concat()).unwrap();
    for f in ["n1.crt", "n1.key"] {
        fs::copy(ca2.join(f), n1.join(f)).unwrap();
    }
    sighup(&node.0);
    block_on(eventually("the node logs the reload", || log_text().contains("TLS certificates reloaded")));
    let second = certificate_line(&tmp.0, &admin);
    assert!(second != first && second.ends_with(", 2 trusted CAs"), "{first} -> {second}");

    // A peer that trusts only the new CA joins: the node presents its new
    // certificate and trusts the new CA.
    let (_j, _, j_log) = start("j", "ca2", Some(addrs.quic.to_string()));
    let admin_at = addrs.admin.expect("an admin line");
    block_on(eventually_async("j joins n1", || async move {
        let status = meshcache::admin::request(admin_at, "status").await.unwrap_or_default();
        status.lines().any(|l| l.trim_start().starts_with("j ") && l.contains(" connected "))
    }));

    let out = run_in(&tmp.0, &["reload", "--admin", &admin]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.starts_with("OK reloaded: certificate serial") && out.stdout.contains("2 trusted CAs"),
        "{out:?}"
    );

    // Bad files: refused, with the file and the reason; the node carries on.
    fs::write(n1.join("n1.key"), "garbage").unwrap();
    let out = run_in(&tmp.0, &["reload", "--admin", &admin]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("n1.key") && out.stderr.contains("current certificates stay in use"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:?}");
    sighup(&node.0);
    block_on(eventually("the node logs the refusal of SIGHUP's reload", || {
        log_text().matches("NOT reloaded").count() >= 2
    }));
    assert!(node.0.try_wait().unwrap().is_none(), "a refused reload stopped the node:\n{}", log_text());
    assert_eq!(certificate_line(&tmp.0, &admin), second, "a refused reload changed the certificate");
    assert!(log_text().lines().any(|l| l.contains("ERROR") && l.contains("n1.key")), "{}", log_text());

    // The old CA retired.
    fs::copy(ca2.join("n1.key"), n1.join("n1.key")).unwrap();
    fs::copy(ca2.join("ca.crt"), n1.join("ca.crt")).unwrap();
    let out = run_in(&tmp.0, &["reload", "--admin", &admin]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(", 1 trusted CA"), "{out:?}");
    let out = run_in(&tmp.0, &["status", "--admin", &admin]);
    assert!(out.stdout.lines().any(|l| l.trim_start().starts_with("j ") && l.contains(" connected ")), "{out:?}");

    sigterm(&node.0);
    let status = block_on(exited(&mut node.0, SHORT))
        .unwrap_or_else(|| panic!("node still running {SHORT:?} after SIGTERM:\n{}", log_text()));
    assert_eq!(status.code(), Some(0), "node log:\n{}", log_text());
    let _ = j_log;
}
