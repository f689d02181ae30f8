"""Command line: thin over library functions; it parses, calls, prints. Bad input: one line on stderr, exit 2.

    python -m sandbox info
    python -m sandbox simulate --kind flash2 --block-q 64 --block-kv 64 --n 4096 --d 64 --causal
    python -m sandbox run      [--kind flash2] --n 40 --d 16      (GPU, or Numba's CUDA simulator)
"""

import argparse
import sys

from sandbox.schedule import KINDS

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
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--causal", action="store_true")
    p.add_argument("--scale", type=float, default=None)


def _add_schedule_args(p, block_default, kind_default, tile_default=None):
    p.add_argument("--kind", default=kind_default, help=f"one of {', '.join(KINDS)}")
    p.add_argument("--block-q", type=int, default=block_default, help="Br")
    p.add_argument("--block-kv", type=int, default=block_default, help="Bc")
    p.add_argument("--thread-q", type=int, default=tile_default, help="rows of each thread's register tile")
    p.add_argument("--thread-kv", type=int, default=tile_default, help="columns of each thread's register tile")
    p.add_argument("--sram-bytes", type=int, default=None, help="M, the SRAM capacity assumed (default 227 KiB)")


def _problem(a):
    from sandbox.problem import Problem

    return Problem(
        batch=a.batch, heads=a.heads, n_q=a.n_q or a.n, n_kv=a.n_kv or a.n, head_dim=a.d,
        dtype=a.dtype, causal=a.causal, scale=a.scale,
    )


def _schedule(a, kind):
    from sandbox.schedule import Schedule

    extra = {} if a.sram_bytes is None else {"sram_bytes": a.sram_bytes}
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
    kinds = KINDS if a.kind == "all" else (a.kind,)
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
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "kind", None) not in (None, "all") + KINDS:
        print(f"error: unknown schedule kind {args.kind!r}; expected one of {', '.join(KINDS)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
