"""fp32 vs fp16 vs bf16, same schedule, interleaved rounds: run() each waited for (the bench's way) and back to back (kernel throughput). argv: d:br:bc:tq:tkv N rounds"""
import statistics, sys
import numpy as np
from numba import cuda
from sandbox import Problem, Schedule
from sandbox.bench import time_calls
from kernels.launch import _to_device, run
d, br, bc, tq, tkv = map(int, sys.argv[1].split(":")); n = int(sys.argv[2]); rounds = int(sys.argv[3])
s = Schedule("flash2", block_q=br, block_kv=bc, thread_q=tq, thread_kv=tkv)
rng = np.random.default_rng(0)
calls = {}
for dt in ("float32", "float16", "bfloat16"):
    p = Problem(2, 16, n, n, d, dtype=dt)
    sets = [tuple(_to_device([rng.standard_normal((2, 16, n, d)).astype(p.dtype) for _ in range(3)], "qkv")) for _ in range(2)]
    calls[dt] = (p, [lambda p=p, x=x: run(s, p, *x) for x in sets])
    calls[dt][1][0](); cuda.synchronize()
for r in range(rounds):
    line = []
    for dt, (p, c) in calls.items():
        waited = statistics.median(time_calls(c, 10, warmup=2))
        a, b = cuda.event(), cuda.event(); a.record()
        for i in range(10): c[i % 2]()
        b.record(); b.synchronize(); btb = a.elapsed_time(b) / 10
        line.append(f"{dt} {waited:.3f}/{btb:.3f}")
    print(f"d={d} N={n} round {r}: " + " | ".join(line) + "  (ms: each waited for / back to back)", flush=True)
