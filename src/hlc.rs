//! Hybrid logical clock stamps (Kulkarni et al.) with physical time passed in.
//!
//! A [`Stamp`] is `(hlc, node)`: `hlc` packs 48 bits of Unix milliseconds
//! above a 16-bit logical counter, and `node` is the [`NodeId`] of the process
//! that issued it. Stamps order by `hlc`, then by `node`, so the order is
//! total; and since a process never issues the same `hlc` twice and every
//! process start draws a fresh random `NodeId`, every stamp is unique.
//!
//! The [`Clock`] never reads the system clock: the caller passes physical
//! time (`pt`, Unix milliseconds) into [`Clock::now`] and [`Clock::observe`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Bits of the logical counter in a packed `hlc`.
pub const COUNTER_BITS: u32 = 16;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
/// The largest physical time a stamp can carry (48 bits of milliseconds,
/// good until the year 10889).
pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - COUNTER_BITS)) - 1;

/// The identity of one process incarnation.
///
/// The shell draws a fresh random `NodeId` at every process start, so a
/// restarted process can never reissue a stamp it issued before.
///
/// On the wire it is 8 little-endian bytes: a random id would take 9 or 10
/// as a varint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(#[serde(with = "postcard::fixint::le")] pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A unique, totally ordered HLC timestamp.
///
/// Field order matters: the derived `Ord` compares `hlc` first, then `node`.
///
/// On the wire a stamp is exactly 16 bytes, both fields fixed 8-byte
/// little-endian: a current `hlc` (about 2^57) would take 9 bytes as a
/// varint, and a random [`NodeId`] 9 or 10.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// 48 bits of Unix milliseconds above a 16-bit logical counter.
    #[serde(with = "postcard::fixint::le")]
    pub hlc: u64,
    /// The process incarnation that issued the stamp.
    pub node: NodeId,
}

impl Stamp {
    /// The smallest stamp; below every stamp a clock issues.
    pub const ZERO: Stamp = Stamp { hlc: 0, node: NodeId(0) };

    /// Packs physical milliseconds and a logical counter into an `hlc`.
    pub const fn pack(ms: u64, counter: u16) -> u64 {
        (ms << COUNTER_BITS) | counter as u64
    }

    /// The physical (Unix millisecond) part of the stamp.
    pub const fn physical_ms(&self) -> u64 {
        self.hlc >> COUNTER_BITS
    }

    /// The logical counter part of the stamp.
    pub const fn counter(&self) -> u16 {
        (self.hlc & COUNTER_MASK) as u16
    }

    /// The smallest stamp strictly greater than `self`.
    ///
    /// Used for range tombstones: `clear_below = t.successor()` removes `t`
    /// and everything older.
    pub const fn successor(&self) -> Stamp {
        if self.node.0 == u64::MAX {
            Stamp { hlc: self.hlc.saturating_add(1), node: NodeId(0) }
        } else {
            Stamp { hlc: self.hlc, node: NodeId(self.node.0 + 1) }
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms(), self.counter(), self.node)
    }
}

/// Why a remote clock reading was not adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// The remote time is more than `max_offset_ms` ahead of local physical
    /// time. The clock is left unchanged and the refusal is counted.
    #[error("remote clock {remote_ms} ms is {ahead_ms} ms ahead of local time {local_ms} ms (max offset {max_offset_ms} ms)")]
    TooFarAhead {
        /// Physical milliseconds carried by the remote stamp.
        remote_ms: u64,
        /// Local physical time when it arrived.
        local_ms: u64,
        /// How far ahead the remote was.
        ahead_ms: u64,
        /// The configured bound.
        max_offset_ms: u64,
    },
}

/// A hybrid logical clock for one process incarnation.
///
/// Lock-free: the last issued `hlc` lives in an atomic, so concurrent writers
/// on different shards never serialize on a mutex to get a stamp.
#[derive(Debug)]
pub struct Clock {
    node: NodeId,
    /// The highest `hlc` issued or observed. Every `now` issues a larger one.
    last: AtomicU64,
    /// Bound on how far a remote clock may run ahead of local physical time.
    max_offset_ms: u64,
    /// Remote readings refused for being too far ahead (a metric).
    refused: AtomicU64,
}

impl Clock {
    /// A clock for `node`, refusing remote times more than `max_offset_ms`
    /// ahead of local physical time.
    pub fn new(node: NodeId, max_offset_ms: u64) -> Self {
        Clock { node, last: AtomicU64::new(0), max_offset_ms, refused: AtomicU64::new(0) }
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The configured maximum offset in milliseconds.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// How many remote readings were refused for being too far ahead.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The highest `hlc` issued or observed so far.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Issues a fresh stamp for a local event at physical time `pt_ms`.
    ///
    /// `l = max(l + 1, pt << 16)`: the millisecond follows physical time and
    /// the counter goes up when it did not move. A counter overflow carries
    /// into the next millisecond, because the two are packed in one integer.
    pub fn now(&self, pt_ms: u64) -> Stamp {
        let floor = Stamp::pack(pt_ms.min(MAX_PHYSICAL_MS), 0);
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| Some(l.saturating_add(1).max(floor)))
            .unwrap_or_else(|l| l); // the closure never returns None
        Stamp { hlc: prev.saturating_add(1).max(floor), node: self.node }
    }

    /// Observes a remote `hlc` (from a stamp, a hello or a message) at local
    /// physical time `pt_ms`: `l = max(l, remote)`.
    ///
    /// A remote time more than `max_offset_ms` ahead of `pt_ms` is refused,
    /// counted, and not adopted, so one peer with a runaway clock cannot drag
    /// the mesh's stamps into the future.
    pub fn observe(&self, remote_hlc: u64, pt_ms: u64) -> Result<(), ClockError> {
        let remote_ms = remote_hlc >> COUNTER_BITS;
        if remote_ms > pt_ms.saturating_add(self.max_offset_ms) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ClockError::TooFarAhead {
                remote_ms,
                local_ms: pt_ms,
                ahead_ms: remote_ms - pt_ms,
                max_offset_ms: self.max_offset_ms,
            });
        }
        self.last.fetch_max(remote_hlc, Ordering::AcqRel);
        Ok(())
    }

    /// Checks a peer's physical clock reading (from a hello) against local
    /// physical time, both ways. Peers further apart than `max_offset_ms`
    /// must not exchange data.
    pub fn check_skew(&self, remote_pt_ms: u64, pt_ms: u64) -> Result<(), SkewError> {
        let offset = remote_pt_ms as i128 - pt_ms as i128;
        if offset.unsigned_abs() > self.max_offset_ms as u128 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SkewError { offset_ms: offset as i64, max_offset_ms: self.max_offset_ms });
        }
        Ok(())
    }
}

/// A peer's physical clock is too far from ours to exchange data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer clock offset {offset_ms} ms exceeds max offset {max_offset_ms} ms")]
#[non_exhaustive]
pub struct SkewError {
    /// Remote minus local physical time, in milliseconds.
    pub offset_ms: i64,
    /// The configured bound.
    pub max_offset_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_within_one_millisecond() {
        let c = Clock::new(NodeId(1), 500);
        let a = c.now(1000);
        let b = c.now(1000);
        assert!(b > a);
        assert_eq!(a.physical_ms(), 1000);
        assert_eq!(b.counter(), a.counter() + 1);
    }

    #[test]
    fn physical_time_moving_resets_counter() {
        let c = Clock::new(NodeId(1), 500);
        c.now(1000);
        c.now(1000);
        let s = c.now(1001);
        assert_eq!((s.physical_ms(), s.counter()), (1001, 0));
    }

    #[test]
    fn clock_never_goes_back_when_physical_time_does() {
        let c = Clock::new(NodeId(1), 500);
        let a = c.now(5000);
        let b = c.now(4000);
        assert!(b > a);
        assert_eq!(b.physical_ms(), 5000);
    }

    #[test]
    fn counter_overflow_carries_into_next_millisecond() {
        let c = Clock::new(NodeId(1), 500);
        c.observe(Stamp::pack(7, u16::MAX), 7).unwrap();
        let s = c.now(7);
        assert_eq!((s.physical_ms(), s.counter()), (8, 0));
    }

    #[test]
    fn observe_adopts_remote_within_offset() {
        let c = Clock::new(NodeId(1), 500);
        c.observe(Stamp::pack(1400, 3), 1000).unwrap();
        let s = c.now(1000);
        assert_eq!((s.physical_ms(), s.counter()), (1400, 4));
    }

    #[test]
    fn observe_refuses_remote_too_far_ahead() {
        let c = Clock::new(NodeId(1), 500);
        let err = c.observe(Stamp::pack(1501, 0), 1000).unwrap_err();
        assert_eq!(err, ClockError::TooFarAhead { remote_ms: 1501, local_ms: 1000, ahead_ms: 501, max_offset_ms: 500 });
        assert_eq!(c.refused(), 1);
        assert_eq!(c.now(1000).physical_ms(), 1000, "refused time must not be adopted");
    }

    #[test]
    fn skew_check_is_symmetric() {
        let c = Clock::new(NodeId(1), 500);
        assert!(c.check_skew(1500, 1000).is_ok());
        assert_eq!(c.check_skew(1501, 1000).unwrap_err().offset_ms, 501);
        assert_eq!(c.check_skew(499, 1000).unwrap_err().offset_ms, -501);
    }

    #[test]
    fn successor_is_the_next_stamp() {
        let s = Stamp { hlc: 9, node: NodeId(4) };
        assert!(s.successor() > s);
        assert_eq!(s.successor(), Stamp { hlc: 9, node: NodeId(5) });
        let m = Stamp { hlc: 9, node: NodeId(u64::MAX) };
        assert_eq!(m.successor(), Stamp { hlc: 10, node: NodeId(0) });
    }

    #[test]
    fn concurrent_stamps_are_unique() {
        let c = std::sync::Arc::new(Clock::new(NodeId(1), 500));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.now(1000).hlc).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
