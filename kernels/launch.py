"""Compile (once, cached) and launch the kernels of a schedule; move arrays between host and device.

Every launch goes to one stream, the CUDA default (legacy) stream, which orders itself with
CuPy's and PyTorch's default streams without any host synchronization. Device inputs are
wrapped with ``sync=False`` (Numba would otherwise synchronize on every CUDA-array-interface
argument); the host waits only where the caller needs data: copies back to NumPy, and the
IO counters.
"""

import contextlib
import functools
import math

import numpy as np
from numba import cuda, float32, void
from numba.cuda.cudadrv.devices import require_context
from numba.cuda.cudadrv.driver import device_memset

from kernels import backward as backward_kernels
from kernels import registry
from kernels.builds import choose_backward_build, choose_build
from kernels.counters import new_counters, to_report
from kernels.limits import check_fp32_range, host_facts
from kernels.smem import allow_dynamic_smem, check_device_limit
from kernels.tiles import COUNTERS, array_type
from sandbox.vocabulary import kinds
from sandbox.vocabulary.dtypes import BFLOAT16, storage_dtype
from sandbox.vocabulary.runtime import using_simulator


def _phases(schedule, dtype, backward, chosen, grouped=False, atomic_dq=False, ordered_dq=False):
    """phase -> (maker, argument types), in launch order: the chosen build's (kernels/builds.py) or the backward's.

    ``grouped`` (the backward, K/V heads H_kv < H): dK and dV go through fp32 partials, and a
    "group_sum" phase adds each group of them up (kernels/backward.py). ``atomic_dq``: the fast
    backward's dkdv adds dQ by atomics, and there is no dq phase (kernels/backward_tc.py); with
    ``ordered_dq`` in a fixed order, two sums that a "dq_sum" phase adds up (``ORDERED_DQ`` there)."""
    kind = schedule.kind
    if atomic_dq:
        return chosen.module.phases(dtype, atomic_dq=True, ordered=bool(ordered_dq))
    if not backward or chosen.fast:
        return chosen.module.phases(dtype)
    IN4, F3, F4, C = array_type(dtype, 4), array_type(np.float32, 3), array_type(np.float32, 4), COUNTERS
    DKV = F4 if grouped else IN4  # what dkdv (standard: dv, dk) writes: partials or dK, dV themselves
    d = {"d": (backward_kernels.make_d, (IN4, IN4, F3, C))}
    tail = {"group_sum": (backward_kernels.make_group_sum, (F4, F4, IN4, IN4, C))} if grouped else {}
    if kinds.get(kind).backward == "flash":
        dkdv = functools.partial(backward_kernels.make_flash_dkdv, grouped=grouped)
        return {
            **d,
            "dkdv": (dkdv, (IN4, IN4, IN4, IN4, F3, F3, DKV, DKV, float32, C)),
            "dq": (backward_kernels.make_flash_dq, (IN4, IN4, IN4, IN4, F3, F3, IN4, float32, C)),
            **tail,
        }
    prod = lambda phase: lambda *a, **kw: backward_kernels.make_standard_products(*a, **kw, grouped=grouped)[phase]  # noqa: E731
    return {
        **d,
        "p": (backward_kernels.make_standard_p, (IN4, IN4, F3, F4, F4, float32, C)),
        "ds": (backward_kernels.make_standard_ds, (IN4, IN4, F3, F4, F4, float32, C)),
        "dv": (prod("dv"), (F4, IN4, DKV, float32, C)),
        "dk": (prod("dk"), (F4, IN4, DKV, float32, C)),
        "dq": (prod("dq"), (F4, IN4, IN4, float32, C)),
        **tail,
    }


def max_registers(threads, blocks=1, per_sm=65536, partitions=4):
    """Registers per thread that let ``blocks`` blocks of ``threads`` reside on one SM (registers
    are allocated per warp, in units of 8 per thread; at most 255, the ISA's limit).

    An SM's register file is split among its ``partitions`` schedulers, and warps are dealt to them
    in turn: the partition with the most warps bounds the count. (On an H100, 480 threads at 136
    registers, 65,280 in all, failed to launch: 4 of the 15 warps share one 16,384-register
    partition.)"""
    warps = -(-threads // 32) * blocks
    per_partition_warps = -(-warps // partitions)
    return max(8, min(255, per_sm // partitions // (32 * per_partition_warps) // 8 * 8))


def _threads(schedule, chosen, phase, head_dim, dtype, masked):
    """Threads per block of ``phase``: the schedule's, or the fast build's own where it has them
    (given the head dim, the inputs' dtype and whether a mask applies)."""
    own = getattr(chosen.module, "threads", None) if chosen.fast else None
    return schedule.threads if own is None else own(schedule, phase, head_dim, np.dtype(dtype), masked)


def _jit_options(schedule, head_dim, chosen, threads):
    """A register cap that lets the block launch, or for a fast build (``chosen``, a
    kernels/builds.py Build) that lets as many blocks reside as its shared memory does (the build's
    ``min_blocks_per_sm``, like CUDA's __launch_bounds__), with all of the SM's L1/shared carveout
    as shared memory; nothing under the simulator.

    (On an H100: plain flash2 on 64×64 blocks compiled with an explicit cap of 255 ran
    1.4× slower than without one; the cap is now passed only where it is below 255.)"""
    if using_simulator():
        return {}
    opts = {}
    if chosen.fast:
        opts["shared_memory_carveout"] = "MaxShared"
    cap = max_registers(threads, chosen.module.min_blocks_per_sm(schedule, head_dim) if chosen.fast else 1)
    if cap < 255:  # only where it binds: 255 is the default, and naming it changed plain flash2's code
        opts["max_registers"] = cap
    return opts


@functools.lru_cache(maxsize=256)
def build(schedule, head_dim, dtype_name, causal, chosen, backward=False, mask=None, grouped=False, head_dim_v=None,
          score_mod=None, atomic_dq=False, ordered_dq=False):
    """Compiled kernels for one (schedule, head_dim, dtype, causal, build, direction, mask, grouping, d_v,
    score_mod, dQ by atomics, in order).

    ``chosen``: the :class:`kernels.builds.Build` (forward: :func:`kernels.builds.choose_build`'s;
    backward: :func:`kernels.builds.choose_backward_build`'s), which says whether the kernels count.
    ``mask``: a sandbox.vocabulary.masks.Mask, compiled into the kernels (forward or backward); cached per Mask object.
    ``score_mod``: a sandbox.vocabulary.score_mods.ScoreMod, compiled in the same way, cached per ScoreMod object.
    ``grouped``: the backward of grouped K/V heads (H_kv < H; :func:`_phases`). The forward's kernels
    take either (a query head's K/V head is read from the arrays' shapes).
    ``head_dim_v``: V's head dim d_v, passed to every maker where it is not None or ``head_dim``
    (a fast build gets it only where kernels/builds.py chose it for d_v ≠ d).
    ``atomic_dq``: the fast backward's dkdv that also adds dQ by fp32 atomics (no dq kernel;
    :func:`run_backward` with ``deterministic=False``); with ``ordered_dq`` too, the deterministic
    mode's dkdv that adds them in a fixed order (kernels/backward_tc.py, ``ORDERED_DQ``).

    Returns:
        dict phase -> (kernel, smem_bytes, grid(problem)), in launch order.
    """
    dtype = np.dtype(dtype_name)
    out = {}
    for phase, (maker, sig) in _phases(schedule, dtype, backward, chosen, grouped, atomic_dq, ordered_dq).items():
        extra = {} if mask is None else {"mask": mask}
        if head_dim_v is not None and head_dim_v != head_dim:
            extra["head_dim_v"] = head_dim_v
        if score_mod is not None:
            extra["score_mod"] = score_mod
        py_func, smem_bytes, grid = maker(schedule, head_dim, dtype, chosen.count_io, causal, **extra)
        signature = void(*sig)
        kernel = cuda.jit(signature, **_jit_options(
            schedule, head_dim, chosen, _threads(schedule, chosen, phase, head_dim, dtype, mask is not None)))(py_func)
        if not using_simulator():
            allow_dynamic_smem(kernel.overloads[signature.args], smem_bytes)
        out[phase] = (kernel, smem_bytes, grid)
    return out


#: CUDA's limits on a grid's x, y and z dimensions (blocks).
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_grids(kernels, problem):
    """Raise ValueError, before anything is allocated or launched, if a phase's grid is over CUDA's limits.

    Every kernel puts B·H on its grid's y or z dimension (at most 65,535): a larger batch × heads
    has to be split into several calls.
    """
    for phase, (_, _, grid) in kernels.items():
        dims = grid(problem)
        for axis, n, limit in zip("xyz", dims, MAX_GRID):
            if n <= limit:
                continue
            if n == problem.bh:
                raise ValueError(
                    f"batch, heads: batch × heads = {problem.batch} × {problem.heads} = {n} is over CUDA's "
                    f"limit of {limit} blocks in a grid's {axis} dimension; split the call into batches "
                    f"of at most {limit} (batch × heads)"
                )
            raise ValueError(
                f"{phase!r} kernel: its grid {tuple(dims)} has {n} blocks in the {axis} dimension, over "
                f"CUDA's limit of {limit}; use larger blocks (block_q, block_kv) or a shorter sequence"
            )


#: Running totals that :func:`counting_allocations` holds open: each allocation adds its bytes.
_ALLOCATION_TOTALS = []


@contextlib.contextmanager
def counting_allocations():
    """Sum the bytes the launcher allocates while inside (outputs and scratch, all through
    :func:`device_empty`). Yields a one-element list holding the running total."""
    total = [0]
    _ALLOCATION_TOTALS.append(total)
    try:
        yield total
    finally:
        _ALLOCATION_TOTALS.remove(total)


def device_zeros(shape, dtype, what, stream):
    """:func:`device_empty`, zeroed on ``stream`` (a memset on the GPU) before anything launched after it."""
    x = device_empty(shape, dtype, what)
    if using_simulator():
        x.copy_to_device(np.zeros(shape, storage_dtype(dtype)))
    else:
        device_memset(x, 0, x.size * x.dtype.itemsize, stream)
    return x


def device_empty(shape, dtype, what):
    """An uninitialised device array for a kernel's output or scratch.

    On a GPU with CuPy, from CuPy's memory pool (:func:`_pooled_array`): a raw cuMemAlloc per call
    cost about 0.2 ms per array on an H100, 15% of a 4 ms attention call. Else, under the
    simulator, or where CuPy's current device is not Numba's, Numba's ``device_array``.

    Raises:
        MemoryError: the GPU cannot hold it, with the array's name, shape and size.
    """
    storage = storage_dtype(dtype)
    nbytes = int(math.prod(shape)) * np.dtype(dtype).itemsize
    for total in _ALLOCATION_TOTALS:
        total[0] += nbytes
    try:
        cupy = _cupy()
        if cupy is not None:
            ctx = cuda.current_context()
            if cupy.cuda.runtime.getDevice() == ctx.device.id:
                return _pooled_array(cupy, ctx, shape, np.dtype(storage))
        return cuda.device_array(shape, dtype=storage)
    except Exception as e:  # numba raises CudaAPIError / MemoryError variants for OOM, CuPy OutOfMemoryError
        raise MemoryError(
            f"cannot allocate {what} {shape} {np.dtype(dtype).name} ({nbytes / 2**30:.2f} GiB) on the GPU: {e}"
        ) from e


def _pooled_array(cupy, ctx, shape, dtype):
    """A C-contiguous Numba device array over a block of CuPy's memory pool, which the array keeps
    alive. Built directly (the pointer, its owner, the shape): wrapping a CuPy array through the
    CUDA array interface cost about 40 µs of host time per array on an H200, a tenth of a
    0.4 ms call (BENCHMARKS.md, "Host time of a call")."""
    from numba.cuda.cudadrv import devicearray, driver

    nbytes = int(math.prod(shape)) * dtype.itemsize
    block = cupy.cuda.alloc(nbytes)
    pointer = driver.MemoryPointer(ctx, driver.binding.CUdeviceptr(block.ptr), size=nbytes, owner=block)
    strides = [dtype.itemsize]
    for n in reversed(shape[1:]):
        strides.append(strides[-1] * n)
    return devicearray.DeviceNDArray(shape=tuple(shape), strides=tuple(reversed(strides)), dtype=dtype,
                                     gpu_data=pointer)


@functools.lru_cache(maxsize=1)
def _cupy():
    """CuPy where it can allocate (a GPU, CuPy installed), else None."""
    if using_simulator():
        return None
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


#: context handle -> (context, its default stream, the shared zero counters): see :func:`_held`.
_CONTEXTS = {}


def _held():
    """The current context's default stream and shared zero counters (:func:`_counters`), made once
    per context: Numba builds a new stream object per ``cuda.default_stream()`` call, and its
    cuda.core twin (:func:`launch_lean`) cost 10 µs more per launch on an H200."""
    ctx = cuda.current_context()
    key = int(ctx.handle.value if hasattr(ctx.handle, "value") else ctx.handle)  # (ctypes or cuda-bindings)
    held = _CONTEXTS.get(key)
    if held is None or held[0] is not ctx:  # (a context closed and another one given its handle)
        held = _CONTEXTS[key] = (ctx, cuda.default_stream(), cuda.to_device(new_counters()))
    return held


def _default_stream():
    """The CUDA default stream of the current context (on a GPU, one object per context)."""
    return cuda.default_stream() if using_simulator() else _held()[1]


def _counters(count_io):
    """The counters array a launch passes: fresh zeros when counting; else one shared array per
    context, which no kernel writes when COUNT_IO is off (kernels/counters.py), so that a plain call
    makes no host-to-device copy (0.2 ms on an H100)."""
    if count_io or using_simulator():
        return cuda.to_device(new_counters(), stream=_default_stream())
    return _held()[2]


# (require_context: the call's CUDA context is looked up once and held for Numba's calls inside,
# which would each ask the driver again: 8 µs a lookup on an H200)
@require_context
def run(schedule, problem, q, k, v, count_io=False, mask=None, fast=None, chosen=None, score_mod=None):
    """Run ``schedule`` on device arrays q, k, v (Numba device arrays, C-contiguous).

    ``chosen``: the :class:`kernels.builds.Build` to run; None: :func:`kernels.builds.choose_build`'s
    for ``count_io``, ``mask`` and ``fast`` (None: the fast build whenever it can run this).
    ``score_mod``: a :class:`sandbox.vocabulary.score_mods.ScoreMod` (or None), compiled into the kernels.

    Returns:
        (out, lse, report, build): device arrays (B, H, Nq, d_v) in the input dtype (k, v may have
        H_kv heads: query head h reads K/V head h // (H / H_kv)) and (B, H, Nq)
        fp32, the measured IOReport (None unless ``count_io``), and the Build that ran.
    """
    plain = chosen is None and not count_io and mask is None and score_mod is None
    planned = _PLANS.get((schedule, problem, fast)) if plain else None
    if planned is not None:
        chosen, ks = planned
    else:
        chosen, ks = _plan(schedule, problem, count_io, mask, fast, chosen, score_mod)
        if plain:
            while _PLANS and len(_PLANS) >= MAX_PLANS:  # the oldest go (their kernels stay in build's cache)
                del _PLANS[next(iter(_PLANS))]
            _PLANS[(schedule, problem, fast)] = (chosen, ks)
    check_alignment(chosen, (q, k, v), "qkv")
    stream = _default_stream()
    b, h, n_q, d_v = problem.batch, problem.heads, problem.n_q, problem.head_dim_v
    out = device_empty((b, h, n_q, d_v), problem.dtype, "O")
    lse = device_empty((b, h, n_q), np.float32, "L")
    counters = _counters(chosen.count_io)
    scale = np.float32(problem.scale)
    launch = _launcher(ks, problem, schedule, stream, chosen, mask is not None)
    # the kind launches its phases (and allocates its scratch through device_empty)
    registry.get(schedule.kind).kernels.launch(
        launch, schedule, problem, q, k, v, out, lse, scale, counters, lambda shape, dt, name: device_empty(shape, dt, name))
    report = to_report(counters.copy_to_host(stream=stream), problem.dtype) if chosen.count_io else None
    return out, lse, report, chosen


#: (schedule, problem, fast) -> :func:`_plan`'s (build, kernels) of calls with no mask, score_mod or
#: counters: a repeated call skips the choice, the compile cache's key and the grid checks.
_PLANS = {}
#: Plans kept at most, the oldest dropped first: as many as :func:`build` keeps compiled kernels.
MAX_PLANS = 256


def _plan(schedule, problem, count_io, mask, fast, chosen, score_mod):
    """(build, kernels) of a forward call, its device limits and grids checked (raises before any
    allocation or launch)."""
    if chosen is None:
        chosen = choose_build(schedule, problem.head_dim, count_io=count_io, mask=mask, fast=fast,
                              grouped=problem.group > 1, dtype=problem.dtype, head_dim_v=problem.head_dim_v,
                              score_mod=score_mod)
    if not chosen.fast:  # (a fast build's own need was checked by choose_build)
        # before any attribute or launch
        check_device_limit(schedule.sram_footprint(problem.head_dim, problem.dtype, head_dim_v=problem.head_dim_v))
    extra = {} if score_mod is None else {"score_mod": score_mod}  # (calls without one keep their cache key)
    ks = build(schedule, problem.head_dim, problem.dtype.name, problem.causal, chosen, mask=mask, **extra,
               **_dv(problem))
    check_grids(ks, problem)
    return chosen, ks


def device_address(x):
    """The device address of ``x``'s first element (under the simulator, its host memory's)."""
    if using_simulator():
        return x._ary.__array_interface__["data"][0]
    return x.device_ctypes_pointer.value or 0


def check_alignment(chosen, arrays, names):
    """Raise ValueError for an array the build cannot read from where it starts: the 16-bit builds
    (``ALIGNMENT`` in their modules) copy their tiles with ``cp.async``, 16 bytes from a 16-byte
    aligned address, and a C-contiguous view that starts inside an allocation can be off by a few
    bytes (the copy would fault on the GPU). Arrays the launcher allocates are aligned."""
    need = getattr(chosen.module, "ALIGNMENT", None)
    if need is None:
        return
    for x, name in zip(arrays, names):
        off = device_address(x) % need
        if off:
            raise ValueError(
                f"{name}: its first element is {off} bytes past a {need}-byte boundary; the {chosen.name} "
                f"build copies whole {need}-byte words with cp.async: pass a copy (allocated aligned)")


def _dv(problem):
    """``build``'s head_dim_v argument for ``problem``: none when d_v = d (the cache key it always had)."""
    return {} if problem.head_dim_v == problem.head_dim else {"head_dim_v": problem.head_dim_v}


def _launcher(kernels, problem, schedule, stream, chosen, masked):
    """launch(phase, *args): one kernel of ``kernels`` on its grid, its block (:func:`_threads`), ``stream``
    (on a GPU through :func:`launch_lean`)."""

    def launch(phase, *args):
        kernel, smem, grid = kernels[phase]
        threads = _threads(schedule, chosen, phase, problem.head_dim, problem.dtype, masked)
        launch_lean(kernel, grid(problem), threads, stream, smem, args)

    return launch


def _lean_parts():
    """cuda.core's launch and LaunchConfig, Numba's stream conversion and device array class, and
    whether LaunchConfig names its cooperative flag ``is_cooperative`` (cuda.core 1.0 on); None under
    the simulator or where this Numba lacks one of them (then every launch takes Numba's own path)."""
    if using_simulator():
        return None
    try:
        from cuda.core import LaunchConfig
        from cuda.core import launch as core_launch
        from numba.cuda._compat import CUDA_CORE_GE_1_0
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        from numba.cuda.cudadrv.driver import _to_core_stream
    except ImportError:
        return None
    return core_launch, LaunchConfig, _to_core_stream, DeviceNDArray, CUDA_CORE_GE_1_0


_LEAN = []
#: id(stream) -> (stream, its cuda.core stream), for the streams :func:`_held` keeps (alive, so their
#: ids are not reused)
_CORE_STREAMS = {}


@functools.lru_cache(maxsize=256)
def _launch_config(grid, threads, smem, cooperative):
    """cuda.core's LaunchConfig for (grid, block, dynamic shared memory, cooperative), made once per
    combination (its keyword for a cooperative launch depends on the cuda.core version)."""
    launch_config, ge_1_0 = _LEAN[0][1], _LEAN[0][4]
    flag = {"is_cooperative" if ge_1_0 else "cooperative_launch": cooperative}
    return launch_config(grid=grid, block=(threads,), shmem_size=smem, **flag)


def _core_stream(stream):
    """cuda.core's view of a Numba stream, kept for the streams :func:`_held` holds."""
    held = _CORE_STREAMS.get(id(stream))
    if held is not None and held[0] is stream:
        return held[1]
    core = _LEAN[0][2](stream)
    if any(stream is h[1] for h in _CONTEXTS.values()):
        _CORE_STREAMS[id(stream)] = (stream, core)
    return core


def lean_args(overload, args, stream, keep):
    """The kernel parameters Numba's launcher passes for ``args`` (its flattened array ABI: meminfo,
    parent, size, itemsize, data pointer, shape, byte strides per array), built straight from Numba
    device arrays; any other argument through the overload's own ``_prepare_args`` (``keep``
    collects what must outlive the launch)."""
    device_array = _LEAN[0][3]
    out = []
    for ty, val in zip(overload.argument_types, args):
        if type(val) is device_array:
            out += (0, 0, val.size, val.dtype.itemsize, val.device_ctypes_pointer.value or 0)
            out += val.shape
            out += val.strides
        else:
            overload._prepare_args(ty, val, stream, keep, out)
    return out


def launch_lean(kernel, grid, threads, stream, smem, args):
    """Launch ``kernel`` (a compiled, single-signature cuda.jit kernel) on ``grid`` × ``threads`` with
    ``smem`` bytes of dynamic shared memory.

    Numba's ``kernel[grid, block, stream, smem](*args)`` goes through its launch-configuration
    bookkeeping and, per array, a memory view and context checks, all on the host before the GPU
    starts; with :data:`_PLANS` this launch took a forward call's host time from 0.214 to 0.132 ms
    in a probe on an H200 (BENCHMARKS.md, "Host time of a call", with a later probe's figures). On a
    GPU this passes the same parameters (:func:`lean_args`) to cuda.core's launch, as Numba's
    launcher does last; under the simulator, or where this Numba lacks the pieces, Numba's own
    launch runs.
    """
    if not _LEAN:
        _LEAN.append(_lean_parts())
    parts = _LEAN[0]
    overload = None if parts is None or len(kernel.overloads) != 1 else next(iter(kernel.overloads.values()))
    # Numba's own path where it does more than pass parameters: a debug build's exception check,
    # argument extensions
    if overload is None or overload.debug or overload.extensions:
        kernel[grid, (threads,), stream, smem](*args)
        return
    keep = []
    params = lean_args(overload, args, stream, keep)
    config = _launch_config(tuple(grid), threads, smem, bool(overload.cooperative))
    parts[0](_core_stream(stream), config, overload._codelibrary.get_cufunc().kernel, *params)
    for writeback in keep:
        writeback()


@require_context
def run_backward(schedule, problem, q, k, v, out, lse, dout, count_io=False, mask=None, fast=None, chosen=None,
                 score_mod=None, deterministic=True, dq_kernel=False):
    """dQ, dK, dV for device arrays (C-contiguous): see kernels/backward.py (and kernels/backward_tc.py).

    ``mask``: the forward's :class:`sandbox.vocabulary.masks.Mask` (or None), compiled into every
    phase: its empty tiles are skipped, the rest masked entry by entry. ``chosen``: the
    :class:`kernels.builds.Build` to run; None: :func:`kernels.builds.choose_backward_build`'s for
    ``count_io``, ``mask`` and ``fast``. ``score_mod``: the forward's ScoreMod (or None), with its
    ``grad``, compiled into every phase that forms P or dS. Where the fast backward can
    (kernels/backward_tc.py, ``atomic_dq``), its dkdv also adds dQ to HBM by fp32 atomics and no dq
    kernel runs: deterministic (the default), each element's additions in a fixed order (``ORDERED_DQ``
    there); ``deterministic=False``, in the GPU's order. Elsewhere ``deterministic`` changes nothing.
    ``dq_kernel``: dQ by its own kernel even there (deterministic; the HBM tiles the simulator counts
    for the flash backward: the ncu check runs it, and the bench compares it).

    With grouped K/V heads (``problem.heads_kv`` < ``problem.heads``) dK and dV, (B, H_kv, Nk, d) and
    (B, H_kv, Nk, d_v),
    sum each group's query heads: the kernels write fp32 partials (B, H, Nk, d) to scratch and a
    last "group_sum" launch adds them up in a fixed order (kernels/backward.py).

    Returns:
        (dq, dk, dv, report): device arrays in the input dtype, and the measured IOReport (None
        unless ``count_io``).
    """
    grouped = problem.group > 1
    if chosen is None:
        chosen = choose_backward_build(schedule, problem.head_dim, count_io=bool(count_io), mask=mask, fast=fast,
                                       grouped=grouped, head_dim_v=problem.head_dim_v, score_mod=score_mod,
                                       dtype=problem.dtype)
    if not chosen.fast:
        check_device_limit(schedule.sram_footprint(problem.head_dim, problem.dtype, backward=True,
                                                   head_dim_v=problem.head_dim_v))
    extra = {"grouped": True} if grouped else {}  # (today's calls keep their cache key)
    if score_mod is not None:
        extra["score_mod"] = score_mod
    if dq_kernel and not deterministic:
        raise ValueError("dq_kernel=True is the deterministic dQ of a dq kernel; it cannot run with deterministic=False")
    extra.update(dq_build(schedule, problem, chosen, mask, deterministic, dq_kernel))
    ks = build(schedule, problem.head_dim, problem.dtype.name, problem.causal, chosen, backward=True, mask=mask,
               **extra, **_dv(problem))
    check_grids(ks, problem)
    check_alignment(chosen, (q, k, v, dout), ("q", "k", "v", "dout"))
    stream = _default_stream()
    b, h, n_q, n_kv, d = problem.batch, problem.heads, problem.n_q, problem.n_kv, problem.head_dim
    d_v = problem.head_dim_v
    fused = extra.get("atomic_dq", False)  # (dkdv adds to dQ, which starts at zero)
    ordered = extra.get("ordered_dq", False)
    if ordered:  # dQ's two sums (causal: one, dQ itself) and the turns, zeroed
        sums = device_zeros((b, h, n_q if problem.causal else 2 * n_q, d), np.float32, "dQ sums", stream)
        dq = sums if problem.causal else device_empty((b, h, n_q, d), problem.dtype, "dQ")
        turns = device_zeros((chosen.module.ordered_turns(schedule, d, problem),), np.int32, "dQ turns", stream)
    elif fused:
        dq = device_zeros((b, h, n_q, d), problem.dtype, "dQ", stream)
    else:
        dq = device_empty((b, h, n_q, d), problem.dtype, "dQ")
    dk = device_empty((b, problem.heads_kv, n_kv, d), problem.dtype, "dK")
    dv = device_empty((b, problem.heads_kv, n_kv, d_v), problem.dtype, "dV")
    dvec = device_empty((b, h, n_q), np.float32, "D")
    counters = _counters(count_io)
    scale = np.float32(problem.scale)
    launch = _launcher(ks, problem, schedule, stream, chosen, mask is not None)
    launch("d", out, dout, dvec, counters)
    dk_out, dv_out = dk, dv
    if grouped:  # each query head's dK, dV partials, summed per group by the last launch
        dk_out = device_empty((b, h, n_kv, d), np.float32, "dK partials")
        dv_out = device_empty((b, h, n_kv, d_v), np.float32, "dV partials")
    if ordered:
        launch("dkdv", q, k, v, dout, lse, dvec, dk_out, dv_out, sums, turns, scale, counters)
        if not problem.causal:
            launch("dq_sum", sums, dq, counters)
    elif fused:
        launch("dkdv", q, k, v, dout, lse, dvec, dk_out, dv_out, dq, scale, counters)
    elif chosen.fast or kinds.get(schedule.kind).backward == "flash":
        launch("dkdv", q, k, v, dout, lse, dvec, dk_out, dv_out, scale, counters)
        launch("dq", q, k, v, dout, lse, dvec, dq, scale, counters)
    else:
        p = device_empty((b, h, n_q, n_kv), np.float32, "P")
        ds = device_empty((b, h, n_q, n_kv), np.float32, "dS")
        # (with a score_mod, p also writes score_mod'(S) into the dS buffer, which ds reads and overwrites)
        launch("p", q, k, lse, p if score_mod is None else ds, p, scale, counters)
        launch("ds", dout, v, dvec, p, ds, scale, counters)
        launch("dv", p, dout, dv_out, np.float32(1.0), counters)
        launch("dk", ds, q, dk_out, scale, counters)
        launch("dq", ds, k, dq, scale, counters)
    if grouped:
        launch("group_sum", dk_out, dv_out, dk, dv, counters)
    report = to_report(counters.copy_to_host(stream=stream), problem.dtype) if count_io else None
    return dq, dk, dv, report


def dq_build(schedule, problem, chosen, mask=None, deterministic=True, dq_kernel=False):
    """:func:`build`'s arguments for the backward's dQ: ``{}`` where a dq kernel forms it
    (``dq_kernel``, or no atomic-dQ dkdv for this build), ``{"atomic_dq": True}`` where dkdv adds it
    by atomics in the GPU's order (not ``deterministic``), and ``{"atomic_dq": True, "ordered_dq":
    True}`` where it adds them in a fixed order (kernels/backward_tc.py, ``ORDERED_DQ``)."""
    if dq_kernel or not atomic_dq_runs(schedule, problem, chosen, mask):
        return {}
    if not deterministic:
        return {"atomic_dq": True}
    return {"atomic_dq": True, "ordered_dq": True} if ordered_dq_runs(chosen) else {}


def ordered_dq_runs(chosen):
    """Whether the deterministic mode adds dQ by atomics in a fixed order where the fast build can
    add it by atomics (kernels/backward_tc.py, ``ORDERED_DQ``), not by a dq kernel."""
    return chosen.fast and getattr(chosen.module, "ORDERED_DQ", False)


def atomic_dq_runs(schedule, problem, chosen, mask):
    """Whether ``deterministic=False`` changes this backward: the fast build's dkdv can add dQ by
    atomics (kernels/backward_tc.py, ``atomic_dq``; not with grouped K/V heads)."""
    fused = getattr(chosen.module, "atomic_dq", None) if chosen.fast else None
    return (fused is not None and problem.group == 1
            and fused(schedule, problem.head_dim, problem.dtype, mask is not None))


def to_device(arrays, names):
    """Device views of the caller's arrays: NumPy copied over, Numba device arrays taken as they are,
    other CUDA arrays wrapped without a sync.

    bfloat16 travels as its uint16 bits (sandbox/vocabulary/dtypes.py): NumPy (ml_dtypes) arrays and PyTorch
    tensors are viewed as 16-bit integers, without a copy.

    Raises:
        TypeError: under Numba's CUDA simulator, a CUDA array other than a Numba device array.
        ValueError: a CUDA array that is not C-contiguous.
    """
    if isinstance(arrays[0], np.ndarray):
        stream = cuda.default_stream()
        host = [np.ascontiguousarray(x) for x in arrays]
        return [cuda.to_device(x.view(storage_dtype(x.dtype)), stream=stream) for x in host]
    out = [_as_device(x, name) for x, name in zip(arrays, names)]
    for name, x in zip(names, out):
        if not x.is_c_contiguous():
            raise ValueError(f"{name}: expected a C-contiguous CUDA array; make a contiguous copy first")
    return out


def _as_device(x, name):
    if getattr(x, "__cuda_ndarray__", False):  # a Numba device array (the simulator's too)
        return x
    if using_simulator():  # (its memory lives on a GPU, which the simulator cannot read)
        raise TypeError(
            f"{name}: Numba's CUDA simulator takes NumPy arrays and Numba device arrays (numba.cuda.to_device), "
            f"not a {type(x).__module__}.{type(x).__name__}; pass a NumPy array"
        )
    if _is_torch_bfloat16(x):
        return cuda.as_cuda_array(x.view(_torch().int16), sync=False).view(np.uint16)
    return cuda.as_cuda_array(x, sync=False)


def _torch():
    import torch

    return torch


def _is_torch_bfloat16(x):
    return type(x).__module__.split(".")[0] == "torch" and x.dtype == _torch().bfloat16


def from_device(arrays, like, dtypes):
    """Results as the caller's kind of array; ``dtypes``: their dtypes (bfloat16 ones arrive as uint16 bits)."""
    out = []
    for x, dt in zip(arrays, dtypes):
        bf16 = np.dtype(dt) == BFLOAT16
        if isinstance(like, np.ndarray):
            host = x.copy_to_host()
            out.append(host.view(BFLOAT16) if bf16 else host)
        elif bf16 and type(like).__module__.split(".")[0] == "torch":
            out.append(_wrap_like(x.view(np.int16), like).view(_torch().bfloat16))
        else:
            out.append(_wrap_like(x, like))
    return out


def _wrap_like(x, like):
    """Return device array ``x`` as the same kind of object as the caller's input ``like``."""
    module = type(like).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy.asarray(x)
    if module == "torch":
        import torch

        return torch.as_tensor(x, device=like.device)
    return x


def attention_any(schedule, problem, q, k, v, count_io=False, mask=None, fast=None, score_mod=None):
    """:func:`run` for NumPy inputs (copied over and back) or CUDA-array-interface inputs (left on the GPU).

    Returns:
        (out, lse, report, build) on the side the inputs came from; ``build``: the
        :class:`kernels.builds.Build` that ran.

    NumPy inputs holding NaN or inf (or, for the tensor-core build, tiny V values) run the plain
    build of the schedule instead of the fast one (:func:`kernels.limits.fast_build_refusal`).

    Raises:
        ValueError: inputs whose fp32 logits or P·V sums can overflow (kernels/limits.py);
            ``fast=True`` with inputs the fast build must not take.
    """
    facts = host_facts(q, k, v)
    check_fp32_range(problem, q, k, v, facts)
    chosen = choose_build(schedule, problem.head_dim, count_io=count_io, mask=mask, fast=fast, facts=facts,
                          grouped=problem.group > 1, dtype=problem.dtype, head_dim_v=problem.head_dim_v,
                          score_mod=score_mod)
    out, lse, report, chosen = run(schedule, problem, *to_device((q, k, v), "qkv"), mask=mask, chosen=chosen,
                                   score_mod=score_mod)
    return (*from_device((out, lse), q, (problem.dtype, np.float32)), report, chosen)


def attention_backward_any(schedule, problem, q, k, v, out, lse, dout, count_io=False, mask=None, fast=None,
                           score_mod=None, deterministic=True):
    """:func:`run_backward` for NumPy or CUDA-array-interface inputs; results on the same side.

    Returns:
        (dq, dk, dv, report, build), ``build`` the :class:`kernels.builds.Build` that ran. NumPy
        inputs (q, k, v, out, dout) holding NaN or inf run the plain build, as in the forward.
    """
    facts = host_facts(q, k, v)
    check_fp32_range(problem, q, k, v, facts)
    if facts is not None and fast is True:  # the fast backward reads O and dO too
        for name, x in (("out", out), ("dout", dout)):
            facts[name] = (bool(np.isfinite(x.astype(np.float32, copy=False)).all()), None)
    chosen = choose_backward_build(schedule, problem.head_dim, count_io=bool(count_io), mask=mask, fast=fast,
                                   facts=facts, grouped=problem.group > 1, head_dim_v=problem.head_dim_v,
                                   score_mod=score_mod, dtype=problem.dtype)
    dev = to_device((q, k, v, out, lse, dout), ("q", "k", "v", "out", "lse", "dout"))
    dq, dk, dv, report = run_backward(schedule, problem, *dev, count_io=count_io, mask=mask, chosen=chosen,
                                      score_mod=score_mod, deterministic=deterministic)
    return (*from_device((dq, dk, dv), q, (problem.dtype,) * 3), report, chosen)
