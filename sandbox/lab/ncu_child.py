"""The ncu check's profiled child: runs each config's kernels (and the calibration probes) once, inside
``cuProfilerStart``/``cuProfilerStop``, and appends one manifest line per measured item.

The parent (``sandbox.lab.ncu``) starts it under Nsight Compute as

    ncu ... python -m sandbox.lab.ncu_child --manifest PATH --batch B ... --specs SPEC...

with the model's settings and the configs as specs (``sandbox.lab.ncu_specs``). With
``--profile-from-start off`` ncu profiles only the kernels launched inside the brackets.
"""

import argparse
import json
import sys
import time

import numpy as np
from numba import cuda

from kernels.l2probe import rewrite, write_spin
from kernels.launch import run
from sandbox.lab import info
from sandbox.lab.ncu_specs import PROBE_THREADS, Probe, launches, make_problem, make_schedule, parse_spec
from sandbox.vocabulary.dtypes import SUPPORTED, storage_dtype
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import ensure_backend

#: The builds the check can measure: the plain kernels (whose counters the simulator mirrors) or a fast build.
BUILDS = ("plain", "fast")
#: This module, as `python -m` runs it.
MODULE = "sandbox.lab.ncu_child"


def child_argv(specs, settings, manifest_path):
    """This module's command line for ``specs`` (each item's ``spec()``), with the model's ``settings``."""
    return [sys.executable, "-m", MODULE, "--manifest", manifest_path,
            "--batch", str(settings.batch), "--heads", str(settings.heads), "--dtype", settings.dtype,
            "--block-q", str(settings.block_q), "--block-kv", str(settings.block_kv),
            "--thread-q", str(settings.thread_q), "--thread-kv", str(settings.thread_kv), "--seed", str(settings.seed),
            "--kv-splits", str(settings.kv_splits), "--build", settings.build, "--specs", *[c.spec() for c in specs]]


def parse_args(argv=None):
    """The child's arguments (:func:`child_argv` writes them)."""
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--dtype", choices=SUPPORTED, required=True)
    for name in ("--block-q", "--block-kv", "--thread-q", "--thread-kv", "--kv-splits"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build", choices=BUILDS, default="plain")
    p.add_argument("--specs", nargs="*", default=[])
    return p.parse_args(argv)


def main(argv=None):
    """Run each spec's kernels once inside cuProfilerStart/Stop; append one manifest line per spec.

    Returns:
        0, or 3 without a GPU (Numba's CUDA simulator cannot be profiled).
    """
    args = parse_args(argv)
    if ensure_backend() != "gpu":
        print("ncu check child: no CUDA GPU (Numba's CUDA simulator cannot be profiled)", file=sys.stderr)
        return 3
    env = {k: str(v) for k, v in info.environment().items()}
    rng = np.random.default_rng(args.seed)
    fast = args.build == "fast"
    with open(args.manifest, "a") as manifest:
        manifest.write(json.dumps({"environment": env}) + "\n")
        manifest.flush()
        for cfg in [parse_spec(s) for s in args.specs]:
            if isinstance(cfg, Probe):
                run_probe(cfg, manifest)
                continue
            schedule, problem = make_schedule(cfg.kind, args), make_problem(cfg, args)

            def device_inputs(p):
                shape = (p.batch, p.heads, p.n_q, p.head_dim)
                host = [rng.standard_normal(shape, dtype=np.float32).astype(p.dtype) for _ in range(3)]
                return [cuda.to_device(x.view(storage_dtype(x.dtype))) for x in host]

            # -- compile: a small problem with the same (schedule, d, dtype, causal), not profiled
            small = Problem(1, 1, 2 * args.block_q, 2 * args.block_kv, cfg.d, dtype=args.dtype, causal=cfg.causal)
            run(schedule, small, *device_inputs(small), fast=fast)
            q, k, v = device_inputs(problem)
            cuda.synchronize()
            # -- the measured call: the only kernels ncu profiles (--profile-from-start off)
            start = time.perf_counter()
            cuda.profile_start()
            out, lse = run(schedule, problem, q, k, v, fast=fast)[:2]
            cuda.synchronize()
            cuda.profile_stop()
            seconds = time.perf_counter() - start
            phases = [p for p, _, _ in launches(cfg.kind)]
            manifest.write(json.dumps({"spec": cfg.spec(), "phases": phases, "kernels": len(phases),
                                       "wall_s": seconds, "schedule": schedule.describe(), "build": args.build}) + "\n")
            manifest.flush()
            print(f"measured {cfg.label()} ({len(phases)} kernel(s), {seconds:.2f} s under ncu)", flush=True)
            del out, lse, q, k, v
            try:
                cuda.current_context().deallocations.clear()
            except Exception:  # numba internals: freeing early is only an optimization
                pass
    return 0


def run_probe(probe, manifest):
    """One calibration probe (kernels/l2probe.py), compiled outside and run inside the profiled range."""
    sink = cuda.to_device(np.zeros(1, np.float32))
    buf = cuda.to_device(np.zeros(probe.buffer_elements(), np.float32))
    blocks = probe.grid()[0]
    if probe.name == "rewrite":
        rewrite[blocks, PROBE_THREADS](buf, 1)  # compile (same types), not profiled
        call = lambda: rewrite[blocks, PROBE_THREADS](buf, probe.arg)  # noqa: E731
    else:
        spin = probe.arg if probe.name == "spin" else 0
        write_spin[blocks, PROBE_THREADS](buf, np.float32(1), 1, sink)
        call = lambda: write_spin[blocks, PROBE_THREADS](buf, np.float32(2), spin, sink)  # noqa: E731
    cuda.synchronize()
    start = time.perf_counter()
    cuda.profile_start()
    call()
    cuda.synchronize()
    cuda.profile_stop()
    seconds = time.perf_counter() - start
    manifest.write(json.dumps({"spec": probe.spec(), "phases": ["probe"], "kernels": 1, "wall_s": seconds}) + "\n")
    manifest.flush()
    print(f"measured {probe.label()} ({seconds:.2f} s under ncu)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
