//! MEMORY USAGE, PURGE and HELP.
//!
//! USAGE answers what the memory bound counts for the key: its key and
//! value bytes and [`ENTRY_OVERHEAD`] (the record, the index slot and the
//! blob's header and rounding, as the table keeps them: ALGORITHM.md, "The
//! table"). Redis estimates its own way, so the two differ by a few bytes
//! for the same key. STATS, DOCTOR and MALLOC-STATS, whose reports are of
//! Redis's internals, are not served: INFO memory has the process's
//! figures.

use bytes::Bytes;

use super::{eq, help_ending, unknown_subcommand, wrong_args, Cx, NOT_INT, SYNTAX};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::store::ENTRY_OVERHEAD;

pub(super) fn memory(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sub = &args[1];
    if eq(sub, "usage") {
        if args.len() < 3 {
            return wrong_args(out, "memory|usage");
        }
        // SAMPLES counts the elements of nested values Redis samples; a
        // string has none, but the option is checked as Redis checks it.
        let mut rest = args[3..].iter();
        while let Some(opt) = rest.next() {
            match rest.next() {
                Some(n) if eq(opt, "samples") => match parse_i64(n) {
                    None => return out.error(NOT_INT),
                    Some(n) if n < 0 => return out.error(SYNTAX),
                    Some(_) => {}
                },
                _ => return out.error(SYNTAX),
            }
        }
        let key = &args[2];
        match cx.db.get_with(key, |v| v.len()) {
            Some(len) => out.int((key.len() + len + ENTRY_OVERHEAD) as i64),
            None => out.null(),
        }
    } else if eq(sub, "purge") {
        if args.len() != 2 {
            return wrong_args(out, "memory|purge");
        }
        // Freed memory goes back to the system as the allocator decides;
        // Redis answers OK without jemalloc too.
        out.ok()
    } else if eq(sub, "help") {
        if args.len() != 2 {
            return wrong_args(out, "memory|help");
        }
        help_ending(
            out,
            "MEMORY",
            &[
                "PURGE",
                "    Attempt to purge dirty pages for reclamation by the allocator.",
                "USAGE <key> [SAMPLES <count>]",
                "    Return memory in bytes used by <key> and its value. Nested values are",
                "    sampled up to <count> times (default: 5, 0 means sample all).",
                "    (The bytes the memory bound counts for the key.)",
            ],
            "    Prints this help.",
        )
    } else {
        unknown_subcommand(out, sub, "MEMORY")
    }
}
