"""FlashAttention Algorithm 1, faithfully: one thread block per (batch, head), O/ℓ/m back to HBM every inner step.

    O = 0, l = 0, m = -inf in HBM
    for each K/V block j:                         K_j, V_j: HBM -> SRAM, kept for the inner loop
        for each Q block i (causal: skip blocks whose rows all precede key k0):
            Q_i: HBM -> SRAM;  O_i, l_i, m_i: HBM -> registers
            S = scale · Q_i K_jᵀ                  (register tiles -> SRAM, allowed entries only)
            m~ = rowmax(S); P~ = exp(S - m~); l~ = rowsum(P~)
            m_new = max(m_i, m~); l_new = e^(m_i - m_new) l_i + e^(m~ - m_new) l~
            O_i = diag(l_new)⁻¹ (diag(l_i) e^(m_i - m_new) O_i + e^(m~ - m_new) P~ V_j) -> HBM
            l_i = l_new, m_i = m_new -> HBM;  at i's last block j also L_i = m_i + log l_i -> HBM

With a mask, blocks j no query may see are not loaded, empty tiles (i, j) are skipped, and L_i is
initialized to -inf and written at every visited tile (the last one is not known in advance).

Q_i and K_j are d wide, V_j and O_i d_v wide (``head_dim_v``; d_v = d unless given).

O stays in HBM in the output dtype between steps, as the algorithm has it: with fp16 inputs it is
rounded once per K/V block (the tests' fp16 tolerance for flash1 grows with Tc for that reason).
"""

import math

import numpy as np

from numba import cuda, float32, int32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.tiles import COUNTERS, NEG_INF, ONE, ZERO, array_type, make_tile_ops, value_ops
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers


def make_flash1(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """Build the flash1 kernel (V_j, O_i ``head_dim_v`` wide; None: ``head_dim``). Returns (kernel, smem_bytes, grid(problem))."""
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask, score_mod)
    tv = value_ops(t, schedule, head_dim_v, count_io, causal, dtype, mask)  # V_j, O_i: d_v wide
    # Numba resolves closure variables, not attributes of a namespace: bind them here
    CNT_LEN = t.CNT_LEN
    flush, load_rows, nan_max, zero_counter, pv_tile, s_tile = (t.flush, t.load_rows, t.nan_max, t.zero_counter, tv.pv_tile, t.s_tile)
    load_v = tv.load_rows
    thread_yx, batch_head, store_s, s_row_max, s_row_exp = t.thread_yx, t.batch_head, t.store_s, t.s_row_max, t.s_row_exp
    kv_head = t.kv_head
    off, smem_bytes = sram_offsets(sram_buffers(schedule, head_dim, dtype, head_dim_v=head_dim_v)["main"])
    OQ, OK, OV, OS, OA, OB = (off[n] for n in ("Q", "K", "V", "S", "alpha", "beta"))
    BR, BC, TM, TN, TY, TX, NT, DV, DC = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.NT, tv.D, tv.DC
    CAUSAL = t.CAUSAL
    inc, n_allowed, tile_visited, count_mod = t.inc, t.n_allowed, t.tile_visited, t.count_mod
    HAS_MASK, HAS_MOD = t.HAS_MASK, t.HAS_MOD
    Q_, K_, V_, O_, S_, P_, M_, L_, l_, A_, B_ = (
        slots(n) for n in ("Q", "K", "V", "O", "S", "P", "m", "L", "l", "alpha", "beta")
    )
    IN, to_f32, from_f32 = t.IN, t.to_f32, t.from_f32

    def kernel(q, k, v, o, lse, l_hbm, m_hbm, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        b, h = batch_head(cuda.blockIdx.x, q.shape[1])
        hk = kv_head(h, q.shape[1], k.shape[1])  # the K/V head this query head reads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        sm_in = cuda.shared.array(0, IN)  # Q, K, V tiles in the input dtype
        sm_f = cuda.shared.array(0, float32)  # S/P tile and the O-update factors in fp32
        cnt = cuda.local.array(CNT_LEN, int64)  # this thread's IO counters (count build only)
        zero_counter(cnt)

        # -- initialize O = 0, l = 0, m = -inf in HBM
        for e in range(tid, n_q * DV, NT):
            r = e // DV
            o[b, h, r, e - r * DV] = from_f32(ZERO)
            inc(cnt, O_[HBM_W], 1)
        for r in range(tid, n_q, NT):
            l_hbm[b, h, r] = ZERO
            m_hbm[b, h, r] = NEG_INF
            inc(cnt, l_[HBM_W], 1)
            inc(cnt, M_[HBM_W], 1)
            if HAS_MASK:  # a row's last visited block is not known in advance: L starts at -inf
                lse[b, h, r] = NEG_INF
                inc(cnt, L_[HBM_W], 1)
        sacc = cuda.local.array((TM, TN), float32)
        acc = cuda.local.array((TM, DC), float32)  # P~ V_j for this thread's tile of O_i
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask

        n_kv_blocks = (n_kv + BC - 1) // BC
        n_q_blocks = (n_q + BR - 1) // BR
        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, n_q)  # keys past the last query are masked for every row: skipped
        for j in range(0, (kv_end + BC - 1) // BC):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            if not tile_visited(b, h, 0, n_q, k0, kv_len, tid, flag):
                continue  # no query may see block j (a mask's empty column): not loaded
            # barrier: the previous inner loop is done with K_j, V_j (and the HBM init is visible)
            cuda.syncthreads()
            load_rows(k, b, hk, k0, kv_len, sm_in, OK, tid, cnt, K_[HBM_R], K_[SRAM_W])
            load_v(v, b, hk, k0, kv_len, sm_in, OV, tid, cnt, V_[HBM_R], V_[SRAM_W])
            i_start = 0
            if CAUSAL:
                i_start = k0 // BR  # blocks before hold only rows < k0: fully masked, skipped
            for i in range(i_start, n_q_blocks):
                q0 = i * BR
                q_len = min(BR, n_q - q0)
                if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                    continue  # a mask's empty tile: no loads, no math
                # the last K/V block that reaches block i: L_i is written there
                j_last = n_kv_blocks - 1
                if CAUSAL:
                    j_last = min(j_last, (q0 + q_len - 1) // BC)
                # barrier: every thread is done with the previous Q_i, P~ and factors
                cuda.syncthreads()
                load_rows(q, b, h, q0, q_len, sm_in, OQ, tid, cnt, Q_[HBM_R], Q_[SRAM_W])
                count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
                # barrier: Q_i (and K_j, V_j) are in SRAM
                cuda.syncthreads()

                # -- compute S = score_mod(scale · Q_i K_j^T); write the allowed entries to SRAM
                if s_tile(sm_in, OQ, sm_in, OK, ty, tx, q_len, kv_len, sacc, cnt, Q_[SRAM_R], K_[SRAM_R]):
                    store_s(sacc, scale, ty, tx, b, h, q0, k0, q_len, kv_len, sm_f, OS, cnt, S_[SRAM_W])
                # barrier: the whole S tile is in SRAM
                cuda.syncthreads()

                # -- m~, P~, l~, then m_new, l_new and the O-update factors: one thread per row
                for r in range(tid, q_len, NT):
                    row = q0 + r
                    jn = n_allowed(row, k0, kv_len)
                    m_ij = s_row_max(sm_f, OS, r, row, b, h, k0, jn, cnt, S_[SRAM_R])
                    l_ij = ZERO
                    if m_ij != NEG_INF:
                        l_ij = s_row_exp(sm_f, OS, r, row, b, h, k0, jn, m_ij, cnt, S_[SRAM_R], P_[SRAM_W])
                    elif HAS_MOD:  # a score_mod made every score of the row -inf: P~ = exp(-inf - 0) = 0
                        l_ij = s_row_exp(sm_f, OS, r, row, b, h, k0, jn, ZERO, cnt, S_[SRAM_R], P_[SRAM_W])
                    m_old = m_hbm[b, h, row]
                    l_old = l_hbm[b, h, row]
                    inc(cnt, M_[HBM_R], 1)
                    inc(cnt, l_[HBM_R], 1)
                    m_new = nan_max(m_old, m_ij)
                    alpha = ONE  # factor of O_old
                    beta = ZERO  # factor of P~ V_j
                    l_new = l_old
                    if m_new != NEG_INF:
                        e_old = math.exp(m_old - m_new)
                        e_new = math.exp(m_ij - m_new)
                        l_new = e_old * l_old + e_new * l_ij
                        alpha = l_old * e_old / l_new
                        beta = e_new / l_new
                    m_hbm[b, h, row] = m_new
                    l_hbm[b, h, row] = l_new
                    inc(cnt, M_[HBM_W], 1)
                    inc(cnt, l_[HBM_W], 1)
                    sm_f[OA + r] = alpha
                    sm_f[OB + r] = beta
                    inc(cnt, A_[SRAM_W], 1)
                    inc(cnt, B_[SRAM_W], 1)
                    if HAS_MASK or j == j_last:  # under a mask: at every visited tile
                        lse[b, h, row] = m_new + math.log(l_new) if l_new != ZERO else NEG_INF
                        inc(cnt, L_[HBM_W], 1)
                # barrier: P~ and the factors are in SRAM
                cuda.syncthreads()

                # -- O_i = alpha · O_i + beta · P~ V_j: read O_i from HBM, write it back
                if ty < q_len and tx < DV:
                    for a in range(TM):
                        for c in range(DC):
                            acc[a, c] = ZERO
                    pv_tile(sm_f, OS, sm_in, OV, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, P_[SRAM_R], V_[SRAM_R])
                    for a in range(TM):
                        r = ty + a * TY
                        if r < q_len:
                            alpha = sm_f[OA + r]
                            beta = sm_f[OB + r]
                            inc(cnt, A_[SRAM_R], 1)
                            inc(cnt, B_[SRAM_R], 1)
                            for c in range(DC):
                                col = tx + c * TX
                                if col < DV:
                                    o_old = to_f32(o[b, h, q0 + r, col])
                                    inc(cnt, O_[HBM_R], 1)
                                    o[b, h, q0 + r, col] = from_f32(alpha * o_old + beta * acc[a, c])
                                    inc(cnt, O_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return (problem.bh,)

    return kernel, smem_bytes, grid


def phases(dtype):
    """The kind's kernels (sandbox/vocabulary/kinds.py): one, "main"(q, k, v, o, lse, l, m, scale, counters)."""
    IN4, F3 = array_type(dtype, 4), array_type("float32", 3)
    return {"main": (make_flash1, (IN4, IN4, IN4, IN4, F3, F3, F3, float32, COUNTERS))}


def launch(launch, schedule, problem, q, k, v, out, lse, scale, counters, empty):
    rows = (problem.batch, problem.heads, problem.n_q)
    l_hbm, m_hbm = empty(rows, np.float32, "l"), empty(rows, np.float32, "m")  # l_i, m_i live in HBM
    launch("main", q, k, v, out, lse, l_hbm, m_hbm, scale, counters)
