"""flash2's 16-bit tensor-core build (``Schedule(math="f16")``): fp16 and bf16 inputs, both
products on the tensor cores in the inputs' own type with fp32 accumulation (kernels/mma16.py's
m16n8k16), as FlashAttention-2 computes them.

Same schedule, same loop order and the same HBM traffic as ``kernels/flash2.py`` (the counting
build): Q_i is read once, K_j and V_j once per Q block, O_i and L_i written once. A warp owns 16
rows of Q_i (Br = 16·warps); d is a multiple of 16, Bc too (the P·V product's k16 step).

    Q_i: HBM -> the A fragments of the S product, in registers for the whole K/V loop
    K_0, V_0: HBM -> SRAM (K as it is, V transposed into key pairs, see below)
    for each K/V block j (causal: only blocks with a key <= the block's last query):
        start loading K_{j+1} into registers (it arrives while S is computed)
        S = Q_i K_jᵀ: per warp 16 rows; per 16 columns of d and 8 keys one m16n8k16 product, in fp32
        S = S · scale · log2 e (fp32); keys past Nk, and causal keys past the row, -inf
        m_ij = rowmax(S), m_i_new = max(m_i, m_ij), alpha = exp2(m_i - m_i_new),
        P = exp2(S - m_i_new), l_i = alpha l_i + rowsum(P): per row in fp32, in registers
        barrier; K_{j+1}: registers -> SRAM; start loading V_{j+1} into registers
        O_i = diag(alpha) O_i + P V_j: P rounded to the inputs' 16-bit type, stays in registers
              (see below); one product per 16 keys and 8 columns of d, fp32 accumulators
        barrier; V_{j+1}: registers -> SRAM (the next block's first barrier comes before its P·V)
    O_i = diag(l_i)⁻¹ O_i -> HBM in the input dtype;  L_i = (m_i + log2 l_i)·ln 2 -> HBM in fp32

The thread layout is the schedule's: thread_q = 2 (rows g and g + 8 of the warp's 16, g = lane
// 4), thread_kv = Bc / 4 (columns 8n + 2t and 8n + 2t + 1 of every 8-key group n, t = lane % 4),
threads_kv = 4; ``eligible`` says so.

**Packed operands.** q, k, v and o are viewed as uint32 arrays (two 16-bit values along d per
element, d even): a fragment register is one 32-bit word, Q's loaded from HBM, K's and V's from
SRAM (b0 and b1 in one 8-byte load, below), and SRAM holds uint32 too. K is the S product's B operand as it is: B[k, n] = K[n, k], two
consecutive columns of d, adjacent in K's row. V is the P·V product's B operand with B[k, n] =
V[k, n], two consecutive *keys* of one column: the loader transposes V into Vt[col][key pair]
(each uint32 holds V[2p, col] in its low half and V[2p + 1, col] in its high half), from two
uint32 of V's rows 2p and 2p + 1 by 16-bit shifts and masks.

**P never goes to SRAM.** The S accumulators of lane (g, t) for the 8-key groups 2c and 2c + 1
hold P[g, 16c + 2t + {0, 1}], P[g + 8, ...] and P[g, 16c + 8 + 2t + {0, 1}], P[g + 8, ...]: the A
fragment of the P·V product's 16-key step c, once each pair is packed into one register
(``pack``: two fp32 rounded to nearest even, one ``cvt`` instruction). l_i sums P in fp32
before that rounding, as FlashAttention-2 does.

**Shared layouts and bank conflicts.** K_j as uint32 [Bc][s_K] and Vt as uint32 [d][s_V] (row
strides s_K ≥ d/2 and s_V ≥ Bc/2 words, ``row_stride``). A lane's B fragment is words t and t + 4
of an 8-word group of row 8n + g (K: the key; Vt: the column of d). Each row stores, in every group
of 8, words j and j + 4 side by side (``slot``: slots 2j, 2j + 1), so the fragment is one 8-byte
load of slots 2t, 2t + 1, and a warp's load is 8 rows × 8 words. The 8-byte loads are served a
half-warp at a time: rows g = 0..3 (or 4..7), 8 consecutive words each, on banks (g·s + 0..7 +
const) mod 32, which are distinct when g·s mod 32 takes the values 0, 8, 16, 24: s ≡ 8 mod 16.
Unpadded, s = d/2 or Bc/2 is a multiple of 8 (d and Bc multiples of 16), and a multiple of 16
(d/2 = 32, 64) puts rows g and g + 2 on the same banks (2-way; 4-way at s ≡ 0 mod 32): such
rows get 8 words of padding. The loaders give consecutive lanes consecutive words of a K row
(one row per warp from d/2 = 32 on: its 32 slots, 32 banks), and for Vt 8 consecutive key pairs
× 4 words of d per warp: each of an item's two V loads reads 8 rows × 16 bytes (half a 32-byte
sector each) and the stores (2·w·s + slot(p)) mod 32 land on 16 banks twice (2·s ≡ 16 mod 32),
a 2-way conflict, once per item per K/V block.
"""

import math

import numpy as np
from numba import cuda, float32, uint32, uint64

from kernels.flash2_common import fmax, group_reductions, refusal
from kernels.flash2_common import phases as fast_phases
from kernels.mma import exp2
from kernels.mma16 import XCH16_PER_THREAD, products
from kernels.tiles import LN2, LOG2E, NEG_INF, ONE, ZERO, inline_device, make_tile_ops
from sandbox.vocabulary.dtypes import as_dtype
from sandbox.vocabulary.runtime import using_simulator

#: The input dtypes this build takes; others run another build (kernels/builds.py).
DTYPES = ("float16", "bfloat16")



def row_stride(words):
    """The SRAM row stride (uint32 words) of a K_j or Vt row of ``words`` words (a multiple of 8):
    padded by 8 where needed to make it ≡ 8 mod 16, which puts a half-warp's 8-byte fragment
    loads on distinct banks (the module docstring)."""
    return words + (8 if words % 16 == 0 else 0)


def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the 16-bit tensor-core build cannot run this (a string), or None when it can.

    It needs Br a multiple of 16 (a warp per 16 rows), Bc and head_dim multiples of 16 (the k16
    steps of the two products), and the thread tile of the fragments: thread_q = 2,
    thread_kv = Bc / 4. Its input dtypes are :data:`DTYPES` (checked by kernels/builds.py).
    """
    s = schedule
    why = refusal(s, count_io, mask, "16-bit tensor-core", "f16")
    if why is not None:
        return why
    if s.block_q % 16 or s.block_kv % 16:
        return f"Br={s.block_q}, Bc={s.block_kv} (needs Br and Bc multiples of 16)"
    if s.thread_q != 2 or s.thread_kv * 4 != s.block_kv:
        return (f"thread tile {s.thread_q}x{s.thread_kv} (the tensor cores' fragments need "
                f"2x{s.block_kv // 4}: thread_q=2, thread_kv=Bc/4)")
    if head_dim % 16:
        return f"head_dim={head_dim} (needs a multiple of 16)"
    return None


def dtype_refusal(dtype, what="the 16-bit tensor-core build"):
    """Why inputs of ``dtype`` cannot take ``what`` (a string), or None for fp16 and bf16."""
    name = as_dtype(dtype).name
    if name in DTYPES:
        return None
    return f"{name} inputs ({what} takes {' or '.join(DTYPES)}; fp32 has math='tf32x3')"


def smem_bytes(schedule, head_dim):
    """Dynamic shared memory: K_j as [Bc][row_stride(d/2)] and Vt as [d][row_stride(Bc/2)] uint32."""
    bc = schedule.block_kv
    return 4 * (bc * row_stride(head_dim // 2) + head_dim * row_stride(bc // 2))


def min_blocks_per_sm(schedule, head_dim):
    """Blocks per SM the register cap makes room for (kernels/launch.py): 1, no cap below 255."""
    return 1


def phases(dtype):
    """The 16-bit tensor-core build's kernels: flash2's one "main" phase, its arguments unchanged
    (the kernel views them as uint32)."""
    return fast_phases(make_flash2_tc16, dtype)


def tc16_schedule(block_q, block_kv, **kwargs):
    """The 16-bit tensor-core build's Schedule for Br × Bc blocks (thread tile 2 × Bc/4, Br/16 warps)."""
    from sandbox.vocabulary.schedule import Schedule

    return Schedule("flash2", block_q=block_q, block_kv=block_kv, thread_q=2, thread_kv=block_kv // 4,
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
    D = head_dim
    DP = D // 2  # uint32 words per row of Q, K, V, O
    KD = D // 16  # k16 steps of S = Q Kᵀ
    NS = BC // 8  # 8-key groups of S
    KC = BC // 16  # k16 steps of P V
    ND = D // 8  # 8-column groups of O
    KS = row_stride(DP)  # K_j's SRAM row stride (words)
    VS = row_stride(BC // 2)  # Vt's SRAM row stride (words)
    OV = BC * KS  # Vt's offset
    CAUSAL = bool(causal)
    n_smem = smem_bytes(schedule, head_dim)
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH16_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange
    NRED = NT if using_simulator() else 1  # the simulator's row reductions
    row_max, row_sum = group_reductions((2, 1))  # a row's 4 lanes: xor 2, xor 1
    K_ITEMS = BC * DP  # words of K_j: item (key, word)
    V_ITEMS = (BC // 2) * DP  # (key pair, word) items of V_j, two words each
    IK, IV = -(-K_ITEMS // NT), -(-V_ITEMS // NT)
    NVB = 2 * IV  # (a constant: local array sizes must be literal)
    K_FULL, V_FULL = K_ITEMS % NT == 0, V_ITEMS % NT == 0
    LO, HI = 0xFFFF, 0xFFFF0000

    # Indices are uint64 throughout (every constant too: uint64 with int64 is float64 in Numba):
    # a signed index gets a negative-index fix-up per access, which keeps the compiler from
    # folding a thread's shared loads into one base address plus constant offsets.

    @inline_device
    def slot(w):
        """Where word w of a row is stored: in each group of 8, words j and j + 4 side by side at
        2j, 2j + 1 (j < 4), so that a lane's b0 and b1 are one 8-byte load."""
        return (w // uint64(8)) * uint64(8) + (w % uint64(4)) * uint64(2) + (w // uint64(4)) % uint64(2)

    @inline_device
    def k_item(t, it):
        """Item it of thread t: (key, word) of K_j, consecutive threads consecutive words."""
        if NT % DP == 0:  # (the word a per-thread constant, the key a per-item one)
            return t // uint64(DP) + uint64(it * (NT // DP)), t % uint64(DP)
        e = t + uint64(it * NT)
        return e // uint64(DP), e % uint64(DP)

    @inline_device
    def v_item(t, it):
        """Item it of thread t: (key pair, word) of V_j, a warp's 32 lanes 8 pairs × 4 words."""
        e = t + uint64(it * NT)
        return (e // uint64(8 * DP)) * uint64(8) + e % uint64(8), (e // uint64(8)) % uint64(DP)

    @inline_device
    def fetch_k(kh, k0, kv_len, buf, tid):
        """K_j: HBM -> registers, the thread's items; zeros past the last key."""
        t = uint64(tid)
        u0 = uint64(k0)
        n = uint64(kv_len)
        for it in range(IK):
            x = uint32(0)
            if K_FULL or t + uint64(it * NT) < uint64(K_ITEMS):
                key, w = k_item(t, it)
                if key < n:
                    x = kh[u0 + key, w]
            buf[it] = x

    @inline_device
    def store_k(buf, sm, tid):
        """The fetched K items -> SRAM, row key, word w."""
        t = uint64(tid)
        for it in range(IK):
            if K_FULL or t + uint64(it * NT) < uint64(K_ITEMS):
                key, w = k_item(t, it)
                sm[key * uint64(KS) + slot(w)] = buf[it]

    @inline_device
    def fetch_v(vh, k0, kv_len, buf, tid):
        """V_j: HBM -> registers, word w of rows 2p and 2p + 1 per item; zeros past the last key."""
        t = uint64(tid)
        u0 = uint64(k0)
        n = uint64(kv_len)
        for it in range(IV):
            x0 = uint32(0)
            x1 = uint32(0)
            if V_FULL or t + uint64(it * NT) < uint64(V_ITEMS):
                p, w = v_item(t, it)
                r = uint64(2) * p
                if r < n:
                    x0 = vh[u0 + r, w]
                if r + uint64(1) < n:
                    x1 = vh[u0 + r + uint64(1), w]
            buf[2 * it] = x0
            buf[2 * it + 1] = x1

    @inline_device
    def store_v(buf, sm, tid):
        """The fetched V items, transposed -> Vt: column 2w gets the low halves (V[2p, 2w],
        V[2p + 1, 2w]), column 2w + 1 the high halves."""
        t = uint64(tid)
        for it in range(IV):
            if V_FULL or t + uint64(it * NT) < uint64(V_ITEMS):
                p, w = v_item(t, it)
                x0 = buf[2 * it]
                x1 = buf[2 * it + 1]
                at = uint64(OV) + uint64(2) * w * uint64(VS) + slot(p)
                sm[at] = (x0 & LO) | ((x1 & LO) << 16)
                sm[at + uint64(VS)] = (x0 >> 16) | (x1 & HI)

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
        r_lo = 16 * w + g  # the thread's two rows in the block
        r_hi = r_lo + 8
        hk = h // (n_heads // k.shape[1])  # the query head's K/V head (grouped: H / H_kv query heads per K/V head)
        kh = ku[b, hk]
        vh = vu[b, hk]
        qh = qu[b, h]
        oh = ou[b, h]
        ut = uint64(tq)
        k_lane = uint64(g * KS + 2 * tq)  # the lane's slot of a K_j fragment: row g, words t, t + 4
        v_lane = uint64(OV + g * VS + 2 * tq)  # ... and of a Vt fragment

        qf = cuda.local.array((KD, 4), uint32)  # Q's A fragments, for the whole K/V loop
        acc = cuda.local.array((ND, 4), float32)  # O's accumulators, 8 columns of d per group
        s = cuda.local.array((NS, 4), float32)  # S (then P): 8 keys per group
        m = cuda.local.array(2, float32)
        l = cuda.local.array(2, float32)
        kb = cuda.local.array(IK, uint32)  # the thread's items of K_{j+1}
        vb = cuda.local.array(NVB, uint32)  # ... and of V_{j+1}
        for i in range(2):
            m[i] = NEG_INF
            l[i] = ZERO
        for nn in range(ND):
            for i in range(4):
                acc[nn, i] = ZERO
        for kk in range(KD):  # a0 = Q[g, 16kk + 2t : +2], a1 its row g + 8, a2, a3 eight columns on
            for i in range(4):
                qf[kk, i] = uint32(0)
            col = uint64(8 * kk) + ut
            if r_lo < q_len:
                qf[kk, 0] = qh[uint64(q0 + r_lo), col]
                qf[kk, 2] = qh[uint64(q0 + r_lo), col + uint64(4)]
            if r_hi < q_len:
                qf[kk, 1] = qh[uint64(q0 + r_hi), col]
                qf[kk, 3] = qh[uint64(q0 + r_hi), col + uint64(4)]

        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        n_blocks = (kv_end + BC - 1) // BC
        fetch_k(kh, 0, min(BC, n_kv), kb, tid)
        fetch_v(vh, 0, min(BC, n_kv), vb, tid)
        store_k(kb, sm, tid)
        store_v(vb, sm, tid)
        # barrier: K_0, V_0 are in SRAM
        cuda.syncthreads()
        for j in range(n_blocks):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            k1 = k0 + BC
            more = j + 1 < n_blocks
            if more:  # K_{j+1}: HBM -> registers, while S_j is computed
                fetch_k(kh, k1, min(BC, n_kv - k1), kb, tid)

            # -- S = Q_i K_jᵀ: b0 = K[8n + g, 16kk + 2t : +2], b1 eight columns on (one 8-byte load)
            for n in range(NS):
                for i in range(4):
                    s[n, i] = ZERO
            for kk in range(KD):
                for n in range(NS):
                    at = k_lane + uint64(8 * n * KS + 8 * kk)
                    s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma(
                        xch, tid, qf[kk, 0], qf[kk, 1], qf[kk, 2], qf[kk, 3], sm[at], sm[at + uint64(1)],
                        s[n, 0], s[n, 1], s[n, 2], s[n, 3])
            for n in range(NS):
                for i in range(4):
                    s[n, i] *= s2

            if HAS_MOD:  # S' = score_mod(S) on the in-range entries, S in natural units (the rest is cut below)
                for i in range(2):
                    row = q0 + r_lo + 8 * i
                    if row < n_q:
                        for n in range(NS):
                            for e in range(2):
                                c = 8 * n + 2 * tq + e
                                if c < kv_len:
                                    s[n, 2 * i + e] = modded(s[n, 2 * i + e] * LN2, b, h, row, k0 + c) * LOG2E

            # -- online softmax per row (the other fast builds', NaN semantics included): rows
            # r_lo (s[n, 0], s[n, 1]) and r_hi (s[n, 2], s[n, 3]); keys k0 + 8n + 2t + {0, 1}
            if kv_len < BC or (CAUSAL and k0 + BC - 1 > q0):  # a block with masked keys (block-uniform)
                for i in range(2):
                    cut = kv_len  # the row's keys from k0 + cut on are masked
                    if CAUSAL:
                        cut = min(cut, q0 + r_lo + 8 * i - k0 + 1)
                    for n in range(NS):
                        for e in range(2):
                            if 8 * n + 2 * tq + e >= cut:
                                s[n, 2 * i + e] = NEG_INF
            for i in range(2):
                mx = NEG_INF
                for n in range(NS):
                    for e in range(2):
                        mx = fmax(mx, s[n, 2 * i + e])
                mx = row_max(mx, red, tid)
                m_new = fmax(m[i], mx)
                m_use = m_new if m_new != NEG_INF else ZERO
                alpha = exp2(m[i] - m_use)
                rs = ZERO
                for n in range(NS):
                    for e in range(2):
                        p = exp2(s[n, 2 * i + e] - m_use)
                        s[n, 2 * i + e] = p
                        rs += p
                l[i] = alpha * l[i] + rs  # this thread's part of the row sum (alpha is the row's)
                m[i] = m_new
                for nn in range(ND):
                    acc[nn, 2 * i] *= alpha
                    acc[nn, 2 * i + 1] *= alpha

            # barrier: every thread is done reading K_j
            cuda.syncthreads()
            if more:  # K_{j+1}: registers -> SRAM; V_{j+1}: HBM -> registers, while P V_j is computed
                store_k(kb, sm, tid)
                fetch_v(vh, k1, min(BC, n_kv - k1), vb, tid)

            # -- O_i += P V_j: the S accumulators of groups 2c, 2c + 1, packed, are the A fragment;
            # b0 = Vt[8nn + g, 8c + t] (keys 16c + 2t, +1), b1 = Vt[8nn + g, 8c + t + 4] (8 keys on),
            # side by side in slots 8c + 2t, 8c + 2t + 1
            for c in range(KC):
                a0 = pack(s[2 * c, 0], s[2 * c, 1])
                a1 = pack(s[2 * c, 2], s[2 * c, 3])
                a2 = pack(s[2 * c + 1, 0], s[2 * c + 1, 1])
                a3 = pack(s[2 * c + 1, 2], s[2 * c + 1, 3])
                for nn in range(ND):
                    at = v_lane + uint64(8 * nn * VS + 8 * c)
                    acc[nn, 0], acc[nn, 1], acc[nn, 2], acc[nn, 3] = mma(
                        xch, tid, a0, a1, a2, a3, sm[at], sm[at + uint64(1)], acc[nn, 0], acc[nn, 1], acc[nn, 2],
                        acc[nn, 3])

            # barrier: every thread is done reading V_j (and K_{j+1} is in SRAM)
            cuda.syncthreads()
            if more:  # V_{j+1}: registers -> SRAM (the next block's first barrier precedes its P V)
                store_v(vb, sm, tid)

        # -- O_i = diag(l_i)^-1 O_i -> HBM, columns 8nn + 2t, +1 packed in one word (a row that saw
        # no key: O = 0); L_i = m_i·ln 2 + log l_i
        for i in range(2):
            l[i] = row_sum(l[i], red, tid)
        for i in range(2):
            rr = r_lo + 8 * i
            if rr < q_len:
                inv = ZERO
                if l[i] != ZERO:  # NaN passes through
                    inv = ONE / l[i]
                for nn in range(ND):
                    oh[uint64(q0 + rr), uint64(4 * nn) + ut] = pack(acc[nn, 2 * i] * inv, acc[nn, 2 * i + 1] * inv)
                if tq == 0:
                    lse[b, h, q0 + rr] = m[i] * LN2 + math.log(l[i]) if l[i] != ZERO else NEG_INF

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, n_smem, grid
