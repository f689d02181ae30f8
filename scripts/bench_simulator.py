"""Time the simulator on long sequences: the target is Nq = Nk = 2**20, d = 128, 128x128 tiles, causal, < 1 s on one core.

    python scripts/bench_simulator.py
"""

import statistics
import time

from sandbox import Problem, Schedule, simulate
from sandbox import simulate

# (label, schedule, problem): the benchmark is data
CASES = [
    (f"{kind} N=2^20 d=128 Br=Bc=128 causal fp16", Schedule(kind, block_q=128, block_kv=128),
     Problem(batch=1, heads=1, n_q=2**20, n_kv=2**20, head_dim=128, dtype="float16", causal=True))
    for kind in ("standard", "flash1", "flash2")
] + [
    ("flash2 N=2^20 d=128 Br=Bc=16 causal fp16 (65536 blocks a side)", Schedule("flash2", block_q=16, block_kv=16),
     Problem(batch=1, heads=1, n_q=2**20, n_kv=2**20, head_dim=128, dtype="float16", causal=True)),
]
REPEATS = 7


def main():
    print(f"{'case':<70} {'median':>10} {'max':>10}")
    for label, schedule, problem in CASES:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            simulate(schedule, problem)
            times.append(time.perf_counter() - start)
        print(f"{label:<70} {statistics.median(times) * 1e3:>8.2f}ms {max(times) * 1e3:>8.2f}ms")


if __name__ == "__main__":
    main()
