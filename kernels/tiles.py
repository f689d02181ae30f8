"""Device functions every kernel shares: tile loads, the S register tile, the PV register tile, counting.

Built by :func:`make_tile_ops`, a factory that closes over the compile-time constants
(block sizes, register tiles, head_dim, causal, count_io): ``cuda.local.array`` shapes and
loop bounds must be literal constants for Numba, and dead branches (``if COUNT_IO:``,
``if CAUSAL:``) then compile away.

Thread layout (see :class:`sandbox.Schedule`): thread ``tid`` is (ty, tx) = (tid // TX, tid % TX);
it owns rows ``ty + a·TY`` (a < TM) of the S and O tiles, columns ``tx + b·TX`` (b < TN) of the
S tile, and columns ``tx + c·TX`` (c < DC) of the O tile. Every counter increment sits next to
the access it counts.

Counting rules (the simulator models exactly these):
- a tile load moves each in-range element once: one HBM read, one SRAM write;
- S tile: a thread with at least one valid row and one valid column reads, for each of the d
  steps, its valid rows of Q and its valid columns of K from SRAM;
- S and P entries are written and read only where the mask allows (in range, and kv_idx <= q_idx
  when causal);
- PV tile: a thread with a valid row and an O column reads, for each of the tile's kv_len
  steps, its allowed P entries and its O columns of V from SRAM.
- PᵀX tile (backward: dV += Pᵀ dO, dK += dSᵀ Q): a thread with a valid K/V row and a d-column
  reads, for each of the tile's q_len rows, its allowed entries of P (or dS) and its columns of X.
- score_mod: every tile on which a kernel evaluates it (or its derivative) reads all of its
  captured arrays once from HBM, counted by thread 0 as the tensor "mod", in 4-byte words
  (sandbox/vocabulary/score_mods.py).
"""

import math
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, from_dtype, int64

from kernels.convert import make_convert
from kernels.counters import HBM_R, N_SLOTS, slots
from sandbox.vocabulary.dtypes import storage_dtype
from sandbox.vocabulary.runtime import using_simulator

NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
#: log2 e and ln 2 in fp32: the fast builds compute S in log2 units (exp(x) = exp2(x·log2 e)) and
#: turn their row maxima back into natural-log units for L (m·ln 2).
LOG2E = np.float32(1.4426950408889634)
LN2 = np.float32(0.6931471805599453)

#: The decorator of device functions inlined into their kernel (at the NVVM IR level: local arrays
#: passed to a called function would otherwise live in local memory); the simulator has no forceinline.
inline_device = cuda.jit(device=True) if using_simulator() else cuda.jit(device=True, forceinline=True)
#: The decorator of code the counting kernels share (folded from several kernels): Numba inlines
#: it into the caller's IR before typing, so a kernel compiles as if the code were written out in it.
inline_ir = cuda.jit(device=True, inline="always")


def array_type(dtype, ndim):
    """The Numba type of a C-contiguous ``ndim``-d device array of ``dtype`` (bfloat16: its uint16 bits)."""
    return from_dtype(storage_dtype(dtype))[(slice(None),) * (ndim - 1) + (slice(None, None, 1),)]


#: The Numba type of the IO counters array every kernel takes last.
COUNTERS = int64[::1]


@cuda.jit(device=True)
def _no_mask(b, h, q_idx, kv_idx):
    return True


@cuda.jit(device=True)
def _no_mod(score, b, h, q_idx, kv_idx):
    return score


@cuda.jit(device=True)
def _unit_mod_grad(score, b, h, q_idx, kv_idx):
    return ONE


@cuda.jit(device=True)
def keep_f32(x):
    """An fp32 value stored as it is: the store of an fp32 scratch tensor (a grouped backward's dK, dV partials)."""
    return x


def value_ops(t, schedule, head_dim_v, count_io, causal, dtype, mask=None, score_mod=None):
    """The tile ops of V's head dim d_v: ``t`` itself (the ops of d) when ``head_dim_v`` is None or d,
    else :func:`make_tile_ops` at width d_v.

    A kernel loads, multiplies and stores its d_v-wide tiles (V, dO, O, dV) with these and its
    d-wide ones (Q, K, dQ, dK) with ``t``; when d_v = d both are the same functions, so the kernel
    compiles to the code it has without d_v.
    """
    if head_dim_v is None or head_dim_v == t.D:
        return t
    return make_tile_ops(schedule, head_dim_v, count_io, causal, dtype, mask, score_mod)


def make_tile_ops(schedule, head_dim, count_io, causal, dtype, mask=None, score_mod=None, threads=None):
    """Device functions for one (schedule, head_dim, count_io, causal, input dtype, mask, score_mod); see the
    module docstring.

    ``threads``: the block's threads, which the functions that split work over the block stride by
    (``tile_visited``, ``load_rows``, ...); None: the schedule's.

    ``mask``: a :class:`sandbox.vocabulary.masks.Mask` or None; its device function is called by
    ``allowed`` and ``mask_ok``, and ``tile_visited`` evaluates it over a tile.

    ``score_mod``: a :class:`sandbox.vocabulary.score_mods.ScoreMod` or None; ``modded`` applies it
    to a scaled score (``store_s`` calls it), ``mod_grad`` is its derivative (1 without one), and
    ``count_mod`` counts one tile's read of its captured arrays.

    ``IN`` is the Numba type the input dtype is stored as on the device; ``to_f32`` and ``from_f32``
    widen a loaded input value to fp32 and round an fp32 value for a store (kernels/convert.py).
    """
    IN = from_dtype(storage_dtype(dtype))
    to_f32, from_f32 = make_convert(dtype)
    BR, BC = schedule.block_q, schedule.block_kv
    TM, TN = schedule.thread_q, schedule.thread_kv
    TY, TX = schedule.threads_q, schedule.threads_kv
    NT = schedule.threads if threads is None else int(threads)
    D = head_dim
    DC = -(-D // TX)  # O columns per thread (at most)
    COUNT_IO = bool(count_io)
    CAUSAL = bool(causal)
    HAS_MASK = mask is not None
    MASK = mask.device() if HAS_MASK else _no_mask
    CNT_LEN = N_SLOTS if COUNT_IO else 1
    HAS_MOD = score_mod is not None
    MOD = score_mod.device() if HAS_MOD else _no_mod
    MOD_GRAD = score_mod.grad_device() if HAS_MOD and score_mod.grad is not None else _unit_mod_grad
    MOD_WORDS = score_mod.captured_words() if HAS_MOD else 0
    MOD_R = slots("mod")[HBM_R]

    @cuda.jit(device=True)
    def inc(cnt, s, n):
        if COUNT_IO:
            cnt[s] += n

    @cuda.jit(device=True)
    def zero_counter(cnt):
        """Zero a thread's counters (the kernel allocates them: cuda.local.array(CNT_LEN, int64))."""
        if COUNT_IO:
            for s in range(CNT_LEN):
                cnt[s] = 0

    @cuda.jit(device=True)
    def flush(cnt, counters):
        # one atomic per non-zero counter per thread, at the thread's end
        if COUNT_IO:
            for s in range(CNT_LEN):
                if cnt[s] != 0:
                    cuda.atomic.add(counters, s, cnt[s])

    @cuda.jit(device=True)
    def nan_max(a, b):
        """max that propagates NaN (plain max would drop a NaN logit and hide it)."""
        if a > b or a != a:
            return a
        return b

    @cuda.jit(device=True)
    def modded(score, b, h, q_idx, kv_idx):
        """score_mod(score, ...) as fp32 (the score itself without a score_mod)."""
        if HAS_MOD:
            return float32(MOD(score, b, h, q_idx, kv_idx))
        return score

    @cuda.jit(device=True)
    def mod_grad(score, b, h, q_idx, kv_idx):
        """d score_mod / d score at ``score`` as fp32 (1 without a score_mod)."""
        if HAS_MOD:
            return float32(MOD_GRAD(score, b, h, q_idx, kv_idx))
        return ONE

    @cuda.jit(device=True)
    def count_mod(cnt, tid):
        """One tile's read of the score_mod's captured arrays (thread 0 counts it; nothing without one)."""
        if HAS_MOD and tid == 0:
            inc(cnt, MOD_R, MOD_WORDS)

    @cuda.jit(device=True)
    def mask_ok(b, h, q_idx, kv_idx):
        """The user mask alone (True without one): for loops already bounded by the causal prefix."""
        if HAS_MASK:
            return MASK(b, h, q_idx, kv_idx)
        return True

    @cuda.jit(device=True)
    def allowed(b, h, q_idx, kv_idx):
        """May query q_idx see key kv_idx: the causal mask and the user mask."""
        if CAUSAL and kv_idx > q_idx:
            return False
        return mask_ok(b, h, q_idx, kv_idx)

    @cuda.jit(device=True)
    def tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
        """Does the tile (rows q0.., columns k0..) hold an allowed entry? Without a user mask, the causal bound.

        With a mask every thread of the block must call it (it synchronizes): the threads
        evaluate the predicate over the tile together and raise ``flag[0]`` (shared int32[1]) if any
        entry is allowed; the same tiles are skipped by the simulator (sandbox.vocabulary.masks.tile_allowed).
        """
        if not HAS_MASK:
            return not CAUSAL or k0 <= q0 + q_len - 1
        cuda.syncthreads()  # every thread has read the previous tile's flag
        if tid == 0:
            flag[0] = 0
        cuda.syncthreads()
        for e in range(tid, q_len * kv_len, NT):
            r = e // kv_len
            if allowed(b, h, q0 + r, k0 + e - r * kv_len):
                flag[0] = 1  # every writer writes the same value
                break
        cuda.syncthreads()
        return flag[0] != 0

    @cuda.jit(device=True)
    def n_allowed(q_idx, k0, kv_len):
        """Allowed keys of row q_idx among k0 .. k0+kv_len-1: a prefix of the tile."""
        if CAUSAL:
            return max(0, min(kv_len, q_idx - k0 + 1))
        return kv_len

    @cuda.jit(device=True)
    def load_rows(src, b, h, row0, n_rows, dst, off, tid, cnt, s_hbm_r, s_sram_w):
        """dst[off + r·D + c] = src[b, h, row0 + r, c] for r < n_rows: HBM → SRAM, all threads."""
        for e in range(tid, n_rows * D, NT):
            r = e // D
            c = e - r * D
            dst[off + r * D + c] = src[b, h, row0 + r, c]
            inc(cnt, s_hbm_r, 1)
            inc(cnt, s_sram_w, 1)

    @cuda.jit(device=True)
    def s_tile(smq, offq, smk, offk, ty, tx, q_len, kv_len, sacc, cnt, s_q, s_k):
        """sacc[a, b] = Q_i[ty + a·TY] · K_j[tx + b·TX] for this thread's valid rows and columns.

        Any two row-major (rows × D) SRAM tiles work (e.g. dO_i and V_j for dP = dO Vᵀ); ``s_q`` and
        ``s_k`` are the counter slots of their SRAM reads.

        Returns False (and reads nothing) when the thread has no valid row or no valid column.
        """
        if ty >= q_len or tx >= kv_len:
            return False
        qreg = cuda.local.array(TM, float32)
        kreg = cuda.local.array(TN, float32)
        for a in range(TM):
            for b in range(TN):
                sacc[a, b] = ZERO
        for kk in range(D):
            # -- registers <- SRAM: this thread's rows of Q_i and columns of K_j^T at step kk
            # (out-of-range rows and columns get 0: their products are never stored)
            for a in range(TM):
                r = ty + a * TY
                qreg[a] = ZERO
                if r < q_len:
                    qreg[a] = to_f32(smq[offq + r * D + kk])
                    inc(cnt, s_q, 1)
            for b in range(TN):
                c = tx + b * TX
                kreg[b] = ZERO
                if c < kv_len:
                    kreg[b] = to_f32(smk[offk + c * D + kk])
                    inc(cnt, s_k, 1)
            # -- S += q k^T on the register tile
            for a in range(TM):
                for b in range(TN):
                    sacc[a, b] += qreg[a] * kreg[b]
        return True

    @cuda.jit(device=True)
    def pv_tile(smp, offp, smv, offv, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, s_p, s_v):
        """acc[a, c] += Σ_j P[ty + a·TY, j] · V_j[j, tx + c·TX]: this thread's tile of O += P V_j.

        P sits in SRAM with row stride Bc and is read only where allowed (masked entries count as 0).
        An entry of P that is 0 (masked, or exp underflowed) adds nothing, even where V_j holds NaN
        or inf (no 0·NaN).
        Also dQ += dS K_j. ``s_p``, ``s_v``: counter slots of the two SRAM reads.
        """
        if ty >= q_len or tx >= D:
            return
        preg = cuda.local.array(TM, float32)
        for jj in range(kv_len):
            # -- registers <- SRAM: this thread's rows of P at column jj
            for a in range(TM):
                r = ty + a * TY
                preg[a] = ZERO
                if r < q_len and allowed(b, h, q0 + r, k0 + jj):
                    preg[a] = smp[offp + r * BC + jj]
                    inc(cnt, s_p, 1)
            # -- O += p v on the register tile, one V element at a time
            for c in range(DC):
                col = tx + c * TX
                if col < D:
                    vv = to_f32(smv[offv + jj * D + col])
                    inc(cnt, s_v, 1)
                    for a in range(TM):
                        if preg[a] != ZERO:  # a weight of 0 contributes nothing, even times NaN or inf
                            # an explicit FMA: every build of this source rounds alike (bit-identical outputs)
                            acc[a, c] = cuda.fma(preg[a], vv, acc[a, c])

    @inline_ir
    def thread_yx(tid):
        """(ty, tx) of thread ``tid``: (tid // TX, tid % TX) (the module docstring's layout)."""
        ty = tid // TX
        return ty, tid - ty * TX

    @inline_ir
    def batch_head(bh, n_heads):
        """(b, h) of the grid's batch·head index ``bh``."""
        b = bh // n_heads
        return b, bh - b * n_heads

    @inline_ir
    def kv_head(h, n_heads, n_heads_kv):
        """The K/V head query head ``h`` reads: h // (H / H_kv) (h itself without grouped K/V heads)."""
        return h // (n_heads // n_heads_kv)

    @inline_ir
    def store_s(sacc, factor, ty, tx, b, h, q0, k0, q_len, kv_len, dst, off, cnt, s_w):
        """dst[off + r·BC + c] = score_mod(factor · sacc[a, bb]) for this thread's allowed entries (r = ty + a·TY,
        c = tx + bb·TX) of an S tile in SRAM (row stride Bc). ``s_w``: the counter slot of the SRAM write."""
        for a in range(TM):
            r = ty + a * TY
            for bb in range(TN):
                c = tx + bb * TX
                if r < q_len and c < kv_len and allowed(b, h, q0 + r, k0 + c):
                    dst[off + r * BC + c] = modded(factor * sacc[a, bb], b, h, q0 + r, k0 + c)
                    inc(cnt, s_w, 1)

    @inline_ir
    def s_row_max(sm, off, r, row, b, h, k0, jn, cnt, s_r):
        """The largest (NaN kept) of the first ``jn`` entries of row ``r`` of an S tile in SRAM (row
        stride Bc) that the user mask allows; query ``row``, keys from ``k0``. -inf if none."""
        m = NEG_INF
        for c in range(jn):
            if mask_ok(b, h, row, k0 + c):
                m = nan_max(m, sm[off + r * BC + c])
                inc(cnt, s_r, 1)
        return m

    @inline_ir
    def s_row_exp(sm, off, r, row, b, h, k0, jn, m, cnt, s_r, s_w):
        """P = exp(S - m) in place over the entries :func:`s_row_max` reads; returns their sum.
        ``s_r``, ``s_w``: the counter slots of the SRAM read (S) and write (P)."""
        total = ZERO
        for c in range(jn):
            if mask_ok(b, h, row, k0 + c):
                p = math.exp(sm[off + r * BC + c] - m)
                inc(cnt, s_r, 1)
                sm[off + r * BC + c] = p
                inc(cnt, s_w, 1)
                total += p
        return total

    @inline_ir
    def load_allowed(src, b, h, q0, q_len, k0, kv_len, dst, off, tid, cnt, s_hbm_r, s_sram_w):
        """dst[off + r·BC + c] = src[b, h, q0 + r, k0 + c] where allowed: a tile of an Nq×Nk matrix,
        HBM → SRAM (row stride Bc), all threads."""
        for e in range(tid, q_len * kv_len, NT):
            r = e // kv_len
            c = e - r * kv_len
            if allowed(b, h, q0 + r, k0 + c):
                dst[off + r * BC + c] = src[b, h, q0 + r, k0 + c]
                inc(cnt, s_hbm_r, 1)
                inc(cnt, s_sram_w, 1)

    @inline_ir
    def store_rows(out, b, h, q0, q_len, ty, tx, acc, factor, cnt, s_w):
        """out[b, h, q0 + r, col] = factor · acc[a, c] for this thread's rows r = ty + a·TY and
        columns col = tx + c·TX in range (``pv_tile``'s tile), rounded to the output dtype."""
        if ty < q_len and tx < D:
            for a in range(TM):
                r = ty + a * TY
                if r < q_len:
                    for c in range(DC):
                        col = tx + c * TX
                        if col < D:
                            out[b, h, q0 + r, col] = from_f32(factor * acc[a, c])
                            inc(cnt, s_w, 1)

    DCQ = -(-D // TY)  # dK/dV columns per thread (at most)

    @cuda.jit(device=True)
    def ptx_tile(smm, offm, smx, offx, ty, tx, b, h, q0, k0, q_len, kv_len, acc, cnt, s_m, s_x):
        """acc[bb, c] += Σ_r M[r, tx + bb·TX] · X[r, ty + c·TY]: this thread's tile of Mᵀ X (dV += Pᵀ dO, dK += dSᵀ Q).

        Thread (ty, tx) owns K/V rows ``tx + bb·TX`` and d-columns ``ty + c·TY``. M (Br×Bc fp32, row
        stride Bc) is read only where allowed, and an entry of 0 adds nothing (even times NaN or
        inf); X is a row-major q_len×D tile. ``s_m``, ``s_x``:
        counter slots of the two SRAM reads.
        """
        if tx >= kv_len or ty >= D:
            return
        mreg = cuda.local.array(TN, float32)
        for r in range(q_len):
            # -- registers <- SRAM: this thread's columns of row r of M
            for bb in range(TN):
                kv = tx + bb * TX
                mreg[bb] = ZERO
                if kv < kv_len and allowed(b, h, q0 + r, k0 + kv):
                    mreg[bb] = smm[offm + r * BC + kv]
                    inc(cnt, s_m, 1)
            # -- acc += m x on the register tile, one X element at a time
            for c in range(DCQ):
                col = ty + c * TY
                if col < D:
                    x = to_f32(smx[offx + r * D + col])
                    inc(cnt, s_x, 1)
                    for bb in range(TN):
                        if mreg[bb] != ZERO:  # a weight of 0 contributes nothing, even times NaN or inf
                            acc[bb, c] = cuda.fma(mreg[bb], x, acc[bb, c])

    return SimpleNamespace(DCQ=DCQ, ptx_tile=ptx_tile, IN=IN, to_f32=to_f32, from_f32=from_f32,
        BR=BR, BC=BC, TM=TM, TN=TN, TY=TY, TX=TX, NT=NT, D=D, DC=DC,
        COUNT_IO=COUNT_IO, CAUSAL=CAUSAL, HAS_MASK=HAS_MASK, HAS_MOD=HAS_MOD, modded=modded, mod_grad=mod_grad,
        count_mod=count_mod, mask_ok=mask_ok, tile_visited=tile_visited,
        CNT_LEN=CNT_LEN, inc=inc, zero_counter=zero_counter, flush=flush, nan_max=nan_max, allowed=allowed, n_allowed=n_allowed,
        load_rows=load_rows, s_tile=s_tile, pv_tile=pv_tile, thread_yx=thread_yx, batch_head=batch_head,
        kv_head=kv_head, store_s=store_s, s_row_max=s_row_max, s_row_exp=s_row_exp, load_allowed=load_allowed, store_rows=store_rows,
    )
