//! Known bugs that checks plant on purpose, to show that they catch them:
//! a check that passes with a planted bug proves nothing. Public and
//! switchable only with the `testing` feature (and in unit tests); without
//! it, every switch is a constant `false`.

use std::sync::atomic::{AtomicU8, Ordering};

/// A bug a test can plant in one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bug {
    /// Merge takes a remote register older than the one held (the classic
    /// LWW bug).
    TakesOlder,
    /// Merge skips the `gc_floor` filter: a register at or below the floor,
    /// for a key not held, is stored (a collected delete's older write can
    /// come back).
    NoFloorFilter,
    /// The refusal reply does nothing: a register a peer refused by its
    /// floor stays here.
    NoRefusalReply,
    /// Between two registers of one `hlc`, merge keeps the smaller node id
    /// (every other peer keeps the larger).
    ReversedTieBreak,
    /// Eviction leaves a ghost even for a value that is not stable (some
    /// member may not hold it yet), instead of a stub.
    GhostUnstable,
    /// A session adopts the peer's digest for a bucket held in part without
    /// checking that the ghost hides nothing newer held here.
    AdoptBlind,
    /// Merge applies a transaction's registers (a run with one stamp) one
    /// key at a time: a reader here can see part of the transaction.
    MergesRunsApart,
    /// A raised `clear_below` is swept a shard at a time before it is told,
    /// and reads and writes see what the sweep has yet to reach: a write
    /// in the meantime reads a deleted value, and is told before the
    /// FLUSHALL that it outlives.
    FlushSweptFirst,
}

#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
impl Bug {
    fn bit(self) -> u8 {
        match self {
            Bug::TakesOlder => 1,
            Bug::NoFloorFilter => 2,
            Bug::NoRefusalReply => 4,
            Bug::ReversedTieBreak => 8,
            Bug::GhostUnstable => 16,
            Bug::AdoptBlind => 32,
            Bug::MergesRunsApart => 64,
            Bug::FlushSweptFirst => 128,
        }
    }
}

/// The bugs planted in one store.
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct Planted(AtomicU8);

#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
impl Planted {
    pub(crate) fn set(&self, bug: Bug, on: bool) {
        if on {
            self.0.fetch_or(bug.bit(), Ordering::Relaxed);
        } else {
            self.0.fetch_and(!bug.bit(), Ordering::Relaxed);
        }
    }

    pub(crate) fn has(&self, bug: Bug) -> bool {
        self.0.load(Ordering::Relaxed) & bug.bit() != 0
    }
}
