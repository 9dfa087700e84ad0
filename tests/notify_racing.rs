//! Keyspace notifications and near caches while three peers are written at
//! once, on the same keys. A client on each peer runs a seeded random
//! mix of SETs, SETs that expire within 100 ms, PEXPIREs, PERSISTs, DELs,
//! INCRs, RENAMEs, COPYs, MSETs, GETDELs, APPENDs, GETEXs, SET NX GETs,
//! small transactions and a rare FLUSHALL, and reads through a tracking client's
//! near cache (BCAST on the second peer); the third peer holds the keys
//! under a memory bound small enough that it evicts as writes arrive.
//!
//! Writes on different peers race: a peer merges a write it receives
//! while its own client writes the same key, and expiries and evictions
//! land between them. The peers talk over fault-injecting sockets: every
//! second seed loses 5% of their datagrams and reorders them, and seeds 2
//! and 3 of every four cut the bounded peer apart for the middle third of
//! the writes (what it missed then comes by pushes resent, or by
//! anti-entropy). Once the writers are done, every TTL has run out
//! and the peers hold the same registers (the bounded one: the same, or
//! none), on every peer:
//!
//! - the last message its subscriber heard on a key's keyspace channel
//!   names what the key now is: a value (`set`, `incrby`, `expire`,
//!   `persist`, `rename_to`, `copy_to`...) or none (`del`, `expired`,
//!   `evicted`, `rename_from`, a `flushall` since, or never a message).
//!   An application that drops what these messages name would
//!   otherwise keep a value the peer no longer has, or drop one for good;
//! - the tracking client's near cache holds what the peer holds.
//!
//! A failure names its seed; `MESHCACHE_DIFF_SEED=S cargo test --test
//! integration notify_racing` replays its commands (not their timing,
//! which is the point of the run). `MESHCACHE_DIFF_SEEDS=N` runs more.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::notify_replicated::{message, Near};

use common::redis_ref::{Conn, RespPeer};
use common::wait::DEADLINE;
use meshcache::transport::faults::Faults;
use meshcache::MeshConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;

/// Keys written as strings, and keys written as counters.
const KEYS: usize = 24;
const COUNTERS: usize = 4;

/// Commands each peer's client runs a seed.
const OPS: usize = 800;

/// The bounded peer's bound: two thirds of what the keys hold (24 values
/// of 3 kB on average).
const BOUND: &str = "48kb";

/// Events after which a key has no value.
const GONE: [&[u8]; 4] = [b"del", b"expired", b"evicted", b"rename_from"];

/// Each seed's keys, named apart from the other seeds'.
fn all_keys(seed: u64) -> Vec<Vec<u8>> {
    let strings = (0..KEYS).map(|i| format!("{seed}:k{i}").into_bytes());
    strings.chain((0..COUNTERS).map(|i| format!("{seed}:n{i}").into_bytes())).collect()
}

/// `MESHCACHE_DIFF_SEED`, or the first `MESHCACHE_DIFF_SEEDS` (16).
fn seeds() -> Vec<u64> {
    let env = |name: &str| std::env::var(name).ok().map(|s| s.parse::<u64>().expect("a number of seeds"));
    match env("MESHCACHE_DIFF_SEED") {
        Some(s) => vec![s],
        None => (0..env("MESHCACHE_DIFF_SEEDS").unwrap_or(16)).collect(),
    }
}

/// One peer's clients: commands, a near cache, a subscriber to every
/// keyspace channel, and the last event it heard for each key.
struct Side {
    con: Conn,
    near: Near,
    sub: Conn,
    last: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Its commands, seeded by the seed and the side.
    rng: SmallRng,
}

impl Side {
    async fn connect(port: u16, bcast: bool, seed: u64) -> Side {
        let con = Conn::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        let mut sub = Conn::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        sub.cmd(&[b"PSUBSCRIBE", b"__keyspace@0__:*"]).await;
        sub.cmd(&[b"PSUBSCRIBE", b"__keyevent@0__:flushall"]).await;
        let near = Near::connect(port, bcast).await;
        Side { con, near, sub, last: BTreeMap::new(), rng: SmallRng::seed_from_u64(seed) }
    }

    /// Reads the messages that have come, keeping each key's last event
    /// (a `flushall` leaves every key without one, as never written).
    async fn drain(&mut self) {
        while let Ok(frame) = tokio::time::timeout(Duration::from_millis(20), self.sub.next()).await {
            let (channel, event) = message(&frame);
            if channel == b"__keyevent@0__:flushall" {
                self.last.clear();
                continue;
            }
            let key = channel.strip_prefix(b"__keyspace@0__:").expect("a keyspace channel");
            self.last.insert(key.to_vec(), event);
        }
    }
}

/// What one side's commands did that a seed must have raced.
#[derive(Default)]
struct Raced {
    /// RENAMEs that found their key.
    renamed: usize,
    /// FLUSHALLs.
    flushed: usize,
}

/// Runs commands `ops` of one side's random sequence (`i` the side),
/// reading a key through the near cache between them.
async fn write(side: &mut Side, seed: u64, i: usize, ops: std::ops::Range<usize>) -> Raced {
    let keys = all_keys(seed);
    let string = |rng: &mut SmallRng| keys[rng.random_range(0..KEYS)].clone();
    let counter = |rng: &mut SmallRng| keys[KEYS + rng.random_range(0..COUNTERS)].clone();
    let rng = &mut side.rng;
    let mut raced = Raced::default();
    for op in ops {
        let value = format!("{i}:{op}:{}", "v".repeat(rng.random_range(1000..5000))).into_bytes();
        let ttl = rng.random_range(5..100u32).to_string().into_bytes();
        let k = string(rng);
        let n = counter(rng);
        let other = string(rng);
        // Two or three FLUSHALLs a side a seed (one at a place set by the
        // seed, the rest at random): they delete every key while the other
        // peers' writes race them.
        if rng.random_range(0..OPS / 2) == 0 || op == (seed as usize * 97 + i * 271) % OPS {
            assert_eq!(side.con.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
            raced.flushed += 1;
            continue;
        }
        match rng.random_range(0..100) {
            0..28 => side.con.cmd(&[b"SET", &k, &value]).await,
            28..40 => side.con.cmd(&[b"SET", &k, &value, b"PX", &ttl]).await,
            40..46 => side.con.cmd(&[b"PEXPIRE", &k, &ttl]).await,
            46..49 => side.con.cmd(&[b"PERSIST", &k]).await,
            49..58 => side.con.cmd(&[b"DEL", &k]).await,
            58..68 => side.con.cmd(&[b"INCR", &n]).await,
            68..72 => side.con.cmd(&[b"PEXPIRE", &n, &ttl]).await,
            72..75 => {
                let reply = side.con.cmd(&[b"RENAME", &k, &other]).await;
                raced.renamed += usize::from(reply == b"+OK\r\n");
                reply
            }
            75..78 => side.con.cmd(&[b"COPY", &k, &other, b"REPLACE"]).await,
            78..81 => side.con.cmd(&[b"MSET", &k, &value, &other, &value]).await,
            81..84 => side.con.cmd(&[b"GETDEL", &k]).await,
            84..87 => side.con.cmd(&[b"APPEND", &k, b"+"]).await,
            87..90 => side.con.cmd(&[b"GETEX", &k, b"PX", &ttl]).await,
            90..93 => side.con.cmd(&[b"SET", &k, &value, b"NX", b"GET"]).await,
            _ => {
                for args in [&[&b"MULTI"[..]][..], &[b"SET", &k, &value], &[b"DEL", &other], &[b"INCR", &n]] {
                    side.con.cmd(args).await;
                }
                side.con.cmd(&[b"EXEC"]).await
            }
        };
        side.near.get(&keys[rng.random_range(0..keys.len())]).await;
    }
    raced
}

/// Whether the writes have settled: no TTL left to run out, the two
/// unbounded peers holding the same registers, and the bounded one
/// either the same or no value.
fn settled(peers: &[RespPeer], seed: u64) -> bool {
    all_keys(seed).iter().all(|k| {
        let r: Vec<_> = peers.iter().map(|p| p.mesh.replica().store().register(k)).collect();
        let marker = |i: usize| r[i].as_ref().map(|r| r.marker);
        let live = peers.iter().all(|p| {
            p.mesh.get(k).is_none()
                || p.mesh.replica().store().register(k).is_some_and(|r| r.val.expires_at_ms().is_none())
        });
        live && marker(0) == marker(1) && (marker(2) == marker(0) || peers[2].mesh.get(k).is_none())
    })
}

/// What is wrong on `side` for `peer`: keys whose last event does not
/// name what the key now is, and a value the near cache holds that the
/// peer no longer reads.
async fn wrong(side: &mut Side, peer: &RespPeer, seed: u64) -> Vec<String> {
    side.drain().await;
    let mut out = Vec::new();
    for k in all_keys(seed) {
        let has = peer.mesh.get(&k).is_some();
        let last = side.last.get(&k);
        let says = last.is_some_and(|e| !GONE.contains(&e.as_slice()));
        if has != says {
            let last = last.map(|e| String::from_utf8_lossy(e).into_owned());
            out.push(format!("{}: has a value {has}, last heard {last:?}", String::from_utf8_lossy(&k)));
        }
    }
    if let Some((k, held, now)) = side.near.stale(peer).await {
        let short =
            |v: &Option<Vec<u8>>| v.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned());
        out.push(format!(
            "near cache holds {:?} for {} where the peer reads {:?}",
            short(&held),
            String::from_utf8_lossy(&k),
            short(&now)
        ));
    }
    out
}

async fn run_seed(peers: &[RespPeer], faults: &Faults, seed: u64) {
    let mut sides = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        sides.push(Side::connect(p.port, i == 1, seed.wrapping_mul(31).wrapping_add(i as u64)).await);
    }
    let evicted_before = peers[2].mesh.replica().store().stats().evictions;
    let (mut renamed, mut flushed) = (0, 0);
    // Writes from the three at once, in three thirds. Every second seed
    // loses 5% of the datagrams between the peers, and reorders them,
    // throughout; seeds 2 and 3 of every four cut the bounded peer apart
    // for the middle third.
    let lossy = seed % 2 == 1;
    let cut = seed % 4 >= 2;
    if lossy {
        faults.drop_rate(0.05);
        faults.jitter(Duration::from_millis(2));
    }
    for third in 0..3 {
        if cut && third == 1 {
            faults.isolate(peers[2].mesh.local_addr());
        }
        let ops = third * OPS / 3..(third + 1) * OPS / 3;
        let [a, b, c] = &mut sides[..] else { unreachable!("three sides") };
        let (ra, rb, rc) =
            tokio::join!(write(a, seed, 0, ops.clone()), write(b, seed, 1, ops.clone()), write(c, seed, 2, ops));
        for r in [ra, rb, rc] {
            renamed += r.renamed;
            flushed += r.flushed;
        }
        if third == 1 {
            faults.heal();
            if lossy {
                faults.drop_rate(0.05);
                faults.jitter(Duration::from_millis(2));
            }
        }
    }
    faults.heal();

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut report = Vec::new();
        if settled(peers, seed) {
            for (i, (side, p)) in sides.iter_mut().zip(peers).enumerate() {
                report.extend(wrong(side, p, seed).await.into_iter().map(|w| format!("peer {i}: {w}")));
            }
            if report.is_empty() {
                break;
            }
        } else {
            report.push("the peers never settled".to_string());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: within {DEADLINE:?}, the writes did not settle with every subscriber and near cache \
             following them:\n{}",
            report.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let evicted = peers[2].mesh.replica().store().stats().evictions - evicted_before;
    assert!(evicted > 0, "seed {seed}: the bounded peer evicted nothing, so evictions were not raced");
    assert!(renamed > 0, "seed {seed}: no RENAME found its key, so renames were not raced");
    assert!(flushed > 0, "seed {seed}: no FLUSHALL ran, so none was raced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_leave_every_subscriber_and_near_cache_current() {
    let faults = Faults::with_seed(0);
    let peers = RespPeer::faulty_cluster(3, &faults, MeshConfig::for_test).await;
    let mut bounded = Conn::new(TcpStream::connect(("127.0.0.1", peers[2].port)).await.unwrap());
    let bound: [&[u8]; 6] = [b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru", b"maxmemory", BOUND.as_bytes()];
    assert_eq!(bounded.cmd(&bound).await, b"+OK\r\n");
    for seed in seeds() {
        run_seed(&peers, &faults, seed).await;
    }
    let st = faults.stats();
    let lossy_and_cut = seeds().iter().any(|s| s % 2 == 1) && seeds().iter().any(|s| s % 4 >= 2);
    assert!(!lossy_and_cut || st.dropped_loss > 0 && st.dropped_cut > 0, "the faults were not applied: {st:?}");
    for p in peers {
        p.stop().await;
    }
}
