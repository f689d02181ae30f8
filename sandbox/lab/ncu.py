"""Nsight Compute check: the kernels' measured global, L2 and DRAM bytes against the simulator's.

    python -m sandbox ncu --out results/ncu               # kinds with an L2 stream × N ∈ {1K, 4K, 16K} × d ∈ {64, 128}
    python -m sandbox ncu --kinds flash2 --n 4096 --d 64 128 --causal both --out results/ncu
    python -m sandbox ncu --backward both --builds plain,fast-fma,fast-tf32x3 --out results/ncu   # every kernel
    python -m sandbox ncu --kinds flash2 --n 4096 --backward yes --mask none sliding_window:256 document:1000,3096
    python -m sandbox ncu --dry-run                        # check the configs, print the ncu command, run nothing

(``python scripts/ncu_check.py`` takes the same arguments; they are parsed by the CLI, ``sandbox/cli.py``,
which calls :func:`check`.) For every config (kind, N, d, causal, direction, build, mask; B = H = 1
by default, Br = Bc = 64, 4×4 register tiles, fp32, no mask) the check runs the config's kernels
once under Nsight Compute and compares, summed over them and kernel by kernel:

- global-memory bytes at L1 (``l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum`` + ``..._op_st.sum``)
  with ``simulate_counts(schedule, problem).hbm_bytes`` (``simulate_backward_counts`` for the
  backward; ``mask=`` the row's mask), and with the same bytes in the sectors each warp instruction touches
  (``sim_l1_bytes``, ``sandbox/lab/ncu_sectors.py``; target: within 2%);
- DRAM bytes (``dram__bytes_read.sum`` + ``dram__bytes_write.sum``) with the L2 model,
  ``simulator.l2.simulate_dram`` (the forward's request stream or the backward's) with a dirty
  limit, plus background writes (target: within 15%, for standard, flash1 and flash2, forward and
  backward, every build; splitkv, and every row with a mask, reported beside them);

and records L2 traffic (``lts__t_bytes.sum``), shared-memory load/store instructions and
wavefronts, local-memory bytes, kernel time and occupancy limits. Outputs in ``--out``:
``ncu_check.csv`` (one row per config), ``ncu_summary.csv`` (the summary printed last: kind,
direction, build, N, d, causal, mask, the simulator's HBM bytes, ncu's global bytes and their ratio,
ncu's over the sector model, the predicted and measured DRAM bytes and their ratio, the verdict),
``ncu_check.json`` (provenance: GPU, driver, ncu version, commands, model parameters, per-kernel
metrics; each row's kernels one by one under ``launches``; the summary), ``ncu_check.png`` (two
panels: measured / simulated global bytes, with the 2% band and the sector model's ratio where it
differs; measured / predicted DRAM bytes, with the 15% band), ``ncu_raw.csv`` (ncu's own output),
``manifest.jsonl``, ``ncu_child.log`` (the child's) and ``ncu_probes.csv`` (the calibration probes).

Rows (``--backward``, ``--builds``)
    ``--backward no|yes|both``: the forward (``kernels.launch.run``), the backward
    (``kernels.launch.run_backward``: flash1 and flash2 launch d, dkdv, dq; standard d, p, ds, dv,
    dk, dq), or both; a kind without a backward has forward rows only. ``--builds``: ``plain``
    (each kind's kernels with the counters compiled out: the source the simulator mirrors) and
    ``fast-<math>``, the fast build of ``Schedule(math=<math>)`` as ``kernels.builds.choose_build(...,
    fast=True)`` takes it (flash2's ``fast-fma``, kernels/flash2_fast.py, and ``fast-tf32x3``,
    kernels/flash2_tc.py, at ``tc_schedule(Br, Bc)``), for the kinds that have one. A fast build
    moves its counting build's HBM tiles, so the simulator's bytes are its reference too. A backward
    fast row runs ``kernels.builds.choose_backward_build(..., fast=True)``'s build (flash2's
    ``fast-tf32x3``, kernels/backward_tc.py), handed to ``run_backward(..., chosen=)``; a row the kind
    has no fast backward for is skipped and says so.
    ``--build plain|fast`` (without ``--builds``) is ``--builds plain`` or ``--builds fast-fma``.

Masks (``--mask SPEC [SPEC ...]``)
    Every row is measured under each built-in mask a SPEC names ("none": without one) (``sandbox.vocabulary.masks.from_spec``):
    ``sliding_window:W``, ``prefix_lm:P``, ``document:L1,L2,...`` (lengths) or
    ``block_sparse:DENSITY[:SEED]`` (``random_block_layout`` over the schedule's Br × Bc blocks), with
    ``--causal`` as the kernels combine them (causal AND mask). The child builds the Mask from the
    spec, which travels in the config's own (``kind:N:d:causal:direction:build:SPEC``), and hands it
    to ``kernels.launch.run`` / ``run_backward`` and to the build's choice (the fast forwards take no
    mask: a fast forward row with one is refused, exit 2; a fast backward that cannot run it is
    skipped, with the reason). The simulator's bytes
    are ``simulate_counts(..., mask=)`` (``simulate_backward_counts``), the very bytes of
    ``sandbox.simulate(schedule, problem, mask=m)``: the kernels' empty tiles are skipped there too.
    The sector model is the simulator's bytes under the mask plus the extra sectors of the accesses
    that are not whole sectors, where each of them moves every row of its tensor whatever the mask
    (d's O and dO, the dK and dV stores, standard's L; ``ncu_sectors.masked_l1_bytes``); a build
    with such an access in its tile loop has none under a mask, and its rows are compared with the
    simulator's bytes only. The partial tiles of standard's S, P and dS move their allowed entries
    only, which need not fill whole sectors (``sector_caveats`` says so). The L2 model takes no mask
    (``simulator/streams.py`` models the causal cut only), so a masked row has no DRAM prediction:
    ncu's DRAM bytes are reported (``dram_verdict`` ``reported``, ``dram_target`` 0), not held to the
    15% target. Each row's ``mask`` column holds its spec ("" without one).

Verdicts (``ncu_results.verdicts``)
    ``ok``: global bytes within 2% of the simulator's (and of the sector model's) and DRAM within
    15%. ``explained``: the global bytes are within 2% of the sector model only: the kernels move the
    simulator's bytes but their warp instructions touch more sectors than those bytes fill (the FMA
    build's O stores, 4 scalar stores per thread 16 bytes apart: 4×; the backward's d kernel, one
    thread per row: 8×; ``ncu_sectors``' docstring lists every pattern). ``miss (global)``,
    ``miss (DRAM)``: a target missed (DRAM only for the kinds held to it; ``reported`` in
    ``dram_verdict`` otherwise, and for a masked row, which has no DRAM prediction). Else the
    row's status: ``not measured``, ``skipped: <why>``, ``error: ...``. ``--strict`` exits 1 on a
    miss.

Calibration (``--no-probes`` skips it)
    Before the configs, the child runs probe kernels (``kernels/l2probe.py``) in the same profiled
    run. Two spins write 4 bytes and then only compute (about 0.12 and 0.49 s). Their DRAM writes
    are not their data: on an H100 about 18 MiB/s of DRAM writes go on whatever runs. Their pooled
    writes / time is ``background_write_bytes_per_s``, and each config's prediction adds that rate
    × the config's measured kernel time (``background_dram_wr_bytes``). Two write streams (64 and
    128 MiB, once, by a full grid) show how much dirty data the L2 keeps: size − (writes during the
    kernel − background). Their mean is the model's ``dirty_limit_bytes``. A rewrite probe (one
    block, 1 MiB, 2000 passes: flash1's access pattern for O) checks the first: its writes should
    be the background's alone. The plain LRU (no limit, no background) is reported beside
    (``sim_dram_plain_bytes``, ``dram_ratio_plain``, the grey crosses of the figure).

How it measures
    The check runs one child process under
    ``ncu --clock-control none --cache-control all --profile-from-start off --csv
    --print-units base --metrics ... --log-file ncu_raw.csv python -m sandbox.lab.ncu_child ... --specs SPEC...``
    (``sandbox/lab/ncu_child.py``; the configs and probes: ``sandbox/lab/ncu_specs.py``).
    The GPU's clocks and settings are never changed (``--clock-control none``). The child, per
    config: compiles and runs the kernels on a small problem of the same (schedule, d, dtype,
    causal) (``kernels.launch.build`` caches on exactly that, so the measured call does not
    compile), copies random inputs to the device, synchronizes, then brackets the one measured
    ``kernels.launch.run`` call (``run_backward`` for the backward, after an unmeasured plain
    forward for O and L) with ``cuProfilerStart``/``cuProfilerStop`` (``numba.cuda.
    profile_start``/``profile_stop``) and synchronizes again. With ``--profile-from-start off``
    ncu profiles only the kernels launched in those brackets: 1 per config for flash1/flash2 and
    their fast builds, 2 for splitkv, 3 for standard (qk, softmax, pv); 3 for the flash backward,
    6 for standard's; their metrics are summed, and kept kernel by kernel. The child writes one
    manifest line per measured config; the parent assigns ncu's results to configs in launch order
    and checks each kernel's grid size against the config's.

    ``--cache-control all`` (ncu's default) flushes and invalidates the caches before every
    profiled kernel, so each kernel starts with a cold L2: the prediction uses
    ``simulate_dram(..., cold_launches=True)``, and since a kernel's dirty lines still in L2
    when it ends are written back after its measurement, the predicted DRAM bytes are its reads
    plus its *evicted* writes (the end-of-kernel flush is reported beside them). The residency
    (blocks in flight) is ncu's: SMs × the smallest of its occupancy limits, per kernel; the
    simulator's default where ncu did not report them.

What the 2% target means here
    ``l1tex__t_bytes`` counts, for each warp-level load or store instruction, the bytes of the
    32-byte sectors it touches (sectors × 32), not the bytes the threads asked for. Our kernels
    load and store scalars (4 or 2 bytes) with consecutive threads on consecutive addresses: a
    warp covers 32 consecutive elements of a tile load (128 B in fp32, 64 B in fp16), or 16
    consecutive columns in each of 2 rows of an S or O tile (TX = 16 threads along a row with
    64×64 blocks and 4×4 register tiles). When such a slice starts on a 32-byte boundary and is a
    whole number of sectors, measured = simulated exactly, which is the case for the default
    configs without a causal mask (N a multiple of 64, d·4 a multiple of 32), but for the
    accesses whose lanes do not fill their sectors: those the sector model counts
    (``sandbox/lab/ncu_sectors.py``: the forward's standard L, the backward's d kernel and dK, dV
    stores, the fast builds' O, L and Q, K), giving ``sim_l1_bytes``; on the H100 it equals ncu's
    L1 load and store bytes to the byte for every plain and FMA configuration up to N = 4K
    (tests/sandbox/test_ncu_sectors.py). The row's ``sector_caveats`` say when a schedule breaks
    the whole-sector assumptions below. Otherwise each
    instruction rounds up to whole sectors, and a sector split between two instructions is
    counted by both: at the causal diagonal (the masked tail of a row of S or P, under 32 bytes
    per row and pass: a fraction of a percent at N = 1K), and everywhere when d·itemsize or
    Nk·4 is not a multiple of 32 (then up to one sector per instruction, which can exceed 2%).
    Global memory the model does not count would also show: none is expected (the kernels'
    counters are the simulator's, and the fast builds touch no counters); a register spill or
    a local array goes to *local* memory, reported apart (``ncu_local_ld_bytes``,
    ``ncu_local_st_bytes``).

The machine modelled
    The L2 model takes the GPU's L2 size, SMs and shared memory from the device
    (``sandbox.lab.info.device_facts``). Where the device cannot be read, ``--gpu h100|h200`` names
    the machine (``sandbox.vocabulary.gpus.KNOWN_GPUS``); ``--l2-bytes`` and ``--sms`` override single facts.
    Without a device and without ``--gpu`` the check refuses to guess and exits with status 2.

Exit status
    0: every config measured but the skipped ones (and, with ``--strict``, none missed: ``ok`` or
    ``explained``). 1: the profiled run failed or timed out, nothing was measured at all, or (with
    ``--strict``) a config was not measured or missed a target; without ``--strict`` a config not
    measured is reported on a line of its own, with how many. 2: bad arguments or configs (one line;
    ``--dry-run`` checks them too: kinds, passes and builds they offer, sizes, schedules that fit,
    fast builds that can run them; every config skipped), ncu not found (not on the PATH, nor in
    /opt/nvidia/nsight-compute or /usr/local/cuda*/bin), or no machine to model. 3: ncu may not
    read the GPU's counters, or the child found no GPU. ``--dry-run`` prints the command only (and
    the skipped rows, on stderr).
"""

import dataclasses
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from kernels import registry
from sandbox.lab import info
from sandbox.lab.ncu_child import child_argv
from sandbox.lab.ncu_results import (
    DRAM_TOLERANCE,
    ESSENTIAL,
    GLOBAL_TOLERANCE,
    METRICS,
    assign_kernels,
    calibrate,
    calibration_summary,
    parse_ncu_csv,
    plot,
    row_or_error,
    skipped_row,
    summary,
    summary_rows,
    write_csv,
    write_probes_csv,
    write_summary_csv,
)
from sandbox.lab.ncu_specs import (
    BUILD_NAMES,
    DIRECTIONS,
    FAST_PREFIX,
    PLAIN,
    BuildUnavailable,
    Config,
    calibration_probes,
    expected_grids,
    l2_kinds,
    make_mask,
    make_problem,
    make_schedule,
    parse_spec,
    resolve_build,
)
from sandbox.lab.records import PACKAGE_ROOT, atomic_write_json, git_commit
from sandbox.vocabulary import kinds
from sandbox.vocabulary.gpus import KNOWN_GPUS, DeviceFacts, known_gpu
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.validation import check_mask
from simulator import table
from simulator.counts import check_mask_affordable
from simulator.l2 import simulate_dram

#: Where Nsight Compute lives when it is not on the PATH.
NCU_SEARCH_GLOBS = ("/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda*/bin/ncu", "/usr/local/cuda*/nsight-compute*/ncu")
NOT_FOUND = ("ncu not found: install Nsight Compute (ncu on the PATH, or --ncu PATH) to measure; "
             "nothing was measured")
#: ncu's --cache-control values: "all" flushes the caches before each profiled kernel.
CACHE_CONTROLS = ("all", "none")
#: --causal: the masks measured.
CAUSAL = {"no": (False,), "yes": (True,), "both": (False, True)}
#: --backward: the passes measured.
PASSES = {"no": ("fwd",), "yes": ("bwd",), "both": DIRECTIONS}
#: --build (kept beside --builds): its values' build names.
BUILD_FLAG = {"plain": PLAIN, "fast": FAST_PREFIX + "fma"}


def probes_from_args(args):
    return calibration_probes() if args.probes else []


def builds_from_args(args):
    """The builds asked for: ``--builds`` (names, by spaces or commas), else ``--build``'s, in order, once each."""
    names = [b for item in args.builds for b in item.split(",") if b] if args.builds else [BUILD_FLAG[args.build]]
    return list(dict.fromkeys(names))


def not_offered(kind, direction, build):
    """Why a kind has no such row (a string), or None: the backward of a kind without one, a fast
    build (forward or backward) its kernels' registry does not list."""
    if direction == "bwd" and kinds.get(kind).backward is None:
        return f"kind {kind!r} has no backward pass"
    if build != PLAIN:
        entry = registry.get(kind)
        listed = entry.fast if direction == "fwd" else entry.fast_backward
        if listed.get(build[len(FAST_PREFIX):]) is None:
            return f"kind {kind!r} has no {build} {'build' if direction == 'fwd' else 'backward'}"
    return None


def configs_from_args(args):
    """The rows asked for, in order: kind, direction, build, N, d, causal, mask (``--mask``'s specs, ""
    for none); the (kind, direction, build) combinations the kinds do not offer are left out
    (:func:`validate` refuses a direction or build that no kind asked for offers)."""
    causal, masks = CAUSAL[args.causal], getattr(args, "mask", None) or [""]
    if isinstance(masks, str):
        masks = [masks]
    return [Config(k, n, d, c, direction, b, m) for k in args.kinds for direction in PASSES[args.backward]
            for b in builds_from_args(args) if b in BUILD_NAMES and not not_offered(k, direction, b)
            for n in args.n for d in args.d for c in causal for m in dict.fromkeys(masks)]


def measure_order(configs):
    """The child's order: cheap configs first, so that a timeout loses the slowest (flash1's forward runs its
    whole problem in one thread block per (b, h): at N = 16K it takes seconds per replay pass)."""
    return sorted(configs, key=lambda c: (c.kind == "flash1" and not c.backward, c.n, c.d, c.causal))


def model_gpu(args):
    """The machine the L2 model describes: ``--gpu``'s facts, else the device's, with ``--l2-bytes`` and
    ``--sms`` over them.

    Raises:
        ValueError: no ``--gpu`` and no device to read (the message says what to pass).
    """
    facts = known_gpu(args.gpu) if args.gpu else info.device_facts()
    if facts is None:
        raise ValueError("cannot read the GPU's L2 size, SMs and shared memory (no GPU: Numba's CUDA simulator is "
                         f"active); say which machine the model describes: --gpu {'|'.join(sorted(KNOWN_GPUS))}")
    overrides = {k: v for k, v in (("l2_bytes", args.l2_bytes), ("sms", args.sms)) if v is not None}
    return dataclasses.replace(facts, **overrides) if overrides else facts


#: CUDA's limit on a grid's y and z dimensions (B·H runs along one of them)
MAX_GRID_YZ = 65535


def validate(configs, args):
    """Check the arguments and every config before anything runs: sizes, builds and passes the kinds
    offer, kinds with an L2 request stream, schedules that fit their SRAM (the backward's for the
    backward), the mask (its spec, a kind that takes masks, ``Mask.check`` over the problem, a problem
    the simulator evaluates it over), the fast builds where asked for.

    Returns:
        {config: why it is skipped} for the configs whose build is not there to run (a fast backward
        build kernels/builds.py does not offer): their rows say so, and nothing runs for them.

    Raises:
        ValueError: the first problem found, naming the argument or the config.
    """
    for name in ("batch", "heads", "kv_splits", "block_q", "block_kv", "thread_q", "thread_kv", "l2_bytes", "sms",
                 "dirty_limit_bytes"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "dirty_limit_bytes" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    if args.batch * args.heads > MAX_GRID_YZ:
        raise ValueError(f"--batch x --heads = {args.batch * args.heads}: a grid dimension holds at most {MAX_GRID_YZ}")
    asked = builds_from_args(args)
    for b in asked:
        if b not in BUILD_NAMES:
            raise ValueError(f"--builds: unknown build {b!r} (the builds: {', '.join(BUILD_NAMES)})")
    directions = PASSES[args.backward]
    for b in asked:  # the plain build in each direction asked for; a fast build in at least one
        for direction in directions if b == PLAIN else [directions]:
            ways = [direction] if b == PLAIN else direction
            if all(not_offered(k, way, b) for k in args.kinds for way in ways):
                why = "; ".join(dict.fromkeys(not_offered(k, way, b) for k in args.kinds for way in ways))
                flag = "--backward" if b == PLAIN and ways == ["bwd"] else "--builds" if args.builds else "--build"
                which = {"fwd": "forward", "bwd": "backward"}[ways[0]] if len(ways) == 1 else "forward or backward"
                raise ValueError(f"{flag}: no kind of --kinds offers the {which} {b} build ({why})")
    if not configs:
        raise ValueError("no configs: --kinds, --n and --d each need at least one value")
    skipped = {}
    for cfg in configs:
        where = f"config {cfg.label()}"
        if cfg.n < 1 or cfg.d < 1:
            raise ValueError(f"{where}: --n and --d must be positive")
        if cfg.kind not in table.names() or table.get(cfg.kind).l2 is None:
            with_stream = [k for k in table.names() if table.get(k).l2 is not None]
            raise ValueError(f"{where}: the L2 model has no request stream for kind {cfg.kind!r} "
                             f"(it has: {', '.join(with_stream)})")
        try:
            schedule, problem = make_schedule(cfg, args), make_problem(cfg, args)
            schedule.check_fits(problem.head_dim, problem.dtype, backward=cfg.backward)
            mask = make_mask(cfg, args)
            if mask is not None:
                check_mask_affordable(problem)
                check_mask(mask, problem, schedule)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            resolve_build(cfg, schedule, mask)
        except BuildUnavailable as e:
            skipped[cfg] = str(e)
        except ValueError as e:
            raise ValueError(f"{where}: the build cannot run it: {e}") from None
    if len(skipped) == len(configs):
        raise ValueError(f"nothing to measure: every config is skipped ({next(iter(skipped.values()))})")
    return skipped


def unmeasured(rows):
    """The rows of configs that were not measured: no kernels matched, an error, or no global bytes from ncu
    (not the skipped ones, which were not run)."""
    return [r for r in rows if not str(r.get("status")).startswith("skipped")
            and (r.get("status") != "ok" or r.get("global_ratio") is None)]


def find_ncu(explicit=None):
    """Path of the ncu executable: ``explicit``, else the PATH, else a standard install; None if none."""
    if explicit:
        return explicit if os.path.exists(explicit) or shutil.which(explicit) else None
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in NCU_SEARCH_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def ncu_command(ncu, metrics, log_path, child, cache_control="all"):
    """The profiler's command line around ``child`` (the child's command line)."""
    return [ncu, "--clock-control", "none", "--cache-control", cache_control, "--target-processes", "all",
            "--profile-from-start", "off", "--metrics", ",".join(metrics), "--csv", "--print-units", "base",
            "--log-file", log_path, *child]


def _compile_model(args):
    """Run the L2 model once on a tiny problem of each kind and pass: Numba compiles (and caches) its loops."""
    for kind in l2_kinds():
        for direction in DIRECTIONS:
            if not not_offered(kind, direction, PLAIN):
                schedule = make_schedule(Config(kind, 8, 4, True, direction), args)
                simulate_dram(schedule, Problem(1, 1, 8, 8, 4, causal=True), l2_bytes=4096, resident_blocks=1,
                              dirty_limit_bytes=256, backward=direction == "bwd")


def read_manifest(path):
    env, entries = {}, []
    if not os.path.exists(path):
        return env, entries
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "environment" in obj:
                env = obj["environment"]
            else:
                entries.append(obj)
    return env, entries


def _run_quiet(cmd, timeout=20):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_facts():
    """GPU name, driver and memory from nvidia-smi (never changes any setting)."""
    out = _run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                      "--format=csv,noheader"])
    if not out:
        return {"nvidia-smi": "not available"}
    names = ("gpu", "driver", "memory", "sm clock at start", "max sm clock")
    return [dict(zip(names, (x.strip() for x in line.split(",")))) for line in out.splitlines()]


def run_profiler(cmd, timeout, log_path, echo=True):
    """Run ``cmd`` (ncu and the child) in its own process group; echo its output as it comes.

    A watchdog stops the whole group (ncu and the profiled child, not only ncu) when ``timeout``
    seconds have passed, or as soon as ncu's log (``log_path``) says that it refused a metric or
    may not read the counters: the caller can then retry at once instead of after a full run.

    Returns:
        (output, exit status or None when stopped, why it was stopped: None, "timeout", "refused
        metric" or "no counter access").
    """
    stopped, lines = [], []
    env = dict(os.environ)  # the child imports this package wherever the check was started from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          errors="replace", start_new_session=True, env=env) as proc:
        done = threading.Event()

        def watchdog():
            deadline = time.monotonic() + timeout
            while not done.wait(1.0):
                why = "timeout" if time.monotonic() > deadline else _failure(_read(log_path) + "".join(lines))
                if why:
                    stopped.append(why)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    print("  | " + line, end="", flush=True)
            proc.wait()
        finally:
            done.set()
            guard.join()
    why = stopped[0] if stopped else _failure(_read(log_path) + "".join(lines))
    return "".join(lines), (None if stopped else proc.returncode), why


def _read(path):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


_REFUSED_METRIC = re.compile(r"failed to (find|resolve|collect) metric|invalid metric|unknown metric|"
                             r"metric \S+ (was )?not found", re.I)


def _failure(text):
    """Why ncu's output says it cannot do its job ("no counter access", "refused metric"), or None."""
    if "ERR_NVGPUCTRPERM" in text:
        return "no counter access"
    if _REFUSED_METRIC.search(text):
        return "refused metric"
    return None


def check(args, command=None):
    """Run the check (module docstring) with the CLI's parsed arguments (``python -m sandbox ncu``,
    ``sandbox/cli.py``); ``command``: the command line as typed, for the provenance. Returns the exit status."""
    configs = configs_from_args(args)
    try:
        skipped = validate(configs, args)
    except ValueError as e:
        print(f"ncu check: {e}", file=sys.stderr)
        return 2
    out_dir = os.path.abspath(args.out)
    paths = {name: os.path.join(out_dir, name) for name in
             ("ncu_check.csv", "ncu_summary.csv", "ncu_check.json", "ncu_check.png", "ncu_raw.csv", "manifest.jsonl",
              "ncu_child.log", "ncu_probes.csv")}
    ncu = find_ncu(args.ncu)
    metrics = list(METRICS.values())
    probes = probes_from_args(args)
    order = probes + measure_order([c for c in configs if c not in skipped])
    cmd = ncu_command(ncu or "ncu", metrics, paths["ncu_raw.csv"],
                      child_argv(order, args, paths["manifest.jsonl"]), args.cache_control)
    by_reason = {}
    for cfg, why in skipped.items():
        by_reason.setdefault(why, {}).setdefault(f"{cfg.kind} {cfg.direction} {cfg.build}", 0)
        by_reason[why][f"{cfg.kind} {cfg.direction} {cfg.build}"] += 1
    for why, which in by_reason.items():
        print(f"skipped {sum(which.values())} config(s) ({', '.join(which)}): {why}",
              file=sys.stderr if args.dry_run else sys.stdout)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if getattr(args, "from_raw", None):
        try:
            gpu, saved = _saved_run(args.from_raw, paths)
        except ValueError as e:
            print(f"ncu check: {e}", file=sys.stderr)
            return 2
        return _analyse(args, configs, skipped, paths, probes, command, gpu, saved)
    if ncu is None:
        print(NOT_FOUND, file=sys.stderr)
        return 2
    try:
        gpu = model_gpu(args)
    except ValueError as e:
        print(f"ncu check: {e}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for name in ("ncu_raw.csv", "manifest.jsonl"):
        if os.path.exists(paths[name]):
            os.remove(paths[name])

    # -- profile (retried with the essential metrics if ncu refuses one of the others); meanwhile,
    # compile the L2 model's loops (seconds, on a fresh machine) in this process
    threading.Thread(target=_compile_model, args=(args,), daemon=True).start()
    started = time.time()
    status, log_text = "ok", ""
    for attempt in (metrics, [METRICS[k] for k in ESSENTIAL]):
        cmd = ncu_command(ncu, attempt, paths["ncu_raw.csv"], child_argv(order, args, paths["manifest.jsonl"]),
                          args.cache_control)
        print("running: " + shlex.join(cmd), flush=True)
        child_out, rc, why = run_profiler(cmd, args.timeout, paths["ncu_raw.csv"])
        with open(paths["ncu_child.log"], "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{child_out}\n[exit {rc}{', stopped: ' + why if why else ''}]\n")
        log_text = _read(paths["ncu_raw.csv"])
        if why == "no counter access":
            print("ncu may not read the GPU's performance counters here (ERR_NVGPUCTRPERM); nothing was measured",
                  file=sys.stderr)
            return 3
        if why == "refused metric" and attempt is metrics:
            print("ncu refused a metric (its log is in ncu_child.log); retrying with the essential metrics only",
                  flush=True)
            with open(paths["ncu_child.log"], "a") as f:
                f.write(f"[ncu's log of the refused run]\n{log_text}\n")
            for name in ("ncu_raw.csv", "manifest.jsonl"):
                if os.path.exists(paths[name]):
                    os.remove(paths[name])
            continue
        if why == "timeout":
            status = f"timed out after {args.timeout:.0f} s (partial results)"
        elif why or rc != 0:
            status = f"profiled child exited with {rc}{' (' + why + ')' if why else ''}; see ncu_child.log"
        break
    measured_run = {"status": status, "log_text": log_text, "child_out": child_out, "ncu_command": shlex.join(cmd),
                    "ncu_version": _run_quiet([ncu, "--version"]), "gpu_facts": gpu_facts(),
                    "profile_seconds": round(time.time() - started, 1), "manifest": paths["manifest.jsonl"],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return _analyse(args, configs, skipped, paths, probes, command, gpu, measured_run)


def _saved_run(raw_dir, paths):
    """(the model's GPU, the measured run) of a saved check's folder: its ``ncu_raw.csv`` and
    ``manifest.jsonl`` (the measurements) and, where present, its ``ncu_check.json`` (the machine's
    facts, ncu's version and command, the date measured), for :func:`check`'s ``--from-raw``."""
    raw_dir = os.path.abspath(raw_dir)
    log_text = _read(os.path.join(raw_dir, "ncu_raw.csv"))
    if not log_text or not os.path.exists(os.path.join(raw_dir, "manifest.jsonl")):
        raise ValueError(f"{raw_dir} holds no ncu_raw.csv and manifest.jsonl of a measured run")
    saved = {}
    if os.path.exists(os.path.join(raw_dir, "ncu_check.json")):
        with open(os.path.join(raw_dir, "ncu_check.json")) as f:
            saved = json.load(f)
    model = saved.get("model", {}).get("gpu")
    gpu = DeviceFacts(**model) if model else None
    return gpu, {"status": saved.get("status", "ok"), "log_text": log_text, "child_out": "",
                 "ncu_command": saved.get("ncu_command", ""), "ncu_version": saved.get("ncu_version", ""),
                 "gpu_facts": saved.get("gpu"), "profile_seconds": saved.get("profile_seconds"),
                 "manifest": os.path.join(raw_dir, "manifest.jsonl"), "date": saved.get("date"),
                 "reanalysed_from": raw_dir}


def _analyse(args, configs, skipped, paths, probes, command, gpu, run):
    """The check's second half: the measured kernels assigned to configs, predicted, compared, written."""
    if gpu is None:
        gpu = model_gpu(args)
    status, log_text, child_out = run["status"], run["log_text"], run["child_out"]
    os.makedirs(os.path.dirname(paths["ncu_check.csv"]), exist_ok=True)

    # -- assign kernels to configs, predict, compare
    kernels = parse_ncu_csv(log_text) or parse_ncu_csv(child_out)
    env, entries = read_manifest(run["manifest"])
    measured = [parse_spec(e["spec"]) for e in entries]  # in the child's launch order
    matched = dict(zip(measured, assign_kernels(kernels, entries, [expected_grids(c, args) for c in measured])))
    builds = {parse_spec(e["spec"]): e.get("build") for e in entries}
    calibration = calibrate({p: matched.get(p) for p in probes}, args)
    rows = [skipped_row(cfg, args, skipped[cfg]) if cfg in skipped
            else row_or_error(cfg, args, gpu, matched.get(cfg), calibration, builds.get(cfg)) for cfg in configs]
    missing = unmeasured(rows)
    run_failed = status != "ok"
    if missing and not run_failed:
        status = f"{len(missing)} of {len(rows) - len(skipped)} configs not measured"
    write_csv(rows, paths["ncu_check.csv"])
    write_probes_csv(calibration, paths["ncu_probes.csv"])
    prov = {
        "command": command or shlex.join(sys.argv),
        "ncu_command": run["ncu_command"],
        "ncu_version": run["ncu_version"],
        "status": status,
        "profile_seconds": run["profile_seconds"],
        "date": run["date"],
        **({"reanalysed_from": run["reanalysed_from"],
            "reanalysed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
           if "reanalysed_from" in run else {}),
        "gpu": run["gpu_facts"],
        "git_commit": git_commit(),
        "child_environment": env,
        "model": {"l2_bytes": gpu.l2_bytes, "sms_default": gpu.sms, "gpu": dataclasses.asdict(gpu),
                  "cache_control": args.cache_control,
                  "cold_launches": args.cache_control == "all",
                  "sim_dram_bytes": "reads + writes evicted or cleaned (dirty limit) during the kernels "
                                    "(the end-of-kernel flush apart)",
                  "pred_dram_bytes": "sim_dram_bytes + background_write_bytes_per_s x the kernels' measured time",
                  "calibration": calibration,
                  "targets": {"global": GLOBAL_TOLERANCE, "dram": DRAM_TOLERANCE}},
        "metrics": METRICS,
        "kernels": [dataclasses.asdict(k) for k in kernels],
        "rows": rows,
        "summary": summary_rows(rows),
    }
    atomic_write_json(paths["ncu_check.json"], prov, indent=1, default=str)
    write_summary_csv(rows, paths["ncu_summary.csv"], {
        "command": prov["command"], "date": prov["date"], "git commit": prov["git_commit"], "status": status,
        "gpu": gpu.name, "ncu": prov["ncu_version"],
        "targets": f"global bytes within {GLOBAL_TOLERANCE:.0%} of sim_hbm_bytes (or, explained, of sim_l1_bytes: "
                   f"the same in whole sectors per warp instruction); DRAM within {DRAM_TOLERANCE:.0%} of "
                   f"pred_dram_bytes",
        "files": "ncu_check.csv and ncu_check.json hold every column, and each row's kernels one by one"})
    try:
        plot(rows, paths["ncu_check.png"])
    except ImportError as e:  # the CSV and JSON are written: say so and go on
        print(f"no figure: {e}")
    print(calibration_summary(calibration))
    for r in missing:
        cfg = Config(r["kind"], r["n"], r["d"], bool(r["causal"]), r["direction"], r["build"], r.get("mask", ""))
        print(f"not measured: {cfg.label()} ({r.get('status')})")
    if missing:
        print(f"{len(missing)} of {len(rows) - len(skipped)} configs were not measured")
    print(f"wrote {paths['ncu_check.csv']}, {paths['ncu_summary.csv']}, {paths['ncu_check.json']}, "
          f"{paths['ncu_check.png']} ({status})")
    print(summary(rows))
    if run_failed or len(missing) == len(rows) - len(skipped) or (missing and args.strict):
        return 1
    if args.strict and any(str(r.get("verdict")).startswith("miss") for r in rows):
        return 1
    return 0

