"""flash2's fast backward for 16-bit inputs (``Schedule(math="f16")``): FlashAttention-2's
backward with all five products of a tile on the 16-bit tensor cores (kernels/mma16.py's
m16n8k16, fp16 or bf16 operands, fp32 accumulators), P and dS rounded to the inputs' type where
they become A operands, as FlashAttention-2 computes them.

Same schedule, same kernels and the same HBM traffic as the counting backward
(kernels/backward.py) and the 3xTF32 fast backward (kernels/backward_tc.py): D = rowsum(dO ∘ O)
first (the counting build's ``d`` kernel), then

    dkdv: one thread block per (K/V block j, batch·head), a warp per 16 keys (Bc / 16 warps);
          K_j, V_j -> SRAM once; for each Q block i (causal: from the first with a query >= the
          block's first key): Q_i, dO_i -> SRAM twice (rows, and paired along queries: below),
          L_i, D_i -> SRAM, and per chunk of up to 32 queries (causal: but a chunk wholly before the
          block's first key, which Br > Bc can give)
              Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ          (fp32 accumulators, interleaved)
              Pᵀ = exp2(Sᵀ·scale·log2 e - L·log2 e),  dSᵀ = Pᵀ ∘ (dPᵀ - D)       (fp32)
              dV_j += Pᵀ dO_i,  dK_j += dSᵀ Q_i     (Pᵀ, dSᵀ rounded to 16 bits, in registers)
          dK_j = scale·dK_j, dV_j -> HBM in the input dtype
    dq:   one thread block per (Q block i, batch·head), a warp per 16 queries (Br / 16 warps);
          Q_i, dO_i -> registers once (the A fragments of S and dP), L_i, D_i in registers; for
          each K/V block j (causal: up to the block's last query): K_j -> SRAM twice (rows, and
          paired along keys), V_j -> SRAM (rows), and per chunk of up to 32 keys (causal: but a
          chunk wholly after the block's last query, which Bc > Br can give)
              S = Q_i K_jᵀ and dP = dO_i V_jᵀ,  P = exp2(S·scale·log2 e - L·log2 e),
              dS = P ∘ (dP - D),  dQ_i += dS K_j     (dS rounded to 16 bits, in registers)
          dQ_i = scale·dQ_i -> HBM in the input dtype

Both kernels are one source (``_make``): a *resident* pair of tiles (rows owned by the block's
warps, 16 each: K_j, V_j in dkdv, Q_i, dO_i in dq) and a *streamed* pair (the other side's
blocks, loaded in turn: Q_i, dO_i in dkdv, K_j, V_j in dq).

**Operands.** The m16n8k16 product reads A and B as 16-bit pairs, two to a 32-bit word (the
module docstring of kernels/mma16.py): A's pairs run along k in a row, B's along k in a column.
q, k, v, do and the gradients are viewed as uint32 (two values along d per word), and so is
SRAM. Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ (dkdv), S = Q_i K_jᵀ and dP = dO_i V_jᵀ (dq) have k = d:
the A fragments are words of the resident rows, the B fragments words of the streamed rows, as
stored. dV_j += Pᵀ dO_i and dK_j += dSᵀ Q_i (dkdv), dQ_i += dS K_j (dq) have k = the streamed
rows: their B operand needs pairs of two streamed rows in one column of d. The loader stores
those tiles a second time, transposed into pairs: Xt[c][p] holds X[2p, c] in its low half and
X[2p + 1, c] in its high half (from words w = c // 2 of rows 2p and 2p + 1, by 16-bit shifts and
masks, as kernels/flash2_tc16.py pairs V). Each tile is read from HBM once.

**The accumulator is the next A fragment.** Pᵀ's (dSᵀ's, dS's) accumulators of lane (g, t) for
the 8-column groups 2c and 2c + 1 are the A fragment of the next product's k16 step c once each
pair is packed into one register (``pack``: two fp32 rounded to nearest even), as in the
forward. P and dS are formed in fp32 (dS from the unrounded P) and rounded once, there.

**Shared layouts and bank conflicts.** Rows of d/2 words at a stride of SD = row_stride(d/2)
words, pair tiles [d][C/2 words] at ST = row_stride(C/2), both ≡ 8 mod 16 (``row_stride``), and in every 8 words of a row words j and j + 4 side by side
(``slot``): every fragment, A or B, is words t and t + 4 of an 8-word group of rows g (and g + 8),
one 8-byte load per lane (``pair``: through a uint64 view of the same memory, so that the load is
8 bytes wide whatever the compiler can prove of the index's alignment); a half-warp reads rows g = 0..3 (or 4..7), 8 consecutive words each,
on banks (g·s + 0..7 + const) mod 32, distinct for s ≡ 8 mod 16: no conflicts. The loader
(``loader``) gives a warp's 32 lanes 64 items (pair p, word w) of an 8-pair × 8-word square in
two instructions: lane l takes w = l % 8 and p = l // 8 + 4·((w // 4) xor half), so words 0..3
go with pairs 0..3 and words 4..7 with pairs 4..7 (then the other way round). It writes each
word four times: rows 2p + h and 2p + 1 - h with h = (p // 2) % 2, and pair rows 2w + h' and
2w + 1 - h' with h' = (w // 2) % 2. Within an instruction those rows are r ≡ 0, 2, 5, 7 mod 8
(r·s mod 32: four distinct multiples of 8 for s ≡ 8 mod 16) and the 16 lanes on each such set of
rows take even slots (w or p in 0..3) or odd ones (4..7): 32 distinct banks, every store
conflict-free. Its global loads read 16 bytes of 8 rows each (the other 16 bytes of each 32-byte
sector by the square's other instruction).

**Deterministic.** Every output element is written once, by one thread, summing in a fixed order;
no atomics: the same inputs give bit-identical gradients.

**Range.** P ≤ 1 fits either type; dS is rounded to the input type as FlashAttention-2 rounds
it, so with fp16 inputs a |dS| beyond 65504 becomes inf.

The thread layout is fixed by the blocks (``threads``): 2·Bc threads for dkdv, 2·Br for dq (and
the schedule's for ``d``). Registers per thread at d = 128: dkdv holds dK_j's and dV_j's
accumulators (d/2 each) and a chunk's Sᵀ and dPᵀ (16 each), with K_j, V_j read from SRAM per
chunk; dq holds Q_i's and dO_i's A fragments (d/4 each), dQ_i's accumulators (d/2) and a chunk's
S and dP (16 each): both under the 255-register cap with no local memory (the gpu test
``test_compiles_without_spills_at_d128`` holds them to it).
"""

import numpy as np
from numba import cuda, float32, uint32, uint64

from kernels import backward as counting_backward
from kernels.flash2_common import refusal
from kernels.flash2_tc16 import dtype_refusal as forward_dtype_refusal
from kernels.mma import exp2
from kernels.mma16 import XCH16_PER_THREAD, products
from kernels.tiles import LOG2E, ZERO, COUNTERS, array_type, inline_device
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import MAX_HEAD_DIM, MAX_THREADS

#: Streamed rows a warp's S and dP accumulators cover at once (16 accumulators per thread beside dK's
#: and dV's; dkdv and dq stay under 255 registers at d = 128).
CHUNK = 32


def row_stride(words):
    """The SRAM row stride (uint32 words) of a row or pair row of ``words`` words (a multiple of 8):
    padded by 8 where needed to make it ≡ 8 mod 16, which puts a half-warp's 8-byte fragment
    loads on distinct banks (the module docstring)."""
    return words + (8 if words % 16 == 0 else 0)


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
    """(resident rows R, streamed rows C, row stride SD, pair-tile stride ST) of ``phase``, in words."""
    dkdv = phase == "dkdv"
    r = schedule.block_kv if dkdv else schedule.block_q
    c = schedule.block_q if dkdv else schedule.block_kv
    return r, c, row_stride(head_dim // 2), row_stride(c // 2)


def smem_bytes(schedule, head_dim, phase=None):
    """Dynamic shared memory of ``phase`` ("dkdv", "dq"; None: the larger), uint32 words of 4 bytes:
    dkdv: K_j, V_j, Q_i, dO_i as rows [·][SD], Q_i, dO_i paired [d][ST], L_i, D_i (fp32 per query);
    dq: K_j, V_j as rows, K_j paired (SD, ST: the module docstring)."""
    sizes = {"d": 0}
    r, c, sd, st = _layout(schedule, head_dim, "dkdv")
    sizes["dkdv"] = 4 * (2 * (r + c) * sd + 2 * head_dim * st + 2 * c)
    r, c, sd, st = _layout(schedule, head_dim, "dq")
    sizes["dq"] = 4 * (2 * c * sd + head_dim * st)
    return max(sizes.values()) if phase is None else sizes[phase]


def threads(schedule, phase):
    """Threads per block of ``phase``: a warp per 16 resident rows."""
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
        "d": (counting_backward.make_d, (IN4, IN4, F3, C)),
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
    R, C, SD, ST = _layout(schedule, head_dim, phase)  # resident rows (a warp per 16), streamed rows per block
    CH = CHUNK if C % CHUNK == 0 else 16  # streamed rows per chunk of the products
    NS, KC = CH // 8, CH // 16  # 8-row groups of a chunk (S's n); its k16 steps (the second products' k)
    KD, ND = D // 16, D // 8  # k16 steps over d (S's k); 8-column groups of d (the gradients' n)
    DP = D // 2  # words per row
    NT = 2 * R
    if DKDV:  # K_j, V_j rows; Q_i, dO_i rows; Q_i, dO_i pairs; L_i·log2 e, D_i
        XA, XB = 0, R * SD
        YA, YB = 2 * R * SD, (2 * R + C) * SD
        TA, TB = 2 * (R + C) * SD, 2 * (R + C) * SD + D * ST
        OL = TB + D * ST
        OD = OL + C
    else:  # K_j rows, V_j rows, K_j pairs
        YA, YB, TA = 0, C * SD, 2 * C * SD
    n_smem = smem_bytes(schedule, head_dim, phase)
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH16_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange
    LO, HI = 0xFFFF, 0xFFFF0000

    # Indices are uint64 (every constant too), as in kernels/flash2_tc16.py: a signed index gets a
    # negative-index fix-up per access, which keeps the compiler from folding a thread's shared
    # loads into one base address plus constant offsets.

    @inline_device
    def slot(w):
        """Where word w of a row is stored: in each group of 8, words j and j + 4 side by side at
        2j, 2j + 1 (j < 4), so that a fragment's two words are one 8-byte load."""
        return (w // uint64(8)) * uint64(8) + (w % uint64(4)) * uint64(2) + (w // uint64(4)) % uint64(2)

    @inline_device
    def pair(sm2, at):
        """Words at and at + 1 of SRAM (at even), a fragment's two registers: one 8-byte load of
        ``sm2``, the same memory viewed as uint64 (the lower word in the low half)."""
        x = sm2[at // uint64(2)]
        return uint32(x & uint64(0xFFFFFFFF)), uint32(x >> uint64(32))

    def loader(rows, paired):
        """load(xh, row0, n_valid, sm, base, tbase, tid): rows × d of xh (a head's (N, d/2) uint32
        view) from row row0 on -> SRAM: rows at ``base`` (stride SD), and with ``paired`` the pair
        tile at ``tbase`` (stride ST); zeros past n_valid rows. Items (pair, word) as the module
        docstring lays them out."""
        ITEMS = (rows // 2) * DP
        IT = -(-ITEMS // NT)
        FULL = ITEMS % NT == 0
        DG = DP // 8  # 8-word groups of a row

        @inline_device
        def load(xh, row0, n_valid, sm, base, tbase, tid):
            u0 = uint64(row0)
            n = uint64(n_valid)
            for it in range(IT):
                e = uint64(tid) + uint64(it * NT)
                if FULL or e < uint64(ITEMS):
                    lane = e % uint64(32)
                    half = (e // uint64(32)) % uint64(2)
                    sq = e // uint64(64)  # the 8 × 8 square
                    wl = lane % uint64(8)
                    pl = lane // uint64(8) + uint64(4) * ((wl // uint64(4)) ^ half)
                    w = (sq % uint64(DG)) * uint64(8) + wl
                    p = (sq // uint64(DG)) * uint64(8) + pl
                    r = uint64(2) * p
                    x0 = uint32(0)
                    x1 = uint32(0)
                    if r < n:
                        x0 = xh[u0 + r, w]
                    if r + uint64(1) < n:
                        x1 = xh[u0 + r + uint64(1), w]
                    # rows 2p + h and 2p + 1 - h (h = (p // 2) % 2: conflict-free, the module docstring)
                    h = (pl // uint64(2)) % uint64(2)
                    at = uint64(base) + slot(w)
                    sm[at + (r + h) * uint64(SD)] = x1 if h else x0
                    sm[at + (r + uint64(1) - h) * uint64(SD)] = x0 if h else x1
                    if paired:  # column 2w: the low halves of rows 2p, 2p + 1; column 2w + 1 the high
                        lo = (x0 & LO) | ((x1 & LO) << 16)
                        hi = (x0 >> 16) | (x1 & HI)
                        h2 = (wl // uint64(2)) % uint64(2)
                        at = uint64(tbase) + slot(p)
                        sm[at + (uint64(2) * w + h2) * uint64(ST)] = hi if h2 else lo
                        sm[at + (uint64(2) * w + uint64(1) - h2) * uint64(ST)] = lo if h2 else hi

        return load

    load_resident = loader(R, False)  # dkdv: K_j, V_j (dq holds Q_i, dO_i in registers)
    load_rows, load_paired = loader(C, False), loader(C, True)

    @inline_device
    def second_products(sm2, xch, tid, ci, a, tbase, acc):
        """acc += A Y over the chunk's k16 steps: A the chunk's fp32 accumulator ``a`` packed to 16
        bits (groups 2c, 2c + 1: step c), Y the streamed tile's pairs at ``tbase``:
        b0 = Yt[8nn + g, ci·CH/2 + 8c + t] (chunk ci), b1 four words on (slots 2t, 2t + 1 of the group)."""
        g = (tid % 32) // 4
        tq = tid % 4
        lane_t = uint64(tbase + g * ST + 2 * tq) + uint64(ci * (CH // 2))
        for c in range(KC):
            a0 = pack(a[2 * c, 0], a[2 * c, 1])
            a1 = pack(a[2 * c, 2], a[2 * c, 3])
            a2 = pack(a[2 * c + 1, 0], a[2 * c + 1, 1])
            a3 = pack(a[2 * c + 1, 2], a[2 * c + 1, 3])
            for nn in range(ND):
                b0, b1 = pair(sm2, lane_t + uint64(8 * nn * ST + 8 * c))
                acc[nn, 0], acc[nn, 1], acc[nn, 2], acc[nn, 3] = mma(
                    xch, tid, a0, a1, a2, a3, b0, b1, acc[nn, 0], acc[nn, 1], acc[nn, 2], acc[nn, 3])

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
            smf = cuda.shared.array(0, float32, alignment=ALIGN)  # (the same memory: L_i, D_i at OL, OD)
            sm2 = cuda.shared.array(0, uint64, alignment=ALIGN)  # (the same memory: fragment pairs)
            xch = cuda.shared.array(NX, uint32)  # the simulator's warp exchange (unused on the GPU)
            s2 = scale * LOG2E
            k_lane = uint64(XA + (ra + g) * SD + 2 * tq)  # the lane's A fragment of K_j: row g, words t, t + 4
            v_lane = uint64(XB + (ra + g) * SD + 2 * tq)  # ... of V_j
            q_lane = uint64(YA + g * SD + 2 * tq)  # the lane's B fragment of a Q_i row: words t, t + 4
            o_lane = uint64(YB + g * SD + 2 * tq)  # ... of a dO_i row
            acc_v = cuda.local.array((ND, 4), float32)
            acc_k = cuda.local.array((ND, 4), float32)
            s = cuda.local.array((NS, 4), float32)
            dp = cuda.local.array((NS, 4), float32)
            for nn in range(ND):
                for i in range(4):
                    acc_v[nn, i] = ZERO
                    acc_k[nn, i] = ZERO
            load_resident(kh, k0, kv_len, sm, XA, 0, tid)
            load_resident(vh, k0, kv_len, sm, XB, 0, tid)
            i0 = 0
            if CAUSAL:  # earlier Q blocks see none of these keys
                i0 = k0 // C
            n_blocks = (n_q + C - 1) // C
            for i in range(i0, n_blocks):
                q0 = i * C
                q_len = min(C, n_q - q0)
                # barrier: every thread is done reading the previous Q_i, dO_i (and K_j, V_j are in SRAM)
                cuda.syncthreads()
                load_paired(qh, q0, q_len, sm, YA, TA, tid)
                load_paired(doh, q0, q_len, sm, YB, TB, tid)
                for r in range(tid, C, NT):
                    lv = ZERO
                    dv_ = ZERO
                    if r < q_len:
                        lv = lse[b, h, q0 + r] * LOG2E
                        dv_ = dvec[b, h, q0 + r]
                    smf[OL + r] = lv
                    smf[OD + r] = dv_
                # barrier: Q_i, dO_i, L_i, D_i are in SRAM
                cuda.syncthreads()
                edge = q_len < C or (CAUSAL and q0 < k0 + R - 1)  # entries to mask (block-uniform)
                for ci in range(C // CH):
                    cq = ci * CH  # the chunk's first query in the block
                    if CAUSAL and q0 + cq + CH - 1 < k0:  # no key of the block sees these queries
                        continue
                    # -- Sᵀ = K_j Q_iᵀ, dPᵀ = V_j dO_iᵀ: a0 = K[ra + g, 16kk + 2t : +2], a2 eight
                    # columns on (one 8-byte load), a1, a3 row g + 8; b0 = Q[cq + 8n + g, 16kk + 2t : +2], b1
                    for n in range(NS):
                        for e in range(4):
                            s[n, e] = ZERO
                            dp[n, e] = ZERO
                    for kk in range(KD):
                        at = k_lane + uint64(8 * kk)
                        ka0, ka2 = pair(sm2, at)
                        ka1, ka3 = pair(sm2, at + uint64(8 * SD))
                        at = v_lane + uint64(8 * kk)
                        va0, va2 = pair(sm2, at)
                        va1, va3 = pair(sm2, at + uint64(8 * SD))
                        for n in range(NS):
                            b0, b1 = pair(sm2, q_lane + uint64((cq + 8 * n) * SD + 8 * kk))
                            s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma(
                                xch, tid, ka0, ka1, ka2, ka3, b0, b1, s[n, 0], s[n, 1], s[n, 2], s[n, 3])
                            b0, b1 = pair(sm2, o_lane + uint64((cq + 8 * n) * SD + 8 * kk))
                            dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3] = mma(
                                xch, tid, va0, va1, va2, va3, b0, b1, dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3])
                    # -- Pᵀ, dSᵀ in fp32: key k0 + ra + g (+8 for e >= 2), query q0 + cq + 8n + 2t (+1 for odd e)
                    for n in range(NS):
                        for e in range(4):
                            col = cq + 8 * n + 2 * tq + (e % 2)  # the query, in the block
                            p = exp2(s[n, e] * s2 - smf[OL + col])
                            if edge:
                                if col >= q_len or (CAUSAL and k0 + ra + g + 8 * (e // 2) > q0 + col):
                                    p = ZERO
                            s[n, e] = p
                            dp[n, e] = p * (dp[n, e] - smf[OD + col])
                    second_products(sm2, xch, tid, ci, s, TB, acc_v)  # dV_j += Pᵀ dO_i
                    second_products(sm2, xch, tid, ci, dp, TA, acc_k)  # dK_j += dSᵀ Q_i
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
            sm2 = cuda.shared.array(0, uint64, alignment=ALIGN)  # (the same memory: fragment pairs)
            xch = cuda.shared.array(NX, uint32)
            s2 = scale * LOG2E
            k_lane = uint64(YA + g * SD + 2 * tq)  # the lane's B fragment of a K_j row: words t, t + 4
            v_lane = uint64(YB + g * SD + 2 * tq)  # ... of a V_j row
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
            kv_end = n_kv
            if CAUSAL:  # later blocks are fully masked: skipped
                kv_end = min(n_kv, q0 + q_len)
            n_blocks = (kv_end + C - 1) // C
            for j in range(n_blocks):
                k0 = j * C
                kv_len = min(C, n_kv - k0)
                # barrier: every thread is done reading the previous K_j, V_j
                cuda.syncthreads()
                load_paired(kh, k0, kv_len, sm, YA, TA, tid)
                load_rows(vh, k0, kv_len, sm, YB, 0, tid)
                # barrier: K_j, V_j are in SRAM
                cuda.syncthreads()
                edge = kv_len < C or (CAUSAL and k0 + C - 1 > q0)  # entries to mask (block-uniform)
                for ci in range(C // CH):
                    cq = ci * CH  # the chunk's first key in the block
                    if CAUSAL and k0 + cq > q0 + q_len - 1:  # no query of the block sees these keys
                        continue
                    # -- S = Q_i K_jᵀ, dP = dO_i V_jᵀ: b0 = K[cq + 8n + g, 16kk + 2t : +2], b1 eight columns on
                    for n in range(NS):
                        for e in range(4):
                            s[n, e] = ZERO
                            dp[n, e] = ZERO
                    for kk in range(KD):
                        for n in range(NS):
                            b0, b1 = pair(sm2, k_lane + uint64((cq + 8 * n) * SD + 8 * kk))
                            s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma(
                                xch, tid, qf[kk, 0], qf[kk, 1], qf[kk, 2], qf[kk, 3], b0, b1,
                                s[n, 0], s[n, 1], s[n, 2], s[n, 3])
                            b0, b1 = pair(sm2, v_lane + uint64((cq + 8 * n) * SD + 8 * kk))
                            dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3] = mma(
                                xch, tid, of[kk, 0], of[kk, 1], of[kk, 2], of[kk, 3], b0, b1,
                                dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3])
                    # -- P, dS in fp32: query q0 + ra + g (+8 for e >= 2), key k0 + cq + 8n + 2t (+1 for odd e)
                    for n in range(NS):
                        for e in range(4):
                            col = cq + 8 * n + 2 * tq + (e % 2)  # the key, in the block
                            p = exp2(s[n, e] * s2 - l2[e // 2])
                            if edge:
                                if col >= kv_len or (CAUSAL and k0 + col > q0 + r_lo + 8 * (e // 2)):
                                    p = ZERO
                            dp[n, e] = p * (dp[n, e] - dd[e // 2])
                    second_products(sm2, xch, tid, ci, dp, TA, acc)  # dQ_i += dS K_j
            store(dq.view(np.uint32)[b, h], q0, q_len, ra, acc, scale, tid)

        def grid(problem):
            return ((problem.n_q + R - 1) // R, problem.bh)

    return kernel, n_smem, grid
