//! Starting in-process peers over real QUIC on loopback.

use std::net::{SocketAddr, UdpSocket};

use meshcache::transport::certs::{EphemeralCa, Identity};
use meshcache::transport::faults::Faults;
use meshcache::{Mesh, MeshConfig};

use super::wait::{eventually, DEADLINE};

/// A peer named `name` with `MeshConfig::for_test`, its certificate from `ca`.
pub async fn start(ca: &EphemeralCa, name: &str, seeds: &[SocketAddr]) -> Mesh {
    start_with(ca.issue(name).unwrap(), seeds).await
}

/// A peer with this identity (named by it) and `MeshConfig::for_test`.
pub async fn start_with(id: Identity, seeds: &[SocketAddr]) -> Mesh {
    let name = id.name.clone();
    Mesh::builder().config(MeshConfig::for_test(&name)).seeds(seeds.iter().copied()).tls(id).start().await.unwrap()
}

/// Peers `a` and `b` (seeded with `a`), connected, with `b` booted.
pub async fn pair(ca: &EphemeralCa) -> (Mesh, Mesh) {
    let a = start(ca, "a", &[]).await;
    let b = start(ca, "b", &[a.local_addr()]).await;
    eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(DEADLINE).await, "b never finished bootstrap");
    (a, b)
}

/// As [`start`], over a fault-injecting socket of `faults`.
pub async fn start_faulty(ca: &EphemeralCa, faults: &Faults, name: &str, seeds: &[SocketAddr]) -> Mesh {
    start_faulty_with(MeshConfig::for_test(name), ca, faults, seeds).await
}

/// As [`start_faulty`], with `config` (named as the peer is).
pub async fn start_faulty_with(config: MeshConfig, ca: &EphemeralCa, faults: &Faults, seeds: &[SocketAddr]) -> Mesh {
    let name = config.name.clone();
    Mesh::builder()
        .config(config)
        .seeds(seeds.iter().copied())
        .socket(faults.socket("127.0.0.1:0".parse().unwrap()).unwrap())
        .tls(ca.issue(&name).unwrap())
        .start()
        .await
        .unwrap()
}

/// As [`pair`], over fault-injecting sockets of `faults`.
pub async fn faulty_pair(ca: &EphemeralCa, faults: &Faults) -> (Mesh, Mesh) {
    let a = start_faulty(ca, faults, "a", &[]).await;
    let b = start_faulty(ca, faults, "b", &[a.local_addr()]).await;
    eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(DEADLINE).await, "b never finished bootstrap");
    (a, b)
}

/// A seed that never answers: a loopback UDP socket that nobody reads.
/// Keep it until the test ends, so that its port stays taken.
pub fn silent_seed() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}
