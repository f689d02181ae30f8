"""flash2's fast backward (``Schedule(math="tf32x3")``): FlashAttention-2's backward with every
product on the tensor cores, in fp32 precision by the 3xTF32 split (kernels/mma.py).

Same schedule, same kernels and the same HBM traffic as the counting backward
(kernels/backward.py, ``make_flash_dkdv`` and ``make_flash_dq``): D = rowsum(dO ∘ O) first
(``make_d``: the counting build's sum, its loads coalesced), then

    dkdv: one thread block per (K/V block j, batch·head), a warp per 16 keys (Bc / 16 warps);
          for each Q block i that sees a key of the block (causal: from the first with a query >= the
          block's first key; none when that is past Nq): K_j, V_j -> SRAM before the first (once),
          Q_i, dO_i, L_i, D_i -> SRAM, and per chunk of up to 32 queries
              Sᵀ = K_j Q_iᵀ and dPᵀ = V_j dO_iᵀ         (interleaved: independent accumulators)
              Pᵀ = exp2(Sᵀ·scale·log2 e - L·log2 e),  dSᵀ = Pᵀ ∘ (dPᵀ - D)
              dV_j += Pᵀ dO_i,  dK_j += dSᵀ Q_i          (Pᵀ, dSᵀ stay in registers)
          dK_j = scale·dK_j, dV_j -> SRAM (over K_j, V_j) -> HBM in whole sectors
    dq:   one thread block per (Q block i, batch·head), a warp per 16 queries (Br / 16 warps);
          Q_i, dO_i -> SRAM once, L_i, D_i in registers; for each K/V block j (causal: up to the
          block's last query): K_j, V_j -> SRAM, and per chunk of up to 32 keys
              S = Q_i K_jᵀ and dP = dO_i V_jᵀ,  P = exp2(S·scale·log2 e - L·log2 e),
              dS = P ∘ (dP - D),  dQ_i += dS K_j
          dQ_i = scale·dQ_i -> SRAM (over Q_i) -> HBM in whole sectors

With a mask (sandbox/vocabulary/masks.py: the forward's predicate) both kernels skip the tiles
that hold no allowed entry (``tile_visited``: the block evaluates the predicate over the tile, as
the counting backward and the simulator do) and set P = 0 entry by entry where the predicate or
the causal mask excludes it: the same HBM tiles as the counting backward's.

With a score_mod (sandbox/vocabulary/score_mods.py) each in-range entry of S is taken back to
natural units, S' = score_mod(S) replaces it in P (P = 0 where S' = -inf), and dS is multiplied by
score_mod'(S), as in the counting backward.

Both kernels are one source (``_make``): a *resident* pair of tiles (rows owned by the block's
warps, 16 each) and a *streamed* pair (the other side's blocks, loaded in turn), with the
statistics L, D per query: per streamed row in dkdv, per resident row in dq.

**Shared layout.** Every tile is raw fp32 (inputs widened on load), row-major with a row stride of
d + 4 floats, and split into TF32 parts where a product reads it. With that stride the three
fragment reads the products make are free of bank conflicts: an A fragment or a "row" B fragment
(X[8n + g, 8c + t]: bank 4g + t + const for d a multiple of 32, and distinct banks for any d
a multiple of 8) and a "column" B fragment (X[8c + 2t, 8n + g]: bank 8t + g + const). Raw tiles take half the bytes of pre-split ones and serve both
orientations, so Q and dO (dkdv) and K (dq), each read both ways, are stored once. (Splitting
the streamed tiles once on load into swizzled (big, small) pairs measured slower on the H200:
twice the bytes, and dkdv spilled; BENCHMARKS.md, "Fast backward, fp32".)

**The accumulator is the next A fragment.** As in the forward's tensor-core build
(kernels/flash2_tc.py), Pᵀ's (and dSᵀ's) accumulator of lane (g, t) holds columns 2t and 2t + 1
of each 8, and the next product takes column 2t as its k-index t and 2t + 1 as t + 4, reading
its B fragment in the same order (b0 = Y[8n + 2t, col], b1 = Y[8n + 2t + 1, col]).

**Exact operands.** fp16 and bf16 values are TF32 already: a product of two inputs (Sᵀ, dPᵀ)
is one tensor-core product, and one of an fp32 value (P, dS) and an input is two.

**Two stages.** With fp32 inputs and no mask, where two stages of streamed tiles fit the SRAM
(``stages``: 128×128 at d = 64, 64×64 at d = 128), each kernel copies its tiles by ``cp.async``
(kernels/mma16.py) and the next streamed block's into the other stage while this one's products
run; L_i, D_i (dkdv) are loaded into registers first and stored to their stage after. The loads
between two barriers left the tensor cores idle while each block arrived (one block per SM):
with two stages (128×128) d = 64 ran 1.46× faster (causal 1.55×) than with one (256×128) in one
call on the H200 (BENCHMARKS.md, "Fast backward, fp32"). The
arithmetic and its order are the one-stage kernels': the gradients are bit-identical. The
one-stage loops keep the tile's body inline, as the kernels measured and checked for spills had it
(called as ``dkdv_tile``, the masked dkdv at d = 128 spilled 8 bytes a thread on the H200).

**Deterministic.** Every output element is written once, by one thread, summing in a fixed order,
or, where a paired dkdv forms dQ (``atomic_dq``), added by fp32 atomics in a fixed order
(:data:`ORDERED_DQ`): the same inputs give bit-identical gradients. There dkdv also forms dQ: each
chunk's dSᵀ goes to SRAM, and the block adds dS K_j to dQ in HBM by fp32 atomics, as
FlashAttention-2 does (5 products a tile instead of 7, no dq kernel), each (head, Q block, chunk)
taking its K blocks' additions one block after another. ``deterministic=False``
(kernels/launch.py's ``run_backward``) adds them in the GPU's order, with no waits (dK and dV are
the dq kernel build's, bit for bit; ordered and non-causal, each block's walk over the Q blocks
starts at its own, so dK and dV sum in another fixed order).

**Pairs of warps above d = 64.** A warp's dK_j and dV_j take d registers a thread, so at d = 128
a 64×64 dkdv held 4 warps of 255 registers an SM, one per scheduler, and stalled on every latency.
A two-stage kernel above d = 64 (``paired``) gives each 16 resident rows two warps that split the
work by product, not by rows: in dkdv one computes Sᵀ, Pᵀ and dV_j, the other dPᵀ, dSᵀ and dK_j,
Pᵀ handed over through SRAM; in dq one computes P, the other dP - D, each hands its own over, both
form dS, and each sums half of dQ_i's columns. A pair waits for its partner alone (``bar.sync``
with a barrier of its own, :data:`PAIR_BARRIERS`). Same products in the same order: the gradients
are bit-identical to the unpaired kernels'. At d = 128 on the H200 (64×64, 8 warps a block, no local
memory) the backward ran 1.37× (causal 1.34×) faster than unpaired (BENCHMARKS.md, "Fast
backward, fp32").

The thread layout is fixed by the blocks (``threads``): 2·Bc threads for dkdv, 2·Br for dq, twice
that paired (and the schedule's for ``d``); the schedule's thread tile is the forward's (``tc_schedule``).
"""

import functools

import numpy as np
from numba import cuda, float32, int32, int64, uint64

from kernels.flash2_common import refusal
from kernels.mma import XCH_PER_THREAD, exp2, mma, split
from kernels.mma16 import (bar_sync, cp_async_commit, cp_async_wait, cp_async_wait_but_one, ld_acquire, red_release,
                           row_copier)
from kernels.smem import device_smem_optin
from kernels.tiles import LOG2E, NEG_INF, ONE, ZERO, array_type, inline_device, inline_ir, make_tile_ops, COUNTERS
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import MAX_HEAD_DIM, MAX_THREADS

#: Streamed rows (dkdv: queries, dq: keys) a warp's S and dP accumulators cover at once: 16
#: accumulators per thread beside dK's and dV's (d/2 each). At d = 128 dkdv then takes 255 registers
#: and no local memory on the H200 with unsigned indices and 2 groups per fresh accumulator group
#: (signed, it spilled; BENCHMARKS.md, "Fast backward, fp32").
CHUNK = 32

#: dQ, dK and dV are sums over the whole sequence. The tensor cores' fp32 accumulation truncates
#: where an fp32 add rounds to nearest, so a sum carried through N/8 × 3 products on them drifts
#: toward zero: on the H200, dK at N = 16384, d = 128 was 1.2e-4 of the gradient's scale off
#: float64 (BENCHMARKS.md, "Fast backward, fp32"). Each chunk's product (CHUNK / 8 × 3 of them) is
#: therefore summed into fresh accumulators, ACC_GROUP 8-column groups at a time (ACC_GROUP
#: independent chains, 4·ACC_GROUP registers), and added to the running sums with fp32 adds.
#: By phase: dq takes 2 at every d (at d = 64 its 512-thread blocks, 256×128, have 128 registers a
#: thread, and 4 groups spilled there).
ACC_GROUP = {"dkdv": {64: 4, MAX_HEAD_DIM: 2}, "dq": {MAX_HEAD_DIM: 2}}

#: :data:`ACC_GROUP` of a two-stage kernel (``stages``) where it differs: dkdv above d = 64 takes 1.
#: At 64×64 and d = 128 (128 threads of 255 registers) 2 groups spilled 8 bytes a thread on the
#: H200; 1 uses none without the causal mask (causal, every variant tried spilled 8–16 bytes;
#: BENCHMARKS.md, "Fast backward, fp32").
ACC_GROUP_TWO_STAGES = {"dkdv": {64: 4, MAX_HEAD_DIM: 1}, "dq": {MAX_HEAD_DIM: 2}}

#: :data:`ACC_GROUP` of a paired kernel (:func:`paired`), where a warp carries one of dK_j, dV_j
#: (dkdv) or half of dQ_i (dq): more independent chains a warp. At d = 128 (64×64) on the H200, 4
#: and 8 ran the backward 4–6% faster than 1 and 2, no local memory (BENCHMARKS.md, "Fast
#: backward, fp32"). Where it does not divide a warp's column groups, the largest that does.
ACC_GROUP_PAIRED = {"dkdv": {MAX_HEAD_DIM: 4}, "dq": {MAX_HEAD_DIM: 8}}


#: The deterministic mode's dQ where the fast backward can add it by atomics (:func:`atomic_dq`): in
#: a fixed order (``ordered``) instead of by a dq kernel. dkdv block j adds its part of dQ_i once
#: block j + 1 of the same head has added its own, so every element of dQ sums in one order, run
#: after run. Each block first takes a ticket (an atomic add) that names its (head, K block), heads
#: in turn and each head's K blocks from the last down: a block only ever waits for one that started
#: before it, so no wait can deadlock, on any number of SMs (the CUDA simulator runs one block at a
#: time). The order is the one the blocks reach Q block i in when they run in step: block j starts
#: at the Q block holding its first key, s(j) = jBc // Br (causal: the first it sees), and walks the
#: Q blocks from there, non-causal wrapping round to Q block 0 after the last. So Q block i is
#: reached by j = i, i - 1, ... first (the blocks with s(j) <= i, one step apart), then, non-causal,
#: by the blocks with s(j) > i from the last down: two chains, each summed into its own half of an
#: fp32 (B, H, 2·Nq, d) array, so the second never waits for the first (that wait would close a
#: cycle); "dq_sum" adds the halves. The turns are counted per chunk of a tile: one thread waits
#: for the chunk's turn by acquire reads before the block's barrier and atomics, and counts it done
#: by a release add after the block's next barrier (CUTLASS's semaphore pattern, with no separate
#: fence: kernels/mma16.py), so a block trails the one before it by a chunk, not a tile. On the
#: H200 at d = 128 (64×64) the backward ran 1.01–1.03× SDPA efficient this way, against 0.86–0.87×
#: with the dq kernel and 1.04–1.06× in the GPU's order (BENCHMARKS.md, "Fast backward, fp32: dQ in
#: a fixed order").
ORDERED_DQ = True

#: Threads per block of the ordered dQ's sum of its two halves (:func:`make_dq_sum`).
DQ_SUM_THREADS = 256


def ordered_walk(jb, n_q, block_q, block_kv, causal):
    """(first, end) of ordered dkdv block ``jb``'s walk (:data:`ORDERED_DQ`): it computes Q block
    i mod Tr for i = first .. end - 1. Causal: from the first Q block that sees its keys (none where
    its first key is past the last query); else from s(j), the Q block of its first key (at most the
    last), round all Tr of them."""
    n_qb = (n_q + block_q - 1) // block_q
    k0 = jb * block_kv
    if causal:
        return k0 // block_q, (n_qb if k0 < n_q else k0 // block_q)
    first = min(k0 // block_q, n_qb - 1)
    return first, first + n_qb


def ordered_turn(jb, iq, first, n_kb, n_q, block_q, block_kv, causal):
    """(chain, ahead) of block ``jb``'s turn at Q block ``iq`` (:data:`ORDERED_DQ`), ``first`` its
    walk's start: chain 0 holds the blocks whose walk starts at or before ``iq``, chain 1
    (non-causal) the rest; each adds from its last block down, and ``ahead`` blocks of the chain add
    before this one."""
    if causal or iq >= first:
        last = min(n_kb - 1, ((iq + 1) * block_q - 1) // block_kv)
        if causal:
            last = min(last, (n_q - 1) // block_kv)  # (later blocks see no query)
        elif iq == (n_q + block_q - 1) // block_q - 1:
            last = n_kb - 1
        return 0, last - jb
    return 1, n_kb - 1 - jb


_ordered_walk, _ordered_turn = inline_device(ordered_walk), inline_device(ordered_turn)


def ordered_turns(schedule, head_dim, problem):
    """Length of an ordered dkdv's turns array (:data:`ORDERED_DQ`): the ticket, then a count per
    (batch·head, Q block, chain, chunk of the Q block)."""
    chunks_ = schedule.block_q // chunk_rows(schedule, head_dim, "dkdv")
    return 1 + 2 * chunks_ * problem.bh * -(-problem.n_q // schedule.block_q)


@inline_device
def turn_wait(turns, at, ahead):
    """Wait until ``turns[at]`` reads ``ahead`` by acquire reads: what the blocks counted there
    added is seen before anything this block's threads do after their next barrier (the acquire
    half of CUTLASS's semaphore pattern: one thread waits, the block's barrier passes it on)."""
    while ld_acquire(turns, at) != ahead:
        pass


@inline_device
def turn_done(turns, at):
    """Count one more block done at ``turns[at]``, after a barrier that every thread of the block
    passed after its atomics: a release add, which orders the block's atomics before it (the
    release half)."""
    red_release(turns, at, 1)


def by_head_dim(table, head_dim):
    """``table``'s value for ``head_dim``: that of the smallest key at least ``head_dim``."""
    return table[min(key for key in table if key >= head_dim)]


def chunk_rows(schedule, head_dim, phase, masked=False):
    """Streamed rows per chunk of ``phase`` ("dkdv" or "dq"): :data:`CHUNK` where it divides the
    streamed block, else 16. Under a mask (``masked``), 16 for blocks of more than 256 threads: with
    128 registers a thread, the predicate's evaluation beside 32 rows' S and dP spilled (dq at
    256×128, d = 64: 24–32 bytes a thread, ptxas for sm_90; 0 with 16), and for a kernel with
    signed indices (:func:`unsigned`)."""
    streamed = schedule.block_q if phase == "dkdv" else schedule.block_kv
    ch = CHUNK
    if masked and (threads(schedule, phase) > 256 or not unsigned(head_dim, phase, masked)):
        ch = 16
    return ch if streamed % ch == 0 else 16


def unsigned(head_dim, phase, masked=False):
    """Whether ``phase``'s kernel indexes with uint64 (``_make``): every kernel but a masked dkdv
    above d = 64. There the predicate's evaluation beside dK's and dV's accumulators spilled with
    unsigned indices (d = 128: 16 bytes a thread on the H200 with chunks of 32; causal, 24 with
    chunks of 16 in ptxas for sm_90 here), and signed indices with chunks of 16 use none."""
    return not (masked and phase == "dkdv" and head_dim > 64)


def chunks(schedule, head_dim, masked=False):
    """(dq's, dkdv's) :func:`chunk_rows`: the sizes a tolerance for dQ and for dK, dV takes."""
    return chunk_rows(schedule, head_dim, "dq", masked), chunk_rows(schedule, head_dim, "dkdv", masked)


def eligible(schedule, head_dim, count_io=False, mask=None):
    """Why the fast backward cannot run this (a string), or None when it can: flash2 with
    ``math="tf32x3"``, no counters, Br and Bc multiples of 16 (a warp per 16 rows on both sides),
    d a multiple of 8. It takes any mask (``_make``)."""
    s = schedule
    why = refusal(s, count_io, None, "fast backward", "tf32x3")
    if why is not None:
        return why
    if s.block_q % 16 or s.block_kv % 16:
        return f"Br={s.block_q}, Bc={s.block_kv} (the fast backward needs both multiples of 16)"
    if 2 * max(s.block_q, s.block_kv) > MAX_THREADS:
        return (f"Br={s.block_q}, Bc={s.block_kv} (a warp per 16 rows: {2 * max(s.block_q, s.block_kv)} threads, "
                f"over CUDA's {MAX_THREADS} per block)")
    if head_dim % 8:
        return f"head_dim={head_dim} (needs a multiple of 8)"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim={head_dim} (the largest supported is {MAX_HEAD_DIM})"
    if smem_bytes(s, head_dim) > s.sram_bytes:
        return f"it needs {smem_bytes(s, head_dim)} bytes of SRAM at d={head_dim}, the schedule's sram_bytes={s.sram_bytes}"
    return None


def _stride(head_dim):
    """Row stride of a raw tile, in floats."""
    return head_dim + 4


#: Static shared memory of dkdv and dq: the tile vote a mask takes (``tile_visited``), one int32.
VOTE_BYTES = 4

#: Bytes to which an input array's first element must be aligned: with two stages the tiles are
#: copied by cp.async in 16-byte words (kernels/launch.py, ``check_alignment``, refuses others with
#: the reason; for every dtype and schedule, one rule for the build).
ALIGNMENT = 16


def smem_bytes(schedule, head_dim, phase=None):
    """Shared memory a block of ``phase`` ("dkdv", "dq"; None: the larger) needs at least: its
    dynamic tiles with one stage of streamed tiles (:func:`dynamic_bytes`) and the static tile vote.
    A kernel takes a second stage where it fits (:func:`stages`)."""
    sizes = {ph: dynamic_bytes(schedule, head_dim, ph) + (ph != "d") * VOTE_BYTES for ph in ("d", "dkdv", "dq")}
    return max(sizes.values()) if phase is None else sizes[phase]


def dynamic_bytes(schedule, head_dim, phase, n_stages=1, pair=False, atomic_dq=False):
    """Dynamic shared memory of ``phase``: two resident tiles of d + 4 floats per row, per stage two
    streamed tiles and dkdv's L and D per streamed row, a paired kernel's exchange
    (:func:`paired`): for each pair of warps two 16 × chunk tiles (dkdv: Pᵀ in two buffers; dq: P
    and dP - D), and with ``atomic_dq`` (:func:`atomic_dq`) the block's dSᵀ of a chunk (resident
    rows × chunk + 4 floats)."""
    if phase == "d":
        return 0
    resident = schedule.block_kv if phase == "dkdv" else schedule.block_q
    streamed = schedule.block_q if phase == "dkdv" else schedule.block_kv
    stage = 2 * streamed * _stride(head_dim) * 4 + (phase == "dkdv") * 8 * streamed
    exchange = 2 * resident * chunk_rows(schedule, head_dim, phase) * 4 if pair else 0
    ds = resident * _ds_stride(chunk_rows(schedule, head_dim, phase)) * 4 if atomic_dq else 0
    return 2 * resident * _stride(head_dim) * 4 + n_stages * stage + exchange + ds


def _ds_stride(chunk):
    """Row stride, in floats, of the dSᵀ tile an atomic-dQ dkdv keeps (:func:`atomic_dq`): chunk + 4,
    4 more than a multiple of 16, so the A fragment's reads (rows 8k + 2t, columns 16m + g) fall on
    the distinct banks 8t + g."""
    return chunk + 4


#: Head dims above which a two-stage kernel gives each 16 resident rows two warps (:func:`paired`).
PAIRED_ABOVE = 64

#: Whether a pair of warps waits for its partner alone (``bar.sync`` with a barrier of its own, 64
#: threads) rather than for the whole block, where the block has at most 15 pairs (barriers 1..15;
#: 0 is ``cuda.syncthreads``'). A pair's exchange is its own: no other warp reads it.
PAIR_BARRIERS = True


def _fits(schedule, n_bytes):
    """Whether ``n_bytes`` of dynamic shared memory, with the static tile vote, fit the schedule's
    ``sram_bytes`` and the GPU's opt-in shared memory per block (not known under the simulator)."""
    need, optin = n_bytes + VOTE_BYTES, device_smem_optin()
    return need <= schedule.sram_bytes and (optin is None or need <= optin)


def _layout(schedule, head_dim, phase, dtype, masked):
    """(stages, paired) of ``phase``'s kernel (:func:`stages`, :func:`paired`)."""
    return _cached_layout(schedule, head_dim, phase, np.dtype(dtype), bool(masked), PAIRED_ABOVE)


@functools.lru_cache(maxsize=256)
def _cached_layout(schedule, head_dim, phase, dtype, masked, paired_above):
    """:func:`_layout`, cached as kernels/launch.py's ``build`` is (for the device it first ran on):
    the launcher asks for a kernel's threads at every launch."""
    if phase == "d" or masked or dtype != np.float32:
        return 1, False
    halves = phase == "dkdv" or head_dim % 16 == 0  # (a paired dq warp takes half of d's 8-column groups)
    resident = schedule.block_kv if phase == "dkdv" else schedule.block_q
    if (head_dim > paired_above and halves and 4 * resident <= MAX_THREADS
            and _fits(schedule, dynamic_bytes(schedule, head_dim, phase, 2, True))):
        return 2, True
    return (2 if _fits(schedule, dynamic_bytes(schedule, head_dim, phase, 2)) else 1), False


def stages(schedule, head_dim, phase, dtype, masked=False):
    """Stages of streamed tiles ``phase``'s kernel keeps in SRAM: 2 (the next block's tiles copied
    by cp.async while this one's products run) for fp32 inputs without a mask where two fit the
    schedule's ``sram_bytes`` and the GPU's opt-in shared memory, else 1 (each block loaded between
    two barriers). cp.async copies raw bytes, so 16-bit inputs, widened on load, take one; a mask
    decides which tile comes next only by a vote over it (``tile_visited``)."""
    return _layout(schedule, head_dim, phase, dtype, masked)[0]


def paired(schedule, head_dim, phase, dtype, masked=False):
    """Whether ``phase``'s kernel gives each 16 resident rows two warps: a two-stage kernel above
    d = :data:`PAIRED_ABOVE` (dq: d a multiple of 16) where the exchange fits beside the stages
    (:func:`dynamic_bytes`). In dkdv one warp of a pair takes Sᵀ = K_j Q_iᵀ, Pᵀ and dV_j += Pᵀ dO_i,
    the other dPᵀ = V_j dO_iᵀ, dSᵀ and dK_j += dSᵀ Q_i, Pᵀ passed through SRAM (two buffers: one
    barrier a chunk); each warp carries one of dK_j, dV_j (d/2 registers a thread, not d). In dq
    one warp takes S and P, the other dP - D, each passes its own through SRAM (two barriers a chunk),
    both form dS and each adds dS K_j to half of dQ_i's columns. The block has twice the warps; every
    product and its order is the unpaired warp's: the gradients are bit-identical."""
    return _layout(schedule, head_dim, phase, dtype, masked)[1]


def atomic_dq(schedule, head_dim, dtype, masked=False):
    """Whether the fast backward can fold dQ into dkdv, added to HBM by fp32 atomics (the
    non-deterministic mode, ``deterministic=False``): where dkdv is paired (:func:`paired`), the
    block's dSᵀ of a chunk fits beside its tiles, and the chunk's dQ (chunk × d) splits evenly over
    the block's warps, each taking whole 8-column groups of one 16-row tile. Then each chunk's dSᵀ
    goes to SRAM and the block adds dS K_j to dQ in HBM (as FlashAttention-2 does): 5 products a tile
    instead of 7, no dq kernel, and the order of the additions left to the GPU."""
    return _cached_atomic_dq(schedule, head_dim, np.dtype(dtype), bool(masked), PAIRED_ABOVE)


@functools.lru_cache(maxsize=256)
def _cached_atomic_dq(schedule, head_dim, dtype, masked, paired_above):
    """:func:`atomic_dq`, cached as :func:`_cached_layout` is (the launcher asks at every call)."""
    if not paired(schedule, head_dim, "dkdv", dtype, masked):
        return False
    R, ch, kd = schedule.block_kv, chunk_rows(schedule, head_dim, "dkdv"), head_dim // 8
    warps, units = R // 8, (ch // 16) * kd
    if units % warps or kd % (units // warps):
        return False
    return _fits(schedule, dynamic_bytes(schedule, head_dim, "dkdv", 2, True, True))


def threads(schedule, phase, head_dim=None, dtype=np.float32, masked=False):
    """Threads per block of ``phase``: a warp per 16 resident rows, two in a paired kernel
    (:func:`paired`; given ``head_dim``)."""
    pair = head_dim is not None and paired(schedule, head_dim, phase, dtype, masked)
    if phase == "dkdv":
        return (4 if pair else 2) * schedule.block_kv
    if phase == "dq":
        return (4 if pair else 2) * schedule.block_q
    if phase == "dq_sum":
        return DQ_SUM_THREADS
    return schedule.threads


def min_blocks_per_sm(schedule, head_dim):
    """1: a block's threads share the whole register file, up to 255 each (dK and dV take d of
    them in dkdv); blocks of more than 256 threads get fewer (kernels/launch.py's cap)."""
    return 1


def phases(dtype, atomic_dq=False, ordered=False):
    """The fast backward's kernels, in launch order, with the counting backward's arguments; with
    ``atomic_dq`` (:func:`atomic_dq`) dkdv also takes dQ, zeroed, and there is no dq kernel; with
    ``ordered`` too (:data:`ORDERED_DQ`) dkdv takes dQ's two sums (B, H, 2·Nq, d) and the turns
    (int32, zeroed), and "dq_sum" adds the sums up (non-causal; causal, the first is dQ)."""
    IN4, F3, C = array_type(dtype, 4), array_type(np.float32, 3), COUNTERS
    F4 = array_type(np.float32, 4)
    if atomic_dq and ordered:
        return {
            "d": (make_d, (IN4, IN4, F3, C)),
            "dkdv": (functools.partial(make_dkdv, atomic_dq=True, ordered=True),
                     (IN4, IN4, IN4, IN4, F3, F3, IN4, IN4, F4, array_type(np.int32, 1), float32, C)),
            "dq_sum": (make_dq_sum, (F4, F4, C)),
        }
    if atomic_dq:
        return {
            "d": (make_d, (IN4, IN4, F3, C)),
            "dkdv": (functools.partial(make_dkdv, atomic_dq=True),
                     (IN4, IN4, IN4, IN4, F3, F3, IN4, IN4, array_type(np.float32, 4), float32, C)),
        }
    return {
        "d": (make_d, (IN4, IN4, F3, C)),
        "dkdv": (make_dkdv, (IN4, IN4, IN4, IN4, F3, F3, IN4, IN4, float32, C)),
        "dq": (make_dq, (IN4, IN4, IN4, IN4, F3, F3, IN4, float32, C)),
    }


#: It applies a score_mod and its derivative (kernels/builds.py asks).
TAKES_SCORE_MOD = True

#: Floats of ``make_d``'s staging array, at most: the rows of a pass (a multiple of 8), d + 1 floats
#: each. Small for registers: at 256×128 (512 threads, 128 registers each) the kernel compiled
#: (ptxas, sm_90, locally) to 101 registers with 4096 floats (63 rows a pass at d = 64), 56 with 2048.
D_STAGE_FLOATS = 2048


def make_d(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None):
    """D = rowsum(dO ∘ O), fp32: kernel(o, do, dvec, counters); grid (Tr, B·H), the schedule's threads.

    The counting build's ``d`` (kernels/backward.py) gives each thread a row, so a warp's load takes
    one element from each of 32 rows: 32 sectors for 128 bytes in fp32. Here the block reads a pass
    of rows as one run of consecutive elements (consecutive threads, consecutive elements: whole
    sectors), keeps the products dO·O in SRAM (rows d + 1 floats apart: a thread per row reads a
    distinct bank), and a thread per row sums its row in column order."""
    del mask, score_mod  # D is every row's, whatever the mask or the score_mod
    if count_io:
        raise ValueError("the fast backward's d kernel does not count (the counting build's is kernels/backward.py)")
    t = make_tile_ops(schedule, head_dim, False, causal, dtype)
    to_f32, D, BR, NT = t.to_f32, head_dim, schedule.block_q, schedule.threads
    S = int(D) + 1
    # rows a pass: a multiple of 8, so that each pass's D (8 rows: a sector) starts on a sector
    RC = int(max(8, min(BR, NT, D_STAGE_FLOATS // S) // 8 * 8))
    LIT = -(-RC * D // NT)
    N_SM = RC * S  # a Python int: the shared array's size is a compile-time constant

    def kernel(o, do, dvec, counters):
        tid = cuda.threadIdx.x
        bh = cuda.blockIdx.y
        b = bh // o.shape[1]
        h = bh - b * o.shape[1]
        q0 = cuda.blockIdx.x * BR
        q_len = min(BR, o.shape[2] - q0)
        sm = cuda.shared.array(N_SM, float32)
        oh = o[b, h]
        doh = do[b, h]
        for p0 in range(0, q_len, RC):
            n = min(RC, q_len - p0)
            for it in range(LIT):
                e = tid + it * NT
                if e < n * D:
                    r = e // D
                    c = e - r * D
                    row = uint64(q0 + p0 + r)
                    sm[uint64(r * S + c)] = to_f32(doh[row, uint64(c)]) * to_f32(oh[row, uint64(c)])
            cuda.syncthreads()
            if tid < n:
                acc = ZERO
                for c in range(D):
                    acc += sm[uint64(tid * S + c)]
                dvec[b, h, q0 + p0 + tid] = acc
            cuda.syncthreads()  # the pass's products are read before the next pass writes

    def grid(problem):
        return ((problem.n_q + BR - 1) // BR, problem.bh)

    return kernel, 0, grid


def make_dkdv(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None, atomic_dq=False,
              ordered=False):
    """kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters); grid (Tc, B·H). With ``atomic_dq``
    (:func:`atomic_dq`), kernel(q, k, v, do, lse, dvec, dk, dv, dq, scale, counters), dq fp32 and
    zeroed; ``ordered`` too (:data:`ORDERED_DQ`), kernel(q, k, v, do, lse, dvec, dk, dv, sums, turns,
    scale, counters): sums fp32 (B, H, 2·Nq, d), turns int32 (:func:`ordered_turns`), both zeroed."""
    return _make(schedule, head_dim, dtype, count_io, causal, mask, "dkdv", score_mod, atomic_dq, ordered)


def make_dq_sum(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None):
    """kernel(sums, dq, counters): dQ = the first of an ordered dkdv's two sums + the second
    (:data:`ORDERED_DQ`), in that order; dq fp32 (B, H, Nq, d), sums (B, H, 2·Nq, d). A thread an
    element, consecutive threads on consecutive elements."""
    NT = DQ_SUM_THREADS

    def kernel(sums, dq, counters):
        n_q, d = dq.shape[2], dq.shape[3]
        per_head = n_q * d
        e = cuda.blockIdx.x * NT + cuda.threadIdx.x
        bh = cuda.blockIdx.y
        if e < per_head:
            b = bh // dq.shape[1]
            h = bh - b * dq.shape[1]
            r = e // d
            c = e - r * d
            dq[b, h, r, c] = sums[b, h, r, c] + sums[b, h, n_q + r, c]

    def grid(problem):
        return ((problem.n_q * problem.head_dim + NT - 1) // NT, problem.bh)

    return kernel, 0, grid


def make_dq(schedule, head_dim, dtype, count_io, causal, mask=None, score_mod=None):
    """kernel(q, k, v, do, lse, dvec, dq, scale, counters); grid (Tr, B·H)."""
    return _make(schedule, head_dim, dtype, count_io, causal, mask, "dq", score_mod)


def _make(schedule, head_dim, dtype, count_io, causal, mask, phase, score_mod=None, fused_dq=False, ordered_dq=False):
    why = eligible(schedule, head_dim, count_io, mask)
    if why is not None:
        raise ValueError(f"the fast backward cannot run {schedule} at d={head_dim}: {why}")
    if fused_dq and not atomic_dq(schedule, head_dim, dtype, mask is not None):
        raise ValueError(f"the fast backward cannot add dQ by atomics for {schedule} at d={head_dim} "
                         f"({np.dtype(dtype).name}{', masked' if mask is not None else ''}): its dkdv is not "
                         "paired, or dSᵀ does not fit beside its tiles")
    NT = threads(schedule, phase, head_dim, dtype, mask is not None)  # a warp (a pair: paired) per 16 resident rows
    t = make_tile_ops(schedule, head_dim, False, causal, dtype, mask, score_mod, threads=NT)
    HAS_MOD, modded, mod_grad = t.HAS_MOD, t.modded, t.mod_grad
    HAS_MASK, mask_ok, tile_visited = mask is not None, t.mask_ok, t.tile_visited

    @inline_device
    def mod_p(x, l2, b, h, q_idx, kv_idx):
        """(P, score_mod'(S)) of the raw score x = S (natural units) against L·log2 e = ``l2``:
        P = exp2(score_mod(x)·log2 e - l2), 0 where score_mod(x) = -inf."""
        sx = modded(x, b, h, q_idx, kv_idx)
        p = ZERO
        if sx != NEG_INF:
            p = exp2(sx * LOG2E - l2)
        return p, mod_grad(x, b, h, q_idx, kv_idx)

    to_f32, from_f32 = t.to_f32, t.from_f32
    DKDV = phase == "dkdv"
    D, CAUSAL = head_dim, bool(causal)
    R = schedule.block_kv if DKDV else schedule.block_q  # resident rows (a warp per 16)
    C = schedule.block_q if DKDV else schedule.block_kv  # streamed rows per block
    CH = chunk_rows(schedule, head_dim, phase, mask is not None)  # streamed rows per chunk of the products
    NS, KD = CH // 8, D // 8  # 8-row groups of a chunk; 8-column groups of d
    N_STAGES = stages(schedule, head_dim, phase, dtype, mask is not None)
    PIPE = N_STAGES == 2
    PAIR = paired(schedule, head_dim, phase, dtype, mask is not None)  # (two-stage kernels only)
    P_ = _stride(D)
    X1, X2 = 0, R * P_  # resident: dkdv K, V; dq Q, dO
    Y1, Y2 = 2 * R * P_, (2 * R + C) * P_  # streamed, stage 0: dkdv Q, dO; dq K, V
    OL, OD = (2 * R + 2 * C) * P_, (2 * R + 2 * C) * P_ + C  # dkdv: L·log2 e, D per streamed row
    STAGE = 2 * C * P_ + DKDV * 2 * C  # floats of a stage (stage 1 follows stage 0)
    # a paired kernel's exchange: dkdv [chunk parity][pair][4n + e][lane] Pᵀ; dq [pair][role][4n + e][lane] P, dP
    OX = 2 * R * P_ + N_STAGES * STAGE
    KA = KD // 2 if PAIR and not DKDV else KD  # 8-column groups of dQ_i a dq warp sums
    # 8-column groups a warp sums per fresh accumulator group: a paired warp the largest divisor of its
    # groups up to ACC_GROUP_PAIRED's, any other the table's where it divides d's groups, else 1
    if PAIR:
        AG = max(a for a in range(1, by_head_dim(ACC_GROUP_PAIRED[phase], D) + 1) if KA % a == 0)
    else:
        AG = by_head_dim((ACC_GROUP_TWO_STAGES if PIPE else ACC_GROUP)[phase], D)
        AG = AG if KD % AG == 0 else 1
    FUSED = bool(fused_dq)  # dkdv adds dQ by atomics (atomic_dq)
    ORDERED = FUSED and bool(ordered_dq)  # ... in a fixed order (ORDERED_DQ)
    NCH = C // CH  # (ordered: a turn per chunk)
    n_smem = dynamic_bytes(schedule, head_dim, phase, N_STAGES, PAIR, FUSED)
    ODS, DSS = OX + 2 * R * CH, _ds_stride(CH)  # the fused dkdv's dSᵀ tile: [key][query of the chunk]
    NW = R // 8  # the fused dkdv's warps (2 a 16 keys)
    UPW = max(1, (CH // 16) * KD // NW)  # (16-row tile, 8-column group) units of a chunk's dQ a warp takes
    # Shared and global indices are cast to uint64 (but see ``unsigned``): Numba indexes with a
    # signed integer through a negative-index fix-up per access (a compare and a select), which on
    # the H200 doubled the kernels' instructions and kept the compiler from folding a thread's loads
    # into one base address plus constant offsets (BENCHMARKS.md, "Fast backward, fp32").
    IX = uint64 if unsigned(D, phase, mask is not None) else int64
    EXACT = np.dtype(dtype).itemsize == 2  # fp16/bf16 inputs are TF32 already
    ALIGN = None if using_simulator() else 16
    NX = NT * XCH_PER_THREAD if using_simulator() else 1  # the simulator's warp exchange

    @inline_device
    def parts(x, exact):
        """(big, small) TF32 parts of x; (x, 0) for an operand that is TF32 already (no instructions)."""
        if exact:
            return x, ZERO
        return split(x)

    @inline_device
    def mma3(xch, tid, ab0, ab1, ab2, ab3, as0, as1, as2, as3, bb0, bb1, bs0, bs1, c0, c1, c2, c3, a_exact, b_exact):
        """C + A·B in fp32 precision from the operands' TF32 parts: A_small·B_big, A_big·B_small,
        A_big·B_big, leaving out the products of a part that is zero (an operand that is TF32 already)."""
        if not a_exact:
            c0, c1, c2, c3 = mma(xch, tid, as0, as1, as2, as3, bb0, bb1, c0, c1, c2, c3)
        if not b_exact:
            c0, c1, c2, c3 = mma(xch, tid, ab0, ab1, ab2, ab3, bs0, bs1, c0, c1, c2, c3)
        return mma(xch, tid, ab0, ab1, ab2, ab3, bb0, bb1, c0, c1, c2, c3)

    def walk(rows):
        """(passes, whether every pass is whole) of the block's walk over rows × d elements, a thread
        an element, consecutive threads on consecutive elements: the loads' and the saves' order."""
        return -(-rows * D // NT), (rows * D) % NT == 0

    def loader(rows):
        LIT, FULL = walk(rows)

        @inline_device
        def load(x, b, h, row0, n_valid, sm, base, tid):
            """rows × d of x from row row0 on: HBM -> SRAM at base, fp32, zeros past n_valid rows."""
            xh = x[b, h]
            for it in range(LIT):
                e = tid + it * NT
                if FULL or e < rows * D:
                    r = e // D
                    c = e - r * D
                    val = ZERO
                    if r < n_valid:
                        val = to_f32(xh[IX(row0 + r), IX(c)])
                    sm[IX(base + r * P_ + c)] = val

        return load

    load_resident, load_streamed = loader(R), loader(C)

    # rows × d of a head's (N, d) fp32 array -> SRAM at a base (stride P_), by cp.async (not committed)
    copy_resident, copy_streamed = row_copier(R, D, P_, NT), row_copier(C, D, P_, NT)

    @inline_device
    def products(sm, xch, tid, ra, cq, y, s, dp):
        """s = X1 Y1ᵀ and dp = X2 Y2ᵀ over the chunk's rows cq .. cq + CH of the streamed tiles (of
        the stage at offset ``y``), for the warp's resident rows ra and ra + 8 (the module
        docstring's fragments)."""
        g = (tid % 32) // 4
        tq = tid % 4
        for n in range(NS):
            for i in range(4):
                s[n, i] = ZERO
                dp[n, i] = ZERO
        for kk in range(KD):
            at = (ra + g) * P_ + 8 * kk + tq
            kb0, ks0 = parts(sm[IX(X1 + at)], EXACT)
            kb1, ks1 = parts(sm[IX(X1 + at + 8 * P_)], EXACT)
            kb2, ks2 = parts(sm[IX(X1 + at + 4)], EXACT)
            kb3, ks3 = parts(sm[IX(X1 + at + 8 * P_ + 4)], EXACT)
            vb0, vs0 = parts(sm[IX(X2 + at)], EXACT)
            vb1, vs1 = parts(sm[IX(X2 + at + 8 * P_)], EXACT)
            vb2, vs2 = parts(sm[IX(X2 + at + 4)], EXACT)
            vb3, vs3 = parts(sm[IX(X2 + at + 8 * P_ + 4)], EXACT)
            for n in range(NS):
                bt = y + (cq + 8 * n + g) * P_ + 8 * kk + tq
                bb0, bs0 = parts(sm[IX(Y1 + bt)], EXACT)
                bb1, bs1 = parts(sm[IX(Y1 + bt + 4)], EXACT)
                s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma3(
                    xch, tid, kb0, kb1, kb2, kb3, ks0, ks1, ks2, ks3, bb0, bb1, bs0, bs1,
                    s[n, 0], s[n, 1], s[n, 2], s[n, 3], EXACT, EXACT)
                bb0, bs0 = parts(sm[IX(Y2 + bt)], EXACT)
                bb1, bs1 = parts(sm[IX(Y2 + bt + 4)], EXACT)
                dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3] = mma3(
                    xch, tid, vb0, vb1, vb2, vb3, vs0, vs1, vs2, vs3, bb0, bb1, bs0, bs1,
                    dp[n, 0], dp[n, 1], dp[n, 2], dp[n, 3], EXACT, EXACT)

    @inline_device
    def product(sm, xch, tid, ra, cq, x, yb, s):
        """s = X Yᵀ over the chunk's rows cq .. cq + CH of the streamed tile at ``yb``, X the resident
        tile at ``x``: one of :func:`products`' two, in the same order (a paired kernel's warp)."""
        g = (tid % 32) // 4
        tq = tid % 4
        for n in range(NS):
            for i in range(4):
                s[n, i] = ZERO
        for kk in range(KD):
            at = x + (ra + g) * P_ + 8 * kk + tq
            kb0, ks0 = parts(sm[IX(at)], EXACT)
            kb1, ks1 = parts(sm[IX(at + 8 * P_)], EXACT)
            kb2, ks2 = parts(sm[IX(at + 4)], EXACT)
            kb3, ks3 = parts(sm[IX(at + 8 * P_ + 4)], EXACT)
            for n in range(NS):
                bt = yb + (cq + 8 * n + g) * P_ + 8 * kk + tq
                bb0, bs0 = parts(sm[IX(bt)], EXACT)
                bb1, bs1 = parts(sm[IX(bt + 4)], EXACT)
                s[n, 0], s[n, 1], s[n, 2], s[n, 3] = mma3(
                    xch, tid, kb0, kb1, kb2, kb3, ks0, ks1, ks2, ks3, bb0, bb1, bs0, bs1,
                    s[n, 0], s[n, 1], s[n, 2], s[n, 3], EXACT, EXACT)

    PAIR_BAR = PAIR_BARRIERS and R // 16 <= 15

    @inline_device
    def pair_sync(ra):
        """The pair of warps of resident rows ra .. ra + 16 waits for each other (:data:`PAIR_BARRIERS`;
        else the block waits)."""
        if PAIR_BAR:
            bar_sync(1 + ra // 16, 64)
        else:
            cuda.syncthreads()

    KH = KD // 2  # a paired dq warp's 8-column groups of dQ_i (role 0 the first half, 1 the second)

    def summer(groups):
        """accumulate(..., c0) over ``groups`` 8-column groups from c0 on: all of d (KD), or a paired dq
        warp's half (KH)."""

        @inline_device
        def accumulate(sm, xch, tid, cq, a, small, base, acc, t, c0):
            """acc += A Y, A the chunk's accumulator ``a`` (rows: the warp's; k: the chunk's streamed
            rows, 2t as t and 2t + 1 as t + 4), Y the streamed tile at ``base`` (its column groups from
            ``c0`` on). The chunk's product is summed on the tensor cores into fresh accumulators ``t``
            (AG column groups at a time) and added to ``acc`` in fp32 (:data:`ACC_GROUP`). ``a`` is
            left holding its TF32 big parts, ``small`` the small ones."""
            g = (tid % 32) // 4
            tq = tid % 4
            for n in range(NS):
                for e in range(4):
                    a[n, e], small[n, e] = split(a[n, e])
            for k0 in range(0, groups, AG):
                for u in range(AG):
                    for i in range(4):
                        t[u, i] = ZERO
                for n in range(NS):
                    for u in range(AG):
                        bt = base + (cq + 8 * n + 2 * tq) * P_ + 8 * (c0 + k0 + u) + g
                        bb0, bs0 = parts(sm[IX(bt)], EXACT)
                        bb1, bs1 = parts(sm[IX(bt + P_)], EXACT)
                        t[u, 0], t[u, 1], t[u, 2], t[u, 3] = mma3(
                            xch, tid, a[n, 0], a[n, 2], a[n, 1], a[n, 3], small[n, 0], small[n, 2], small[n, 1],
                            small[n, 3], bb0, bb1, bs0, bs1, t[u, 0], t[u, 1], t[u, 2], t[u, 3], False, EXACT)
                for u in range(AG):
                    for i in range(4):
                        acc[k0 + u, i] += t[u, i]

        return accumulate

    accumulate, accumulate_half = summer(KD), summer(KH)

    def stager(groups):
        """stage(..., c0) of ``groups`` 8-column groups from c0 on (as :func:`summer`)."""

        @inline_device
        def stage(sm, base, ra, acc, factor, tid, c0):
            """The warp's rows of acc·factor -> the resident tile at ``base`` (its column groups from
            ``c0`` on), over its own rows (the products read no other warp's; the caller waits for the
            tile's loads first)."""
            g = (tid % 32) // 4
            tq = tid % 4
            for i in range(2):
                for kk in range(groups):
                    at = base + (ra + g + 8 * i) * P_ + 8 * (c0 + kk) + 2 * tq
                    sm[IX(at)] = acc[kk, 2 * i] * factor
                    sm[IX(at + 1)] = acc[kk, 2 * i + 1] * factor

        return stage

    stage, stage_half = stager(KD), stager(KH)

    RIT, RFULL = walk(R)

    @inline_device
    def save(x, b, h, row0, n_valid, sm, base, tid):
        """The staged tile at ``base`` -> x's rows row0 .. row0 + n_valid, as the loads run: consecutive
        threads on consecutive elements, whole sectors (a fragment's lanes store pairs 4 bytes apart,
        half of each sector)."""
        for it in range(RIT):
            e = tid + it * NT
            if RFULL or e < R * D:
                r = e // D
                c = e - r * D
                if r < n_valid:
                    x[b, h, IX(row0 + r), IX(c)] = from_f32(sm[IX(base + r * P_ + c)])

    @inline_device
    def dkdv_tile(sm, xch, tid, ra, b, h, q0, q_len, k0, n_kv, y, s, dp, small, t, acc_v, acc_k, scale, s2):
        """dV_j += Pᵀ dO_i and dK_j += dSᵀ Q_i for the Q block at q0, its Q_i, dO_i, L_i, D_i in the
        stage at offset ``y``: the two-stage loop's tile (the one-stage loop has the same body inline)."""
        g = (tid % 32) // 4
        tq = tid % 4
        edge = HAS_MASK or q_len < C or (CAUSAL and q0 < k0 + R - 1)  # entries to mask (block-uniform)
        for cq in range(0, C, CH):
            products(sm, xch, tid, ra, cq, y, s, dp)
            for n in range(NS):
                for e in range(4):
                    col = cq + 8 * n + 2 * tq + (e % 2)  # the query, in the block
                    gm = ONE
                    kv_i = k0 + ra + g + 8 * (e // 2)
                    if HAS_MOD and col < q_len and kv_i < n_kv:
                        p, gm = mod_p(s[n, e] * scale, sm[IX(y + OL + col)], b, h, q0 + col, kv_i)
                    else:
                        p = exp2(s[n, e] * s2 - sm[IX(y + OL + col)])
                    if edge:
                        if col >= q_len or (CAUSAL and kv_i > q0 + col) or (
                                HAS_MASK and (kv_i >= n_kv or not mask_ok(b, h, q0 + col, kv_i))):
                            p = ZERO
                    s[n, e] = p
                    dp[n, e] = p * gm * (dp[n, e] - sm[IX(y + OD + col)])  # (P·score_mod'(S) first: a pair's exchange)
            accumulate(sm, xch, tid, cq, s, small, y + Y2, acc_v, t, 0)  # dV_j += Pᵀ dO_i
            accumulate(sm, xch, tid, cq, dp, small, y + Y1, acc_k, t, 0)  # dK_j += dSᵀ Q_i

    @inline_device
    def add_dq(sm, xch, tid, dq, b, h, qc, n_q, roff, scale, u):
        """dQ[qc .. qc + CH] += scale·dS K_j in HBM by fp32 atomics (dq's rows from ``roff`` on: an
        ordered dkdv's second sum at Nq, :data:`ORDERED_DQ`), dS the chunk's from the dSᵀ tile
        (all the block's keys: the k-index), K_j the resident tile: each warp takes UPW 8-column
        groups of one 16-row tile (the A fragment read once a k-step, keys 2t and 2t + 1 as t and
        t + 4, as :func:`summer`'s B), summed on the tensor cores into ``u``."""
        g = (tid % 32) // 4
        tq = tid % 4
        u0 = (tid // 32) * UPW
        m = u0 // KD  # the warp's 16-row tile of the chunk
        c0 = u0 - m * KD  # its first 8-column group
        for w in range(UPW):
            for i in range(4):
                u[w, i] = ZERO
        for kk in range(R // 8):
            at = ODS + (8 * kk + 2 * tq) * DSS + 16 * m + g
            ab0, as0 = split(sm[IX(at)])
            ab1, as1 = split(sm[IX(at + 8)])
            ab2, as2 = split(sm[IX(at + DSS)])
            ab3, as3 = split(sm[IX(at + DSS + 8)])
            for w in range(UPW):
                bt = X1 + (8 * kk + 2 * tq) * P_ + 8 * (c0 + w) + g
                bb0, bs0 = parts(sm[IX(bt)], EXACT)
                bb1, bs1 = parts(sm[IX(bt + P_)], EXACT)
                u[w, 0], u[w, 1], u[w, 2], u[w, 3] = mma3(
                    xch, tid, ab0, ab1, ab2, ab3, as0, as1, as2, as3, bb0, bb1, bs0, bs1,
                    u[w, 0], u[w, 1], u[w, 2], u[w, 3], False, EXACT)
        for i in range(2):
            row = qc + 16 * m + g + 8 * i
            if row < n_q:
                for w in range(UPW):
                    col = 8 * (c0 + w) + 2 * tq
                    cuda.atomic.add(dq, (b, h, IX(row + roff), IX(col)), u[w, 2 * i] * scale)
                    cuda.atomic.add(dq, (b, h, IX(row + roff), IX(col + 1)), u[w, 2 * i + 1] * scale)

    @inline_device
    def dkdv_pair_tile(sm, xch, tid, ra, role, b, h, q0, q_len, k0, n_kv, y, s, small, t, acc, scale, s2, dq, n_q, u,
                       turns, turn, ahead, roff):
        """A paired dkdv's tile (:func:`paired`), the Q block at q0 in the stage at offset ``y``: warp
        role 0 of the pair computes Pᵀ, leaves it (times score_mod'(S)) in the exchange and adds
        Pᵀ dO_i to ``acc`` (dV_j); role 1 computes dPᵀ, takes Pᵀ from the exchange and adds
        dSᵀ Q_i to ``acc`` (dK_j). Each chunk has one barrier: its buffer (of two) is written again
        two chunks later, after the partner has passed the next chunk's barrier. Ordered
        (:data:`ORDERED_DQ`): before chunk c's atomics the block waits until ``turns[turn + c]``
        reads ``ahead`` (the blocks before it in the tile's chain have added that chunk); chunk c - 1
        is counted done after the block's first barrier of chunk c, the last chunk by the caller
        after the tile's."""
        g = (tid % 32) // 4
        tq = tid % 4
        lane = tid % 32
        edge = q_len < C or (CAUSAL and q0 < k0 + R - 1)  # entries to mask (block-uniform; no mask here)
        for cq in range(0, C, CH):
            xb = OX + ((cq // CH) % 2) * (R * CH) + ra * CH + lane  # this pair's buffer, this lane
            if role == 0:
                product(sm, xch, tid, ra, cq, X1, y + Y1, s)  # Sᵀ = K_j Q_iᵀ
                for n in range(NS):
                    for e in range(4):
                        col = cq + 8 * n + 2 * tq + (e % 2)  # the query, in the block
                        gm = ONE
                        kv_i = k0 + ra + g + 8 * (e // 2)
                        if HAS_MOD and col < q_len and kv_i < n_kv:
                            p, gm = mod_p(s[n, e] * scale, sm[IX(y + OL + col)], b, h, q0 + col, kv_i)
                        else:
                            p = exp2(s[n, e] * s2 - sm[IX(y + OL + col)])
                        if edge:
                            if col >= q_len or (CAUSAL and kv_i > q0 + col):
                                p = ZERO
                        s[n, e] = p
                        sm[IX(xb + (4 * n + e) * 32)] = p * gm
            else:
                product(sm, xch, tid, ra, cq, X2, y + Y2, s)  # dPᵀ = V_j dO_iᵀ
            if FUSED:
                cuda.syncthreads()  # the pairs' Pᵀ are in, and every warp is done with the last chunk's dSᵀ
                if ORDERED and cq > 0 and tid == 0:
                    turn_done(turns, turn + cq // CH - 1)  # (every thread's atomics of the last chunk are in)
            else:
                pair_sync(ra)  # the pair's Pᵀ is in the exchange
            if role == 1:
                for n in range(NS):
                    for e in range(4):
                        col = cq + 8 * n + 2 * tq + (e % 2)
                        s[n, e] = sm[IX(xb + (4 * n + e) * 32)] * (s[n, e] - sm[IX(y + OD + col)])
                        if FUSED:  # dSᵀ -> the block's tile, [key][query]
                            sm[IX(ODS + (ra + g + 8 * (e // 2)) * DSS + 8 * n + 2 * tq + (e % 2))] = s[n, e]
            if FUSED:
                if ORDERED and tid == 0:  # this chunk's turn to add to dQ_i (come already, mostly)
                    turn_wait(turns, turn + cq // CH, ahead)
                cuda.syncthreads()  # the block's dSᵀ is in
            if role == 0:
                accumulate(sm, xch, tid, cq, s, small, y + Y2, acc, t, 0)  # dV_j += Pᵀ dO_i
            else:
                accumulate(sm, xch, tid, cq, s, small, y + Y1, acc, t, 0)  # dK_j += dSᵀ Q_i
            if FUSED:
                add_dq(sm, xch, tid, dq, b, h, q0 + cq, n_q, roff, scale, u)  # dQ_i += dS K_j, by atomics

    @inline_device
    def dq_tile(sm, xch, tid, ra, b, h, q0, n_q, k0, kv_len, y, s, dp, small, t, acc, l2, dd, scale, s2):
        """dQ_i += dS K_j for the K/V block at k0, its K_j, V_j in the stage at offset ``y``: the
        two-stage loop's tile (the one-stage loop has the same body inline)."""
        g = (tid % 32) // 4
        tq = tid % 4
        edge = HAS_MASK or kv_len < C or (CAUSAL and k0 + C - 1 > q0)  # entries to mask (block-uniform)
        for cq in range(0, C, CH):
            products(sm, xch, tid, ra, cq, y, s, dp)
            for n in range(NS):
                for e in range(4):
                    col = cq + 8 * n + 2 * tq + (e % 2)  # the key, in the block
                    gm = ONE
                    q_i = q0 + ra + g + 8 * (e // 2)
                    if HAS_MOD and col < kv_len and q_i < n_q:
                        p, gm = mod_p(s[n, e] * scale, l2[e // 2], b, h, q_i, k0 + col)
                    else:
                        p = exp2(s[n, e] * s2 - l2[e // 2])
                    if edge:
                        if col >= kv_len or (CAUSAL and k0 + col > q_i) or (
                                HAS_MASK and (q_i >= n_q or not mask_ok(b, h, q_i, k0 + col))):
                            p = ZERO
                    dp[n, e] = p * gm * (dp[n, e] - dd[e // 2])
            accumulate(sm, xch, tid, cq, dp, small, y + Y1, acc, t, 0)  # dQ_i += dS K_j

    @inline_device
    def dq_pair_tile(sm, xch, tid, ra, role, b, h, q0, n_q, k0, kv_len, y, s, small, t, acc, l2, dd, scale, s2):
        """A paired dq's tile (:func:`paired`), the K/V block at k0 in the stage at offset ``y``: warp
        role 0 of the pair computes P (times score_mod'(S)), role 1 dP - D; each leaves its own in
        the exchange, takes the partner's, forms the same dS = P·(dP - D) and adds dS K_j's half of
        the columns (role 0 the first) to ``acc``. Two barriers a chunk: the values are in, and read."""
        g = (tid % 32) // 4
        tq = tid % 4
        lane = tid % 32
        edge = kv_len < C or (CAUSAL and k0 + C - 1 > q0)  # entries to mask (block-uniform; no mask here)
        xb = OX + ra * 2 * CH + role * 16 * CH + lane  # this warp's buffer, this lane
        xo = OX + ra * 2 * CH + (1 - role) * 16 * CH + lane  # the partner's
        for cq in range(0, C, CH):
            if role == 0:
                product(sm, xch, tid, ra, cq, X1, y + Y1, s)  # S = Q_i K_jᵀ
                for n in range(NS):
                    for e in range(4):
                        col = cq + 8 * n + 2 * tq + (e % 2)  # the key, in the block
                        gm = ONE
                        q_i = q0 + ra + g + 8 * (e // 2)
                        if HAS_MOD and col < kv_len and q_i < n_q:
                            p, gm = mod_p(s[n, e] * scale, l2[e // 2], b, h, q_i, k0 + col)
                        else:
                            p = exp2(s[n, e] * s2 - l2[e // 2])
                        if edge:
                            if col >= kv_len or (CAUSAL and k0 + col > q_i):
                                p = ZERO
                        s[n, e] = p * gm
            else:
                product(sm, xch, tid, ra, cq, X2, y + Y2, s)  # dP = dO_i V_jᵀ
                for n in range(NS):
                    for e in range(4):
                        s[n, e] = s[n, e] - dd[e // 2]
            for n in range(NS):
                for e in range(4):
                    sm[IX(xb + (4 * n + e) * 32)] = s[n, e]
            pair_sync(ra)  # the pair's P and dP - D are in the exchange
            for n in range(NS):
                for e in range(4):
                    s[n, e] = s[n, e] * sm[IX(xo + (4 * n + e) * 32)]  # dS = P·(dP - D), either way round
            pair_sync(ra)  # ... and read, before the next chunk's are written
            accumulate_half(sm, xch, tid, cq, s, small, y + Y1, acc, t, role * KH)  # dQ_i += dS K_j

    #: L·log2 e and D values a thread of dkdv carries from a block's loads to its stage (pipelined)
    NL = -(-C // NT)

    if DKDV:

        @inline_ir
        def body(q, k, v, do, lse, dvec, dk, dv, dq, turns, scale):
            if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or do.shape[3] != D:
                return  # (never: the launcher checks; this tells the compiler the row length is D)
            tid = cuda.threadIdx.x
            ra = 16 * (tid // (64 if PAIR else 32))  # the warp's (the pair's) first key in the block
            role = (tid // 32) % 2  # (paired: 0 takes Pᵀ and dV_j, 1 dSᵀ and dK_j)
            g = (tid % 32) // 4
            tq = tid % 4
            n_kb = cuda.gridDim.x  # K/V blocks of a head
            if ORDERED:  # (head, K block) by ticket: heads in turn, each head's K blocks from the last down
                tk = cuda.shared.array(1, int32)  # the block's ticket
                if tid == 0:
                    tk[0] = cuda.atomic.add(turns, 0, 1)
                cuda.syncthreads()
                bh = tk[0] // n_kb
                jb = n_kb - 1 - (tk[0] - bh * n_kb)
            else:
                bh = cuda.blockIdx.y
                jb = cuda.blockIdx.x
            n_heads = q.shape[1]
            b = bh // n_heads
            h = bh - b * n_heads
            n_q = q.shape[2]
            n_kv = k.shape[2]
            k0 = jb * R
            kv_len = min(R, n_kv - k0)
            sm = cuda.shared.array(0, float32, alignment=ALIGN)
            xch = cuda.shared.array(NX, float32)
            s2 = scale * LOG2E
            acc_v = cuda.local.array((KD, 4), float32)
            acc_k = cuda.local.array((KD, 4), float32)
            s = cuda.local.array((NS, 4), float32)
            dp = cuda.local.array((NS, 4), float32)
            small = cuda.local.array((NS, 4), float32)
            t = cuda.local.array((AG, 4), float32)
            dqt = cuda.local.array((UPW, 4), float32)  # (atomic_dq: a chunk's dQ, UPW 8-column groups)
            flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
            for kk in range(KD):
                for i in range(4):
                    acc_v[kk, i] = ZERO
                    acc_k[kk, i] = ZERO
            i0 = 0
            n_qb = (n_q + C - 1) // C  # Q blocks
            n_blocks = n_qb  # (the walk's end: block i is Q block i, or i - n_qb past the last)
            if ORDERED:  # causal as below; else from the Q block of the first key, wrapping round (ORDERED_DQ)
                i0, n_blocks = _ordered_walk(jb, n_q, C, R, CAUSAL)
            elif CAUSAL:  # earlier Q blocks see none of these keys
                i0 = k0 // C
                if k0 >= n_q:
                    n_blocks = i0  # no query sees this block: nothing loaded, zeros stored
            if PIPE:
                lreg = cuda.local.array(NL, float32)
                dreg = cuda.local.array(NL, float32)
                if i0 < n_blocks:
                    copy_resident(k[b, h], k0, kv_len, sm, X1, tid)
                    copy_resident(v[b, h], k0, kv_len, sm, X2, tid)
                    cp_async_commit()
                for i in range(i0, n_blocks + 1):
                    # stage (i - i0) % 2 takes block i's Q_i, dO_i by cp.async while block i - 1 is computed
                    if i < n_blocks:
                        q0 = (i - n_qb if i >= n_qb else i) * C
                        q_len = min(C, n_q - q0)
                        y = ((i - i0) % 2) * STAGE
                        copy_streamed(q[b, h], q0, q_len, sm, y + Y1, tid)
                        copy_streamed(do[b, h], q0, q_len, sm, y + Y2, tid)
                        cp_async_commit()
                        for u in range(NL):  # L_i, D_i: loaded now, stored once block i - 1 is done
                            r = tid + u * NT
                            lreg[u] = ZERO
                            dreg[u] = ZERO
                            if r < q_len:
                                lreg[u] = lse[b, h, q0 + r] * LOG2E
                                dreg[u] = dvec[b, h, q0 + r]
                    if i > i0:
                        ic = i - 1  # the block computed now
                        if i < n_blocks:
                            cp_async_wait_but_one()  # block ic's copies (and K_j, V_j's) have landed
                        else:
                            cp_async_wait()
                        cuda.syncthreads()  # ... everyone's, and block ic's L, D are stored
                        iq = ic - n_qb if ic >= n_qb else ic  # the Q block
                        q0 = iq * C
                        turn, ahead, roff = 0, 0, 0  # (ordered: the tile's chain, the blocks before it there)
                        if ORDERED:  # the chain of the tile (the second: its own sum, rows from Nq on)
                            chain, ahead = _ordered_turn(jb, iq, i0, n_kb, n_q, C, R, CAUSAL)
                            turn, roff = 1 + NCH * (2 * (bh * n_qb + iq) + chain), chain * n_q
                        if PAIR:  # (acc_v: the warp's one sum, dV_j or dK_j by its role)
                            dkdv_pair_tile(sm, xch, tid, ra, role, b, h, q0, min(C, n_q - q0), k0, n_kv,
                                           ((ic - i0) % 2) * STAGE, s, small, t, acc_v, scale, s2, dq, n_q, dqt,
                                           turns, turn, ahead, roff)
                        else:
                            dkdv_tile(sm, xch, tid, ra, b, h, q0, min(C, n_q - q0), k0, n_kv, ((ic - i0) % 2) * STAGE,
                                      s, dp, small, t, acc_v, acc_k, scale, s2)
                        cuda.syncthreads()  # every thread is done with the stage before block ic + 2 fills it
                        if ORDERED and tid == 0:
                            turn_done(turns, turn + NCH - 1)  # the block's last chunk at Q block iq
                    if i < n_blocks:
                        y = ((i - i0) % 2) * STAGE
                        for u in range(NL):
                            r = tid + u * NT
                            if r < C:
                                sm[IX(y + OL + r)] = lreg[u]
                                sm[IX(y + OD + r)] = dreg[u]
            else:
                kv_loaded = False
                if not HAS_MASK and i0 < n_blocks:  # every Q block from i0 on sees the block
                    load_resident(k, b, h, k0, kv_len, sm, X1, tid)
                    load_resident(v, b, h, k0, kv_len, sm, X2, tid)
                for i in range(i0, n_blocks):
                    q0 = i * C
                    q_len = min(C, n_q - q0)
                    if HAS_MASK:
                        if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                            continue  # a mask's empty tile: skipped, no loads
                    cuda.syncthreads()  # every thread is done reading the previous Q_i, dO_i
                    if HAS_MASK and not kv_loaded:  # K_j, V_j at the first tile a Q block sees (the counting build's order)
                        load_resident(k, b, h, k0, kv_len, sm, X1, tid)
                        load_resident(v, b, h, k0, kv_len, sm, X2, tid)
                        kv_loaded = True
                    load_streamed(q, b, h, q0, q_len, sm, Y1, tid)
                    load_streamed(do, b, h, q0, q_len, sm, Y2, tid)
                    for r in range(tid, C, NT):
                        lv = ZERO
                        dv_ = ZERO
                        if r < q_len:
                            lv = lse[b, h, q0 + r] * LOG2E
                            dv_ = dvec[b, h, q0 + r]
                        sm[IX(OL + r)] = lv
                        sm[IX(OD + r)] = dv_
                    cuda.syncthreads()
                    # (the tile's body inline, as dkdv_tile's: called, the masked dkdv at d = 128 spilled on the H200)
                    edge = HAS_MASK or q_len < C or (CAUSAL and q0 < k0 + R - 1)  # entries to mask (block-uniform)
                    for cq in range(0, C, CH):
                        products(sm, xch, tid, ra, cq, 0, s, dp)
                        for n in range(NS):
                            for e in range(4):
                                col = cq + 8 * n + 2 * tq + (e % 2)  # the query, in the block
                                gm = ONE
                                kv_i = k0 + ra + g + 8 * (e // 2)
                                if HAS_MOD and col < q_len and kv_i < n_kv:
                                    p, gm = mod_p(s[n, e] * scale, sm[IX(OL + col)], b, h, q0 + col, kv_i)
                                else:
                                    p = exp2(s[n, e] * s2 - sm[IX(OL + col)])
                                if edge:
                                    if col >= q_len or (CAUSAL and kv_i > q0 + col) or (
                                            HAS_MASK and (kv_i >= n_kv or not mask_ok(b, h, q0 + col, kv_i))):
                                        p = ZERO
                                s[n, e] = p
                                dp[n, e] = p * gm * (dp[n, e] - sm[IX(OD + col)])  # (as dkdv_tile's)
                        accumulate(sm, xch, tid, cq, s, small, Y2, acc_v, t, 0)  # dV_j += Pᵀ dO_i
                        accumulate(sm, xch, tid, cq, dp, small, Y1, acc_k, t, 0)  # dK_j += dSᵀ Q_i
            cuda.syncthreads()  # K_j, V_j are loaded (by every thread) before a warp writes its rows over them
            if not PAIR:
                stage(sm, X2, ra, acc_v, float32(1.0), tid, 0)
                stage(sm, X1, ra, acc_k, scale, tid, 0)
            elif role == 0:
                stage(sm, X2, ra, acc_v, float32(1.0), tid, 0)  # dV_j
            else:
                stage(sm, X1, ra, acc_v, scale, tid, 0)  # dK_j
            cuda.syncthreads()
            save(dv, b, h, k0, kv_len, sm, X2, tid)
            save(dk, b, h, k0, kv_len, sm, X1, tid)

        if ORDERED:
            def kernel(q, k, v, do, lse, dvec, dk, dv, dq, turns, scale, counters):
                body(q, k, v, do, lse, dvec, dk, dv, dq, turns, scale)
        elif FUSED:
            def kernel(q, k, v, do, lse, dvec, dk, dv, dq, scale, counters):
                body(q, k, v, do, lse, dvec, dk, dv, dq, counters, scale)  # (counters in turns' place: unused)
        else:
            def kernel(q, k, v, do, lse, dvec, dk, dv, scale, counters):
                body(q, k, v, do, lse, dvec, dk, dv, dk, counters, scale)  # (dk in dq's place, counters in turns': unused)

        def grid(problem):
            return ((problem.n_kv + R - 1) // R, problem.bh)

    else:

        def kernel(q, k, v, do, lse, dvec, dq, scale, counters):
            if q.shape[3] != D or k.shape[3] != D or v.shape[3] != D or do.shape[3] != D:
                return
            tid = cuda.threadIdx.x
            ra = 16 * (tid // (64 if PAIR else 32))  # the warp's (the pair's) first query in the block
            role = (tid // 32) % 2  # (paired: 0 takes P and dQ_i's first columns, 1 dP and the rest)
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
            sm = cuda.shared.array(0, float32, alignment=ALIGN)
            xch = cuda.shared.array(NX, float32)
            s2 = scale * LOG2E
            acc = cuda.local.array((KA, 4), float32)
            s = cuda.local.array((NS, 4), float32)
            dp = cuda.local.array((NS, 4), float32)
            small = cuda.local.array((NS, 4), float32)
            t = cuda.local.array((AG, 4), float32)
            l2 = cuda.local.array(2, float32)
            dd = cuda.local.array(2, float32)
            flag = cuda.shared.array(1, int32)  # tile_visited's vote under a mask
            for kk in range(KA):
                for i in range(4):
                    acc[kk, i] = ZERO
            for i in range(2):
                r = ra + g + 8 * i
                l2[i] = ZERO
                dd[i] = ZERO
                if r < q_len:  # (paired: role 0 needs L alone, role 1 D alone; each row's loaded once)
                    if not PAIR or role == 0:
                        l2[i] = lse[b, h, q0 + r] * LOG2E
                    if not PAIR or role == 1:
                        dd[i] = dvec[b, h, q0 + r]
            if not PIPE:
                load_resident(q, b, h, q0, q_len, sm, X1, tid)
                load_resident(do, b, h, q0, q_len, sm, X2, tid)
            kv_end = n_kv
            if CAUSAL:  # later blocks are fully masked: skipped
                kv_end = min(n_kv, q0 + q_len)
            n_blocks = (kv_end + C - 1) // C
            if PIPE:
                copy_resident(q[b, h], q0, q_len, sm, X1, tid)
                copy_resident(do[b, h], q0, q_len, sm, X2, tid)
                cp_async_commit()
                for j in range(n_blocks + 1):
                    # stage j % 2 takes block j's K_j, V_j by cp.async while block j - 1 is computed
                    if j < n_blocks:
                        k0 = j * C
                        y = (j % 2) * STAGE
                        copy_streamed(k[b, h], k0, min(C, n_kv - k0), sm, y + Y1, tid)
                        copy_streamed(v[b, h], k0, min(C, n_kv - k0), sm, y + Y2, tid)
                        cp_async_commit()
                    if j > 0:
                        if j < n_blocks:
                            cp_async_wait_but_one()  # block j - 1's copies (and Q_i, dO_i's) have landed
                        else:
                            cp_async_wait()
                        cuda.syncthreads()  # ... everyone's
                        k0 = (j - 1) * C
                        if PAIR:
                            dq_pair_tile(sm, xch, tid, ra, role, b, h, q0, n_q, k0, min(C, n_kv - k0),
                                         ((j - 1) % 2) * STAGE, s, small, t, acc, l2, dd, scale, s2)
                        else:
                            dq_tile(sm, xch, tid, ra, b, h, q0, n_q, k0, min(C, n_kv - k0), ((j - 1) % 2) * STAGE,
                                    s, dp, small, t, acc, l2, dd, scale, s2)
                        cuda.syncthreads()  # every thread is done with the stage before block j + 1 fills it
                cp_async_wait()  # (Q_i, dO_i's copies, where the block sees no key)
            else:
                for j in range(n_blocks):
                    k0 = j * C
                    kv_len = min(C, n_kv - k0)
                    if HAS_MASK:
                        if not tile_visited(b, h, q0, q_len, k0, kv_len, tid, flag):
                            continue  # a mask's empty tile: skipped, no loads
                    cuda.syncthreads()  # every thread is done reading the previous K_j, V_j
                    load_streamed(k, b, h, k0, kv_len, sm, Y1, tid)
                    load_streamed(v, b, h, k0, kv_len, sm, Y2, tid)
                    cuda.syncthreads()
                    # (the tile's body inline, as dq_tile's: the kernels' code as measured one-stage)
                    edge = HAS_MASK or kv_len < C or (CAUSAL and k0 + C - 1 > q0)  # entries to mask (block-uniform)
                    for cq in range(0, C, CH):
                        products(sm, xch, tid, ra, cq, 0, s, dp)
                        for n in range(NS):
                            for e in range(4):
                                col = cq + 8 * n + 2 * tq + (e % 2)  # the key, in the block
                                gm = ONE
                                q_i = q0 + ra + g + 8 * (e // 2)
                                if HAS_MOD and col < kv_len and q_i < n_q:
                                    p, gm = mod_p(s[n, e] * scale, l2[e // 2], b, h, q_i, k0 + col)
                                else:
                                    p = exp2(s[n, e] * s2 - l2[e // 2])
                                if edge:
                                    if col >= kv_len or (CAUSAL and k0 + col > q_i) or (
                                            HAS_MASK and (q_i >= n_q or not mask_ok(b, h, q_i, k0 + col))):
                                        p = ZERO
                                dp[n, e] = p * gm * (dp[n, e] - dd[e // 2])
                        accumulate(sm, xch, tid, cq, dp, small, Y1, acc, t, 0)  # dQ_i += dS K_j
            cuda.syncthreads()  # Q_i is loaded (by every thread) before a warp writes its rows over it
            if PAIR:
                stage_half(sm, X1, ra, acc, scale, tid, role * KH)
            else:
                stage(sm, X1, ra, acc, scale, tid, 0)
            cuda.syncthreads()
            save(dq, b, h, q0, q_len, sm, X1, tid)

        def grid(problem):
            return ((problem.n_q + R - 1) // R, problem.bh)

    return kernel, n_smem, grid
