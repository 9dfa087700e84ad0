//! Keyspace commands: DEL, EXISTS, TYPE, DBSIZE, FLUSHALL, KEYS, SCAN,
//! RANDOMKEY, RENAME, RENAMENX, COPY, OBJECT.

use bytes::Bytes;

use super::{copy, eq, help, int_arg, unknown_subcommand, write_error, wrong_args, Cx, Db, SYNTAX};
use crate::resp::notify::{glob_match, Hint, Hub};
use crate::resp::parse::{parse_cursor, parse_i64};
use crate::resp::reply::Out;
use crate::store::Slot;

/// DEL and UNLINK (the same here: nothing is freed in the background).
/// A key named twice is deleted once: the second delete could find nothing
/// in Redis, which runs the command at once, and here it would write (and
/// replicate, and notify) a second delete.
pub(super) fn del(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let mut n = 0;
    let mut named = std::collections::HashSet::new();
    for k in args[1..].iter().filter(|k| args.len() == 2 || named.insert(&k[..])) {
        match cx.db.delete(copy(k)) {
            Ok(existed) => n += existed as i64,
            Err(e) => return write_error(out, e),
        }
    }
    out.int(n);
}

/// EXISTS and TOUCH: how many of the keys are visible (a key named twice
/// counts twice, as in Redis).
pub(super) fn exists(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let n = args[1..].iter().filter(|k| cx.db.get_with(k, |_| ()).is_some()).count();
    out.int(n as i64);
}

pub(super) fn type_of(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if cx.db.get_with(&args[1], |_| ()).is_some() {
        out.simple("string")
    } else {
        out.simple("none")
    }
}

pub(super) fn dbsize(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    out.int(cx.db.dbsize() as i64);
}

/// FLUSHALL and FLUSHDB: mesh-wide.
pub(super) fn flush(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    if args.len() > 2 || (args.len() == 2 && !eq(&args[1], "async") && !eq(&args[1], "sync")) {
        return out.error(SYNTAX);
    }
    match cx.sh.mesh.invalidate_all() {
        Ok(()) => out.ok(),
        Err(e) => write_error(out, e),
    }
}

/// KEYS pattern: every visible key matching Redis's glob.
pub(super) fn keys(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let all = args[1][..] == *b"*";
    let keys = cx.db.keys(|k| all || glob_match(&args[1], k));
    out.array(keys.len());
    for k in &keys {
        out.bulk(k);
    }
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. The cursor is
/// the next digest bucket to visit (`Store::scan`): a key present for the
/// whole scan is returned, whatever is written or evicted meanwhile.
pub(super) fn scan(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(cursor) = parse_cursor(&args[1]) else {
        return out.error("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut strings) = (None, 10usize, true);
    let mut j = 2;
    while j < args.len() {
        let Some(v) = args.get(j + 1) else { return out.error(SYNTAX) };
        if eq(&args[j], "count") {
            let Some(n) = int_arg(out, v) else { return };
            if n < 1 {
                return out.error(SYNTAX);
            }
            count = n as usize;
        } else if eq(&args[j], "match") {
            pattern = Some(v);
        } else if eq(&args[j], "type") {
            // Every value here is a string: another type filters out all.
            strings = eq(v, "string");
        } else {
            return out.error(SYNTAX);
        }
        j += 2;
    }
    let (mut keys, next) = if strings {
        cx.db.scan(cursor, count)
    } else {
        // No value of another type exists; the walk still advances, as
        // Redis's does when its filter drops every key of a step.
        let (_, next) = cx.db.scan(cursor, count);
        (Vec::new(), next)
    };
    if let Some(p) = pattern {
        keys.retain(|k| glob_match(p, k));
    }
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(keys.len());
    for k in &keys {
        out.bulk(k);
    }
}

pub(super) fn randomkey(cx: &mut Cx<'_, '_>, _args: &[Bytes], out: &mut Out) {
    let env = cx.sh.mesh.env();
    match cx.db.random_key(|n| env.random_index(n)) {
        Some(k) => out.bulk(&k),
        None => out.null(),
    }
}

/// RENAME and RENAMENX, as one transaction: no reader on this peer sees
/// both keys or neither, and the two writes are replicated together.
pub(super) fn rename(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let nx = cx.spec.name == "renamenx";
    let (src, dst) = (&args[1], &args[2]);
    let hub = &cx.sh.hub;
    let r = cx.db.atomically([src, dst], |db| {
        let Some(slot) = visible_slot(db, src) else { return Ok(None) };
        if src == dst || (nx && db.get_with(dst, |_| ()).is_some()) {
            return Ok(Some(false));
        }
        // The old key first, as Redis notifies `rename_from` first.
        db.write_with(src.clone(), |_, stamp| {
            if hub.listening() {
                hub.hint(stamp, src, Hint::Generic("rename_from"));
            }
            Some(Slot::Tombstone)
        })?;
        move_slot(db, dst, slot, true, hub, "rename_to")?;
        Ok(Some(true))
    });
    match r {
        Ok(None) => out.error("ERR no such key"),
        Ok(Some(moved)) if nx => out.int(moved as i64),
        Ok(Some(_)) => out.ok(),
        Err(e) => write_error(out, e),
    }
}

/// COPY source destination [DB 0] [REPLACE]: the value and its TTL.
pub(super) fn copy_key(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let mut replace = false;
    let mut j = 3;
    while j < args.len() {
        if eq(&args[j], "replace") {
            replace = true;
        } else if eq(&args[j], "db") && j + 1 < args.len() {
            let Some(db) = int_arg(out, &args[j + 1]) else { return };
            if i32::try_from(db).is_err() {
                return out.error(super::NOT_INT);
            }
            if db != 0 {
                return out.error("ERR DB index is out of range");
            }
            j += 1;
        } else {
            return out.error(SYNTAX);
        }
        j += 1;
    }
    if args[1] == args[2] {
        return out.error("ERR source and destination objects are the same");
    }
    let hub = &cx.sh.hub;
    let r = cx.db.atomically([&args[1], &args[2]], |db| {
        let Some(slot) = visible_slot(db, &args[1]) else { return Ok(false) };
        move_slot(db, &args[2], slot, replace, hub, "copy_to")
    });
    match r {
        Ok(done) => out.int(done as i64),
        Err(e) => write_error(out, e),
    }
}

/// The value `key` holds here, with its TTL, if visible.
fn visible_slot(db: &Db<'_, '_>, key: &[u8]) -> Option<Slot> {
    let reg = db.register(key)?;
    reg.val.visible(db.now_ms())?;
    Some(reg.val)
}

/// Writes `slot` (a value and its absolute expiry) to `dst`, over what is
/// there only if `replace`, notified as `event`. Whether it wrote.
fn move_slot(
    db: &mut Db<'_, '_>,
    dst: &Bytes,
    slot: Slot,
    replace: bool,
    hub: &Hub,
    event: &'static str,
) -> Result<bool, crate::MeshError> {
    let mut wrote = false;
    db.write_with(dst.clone(), |cur, stamp| {
        if cur.is_some() && !replace {
            return None;
        }
        if hub.listening() {
            hub.hint(stamp, dst, Hint::Generic(event));
        }
        wrote = true;
        Some(slot)
    })?;
    Ok(wrote)
}

/// OBJECT ENCODING | FREQ | IDLETIME | HELP. A read by OBJECT does not
/// count as an access, as in Redis.
pub(super) fn object(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sub = &args[1];
    let known = ["encoding", "freq", "idletime"].into_iter().find(|s| eq(sub, s));
    if eq(sub, "help") && args.len() == 2 {
        return help(
            out,
            "OBJECT",
            &[
                "ENCODING <key>",
                "    Return the kind of internal representation used in order to store the value",
                "    associated with a <key>.",
                "FREQ <key>",
                "    Return the access frequency index of the <key>. The returned integer is",
                "    proportional to the logarithm of the recent access frequency of the key.",
                "IDLETIME <key>",
                "    Return the idle time of the <key>, that is the approximated number of",
                "    seconds elapsed since the last access to the key.",
            ],
        );
    }
    let Some(which) = known else {
        if eq(sub, "help") {
            return wrong_args(out, "object|help");
        }
        return unknown_subcommand(out, sub, "OBJECT");
    };
    if args.len() != 3 {
        return wrong_args(out, &format!("object|{which}"));
    }
    let key = &args[2];
    match which {
        "encoding" => match cx.db.get_with(key, encoding) {
            Some(e) => out.bulk(e.as_bytes()),
            None => out.null(),
        },
        _ => {
            let lfu = cx.sh.mesh.replica().store().policy().is_lfu();
            let Some(a) = cx.db.access_of(key) else { return out.null() };
            const SWITCH: &str = "Please note that when switching between policies at runtime LRU and LFU data \
                                  will take some time to adjust.";
            if which == "freq" {
                if !lfu {
                    return out.error(&format!(
                        "ERR An LFU maxmemory policy is not selected, access frequency not tracked. {SWITCH}"
                    ));
                }
                out.int(a.freq as i64);
            } else {
                if lfu {
                    return out
                        .error(&format!("ERR An LFU maxmemory policy is selected, idle time not tracked. {SWITCH}"));
                }
                out.int((a.idle_ms / 1000) as i64);
            }
        }
    }
}

/// How Redis would store a string value: as an integer, inline in its
/// object header (44 bytes or less), or separately.
fn encoding(v: &[u8]) -> &'static str {
    if v.len() <= 20 && parse_i64(v).is_some() {
        "int"
    } else if v.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}
