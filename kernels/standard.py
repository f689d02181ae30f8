"""Algorithm 0, standard attention: S and P materialized in HBM by three kernels.

    qk:      S = scale · Q Kᵀ          Q_i, K_j: HBM -> SRAM; S tile -> HBM (allowed entries)
             (S = score_mod(scale · Q Kᵀ) with a score_mod)
    softmax: P = softmax(S)            one thread block per row; the row is read twice from HBM
                                       (online max and sum, then normalize), because a row of Nk
                                       fp32 values need not fit in SRAM; L = m + log l -> HBM
    pv:      O = P V                   P_i,j (allowed entries), V_j: HBM -> SRAM; O_i -> HBM
                                       (kernels/matmul.py's nn product)

Causal tiles that are fully masked are skipped by qk and pv: no loads, no math. Q and K are d
wide, V and O d_v wide (``head_dim_v``; d_v = d unless given).
"""

import math

import numpy as np

from numba import cuda, float32, int32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.matmul import make_nn
from kernels.tiles import COUNTERS, NEG_INF, ZERO, array_type, make_tile_ops
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers


def make_standard(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """Build the three kernels (V, O ``head_dim_v`` wide; None: ``head_dim``).
    Returns a dict phase -> (kernel, smem_bytes, grid(problem), block)."""
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask, score_mod)
    # Numba resolves closure variables, not attributes of a namespace: bind them here
    CNT_LEN = t.CNT_LEN
    flush, load_rows, nan_max, zero_counter, s_tile = (t.flush, t.load_rows, t.nan_max, t.zero_counter, t.s_tile)
    thread_yx, batch_head, kv_head = t.thread_yx, t.batch_head, t.kv_head
    bufs = sram_buffers(schedule, head_dim, dtype)
    (off_qk, smem_qk), (off_sm, smem_sm) = (sram_offsets(bufs[p]) for p in ("qk", "softmax"))
    BR, BC, TM, TN, TY, TX, NT = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.NT
    inc, allowed, n_allowed, mask_ok, tile_visited = t.inc, t.allowed, t.n_allowed, t.mask_ok, t.tile_visited
    modded, count_mod = t.modded, t.count_mod
    Q_, K_, V_, O_, S_, P_, M_, L_, l_ = (slots(n) for n in ("Q", "K", "V", "O", "S", "P", "m", "L", "l"))
    IN = t.IN
    OQ, OK = off_qk["Q"], off_qk["K"]
    OMS, OLS = off_sm["m"], off_sm["l"]

    def qk(q, k, s, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        j = cuda.blockIdx.x
        i = cuda.blockIdx.y
        b, h = batch_head(cuda.blockIdx.z, q.shape[1])
        q0 = i * BR
        k0 = j * BC
        q_len = min(BR, q.shape[2] - q0)
        kv_len = min(BC, k.shape[2] - k0)
        flag = cuda.shared.array(1, int32)
        if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
            return  # fully masked tile: no loads, no math
        sm_in = cuda.shared.array(0, IN)
        cnt = cuda.local.array(CNT_LEN, int64)  # this thread's IO counters (count build only)
        zero_counter(cnt)
        count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
        load_rows(q, b, h, q0, q_len, sm_in, OQ, tid, cnt, Q_[HBM_R], Q_[SRAM_W])
        load_rows(k, b, kv_head(h, q.shape[1], k.shape[1]), k0, kv_len, sm_in, OK, tid, cnt, K_[HBM_R], K_[SRAM_W])
        # barrier: Q_i and K_j are in SRAM
        cuda.syncthreads()
        sacc = cuda.local.array((TM, TN), float32)
        # -- S = score_mod(scale · Q_i K_j^T) -> HBM, allowed entries only
        if s_tile(sm_in, OQ, sm_in, OK, ty, tx, q_len, kv_len, sacc, cnt, Q_[SRAM_R], K_[SRAM_R]):
            for a in range(TM):
                r = ty + a * TY
                for bb in range(TN):
                    c = tx + bb * TX
                    if r < q_len and c < kv_len and allowed(b, h, q0 + r, k0 + c):
                        s[b, h, q0 + r, k0 + c] = modded(scale * sacc[a, bb], b, h, q0 + r, k0 + c)
                        inc(cnt, S_[HBM_W], 1)
        flush(cnt, counters)

    def softmax(s, p, lse, counters):
        tid = cuda.threadIdx.x
        row = cuda.blockIdx.x
        b, h = batch_head(cuda.blockIdx.y, s.shape[1])
        jn = n_allowed(row, 0, s.shape[3])
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)  # this thread's IO counters (count build only)
        zero_counter(cnt)
        # -- pass 1: this thread's online (max, sum) over its strided share of the row
        m_t = NEG_INF
        l_t = ZERO
        for c in range(tid, jn, NT):
            if mask_ok(b, h, row, c):
                x = s[b, h, row, c]
                inc(cnt, S_[HBM_R], 1)
                m_new = nan_max(m_t, x)
                if m_new != NEG_INF:  # else only -inf logits so far: l stays 0 (no exp(-inf + inf))
                    l_t = l_t * math.exp(m_t - m_new) + math.exp(x - m_new)
                m_t = m_new
        sm_f[OMS + tid] = m_t
        sm_f[OLS + tid] = l_t
        inc(cnt, M_[SRAM_W], 1)
        inc(cnt, l_[SRAM_W], 1)
        # barrier: all partial (m, l) are in SRAM
        cuda.syncthreads()
        # -- thread 0 combines the partials into the row's (m, l) and writes L
        if tid == 0:
            m = NEG_INF
            l = ZERO
            for u in range(NT):
                m_u = sm_f[OMS + u]
                l_u = sm_f[OLS + u]
                inc(cnt, M_[SRAM_R], 1)
                inc(cnt, l_[SRAM_R], 1)
                m_new = nan_max(m, m_u)
                if m_new != NEG_INF:
                    l = l * math.exp(m - m_new) + l_u * math.exp(m_u - m_new)
                m = m_new
            sm_f[OMS + NT] = m
            sm_f[OLS + NT] = l
            inc(cnt, M_[SRAM_W], 1)
            inc(cnt, l_[SRAM_W], 1)
            lse[b, h, row] = m + math.log(l) if l != ZERO else NEG_INF
            inc(cnt, L_[HBM_W], 1)
        # barrier: the row's (m, l) is in SRAM
        cuda.syncthreads()
        m = sm_f[OMS + NT]
        l = sm_f[OLS + NT]
        inc(cnt, M_[SRAM_R], 1)
        inc(cnt, l_[SRAM_R], 1)
        # -- pass 2: P = exp(S - m) / l -> HBM (P = 0 in a row whose logits are all -inf)
        for c in range(tid, jn, NT):
            if mask_ok(b, h, row, c):
                p[b, h, row, c] = math.exp(s[b, h, row, c] - m) / l if l != ZERO else ZERO
                inc(cnt, S_[HBM_R], 1)
                inc(cnt, P_[HBM_W], 1)
        flush(cnt, counters)

    def grid_qk(problem):
        return ((problem.n_kv + BC - 1) // BC, (problem.n_q + BR - 1) // BR, problem.bh)

    def grid_softmax(problem):
        return (problem.n_q, problem.bh)

    return {
        "qk": (qk, smem_qk, grid_qk),
        "softmax": (softmax, smem_sm, grid_softmax),
        "pv": make_nn(schedule, head_dim if head_dim_v is None else head_dim_v, dtype, count_io, causal,
                      "P", "V", "O", mask=mask),
    }


def phases(dtype):
    """The kind's kernels (sandbox/vocabulary/kinds.py): qk(q, k, s, scale), softmax(s, p, lse), pv(p, v, o, 1)."""
    IN4, F3, F4 = array_type(dtype, 4), array_type("float32", 3), array_type("float32", 4)
    part = lambda phase: lambda *a, **kw: make_standard(*a, **kw)[phase]  # noqa: E731
    return {
        "qk": (part("qk"), (IN4, IN4, F4, float32, COUNTERS)),
        "softmax": (part("softmax"), (F4, F4, F3, COUNTERS)),
        "pv": (part("pv"), (F4, IN4, IN4, float32, COUNTERS)),
    }


def launch(launch, schedule, problem, q, k, v, out, lse, scale, counters, empty):
    nn = (problem.batch, problem.heads, problem.n_q, problem.n_kv)
    s, p = empty(nn, np.float32, "S"), empty(nn, np.float32, "P")  # Nq×Nk each, in HBM
    launch("qk", q, k, s, scale, counters)
    launch("softmax", s, p, lse, counters)
    launch("pv", p, v, out, np.float32(1.0), counters)
