"""Sweeps: a grid of (schedule, problem) points, counted by the simulator (and timed on a GPU), saved as CSV + JSON.

Files are written atomically (temporary file, then rename: ``sandbox.lab.records``) as points complete, so an
interrupted sweep (Ctrl-C, SIGTERM) leaves valid partial files; running the same sweep again
skips the points already in them, after checking each row (a damaged one is computed again).
One process writes a sweep's files at a time: a lock file beside them names the holder.
Each file carries its provenance: package versions, device, the grids and commands that made it.
"""

import csv
import dataclasses
import datetime
import itertools
import json
import math
import numbers
import os
import re
import signal
import socket
import threading
import time

import numpy as np

from kernels import registry
from sandbox.lab.records import atomic_write, command_line, provenance, write_commented_csv
from sandbox.lab.timing import time_attention
from sandbox.vocabulary.kinds import names as registered_kinds
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import Schedule
from simulator.entry import simulate

#: The kinds the FlashAttention paper compares (Algorithm 0, Algorithm 1 and FlashAttention-2's
#: order): a sweep's default.
PAPER_KINDS = ("standard", "flash1", "flash2")

#: Columns of a sweep row, in order: the grid point, then what was counted or measured, then why
#: a point could not run (empty for a point that ran; see ``skip_infeasible``).
POINT_COLUMNS = (
    "kind", "batch", "heads", "n_q", "n_kv", "head_dim", "dtype", "causal",
    "block_q", "block_kv", "thread_q", "thread_kv", "sram_bytes",
)
RESULT_COLUMNS = (
    "hbm_reads", "hbm_writes", "hbm_bytes", "sram_reads", "sram_writes", "sram_bytes_moved", "flops",
    "sram_footprint", "extra_hbm_bytes", "runtime_ms", "hbm_bytes_backward", "flops_backward",
    "runtime_ms_backward", "infeasible",
)
COLUMNS = POINT_COLUMNS + RESULT_COLUMNS
#: Result columns a point that ran always has (the others may be empty: not timed, backward too big).
COUNT_COLUMNS = RESULT_COLUMNS[:9]
#: Result columns that may be empty in a point that ran (not timed; no backward, or its tiles too big).
MAYBE_EMPTY = ("runtime_ms", "hbm_bytes_backward", "flops_backward", "runtime_ms_backward")
#: Columns a sweep file written before them lacks: read as empty.
LATER_COLUMNS = ("flops_backward", "runtime_ms_backward")
#: Columns of milliseconds (floats); the other counts are ints.
MS_COLUMNS = ("runtime_ms", "runtime_ms_backward")
#: Provenance entries that are lists (one item per sweep that wrote to the file); JSON text in the CSV.
PROVENANCE_LISTS = ("grids", "commands")


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One point of a grid: its row's identity, and its schedule, or why it has none."""

    key: tuple
    problem: Problem
    schedule: Schedule = None
    infeasible: str = None
    label: str = ""


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A grid. ``sram`` values use the paper's block rule (Schedule.from_sram); otherwise ``blocks``.

    Args:
        kinds, n, head_dim, causal, dtype, batch, heads: problem axes (Nq = Nk = n).
        blocks: (block_q, block_kv) pairs, used when ``sram`` is empty.
        sram: SRAM sizes M in bytes; each point's blocks follow Bc = ⌈M/4d⌉, Br = min(Bc, d).
        thread_tiles: register tiles (t, t); ``None`` means the schedule's default.
        sram_bytes: capacity M assumed by ``blocks`` schedules (default: the Schedule's, 227 KiB).
        fit_backward: ``sram`` points lower Bc until the backward's tiles fit M too
            (``Schedule.from_sram(..., backward=True)``), so that each row's forward and backward
            counts are of one schedule in M; for kinds with a backward pass.
        time_kernels: also time the kernels (only on a GPU).
    """

    kinds: tuple = PAPER_KINDS
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
    fit_backward: bool = False
    time_kernels: bool = False

    def grid(self):
        """Every point of the grid, in order, each with its schedule or the reason it has none.

        Raises:
            ValueError: an unknown kind, or a problem axis out of range (these are input errors,
                not infeasible points).
        """
        for kind in self.kinds:
            if kind not in registered_kinds():
                raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(registered_kinds())}")
        out = []
        for kind, n, d, causal, dt, b, h, tile in itertools.product(
            self.kinds, self.n, self.head_dim, self.causal, self.dtype, self.batch, self.heads, self.thread_tiles
        ):
            problem = Problem(batch=b, heads=h, n_q=n, n_kv=n, head_dim=d, dtype=dt, causal=causal)
            tiles = {} if tile is None else {"thread_q": tile, "thread_kv": tile}
            if self.sram:
                trials = [(f"M={m} d={d} {dt} {kind}", (None, None, m),
                           lambda m=m: Schedule.from_sram(m, head_dim=d, kind=kind, dtype=dt,
                                                          backward=self.fit_backward, **tiles))
                          for m in self.sram]
            else:
                extra = {} if self.sram_bytes is None else {"sram_bytes": self.sram_bytes}
                trials = [(f"Br={br} Bc={bc} d={d} {dt} {kind}", (br, bc, self.sram_bytes),
                           lambda br=br, bc=bc: Schedule(kind, block_q=br, block_kv=bc, **tiles, **extra))
                          for br, bc in self.blocks]
            for label, (br, bc, m), make in trials:
                try:
                    sched = make()
                    sched.check_fits(d, dt)
                except ValueError as e:
                    key = (kind, b, h, n, n, d, problem.dtype.name, bool(causal), br, bc, tile, tile, m)
                    reason = " ".join(str(e).split())
                    out.append(GridPoint(key, problem, None, reason, label))
                else:
                    out.append(GridPoint(point_key(sched, problem), problem, sched, None, label))
        if not out:
            raise ValueError("the grid is empty")
        return out

    def points(self):
        """Every (schedule, problem) of the grid, validated.

        Raises:
            ValueError: naming the first impossible point (unknown kind, tiles over SRAM, ...).
        """
        out = []
        for p in self.grid():
            if p.infeasible is not None:
                raise ValueError(f"impossible point {p.label}: {p.infeasible}")
            out.append((p.schedule, p.problem))
        return out

    def axes(self):
        """The grid's axes as JSON holds them (lists, null): what identifies it in a file's provenance.

        ``fit_backward`` appears only when set, so that grids that leave it off keep the identity
        their files record.
        """
        axes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "time_kernels" and not (f.name == "fit_backward" and not self.fit_backward)}
        return json.loads(json.dumps(axes))


def point_key(schedule, problem):
    """The identity of a grid point: the values of its row's :data:`POINT_COLUMNS`."""
    return (
        schedule.kind, problem.batch, problem.heads, problem.n_q, problem.n_kv, problem.head_dim,
        problem.dtype.name, bool(problem.causal), schedule.block_q, schedule.block_kv, schedule.thread_q,
        schedule.thread_kv, schedule.sram_bytes,
    )


def row_key(row):
    """The identity of a row (a dict of typed values): see :func:`point_key`."""
    return tuple(row[c] for c in POINT_COLUMNS)


def extra_hbm_bytes(schedule, problem):
    """Device memory one forward call allocates beyond q, k, v and O: L, and whatever the kind's
    ``launch`` allocates (S and P for standard, ℓ and m for flash1, the partials for splitkv).

    Read off the kind's own launch function (sandbox/vocabulary/kinds.py), run with a recording allocator
    and no kernels, so that it cannot drift from what the kernels really allocate.
    """
    sizes = [problem.bh * problem.n_q * 4]  # L, fp32

    def empty(shape, dtype, name):
        sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)

    no_arrays = (None,) * 7  # q, k, v, out, lse, scale, counters: never touched without kernels
    registry.get(schedule.kind).kernels.launch(lambda *args: None, schedule, problem, *no_arrays, empty)
    return sum(sizes)


def measure_point(schedule, problem, time_kernels=False):
    """One row: the simulator's counts (forward; the backward's HBM bytes where its tiles fit), footprints,
    and (on a GPU, if asked) the kernel's median time."""
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
        runtime_ms=None,
        hbm_bytes_backward=None,
        flops_backward=None,
        runtime_ms_backward=None,
        infeasible=None,
    )
    try:
        backward = simulate(schedule, problem, backward=True)
        row["hbm_bytes_backward"], row["flops_backward"] = backward.hbm_bytes, backward.flops
    except ValueError:  # no backward, or its tiles (dO, L, D too) do not fit where the forward's do
        backward = None
    if time_kernels and not using_simulator():
        try:
            row["runtime_ms"] = time_attention(schedule, problem)
            if backward is not None:  # the backward a default call runs (the fast one is opt-in)
                row["runtime_ms_backward"] = time_attention(schedule, problem, backward=True, fast=None)
        except ValueError:  # e.g. tiles over this GPU's shared memory: counted, not timed
            pass
    return row


def sweep_paths(out):
    """(csv_path, json_path) of a sweep written to ``out``: ``x.csv`` and ``x.json`` for ``out``
    ``x.csv`` or ``x.json``; ``out`` itself and ``out``'s stem + ``.json`` otherwise."""
    out = os.fspath(out)
    stem, ext = os.path.splitext(out)
    if ext.lower() == ".json":
        return stem + ".csv", out
    return out, stem + ".json"


def _json_value(value):
    """A row's value as JSON holds it: numbers as numbers (NumPy's too), non-finite floats as null."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def save(rows, prov, csv_path, json_path):
    """Write rows as CSV (provenance as '# key: value' lines first) and JSON (typed numbers), each atomically."""
    write_commented_csv(csv_path, {k: json.dumps(v) if k in PROVENANCE_LISTS else v for k, v in prov.items()},
                        COLUMNS, rows)
    typed = [{c: _json_value(r.get(c)) for c in COLUMNS} for r in rows]
    atomic_write(json_path, json.dumps({"provenance": prov, "columns": COLUMNS, "rows": typed}, indent=1) + "\n")


def load(path):
    """(provenance, rows) from a sweep's JSON or CSV file; numbers come back as numbers.

    Raises:
        ValueError: the file is not a sweep's (columns missing), naming it.
    """
    path = os.fspath(path)
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        return data["provenance"], [_typed(r) for r in data["rows"]]
    prov, rows, _ = read_sweep_csv(path)
    return prov, rows


_NAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_INT = re.compile(r"(0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\Z")
_OPTIONAL_POINT = ("block_q", "block_kv", "thread_q", "thread_kv", "sram_bytes")  # empty in infeasible rows


def _parse_row(values):
    """A typed row from a CSV row's strings, or None if it is damaged (a value that no sweep writes)."""
    if any(v is None or "\x00" in v for v in values.values()):
        return None
    row = {}
    infeasible = values.get("infeasible") or None
    for col in COLUMNS:
        text = values.get(col, "")  # (a column the file predates: empty)
        if col in ("kind", "dtype"):
            ok = bool(_NAME.match(text))
            row[col] = text
        elif col == "causal":
            ok = text in ("True", "False")
            row[col] = text == "True"
        elif col == "infeasible":
            ok, row[col] = True, infeasible
        elif text == "":
            ok = col in MAYBE_EMPTY or (
                infeasible is not None and (col in _OPTIONAL_POINT or col in RESULT_COLUMNS))
            row[col] = None
        elif col in MS_COLUMNS:
            ok = bool(_FLOAT.match(text)) and infeasible is None
            row[col] = float(text) if ok else None
        else:
            ok = bool(_INT.match(text)) and (col in POINT_COLUMNS or infeasible is None)
            row[col] = int(text) if ok else None
        if not ok:
            return None
    if any(row[c] == 0 for c in ("batch", "heads", "n_q", "n_kv", "head_dim")):
        return None
    return row


def read_sweep_csv(path):
    """(provenance, rows, damaged) from a sweep's CSV: each row checked, typed; ``damaged`` counts
    the rows left out (cut short, junk, NUL bytes: values no sweep writes).

    Raises:
        ValueError: the file has no sweep header (another kind of file), naming it.
    """
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    prov, header, rows, damaged = {}, None, [], 0
    for line in text.splitlines(keepends=True):
        if header is None and line.startswith("# "):
            key, _, value = line[2:].rstrip("\n").partition(": ")
            if key in PROVENANCE_LISTS:
                try:
                    value = json.loads(value)
                except ValueError:
                    value = [value]
            prov[key] = value
            continue
        if header is None:
            header = next(csv.reader([line]), [])
            missing = [c for c in COLUMNS if c not in header and c != "infeasible" and c not in LATER_COLUMNS]
            if missing or "\x00" in line:
                raise ValueError(f"{path} is not a sweep's CSV (no columns {', '.join(missing) or 'header'})")
            continue
        fields = next(csv.reader([line.rstrip("\n")]), [])
        torn = not line.endswith("\n")  # every row is written with its newline: the last one was cut
        row = None if torn or len(fields) != len(header) else _parse_row(dict(zip(header, fields)))
        if row is None:
            damaged += 1
        else:
            rows.append(row)
    if header is None:
        raise ValueError(f"{path} is not a sweep's CSV (no header line)")
    return prov, rows, damaged


def _typed(row):
    out = {}
    for key in COLUMNS:
        value = row.get(key)
        if key in ("kind", "dtype"):
            out[key] = value
        elif key == "causal":
            out[key] = value in (True, "True")
        elif value in ("", None):
            out[key] = None
        elif key == "infeasible":
            out[key] = str(value)
        else:
            out[key] = float(value) if key in MS_COLUMNS else int(value)
    return out


class SweepLockedError(FileExistsError):
    """Another process is writing the same sweep files (its lock file exists)."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def acquire_lock(lock_path, argv=None):
    """Create ``lock_path`` naming this process (pid, host, command); take over a stale one.

    A lock whose process is gone (same host, dead pid) is stale. The file is written whole before
    it appears (a hard link of a finished temporary file), so a reader never sees half of one.

    Raises:
        SweepLockedError: another live process holds it, named in the message.
    """
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(argv),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tmp = f"{lock_path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(me, f)
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock_path)
                return me
            except FileExistsError:
                pass
            try:
                with open(lock_path) as f:
                    holder = json.load(f)
                pid, host = int(holder["pid"]), str(holder["host"])
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError, KeyError, TypeError):
                raise SweepLockedError(f"{lock_path} exists but names no process: if no sweep is writing "
                                       "these files, delete it") from None
            if host == me["host"] and not _pid_alive(pid):
                try:
                    os.unlink(lock_path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            raise SweepLockedError(
                f"another sweep is writing these files: pid {pid} on {host} since {holder.get('since', '?')} "
                f"({holder.get('command', '?')}); wait for it, give another --out, or delete {lock_path} "
                "if that process is gone")
        raise SweepLockedError(f"could not take the lock {lock_path}: it keeps changing hands")
    finally:
        os.unlink(tmp)


def release_lock(lock_path, holder):
    """Remove ``lock_path`` if ``holder`` (from :func:`acquire_lock`) still holds it."""
    try:
        with open(lock_path) as f:
            if json.load(f).get("pid") != holder["pid"]:
                return
        os.unlink(lock_path)
    except (OSError, ValueError):
        pass


class SweepRows(list):
    """The rows of a sweep, in grid order (a list of typed dicts), and what the run found.

    Attributes:
        already_done: points of this grid that were in the files already (not computed again).
        damaged: rows of the files that were damaged, left out, and their points computed again.
        infeasible: points recorded as infeasible (their reason in the ``infeasible`` column).
        csv_path, json_path: where the rows are.
    """

    already_done = damaged = infeasible = 0
    csv_path = json_path = None


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one final save; a second SIGTERM waits for it
    raise SystemExit(128 + signum)


def run_sweep(spec, csv_path, json_path=None, progress=None, argv=None, flush_seconds=0.5, *,
              skip_infeasible=False, append=False):
    """Run ``spec``, resuming from ``csv_path`` if it exists; return the rows (a :class:`SweepRows`).

    Args:
        csv_path: the CSV; the JSON goes beside it (``json_path``, default: the same stem + ``.json``).
            The folder is created if missing.
        progress: an iterable wrapper (e.g. ``tqdm``) or None.
        flush_seconds: how often, at most, the files are rewritten while the sweep runs.
        skip_infeasible: record a point whose schedule cannot run (tiles over SRAM, ...) with the
            reason in its ``infeasible`` column, and go on. Otherwise the first such point stops the
            sweep (the points before it are saved).
        append: add this grid's points to files made by another grid. Otherwise files of another
            grid are refused: a resume must be the same sweep.

    The files are saved on completion, every ``flush_seconds``, and on interruption
    (KeyboardInterrupt, and SIGTERM in the main thread, which then exits with 143), so what was
    computed is never lost. Resumed rows are checked: a damaged one is dropped and its point computed
    again. While it runs, ``<stem>.lock`` beside the files keeps a second sweep from writing them.

    Raises:
        ValueError: an infeasible point (without ``skip_infeasible``), another grid's files
            (without ``append``), the CSV and JSON paths the same, or a file that is not a sweep's.
        SweepLockedError: another sweep is writing these files.
    """
    csv_path = os.fspath(csv_path)
    json_path = os.fspath(json_path) if json_path else sweep_paths(csv_path)[1]
    if os.path.abspath(csv_path) == os.path.abspath(json_path):
        raise ValueError(f"csv_path and json_path are both {csv_path}: give the CSV's path (the JSON goes beside it)")
    grid = spec.grid()
    for path in (csv_path, json_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lock_path = os.path.splitext(csv_path)[0] + ".lock"
    holder = acquire_lock(lock_path, argv)
    result = SweepRows()
    result.csv_path, result.json_path = csv_path, json_path
    rows, dirty, old_prov = {}, False, {}
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        if os.path.exists(csv_path):
            try:
                old_prov, old, result.damaged = read_sweep_csv(csv_path)
            except ValueError as e:
                raise ValueError(f"{e}: give another --out, or move the file away") from None
            rows = {row_key(r): r for r in old}
        grid_keys = {p.key for p in grid}
        this_grid = spec.axes()
        grids = list(old_prov.get("grids", []))
        # another grid's files: its description recorded, or (older files) rows outside this grid
        other = this_grid not in grids if grids else any(k not in grid_keys for k in rows)
        if other and not append:
            raise ValueError(f"{csv_path} holds another grid's points: give another --out, or --append "
                             "(append=True) to add this grid's points to it")
        prov = provenance(argv)
        prov["grids"] = grids + [this_grid] if this_grid not in grids else grids
        commands = list(old_prov.get("commands", [])) or ([old_prov["command"]] if "command" in old_prov else [])
        prov["commands"] = commands + [prov["command"]] if prov["command"] not in commands else commands
        dirty = result.damaged > 0  # rewrite without the damaged rows even if nothing else changes
        result.already_done = sum(p.key in rows for p in grid)
        todo = [p for p in grid if p.key not in rows]
        iterator = progress(todo) if progress else todo
        last = time.monotonic()
        for point in iterator:
            if point.infeasible is not None:
                if not skip_infeasible:
                    raise ValueError(f"impossible point {point.label}: {point.infeasible}; --skip-infeasible "
                                     "(skip_infeasible=True) records such points and goes on")
                row = dict(zip(POINT_COLUMNS, point.key), infeasible=point.infeasible)
                rows[point.key] = {c: row.get(c) for c in COLUMNS}
            else:
                rows[point.key] = measure_point(point.schedule, point.problem, spec.time_kernels)
            dirty = True
            if time.monotonic() - last > flush_seconds:
                save(list(rows.values()), prov, csv_path, json_path)
                last = time.monotonic()
        dirty = True  # complete: the provenance records this command even if nothing was new
    finally:
        try:
            order = {p.key: i for i, p in enumerate(grid)}
            ordered = sorted(rows.values(), key=lambda r: order.get(row_key(r), -1))
            if dirty:
                save(ordered, prov, csv_path, json_path)
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            release_lock(lock_path, holder)
    result.extend(ordered)
    result.infeasible = sum(r["infeasible"] is not None for r in ordered if row_key(r) in grid_keys)
    return result
