//! LCS: the longest common subsequence of two string values.

use bytes::Bytes;

use super::{eq, int_arg, Cx, SYNTAX};
use crate::resp::reply::Out;

/// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]. A missing key
/// is an empty string. The table the answer is computed in is bounded by
/// `proto-max-bulk-len`, as in Redis, so two large values cannot make the
/// server allocate without limit.
pub(super) fn lcs(cx: &mut Cx<'_, '_>, args: &[Bytes], out: &mut Out) {
    let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0i64);
    let mut j = 3;
    while j < args.len() {
        let a = &args[j];
        if eq(a, "idx") {
            idx = true;
        } else if eq(a, "len") {
            len_only = true;
        } else if eq(a, "withmatchlen") {
            with_len = true;
        } else if eq(a, "minmatchlen") && j + 1 < args.len() {
            let Some(n) = int_arg(out, &args[j + 1]) else { return };
            min_len = n.max(0);
            j += 1;
        } else {
            return out.error(SYNTAX);
        }
        j += 1;
    }
    if idx && len_only {
        return out.error("ERR If you want both the length and indexes, please just use IDX.");
    }
    let a = cx.db.get(&args[1]).unwrap_or_default();
    let b = cx.db.get(&args[2]).unwrap_or_default();
    let cells = (a.len() as u64 + 1).saturating_mul(b.len() as u64 + 1);
    if cells.saturating_mul(4) > cx.sh.config.max_request_bytes as u64 {
        return out.error("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
    }
    let found = Lcs::new(&a, &b);
    if len_only {
        return out.int(found.len() as i64);
    }
    let (text, matches) = found.walk();
    if !idx {
        return out.bulk(&text);
    }
    let kept: Vec<_> = matches.into_iter().filter(|m| min_len == 0 || m.len() as i64 >= min_len).collect();
    out.map(2);
    out.bulk(b"matches");
    out.array(kept.len());
    for m in kept {
        out.array(2 + with_len as usize);
        out.array(2);
        out.int(m.a.0 as i64);
        out.int(m.a.1 as i64);
        out.array(2);
        out.int(m.b.0 as i64);
        out.int(m.b.1 as i64);
        if with_len {
            out.int(m.len() as i64);
        }
    }
    out.bulk(b"len");
    out.int(found.len() as i64);
}

/// One contiguous match: inclusive ranges in each string.
struct Match {
    a: (usize, usize),
    b: (usize, usize),
}

impl Match {
    fn len(&self) -> usize {
        self.a.1 - self.a.0 + 1
    }
}

/// The dynamic-programming table: `at(i, j)` is the LCS length of the
/// first `i` bytes of `a` and the first `j` of `b`.
struct Lcs<'a> {
    a: &'a [u8],
    b: &'a [u8],
    table: Vec<u32>,
}

impl<'a> Lcs<'a> {
    fn new(a: &'a [u8], b: &'a [u8]) -> Self {
        let w = b.len() + 1;
        let mut table = vec![0u32; (a.len() + 1) * w];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                table[i * w + j] = if a[i - 1] == b[j - 1] {
                    table[(i - 1) * w + j - 1] + 1
                } else {
                    table[(i - 1) * w + j].max(table[i * w + j - 1])
                };
            }
        }
        Lcs { a, b, table }
    }

    fn at(&self, i: usize, j: usize) -> u32 {
        self.table[i * (self.b.len() + 1) + j]
    }

    fn len(&self) -> u32 {
        self.at(self.a.len(), self.b.len())
    }

    /// The subsequence, and its matches from the ends of the strings
    /// backwards (the order Redis reports them in), walking the table the
    /// way Redis does so that ties resolve alike.
    fn walk(&self) -> (Vec<u8>, Vec<Match>) {
        let mut text = vec![0u8; self.len() as usize];
        let mut k = text.len();
        let mut matches = Vec::new();
        let mut open: Option<Match> = None;
        let (mut i, mut j) = (self.a.len(), self.b.len());
        while i > 0 && j > 0 {
            if self.a[i - 1] == self.b[j - 1] {
                k -= 1;
                text[k] = self.a[i - 1];
                match &mut open {
                    Some(m) if m.a.0 == i && m.b.0 == j => {
                        m.a.0 -= 1;
                        m.b.0 -= 1;
                    }
                    _ => open = Some(Match { a: (i - 1, i - 1), b: (j - 1, j - 1) }),
                }
                i -= 1;
                j -= 1;
                if i == 0 || j == 0 {
                    matches.extend(open.take());
                }
            } else {
                if self.at(i - 1, j) > self.at(i, j - 1) {
                    i -= 1;
                } else {
                    j -= 1;
                }
                matches.extend(open.take());
            }
        }
        (text, matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_redis_documented_answer() {
        // The example in Redis's LCS documentation.
        let found = Lcs::new(b"ohmytext", b"mynewtext");
        assert_eq!(found.len(), 6);
        let (text, matches) = found.walk();
        assert_eq!(text, b"mytext");
        let got: Vec<_> = matches.iter().map(|m| (m.a, m.b)).collect();
        assert_eq!(got, vec![((4, 7), (5, 8)), ((2, 3), (0, 1))]);
        let (text, matches) = Lcs::new(b"", b"abc").walk();
        assert!(text.is_empty() && matches.is_empty());
    }
}
