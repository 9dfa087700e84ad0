//! Three layouts of a shard's table, compared on the reads of row 7 and the
//! bytes of row 6: what would a lookup gain from fewer dependent loads, and
//! what would it cost an entry?
//!
//! - **A, the store's table** (`src/store/table.rs`): the index's slot holds
//!   a record id; the record (32 bytes, in chunks) holds the blob's pointer,
//!   the stamp, the kind and the access word; the blob holds the key and
//!   the value. A hit loads the index's control bytes, its slot, the record
//!   and the blob, each address read from the load before.
//! - **B, the blob in the slot**: the index's slot is the blob's pointer,
//!   and the blob holds the record's id and the kind beside the key; the
//!   record (16 bytes: stamp, node, access word) is loaded by a read only to
//!   stamp the access word, after the value is found.
//! - **C, the record in the slot**: the index's slots are A's records.
//!
//! The blobs are A's (a varint of the key's length, the key, a varint
//! arrival, the value; B adds 5 bytes), made by the same allocator as the
//! command's (jemalloc). Keys and values are row 6's and row 7's (16 and
//! 100 bytes). The tables are sharded as the store's are (each behind a
//! read-write lock, picked by the key hash's top bits), with one shard, 8
//! and the default 64; the reads go in the order the keys were written, as
//! row 7's do. These are models of the read and insert paths only: no
//! removal, no free list, no node table.
//!
//! `cargo bench --bench table_layouts` prints, per layout, the bytes an
//! entry costs beyond key and value at 1,000,000 entries (jemalloc's
//! allocated bytes), the reads a second over 100,000 keys (rounds of 1 s,
//! the layouts alternating; the median and every round) and the inserts a
//! second of 200,000 new keys into 64 empty shards, each figure from a new
//! process. `ROUNDS=N` sets the rounds (default 5). Under `cargo test` it
//! checks that every layout holds what it was given, and measures nothing.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::RwLock;
use xxhash_rust::xxh3::xxh3_64;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
const CHUNK_BITS: u32 = 8;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The store's index hash of a key hash (`table::index_hash`).
fn index_hash(kh: u64) -> u64 {
    kh.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[inline]
fn varint(b: &[u8], mut at: usize) -> (u64, usize) {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let x = b[at];
        at += 1;
        n |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return (n, at);
        }
        shift += 7;
    }
}

/// The key of a blob, and the position after it.
#[inline]
fn key_of(blob: &[u8]) -> (&[u8], usize) {
    let (tag, at) = varint(blob, 0);
    let end = at + (tag >> 1) as usize;
    (&blob[at..end], end)
}

/// The blob of A and C; B's adds `extra` after the key.
fn blob(key: &[u8], value: &[u8], extra: &[u8]) -> Box<[u8]> {
    let mut b = Vec::with_capacity(2 + key.len() + extra.len() + 1 + value.len());
    put_varint(&mut b, (key.len() as u64) << 1);
    b.extend_from_slice(key);
    b.extend_from_slice(extra);
    put_varint(&mut b, 0);
    b.extend_from_slice(value);
    b.into_boxed_slice()
}

/// The access word's update, as `evict::Access::touch` makes it for LRU.
#[inline]
fn touch(a: &AtomicU32, now: u32) {
    if a.load(Ordering::Relaxed) != now {
        a.store(now, Ordering::Relaxed);
    }
}

trait Layout: Default {
    const NAME: &'static str;
    fn insert(&mut self, kh: u64, key: &[u8], value: &[u8], hlc: u64);
    /// The value of `key` lent to `f`, if it holds a value.
    fn get_with(&self, kh: u64, key: &[u8], now: u32, f: impl FnOnce(&[u8])) -> bool;
}

/// A's record: 32 bytes.
#[derive(Default)]
struct Record {
    blob: Option<Box<[u8]>>,
    /// The stamp: not read here, held for the record's size.
    _hlc: u64,
    access: AtomicU32,
    /// Kind (top two bits) and node index.
    node: u32,
}

// The sizes the comparison is about: the store's record, and B's.
const _: () = assert!(std::mem::size_of::<Record>() == 32);
const _: () = assert!(std::mem::size_of::<Meta>() == 16);

impl Record {
    /// A lookup's work once the record is found: the kind, the value lent
    /// to `f`, the access word.
    #[inline]
    fn read(&self, now: u32, f: impl FnOnce(&[u8])) -> bool {
        if self.node >> 30 != 0 {
            return false;
        }
        let b = self.blob.as_deref().expect("in use");
        let (_, at) = varint(b, key_of(b).1);
        touch(&self.access, now);
        f(&b[at..]);
        true
    }
}

#[derive(Default)]
struct SlotRecordBlob {
    index: HashTable<u32>,
    chunks: Vec<Box<[Record]>>,
    len: usize,
}

#[inline]
fn record(chunks: &[Box<[Record]>], id: u32) -> &Record {
    &chunks[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)]
}

impl Layout for SlotRecordBlob {
    const NAME: &'static str = "A: slot -> record -> blob (the store's)";

    fn insert(&mut self, kh: u64, key: &[u8], value: &[u8], hlc: u64) {
        let id = self.len as u32;
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push((0..CHUNK).map(|_| Record::default()).collect());
        }
        self.chunks[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)] =
            Record { blob: Some(blob(key, value, &[])), _hlc: hlc, access: AtomicU32::new(0), node: 0 };
        let chunks = &self.chunks;
        self.index.insert_unique(index_hash(kh), id, |&i| {
            index_hash(xxh3_64(key_of(record(chunks, i).blob.as_deref().expect("in use")).0))
        });
        self.len += 1;
    }

    #[inline]
    fn get_with(&self, kh: u64, key: &[u8], now: u32, f: impl FnOnce(&[u8])) -> bool {
        let chunks = &self.chunks;
        let Some(&id) =
            self.index.find(index_hash(kh), |&i| record(chunks, i).blob.as_deref().is_some_and(|b| key_of(b).0 == key))
        else {
            return false;
        };
        record(chunks, id).read(now, f)
    }
}

/// B's record: what a lookup does not need.
#[derive(Default)]
struct Meta {
    /// Not read here, held for the record's size.
    _hlc: u64,
    access: AtomicU32,
    _node: u32,
}

#[derive(Default)]
struct BlobInSlot {
    index: HashTable<Box<[u8]>>,
    meta: Vec<Box<[Meta]>>,
    len: usize,
}

impl Layout for BlobInSlot {
    const NAME: &'static str = "B: slot = blob (record by id)";

    fn insert(&mut self, kh: u64, key: &[u8], value: &[u8], hlc: u64) {
        let id = self.len as u32;
        if self.len == self.meta.len() * CHUNK {
            self.meta.push((0..CHUNK).map(|_| Meta::default()).collect());
        }
        self.meta[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)] =
            Meta { _hlc: hlc, access: AtomicU32::new(0), _node: 0 };
        let [a, b, c, d] = id.to_le_bytes();
        let kind = 0;
        self.index
            .insert_unique(index_hash(kh), blob(key, value, &[a, b, c, d, kind]), |b| index_hash(xxh3_64(key_of(b).0)));
        self.len += 1;
    }

    #[inline]
    fn get_with(&self, kh: u64, key: &[u8], now: u32, f: impl FnOnce(&[u8])) -> bool {
        let Some(b) = self.index.find(index_hash(kh), |b| key_of(b).0 == key) else {
            return false;
        };
        let at = key_of(b).1;
        if b[at + 4] != 0 {
            return false;
        }
        let id = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let (_, value_at) = varint(b, at + 5);
        f(&b[value_at..]);
        touch(&self.meta[(id >> CHUNK_BITS) as usize][id as usize & (CHUNK - 1)].access, now);
        true
    }
}

#[derive(Default)]
struct RecordInSlot {
    index: HashTable<Record>,
}

impl Layout for RecordInSlot {
    const NAME: &'static str = "C: slot = record -> blob";

    fn insert(&mut self, kh: u64, key: &[u8], value: &[u8], hlc: u64) {
        let r = Record { blob: Some(blob(key, value, &[])), _hlc: hlc, access: AtomicU32::new(0), node: 0 };
        self.index
            .insert_unique(index_hash(kh), r, |r| index_hash(xxh3_64(key_of(r.blob.as_deref().expect("in use")).0)));
    }

    #[inline]
    fn get_with(&self, kh: u64, key: &[u8], now: u32, f: impl FnOnce(&[u8])) -> bool {
        let Some(r) = self.index.find(index_hash(kh), |r| r.blob.as_deref().is_some_and(|b| key_of(b).0 == key)) else {
            return false;
        };
        r.read(now, f)
    }
}

/// Tables behind locks, a key's picked by its hash's top bits.
struct Sharded<L> {
    shards: Vec<RwLock<L>>,
    shift: u32,
}

impl<L: Layout> Sharded<L> {
    fn new(shards: usize) -> Self {
        assert!(shards.is_power_of_two());
        Sharded {
            shards: (0..shards).map(|_| RwLock::new(L::default())).collect(),
            shift: 64 - shards.trailing_zeros(),
        }
    }

    fn shard(&self, kh: u64) -> &RwLock<L> {
        // `checked_shr`: one shard takes no bits.
        &self.shards[kh.checked_shr(self.shift).unwrap_or(0) as usize]
    }

    fn insert(&self, key: &[u8], value: &[u8], hlc: u64) {
        let kh = xxh3_64(key);
        self.shard(kh).write().insert(kh, key, value, hlc);
    }

    fn get_with(&self, key: &[u8], f: impl FnOnce(&[u8])) -> bool {
        let kh = xxh3_64(key);
        self.shard(kh).read().get_with(kh, key, 7, f)
    }
}

fn key(i: usize) -> Vec<u8> {
    let k = format!("key:{i:012}").into_bytes();
    debug_assert_eq!(k.len(), KEY_LEN);
    k
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("v{i}-").into_bytes();
    v.resize(VALUE_LEN, b'.');
    v
}

fn allocated() -> usize {
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc stats")
}

/// Bytes an entry costs beyond key and value, with `keys` in 64 shards.
fn bytes_per_entry<L: Layout>(keys: &[Vec<u8>], values: &[Vec<u8>]) -> f64 {
    let before = allocated();
    let t = Sharded::<L>::new(64);
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        t.insert(k, v, i as u64);
    }
    let after = allocated();
    drop(t);
    (after - before) as f64 / keys.len() as f64 - (KEY_LEN + VALUE_LEN) as f64
}

/// Reads a second for `time`, in write order from a third of the way in.
fn reads<L: Layout>(t: &Sharded<L>, keys: &[Vec<u8>], time: Duration) -> f64 {
    let mut buf = Vec::with_capacity(VALUE_LEN);
    let (mut n, mut i) = (0usize, keys.len() / 3);
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..1024 {
            let hit = t.get_with(&keys[i], |v| {
                buf.clear();
                buf.extend_from_slice(v);
            });
            assert!(hit, "every key is held");
            black_box(&buf);
            i += 1;
            if i == keys.len() {
                i = 0;
            }
        }
        n += 1024;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Inserts a second of `keys` into 64 empty shards.
fn inserts<L: Layout>(keys: &[Vec<u8>], values: &[Vec<u8>]) -> f64 {
    let t = Sharded::<L>::new(64);
    let start = Instant::now();
    for (i, (k, v)) in keys.iter().zip(values).enumerate() {
        t.insert(k, v, i as u64);
    }
    let rate = keys.len() as f64 / start.elapsed().as_secs_f64();
    black_box(t);
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

const LAYOUTS: [&str; 3] = [SlotRecordBlob::NAME, BlobInSlot::NAME, RecordInSlot::NAME];

/// One measurement in this process: `part` of layout `layout` (an index
/// into [`LAYOUTS`]) with `shards` shards.
fn measure(part: &str, layout: usize, shards: usize) -> f64 {
    fn run<L: Layout>(part: &str, shards: usize) -> f64 {
        match part {
            "bytes" => {
                let (keys, values): (Vec<_>, Vec<_>) = (0..1_000_000).map(|i| (key(i), value(i))).unzip();
                bytes_per_entry::<L>(&keys, &values)
            }
            "reads" => {
                let (keys, values): (Vec<_>, Vec<_>) = (0..100_000).map(|i| (key(i), value(i))).unzip();
                let t = Sharded::<L>::new(shards);
                for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
                    t.insert(k, v, i as u64);
                }
                reads(&t, &keys, Duration::from_secs(1))
            }
            "inserts" => {
                let (keys, values): (Vec<_>, Vec<_>) = (0..200_000).map(|i| (key(i), value(i))).unzip();
                inserts::<L>(&keys, &values)
            }
            _ => panic!("no such measurement: {part}"),
        }
    }
    match layout {
        0 => run::<SlotRecordBlob>(part, shards),
        1 => run::<BlobInSlot>(part, shards),
        _ => run::<RecordInSlot>(part, shards),
    }
}

/// [`measure`] in a new process, so that no layout reads memory another
/// one's allocations and frees have laid out.
fn in_child(part: &str, layout: usize, shards: usize) -> f64 {
    let exe = std::env::current_exe().expect("this program's path");
    let out = std::process::Command::new(exe)
        .args(["--measure", part, &layout.to_string(), &shards.to_string()])
        .output()
        .expect("a measuring process");
    assert!(out.status.success(), "{part} of {}: {}", LAYOUTS[layout], String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a figure")
}

/// What `cargo test` runs (it does not pass `--bench`): every layout, at
/// every shard count measured, finds each key it was given with its value,
/// and no other key, so that the timings compare the same work.
fn check() {
    fn holds<L: Layout>(shards: usize) {
        let t = Sharded::<L>::new(shards);
        for i in 0..2_000 {
            t.insert(&key(i), &value(i), i as u64);
        }
        for i in 0..2_000 {
            let mut got = None;
            assert!(t.get_with(&key(i), |v| got = Some(v.to_vec())), "{}: key {i} held", L::NAME);
            assert_eq!(got, Some(value(i)), "{}: key {i}'s value", L::NAME);
        }
        assert!(!t.get_with(&key(2_000), |_| ()), "{}: a key never written", L::NAME);
    }
    for shards in [1, 8, 64] {
        holds::<SlotRecordBlob>(shards);
        holds::<BlobInSlot>(shards);
        holds::<RecordInSlot>(shards);
    }
    println!("table_layouts: each layout holds what it was given (run `cargo bench --bench table_layouts` to measure)");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, part, layout, shards] = &args[..] {
        if flag == "--measure" {
            let (layout, shards) = (layout.parse().expect("a layout"), shards.parse().expect("a shard count"));
            println!("{}", measure(part, layout, shards));
            return;
        }
    }
    if !args.iter().any(|a| a == "--bench") {
        check();
        return;
    }
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5).max(1);

    println!("bytes an entry beyond key and value, 1,000,000 entries in 64 shards (jemalloc's allocated bytes):");
    for (l, name) in LAYOUTS.iter().enumerate() {
        println!("  {name}: {:.1} B", in_child("bytes", l, 64));
    }
    // Rounds alternate the layouts; each measurement is a new process.
    let show = |what: &str, part: &str, shards: usize| {
        let mut runs = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (l, r) in runs.iter_mut().enumerate() {
                r.push(in_child(part, l, shards));
            }
        }
        println!("{what}:");
        for (name, runs) in LAYOUTS.iter().zip(runs) {
            let each: Vec<String> = runs.iter().map(|r| format!("{:.2}", r / 1e6)).collect();
            println!("  {name}: median {:.2}M/s ({})", median(runs) / 1e6, each.join(", "));
        }
    };
    for shards in [64, 8, 1] {
        show(&format!("reads of 100,000 keys in write order, {shards} shard(s), one thread, 1 s"), "reads", shards);
    }
    show("inserts of 200,000 new keys into 64 empty shards, one thread", "inserts", 64);
}
