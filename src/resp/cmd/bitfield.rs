//! BITFIELD and BITFIELD_RO: integers of 1 to 64 bits at any bit offset
//! of a string value, read, set and incremented with Redis's overflow
//! rules.
//!
//! A BITFIELD that sets or increments is one read-modify-write of the
//! value, as SETBIT is: atomic on this peer, its TTL kept, and the whole
//! resulting value replicated as one write. As in Redis, the value is
//! first grown with zero bytes to hold the farthest field written, even
//! when every write then fails under `OVERFLOW FAIL`; Redis signals no
//! change then (no invalidation, no WATCH abort), where here growing or
//! creating the value is a write like any other.

use bytes::Bytes;

use super::strings::{max_value, update, TOO_BIG};
use super::{eq, int_arg, Cx, SYNTAX};
use crate::resp::parse::parse_i64;
use crate::resp::reply::Out;

const BAD_TYPE: &str =
    "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";
const BAD_OFFSET: &str = "ERR bit offset is not an integer or out of range";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
    IncrBy,
}

/// What a SET or INCRBY does when the result does not fit the field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

/// One subcommand, parsed.
#[derive(Clone, Copy)]
struct Field {
    op: Op,
    signed: bool,
    bits: u32,
    offset: u64,
    /// SET's value, INCRBY's increment.
    arg: i64,
    overflow: Overflow,
}

/// BITFIELD key [GET type offset | [OVERFLOW WRAP|SAT|FAIL] SET type
/// offset value | INCRBY type offset increment ...]: one reply a GET, SET
/// (the old value) and INCRBY (the new one), nil for a write refused by
/// `OVERFLOW FAIL`.
pub(super) fn bitfield(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    run(cx, args, out, false);
}

/// BITFIELD_RO key [GET type offset ...]: BITFIELD's reads alone.
pub(super) fn bitfield_ro(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    run(cx, args, out, true);
}

fn run(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out, read_only: bool) {
    let Some(fields) = parse(out, &args[2..]) else { return };
    let key = &args[1];
    let writes = fields.iter().filter(|f| f.op != Op::Get);
    let Some(end) = writes.map(|f| (f.offset + u64::from(f.bits) - 1) / 8 + 1).max() else {
        // Reads only: a missing key reads as zeros.
        let reads = |v: &[u8]| fields.iter().map(|f| Some(get(v, f))).collect::<Vec<_>>();
        return reply(out, &cx.db.get_with(key, reads).unwrap_or_else(|| reads(&[])));
    };
    if read_only {
        return out.error("ERR BITFIELD_RO only supports the GET subcommand");
    }
    if end > max_value(cx.sh, key) as u64 {
        return out.error(TOO_BIG);
    }
    let mut replies = Vec::with_capacity(fields.len());
    let ok = update(cx, key, out, |cur| {
        let mut v = cur.map_or_else(Vec::new, |c| c.to_vec());
        if v.len() < end as usize {
            v.resize(end as usize, 0);
        }
        // A field changed and changed back is a write all the same, as
        // Redis counts it: it notifies, invalidates and aborts a WATCH.
        let mut changed = false;
        replies.extend(fields.iter().map(|f| apply(&mut v, f, &mut changed)));
        Ok((changed || cur.map(|c| &c[..]) != Some(&v[..])).then(|| v.into()))
    });
    if ok {
        reply(out, &replies);
    }
}

fn reply(out: &mut Out, replies: &[Option<i64>]) {
    out.array(replies.len());
    for r in replies {
        match r {
            Some(n) => out.int(*n),
            None => out.null(),
        }
    }
}

/// The subcommands, checked in order as Redis checks them: the first
/// error found is the reply.
fn parse(out: &mut Out, args: &[Bytes]) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut j = 0;
    while j < args.len() {
        let left = args.len() - j - 1;
        let sub = &args[j];
        let op = if eq(sub, "get") && left >= 2 {
            Op::Get
        } else if eq(sub, "set") && left >= 3 {
            Op::Set
        } else if eq(sub, "incrby") && left >= 3 {
            Op::IncrBy
        } else if eq(sub, "overflow") && left >= 1 {
            let kind = &args[j + 1];
            overflow = if eq(kind, "wrap") {
                Overflow::Wrap
            } else if eq(kind, "sat") {
                Overflow::Sat
            } else if eq(kind, "fail") {
                Overflow::Fail
            } else {
                out.error("ERR Invalid OVERFLOW type specified");
                return None;
            };
            j += 2;
            continue;
        } else {
            out.error(SYNTAX);
            return None;
        };
        let Some((signed, bits)) = field_type(&args[j + 1]) else {
            out.error(BAD_TYPE);
            return None;
        };
        let Some(offset) = field_offset(&args[j + 2], bits) else {
            out.error(BAD_OFFSET);
            return None;
        };
        let arg = if op == Op::Get { 0 } else { int_arg(out, &args[j + 3])? };
        fields.push(Field { op, signed, bits, offset, arg, overflow });
        j += if op == Op::Get { 3 } else { 4 };
    }
    Some(fields)
}

/// `i1` to `i64`, `u1` to `u63` (a reply cannot hold a larger unsigned
/// integer). Redis reads the width as a C string, so up to a NUL byte.
fn field_type(a: &[u8]) -> Option<(bool, u32)> {
    let (&sign, width) = a.split_first()?;
    let width = width.split(|&b| b == 0).next().unwrap_or_default();
    let signed = match sign {
        b'i' => true,
        b'u' => false,
        _ => return None,
    };
    let bits = parse_i64(width).filter(|&b| b >= 1 && b <= if signed { 64 } else { 63 })?;
    Some((signed, bits as u32))
}

/// A bit offset, or with `#` a field index (times the width); at most
/// 2^32 - 1, as SETBIT's. Redis multiplies in 64 bits, wrapping.
fn field_offset(a: &[u8], bits: u32) -> Option<u64> {
    let o = match a.strip_prefix(b"#") {
        Some(index) => parse_i64(index)?.wrapping_mul(i64::from(bits)),
        None => parse_i64(a)?,
    };
    (0..1 << 32).contains(&o).then_some(o as u64)
}

/// The `bits` bits at `offset` (zeros past the end of `v`), most
/// significant first, as an unsigned integer.
fn read(v: &[u8], offset: u64, bits: u32) -> u64 {
    (0..u64::from(bits)).fold(0, |n, i| {
        let at = offset + i;
        let byte = v.get((at >> 3) as usize).copied().unwrap_or(0);
        n << 1 | u64::from(byte >> (7 - (at & 7)) & 1)
    })
}

/// Writes the low `bits` bits of `n` at `offset`, which `v` holds.
fn write(v: &mut [u8], offset: u64, bits: u32, n: u64) {
    for i in 0..u64::from(bits) {
        let at = offset + i;
        let mask = 0x80 >> (at & 7);
        let byte = &mut v[(at >> 3) as usize];
        if n >> (u64::from(bits) - 1 - i) & 1 == 1 {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

/// A field's value, sign-extended when it is signed.
fn get(v: &[u8], f: &Field) -> i64 {
    let n = read(v, f.offset, f.bits);
    if f.signed && f.bits < 64 && n >> (f.bits - 1) & 1 == 1 {
        (n | u64::MAX << f.bits) as i64
    } else {
        n as i64
    }
}

/// A SET or INCRBY on `v` (grown to hold the field): the reply, `None`
/// when the result overflows under FAIL, which writes nothing. Sets
/// `changed` when the field's value changed.
fn apply(v: &mut [u8], f: &Field, changed: &mut bool) -> Option<i64> {
    if f.op == Op::Get {
        return Some(get(v, f));
    }
    let old = get(v, f);
    let (value, incr) = if f.op == Op::Set { (f.arg, 0) } else { (old, f.arg) };
    let new = if f.signed {
        fit_signed(value, incr, f.bits, f.overflow)?
    } else {
        fit_unsigned(value, incr, f.bits, f.overflow)?
    };
    write(v, f.offset, f.bits, new as u64);
    *changed |= new != old;
    Some(if f.op == Op::Set { old } else { new })
}

/// `value + incr` in a signed field of `bits`, with Redis's overflow
/// rules (`checkSignedBitfieldOverflow`): wrapped in two's complement,
/// saturated, or `None` (FAIL).
fn fit_signed(value: i64, incr: i64, bits: u32, overflow: Overflow) -> Option<i64> {
    let max = if bits == 64 { i64::MAX } else { (1 << (bits - 1)) - 1 };
    let min = -max - 1;
    let max_incr = (max as u64).wrapping_sub(value as u64) as i64;
    let min_incr = min.wrapping_sub(value);
    let up = value > max || (bits != 64 && incr > max_incr) || (value >= 0 && incr > 0 && incr > max_incr);
    let down = value < min || (bits != 64 && incr < min_incr) || (value < 0 && incr < 0 && incr < min_incr);
    if !up && !down {
        return Some(value.wrapping_add(incr));
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(if up { max } else { min }),
        Overflow::Wrap => {
            let sum = (value as u64).wrapping_add(incr as u64);
            if bits == 64 {
                return Some(sum as i64);
            }
            let high = u64::MAX << bits;
            Some(if sum >> (bits - 1) & 1 == 1 { sum | high } else { sum & !high } as i64)
        }
    }
}

/// `value + incr` in an unsigned field of `bits` (at most 63), with
/// Redis's overflow rules (`checkUnsignedBitfieldOverflow`). `value` is
/// SET's argument as Redis casts it, or the field's old value.
fn fit_unsigned(value: i64, incr: i64, bits: u32, overflow: Overflow) -> Option<i64> {
    let value = value as u64;
    let max = (1u64 << bits) - 1;
    let max_incr = max.wrapping_sub(value) as i64;
    let min_incr = value.wrapping_neg() as i64;
    let up = value > max || (incr > 0 && incr > max_incr);
    let down = !up && incr < 0 && incr < min_incr;
    if !up && !down {
        return Some(value.wrapping_add(incr as u64) as i64);
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(if up { max as i64 } else { 0 }),
        Overflow::Wrap => Some((value.wrapping_add(incr as u64) & max) as i64),
    }
}

/// Whether BITFIELD's arguments only read, as Redis's key-flag scan
/// decides it for COMMAND GETKEYSANDFLAGS: a write, or anything it does
/// not understand, makes the key read-write.
pub(super) fn only_reads(args: &[Bytes]) -> bool {
    let mut j = 0;
    while j < args.len() {
        let left = args.len() - j - 1;
        let a = &args[j];
        if eq(a, "get") && left >= 2 {
            j += 3;
        } else if eq(a, "overflow") && left >= 1 {
            j += 2;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(op: Op, signed: bool, bits: u32, offset: u64, arg: i64, overflow: Overflow) -> Field {
        Field { op, signed, bits, offset, arg, overflow }
    }

    #[test]
    fn fields_read_and_write_as_redis_lays_them_out() {
        // Redis's example: an unsigned 5-bit 23 at offset 7 of zeros.
        let mut v = vec![0u8; 2];
        write(&mut v, 7, 5, 23);
        assert_eq!(v, [0b0000_0001, 0b0111_0000]);
        assert_eq!(read(&v, 7, 5), 23);
        assert_eq!(get(&v, &field(Op::Get, true, 5, 7, 0, Overflow::Wrap)), 23 - 32);
        // Past the end reads zeros.
        assert_eq!(read(&v, 12, 64), 0);
        let mut w = vec![0u8; 9];
        write(&mut w, 3, 64, u64::MAX);
        assert_eq!(get(&w, &field(Op::Get, true, 64, 3, 0, Overflow::Wrap)), -1);
        assert_eq!(w[0], 0x1f);
        assert_eq!(w[8], 0xe0);
    }

    #[test]
    fn overflow_wraps_saturates_or_fails() {
        assert_eq!(fit_signed(127, 1, 8, Overflow::Wrap), Some(-128));
        assert_eq!(fit_signed(127, 1, 8, Overflow::Sat), Some(127));
        assert_eq!(fit_signed(127, 1, 8, Overflow::Fail), None);
        assert_eq!(fit_signed(-128, -1, 8, Overflow::Sat), Some(-128));
        assert_eq!(fit_signed(i64::MAX, 1, 64, Overflow::Wrap), Some(i64::MIN));
        assert_eq!(fit_signed(i64::MIN, -1, 64, Overflow::Sat), Some(i64::MIN));
        assert_eq!(fit_signed(5, -3, 4, Overflow::Fail), Some(2));
        // SET of a value that does not fit, as INCRBY 0 from it.
        assert_eq!(fit_signed(200, 0, 8, Overflow::Wrap), Some(-56));
        assert_eq!(fit_unsigned(255, 1, 8, Overflow::Wrap), Some(0));
        assert_eq!(fit_unsigned(255, 1, 8, Overflow::Sat), Some(255));
        assert_eq!(fit_unsigned(0, -1, 8, Overflow::Sat), Some(0));
        assert_eq!(fit_unsigned(0, -1, 8, Overflow::Wrap), Some(255));
        assert_eq!(fit_unsigned(-1, 0, 8, Overflow::Wrap), Some(255));
        assert_eq!(fit_unsigned(-1, 0, 8, Overflow::Fail), None);
        assert_eq!(fit_unsigned(3, -3, 2, Overflow::Fail), Some(0));
    }

    #[test]
    fn types_and_offsets_parse_as_redis_parses_them() {
        assert_eq!(field_type(b"i64"), Some((true, 64)));
        assert_eq!(field_type(b"u63"), Some((false, 63)));
        assert_eq!(field_type(b"u64"), None);
        assert_eq!(field_type(b"i0"), None);
        assert_eq!(field_type(b"I8"), None);
        assert_eq!(field_type(b"u8\0x"), Some((false, 8)));
        assert_eq!(field_type(b""), None);
        assert_eq!(field_offset(b"#2", 8), Some(16));
        assert_eq!(field_offset(b"#-1", 8), None);
        assert_eq!(field_offset(b"4294967295", 8), Some(4_294_967_295));
        assert_eq!(field_offset(b"4294967296", 8), None);
        assert_eq!(field_offset(b"", 8), None);
        assert_eq!(field_offset(b"#", 8), None);
    }
}
