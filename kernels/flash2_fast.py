"""The fast build of flash2 (FlashAttention-2 order): register-resident S, vector shared loads, shuffles.

Same schedule, same loop order and the same HBM traffic as ``kernels/flash2.py`` (which is the
counting build: every access there has its counter next to it). What differs is where S lives:

    for each K/V block j (causal: only blocks with a key <= the block's last query):
        K_j, V_j: HBM -> SRAM (fp32)
        S = Q_i K_jᵀ in registers (each thread its thread_q × thread_kv tile)
        m_ij, l_ij: per row, in registers; reduced across the threads_kv threads of a row
                    with warp shuffles (no SRAM round trip, no single-thread row loop)
        P -> SRAM; O_i = diag(alpha) O_i + P V_j in registers
    O_i = diag(l_i)⁻¹ O_i -> HBM;  L_i = m_i + log l_i -> HBM

Everything the general kernel's SRAM traffic looks like, this one reads far less of: S is never
stored, and m/l/alpha stay in registers. Its SRAM counts are therefore *not* those of the
counting build (``simulate`` models the counting build); its HBM reads and writes are the
same tiles in the same order.

Shared layouts (fp32; every row starts 16-byte aligned for the vector loads; see :func:`layout`):

- Q [Br][d], P [Br][Bc]: thread (ty, tx) reads Q[ty + a·TY, k:k+4] and P[ty + a·TY, j:j+4]; the
  threads of a quarter warp share ty, so each such read is a broadcast.
- K [Bc][d+4]: thread reads K[tx + b·TX, k:k+4]; eight consecutive rows of stride d+4 cover the
  32 banks once (the 4 floats of padding make that so).
- V [Bc][d]: thread reads V[j, 4(tx + g·TX) : +4]: consecutive threads, consecutive 16 bytes.

Thread (ty, tx) owns rows ty + a·TY (a < thread_q) of S and of O, columns tx + b·TX of S and
column quads 4(tx + g·TX) .. +3 of O. The rows are the same in both, so alpha, m and l never
leave the thread. Indices are unsigned (Numba adds a negative-index wraparound to signed ones,
which hides the alignment from the vectorizer) and the shared array is declared 16-byte aligned,
so NVVM emits ``ld.shared.v4.f32``.

This module is the one place that chooses the CUDA simulator's fallbacks: the simulator has no
warp shuffles (a row's reduction goes through a small shared array instead) and no aligned
shared arrays.
"""

import math

import numpy as np
from numba import cuda, float32, uint32

from kernels import flash2
from kernels.tiles import NEG_INF, ONE, ZERO, make_tile_ops
from sandbox.runtime import using_simulator

LOG2E = np.float32(1.4426950408889634)
LN2 = np.float32(0.6931471805599453)
PAD = 4  # floats of padding per K row
#: Registers are capped so that this many thread blocks fit on an SM (kernels/launch.py): with one
#: block of 8 warps the SM waits on shared-memory latency (ncu: short-scoreboard stalls).
MIN_BLOCKS_PER_SM = 2


def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the fast build cannot run this (a string), or None when it can.

    It needs an exact thread layout (Br = threads_q·thread_q, Bc = threads_kv·thread_kv), a
    power-of-two threads_kv ≤ 32 (a row's threads are one shuffle group inside a warp), and
    head_dim and Bc multiples of 4·threads_kv and 4 (O column quads, P vector loads).
    """
    s = schedule
    if s.kind != "flash2":
        return f"kind {s.kind!r} (the fast build is flash2's)"
    if count_io:
        return "count_io (the counting build is kernels/flash2.py)"
    if mask is not None:
        return "a mask"
    if s.block_q != s.threads_q * s.thread_q or s.block_kv != s.threads_kv * s.thread_kv:
        return "thread tiles that do not divide the blocks"
    tx = s.threads_kv
    if tx & (tx - 1) or tx > 32:
        return f"threads_kv={tx} (needs a power of two <= 32)"
    if head_dim % (4 * tx) or s.block_kv % 4:
        return f"head_dim={head_dim} or Bc={s.block_kv} (need multiples of {4 * tx} and 4)"
    return None


def smem_bytes(schedule, head_dim):
    """Dynamic shared memory of the fast build, in bytes."""
    return layout(schedule, head_dim)[1]


def layout(schedule, head_dim):
    """(offsets {Q, K, V, P} in floats, shared bytes) of the fast build's dynamic shared memory."""
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    sizes = {"Q": br * d, "K": bc * (d + PAD), "V": bc * d, "P": br * bc}
    off, at = {}, 0
    for name, n in sizes.items():
        off[name] = at
        at += n
    return off, 4 * at


def _group_reductions(tx, nan_max):
    """(row_max(v, red, tid), row_sum(v, red, tid)) over the ``tx`` consecutive threads of a row.

    On the GPU: xor shuffles inside the warp (``red`` unused). Under the simulator, which has no
    shuffles: the same butterfly through the shared array ``red`` (one float per thread), with a
    barrier per step; every thread calls it, so the barriers are uniform.
    """
    FULL = 0xFFFFFFFF
    if using_simulator():

        def butterfly(v, red, tid, op):
            off = tx // 2
            while off > 0:
                red[tid] = v
                cuda.syncthreads()
                v = op(v, red[tid ^ off])
                cuda.syncthreads()
                off //= 2
            return v

        def row_max(v, red, tid):
            return butterfly(v, red, tid, nan_max)

        def row_sum(v, red, tid):
            return butterfly(v, red, tid, lambda a, b: a + b)

        return row_max, row_sum

    @cuda.jit(device=True)
    def row_max(v, red, tid):
        off = tx // 2
        while off > 0:
            v = nan_max(v, cuda.shfl_xor_sync(FULL, v, off))
            off //= 2
        return v

    @cuda.jit(device=True)
    def row_sum(v, red, tid):
        off = tx // 2
        while off > 0:
            v += cuda.shfl_xor_sync(FULL, v, off)
            off //= 2
        return v

    return row_max, row_sum


def make_flash2_fast(schedule, head_dim, dtype, count_io, causal, mask=None):
    """Build the fast flash2 kernel (see the module docstring). Returns (kernel, smem_bytes, grid(problem))."""
    why = eligible(schedule, head_dim, count_io, mask)
    if why is not None:
        raise ValueError(f"the fast flash2 build cannot run {schedule} at d={head_dim}: {why}")
    t = make_tile_ops(schedule, head_dim, False, causal, dtype)
    to_f32, from_f32, nan_max = t.to_f32, t.from_f32, t.nan_max
    BR, BC, TM, TN, TY, TX, NT, D = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.NT, t.D
    CAUSAL = t.CAUSAL
    DP = D + PAD  # K's row stride
    DQ = D // (4 * TX)  # O column quads per thread
    DO = 4 * DQ  # O columns per thread
    off, smem_bytes = layout(schedule, head_dim)
    OQ, OK, OV, OP = (uint32(off[n]) for n in ("Q", "K", "V", "P"))
    ALIGN = None if using_simulator() else 16
    row_max, row_sum = _group_reductions(TX, nan_max)

    def loader(rows, stride):
        """load(src, b, h, row0, n_rows, sm, base, tid): rows × D elements of src[b, h, row0:, :] ->
        sm[base + r·stride + c] in fp32, consecutive threads on consecutive c; rows >= n_rows get 0."""
        iters = -(-rows * D // NT)

        @cuda.jit(device=True)
        def load(src, b, h, row0, n_rows, sm, base, tid):
            for it in range(iters):
                idx = tid + it * NT
                r = idx // D
                c = idx - r * D
                if r < rows:
                    x = ZERO
                    if r < n_rows:
                        x = to_f32(src[b, h, row0 + r, c])
                    sm[uint32(base + r * stride + c)] = x

        return load

    load_q, load_k, load_v = loader(BR, D), loader(BC, DP), loader(BC, D)

    def kernel(q, k, v, o, lse, scale, counters):
        tid = cuda.threadIdx.x
        ty = tid // TX
        tx = tid - ty * TX
        bh = cuda.blockIdx.y
        n_heads = q.shape[1]
        b = bh // n_heads
        h = bh - b * n_heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        q0 = cuda.blockIdx.x * BR
        q_len = min(BR, n_q - q0)
        sm = cuda.shared.array(0, float32, alignment=ALIGN)
        red = cuda.shared.array(NT, float32)  # the simulator's row reductions (unused on the GPU)
        s2 = scale * LOG2E  # S in log2 units: exp(x) = exp2(x·log2 e)

        load_q(q, b, h, q0, q_len, sm, OQ, tid)
        m = cuda.local.array(TM, float32)
        l = cuda.local.array(TM, float32)
        acc = cuda.local.array((TM, DO), float32)
        s = cuda.local.array((TM, TN), float32)
        qv = cuda.local.array((TM, 4), float32)
        kv = cuda.local.array((TN, 4), float32)
        vv = cuda.local.array((DQ, 4), float32)
        for a in range(TM):
            m[a] = NEG_INF
            l[a] = ZERO
            for c in range(DO):
                acc[a, c] = ZERO
        qrow = cuda.local.array(TM, uint32)  # this thread's row offsets in Q and P
        prow = cuda.local.array(TM, uint32)
        for a in range(TM):
            qrow[a] = OQ + uint32((ty + a * TY) * D)
            prow[a] = OP + uint32((ty + a * TY) * BC)

        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        for j in range((kv_end + BC - 1) // BC):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            # barrier: every thread is done reading the previous K_j, V_j and P
            cuda.syncthreads()
            load_k(k, b, h, k0, kv_len, sm, OK, tid)
            load_v(v, b, h, k0, kv_len, sm, OV, tid)
            # barrier: K_j, V_j (and, first time round, Q_i) are in SRAM
            cuda.syncthreads()

            # -- S = Q_i K_jᵀ on this thread's register tile, four k at a time
            for a in range(TM):
                for bb in range(TN):
                    s[a, bb] = ZERO
            for kk in range(0, D, 4):
                for a in range(TM):
                    for e in range(4):
                        qv[a, e] = sm[qrow[a] + uint32(kk + e)]
                for bb in range(TN):
                    krow = OK + uint32((tx + bb * TX) * DP + kk)
                    for e in range(4):
                        kv[bb, e] = sm[krow + uint32(e)]
                for a in range(TM):
                    for bb in range(TN):
                        for e in range(4):
                            s[a, bb] += qv[a, e] * kv[bb, e]

            # -- online softmax per row: m_ij, P, l_ij; rescale O by alpha
            for a in range(TM):
                r = q0 + ty + a * TY
                mx = NEG_INF
                for bb in range(TN):
                    c = tx + bb * TX
                    x = s[a, bb] * s2
                    if c >= kv_len or (CAUSAL and k0 + c > r):
                        x = NEG_INF
                    s[a, bb] = x
                    mx = nan_max(mx, x)
                mx = row_max(mx, red, tid)
                m_new = nan_max(m[a], mx)
                alpha = ONE
                rs = ZERO
                if m_new != NEG_INF:  # else nothing seen yet: alpha = 1, P = 0
                    alpha = math.exp2(m[a] - m_new)
                    for bb in range(TN):
                        p = math.exp2(s[a, bb] - m_new)
                        s[a, bb] = p
                        rs += p
                else:
                    for bb in range(TN):
                        s[a, bb] = ZERO
                for bb in range(TN):
                    sm[prow[a] + uint32(tx + bb * TX)] = s[a, bb]
                rs = row_sum(rs, red, tid)
                l[a] = alpha * l[a] + rs
                m[a] = m_new
                for c in range(DO):
                    acc[a, c] *= alpha
            # barrier: the whole P tile is in SRAM
            cuda.syncthreads()

            # -- O_i += P V_j on this thread's register tile, four keys at a time
            for jj in range(0, BC, 4):
                for a in range(TM):
                    for e in range(4):
                        qv[a, e] = sm[prow[a] + uint32(jj + e)]
                for e in range(4):
                    vrow = OV + uint32((jj + e) * D + 4 * tx)
                    for g in range(DQ):
                        for f in range(4):
                            vv[g, f] = sm[vrow + uint32(4 * TX * g + f)]
                    for a in range(TM):
                        p = qv[a, e]
                        for g in range(DQ):
                            for f in range(4):
                                acc[a, 4 * g + f] += p * vv[g, f]

        # -- O_i = diag(l_i)^-1 O_i -> HBM (a row that saw no key: O = 0); L_i = m_i + log l_i
        for a in range(TM):
            rr = ty + a * TY
            if rr < q_len:
                inv = ZERO
                if l[a] != ZERO:  # NaN passes through
                    inv = ONE / l[a]
                for g in range(DQ):
                    for f in range(4):
                        o[b, h, q0 + rr, 4 * (tx + g * TX) + f] = from_f32(acc[a, 4 * g + f] * inv)
                if tx == 0:
                    lse[b, h, q0 + rr] = m[a] * LN2 + math.log(l[a]) if l[a] != ZERO else NEG_INF

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def phases(dtype):
    """The fast build's kernels (sandbox/kinds.py): flash2's one "main" phase, its arguments unchanged."""
    (_, sig), = flash2.phases(dtype).values()
    return {"main": (make_flash2_fast, sig)}
