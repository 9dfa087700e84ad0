//! Stamps packed against a table carried once per message (protocol
//! version 8, [`PACKED_SINCE`](super::PACKED_SINCE)).
//!
//! A [`Stamp`] is 16 bytes on the wire: a fixed 8-byte HLC and a fixed
//! 8-byte node id, which is most of what an anti-entropy register costs
//! beyond its key and value. The stamps of one message name few nodes and
//! lie close together in time, so a packed message carries the nodes once
//! and the lowest HLC once ([`StampTable`]), and each stamp as an index into
//! the nodes and a distance in HLC, both varints ([`PackedStamp`]). In a
//! summary the distance is from that lowest HLC (a summary's order is its
//! numbering, so it stays as read): about 5 bytes for the writes of a few
//! seconds, 9 for those of a day. [`PackedEntries`] go in HLC order, each
//! stamp a distance from the one before: a byte less for the same writes.
//! Their values lose a byte too: the slot's kind and whether it expires
//! share one tag ([`PackedSlot`]).
//!
//! A packed summary lists each key as its SipHash-1-3 under a key the
//! summary side draws for the session (8 bytes, where a key is its length
//! and its bytes), and names each bucket by its distance from the one
//! before it in the message (a summary one level above the buckets lists
//! every bucket of each range, most of them a byte apart). The side that
//! reads it hashes its own keys of the bucket alike to compare. Two keys
//! with one hash can only make a session miss a difference, never merge
//! the wrong register (registers travel with their keys), and the next
//! round draws another hash key; but a side that holds part of the
//! keyspace needs the keys themselves to adopt a bucket's digest
//! (ALGORITHM.md, "Eviction"), so it is sent the plain `Summary`.
//!
//! Unpacking checks every index and sum: a stamp naming a node the table
//! does not hold, an HLC past `u64::MAX` or a bucket past `u32::MAX` makes
//! the message malformed.

use std::collections::HashMap;
use std::hash::Hasher;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::BucketSummary;
use crate::hlc::{NodeId, Stamp};
use crate::store::digest::BUCKETS;
use crate::store::{Register, Slot};

/// The nodes a packed message's stamps name, and the HLC they count from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampTable {
    /// Each node once, in the order first seen.
    pub nodes: Vec<NodeId>,
    /// The lowest HLC among the message's stamps.
    #[serde(with = "postcard::fixint::le")]
    pub base: u64,
}

/// One stamp, relative to its message's [`StampTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedStamp {
    /// Index of the stamp's node in the table.
    pub node: u32,
    /// The stamp's HLC less the one it counts from: the table's base in a
    /// summary; in [`PackedEntries`], the previous register's (the first:
    /// the base).
    pub delta: u64,
}

/// A [`Slot`] with its kind and whether it expires in one tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackedSlot {
    /// A value that does not expire.
    Value(Bytes),
    /// A value and its expiry (Unix ms).
    Expiring(Bytes, u64),
    /// A delete.
    Tombstone,
    /// An evicted value's stub, which does not expire.
    Evicted,
    /// An evicted value's stub and its expiry.
    EvictedExpiring(u64),
}

impl From<Slot> for PackedSlot {
    fn from(s: Slot) -> PackedSlot {
        match s {
            Slot::Value { data, expires_at_ms: None } => PackedSlot::Value(data),
            Slot::Value { data, expires_at_ms: Some(e) } => PackedSlot::Expiring(data, e),
            Slot::Tombstone => PackedSlot::Tombstone,
            Slot::Evicted { expires_at_ms: None } => PackedSlot::Evicted,
            Slot::Evicted { expires_at_ms: Some(e) } => PackedSlot::EvictedExpiring(e),
        }
    }
}

impl From<PackedSlot> for Slot {
    fn from(s: PackedSlot) -> Slot {
        match s {
            PackedSlot::Value(data) => Slot::Value { data, expires_at_ms: None },
            PackedSlot::Expiring(data, e) => Slot::Value { data, expires_at_ms: Some(e) },
            PackedSlot::Tombstone => Slot::Tombstone,
            PackedSlot::Evicted => Slot::Evicted { expires_at_ms: None },
            PackedSlot::EvictedExpiring(e) => Slot::Evicted { expires_at_ms: Some(e) },
        }
    }
}

/// `Entries`, packed: the registers in HLC order, each stamp counted from
/// the one before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEntries {
    /// What the stamps are relative to.
    pub table: StampTable,
    /// `(key, value, stamp)` per register.
    pub entries: Vec<(Bytes, PackedSlot, PackedStamp)>,
}

/// One bucket of a packed `Summary`: a [`BucketSummary`] whose keys are
/// hashed and whose listed stamps are packed (the floor, one per bucket,
/// is not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBucket {
    /// [`BucketSummary::bucket`] less the previous bucket of the message
    /// (the first: the bucket itself).
    pub gap: u32,
    /// As [`BucketSummary::floor`].
    pub floor: Option<Stamp>,
    /// As [`BucketSummary::items`]: each key's [`listed_hash`] and its
    /// packed stamp.
    pub items: Vec<(ListedHash, PackedStamp)>,
    /// As [`BucketSummary::stubs`].
    pub stubs: Vec<u32>,
}

/// A listed key's hash, fixed 8 bytes on the wire (a varint would take 9
/// or 10 for most).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListedHash(#[serde(with = "postcard::fixint::le")] pub u64);

/// The hash key of a packed summary: SipHash's 128 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKey(#[serde(with = "postcard::fixint::le")] pub u64, #[serde(with = "postcard::fixint::le")] pub u64);

/// `Summary`, packed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedSummary {
    /// The key the listed keys are hashed under.
    pub key: HashKey,
    /// What the stamps are relative to.
    pub table: StampTable,
    /// The buckets, in increasing order as in `Summary`, but for those in
    /// `empty`.
    pub buckets: Vec<PackedBucket>,
    /// The buckets summarised in which the sender holds nothing and has no
    /// floor, increasing, each as its distance from the one before (the
    /// first from 0): a byte each, where a bucket costs four. A summary a
    /// level above the buckets lists many.
    pub empty: Vec<u32>,
}

/// A [`PackedSummary`] unpacked: buckets and stamps as in `Summary`, keys
/// still hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashedSummary {
    /// The key the listed keys are hashed under.
    pub key: HashKey,
    /// The buckets that list something or have a floor.
    pub buckets: Vec<HashedBucket>,
    /// The other buckets summarised (the sender holds nothing there),
    /// increasing: four bytes each here, where a [`HashedBucket`] would
    /// take eighty for a byte on the wire.
    pub empty: Vec<u32>,
}

impl HashedSummary {
    /// Every bucket summarised, listed or empty, in the order they came
    /// (increasing, if the sender kept the rule).
    pub fn bucket_ids(&self) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.buckets.len() + self.empty.len());
        let mut empty = self.empty.iter().copied().peekable();
        for b in &self.buckets {
            while let Some(e) = empty.next_if(|e| *e < b.bucket) {
                ids.push(e);
            }
            ids.push(b.bucket);
        }
        ids.extend(empty);
        ids
    }
}

/// One bucket of a [`HashedSummary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashedBucket {
    /// As [`BucketSummary::bucket`].
    pub bucket: u32,
    /// As [`BucketSummary::floor`].
    pub floor: Option<Stamp>,
    /// As [`BucketSummary::items`], the keys hashed.
    pub items: Vec<(ListedHash, Stamp)>,
    /// As [`BucketSummary::stubs`].
    pub stubs: Vec<u32>,
}

/// A key's hash in a packed summary under `key`.
pub fn listed_hash(key: HashKey, k: &[u8]) -> ListedHash {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(key.0, key.1);
    h.write(k);
    ListedHash(h.finish())
}

/// A packed message that stands for no plain one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadPacking {
    /// A stamp named a node its table lacks, or an HLC past the end of the
    /// clock.
    #[error("packed stamp (node {node}, +{delta}) outside its table of {nodes} nodes from {base}")]
    Stamp {
        /// The stamp's node index.
        node: u32,
        /// The stamp's distance from the base.
        delta: u64,
        /// Nodes in the table.
        nodes: usize,
        /// The table's base.
        base: u64,
    },
    /// A bucket's gap took it past `u32::MAX`.
    #[error("packed summary: bucket gap {gap} after bucket {after} overflows")]
    Bucket {
        /// The bucket before.
        after: u32,
        /// The gap.
        gap: u32,
    },
    /// The empty buckets were not increasing, or reached past the last
    /// bucket.
    #[error("packed summary: empty buckets not increasing or out of range")]
    Empty,
}

impl StampTable {
    /// A table for `stamps`, with the index each node got.
    fn for_stamps<'a>(stamps: impl Iterator<Item = &'a Stamp> + Clone) -> (StampTable, HashMap<NodeId, u32>) {
        let base = stamps.clone().map(|s| s.hlc).min().unwrap_or(0);
        let mut nodes = Vec::new();
        let mut index = HashMap::new();
        for s in stamps {
            index.entry(s.node).or_insert_with(|| {
                nodes.push(s.node);
                (nodes.len() - 1) as u32
            });
        }
        (StampTable { nodes, base }, index)
    }

    /// The stamp `p` stands for.
    pub fn unpack(&self, p: PackedStamp) -> Result<Stamp, BadPacking> {
        let bad = || BadPacking::Stamp { node: p.node, delta: p.delta, nodes: self.nodes.len(), base: self.base };
        let node = *self.nodes.get(p.node as usize).ok_or_else(bad)?;
        let hlc = self.base.checked_add(p.delta).ok_or_else(bad)?;
        Ok(Stamp { hlc, node })
    }
}

fn pack(index: &HashMap<NodeId, u32>, base: u64, s: &Stamp) -> PackedStamp {
    PackedStamp { node: index[&s.node], delta: s.hlc - base }
}

impl PackedEntries {
    /// Packs registers for an `Entries` message, in HLC order (the order of
    /// an `Entries` message means nothing: each register merges alone).
    pub fn pack(mut entries: Vec<(Bytes, Register)>) -> PackedEntries {
        entries.sort_by_key(|(_, r)| r.marker.hlc);
        let (table, index) = StampTable::for_stamps(entries.iter().map(|(_, r)| &r.marker));
        let mut last = table.base;
        let entries = entries
            .into_iter()
            .map(|(k, r)| {
                let p = pack(&index, last, &r.marker);
                last = r.marker.hlc;
                (k, r.val.into(), p)
            })
            .collect();
        PackedEntries { table, entries }
    }

    /// The registers, as `Entries` carries them, in the order packed.
    pub fn unpack(self) -> Result<Vec<(Bytes, Register)>, BadPacking> {
        let mut from = self.table.clone();
        self.entries
            .into_iter()
            .map(|(k, val, p)| {
                let marker = from.unpack(p)?;
                from.base = marker.hlc;
                Ok((k, Register { val: val.into(), marker }))
            })
            .collect()
    }
}

impl PackedSummary {
    /// Packs buckets for a `Summary` message, hashing their keys under
    /// `key`.
    pub fn pack(buckets: Vec<BucketSummary>, key: HashKey) -> PackedSummary {
        let (table, index) = StampTable::for_stamps(buckets.iter().flat_map(|b| b.items.iter().map(|(_, s)| s)));
        let (mut last, mut last_empty) = (0, 0);
        let (mut packed, mut empty) = (Vec::new(), Vec::new());
        for b in buckets {
            if b.items.is_empty() && b.stubs.is_empty() && b.floor.is_none() {
                empty.push(b.bucket.wrapping_sub(last_empty));
                last_empty = b.bucket;
                continue;
            }
            let gap = b.bucket.wrapping_sub(last);
            last = b.bucket;
            packed.push(PackedBucket {
                gap,
                floor: b.floor,
                items: b.items.iter().map(|(k, s)| (listed_hash(key, k), pack(&index, table.base, s))).collect(),
                stubs: b.stubs,
            });
        }
        PackedSummary { key, table, buckets: packed, empty }
    }

    /// The buckets with their stamps, the keys still hashed. Buckets must
    /// increase, the empty ones among the others (the session checks it,
    /// as for `Summary`); here a gap only has to land on a `u32`, and the
    /// empty buckets must increase and stay below [`BUCKETS`].
    pub fn unpack(self) -> Result<HashedSummary, BadPacking> {
        let table = self.table;
        let mut last = 0u32;
        let buckets = self
            .buckets
            .into_iter()
            .map(|b| {
                let bucket = last.checked_add(b.gap).ok_or(BadPacking::Bucket { after: last, gap: b.gap })?;
                last = bucket;
                let items = b.items.into_iter().map(|(h, p)| Ok((h, table.unpack(p)?))).collect::<Result<_, _>>()?;
                Ok(HashedBucket { bucket, floor: b.floor, items, stubs: b.stubs })
            })
            .collect::<Result<_, _>>()?;
        let mut empty = Vec::with_capacity(self.empty.len());
        let mut last_empty = None::<u32>;
        for gap in self.empty {
            let b = match last_empty {
                None => gap,
                Some(_) if gap == 0 => return Err(BadPacking::Empty),
                Some(l) => l.checked_add(gap).ok_or(BadPacking::Empty)?,
            };
            if b as usize >= BUCKETS {
                return Err(BadPacking::Empty);
            }
            last_empty = Some(b);
            empty.push(b);
        }
        Ok(HashedSummary { key: self.key, buckets, empty })
    }
}
