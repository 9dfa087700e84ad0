//! `Mesh::get_or_load`: one fill per key on a peer, one load per key
//! across the mesh, and what happens when the loader fails, a caller gives
//! up, or the peer holding the lease is cut off. In-process peers over real
//! QUIC on loopback; waits are bounded by deadlines, nothing is timed.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wait::{eventually, DEADLINE};
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::{LoadError, Mesh, MeshConfig};
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("the backing store is down")]
struct Down;

/// Counts loads per key.
#[derive(Default, Clone)]
struct Loads(Arc<Mutex<HashMap<String, usize>>>);

impl Loads {
    fn loader(
        &self,
        key: &str,
        took: Duration,
    ) -> impl std::future::Future<Output = Result<Bytes, Down>> + Send + 'static {
        *self.0.lock().entry(key.to_string()).or_default() += 1;
        let value = Bytes::from(format!("loaded:{key}"));
        async move {
            tokio::time::sleep(took).await;
            Ok(value)
        }
    }

    fn of(&self, key: &str) -> usize {
        self.0.lock().get(key).copied().unwrap_or(0)
    }
}

async fn peers(n: usize) -> Vec<Mesh> {
    let ca = EphemeralCa::new().unwrap();
    let first = common::mesh::start(&ca, "p0", &[]).await;
    let mut all = vec![first.clone()];
    for i in 1..n {
        all.push(common::mesh::start(&ca, &format!("p{i}"), &[first.local_addr()]).await);
    }
    for m in &all {
        assert!(m.wait_ready(DEADLINE).await);
    }
    eventually("full mesh", || all.iter().all(|m| m.stats().connected == n - 1)).await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_one_peer_share_one_load_and_one_error() {
    let mesh = peers(1).await.remove(0);
    let loads = Loads::default();
    let mut callers = Vec::new();
    for _ in 0..64 {
        let (mesh, loads) = (mesh.clone(), loads.clone());
        callers.push(tokio::spawn(async move {
            mesh.get_or_load("k", None, move || loads.loader("k", Duration::from_millis(20))).await
        }));
    }
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap(), Bytes::from_static(b"loaded:k"));
    }
    assert_eq!(loads.of("k"), 1, "64 callers, one load");
    assert_eq!(mesh.get("k").as_deref(), Some(&b"loaded:k"[..]), "the value was stored");
    // A cached key does not load again.
    let again = mesh.get_or_load("k", None, || async { Err::<Bytes, _>(Down) }).await.unwrap();
    assert_eq!(again, Bytes::from_static(b"loaded:k"));

    // A loader error reaches every caller that shared the fill, and is not
    // remembered.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..16 {
        let (mesh, calls) = (mesh.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            mesh.get_or_load("bad", None, move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err::<Bytes, _>(Down)
                }
            })
            .await
        }));
    }
    for c in callers {
        match c.await.unwrap() {
            Err(LoadError::Loader(e)) => assert_eq!(e.to_string(), "the backing store is down"),
            other => panic!("expected the loader's error, got {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(mesh.get("bad").is_none());
    let ok = mesh.get_or_load("bad", None, || async { Ok::<_, Down>(Bytes::from_static(b"fine")) }).await;
    assert_eq!(ok.unwrap(), Bytes::from_static(b"fine"), "the next call loads again");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_does_not_cancel_the_load() {
    let mesh = peers(1).await.remove(0);
    let started = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let first = tokio::spawn({
        let (mesh, started, finish) = (mesh.clone(), started.clone(), finish.clone());
        async move {
            mesh.get_or_load("slow", Some(Duration::from_secs(60)), move || async move {
                started.notify_one();
                finish.notified().await;
                Ok::<_, Down>(Bytes::from_static(b"v"))
            })
            .await
        }
    });
    started.notified().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // A second caller joins the load still running: its loader never runs.
    let second = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get_or_load("slow", None, || async { Err::<Bytes, _>(Down) }).await }
    });
    finish.notify_one();
    assert_eq!(second.await.unwrap().unwrap(), Bytes::from_static(b"v"));
    assert_eq!(mesh.stats().fill_loads, 1);
    mesh.shutdown().await;
}

/// Three peers, callers on each, keys cold everywhere: far fewer loads
/// than callers or peers, every caller gets the value, and the peers
/// agree. (How close to one load per key is measured by the benchmark.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_is_loaded_once_per_race_not_per_caller() {
    let meshes = peers(3).await;
    let loads = Loads::default();
    const KEYS: usize = 50;
    const CALLERS: usize = 8;
    let mut callers = Vec::new();
    for m in &meshes {
        for c in 0..CALLERS {
            let (m, loads) = (m.clone(), loads.clone());
            callers.push(tokio::spawn(async move {
                for k in 0..KEYS {
                    let key = format!("cold:{}", (k + c) % KEYS);
                    let l = loads.clone();
                    let k2 = key.clone();
                    let v = m.get_or_load(key.clone(), None, move || l.loader(&k2, Duration::from_millis(20))).await;
                    assert_eq!(v.unwrap(), Bytes::from(format!("loaded:{key}")));
                }
            }));
        }
    }
    for c in callers {
        c.await.unwrap();
    }
    let per_key: Vec<usize> = (0..KEYS).map(|k| loads.of(&format!("cold:{k}"))).collect();
    let total: usize = per_key.iter().sum();
    assert!(per_key.iter().all(|&n| (1..=meshes.len()).contains(&n)), "loads per key: {per_key:?}");
    assert!(total < KEYS * meshes.len(), "every peer loaded every key: {per_key:?}");
    for m in &meshes {
        for k in 0..KEYS {
            let key = format!("cold:{k}");
            assert_eq!(m.get(&key), Some(Bytes::from(format!("loaded:{key}"))));
        }
    }
    for m in meshes {
        m.shutdown().await;
    }
}

/// The lease holder is cut off while it loads: the other peer waits out
/// the lease, then loads the key itself. While the lease holds it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_peer_cut_off_runs_out_and_is_taken_over() {
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(7);
    let lease = Duration::from_millis(800);
    let start = |name: &'static str, seeds: Vec<std::net::SocketAddr>| {
        let (ca, faults) = (&ca, &faults);
        async move {
            Mesh::builder()
                .config(MeshConfig::for_test(name))
                .seeds(seeds)
                .socket(faults.socket("127.0.0.1:0".parse().unwrap()).unwrap())
                .tls(ca.issue(name).unwrap())
                .fill_lease(lease)
                .start()
                .await
                .unwrap()
        }
    };
    let a = start("a", vec![]).await;
    let b = start("b", vec![a.local_addr()]).await;
    eventually("connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(DEADLINE).await);

    // A takes the lease and its loader hangs.
    let started = Arc::new(Notify::new());
    let hang = tokio::spawn({
        let (a, started) = (a.clone(), started.clone());
        async move {
            a.get_or_load("k", None, move || async move {
                started.notify_one();
                std::future::pending::<Result<Bytes, Down>>().await
            })
            .await
        }
    });
    started.notified().await;
    eventually("B knows A's lease", || b.stats().fill_leases == 1).await;
    assert!(a.get("k").is_none() && b.get("k").is_none(), "a lease is never a value");
    assert_eq!((a.len(), b.len()), (0, 0));
    // B's callers wait on A's lease: while it is renewed, B loads nothing.
    let b_loads = Arc::new(AtomicUsize::new(0));
    let waiting = tokio::spawn({
        let (b, n) = (b.clone(), b_loads.clone());
        async move {
            b.get_or_load("k", None, move || {
                n.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Down>(Bytes::from_static(b"from-b")) }
            })
            .await
        }
    });
    // Two lease periods pass with A alive and renewing: B still waits.
    let renewed_past = tokio::time::Instant::now() + 2 * lease;
    common::wait::holds_until(
        "B does not load while A's lease is renewed",
        || b_loads.load(Ordering::SeqCst) == 0 && !waiting.is_finished(),
        "two lease periods",
        || tokio::time::Instant::now() >= renewed_past,
    )
    .await;
    // A is cut off: its renewals stop reaching B, the lease runs out there,
    // and B loads.
    faults.partition(&[a.local_addr()], &[b.local_addr()]);
    let got = tokio::time::timeout(DEADLINE, waiting).await.expect("B takes over").unwrap().unwrap();
    assert_eq!(got, Bytes::from_static(b"from-b"));
    assert_eq!(b_loads.load(Ordering::SeqCst), 1);
    assert!(!hang.is_finished(), "A's load is still running");
    hang.abort();
    faults.heal();
    a.shutdown().await;
    b.shutdown().await;
}

/// Under a partition each side loads a cold key once (its own lease), and
/// after the heal the two values converge like any two writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_of_a_partition_loads_once_and_the_values_converge() {
    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(11);
    let (a, b) = common::mesh::faulty_pair(&ca, &faults).await;
    faults.partition(&[a.local_addr()], &[b.local_addr()]);
    let mut callers = Vec::new();
    for (m, side) in [(&a, "a"), (&b, "b")] {
        for _ in 0..16 {
            let m = m.clone();
            callers.push(tokio::spawn(async move {
                m.get_or_load("k", None, move || async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, Down>(Bytes::from(format!("from-{side}")))
                })
                .await
                .unwrap()
            }));
        }
    }
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!((a.stats().fill_loads, b.stats().fill_loads), (1, 1), "one load per side");
    faults.heal();
    eventually("the values converge", || a.get("k").is_some() && a.get("k") == b.get("k")).await;
    a.shutdown().await;
    b.shutdown().await;
}
