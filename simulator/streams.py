"""The L2 model's input: a schedule's tile-level global-memory requests, launch by launch, in issue order.

``simulator/counts.py`` counts what the algorithm moves between HBM and SRAM; this module lists the
same accesses, tile by tile and in the order the GPU issues thread blocks, for the cache model
(``simulator/l2.py``). The bytes they request are, byte for byte, ``simulate_counts(schedule,
problem).hbm_bytes`` (tested per tensor), and for the backward pass (``backward=True``)
``simulate_backward_counts(schedule, problem).hbm_bytes``.

Request stream (:func:`tile_requests`)
    One entry per kernel launch, in launch order: flash2 "main" (grid (Tr, B·H)), flash1 "main"
    (grid (B·H,)), standard "qk" (grid (Tc, Tr, B·H)), "softmax" (grid (Nq, B·H)), "pv" (grid
    (Tr, B·H)), splitkv "partial" (grid (Tr, B·H, splits)), "combine" (grid (Tr, B·H)), as in
    ``kernels/launch.py``. Thread blocks are listed in CUDA's issue order, blockIdx.x fastest,
    then y, then z. A block is a list of *steps*, one per iteration of its tile loop (the kernels'
    docstrings give the loops); a step is a list of tile requests. A request is a read or a write
    of ``rows`` byte ranges of one tensor, each range one row of the tile (rows of a full-width
    tile are contiguous and merged into one range). Tensors are row-major, Q/K/V/O (B, H, N, d) in
    the input dtype, S/P (B, H, Nq, Nk), L/ℓ/m (B, H, Nq), Opart (B·splits, H, Nq, d) and Lpart
    (B·splits, H, Nq) in fp32, each at its own base address, 2 MiB-aligned, allocated in
    ``kernels/launch.py``'s order (:func:`tensor_bases`). Causal S and P tiles move only their
    allowed entries: row r of a tile at (q0, k0) holds ``clamp(q0 + r - k0 + 1, 0, kv_len)`` of
    them. Masks other than causal are not modelled.

    flash2 block (i, bh): [Q_i] [K_j, V_j] for each visited j, [O_i, L_i written].
    flash1 block (bh): [O, ℓ, m written] then for each K/V block j: [K_j, V_j], and for each
    visited Q block i: [Q_i, m_i, ℓ_i read; m_i, ℓ_i (and at i's last block L_i) written; O_i read,
    O_i written]. standard qk block (j, i, bh): [Q_i, K_j] [S_ij written] (a fully masked causal
    tile has no steps); softmax block (row, bh): [S row] [L row written, S row, P row written];
    pv block (i, bh): [P_ij, V_j] for each visited j, [O_i written]. splitkv partial block
    (i, bh, s): flash2's steps over split s's share of the K/V blocks, writing its Opart and Lpart
    rows; combine block (i, bh): [every split's Lpart rows, L_i written] [every split's Opart rows,
    O_i written].

The backward pass (``kernels/backward.py``; one stream per backward, the kind's ``backward`` trait)
    Every backward starts with "d" (grid (Tr, B·H)): block (i, bh): [dO_i, O_i read, D_i written].
    Tensors dO, dQ, dK, dV (B, H, N, d) in the input dtype, D (B, H, Nq) and dS (B, H, Nq, Nk) in
    fp32, allocated after the forward's Q, K, V, O, L in ``kernels/launch.py``'s order: dO, dQ, dK,
    dV, D, then standard's P and dS. A tile is visited where the forward visits it (causal: a key
    ≤ the tile's last query).

    flash (FlashAttention-2's backward): "dkdv" (grid (Tc, B·H)): block (j, bh): for each visited
    Q block i: [K_j, V_j at the first, Q_i, dO_i, L_i, D_i], then [dV_j, dK_j written] (also for a
    block no query sees). "dq" (grid (Tr, B·H)): block (i, bh): [Q_i, dO_i, L_i, D_i] [K_j, V_j]
    for each visited j, [dQ_i written].
    standard: "p" (grid (Tc, Tr, B·H)): block (j, i, bh): [Q_i, K_j, L_i] [P_ij written]; "ds" (same
    grid): [dO_i, V_j, D_i] [P_ij read, dS_ij written] (the allowed entries; a fully masked tile
    has no steps); "dv" and "dk" (grid (Tc, B·H), kernels/matmul.py's tn): block (j, bh): [P_ij,
    dO_i] (dk: [dS_ij, Q_i]) for each visited i, [dV_j (dK_j) written]; "dq" (grid (Tr, B·H),
    nn): block (i, bh): [dS_ij, K_j] for each visited j, [dQ_i written].

Grouped K/V heads (H_kv < H; query head h reads K/V head h // (H / H_kv))
    K, V, dK, dV are (B, H_kv, Nk, d); every request for K or V of slice bh goes to its K/V head's
    slice, so the blocks of a group's query heads request the same addresses (the L2 model sees
    that reuse). The backward's dkdv (standard: dv, dk) writes fp32 partials dKpart, dVpart
    (B, H, Nk, d), allocated after D, and ends with "group_sum" (grid (⌈Nk·d / threads⌉, B·H_kv)):
    block (x, bkv): [its range of each of the group's dK, dV partials, in head order] [that range
    of dK, dV written].

V's head dim d_v (``problem.head_dim_v``)
    V, O, dO, dV (and Opart, dVpart) rows are d_v wide, Q, K, dQ, dK (dKpart) rows d wide. With
    d_v ≠ d the group sum covers max(d, d_v) columns per row (grid (⌈Nk·max(d, d_v) / threads⌉,
    B·H_kv)), and a block reads and writes each tensor's part of its range row by row.

A kind's launches
    The simulator's table (``simulator/table.py``) holds each kind's ``((phase, generator, grid),
    ...)``; the built-in kinds' are :data:`FLASH2_LAUNCHES` and its siblings. A generator is a
    compiled function ``(p, bases, req, step_ptr, block_ptr, fill) -> (blocks, steps, requests)``,
    ``p`` the int64 parameters (B·H, Nq, Nk, d, Br, Bc, itemsize, causal, H, splits, H / H_kv,
    threads per block, d_v) and ``bases``
    :func:`tensor_bases`; :func:`tile_requests` calls it once with ``fill`` false to count, then
    again to fill arrays of those sizes. ``grid(schedule, problem)`` is the launch's grid.

Complexity
    O(number of tile requests): O(Tr·Tc) for all kinds and both passes, plus O(Nq) for standard's
    softmax and every backward's "d", in compiled loops.
"""

import dataclasses

import numpy as np
from numba import njit

from sandbox.vocabulary import kinds
from simulator import table

#: Every tensor a request names: the forward kinds' in allocation order (kernels/launch.py: inputs,
#: outputs, scratch), then the backward's own.
TENSORS = ("Q", "K", "V", "O", "L", "l", "m", "S", "P", "Opart", "Lpart", "dO", "D", "dQ", "dK", "dV", "dS",
           "dKpart", "dVpart")
_Q, _K, _V, _O, _L, _LL, _M, _S, _P, _OP, _LP, _DO, _DD, _DQ, _DK, _DV, _DS, _DKP, _DVP = range(len(TENSORS))
#: The order the tensors are allocated in (kernels/launch.py): forward, backward.
FORWARD_ALLOCATION = TENSORS[:11]
BACKWARD_ALLOCATION = ("Q", "K", "V", "O", "L", "dO", "dQ", "dK", "dV", "D", "P", "dS")
#: With grouped K/V heads the backward allocates the dK, dV partials after D.
GROUPED_BACKWARD_ALLOCATION = ("Q", "K", "V", "O", "L", "dO", "dQ", "dK", "dV", "D", "dKpart", "dVpart", "P", "dS")
#: Base addresses are aligned like large cudaMalloc allocations.
BASE_ALIGN = 2 * 2**20

#: Columns of a request (a row of :attr:`Launch.requests`): address of row 0, rows, bytes per row,
#: row stride, triangle, element size, tensor, write (0/1).
NCOLS = 8
#: The triangle of a request whose rows move whole. A triangle t != NO_TRI limits row r to
#: min(row_bytes, max(0, t + r)·elem) bytes: causal S/P tiles.
NO_TRI = -(1 << 62)
_NO_TRI = NO_TRI  # as the compiled generators read it


def request_bytes(requests):
    """Bytes each request moves (an int64 array, one per row of ``requests``): rows × row bytes, or for
    a request with a triangle, row r's min(row_bytes, max(0, t + r)·elem) summed over its rows (the
    rule simulator/l2.py's ``_request`` applies row by row as it touches the cache)."""
    rows, row_bytes, tri, elem = requests[:, 1], requests[:, 2], requests[:, 4], requests[:, 5]
    nbytes = rows * row_bytes
    sliced = tri != NO_TRI
    if sliced.any():
        r = np.arange(int(rows[sliced].max()))
        per_row = np.clip(tri[sliced, None] + r[None, :], 0, row_bytes[sliced, None] // elem[sliced, None])
        nbytes[sliced] = ((r[None, :] < rows[sliced, None]) * per_row).sum(axis=1) * elem[sliced]
    return nbytes


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
def _kv_slice(p, bh):
    """The (batch, K/V head) slice query slice ``bh`` reads K and V from: K/V head h // (H / H_kv)."""
    heads, group = p[8], p[10]
    b = bh // heads
    return b * (heads // group) + (bh - b * heads) // group


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
def _flash2_row_block(req, nr, ns, step_ptr, fill, q_addr, q_bytes, k_base, v_base, row, vrow, it, bc, n_kv, j0,
                      j1, o_addr, o_bytes, o_elem, o_t, l_addr, l_bytes, l_t):
    """One flash2 row block's steps (kernels/flash2.py): Q_i once, K_j and V_j for j in [j0, j1), then
    its O and L (flash2's O_i, L_i; split-KV's fp32 partials). ``row``, ``vrow``: bytes of a K and
    of a V row. Returns (ns, nr)."""
    # -- Q_i: HBM -> SRAM, it stays there for the whole K/V loop
    ns = _mark(step_ptr, ns, fill, nr)
    nr = _emit(req, nr, fill, q_addr, 1, q_bytes, 0, _NO_TRI, it, _Q, 0)
    for j in range(j0, j1):
        k0 = j * bc
        kv_len = min(bc, n_kv - k0)
        # -- K_j, V_j: HBM -> SRAM
        ns = _mark(step_ptr, ns, fill, nr)
        nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
        nr = _emit(req, nr, fill, v_base + k0 * vrow, 1, kv_len * vrow, 0, _NO_TRI, it, _V, 0)
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
    vrow = p[12] * it  # a row of V or O: d_v wide
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        q_base = bases[_Q] + bh * n_q * row
        k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
        v_base = bases[_V] + _kv_slice(p, bh) * n_kv * vrow
        o_base = bases[_O] + bh * n_q * vrow
        l_base = bases[_L] + bh * n_q * 4
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            kv_end = min(n_kv, q0 + q_len) if causal else n_kv
            ns, nr = _flash2_row_block(req, nr, ns, step_ptr, fill, q_base + q0 * row, q_len * row, k_base, v_base,
                                       row, vrow, it, bc, n_kv, 0, (kv_end + bc - 1) // bc,
                                       o_base + q0 * vrow, q_len * vrow, it, _O, l_base + q0 * 4, q_len * 4, _L)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_flash1(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/flash1.py, grid (B·H,): one block walks every tile; O, ℓ, m go through HBM."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    vrow = p[12] * it  # a row of V or O: d_v wide
    tr = (n_q + br - 1) // br
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        q_base = bases[_Q] + bh * n_q * row
        k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
        v_base = bases[_V] + _kv_slice(p, bh) * n_kv * vrow
        o_base = bases[_O] + bh * n_q * vrow
        lse_base = bases[_L] + bh * n_q * 4
        l_base = bases[_LL] + bh * n_q * 4
        m_base = bases[_M] + bh * n_q * 4
        nb = _mark(block_ptr, nb, fill, ns)
        # -- O = 0, l = 0, m = -inf in HBM
        ns = _mark(step_ptr, ns, fill, nr)
        nr = _emit(req, nr, fill, o_base, 1, n_q * vrow, 0, _NO_TRI, it, _O, 1)
        nr = _emit(req, nr, fill, l_base, 1, n_q * 4, 0, _NO_TRI, 4, _LL, 1)
        nr = _emit(req, nr, fill, m_base, 1, n_q * 4, 0, _NO_TRI, 4, _M, 1)
        kv_end = min(n_kv, n_q) if causal else n_kv
        for j in range((kv_end + bc - 1) // bc):
            k0 = j * bc
            kv_len = min(bc, n_kv - k0)
            # -- K_j, V_j: HBM -> SRAM, kept for the inner loop
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
            nr = _emit(req, nr, fill, v_base + k0 * vrow, 1, kv_len * vrow, 0, _NO_TRI, it, _V, 0)
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
                nr = _emit(req, nr, fill, o_base + q0 * vrow, 1, q_len * vrow, 0, _NO_TRI, it, _O, 0)
                nr = _emit(req, nr, fill, o_base + q0 * vrow, 1, q_len * vrow, 0, _NO_TRI, it, _O, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_partial(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/splitkv.py partial (flash2 with split=True), grid (Tr, B·H, splits): block (i, bh, s) reads
    Q_i and the K/V blocks of its share, and writes its fp32 partial O and L to Opart[b·splits + s, h]."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    heads, n_split = p[8], p[9]
    row = d * it
    vrow = p[12] * it  # a row of V: d_v wide
    row32 = p[12] * 4  # a row of Opart: d_v wide, fp32
    tr = (n_q + br - 1) // br
    per_split = ((n_kv + bc - 1) // bc + n_split - 1) // n_split
    nb = ns = nr = 0
    for s in range(n_split):
        for bh in range(n_bh):
            b = bh // heads
            part = (b * n_split + s) * heads + (bh - b * heads)
            q_base = bases[_Q] + bh * n_q * row
            k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
            v_base = bases[_V] + _kv_slice(p, bh) * n_kv * vrow
            op_base = bases[_OP] + part * n_q * row32
            lp_base = bases[_LP] + part * n_q * 4
            for i in range(tr):
                nb = _mark(block_ptr, nb, fill, ns)
                q0 = i * br
                q_len = min(br, n_q - q0)
                kv_end = min(n_kv, q0 + q_len) if causal else n_kv
                ns, nr = _flash2_row_block(req, nr, ns, step_ptr, fill, q_base + q0 * row, q_len * row, k_base,
                                           v_base, row, vrow, it, bc, n_kv, s * per_split,
                                           min((kv_end + bc - 1) // bc, (s + 1) * per_split),
                                           op_base + q0 * row32, q_len * row32, 4, _OP, lp_base + q0 * 4, q_len * 4,
                                           _LP)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_combine(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/splitkv.py combine, grid (Tr, B·H): every split's L_s rows, then L; its O_s rows, then O."""
    n_bh, n_q, d, br, it = p[0], p[1], p[12], p[4], p[6]  # (O's rows: d_v wide)
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
        k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
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
def _nn_blocks(p, bases, req, step_ptr, block_ptr, fill, m_t, x_t, out_t, d):
    """kernels/matmul.py nn (out = M X, M an Nq×Nk fp32 matrix, X and out ``d`` columns wide), grid
    (Tr, B·H): M_ij (allowed entries) and X_j per visited tile, then out_i."""
    n_bh, n_q, n_kv, br, bc, it, causal = p[0], p[1], p[2], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        m_base = bases[m_t] + bh * n_q * n_kv * 4
        x_base = bases[x_t] + _kv_slice(p, bh) * n_kv * row  # X: V or K, the query head's K/V head
        out_base = bases[out_t] + bh * n_q * row
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
                nr = _emit(req, nr, fill, m_base + (q0 * n_kv + k0) * 4, q_len, kv_len * 4, n_kv * 4, tri, 4, m_t, 0)
                nr = _emit(req, nr, fill, x_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, x_t, 0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, out_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, out_t, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_pv(p, bases, req, step_ptr, block_ptr, fill):
    """standard's pv (kernels/matmul.py nn: O = P V), grid (Tr, B·H)."""
    return _nn_blocks(p, bases, req, step_ptr, block_ptr, fill, _P, _V, _O, p[12])


# -- the backward (kernels/backward.py) ------------------------------------------------------------
@njit(cache=True)
def _q_blocks_of(k0, br, n_q, causal):
    """The Q blocks [i_start, i_end) a K/V block starting at key k0 visits (causal: those with a query
    >= k0; none when no query is)."""
    tr = (n_q + br - 1) // br
    if not causal:
        return 0, tr
    if k0 >= n_q:
        return k0 // br, k0 // br
    return k0 // br, tr


@njit(cache=True)
def _gen_bwd_d(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/backward.py d, grid (Tr, B·H): D_i = rowsum(dO_i ∘ O_i), one thread per row."""
    n_bh, n_q, d, br, it = p[0], p[1], p[12], p[4], p[6]  # (dO's and O's rows: d_v wide)
    row = d * it
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        do_base = bases[_DO] + bh * n_q * row
        o_base = bases[_O] + bh * n_q * row
        dd_base = bases[_DD] + bh * n_q * 4
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, do_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _DO, 0)
            nr = _emit(req, nr, fill, o_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, _O, 0)
            nr = _emit(req, nr, fill, dd_base + q0 * 4, 1, q_len * 4, 0, _NO_TRI, 4, _DD, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _emit_q_rows(req, nr, fill, bases, bh, n_q, row, vrow, it, q0, q_len):
    """Q_i, dO_i, L_i, D_i read: the per-Q-block inputs of the flash backward's kernels (rows of ``row``
    and ``vrow`` bytes)."""
    nr = _emit(req, nr, fill, bases[_Q] + (bh * n_q + q0) * row, 1, q_len * row, 0, _NO_TRI, it, _Q, 0)
    nr = _emit(req, nr, fill, bases[_DO] + (bh * n_q + q0) * vrow, 1, q_len * vrow, 0, _NO_TRI, it, _DO, 0)
    nr = _emit(req, nr, fill, bases[_L] + (bh * n_q + q0) * 4, 1, q_len * 4, 0, _NO_TRI, 4, _L, 0)
    nr = _emit(req, nr, fill, bases[_DD] + (bh * n_q + q0) * 4, 1, q_len * 4, 0, _NO_TRI, 4, _DD, 0)
    return nr


@njit(cache=True)
def _gen_dkdv(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/backward.py dkdv, grid (Tc, B·H): K_j, V_j at the first visited tile, then kept; Q_i, dO_i,
    L_i, D_i per visited tile; dV_j, dK_j written once."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    vrow = p[12] * it  # a row of V, dO, dV: d_v wide
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
        v_base = bases[_V] + _kv_slice(p, bh) * n_kv * vrow
        for j in range(tc):
            nb = _mark(block_ptr, nb, fill, ns)
            k0 = j * bc
            kv_len = min(bc, n_kv - k0)
            i_start, i_end = _q_blocks_of(k0, br, n_q, causal)
            for i in range(i_start, i_end):
                q0 = i * br
                ns = _mark(step_ptr, ns, fill, nr)
                if i == i_start:
                    nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
                    nr = _emit(req, nr, fill, v_base + k0 * vrow, 1, kv_len * vrow, 0, _NO_TRI, it, _V, 0)
                nr = _emit_q_rows(req, nr, fill, bases, bh, n_q, row, vrow, it, q0, min(br, n_q - q0))
            # -- dV_j, dK_j -> HBM (grouped K/V heads: this query head's fp32 partials)
            ns = _mark(step_ptr, ns, fill, nr)
            dv_t, dk_t, orow, ovrow, oit = _DV, _DK, row, vrow, it
            if p[10] > 1:
                dv_t, dk_t, orow, ovrow, oit = _DVP, _DKP, d * 4, p[12] * 4, 4
            nr = _emit(req, nr, fill, bases[dv_t] + (bh * n_kv + k0) * ovrow, 1, kv_len * ovrow, 0, _NO_TRI, oit, dv_t,
                       1)
            nr = _emit(req, nr, fill, bases[dk_t] + (bh * n_kv + k0) * orow, 1, kv_len * orow, 0, _NO_TRI, oit, dk_t, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_flash_dq(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/backward.py dq, grid (Tr, B·H): Q_i, dO_i, L_i, D_i once; K_j, V_j per visited tile; dQ_i once."""
    n_bh, n_q, n_kv, d, br, bc, it, causal = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    row = d * it
    vrow = p[12] * it  # a row of V, dO: d_v wide
    tr = (n_q + br - 1) // br
    nb = ns = nr = 0
    for bh in range(n_bh):
        k_base = bases[_K] + _kv_slice(p, bh) * n_kv * row
        v_base = bases[_V] + _kv_slice(p, bh) * n_kv * vrow
        for i in range(tr):
            nb = _mark(block_ptr, nb, fill, ns)
            q0 = i * br
            q_len = min(br, n_q - q0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit_q_rows(req, nr, fill, bases, bh, n_q, row, vrow, it, q0, q_len)
            kv_end = min(n_kv, q0 + q_len) if causal else n_kv
            for j in range((kv_end + bc - 1) // bc):
                k0 = j * bc
                kv_len = min(bc, n_kv - k0)
                ns = _mark(step_ptr, ns, fill, nr)
                nr = _emit(req, nr, fill, k_base + k0 * row, 1, kv_len * row, 0, _NO_TRI, it, _K, 0)
                nr = _emit(req, nr, fill, v_base + k0 * vrow, 1, kv_len * vrow, 0, _NO_TRI, it, _V, 0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, bases[_DQ] + (bh * n_q + q0) * row, 1, q_len * row, 0, _NO_TRI, it, _DQ, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _rowwise_blocks(p, bases, req, step_ptr, block_ptr, fill, a_t, b_t, r_t, out_t, reads_p, d):
    """kernels/backward.py p and ds, grid (Tc, Tr, B·H): block (j, i, bh) reads A_i, B_j (``d`` columns
    wide) and a row value per query, then writes the allowed entries of out_ij (ds reads P_ij's
    first). A fully masked tile: no steps."""
    n_bh, n_q, n_kv, br, bc, it, causal = p[0], p[1], p[2], p[4], p[5], p[6], p[7]
    row = d * it
    tr = (n_q + br - 1) // br
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        m_off = bh * n_q * n_kv * 4
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
                nr = _emit(req, nr, fill, bases[a_t] + (bh * n_q + q0) * row, 1, q_len * row, 0, _NO_TRI, it, a_t, 0)
                nr = _emit(req, nr, fill, bases[b_t] + (_kv_slice(p, bh) * n_kv + k0) * row, 1, kv_len * row, 0, _NO_TRI,
                           it, b_t, 0)
                nr = _emit(req, nr, fill, bases[r_t] + (bh * n_q + q0) * 4, 1, q_len * 4, 0, _NO_TRI, 4, r_t, 0)
                ns = _mark(step_ptr, ns, fill, nr)
                tri = q0 - k0 + 1 if causal else _NO_TRI
                at = m_off + (q0 * n_kv + k0) * 4
                if reads_p:
                    nr = _emit(req, nr, fill, bases[_P] + at, q_len, kv_len * 4, n_kv * 4, tri, 4, _P, 0)
                nr = _emit(req, nr, fill, bases[out_t] + at, q_len, kv_len * 4, n_kv * 4, tri, 4, out_t, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_bwd_p(p, bases, req, step_ptr, block_ptr, fill):
    """standard's p: P = exp(scale·Q_i K_jᵀ - L_i) -> HBM."""
    return _rowwise_blocks(p, bases, req, step_ptr, block_ptr, fill, _Q, _K, _L, _P, False, p[3])


@njit(cache=True)
def _gen_bwd_ds(p, bases, req, step_ptr, block_ptr, fill):
    """standard's ds: dS = P ∘ (dO_i V_jᵀ - D_i) -> HBM."""
    return _rowwise_blocks(p, bases, req, step_ptr, block_ptr, fill, _DO, _V, _DD, _DS, True, p[12])


@njit(cache=True)
def _tn_blocks(p, bases, req, step_ptr, block_ptr, fill, m_t, x_t, out_t, d):
    """kernels/matmul.py tn (out = Mᵀ X, X and out ``d`` columns wide), grid (Tc, B·H): M_ij (allowed
    entries) and X_i per visited tile, then out_j (also for a block no query sees; grouped K/V heads:
    out's fp32 partial)."""
    n_bh, n_q, n_kv, br, bc, it, causal = p[0], p[1], p[2], p[4], p[5], p[6], p[7]
    row = d * it
    orow, oit = row, it
    if p[10] > 1:
        out_t = _DKP if out_t == _DK else _DVP
        orow, oit = d * 4, 4
    tc = (n_kv + bc - 1) // bc
    nb = ns = nr = 0
    for bh in range(n_bh):
        m_base = bases[m_t] + bh * n_q * n_kv * 4
        x_base = bases[x_t] + bh * n_q * row
        out_base = bases[out_t] + bh * n_kv * orow
        for j in range(tc):
            nb = _mark(block_ptr, nb, fill, ns)
            k0 = j * bc
            kv_len = min(bc, n_kv - k0)
            i_start, i_end = _q_blocks_of(k0, br, n_q, causal)
            for i in range(i_start, i_end):
                q0 = i * br
                q_len = min(br, n_q - q0)
                ns = _mark(step_ptr, ns, fill, nr)
                tri = q0 - k0 + 1 if causal else _NO_TRI
                nr = _emit(req, nr, fill, m_base + (q0 * n_kv + k0) * 4, q_len, kv_len * 4, n_kv * 4, tri, 4, m_t, 0)
                nr = _emit(req, nr, fill, x_base + q0 * row, 1, q_len * row, 0, _NO_TRI, it, x_t, 0)
            ns = _mark(step_ptr, ns, fill, nr)
            nr = _emit(req, nr, fill, out_base + k0 * orow, 1, kv_len * orow, 0, _NO_TRI, oit, out_t, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _gen_bwd_dv(p, bases, req, step_ptr, block_ptr, fill):
    """standard's dv (tn): dV = Pᵀ dO."""
    return _tn_blocks(p, bases, req, step_ptr, block_ptr, fill, _P, _DO, _DV, p[12])


@njit(cache=True)
def _gen_bwd_dk(p, bases, req, step_ptr, block_ptr, fill):
    """standard's dk (tn): dK = scale·dSᵀ Q."""
    return _tn_blocks(p, bases, req, step_ptr, block_ptr, fill, _DS, _Q, _DK, p[3])


@njit(cache=True)
def _gen_bwd_dq(p, bases, req, step_ptr, block_ptr, fill):
    """standard's dq (nn): dQ = scale·dS K."""
    return _nn_blocks(p, bases, req, step_ptr, block_ptr, fill, _DS, _K, _DQ, p[3])


@njit(cache=True)
def _gen_group_sum(p, bases, req, step_ptr, block_ptr, fill):
    """kernels/backward.py group_sum (grouped K/V heads), grid (⌈Nk·d / threads⌉, B·H_kv): block (x, bkv)
    reads its range of the flattened (Nk, d) slice from each of the group's dK and dV partials, in head
    order, then writes that range of dK and dV. With d_v ≠ d the range is one of the flattened
    (Nk, max(d, d_v)) columns, and each tensor's part of it is read and written row by row
    (:func:`_group_sum_rows`)."""
    n_bh, n_kv, d, it, heads, group, nt, dv = p[0], p[2], p[3], p[6], p[8], p[10], p[11], p[12]
    dm = max(d, dv)
    n_el = n_kv * dm
    n_x = (n_el + nt - 1) // nt
    nb = ns = nr = 0
    for bkv in range(n_bh // group):
        b = bkv // (heads // group)
        hk = bkv - b * (heads // group)
        for x in range(n_x):
            nb = _mark(block_ptr, nb, fill, ns)
            e0 = x * nt
            n = min(nt, n_el - e0)
            ns = _mark(step_ptr, ns, fill, nr)
            for g in range(group):
                part = (b * heads + hk * group + g) * n_kv
                if dv == d:
                    nr = _emit(req, nr, fill, bases[_DKP] + (part * d + e0) * 4, 1, n * 4, 0, _NO_TRI, 4, _DKP, 0)
                    nr = _emit(req, nr, fill, bases[_DVP] + (part * d + e0) * 4, 1, n * 4, 0, _NO_TRI, 4, _DVP, 0)
                else:
                    nr = _group_sum_rows(req, nr, fill, bases[_DKP] + part * d * 4, e0, n, dm, d, 4, _DKP, 0)
                    nr = _group_sum_rows(req, nr, fill, bases[_DVP] + part * dv * 4, e0, n, dm, dv, 4, _DVP, 0)
            ns = _mark(step_ptr, ns, fill, nr)
            if dv == d:
                nr = _emit(req, nr, fill, bases[_DK] + (bkv * n_el + e0) * it, 1, n * it, 0, _NO_TRI, it, _DK, 1)
                nr = _emit(req, nr, fill, bases[_DV] + (bkv * n_el + e0) * it, 1, n * it, 0, _NO_TRI, it, _DV, 1)
            else:
                nr = _group_sum_rows(req, nr, fill, bases[_DK] + bkv * n_kv * d * it, e0, n, dm, d, it, _DK, 1)
                nr = _group_sum_rows(req, nr, fill, bases[_DV] + bkv * n_kv * dv * it, e0, n, dm, dv, it, _DV, 1)
    _close(block_ptr, step_ptr, nb, ns, nr, fill)
    return nb, ns, nr


@njit(cache=True)
def _group_sum_rows(req, nr, fill, base, e0, n, dm, w, elem, tensor, write):
    """The requests of a group-sum block's range [e0, e0 + n) of the flattened (Nk, dm) columns to a
    tensor of ``w`` ≤ dm columns at ``base``: one per row, its columns below ``w``."""
    for r in range(e0 // dm, (e0 + n - 1) // dm + 1):
        c0 = max(e0 - r * dm, 0)
        c1 = min(e0 + n - r * dm, w)
        if c1 > c0:
            nr = _emit(req, nr, fill, base + (r * w + c0) * elem, 1, (c1 - c0) * elem, 0, _NO_TRI, elem, tensor, write)
    return nr


def _grid_group_sum(s, pr):
    return (-(-pr.n_kv * max(pr.head_dim, pr.head_dim_v) // s.threads), pr.bh_kv)


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


def _grid_kv(s, pr):
    return (-(-pr.n_kv // s.block_kv), pr.bh)


#: The built-in kinds' launches in order: (phase, request generator, grid(schedule, problem)),
#: entered in the simulator's table (simulator/table.py; their tensors must be in TENSORS).
FLASH2_LAUNCHES = (("main", _gen_flash2, _grid_flash2),)
FLASH1_LAUNCHES = (("main", _gen_flash1, _grid_flash1),)
STANDARD_LAUNCHES = (("qk", _gen_qk, _grid_qk), ("softmax", _gen_softmax, _grid_softmax), ("pv", _gen_pv, _grid_flash2))
SPLITKV_LAUNCHES = (("partial", _gen_partial, _grid_partial), ("combine", _gen_combine, _grid_flash2))
#: The backward passes' launches, by the kind's ``backward`` trait (sandbox/vocabulary/kinds.py), as
#: kernels/launch.py's run_backward launches them.
BACKWARD_LAUNCHES = {
    "flash": (("d", _gen_bwd_d, _grid_flash2), ("dkdv", _gen_dkdv, _grid_kv), ("dq", _gen_flash_dq, _grid_flash2)),
    "standard": (("d", _gen_bwd_d, _grid_flash2), ("p", _gen_bwd_p, _grid_qk), ("ds", _gen_bwd_ds, _grid_qk),
                 ("dv", _gen_bwd_dv, _grid_kv), ("dk", _gen_bwd_dk, _grid_kv), ("dq", _gen_bwd_dq, _grid_flash2)),
}
#: The launch that ends a backward of grouped K/V heads (H_kv < H): dK, dV summed from their partials.
GROUP_SUM_LAUNCH = ("group_sum", _gen_group_sum, _grid_group_sum)
#: The shared-memory footprint (sandbox/vocabulary/footprints.py's backward phases) of each backward
#: launch whose name differs from it; "d" and "group_sum" use none.
BACKWARD_FOOTPRINTS = {"flash": {"d": None, "group_sum": None},
                       "standard": {"d": None, "dv": "tn", "dk": "tn", "dq": "nn", "group_sum": None}}


def backward_trait(schedule):
    """The kind's backward pass ("flash" or "standard", sandbox/vocabulary/kinds.py).

    Raises:
        NotImplementedError: the kind has no backward pass.
    """
    trait = kinds.get(schedule.kind).backward
    if trait is None:
        with_one = tuple(k for k in kinds.names() if kinds.get(k).backward)
        raise NotImplementedError(f"kind {schedule.kind!r} has no backward pass (kinds with one: {with_one})")
    return trait


def launches(schedule, backward=False, grouped=False):
    """The kind's launches for the L2 model (simulator/table.py), or its backward's (:data:`BACKWARD_LAUNCHES`;
    ``grouped``: K/V heads H_kv < H, and :data:`GROUP_SUM_LAUNCH` last).

    Raises:
        NotImplementedError: the kind has no request stream in the table (or is not in it), or no backward.
    """
    if backward:
        return BACKWARD_LAUNCHES[backward_trait(schedule)] + ((GROUP_SUM_LAUNCH,) if grouped else ())
    stream = table.get(schedule.kind).l2 if schedule.kind in table.names() else None
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
        phase: the kernel's phase name ("main", "qk", "softmax", "pv", "partial", "combine"; the
            backward's "d", "dkdv", "dq", "p", "ds", "dv", "dk").
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


def tensor_bases(problem, kv_splits=1, backward=False):
    """Base address of each tensor of :data:`TENSORS` (int64 array), 2 MiB-aligned: the pass's tensors in
    their allocation order (:data:`FORWARD_ALLOCATION`, :data:`BACKWARD_ALLOCATION`), then the others."""
    it, d, dv = problem.dtype.itemsize, problem.head_dim, problem.head_dim_v
    q_rows, kv_rows = problem.n_q * d * it, problem.n_kv * d * it
    o_rows, v_rows = problem.n_q * dv * it, problem.n_kv * dv * it  # V, O, dO, dV: d_v wide
    sizes = {"Q": q_rows, "K": kv_rows, "V": v_rows, "O": o_rows,
             "L": problem.n_q * 4, "l": problem.n_q * 4, "m": problem.n_q * 4,
             "S": problem.n_q * problem.n_kv * 4, "P": problem.n_q * problem.n_kv * 4,
             "Opart": kv_splits * problem.n_q * dv * 4, "Lpart": kv_splits * problem.n_q * 4,
             "dO": o_rows, "D": problem.n_q * 4, "dQ": q_rows, "dK": kv_rows, "dV": v_rows,
             "dS": problem.n_q * problem.n_kv * 4,
             "dKpart": problem.n_kv * d * 4, "dVpart": problem.n_kv * dv * 4}
    grouped = problem.group > 1
    first = (GROUPED_BACKWARD_ALLOCATION if grouped else BACKWARD_ALLOCATION) if backward else FORWARD_ALLOCATION
    bases, at = np.zeros(len(TENSORS), dtype=np.int64), BASE_ALIGN
    for name in first + tuple(t for t in TENSORS if t not in first):
        bases[TENSORS.index(name)] = at
        slices = problem.bh_kv if name in ("K", "V", "dK", "dV") else problem.bh  # K/V and their gradients: H_kv heads
        at += -(-sizes[name] * slices // BASE_ALIGN) * BASE_ALIGN
    return bases


def tile_requests(schedule, problem, backward=False):
    """The tile-level global-memory requests of ``schedule`` on ``problem``, per kernel launch, of the
    forward pass or (``backward``) of the backward pass.

    Returns:
        list of :class:`Launch`, in launch order.
    """
    p = np.array([problem.bh, problem.n_q, problem.n_kv, problem.head_dim, schedule.block_q,
                  schedule.block_kv, problem.dtype.itemsize, int(problem.causal), problem.heads,
                  getattr(schedule, "kv_splits", 1), problem.group, schedule.threads, problem.head_dim_v],
                 dtype=np.int64)
    bases = tensor_bases(problem, getattr(schedule, "kv_splits", 1), backward)
    out = []
    for phase, gen, grid in launches(schedule, backward, grouped=backward and problem.group > 1):
        empty2, empty1 = np.zeros((0, NCOLS), dtype=np.int64), np.zeros(0, dtype=np.int64)
        nb, ns, nr = gen(p, bases, empty2, empty1, empty1, False)
        req = np.empty((nr, NCOLS), dtype=np.int64)
        step_ptr, block_ptr = np.empty(ns + 1, dtype=np.int64), np.empty(nb + 1, dtype=np.int64)
        gen(p, bases, req, step_ptr, block_ptr, True)
        out.append(Launch(phase, grid(schedule, problem), req, step_ptr, block_ptr))
    return out

