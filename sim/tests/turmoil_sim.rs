//! Whole meshes over QUIC in turmoil's simulated network and virtual time.
//!
//! Every peer is a real [`Mesh`] (quinn, TLS, pushes, anti-entropy, the
//! membership view) running in its own turmoil host; quinn's UDP goes
//! through an adapter over `turmoil::net::UdpSocket` (`sim/src/`),
//! and the tokio clock is turmoil's paused one. So keep-alives, the 3 s
//! idle timeout, anti-entropy rounds, tick work and dial timeouts all run
//! in virtual time, and partitions of minutes to hours take seconds.
//!
//! - `long_partition_no_resurrection`: three peers, one isolated for two
//!   virtual hours while the other two write and delete with a tombstone
//!   budget of 8 (so they compact); after healing, the mesh converges and
//!   nothing deleted comes back.
//! - `a_peer_cut_off_links_again_soon_after_the_cut_lifts`: one of three
//!   peers cut off for 5 s to an hour, six times; each time the mesh is
//!   whole again within 2 virtual seconds of the cut lifting (how often a
//!   cut-off peer's dials probe, `src/node/rtt.rs`).
//! - `random_schedules`: seeded schedules on 3 to 5 peers (some with a
//!   budget of 3 tombstones): random splits, isolations, one-way cuts, held (delayed)
//!   links, heals, writes, deletes and races on 8 keys, reads, sleeps of up
//!   to an hour, and crashes and restarts (a new, empty incarnation); in
//!   half the schedules, some peers have room for one to three values and
//!   evict all the time (a miss is then allowed on them, an older value
//!   never). After
//!   the final heal, every peer must converge and [`History::check`] must
//!   find no violation. 200 schedules by default (optimized builds only:
//!   `cargo test --release -p meshcache-sim`);
//!   `MESHCACHE_TURMOIL_SCHEDULES=N` runs more (`MESHCACHE_TURMOIL_FIRST=K`
//!   starts at the K-th, to split a long run into chunks), and a failing seed is
//!   replayed (with its plan printed) by
//!   `MESHCACHE_TURMOIL_SEED=S cargo test --release -p meshcache-sim random_schedules -- --nocapture`
//!   (the exact command is printed with each failure).
//!
//! Every run replays exactly from its seed: each peer's clock and random
//! generator come from a seeded [`meshcache::env::Env`] over turmoil's
//! virtual time (with per-incarnation skew in half the schedules, and a
//! wall clock a thousand times slower than virtual time in a quarter, so
//! that writes crowd into one millisecond), quinn's own draws are seeded
//! through it, the TLS handshakes use a seeded CA and crypto provider
//! (`sim/src/seeded_tls.rs`), and tokio's `select!` order is seeded by
//! turmoil (`.cargo/config.toml` sets `tokio_unstable` for that).
//! `a_seed_replays_exactly` checks it: three seeds, twice each, must end
//! with equal trace hashes over every datagram delivered and every client
//! operation with its stamp and result.
//!
//! Planted bugs (`store::Bug`, the `testing` feature) must be caught: a
//! reversed LWW tie-break on one peer by the random schedules, no floor
//! filter and no refusal reply by `lagging_restart_behind_a_partition`.
//! `MESHCACHE_TURMOIL_BUG=NAME` plants one in a replay or a long run.
//!
//! A crash loses a peer's writes that no other peer holds yet; History
//! would rightly call that a lost write, so a planned crash waits until
//! another live peer covers the victim's registers, and is skipped if none
//! does within 20 virtual seconds. A restarted peer is a new process: reads
//! are recorded (for the monotonic-read check) only on peers' first
//! incarnations.

use meshcache_sim as tsim;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshcache::check::History;
use meshcache::store::Bug;
use meshcache::wait::Wait;
use meshcache::Mesh;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tsim::{Clocks, Layout, Net};

const KEYS: usize = 8;
/// With 8 keys, a budget of 3 tombstones is exceeded often enough.
const SMALL_BUDGET: usize = 3;
const BIG_BUDGET: usize = 1_000_000;
/// Virtual time allowed from the final heal to convergence: generous, as a
/// deadline should be (a converging mesh takes seconds).
const CONVERGE: Duration = Duration::from_secs(3 * 3600);

fn key(k: usize) -> String {
    format!("k{k}")
}

/// Waits (virtual time) until every live peer has booted and sees `n - 1`
/// connections.
async fn wait_full_mesh(net: &Net, n: usize, within: Duration) -> Result<(), String> {
    let missing = || {
        let live = net.live();
        if live.len() == n && live.iter().all(|m| m.is_ready() && m.stats().connected == n - 1) {
            return None;
        }
        let s: Vec<String> = live
            .iter()
            .map(|m| format!("{}: ready {} connected {}", m.id().name, m.is_ready(), m.stats().connected))
            .collect();
        Some(format!("{s:?}"))
    };
    Wait::new(within)
        .every(Duration::from_millis(50))
        .until("a full mesh", missing)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Heals, waits for convergence (virtual time, returned) and checks.
async fn heal_converge_check(net: &Net, h: &History) -> Result<(Duration, Duration), String> {
    let t0 = tokio::time::Instant::now();
    let real = Instant::now();
    let n = net.names.len();
    heal_all(net);
    let live = net.live();
    if live.len() != n {
        return Err(format!("{} of {n} peers live at the end", live.len()));
    }
    let converged = tokio::time::timeout(CONVERGE, async {
        // Converged digests among booted peers.
        loop {
            if live.iter().all(Mesh::is_ready) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.wait_converged(&live, Duration::from_secs(600)).await
    })
    .await;
    let took = (t0.elapsed(), real.elapsed());
    match converged {
        Ok(Some(_)) => {}
        _ => {
            let roots: Vec<String> = live
                .iter()
                .map(|m| {
                    format!(
                        "{} ready {} connected {} root {:?}",
                        m.id().name,
                        m.is_ready(),
                        m.stats().connected,
                        m.replica().store().root()
                    )
                })
                .collect();
            return Err(format!("no convergence within {CONVERGE:?} (virtual) of the heal: {roots:?}"));
        }
    }
    let report = h.check(&live);
    if !report.violations.is_empty() {
        return Err(format!("invariants broken: {report}"));
    }
    Ok(took)
}

/// Three peers with this tombstone budget each, no memory bound, no loss
/// and true clocks, for at most `duration` of virtual time.
fn three_peers(seed: u64, budget: usize, duration: Duration) -> Layout {
    Layout {
        seed,
        peers: 3,
        budgets: vec![budget; 3],
        max_bytes: vec![None; 3],
        duration,
        loss: 0.0,
        keep_trace: false,
        bugs: Vec::new(),
        clocks: Clocks { skew_ms: 0, slowdown: 1, restart_lag_ms: 0 },
    }
}

fn heal_all(net: &Net) {
    for a in &net.names {
        for b in &net.names {
            if a < b {
                // `release` delivers held datagrams and repairs both ways.
                turmoil::release(a.as_str(), b.as_str());
            }
        }
    }
}

fn compactions(net: &Net) -> u64 {
    net.live().iter().map(|m| m.stats().store.compactions).sum::<u64>() + *net.lost_compactions.lock()
}

// ---------------------------------------------------------------------------
// The hand-written long partition.

#[test]
fn long_partition_no_resurrection() {
    let layout = three_peers(7, SMALL_BUDGET, Duration::from_secs(6 * 3600));
    let out = Arc::new(Mutex::new(String::new()));
    let real = Instant::now();
    let out2 = out.clone();
    let r = tsim::run(&layout, move |net| async move {
        wait_full_mesh(&net, 3, Duration::from_secs(60)).await?;
        let h = History::new();
        let (p0, p1, p2) = (net.mesh("p0").unwrap(), net.mesh("p1").unwrap(), net.mesh("p2").unwrap());
        // Before: 20 keys everywhere.
        for k in 0..20 {
            h.put(&p0, format!("x{k}"), format!("before-{k}"))?;
        }
        h.wait_converged(&[p0.clone(), p1.clone(), p2.clone()], Duration::from_secs(60)).await;
        // Cut p2 off for two virtual hours.
        turmoil::partition("p2", "p0");
        turmoil::partition("p2", "p1");
        let cut = tokio::time::Instant::now();
        // The isolated side writes too: its writes are older than the
        // majority's later deletes of the same keys.
        for k in 0..5 {
            h.put(&p2, format!("x{k}"), format!("minority-{k}"))?;
        }
        h.put(&p2, "only-on-p2", "m")?;
        let mut deleted = BTreeSet::new();
        let mut minute = 0u64;
        while cut.elapsed() < Duration::from_secs(2 * 3600) {
            tokio::time::sleep(Duration::from_secs(60)).await;
            minute += 1;
            let w = if minute.is_multiple_of(2) { &p0 } else { &p1 };
            // Delete one of the old keys (each once), churn new ones.
            let k = (minute % 20) as usize;
            let name = format!("x{k}");
            if deleted.insert(name.clone()) {
                h.delete(w, name)?;
            }
            let fresh = format!("y{minute}");
            h.put(w, fresh.clone(), "new")?;
            if minute.is_multiple_of(3) {
                h.delete(w, fresh)?;
            }
            h.read(&p0, "x19");
            h.read(&p2, "x19");
        }
        let before_heal = compactions(&net);
        assert_eq!(p2.stats().connected, 0, "p2 is cut off");
        let (took, took_real) = heal_converge_check(&net, &h).await?;
        for k in &deleted {
            for p in [&p0, &p1, &p2] {
                if let Some(v) = p.get(k.as_bytes()) {
                    return Err(format!("{k} came back on {}: {v:?}", p.id().name).into());
                }
            }
        }
        let after = compactions(&net);
        if before_heal == 0 {
            return Err("no compaction during the partition: the test lost its point".into());
        }
        let report = h.check(&net.live());
        writeln!(
            out2.lock(),
            "long partition: isolated 2 h (virtual), {} deletes of old keys, {} writes, {} compactions before heal \
             ({after} after), heal to convergence {took:?} virtual ({took_real:.2?} real); {report}",
            deleted.len(),
            report.writes,
            before_heal,
        )
        .unwrap();
        Ok(())
    });
    println!("{}real time {:?}", out.lock(), real.elapsed());
    r.unwrap();
}

/// The most virtual time from lifting a full cut to a full mesh again. A
/// peer's dials are the only thing that can find that a cut lifted; each
/// sends its Initial at 0, 75, 225 and 525 ms (its last RTT is under the
/// 25 ms floor; every fourth dial without an answer runs on to the 3 s idle
/// timeout) and a failed dial is retried after at most 2.5 s, so a dialer
/// is silent for at most about 3 s, and four dial across this cut, out of
/// step by their jitter. Once the first link is back, the other link's
/// backoffs end, and a dial of it under way is restarted (it once ran to
/// its timeout and backed off in full, and the 60 s cut took 1.95 s). With
/// a 3 s handshake and backoffs up to 5 s, a dialer went silent for up to
/// 7 s.
const RELINK: Duration = Duration::from_secs(2);

/// A peer cut off for 5 s to an hour links again with both others within
/// [`RELINK`] of virtual time after the cut lifts: a property of the
/// dial's probes and backoff in a deterministic simulation, not a timing of
/// this machine (virtual time does not depend on it).
#[test]
fn a_peer_cut_off_links_again_soon_after_the_cut_lifts() {
    let layout = three_peers(11, BIG_BUDGET, Duration::from_secs(3 * 3600));
    let out = Arc::new(Mutex::new(String::new()));
    let out2 = out.clone();
    let r = tsim::run(&layout, move |net| async move {
        wait_full_mesh(&net, 3, Duration::from_secs(60)).await?;
        let mut took = Vec::new();
        for secs in [5u64, 17, 60, 123, 600, 3600] {
            turmoil::partition("p2", "p0");
            turmoil::partition("p2", "p1");
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let p2 = net.mesh("p2").ok_or("p2 is down")?;
            if p2.stats().connected != 0 {
                return Err(format!("p2 still linked after a cut of {secs} s").into());
            }
            let lifted = tokio::time::Instant::now();
            heal_all(&net);
            wait_full_mesh(&net, 3, RELINK).await.map_err(|e| format!("cut of {secs} s: {e}"))?;
            took.push(lifted.elapsed());
        }
        writeln!(out2.lock(), "from lifting a cut to a full mesh (virtual): {took:?}").unwrap();
        Ok(())
    });
    println!("{}", out.lock());
    r.unwrap();
}

// ---------------------------------------------------------------------------
// Random schedules.

#[derive(Clone, Debug)]
enum Step {
    /// Heal everything, then cut every link between these groups.
    Split(Vec<Vec<usize>>),
    /// Cut one peer from every other.
    Isolate(usize),
    /// Drop what `.0` sends to `.1`.
    OneWay(usize, usize),
    /// Hold (delay) datagrams both ways until the next heal.
    Hold(usize, usize),
    Heal,
    Put(usize, usize),
    /// A write with a TTL of this many milliseconds of the writer's wall
    /// clock; it has expired by the final check.
    PutTtl(usize, usize, u64),
    Delete(usize, usize),
    /// Concurrent writes to one key from several peers.
    Race(usize, Vec<usize>),
    Read(usize, usize),
    Sleep(Duration),
    Crash(usize),
    Restart(usize),
}

struct Plan {
    layout: Layout,
    steps: Vec<Step>,
}

fn plan(seed: u64) -> Plan {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.random_range(3..=5usize);
    let budgets: Vec<usize> = (0..n).map(|_| if rng.random_bool(0.5) { SMALL_BUDGET } else { BIG_BUDGET }).collect();
    let mut steps = Vec::new();
    let mut down: Option<usize> = None;
    let mut restarted = vec![false; n];
    let len = rng.random_range(30..=60);
    for _ in 0..len {
        let up: Vec<usize> = (0..n).filter(|i| Some(*i) != down).collect();
        let pick = |rng: &mut SmallRng| up[rng.random_range(0..up.len())];
        let step = match rng.random_range(0..100) {
            0..=5 => {
                let groups = rng.random_range(2..=n.min(3));
                let mut g = vec![Vec::new(); groups];
                for i in 0..n {
                    g[rng.random_range(0..groups)].push(i);
                }
                g.retain(|x| !x.is_empty());
                Step::Split(g)
            }
            6..=9 => Step::Isolate(rng.random_range(0..n)),
            10..=13 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                Step::OneWay(a, b)
            }
            14..=15 => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                Step::Hold(a, b)
            }
            16..=21 => Step::Heal,
            22..=37 => Step::Put(pick(&mut rng), rng.random_range(0..KEYS)),
            38..=43 => Step::PutTtl(pick(&mut rng), rng.random_range(0..KEYS), rng.random_range(1..20)),
            44..=61 => Step::Delete(pick(&mut rng), rng.random_range(0..KEYS)),
            62..=66 => {
                let mut who: Vec<usize> = up.iter().copied().filter(|_| rng.random_bool(0.7)).collect();
                if who.len() < 2 {
                    who = up.clone();
                }
                Step::Race(rng.random_range(0..KEYS), who)
            }
            67..=73 => {
                let p = pick(&mut rng);
                if restarted[p] {
                    Step::Sleep(Duration::from_millis(100))
                } else {
                    Step::Read(p, rng.random_range(0..KEYS))
                }
            }
            74..=94 => Step::Sleep(match rng.random_range(0..100) {
                0..=69 => Duration::from_millis(rng.random_range(10..5_000)),
                70..=91 => Duration::from_secs(rng.random_range(5..120)),
                _ => Duration::from_secs(rng.random_range(120..3600)),
            }),
            _ => match down {
                None => {
                    let v = rng.random_range(0..n);
                    down = Some(v);
                    Step::Crash(v)
                }
                Some(v) => {
                    down = None;
                    restarted[v] = true;
                    Step::Restart(v)
                }
            },
        };
        steps.push(step);
    }
    if let Some(v) = down {
        steps.push(Step::Restart(v));
    }
    // Bound the simulation: the sleeps, plus the convergence allowance, plus
    // an hour for everything else (start, crash waits); only a hang gets
    // there.
    let slept: Duration = steps.iter().map(|s| if let Step::Sleep(d) = s { *d } else { Duration::ZERO }).sum();
    let duration = slept + CONVERGE + Duration::from_secs(3600);
    // Half the schedules lose datagrams in bursts on every link.
    let loss = if rng.random_bool(0.5) { rng.random_range(0.005..0.05) } else { 0.0 };
    // Half the schedules skew every incarnation's clock by up to 150 ms
    // either way; a quarter run the wall clock a thousand times slower than
    // virtual time, so that writes crowd into one millisecond.
    let clocks = Clocks {
        skew_ms: if rng.random_bool(0.5) { 150 } else { 0 },
        slowdown: if rng.random_bool(0.25) { 1_000 } else { 1 },
        restart_lag_ms: 0,
    };
    let max_bytes = bounds(seed, &budgets);
    let layout =
        Layout { seed, peers: n, budgets, max_bytes, duration, loss, keep_trace: false, bugs: Vec::new(), clocks };
    Plan { layout, steps }
}

/// Memory bounds for half the schedules: each peer with the big tombstone
/// budget is bounded with probability 1/2, to room for one to three of the
/// schedules' values, so that it evicts all the time. (With the small
/// budget its stubs would be ghosted early, which has a price the checker
/// would report: ALGORITHM.md, "Eviction".) Drawn from a generator of their
/// own, so that a seed's plan does not depend on them.
fn bounds(seed: u64, budgets: &[usize]) -> Vec<Option<usize>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6d65_6d6f_7279);
    let on = rng.random_bool(0.5);
    // One accounted entry: its overhead, a key and a value of up to 48
    // bytes together.
    let entry = meshcache::store::ENTRY_OVERHEAD + 48;
    budgets
        .iter()
        .map(|b| {
            let bounded = rng.random_bool(0.5);
            (on && bounded && *b == BIG_BUDGET).then(|| rng.random_range(1..=3) * entry)
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
struct RunStats {
    heal_to_converge: Duration,
    /// The same in real time.
    heal_to_converge_real: Duration,
    compactions: u64,
    restarts: usize,
    skipped_crashes: usize,
    virtual_time: Duration,
    writes: usize,
    /// The run's trace hash (see `tsim::Trace`), and its lines if kept.
    trace: u64,
    trace_lines: Vec<String>,
    datagrams: u64,
}

/// Adds every client operation, with its stamp and result, to the trace.
fn trace_history(net: &Net, h: &History) {
    let mut t = net.trace.lock();
    for op in h.ops() {
        t.event(&format!("{} {:?} {:?} {:?} {:?}", op.peer, op.key, op.kind, op.stamp, op.at));
    }
}

/// Whether what `victim` knows survives it: another live peer holds, for
/// every key, a register at least as new as `victim`'s (or a `clear_below`
/// above it), and some live peer has `victim`'s `clear_below`. A range
/// delete (FLUSHALL, or compaction) is state too: a victim that compacted
/// away its newest write of a key holds no register for it, and if its
/// raised `clear_below` dies with it, that write is lost with its only
/// holder, by design, while the checker would see an older write win.
/// The same holds for a write whose TTL has run out (seed 30064771470: a
/// peer cut off from the rest wrote a key with a 3 ms TTL over an older
/// value and crashed; the older value then read as the key's value).
fn covered(net: &Net, victim: &Mesh) -> bool {
    let others: Vec<Mesh> = net.live().into_iter().filter(|m| m.id().name != victim.id().name).collect();
    let bar = victim.replica().store().floors().clear_below;
    if !others.iter().any(|o| o.replica().store().floors().clear_below >= bar) {
        return false;
    }
    (0..KEYS).all(|k| {
        let Some(r) = victim.replica().store().register(key(k).as_bytes()) else { return true };
        // An expired register needs a holder too: it reads as absent, but it
        // is also what keeps an older, unexpired value of the key (held or
        // in flight elsewhere) from winning again once the victim is gone.
        others.iter().any(|o| {
            o.replica().store().floors().clear_below > r.marker
                || o.replica().store().register(key(k).as_bytes()).is_some_and(|x| x.marker >= r.marker)
        })
    })
}

async fn execute(net: Net, steps: Vec<Step>, trace: bool) -> Result<RunStats, String> {
    let n = net.names.len();
    let start = tokio::time::Instant::now();
    wait_full_mesh(&net, n, Duration::from_secs(120)).await?;
    let h = History::new();
    let mut st = RunStats::default();
    let name = |i: usize| net.names[i].as_str();
    let mut seq = 0u64;
    let mut crashed_compactions_seen = 0;
    for (i, step) in steps.iter().enumerate() {
        if trace {
            println!("  [{:>9.3}s] step {i}: {step:?}", start.elapsed().as_secs_f64());
        }
        seq += 1;
        let ignore = |r: Result<(), meshcache::MeshError>| match r {
            Err(e) if !e.is_retryable() => Err(e.to_string()),
            _ => Ok(()),
        };
        match step {
            Step::Split(groups) => {
                heal_all(&net);
                for (gi, g) in groups.iter().enumerate() {
                    for other in &groups[gi + 1..] {
                        for &a in g {
                            for &b in other {
                                turmoil::partition(name(a), name(b));
                            }
                        }
                    }
                }
            }
            Step::Isolate(v) => {
                for b in 0..n {
                    if b != *v {
                        turmoil::partition(name(*v), name(b));
                    }
                }
            }
            Step::OneWay(a, b) => turmoil::partition_oneway(name(*a), name(*b)),
            Step::Hold(a, b) => turmoil::hold(name(*a), name(*b)),
            Step::Heal => heal_all(&net),
            Step::Put(p, k) => {
                if let Some(m) = net.mesh(name(*p)) {
                    ignore(h.put(&m, key(*k), format!("v{seq}-{}", name(*p))))?;
                }
            }
            Step::PutTtl(p, k, ttl) => {
                if let Some(m) = net.mesh(name(*p)) {
                    let v = format!("t{seq}-{}", name(*p));
                    ignore(h.put_with_ttl(&m, key(*k), v, Duration::from_millis(*ttl)))?;
                }
            }
            Step::Delete(p, k) => {
                if let Some(m) = net.mesh(name(*p)) {
                    ignore(h.delete(&m, key(*k)))?;
                }
            }
            Step::Race(k, who) => {
                for p in who {
                    if let Some(m) = net.mesh(name(*p)) {
                        ignore(h.put(&m, key(*k), format!("race{seq}-{}", name(*p))))?;
                    }
                }
            }
            Step::Read(p, k) => {
                if let Some(m) = net.mesh(name(*p)) {
                    h.read(&m, key(*k));
                }
            }
            Step::Sleep(d) => tokio::time::sleep(*d).await,
            Step::Crash(v) => {
                let Some(victim) = net.mesh(name(*v)) else { continue };
                let ok = Wait::new(Duration::from_secs(20))
                    .every(Duration::from_millis(100))
                    .until("the victim's writes are covered", || covered(&net, &victim))
                    .await
                    .is_ok();
                drop(victim);
                if ok {
                    net.crash(name(*v)).await;
                    crashed_compactions_seen += 1;
                } else {
                    st.skipped_crashes += 1;
                    if trace {
                        println!("    crash skipped: {} holds writes no live peer has", name(*v));
                    }
                }
            }
            Step::Restart(v) => {
                if net.mesh(name(*v)).is_none() {
                    net.restart(name(*v)).await;
                    st.restarts += 1;
                }
            }
        }
    }
    let _ = crashed_compactions_seen;
    let checked = heal_converge_check(&net, &h).await;
    trace_history(&net, &h);
    (st.heal_to_converge, st.heal_to_converge_real) = checked?;
    st.compactions = compactions(&net);
    st.writes = h.check(&[]).writes;
    st.virtual_time = start.elapsed();
    Ok(st)
}

/// The one command that replays `seed` with its plan and steps printed.
fn replay_command(seed: u64) -> String {
    format!("MESHCACHE_TURMOIL_SEED={seed} cargo test --release -p meshcache-sim random_schedules -- --nocapture")
}

fn run_schedule(seed: u64, trace: bool) -> Result<(RunStats, Duration), String> {
    let mut p = plan(seed);
    if let Some((bug, on)) = planted_from_env() {
        p.layout.bugs = on.iter().filter(|&&i| i < p.layout.peers).map(|&i| (i, bug)).collect();
    }
    run_plan(p, trace)
}

/// `MESHCACHE_TURMOIL_BUG=NoFloorFilter|NoRefusalReply|ReversedTieBreak|TakesOlder`
/// plants that bug (the tie-break on p0 alone, the others everywhere), to
/// replay a planted-bug catch or to measure how often schedules catch it.
fn planted_from_env() -> Option<(Bug, Vec<usize>)> {
    let name = std::env::var("MESHCACHE_TURMOIL_BUG").ok()?;
    let all = vec![0, 1, 2, 3, 4];
    Some(match name.as_str() {
        "NoFloorFilter" => (Bug::NoFloorFilter, all),
        "NoRefusalReply" => (Bug::NoRefusalReply, all),
        "TakesOlder" => (Bug::TakesOlder, all),
        "ReversedTieBreak" => (Bug::ReversedTieBreak, vec![0]),
        // Planted everywhere, it acts on the bounded peers only.
        "GhostUnstable" => (Bug::GhostUnstable, all),
        other => panic!("MESHCACHE_TURMOIL_BUG: unknown bug {other:?}"),
    })
}

fn run_plan(p: Plan, trace: bool) -> Result<(RunStats, Duration), String> {
    let seed = p.layout.seed;
    if trace {
        println!(
            "seed {seed}: {} peers, budgets {:?}, bounds {:?}, {} steps",
            p.layout.peers,
            p.layout.budgets,
            p.layout.max_bytes,
            p.steps.len()
        );
    }
    let real = Instant::now();
    let result = Arc::new(Mutex::new(None));
    let r2 = result.clone();
    let steps = p.steps.clone();
    let run = tsim::run(&p.layout, move |net| async move {
        let r = execute(net.clone(), steps, trace).await.map(|mut st| {
            let t = net.trace.lock();
            (st.trace, st.datagrams) = (t.digest(), t.datagrams);
            st.trace_lines = t.lines.clone().unwrap_or_default();
            st
        });
        let failed = r.is_err();
        *r2.lock() = Some(r);
        if failed {
            return Err("schedule failed".into());
        }
        Ok(())
    });
    let taken = result.lock().take();
    match (run, taken) {
        (_, Some(Ok(st))) => Ok((st, real.elapsed())),
        (_, Some(Err(e))) => Err(e),
        (Err(e), None) => Err(format!("simulation: {e}")),
        (Ok(()), None) => Err("driver did not report".into()),
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimized: scripts/test runs it with --release")]
fn random_schedules() {
    if let Ok(s) = std::env::var("MESHCACHE_TURMOIL_SEED") {
        let seed: u64 = s.parse().expect("MESHCACHE_TURMOIL_SEED must be a number");
        // MESHCACHE_TURMOIL_LOG=debug (any tracing filter) logs the replay:
        // two replays of one seed log the same lines.
        let _log = std::env::var("MESHCACHE_TURMOIL_LOG").ok().map(|filter| {
            let sub = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .without_time()
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(sub)
        });
        match run_schedule(seed, true) {
            Ok((st, real)) => println!("seed {seed}: ok in {real:?} real: {st:?}"),
            Err(e) => panic!("seed {seed} failed: {e}\nreplay: {}", replay_command(seed)),
        }
        return;
    }
    let count: usize = std::env::var("MESHCACHE_TURMOIL_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    // MESHCACHE_TURMOIL_FIRST=K starts at the K-th schedule, so that a long
    // run can be split into chunks (on several machines or days) that
    // together cover exactly the seeds one run would.
    let first: u64 = std::env::var("MESHCACHE_TURMOIL_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let base: u64 = (0x7u64 << 32) + first;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let real = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (next, results) = (next.clone(), results.clone());
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let seed = base + i as u64;
                let r = run_schedule(seed, false);
                match &r {
                    Ok((st, t)) => println!(
                        "seed {seed}: ok; heal->converged {:?} virtual ({:.2?} real), {} compactions, {} restarts ({} crashes \
                         skipped), {} writes, {:.0?} virtual in {t:.2?} real",
                        st.heal_to_converge,
                        st.heal_to_converge_real,
                        st.compactions,
                        st.restarts,
                        st.skipped_crashes,
                        st.writes,
                        st.virtual_time
                    ),
                    Err(e) => println!("seed {seed}: FAILED: {e}\n  replay: {}", replay_command(seed)),
                }
                results.lock().push((seed, r));
            });
        }
    });
    let results = std::mem::take(&mut *results.lock());
    let mut conv: Vec<Duration> = Vec::new();
    let (mut compactions, mut restarts, mut skipped, mut virt) = (0, 0, 0, Duration::ZERO);
    let mut failed = Vec::new();
    for (seed, r) in &results {
        match r {
            Ok((st, _)) => {
                conv.push(st.heal_to_converge);
                compactions += st.compactions;
                restarts += st.restarts;
                skipped += st.skipped_crashes;
                virt += st.virtual_time;
            }
            Err(e) => failed.push(format!("seed {seed}: {e}\n  replay: {}", replay_command(*seed))),
        }
    }
    let max = conv.iter().max().copied().unwrap_or_default();
    println!(
        "{count} schedules on {workers} threads in {:.2?} real ({:.1} h virtual): heal->converged median {:?}, \
         max {:?} (virtual); {compactions} compactions, {restarts} restarts, {skipped} crashes skipped; {} failed",
        real.elapsed(),
        virt.as_secs_f64() / 3600.0,
        meshcache::stats::median(&conv),
        max,
        failed.len()
    );
    assert!(failed.is_empty(), "{} schedule(s) failed:\n{}", failed.len(), failed.join("\n"));
}

/// One seed, one run: the same schedule run twice ends with the same trace
/// hash (every datagram delivered, every client operation with its stamp
/// and result, in order).
#[test]
fn a_seed_replays_exactly() {
    let base: u64 = 0x7u64 << 32;
    for seed in [base + 1, base + 2, base + 3] {
        let run = || {
            let mut p = plan(seed);
            p.layout.keep_trace = true;
            run_plan(p, false).unwrap_or_else(|e| panic!("seed {seed}: {e}")).0
        };
        let (a, b) = (run(), run());
        if let Some(i) =
            (0..a.trace_lines.len().max(b.trace_lines.len())).find(|&i| a.trace_lines.get(i) != b.trace_lines.get(i))
        {
            let around = |t: &[String]| t[i.saturating_sub(3)..(i + 3).min(t.len())].join("\n  ");
            println!(
                "seed {seed}: the runs part at entry {i}:\n first:\n  {}\n second:\n  {}",
                around(&a.trace_lines),
                around(&b.trace_lines)
            );
        }
        println!("seed {seed}: trace {:016x} over {} datagrams and {} writes", a.trace, a.datagrams, a.writes);
        assert!(a.datagrams > 0, "seed {seed}: nothing traced");
        assert_eq!(
            (a.trace, a.datagrams, a.writes),
            (b.trace, b.datagrams, b.writes),
            "seed {seed} ran two different ways"
        );
    }
}

/// Schedules a planted bug may take before the check must have caught it.
const CATCH_WITHIN: u64 = 80;

/// Runs schedules from the usual base with `bug` planted in the peers
/// `on` until one fails; returns the seed and the failure.
fn first_catch(bug: Bug, on: &[usize]) -> Option<(u64, String)> {
    // MESHCACHE_TURMOIL_FIRST=K starts at the K-th schedule, so that a long
    // run can be split into chunks (on several machines or days) that
    // together cover exactly the seeds one run would.
    let first: u64 = std::env::var("MESHCACHE_TURMOIL_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let base: u64 = (0x7u64 << 32) + first;
    (base..base + CATCH_WITHIN).find_map(|seed| {
        let mut p = plan(seed);
        p.layout.bugs = on.iter().filter(|&&i| i < p.layout.peers).map(|&i| (i, bug)).collect();
        run_plan(p, false).err().map(|e| (seed, e))
    })
}

fn assert_caught(bug: Bug, on: &[usize]) {
    match first_catch(bug, on) {
        Some((seed, e)) => println!("{bug:?} on {on:?}: caught by seed {seed}: {e}"),
        None => panic!("{bug:?} planted on {on:?} passed {CATCH_WITHIN} schedules: the schedules cannot see it"),
    }
}

/// A hand-written schedule for the rules that guard a restarted peer whose
/// clock lags: p0 deletes a key and every peer collects the tombstone
/// (their floors rise to it); p2 restarts behind a partition on a clock
/// 400 ms behind (the wall clock runs a thousand times slower than virtual
/// time, so the delete is a few wall-clock milliseconds old), boots by
/// timeout, and writes the key again with a stamp below the delete. After
/// the heal the others must refuse that write by their floor, and their
/// refusal reply must make p2 drop it: the key reads as deleted
/// everywhere. Returns the check's verdict.
fn lagging_restart_behind_a_partition(bugs: Vec<(usize, Bug)>) -> Result<String, String> {
    let layout = Layout {
        seed: 11,
        peers: 3,
        budgets: vec![BIG_BUDGET; 3],
        max_bytes: vec![None; 3],
        duration: Duration::from_secs(4 * 3600),
        loss: 0.0,
        keep_trace: false,
        bugs,
        clocks: Clocks { skew_ms: 0, slowdown: 1_000, restart_lag_ms: 400 },
    };
    let out = Arc::new(Mutex::new(String::new()));
    let out2 = out.clone();
    let r = tsim::run(&layout, move |net| async move {
        wait_full_mesh(&net, 3, Duration::from_secs(60)).await?;
        let h = History::new();
        // Past the lag on the wall clock, so that p2's next incarnation
        // still starts after its first.
        tokio::time::sleep(Duration::from_secs(450)).await;
        let p0 = net.mesh("p0").unwrap();
        h.put(&p0, "k", "old")?;
        h.delete(&p0, "k")?;
        let collected = |net: &Net| {
            net.live().iter().all(|m| m.replica().store().register(b"k").is_none() && m.stats().store.tombstones == 0)
        };
        Wait::new(Duration::from_secs(120))
            .every(Duration::from_millis(100))
            .until("the tombstone is collected everywhere", || collected(&net))
            .await
            .map_err(|e| e.to_string())?;
        for other in ["p0", "p1"] {
            turmoil::partition("p2", other);
        }
        net.crash("p2").await;
        net.restart("p2").await;
        let p2 = net.mesh("p2").unwrap();
        // Alone behind the partition: it boots by timeout.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !p2.is_ready() {
            return Err("p2 never booted by timeout".into());
        }
        h.put(&p2, "k", "below-the-floor")?;
        let written = p2.replica().store().register(b"k").map(|r| r.marker);
        let floor = p0.replica().store().floors().gc_floor;
        if written.is_none_or(|w| w > floor) {
            return Err(format!("the schedule lost its point: p2 wrote {written:?}, p0's floor is {floor}").into());
        }
        heal_all(&net);
        let live = net.live();
        let converged = h.wait_converged(&live, Duration::from_secs(600)).await;
        let report = h.check(&live);
        writeln!(out2.lock(), "converged {converged:?}; {report}").unwrap();
        if converged.is_none() {
            return Err("no convergence within 600 s (virtual) of the heal".into());
        }
        if !report.violations.is_empty() {
            return Err(format!("invariants broken: {report}").into());
        }
        Ok(())
    });
    let said = out.lock().clone();
    r.map(|()| said)
}

#[test]
fn a_lagging_restart_behind_a_partition_writes_nothing_back() {
    let said = lagging_restart_behind_a_partition(Vec::new()).unwrap();
    println!("{said}");
}

#[test]
fn a_merge_without_the_floor_filter_is_caught() {
    let bugs = (0..3).map(|i| (i, Bug::NoFloorFilter)).collect();
    let e = lagging_restart_behind_a_partition(bugs).expect_err("NoFloorFilter planted, yet the schedule passed");
    println!("NoFloorFilter caught: {e}");
}

#[test]
fn a_peer_ignoring_refusal_replies_is_caught() {
    let bugs = (0..3).map(|i| (i, Bug::NoRefusalReply)).collect();
    let e = lagging_restart_behind_a_partition(bugs).expect_err("NoRefusalReply planted, yet the schedule passed");
    println!("NoRefusalReply caught: {e}");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimized: scripts/test runs it with --release")]
fn a_reversed_tie_break_on_one_peer_is_caught() {
    assert_caught(Bug::ReversedTieBreak, &[0]);
}
