//! Counter commands: INCR, DECR, INCRBY, DECRBY, INCRBYFLOAT.
//!
//! Each is a read-modify-write of the local replica, replicated as one
//! write of the resulting value: two peers incrementing the same counter
//! at the same moment converge on one of the two results (README.md,
//! "Redis clients").

use bytes::Bytes;

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

/// INCRBYFLOAT: the new value as a bulk string, written as Redis writes it
/// (no exponent, no trailing zeros).
pub(super) fn incrbyfloat(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    const NOT_FLOAT: &str = "ERR value is not a valid float";
    let Some(by) = parse_f64(&args[2]) else { return out.error(NOT_FLOAT) };
    let mut result = String::new();
    let ok = update(cx, &args[1], out, |cur| {
        let cur = match cur {
            None => 0.0,
            Some(v) => parse_f64(v).ok_or_else(|| NOT_FLOAT.to_string())?,
        };
        let sum = cur + by;
        if !sum.is_finite() {
            return Err("ERR increment would produce NaN or Infinity".into());
        }
        result = format_f64(sum);
        Ok(Some(Bytes::from(result.clone())))
    });
    if ok {
        out.bulk(result.as_bytes());
    }
}

/// A float as Redis's `string2ld` takes one: decimal or exponent form, no
/// spaces, not NaN. Infinity parses (the sum is then refused).
fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 5120 || s.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// The shortest decimal that reads back as `v`, without an exponent:
/// Redis prints INCRBYFLOAT's result with `%.17Lf` and strips the
/// trailing zeros, and its values carry no exponent either.
fn format_f64(v: f64) -> String {
    // `{}` never uses an exponent for f64 and gives the shortest
    // round-trip digits; -0 is written 0, as Redis does.
    if v == 0.0 {
        return "0".into();
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_and_print_as_redis_does() {
        assert_eq!(parse_f64(b"10.50"), Some(10.5));
        assert_eq!(parse_f64(b"5.0e3"), Some(5000.0));
        assert_eq!(parse_f64(b"-1"), Some(-1.0));
        assert_eq!(parse_f64(b" 1"), None);
        assert_eq!(parse_f64(b"1 "), None);
        assert_eq!(parse_f64(b"nan"), None);
        assert_eq!(parse_f64(b""), None);
        assert_eq!(parse_f64(b"abc"), None);
        assert_eq!(format_f64(10.5 + 0.1), "10.6");
        assert_eq!(format_f64(5000.0 + 200.0), "5200");
        assert_eq!(format_f64(-0.0), "0");
        assert_eq!(format_f64(1e20), "100000000000000000000");
        assert_eq!(format_f64(3.0e-5), "0.00003");
    }
}
