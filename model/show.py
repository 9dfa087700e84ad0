#!/usr/bin/env python3
"""Replays one random schedule of a variant and prints its events and trace.

    python3 show.py VARIANT SEED              the schedule as run.py generated it
    python3 show.py VARIANT SEED --shrink     shrunk to a minimal schedule first
                                              (for the first violation kind found)

Run it with the same STRESS and HOT settings as the run.py that listed the
seed, since they change the schedule a seed generates.  A shrunk schedule
can be added to traces.py as a case.
"""
import sys

import run
from model import VARIANTS, gen_and_run, replay, kinds_of, shrink, fmt_event


def main(args):
    if len(args) not in (2, 3) or (len(args) == 3 and args[2] != '--shrink') or args[0] not in VARIANTS:
        sys.exit(__doc__)
    var = VARIANTS[args[0]]
    seed = int(args[1])
    run.apply_env()
    cfg, events, viols = gen_and_run(seed, var)
    if len(args) == 3:
        if not viols:
            sys.exit('seed %d ends with no violation under %s: nothing to shrink' % (seed, args[0]))
        kind = viols[0][0]
        cfg, events = shrink(cfg, events, var, kind)
        print('shrunk for %s' % kind)
    print('cfg ' + ' '.join('%s=%s' % kv for kv in sorted(cfg.items())))
    for i, ev in enumerate(events, 1):
        print('  %3d. %s    %r' % (i, fmt_event(ev), ev))
    sim = replay(cfg, events, var, trace=True)
    print('\n'.join(sim.log))
    print('violations: %s' % (sorted(kinds_of(sim.violations)) or 'none'))


if __name__ == '__main__':
    main(sys.argv[1:])
