//! Connection commands: PING, ECHO, SELECT, QUIT, RESET, AUTH, HELLO,
//! CLIENT, WAIT.

use bytes::Bytes;

use super::pubsub::unsubscribe_all;
use super::{copy, eq, help, int_arg, lossy, name_at, unknown_subcommand, wrong_args, Cx, SYNTAX};
use crate::resp::client::{Client, Handle, View};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::resp::Shared;

pub(super) fn ping(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if args.len() > 2 {
        return wrong_args(out, "ping");
    }
    if cx.c.subscribed() && !out.resp3 {
        out.array(2);
        out.bulk(b"pong");
        out.bulk(args.get(1).map(|a| &a[..]).unwrap_or(b""));
    } else if let Some(m) = args.get(1) {
        out.bulk_bytes(m);
    } else {
        out.simple("PONG");
    }
}

pub(super) fn echo(_cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    out.bulk_bytes(&args[1])
}

/// SELECT: there is one database, 0.
pub(super) fn select(_cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(db) = int_arg(out, &args[1]) else { return };
    if db == 0 {
        out.ok()
    } else {
        out.error("ERR DB index is out of range")
    }
}

pub(super) fn quit(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    out.ok();
    cx.c.close = true;
}

pub(super) fn reset(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    unsubscribe_all(sh, c, out, None);
    out.resp3 = false;
    c.outbox.set_resp3(false);
    c.name = None;
    c.publish_names();
    // As Redis's RESET: replies back on (a SKIP already in force still
    // drops RESET's own reply, as there).
    c.reply_off = false;
    c.authed = sh.config.requirepass.is_none();
    c.multi = None;
    c.watched.clear();
    sh.tracking.disable(c.id);
    c.tracking = None;
    c.caching = false;
    out.simple("RESET");
}

pub(super) fn auth(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sh = cx.sh;
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
        cx.c.authed = true;
        out.ok();
    } else {
        out.error("WRONGPASS invalid username-password pair or user is disabled.");
    }
}

pub(super) fn hello(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    hello_command(cx.sh, cx.c, args, out)
}

pub(super) fn client(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    client_command(cx.sh, cx.c, args, out)
}

/// WAIT numreplicas timeout: 0 at once. No peer acknowledges a write to
/// the one that took it: writes are pushed, and anti-entropy repairs what
/// a push missed, so there is no count of acknowledgements to wait for and
/// blocking would only delay the client. The arguments are still checked
/// as Redis checks them.
pub(super) fn wait(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if int_arg(out, &args[1]).is_none() {
        return;
    }
    let Some(timeout) = parse_i64(&args[2]) else {
        return out.error("ERR timeout is not an integer or out of range");
    };
    if timeout < 0 {
        return out.error("ERR timeout is negative");
    }
    // Redis adds the timeout to the time now, and refuses one that would
    // overflow.
    if timeout > 0 && timeout > i64::MAX - cx.sh.mesh.now_ms() as i64 {
        return out.error("ERR timeout is out of range");
    }
    out.int(0)
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
        c.publish_names();
    }
    if let Some(v) = ver {
        out.resp3 = v == 3;
        c.outbox.set_resp3(out.resp3);
    }
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(crate::resp::info::REDIS_VERSION.as_bytes());
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

fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client_command(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) {
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
        c.publish_names();
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
        c.publish_names();
        out.ok();
    } else if eq(sub, "info") && argc == 2 {
        out.verbatim(&client_line(&c.view(out.resp3), "client|info"));
    } else if eq(sub, "list") {
        client_list(sh, c, args, out);
    } else if eq(sub, "kill") && argc >= 3 {
        client_kill(sh, c, args, out);
    } else if eq(sub, "reply") && argc == 3 {
        client_reply(c, &args[2], out);
    } else if eq(sub, "tracking") && argc >= 3 {
        super::tracking::tracking(sh, c, args, out);
    } else if eq(sub, "caching") && argc >= 3 {
        super::tracking::caching(c, args, out);
    } else if eq(sub, "getredir") && argc == 2 {
        super::tracking::getredir(c, out);
    } else if eq(sub, "trackinginfo") && argc == 2 {
        super::tracking::trackinginfo(sh, c, out);
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
                "KILL <ip:port>",
                "    Kill connection made from <ip:port>.",
                "KILL <option> <value> [<option> <value> [...]]",
                "    Kill connections. Options are:",
                "    * ADDR <ip:port>",
                "      Kill connections made from the specified address",
                "    * LADDR <ip:port>",
                "      Kill connections made to specified local address",
                "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
                "      Kill connections by type.",
                "    * USER <username>",
                "      Kill connections authenticated by <username>.",
                "    * SKIPME (YES|NO)",
                "      Skip killing current connection (default: yes).",
                "    * MAXAGE <maxage>",
                "      Kill connections older than the specified age.",
                "    * ID <client-id>",
                "      Kill connections by client id.",
                "LIST [options ...]",
                "    Return information about client connections. Options:",
                "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
                "      Return clients of specified type.",
                "    * ID <client-id> [<client-id> ...]",
                "      Return clients of specified IDs only.",
                "REPLY (ON|OFF|SKIP)",
                "    Control the replies sent to the current connection.",
                "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]]",
                "         [OPTIN] [OPTOUT] [NOLOOP]",
                "    Control server assisted client side caching.",
                "CACHING (YES|NO)",
                "    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
                "GETREDIR",
                "    Return the client ID we are redirecting to when tracking is enabled.",
                "TRACKINGINFO",
                "    Report tracking status for the current connection.",
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
    } else if [
        "id",
        "getname",
        "info",
        "help",
        "no-evict",
        "no-touch",
        "kill",
        "reply",
        "tracking",
        "caching",
        "getredir",
        "trackinginfo",
    ]
    .iter()
    .any(|s| eq(sub, s))
    {
        wrong_args(out, &format!("client|{}", lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(out, sub, "CLIENT");
    }
}

/// One line of CLIENT INFO and CLIENT LIST, with Redis's fields (those
/// that mean nothing here at their idle values).
fn client_line(v: &View, cmd: &str) -> String {
    let s = |b: &Option<Bytes>| b.as_ref().map(|b| lossy(b).into_owned()).unwrap_or_default();
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db=0 sub={} psub={} ssub={} multi={} \
         watch={} cmd={cmd} user=default redir={} resp={} lib-name={} lib-ver={}\n",
        v.id,
        v.addr,
        v.laddr,
        s(&v.names.name),
        v.age,
        flags(v),
        v.channels,
        v.patterns,
        v.shard_channels,
        v.multi,
        v.watch,
        v.tracking.1,
        if v.resp3 { 3 } else { 2 },
        s(&v.names.lib_name),
        s(&v.names.lib_ver),
    )
}

/// CLIENT LIST's flags, in Redis's order: `P` subscribed, `x` in MULTI,
/// `t` tracking, `R` its redirect broken, `B` in BCAST mode; `N` none.
fn flags(v: &View) -> String {
    let (tracking, broken, bcast) = v.tracking_flags();
    let mut f = String::new();
    for (on, c) in [
        (v.channels + v.patterns + v.shard_channels > 0, 'P'),
        (v.multi >= 0, 'x'),
        (tracking, 't'),
        (broken, 'R'),
        (bcast, 'B'),
    ] {
        if on {
            f.push(c);
        }
    }
    if f.is_empty() {
        f.push('N');
    }
    f
}

/// A client type for CLIENT LIST TYPE and CLIENT KILL TYPE: `Some(true)`
/// for pubsub, `Some(false)` for normal, `None` for the replication types
/// (no client here is a master or a replica).
fn client_type(out: &mut Out, name: &[u8]) -> Result<Option<bool>, ()> {
    if eq(name, "normal") {
        Ok(Some(false))
    } else if eq(name, "pubsub") {
        Ok(Some(true))
    } else if ["master", "replica", "slave"].iter().any(|t| eq(name, t)) {
        Ok(None)
    } else {
        out.error(&format!("ERR Unknown client type '{}'", lossy(name)));
        Err(())
    }
}

/// A line for a client in the registry; the caller's own from its live
/// state, as Redis shows the caller running CLIENT LIST.
fn line_of(c: &Client, h: &Handle, resp3: bool) -> String {
    if h.id == c.id {
        client_line(&c.view(resp3), "client|list")
    } else {
        let last = h.last.load(std::sync::atomic::Ordering::Relaxed);
        client_line(&h.view(), name_at(last).unwrap_or("NULL"))
    }
}

/// CLIENT LIST [TYPE type | ID id ...].
fn client_list(sh: &Shared, c: &Client, args: &[Bytes], out: &mut Out) {
    let mut text = String::new();
    if args.len() == 4 && eq(&args[2], "type") {
        let Ok(ty) = client_type(out, &args[3]) else { return };
        for h in sh.registry.all() {
            if ty == Some(h.subscribed()) {
                text.push_str(&line_of(c, &h, out.resp3));
            }
        }
    } else if args.len() > 3 && eq(&args[2], "id") {
        // In the order asked, as Redis does (an id given twice is listed
        // twice).
        let mut ids = Vec::with_capacity(args.len() - 3);
        for a in &args[3..] {
            match parse_i64(a) {
                Some(id) => ids.push(id),
                None => return out.error("ERR Invalid client ID"),
            }
        }
        for id in ids {
            if let Some(h) = u64::try_from(id).ok().and_then(|id| sh.registry.get(id)) {
                text.push_str(&line_of(c, &h, out.resp3));
            }
        }
    } else if args.len() == 2 {
        for h in sh.registry.all() {
            text.push_str(&line_of(c, &h, out.resp3));
        }
    } else {
        return out.error(SYNTAX);
    }
    out.verbatim(&text);
}

/// CLIENT KILL addr:port (which answers OK, or an error if no client has
/// that address, and may kill the caller), or CLIENT KILL with filters
/// (which answers how many were killed, skipping the caller by default).
fn client_kill(sh: &Shared, c: &mut Client, args: &[Bytes], out: &mut Out) {
    let old_form = args.len() == 3;
    let (mut addr, mut laddr, mut ty, mut id, mut max_age) = (None, None, None, None, None);
    let mut skipme = !old_form;
    if old_form {
        addr = Some(&args[2]);
    } else {
        for kv in args[2..].chunks(2) {
            let [opt, v] = kv else { return out.error(SYNTAX) };
            if eq(opt, "id") {
                match parse_i64(v).filter(|&n| n > 0) {
                    Some(n) => id = Some(n as u64),
                    None => return out.error("ERR client-id should be greater than 0"),
                }
            } else if eq(opt, "type") {
                let Ok(t) = client_type(out, v) else { return };
                ty = Some(t);
            } else if eq(opt, "addr") {
                addr = Some(v);
            } else if eq(opt, "laddr") {
                laddr = Some(v);
            } else if eq(opt, "maxage") {
                // Redis 7.4: connections older than this many seconds.
                let Some(n) = int_arg(out, v) else { return };
                max_age = Some(n);
            } else if eq(opt, "user") {
                // The default user is the only one.
                if &v[..] != b"default" {
                    return out.error(&format!("ERR No such user '{}'", lossy(v)));
                }
            } else if eq(opt, "skipme") {
                if eq(v, "yes") {
                    skipme = true;
                } else if eq(v, "no") {
                    skipme = false;
                } else {
                    return out.error(SYNTAX);
                }
            } else {
                return out.error(SYNTAX);
            }
        }
    }
    let matches = |h: &Handle| {
        addr.is_none_or(|a| h.addr.to_string().as_bytes() == &a[..])
            && laddr.is_none_or(|a| h.laddr.to_string().as_bytes() == &a[..])
            && ty.is_none_or(|t| t == Some(h.subscribed()))
            && id.is_none_or(|id| id == h.id)
            && max_age.is_none_or(|m| m <= 0 || h.age_secs() as i64 > m)
    };
    let mut killed = 0;
    for h in sh.registry.all().iter().filter(|h| matches(h)) {
        if h.id == c.id {
            if skipme {
                continue;
            }
            // After this reply, as Redis closes the caller.
            c.close = true;
        } else {
            h.kill();
            // Gone from CLIENT LIST at once, as in Redis, though its task
            // ends a moment later.
            sh.registry.remove(h.id);
        }
        killed += 1;
    }
    if !old_form {
        out.int(killed);
    } else if killed == 0 {
        out.error("ERR No such client");
    } else {
        out.ok();
    }
}

/// CLIENT REPLY ON|OFF|SKIP. OFF and SKIP answer nothing (their reply
/// would be dropped anyway); the connection drops the replies while
/// `Client::quiet` holds.
fn client_reply(c: &mut Client, mode: &[u8], out: &mut Out) {
    if eq(mode, "on") {
        c.reply_on();
        out.ok();
    } else if eq(mode, "off") {
        c.reply_off = true;
    } else if eq(mode, "skip") {
        if !c.reply_off {
            c.skip_next = true;
        }
    } else {
        out.error(SYNTAX);
    }
}
