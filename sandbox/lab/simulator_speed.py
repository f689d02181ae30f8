"""How fast the simulator counts long sequences: the target is Nq = Nk = 2**20, d = 128, 128x128 tiles,
causal, under 1 s on one core (``python scripts/bench_simulator.py``)."""

import statistics
import sys
import time

from sandbox.lab.sweep import PAPER_KINDS
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import Schedule
from simulator.entry import simulate

#: The problem every case counts: one head of Nq = Nk = 2**20, d = 128, fp16, causal.
LONG = Problem(batch=1, heads=1, n_q=2**20, n_kv=2**20, head_dim=128, dtype="float16", causal=True)
#: (label, schedule, problem): the paper's kinds on 128x128 tiles, and flash2 on 16x16 (65536 blocks a side).
CASES = [
    (f"{kind} N=2^20 d=128 Br=Bc=128 causal fp16", Schedule(kind, block_q=128, block_kv=128), LONG)
    for kind in PAPER_KINDS
] + [
    ("flash2 N=2^20 d=128 Br=Bc=16 causal fp16 (65536 blocks a side)", Schedule("flash2", block_q=16, block_kv=16),
     LONG),
]
REPEATS = 7


def run(cases=CASES, repeats=REPEATS, out=sys.stdout):
    """Time ``simulate`` on each case ``repeats`` times; print the median and the worst; return {label: [seconds]}."""
    print(f"{'case':<70} {'median':>10} {'max':>10}", file=out)
    times = {}
    for label, schedule, problem in cases:
        times[label] = []
        for _ in range(repeats):
            start = time.perf_counter()
            simulate(schedule, problem)
            times[label].append(time.perf_counter() - start)
        print(f"{label:<70} {statistics.median(times[label]) * 1e3:>8.2f}ms {max(times[label]) * 1e3:>8.2f}ms",
              file=out)
    return times
