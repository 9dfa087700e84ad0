//! Starting in-process peers over real QUIC on loopback, and waiting for
//! conditions with a generous deadline (never a timing assertion).

use std::net::SocketAddr;
use std::time::Duration;

use meshcache::transport::faults::Faults;
use meshcache::transport::tls::{EphemeralCa, Identity};
use meshcache::{Mesh, MeshConfig};

/// Generous: convergence is checked against a deadline, never timed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A peer named `name` with `MeshConfig::for_test`, its certificate from `ca`.
pub async fn start(ca: &EphemeralCa, name: &str, seeds: &[SocketAddr]) -> Mesh {
    start_with(ca.issue(name).unwrap(), seeds).await
}

/// A peer with this identity (named by it) and `MeshConfig::for_test`.
pub async fn start_with(id: Identity, seeds: &[SocketAddr]) -> Mesh {
    let name = id.name.clone();
    Mesh::builder().config(MeshConfig::for_test(&name)).seeds(seeds.iter().copied()).tls(id).start().await.unwrap()
}

/// As [`start`], over a fault-injecting socket of `faults`.
pub async fn start_faulty(ca: &EphemeralCa, faults: &Faults, name: &str, seeds: &[SocketAddr]) -> Mesh {
    Mesh::builder()
        .config(MeshConfig::for_test(name))
        .seeds(seeds.iter().copied())
        .socket(faults.socket("127.0.0.1:0".parse().unwrap()).unwrap())
        .tls(ca.issue(name).unwrap())
        .start()
        .await
        .unwrap()
}

/// Polls `f` every 20 ms; fails the test if it is not true within
/// [`DEADLINE`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(tokio::time::Instant::now() < end, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
