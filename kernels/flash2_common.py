"""What flash2's two fast builds share: the FMA build (``kernels/flash2_fast.py``) and the
tensor-core build (``kernels/flash2_tc.py``) import it; neither imports the other.

Both run flash2's schedule without counters or masks, take flash2's "main" phase arguments, keep a
row's statistics in registers and reduce them over the row's lanes with xor shuffles, and drop NaN
from their row maxima (IEEE maxNum). This module holds those device helpers, each build's common
refusals, and its phase table; what differs (tiles, products, shared layouts) stays in each build.

It also chooses, for both builds, the CUDA simulator's fallbacks of these helpers: the simulator has
no warp shuffles (a row's reduction goes through a small shared array instead).
"""

from numba import cuda

from kernels import flash2
from kernels.tiles import inline_device
from sandbox.vocabulary.runtime import using_simulator

if using_simulator():

    def fmax(a, b):
        """IEEE maxNum, as the GPU's ``max.f32``: a NaN operand is dropped (Python's max keeps or
        drops it depending on the order)."""
        if a != a:
            return b
        if b != b:
            return a
        return max(a, b)

else:

    @inline_device
    def fmax(a, b):
        """IEEE maxNum: ``max.f32``, one FMNMX (a NaN operand is dropped)."""
        return cuda.libdevice.fmaxf(a, b)


def group_reductions(offsets):
    """(row_max(v, red, tid), row_sum(v, red, tid)) over the threads of a row: the xor butterfly
    over ``offsets`` (the lane offsets that reach the row's other threads).

    On the GPU: xor shuffles inside the warp (``red`` unused). Under the simulator, which has no
    shuffles: the same butterfly through the shared array ``red`` (one float per thread), with a
    barrier per step; every thread calls it, so the barriers are uniform.
    """
    FULL = 0xFFFFFFFF
    N = len(offsets)
    O0, O1, O2, O3, O4 = (offsets + (0,) * 5)[:5]  # (constants: a tuple cannot be indexed in the kernel)

    @cuda.jit(device=True)
    def offset(i):
        return O0 if i == 0 else O1 if i == 1 else O2 if i == 2 else O3 if i == 3 else O4

    if using_simulator():

        def butterfly(v, red, tid, op):
            for i in range(N):
                red[tid] = v
                cuda.syncthreads()
                v = op(v, red[tid ^ offset(i)])
                cuda.syncthreads()
            return v

        # (jitted: the simulator gives a jitted function's module its fake ``cuda`` while it runs,
        # which the barriers need, the kernel being another module's)
        @cuda.jit(device=True)
        def row_max(v, red, tid):
            return butterfly(v, red, tid, fmax)

        @cuda.jit(device=True)
        def row_sum(v, red, tid):
            return butterfly(v, red, tid, lambda a, b: a + b)

        return row_max, row_sum

    @cuda.jit(device=True)
    def row_max(v, red, tid):
        for i in range(N):
            v = fmax(v, cuda.shfl_xor_sync(FULL, v, offset(i)))
        return v

    @cuda.jit(device=True)
    def row_sum(v, red, tid):
        for i in range(N):
            v += cuda.shfl_xor_sync(FULL, v, offset(i))
        return v

    return row_max, row_sum


def refusal(schedule, count_io, mask, build, math):
    """Why a fast build of flash2 cannot run this (a string), or None: the refusals both builds share.

    ``build``: the build's name in the message ("fast", "tensor-core"); ``math``: its arithmetic
    (``Schedule.math``)."""
    if schedule.kind != "flash2":
        return f"kind {schedule.kind!r} (the {build} build is flash2's)"
    if schedule.math != math:
        return f"math={schedule.math!r} (the {build} build's is {math!r})"
    if count_io:
        return "count_io (the counting build is kernels/flash2.py)"
    if mask is not None:
        return "a mask"
    return None


def phases(make, dtype):
    """A fast build's kernels (sandbox/vocabulary/kinds.py): flash2's one "main" phase, its arguments
    unchanged, made by ``make``."""
    (_, sig), = flash2.phases(dtype).values()
    return {"main": (make, sig)}
