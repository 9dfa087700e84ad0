//! The Redis front door's connection and server commands, end to end on
//! loopback: CLIENT LIST, KILL and REPLY, INFO's sections and command
//! statistics, COMMAND GETKEYS, WAIT, LASTSAVE, SAVE, BGSAVE and CONFIG
//! GET, through raw sockets (exact wire bytes, and seeing a connection
//! close) and the `redis` crate. Every wait is bounded by a deadline;
//! nothing asserts on timing.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use meshcache::resp::RespConfig;
use meshcache::transport::certs::EphemeralCa;
use meshcache::Mesh;
use redis::Value;

use common::mesh::start;
use common::redis_ref::{Raw, Server};
use common::wait::eventually_async;

/// One peer, alone, with a RESP server in front of it.
async fn solo() -> (Mesh, Server) {
    let ca = EphemeralCa::new().unwrap();
    let mesh = start(&ca, "solo", &[]).await;
    let server = Server::start(&mesh, RespConfig::default()).await;
    (mesh, server)
}

/// The id the server gave this connection.
async fn client_id(raw: &mut Raw) -> u64 {
    let r = raw.cmd(&["CLIENT", "ID"]).await;
    r.trim_start_matches(':').trim_end().parse().unwrap()
}

fn multibulk(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    req.into_bytes()
}

/// The text of a bulk-string reply (`$n\r\n...\r\n`).
fn bulk_text(reply: &str) -> &str {
    let body = reply.split_once("\r\n").expect("a bulk string").1;
    body.strip_suffix("\r\n").expect("a bulk string")
}

/// The ids of the clients in a CLIENT LIST reply, in order.
fn listed_ids(reply: &str) -> Vec<u64> {
    bulk_text(reply)
        .lines()
        .map(|l| l.strip_prefix("id=").unwrap().split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// A client line without its `age=` field (which a second can change).
fn without_age(line: &str) -> String {
    line.split(' ').filter(|f| !f.starts_with("age=")).collect::<Vec<_>>().join(" ")
}

/// The line of client `id` in a CLIENT LIST reply.
fn line_of(reply: &str, id: u64) -> String {
    let prefix = format!("id={id} ");
    bulk_text(reply).lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {id} in {reply}")).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_every_connection_and_filters_them() {
    let (mesh, server) = solo().await;
    let mut a = Raw::connect(server.port).await;
    let mut b = Raw::connect(server.port).await;
    let mut c = Raw::connect(server.port).await;
    let (ida, idb, idc) = (client_id(&mut a).await, client_id(&mut b).await, client_id(&mut c).await);
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "raw"]).await, "+OK\r\n");
    assert!(b.cmd(&["SUBSCRIBE", "news"]).await.starts_with("*3\r\n$9\r\nsubscribe\r\n"));
    assert_eq!(c.cmd(&["PING"]).await, "+PONG\r\n");

    let all = a.cmd(&["CLIENT", "LIST"]).await;
    assert_eq!(listed_ids(&all), [ida, idb, idc], "{all}");
    let la = line_of(&all, ida);
    for field in [
        format!("addr={} ", a.addr()),
        format!("laddr=127.0.0.1:{} ", server.port),
        "name=alpha ".into(),
        "flags=N ".into(),
        "cmd=client|list ".into(),
        "lib-name=raw ".into(),
        "resp=2".into(),
    ] {
        assert!(la.contains(&field), "{field} missing from {la}");
    }
    let lb = line_of(&all, idb);
    assert!(lb.contains(" flags=P ") && lb.contains(" sub=1 psub=0 ") && lb.contains(" cmd=subscribe "), "{lb}");
    assert!(line_of(&all, idc).contains("cmd=ping "), "{all}");
    // CLIENT INFO is the caller's line, in the same layout.
    let info = a.cmd(&["CLIENT", "INFO"]).await;
    assert_eq!(
        without_age(&bulk_text(&info).replace("cmd=client|info", "cmd=client|list")),
        without_age(&format!("{la}\n"))
    );

    // Filters.
    assert_eq!(listed_ids(&a.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]).await), [idb]);
    assert_eq!(listed_ids(&a.cmd(&["CLIENT", "LIST", "type", "NORMAL"]).await), [ida, idc]);
    assert_eq!(a.cmd(&["CLIENT", "LIST", "TYPE", "replica"]).await, "$0\r\n\r\n");
    let (sb, sa) = (idb.to_string(), ida.to_string());
    assert_eq!(listed_ids(&a.cmd(&["CLIENT", "LIST", "ID", &sb, "99999", &sa, &sb]).await), [idb, ida, idb]);
    assert_eq!(a.cmd(&["CLIENT", "LIST", "ID", "99999"]).await, "$0\r\n\r\n");
    assert_eq!(a.cmd(&["CLIENT", "LIST", "ID", "1", "x"]).await, "-ERR Invalid client ID\r\n");
    assert_eq!(a.cmd(&["CLIENT", "LIST", "TYPE", "foo"]).await, "-ERR Unknown client type 'foo'\r\n");
    for bad in
        [&["CLIENT", "LIST", "ID"][..], &["CLIENT", "LIST", "TYPE"], &["CLIENT", "LIST", "TYPE", "normal", "ID", "1"]]
    {
        assert_eq!(a.cmd(bad).await, "-ERR syntax error\r\n", "{bad:?}");
    }

    // A connection that ends leaves the list.
    assert_eq!(c.cmd(&["QUIT"]).await, "+OK\r\n");
    c.read_to_close().await;
    eventually_async("the closed client leaves CLIENT LIST", || async {
        listed_ids(&Raw::connect(server.port).await.cmd(&["CLIENT", "LIST", "ID", &idc.to_string()]).await).is_empty()
    })
    .await;
    // Probe connections end too: only a and b remain, with this probe.
    let port = server.port;
    eventually_async("only a, b and the probe remain", || async move {
        let mut probe = Raw::connect(port).await;
        let me = client_id(&mut probe).await;
        listed_ids(&probe.cmd(&["CLIENT", "LIST"]).await) == [ida, idb, me]
    })
    .await;
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_closes_the_connections_it_names() {
    let (mesh, server) = solo().await;
    let mut a = Raw::connect(server.port).await;
    let mut b = Raw::connect(server.port).await;
    let mut c = Raw::connect(server.port).await;
    let mut d = Raw::connect(server.port).await;
    let (ida, idb, idc, idd) =
        (client_id(&mut a).await, client_id(&mut b).await, client_id(&mut c).await, client_id(&mut d).await);
    // b is subscribed: a killed client is closed even while it waits for
    // messages.
    assert!(b.cmd(&["SUBSCRIBE", "news"]).await.starts_with("*3\r\n"));

    // By id: counted, closed, and gone from the list at once.
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &idb.to_string()]).await, ":1\r\n");
    assert_eq!(b.read_to_close().await, "");
    assert_eq!(listed_ids(&a.cmd(&["CLIENT", "LIST"]).await), [ida, idc, idd]);
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &idb.to_string()]).await, ":0\r\n");

    // The old form, by address: OK, or an error when no client has it.
    assert_eq!(a.cmd(&["CLIENT", "KILL", &c.addr()]).await, "+OK\r\n");
    assert_eq!(c.read_to_close().await, "");
    assert_eq!(a.cmd(&["CLIENT", "KILL", &c.addr()]).await, "-ERR No such client\r\n");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "1.2.3.4:5"]).await, "-ERR No such client\r\n");

    // Filters that match nobody, and bad ones.
    let port = server.port.to_string();
    for (args, want) in [
        (&["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "ID", "1"][..], ":0\r\n"),
        (&["CLIENT", "KILL", "LADDR", "127.0.0.1:1", "SKIPME", "no"], ":0\r\n"),
        (&["CLIENT", "KILL", "TYPE", "master"], ":0\r\n"),
        (&["CLIENT", "KILL", "TYPE", "pubsub"], ":0\r\n"),
        (&["CLIENT", "KILL", "ID", "0"], "-ERR client-id should be greater than 0\r\n"),
        (&["CLIENT", "KILL", "ID", "x"], "-ERR client-id should be greater than 0\r\n"),
        (&["CLIENT", "KILL", "ID", "1", "ADDR"], "-ERR syntax error\r\n"),
        (&["CLIENT", "KILL", "SKIPME", "maybe"], "-ERR syntax error\r\n"),
        (&["CLIENT", "KILL", "FOO", "bar"], "-ERR syntax error\r\n"),
        (&["CLIENT", "KILL", "TYPE", "foo"], "-ERR Unknown client type 'foo'\r\n"),
        (&["CLIENT", "KILL", "USER", "nobody"], "-ERR No such user 'nobody'\r\n"),
        (&["CLIENT", "KILL"], "-ERR wrong number of arguments for 'client|kill' command\r\n"),
    ] {
        assert_eq!(a.cmd(args).await, want, "{args:?}");
    }
    assert_eq!(listed_ids(&a.cmd(&["CLIENT", "LIST"]).await), [ida, idd]);

    // The caller is skipped unless SKIPME no; then it gets its reply and is
    // closed after it.
    let laddr = format!("127.0.0.1:{port}");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ID", &ida.to_string()]).await, ":0\r\n");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "LADDR", &laddr, "USER", "default", "TYPE", "normal"]).await, ":1\r\n");
    assert_eq!(d.read_to_close().await, "", "d matched every filter");
    assert_eq!(a.cmd(&["PING"]).await, "+PONG\r\n", "the caller was skipped");
    assert_eq!(a.cmd(&["CLIENT", "KILL", "ADDR", &a.addr(), "SKIPME", "no"]).await, ":1\r\n");
    assert_eq!(a.read_to_close().await, "");

    // Killed clients are not output-limit closes, and they are no longer
    // counted as connected.
    let mut con = server.conn().await;
    eventually_async("connected_clients is 1", || async {
        let i: String = redis::cmd("INFO").arg("clients").query_async(&mut con.clone()).await.unwrap();
        i.contains("connected_clients:1\r")
    })
    .await;
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut con).await.unwrap();
    assert!(stats.contains("client_output_buffer_limit_disconnections:0\r"), "{stats}");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_and_skip_drop_replies_but_run_the_commands() {
    let (mesh, server) = solo().await;
    let mut a = Raw::connect(server.port).await;
    assert_eq!(a.cmd(&["CLIENT", "REPLY", "ON"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["CLIENT", "REPLY", "foo"]).await, "-ERR syntax error\r\n");
    assert_eq!(a.cmd(&["CLIENT", "REPLY"]).await, "-ERR wrong number of arguments for 'client|reply' command\r\n");

    // OFF: nothing comes back, errors and a big (chunked) value included,
    // until ON, whose OK is the first byte that arrives.
    let big = "x".repeat(100_000);
    assert_eq!(a.cmd(&["SET", "big", &big]).await, "+OK\r\n");
    let mut batch = Vec::new();
    for args in [
        &["CLIENT", "REPLY", "OFF"][..],
        &["INCR", "k"],
        &["INCR", "k"],
        &["GET", "big"],
        &["NOSUCHCOMMAND"],
        &["INCR", "big"],
        &["CLIENT", "REPLY", "SKIP"],
        &["INCR", "k"],
    ] {
        batch.extend(multibulk(args));
    }
    a.send(&batch).await;
    // Sent apart, so that a reply of the first batch could not hide in
    // the same write as ON's; none of them would read as ON's OK.
    assert_eq!(a.cmd(&["CLIENT", "REPLY", "ON"]).await, "+OK\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\n3\r\n", "the silent commands ran");

    // SKIP: only the next command's reply is dropped.
    let mut batch = multibulk(&["CLIENT", "REPLY", "SKIP"]);
    batch.extend(multibulk(&["INCR", "k"]));
    batch.extend(multibulk(&["INCR", "k"]));
    a.send(&batch).await;
    assert_eq!(a.reply().await.unwrap(), ":5\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\n5\r\n");

    // RESET turns replies back on.
    let mut batch = multibulk(&["CLIENT", "REPLY", "OFF"]);
    batch.extend(multibulk(&["INCR", "k"]));
    a.send(&batch).await;
    assert_eq!(a.cmd(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(a.cmd(&["GET", "k"]).await, "$1\r\n6\r\n");

    // Nothing was left unread: the next reply is the next command's.
    assert_eq!(a.cmd(&["PING"]).await, "+PONG\r\n");
    assert!(a.buf.is_empty());
    server.stop().await;
    mesh.shutdown().await;
}

/// `cmdstat_<name>` counters from an INFO commandstats text: calls,
/// rejected_calls, failed_calls (0s for a command not listed).
fn cmdstat(info: &str, name: &str) -> (u64, u64, u64) {
    let prefix = format!("cmdstat_{name}:");
    let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else { return (0, 0, 0) };
    let field = |f: &str| -> u64 {
        let v = line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{f}="))).unwrap();
        v.parse().unwrap()
    };
    assert!(line.contains(",usec=") && line.contains(",usec_per_call="), "{line}");
    (field("calls"), field("rejected_calls"), field("failed_calls"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_sections_and_command_statistics() {
    let (mesh, server) = solo().await;
    let mut con = server.conn().await;
    let info = async |con: &mut redis::aio::MultiplexedConnection, args: &[&str]| -> String {
        redis::cmd("INFO").arg(args).query_async(con).await.unwrap()
    };
    // Several sections at once, in Redis's order whatever the order asked.
    let two = info(&mut con, &["clients", "SERVER", "clients"]).await;
    assert!(two.starts_with("# Server\r\n"), "{two}");
    assert_eq!(two.matches("# Clients\r\n").count(), 1, "{two}");
    assert!(!two.contains("# Memory"), "{two}");
    assert_eq!(info(&mut con, &["nosuch"]).await, "");
    assert_eq!(info(&mut con, &["nosuch", "other"]).await, "");

    // Commandstats is in all and everything, not in the default.
    for args in [&[][..], &["default"]] {
        let i = info(&mut con, args).await;
        assert!(i.contains("# Keyspace") && i.contains("# Meshcache"), "{i}");
        assert!(!i.contains("# Commandstats"), "{i}");
    }
    for args in [&["all"][..], &["everything"], &["default", "commandstats"]] {
        let i = info(&mut con, args).await;
        assert!(i.contains("# Server") && i.contains("# Commandstats\r\ncmdstat_"), "{args:?}: {i}");
    }
    let repl = info(&mut con, &["replication"]).await;
    assert_eq!(repl, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n");
    let mesh_section = info(&mut con, &["mesh"]).await;
    assert!(mesh_section.starts_with("# Meshcache\r\nname:solo\r\n"), "{mesh_section}");
    for field in ["connected:0\r", "ae_rounds:", "push_batches_sent:"] {
        assert!(mesh_section.contains(field), "{field} missing from {mesh_section}");
    }

    // The counts move: calls, calls refused before running, calls that
    // answered an error.
    let before = info(&mut con, &["commandstats"]).await;
    let (get0, _, _) = cmdstat(&before, "get");
    let (incr0, incr_rejected0, incr_failed0) = cmdstat(&before, "incr");
    let mut raw = Raw::connect(server.port).await;
    assert_eq!(raw.cmd(&["GET", "nothing"]).await, "$-1\r\n");
    assert_eq!(raw.cmd(&["GET", "nothing"]).await, "$-1\r\n");
    assert_eq!(raw.cmd(&["SET", "s", "abc"]).await, "+OK\r\n");
    assert_eq!(raw.cmd(&["INCR", "s"]).await, "-ERR value is not an integer or out of range\r\n");
    assert_eq!(raw.cmd(&["INCR"]).await, "-ERR wrong number of arguments for 'incr' command\r\n");
    assert_eq!(raw.cmd(&["INCR", "n"]).await, ":1\r\n");
    let after = info(&mut con, &["commandstats"]).await;
    assert_eq!(cmdstat(&after, "get").0, get0 + 2, "{after}");
    assert_eq!(cmdstat(&after, "incr"), (incr0 + 2, incr_rejected0 + 1, incr_failed0 + 1), "{after}");
    // INFO counts itself once it has run, as Redis does.
    assert!(cmdstat(&after, "info").0 >= 1, "{after}");
    server.stop().await;
    mesh.shutdown().await;
}

/// A field of an INFO text.
fn info_field(info: &str, field: &str) -> String {
    let prefix = format!("{field}:");
    let line = info.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {field} in {info}"));
    line[prefix.len()..].to_string()
}

fn info_num(info: &str, field: &str) -> f64 {
    info_field(info, field).parse().unwrap_or_else(|e| panic!("{field}: {e} in {info}"))
}

/// What monitoring agents read from INFO moves with what clients do: the
/// keyspace line with its keys that expire and their average TTL (parsed
/// as exporters parse it), bytes in and out, commands per second, error
/// replies by code, CPU time, the memory peak; CONFIG RESETSTAT zeroes
/// the counters; an exporter's scrape is answered without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_what_monitoring_agents_read() {
    let (mesh, server) = solo().await;
    let mut a = Raw::connect(server.port).await;
    let mut info = async |args: &[&str]| -> String {
        let mut cmd = vec!["INFO"];
        cmd.extend(args);
        let reply = a.cmd(&cmd).await;
        assert!(reply.starts_with('$'), "{reply}");
        reply
    };
    let headers: Vec<String> = info(&[]).await.lines().filter(|l| l.starts_with("# ")).map(String::from).collect();
    assert_eq!(
        headers,
        [
            "# Server",
            "# Clients",
            "# Memory",
            "# Persistence",
            "# Stats",
            "# Replication",
            "# CPU",
            "# Modules",
            "# Errorstats",
            "# Cluster",
            "# Keyspace",
            "# Meshcache"
        ]
    );

    // The keyspace line, as an exporter splits it: keys, keys that expire,
    // their average TTL in ms, hash fields that expire.
    let mut b = Raw::connect(server.port).await;
    assert_eq!(b.cmd(&["SET", "a", "1", "EX", "100"]).await, "+OK\r\n");
    assert_eq!(b.cmd(&["SET", "b", "1", "PX", "50000"]).await, "+OK\r\n");
    assert_eq!(b.cmd(&["SET", "c", "1"]).await, "+OK\r\n");
    let keyspace = |info: &str| -> Vec<(String, u64)> {
        let line = info_field(info, "db0");
        line.split(',')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    };
    let k = keyspace(&info(&["keyspace"]).await);
    let names: Vec<&str> = k.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["keys", "expires", "avg_ttl", "subexpiry"]);
    assert_eq!((k[0].1, k[1].1, k[3].1), (3, 2, 0), "{k:?}");
    // The mean of about 100 s and 50 s left, less the time the test took.
    assert!(k[2].1 > 60_000 && k[2].1 <= 75_000, "avg_ttl {}", k[2].1);
    assert_eq!(b.cmd(&["PERSIST", "a"]).await, ":1\r\n");
    let k = keyspace(&info(&["keyspace"]).await);
    assert_eq!((k[0].1, k[1].1), (3, 1), "{k:?}");
    assert!(k[2].1 > 40_000 && k[2].1 <= 50_000, "avg_ttl {}", k[2].1);

    // Bytes in are counted as they are read; bytes out once written.
    let stats = info(&["stats"]).await;
    let (in0, out0) = (info_num(&stats, "total_net_input_bytes"), info_num(&stats, "total_net_output_bytes"));
    let big = "x".repeat(10_000);
    assert_eq!(b.cmd(&["SET", "big", &big]).await, "+OK\r\n");
    assert_eq!(b.cmd(&["GET", "big"]).await, format!("$10000\r\n{big}\r\n"));
    let stats = info(&["stats"]).await;
    assert!(info_num(&stats, "total_net_input_bytes") >= in0 + 10_000.0, "{stats}");
    let deadline = tokio::time::Instant::now() + common::wait::DEADLINE;
    while info_num(&info(&["stats"]).await, "total_net_output_bytes") < out0 + 10_000.0 {
        assert!(tokio::time::Instant::now() < deadline, "the GET's reply was never counted out");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Commands per second: PINGs until a sample sees them.
    let pings: Vec<&str> = vec!["PING"; 200];
    let deadline = tokio::time::Instant::now() + common::wait::DEADLINE;
    loop {
        for p in &pings {
            b.send(format!("*1\r\n${}\r\n{p}\r\n", p.len()).as_bytes()).await;
        }
        for _ in &pings {
            assert_eq!(b.reply().await.unwrap(), "+PONG\r\n");
        }
        let stats = info(&["stats"]).await;
        if info_num(&stats, "instantaneous_ops_per_sec") > 0.0 && info_num(&stats, "instantaneous_input_kbps") > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sample saw the PINGs: {stats}");
    }

    // Error replies by code.
    assert!(b.cmd(&["NOSUCH"]).await.starts_with("-ERR unknown command"));
    assert_eq!(b.cmd(&["MULTI"]).await, "+OK\r\n");
    assert!(b.cmd(&["GET"]).await.starts_with("-ERR wrong number"));
    assert!(b.cmd(&["EXEC"]).await.starts_with("-EXECABORT"));
    let errors = info(&["errorstats"]).await;
    assert!(errors.contains("errorstat_ERR:count=2\r\n"), "{errors}");
    assert!(errors.contains("errorstat_EXECABORT:count=1\r\n"), "{errors}");

    // CPU time and memory.
    let cpu = info(&["cpu"]).await;
    assert!(info_num(&cpu, "used_cpu_user") + info_num(&cpu, "used_cpu_sys") > 0.0, "{cpu}");
    let memory = info(&["memory"]).await;
    assert!(info_num(&memory, "used_memory_peak") >= info_num(&memory, "used_memory"), "{memory}");
    assert!(info_num(&memory, "total_system_memory") > 0.0, "{memory}");
    info_num(&memory, "mem_fragmentation_ratio");
    let server_section = info(&["server"]).await;
    let run_id = info_field(&server_section, "run_id");
    assert!(run_id.len() == 40 && run_id.bytes().all(|c| c.is_ascii_hexdigit()), "{run_id}");
    assert_eq!(info(&["persistence"]).await.lines().find(|l| l.starts_with("loading:")), Some("loading:0"));
    assert_eq!(info(&["cluster"]).await.lines().nth(2), Some("cluster_enabled:0"));

    // RESETSTAT: counters, commandstats and errorstats start again.
    let before = info(&["stats"]).await;
    assert!(info_num(&before, "total_commands_processed") > 200.0, "{before}");
    assert_eq!(b.cmd(&["CONFIG", "RESETSTAT"]).await, "+OK\r\n");
    let after = info(&["stats"]).await;
    assert!(info_num(&after, "total_commands_processed") <= 2.0, "{after}");
    assert!(info_num(&after, "total_net_input_bytes") < 1000.0, "{after}");
    assert_eq!(info_num(&after, "total_error_replies"), 0.0, "{after}");
    let all = info(&["errorstats", "commandstats"]).await;
    assert!(!all.contains("errorstat_") && !all.contains("cmdstat_get:"), "{all}");

    // What Prometheus's redis_exporter sends each scrape, by default: no
    // command of it is refused, so scraping counts no error.
    for cmd in [
        &["CONFIG", "GET", "*"][..],
        &["INFO", "ALL"],
        &["LATENCY", "LATEST"],
        &["LATENCY", "HISTOGRAM"],
        &["SLOWLOG", "LEN"],
        &["SLOWLOG", "GET", "1"],
        &["SLOWLOG", "GET", "10"],
    ] {
        let reply = b.cmd(cmd).await;
        assert!(!reply.starts_with('-'), "{cmd:?}: {reply}");
    }
    let stats = info(&["stats", "errorstats"]).await;
    assert_eq!(info_num(&stats, "total_error_replies"), 0.0, "{stats}");
    assert!(!stats.contains("errorstat_"), "{stats}");
    server.stop().await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_getkeys_and_the_commands_that_answer_at_once() {
    let (mesh, server) = solo().await;
    let mut a = Raw::connect(server.port).await;
    for (args, want) in [
        (&["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"][..], "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
        (&["COMMAND", "GETKEYS", "lcs", "x", "y"], "*2\r\n$1\r\nx\r\n$1\r\ny\r\n"),
        (&["COMMAND", "GETKEYS", "get", "k"], "*1\r\n$1\r\nk\r\n"),
        (
            &["COMMAND", "GETKEYSANDFLAGS", "set", "k", "v", "get"],
            "*1\r\n*2\r\n$1\r\nk\r\n*3\r\n+RW\r\n+access\r\n+update\r\n",
        ),
        (&["COMMAND", "GETKEYSANDFLAGS", "set", "k", "v"], "*1\r\n*2\r\n$1\r\nk\r\n*2\r\n+OW\r\n+update\r\n"),
        (&["COMMAND", "GETKEYS", "nosuch", "k"], "-ERR Invalid command specified\r\n"),
        (&["COMMAND", "GETKEYS", "ping", "x"], "-ERR The command has no key arguments\r\n"),
        (&["COMMAND", "GETKEYS", "get", "a", "b"], "-ERR Invalid number of arguments specified for command\r\n"),
        (&["COMMAND", "GETKEYS", "get"], "-ERR wrong number of arguments for 'command|getkeys' command\r\n"),
        (&["WAIT", "0", "0"], ":0\r\n"),
        // No peer acknowledges writes: WAIT answers 0 at once, whatever it
        // is asked to wait for.
        (&["WAIT", "3", "0"], ":0\r\n"),
        (&["WAIT", "x", "0"], "-ERR value is not an integer or out of range\r\n"),
        (&["WAIT", "0", "x"], "-ERR timeout is not an integer or out of range\r\n"),
        (&["WAIT", "0", "-1"], "-ERR timeout is negative\r\n"),
        (&["WAIT", "0"], "-ERR wrong number of arguments for 'wait' command\r\n"),
        (&["SAVE"], "-ERR meshcache does not persist: its data lives in its peers\r\n"),
        (&["BGSAVE"], "-ERR meshcache does not persist: its data lives in its peers\r\n"),
        (&["BGSAVE", "SCHEDULE"], "-ERR meshcache does not persist: its data lives in its peers\r\n"),
        (&["BGSAVE", "now"], "-ERR syntax error\r\n"),
        (&["SAVE", "x"], "-ERR wrong number of arguments for 'save' command\r\n"),
    ] {
        assert_eq!(a.cmd(args).await, want, "{args:?}");
    }
    // LASTSAVE: the server's start, in Unix seconds (between the test's
    // start and now).
    let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (mesh2, server2) = solo().await;
    let t1 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut con = server2.conn().await;
    let last: i64 = redis::cmd("LASTSAVE").query_async(&mut con).await.unwrap();
    assert!((t0 as i64..=t1 as i64).contains(&last), "{t0} <= {last} <= {t1}");

    // CONFIG GET with several patterns: every match, once.
    let v: Value = redis::cmd("CONFIG")
        .arg(&["GET", "maxmemory", "maxmemory-p*", "maxmemory", "nosuch"])
        .query_async(&mut con)
        .await
        .unwrap();
    let mut names: Vec<String> = match v {
        Value::Array(items) => items
            .chunks(2)
            .map(|kv| match &kv[0] {
                Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, _)| redis::from_redis_value(k.clone()).unwrap()).collect(),
        other => panic!("{other:?}"),
    };
    names.sort();
    assert_eq!(names, ["maxmemory", "maxmemory-policy"]);
    server2.stop().await;
    mesh2.shutdown().await;
    server.stop().await;
    mesh.shutdown().await;
}

/// A write's push to the other peers goes out after its reply is written,
/// but never waits on a client that does not read: here the reply sits in
/// front of 8 MiB the client leaves unread, and the write still reaches
/// the other peer by push (anti-entropy is an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_pushed_while_its_client_does_not_read_its_reply() {
    use meshcache::MeshConfig;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    let ca = EphemeralCa::new().unwrap();
    let config =
        |name: &str| MeshConfig { anti_entropy_interval: Duration::from_secs(3600), ..MeshConfig::for_test(name) };
    let a = Mesh::builder().config(config("a")).tls(ca.issue("a").unwrap()).start().await.unwrap();
    let b =
        Mesh::builder().config(config("b")).seeds([a.local_addr()]).tls(ca.issue("b").unwrap()).start().await.unwrap();
    common::wait::eventually("a and b connected", || a.stats().connected == 1 && b.stats().connected == 1).await;
    assert!(b.wait_ready(common::wait::DEADLINE).await, "b never finished bootstrap");
    a.insert(&b"big"[..], vec![b'x'; 8 << 20]).unwrap();
    common::wait::eventually("b has the big value", || b.get(b"big").is_some()).await;
    let pushed = b.stats().deltas_received;

    let server = Server::start(&a, RespConfig::default()).await;
    // A small receive buffer, never read: the server cannot write the two
    // replies below in one go, and waits for the socket.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sock = sock.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
    let mut req = multibulk(&["SET", "fresh", "v"]);
    req.extend(multibulk(&["GET", "big"]));
    sock.write_all(&req).await.unwrap();
    common::wait::eventually("b has the write", || b.get(b"fresh").as_deref() == Some(&b"v"[..])).await;
    assert!(b.stats().deltas_received > pushed, "pushed, not repaired");
    drop(sock);
    server.stop().await;
    b.shutdown().await;
    a.shutdown().await;
}
