//! Keyspace commands: DEL, EXISTS, TYPE, DBSIZE, FLUSHALL.

use bytes::Bytes;

use super::{copy, eq, write_error, Cx, SYNTAX};
use crate::resp::reply::Out;

/// DEL and UNLINK (the same here: nothing is freed in the background).
pub(super) fn del(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let mut n = 0;
    for k in &args[1..] {
        match cx.sh.mesh.delete(copy(k)) {
            Ok(existed) => n += existed as i64,
            Err(e) => return write_error(out, e),
        }
    }
    out.int(n);
}

/// EXISTS and TOUCH: how many of the keys are visible (a key named twice
/// counts twice, as in Redis).
pub(super) fn exists(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    let mesh = &cx.sh.mesh;
    let n = args[1..].iter().filter(|k| mesh.get_with(k, |_| ()).is_some()).count();
    out.int(n as i64);
}

pub(super) fn type_of(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    if cx.sh.mesh.get_with(&args[1], |_| ()).is_some() {
        out.simple("string")
    } else {
        out.simple("none")
    }
}

pub(super) fn dbsize(cx: &mut Cx<'_>, _args: &[Bytes], out: &mut Out) {
    let st = cx.sh.mesh.replica().store().stats();
    out.int(st.entries.saturating_sub(st.tombstones + st.stubs) as i64);
}

/// FLUSHALL and FLUSHDB: mesh-wide.
pub(super) fn flush(cx: &mut Cx<'_>, args: &[Bytes], out: &mut Out) {
    if args.len() > 2 || (args.len() == 2 && !eq(&args[1], "async") && !eq(&args[1], "sync")) {
        return out.error(SYNTAX);
    }
    match cx.sh.mesh.flush_all() {
        Ok(()) => out.ok(),
        Err(e) => write_error(out, e),
    }
}
