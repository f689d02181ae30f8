"""A roofline of every schedule: measured runtime against the simulator's HBM bytes and FLOPs, and
runtime predicted from those counts and the GPU's measured ceilings.

    python -m sandbox roofline --out results/roofline            (GPU: ceilings and runtimes, one run)
    python -m sandbox roofline --from-csv results/roofline/roofline.csv --out figures   (no GPU)

The rows (:func:`entries`): every registered kind's forward at the bench's default schedule and
build (``sandbox.lab.peers.ours``: flash2 runs its fast FMA build, ``flash2-plain`` the same
schedule's plain build), flash2's tensor-core build (``math="tf32x3"``) at :data:`TC_BLOCKS`,
with ``tune`` flash2's tuned schedule, and with ``backward`` every kind's backward pass at the
default schedule and flash2's tensor-core backward. For each:

- **HBM bytes**: the simulator's count (``simulate``), the algorithm's global-memory traffic. Part
  of it may be served by the L2 (K and V re-read by every Q block of a head), so a row whose
  memory term decides may run faster than predicted.
- **FLOPs**: the matmul FLOPs the schedule executes, the simulator's count (whole visited tiles;
  the flash backward's seven products). The bench's convention (exact causal pairs, the backward
  2.5× the forward) is kept beside them as ``flops_convention``. Softmax arithmetic is not counted.
- **arithmetic**: "tf32x3" for the tensor-core build, "fma" for every other build; its ceiling is
  ``Ceilings.flops_per_s`` (TF32 ``mma.sync``'s over three for "tf32x3").
- **prediction**: max(HBM bytes / copy bandwidth, FLOPs / the arithmetic's ceiling), and the
  relative error (measured − predicted) / measured.

Runtimes are the bench's (``sandbox.lab.bench.measure``: checked against float64 first, then the
median of ``repeats`` calls with inputs rotated out of L2). The files (CSV with the ceilings and
provenance as ``# key: value`` lines, JSON, PNG) are rewritten after every row, so an interrupted
run keeps the rows done.
"""

import dataclasses
import itertools
import json
import math
import os

from kernels.builds import choose_backward_build, choose_build
from kernels.flash2_tc import tc_schedule
from kernels.flash2_tc16 import tc16_schedule
from sandbox.lab import info, records
from sandbox.lab.bench import GPURequired, BenchSpec, Task, attention_flops, bench_provenance, measure
from sandbox.lab.bench_check import Reference
from sandbox.lab.ceilings import COPY_BYTES, OPTIONAL, Ceilings, measure_ceilings
from sandbox.lab.colors import kind_color
from sandbox.lab.peers import (
    Ours, backward_names, default_schedules, free_device_memory, make_input_sets, array_library, ours,
)
from sandbox.lab.timing import REPEATS, device_free_bytes, rotation_sets, time_calls
from sandbox.vocabulary.runtime import ensure_backend, using_simulator
from simulator.entry import simulate

#: (Br, Bc) of the tensor-core row per head dim: the tuner's choices on the H100 (BENCHMARKS.md,
#: H100 forward table); :data:`TC_DEFAULT_BLOCKS` for other head dims.
TC_BLOCKS = {64: (64, 64), 128: (128, 32)}
TC_DEFAULT_BLOCKS = (64, 64)
#: The rows' names beyond the bench's: flash2's tensor-core build, and its tuned schedule.
TC_ROW, TUNED_ROW = "flash2-tf32x3", "flash2-tuned"
#: flash2's 16-bit tensor-core build, a forward row of 16-bit problems, at (Br, Bc, a warp's rows)
#: :data:`TC16_BLOCKS` (no spills at d = 64 and 128 without a mask; the bench's 16-bit schedule: BENCHMARKS.md,
#: "16-bit tensor cores: flash2's forward").
TC16_ROW, TC16_BLOCKS = "flash2-f16", (128, 64, 32)

#: Columns of a row: what ran, what was counted, what was measured, what follows from them.
COLUMNS = (
    "name", "dir", "kind", "build", "arithmetic", "dtype", "causal", "batch", "heads", "n", "d", "schedule",
    "hbm_bytes", "flops", "flops_convention",
    "ms", "ms_min", "max_err", "status",
    "intensity", "ceiling_flops_per_s", "memory_ms", "compute_ms", "predicted_ms", "bound",
    "achieved_flops_per_s", "achieved_bytes_per_s", "rel_error",
)
#: Columns a saved file must hold for :func:`from_csv` to draw it again.
NEEDED = ("name", "dir", "kind", "arithmetic", "hbm_bytes", "flops", "ms", "status")
_INTS = ("batch", "heads", "n", "d", "hbm_bytes", "flops", "flops_convention")
_FLOATS = ("ms", "ms_min", "max_err", "intensity", "ceiling_flops_per_s", "memory_ms", "compute_ms", "predicted_ms",
           "achieved_flops_per_s", "achieved_bytes_per_s", "rel_error")
COLUMN_NOTES = {
    "hbm_bytes": "the simulator's HBM bytes (reads + writes) of the schedule on the problem",
    "flops": "matmul FLOPs the schedule executes (the simulator's count: whole visited tiles)",
    "flops_convention": "the bench's FLOPs (4·B·H·d per allowed pair forward, 2.5x that backward)",
    "ms": "the bench's median of the timed calls, milliseconds",
    "intensity": "flops / hbm_bytes, FLOPs per HBM byte",
    "predicted_ms": "max(hbm_bytes / copy bandwidth, flops / the arithmetic's ceiling), milliseconds",
    "bound": "memory or compute: the larger term of the prediction",
    "rel_error": "(ms - predicted_ms) / ms",
}
#: Marker of each build in the figure.
BUILD_MARKERS = {"plain": "o", "counting": "o", "fast-fma": "s", "fast-tf32x3": "^", "fast-f16": "D"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row to run: our kernels (``name``: the bench's row name, or :data:`TC_ROW`, :data:`TUNED_ROW`)."""

    name: str
    direction: str
    schedule: object
    problem: object
    fast: object = None

    @property
    def label(self):
        p = self.problem
        return f"{self.name} {self.direction} {p.dtype.name}{' causal' if p.causal else ''} N={p.n_q} d={p.head_dim}"


def entries(problems, backward=False, tune=False):
    """The rows of each problem, grouped by problem (they share its inputs): see the module docstring.

    Args:
        problems: :class:`~sandbox.vocabulary.problem.Problem` objects.
        backward: add a backward row for every kind with a backward pass.
        tune: add flash2's tuned schedule (``sandbox.lab.autotune``: timed on this GPU the first time).
    """
    schedules = default_schedules()
    out = []
    for p in problems:
        out += [Entry(name, "fwd", schedules[name], p, fast) for name, (_, fast) in ours().items()]
        tc = tc_schedule(*TC_BLOCKS.get(p.head_dim, TC_DEFAULT_BLOCKS))
        out.append(Entry(TC_ROW, "fwd", tc, p, True))
        if p.dtype.itemsize == 2:
            out.append(Entry(TC16_ROW, "fwd", tc16_schedule(*TC16_BLOCKS), p, True))
        if tune:
            from sandbox.lab.autotune import tuned_schedule

            out.append(Entry(TUNED_ROW, "fwd", tuned_schedule(p.head_dim, p.dtype.name, p.causal), p))
        if backward:
            # (a kind's "-plain" backward row would repeat its own on the default schedule: left out)
            out += [Entry(name, "bwd", schedules[name], p) for name in backward_names()
                    if name in schedules and ours()[name][1] is not False]
            out.append(Entry(TC_ROW, "bwd", tc, p, True))
    return out


def counted(entry):
    """The entry's row without measurements: its build and arithmetic, HBM bytes and FLOPs.

    A build that cannot run (the tensor-core build at a head dim it does not take, ...) gives a
    row whose ``status`` says why.
    """
    s, p = entry.schedule, entry.problem
    row = dict.fromkeys(COLUMNS)
    row.update(name=entry.name, dir=entry.direction, kind=s.kind, dtype=p.dtype.name, causal=p.causal,
               batch=p.batch, heads=p.heads, n=p.n_q, d=p.head_dim, schedule=s.describe(), status="")
    backward = entry.direction == "bwd"
    try:
        build = (choose_backward_build if backward else choose_build)(s, p.head_dim, fast=entry.fast)
        report = simulate(s, p, backward=backward)
    except ValueError as e:
        row["status"] = f"n/a: {' '.join(str(e).split())}"
        return row
    row["build"] = build.name
    row["arithmetic"] = build.name[len("fast-"):] if build.fast else "fma"
    row.update(hbm_bytes=report.hbm_bytes, flops=report.flops, flops_convention=attention_flops(p, entry.direction))
    return row


# -- the model --------------------------------------------------------------------------------

def predict(hbm_bytes, flops, arithmetic, ceilings):
    """The roofline's prediction for a row: dict of ``intensity`` (FLOPs per byte), the arithmetic's
    ``ceiling_flops_per_s``, the two terms ``memory_ms`` and ``compute_ms``, ``predicted_ms`` (the
    larger) and ``bound`` ("memory" or "compute").

    Raises:
        ValueError: no HBM bytes (the intensity has no meaning), or an unknown arithmetic.
    """
    if not hbm_bytes > 0:
        raise ValueError(f"hbm_bytes: expected a positive count, got {hbm_bytes!r}")
    ceiling = ceilings.flops_per_s(arithmetic)
    memory_ms = hbm_bytes / ceilings.hbm_bytes_per_s * 1e3
    compute_ms = flops / ceiling * 1e3
    return {"intensity": flops / hbm_bytes, "ceiling_flops_per_s": ceiling, "memory_ms": memory_ms,
            "compute_ms": compute_ms, "predicted_ms": max(memory_ms, compute_ms),
            "bound": "memory" if memory_ms >= compute_ms else "compute"}


def derive(row, ceilings):
    """``row`` with its prediction and, where it was timed, what it achieved and the prediction's error."""
    if row.get("hbm_bytes") is None or row.get("arithmetic") is None:
        return row
    row.update(predict(row["hbm_bytes"], row["flops"], row["arithmetic"], ceilings))
    ms = row.get("ms")
    if ms is not None and ms > 0:
        row["achieved_flops_per_s"] = row["flops"] / (ms * 1e-3)
        row["achieved_bytes_per_s"] = row["hbm_bytes"] / (ms * 1e-3)
        row["rel_error"] = (ms - row["predicted_ms"]) / ms
    return row


# -- running on the GPU -----------------------------------------------------------------------

def run_roofline(out_dir, rows_to_run, *, repeats=REPEATS, seed=0, copy_bytes=COPY_BYTES, argv=None, progress=None,
                 timer=time_calls, require_gpu=True, gpu=None, ceilings=None, rows=None):
    """Measure the ceilings, then time and count every entry; write ``roofline.csv``, ``.json``, ``.png``.

    Args:
        out_dir: the folder of the files (created).
        rows_to_run: :class:`Entry` objects (:func:`entries`), grouped by problem.
        progress: an iterable wrapper over the entries, e.g. a tqdm bar.
        ceilings: (Ceilings, details) to use instead of measuring them (the tests).
        rows: a list the rows are appended to as they complete (the caller keeps them on an interrupt).
        timer, require_gpu, gpu: for the tests, which run the path under the CUDA simulator (``gpu``:
            the machine whose L2 the bench's input rotation covers, default the device's).

    Returns:
        (rows, Ceilings, paths of the CSV, JSON and PNG).

    Raises:
        GPURequired: under the CUDA simulator (unless ``require_gpu`` is false).
    """
    ensure_backend()
    if require_gpu and using_simulator():
        raise GPURequired("roofline needs a CUDA GPU to measure its ceilings and runtimes: none was found, so "
                          "Numba's CUDA simulator is active (--from-csv draws a saved run without one)")
    facts = info.resolve_gpu(gpu)
    prov = bench_provenance(argv)
    prov["device facts"] = dataclasses.asdict(facts)
    paths = _paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    roof, details = ceilings if ceilings is not None else measure_ceilings(facts.sms, copy_bytes, repeats, timer)
    prov["ceiling runs"] = details
    rows = [] if rows is None else rows
    save(rows, roof, prov, *paths[:2])
    lib = array_library()
    todo = progress(rows_to_run) if progress else rows_to_run
    for problem, group in itertools.groupby(todo, key=lambda e: e.problem):
        group = list(group)
        backward = any(e.direction == "bwd" for e in group)
        per_set = (4 if backward else 3) * problem.bh * problem.n_q * problem.head_dim * problem.dtype.itemsize
        sets = make_input_sets(problem, rotation_sets(per_set, facts.l2_bytes, device_free_bytes()), backward, seed,
                               lib)
        spec = BenchSpec(n=(problem.n_q,), head_dim=(problem.head_dim,), batch=problem.batch, heads=problem.heads,
                         dtype=(problem.dtype.name,), causal=(problem.causal,), impls=(), repeats=repeats, seed=seed)
        references = {}
        for entry in group:
            row = counted(entry)
            if not row["status"]:
                if entry.direction not in references:
                    references[entry.direction] = _once(
                        lambda s=sets[0], p=problem, d=entry.direction: Reference(s, p, d))
                impl = Ours(entry.name, entry.direction, entry.schedule, fast=entry.fast)
                timed = measure(Task(problem, impl), spec, sets, references[entry.direction], timer)
                row.update({k: timed[k] if timed[k] != "" else None for k in ("ms", "ms_min", "max_err", "status")})
            rows.append(derive(row, roof))
            save(rows, roof, prov, *paths[:2])
        del sets, references
        free_device_memory()
    figure(rows, roof, prov, paths[2])
    return rows, roof, paths


def _once(make):
    """A zero-argument callable that makes its value on first call and keeps it."""
    box = []
    return lambda: box[0] if box else (box.append(make()) or box[0])


def _paths(out_dir):
    return tuple(os.path.join(out_dir, f"roofline.{ext}") for ext in ("csv", "json", "png"))


# -- files ------------------------------------------------------------------------------------

def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def save(rows, ceilings, prov, csv_path, json_path):
    """The CSV (provenance, ceilings and column notes as ``# key: value`` lines first) and the JSON, atomically."""
    header = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in prov.items()}
    header.update({f"ceiling {k}": v for k, v in dataclasses.asdict(ceilings).items() if v is not None})
    header.update({f"column {k}": v for k, v in COLUMN_NOTES.items()})
    records.write_commented_csv(csv_path, header, COLUMNS, [{k: "" if r.get(k) is None else r[k] for k in COLUMNS}
                                                           for r in rows])
    doc = {"provenance": prov, "ceilings": dataclasses.asdict(ceilings), "columns": COLUMNS,
           "column_notes": COLUMN_NOTES, "rows": [{k: _finite(r.get(k)) for k in COLUMNS} for r in rows]}
    records.atomic_write(json_path, json.dumps(doc, indent=1) + "\n")


def _typed(column, text):
    if text in ("", None):
        return None
    if column in _INTS:  # counts as written (a hand-made file may hold 2e9)
        try:
            return int(text)
        except ValueError:
            return float(text)
    if column in _FLOATS:
        return float(text)
    if column == "causal":
        return text in (True, "True", "true")
    return text


def load(path):
    """(provenance, Ceilings, rows) of a roofline CSV or JSON; numbers come back as numbers.

    Raises:
        ValueError: the file has no ceilings or lacks a column :data:`NEEDED` lists, naming it.
    """
    path = os.fspath(path)
    if path.endswith(".json"):
        with open(path) as f:
            doc = json.load(f)
        prov, values, raw = doc.get("provenance", {}), doc.get("ceilings") or {}, doc.get("rows", [])
    else:
        header, raw = records.read_commented_csv(path)
        prov = {k: v for k, v in header.items() if k == "ceiling runs" or not k.startswith(("ceiling ", "column "))}
        values = {k[len("ceiling "):]: v for k, v in header.items() if k.startswith("ceiling ")}
    fields = [f.name for f in dataclasses.fields(Ceilings)]
    missing = [f for f in fields if f not in values and f not in OPTIONAL]
    if missing:
        raise ValueError(f"{path} is not a roofline's file: it has no ceiling {', '.join(missing)} "
                         "(files are written by python -m sandbox roofline)")
    try:
        ceilings = Ceilings(**{f: float(values[f]) for f in fields if values.get(f) not in (None, "")})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    columns = set().union(*(r.keys() for r in raw)) if raw else set()
    missing = [c for c in NEEDED if c not in columns]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}: a roofline's rows need {', '.join(NEEDED)}")
    try:
        rows = [{c: _typed(c, r.get(c)) for c in COLUMNS} for r in raw]
    except ValueError as e:
        raise ValueError(f"{path}: a value is not a number: {e}") from None
    return prov, ceilings, rows


def from_csv(path, out_dir, argv=None):
    """The table and figure of a saved roofline (its measured runtimes, counts and ceilings), without a GPU:
    every prediction computed again; ``roofline.csv``, ``.json`` and ``.png`` written to ``out_dir``.

    Returns:
        (rows, Ceilings, paths of the CSV, JSON and PNG).

    Raises:
        ValueError: the file is not a roofline's (see :func:`load`), or it has no timed row.
    """
    prov, ceilings, rows = load(path)
    for row in rows:
        for c in COLUMNS[COLUMNS.index("intensity"):]:
            row[c] = None
        if row["status"] == "ok":
            derive(row, ceilings)
    if not any(r["rel_error"] is not None for r in rows):
        raise ValueError(f"{path} has no timed row (status ok, ms > 0) to draw")
    prov = {**prov, "drawn by": records.command_line(argv), "drawn from": os.fspath(path)}
    paths = _paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    save(rows, ceilings, prov, *paths[:2])
    figure(rows, ceilings, prov, paths[2])
    return rows, ceilings, paths


# -- table and figure -------------------------------------------------------------------------

def _fmt(value, spec, scale=1):
    return "" if value is None else format(value * scale, spec)


def format_table(rows, ceilings):
    """A plain-text table of the ceilings and of every row's measurement against its prediction."""
    c = ceilings
    lines = [f"ceilings: HBM copy {c.hbm_bytes_per_s / 1e9:.0f} GB/s, fp32 FMA {c.fma_flops_per_s / 1e12:.1f} "
             f"TFLOP/s, TF32 mma.sync {c.tf32_mma_flops_per_s / 1e12:.1f} TFLOP/s "
             f"(3xTF32: {c.flops_per_s('tf32x3') / 1e12:.1f})"
             + (f", fp16 mma.sync {c.f16_mma_flops_per_s / 1e12:.1f} TFLOP/s" if c.f16_mma_flops_per_s else "")]
    header = ["name", "dir", "d", "N", "causal", "build", "ms", "predicted", "error", "bound", "FLOP/B", "TFLOP/s",
              "GB/s", "status"]
    body = [[r["name"], r["dir"] or "", _fmt(r["d"], "d"), _fmt(r["n"], "d"), "yes" if r["causal"] else "no",
             r["build"] or "", _fmt(r["ms"], ".4g"), _fmt(r["predicted_ms"], ".4g"), _fmt(r["rel_error"], "+.0%"),
             r["bound"] or "", _fmt(r["intensity"], ".3g"), _fmt(r["achieved_flops_per_s"], ".3g", 1e-12),
             _fmt(r["achieved_bytes_per_s"], ".4g", 1e-9), r["status"] or ""] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda r: "  ".join(x.ljust(w) if i in (0, len(r) - 1) else x.rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    notes = ["error: (measured - predicted) / measured; predicted = max(HBM bytes / copy bandwidth, "
             "FLOPs / the build's arithmetic ceiling)"]
    return "\n".join(lines + notes + [line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def _label(row):
    mask = " causal" if row["causal"] else ""
    return f"{row['name']} {row['dir']} d={row['d']} N={row['n']}{mask}"


def figure(rows, ceilings, prov, path):
    """Left: the roofline (FLOP/s against FLOPs per HBM byte, log-log), the ceilings as lines and one
    marker per timed row (colour: its kind; marker: its build; hollow: a backward). Right: predicted
    against measured runtime, with y = x. Writes ``path`` (PNG) and returns it; rows not timed are
    left out.

    Raises:
        ValueError: no row was timed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("rel_error") is not None]
    if not timed:
        raise ValueError("the roofline has no timed row to draw")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    bw = ceilings.hbm_bytes_per_s
    roofs = [(f"fp32 FMA {ceilings.fma_flops_per_s / 1e12:.1f} TFLOP/s", ceilings.flops_per_s("fma"), "-", "black"),
             (f"3xTF32 (mma.sync / 3) {ceilings.flops_per_s('tf32x3') / 1e12:.1f} TFLOP/s",
              ceilings.flops_per_s("tf32x3"), "--", "black"),
             (f"TF32 mma.sync {ceilings.tf32_mma_flops_per_s / 1e12:.1f} TFLOP/s", ceilings.tf32_mma_flops_per_s,
              "-.", "gray")]
    if ceilings.f16_mma_flops_per_s:
        roofs.append((f"fp16 mma.sync {ceilings.f16_mma_flops_per_s / 1e12:.1f} TFLOP/s",
                      ceilings.f16_mma_flops_per_s, ":", "gray"))
    intensities = [r["intensity"] for r in timed]
    lo = min(intensities) / 4
    hi = max(max(intensities) * 4, max(roof[1] for roof in roofs) / bw * 4)
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for label, peak, style, color in roofs:
        ax.plot(xs, [min(bw * x, peak) for x in xs], style, color=color, lw=1, label=label)
    handles = []
    for r in timed:
        style = dict(marker=BUILD_MARKERS.get(r["build"], "D"), color=kind_color(r["kind"]), ls="none", ms=7,
                     mfc="none" if r["dir"] == "bwd" else kind_color(r["kind"]))
        handles += ax.plot([r["intensity"]], [r["achieved_flops_per_s"]], label=_label(r), **style)
        ax2.plot([r["ms"]], [r["predicted_ms"]], **style)
    ax.set(xscale="log", yscale="log", xlabel="FLOPs per HBM byte (simulated counts)", ylabel="FLOP/s (measured)",
           title=f"roofline{' on the ' + str(prov['device']) if prov.get('device') else ''}: every row against "
                 "the measured ceilings")
    times = [t for r in timed for t in (r["ms"], r["predicted_ms"])]
    span = [min(times) / 1.5, max(times) * 1.5]
    ax2.plot(span, span, color="gray", lw=1, label="predicted = measured")
    errors = sorted(abs(r["rel_error"]) for r in timed)
    ax2.set(xscale="log", yscale="log", xlabel="measured runtime (ms)", ylabel="predicted runtime (ms)",
            title=f"max(bytes / bandwidth, FLOPs / ceiling) against measurement\n"
                  f"median |error| {errors[len(errors) // 2]:.0%}, largest {errors[-1]:.0%}")
    ax2.legend(fontsize=7, loc="upper left")
    ax.legend(handles=ax.lines[:len(roofs)], fontsize=7, loc="lower right", title_fontsize=7,
              title=f"ceilings; HBM copy {bw / 1e12:.2f} TB/s")
    fig.tight_layout()
    fig.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95), title_fontsize=7,
               title="rows (colour: kind; ■ fast-fma, ▲ fast-tf32x3, ◆ fast-f16, ● plain; hollow: backward)")
    footer = " | ".join(str(prov[k]) for k in ("device", "date") if prov.get(k))
    fig.text(0.01, -0.02, footer, fontsize=6, color="gray")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
