"""Ceiling kernels: the arithmetic throughput a roofline holds the attention kernels against.

- :func:`fma_chains`: every thread advances :data:`CHAINS` independent chains x ← a·x + b, one
  fp32 FMA per step (``cuda.fma``), :data:`UNROLL` steps of each chain per loop trip. Independent
  chains hide the FMA's latency; several steps per trip keep the loop's own instructions few
  against the FMAs. 2 FLOPs per FMA: :data:`FMA_FLOPS_PER_TRIP` per thread and trip.
- :func:`make_mma_chains`: every warp advances :data:`CHAINS` independent accumulators
  C_k ← C_k + A·B, one m16n8k8 TF32 ``mma.sync`` each (``kernels.mma.mma``, the warp product of
  flash2's tensor-core build, with its simulator fallback): 2·16·8·8 = :data:`MMA_FLOPS` FLOPs per
  product.

- :func:`make_mma16_chains`: the same with the m16n8k16 fp16 ``mma.sync`` (``kernels.mma16.mma_f16``,
  the warp product of flash2's 16-bit tensor-core build): 2·16·8·16 = :data:`MMA16_FLOPS` FLOPs
  per product. bf16's product runs on the same tensor cores at the same rate.

All start from and write back their chains' values, so the compiler keeps every step, and both
have closed forms the simulator checks them against: after T steps x = aᵀ·x₀ + b·(aᵀ - 1)/(a - 1)
(x₀ + T·b for a = 1), and C_k + T·A·B.

The chains live in local arrays indexed only by loops of constant trip count, which NVVM unrolls
and keeps in registers (as flash2_tc.py's accumulators).
"""

import functools

from sandbox.vocabulary.runtime import ensure_backend, using_simulator

ensure_backend()

from numba import cuda, float32, uint32  # noqa: E402

from kernels.mma import XCH_PER_THREAD, mma  # noqa: E402
from kernels.mma16 import XCH16_PER_THREAD, mma_f16  # noqa: E402

#: Independent chains per thread (FMA) or per warp (mma).
CHAINS = 8
#: Steps of every chain per loop trip of :func:`fma_chains`.
UNROLL = 4
#: FLOPs of one thread's loop trip in :func:`fma_chains`: CHAINS·UNROLL FMAs of 2 FLOPs.
FMA_FLOPS_PER_TRIP = 2 * CHAINS * UNROLL
#: FLOPs of one m16n8k8 product: 16·8 outputs, 8 multiply-adds each, 2 FLOPs per multiply-add.
MMA_FLOPS = 2 * 16 * 8 * 8
#: FLOPs of one m16n8k16 product: 16·8 outputs, 16 multiply-adds each.
MMA16_FLOPS = 2 * 16 * 8 * 16


@cuda.jit
def fma_chains(x, a, b, trips):
    """Thread i: x[i, k] ← a·x[i, k] + b, UNROLL·``trips`` times for each of the CHAINS chains k.

    Args:
        x: (threads of the grid, CHAINS) float32, the chains' start values, overwritten by their ends.
        a, b: float32 scalars.
        trips: loop trips (each UNROLL steps of every chain).
    """
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    c = cuda.local.array(CHAINS, float32)
    for k in range(CHAINS):
        c[k] = x[i, k]
    for _ in range(trips):
        for u in range(UNROLL):
            for k in range(CHAINS):
                c[k] = cuda.fma(c[k], a, b)
    for k in range(CHAINS):
        x[i, k] = c[k]


@cuda.jit(device=True)
def _tf32_fragments(a, b, g, t):
    """Lane (g, t)'s m16n8k8 fragments (kernels/mma.py): A[g, t], A[g + 8, t], A[g, t + 4],
    A[g + 8, t + 4]; B[t, g], B[t + 4, g]."""
    return a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4], b[t, g], b[t + 4, g]


@cuda.jit(device=True)
def _f16_fragments(a, b, g, t):
    """Lane (g, t)'s m16n8k16 registers (kernels/mma16.py): words t and t + 4 of A's rows g and g + 8
    (A[g, 2t:2t+2], ...), and of B's column g (B[2t:2t+2, g], B[2t+8:2t+10, g])."""
    return a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4], b[g, t], b[g, t + 4]


def _make_chains(threads, product, fragments, xch_per_thread, xch_type):
    """The mma ceiling kernel of one warp product: every warp w, for each chain k, ``trips`` times
    C[w, k] ← C[w, k] + A·B, with ``fragments`` its lane's A and B registers and ``product`` the
    warp product (its simulator fallback swaps them through ``xch_per_thread`` entries per thread)."""
    if threads <= 0 or threads % 32:
        raise ValueError(f"threads: expected a positive multiple of 32 (whole warps), got {threads}")
    NX = threads * xch_per_thread if using_simulator() else 1  # the simulator's warp exchange

    @cuda.jit
    def mma_chains(a, b, c, trips):
        xch = cuda.shared.array(NX, xch_type)
        tid = cuda.threadIdx.x
        w = (cuda.blockIdx.x * threads + tid) // 32
        lane = tid % 32
        g, t = lane // 4, lane % 4
        a0, a1, a2, a3, b0, b1 = fragments(a, b, g, t)
        # C's fragment: C[g, 2t], C[g, 2t + 1], C[g + 8, 2t], C[g + 8, 2t + 1]
        acc = cuda.local.array((CHAINS, 4), float32)
        for k in range(CHAINS):
            acc[k, 0], acc[k, 1] = c[w, k, g, 2 * t], c[w, k, g, 2 * t + 1]
            acc[k, 2], acc[k, 3] = c[w, k, g + 8, 2 * t], c[w, k, g + 8, 2 * t + 1]
        for _ in range(trips):
            for k in range(CHAINS):  # CHAINS products in flight: none waits on another
                acc[k, 0], acc[k, 1], acc[k, 2], acc[k, 3] = product(
                    xch, tid, a0, a1, a2, a3, b0, b1, acc[k, 0], acc[k, 1], acc[k, 2], acc[k, 3])
        for k in range(CHAINS):
            c[w, k, g, 2 * t], c[w, k, g, 2 * t + 1] = acc[k, 0], acc[k, 1]
            c[w, k, g + 8, 2 * t], c[w, k, g + 8, 2 * t + 1] = acc[k, 2], acc[k, 3]

    return mma_chains


@functools.cache
def make_mma_chains(threads):
    """The mma ceiling kernel for blocks of ``threads`` threads (a multiple of 32).

    Returns:
        a kernel ``(a, b, c, trips)``: every warp w, for each chain k, ``trips`` times
        C[w, k] ← C[w, k] + A·B, with a (16, 8) and b (8, 8) float32 (read as TF32: their low 13
        bits ignored) and c (warps of the grid, CHAINS, 16, 8) float32, the accumulators' start
        values, overwritten by their ends. Every thread of a block must run it (the simulator's
        warp exchange has barriers): launch whole blocks of ``threads``.

    Raises:
        ValueError: ``threads`` is not a positive multiple of 32.
    """
    return _make_chains(threads, mma, _tf32_fragments, XCH_PER_THREAD, float32)


@functools.cache
def make_mma16_chains(threads):
    """The 16-bit mma ceiling kernel for blocks of ``threads`` threads (a multiple of 32).

    Returns:
        a kernel ``(a, b, c, trips)``: every warp w, for each chain k, ``trips`` times
        C[w, k] ← C[w, k] + A·B, with A 16×16 and B 16×8 in fp16 as ``kernels.mma16``'s registers
        hold them: a (16, 8) uint32, a[m, j] = A[m, 2j] (low half) and A[m, 2j + 1]; b (8, 8)
        uint32, b[n, j] = B[2j, n] (low half) and B[2j + 1, n]; and c (warps of the grid, CHAINS,
        16, 8) float32, the accumulators' start values, overwritten by their ends. Every thread of
        a block must run it: launch whole blocks of ``threads``.

    Raises:
        ValueError: ``threads`` is not a positive multiple of 32.
    """
    return _make_chains(threads, mma_f16, _f16_fragments, XCH16_PER_THREAD, uint32)
