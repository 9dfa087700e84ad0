//! meshcache's connection and server commands against redis-server's
//! replies, byte for byte (as tests/redis_parity.rs does for strings):
//! CLIENT LIST/KILL/REPLY's errors and empty answers, COMMAND GETKEYS and
//! GETKEYSANDFLAGS for every command with keys, WAIT, BGSAVE's and SAVE's
//! argument errors, COMMAND INFO of the new commands, INFO's unknown
//! sections and every field's name and section, CONFIG GET with several
//! patterns, ROLE, SLOWLOG's and LATENCY's settings and errors, and MEMORY's arguments. Replies that depend on
//! the server, the moment, ids or addresses are run without comparing.
//! Skipped without redis-server (and failing under CI), as the other
//! parity test.

use crate::common;

use common::redis_ref::{compare, pair, run_only, same, show, Check, RedisServer, RespPeer, Step};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_server_commands_answer_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity-server").await;
    let mut script = script();
    // The new commands as COMMAND INFO describes them, in RESP2 (in RESP3
    // meshcache's COMMAND INFO writes its empty tips, key specs and
    // subcommands as arrays where Redis writes sets; WAIT's and LASTSAVE's
    // tips, which meshcache does not serve, differ in both).
    script.extend([
        same(&["COMMAND", "INFO", "save"]),
        same(&["COMMAND", "INFO", "bgsave"]),
        run_only(&["COMMAND", "INFO", "wait", "lastsave"]),
    ]);
    let n = compare(peer.port, &redis, &script).await;
    assert_eq!(n, script.iter().filter(|s| s.1 == Check::Same).count());
    // The same replies in RESP3 (sets of flags, verbatim strings).
    let mut resp3 = vec![run_only(&["HELLO", "3"])];
    resp3.extend(self::script());
    compare(peer.port, &redis, &resp3).await;
    peer.stop().await;
}

fn script() -> Vec<Step> {
    vec![
        // COMMAND GETKEYS and GETKEYSANDFLAGS, for every command with keys.
        same(&["COMMAND", "GETKEYS", "get", "k"]),
        same(&["COMMAND", "GETKEYS", "Get", "K"]),
        same(&["COMMAND", "GETKEYS", "mget", "a", "b", "c"]),
        same(&["COMMAND", "GETKEYS", "mset", "a", "1", "b", "2"]),
        same(&["COMMAND", "GETKEYS", "mset", "a", "1", "b"]),
        same(&["COMMAND", "GETKEYS", "del", "a", "b"]),
        same(&["COMMAND", "GETKEYS", "lcs", "a", "b", "IDX"]),
        same(&["COMMAND", "GETKEYS", "set", "k", "v", "EX", "10"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "get", "k"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "set", "k", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "set", "k", "v", "NX", "get"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "mset", "a", "1", "b", "2"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "mget", "a", "b"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "del", "a", "b"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "unlink", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "exists", "a", "b"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "touch", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "type", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "expire", "a", "10"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "pexpireat", "a", "10"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "ttl", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "expiretime", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "persist", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "setex", "a", "10", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "setnx", "a", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "getdel", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "getex", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "getset", "a", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "strlen", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "append", "a", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "getrange", "a", "0", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "setrange", "a", "0", "v"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "incrbyfloat", "a", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "decr", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "setbit", "a", "1", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "getbit", "a", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitcount", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "lcs", "a", "b"]),
        // BITFIELD's key is read-only for GETs and OVERFLOW alone, and
        // read-write for a write or anything not understood.
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a", "get", "u8", "0"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a", "OVERFLOW", "sat", "GET", "i5", "#1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a", "get", "u8", "0", "set", "u8", "0", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a", "incrby", "u8", "0", "1"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a", "get", "u8"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield", "a"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "bitfield_ro", "a", "get", "u8", "0"]),
        same(&["COMMAND", "GETKEYS", "nosuch", "k"]),
        same(&["COMMAND", "GETKEYS", "ping", "x"]),
        same(&["COMMAND", "GETKEYS", "client", "list"]),
        same(&["COMMAND", "GETKEYS", "get", "a", "b"]),
        same(&["COMMAND", "GETKEYS", "mset", "a"]),
        same(&["COMMAND", "GETKEYS", "get"]),
        same(&["COMMAND", "GETKEYSANDFLAGS", "get"]),
        same(&["COMMAND", "GETKEYS"]),
        // WAIT: 0 at once; Redis's argument errors.
        same(&["WAIT", "0", "0"]),
        same(&["WAIT", "-1", "5"]),
        same(&["WAIT", "x", "0"]),
        same(&["WAIT", "0", "x"]),
        same(&["WAIT", "0", "1.5"]),
        same(&["WAIT", "0", "-1"]),
        same(&["WAIT", "0"]),
        same(&["WAIT", "0", "0", "0"]),
        // LASTSAVE is a moment; SAVE and BGSAVE save there, not here: only
        // their argument errors are compared.
        run_only(&["LASTSAVE"]),
        same(&["LASTSAVE", "x"]),
        same(&["SAVE", "x"]),
        same(&["BGSAVE", "x"]),
        same(&["BGSAVE", "schedule", "x"]),
        // CLIENT LIST: errors, and lists that are empty on both.
        same(&["CLIENT", "LIST", "TYPE", "foo"]),
        same(&["CLIENT", "LIST", "TYPE", "pubsub"]),
        same(&["CLIENT", "LIST", "TYPE", "master"]),
        same(&["CLIENT", "LIST", "TYPE", "replica"]),
        same(&["CLIENT", "LIST", "ID", "99999"]),
        same(&["CLIENT", "LIST", "ID", "0", "-5"]),
        same(&["CLIENT", "LIST", "ID", "abc"]),
        same(&["CLIENT", "LIST", "ID"]),
        same(&["CLIENT", "LIST", "TYPE"]),
        same(&["CLIENT", "LIST", "foo"]),
        same(&["CLIENT", "LIST", "TYPE", "normal", "ID", "1"]),
        run_only(&["CLIENT", "LIST"]),
        run_only(&["CLIENT", "LIST", "TYPE", "normal"]),
        // CLIENT KILL: errors, and filters that match nobody.
        same(&["CLIENT", "KILL"]),
        same(&["CLIENT", "KILL", "1.2.3.4:5"]),
        same(&["CLIENT", "KILL", "ID"]),
        same(&["CLIENT", "KILL", "ID", "abc"]),
        same(&["CLIENT", "KILL", "ID", "0"]),
        same(&["CLIENT", "KILL", "ID", "-1"]),
        same(&["CLIENT", "KILL", "ID", "99999"]),
        same(&["CLIENT", "KILL", "ID", "1", "ADDR"]),
        same(&["CLIENT", "KILL", "SKIPME", "maybe"]),
        same(&["CLIENT", "KILL", "FOO", "bar"]),
        same(&["CLIENT", "KILL", "TYPE", "foo"]),
        same(&["CLIENT", "KILL", "TYPE", "master"]),
        same(&["CLIENT", "KILL", "USER", "nobody"]),
        same(&["CLIENT", "KILL", "LADDR", "1.2.3.4:5"]),
        same(&["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "ID", "3"]),
        // CLIENT REPLY's errors (what it suppresses is in tests/resp_server.rs).
        same(&["CLIENT", "REPLY"]),
        same(&["CLIENT", "REPLY", "foo"]),
        same(&["CLIENT", "REPLY", "on", "x"]),
        same(&["CLIENT", "REPLY", "ON"]),
        // INFO: unknown sections give an empty reply.
        same(&["INFO", "nosuch"]),
        same(&["INFO", "nosuch", "other"]),
        run_only(&["INFO", "server", "clients"]),
        // CONFIG GET with several patterns, where at most one matches (the
        // order of several matches is Redis's hash order: see below).
        same(&["CONFIG", "GET", "maxmemory", "nosuch"]),
        same(&["CONFIG", "GET", "maxmemory", "maxmemory"]),
        same(&["CONFIG", "GET", "nosuch", "other*"]),
        same(&["CONFIG", "GET"]),
        // ROLE, and SLOWLOG's settings, help and errors (what it logs is
        // checked in tests/resp.rs).
        same(&["ROLE"]),
        same(&["SLOWLOG"]),
        same(&["SLOWLOG", "HELP"]),
        same(&["SLOWLOG", "help", "x"]),
        same(&["SLOWLOG", "foo"]),
        same(&["SLOWLOG", "foo", "bar"]),
        same(&["SLOWLOG", "LEN", "x"]),
        same(&["SLOWLOG", "Reset", "x"]),
        same(&["SLOWLOG", "GET", "x"]),
        same(&["SLOWLOG", "GET", "-2"]),
        same(&["SLOWLOG", "GET", "99999999999999999999"]),
        same(&["SLOWLOG", "get", "1", "2"]),
        same(&["SLOWLOG", "RESET"]),
        run_only(&["SLOWLOG", "LEN"]),
        same(&["CONFIG", "GET", "slowlog-log-slower-than"]),
        same(&["CONFIG", "GET", "slowlog-max-len"]),
        same(&["CONFIG", "SET", "slowlog-log-slower-than", "abc"]),
        same(&["CONFIG", "SET", "slowlog-log-slower-than", "-5"]),
        same(&["CONFIG", "SET", "slowlog-max-len", "-1"]),
        same(&["CONFIG", "SET", "slowlog-max-len", "64", "slowlog-log-slower-than", "-1"]),
        same(&["CONFIG", "GET", "slowlog-max-len"]),
        same(&["CONFIG", "GET", "slowlog-log-slower-than"]),
        same(&["CONFIG", "SET", "slowlog-max-len", "128", "slowlog-log-slower-than", "10000"]),
        // LATENCY's help, errors and empty answers (what it records is
        // checked in tests/resp.rs), and its threshold's setting.
        same(&["LATENCY"]),
        same(&["LATENCY", "HELP"]),
        same(&["LATENCY", "help", "x"]),
        same(&["LATENCY", "foo"]),
        same(&["LATENCY", "LATEST", "x"]),
        same(&["LATENCY", "Doctor", "x"]),
        same(&["LATENCY", "HISTORY"]),
        same(&["LATENCY", "GRAPH"]),
        same(&["LATENCY", "GRAPH", "command", "x"]),
        same(&["LATENCY", "RESET"]),
        same(&["LATENCY", "LATEST"]),
        same(&["LATENCY", "HISTORY", "command"]),
        same(&["LATENCY", "HISTORY", "nosuch"]),
        same(&["LATENCY", "GRAPH", "command"]),
        same(&["LATENCY", "RESET", "command", "nosuch"]),
        same(&["LATENCY", "HISTOGRAM", "nosuch"]),
        same(&["CONFIG", "GET", "latency-monitor-threshold"]),
        same(&["CONFIG", "SET", "latency-monitor-threshold", "abc"]),
        same(&["CONFIG", "SET", "latency-monitor-threshold", "-1"]),
        // Redis's report names Redis.
        run_only(&["LATENCY", "DOCTOR"]),
        // MEMORY's arguments and errors (what USAGE counts is checked in
        // tests/resp.rs: Redis estimates otherwise).
        same(&["MEMORY"]),
        same(&["MEMORY", "foo"]),
        same(&["MEMORY", "USAGE"]),
        same(&["MEMORY", "USAGE", "nosuchkey"]),
        same(&["MEMORY", "usage", "nosuchkey", "SAMPLES", "3"]),
        same(&["MEMORY", "USAGE", "nosuchkey", "SAMPLES", "x"]),
        same(&["MEMORY", "USAGE", "nosuchkey", "samples", "-1"]),
        same(&["MEMORY", "USAGE", "nosuchkey", "SAMPLES"]),
        same(&["MEMORY", "USAGE", "nosuchkey", "foo", "1"]),
        same(&["MEMORY", "PURGE"]),
        same(&["MEMORY", "PURGE", "x"]),
        same(&["MEMORY", "HELP", "x"]),
        // Redis's help lists the subcommands meshcache leaves out.
        run_only(&["MEMORY", "HELP"]),
    ]
}

/// The name-value pairs of a CONFIG GET reply (a flat RESP2 array or a
/// RESP3 map of bulk strings), sorted.
fn pairs(reply: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(reply);
    let mut lines = text.split("\r\n");
    let head = lines.next().unwrap();
    let n: usize = head[1..].parse().unwrap();
    let count = if head.starts_with('%') { 2 * n } else { n };
    let values: Vec<String> = (0..count)
        .map(|_| {
            let len = lines.next().unwrap();
            assert!(len.starts_with('$'), "a bulk string: {text}");
            lines.next().unwrap().to_string()
        })
        .collect();
    let mut pairs: Vec<(String, String)> = values.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
    pairs.sort();
    pairs
}

/// CONFIG GET with several patterns matching several parameters: the same
/// pairs from both, each once. The order is not compared: Redis writes
/// them in the order of a hash table whose seed is random at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_get_with_several_patterns_answers_as_redis_does() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity-config").await;
    let (mut ours, mut theirs) = pair(peer.port, &redis).await;
    // The same values on both first, where their defaults differ.
    let setup: [&[&[u8]]; 2] = [
        &[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru", b"notify-keyspace-events", b"KEA"],
        &[b"CONFIG", b"SET", b"maxmemory", b"0", b"maxmemory-samples", b"7"],
    ];
    for args in setup {
        assert_eq!(ours.cmd(args).await, b"+OK\r\n", "{}", show(args));
        assert_eq!(theirs.cmd(args).await, b"+OK\r\n", "{}", show(args));
    }
    let gets: [&[&[u8]]; 4] = [
        &[b"CONFIG", b"GET", b"maxmemory", b"maxmemory-policy", b"maxmemory-samples"],
        &[b"CONFIG", b"GET", b"maxmemory-p*", b"notify-keyspace-events", b"maxmemory"],
        &[b"CONFIG", b"GET", b"MAXMEMORY-P*", b"appendonly", b"nosuch", b"timeout"],
        &[b"CONFIG", b"GET", b"maxmemory-policy", b"save", b"maxmemory-samples", b"maxmemory-s*"],
    ];
    for resp3 in [false, true] {
        if resp3 {
            for c in [&mut ours, &mut theirs] {
                c.resp3 = true;
                c.cmd(&[b"HELLO", b"3"]).await;
            }
        }
        for args in gets {
            let (a, b) = (pairs(&ours.cmd(args).await), pairs(&theirs.cmd(args).await));
            assert!(a.len() >= 3, "{a:?}");
            assert_eq!(a, b, "meshcache (left) and redis-server (right) differ on `{}`", show(args));
        }
    }
    peer.stop().await;
}

/// INFO's text as (section, field) pairs, with each field's value.
fn info_fields(reply: &[u8]) -> Vec<(String, String, String)> {
    let text = String::from_utf8_lossy(reply);
    let mut section = String::new();
    let mut fields = Vec::new();
    // The first line is the bulk string's length.
    for line in text.split("\r\n").skip(1) {
        if let Some(name) = line.strip_prefix("# ") {
            section = name.to_string();
        } else if let Some((field, value)) = line.split_once(':') {
            fields.push((section.clone(), field.to_string(), value.to_string()));
        }
    }
    fields
}

/// What monitoring agents read from INFO is where Redis puts it and named
/// as Redis names it: every section meshcache writes but its own, and every
/// field in them but meshcache's additions, is in redis-server's `INFO
/// everything` too, under the same section. The keyspace line has Redis's
/// fields in Redis's order (7.4 adds `subexpiry`, which this redis-server
/// predates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_sections_and_fields_are_named_as_redis_names_them() {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start("parity-info").await;
    let (mut ours, mut theirs) = pair(peer.port, &redis).await;
    for c in [&mut ours, &mut theirs] {
        assert_eq!(c.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"SET", b"a", b"1", b"EX", b"100"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"SET", b"b", b"1"]).await, b"+OK\r\n");
        // An error, so that errorstats has a line on both.
        c.cmd(&[b"EXEC"]).await;
    }
    let ours = info_fields(&ours.cmd(&[b"INFO", b"everything"]).await);
    let theirs = info_fields(&theirs.cmd(&[b"INFO", b"everything"]).await);
    // meshcache's own fields in Redis's sections, each for a reason README
    // ("INFO") gives.
    let own = [
        "server_name",
        "meshcache_version",
        "mem_values_limit",
        "protocol_errors",
        "keyspace_notifications_delivered",
        "tracking_keys_invalidated_early",
        // Redis 7.2's, which this redis-server predates.
        "client_output_buffer_limit_disconnections",
    ];
    let mut checked = 0;
    let mut unlike = Vec::new();
    for (section, field, _) in ours.iter().filter(|(s, ..)| s != "Meshcache") {
        if own.contains(&field.as_str()) || section == "Keyspace" {
            continue;
        }
        // Per-command lines: redis-server lists the commands it ran.
        let any_line = section == "Commandstats";
        if !theirs.iter().any(|(s, f, _)| s == section && (f == field || any_line)) {
            unlike.push(format!("{section}/{field}"));
        }
        checked += 1;
    }
    assert_eq!(unlike, Vec::<String>::new(), "fields meshcache writes where redis-server has none");
    assert!(checked >= 50, "only {checked} fields compared");
    let sections = |f: &[(String, String, String)]| {
        let mut v: Vec<String> = f.iter().map(|(s, ..)| s.clone()).collect();
        v.dedup();
        v
    };
    let redis_order = sections(&theirs);
    let our_order: Vec<String> = sections(&ours).into_iter().filter(|s| s != "Meshcache").collect();
    let in_redis_order: Vec<String> = redis_order.iter().filter(|s| our_order.contains(s)).cloned().collect();
    assert_eq!(our_order, in_redis_order, "sections with fields, in Redis's order");
    let keyspace = |f: &[(String, String, String)]| -> Vec<String> {
        let (_, _, line) = f.iter().find(|(s, field, _)| s == "Keyspace" && field == "db0").unwrap();
        line.split(',').map(|kv| kv.split_once('=').unwrap().0.to_string()).collect()
    };
    let mut redis_keyspace = keyspace(&theirs);
    if redis_keyspace.len() == 3 {
        redis_keyspace.push("subexpiry".into());
    }
    assert_eq!(keyspace(&ours), redis_keyspace);
    peer.stop().await;
}
