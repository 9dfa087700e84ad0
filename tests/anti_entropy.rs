//! The anti-entropy session: it converges two stores and moves bytes in
//! proportion to their difference, not to their size.

use crate::common;

use bytes::Bytes;
use common::*;
use meshcache::hlc::NodeId;
use meshcache::sync::Mode;
use meshcache::wire::{HashKey, ListedHash, PackedBucket, PackedStamp, PackedSummary, StampTable, SyncMsg};

fn fill(r: &meshcache::replica::Replica, n: usize, prefix: &str, now: u64) {
    for i in 0..n {
        r.put(Bytes::from(format!("{prefix}{i:07}")), Bytes::from(vec![b'x'; 100]), None, now).unwrap();
    }
}

/// Copies every register of `from` into `to` (a perfect replication).
fn copy_all(from: &meshcache::replica::Replica, to: &meshcache::replica::Replica, now: u64) {
    let (_, all) = from.store().snapshot();
    to.store().merge(all, now);
}

#[test]
fn equal_stores_cost_one_root_exchange() {
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 10_000, "k", T0);
    copy_all(&a, &c, T0);
    let (sa, sc) = sync(&a, &c, T0 + 1).unwrap();
    assert_eq!(sa.mode, Mode::InSync);
    assert_eq!((sa.messages_sent, sc.messages_sent), (1, 1), "one Begin, one Accept");
    assert_eq!(sa.entries_sent + sc.entries_sent, 0);
    // The opening also carries the membership view; with two members it is
    // well under 200 bytes each way.
    assert!(sa.bytes_sent < 200 && sc.bytes_sent < 200, "{sa:?} {sc:?}");
}

#[test]
fn k_differences_cost_bytes_in_proportion_to_k_not_n() {
    for (n, k) in [(20_000usize, 10usize), (20_000, 100), (80_000, 100)] {
        let a = replica("a", 1);
        let c = replica("c", 2);
        fill(&a, n, "k", T0);
        copy_all(&a, &c, T0);
        // k differences: half new on one side, half overwritten on the other.
        for i in 0..k / 2 {
            a.put(Bytes::from(format!("new{i}")), Bytes::from(vec![b'y'; 100]), None, T0 + 1).unwrap();
            c.put(Bytes::from(format!("k{:07}", i * 37)), Bytes::from(vec![b'z'; 100]), None, T0 + 1).unwrap();
        }
        let (sa, sc) = sync(&a, &c, T0 + 2).unwrap();
        assert_eq!(sa.mode, Mode::Descend);
        assert_eq!(a.store().root(), c.store().root(), "converged");
        assert_eq!(a.store().snapshot(), c.store().snapshot());
        let total = sa.bytes_sent + sc.bytes_sent;
        // Per difference: a few tree levels of 16 hashes, the bucket's
        // key@stamp summary, and the register itself (~150 bytes).
        let bound = 1_000 + 1_500 * k as u64;
        assert!(total <= bound, "n={n} k={k}: {total} bytes > {bound}");
        // And far below shipping the store: n registers of >100 bytes.
        assert!(total * 10 < n as u64 * 100, "n={n} k={k}: {total} bytes");
        assert!(sa.entries_sent + sc.entries_sent >= k as u64);
        assert!(sa.entries_sent + sc.entries_sent <= 3 * k as u64, "{sa:?} {sc:?}");
    }
}

#[test]
fn nearly_empty_side_gets_everything_streamed() {
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 5_000, "k", T0);
    c.put(b("mine"), b("v"), None, T0).unwrap();
    let (sa, sc) = sync(&a, &c, T0 + 1).unwrap();
    assert_eq!(sa.mode, Mode::Stream);
    assert_eq!(sc.mode, Mode::Stream);
    assert_eq!(sa.messages_received, sc.messages_sent);
    assert_eq!(a.store().snapshot(), c.store().snapshot());
    assert_eq!(a.store().len(), 5_001);
    // Streamed in batches, not one message per register nor one giant one.
    assert!(sa.messages_sent > 5 && sa.messages_sent < 100, "{sa:?}");
}

#[test]
fn sessions_converge_tombstones_ttl_and_floors() {
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 2_000, "k", T0);
    copy_all(&a, &c, T0);
    a.delete(b("k0000001"), T0 + 1).unwrap();
    c.put(b("k0000002"), b("ttl"), Some(60_000), T0 + 1).unwrap();
    c.flush_all(T0 + 2).unwrap();
    a.put(b("after"), b("v"), None, T0 + 3).unwrap();
    sync(&a, &c, T0 + 4).unwrap();
    assert_eq!(a.store().snapshot(), c.store().snapshot());
    assert_eq!(a.store().len(), 1, "FLUSHALL reached a through the session opening");
    assert_eq!(c.get(b"after", T0 + 4), Some(b("v")));
}

#[test]
fn completion_records_synced_and_ends_bootstrap() {
    let a = replica("a", 1);
    let joiner = replica_with("j", 2, Default::default(), false);
    assert!(joiner.put(b("k"), b("v"), None, T0).unwrap_err().is_retryable());
    a.put(b("k"), b("v"), None, T0).unwrap();
    sync(&joiner, &a, T0 + 5).unwrap();
    assert!(joiner.is_booted());
    assert_eq!(joiner.get(b"k", T0 + 5), Some(b("v")));
    assert_eq!(joiner.members(), vec![(id("a", 1), Some(T0 + 5))]);
    assert_eq!(a.members(), vec![(id("j", 2), Some(T0 + 5))]);
}

#[test]
fn two_unbooted_peers_do_not_boot_each_other() {
    let x = replica_with("x", 1, Default::default(), false);
    let y = replica_with("y", 2, Default::default(), false);
    sync(&x, &y, T0).unwrap();
    assert!(!x.is_booted() && !y.is_booted());
}

#[test]
fn superseded_incarnation_is_rejected_at_the_opening() {
    let a = replica("a", 1);
    let old = replica("b", 2);
    let new = replica("b", 3);
    sync(&new, &a, T0).unwrap();
    let err = sync(&old, &a, T0).unwrap_err();
    assert!(matches!(err, meshcache::sync::SyncError::Rejected(_)), "{err:?}");
    // The old incarnation learns of its successor through gossip and stops.
    let err = sync(&a, &old, T0).unwrap_err();
    assert_eq!(err, meshcache::sync::SyncError::SelfSuperseded);
    assert!(old.is_superseded());
    assert!(old.put(b("k"), b("v"), None, T0).is_err());
}

/// A packed summary of `buckets`, each its gap and its `(node index,
/// delta)` stamps, keys hashed to 1, 2, ...
fn packed_summary(nodes: Vec<NodeId>, base: u64, buckets: &[(u32, Vec<(u32, u64)>)], empty: Vec<u32>) -> SyncMsg {
    let mut hash = 0;
    let buckets = buckets
        .iter()
        .map(|(gap, items)| PackedBucket {
            gap: *gap,
            floor: None,
            items: items
                .iter()
                .map(|(node, delta)| {
                    hash += 1;
                    (ListedHash(hash), PackedStamp { node: *node, delta: *delta })
                })
                .collect(),
            stubs: vec![],
        })
        .collect();
    SyncMsg::PackedSummary(PackedSummary { key: HashKey(1, 2), table: StampTable { nodes, base }, buckets, empty })
}

/// The initiator `s` on `a` once `r` on `c` has accepted its opening.
fn opened(
    a: &meshcache::replica::Replica,
    c: &meshcache::replica::Replica,
    mut s: meshcache::sync::Session,
    mut r: meshcache::sync::Session,
) -> meshcache::sync::Session {
    let begin = s.poll_transmit(a).unwrap();
    r.handle_message(c, begin, T0).unwrap();
    let accept = r.poll_transmit(c).unwrap();
    s.handle_message(a, accept, T0).unwrap();
    s
}

#[test]
fn hostile_session_messages_fail_the_session_without_panic() {
    use meshcache::sync::Session;
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 3_000, "k", T0);
    fill(&c, 3_000, "j", T0);
    let bad = [
        SyncMsg::Level { level: 9, parents: vec![0], hashes: vec![0; 16] },
        SyncMsg::Level { level: 1, parents: vec![0], hashes: vec![0; 3] },
        SyncMsg::Level { level: 2, parents: vec![5, 5], hashes: vec![0; 32] },
        SyncMsg::Level { level: 2, parents: vec![99], hashes: vec![0; 16] },
        SyncMsg::Summary(vec![meshcache::wire::BucketSummary {
            bucket: 70_000,
            floor: None,
            items: vec![],
            stubs: vec![],
        }]),
        SyncMsg::Finish { refused: vec![] },
        SyncMsg::Refusals(vec![(b("k"), meshcache::hlc::Stamp::ZERO)]),
        // Only an answer to Begin.
        SyncMsg::Busy,
        // Packed: a stamp naming a node the table lacks, an HLC past the
        // clock's end, a bucket past u32::MAX, buckets not increasing.
        packed_summary(vec![], 0, &[(1, vec![(0, 0)])], vec![]),
        packed_summary(vec![NodeId(7)], u64::MAX, &[(1, vec![(0, 1)])], vec![]),
        packed_summary(vec![NodeId(7)], 0, &[(u32::MAX, vec![]), (1, vec![])], vec![]),
        packed_summary(vec![NodeId(7)], 0, &[(5, vec![]), (0, vec![])], vec![]),
        packed_summary(vec![NodeId(7)], 0, &[(70_000, vec![(0, 1)])], vec![]),
        // Empty buckets: not increasing, past the last bucket, or the same
        // bucket as a listed one.
        packed_summary(vec![NodeId(7)], 0, &[], vec![3, 0]),
        packed_summary(vec![NodeId(7)], 0, &[], vec![65_000, 1_000]),
        packed_summary(vec![NodeId(7)], 0, &[], vec![1, u32::MAX]),
        packed_summary(vec![NodeId(7)], 0, &[(4, vec![(0, 1)])], vec![4]),
    ];
    for m in bad {
        let mut s = opened(&a, &c, Session::initiate(&a, T0), Session::respond(T0));
        assert!(s.handle_message(&a, m.clone(), T0).is_err(), "{m:?} accepted");
        assert_eq!(s.phase(), meshcache::sync::Phase::Failed);
    }
}

#[test]
fn a_declined_round_exchanges_nothing_and_completes_nothing() {
    use meshcache::sync::{Phase, Session};
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 100, "k", T0);
    fill(&c, 100, "j", T0);
    let (roots_a, roots_c) = (a.store().root(), c.store().root());
    let mut s = Session::initiate(&a, T0);
    let mut r = Session::decline(T0);
    let begin = s.poll_transmit(&a).unwrap();
    r.handle_message(&c, begin, T0).unwrap();
    let busy = r.poll_transmit(&c).unwrap();
    assert_eq!(busy, SyncMsg::Busy);
    assert!(r.poll_transmit(&c).is_none(), "nothing after Busy");
    s.handle_message(&a, busy, T0).unwrap();
    assert!(s.poll_transmit(&a).is_none(), "nothing after Busy");
    for x in [&s, &r] {
        assert!(x.is_finished() && x.is_declined() && !x.is_complete());
        assert_eq!(x.phase(), Phase::Declined);
    }
    assert_eq!((a.store().root(), c.store().root()), (roots_a, roots_c));
    // Asked for again, the round runs.
    sync(&a, &c, T0).unwrap();
    assert_eq!(a.store().root(), c.store().root());
}

#[test]
fn a_round_to_decline_between_sides_in_sync_is_answered_and_complete() {
    use meshcache::sync::{Phase, Session};
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 100, "k", T0);
    sync(&a, &c, T0).unwrap();
    assert_eq!(a.store().root(), c.store().root());
    let mut s = Session::initiate(&a, T0);
    let mut r = Session::decline(T0);
    let begin = s.poll_transmit(&a).unwrap();
    r.handle_message(&c, begin, T0).unwrap();
    let accept = r.poll_transmit(&c).unwrap();
    assert!(matches!(accept, SyncMsg::Accept(_)), "{accept:?}");
    assert!(r.poll_transmit(&c).is_none(), "nothing after Accept");
    s.handle_message(&a, accept, T0).unwrap();
    assert!(s.poll_transmit(&a).is_none(), "nothing after Accept");
    for x in [&s, &r] {
        assert!(x.is_finished() && x.is_complete() && !x.is_declined());
        assert_eq!((x.phase(), x.stats().mode), (Phase::Done, Mode::InSync));
    }
    // One write apart, the round is declined again.
    a.put(b("k-new"), b("v"), None, T0 + 1).unwrap();
    let mut s = Session::initiate(&a, T0 + 2);
    let mut r = Session::decline(T0 + 2);
    let begin = s.poll_transmit(&a).unwrap();
    r.handle_message(&c, begin, T0 + 2).unwrap();
    assert_eq!(r.poll_transmit(&c), Some(SyncMsg::Busy));
    assert!(r.is_declined());
}

/// Drives a session between `a` (initiator) and `c` until one side has sent
/// its first `Summary` (not delivered). Returns both sessions, whether the
/// initiator is the summary side, and that summary.
fn until_first_summary(
    a: &meshcache::replica::Replica,
    c: &meshcache::replica::Replica,
) -> (meshcache::sync::Session, meshcache::sync::Session, bool, meshcache::wire::SyncMsg) {
    use meshcache::sync::Session;
    let mut s = Session::initiate(a, T0);
    let mut r = Session::respond(T0);
    for _ in 0..100 {
        while let Some(m) = s.poll_transmit(a) {
            if matches!(m, SyncMsg::Summary(_) | SyncMsg::PackedSummary(_)) {
                return (s, r, true, m);
            }
            r.handle_message(c, m, T0).unwrap();
        }
        while let Some(m) = r.poll_transmit(c) {
            if matches!(m, SyncMsg::Summary(_) | SyncMsg::PackedSummary(_)) {
                return (s, r, false, m);
            }
            s.handle_message(a, m, T0).unwrap();
        }
    }
    panic!("no summary sent");
}

#[test]
fn wants_past_the_summary_or_not_increasing_are_protocol_errors() {
    use meshcache::sync::{Phase, SyncError};
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 3_000, "k", T0);
    fill(&c, 3_000, "j", T0);
    // Wanted positions are gaps: the first from 0, each later one from the
    // previous position, across `Want` messages and `EndOfEntries`.
    let cases = |n: u64| -> Vec<Vec<SyncMsg>> {
        vec![
            vec![SyncMsg::Want(vec![n])],
            vec![SyncMsg::Want(vec![0, n])],
            vec![SyncMsg::Want(vec![n - 1, 1])],
            vec![SyncMsg::Want(vec![u64::MAX])],
            vec![SyncMsg::Want(vec![1, u64::MAX])],
            vec![SyncMsg::EndOfEntries { want: vec![n] }],
            vec![SyncMsg::Want(vec![3]), SyncMsg::EndOfEntries { want: vec![n - 3] }],
            // Not increasing: a zero gap after the first position, within
            // one message or across two.
            vec![SyncMsg::Want(vec![0, 0])],
            vec![SyncMsg::Want(vec![2, 1, 0])],
            vec![SyncMsg::Want(vec![5]), SyncMsg::Want(vec![0])],
            vec![SyncMsg::Want(vec![5]), SyncMsg::EndOfEntries { want: vec![0] }],
            // Version 9: compared through more than was summarised, or
            // less than before; a wanted position at or past what was
            // compared, or among the keys forgotten once answered for.
            vec![SyncMsg::Compared { through: n + 1, want: vec![] }],
            vec![SyncMsg::Compared { through: 5, want: vec![] }, SyncMsg::Compared { through: 4, want: vec![] }],
            vec![SyncMsg::Compared { through: 5, want: vec![5] }],
            vec![SyncMsg::Compared { through: n, want: vec![0, n] }],
            vec![SyncMsg::Compared { through: 5, want: vec![] }, SyncMsg::Compared { through: 10, want: vec![3] }],
            vec![
                SyncMsg::Compared { through: 5, want: vec![1] },
                SyncMsg::Compared { through: 10, want: vec![u64::MAX] },
            ],
            // Nothing is compared after the peer's last word.
            vec![SyncMsg::EndOfEntries { want: vec![] }, SyncMsg::Compared { through: n, want: vec![] }],
        ]
    };
    let pairs = |m: &SyncMsg| match m {
        SyncMsg::Summary(buckets) => buckets.iter().map(|b| b.items.len()).sum::<usize>(),
        SyncMsg::PackedSummary(p) => p.buckets.iter().map(|b| b.items.len()).sum::<usize>(),
        _ => unreachable!(),
    };
    for i in 0.. {
        let (mut s, mut r, initiator_summarises, summary) = until_first_summary(&a, &c);
        let n = pairs(&summary);
        assert!(n > 10, "a first summary of {n} pairs");
        let Some(msgs) = cases(n as u64).into_iter().nth(i) else { break };
        let (side, store) = if initiator_summarises { (&mut s, &a) } else { (&mut r, &c) };
        let last = msgs.len() - 1;
        for (j, m) in msgs.into_iter().enumerate() {
            let res = side.handle_message(store, m.clone(), T0);
            if j < last {
                res.unwrap();
            } else {
                assert!(matches!(res, Err(SyncError::Protocol(_))), "case {i}: {m:?} gave {res:?}");
            }
        }
        assert_eq!(side.phase(), Phase::Failed);
    }
    // The first and the last position the summary holds are valid wants.
    let (mut s, mut r, initiator_summarises, summary) = until_first_summary(&a, &c);
    let n = pairs(&summary) as u64;
    let (side, store) = if initiator_summarises { (&mut s, &a) } else { (&mut r, &c) };
    side.handle_message(store, SyncMsg::Want(vec![0, n - 1]), T0).unwrap();
    let (mut s, mut r, initiator_summarises, summary) = until_first_summary(&a, &c);
    let n = pairs(&summary) as u64;
    let (side, store) = if initiator_summarises { (&mut s, &a) } else { (&mut r, &c) };
    side.handle_message(store, SyncMsg::Compared { through: 3, want: vec![0, 2] }, T0).unwrap();
    side.handle_message(store, SyncMsg::Compared { through: n, want: vec![1, n - 4] }, T0).unwrap();
    // The side that received the summary sent none: it has no positions for
    // the peer to want.
    let (mut s, mut r, initiator_summarises, summary) = until_first_summary(&a, &c);
    let (other, store) = if initiator_summarises { (&mut r, &c) } else { (&mut s, &a) };
    other.handle_message(store, summary, T0).unwrap();
    let res = other.handle_message(store, SyncMsg::EndOfEntries { want: vec![0] }, T0);
    assert!(matches!(res, Err(SyncError::Protocol(_))), "{res:?}");
    let (mut s, mut r, initiator_summarises, summary) = until_first_summary(&a, &c);
    let (other, store) = if initiator_summarises { (&mut r, &c) } else { (&mut s, &a) };
    other.handle_message(store, summary, T0).unwrap();
    let res = other.handle_message(store, SyncMsg::Compared { through: 0, want: vec![] }, T0);
    assert!(matches!(res, Err(SyncError::Protocol(_))), "{res:?}");
}

#[test]
fn writes_during_a_session_do_not_split_the_mode_decision() {
    use meshcache::sync::Session;
    // Equal stores; the initiator takes a write between its opening and the
    // answer. Both sides must still decide from the two openings alike.
    for extra in [1usize, 5_000] {
        let a = replica("a", 1);
        let c = replica("c", 2);
        fill(&a, 2_000, "k", T0);
        copy_all(&a, &c, T0);
        let mut s = Session::initiate(&a, T0);
        let mut r = Session::respond(T0);
        let begin = s.poll_transmit(&a).unwrap();
        fill(&a, extra, "late", T0 + 1);
        r.handle_message(&c, begin, T0).unwrap();
        for _ in 0..1_000 {
            while let Some(m) = r.poll_transmit(&c) {
                s.handle_message(&a, m, T0).unwrap();
            }
            while let Some(m) = s.poll_transmit(&a) {
                r.handle_message(&c, m, T0).unwrap();
            }
            if s.is_finished() && r.is_finished() {
                break;
            }
        }
        assert!(s.is_complete() && r.is_complete());
        assert_eq!(s.stats().mode, r.stats().mode);
        assert_eq!(s.stats().mode, Mode::InSync);
        // The late writes go in the next round.
        sync(&a, &c, T0 + 2).unwrap();
        assert_eq!(a.store().root(), c.store().root());
    }
}

#[test]
fn no_message_outgrows_the_batch_size_however_much_differs() {
    use meshcache::sync::Session;
    use meshcache::wire::encoded_len;
    // Every bucket differs: each side holds 40,000 keys the other lacks.
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 40_000, "a", T0);
    fill(&c, 40_000, "c", T0);
    const BATCH: usize = 8 * 1024;
    let mut s = Session::initiate(&a, T0).with_batch_bytes(BATCH);
    let mut r = Session::respond(T0).with_batch_bytes(BATCH);
    // Largest Level message, and largest of every other kind.
    let (mut largest_level, mut largest) = (0, 0);
    let mut measure = |m: &meshcache::wire::SyncMsg| {
        let n = encoded_len(m);
        if matches!(m, meshcache::wire::SyncMsg::Level { .. }) {
            largest_level = largest_level.max(n);
        } else {
            largest = largest.max(n);
        }
    };
    for _ in 0..1_000_000 {
        let mut moved = false;
        while let Some(m) = s.poll_transmit(&a) {
            measure(&m);
            r.handle_message(&c, m, T0).unwrap();
            moved = true;
        }
        while let Some(m) = r.poll_transmit(&c) {
            measure(&m);
            s.handle_message(&a, m, T0).unwrap();
            moved = true;
        }
        if (s.is_finished() && r.is_finished()) || !moved {
            break;
        }
    }
    assert!(s.is_complete() && r.is_complete());
    assert_eq!(s.stats().mode, Mode::Descend);
    assert_eq!(a.store().snapshot(), c.store().snapshot());
    assert_eq!(a.store().len(), 80_000);
    // Summaries, wants and entries are cut at about the batch size (a want
    // list overshoots it by at most a byte or two per pair of one summary).
    assert!(largest <= BATCH + 1_024, "largest message {largest} bytes");
    // Level messages are bounded by the tree, not the data: at most 4,096
    // parents of 16 hashes (about 600 KiB with varints), far below a frame.
    assert!(largest_level <= 700 * 1024, "largest Level message {largest_level} bytes");
    let (ss, rs) = (s.stats(), r.stats());
    assert!(ss.messages_sent > 40 && rs.messages_sent > 40, "cut into many frames: {ss:?} {rs:?}");
}

/// What a session between two stores with disjoint halves cost, by kind.
#[derive(Debug, Default)]
struct DenseCost {
    total: u64,
    divergent: u64,
    entries: usize,
    summaries: usize,
    wants: usize,
    levels: usize,
    bucket_levels: usize,
    packed: usize,
    /// The most bytes of summarised keys the summary side held at once,
    /// and how often its summary waited for the peer's answers.
    peak_summarised: u64,
    window_waits: u64,
    compared: usize,
}

/// Disjoint halves of `n` keys each, so that nearly every bucket differs
/// (a healed partition), synced over a link at `version`. Node ids as
/// random as a real process draws.
fn dense_session(n: usize, version: u16, window: Option<usize>) -> DenseCost {
    use meshcache::store::digest::LEVELS;
    use meshcache::sync::Session;
    use meshcache::wire::encoded_len;
    let a = replica("a", 0x9e37_79b9_7f4a_7c15);
    let c = replica("c", 0xd1b5_4a32_d192_ed03);
    for i in 0..n {
        a.put(Bytes::from(format!("a{i:015}")), Bytes::from(vec![b'x'; 100]), None, T0).unwrap();
        c.put(Bytes::from(format!("c{i:015}")), Bytes::from(vec![b'y'; 100]), None, T0).unwrap();
    }
    let mut s = Session::initiate(&a, T0 + 1).with_version(version).with_hash_key(HashKey(3, 4));
    let mut r = Session::respond(T0 + 1).with_version(version).with_hash_key(HashKey(5, 6));
    if let Some(w) = window {
        (s, r) = (s.with_summary_window(w), r.with_summary_window(w));
    }
    let mut cost = DenseCost::default();
    let mut count = |m: &SyncMsg| {
        let len = encoded_len(m);
        match m {
            SyncMsg::Want(_) | SyncMsg::EndOfEntries { .. } => cost.wants += len,
            SyncMsg::Compared { .. } => (cost.wants, cost.compared) = (cost.wants + len, cost.compared + 1),
            SyncMsg::Entries(_) => cost.entries += len,
            SyncMsg::PackedEntries(_) => (cost.entries, cost.packed) = (cost.entries + len, cost.packed + 1),
            SyncMsg::Summary(_) => cost.summaries += len,
            SyncMsg::PackedSummary(_) => (cost.summaries, cost.packed) = (cost.summaries + len, cost.packed + 1),
            SyncMsg::Level { level, .. } => {
                cost.levels += len;
                cost.bucket_levels += usize::from(*level == LEVELS);
            }
            _ => {}
        }
    };
    for _ in 0..100_000 {
        while let Some(m) = s.poll_transmit(&a) {
            count(&m);
            r.handle_message(&c, m, T0 + 1).unwrap();
        }
        while let Some(m) = r.poll_transmit(&c) {
            count(&m);
            s.handle_message(&a, m, T0 + 1).unwrap();
        }
        if s.is_finished() && r.is_finished() {
            break;
        }
    }
    assert!(s.is_complete() && r.is_complete());
    assert_eq!(s.stats().mode, Mode::Descend);
    assert_eq!(a.store().snapshot(), c.store().snapshot());
    let (ss, rs) = (s.stats(), r.stats());
    assert_eq!(ss.entries_sent + rs.entries_sent, 2 * n as u64, "each register crosses once");
    cost.total = ss.bytes_sent + rs.bytes_sent;
    cost.peak_summarised = ss.peak_summarised_bytes.max(rs.peak_summarised_bytes);
    cost.window_waits = ss.summary_window_waits + rs.summary_window_waits;
    cost.divergent = 2 * n as u64 * (16 + 100);
    cost
}

#[test]
fn dense_differences_cost_little_beyond_the_registers() {
    const N: usize = 20_000;
    // A link at version 7: registers with 16-byte stamps, a summary of
    // keys, the tree descended to the buckets. About 1.40x.
    let old = dense_session(N, 7, None);
    assert_eq!(old.packed, 0, "nothing packed on a link at version 7");
    assert!(old.bucket_levels > 0, "{old:?}");
    // Half the registers are wanted by position: about a byte each.
    assert!(old.wants <= N + 100, "{old:?}");
    // A register is its key and value, a 16-byte stamp and a few bytes of
    // lengths and tags.
    assert!(old.entries <= 2 * N * (16 + 100 + 16 + 6), "{old:?}");
    assert!(old.total * 100 <= old.divergent * 145, "{old:?}");
    // Version 8: packed stamps, a summary of hashed keys sent a level above
    // the buckets, since nearly all of them differ.
    let new = dense_session(N, 8, None);
    eprintln!("version 7: {old:?}\nversion 8: {new:?}");
    assert!(new.packed > 0, "{new:?}");
    assert_eq!(new.bucket_levels, 0, "summarised a level above the buckets: {new:?}");
    assert!(new.wants <= N + 100, "{new:?}");
    // A packed stamp: a node index and the distance from the message's
    // lowest HLC, 5 bytes or so here.
    assert!(new.entries <= 2 * N * (16 + 100 + 5 + 6), "{new:?}");
    // A listed key: 8 bytes of hash and its packed stamp.
    assert!(new.summaries <= N * (8 + 6) + 65_536 * 4, "{new:?}");
    assert!(new.total * 100 <= new.divergent * 117, "{new:?}");
    // Version 9 adds a `Compared` a summary chunk, a few bytes each.
    let now = dense_session(N, 9, None);
    eprintln!("version 9: {now:?}");
    assert!(now.wants <= N + 100 + 6 * now.packed, "{now:?}");
    assert!(now.total * 100 <= now.divergent * 117, "{now:?}");
}

/// At version 9 the summary side holds only the keys the peer has not
/// answered for, within its window, however much differs; at 8 it holds
/// every key it summarised until the end. Both converge alike.
#[test]
fn a_summary_side_holds_no_more_than_its_window_of_keys() {
    const N: usize = 20_000;
    const WINDOW: u64 = 64 * 1024;
    // A key is 16 bytes and its offset 8: the summary side lists N keys.
    let whole = dense_session(N, 8, Some(WINDOW as usize));
    assert!(whole.peak_summarised >= N as u64 * 24, "{whole:?}");
    assert_eq!((whole.window_waits, whole.compared), (0, 0), "a link at 8 carries no Compared: {whole:?}");
    let windowed = dense_session(N, 9, Some(WINDOW as usize));
    eprintln!("version 8: {whole:?}\nversion 9: {windowed:?}");
    // The window, and one summary chunk past it (a chunk's pairs are at
    // least 8 bytes on the wire, 24 held).
    assert!(windowed.peak_summarised <= WINDOW + 3 * 64 * 1024, "{windowed:?}");
    assert!(windowed.window_waits > 0 && windowed.compared > 0, "{windowed:?}");
    // The window costs little on the wire: the answers, and an `Entries`
    // cut short when the window fills.
    assert!(windowed.total * 100 <= whole.total * 101, "{windowed:?} {whole:?}");
}

/// A session between a peer at version 8 and one at 7 never carries a
/// packed message, and a packed message on a link at 7 is a protocol
/// violation, as it would be to a peer of that version.
#[test]
fn a_link_at_version_7_carries_no_packed_message() {
    use meshcache::sync::{Session, SyncError};
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&a, 3_000, "k", T0);
    fill(&c, 3_000, "j", T0);
    // Each side's messages, in either role (the helper shows the
    // initiator's): the store that summarises differs between the two.
    for (x, y) in [(&a, &c), (&c, &a)] {
        x.put(b("fresh"), Bytes::from(vec![b'f'; 10]), None, T0 + 1).unwrap();
        let mut seen = Vec::new();
        let (sx, sy) = drive(
            x,
            Session::initiate(x, T0 + 2).with_version(7),
            T0 + 2,
            y,
            Session::respond(T0 + 2).with_version(7),
            T0 + 2,
            |m| seen.push(m.since()),
        )
        .unwrap();
        assert!(!seen.is_empty() && seen.iter().all(|v| *v <= 7), "{seen:?}");
        assert!(sx.entries_sent + sy.entries_sent > 0);
        assert_eq!(x.store().root(), y.store().root());
    }

    let mut s = opened(&a, &c, Session::initiate(&a, T0).with_version(7), Session::respond(T0).with_version(7));
    let well_formed = packed_summary(vec![NodeId(7)], 0, &[(1, vec![(0, 0)])], vec![0, 2]);
    let res = s.handle_message(&a, well_formed, T0);
    assert!(matches!(&res, Err(SyncError::Protocol(why)) if why.contains("version 7")), "{res:?}");
    // Nor does a link at 8 carry `Compared` (version 9).
    let mut s = opened(&a, &c, Session::initiate(&a, T0).with_version(8), Session::respond(T0).with_version(8));
    let res = s.handle_message(&a, SyncMsg::Compared { through: 0, want: vec![] }, T0);
    assert!(matches!(&res, Err(SyncError::Protocol(why)) if why.contains("version 8")), "{res:?}");
}

/// A peer that sends many registers below the other's `gc_floor` gets
/// them all refused, in replies that each fit a small frame, and drops
/// every one.
#[test]
fn a_refusal_list_larger_than_a_frame_is_cut_and_arrives_whole() {
    use meshcache::sync::Session;
    use meshcache::wire::{FrameCodec, Message, SyncMsg};
    const N: usize = 2_000;
    const BATCH: usize = 1_024;
    let codec = FrameCodec::new(4 * BATCH);
    let a = replica("a", 1);
    let c = replica("c", 2);
    fill(&c, N, "old", T0);
    // a, alone, collects a tombstone stamped after every register of c's:
    // its floor is then above them all, and a holds none of their keys.
    a.delete(b("x"), T0 + 1_000).unwrap();
    assert_eq!(a.tick(T0 + 2_000).collected_tombstones, 1);
    assert!(a.store().is_empty());

    let now = T0 + 3_000;
    let mut s = Session::initiate(&c, now).with_batch_bytes(BATCH);
    let mut r = Session::respond(now).with_batch_bytes(BATCH);
    let mut refusal_messages = 0;
    // Every message goes through the small frame, as the network would
    // carry it: one that does not fit fails the test.
    let mut carry = |m: SyncMsg| -> SyncMsg {
        if matches!(m, SyncMsg::Refusals(_)) {
            refusal_messages += 1;
        }
        let frame = codec.encode_to_bytes(&Message::Sync(m)).expect("every message fits the frame");
        match codec.decode_all(&frame).unwrap().pop() {
            Some(Message::Sync(m)) => m,
            other => panic!("decoded {other:?}"),
        }
    };
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(m) = s.poll_transmit(&c) {
            r.handle_message(&a, carry(m), now).unwrap();
            moved = true;
        }
        while let Some(m) = r.poll_transmit(&a) {
            s.handle_message(&c, carry(m), now).unwrap();
            moved = true;
        }
        if (s.is_finished() && r.is_finished()) || !moved {
            break;
        }
    }
    assert!(s.is_complete() && r.is_complete(), "{:?} / {:?}", s.phase(), r.phase());
    assert_eq!(r.stats().refused, N as u64);
    assert_eq!(s.stats().dropped_on_reply, N as u64, "every refusal arrived");
    assert!(c.store().is_empty(), "c dropped every refused register");
    assert!(refusal_messages > 1, "the refusals were cut into several messages");
}

/// A bounded peer that differs from its peer in every bucket queues the
/// registers the peer lacks a summary at a time: what it holds queued stays
/// near its budget (a 64th of its bound) rather than growing to every key
/// it holds, and the session still moves everything.
#[test]
fn a_bounded_side_queues_what_the_peer_lacks_within_its_budget() {
    use meshcache::store::StoreConfig;
    use meshcache::sync::session::{MIN_PENDING_BUDGET, PENDING_BUDGET_SHARE};
    use std::num::NonZeroUsize;
    const N: usize = 20_000;
    const BOUND: usize = 8 << 20;
    let budget = (BOUND / PENDING_BUDGET_SHARE).max(MIN_PENDING_BUDGET) as u64;
    let mut deferring = 0;
    for bounded_initiates in [false, true] {
        let a = replica("a", 1);
        let cfg = StoreConfig { max_bytes: NonZeroUsize::new(BOUND), ..StoreConfig::default() };
        let b = replica_with("b", 2, cfg, true);
        fill(&a, N, "a", T0);
        for i in 0..N {
            b.put(Bytes::from(format!("b{i:07}")), Bytes::from_static(b"v"), None, T0).unwrap();
        }
        assert_eq!(b.store().len(), N, "the bound holds all of b's keys");
        let (sb, sa) = if bounded_initiates { sync(&b, &a, T0 + 1) } else { sync(&a, &b, T0 + 1).map(|(x, y)| (y, x)) }
            .expect("the session completes");
        assert_eq!(sb.entries_sent, N as u64, "b sent every key a lacked: {sb:?}");
        for i in (0..N).step_by(997) {
            assert!(a.get(format!("b{i:07}").as_bytes(), T0 + 1).is_some(), "a holds b{i:07}");
        }
        assert_eq!(sa.summaries_deferred, 0, "the unbounded side has no budget: {sa:?}");
        if sb.peak_queued_bytes > 0 {
            deferring += 1;
            // Each key queued costs its length and a queue slot; all of b's
            // at once would be N of them.
            let all = (N * (8 + 32)) as u64;
            assert!(sb.summaries_deferred > 0, "{sb:?}");
            assert!(
                sb.peak_queued_bytes <= 3 * budget && sb.peak_queued_bytes * 4 < all,
                "b queued {} bytes at most, budget {budget}, all {all}: {sb:?}",
                sb.peak_queued_bytes
            );
        }
    }
    assert_eq!(deferring, 1, "b received the summary in exactly one of the two directions");
}
