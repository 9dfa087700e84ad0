//! A partition far longer than every timeout (20 s; the peers' idle timeout
//! is 3 s, so every link across it dies and is redialed), with enough
//! deletes on one side to overflow its tombstone budget: collection is
//! paused (the other side is unsynced), so that side compacts its
//! tombstones into `clear_below`, flushing older values. After the heal the
//! invariant checker (`meshcache::check`) must find no resurrection (I3) and
//! no other violation. Prints tombstones held, compactions and values
//! flushed, per peer.
//!
//! ```sh
//! cargo run --example long_partition                 # 20 s split
//! cargo run --example long_partition -- --quick      # 6 s; or MESHCACHE_QUICK=1
//! cargo run --example long_partition -- --csv t.csv  # divergent keys over time
//! ```
//!
//! Exits non-zero if the checker finds a violation, no compaction happened,
//! or convergence misses its (generous) deadline.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod common;

use common::{Opts, DEADLINE};
use meshcache::check::History;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::Mesh;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The deleting side's tombstone budget.
const BUDGET: usize = 64;

fn line(peers: &[Mesh], what: &str, f: impl Fn(&Mesh) -> String) {
    let cells: Vec<String> = peers.iter().map(|p| format!("{} {}", p.id().name, f(p))).collect();
    println!("  {what:<24} {}", cells.join(", "));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::main("long_partition", |o| async move { run(&o).await }).await
}

async fn run(o: &Opts) -> Result<bool, String> {
    let (split_for, preload) = if o.quick { (Duration::from_secs(6), 300) } else { (Duration::from_secs(20), 1000) };
    println!(
        "long_partition: 4 peers over QUIC on loopback split 2/2 for {split_for:?} (idle timeout 3 s); \
         side A (p0, p1) has a tombstone budget of {BUDGET} and deletes {} of {preload} keys; seed {}",
        preload / 2,
        o.seed
    );
    let ca = EphemeralCa::new().map_err(|e| e.to_string())?;
    let faults = Faults::with_seed(o.seed);
    // p0 and p1 (side A) with a tombstone budget of BUDGET; p2 and p3
    // (side B) with the default.
    let mut configs = common::test_configs(4);
    for c in &mut configs[..2] {
        c.max_tombstones = BUDGET;
    }
    let peers = common::start_peers(&ca, &faults, configs).await?;
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr()).collect();
    let (side_a, side_b) = (&peers[..2], &peers[2..]);
    let h = History::new();
    let mut rng = SmallRng::seed_from_u64(o.seed);
    let mut ok = true;

    for i in 0..preload {
        h.put(&peers[i % 4], format!("k{i}"), format!("preload {i}")).map_err(|e| e.to_string())?;
    }
    h.wait_converged(&peers, DEADLINE).await.ok_or("the preload never converged")?;
    println!("preloaded {preload} keys on every peer");

    faults.partition(&addrs[..2], &addrs[2..]);
    let t_split = Instant::now();
    // Spread the work over the split, in slices: side A deletes half the
    // keys and writes new ones; side B updates keys (some of which A
    // deletes) and deletes a few of its own.
    let slices = 10;
    let mut order: Vec<usize> = (0..preload).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let (to_delete, rest) = order.split_at(preload / 2);
    let mut peak_tombstones = [0usize; 4];
    for s in 0..slices {
        let chunk = |v: &[usize]| -> Vec<usize> {
            let per = v.len().div_ceil(slices);
            v.iter().skip(s * per).take(per).copied().collect()
        };
        for i in chunk(to_delete) {
            h.delete(&side_a[i % 2], format!("k{i}")).map_err(|e| e.to_string())?;
            if rng.random_bool(0.2) {
                // A concurrent update on the other side: it races the delete.
                h.put(&side_b[i % 2], format!("k{i}"), format!("b update {s}")).map_err(|e| e.to_string())?;
            }
        }
        for i in chunk(rest) {
            if rng.random_bool(0.3) {
                h.put(&side_b[i % 2], format!("k{i}"), format!("b update {s}")).map_err(|e| e.to_string())?;
            } else if rng.random_bool(0.05) {
                h.delete(&side_b[i % 2], format!("k{i}")).map_err(|e| e.to_string())?;
            }
            h.read(&peers[rng.random_range(0..4)], format!("k{i}"));
        }
        for j in 0..10 {
            h.put(&side_a[j % 2], format!("a-new/{s}/{j}"), "a").map_err(|e| e.to_string())?;
        }
        for (n, p) in peers.iter().enumerate() {
            peak_tombstones[n] = peak_tombstones[n].max(p.stats().store.tombstones);
        }
        let until = split_for.mul_f64((s + 1) as f64 / slices as f64);
        tokio::time::sleep(until.saturating_sub(t_split.elapsed())).await;
    }
    let links: Vec<usize> = peers.iter().map(|p| p.stats().connected).collect();
    println!("split held for {} ms; links up per peer at the end: {links:?} (1 = only its own side)", {
        t_split.elapsed().as_millis()
    });
    println!("before the heal:");
    line(&peers, "tombstones (peak)", |p| {
        let n = peers.iter().position(|q| q.id() == p.id()).unwrap_or(0);
        format!("{} ({})", p.stats().store.tombstones, peak_tombstones[n])
    });
    line(&peers, "compactions", |p| p.stats().store.compactions.to_string());
    line(&peers, "values flushed", |p| p.stats().store.compacted_values.to_string());
    let compactions_a: u64 = side_a.iter().map(|p| p.stats().store.compactions).sum();
    if compactions_a == 0 {
        println!("side A never compacted: the example did not exercise the tombstone budget");
        ok = false;
    }

    let healed = common::heal(&h, &peers, &faults, o.csv.is_some()).await?;
    match healed.took {
        Ok(t) => {
            println!("healed: {} divergent keys at heal; converged {} ms after heal", healed.at_heal, t.as_millis())
        }
        Err(e) => {
            println!("healed: {e}");
            ok = false;
        }
    }
    for k in &healed.keys {
        for p in &peers {
            h.read(p, k.clone());
        }
    }
    let report = h.check(&peers);
    println!("after convergence (and tombstone collection, which resumes once every member is synced again):");
    line(&peers, "tombstones", |p| p.stats().store.tombstones.to_string());
    line(&peers, "tombstones collected", |p| p.stats().store.collected_tombstones.to_string());
    line(&peers, "compactions", |p| p.stats().store.compactions.to_string());
    line(&peers, "values flushed", |p| p.stats().store.compacted_values.to_string());
    line(&peers, "live entries", |p| p.stats().store.entries.to_string());
    let i3 = report.violations.iter().filter(|v| v.invariant == "I3").count();
    println!("resurrections (I3): {i3}");
    println!("checker: {report}");
    ok &= report.violations.is_empty();
    if let Some(path) = &o.csv {
        let mut csv = String::from("ms_since_heal,divergent_keys\n");
        for (t, d) in &healed.samples {
            csv.push_str(&format!("{t},{d}\n"));
        }
        common::write_csv(path, &csv)?;
    }
    for p in &peers {
        p.shutdown().await;
    }
    Ok(ok)
}
