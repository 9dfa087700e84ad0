//! Command dispatch and the commands themselves, with Redis's replies and
//! error texts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use super::notify::{self, Hint, Outbox};
use super::parse::parse_i64;
use super::reply::Out;
use super::Shared;
use crate::node::MIN_PROCESS_BYTES;
use crate::replica::WriteError;
use crate::store::evict::MAX_SAMPLES;
use crate::store::{EvictionPolicy, Slot};
use crate::MeshError;

/// The state of one client connection that commands read and change.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    created: Instant,
    /// Authenticated (always true without `requirepass`).
    pub(crate) authed: bool,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    /// Channels subscribed to.
    pub(crate) channels: HashSet<Bytes>,
    /// Patterns subscribed to.
    pub(crate) patterns: HashSet<Bytes>,
    /// Where the hub queues this client's pub/sub messages.
    pub(crate) outbox: Arc<Outbox>,
    /// Close once the pending replies are written (QUIT, protocol error).
    pub(crate) close: bool,
    hits: u64,
    misses: u64,
    last: &'static str,
}

impl Client {
    pub(crate) fn new(id: u64, addr: SocketAddr, laddr: SocketAddr, outbox: Arc<Outbox>, authed: bool) -> Self {
        Client {
            id,
            addr,
            laddr,
            created: crate::env::stopwatch(),
            authed,
            name: None,
            lib_name: None,
            lib_ver: None,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            outbox,
            close: false,
            hits: 0,
            misses: 0,
            last: "NULL",
        }
    }

    /// Whether the client has any subscription.
    pub(crate) fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Keyspace hits and misses since the last call.
    pub(crate) fn take_hits(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.hits), std::mem::take(&mut self.misses))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Get,
    Set,
    Ping,
    Echo,
    SetNx,
    SetEx,
    PSetEx,
    GetDel,
    Del,
    Unlink,
    Exists,
    Touch,
    Type,
    MGet,
    MSet,
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
    Ttl,
    PTtl,
    ExpireTime,
    PExpireTime,
    Persist,
    DbSize,
    Info,
    Client,
    Command,
    Select,
    Quit,
    Reset,
    FlushAll,
    FlushDb,
    Auth,
    Hello,
    Config,
    Time,
    Subscribe,
    PSubscribe,
    Unsubscribe,
    PUnsubscribe,
}

/// One command's table entry: what COMMAND reports, and the arity check.
struct Spec {
    name: &'static str,
    /// Redis's arity: exact when positive, a minimum when negative.
    arity: i32,
    flags: &'static [&'static str],
    first: i32,
    last: i32,
    step: i32,
    acl: &'static [&'static str],
    cmd: Cmd,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WR: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NOAUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"];
const PUBSUB: &[&str] = &["pubsub", "noscript", "loading", "stale"];
const ADMIN: &[&str] = &["admin", "noscript", "loading", "stale"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $first:expr, $last:expr, $step:expr, $acl:expr, $cmd:ident) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first: $first,
            last: $last,
            step: $step,
            acl: $acl,
            cmd: Cmd::$cmd,
        }
    };
}

/// Every command; the hottest first, since lookup scans the table.
static SPECS: &[Spec] = &[
    spec!("get", 2, R, 1, 1, 1, &["@read", "@string", "@fast"], Get),
    spec!("set", -3, W, 1, 1, 1, &["@write", "@string", "@slow"], Set),
    spec!("ping", -1, &["fast"], 0, 0, 0, &["@fast", "@connection"], Ping),
    spec!("mget", -2, &["readonly", "fast"], 1, -1, 1, &["@read", "@string", "@fast"], MGet),
    spec!("mset", -3, W, 1, -1, 2, &["@write", "@string", "@slow"], MSet),
    spec!("del", -2, &["write"], 1, -1, 1, &["@keyspace", "@write", "@slow"], Del),
    spec!("unlink", -2, WR, 1, -1, 1, &["@keyspace", "@write", "@fast"], Unlink),
    spec!("exists", -2, R, 1, -1, 1, &["@keyspace", "@read", "@fast"], Exists),
    spec!("expire", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], Expire),
    spec!("pexpire", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], PExpire),
    spec!("ttl", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], Ttl),
    spec!("pttl", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], PTtl),
    spec!("setex", 4, W, 1, 1, 1, &["@write", "@string", "@slow"], SetEx),
    spec!("psetex", 4, W, 1, 1, 1, &["@write", "@string", "@slow"], PSetEx),
    spec!("setnx", 3, WF, 1, 1, 1, &["@write", "@string", "@fast"], SetNx),
    spec!("getdel", 2, WR, 1, 1, 1, &["@write", "@string", "@fast"], GetDel),
    spec!("echo", 2, &["fast"], 0, 0, 0, &["@fast", "@connection"], Echo),
    spec!("touch", -2, R, 1, -1, 1, &["@keyspace", "@read", "@fast"], Touch),
    spec!("type", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], Type),
    spec!("expireat", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], ExpireAt),
    spec!("pexpireat", -3, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], PExpireAt),
    spec!("expiretime", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], ExpireTime),
    spec!("pexpiretime", 2, R, 1, 1, 1, &["@keyspace", "@read", "@fast"], PExpireTime),
    spec!("persist", 2, WR, 1, 1, 1, &["@keyspace", "@write", "@fast"], Persist),
    spec!("dbsize", 1, R, 0, 0, 0, &["@keyspace", "@read", "@fast"], DbSize),
    spec!("info", -1, &["loading", "stale"], 0, 0, 0, &["@slow", "@dangerous"], Info),
    spec!("client", -2, &["loading", "stale"], 0, 0, 0, &["@slow", "@connection"], Client),
    spec!("command", -1, &["loading", "stale"], 0, 0, 0, &["@slow", "@connection"], Command),
    spec!("select", 2, CONN, 0, 0, 0, &["@keyspace", "@fast"], Select),
    spec!("quit", -1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], Quit),
    spec!("reset", 1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], Reset),
    spec!("flushall", -1, &["write"], 0, 0, 0, &["@keyspace", "@write", "@slow", "@dangerous"], FlushAll),
    spec!("flushdb", -1, &["write"], 0, 0, 0, &["@keyspace", "@write", "@slow", "@dangerous"], FlushDb),
    spec!("auth", -2, NOAUTH, 0, 0, 0, &["@fast", "@connection"], Auth),
    spec!("hello", -1, NOAUTH, 0, 0, 0, &["@fast", "@connection"], Hello),
    spec!("config", -2, ADMIN, 0, 0, 0, &["@admin", "@slow", "@dangerous"], Config),
    spec!("time", 1, &["loading", "stale", "fast"], 0, 0, 0, &["@fast"], Time),
    spec!("subscribe", -2, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], Subscribe),
    spec!("psubscribe", -2, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], PSubscribe),
    spec!("unsubscribe", -1, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], Unsubscribe),
    spec!("punsubscribe", -1, PUBSUB, 0, 0, 0, &["@pubsub", "@slow"], PUnsubscribe),
];

fn lookup(name: &[u8]) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name.len() == name.len() && s.name.as_bytes().eq_ignore_ascii_case(name))
}

fn arity_ok(arity: i32, n: usize) -> bool {
    if arity >= 0 {
        n == arity as usize
    } else {
        n >= arity.unsigned_abs() as usize
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

const SYNTAX: &str = "ERR syntax error";
const NOT_INT: &str = "ERR value is not an integer or out of range";

fn wrong_args(out: &mut Out, name: &str) {
    out.error(&format!("ERR wrong number of arguments for '{name}' command"));
}

fn unknown_subcommand(out: &mut Out, sub: &[u8], cmd: &str) {
    let sub = &sub[..sub.len().min(128)];
    out.error(&format!("ERR unknown subcommand '{}'. Try {} HELP.", lossy(sub), cmd));
}

fn write_error(out: &mut Out, e: MeshError) {
    match e {
        MeshError::Write(WriteError::Loading) => out.error("LOADING meshcache is loading the dataset from its peers"),
        MeshError::Write(WriteError::OutOfMemory) => {
            out.error("OOM command not allowed when used memory > 'maxmemory'.")
        }
        e => out.error(&format!("ERR {e}")),
    }
}

fn int_arg(out: &mut Out, a: &[u8]) -> Option<i64> {
    let v = parse_i64(a);
    if v.is_none() {
        out.error(NOT_INT);
    }
    v
}

/// Runs one command and appends its reply to `out`.
pub(crate) fn execute(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) {
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
        out.error(&format!("ERR unknown command '{}', with args beginning with: {}", lossy(name), tail));
        return;
    };
    if !arity_ok(spec.arity, args.len()) {
        return wrong_args(out, spec.name);
    }
    if !c.authed && !spec.flags.contains(&"no_auth") {
        return out.error("NOAUTH Authentication required.");
    }
    if !out.resp3
        && c.subscribed()
        && !matches!(
            spec.cmd,
            Cmd::Subscribe
                | Cmd::PSubscribe
                | Cmd::Unsubscribe
                | Cmd::PUnsubscribe
                | Cmd::Ping
                | Cmd::Quit
                | Cmd::Reset
        )
    {
        return out.error(&format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ));
    }
    c.last = spec.name;
    let mesh = &sh.mesh;
    match spec.cmd {
        Cmd::Get => {
            if mesh.get_with(&args[1], |v| out.bulk_lent(v)).is_some() {
                c.hits += 1;
            } else {
                c.misses += 1;
                out.null();
            }
        }
        Cmd::Set => set_command(sh, args, out),
        Cmd::Ping => {
            if args.len() > 2 {
                return wrong_args(out, "ping");
            }
            if c.subscribed() && !out.resp3 {
                out.array(2);
                out.bulk(b"pong");
                out.bulk(args.get(1).map(|a| &a[..]).unwrap_or(b""));
            } else if let Some(m) = args.get(1) {
                out.bulk_bytes(m);
            } else {
                out.simple("PONG");
            }
        }
        Cmd::Echo => out.bulk_bytes(&args[1]),
        Cmd::SetNx => match set(sh, &args[1], &args[2], Cond::Nx, Ttl::None) {
            Ok((written, _)) => out.int(written as i64),
            Err(e) => write_error(out, e),
        },
        Cmd::SetEx | Cmd::PSetEx => {
            let Some(t) = int_arg(out, &args[2]) else { return };
            let name = if spec.cmd == Cmd::SetEx { "setex" } else { "psetex" };
            let ms = if spec.cmd == Cmd::SetEx { t.checked_mul(1000) } else { Some(t) };
            let Some(ms) = ms.filter(|&m| m > 0 && (sh.mesh.now_ms() as i64).checked_add(m).is_some()) else {
                return out.error(&format!("ERR invalid expire time in '{name}' command"));
            };
            match set(sh, &args[1], &args[3], Cond::Always, Ttl::Rel(ms as u64)) {
                Ok(_) => out.ok(),
                Err(e) => write_error(out, e),
            }
        }
        Cmd::GetDel => {
            let mut old = None;
            let r = mesh.write_with(copy(&args[1]), |cur, _| {
                old = value_of(cur);
                old.as_ref().map(|_| Slot::Tombstone)
            });
            match r {
                Ok(_) => out.opt_bulk(old.as_ref()),
                Err(e) => write_error(out, e),
            }
        }
        Cmd::Del | Cmd::Unlink => {
            let mut n = 0;
            for k in &args[1..] {
                match mesh.delete(copy(k)) {
                    Ok(existed) => n += existed as i64,
                    Err(e) => return write_error(out, e),
                }
            }
            out.int(n);
        }
        Cmd::Exists | Cmd::Touch => {
            let now = mesh.now_ms();
            let store = mesh.replica().store();
            let n = args[1..].iter().filter(|k| store.get(k, now).is_some()).count();
            out.int(n as i64);
        }
        Cmd::Type => {
            if mesh.get(&args[1]).is_some() {
                out.simple("string")
            } else {
                out.simple("none")
            }
        }
        Cmd::MGet => {
            out.array(args.len() - 1);
            for k in &args[1..] {
                if mesh.get_with(k, |v| out.bulk_lent(v)).is_some() {
                    c.hits += 1;
                } else {
                    c.misses += 1;
                    out.null();
                }
            }
        }
        Cmd::MSet => {
            if args.len() % 2 == 0 {
                return wrong_args(out, "mset");
            }
            for kv in args[1..].chunks_exact(2) {
                if let Err(e) = mesh.put(copy(&kv[0]), copy(&kv[1])) {
                    return write_error(out, e);
                }
            }
            out.ok();
        }
        Cmd::Expire | Cmd::PExpire | Cmd::ExpireAt | Cmd::PExpireAt => expire_command(sh, spec, args, out),
        Cmd::Ttl | Cmd::PTtl | Cmd::ExpireTime | Cmd::PExpireTime => {
            let now = mesh.now_ms();
            let reg = mesh.replica().store().register(&args[1]);
            let Some(slot) = reg.as_ref().map(|r| &r.val).filter(|s| s.visible(now).is_some()) else {
                return out.int(-2);
            };
            let Some(at) = slot.expires_at_ms() else { return out.int(-1) };
            let ms = matches!(spec.cmd, Cmd::PTtl | Cmd::PExpireTime);
            let v = match spec.cmd {
                Cmd::Ttl | Cmd::PTtl => at.saturating_sub(now),
                _ => at,
            } as i64;
            out.int(if ms { v } else { (v + 500) / 1000 });
        }
        Cmd::Persist => {
            let mut done = false;
            let listening = sh.hub.listening();
            let r = mesh.write_with(copy(&args[1]), |cur, stamp| match cur {
                Some(Slot::Value { data, expires_at_ms: Some(_) }) => {
                    done = true;
                    if listening {
                        sh.hub.hint(stamp, Hint::Persist);
                    }
                    Some(Slot::Value { data: data.clone(), expires_at_ms: None })
                }
                _ => None,
            });
            match r {
                Ok(_) => out.int(done as i64),
                Err(e) => write_error(out, e),
            }
        }
        Cmd::DbSize => {
            let st = mesh.replica().store().stats();
            out.int(st.entries.saturating_sub(st.tombstones + st.stubs) as i64);
        }
        Cmd::Info => {
            let text = super::info::info(sh, &args[1..]);
            out.verbatim(&text);
        }
        Cmd::Client => client_command(c, args, out),
        Cmd::Command => command_command(args, out),
        Cmd::Select => {
            let Some(db) = int_arg(out, &args[1]) else { return };
            if db == 0 {
                out.ok()
            } else {
                out.error("ERR DB index is out of range")
            }
        }
        Cmd::Quit => {
            out.ok();
            c.close = true;
        }
        Cmd::Reset => {
            unsubscribe_all(sh, c, out, None);
            out.resp3 = false;
            c.outbox.set_resp3(false);
            c.name = None;
            c.authed = sh.config.requirepass.is_none();
            out.simple("RESET");
        }
        Cmd::FlushAll | Cmd::FlushDb => {
            if args.len() > 2 || (args.len() == 2 && !eq(&args[1], "async") && !eq(&args[1], "sync")) {
                return out.error(SYNTAX);
            }
            match mesh.flush_all() {
                Ok(()) => out.ok(),
                Err(e) => write_error(out, e),
            }
        }
        Cmd::Auth => {
            if args.len() > 3 {
                return out.error(SYNTAX);
            }
            if args.len() == 2 && sh.config.requirepass.is_none() {
                return out.error(
                    "ERR AUTH <password> called without any password configured for the default user. \
                     Are you sure your configuration is correct?",
                );
            }
            let (user, pass) = if args.len() == 2 { (&b"default"[..], &args[1]) } else { (&args[1][..], &args[2]) };
            if check_auth(sh, user, pass) {
                c.authed = true;
                out.ok();
            } else {
                out.error("WRONGPASS invalid username-password pair or user is disabled.");
            }
        }
        Cmd::Hello => hello_command(sh, c, args, out),
        Cmd::Config => config_command(sh, args, out),
        Cmd::Time => {
            let d = Duration::from_millis(mesh.now_ms());
            out.array(2);
            out.bulk(d.as_secs().to_string().as_bytes());
            out.bulk(d.subsec_micros().to_string().as_bytes());
        }
        Cmd::Subscribe | Cmd::PSubscribe => {
            let pattern = spec.cmd == Cmd::PSubscribe;
            c.outbox.set_resp3(out.resp3);
            for ch in &args[1..] {
                let ch = copy(ch);
                if pattern {
                    if sh.hub.psubscribe(c.id, &c.outbox, ch.clone()) {
                        c.patterns.insert(ch.clone());
                    }
                } else if sh.hub.subscribe(c.id, &c.outbox, ch.clone()) {
                    c.channels.insert(ch.clone());
                }
                let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
                notify::confirm(out, kind, Some(&ch), c.subscriptions());
            }
        }
        Cmd::Unsubscribe | Cmd::PUnsubscribe => {
            let pattern = spec.cmd == Cmd::PUnsubscribe;
            if args.len() == 1 {
                unsubscribe_all(sh, c, out, Some(pattern));
            } else {
                for ch in &args[1..] {
                    if pattern {
                        c.patterns.remove(ch);
                        sh.hub.punsubscribe(c.id, ch);
                    } else {
                        c.channels.remove(ch);
                        sh.hub.unsubscribe(c.id, ch);
                    }
                    let kind: &[u8] = if pattern { b"punsubscribe" } else { b"unsubscribe" };
                    notify::confirm(out, kind, Some(ch), c.subscriptions());
                }
            }
        }
    }
}

/// Copies an argument out of the read buffer, so that a stored key or
/// value does not pin the whole buffer it arrived in.
fn copy(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

fn value_of(slot: Option<&Slot>) -> Option<Bytes> {
    match slot {
        Some(Slot::Value { data, .. }) => Some(data.clone()),
        _ => None,
    }
}

/// UNSUBSCRIBE / PUNSUBSCRIBE without arguments (`Some(pattern)`), or both
/// for RESET (`None`, no replies).
fn unsubscribe_all(sh: &Shared, c: &mut Client, out: &mut Out, which: Option<bool>) {
    if which != Some(true) {
        let chans: Vec<Bytes> = c.channels.drain().collect();
        for ch in &chans {
            sh.hub.unsubscribe(c.id, ch);
        }
        if which.is_some() {
            if chans.is_empty() {
                notify::confirm(out, b"unsubscribe", None, c.subscriptions());
            }
            for (i, ch) in chans.iter().enumerate() {
                notify::confirm(out, b"unsubscribe", Some(ch), c.subscriptions() + chans.len() - i - 1);
            }
        }
    }
    if which != Some(false) {
        let pats: Vec<Bytes> = c.patterns.drain().collect();
        for p in &pats {
            sh.hub.punsubscribe(c.id, p);
        }
        if which.is_some() {
            if pats.is_empty() {
                notify::confirm(out, b"punsubscribe", None, c.subscriptions());
            }
            for (i, p) in pats.iter().enumerate() {
                notify::confirm(out, b"punsubscribe", Some(p), c.subscriptions() + pats.len() - i - 1);
            }
        }
    }
}

fn check_auth(sh: &Shared, user: &[u8], pass: &[u8]) -> bool {
    if user != b"default" {
        return false;
    }
    match &sh.config.requirepass {
        // The default user has no password: anything goes, as in Redis.
        None => true,
        Some(p) => constant_time_eq(p.as_bytes(), pass),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A SET's condition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cond {
    Always,
    Nx,
    Xx,
}

/// A SET's expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ttl {
    None,
    Keep,
    /// Milliseconds after the write's stamp.
    Rel(u64),
    /// Absolute Unix milliseconds.
    Abs(u64),
}

/// SET and its relatives as one atomic local read-modify-write. Returns
/// whether it wrote, and the value that was visible before.
fn set(sh: &Shared, key: &Bytes, value: &Bytes, cond: Cond, ttl: Ttl) -> Result<(bool, Option<Bytes>), MeshError> {
    let (mut written, mut old) = (false, None);
    let listening = sh.hub.listening();
    let value = copy(value);
    sh.mesh.write_with(copy(key), |cur, stamp| {
        old = value_of(cur);
        match cond {
            Cond::Nx if cur.is_some() => return None,
            Cond::Xx if cur.is_none() => return None,
            _ => {}
        }
        written = true;
        let now = stamp.physical_ms();
        let expires_at_ms = match ttl {
            Ttl::None => None,
            Ttl::Keep => cur.and_then(Slot::expires_at_ms),
            Ttl::Rel(ms) => Some(now.saturating_add(ms)),
            Ttl::Abs(at) if at <= now => return Some(Slot::Tombstone),
            Ttl::Abs(at) => Some(at),
        };
        if listening && expires_at_ms.is_some() && ttl != Ttl::Keep {
            sh.hub.hint(stamp, Hint::SetWithTtl);
        }
        Some(Slot::Value { data: value, expires_at_ms })
    })?;
    Ok((written, old))
}

fn set_command(sh: &Shared, args: &[Bytes], out: &mut Out) {
    let (mut cond, mut ttl, mut get) = (Cond::Always, Ttl::None, false);
    let mut expire: Option<(&[u8], &Bytes)> = None;
    let mut j = 3;
    while j < args.len() {
        let a = &args[j][..];
        let next = args.get(j + 1);
        if eq(a, "nx") && cond != Cond::Xx {
            cond = Cond::Nx;
        } else if eq(a, "xx") && cond != Cond::Nx {
            cond = Cond::Xx;
        } else if eq(a, "get") {
            get = true;
        } else if eq(a, "keepttl") && expire.is_none() {
            ttl = Ttl::Keep;
        } else if let Some(v) = next.filter(|_| {
            (eq(a, "ex") || eq(a, "px") || eq(a, "exat") || eq(a, "pxat")) && ttl != Ttl::Keep && expire.is_none()
        }) {
            expire = Some((a, v));
            j += 1;
        } else {
            return out.error(SYNTAX);
        }
        j += 1;
    }
    if let Some((unit, v)) = expire {
        let Some(n) = int_arg(out, v) else { return };
        let bad = || "ERR invalid expire time in 'set' command";
        if n <= 0 {
            return out.error(bad());
        }
        let secs = eq(unit, "ex") || eq(unit, "exat");
        let Some(ms) = (if secs { n.checked_mul(1000) } else { Some(n) }) else { return out.error(bad()) };
        let relative = eq(unit, "ex") || eq(unit, "px");
        if relative && (sh.mesh.now_ms() as i64).checked_add(ms).is_none() {
            return out.error(bad());
        }
        ttl = if relative { Ttl::Rel(ms as u64) } else { Ttl::Abs(ms as u64) };
    }
    match set(sh, &args[1], &args[2], cond, ttl) {
        Ok((written, old)) => {
            if get {
                out.opt_bulk(old.as_ref())
            } else if written {
                out.ok()
            } else {
                out.null()
            }
        }
        Err(e) => write_error(out, e),
    }
}

fn expire_command(sh: &Shared, spec: &Spec, args: &[Bytes], out: &mut Out) {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for a in &args[3..] {
        if eq(a, "nx") {
            nx = true;
        } else if eq(a, "xx") {
            xx = true;
        } else if eq(a, "gt") {
            gt = true;
        } else if eq(a, "lt") {
            lt = true;
        } else {
            return out.error(&format!("ERR Unsupported option {}", lossy(a)));
        }
    }
    if nx && (xx || gt || lt) {
        return out.error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return out.error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(n) = int_arg(out, &args[2]) else { return };
    let secs = matches!(spec.cmd, Cmd::Expire | Cmd::ExpireAt);
    let relative = matches!(spec.cmd, Cmd::Expire | Cmd::PExpire);
    let bad = format!("ERR invalid expire time in '{}' command", spec.name);
    let Some(ms) = (if secs { n.checked_mul(1000) } else { Some(n) }) else { return out.error(&bad) };
    if relative && (sh.mesh.now_ms() as i64).checked_add(ms).is_none() {
        return out.error(&bad);
    }
    let mut done = false;
    let listening = sh.hub.listening();
    let r = sh.mesh.write_with(copy(&args[1]), |cur, stamp| {
        let Some(Slot::Value { data, expires_at_ms }) = cur else { return None };
        let now = stamp.physical_ms() as i64;
        let when = if relative { now.saturating_add(ms) } else { ms };
        let current = (*expires_at_ms).map(|e| e as i64);
        if (nx && current.is_some())
            || (xx && current.is_none())
            || (gt && current.is_none_or(|c| when <= c))
            || (lt && current.is_some_and(|c| when >= c))
        {
            return None;
        }
        done = true;
        if when <= now {
            return Some(Slot::Tombstone);
        }
        if listening {
            sh.hub.hint(stamp, Hint::Expire);
        }
        Some(Slot::Value { data: data.clone(), expires_at_ms: Some(when as u64) })
    });
    match r {
        Ok(_) => out.int(done as i64),
        Err(e) => write_error(out, e),
    }
}

fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client_command(c: &mut Client, args: &[Bytes], out: &mut Out) {
    let sub = &args[1];
    let argc = args.len();
    if eq(sub, "id") && argc == 2 {
        out.int(c.id as i64);
    } else if eq(sub, "getname") && argc == 2 {
        out.opt_bulk(c.name.as_ref());
    } else if eq(sub, "setname") {
        if argc != 3 {
            return wrong_args(out, "client|setname");
        }
        if !valid_name(&args[2]) {
            return out.error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        c.name = (!args[2].is_empty()).then(|| copy(&args[2]));
        out.ok();
    } else if eq(sub, "setinfo") {
        if argc != 4 {
            return wrong_args(out, "client|setinfo");
        }
        let v = &args[3];
        let slot = if eq(&args[2], "lib-name") {
            &mut c.lib_name
        } else if eq(&args[2], "lib-ver") {
            &mut c.lib_ver
        } else {
            return out.error(&format!("ERR Unrecognized option '{}'", lossy(&args[2])));
        };
        if !valid_name(v) {
            return out.error(&format!(
                "ERR {} cannot contain spaces, newlines or special characters.",
                lossy(&args[2]).to_ascii_lowercase()
            ));
        }
        *slot = (!v.is_empty()).then(|| copy(v));
        out.ok();
    } else if eq(sub, "info") && argc == 2 {
        out.verbatim(&client_info(c, out.resp3));
    } else if (eq(sub, "no-evict") || eq(sub, "no-touch")) && argc == 3 {
        if eq(&args[2], "on") || eq(&args[2], "off") {
            out.ok();
        } else {
            out.error(SYNTAX);
        }
    } else if eq(sub, "help") && argc == 2 {
        help(
            out,
            "CLIENT",
            &[
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "SETINFO <option> <value>",
                "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
                "NO-EVICT (ON|OFF)",
                "    Accepted for compatibility; meshcache never evicts clients.",
                "NO-TOUCH (ON|OFF)",
                "    Accepted for compatibility.",
            ],
        );
    } else if ["id", "getname", "info", "help", "no-evict", "no-touch"].iter().any(|s| eq(sub, s)) {
        wrong_args(out, &format!("client|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "CLIENT");
    }
}

fn client_info(c: &Client, resp3: bool) -> String {
    let s = |b: &Option<Bytes>| b.as_ref().map(|b| lossy(b).into_owned()).unwrap_or_default();
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db=0 sub={} psub={} ssub=0 multi=-1 \
         watch=0 cmd=client|info user=default lib-name={} lib-ver={} resp={}\n",
        c.id,
        c.addr,
        c.laddr,
        s(&c.name),
        c.created.elapsed().as_secs(),
        if c.subscribed() { "P" } else { "N" },
        c.channels.len(),
        c.patterns.len(),
        s(&c.lib_name),
        s(&c.lib_ver),
        if resp3 { 3 } else { 2 },
    )
}

fn help(out: &mut Out, cmd: &str, lines: &[&str]) {
    out.array(lines.len() + 3);
    out.simple(&format!("{cmd} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"));
    for l in lines {
        out.simple(l);
    }
    out.simple("HELP");
    out.simple("    Print this help.");
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
                "LIST",
                "    Return the names of all commands.",
            ],
        );
    } else if eq(sub, "count") || eq(sub, "help") {
        wrong_args(out, &format!("command|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "COMMAND");
    }
}

fn hello_command(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) {
    let mut ver = None;
    if let Some(v) = args.get(1) {
        match parse_i64(v) {
            None => return out.error("ERR Protocol version is not an integer or out of range"),
            Some(v) if !(2..=3).contains(&v) => return out.error("NOPROTO unsupported protocol version"),
            Some(v) => ver = Some(v),
        }
    }
    let (mut auth, mut setname) = (None, None);
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - j - 1;
        if eq(&args[j], "auth") && more >= 2 {
            auth = Some((&args[j + 1], &args[j + 2]));
            j += 3;
        } else if eq(&args[j], "setname") && more >= 1 {
            setname = Some(&args[j + 1]);
            j += 2;
        } else {
            return out.error(&format!("ERR Syntax error in HELLO option '{}'", lossy(&args[j])));
        }
    }
    if let Some((user, pass)) = auth {
        if !check_auth(sh, user, pass) {
            return out.error("WRONGPASS invalid username-password pair or user is disabled.");
        }
        c.authed = true;
    }
    if !c.authed {
        return out.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
             AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
             version at the same time",
        );
    }
    if let Some(name) = setname {
        if !valid_name(name) {
            return out.error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        c.name = (!name.is_empty()).then(|| copy(name));
    }
    if let Some(v) = ver {
        out.resp3 = v == 3;
        c.outbox.set_resp3(out.resp3);
    }
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(super::info::REDIS_VERSION.as_bytes());
    out.bulk(b"proto");
    out.int(if out.resp3 { 3 } else { 2 });
    out.bulk(b"id");
    out.int(c.id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
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
    ]
}

fn config_command(sh: &Shared, args: &[Bytes], out: &mut Out) {
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
        if args.len() < 4 || args.len() % 2 != 0 {
            return wrong_args(out, "config|set");
        }
        // Every value is checked before any is applied, so that a bad one
        // leaves the configuration as it was (as Redis does).
        let mut flags = None;
        let mut max_bytes = None;
        let mut policy = None;
        let mut samples = None;
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
        let store = sh.mesh.replica().store();
        if let Some(p) = policy {
            store.set_policy(p);
        }
        if let Some(n) = samples {
            store.set_samples(n).expect("checked above");
        }
        if let Some(b) = max_bytes {
            store.set_max_bytes(std::num::NonZeroUsize::new(b), sh.mesh.now_ms());
        }
        out.ok();
    } else if eq(sub, "resetstat") && args.len() == 2 {
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
                "    maxmemory-policy, maxmemory-samples).",
                "RESETSTAT",
                "    Accepted; statistics are not reset.",
            ],
        );
    } else if ["resetstat", "rewrite", "help"].iter().any(|s| eq(sub, s)) {
        wrong_args(out, &format!("config|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "CONFIG");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut names = HashSet::new();
        for s in SPECS {
            assert!(names.insert(s.name), "duplicate {}", s.name);
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert!(s.arity != 0);
        }
        assert_eq!(lookup(b"GeT").map(|s| s.name), Some("get"));
        assert!(lookup(b"nosuch").is_none());
        assert!(arity_ok(-3, 5) && !arity_ok(-3, 2) && arity_ok(2, 2) && !arity_ok(2, 3));
    }
}
