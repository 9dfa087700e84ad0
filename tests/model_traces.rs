//! The minimal counterexamples A1 to D1 of the protocol model
//! (`model/minimal_traces.txt`, `model/traces.py`), replayed against the
//! real core. Each broke a simpler design; each must end with every
//! invariant intact here (see `sim/mod.rs` for the checker).

use crate::sim;

use sim::{Cfg, Ev, Sim, TICK_MS};
use Ev::*;

/// Runs a trace. The model's integer clock let a restarted node stamp below
/// a tombstone issued a moment earlier; with millisecond clocks that takes a
/// lagging clock, so the slots that restart run `LAG` ms behind the rest.
fn run(name: &str, n: usize, lagging: &[usize], events: &[Ev]) {
    let cfg = Cfg {
        n,
        keys: 5,
        skew: (0..n).map(|s| if lagging.contains(&s) { -LAG } else { 0 }).collect(),
        eager: true,
        max_tombstones: 3,
        restart_at_end: 2,
        conv_seed: 1,
        max_bytes: vec![None; n],
        bug: None,
    };
    let mut s = Sim::new(cfg, true);
    for ev in events {
        s.apply(ev);
    }
    s.converge();
    assert!(s.violations.is_empty(), "{name}: {:#?}\n{}", s.violations, s.trace.unwrap_or_default());
}

fn put(slot: usize, key: u8) -> Ev {
    Put { slot, key, ttl_ms: None }
}

const TICK: Ev = Tick(TICK_MS);
/// Within the default 500 ms `max_offset`, so no clock is refused.
const LAG: i64 = 300;

#[test]
fn a1_new_incarnation_writes_same_key_below_floor() {
    run(
        "A1",
        2,
        &[0],
        &[
            put(1, 0),
            put(1, 0),
            Del { slot: 1, key: 0 },
            TICK,
            Ae { a: 0, b: 1 },
            Crash { slot: 0 },
            Restart { slot: 0, seeded: false },
            put(0, 0),
        ],
    );
}

#[test]
fn a2_new_incarnation_writes_other_key_below_floor() {
    run(
        "A2",
        2,
        &[1],
        &[
            put(1, 0),
            put(1, 0),
            Del { slot: 1, key: 0 },
            Ae { a: 1, b: 0 },
            TICK,
            Ae { a: 0, b: 1 },
            Crash { slot: 1 },
            Restart { slot: 1, seeded: false },
            put(1, 3),
        ],
    );
}

#[test]
fn a3_restart_without_clock_merge() {
    run(
        "A3",
        2,
        &[0],
        &[
            put(1, 0),
            put(1, 0),
            put(1, 0),
            Del { slot: 1, key: 0 },
            TICK,
            Ae { a: 0, b: 1 },
            TICK,
            Ae { a: 0, b: 1 },
            Crash { slot: 0 },
            Restart { slot: 0, seeded: false },
            Ae { a: 0, b: 1 },
            put(0, 0),
        ],
    );
}

#[test]
fn b1_superseded_incarnation_leaks_through_third_node() {
    run(
        "B1",
        3,
        &[1, 2],
        &[
            put(2, 0),
            Ae { a: 1, b: 2 },
            TICK,
            Del { slot: 0, key: 1 },
            Crash { slot: 2 },
            TICK,
            Restart { slot: 2, seeded: false },
            Ae { a: 0, b: 2 },
            Ae { a: 1, b: 2 },
            Crash { slot: 1 },
            Restart { slot: 1, seeded: false },
        ],
    );
}

#[test]
fn b2_superseded_incarnation_leaks_through_push() {
    run(
        "B2",
        4,
        &[2, 3],
        &[
            put(3, 0),
            Crash { slot: 3 },
            Restart { slot: 3, seeded: false },
            DeliverLabel { label: 1, to: 2 },
            Del { slot: 3, key: 4 },
            TICK,
            Ae { a: 0, b: 3 },
            Ae { a: 0, b: 2 },
            Crash { slot: 2 },
            Restart { slot: 2, seeded: false },
            Ae { a: 3, b: 1 },
            Ae { a: 2, b: 3 },
        ],
    );
}

#[test]
fn c0_delayed_push_reaches_new_incarnation() {
    run(
        "C0",
        2,
        &[0],
        &[
            put(1, 1),
            Del { slot: 1, key: 1 },
            TICK,
            Ae { a: 0, b: 1 },
            Crash { slot: 0 },
            Restart { slot: 0, seeded: false },
            DeliverLabel { label: 1, to: 0 },
        ],
    );
}

#[test]
fn c1_delayed_push_reaches_new_incarnation_of_three() {
    run(
        "C1",
        3,
        &[2],
        &[
            put(1, 0),
            TICK,
            Del { slot: 0, key: 0 },
            Ae { a: 0, b: 1 },
            Ae { a: 0, b: 2 },
            Ae { a: 1, b: 2 },
            TICK,
            Ae { a: 0, b: 1 },
            Ae { a: 0, b: 2 },
            Ae { a: 1, b: 2 },
            Crash { slot: 2 },
            Restart { slot: 2, seeded: false },
            DeliverLabel { label: 1, to: 2 },
        ],
    );
}

#[test]
fn d1_push_from_superseded_sender() {
    run(
        "D1",
        3,
        &[2],
        &[
            put(2, 1),
            TICK,
            Del { slot: 0, key: 0 },
            Crash { slot: 2 },
            Restart { slot: 2, seeded: false },
            Ae { a: 0, b: 2 },
            TICK,
            Ae { a: 0, b: 1 },
            Ae { a: 0, b: 2 },
            DeliverLabel { label: 1, to: 1 },
        ],
    );
}
