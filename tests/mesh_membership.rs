//! Membership over real QUIC: members are removed only by goodbye, by a
//! newer incarnation, or by an operator; never by a timeout. A superseded
//! incarnation is told so and stops.

mod common;

use std::time::Duration;

use common::mesh::start;
use common::wait::{eventually, holds_until, DEADLINE};
use meshcache::membership::Status;
use meshcache::transport::certs::EphemeralCa;
use meshcache::{Mesh, MeshConfig, Readiness, Seed};

fn status_of(m: &Mesh, name: &str) -> Option<(Status, bool)> {
    m.members().into_iter().find(|s| s.id.name == name).map(|s| (s.status, s.connected))
}

/// A window that ends once each of `peers` has completed `rounds` more
/// anti-entropy rounds and at least `at_least` has passed: rounds that
/// would let a peer collect a tombstone were nobody else holding it back.
fn rounds_and_time(peers: &[&Mesh], rounds: u64, at_least: Duration) -> impl FnMut() -> bool {
    let from: Vec<(Mesh, u64)> = peers.iter().map(|p| ((*p).clone(), p.stats().ae_rounds)).collect();
    let start = meshcache::env::stopwatch();
    move || start.elapsed() >= at_least && from.iter().all(|(p, n)| p.stats().ae_rounds >= n + rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_pauses_collection_until_it_restarts_or_is_forgotten() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let b = start(&ca, "b", &[a.local_addr()]).await;
    let c = start(&ca, "c", &[a.local_addr()]).await;
    eventually("full mesh", || [&a, &b, &c].iter().all(|m| m.stats().connected == 2)).await;
    c.halt().await;
    eventually("c's links noticed dead", || a.stats().connected == 1 && b.stats().connected == 1).await;
    // Far past every timeout, c is still a member and pauses collection.
    // The window is one the property must hold through: past the link
    // timeouts and redials, and long enough for anti-entropy rounds between
    // a and b that would have let a collect the tombstone without c.
    a.insert("k", "v").unwrap();
    a.invalidate("k").unwrap();
    let paused = || {
        let st = a.stats().store;
        status_of(&a, "c") == Some((Status::Active, false)) && st.tombstones == 1 && st.collected_tombstones == 0
    };
    let window = rounds_and_time(&[&a, &b], 3, Duration::from_secs(4));
    holds_until("c stays a member and collection waits for it", paused, "a window of rounds and time", window).await;

    // c restarts as a new, empty incarnation: it supersedes the old one.
    let c2 = start(&ca, "c", &[b.local_addr()]).await;
    assert!(c2.wait_ready(DEADLINE).await);
    eventually("new incarnation known", || a.members().iter().any(|m| m.id == *c2.id() && m.connected)).await;
    eventually("collection resumes", || a.stats().store.tombstones == 0 && b.stats().store.tombstones == 0).await;
    // Collected on at least one side; the other may have dropped its copy
    // on that side's refusal reply instead (the same tombstone, refused by
    // the floor its collection raised).
    let (sa, sb) = (a.stats().store, b.stats().store);
    assert!(sa.collected_tombstones + sb.collected_tombstones >= 1, "{sa:?} {sb:?}");
    assert_eq!(sa.collected_tombstones + sa.refusal_drops, 1, "{sa:?}");

    // An operator forgets a member that is gone for good.
    c2.halt().await;
    a.insert("j", "v").unwrap();
    a.invalidate("j").unwrap();
    let window = rounds_and_time(&[&a, &b], 3, Duration::from_secs(1));
    holds_until("collection waits for c", || a.stats().store.tombstones == 1, "a window of rounds and time", window)
        .await;
    assert!(a.forget("c"));
    eventually("forget gossips to b", || status_of(&b, "c").map(|s| s.0) == Some(Status::Forgotten)).await;
    eventually("collection resumes after forget", || a.stats().store.tombstones == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_incarnation_is_told_so_and_stops() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let old = start(&ca, "z", &[a.local_addr()]).await;
    eventually("old z joined", || a.stats().connected == 1).await;
    assert!(old.wait_ready(DEADLINE).await);
    assert_eq!(old.readiness(), Readiness::Ready);
    // A second process with the same name starts later: it is newer.
    let new = start(&ca, "z", &[a.local_addr()]).await;
    eventually("a talks to the new z", || a.members().iter().any(|m| m.id == *new.id() && m.connected)).await;
    tokio::time::timeout(DEADLINE, old.stopped()).await.expect("the old incarnation stops");
    assert!(old.replica().is_superseded());
    assert_eq!(old.readiness(), Readiness::Superseded);
    #[cfg(feature = "server")]
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        tokio::spawn(meshcache::http::serve(listener, old.clone(), None, std::future::pending::<()>()));
        let (status, body) = common::http::request(http, "GET", "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("superseded: a newer incarnation of this name joined"), "{body}");
    }
    assert!(old.insert("x", "y").is_err(), "a superseded peer refuses writes");
    // The old incarnation may learn it was replaced before the new one's
    // first round (its bootstrap) is over.
    assert!(new.wait_ready(DEADLINE).await);
    new.insert("x", "y").unwrap();
    eventually("new z replicates", || a.get(b"x").is_some()).await;
    a.shutdown().await;
    new.shutdown().await;
}

/// Seeds by name: `localhost` is looked up with the system resolver and the
/// peer joins through what it resolves to; a name that cannot resolve
/// (`.invalid`, RFC 6761) is counted and looked up again with backoff, and
/// never stops the peer. (That every address a name resolves to is a seed
/// is checked on the connection machine, `src/node/links/tests.rs`:
/// `localhost` may resolve to one address only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_by_name_are_resolved_and_a_name_that_does_not_resolve_is_retried() {
    let ca = EphemeralCa::new().unwrap();
    let a = start(&ca, "a", &[]).await;
    let port = a.local_addr().port();
    let seeds: Vec<Seed> =
        vec!["no-such-seed.invalid:7946".parse().unwrap(), format!("localhost:{port}").parse().unwrap()];
    let b = Mesh::builder().config(MeshConfig::for_test("b")).seeds(seeds).tls(ca.issue("b").unwrap()).start().await;
    let b = b.unwrap();
    assert!(b.wait_ready(DEADLINE).await, "b never joined through the name localhost");
    eventually("a and b linked", || a.stats().connected == 1 && b.stats().connected == 1).await;
    b.insert("k", "v").unwrap();
    eventually("b's write reaches a", || a.get("k").as_deref() == Some(&b"v"[..])).await;
    eventually("the name that does not resolve is looked up again", || b.stats().seed_lookups_failed >= 3).await;
    assert_eq!(a.stats().seed_lookups_failed, 0, "a has no seeds");
    assert_eq!(b.stats().connected, 1, "b still runs, linked to a");
}
