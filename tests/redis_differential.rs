//! Random command sequences against a lone peer and a redis-server, every
//! reply compared byte for byte (RESP2 and RESP3, one command at a time
//! and pipelined in batches of random length). `redis_parity.rs`
//! checks the cases someone thought of; this finds the ones nobody did:
//! odd integers and floats, empty and binary values, options in every
//! order, glob patterns (KEYS, and whole SCAN walks with their options,
//! the keys sorted), and commands inside
//! MULTI/EXEC and after WATCH, on five keys
//! so that they keep meeting each other's values. A second run uses two
//! connections, one of them switching CLIENT TRACKING between its modes
//! (redirecting to a third at times), and compares the invalidations too;
//! half its seeds pipeline the tracking connection's commands.
//! A third compares the keyspace notifications each command publishes.
//! `notify_replicated.rs` runs the same generator on two peers of one
//! mesh.
//!
//! A failure names its seed and step and prints the commands before it;
//! `MESHCACHE_DIFF_SEED=S cargo test --test integration redis_differential`
//! replays one seed. `MESHCACHE_DIFF_SEEDS=N` runs more.
//!
//! Left out of the generator, because the two servers differ on purpose
//! or by version (README.md, "Redis clients"; redis_parity.rs's
//! `redis72` steps): `OBJECT` (no shared objects, encodings by content),
//! `COPY ... DB`, values past the largest write (`SETBIT` and
//! `BITFIELD` writes far out), a `BITFIELD` whose every write fails under
//! `OVERFLOW FAIL` (`Gen::bitfield`),
//! `BITCOUNT`/`BITPOS` arguments that Redis 7.2 refuses and 7.0 accepts
//! on a missing key, FLUSHALL (mesh-wide here), and anything that reads
//! the clock: expiries a few milliseconds out, TTLs and DBSIZE (which
//! counts expired keys until they are reclaimed, at its own moment on
//! each server). Expiry times here are in the past, invalid, or far out.
//! With tracking, no SET gets an absolute expiry in the past (see
//! `Gen::expired_sets`). A DEL or UNLINK never names a key watched on
//! either connection, and no key is watched while a DEL of it waits in
//! the other's MULTI: deleting an absent key is a write here (README.md,
//! WATCH).

use crate::common;

use common::redis_ref::{pair, show, Conn, RedisServer, RespPeer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpStream, UnixStream};

pub(crate) const KEYS: &[&str] = &["k0", "k1", "k2", "{t}a", "{t}b"];
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "10",
    "3.5",
    "abc",
    "9223372036854775807",
    "-9223372036854775808",
    "1e3",
    " 1",
    "inf",
    "x",
    "0.1",
    "-0",
    "+5",
    "1.",
    ".5",
    "nan",
    "00",
    "18446744073709551616",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];
/// The generator's commands that write nothing.
const READS: &[&[u8]] = &[
    b"GET",
    b"MGET",
    b"EXISTS",
    b"STRLEN",
    b"GETRANGE",
    b"SUBSTR",
    b"GETBIT",
    b"BITCOUNT",
    b"BITPOS",
    b"LCS",
    b"TYPE",
    b"TOUCH",
    b"BITFIELD_RO",
    b"KEYS",
    b"SCAN",
    b"ECHO",
    b"PING",
    b"MULTI",
    b"EXEC",
    b"DISCARD",
    b"WATCH",
    b"UNWATCH",
];
/// Integers for ranges and counts: edges of every width, and non-integers.
const INTS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "8",
    "15",
    "16",
    "100",
    "-100",
    "2147483648",
    "-2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "abc",
    "",
    "1.5",
    " 3",
    "-0",
    "+1",
];
/// Integers that a missing key's BITCOUNT and BITPOS accept in 7.0 and 7.2.
const RANGE: &[&str] = &["0", "1", "-1", "2", "7", "8", "100", "-100", "2147483648", "-9223372036854775808"];
/// Expiry values: invalid, past or far out, never a few milliseconds.
const EXPIRES: &[&str] =
    &["0", "-1", "abc", "1.5", "100000", "2147483648", "4611686018427387904", "9223372036854775807"];
const AT: &[&str] = &["0", "1", "-5", "4102444800", "4102444800000", "1125899906842624"];
const FLOATS: &[&str] = &[
    "0",
    "1",
    "-1",
    "1.5",
    "-2.25",
    "0.1",
    "0.2",
    "-0.3",
    "1e-20",
    "1e10",
    "inf",
    "-inf",
    "nan",
    "abc",
    "1e308",
    "-1e308",
    "5e-324",
    "0x10",
    "",
    " 1",
    "1 ",
    "0.000003814697265625",
];

/// The generator, and what it must know of the connection's state: the
/// keys watched, and whether a MULTI is open.
pub(crate) struct Gen {
    rng: SmallRng,
    watched: Vec<Vec<u8>>,
    /// Keys another connection watches.
    watched_elsewhere: Vec<Vec<u8>>,
    /// Keys of the DEL and UNLINK commands queued in this connection's
    /// MULTI, and in another's: not to be watched, as they run later.
    deletes_queued: Vec<Vec<u8>>,
    deletes_queued_elsewhere: Vec<Vec<u8>>,
    in_multi: bool,
    /// SET may be given an absolute expiry in the past. Redis 7.0 stores
    /// such a value and deletes it when it is next looked up or by its
    /// expiry cycle, and invalidates it then for tracking clients; a peer
    /// deletes it at once. So a run with tracking leaves them out.
    expired_sets: bool,
    /// For the run that compares keyspace notifications: a transaction
    /// names each key once, and deletes nothing (a key written twice in
    /// one notifies once here, as many times as written in Redis; a DEL
    /// is checked against the reference before it is sent, which a queued
    /// one cannot be), and MSET and MSETNX name each key once (they are
    /// transactions here).
    notify: bool,
    /// The keys the commands queued in this connection's MULTI name.
    multi_keys: Vec<Vec<u8>>,
}

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen {
            rng: SmallRng::seed_from_u64(seed),
            watched: Vec::new(),
            watched_elsewhere: Vec::new(),
            deletes_queued: Vec::new(),
            deletes_queued_elsewhere: Vec::new(),
            in_multi: false,
            expired_sets: true,
            notify: false,
            multi_keys: Vec::new(),
        }
    }

    /// A key for DEL or UNLINK: not a watched one, on any connection.
    /// Deleting a key is a mesh-wide write even where the key is absent
    /// (another peer may hold a value not yet here), so it aborts an EXEC
    /// that watched the key, where Redis, which deleted nothing, does not.
    fn unwatched_key(&mut self) -> Option<Vec<u8>> {
        let watched = |k: &str| self.watched.iter().chain(&self.watched_elsewhere).any(|w| w == k.as_bytes());
        let free: Vec<&str> = KEYS.iter().copied().filter(|k| !watched(k)).collect();
        (!free.is_empty()).then(|| free[self.rng.random_range(0..free.len())].as_bytes().to_vec())
    }

    /// The next command, with the state it leaves noted.
    pub(crate) fn next(&mut self) -> Vec<Vec<u8>> {
        let mut c = self.command();
        if self.notify && self.in_multi && !READS.contains(&c[0].as_slice()) {
            // The keys a write names (and values that happen to read as
            // one: a stricter rule, never a looser one).
            let named: Vec<Vec<u8>> =
                c[1..].iter().filter(|a| KEYS.iter().any(|k| k.as_bytes() == a.as_slice())).cloned().collect();
            if c[0] == b"DEL" || c[0] == b"UNLINK" || named.iter().any(|k| self.multi_keys.contains(k)) {
                c = vec![b"GET".to_vec(), self.key()];
            } else {
                self.multi_keys.extend(named);
            }
        }
        if self.notify {
            match c[0].as_slice() {
                b"MSET" | b"MSETNX" => {
                    let mut seen = Vec::new();
                    let mut kept = vec![c[0].clone()];
                    for pair in c[1..].chunks(2) {
                        if pair.len() == 1 || !seen.contains(&pair[0]) {
                            seen.push(pair[0].clone());
                            kept.extend_from_slice(pair);
                        }
                    }
                    c = kept;
                }
                _ => {}
            }
        }
        match c[0].as_slice() {
            b"MULTI" => self.in_multi = true,
            b"EXEC" | b"DISCARD" if self.in_multi => {
                self.in_multi = false;
                self.watched.clear();
                self.deletes_queued.clear();
                self.multi_keys.clear();
            }
            b"DEL" | b"UNLINK" if self.in_multi => self.deletes_queued.extend_from_slice(&c[1..]),
            b"WATCH" if !self.in_multi => self.watched.push(c[1].clone()),
            b"UNWATCH" if !self.in_multi => self.watched.clear(),
            _ => {}
        }
        c
    }

    /// A glob pattern for KEYS and SCAN: the keys' own characters, and every one
    /// that means something to a glob (classes, ranges, negation,
    /// escapes), unbalanced as often as not.
    fn pattern(&mut self) -> Vec<u8> {
        const PARTS: &[&str] = &["*", "?", "[", "]", "^", "-", "\\", "k", "0", "1", "2", "{", "}", "t", "a", "b", "z"];
        if self.rng.random_bool(0.4) {
            let n = self.rng.random_range(0..7);
            return (0..n).flat_map(|_| self.pick(PARTS)).collect();
        }
        // A key, each character kept or replaced by something that may
        // match it: most of these match a key or nearly do.
        let mut p = Vec::new();
        for c in self.key() {
            let other = self.pick(PARTS)[0];
            match self.rng.random_range(0..10) {
                0 => p.push(b'?'),
                1 => p.push(b'*'),
                2 => p.extend([b'\\', c]),
                3 => p.extend([b'[', c, b']']),
                4 => p.extend([b'[', b'^', other, b']']),
                5 => {
                    // A range in either order, one end the character.
                    let (lo, hi) = if self.rng.random_bool(0.5) { (c, other) } else { (other, c) };
                    p.extend([b'[', lo, b'-', hi, b']']);
                }
                _ => p.push(c),
            }
        }
        if self.rng.random_bool(0.2) {
            p.push(b'*');
        }
        p
    }

    fn pick(&mut self, from: &[&'static str]) -> Vec<u8> {
        from[self.rng.random_range(0..from.len())].as_bytes().to_vec()
    }

    fn key(&mut self) -> Vec<u8> {
        self.pick(KEYS)
    }

    fn value(&mut self) -> Vec<u8> {
        if self.rng.random_bool(0.8) {
            self.pick(VALUES)
        } else {
            let n = self.rng.random_range(0..6);
            (0..n).map(|_| self.rng.random()).collect()
        }
    }

    /// An expiry option and its value: a relative one from `EXPIRES`, an
    /// absolute one from `AT`.
    fn expiry(&mut self) -> [Vec<u8>; 2] {
        let unit = self.pick(&["EX", "PX", "EXAT", "PXAT"]);
        let value = if unit.ends_with(b"AT") { self.pick(AT) } else { self.pick(EXPIRES) };
        [unit, value]
    }

    fn either(&mut self, options: &[&[&'static str]]) -> Vec<Vec<u8>> {
        let o = options[self.rng.random_range(0..options.len())];
        o.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// A CLIENT command of client-side caching: tracking turned on with
    /// options in any order (some refused together, or as a switch of
    /// mode while on), off, CLIENT CACHING for the next command, or the
    /// client's tracking state.
    fn tracking(&mut self) -> Vec<Vec<u8>> {
        let w = |s: &str| s.as_bytes().to_vec();
        match self.rng.random_range(0..8) {
            0 => vec![w("CLIENT"), w("TRACKING"), w("off")],
            1 | 2 => vec![w("CLIENT"), w("CACHING"), self.pick(&["yes", "no"])],
            3 => vec![w("CLIENT"), w(if self.rng.random_bool(0.5) { "TRACKINGINFO" } else { "GETREDIR" })],
            _ => {
                let mut opts: Vec<Vec<Vec<u8>>> = Vec::new();
                if self.rng.random_bool(0.4) {
                    opts.push(vec![w("BCAST")]);
                }
                for _ in 0..self.rng.random_range(0..3) {
                    opts.push(vec![w("PREFIX"), self.pick(&["k", "k1", "{t}", "{t}a", "x", ""])]);
                }
                for (o, p) in [("OPTIN", 0.2), ("OPTOUT", 0.2), ("NOLOOP", 0.3)] {
                    if self.rng.random_bool(p) {
                        opts.push(vec![w(o)]);
                    }
                }
                if self.rng.random_bool(0.25) {
                    // The run's RESP2 connection subscribed to
                    // __redis__:invalidate, named by its id on each server.
                    opts.push(vec![w("REDIRECT"), w("<c>")]);
                }
                for i in (1..opts.len()).rev() {
                    opts.swap(i, self.rng.random_range(0..=i));
                }
                [w("CLIENT"), w("TRACKING"), w("on")].into_iter().chain(opts.into_iter().flatten()).collect()
            }
        }
    }

    fn command(&mut self) -> Vec<Vec<u8>> {
        let w = |s: &str| s.as_bytes().to_vec();
        match self.rng.random_range(0..49) {
            0 => {
                let mut c = vec![w("SET"), self.key(), self.value()];
                let opts: &[&[&str]] =
                    &[&[], &["NX"], &["XX"], &["GET"], &["NX", "GET"], &["XX", "GET"], &["KEEPTTL"], &["NX", "XX"]];
                c.extend(self.either(opts));
                if self.rng.random_bool(0.3) {
                    let e = self.expiry();
                    if self.expired_sets || !e[0].ends_with(b"AT") {
                        c.extend(e);
                    }
                }
                c
            }
            1 => vec![w("GET"), self.key()],
            2 => {
                let n = self.rng.random_range(1..4);
                std::iter::once(w("MGET")).chain((0..n).map(|_| self.key())).collect()
            }
            3 | 4 => {
                let mut c = vec![w(if self.rng.random_bool(0.5) { "MSET" } else { "MSETNX" })];
                for _ in 0..self.rng.random_range(1..3) {
                    c.extend([self.key(), self.value()]);
                }
                if self.rng.random_bool(0.2) {
                    c.push(self.key());
                }
                c
            }
            5 | 34 => match (self.unwatched_key(), self.unwatched_key()) {
                (Some(a), Some(b)) => vec![w(if self.rng.random_bool(0.5) { "DEL" } else { "UNLINK" }), a, b],
                _ => vec![w("GET"), self.key()],
            },
            6 => vec![w("EXISTS"), self.key(), self.key()],
            7 => vec![w("SETNX"), self.key(), self.value()],
            8 => vec![w("GETDEL"), self.key()],
            9 => vec![w("STRLEN"), self.key()],
            10 => vec![w("APPEND"), self.key(), self.value()],
            11 => vec![
                w(if self.rng.random_bool(0.5) { "GETRANGE" } else { "SUBSTR" }),
                self.key(),
                self.pick(INTS),
                self.pick(INTS),
            ],
            12 => {
                vec![w("SETRANGE"), self.key(), self.pick(&["0", "1", "3", "10", "-1", "a", "536870912"]), self.value()]
            }
            13 => vec![w(if self.rng.random_bool(0.5) { "INCR" } else { "DECR" }), self.key()],
            14 => vec![w(if self.rng.random_bool(0.5) { "INCRBY" } else { "DECRBY" }), self.key(), self.pick(INTS)],
            15 | 16 => vec![w("INCRBYFLOAT"), self.key(), self.pick(FLOATS)],
            17 => vec![
                w("SETBIT"),
                self.key(),
                self.pick(&["0", "1", "7", "8", "100", "-1", "a", "4294967296"]),
                self.pick(&["0", "1", "2", "a", "-1"]),
            ],
            18 => vec![w("GETBIT"), self.key(), self.pick(&["0", "1", "7", "8", "100", "-1", "a", "4294967296"])],
            19 => {
                let mut c = vec![w("BITCOUNT"), self.key()];
                if self.rng.random_bool(0.6) {
                    c.extend([self.pick(RANGE), self.pick(RANGE)]);
                    if self.rng.random_bool(0.5) {
                        c.push(self.pick(&["BYTE", "BIT", "bit"]));
                    }
                }
                c
            }
            20 => {
                let mut c = vec![w("BITPOS"), self.key(), self.pick(&["0", "1"])];
                let n = self.rng.random_range(0..3);
                c.extend((0..n).map(|_| self.pick(RANGE)));
                if n == 2 && self.rng.random_bool(0.5) {
                    c.push(self.pick(&["BYTE", "BIT"]));
                }
                c
            }
            21 => {
                let mut c = vec![w("BITOP"), self.pick(&["AND", "OR", "XOR", "NOT", "x"]), self.key()];
                let n = self.rng.random_range(0..3);
                c.extend((0..n).map(|_| self.key()));
                c
            }
            22 => {
                let mut c = vec![w("LCS"), self.key(), self.key()];
                let opts: &[&[&str]] = &[
                    &[],
                    &["LEN"],
                    &["IDX"],
                    &["IDX", "WITHMATCHLEN"],
                    &["IDX", "MINMATCHLEN", "2"],
                    &["LEN", "IDX"],
                    &["x"],
                ];
                c.extend(self.either(opts));
                c
            }
            23 => vec![w("GETSET"), self.key(), self.value()],
            24 => vec![w("TYPE"), self.key()],
            25 => vec![w(if self.rng.random_bool(0.5) { "RENAME" } else { "RENAMENX" }), self.key(), self.key()],
            26 => {
                let mut c = vec![w("COPY"), self.key(), self.key()];
                c.extend(self.either(&[&[], &["REPLACE"], &["x"]]));
                c
            }
            27 => vec![w("PERSIST"), self.key()],
            28 => {
                let mut c = vec![
                    w(if self.rng.random_bool(0.5) { "EXPIRE" } else { "PEXPIRE" }),
                    self.key(),
                    self.pick(EXPIRES),
                ];
                c.extend(self.either(&[&[], &["NX"], &["XX"], &["GT"], &["LT"], &["NX", "XX"], &["GT", "LT"], &["x"]]));
                c
            }
            29 => {
                let mut c = vec![
                    w(if self.rng.random_bool(0.5) { "EXPIREAT" } else { "PEXPIREAT" }),
                    self.key(),
                    self.pick(AT),
                ];
                c.extend(self.either(&[&[], &["GT"], &["LT"], &["NX"], &["XX"]]));
                c
            }
            30 => {
                let mut c = vec![w("GETEX"), self.key()];
                match self.rng.random_range(0..4) {
                    0 => {}
                    1 => c.push(w("PERSIST")),
                    2 => c.extend(self.expiry()),
                    _ => c.extend(self.either(&[&["EX", "100", "PERSIST"], &["x"], &["EX"]])),
                }
                c
            }
            31 => vec![w("ECHO"), self.value()],
            32 => {
                let n = self.rng.random_range(0..3);
                std::iter::once(w("PING")).chain((0..n).map(|_| self.value())).collect()
            }
            33 => vec![w("TOUCH"), self.key()],
            35 | 36 => vec![w("MULTI")],
            37 => vec![w("EXEC")],
            38 => vec![w("DISCARD")],
            39 => {
                let k = self.key();
                if self.deletes_queued_elsewhere.contains(&k) {
                    vec![w("GET"), k]
                } else {
                    vec![w("WATCH"), k]
                }
            }
            40 => vec![w("UNWATCH")],
            41 => vec![w("EXISTS"), self.key()],
            // Outside MULTI, where its reply is sorted before it is
            // compared (the two servers list keys in different orders).
            42 | 43 if !self.in_multi => vec![w("KEYS"), self.pattern()],
            // A whole walk from cursor 0, however written (see
            // `scan_walk`), or one step from a cursor that is not one. (A
            // cursor past the keyspace is not tried: here it ends the
            // walk at once, where Redis's masks it into its table.)
            44 | 45 if !self.in_multi => {
                let cursor = self.pick(&[
                    "0",
                    "0",
                    "0",
                    "0",
                    "",
                    "+0",
                    "-0",
                    "abc",
                    " 0",
                    "0x0",
                    "18446744073709551616",
                    "-",
                    "+",
                ]);
                let mut c = vec![w("SCAN"), cursor];
                for _ in 0..self.rng.random_range(0..3) {
                    match self.rng.random_range(0..4) {
                        0 => c.extend([w("COUNT"), self.pick(&["1", "2", "10", "1000", "0", "-1", "abc"])]),
                        1 => c.extend([w("TYPE"), self.pick(&["string", "STRING", "list", "hash"])]),
                        2 => c.push(self.pick(&["MATCH", "COUNT", "x"])),
                        _ => c.extend([w("MATCH"), self.pattern()]),
                    }
                }
                c
            }
            47 | 48 => self.bitfield(),
            _ => vec![w("GET"), self.key()],
        }
    }

    /// BITFIELD or BITFIELD_RO with up to four subcommands: fields of
    /// every width (and widths refused), offsets plain and `#`, values
    /// and increments at the edges, each overflow mode, and stray or
    /// missing arguments. A write's field stays near the start of the
    /// value (a far one would grow it past the largest write here, where
    /// Redis allocates up to 512 MB). `OVERFLOW FAIL` comes only after a
    /// first write: Redis grows the value for the writes before it runs
    /// them and signals no change when every write then fails, where
    /// here growing the value is a write (see `resp/cmd/bitfield.rs`).
    fn bitfield(&mut self) -> Vec<Vec<u8>> {
        const TYPES: &[&str] =
            &["i1", "i5", "i8", "i8", "i16", "i32", "i63", "i64", "u1", "u3", "u8", "u8", "u16", "u31", "u63"];
        const BAD_TYPES: &[&str] = &["u64", "i65", "u0", "I8", "x8", "i", ""];
        const WRITE_AT: &[&str] = &["0", "1", "3", "7", "8", "13", "31", "64", "#0", "#1", "#3"];
        // `#536870912` is far but valid for a field narrower than 8 bits.
        const READ_AT: &[&str] = &["0", "5", "8", "12", "40", "#1", "#2", "4294967295", "#536870912"];
        const BAD_AT: &[&str] = &["-1", "#-1", "a", "", "4294967296"];
        const NUMBERS: &[&str] = &[
            "0",
            "1",
            "-1",
            "3",
            "7",
            "100",
            "-100",
            "255",
            "-129",
            "2147483648",
            "-2147483648",
            "9223372036854775807",
            "-9223372036854775808",
        ];
        let w = |s: &str| s.as_bytes().to_vec();
        let read_only = self.rng.random_bool(0.2);
        let mut c = vec![w(if read_only { "BITFIELD_RO" } else { "BITFIELD" }), self.key()];
        let mut wrote = false;
        for _ in 0..self.rng.random_range(0..7) {
            // Mostly valid arguments, so that most commands run; now and
            // then one Redis refuses.
            let ty = if self.rng.random_bool(0.95) { self.pick(TYPES) } else { self.pick(BAD_TYPES) };
            let bad_at = self.rng.random_bool(0.05);
            match self.rng.random_range(0..14) {
                0..=4 => c.extend([w("GET"), ty, self.pick(if bad_at { BAD_AT } else { READ_AT })]),
                5..=10 => {
                    let op = self.pick(&["SET", "INCRBY", "incrby"]);
                    let at = self.pick(if bad_at { BAD_AT } else { WRITE_AT });
                    let n = if self.rng.random_bool(0.95) { self.pick(NUMBERS) } else { self.pick(INTS) };
                    c.extend([op, ty, at, n]);
                    wrote = true;
                }
                11 | 12 => {
                    let modes: &[&str] =
                        if wrote { &["WRAP", "SAT", "FAIL", "fail", "FAIL", "x"] } else { &["WRAP", "sat"] };
                    c.extend([w("OVERFLOW"), self.pick(modes)]);
                }
                _ => c.push(self.pick(&["GET", "SET", "OVERFLOW", "x"])),
            }
        }
        c
    }
}

/// One connection on each server, one seed's commands. A pipelined run
/// sends them in batches of random length, each in one write, as a
/// client that pipelines does (a SCAN walk goes alone, step by step).
async fn run_seed(mesh_port: u16, redis: &RedisServer, seed: u64, steps: usize, resp3: bool, pipelined: bool) {
    let (mut ours, mut theirs) = pair(mesh_port, redis).await;
    for c in [&mut ours, &mut theirs] {
        assert_eq!(c.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
        if resp3 {
            c.resp3 = true;
            c.cmd(&[b"HELLO", b"3"]).await;
        }
    }
    let mut g = Gen::new(seed);
    // The batches' lengths come from a generator of their own, so that a
    // seed's commands are the same pipelined or not.
    let mut cut = SmallRng::seed_from_u64(seed ^ 0x0b47_c4e5);
    let mut history: Vec<String> = Vec::new();
    // The commands not yet sent, each with its step.
    let mut batch: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    for step in 0..steps {
        let cmd = g.next();
        let walk = is_walk(&cmd.iter().map(|a| a.as_slice()).collect::<Vec<_>>());
        if !walk {
            batch.push((step, cmd.clone()));
        }
        let last = step + 1 == steps;
        if !batch.is_empty() && (walk || last || !pipelined || cut.random_bool(0.2)) {
            let cmds: Vec<Vec<&[u8]>> = batch.iter().map(|(_, c)| c.iter().map(|a| a.as_slice()).collect()).collect();
            let (a, b) = (ours.pipeline(&cmds).await, theirs.pipeline(&cmds).await);
            for ((args, (at, _)), (a, b)) in cmds.iter().zip(&batch).zip(a.into_iter().zip(b)) {
                let (a, b) = if args[0] == b"KEYS" { (sorted_array(&a), sorted_array(&b)) } else { (a, b) };
                history.push(show(args));
                differ(seed, resp3, pipelined, *at, &history, &a, &b);
            }
            batch.clear();
        }
        if walk {
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
            let (a, b) = (scan_walk(&mut ours, &args).await, scan_walk(&mut theirs, &args).await);
            history.push(show(&args));
            differ(seed, resp3, pipelined, step, &history, &a, &b);
        }
    }
    for c in [&mut ours, &mut theirs] {
        c.resp3 = false;
        c.cmd(&[b"RESET"]).await;
    }
}

/// Fails the run if the two servers answered the last command of
/// `history`, the seed's `step`th, differently, printing the commands
/// before it.
fn differ(seed: u64, resp3: bool, pipelined: bool, step: usize, history: &[String], a: &[u8], b: &[u8]) {
    if a != b {
        let from = history.len().saturating_sub(30);
        panic!(
            "seed {seed} (resp3: {resp3}, pipelined: {pipelined}), step {step}: meshcache and redis-server differ on \
             `{}`\nmeshcache:    {:?}\nredis-server: {:?}\nthe commands before it:\n{}",
            history.last().unwrap(),
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b),
            history[from..history.len() - 1].join("\n")
        );
    }
}

/// The length after a one-byte type (`*3\r\n`, `$5\r\n`), and what
/// follows its line.
fn length(b: &[u8], kind: u8) -> Option<(usize, &[u8])> {
    let b = b.strip_prefix(&[kind])?;
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    Some((std::str::from_utf8(&b[..end]).ok()?.parse().ok()?, &b[end + 2..]))
}

/// A bulk string at the start of `b`, and what follows it.
pub(crate) fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, after) = length(b, b'$')?;
    Some((after.get(..len)?, after.get(len + 2..)?))
}

/// The elements of a frame that is an array of bulk strings.
pub(crate) fn parse_array(frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (n, mut rest) = length(frame, b'*')?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let (item, after) = bulk(rest)?;
        items.push(item.to_vec());
        rest = after;
    }
    rest.is_empty().then_some(items)
}

/// An array of bulk strings.
fn array_frame(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(format!("${}\r\n", i.len()).as_bytes());
        out.extend_from_slice(i);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A reply that is an array of bulk strings with its elements sorted; any
/// other reply as it is.
fn sorted_array(frame: &[u8]) -> Vec<u8> {
    let Some(mut items) = parse_array(frame) else { return frame.to_vec() };
    items.sort();
    array_frame(&items)
}

/// A SCAN from a cursor that reads as 0 (Redis reads it with `strtoul`).
fn is_walk(args: &[&[u8]]) -> bool {
    args[0] == b"SCAN" && [&b"0"[..], b"", b"+0", b"-0"].contains(&args[1])
}

/// A SCAN from cursor 0 to its end, with `args`' options: any pushes
/// that come before its replies, then the keys of every step as one
/// array, sorted (the servers walk in different orders and steps), or the
/// first error.
async fn scan_walk(c: &mut Conn, args: &[&[u8]]) -> Vec<u8> {
    let mut cursor = args[1].to_vec();
    let (mut keys, mut pushes): (Vec<Vec<u8>>, Vec<u8>) = (Vec::new(), Vec::new());
    for _ in 0..100_000 {
        let mut step = args.to_vec();
        step[1] = &cursor;
        let mut frames = exchange(c, &step).await;
        let reply = frames.pop().expect("a reply");
        pushes.extend(frames.concat());
        // *2, the cursor as a bulk string, then the step's keys.
        let Some((next, rest)) = reply.strip_prefix(b"*2\r\n").and_then(bulk) else {
            return [pushes, reply].concat();
        };
        let next = next.to_vec();
        keys.extend(parse_array(rest).expect("an array of keys"));
        if next == b"0" {
            keys.sort();
            return [pushes, array_frame(&keys)].concat();
        }
        cursor = next;
    }
    panic!("a SCAN walk of five keys took 100,000 steps: {}", show(args));
}

/// Sends `args` and reads up to its reply: the frames that come first
/// (invalidation pushes), then the reply.
async fn exchange(c: &mut Conn, args: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut frames = vec![c.cmd(args).await];
    while frames.last().is_some_and(|f| f.starts_with(b">")) {
        frames.push(c.next().await);
    }
    frames
}

/// Two connections on each server, on the same keys: `a` in RESP3 turns
/// CLIENT TRACKING on and off in every mode and runs the generator's
/// commands; `b`, in RESP2 or RESP3, writes beside it, between `a`'s
/// reads and between its WATCH and EXEC. A third, `c`, in RESP2, is
/// subscribed to `__redis__:invalidate` for `a` to redirect to. After
/// every step a PING on `a` and one on `c` collect the invalidations
/// queued for them, so that each is compared where it arrives: before a
/// reply, or after it.
async fn run_tracking_seed(mesh_port: u16, redis: &RedisServer, seed: u64, steps: usize) {
    let b_resp3 = seed % 2 == 1;
    let mut sides = Vec::new();
    for ours in [true, false] {
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(if ours {
                Conn::new(TcpStream::connect(("127.0.0.1", mesh_port)).await.unwrap())
            } else {
                Conn::new(UnixStream::connect(&redis.socket).await.unwrap())
            });
        }
        let [mut a, mut b, mut c]: [Conn; 3] = conns.try_into().ok().unwrap();
        let id = String::from_utf8(c.cmd(&[b"CLIENT", b"ID"]).await).unwrap();
        let c_id = id.trim_start_matches(':').trim_end().to_string();
        c.cmd(&[b"SUBSCRIBE", b"__redis__:invalidate"]).await;
        assert_eq!(b.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
        // HELLO's reply names the server, so it is not compared.
        a.resp3 = true;
        a.cmd(&[b"HELLO", b"3"]).await;
        if b_resp3 {
            b.resp3 = true;
            b.cmd(&[b"HELLO", b"3"]).await;
        }
        sides.push(([a, b, c], c_id));
    }
    let (mut ga, mut gb) = (Gen::new(seed), Gen::new(seed ^ 0x5eed_5eed));
    ga.expired_sets = false;
    gb.expired_sets = false;
    let mut choose = SmallRng::seed_from_u64(!seed);
    // A pipelined run sends runs of `a`'s commands in batches of random
    // length, each in one write; their lengths come from a generator of
    // their own, so that a seed's commands are the same either way.
    let pipelined = seed % 4 >= 2;
    let mut cut = SmallRng::seed_from_u64(seed ^ 0x0b47_c4e5);
    let mut batch: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut history: Vec<String> = Vec::new();
    for step in 0..steps {
        let on_a = choose.random_bool(0.6);
        let cmd = if on_a {
            ga.watched_elsewhere.clone_from(&gb.watched);
            ga.deletes_queued_elsewhere.clone_from(&gb.deletes_queued);
            if !ga.in_multi && choose.random_bool(0.2) {
                ga.tracking()
            } else {
                ga.next()
            }
        } else {
            gb.watched_elsewhere.clone_from(&ga.watched);
            gb.deletes_queued_elsewhere.clone_from(&ga.deletes_queued);
            gb.next()
        };
        let walk = is_walk(&cmd.iter().map(|a| a.as_slice()).collect::<Vec<_>>());
        let at = format!("seed {seed} (b in resp3: {b_resp3}), step {step}");
        // CLIENT TRACKING goes alone: Redis sends what a turn of its loop
        // changed with the tracking state at the turn's end, and a client
        // that turns tracking off and on again inside a pipeline loses the
        // invalidations of the commands before it there. Here it gets
        // them (extra invalidations, never missing ones).
        let switch = cmd.len() > 1 && cmd[0] == b"CLIENT" && cmd[1] == b"TRACKING";
        if on_a && pipelined && !walk && !switch {
            history.push(format!("a> {}", show(&cmd.iter().map(|a| a.as_slice()).collect::<Vec<_>>())));
            batch.push(cmd);
            if step + 1 < steps && cut.random_bool(0.75) {
                continue;
            }
            let cmds = std::mem::take(&mut batch);
            tracking_step(&mut sides, &ga, true, &cmds, &at, &mut history).await;
            continue;
        }
        if !batch.is_empty() {
            let cmds = std::mem::take(&mut batch);
            tracking_step(&mut sides, &ga, true, &cmds, &at, &mut history).await;
        }
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
        history.push(format!("{}> {}", if on_a { "a" } else { "b" }, show(&args)));
        tracking_step(&mut sides, &ga, on_a, &[cmd], &at, &mut history).await;
    }
}

/// Runs `cmds` (several only on `a`, pipelined; a SCAN walk alone) on
/// each side, with the PINGs after them that collect the invalidations
/// queued for `a` and `c`, and fails the run if the two sides' frames
/// differ. `at` names the seed and step; `history` ends with the
/// commands.
async fn tracking_step(
    sides: &mut [([Conn; 3], String)],
    ga: &Gen,
    on_a: bool,
    cmds: &[Vec<Vec<u8>>],
    at: &str,
    history: &mut [String],
) {
    let last = cmds.last().expect("a command");
    // A PING inside MULTI would be queued, and one after CLIENT CACHING
    // would be the command it applies to.
    let sync = !(ga.in_multi || on_a && last[0] == b"CLIENT");
    let mut seen = Vec::new();
    for ([a, b, c], c_id) in sides.iter_mut() {
        let cmds: Vec<Vec<&[u8]>> = cmds
            .iter()
            .map(|cmd| cmd.iter().map(|x| if x == b"<c>" { c_id.as_bytes() } else { x.as_slice() }).collect())
            .collect();
        let conn = if on_a { &mut *a } else { &mut *b };
        let mut frames = if is_walk(&cmds[0]) {
            vec![scan_walk(conn, &cmds[0]).await]
        } else {
            let mut frames = conn.pipeline(&cmds).await;
            // Each reply may be preceded by invalidation pushes: read on
            // until every command has its reply.
            while frames.iter().filter(|f| !f.starts_with(b">")).count() < cmds.len() {
                frames.push(conn.next().await);
            }
            frames
        };
        // Each reply, by its command: KEYS is compared sorted, and CLIENT
        // GETREDIR and TRACKINGINFO name `c` by its id.
        let mut replies = cmds.iter();
        for f in frames.iter_mut().filter(|f| !f.starts_with(b">")) {
            let args = replies.next().expect("a command for each reply");
            if args[0] == b"KEYS" {
                *f = sorted_array(f);
            } else if args[0] == b"CLIENT" {
                let (id, name) = (format!(":{c_id}\r\n"), ":<c>\r\n");
                *f = String::from_utf8_lossy(f).replace(&id, name).into();
            }
        }
        if sync {
            frames.push(b"(ping on a)".to_vec());
            frames.extend(exchange(a, &[b"PING"]).await);
        }
        frames.push(b"(ping on c)".to_vec());
        let pong: &[u8] = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let mut f = c.cmd(&[b"PING"]).await;
        while f != pong {
            frames.push(f);
            f = c.next().await;
        }
        seen.push(frames);
    }
    let text = |fs: &[Vec<u8>]| format!("{:?}", fs.iter().map(|f| String::from_utf8_lossy(f)).collect::<Vec<_>>());
    let first = history.len() - cmds.len();
    if seen[0] != seen[1] {
        let from = first.saturating_sub(100);
        panic!(
            "{at}: meshcache and redis-server differ on `{}`\n\
             meshcache:    {}\nredis-server: {}\nthe steps before it, and what both answered:\n{}",
            history[first..].join("`, `"),
            text(&seen[0]),
            text(&seen[1]),
            history[from..first].join("\n")
        );
    }
    *history.last_mut().unwrap() += &format!("  =>  {}", text(&seen[0]));
}

/// The key written after every step of the notification run: its
/// events end the step's.
const MARK: &[u8] = b"mark";

/// Keyspace notifications (`notify-keyspace-events KEA`): a connection on
/// each server runs the generator's commands, transactions included (each
/// key written once in one: see `Gen::notify`), and a subscriber to
/// `__key*@0__:*` on each collects what they publish. After every step a
/// third connection writes `MARK`, whose events come after the step's on
/// both servers (here the events of local changes are published in the
/// order they were made), and the two lists of messages before them are
/// compared. Half the seeds send the commands in pipelined batches and
/// compare each batch's. A DEL or UNLINK names only keys the reference
/// holds: deleting an absent key notifies here (a delete is a write
/// mesh-wide) and not in Redis.
async fn run_notify_seed(mesh_port: u16, redis: &RedisServer, seed: u64, steps: usize) {
    // Odd seeds in RESP3, where a message is a push.
    let resp3 = seed % 2 == 1;
    let mut sides = Vec::new();
    for ours in [true, false] {
        let connect = async || {
            if ours {
                Conn::new(TcpStream::connect(("127.0.0.1", mesh_port)).await.unwrap())
            } else {
                Conn::new(UnixStream::connect(&redis.socket).await.unwrap())
            }
        };
        // The mark goes on a connection of its own: the commands' may be
        // inside a MULTI.
        let (mut con, mut sub, marks) = (connect().await, connect().await, connect().await);
        if resp3 {
            // HELLO's reply names the server, so it is not compared.
            for c in [&mut con, &mut sub] {
                c.resp3 = true;
                c.cmd(&[b"HELLO", b"3"]).await;
            }
        }
        assert_eq!(con.cmd(&[b"FLUSHALL"]).await, b"+OK\r\n");
        assert_eq!(con.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEA"]).await, b"+OK\r\n");
        sub.cmd(&[b"PSUBSCRIBE", b"__key*@0__:*"]).await;
        sides.push((con, sub, marks));
    }
    let mut g = Gen::new(seed);
    g.expired_sets = false;
    g.notify = true;
    // Half the seeds pipeline, in batches of random length from a
    // generator of their own (as `run_seed`'s).
    let pipelined = seed % 4 >= 2;
    let mut cut = SmallRng::seed_from_u64(seed ^ 0x0b47_c4e5);
    let mut history: Vec<String> = Vec::new();
    // The commands not yet sent, each with its step.
    let mut batch: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    for step in 0..steps {
        let mut cmd = g.next();
        let delete = cmd[0] == b"DEL" || cmd[0] == b"UNLINK";
        let walk = is_walk(&cmd.iter().map(|a| a.as_slice()).collect::<Vec<_>>());
        // A delete is checked against the reference as it is then, and a
        // SCAN walk goes alone: what is queued goes first.
        if (delete || walk) && !batch.is_empty() {
            notify_batch(&mut sides, &std::mem::take(&mut batch), &mut history, seed, resp3).await;
        }
        if delete {
            let mut held = vec![cmd[0].clone()];
            for k in &cmd[1..] {
                if sides[1].0.cmd(&[b"EXISTS", k]).await == b":1\r\n" {
                    held.push(k.clone());
                }
            }
            if held.len() == 1 {
                continue;
            }
            cmd = held;
        }
        batch.push((step, cmd));
        if walk || !pipelined || step + 1 == steps || cut.random_bool(0.2) {
            notify_batch(&mut sides, &std::mem::take(&mut batch), &mut history, seed, resp3).await;
        }
    }
    if !batch.is_empty() {
        notify_batch(&mut sides, &batch, &mut history, seed, resp3).await;
    }
}

/// Sends `batch` on each side's command connection (one write; a SCAN
/// walk is a batch alone), then the mark on its third connection, and
/// fails the run unless the two sides' replies, and the messages their
/// subscribers heard before the mark's, are the same.
async fn notify_batch(
    sides: &mut [(Conn, Conn, Conn)],
    batch: &[(usize, Vec<Vec<u8>>)],
    history: &mut Vec<String>,
    seed: u64,
    resp3: bool,
) {
    let cmds: Vec<Vec<&[u8]>> = batch.iter().map(|(_, c)| c.iter().map(|a| a.as_slice()).collect()).collect();
    let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
    let mut seen = Vec::new();
    for (con, sub, marks) in sides.iter_mut() {
        let mut frames =
            if is_walk(&cmds[0]) { vec![scan_walk(con, &cmds[0]).await] } else { con.pipeline(&cmds).await };
        for (args, reply) in cmds.iter().zip(&mut frames) {
            if args[0] == b"KEYS" {
                *reply = sorted_array(reply);
            }
        }
        assert_eq!(marks.cmd(&[b"SET", MARK, last.to_string().as_bytes()]).await, b"+OK\r\n");
        let message = |channel: &[u8], payload: &[u8]| {
            let mut m =
                array_frame(&[b"pmessage".to_vec(), b"__key*@0__:*".to_vec(), channel.to_vec(), payload.to_vec()]);
            if resp3 {
                m[0] = b'>';
            }
            m
        };
        let mark = message(&[&b"__keyspace@0__:"[..], MARK].concat(), b"set");
        loop {
            let m = sub.next().await;
            if m == mark {
                assert_eq!(sub.next().await, message(b"__keyevent@0__:set", MARK));
                break;
            }
            frames.push(m);
        }
        seen.push(frames);
    }
    let from = history.len().saturating_sub(30);
    history.extend(cmds.iter().map(|c| show(c)));
    if seen[0] != seen[1] {
        let text = |fs: &[Vec<u8>]| format!("{:?}", fs.iter().map(|f| String::from_utf8_lossy(f)).collect::<Vec<_>>());
        let steps = if first == last { format!("step {first}") } else { format!("steps {first}-{last}, pipelined") };
        panic!(
            "seed {seed} (resp3: {resp3}), {steps}: meshcache and redis-server differ on `{}` (the replies, then the \
             messages published)\nmeshcache:    {}\nredis-server: {}\nthe commands before:\n{}",
            cmds.iter().map(|c| show(c)).collect::<Vec<_>>().join("`, `"),
            text(&seen[0]),
            text(&seen[1]),
            history[from..history.len() - cmds.len()].join("\n")
        );
    }
}

/// The seeds to run: `MESHCACHE_DIFF_SEED` alone, or the first
/// `MESHCACHE_DIFF_SEEDS` (24 unless set).
pub(crate) fn seeds() -> Vec<u64> {
    let env = |name: &str| {
        std::env::var(name).ok().map(|s| s.parse::<u64>().unwrap_or_else(|_| panic!("{name} must be a number")))
    };
    match env("MESHCACHE_DIFF_SEED") {
        Some(s) => vec![s],
        None => (0..env("MESHCACHE_DIFF_SEEDS").unwrap_or(24)).collect(),
    }
}

/// Runs `run` for each seed, against one peer and one redis-server.
async fn for_seeds(name: &str, run: impl AsyncFn(u16, &RedisServer, u64)) {
    let Some(redis) = RedisServer::start().await else { return };
    let peer = RespPeer::start(name).await;
    for seed in seeds() {
        run(peer.port, &redis, seed).await;
    }
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_command_sequences_answer_as_redis_does() {
    for_seeds("differential", async |port, redis, seed| {
        run_seed(port, redis, seed, 600, seed % 2 == 1, seed % 4 >= 2).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_on_two_connections_track_and_invalidate_as_redis_does() {
    for_seeds("differential-tracking", async |port, redis, seed| run_tracking_seed(port, redis, seed, 600).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_notify_as_redis_does() {
    for_seeds("differential-notify", async |port, redis, seed| run_notify_seed(port, redis, seed, 600).await).await;
}
