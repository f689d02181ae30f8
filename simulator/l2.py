"""An L2 cache between SRAM and HBM: how much of a schedule's global-memory traffic reaches DRAM.

``simulator/counts.py`` counts what the algorithm moves between HBM and SRAM. On a GPU each of
those accesses goes to the L2 cache first, and only its misses and write-backs reach DRAM. This
module replays the same accesses, tile by tile and in the order the GPU issues thread blocks,
through a sector-level model of the L2, and reports the DRAM bytes. The total it requests is,
byte for byte, ``simulate_counts(schedule, problem).hbm_bytes`` (tested per tensor), so the L2
sits on top of the same algorithm.

Request stream (:func:`tile_requests`)
    One entry per kernel launch, in launch order: flash2 "main" (grid (Tr, B·H)), flash1 "main"
    (grid (B·H,)), standard "qk" (grid (Tc, Tr, B·H)), "softmax" (grid (Nq, B·H)), "pv" (grid
    (Tr, B·H)), as in ``kernels/launch.py``. Thread blocks are listed in CUDA's issue order,
    blockIdx.x fastest, then y, then z. A block is a list of *steps*, one per iteration of its
    tile loop (the kernels' docstrings give the loops); a step is a list of tile requests. A
    request is a read or a write of ``rows`` byte ranges of one tensor, each range one row of the
    tile (rows of a full-width tile are contiguous and merged into one range). Tensors are
    row-major, Q/K/V/O (B, H, N, d) in the input dtype, S/P (B, H, Nq, Nk) and L/ℓ/m (B, H, Nq) in
    fp32, each at its own base address, 2 MiB-aligned, allocated in ``kernels/launch.py``'s order.
    Causal S and P tiles move only their allowed entries: row r of a tile at (q0, k0) holds
    ``clamp(q0 + r - k0 + 1, 0, kv_len)`` of them. Masks other than causal are not modelled.

    flash2 block (i, bh): [Q_i] [K_j, V_j] for each visited j, [O_i, L_i written].
    flash1 block (bh): [O, ℓ, m written] then for each K/V block j: [K_j, V_j], and for each
    visited Q block i: [Q_i, m_i, ℓ_i read; m_i, ℓ_i (and at i's last block L_i) written; O_i read,
    O_i written]. standard qk block (j, i, bh): [Q_i, K_j] [S_ij written] (a fully masked causal
    tile has no steps); softmax block (row, bh): [S row] [L row written, S row, P row written];
    pv block (i, bh): [P_ij, V_j] for each visited j, [O_i written].

Residency and interleaving (the approximation)
    ``resident_blocks`` blocks are in flight at once (default: SMs × blocks per SM, the latter
    from the ``gpu``'s shared memory per SM, warp and block limits; registers are not known
    here, pass the measured residency where they limit it). The first ``resident_blocks`` blocks
    start together; rounds then visit the resident blocks in slot order and each executes its
    next step whole; a block that finishes hands its slot to the next block in issue order. So
    blocks advance in lockstep at tile-step granularity: blocks that run at the same time touch
    the same K/V tiles at about the same time, as on the GPU, but the real drift between SMs,
    the L1 caches (which filter some re-reads before L2) and the order of requests inside a step
    are not modelled.

Cache model
    ``l2_bytes`` of ``line``-byte lines in ``ways``-way sets, ``l2_bytes // (line·ways)`` sets;
    with ``set_index="hash"`` the lines of a 32 KiB chunk go to consecutive sets, from an offset
    hashed from the chunk's address (GPUs hash L2 addresses too, so that power-of-two strides such
    as S's rows do not pile into a few sets; keeping chunks contiguous keeps the model's own
    memory accesses local); ``"modulo"``: the line's address modulo the number of sets. Each
    line keeps a valid and a dirty bit per ``sector``-byte sector (at most 8 a line).
    Replacement is LRU (timestamp of the last access) or FIFO (timestamp of the allocation),
    within the set. Set-associative rather than fully associative: a set is a short scan, and
    with hashed sets 16 ways behave close to a fully associative LRU except near capacity,
    where sets that overflow thrash on cyclic access patterns (a cliff real L2s show too).

    - read: sectors of the range not valid are read from DRAM (one sector each) and become valid;
    - write: write-allocate without a fetch; the touched sectors become dirty, and those the range
      covers whole become valid (a partially written sector is read from DRAM only if it is
      later read);
    - eviction: the victim's dirty sectors are written to DRAM (``write_evicted_bytes``);
    - end: dirty sectors left are counted as ``write_flush_bytes`` (at the end of every launch
      with ``cold_launches=True``, which also empties the cache before the next launch, as
      Nsight Compute's default ``--cache-control all`` does; else once, after the last launch).
      ``write_bytes`` includes them when ``flush_at_end`` (the default); a profiler measures a
      kernel's DRAM writes while it runs, so compare its ``dram__bytes_write`` with
      ``write_evicted_bytes``.

Write-back while resident (``dirty_limit_bytes``)
    A GPU does not keep a whole L2 of dirty data: on an H100 (50 MiB of L2) a 64 or 128 MiB write
    stream (``kernels/l2probe.py``, ``sandbox.lab.ncu``'s probes) ends with about 21-23 MiB of it
    still in L2, the rest written to DRAM while the kernel runs, though reads of the same sizes stay
    cached as a 50 MiB LRU predicts. With a limit, the model keeps the lines in the order they became dirty; when a write
    takes the dirty sectors past the limit, the lines dirtied longest ago are written back
    (``write_cleaned_bytes``) and stay cached, clean. Without it (the default) dirty lines leave
    only when evicted. The limit is a fitted number, not a mechanism: the probes measure it.

Complexity
    Generating the stream is O(number of tile requests) (O(Tr·Tc) for all kinds, plus O(Nq) for
    standard's softmax), in compiled loops. The cache loop costs O(ways) per (request row, line)
    pair, i.e. about requested bytes / line × ways operations: flash2 at N = 16K, d = 128, fp32,
    64×64 blocks requests 4.3 GB (34 M line visits, K and V re-read once per Q block) and takes a
    fraction of a second to a couple of seconds on one core. Memory is O(requests + l2 lines).

    ``slices="one"`` simulates a single (b, h) slice and multiplies by B·H. The slices are
    disjoint in address space, so this is exact for the requested bytes, and for DRAM when the
    slices run one after another (each slice has at least ``resident_blocks`` blocks per launch,
    true for flash2 and standard at long N) and a slice's data is not reused by the next (never
    is). It is not valid for flash1 with B·H > 1 (all its slices, one block each, run at once
    and share the L2). The split of the writes between eviction and flush is that of one slice
    times B·H; their sum is the robust number.

The machine is always named: ``gpu`` (a :class:`sandbox.vocabulary.gpus.DeviceFacts`, as the lab reads it
from the device, or a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS``) gives the L2 size, the SMs and their
limits, or ``l2_bytes`` and ``resident_blocks`` are given explicitly. This module never reads a
device itself.

Example:
    >>> from sandbox import Problem, Schedule
    >>> r = simulate_dram(Schedule("flash2", block_q=64, block_kv=64), Problem(1, 1, 1024, 1024, 64), gpu="h200")
    >>> r.read_bytes == 3 * 1024 * 64 * 4   # K and V re-read per Q block, all hits after the first
    True
"""

import dataclasses
from types import MappingProxyType

import numpy as np
from numba import njit

from sandbox.vocabulary.gpus import known_gpu
from simulator import table
from sandbox.vocabulary.schedule import sram_buffers, sram_offsets

#: Tensors of the forward kinds, in allocation order (kernels/launch.py): inputs, outputs, scratch.
TENSORS = ("Q", "K", "V", "O", "L", "l", "m", "S", "P", "Opart", "Lpart")
_Q, _K, _V, _O, _L, _LL, _M, _S, _P, _OP, _LP = range(len(TENSORS))
#: Base addresses are aligned like large cudaMalloc allocations.
BASE_ALIGN = 2 * 2**20

# request columns: address of row 0, rows, bytes per row, row stride, triangle, element size,
# tensor, write (0/1). A triangle t != _NO_TRI limits row r to min(row_bytes, max(0, t + r)·elem)
# bytes: causal S/P tiles.
_NCOLS = 8
_NO_TRI = -(1 << 62)
# statistics columns, per (launch, tensor)
_REQ_R, _REQ_W, _SEC_R, _SEC_W, _MISS_R, _EVICT_W, _FLUSH_W, _CLEAN_W = range(8)
_NSTATS = 8
# geometry columns (_Cache.geom)
_G_SETS, _G_WAYS, _G_LINE, _G_SECTOR, _G_LRU, _G_HASH, _G_DIRTY_LIMIT = range(7)
# write-back queue state (_Cache.qstate): head, tail (ring positions, monotonic), dirty sectors now
_Q_HEAD, _Q_TAIL, _Q_DIRTY = range(3)

POLICIES = ("lru", "fifo")
SET_INDEX = ("hash", "modulo")
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_HASH_CHUNK_LINES = 256
_SHIFT = np.uint64(33)


# -- request stream -------------------------------------------------------------------------
@njit(cache=True)
def _emit(req, n, fill, addr, rows, row_bytes, stride, tri, elem, tensor, write):
    """Append one request (when ``fill``); return the new count."""
    if fill:
        req[n, 0] = addr
        req[n, 1] = rows
        req[n, 2] = row_bytes
        req[n, 3] = stride
        req[n, 4] = tri
        req[n, 5] = elem
        req[n, 6] = tensor
        req[n, 7] = write
    return n + 1


@njit(cache=True)
def _mark(ptr, n, fill, value):
    """ptr[n] = value (when ``fill``); return n + 1: opens a block (ptr = block_ptr) or a step."""
    if fill:
        ptr[n] = value
    return n + 1


@njit(cache=True)
def _close(block_ptr, step_ptr, nb, ns, nr, fill):
    if fill:
        block_ptr[nb] = ns
        step_ptr[ns] = nr


@njit(cache=True)
def _flash2_row_block(req, nr, ns, step_ptr, fill, q_addr, q_bytes, k_base, v_base, row, it, bc, n_kv, j0, j1,
                      o_addr, o_bytes, o_elem, o_t, l_addr, l_bytes, l_t):
    """One flash2 row block's steps (kernels/flash2.py): Q_i once, K_j and V_j for j in [j0, j1), then
    its O and L (flash2's O_i, L_i; split-KV's fp32 partials). Returns (ns, nr)."""
    # -- Q_i: HBM -> SRAM, it stays there for the whole K/V loop
    ns = _mark(step_ptr, ns, fill, nr)
    nr = _emit(req, nr, fill, q_addr, 1, q_bytes, 0, _NO_TRI, it, _Q, 0)
    for j in range(j0, j1):
        k0 = j * bc
        kv_len = min(bc, n_kv - k0)
        # -- K_j, V_j: HBM -> SRAM
        ns = _mark(step_ptr, ns, fill, nr)
        nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
        nr = _emit(req, nr, fill, v_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _V, 0)
    # -- O_i, L_i -> HBM
    ns = _mark(step_ptr, ns, fill, nr)
    nr = _emit(req, nr, fill, o_addr, 1, o_bytes, 0, _NO_TRI, o_elem, o_t, 1)
    nr = _emit(req, nr, fill, l_addr, 1, l_bytes, 0, _NO_TRI, 4, l_t, 1)
    return ns, nr


@njit(cache=True)
def _gen_flash2(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/flash2.py, grid (Tr, B·H): Q_i once, K_j and V_j per visited tile, O_i and L_i once."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        q_base = bases[_Q] + bh * n_q * row
        k_base = bases[_K] + bh * n_kv * row
        v_base = bases[_V] + bh * n_kv * row
        o_base = bases[_O] + bh * n_q * row
        l_base = bases[_L] + bh * n_q * 4
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            kv_end = min(n_kv, q0 + q_len) if causal else n_kv
            ns, nr = _flash2_row_block(req, nr, ns, step_ptr, fill, q_base + q0 * row, q_len * row, k_base, v_base,
                                       row, it, bc, n_kv, 0, (kv_end + bc - 1) // bc,
                                       o_base + q0 * row, q_len * row, it, _O, l_base + q0 * 4, q_len * 4, _L)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_flash1(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/flash1.py, grid (B·H,): one block walks every tile; O, ℓ, m go through HBM."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        q_base = bases[_Q] + bh * n_q * row
        k_base = bases[_K] + bh * n_kv * row
        v_base = bases[_V] + bh * n_kv * row
        o_base = bases[_O] + bh * n_q * row
        lse_base = bases[_L] + bh * n_q * 4
        l_base = bases[_LL] + bh * n_q * 4
        m_base = bases[_M] + bh * n_q * 4
        nb = _mark(block_ptr, nb, fill, ns)
        # -- O = 0, l = 0, m = -inf in HBM
        ns = _mark(step_ptr, ns, fill, nr)
        nr = _emit(req, nr, fill, o_base, 1, n_q * row, 0, _NO_TRI, it, _O, 1)
        nr = _emit(req, nr, fill, l_base, 1, n_q * 4, 0, _NO_TRI, 4, _LL, 1)
        nr = _emit(req, nr, fill, m_base, 1, n_q * 4, 0, _NO_TRI, 4, _M, 1)
        kv_end = min(n_kv, n_q) if causal else n_kv
        for j in range((kv_end + bc - 1) // bc):
            k0 = j * bc
            kv_len = min(bc, n_kv - k0)
            # -- K_j, V_j: HBM -> SRAM, kept for the inner loop
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
            nr = _emit(req, nr, fill, v_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _V, 0)
            i_start = k0 // br if causal else 0
            for i in range(i_start, tr):
                q0 = i * br
                q_len = min(br, n_q - q0)
                j_last = tc - 1
                if causal:
                    j_last = min(j_last, (q0 + q_len - 1) // bc)
                ns = _mark(step_ptr, ns, fill, nr)
                # -- Q_i: HBM -> SRAM; m_i, l_i: HBM -> registers, then back
                nr = _emit(req, nr, fill, q_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _Q, 0)
                nr = _emit(req, nr, fill, m_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _M, 0)
                nr = _emit(req, nr, fill, l_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _LL, 0)
                nr = _emit(req, nr, fill, m_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _M, 1)
                nr = _emit(req, nr, fill, l_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _LL, 1)
                if j == j_last:  # L_i at the row block's last K/V block
                    nr = _emit(req, nr, fill, lse_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _L, 1)
                # -- O_i = alpha·O_i + beta·P~ V_j: read from HBM, written back
                nr = _emit(req, nr, fill, o_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _O, 0)
                nr = _emit(req, nr, fill, o_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _O, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_partial(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/splitkv.py partial (flash2 with split=True), grid (Tr, B·H, splits): block (i, bh, s) reads
    Q_i and the K/V blocks of its share, and writes its fp32 partial O and L to Opart[b·splits + s, h]."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    heads, n_split = p[8], p[9]
    row = d * it
    row32 = d * 4
    tr = (n_q + br - 1) // br
    per_split = ((n_kv + bc - 1) // bc + n_split - 1) // n_split
    nb = ns = nr = 0
    for s in range(n_split):
        for bh in range(n_bh):
            b = bh // heads
            part = (b * n_split + s) * heads + (bh - b * heads)
            q_base = bases[_Q] + bh * n_q * row
            k_base = bases[_K] + bh * n_kv * row
            v_base = bases[_V] + bh * n_kv * row
            op_base = bases[_OP] + part * n_q * row32
            lp_base = bases[_LP] + part * n_q * 4
            for i in range(tr):
                nb = _mark(block_ptr, nb, fill, ns)
                q0 = i * br
                q_len = min(br, n_q - q0)
                kv_end = min(n_kv, q0 + q_len) if causal else n_kv
                ns, nr = _flash2_row_block(req, nr, ns, step_ptr, fill, q_base + q0 * row, q_len * row, k_base,
                                           v_base, row, it, bc, n_kv, s * per_split,
                                           min((kv_end + bc - 1) // bc, (s + 1) * per_split),
                                           op_base + q0 * row32, q_len * row32, 4, _OP, lp_base + q0 * 4, q_len * 4,
                                           _LP)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_combine(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/splitkv.py combine, grid (Tr, B·H): every split's L_s rows, then L; its O_s rows, then O."""
    n_bh, n_q, d, br, it = p[0], p[1], p[3], p[4], p[6]
    heads, n_split = p[8], p[9]
    row = d * it
    row32 = d * 4
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        b = bh // heads
        h = bh - b * heads
        o_base = bases[_O] + bh * n_q * row
        l_base = bases[_L] + bh * n_q * 4
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            ns = _mark(step_ptr, ns, fill, nr)
            for s in range(n_split):
                part = (b * n_split + s) * heads + h
                nr = _emit(req, nr, fill, bases[_LP] + (part * n_q + q0) * 4, 1, q_len * 4, 0, _NO_TRI, 4, _LP, 0)
            nr = _emit(req, nr, fill, l_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _L, 1)
            ns = _mark(step_ptr, ns, fill, nr)
            for s in range(n_split):
                part = (b * n_split + s) * heads + h
                nr = _emit(req, nr, fill, bases[_OP] + (part * n_q + q0) * row32, 1, q_len * row32, 0, _NO_TRI, 4,
                           _OP, 0)
            nr = _emit(req, nr, fill, o_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _O, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_qk(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/standard.py qk, grid (Tc, Tr, B·H): Q_i, K_j in; the allowed entries of S_ij out."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        q_base = bases[_Q] + bh * n_q * row
        k_base = bases[_K] + bh * n_kv * row
        s_base = bases[_S] + bh * n_q * n_kv * 4
        for i in range(tr):
            for j in range(tc):
                nb = _mark(block_ptr, nb, fill, ns)
                q0 = i * br
                q_len = min(br, n_q - q0)
                k0 = j * bc
                kv_len = min(bc, n_kv - k0)
                if causal and k0 > q0 + q_len - 1:
                    continue  # fully masked tile: the block returns at once
                ns = _mark(step_ptr, ns, fill, nr)
                nr = _emit(req, nr, fill, q_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _Q, 0)
                nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
                ns = _mark(step_ptr, ns, fill, nr)
                tri = q0 - k0 + 1 if causal else _NO_TRI
                nr = _emit(req, nr, fill, s_base + (q0 * n_kv + k0) * 4, q_len, kv_len * 4, n_kv * 4, tri, 4, _S, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_softmax(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/standard.py softmax, grid (Nq, B·H): a row of S read twice, L and a row of P written."""
    n_bh, n_q, n_kv, causal = p[0], p[1], p[2], p[7]
    nb = ns = nr = 0
    for bh in range(n_bh):
        s_base = bases[_S] + bh * n_q * n_kv * 4
        p_base = bases[_P] + bh * n_q * n_kv * 4
        l_base = bases[_L] + bh * n_q * 4
        for r in range(n_q):
            nb = _mark(block_ptr, nb, fill, ns)
            jn = min(n_kv, r + 1) if causal else n_kv
            # -- pass 1: online (max, sum) over the row
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, s_base + r * n_kv * 4, 1, jn * 4, 0, _NO_TRI, 4, _S, 0)
            # -- L -> HBM; pass 2: P = exp(S - m) / l -> HBM
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, l_base + r * 4, 1, 4, 0, _NO_TRI, 4, _L, 1)
            nr = _emit(req, nr, fill, s_base + r * n_kv * 4, 1, jn * 4, 0, _NO_TRI, 4, _S, 0)
            nr = _emit(req, nr, fill, p_base + r * n_kv * 4, 1, jn * 4, 0, _NO_TRI, 4, _P, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_pv(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/matmul.py nn (O = P V), grid (Tr, B·H): P_ij (allowed entries) and V_j per visited tile."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        p_base = bases[_P] + bh * n_q * n_kv * 4
        v_base = bases[_V] + bh * n_kv * row
        o_base = bases[_O] + bh * n_q * row
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            kv_end = min(n_kv, q0 + q_len) if causal else n_kv
            for j in range((kv_end + bc - 1) // bc):
                k0 = j * bc
                kv_len = min(bc, n_kv - k0)
                ns = _mark(step_ptr, ns, fill, nr)
                tri = q0 - k0 + 1 if causal else _NO_TRI
                nr = _emit(req, nr, fill, p_base + (q0 * n_kv + k0) * 4, q_len, kv_len * 4, n_kv * 4, tri, 4, _P, 0)
                nr = _emit(req, nr, fill, v_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _V, 0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, o_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _O, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


def _grid_flash2(s, pr):
    return (-(-pr.n_q // s.block_q), pr.bh)


def _grid_flash1(s, pr):
    return (pr.bh,)


def _grid_qk(s, pr):
    return (-(-pr.n_kv // s.block_kv), -(-pr.n_q // s.block_q), pr.bh)


def _grid_softmax(s, pr):
    return (pr.n_q, pr.bh)


def _grid_partial(s, pr):
    return (-(-pr.n_q // s.block_q), pr.bh, s.kv_splits)


#: The built-in kinds' launches in order: (phase, request generator, grid(schedule, problem)),
#: entered in the simulator's table (simulator/table.py; their tensors must be in TENSORS).
FLASH2_LAUNCHES = (("main", _gen_flash2, _grid_flash2),)
FLASH1_LAUNCHES = (("main", _gen_flash1, _grid_flash1),)
STANDARD_LAUNCHES = (("qk", _gen_qk, _grid_qk), ("softmax", _gen_softmax, _grid_softmax), ("pv", _gen_pv, _grid_flash2))
SPLITKV_LAUNCHES = (("partial", _gen_partial, _grid_partial), ("combine", _gen_combine, _grid_flash2))


def launches(schedule):
    """The kind's launches for the L2 model (simulator/table.py).

    Raises:
        NotImplementedError: the kind has no request stream in the table.
    """
    stream = table.get(schedule.kind).l2
    if stream is None:
        with_stream = tuple(k for k in table.names() if table.get(k).l2 is not None)
        raise NotImplementedError(
            f"simulate_dram: no request stream for kind {schedule.kind!r}; the L2 model knows {with_stream} "
            f"(register the kind with l2=((phase, generator, grid), ...), simulator/table.py)")
    return stream


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch's request stream (see the module docstring).

    Attributes:
        phase: the kernel's phase name ("main", "qk", "softmax", "pv").
        grid: its grid, blockIdx.x first.
        requests: (R, 8) int64: address of row 0, rows, bytes per row, row stride, triangle,
            element size, tensor index into :data:`TENSORS`, write flag.
        step_ptr: (S + 1,) requests of step s are ``requests[step_ptr[s]:step_ptr[s + 1]]``.
        block_ptr: (blocks + 1,) steps of block b (in issue order) are ``block_ptr[b]:block_ptr[b + 1]``.
    """

    phase: str
    grid: tuple
    requests: np.ndarray
    step_ptr: np.ndarray
    block_ptr: np.ndarray

    def rows(self):
        """Every byte range, blocks one after another (no interleaving): arrays (addr, nbytes, write, tensor)."""
        out = [[], [], [], []]
        for a, rows, rb, stride, tri, elem, t, w in self.requests.tolist():
            for r in range(rows):
                n = rb if tri == _NO_TRI else min(rb, max(0, tri + r) * elem)
                if n > 0:
                    for lst, x in zip(out, (a + r * stride, n, w, t)):
                        lst.append(x)
        return tuple(np.asarray(x, dtype=np.int64) for x in out)


def tensor_bases(problem, kv_splits=1):
    """Base address of each tensor of :data:`TENSORS` (int64 array): allocation order, 2 MiB-aligned."""
    it = problem.dtype.itemsize
    sizes = {"Q": problem.n_q * problem.head_dim * it, "K": problem.n_kv * problem.head_dim * it,
             "V": problem.n_kv * problem.head_dim * it, "O": problem.n_q * problem.head_dim * it,
             "L": problem.n_q * 4, "l": problem.n_q * 4, "m": problem.n_q * 4,
             "S": problem.n_q * problem.n_kv * 4, "P": problem.n_q * problem.n_kv * 4,
             "Opart": kv_splits * problem.n_q * problem.head_dim * 4, "Lpart": kv_splits * problem.n_q * 4}
    bases, at = np.zeros(len(TENSORS), dtype=np.int64), BASE_ALIGN
    for t, name in enumerate(TENSORS):
        bases[t] = at
        at += -(-sizes[name] * problem.bh // BASE_ALIGN) * BASE_ALIGN
    return bases


def tile_requests(schedule, problem):
    """The tile-level global-memory requests of ``schedule`` on ``problem``, per kernel launch.

    Returns:
        list of :class:`Launch`, in launch order.
    """
    p = np.array([problem.bh, problem.n_q, problem.n_kv, problem.head_dim, schedule.block_q,
                  schedule.block_kv, problem.dtype.itemsize, int(problem.causal), problem.heads,
                  getattr(schedule, "kv_splits", 1)], dtype=np.int64)
    bases = tensor_bases(problem, getattr(schedule, "kv_splits", 1))
    out = []
    for phase, gen, grid in launches(schedule):
        empty2, empty1 = np.zeros((0, _NCOLS), dtype=np.int64), np.zeros(0, dtype=np.int64)
        nb, ns, nr = gen(p, bases, empty2, empty1, empty1, False)
        req = np.empty((nr, _NCOLS), dtype=np.int64)
        step_ptr, block_ptr = np.empty(ns + 1, dtype=np.int64), np.empty(nb + 1, dtype=np.int64)
        gen(p, bases, req, step_ptr, block_ptr, True)
        out.append(Launch(phase, grid(schedule, problem), req, step_ptr, block_ptr))
    return out


# -- the cache --------------------------------------------------------------------------------
@njit(cache=True)
def _popcount(mask):
    x = np.int64(mask)
    c = 0
    while x:
        x &= x - 1
        c += 1
    return c


@njit(cache=True)
def _set_of(line_no, n_sets, hashed):
    """The set of a line: "hash" keeps a 32 KiB chunk's lines in consecutive sets, at a hashed offset per chunk."""
    if n_sets == 1:
        return 0
    if not hashed:
        return line_no % n_sets
    x = np.uint64(line_no // _HASH_CHUNK_LINES)
    x ^= x >> _SHIFT
    x *= _MIX
    x ^= x >> _SHIFT
    return np.int64((x + np.uint64(line_no)) % np.uint64(n_sets))


@njit(cache=True)
def _compact(queue, epoch, qstate):
    """Drop the queue's stale entries (lines cleaned or evicted since they were queued), keeping the order."""
    cap = queue.shape[0]
    head, tail = qstate[_Q_HEAD], qstate[_Q_TAIL]
    keep = np.empty((tail - head, 2), dtype=np.int64)
    n = 0
    for pos in range(head, tail):
        w, e = queue[pos % cap, 0], queue[pos % cap, 1]
        if epoch[w] == e:
            keep[n, 0], keep[n, 1] = w, e
            n += 1
    for i in range(n):
        queue[i, 0], queue[i, 1] = keep[i, 0], keep[i, 1]
    qstate[_Q_HEAD], qstate[_Q_TAIL] = 0, n


@njit(cache=True)
def _clean_oldest(dirty, owner, queue, epoch, qstate, stats, launch):
    """Write back the dirty sectors of the line dirtied longest ago (it stays cached, clean); False if none."""
    cap = queue.shape[0]
    while qstate[_Q_HEAD] < qstate[_Q_TAIL]:
        pos = qstate[_Q_HEAD] % cap
        w, e = queue[pos, 0], queue[pos, 1]
        qstate[_Q_HEAD] += 1
        if epoch[w] != e:  # stale: cleaned or evicted since
            continue
        n = _popcount(dirty[w])
        stats[launch, owner[w], _CLEAN_W] += n
        qstate[_Q_DIRTY] -= n
        dirty[w] = 0
        epoch[w] += 1
        return True
    return False


@njit(cache=True)
def _touch(start, nbytes, write, tensor, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
           queue, epoch, qstate):
    """One contiguous byte range through the cache, line by line."""
    n_sets, ways, line, sector, lru, hashed = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    limit = geom[_G_DIRTY_LIMIT]
    end = start + nbytes
    for ln in range(start // line, (end - 1) // line + 1):
        lb = ln * line
        s = max(start, lb) - lb
        e = min(end, lb + line) - lb
        s0, s1 = s // sector, (e - 1) // sector  # touched sectors s0..s1
        touched = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
        f0, f1 = (s + sector - 1) // sector, e // sector  # sectors covered whole: f0..f1-1
        full = ((1 << f1) - 1) ^ ((1 << f0) - 1) if f1 > f0 else 0
        # -- find the line in its set; on a miss, a victim: an empty way, else the oldest stamp
        base = _set_of(ln, n_sets, hashed) * ways
        way = -1
        for w in range(base, base + ways):
            if tags[w] == ln:
                way = w
                break
        victim = -1
        if way < 0:
            oldest = np.int64(1) << 62
            for w in range(base, base + ways):
                if tags[w] < 0:
                    victim = w
                    break
                if stamps[w] < oldest:
                    victim, oldest = w, stamps[w]
        if way < 0:
            way = victim
            if tags[way] >= 0:  # evict: its dirty sectors go to DRAM
                n_dirty = _popcount(dirty[way])
                stats[launch, owner[way], _EVICT_W] += n_dirty
                if limit >= 0 and n_dirty:
                    qstate[_Q_DIRTY] -= n_dirty
                    epoch[way] += 1  # its queue entry is stale now
            tags[way] = ln
            valid[way] = 0
            dirty[way] = 0
            owner[way] = tensor
            stamps[way] = clock[0]
        elif lru:
            stamps[way] = clock[0]
        clock[0] += 1
        if write:
            stats[launch, tensor, _SEC_W] += _popcount(touched)
            was = dirty[way]
            dirty[way] |= touched
            valid[way] |= full
            if limit >= 0:  # at most ``limit`` dirty sectors: write back the longest-dirty lines
                qstate[_Q_DIRTY] += _popcount(dirty[way]) - _popcount(was)
                if was == 0:
                    if qstate[_Q_TAIL] - qstate[_Q_HEAD] == queue.shape[0]:
                        _compact(queue, epoch, qstate)
                    pos = qstate[_Q_TAIL] % queue.shape[0]
                    queue[pos, 0], queue[pos, 1] = way, epoch[way]
                    qstate[_Q_TAIL] += 1
                while qstate[_Q_DIRTY] > limit and _clean_oldest(dirty, owner, queue, epoch, qstate, stats, launch):
                    pass
        else:
            stats[launch, tensor, _SEC_R] += _popcount(touched)
            stats[launch, tensor, _MISS_R] += _popcount(touched & ~valid[way])
            valid[way] |= touched


@njit(cache=True)
def _request(req, r, tags, stamps, valid, dirty, owner, clock, geom, stats, launch, queue, epoch, qstate):
    addr, rows, row_bytes, stride, tri, elem, tensor, write = (
        req[r, 0], req[r, 1], req[r, 2], req[r, 3], req[r, 4], req[r, 5], req[r, 6], req[r, 7])
    for i in range(rows):
        n = row_bytes
        if tri != _NO_TRI:
            n = min(row_bytes, max(0, tri + i) * elem)
        if n > 0:
            stats[launch, tensor, _REQ_W if write else _REQ_R] += n
            _touch(addr + i * stride, n, write, tensor, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
                   queue, epoch, qstate)


@njit(cache=True)
def _next_block(block_ptr, b):
    """The first block from ``b`` on with at least one step (blocks with none exit at once), or -1."""
    n_blocks = block_ptr.shape[0] - 1
    while b < n_blocks and block_ptr[b] == block_ptr[b + 1]:
        b += 1
    return b if b < n_blocks else -1


@njit(cache=True)
def _run_launch(req, step_ptr, block_ptr, resident, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
                queue, epoch, qstate):
    """Blocks in issue order, ``resident`` at a time, round-robin one step each (module docstring)."""
    n_slots = max(1, resident)
    slot_block = np.full(n_slots, -1, dtype=np.int64)
    slot_step = np.zeros(n_slots, dtype=np.int64)
    nxt, active = 0, 0
    for s in range(n_slots):
        b = _next_block(block_ptr, nxt)
        if b < 0:
            break
        slot_block[s], slot_step[s] = b, block_ptr[b]
        nxt, active = b + 1, active + 1
    while active > 0:
        for s in range(n_slots):
            b = slot_block[s]
            if b < 0:
                continue
            st = slot_step[s]
            for r in range(step_ptr[st], step_ptr[st + 1]):
                _request(req, r, tags, stamps, valid, dirty, owner, clock, geom, stats, launch, queue, epoch, qstate)
            st += 1
            if st < block_ptr[b + 1]:
                slot_step[s] = st
                continue
            # -- the block is done: its slot takes the next block in issue order
            b = _next_block(block_ptr, nxt)
            if b < 0:
                slot_block[s] = -1
                active -= 1
            else:
                slot_block[s], slot_step[s] = b, block_ptr[b]
                nxt = b + 1


@njit(cache=True)
def _flush(tags, valid, dirty, owner, stats, launch, invalidate, epoch, qstate):
    """Count the dirty sectors left (written back at the end); empty the cache if ``invalidate``."""
    for w in range(tags.shape[0]):
        if tags[w] >= 0:
            stats[launch, owner[w], _FLUSH_W] += _popcount(dirty[w])
            dirty[w] = 0
            epoch[w] += 1
            if invalidate:
                tags[w] = -1
                valid[w] = 0
    qstate[_Q_HEAD] = qstate[_Q_TAIL] = qstate[_Q_DIRTY] = 0


class _Cache:
    """Cache state: one entry per way of every set (tags -1 when empty)."""

    def __init__(self, l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes=None):
        for name, v in (("l2_bytes", l2_bytes), ("sector", sector), ("line", line), ("ways", ways)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if dirty_limit_bytes is not None and (isinstance(dirty_limit_bytes, bool) or
                                              not isinstance(dirty_limit_bytes, (int, np.integer)) or
                                              dirty_limit_bytes < 0):
            raise ValueError(f"dirty_limit_bytes: expected None or an int >= 0, got {dirty_limit_bytes!r}")
        if line % sector or line // sector > 8:
            raise ValueError(f"line={line} must be a multiple of sector={sector}, at most 8 sectors")
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if set_index not in SET_INDEX:
            raise ValueError(f"set_index: expected one of {SET_INDEX}, got {set_index!r}")
        if l2_bytes < line:
            raise ValueError(f"l2_bytes={l2_bytes} holds no {line}-byte line")
        ways = min(int(ways), l2_bytes // line)
        self.n_sets, self.ways = l2_bytes // (line * ways), ways
        self.capacity = self.n_sets * ways * line
        limit = -1 if dirty_limit_bytes is None else int(dirty_limit_bytes) // sector
        self.geom = np.array([self.n_sets, ways, line, sector, policy == "lru", set_index == "hash", limit],
                             dtype=np.int64)
        n = self.n_sets * ways
        # the write-back queue (used with a dirty limit only): (way, epoch) of lines in the order they
        # became dirty; an entry is stale once its way's epoch moved on (cleaned, evicted, flushed)
        self.queue = np.zeros((2 * n if limit >= 0 else 1, 2), dtype=np.int64)
        self.epoch = np.zeros(n, dtype=np.int64)
        self.qstate = np.zeros(3, dtype=np.int64)
        self.tags = np.full(n, -1, dtype=np.int64)
        self.stamps = np.zeros(n, dtype=np.int64)
        self.valid = np.zeros(n, dtype=np.uint8)  # sector bit masks (at most 8 sectors a line)
        self.dirty = np.zeros(n, dtype=np.uint8)
        self.owner = np.zeros(n, dtype=np.uint8)  # tensor of the line, for the write-back statistics
        self.clock = np.zeros(1, dtype=np.int64)

    def run(self, launch_stream, resident, stats, launch):
        _run_launch(launch_stream.requests, launch_stream.step_ptr, launch_stream.block_ptr, int(resident),
                    self.tags, self.stamps, self.valid, self.dirty, self.owner, self.clock, self.geom, stats, launch,
                    self.queue, self.epoch, self.qstate)

    def flush(self, stats, launch, invalidate):
        _flush(self.tags, self.valid, self.dirty, self.owner, stats, launch, invalidate, self.epoch, self.qstate)


# -- the report -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DramReport:
    """What reaches DRAM, in bytes (see the module docstring for the model).

    Attributes:
        read_bytes: sectors read from DRAM × sector.
        write_evicted_bytes: dirty sectors written back when their line was evicted × sector.
        write_cleaned_bytes: dirty sectors written back while their line stayed cached, to keep the
            dirty data under ``dirty_limit_bytes`` × sector (0 without a limit).
        write_flush_bytes: dirty sectors left at the end (of each launch with ``cold_launches``) × sector.
        write_bytes: ``write_evicted_bytes + write_cleaned_bytes`` (+ ``write_flush_bytes`` when
            ``flush_at_end``).
        requested_read_bytes, requested_write_bytes: what the algorithm asks of global memory
            (equal to ``simulate_counts(...)``'s HBM reads and writes in bytes).
        requested_read_sector_bytes, requested_write_sector_bytes: the same rounded up to whole
            sectors per row range (what a load/store unit sends to L2 without L1 hits).
        l2_read_hit_rate: read sectors found in L2 / read sectors requested.
        per_tensor: tensor -> dict of the fields above that apply (requested_read_bytes,
            requested_write_bytes, read_bytes, write_evicted_bytes, write_flush_bytes).
        per_launch: one dict per launch: phase, grid, resident_blocks and the totals above.
        config: the model's parameters (l2_bytes, capacity, sets, ways, line, sector, policy, ...).
    """

    read_bytes: int
    write_bytes: int
    write_evicted_bytes: int
    write_cleaned_bytes: int
    write_flush_bytes: int
    requested_read_bytes: int
    requested_write_bytes: int
    requested_read_sector_bytes: int
    requested_write_sector_bytes: int
    l2_read_hit_rate: float
    per_tensor: object
    per_launch: tuple
    config: object

    @property
    def dram_bytes(self):
        """DRAM bytes read plus written."""
        return self.read_bytes + self.write_bytes

    @property
    def requested_bytes(self):
        """Global-memory bytes requested (= simulate_counts(...).hbm_bytes)."""
        return self.requested_read_bytes + self.requested_write_bytes

    def as_dict(self):
        """Plain dict (for JSON)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["per_tensor"] = {k: dict(v) for k, v in self.per_tensor.items()}
        d["config"] = dict(self.config)
        d["per_launch"] = [dict(x) for x in self.per_launch]
        d["dram_bytes"] = self.dram_bytes
        return d


def _totals(stats, sector, flush_at_end):
    """Byte totals of a (tensors, stats) block."""
    col = stats.sum(axis=0) if stats.ndim == 2 else stats
    evicted, flushed = int(col[_EVICT_W]) * sector, int(col[_FLUSH_W]) * sector
    cleaned = int(col[_CLEAN_W]) * sector
    sec_r = int(col[_SEC_R])
    return {
        "read_bytes": int(col[_MISS_R]) * sector,
        "write_bytes": evicted + cleaned + (flushed if flush_at_end else 0),
        "write_evicted_bytes": evicted,
        "write_cleaned_bytes": cleaned,
        "write_flush_bytes": flushed,
        "requested_read_bytes": int(col[_REQ_R]),
        "requested_write_bytes": int(col[_REQ_W]),
        "requested_read_sector_bytes": sec_r * sector,
        "requested_write_sector_bytes": int(col[_SEC_W]) * sector,
        "l2_read_hit_rate": (sec_r - int(col[_MISS_R])) / sec_r if sec_r else float("nan"),
    }


_TENSOR_FIELDS = ("requested_read_bytes", "requested_write_bytes", "read_bytes", "write_evicted_bytes",
                  "write_cleaned_bytes", "write_flush_bytes")


def _report(stats, launches, residency, sector, flush_at_end, scale, config):
    stats = stats * scale
    per_tensor = {}
    for t, name in enumerate(TENSORS):
        tot = _totals(stats[:, t, :], sector, flush_at_end)
        if any(tot[k] for k in _TENSOR_FIELDS):
            per_tensor[name] = MappingProxyType({k: tot[k] for k in _TENSOR_FIELDS})
    per_launch = tuple(
        MappingProxyType({"phase": ln.phase, "grid": ln.grid, "resident_blocks": residency[ln.phase],
                          **_totals(stats[i], sector, flush_at_end)})
        for i, ln in enumerate(launches))
    return DramReport(**_totals(stats.sum(axis=0), sector, flush_at_end), per_tensor=MappingProxyType(per_tensor),
                      per_launch=per_launch, config=MappingProxyType(config))


# -- entry points -----------------------------------------------------------------------------
def blocks_per_sm(schedule, problem, phase, gpu):
    """Thread blocks of ``phase`` an SM of ``gpu`` holds at once: shared memory, warps, the block limit
    (not registers). ``gpu``: a DeviceFacts or a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS``."""
    gpu = known_gpu(gpu)
    smem = sram_offsets(sram_buffers(schedule, problem.head_dim, problem.dtype)[phase])[1]
    warps = -(-schedule.threads // 32)
    return max(1, min(gpu.max_blocks_per_sm, gpu.max_warps_per_sm // warps,
                      gpu.smem_per_sm // (smem + gpu.smem_reserved_per_block)))


def default_resident_blocks(schedule, problem, gpu):
    """phase -> blocks in flight on ``gpu``: its SMs × :func:`blocks_per_sm`."""
    gpu = known_gpu(gpu)
    return {phase: gpu.sms * blocks_per_sm(schedule, problem, phase, gpu) for phase, _, _ in launches(schedule)}


_NAME_THE_MACHINE = ("say which machine the L2 model describes: gpu= a name in sandbox.vocabulary.gpus.KNOWN_GPUS or the "
                     "device's facts (sandbox.lab.info.device_facts()), or {}")


def _residency(schedule, problem, resident_blocks, gpu):
    """phase -> blocks in flight: ``resident_blocks`` (an int, or a dict for some phases) over ``gpu``'s default."""
    phases = [phase for phase, _, _ in launches(schedule)]
    if resident_blocks is not None and not isinstance(resident_blocks, dict):
        return {phase: int(resident_blocks) for phase in phases}
    given = dict(resident_blocks or {})
    unknown = set(given) - set(phases)
    if unknown:
        raise ValueError(f"resident_blocks: no phase {sorted(unknown)} in {schedule.kind} (its phases: {phases})")
    if set(given) != set(phases):
        if gpu is None:
            raise TypeError("resident_blocks: " + _NAME_THE_MACHINE.format("resident_blocks= for every phase"))
        given = {**default_resident_blocks(schedule, problem, gpu), **given}
    return {phase: int(given[phase]) for phase in phases}


def simulate_dram(schedule, problem, l2_bytes=None, sector=32, line=128, ways=16, resident_blocks=None,
                  policy="lru", *, gpu=None, cold_launches=False, flush_at_end=True, slices="all",
                  set_index="hash", dirty_limit_bytes=None):
    """DRAM traffic of ``schedule`` on ``problem`` behind an L2 cache (model: the module docstring).

    Args:
        schedule, problem: as for ``simulate_counts`` (kinds standard, flash1, flash2; no mask).
        l2_bytes: L2 capacity, default ``gpu``'s. Rounded down to whole sets.
        sector: bytes per sector, the unit of DRAM reads and write-backs (32).
        line: bytes per line, the unit of allocation and replacement (128).
        ways: associativity; the set of a line is a hash of its address (``set_index``).
        resident_blocks: thread blocks in flight, an int for every launch or a dict phase -> int;
            phases not given: :func:`default_resident_blocks` on ``gpu``.
        policy: "lru" or "fifo".
        gpu: the machine modelled: a :class:`sandbox.vocabulary.gpus.DeviceFacts` (``sandbox.lab.info.device_facts()``
            reads the current device's) or a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS`` ("h100", "h200").
            Needed unless ``l2_bytes`` and ``resident_blocks`` (every phase) are given.
        cold_launches: empty the cache (counting its dirty sectors as flushed) after every launch,
            as Nsight Compute does between profiled kernels; else the L2 carries over between
            standard's three kernels, as in a plain run.
        flush_at_end: count the dirty sectors left at the end in ``write_bytes``.
        slices: "all" (every (b, h), exact) or "one" (one slice × B·H; when valid: module docstring).
        set_index: "hash" or "modulo".
        dirty_limit_bytes: the most dirty data the cache holds (None: no limit but its size); a write
            past it writes back the lines dirtied longest ago, which stay cached, clean (module
            docstring, "Write-back while resident"). With ``slices="one"`` it applies to the one slice.

    Returns:
        :class:`DramReport`.

    Raises:
        ValueError: bad cache parameters, an unknown ``gpu`` name. TypeError: neither ``gpu`` nor
        ``l2_bytes`` (or ``resident_blocks``) given. NotImplementedError: a kind without a request stream.
    """
    if slices not in ("all", "one"):
        raise ValueError(f"slices: expected 'all' or 'one', got {slices!r}")
    gpu = None if gpu is None else known_gpu(gpu)
    if l2_bytes is None:
        if gpu is None:
            raise TypeError("l2_bytes: " + _NAME_THE_MACHINE.format("l2_bytes="))
        l2_bytes = gpu.l2_bytes
    cache = _Cache(l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes)
    sim_problem = problem
    if slices == "one" and problem.bh > 1:
        sim_problem = dataclasses.replace(problem, batch=1, heads=1)
    residency = _residency(schedule, problem, resident_blocks, gpu)
    launches = tile_requests(schedule, sim_problem)
    stats = np.zeros((len(launches), len(TENSORS), _NSTATS), dtype=np.int64)
    for i, ln in enumerate(launches):
        cache.run(ln, residency[ln.phase], stats, i)
        if cold_launches:
            cache.flush(stats, i, invalidate=True)
    if not cold_launches:
        cache.flush(stats, len(launches) - 1, invalidate=False)
    config = {"l2_bytes": int(l2_bytes), "capacity_bytes": cache.capacity, "sets": cache.n_sets, "ways": cache.ways,
              "line": line, "sector": sector, "policy": policy, "set_index": set_index,
              "gpu": None if gpu is None else gpu.name, "sms": None if gpu is None else gpu.sms,
              "resident_blocks": dict(residency), "cold_launches": cold_launches, "flush_at_end": flush_at_end,
              "slices": slices, "slice_scale": problem.bh // sim_problem.bh, "dirty_limit_bytes": dirty_limit_bytes}
    return _report(stats, launches, residency, sector, flush_at_end, problem.bh // sim_problem.bh, config)


def simulate_requests(requests, l2_bytes, sector=32, line=128, ways=16, policy="lru", *,
                      flush_at_end=True, set_index="hash", dirty_limit_bytes=None):
    """A hand-made stream through an ``l2_bytes`` cache: ``requests`` is a list of (addr, nbytes, write[, tensor]).

    The requests run in order (one block, one request per step). Tensor indices refer to
    :data:`TENSORS` (default 0). Returns a :class:`DramReport`.

    Example:
        >>> r = simulate_requests([(0, 128, False), (0, 128, False)], l2_bytes=1024, ways=2)
        >>> r.read_bytes, r.l2_read_hit_rate
        (128, 0.5)
    """
    cache = _Cache(l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes)
    req = np.zeros((len(requests), _NCOLS), dtype=np.int64)
    for i, rq in enumerate(requests):
        addr, nbytes, write = rq[:3]
        req[i] = (addr, 1, nbytes, 0, _NO_TRI, 1, rq[3] if len(rq) > 3 else 0, int(bool(write)))
    stream = Launch("requests", (1,), req, np.arange(len(requests) + 1, dtype=np.int64),
                    np.array([0, len(requests)], dtype=np.int64))
    stats = np.zeros((1, len(TENSORS), _NSTATS), dtype=np.int64)
    cache.run(stream, 1, stats, 0)
    cache.flush(stats, 0, invalidate=False)
    config = {"l2_bytes": int(l2_bytes), "capacity_bytes": cache.capacity, "sets": cache.n_sets, "ways": cache.ways,
              "line": line, "sector": sector, "policy": policy, "set_index": set_index, "flush_at_end": flush_at_end,
              "dirty_limit_bytes": dirty_limit_bytes}
    return _report(stats, [stream], {"requests": 1}, sector, flush_at_end, 1, config)
