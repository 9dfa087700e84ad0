//! redis-py, the Python client, against three in-process peers over real
//! QUIC, each with a RESP server: `tests/python/redis_py_check.py` runs
//! pipelines, counters, SCAN iteration and pub/sub across the peers.
//!
//! The interpreter is `MESHCACHE_PYTHON`, one with redis-py installed, which
//! `scripts/test` sets up (a virtual environment under `target/`, redis-py
//! from the package registry). Without it the test is skipped, and fails
//! under CI.

use crate::common;

use std::time::Duration;

use common::redis_ref::RespPeer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_against_a_three_peer_mesh() {
    let Some(python) = std::env::var_os("MESHCACHE_PYTHON") else {
        let missing = "MESHCACHE_PYTHON is not set to an interpreter with redis-py (scripts/test sets it)";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{missing}: under CI this check must run");
        println!("skipped: {missing}");
        return;
    };
    let peers = RespPeer::cluster(3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/redis_py_check.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).args(peers.iter().map(|p| p.port.to_string())).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await.expect("the script finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis_py_check.py failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("checks passed"), "{stdout}");
    for p in peers {
        p.stop().await;
    }
}
