"""Split-KV (flash-decoding): the K/V range of each Q block split over ``kv_splits`` thread blocks.

When Nq is small (decoding: a handful of queries against a long K/V cache), flash2 has only
Tr·B·H thread blocks, too few to fill a GPU. Split-KV gives each Q block ``kv_splits`` blocks:

    partial  (grid Tr × B·H × splits): flash2's loop over the s-th equal share of the K/V blocks
             (kernels/flash2.py with split=True); writes the share's normalized O_s and its L_s,
             fp32, to HBM ("Opart", "Lpart")
    combine  (grid Tr × B·H): per row, m = max_s L_s, l = Σ_s e^(L_s - m), L = m + log l;
             the weights w_s = e^(L_s - m) / l go to SRAM; O = Σ_s w_s O_s -> HBM

It pays for the parallelism in HBM traffic: Q is read once per split, and O moves three more
times (written and read as partials in fp32). ``simulator/counts.py:splitkv_counts`` counts it,
and the registry entry in ``sandbox/vocabulary/kinds.py`` is all that makes it a kind.
"""

import math

import numpy as np
from numba import cuda, float32, int64

from kernels.counters import HBM_R, HBM_W, SRAM_R, SRAM_W, slots
from kernels.flash2 import make_flash2
from kernels.tiles import COUNTERS, NEG_INF, ZERO, array_type, make_tile_ops
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers


def make_partial(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    return make_flash2(schedule, head_dim, dtype, count_io, causal, mask=mask, split=True, head_dim_v=head_dim_v,
                       score_mod=score_mod)


def make_combine(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """kernel(o_part, lse_part, o, lse, counters): one thread block per (Q block, batch·head); O and
    the partials O_s are ``head_dim_v`` wide (None: ``head_dim``) (``mask``, ``score_mod``: unused;
    the partial phase applied them)."""
    t = make_tile_ops(schedule, head_dim if head_dim_v is None else head_dim_v, count_io, causal, dtype)
    CNT_LEN, zero_counter, flush, inc, nan_max, from_f32 = (
        t.CNT_LEN, t.zero_counter, t.flush, t.inc, t.nan_max, t.from_f32)
    BR, NT, D, batch_head = t.BR, t.NT, t.D, t.batch_head
    NS = schedule.kv_splits
    off, smem_bytes = sram_offsets(sram_buffers(schedule, head_dim, dtype, head_dim_v=head_dim_v)["combine"])
    OW = off["w"]
    OP_, LP_, W_, O_, L_ = (slots(n) for n in ("Opart", "Lpart", "w", "O", "L"))

    def kernel(o_part, lse_part, o, lse, counters):
        tid = cuda.threadIdx.x
        b, h = batch_head(cuda.blockIdx.y, o.shape[1])
        q0 = cuda.blockIdx.x * BR
        q_len = min(BR, o.shape[2] - q0)
        sm_f = cuda.shared.array(0, float32)
        cnt = cuda.local.array(CNT_LEN, int64)
        zero_counter(cnt)
        # -- one thread per row: L_s -> SRAM, m = max L_s, l = Σ e^(L_s - m), L -> HBM, w_s -> SRAM
        for r in range(tid, q_len, NT):
            m = NEG_INF
            for s in range(NS):
                x = lse_part[b * NS + s, h, q0 + r]
                inc(cnt, LP_[HBM_R], 1)
                sm_f[OW + r * NS + s] = x
                inc(cnt, W_[SRAM_W], 1)
                m = nan_max(m, x)
            total = ZERO
            for s in range(NS):
                x = sm_f[OW + r * NS + s]
                inc(cnt, W_[SRAM_R], 1)
                if m != NEG_INF:  # a row no split saw: L = -inf, weights 0
                    total += math.exp(x - m)
            lse[b, h, q0 + r] = m + math.log(total) if m != NEG_INF else NEG_INF
            inc(cnt, L_[HBM_W], 1)
            for s in range(NS):
                x = sm_f[OW + r * NS + s]
                inc(cnt, W_[SRAM_R], 1)
                w = ZERO
                if m != NEG_INF:
                    w = math.exp(x - m) / total
                sm_f[OW + r * NS + s] = w
                inc(cnt, W_[SRAM_W], 1)
        # barrier: every row's weights are in SRAM
        cuda.syncthreads()
        # -- O = Σ_s w_s O_s, element by element
        for e in range(tid, q_len * D, NT):
            r = e // D
            col = e - r * D
            acc = ZERO
            for s in range(NS):
                w = sm_f[OW + r * NS + s]
                x = o_part[b * NS + s, h, q0 + r, col]
                if w != ZERO:  # a split of weight 0 contributes nothing, even a NaN partial
                    acc = cuda.fma(w, x, acc)  # explicit: every build of this source rounds alike
                inc(cnt, W_[SRAM_R], 1)
                inc(cnt, OP_[HBM_R], 1)
            o[b, h, q0 + r, col] = from_f32(acc)
            inc(cnt, O_[HBM_W], 1)
        flush(cnt, counters)

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def phases(dtype):
    """partial(q, k, v, o_part, lse_part, scale, counters), combine(o_part, lse_part, o, lse, counters)."""
    IN4, F3, F4 = array_type(dtype, 4), array_type("float32", 3), array_type("float32", 4)
    return {
        "partial": (make_partial, (IN4, IN4, IN4, F4, F3, float32, COUNTERS)),
        "combine": (make_combine, (F4, F3, IN4, F3, COUNTERS)),
    }


def launch(launch, schedule, problem, q, k, v, out, lse, scale, counters, empty):
    ns = schedule.kv_splits
    b, h, n_q, d = problem.batch, problem.heads, problem.n_q, problem.head_dim_v
    o_part = empty((b * ns, h, n_q, d), np.float32, "Opart")  # O's width: d_v  # splits stacked along the batch axis
    lse_part = empty((b * ns, h, n_q), np.float32, "Lpart")
    launch("partial", q, k, v, o_part, lse_part, scale, counters)
    launch("combine", o_part, lse_part, out, lse, counters)
