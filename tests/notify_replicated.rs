//! Keyspace notifications and client-side caching of replicated changes,
//! over random command sequences on two peers of one mesh. Each step runs
//! one command of `redis_differential.rs`'s generator (transactions and
//! WATCH included) on one peer, the writer, chosen at random; the other,
//! the receiver, learns of it only by replication. Once both hold the
//! same registers:
//!
//! - the receiver's subscriber must have heard, for every key whose
//!   register there changed, exactly its two messages
//!   (`__keyspace@0__:<key>` and `__keyevent@0__:<event>`), with `set` if
//!   the key now has a value and `del` if it is deleted, and nothing else
//!   (but a `del` for a key whose tombstone was collected in the meantime,
//!   which may have merged one first). This is the promise an application keeping a near cache off
//!   notifications relies on (README.md, "Keyspace notifications"): a
//!   missing message is a stale entry that nothing will ever drop; an
//!   extra one costs a reload.
//! - on each peer, a RESP3 client with `CLIENT TRACKING on` (BCAST on
//!   half the seeds) keeps a near cache of the values it read (misses
//!   too), dropping what the invalidations name: after a round trip,
//!   every value it holds must be what the peer holds. It reads a key or
//!   two each step.
//!
//! Seeds 2 and 5 of every eight (one in RESP2 with BCAST tracking, one in
//! RESP3 with default tracking) lose 5% of the datagrams between the
//! peers while they are connected, and reorder them (2 ms of jitter).
//! Each seed ends with the two peers cut apart (fault-injecting sockets)
//! for a few steps, both writing the same keys, then healed. What each
//! merges then comes by pushes resent, or, on every fourth seed, where
//! the cut lasts until the peers have lost their link, by anti-entropy
//! (the run checks that it did); a key may change twice there (its write
//! pushed, then a later one). So after the
//! heal each peer must have heard every key whose register there changed,
//! the last message of each naming what the key now is, and no other key
//! (again, but a collected tombstone's);
//! and the near caches must hold what their peers hold, as after any
//! step.
//!
//! The receiver's messages are read until every expected one has come
//! (a missing one fails the run at the deadline), then up to a key the
//! receiver writes itself, so that an extra message of the step is caught
//! in it and a late one in the next. A failure names its seed and step;
//! `MESHCACHE_DIFF_SEED=S cargo test --test integration notify_replicated`
//! replays one seed (the choice of writer too: only message timing is not
//! replayed). `MESHCACHE_DIFF_SEEDS=N` runs more.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::redis_differential::{bulk, parse_array, seeds, Gen, KEYS};

use common::redis_ref::{show, Conn, RespPeer};
use common::wait::DEADLINE;
use meshcache::store::Register;
use meshcache::transport::faults::Faults;
use meshcache::wait::Wait;
use meshcache::MeshConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;

/// Keys each peer writes to close a step's messages; never generated.
const MARKS: [&[u8]; 2] = [b"mark:0", b"mark:1"];

/// Steps each seed runs connected, then cut apart.
const STEPS: usize = 300;
const CUT_STEPS: usize = 20;

/// How long a step's owed messages may take to come once the registers
/// are merged: generous, and shorter than a connection's own deadline
/// for a frame, so that a missing message fails with the step's report.
const OWED_WITHIN: Duration = Duration::from_secs(10);

/// One peer's side of the run: a connection for commands, one subscribed
/// to every keyspace and keyevent channel, a tracking client's near cache,
/// and its own generator (so that its MULTI and WATCH state is its
/// connection's).
struct Side {
    con: Conn,
    sub: Conn,
    near: Near,
    gen: Gen,
}

/// A near cache as a RESP3 client library keeps one: values read with
/// tracking on (`None`: the key was absent), dropped when an invalidation
/// names them, all dropped on a null one.
pub(crate) struct Near {
    con: Conn,
    cache: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    invalidated: usize,
}

impl Near {
    /// A client tracking the keys it reads, or with `bcast` every key.
    pub(crate) async fn connect(port: u16, bcast: bool) -> Near {
        let mut con = Conn::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        con.resp3 = true;
        con.cmd(&[b"HELLO", b"3"]).await;
        let on: &[&[u8]] =
            if bcast { &[b"CLIENT", b"TRACKING", b"on", b"BCAST"] } else { &[b"CLIENT", b"TRACKING", b"on"] };
        assert_eq!(con.cmd(on).await, b"+OK\r\n");
        Near { con, cache: BTreeMap::new(), invalidated: 0 }
    }

    /// Sends `args` and returns its reply, applying the invalidations that
    /// come before it (they are for changes the reply already shows).
    async fn round_trip(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut frame = self.con.cmd(args).await;
        while let Some(rest) = frame.strip_prefix(b">2\r\n$10\r\ninvalidate\r\n") {
            self.invalidated += 1;
            if rest == b"_\r\n" {
                self.cache.clear();
            } else {
                for k in
                    parse_array(rest).unwrap_or_else(|| panic!("an invalidation: {:?}", String::from_utf8_lossy(rest)))
                {
                    self.cache.remove(&k);
                }
            }
            frame = self.con.next().await;
        }
        frame
    }

    /// A read through the cache: from the peer when the cache has nothing.
    pub(crate) async fn get(&mut self, key: &[u8]) {
        if self.cache.contains_key(key) {
            return;
        }
        let reply = self.round_trip(&[b"GET", key]).await;
        let value = match reply.as_slice() {
            b"_\r\n" => None,
            r => match bulk(r) {
                Some((value, b"")) => Some(value.to_vec()),
                _ => panic!("GET's reply: {:?}", String::from_utf8_lossy(r)),
            },
        };
        self.cache.insert(key.to_vec(), value);
    }

    /// The first value held that `peer` no longer reads as: (key, held, on
    /// the peer). Run after a round trip, so that every invalidation the
    /// peer queued before it is applied.
    pub(crate) async fn stale(&mut self, peer: &RespPeer) -> Option<(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)> {
        assert_eq!(self.round_trip(&[b"PING"]).await, b"+PONG\r\n");
        self.cache.iter().find_map(|(k, v)| {
            let now = peer.mesh.get(k).map(|b| b.to_vec());
            (*v != now).then(|| (k.clone(), v.clone(), now))
        })
    }
}

/// A message as (channel, payload).
pub(crate) type Message = (Vec<u8>, Vec<u8>);

fn keyspace(key: &[u8]) -> Vec<u8> {
    [&b"__keyspace@0__:"[..], key].concat()
}

fn keyevent(event: &[u8]) -> Vec<u8> {
    [&b"__keyevent@0__:"[..], event].concat()
}

/// The channel and payload of a `pmessage` frame (a RESP3 push or a RESP2
/// array).
pub(crate) fn message(frame: &[u8]) -> Message {
    let mut f = frame.to_vec();
    if f.first() == Some(&b'>') {
        f[0] = b'*';
    }
    match parse_array(&f).as_deref() {
        Some([kind, _pattern, channel, payload]) if kind == b"pmessage" => (channel.clone(), payload.clone()),
        _ => panic!("not a pattern message: {:?}", String::from_utf8_lossy(frame)),
    }
}

fn is_mark(m: &Message) -> bool {
    MARKS.iter().any(|k| m.0 == keyspace(k) || m.1 == *k)
}

fn text(ms: &[Message]) -> String {
    let show = |m: &Message| format!("{} {}", String::from_utf8_lossy(&m.0), String::from_utf8_lossy(&m.1));
    format!("[{}]", ms.iter().map(show).collect::<Vec<_>>().join(", "))
}

/// Each generated key's register on `p` (absent: `None`).
fn registers(p: &RespPeer) -> BTreeMap<&'static str, Option<Register>> {
    KEYS.iter().map(|k| (*k, p.mesh.replica().store().register(k.as_bytes()))).collect()
}

/// Waits until the two peers' digests are equal: each holds every
/// register the other does.
async fn converge(peers: &[RespPeer]) {
    let root = |p: &RespPeer| p.mesh.replica().store().root();
    let wait = Wait::new(DEADLINE).every(Duration::from_millis(1));
    if let Err(e) = wait.until("the two peers' digests equal", || root(&peers[0]) == root(&peers[1])).await {
        panic!("{e}");
    }
}

/// What a peer owes its subscribers for its registers going from
/// `before` to `after`.
struct Owed {
    /// Each key whose register changed, with the event it must be heard
    /// with last: `set` if it has a value, `del` if deleted.
    must: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Keys whose register is gone: a tombstone collected, perhaps one
    /// merged just before (and heard as `del`). `del` or nothing.
    may_del: Vec<Vec<u8>>,
}

impl Owed {
    fn between(before: &BTreeMap<&str, Option<Register>>, after: &BTreeMap<&str, Option<Register>>) -> Owed {
        let mut owed = Owed { must: BTreeMap::new(), may_del: Vec::new() };
        for (k, now) in after {
            let key = k.as_bytes().to_vec();
            let Some(now) = now else {
                owed.may_del.push(key);
                continue;
            };
            if before[k].as_ref().is_some_and(|was| was.marker == now.marker) {
                continue;
            }
            let event: &[u8] = if now.val.is_tombstone() { b"del" } else { b"set" };
            owed.must.insert(key, event.to_vec());
        }
        owed
    }

    /// Whether every key owed has been heard with its event last.
    fn heard(&self, got: &[Message]) -> bool {
        let heard = by_key(got);
        self.must
            .iter()
            .all(|(k, e)| heard.get(k).is_some_and(|(space, event)| space.last() == Some(e) && event.last() == Some(e)))
    }

    /// Whether `got` is what was owed: each key on both channels alike,
    /// its last event the one owed (or `del` for a key gone), and no other
    /// key. With `once`, one event a key.
    fn paid_by(&self, got: &[Message], once: bool) -> bool {
        by_key(got).iter().all(|(k, (space, event))| {
            let last = match self.must.get(k) {
                Some(e) => e.as_slice(),
                None if self.may_del.contains(k) => b"del",
                None => return false,
            };
            space == event && space.last().is_some_and(|e| e == last) && (!once || space.len() == 1)
        }) && self.heard(got)
    }

    fn text(&self) -> String {
        let mut s: Vec<String> = self
            .must
            .iter()
            .map(|(k, e)| format!("{} {}", String::from_utf8_lossy(k), String::from_utf8_lossy(e)))
            .collect();
        s.extend(self.may_del.iter().map(|k| format!("{} del or nothing", String::from_utf8_lossy(k))));
        format!("[{}]", s.join(", "))
    }
}

/// One key's events: those heard on its keyspace channel, and those heard
/// with its name on keyevent channels, in order.
type Heard = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Each key's events in `got`.
fn by_key(got: &[Message]) -> BTreeMap<Vec<u8>, Heard> {
    let mut out: BTreeMap<Vec<u8>, Heard> = BTreeMap::new();
    for (channel, payload) in got {
        if let Some(key) = channel.strip_prefix(b"__keyspace@0__:") {
            out.entry(key.to_vec()).or_default().0.push(payload.clone());
        } else if let Some(event) = channel.strip_prefix(b"__keyevent@0__:") {
            out.entry(payload.clone()).or_default().1.push(event.to_vec());
        } else {
            panic!("a message on {}", String::from_utf8_lossy(channel));
        }
    }
    out
}

/// Reads `side`'s subscriber until `done` holds for what has come, then
/// writes its mark on `peer` (through the embedded API: the side's
/// connection may be inside a MULTI) and reads up to the mark's own
/// messages. Returns every message other than the marks', in order; what
/// has come by `OWED_WITHIN` if `done` never held.
async fn collect(
    side: &mut Side,
    peer: &RespPeer,
    mark: &'static [u8],
    step: usize,
    done: impl Fn(&[Message]) -> bool,
) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    let reading = async {
        while !done(&got) {
            let m = message(&side.sub.next().await);
            if !is_mark(&m) {
                got.push(m);
            }
        }
    };
    if tokio::time::timeout(OWED_WITHIN, reading).await.is_err() {
        return got;
    }
    peer.mesh.insert(mark, step.to_string()).unwrap();
    loop {
        let m = message(&side.sub.next().await);
        if m == (keyspace(mark), b"set".to_vec()) {
            assert_eq!(message(&side.sub.next().await), (keyevent(b"set"), mark.to_vec()));
            break;
        }
        if !is_mark(&m) {
            got.push(m);
        }
    }
    got
}

/// The last commands run, for a failure's report.
fn recent(history: &[String]) -> String {
    history[history.len().saturating_sub(30)..].join("\n")
}

/// Fails the run if a near cache holds a value its peer has replaced, then
/// reads a key or two through each.
async fn check_near(sides: &mut [Side], peers: &[RespPeer], pick: &mut SmallRng, what: &str, history: &[String]) {
    for (i, side) in sides.iter_mut().enumerate() {
        if let Some((key, held, now)) = side.near.stale(&peers[i]).await {
            let value = |v: &Option<Vec<u8>>| format!("{:?}", v.as_ref().map(|v| String::from_utf8_lossy(v)));
            panic!(
                "{what}: peer {i}'s tracking client still holds {} for {} where the peer reads {}\nthe commands \
                 before it:\n{}",
                value(&held),
                String::from_utf8_lossy(&key),
                value(&now),
                recent(history)
            );
        }
        for _ in 0..pick.random_range(1..3) {
            side.near.get(KEYS[pick.random_range(0..KEYS.len())].as_bytes()).await;
        }
    }
}

/// Runs the next command of `writer`'s generator on its connection.
async fn run_command(sides: &mut [Side], writer: usize, history: &mut Vec<String>) -> String {
    let cmd = sides[writer].gen.next();
    let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
    sides[writer].con.cmd(&args).await;
    history.push(format!("peer {writer}: {}", show(&args)));
    show(&args)
}

/// Whether seed `seed` loses and reorders datagrams while connected.
fn lossy(seed: u64) -> bool {
    matches!(seed % 8, 2 | 5)
}

async fn run_seed(peers: &[RespPeer], faults: &Faults, seed: u64) {
    // Odd seeds in RESP3, where a message is a push.
    let resp3 = seed % 2 == 1;
    let mut sides = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let connect = async || Conn::new(TcpStream::connect(("127.0.0.1", p.port)).await.unwrap());
        let (mut con, mut sub) = (connect().await, connect().await);
        if resp3 {
            for c in [&mut con, &mut sub] {
                c.resp3 = true;
                c.cmd(&[b"HELLO", b"3"]).await;
            }
        }
        sub.cmd(&[b"PSUBSCRIBE", b"__key*@0__:*"]).await;
        // Seeds 2 and 3 of every four track in BCAST mode.
        let near = Near::connect(p.port, seed % 4 >= 2).await;
        sides.push(Side { con, sub, near, gen: Gen::new(seed.wrapping_mul(2).wrapping_add(i as u64)) });
    }
    // A clean start: FLUSHALL is mesh-wide; its messages are read and
    // dropped with the marks'.
    assert_eq!(sides[0].con.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
    converge(peers).await;
    for ((side, peer), mark) in sides.iter_mut().zip(peers).zip(MARKS) {
        collect(side, peer, mark, 0, |_| true).await;
    }
    let mut pick = SmallRng::seed_from_u64(seed ^ 0x7e91_1a5e);
    let mut history: Vec<String> = Vec::new();
    // Two seeds of every eight lose 5% of the datagrams while connected,
    // and reorder them: pushes then come by QUIC's retransmissions, out
    // of order, or by anti-entropy.
    let lossy = lossy(seed);
    if lossy {
        faults.drop_rate(0.05);
        faults.jitter(Duration::from_millis(2));
    }
    for step in 0..STEPS {
        let writer = pick.random_range(0..2usize);
        let receiver = 1 - writer;
        converge(peers).await;
        let before = registers(&peers[receiver]);
        let command = run_command(&mut sides, writer, &mut history).await;
        converge(peers).await;
        let owed = Owed::between(&before, &registers(&peers[receiver]));
        let got = collect(&mut sides[receiver], &peers[receiver], MARKS[receiver], step, |got| owed.heard(got)).await;
        // The writer's own messages (its commands' events, compared with
        // redis-server's in redis_differential.rs) are read and dropped.
        collect(&mut sides[writer], &peers[writer], MARKS[writer], step, |_| true).await;
        if !owed.paid_by(&got, true) {
            panic!(
                "seed {seed} (resp3: {resp3}), step {step}: peer {receiver}'s messages for `{command}` on peer \
                 {writer} are not the changes it merged\nheard: {}\nowed:  {}\nthe commands before it:\n{}",
                text(&got),
                owed.text(),
                recent(&history[..history.len() - 1])
            );
        }
        let what = format!("seed {seed} (resp3: {resp3}), step {step}, after `{command}` on peer {writer}");
        check_near(&mut sides, peers, &mut pick, &what, &history).await;
    }

    // Cut apart: both peers write, each hearing only its own writes.
    faults.heal();
    let addrs: Vec<_> = peers.iter().map(|p| p.mesh.local_addr()).collect();
    faults.partition(&addrs[..1], &addrs[1..]);
    let link_lost = seed % 4 == 3;
    if link_lost {
        let lost = || peers.iter().all(|p| p.mesh.stats().connected == 0);
        common::wait::eventually("the peers lose their link", lost).await;
    }
    let repaired: u64 = peers.iter().map(|p| p.mesh.stats().ae_entries_received).sum();
    history.push(format!("(cut apart{})", if link_lost { ", until the link is lost" } else { "" }));
    for step in STEPS..STEPS + CUT_STEPS {
        let writer = pick.random_range(0..2usize);
        let command = run_command(&mut sides, writer, &mut history).await;
        collect(&mut sides[writer], &peers[writer], MARKS[writer], step, |_| true).await;
        let what = format!("seed {seed} (resp3: {resp3}), step {step} (cut apart), after `{command}` on peer {writer}");
        check_near(&mut sides, peers, &mut pick, &what, &history).await;
    }
    let before: Vec<_> = peers.iter().map(registers).collect();
    faults.heal();
    history.push("(healed)".into());
    converge(peers).await;
    for (i, side) in sides.iter_mut().enumerate() {
        let owed = Owed::between(&before[i], &registers(&peers[i]));
        let got = collect(side, &peers[i], MARKS[i], STEPS + CUT_STEPS, |got| owed.heard(got)).await;
        if !owed.paid_by(&got, false) {
            panic!(
                "seed {seed} (resp3: {resp3}), after the heal: peer {i}'s messages are not the changes it merged\n\
                 heard: {}\nowed (the last event of each key): {}\nthe commands before it:\n{}",
                text(&got),
                owed.text(),
                recent(&history)
            );
        }
    }
    // Each side's marks written while cut apart are there to repair, at
    // least. A session counts its entries when it ends, which can be just
    // after the digests agree.
    if link_lost {
        let what = format!("seed {seed}: the heal after a lost link brings entries by anti-entropy");
        let now = || peers.iter().map(|p| p.mesh.stats().ae_entries_received).sum::<u64>();
        common::wait::eventually(&what, || now() > repaired).await;
    }
    let what = format!("seed {seed} (resp3: {resp3}), after the heal");
    check_near(&mut sides, peers, &mut pick, &what, &history).await;

    let invalidated: usize = sides.iter().map(|s| s.near.invalidated).sum();
    assert!(invalidated > 0, "seed {seed}: no tracking client was ever invalidated");
    for side in &mut sides {
        side.con.resp3 = false;
        side.con.cmd(&[b"RESET"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_notify_every_replicated_change() {
    let faults = Faults::with_seed(0);
    // A link cut apart is lost within a second, not the default three.
    let config = |name: &str| MeshConfig {
        idle_timeout: Duration::from_secs(1),
        keep_alive: Duration::from_millis(250),
        ..MeshConfig::for_test(name)
    };
    let peers = RespPeer::faulty_cluster(2, &faults, config).await;
    for seed in seeds() {
        run_seed(&peers, &faults, seed).await;
    }
    let lossy = seeds().into_iter().any(lossy);
    assert!(!lossy || faults.stats().dropped_loss > 0, "no datagram was lost: {:?}", faults.stats());
    for p in peers {
        p.stop().await;
    }
}
