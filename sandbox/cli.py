"""Command line: thin over library functions; it parses, calls, prints. Bad input: one line on stderr, exit 2.

    python -m sandbox info
    python -m sandbox simulate --kind flash2 --block-q 64 --block-kv 64 --n 4096 --d 64 --causal
    python -m sandbox run      [--kind flash2] --n 40 --d 16      (GPU, or Numba's CUDA simulator)
    python -m sandbox sweep    --experiment hbm_vs_sram --out results/data/hbm_vs_sram.csv
    python -m sandbox sweep    --kind flash1 flash2 --n 1024 4096 --sram-bytes 65536 131072 --out my.csv
    python -m sandbox plot     hbm_vs_sram --data results/data/hbm_vs_sram.json --out results/figures
    python -m sandbox demo     --out results
    python -m sandbox bench    --n 1024 --d 64 --repeats 10 --out bench.csv   (GPU only)
    python -m sandbox ncu      --out results/ncu      (GPU with Nsight Compute; --help: its own arguments)
"""

import argparse
import itertools
import os
import sys

from sandbox.dtypes import SUPPORTED
from sandbox.kinds import names as kind_names

EXIT_USAGE = 2


def _fmt_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _report_rows(report):
    rows = [list(r) for r in report.table()]
    fields = ("hbm_reads", "hbm_writes", "sram_reads", "sram_writes")
    rows.append(["bytes"] + [report.bytes(f) for f in fields])
    return rows


def _add_problem_args(p, n_default, d_default):
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--n", type=int, default=n_default, help="Nq = Nk (default %(default)s)")
    p.add_argument("--n-q", type=int, default=None, help="Nq, if it differs from --n")
    p.add_argument("--n-kv", type=int, default=None, help="Nk, if it differs from --n")
    p.add_argument("--d", type=int, default=d_default, help="head dim (default %(default)s)")
    p.add_argument("--dtype", default="float32", choices=SUPPORTED)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--scale", type=float, default=None)


def _add_schedule_args(p, block_default, kind_default, tile_default=None):
    p.add_argument("--kind", default=kind_default, help=f"one of {', '.join(kind_names())}")
    p.add_argument("--block-q", type=int, default=block_default, help="Br")
    p.add_argument("--block-kv", type=int, default=block_default, help="Bc")
    p.add_argument("--thread-q", type=int, default=tile_default, help="rows of each thread's register tile")
    p.add_argument("--thread-kv", type=int, default=tile_default, help="columns of each thread's register tile")
    p.add_argument("--sram-bytes", type=int, default=None, help="M, the SRAM capacity assumed (default 227 KiB)")
    p.add_argument("--math", choices=("fma", "tf32x3"), default="fma",
                   help="flash2's fast-build arithmetic: fma (CUDA cores) or tf32x3 (tensor cores, 3xTF32; "
                        "needs --thread-q 2 --thread-kv Bc/4)")


def _problem(a):
    from sandbox.problem import Problem

    return Problem(
        batch=a.batch, heads=a.heads, n_q=a.n_q or a.n, n_kv=a.n_kv or a.n, head_dim=a.d,
        dtype=a.dtype, causal=a.causal, scale=a.scale,
    )


def _schedule(a, kind):
    from sandbox.schedule import Schedule

    extra = {} if a.sram_bytes is None else {"sram_bytes": a.sram_bytes}
    if getattr(a, "math", "fma") != "fma":
        extra["math"] = a.math
    return Schedule(kind, block_q=a.block_q, block_kv=a.block_kv, thread_q=a.thread_q, thread_kv=a.thread_kv, **extra)


def cmd_info(a):
    from sandbox import info

    for key, value in info.environment().items():
        print(f"{key:>28}: {value}")
    return 0


def cmd_simulate(a):
    from sandbox.lab import simulate

    problem = _problem(a)
    schedule = _schedule(a, a.kind)
    report = simulate(schedule, problem)
    print(f"{schedule.describe()}  |  B={problem.batch} H={problem.heads} Nq={problem.n_q} Nk={problem.n_kv} "
          f"d={problem.head_dim} {problem.dtype.name} causal={problem.causal}")
    print(_fmt_table(["tensor", "hbm_reads", "hbm_writes", "sram_reads", "sram_writes"], _report_rows(report)))
    print(f"HBM total: {report.hbm_bytes} bytes   SRAM total: {report.sram_bytes} bytes   matmul FLOPs: {report.flops}")
    return 0


def cmd_run(a):
    from sandbox.lab import check_against_reference
    from sandbox.runtime import using_simulator

    problem = _problem(a)
    kinds = kind_names() if a.kind == "all" else (a.kind,)
    backend = "Numba CUDA simulator" if using_simulator() else "GPU"
    print(f"B={problem.batch} H={problem.heads} Nq={problem.n_q} Nk={problem.n_kv} d={problem.head_dim} "
          f"{problem.dtype.name} causal={problem.causal} on the {backend}")
    failed = False
    for kind in kinds:
        schedule = _schedule(a, kind)
        res = check_against_reference(schedule, problem, seed=a.seed)
        agree = "measured == simulated" if res["counts_agree"] else "MEASURED != SIMULATED"
        print(f"\n{schedule.describe()}")
        print(f"  max |O - O_ref| = {res['max_abs_error']:.3g}   max |L - L_ref| = {res['max_abs_error_lse']:.3g}   "
              f"time {res['seconds'] * 1e3:.1f} ms (counting build)   {agree}")
        m, s = res["measured"], res["simulated"]
        rows = [[t, m.hbm_reads.get(t, 0) + m.hbm_writes.get(t, 0), s.hbm_reads.get(t, 0) + s.hbm_writes.get(t, 0),
                 m.sram_reads.get(t, 0) + m.sram_writes.get(t, 0), s.sram_reads.get(t, 0) + s.sram_writes.get(t, 0)]
                for t, *_ in m.table()]
        print("  " + _fmt_table(["tensor", "hbm measured", "hbm simulated", "sram measured", "sram simulated"], rows)
              .replace("\n", "\n  "))
        failed |= not res["counts_agree"]
    return 1 if failed else 0


def _progress():
    from tqdm import tqdm

    return lambda it: tqdm(it, unit="point", leave=False, disable=not sys.stderr.isatty())


def _parse_block(text):
    try:
        br, bc = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block as BRxBC, e.g. 64x64, got {text!r}") from None
    return br, bc


def cmd_sweep(a):
    from sandbox.experiments import EXPERIMENTS
    from sandbox.sweep import SweepSpec, run_sweep

    if a.experiment:
        if a.experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {a.experiment!r}; expected one of {', '.join(EXPERIMENTS)}")
        spec = EXPERIMENTS[a.experiment].spec
    else:
        causal = {"no": (False,), "yes": (True,), "both": (False, True)}[a.causal]
        spec = SweepSpec(
            kinds=tuple(a.kind), n=tuple(a.n), head_dim=tuple(a.d), causal=causal, dtype=tuple(a.dtype),
            batch=(a.batch,), heads=(a.heads,), blocks=tuple(a.block), sram=tuple(a.sram_bytes or ()),
            thread_tiles=tuple(a.thread_tile) if a.thread_tile else (None,), time_kernels=a.time,
        )
    rows = run_sweep(spec, a.out, progress=_progress(), argv=sys.argv)
    print(f"{len(rows)} points in {a.out} and {a.out.rsplit('.', 1)[0]}.json")
    return 0


def cmd_plot(a):
    from sandbox.plots import PLOTS
    from sandbox.sweep import load

    if a.figure not in PLOTS:
        raise ValueError(f"unknown figure {a.figure!r}; expected one of {', '.join(PLOTS)}")
    prov, rows = load(a.data)
    if not rows:
        raise ValueError(f"{a.data} has no rows")
    for path in PLOTS[a.figure](rows, prov, a.out):
        print(path)
    return 0


def cmd_demo(a):
    import time

    from sandbox.demo import run_demo
    from sandbox.runtime import using_simulator

    start = time.perf_counter()
    backend = "the Numba CUDA simulator (no GPU)" if using_simulator() else "the GPU"
    print(f"demo: sweeps on the simulator, kernels on {backend}, into {a.out}/")
    res = run_demo(a.out, progress=_progress(), argv=sys.argv)
    for kind, r in res["kernel_check"].items():
        agree = "counts agree" if r["counts_agree"] else "COUNTS DISAGREE"
        print(f"  {kind:>8}: max |O - O_ref| = {r['max_abs_error']:.2g}, {agree}")
    print("figures:\n  " + "\n  ".join(p for p in res["figures"] if p.endswith(".png")))
    print(f"data: {os.path.join(a.out, 'data')}/   ({time.perf_counter() - start:.0f} s)")
    return 0 if all(r["counts_agree"] for r in res["kernel_check"].values()) else 1


def _bench_progress(tasks):
    """tqdm on a terminal; otherwise one line per task on stderr (logs of a remote run)."""
    from tqdm import tqdm

    tasks = list(tasks)
    if sys.stderr.isatty():
        bar = tqdm(tasks, unit="run", leave=False, file=sys.stderr)
        for task in bar:
            bar.set_postfix_str(task.label)
            yield task
    else:
        for i, task in enumerate(tasks, 1):
            print(f"bench [{i}/{len(tasks)}] {task.label}", file=sys.stderr, flush=True)
            yield task


def cmd_bench(a):
    from sandbox.bench import BenchSpec, GPURequired, format_table, run_bench

    spec = BenchSpec(
        n=tuple(a.n), head_dim=tuple(a.d), batch=a.batch, heads=a.heads, dtype=tuple(a.dtype),
        causal=_masks(a), impls=tuple(a.impl) if a.impl else None,
        backward=a.backward, repeats=a.repeats, block_q=a.block_q, block_kv=a.block_kv, thread_q=a.thread_q,
        thread_kv=a.thread_kv, math=a.math, seed=a.seed, tune=not a.no_tune,
    )
    rows = []
    try:
        run_bench(spec, a.out, progress=_bench_progress, argv=sys.argv, rows=rows)
    except GPURequired as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if rows:
            print(format_table(rows))
        print(f"interrupted: {len(rows)} rows kept in {a.out}", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"{len(rows)} rows in {a.out} and {os.path.splitext(a.out)[0]}.json")
    failed = any(r["status"].startswith(("WRONG", "error")) for r in rows)
    return 1 if failed else 0


def cmd_tune(a):
    from sandbox.autotune import cache_path, tune
    from sandbox.runtime import using_simulator

    if using_simulator():
        print("tune needs a GPU: the CUDA simulator's timings mean nothing", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    for d, dt, causal in itertools.product(a.d, a.dtype, _masks(a)):
        what = f"d={d} {dt}{' causal' if causal else ''}"
        try:
            best, entry = tune(d, dt, causal, refresh=a.refresh)
        except RuntimeError as e:  # no candidate ran: say so, go on with the others
            print(f"{what}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{what}: {best.describe()}")
        for label, ms in sorted(entry["ms"].items(), key=lambda kv: kv[1]):
            print(f"    {ms:9.3f} ms  {label}")
        for label, err in entry["errors"].items():
            print(f"    failed     {label}: {err}")
    print(f"cache: {cache_path()}")
    return 1 if failed else 0


def _add_mask_args(p, what):
    """--causal / --both-masks (bench, tune); :func:`_masks` reads them."""
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--causal", action="store_true", help=f"causal {what} only (default: none)")
    mask.add_argument("--both-masks", action="store_true", help=f"{what} without and with the causal mask")


def _masks(a):
    """The causal values that --causal / --both-masks ask for."""
    return (False, True) if a.both_masks else (a.causal,)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Attention IO sandbox.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="package versions, GPU or simulator, device properties")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("simulate", help="IO counts of one schedule and problem, from the simulator")
    _add_problem_args(p, 4096, 64)
    _add_schedule_args(p, 64, "flash2")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("run", help="run kernels, check against NumPy, compare measured and simulated IO")
    _add_problem_args(p, 40, 16)
    # small defaults: the CUDA simulator runs each of the 4x4 threads as a Python thread
    _add_schedule_args(p, 8, "all", tile_default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="a grid of points counted by the simulator -> CSV + JSON (resumable)")
    p.add_argument("--experiment", help="a named experiment's grid (see sandbox/experiments.py)")
    p.add_argument("--kind", nargs="+", default=list(kind_names()))
    p.add_argument("--n", nargs="+", type=int, default=[1024])
    p.add_argument("--d", nargs="+", type=int, default=[64])
    p.add_argument("--causal", choices=("no", "yes", "both"), default="no")
    p.add_argument("--dtype", nargs="+", default=["float32"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--block", nargs="+", type=_parse_block, default=[(64, 64)], help="BRxBC, e.g. 64x64")
    p.add_argument("--sram-bytes", nargs="+", type=int, help="M values: blocks by the paper's rule instead of --block")
    p.add_argument("--thread-tile", nargs="+", type=int)
    p.add_argument("--time", action="store_true", help="also time the kernels (GPU only)")
    p.add_argument("--out", required=True, help="CSV path; the JSON goes beside it")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="a figure from a sweep file")
    p.add_argument("figure", help="hbm_vs_sram, hbm_vs_n, block_size, gpt2_medium or sram_vs_tile")
    p.add_argument("--data", required=True, help="the sweep's JSON or CSV")
    p.add_argument("--out", default="results/figures")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="time our kernels against PyTorch SDPA, CuPy and the seed's blockwise "
                                    "PyTorch (GPU only) -> table + CSV + JSON")
    p.add_argument("--n", nargs="+", type=int, default=[1024, 4096, 16384], help="Nq = Nk values")
    p.add_argument("--d", nargs="+", type=int, default=[64, 128], help="head dims")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "float16", "bfloat16"))
    _add_mask_args(p, "rows")
    p.add_argument("--impl", nargs="+", help="implementations (default: all): sdpa-flash sdpa-efficient sdpa-math "
                                             "cupy-naive torch-blockwise standard flash1 flash2")
    p.add_argument("--backward", action="store_true",
                   help="also backward rows: sdpa-* through autograd (only the backward timed), our standard and flash2")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row, median reported (default 10)")
    p.add_argument("--out", default="bench.csv", help="CSV path (default bench.csv); the JSON goes beside it")
    p.add_argument("--block-q", type=int, default=None, help="Br of our kernels (default 64)")
    p.add_argument("--block-kv", type=int, default=None, help="Bc of our kernels (default 64)")
    p.add_argument("--thread-q", type=int, default=None, help="rows of our register tiles (default 4)")
    p.add_argument("--thread-kv", type=int, default=None, help="columns of our register tiles (default 4)")
    p.add_argument("--math", choices=("fma", "tf32x3"), default=None,
                   help="flash2's arithmetic: fma (CUDA cores) or tf32x3 (its tensor-core build, 3xTF32; needs "
                        "--thread-q 2 --thread-kv Bc/4); default: the tuned schedule's")
    p.add_argument("--no-tune", action="store_true",
                   help="flash2 on the default schedule instead of the autotuned one (python -m sandbox tune)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="time flash2's fast-build schedules per (head_dim, dtype) on this GPU "
                                   "and cache the fastest (GPU only)")
    p.add_argument("--d", nargs="+", type=int, default=[64, 128], help="head dims")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "float16", "bfloat16"))
    p.add_argument("--refresh", action="store_true", help="time again even where the cache has a choice")
    _add_mask_args(p, "kernels")
    p.set_defaults(func=cmd_tune)

    # the ncu check parses its own arguments (sandbox/ncu.py); main() hands them over before parsing
    sub.add_parser("ncu", add_help=False, help="Nsight Compute's counters against the simulator and its L2 model "
                                               "(GPU with ncu) -> CSV + JSON + figure; ncu --help for its arguments")

    p = sub.add_parser("demo", help="the main job: sweeps, figures and a kernel check into --out")
    p.add_argument("--out", default="results")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    from sandbox.runtime import ensure_backend

    ensure_backend()  # the CUDA simulator when there is no GPU, before numba.cuda is imported
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ncu"]:
        from sandbox.ncu import main as ncu_main

        return ncu_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = args.kind if isinstance(getattr(args, "kind", None), list) else [getattr(args, "kind", None)]
    for kind in kinds:
        if kind not in (None, "all") + kind_names():
            print(f"error: unknown schedule kind {kind!r}; expected one of {', '.join(kind_names())}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # unwritable output folder, missing input file
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
