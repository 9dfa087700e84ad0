//! A steady write load over a flaky network: 30% packet loss, delay and
//! jitter on every link between four peers over real QUIC on loopback. Every
//! write, delete and read goes through the invariant checker
//! (`meshcache::check`). After each burst of load the mesh must converge
//! with the loss still on; at the end the network heals and convergence is
//! checked again. Prints load-stop-to-convergence per round, its median and
//! maximum, and the checker's report.
//!
//! ```sh
//! cargo run --example flaky_network                 # 3 rounds of 5 s
//! cargo run --example flaky_network -- --quick      # or MESHCACHE_QUICK=1
//! cargo run --example flaky_network -- --csv t.csv  # divergent keys over time
//! ```
//!
//! Exits non-zero if the checker finds a violation or convergence misses its
//! (generous) deadline.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::Opts;
use meshcache::check::History;
use meshcache::transport::certs::EphemeralCa;
use meshcache::transport::faults::Faults;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const LOSS: f64 = 0.3;
const DELAY: Duration = Duration::from_millis(2);
const JITTER: Duration = Duration::from_millis(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    common::main("flaky_network", |o| async move { run(&o).await }).await
}

async fn run(o: &Opts) -> Result<bool, String> {
    // Peers, rounds, load per round (time and count bounds), key pool.
    let (n, rounds, load_for, max_ops, pool) = if o.quick {
        (3, 2, Duration::from_millis(1500), 1500, 200)
    } else {
        (4, 3, Duration::from_secs(5), 5000, 500)
    };
    println!(
        "flaky_network: {n} peers over QUIC on loopback, {:.0}% loss + {DELAY:?} delay + up to {JITTER:?} jitter on \
         every link; {rounds} rounds of load (~1000 ops/s, at most {load_for:?} or {max_ops} ops) on {pool} keys; \
         seed {}",
        LOSS * 100.0,
        o.seed
    );
    let ca = EphemeralCa::new().map_err(|e| e.to_string())?;
    let faults = Faults::with_seed(o.seed);
    let peers = common::start_peers(&ca, &faults, common::test_configs(n)).await?;
    faults.drop_rate(LOSS);
    faults.delay(DELAY);
    faults.jitter(JITTER);
    let h = History::new();
    let mut rng = SmallRng::seed_from_u64(o.seed);
    let keys: Vec<Bytes> = (0..pool).map(|i| Bytes::from(format!("k{i}"))).collect();
    let mut csv = String::from("round,ms_since_load_stopped,divergent_keys\n");
    let mut times = Vec::new();
    let mut ok = true;

    for r in 0..rounds {
        let t_load = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = o.csv.as_ref().map(|_| common::sample(peers.clone(), keys.clone(), t_load, stop.clone()));
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut done = 0;
        while done < max_ops && t_load.elapsed() < load_for {
            tick.tick().await;
            for _ in 0..10 {
                let p = &peers[rng.random_range(0..n)];
                let key = keys[rng.random_range(0..pool)].clone();
                let x: f64 = rng.random();
                if x < 0.75 {
                    h.put(p, key, format!("{r}/{done}")).map_err(|e| e.to_string())?;
                } else if x < 0.9 {
                    h.delete(p, key).map_err(|e| e.to_string())?;
                } else {
                    h.read(p, key);
                }
                done += 1;
            }
        }
        let load_ms = t_load.elapsed().as_millis() as u64;
        let at_stop = History::divergent(&peers, &keys);
        let took = common::converge(&h, &peers).await;
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = sampler {
            for (t, d) in s.await.map_err(|e| e.to_string())? {
                csv.push_str(&format!("{r},{},{d}\n", t as i64 - load_ms as i64));
            }
        }
        for k in &keys {
            h.read(&peers[rng.random_range(0..n)], k.clone());
        }
        let report = h.check(&peers);
        match took {
            Ok(t) => {
                times.push(t);
                println!(
                    "round {r}: {done} ops in {load_ms} ms; {at_stop} divergent keys when the load stopped; \
                     converged {} ms later (loss still on); {} violation(s)",
                    t.as_millis(),
                    report.violations.len()
                );
            }
            Err(e) => {
                println!("round {r}, under loss: {e}");
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
    if !times.is_empty() {
        let max = times.iter().max().copied().unwrap_or_default();
        println!(
            "load-stop-to-convergence under {:.0}% loss over {} round(s): median {} ms, max {} ms",
            LOSS * 100.0,
            times.len(),
            meshcache::stats::median(&times).as_millis(),
            max.as_millis()
        );
    }
    let fs = faults.stats();
    println!(
        "datagrams: {} sent at once, {} delayed, {} lost ({:.1}%)",
        fs.passed,
        fs.delayed,
        fs.dropped_loss,
        100.0 * fs.dropped_loss as f64 / (fs.passed + fs.delayed + fs.dropped_loss).max(1) as f64
    );

    // Heal, write a little more, and converge on a clean network.
    faults.heal();
    for (i, p) in peers.iter().enumerate() {
        h.put(p, format!("after-heal/{i}"), "x").map_err(|e| e.to_string())?;
    }
    match common::converge(&h, &peers).await {
        Ok(t) => println!("after heal: converged in {} ms", t.as_millis()),
        Err(e) => {
            println!("after heal: {e}");
            ok = false;
        }
    }
    let report = h.check(&peers);
    let st: Vec<_> = peers.iter().map(|p| p.stats()).collect();
    println!(
        "anti-entropy rounds {}, failed {}; push batches {}",
        st.iter().map(|s| s.ae_rounds).sum::<u64>(),
        st.iter().map(|s| s.ae_failed).sum::<u64>(),
        st.iter().map(|s| s.push_batches_sent).sum::<u64>()
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
