//! CLIENT TRACKING: its commands and invalidation pushes against
//! redis-server's byte for byte, and near caches kept on one peer while
//! another peer writes, checked never to serve a value older than one the
//! peer they read from has applied.

use crate::common;

use std::collections::HashMap;

use common::redis_ref::{resp_pair, stop_all, Conn, RedisServer, RespPeer, Server};
use common::wait::eventually_async;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, PushInfo, PushKind, Value};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

/// The connections of one side of a parity run: `a` tracks (RESP3), `b`
/// writes, `c` is a RESP2 redirect target.
struct Side {
    conns: HashMap<&'static str, Conn>,
    /// Client ids, replaced by names in the transcript (they differ
    /// between servers).
    ids: Vec<(String, &'static str)>,
    transcript: Vec<String>,
    /// `a` is between MULTI and EXEC.
    in_multi: bool,
}

impl Side {
    async fn new(connect: impl AsyncFn() -> Conn) -> Side {
        let mut conns = HashMap::new();
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let mut c = connect().await;
            let id = String::from_utf8(c.cmd(&[b"CLIENT", b"ID"]).await).unwrap();
            ids.push((id.trim_start_matches(':').trim_end().to_string(), name));
            conns.insert(name, c);
        }
        Side { conns, ids, transcript: Vec::new(), in_multi: false }
    }

    fn id_of(&self, name: &str) -> String {
        self.ids.iter().find(|(_, n)| *n == name).unwrap().0.clone()
    }

    /// A frame as text, with client ids named where they are ids (they
    /// differ between servers).
    fn clean(&self, frame: Vec<u8>, has_ids: bool) -> String {
        let mut s = String::from_utf8_lossy(&frame).into_owned();
        if !has_ids {
            return s;
        }
        for (id, name) in &self.ids {
            s = s.replace(&format!(":{id}\r\n"), &format!(":<{name}>\r\n"));
            s = s.replace(&format!("id={id} "), &format!("id=<{name}> "));
        }
        s
    }

    /// Runs `args` on `conn`; then a PING on `a` and on `c`, recording
    /// every frame each sends up to its PONG, so that invalidations queued
    /// by the command are in the transcript in the order they came.
    async fn step(&mut self, conn: &'static str, args: &[&str]) {
        let shown_args = args;
        let args: Vec<String> = args.iter().map(|a| a.replace("<c>", &self.id_of("c"))).collect();
        let args_shown = shown_args.join(" ");
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        // Shown if the test fails (a step that gets no reply, say).
        eprintln!("{conn}> {}", args.join(" "));
        if bytes[0].eq_ignore_ascii_case(b"hello") {
            self.conns.get_mut(conn).unwrap().resp3 = true;
        }
        let reply = self.conns.get_mut(conn).unwrap().cmd(&bytes).await;
        if bytes[0].eq_ignore_ascii_case(b"reset") {
            self.conns.get_mut(conn).unwrap().resp3 = false;
        }
        let shown = if bytes[0].eq_ignore_ascii_case(b"hello") {
            // The server's version and the client's id.
            "(not compared)".to_string()
        } else {
            let ids = args.iter().any(|a| a.eq_ignore_ascii_case("getredir") || a.eq_ignore_ascii_case("trackinginfo"));
            self.clean(reply, ids)
        };
        let line = format!("{conn}> {args_shown} => {shown}");
        self.transcript.push(line);
        if bytes[0].eq_ignore_ascii_case(b"multi") {
            self.in_multi = true;
        } else if bytes[0].eq_ignore_ascii_case(b"exec") {
            self.in_multi = false;
        }
        for sync in ["a", "c"] {
            // A PING would be queued, or would end what CLIENT CACHING
            // applies to (CLIENT commands keep it).
            let client = conn == "a" && args[0].eq_ignore_ascii_case("client");
            if sync == "a" && (self.in_multi || client) {
                continue;
            }
            let c = self.conns.get_mut(sync).unwrap();
            let mut frames = Vec::new();
            let mut f = c.cmd(&[b"PING"]).await;
            loop {
                let s = String::from_utf8_lossy(&f).into_owned();
                if s == "+PONG\r\n" || s.contains("pong") {
                    break;
                }
                frames.push(f);
                f = c.next().await;
            }
            for f in frames {
                let ids = f.windows(21).any(|w| w == b"tracking-redir-broken");
                let line = format!("  {sync} got {}", self.clean(f, ids));
                self.transcript.push(line);
            }
        }
    }
}

/// The commands and their pushes, as one list of steps.
const SCRIPT: &[(&str, &[&str])] = &[
    ("a", &["HELLO", "3"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("a", &["CLIENT", "GETREDIR"]),
    ("a", &["CLIENT", "CACHING", "yes"]),
    ("a", &["CLIENT", "TRACKING", "on", "PREFIX", "a"]),
    ("a", &["CLIENT", "TRACKING", "on", "OPTIN", "OPTOUT"]),
    ("a", &["CLIENT", "TRACKING", "on", "BCAST", "OPTIN"]),
    ("a", &["CLIENT", "TRACKING", "on", "REDIRECT", "999999"]),
    ("a", &["CLIENT", "TRACKING", "on", "REDIRECT", "x"]),
    ("a", &["CLIENT", "TRACKING", "maybe"]),
    ("a", &["CLIENT", "TRACKING", "on", "FOO"]),
    ("a", &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "a", "PREFIX", "ab"]),
    ("a", &["CLIENT", "TRACKING"]),
    // Default mode: a key read is tracked until invalidated once.
    ("a", &["CLIENT", "TRACKING", "on"]),
    ("a", &["CLIENT", "GETREDIR"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("a", &["CLIENT", "TRACKING", "on", "BCAST"]),
    ("a", &["CLIENT", "CACHING", "yes"]),
    ("a", &["CLIENT", "CACHING", "no"]),
    ("a", &["GET", "k1"]),
    ("b", &["SET", "k1", "v"]),
    ("b", &["SET", "k1", "w"]),
    ("a", &["MGET", "k1", "k2", "k3"]),
    ("b", &["MSET", "k1", "1", "k2", "2", "k9", "9"]),
    ("a", &["STRLEN", "k3"]),
    ("b", &["DEL", "k3"]),
    ("a", &["EXISTS", "k1"]),
    ("b", &["APPEND", "k1", "x"]),
    ("a", &["GET", "k1"]),
    ("a", &["SET", "k1", "own"]),
    // A transaction's reads are tracked too.
    ("a", &["MULTI"]),
    ("a", &["GET", "t1"]),
    ("a", &["GET", "t2"]),
    ("a", &["EXEC"]),
    ("b", &["SET", "t2", "x"]),
    ("b", &["INCR", "t1"]),
    // OPTIN: only after CLIENT CACHING yes, for one command.
    ("a", &["CLIENT", "TRACKING", "on", "OPTOUT"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    ("a", &["CLIENT", "TRACKING", "on", "OPTIN"]),
    ("a", &["CLIENT", "TRACKING", "on", "OPTOUT"]),
    ("a", &["CLIENT", "CACHING", "no"]),
    ("a", &["GET", "o1"]),
    ("a", &["CLIENT", "CACHING", "yes"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("a", &["GET", "o2"]),
    ("a", &["GET", "o3"]),
    ("b", &["MSET", "o1", "1", "o2", "2", "o3", "3"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    // OPTOUT: every read but the one after CLIENT CACHING no.
    ("a", &["CLIENT", "TRACKING", "on", "OPTOUT"]),
    ("a", &["GET", "p1"]),
    ("a", &["CLIENT", "CACHING", "no"]),
    ("a", &["GET", "p2"]),
    ("b", &["MSET", "p1", "1", "p2", "2"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    // NOLOOP: no invalidation for this client's own writes.
    ("a", &["CLIENT", "TRACKING", "on", "NOLOOP"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("a", &["GET", "n1"]),
    ("a", &["SET", "n1", "mine"]),
    ("a", &["GET", "n1"]),
    ("b", &["SET", "n1", "theirs"]),
    // A key written and then read in one transaction stays tracked: the
    // read is recorded as it runs, after the write, so another client's
    // later write still reaches this cache.
    ("a", &["MULTI"]),
    ("a", &["SET", "n2", "mine"]),
    ("a", &["GET", "n2"]),
    ("a", &["EXEC"]),
    ("b", &["SET", "n2", "theirs"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    // BCAST with prefixes.
    ("a", &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user:", "PREFIX", "ses"]),
    ("a", &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user:1"]),
    ("a", &["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "obj:"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("b", &["SET", "user:7", "x"]),
    ("b", &["SET", "session", "x"]),
    ("b", &["SET", "other", "x"]),
    ("b", &["SET", "obj:1", "x"]),
    // One command's changes: one push per prefix, its keys sorted.
    ("b", &["MSET", "user:9", "1", "other", "2", "user:2", "3", "session", "4", "user:9", "5"]),
    ("b", &["MULTI"]),
    ("b", &["SET", "obj:2", "x"]),
    ("b", &["DEL", "user:2"]),
    ("b", &["SET", "obj:1", "y"]),
    ("b", &["EXEC"]),
    // BCAST without PREFIX adds the empty prefix beside the others: a key
    // under two prefixes is sent once for each.
    ("a", &["CLIENT", "TRACKING", "on", "BCAST"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("b", &["SET", "user:7", "y"]),
    ("b", &["SET", "zzz", "y"]),
    ("b", &["FLUSHALL"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    // Default mode hears a FLUSHALL as a null invalidation.
    ("a", &["CLIENT", "TRACKING", "on"]),
    ("a", &["GET", "f1"]),
    ("b", &["FLUSHALL"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    // RESP2 through a redirect to a connection subscribed to
    // __redis__:invalidate.
    ("c", &["SUBSCRIBE", "__redis__:invalidate"]),
    ("a", &["CLIENT", "TRACKING", "on", "REDIRECT", "<c>", "REDIRECT", "<c>"]),
    ("a", &["CLIENT", "TRACKING", "on", "REDIRECT", "<c>"]),
    ("a", &["CLIENT", "GETREDIR"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
    ("a", &["GET", "r1"]),
    ("a", &["GET", "r2"]),
    ("b", &["SET", "r1", "x"]),
    ("b", &["DEL", "r2"]),
    ("a", &["CLIENT", "TRACKING", "off"]),
    ("a", &["CLIENT", "GETREDIR"]),
    // RESET turns tracking off.
    ("a", &["CLIENT", "TRACKING", "on", "BCAST"]),
    ("a", &["RESET"]),
    ("a", &["HELLO", "3"]),
    ("a", &["CLIENT", "TRACKINGINFO"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_answers_and_invalidates_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("tracking").await;
    let mut ours = Side::new(async || Conn::new(TcpStream::connect(("127.0.0.1", peer.port)).await.unwrap())).await;
    let mut theirs = Side::new(async || Conn::new(UnixStream::connect(&redis.socket).await.unwrap())).await;
    for side in [&mut ours, &mut theirs] {
        side.step("b", &["FLUSHALL"]).await;
        for (conn, args) in SCRIPT {
            side.step(conn, args).await;
        }
    }
    // Something was invalidated, on each path the script covers.
    let pushes = ours.transcript.iter().filter(|l| l.contains("invalidate")).count();
    assert!(pushes >= 15, "only {pushes} invalidations:\n{}", ours.transcript.join("\n"));
    for (i, (a, b)) in ours.transcript.iter().zip(&theirs.transcript).enumerate() {
        assert_eq!(
            a,
            b,
            "meshcache (left) and redis-server (right) differ at line {i}; meshcache's transcript so far:\n{}",
            ours.transcript[..=i].join("\n")
        );
    }
    assert_eq!(ours.transcript.len(), theirs.transcript.len());
    // A FLUSHALL through a redirect to a RESP2 connection: a null
    // message, as Redis 7.2 sends it (7.0 sends the RESP3 null `_`, which
    // is not RESP2).
    ours.step("a", &["HELLO", "3"]).await;
    ours.step("a", &["CLIENT", "TRACKING", "on", "REDIRECT", "<c>"]).await;
    ours.step("a", &["GET", "r1"]).await;
    ours.step("b", &["FLUSHALL"]).await;
    assert_eq!(
        ours.transcript.last().unwrap(),
        "  c got *3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n"
    );
    peer.stop().await;
}

/// A near cache as a client library keeps one: values read from a peer
/// over RESP3 with CLIENT TRACKING on, dropped when an invalidation comes.
struct NearCache {
    con: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    cache: HashMap<String, Option<String>>,
    invalidations: usize,
}

impl NearCache {
    async fn connect(server: &Server, tracking: &[&str]) -> NearCache {
        let (tx, pushes) = mpsc::unbounded_channel();
        let url = format!("redis://127.0.0.1:{}/?protocol=resp3", server.port);
        let config = common::patient().set_push_sender(tx);
        let mut con =
            redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&config).await.unwrap();
        let () = redis::cmd("CLIENT").arg("TRACKING").arg("ON").arg(tracking).query_async(&mut con).await.unwrap();
        NearCache { con, pushes, cache: HashMap::new(), invalidations: 0 }
    }

    fn apply_pushes(&mut self) {
        while let Ok(p) = self.pushes.try_recv() {
            if p.kind != PushKind::Invalidate {
                continue;
            }
            self.invalidations += 1;
            match p.data.first() {
                Some(Value::Array(keys)) => {
                    for k in keys {
                        let k: String = redis::from_redis_value(k.clone()).unwrap();
                        self.cache.remove(&k);
                    }
                }
                Some(Value::Nil) => self.cache.clear(),
                other => panic!("unexpected invalidation {other:?}"),
            }
        }
    }

    /// A round trip: every invalidation the peer queued for this client
    /// before it is handled once it returns.
    async fn sync(&mut self) {
        let () = redis::cmd("PING").query_async(&mut self.con).await.map(|_: String| ()).unwrap();
        self.apply_pushes();
    }

    /// A read through the cache. The value is stored, then the
    /// invalidations that arrived with it applied: one for a change after
    /// the read comes after the reply, so it is applied after the store.
    async fn get(&mut self, key: &str) -> Option<String> {
        self.apply_pushes();
        if let Some(v) = self.cache.get(key) {
            return v.clone();
        }
        let v: Option<String> = self.con.get(key).await.unwrap();
        self.cache.insert(key.to_string(), v.clone());
        self.apply_pushes();
        v
    }
}

/// Waits until a plain read on `con` gives `want`: the peer has applied
/// the write (and queued its invalidations).
async fn until_applied(con: &MultiplexedConnection, key: &str, want: Option<&str>) {
    eventually_async(&format!("{key} reads {want:?}"), || async {
        let v: Option<String> = con.clone().get(key).await.unwrap();
        v.as_deref() == want
    })
    .await;
}

/// A near cache on peer B never serves a value older than one B has
/// applied from peer A: for SET, DEL, a TTL running out and FLUSHALL on
/// A, and an eviction on B (eviction is local: one on A changes nothing on
/// B, so there is nothing there to invalidate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_on_one_peer_follows_writes_on_another() {
    let (meshes, servers) = resp_pair().await;
    let mut a = servers[0].conn().await;
    let b = servers[1].conn().await;
    let mut near = NearCache::connect(&servers[1], &[]).await;

    // SET on A, many times over: once B has each value, so has the cache.
    for k in 0..10 {
        assert_eq!(near.get(&format!("k{k}")).await, None);
    }
    for round in 0..20 {
        for k in 0..10 {
            let () = a.set(format!("k{k}"), format!("v{round}")).await.unwrap();
        }
        until_applied(&b, "k9", Some(&format!("v{round}"))).await;
        near.sync().await;
        for k in 0..10 {
            let want = format!("v{round}");
            assert_eq!(near.get(&format!("k{k}")).await.as_deref(), Some(&*want), "k{k} in round {round}");
        }
    }
    // DEL on A.
    let _: i64 = a.del(&["k0", "k1"]).await.unwrap();
    until_applied(&b, "k1", None).await;
    near.sync().await;
    assert_eq!(near.get("k0").await, None);
    assert_eq!(near.get("k1").await, None);
    assert_eq!(near.get("k2").await.as_deref(), Some("v19"));

    // A TTL set on A runs out on B: B's expiry pass invalidates it.
    let () = redis::cmd("SET").arg("e").arg("soon").arg("PX").arg(300).query_async(&mut a).await.unwrap();
    until_applied(&b, "e", Some("soon")).await;
    near.sync().await;
    assert_eq!(near.get("e").await.as_deref(), Some("soon"));
    let deadline = tokio::time::Instant::now() + common::wait::DEADLINE;
    loop {
        near.sync().await;
        if near.get("e").await.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the expiry never invalidated the near cache");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // FLUSHALL on A: a null invalidation on B.
    let () = redis::cmd("FLUSHALL").query_async(&mut a).await.unwrap();
    until_applied(&b, "k2", None).await;
    eventually_async("B's keyspace is empty", || async {
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut b.clone()).await.unwrap();
        n == 0
    })
    .await;
    near.sync().await;
    for k in 0..10 {
        assert_eq!(near.get(&format!("k{k}")).await, None, "k{k} after FLUSHALL");
    }

    // Evictions on B: B drops keys it holds (A keeps them), and the near
    // cache reading B drops them too.
    let value = "w".repeat(1024);
    for i in 0..200 {
        let () = a.set(format!("warm{i}"), &value).await.unwrap();
    }
    until_applied(&b, "warm199", Some(&value)).await;
    for i in 0..200 {
        assert_eq!(near.get(&format!("warm{i}")).await.as_deref(), Some(&*value));
    }
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "allkeys-random", "maxmemory", "128kb"])
        .query_async(&mut b.clone())
        .await
        .unwrap();
    near.sync().await;
    let mut evicted = 0;
    for i in 0..200 {
        let k = format!("warm{i}");
        let on_b: Option<String> = b.clone().get(&k).await.unwrap();
        if on_b.is_none() {
            evicted += 1;
            assert_eq!(near.get(&k).await, None, "{k} was evicted on B but the near cache serves it");
        }
    }
    assert!(evicted >= 50, "B evicted only {evicted} of 200 keys");
    assert!(near.invalidations > 0);
    stop_all(meshes, servers).await;
}

/// Writes racing with reads through the cache. On the peer the cache
/// reads from, a writer records each write once acknowledged; after one
/// round trip the cache must serve that write or a later one, whatever the
/// interleaving. Writes from the other peer race with reads of other keys,
/// and once the peers agree the cache must hold what they hold. A cache
/// serving an older value would mean an invalidation came before the reply
/// that read around it, or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_never_leave_a_near_cache_stale() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let (meshes, servers) = resp_pair().await;
    let a = servers[0].conn().await;
    let b = servers[1].conn().await;
    let mut near = NearCache::connect(&servers[1], &[]).await;
    const KEYS: u64 = 2;
    const WRITES: u64 = 2_000;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let local = tokio::spawn({
        let (mut b, acked) = (b.clone(), acked.clone());
        async move {
            for n in 1..=WRITES {
                let () = b.set(format!("hot{}", n % KEYS), n).await.unwrap();
                acked[(n % KEYS) as usize].store(n, Ordering::SeqCst);
            }
        }
    });
    let remote = tokio::spawn({
        let mut a = a.clone();
        async move {
            for n in 1..=WRITES {
                let () = a.set(format!("far{}", n % KEYS), n).await.unwrap();
            }
        }
    });
    let mut checked = 0u64;
    let mut i = 0;
    while !local.is_finished() {
        let k = i % KEYS;
        i += 1;
        // A read (from the peer when the cache has nothing), then the
        // check: a write acknowledged after that read must reach the cache.
        near.get(&format!("hot{k}")).await;
        let floor = acked[k as usize].load(Ordering::SeqCst);
        near.sync().await;
        let got = near.get(&format!("hot{k}")).await.map_or(0, |v| v.parse::<u64>().unwrap());
        assert!(got >= floor, "hot{k}: the cache served write {got} after write {floor} was acknowledged");
        near.get(&format!("far{k}")).await;
        checked += 1;
    }
    local.await.unwrap();
    remote.await.unwrap();
    eventually_async("a and b agree", || async {
        let keys: Vec<String> = (0..KEYS).map(|k| format!("far{k}")).collect();
        let on_a: Vec<Option<String>> = a.clone().mget(&keys).await.unwrap();
        let on_b: Vec<Option<String>> = b.clone().mget(&keys).await.unwrap();
        on_a == on_b
    })
    .await;
    near.sync().await;
    for key in (0..KEYS).flat_map(|k| [format!("hot{k}"), format!("far{k}")]) {
        let on_b: Option<String> = b.clone().get(&key).await.unwrap();
        assert_eq!(near.get(&key).await, on_b, "{key}");
    }
    assert!(checked > 100, "only {checked} reads raced with the writes");
    assert!(near.invalidations > 0);
    stop_all(meshes, servers).await;
}

/// A redirect target that closes: the tracking client hears
/// `tracking-redir-broken` at once, and CLIENT LIST and TRACKINGINFO say
/// so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_redirect_target_is_reported_at_once() {
    let peer = RespPeer::start("redirect").await;
    let connect = async || Conn::new(TcpStream::connect(("127.0.0.1", peer.port)).await.unwrap());
    let mut tracker = connect().await;
    tracker.resp3 = true;
    tracker.cmd(&[b"HELLO", b"3"]).await;
    let mut target = connect().await;
    let id = String::from_utf8(target.cmd(&[b"CLIENT", b"ID"]).await).unwrap();
    let id = id.trim_start_matches(':').trim_end().to_string();
    let on = tracker.cmd(&[b"CLIENT", b"TRACKING", b"on", b"REDIRECT", id.as_bytes()]).await;
    assert_eq!(on, b"+OK\r\n");
    drop(target);
    let push = String::from_utf8(tracker.next().await).unwrap();
    assert_eq!(push, format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n"));
    let info = String::from_utf8(tracker.cmd(&[b"CLIENT", b"TRACKINGINFO"]).await).unwrap();
    assert!(info.contains("broken_redirect"), "{info}");
    let list = String::from_utf8(tracker.cmd(&[b"CLIENT", b"INFO"]).await).unwrap();
    assert!(list.contains("flags=tR ") && list.contains(&format!("redir={id} ")), "{list}");
    peer.stop().await;
}

/// `tracking-table-max-keys`: past it the keys tracked longest are
/// invalidated early (the cache drops them), never forgotten silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tracking_table_invalidates_its_oldest_keys() {
    let (meshes, servers) = resp_pair().await;
    let mut b = servers[1].conn().await;
    let () = redis::cmd("CONFIG").arg(&["SET", "tracking-table-max-keys", "10"]).query_async(&mut b).await.unwrap();
    let mut near = NearCache::connect(&servers[1], &[]).await;
    for i in 0..50 {
        let () = b.set(format!("t{i}"), i).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(near.get(&format!("t{i}")).await, Some(i.to_string()));
    }
    near.sync().await;
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut b).await.unwrap();
    assert!(stats.contains("tracking_total_keys:10\r\n"), "{stats}");
    assert!(stats.contains("tracking_keys_invalidated_early:40\r\n"), "{stats}");
    let mut kept: Vec<&String> = near.cache.keys().collect();
    kept.sort_by_key(|k| k[1..].parse::<u32>().unwrap());
    let newest: Vec<String> = (40..50).map(|i| format!("t{i}")).collect();
    assert_eq!(kept, newest.iter().collect::<Vec<_>>(), "the cache keeps what is still tracked");
    // What is still tracked is still invalidated.
    let () = b.set("t45", "new").await.unwrap();
    near.sync().await;
    assert_eq!(near.get("t45").await.as_deref(), Some("new"));
    stop_all(meshes, servers).await;
}

/// A write that reaches the cache's peer only by anti-entropy (the peers
/// were cut apart when it was made, and their connection timed out)
/// invalidates the near cache too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_repaired_by_anti_entropy_invalidates_the_near_cache() {
    use meshcache::transport::certs::EphemeralCa;
    use meshcache::transport::faults::Faults;

    let ca = EphemeralCa::new().unwrap();
    let faults = Faults::with_seed(3);
    let (a, b) = common::mesh::faulty_pair(&ca, &faults).await;
    let servers = vec![
        Server::start(&a, meshcache::resp::RespConfig::default()).await,
        Server::start(&b, meshcache::resp::RespConfig::default()).await,
    ];
    let mut on_a = servers[0].conn().await;
    let on_b = servers[1].conn().await;
    let mut near = NearCache::connect(&servers[1], &[]).await;
    let () = on_a.set("k", "before").await.unwrap();
    until_applied(&on_b, "k", Some("before")).await;
    assert_eq!(near.get("k").await.as_deref(), Some("before"));

    faults.partition(&[a.local_addr()], &[b.local_addr()]);
    common::wait::eventually("the connection times out", || a.stats().connected == 0 && b.stats().connected == 0).await;
    let () = on_a.set("k", "after").await.unwrap();
    let repaired = b.stats().ae_entries_received;
    faults.heal();
    until_applied(&on_b, "k", Some("after")).await;
    // A session counts its entries when it ends, which can be just after
    // what it merged is read.
    common::wait::eventually("the write arrived by anti-entropy", || b.stats().ae_entries_received > repaired).await;
    near.sync().await;
    assert_eq!(near.get("k").await.as_deref(), Some("after"));
    stop_all(vec![a, b], servers).await;
}

/// The changes one message from another peer brings reach a BCAST client
/// as one push a prefix, their keys sorted, as a command's own writes do:
/// an MSET on A is one push message to B, merged as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_message_reaches_a_bcast_client_as_one_push_a_prefix() {
    let (meshes, servers) = resp_pair().await;
    let mut a = servers[0].conn().await;
    let mut near = NearCache::connect(&servers[1], &["BCAST", "PREFIX", "k", "PREFIX", "x"]).await;
    let () = redis::cmd("MSET").arg(&["k3", "1", "x", "2", "y", "3", "k1", "4"]).query_async(&mut a).await.unwrap();

    // The pushes are queued once the merge ends, just after B's readers
    // can see its values: read them until both prefixes have been heard.
    let mut pushes: Vec<Vec<String>> = Vec::new();
    let heard = |pushes: &Vec<Vec<String>>| {
        let keys: Vec<&String> = pushes.iter().flatten().collect();
        keys.iter().filter(|k| k.starts_with('k')).count() >= 2 && keys.iter().any(|k| *k == "x")
    };
    let deadline = tokio::time::Instant::now() + common::wait::DEADLINE;
    while !heard(&pushes) {
        assert!(tokio::time::Instant::now() < deadline, "B's BCAST client heard only {pushes:?}");
        let () = redis::cmd("PING").query_async(&mut near.con).await.map(|_: String| ()).unwrap();
        while let Ok(p) = near.pushes.try_recv() {
            if p.kind != PushKind::Invalidate {
                continue;
            }
            let Some(Value::Array(keys)) = p.data.first() else { panic!("unexpected invalidation {p:?}") };
            pushes.push(keys.iter().map(|k| redis::from_redis_value(k.clone()).unwrap()).collect());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Nothing more comes after a round trip.
    let () = redis::cmd("PING").query_async(&mut near.con).await.map(|_: String| ()).unwrap();
    assert!(near.pushes.try_recv().is_err(), "more pushes after {pushes:?}");
    // Prefix "k" first, then "x": the order the prefixes sort in.
    assert_eq!(pushes, vec![vec!["k1", "k3"], vec!["x"]]);
    stop_all(meshes, servers).await;
}

/// A BCAST client hears of a write while the writer's connection waits
/// on a client that does not read its replies: the invalidations a
/// connection gathers go out before it waits for its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bcast_client_hears_a_write_whose_client_does_not_read() {
    use tokio::io::AsyncWriteExt;

    let (meshes, servers) = resp_pair().await;
    let mut a = servers[0].conn().await;
    let () = a.set("big", vec![b'x'; 8 << 20]).await.unwrap();
    let mut near = NearCache::connect(&servers[0], &["BCAST", "PREFIX", "fresh"]).await;
    // A small receive buffer, never read: the server cannot write the
    // two replies below in one go, and waits for the socket.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sock = sock.connect(([127, 0, 0, 1], servers[0].port).into()).await.unwrap();
    let mut req = Vec::new();
    for args in [&["SET", "fresh", "v"][..], &["GET", "big"]] {
        req.extend(format!("*{}\r\n", args.len()).into_bytes());
        for a in args {
            req.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
        }
    }
    sock.write_all(&req).await.unwrap();
    let deadline = tokio::time::Instant::now() + common::wait::DEADLINE;
    while near.invalidations == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the BCAST client never heard of `fresh`");
        near.sync().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(sock);
    stop_all(meshes, servers).await;
}
