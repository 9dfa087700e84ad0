//! INFO errorstats: error replies counted by code (the error's first word,
//! `ERR`, `WRONGPASS`, `OOM`...), as Redis counts them.

use std::collections::BTreeMap;

use crate::locks::Mutex;

/// Redis's limit on distinct codes. The codes come from meshcache's own
/// replies, which have far fewer; past the limit a new code is not added
/// (Redis stops adding too), and the codes tracked keep counting.
const MAX_CODES: usize = 128;

#[derive(Debug, Default)]
pub(crate) struct ErrorStats {
    /// By code, in the order INFO lists them.
    counts: Mutex<BTreeMap<Box<str>, u64>>,
}

impl ErrorStats {
    /// Adds one connection's counts since its last read.
    pub(crate) fn add(&self, codes: Vec<(Box<str>, u64)>) {
        let mut counts = self.counts.lock();
        for (code, n) in codes {
            if let Some(c) = counts.get_mut(&code) {
                *c += n;
            } else if counts.len() < MAX_CODES {
                counts.insert(code, n);
            }
        }
    }

    /// The `errorstat_<code>:count=<n>` lines.
    pub(crate) fn write(&self, s: &mut String) {
        use std::fmt::Write;
        for (code, n) in self.counts.lock().iter() {
            // Writing to a String cannot fail.
            let _ = write!(s, "errorstat_{code}:count={n}\r\n");
        }
    }

    /// CONFIG RESETSTAT.
    pub(crate) fn reset(&self) {
        self.counts.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_in_order_and_new_ones_stop_at_the_limit() {
        let e = ErrorStats::default();
        e.add(vec![("WRONGPASS".into(), 1), ("ERR".into(), 2)]);
        e.add(vec![("ERR".into(), 1)]);
        let mut s = String::new();
        e.write(&mut s);
        assert_eq!(s, "errorstat_ERR:count=3\r\nerrorstat_WRONGPASS:count=1\r\n");
        e.add((0..200).map(|i| (format!("E{i:03}").into(), 1)).collect());
        e.add(vec![("ERR".into(), 1), ("ZZZ".into(), 1)]);
        let mut s = String::new();
        e.write(&mut s);
        assert_eq!(s.lines().count(), MAX_CODES);
        assert!(s.contains("errorstat_ERR:count=4\r\n"), "a code tracked keeps counting");
        assert!(!s.contains("ZZZ"), "no code is added past the limit");
        e.reset();
        let mut s = String::new();
        e.write(&mut s);
        assert_eq!(s, "");
    }
}
