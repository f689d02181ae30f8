"""Command line: thin over library functions; it parses, calls, prints. Bad input: one line on stderr, exit 2.

    python -m sandbox info
    python -m sandbox simulate --kind flash2 --block-q 64 --block-kv 64 --n 4096 --d 64 --causal
    python -m sandbox run      [--kind flash2] --n 40 --d 16      (GPU, or Numba's CUDA simulator)
    python -m sandbox run      --kind flash2 --n 40 --d 16 --causal --score-mod softcap:30
    python -m sandbox sweep    --experiment hbm_vs_sram --out results/data/hbm_vs_sram.csv
    python -m sandbox sweep    --kind flash1 flash2 --n 1024 4096 --sram-bytes 65536 131072 --out my.csv
    python -m sandbox plot     hbm_vs_sram --data results/data/hbm_vs_sram.json --out results/figures
    python -m sandbox demo     --out results
    python -m sandbox bench    --n 1024 --d 64 --repeats 10 --out bench.csv   (GPU only)
    python -m sandbox ncu      --out results/ncu      (GPU with Nsight Compute; --help: its own arguments)
    python -m sandbox ncu      --backward yes --mask sliding_window:256 --out results/ncu   (a masked backward)
    python -m sandbox roofline --out results/roofline (GPU; --from-csv FILE draws a saved run without one)

Installed, the same commands run as ``attention-sandbox info``, ``attention-sandbox simulate ...``.
"""

import argparse
import itertools
import os
import shlex
import sys

from sandbox import __version__
from sandbox.vocabulary.dtypes import SUPPORTED
from sandbox.vocabulary.kinds import names as kind_names
from sandbox.vocabulary.masks import SPECS as MASK_SPECS, parse_spec
from sandbox.vocabulary.schedule import MATHS
from sandbox.vocabulary.score_mods import BUILTINS as SCORE_MODS

EXIT_USAGE = 2
#: --causal of the sweep and the ncu check: the masks each value asks for.
CAUSAL = {"no": (False,), "yes": (True,), "both": (False, True)}


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's rule for bad input: one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_of(what, names):
    """An argparse type for ``choices=names`` whose error names ``what`` and lists the names."""
    names = tuple(names)

    def check(text):
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; expected one of {', '.join(names)}")
        return text

    return check


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
    p.add_argument("--batch", type=int, default=1, help="B, the batch size (default %(default)s)")
    p.add_argument("--heads", type=int, default=1, help="H, the number of heads (default %(default)s)")
    p.add_argument("--heads-kv", type=int, default=None,
                   help="H_kv, the K/V heads, a divisor of H: query head h reads K/V head h // (H / H_kv) "
                        "(1: multi-query; default H)")
    p.add_argument("--n", type=int, default=n_default, help="Nq = Nk (default %(default)s)")
    p.add_argument("--n-q", type=int, default=None, help="Nq, if it differs from --n")
    p.add_argument("--n-kv", type=int, default=None, help="Nk, if it differs from --n")
    p.add_argument("--d", type=int, default=d_default, help="head dim (default %(default)s)")
    p.add_argument("--d-v", type=int, default=None,
                   help="d_v, V's and O's head dim (S = QKᵀ contracts over d, O = PV has d_v columns; default d)")
    p.add_argument("--dtype", default="float32", choices=SUPPORTED, help="Q, K, V dtype (default %(default)s)")
    p.add_argument("--causal", action="store_true", help="causal mask (query i sees keys <= i)")
    p.add_argument("--scale", type=float, default=None, help="the factor of QKᵀ in S (default 1/sqrt(d))")


def _add_schedule_args(p, block_default, kind_default, tile_default=None):
    kinds = kind_names() + ((kind_default,) if kind_default not in kind_names() else ())
    p.add_argument("--kind", default=kind_default, choices=kinds, type=_one_of("schedule kind", kinds),
                   help="schedule kind (default %(default)s)")
    p.add_argument("--block-q", type=int, default=block_default, help="Br")
    p.add_argument("--block-kv", type=int, default=block_default, help="Bc")
    p.add_argument("--thread-q", type=int, default=tile_default, help="rows of each thread's register tile")
    p.add_argument("--thread-kv", type=int, default=tile_default, help="columns of each thread's register tile")
    p.add_argument("--sram-bytes", type=int, default=None, help="M, the SRAM capacity assumed (default 227 KiB)")
    p.add_argument("--math", choices=MATHS, default="fma",
                   help="flash2's fast-build arithmetic: fma (CUDA cores), tf32x3 (tensor cores, 3xTF32; "
                        "needs Br a multiple of 16, Bc of 8 and the thread tile 2 x Bc/4, its default) or f16 "
                        "(16-bit tensor cores, fp16/bf16 inputs only; Br, Bc and d multiples of 16, tile 2 x Bc/4)")


def _add_score_mod_arg(p):
    names = ", ".join(f"{name} ({what})" for name, (_, what) in SCORE_MODS.items())
    p.add_argument("--score-mod", type=_score_mod_spec, default=None, metavar="NAME[:PARAM]",
                   help=f"a built-in score_mod applied to S before the softmax: {names}")


def _score_mod_spec(text):
    """--score-mod's type: a built-in's name, with ``:parameter`` where it takes one (built in :func:`_score_mod`)."""
    name = text.partition(":")[0]
    if name not in SCORE_MODS:
        raise argparse.ArgumentTypeError(f"unknown score_mod {name!r}; expected one of {', '.join(SCORE_MODS)} "
                                         f"(e.g. softcap:30)")
    return text


def _score_mod(a, problem):
    """The ScoreMod --score-mod names (None without one); alibi's slopes are the paper's for H heads."""
    from sandbox.vocabulary.score_mods import parse

    return None if a.score_mod is None else parse(a.score_mod, problem.heads)


def _problem(a):
    from sandbox.vocabulary.problem import Problem

    return Problem(
        batch=a.batch, heads=a.heads, n_q=a.n_q or a.n, n_kv=a.n_kv or a.n, head_dim=a.d,
        dtype=a.dtype, causal=a.causal, scale=a.scale, heads_kv=a.heads_kv, head_dim_v=a.d_v,
    )


def _kv_heads(problem):
    """The header's "H_kv=…" where K/V heads are grouped; empty without grouping."""
    return f" H_kv={problem.heads_kv}" if problem.group > 1 else ""


def _d_v(problem):
    """The header's " d_v=…" where V's head dim differs from d; empty otherwise."""
    return f" d_v={problem.head_dim_v}" if problem.head_dim_v != problem.head_dim else ""


def _schedule(a, kind):
    from sandbox.vocabulary.schedule import Schedule

    extra = {} if a.sram_bytes is None else {"sram_bytes": a.sram_bytes}
    if getattr(a, "math", "fma") != "fma":
        extra["math"] = a.math
    return Schedule(kind, block_q=a.block_q, block_kv=a.block_kv, thread_q=a.thread_q, thread_kv=a.thread_kv, **extra)


def cmd_info(a):
    from sandbox.lab import info

    for key, value in info.environment().items():
        print(f"{key:>28}: {value}")
    return 0


def cmd_simulate(a):
    from sandbox.api import simulate

    problem = _problem(a)
    schedule = _schedule(a, a.kind)
    score_mod = _score_mod(a, problem)
    report = simulate(schedule, problem, score_mod=score_mod)
    print(f"{schedule.describe()}  |  B={problem.batch} H={problem.heads}{_kv_heads(problem)} Nq={problem.n_q} Nk={problem.n_kv} "
          f"d={problem.head_dim}{_d_v(problem)} {problem.dtype.name} causal={problem.causal}"
          + (f" score_mod={score_mod.name}" if score_mod else ""))
    print(_fmt_table(["tensor", "hbm_reads", "hbm_writes", "sram_reads", "sram_writes"], _report_rows(report)))
    print(f"HBM total: {report.hbm_bytes} bytes   SRAM total: {report.sram_bytes} bytes   matmul FLOPs: {report.flops}")
    return 0


def cmd_run(a):
    from sandbox.lab.verify import check_against_reference
    from sandbox.vocabulary.runtime import using_simulator

    problem = _problem(a)
    kinds = kind_names() if a.kind == "all" else (a.kind,)
    score_mod = _score_mod(a, problem)
    if score_mod is not None and a.kind == "all":  # the kinds that take one
        from sandbox.vocabulary.kinds import with_trait

        kinds = with_trait("score_mods")
    backend = "Numba CUDA simulator" if using_simulator() else "GPU"
    print(f"B={problem.batch} H={problem.heads}{_kv_heads(problem)} Nq={problem.n_q} Nk={problem.n_kv} "
          f"d={problem.head_dim}{_d_v(problem)} {problem.dtype.name} causal={problem.causal}"
          + (f" score_mod={score_mod.name}" if score_mod else "") + f" on the {backend}")
    failed = False
    for kind in kinds:
        schedule = _schedule(a, kind)
        res = check_against_reference(schedule, problem, seed=a.seed, score_mod=score_mod)
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


def _add_jobs_arg(p):
    from sandbox.lab.grouping import default_jobs

    p.add_argument("--jobs", "-j", type=_positive_int, default=default_jobs(),
                   help="processes for the gqa_l2 experiment's L2 model, one point each at a time "
                        "(default: the cores this process may use, %(default)s)")


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return n


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
    from sandbox.lab.experiments import EXPERIMENTS
    from sandbox.vocabulary.runtime import using_simulator
    from sandbox.lab.sweep import SweepSpec, run_sweep, sweep_paths

    if a.time and using_simulator():
        print("error: --time needs a GPU: the CUDA simulator's timings mean nothing (leave --time out)",
              file=sys.stderr)
        return EXIT_USAGE
    if a.experiment and not isinstance(EXPERIMENTS[a.experiment].spec, SweepSpec):  # its own data (e.g. gqa_l2)
        csv_path, json_path = sweep_paths(a.out)
        rows = EXPERIMENTS[a.experiment].run(csv_path, json_path, progress=_progress(), argv=a.command_line,
                                             jobs=a.jobs)
        print(f"{len(rows)} points in {csv_path} and {json_path}")
        return 0
    if a.experiment:
        spec = EXPERIMENTS[a.experiment].spec
    else:
        if a.block is not None and a.sram_bytes:
            raise ValueError("--block and --sram-bytes both set the blocks: give one (--sram-bytes picks them "
                             "by the paper's rule, Schedule.from_sram)")
        causal = CAUSAL[a.causal]
        spec = SweepSpec(
            kinds=tuple(a.kind), n=tuple(a.n), head_dim=tuple(a.d), causal=causal, dtype=tuple(a.dtype),
            batch=(a.batch,), heads=(a.heads,), blocks=tuple(a.block or SweepSpec.blocks),
            sram=tuple(a.sram_bytes or ()), thread_tiles=tuple(a.thread_tile) if a.thread_tile else (None,),
            time_kernels=a.time,
        )
    csv_path, json_path = sweep_paths(a.out)
    rows = run_sweep(spec, csv_path, json_path, progress=_progress(), argv=a.command_line,
                     skip_infeasible=a.skip_infeasible, append=a.append)
    if rows.already_done:
        print(f"resumed: {rows.already_done} points were already in {csv_path}")
    if rows.damaged:
        print(f"{rows.damaged} damaged rows in {csv_path} were left out and their points computed again")
    infeasible = f" ({rows.infeasible} infeasible, see the infeasible column)" if rows.infeasible else ""
    print(f"{len(rows)} points{infeasible} in {csv_path} and {json_path}")
    return 0


def cmd_plot(a):
    from sandbox.lab.experiments import EXPERIMENTS
    from sandbox.lab.plots import PLOTS, load_sweep
    from sandbox.lab.sweep import SweepSpec

    experiment = EXPERIMENTS[a.figure]
    prov, rows = load_sweep(a.data) if isinstance(experiment.spec, SweepSpec) else experiment.load(a.data)
    rows = [r for r in rows if not r.get("infeasible")]  # points a sweep recorded as unable to run
    if not rows:
        raise ValueError(f"{a.data} has no rows")
    for path in PLOTS[a.figure](rows, prov, a.out):
        print(path)
    return 0


def cmd_demo(a):
    import time

    from sandbox.lab.demo import run_demo
    from sandbox.vocabulary.runtime import using_simulator

    start = time.perf_counter()
    backend = "the Numba CUDA simulator (no GPU)" if using_simulator() else "the GPU"
    print(f"demo: sweeps on the simulator, kernels on {backend}, into {a.out}/")
    res = run_demo(a.out, progress=_progress(), argv=a.command_line, jobs=a.jobs)
    for kind, r in res["kernel_check"].items():
        agree = "counts agree" if r["counts_agree"] else "COUNTS DISAGREE"
        print(f"  {kind:>8}: max |O - O_ref| = {r['max_abs_error']:.2g}, {agree}")
    print("figures:\n  " + "\n  ".join(p for p in res["figures"] if p.endswith(".png")))
    print(f"data: {os.path.join(a.out, 'data')}/   ({time.perf_counter() - start:.0f} s)")
    return 0 if all(r["counts_agree"] for r in res["kernel_check"].values()) else 1


def _bench_progress(tasks, command="bench"):
    """tqdm on a terminal; otherwise one line per task (anything with a ``label``) on stderr (logs of a remote run)."""
    from tqdm import tqdm

    tasks = list(tasks)
    if sys.stderr.isatty():
        bar = tqdm(tasks, unit="run", leave=False, file=sys.stderr)
        for task in bar:
            bar.set_postfix_str(task.label)
            yield task
    else:
        for i, task in enumerate(tasks, 1):
            print(f"{command} [{i}/{len(tasks)}] {task.label}", file=sys.stderr, flush=True)
            yield task


def cmd_bench(a):
    from sandbox.lab.bench import BenchSpec, GPURequired, format_table, run_bench

    spec = BenchSpec(
        n=tuple(a.n), head_dim=tuple(a.d), batch=a.batch, heads=a.heads, heads_kv=a.heads_kv, dtype=tuple(a.dtype),
        causal=_masks(a), impls=tuple(a.impl) if a.impl else None,
        backward=a.backward, backward_only=a.backward_only, atomic_dq=a.atomic_dq, repeats=a.repeats, block_q=a.block_q, block_kv=a.block_kv, thread_q=a.thread_q,
        thread_kv=a.thread_kv, math=a.math, seed=a.seed, tune=not a.no_tune,
    )
    rows = []
    try:
        run_bench(spec, a.out, progress=_bench_progress, argv=a.command_line, rows=rows)
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


def cmd_roofline(a):
    from sandbox.lab import roofline
    from sandbox.vocabulary.problem import Problem
    from sandbox.vocabulary.runtime import using_simulator

    if a.from_csv:
        rows, ceilings, paths = roofline.from_csv(a.from_csv, a.out, argv=a.command_line)
        print(roofline.format_table(rows, ceilings))
        print("\n".join(paths))
        return 0
    if using_simulator():
        print("roofline needs a GPU to measure its ceilings and runtimes: the CUDA simulator's timings mean "
              "nothing (--from-csv FILE draws a saved run without one)", file=sys.stderr)
        return EXIT_USAGE
    problems = [Problem(a.batch, a.heads, n, n, d, dtype=dt, causal=c)
                for dt, d, n, c in itertools.product(a.dtype, a.d, a.n, _masks(a))]
    rows = []
    try:
        rows, ceilings, paths = roofline.run_roofline(
            a.out, roofline.entries(problems, backward=a.backward, tune=a.tune), repeats=a.repeats, seed=a.seed,
            copy_bytes=a.copy_bytes, argv=a.command_line, rows=rows,
            progress=lambda entries: _bench_progress(entries, "roofline"))
    except KeyboardInterrupt:
        print(f"interrupted: {len(rows)} rows kept in {a.out}", file=sys.stderr)
        return 130
    print(roofline.format_table(rows, ceilings))
    print("\n".join(paths))
    return 1 if any((r["status"] or "").startswith(("WRONG", "error")) for r in rows) else 0


def cmd_tune(a):
    from sandbox.lab.autotune import cache_path, direction_label, tune
    from sandbox.vocabulary.runtime import using_simulator

    if a.atomic_dq and not a.backward:
        print("tune: --atomic-dq tunes the backward's dQ by atomics: add --backward", file=sys.stderr)
        return EXIT_USAGE
    if using_simulator():
        print("tune needs a GPU: the CUDA simulator's timings mean nothing", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    way = direction_label(a.backward, not a.atomic_dq)
    for d, dt, causal in itertools.product(a.d, a.dtype, _masks(a)):
        what = f"{way}d={d} {dt}{' causal' if causal else ''}"
        try:
            best, entry = tune(d, dt, causal, refresh=a.refresh, backward=a.backward, deterministic=not a.atomic_dq)
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


def _add_ncu_args(p):
    """The ncu check's arguments (``sandbox/lab/ncu.py`` says what each one does to the measurement)."""
    from sandbox.lab.ncu import BUILD_FLAG, CACHE_CONTROLS, PASSES
    from sandbox.lab.ncu_specs import BUILD_NAMES, DEFAULT_D, DEFAULT_N, l2_kinds
    from sandbox.vocabulary.gpus import KNOWN_GPUS

    p.add_argument("--out", default="results/ncu", help="directory for the CSV, JSON, figure and ncu's log")
    p.add_argument("--kinds", nargs="+", default=list(l2_kinds()), choices=kind_names(),
                   help="schedule kinds (default: those with an L2 request stream, %(default)s)")
    p.add_argument("--n", nargs="+", type=int, default=list(DEFAULT_N), help="sequence lengths (Nq = Nk)")
    p.add_argument("--d", nargs="+", type=int, default=list(DEFAULT_D), help="head dims")
    p.add_argument("--causal", choices=tuple(CAUSAL), default="no", help="causal mask (default %(default)s)")
    forms = "; ".join(f"{form}: {what}" for form, what in MASK_SPECS.values())
    p.add_argument("--mask", type=_mask_spec, nargs="+", default=None, metavar="SPEC",
                   help=f"built-in masks, each on every row, with --causal (causal AND mask); 'none' for rows "
                        f"without one: {forms}. Masked rows' DRAM bytes are reported, not predicted (the L2 "
                        "model takes no mask). Default: none")
    p.add_argument("--batch", type=int, default=1, help="B, the batch size (default %(default)s)")
    p.add_argument("--heads", type=int, default=1, help="H, the number of heads (default %(default)s)")
    p.add_argument("--dtype", default="float32", choices=SUPPORTED, help="Q, K, V dtype (default %(default)s)")
    p.add_argument("--kv-splits", type=int, default=4, help="kv_splits of the kinds that read it (splitkv)")
    p.add_argument("--backward", choices=tuple(PASSES), default="no",
                   help="measure the backward pass (kernels.launch.run_backward): 'no' (the forward only; default), "
                        "'yes' (the backward only) or 'both'; kinds without a backward have forward rows only")
    p.add_argument("--builds", nargs="+", default=None, metavar="BUILD",
                   help=f"builds to measure, by spaces or commas: {', '.join(BUILD_NAMES)} ('plain': the kernels "
                        "whose counters the simulator mirrors; 'fast-<math>': the fast build of Schedule(math=<math>), "
                        "for the kinds that have one, forward or backward: flash2's backward has fast-tf32x3). "
                        "Default: --build's")
    p.add_argument("--build", choices=tuple(BUILD_FLAG), default="plain",
                   help="without --builds: 'plain' (default) or 'fast' (flash2's FMA build, fast-fma)")
    p.add_argument("--no-probes", dest="probes", action="store_false",
                   help="skip the calibration probes; the model then takes --dirty-limit-bytes and "
                        "--background-write-rate (default: neither)")
    p.add_argument("--dirty-limit-bytes", type=int, default=None, help="the L2 model's dirty limit without probes")
    p.add_argument("--background-write-rate", type=float, default=None,
                   help="background DRAM writes (bytes/s) without probes")
    p.add_argument("--block-q", type=int, default=64, help="Br (default %(default)s)")
    p.add_argument("--block-kv", type=int, default=64, help="Bc (default %(default)s)")
    p.add_argument("--thread-q", type=int, default=4,
                   help="rows of each thread's register tile (default %(default)s; the f16 rows take 2 or 4, a "
                        "warp per 16 or 32 rows, the tf32x3 rows their fixed 2)")
    p.add_argument("--thread-kv", type=int, default=4,
                   help="columns of each thread's register tile (default %(default)s; the tensor-core rows: Bc/4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("--gpu", choices=sorted(KNOWN_GPUS), default=None,
                   help="the machine the L2 model describes, where the device cannot be read (default: the "
                        "device's own L2 size, SMs and shared memory)")
    p.add_argument("--l2-bytes", type=int, default=None, help="the model's L2 size (default: the GPU's)")
    p.add_argument("--sms", type=int, default=None,
                   help="SMs, for the default residency where ncu reports none (default: the GPU's)")
    p.add_argument("--cache-control", choices=CACHE_CONTROLS, default="all",
                   help="ncu's --cache-control: 'all' flushes the caches before each kernel (the model then "
                        "starts each launch cold)")
    p.add_argument("--ncu", default=None, help="path of ncu (default: the PATH, then standard install places)")
    p.add_argument("--timeout", type=float, default=400.0, help="seconds the profiled child may run")
    p.add_argument("--dry-run", action="store_true", help="print the ncu command line and exit")
    p.add_argument("--from-raw", metavar="DIR", default=None,
                   help="analyse a saved check again without a GPU: DIR's ncu_raw.csv and manifest.jsonl (ncu's "
                        "measurements) against the current model, with the same --n, --d, ... as measured; the "
                        "machine's facts come from DIR's ncu_check.json (else --gpu)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a measured config misses a target")


def _mask_spec(text):
    """--mask's type: a built-in mask's spec, checked by ``sandbox.vocabulary.masks.parse_spec``; "none": no
    mask ("")."""
    if text == "none":
        return ""
    try:
        parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _ncu_description():
    from sandbox.lab import ncu

    return ncu.__doc__.split("\n")[0]


def cmd_ncu(a):
    from sandbox.lab.ncu import check

    return check(a, command=shlex.join(a.command_line))


def ncu_parser(prog=None):
    """The ncu check's parser on its own (``scripts/ncu_check.py``), the ``ncu`` subcommand's arguments."""
    p = _Parser(prog=prog or f"{PROG} ncu", description=_ncu_description(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_ncu_args(p)
    return p


def ncu_main(argv=None, prog=None):
    """The ncu check as a command of its own (``python scripts/ncu_check.py``): parse ``argv``, run it,
    return the exit status (bad arguments: one line on stderr, 2)."""
    from sandbox.vocabulary.runtime import ensure_backend

    ensure_backend()
    parser = ncu_parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error (printed, one line)
        return e.code
    args.command_line = [*parser.prog.split(), *argv]
    return cmd_ncu(args)


def _add_mask_args(p, what):
    """--causal / --both-masks (bench, tune); :func:`_masks` reads them."""
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--causal", action="store_true", help=f"causal {what} only (default: none)")
    mask.add_argument("--both-masks", action="store_true", help=f"{what} without and with the causal mask")


def _masks(a):
    """The causal values that --causal / --both-masks ask for."""
    return (False, True) if a.both_masks else (a.causal,)


def build_parser(prog=None):
    """The CLI's parser; ``prog``: the name its usage and errors give the command (default: the console script's)."""
    from sandbox.lab.bench import BENCH_DTYPES, BenchSpec
    from sandbox.lab.ceilings import COPY_BYTES
    from sandbox.lab.experiments import EXPERIMENTS
    from sandbox.lab.peers import DEFAULT_BLOCK, DEFAULT_TILE, impl_names
    from sandbox.lab.sweep import SweepSpec

    parser = _Parser(prog=prog or PROG, description="Attention IO sandbox.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="package versions, GPU or simulator, device properties")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("simulate", help="IO counts of one schedule and problem, from the simulator")
    _add_problem_args(p, 4096, 64)
    _add_schedule_args(p, 64, "flash2")
    _add_score_mod_arg(p)
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("run", help="run kernels, check against NumPy, compare measured and simulated IO")
    _add_problem_args(p, 40, 16)
    # small defaults: the CUDA simulator runs each of the 4x4 threads as a Python thread
    _add_schedule_args(p, 8, "all", tile_default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the random Q, K, V (default %(default)s)")
    _add_score_mod_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="a grid of points counted by the simulator -> CSV + JSON (resumable)")
    _add_jobs_arg(p)
    p.add_argument("--experiment", choices=tuple(EXPERIMENTS), type=_one_of("experiment", EXPERIMENTS),
                   help="a named experiment's grid instead of the grid options")
    p.add_argument("--kind", nargs="+", default=list(kind_names()), choices=kind_names(),
                   type=_one_of("schedule kind", kind_names()), metavar="KIND",
                   help=f"schedule kinds: {', '.join(kind_names())} (default: all)")
    p.add_argument("--n", nargs="+", type=int, default=list(SweepSpec.n), help="Nq = Nk values (default %(default)s)")
    p.add_argument("--d", nargs="+", type=int, default=list(SweepSpec.head_dim), help="head dims (default %(default)s)")
    p.add_argument("--causal", choices=tuple(CAUSAL), default="no", help="causal mask (default no)")
    p.add_argument("--dtype", nargs="+", default=list(SweepSpec.dtype), choices=SUPPORTED, metavar="DTYPE",
                   help=f"dtypes: {', '.join(SUPPORTED)} (default float32)")
    p.add_argument("--batch", type=int, default=1, help="B, the batch size (default %(default)s)")
    p.add_argument("--heads", type=int, default=1, help="H, the number of heads (default %(default)s)")
    p.add_argument("--block", nargs="+", type=_parse_block, default=None,
                   help="BRxBC blocks, e.g. 64x64 (default 64x64)")
    p.add_argument("--sram-bytes", nargs="+", type=int, help="M values: blocks by the paper's rule instead of --block")
    p.add_argument("--thread-tile", nargs="+", type=int,
                   help="register tile edges t (each thread a t x t tile of S; default: the schedule's)")
    p.add_argument("--time", action="store_true", help="also time the kernels (GPU only)")
    p.add_argument("--skip-infeasible", action="store_true",
                   help="record points whose tiles cannot run, with the reason, and go on (default: stop there)")
    p.add_argument("--append", action="store_true",
                   help="add this grid's points to an --out made by another grid (default: refuse)")
    p.add_argument("--out", required=True, help="CSV path (x.csv; x.json gives x.csv too); the JSON goes beside it")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="a figure from a sweep file")
    p.add_argument("figure", choices=tuple(EXPERIMENTS), type=_one_of("figure", EXPERIMENTS),
                   help="the figure: " + ", ".join(EXPERIMENTS))
    p.add_argument("--data", required=True, help="the sweep's JSON or CSV")
    p.add_argument("--out", default="results/figures", help="folder for the PNG and SVG (default %(default)s)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="time our kernels against PyTorch SDPA, CuPy and the blog post's blockwise "
                                    "PyTorch (GPU only) -> table + CSV + JSON")
    p.add_argument("--n", nargs="+", type=int, default=list(BenchSpec.n), help="Nq = Nk values (default %(default)s)")
    p.add_argument("--d", nargs="+", type=int, default=list(BenchSpec.head_dim), help="head dims (default %(default)s)")
    p.add_argument("--batch", type=int, default=BenchSpec.batch, help="B, the batch size (default %(default)s)")
    p.add_argument("--heads", type=int, default=BenchSpec.heads, help="H, the number of heads (default %(default)s)")
    p.add_argument("--heads-kv", type=int, default=None,
                   help="H_kv, K/V heads dividing H (default: H): every row grouped, SDPA with enable_gqa=True, "
                        "flash2's forward on its fast build, every backward on its plain one")
    p.add_argument("--dtype", nargs="+", default=list(BenchSpec.dtype), choices=BENCH_DTYPES,
                   help="dtypes (default %(default)s)")
    _add_mask_args(p, "rows")
    p.add_argument("--impl", nargs="+", choices=impl_names(), type=_one_of("implementation", impl_names()), metavar="IMPL",
                   help="implementations (default: all): " + " ".join(impl_names()))
    p.add_argument("--backward", action="store_true",
                   help="also backward rows: sdpa-* through autograd (only the backward timed), and each of our kinds with a backward pass")
    p.add_argument("--backward-only", action="store_true", help="backward rows alone (no forward rows)")
    p.add_argument("--atomic-dq", action="store_true",
                   help="also a '<kind>-atomic-dq' backward row of each of our kinds: deterministic=False, dQ added "
                        "by fp32 atomics where the fast backward can (its schedule column says whether it did)")
    p.add_argument("--repeats", type=int, default=BenchSpec.repeats,
                   help="timed calls per row, median reported (default %(default)s)")
    p.add_argument("--out", default="bench.csv", help="CSV path (default bench.csv); the JSON goes beside it")
    p.add_argument("--block-q", type=int, default=None, help=f"Br of our kernels (default {DEFAULT_BLOCK})")
    p.add_argument("--block-kv", type=int, default=None, help=f"Bc of our kernels (default {DEFAULT_BLOCK})")
    p.add_argument("--thread-q", type=int, default=None, help=f"rows of our register tiles (default {DEFAULT_TILE})")
    p.add_argument("--thread-kv", type=int, default=None,
                   help=f"columns of our register tiles (default {DEFAULT_TILE})")
    p.add_argument("--math", choices=MATHS, default=None,
                   help="flash2's arithmetic: fma (CUDA cores), tf32x3 (its tensor-core build, 3xTF32; needs "
                        "--thread-q 2 --thread-kv Bc/4) or f16 (its 16-bit tensor-core build, fp16/bf16 only; "
                        "the same tile, or --thread-q 4 for a warp per 32 rows); default: the tuned schedule's")
    p.add_argument("--no-tune", action="store_true",
                   help="flash2 on the default schedule instead of the autotuned one (python -m sandbox tune)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tune", help="time flash2's fast-build schedules per (head_dim, dtype) on this GPU "
                                   "and cache the fastest (GPU only)")
    p.add_argument("--d", nargs="+", type=int, default=list(BenchSpec.head_dim),
                   help="head dims (default: the bench's, %(default)s)")
    p.add_argument("--dtype", nargs="+", default=list(BenchSpec.dtype), choices=SUPPORTED,
                   help="dtypes (default %(default)s)")
    p.add_argument("--refresh", action="store_true", help="time again even where the cache has a choice")
    p.add_argument("--backward", action="store_true",
                   help="tune flash2's fast backward (kernels/backward_tc.py) instead of the forward")
    p.add_argument("--atomic-dq", action="store_true",
                   help="with --backward: tune the backward with dQ by fp32 atomics (deterministic=False), "
                        "kept apart from the deterministic one's choice")
    _add_mask_args(p, "kernels")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("roofline", help="every schedule's runtime against the GPU's measured ceilings and the "
                                        "simulator's counts, and runtime predicted from them (GPU, or --from-csv) "
                                        "-> CSV + JSON + figure")
    p.add_argument("--out", default="results/roofline",
                   help="folder for roofline.csv, roofline.json and roofline.png (default %(default)s)")
    p.add_argument("--from-csv", metavar="FILE", default=None,
                   help="draw a saved roofline (its CSV or JSON) again, without a GPU: predictions recomputed "
                        "from its runtimes, counts and ceilings")
    p.add_argument("--n", nargs="+", type=int, default=[4096], help="Nq = Nk values (default %(default)s)")
    p.add_argument("--d", nargs="+", type=int, default=[64, 128], help="head dims (default %(default)s)")
    p.add_argument("--batch", type=int, default=BenchSpec.batch, help="B, the batch size (default %(default)s)")
    p.add_argument("--heads", type=int, default=BenchSpec.heads, help="H, the number of heads (default %(default)s)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=BENCH_DTYPES, help="dtypes (default %(default)s)")
    _add_mask_args(p, "rows")
    p.add_argument("--backward", action="store_true", help="also the backward pass of every kind that has one")
    p.add_argument("--tune", action="store_true",
                   help="also flash2's tuned schedule (python -m sandbox tune; timed on this GPU the first time)")
    p.add_argument("--repeats", type=int, default=BenchSpec.repeats,
                   help="timed calls per row and per ceiling, median reported (default %(default)s)")
    p.add_argument("--copy-bytes", type=int, default=COPY_BYTES,
                   help="bytes of the array the bandwidth ceiling copies (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.set_defaults(func=cmd_roofline)

    p = sub.add_parser("ncu", help="Nsight Compute's counters against the simulator and its L2 model "
                                   "(GPU with ncu) -> CSV + JSON + figure", description=_ncu_description(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_ncu_args(p)
    p.set_defaults(func=cmd_ncu)

    p = sub.add_parser("demo", help="the main job: sweeps, figures and a kernel check into --out")
    p.add_argument("--out", default="results",
                   help="folder for data/, figures/ and kernel_check.json (default %(default)s)")
    _add_jobs_arg(p)
    p.set_defaults(func=cmd_demo)
    for p in sub.choices.values():  # a subcommand's errors carry its name (see main)
        p.set_defaults(subparser=p)
    return parser


#: The command's name in usage and error lines: the console script's (``python -m sandbox`` passes its own).
PROG = "attention-sandbox"


def main(argv=None, prog=None):
    """Parse ``argv`` (default: the command line), run the subcommand, return the exit code.

    Bad input, the library's ValueError, TypeError or MemoryError included, is one line on stderr
    and exit code 2, whatever the subcommand.
    """
    from sandbox.vocabulary.runtime import ensure_backend

    ensure_backend()  # the CUDA simulator when there is no GPU, before numba.cuda is imported
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # the subcommand's parser says so, under its own name
            args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # --help, --version, or a usage error (printed, one line)
        return e.code
    args.command_line = [*parser.prog.split(), *argv]  # for result files' provenance, as the user typed it
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as e:
        print(f"error: not enough memory{f' ({_one_line(e)})' if str(e) else ''}; try a smaller problem",
              file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # unwritable output folder, missing input file
        print(f"error: {_one_line(e.strerror or e)}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(error):
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
