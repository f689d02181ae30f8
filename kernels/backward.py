"""Backward pass: dQ, dK, dV from Q, K, V, O, L and dO, with recomputation (flash) or a materialized P (standard).

Both start with D = rowsum(dO ∘ O) (kernel ``d``). Then, with P = exp(scale·QKᵀ - L),
dP = dO Vᵀ and dS = P ∘ (dP - D):

flash1/flash2 (FlashAttention-2's backward; no P in HBM, S and P rebuilt per tile from Q, K, L):
    dkdv: one thread block per (K/V block j, batch·head); K_j, V_j stay in SRAM; for each Q block
          i: Q_i, dO_i, L_i, D_i -> SRAM, P and dP on register tiles, dV_j += Pᵀ dO_i,
          dK_j += dSᵀ Q_i (P, then dS, through one SRAM tile); dK_j = scale·dK_j, dV_j -> HBM
    dq:   one thread block per (Q block i, batch·head); Q_i, dO_i, L_i, D_i stay in SRAM; for each
          K/V block j: K_j, V_j -> SRAM, dS on register tiles -> SRAM, dQ_i += dS K_j; dQ_i = scale·dQ_i -> HBM
standard (P and dS materialized in HBM, like the forward's S and P):
    p:  P = exp(scale·QKᵀ - L) -> HBM       ds: dS = P ∘ (dO Vᵀ - D) -> HBM
    tn: dV = Pᵀ dO, dK = scale·dSᵀ Q         nn: dQ = scale·dS K          (kernels/matmul.py)

Grouped K/V heads (k, v of H_kv < H heads; query head h reads K/V head h // (H / H_kv)): every
load of K or V reads the query head's K/V head, and dK, dV of a K/V head sum its group's query
heads, deterministically: dkdv (standard: dv, dk) writes each query head's dK_j, dV_j in fp32 to
the partials dKpart, dVpart (B, H, Nk, d), then
    group_sum: one thread per element of dK, dV (B, H_kv, Nk, d): the sum of the group's H / H_kv
               partials, in head order, rounded to the input dtype
Without grouping dkdv writes dK, dV directly and there is no group_sum.

An entry with P = 0 (masked, or exp underflowed) contributes nothing to dV, dS, dQ or dK, even
where V, K or Q hold NaN or inf (no 0·NaN).

Under a mask (the forward's predicate, compiled in through ``make_tile_ops``) every kernel but
``d`` skips the tiles with no allowed entry, as the forward does, and masks the rest entry by
entry; dkdv loads K_j and V_j at the first tile of block j a Q block sees (none if no block does). ``simulate(..., backward=True,
mask=m)`` counts the same tiles.

V's own head dim d_v (``head_dim_v``; d_v = d unless given): V, O, dO and dV are d_v wide, Q, K,
dQ and dK d wide; dP = dO Vᵀ contracts over d_v, S = QKᵀ over d. Each kernel loads, multiplies
and stores a tile with the tile ops of its width (kernels/tiles.py's ``value_ops``).

With a score_mod (sandbox/vocabulary/score_mods.py) S is score_mod(scale·QKᵀ) wherever P is
rebuilt, and dS = P ∘ (dP - D) ∘ score_mod'(scale·QKᵀ), its derivative (the ScoreMod's ``grad``)
evaluated beside P. The standard backward's p kernel writes that derivative to HBM (the tensor
"dmod", in the buffer ds later overwrites), and its ds kernel reads it back entry by entry.

Deterministic: every output element is written by one thread, which sums in a fixed order; no
floating-point atomics anywhere (the counters' integer atomics do not touch the results), so the
same inputs give bit-identical gradients.
"""

import math

from numba import cuda, float32, int32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.matmul import make_nn, make_tn
from kernels.tiles import NEG_INF, ONE, ZERO, inline_ir, keep_f32, make_tile_ops, value_ops
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers


def make_d(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """D = rowsum(dO ∘ O), fp32: kernel(o, do, dvec, counters), one thread per row (every row, whatever the mask
    and the score_mod); O and dO are ``head_dim_v`` wide (None: ``head_dim``)."""
    t = make_tile_ops(schedule, head_dim if head_dim_v is None else head_dim_v, count_io, causal, dtype)
    CNT_LEN, zero_counter, flush, inc, to_f32, batch_head = t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.to_f32, t.batch_head
    BR, NT, D = t.BR, t.NT, t.D
    O_, dO_, D_ = slots("O"), slots("dO"), slots("D")

    def kernel(o, do, dvec, counters):
        tid = cuda.threadIdx.x
        b, h = batch_head(cuda.blockIdx.y, o.shape[1])
        q0 = cuda.blockIdx.x * BR
        q_len = min(BR, o.shape[2] - q0)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        for r in range(tid, q_len, NT):
            acc = ZERO
            for c in range(D):
                acc += to_f32(do[b, h, q0 + r, c]) * to_f32(o[b, h, q0 + r, c])
                inc(cnt, dO_[HBM_R], 1)
                inc(cnt, O_[HBM_R], 1)
            dvec[b, h, q0 + r] = acc
            inc(cnt, D_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, 0, grid


def _common(schedule, head_dim, dtype, count_io, causal, phase, mask, head_dim_v=None, score_mod=None):
    """(tile ops of d, tile ops of d_v, buffer offsets, shared-memory bytes) of ``phase``."""
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask, score_mod)
    tv = value_ops(t, schedule, head_dim_v, count_io, causal, dtype, mask, score_mod)
    off, smem_bytes = sram_offsets(sram_buffers(schedule, head_dim, dtype, backward=True, head_dim_v=head_dim_v)[phase])
    return t, tv, off, smem_bytes


def _load_l_d(t, off):
    """load(lse, dvec, b, h, q0, q_len, sm_f, tid, cnt): L_i and D_i, HBM -> SRAM (at off["L"], off["D"]), all threads."""
    NT, inc, OL, OD = t.NT, t.inc, off["L"], off["D"]
    L_, D_ = slots("L"), slots("D")

    @inline_ir
    def load(lse, dvec, b, h, q0, q_len, sm_f, tid, cnt):
        for r in range(tid, q_len, NT):
            sm_f[OL + r] = lse[b, h, q0 + r]
            sm_f[OD + r] = dvec[b, h, q0 + r]
            inc(cnt, L_[HBM_R], 1)
            inc(cnt, L_[SRAM_W], 1)
            inc(cnt, D_[HBM_R], 1)
            inc(cnt, D_[SRAM_W], 1)

    return load


def _mod_exp(t):
    """mod_exp(s, l) = P = exp(s - L) for a rebuilt score s; with a score_mod, 0 where it made s = -inf
    (a score_mod may exclude an entry, even in a row that sees nothing, L = -inf: no exp(-inf + inf))."""
    HAS_MOD = t.HAS_MOD

    @inline_ir
    def mod_exp(s, l_r):
        if HAS_MOD and s == NEG_INF:
            return ZERO
        return math.exp(s - l_r)

    return mod_exp


def make_flash_dkdv(schedule, head_dim, dtype, count_io, causal, mask=None, grouped=False, head_dim_v=None,
                    score_mod=None):
    """kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters); grid (Tc, B·H).

    ``grouped``: k, v have fewer heads than q; dk, dv are then the fp32 partials (B, H, Nk, d)
    and (B, H, Nk, d_v) that :func:`make_group_sum` adds up."""
    t, tv, off, smem_bytes = _common(schedule, head_dim, dtype, count_io, causal, "dkdv", mask, head_dim_v, score_mod)
    # Numba resolves closure variables, not attributes of a namespace: bind them here
    modded, mod_grad, count_mod, mod_exp = t.modded, t.mod_grad, t.count_mod, _mod_exp(t)
    CNT_LEN, zero_counter, flush, inc, allowed, load_rows, s_tile, ptx_tile = (
        t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.allowed, t.load_rows, t.s_tile, t.ptx_tile)
    load_v, s_tile_v, ptx_tile_v = tv.load_rows, tv.s_tile, tv.ptx_tile  # V_j, dO_i, dV_j: d_v wide
    DV, DCQV = tv.D, tv.DCQ
    DM, DCQM = max(t.D, DV), max(t.DCQ, DCQV)  # the wider of dK_j and dV_j
    SAME = DV == t.D  # d_v = d: the loops without d_v (a compile-time constant: one branch is compiled)
    thread_yx, batch_head, load_l_d, tile_visited = t.thread_yx, t.batch_head, _load_l_d(t, off), t.tile_visited
    kv_head = t.kv_head
    BR, BC, TM, TN, TY, TX, D, DCQ, CAUSAL = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.D, t.DCQ, t.CAUSAL
    OQ, OdO, OK, OV, OS, OL, OD = (off[n] for n in ("Q", "dO", "K", "V", "dS", "L", "D"))
    Q_, K_, V_, P_, dO_, dS_, L_, D_ = (slots(n) for n in ("Q", "K", "V", "P", "dO", "dS", "L", "D"))
    dK_, dV_ = (slots("dKpart"), slots("dVpart")) if grouped else (slots("dK"), slots("dV"))
    IN = t.IN
    store = keep_f32 if grouped else t.from_f32  # partials stay fp32

    def kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        j = cuda.blockIdx.x
        b, h = batch_head(cuda.blockIdx.y, q.shape[1])
        hk = kv_head(h, q.shape[1], k.shape[1])  # the K/V head this query head reads
        n_q = q.shape[2]
        k0 = j * BC
        kv_len = min(BC, k.shape[2] - k0)
        sm_in = cuda.shared.array(0, IN)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        acc_v = cuda.local.array((TN, DCQV), float32)  # this thread's tile of dV_j, in registers
        acc_k = cuda.local.array((TN, DCQ), float32)  # and of dK_j
        for bb in range(TN):
            if SAME:
                for c in range(DCQ):
                    acc_v[bb, c] = ZERO
                    acc_k[bb, c] = ZERO
            else:
                for c in range(DCQV):
                    acc_v[bb, c] = ZERO
                for c in range(DCQ):
                    acc_k[bb, c] = ZERO
        p_t = cuda.local.array((TM, TN), float32)  # S, then P, on the register tile
        ds_t = cuda.local.array((TM, TN), float32)  # dP, then dS
        i_start = 0
        i_end = (n_q + BR - 1) // BR
        if CAUSAL:
            i_start = k0 // BR  # earlier Q blocks hold only rows < k0: fully masked, skipped
            if k0 >= n_q:
                i_end = i_start  # no query sees this block
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
        kv_loaded = False
        for i in range(i_start, i_end):
            q0 = i * BR
            q_len = min(BR, n_q - q0)
            if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                continue  # a mask's empty tile: skipped
            # barrier: every thread is done with the previous Q_i, dO_i and dS
            cuda.syncthreads()
            if not kv_loaded:  # K_j, V_j at the first tile a Q block sees, then kept for the whole Q loop
                load_rows(k, b, hk, k0, kv_len, sm_in, OK, tid, cnt, K_[HBM_R], K_[SRAM_W])
                load_v(v, b, hk, k0, kv_len, sm_in, OV, tid, cnt, V_[HBM_R], V_[SRAM_W])
                kv_loaded = True
            load_rows(q, b, h, q0, q_len, sm_in, OQ, tid, cnt, Q_[HBM_R], Q_[SRAM_W])
            load_v(do, b, h, q0, q_len, sm_in, OdO, tid, cnt, dO_[HBM_R], dO_[SRAM_W])
            load_l_d(lse, dvec, b, h, q0, q_len, sm_f, tid, cnt)
            count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
            # barrier: Q_i, dO_i, L_i, D_i (and K_j, V_j) are in SRAM
            cuda.syncthreads()

            # -- P = exp(S - L), S = score_mod(scale · Q_i K_j^T), dP = dO_i V_j^T, dS = P ∘ (dP - D) ∘ score_mod'
            # on register tiles
            work = s_tile(sm_in, OQ, sm_in, OK, ty, tx, q_len, kv_len, p_t, cnt, Q_[SRAM_R], K_[SRAM_R])
            if work:
                s_tile_v(sm_in, OdO, sm_in, OV, ty, tx, q_len, kv_len, ds_t, cnt, dO_[SRAM_R], V_[SRAM_R])
                for a in range(TM):
                    r = ty + a * TY
                    if r < q_len:
                        l_r = sm_f[OL + r]
                        d_r = sm_f[OD + r]
                        inc(cnt, L_[SRAM_R], 1)
                        inc(cnt, D_[SRAM_R], 1)
                        for bb in range(TN):
                            c = tx + bb * TX
                            if c < kv_len and allowed(b, h, q0 + r, k0 + c):
                                s = scale * p_t[a, bb]
                                p = mod_exp(modded(s, b, h, q0 + r, k0 + c), l_r)
                                g = mod_grad(s, b, h, q0 + r, k0 + c)
                                ds_t[a, bb] = p * (ds_t[a, bb] - d_r) * g if p != ZERO else ZERO  # no 0·NaN
                                sm_f[OS + r * BC + c] = p
                                inc(cnt, P_[SRAM_W], 1)
            # barrier: P is in SRAM
            cuda.syncthreads()
            # -- dV_j += P^T dO_i
            ptx_tile_v(sm_f, OS, sm_in, OdO, ty, tx, b, h, q0, k0, q_len, kv_len, acc_v, cnt, P_[SRAM_R], dO_[SRAM_R])
            # barrier: every thread is done reading P before dS overwrites it
            cuda.syncthreads()
            if work:
                for a in range(TM):
                    r = ty + a * TY
                    for bb in range(TN):
                        c = tx + bb * TX
                        if r < q_len and c < kv_len and allowed(b, h, q0 + r, k0 + c):
                            sm_f[OS + r * BC + c] = ds_t[a, bb]
                            inc(cnt, dS_[SRAM_W], 1)
            # barrier: dS is in SRAM
            cuda.syncthreads()
            # -- dK_j += dS^T Q_i
            ptx_tile(sm_f, OS, sm_in, OQ, ty, tx, b, h, q0, k0, q_len, kv_len, acc_k, cnt, dS_[SRAM_R], Q_[SRAM_R])

        # -- dK_j = scale · dK_j, dV_j -> HBM (zeros for a block no query sees; grouped: this query head's partials)
        if tx < kv_len and ty < DM:
            for bb in range(TN):
                kv = tx + bb * TX
                if kv < kv_len:
                    for c in range(DCQM):
                        col = ty + c * TY
                        if SAME:
                            if col < D:
                                dv[b, h, k0 + kv, col] = store(acc_v[bb, c])
                                dk[b, h, k0 + kv, col] = store(scale * acc_k[bb, c])
                                inc(cnt, dV_[HBM_W], 1)
                                inc(cnt, dK_[HBM_W], 1)
                        else:  # dV_j and dK_j of their own widths
                            if col < DV:
                                dv[b, h, k0 + kv, col] = store(acc_v[bb, c])
                                inc(cnt, dV_[HBM_W], 1)
                            if col < D:
                                dk[b, h, k0 + kv, col] = store(scale * acc_k[bb, c])
                                inc(cnt, dK_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_kv + BC - 1) // BC, problem.bh)

    return kernel, smem_bytes, grid


def make_flash_dq(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """kernel(q, k, v, do, lse, dvec, dq, scale, counters); grid (Tr, B·H)."""
    t, tv, off, smem_bytes = _common(schedule, head_dim, dtype, count_io, causal, "dq", mask, head_dim_v, score_mod)
    load_v, s_tile_v = tv.load_rows, tv.s_tile  # dO_i, V_j: d_v wide
    modded, mod_grad, count_mod, mod_exp = t.modded, t.mod_grad, t.count_mod, _mod_exp(t)
    CNT_LEN, zero_counter, flush, inc, allowed, load_rows, s_tile, pv_tile, tile_visited = (
        t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.allowed, t.load_rows, t.s_tile, t.pv_tile, t.tile_visited)
    thread_yx, batch_head, load_l_d, store_rows = t.thread_yx, t.batch_head, _load_l_d(t, off), t.store_rows
    kv_head = t.kv_head
    BR, BC, TM, TN, TY, TX, DC, CAUSAL = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.DC, t.CAUSAL
    OQ, OdO, OK, OV, OS, OL, OD = (off[n] for n in ("Q", "dO", "K", "V", "dS", "L", "D"))
    Q_, K_, V_, dO_, dS_, L_, D_, dQ_ = (slots(n) for n in ("Q", "K", "V", "dO", "dS", "L", "D", "dQ"))
    IN = t.IN

    def kernel(q, k, v, do, lse, dvec, dq, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        b, h = batch_head(cuda.blockIdx.y, q.shape[1])
        hk = kv_head(h, q.shape[1], k.shape[1])  # the K/V head this query head reads
        n_kv = k.shape[2]
        q0 = cuda.blockIdx.x * BR
        q_len = min(BR, q.shape[2] - q0)
        sm_in = cuda.shared.array(0, IN)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        # -- Q_i, dO_i, L_i, D_i: they stay in SRAM for the whole K/V loop
        load_rows(q, b, h, q0, q_len, sm_in, OQ, tid, cnt, Q_[HBM_R], Q_[SRAM_W])
        load_v(do, b, h, q0, q_len, sm_in, OdO, tid, cnt, dO_[HBM_R], dO_[SRAM_W])
        load_l_d(lse, dvec, b, h, q0, q_len, sm_f, tid, cnt)
        acc = cuda.local.array((TM, DC), float32)  # this thread's tile of dQ_i, in registers
        for a in range(TM):
            for c in range(DC):
                acc[a, c] = ZERO
        p_t = cuda.local.array((TM, TN), float32)
        ds_t = cuda.local.array((TM, TN), float32)
        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
        for j in range(0, (kv_end + BC - 1) // BC):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                continue  # a mask's empty tile: skipped
            # barrier: every thread is done with the previous K_j, V_j and dS
            cuda.syncthreads()
            load_rows(k, b, hk, k0, kv_len, sm_in, OK, tid, cnt, K_[HBM_R], K_[SRAM_W])
            load_v(v, b, hk, k0, kv_len, sm_in, OV, tid, cnt, V_[HBM_R], V_[SRAM_W])
            count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
            # barrier: K_j, V_j (and, first time round, Q_i, dO_i, L_i, D_i) are in SRAM
            cuda.syncthreads()
            # -- dS = P ∘ (dO_i V_j^T - D) ∘ score_mod' on register tiles -> SRAM
            if s_tile(sm_in, OQ, sm_in, OK, ty, tx, q_len, kv_len, p_t, cnt, Q_[SRAM_R], K_[SRAM_R]):
                s_tile_v(sm_in, OdO, sm_in, OV, ty, tx, q_len, kv_len, ds_t, cnt, dO_[SRAM_R], V_[SRAM_R])
                for a in range(TM):
                    r = ty + a * TY
                    if r < q_len:
                        l_r = sm_f[OL + r]
                        d_r = sm_f[OD + r]
                        inc(cnt, L_[SRAM_R], 1)
                        inc(cnt, D_[SRAM_R], 1)
                        for bb in range(TN):
                            c = tx + bb * TX
                            if c < kv_len and allowed(b, h, q0 + r, k0 + c):
                                s = scale * p_t[a, bb]
                                p = mod_exp(modded(s, b, h, q0 + r, k0 + c), l_r)
                                g = mod_grad(s, b, h, q0 + r, k0 + c)
                                sm_f[OS + r * BC + c] = p * (ds_t[a, bb] - d_r) * g if p != ZERO else ZERO  # no 0·NaN
                                inc(cnt, dS_[SRAM_W], 1)
            # barrier: dS is in SRAM
            cuda.syncthreads()
            # -- dQ_i += dS K_j
            pv_tile(sm_f, OS, sm_in, OK, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, dS_[SRAM_R], K_[SRAM_R])
        # -- dQ_i = scale · dQ_i -> HBM
        store_rows(dq, b, h, q0, q_len, ty, tx, acc, scale, cnt, dQ_[HBM_W])
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def make_standard_p(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """P = exp(scale·QKᵀ - L) -> HBM: kernel(q, k, lse, dmod, p, scale, counters); grid (Tc, Tr, B·H).
    With a score_mod, P = exp(score_mod(scale·QKᵀ) - L), and score_mod'(scale·QKᵀ) -> ``dmod``."""
    t, _, off, smem_bytes = _common(schedule, head_dim, dtype, count_io, causal, "p", mask, head_dim_v, score_mod)
    return _make_rowwise(t, off, smem_bytes, dtype, "p")


def make_standard_ds(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """dS = P ∘ (dO Vᵀ - D) -> HBM: kernel(do, v, dvec, p, ds, counters); grid (Tc, Tr, B·H); dO
    and V are ``head_dim_v`` wide (None: ``head_dim``). With a score_mod, dS = P ∘ (dO Vᵀ - D) ∘ dmod,
    ``dmod`` read from ``ds`` where the p kernel put it."""
    _, tv, off, smem_bytes = _common(schedule, head_dim, dtype, count_io, causal, "ds", mask, head_dim_v, score_mod)
    return _make_rowwise(tv, off, smem_bytes, dtype, "ds")


def _make_rowwise(t, off, smem_bytes, dtype, which):
    """The two elementwise-after-matmul kernels of the standard backward (one source, two roles).

    "p":  A = Q, B = K, row value L:  out = P = exp(scale·A Bᵀ - L)
    "ds": A = dO, B = V, row value D: out = dS = P ∘ (A Bᵀ - D), P read from HBM

    With a score_mod: "p" applies it (P = exp(score_mod(scale·A Bᵀ) - L)) and writes its derivative
    to ``p_in`` (the dmod buffer); "ds" reads that derivative from ``out`` before writing dS there.
    """
    CNT_LEN, zero_counter, flush, inc, allowed, load_rows, s_tile, tile_visited = (
        t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.allowed, t.load_rows, t.s_tile, t.tile_visited)
    thread_yx, batch_head, kv_head = t.thread_yx, t.batch_head, t.kv_head
    BR, BC, TM, TN, TY, TX, NT = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.NT
    IS_P = which == "p"
    HAS_MOD, modded, mod_grad, count_mod, mod_exp = t.HAS_MOD, t.modded, t.mod_grad, t.count_mod, _mod_exp(t)
    G_ = slots("dmod")
    a_name, b_name, row_name, out_name = ("Q", "K", "L", "P") if IS_P else ("dO", "V", "D", "dS")
    OA, OB, OR = off[a_name], off[b_name], off[row_name]
    A_, B_, R_, OUT_, P_ = slots(a_name), slots(b_name), slots(row_name), slots(out_name), slots("P")
    IN = t.IN

    def kernel(a_in, b_in, rowvec, p_in, out, scale, counters):
        tid = cuda.threadIdx.x
        ty, tx = thread_yx(tid)
        j = cuda.blockIdx.x
        i = cuda.blockIdx.y
        b, h = batch_head(cuda.blockIdx.z, a_in.shape[1])
        q0 = i * BR
        k0 = j * BC
        q_len = min(BR, a_in.shape[2] - q0)
        kv_len = min(BC, b_in.shape[2] - k0)
        flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
        if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
            return  # an empty tile (causal, or a mask's): no loads, no math
        sm_in = cuda.shared.array(0, IN)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        if IS_P:
            count_mod(cnt, tid)  # the score_mod's captured arrays, once for this tile
        load_rows(a_in, b, h, q0, q_len, sm_in, OA, tid, cnt, A_[HBM_R], A_[SRAM_W])
        hb = kv_head(h, a_in.shape[1], b_in.shape[1])  # B (K or V): the query head's K/V head
        load_rows(b_in, b, hb, k0, kv_len, sm_in, OB, tid, cnt, B_[HBM_R], B_[SRAM_W])
        for r in range(tid, q_len, NT):
            sm_f[OR + r] = rowvec[b, h, q0 + r]
            inc(cnt, R_[HBM_R], 1)
            inc(cnt, R_[SRAM_W], 1)
        # barrier: the A and B tiles and the row values are in SRAM
        cuda.syncthreads()
        acc = cuda.local.array((TM, TN), float32)
        if s_tile(sm_in, OA, sm_in, OB, ty, tx, q_len, kv_len, acc, cnt, A_[SRAM_R], B_[SRAM_R]):
            for a in range(TM):
                r = ty + a * TY
                if r < q_len:
                    x_r = sm_f[OR + r]
                    inc(cnt, R_[SRAM_R], 1)
                    for bb in range(TN):
                        c = tx + bb * TX
                        if c < kv_len and allowed(b, h, q0 + r, k0 + c):
                            if IS_P:
                                s = scale * acc[a, bb]
                                out[b, h, q0 + r, k0 + c] = mod_exp(modded(s, b, h, q0 + r, k0 + c), x_r)
                                if HAS_MOD:  # score_mod'(S) -> HBM, for the ds kernel
                                    p_in[b, h, q0 + r, k0 + c] = mod_grad(s, b, h, q0 + r, k0 + c)
                                    inc(cnt, G_[HBM_W], 1)
                            else:
                                p = p_in[b, h, q0 + r, k0 + c]
                                inc(cnt, P_[HBM_R], 1)
                                g = ONE
                                if HAS_MOD:  # score_mod'(S), where the p kernel wrote it
                                    g = out[b, h, q0 + r, k0 + c]
                                    inc(cnt, G_[HBM_R], 1)
                                ds = p * (acc[a, bb] - x_r) * g if p != ZERO else ZERO  # no 0·NaN
                                out[b, h, q0 + r, k0 + c] = ds
                            inc(cnt, OUT_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_kv + BC - 1) // BC, (problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def make_standard_products(schedule, head_dim, dtype, count_io, causal, mask=None, grouped=False, head_dim_v=None,
                           score_mod=None):
    """dV = Pᵀ dO, dK = scale·dSᵀ Q, dQ = scale·dS K (kernels/matmul.py); ``grouped``: dV, dK as
    each query head's fp32 partials (B, H, Nk, d_v) and (B, H, Nk, d), for :func:`make_group_sum`.
    dV and dO are ``head_dim_v`` wide (None: ``head_dim``). ``score_mod``: unused (dS has it)."""
    args = (schedule, head_dim, dtype, count_io, causal)
    args_v = (schedule, head_dim if head_dim_v is None else head_dim_v, dtype, count_io, causal)
    dk, dv = ("dKpart", "dVpart") if grouped else ("dK", "dV")
    return {
        "dv": make_tn(*args_v, "P", "dO", dv, mask=mask, out_f32=grouped),
        "dk": make_tn(*args, "dS", "Q", dk, mask=mask, out_f32=grouped),
        "dq": make_nn(*args, "dS", "K", "dQ", mask=mask),
    }


def make_group_sum(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """dK, dV of each K/V head = the sum of its group's fp32 partials, in head order, in the input dtype.

    kernel(dk_part, dv_part, dk, dv, counters): partials (B, H, Nk, d) and (B, H, Nk, d_v), outputs
    (B, H_kv, Nk, d) and (B, H_kv, Nk, d_v) (d_v: ``head_dim_v``, None: d); one thread per
    (K/V row, column) of one (batch, K/V head) over max(d, d_v) columns, grid
    (⌈Nk·max(d, d_v) / threads⌉, B·H_kv). Registers only: no shared memory.
    """
    t = make_tile_ops(schedule, head_dim, count_io, causal, dtype)
    CNT_LEN, zero_counter, flush, inc, from_f32, batch_head = (
        t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.from_f32, t.batch_head)
    NT, D = t.NT, t.D
    DV = D if head_dim_v is None else head_dim_v
    DM = max(D, DV)  # columns a row's threads cover
    SAME = DV == D  # (compiles to the one-width loop)
    dKp_, dVp_, dK_, dV_ = (slots(n) for n in ("dKpart", "dVpart", "dK", "dV"))

    def kernel(dk_part, dv_part, dk, dv, counters):
        b, hk = batch_head(cuda.blockIdx.y, dk.shape[1])
        group = dk_part.shape[1] // dk.shape[1]
        e = cuda.blockIdx.x * NT + cuda.threadIdx.x
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        if SAME:
            if e < dk.shape[2] * D:
                row = e // D
                col = e - row * D
                acc_k = ZERO
                acc_v = ZERO
                for g in range(group):  # a fixed order: bit-identical sums
                    acc_k += dk_part[b, hk * group + g, row, col]
                    acc_v += dv_part[b, hk * group + g, row, col]
                    inc(cnt, dKp_[HBM_R], 1)
                    inc(cnt, dVp_[HBM_R], 1)
                dk[b, hk, row, col] = from_f32(acc_k)
                dv[b, hk, row, col] = from_f32(acc_v)
                inc(cnt, dK_[HBM_W], 1)
                inc(cnt, dV_[HBM_W], 1)
        elif e < dk.shape[2] * DM:
            row = e // DM
            col = e - row * DM
            if col < D:
                acc_k = ZERO
                for g in range(group):  # a fixed order: bit-identical sums
                    acc_k += dk_part[b, hk * group + g, row, col]
                    inc(cnt, dKp_[HBM_R], 1)
                dk[b, hk, row, col] = from_f32(acc_k)
                inc(cnt, dK_[HBM_W], 1)
            if col < DV:
                acc_v = ZERO
                for g in range(group):
                    acc_v += dv_part[b, hk * group + g, row, col]
                    inc(cnt, dVp_[HBM_R], 1)
                dv[b, hk, row, col] = from_f32(acc_v)
                inc(cnt, dV_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return (-(-problem.n_kv * DM // NT), problem.bh_kv)

    return kernel, 0, grid
