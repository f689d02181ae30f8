"""Sweeps: a grid of (schedule, problem) points, counted by the simulator (and timed on a GPU), saved as CSV + JSON.

Files are written atomically (temporary file, then rename) as points complete, so an
interrupted sweep leaves valid partial files; running the same sweep again skips the points
already in them. Each file carries its provenance: package versions, device, command line.
"""

import csv
import dataclasses
import datetime
import itertools
import json
import os
import sys
import tempfile
import time

from sandbox.problem import Problem
from sandbox.kinds import names as registered_kinds
from sandbox.schedule import KINDS, Schedule

#: Columns of a sweep row, in order: the grid point, then what was counted or measured.
POINT_COLUMNS = (
    "kind", "batch", "heads", "n_q", "n_kv", "head_dim", "dtype", "causal",
    "block_q", "block_kv", "thread_q", "thread_kv", "sram_bytes",
)
RESULT_COLUMNS = (
    "hbm_reads", "hbm_writes", "hbm_bytes", "sram_reads", "sram_writes", "sram_bytes_moved", "flops",
    "sram_footprint", "extra_hbm_bytes", "runtime_ms", "hbm_bytes_backward",
)
COLUMNS = POINT_COLUMNS + RESULT_COLUMNS


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A grid. ``sram`` values use the paper's block rule (Schedule.from_sram); otherwise ``blocks``.

    Args:
        kinds, n, head_dim, causal, dtype, batch, heads: problem axes (Nq = Nk = n).
        blocks: (block_q, block_kv) pairs, used when ``sram`` is empty.
        sram: SRAM sizes M in bytes; each point's blocks follow Bc = ⌈M/4d⌉, Br = min(Bc, d).
        thread_tiles: register tiles (t, t); ``None`` means the schedule's default.
        sram_bytes: capacity M assumed by ``blocks`` schedules (default: the Schedule's, 227 KiB).
        time_kernels: also time the kernels (only on a GPU).
    """

    kinds: tuple = KINDS
    n: tuple = (1024,)
    head_dim: tuple = (64,)
    causal: tuple = (False,)
    dtype: tuple = ("float32",)
    batch: tuple = (1,)
    heads: tuple = (1,)
    blocks: tuple = ((64, 64),)
    sram: tuple = ()
    thread_tiles: tuple = (None,)
    sram_bytes: int = None
    time_kernels: bool = False

    def points(self):
        """Every (schedule, problem) of the grid, validated.

        Raises:
            ValueError: naming the first impossible point (unknown kind, tiles over SRAM, ...).
        """
        out = []
        for kind in self.kinds:
            if kind not in registered_kinds():
                raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(registered_kinds())}")
        for kind, n, d, causal, dt, b, h, tile in itertools.product(
            self.kinds, self.n, self.head_dim, self.causal, self.dtype, self.batch, self.heads, self.thread_tiles
        ):
            problem = Problem(batch=b, heads=h, n_q=n, n_kv=n, head_dim=d, dtype=dt, causal=causal)
            tiles = {} if tile is None else {"thread_q": tile, "thread_kv": tile}
            if self.sram:
                for m in self.sram:
                    try:
                        sched = Schedule.from_sram(m, head_dim=d, kind=kind, dtype=dt, **tiles)
                    except ValueError as e:
                        raise ValueError(f"impossible point M={m} d={d} {dt} {kind}: {e}") from None
                    out.append((sched, problem))
            else:
                for br, bc in self.blocks:
                    try:
                        if self.sram_bytes is not None:
                            tiles = {**tiles, "sram_bytes": self.sram_bytes}
                        sched = Schedule(kind, block_q=br, block_kv=bc, **tiles)
                        sched.check_fits(d, dt)
                    except ValueError as e:
                        raise ValueError(f"impossible point Br={br} Bc={bc} d={d} {dt} {kind}: {e}") from None
                    out.append((sched, problem))
        if not out:
            raise ValueError("the grid is empty")
        return out


def point_key(schedule, problem):
    """The identity of a grid point, as the strings a CSV row holds."""
    values = (
        schedule.kind, problem.batch, problem.heads, problem.n_q, problem.n_kv, problem.head_dim,
        problem.dtype.name, problem.causal, schedule.block_q, schedule.block_kv, schedule.thread_q,
        schedule.thread_kv, schedule.sram_bytes,
    )
    return tuple(str(v) for v in values)


def extra_hbm_bytes(schedule, problem):
    """Device memory one forward call allocates beyond q, k, v and O: L, and whatever the kind's
    ``launch`` allocates (S and P for standard, ℓ and m for flash1, the partials for splitkv).

    Read off the kind's own launch function (sandbox/kinds.py), run with a recording allocator
    and no kernels, so that it cannot drift from what the kernels really allocate.
    """
    import numpy as np

    from sandbox import kinds

    sizes = [problem.bh * problem.n_q * 4]  # L, fp32

    def empty(shape, dtype, name):
        sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)

    no_arrays = (None,) * 7  # q, k, v, out, lse, scale, counters: never touched without kernels
    kinds.get(schedule.kind).kernel_module().launch(lambda *args: None, schedule, problem, *no_arrays, empty)
    return sum(sizes)


def measure_point(schedule, problem, time_kernels=False):
    """One row: the simulator's counts (forward; the backward's HBM bytes where its tiles fit), footprints,
    and (on a GPU, if asked) the kernel's median time."""
    from sandbox.lab import simulate

    report = simulate(schedule, problem)
    row = dict(zip(POINT_COLUMNS, point_key(schedule, problem)))
    row.update(
        hbm_reads=report.total("hbm_reads"),
        hbm_writes=report.total("hbm_writes"),
        hbm_bytes=report.hbm_bytes,
        sram_reads=report.total("sram_reads"),
        sram_writes=report.total("sram_writes"),
        sram_bytes_moved=report.sram_bytes,
        flops=report.flops,
        sram_footprint=schedule.sram_footprint(problem.head_dim, problem.dtype),
        extra_hbm_bytes=extra_hbm_bytes(schedule, problem),
        runtime_ms="",
        hbm_bytes_backward="",
    )
    try:
        row["hbm_bytes_backward"] = simulate(schedule, problem, backward=True).hbm_bytes
    except ValueError:  # the backward's tiles (dO, L, D too) may not fit where the forward's do
        pass
    if time_kernels:
        from sandbox.runtime import using_simulator

        if not using_simulator():
            from sandbox.bench import time_attention

            try:
                row["runtime_ms"] = time_attention(schedule, problem)
            except ValueError:  # e.g. tiles over this GPU's shared memory: counted, not timed
                pass
    return row


def provenance(argv=None):
    """Package versions, device, command line and time, for the header of result files."""
    from sandbox.info import environment

    facts = {k: str(v) for k, v in environment().items()}
    facts["command"] = " ".join(argv if argv is not None else sys.argv)
    facts["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return facts


def _atomic_write(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(rows, prov, csv_path, json_path):
    """Write rows as CSV (provenance as '# key: value' lines first) and JSON, each atomically."""
    write_commented_csv(csv_path, prov, COLUMNS, rows)
    _atomic_write(json_path, json.dumps({"provenance": prov, "columns": COLUMNS, "rows": rows}, indent=1) + "\n")


def load(path):
    """(provenance, rows) from a sweep's JSON or CSV file; numbers come back as numbers."""
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        return data["provenance"], [_typed(r) for r in data["rows"]]
    prov, rows = read_commented_csv(path)
    return prov, [_typed(r) for r in rows]


def write_commented_csv(path, header, columns, rows):
    """Write ``rows`` as CSV, atomically, after ``# key: value`` lines for each item of ``header``."""
    import io

    buf = io.StringIO()
    for key, value in header.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue())


def read_commented_csv(path):
    """(provenance, rows as string dicts) from a CSV whose leading ``# key: value`` lines are its provenance."""
    prov, lines = {}, []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("# "):
                key, _, value = line[2:].rstrip("\n").partition(": ")
                prov[key] = value
            else:
                lines.append(line)
    return prov, list(csv.DictReader(lines))


def _typed(row):
    out = {}
    for key, value in row.items():
        if key in ("kind", "dtype"):
            out[key] = value
        elif key == "causal":
            out[key] = value in (True, "True")
        elif value in ("", None):
            out[key] = None
        else:
            out[key] = float(value) if key == "runtime_ms" else int(value)
    return out


def run_sweep(spec, csv_path, json_path=None, progress=None, argv=None, flush_seconds=0.5):
    """Run ``spec``, resuming from ``csv_path`` if it exists; return the rows.

    Args:
        progress: an iterable wrapper (e.g. ``tqdm``) or None.
        flush_seconds: how often, at most, the files are rewritten while the sweep runs.

    The files are saved on completion, every ``flush_seconds``, and on interruption
    (KeyboardInterrupt included), so what was computed is never lost.
    """
    json_path = json_path or os.path.splitext(csv_path)[0] + ".json"
    points = spec.points()
    rows = {}
    if os.path.exists(csv_path):
        _, old = load(csv_path)
        rows = {tuple(str(r[c]) for c in POINT_COLUMNS): r for r in old}
    prov = provenance(argv)
    todo = [(s, p) for s, p in points if point_key(s, p) not in rows]
    iterator = progress(todo) if progress else todo
    last = time.monotonic()
    try:
        for schedule, problem in iterator:
            rows[point_key(schedule, problem)] = measure_point(schedule, problem, spec.time_kernels)
            if time.monotonic() - last > flush_seconds:
                save(list(rows.values()), prov, csv_path, json_path)
                last = time.monotonic()
    finally:
        order = {point_key(s, p): i for i, (s, p) in enumerate(points)}
        ordered = sorted(rows.values(), key=lambda r: order.get(tuple(str(r[c]) for c in POINT_COLUMNS), -1))
        save(ordered, prov, csv_path, json_path)
    return [_typed(r) for r in ordered]
