//! A seeded simulation of 2 to 6 in-memory replicas of the core, with no
//! network: pushes are delayed, reordered or lost; anti-entropy sessions run
//! between reachable pairs (and are sometimes cut half-way); links are cut
//! one way or both; nodes crash and restart as new, empty incarnations;
//! clocks are skewed; virtual time sometimes jumps by hours.
//!
//! After the schedule, every link heals, crashed nodes are (some or all)
//! restarted, and sessions run between all pairs until stores settle. Then
//! the checker verifies, as the protocol model in `model/` does:
//!
//! - S1: no node ever serves a value older than a register it has held for
//!   that key (checked after every event);
//! - MEM: no live node holds more tombstones than its budget;
//! - CHURN: stores stop changing;
//! - I1: live stores are identical (registers and `clear_below`), and reads
//!   agree;
//! - I2/I3/I4: every read returns the highest surviving stamp of the key
//!   (a delete wins; nothing deleted comes back), except a latest write
//!   lost to a refusal reply everywhere, which must then read as absent.
//!
//! Half the schedules bound some peers' memory to a few values, so that
//! they evict into stubs and ghosts (ALGORITHM.md, "Eviction"). For them the
//! checker also verifies MEM-BYTES (values within the bound after every
//! event), and relaxes I1 and the reads only as eviction allows: a bounded
//! peer may miss a key, and holds the same register as the others for every
//! key it holds; its digest root equals theirs once all are live. It may
//! never read an older value (F-STALE). Keys 0 to 3 share one digest bucket,
//! so that a bucket is held in part while other keys of it change.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::num::NonZeroUsize;

use bytes::Bytes;
use meshcache::hlc::{NodeId, Stamp};
use meshcache::membership::{Incarnation, MemberId};
use meshcache::replica::Replica;
use meshcache::store::{Change, ChangeKind, Origin, Register, StoreConfig};
use meshcache::sync::Session;
use meshcache::wire::{DeltaBatch, SyncMsg};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Virtual milliseconds per `Tick` event.
pub const TICK_MS: u64 = 100;
/// A peer that no seed answers ends bootstrap after this long.
pub const BOOT_TIMEOUT_MS: u64 = 5_000;
/// Virtual start of time.
pub const START_MS: u64 = 1_700_000_000_000;

/// One step of a schedule.
#[derive(Clone, Debug)]
pub enum Ev {
    /// Virtual time moves on by `ms`.
    Tick(u64),
    /// A write at a slot.
    Put { slot: usize, key: u8, ttl_ms: Option<u64> },
    /// A delete at a slot.
    Del { slot: usize, key: u8 },
    /// FLUSHALL at a slot.
    Flush { slot: usize },
    /// A full anti-entropy session, `a` initiating.
    Ae { a: usize, b: usize },
    /// A session cut after `after` messages (a broken stream).
    AeCut { a: usize, b: usize, after: usize },
    /// A full session during which one side takes a local write after
    /// `after` messages: stores change while sessions run.
    AeWrite { a: usize, b: usize, after: usize, on_a: bool, key: u8, delete: bool },
    /// Deliver the pending push with this index (modulo the queue length).
    Deliver(usize),
    /// Lose the pending push with this index.
    Lose(usize),
    /// Deliver the push that event number `label` (1-based position in the
    /// schedule) sent to `to`, if it is still pending.
    DeliverLabel { label: u64, to: usize },
    /// Split into groups (group id per slot); links across groups cut.
    Partition(Vec<u8>),
    /// Cut the link from `a` to `b` (one way).
    Cut { a: usize, b: usize },
    /// Heal every link.
    Heal,
    /// Heal one link (one way).
    HealLink { a: usize, b: usize },
    /// The process at a slot dies.
    Crash { slot: usize },
    /// A new incarnation starts at a dead slot, with or without seeds.
    Restart { slot: usize, seeded: bool },
    /// Timer work (expiry, collection, compaction) at a slot.
    Gc { slot: usize },
}

/// Settings of one simulated mesh.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub n: usize,
    pub keys: u8,
    pub skew: Vec<i64>,
    /// Run timer work on every node after every event.
    pub eager: bool,
    pub max_tombstones: usize,
    /// Which crashed nodes restart before the final check: 0 none, 1 some,
    /// 2 all.
    pub restart_at_end: u8,
    pub conv_seed: u64,
    /// Per slot: the memory bound of a bounded peer, in bytes.
    pub max_bytes: Vec<Option<usize>>,
    /// A bug planted in every bounded peer, for the checks that must catch
    /// it.
    pub bug: Option<meshcache::store::Bug>,
}

struct Push {
    label: u64,
    from_slot: usize,
    to_slot: usize,
    to: MemberId,
    batch: DeltaBatch,
}

struct Node {
    r: Replica,
    /// Virtual time at start, for the bootstrap timeout.
    started: u64,
}

/// A node's whole store, to detect change: `clear_below` and registers.
type StoreView = (String, Vec<(Bytes, Register)>);
/// What must match across live nodes: `clear_below`, and key, stamp and
/// tombstone-ness of each register.
type RegisterView = (Stamp, Vec<(Bytes, Stamp, bool)>);

/// What a peer read for a key: the stamp and value, or a miss.
type Read = Option<(Stamp, Bytes)>;

/// A violation found by the checker.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

/// Counters of what a run exercised (coverage, not correctness).
#[derive(Default, Debug, Clone)]
pub struct Coverage {
    pub collected: u64,
    pub compactions: u64,
    pub refusals: u64,
    pub reply_drops: u64,
    pub restarts: u64,
    pub loading_refusals: u64,
    pub flushes: u64,
    pub lost_to_reply: u64,
    pub long_partitions: u64,
    pub evicted: u64,
    pub ghosted: u64,
    pub refused_ghost: u64,
    pub ghosts_adopted: u64,
    /// Reads of a bounded peer that missed a key others hold.
    pub misses: u64,
}

pub struct Sim {
    cfg: Cfg,
    t: u64,
    nodes: Vec<Option<Node>>,
    next_node: u64,
    link: Vec<Vec<bool>>,
    pushes: Vec<Push>,
    /// Every register ever written, by (key, stamp).
    written: HashMap<(Bytes, Stamp), Register>,
    /// (key, stamp) -> incarnations that ever stored it.
    held: HashMap<(Bytes, Stamp), HashSet<NodeId>>,
    /// (incarnation, key) -> highest stamp it ever stored for the key.
    hist: HashMap<(NodeId, Bytes), Stamp>,
    /// Registers dropped somewhere by a refusal reply.
    reply_killed: HashSet<(Bytes, Stamp)>,
    /// Consecutive ticks each pair was cut, to count long partitions.
    down_for: HashMap<(usize, usize), u64>,
    pub violations: Vec<Violation>,
    pub coverage: Coverage,
    pub trace: Option<String>,
    /// Position of the event being applied (1-based).
    label: u64,
    s1_seen: HashSet<(NodeId, Bytes, Stamp)>,
    /// `MESHCACHE_SIM_WATCH`: the key whose changes the trace notes, and
    /// what was last noted per slot.
    watch: Option<u8>,
    watched: Vec<Option<String>>,
}

/// Key `k`: keys 0 to 3 share one digest bucket, the others fall where
/// their names put them.
pub fn key(k: u8) -> Bytes {
    static SHARED: std::sync::OnceLock<Vec<Bytes>> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        use meshcache::store::digest::{bucket_of, key_hash};
        let bucket = bucket_of(key_hash(b"k0"));
        let mut out = vec![Bytes::from_static(b"k0")];
        for k in 1..4 {
            let name = (0u32..)
                .map(|j| Bytes::from(format!("k{k}-{j}")))
                .find(|n| bucket_of(key_hash(n)) == bucket)
                .expect("some name falls in the bucket");
            out.push(name);
        }
        out
    });
    match shared.get(k as usize) {
        Some(name) => name.clone(),
        None => Bytes::from(format!("k{k}")),
    }
}

impl Sim {
    pub fn new(cfg: Cfg, tracing: bool) -> Sim {
        let n = cfg.n;
        let mut sim = Sim {
            t: START_MS,
            nodes: Vec::new(),
            next_node: 1,
            link: vec![vec![true; n]; n],
            pushes: Vec::new(),
            written: HashMap::new(),
            held: HashMap::new(),
            hist: HashMap::new(),
            reply_killed: HashSet::new(),
            down_for: HashMap::new(),
            violations: Vec::new(),
            coverage: Coverage::default(),
            trace: tracing.then(String::new),
            label: 0,
            s1_seen: HashSet::new(),
            watch: if tracing { std::env::var("MESHCACHE_SIM_WATCH").ok().and_then(|k| k.parse().ok()) } else { None },
            watched: vec![None; n],
            cfg,
        };
        // The initial members all know each other, as a mesh formed from a
        // shared seed list would after its first rounds.
        for s in 0..n {
            let node = sim.start(s, true);
            sim.nodes.push(Some(node));
        }
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let id = sim.nodes[b].as_ref().unwrap().r.me().clone();
                    sim.nodes[a].as_ref().unwrap().r.learn_peer(&id).unwrap();
                }
            }
        }
        sim
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t, "t={:>6}  {}", self.t - START_MS, f());
        }
    }

    fn pt(&self, slot: usize) -> u64 {
        (self.t as i64 + self.cfg.skew[slot]) as u64
    }

    fn start(&mut self, slot: usize, booted: bool) -> Node {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        let me = MemberId { name: format!("n{slot}"), incarnation: Incarnation { started_ms: self.t, node: id } };
        let cfg = StoreConfig {
            shards: NonZeroUsize::new(4).unwrap(),
            max_tombstones: NonZeroUsize::new(self.cfg.max_tombstones).unwrap(),
            max_bytes: self.cfg.max_bytes[slot].and_then(NonZeroUsize::new),
            // Room for every stub the schedule can make: ghosting stubs
            // before they are stable has a price the checker would report
            // (ALGORITHM.md, "Eviction"); `store::ghost_tests` covers it.
            max_stubs: NonZeroUsize::new(1_000).unwrap(),
            seed: id.0,
            ..StoreConfig::default()
        };
        let r = Replica::new(me, cfg, booted).unwrap();
        if let (Some(bug), Some(_)) = (self.cfg.bug, self.cfg.max_bytes[slot]) {
            r.store().plant(bug, true);
        }
        Node { r, started: self.t }
    }

    fn alive(&self, s: usize) -> bool {
        self.nodes[s].is_some()
    }

    fn replica(&self, s: usize) -> &Replica {
        &self.nodes[s].as_ref().expect("alive").r
    }

    /// Records registers a node stored (from change events).
    fn record(&mut self, slot: usize, changes: &[Change]) {
        let node = self.replica(slot).me().incarnation.node;
        for c in changes {
            if c.kind == ChangeKind::Flush {
                continue;
            }
            // A Delete change from a refusal reply names a register that was
            // dropped, not stored; `held` only grows, so this is harmless.
            self.held.entry((c.key.clone(), c.stamp)).or_default().insert(node);
            let h = self.hist.entry((node, c.key.clone())).or_insert(Stamp::ZERO);
            if c.stamp > *h {
                *h = c.stamp;
            }
        }
    }

    fn write(&mut self, slot: usize, key_id: u8, value: Option<(u64, Option<u64>)>) {
        if !self.alive(slot) {
            return;
        }
        let now = self.pt(slot);
        let k = key(key_id);
        let r = &self.nodes[slot].as_ref().unwrap().r;
        let res = match value {
            Some((v, ttl)) => r.put(k.clone(), Bytes::from(v.to_string()), ttl, now),
            None => r.delete(k.clone(), now),
        };
        let w = match res {
            Ok(w) => w,
            Err(_) => {
                self.coverage.loading_refusals += 1;
                self.note(|| format!("write at n{slot} refused (loading)"));
                return;
            }
        };
        self.note(|| {
            format!(
                "{} at n{slot}: {} -> {:?}@{}",
                if value.is_some() { "PUT" } else { "DEL" },
                key_id,
                w.register.val,
                w.register.marker
            )
        });
        if !w.applied {
            return;
        }
        self.written.insert((k.clone(), w.register.marker), w.register.clone());
        let kind = if value.is_some() { ChangeKind::Put } else { ChangeKind::Delete };
        self.record(slot, &[Change { key: k.clone(), kind, origin: Origin::Local, stamp: w.register.marker }]);
        let batch = self.replica(slot).deltas(vec![(k, w.register)], true);
        self.push_all(slot, batch);
    }

    fn push_all(&mut self, slot: usize, batch: DeltaBatch) {
        for to in 0..self.cfg.n {
            if to != slot && self.link[slot][to] {
                if let Some(n) = &self.nodes[to] {
                    // Addressed to the incarnation running now: a push never
                    // follows a restart to the next one.
                    let to_id = n.r.me().clone();
                    self.pushes.push(Push {
                        label: self.label,
                        from_slot: slot,
                        to_slot: to,
                        to: to_id,
                        batch: batch.clone(),
                    });
                }
            }
        }
    }

    fn deliver(&mut self, i: usize) {
        if self.pushes.is_empty() {
            return;
        }
        let p = self.pushes.swap_remove(i % self.pushes.len());
        self.deliver_push(p);
    }

    fn deliver_push(&mut self, p: Push) {
        let ok = self.link[p.from_slot][p.to_slot] && self.nodes[p.to_slot].as_ref().is_some_and(|n| *n.r.me() == p.to);
        if !ok {
            self.note(|| format!("push n{}->n{} lost", p.from_slot, p.to_slot));
            return;
        }
        let now = self.pt(p.to_slot);
        let res = self.replica(p.to_slot).handle_deltas(p.batch, now);
        match res {
            Ok(out) => {
                self.coverage.refusals += out.refused.len() as u64;
                self.note(|| {
                    format!(
                        "push n{}->n{}: {} changes, {} refused, {} stale, {} refused by a ghost floor",
                        p.from_slot,
                        p.to_slot,
                        out.changes.len(),
                        out.refused.len(),
                        out.stale,
                        out.refused_ghost
                    )
                });
                self.record(p.to_slot, &out.changes);
            }
            Err(e) => self.note(|| format!("push n{}->n{} dropped: {e}", p.from_slot, p.to_slot)),
        }
    }

    /// Runs a session from `a` to `b`, cut after `cut` messages if given.
    /// Returns true if both sides completed.
    fn ae(&mut self, a: usize, b: usize, cut: Option<usize>) -> bool {
        self.ae_with(a, b, cut, None)
    }

    /// A session; `write` = (after how many messages, on a?, key, delete?).
    fn ae_with(&mut self, a: usize, b: usize, cut: Option<usize>, write: Option<(usize, bool, u8, bool)>) -> bool {
        if a == b || !self.alive(a) || !self.alive(b) || !self.link[a][b] || !self.link[b][a] {
            return false;
        }
        let (na, nb) = (self.pt(a), self.pt(b));
        let ra = &self.nodes[a].as_ref().unwrap().r;
        let rb = &self.nodes[b].as_ref().unwrap().r;
        let mut sa = Session::initiate(ra, na);
        let mut sb = Session::respond(nb);
        let mut sent = 0usize;
        let mut killed = Vec::new();
        let mut failed = false;
        let mut during: Option<(usize, meshcache::store::Written)> = None;
        let mut protocol_error: Option<String> = None;
        'outer: for _ in 0..10_000 {
            let mut moved = false;
            for (from, to, rf, rt, nt, dir) in [(0, 1, ra, rb, nb, true), (1, 0, rb, ra, na, false)] {
                let _ = (from, to);
                loop {
                    let (src, dst) = if dir { (&mut sa, &mut sb) } else { (&mut sb, &mut sa) };
                    let Some(m) = src.poll_transmit(rf) else { break };
                    moved = true;
                    if cut.is_some_and(|c| sent >= c) {
                        break 'outer;
                    }
                    sent += 1;
                    if let Some((after, on_a, k, del)) = write {
                        if sent == after && during.is_none() {
                            let (r, slot, now) = if on_a { (ra, a, na) } else { (rb, b, nb) };
                            let res = if del {
                                r.delete(key(k), now)
                            } else {
                                r.put(key(k), Bytes::from(format!("{now}-mid")), None, now)
                            };
                            if let Ok(w) = res {
                                during = Some((slot, w));
                            }
                        }
                    }
                    if let SyncMsg::Finish { refused, .. } = &m {
                        for (k, st) in refused {
                            if rt.store().register(k).is_some_and(|r| r.marker == *st) {
                                killed.push((k.clone(), *st));
                            }
                        }
                    }
                    if let Err(e) = dst.handle_message(rt, m, nt) {
                        failed = true;
                        if matches!(e, meshcache::sync::SyncError::Protocol(_)) {
                            // Honest replicas never break the protocol.
                            protocol_error = Some(e.to_string());
                        }
                        // Let the refusing side's Reject reach the other.
                        while let Some(m) = dst.poll_transmit(rt) {
                            let _ = src.handle_message(rf, m, if dir { na } else { nb });
                        }
                        break 'outer;
                    }
                }
            }
            if sa.is_finished() && sb.is_finished() {
                break;
            }
            if !moved {
                break;
            }
        }
        let done = !failed && sa.is_complete() && sb.is_complete();
        let (ca, cb) = (sa.take_changes(), sb.take_changes());
        self.coverage.reply_drops += killed.len() as u64;
        self.coverage.refusals += sa.stats().refused + sb.stats().refused;
        self.coverage.ghosts_adopted += sa.stats().ghosts_adopted + sb.stats().ghosts_adopted;
        for k in &killed {
            self.reply_killed.insert(k.clone());
        }
        self.note(|| {
            format!(
                "AE n{a}<->n{b}{}: {:?} {} / {} changes, {} refused, {} reply drops{}",
                cut.map(|c| format!(" (cut after {c})")).unwrap_or_default(),
                sa.stats().mode,
                ca.len(),
                cb.len(),
                sa.stats().refused + sb.stats().refused,
                killed.len(),
                if done { "" } else { " INCOMPLETE" }
            )
        });
        self.record(a, &ca);
        self.record(b, &cb);
        if let Some(e) = protocol_error {
            self.violations.push(Violation { kind: "SESSION-PROTOCOL-ERROR", detail: format!("n{a}<->n{b}: {e}") });
        }
        if let Some((slot, w)) = during {
            if w.applied {
                self.written.insert((w.key.clone(), w.register.marker), w.register.clone());
                let kind = if w.register.val.is_tombstone() { ChangeKind::Delete } else { ChangeKind::Put };
                self.record(
                    slot,
                    &[Change { key: w.key.clone(), kind, origin: Origin::Local, stamp: w.register.marker }],
                );
                self.note(|| format!("write during session at n{slot}: {:?}@{}", w.register.val, w.register.marker));
            }
        }
        done
    }

    fn gc(&mut self, slot: usize) {
        if !self.alive(slot) {
            return;
        }
        let now = self.pt(slot);
        let n = self.nodes[slot].as_ref().unwrap();
        if !n.r.is_booted() && self.t.saturating_sub(n.started) >= BOOT_TIMEOUT_MS {
            n.r.force_boot();
        }
        let tick = n.r.tick(now);
        let c = (tick.collected_tombstones + tick.collected_expired) as u64;
        self.coverage.collected += c;
        if c > 0 || tick.compaction.is_some() {
            let floors = self.replica(slot).store().floors();
            self.note(|| format!("GC n{slot}: collected {c}, compaction {:?}, floors {floors:?}", tick.compaction));
        }
    }

    pub fn apply(&mut self, ev: &Ev) {
        let n = self.cfg.n;
        self.label += 1;
        match ev {
            Ev::Tick(ms) => {
                self.t += ms;
                for i in 0..n {
                    for j in i + 1..n {
                        let cut = self.alive(i) && self.alive(j) && !(self.link[i][j] && self.link[j][i]);
                        let d = self.down_for.entry((i, j)).or_insert(0);
                        if cut {
                            *d += ms;
                            if *d >= 60_000 && *d - ms < 60_000 {
                                self.coverage.long_partitions += 1;
                            }
                        } else {
                            *d = 0;
                        }
                    }
                }
            }
            Ev::Put { slot, key, ttl_ms } => {
                let v = self.t;
                self.write(*slot, *key, Some((v, *ttl_ms)));
            }
            Ev::Del { slot, key } => self.write(*slot, *key, None),
            Ev::Flush { slot } => {
                if self.alive(*slot) {
                    let now = self.pt(*slot);
                    match self.replica(*slot).flush_all(now) {
                        Ok(st) => {
                            self.coverage.flushes += 1;
                            self.note(|| format!("FLUSHALL at n{slot}: clear_below {st}"));
                            let batch = self.replica(*slot).deltas(Vec::new(), true);
                            self.push_all(*slot, batch);
                        }
                        Err(_) => self.coverage.loading_refusals += 1,
                    }
                }
            }
            Ev::Ae { a, b } => {
                self.ae(*a, *b, None);
            }
            Ev::AeCut { a, b, after } => {
                self.ae(*a, *b, Some(*after));
            }
            Ev::AeWrite { a, b, after, on_a, key, delete } => {
                self.ae_with(*a, *b, None, Some((*after, *on_a, *key, *delete)));
            }
            Ev::Deliver(i) => self.deliver(*i),
            Ev::DeliverLabel { label, to } => {
                if let Some(i) = self.pushes.iter().position(|p| p.label == *label && p.to_slot == *to) {
                    let p = self.pushes.swap_remove(i);
                    self.deliver_push(p);
                }
            }
            Ev::Lose(i) => {
                if !self.pushes.is_empty() {
                    let l = self.pushes.len();
                    self.pushes.swap_remove(i % l);
                }
            }
            Ev::Partition(g) => {
                for i in 0..n {
                    for j in 0..n {
                        self.link[i][j] = g[i] == g[j];
                    }
                }
                self.note(|| format!("PARTITION {g:?}"));
            }
            Ev::Cut { a, b } => {
                self.link[*a][*b] = false;
                self.note(|| format!("CUT n{a}->n{b}"));
            }
            Ev::Heal => {
                self.link = vec![vec![true; n]; n];
                self.note(|| "HEAL".into());
            }
            Ev::HealLink { a, b } => self.link[*a][*b] = true,
            Ev::Crash { slot } => {
                if let Some(node) = self.nodes[*slot].take() {
                    self.coverage.compactions += node.r.store().stats().compactions;
                    self.note(|| format!("CRASH n{slot}"));
                }
            }
            Ev::Restart { slot, seeded } => {
                if !self.alive(*slot) {
                    let node = self.start(*slot, !seeded);
                    self.coverage.restarts += 1;
                    let id = node.r.me().clone();
                    self.nodes[*slot] = Some(node);
                    self.note(|| format!("RESTART n{slot} as {id} (seeded: {seeded})"));
                }
            }
            Ev::Gc { slot } => self.gc(*slot),
        }
        if self.cfg.eager {
            for s in 0..n {
                self.gc(s);
            }
        }
        self.check_after_event(ev);
    }

    /// With a trace and `MESHCACHE_SIM_WATCH=K`, notes every change of key
    /// K's register, bucket floor or bucket digest on each peer.
    fn watch(&mut self) {
        let Some(k) = self.watch else { return };
        let kb = key(k);
        let b = meshcache::store::digest::bucket_of(meshcache::store::digest::key_hash(&kb));
        for s in 0..self.cfg.n {
            let seen = self.nodes[s].as_ref().map(|n| {
                let st = n.r.store();
                let reg = st.register(&kb).map(|r| format!("{:?}@{}", r.val, r.marker));
                format!("{reg:?} floor {} digest {:x}", st.bucket_floor(b), st.range_digest(b, b + 1))
            });
            if self.watched[s] != seen {
                let line = format!("WATCH n{s} k{k}: {seen:?}");
                self.watched[s] = seen;
                self.note(|| line);
            }
        }
    }

    fn check_after_event(&mut self, ev: &Ev) {
        self.watch();
        for s in 0..self.cfg.n {
            let Some(node) = &self.nodes[s] else { continue };
            let inc = node.r.me().incarnation.node;
            let now = self.pt(s);
            let st = node.r.store().stats();
            if st.tombstones > self.cfg.max_tombstones {
                let d = format!(
                    "n{s} holds {} tombstones > budget {} after {ev:?}",
                    st.tombstones, self.cfg.max_tombstones
                );
                self.violations.push(Violation { kind: "MEM-BOUND", detail: d });
            }
            if let Some(max) = self.cfg.max_bytes[s] {
                let held = node.r.store().value_bytes();
                if held > max {
                    let d = format!("n{s} holds {held} bytes of values > bound {max} after {ev:?}");
                    self.violations.push(Violation { kind: "MEM-BYTES", detail: d });
                }
            }
            for k in 0..self.cfg.keys {
                let kb = key(k);
                let Some(reg) = node.r.store().register(&kb) else { continue };
                if reg.val.visible(now).is_none() {
                    continue;
                }
                if let Some(h) = self.hist.get(&(inc, kb.clone())) {
                    if reg.marker < *h && self.s1_seen.insert((inc, kb.clone(), reg.marker)) {
                        let d = format!("n{s} reads k{k} stamp {} after holding stamp {h} (after {ev:?})", reg.marker);
                        self.violations.push(Violation { kind: "S1-RESURRECTION", detail: d });
                    }
                }
            }
        }
    }

    fn fingerprint(&self) -> Vec<Option<StoreView>> {
        self.nodes
            .iter()
            .map(|n| {
                n.as_ref().map(|n| {
                    let (f, all) = n.r.store().snapshot();
                    (format!("{:?}", f.clear_below), all)
                })
            })
            .collect()
    }

    /// Heals, restarts, syncs until stores settle, and runs the final check.
    pub fn converge(&mut self) {
        let n = self.cfg.n;
        let mut rng = SmallRng::seed_from_u64(self.cfg.conv_seed);
        self.apply(&Ev::Heal);
        let dead: Vec<usize> = (0..n).filter(|s| !self.alive(*s)).collect();
        for s in &dead {
            let restart = match self.cfg.restart_at_end {
                2 => true,
                1 => rng.random_bool(0.5),
                _ => false,
            } || dead.len() == n && *s == dead[0];
            if restart {
                self.apply(&Ev::Restart { slot: *s, seeded: true });
            }
        }
        // Undelivered pushes are lost.
        self.pushes.clear();
        let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
        // Rounds of 500 virtual ms: enough for TTLs, the expiry grace and the
        // bootstrap timeout to run out well within the bound.
        const ROUNDS: usize = 120;
        const SETTLED: usize = 12;
        let mut stable = 0;
        let mut last = self.fingerprint();
        for round in 0..ROUNDS {
            for i in (1..pairs.len()).rev() {
                let j = rng.random_range(0..=i);
                pairs.swap(i, j);
            }
            for &(a, b) in &pairs.clone() {
                let (x, y) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
                self.apply(&Ev::Ae { a: x, b: y });
            }
            self.apply(&Ev::Tick(500));
            for s in 0..n {
                self.gc(s);
            }
            let fp = self.fingerprint();
            if fp == last {
                stable += 1;
            } else {
                stable = 0;
            }
            last = fp;
            // Not before 30 rounds (15 s): TTLs and the bootstrap timeout.
            if stable >= SETTLED && round >= 30 {
                self.final_check();
                return;
            }
        }
        let detail = self.describe_stores();
        self.violations.push(Violation {
            kind: "CHURN",
            detail: format!("stores still changing after {ROUNDS} rounds: {detail}"),
        });
        self.final_check();
    }

    fn describe_stores(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                let (f, all) = n.r.store().snapshot();
                let regs: Vec<String> = all
                    .iter()
                    .map(|(k, r)| format!("{}={:?}@{}", String::from_utf8_lossy(k), r.val, r.marker))
                    .collect();
                let _ = write!(s, " | n{i} cb={} gf={} [{}]", f.clear_below, f.gc_floor, regs.join(", "));
            }
        }
        s
    }

    fn final_check(&mut self) {
        let n = self.cfg.n;
        let live: Vec<usize> = (0..n).filter(|s| self.alive(*s)).collect();
        for s in &live {
            let st = self.replica(*s).store().stats();
            self.coverage.compactions += st.compactions;
            self.coverage.evicted += st.evictions;
            self.coverage.ghosted += st.ghosted;
            self.coverage.refused_ghost += st.refused_ghost;
        }
        if live.is_empty() {
            return;
        }
        let alive_ids: HashSet<NodeId> = live.iter().map(|s| self.replica(*s).me().incarnation.node).collect();
        let fcb = live.iter().map(|s| self.replica(*s).store().floors().clear_below).max().unwrap();
        // I1: identical stores (registers that still matter, and clear_below)
        // among the peers that hold everything; a bounded peer holds, of
        // the keys it holds, the same registers.
        let all_live = live.len() == n;
        let views: Vec<(usize, RegisterView)> = live
            .iter()
            .map(|s| {
                let now = self.pt(*s);
                let (f, all) = self.replica(*s).store().snapshot();
                let regs = all
                    .into_iter()
                    .filter(|(_, r)| all_live || r.val.visible(now).is_some())
                    .map(|(k, r)| (k, r.marker, r.val.is_tombstone()))
                    .collect();
                (*s, (f.clear_below, regs))
            })
            .collect();
        let bounded = |s: usize| self.cfg.max_bytes[s].is_some();
        let whole: Vec<&RegisterView> = views.iter().filter(|(s, _)| !bounded(*s)).map(|(_, v)| v).collect();
        let mut differ = whole.iter().any(|v| *v != whole[0]);
        for (s, (cb, regs)) in views.iter().filter(|(s, _)| bounded(*s)) {
            for (o, (ocb, oregs)) in &views {
                if o == s || (bounded(*o) && !whole.is_empty()) {
                    continue;
                }
                let theirs: HashMap<&Bytes, (Stamp, bool)> = oregs.iter().map(|(k, st, t)| (k, (*st, *t))).collect();
                differ |= cb != ocb
                    || regs.iter().any(|(k, st, t)| match theirs.get(k) {
                        Some(x) => *x != (*st, *t),
                        // Held here and not by a peer that holds everything.
                        None => !bounded(*o),
                    });
            }
        }
        if differ {
            let d = self.describe_stores();
            self.violations.push(Violation { kind: "I1-STORES-DIFFER", detail: d });
        }
        // With ghosts, the digests agree as well: anti-entropy is quiet.
        if all_live && live.iter().any(|s| bounded(*s)) {
            let roots: Vec<u64> = live.iter().map(|s| self.replica(*s).store().root().0).collect();
            if roots.iter().any(|r| *r != roots[0]) {
                let d = format!("roots {roots:x?}{}", self.describe_stores());
                self.violations.push(Violation { kind: "I1-ROOTS-DIFFER", detail: d });
            }
        }
        // Expected winner per key: the highest stamp stored by a live
        // incarnation and not below the final clear_below.
        let mut best: BTreeMap<Bytes, Stamp> = BTreeMap::new();
        for ((k, st), ids) in &self.held {
            if ids.is_disjoint(&alive_ids) || *st < fcb {
                continue;
            }
            let b = best.entry(k.clone()).or_insert(*st);
            if *st > *b {
                *b = *st;
            }
        }
        let surviving: HashSet<(Bytes, Stamp)> = live
            .iter()
            .flat_map(|s| self.replica(*s).store().snapshot().1.into_iter().map(|(k, r)| (k, r.marker)))
            .collect();
        // Registers whose value (or tombstone) some live peer still holds:
        // a write that only bounded peers held may have been evicted from
        // all of them, and then reads as a miss everywhere.
        let with_value: HashSet<(Bytes, Stamp)> = live
            .iter()
            .flat_map(|s| self.replica(*s).store().snapshot().1)
            .filter(|(_, r)| !r.val.is_stub())
            .map(|(k, r)| (k, r.marker))
            .collect();
        let mut keys: BTreeSet<Bytes> = best.keys().cloned().collect();
        keys.extend(surviving.iter().map(|(k, _)| k.clone()));
        let mut reads: Vec<Vec<Read>> = Vec::new();
        for s in &live {
            let now = self.pt(*s);
            let mut row = Vec::new();
            for k in &keys {
                let got = self
                    .replica(*s)
                    .store()
                    .register(k)
                    .and_then(|reg| reg.val.visible(now).map(|v| (reg.marker, v.clone())));
                let mut expected_stamp = best.get(k).copied();
                if let Some(st) = expected_stamp {
                    if self.reply_killed.contains(&(k.clone(), st)) && !surviving.contains(&(k.clone(), st)) {
                        // Lost to a refusal reply everywhere: allowed, and the
                        // key must then read as absent. It is a loss only if
                        // it was a live value without TTL (a tombstone or an
                        // expired value dropped by a reply is just garbage).
                        let live = self.written.get(&(k.clone(), st)).is_some_and(|r| {
                            matches!(r.val, meshcache::store::Slot::Value { expires_at_ms: None, .. })
                        });
                        if live {
                            self.coverage.lost_to_reply += 1;
                        }
                        expected_stamp = None;
                    }
                }
                let exp = expected_stamp.and_then(|st| {
                    let reg = self.written.get(&(k.clone(), st))?;
                    reg.val.visible(now).map(|v| (st, v.clone()))
                });
                let evicted_everywhere = exp.as_ref().is_some_and(|e| !with_value.contains(&(k.clone(), e.0)));
                if got.is_none() && exp.is_some() && (self.cfg.max_bytes[*s].is_some() || evicted_everywhere) {
                    // A bounded peer may have evicted the key.
                    self.coverage.misses += 1;
                } else if got != exp {
                    let kind = match (&got, best.get(k)) {
                        (Some((g, _)), Some(b)) if g < b => "F-STALE",
                        (Some(_), None) => "F-STALE",
                        _ => "F-MISMATCH",
                    };
                    let d = format!(
                        "n{s} reads {} = {:?}, expected {:?} (max surviving stamp {:?}){}",
                        String::from_utf8_lossy(k),
                        got.as_ref().map(|g| g.0.to_string()),
                        exp.as_ref().map(|e| e.0.to_string()),
                        best.get(k).map(|b| b.to_string()),
                        self.describe_stores()
                    );
                    self.violations.push(Violation { kind, detail: d });
                }
                row.push(got);
            }
            reads.push(row);
        }
        // Peers that hold everything read alike; a bounded peer reads the
        // same or misses.
        let rows: Vec<(usize, &Vec<Read>)> = live.iter().copied().zip(reads.iter()).collect();
        let diverge = rows.iter().any(|(s, r)| {
            rows.iter().any(|(o, x)| {
                let bounded = |s: usize| self.cfg.max_bytes[s].is_some();
                r.iter()
                    .zip(x.iter())
                    .any(|(a, b)| a != b && !(bounded(*s) && a.is_none() || bounded(*o) && b.is_none()))
            })
        });
        if diverge {
            self.violations.push(Violation { kind: "I1-READS-DIVERGE", detail: self.describe_stores() });
        }
    }
}

/// A random configuration and schedule for `seed`, in the spirit of the
/// generator of the protocol model (`model/model_r.py`, `gen_and_run_r`).
pub fn generate(seed: u64) -> (Cfg, Vec<Ev>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.random_range(2..=6usize);
    let max_skew = [0i64, 50, 150, 240][rng.random_range(0..4)];
    let cfg = Cfg {
        n,
        keys: [rng.random_range(1..=4u8), rng.random_range(3..=8), rng.random_range(5..=8)][rng.random_range(0..3)],
        skew: (0..n).map(|_| rng.random_range(-max_skew..=max_skew)).collect(),
        eager: rng.random_bool(0.7),
        max_tombstones: rng.random_range(2..=4),
        restart_at_end: rng.random_range(0..3),
        conv_seed: rng.random(),
        max_bytes: bounds(seed, n),
        bug: None,
    };
    let long = rng.random_bool(0.35);
    let mut w: Vec<(&str, f64)> = vec![
        ("tick", rng.random_range(5.0..30.0)),
        ("put", rng.random_range(3.0..15.0)),
        ("del", rng.random_range(2.0..12.0)),
        ("flush", [0.0, 0.0, 0.3, 1.0][rng.random_range(0..4)]),
        ("ae", rng.random_range(2.0..20.0)),
        ("aecut", rng.random_range(0.0..3.0)),
        ("aewrite", rng.random_range(0.0..4.0)),
        ("dlv", rng.random_range(2.0..20.0)),
        ("lose", rng.random_range(0.0..4.0)),
        ("part", if long { rng.random_range(0.5..3.0) } else { rng.random_range(0.0..4.0) }),
        ("cut", if long { rng.random_range(0.0..2.0) } else { rng.random_range(0.0..3.0) }),
        ("heal", if long { rng.random_range(0.0..0.15) } else { rng.random_range(0.3..4.0) }),
        ("healink", if long { rng.random_range(0.0..0.1) } else { rng.random_range(0.0..2.0) }),
        ("crash", [0.0, 0.3, 1.0, 2.0][rng.random_range(0..4)]),
        ("restart", if rng.random_bool(0.25) { 0.05 } else { rng.random_range(0.5..3.0) }),
        ("gc", if cfg.eager { 0.0 } else { rng.random_range(2.0..15.0) }),
        ("jump", if long { rng.random_range(0.2..1.0) } else { 0.0 }),
    ];
    let total: f64 = w.iter().map(|x| x.1).sum();
    for x in &mut w {
        x.1 /= total;
    }
    let seeded_restarts = rng.random_bool(0.7);
    let len = rng.random_range(10..=160);
    let mut evs = Vec::with_capacity(len);
    let pick2 = |rng: &mut SmallRng| {
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        (a, b)
    };
    for _ in 0..len {
        let mut x: f64 = rng.random();
        let mut typ = w[0].0;
        for (name, p) in &w {
            if x < *p {
                typ = name;
                break;
            }
            x -= p;
        }
        let ev = match typ {
            "tick" => Ev::Tick(TICK_MS),
            "jump" => Ev::Tick(rng.random_range(1..=3) * 3_600_000),
            "put" => Ev::Put {
                slot: rng.random_range(0..n),
                key: rng.random_range(0..cfg.keys),
                ttl_ms: if rng.random_bool(0.25) { Some(rng.random_range(1..=12) * TICK_MS) } else { None },
            },
            "del" => Ev::Del { slot: rng.random_range(0..n), key: rng.random_range(0..cfg.keys) },
            "flush" => Ev::Flush { slot: rng.random_range(0..n) },
            "ae" => {
                let (a, b) = pick2(&mut rng);
                Ev::Ae { a, b }
            }
            "aecut" => {
                let (a, b) = pick2(&mut rng);
                Ev::AeCut { a, b, after: rng.random_range(1..8) }
            }
            "aewrite" => {
                let (a, b) = pick2(&mut rng);
                Ev::AeWrite {
                    a,
                    b,
                    after: rng.random_range(1..6),
                    on_a: rng.random_bool(0.5),
                    key: rng.random_range(0..cfg.keys),
                    delete: rng.random_bool(0.3),
                }
            }
            "dlv" => Ev::Deliver(rng.random_range(0..1000)),
            "lose" => Ev::Lose(rng.random_range(0..1000)),
            "part" => {
                let groups = rng.random_range(2..=3.min(n) as u8);
                Ev::Partition((0..n).map(|_| rng.random_range(0..groups)).collect())
            }
            "cut" => {
                let (a, b) = pick2(&mut rng);
                Ev::Cut { a, b }
            }
            "heal" => Ev::Heal,
            "healink" => Ev::HealLink { a: rng.random_range(0..n), b: rng.random_range(0..n) },
            "crash" => Ev::Crash { slot: rng.random_range(0..n) },
            "restart" => Ev::Restart { slot: rng.random_range(0..n), seeded: seeded_restarts || rng.random_bool(0.5) },
            _ => Ev::Gc { slot: rng.random_range(0..n) },
        };
        evs.push(ev);
    }
    (cfg, evs)
}

/// Memory bounds for half the schedules: each peer bounded with probability
/// 1/2, to room for one to three of the simulation's values. Drawn from a
/// generator of their own, so that a seed's schedule does not depend on them.
fn bounds(seed: u64, n: usize) -> Vec<Option<usize>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6d65_6d6f_7279);
    if rng.random_bool(0.5) {
        return vec![None; n];
    }
    // One accounted entry of the simulation: its overhead, and a key and a
    // value of up to 32 bytes together.
    let entry = meshcache::store::ENTRY_OVERHEAD + 32;
    (0..n).map(|_| rng.random_bool(0.5).then(|| rng.random_range(1..=3) * entry)).collect()
}

/// Runs one seeded schedule; returns the sim for inspection.
pub fn run_seed(seed: u64, tracing: bool) -> Sim {
    run_seed_with(seed, tracing, None)
}

/// Runs one seeded schedule with `bug` planted in its bounded peers.
pub fn run_seed_with(seed: u64, tracing: bool, bug: Option<meshcache::store::Bug>) -> Sim {
    let (mut cfg, evs) = generate(seed);
    cfg.bug = bug;
    let mut sim = Sim::new(cfg.clone(), tracing);
    sim.note(|| format!("seed {seed} cfg {cfg:?}"));
    for ev in &evs {
        sim.note(|| format!("--- {ev:?}"));
        sim.apply(ev);
    }
    sim.converge();
    sim
}
