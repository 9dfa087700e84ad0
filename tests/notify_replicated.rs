//! Keyspace notifications of replicated changes, over random command
//! sequences on two peers of one mesh. Each step runs one command of
//! `redis_differential.rs`'s generator (transactions and WATCH included)
//! on one peer, the writer, chosen at random; the other, the receiver,
//! learns of it only by replication. Once both hold the same registers,
//! the receiver's subscriber must have heard, for every key whose register
//! there changed, exactly its two messages (`__keyspace@0__:<key>` and
//! `__keyevent@0__:<event>`), with `set` if the key now has a value and
//! `del` if it is deleted, and nothing else. This is the promise an
//! application keeping a near cache off notifications relies on (README.md,
//! "Keyspace notifications"): a missing message is a stale entry that
//! nothing will ever drop; an extra one costs a reload.
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
use crate::redis_differential::{parse_array, seeds, Gen, KEYS};

use common::redis_ref::{show, Conn, RespPeer};
use common::wait::DEADLINE;
use meshcache::store::Register;
use meshcache::wait::Wait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;

/// Keys each peer writes to close a step's messages; never generated.
const MARKS: [&[u8]; 2] = [b"mark:0", b"mark:1"];

/// How long a step's owed messages may take to come once the registers
/// are merged: generous, and shorter than a connection's own deadline
/// for a frame, so that a missing message fails with the step's report.
const OWED_WITHIN: Duration = Duration::from_secs(10);

/// One peer's side of the run: a connection for commands, one subscribed
/// to every keyspace and keyevent channel, and its own generator (so that
/// its MULTI and WATCH state is its connection's).
struct Side {
    con: Conn,
    sub: Conn,
    gen: Gen,
}

/// A message as (channel, payload).
type Message = (Vec<u8>, Vec<u8>);

fn keyspace(key: &[u8]) -> Vec<u8> {
    [&b"__keyspace@0__:"[..], key].concat()
}

fn keyevent(event: &[u8]) -> Vec<u8> {
    [&b"__keyevent@0__:"[..], event].concat()
}

/// The channel and payload of a `pmessage` frame (a RESP3 push or a RESP2
/// array).
fn message(frame: &[u8]) -> Message {
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

/// The messages a receiver owes for its registers going from `before` to
/// `after`, sorted: two for each key whose register changed.
fn owed(before: &BTreeMap<&str, Option<Register>>, after: &BTreeMap<&str, Option<Register>>) -> Vec<Message> {
    let mut out = Vec::new();
    for (k, now) in after {
        // A register that is gone was a tombstone collected: no change to
        // what the key reads as.
        let Some(now) = now else { continue };
        if before[k].as_ref().is_some_and(|was| was.marker == now.marker) {
            continue;
        }
        let event: &[u8] = if now.val.is_tombstone() { b"del" } else { b"set" };
        out.push((keyspace(k.as_bytes()), event.to_vec()));
        out.push((keyevent(event), k.as_bytes().to_vec()));
    }
    out.sort();
    out
}

/// Reads `side`'s subscriber until `want` have all come (in any order),
/// then writes its mark on `peer` (through the embedded API: the side's
/// connection may be inside a MULTI) and reads up to the mark's own
/// messages. Returns every message other than the marks', sorted.
async fn collect(side: &mut Side, peer: &RespPeer, mark: &'static [u8], step: usize, want: &[Message]) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    let missing = |got: &[Message]| want.iter().filter(|w| !got.contains(w)).count();
    let reading = async {
        while missing(&got) > 0 {
            let m = message(&side.sub.next().await);
            if !is_mark(&m) {
                got.push(m);
            }
        }
    };
    if tokio::time::timeout(OWED_WITHIN, reading).await.is_err() {
        got.sort();
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
    got.sort();
    got
}

async fn run_seed(peers: &[RespPeer], seed: u64, steps: usize) {
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
        sides.push(Side { con, sub, gen: Gen::new(seed.wrapping_mul(2).wrapping_add(i as u64)) });
    }
    // A clean start: FLUSHALL is mesh-wide; its messages are read and
    // dropped with the marks'.
    assert_eq!(sides[0].con.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
    converge(peers).await;
    for ((side, peer), mark) in sides.iter_mut().zip(peers).zip(MARKS) {
        collect(side, peer, mark, 0, &[]).await;
    }
    let mut pick = SmallRng::seed_from_u64(seed ^ 0x7e91_1a5e);
    let mut history: Vec<String> = Vec::new();
    for step in 0..steps {
        let writer = pick.random_range(0..2usize);
        let receiver = 1 - writer;
        converge(peers).await;
        let before = registers(&peers[receiver]);
        let cmd = sides[writer].gen.next();
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
        sides[writer].con.cmd(&args).await;
        history.push(format!("peer {writer}: {}", show(&args)));
        converge(peers).await;
        let want = owed(&before, &registers(&peers[receiver]));
        let got = collect(&mut sides[receiver], &peers[receiver], MARKS[receiver], step, &want).await;
        // The writer's own messages (its commands' events, compared with
        // redis-server's in redis_differential.rs) are read and dropped.
        collect(&mut sides[writer], &peers[writer], MARKS[writer], step, &[]).await;
        if got != want {
            let from = history.len().saturating_sub(30);
            panic!(
                "seed {seed} (resp3: {resp3}), step {step}: peer {receiver}'s messages for `{}` on peer {writer} are \
                 not the changes it merged\nheard: {}\nowed:  {}\nthe commands before it:\n{}",
                show(&args),
                text(&got),
                text(&want),
                history[from..history.len() - 1].join("\n")
            );
        }
    }
    for side in &mut sides {
        side.con.resp3 = false;
        side.con.cmd(&[b"RESET"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_notify_every_replicated_change() {
    let peers = RespPeer::cluster(2).await;
    for seed in seeds() {
        run_seed(&peers, seed, 300).await;
    }
    for p in peers {
        p.stop().await;
    }
}
