"""flash2's fast backward for 16-bit inputs (``Schedule(math="f16")``): FlashAttention-2's
backward with all five products of a tile on the 16-bit tensor cores (kernels/mma16.py's
m16n8k16, fp16 or bf16 operands, fp32 accumulators), P and dS rounded to the inputs' type where
they become A operands, as FlashAttention-2 computes them.

Same schedule, same kernels and the same HBM traffic as the counting backward
(kernels/backward.py) and the 3xTF32 fast backward (kernels/backward_tc.py): D = rowsum(dO ∘ O)
first (the 3xTF32 backward's ``d`` kernel: its loads in whole sectors), then

    dkdv: one thread block per (K/V block j, batch·head), a warp per 16 keys (Bc / 16 warps);
          K_j, V_j -> SRAM once; for each Q block i (causal: from the first with a query >= the
          block's first key): Q_i, dO_i, L_i, D_i -> SRAM (one stage; block i + 1 loads into the
          other while block i is computed), and per chunk of up to 32 queries (causal: but a chunk
          wholly before the block's first key, which Br > Bc can give)
              Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ          (fp32 accumulators, interleaved)
              Pᵀ = exp2(Sᵀ·scale·log2 e - L·log2 e),  dSᵀ = Pᵀ ∘ (dPᵀ - D)       (fp32)
              dV_j += Pᵀ dO_i,  dK_j += dSᵀ Q_i     (Pᵀ, dSᵀ rounded to 16 bits, in registers)
          dK_j = scale·dK_j, dV_j -> HBM in the input dtype
    dq:   one thread block per (Q block i, batch·head), a warp per 16 queries (Br / 16 warps);
          Q_i, dO_i -> registers once (the A fragments of S and dP), L_i, D_i in registers; for
          each K/V block j (causal: up to the block's last query): K_j, V_j -> SRAM (two stages,
          as dkdv's Q_i), and per chunk of up to 32 keys (causal: but a chunk wholly after the
          block's last query, which Bc > Br can give)
              S = Q_i K_jᵀ and dP = dO_i V_jᵀ,  P = exp2(S·scale·log2 e - L·log2 e),
              dS = P ∘ (dP - D),  dQ_i += dS K_j     (dS rounded to 16 bits, in registers)
          dQ_i = scale·dQ_i -> HBM in the input dtype

Both kernels are one source (``_make``): a *resident* pair of tiles (rows owned by the block's
warps, 16 each: K_j, V_j in dkdv, Q_i, dO_i in dq) and a *streamed* pair (the other side's
blocks, loaded in turn: Q_i, dO_i in dkdv, K_j, V_j in dq).

**Operands.** The m16n8k16 product reads A and B as 16-bit pairs, two to a 32-bit word (the
module docstring of kernels/mma16.py): A's pairs run along k in a row, B's along k in a column.
q, k, v, do and the gradients are viewed as uint32 (two values along d per word), and so is
SRAM, which holds every tile as it is in HBM, row by row, copied by ``cp.async`` (16 bytes a
thread, without passing through registers). Every fragment comes from those raw tiles by
``ldmatrix.x4`` (kernels/mma16.py): the A fragments of K_j and V_j (dkdv's first products) as
they are; the B fragments of the first products (k = d: Q_i and dO_i rows in dkdv, K_j and V_j
rows in dq) as they are, two 8-row groups per instruction; and the B fragments of the second
products (k = the streamed rows: dV_j += Pᵀ dO_i, dK_j += dSᵀ Q_i, dQ_i += dS K_j) transposed
(``.trans``), two 8-column groups per instruction. Each tile is read from HBM once.

**The accumulator is the next A fragment.** Pᵀ's (dSᵀ's, dS's) accumulators of lane (g, t) for
the 8-column groups 2c and 2c + 1 are the A fragment of the next product's k16 step c once each
pair is packed into one register (``pack``: two fp32 rounded to nearest even), as in the
forward. P and dS are formed in fp32 (dS from the unrounded P) and rounded once, there.

**Shared layout and bank conflicts.** Rows of d/2 words at the stride ``tile_stride(d/2)`` =
d/2 + 4 (kernels/flash2_tc16.py's: an ldmatrix tile's 8 rows of 16 bytes on distinct banks). On the
H200 this layout ran 2.1–2.6× the speed of the one it replaced, which loaded through registers and
stored each streamed tile twice (as rows, and transposed into pairs of rows) for 8-byte fragment
loads (BENCHMARKS.md, "16-bit tensor cores: flash2's fast backward").

**Deterministic.** Every output element is written once, by one thread, summing in a fixed order;
no atomics: the same inputs give bit-identical gradients.

**Range.** P ≤ 1 fits either type; dS is rounded to the input type as FlashAttention-2 rounds
it, so with fp16 inputs a |dS| beyond 65504 becomes inf.

The thread layout is fixed by the blocks (``threads``): 2·Bc threads for dkdv, 2·Br for dq (and
the schedule's for ``d``). Registers per thread at d = 128: dkdv holds dK_j's and dV_j's
accumulators (d/2 each) and a chunk's Sᵀ and dPᵀ (16 each), with K_j's and V_j's A fragments read
from SRAM per k16 step; dq holds Q_i's and dO_i's A fragments (d/4 each), dQ_i's accumulators
(d/2) and a chunk's S and dP (16 each): both under the 255-register cap with no local memory (the gpu test
``test_compiles_without_spills_at_d128`` holds them to it).
"""

import numpy as np
from numba import cuda, float32, uint32, uint64

from kernels.backward_tc import make_d
from kernels.flash2_common import refusal
from kernels.flash2_tc16 import dtype_refusal as forward_dtype_refusal
from kernels.flash2_tc16 import tile_stride
from kernels.mma import exp2
from kernels.mma16 import (XCH16_PER_THREAD, cp_async_commit, cp_async_wait, cp_async_wait_but_one, ldsm,
                            ldsm_t, products, row_copier)
from kernels.tiles import LOG2E, ZERO, COUNTERS, array_type, inline_device
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import MAX_HEAD_DIM, MAX_THREADS

#: Bytes to which an input array's first element must be aligned: its tiles are copied by cp.async
#: in 16-byte words (kernels/launch.py, ``check_alignment``, refuses others with the reason).
ALIGNMENT = 16

#: Streamed rows a warp's S and dP accumulators cover at once (16 accumulators per thread beside dK's
#: and dV's; dkdv and dq stay under 255 registers at d = 128).
CHUNK = 32


def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the 16-bit fast backward cannot run this (a string), or None when it can: flash2 with
    ``math="f16"``, no counters, no mask, Br and Bc multiples of 16 (a warp per 16 rows on both
    sides, the k16 steps over either), d a multiple of 16. Its input dtypes are :data:`kernels.flash2_tc16.DTYPES`
    (``dtype_refusal``)."""
    s = schedule
    why = refusal(s, count_io, mask, "16-bit fast backward", "f16")
    if why is not None:
        return why
    if s.block_q % 16 or s.block_kv % 16:
        return f"Br={s.block_q}, Bc={s.block_kv} (the fast backward needs both multiples of 16)"
    if 2 * max(s.block_q, s.block_kv) > MAX_THREADS:
        return (f"Br={s.block_q}, Bc={s.block_kv} (a warp per 16 rows: {2 * max(s.block_q, s.block_kv)} threads, "
                f"over CUDA's {MAX_THREADS} per block)")
    if head_dim % 16:
        return f"head_dim={head_dim} (needs a multiple of 16)"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim={head_dim} (the largest supported is {MAX_HEAD_DIM})"
    if smem_bytes(s, head_dim) > s.sram_bytes:
        return (f"it needs {smem_bytes(s, head_dim)} bytes of SRAM at d={head_dim}, "
                f"the schedule's sram_bytes={s.sram_bytes}")
    return None


def dtype_refusal(dtype):
    """Why inputs of ``dtype`` cannot take this build (a string), or None for fp16 and bf16."""
    return forward_dtype_refusal(dtype, "the 16-bit fast backward")


def _layout(schedule, head_dim, phase):
    """(resident rows R, streamed rows C, row stride in words) of ``phase``."""
    dkdv = phase == "dkdv"
    r = schedule.block_kv if dkdv else schedule.block_q
    c = schedule.block_q if dkdv else schedule.block_kv
    return r, c, tile_stride(head_dim // 2)


def smem_bytes(schedule, head_dim, phase=None):
    """Dynamic shared memory of ``phase`` ("dkdv", "dq"; None: the larger), uint32 words of 4 bytes,
    rows at the stride ``tile_stride(d/2)``: dkdv K_j and V_j, and two stages of Q_i, dO_i, L_i and
    D_i (fp32 per query); dq two stages of K_j and V_j."""
    sizes = {"d": 0}
    r, c, rs = _layout(schedule, head_dim, "dkdv")
    sizes["dkdv"] = 4 * (2 * r * rs + 2 * (2 * c * rs + 2 * c))
    r, c, rs = _layout(schedule, head_dim, "dq")
    sizes["dq"] = 4 * 2 * 2 * c * rs
    return max(sizes.values()) if phase is None else sizes[phase]


def threads(schedule, phase, head_dim=None, dtype=None, masked=False):
    """Threads per block of ``phase``: a warp per 16 resident rows (whatever the head dim, dtype and mask)."""
    if phase == "dkdv":
        return 2 * schedule.block_kv
    if phase == "dq":
        return 2 * schedule.block_q
    return schedule.threads


def min_blocks_per_sm(schedule, head_dim):
    """1: a block's threads may take up to 255 registers each (dK and dV take d/2 each in dkdv)."""
    return 1


def phases(dtype):
    """The fast backward's kernels, in launch order, with the counting backward's arguments (the
    kernels view the 16-bit arrays as uint32)."""
    IN4, F3, C = array_type(dtype, 4), array_type(np.float32, 3), COUNTERS
    return {
        "d": (make_d, (IN4, IN4, F3, C)),
        "dkdv": (make_dkdv, (IN4, IN4, IN4, IN4, F3, F3, IN4, IN4, float32, C)),
        "dq": (make_dq, (IN4, IN4, IN4, IN4, F3, F3, IN4, float32, C)),
    }


def make_dkdv(schedule, head_dim, dtype, count_io, causal, mask=None):
    """kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters); grid (Tc, B·H)."""
    return _make(schedule, head_dim, dtype, count_io, causal, mask, "dkdv")


def make_dq(schedule, head_dim, dtype, count_io, causal, mask=None):
    """kernel(q, k, v, do, lse, dvec, dq, scale, counters); grid (Tr, B·H)."""
    return _make(schedule, head_dim, dtype, count_io, causal, mask, "dq")


def _make(schedule, head_dim, dtype, count_io, causal, mask, phase):
    why = eligible(schedule, head_dim, count_io, mask) or dtype_refusal(dtype)
    if why is not None:
        raise ValueError(f"the 16-bit fast backward cannot run {schedule} at d={head_dim}: {why}")
    mma, pack = products(dtype)
    DKDV = phase == "dkdv"
    D, CAUSAL = head_dim, bool(causal)
    R, C, SD = _layout(schedule, head_dim, phase)  # resident rows (a warp per 16), streamed rows per block
    CH = CHUNK if C % CHUNK == 0 else 16  # streamed rows per chunk of the products
    NS, KC = CH // 8, CH // 16  # 8-row groups of a chunk (S's n); its k16 steps (the second products' k)
    KD, ND = D // 16, D // 8  # k16 steps over d (S's k); 8-column groups of d (the gradients' n)
    DP = D // 2  # words per row
    NT = 2 * R
    RS = SD  # the row stride of every tile (words)
    if DKDV:  # K_j, V_j resident; per stage Q_i, dO_i rows, then L_i·log2 e, D_i (fp32)
        XA, XB = 0, R * RS
        S0 = 2 * R * RS  # stage 0
        YB = C * RS  # dO_i's offset in a stage
        OL = 2 * C * RS  # L_i's offset in a stage
        OD = OL + C
        STAGE = 2 * C * RS + 2 * C
    else:  # per stage K_j, V_j rows
        S0 = 0
        YB = C * RS
        STAGE = 2 * C * RS
    n_smem = smem_bytes(schedule, head_dim, phase)
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH16_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange

    # Indices are uint64 (every constant too), as in kernels/flash2_tc16.py: a signed index gets a
    # negative-index fix-up per access, which keeps the compiler from folding a thread's shared
    # loads into one base address plus constant offsets.

    # rows × d of a head's (N, d/2) uint32 view -> SRAM at a base (stride RS), by cp.async (not committed)
    copy_resident, copy_streamed = row_copier(R, DP, RS, NT), row_copier(C, DP, RS, NT)

    @inline_device
    def second_products(sm, xch, tid, cq, a, ybase, acc):
        """acc += A Y over the chunk's k16 steps: A the chunk's fp32 accumulator ``a`` packed to 16
        bits (groups 2c, 2c + 1: step c), Y the streamed tile's rows cq .. cq + CH at ``ybase`` (B[k, n]
        = Y[cq + k, n]): one ldmatrix.x4.trans gives b0, b1 of two 8-column groups."""
        lane = uint64(tid % 32)
        y_lane = ybase + uint64(cq * RS) + ((lane // uint64(8)) % uint64(2) * uint64(8) + lane % uint64(8)) * uint64(RS) \
            + uint64(4) * (lane // uint64(16))
        for c in range(KC):
            a0 = pack(a[2 * c, 0], a[2 * c, 1])
            a1 = pack(a[2 * c, 2], a[2 * c, 3])
            a2 = pack(a[2 * c + 1, 0], a[2 * c + 1, 1])
            a3 = pack(a[2 * c + 1, 2], a[2 * c + 1, 3])
            for n2 in range(ND // 2):
                b0, b1, b2, b3 = ldsm_t(sm, xch, tid, y_lane + uint64(16 * c * RS + 8 * n2))
                acc[2 * n2, 0], acc[2 * n2, 1], acc[2 * n2, 2], acc[2 * n2, 3] = mma(
                    xch, tid, a0, a1, a2, a3, b0, b1, acc[2 * n2, 0], acc[2 * n2, 1], acc[2 * n2, 2], acc[2 * n2, 3])
                acc[2 * n2 + 1, 0], acc[2 * n2 + 1, 1], acc[2 * n2 + 1, 2], acc[2 * n2 + 1, 3] = mma(
                    xch, tid, a0, a1, a2, a3, b2, b3, acc[2 * n2 + 1, 0], acc[2 * n2 + 1, 1], acc[2 * n2 + 1, 2],
                    acc[2 * n2 + 1, 3])

    @inline_device
    def first_products(sm, xch, tid, xa, xb, cq, ya, yb, s, dp, qf, of):
        """s = X_A Y_Aᵀ and dp = X_B Y_Bᵀ over d for the chunk's streamed rows cq .. cq + CH (tiles at
        ``ya``, ``yb``): the A fragments from the resident tiles at ``xa``, ``xb`` (one ldmatrix.x4
        each per k16 step, the warp's 16 rows), or, with xa < 0, from ``qf`` and ``of`` in registers;
        one ldmatrix.x4 gives the B fragments of two 8-row groups."""
        lane = uint64(tid % 32)
        ra = uint64(16 * (tid // 32))
        # A: tiles rows +0..7 / +8..15 (l // 8 odd), words +0 / +4 (l >= 16): a0, a1, a2, a3
        a_lane = (ra + (lane // uint64(8)) % uint64(2) * uint64(8) + lane % uint64(8)) * uint64(RS) \
            + uint64(4) * (lane // uint64(16))
        # B: tiles rows 8·(l // 16) + 0..7, words +0 / +4 ((l // 8) odd): b0, b1 of two row groups
        b_lane = (uint64(cq) + uint64(8) * (lane // uint64(16)) + lane % uint64(8)) * uint64(RS) \
            + uint64(4) * ((lane // uint64(8)) % uint64(2))
        for n in range(NS):
            for e in range(4):
                s[n, e] = ZERO
                dp[n, e] = ZERO
        for kk in range(KD):
            if DKDV:
                qf[0, 0], qf[0, 1], qf[0, 2], qf[0, 3] = ldsm(sm, xch, tid, uint64(xa) + a_lane + uint64(8 * kk))
                of[0, 0], of[0, 1], of[0, 2], of[0, 3] = ldsm(sm, xch, tid, uint64(xb) + a_lane + uint64(8 * kk))
                ka = 0
            else:
                ka = kk
            for n2 in range(NS // 2):
                at = b_lane + uint64(16 * n2 * RS + 8 * kk)
                b0, b1, b2, b3 = ldsm(sm, xch, tid, uint64(ya) + at)
                s[2 * n2, 0], s[2 * n2, 1], s[2 * n2, 2], s[2 * n2, 3] = mma(
                    xch, tid, qf[ka, 0], qf[ka, 1], qf[ka, 2], qf[ka, 3], b0, b1,
                    s[2 * n2, 0], s[2 * n2, 1], s[2 * n2, 2], s[2 * n2, 3])
                s[2 * n2 + 1, 0], s[2 * n2 + 1, 1], s[2 * n2 + 1, 2], s[2 * n2 + 1, 3] = mma(
                    xch, tid, qf[ka, 0], qf[ka, 1], qf[ka, 2], qf[ka, 3], b2, b3,
                    s[2 * n2 + 1, 0], s[2 * n2 + 1, 1], s[2 * n2 + 1, 2], s[2 * n2 + 1, 3])
                b0, b1, b2, b3 = ldsm(sm, xch, tid, uint64(yb) + at)
                dp[2 * n2, 0], dp[2 * n2, 1], dp[2 * n2, 2], dp[2 * n2, 3] = mma(
                    xch, tid, of[ka, 0], of[ka, 1], of[ka, 2], of[ka, 3], b0, b1,
                    dp[2 * n2, 0], dp[2 * n2, 1], dp[2 * n2, 2], dp[2 * n2, 3])
                dp[2 * n2 + 1, 0], dp[2 * n2 + 1, 1], dp[2 * n2 + 1, 2], dp[2 * n2 + 1, 3] = mma(
                    xch, tid, of[ka, 0], of[ka, 1], of[ka, 2], of[ka, 3], b2, b3,
                    dp[2 * n2 + 1, 0], dp[2 * n2 + 1, 1], dp[2 * n2 + 1, 2], dp[2 * n2 + 1, 3])

    @inline_device
    def store(xh, row0, n_valid, ra, acc, factor, tid):
        """The warp's rows of acc·factor -> xh (a head's uint32 view), rows below n_valid: columns
        8nn + 2t, 8nn + 2t + 1 packed into word 4nn + t."""
        g = (tid % 32) // 4
        tq = uint64(tid % 4)
        for i in range(2):
            r = ra + g + 8 * i
            if r < n_valid:
                for nn in range(ND):
                    xh[uint64(row0 + r), uint64(4 * nn) + tq] = pack(acc[nn, 2 * i] * factor,
                                                                     acc[nn, 2 * i + 1] * factor)

    if DKDV:

        def kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters):
            if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or do.shape[3] != D:
                return  # (never: the launcher checks; this tells the compiler the row length is D)
            tid = cuda.threadIdx.x
            ra = 16 * (tid // 32)  # the warp's first key in the block
            g = (tid % 32) // 4
            tq = tid % 4
            bh = cuda.blockIdx.y
            n_heads = q.shape[1]
            b = bh // n_heads
            h = bh - b * n_heads
            n_q = q.shape[2]
            n_kv = k.shape[2]
            k0 = cuda.blockIdx.x * R
            kv_len = min(R, n_kv - k0)
            qh = q.view(np.uint32)[b, h]  # (N, d/2): two 16-bit values per word
            kh = k.view(np.uint32)[b, h]
            vh = v.view(np.uint32)[b, h]
            doh = do.view(np.uint32)[b, h]
            sm = cuda.shared.array(0, uint32, alignment=ALIGN)
            smf = cuda.shared.array(0, float32, alignment=ALIGN)  # (the same memory: L_i, D_i)
            xch = cuda.shared.array(NX, uint32)  # the simulator's warp exchange (unused on the GPU)
            s2 = scale * LOG2E
            acc_v = cuda.local.array((ND, 4), float32)
            acc_k = cuda.local.array((ND, 4), float32)
            s = cuda.local.array((NS, 4), float32)
            dp = cuda.local.array((NS, 4), float32)
            kf = cuda.local.array((1, 4), uint32)  # K_j's A fragment of one k16 step
            vf = cuda.local.array((1, 4), uint32)  # V_j's
            for nn in range(ND):
                for i in range(4):
                    acc_v[nn, i] = ZERO
                    acc_k[nn, i] = ZERO
            i0 = 0
            if CAUSAL:  # earlier Q blocks see none of these keys
                i0 = k0 // C
            n_blocks = (n_q + C - 1) // C
            copy_resident(kh, k0, kv_len, sm, uint64(XA), tid)
            copy_resident(vh, k0, kv_len, sm, uint64(XB), tid)
            cp_async_commit()
            for i in range(i0, n_blocks + 1):
                # stage (i - i0) % 2 holds Q_i, dO_i, L_i, D_i; block i + 1 fills the other while i is computed
                if i < n_blocks:
                    q0 = i * C
                    base = uint64(S0 + ((i - i0) % 2) * STAGE)
                    q_len = min(C, n_q - q0)
                    copy_streamed(qh, q0, q_len, sm, base, tid)
                    copy_streamed(doh, q0, q_len, sm, base + uint64(YB), tid)
                    cp_async_commit()
                    for r in range(tid, C, NT):
                        lv = ZERO
                        dv_ = ZERO
                        if r < q_len:
                            lv = lse[b, h, q0 + r] * LOG2E
                            dv_ = dvec[b, h, q0 + r]
                        smf[base + uint64(OL + r)] = lv
                        smf[base + uint64(OD + r)] = dv_
                if i == i0:
                    continue
                ic = i - 1  # the block computed now
                q0 = ic * C
                q_len = min(C, n_q - q0)
                base = uint64(S0 + ((ic - i0) % 2) * STAGE)
                # block ic's copies (and K_j, V_j's) have landed: wait for all but the newest group,
                # then the barrier makes everyone's visible
                if i < n_blocks:
                    cp_async_wait_but_one()
                else:
                    cp_async_wait()
                cuda.syncthreads()
                edge = q_len < C or (CAUSAL and q0 < k0 + R - 1)  # entries to mask (block-uniform)
                for ci in range(C // CH):
                    cq = ci * CH  # the chunk's first query in the block
                    if CAUSAL and q0 + cq + CH - 1 < k0:  # no key of the block sees these queries
                        continue
                    # -- Sᵀ = K_j Q_iᵀ, dPᵀ = V_j dO_iᵀ
                    first_products(sm, xch, tid, XA, XB, cq, base, base + uint64(YB), s, dp, kf, vf)
                    # -- Pᵀ, dSᵀ in fp32: key k0 + ra + g (+8 for e >= 2), query q0 + cq + 8n + 2t (+1 for odd e)
                    for n in range(NS):
                        for e in range(4):
                            col = cq + 8 * n + 2 * tq + (e % 2)  # the query, in the block
                            p = exp2(s[n, e] * s2 - smf[base + uint64(OL + col)])
                            if edge:
                                if col >= q_len or (CAUSAL and k0 + ra + g + 8 * (e // 2) > q0 + col):
                                    p = ZERO
                            s[n, e] = p
                            dp[n, e] = p * (dp[n, e] - smf[base + uint64(OD + col)])
                    second_products(sm, xch, tid, cq, s, base + uint64(YB), acc_v)  # dV_j += Pᵀ dO_i
                    second_products(sm, xch, tid, cq, dp, base, acc_k)  # dK_j += dSᵀ Q_i
                # barrier: every thread is done with this stage before block ic + 2 fills it
                cuda.syncthreads()
            cp_async_wait()  # (K_j, V_j's copies, where no Q block sees these keys)
            store(dv.view(np.uint32)[b, h], k0, kv_len, ra, acc_v, float32(1.0), tid)
            store(dk.view(np.uint32)[b, h], k0, kv_len, ra, acc_k, scale, tid)

        def grid(problem):
            return ((problem.n_kv + R - 1) // R, problem.bh)

    else:

        def kernel(q, k, v, do, lse, dvec, dq, scale, counters):
            if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or do.shape[3] != D:
                return
            tid = cuda.threadIdx.x
            ra = 16 * (tid // 32)  # the warp's first query in the block
            g = (tid % 32) // 4
            tq = tid % 4
            bh = cuda.blockIdx.y
            n_heads = q.shape[1]
            b = bh // n_heads
            h = bh - b * n_heads
            n_q = q.shape[2]
            n_kv = k.shape[2]
            qb = cuda.blockIdx.x
            if CAUSAL:  # the longest blocks (most keys) first
                qb = cuda.gridDim.x - 1 - qb
            q0 = qb * R
            q_len = min(R, n_q - q0)
            qh = q.view(np.uint32)[b, h]
            kh = k.view(np.uint32)[b, h]
            vh = v.view(np.uint32)[b, h]
            doh = do.view(np.uint32)[b, h]
            sm = cuda.shared.array(0, uint32, alignment=ALIGN)
            xch = cuda.shared.array(NX, uint32)
            s2 = scale * LOG2E
            qf = cuda.local.array((KD, 4), uint32)  # Q_i's A fragments, for the whole K/V loop
            of = cuda.local.array((KD, 4), uint32)  # dO_i's
            acc = cuda.local.array((ND, 4), float32)
            s = cuda.local.array((NS, 4), float32)
            dp = cuda.local.array((NS, 4), float32)
            l2 = cuda.local.array(2, float32)
            dd = cuda.local.array(2, float32)
            for nn in range(ND):
                for i in range(4):
                    acc[nn, i] = ZERO
            kv_end = n_kv
            if CAUSAL:  # later blocks are fully masked: skipped
                kv_end = min(n_kv, q0 + q_len)
            n_blocks = (kv_end + C - 1) // C
            copy_streamed(kh, 0, min(C, n_kv), sm, uint64(S0), tid)  # K_0, V_0 -> stage 0, while Q is read
            copy_streamed(vh, 0, min(C, n_kv), sm, uint64(S0 + YB), tid)
            cp_async_commit()
            r_lo = ra + g  # the thread's two rows in the block
            r_hi = r_lo + 8
            for kk in range(KD):  # a0 = Q[r_lo, 16kk + 2t : +2], a1 its row r_hi, a2, a3 eight columns on
                col = uint64(8 * kk + tq)
                for i in range(4):
                    qf[kk, i] = uint32(0)
                    of[kk, i] = uint32(0)
                if r_lo < q_len:
                    qf[kk, 0] = qh[uint64(q0 + r_lo), col]
                    qf[kk, 2] = qh[uint64(q0 + r_lo), col + uint64(4)]
                    of[kk, 0] = doh[uint64(q0 + r_lo), col]
                    of[kk, 2] = doh[uint64(q0 + r_lo), col + uint64(4)]
                if r_hi < q_len:
                    qf[kk, 1] = qh[uint64(q0 + r_hi), col]
                    qf[kk, 3] = qh[uint64(q0 + r_hi), col + uint64(4)]
                    of[kk, 1] = doh[uint64(q0 + r_hi), col]
                    of[kk, 3] = doh[uint64(q0 + r_hi), col + uint64(4)]
            for i in range(2):
                r = r_lo + 8 * i
                l2[i] = ZERO
                dd[i] = ZERO
                if r < q_len:
                    l2[i] = lse[b, h, q0 + r] * LOG2E
                    dd[i] = dvec[b, h, q0 + r]
            for j in range(n_blocks):
                k0 = j * C
                kv_len = min(C, n_kv - k0)
                base = uint64(S0 + (j % 2) * STAGE)
                # K_j, V_j have landed (this thread's copies; after the barrier everyone's), and every
                # thread is done with block j - 1, whose stage K_{j+1}, V_{j+1} now fill
                cp_async_wait()
                cuda.syncthreads()
                if j + 1 < n_blocks:
                    k1 = k0 + C
                    nb = uint64(S0 + ((j + 1) % 2) * STAGE)
                    copy_streamed(kh, k1, min(C, n_kv - k1), sm, nb, tid)
                    copy_streamed(vh, k1, min(C, n_kv - k1), sm, nb + uint64(YB), tid)
                    cp_async_commit()
                edge = kv_len < C or (CAUSAL and k0 + C - 1 > q0)  # entries to mask (block-uniform)
                for ci in range(C // CH):
                    cq = ci * CH  # the chunk's first key in the block
                    if CAUSAL and k0 + cq > q0 + q_len - 1:  # no query of the block sees these keys
                        continue
                    # -- S = Q_i K_jᵀ, dP = dO_i V_jᵀ
                    first_products(sm, xch, tid, -1, -1, cq, base, base + uint64(YB), s, dp, qf, of)
                    # -- P, dS in fp32: query q0 + ra + g (+8 for e >= 2), key k0 + cq + 8n + 2t (+1 for odd e)
                    for n in range(NS):
                        for e in range(4):
                            col = cq + 8 * n + 2 * tq + (e % 2)  # the key, in the block
                            p = exp2(s[n, e] * s2 - l2[e // 2])
                            if edge:
                                if col >= kv_len or (CAUSAL and k0 + col > q0 + r_lo + 8 * (e // 2)):
                                    p = ZERO
                            dp[n, e] = p * (dp[n, e] - dd[e // 2])
                    second_products(sm, xch, tid, cq, dp, base, acc)  # dQ_i += dS K_j
            store(dq.view(np.uint32)[b, h], q0, q_len, ra, acc, scale, tid)

        def grid(problem):
            return ((problem.n_q + R - 1) // R, problem.bh)

    return kernel, n_smem, grid
