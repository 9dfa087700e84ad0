//! Server commands: INFO, COMMAND, CONFIG, TIME, LASTSAVE, SAVE, BGSAVE, ROLE.

use std::time::Duration;

use bytes::Bytes;

use super::{eq, help, lookup, lossy, unknown_subcommand, wrong_args, Cx, Spec, SPECS};
use crate::node::MIN_PROCESS_BYTES;
use crate::resp::notify;
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::resp::Shared;
use crate::store::evict::MAX_SAMPLES;
use crate::store::EvictionPolicy;

pub(super) fn info(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let text = crate::resp::info::info(cx.sh, &args[1..]);
    out.verbatim(&text);
}

pub(super) fn time(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    let d = Duration::from_millis(cx.sh.mesh.now_ms());
    out.array(2);
    out.bulk(d.as_secs().to_string().as_bytes());
    out.bulk(d.subsec_micros().to_string().as_bytes());
}

/// LASTSAVE: the server's start, as a Redis that never saved answers.
pub(super) fn lastsave(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    out.int(cx.sh.started_unix as i64)
}

/// ROLE: every peer takes writes, and none has a Redis replica (its peers
/// are not), so each answers as a primary with none, as INFO's
/// `role:master` and `connected_slaves:0` say.
pub(super) fn role(_cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    out.array(3);
    out.bulk(b"master");
    out.int(0);
    out.array(0);
}

/// SAVE and BGSAVE: there is no dump to write. A peer's data is in its
/// peers: one restarted empty is filled again by anti-entropy.
pub(super) fn save(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    // BGSAVE [SCHEDULE], checked as Redis does before anything else.
    if cx.spec.name == "bgsave" && args.len() > 1 && !(args.len() == 2 && eq(&args[1], "schedule")) {
        return out.error(super::SYNTAX);
    }
    out.error("ERR meshcache does not persist: its data lives in its peers")
}

pub(super) fn command(_cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    command_command(args, out)
}

pub(super) fn config(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    config_command(cx.sh, cx.db.in_transaction(), args, out)
}

fn command_info(out: &mut Out, s: &Spec) {
    out.array(10);
    out.bulk(s.name.as_bytes());
    out.int(s.arity as i64);
    out.set(s.flags.len());
    for f in s.flags {
        out.simple(f);
    }
    out.int(s.first as i64);
    out.int(s.last as i64);
    out.int(s.step as i64);
    out.set(s.acl.len());
    for a in s.acl {
        out.simple(a);
    }
    out.array(0); // tips
    out.array(0); // key specs
    out.array(0); // subcommands
}

fn command_command(args: &[Bytes], out: &mut Out) {
    if args.len() == 1 {
        out.array(SPECS.len());
        for s in SPECS {
            command_info(out, s);
        }
        return;
    }
    let sub = &args[1];
    if eq(sub, "count") && args.len() == 2 {
        out.int(SPECS.len() as i64);
    } else if eq(sub, "info") {
        if args.len() == 2 {
            return command_command(&args[..1], out);
        }
        out.array(args.len() - 2);
        for name in &args[2..] {
            match lookup(name) {
                Some(s) => command_info(out, s),
                None => out.null(),
            }
        }
    } else if (eq(sub, "getkeys") || eq(sub, "getkeysandflags")) && args.len() >= 4 {
        get_keys(&args[2..], eq(sub, "getkeysandflags"), out);
    } else if eq(sub, "docs") {
        // No documentation is served: redis-cli then shows no hints.
        out.map(0);
    } else if eq(sub, "list") {
        out.array(SPECS.len());
        for s in SPECS {
            out.bulk(s.name.as_bytes());
        }
    } else if eq(sub, "help") && args.len() == 2 {
        help(
            out,
            "COMMAND",
            &[
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "DOCS [<command-name> ...]",
                "    Return documentary information (none is served).",
                "INFO [<command-name> ...]",
                "    Return details about the given commands, or all of them.",
                "GETKEYS <full-command>",
                "    Return the keys from a full Redis command.",
                "GETKEYSANDFLAGS <full-command>",
                "    Return the keys and the access flags from a full Redis command.",
                "LIST",
                "    Return the names of all commands.",
            ],
        );
    } else if ["count", "help", "getkeys", "getkeysandflags"].iter().any(|s| eq(sub, s)) {
        wrong_args(out, &format!("command|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "COMMAND");
    }
}

/// COMMAND GETKEYS and GETKEYSANDFLAGS: the keys of `argv` (a whole
/// command), found from the table's first, last and step key positions.
fn get_keys(argv: &[Bytes], with_flags: bool, out: &mut Out) {
    let Some(s) = lookup(&argv[0]) else { return out.error("ERR Invalid command specified") };
    // The sharded pub/sub commands' positions name channels, which Redis
    // flags `not_key` and does not count as keys.
    if s.first == 0 || matches!(s.name, "spublish" | "ssubscribe" | "sunsubscribe") {
        return out.error("ERR The command has no key arguments");
    }
    let argc = argv.len() as i64;
    let arity = s.arity as i64;
    if (arity > 0 && arity != argc) || argc < -arity {
        return out.error("ERR Invalid number of arguments specified for command");
    }
    let first = s.first as i64;
    let last = if s.last < 0 { argc + s.last as i64 } else { s.last as i64 };
    if first >= argc || last >= argc || last < first {
        return out.error("ERR Invalid arguments specified for command");
    }
    let positions: Vec<usize> = (first..=last).step_by(s.step.max(1) as usize).map(|i| i as usize).collect();
    out.array(positions.len());
    for (n, &i) in positions.iter().enumerate() {
        if !with_flags {
            out.bulk(&argv[i]);
            continue;
        }
        out.array(2);
        out.bulk(&argv[i]);
        let flags = key_flags(s, n, argv);
        out.set(flags.len());
        for f in flags {
            out.simple(f);
        }
    }
}

/// Redis's key-spec flags for the `n`th key of a command (what
/// GETKEYSANDFLAGS reports; `COMMAND INFO` does not serve key specs).
fn key_flags(s: &Spec, n: usize, argv: &[Bytes]) -> &'static [&'static str] {
    const RO: &[&str] = &["RO"];
    const RO_ACCESS: &[&str] = &["RO", "access"];
    const OW_UPDATE: &[&str] = &["OW", "update"];
    const RW_UPDATE: &[&str] = &["RW", "update"];
    const RW_ACCESS_UPDATE: &[&str] = &["RW", "access", "update"];
    const RW_ACCESS_DELETE: &[&str] = &["RW", "access", "delete"];
    match s.name {
        // SET ... GET reads the old value.
        "set" if argv[3..].iter().any(|a| eq(a, "get")) => RW_ACCESS_UPDATE,
        "set" | "mset" | "setex" | "psetex" => OW_UPDATE,
        "setnx" => &["OW", "insert"],
        "append" => &["RW", "insert"],
        "del" | "unlink" => &["RM", "delete"],
        "exists" | "touch" | "type" | "strlen" | "object" => RO,
        "expire" | "pexpire" | "expireat" | "pexpireat" | "persist" | "setrange" => RW_UPDATE,
        "getdel" => RW_ACCESS_DELETE,
        "bitfield" if super::bitfield::only_reads(&argv[2..]) => RO_ACCESS,
        "getex" | "getset" | "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat" | "setbit" | "bitfield" => {
            RW_ACCESS_UPDATE
        }
        "rename" | "renamenx" if n == 0 => RW_ACCESS_DELETE,
        "rename" => OW_UPDATE,
        "renamenx" => &["OW", "insert"],
        "copy" if n == 0 => RO_ACCESS,
        "copy" => OW_UPDATE,
        _ if s.flags.contains(&"write") => RW_UPDATE,
        _ => RO_ACCESS,
    }
}

/// The parameters CONFIG GET knows, with their values.
fn config_params(sh: &Shared) -> Vec<(&'static str, String)> {
    let c = &sh.config;
    vec![
        ("notify-keyspace-events", notify::flags_to_string(sh.hub.flags())),
        ("requirepass", c.requirepass.clone().unwrap_or_default()),
        ("maxclients", c.max_clients.to_string()),
        ("proto-max-bulk-len", c.max_request_bytes.to_string()),
        ("client-query-buffer-limit", c.max_command_bytes.to_string()),
        ("client-output-buffer-limit", format!("normal 0 0 0 replica 0 0 0 pubsub {} 0 0", c.output_buffer_limit)),
        ("maxmemory", sh.mesh.replica().store().max_bytes().map_or(0, |b| b.get()).to_string()),
        ("maxmemory-policy", sh.mesh.replica().store().policy().to_string()),
        ("maxmemory-samples", sh.mesh.replica().store().samples().to_string()),
        ("databases", "1".into()),
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("port", sh.local_addr.port().to_string()),
        ("bind", sh.local_addr.ip().to_string()),
        ("timeout", "0".into()),
        ("tracking-table-max-keys", sh.tracking.max_keys().to_string()),
        ("slowlog-log-slower-than", sh.slowlog.slower_than_us().to_string()),
        ("slowlog-max-len", sh.slowlog.max_len().to_string()),
        ("latency-monitor-threshold", sh.latency.threshold_ms().to_string()),
        // Commands are not timed one by one (README.md, INFO
        // commandstats), so there are no per-command histograms to keep.
        ("latency-tracking", "no".into()),
    ]
}

/// `in_transaction`: run inside EXEC, whose transaction holds shard locks
/// that an eviction would wait for: a new bound is enforced when it ends.
fn config_command(sh: &Shared, in_transaction: bool, args: &[Bytes], out: &mut Out) {
    let sub = &args[1];
    if eq(sub, "get") {
        if args.len() < 3 {
            return wrong_args(out, "config|get");
        }
        let params = config_params(sh);
        let matched: Vec<&(&str, String)> = params
            .iter()
            .filter(|(name, _)| args[2..].iter().any(|p| notify::glob_match(&p.to_ascii_lowercase(), name.as_bytes())))
            .collect();
        out.map(matched.len());
        for (name, value) in matched {
            out.bulk(name.as_bytes());
            out.bulk(value.as_bytes());
        }
    } else if eq(sub, "set") {
        if args.len() < 4 || !args.len().is_multiple_of(2) {
            return wrong_args(out, "config|set");
        }
        // Every value is checked before any is applied, so that a bad one
        // leaves the configuration as it was (as Redis does).
        let mut flags = None;
        let mut max_bytes = None;
        let mut policy = None;
        let mut samples = None;
        let mut tracking_keys = None;
        let mut slower_than = None;
        let mut slowlog_len = None;
        let mut latency_ms = None;
        for kv in args[2..].chunks_exact(2) {
            let name = lossy(&kv[0]).to_ascii_lowercase();
            let failed = |why: &str| format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}");
            if name == "notify-keyspace-events" {
                match notify::parse_flags(&kv[1]) {
                    Some(f) => flags = Some(f),
                    None => return out.error(&failed("Invalid event class character. Use 'Ag$lshzxeKEtmdn'.")),
                }
            } else if name == "maxmemory" {
                match parse_memory(&kv[1]) {
                    // A bound on the whole process (a peer with an
                    // allocator probe) has the same floor as at start.
                    Some(b) if b != 0 && b < MIN_PROCESS_BYTES && sh.mesh.allocated_bytes().is_some() => {
                        return out.error(&failed(&format!(
                            "maxmemory must be 0 or at least {} MiB, what a peer process needs to run",
                            MIN_PROCESS_BYTES >> 20
                        )))
                    }
                    Some(b) => max_bytes = Some(b),
                    None => return out.error(&failed("argument must be a memory value")),
                }
            } else if name == "maxmemory-policy" {
                match lossy(&kv[1]).parse::<EvictionPolicy>() {
                    Ok(p) => policy = Some(p),
                    Err(e) => return out.error(&failed(&e.to_string())),
                }
            } else if name == "maxmemory-samples" {
                match parse_i64(&kv[1]).filter(|n| (1..=MAX_SAMPLES as i64).contains(n)) {
                    Some(n) => samples = std::num::NonZeroUsize::new(n as usize),
                    None => {
                        return out.error(&failed(&format!("argument must be between 1 and {MAX_SAMPLES} inclusive")))
                    }
                }
            } else if name == "tracking-table-max-keys" {
                match at_least(&kv[1], 0) {
                    Ok(n) => tracking_keys = Some(n as usize),
                    Err(why) => return out.error(&failed(&why)),
                }
            } else if name == "slowlog-log-slower-than" {
                match at_least(&kv[1], -1) {
                    Ok(n) => slower_than = Some(n),
                    Err(why) => return out.error(&failed(&why)),
                }
            } else if name == "slowlog-max-len" {
                match at_least(&kv[1], 0) {
                    Ok(n) => slowlog_len = Some(n as u64),
                    Err(why) => return out.error(&failed(&why)),
                }
            } else if name == "latency-monitor-threshold" {
                match at_least(&kv[1], 0) {
                    Ok(n) => latency_ms = Some(n as u64),
                    Err(why) => return out.error(&failed(&why)),
                }
            } else if config_params(sh).iter().any(|(n, _)| *n == name) {
                return out.error(&format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config"
                ));
            } else {
                return out
                    .error(&format!("ERR Unknown option or number of arguments for CONFIG SET - '{}'", lossy(&kv[0])));
            }
        }
        if let Some(f) = flags {
            sh.hub.set_flags(f);
        }
        if let Some(n) = tracking_keys {
            sh.tracking.set_max_keys(n);
        }
        if let Some(us) = slower_than {
            sh.slowlog.set_slower_than_us(us);
        }
        if let Some(n) = slowlog_len {
            sh.slowlog.set_max_len(n);
        }
        if let Some(ms) = latency_ms {
            sh.latency.set_threshold_ms(ms);
        }
        let store = sh.mesh.replica().store();
        if let Some(p) = policy {
            store.set_policy(p);
        }
        if let Some(n) = samples {
            store.set_samples(n).expect("checked above");
        }
        if let Some(b) = max_bytes {
            let b = std::num::NonZeroUsize::new(b);
            if in_transaction {
                store.set_max_bytes_later(b);
            } else {
                store.set_max_bytes(b, sh.mesh.now_ms());
            }
        }
        out.ok();
    } else if eq(sub, "resetstat") && args.len() == 2 {
        sh.reset_stats();
        out.ok();
    } else if eq(sub, "rewrite") && args.len() == 2 {
        out.error("ERR The server is running without a config file");
    } else if eq(sub, "help") && args.len() == 2 {
        help(
            out,
            "CONFIG",
            &[
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "SET <directive> <value>",
                "    Set the configuration <directive> to <value> (notify-keyspace-events, maxmemory,",
                "    maxmemory-policy, maxmemory-samples, tracking-table-max-keys,",
                "    slowlog-log-slower-than, slowlog-max-len, latency-monitor-threshold).",
                "RESETSTAT",
                "    Reset statistics reported by the INFO command.",
            ],
        );
    } else if ["resetstat", "rewrite", "help"].iter().any(|s| eq(sub, s)) {
        wrong_args(out, &format!("config|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "CONFIG");
    }
}

/// An integer parameter's value, at least `floor`, or why not in Redis's
/// words.
fn at_least(v: &[u8], floor: i64) -> Result<i64, String> {
    match parse_i64(v) {
        Some(n) if n >= floor => Ok(n),
        Some(_) => Err(format!("argument must be between {floor} and 9223372036854775807 inclusive")),
        None => Err("argument couldn't be parsed into an integer".to_string()),
    }
}

/// Parses a memory value as Redis's `CONFIG SET maxmemory` does: digits
/// with an optional unit, case-insensitive (`k` = 1000, `kb` = 1024, and so
/// on for m, g). `0` means no bound.
fn parse_memory(v: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(v).ok()?.to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return None;
    }
    let (num, unit) = s.split_at(digits);
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mul).and_then(|b| usize::try_from(b).ok())
}
