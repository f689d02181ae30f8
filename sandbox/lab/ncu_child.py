"""The ncu check's profiled child: runs each config's kernels (and the calibration probes) once, inside
``cuProfilerStart``/``cuProfilerStop``, and appends one manifest line per measured item. A config
runs its build's kernels (``sandbox.lab.ncu_specs``: the forward through ``kernels.launch.run``, the
backward through ``kernels.launch.run_backward``), under its mask where it names one (``mask=``, the
Mask built from the spec's mask spec); :func:`run_config` is the same run without a profiler (the
tests run it under Numba's CUDA simulator).

The parent (``sandbox.lab.ncu``) starts it under Nsight Compute as

    ncu ... python -m sandbox.lab.ncu_child --manifest PATH --batch B ... --specs SPEC...

with the model's settings and the configs as specs (``sandbox.lab.ncu_specs``). With
``--profile-from-start off`` ncu profiles only the kernels launched inside the brackets.
"""

import argparse
import contextlib
import functools
import json
import sys
import time

import numpy as np
from numba import cuda

from kernels.l2probe import rewrite, write_spin
from kernels.launch import run, run_backward
from sandbox.lab import info
from sandbox.lab.ncu_specs import (PLAIN, PROBE_THREADS, BuildUnavailable, Probe, launches, make_mask, make_problem,
                                   make_schedule, parse_spec, resolve_build)
from sandbox.vocabulary.dtypes import SUPPORTED, storage_dtype
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import ensure_backend

#: This module, as `python -m` runs it.
MODULE = "sandbox.lab.ncu_child"


def child_argv(specs, settings, manifest_path):
    """This module's command line for ``specs`` (each item's ``spec()``), with the model's ``settings``."""
    return [sys.executable, "-m", MODULE, "--manifest", manifest_path,
            "--batch", str(settings.batch), "--heads", str(settings.heads), "--dtype", settings.dtype,
            "--block-q", str(settings.block_q), "--block-kv", str(settings.block_kv),
            "--thread-q", str(settings.thread_q), "--thread-kv", str(settings.thread_kv), "--seed", str(settings.seed),
            "--kv-splits", str(settings.kv_splits), "--specs", *[c.spec() for c in specs]]


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
    p.add_argument("--specs", nargs="*", default=[])
    return p.parse_args(argv)


@contextlib.contextmanager
def profiled(took=None):
    """The measured call: with ``--profile-from-start off`` the only kernels ncu profiles. Appends the
    seconds it took (under ncu: every replay) to the list ``took``."""
    start = time.perf_counter()
    cuda.profile_start()
    try:
        yield
    finally:
        cuda.synchronize()
        cuda.profile_stop()
        if took is not None:
            took.append(time.perf_counter() - start)


def device_inputs(problem, rng, count):
    """``count`` random (B, H, N, d) device arrays in the problem's dtype (Nq = Nk)."""
    shape = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    host = [rng.standard_normal(shape, dtype=np.float32).astype(problem.dtype) for _ in range(count)]
    return [cuda.to_device(x.view(storage_dtype(x.dtype))) for x in host]


def run_config(cfg, settings, rng, measured=contextlib.nullcontext):
    """Run one config's kernels: first on a small problem of the same (schedule, d, dtype, causal, mask),
    which compiles them (``kernels.launch.build`` caches on exactly that, the mask by object: both runs
    take the one :func:`sandbox.lab.ncu_specs.make_mask` gives), then on the config's problem, inside
    ``measured()`` (:func:`profiled` in the check). A backward config runs the plain forward (under the
    same mask) first, outside.

    Returns:
        (device arrays, the kernels.builds.Build that ran): the forward's (O, L), the backward's (dQ, dK, dV).

    Raises:
        BuildUnavailable: the config's build is not there to run.
    """
    schedule, problem, mask = make_schedule(cfg, settings), make_problem(cfg, settings), make_mask(cfg, settings)
    chosen = resolve_build(cfg, schedule, mask)
    m = 2 * max(schedule.block_q, schedule.block_kv)  # Nq = Nk, as device_inputs makes them
    small = Problem(1, 1, m, m, cfg.d, dtype=problem.dtype, causal=cfg.causal)
    step = _backward if cfg.backward else _forward
    step(schedule, small, chosen, mask, rng, contextlib.nullcontext)
    return step(schedule, problem, chosen, mask, rng, measured), chosen


def _forward(schedule, problem, chosen, mask, rng, measured):
    q, k, v = device_inputs(problem, rng, 3)
    cuda.synchronize()
    with measured():
        out, lse = run(schedule, problem, q, k, v, mask=mask, chosen=chosen)[:2]
    return out, lse


def _backward(schedule, problem, chosen, mask, rng, measured):
    q, k, v, dout = device_inputs(problem, rng, 4)
    out, lse = run(schedule, problem, q, k, v, mask=mask, fast=False)[:2]  # O and L: the plain forward, not measured
    # a fast backward build: kernels/builds.py's choice, its dQ by the dq kernel (the simulator's HBM
    # tiles; the deterministic mode's dQ by atomics in order reads and writes dQ through L2 instead)
    extra = {} if chosen.name == PLAIN else {"chosen": chosen, "dq_kernel": True}
    cuda.synchronize()
    with measured():
        dq, dk, dv = run_backward(schedule, problem, q, k, v, out, lse, dout, mask=mask, **extra)[:3]
    return dq, dk, dv


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
    with open(args.manifest, "a") as manifest:
        manifest.write(json.dumps({"environment": env}) + "\n")
        manifest.flush()
        for cfg in [parse_spec(s) for s in args.specs]:
            if isinstance(cfg, Probe):
                run_probe(cfg, manifest)
                continue
            took = []
            try:
                arrays, chosen = run_config(cfg, args, rng, functools.partial(profiled, took))
            except BuildUnavailable as e:  # (the parent sends none of these; a hand-made spec may)
                manifest.write(json.dumps({"spec": cfg.spec(), "skipped": str(e), "kernels": 0}) + "\n")
                print(f"skipped {cfg.label()}: {e}", flush=True)
                continue
            seconds = took[0]
            phases = [p for p, _, _ in launches(cfg, args)]
            manifest.write(json.dumps({"spec": cfg.spec(), "phases": phases, "kernels": len(phases),
                                       "wall_s": seconds, "schedule": make_schedule(cfg, args).describe(),
                                       "build": chosen.name}) + "\n")
            manifest.flush()
            print(f"measured {cfg.label()} ({len(phases)} kernel(s), {seconds:.2f} s under ncu)", flush=True)
            del arrays
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
    took = []
    with profiled(took):
        call()
    seconds = took[0]
    manifest.write(json.dumps({"spec": probe.spec(), "phases": ["probe"], "kernels": 1, "wall_s": seconds}) + "\n")
    manifest.flush()
    print(f"measured {probe.label()} ({seconds:.2f} s under ncu)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
