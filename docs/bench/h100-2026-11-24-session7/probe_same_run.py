"""Same-run: flash2 fast (full and causal) vs torch SDPA efficient (full and causal). argv: N:d:br:bc:tq:tkv[:dtype] ..."""
import statistics, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from sandbox import Problem, Schedule
from sandbox.bench import time_attention
TD = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

def sdpa_ms(n, d, dtype, causal, reps=10):
    xs = [[torch.randn(2, 16, n, d, device="cuda", dtype=dtype) for _ in range(3)] for _ in range(2)]
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        for i in range(3):
            F.scaled_dot_product_attention(*xs[i % 2], is_causal=causal)
        torch.cuda.synchronize()
        for i, (a, b) in enumerate(ev):
            a.record(); F.scaled_dot_product_attention(*xs[i % 2], is_causal=causal); b.record()
        torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)

def check(s, d, dt):
    from sandbox import reference_attention
    from sandbox.lab import attention
    from tests.tolerances import tolerances
    from tests.strategies import make_inputs
    for causal in (False, True):
        pr = Problem(1, 2, 777, 777, d, dtype=dt, causal=causal)
        q, k, v = make_inputs(pr, 7, 4.0)
        out, lse = attention(q, k, v, schedule=s, causal=causal, return_lse=True, fast=True)
        ro, rl = reference_attention(q, k, v, causal=causal, return_lse=True)
        ao, al = tolerances(q, k, v, ro, rl, causal, pr.scale, pr.dtype)
        eo = np.abs(out.astype(np.float64) - ro).max(); el = np.abs(lse - rl).max()
        print(f"   check d={d} {dt} causal={causal}: err {eo:.2e} (atol {ao:.2e}) lse {el:.2e} (atol {al:.2e}) {'OK' if eo <= ao and el <= al else 'FAIL'}", flush=True)

modes = [m for m in ("full", "causal") if m in sys.argv[1]]
for spec in sys.argv[2:]:
    n, d, br, bc, tq, tkv = map(int, spec.split(":")[:6])
    dt = spec.split(":")[6] if spec.count(":") > 5 else "float32"
    fl = 4 * 2 * 16 * n * n * d
    s = Schedule("flash2", block_q=br, block_kv=bc, thread_q=tq, thread_kv=tkv)
    res = {}
    check(s, d, dt)
    for mode in modes:
        t0 = time.time()
        c = mode == "causal"
        try:
            ms = time_attention(s, Problem(2, 16, n, n, d, dtype=dt, causal=c), repeats=10)
        except Exception as e:
            print(spec, mode, "ERROR", type(e).__name__, str(e)[:300], flush=True); continue
        r = sdpa_ms(n, d, torch.float32, c)
        res[mode] = ms
        print(f"N={n} d={d} {br}x{bc} {tq}x{tkv} {dt} {mode}: ours {ms:.3f} ms {fl/ms/1e9:.1f} TF/s(full-equiv) | SDPA eff fp32 {r:.3f} ms | ratio {r/ms:.3f}  ({time.time()-t0:.0f}s)", flush=True)
    if len(res) == 2:
        print(f"   causal speed-up {res['full']/res['causal']:.3f}x", flush=True)
