//! Property tests of the CRDT laws behind `Store::merge` and anti-entropy.
//!
//! Random operation histories (puts with and without TTL, deletes, gossip
//! between origins, and evictions on stores with a tiny memory bound) are run
//! on 3..=5 origin stores. Every register they produce (the registers local
//! writes return, the gossip payloads and the origins' final contents, which
//! hold eviction stubs) is then delivered to replicas in shuffled orders, in
//! random groupings and with duplicates. The tests check:
//!
//! - commutativity: merging A then B equals merging B then A;
//! - associativity: (A ∪ B) ∪ C equals A ∪ (B ∪ C), built from snapshots;
//! - idempotence: merging what is already held changes nothing;
//! - I1: replicas that received the same registers hold the same state
//!   (keys, stamps, digest roots, reads), up to eviction stubs;
//! - I2: every key holds the write with the highest stamp among all writes
//!   to it (or the eviction stub of that very write);
//! - convergence through real anti-entropy `Session`s between `Replica`s.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use meshcache::hlc::{NodeId, Stamp};
use meshcache::membership::{Incarnation, MemberId};
use meshcache::replica::Replica;
use meshcache::store::digest::{bucket_of, key_hash, register_hash};
use meshcache::store::{Floors, MergeOutcome, Register, Slot, Store, StoreConfig};
use meshcache::sync::{Mode, Session};

const T0: u64 = 1_700_000_000_000;

/// The small keyspace of the merge tests: few keys, so writes collide.
const KEYS: [&str; 6] = ["apple", "banana", "cherry", "damson", "elder", "fig"];

/// The larger keyspace of the session tests, so that the digest tree has
/// several differing buckets to descend into. The first `HOT_KEYS` are two
/// groups of three keys that share a digest bucket.
const SESSION_KEYS: usize = 48;
const HOT_KEYS: usize = 6;

type Reg = (Bytes, Register);
type TestResult = Result<(), TestCaseError>;

// ---- configurations ------------------------------------------------------

/// A store configuration: unbounded, or bounded tightly enough that a few
/// entries per shard force eviction into stubs.
#[derive(Clone, Debug)]
struct Cfg {
    shards: usize,
    max_bytes: Option<usize>,
    seed: u64,
}

impl Cfg {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            shards: NonZeroUsize::new(self.shards).unwrap(),
            max_bytes: self.max_bytes.map(|m| NonZeroUsize::new(m).unwrap()),
            seed: self.seed,
            ..StoreConfig::default()
        }
    }
}

fn cfg_strategy() -> impl Strategy<Value = Cfg> {
    let unbounded = (prop::sample::select(vec![1usize, 4, 64]), any::<u64>()).prop_map(|(shards, seed)| Cfg {
        shards,
        max_bytes: None,
        seed,
    });
    // Eviction keeps the bytes of value-holding entries under the bound: a
    // little over 100 bytes of overhead each, plus key and value, so 250..900
    // bytes per shard holds one to seven values.
    let bounded = (prop::sample::select(vec![1usize, 2]), 250usize..900, any::<u64>())
        .prop_map(|(shards, per_shard, seed)| Cfg { shards, max_bytes: Some(shards * per_shard), seed });
    prop_oneof![1 => unbounded, 1 => bounded]
}

fn fresh(cfg: &Cfg, node: u64) -> Store {
    Store::new(NodeId(node), cfg.config()).expect("valid config")
}

// ---- histories -----------------------------------------------------------

#[derive(Clone, Debug)]
enum Action {
    /// Put a value of `len` bytes (distinct per op) to `KEYS[key]`.
    Put { key: usize, len: usize, ttl: Option<u64> },
    /// Delete `KEYS[key]`.
    Delete { key: usize },
    /// The origin pushes its whole store (stubs included) to another origin.
    Gossip { to: Index },
}

#[derive(Clone, Debug)]
struct Op {
    origin: Index,
    /// Milliseconds of physical time that pass before the op.
    dt: u64,
    action: Action,
}

#[derive(Clone, Debug)]
struct History {
    origins: Vec<Cfg>,
    ops: Vec<Op>,
}

fn action_strategy() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (0..KEYS.len(), 0usize..160, prop::option::weighted(0.3, 1u64..2_000))
            .prop_map(|(key, len, ttl)| Action::Put { key, len, ttl }),
        2 => (0..KEYS.len()).prop_map(|key| Action::Delete { key }),
        2 => any::<Index>().prop_map(|to| Action::Gossip { to }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Many zero steps: writes in the same millisecond on different origins
    // are ordered by counter and node only.
    let dt = prop_oneof![1 => Just(0u64), 2 => 0u64..40];
    (any::<Index>(), dt, action_strategy()).prop_map(|(origin, dt, action)| Op { origin, dt, action })
}

fn history_strategy(max_ops: usize) -> impl Strategy<Value = History> {
    (prop::collection::vec(cfg_strategy(), 3..=5), prop::collection::vec(op_strategy(), 1..max_ops))
        .prop_map(|(origins, ops)| History { origins, ops })
}

/// The result of running a history.
struct Run {
    origins: Vec<Store>,
    /// The registers the local writes returned: the ground truth for I2.
    writes: Vec<Reg>,
    /// Everything to deliver: the writes, every gossip payload and every
    /// origin's final contents (so eviction stubs travel too).
    deliveries: Vec<Reg>,
    /// Physical time after the last op.
    end: u64,
}

fn key_bytes(k: usize) -> Bytes {
    Bytes::from_static(KEYS[k].as_bytes())
}

/// A value unique to op `i` (so a wrong winner shows), `len` bytes or more.
fn value_for(origin: usize, i: usize, len: usize) -> Bytes {
    let mut v = format!("o{origin}-op{i}:").into_bytes();
    v.resize(v.len().max(len), b'x');
    Bytes::from(v)
}

fn origin_node(i: usize) -> u64 {
    0x1000 + i as u64
}

fn assert_clean(out: &MergeOutcome, n: usize) -> TestResult {
    prop_assert!(out.refused.is_empty(), "refused by gc_floor: {:?}", out.refused);
    prop_assert_eq!(out.future, 0, "registers refused as future");
    prop_assert_eq!(out.below_clear, 0, "registers below clear_below");
    prop_assert_eq!(out.changes.len() + out.stale, n, "every register either changes the store or is stale");
    Ok(())
}

fn run(h: &History) -> Result<Run, TestCaseError> {
    let origins: Vec<Store> = h.origins.iter().enumerate().map(|(i, c)| fresh(c, origin_node(i))).collect();
    let n = origins.len();
    let mut writes = Vec::new();
    let mut deliveries = Vec::new();
    let mut now = T0;
    for (i, op) in h.ops.iter().enumerate() {
        now += op.dt;
        let o = op.origin.index(n);
        let w = match &op.action {
            Action::Put { key, len, ttl } => {
                let value = value_for(o, i, *len);
                let w = origins[o].put(key_bytes(*key), value.clone(), *ttl, now).unwrap();
                let expires_at_ms = ttl.map(|t| w.register.marker.physical_ms() + t);
                prop_assert_eq!(&w.register.val, &Slot::Value { data: value, expires_at_ms });
                w
            }
            Action::Delete { key } => {
                let w = origins[o].delete(key_bytes(*key), now);
                prop_assert_eq!(&w.register.val, &Slot::Tombstone);
                w
            }
            Action::Gossip { to } => {
                let t = to.index(n);
                let (_, regs) = origins[o].snapshot();
                let out = origins[t].merge(regs.clone(), now);
                assert_clean(&out, regs.len())?;
                deliveries.extend(regs);
                continue;
            }
        };
        prop_assert!(w.applied);
        prop_assert_eq!(w.register.marker.node, NodeId(origin_node(o)));
        prop_assert!(w.register.marker.physical_ms() >= now);
        writes.push((w.key, w.register));
    }
    deliveries.extend(writes.iter().cloned());
    for o in &origins {
        deliveries.extend(o.snapshot().1);
    }
    Ok(Run { origins, writes, deliveries, end: now })
}

// ---- delivery plans ------------------------------------------------------

/// How one replica receives the registers: a permutation, duplicates
/// inserted at random places, and a grouping into `merge` calls.
#[derive(Clone, Debug)]
struct Plan {
    picks: Vec<Index>,
    dups: Vec<(Index, Index)>,
    chunks: Vec<usize>,
    cfg: Cfg,
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(any::<Index>(), 64),
        prop::collection::vec((any::<Index>(), any::<Index>()), 0..12),
        prop::collection::vec(1usize..=12, 1..8),
        cfg_strategy(),
    )
        .prop_map(|(picks, dups, chunks, cfg)| Plan { picks, dups, chunks, cfg })
}

/// The items in the plan's order, with its duplicates, cut into batches.
fn schedule<T: Clone>(items: &[T], plan: &Plan) -> Vec<Vec<T>> {
    let mut rest = items.to_vec();
    let mut seq = Vec::with_capacity(items.len() + plan.dups.len());
    let mut i = 0;
    while !rest.is_empty() {
        let at = plan.picks[i % plan.picks.len()].index(rest.len());
        seq.push(rest.remove(at));
        i += 1;
    }
    if !items.is_empty() {
        for (what, at) in &plan.dups {
            let x = items[what.index(items.len())].clone();
            seq.insert(at.index(seq.len() + 1), x);
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    while !seq.is_empty() {
        let n = plan.chunks[k % plan.chunks.len()].min(seq.len());
        out.push(seq.drain(..n).collect());
        k += 1;
    }
    out
}

/// Delivers `items` to `store` following `plan`, starting at time `now`.
fn deliver(store: &Store, items: &[Reg], plan: &Plan, now: u64) -> TestResult {
    let batches = schedule(items, plan);
    prop_assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        items.len() + if items.is_empty() { 0 } else { plan.dups.len() }
    );
    for (i, batch) in batches.into_iter().enumerate() {
        let n = batch.len();
        let out = store.merge(batch, now + i as u64);
        assert_clean(&out, n)?;
    }
    Ok(())
}

// ---- checks --------------------------------------------------------------

/// The LWW join of a set of registers: per key, the highest stamp.
fn join(regs: &[Reg]) -> Result<BTreeMap<Bytes, Register>, TestCaseError> {
    let mut out: BTreeMap<Bytes, Register> = BTreeMap::new();
    for (k, r) in regs {
        match out.get(k) {
            Some(cur) if cur.marker > r.marker => {}
            Some(cur) if cur.marker == r.marker => {
                prop_assert!(cur.val.same_write(&r.val), "two writes share stamp {}: {:?} / {:?}", r.marker, cur, r);
            }
            _ => {
                out.insert(k.clone(), r.clone());
            }
        }
    }
    Ok(out)
}

/// I2: the store holds, for every key written and no other, the register
/// with the highest stamp (or the eviction stub of that write).
fn assert_holds_join(store: &Store, expected: &BTreeMap<Bytes, Register>, who: &str) -> TestResult {
    let (_, held) = store.snapshot();
    let held_keys: Vec<&Bytes> = held.iter().map(|(k, _)| k).collect();
    let want_keys: Vec<&Bytes> = expected.keys().collect();
    prop_assert_eq!(held_keys, want_keys, "{}: keys held differ from keys written", who);
    for (k, r) in &held {
        let w = &expected[k];
        prop_assert_eq!(
            r.marker,
            w.marker,
            "{}: key {:?} holds {} but the newest write is {}",
            who,
            k,
            r.marker,
            w.marker
        );
        prop_assert!(
            r.val.same_write(&w.val),
            "{}: key {:?}@{} holds {:?}, the write was {:?}",
            who,
            k,
            r.marker,
            r.val,
            w.val
        );
    }
    Ok(())
}

/// The store's own bookkeeping agrees with its contents: the digest root
/// (kept incrementally) and the gauges.
fn assert_consistent(store: &Store, who: &str) -> TestResult {
    let (_, all) = store.snapshot();
    let h = all.iter().fold(0u64, |acc, (k, r)| acc.wrapping_add(register_hash(key_hash(k), r)));
    prop_assert_eq!(store.root(), (h, all.len() as u64), "{}: digest root out of date", who);
    let stats = store.stats();
    prop_assert_eq!(stats.entries, all.len(), "{}: entries gauge", who);
    prop_assert_eq!(
        stats.tombstones,
        all.iter().filter(|(_, r)| r.val.is_tombstone()).count(),
        "{}: tombstones gauge",
        who
    );
    prop_assert_eq!(
        stats.stubs,
        all.iter().filter(|(_, r)| matches!(r.val, Slot::Evicted { .. })).count(),
        "{}: stubs gauge",
        who
    );
    prop_assert_eq!(stats.floors, Floors::default(), "{}: floors moved without collection or flush", who);
    Ok(())
}

/// I1: `a` and `b` hold the same keys with the same stamps (slots equal up to
/// eviction), the same floors and digest root, and read alike at every time
/// in `at`, except that a stub reads as a miss where the value is held.
fn assert_same_state(a: &Store, b: &Store, at: &[u64], who: &str) -> TestResult {
    let (fa, sa) = a.snapshot();
    let (fb, sb) = b.snapshot();
    prop_assert_eq!(fa, fb, "{}: floors differ", who);
    let ka: Vec<(&Bytes, Stamp)> = sa.iter().map(|(k, r)| (k, r.marker)).collect();
    let kb: Vec<(&Bytes, Stamp)> = sb.iter().map(|(k, r)| (k, r.marker)).collect();
    prop_assert_eq!(ka, kb, "{}: keys or stamps differ", who);
    for ((k, ra), (_, rb)) in sa.iter().zip(&sb) {
        prop_assert!(ra.val.same_write(&rb.val), "{}: key {:?}@{}: {:?} vs {:?}", who, k, ra.marker, ra.val, rb.val);
    }
    // A stub's share of the digest is not its value's (ALGORITHM.md,
    // "Eviction"): where one side evicted what the other holds, the roots
    // differ by design, and each root is checked against its own registers
    // elsewhere.
    let stub = |s: &Vec<(Bytes, Register)>| s.iter().any(|(_, r)| r.val.is_stub());
    if !stub(&sa) && !stub(&sb) {
        prop_assert_eq!(a.root(), b.root(), "{}: digest roots differ", who);
    }
    for (k, ra) in &sa {
        let rb = b.register(k).expect("same keys");
        for &t in at {
            let (ga, gb) = (a.get(k, t), b.get(k, t));
            if ga == gb {
                continue;
            }
            // Only eviction may make reads differ: the missing side holds the
            // stub, the other the very value (same stamp) it stands for.
            let (miss, hit, got) = if ga.is_none() { (ra, &rb, gb) } else { (&rb, ra, ga) };
            prop_assert!(
                matches!(miss.val, Slot::Evicted { .. }),
                "{}: reads of {:?} at {} differ: {:?}",
                who,
                k,
                t,
                (&ra.val, &rb.val)
            );
            prop_assert_eq!(miss.marker, hit.marker);
            prop_assert_eq!(hit.val.visible(t), got.as_ref());
        }
    }
    Ok(())
}

/// Times at which reads are compared: before, around and after TTLs run out.
fn read_times(end: u64) -> [u64; 4] {
    [end, end + 500, end + 1_500, end + 10_000]
}

// ---- the merge laws ------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// I1, I2 and idempotence: fresh replicas (and the origins themselves)
    /// that receive every register, each in its own order, grouping and with
    /// its own duplicates, end in the same state, which is the LWW join of
    /// all writes.
    #[test]
    fn replicas_converge_in_any_delivery_order(
        h in history_strategy(40),
        plans in prop::collection::vec(plan_strategy(), 2..=4),
    ) {
        let r = run(&h)?;
        let truth = join(&r.writes)?;
        // Stubs and gossip copies carry no newer write.
        assert_holds_join_map(&join(&r.deliveries)?, &truth)?;
        let now = r.end;

        let mut replicas = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            let s = fresh(&p.cfg, 0x2000 + i as u64);
            deliver(&s, &r.deliveries, p, now)?;
            replicas.push(s);
        }
        // The origins too, from whatever state their history left them in.
        for (o, s) in r.origins.iter().enumerate() {
            deliver(s, &r.deliveries, &plans[o % plans.len()], now)?;
        }
        let all: Vec<&Store> = replicas.iter().chain(&r.origins).collect();
        for (i, s) in all.iter().enumerate() {
            let who = format!("store {i}");
            assert_consistent(s, &who)?;
            assert_holds_join(s, &truth, &who)?;
            assert_same_state(all[0], s, &read_times(now), &who)?;
        }

        // Idempotence: everything again, in one batch, changes nothing.
        for (i, s) in all.iter().enumerate() {
            let before = s.snapshot();
            let root = s.root();
            let out = s.merge(r.deliveries.clone(), now + 50_000);
            prop_assert!(out.changes.is_empty(), "store {}: re-merge changed {:?}", i, out.changes);
            prop_assert_eq!(out.stale, r.deliveries.len());
            assert_clean(&out, r.deliveries.len())?;
            prop_assert_eq!(s.snapshot(), before, "store {}: re-merge altered contents", i);
            prop_assert_eq!(s.root(), root);
        }
    }

    /// Commutativity: merge(A) then merge(B) equals merge(B) then merge(A),
    /// and both are the join of A ∪ B.
    #[test]
    fn merge_commutes(
        h in history_strategy(40),
        split in prop::collection::vec(0u8..3, 64),
        cfg in cfg_strategy(),
        plan_a in plan_strategy(),
        plan_b in plan_strategy(),
    ) {
        let r = run(&h)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, x) in r.deliveries.iter().enumerate() {
            match split[i % split.len()] {
                0 => a.push(x.clone()),
                1 => b.push(x.clone()),
                _ => {
                    a.push(x.clone());
                    b.push(x.clone());
                }
            }
        }
        let now = r.end;
        let ab = fresh(&cfg, 0x3001);
        deliver(&ab, &a, &plan_a, now)?;
        deliver(&ab, &b, &plan_b, now + 100)?;
        let ba = fresh(&cfg, 0x3002);
        deliver(&ba, &b, &plan_b, now)?;
        deliver(&ba, &a, &plan_a, now + 100)?;

        assert_consistent(&ab, "A then B")?;
        assert_consistent(&ba, "B then A")?;
        assert_same_state(&ab, &ba, &read_times(now), "A then B vs B then A")?;
        let union: Vec<Reg> = a.iter().chain(&b).cloned().collect();
        let expected = join(&union)?;
        assert_holds_join(&ab, &expected, "A then B")?;
        assert_holds_join(&ba, &expected, "B then A")?;
        // Every write was delivered to one side or the other: I2.
        assert_holds_join(&ab, &join(&r.writes)?, "A then B, all writes")?;
    }

    /// Associativity: (A ∪ B) ∪ C equals A ∪ (B ∪ C), each union built by
    /// merging one store's snapshot into another.
    #[test]
    fn merge_associates(
        h in history_strategy(40),
        membership in prop::collection::vec(1u8..8, 64),
        cfgs in prop::collection::vec(cfg_strategy(), 7),
        plans in prop::collection::vec(plan_strategy(), 3),
    ) {
        let r = run(&h)?;
        // Each register goes to a nonempty subset of {A, B, C}.
        let mut parts: [Vec<Reg>; 3] = Default::default();
        for (i, x) in r.deliveries.iter().enumerate() {
            let m = membership[i % membership.len()];
            for (bit, part) in parts.iter_mut().enumerate() {
                if m & (1 << bit) != 0 {
                    part.push(x.clone());
                }
            }
        }
        let now = r.end;
        let base: Vec<Store> = (0..3).map(|i| fresh(&cfgs[i], 0x4000 + i as u64)).collect();
        for i in 0..3 {
            deliver(&base[i], &parts[i], &plans[i], now)?;
            assert_holds_join(&base[i], &join(&parts[i])?, "part")?;
        }
        let merge_snapshot = |into: &Store, from: &Store, t: u64| -> TestResult {
            let (_, regs) = from.snapshot();
            let n = regs.len();
            assert_clean(&into.merge(regs, t), n)
        };

        // (A ∪ B) ∪ C
        let ab = fresh(&cfgs[3], 0x4003);
        merge_snapshot(&ab, &base[0], now + 1)?;
        merge_snapshot(&ab, &base[1], now + 2)?;
        let ab_expected = join(&[parts[0].clone(), parts[1].clone()].concat())?;
        assert_holds_join(&ab, &ab_expected, "A ∪ B")?;
        let left = fresh(&cfgs[4], 0x4004);
        merge_snapshot(&left, &ab, now + 3)?;
        merge_snapshot(&left, &base[2], now + 4)?;

        // A ∪ (B ∪ C)
        let bc = fresh(&cfgs[5], 0x4005);
        merge_snapshot(&bc, &base[1], now + 1)?;
        merge_snapshot(&bc, &base[2], now + 2)?;
        let right = fresh(&cfgs[6], 0x4006);
        merge_snapshot(&right, &base[0], now + 3)?;
        merge_snapshot(&right, &bc, now + 4)?;

        assert_consistent(&left, "(A ∪ B) ∪ C")?;
        assert_consistent(&right, "A ∪ (B ∪ C)")?;
        assert_same_state(&left, &right, &read_times(now), "(A ∪ B) ∪ C vs A ∪ (B ∪ C)")?;
        let truth = join(&r.writes)?;
        assert_holds_join(&left, &truth, "(A ∪ B) ∪ C")?;
        assert_holds_join(&right, &truth, "A ∪ (B ∪ C)")?;
    }

    /// Idempotence from arbitrary states: a store merging its own contents,
    /// or a subset of another store's contents that it already absorbed,
    /// reports every register stale and changes nothing.
    #[test]
    fn merge_is_idempotent(
        h in history_strategy(40),
        plan in plan_strategy(),
        keep in prop::collection::vec(any::<bool>(), 64),
    ) {
        let r = run(&h)?;
        let now = r.end;
        for (i, s) in r.origins.iter().enumerate() {
            let before = s.snapshot();
            let root = s.root();
            let out = s.merge(before.1.clone(), now + 1);
            prop_assert!(out.changes.is_empty(), "origin {}: self-merge changed {:?}", i, out.changes);
            prop_assert_eq!(out.stale, before.1.len());
            prop_assert_eq!(s.snapshot(), before);
            prop_assert_eq!(s.root(), root);
        }
        // A replica that received a subset, twice over (the second time in
        // the same random grouping): the second round changes nothing.
        let subset: Vec<Reg> =
            r.deliveries.iter().enumerate().filter(|(i, _)| keep[i % keep.len()]).map(|(_, x)| x.clone()).collect();
        let s = fresh(&plan.cfg, 0x5000);
        deliver(&s, &subset, &plan, now)?;
        let before = s.snapshot();
        for batch in schedule(&subset, &plan) {
            let n = batch.len();
            let out = s.merge(batch, now + 10);
            prop_assert!(out.changes.is_empty(), "re-merge changed {:?}", out.changes);
            prop_assert_eq!(out.stale, n);
        }
        prop_assert_eq!(s.snapshot(), before);
        assert_holds_join(&s, &join(&subset)?, "subset replica")?;
    }
}

/// `assert_holds_join` for two joins (maps) rather than a store and a join.
fn assert_holds_join_map(got: &BTreeMap<Bytes, Register>, want: &BTreeMap<Bytes, Register>) -> TestResult {
    prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, g) in got {
        let w = &want[k];
        prop_assert_eq!(g.marker, w.marker, "key {:?}", k);
        prop_assert!(g.val.same_write(&w.val), "key {:?}: {:?} vs {:?}", k, g.val, w.val);
    }
    Ok(())
}

// ---- convergence through anti-entropy sessions ---------------------------

fn member(i: usize) -> MemberId {
    MemberId { name: format!("peer-{i}"), incarnation: Incarnation { started_ms: T0, node: NodeId(0x6000 + i as u64) } }
}

fn named_key(k: usize) -> Bytes {
    Bytes::from(format!("key-{k:02}"))
}

/// The session keyspace: `HOT_KEYS` keys in two groups of three that share a
/// digest bucket (so bucket summaries and exchanges carry several keys),
/// then plain keys.
fn session_keys() -> &'static [Bytes] {
    static KEYS: OnceLock<Vec<Bytes>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut by_bucket: HashMap<usize, Vec<Bytes>> = HashMap::new();
        let mut hot = Vec::new();
        for i in 0.. {
            let k = Bytes::from(format!("hot-{i}"));
            let group = by_bucket.entry(bucket_of(key_hash(&k))).or_default();
            group.push(k);
            if group.len() == 3 {
                hot.append(group);
                if hot.len() == HOT_KEYS {
                    break;
                }
            }
        }
        hot.extend((HOT_KEYS..SESSION_KEYS).map(named_key));
        hot
    })
}

fn session_key(k: usize) -> Bytes {
    session_keys()[k].clone()
}

#[derive(Clone, Debug)]
struct SessionOp {
    at: Index,
    dt: u64,
    key: usize,
    /// `None` deletes; otherwise the value length and TTL.
    put: Option<(usize, Option<u64>)>,
    /// Other replicas the write is also pushed to (bit i: the i-th other).
    push: u8,
}

fn session_op_strategy() -> impl Strategy<Value = SessionOp> {
    let put = prop::option::weighted(0.8, (0usize..64, prop::option::of(60_000u64..600_000)));
    let push = prop_oneof![6 => Just(0u8), 1 => any::<u8>()];
    // Half the writes hit a few hot keys, often in the same millisecond, so
    // that concurrent writes to one key are ordered by the stamp's node.
    let key = prop_oneof![1 => 0..HOT_KEYS, 1 => 0..SESSION_KEYS];
    let dt = prop_oneof![1 => Just(0u64), 1 => 0u64..20];
    (any::<Index>(), dt, key, put, push).prop_map(|(at, dt, key, put, push)| SessionOp { at, dt, key, put, push })
}

/// Mostly `StoreConfig::default()`; sometimes other shard counts, or one
/// shard bounded tightly enough to evict (so stubs travel in sessions too).
fn session_config_strategy() -> impl Strategy<Value = Cfg> {
    prop_oneof![
        4 => Just(Cfg { shards: 64, max_bytes: None, seed: 0 }),
        1 => prop::sample::select(vec![1usize, 8]).prop_map(|shards| Cfg { shards, max_bytes: None, seed: 0 }),
        1 => (1_000usize..3_000, any::<u64>()).prop_map(|(m, seed)| Cfg { shards: 1, max_bytes: Some(m), seed }),
    ]
}

/// Runs one anti-entropy session, `a` initiating, with messages handed across
/// by hand. Both sides must complete, and the pair must end in sync.
fn sync_pair(a: &Replica, b: &Replica, now: u64, batch_bytes: usize) -> Result<Mode, TestCaseError> {
    let mut s = Session::initiate(a, now).with_batch_bytes(batch_bytes);
    let mut r = Session::respond(now).with_batch_bytes(batch_bytes);
    let mut rounds = 0;
    while !(s.is_finished() && r.is_finished()) {
        rounds += 1;
        prop_assert!(rounds < 1_000, "session did not finish: {:?} / {:?}", s.phase(), r.phase());
        let mut moved = false;
        while let Some(m) = s.poll_transmit(a) {
            moved = true;
            r.handle_message(b, m, now).map_err(|e| TestCaseError::fail(format!("responder: {e}")))?;
        }
        while let Some(m) = r.poll_transmit(b) {
            moved = true;
            s.handle_message(a, m, now).map_err(|e| TestCaseError::fail(format!("initiator: {e}")))?;
        }
        prop_assert!(moved, "session stalled: {:?} / {:?}", s.phase(), r.phase());
    }
    prop_assert!(s.is_complete() && r.is_complete(), "session failed: {:?} / {:?}", s.phase(), r.phase());
    let (ss, rs) = (s.stats(), r.stats());
    prop_assert_eq!(ss.mode, rs.mode, "the two sides chose different modes");
    prop_assert_eq!(ss.entries_sent, rs.entries_received);
    prop_assert_eq!(rs.entries_sent, ss.entries_received);
    prop_assert_eq!((ss.refused, rs.refused), (0, 0), "nothing was collected, so nothing may be refused");
    // A completed session leaves the pair holding the same registers: the
    // same keys at the same stamps, where a bounded side may hold the stub
    // of a value (whose share of the digest differs, so roots are compared
    // only between stores without a bound).
    prop_assert_eq!(stamps(a), stamps(b), "registers differ right after a {:?} session", ss.mode);
    if a.store().max_bytes().is_none() && b.store().max_bytes().is_none() {
        prop_assert_eq!(a.store().root(), b.store().root(), "roots differ right after a {:?} session", ss.mode);
    }
    Ok(ss.mode)
}

/// Every key a replica holds, with its stamp.
fn stamps(r: &Replica) -> Vec<(Bytes, Stamp)> {
    r.store().snapshot().1.into_iter().map(|(k, reg)| (k, reg.marker)).collect()
}

fn all_in_sync(rs: &[Replica]) -> bool {
    rs.windows(2).all(|w| stamps(&w[0]) == stamps(&w[1]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// I1 and I2 through the real protocol: replicas that each took some
    /// writes locally (and some pushes) converge by pairwise anti-entropy
    /// sessions alone.
    #[test]
    fn sessions_converge(
        configs in prop::collection::vec(session_config_strategy(), 3..=5),
        writers in 1usize..=5,
        ops in prop::collection::vec(session_op_strategy(), 1..120),
        order in prop::collection::vec(any::<Index>(), 32),
        flips in prop::collection::vec(any::<bool>(), 32),
        batch_bytes in prop::sample::select(vec![64 * 1024, 200, 1]),
    ) {
        let replicas: Vec<Replica> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Replica::new(member(i), c.config(), true).expect("valid config"))
            .collect();
        let n = replicas.len();
        let mut now = T0;
        let mut writes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            now += op.dt;
            // Only the first `writers` replicas take writes: the others start
            // empty (or with pushes only), which makes sessions stream.
            let at = op.at.index(writers.min(n));
            let key = session_key(op.key);
            let w = match op.put {
                Some((len, ttl)) => replicas[at].put(key, value_for(at, i, len), ttl, now),
                None => replicas[at].delete(key, now),
            }
            .map_err(|e| TestCaseError::fail(format!("write refused: {e}")))?;
            prop_assert!(w.applied);
            let reg = (w.key, w.register);
            for (j, other) in (0..n).filter(|&j| j != at).enumerate() {
                if op.push & (1 << j) != 0 {
                    let batch = replicas[at].deltas(vec![reg.clone()], false);
                    let out = replicas[other]
                        .handle_deltas(batch, now)
                        .map_err(|e| TestCaseError::fail(format!("push refused: {e}")))?;
                    assert_clean(&out, 1)?;
                }
            }
            writes.push(reg);
        }
        // Every TTL is at least a minute, far beyond `now`: nothing expires,
        // and `tick` is never called, so nothing is collected.
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect();
        let mut passes = 0;
        let mut k = 0;
        while !all_in_sync(&replicas) {
            prop_assert!(passes < 3, "not in sync after 3 passes over all pairs");
            passes += 1;
            let mut rest = pairs.clone();
            while !rest.is_empty() {
                let (i, j) = rest.remove(order[k % order.len()].index(rest.len()));
                let (i, j) = if flips[k % flips.len()] { (j, i) } else { (i, j) };
                k += 1;
                sync_pair(&replicas[i], &replicas[j], now, batch_bytes)?;
            }
        }
        // Each pair synced directly once, so one pass must be enough.
        prop_assert!(passes <= 1, "took {} passes", passes);

        let truth = join(&writes)?;
        for (i, rep) in replicas.iter().enumerate() {
            let who = format!("replica {i}");
            assert_consistent(rep.store(), &who)?;
            assert_holds_join(rep.store(), &truth, &who)?;
            assert_same_state(replicas[0].store(), rep.store(), &[now], &who)?;
            for (k, reg) in &truth {
                let held = rep.store().register(k).expect("every key written is held");
                if !matches!(held.val, Slot::Evicted { .. }) {
                    prop_assert_eq!(rep.get(k, now), reg.val.visible(now).cloned(), "{}: read of {:?}", who, k);
                }
            }
        }
        // In sync: a further session finds equal roots and moves nothing.
        // (A bounded replica's stubs differ from the values until they are
        // stable and ghosted, which takes timer work this test never does.)
        if replicas.iter().all(|r| r.store().max_bytes().is_none()) {
            for &(i, j) in &pairs {
                prop_assert_eq!(sync_pair(&replicas[i], &replicas[j], now, batch_bytes)?, Mode::InSync);
            }
        }
    }
}

// ---- fixed cases that show the generators reach the interesting paths ---

/// A tightly bounded store evicts into stubs; on a store without a bound,
/// a stub and the value it stands for merge to the value in either order.
#[test]
fn eviction_stub_and_value_converge() {
    let cfg = Cfg { shards: 1, max_bytes: Some(400), seed: 7 };
    let origin = fresh(&cfg, 1);
    let mut writes = Vec::new();
    for (i, k) in KEYS.iter().enumerate() {
        let w = origin.put(Bytes::from_static(k.as_bytes()), value_for(0, i, 40), None, T0 + i as u64).unwrap();
        writes.push((w.key, w.register));
    }
    let stubs = origin.stats().stubs;
    assert!(stubs > 0, "a 400-byte store holding six entries must evict");
    let (_, held) = origin.snapshot();
    let unbounded = Cfg { shards: 64, max_bytes: None, seed: 0 };
    let stubs_first = fresh(&unbounded, 2);
    stubs_first.merge(held.clone(), T0 + 10);
    let out = stubs_first.merge(writes.clone(), T0 + 10);
    assert_eq!(out.stale, writes.len() - stubs, "the values already held are stale");
    assert_eq!(out.changes.len(), stubs, "a value replaces the stub of its own write");
    let values_first = fresh(&unbounded, 3);
    values_first.merge(writes.clone(), T0 + 10);
    let out = values_first.merge(held, T0 + 10);
    assert_eq!(out.stale, writes.len(), "a stub at its value's stamp is stale");
    assert_eq!(stubs_first.stats().stubs, 0);
    assert_eq!(values_first.stats().stubs, 0);
    assert_eq!(stubs_first.root(), values_first.root());
    let check = || -> TestResult {
        assert_same_state(&stubs_first, &values_first, &[T0 + 10], "stub vs value")?;
        assert_same_state(&origin, &values_first, &[T0 + 10], "origin vs value")?;
        assert_holds_join(&stubs_first, &join(&writes)?, "stubs first")
    };
    check().unwrap();
}

/// Overlapping replicas descend the digest tree (rather than streaming) and
/// end in sync, also with tiny `Entries` batches and different shard counts,
/// when both sides hold newer writes to different keys of one bucket.
#[test]
fn session_descends_and_converges() {
    let bucket = |k: usize| bucket_of(key_hash(&session_key(k)));
    assert!((0..3).all(|k| bucket(k) == bucket(0)) && (3..6).all(|k| bucket(k) == bucket(3)));
    for (batch, shards) in [(meshcache::sync::session::DEFAULT_BATCH_BYTES, 64), (1, 8)] {
        let config = StoreConfig { shards: NonZeroUsize::new(shards).unwrap(), ..StoreConfig::default() };
        let a = Replica::new(member(0), config, true).unwrap();
        let b = Replica::new(member(1), StoreConfig::default(), true).unwrap();
        let now = T0 + 1_000;
        for k in 0..40 {
            let w = a.put(session_key(k), Bytes::from("shared"), None, now).unwrap();
            assert_eq!(b.store().merge([(w.key, w.register)], now).changes.len(), 1);
        }
        let t = now + 1;
        a.put(session_key(40), Bytes::from("a only"), None, t).unwrap();
        b.put(session_key(41), Bytes::from("b only"), None, t).unwrap();
        // Newer writes on both sides, to different keys of the same bucket.
        a.put(session_key(0), Bytes::from("a newer"), None, t).unwrap();
        b.put(session_key(1), Bytes::from("b newer"), None, t).unwrap();
        b.delete(session_key(3), t).unwrap();
        a.put(session_key(5), Bytes::from("a newer"), None, t).unwrap();
        // Concurrent writes to one key in one millisecond: the node decides.
        let wa = a.put(session_key(2), Bytes::from("a concurrent"), None, t).unwrap();
        let wb = b.put(session_key(2), Bytes::from("b concurrent"), None, t).unwrap();
        assert_eq!(wa.register.marker.hlc, wb.register.marker.hlc);
        let winner = if wa.register.marker > wb.register.marker { "a concurrent" } else { "b concurrent" };
        assert_ne!(a.store().root(), b.store().root());

        let mode = sync_pair(&a, &b, t, batch).unwrap();
        assert_eq!(mode, Mode::Descend);
        assert_same_state(a.store(), b.store(), &[t], "after descent").unwrap();
        for r in [&a, &b] {
            assert_eq!(r.get(&session_key(40), t), Some(Bytes::from("a only")));
            assert_eq!(r.get(&session_key(41), t), Some(Bytes::from("b only")));
            assert_eq!(r.get(&session_key(0), t), Some(Bytes::from("a newer")));
            assert_eq!(r.get(&session_key(1), t), Some(Bytes::from("b newer")));
            assert_eq!(r.get(&session_key(2), t), Some(Bytes::from(winner)));
            assert_eq!(r.get(&session_key(3), t), None);
            assert_eq!(r.get(&session_key(4), t), Some(Bytes::from("shared")));
            assert_eq!(r.get(&session_key(5), t), Some(Bytes::from("a newer")));
        }
        assert_eq!(sync_pair(&b, &a, t, batch).unwrap(), Mode::InSync);
    }
}
