//! Bit commands on string values: SETBIT, GETBIT, BITCOUNT, BITPOS,
//! BITOP.

use bytes::Bytes;

use super::strings::{max_value, range, update, TOO_BIG};
use super::{eq, int_arg, write_error, Cx, SYNTAX};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;
use crate::store::Slot;

/// A bit offset: at most 2^32 - 1, as in Redis (a 512 MiB string).
fn bit_offset(out: &mut Out, a: &[u8]) -> Option<u64> {
    let v = parse_i64(a).filter(|&o| (0..1 << 32).contains(&o));
    if v.is_none() {
        out.error("ERR bit offset is not an integer or out of range");
    }
    v.map(|o| o as u64)
}

/// The bit at `offset`, counting from the most significant bit of the
/// first byte, as Redis does.
fn bit(v: &[u8], offset: u64) -> bool {
    let byte = (offset >> 3) as usize;
    byte < v.len() && v[byte] & (0x80 >> (offset & 7)) != 0
}

/// SETBIT: sets or clears one bit, growing the value with zero bytes; the
/// bit's previous value.
pub(super) fn setbit(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(offset) = bit_offset(out, &args[2]) else { return };
    let on = match &args[3][..] {
        b"1" => true,
        b"0" => false,
        _ => return out.error("ERR bit is not an integer or out of range"),
    };
    let max = max_value(cx.sh, &args[1]);
    let mut was = false;
    let ok = update(cx, &args[1], out, |cur| {
        let cur = cur.map_or(&[][..], |v| &v[..]);
        was = bit(cur, offset);
        let byte = (offset >> 3) as usize;
        if was == on && byte < cur.len() {
            return Ok(None);
        }
        let len = cur.len().max(byte + 1);
        if len > max {
            return Err(TOO_BIG.into());
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(cur);
        v.resize(len, 0);
        let mask = 0x80 >> (offset & 7);
        if on {
            v[byte] |= mask;
        } else {
            v[byte] &= !mask;
        }
        Ok(Some(v.into()))
    });
    if ok {
        out.int(was as i64);
    }
}

pub(super) fn getbit(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(offset) = bit_offset(out, &args[2]) else { return };
    let on = cx.db.get_with(&args[1], |v| bit(v, offset)).unwrap_or(false);
    out.int(on as i64);
}

/// BITCOUNT key [start end [BYTE | BIT]].
pub(super) fn bitcount(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let mut bounds = None;
    match args.len() {
        2 => {}
        4 | 5 => {
            let Some(start) = int_arg(out, &args[2]) else { return };
            let Some(end) = int_arg(out, &args[3]) else { return };
            let bits = match args.get(4) {
                None => false,
                Some(a) if eq(a, "byte") => false,
                Some(a) if eq(a, "bit") => true,
                Some(_) => return out.error(SYNTAX),
            };
            bounds = Some((start, end, bits));
        }
        _ => return out.error(SYNTAX),
    }
    let n = cx.db.get_with(&args[1], |v| count(v, bounds)).unwrap_or(0);
    out.int(n as i64);
}

/// BITPOS key bit [start [end [BYTE | BIT]]]: the first bit set to `bit`
/// in the range, as Redis finds it. A missing key is all zeros; without an
/// explicit end, a value of ones has its first zero just past its end.
pub(super) fn bitpos(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let Some(bit) = int_arg(out, &args[2]) else { return };
    if bit != 0 && bit != 1 {
        return out.error("ERR The bit argument must be 1 or 0.");
    }
    if args.len() > 6 {
        return out.error(SYNTAX);
    }
    let mut start = 0;
    let mut end = None;
    if let Some(a) = args.get(3) {
        let Some(n) = int_arg(out, a) else { return };
        start = n;
    }
    let in_bits = match args.get(5) {
        None => false,
        Some(a) if eq(a, "bit") => true,
        Some(a) if eq(a, "byte") => false,
        Some(_) => return out.error(SYNTAX),
    };
    if let Some(a) = args.get(4) {
        let Some(n) = int_arg(out, a) else { return };
        end = Some(n);
    }
    let found = cx.db.get_with(&args[1], |v| first_bit(v, bit == 1, start, end, in_bits));
    out.int(found.unwrap_or(if bit == 1 { -1 } else { 0 }));
}

/// BITPOS on a value `v`: Redis's range rules (negative from the end,
/// clamped), then the first bit equal to `one` in it, -1 if none.
fn first_bit(v: &[u8], one: bool, start: i64, end: Option<i64>, in_bits: bool) -> i64 {
    let total = if in_bits { v.len() as i64 * 8 } else { v.len() as i64 };
    let norm = |i: i64| if i < 0 { (total + i).max(0) } else { i };
    let (s, e) = (norm(start), norm(end.unwrap_or(total - 1)).min(total - 1));
    if s > e {
        return -1;
    }
    let (first, last) = if in_bits { (s, e) } else { (s * 8, e * 8 + 7) };
    if let Some(at) = (first..=last).find(|&o| bit(v, o as u64) == one) {
        return at;
    }
    // Past the last byte of the range lie zeros, unless the caller bounded
    // the range.
    if !one && end.is_none() {
        (last / 8 + 1) * 8
    } else {
        -1
    }
}

/// BITOP AND | OR | XOR | NOT destkey key [key ...]: the result, as long
/// as the longest source (missing keys and shorter values read as zeros),
/// written to destkey, or destkey deleted if it is empty; its length. One
/// transaction: the sources are read and the result written as one.
pub(super) fn bitop(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let op = &args[1];
    let Some(op) = ["and", "or", "xor", "not"].into_iter().find(|o| eq(op, o)) else { return out.error(SYNTAX) };
    if op == "not" && args.len() != 4 {
        return out.error("ERR BITOP NOT must be called with a single source key.");
    }
    let (dest, sources) = (args[2].clone(), &args[3..]);
    let r = cx.db.atomically(std::iter::once(&dest).chain(sources), |db| {
        let values: Vec<Bytes> = sources.iter().map(|k| db.get(k).unwrap_or_default()).collect();
        let len = values.iter().map(Bytes::len).max().unwrap_or(0);
        let byte = |v: &Bytes, i: usize| v.get(i).copied().unwrap_or(0);
        let result: Vec<u8> = (0..len)
            .map(|i| {
                let mut acc = byte(&values[0], i);
                for v in &values[1..] {
                    let b = byte(v, i);
                    acc = match op {
                        "and" => acc & b,
                        "or" => acc | b,
                        _ => acc ^ b,
                    };
                }
                if op == "not" {
                    !acc
                } else {
                    acc
                }
            })
            .collect();
        let slot =
            if len == 0 { Slot::Tombstone } else { Slot::Value { data: Bytes::from(result), expires_at_ms: None } };
        db.write_with(dest.clone(), |cur, _| (len > 0 || cur.is_some()).then_some(slot)).map(|_| len)
    });
    match r {
        Ok(len) => out.int(len as i64),
        Err(e) => write_error(out, e),
    }
}

/// Set bits in `v`, within `(start, end, in_bits)` if given.
fn count(v: &[u8], bounds: Option<(i64, i64, bool)>) -> u64 {
    let ones = |b: &[u8]| b.iter().map(|x| x.count_ones() as u64).sum::<u64>();
    let Some((start, end, in_bits)) = bounds else { return ones(v) };
    let len = v.len() as i64;
    if !in_bits {
        return range(start, end, len).map_or(0, |(s, e)| ones(&v[s as usize..=e as usize]));
    }
    let Some((s, e)) = range(start, end, len * 8) else { return 0 };
    let (first, last) = ((s >> 3) as usize, (e >> 3) as usize);
    // Whole bytes, less the bits of the first byte before `s` and of the
    // last byte after `e`.
    let before = v[first] & !(0xffu8 >> (s & 7));
    let after = v[last] & (0xffu32 >> ((e & 7) + 1)) as u8;
    ones(&v[first..=last]) - before.count_ones() as u64 - after.count_ones() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bits_as_redis_does() {
        // Redis's examples: "foobar" has 26 bits set, 4 in "f", 6 in "o".
        let v = b"foobar";
        assert_eq!(count(v, None), 26);
        assert_eq!(count(v, Some((0, 0, false))), 4);
        assert_eq!(count(v, Some((1, 1, false))), 6);
        assert_eq!(count(v, Some((1, 1, true))), 1);
        assert_eq!(count(v, Some((5, 30, true))), 17);
        assert_eq!(count(v, Some((-1, -2, false))), 0);
        assert_eq!(count(v, Some((-100, 100, false))), 26);
        assert_eq!(count(b"", Some((0, -1, false))), 0);
        assert!(bit(b"\x80", 0) && !bit(b"\x80", 1) && !bit(b"\x80", 8));
    }

    #[test]
    fn finds_bits_as_redis_does() {
        // Redis's examples.
        assert_eq!(first_bit(b"\xff\xf0\x00", false, 0, None, false), 12);
        assert_eq!(first_bit(b"\x00\xff\xf0", true, 0, None, false), 8);
        assert_eq!(first_bit(b"\x00\xff\xf0", true, 2, None, false), 16);
        assert_eq!(first_bit(b"\x00\xff\xf0", true, 2, Some(-1), false), 16);
        assert_eq!(first_bit(b"\x00\xff\xf0", true, 7, Some(15), true), 8);
        assert_eq!(first_bit(b"\x00\xff\xf0", true, 7, Some(-3), true), 8);
        assert_eq!(first_bit(b"\x00\x00\x00", true, 0, None, false), -1);
        // All ones: past the end without an explicit end, -1 with one.
        assert_eq!(first_bit(b"\xff\xff", false, 0, None, false), 16);
        assert_eq!(first_bit(b"\xff\xff", false, 0, Some(-1), false), -1);
        assert_eq!(first_bit(b"\xff\xff", false, 3, None, true), 16);
        assert_eq!(first_bit(b"", false, 0, None, false), -1);
        assert_eq!(first_bit(b"\xff", true, 5, Some(2), false), -1);
    }

    #[test]
    fn a_bit_range_counts_what_its_bits_hold() {
        let v = b"\xff\x0f\xa5\x01";
        for start in -40..40 {
            for end in -40..40 {
                let want = range(start, end, 32).map_or(0, |(s, e)| (s..=e).filter(|&o| bit(v, o as u64)).count());
                assert_eq!(count(v, Some((start, end, true))), want as u64, "{start}..{end}");
            }
        }
    }
}
