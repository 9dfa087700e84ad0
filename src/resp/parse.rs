//! The request parser: RESP multibulk (`*N\r\n$len\r\n...`) and inline
//! commands (`PING\r\n`, what telnet and redis-cli's inline mode send).
//!
//! A hand-written, resumable parser rather than `redis_protocol`'s decoder,
//! for four reasons: limits are checked on each header *before* the payload
//! is buffered (`*1\r\n$999999999999\r\n` is refused at once); a partially
//! received command is not re-parsed from its start on every read; inline
//! commands are supported; and arguments are zero-copy slices of the read
//! buffer, so parsing a command allocates nothing. Error texts are Redis's
//! (`networking.c`).

use bytes::{Buf, Bytes, BytesMut};

/// Longest header line or inline command, as Redis's `PROTO_INLINE_MAX_SIZE`.
pub(crate) const INLINE_MAX: usize = 64 * 1024;
/// Most arguments in one command (Redis: 1024*1024).
pub(crate) const MAX_ARGS: i64 = 1024 * 1024;
/// Limits for a client that has not authenticated yet (Redis's).
const UNAUTH_MAX_ARGS: i64 = 10;
const UNAUTH_MAX_BULK: i64 = 16 * 1024;

/// Size limits applied while parsing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest bulk string.
    pub(crate) max_bulk: usize,
    /// Largest whole command (headers and payloads).
    pub(crate) max_command: usize,
    /// The client must authenticate first: Redis's much smaller limits.
    pub(crate) unauthenticated: bool,
}

/// Malformed input. The connection gets `-ERR Protocol error: <0>` and is
/// closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

fn perr(s: &str) -> ProtocolError {
    ProtocolError(s.to_owned())
}

/// A resumable parser for one connection.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Arguments still expected in the current multibulk (0: between
    /// commands).
    remaining: usize,
    /// Bytes of the current command parsed so far.
    pos: usize,
    /// The length of the bulk whose header was read, awaiting its payload.
    bulk: Option<usize>,
    /// Argument ranges of the current command, relative to its start.
    ranges: Vec<(usize, usize)>,
}

impl Parser {
    /// Parses the next complete command from `buf` into `args` (cleared
    /// first). Returns `Ok(false)` when more input is needed; consumed bytes
    /// are removed from `buf` only once a command is complete.
    pub(crate) fn next(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        args: &mut Vec<Bytes>,
    ) -> Result<bool, ProtocolError> {
        args.clear();
        loop {
            if self.remaining == 0 {
                if buf.is_empty() {
                    return Ok(false);
                }
                if buf[0] != b'*' {
                    match inline(buf, args)? {
                        None => return Ok(false),
                        Some(true) => return Ok(true),
                        Some(false) => continue,
                    }
                }
                let Some(cr) = memchr(b'\r', &buf[..buf.len().min(INLINE_MAX + 1)]) else {
                    if buf.len() > INLINE_MAX {
                        return Err(perr("too big mbulk count string"));
                    }
                    return Ok(false);
                };
                if cr + 1 >= buf.len() {
                    return Ok(false);
                }
                let n = match parse_i64(&buf[1..cr]) {
                    Some(n) if n <= MAX_ARGS => n,
                    _ => return Err(perr("invalid multibulk length")),
                };
                if limits.unauthenticated && n > UNAUTH_MAX_ARGS {
                    return Err(perr("unauthenticated multibulk length"));
                }
                if n <= 0 {
                    buf.advance(cr + 2);
                    continue;
                }
                // Each argument takes at least "$0\r\n\r\n".
                if (n as usize).saturating_mul(6) > limits.max_command {
                    return Err(perr("invalid multibulk length"));
                }
                self.remaining = n as usize;
                self.pos = cr + 2;
                self.bulk = None;
                self.ranges.clear();
            }
            while self.remaining > 0 {
                match self.bulk {
                    None => {
                        let rest = &buf[self.pos..];
                        let Some(cr) = memchr(b'\r', &rest[..rest.len().min(INLINE_MAX + 1)]) else {
                            if rest.len() > INLINE_MAX {
                                return Err(perr("too big bulk count string"));
                            }
                            return Ok(false);
                        };
                        if cr + 1 >= rest.len() {
                            return Ok(false);
                        }
                        if rest[0] != b'$' {
                            let c = rest[0];
                            let c = if c.is_ascii_graphic() || c == b' ' { c as char } else { ' ' };
                            return Err(ProtocolError(format!("expected '$', got '{c}'")));
                        }
                        let len = match parse_i64(&rest[1..cr]) {
                            Some(n) if n >= 0 && n as u64 <= limits.max_bulk as u64 => n,
                            _ => return Err(perr("invalid bulk length")),
                        };
                        if limits.unauthenticated && len > UNAUTH_MAX_BULK {
                            return Err(perr("unauthenticated bulk length"));
                        }
                        let len = len as usize;
                        self.pos += cr + 2;
                        if self.pos.saturating_add(len).saturating_add(2) > limits.max_command {
                            return Err(perr("request too large"));
                        }
                        self.bulk = Some(len);
                    }
                    Some(len) => {
                        let end = self.pos + len + 2;
                        if buf.len() < end {
                            return Ok(false);
                        }
                        self.ranges.push((self.pos, self.pos + len));
                        self.pos = end;
                        self.bulk = None;
                        self.remaining -= 1;
                    }
                }
            }
            let frame = buf.split_to(self.pos).freeze();
            self.pos = 0;
            args.extend(self.ranges.iter().map(|&(a, b)| frame.slice(a..b)));
            return Ok(true);
        }
    }

    /// Bytes still needed to complete a bulk payload being received, so
    /// the reader can reserve room for it in one go.
    pub(crate) fn wanted(&self, buffered: usize) -> usize {
        match self.bulk {
            Some(len) => (self.pos + len + 2).saturating_sub(buffered),
            None => 0,
        }
    }
}

/// One inline command line. `Some(true)`: a command was parsed into `args`;
/// `Some(false)`: an empty line was skipped; `None`: the line is incomplete.
fn inline(buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<Option<bool>, ProtocolError> {
    let Some(nl) = memchr(b'\n', &buf[..buf.len().min(INLINE_MAX + 1)]) else {
        if buf.len() > INLINE_MAX {
            return Err(perr("too big inline request"));
        }
        return Ok(None);
    };
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    split_args(line, args).ok_or_else(|| perr("unbalanced quotes in request"))?;
    buf.advance(nl + 1);
    Ok(Some(!args.is_empty()))
}

/// Splits an inline command like Redis's `sdssplitargs`: whitespace
/// separates arguments; "double quotes" take `\n \r \t \b \a \xHH` escapes;
/// 'single quotes' take `\'`. A closing quote must be followed by a space or
/// the end. `None` on unbalanced quotes.
pub(crate) fn split_args(line: &[u8], args: &mut Vec<Bytes>) -> Option<()> {
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Some(());
        }
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            if inq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                } else if line[i] == b'"' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                }
                i += 1;
            } else if insq {
                if i >= n {
                    return None;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                } else if line[i] == b'\'' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(line[i]);
                i += 1;
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    c if is_space(c) => break,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(Bytes::from(cur));
    }
}

/// C's `isspace`, which separates inline arguments. (A NUL byte is an
/// ordinary byte here: the line is not a C string.)
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn memchr(c: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == c)
}

/// Parses a decimal integer the way Redis's `string2ll` does: an optional
/// minus sign, digits, no leading zeros (except "0"), no spaces, no plus
/// sign, in range.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as i128;
    }
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

/// A SCAN cursor read as Redis reads one (`strtoul`, base 10, nothing
/// after the digits, no leading space): an empty cursor is 0 and a
/// negative one wraps, as there; past `u64` it is refused.
pub(crate) fn parse_cursor(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
    Some(if negative { n.wrapping_neg() } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_bulk: 1 << 20, max_command: 1 << 21, unauthenticated: false };

    fn all(input: &[u8], limits: &Limits) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = Parser::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut args = Vec::new();
        // Byte by byte: every prefix must be handled.
        for b in input {
            buf.extend_from_slice(&[*b]);
            while p.next(&mut buf, limits, &mut args)? {
                out.push(args.iter().map(|a| a.to_vec()).collect());
            }
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline() {
        let got = all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*0\r\nPING\r\n\r\n  set a \"b c\\x41\" 'd\\'e'\n", &L).unwrap();
        let want: Vec<Vec<Vec<u8>>> = vec![
            vec![b"GET".to_vec(), b"k".to_vec()],
            vec![b"PING".to_vec()],
            vec![b"set".to_vec(), b"a".to_vec(), b"b cA".to_vec(), b"d'e".to_vec()],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn errors_have_redis_texts() {
        let e = |i: &[u8]| all(i, &L).unwrap_err().0;
        assert_eq!(e(b"*1\r\n$999999999999\r\n"), "invalid bulk length");
        assert_eq!(e(b"*99999999\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*1\r\n:1\r\n"), "expected '$', got ':'");
        assert_eq!(e(b"*1\r\n$-1\r\n"), "invalid bulk length");
        assert_eq!(e(b"ECHO \"a\n"), "unbalanced quotes in request");
        assert_eq!(e(b"ECHO \"a\"b\n"), "unbalanced quotes in request");
        // A NUL byte is part of an argument, not an endless separator.
        assert_eq!(all(b"ECHO a\0b\n", &L).unwrap(), vec![vec![b"ECHO".to_vec(), b"a\0b".to_vec()]]);
        assert_eq!(all(b"\0\n", &L).unwrap(), vec![vec![b"\0".to_vec()]]);
        assert_eq!(e(&vec![b'x'; INLINE_MAX + 2]), "too big inline request");
        let mut long = b"*".to_vec();
        long.extend(std::iter::repeat_n(b'1', INLINE_MAX + 1));
        assert_eq!(e(&long), "too big mbulk count string");
        let small = Limits { max_bulk: 10, max_command: 30, unauthenticated: false };
        assert_eq!(all(b"*1\r\n$11\r\n", &small).unwrap_err().0, "invalid bulk length");
        assert_eq!(all(b"*2\r\n$10\r\n0123456789\r\n$10\r\n", &small).unwrap_err().0, "request too large");
        assert_eq!(all(b"*6\r\n", &small).unwrap_err().0, "invalid multibulk length");
        let unauth = Limits { unauthenticated: true, ..L };
        assert_eq!(all(b"*11\r\n", &unauth).unwrap_err().0, "unauthenticated multibulk length");
        assert_eq!(all(b"*1\r\n$16385\r\n", &unauth).unwrap_err().0, "unauthenticated bulk length");
    }

    #[test]
    fn integers_like_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"+1", b"01", b"-0", b" 1", b"1 ", b"9223372036854775808", b"1.5"] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut p = Parser::default();
            let mut buf = BytesMut::new();
            let mut args = Vec::new();
            let len = (x % 64) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"*$\r\n0123456789-abc \"'\\x\0\x0b";
                // Half the time any byte at all.
                let b = if x & 1 == 0 { (x >> 8) as u8 } else { alphabet[(x % alphabet.len() as u64) as usize] };
                buf.extend_from_slice(&[b]);
            }
            while let Ok(true) = p.next(&mut buf, &L, &mut args) {
                // Every argument comes from the input: no more of them than bytes.
                assert!(args.len() <= len, "{args:?}");
            }
        }
    }

    #[test]
    fn cursors_read_as_strtoul_reads_them() {
        let p = |s: &str| parse_cursor(s.as_bytes());
        assert_eq!(p("0"), Some(0));
        assert_eq!(p(""), Some(0));
        assert_eq!(p("+7"), Some(7));
        assert_eq!(p("-0"), Some(0));
        assert_eq!(p("-1"), Some(u64::MAX));
        assert_eq!(p("-18446744073709551615"), Some(1));
        assert_eq!(p("18446744073709551615"), Some(u64::MAX));
        for bad in ["18446744073709551616", "-18446744073709551616", " 1", "1 ", "0x1", "-", "+", "1.0", "٣"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
