"""Timing on a GPU: our kernels against every peer in the same process (``python -m sandbox bench``).

How each implementation (``sandbox.lab.peers``) is measured, on each problem:

1. its output on the first input set is checked against float64 attention on sampled rows
   (``sandbox.lab.bench_check``); a wrong implementation is reported "WRONG (...)" and not timed;
2. ``warmup`` calls (which also compile our kernels), then one call whose peak extra device
   memory is measured;
3. ``repeats`` calls, each timed alone by a pair of CUDA events on the default stream, and the
   median reported (with the minimum): the median ignores the odd call slowed by a clock change or
   another process, where a mean would not (``sandbox.lab.timing.time_calls``);
4. calls rotate through several input sets so that no call finds its inputs in L2, left there by
   the call before: as many sets as make 2× the L2 size, at most 8, and never more than a quarter
   of the free device memory holds (``sandbox.lab.timing.rotation_sets``). The L2 size is the
   device's, read from it (``sandbox.lab.info.device_facts``; the machines' sizes side by side:
   ``sandbox.vocabulary.gpus``).

FLOPs (for TFLOP/s): the forward is two matmuls, QKᵀ and PV, 4·B·H·d FLOPs per (query, key)
pair; a causal mask counts only the allowed pairs, exactly: Σ_i min(i + 1, Nk). The backward is
counted as 2.5× the forward (five matmuls against two), the FlashAttention papers' convention.

A memory failure (our launcher's MemoryError, ``torch.cuda.OutOfMemoryError``, CuPy's) is
reported as "OOM: ..." and the bench goes on with the next implementation, cached memory freed.
"""

import dataclasses
import itertools
import json
import math
import os
import statistics

from sandbox.lab import info, records
from sandbox.lab.bench_check import Reference
from sandbox.lab.peers import (
    array_library, default_schedules, free_device_memory, implementations, make_input_sets, peak_extra_bytes,
    recording_warnings, sdpa_unavailable_reason,
)
from sandbox.lab.timing import REPEATS, WARMUP, device_free_bytes, rotation_sets, time_calls
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import ensure_backend, using_simulator

#: Input dtypes benched (bfloat16 inputs are made in PyTorch, the one library here that has them).
BENCH_DTYPES = ("float32", "float16", "bfloat16")

FLOPS_NOTE = ("TFLOP/s: forward 4·B·H·d FLOPs per (query, key) pair, causal counting only the allowed pairs "
              "(exactly Σ_i min(i+1, Nk)); backward 2.5x the forward (5 matmuls vs 2, the FlashAttention papers' "
              "convention)")
COLUMN_NOTES = {
    "ms": "median of the timed calls (CUDA events on the default stream), milliseconds",
    "ms_min": "fastest timed call, milliseconds",
    "tflops": FLOPS_NOTE,
    "x_best_peer": "tflops / the best peer's (an implementation not ours) in the same (dir, dtype, causal, d, n, batch, heads, heads_kv)",
    "heads_kv": "H_kv, the K/V heads (fewer than heads: grouped, query head h reads K/V head h // (heads / heads_kv))",
    "peak_extra_mib": "device memory one call allocates beyond its inputs (its output included), MiB",
    "max_err": "max |result - float64 reference| on sampled rows (for bwd: of the gradient furthest off)",
    "tol": "the absolute tolerance max_err was held to",
    "status": "ok, n/a: why, WRONG (max err ...), OOM: ..., error: ...",
}
COLUMNS = (
    "impl", "ours", "dir", "dtype", "causal", "batch", "heads", "heads_kv", "n", "d", "ms", "ms_min", "tflops", "x_best_peer",
    "peak_extra_mib", "max_err", "tol", "status", "repeats", "n_sets", "flops", "schedule",
)


class GPURequired(RuntimeError):
    """Raised when timing is asked for under Numba's CUDA simulator."""


# -- FLOPs ------------------------------------------------------------------------------------

def attention_pairs(n_q, n_kv, causal):
    """(query, key) pairs attention computes: Nq·Nk, or with the top-left causal mask Σ_{i<Nq} min(i + 1, Nk)."""
    if not causal:
        return n_q * n_kv
    m = min(n_q, n_kv)
    return m * (m + 1) // 2 + (n_q - m) * n_kv


def attention_flops(problem, direction="fwd"):
    """Matmul FLOPs of one call: 4·B·H·d per allowed pair forward (QKᵀ and PV), 2.5x that backward."""
    fwd = 4 * problem.bh * problem.head_dim * attention_pairs(problem.n_q, problem.n_kv, problem.causal)
    return fwd if direction == "fwd" else fwd * 5 // 2


# -- the grid ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Task:
    """One row to produce: an implementation (its adapter) on a problem."""

    problem: object
    impl: object

    @property
    def label(self):
        p = self.problem
        mask = " causal" if p.causal else ""
        grouped = f" H_kv={p.heads_kv}" if p.group > 1 else ""
        return f"{self.impl.name} {self.impl.direction} {p.dtype.name}{mask} N={p.n_q} d={p.head_dim}{grouped}"


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """A bench grid. Nq = Nk = n. Our kinds use 64×64 blocks and 4×4 register tiles unless overridden.

    Args:
        n, head_dim, dtype, causal: problem axes; batch, heads: B and H.
        heads_kv: H_kv, the K/V heads (dividing H; None: H). With fewer, every row runs grouped: the
            SDPA peers with ``enable_gqa=True`` (a backend that refuses is n/a, with its reason), our
            kinds on their plain builds (the fast builds take no grouped heads; the row's schedule
            column says so), the peers without grouped heads n/a.
        impls: implementation names (``sandbox.lab.peers.IMPL_NAMES``); None: all.
        backward: also backward rows (sdpa-* through autograd, our standard and flash2).
        backward_only: backward rows alone (implies ``backward``).
        atomic_dq: also a ``<kind>-atomic-dq`` backward row of each of our kinds, run with
            ``deterministic=False`` (dQ added by atomics where the fast backward can).
        repeats: timed calls per row (≥ 1; 10 by default, the median reported).
        warmup: untimed calls before them.
        block_q, block_kv, thread_q, thread_kv: our schedules' overrides; math: flash2's arithmetic
            (Schedule.math: "tf32x3" is its tensor-core build), None for the default.
        tune: "flash2" runs the autotuned schedule of each (head_dim, dtype, causal) (sandbox/lab/autotune.py),
            unless a schedule override is given.

    Raises:
        ValueError, TypeError: an unknown implementation, an impossible schedule or problem.
    """

    n: tuple = (1024, 4096, 16384)
    head_dim: tuple = (64, 128)
    batch: int = 2
    heads: int = 16
    heads_kv: int = None
    dtype: tuple = ("float32",)
    causal: tuple = (False,)
    impls: tuple = None
    backward: bool = False
    backward_only: bool = False
    atomic_dq: bool = False
    repeats: int = REPEATS
    warmup: int = WARMUP
    block_q: int = None
    block_kv: int = None
    thread_q: int = None
    thread_kv: int = None
    math: str = None
    seed: int = 0
    tune: bool = False

    def __post_init__(self):
        if self.backward_only:
            object.__setattr__(self, "backward", True)
        if self.repeats < 1:
            raise ValueError(f"repeats: expected at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected at least 0, got {self.warmup}")
        for dt in self.dtype:
            if dt not in BENCH_DTYPES:
                raise ValueError(f"dtype: the bench takes {' or '.join(BENCH_DTYPES)}, got {dt!r}")
        self.implementations()
        self.problems()

    def schedules(self):
        return default_schedules(self.block_q, self.block_kv, self.thread_q, self.thread_kv, tune=self.tune,
                                 math=self.math)

    def implementations(self):
        impls = implementations(self.impls, self.backward, self.schedules(), atomic_dq=self.atomic_dq)
        return [i for i in impls if i.direction == "bwd"] if self.backward_only else impls

    def problems(self):
        """Problems in run order: grouped by inputs (dtype, d, n), then mask."""
        return [
            Problem(self.batch, self.heads, n, n, d, dtype=dt, causal=c, heads_kv=self.heads_kv)
            for dt, d, n, c in itertools.product(self.dtype, self.head_dim, self.n, self.causal)
        ]

    def tasks(self):
        impls = self.implementations()
        fwd = [i for i in impls if i.direction == "fwd"]
        bwd = [i for i in impls if i.direction == "bwd"]
        return [Task(p, i) for p in self.problems() for i in fwd + bwd]


# -- one row ----------------------------------------------------------------------------------

def base_row(task, spec):
    p, impl = task.problem, task.impl
    row = dict.fromkeys(COLUMNS, "")
    row.update(
        impl=impl.name, ours=impl.ours, dir=impl.direction, dtype=p.dtype.name, causal=p.causal, batch=p.batch,
        heads=p.heads, heads_kv=p.heads_kv, n=p.n_q, d=p.head_dim, repeats=spec.repeats, flops=attention_flops(p, impl.direction),
        schedule=impl.describe(p) if impl.ours else "",
    )
    return row


def is_oom(error):
    """True for the out-of-memory errors of our launcher, PyTorch, CuPy and Numba."""
    if isinstance(error, MemoryError):  # ours (kernels.launch), CuPy's OutOfMemoryError
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    return "CUDA_ERROR_OUT_OF_MEMORY" in str(error) or "out of memory" in str(error).lower()


def short_message(error, limit=100):
    """A one-line summary of ``error``: our launcher's "cannot allocate S (...) float32 (X GiB)",
    PyTorch's first two sentences ("CUDA out of memory. Tried to allocate X GiB."), else its first line."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if " on the GPU: " in text:
        text = text.split(" on the GPU: ")[0]
    elif ". " in text:
        text = ". ".join(text.split(". ")[:2]).rstrip(".") + "."
    return text if len(text) <= limit else text[: limit - 3] + "..."


def measure(task, spec, sets, reference, timer=time_calls):
    """One row: check, warm up, measure memory, time (see the module docstring).

    Args:
        sets: the problem's input sets (``InputSet``), rotated through.
        reference: a zero-argument callable returning the problem's ``bench_check.Reference``.
        timer: ``time_calls`` or a stand-in with its signature (tests).
    """
    row = base_row(task, spec)
    impl, problem = task.impl, task.problem
    ok, why = impl.available(problem)
    if not ok:
        row["status"] = f"n/a: {why}"
        return row
    try:
        ref = reference()
    except Exception as e:
        row["status"] = f"{'OOM' if is_oom(e) else 'error'}: reference: {short_message(e)}"
        return row
    free_device_memory()
    calls = None
    try:
        with impl.context():
            calls = [impl.prepare(s, problem) for s in sets]
            with recording_warnings() as caught:
                try:
                    result = calls[0]()
                except RuntimeError as e:
                    reason = sdpa_unavailable_reason(e, caught)
                    if reason is None:
                        raise
                    row["status"] = f"n/a: {reason}"
                    return row
            good, err, atol, tensor = ref.check(result, lambda scale: impl.tolerance(problem, scale))
            del result
            row.update(max_err=err, tol=atol)
            if not good:
                row["status"] = f"WRONG (max err {err:.3g} in {tensor}, tolerance {atol:.3g})"
                return row
            for i in range(spec.warmup):
                calls[(i + 1) % len(calls)]()
            row["peak_extra_mib"] = peak_extra_bytes(impl.memory, calls[0]) / 2**20
            times = timer(calls, spec.repeats)
        ms = statistics.median(times)
        row.update(ms=ms, ms_min=min(times), n_sets=len(sets), status="ok")
        row["tflops"] = row["flops"] / (ms * 1e-3) / 1e12 if ms > 0 else ""
    except Exception as e:  # one implementation's failure is a row, not the end of the bench
        row["status"] = f"OOM: {short_message(e)}" if is_oom(e) else f"error: {type(e).__name__}: {short_message(e)}"
    finally:
        del calls
        free_device_memory()
    return row


# -- the run ----------------------------------------------------------------------------------

def run_bench(spec, csv_path, progress=None, argv=None, rows=None, timer=time_calls, require_gpu=True, gpu=None):
    """Run ``spec``: one row per task, the CSV and JSON rewritten (atomically) after each.

    Args:
        csv_path: the CSV; the JSON sidecar (provenance, columns, rows) goes beside it.
        progress: an iterable wrapper over the tasks (each has a ``label``), e.g. a tqdm bar.
        rows: a list to append rows to as they complete (the caller keeps them on an interrupt).
        timer, require_gpu: for the tests, which run the whole path under the CUDA simulator.
        gpu: the machine whose L2 the input rotation covers (a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS`` or
            a DeviceFacts); default the device's, read from it. Without a GPU to read it must be given.

    Returns:
        the rows, with ``x_best_peer`` filled in.

    Raises:
        GPURequired: under the CUDA simulator (unless ``require_gpu`` is false).
        ValueError: no ``gpu`` and no device to read its facts from.
        OSError: the output files cannot be written.
    """
    ensure_backend()
    if require_gpu and using_simulator():
        raise GPURequired("bench needs a CUDA GPU: none was found, so Numba's CUDA simulator is active "
                          "and its timings would mean nothing")
    json_path = os.path.splitext(csv_path)[0] + ".json"
    rows = [] if rows is None else rows
    facts = info.resolve_gpu(gpu)
    prov = bench_provenance(argv)
    prov["device facts"] = dataclasses.asdict(facts)
    save(rows, prov, csv_path, json_path)  # fail now, not after the first row, if the folder is unwritable
    lib = array_library()
    if "bfloat16" in spec.dtype and lib != "torch":
        raise ValueError("bfloat16 rows need PyTorch with CUDA: the inputs are made there (CuPy and NumPy have no bfloat16)")
    tasks = spec.tasks()
    inputs_key = sets = None
    references = {}
    for task in progress(tasks) if progress else tasks:
        p, backward = task.problem, task.impl.direction == "bwd"
        key = (p.dtype.name, p.head_dim, p.n_q)
        if key != inputs_key:  # a new (dtype, d, n): new input sets, shared by masks and directions
            sets = references = None
            free_device_memory()
            per_set = ((2 if spec.backward else 1) * p.bh + 2 * p.batch * p.heads_kv) * p.n_q * p.head_dim * p.dtype.itemsize
            n_sets = rotation_sets(per_set, facts.l2_bytes, device_free_bytes())
            inputs_key, references = key, {}
            try:
                sets = make_input_sets(p, n_sets, spec.backward, spec.seed, lib)
            except Exception as e:
                if not is_oom(e):
                    raise
                sets = e
        if isinstance(sets, Exception):
            row = base_row(task, spec)
            row["status"] = f"OOM: inputs: {short_message(sets)}"
        else:
            ref_key = (p.causal, backward)
            if ref_key not in references:
                references[ref_key] = _lazy(lambda s=sets[0], p=p, d=task.impl.direction: Reference(s, p, d))
            row = measure(task, spec, sets, references[ref_key], timer)
        rows.append(row)
        add_ratios(rows)
        save(rows, prov, csv_path, json_path)
    return rows


def _lazy(make):
    """A zero-argument callable that makes its value on first call and keeps it."""
    box = []
    return lambda: box[0] if box else (box.append(make()) or box[0])


def add_ratios(rows):
    """Fill each timed row's ``x_best_peer``: its TFLOP/s over the best peer's (not ours) in its group."""
    group = lambda r: (r["dir"], r["dtype"], r["causal"], r["d"], r["n"], r["batch"], r["heads"], r["heads_kv"])  # noqa: E731
    best = {}
    for r in rows:
        if not r["ours"] and r["status"] == "ok" and r["tflops"] != "":
            best[group(r)] = max(best.get(group(r), 0.0), r["tflops"])
    for r in rows:
        b = best.get(group(r))
        r["x_best_peer"] = r["tflops"] / b if b and r["tflops"] != "" else ""
    return rows


# -- output -----------------------------------------------------------------------------------

def _fmt(value, spec):
    return "" if value in ("", None) else format(value, spec)


def table_rows(rows):
    """The printed table's header and rows, as strings."""
    header = ["impl", "dir", "dtype", "causal", "d", "N", "ms", "TFLOP/s", "x best peer", "peak MiB", "max err",
              "status"]
    body = [
        [r["impl"], r["dir"], r["dtype"], "yes" if r["causal"] else "no", str(r["d"]), str(r["n"]),
         _fmt(r["ms"], ".4g"), _fmt(r["tflops"], ".3g"), _fmt(r["x_best_peer"], ".2f"),
         _fmt(r["peak_extra_mib"], ".1f"), _fmt(r["max_err"], ".2g"), r["status"]]
        for r in rows
    ]
    return header, body


def format_table(rows):
    """A plain-text table of ``rows`` with the FLOP convention above it."""
    header, body = table_rows(rows)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda r: "  ".join(x.ljust(w) if i in (0, len(r) - 1) else x.rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    notes = [FLOPS_NOTE + ".",
             "x best peer: TFLOP/s over the best peer's in the same (dir, dtype, causal, d, N); "
             "peak MiB: device memory one call allocates beyond its inputs."]
    return "\n".join(notes + [line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def save(rows, prov, csv_path, json_path):
    """Write the CSV (provenance and column notes as '# key: value' lines first) and the JSON, each atomically."""
    notes = {f"column {key}": value for key, value in COLUMN_NOTES.items()}
    records.write_commented_csv(csv_path, {**prov, **notes}, COLUMNS, rows)
    finite = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731  (strict JSON)
    doc = {"provenance": prov, "columns": COLUMNS, "column_notes": COLUMN_NOTES,
           "rows": [{k: finite(v) for k, v in r.items()} for r in rows]}
    records.atomic_write(json_path, json.dumps(doc, indent=1) + "\n")


def load(csv_path):
    """(provenance, rows) from a bench CSV, values as strings (numbers and booleans left to the reader)."""
    return records.read_commented_csv(csv_path)


def bench_provenance(argv=None):
    """The result files' provenance (package versions, device, command, date) plus what a timing depends
    on: driver and CUDA versions, the PyTorch and CuPy actually imported, the git commit."""
    prov = records.provenance(argv)
    prov.update(records.cuda_versions())
    for module in ("torch", "cupy"):
        try:
            prov[f"{module} (imported)"] = __import__(module).__version__
        except ImportError:
            prov[f"{module} (imported)"] = "not installed"
    prov["git commit"] = records.git_commit()
    return prov
