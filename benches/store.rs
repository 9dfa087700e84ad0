//! Criterion benchmarks of the core [`Store`]: local reads (hit and miss),
//! local overwrites (reading the value replaced, and blind), merges of
//! remote registers, reads from two threads against one shared store,
//! reads in a scattered order over a million keys, and a million new keys
//! written into an empty store.
//!
//! Every operation is given a fixed `now` (a merge, the time of the
//! registers it merges), so no benchmark reads the system clock. Run with
//! `cargo bench --bench store`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meshcache::hlc::{NodeId, Stamp};
use meshcache::store::{Register, Slot, Store, StoreConfig};

/// Keys preloaded into every store.
const KEYS: usize = 100_000;
/// Bytes per value.
const VALUE_LEN: usize = 100;
/// The fixed physical time (Unix ms) passed to every operation.
const NOW: u64 = 1_700_000_000_000;
/// Remote registers per merge batch.
const MERGE_BATCH: usize = 1_000;

/// A 16-byte key such as `key:000000012345`.
fn key(i: usize) -> Bytes {
    let k = format!("key:{i:012}");
    debug_assert_eq!(k.len(), 16);
    Bytes::from(k)
}

/// The preloaded key set, in index order.
fn keys() -> Vec<Bytes> {
    (0..KEYS).map(key).collect()
}

/// 16-byte keys of the same shape that are never stored.
fn miss_keys() -> Vec<Bytes> {
    (0..KEYS).map(|i| key(1_000_000_000 + i)).collect()
}

fn value() -> Bytes {
    Bytes::from(vec![0xab; VALUE_LEN])
}

/// A store holding every key of `keys`, each written locally at `now`.
///
/// Every key gets its own value buffer, as in a real cache: were they all
/// clones of one `Bytes`, every hit would bump one shared refcount, and
/// readers on different threads would contend on that one cache line.
fn preloaded(keys: &[Bytes], now: u64) -> Store {
    let store = Store::new(NodeId(1), StoreConfig::default()).expect("default config is valid");
    for k in keys {
        store.put(k.clone(), value(), None, now).unwrap();
    }
    assert_eq!(store.len(), keys.len());
    store
}

/// The next index in a cycle over `KEYS` keys.
#[inline]
fn next(i: usize) -> usize {
    let n = i + 1;
    if n == KEYS {
        0
    } else {
        n
    }
}

fn bench_get(c: &mut Criterion, store: &Store, keys: &[Bytes]) {
    let misses = miss_keys();
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hit", |b| {
        let mut i = 0;
        b.iter(|| {
            let r = store.get(&keys[i], NOW);
            i = next(i);
            debug_assert!(r.is_some());
            black_box(r)
        })
    });
    group.bench_function("miss", |b| {
        let mut i = 0;
        b.iter(|| {
            let r = store.get(&misses[i], NOW);
            i = next(i);
            debug_assert!(r.is_none());
            black_box(r)
        })
    });
    group.finish();
}

fn bench_put(c: &mut Criterion, keys: &[Bytes]) {
    let store = preloaded(keys, NOW);
    let v = value();
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    group.bench_function("overwrite", |b| {
        let mut i = 0;
        b.iter(|| {
            // Key and value are `Bytes` clones: a refcount bump, no copy.
            let w = store.put(keys[i].clone(), v.clone(), None, NOW).unwrap();
            i = next(i);
            black_box(w)
        })
    });
    // The same overwrite without reading the value it replaces, as a plain
    // SET and `Mesh::insert` write.
    group.bench_function("overwrite_blind", |b| {
        let mut i = 0;
        b.iter(|| {
            let data = v.clone();
            let w = store.write_blind(keys[i].clone(), NOW, |_| Some(Slot::Value { data, expires_at_ms: None }));
            i = next(i);
            black_box(w)
        })
    });
    group.finish();
}

fn bench_merge(c: &mut Criterion, keys: &[Bytes]) {
    // Preload with local stamps a minute in the past, so that remote stamps
    // starting at NOW - 50 s replace them. Remote stamps then rise by one per
    // register, and each batch arrives at its last stamp's time, as a push
    // arrives within milliseconds of its write (and so its registers are
    // stored as a push's are).
    let store = preloaded(keys, NOW - 60_000);
    let v = value();
    let mut hlc = Stamp::pack(NOW - 50_000, 0);
    let mut cursor = 0;
    let mut group = c.benchmark_group("merge");
    group.throughput(Throughput::Elements(MERGE_BATCH as u64));
    group.bench_function("batch1000", |b| {
        b.iter_batched(
            || {
                let batch = (0..MERGE_BATCH)
                    .map(|_| {
                        hlc += 1;
                        let k = keys[cursor].clone();
                        cursor = next(cursor);
                        let reg = Register {
                            val: Slot::Value { data: v.clone(), expires_at_ms: None },
                            marker: Stamp { hlc, node: NodeId(2) },
                        };
                        (k, reg)
                    })
                    .collect::<Vec<_>>();
                (batch, Stamp { hlc, node: NodeId(2) }.physical_ms())
            },
            |(batch, arrival)| {
                let out = store.merge(batch, arrival);
                debug_assert_eq!(out.changes.len(), MERGE_BATCH);
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_get_parallel(c: &mut Criterion, store: &Arc<Store>, keys: &Arc<Vec<Bytes>>) {
    const THREADS: usize = 2;
    let mut group = c.benchmark_group("get_parallel");
    // `iters` gets are split across the threads, so the reported time is wall
    // time per get and the throughput is gets per second over all threads.
    group.throughput(Throughput::Elements(1));
    group.bench_function("2threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(THREADS + 1));
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, keys, barrier) = (store.clone(), keys.clone(), barrier.clone());
                    // Thread 0 takes the remainder of an odd split.
                    let n = iters / THREADS as u64 + u64::from(t == 0) * (iters % THREADS as u64);
                    thread::spawn(move || {
                        // Start the threads half the key set apart.
                        let mut i = t * KEYS / THREADS;
                        barrier.wait();
                        for _ in 0..n {
                            black_box(store.get(&keys[i], NOW));
                            i = next(i);
                        }
                    })
                })
                .collect();
            // Thread spawning is not timed: the clock starts once every
            // thread is at the barrier.
            barrier.wait();
            let start = Instant::now();
            for h in handles {
                h.join().expect("reader thread panicked");
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Keys of the random-order read: 2^20, so that multiplying an index by an
/// odd number and keeping the low bits visits every key once per cycle.
const RANDOM_KEYS: usize = 1 << 20;

/// Reads in a fixed scattered order over a million keys, the value copied
/// into a kept buffer as RESP's GET copies it into its reply: every lookup
/// then misses the caches on its way (index, record, value) and, on 4 KiB
/// pages, the TLB, where `get` above reads keys in the order they were
/// written, whose records and values the hardware prefetches.
/// BENCHMARKS.md ("Reads in a scattered order, and huge pages") runs it with and
/// without glibc's huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).
fn bench_get_random(c: &mut Criterion) {
    let keys: Vec<Bytes> = (0..RANDOM_KEYS).map(key).collect();
    let store = preloaded(&keys, NOW);
    let mut group = c.benchmark_group("get_random");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1m_keys", |b| {
        let (mut i, mut buf) = (0usize, Vec::with_capacity(VALUE_LEN));
        b.iter(|| {
            let k = &keys[i.wrapping_mul(0x9e37_79b1) & (RANDOM_KEYS - 1)];
            i += 1;
            buf.clear();
            let r = store.get_with(k, NOW, |v| buf.extend_from_slice(v));
            debug_assert!(r.is_some());
            black_box(&buf);
        })
    });
    group.finish();
}

/// A million new keys into an empty store, as a peer that joins or a
/// writer of fresh keys does: every shard's table and index grow as they
/// go, and at this size the growth reads records and values from memory,
/// not from the caches.
fn bench_fill(c: &mut Criterion) {
    let keys: Vec<Bytes> = (0..RANDOM_KEYS).map(key).collect();
    let v = value();
    let mut group = c.benchmark_group("fill");
    group.throughput(Throughput::Elements(RANDOM_KEYS as u64)).sample_size(10);
    group.bench_function("1m_keys", |b| {
        b.iter_batched(
            || Store::new(NodeId(1), StoreConfig::default()).expect("default config is valid"),
            |store| {
                for k in &keys {
                    black_box(store.put(k.clone(), v.clone(), None, NOW).unwrap());
                }
                store
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let store = Arc::new(preloaded(&keys, NOW));
    bench_get(c, &store, &keys);
    bench_put(c, &keys);
    bench_merge(c, &keys);
    bench_get_parallel(c, &store, &keys);
    drop(store);
    bench_get_random(c);
    bench_fill(c);
}

criterion_group! {
    name = store;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = benches
}
criterion_main!(store);
