//! `meshcache demo`: three peers in one process, measured.
//!
//! Part of the binary, not the library.

use super::*;
use meshcache::stats::percentile;

/// Every convergence in the demo is checked against this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// Bytes per value, as in `redis-benchmark -d 100`.
const VALUE_LEN: usize = 100;

struct Sizes {
    /// Keys written in step 1.
    keys: usize,
    /// Writes of step 1 whose latency is measured.
    samples: usize,
    /// Keys raced in step 3.
    races: usize,
    /// Puts of step 4.
    bulk: usize,
}

fn key(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("{prefix}:{i:07}"))
}

fn value(prefix: &str, i: usize) -> Bytes {
    let mut v = format!("{prefix}-{i}-").into_bytes();
    v.resize(VALUE_LEN, b'.');
    Bytes::from(v)
}

/// 1234567 -> "1,234,567".
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ms_since(t: Instant, u: Instant) -> f64 {
    u.saturating_duration_since(t).as_secs_f64() * 1000.0
}

fn name(p: &Mesh) -> &str {
    &p.id().name
}

fn put(p: &Mesh, k: Bytes, v: Bytes) -> Result<(), Exit> {
    p.insert(k, v).map_err(|e| failure(format!("a put on {} failed: {e}", name(p))))
}

/// Polls `pending` (which says what is still missing, or `None`) every
/// millisecond until it returns `None` or [`DEADLINE`] passes; returns how
/// long that took.
async fn converge(what: &str, pending: impl FnMut() -> Option<String>) -> Result<Duration, Exit> {
    meshcache::wait::Wait::new(DEADLINE)
        .every(Duration::from_millis(1))
        .until(what, pending)
        .await
        .map_err(|e| failure(format!("not converged: {e}")))
}

pub(crate) async fn demo(quick: bool, push_delay: Option<Duration>) -> Result<(), Exit> {
    init_logging("warn");
    let z = if quick {
        Sizes { keys: 1_000, samples: 200, races: 200, bulk: 20_000 }
    } else {
        Sizes { keys: 10_000, samples: 2_000, races: 1_000, bulk: 200_000 }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let build =
        if cfg!(debug_assertions) { "debug build: figures are far below a release build's" } else { "release build" };
    say!("meshcache demo: 3 peers in this process, QUIC + mutual TLS on 127.0.0.1 ({cpus} CPUs, {build})");
    let defaults = MeshConfig::default();
    let delay = match push_delay {
        Some(d) => format!("push delay {} us (--push-delay-us)", d.as_micros()),
        None => format!("push delay {} us", defaults.push_delay.as_micros()),
    };
    say!(
        "  settings: MeshConfig defaults; {delay}, anti-entropy every {} ms",
        defaults.anti_entropy_interval.as_millis()
    );
    let start = meshcache::env::stopwatch();
    let ca = EphemeralCa::new().map_err(|e| failure(format!("cannot make the in-memory CA: {e}")))?;
    let mut peers: Vec<Mesh> = Vec::new();
    let mut result = Ok(());
    for n in ["a", "b", "c"] {
        let seeds: Vec<meshcache::Seed> = peers.first().map(|p| p.local_addr().into()).into_iter().collect();
        let started = async {
            let id = ca.issue(n).map_err(|e| failure(format!("cannot issue {n}'s certificate: {e}")))?;
            let config = MeshConfig {
                name: n.into(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                seeds,
                ..MeshConfig::default()
            };
            let config = MeshConfig { push_delay: push_delay.unwrap_or(config.push_delay), ..config };
            Mesh::builder().config(config).tls(id).start().await.map_err(|e| failure(format!("peer {n}: {e}")))
        };
        match started.await {
            Ok(p) => peers.push(p),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = demo_steps(&peers, &z, start).await;
    }
    // Concurrently: each says goodbye to the others.
    let shutdowns: Vec<_> = peers.iter().cloned().map(|p| tokio::spawn(async move { p.shutdown().await })).collect();
    for s in shutdowns {
        let _ = s.await;
    }
    match &result {
        Ok(()) => say!("\nconverged: every step, on every peer. Peers shut down."),
        Err(e) => say!("\nFAILED: {}", e.message),
    }
    result
}

async fn demo_steps(peers: &[Mesh], z: &Sizes, start: Instant) -> Result<(), Exit> {
    for p in peers {
        if !p.wait_ready(DEADLINE).await {
            return Err(failure(format!("peer {} did not finish bootstrap within {} s", name(p), DEADLINE.as_secs())));
        }
    }
    converge("connecting the peers", || {
        peers
            .iter()
            .find(|p| p.stats().connected < peers.len() - 1)
            .map(|p| format!("{} is not connected to all", name(p)))
    })
    .await?;
    let addrs: Vec<String> = peers.iter().map(|p| format!("{} {}", name(p), p.local_addr())).collect();
    say!("  peers {}; b and c seeded with a", addrs.join(", "));
    say!("  all booted and fully connected {} after start", ms(start.elapsed()));
    step_writes(peers, z).await?;
    step_deletes(peers, z).await?;
    step_races(peers, z).await?;
    step_throughput(peers, z).await?;
    step_digests(peers).await
}

/// (a) Writes spread over the peers; latency from put until visible on each
/// other peer, for a sample.
async fn step_writes(peers: &[Mesh], z: &Sizes) -> Result<(), Exit> {
    let n = z.keys;
    say!("\n1. writes: {} keys with {VALUE_LEN}-byte values, round-robin over a, b, c", count(n as u64));
    let stride = (n / z.samples.max(1)).max(1);
    let mut lat_us: Vec<u64> = Vec::with_capacity(2 * n / stride + 2);
    let t = meshcache::env::stopwatch();
    for i in 0..n {
        let w = i % peers.len();
        let (k, v) = (key("w", i), value("w", i));
        let t0 = meshcache::env::stopwatch();
        put(&peers[w], k.clone(), v.clone())?;
        if i % stride != 0 {
            continue;
        }
        // Poll the other peers in a tight loop, yielding so the peers' own
        // tasks run, until both read the new value.
        let others: Vec<&Mesh> = peers.iter().enumerate().filter(|(j, _)| *j != w).map(|(_, p)| p).collect();
        let mut seen: Vec<Option<Duration>> = vec![None; others.len()];
        loop {
            for (s, p) in seen.iter_mut().zip(&others) {
                if s.is_none() && p.get(&k).as_ref() == Some(&v) {
                    *s = Some(t0.elapsed());
                }
            }
            if seen.iter().all(Option::is_some) {
                break;
            }
            if t0.elapsed() > DEADLINE {
                return Err(failure(format!(
                    "write of w:{i:07} on {} not visible everywhere within {} s",
                    name(&peers[w]),
                    DEADLINE.as_secs()
                )));
            }
            tokio::task::yield_now().await;
        }
        lat_us.extend(seen.iter().flatten().map(|d| d.as_micros() as u64));
    }
    let wrote = t.elapsed();
    let mut next = 0;
    converge("writes", || {
        while next < n {
            let v = value("w", next);
            if let Some(p) = peers.iter().find(|p| p.get(key("w", next)).as_ref() != Some(&v)) {
                return Some(format!("{} does not read w:{next:07}", name(p)));
            }
            next += 1;
        }
        None
    })
    .await?;
    let all = t.elapsed();
    lat_us.sort_unstable();
    say!(
        "   write-to-visible latency: p50 {} us, p99 {} us, max {} us",
        count(percentile(&lat_us, 50.0)),
        count(percentile(&lat_us, 99.0)),
        count(*lat_us.last().unwrap_or(&0))
    );
    say!(
        "     ({} readings: every {}th write, timed from put until `get` returns it on each of the 2 other peers)",
        count(lat_us.len() as u64),
        stride
    );
    say!(
        "   all {} keys readable with their values on every peer: {} after the first put (writing took {})",
        count(n as u64),
        ms(all),
        ms(wrote)
    );
    Ok(())
}

/// (b) Deletes a quarter of the keys, each on a peer other than its writer.
async fn step_deletes(peers: &[Mesh], z: &Sizes) -> Result<(), Exit> {
    let n = z.keys;
    let deleted = n.div_ceil(4);
    say!("\n2. deletes: {} of those keys (every 4th), each on a peer other than its writer", count(deleted as u64));
    let t = meshcache::env::stopwatch();
    for i in (0..n).step_by(4) {
        let p = &peers[(i + 1) % peers.len()];
        p.invalidate(key("w", i)).map_err(|e| failure(format!("a delete on {} failed: {e}", name(p))))?;
    }
    let mut next = 0;
    converge("deletes", || {
        while next < n {
            let want = (next % 4 != 0).then(|| value("w", next));
            if let Some(p) = peers.iter().find(|p| p.get(key("w", next)) != want) {
                let what = if want.is_some() { "lost" } else { "still reads deleted" };
                return Some(format!("{} {what} w:{next:07}", name(p)));
            }
            next += 1;
        }
        None
    })
    .await?;
    say!(
        "   gone on every peer {} after the first delete; the other {} keys still readable everywhere",
        ms(t.elapsed()),
        count((n - deleted) as u64)
    );
    Ok(())
}

/// (c) Every peer writes the same keys at once, from its own thread; the
/// highest stamp must win on every peer.
async fn step_races(peers: &[Mesh], z: &Sizes) -> Result<(), Exit> {
    let r = z.races;
    say!(
        "\n3. races: a, b and c each write the same {} keys, one thread each, released together by a barrier",
        count(r as u64)
    );
    let barrier = Arc::new(std::sync::Barrier::new(peers.len()));
    let writers: Vec<_> = peers
        .iter()
        .map(|p| {
            let (p, barrier) = (p.clone(), barrier.clone());
            tokio::task::spawn_blocking(move || -> Result<(Vec<Stamp>, Instant, Instant), String> {
                let me = p.id().name.clone();
                barrier.wait();
                let start = meshcache::env::stopwatch();
                let stamps = (0..r)
                    .map(|j| {
                        let data = Bytes::from(format!("{me} wrote race:{j}"));
                        match p.write_with(key("race", j), |_, _| Some(Slot::Value { data, expires_at_ms: None })) {
                            Ok(Some(w)) => Ok(w.register.marker),
                            Ok(None) => Err(format!("{me}: write of race:{j} not made")),
                            Err(e) => Err(format!("{me}: {e}")),
                        }
                    })
                    .collect::<Result<Vec<Stamp>, String>>()?;
                Ok((stamps, start, meshcache::env::stopwatch()))
            })
        })
        .collect();
    let mut stamps: Vec<Vec<Stamp>> = Vec::new();
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    for w in writers {
        let (s, start, end) = w.await.map_err(|e| failure(format!("a racing writer failed: {e}")))?.map_err(failure)?;
        stamps.push(s);
        windows.push((start, end));
    }
    let t = windows.iter().map(|w| w.0).min().expect("three writers");
    // The expected winner of each key: the writer with the highest stamp.
    let winners: Vec<(usize, Stamp)> = (0..r)
        .map(|j| (0..peers.len()).map(|p| (p, stamps[p][j])).max_by_key(|&(_, s)| s).expect("three writers"))
        .collect();
    let same_ms = (0..r).filter(|&j| stamps.iter().all(|s| s[j].physical_ms() == stamps[0][j].physical_ms())).count();
    let mut next = 0;
    converge("races", || {
        while next < r {
            let (w, stamp) = winners[next];
            let want = Bytes::from(format!("{} wrote race:{next}", name(&peers[w])));
            for p in peers {
                let held = p.replica().store().register(&key("race", next)).map(|reg| reg.marker);
                if held != Some(stamp) || p.get(key("race", next)).as_ref() != Some(&want) {
                    return Some(format!(
                        "{} does not hold {}'s winning write of race:{next}",
                        name(p),
                        name(&peers[w])
                    ));
                }
            }
            next += 1;
        }
        None
    })
    .await?;
    let took = t.elapsed();
    let won: Vec<String> = (0..peers.len())
        .map(|p| format!("{} {}", name(&peers[p]), winners.iter().filter(|(w, _)| *w == p).count()))
        .collect();
    let ran: Vec<String> = (0..peers.len())
        .map(|p| format!("{} {:.2}-{:.2} ms", name(&peers[p]), ms_since(t, windows[p].0), ms_since(t, windows[p].1)))
        .collect();
    say!("   writers ran (from the first one's start): {}", ran.join(", "));
    say!(
        "   one winner per key on every peer, the write with the highest stamp: {} after the first writer started",
        ms(took)
    );
    say!("   keys won: {}", won.join(", "));
    say!(
        "   {} of {} keys got all three writes in the same millisecond (then the HLC counter, then the node id, decide)",
        count(same_ms as u64),
        count(r as u64)
    );
    Ok(())
}

/// (d) Puts as fast as possible on one peer; time until every peer holds
/// them all (equal digest roots: same keys and stamps).
async fn step_throughput(peers: &[Mesh], z: &Sizes) -> Result<(), Exit> {
    let m = z.bulk;
    let writer = &peers[0];
    say!(
        "\n4. throughput: {} puts ({VALUE_LEN}-byte values) on {} as fast as it takes them",
        count(m as u64),
        name(writer)
    );
    let keys: Vec<Bytes> = (0..m).map(|i| key("bulk", i)).collect();
    let values: Vec<Bytes> = (0..m).map(|i| value("bulk", i)).collect();
    let before: Vec<_> = peers.iter().map(Mesh::stats).collect();
    let t = meshcache::env::stopwatch();
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        put(writer, k.clone(), v.clone())?;
        if i % 1024 == 1023 {
            // Let the push tasks run on this worker too.
            tokio::task::yield_now().await;
        }
    }
    let local = t.elapsed();
    converge("throughput", || {
        let want = writer.replica().store().root();
        peers.iter().find(|p| p.replica().store().root() != want).map(|p| {
            format!("{} holds {} registers, {} holds {}", name(p), p.replica().store().root().1, name(writer), want.1)
        })
    })
    .await?;
    let all = t.elapsed();
    // Untimed: check every key, not only the digests.
    for p in peers {
        if let Some(i) = (0..m).find(|&i| p.get(&keys[i]).as_ref() != Some(&values[i])) {
            return Err(failure(format!("throughput: {} does not read bulk:{i:07}", name(p))));
        }
    }
    let rate = |d: Duration| count((m as f64 / d.as_secs_f64()) as u64);
    say!("   local puts on {}: {} ({}/s)", name(writer), ms(local), rate(local));
    say!("   held by every peer {} after the first put (digests polled every 1 ms)", ms(all));
    say!("   replicated writes/s: {} (each write on all 3 peers)", rate(all));
    let after: Vec<_> = peers.iter().map(Mesh::stats).collect();
    let d = |f: fn(&meshcache::MeshStats) -> u64| -> Vec<String> {
        peers
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(p, (b, a))| format!("{} {}", name(p), count(f(a) - f(b))))
            .collect()
    };
    say!(
        "   deltas received by push: {}; push batches sent by {}: {}; queue overflows: {}",
        d(|s| s.deltas_received)[1..].join(", "),
        name(writer),
        count(after[0].push_batches_sent - before[0].push_batches_sent),
        count(after.iter().zip(&before).map(|(a, b)| a.queue_overflows - b.queue_overflows).sum())
    );
    Ok(())
}

/// (e) Equal digest roots everywhere.
async fn step_digests(peers: &[Mesh]) -> Result<(), Exit> {
    say!("\n5. digests");
    // Tombstone collection changes roots on each peer at its own moment, so
    // the roots shown are those of one poll that found them equal.
    let mut equal = Vec::new();
    converge("digests", || {
        let roots: Vec<(u64, u64)> = peers.iter().map(|p| p.replica().store().root()).collect();
        match roots.iter().position(|r| *r != roots[0]) {
            Some(i) => Some(format!("{} differs from {}", name(&peers[i]), name(&peers[0]))),
            None => {
                equal = roots;
                None
            }
        }
    })
    .await?;
    for (p, (root, regs)) in peers.iter().zip(equal) {
        let s = p.stats();
        say!(
            "   {}: root {root:016x} over {} registers ({} tombstones); {} anti-entropy rounds, {} protocol errors",
            name(p),
            count(regs),
            count(s.store.tombstones as u64),
            count(s.ae_rounds),
            count(s.protocol_errors)
        );
    }
    say!("   equal on every peer");
    let errors: u64 = peers.iter().map(|p| p.stats().protocol_errors).sum();
    if errors > 0 {
        say!(
            "   note: {} connection(s) were closed for protocol errors during the run (see stderr); \
             every check above converged regardless",
            count(errors)
        );
    }
    Ok(())
}
