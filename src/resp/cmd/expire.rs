//! Expiry commands: the EXPIRE family, the TTL family, PERSIST.

use bytes::Bytes;

use super::{eq, int_arg, lossy, write_error, Cx};
use crate::resp::notify::Hint;
use crate::resp::reply::Out;
use crate::store::Slot;

/// EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT, with NX, XX, GT and LT.
pub(super) fn expire(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (sh, name) = (cx.sh, cx.spec.name);
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
    let secs = matches!(name, "expire" | "expireat");
    let relative = matches!(name, "expire" | "pexpire");
    let bad = format!("ERR invalid expire time in '{name}' command");
    let Some(ms) = (if secs { n.checked_mul(1000) } else { Some(n) }) else { return out.error(&bad) };
    if relative && (cx.db.now_ms() as i64).checked_add(ms).is_none() {
        return out.error(&bad);
    }
    let mut done = false;
    let listening = sh.hub.listening();
    let key = &args[1];
    let r = cx.db.write_with(key.clone(), |cur, stamp| {
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
            sh.hub.hint(stamp, key, Hint::Expire);
        }
        Some(Slot::Value { data: data.clone(), expires_at_ms: Some(when as u64) })
    });
    match r {
        Ok(_) => out.int(done as i64),
        Err(e) => write_error(out, e),
    }
}

/// TTL, PTTL, EXPIRETIME and PEXPIRETIME: -2 for a missing key, -1 for
/// one without an expiry.
pub(super) fn ttl(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let name = cx.spec.name;
    let now = cx.db.now_ms();
    let reg = cx.db.register(&args[1]);
    let Some(slot) = reg.as_ref().map(|r| &r.val).filter(|s| s.visible(now).is_some()) else {
        return out.int(-2);
    };
    let Some(at) = slot.expires_at_ms() else { return out.int(-1) };
    let ms = matches!(name, "pttl" | "pexpiretime");
    let v = match name {
        "ttl" | "pttl" => at.saturating_sub(now),
        _ => at,
    } as i64;
    out.int(if ms { v } else { (v + 500) / 1000 });
}

pub(super) fn persist(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let sh = cx.sh;
    let mut done = false;
    let listening = sh.hub.listening();
    let key = &args[1];
    let r = cx.db.write_with(key.clone(), |cur, stamp| match cur {
        Some(Slot::Value { data, expires_at_ms: Some(_) }) => {
            done = true;
            if listening {
                sh.hub.hint(stamp, key, Hint::Persist);
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
