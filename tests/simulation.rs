//! Seeded simulation of the core under partitions, loss, crashes, restarts,
//! skew, TTLs, FLUSHALL and a tiny tombstone budget. See `sim/mod.rs`.
//!
//! - `MESHCACHE_SIM_SCHEDULES=N` runs N schedules (default 10,000).
//! - `MESHCACHE_SIM_START=S` starts at seed S (default 0).
//! - `MESHCACHE_SIM_SEED=S` replays seed S alone and prints its trace.
//!
//! For long runs, use the release profile:
//! `MESHCACHE_SIM_SCHEDULES=200000 cargo test --release --test simulation`.

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be an integer, got {v:?}")))
}

#[test]
fn random_schedules_keep_every_invariant() {
    if let Some(seed) = env_u64("MESHCACHE_SIM_SEED") {
        let s = sim::run_seed(seed, true);
        println!("{}", s.trace.as_deref().unwrap_or(""));
        println!("coverage: {:?}", s.coverage);
        assert!(s.violations.is_empty(), "seed {seed}: {:#?}", s.violations);
        return;
    }
    let count = env_u64("MESHCACHE_SIM_SCHEDULES").unwrap_or(10_000);
    let start = env_u64("MESHCACHE_SIM_START").unwrap_or(0);
    let next = AtomicU64::new(start);
    let failures: Mutex<Vec<(u64, Vec<sim::Violation>)>> = Mutex::new(Vec::new());
    let total: Mutex<sim::Coverage> = Mutex::new(sim::Coverage::default());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    break;
                }
                let s = sim::run_seed(seed, false);
                {
                    let mut t = total.lock().unwrap();
                    let c = &s.coverage;
                    t.collected += c.collected;
                    t.compactions += c.compactions;
                    t.refusals += c.refusals;
                    t.reply_drops += c.reply_drops;
                    t.restarts += c.restarts;
                    t.loading_refusals += c.loading_refusals;
                    t.flushes += c.flushes;
                    t.lost_to_reply += (c.lost_to_reply > 0) as u64;
                    t.long_partitions += c.long_partitions;
                }
                if !s.violations.is_empty() {
                    failures.lock().unwrap().push((seed, s.violations));
                }
            });
        }
    });
    let total = total.into_inner().unwrap();
    println!("{count} schedules from seed {start}: {total:?}");
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    if let Some((seed, v)) = failures.first() {
        let kinds: Vec<&str> = v.iter().map(|x| x.kind).collect();
        panic!(
            "{} of {count} schedules failed; first: seed {seed}: {kinds:?}\n{:#?}\nreplay: MESHCACHE_SIM_SEED={seed} cargo test --test simulation -- --nocapture",
            failures.len(),
            v
        );
    }
    // The run must exercise the protocol's hard parts, or it proves little.
    if count >= 1_000 {
        assert!(total.collected > 0 && total.compactions > 0 && total.restarts > 0, "{total:?}");
        assert!(total.reply_drops > 0 && total.refusals > 0 && total.flushes > 0, "{total:?}");
        assert!(total.long_partitions > 0 && total.loading_refusals > 0, "{total:?}");
    }
}
