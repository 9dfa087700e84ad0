//! Connection commands: PING, ECHO, SELECT, QUIT, RESET, AUTH, HELLO,
//! CLIENT.

use bytes::Bytes;

use super::pubsub::unsubscribe_all;
use super::{copy, eq, help, int_arg, lossy, unknown_subcommand, wrong_args, Cx, SYNTAX};
use crate::resp::client::Client;
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::resp::Shared;

pub(super) fn ping(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
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

pub(super) fn echo(_cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    out.bulk_bytes(&args[1])
}

/// SELECT: there is one database, 0.
pub(super) fn select(_cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let Some(db) = int_arg(out, &args[1]) else { return };
    if db == 0 {
        out.ok()
    } else {
        out.error("ERR DB index is out of range")
    }
}

pub(super) fn quit(cx: &mut Cx<'_>, _args: &[Bytes], out: &mut Out) {
    out.ok();
    cx.c.close = true;
}

pub(super) fn reset(cx: &mut Cx<'_>, _args: &[Bytes], out: &mut Out) {
    let (sh, c) = (cx.sh, &mut *cx.c);
    unsubscribe_all(sh, c, out, None);
    out.resp3 = false;
    c.outbox.set_resp3(false);
    c.name = None;
    c.authed = sh.config.requirepass.is_none();
    out.simple("RESET");
}

pub(super) fn auth(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
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

pub(super) fn hello(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    hello_command(cx.sh, cx.c, args, out)
}

pub(super) fn client(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    client_command(cx.c, args, out)
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
