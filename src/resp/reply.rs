//! The reply encoder: RESP2 and RESP3 written straight into a byte buffer.
//!
//! Replies are appended to one [`Out`] per connection and written to the
//! socket once per read (pipelining). Small replies are copied into the
//! buffer; a large value is queued as its own [`Bytes`] chunk, so a GET of a
//! big value costs a reference count, not a copy.

use bytes::{BufMut, Bytes, BytesMut};

/// Values at least this long are queued as separate chunks instead of being
/// copied into the output buffer.
const BIG_VALUE: usize = 16 * 1024;

/// A connection's pending output.
#[derive(Debug)]
pub(crate) struct Out {
    /// Whether the connection speaks RESP3 (after `HELLO 3`).
    pub(crate) resp3: bool,
    /// Chunks that come before `buf`, in order.
    chunks: Vec<Bytes>,
    /// Bytes held in `chunks`.
    chunked: usize,
    /// The tail being written.
    buf: BytesMut,
    /// Error replies written since the last [`Out::take_errors`].
    errors: u64,
    /// Error replies written since the last [`Out::take_codes`], by code
    /// (the error's first word), for INFO errorstats.
    codes: Vec<(Box<str>, u64)>,
}

impl Out {
    pub(crate) fn new() -> Self {
        Out {
            resp3: false,
            chunks: Vec::new(),
            chunked: 0,
            buf: BytesMut::with_capacity(16 * 1024),
            errors: 0,
            codes: Vec::new(),
        }
    }

    /// Bytes pending.
    pub(crate) fn len(&self) -> usize {
        self.chunked + self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything written after `len` bytes (only when no chunk was
    /// queued after that point; otherwise drops everything).
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.chunked {
            self.buf.truncate(len - self.chunked);
        } else {
            self.clear();
        }
    }

    /// Drops everything pending.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.chunked = 0;
        self.buf.clear();
    }

    /// The pending output, in order: the chunks, then the buffer.
    pub(crate) fn parts(&self) -> (&[Bytes], &[u8]) {
        (&self.chunks, &self.buf)
    }

    /// Forgets the output after it was written, keeping a modest buffer.
    pub(crate) fn written(&mut self) {
        self.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf = BytesMut::with_capacity(16 * 1024);
        }
    }

    /// Appends raw, already encoded bytes.
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Error replies written since the last call.
    pub(crate) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Error replies written since the last call, counted by code.
    pub(crate) fn take_codes(&mut self) -> Vec<(Box<str>, u64)> {
        std::mem::take(&mut self.codes)
    }

    pub(crate) fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// A simple string (`+...`). `s` must not contain CR or LF.
    pub(crate) fn simple(&mut self, s: &str) {
        self.buf.put_u8(b'+');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// An error reply. `msg` starts with its code (`ERR ...`, `WRONGPASS
    /// ...`); CR and LF are replaced by spaces, as Redis does.
    pub(crate) fn error(&mut self, msg: &str) {
        self.errors += 1;
        let code = msg.split(' ').next().unwrap_or(msg);
        match self.codes.iter_mut().find(|(c, _)| **c == *code) {
            Some((_, n)) => *n += 1,
            None => self.codes.push((code.into(), 1)),
        }
        self.buf.put_u8(b'-');
        self.buf.extend(msg.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        self.buf.extend_from_slice(b"\r\n");
    }

    pub(crate) fn int(&mut self, i: i64) {
        self.header(b':', i);
    }

    /// A bulk string (copied unless big).
    pub(crate) fn bulk(&mut self, b: &[u8]) {
        self.header(b'$', b.len() as i64);
        self.buf.extend_from_slice(b);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A bulk string from shared bytes: big values are queued, not copied.
    pub(crate) fn bulk_bytes(&mut self, b: &Bytes) {
        if b.len() < BIG_VALUE {
            return self.bulk(b);
        }
        self.header(b'$', b.len() as i64);
        let head = self.buf.split().freeze();
        self.chunked += head.len() + b.len();
        self.chunks.push(head);
        self.chunks.push(b.clone());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A bulk string or a null.
    pub(crate) fn opt_bulk(&mut self, b: Option<&Bytes>) {
        match b {
            Some(b) => self.bulk_bytes(b),
            None => self.null(),
        }
    }

    /// A bulk string lent by the store: small ones are copied into the
    /// buffer, big ones into bytes of their own, queued as `bulk_bytes`
    /// queues them.
    pub(crate) fn bulk_lent(&mut self, b: &[u8]) {
        if b.len() < BIG_VALUE {
            self.bulk(b)
        } else {
            self.bulk_bytes(&Bytes::copy_from_slice(b))
        }
    }

    /// The null bulk string (RESP2 `$-1`, RESP3 `_`).
    pub(crate) fn null(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"$-1\r\n");
        }
    }

    /// The null array (RESP2 `*-1`, RESP3 `_`): an aborted EXEC.
    pub(crate) fn null_array(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"*-1\r\n");
        }
    }

    /// The header of an array of `n` elements.
    pub(crate) fn array(&mut self, n: usize) {
        self.header(b'*', n as i64);
    }

    /// The header of a map of `n` pairs (a flat array of 2n in RESP2).
    pub(crate) fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n as i64);
        } else {
            self.header(b'*', 2 * n as i64);
        }
    }

    /// The header of a set of `n` elements (an array in RESP2).
    pub(crate) fn set(&mut self, n: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, n as i64);
    }

    /// The header of an out-of-band push of `n` elements (an array in
    /// RESP2, as pub/sub messages always were).
    pub(crate) fn push(&mut self, n: usize) {
        self.header(if self.resp3 { b'>' } else { b'*' }, n as i64);
    }

    /// Text for humans: a verbatim string in RESP3, a bulk string in RESP2
    /// (what Redis does for INFO and CLIENT INFO).
    pub(crate) fn verbatim(&mut self, text: &str) {
        if self.resp3 {
            self.header(b'=', text.len() as i64 + 4);
            self.buf.extend_from_slice(b"txt:");
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }

    fn header(&mut self, kind: u8, n: i64) {
        self.buf.put_u8(kind);
        write_int(&mut self.buf, n);
        self.buf.extend_from_slice(b"\r\n");
    }
}

/// Writes `n` in decimal without going through `fmt`.
pub(crate) fn write_int(buf: &mut BytesMut, n: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        buf.put_u8(b'-');
    }
    buf.extend_from_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(o: &mut Out) -> Vec<u8> {
        let (chunks, buf) = o.parts();
        let mut v = Vec::new();
        for c in chunks {
            v.extend_from_slice(c);
        }
        v.extend_from_slice(buf);
        o.written();
        v
    }

    #[test]
    fn encodes_both_protocols() {
        let mut o = Out::new();
        o.int(i64::MIN);
        o.int(0);
        o.int(42);
        o.null();
        o.map(1);
        o.error("ERR a\r\nb");
        assert_eq!(flat(&mut o), b":-9223372036854775808\r\n:0\r\n:42\r\n$-1\r\n*2\r\n-ERR a  b\r\n");
        o.resp3 = true;
        o.null();
        o.map(2);
        o.push(3);
        o.verbatim("x");
        assert_eq!(flat(&mut o), b"_\r\n%2\r\n>3\r\n=5\r\ntxt:x\r\n");
        assert_eq!(o.take_errors(), 1);
    }

    #[test]
    fn big_values_are_chunked_in_order() {
        let mut o = Out::new();
        let big = Bytes::from(vec![b'x'; BIG_VALUE]);
        o.ok();
        o.bulk_bytes(&big);
        o.int(1);
        assert_eq!(o.len(), 5 + 8 + BIG_VALUE + 2 + 4);
        let mut want = b"+OK\r\n$16384\r\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"\r\n:1\r\n");
        assert_eq!(flat(&mut o), want);
        assert!(o.is_empty());
    }
}
