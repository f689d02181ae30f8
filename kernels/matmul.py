"""Tiled products with a materialized Nq×Nk matrix M in HBM (standard attention's P and dS).

    nn: out = scale · M X        M: (Nq, Nk), X: (Nk, d)  (O = P V; dQ = scale · dS K)
        one thread block per (Q block, batch·head); loop over K/V blocks
    tn: out = scale · Mᵀ X       M: (Nq, Nk), X: (Nq, d)  (dV = Pᵀ dO; dK = scale · dSᵀ Q)
        one thread block per (K/V block, batch·head); loop over Q blocks

With grouped K/V heads (H_kv < H) nn's X (V or K) is read at the K/V head of the block's query
head, and tn writes each query head's product in fp32 (``out_f32``: the partials "dKpart",
"dVpart", which kernels/backward.py's group sum adds up).

M's tiles move HBM -> SRAM for allowed entries only; fully masked causal tiles are skipped.
``m_name``, ``x_name``, ``out_name`` name the tensors for the IO counters.
"""

from numba import cuda, float32, int32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.tiles import ZERO, keep_f32, make_tile_ops
from sandbox.vocabulary.footprints import Buffer, sram_offsets


def _layout(schedule, head_dim, dtype, x_rows):
    bufs = (Buffer("M", schedule.block_q * schedule.block_kv, 4), Buffer("X", x_rows * head_dim, dtype.itemsize))
    off, nbytes = sram_offsets(bufs)
    return off["M"], off["X"], nbytes


def make_nn(schedule, head_dim, dtype, count_io, causal, m_name, x_name, out_name, mask=None):
    """out = scale · M X. Returns (kernel(m, x, out, scale, counters), smem_bytes, grid(problem))."""
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask)
    CNT_LEN, zero_counter, flush, load_rows, pv_tile, tile_visited = (
        t.CNT_LEN, t.zero_counter, t.flush, t.load_rows, t.pv_tile, t.tile_visited)
    thread_yx, batch_head, load_allowed, store_rows = t.thread_yx, t.batch_head, t.load_allowed, t.store_rows
    kv_head = t.kv_head
    BR, BC, TM, DC, CAUSAL = t.BR, t.BC, t.TM, t.DC, t.CAUSAL
    M_, X_, OUT_ = slots(m_name), slots(x_name), slots(out_name)
    OM, OX, smem_bytes = _layout(schedule, head_dim, dtype, schedule.block_kv)
    IN = t.IN

    def kernel(m, x, out, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        i = cuda.blockIdx.x
        b, h = batch_head(cuda.blockIdx.y, m.shape[1])
        hx = kv_head(h, m.shape[1], x.shape[1])  # X's head: the K/V head of query head h (V or K)
        n_q = m.shape[2]
        n_kv = x.shape[2]
        q0 = i * BR
        q_len = min(BR, n_q - q0)
        sm_in = cuda.shared.array(0, IN)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        acc = cuda.local.array((TM, DC), float32)
        for a in range(TM):
            for c in range(DC):
                acc[a, c] = ZERO
        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
        for j in range(0, (kv_end + BC - 1) // BC):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                continue  # a mask's empty tile: skipped
            # barrier: every thread is done with the previous M and X tiles
            cuda.syncthreads()
            # -- M_ij (allowed entries), X_j: HBM -> SRAM
            load_allowed(m, b, h, q0, q_len, k0, kv_len, sm_f, OM, tid, cnt, M_[HBM_R], M_[SRAM_W])
            load_rows(x, b, hx, k0, kv_len, sm_in, OX, tid, cnt, X_[HBM_R], X_[SRAM_W])
            # barrier: M_ij and X_j are in SRAM
            cuda.syncthreads()
            # -- acc += M_ij X_j on this thread's register tile
            pv_tile(sm_f, OM, sm_in, OX, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, M_[SRAM_R], X_[SRAM_R])
        # -- out_i = scale · acc -> HBM
        store_rows(out, b, h, q0, q_len, ty, tx, acc, scale, cnt, OUT_[HBM_W])
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def make_tn(schedule, head_dim, dtype, count_io, causal, m_name, x_name, out_name, mask=None, out_f32=False):
    """out = scale · Mᵀ X. Returns (kernel(m, x, out, scale, counters), smem_bytes, grid(problem)).

    ``out_f32``: out is fp32 (a grouped backward's partials), else the input dtype."""
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask)
    CNT_LEN, zero_counter, flush, load_rows, ptx_tile, inc, tile_visited = (
        t.CNT_LEN, t.zero_counter, t.flush, t.load_rows, t.ptx_tile, t.inc, t.tile_visited)
    thread_yx, batch_head, load_allowed = t.thread_yx, t.batch_head, t.load_allowed
    BR, BC, TN, TY, TX, D, DCQ, CAUSAL = t.BR, t.BC, t.TN, t.TY, t.TX, t.D, t.DCQ, t.CAUSAL
    M_, X_, OUT_ = slots(m_name), slots(x_name), slots(out_name)
    OM, OX, smem_bytes = _layout(schedule, head_dim, dtype, schedule.block_q)
    IN = t.IN
    store = keep_f32 if out_f32 else t.from_f32

    def kernel(m, x, out, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        j = cuda.blockIdx.x
        b, h = batch_head(cuda.blockIdx.y, x.shape[1])
        n_q = m.shape[2]
        n_kv = m.shape[3]
        k0 = j * BC
        kv_len = min(BC, n_kv - k0)
        sm_in = cuda.shared.array(0, IN)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        acc = cuda.local.array((TN, DCQ), float32)
        for bb in range(TN):
            for c in range(DCQ):
                acc[bb, c] = ZERO
        i_start = 0
        i_end = (n_q + BR - 1) // BR
        if CAUSAL:
            i_start = k0 // BR  # earlier Q blocks hold only rows < k0: fully masked, skipped
            if k0 >= n_q:
                i_end = i_start  # no query sees this block at all
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
        for i in range(i_start, i_end):
            q0 = i * BR
            q_len = min(BR, n_q - q0)
            if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                continue  # a mask's empty tile: skipped
            # barrier: every thread is done with the previous M and X tiles
            cuda.syncthreads()
            # -- M_ij (allowed entries), X_i: HBM -> SRAM
            load_allowed(m, b, h, q0, q_len, k0, kv_len, sm_f, OM, tid, cnt, M_[HBM_R], M_[SRAM_W])
            load_rows(x, b, h, q0, q_len, sm_in, OX, tid, cnt, X_[HBM_R], X_[SRAM_W])
            # barrier: M_ij and X_i are in SRAM
            cuda.syncthreads()
            # -- acc += M_ijᵀ X_i on this thread's register tile
            ptx_tile(sm_f, OM, sm_in, OX, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, M_[SRAM_R], X_[SRAM_R])
        # -- out_j = scale · acc -> HBM (zeros for a block no query sees)
        if tx < kv_len and ty < D:
            for bb in range(TN):
                kv = tx + bb * TX
                if kv < kv_len:
                    for c in range(DCQ):
                        col = ty + c * TY
                        if col < D:
                            out[b, h, k0 + kv, col] = store(scale * acc[bb, c])
                            inc(cnt, OUT_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_kv + BC - 1) // BC, problem.bh)

    return kernel, smem_bytes, grid
