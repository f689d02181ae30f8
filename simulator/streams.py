"""The L2 model's input: a schedule's tile-level global-memory requests, launch by launch, in issue order.

``simulator/counts.py`` counts what the algorithm moves between HBM and SRAM; this module lists the
same accesses, tile by tile and in the order the GPU issues thread blocks, for the cache model
(``simulator/l2.py``). The bytes they request are, byte for byte, ``simulate_counts(schedule,
problem).hbm_bytes`` (tested per tensor).

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

A kind's launches
    The simulator's table (``simulator/table.py``) holds each kind's ``((phase, generator, grid),
    ...)``; the built-in kinds' are :data:`FLASH2_LAUNCHES` and its siblings. A generator is a
    compiled function ``(p, bases, req, step_ptr, block_ptr, fill) -> (blocks, steps, requests)``,
    ``p`` the int64 parameters (B·H, Nq, Nk, d, Br, Bc, itemsize, causal, H, splits) and ``bases``
    :func:`tensor_bases`; :func:`tile_requests` calls it once with ``fill`` false to count, then
    again to fill arrays of those sizes. ``grid(schedule, problem)`` is the launch's grid.

Complexity
    O(number of tile requests): O(Tr·Tc) for all kinds, plus O(Nq) for standard's softmax, in
    compiled loops.
"""

import dataclasses

import numpy as np
from numba import njit

from simulator import table

#: Tensors of the forward kinds, in allocation order (kernels/launch.py): inputs, outputs, scratch.
TENSORS = ("Q", "K", "V", "O", "L", "l", "m", "S", "P", "Opart", "Lpart")
_Q, _K, _V, _O, _L, _LL, _M, _S, _P, _OP, _LP = range(len(TENSORS))
#: Base addresses are aligned like large cudaMalloc allocations.
BASE_ALIGN = 2 * 2**20

#: Columns of a request (a row of :attr:`Launch.requests`): address of row 0, rows, bytes per row,
#: row stride, triangle, element size, tensor, write (0/1).
NCOLS = 8
#: The triangle of a request whose rows move whole. A triangle t != NO_TRI limits row r to
#: min(row_bytes, max(0, t + r)·elem) bytes: causal S/P tiles.
NO_TRI = -(1 << 62)
_NO_TRI = NO_TRI  # as the compiled generators read it


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
        NotImplementedError: the kind has no request stream in the table (or is not in it).
    """
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
        phase: the kernel's phase name ("main", "qk", "softmax", "pv", "partial", "combine").
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
        empty2, empty1 = np.zeros((0, NCOLS), dtype=np.int64), np.zeros(0, dtype=np.int64)
        nb, ns, nr = gen(p, bases, empty2, empty1, empty1, False)
        req = np.empty((nr, NCOLS), dtype=np.int64)
        step_ptr, block_ptr = np.empty(ns + 1, dtype=np.int64), np.empty(nb + 1, dtype=np.int64)
        gen(p, bases, req, step_ptr, block_ptr, True)
        out.append(Launch(phase, grid(schedule, problem), req, step_ptr, block_ptr))
    return out

