#!/usr/bin/env python3
"""The model's own tests (scripts/test runs them):

- every minimal counterexample, replayed against the variants, ends as
  recorded below: the variants it broke still break on it, and the fixes
  still hold;
- minimal_traces.txt is what traces.py writes from the cases;
- a small random run of the rules meshcache builds ('r_reply', and
  'r_reply_hygiene') finds no violation of any kind;
- each mutant, and the timeout family's designs, fail within a few hundred
  random schedules, so the random check has teeth.

    python3 model/test_model.py            (or: cd model && python3 -m unittest -v)
    MODEL_SCHEDULES=2000 python3 model/test_model.py    a larger clean run
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import model_r  # noqa: E402
import traces  # noqa: E402
from model import VARIANTS, gen_and_run, kinds_of  # noqa: E402

SCHEDULES = int(os.environ.get('MODEL_SCHEDULES', '300'))

# Case -> the cell of each variant, as traces.py prints it.
TIMEOUT_EXPECTED = {
    'T1': 'S1 S1 ok S1 ok ok ok ok ok ok',
    'T2': 'S1+F S1+F ok S1+F ok ok ok ok ok ok',
    'T3': 'CH CH ok CH CH CH CH CH ok ok',
    'T4': 'ok S1+F ok ok ok ok ok S1+F ok ok',
    'T5': 'CH CH S1+F CH CH CH CH CH S1+F ok',
    'T6': 'S1 S1 S1 S1 S1 ok ok ok ok ok',
    'T7': 'ok ok ok ok ok ok ok ok ok ok',
}
R_EXPECTED = {
    #      r    r_strict r_reply r_reply_hygiene r_barboot r_hlcboot r_bar r_barid r_barboot_slot
    #      r_barboot_nosd r_barboot_nohlc r_bootid
    'A1': 'F+D F+D ok ok ok ok F+D F+D ok ok ok ok',
    'A2': 'M+D M+D ok(loss) ok ok ok M+D M+D ok ok ok ok',
    'B1': 'M+D M+D ok(loss) ok(loss) ok M+D ok ok ok ok ok M+D',
    'B2': 'M+D M+D ok(loss) ok ok ok ok ok ok ok ok ok',
    'C0': 'F+D F+D ok ok ok F+D ok ok F+D ok ok ok',
    'C1': 'F+D F+D ok ok ok F+D ok ok F+D ok ok ok',
    'A3': 'F+D F+D ok ok ok ok F+D ok ok ok F+D ok',
    'D1': 'M+D M+D ok(loss) ok ok M+D ok ok ok M+D ok ok',
}


class Traces(unittest.TestCase):
    def check_table(self, cases, variants, expected):
        got = traces.table(cases, variants)
        self.assertEqual(sorted(n[:2] for n in got), sorted(expected))
        for name, row in got.items():
            want = dict(zip(variants, expected[name[:2]].split()))
            self.assertEqual(row, want, name)

    def test_timeout_family(self):
        self.check_table(traces.TIMEOUT_CASES, traces.TIMEOUT_VARIANTS, TIMEOUT_EXPECTED)

    def test_r_family(self):
        self.check_table(traces.R_CASES, traces.R_VARIANTS, R_EXPECTED)

    def test_symmetric_stranger_rule_flushes_an_unrelated_value(self):
        cfg, evs = traces.TIMEOUT_CASES['T7 symmetric stranger rule flushes']
        sim = traces.replay(cfg, evs, VARIANTS['a'])
        self.assertEqual(sim.violations, [])
        # k2 was written once, never deleted, and held by both nodes.
        for n in sim.nodes:
            self.assertNotIn(2, n.store)
            self.assertEqual(n.cb, (16, 1))

    def test_minimal_traces_file_is_current(self):
        with open(traces.TRACES_FILE) as f:
            on_disk = f.read()
        self.assertEqual(on_disk, traces.minimal_traces(),
                         'minimal_traces.txt is stale: run python3 model/traces.py --write')


def violations(variant, seeds, hot=False):
    """(seed, kinds) of every schedule in `seeds` that ends with a violation."""
    saved = model_r.HOT
    model_r.HOT = hot
    try:
        out = []
        for s in seeds:
            _, _, v = gen_and_run(s, VARIANTS[variant])
            if v:
                out.append((s, sorted(kinds_of(v))))
        return out
    finally:
        model_r.HOT = saved


def first_violation(variant, budget=300):
    for s in range(budget):
        _, _, v = gen_and_run(s, VARIANTS[variant])
        if v:
            return s, sorted(kinds_of(v))
    return None


class Random(unittest.TestCase):
    def test_r_reply_keeps_every_invariant(self):
        self.assertEqual(violations('r_reply', range(SCHEDULES)), [])

    def test_r_reply_keeps_every_invariant_restart_heavy(self):
        self.assertEqual(violations('r_reply', range(SCHEDULES // 3), hot=True), [])

    def test_r_reply_hygiene_keeps_every_invariant(self):
        self.assertEqual(violations('r_reply_hygiene', range(SCHEDULES)), [])

    def test_mutants_and_timeout_designs_are_caught(self):
        for variant in ['mut_r_nofilter', 'mut_r_aeonly', 'mut_r_timeout', 'mut_r_gcskip',
                        'mut_r_nocompact', 'mut_r_emptymem', 'a', 'b', 'c']:
            with self.subTest(variant=variant):
                self.assertIsNotNone(first_violation(variant), '%s passed 300 schedules' % variant)


if __name__ == '__main__':
    unittest.main()
