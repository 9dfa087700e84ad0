//! Counter commands: INCR, DECR, INCRBY, DECRBY, INCRBYFLOAT.
//!
//! Each is a read-modify-write of the local replica, replicated as one
//! write of the resulting value: two peers incrementing the same counter
//! at the same moment converge on one of the two results (README.md,
//! "Redis clients").

use bytes::Bytes;

use super::long_double::LongDouble;
use super::strings::update;
use super::{int_arg, Cx, NOT_INT};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;

/// INCR, DECR, INCRBY and DECRBY.
pub(super) fn incr(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let by = match cx.spec.name {
        "incr" => 1,
        "decr" => -1,
        name => {
            let Some(n) = int_arg(out, &args[2]) else { return };
            if name == "incrby" {
                n
            } else if n == i64::MIN {
                return out.error("ERR decrement would overflow");
            } else {
                -n
            }
        }
    };
    let mut result = 0;
    let ok = update(cx, &args[1], out, |cur| {
        let cur = match cur {
            None => 0,
            Some(v) => parse_i64(v).ok_or_else(|| NOT_INT.to_string())?,
        };
        result = cur.checked_add(by).ok_or_else(|| "ERR increment or decrement would overflow".to_string())?;
        Ok(Some(Bytes::from(result.to_string())))
    });
    if ok {
        out.int(result);
    }
}

/// INCRBYFLOAT: the new value as a bulk string, computed and written as
/// redis-server on x86-64 computes and writes it (`long_double`).
pub(super) fn incrbyfloat(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    const NOT_FLOAT: &str = "ERR value is not a valid float";
    let by = LongDouble::parse(&args[2]);
    let mut result = String::new();
    let ok = update(cx, &args[1], out, |cur| {
        // The value held is read first, as Redis reads it.
        let cur = match cur {
            None => Some(LongDouble::ZERO),
            Some(v) => LongDouble::parse(v),
        };
        let (Some(cur), Some(by)) = (cur, by) else { return Err(NOT_FLOAT.to_string()) };
        let sum = cur.checked_add(by).ok_or_else(|| "ERR increment would produce NaN or Infinity".to_string())?;
        result = sum.to_redis_string();
        Ok(Some(Bytes::from(result.clone())))
    });
    if ok {
        out.bulk(result.as_bytes());
    }
}
