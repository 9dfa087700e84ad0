//! An invariant checker for partition tests: it records every write, delete
//! and read made through it, with the stamp each was given or saw and the
//! time it was acknowledged, and after the mesh heals checks I1–I4
//! (docs/design.md, "Invariants that tests must prove").
//!
//! ```no_run
//! # async fn demo(peers: Vec<meshcache::Mesh>) {
//! use meshcache::check::History;
//! let h = History::new();
//! h.put(&peers[0], "k", "v").unwrap();
//! h.delete(&peers[1], "k").unwrap();
//! // ... cut links, write on both sides, heal ...
//! let converged = h.wait_converged(&peers, std::time::Duration::from_secs(30)).await;
//! let report = h.check(&peers);
//! assert!(report.violations.is_empty(), "{report}");
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use crate::hlc::Stamp;
use crate::locks::Mutex;
use crate::store::Slot;
use crate::{Mesh, MeshError};

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A write of this value.
    Put(Bytes),
    /// A write of this value that expires at this Unix millisecond.
    PutTtl(Bytes, u64),
    /// A delete.
    Delete,
    /// A read that returned this (stamp and value of the register read).
    Read(Option<(Stamp, Bytes)>),
}

/// One acknowledged operation.
#[derive(Clone, Debug)]
pub struct Op {
    /// The peer's name.
    pub peer: String,
    /// The key.
    pub key: Bytes,
    /// What happened.
    pub kind: OpKind,
    /// The stamp the write was given (writes only).
    pub stamp: Option<Stamp>,
    /// When it was acknowledged, since the history began.
    pub at: Duration,
}

/// The digest root every peer agrees on, if they do. Register counts must
/// agree too, unless a peer holds part of the keyspace (its ghosts stand
/// for registers it does not count: ALGORITHM.md, "Eviction").
fn agreed_root(peers: &[Mesh]) -> Option<(u64, u64)> {
    let roots: Vec<(u64, u64)> = peers.iter().map(|p| p.replica().store().root()).collect();
    let part = peers.iter().any(|p| p.replica().store().holds_part() || p.replica().store().max_bytes().is_some());
    let first = *roots.first()?;
    roots
        .iter()
        .all(|r| r.0 == first.0 && (part || r.1 == first.1))
        .then_some((first.0, if part { 0 } else { first.1 }))
}

/// A broken invariant, with the keys and stamps involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant: "I1", "I2", "I3", "I4" or "READ".
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// What [`History::check`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every violation found; empty when all invariants hold.
    pub violations: Vec<Violation>,
    /// Keys checked.
    pub keys: usize,
    /// Writes and deletes recorded.
    pub writes: usize,
    /// Reads recorded.
    pub reads: usize,
    /// Keys whose newest recorded write was a delete (or was flushed).
    pub deleted_keys: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys, {} writes, {} reads, {} deleted keys: {} violation(s)",
            self.keys,
            self.writes,
            self.reads,
            self.deleted_keys,
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  {}: {}", v.invariant, v.detail)?;
        }
        Ok(())
    }
}

/// Records operations and checks the invariants. Cheap to share: all
/// methods take `&self`.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

impl History {
    /// An empty history; times count from now.
    pub fn new() -> Self {
        History { start: crate::env::stopwatch(), ops: Mutex::new(Vec::new()) }
    }

    fn record(&self, peer: &Mesh, key: Bytes, kind: OpKind, stamp: Option<Stamp>) {
        let op = Op { peer: peer.id().name.clone(), key, kind, stamp, at: self.start.elapsed() };
        self.ops.lock().push(op);
    }

    /// Writes through `peer` and records the write with its stamp.
    pub fn put(&self, peer: &Mesh, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), MeshError> {
        let (key, value) = (key.into(), value.into());
        let v = value.clone();
        let w = peer.write_with(key.clone(), move |_, _| Some(Slot::Value { data: v, expires_at_ms: None }))?;
        if let Some(w) = w.filter(|w| w.applied) {
            self.record(peer, key, OpKind::Put(value), Some(w.register.marker));
        }
        Ok(())
    }

    /// Writes with a time to live through `peer`, and records the write
    /// with its stamp and expiry. Once expired, the key must read as absent
    /// everywhere, as if deleted.
    pub fn put_with_ttl(
        &self,
        peer: &Mesh,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), MeshError> {
        let (key, value) = (key.into(), value.into());
        let v = value.clone();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let w = peer.write_with(key.clone(), move |_, stamp| {
            Some(Slot::Value { data: v, expires_at_ms: Some(stamp.physical_ms() + ttl_ms) })
        })?;
        if let Some(w) = w.filter(|w| w.applied) {
            let exp = w.register.val.expires_at_ms().unwrap_or(0);
            self.record(peer, key, OpKind::PutTtl(value, exp), Some(w.register.marker));
        }
        Ok(())
    }

    /// Deletes through `peer` and records the delete with its stamp.
    pub fn delete(&self, peer: &Mesh, key: impl Into<Bytes>) -> Result<(), MeshError> {
        let key = key.into();
        let w = peer.write_with(key.clone(), |_, _| Some(Slot::Tombstone))?;
        if let Some(w) = w.filter(|w| w.applied) {
            self.record(peer, key, OpKind::Delete, Some(w.register.marker));
        }
        Ok(())
    }

    /// Reads through `peer` and records what it returned, with its stamp.
    pub fn read(&self, peer: &Mesh, key: impl Into<Bytes>) -> Option<Bytes> {
        let key = key.into();
        let now = peer.now_ms();
        let got = peer.replica().store().register(&key).and_then(|r| r.val.visible(now).map(|v| (r.marker, v.clone())));
        let value = got.as_ref().map(|g| g.1.clone());
        self.record(peer, key, OpKind::Read(got), None);
        value
    }

    /// Every operation recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }

    /// Waits until every peer has equal digests (I1), polling, or until
    /// `deadline`. Returns how long it took, or `None` on timeout.
    pub async fn wait_converged(&self, peers: &[Mesh], deadline: Duration) -> Option<Duration> {
        let equal = || agreed_root(peers).is_some();
        crate::wait::Wait::new(deadline).every(Duration::from_millis(5)).until("equal digests", equal).await.ok()
    }

    /// Waits until every peer's digest is equal and has stayed unchanged
    /// for a while, with no tombstone left anywhere (or unchanged for
    /// longer), or until `deadline`. Returns whether it settled. After
    /// convergence each peer collects its tombstones at its own moment,
    /// which moves its digest for a short while; call this before
    /// [`History::check`] for a stable picture.
    pub async fn wait_settled(peers: &[Mesh], deadline: Duration) -> bool {
        let end = crate::env::stopwatch() + deadline;
        let mut last = None;
        let mut since = crate::env::stopwatch();
        loop {
            let root = agreed_root(peers);
            if root.is_some() && last == root {
                let clean = peers.iter().all(|p| p.stats().store.tombstones == 0);
                let quiet = since.elapsed();
                if (clean && quiet >= Duration::from_millis(500)) || quiet >= Duration::from_secs(3) {
                    return true;
                }
            } else {
                last = root;
                since = crate::env::stopwatch();
            }
            if crate::env::stopwatch() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many of `keys` have a register (stamp) that differs between
    /// peers: a convergence timeline samples it.
    pub fn divergent(peers: &[Mesh], keys: &[Bytes]) -> usize {
        keys.iter()
            .filter(|k| {
                let mut it = peers.iter().map(|p| p.replica().store().register(k).map(|r| r.marker));
                let first = it.next().flatten();
                it.any(|m| m != first)
            })
            .count()
    }

    /// Checks the invariants against `peers`, which must be the live peers
    /// after healing and convergence:
    ///
    /// - I1: equal digests (or, while tombstones and expired values are
    ///   being collected, equal registers but for those), and equal reads
    ///   of every key, on every peer;
    /// - I2: each key's register carries the highest stamp written to it
    ///   (unless that stamp is below the final `clear_below`, when nothing
    ///   may be held);
    /// - I3: a key whose newest write is a delete (or an expired write)
    ///   reads as absent everywhere;
    /// - I4: every read returns the winning write's value;
    /// - a peer with a memory bound may read a miss instead, for a key it
    ///   evicted (ALGORITHM.md, "Eviction"), but never an older value;
    /// - READ: during the run, no peer returned a value older than one it had
    ///   returned before for the same key.
    pub fn check(&self, peers: &[Mesh]) -> Report {
        let ops = self.ops();
        let mut report = Report::default();
        // Every peer reads one clock (the system's, or a simulation's).
        let now = peers.first().map_or_else(crate::env::system_ms, Mesh::now_ms);
        // key -> (stamp, value it reads as now: None for a delete or an
        // expired write)
        let mut newest: BTreeMap<Bytes, (Stamp, Option<Bytes>)> = BTreeMap::new();
        let mut last_read: BTreeMap<(String, Bytes), Stamp> = BTreeMap::new();
        for op in &ops {
            match &op.kind {
                OpKind::Put(v) => {
                    report.writes += 1;
                    let st = op.stamp.expect("writes carry stamps");
                    let e = newest.entry(op.key.clone()).or_insert((st, Some(v.clone())));
                    if st > e.0 {
                        *e = (st, Some(v.clone()));
                    }
                }
                OpKind::PutTtl(v, exp) => {
                    report.writes += 1;
                    let st = op.stamp.expect("writes carry stamps");
                    let live = (now <= *exp).then(|| v.clone());
                    let e = newest.entry(op.key.clone()).or_insert((st, live.clone()));
                    if st > e.0 {
                        *e = (st, live);
                    }
                }
                OpKind::Delete => {
                    report.writes += 1;
                    let st = op.stamp.expect("writes carry stamps");
                    let e = newest.entry(op.key.clone()).or_insert((st, None));
                    if st > e.0 {
                        *e = (st, None);
                    }
                }
                OpKind::Read(got) => {
                    report.reads += 1;
                    if let Some((st, _)) = got {
                        let k = (op.peer.clone(), op.key.clone());
                        if let Some(prev) = last_read.get(&k) {
                            if st < prev {
                                report.violations.push(Violation {
                                    invariant: "READ",
                                    detail: format!(
                                        "{} read {} at stamp {st} after reading stamp {prev} (at {:?})",
                                        op.peer,
                                        show(&op.key),
                                        op.at
                                    ),
                                });
                            }
                        }
                        let e = last_read.entry(k).or_insert(*st);
                        *e = (*e).max(*st);
                    }
                }
            }
        }
        report.keys = newest.len();
        if peers.is_empty() {
            return report;
        }
        let roots: Vec<(u64, u64)> = peers.iter().map(|p| p.replica().store().root()).collect();
        if agreed_root(peers).is_none() {
            // Each peer collects a tombstone (or an expired value) at its
            // own moment, so digests may differ by those alone for a while
            // after convergence; the registers that can be read must not.
            let live = |p: &Mesh| -> Vec<(Bytes, Stamp)> {
                let (_, all) = p.replica().store().snapshot();
                all.into_iter()
                    .filter(|(_, r)| !r.val.is_tombstone() && !r.val.is_expired(now))
                    .map(|(k, r)| (k, r.marker))
                    .collect()
            };
            // A bounded peer holds only part of the keys: of those, the same
            // registers as a peer that holds them all.
            let bounded = |p: &Mesh| p.replica().store().max_bytes().is_some();
            let whole: Vec<Vec<(Bytes, Stamp)>> = peers.iter().filter(|p| !bounded(p)).map(live).collect();
            let differ = whole.iter().any(|w| *w != whole[0])
                || whole.first().is_some_and(|w| {
                    peers.iter().filter(|p| bounded(p)).any(|p| live(p).iter().any(|r| w.binary_search(r).is_err()))
                });
            if differ {
                let names: Vec<String> = peers.iter().map(|p| p.id().name.clone()).collect();
                report
                    .violations
                    .push(Violation { invariant: "I1", detail: format!("digests differ: {names:?} {roots:?}") });
            }
        }
        let clear_below = peers.iter().map(|p| p.replica().store().floors().clear_below).max().unwrap_or_default();
        for (key, (stamp, value)) in &newest {
            let flushed = *stamp < clear_below;
            if value.is_none() || flushed {
                report.deleted_keys += 1;
            }
            let mut reads = Vec::new();
            for p in peers {
                let reg = p.replica().store().register(key);
                let name = &p.id().name;
                match &reg {
                    Some(r) if r.marker < *stamp && !flushed => report.violations.push(Violation {
                        invariant: "I2",
                        detail: format!("{name} holds {} at stamp {}, but {} was written", show(key), r.marker, stamp),
                    }),
                    _ => {}
                }
                let got = reg.as_ref().and_then(|r| r.val.visible(now).cloned());
                let expected = if flushed { None } else { value.clone() };
                if value.is_none() || flushed {
                    if let Some(g) = &got {
                        let st = reg.as_ref().map(|r| r.marker).unwrap_or_default();
                        if st <= *stamp {
                            report.violations.push(Violation {
                                invariant: "I3",
                                detail: format!(
                                    "{name} reads deleted key {} = {:?} (stamp {st}, delete at {stamp})",
                                    show(key),
                                    show(g)
                                ),
                            });
                        }
                    }
                } else if got != expected && reg.as_ref().is_some_and(|r| r.marker == *stamp) {
                    // Holding the winning stamp but reading something else:
                    // only an eviction stub may (a local miss).
                    if !matches!(reg.as_ref().map(|r| &r.val), Some(Slot::Evicted { .. })) {
                        report.violations.push(Violation {
                            invariant: "I4",
                            detail: format!("{name} reads {} = {:?}, expected {:?}", show(key), got, expected),
                        });
                    }
                }
                // A bounded peer's miss is not a divergence.
                if got.is_some() || p.replica().store().max_bytes().is_none() {
                    reads.push(got);
                }
            }
            if reads.iter().any(|r| *r != reads[0]) {
                report.violations.push(Violation {
                    invariant: "I1",
                    detail: format!("reads of {} differ across peers: {:?}", show(key), reads),
                });
            }
        }
        report
    }
}
