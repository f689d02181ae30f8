"""FlashAttention-2 order: one thread block per (Q block, batch·head); Q_i stays in SRAM; O and L written once.

    for each K/V block j of the query head's K/V head (causal: only blocks with a key <= the block's last query;
                          mask: only blocks with an allowed entry):
        K_j, V_j: HBM -> SRAM
        S = scale · Q_i K_jᵀ                       (register tiles -> SRAM, allowed entries only;
                                                    score_mod(scale · Q_i K_jᵀ) with a score_mod)
        m_new = max(m_i, rowmax(S)); P = exp(S - m_new); alpha = exp(m_i - m_new)
        l_i = alpha · l_i + rowsum(P); m_i = m_new  (one thread per row, in SRAM)
        O_i = diag(alpha) O_i + P V_j              (O_i in registers)
    O_i = diag(l_i)⁻¹ O_i -> HBM;  L_i = m_i + log l_i -> HBM

Q_i and K_j are d wide, V_j and O_i d_v wide (``head_dim_v``; d_v = d unless given).
"""

import math

from numba import cuda, float32, int32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.tiles import COUNTERS, NEG_INF, ONE, ZERO, array_type, make_tile_ops, value_ops
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers


def make_flash2(schedule, head_dim, dtype, count_io, causal, mask=None, split=False, head_dim_v=None,
                score_mod=None):
    """Build the flash2 kernel. Returns (kernel, smem_bytes, grid(problem)).

    ``split``: the split-KV kind's first phase (kernels/splitkv.py). Thread block (i, bh, s)
    runs this loop over the s-th of ``schedule.kv_splits`` equal ranges of K/V blocks and
    writes its normalized partial O and its L, in fp32, to ``o[b·splits + s]`` and
    ``lse[b·splits + s]`` (counted as the tensors "Opart" and "Lpart").
    ``head_dim_v``: d_v, the width of V_j and O_i (None: ``head_dim``).
    """
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask, score_mod)
    tv = value_ops(t, schedule, head_dim_v, count_io, causal, dtype, mask)  # V_j, O_i: d_v wide
    SPLIT = bool(split)
    NSPLIT = schedule.kv_splits if SPLIT else 1
    # Numba resolves closure variables, not attributes of a namespace: bind them here
    CNT_LEN = t.CNT_LEN
    TN, flush, load_rows, zero_counter, pv_tile, s_tile = (t.TN, t.flush, t.load_rows, t.zero_counter, tv.pv_tile, t.s_tile)
    load_v = tv.load_rows
    thread_yx, batch_head, store_s, s_row_max, s_row_exp = t.thread_yx, t.batch_head, t.store_s, t.s_row_max, t.s_row_exp
    kv_head = t.kv_head
    off, smem_bytes = sram_offsets(
        sram_buffers(schedule, head_dim, dtype, head_dim_v=head_dim_v)["partial" if SPLIT else "main"])
    OQ, OK, OV, OS, OM, OL, OA = (off[n] for n in ("Q", "K", "V", "S", "m", "l", "alpha"))
    BR, BC, TM, TY, TX, NT, DV, DC = t.BR, t.BC, t.TM, t.TY, t.TX, t.NT, tv.D, tv.DC
    CAUSAL, HAS_MOD = t.CAUSAL, t.HAS_MOD
    inc, n_allowed, nan_max, tile_visited, count_mod = t.inc, t.n_allowed, t.nan_max, t.tile_visited, t.count_mod
    K_, S_, P_, M_, l_, A_, V_ = (slots(n) for n in ("K", "S", "P", "m", "l", "alpha", "V"))
    O_, L_ = (slots("Opart"), slots("Lpart")) if SPLIT else (slots("O"), slots("L"))
    Q_ = slots("Q")
    IN = t.IN
    store = _keep_f32 if SPLIT else t.from_f32  # split partials stay fp32

    def kernel(q, k, v, o, lse, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        i_blk = cuda.blockIdx.x
        b, h = batch_head(cuda.blockIdx.y, q.shape[1])
        hk = kv_head(h, q.shape[1], k.shape[1])  # the K/V head this query head reads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        q0 = i_blk * BR
        q_len = min(BR, n_q - q0)
        split = 0
        if SPLIT:
            split = cuda.blockIdx.z
        bo = b * NSPLIT + split  # the output's batch index (b itself without splits)
        sm_in = cuda.shared.array(0, IN)  # Q, K, V tiles in the input dtype
        sm_f = cuda.shared.array(0, float32)  # S/P tile and row statistics in fp32
        cnt = cuda.local.array(CNT_LEN, int64)  # this thread's IO counters (count build only)
        zero_counter(cnt)

        # -- load Q_i: it stays in SRAM for the whole K/V loop
        load_rows(q, b, h, q0, q_len, sm_in, OQ, tid, cnt, Q_[HBM_R], Q_[SRAM_W])
        # -- m_i = -inf, l_i = 0 in SRAM
        for r in range(tid, q_len, NT):
            sm_f[OM + r] = NEG_INF
            sm_f[OL + r] = ZERO
            inc(cnt, M_[SRAM_W], 1)
            inc(cnt, l_[SRAM_W], 1)
        acc = cuda.local.array((TM, DC), float32)  # this thread's tile of O_i, in registers
        for a in range(TM):
            for c in range(DC):
                acc[a, c] = ZERO
        sacc = cuda.local.array((TM, TN), float32)
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask

        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        # this block's K/V blocks: all of them, or its split's equal share
        per_split = ((n_kv + BC - 1) // BC + NSPLIT - 1) // NSPLIT
        j_end = min((kv_end + BC - 1) // BC, (split + 1) * per_split)
        for j in range(split * per_split, j_end):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                continue  # no allowed entry (a mask's empty tile): no loads, no math
            # barrier: every thread is done reading the previous K_j, V_j and P
            cuda.syncthreads()
            load_rows(k, b, hk, k0, kv_len, sm_in, OK, tid, cnt, K_[HBM_R], K_[SRAM_W])
            load_v(v, b, hk, k0, kv_len, sm_in, OV, tid, cnt, V_[HBM_R], V_[SRAM_W])
            count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
            # barrier: K_j, V_j (and, first time round, Q_i, m_i, l_i) are in SRAM
            cuda.syncthreads()

            # -- compute S = score_mod(scale · Q_i K_j^T); write the allowed entries to SRAM
            if s_tile(sm_in, OQ, sm_in, OK, ty, tx, q_len, kv_len, sacc, cnt, Q_[SRAM_R], K_[SRAM_R]):
                store_s(sacc, scale, ty, tx, b, h, q0, k0, q_len, kv_len, sm_f, OS, cnt, S_[SRAM_W])
            # barrier: the whole S tile is in SRAM
            cuda.syncthreads()

            # -- update m_i and l_i, P = exp(S - m_new): one thread per row
            for r in range(tid, q_len, NT):
                jn = n_allowed(q0 + r, k0, kv_len)
                m_old = sm_f[OM + r]
                l_old = sm_f[OL + r]
                inc(cnt, M_[SRAM_R], 1)
                inc(cnt, l_[SRAM_R], 1)
                m_ij = s_row_max(sm_f, OS, r, q0 + r, b, h, k0, jn, cnt, S_[SRAM_R])
                m_new = nan_max(m_old, m_ij)
                alpha = ONE
                l_ij = ZERO
                if m_new != NEG_INF:  # else nothing seen yet: keep alpha = 1, P empty
                    alpha = math.exp(m_old - m_new)
                    l_ij = s_row_exp(sm_f, OS, r, q0 + r, b, h, k0, jn, m_new, cnt, S_[SRAM_R], P_[SRAM_W])
                elif HAS_MOD:  # a score_mod made every score so far -inf: P = exp(-inf - 0) = 0
                    l_ij = s_row_exp(sm_f, OS, r, q0 + r, b, h, k0, jn, ZERO, cnt, S_[SRAM_R], P_[SRAM_W])
                sm_f[OM + r] = m_new
                sm_f[OL + r] = alpha * l_old + l_ij
                sm_f[OA + r] = alpha
                inc(cnt, M_[SRAM_W], 1)
                inc(cnt, l_[SRAM_W], 1)
                inc(cnt, A_[SRAM_W], 1)
            # barrier: P, alpha are in SRAM
            cuda.syncthreads()

            # -- O_i = diag(alpha) O_i + P V_j on this thread's register tile
            if ty < q_len and tx < DV:
                for a in range(TM):
                    r = ty + a * TY
                    if r < q_len:
                        alpha = sm_f[OA + r]
                        inc(cnt, A_[SRAM_R], 1)
                        for c in range(DC):
                            acc[a, c] *= alpha
            pv_tile(sm_f, OS, sm_in, OV, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, P_[SRAM_R], V_[SRAM_R])

        # barrier: the last row statistics are in SRAM
        cuda.syncthreads()
        # -- O_i = diag(l_i)^-1 O_i -> HBM (a row that saw no key: O = 0)
        if ty < q_len and tx < DV:
            for a in range(TM):
                r = ty + a * TY
                if r < q_len:
                    l_r = sm_f[OL + r]
                    inc(cnt, l_[SRAM_R], 1)
                    inv = ZERO
                    if l_r != ZERO:  # NaN passes through
                        inv = ONE / l_r
                    for c in range(DC):
                        col = tx + c * TX
                        if col < DV:
                            o[bo, h, q0 + r, col] = store(acc[a, c] * inv)
                            inc(cnt, O_[HBM_W], 1)
        # -- L_i = m_i + log l_i -> HBM (-inf where l_i = 0)
        for r in range(tid, q_len, NT):
            l_r = sm_f[OL + r]
            m_r = sm_f[OM + r]
            inc(cnt, l_[SRAM_R], 1)
            inc(cnt, M_[SRAM_R], 1)
            lse[bo, h, q0 + r] = m_r + math.log(l_r) if l_r != ZERO else NEG_INF
            inc(cnt, L_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        if SPLIT:
            return ((problem.n_q + BR - 1) // BR, problem.bh, NSPLIT)
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


@cuda.jit(device=True)
def _keep_f32(x):
    return x


def phases(dtype):
    """The kind's kernels (sandbox/vocabulary/kinds.py): one, "main"(q, k, v, o, lse, scale, counters)."""
    IN4, F3 = array_type(dtype, 4), array_type("float32", 3)
    return {"main": (make_flash2, (IN4, IN4, IN4, IN4, F3, float32, COUNTERS))}


def launch(launch, schedule, problem, q, k, v, out, lse, scale, counters, empty):
    launch("main", q, k, v, out, lse, scale, counters)
