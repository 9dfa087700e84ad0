//! SLOWLOG GET [count], LEN, RESET and HELP, over `resp::slowlog`.

use bytes::Bytes;

use super::{eq, help_ending, lossy, unknown_subcommand, wrong_args, Cx};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;

/// Entries SLOWLOG GET answers without a count.
const DEFAULT_COUNT: usize = 10;

pub(super) fn slowlog(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let log = &cx.sh.slowlog;
    let sub = &args[1];
    match args.len() {
        2 if eq(sub, "get") => entries(out, log.newest(Some(DEFAULT_COUNT))),
        3 if eq(sub, "get") => match parse_i64(&args[2]) {
            Some(-1) => entries(out, log.newest(None)),
            Some(n) if n >= 0 => entries(out, log.newest(Some(usize::try_from(n).unwrap_or(usize::MAX)))),
            _ => out.error("ERR count should be greater than or equal to -1"),
        },
        2 if eq(sub, "len") => out.int(log.len() as i64),
        2 if eq(sub, "reset") => {
            log.reset();
            out.ok()
        }
        2 if eq(sub, "help") => help_ending(
            out,
            "SLOWLOG",
            &[
                "GET [<count>]",
                "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                "    Entries are made of:",
                "    id, timestamp, time in microseconds, arguments array, client IP and port,",
                "    client name",
                "LEN",
                "    Return the length of the slowlog.",
                "RESET",
                "    Reset the slowlog.",
            ],
            "    Prints this help.",
        ),
        _ if ["len", "reset", "help"].iter().any(|s| eq(sub, s)) => {
            wrong_args(out, &format!("slowlog|{}", lossy(sub).to_ascii_lowercase()))
        }
        _ if eq(sub, "get") => out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
            lossy(&sub[..sub.len().min(128)])
        )),
        _ => unknown_subcommand(out, sub, "SLOWLOG"),
    }
}

/// The entries as Redis writes them: id, Unix time, microseconds, the
/// arguments, the client's address and name.
fn entries(out: &mut Out, entries: Vec<crate::resp::slowlog::Entry>) {
    out.array(entries.len());
    for e in entries {
        out.array(6);
        out.int(e.id as i64);
        out.int(e.unix_secs as i64);
        out.int(e.micros as i64);
        out.array(e.args.len());
        for a in &e.args {
            out.bulk(a);
        }
        out.bulk(e.addr.as_bytes());
        out.bulk(&e.name);
    }
}
