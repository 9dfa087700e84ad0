//! Command lookup and dispatch, and what the command families share.
//!
//! Each family lives in its own file (`strings`, `counters`, `bits`,
//! `bitfield`, `lcs`, `keyspace`, `expire`, `pubsub`, `connection`,
//! `server`, `slowlog`, `latency`, `memory`, `multi`), one function per
//! command that parses its arguments and applies them. Commands reach the keyspace
//! through `cx.db` only (see `resp::db`): inside EXEC it is the
//! transaction. The table below names every command with what `COMMAND`
//! reports about it and the function that runs it; lookup is a hash of the
//! lowercased name.

mod bitfield;
mod bits;
mod connection;
mod counters;
mod expire;
mod keyspace;
mod latency;
mod lcs;
mod long_double;
mod memory;
mod multi;
mod pubsub;
mod server;
mod slowlog;
mod strings;
mod tracking;

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;

use super::client::Client;
pub(crate) use super::db::Db;
use super::latency::Event;
use super::parse::parse_i64;
use super::reply::Out;
use super::Shared;
use crate::replica::WriteError;
use crate::store::Slot;
use crate::MeshError;

/// What a command runs with: the server, the connection, its own table
/// entry (commands that share a function tell themselves apart by it), and
/// the keyspace (the mesh, or the transaction of an EXEC).
pub(crate) struct Cx<'a, 't> {
    pub(crate) sh: &'a Shared,
    pub(crate) c: &'a mut Client,
    pub(crate) spec: &'static Spec,
    pub(crate) db: Db<'a, 't>,
}

/// Runs one command whose name and arity were checked.
type Run = fn(&mut Cx<'_, '_>, &[Bytes], &mut Out);

/// One command's table entry: what COMMAND reports, the arity check, and
/// the function that runs it.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    /// Redis's arity: exact when positive, a minimum when negative.
    arity: i32,
    flags: &'static [&'static str],
    first: i32,
    last: i32,
    step: i32,
    acl: &'static [&'static str],
    run: Run,
    /// Timed for the slow log and the latency monitor (when either is on)
    /// wherever it runs: neither flagged `fast` (Redis's O(1) and O(log N)
    /// commands) nor a write. Any other command is timed only when it
    /// comes first in what a connection read, where that costs no clock
    /// reading of its own (see `resp::slowlog`).
    pub(crate) timed_anywhere: bool,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Spec {
    /// The keys of `args` (this command, checked for arity), from the
    /// table's key positions: what a transaction running it must lock.
    pub(crate) fn keys<'b>(&self, args: &'b [Bytes]) -> impl Iterator<Item = &'b Bytes> {
        let argc = args.len() as i64;
        let first = self.first as i64;
        let last = if self.last < 0 { argc + self.last as i64 } else { (self.last as i64).min(argc - 1) };
        let range = if first == 0 || first > last { 1..1 } else { first as usize..last as usize + 1 };
        args[range].iter().step_by(self.step.max(1) as usize)
    }

    /// Whether it walks the whole keyspace (a transaction running it locks
    /// every shard).
    pub(crate) fn walks_keyspace(&self) -> bool {
        matches!(self.name, "keys" | "scan" | "randomkey")
    }

    fn is(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WR: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly", "fast"];
const RS: &[&str] = &["readonly"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NOAUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"];
const PUBSUB: &[&str] = &["pubsub", "noscript", "loading", "stale"];
const PUBFAST: &[&str] = &["pubsub", "loading", "stale", "fast"];
const ADMIN: &[&str] = &["admin", "noscript", "loading", "stale"];
const TXN: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $acl:expr, $run:path) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first: $first,
            last: $last,
            step: $step,
            acl: $acl,
            run: $run,
            timed_anywhere: !has_flag($flags, "fast") && !has_flag($flags, "write"),
        }
    };
}

/// Whether `flags` holds `flag`, at compile time.
const fn has_flag(flags: &[&str], flag: &str) -> bool {
    let mut i = 0;
    while i < flags.len() {
        let (a, b) = (flags[i].as_bytes(), flag.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Every command, as `COMMAND` lists them.
static SPECS: &[Spec] = &[
    spec!("get", 2, R, 1, 1, 1, &["@read", "@string", "@fast"], strings::get),
    spec!("set", -3, W, 1, 1, 1, &["@write", "@string", "@slow"], strings::set),
    spec!("ping", -1, &["fast"], 0, 0, 0, &["@fast", "@connection"], connection::ping),
    spec!("mget", -2, &["readonly", "fast"], 1, -1, 1, &["@read", "@string", "@fast"], strings::mget),
    spec!("mset", -3, W, 1, -1, 2, &["@write", "@string", "@slow"], strings::mset),
    spec!("del", -2, &["write"], 1, -1, 1, &["@keyspace", "@write", "@slow"], keyspace::del),
    spec!("unlink", -2, WR, 1, -1, 1, &["@keyspace", "@write", "@fast"], keyspace::del),
    spec!("exists", -2, R, 1, -1, 1, &["@keyspace", "@read", "@fast"], keyspace::exists),
    spec!("expire", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], expire::expire),
    spec!("pexpire", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], expire::expire),
    spec!("ttl", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], expire::ttl),
    spec!("pttl", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], expire::ttl),
    spec!("setex", 4, W, 1, 1, 1, &["@write", "@string", "@slow"], strings::setex),
    spec!("psetex", 4, W, 1, 1, 1, &["@write", "@string", "@slow"], strings::setex),
    spec!("setnx", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], strings::setnx),
    spec!("getdel", 2, WR, 1, 1, 1, &["@write", "@string", "@fast"], strings::getdel),
    spec!("echo", 2, &["fast"], 0, 0, 0, &["@fast", "@connection"], connection::echo),
    spec!("touch", -2, R, 1, -1, 1, &["@keyspace", "@read", "@fast"], keyspace::exists),
    spec!("type", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], keyspace::type_of),
    spec!("expireat", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], expire::expire),
    spec!("pexpireat", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], expire::expire),
    spec!("expiretime", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], expire::ttl),
    spec!("pexpiretime", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], expire::ttl),
    spec!("persist", 2, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], expire::persist),
    spec!("dbsize", 1, R, 0, 0, 0, &["@keyspace", "@read", "@fast"], keyspace::dbsize),
    spec!("info", -1, &["loading", "stale"], 0, 0, 0, &["@slow", "@dangerous"], server::info),
    spec!("client", -2, &["loading", "stale"], 0, 0, 0, &["@slow", "@connection"], connection::client),
    spec!("command", -1, &["loading", "stale"], 0, 0, 0, &["@slow", "@connection"], server::command),
    spec!("select", 2, CONN, 0, 0, 0, &["@keyspace", "@fast"], connection::select),
    spec!("quit", -1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], connection::quit),
    spec!("reset", 1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], connection::reset),
    spec!("flushall", -1, &["write"], 0, 0, 0, &["@keyspace", "@write", "@slow", "@dangerous"], keyspace::flush),
    spec!("flushdb", -1, &["write"], 0, 0, 0, &["@keyspace", "@write", "@slow", "@dangerous"], keyspace::flush),
    spec!("msetnx", -3, W, 1, -1, 2, &["@write", "@string", "@slow"], strings::mset),
    spec!("multi", 1, TXN, 0, 0, 0, &["@fast", "@transaction"], multi::multi),
    spec!(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        0,
        0,
        0,
        &["@slow", "@transaction"],
        multi::exec
    ),
    spec!("discard", 1, TXN, 0, 0, 0, &["@fast", "@transaction"], multi::discard),
    spec!("watch", -2, TXN, 1, -1, 1, &["@fast", "@transaction"], multi::watch),
    spec!("unwatch", 1, TXN, 0, 0, 0, &["@fast", "@transaction"], multi::unwatch),
    spec!("auth", -2, NOAUTH, 0, 0, 0, &["@fast", "@connection"], connection::auth),
    spec!("hello", -1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], connection::hello),
    spec!("config", -2, ADMIN, 0, 0, 0, &["@admin", "@slow", "@dangerous"], server::config),
    spec!("time", 1, &["loading", "stale", "fast"], 0, 0, 0, &["@fast"], server::time),
    spec!("subscribe", -2, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], pubsub::subscribe),
    spec!("psubscribe", -2, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], pubsub::subscribe),
    spec!("unsubscribe", -1, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], pubsub::unsubscribe),
    spec!("punsubscribe", -1, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], pubsub::unsubscribe),
    spec!("getex", -2, WR, 1, 1, 1, &["@write", "@string", "@fast"], strings::getex),
    spec!("getset", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], strings::getset),
    spec!("strlen", 2, R, 1, 1, 1, &["@read", "@string", "@fast"], strings::strlen),
    spec!("append", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], strings::append),
    spec!("getrange", 4, RS, 1, 1, 1, &["@read", "@string", "@slow"], strings::getrange),
    spec!("substr", 4, RS, 1, 1, 1, &["@read", "@string", "@slow"], strings::getrange),
    spec!("setrange", 4, W, 1, 1, 1, &["@write", "@string", "@slow"], strings::setrange),
    spec!("incr", 2, WF, 1, 1, 1, &["@write", "@string", "@fast"], counters::incr),
    spec!("decr", 2, WF, 1, 1, 1, &["@write", "@string", "@fast"], counters::incr),
    spec!("incrby", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], counters::incr),
    spec!("decrby", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], counters::incr),
    spec!("incrbyfloat", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], counters::incrbyfloat),
    spec!("setbit", 4, W, 1, 1, 1, &["@write", "@bitmap", "@slow"], bits::setbit),
    spec!("getbit", 3, R, 1, 1, 1, &["@read", "@bitmap", "@fast"], bits::getbit),
    spec!("bitcount", -2, RS, 1, 1, 1, &["@read", "@bitmap", "@slow"], bits::bitcount),
    spec!("bitpos", -3, RS, 1, 1, 1, &["@read", "@bitmap", "@slow"], bits::bitpos),
    spec!("bitop", -4, W, 2, -1, 1, &["@write", "@bitmap", "@slow"], bits::bitop),
    spec!("bitfield", -2, W, 1, 1, 1, &["@write", "@bitmap", "@slow"], bitfield::bitfield),
    spec!("bitfield_ro", -2, R, 1, 1, 1, &["@read", "@bitmap", "@fast"], bitfield::bitfield_ro),
    spec!("lcs", -3, RS, 1, 2, 1, &["@read", "@string", "@slow"], lcs::lcs),
    spec!("keys", 2, RS, 0, 0, 0, &["@keyspace", "@read", "@slow", "@dangerous"], keyspace::keys),
    spec!("scan", -2, RS, 0, 0, 0, &["@keyspace", "@read", "@slow"], keyspace::scan),
    spec!("randomkey", 1, RS, 0, 0, 0, &["@keyspace", "@read", "@slow"], keyspace::randomkey),
    spec!("rename", 3, &["write"], 1, 2, 1, &["@keyspace", "@write", "@slow"], keyspace::rename),
    spec!("renamenx", 3, WR, 1, 2, 1, &["@keyspace", "@write", "@fast"], keyspace::rename),
    spec!("copy", -3, W, 1, 2, 1, &["@keyspace", "@write", "@slow"], keyspace::copy_key),
    spec!("object", -2, &["slow"], 2, 2, 1, &["@keyspace", "@read", "@slow"], keyspace::object),
    spec!("memory", -2, &["readonly"], 2, 2, 1, &["@read", "@slow"], memory::memory),
    spec!("publish", 3, PUBFAST, 0, 0, 0, &["@pubsub", "@fast"], pubsub::publish),
    spec!("spublish", 3, PUBFAST, 1, 1, 1, &["@pubsub", "@fast"], pubsub::publish),
    spec!("ssubscribe", -2, PUBSUB, 1, -1, 1, &["@pubsub", "@slow"], pubsub::ssubscribe),
    spec!("sunsubscribe", -1, PUBSUB, 1, -1, 1, &["@pubsub", "@slow"], pubsub::sunsubscribe),
    spec!("pubsub", -2, &["slow"], 0, 0, 0, &["@slow"], pubsub::pubsub),
    // Connection and server commands.
    spec!("wait", 3, &["noscript"], 0, 0, 0, &["@slow", "@connection"], connection::wait),
    spec!("lastsave", 1, &["loading", "stale", "fast"], 0, 0, 0, &["@admin", "@fast", "@dangerous"], server::lastsave),
    spec!("slowlog", -2, &["admin", "loading", "stale"], 0, 0, 0, &["@admin", "@slow", "@dangerous"], slowlog::slowlog),
    spec!(
        "latency",
        -2,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
        &["@admin", "@slow", "@dangerous"],
        latency::latency
    ),
    spec!(
        "role",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
        &["@admin", "@fast", "@dangerous"],
        server::role
    ),
    spec!(
        "save",
        1,
        &["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        &["@admin", "@slow", "@dangerous"],
        server::save
    ),
    spec!(
        "bgsave",
        -1,
        &["admin", "noscript", "no_async_loading"],
        0,
        0,
        0,
        &["@admin", "@slow", "@dangerous"],
        server::save
    ),
];

/// The longest command name (`COMMAND`'s names are short; anything longer
/// is unknown without hashing it).
const MAX_NAME: usize = 32;

/// Hashed with foldhash: SipHash's resistance to chosen keys buys nothing
/// for a fixed table, and cost several percent of pipelined GETs.
static BY_NAME: LazyLock<HashMap<&'static [u8], &'static Spec, foldhash::fast::FixedState>> =
    LazyLock::new(|| SPECS.iter().map(|s| (s.name.as_bytes(), s)).collect());

/// The table entry for `name`, in any case.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    BY_NAME.get(&*lower).copied()
}

fn arity_ok(arity: i32, n: usize) -> bool {
    if arity >= 0 {
        n == arity as usize
    } else {
        n >= arity.unsigned_abs() as usize
    }
}

/// Commands a RESP2 client may send while subscribed, as in Redis.
fn allowed_subscribed(spec: &Spec) -> bool {
    matches!(
        spec.name,
        "subscribe"
            | "psubscribe"
            | "ssubscribe"
            | "unsubscribe"
            | "punsubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

/// Runs one command and appends its reply to `out`; between MULTI and
/// EXEC, queues it instead.
/// Returns the command's table entry if it ran (it was not refused, nor
/// queued in a MULTI).
pub(crate) fn execute(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) -> Option<&'static Spec> {
    let Some(spec) = lookup(&args[0]) else {
        let mut tail = String::new();
        for a in &args[1..] {
            if tail.len() >= 128 {
                break;
            }
            let room = 128 - tail.len();
            tail.push('\'');
            tail.push_str(&lossy(&a[..a.len().min(room)]));
            tail.push_str("' ");
        }
        let name = &args[0][..args[0].len().min(128)];
        refuse(c, None, out, &format!("unknown command '{}', with args beginning with: {}", lossy(name), tail));
        return None;
    };
    let i = index_of(spec);
    if !arity_ok(spec.arity, args.len()) {
        refuse(c, Some(spec), out, &format!("wrong number of arguments for '{}' command", spec.name));
        return None;
    }
    if !c.authed && !spec.is("no_auth") {
        refuse(c, Some(spec), out, "-NOAUTH Authentication required.");
        return None;
    }
    if !out.resp3 && c.subscribed() && !allowed_subscribed(spec) {
        refuse(
            c,
            Some(spec),
            out,
            &format!(
                "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                spec.name
            ),
        );
        return None;
    }
    c.handle.last.store(i, std::sync::atomic::Ordering::Relaxed);
    if c.multi.is_some() && !multi::runs_at_once(spec) {
        match multi::refused_in_multi(spec) {
            Some(why) => refuse(c, Some(spec), out, why),
            None => multi::queue(sh, c, spec, args, out),
        }
        return None;
    }
    match &c.tracking {
        None => run(&mut Cx { sh, c, spec, db: Db::Mesh(&sh.mesh) }, args, out),
        Some(mode) => {
            let noloop = mode.noloop;
            let id = c.id;
            if noloop {
                super::tracking::as_writer(id, || run_tracking(sh, c, spec, args, out))
            } else {
                run_tracking(sh, c, spec, args, out)
            }
        }
    }
    Some(spec)
}

/// Runs a command of a tracking client. One that reads keys runs holding
/// their shard locks, under which its keys are tracked and its pending
/// invalidations go into `out` before its reply: see `resp::tracking`
/// for why that orders every invalidation against the reply.
fn run_tracking(sh: &Shared, c: &mut Client, spec: &'static Spec, args: &[Bytes], out: &mut Out) {
    if spec.is("readonly") && spec.first != 0 {
        let keys: Vec<&Bytes> = spec.keys(args).collect();
        sh.mesh.transaction(&keys, |t| {
            tracking::before_reads(sh, c, keys.iter().copied(), out);
            run(&mut Cx { sh, c, spec, db: Db::Txn(t) }, args, out);
        });
    } else {
        run(&mut Cx { sh, c, spec, db: Db::Mesh(&sh.mesh) }, args, out);
    }
    // CLIENT CACHING applies to the next command, or to the transaction
    // that follows it, as in Redis.
    if c.multi.is_none() && spec.name != "client" {
        c.caching = false;
    }
}

/// Refuses a command before it runs, as Redis's `rejectCommand` does: the
/// error ends a transaction being queued in EXECABORT, and a refused EXEC
/// discards it at once. `msg` is the text after `ERR ` (or a whole error
/// after `-`).
fn refuse(c: &mut Client, spec: Option<&'static Spec>, out: &mut Out, msg: &str) {
    if let Some(spec) = spec {
        c.tally(index_of(spec)).rejected += 1;
    }
    let bare = msg.strip_prefix('-').unwrap_or(msg);
    if spec.is_some_and(|s| s.name == "exec") {
        c.multi = None;
        c.watched.clear();
        return out.error(&format!("EXECABORT Transaction discarded because of: {bare}"));
    }
    if let Some(m) = &mut c.multi {
        m.dirty = true;
    }
    if msg.starts_with('-') {
        out.error(bare)
    } else {
        out.error(&format!("ERR {msg}"))
    }
}

/// Runs one command (checked, and not queued), timing it for the slow log
/// if it is [`Spec::timed_anywhere`] (the connection times the first
/// command of a read itself).
fn run(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if !cx.spec.timed_anywhere || !cx.sh.timing() {
        return run_untimed(cx, args, out);
    }
    run_timed(cx, args, out)
}

fn run_timed(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let started = cx.sh.mesh.env().instant();
    run_untimed(cx, args, out);
    note_timed(cx.sh, cx.c, cx.spec, args, started.elapsed());
}

/// Offers the command `spec` that ran for `took` to the slow log and to the
/// latency monitor.
pub(crate) fn note_timed(sh: &Shared, c: &Client, spec: &Spec, args: &[Bytes], took: std::time::Duration) {
    let name = c.name.as_deref().unwrap_or_default();
    let now_secs = || sh.mesh.now_ms() / 1000;
    sh.slowlog.note(took, args, c.addr, name, now_secs);
    let event = if spec.is("fast") { Event::FastCommand } else { Event::Command };
    sh.latency.note(event, took, now_secs);
}

/// Runs one command, counting it.
fn run_untimed(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let i = index_of(cx.spec);
    // The output's error count tells whether this call failed; what it
    // held before is kept for the server's total.
    cx.c.errors += out.take_errors();
    (cx.spec.run)(cx, args, out);
    let failed = out.take_errors();
    cx.c.errors += failed;
    let t = cx.c.tally(i);
    t.calls += 1;
    t.failed += (failed > 0) as u64;
}

/// A command's place in the table, which indexes its counters.
fn index_of(spec: &'static Spec) -> usize {
    (std::ptr::from_ref(spec).addr() - SPECS.as_ptr().addr()) / std::mem::size_of::<Spec>()
}

/// How many commands the table holds.
pub(crate) fn table_len() -> usize {
    SPECS.len()
}

/// The name of the command at place `i` in the table.
pub(crate) fn name_at(i: usize) -> Option<&'static str> {
    SPECS.get(i).map(|s| s.name)
}

pub(crate) fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Whether argument `a` is the keyword `b`, in any case.
pub(crate) fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

pub(crate) const SYNTAX: &str = "ERR syntax error";
pub(crate) const NOT_INT: &str = "ERR value is not an integer or out of range";

pub(crate) fn wrong_args(out: &mut Out, name: &str) {
    out.error(&format!("ERR wrong number of arguments for '{name}' command"));
}

pub(crate) fn unknown_subcommand(out: &mut Out, sub: &[u8], cmd: &str) {
    let sub = &sub[..sub.len().min(128)];
    out.error(&format!("ERR unknown subcommand '{}'. Try {} HELP.", lossy(sub), cmd));
}

pub(crate) fn write_error(out: &mut Out, e: MeshError) {
    match e {
        MeshError::Write(WriteError::Loading) => out.error("LOADING meshcache is loading the dataset from its peers"),
        MeshError::Write(WriteError::OutOfMemory) => {
            out.error("OOM command not allowed when used memory > 'maxmemory'.")
        }
        e => out.error(&format!("ERR {e}")),
    }
}

/// An integer argument, or Redis's error for one that is not.
pub(crate) fn int_arg(out: &mut Out, a: &[u8]) -> Option<i64> {
    let v = parse_i64(a);
    if v.is_none() {
        out.error(NOT_INT);
    }
    v
}

/// Copies an argument out of the read buffer, so that a stored key or
/// value does not pin the whole buffer it arrived in.
pub(crate) fn copy(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

pub(crate) fn value_of(slot: Option<&Slot>) -> Option<Bytes> {
    match slot {
        Some(Slot::Value { data, .. }) => Some(data.clone()),
        _ => None,
    }
}

/// A `<CMD> HELP` reply.
pub(crate) fn help(out: &mut Out, cmd: &str, lines: &[&str]) {
    help_ending(out, cmd, lines, "    Print this help.")
}

/// [`help`] with its last line as given: Redis words it "Prints this help."
/// for some commands (SLOWLOG, MEMORY).
pub(crate) fn help_ending(out: &mut Out, cmd: &str, lines: &[&str], last: &str) {
    out.array(lines.len() + 3);
    out.simple(&format!("{cmd} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"));
    for l in lines {
        out.simple(l);
    }
    out.simple("HELP");
    out.simple(last);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut names = HashSet::new();
        for s in SPECS {
            assert!(names.insert(s.name), "duplicate {}", s.name);
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert!(s.name.len() <= MAX_NAME);
            assert!(s.arity != 0);
        }
        assert_eq!(lookup(b"GeT").map(|s| s.name), Some("get"));
        assert_eq!(lookup(b"PUNSUBSCRIBE").map(|s| s.name), Some("punsubscribe"));
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(&[b'g'; 40]).is_none());
        assert!(arity_ok(-3, 5) && !arity_ok(-3, 2) && arity_ok(2, 2) && !arity_ok(2, 3));
    }
}
