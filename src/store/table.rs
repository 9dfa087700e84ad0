//! A shard's table: one allocation per entry and a 32-byte record.
//!
//! - `index`: a hashbrown table of record ids, 4 bytes and a control byte
//!   a slot, hashed from the key's digest hash (every caller has it
//!   already);
//! - `chunks`: the records, in fixed chunks of [`CHUNK`], so that growth
//!   costs at most one partly used chunk rather than a doubled vector, and
//!   a record's id is stable while its key is held (the shard's queues
//!   hold ids, not keys). Freed ids are reused; a table less than a
//!   quarter used is compacted, which renumbers the records;
//! - a record's blob holds its key, value, expiry and arrival time in one
//!   allocation;
//! - a stamp's node id is kept once per table, and a record holds its
//!   index: few processes ever write (one id per peer incarnation), and
//!   8 bytes a record is an eighth of the budget.
//!
//! Row 6 of BENCHMARKS.md measures what an entry costs; ALGORITHM.md ("The
//! table") says where each byte goes.

use bytes::Bytes;
use hashbrown::{HashMap, HashTable};

use super::digest::key_hash;
use super::evict::Access;
use super::slot::{Register, Slot};
use crate::hlc::{NodeId, Stamp};

/// log2 of the records per chunk.
const CHUNK_BITS: u32 = 8;
/// Records per chunk: 256 records of 32 bytes, 8 KiB. A table that only
/// grows has at most one chunk partly used; removals leave free records
/// anywhere, which are reused first, until the table is compacted.
pub(crate) const CHUNK: usize = 1 << CHUNK_BITS;

/// Node ids a table may index: the two top bits of a record's `node` word
/// hold its kind.
const MAX_NODES: usize = 1 << 30;
const KIND_SHIFT: u32 = 30;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A value.
    Value = 0,
    /// A delete.
    Tombstone = 1,
    /// A value evicted before it was stable: its key and stamp.
    Stub = 2,
}

impl Kind {
    pub(crate) fn of(slot: &Slot) -> Kind {
        match slot {
            Slot::Value { .. } => Kind::Value,
            Slot::Tombstone => Kind::Tombstone,
            Slot::Evicted { .. } => Kind::Stub,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, n: u64) {
    let mut b = [0u8; 10];
    let len = put_varint_at(&mut b, 0, n);
    out.extend_from_slice(&b[..len]);
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// An entry's key, value, expiry and arrival in one allocation: a LEB128
/// varint (the key length times two, plus one if there is an expiry), the
/// key, a second varint (the arrival, see [`arrival_word`]), the value, and
/// the expiry (8 bytes, little endian) when there is one. The value's
/// length is what remains.
///
/// The arrival is here rather than in the record because only collection
/// and the stability checks read it, and they read the key too: the record
/// keeps what every lookup reads, in 32 bytes, which divide a cache line.
fn blob(key: &[u8], value: &[u8], expires_at_ms: Option<u64>, arrival: u64) -> Box<[u8]> {
    let tag = (key.len() as u64) << 1 | u64::from(expires_at_ms.is_some());
    let total =
        varint_len(tag) + key.len() + varint_len(arrival) + value.len() + if expires_at_ms.is_some() { 8 } else { 0 };
    let mut buf = Vec::with_capacity(total);
    put_varint(&mut buf, tag);
    buf.extend_from_slice(key);
    put_varint(&mut buf, arrival);
    buf.extend_from_slice(value);
    if let Some(e) = expires_at_ms {
        buf.extend_from_slice(&e.to_le_bytes());
    }
    buf.into_boxed_slice()
}

/// What a blob holds for `slot` beside its key: the value (empty for a
/// tombstone or a stub) and the expiry.
fn contents(slot: &Slot) -> (&[u8], Option<u64>) {
    match slot {
        Slot::Value { data, expires_at_ms } => (data, *expires_at_ms),
        Slot::Tombstone => (&[], None),
        Slot::Evicted { expires_at_ms } => (&[], *expires_at_ms),
    }
}

/// The blob of `key` holding `slot`, stamped `stamp`, stored at
/// `arrival_ms`.
fn blob_of(key: &[u8], slot: &Slot, stamp: Stamp, arrival_ms: u64) -> Box<[u8]> {
    let (value, expires_at_ms) = contents(slot);
    blob(key, value, expires_at_ms, arrival_word(stamp, arrival_ms))
}

/// Writes into `blob` what [`blob_of`] would make for its own key, when
/// that is exactly as long; false, with `blob` untouched, otherwise. Most
/// overwrites keep the value's size (fixed-size values, counters, a
/// refreshed entry), and one in place costs no allocation and no free, and
/// writes to memory that the lookup before it has just read, where a new
/// blob is memory no core has touched lately.
fn overwrite(blob: &mut [u8], slot: &Slot, stamp: Stamp, arrival_ms: u64) -> bool {
    let (value, expires_at_ms) = contents(slot);
    let (old_tag, key_at) = varint(blob, 0);
    let key_len = (old_tag >> 1) as usize;
    let tag = (key_len as u64) << 1 | u64::from(expires_at_ms.is_some());
    let arrival = arrival_word(stamp, arrival_ms);
    let expiry_len = if expires_at_ms.is_some() { 8 } else { 0 };
    // The tag's length follows from the key's alone (an even number and the
    // odd one after it are never on two sides of a power of two), so it
    // matches whenever the total does; checked all the same, as the writes
    // below rely on it.
    if varint_len(tag) != key_at || key_at + key_len + varint_len(arrival) + value.len() + expiry_len != blob.len() {
        return false;
    }
    put_varint_at(blob, 0, tag);
    let at = put_varint_at(blob, key_at + key_len, arrival);
    let (value_to, expiry_to) = blob[at..].split_at_mut(value.len());
    value_to.copy_from_slice(value);
    if let Some(e) = expires_at_ms {
        expiry_to.copy_from_slice(&e.to_le_bytes());
    }
    true
}

/// Writes `n` as a varint at `at` in `out`, which has room for it; returns
/// the position after it.
fn put_varint_at(out: &mut [u8], mut at: usize, mut n: u64) -> usize {
    while n >= 0x80 {
        out[at] = (n as u8) | 0x80;
        n >>= 7;
        at += 1;
    }
    out[at] = n as u8;
    at + 1
}

/// A register's arrival, kept as its distance from the stamp's physical
/// time (zigzag encoded, as the arrival may precede it by the writer's
/// clock skew): a local write arrives at its own stamp's time and a push
/// within milliseconds of it, so it takes one byte; a register brought by
/// anti-entropy long after its write takes up to six. Wrapping arithmetic
/// keeps every pair of times exact.
fn arrival_word(stamp: Stamp, arrival_ms: u64) -> u64 {
    let d = arrival_ms.wrapping_sub(stamp.physical_ms()) as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

/// The arrival (local Unix ms) that [`arrival_word`] encoded for a stamp
/// of `hlc`.
fn arrival_of(hlc: u64, word: u64) -> u64 {
    let d = ((word >> 1) as i64) ^ -((word & 1) as i64);
    Stamp { hlc, node: NodeId(0) }.physical_ms().wrapping_add(d as u64)
}

/// Reads a varint at `at`, returning it and the position after it.
#[inline]
fn varint(blob: &[u8], mut at: usize) -> (u64, usize) {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let b = blob[at];
        at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return (n, at);
        }
        shift += 7;
    }
}

/// The key of a blob made by [`blob`], and the tag and the position after
/// the key.
#[inline]
fn key_of(blob: &[u8]) -> (&[u8], u64, usize) {
    let (tag, at) = varint(blob, 0);
    let end = at + (tag >> 1) as usize;
    (&blob[at..end], tag, end)
}

/// The key, value and expiry of a blob made by [`blob`].
#[inline]
fn parts(blob: &[u8]) -> (&[u8], &[u8], Option<u64>) {
    let (key, tag, at) = key_of(blob);
    let (_arrival, at) = varint(blob, at);
    let rest = &blob[at..];
    if tag & 1 == 0 {
        return (key, rest, None);
    }
    let (value, expiry) = rest.split_at(rest.len() - 8);
    (key, value, Some(u64::from_le_bytes(expiry.try_into().expect("8 bytes"))))
}

/// One entry: 32 bytes, which divide a cache line: in a chunk aligned to
/// 32 bytes (jemalloc, the command's allocator, page-aligns chunks of this
/// size) no record straddles two lines.
#[derive(Default)]
pub(crate) struct Record {
    /// `None` for a free record.
    blob: Option<Box<[u8]>>,
    /// The stamp's hybrid logical time.
    hlc: u64,
    /// When (LRU) or how often (LFU) the entry was last read or written.
    access: Access,
    /// The kind (top two bits) and the index of the stamp's node id in the
    /// table's `nodes`.
    node: u32,
}

/// A record in use, with what it needs from its table to be read whole.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    rec: &'a Record,
    nodes: &'a [NodeId],
}

impl<'a> Entry<'a> {
    fn blob(&self) -> &'a [u8] {
        self.rec.blob.as_deref().expect("an entry's record is in use")
    }

    pub(crate) fn key(&self) -> &'a [u8] {
        key_of(self.blob()).0
    }

    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        parts(self.blob()).2
    }

    pub(crate) fn kind(&self) -> Kind {
        match self.rec.node >> KIND_SHIFT {
            0 => Kind::Value,
            1 => Kind::Tombstone,
            _ => Kind::Stub,
        }
    }

    pub(crate) fn is_value(&self) -> bool {
        self.kind() == Kind::Value
    }

    pub(crate) fn stamp(&self) -> Stamp {
        Stamp { hlc: self.rec.hlc, node: self.nodes[(self.rec.node & (MAX_NODES as u32 - 1)) as usize] }
    }

    /// The clock part of [`Entry::stamp`].
    #[inline]
    pub(crate) fn hlc(&self) -> u64 {
        self.rec.hlc
    }

    /// Local time (Unix ms) at which this register was stored here.
    /// Collection compares it with the per-member `synced` watermarks: a
    /// register that arrived before the last complete anti-entropy round
    /// with every member started is held by every member (or something
    /// newer is).
    pub(crate) fn arrival_ms(&self) -> u64 {
        let (_, _, at) = key_of(self.blob());
        arrival_of(self.rec.hlc, varint(self.blob(), at).0)
    }

    pub(crate) fn access(&self) -> &'a Access {
        &self.rec.access
    }

    /// The value a read returns at `now_ms`, if any (Redis's rule: expired
    /// once `now > expires_at`).
    #[inline]
    pub(crate) fn visible(&self, now_ms: u64) -> Option<&'a [u8]> {
        self.visible_at(|| now_ms)
    }

    /// As [`Entry::visible`], reading the time from `clock` only if the
    /// entry has an expiry.
    #[inline]
    pub(crate) fn visible_at(&self, clock: impl FnOnce() -> u64) -> Option<&'a [u8]> {
        if self.kind() != Kind::Value {
            return None;
        }
        match parts(self.blob()) {
            (_, _, Some(e)) if clock() > e => None,
            (_, v, _) => Some(v),
        }
    }

    /// The slot, as the store's API gives it (the value copied out).
    pub(crate) fn slot(&self) -> Slot {
        let (_, value, expires_at_ms) = parts(self.blob());
        match self.kind() {
            Kind::Value => Slot::Value { data: Bytes::copy_from_slice(value), expires_at_ms },
            Kind::Tombstone => Slot::Tombstone,
            Kind::Stub => Slot::Evicted { expires_at_ms },
        }
    }

    pub(crate) fn register(&self) -> Register {
        Register { val: self.slot(), marker: self.stamp() }
    }

    /// Bytes of payload held: the value's length.
    pub(crate) fn payload_len(&self) -> usize {
        match self.kind() {
            Kind::Value => parts(self.blob()).1.len(),
            _ => 0,
        }
    }
}

/// The records of a shard, indexed by key.
#[derive(Default)]
pub(crate) struct Table {
    index: HashTable<u32>,
    chunks: Vec<Box<[Record]>>,
    free: Vec<u32>,
    len: usize,
    /// The node ids of the stamps held, each once.
    nodes: Vec<NodeId>,
    node_index: HashMap<NodeId, u32, foldhash::fast::RandomState>,
}

/// The index's hash of a key hash. The key hash's top bits pick the digest
/// bucket, and so the shard: they are nearly constant within a shard, and
/// hashbrown takes its control byte from the top bits. The multiply brings
/// every bit of the key hash into them.
#[inline]
fn index_hash(kh: u64) -> u64 {
    kh.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[inline]
fn at(chunks: &[Box<[Record]>], id: u32) -> &Record {
    &chunks[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)]
}

fn at_mut(chunks: &mut [Box<[Record]>], id: u32) -> &mut Record {
    &mut chunks[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)]
}

fn rehash(chunks: &[Box<[Record]>]) -> impl Fn(&u32) -> u64 + '_ {
    move |&id| index_hash(key_hash(key_of(at(chunks, id).blob.as_deref().expect("indexed records are in use")).0))
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Record slots allocated, used or free.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// The id of `key`'s record; `kh` is its key hash.
    #[inline]
    pub(crate) fn find(&self, kh: u64, key: &[u8]) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(index_hash(kh), |&id| at(chunks, id).blob.as_deref().is_some_and(|b| key_of(b).0 == key))
            .copied()
    }

    /// The record `id`, which is in use.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Entry<'_> {
        Entry { rec: at(&self.chunks, id), nodes: &self.nodes }
    }

    /// Whether record `id` holds a value, read without a branch on the
    /// record: a caller probing many records reads them all before it
    /// looks at any answer, so that their cache misses overlap. `id` may
    /// be past the end.
    pub(crate) fn holds_value(&self, id: u32) -> bool {
        self.record(id).is_some_and(|r| r.blob.is_some() & (r.node >> KIND_SHIFT == Kind::Value as u32))
    }

    /// The record `id` if it is in use. `id` may be stale (an eviction
    /// candidate sampled before the table was compacted) and past the end.
    pub(crate) fn used(&self, id: u32) -> Option<Entry<'_>> {
        let rec = self.record(id)?;
        rec.blob.is_some().then_some(Entry { rec, nodes: &self.nodes })
    }

    /// Record `id`, used or free, unless it is past the end.
    fn record(&self, id: u32) -> Option<&Record> {
        self.chunks.get((id >> CHUNK_BITS) as usize)?.get(id as usize & (CHUNK - 1))
    }

    fn intern(&mut self, node: NodeId) -> u32 {
        if let Some(&i) = self.node_index.get(&node) {
            return i;
        }
        if self.nodes.len() >= (2 * self.len + 1024).min(MAX_NODES) {
            self.reintern();
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(node);
        self.node_index.insert(node, i);
        i
    }

    /// Forgets the node ids no record uses any more: a peer fed stamps of
    /// ever new node ids (restarts, or a faulty peer) must not grow the
    /// table without end. O(capacity), when there are more ids than twice
    /// the records, so amortized over the ids that made it so.
    fn reintern(&mut self) {
        let old = std::mem::take(&mut self.nodes);
        self.node_index.clear();
        for chunk in self.chunks.iter_mut() {
            for r in chunk.iter_mut().filter(|r| r.blob.is_some()) {
                let node = old[(r.node & (MAX_NODES as u32 - 1)) as usize];
                let i = match self.node_index.get(&node) {
                    Some(&i) => i,
                    None => {
                        let i = self.nodes.len() as u32;
                        self.nodes.push(node);
                        self.node_index.insert(node, i);
                        i
                    }
                };
                r.node = (r.node & !(MAX_NODES as u32 - 1)) | i;
            }
        }
        self.nodes.shrink_to_fit();
        self.node_index.shrink_to_fit();
    }

    fn node_word(&mut self, stamp: Stamp, slot: &Slot) -> u32 {
        self.intern(stamp.node) | (Kind::of(slot) as u32) << KIND_SHIFT
    }

    /// Replaces the record `id` (in use) with one for the same key, keeping
    /// its id, and its blob's allocation when the new blob is as long.
    pub(crate) fn replace(&mut self, id: u32, slot: &Slot, stamp: Stamp, arrival_ms: u64, access: Access) {
        let node = self.node_word(stamp, slot);
        let rec = at_mut(&mut self.chunks, id);
        let blob = rec.blob.as_deref_mut().expect("a replaced record is in use");
        if !overwrite(blob, slot, stamp, arrival_ms) {
            let new = blob_of(key_of(blob).0, slot, stamp, arrival_ms);
            rec.blob = Some(new);
        }
        (rec.hlc, rec.access, rec.node) = (stamp.hlc, access, node);
    }

    /// Adds a record for a key not held; `kh` is its key hash. Returns its
    /// id.
    pub(crate) fn insert(
        &mut self,
        kh: u64,
        key: &[u8],
        slot: &Slot,
        stamp: Stamp,
        arrival_ms: u64,
        access: Access,
    ) -> u32 {
        let node = self.node_word(stamp, slot);
        let new = Record { blob: Some(blob_of(key, slot, stamp, arrival_ms)), hlc: stamp.hlc, access, node };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let first = self.capacity() as u32;
                self.chunks.push((0..CHUNK).map(|_| Record::default()).collect());
                // Lowest ids first, so that a table filled from empty is
                // dense.
                self.free.extend((first + 1..first + CHUNK as u32).rev());
                first
            }
        };
        *at_mut(&mut self.chunks, id) = new;
        self.index.insert_unique(index_hash(kh), id, rehash(&self.chunks));
        self.len += 1;
        id
    }

    /// Removes the record `id` (in use); `kh` is its key hash.
    pub(crate) fn remove(&mut self, kh: u64, id: u32) {
        if let Ok(entry) = self.index.find_entry(index_hash(kh), |&i| i == id) {
            entry.remove();
        }
        *at_mut(&mut self.chunks, id) = Record::default();
        self.free.push(id);
        self.len -= 1;
    }

    /// The records in use, with their ids.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, Entry<'_>)> {
        let nodes = &self.nodes[..];
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, r)| r.blob.is_some())
                .map(move |(i, rec)| (((c << CHUNK_BITS) + i) as u32, Entry { rec, nodes }))
        })
    }

    /// Whether the table is worth compacting: less than a quarter of its
    /// records are used (after a flush, or a wave of ghosting), which is
    /// memory the bound pays for and nothing uses.
    pub(crate) fn sparse(&self) -> bool {
        self.chunks.len() > 1 && self.len * 4 < self.capacity()
    }

    /// Moves the records in use to the lowest ids, frees the chunks left
    /// empty and shrinks the index. Returns each old id's new id
    /// (`u32::MAX` for a free record). O(capacity); called when the table is
    /// `sparse`, so that it is amortized over the removals that made it so.
    pub(crate) fn compact(&mut self) -> Vec<u32> {
        let mut renumber = vec![u32::MAX; self.capacity()];
        let old = std::mem::take(&mut self.chunks);
        let chunks = self.len.div_ceil(CHUNK);
        let mut records: Vec<Record> = Vec::with_capacity(chunks * CHUNK);
        for (c, chunk) in old.into_iter().enumerate() {
            for (i, r) in chunk.into_vec().into_iter().enumerate() {
                if r.blob.is_some() {
                    renumber[(c << CHUNK_BITS) + i] = records.len() as u32;
                    records.push(r);
                }
            }
        }
        let used = records.len();
        records.resize_with(chunks * CHUNK, Record::default);
        let mut records = records.into_iter();
        self.chunks = (0..chunks).map(|_| records.by_ref().take(CHUNK).collect()).collect();
        self.free = ((used as u32)..(chunks * CHUNK) as u32).rev().collect();
        self.free.shrink_to_fit();
        for id in self.index.iter_mut() {
            *id = renumber[*id as usize];
        }
        self.index.shrink_to(self.len, rehash(&self.chunks));
        renumber
    }

    /// Bytes the table holds beyond the blobs: the index, the records (free
    /// ones too) and the free list.
    #[cfg(test)]
    pub(crate) fn overhead_bytes(&self) -> usize {
        self.index.allocation_size() + self.capacity() * std::mem::size_of::<Record>() + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: u64) -> Stamp {
        Stamp { hlc: n, node: NodeId(n % 3) }
    }

    fn value(data: &[u8], exp: Option<u64>) -> Slot {
        Slot::Value { data: Bytes::copy_from_slice(data), expires_at_ms: exp }
    }

    fn put(t: &mut Table, key: &[u8], slot: Slot, n: u64) -> u32 {
        let kh = key_hash(key);
        match t.find(kh, key) {
            Some(id) => {
                t.replace(id, &slot, st(n), n, Access::default());
                id
            }
            None => t.insert(kh, key, &slot, st(n), n, Access::default()),
        }
    }

    #[test]
    fn a_record_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Record>(), 32);
    }

    #[test]
    fn arrivals_round_trip_at_any_distance_from_the_stamp() {
        let now = 1_800_000_000_000u64;
        let hlc = Stamp::pack(now, 7);
        let mut t = Table::default();
        for (i, (hlc, arrival)) in [
            (hlc, now),
            // A writer whose clock runs ahead of ours.
            (hlc, now - 30_000),
            // Brought by anti-entropy sixty days after the write (past what
            // 32 bits of milliseconds hold).
            (hlc, now + 60 * 86_400_000),
            (u64::MAX, 0),
            (0, u64::MAX),
            (hlc, now + 1),
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("k{i}");
            let stamp = Stamp { hlc, node: NodeId(1) };
            let slot = value(b"v", Some(now + 5));
            let id = t.insert(key_hash(key.as_bytes()), key.as_bytes(), &slot, stamp, arrival, Access::default());
            let e = t.get(id);
            assert_eq!((e.arrival_ms(), e.stamp(), e.key(), e.slot()), (arrival, stamp, key.as_bytes(), slot.clone()));
            t.replace(id, &Slot::Evicted { expires_at_ms: None }, stamp, arrival ^ 1, Access::default());
            assert_eq!(t.get(id).arrival_ms(), arrival ^ 1);
            assert_eq!(t.get(id).slot(), Slot::Evicted { expires_at_ms: None });
        }
    }

    #[test]
    fn records_round_trip_every_shape() {
        let long_key = vec![3u8; 300];
        let long_value = vec![9u8; 70_000];
        let mut t = Table::default();
        for (i, (key, slot)) in [
            (&b""[..], value(b"", None)),
            (b"k", value(b"v", Some(u64::MAX))),
            (&long_key, value(&long_value, Some(17))),
            (b"t", Slot::Tombstone),
            (b"s", Slot::Evicted { expires_at_ms: Some(5) }),
            (b"z", Slot::Evicted { expires_at_ms: None }),
            (b"e", value(&[1; 8], None)),
        ]
        .into_iter()
        .enumerate()
        {
            let id = put(&mut t, key, slot.clone(), i as u64 + 1);
            let e = t.get(id);
            assert_eq!(e.key(), key);
            assert_eq!(e.slot(), slot);
            assert_eq!(e.stamp(), st(i as u64 + 1));
            assert_eq!(e.arrival_ms(), i as u64 + 1);
            assert_eq!(e.expires_at_ms(), slot.expires_at_ms());
            assert_eq!(e.payload_len(), slot.payload_len());
            assert_eq!(e.register(), Register { val: slot, marker: st(i as u64 + 1) });
        }
    }

    /// Every pair of shapes, one written over the other: in place exactly
    /// when the blobs are as long, and then the same bytes as a new blob.
    #[test]
    fn an_overwrite_in_place_is_the_blob_a_new_one_would_be() {
        let now = 1_800_000_000_000u64;
        let hlc = Stamp::pack(now, 3);
        let keys: [&[u8]; 4] = [b"", b"k", &[5; 63], &[6; 64]];
        let slots = [
            value(b"", None),
            value(b"v", None),
            value(&[1; 100], None),
            value(&[2; 100], Some(now + 10)),
            value(&[3; 92], Some(now + 10)),
            value(&[4; 8], None),
            Slot::Tombstone,
            Slot::Evicted { expires_at_ms: None },
            Slot::Evicted { expires_at_ms: Some(7) },
        ];
        // Arrivals one varint byte from the stamp's time, and three.
        let arrivals = [now, now + 1, now + 40_000];
        let (mut in_place, mut anew) = (0, 0);
        for key in keys {
            for (old, old_at) in slots.iter().flat_map(|s| arrivals.map(|a| (s, a))) {
                for (new, new_at) in slots.iter().flat_map(|s| arrivals.map(|a| (s, a))) {
                    let stamp = Stamp { hlc, node: NodeId(1) };
                    let before = blob_of(key, old, stamp, old_at);
                    let want = blob_of(key, new, stamp, new_at);
                    let mut b = before.clone();
                    if overwrite(&mut b, new, stamp, new_at) {
                        assert_eq!(b, want, "{old:?} at {old_at} overwritten by {new:?} at {new_at}");
                        in_place += 1;
                    } else {
                        assert_ne!(before.len(), want.len(), "{old:?} by {new:?}: as long, and not in place");
                        assert_eq!(b, before, "a blob not overwritten is left as it was");
                        anew += 1;
                    }
                }
            }
        }
        assert!(in_place > 0 && anew > 0, "{in_place} in place, {anew} anew");
    }

    #[test]
    fn a_replace_as_long_keeps_the_blob_and_a_longer_one_does_not() {
        let mut t = Table::default();
        let id = put(&mut t, b"k", value(&[1; 100], None), 1);
        let at = |t: &Table| t.get(id).blob().as_ptr();
        let first = at(&t);
        put(&mut t, b"k", value(&[2; 100], None), 2);
        assert_eq!(at(&t), first, "a value as long is written in place");
        assert_eq!(t.get(id).slot(), value(&[2; 100], None));
        assert_eq!((t.get(id).stamp(), t.get(id).arrival_ms()), (st(2), 2));
        put(&mut t, b"k", value(&[3; 101], None), 3);
        assert_eq!(t.get(id).slot(), value(&[3; 101], None));
        assert_eq!(t.get(id).blob().len(), blob_of(b"k", &value(&[3; 101], None), st(3), 3).len());
    }

    #[test]
    fn visible_follows_the_expiry() {
        let mut t = Table::default();
        let v = put(&mut t, b"k", value(b"v", Some(10)), 1);
        assert_eq!(t.get(v).visible(10), Some(&b"v"[..]));
        assert_eq!(t.get(v).visible(11), None);
        let d = put(&mut t, b"d", Slot::Tombstone, 2);
        assert_eq!(t.get(d).visible(0), None);
    }

    #[test]
    fn node_ids_no_record_uses_are_forgotten() {
        let mut t = Table::default();
        for n in 0..10_000u64 {
            put(&mut t, b"k", value(b"v", None), n);
            put(&mut t, format!("k{}", n % 10).as_bytes(), value(b"v", None), n);
        }
        assert!(t.nodes.len() <= 2 * t.len() + 1024, "{} node ids for {} records", t.nodes.len(), t.len());
        for (i, e) in t.iter() {
            assert_eq!(t.get(i).stamp(), e.stamp());
            assert_eq!(e.stamp().node, NodeId(e.stamp().hlc % 3));
        }
    }

    #[test]
    fn insert_find_replace_remove_and_compact() {
        let mut t = Table::default();
        let k = put(&mut t, b"k", value(b"v1", None), 1);
        put(&mut t, b"e", value(b"v2", Some(99)), 2);
        assert_eq!(put(&mut t, b"k", Slot::Tombstone, 3), k, "a replaced key keeps its id");
        assert_eq!(t.get(k).kind(), Kind::Tombstone);
        assert_eq!(t.len(), 2);
        t.remove(key_hash(b"k"), k);
        assert!(t.find(key_hash(b"k"), b"k").is_none());
        assert!(t.used(k).is_none());
        assert!(t.used(u32::MAX).is_none(), "an id past the end is not in use");
        let find = |t: &Table, key: &str| t.find(key_hash(key.as_bytes()), key.as_bytes());
        for i in 0..5_000u64 {
            put(&mut t, format!("key{i}").as_bytes(), value(&[7; 100], None), i);
        }
        assert!((0..5_000u64).all(|i| find(&t, &format!("key{i}")).is_some()));
        let full = t.overhead_bytes();
        for i in 0..4_900u64 {
            let key = format!("key{i}");
            let id = find(&t, &key).unwrap();
            t.remove(key_hash(key.as_bytes()), id);
        }
        assert!(t.sparse());
        let renumber = t.compact();
        assert!(!t.sparse());
        assert_eq!(renumber.iter().filter(|&&n| n != u32::MAX).count(), t.len());
        assert!(t.overhead_bytes() * 10 < full, "compaction frees: {} of {full}", t.overhead_bytes());
        for i in 4_900..5_000u64 {
            let key = format!("key{i}");
            let id = find(&t, &key).expect("kept");
            assert_eq!(t.get(id).key(), key.as_bytes());
            assert_eq!(t.get(id).stamp(), st(i));
        }
        assert_eq!(t.iter().count(), t.len());
        assert!(find(&t, "e").is_some());
    }

    #[test]
    fn holds_value_is_true_for_values_alone() {
        let mut t = Table::default();
        let v = put(&mut t, b"v", value(b"x", None), 1);
        let d = put(&mut t, b"d", Slot::Tombstone, 2);
        let s = put(&mut t, b"s", Slot::Evicted { expires_at_ms: None }, 3);
        let gone = put(&mut t, b"g", value(b"y", None), 4);
        t.remove(key_hash(b"g"), gone);
        assert!(t.holds_value(v));
        for id in [d, s, gone, CHUNK as u32 - 1, u32::MAX] {
            assert!(!t.holds_value(id), "record {id}");
        }
        for id in 0..CHUNK as u32 {
            assert_eq!(t.holds_value(id), t.used(id).is_some_and(|r| r.is_value()), "record {id}");
        }
    }
}
