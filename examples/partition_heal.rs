//! Five peers over real QUIC on loopback split 3/2; both sides write, delete
//! and race on the same keys; the split heals and the mesh converges. Every
//! operation goes through the invariant checker (`meshcache::check`), which
//! checks I1–I4 after each heal. Several rounds; prints heal-to-convergence
//! per round, its median and maximum, and the checker's report.
//!
//! ```sh
//! cargo run --example partition_heal                 # 5 rounds, 4 s splits
//! cargo run --example partition_heal -- --quick      # or MESHCACHE_QUICK=1
//! cargo run --example partition_heal -- --csv t.csv  # divergent keys over time
//! ```
//!
//! Exits non-zero if the checker finds a violation, a partition leaks, or
//! convergence misses its (generous) deadline.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

mod common;

use common::{Opts, DEADLINE};
use meshcache::check::History;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use meshcache::wait::Wait;
use meshcache::Mesh;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PEERS: usize = 5;
/// Peers `0..SPLIT` form one side, the rest the other.
const SPLIT: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::main("partition_heal", |o| async move { run(&o).await }).await
}

async fn run(o: &Opts) -> Result<bool, String> {
    let (rounds, ops, split_for) =
        if o.quick { (2, 100, Duration::from_secs(1)) } else { (5, 400, Duration::from_secs(4)) };
    println!(
        "partition_heal: {PEERS} peers over QUIC on loopback, split {SPLIT}/{}, {rounds} rounds of {ops} contested keys, \
         splits of {split_for:?} (idle timeout 3 s), seed {}",
        PEERS - SPLIT,
        o.seed
    );
    let ca = EphemeralCa::new().map_err(|e| e.to_string())?;
    let faults = Faults::with_seed(o.seed);
    let peers = common::start_peers(&ca, &faults, common::test_configs(PEERS)).await?;
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr()).collect();
    let (side_a, side_b) = (&peers[..SPLIT], &peers[SPLIT..]);
    let h = History::new();
    let mut rng = SmallRng::seed_from_u64(o.seed);
    let mut csv = String::from("round,ms_since_heal,divergent_keys\n");
    let mut times = Vec::new();
    let mut ok = true;

    for r in 0..rounds {
        let dropped = faults.stats().dropped_cut;
        faults.partition(&addrs[..SPLIT], &addrs[SPLIT..]);
        let write = |side: &[Mesh], rng: &mut SmallRng| side[rng.random_range(0..side.len())].clone();
        for i in 0..ops {
            // Round keys, plus a few hot keys contested in every round.
            let key = if i % 10 == 0 { format!("hot/{}", i / 10 % 8) } else { format!("r{r}/k{i}") };
            let (a, b) = (write(side_a, &mut rng), write(side_b, &mut rng));
            let first_a = rng.random_bool(0.5);
            let (x, y) = if first_a { (&a, &b) } else { (&b, &a) };
            let res = match i % 4 {
                0 => h.put(x, key.clone(), format!("{r}/{i} first")).and(h.put(
                    y,
                    key.clone(),
                    format!("{r}/{i} second"),
                )),
                1 => h.put(x, key.clone(), format!("{r}/{i}")).and(h.delete(y, key.clone())),
                2 => h.delete(x, key.clone()).and(h.put(y, key.clone(), format!("{r}/{i}"))),
                _ => h
                    .put(x, key.clone(), format!("{r}/{i} x"))
                    .and(h.put(y, key.clone(), format!("{r}/{i} y")))
                    .and(h.delete(x, key.clone())),
            };
            res.map_err(|e| e.to_string())?;
            if rng.random_bool(0.2) {
                h.read(&write(&peers, &mut rng), key);
            }
            if i % 16 == 0 {
                // Spread stamps over milliseconds, so that either side wins.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (ma, mb) = (format!("r{r}/only-a"), format!("r{r}/only-b"));
        h.put(&side_a[0], ma.clone(), "a").map_err(|e| e.to_string())?;
        h.put(&side_b[0], mb.clone(), "b").map_err(|e| e.to_string())?;
        // The split lasts `split_for` (part of the scenario: the full run's
        // outlast the idle timeout, so that links die and are redialed).
        // Nothing may cross it: checked at its end, once the cut has
        // dropped traffic that would have crossed.
        tokio::time::sleep(split_for).await;
        Wait::new(DEADLINE)
            .until("the partition drops traffic", || faults.stats().dropped_cut > dropped)
            .await
            .map_err(|e| e.to_string())?;
        let leaked = side_b.iter().any(|p| p.get(ma.as_bytes()).is_some())
            || side_a.iter().any(|p| p.get(mb.as_bytes()).is_some());
        if leaked {
            println!("round {r}: a write crossed the partition");
            ok = false;
        }

        let healed = common::heal(&h, &peers, &faults, o.csv.is_some()).await?;
        for (t, d) in &healed.samples {
            csv.push_str(&format!("{r},{t},{d}\n"));
        }
        // Read every key of the round on every peer, through the checker.
        for k in healed.keys.iter().filter(|k| k.starts_with(format!("r{r}/").as_bytes()) || k.starts_with(b"hot/")) {
            for p in &peers {
                h.read(p, k.clone());
            }
        }
        let report = h.check(&peers);
        match healed.took {
            Ok(t) => {
                times.push(t);
                println!(
                    "round {r}: {} divergent keys at heal; converged {} ms after heal; {} violation(s)",
                    healed.at_heal,
                    t.as_millis(),
                    report.violations.len()
                );
            }
            Err(e) => {
                println!("round {r}, after the heal: {e}");
                ok = false;
            }
        }
        if !report.violations.is_empty() {
            println!("checker: {report}");
            ok = false;
        }
        if !ok {
            break;
        }
    }

    let report = h.check(&peers);
    if !times.is_empty() {
        let max = times.iter().max().copied().unwrap_or_default();
        println!(
            "heal-to-convergence over {} round(s): median {} ms, max {} ms",
            times.len(),
            meshcache::stats::median(&times).as_millis(),
            max.as_millis()
        );
    }
    let fs = faults.stats();
    println!(
        "datagrams: {} passed, {} dropped by the partition; anti-entropy rounds {}",
        fs.passed,
        fs.dropped_cut,
        peers.iter().map(|p| p.stats().ae_rounds).sum::<u64>()
    );
    println!("checker: {report}");
    ok &= report.violations.is_empty();
    if let Some(path) = &o.csv {
        common::write_csv(path, &csv)?;
    }
    for p in &peers {
        p.shutdown().await;
    }
    Ok(ok)
}
