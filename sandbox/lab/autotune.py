"""Pick the fastest fast-build schedule per (GPU, head_dim, dtype, causal) by timing, and remember it on disk.

``tuned_schedule(head_dim, dtype, causal)`` returns the cached choice, timing the candidates the
first time (a few seconds per candidate, most of it Numba compiling; back to back, on one problem
size: B·H = 32, N = 4096). The cache is a JSON file,
``$ATTN_SANDBOX_CACHE/autotune.json`` (default ``~/.cache/attention-sandbox``), keyed by the GPU's
name, the problem's head_dim, dtype and causality, numba-cuda's version, and a hash of the fast
kernel's source: a changed kernel or toolchain is tuned again, never served a stale choice. Each
entry keeps every candidate's time, so the choice can be checked.

The file is checked when read: one that is not a cache is set aside (renamed ``*.bad-<time>``,
with a :class:`CacheWarning` naming it), and an entry that is not a schedule the fast build runs
is dropped and tuned again. It is written atomically; where it cannot be written, a warning names
it and the results stay in memory for the rest of the process.

    python -m sandbox tune --d 64 128 --dtype float32 --both-masks    # time, cache, print the table

The backward is tuned the same way (``tune(..., backward=True)``, ``python -m sandbox tune
--backward``): flash2's fast backwards over :data:`BACKWARD_CANDIDATES` (kernels/backward_tc.py)
and, for fp16 and bf16 inputs, :data:`BACKWARD16_CANDIDATES` (kernels/backward_tc16.py), under keys
of their own (``|backward deterministic`` or ``|backward atomic dQ``, and the fast backwards' source
hash), refusing candidates that spill. The deterministic backward and the one with dQ by atomics
(``deterministic=False``, ``--atomic-dq``; where a candidate has no atomic build it runs the
deterministic one) are tuned apart: their best blocks can differ.
"""

import ast
import dataclasses
import hashlib
import importlib
import inspect
import json
import numbers
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

from numba import cuda
from numba_cuda import __version__ as numba_cuda_version

from kernels import registry
from kernels.builds import choose_backward_build, choose_build
from kernels.flash2_tc16 import tc16_schedule
from kernels.launch import build, dq_build
from sandbox.lab.records import atomic_write
from sandbox.lab.timing import time_attention
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import gpu_present, using_simulator
from sandbox.vocabulary.schedule import Schedule

#: The kind the autotuner picks schedules for: the one whose fast builds have schedules to choose among.
KIND = "flash2"

#: (Br, Bc, thread_q, thread_kv) tried per (head_dim, dtype); those the fast build or the GPU's
#: shared memory cannot take are left out (kernels.builds.choose_build). Each thread's work per step of
#: the two products is a thread_q × thread_kv (S) or thread_q × d/threads_kv (O) outer product.
CANDIDATES = (
    (128, 64, 8, 4), (64, 64, 8, 4), (128, 128, 8, 8), (128, 32, 4, 4), (64, 64, 4, 4), (128, 64, 4, 4),
    (64, 32, 4, 4), (128, 64, 8, 8), (128, 64, 4, 8),
)
#: (Br, Bc) of the tensor-core build's candidates (``math="tf32x3"``, thread tile 2 × Bc/4;
#: kernels/flash2_tc.py), tried beside the FMA ones.
TC_CANDIDATES = ((128, 64), (128, 32), (128, 16), (64, 64), (64, 32))
#: (Br, Bc, a warp's rows) of the 16-bit tensor-core build's candidates (``math="f16"``, fp16 and bf16
#: inputs only; kernels/flash2_tc16.py): a warp per 16 rows (thread tile 2 × Bc/4) or per 32 rows
#: (4 × Bc/4, Q_i in SRAM); tried beside the others for those dtypes. The tuner refuses a candidate
#: that spills.
TC16_CANDIDATES = ((128, 64, 16), (128, 128, 16), (64, 64, 16), (64, 128, 16), (128, 32, 16), (256, 64, 16),
                   (128, 64, 32), (128, 128, 32), (128, 32, 32))
#: (Br, Bc) of the fast backward's candidates (kernels/backward_tc.py: dkdv a warp per 16 keys of Bc,
#: dq a warp per 16 queries of Br); those over the GPU's shared memory are left out.
BACKWARD_CANDIDATES = ((256, 128), (128, 128), (128, 64), (64, 128), (64, 64))
#: (Br, Bc) of the 16-bit fast backward's candidates (``math="f16"``, kernels/backward_tc16.py; fp16
#: and bf16 inputs only), tried beside the others for those dtypes.
BACKWARD16_CANDIDATES = ((128, 128), (128, 64), (64, 128), (64, 64))
#: The problem a candidate is timed on: B·H = 32 heads of N = 4096 (BENCHMARKS.md's main tables).
TUNE_BATCH, TUNE_HEADS, TUNE_N = 2, 16, 4096


def cache_path():
    """The autotuner's cache file (``$ATTN_SANDBOX_CACHE/autotune.json``, default under ~/.cache)."""
    root = os.environ.get("ATTN_SANDBOX_CACHE") or Path.home() / ".cache" / "attention-sandbox"
    return Path(root) / "autotune.json"


def _imported_modules(module):
    """The modules of ``module``'s own package that its source imports, at module level or in a function
    (``from package import submodule``: the submodule)."""
    package = module.__name__.split(".")[0]

    def load(name):
        try:
            return importlib.import_module(name) if name.split(".")[0] == package else None
        except ImportError:  # a name imported from a module, not a module
            return None

    found = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            found.update(load(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [load(f"{node.module}.{a.name}") for a in node.names]
            found.update(subs)
            if None in subs:  # names from the module itself
                found.add(load(node.module))
    return found - {None}


def fast_build_modules(kind=KIND, backward=False):
    """The modules of ``kind``'s fast builds (``kernels.registry.get(kind).fast``, or ``.fast_backward``)
    and, transitively, the modules of their package that they import: the source a tuned choice
    depends on, by module name."""
    entry = registry.get(kind)
    builds = (entry.fast_backward if backward else entry.fast).values()
    todo = [b if inspect.ismodule(b) else inspect.getmodule(b.eligible) for b in builds]
    seen = {}
    while todo:
        module = todo.pop()
        if module.__name__ not in seen:
            seen[module.__name__] = module
            todo += _imported_modules(module)
    return [seen[name] for name in sorted(seen)]


def kernel_hash(backward=False):
    """A hash of the source of the fast builds (``backward``: of the backward) and of what they build
    on (:func:`fast_build_modules`): a changed kernel is tuned again."""
    h = hashlib.sha256()
    for module in fast_build_modules(backward=backward):
        h.update(module.__name__.encode() + b"\0" + Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def direction_label(backward, deterministic=True):
    """What a progress line says is tuned: "" (the forward), "backward " or "backward, atomic dQ, "."""
    return ("backward " if deterministic else "backward, atomic dQ, ") if backward else ""


def cache_key(device_name, head_dim, dtype, causal, backward=False, deterministic=True):
    """The cache entry's key: the GPU, the problem's (head_dim, dtype, causality), the direction (and
    the backward's mode), numba-cuda's version and the fast builds' source hash."""
    way = ("|backward deterministic" if deterministic else "|backward atomic dQ") if backward else ""
    return (f"{device_name}|d={head_dim}|{dtype}|causal={bool(causal)}{way}|numba-cuda {numba_cuda_version}"
            f"|kernel {kernel_hash(backward)}")


def _runs_fast(schedule, head_dim, backward, dtype=None):
    """Whether the fast build (``backward``: the fast backward, asked for) runs ``schedule`` at ``head_dim``
    (and, where given, for inputs of ``dtype``)."""
    if not backward:
        return choose_build(schedule, head_dim, dtype=dtype).fast
    try:
        return choose_backward_build(schedule, head_dim, fast=True, dtype=dtype).fast
    except ValueError:
        return False


def candidates(head_dim, dtype="float32"):
    """The schedules of :data:`CANDIDATES` (FMA), :data:`TC_CANDIDATES` (tensor cores, 3xTF32) and,
    for fp16 and bf16 inputs, :data:`TC16_CANDIDATES` (16-bit tensor cores) the fast build can run
    at ``head_dim`` for inputs of ``dtype`` on this device."""
    fma = [Schedule(KIND, block_q=br, block_kv=bc, thread_q=tq, thread_kv=tkv) for br, bc, tq, tkv in CANDIDATES]
    tc = [Schedule(KIND, block_q=br, block_kv=bc, thread_q=2, thread_kv=bc // 4, math="tf32x3")
          for br, bc in TC_CANDIDATES]
    tc += [tc16_schedule(br, bc, rows) for br, bc, rows in TC16_CANDIDATES]
    return [s for s in fma + tc if choose_build(s, head_dim, dtype=dtype).fast]


def backward_candidates(head_dim, dtype="float32"):
    """The schedules of :data:`BACKWARD_CANDIDATES` (3xTF32) and, for fp16 and bf16 inputs,
    :data:`BACKWARD16_CANDIDATES` (16-bit tensor cores) the fast backward can run at ``head_dim`` for
    inputs of ``dtype`` on this device."""
    todo = [Schedule(KIND, block_q=br, block_kv=bc, thread_q=2, thread_kv=bc // 4, math=math)
            for math, blocks in (("tf32x3", BACKWARD_CANDIDATES), ("f16", BACKWARD16_CANDIDATES)) for br, bc in blocks]
    return [s for s in todo if _runs_fast(s, head_dim, backward=True, dtype=dtype)]


class CacheWarning(UserWarning):
    """The autotune cache could not be read or written as it should; the message names the file."""


#: Entries tuned in this process, by (cache file, key): what a cache that cannot be written keeps.
_TUNED_HERE = {}


def _warn(message):
    warnings.warn(message, CacheWarning, stacklevel=3)


def entry_problem(key, entry):
    """Why ``entry`` (under ``key``) is not a usable cache entry, or None if it is: it must hold a
    flash2 (:data:`KIND`) schedule that the fast build runs at the key's head_dim, and its candidates' times."""
    if not isinstance(entry, dict) or not isinstance(entry.get("schedule"), dict):
        return "no schedule"
    try:
        schedule = Schedule(**entry["schedule"])
    except (TypeError, ValueError) as e:
        return f"not a schedule: {e}"
    if schedule.kind != KIND:
        return f"a {schedule.kind!r} schedule, not {KIND}'s"
    times = entry.get("ms")
    if not isinstance(times, dict) or not all(isinstance(v, numbers.Real) for v in times.values()):
        return "no candidate times"
    if not isinstance(entry.get("errors", {}), dict):
        return "errors is not a table"
    head_dim = re.search(r"\|d=([0-9]+)\|", key)
    if head_dim is None:
        return "a key without d=<head_dim>"
    dtype = re.search(r"\|d=[0-9]+\|([a-z0-9]+)\|", key)
    dtype = dtype.group(1) if dtype else None
    if not _runs_fast(schedule, int(head_dim.group(1)), "|backward" in key, dtype):
        return f"{schedule.describe()} is not one the fast build runs at d={head_dim.group(1)}" + (
            f", {dtype}" if dtype else "")
    return None


def _set_aside(path, reason):
    bad = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, bad)
    except OSError as e:
        _warn(f"autotune cache {path} is not a cache ({reason}) and cannot be set aside ({e.strerror or e}): "
              "tuning without it")
        return
    _warn(f"autotune cache {path} is not a cache ({reason}): set aside as {bad}; tuning again")


def load_cache(path=None):
    """The cache's entries, each checked (:func:`entry_problem`); {} if there is no file.

    A file that is not a cache (not JSON, not an object of entries) is renamed ``*.bad-<time>``; a
    bad entry is left out (it is tuned again and the file rewritten without it). Each is named in a
    :class:`CacheWarning`.
    """
    path = Path(path or cache_path())
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):  # no cache yet (written after tuning)
        return {}
    except (OSError, UnicodeDecodeError) as e:
        _warn(f"autotune cache {path} cannot be read ({getattr(e, 'strerror', None) or e}): tuning without it")
        return {}
    try:
        cache = json.loads(text)
    except ValueError as e:
        _set_aside(path, f"not JSON: {e}")
        return {}
    if not isinstance(cache, dict):
        _set_aside(path, f"expected an object of entries, got {type(cache).__name__}")
        return {}
    good = {}
    for key, entry in cache.items():
        problem = entry_problem(key, entry)
        if problem is None:
            good[key] = entry
        else:
            _warn(f"autotune cache {path}: dropping the entry {key!r} ({problem}); it is tuned again")
    return good


def _save_cache(cache, path):
    """Write atomically (a temporary file renamed over the old one): an interrupt never leaves half a file.
    A cache that cannot be written is named in a warning; the caller keeps its results in memory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        _warn(f"autotune cache {path} cannot be written ({e.strerror or e}): this process keeps its tuning "
              "results in memory only (set ATTN_SANDBOX_CACHE to a writable folder to keep them)")


def _local_memory(schedule, head_dim, dtype, backward=False, causal=None, deterministic=True):
    """Bytes of local memory per thread (register spills) of the fast build's kernels (``backward``:
    the fast backward's, with dQ by atomics where the schedule has that build: in a fixed order where
    ``deterministic``, kernels/backward_tc.py's ``ORDERED_DQ``), compiled here for ``causal`` (None: causal and not, the worst)."""
    worst = 0
    chooser = choose_backward_build if backward else choose_build
    for causal in ((False, True) if causal is None else (bool(causal),)):
        chosen = chooser(schedule, head_dim, fast=True)
        extra = {}
        if backward:  # (the dQ build the mode runs)
            extra = dq_build(schedule, Problem(1, 1, 1, 1, head_dim, dtype=dtype), chosen, None, deterministic)
        kernels = build(schedule, head_dim, dtype, causal, chosen, backward=backward, **extra)
        for kernel, _, _ in kernels.values():
            (compiled,) = kernel.overloads.values()
            worst = max(worst, compiled.local_mem_per_thread)
    return worst


TIMING = "CUDA events: the median of 3 batches of 5 back-to-back calls, ms per call"


def _time_schedule(schedule, problem, backward=False, deterministic=True):
    """Median of 3 batches of 5 calls back to back: the kernels' times without the host's launch
    work, which is the same for every candidate and, waited for per call, noisier than the gaps
    between close candidates (H100: a median of 5 waited-for calls put 64×64 8×4 1.5%
    ahead of 128×64 8×8 for causal d = 64, N = 4096; in a later run, medians of 10 each, the
    latter was 4% faster there and 5% at 16K)."""
    return time_attention(schedule, problem, repeats=5, back_to_back=True, backward=backward,
                          deterministic=deterministic)


def tune(head_dim, dtype="float32", causal=False, refresh=False, path=None, timer=None, device_name=None,
         progress=sys.stderr, check_spills=None, backward=False, deterministic=True):
    """The fastest candidate schedule for (head_dim, dtype, causal) on this GPU; cached (see the module docstring).

    Args:
        refresh: time again even if the cache has an entry.
        timer: ``timer(schedule, problem) -> milliseconds`` (default: CUDA events, the median
            of 3 batches of 5 back-to-back calls after warm-up, on B=2, H=16, N=4096, after
            refusing any candidate whose kernel spills registers to local memory); tests pass a
            stand-in.
        device_name: the cache key's GPU name (default: the current device's).
        progress: a stream for one line per candidate, or None.
        check_spills: refuse candidates whose compiled kernel uses local memory (default: on a
            GPU; the simulator compiles nothing).
        backward: tune the fast backward (:func:`backward_candidates`) instead of the forward.
        deterministic: with ``backward``, False tunes the backward with dQ by atomics
            (``attention_backward(..., deterministic=False)``), under a key of its own.

    Returns:
        (schedule, entry): the chosen :class:`Schedule` and its cache entry (every candidate's ms).

    Raises:
        TypeError: ``deterministic`` is not True or False.
        ValueError: ``deterministic=False`` without ``backward`` (the forward has one mode).
        RuntimeError: without a GPU (under the CUDA simulator, or no CUDA device at all) and no
            ``timer`` and ``device_name``, or no candidate ran.
    """
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True or False, not {deterministic!r}")
    if not deterministic and not backward:
        raise ValueError("deterministic=False tunes the backward's dQ by atomics: pass backward=True too")
    timer_given = timer
    if timer is None and using_simulator():
        raise RuntimeError("autotuning needs a GPU: the CUDA simulator's timings mean nothing")
    if (timer is None or device_name is None) and not using_simulator() and not gpu_present():
        raise RuntimeError("autotuning needs a GPU: no CUDA device found (give the kernels a Schedule "
                           "instead of the tuned one)")
    if device_name is None:
        device_name = cuda.get_current_device().name
        device_name = device_name.decode() if isinstance(device_name, bytes) else str(device_name)
    path = Path(path or cache_path())
    key = cache_key(device_name, head_dim, dtype, causal, backward, deterministic)
    cache = load_cache(path)
    if not refresh:
        entry = cache.get(key) or _TUNED_HERE.get((str(path), key))
        if entry is not None:
            return Schedule(**entry["schedule"]), entry
    problem = Problem(TUNE_BATCH, TUNE_HEADS, TUNE_N, TUNE_N, head_dim, dtype=dtype, causal=causal)
    timer = timer or (lambda s, p: _time_schedule(s, p, backward, deterministic))
    check_spills = not using_simulator() if check_spills is None else check_spills
    times, errors = {}, {}
    todo = backward_candidates(head_dim, dtype) if backward else candidates(head_dim, dtype)
    what = direction_label(backward, deterministic)
    for i, s in enumerate(todo):
        label = s.describe()
        try:
            spill = _local_memory(s, head_dim, dtype, backward, causal, deterministic) if check_spills else 0
            if spill:
                raise RuntimeError(f"spills: {spill} bytes of local memory per thread")
            ms = float(timer(s, problem))
        except Exception as e:  # a launch the GPU refuses (registers, shared memory): not a candidate
            errors[label] = f"{type(e).__name__}: {e}"
            if progress:
                print(f"autotune {what}d={head_dim} {dtype}: [{i + 1}/{len(todo)}] {label}: failed ({errors[label][:80]})",
                      file=progress, flush=True)
            continue
        times[label] = ms
        if progress:
            print(f"autotune {what}d={head_dim} {dtype}: [{i + 1}/{len(todo)}] {label}: {ms:.3f} ms", file=progress,
                  flush=True)
    if not times:
        raise RuntimeError(f"autotune: no candidate ran at head_dim={head_dim}, {dtype}: {errors or 'none eligible'}")
    best = min(todo, key=lambda s: times.get(s.describe(), float("inf")))
    fields = {f.name: getattr(best, f.name) for f in dataclasses.fields(best)}
    entry = {"schedule": fields, "ms": times, "errors": errors,
             "problem": dict(batch=TUNE_BATCH, heads=TUNE_HEADS, n=TUNE_N),
             "timing": TIMING if timer_given is None else "a caller's timer", "spread": _spread(times)}
    _TUNED_HERE[(str(path), key)] = entry
    cache = load_cache(path)  # re-read: another process may have tuned meanwhile
    cache[key] = entry
    _save_cache(cache, path)
    return best, entry


def _spread(times):
    values = sorted(times.values())
    return {"best_ms": values[0], "median_ms": statistics.median(values), "worst_ms": values[-1]}


def tuned_schedule(head_dim, dtype="float32", causal=False, backward=False, deterministic=True):
    """The cached (or freshly tuned) fastest flash2 schedule (``backward``: for the fast backward, in
    the ``deterministic`` mode or with dQ by atomics): :func:`tune`'s first result."""
    return tune(head_dim, dtype, causal, backward=backward, deterministic=deterministic)[0]
