"""Grouped K/V heads in L2: DRAM bytes against the group size H / H_kv (the ``gqa_l2`` experiment).

With H_kv < H K/V heads, query head h reads K/V head h // (H / H_kv), so the H / H_kv query heads
of a group request the same K and V tiles. What they request from global memory does not change
with grouping (``simulator/counts.py``: each query head still reads its K/V tiles), but when the
group's heads are resident together the L2 serves all but the first request: K and V come from
DRAM about once per K/V head. The L2 model (``simulator/l2.py``) replays every kind's request
stream (``simulator/streams.py``), forward and backward, at one problem for each H_kv, and each
row holds the bytes requested (= the simulator's tile counts) beside the DRAM bytes it predicts,
in total and for K and V alone. The backward of grouped heads also writes dK, dV as fp32 partials
per query head and sums them per group (``group_sum``): its dK/dV traffic grows with grouping.

    python -m sandbox sweep --experiment gqa_l2 --out docs/data/gqa_l2.csv
    python -m sandbox plot gqa_l2 --data docs/data/gqa_l2.json --out docs/figures
"""

import dataclasses
import json
import multiprocessing
import os
import signal

from sandbox.lab.records import atomic_write, provenance, read_commented_csv, write_commented_csv
from sandbox.vocabulary.gpus import known_gpu
from sandbox.vocabulary.kinds import get as kind_traits
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import Schedule
from simulator import table
from simulator.l2 import simulate_dram

#: The tensors a group shares: its query heads request the same K and V addresses (as many bytes
#: as without grouping).
KV_TENSORS = ("K", "V")
#: The backward's tensors whose requests change with grouping: dK, dV, written per K/V head, and
#: with grouping first as fp32 partials per query head, summed per group.
GRADIENT_KV_TENSORS = ("dK", "dV", "dKpart", "dVpart")

#: Columns of a row: the point, then bytes (requested: the simulator's counts; dram: the L2 model's).
POINT_COLUMNS = ("kind", "direction", "batch", "heads", "heads_kv", "group", "n", "head_dim", "dtype", "block_q",
                 "block_kv", "gpu", "l2_bytes")
RESULT_COLUMNS = ("requested_bytes", "requested_kv_bytes", "dram_bytes", "dram_kv_read_bytes", "l2_read_hit_rate",
                  "requested_by_tensor", "dram_read_by_tensor")
COLUMNS = POINT_COLUMNS + RESULT_COLUMNS
_TEXT = ("kind", "direction", "dtype", "gpu")
_BY_TENSOR = ("requested_by_tensor", "dram_read_by_tensor")


def l2_kinds():
    """The registered kinds with an L2 request stream (``simulator/table.py``)."""
    return tuple(k for k in table.names() if table.get(k).l2 is not None)


@dataclasses.dataclass(frozen=True)
class GroupedSpec:
    """The grid: every kind with an L2 request stream, forward (and backward where the kind has one),
    at one problem for each H_kv.

    Args:
        kinds: kind names; None: every kind with an L2 request stream, read when the grid is made.
        batch, heads, n, head_dim, dtype: the problem (B, H, Nq = Nk = N, d).
        heads_kv: H_kv values, each dividing H.
        blocks: (Br, Bc) of every kind's schedule.
        gpu: the machine whose L2 and SMs the model takes (``sandbox.vocabulary.gpus.KNOWN_GPUS``).
        backward: also the backward pass of the kinds that have one.
    """

    kinds: tuple = None
    batch: int = 1
    heads: int = 32
    heads_kv: tuple = (32, 16, 8, 4, 2, 1)
    n: int = 4096
    head_dim: int = 128
    dtype: str = "float32"
    blocks: tuple = (64, 64)
    gpu: str = "h200"
    backward: bool = True

    def points(self):
        """(kind, direction, schedule, problem) of every row, in order.

        Raises:
            ValueError: a kind without an L2 request stream, an H_kv that does not divide H.
        """
        names = l2_kinds() if self.kinds is None else tuple(self.kinds)
        for kind in names:
            if kind not in l2_kinds():
                raise ValueError(f"{kind!r} has no L2 request stream; expected one of {', '.join(l2_kinds())}")
        out = []
        for kind in names:
            schedule = Schedule(kind, block_q=self.blocks[0], block_kv=self.blocks[1])
            directions = ("fwd", "bwd") if self.backward and kind_traits(kind).backward is not None else ("fwd",)
            for direction in directions:
                for h_kv in self.heads_kv:
                    problem = Problem(self.batch, self.heads, self.n, self.n, self.head_dim, dtype=self.dtype,
                                      heads_kv=h_kv)
                    out.append((kind, direction, schedule, problem))
        return out

    def axes(self):
        """The grid as JSON holds it, for the files' provenance."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def measure_grouped(schedule, problem, direction, gpu):
    """One row: the L2 model's DRAM bytes and the bytes requested, in total and for K and V."""
    r = simulate_dram(schedule, problem, gpu=gpu, backward=direction == "bwd")
    tensors = r.per_tensor
    requested = {t: v["requested_read_bytes"] + v["requested_write_bytes"] for t, v in tensors.items()}
    facts = known_gpu(gpu)
    return {
        "kind": schedule.kind, "direction": direction, "batch": problem.batch, "heads": problem.heads,
        "heads_kv": problem.heads_kv, "group": problem.group, "n": problem.n_q, "head_dim": problem.head_dim,
        "dtype": problem.dtype.name, "block_q": schedule.block_q, "block_kv": schedule.block_kv,
        "gpu": facts.name, "l2_bytes": facts.l2_bytes,
        "requested_bytes": r.requested_bytes,
        "requested_kv_bytes": sum(requested.get(t, 0) for t in KV_TENSORS),
        "dram_bytes": r.dram_bytes,
        "dram_kv_read_bytes": sum(tensors[t]["read_bytes"] for t in KV_TENSORS if t in tensors),
        "l2_read_hit_rate": r.l2_read_hit_rate,
        "requested_by_tensor": requested,
        "dram_read_by_tensor": {t: v["read_bytes"] for t, v in tensors.items()},
    }


class _Sized:
    """An iterator with a length, for a progress bar's total."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(self.it)


def _measure(task):
    return measure_grouped(*task)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C is the parent's to handle: it stops the pool)


def default_jobs():
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def measure_all(spec, progress=None, jobs=1):
    """:func:`measure_grouped` of every point of ``spec``, in order, over ``jobs`` processes (1: in
    this one; more start fresh interpreters, which import the caller's main module: a script needs
    its ``if __name__ == "__main__":`` guard, as with any ``multiprocessing`` pool). Each point is a
    whole L2 model run, independent of the others, so the grid's time divides by the cores, up to
    its slowest point; the rows are the same either way. Ctrl-C stops every process."""
    tasks = [(s, p, direction, spec.gpu) for _, direction, s, p in spec.points()]
    jobs = min(int(jobs), len(tasks))
    wrap = progress or (lambda it: it)
    if jobs <= 1:
        return [_measure(t) for t in wrap(tasks)]
    # spawn: a fresh interpreter per worker (forking a process that may hold threads can deadlock)
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_ignore_sigint)
    try:
        rows = list(wrap(_Sized(pool.imap(_measure, tasks), len(tasks))))  # in order, one point at a time
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return rows


def run_grouped(spec, csv_path, json_path=None, progress=None, argv=None, jobs=1):
    """Run ``spec`` and write its rows as CSV and JSON (each with its provenance); return the rows.

    Args:
        csv_path: the CSV; the JSON goes beside it (``json_path``, default: the same stem + ``.json``).
        progress: an iterable wrapper (e.g. ``tqdm``) or None.
        jobs: processes (:func:`measure_all`).
    """
    csv_path = os.fspath(csv_path)
    json_path = os.fspath(json_path) if json_path else os.path.splitext(csv_path)[0] + ".json"
    rows = measure_all(spec, progress, jobs)
    prov = provenance(argv)
    prov["grids"] = [spec.axes()]
    for path in (csv_path, json_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_commented_csv(csv_path, {**prov, "grids": json.dumps(prov["grids"])}, COLUMNS,
                        [{**r, **{c: json.dumps(r[c]) for c in _BY_TENSOR}} for r in rows])
    atomic_write(json_path, json.dumps({"provenance": prov, "columns": COLUMNS, "rows": rows}, indent=1) + "\n")
    return rows


def load_grouped(path):
    """(provenance, rows) of a ``gqa_l2`` file, JSON or CSV, numbers as numbers.

    Raises:
        ValueError: the file is not one (columns missing), naming it and the command that writes one.
    """
    path = os.fspath(path)
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        prov, rows = data.get("provenance", {}), data.get("rows", [])
    else:
        prov, rows = read_commented_csv(path)
        rows = [{c: (r[c] if c in _TEXT else json.loads(r[c])) for c in COLUMNS if c in r} for r in rows]
    missing = sorted({c for r in rows for c in COLUMNS if c not in r})
    if missing or not rows:
        raise ValueError(f"{path} is not a gqa_l2 file ({'no columns ' + ', '.join(missing) if missing else 'no rows'}): "
                         "python -m sandbox sweep --experiment gqa_l2 writes one")
    return prov, rows
