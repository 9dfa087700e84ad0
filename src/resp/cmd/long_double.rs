//! INCRBYFLOAT's numbers as redis-server on x86-64 reads, adds and writes
//! them: its `long double` is the x87 80-bit format (a 64-bit significand),
//! read by glibc's `strtold` and written with `"%.17Lf"`, trailing zeros
//! removed. In `f64` the same commands answer differently (`0.1` then
//! `0.2` gives `0.30000000000000004`, where Redis gives `0.3`), so the
//! arithmetic is the x87 format's own, done in software by `rustc_apfloat`.
//! (A redis-server built where `long double` is another format, as on
//! 64-bit ARM, answers differently again; x86-64 is the reference.)

use num_bigint::BigUint;
use rustc_apfloat::ieee::X87DoubleExtended;
use rustc_apfloat::{Float, Round, Status};

/// An x87 extended-precision number.
#[derive(Clone, Copy, Debug)]
pub(super) struct LongDouble(X87DoubleExtended);

/// Redis's `MAX_LONG_DOUBLE_CHARS`: longer input is not a number to it.
const MAX_CHARS: usize = 5 * 1024;

impl LongDouble {
    pub(super) const ZERO: LongDouble = LongDouble(X87DoubleExtended::ZERO);

    /// Reads `b` as Redis's `string2ld` does: all of it must be the
    /// number (no leading space, nothing after it); infinity reads, NaN
    /// does not, and neither does a number too large for the format or
    /// one so small that it reads as zero.
    pub(super) fn parse(b: &[u8]) -> Option<LongDouble> {
        if b.is_empty() || b.len() >= MAX_CHARS {
            return None;
        }
        let s = std::str::from_utf8(b).ok()?;
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
            let inf = X87DoubleExtended::INFINITY;
            return Some(LongDouble(if negative { -inf } else { inf }));
        }
        // Compared as bytes: `body` may hold any UTF-8 after its first one.
        let hex = body.len() > 2 && body.as_bytes()[..2].eq_ignore_ascii_case(b"0x");
        let text = if hex {
            if !is_hex_float(&body[2..]) {
                return None;
            }
            // strtold takes a hexadecimal number without a binary
            // exponent; the parser below wants one.
            let exponent = if body.contains(['p', 'P']) { "" } else { "p0" };
            format!("{}0x{}{exponent}", if negative { "-" } else { "" }, &body[2..])
        } else {
            if !is_decimal_float(body) {
                return None;
            }
            format!("{}{body}", if negative { "-" } else { "" })
        };
        let read = X87DoubleExtended::from_str_r(&text, Round::NearestTiesToEven).ok()?;
        let v = read.value;
        if read.status.contains(Status::OVERFLOW) || (read.status.contains(Status::UNDERFLOW) && v.is_zero()) {
            return None;
        }
        Some(LongDouble(v))
    }

    /// The sum, rounded to nearest as the x87 unit rounds it; `None` if it
    /// is infinite or NaN (Redis refuses to store either).
    pub(super) fn checked_add(self, other: LongDouble) -> Option<LongDouble> {
        let sum = self.0.add_r(other.0, Round::NearestTiesToEven).value;
        sum.is_finite().then_some(LongDouble(sum))
    }

    /// The number as Redis writes a `long double` for people
    /// (`ld2string`, `LD_STR_HUMAN`): `"%.17Lf"`, that is every integer
    /// digit and 17 fraction digits rounded half to even, then without
    /// trailing zeros or a trailing point, and `-0` as `0`. Finite only.
    pub(super) fn to_redis_string(self) -> String {
        let bits = self.0.to_bits();
        let significand = bits as u64;
        let biased = ((bits >> 64) & 0x7fff) as i64;
        let negative = (bits >> 79) & 1 == 1;
        // The value is significand * 2^shift; a denormal's exponent field
        // of 0 stands for the smallest normal exponent.
        let shift = biased.max(1) - 16383 - 63;
        let mut text = if shift >= 0 {
            (BigUint::from(significand) << shift as usize).to_string()
        } else {
            const SCALE: u128 = 10u128.pow(17);
            // The value times 10^17, rounded to an integer: below 2^121,
            // so it rounds to zero whenever 2^-shift is 2^122 or more.
            let scaled = significand as u128 * SCALE;
            let down = (-shift) as u32;
            let units = if down >= 122 {
                0
            } else {
                let (q, rem, half) = (scaled >> down, scaled & ((1u128 << down) - 1), 1u128 << (down - 1));
                if rem > half || (rem == half && q & 1 == 1) {
                    q + 1
                } else {
                    q
                }
            };
            let fraction = format!("{:017}", units % SCALE);
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                (units / SCALE).to_string()
            } else {
                format!("{}.{fraction}", units / SCALE)
            }
        };
        if negative && text != "0" {
            text.insert(0, '-');
        }
        text
    }
}

/// What strtold reads as a number, sign removed: `digits[.digits]`, with
/// digits on at least one side of the point (decimal, or hexadecimal after
/// `0x`), then an optional exponent (`e` for decimal, `p`, a power of
/// two, for hexadecimal) of `[+|-]digits`.
fn is_float(s: &str, marks: [char; 2], digit: impl Fn(char) -> bool) -> bool {
    let (mantissa, exponent) = match s.find(marks) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    is_mantissa(mantissa, digit) && exponent.is_none_or(is_exponent)
}

fn is_decimal_float(s: &str) -> bool {
    is_float(s, ['e', 'E'], |c| c.is_ascii_digit())
}

fn is_hex_float(s: &str) -> bool {
    is_float(s, ['p', 'P'], |c| c.is_ascii_hexdigit())
}

fn is_mantissa(s: &str, digit: impl Fn(char) -> bool) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    (!int.is_empty() || !frac.is_empty()) && int.chars().all(&digit) && frac.chars().all(&digit)
}

fn is_exponent(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: &str, b: &str) -> Option<String> {
        let (a, b) = (LongDouble::parse(a.as_bytes())?, LongDouble::parse(b.as_bytes())?);
        Some(a.checked_add(b)?.to_redis_string())
    }

    /// Each expected reply is what redis-server 7.0.15 on x86-64 answered
    /// to `SET k a` then `INCRBYFLOAT k b`.
    #[test]
    fn sums_read_as_redis_server_writes_them() {
        assert_eq!(add("0.1", "0.2").as_deref(), Some("0.3"));
        assert_eq!(add("10.50", "0.1").as_deref(), Some("10.6"));
        assert_eq!(add("5.0e3", "2.0e2").as_deref(), Some("5200"));
        assert_eq!(add("3001.1", "1e-20").as_deref(), Some("3001.10000000000000009"));
        assert_eq!(add("9223372036854775807", "5e-324").as_deref(), Some("9223372036854775807"));
        assert_eq!(add("0", "5e-324").as_deref(), Some("0"));
        assert_eq!(add("0", "-1e-20").as_deref(), Some("0"));
        assert_eq!(add("0", "0x10").as_deref(), Some("16"));
        assert_eq!(add("-4294967296", "0x10").as_deref(), Some("-4294967280"));
        assert_eq!(
            add("0", "-1e308").as_deref(),
            Some(concat!(
                "-99999999999999999996685879655845645660560099847415567207797047994921734868838061872100126",
                "921888539320446747225054013223152134749593960583597420814430196418767959100019603190778663",
                "109604507106667939153395788938914560543563061268364901618630217086589253444881623791300855",
                "757318142424510452728255046343928578048",
            ))
        );
        // 2^-18 has 18 fraction digits, the last a 5: half to even.
        assert_eq!(add("0", "0.000003814697265625").as_deref(), Some("0.00000381469726562"));
        assert_eq!(add("0", "-2.5").as_deref(), Some("-2.5"));
        assert_eq!(add("0", "0x.8").as_deref(), Some("0.5"));
        assert_eq!(add("0", "5e-4950").as_deref(), Some("0"));
        assert_eq!(add("1e4932", "1e4932"), None, "overflow is refused");
        assert_eq!(add("inf", "1"), None);
        assert_eq!(add("-Infinity", "1"), None);
    }

    #[test]
    fn reads_what_strtold_reads_and_nothing_else() {
        for ok in ["1", "+1", "-1", "1.", ".5", "1e3", "1E+3", "1e-3", "0x1p4", "0x.8", "INF", "-inf", "5e-4950"] {
            assert!(LongDouble::parse(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "", " 1", "1 ", ".", "e3", "1e", "1e+", "abc", "nan", "-nan", "0x", "0xg", "1..2", "+-1", "1e5000",
            "1e-5000", "infinit", "1\0", "0\u{81}", "0x\u{81}", "\u{e9}", "1e\u{e9}",
        ] {
            assert!(LongDouble::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        assert!(LongDouble::parse("1".repeat(MAX_CHARS).as_bytes()).is_none());
    }
}
