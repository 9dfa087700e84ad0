#!/usr/bin/env python3
"""The minimal counterexamples of the model, replayed against the variants.

    python3 traces.py               both tables: T1-T7 against the timeout family,
                                    A1-D1 against the 'r' family
    python3 traces.py VARIANT...    each variant against the cases of its family
    python3 traces.py --write       rewrite minimal_traces.txt from the cases

A cell lists the violation kinds the replay ends with (S1 resurrection,
F stale read, M mismatch, CH churn, D reads diverge, MEM tombstone budget),
'ok' for none, and '(loss)' when a refusal reply dropped the newest write of
a key everywhere (an allowed loss, never a stale read).  test_model.py holds
the expected tables.  tests/model_traces.rs replays A1-D1 against the Rust
core, where each must end with every invariant intact.
"""
import os
import sys

from model import VARIANTS, replay, kinds_of, fmt_event


def T(N, skew, DA=2, cs=1):
    """A configuration of the timeout family."""
    return dict(N=N, S=max(abs(s) for s in skew), skew=skew, DA=DA, eager=True, conv_seed=cs, length=0)


def R(N, B=4, skew=None, cs=1):
    """A configuration of the 'r' family."""
    skew = skew or [0] * N
    return dict(N=N, S=max(abs(x) for x in skew), skew=skew, DA=2, eager=True, conv_seed=cs, length=0,
                B=B, K=5, crestart='all')


# Events, as Sim.apply reads them: (label, 'put', slot, key, value, ttl), (label, 'del', slot, key),
# (label, 'flush', slot), (_, 'ae', slot, slot), (_, 'dlv', label, slot) delivers the delayed push
# of the write with that label, (_, 'tick'), (_, 'part', group of each slot), (_, 'cut', from, to),
# (_, 'heal'), (_, 'healink', from, to), (_, 'crash', slot), (_, 'restart', slot, seeds).
TIMEOUT_CASES = {
    # A push delayed past a collection brings the collected delete back: no floor filter on pushes.
    'T1 delayed push after GC (transient)': (T(2, [0, 0]), [
        (1, 'del', 1, 0), (7, 'put', 0, 0, 7, None), (2, 'tick'), (3, 'ae', 0, 1), (4, 'dlv', 7, 1)]),
    'T2 delayed push after GC (permanent)': (T(2, [0, 0]), [
        (9, 'put', 1, 0, 9, None), (13, 'del', 1, 0), (3, 'dlv', 13, 0), (4, 'tick'), (5, 'ae', 1, 0),
        (6, 'dlv', 9, 0)]),
    # One side collects, anti-entropy hands the tombstone back, the other collects, and so on.
    'T3 GC ping-pong': (T(2, [0, 0]), [(1, 'del', 0, 0), (2, 'tick')]),
    # A member removed by timeout comes back; only the side that had removed it raises its clear_below.
    'T4 asymmetric stranger rule': (T(2, [0, -3]), [
        (1, 'cut', 1, 0), (2, 'tick'), (3, 'tick'), (4, 'put', 1, 1, 17, None), (5, 'del', 0, 1), (6, 'tick')]),
    # Collection judged by the tombstone's stamp instead of its local arrival, under skew.
    'T5 GC by stamp': (T(3, [0, -1, 1], cs=146416767), [
        (1, 'put', 0, 0, 4, None), (2, 'tick'), (3, 'del', 1, 0), (4, 'ae', 2, 0), (5, 'tick')]),
    # Pushes delayed across a removal by timeout and a one-way handshake.
    'T6 one-directional push handshake': (T(4, [0, 0, 0, 0]), [
        (57, 'del', 2, 0), (75, 'put', 1, 0, 75, None), (3, 'part', (1, 2, 2, 0)), (4, 'cut', 1, 2),
        (5, 'tick'), (6, 'tick'), (7, 'tick'), (8, 'part', (0, 0, 0, 1)), (9, 'dlv', 57, 1), (10, 'dlv', 75, 2)]),
    # No violation, but a loss: a partition longer than the timeout makes the two sides strangers, the
    # symmetric stranger rule raises clear_below to the other side's gc_floor, and k2, a live value
    # older than the one delete collected on the far side, is flushed from the whole mesh.
    'T7 symmetric stranger rule flushes': (T(2, [0, 0]), [
        (1, 'put', 0, 2, 1, None), (2, 'ae', 0, 1), (3, 'part', (0, 1)), (4, 'tick'), (5, 'tick'),
        (6, 'tick'), (7, 'tick'), (8, 'put', 1, 1, 8, None), (9, 'del', 1, 1), (10, 'tick')]),
}

R_CASES = {
    # A: a restarted incarnation writes below a gc_floor (its HLC restarts from the physical clock)
    'A1 new incarnation, same key (F-STALE)': (R(2), [
        (150, 'put', 1, 0, 150, None), (153, 'put', 1, 0, 153, None), (3, 'del', 1, 0), (4, 'tick'), (5, 'ae', 0, 1),
        (6, 'crash', 0), (7, 'restart', 0, ()), (213, 'put', 0, 0, 213, None)]),
    'A2 new incarnation, other key (lost)': (R(2), [
        (45, 'put', 1, 0, 45, None), (46, 'put', 1, 0, 46, None), (3, 'del', 1, 0), (4, 'ae', 1, 0), (5, 'tick'),
        (6, 'ae', 0, 1), (7, 'crash', 1), (8, 'restart', 1, ()), (94, 'put', 1, 3, 94, None)]),
    # B: data of a superseded incarnation reaches a synced member after the sync
    'B1 superseded incarnation leak': (R(3, cs=741550781), [
        (29, 'put', 2, 0, 29, None), (2, 'ae', 1, 2), (3, 'tick'), (4, 'del', 0, 1), (5, 'crash', 2), (6, 'tick'),
        (7, 'restart', 2, ()), (8, 'ae', 0, 2), (9, 'ae', 1, 2), (10, 'crash', 1), (11, 'restart', 1, ())]),
    'B2 superseded leak via push': (R(4, cs=269195828), [
        (79, 'put', 3, 0, 79, None), (2, 'crash', 3), (3, 'restart', 3, ()), (4, 'dlv', 79, 2), (5, 'del', 3, 4),
        (6, 'tick'), (7, 'ae', 0, 3), (8, 'ae', 0, 2), (9, 'crash', 2), (10, 'restart', 2, ()),
        (11, 'ae', 3, 1), (12, 'ae', 2, 3)]),
    # C: a delayed push delivered to a restarted incarnation (gc_floor = -inf there)
    'C0 delayed push to new incarnation (random)': (R(2), [
        (79, 'put', 1, 1, 79, None), (2, 'del', 1, 1), (3, 'tick'), (4, 'ae', 0, 1), (5, 'crash', 0),
        (6, 'restart', 0, ()), (7, 'dlv', 79, 0)]),
    'C1 delayed push to new incarnation': (R(3), [
        (1, 'put', 1, 0, 1, None), (2, 'tick'), (3, 'del', 0, 0), (4, 'ae', 0, 1), (5, 'ae', 0, 2), (6, 'ae', 1, 2),
        (7, 'tick'), (8, 'ae', 0, 1), (9, 'ae', 0, 2), (10, 'ae', 1, 2), (11, 'crash', 2), (12, 'restart', 2, ()),
        (13, 'dlv', 1, 2)]),
    # A3: a bootstrap round without HLC merge: the peer's store is empty after GC, so the HLC stays low
    'A3 boot without HLC merge': (R(2), [
        (1, 'put', 1, 0, 1, None), (2, 'put', 1, 0, 2, None), (12, 'put', 1, 0, 12, None), (3, 'del', 1, 0),
        (4, 'tick'), (5, 'ae', 0, 1), (6, 'tick'), (7, 'ae', 0, 1), (8, 'crash', 0), (9, 'restart', 0, ()),
        (10, 'ae', 0, 1), (11, 'put', 0, 0, 11, None)]),
    # D: a push from an incarnation that the receiver already knows to be superseded
    'D1 push from superseded sender': (R(3), [
        (1, 'put', 2, 1, 1, None), (2, 'tick'), (3, 'del', 0, 0), (4, 'crash', 2), (5, 'restart', 2, ()),
        (6, 'ae', 0, 2), (7, 'tick'), (8, 'ae', 0, 1), (9, 'ae', 0, 2), (10, 'dlv', 1, 1)]),
}

TIMEOUT_VARIANTS = ['a', 'b', 'c', 'a_oneway', 'a_epoch', 'a_floor', 'a_nopush', 'b_floor', 'c_floor', 'a_fix']
R_VARIANTS = ['r', 'r_strict', 'r_reply', 'r_reply_hygiene', 'r_barboot', 'r_hlcboot', 'r_bar', 'r_barid',
              'r_barboot_slot', 'r_barboot_nosd', 'r_barboot_nohlc', 'r_bootid']

# The variant each case is written out under in minimal_traces.txt: one it breaks (T7: one it flushes).
SHOWN_UNDER = {'T1': 'a', 'T2': 'a', 'T3': 'a', 'T4': 'b', 'T5': 'c', 'T6': 'a', 'T7': 'a'}


def cases_for(variant):
    return R_CASES if VARIANTS[variant].get('family') == 'r' else TIMEOUT_CASES


def short(sim):
    ks = kinds_of(sim.violations)
    s = []
    for k, a in (('S1-resurrection', 'S1'), ('F-STALE', 'F'), ('F-MISMATCH', 'M'), ('CHURN', 'CH'),
                 ('I1-READS-DIVERGE', 'D'), ('MEM-BOUND', 'MEM')):
        if k in ks:
            s.append(a)
    t = '+'.join(s) or 'ok'
    if 'final_loss_floorreply' in sim.stats:
        t += '(loss)'
    return t


def table(cases, variants):
    """{case name: {variant: cell}}"""
    return {name: {v: short(replay(cfg, evs, VARIANTS[v])) for v in variants}
            for name, (cfg, evs) in cases.items()}


def print_table(cases, variants):
    w = max(len(v) for v in variants) + 1
    nw = max(len(n) for n in cases) + 1
    print(' ' * nw + ' '.join(v.ljust(w) for v in variants))
    for name, row in table(cases, variants).items():
        print(name.ljust(nw) + ' '.join(row[v].ljust(w) for v in variants))


def write_trace(out, name, cfg, evs, variant):
    out.append('=== %s   cfg N=%d S=%d skew=%s conv_seed=%d' % (name, cfg['N'], cfg['S'], cfg['skew'], cfg['conv_seed']))
    for i, ev in enumerate(evs, 1):
        out.append('  %2d. %s' % (i, fmt_event(ev)))
    out.append('  --- replay under %s (anti-entropy summaries and repeated lines omitted)' % variant)
    sim = replay(cfg, evs, VARIANTS[variant], trace=True)
    seen = set()
    for line in sim.log:
        body = line.split('  ', 1)[1]
        if body.startswith('AE node') or 'VIOLATION' in body or body in seen:
            continue
        seen.add(body)
        out.append('  ' + line)
    out.append('  violations: ' + ('; '.join('%s: %s' % kv for kv in sim.violations) or 'none'))
    if name.startswith('T7'):
        out.append('  stores: ' + ' | '.join('node%d=%s clear_below=%s' % (n.id, sorted(n.store), n.cb)
                                              for n in sim.nodes))
    out.append('')


def minimal_traces():
    out = ['Minimal counterexamples of the protocol model, generated by `python3 traces.py --write`.',
           'Classes A to D broke the \'r\' family without the refusal reply; tests/model_traces.rs',
           'replays them against the Rust core.  T1 to T6 broke the timeout family of designs, and T7',
           'shows the mesh-wide flush of its stranger rule (docs/design.md, "Tombstone collection:',
           'the rules that failed").',
           '']
    for name, (cfg, evs) in R_CASES.items():
        write_trace(out, name, cfg, evs, 'r')
    for name, (cfg, evs) in TIMEOUT_CASES.items():
        write_trace(out, name, cfg, evs, SHOWN_UNDER[name[:2]])
    return '\n'.join(out)


TRACES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'minimal_traces.txt')


def main(args):
    if args == ['--write']:
        with open(TRACES_FILE, 'w') as f:
            f.write(minimal_traces())
        print('wrote', TRACES_FILE)
        return
    if not args:
        print_table(TIMEOUT_CASES, TIMEOUT_VARIANTS)
        print()
        print_table(R_CASES, R_VARIANTS)
        return
    unknown = [v for v in args if v not in VARIANTS]
    if unknown:
        sys.exit('unknown variant(s): %s; known: %s' % (', '.join(unknown), ', '.join(sorted(VARIANTS))))
    tfam = [v for v in args if cases_for(v) is TIMEOUT_CASES]
    rfam = [v for v in args if cases_for(v) is R_CASES]
    if tfam:
        print_table(TIMEOUT_CASES, tfam)
    if tfam and rfam:
        print()
    if rfam:
        print_table(R_CASES, rfam)


if __name__ == '__main__':
    main(sys.argv[1:])
