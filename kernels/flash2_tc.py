"""flash2's tensor-core build (``Schedule(math="tf32x3")``): the fast build's loop order with both
products on the tensor cores, in fp32 precision by the 3xTF32 split (kernels/mma.py).

Same schedule, same loop order and the same HBM traffic as ``kernels/flash2.py`` (the counting
build) and ``kernels/flash2_fast.py`` (the FMA build): Q_i is read once, K_j and V_j once per Q
block, O_i and L_i written once. What differs is the arithmetic, and where S and P live:

    Q_i · scale · log2 e: HBM -> the A fragments of the S product, raw fp32: in registers up to
        d = 64 (Q_REGISTERS_MAX_D), else in SRAM, each lane's own vectors
    K_0, V_0: HBM -> split into TF32 big and small parts -> SRAM, in fragment order
    for each K/V block j (causal: only blocks with a key <= the block's last query):
        start loading K_{j+1} into registers (it arrives while S is computed)
        S = Q_i K_jᵀ: per warp 16 rows; per 8 columns of d and 8 keys, three m16n8k8 products,
            on one accumulator from TWO_ACCUMULATORS_BELOW key groups on, else the small
            products on a second one (chains of d/8 and 2·d/8 products, not 3·d/8)
        score_mod (if any): on each lane's in-range entries of the S accumulator, in natural units
        m_ij, P, l_ij: per row, in registers (a row is 4 lanes: two xor shuffles)
        barrier; K_{j+1}: registers -> split -> SRAM; start loading V_{j+1} into registers
        O_i = diag(alpha) O_i + P V_j: P stays in registers (see below), three products per
              8 keys and 8 columns of d
        barrier; V_{j+1}: registers -> split -> SRAM (the next block's first barrier comes
              before its P·V)
    O_i = diag(l_i)⁻¹ O_i -> HBM;  L_i = m_i + log l_i -> HBM

The thread layout is the schedule's: Br = 16·warps, thread_q = 2 (rows g and g + 8 of the
warp's 16, g = lane // 4) and thread_kv = Bc / 4 (columns 8n + 2t and 8n + 2t + 1 of every
8-key group n, t = lane % 4), threads_kv = 4; ``eligible`` says so.

**P never goes to SRAM.** The S accumulator of lane (g, t) holds P[g, 8n + 2t + {0, 1}] and
P[g + 8, ...]; the A fragment of the P·V product wants columns t and t + 4 of each 8. The order of
the 8 keys inside a product is free (it is a sum), so the P·V product takes key 2t as its index t
and key 2t + 1 as t + 4: the S accumulator *is* the A fragment, and V's B fragment is read in the
same order (b0 = V[2t, g], b1 = V[2t + 1, g]).

**Shared layouts** (fp32, 16-byte vectors): K as [d/8][Bc][4][4] and V as [Bc/8][d][4][4]. Vector
(c, key, t) of K is (big K[key, 8c + t], big K[key, 8c + t + 4], small ..., small ...), the lane's
whole B fragment for one product: one 16-byte load per three products, and the 32 lanes of a
warp read 512 consecutive bytes (no bank conflicts). V likewise with (big V[8c + 2t, col],
big V[8c + 2t + 1, col], small, small). The loaders write one vector per item, consecutive lanes
consecutive vectors.

V's own head dim d_v (``head_dim_v``, a multiple of 8; d_v = d unless given): V's layout is
[Bc/8][d_v][4][4] and O's accumulators cover d_v columns; Q and K stay d wide.

fp16 and bf16 values are TF32 already: their K and V small parts are zero, and the A_big·B_small
products are skipped (two products per step instead of three). Q (scaled) and P are fp32 and
are split.
"""

import math

import numpy as np
from numba import cuda, float32, int32, uint64

from kernels.flash2_common import fmax, group_reductions, refusal
from kernels.flash2_common import phases as fast_phases
from kernels.mma import XCH_PER_THREAD, exp2, mma, split
from kernels.tiles import LN2, LOG2E, NEG_INF, ONE, ZERO, inline_device, make_tile_ops
from sandbox.vocabulary.runtime import using_simulator


#: It takes V's own head dim d_v: ``eligible`` and ``smem_bytes`` take ``head_dim_v`` (kernels/builds.py).
TAKES_HEAD_DIM_V = True


def eligible(schedule, head_dim, count_io=False, mask=None, head_dim_v=None):
    """Why the tensor-core build cannot run this (a string), or None when it can.

    It needs Br a multiple of 16 (a warp per 16 rows), Bc, head_dim and head_dim_v (None: head_dim)
    multiples of 8, and the thread tile that matches the tensor cores' fragments: thread_q = 2,
    thread_kv = Bc / 4.
    """
    s = schedule
    why = refusal(s, count_io, mask, "tensor-core", "tf32x3")
    if why is not None:
        return why
    if s.block_q % 16 or s.block_kv % 8:
        return f"Br={s.block_q}, Bc={s.block_kv} (needs Br a multiple of 16 and Bc of 8)"
    if s.thread_q != 2 or s.thread_kv * 4 != s.block_kv:
        return (f"thread tile {s.thread_q}x{s.thread_kv} (the tensor cores' fragments need "
                f"2x{s.block_kv // 4}: thread_q=2, thread_kv=Bc/4)")
    if head_dim % 8:
        return f"head_dim={head_dim} (needs a multiple of 8)"
    if head_dim_v is not None and head_dim_v % 8:
        return f"head_dim_v={head_dim_v} (needs a multiple of 8)"
    return None


#: Head dims above this keep Q's fragments in SRAM rather than in registers: at d = 128 the
#: registers (64 for Q, 64 for O) would leave the block too few for the S accumulators.
Q_REGISTERS_MAX_D = 64


#: With fewer 8-key groups per block than this, S's small products go to a second accumulator: a
#: warp's S product is NS chains of 3·d/8 dependent products on one accumulator each, and an H100
#: SM sub-partition with two warps needs about 8 chains per warp to keep its tensor core busy
#: (measured: m16n8k8 TF32 at 188 TFLOP/s with 4 chains, 262 with 8, about 300 at most).
TWO_ACCUMULATORS_BELOW = 8
S_UNROLL = 2


def smem_bytes(schedule, head_dim, head_dim_v=None):
    """Dynamic shared memory: K_j (Bc×d) and V_j (Bc×d_v; ``head_dim_v``, None: d), each split into
    big and small parts (8 bytes per element), and above Q_REGISTERS_MAX_D Q_i's fragments (4 bytes
    per element)."""
    q = 4 * schedule.block_q * head_dim if head_dim > Q_REGISTERS_MAX_D else 0
    if head_dim_v is None or head_dim_v == head_dim:
        return 16 * schedule.block_kv * head_dim + q
    return 8 * schedule.block_kv * (head_dim + head_dim_v) + q


def min_blocks_per_sm(schedule, head_dim):
    """Blocks per SM the register cap makes room for (kernels/launch.py): 1, all 255 registers
    (H100, N = 4096: capped at 128 for two blocks, 128×32 at d = 64 spilled and ran 3.22 ms
    against 3.01, 128×16 at d = 128 7.04 against 6.80)."""
    return 1


def phases(dtype):
    """The tensor-core build's kernels (sandbox/vocabulary/kinds.py): flash2's one "main" phase, its arguments unchanged."""
    return fast_phases(make_flash2_tc, dtype)


def tc_schedule(block_q, block_kv, **kwargs):
    """The tensor-core build's Schedule for Br × Bc blocks (its thread tile is fixed: 2 × Bc/4)."""
    from sandbox.vocabulary.schedule import Schedule

    return Schedule("flash2", block_q=block_q, block_kv=block_kv, thread_q=2, thread_kv=block_kv // 4,
                    math="tf32x3", **kwargs)


#: It applies a score_mod (kernels/builds.py asks): elementwise on the S accumulator.
TAKES_SCORE_MOD = True

#: It takes grouped K/V heads (kernels/builds.py asks): query head h reads K/V head h // (H / H_kv).
TAKES_GROUPED = True


def make_flash2_tc(schedule, head_dim, dtype, count_io, causal, mask=None, head_dim_v=None, score_mod=None):
    """Build the tensor-core flash2 kernel (see the module docstring; V and O ``head_dim_v`` wide,
    None: ``head_dim``). Returns (kernel, smem_bytes, grid(problem)).

    ``score_mod``: a sandbox.vocabulary.score_mods.ScoreMod or None, applied to each in-range entry
    of S as the counting build applies it (S taken back from log2 units first)."""
    why = eligible(schedule, head_dim, count_io, mask, head_dim_v)
    if why is not None:
        raise ValueError(f"the tensor-core flash2 build cannot run {schedule} at d={head_dim}: {why}")
    t = make_tile_ops(schedule, head_dim, False, causal, dtype, score_mod=score_mod)
    HAS_MOD, modded = t.HAS_MOD, t.modded
    to_f32, from_f32, IN = t.to_f32, t.from_f32, t.IN
    BR, BC, NT, D, CAUSAL = t.BR, t.BC, t.NT, t.D, t.CAUSAL
    DV = D if head_dim_v is None else head_dim_v  # V's and O's columns
    SAME = DV == D  # d_v = d: the code without d_v (a compile-time constant: one branch is compiled)
    NS, KD, KDV = BC // 8, D // 8, DV // 8  # 8-key groups of a K/V block; 8-column groups of d, of d_v
    RK, RV = uint64(BC * 16), uint64(DV * 16)  # floats per 8-column group of K, per 8-key group of V
    OV = uint64(KD * BC * 16)  # V's offset
    QS = D > Q_REGISTERS_MAX_D  # Q's fragments in SRAM (else in registers)
    OQ = uint64(OV + NS * DV * 16)  # Q's offset: [warp][KD][lane][4], each lane its own vectors
    n_smem = smem_bytes(schedule, head_dim, head_dim_v)
    EXACT = np.dtype(dtype).itemsize == 2  # fp16/bf16: K and V are TF32 already (small parts zero)
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange
    NRED = NT if using_simulator() else 1  # the simulator's row reductions
    row_max, row_sum = group_reductions((2, 1))  # a row's 4 lanes: xor 2, xor 1
    ITEMS = BC * D // 2  # 16-byte vectors of K per block
    IT = -(-ITEMS // NT)
    FULL = ITEMS % NT == 0
    NBUF = 2 * IT
    ITEMS_V = BC * DV // 2  # ... and of V (ITEMS at d_v = d)
    IT_V = -(-ITEMS_V // NT)
    FULL_V = ITEMS_V % NT == 0
    NBUF_V = 2 * IT_V
    S4 = NT // 4  # e >> 2 grows by this from one item to the next
    # S's accumulators: below 8 key groups a warp's independent chains of products are too few to
    # hide the tensor cores' latency (kernels/mma.py), and the small products take a second one
    TWO = NS < TWO_ACCUMULATORS_BELOW
    KU = S_UNROLL if KD % S_UNROLL == 0 else 1

    @inline_device
    def put(sm, at, x0, x1):
        """The vector (big x0, big x1, small x0, small x1) at sm[at]: converted first, then stored
        together (one 16-byte store)."""
        b0, s0 = split(x0)
        b1, s1 = split(x1)
        sm[at] = b0
        sm[at + uint64(1)] = b1
        sm[at + uint64(2)] = s0
        sm[at + uint64(3)] = s1

    @inline_device
    def mma3(xch, tid, ab0, ab1, ab2, ab3, as0, as1, as2, as3, bb0, bb1, bs0, bs1, c0, c1, c2, c3):
        """C + A·B in fp32 precision, three TF32 products on one accumulator: A_small·B_big,
        A_big·B_small (skipped for fp16/bf16 inputs: B_small = 0), A_big·B_big."""
        d0, d1, d2, d3 = mma(xch, tid, as0, as1, as2, as3, bb0, bb1, c0, c1, c2, c3)
        if not EXACT:
            d0, d1, d2, d3 = mma(xch, tid, ab0, ab1, ab2, ab3, bs0, bs1, d0, d1, d2, d3)
        return mma(xch, tid, ab0, ab1, ab2, ab3, bb0, bb1, d0, d1, d2, d3)

    def item_of(m):
        """The thread's item it as (e >> 2) % m and (e >> 2) // m, e = tid + it·NT (K: m = Bc,
        giving the key and the 8-column group; V: m = d, the column and the 8-key group), from
        t4 = tid >> 2, written so that each item adds only compile-time constants: its loads and
        stores share one address and take constant offsets."""

        @inline_device
        def item(t4, it):
            if S4 % m == 0:
                return t4 % uint64(m), t4 // uint64(m) + uint64(it * (S4 // m))
            if m % S4 == 0:  # (t4 < S4, and (it·S4) % m <= m - S4)
                return t4 + uint64((it * S4) % m), uint64((it * S4) // m)
            e4 = t4 + uint64(it * S4)
            return e4 % uint64(m), e4 // uint64(m)

        return item

    k_item, v_item = item_of(BC), item_of(DV)

    @inline_device
    def fetch_k(k, b, h, k0, kv_len, buf, tid):
        """K_j: HBM -> registers, the thread's items (module docstring), unconverted (a conversion
        here would wait for the load); zeros past the last key."""
        u0 = uint64(k0)
        n = uint64(kv_len)
        tt = uint64(tid) & uint64(3)
        t4 = uint64(tid) >> uint64(2)
        kh = k[b, h]  # (one base address: the items' loads differ by constants)
        for it in range(IT):
            x0 = IN(0)
            x1 = IN(0)
            if FULL or uint64(tid) + uint64(it * NT) < ITEMS:
                # vector (c, key, tt): K[key, 8c + tt] and K[key, 8c + tt + 4]
                key, c = k_item(t4, it)
                if key < n:
                    x0 = kh[u0 + key, uint64(8) * c + tt]
                    x1 = kh[u0 + key, uint64(8) * c + tt + uint64(4)]
            buf[2 * it] = x0
            buf[2 * it + 1] = x1

    @inline_device
    def fetch_v(v, b, h, k0, kv_len, buf, tid):
        """V_j: HBM -> registers, as fetch_k."""
        u0 = uint64(k0)
        n = uint64(kv_len)
        tt = uint64(tid) & uint64(3)
        t4 = uint64(tid) >> uint64(2)
        vh = v[b, h]
        for it in range(IT_V):
            x0 = IN(0)
            x1 = IN(0)
            if FULL_V or uint64(tid) + uint64(it * NT) < ITEMS_V:
                # vector (c, col, tt): V[8c + 2tt, col] and V[8c + 2tt + 1, col]
                col, c = v_item(t4, it)
                r = uint64(8) * c + uint64(2) * tt
                if r < n:
                    x0 = vh[u0 + r, col]
                if r + uint64(1) < n:
                    x1 = vh[u0 + r + uint64(1), col]
            buf[2 * it] = x0
            buf[2 * it + 1] = x1

    @inline_device
    def store_k(buf, sm, tid):
        """The fetched K items: split into (big, small) and stored, one 16-byte vector each."""
        tt = uint64(tid) & uint64(3)
        t4 = uint64(tid) >> uint64(2)
        for it in range(IT):
            if FULL or uint64(tid) + uint64(it * NT) < ITEMS:
                key, c = k_item(t4, it)
                put(sm, (c * uint64(BC) + key) * uint64(16) + tt * uint64(4), to_f32(buf[2 * it]),
                    to_f32(buf[2 * it + 1]))

    @inline_device
    def store_v(buf, sm, tid):
        """The fetched V items, as store_k."""
        tt = uint64(tid) & uint64(3)
        t4 = uint64(tid) >> uint64(2)
        for it in range(IT_V):
            if FULL_V or uint64(tid) + uint64(it * NT) < ITEMS_V:
                col, c = v_item(t4, it)
                put(sm, OV + (c * uint64(DV) + col) * uint64(16) + tt * uint64(4), to_f32(buf[2 * it]),
                    to_f32(buf[2 * it + 1]))

    def kernel(q, k, v, o, lse, scale, counters):
        if q.shape[3] != D or k.shape[3] != D or v.shape[3] != DV or o.shape[3] != DV:
            return  # (never: the launcher checks; this tells the compiler the row lengths are D, DV)
        tid = cuda.threadIdx.x
        w = tid // 32
        lane = tid - 32 * w
        g = lane // 4
        tq = lane - 4 * g
        bh = cuda.blockIdx.y
        n_heads = q.shape[1]
        b = bh // n_heads
        h = bh - b * n_heads
        hk = h // (n_heads // k.shape[1])  # the query head's K/V head (grouped: H / H_kv query heads per K/V head)
        n_q = q.shape[2]
        n_kv = k.shape[2]
        qb = cuda.blockIdx.x
        if CAUSAL:  # the longest blocks (most keys) first: the shortest fill the last wave's gaps
            qb = cuda.gridDim.x - 1 - qb
        q0 = qb * BR
        q_len = min(BR, n_q - q0)
        sm = cuda.shared.array(0, float32, alignment=ALIGN)
        xch = cuda.shared.array(NX, float32)  # the simulator's warp exchange (unused on the GPU)
        red = cuda.shared.array(NRED, float32)  # the simulator's row reductions (unused on the GPU)
        s2 = scale * LOG2E  # S in log2 units: exp(x) = exp2(x·log2 e)
        r_lo = 16 * w + g  # the thread's two rows in the block
        r_hi = r_lo + 8

        qf = cuda.local.array((KD if not QS else 1, 4), float32)  # Q's A fragments, raw fp32 (split per use)
        qv = OQ + uint64(w * KD * 128 + 4 * lane)  # ... or in SRAM: the lane's vector of group 0
        acc = cuda.local.array((KDV, 4), float32)  # O's accumulators, 8 columns of d_v per group
        s = cuda.local.array((NS, 4), float32)  # S (then P): 8 keys per group; Q_big·K_big
        sx = cuda.local.array((NS if TWO else 1, 4), float32)  # Q_small·K_big + Q_big·K_small (TWO)
        m = cuda.local.array(2, float32)
        l = cuda.local.array(2, float32)
        kb = cuda.local.array(NBUF, IN)  # the thread's items of K_{j+1}
        vb = cuda.local.array(NBUF_V, IN)  # ... and of V_{j+1}
        for i in range(2):
            m[i] = NEG_INF
            l[i] = ZERO
        if not SAME:
            for kk in range(KDV):
                for i in range(4):
                    acc[kk, i] = ZERO
        for kk in range(KD):
            if SAME:
                for i in range(4):
                    acc[kk, i] = ZERO
            col = 8 * kk + tq
            x0 = ZERO
            x1 = ZERO
            x2 = ZERO
            x3 = ZERO
            if r_lo < q_len:
                x0 = to_f32(q[b, h, q0 + r_lo, col]) * s2
                x2 = to_f32(q[b, h, q0 + r_lo, col + 4]) * s2
            if r_hi < q_len:
                x1 = to_f32(q[b, h, q0 + r_hi, col]) * s2
                x3 = to_f32(q[b, h, q0 + r_hi, col + 4]) * s2
            if QS:  # the lane's own vector: no other thread reads it (no barrier)
                at = qv + uint64(kk * 128)
                sm[at] = x0
                sm[at + uint64(1)] = x1
                sm[at + uint64(2)] = x2
                sm[at + uint64(3)] = x3
            else:
                qf[kk, 0] = x0
                qf[kk, 1] = x1
                qf[kk, 2] = x2
                qf[kk, 3] = x3

        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        n_blocks = (kv_end + BC - 1) // BC
        vk = uint64(16 * g + 4 * tq)  # the lane's vector in a K or V group (key or column g, lane t)
        fetch_k(k, b, hk, 0, min(BC, n_kv), kb, tid)
        fetch_v(v, b, hk, 0, min(BC, n_kv), vb, tid)
        store_k(kb, sm, tid)
        store_v(vb, sm, tid)
        # barrier: K_0, V_0 are in SRAM (and Q's fragments, where they are there, each lane's own)
        cuda.syncthreads()
        for j in range(n_blocks):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            k1 = k0 + BC
            more = j + 1 < n_blocks
            if more:  # K_{j+1}: HBM -> registers, while S_j is computed
                fetch_k(k, b, hk, k1, min(BC, n_kv - k1), kb, tid)

            # -- S = Q_i K_jᵀ
            for n in range(NS):
                for i in range(4):
                    s[n, i] = ZERO
                    if TWO:
                        sx[n, i] = ZERO
            for kk0 in range(0, KD, KU):
              for ku in range(KU):
                kk = kk0 + ku
                if QS:
                    at = qv + uint64(kk * 128)
                    a0 = sm[at]
                    a1 = sm[at + uint64(1)]
                    a2 = sm[at + uint64(2)]
                    a3 = sm[at + uint64(3)]
                else:
                    a0 = qf[kk, 0]
                    a1 = qf[kk, 1]
                    a2 = qf[kk, 2]
                    a3 = qf[kk, 3]
                ab0, as0 = split(a0)
                ab1, as1 = split(a1)
                ab2, as2 = split(a2)
                ab3, as3 = split(a3)
                for n in range(NS):
                    at = uint64(kk) * RK + uint64(n * 128) + vk
                    bb0 = sm[at]
                    bb1 = sm[at + uint64(1)]
                    bs0 = sm[at + uint64(2)]
                    bs1 = sm[at + uint64(3)]
                    if TWO:  # the products' latency: chains of KD and 2·KD, not 3·KD
                        s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma(
                            xch, tid, ab0, ab1, ab2, ab3, bb0, bb1, s[n, 0], s[n, 1], s[n, 2], s[n, 3])
                        sx[n, 0], sx[n, 1], sx[n, 2], sx[n, 3] = mma(
                            xch, tid, as0, as1, as2, as3, bb0, bb1, sx[n, 0], sx[n, 1], sx[n, 2], sx[n, 3])
                        if not EXACT:
                            sx[n, 0], sx[n, 1], sx[n, 2], sx[n, 3] = mma(
                                xch, tid, ab0, ab1, ab2, ab3, bs0, bs1, sx[n, 0], sx[n, 1], sx[n, 2], sx[n, 3])
                    else:
                        s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma3(
                            xch, tid, ab0, ab1, ab2, ab3, as0, as1, as2, as3, bb0, bb1, bs0, bs1,
                            s[n, 0], s[n, 1], s[n, 2], s[n, 3])
            if TWO:
                for n in range(NS):
                    for i in range(4):
                        s[n, i] += sx[n, i]  # the small terms first, then the big one

            if HAS_MOD:  # S' = score_mod(S) on the in-range entries, S in natural units (the rest is cut below)
                for i in range(2):
                    row = q0 + r_lo + 8 * i
                    if row < n_q:
                        for n in range(NS):
                            for e in range(2):
                                c = 8 * n + 2 * tq + e
                                if c < kv_len:
                                    s[n, 2 * i + e] = modded(s[n, 2 * i + e] * LN2, b, h, row, k0 + c) * LOG2E

            # -- online softmax per row (the fast build's, NaN semantics included): rows r_lo
            # (s[n, 0], s[n, 1]) and r_hi (s[n, 2], s[n, 3]); keys k0 + 8n + 2t + {0, 1}
            if kv_len < BC or (CAUSAL and k0 + BC - 1 > q0):  # a block with masked keys (block-uniform)
                for i in range(2):
                    cut = kv_len  # the row's keys from k0 + cut on are masked
                    if CAUSAL:
                        cut = min(cut, q0 + r_lo + 8 * i - k0 + 1)
                    cut32 = int32(cut)
                    for n in range(NS):
                        for e in range(2):
                            if int32(8 * n + 2 * tq + e) >= cut32:
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
                for kk in range(KDV):
                    acc[kk, 2 * i] *= alpha
                    acc[kk, 2 * i + 1] *= alpha

            # barrier: every thread is done reading K_j
            cuda.syncthreads()
            if more:  # K_{j+1}: registers -> SRAM; V_{j+1}: HBM -> registers, while P V_j is computed
                store_k(kb, sm, tid)
                fetch_v(v, b, hk, k1, min(BC, n_kv - k1), vb, tid)

            # -- O_i += P V_j: the S accumulator is the A fragment (keys 2t, 2t+1 as indices t, t+4)
            for n in range(NS):
                pb0, ps0 = split(s[n, 0])
                pb1, ps1 = split(s[n, 2])
                pb2, ps2 = split(s[n, 1])
                pb3, ps3 = split(s[n, 3])
                for kk in range(KDV):
                    at = OV + uint64(n) * RV + uint64(kk * 128) + vk
                    acc[kk, 0], acc[kk, 1], acc[kk, 2], acc[kk, 3] = mma3(
                        xch, tid, pb0, pb1, pb2, pb3, ps0, ps1, ps2, ps3,
                        sm[at], sm[at + uint64(1)], sm[at + uint64(2)], sm[at + uint64(3)],
                        acc[kk, 0], acc[kk, 1], acc[kk, 2], acc[kk, 3])

            # barrier: every thread is done reading V_j (and K_{j+1} is in SRAM)
            cuda.syncthreads()
            if more:  # V_{j+1}: registers -> SRAM (the next block's first barrier precedes its P V)
                store_v(vb, sm, tid)

        # -- O_i = diag(l_i)^-1 O_i -> HBM (a row that saw no key: O = 0); L_i = m_i + log l_i
        for i in range(2):
            l[i] = row_sum(l[i], red, tid)
        for i in range(2):
            rr = r_lo + 8 * i
            if rr < q_len:
                inv = ZERO
                if l[i] != ZERO:  # NaN passes through
                    inv = ONE / l[i]
                for kk in range(KDV):
                    col = 8 * kk + 2 * tq
                    o[b, h, q0 + rr, col] = from_f32(acc[kk, 2 * i] * inv)
                    o[b, h, q0 + rr, col + 1] = from_f32(acc[kk, 2 * i + 1] * inv)
                if tq == 0:
                    lse[b, h, q0 + rr] = m[i] * LN2 + math.log(l[i]) if l[i] != ZERO else NEG_INF

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, n_smem, grid
