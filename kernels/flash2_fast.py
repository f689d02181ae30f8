"""The fast build of flash2 (FlashAttention-2 order): register-tiled outer products, prefetched K/V.

Same schedule, same loop order and the same HBM traffic as ``kernels/flash2.py`` (which is the
counting build: every access there has its counter next to it). What differs is where S lives and
how the two products are computed:

    Q_i · scale · log2 e: HBM -> SRAM, transposed (Qᵀ: one row per k; S comes out in log2 units)
    for each K/V block j (causal: only blocks with a key <= the block's last query):
        start loading K_{j+1} from HBM into registers (it arrives while S is computed)
        S = Q_i K_jᵀ in registers: for each k, one outer product of a column of Q_i and a row of
            K_jᵀ over the thread's thread_q × thread_kv tile
        m_ij: per row, in registers; reduced across the threads_kv threads of a row with warp
              shuffles (no SRAM round trip, no single-thread row loop); masks only in a ragged
              last block or a causal diagonal block
        l_ij: each thread keeps its own part of the row sum (alpha is the row's); the parts
              are reduced once, after the last block
              (a score_mod, if any, first: S' = score_mod(S) on the in-range entries)
        P -> SRAM (transposed);  K_{j+1}: registers -> SRAM;  start loading V_{j+1}
        O_i = diag(alpha) O_i + P V_j in registers: for each key, one outer product of a column
              of P and a row of V_j
        V_{j+1}: registers -> SRAM
    O_i = diag(l_i)⁻¹ O_i -> HBM;  L_i = m_i + log l_i -> HBM

Each step of the two products loads thread_q + thread_kv (or thread_q + d/threads_kv) floats from
SRAM, in vectors of up to four, for thread_q·thread_kv (or thread_q·d/threads_kv) FMAs: the bigger
the thread tile, the fewer loads per FMA (the tuner picks; sandbox/lab/autotune.py). Its SRAM counts
are therefore *not* those of the counting build (``simulate`` models the counting build); its HBM
reads and writes are the same tiles in the same order.

Thread (ty, tx) (which lanes: :func:`lane_layout`) owns rows VM·ty + VM·TY·g + e of S and of O
(VM = 4, 2 or 1, the widest that tiles thread_q), columns VN·tx + VN·TX·g + e of S and
VO·tx + VO·TX·g + e of O. The rows are the same in both, so alpha, m and l never leave the thread.

Shared layouts (fp32; every row starts 16-byte aligned; see :func:`layout`):

- Qᵀ [d][Br+4], Kᵀ [d][Bc+4], Pᵀ [Bc][Br+4]: a step reads one row. The threads of a warp read
  consecutive vectors or the same one (a broadcast): no bank conflicts. The loaders write Qᵀ and Kᵀ
  from 4 × 8 patches of Q and K (4 rows, 8 consecutive columns: 32-byte global segments); the 4
  floats of padding put the patch's 32 elements in 32 different banks.
- V [Bc][d]: a step reads one row, as above; the loader writes it row-major.

Indices are unsigned (Numba adds a negative-index wraparound to signed ones, which hides the
alignment from the vectorizer) and the shared array is declared 16-byte aligned, so NVVM emits
``ld.shared.v4.f32``.

The CUDA simulator's fallbacks are chosen in one place each: the row reductions' and fmax's in
``kernels/flash2_common.py`` (no warp shuffles there: a small shared array instead), the shared
array's alignment here (the simulator has no aligned shared arrays).
"""

import math

from numba import cuda, float32, uint64

from kernels.flash2_common import fmax, group_reductions, refusal
from kernels.flash2_common import phases as fast_phases
from kernels.smem import smem_per_sm
from kernels.tiles import LN2, LOG2E, NEG_INF, ONE, ZERO, inline_device, make_tile_ops
from sandbox.vocabulary.runtime import using_simulator

PAD = 4  # floats of padding per row of the transposed tiles
#: With one block of 8 warps an SM waits on shared-memory latency (ncu, H100): the register
#: cap makes room for up to MAX_BLOCKS_PER_SM blocks, but never below MIN_REGISTERS per thread.
MAX_BLOCKS_PER_SM, MIN_REGISTERS = 4, 128
#: K_{j+1} and V_{j+1} are loaded into registers during the products on block j (hiding the HBM
#: latency) when a thread's share is at most this many floats; else after the barriers, into SRAM.
MAX_PREFETCH = 32


def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the fast build cannot run this (a string), or None when it can.

    It needs an exact thread layout (Br = threads_q·thread_q, Bc = threads_kv·thread_kv), a
    power-of-two threads_kv ≤ 32 (a row's threads are one shuffle group inside a warp), and a
    head_dim that threads_kv divides (each thread's O columns).
    """
    s = schedule
    why = refusal(s, count_io, mask, "fast", "fma")
    if why is not None:
        return why
    if s.block_q != s.threads_q * s.thread_q or s.block_kv != s.threads_kv * s.thread_kv:
        return "thread tiles that do not divide the blocks"
    tx = s.threads_kv
    if tx & (tx - 1) or tx > 32:
        return f"threads_kv={tx} (needs a power of two <= 32)"
    if head_dim % tx:
        return f"head_dim={head_dim} (needs a multiple of threads_kv={tx})"
    return None


def smem_bytes(schedule, head_dim):
    """Dynamic shared memory of the fast build, in bytes."""
    return layout(schedule, head_dim)[1]


def _vec(n):
    """The widest vector (4, 2 or 1 floats) that tiles n: a thread's row, column or O-column groups."""
    return 4 if n % 4 == 0 else 2 if n % 2 == 0 else 1


def _round4(n):
    """n rounded up to a multiple of 4 floats (16 bytes)."""
    return -(-n // 4) * 4


def _stride(n):
    """Row stride (floats) of a transposed tile with n columns: rows 16-byte aligned, plus PAD floats."""
    return _round4(n) + PAD


def layout(schedule, head_dim):
    """(offsets {Q, K, V, P} in floats, shared bytes) of the fast build's dynamic shared memory.

    Qᵀ is d rows of Br + 4 floats (rounded up to 4), Kᵀ d rows of Bc + 4, V Bc rows of d (rounded
    up to 4), Pᵀ Bc rows of Br + 4."""
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    sizes = {"Q": d * _stride(br), "K": d * _stride(bc), "V": bc * _round4(d), "P": bc * _stride(br)}
    off, at = {}, 0
    for name, n in sizes.items():
        off[name] = at
        at += n
    return off, 4 * at


def min_blocks_per_sm(schedule, head_dim):
    """Blocks per SM the register cap makes room for (kernels/launch.py): as many as the SM's shared
    memory lets reside (the device's, kernels/smem.py; an H100's under the simulator), at most
    MAX_BLOCKS_PER_SM, and no more than leave MIN_REGISTERS per thread; at least 1."""
    per_sm, reserved = smem_per_sm()
    fit = per_sm // (smem_bytes(schedule, head_dim) + reserved)
    by_registers = 65536 // (schedule.threads * MIN_REGISTERS)
    return max(1, min(MAX_BLOCKS_PER_SM, fit, by_registers))


def lane_layout(schedule):
    """(paired, offsets): how thread tid maps to (ty, tx) (:func:`thread_coords`), and the xor
    offsets that reach the other threads of its row.

    Plain: (tid // TX, tid % TX); a row's TX threads are consecutive lanes (offsets TX/2, ..., 1).

    Paired, for TX = 2, 4, 8 or 16 and whole warps (BENCHMARKS.md, Fast build): lane l of warp w is
    tx = (l >> 1) mod TX, ty = (32 / TX)·w + (l & 1) + 2·(l >> (1 + log2 TX)), so the four lanes of
    every quad read 2 row vectors and 2 column vectors. On the H100 an ``ld.shared.v4`` then costs
    2 wavefronts per warp (its minimum); with 4 distinct vectors in a quad it costs 4, whatever the
    banks (ncu on a micro-benchmark; BENCHMARKS.md, Fast build). The plain
    layout puts 4 column vectors in a quad (tx = l mod TX), so every S and O column load paid 4.
    A row's threads differ in lane bits 1 ... log2 TX (offsets TX, ..., 2).
    """
    tx = schedule.threads_kv
    paired = tx in (2, 4, 8, 16) and schedule.threads % 32 == 0
    offs, o = [], tx // 2
    while o > 0:
        offs.append(2 * o if paired else o)
        o //= 2
    return paired, tuple(offs)


def thread_coords(tid, TX, paired):
    """(ty, tx) of thread ``tid`` (:func:`lane_layout`); plain integer arithmetic, jitted into the kernel."""
    if paired:
        ln = tid & 31
        ty = (32 // TX) * (tid >> 5) + (ln & 1) + 2 * (ln // (2 * TX))
        return ty, (ln >> 1) & (TX - 1)
    ty = tid // TX
    return ty, tid - ty * TX


#: It applies a score_mod (kernels/builds.py asks): elementwise on the thread's S tile.
TAKES_SCORE_MOD = True

#: It takes grouped K/V heads (kernels/builds.py asks): query head h reads K/V head h // (H / H_kv).
TAKES_GROUPED = True


def make_flash2_fast(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None):
    """Build the fast flash2 kernel (see the module docstring). Returns (kernel, smem_bytes, grid(problem)).

    ``score_mod``: a sandbox.vocabulary.score_mods.ScoreMod or None, applied to each in-range entry
    of S as the counting build applies it (S taken back from log2 units first)."""
    why = eligible(schedule, head_dim, count_io, mask)
    if why is not None:
        raise ValueError(f"the fast flash2 build cannot run {schedule} at d={head_dim}: {why}")
    t = make_tile_ops(schedule, head_dim, False, causal, dtype, score_mod=score_mod)
    HAS_MOD, modded = t.HAS_MOD, t.modded
    to_f32, from_f32, IN = t.to_f32, t.from_f32, t.IN
    BR, BC, TM, TN, TY, TX, NT, D = t.BR, t.BC, t.TM, t.TN, t.TY, t.TX, t.NT, t.D
    CAUSAL = t.CAUSAL
    DO = D // TX  # O columns per thread
    VM, VN, VO = _vec(TM), _vec(TN), _vec(DO)  # vector widths of a thread's rows, S columns, O columns
    QS, KS, VS = _stride(BR), _stride(BC), _round4(D)  # row strides of Qᵀ and Pᵀ, Kᵀ, V
    off, smem_bytes = layout(schedule, head_dim)
    OQ, OK, OV, OP = (uint64(off[n]) for n in ("Q", "K", "V", "P"))
    ALIGN = None if using_simulator() else 16
    NRED = NT if using_simulator() else 1  # the simulator's row reductions (one float per thread)
    PAIRED, OFFSETS = lane_layout(schedule)
    row_max, row_sum = group_reductions(OFFSETS)
    coords = cuda.jit(device=True)(thread_coords)

    # -- loaders: each has a fetch (HBM -> registers), a put (registers -> SRAM) and a load (both).
    # A thread's it-th element is (r0 + dr(it), c0 + dc(it)) with (r0, c0) its own and the deltas
    # compile-time constants once the loop over it is unrolled: one base address per thread.
    # Transposing (Qᵀ, Kᵀ): warp w, lane ln take patch w + it·W (W warps), a patch being 4 rows ×
    # 8 columns (32-byte global segments; the transposed stores hit 32 different banks, see _stride).
    # Row-major (V): consecutive threads, consecutive columns.
    W = -(-NT // 32)
    PB = -(-D // 8)  # patches per 4-row band

    def transposed(rows):
        iters = -(-(-(-rows // 4) * PB * 32) // NT)  # (patches / W when NT % 32 == 0)
        full = rows % 4 == 0 and D % 8 == 0 and (rows // 4 * PB) % W == 0 and NT % 32 == 0

        @cuda.jit(device=True)
        def where(tid, it):
            w = tid // 32
            ln = tid - w * 32
            if NT % 32 == 0 and W % PB == 0:  # a band per PB warps
                r0 = 4 * (w // PB) + ln // 8
                dr = 4 * it * (W // PB)
                c = 8 * (w - (w // PB) * PB) + (ln & 7)
            elif NT % 32 == 0 and PB % W == 0:  # a band per PB / W iterations
                r0 = ln // 8
                dr = 4 * (it // (PB // W))
                c = 8 * (w + (it % (PB // W)) * W) + (ln & 7)
            else:  # (small or odd shapes)
                p = (tid + it * NT) // 32
                ln = tid + it * NT - p * 32
                r0 = 0
                dr = 4 * (p // PB) + ln // 8
                c = 8 * (p - (p // PB) * PB) + (ln & 7)
            return r0, dr, c, full or (dr < rows - r0 and c < D)

        return where, iters

    def row_major(rows):
        iters = -(-rows * D // NT)
        full = (rows * D) % NT == 0

        @cuda.jit(device=True)
        def where(tid, it):
            if NT % D == 0:
                r0 = tid // D
                dr = it * (NT // D)
                c = tid - r0 * D
            elif D % NT == 0:
                r0 = 0
                dr = it // (D // NT)
                c = tid + (it % (D // NT)) * NT
            else:
                e = tid + it * NT
                r0 = 0
                dr = e // D
                c = e - dr * D
            return r0, dr, c, full or dr < rows - r0

        return where, iters

    def loaders(where, iters, t_stride, r_stride):
        """(fetch, put, load) for a tile at sm[base + c·t_stride + r·r_stride]. A thread's row is
        r0 + dr, dr being a constant once the loop is unrolled: the bound checks compare dr with
        a limit computed once, and the addresses are a base plus constants."""

        @cuda.jit(device=True)
        def fetch(src, b, h, row0, n_rows, buf, tid):
            # the stored values, unconverted: a conversion here would wait for the load
            for it in range(iters):
                r0, dr, c, ok = where(tid, it)
                x = IN(0)
                if ok and dr < n_rows - r0:
                    x = src[b, h, uint64(row0 + r0) + uint64(dr), uint64(c)]
                buf[it] = x

        @cuda.jit(device=True)
        def put(buf, sm, base, tid):
            for it in range(iters):
                r0, dr, c, ok = where(tid, it)
                if ok:
                    sm[base + uint64(c * t_stride + r0 * r_stride) + uint64(dr * r_stride)] = to_f32(buf[it])

        @cuda.jit(device=True)
        def load(src, b, h, row0, n_rows, sm, base, tid, factor):
            for it in range(iters):
                r0, dr, c, ok = where(tid, it)
                if ok:
                    x = ZERO
                    if dr < n_rows - r0:
                        x = to_f32(src[b, h, uint64(row0 + r0) + uint64(dr), uint64(c)]) * factor
                    sm[base + uint64(c * t_stride + r0 * r_stride) + uint64(dr * r_stride)] = x

        return fetch, put, load

    where_q, IT_Q = transposed(BR)
    where_k, IT_K = transposed(BC)
    where_v, IT_V = row_major(BC)
    _, _, load_q = loaders(where_q, IT_Q, QS, 1)
    fetch_k, put_k, load_k = loaders(where_k, IT_K, KS, 1)
    fetch_v, put_v, load_v = loaders(where_v, IT_V, 1, VS)
    PREFETCH = max(IT_K, IT_V) <= MAX_PREFETCH  # else K_{j+1}, V_{j+1} go straight to SRAM after the barriers
    NBUF = max(IT_K, IT_V) if PREFETCH else 1

    # -- the two products: one outer product of two vectors read from SRAM per step (k or key),
    # software-pipelined: the vectors of step i+1 are loaded before the FMAs of step i, so no FMA
    # waits on its own loads (ncu, H100: 13% of warp stalls were FMAs waiting on the loads
    # just above them at the top of each loop iteration). Eight steps per loop iteration, written
    # out (NVVM does not unroll these loops; unrolled, every address is a base register plus a
    # constant), then one at a time.
    def outer_product(OA, SA, OB, SB, NB, VB, N):
        """product(sm, ra, rb, a0, b0, a1, b1, acc): acc += Σ_i A[rows, i] ⊗ B[i, cols] over the N
        steps, with row i of A at sm[OA + i·SA + ra + ...] (the thread's TM rows, in vectors of VM)
        and of B at sm[OB + i·SB + rb + ...] (its NB columns, in vectors of VB); (a0, b0) and
        (a1, b1) are the two register buffers."""
        NG = N // 8

        @inline_device
        def ld(sm, i, ra, rb, av, bv):
            arow = OA + uint64(i * SA) + ra
            brow = OB + uint64(i * SB) + rb
            for g in range(TM // VM):
                for e in range(VM):
                    av[g * VM + e] = sm[arow + uint64(g * VM * TY + e)]
            for g in range(NB // VB):
                for e in range(VB):
                    bv[g * VB + e] = sm[brow + uint64(g * VB * TX + e)]

        # A step's FMAs run along the longer of its two vectors, so that each register value
        # read feeds more consecutive FMAs (ptxas's operand-reuse cache); row by row on a tie.
        # H100, N = 4096: 128×64 8×4 at d = 128 (S column by column, O row by row)
        # 6.99 and 7.03 ms against 7.22 and 7.10 all row by row; 8×8 at d = 64 row by row 3.47
        # ms against 3.75 all column by column.
        if NB < TM:

            @inline_device
            def fma(av, bv, acc):
                for c in range(NB):
                    for a in range(TM):
                        acc[a, c] += av[a] * bv[c]

        else:

            @inline_device
            def fma(av, bv, acc):
                for a in range(TM):
                    for c in range(NB):
                        acc[a, c] += av[a] * bv[c]

        @inline_device
        def pair(sm, i, ra, rb, a0, b0, a1, b1, acc, last):
            # steps i, i+1; (a0, b0) holds step i on entry and step i+2 on exit (unless last)
            ld(sm, i + 1, ra, rb, a1, b1)
            fma(a0, b0, acc)
            if not last:
                ld(sm, i + 2, ra, rb, a0, b0)
            fma(a1, b1, acc)

        @inline_device
        def group(sm, i, ra, rb, a0, b0, a1, b1, acc, last):
            # steps i ... i+7; (a0, b0) holds step i on entry and step i+8 on exit (unless last)
            pair(sm, i, ra, rb, a0, b0, a1, b1, acc, False)
            pair(sm, i + 2, ra, rb, a0, b0, a1, b1, acc, False)
            pair(sm, i + 4, ra, rb, a0, b0, a1, b1, acc, False)
            pair(sm, i + 6, ra, rb, a0, b0, a1, b1, acc, last)

        @inline_device
        def product(sm, ra, rb, a0, b0, a1, b1, acc):
            if NG > 0:
                ld(sm, 0, ra, rb, a0, b0)
                for i in range(0, 8 * (NG - 1), 8):
                    group(sm, i, ra, rb, a0, b0, a1, b1, acc, False)
                group(sm, 8 * (NG - 1), ra, rb, a0, b0, a1, b1, acc, True)
            for i in range(8 * NG, N):
                ld(sm, i, ra, rb, a0, b0)
                fma(a0, b0, acc)

        return product

    s_product = outer_product(OQ, QS, OK, KS, TN, VN, D)  # S = Σ_k Q[rows, k] ⊗ K[cols, k] (Qᵀ and Kᵀ rows k)
    pv_product = outer_product(OP, QS, OV, VS, DO, VO, BC)  # O += Σ_j P[rows, j] ⊗ V[j, cols] (Pᵀ and V rows j)

    def kernel(q, k, v, o, lse, scale, counters):
        if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or o.shape[3] != D:
            return  # (never: the launcher checks; this tells the compiler the row length is D)
        tid = cuda.threadIdx.x
        ty, tx = coords(tid, TX, PAIRED)
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
        red = cuda.shared.array(NRED, float32)  # the simulator's row reductions (unused on the GPU)
        s2 = scale * LOG2E  # S in log2 units: exp(x) = exp2(x·log2 e)

        m = cuda.local.array(TM, float32)
        l = cuda.local.array(TM, float32)
        acc = cuda.local.array((TM, DO), float32)
        s = cuda.local.array((TM, TN), float32)
        qa = cuda.local.array(TM, float32)
        kb = cuda.local.array(TN, float32)
        vb = cuda.local.array(DO, float32)
        qa2 = cuda.local.array(TM, float32)  # the second register buffers of the pipelined products
        kb2 = cuda.local.array(TN, float32)
        vb2 = cuda.local.array(DO, float32)
        buf = cuda.local.array(NBUF, IN)  # K_{j+1} or V_{j+1} in the input's storage type
        for a in range(TM):
            m[a] = NEG_INF
            l[a] = ZERO
            for c in range(DO):
                acc[a, c] = ZERO
        rq = uint64(VM * ty)  # this thread's first row, S column and O column
        cs = uint64(VN * tx)
        co = uint64(VO * tx)

        kv_end = n_kv
        if CAUSAL:
            kv_end = min(n_kv, q0 + q_len)  # later blocks are fully masked: skipped, no loads
        n_blocks = (kv_end + BC - 1) // BC
        load_q(q, b, h, q0, q_len, sm, OQ, tid, s2)  # Q·scale·log2 e: S comes out in log2 units
        load_k(k, b, hk, 0, min(BC, n_kv), sm, OK, tid, ONE)
        load_v(v, b, hk, 0, min(BC, n_kv), sm, OV, tid, ONE)
        # barrier: Q_i, K_0, V_0 are in SRAM
        cuda.syncthreads()
        for j in range(n_blocks):
            k0 = j * BC
            kv_len = min(BC, n_kv - k0)
            k1 = k0 + BC
            more = j + 1 < n_blocks
            if more and PREFETCH:  # K_{j+1}: HBM -> registers, while S is computed
                fetch_k(k, b, hk, k1, min(BC, n_kv - k1), buf, tid)

            # -- S = Q_i K_jᵀ: one outer product per k
            for a in range(TM):
                for bb in range(TN):
                    s[a, bb] = ZERO
            s_product(sm, rq, cs, qa, kb, qa2, kb2, s)

            # -- online softmax per row: m_ij, P, l_ij; rescale O by alpha; Pᵀ -> SRAM. Masks only
            # in a ragged last block and, causal, where a key can follow a query of the block.
            # The maxima drop NaN (fmax: one FMNMX where the NaN-keeping max took four; H100,
            # N = 4096: 3.96 -> 3.50 ms at d = 64, 7.67 -> 7.16 at d = 128), yet a NaN logit reaches
            # the output: its P = exp2(NaN - m) is NaN, and so are l and O from then on (alpha = 0
            # keeps NaN: NaN·0 = NaN). m_use = 0 while a row has seen no key (m = -inf): P = 0 for
            # masked logits, alpha = 0 on O = l = 0.
            masked = kv_len < BC or (CAUSAL and k0 + BC - 1 > q0)
            for a in range(TM):
                r = q0 + VM * ty + (a // VM) * VM * TY + a % VM
                mx = NEG_INF
                for bb in range(TN):
                    c = VN * tx + (bb // VN) * VN * TX + bb % VN
                    x = s[a, bb]
                    if HAS_MOD and r < n_q and c < kv_len:  # S' = score_mod(S), S in natural units
                        x = modded(x * LN2, b, h, r, k0 + c) * LOG2E
                    if masked and (c >= kv_len or (CAUSAL and k0 + c > r)):
                        x = NEG_INF
                    s[a, bb] = x
                    mx = fmax(mx, x)
                mx = row_max(mx, red, tid)
                m_new = fmax(m[a], mx)
                m_use = m_new if m_new != NEG_INF else ZERO
                alpha = math.exp2(m[a] - m_use)
                rs = ZERO
                for bb in range(TN):
                    p = math.exp2(s[a, bb] - m_use)
                    s[a, bb] = p
                    rs += p
                l[a] = alpha * l[a] + rs  # this thread's part of the row sum (alpha is the row's)
                m[a] = m_new
                for c in range(DO):
                    acc[a, c] *= alpha
            # (the threads of a quarter warp own S columns 4 apart: their vector stores into Pᵀ meet
            # in 2 of the 8 16-byte bank groups. An XOR swizzle fixes that, but NVVM then stopped
            # vectorizing the Pᵀ loads, which are many more.)
            for bb in range(TN):
                c = VN * tx + (bb // VN) * VN * TX + bb % VN
                prow = OP + uint64(c * QS) + rq
                for g in range(TM // VM):
                    for e in range(VM):
                        sm[prow + uint64(g * VM * TY + e)] = s[g * VM + e, bb]
            # barrier: Pᵀ is complete and every thread is done reading K_j
            cuda.syncthreads()
            if more and PREFETCH:  # K_{j+1}: registers -> SRAM; V_{j+1}: HBM -> registers, while P V_j is computed
                put_k(buf, sm, OK, tid)
                fetch_v(v, b, hk, k1, min(BC, n_kv - k1), buf, tid)
            if more and not PREFETCH:  # K_{j+1}: HBM -> SRAM
                load_k(k, b, hk, k1, min(BC, n_kv - k1), sm, OK, tid, ONE)

            # -- O_i += P V_j: one outer product per key
            pv_product(sm, rq, co, qa, vb, qa2, vb2, acc)
            # barrier: every thread is done reading V_j and Pᵀ (and K_{j+1} is in SRAM)
            cuda.syncthreads()
            if more and PREFETCH:  # V_{j+1}: registers -> SRAM (read after the next P barrier)
                put_v(buf, sm, OV, tid)
            if more and not PREFETCH:  # V_{j+1}: HBM -> SRAM
                load_v(v, b, hk, k1, min(BC, n_kv - k1), sm, OV, tid, ONE)

        # -- O_i = diag(l_i)^-1 O_i -> HBM (a row that saw no key: O = 0); L_i = m_i + log l_i
        for a in range(TM):
            l[a] = row_sum(l[a], red, tid)
        for a in range(TM):
            rr = VM * ty + (a // VM) * VM * TY + a % VM
            if rr < q_len:
                inv = ZERO
                if l[a] != ZERO:  # NaN passes through
                    inv = ONE / l[a]
                for c in range(DO):
                    o[b, h, q0 + rr, VO * tx + (c // VO) * VO * TX + c % VO] = from_f32(acc[a, c] * inv)
                if tx == 0:
                    lse[b, h, q0 + rr] = m[a] * LN2 + math.log(l[a]) if l[a] != ZERO else NEG_INF

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, smem_bytes, grid


def phases(dtype):
    """The fast build's kernels (sandbox/vocabulary/kinds.py): flash2's one "main" phase, its arguments unchanged."""
    return fast_phases(make_flash2_fast, dtype)
