//! What a register holds, and the change events the store reports.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::hlc::Stamp;

/// The contents of one key's register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// A live value, with an optional absolute expiry in Unix milliseconds.
    ///
    /// The writer computes `expires_at_ms` from its stamp's physical time, so
    /// every peer expires the entry at the same instant, within clock skew.
    Value {
        /// The cached bytes.
        data: Bytes,
        /// Absolute expiry (Unix ms); the value reads as absent once
        /// `now > expires_at_ms`.
        expires_at_ms: Option<u64>,
    },
    /// A delete. It wins against every older write until it is collected.
    Tombstone,
    /// A value that some replica evicted to stay within its memory bound: the
    /// key and stamp remain (so digests still match and anti-entropy does not
    /// pull the value back), the bytes are gone. Reads it as a miss. It keeps
    /// the expiry so that it is collected like the value would have been.
    Evicted {
        /// The evicted value's expiry, if it had one.
        expires_at_ms: Option<u64>,
    },
}

impl Slot {
    /// The expiry of a value or an evicted stub.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self {
            Slot::Value { expires_at_ms, .. } | Slot::Evicted { expires_at_ms } => *expires_at_ms,
            Slot::Tombstone => None,
        }
    }

    /// True for a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Slot::Tombstone)
    }

    /// True when `now_ms` is past the expiry (Redis's rule: expired once
    /// `now > expires_at`).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expires_at_ms(), Some(e) if now_ms > e)
    }

    /// The value bytes a read returns at `now_ms`, if any.
    pub fn visible(&self, now_ms: u64) -> Option<&Bytes> {
        match self {
            Slot::Value { data, expires_at_ms } if !matches!(expires_at_ms, Some(e) if now_ms > *e) => Some(data),
            _ => None,
        }
    }

    /// Whether this is a stub: a value evicted before it was stable, kept
    /// as its key and stamp.
    pub fn is_stub(&self) -> bool {
        matches!(self, Slot::Evicted { .. })
    }

    /// Whether two slots may share one stamp: equal, or a value and the stub
    /// left by evicting it. Stamps are unique, so anything else is a bug.
    pub fn same_write(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Evicted { expires_at_ms: a }, Slot::Value { expires_at_ms: b, .. })
            | (Slot::Value { expires_at_ms: b, .. }, Slot::Evicted { expires_at_ms: a }) => a == b,
            _ => self == other,
        }
    }

    /// Bytes of payload the slot keeps in memory.
    pub fn payload_len(&self) -> usize {
        match self {
            Slot::Value { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// One key's last-writer-wins register: the slot and the stamp of its write.
pub type Register = crdts::LWWReg<Slot, Stamp>;

/// What kind of change happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The key was written (a value, or a newer write whose value this
    /// replica does not hold).
    Put,
    /// The key was deleted (a tombstone won, or a refusal reply dropped it).
    Delete,
    /// The key's TTL ran out.
    Expire,
    /// The key's value was evicted here to keep the memory bound (always
    /// [`Origin::Local`]): a read here misses, and the other peers keep
    /// their copies. `stamp` is the evicted write's.
    Evict,
    /// A range tombstone (`clear_below`, from FLUSHALL or compaction) removed
    /// every register stamped below `stamp`. `key` is empty.
    Flush,
}

impl ChangeKind {
    /// What storing `slot` at `now_ms` does to its key: a tombstone
    /// deletes it; a value already past its TTL, as it arrives, expires
    /// it; anything else writes it.
    pub(crate) fn of_stored(slot: &Slot, now_ms: u64) -> ChangeKind {
        match slot {
            Slot::Tombstone => ChangeKind::Delete,
            v if v.is_expired(now_ms) => ChangeKind::Expire,
            _ => ChangeKind::Put,
        }
    }
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This peer: a write through its API, or a TTL that ran out here.
    Local,
    /// Another peer: a push, an anti-entropy session, or a refusal reply.
    Remote,
}

/// A change to the keyspace, reported to subscribers so that an
/// application's own near cache can drop stale copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key that changed; empty for [`ChangeKind::Flush`].
    pub key: Bytes,
    /// What happened.
    pub kind: ChangeKind,
    /// Where it came from.
    pub origin: Origin,
    /// The stamp of the write that caused it (for `Flush`, the new
    /// `clear_below`).
    pub stamp: Stamp,
}
