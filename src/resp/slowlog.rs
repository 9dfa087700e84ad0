//! The slow log: commands that ran longer than `slowlog-log-slower-than`
//! microseconds, the newest `slowlog-max-len` of them, as Redis keeps it
//! (the `SLOWLOG` command reads it; monitoring agents poll it).
//!
//! What is timed. Redis reads the clock around every command; two readings
//! a command cost a pipelined `SET` here 9% of a lone peer's CPU (0.12 us
//! on 1.35: BENCHMARKS.md, "The slow log's clock readings"), so:
//!
//! - the first command of each read from the socket is timed by the
//!   connection, from the reading it takes at the read's start (at most
//!   one reading more a read, whatever it holds): a client that sends one
//!   command at a time has every command timed;
//! - a command that neither is flagged `fast` nor writes (`KEYS`, `SCAN`,
//!   `LCS`, `GETRANGE`, `CLIENT LIST`, `EXEC`...) is timed wherever it
//!   runs, in a pipeline or inside `EXEC`;
//! - a fast command or a write behind another in the same read, or inside
//!   `EXEC`, is not timed.
//!
//! `EXEC` is logged as one command, with the time of all it ran; Redis
//! logs the commands it ran instead, one by one.
//!
//! Arguments are kept as Redis keeps them (at most 32, each cut to 128
//! bytes), and passwords (`AUTH`, `HELLO ... AUTH`, `CONFIG SET
//! requirepass`) are kept as `(redacted)`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::locks::Mutex;

/// Redis's `SLOWLOG_ENTRY_MAX_ARGC` and `SLOWLOG_ENTRY_MAX_STRING`.
const MAX_ARGS: usize = 32;
const MAX_ARG_BYTES: usize = 128;

/// Redis's defaults.
pub(crate) const DEFAULT_SLOWER_THAN_US: i64 = 10_000;
pub(crate) const DEFAULT_MAX_LEN: u64 = 128;

/// One logged command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// When it ran, in Unix seconds.
    pub(crate) unix_secs: u64,
    pub(crate) micros: u64,
    pub(crate) args: Vec<Bytes>,
    pub(crate) addr: String,
    pub(crate) name: Bytes,
}

/// The log and its two settings.
#[derive(Debug)]
pub(crate) struct Slowlog {
    /// Negative: nothing is logged. Zero: everything is.
    slower_than_us: AtomicI64,
    max_len: AtomicU64,
    entries: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// Newest first.
    entries: VecDeque<Entry>,
    next_id: u64,
}

impl Default for Slowlog {
    fn default() -> Self {
        Slowlog {
            slower_than_us: AtomicI64::new(DEFAULT_SLOWER_THAN_US),
            max_len: AtomicU64::new(DEFAULT_MAX_LEN),
            entries: Mutex::new(Log::default()),
        }
    }
}

impl Slowlog {
    pub(crate) fn slower_than_us(&self) -> i64 {
        self.slower_than_us.load(Ordering::Relaxed)
    }

    pub(crate) fn set_slower_than_us(&self, us: i64) {
        self.slower_than_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn max_len(&self) -> u64 {
        self.max_len.load(Ordering::Relaxed)
    }

    /// Takes effect at the next entry, as in Redis.
    pub(crate) fn set_max_len(&self, n: u64) {
        self.max_len.store(n, Ordering::Relaxed);
    }

    /// Whether commands are to be timed at all.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.slower_than_us() >= 0
    }

    /// Logs the command `args` that took `took`, if that is long enough.
    /// `addr` and `name` are the client's; `unix_secs` reads the time (only
    /// for a command logged).
    pub(crate) fn note(
        &self,
        took: Duration,
        args: &[Bytes],
        addr: SocketAddr,
        name: &[u8],
        unix_secs: impl FnOnce() -> u64,
    ) {
        let threshold = self.slower_than_us();
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        if threshold < 0 || micros < threshold as u64 {
            return;
        }
        let unix_secs = unix_secs();
        let args = kept_args(args);
        let mut log = self.entries.lock();
        let id = log.next_id;
        log.next_id += 1;
        log.entries.push_front(Entry {
            id,
            unix_secs,
            micros,
            args,
            addr: addr.to_string(),
            name: Bytes::copy_from_slice(name),
        });
        let max = usize::try_from(self.max_len()).unwrap_or(usize::MAX);
        log.entries.truncate(max);
    }

    /// The newest `count` entries (all of them for `None`), newest first.
    pub(crate) fn newest(&self, count: Option<usize>) -> Vec<Entry> {
        let log = self.entries.lock();
        let n = count.unwrap_or(usize::MAX).min(log.entries.len());
        log.entries.iter().take(n).cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().entries.len()
    }

    /// Empties the log; ids go on from where they were, as in Redis.
    pub(crate) fn reset(&self) {
        self.entries.lock().entries.clear();
    }
}

/// What an entry keeps of a command's arguments: passwords redacted, at
/// most [`MAX_ARGS`] (the last saying how many more there were), each cut
/// to [`MAX_ARG_BYTES`] (saying how many more bytes there were).
fn kept_args(args: &[Bytes]) -> Vec<Bytes> {
    let redacted = secrets(args);
    let shown = args.len().min(MAX_ARGS);
    let mut kept = Vec::with_capacity(shown);
    for (i, a) in args.iter().enumerate().take(shown) {
        if shown < args.len() && i == shown - 1 {
            kept.push(Bytes::from(format!("... ({} more arguments)", args.len() - shown + 1)));
        } else if redacted.contains(&i) {
            kept.push(Bytes::from_static(b"(redacted)"));
        } else if a.len() > MAX_ARG_BYTES {
            let mut s = a[..MAX_ARG_BYTES].to_vec();
            s.extend_from_slice(format!("... ({} more bytes)", a.len() - MAX_ARG_BYTES).as_bytes());
            kept.push(Bytes::from(s));
        } else {
            kept.push(Bytes::copy_from_slice(a));
        }
    }
    kept
}

/// The positions of `args` that hold a secret, as Redis redacts them.
fn secrets(args: &[Bytes]) -> Vec<usize> {
    let is = |a: &Bytes, s: &str| a.eq_ignore_ascii_case(s.as_bytes());
    let Some(cmd) = args.first() else { return Vec::new() };
    if is(cmd, "auth") {
        return (1..args.len()).collect();
    }
    if is(cmd, "hello") {
        // HELLO [protover [AUTH username password] [SETNAME clientname]]:
        // walked option by option, so that a client named "auth" hides
        // no password behind it (from the first argument: a password sent
        // without a protocol version is hidden too).
        let mut secret = Vec::new();
        let mut i = 1;
        while i < args.len() {
            if is(&args[i], "auth") {
                secret.extend((i + 1..i + 3).filter(|&j| j < args.len()));
                i += 3;
            } else if is(&args[i], "setname") {
                i += 2;
            } else {
                i += 1;
            }
        }
        return secret;
    }
    if is(cmd, "config") && args.get(1).is_some_and(|a| is(a, "set")) {
        return (2..args.len())
            .step_by(2)
            .filter(|&i| is(&args[i], "requirepass") || is(&args[i], "masterauth"))
            .map(|i| i + 1)
            .filter(|&i| i < args.len())
            .collect();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
    }

    fn addr(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    fn logged(log: &Slowlog) -> Vec<Vec<String>> {
        log.newest(None)
            .into_iter()
            .map(|e| e.args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
            .collect()
    }

    #[test]
    fn keeps_what_passes_the_threshold_newest_first_up_to_max_len() {
        let log = Slowlog::default();
        let us = Duration::from_micros;
        log.note(us(9_999), &args(&["GET", "a"]), addr("127.0.0.1:1"), b"", || 1);
        log.note(us(10_000), &args(&["GET", "b"]), addr("127.0.0.1:1"), b"app", || 2);
        log.note(us(20_000), &args(&["GET", "c"]), addr("127.0.0.1:2"), b"", || 3);
        assert_eq!(logged(&log), [["GET", "c"], ["GET", "b"]]);
        let e = &log.newest(Some(1))[0];
        assert_eq!((e.id, e.unix_secs, e.micros, e.addr.as_str()), (1, 3, 20_000, "127.0.0.1:2"));
        assert_eq!(log.newest(Some(5))[1].name, "app");
        log.set_max_len(2);
        log.note(us(30_000), &args(&["GET", "d"]), addr("127.0.0.1:1"), b"", || 4);
        assert_eq!(logged(&log), [["GET", "d"], ["GET", "c"]]);
        log.reset();
        assert_eq!(log.len(), 0);
        log.set_slower_than_us(0);
        log.note(us(0), &args(&["PING"]), addr("127.0.0.1:1"), b"", || 5);
        assert_eq!(log.newest(None)[0].id, 3, "ids go on after a reset");
        log.set_slower_than_us(-1);
        assert!(!log.enabled());
        log.note(us(1 << 40), &args(&["KEYS", "*"]), addr("127.0.0.1:1"), b"", || 6);
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn arguments_are_cut_as_redis_cuts_them_and_passwords_redacted() {
        let long = "x".repeat(130);
        let mut many = vec!["MSET".to_owned()];
        many.extend((0..40).map(|i| i.to_string()));
        for (command, want) in [
            (
                vec!["SET".to_owned(), long.clone()],
                vec!["SET".to_owned(), format!("{}... (2 more bytes)", &long[..128])],
            ),
            (many.clone(), {
                let mut w = many[..31].to_vec();
                w.push("... (10 more arguments)".into());
                w
            }),
            (
                vec!["AUTH".into(), "user".into(), "pw".into()],
                vec!["AUTH".into(), "(redacted)".into(), "(redacted)".into()],
            ),
            (
                vec!["HELLO", "3", "SETNAME", "auth", "AUTH", "u", "pw"].into_iter().map(Into::into).collect(),
                vec!["HELLO", "3", "SETNAME", "auth", "AUTH", "(redacted)", "(redacted)"]
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            (
                vec!["hello".into(), "3".into(), "auth".into(), "u".into(), "pw".into(), "setname".into(), "n".into()],
                vec!["hello", "3", "auth", "(redacted)", "(redacted)", "setname", "n"]
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            (
                vec![
                    "CONFIG".into(),
                    "SET".into(),
                    "maxmemory".into(),
                    "1mb".into(),
                    "requirepass".into(),
                    "pw".into(),
                ],
                vec!["CONFIG", "SET", "maxmemory", "1mb", "requirepass", "(redacted)"]
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
        ] {
            let a: Vec<&str> = command.iter().map(String::as_str).collect();
            let kept: Vec<String> =
                kept_args(&args(&a)).iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
            assert_eq!(kept, want);
        }
    }
}
