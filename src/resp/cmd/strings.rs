//! String commands: GET, SET and their relatives.

use bytes::Bytes;

use super::{copy, eq, int_arg, value_of, write_error, wrong_args, Cx, SYNTAX};
use crate::resp::notify::Hint;
use crate::resp::reply::Out;
use crate::resp::Shared;
use crate::store::Slot;
use crate::MeshError;

pub(super) fn get(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    if cx.sh.mesh.get_with(&args[1], |v| out.bulk_lent(v)).is_some() {
        cx.c.hits += 1;
    } else {
        cx.c.misses += 1;
        out.null();
    }
}

pub(super) fn mget(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    out.array(args.len() - 1);
    for k in &args[1..] {
        if cx.sh.mesh.get_with(k, |v| out.bulk_lent(v)).is_some() {
            cx.c.hits += 1;
        } else {
            cx.c.misses += 1;
            out.null();
        }
    }
}

pub(super) fn set(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let sh = cx.sh;
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
    match write(sh, &args[1], &args[2], cond, ttl) {
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

pub(super) fn setnx(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    match write(cx.sh, &args[1], &args[2], Cond::Nx, Ttl::None) {
        Ok((written, _)) => out.int(written as i64),
        Err(e) => write_error(out, e),
    }
}

/// SETEX and PSETEX.
pub(super) fn setex(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let Some(t) = int_arg(out, &args[2]) else { return };
    let name = cx.spec.name;
    let ms = if name == "setex" { t.checked_mul(1000) } else { Some(t) };
    let Some(ms) = ms.filter(|&m| m > 0 && (cx.sh.mesh.now_ms() as i64).checked_add(m).is_some()) else {
        return out.error(&format!("ERR invalid expire time in '{name}' command"));
    };
    match write(cx.sh, &args[1], &args[3], Cond::Always, Ttl::Rel(ms as u64)) {
        Ok(_) => out.ok(),
        Err(e) => write_error(out, e),
    }
}

pub(super) fn getdel(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let mut old = None;
    let r = cx.sh.mesh.write_with(copy(&args[1]), |cur, _| {
        old = value_of(cur);
        old.as_ref().map(|_| Slot::Tombstone)
    });
    match r {
        Ok(_) => out.opt_bulk(old.as_ref()),
        Err(e) => write_error(out, e),
    }
}

pub(super) fn mset(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    if args.len() % 2 == 0 {
        return wrong_args(out, "mset");
    }
    for kv in args[1..].chunks_exact(2) {
        if let Err(e) = cx.sh.mesh.put(copy(&kv[0]), copy(&kv[1])) {
            return write_error(out, e);
        }
    }
    out.ok();
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
fn write(sh: &Shared, key: &Bytes, value: &Bytes, cond: Cond, ttl: Ttl) -> Result<(bool, Option<Bytes>), MeshError> {
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
