//! The Redis-protocol front door, end to end on loopback: in-process peers
//! over real QUIC, a RESP server per peer, the `redis` crate (and a raw
//! socket, for exact wire bytes) as the client. Every wait is bounded by a
//! deadline; nothing asserts on timing.

use crate::common;

use std::time::Duration;

use bytes::BytesMut;
use meshcache::resp::RespConfig;
use meshcache::transport::certs::EphemeralCa;
use meshcache::{Mesh, MeshConfig};
use redis::{AsyncCommands, Value};
use redis_protocol::resp3::types::{OwnedFrame, Resp3Frame};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use common::mesh::{silent_seed, start};
use common::redis_ref::{Raw, Server};
use common::wait::{eventually, eventually_async, DEADLINE};

/// `n` peers (the first alone, the others seeded with it), all booted and
/// fully connected, each with a RESP server.
async fn cluster(n: usize, config: RespConfig) -> (Vec<Mesh>, Vec<Server>) {
    let ca = EphemeralCa::new().unwrap();
    let first = start(&ca, "p0", &[]).await;
    let mut meshes = vec![first.clone()];
    for i in 1..n {
        meshes.push(start(&ca, &format!("p{i}"), &[first.local_addr()]).await);
    }
    for m in &meshes {
        assert!(m.wait_ready(DEADLINE).await, "{} never finished bootstrap", m.id());
    }
    eventually("full mesh", || meshes.iter().all(|m| m.stats().connected == n - 1)).await;
    let mut servers = Vec::new();
    for m in &meshes {
        servers.push(Server::start(m, config.clone()).await);
    }
    (meshes, servers)
}

/// One peer, alone, with a RESP server in front of it.
async fn solo(config: RespConfig) -> (Mesh, Server) {
    let ca = EphemeralCa::new().unwrap();
    let mesh = start(&ca, "solo", &[]).await;
    let server = Server::start(&mesh, config).await;
    (mesh, server)
}

async fn shutdown(meshes: Vec<Mesh>, servers: Vec<Server>) {
    for s in servers {
        s.stop().await;
    }
    for m in meshes {
        m.shutdown().await;
    }
}

async fn get(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    con.get(key).await.unwrap()
}

async fn info(con: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query_async(con).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_peer_are_read_on_another() {
    let (meshes, servers) = cluster(3, RespConfig::default()).await;
    let mut a = servers[0].conn().await;
    let mut b = servers[1].conn().await;

    // SET on A, GET on B.
    let () = a.set("greeting", "hello").await.unwrap();
    eventually_async("set reaches B", || async { get(&mut b.clone(), "greeting").await.as_deref() == Some("hello") })
        .await;

    // MSET on B, MGET on A (and a missing key in the middle).
    let () = redis::cmd("MSET").arg(&["m1", "1", "m2", "2"]).query_async(&mut b).await.unwrap();
    eventually_async("mset reaches A", || async {
        let v: Vec<Option<String>> = a.clone().mget(&["m1", "nope", "m2"]).await.unwrap();
        v == [Some("1".into()), None, Some("2".into())]
    })
    .await;

    // DEL on B removes it on A; DEL counts visible keys only.
    let n: i64 = b.del(&["greeting", "never-was"]).await.unwrap();
    assert_eq!(n, 1);
    eventually_async("del reaches A", || async { get(&mut a.clone(), "greeting").await.is_none() }).await;

    // EXPIRE on A: the absolute expiry is the same on every peer, and TTL
    // counts down from it everywhere.
    let () = a.set("ttl", "v").await.unwrap();
    let ttl: i64 = a.ttl("ttl").await.unwrap();
    assert_eq!(ttl, -1, "no expiry yet");
    let set: bool = a.expire("ttl", 1000).await.unwrap();
    assert!(set);
    let at_a: i64 = redis::cmd("PEXPIRETIME").arg("ttl").query_async(&mut a).await.unwrap();
    eventually_async("expiry reaches B", || async {
        let at_b: i64 = redis::cmd("PEXPIRETIME").arg("ttl").query_async(&mut b.clone()).await.unwrap();
        at_b == at_a
    })
    .await;
    for con in [&mut a, &mut b] {
        let pttl: i64 = con.pttl("ttl").await.unwrap();
        assert!((1..=1_000_000).contains(&pttl), "{pttl}");
        let ttl: i64 = con.ttl("ttl").await.unwrap();
        assert!((1..=1000).contains(&ttl), "{ttl}");
    }
    // A short PEXPIRE: gone everywhere once it runs out.
    let _: bool = a.pexpire("ttl", 200).await.unwrap();
    for s in &servers {
        let mut c = s.conn().await;
        eventually_async("key expired on every peer", || async { get(&mut c.clone(), "ttl").await.is_none() }).await;
        let t: i64 = c.ttl("ttl").await.unwrap();
        assert_eq!(t, -2);
    }
    // EXPIRE with a non-positive time deletes, everywhere.
    let () = b.set("doomed", "x").await.unwrap();
    eventually_async("doomed reaches A", || async { get(&mut a.clone(), "doomed").await.is_some() }).await;
    let n: i64 = redis::cmd("EXPIRE").arg("doomed").arg(0).query_async(&mut a).await.unwrap();
    assert_eq!(n, 1);
    eventually_async("expire 0 deletes on B", || async { get(&mut b.clone(), "doomed").await.is_none() }).await;

    // FLUSHALL on A converges to empty everywhere.
    let () = redis::cmd("SET").arg("k1").arg("v").query_async(&mut b).await.unwrap();
    eventually_async("k1 reaches A", || async { get(&mut a.clone(), "k1").await.is_some() }).await;
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut b).await.unwrap();
    assert!(n >= 3, "m1 m2 k1: {n}");
    let () = redis::cmd("FLUSHALL").arg("ASYNC").query_async(&mut a).await.unwrap();
    for s in &servers {
        let c = s.conn().await;
        eventually_async("flushall converges", || async {
            let n: i64 = redis::cmd("DBSIZE").query_async(&mut c.clone()).await.unwrap();
            n == 0
        })
        .await;
    }

    // INFO: Redis's sections and the mesh's own.
    let all = info(&mut a, "everything").await;
    for needle in ["# Server", "redis_version:", "# Clients", "# Stats", "# Keyspace", "# Meshcache", "name:p0"] {
        assert!(all.contains(needle), "{needle} missing from INFO:\n{all}");
    }
    let mc = info(&mut b, "meshcache").await;
    assert!(mc.starts_with("# Meshcache\r\n"), "{mc}");
    assert!(!mc.contains("# Server"), "{mc}");
    for needle in ["name:p1", "booted:1", "members:2", "connected:2", "deltas_received:", "ae_rounds:", "peer0:name=p"]
    {
        assert!(mc.contains(needle), "{needle} missing:\n{mc}");
    }
    assert!(mc.contains("synced_ago_ms="), "{mc}");
    // The link counters, as MeshStats has them: b made a link to each
    // peer, refused none.
    let field = |name: &str| -> u64 {
        let line =
            mc.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_else(|| panic!("{name}:\n{mc}"));
        line.trim().parse().unwrap_or_else(|e| panic!("{name}: {line:?}: {e}"))
    };
    assert!(field("links_made") >= 2, "{mc}");
    // Read before, so at most what the counter holds now.
    assert!(field("links_made") <= meshes[1].stats().links_made, "{mc}");
    assert_eq!((field("tls_refused"), field("version_refusals")), (0, 0), "{mc}");
    // A gauge: dials may still run after the links are up (a crossed
    // pair), but never more than the two other peers' addresses.
    assert!(field("dials") <= 2, "{mc}");
    shutdown(meshes, servers).await;
}

/// PUBLISH on one peer reaches SUBSCRIBE, PSUBSCRIBE and (for SPUBLISH)
/// SSUBSCRIBE clients on every peer, in RESP2 and RESP3, after the writes
/// made before it; PUBLISH and PUBSUB count this peer's subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_reach_subscribers_on_every_peer() {
    let (meshes, servers) = cluster(3, RespConfig::default()).await;
    let mut b = Raw::connect(servers[1].port).await;
    assert_eq!(b.cmd(&["SUBSCRIBE", "news"]).await, "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    let mut c = Raw::connect(servers[2].port).await;
    c.resp3 = true;
    assert!(c.cmd(&["HELLO", "3"]).await.starts_with("%7\r\n"));
    assert_eq!(c.cmd(&["PSUBSCRIBE", "n*"]).await, ">3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n");
    assert_eq!(c.cmd(&["SSUBSCRIBE", "shard"]).await, ">3\r\n$10\r\nssubscribe\r\n$5\r\nshard\r\n:1\r\n");
    let mut a_sub = Raw::connect(servers[0].port).await;
    assert_eq!(a_sub.cmd(&["SUBSCRIBE", "news"]).await, "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    let mut a = Raw::connect(servers[0].port).await;
    assert_eq!(
        a.cmd(&["PUBSUB", "NUMSUB", "news", "shard"]).await,
        "*4\r\n$4\r\nnews\r\n:1\r\n$5\r\nshard\r\n:0\r\n",
        "counts are this peer's"
    );
    let mut c2 = Raw::connect(servers[2].port).await;
    assert_eq!(c2.cmd(&["PUBSUB", "NUMPAT"]).await, ":1\r\n");
    assert_eq!(c2.cmd(&["PUBSUB", "SHARDCHANNELS"]).await, "*1\r\n$5\r\nshard\r\n");
    assert_eq!(c2.cmd(&["PUBSUB", "CHANNELS"]).await, "*0\r\n");

    // Writes, each followed by a message naming the key: a subscriber on B
    // told of a key reads it there at least as new as when it was named.
    let mut b_reader = Raw::connect(servers[1].port).await;
    for i in 0..50 {
        let v = format!("v{i}");
        // Pipelined, so that the write and the message leave in one batch.
        let req = format!(
            "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${n}\r\n{v}\r\n*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n${n}\r\n{v}\r\n",
            n = v.len()
        );
        a.send(req.as_bytes()).await;
        assert_eq!(a.reply().await.unwrap(), "+OK\r\n");
        assert_eq!(a.reply().await.unwrap(), ":1\r\n", "A's own subscriber");
        let msg = format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n${}\r\n{v}\r\n", v.len());
        assert_eq!(a_sub.reply().await.unwrap(), msg);
        assert_eq!(b.reply().await.unwrap(), msg);
        let got = b_reader.cmd(&["GET", "k"]).await;
        let n: usize = got.rsplit("\r\n").nth(1).unwrap().trim_start_matches('v').parse().unwrap();
        assert!(n >= i, "B read {got:?} after the message naming v{i}");
        let pmsg = format!(">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n${}\r\n{v}\r\n", v.len());
        assert_eq!(c.reply().await.unwrap(), pmsg);
    }
    // SPUBLISH reaches shard subscribers only: B's next message is the
    // PUBLISH after it.
    assert_eq!(a.cmd(&["SPUBLISH", "shard", "hello"]).await, ":0\r\n");
    assert_eq!(c.reply().await.unwrap(), ">3\r\n$8\r\nsmessage\r\n$5\r\nshard\r\n$5\r\nhello\r\n");
    assert_eq!(a.cmd(&["PUBLISH", "news", "last"]).await, ":1\r\n");
    assert_eq!(b.reply().await.unwrap(), "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$4\r\nlast\r\n");
    assert_eq!(c.reply().await.unwrap(), ">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$4\r\nlast\r\n");
    // Unsubscribing everything, then the RESP2 connection is free again.
    assert_eq!(b.cmd(&["UNSUBSCRIBE"]).await, "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n");
    assert_eq!(b.cmd(&["GET", "k"]).await, "$3\r\nv49\r\n");
    assert_eq!(c.cmd(&["SUNSUBSCRIBE"]).await, ">3\r\n$12\r\nsunsubscribe\r\n$5\r\nshard\r\n:0\r\n");
    let stats = meshes[0].stats();
    assert_eq!(stats.messages_published, 52);
    assert!(meshes[1].stats().messages_received >= 52);
    let mesh_info = a.cmd(&["INFO", "meshcache"]).await;
    assert!(mesh_info.contains("\r\nmessages_published:52\r\n"), "{mesh_info}");
    shutdown(meshes, servers).await;
}

/// A SCAN walk returns every key present for the whole walk while another
/// client writes, deletes and (under a memory bound) evicts other keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_misses_no_key_present_throughout_while_others_change() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut con = server.conn().await;
    let mut writer = server.conn().await;
    // Only keys with a TTL may be evicted: the 1,000 kept keys have none.
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "volatile-lru", "maxmemory", "2mb"])
        .query_async(&mut con)
        .await
        .unwrap();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(100) {
        let mut c = redis::cmd("MSET");
        for i in chunk {
            c.arg(format!("kept:{i}")).arg("v");
        }
        let () = c.query_async(&mut con).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let stop = stop.clone();
        async move {
            let big = vec![b'x'; 1024];
            let mut i = 0u64;
            // Bounded: at most 50,000 writes, or until the walk ends.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 50_000 {
                let () = redis::cmd("SET")
                    .arg(format!("churn:{i}"))
                    .arg(&big[..])
                    .arg("EX")
                    .arg(1000)
                    .query_async(&mut writer)
                    .await
                    .unwrap();
                if i.is_multiple_of(3) {
                    let _: i64 = writer.del(format!("churn:{}", i / 2)).await.unwrap();
                }
                i += 1;
            }
            i
        }
    });
    // Let the churn fill the bound before the walk starts.
    eventually_async("evictions start", || async {
        let stats = info(&mut con.clone(), "stats").await;
        stats.lines().any(|l| l.strip_prefix("evicted_keys:").is_some_and(|n| n.trim() != "0"))
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0u64;
    let mut steps = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(20).query_async(&mut con).await.unwrap();
        seen.extend(keys.into_iter().filter(|k| k.starts_with("kept:")));
        steps += 1;
        assert!(steps < 100_000, "the walk ends");
        if next == 0 {
            break;
        }
        cursor = next;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = churn.await.unwrap();
    assert!(writes > 0);
    for i in 0..1000 {
        assert!(seen.contains(&format!("kept:{i}")), "kept:{i} was present throughout and not returned");
    }
    server.stop().await;
    mesh.shutdown().await;
}

/// Read-modify-write commands run on one peer and replicate their result;
/// two peers incrementing one counter at once converge on one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_write_commands_replicate_their_result() {
    let (meshes, servers) = cluster(2, RespConfig::default()).await;
    let mut a = servers[0].conn().await;
    let mut b = servers[1].conn().await;
    let q = async |con: &mut redis::aio::MultiplexedConnection, args: &[&str]| -> Value {
        redis::cmd(args[0]).arg(&args[1..]).query_async(con).await.unwrap()
    };
    assert_eq!(q(&mut a, &["APPEND", "log", "one,"]).await, Value::Int(4));
    assert_eq!(q(&mut a, &["APPEND", "log", "two"]).await, Value::Int(7));
    assert_eq!(q(&mut a, &["INCRBY", "hits", "41"]).await, Value::Int(41));
    assert_eq!(q(&mut a, &["INCR", "hits"]).await, Value::Int(42));
    assert_eq!(q(&mut a, &["SETBIT", "flags", "9", "1"]).await, Value::Int(0));
    assert_eq!(q(&mut a, &["SETRANGE", "log", "0", "ONE"]).await, Value::Int(7));
    assert_eq!(
        q(&mut a, &["BITFIELD", "fields", "SET", "u8", "#1", "200", "INCRBY", "i4", "0", "-3"]).await,
        Value::Array(vec![Value::Int(0), Value::Int(-3)])
    );
    eventually_async("the results reach B", || async {
        let v: Vec<Option<Vec<u8>>> = b.clone().mget(&["log", "hits", "flags", "fields"]).await.unwrap();
        v == [Some(b"ONE,two".to_vec()), Some(b"42".to_vec()), Some(vec![0, 0x40]), Some(vec![0xd0, 200])]
    })
    .await;
    assert_eq!(q(&mut b, &["GETBIT", "flags", "9"]).await, Value::Int(1));
    assert_eq!(
        q(&mut b, &["BITFIELD_RO", "fields", "GET", "u8", "8", "GET", "i4", "0"]).await,
        Value::Array(vec![Value::Int(200), Value::Int(-3)])
    );
    assert_eq!(q(&mut b, &["INCR", "hits"]).await, Value::Int(43), "B increments what A wrote");

    // Both peers increment at once, many times: each INCR is atomic where
    // it runs, the two peers' results are resolved by stamp, and both end
    // on the same value, at most the sum.
    let (ra, rb) = tokio::join!(
        async {
            for _ in 0..200 {
                let _: i64 = redis::cmd("INCR").arg("race").query_async(&mut a).await.unwrap();
            }
        },
        async {
            for _ in 0..200 {
                let _: i64 = redis::cmd("INCR").arg("race").query_async(&mut b).await.unwrap();
            }
        }
    );
    let ((), ()) = (ra, rb);
    eventually_async("both peers read one counter", || async {
        let x: Option<i64> = a.clone().get("race").await.unwrap();
        let y: Option<i64> = b.clone().get("race").await.unwrap();
        x.is_some() && x == y
    })
    .await;
    let end: i64 = a.get("race").await.unwrap();
    assert!((200..=400).contains(&end), "{end}");
    shutdown(meshes, servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_options_follow_redis() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut con = server.conn().await;
    let shared = con.clone();
    let run = async |c: &mut redis::Cmd| -> Value { c.clone().query_async(&mut shared.clone()).await.unwrap() };

    assert_eq!(run(redis::cmd("SET").arg("k").arg("v1").arg("NX")).await, Value::Okay);
    assert_eq!(run(redis::cmd("SET").arg("k").arg("v2").arg("NX")).await, Value::Nil, "NX on an existing key");
    assert_eq!(run(redis::cmd("SET").arg("missing").arg("v").arg("XX")).await, Value::Nil, "XX on a missing key");
    assert_eq!(run(redis::cmd("EXISTS").arg("missing")).await, Value::Int(0));
    assert_eq!(run(redis::cmd("SET").arg("k").arg("v3").arg("XX").arg("GET")).await, Value::BulkString(b"v1".to_vec()));
    assert_eq!(
        run(redis::cmd("SET").arg("k").arg("v4").arg("NX").arg("GET")).await,
        Value::BulkString(b"v3".to_vec()),
        "NX GET returns the old value and does not write"
    );
    assert_eq!(get(&mut con, "k").await.as_deref(), Some("v3"));
    assert_eq!(run(redis::cmd("SET").arg("fresh").arg("x").arg("GET")).await, Value::Nil);

    // EX, then KEEPTTL keeps it, a plain SET drops it.
    assert_eq!(run(redis::cmd("SET").arg("t").arg("a").arg("EX").arg(100)).await, Value::Okay);
    let at: i64 = redis::cmd("PEXPIRETIME").arg("t").query_async(&mut con).await.unwrap();
    assert!(at > 0);
    assert_eq!(run(redis::cmd("SET").arg("t").arg("b").arg("KEEPTTL")).await, Value::Okay);
    let at2: i64 = redis::cmd("PEXPIRETIME").arg("t").query_async(&mut con).await.unwrap();
    assert_eq!(at, at2, "KEEPTTL keeps the absolute expiry");
    assert_eq!(get(&mut con, "t").await.as_deref(), Some("b"));
    assert_eq!(run(redis::cmd("SET").arg("t").arg("c")).await, Value::Okay);
    assert_eq!(run(redis::cmd("TTL").arg("t")).await, Value::Int(-1));
    // EXAT / PXAT are absolute; one in the past deletes.
    let future_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 500;
    assert_eq!(run(redis::cmd("SET").arg("t").arg("d").arg("EXAT").arg(future_s)).await, Value::Okay);
    assert_eq!(run(redis::cmd("EXPIRETIME").arg("t")).await, Value::Int(future_s as i64));
    assert_eq!(run(redis::cmd("SET").arg("t").arg("e").arg("PXAT").arg(1000)).await, Value::Okay);
    assert_eq!(run(redis::cmd("GET").arg("t")).await, Value::Nil);
    // PERSIST.
    assert_eq!(run(redis::cmd("SET").arg("p").arg("v").arg("PX").arg(100_000)).await, Value::Okay);
    assert_eq!(run(redis::cmd("PERSIST").arg("p")).await, Value::Int(1));
    assert_eq!(run(redis::cmd("PERSIST").arg("p")).await, Value::Int(0));
    assert_eq!(run(redis::cmd("PTTL").arg("p")).await, Value::Int(-1));
    assert_eq!(run(redis::cmd("PTTL").arg("nope")).await, Value::Int(-2));
    // EXPIRE's NX / XX / GT / LT.
    let e = |args: &[&str]| {
        let mut c = redis::cmd("EXPIRE");
        c.arg("p").arg(args);
        c
    };
    assert_eq!(run(&mut e(&["100", "XX"])).await, Value::Int(0), "XX without expiry");
    assert_eq!(run(&mut e(&["100", "GT"])).await, Value::Int(0), "no expiry is infinite for GT");
    assert_eq!(run(&mut e(&["100", "NX"])).await, Value::Int(1));
    assert_eq!(run(&mut e(&["200", "NX"])).await, Value::Int(0));
    assert_eq!(run(&mut e(&["50", "GT"])).await, Value::Int(0));
    assert_eq!(run(&mut e(&["200", "GT"])).await, Value::Int(1));
    assert_eq!(run(&mut e(&["300", "LT"])).await, Value::Int(0));
    assert_eq!(run(&mut e(&["150", "LT"])).await, Value::Int(1));
    assert_eq!(run(&mut e(&["150", "XX"])).await, Value::Int(1));
    assert_eq!(run(redis::cmd("EXPIRE").arg("nope").arg(10)).await, Value::Int(0));
    // SETNX, SETEX, GETDEL, EXISTS counts repeats, TYPE, ECHO, PING.
    assert_eq!(run(redis::cmd("SETNX").arg("n").arg("1")).await, Value::Int(1));
    assert_eq!(run(redis::cmd("SETNX").arg("n").arg("2")).await, Value::Int(0));
    assert_eq!(run(redis::cmd("SETEX").arg("se").arg(100).arg("v")).await, Value::Okay);
    assert!(matches!(run(redis::cmd("TTL").arg("se")).await, Value::Int(1..=100)));
    assert_eq!(run(redis::cmd("GETDEL").arg("se")).await, Value::BulkString(b"v".to_vec()));
    assert_eq!(run(redis::cmd("GETDEL").arg("se")).await, Value::Nil);
    assert_eq!(run(redis::cmd("EXISTS").arg(&["n", "n", "nope", "p"])).await, Value::Int(3));
    assert_eq!(run(redis::cmd("TYPE").arg("n")).await, Value::SimpleString("string".into()));
    assert_eq!(run(redis::cmd("ECHO").arg("hi")).await, Value::BulkString(b"hi".to_vec()));
    assert_eq!(run(&mut redis::cmd("PING")).await, Value::SimpleString("PONG".into()));
    assert_eq!(run(redis::cmd("SELECT").arg(0)).await, Value::Okay);
    assert_eq!(run(redis::cmd("UNLINK").arg(&["n", "n", "nope"])).await, Value::Int(1));
    // CLIENT.
    assert_eq!(run(redis::cmd("CLIENT").arg("SETNAME").arg("me")).await, Value::Okay);
    assert_eq!(run(redis::cmd("CLIENT").arg("GETNAME")).await, Value::BulkString(b"me".to_vec()));
    assert!(matches!(run(redis::cmd("CLIENT").arg("ID")).await, Value::Int(1..)));
    assert!(matches!(run(redis::cmd("COMMAND").arg("COUNT")).await, Value::Int(30..)));
    let Value::Array(cmds) = run(&mut redis::cmd("COMMAND")).await else { panic!("COMMAND is an array") };
    assert!(cmds
        .iter()
        .any(|c| matches!(c, Value::Array(v) if v.len() == 10 && v[0] == Value::BulkString(b"get".to_vec()))));

    // Error texts, byte for byte.
    let mut raw = Raw::connect(server.port).await;
    for (args, want) in [
        (&["FOO", "a", "b"][..], "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"),
        (&["foo"], "-ERR unknown command 'foo', with args beginning with: \r\n"),
        (&["GET"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&["get", "a", "b"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&["SET", "k", "v", "NX", "XX"], "-ERR syntax error\r\n"),
        (&["SET", "k", "v", "EX", "10", "PX", "10"], "-ERR syntax error\r\n"),
        (&["SET", "k", "v", "KEEPTTL", "EX", "10"], "-ERR syntax error\r\n"),
        (&["SET", "k", "v", "EX"], "-ERR syntax error\r\n"),
        (&["SET", "k", "v", "EX", "ten"], "-ERR value is not an integer or out of range\r\n"),
        (&["SET", "k", "v", "EX", "0"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["SET", "k", "v", "PX", "-5"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["SET", "k", "v", "EX", "9223372036854775807"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["SETEX", "k", "0", "v"], "-ERR invalid expire time in 'setex' command\r\n"),
        (&["EXPIRE", "k", "soon"], "-ERR value is not an integer or out of range\r\n"),
        (&["EXPIRE", "k", "10", "NX", "GT"], "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"),
        (&["EXPIRE", "k", "10", "GT", "LT"], "-ERR GT and LT options at the same time are not compatible\r\n"),
        (&["EXPIRE", "k", "10", "FOO"], "-ERR Unsupported option FOO\r\n"),
        (&["EXPIRE", "k", "99999999999999999"], "-ERR invalid expire time in 'expire' command\r\n"),
        (&["MSET", "a", "1", "b"], "-ERR wrong number of arguments for 'mset' command\r\n"),
        (&["SELECT", "1"], "-ERR DB index is out of range\r\n"),
        (&["SELECT", "x"], "-ERR value is not an integer or out of range\r\n"),
        (&["FLUSHALL", "NOW"], "-ERR syntax error\r\n"),
        (&["CLIENT", "FOO"], "-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n"),
        (&["CLIENT", "SETNAME", "a b"], "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"),
        (&["CLIENT", "SETINFO", "LIB-NAME", "x"], "+OK\r\n"),
        (&["CONFIG", "GET", "no-such-*"], "*0\r\n"),
        (&["CONFIG", "SET", "no-such", "1"], "-ERR Unknown option or number of arguments for CONFIG SET - 'no-such'\r\n"),
        (&["CONFIG", "GET", "notify-keyspace-events"], "*2\r\n$22\r\nnotify-keyspace-events\r\n$3\r\nAKE\r\n"),
        (&["AUTH", "pw"], "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"),
        (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
        (&["PING", "a", "b"], "-ERR wrong number of arguments for 'ping' command\r\n"),
        (&["PING", "hi"], "$2\r\nhi\r\n"),
        (&["GET", "nope"], "$-1\r\n"),
        (&["MGET", "nope", "p"], "*2\r\n$-1\r\n$1\r\nv\r\n"),
        (&["DBSIZE"], ":3\r\n"),
    ] {
        assert_eq!(raw.cmd(args).await, want, "{args:?}");
    }
    // After errors the connection still works.
    assert_eq!(raw.cmd(&["PING"]).await, "+PONG\r\n");
    assert_eq!(raw.cmd(&["QUIT"]).await, "+OK\r\n");
    assert_eq!(raw.reply().await, None, "QUIT closes");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_and_its_policy_follow_redis() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut raw = Raw::connect(server.port).await;
    let failed =
        |name: &str, why: &str| format!("-ERR CONFIG SET failed (possibly related to argument '{name}') - {why}\r\n");
    let policies =
        "argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, \
                    allkeys-lru, allkeys-lfu, allkeys-random, noeviction";
    for (args, want) in [
        (&["CONFIG", "GET", "maxmemory"][..], "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n".to_owned()),
        (&["CONFIG", "GET", "maxmemory-policy"], "*2\r\n$16\r\nmaxmemory-policy\r\n$11\r\nallkeys-lru\r\n".to_owned()),
        (&["CONFIG", "SET", "maxmemory", "abc"], failed("maxmemory", "argument must be a memory value")),
        (&["CONFIG", "SET", "maxmemory", "-1"], failed("maxmemory", "argument must be a memory value")),
        (&["CONFIG", "SET", "maxmemory", "1.5gb"], failed("maxmemory", "argument must be a memory value")),
        (&["CONFIG", "SET", "maxmemory-policy", "lru"], failed("maxmemory-policy", policies)),
        (
            &["CONFIG", "SET", "maxmemory-samples", "0"],
            failed("maxmemory-samples", "argument must be between 1 and 64 inclusive"),
        ),
        // One bad value leaves every setting of the command as it was.
        (&["CONFIG", "SET", "maxmemory", "1mb", "maxmemory-policy", "nope"], failed("maxmemory-policy", policies)),
        (&["CONFIG", "GET", "maxmemory"], "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n".to_owned()),
        (&["CONFIG", "SET", "maxmemory", "4kb", "maxmemory-policy", "NOEVICTION"], "+OK\r\n".to_owned()),
        (
            &["CONFIG", "GET", "maxmemory*"],
            "*6\r\n$9\r\nmaxmemory\r\n$4\r\n4096\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n\
                                             $17\r\nmaxmemory-samples\r\n$1\r\n5\r\n"
                .to_owned(),
        ),
    ] {
        assert_eq!(raw.cmd(args).await, want, "{args:?}");
    }
    // noeviction: SETs are refused with Redis's OOM error once the bound is
    // passed, and nothing is evicted.
    let value = "v".repeat(100);
    let mut stored = 0;
    let refusal = loop {
        let r = raw.cmd(&["SET", &format!("k{stored}"), &value]).await;
        if r != "+OK\r\n" {
            break r;
        }
        stored += 1;
        assert!(stored < 1_000, "a 4 KiB bound refuses writes");
    };
    assert_eq!(refusal, "-OOM command not allowed when used memory > 'maxmemory'.\r\n");
    assert!(stored > 5, "{stored} values fit in 4 KiB");
    assert_eq!(raw.cmd(&["DBSIZE"]).await, format!(":{stored}\r\n"));
    // A delete is never refused.
    assert_eq!(raw.cmd(&["DEL", "k0"]).await, ":1\r\n");
    let mut con = server.conn().await;
    let mem = info(&mut con, "memory").await;
    assert!(mem.contains("maxmemory:4096\r\n") && mem.contains("maxmemory_policy:noeviction\r\n"), "{mem}");
    // An evicting policy makes room instead.
    assert_eq!(raw.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]).await, "+OK\r\n");
    for i in 0..100 {
        assert_eq!(raw.cmd(&["SET", &format!("n{i}"), &value]).await, "+OK\r\n");
    }
    let stats = info(&mut con, "stats").await;
    assert!(!stats.contains("evicted_keys:0\r\n"), "{stats}");
    assert!(mesh.replica().store().value_bytes() <= 4096, "the bound holds");
    assert!(info(&mut con, "memory").await.contains("maxmemory_policy:allkeys-lfu\r\n"));
    // 0 lifts the bound.
    assert_eq!(raw.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await, "+OK\r\n");
    assert_eq!(mesh.replica().store().max_bytes(), None);
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_and_pipelining() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut raw = Raw::connect(server.port).await;
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.reply().await.unwrap(), "+PONG\r\n");
    raw.send(b"set greeting \"hello world\"\nget greeting\r\n\r\n").await;
    assert_eq!(raw.reply().await.unwrap(), "+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), "$11\r\nhello world\r\n");
    // 1,000 commands in one write, answered in order.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$5\r\nk{i:04}\r\n$4\r\n{i:04}\r\n").as_bytes());
        batch.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$5\r\nk{i:04}\r\n").as_bytes());
    }
    raw.send(&batch).await;
    for i in 0..1000 {
        assert_eq!(raw.reply().await.unwrap(), "+OK\r\n");
        assert_eq!(raw.reply().await.unwrap(), format!("$4\r\n{i:04}\r\n"));
    }
    // A value split across many small writes.
    let big = "x".repeat(300_000);
    let req = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{big}\r\n", big.len());
    for chunk in req.as_bytes().chunks(7_777) {
        raw.send(chunk).await;
    }
    assert_eq!(raw.reply().await.unwrap(), "+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "big"]).await, format!("${}\r\n{big}\r\n", big.len()));
    // A 12 MiB value through the redis crate, and back.
    let mut con = server.conn().await;
    let huge: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let () = con.set("huge", &huge).await.unwrap();
    let back: Vec<u8> = con.get("huge").await.unwrap();
    assert!(back == huge, "12 MiB value corrupted");
    // A value too large to replicate in one frame (16 MiB by default) is
    // refused with a clear error, and the connection stays usable.
    let too_big: Vec<u8> = vec![7u8; 20 << 20];
    let err = con.set::<_, _, ()>("too-big", &too_big).await.unwrap_err();
    assert!(err.to_string().contains("largest replicable write"), "{err}");
    let still: Vec<u8> = con.get("huge").await.unwrap();
    assert_eq!(still.len(), huge.len());
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_reach_subscribers_on_other_peers() {
    let (meshes, servers) = cluster(2, RespConfig::default()).await;
    let mut a = servers[0].conn().await;
    let client_b = redis::Client::open(servers[1].url()).unwrap();
    let mut sub = client_b.get_async_pubsub().await.unwrap();
    sub.psubscribe("__key*@0__:*").await.unwrap();
    let mut msgs = sub.into_on_message();
    let mut next = async || {
        let m = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("a notification").unwrap();
        let pattern: String = m.get_pattern().unwrap();
        assert_eq!(pattern, "__key*@0__:*");
        (m.get_channel_name().to_owned(), m.get_payload::<String>().unwrap())
    };
    let ev = |c: &str, p: &str| (c.to_owned(), p.to_owned());

    // A write on A is notified on B: keyspace then keyevent.
    let () = a.set("user:1", "x").await.unwrap();
    assert_eq!(next().await, ev("__keyspace@0__:user:1", "set"));
    assert_eq!(next().await, ev("__keyevent@0__:set", "user:1"));
    let _: i64 = a.del("user:1").await.unwrap();
    assert_eq!(next().await, ev("__keyspace@0__:user:1", "del"));
    assert_eq!(next().await, ev("__keyevent@0__:del", "user:1"));
    // A TTL running out on B is `expired` there.
    let () = redis::cmd("SET").arg("short").arg("x").arg("PX").arg(500).query_async(&mut a).await.unwrap();
    assert_eq!(next().await, ev("__keyspace@0__:short", "set"));
    assert_eq!(next().await, ev("__keyevent@0__:set", "short"));
    assert_eq!(next().await, ev("__keyspace@0__:short", "expired"));
    assert_eq!(next().await, ev("__keyevent@0__:expired", "short"));
    // FLUSHALL on A is `flushall` on B (keyevent only: it has no key).
    let () = a.set("pre-flush", "x").await.unwrap();
    assert_eq!(next().await, ev("__keyspace@0__:pre-flush", "set"));
    assert_eq!(next().await, ev("__keyevent@0__:set", "pre-flush"));
    let () = redis::cmd("FLUSHALL").query_async(&mut a).await.unwrap();
    assert_eq!(next().await, ev("__keyevent@0__:flushall", ""));

    // Only the enabled classes: with "Ex", a write is silent, and the next
    // message is the expiry.
    let mut b = servers[1].conn().await;
    let () = redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg("Ex").query_async(&mut b).await.unwrap();
    let () = a.set("quiet", "x").await.unwrap();
    let () = redis::cmd("SET").arg("loud").arg("x").arg("PX").arg(100).query_async(&mut a).await.unwrap();
    assert_eq!(next().await, ev("__keyevent@0__:expired", "loud"));
    let flags: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut b).await.unwrap();
    assert_eq!(flags, ["notify-keyspace-events", "xE"]);

    // Local events on A know their command: SET EX is set + expire, EXPIRE
    // is expire, PERSIST is persist. And RESP3 subscribers get push frames.
    let mut raw = Raw::connect(servers[0].port).await;
    raw.resp3 = true;
    assert!(raw.cmd(&["HELLO", "3"]).await.starts_with("%7\r\n"));
    assert_eq!(
        raw.cmd(&["SUBSCRIBE", "__keyevent@0__:expire"]).await,
        ">3\r\n$9\r\nsubscribe\r\n$21\r\n__keyevent@0__:expire\r\n:1\r\n"
    );
    assert_eq!(
        raw.cmd(&["PSUBSCRIBE", "__keyspace@0__:loc*"]).await,
        ">3\r\n$10\r\npsubscribe\r\n$19\r\n__keyspace@0__:loc*\r\n:2\r\n"
    );
    // RESP3 subscribers may run any command. (The pattern leaves out
    // `loud`: A's own expiry of it may come after B's, when this
    // subscriber already listens.)
    assert_eq!(raw.cmd(&["GET", "nope"]).await, "_\r\n");
    let () = redis::cmd("SET").arg("local").arg("x").arg("EX").arg(100).query_async(&mut a).await.unwrap();
    assert_eq!(
        raw.reply().await.unwrap(),
        ">4\r\n$8\r\npmessage\r\n$19\r\n__keyspace@0__:loc*\r\n$20\r\n__keyspace@0__:local\r\n$3\r\nset\r\n"
    );
    assert_eq!(
        raw.reply().await.unwrap(),
        ">4\r\n$8\r\npmessage\r\n$19\r\n__keyspace@0__:loc*\r\n$20\r\n__keyspace@0__:local\r\n$6\r\nexpire\r\n"
    );
    assert_eq!(raw.reply().await.unwrap(), ">3\r\n$7\r\nmessage\r\n$21\r\n__keyevent@0__:expire\r\n$5\r\nlocal\r\n");
    let _: bool = a.expire("local", 50).await.unwrap();
    assert!(raw.reply().await.unwrap().ends_with("$6\r\nexpire\r\n"));
    assert!(raw.reply().await.unwrap().ends_with("$5\r\nlocal\r\n"));
    let _: bool = a.persist("local").await.unwrap();
    assert!(raw.reply().await.unwrap().ends_with("$7\r\npersist\r\n"));
    assert_eq!(raw.cmd(&["UNSUBSCRIBE"]).await, ">3\r\n$11\r\nunsubscribe\r\n$21\r\n__keyevent@0__:expire\r\n:1\r\n");
    assert_eq!(raw.cmd(&["PUNSUBSCRIBE"]).await, ">3\r\n$12\r\npunsubscribe\r\n$19\r\n__keyspace@0__:loc*\r\n:0\r\n");

    // RESP2: a subscribed client may only (un)subscribe, PING, QUIT, RESET.
    let mut raw2 = Raw::connect(servers[0].port).await;
    assert_eq!(raw2.cmd(&["SUBSCRIBE", "c1"]).await, "*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n");
    assert_eq!(
        raw2.cmd(&["GET", "x"]).await,
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(raw2.cmd(&["PING"]).await, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(raw2.cmd(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(raw2.cmd(&["GET", "x"]).await, "$-1\r\n");
    assert_eq!(raw2.cmd(&["UNSUBSCRIBE"]).await, "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
    shutdown(meshes, servers).await;
}

/// An eviction is `evicted` on the peer that evicted, as in Redis: one
/// keyspace and one keyevent message for each value evicted, and no other,
/// while the peer that wrote the keys keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_are_notified_where_they_happen() {
    let (meshes, servers) = cluster(2, RespConfig::default()).await;
    let mut a = servers[0].conn().await;
    let mut b = servers[1].conn().await;
    let mut sub = redis::Client::open(servers[1].url()).unwrap().get_async_pubsub().await.unwrap();
    sub.psubscribe("__key*@0__:*").await.unwrap();
    let mut msgs = sub.into_on_message();
    let value = "w".repeat(1024);
    for i in 0..200 {
        let () = a.set(format!("warm{i}"), &value).await.unwrap();
    }
    // Every write is heard on B before anything is evicted.
    let mut set = std::collections::BTreeSet::new();
    while set.len() < 200 {
        let m = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("a notification").unwrap();
        let (channel, payload) = (m.get_channel_name().to_owned(), m.get_payload::<String>().unwrap());
        match channel.strip_prefix("__keyspace@0__:") {
            Some(key) => assert!(payload == "set" && set.insert(key.to_owned()), "{channel} {payload}"),
            None => assert_eq!(channel, "__keyevent@0__:set"),
        }
    }
    let m = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("the last keyevent").unwrap();
    assert_eq!(m.get_channel_name(), "__keyevent@0__:set");
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-random", "maxmemory", "128kb"])
        .query_async(&mut b)
        .await
        .unwrap();
    // A write of B's own closes the messages to count: anything evicted
    // before it was notified before it.
    let () = b.set("mark", "m").await.unwrap();
    let mut evicted = std::collections::BTreeSet::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("a notification").unwrap();
        let (channel, payload) = (m.get_channel_name().to_owned(), m.get_payload::<String>().unwrap());
        match channel.strip_prefix("__keyspace@0__:") {
            Some("mark") => break,
            Some(key) => {
                assert_eq!(payload, "evicted", "{key}");
                let next = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("its keyevent").unwrap();
                assert_eq!(next.get_channel_name(), "__keyevent@0__:evicted");
                assert_eq!(next.get_payload::<String>().unwrap(), key);
                assert!(evicted.insert(key.to_owned()), "{key} evicted twice");
            }
            None => panic!("unexpected {channel} {payload}"),
        }
    }
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut b).await.unwrap();
    let count = stats.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse::<usize>().unwrap();
    assert_eq!(evicted.len(), count, "one notification for each eviction");
    assert!(count >= 50, "B evicted only {count} of 200 keys");
    for key in &evicted {
        let on_b: Option<String> = b.get(key).await.unwrap();
        let on_a: Option<String> = a.get(key).await.unwrap();
        assert_eq!((on_b, on_a.as_deref()), (None, Some(&*value)), "{key}: evicted on B, kept on A");
    }
    shutdown(meshes, servers).await;
}

/// On a lone peer with a subscriber of every keyevent channel,
/// `connections` connections each pipeline `writes` INCRs at once, of the
/// keys `key(connection, i)`, in one write. Returns the messages heard
/// before those of a final write of `mark`, as (event, key), and the peer.
async fn incr_burst(
    connections: usize,
    writes: usize,
    key: fn(usize, usize) -> String,
) -> (Vec<(String, String)>, (Vec<Mesh>, Vec<Server>)) {
    let (meshes, servers) = cluster(1, RespConfig::default()).await;
    let mut sub = redis::Client::open(servers[0].url()).unwrap().get_async_pubsub().await.unwrap();
    sub.psubscribe("__keyevent@0__:*").await.unwrap();
    let mut msgs = sub.into_on_message();
    let mut writers = Vec::new();
    for c in 0..connections {
        let mut raw = Raw::connect(servers[0].port).await;
        writers.push(tokio::spawn(async move {
            let mut burst = String::new();
            for i in 0..writes {
                let key = key(c, i);
                burst.push_str(&format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()));
            }
            raw.send(burst.as_bytes()).await;
            for _ in 0..writes {
                assert!(raw.reply().await.unwrap().starts_with(':'));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut con = servers[0].conn().await;
    let () = con.set("mark", "m").await.unwrap();
    let mut heard = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, msgs.next()).await.expect("a notification").unwrap();
        let (channel, key) = (m.get_channel_name().to_owned(), m.get_payload::<String>().unwrap());
        if channel == "__keyevent@0__:set" && key == "mark" {
            break;
        }
        let event = channel.strip_prefix("__keyevent@0__:").unwrap_or(&channel).to_owned();
        heard.push((event, key));
    }
    (heard, (meshes, servers))
}

/// Notifications keep up with a pipelined burst from many connections at
/// once, ten times the change stream's capacity: one keyevent message for
/// every write, in order on its connection, and no `flushall` for changes
/// missed. Each connection writes its own keys, so that each one's order
/// shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_from_many_connections_is_notified_whole() {
    const CONNECTIONS: usize = 8;
    const WRITES: usize = 5_000;
    let (heard, (meshes, servers)) = incr_burst(CONNECTIONS, WRITES, |c, i| format!("c{c}:{i}")).await;
    let mut next = vec![0; CONNECTIONS];
    for (event, key) in heard {
        assert_eq!(event, "incrby", "{key}");
        let (c, i) = key.strip_prefix('c').and_then(|k| k.split_once(':')).unwrap();
        let (c, i): (usize, usize) = (c.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[c], "connection {c}'s writes, in order, none missed");
        next[c] += 1;
    }
    assert_eq!(next, vec![WRITES; CONNECTIONS]);
    shutdown(meshes, servers).await;
}

/// Writes racing on one key from many connections are each notified: a
/// change is told under its key's lock, in the order the key's changes are
/// applied (told after it, the older of two racing writes could arrive
/// second and be dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_on_one_key_are_each_notified() {
    const CONNECTIONS: usize = 8;
    const WRITES: usize = 2_000;
    let (heard, (meshes, servers)) = incr_burst(CONNECTIONS, WRITES, |_, _| "hot".into()).await;
    assert!(heard.iter().all(|(event, key)| event == "incrby" && key == "hot"), "{heard:?}");
    assert_eq!(heard.len(), CONNECTIONS * WRITES, "one message for every write");
    let mut con = servers[0].conn().await;
    let hot: usize = con.get("hot").await.unwrap();
    assert_eq!(hot, CONNECTIONS * WRITES);
    shutdown(meshes, servers).await;
}

/// MEMORY USAGE answers what the memory bound counts for a key: its key
/// and value and the table's overhead for an entry; nothing for a key
/// without a value here. It reads inside a transaction too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_usage_is_what_the_bound_counts() {
    let (meshes, servers) = cluster(1, RespConfig::default()).await;
    let mut raw = Raw::connect(servers[0].port).await;
    let value = "x".repeat(100);
    assert_eq!(raw.cmd(&["SET", "key", &value]).await, "+OK\r\n");
    let want = format!(":{}\r\n", 3 + 100 + meshcache::store::ENTRY_OVERHEAD);
    assert_eq!(raw.cmd(&["MEMORY", "USAGE", "key"]).await, want);
    assert_eq!(raw.cmd(&["MEMORY", "USAGE", "key", "SAMPLES", "0"]).await, want);
    assert_eq!(raw.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["MEMORY", "USAGE", "key"]).await, "+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]).await, format!("*1\r\n{want}"));
    assert_eq!(raw.cmd(&["DEL", "key"]).await, ":1\r\n");
    assert_eq!(raw.cmd(&["MEMORY", "USAGE", "key"]).await, "$-1\r\n");
    shutdown(meshes, servers).await;
}

/// LATENCY with `latency-monitor-threshold 1` and the slow log keeping
/// every command it times: each command timed is offered to both with the
/// one reading, so the worst of each kind of event is the worst of the
/// logged commands of that kind, in whole milliseconds. The LCS of two
/// 4,000-byte values (a table of 16 million cells) is a `command` and an
/// MGET of 500,000 keys a `fast-command`, each far more than a
/// millisecond of work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_monitor_keeps_the_worst_of_what_was_timed() {
    let (meshes, servers) = cluster(1, RespConfig::default()).await;
    let mut raw = Raw::connect(servers[0].port).await;
    let parse = |reply: String| redis::parse_redis_value(reply.as_bytes()).unwrap();
    let int = |v: &Value| match v {
        Value::Int(n) => *n,
        v => panic!("{v:?}"),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        v => panic!("{v:?}"),
    };
    let (a, b) = ("ab".repeat(2000), "ba".repeat(2000));
    assert_eq!(raw.cmd(&["MSET", "a", &a, "b", &b]).await, "+OK\r\n");
    let mget: Vec<String> = std::iter::once("MGET".to_string()).chain((0..500_000).map(|i| format!("k{i}"))).collect();
    let mget: Vec<&str> = mget.iter().map(String::as_str).collect();
    // Off by default.
    assert_eq!(
        raw.cmd(&["CONFIG", "GET", "latency-monitor-threshold"]).await,
        "*2\r\n$25\r\nlatency-monitor-threshold\r\n$1\r\n0\r\n"
    );
    raw.cmd(&["LCS", "a", "b", "LEN"]).await;
    assert_eq!(raw.cmd(&["LATENCY", "LATEST"]).await, "*0\r\n");

    let from = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let on = ["CONFIG", "SET", "slowlog-log-slower-than", "0", "latency-monitor-threshold", "1"];
    assert_eq!(raw.cmd(&on).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["SLOWLOG", "RESET"]).await, "+OK\r\n");
    // (Which may forget the two commands above, if the machine held them
    // up that long.)
    raw.cmd(&["LATENCY", "RESET"]).await;
    assert_eq!(raw.cmd(&["LCS", "a", "b", "LEN"]).await, ":3999\r\n");
    raw.cmd(&mget).await;
    let latest = parse(raw.cmd(&["LATENCY", "LATEST"]).await);
    let log = parse(raw.cmd(&["SLOWLOG", "GET", "-1"]).await);
    let to = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;

    // What the slow log says each kind's worst was: of the commands timed
    // after LATENCY RESET (so not SLOWLOG RESET), and before LATENCY LATEST.
    let Value::Array(entries) = log else { panic!("{log:?}") };
    let mut want = std::collections::BTreeMap::new();
    for e in &entries {
        let Value::Array(f) = e else { panic!("{e:?}") };
        let Value::Array(args) = &f[3] else { panic!("{f:?}") };
        let args: Vec<String> = args.iter().take(2).map(text).collect();
        let ms = int(&f[2]) / 1000;
        let event = match args[0].as_str() {
            "SLOWLOG" => continue,
            "LATENCY" if args[1] == "LATEST" => continue,
            "MGET" => "fast-command",
            _ => "command",
        };
        if ms >= 1 {
            let worst = want.entry(event).or_insert(0);
            *worst = ms.max(*worst);
        }
    }
    assert!(want.contains_key("command") && want.contains_key("fast-command"), "{entries:?}");
    let Value::Array(latest) = latest else { panic!("{latest:?}") };
    let mut got = std::collections::BTreeMap::new();
    for l in &latest {
        let Value::Array(f) = l else { panic!("{l:?}") };
        let [name, at, last, max] = &f[..] else { panic!("{f:?}") };
        assert!((from..=to).contains(&int(at)), "{at:?} not within {from}..={to}");
        assert!((1..=int(max)).contains(&int(last)), "{f:?}");
        let name = text(name);
        got.insert(if name == "command" { "command" } else { "fast-command" }, int(max));
        // The seconds kept, the graph and the report agree with it.
        let Value::Array(history) = parse(raw.cmd(&["LATENCY", "HISTORY", &name]).await) else { panic!() };
        let seconds: Vec<(i64, i64)> = history
            .iter()
            .map(|s| match s {
                Value::Array(p) => (int(&p[0]), int(&p[1])),
                s => panic!("{s:?}"),
            })
            .collect();
        assert!(seconds.windows(2).all(|w| w[0].0 < w[1].0), "one sample a second, oldest first: {seconds:?}");
        let high = seconds.iter().map(|s| s.1).max().unwrap();
        let low = seconds.iter().map(|s| s.1).min().unwrap();
        assert_eq!(high, int(max), "{seconds:?}");
        assert_eq!(seconds.last().unwrap(), &(int(at), int(last)));
        let graph = text(&parse(raw.cmd(&["LATENCY", "GRAPH", &name]).await));
        let title = format!("{name} - high {high} ms, low {low} ms (all time high {high} ms)\n{}\n", "-".repeat(80));
        assert!(graph.starts_with(&title), "{graph}");
    }
    assert_eq!(got, want, "the monitor's worst (left) and the slow log's (right)");
    let doctor = text(&parse(raw.cmd(&["LATENCY", "DOCTOR"]).await));
    assert!(doctor.contains("\n1. command: ") && doctor.contains("\n2. fast-command: "), "{doctor}");
    // RESET names kinds in any case, and counts those it forgot. (From
    // here on only a command of a second or more is recorded, so that no
    // command below, held up by a busy machine, adds an event.)
    let slow = ["CONFIG", "SET", "latency-monitor-threshold", "1000"];
    assert_eq!(raw.cmd(&slow).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["LATENCY", "RESET", "Command", "nosuch"]).await, ":1\r\n");
    assert_eq!(raw.cmd(&["LATENCY", "HISTORY", "command"]).await, "*0\r\n");
    assert_eq!(raw.cmd(&["LATENCY", "GRAPH", "command"]).await, "-ERR No samples available for event 'command'\r\n");
    assert_eq!(raw.cmd(&["LATENCY", "RESET"]).await, ":1\r\n");
    // With the slow log off, commands are still timed for the monitor.
    let on = ["CONFIG", "SET", "slowlog-log-slower-than", "-1", "latency-monitor-threshold", "1"];
    assert_eq!(raw.cmd(&on).await, "+OK\r\n");
    raw.cmd(&mget).await;
    let latest = raw.cmd(&["LATENCY", "LATEST"]).await;
    assert!(latest.contains("\r\n$12\r\nfast-command\r\n"), "{latest}");
    assert_eq!(raw.cmd(&["CONFIG", "SET", "latency-monitor-threshold", "0"]).await, "+OK\r\n");
    raw.cmd(&["LATENCY", "RESET"]).await;
    raw.cmd(&mget).await;
    assert_eq!(raw.cmd(&["LATENCY", "LATEST"]).await, "*0\r\n", "off again");
    shutdown(meshes, servers).await;
}

/// SLOWLOG with `slowlog-log-slower-than 0`, where every command timed is
/// logged: a command sent alone is, whatever it is; in a pipeline, and
/// inside EXEC, the first command and those that neither are fast nor
/// write are; EXEC is, as one command; passwords are redacted, long
/// arguments cut; the log keeps `slowlog-max-len` entries, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_log_keeps_what_it_timed() {
    let (meshes, servers) = cluster(1, RespConfig::default()).await;
    let mut raw = Raw::connect(servers[0].port).await;
    let from = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(raw.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["SLOWLOG", "RESET"]).await, "+OK\r\n");
    let long = "v".repeat(200);
    for cmd in [
        &["CLIENT", "SETNAME", "app"][..],
        &["SET", "k", &long],
        &["GET", "k"],
        &["AUTH", "not-the-password"],
        &["MULTI"],
        &["SET", "a", "1"],
        &["GET", "a"],
        &["GETRANGE", "a", "0", "-1"],
        &["EXEC"],
    ] {
        raw.cmd(cmd).await;
    }
    // One read: the first GET and KEYS are timed, the SET and the second
    // GET are not.
    let mut pipeline = Vec::new();
    for cmd in [&["GET", "k"][..], &["SET", "b", "2"], &["GET", "a"], &["KEYS", "*"]] {
        pipeline.extend(format!("*{}\r\n", cmd.len()).bytes());
        for a in cmd {
            pipeline.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
    }
    raw.send(&pipeline).await;
    for _ in 0..4 {
        raw.reply().await.unwrap();
    }
    let log = raw.cmd(&["SLOWLOG", "GET", "-1"]).await;
    let to = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let Value::Array(entries) = redis::parse_redis_value(log.as_bytes()).unwrap() else { panic!("{log}") };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        v => panic!("{v:?}"),
    };
    let mut logged = Vec::new();
    let mut ids = Vec::new();
    for e in &entries {
        let Value::Array(f) = e else { panic!("{e:?}") };
        let [Value::Int(id), Value::Int(at), Value::Int(micros), Value::Array(args), addr, name] = &f[..] else {
            panic!("{f:?}")
        };
        assert!((from as i64..=to as i64).contains(at), "{at} not within {from}..={to}");
        assert!(*micros >= 0);
        assert_eq!(text(addr), raw.addr());
        ids.push(*id);
        logged.push((args.iter().map(text).collect::<Vec<_>>().join(" "), text(name)));
    }
    let cut = format!("SET k {}... (72 more bytes)", &long[..128]);
    let want: Vec<(String, &str)> = [
        ("KEYS *", "app"),
        ("GET k", "app"),
        ("EXEC", "app"),
        ("GETRANGE a 0 -1", "app"),
        ("MULTI", "app"),
        ("AUTH (redacted)", "app"),
        ("GET k", "app"),
        (cut.as_str(), "app"),
        ("CLIENT SETNAME app", "app"),
        ("SLOWLOG RESET", ""),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_owned(), n))
    .collect();
    let got: Vec<(String, &str)> = logged.iter().map(|(a, n)| (a.clone(), n.as_str())).collect();
    assert_eq!(got, want);
    assert!(ids.windows(2).all(|w| w[0] == w[1] + 1), "ids newest first, one apart: {ids:?}");
    assert_eq!(raw.cmd(&["SLOWLOG", "LEN"]).await, ":11\r\n", "the GET above is logged too");
    // Ten entries by default; the log keeps slowlog-max-len from its next
    // entry on; -1 turns it off.
    let Value::Array(ten) = redis::parse_redis_value(raw.cmd(&["SLOWLOG", "GET"]).await.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(ten.len(), 10);
    assert_eq!(raw.cmd(&["CONFIG", "SET", "slowlog-max-len", "2"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["SLOWLOG", "LEN"]).await, ":2\r\n");
    assert_eq!(raw.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]).await, "+OK\r\n");
    raw.cmd(&["PING"]).await;
    let Value::Array(two) = redis::parse_redis_value(raw.cmd(&["SLOWLOG", "GET", "5"]).await.as_bytes()).unwrap()
    else {
        panic!()
    };
    let Value::Array(newest) = &two[0] else { panic!() };
    let Value::Array(args) = &newest[3] else { panic!() };
    assert_eq!(args.iter().map(text).collect::<Vec<_>>(), ["SLOWLOG", "LEN"], "nothing logged once it is off");
    shutdown(meshes, servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_when_configured() {
    let cfg = RespConfig { requirepass: Some("s3cret".into()), ..RespConfig::default() };
    let (mesh, server) = solo(cfg).await;
    let mut raw = Raw::connect(server.port).await;
    assert_eq!(raw.cmd(&["GET", "k"]).await, "-NOAUTH Authentication required.\r\n");
    assert_eq!(raw.cmd(&["NOSUCH"]).await, "-ERR unknown command 'NOSUCH', with args beginning with: \r\n");
    assert_eq!(raw.cmd(&["AUTH", "wrong"]).await, "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    assert_eq!(
        raw.cmd(&["AUTH", "bob", "s3cret"]).await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert!(raw
        .cmd(&["HELLO", "3"])
        .await
        .starts_with("-NOAUTH HELLO must be called with the client already authenticated"));
    assert_eq!(raw.cmd(&["AUTH", "s3cret"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]).await, "-NOAUTH Authentication required.\r\n", "RESET logs out");
    // HELLO with AUTH authenticates and switches protocol in one go.
    raw.resp3 = true;
    assert!(raw.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "app"]).await.starts_with("%7\r\n"));
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]).await, "$3\r\napp\r\n");
    // An unauthenticated client gets Redis's small request limits.
    let mut big = Raw::connect(server.port).await;
    big.send(b"*1\r\n$100000\r\n").await;
    assert_eq!(big.read_to_close().await, "-ERR Protocol error: unauthenticated bulk length\r\n");

    // The redis crate, with the password in the URL.
    let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port);
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&common::patient())
        .await
        .unwrap();
    assert_eq!(get(&mut con, "k").await.as_deref(), Some("v"));
    let url = format!("redis://default:s3cret@127.0.0.1:{}/?protocol=resp3", server.port);
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&common::patient())
        .await
        .unwrap();
    assert_eq!(get(&mut con, "k").await.as_deref(), Some("v"));
    let url = format!("redis://:nope@127.0.0.1:{}/", server.port);
    assert!(redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&common::patient())
        .await
        .is_err());
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_to_resp3() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut raw = Raw::connect(server.port).await;
    let hello2 = raw.cmd(&["HELLO"]).await;
    assert!(hello2.starts_with("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"), "{hello2}");
    assert!(hello2.contains("$5\r\nproto\r\n:2\r\n"), "{hello2}");
    raw.resp3 = true;
    let hello = raw.cmd(&["HELLO", "3"]).await;
    let (frame, _) = redis_protocol::resp3::decode::complete::decode(hello.as_bytes()).unwrap().unwrap();
    let OwnedFrame::Map { data, .. } = frame else { panic!("HELLO 3 is a map: {hello}") };
    let field = |k: &str| {
        data.iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {hello}"))
    };
    assert_eq!(field("server").as_str(), Some("redis"));
    assert!(matches!(field("proto"), OwnedFrame::Number { data: 3, .. }));
    assert_eq!(field("mode").as_str(), Some("standalone"));
    assert_eq!(field("role").as_str(), Some("master"));
    assert!(matches!(field("id"), OwnedFrame::Number { .. }));
    assert!(field("version").as_str().is_some());
    assert!(matches!(field("modules"), OwnedFrame::Array { ref data, .. } if data.is_empty()));
    // RESP3 replies: null, maps, verbatim text.
    assert_eq!(raw.cmd(&["GET", "nope"]).await, "_\r\n");
    assert_eq!(raw.cmd(&["CONFIG", "GET", "databases"]).await, "%1\r\n$9\r\ndatabases\r\n$1\r\n1\r\n");
    assert!(raw.cmd(&["INFO", "server"]).await.starts_with("="));
    assert_eq!(raw.cmd(&["HELLO", "2"]).await.chars().next(), Some('*'));
    raw.resp3 = false;
    assert_eq!(raw.cmd(&["GET", "nope"]).await, "$-1\r\n");

    // The redis crate in RESP3 mode.
    let url = format!("redis://127.0.0.1:{}/?protocol=resp3", server.port);
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&common::patient())
        .await
        .unwrap();
    let () = con.set("k", "v").await.unwrap();
    assert_eq!(get(&mut con, "k").await.as_deref(), Some("v"));
    let v: Value = redis::cmd("HELLO").arg(3).query_async(&mut con).await.unwrap();
    assert!(matches!(v, Value::Map(ref m) if m.len() == 7), "{v:?}");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_get_loading_until_bootstrapped() {
    let ca = EphemeralCa::new().unwrap();
    // A seed that never answers: writes are refused until the timeout.
    let seed = silent_seed();
    let cfg = MeshConfig { bootstrap_timeout: Duration::from_secs(60), ..MeshConfig::for_test("lonely") };
    let mesh = Mesh::builder()
        .config(cfg)
        .seeds([seed.local_addr().unwrap()])
        .tls(ca.issue("lonely").unwrap())
        .start()
        .await
        .unwrap();
    let server = Server::start(&mesh, RespConfig::default()).await;
    let mut raw = Raw::connect(server.port).await;
    assert_eq!(raw.cmd(&["SET", "k", "v"]).await, "-LOADING meshcache is loading the dataset from its peers\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]).await, "$-1\r\n", "reads are served while loading");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let (mesh, server) = solo(RespConfig::default()).await;
    let mut bystander = Raw::connect(server.port).await;
    assert_eq!(bystander.cmd(&["PING"]).await, "+PONG\r\n");

    // A huge declared bulk length: refused at the header, no buffering.
    let mut c = Raw::connect(server.port).await;
    c.send(b"*1\r\n$999999999999\r\n").await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: invalid bulk length\r\n");
    // A huge declared multibulk.
    let mut c = Raw::connect(server.port).await;
    c.send(b"*99999999\r\n").await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: invalid multibulk length\r\n");
    // Not a bulk where one is expected.
    let mut c = Raw::connect(server.port).await;
    c.send(b"*2\r\n$3\r\nGET\r\n:1\r\n").await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: expected '$', got ':'\r\n");
    // Unbalanced quotes in an inline command.
    let mut c = Raw::connect(server.port).await;
    c.send(b"SET a \"b\r\n").await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: unbalanced quotes in request\r\n");
    // A line that never ends.
    let mut c = Raw::connect(server.port).await;
    c.send(&vec![b'A'; 70_000]).await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: too big inline request\r\n");
    // A command larger than max_command_bytes, on a server with a small one.
    let small = Server::start(&mesh, RespConfig { max_command_bytes: 1024, ..RespConfig::default() }).await;
    let mut c = Raw::connect(small.port).await;
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n").await;
    assert_eq!(c.read_to_close().await, "-ERR Protocol error: request too large\r\n");
    small.stop().await;
    // A truncated multibulk, then the client goes away.
    let mut c = Raw::connect(server.port).await;
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk").await;
    c.sock.shutdown().await.unwrap();
    assert_eq!(c.read_to_close().await, "");
    // Random bytes: an error reply or a close, never a hang or a panic.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..20 {
        let mut junk = Vec::new();
        for _ in 0..(64 + round * 97) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push((x >> 24) as u8);
        }
        // Make it a protocol error for sure (a '*' header with garbage),
        // but from the second round on let the bytes be anything.
        if round == 0 {
            junk.splice(0..0, b"*2\r\n$x".iter().copied());
        }
        let mut c = Raw::connect(server.port).await;
        c.send(&junk).await;
        c.sock.shutdown().await.unwrap();
        let got = c.read_to_close().await;
        if round == 0 {
            assert!(got.starts_with("-ERR Protocol error: "), "{got:?}");
        }
    }
    // The bystander, and new clients, are unaffected.
    assert_eq!(bystander.cmd(&["PING"]).await, "+PONG\r\n");
    let mut con = server.conn().await;
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let stats = info(&mut con, "stats").await;
    assert!(!stats.contains("protocol_errors:0\r"), "{stats}");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_disconnected() {
    let cfg = RespConfig { output_buffer_limit: 256 * 1024, ..RespConfig::default() };
    let (mesh, server) = solo(cfg).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
    let mut slow = Raw { sock: stream, buf: BytesMut::new(), resp3: false };
    assert_eq!(slow.cmd(&["PSUBSCRIBE", "*"]).await, "*3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n");
    // Writes through the embedded API, each notified twice with a 1 KiB
    // key: far more than the limit plus what the kernel buffers hold. At
    // most MAX_WRITES (some 40 MiB of notifications): past them the test
    // only waits.
    const MAX_WRITES: u64 = 20_000;
    let key = "k".repeat(1024);
    let mut con = server.conn().await;
    let mut i = 0u64;
    eventually_async("the slow subscriber is disconnected", || {
        for _ in 0..500 {
            if i < MAX_WRITES {
                mesh.insert(format!("{key}{i}"), "v").unwrap();
                i += 1;
            }
        }
        let mut con = con.clone();
        async move { info(&mut con, "stats").await.contains("client_output_buffer_limit_disconnections:1\r") }
    })
    .await;
    // Its connection ends once what was sent is drained.
    slow.read_to_close().await;
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_and_shutdown() {
    let (mesh, server) = solo(RespConfig { max_clients: 1, ..RespConfig::default() }).await;
    let mut first = Raw::connect(server.port).await;
    assert_eq!(first.cmd(&["PING"]).await, "+PONG\r\n");
    let mut second = Raw::connect(server.port).await;
    assert_eq!(second.read_to_close().await, "-ERR max number of clients reached\r\n");
    drop(first);
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut held = loop {
        let mut c = Raw::connect(server.port).await;
        c.send(b"PING\r\n").await;
        if c.reply().await.as_deref() == Some("+PONG\r\n") {
            break c;
        }
        assert!(tokio::time::Instant::now() < end, "the slot never freed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Shutdown closes connected clients and returns.
    server.stop().await;
    assert_eq!(held.read_to_close().await, "");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_against_a_peer() {
    if !common::process::tool("redis-cli", "redis-tools") {
        return;
    }
    let (mesh, server) = solo(RespConfig::default()).await;
    let port = server.port.to_string();
    let cli = |args: &[&str]| {
        let mut c = tokio::process::Command::new("redis-cli");
        c.arg("-p").arg(&port).args(args).kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(DEADLINE, c.output()).await.expect("redis-cli finishes").unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    assert_eq!(cli(&["ping"]).await, "PONG\n");
    assert_eq!(cli(&["set", "a", "b"]).await, "OK\n");
    assert_eq!(cli(&["get", "a"]).await, "b\n");
    assert_eq!(cli(&["--no-raw", "get", "a"]).await, "\"b\"\n");
    assert_eq!(cli(&["--no-raw", "get", "missing"]).await, "(nil)\n");
    assert_eq!(cli(&["--no-raw", "set", "a", "c", "get"]).await, "\"b\"\n");
    assert_eq!(cli(&["--no-raw", "exists", "a", "a"]).await, "(integer) 2\n");
    assert_eq!(cli(&["--no-raw", "mget", "a", "missing"]).await, "1) \"c\"\n2) (nil)\n");
    assert_eq!(
        cli(&["--no-raw", "lpush", "x"]).await,
        "(error) ERR unknown command 'lpush', with args beginning with: 'x' \n"
    );
    assert_eq!(cli(&["-3", "--no-raw", "get", "missing"]).await, "(nil)\n");
    assert!(cli(&["info", "meshcache"]).await.contains("name:solo"));
    // Commands typed on stdin, as in a script.
    let mut c = tokio::process::Command::new("redis-cli");
    c.arg("-p").arg(&port).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"set s 1\nget s\ndbsize\n").await.unwrap();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "OK\n1\n2\n");
    server.stop().await;
    mesh.shutdown().await;
}
