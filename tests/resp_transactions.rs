//! MULTI/EXEC and WATCH across peers, through the `redis` crate: a
//! transaction is seen whole on its own peer and on the others, while
//! another peer writes the same keys, and a write from another peer aborts
//! an EXEC that watched its key.

use crate::common;

use std::time::{Duration, Instant};

use meshcache::resp::RespConfig;
use meshcache::transport::certs::EphemeralCa;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use common::mesh::start;
use common::redis_ref::{resp_pair, stop_all, Raw, Server};
use common::wait::{eventually, eventually_async, DEADLINE};

const KEYS: [&str; 3] = ["tx:x", "tx:y", "tx:z"];

/// Writes every key to `v` in one MULTI/EXEC.
async fn write_all(con: &mut MultiplexedConnection, v: &str) {
    let mut p = redis::pipe();
    p.atomic();
    for k in KEYS {
        p.set(k, v).ignore();
    }
    let () = p.query_async(con).await.unwrap();
}

/// Peer a runs transactions writing three keys to one value while peer b
/// runs its own over the same keys; readers on a (MULTI/EXEC and MGET)
/// must never see the keys disagree, whether a's own transaction or b's
/// (merged as one on a) wrote them last. Bounded: a fixed number of
/// transactions on each side, and a time limit on the readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_seen_whole_on_its_peer_while_another_peer_writes_the_same_keys() {
    let (meshes, servers) = resp_pair().await;
    let (sa, sb) = (&servers[0], &servers[1]);
    let mut wa = sa.conn().await;
    let mut wb = sb.conn().await;
    write_all(&mut wa, "start").await;
    let writer_a = tokio::spawn(async move {
        for i in 0..200 {
            write_all(&mut wa, &format!("a{i}")).await;
        }
    });
    // b writes for longer, so that its transactions are the last ones a
    // sees for a while.
    let writer_b = tokio::spawn(async move {
        for i in 0..600 {
            write_all(&mut wb, &format!("b{i}")).await;
        }
    });
    let mut readers = Vec::new();
    for use_mget in [false, true] {
        let mut con = sa.conn().await;
        readers.push(tokio::spawn(async move {
            let (mut reads, mut from_b) = (0u64, 0u64);
            let end = Instant::now() + Duration::from_secs(60);
            while reads < 100_000 && Instant::now() < end {
                let vals: Vec<Option<String>> = if use_mget {
                    con.mget(&KEYS).await.unwrap()
                } else {
                    let mut p = redis::pipe();
                    p.atomic();
                    for k in KEYS {
                        p.get(k);
                    }
                    p.query_async(&mut con).await.unwrap()
                };
                assert!(vals.iter().all(|v| *v == vals[0]), "read half a transaction on a: {vals:?}");
                reads += 1;
                from_b += vals[0].as_deref().is_some_and(|v| v.starts_with('b')) as u64;
                let last_b: Option<String> = con.get("done:b").await.unwrap();
                if last_b.is_some() && from_b > 0 {
                    break;
                }
            }
            (reads, from_b)
        }));
    }
    writer_a.await.unwrap();
    writer_b.await.unwrap();
    let mut wb = sb.conn().await;
    let () = wb.set("done:b", "1").await.unwrap();
    for r in readers {
        let (reads, from_b) = r.await.unwrap();
        assert!(reads > 0 && from_b > 0, "{reads} reads on a, {from_b} of b's transactions seen");
    }
    // Both peers end on one value for all three keys.
    let (ca, cb) = (sa.conn().await, sb.conn().await);
    eventually_async("a and b agree", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            let va: Vec<Option<String>> = ca.mget(&KEYS).await.unwrap();
            let vb: Vec<Option<String>> = cb.mget(&KEYS).await.unwrap();
            va == vb && va.iter().all(|v| *v == va[0])
        }
    })
    .await;
    stop_all(meshes, servers).await;
}

/// WATCH on peer a, a write to the key on peer b: once a has merged it,
/// a's EXEC is aborted, even when b wrote the value a already held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_another_peer_aborts_an_exec_that_watched_its_key() {
    let (meshes, servers) = resp_pair().await;
    let mut a = servers[0].conn().await;
    let mut a_reader = servers[0].conn().await;
    let mut b = servers[1].conn().await;
    let () = a.set("w", "0").await.unwrap();
    eventually_async("b has w", || {
        let mut b = b.clone();
        async move { b.get::<_, Option<String>>("w").await.unwrap().as_deref() == Some("0") }
    })
    .await;
    for remote in ["remote", "remote"] {
        let before = meshes[0].replica().store().register(b"w").unwrap().marker;
        let () = redis::cmd("WATCH").arg("w").query_async(&mut a).await.unwrap();
        // The same value a holds the second time: a write all the same.
        let () = b.set("w", remote).await.unwrap();
        eventually("a merged b's write", || meshes[0].replica().store().register(b"w").unwrap().marker != before).await;
        let r: Option<(String,)> = redis::pipe().atomic().set("w", "mine").query_async(&mut a).await.unwrap();
        assert_eq!(r, None, "EXEC must abort");
        assert_eq!(a_reader.get::<_, Option<String>>("w").await.unwrap().as_deref(), Some(remote));
    }
    // Unchanged since the WATCH: EXEC runs, and b sees its write.
    let () = redis::cmd("WATCH").arg("w").query_async(&mut a).await.unwrap();
    let r: Option<(String,)> = redis::pipe().atomic().set("w", "mine").query_async(&mut a).await.unwrap();
    assert_eq!(r, Some(("OK".to_string(),)));
    eventually_async("b has a's write", || {
        let mut b = b.clone();
        async move { b.get::<_, Option<String>>("w").await.unwrap().as_deref() == Some("mine") }
    })
    .await;
    stop_all(meshes, servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_and_removed_since_its_watch_aborts_the_exec() {
    let (meshes, servers) = resp_pair().await;
    let mut a = servers[0].conn().await;
    let mut other = servers[0].conn().await;
    // Absent and untouched: EXEC runs.
    let () = redis::cmd("WATCH").arg("gone").query_async(&mut a).await.unwrap();
    let r: Option<(String,)> = redis::pipe().atomic().set("x", "1").query_async(&mut a).await.unwrap();
    assert_eq!(r, Some(("OK".to_string(),)));
    // Absent at the WATCH and at the EXEC, but written in between and its
    // tombstone removed by FLUSHALL: the register EXEC finds is the same
    // (none), and Redis aborts all the same.
    let () = redis::cmd("WATCH").arg("gone").query_async(&mut a).await.unwrap();
    let () = other.set("gone", "1").await.unwrap();
    let _: i64 = other.del("gone").await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut other).await.unwrap();
    eventually("the tombstone removed", || meshes[0].replica().store().register(b"gone").is_none()).await;
    let r: Option<(String,)> = redis::pipe().atomic().set("x", "2").query_async(&mut a).await.unwrap();
    assert_eq!(r, None, "EXEC must abort");
    stop_all(meshes, servers).await;
}

/// What other clients see of a transaction being queued, and the bound on
/// what one may queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_transaction_is_listed_and_bounded() {
    let ca = EphemeralCa::new().unwrap();
    let mesh = start(&ca, "solo", &[]).await;
    let config = RespConfig { max_command_bytes: 4096, ..RespConfig::default() };
    let server = Server::start(&mesh, config).await;
    let mut t = Raw::connect(server.port).await;
    let mut other = Raw::connect(server.port).await;
    assert_eq!(t.cmd(&["WATCH", "k1", "k2"]).await, "+OK\r\n");
    assert_eq!(t.cmd(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(t.cmd(&["SET", "k1", "v"]).await, "+QUEUED\r\n");
    assert_eq!(t.cmd(&["SET", "k2", "v"]).await, "+QUEUED\r\n");
    let list = other.cmd(&["CLIENT", "LIST"]).await;
    let line = list.lines().find(|l| l.contains(" flags=x ")).unwrap_or_else(|| panic!("no client in MULTI: {list}"));
    assert!(line.contains(" multi=2 ") && line.contains(" watch=2 "), "{line}");
    // 3 KiB queued, then 2 KiB more: past the 4 KiB bound.
    let big = "x".repeat(3000);
    assert_eq!(t.cmd(&["SET", "k1", &big]).await, "+QUEUED\r\n");
    let past = t.cmd(&["SET", "k2", &big[..2000]]).await;
    assert!(past.starts_with("-ERR the transaction is too large"), "{past}");
    assert_eq!(t.cmd(&["EXEC"]).await, "-EXECABORT Transaction discarded because of previous errors.\r\n");
    assert_eq!(t.cmd(&["EXISTS", "k1", "k2"]).await, ":0\r\n");
    let list = other.cmd(&["CLIENT", "LIST"]).await;
    assert!(!list.contains(" flags=x "), "{list}");
    server.stop().await;
    mesh.shutdown().await;
}

/// CONFIG SET of the bound and the policy inside EXEC, while another client
/// writes past the bound, end to end (the store's own test,
/// `changing_the_policy_inside_a_transaction_does_not_wait_for_an_eviction`,
/// is the one that forces the interleaving that could deadlock). Bounded:
/// 2,000 writes, and the whole exchange within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_inside_exec_while_evictions_run() {
    let ca = EphemeralCa::new().unwrap();
    let mesh = start(&ca, "solo", &[]).await;
    let server = Server::start(&mesh, RespConfig::default()).await;
    let mut writer = server.conn().await;
    let mut t = server.conn().await;
    let () = redis::cmd("CONFIG").arg(&["SET", "maxmemory", "1mb"]).query_async(&mut t).await.unwrap();
    let churn = tokio::spawn(async move {
        let v = vec![b'x'; 2048];
        for i in 0..2_000 {
            let () = writer.set(format!("churn:{i}"), &v[..]).await.unwrap();
        }
    });
    tokio::time::timeout(DEADLINE, async {
        for (policy, bound) in [("allkeys-lfu", "2mb"), ("allkeys-lru", "1mb"), ("allkeys-random", "1mb")] {
            let r: (String, String, i64) = redis::pipe()
                .atomic()
                .cmd("CONFIG")
                .arg(&["SET", "maxmemory-policy", policy, "maxmemory", bound])
                .set("in-exec", policy)
                .incr("in-exec-count", 1)
                .query_async(&mut t)
                .await
                .unwrap();
            assert_eq!((r.0.as_str(), r.1.as_str()), ("OK", "OK"));
        }
        churn.await.unwrap();
    })
    .await
    .expect("no deadlock between EXEC and eviction");
    let evicted = mesh.replica().store().stats().evictions;
    assert!(evicted > 0, "the writes passed the bound");
    server.stop().await;
    mesh.shutdown().await;
}
