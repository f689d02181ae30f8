"""flash2's 16-bit tensor-core build (``Schedule(math="f16")``): fp16 and bf16 inputs, both
products on the tensor cores in the inputs' own type with fp32 accumulation (kernels/mma16.py's
m16n8k16), as FlashAttention-2 computes them.

Same schedule, same loop order and the same HBM traffic as ``kernels/flash2.py`` (the counting
build): Q_i is read once, K_j and V_j once per Q block, O_i and L_i written once. A warp owns 16
or 32 rows of Q_i (one or two m16 tiles; Br = 16·warps or 32·warps); d is a multiple of 16, Bc too
(the P·V product's k16 step).

    Q_i: HBM -> the A fragments of the S product, in registers for the whole K/V loop (a warp per
         16 rows), or -> SRAM (cp.async, in K_0's and V_0's group; a warp per 32 rows)
    K_0, V_0: HBM -> SRAM stage 0 (cp.async, started before Q is read)
    for each K/V block j (causal: only blocks with a key <= the block's last query):
        wait for K_j, V_j; barrier; start K_{j+1}, V_{j+1}: HBM -> the other stage (cp.async,
            they arrive while block j is computed)
        S = Q_i K_jᵀ: per warp 16 or 32 rows; per m16 tile, 16 columns of d and 8 keys one m16n8k16
            product, in fp32
        S = S · scale · log2 e (fp32); keys past Nk, and causal keys past the row, -inf
        m_ij = rowmax(S), m_i_new = max(m_i, m_ij), alpha = exp2(m_i - m_i_new),
        P = exp2(S - m_i_new), l_i = alpha l_i + rowsum(P): per row in fp32, in registers
        O_i = diag(alpha) O_i + P V_j: P rounded to the inputs' 16-bit type, stays in registers
              (see below); one product per 16 keys and 8 columns of d, fp32 accumulators
    O_i = diag(l_i)⁻¹ O_i -> HBM in the input dtype;  L_i = (m_i + log2 l_i)·ln 2 -> HBM in fp32

The thread layout is the schedule's: thread_q = 2 (rows g and g + 8 of the warp's 16, g = lane
// 4) or 4 (rows g, g + 8, g + 16, g + 24 of its 32), thread_kv = Bc / 4 (columns 8n + 2t and
8n + 2t + 1 of every 8-key group n, t = lane % 4), threads_kv = 4; ``eligible`` says so.

**A warp per 32 rows** (thread_q = 4) is FlashAttention-2's layout: each ``ldmatrix.x4`` of K_j or
V_j feeds four products (two per m16 tile) instead of two, and Br = 128 takes 4 warps instead of 8.
Q's fragments for 32 rows would hold d/2 registers a thread through the loop; instead Q_i waits in
SRAM ([Br][s] uint32 after the two stages, copied like K_j) and ``ldmatrix.x4`` reads the A
fragment of one m16 tile and k16 step (tile l // 8 is rows 8·((l // 8) % 2) + 0..7, words
4·(l // 16) on: a0..a3 in order).

**Packed operands.** q, k, v and o are viewed as uint32 arrays (two 16-bit values along d per
element, d even): a fragment register is one 32-bit word, Q's loaded from HBM (or from SRAM by
``ldmatrix``), K's and V's from SRAM by ``ldmatrix`` (kernels/mma16.py). SRAM holds K_j and V_j as they are in HBM, row by row,
copied by ``cp.async`` 16 bytes at a time without passing through registers (consecutive threads,
consecutive 16 bytes of a row: whole sectors), in two stages, so that block j + 1 loads while
block j is computed. K is the S product's B operand as it is (B[k, n] = K[n, k]: a tile's rows
are B's columns): ``ldmatrix.x4`` gives b0 and b1 of two 8-key groups. V is the P·V product's B
operand with B[k, n] = V[k, n] (a tile's rows are B's rows): ``ldmatrix.x4.trans`` gives b0 and
b1 of two 8-column groups, two consecutive keys of one column per register.

**P never goes to SRAM.** The S accumulators of lane (g, t) for the 8-key groups 2c and 2c + 1
hold P[g, 16c + 2t + {0, 1}], P[g + 8, ...] and P[g, 16c + 8 + 2t + {0, 1}], P[g + 8, ...]: the A
fragment of the P·V product's 16-key step c, once each pair is packed into one register
(``pack``: two fp32 rounded to nearest even, one ``cvt`` instruction). l_i sums P in fp32
before that rounding, as FlashAttention-2 does.

**Shared layout and bank conflicts.** A stage is K_j then V_j, each [Bc][s] uint32 with the row
stride s = d/2 + 4 words (``tile_stride``): an ldmatrix tile reads 8 rows × 16 bytes, rows r at
banks 4r·(s/4) + 0..3 mod 32, distinct for s ≡ 4 mod 8 (d a multiple of 16 gives it). Q_i's rows
have the same stride. On the H200 a warp per 32 rows at 128×64 ran 0.88–0.94× FlashAttention-2 at
N = 16384, and its kernels alone (back to back) 0.90–0.92× at N = 4096 (BENCHMARKS.md, "16-bit
tensor cores: flash2's forward").
"""

import math

import numpy as np
from numba import cuda, float32, uint32, uint64

from kernels.flash2_common import fmax, group_reductions, refusal
from kernels.flash2_common import phases as fast_phases
from kernels.mma import exp2
from kernels.mma16 import XCH16_PER_THREAD, cp_async, cp_async_commit, cp_async_wait, ldsm, ldsm_t, products
from kernels.tiles import LN2, LOG2E, NEG_INF, ONE, ZERO, inline_device, make_tile_ops
from sandbox.vocabulary.dtypes import as_dtype
from sandbox.vocabulary.runtime import using_simulator
# the thread tiles this build takes: 2, a warp per 16 rows with Q's fragments in registers; 4, a warp
# per 32 rows with Q_i in SRAM (the module docstring, "A warp per 32 rows")
from sandbox.vocabulary.schedule import F16_THREAD_Q as THREAD_Q

#: Bytes to which an input array's first element must be aligned: its tiles are copied by cp.async
#: in 16-byte words (kernels/launch.py, ``check_alignment``, refuses others with the reason).
ALIGNMENT = 16

#: The input dtypes this build takes; others run another build (kernels/builds.py).
DTYPES = ("float16", "bfloat16")



def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the 16-bit tensor-core build cannot run this (a string), or None when it can.

    It needs the thread tile of the fragments, thread_q = 2 or 4 (a warp per 16 or 32 rows) and
    thread_kv = Bc / 4, Br a multiple of a warp's rows, Bc and head_dim multiples of 16 (the k16
    steps of the two products). Its input dtypes are :data:`DTYPES` (checked by kernels/builds.py).
    """
    s = schedule
    why = refusal(s, count_io, mask, "16-bit tensor-core", "f16")
    if why is not None:
        return why
    if s.thread_q not in THREAD_Q or s.thread_kv * 4 != s.block_kv:
        return (f"thread tile {s.thread_q}x{s.thread_kv} (the tensor cores' fragments need "
                f"2x{s.block_kv // 4} or 4x{s.block_kv // 4}: thread_q=2 or 4, thread_kv=Bc/4)")
    if s.block_q % warp_rows(s) or s.block_kv % 16:
        return f"Br={s.block_q}, Bc={s.block_kv} (needs Br a multiple of {warp_rows(s)}, Bc of 16)"
    if head_dim % 16:
        return f"head_dim={head_dim} (needs a multiple of 16)"
    return None


def dtype_refusal(dtype, what="the 16-bit tensor-core build"):
    """Why inputs of ``dtype`` cannot take ``what`` (a string), or None for fp16 and bf16."""
    name = as_dtype(dtype).name
    if name in DTYPES:
        return None
    return f"{name} inputs ({what} takes {' or '.join(DTYPES)}; fp32 has math='tf32x3')"


def warp_rows(schedule):
    """Rows of Q_i a warp owns: 8·thread_q, 16 or 32 (two m16 tiles)."""
    return 8 * schedule.thread_q


def tile_stride(words):
    """The SRAM row stride (uint32 words) of a K_j or V_j row of ``words`` words (a multiple of 8):
    4 words (16 bytes) of padding, which puts the 8 rows of an ldmatrix tile on distinct banks (the
    module docstring)."""
    return words + 4


def smem_bytes(schedule, head_dim):
    """Dynamic shared memory: two stages of K_j and V_j, each [Bc][tile_stride(d/2)] uint32, and with
    a warp per 32 rows Q_i, [Br][tile_stride(d/2)] uint32."""
    rows = 2 * 2 * schedule.block_kv + (schedule.block_q if warp_rows(schedule) == 32 else 0)
    return 4 * rows * tile_stride(head_dim // 2)


def min_blocks_per_sm(schedule, head_dim):
    """Blocks per SM the register cap makes room for (kernels/launch.py): 1, no cap below 255."""
    return 1


def phases(dtype):
    """The 16-bit tensor-core build's kernels: flash2's one "main" phase, its arguments unchanged
    (the kernel views them as uint32)."""
    return fast_phases(make_flash2_tc16, dtype)


def tc16_schedule(block_q, block_kv, rows=16, **kwargs):
    """The 16-bit tensor-core build's Schedule for Br × Bc blocks, a warp per ``rows`` rows of Q (16 or
    32: thread tile 2 × Bc/4 or 4 × Bc/4, Br/rows warps)."""
    from sandbox.vocabulary.schedule import Schedule

    return Schedule("flash2", block_q=block_q, block_kv=block_kv, thread_q=rows // 8, thread_kv=block_kv // 4,
                    math="f16", **kwargs)


#: It applies a score_mod (kernels/builds.py asks): elementwise on the S accumulator.
TAKES_SCORE_MOD = True

#: It takes grouped K/V heads (kernels/builds.py asks): query head h reads K/V head h // (H / H_kv).
TAKES_GROUPED = True


def make_flash2_tc16(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None):
    """Build the 16-bit tensor-core flash2 kernel (see the module docstring). ``score_mod``: a
    sandbox.vocabulary.score_mods.ScoreMod or None, applied to each in-range entry of S in fp32 as
    the counting build applies it (S taken back from log2 units first).

    Returns:
        (kernel, smem_bytes, grid(problem)).

    Raises:
        ValueError: a schedule, head_dim or dtype it cannot run (``eligible``, ``dtype_refusal``).
    """
    why = eligible(schedule, head_dim, count_io, mask) or dtype_refusal(dtype)
    if why is not None:
        raise ValueError(f"the 16-bit tensor-core flash2 build cannot run {schedule} at d={head_dim}: {why}")
    mma, pack = products(dtype)
    t = make_tile_ops(schedule, head_dim, False, causal, dtype, score_mod=score_mod)
    HAS_MOD, modded = t.HAS_MOD, t.modded
    BR, BC, NT = schedule.block_q, schedule.block_kv, schedule.threads
    MT = warp_rows(schedule) // 16  # m16 tiles of a warp's rows: 1 or 2
    NROW = 2 * MT  # a thread's rows
    Q_SRAM = MT == 2  # Q_i in SRAM, its fragments read per k16 step (else in registers for the loop)
    D = head_dim
    DP = D // 2  # uint32 words per row of Q, K, V, O
    KD = D // 16  # k16 steps of S = Q Kᵀ
    NS = BC // 8  # 8-key groups of S
    KC = BC // 16  # k16 steps of P V
    ND = D // 8  # 8-column groups of O
    RS = tile_stride(DP)  # the SRAM row stride of K_j, V_j and Q_i (words)
    OV = BC * RS  # V_j's offset in a stage
    STAGE = 2 * BC * RS  # words of one stage (K_j, V_j)
    OQ = 2 * STAGE  # Q_i's offset (a warp per 32 rows)
    QF = KD if not Q_SRAM else 1  # Q's fragments held in registers
    CAUSAL = bool(causal)
    n_smem = smem_bytes(schedule, head_dim)
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH16_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange
    NRED = NT if using_simulator() else 1  # the simulator's row reductions
    row_max, row_sum = group_reductions((2, 1))  # a row's 4 lanes: xor 2, xor 1
    CPR = DP // 4  # 16-byte chunks per row
    CHUNKS = BC * CPR  # chunks of K_j (and of V_j)
    NCH = -(-CHUNKS // NT)
    CH_FULL = CHUNKS % NT == 0
    QCHUNKS = BR * CPR  # chunks of Q_i
    NQCH = -(-QCHUNKS // NT)
    QCH_FULL = QCHUNKS % NT == 0

    # Indices are uint64 throughout (every constant too: uint64 with int64 is float64 in Numba):
    # a signed index gets a negative-index fix-up per access, which keeps the compiler from
    # folding a thread's shared loads into one base address plus constant offsets.

    @inline_device
    def issue(kh, vh, k0, kv_len, sm, base, tid):
        """K_j and V_j: HBM -> the stage at ``base``, 16 bytes per cp.async, consecutive threads
        consecutive chunks of a row; zeros past the last key. One group, committed."""
        t = uint64(tid)
        n = uint64(kv_len)
        u0 = uint64(k0)
        for it in range(NCH):
            e = t + uint64(it * NT)
            if CH_FULL or e < uint64(CHUNKS):
                r = e // uint64(CPR)
                w = (e % uint64(CPR)) * uint64(4)
                ok = r < n
                src = u0 + r if ok else u0  # (a valid address; nothing is read from it)
                at = base + r * uint64(RS) + w
                cp_async(sm, at, kh, src, w, ok)
                cp_async(sm, at + uint64(OV), vh, src, w, ok)
        cp_async_commit()

    @inline_device
    def issue_q(qh, q0, q_len, sm, tid):
        """Q_i: HBM -> SRAM at OQ, as ``issue`` copies K_j (zeros past the last query), not committed:
        it joins K_0's and V_0's group."""
        t = uint64(tid)
        n = uint64(q_len)
        u0 = uint64(q0)
        for it in range(NQCH):
            e = t + uint64(it * NT)
            if QCH_FULL or e < uint64(QCHUNKS):
                r = e // uint64(CPR)
                w = (e % uint64(CPR)) * uint64(4)
                ok = r < n
                cp_async(sm, uint64(OQ) + r * uint64(RS) + w, qh, u0 + r if ok else u0, w, ok)

    def kernel(q, k, v, o, lse, scale, counters):
        if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or o.shape[3] != D:
            return  # (never: the launcher checks; this tells the compiler the row length is D)
        qu = q.view(np.uint32)  # (B, H, N, d/2): two 16-bit values per word
        ku = k.view(np.uint32)
        vu = v.view(np.uint32)
        ou = o.view(np.uint32)
        tid = cuda.threadIdx.x
        w = tid // 32
        lane = tid - 32 * w
        g = lane // 4
        tq = lane - 4 * g
        bh = cuda.blockIdx.y
        n_heads = q.shape[1]
        b = bh // n_heads
        h = bh - b * n_heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        qb = cuda.blockIdx.x
        if CAUSAL:  # the longest blocks (most keys) first: the shortest fill the last wave's gaps
            qb = cuda.gridDim.x - 1 - qb
        q0 = qb * BR
        q_len = min(BR, n_q - q0)
        sm = cuda.shared.array(0, uint32, alignment=ALIGN)
        xch = cuda.shared.array(NX, uint32)  # the simulator's warp exchange (unused on the GPU)
        red = cuda.shared.array(NRED, float32)  # the simulator's row reductions (unused on the GPU)
        s2 = scale * LOG2E  # S in log2 units: exp(x) = exp2(x·log2 e)
        r0 = 16 * MT * w + g  # the thread's rows in the block: r0 + 16·mt + 8·i (row slot 2·mt + i)
        hk = h // (n_heads // k.shape[1])  # the query head's K/V head (grouped: H / H_kv query heads per K/V head)
        kh = ku[b, hk]
        vh = vu[b, hk]
        qh = qu[b, h]
        oh = ou[b, h]
        ut = uint64(tq)
        # the row this lane addresses in an ldmatrix.x4 (the module docstring): K_j's tile l // 8 is
        # keys 8·(l // 16) + 0..7, words 4·((l // 8) % 2) on; V_j's and Q_i's are rows
        # 8·((l // 8) % 2) + 0..7, words 4·(l // 16) on
        k_lane = uint64((8 * (lane // 16) + lane % 8) * RS + 4 * ((lane // 8) % 2))
        t_lane = (8 * ((lane // 8) % 2) + lane % 8) * RS + 4 * (lane // 16)
        v_lane = uint64(OV + t_lane)
        q_lane = uint64(OQ + 16 * MT * w * RS + t_lane)

        qf = cuda.local.array((QF, 4), uint32)  # Q's A fragments, for the whole K/V loop (a warp per 16 rows)
        qa = cuda.local.array((MT, 4), uint32)  # the A fragments of one k16 step
        pa = cuda.local.array((MT, 4), uint32)  # P's A fragments of one k16 step
        acc = cuda.local.array((MT, ND, 4), float32)  # O's accumulators, 8 columns of d per group
        s = cuda.local.array((MT, NS, 4), float32)  # S (then P): 8 keys per group
        m = cuda.local.array(NROW, float32)
        l = cuda.local.array(NROW, float32)
        for i in range(NROW):
            m[i] = NEG_INF
            l[i] = ZERO
        for mt in range(MT):
            for nn in range(ND):
                for i in range(4):
                    acc[mt, nn, i] = ZERO
        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        n_blocks = (kv_end + BC - 1) // BC
        if Q_SRAM:
            issue_q(qh, q0, q_len, sm, tid)  # Q_i -> SRAM, in K_0's and V_0's group
        issue(kh, vh, 0, min(BC, n_kv), sm, uint64(0), tid)  # K_0, V_0 -> stage 0, while Q is read
        if not Q_SRAM:
            for kk in range(KD):  # a0 = Q[g, 16kk + 2t : +2], a1 its row g + 8, a2, a3 eight columns on
                for i in range(4):
                    qf[kk, i] = uint32(0)
                col = uint64(8 * kk) + ut
                if r0 < q_len:
                    qf[kk, 0] = qh[uint64(q0 + r0), col]
                    qf[kk, 2] = qh[uint64(q0 + r0), col + uint64(4)]
                if r0 + 8 < q_len:
                    qf[kk, 1] = qh[uint64(q0 + r0 + 8), col]
                    qf[kk, 3] = qh[uint64(q0 + r0 + 8), col + uint64(4)]

        for j in range(n_blocks):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            base = uint64((j % 2) * STAGE)
            # K_j, V_j (and Q_i) have landed (this thread's copies), and after the barrier everyone's;
            # every thread is also done with block j - 1, whose stage K_{j+1}, V_{j+1} now fill
            cp_async_wait()
            cuda.syncthreads()
            if j + 1 < n_blocks:
                k1 = k0 + BC
                issue(kh, vh, k1, min(BC, n_kv - k1), sm, uint64(((j + 1) % 2) * STAGE), tid)

            # -- S = Q_i K_jᵀ: one ldmatrix.x4 gives b0, b1 of two 8-key groups, for each m16 tile
            for mt in range(MT):
                for n in range(NS):
                    for i in range(4):
                        s[mt, n, i] = ZERO
            for kk in range(KD):
                if Q_SRAM:
                    for mt in range(MT):
                        qa[mt, 0], qa[mt, 1], qa[mt, 2], qa[mt, 3] = ldsm(sm, xch, tid, q_lane + uint64(16 * mt * RS + 8 * kk))
                else:
                    for i in range(4):
                        qa[0, i] = qf[kk, i]
                for n2 in range(NS // 2):
                    b0, b1, b2, b3 = ldsm(sm, xch, tid, base + k_lane + uint64(16 * n2 * RS + 8 * kk))
                    for mt in range(MT):
                        s[mt, 2 * n2, 0], s[mt, 2 * n2, 1], s[mt, 2 * n2, 2], s[mt, 2 * n2, 3] = mma(
                            xch, tid, qa[mt, 0], qa[mt, 1], qa[mt, 2], qa[mt, 3], b0, b1,
                            s[mt, 2 * n2, 0], s[mt, 2 * n2, 1], s[mt, 2 * n2, 2], s[mt, 2 * n2, 3])
                        s[mt, 2 * n2 + 1, 0], s[mt, 2 * n2 + 1, 1], s[mt, 2 * n2 + 1, 2], s[mt, 2 * n2 + 1, 3] = mma(
                            xch, tid, qa[mt, 0], qa[mt, 1], qa[mt, 2], qa[mt, 3], b2, b3,
                            s[mt, 2 * n2 + 1, 0], s[mt, 2 * n2 + 1, 1], s[mt, 2 * n2 + 1, 2], s[mt, 2 * n2 + 1, 3])
            for mt in range(MT):
                for n in range(NS):
                    for i in range(4):
                        s[mt, n, i] *= s2

            if HAS_MOD:  # S' = score_mod(S) on the in-range entries, S in natural units (the rest is cut below)
                for mt in range(MT):
                    for i in range(2):
                        row = q0 + r0 + 16 * mt + 8 * i
                        if row < n_q:
                            for n in range(NS):
                                for e in range(2):
                                    c = 8 * n + 2 * tq + e
                                    if c < kv_len:
                                        s[mt, n, 2 * i + e] = modded(s[mt, n, 2 * i + e] * LN2, b, h, row, k0 + c) * LOG2E

            # -- online softmax per row (the other fast builds', NaN semantics included): rows
            # r0 + 16·mt (s[mt, n, 0], s[mt, n, 1]) and r0 + 16·mt + 8 (s[mt, n, 2], s[mt, n, 3]);
            # keys k0 + 8n + 2t + {0, 1}
            if kv_len < BC or (CAUSAL and k0 + BC - 1 > q0):  # a block with masked keys (block-uniform)
                for mt in range(MT):
                    for i in range(2):
                        cut = kv_len  # the row's keys from k0 + cut on are masked
                        if CAUSAL:
                            cut = min(cut, q0 + r0 + 16 * mt + 8 * i - k0 + 1)
                        for n in range(NS):
                            for e in range(2):
                                if 8 * n + 2 * tq + e >= cut:
                                    s[mt, n, 2 * i + e] = NEG_INF
            for mt in range(MT):
                for i in range(2):
                    r = 2 * mt + i
                    mx = NEG_INF
                    for n in range(NS):
                        for e in range(2):
                            mx = fmax(mx, s[mt, n, 2 * i + e])
                    mx = row_max(mx, red, tid)
                    m_new = fmax(m[r], mx)
                    m_use = m_new if m_new != NEG_INF else ZERO
                    alpha = exp2(m[r] - m_use)
                    rs = ZERO
                    for n in range(NS):
                        for e in range(2):
                            p = exp2(s[mt, n, 2 * i + e] - m_use)
                            s[mt, n, 2 * i + e] = p
                            rs += p
                    l[r] = alpha * l[r] + rs  # this thread's part of the row sum (alpha is the row's)
                    m[r] = m_new
                    for nn in range(ND):
                        acc[mt, nn, 2 * i] *= alpha
                        acc[mt, nn, 2 * i + 1] *= alpha

            # -- O_i += P V_j: the S accumulators of groups 2c, 2c + 1, packed, are the A fragment;
            # one ldmatrix.x4.trans gives b0, b1 (keys 16c + 2t, +1 and 8 on) of two 8-column groups,
            # for each m16 tile
            for c in range(KC):
                for mt in range(MT):
                    pa[mt, 0] = pack(s[mt, 2 * c, 0], s[mt, 2 * c, 1])
                    pa[mt, 1] = pack(s[mt, 2 * c, 2], s[mt, 2 * c, 3])
                    pa[mt, 2] = pack(s[mt, 2 * c + 1, 0], s[mt, 2 * c + 1, 1])
                    pa[mt, 3] = pack(s[mt, 2 * c + 1, 2], s[mt, 2 * c + 1, 3])
                for n2 in range(ND // 2):
                    b0, b1, b2, b3 = ldsm_t(sm, xch, tid, base + v_lane + uint64(16 * c * RS + 8 * n2))
                    for mt in range(MT):
                        acc[mt, 2 * n2, 0], acc[mt, 2 * n2, 1], acc[mt, 2 * n2, 2], acc[mt, 2 * n2, 3] = mma(
                            xch, tid, pa[mt, 0], pa[mt, 1], pa[mt, 2], pa[mt, 3], b0, b1,
                            acc[mt, 2 * n2, 0], acc[mt, 2 * n2, 1], acc[mt, 2 * n2, 2], acc[mt, 2 * n2, 3])
                        acc[mt, 2 * n2 + 1, 0], acc[mt, 2 * n2 + 1, 1], acc[mt, 2 * n2 + 1, 2], acc[mt, 2 * n2 + 1, 3] = mma(
                            xch, tid, pa[mt, 0], pa[mt, 1], pa[mt, 2], pa[mt, 3], b2, b3,
                            acc[mt, 2 * n2 + 1, 0], acc[mt, 2 * n2 + 1, 1], acc[mt, 2 * n2 + 1, 2],
                            acc[mt, 2 * n2 + 1, 3])

        # -- O_i = diag(l_i)^-1 O_i -> HBM, columns 8nn + 2t, +1 packed in one word (a row that saw
        # no key: O = 0); L_i = m_i·ln 2 + log l_i
        for r in range(NROW):
            l[r] = row_sum(l[r], red, tid)
        for mt in range(MT):
            for i in range(2):
                r = 2 * mt + i
                rr = r0 + 16 * mt + 8 * i
                if rr < q_len:
                    inv = ZERO
                    if l[r] != ZERO:  # NaN passes through
                        inv = ONE / l[r]
                    for nn in range(ND):
                        oh[uint64(q0 + rr), uint64(4 * nn) + ut] = pack(acc[mt, nn, 2 * i] * inv,
                                                                        acc[mt, nn, 2 * i + 1] * inv)
                    if tq == 0:
                        lse[b, h, q0 + rr] = m[r] * LN2 + math.log(l[r]) if l[r] != ZERO else NEG_INF

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, n_smem, grid
