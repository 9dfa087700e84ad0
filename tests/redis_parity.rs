//! meshcache's replies against redis-server's, byte for byte.
//!
//! The same commands go to a lone peer's RESP server and to a redis-server
//! the test starts (on a Unix socket in a temporary directory, so it takes
//! no port), and every reply must be the same bytes: values, integers,
//! nulls, RESP3 maps, and the exact error texts. Commands whose replies
//! depend on the moment or on the server (TTLs in ms, INFO, HELLO) are run
//! without comparing. redis-server comes from Debian's `redis-server`
//! package, which `scripts/test` installs; without it the test is skipped
//! (and fails under CI).

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::redis_ref::{compare, redis72, run_only, same, Check, Conn, RedisServer, RespPeer, Step};
use meshcache::MeshConfig;
use tokio::net::{TcpStream, UnixStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_answer_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity").await;
    let script = strings_script();
    let n = compare(peer.port, &redis, &script).await;
    assert_eq!(n, script.iter().filter(|s| s.1 == Check::Same).count());
    // The same replies in RESP3.
    let mut resp3 = vec![run_only(&["HELLO", "3"])];
    resp3.extend(strings_script());
    compare(peer.port, &redis, &resp3).await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_commands_answer_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity").await;
    let script = keyspace_script();
    let n = compare(peer.port, &redis, &script).await;
    assert_eq!(n, script.iter().filter(|s| s.1 == Check::Same).count());
    let mut resp3 = vec![run_only(&["HELLO", "3"])];
    resp3.extend(keyspace_script());
    compare(peer.port, &redis, &resp3).await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_commands_answer_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity").await;
    let script = pubsub_script();
    let n = compare(peer.port, &redis, &script).await;
    assert_eq!(n, script.iter().filter(|s| s.1 == Check::Same).count());
    let mut resp3 = vec![run_only(&["HELLO", "3"])];
    resp3.extend(pubsub_script());
    compare(peer.port, &redis, &resp3).await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_answer_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity").await;
    let script = transaction_script();
    let n = compare(peer.port, &redis, &script).await;
    assert_eq!(n, script.iter().filter(|s| s.1 == Check::Same).count());
    let mut resp3 = vec![run_only(&["HELLO", "3"])];
    resp3.extend(transaction_script());
    compare(peer.port, &redis, &resp3).await;
    peer.stop().await;
}

/// The keyspace events of each write command, against redis-server's: a
/// subscriber to every `__keyevent@0__` channel on each server, and the
/// same commands run on another connection of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_name_their_command_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity").await;
    let script: &[&[&str]] = &[
        &["SET", "a", "1"],
        &["APPEND", "a", "x"],
        &["SETRANGE", "a", "0", "z"],
        &["SETBIT", "b", "1", "1"],
        &["BITFIELD", "b", "SET", "u8", "8", "7", "GET", "u4", "0"],
        // Nothing changes: no event; a bit changed and changed back: one.
        &["BITFIELD", "b", "SET", "u8", "8", "7"],
        &["BITFIELD", "b", "INCRBY", "u1", "3", "1", "INCRBY", "u1", "3", "1"],
        &["BITFIELD_RO", "b", "GET", "u8", "8"],
        &["INCR", "n"],
        &["INCRBY", "n", "5"],
        &["DECR", "n"],
        &["DECRBY", "n", "2"],
        &["INCRBYFLOAT", "f", "1.5"],
        &["RENAME", "a", "a2"],
        &["RENAMENX", "a2", "a3"],
        &["COPY", "a3", "a4"],
        &["GETDEL", "a4"],
        &["MSET", "m1", "1", "m2", "2"],
        &["MSETNX", "m3", "1", "m4", "2"],
        &["GETSET", "m1", "3"],
        &["SETNX", "m5", "1"],
        &["EXPIRE", "m1", "100"],
        &["PERSIST", "m1"],
        &["GETEX", "m1", "EX", "100"],
        &["DEL", "m2", "m3"],
        // Inside a transaction (each key written once: a key written twice
        // in one transaction notifies once, its last write).
        &["SET", "t0", "1"],
        &["MULTI"],
        &["SET", "t1", "1"],
        &["INCR", "t2"],
        &["RENAME", "t0", "t3"],
        &["EXEC"],
    ];
    let ours = heard(async || peer_conn(&peer).await, b"__keyevent@0__:*", &[script]).await;
    let theirs = heard(async || redis_conn(&redis).await, b"__keyevent@0__:*", &[script]).await;
    assert_eq!(ours, theirs, "meshcache's events (left) and redis-server's (right)");
    peer.stop().await;
}

async fn peer_conn(peer: &RespPeer) -> Conn {
    Conn::new(TcpStream::connect(("127.0.0.1", peer.port)).await.unwrap())
}

async fn redis_conn(redis: &RedisServer) -> Conn {
    Conn::new(UnixStream::connect(&redis.socket).await.unwrap())
}

/// The messages a subscriber to `pattern` hears (`notify-keyspace-events
/// KEA`) while another connection runs `scripts` from an empty keyspace,
/// sleeping between two scripts for longer than any TTL the first one
/// set (a bound from below, not a timing). A mark written last ends them.
async fn heard(connect: impl AsyncFn() -> Conn, pattern: &[u8], scripts: &[&[&[&str]]]) -> Vec<String> {
    let mut sub = connect().await;
    let mut con = connect().await;
    assert_eq!(con.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
    assert_eq!(con.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEA"]).await, b"+OK\r\n");
    sub.cmd(&[b"PSUBSCRIBE", pattern]).await;
    for (i, script) in scripts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in script.iter() {
            con.cmd(&c.iter().map(|a| a.as_bytes()).collect::<Vec<_>>()).await;
        }
    }
    con.cmd(&[b"SET", b"end", b"1"]).await;
    let mut got = Vec::new();
    loop {
        let m = String::from_utf8(sub.next().await).unwrap();
        if m.ends_with("$3\r\nend\r\n") {
            break;
        }
        got.push(m);
    }
    got
}

/// A write to a key whose TTL has run out publishes `expired` before its
/// own events, as Redis does for a key a command finds past its TTL: a
/// SET, an INCR and a transaction's SET, against redis-server's keyspace
/// and keyevent messages. The peer's expiry sweep is held off (a timer
/// tick of an hour), so each write is the first to find its key expired
/// and must tell of it; redis-server's own expiry cycle may get there
/// first, and its messages come in the same order either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_key_past_its_ttl_publishes_expired_first_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let config = MeshConfig { tick_interval: Duration::from_secs(3600), ..MeshConfig::for_test("parity-lazy") };
    let peer = RespPeer::start_with(config).await;
    let short: &[&[&str]] =
        &[&["SET", "k", "v", "PX", "10"], &["SET", "n", "5", "PX", "10"], &["SET", "t", "v", "PX", "10"]];
    let writes: &[&[&str]] = &[&["SET", "k", "w"], &["INCR", "n"], &["MULTI"], &["SET", "t", "x"], &["EXEC"]];
    let scripts = [short, writes];
    let ours = heard(async || peer_conn(&peer).await, b"__key*@0__:*", &scripts).await;
    let theirs = heard(async || redis_conn(&redis).await, b"__key*@0__:*", &scripts).await;
    // Per key: redis-server's expiry cycle ends the three keys in an order
    // of its own while the test sleeps.
    let by_key = |got: &[String]| {
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in got {
            let parts: Vec<&str> = m.split("\r\n").collect();
            let (channel, payload) = (parts[6], parts[8]);
            let (key, line) = match channel.strip_prefix("__keyspace@0__:") {
                Some(key) => (key, format!("keyspace {payload}")),
                None => (payload, format!("keyevent {}", channel.trim_start_matches("__keyevent@0__:"))),
            };
            keys.entry(key.to_string()).or_default().push(line);
        }
        keys
    };
    let (ours, theirs) = (by_key(&ours), by_key(&theirs));
    assert_eq!(ours, theirs, "meshcache's events (left) and redis-server's (right), per key");
    for key in ["k", "n", "t"] {
        let expired = ours[key].iter().position(|e| e == "keyevent expired");
        assert_eq!(expired, Some(5), "{key}: set, expire, then expired before the write: {:?}", ours[key]);
    }
    peer.stop().await;
}

/// MULTI, EXEC, DISCARD, WATCH, UNWATCH and MSETNX on one connection:
/// queuing, the errors that abort a transaction and those that do not,
/// and WATCH's aborts (by this connection's own writes: another peer's are
/// in `tests/resp.rs`).
fn transaction_script() -> Vec<Step> {
    vec![
        same(&["FLUSHALL"]),
        // Errors while queuing: nested MULTI and WATCH are answered and
        // do not abort; unknown commands and bad arity do.
        same(&["MULTI"]),
        same(&["MULTI"]),
        same(&["WATCH", "a"]),
        same(&["SET", "a", "1"]),
        same(&["EXEC"]),
        same(&["GET", "a"]),
        same(&["MULTI"]),
        same(&["SET", "a", "2"]),
        same(&["NOSUCH", "x"]),
        same(&["GET"]),
        same(&["EXEC"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        same(&["DISCARD"]),
        // Commands queued and run, errors at run time in the reply.
        same(&["MULTI"]),
        same(&["SET", "a", "1"]),
        same(&["INCR", "a"]),
        same(&["SET", "b", "x"]),
        same(&["INCR", "b"]),
        same(&["SET", "c", "v", "EX", "0"]),
        same(&["MGET", "a", "b", "c"]),
        same(&["APPEND", "b", "yz"]),
        same(&["GETRANGE", "b", "0", "1"]),
        same(&["DEL", "b", "c"]),
        same(&["EXISTS", "a", "b"]),
        same(&["EXEC"]),
        same(&["MULTI"]),
        same(&["EXEC"]),
        // Commands a transaction may not hold.
        same(&["MULTI"]),
        same(&["SAVE"]),
        same(&["PING"]),
        same(&["EXEC"]),
        same(&["MULTI"]),
        same(&["DISCARD"]),
        same(&["DISCARD"]),
        // A refused EXEC discards the transaction.
        same(&["EXEC", "x"]),
        same(&["MULTI"]),
        same(&["SET", "a", "9"]),
        same(&["EXEC", "x"]),
        same(&["EXEC"]),
        same(&["GET", "a"]),
        // WATCH.
        same(&["WATCH"]),
        same(&["WATCH", "a", "b", "a"]),
        same(&["SET", "a", "5"]),
        same(&["MULTI"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        same(&["WATCH", "a"]),
        same(&["MULTI"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        same(&["WATCH", "a"]),
        same(&["UNWATCH"]),
        same(&["SET", "a", "6"]),
        same(&["MULTI"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        same(&["WATCH", "nokey"]),
        same(&["SET", "nokey", "1"]),
        same(&["DEL", "nokey"]),
        same(&["MULTI"]),
        same(&["PING"]),
        same(&["EXEC"]),
        same(&["WATCH", "a"]),
        same(&["MULTI"]),
        same(&["DISCARD"]),
        same(&["SET", "a", "7"]),
        same(&["MULTI"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        same(&["WATCH", "a"]),
        same(&["MULTI"]),
        same(&["UNWATCH"]),
        same(&["GET", "a"]),
        same(&["EXEC"]),
        // RESET ends a transaction being queued.
        same(&["MULTI"]),
        same(&["SET", "a", "8"]),
        same(&["RESET"]),
        same(&["EXEC"]),
        same(&["GET", "a"]),
        // MSETNX.
        same(&["MSETNX"]),
        same(&["MSETNX", "a"]),
        same(&["MSETNX", "a", "1", "b"]),
        same(&["DEL", "a", "b"]),
        same(&["MSETNX", "a", "1", "b", "2"]),
        same(&["MSETNX", "b", "3", "c", "4"]),
        same(&["MSETNX", "d", "1", "d", "2"]),
        same(&["MGET", "a", "b", "c", "d"]),
        // Keyspace walks and two-key commands inside a transaction.
        same(&["MULTI"]),
        same(&["MSETNX", "x", "1", "y", "2"]),
        same(&["RENAME", "x", "z"]),
        same(&["COPY", "z", "w"]),
        same(&["KEYS", "z"]),
        same(&["SCAN", "0", "MATCH", "z", "COUNT", "1000"]),
        same(&["EXISTS", "x", "y", "z", "w"]),
        same(&["DBSIZE"]),
        same(&["EXEC"]),
        same(&["FLUSHALL"]),
    ]
}

/// One connection: publishing to nobody, PUBSUB's counts, then the same
/// connection subscribing, restricted in RESP2, and back.
fn pubsub_script() -> Vec<Step> {
    vec![
        same(&["PUBLISH", "ch", "hello"]),
        same(&["SPUBLISH", "ch", "hello"]),
        same(&["PUBLISH", "ch"]),
        same(&["PUBSUB", "CHANNELS"]),
        same(&["PUBSUB", "CHANNELS", "c*"]),
        same(&["PUBSUB", "NUMSUB"]),
        same(&["PUBSUB", "NUMSUB", "a", "b"]),
        same(&["PUBSUB", "NUMPAT"]),
        same(&["PUBSUB", "SHARDCHANNELS"]),
        same(&["PUBSUB", "SHARDNUMSUB", "s"]),
        same(&["PUBSUB", "FOO"]),
        same(&["PUBSUB", "NUMPAT", "x"]),
        same(&["PUBSUB", "CHANNELS", "a", "b"]),
        same(&["PUBSUB"]),
        same(&["SUBSCRIBE", "a", "b"]),
        same(&["PSUBSCRIBE", "p*"]),
        same(&["SSUBSCRIBE", "s1", "s2"]),
        same(&["SSUBSCRIBE", "s1"]),
        same(&["PING"]),
        same(&["PING", "x"]),
        same(&["SUNSUBSCRIBE", "s1"]),
        same(&["SUNSUBSCRIBE"]),
        same(&["SUNSUBSCRIBE"]),
        same(&["PUNSUBSCRIBE", "p*"]),
        same(&["UNSUBSCRIBE", "b"]),
        same(&["UNSUBSCRIBE"]),
        same(&["UNSUBSCRIBE"]),
        same(&["PUNSUBSCRIBE"]),
        same(&["SSUBSCRIBE"]),
    ]
}

/// Key order in KEYS and SCAN is each server's own: the steps that list
/// keys match one key at a time, or none.
fn keyspace_script() -> Vec<Step> {
    vec![
        same(&["SCAN", "0"]),
        same(&["KEYS", "*"]),
        same(&["RANDOMKEY"]),
        same(&["MSET", "alpha", "1", "beta", "two", "gamma", "3"]),
        same(&["KEYS", "al*"]),
        same(&["KEYS", "?eta"]),
        same(&["KEYS", "[ab]lpha"]),
        same(&["KEYS", "nothing*"]),
        same(&["KEYS"]),
        same(&["SCAN", "0", "MATCH", "gam*"]),
        same(&["SCAN", "0", "MATCH", "gam*", "COUNT", "100"]),
        same(&["SCAN", "0", "MATCH", "b*", "TYPE", "string"]),
        same(&["SCAN", "0", "TYPE", "hash"]),
        same(&["SCAN", "x"]),
        same(&["SCAN", "0", "COUNT", "0"]),
        same(&["SCAN", "0", "COUNT", "x"]),
        same(&["SCAN", "0", "MATCH"]),
        same(&["SCAN", "0", "FOO", "bar"]),
        same(&["SCAN"]),
        // RENAME, RENAMENX, COPY.
        same(&["SET", "t", "v", "EX", "100"]),
        same(&["RENAME", "t", "t2"]),
        same(&["EXISTS", "t"]),
        same(&["GET", "t2"]),
        same(&["TTL", "t2"]),
        same(&["RENAME", "t", "t3"]),
        same(&["RENAME", "t2", "t2"]),
        same(&["RENAMENX", "t2", "t2"]),
        same(&["RENAMENX", "t2", "alpha"]),
        same(&["RENAMENX", "t2", "fresh"]),
        same(&["RENAMENX", "nothing", "x"]),
        same(&["RENAME", "alpha"]),
        same(&["COPY", "fresh", "fresh2"]),
        same(&["TTL", "fresh2"]),
        same(&["COPY", "fresh", "fresh2"]),
        same(&["COPY", "beta", "fresh2", "REPLACE"]),
        same(&["GET", "fresh2"]),
        same(&["COPY", "beta", "b2", "DB", "0"]),
        same(&["COPY", "beta", "b3", "DB", "x"]),
        same(&["COPY", "beta", "b3", "FOO"]),
        same(&["COPY", "beta", "b3", "DB"]),
        same(&["COPY", "beta", "beta"]),
        same(&["COPY", "nothing", "b4"]),
        same(&["COPY", "beta"]),
        // OBJECT.
        same(&["SET", "long", "a fairly long value that takes more than forty-four bytes"]),
        same(&["OBJECT", "ENCODING", "gamma"]),
        same(&["OBJECT", "ENCODING", "beta"]),
        same(&["OBJECT", "ENCODING", "long"]),
        same(&["OBJECT", "ENCODING", "nothing"]),
        same(&["OBJECT", "IDLETIME", "beta"]),
        same(&["OBJECT", "IDLETIME", "nothing"]),
        same(&["OBJECT", "FREQ", "beta"]),
        same(&["OBJECT", "ENCODING"]),
        same(&["OBJECT", "FOO", "beta"]),
        same(&["OBJECT", "HELP", "x"]),
        same(&["OBJECT"]),
        same(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]),
        same(&["OBJECT", "FREQ", "nothing"]),
        same(&["OBJECT", "IDLETIME", "beta"]),
        run_only(&["OBJECT", "FREQ", "beta"]),
        same(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]),
        // DEL and UNLINK of many keys, FLUSHDB, and RANDOMKEY of one.
        same(&["DEL", "beta", "gamma", "nothing", "beta"]),
        same(&["UNLINK", "fresh", "fresh2", "long", "b2", "t2"]),
        same(&["KEYS", "*"]),
        same(&["RANDOMKEY"]),
        same(&["FLUSHDB"]),
        same(&["RANDOMKEY"]),
        same(&["SCAN", "0"]),
    ]
}

fn strings_script() -> Vec<Step> {
    vec![
        // Counters, and their edges.
        same(&["SET", "n", "10"]),
        same(&["INCR", "n"]),
        same(&["INCRBY", "n", "5"]),
        same(&["DECR", "n"]),
        same(&["DECRBY", "n", "3"]),
        same(&["INCRBY", "n", "-2"]),
        same(&["GET", "n"]),
        same(&["INCR", "fresh"]),
        same(&["DECRBY", "low", "9223372036854775807"]),
        same(&["DECR", "low"]),
        same(&["DECR", "low"]),
        same(&["GET", "low"]),
        same(&["SET", "high", "9223372036854775807"]),
        same(&["INCR", "high"]),
        same(&["INCRBY", "high", "9223372036854775808"]),
        same(&["DECRBY", "x", "-9223372036854775808"]),
        same(&["INCRBY", "x", "abc"]),
        same(&["SET", "s", "abc"]),
        same(&["INCR", "s"]),
        same(&["SET", "s", " 1"]),
        same(&["INCR", "s"]),
        same(&["SET", "s", "01"]),
        same(&["INCR", "s"]),
        same(&["SET", "s", "-0"]),
        same(&["INCR", "s"]),
        same(&["INCR"]),
        same(&["INCRBY", "n"]),
        same(&["SET", "t", "5", "EX", "100"]),
        same(&["INCR", "t"]),
        same(&["TTL", "t"]),
        same(&["INCRBYFLOAT", "f", "10.50"]),
        same(&["INCRBYFLOAT", "f", "0.1"]),
        same(&["INCRBYFLOAT", "f", "-5"]),
        same(&["SET", "f", "5.0e3"]),
        same(&["INCRBYFLOAT", "f", "2.0e2"]),
        same(&["INCRBYFLOAT", "f", "abc"]),
        same(&["INCRBYFLOAT", "f", "inf"]),
        same(&["SET", "f", "abc"]),
        same(&["INCRBYFLOAT", "f", "1"]),
        same(&["INCRBYFLOAT", "g", "3"]),
        same(&["INCRBYFLOAT", "g", "-3"]),
        same(&["GET", "g"]),
        // redis-server adds in the x87 80-bit format and writes 17 fraction
        // digits, rounded half to even: f64 would answer 0.30000000000000004
        // to the first pair, 3001.1 to the second, and 0.00000381469726563
        // to the third.
        same(&["INCRBYFLOAT", "p", "0.1"]),
        same(&["INCRBYFLOAT", "p", "0.2"]),
        same(&["SET", "p", "3001.1"]),
        same(&["INCRBYFLOAT", "p", "1e-20"]),
        same(&["INCRBYFLOAT", "q", "0.000003814697265625"]),
        same(&["INCRBYFLOAT", "q", "0x10"]),
        same(&["INCRBYFLOAT", "q", "-1e308"]),
        same(&["INCRBYFLOAT", "q", "1e5000"]),
        same(&["INCRBYFLOAT", "q", "nan"]),
        same(&["INCRBYFLOAT", "q", "0\u{81}"]),
        same(&["SET", "q", "9223372036854775807"]),
        same(&["INCRBYFLOAT", "q", "5e-324"]),
        // APPEND, STRLEN, GETRANGE, SETRANGE.
        same(&["APPEND", "a", "Hello"]),
        same(&["APPEND", "a", " World"]),
        same(&["GET", "a"]),
        same(&["STRLEN", "a"]),
        same(&["STRLEN", "nothing"]),
        same(&["APPEND", "e", ""]),
        same(&["EXISTS", "e"]),
        same(&["STRLEN", "e"]),
        same(&["APPEND", "a", ""]),
        same(&["GETRANGE", "a", "0", "3"]),
        same(&["GETRANGE", "a", "-3", "-1"]),
        same(&["GETRANGE", "a", "0", "-1"]),
        same(&["GETRANGE", "a", "10", "100"]),
        same(&["GETRANGE", "a", "-1", "-5"]),
        same(&["GETRANGE", "a", "5", "3"]),
        same(&["GETRANGE", "a", "-100", "2"]),
        same(&["GETRANGE", "a", "20", "30"]),
        same(&["GETRANGE", "nothing", "0", "-1"]),
        same(&["GETRANGE", "e", "0", "-1"]),
        same(&["SUBSTR", "a", "0", "4"]),
        same(&["GETRANGE", "a", "x", "1"]),
        same(&["GETRANGE", "a", "0"]),
        same(&["SETRANGE", "r", "6", "Redis"]),
        same(&["GET", "r"]),
        same(&["SETRANGE", "a", "6", "Redis"]),
        same(&["GET", "a"]),
        same(&["SETRANGE", "a", "-1", "x"]),
        same(&["SETRANGE", "a", "0", ""]),
        same(&["SETRANGE", "none", "0", ""]),
        same(&["EXISTS", "none"]),
        same(&["SETRANGE", "a", "536870912", "x"]),
        same(&["SETRANGE", "a", "x", "y"]),
        // GETSET, GETEX.
        same(&["GETSET", "a", "new"]),
        same(&["GETSET", "gs", "v"]),
        same(&["GET", "gs"]),
        same(&["SET", "x1", "v", "EX", "100"]),
        same(&["GETSET", "x1", "w"]),
        same(&["TTL", "x1"]),
        same(&["GETEX", "a"]),
        same(&["GETEX", "a", "EX", "100"]),
        same(&["TTL", "a"]),
        same(&["GETEX", "a", "PERSIST"]),
        same(&["TTL", "a"]),
        same(&["GETEX", "a", "EX", "0"]),
        same(&["GETEX", "a", "PX", "-1"]),
        same(&["GETEX", "a", "EX", "10", "PX", "10"]),
        same(&["GETEX", "a", "PERSIST", "EX", "10"]),
        same(&["GETEX", "a", "FOO"]),
        same(&["GETEX", "a", "EX"]),
        same(&["GETEX", "a", "EX", "abc"]),
        same(&["GETEX", "a", "EX", "9223372036854775807"]),
        same(&["GETEX", "nothing", "EX", "10"]),
        // An invalid expire time is an error only for a key that exists.
        same(&["GETEX", "nothing", "EX", "abc"]),
        same(&["GETEX", "nothing", "PX", "-1"]),
        same(&["GETEX", "nothing", "EX", "10", "PX", "10"]),
        same(&["GETEX", "a", "PXAT", "1"]),
        same(&["GET", "a"]),
        same(&["GETEX"]),
        // Bits.
        same(&["SETBIT", "b", "7", "1"]),
        same(&["SETBIT", "b", "7", "1"]),
        same(&["SETBIT", "b", "7", "0"]),
        same(&["GETBIT", "b", "7"]),
        same(&["SETBIT", "b", "100", "1"]),
        same(&["GET", "b"]),
        same(&["STRLEN", "b"]),
        same(&["GETBIT", "b", "100"]),
        same(&["GETBIT", "b", "1000"]),
        same(&["GETBIT", "nothing", "0"]),
        same(&["SETBIT", "b", "-1", "1"]),
        same(&["SETBIT", "b", "4294967296", "1"]),
        same(&["SETBIT", "b", "1", "2"]),
        same(&["SETBIT", "b", "1", "-1"]),
        same(&["GETBIT", "b", "x"]),
        same(&["SETBIT", "z", "3", "0"]),
        same(&["GET", "z"]),
        same(&["BITCOUNT", "b"]),
        same(&["SET", "fb", "foobar"]),
        same(&["BITCOUNT", "fb"]),
        same(&["BITCOUNT", "fb", "0", "0"]),
        same(&["BITCOUNT", "fb", "1", "1"]),
        same(&["BITCOUNT", "fb", "1", "1", "BIT"]),
        same(&["BITCOUNT", "fb", "5", "30", "BIT"]),
        same(&["BITCOUNT", "fb", "-3", "-1", "BYTE"]),
        same(&["BITCOUNT", "fb", "-1", "-3"]),
        same(&["BITCOUNT", "fb", "0"]),
        same(&["BITCOUNT", "fb", "0", "1", "FOO"]),
        same(&["BITCOUNT", "fb", "0", "1", "BIT", "x"]),
        same(&["BITCOUNT", "nothing"]),
        // Redis 7.2 checks the arguments before looking the key up (7.0
        // answered 0 for a missing key whatever followed it).
        redis72(&["BITCOUNT", "nothing", "0", "x"], "-ERR value is not an integer or out of range\r\n"),
        redis72(&["BITCOUNT", "nothing", "0"], "-ERR syntax error\r\n"),
        // BITPOS, on values built by SETBIT and BITOP.
        same(&["SETBIT", "bp", "12", "1"]),
        same(&["BITPOS", "bp", "1"]),
        same(&["BITPOS", "bp", "0"]),
        same(&["BITPOS", "bp", "1", "1"]),
        same(&["BITPOS", "bp", "1", "0", "0"]),
        same(&["BITPOS", "bp", "1", "0", "-1", "BIT"]),
        same(&["BITPOS", "bp", "1", "13", "-1", "BIT"]),
        same(&["BITPOS", "bp", "1", "2"]),
        same(&["BITPOS", "bp", "0", "5", "20", "BIT"]),
        same(&["BITPOS", "bp", "0", "-100", "100", "byte"]),
        same(&["BITPOS", "bp", "2"]),
        same(&["BITPOS", "bp", "x"]),
        same(&["BITPOS", "bp", "1", "x"]),
        same(&["BITPOS", "bp", "1", "0", "1", "FOO"]),
        same(&["BITPOS", "bp", "1", "0", "1", "BIT", "x"]),
        same(&["BITPOS", "bp"]),
        same(&["BITPOS", "nothing", "1"]),
        same(&["BITPOS", "nothing", "0"]),
        redis72(&["BITPOS", "nothing", "1", "x"], "-ERR value is not an integer or out of range\r\n"),
        same(&["SETBIT", "z", "15", "0"]),
        same(&["BITOP", "NOT", "ones", "z"]),
        same(&["GET", "ones"]),
        same(&["BITPOS", "ones", "0"]),
        same(&["BITPOS", "ones", "0", "0", "-1"]),
        same(&["BITPOS", "ones", "0", "1"]),
        same(&["BITPOS", "ones", "0", "3", "-1", "BIT"]),
        same(&["BITPOS", "ones", "1", "3", "-1", "BIT"]),
        same(&["SET", "empty", ""]),
        same(&["BITPOS", "empty", "0"]),
        same(&["BITPOS", "empty", "1"]),
        // BITOP.
        same(&["SET", "b1", "foobar"]),
        same(&["SET", "b2", "abcdef"]),
        same(&["SET", "short", "ab"]),
        same(&["BITOP", "AND", "dest", "b1", "b2"]),
        same(&["GET", "dest"]),
        same(&["BITOP", "or", "dest", "b1", "b2", "nothing"]),
        same(&["GET", "dest"]),
        same(&["BITOP", "XOR", "dest", "b1", "short"]),
        same(&["GET", "dest"]),
        same(&["BITOP", "NOT", "dest", "b1"]),
        same(&["GET", "dest"]),
        same(&["BITOP", "NOT", "dest", "b1", "b2"]),
        same(&["BITOP", "NAND", "dest", "b1"]),
        same(&["BITOP", "AND", "dest"]),
        same(&["BITOP", "AND", "dest", "nothing", "nothing2"]),
        same(&["EXISTS", "dest"]),
        same(&["BITOP", "AND", "dest2", "nothing"]),
        same(&["EXISTS", "dest2"]),
        same(&["SET", "dest", "x", "EX", "100"]),
        same(&["BITOP", "OR", "dest", "b1"]),
        same(&["TTL", "dest"]),
        // LCS, with Redis's documented example.
        same(&["SET", "key1", "ohmytext"]),
        same(&["SET", "key2", "mynewtext"]),
        same(&["LCS", "key1", "key2"]),
        same(&["LCS", "key1", "key2", "LEN"]),
        same(&["LCS", "key1", "key2", "IDX"]),
        same(&["LCS", "key1", "key2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"]),
        same(&["LCS", "key1", "key2", "IDX", "WITHMATCHLEN"]),
        same(&["LCS", "key1", "key2", "IDX", "MINMATCHLEN", "-3"]),
        same(&["LCS", "key1", "key2", "IDX", "LEN"]),
        same(&["LCS", "key1", "key2", "FOO"]),
        same(&["LCS", "key1", "key2", "MINMATCHLEN"]),
        same(&["LCS", "key1", "key2", "MINMATCHLEN", "x"]),
        same(&["LCS", "key1", "nothing"]),
        same(&["LCS", "nothing", "nothing", "IDX"]),
        same(&["SET", "ab1", "abcabcabcXYZ"]),
        same(&["SET", "ab2", "XYZabcaXbc"]),
        same(&["LCS", "ab1", "ab2", "IDX", "WITHMATCHLEN"]),
        same(&["LCS", "key1"]),
        // What was there before, unchanged.
        same(&["MSET", "m1", "1", "m2", "2"]),
        same(&["MGET", "m1", "m2", "m3"]),
        same(&["SET", "k", "v", "NX", "GET"]),
        same(&["GETDEL", "k"]),
        same(&["NOSUCHCOMMAND", "x", "y"]),
    ]
}
