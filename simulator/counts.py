"""Exact HBM/SRAM element counts of a schedule, at tile granularity, in O(Tr + Tc) time.

The model executes the schedule's algorithm (the loop orders in the docstrings of
``kernels/standard.py``, ``kernels/flash1.py``, ``kernels/flash2.py``, as described by the
Schedule) over tiles, never over elements, and never looks at the kernels' code or counters.
The counting rules it applies are the ones stated in ``kernels/tiles.py``'s docstring:

- a tile load moves each in-range element once (HBM read + SRAM write);
- S tile: threads with a valid row and a valid column read, for each of d steps, their valid
  rows of Q and valid columns of K: d·q_len·min(TX, kv_len) Q reads, d·kv_len·min(TY, q_len) K reads;
- S and P entries move only where the mask allows;
- PV tile: threads with a valid row and an O column read their allowed P entries and their V
  columns at each of kv_len steps: A·min(TX, d) P reads, kv_len·d·min(TY, q_len) V reads.

A tile (i, j) is visited unless causal and every key of block j lies after the last query of
block i. Sums over visited tiles reduce, per Q block i, to prefix sums over K/V blocks, so
the cost is linear in the number of blocks (Nq = Nk = 2²⁰ with 128×128 tiles: milliseconds).

With a mask predicate (``sandbox.masks``) a tile is visited where it holds at least one allowed
entry, as the kernels decide it; the predicate is evaluated over every entry of every (b, h)
(``sandbox.masks.tile_allowed``, compiled with Numba), so that path costs O(B·H·Nq·Nk).
"""

import numpy as np

from sandbox.ioreport import IOReport, itemsizes


class _Tiles:
    """Per-Q-block sums over the K/V blocks that block visits (arrays of length Tr)."""

    def __init__(self, schedule, problem, allowed=None):
        """``allowed``: the allowed entries per tile (Tr, Tc) of one (b, h) under a mask, or None."""
        br, bc = schedule.block_q, schedule.block_kv
        n_q, n_kv, causal = problem.n_q, problem.n_kv, problem.causal
        ty, tx = schedule.threads_q, schedule.threads_kv
        tr, tc = -(-n_q // br), -(-n_kv // bc)
        q0 = np.arange(tr, dtype=np.int64) * br
        self.q_len = np.minimum(br, n_q - q0)
        q_last = q0 + self.q_len - 1
        k0 = np.arange(tc, dtype=np.int64) * bc
        kv_len = np.minimum(bc, n_kv - k0)
        self.row_groups = np.minimum(ty, self.q_len)  # min(TY, q_len)
        if allowed is not None:
            vis = allowed > 0
            self.visited = vis.sum(axis=1)
            self.kv_rows = vis @ kv_len
            self.kv_cols_groups = vis @ np.minimum(tx, kv_len)
            self.allowed = allowed.sum(axis=1)
            self.area = self.q_len * self.kv_rows
            self.kv_rows_loaded = int(kv_len[vis.any(axis=0)].sum())  # flash1: K/V blocks some tile needs
            return
        # visited K/V blocks of Q block i: j <= j_last[i]
        self.j_last = np.minimum(tc - 1, q_last // bc) if causal else np.full(tr, tc - 1)
        self.visited = self.j_last + 1
        pre = lambda x: np.concatenate([[0], np.cumsum(x)])  # noqa: E731
        upto = lambda x: pre(x)[self.visited]  # noqa: E731  Σ over visited j of x[j]
        self.kv_rows = upto(kv_len)  # Σ kv_len
        self.kv_cols_groups = upto(np.minimum(tx, kv_len))  # Σ min(TX, kv_len)
        # Σ over visited tiles of the allowed entries A_ij, and of the dense tile areas
        if causal:
            # row r sees keys 0..min(r, Nk-1): Σ_r min(r + 1, Nk) over the block's rows
            self.allowed = _sum_min_plus_one(q0, q_last, n_kv)
        else:
            self.allowed = self.q_len * n_kv
        self.area = self.q_len * self.kv_rows
        # flash1's outer loop: K/V blocks with a key some query may see (whole blocks are loaded)
        kv_blocks_loaded = -(-min(n_kv, n_q) // bc) if causal else tc
        self.kv_rows_loaded = min(n_kv, kv_blocks_loaded * bc)


def _sum_min_plus_one(lo, hi, n):
    """Σ_{r=lo..hi} min(r + 1, n), elementwise over arrays lo, hi."""
    # r + 1 for r < n, n for r >= n
    a_hi = np.minimum(hi, n - 1)  # last r with r + 1 <= n
    count_a = np.maximum(0, a_hi - lo + 1)
    first = lo + 1
    last = a_hi + 1
    part_a = np.where(count_a > 0, (first + last) * count_a // 2, 0)
    count_b = (hi - lo + 1) - count_a
    return part_a + count_b * n


def _add(d, tensor, n):
    d[tensor] = d.get(tensor, 0) + int(n)


def simulate_counts(schedule, problem, mask=None):
    """Element counts and FLOPs of ``schedule`` on ``problem`` (under ``mask``, a sandbox.masks predicate).

    Returns:
        IOReport with Q/K/V/O counted in the problem's dtype and the rest in fp32.
    """
    if mask is None:
        counts, area = _forward_counts(schedule, problem, _Tiles(schedule, problem), masked=False)
        counts = [{k: v * problem.bh for k, v in c.items()} for c in counts]
        area *= problem.bh
    else:
        from sandbox.masks import tile_allowed

        allowed = tile_allowed(mask, problem, schedule.block_q, schedule.block_kv)
        counts, area = [{}, {}, {}, {}], 0
        for b in range(problem.batch):
            for h in range(problem.heads):
                c, a = _forward_counts(schedule, problem, _Tiles(schedule, problem, allowed[b, h]), masked=True)
                for total, part in zip(counts, c):
                    for k, v in part.items():
                        _add(total, k, v)
                area += a
    flops = 4 * problem.head_dim * area  # S and PV over visited tiles, 2 FLOPs per multiply-add
    return IOReport(*counts, itemsize=itemsizes(problem.dtype), flops=flops)


def _forward_counts(schedule, problem, t, masked):
    """([hbm_r, hbm_w, sram_r, sram_w] of one (b, h), Σ visited tile areas): the kind's own counter."""
    from sandbox import kinds

    return kinds.get(schedule.kind).count(schedule, problem, t, masked), int(t.area.sum())


def new_counts():
    """Four empty dicts: hbm_reads, hbm_writes, sram_reads, sram_writes (tensor -> elements)."""
    return [{}, {}, {}, {}]


def add(counts, tensor, n):
    """counts[tensor] += n (an int)."""
    _add(counts, tensor, n)


def tile_math(schedule, problem, t, counts):
    """The SRAM reads of S = Q Kᵀ and O += P V on every visited tile (kernels/tiles.py's rules)."""
    d = problem.head_dim
    sr = counts[2]
    o_groups = min(schedule.threads_kv, d)
    _add(sr, "Q", d * (t.q_len * t.kv_cols_groups).sum())
    _add(sr, "K", d * (t.row_groups * t.kv_rows).sum())
    _add(sr, "P", int(t.allowed.sum()) * o_groups)
    _add(sr, "V", d * (t.row_groups * t.kv_rows).sum())


def _start(schedule, problem, t):
    """A kind counter's start: the counts with the tile math in, and its shorthands (d, the O column
    groups min(TX, d), Σ q_len, the allowed entries, Σ over visited tiles of q_len)."""
    counts = new_counts()
    tile_math(schedule, problem, t, counts)
    d = problem.head_dim
    sums = (d, min(schedule.threads_kv, d), int(t.q_len.sum()), int(t.allowed.sum()), int((t.q_len * t.visited).sum()))
    return counts, sums


def flash2_counts(schedule, problem, t, masked):
    """kernels/flash2.py: Q_i once, K_j and V_j per visited tile, O and L once; statistics in SRAM."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    _add(hr, "Q", q_rows * d)
    _add(sw, "Q", q_rows * d)
    for x in ("K", "V"):
        _add(hr, x, d * t.kv_rows.sum())
        _add(sw, x, d * t.kv_rows.sum())
    _add(sw, "S", allowed)
    _add(sr, "S", 2 * allowed)
    _add(sw, "P", allowed)
    # m_i, l_i: init, read + write per visited tile, read at the end (with L; l also for O)
    _add(sw, "m", q_rows + q_rows_visits)
    _add(sw, "l", q_rows + q_rows_visits)
    _add(sr, "m", q_rows_visits + q_rows)
    _add(sr, "l", q_rows_visits + q_rows + q_rows * o_groups)
    _add(sw, "alpha", q_rows_visits)
    _add(sr, "alpha", q_rows_visits * o_groups)
    _add(hw, "O", q_rows * d)
    _add(hw, "L", q_rows)
    return counts


def flash1_counts(schedule, problem, t, masked):
    """kernels/flash1.py (Algorithm 1): K_j, V_j once; Q_i, O_i, l_i, m_i through HBM per visited tile."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    # init O = 0, l = 0, m = -inf in HBM
    _add(hw, "O", q_rows * d)
    _add(hw, "l", q_rows)
    _add(hw, "m", q_rows)
    for x in ("K", "V"):
        _add(hr, x, d * t.kv_rows_loaded)
        _add(sw, x, d * t.kv_rows_loaded)
    _add(hr, "Q", q_rows_visits * d)
    _add(sw, "Q", q_rows_visits * d)
    _add(sw, "S", allowed)
    _add(sr, "S", 2 * allowed)
    _add(sw, "P", allowed)
    for x in ("m", "l"):
        _add(hr, x, q_rows_visits)
        _add(hw, x, q_rows_visits)
    for x in ("alpha", "beta"):
        _add(sw, x, q_rows_visits)
        _add(sr, x, q_rows_visits * o_groups)
    _add(hr, "O", q_rows_visits * d)
    _add(hw, "O", q_rows_visits * d)
    # L: once per row at its last K/V block; under a mask, initialized to -inf and
    # rewritten at every visited tile (a row's last block is not known in advance)
    _add(hw, "L", q_rows + q_rows_visits if masked else q_rows)
    return counts


def standard_counts(schedule, problem, t, masked):
    """kernels/standard.py: S and P through HBM (qk, softmax, pv kernels)."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    nt = schedule.threads
    _add(hr, "Q", q_rows_visits * d)
    _add(sw, "Q", q_rows_visits * d)
    _add(hr, "K", d * t.kv_rows.sum())
    _add(sw, "K", d * t.kv_rows.sum())
    _add(hw, "S", allowed)
    # softmax: one block of nt threads per row; the row of S is read twice
    _add(hr, "S", 2 * allowed)
    _add(hw, "P", allowed)
    n_rows = problem.n_q
    _add(sw, "m", n_rows * (nt + 1))
    _add(sw, "l", n_rows * (nt + 1))
    _add(sr, "m", n_rows * 2 * nt)
    _add(sr, "l", n_rows * 2 * nt)
    _add(hw, "L", n_rows)
    # pv
    _add(hr, "P", allowed)
    _add(sw, "P", allowed)
    _add(hr, "V", d * t.kv_rows.sum())
    _add(sw, "V", d * t.kv_rows.sum())
    _add(hw, "O", q_rows * d)
    return counts


def simulate_backward_counts(schedule, problem):
    """Element counts and FLOPs of the backward pass of ``schedule`` (see kernels/backward.py's algorithm).

    Same counting rules as the forward; PᵀX tiles (dV += Pᵀ dO, dK += dSᵀ Q) read their allowed
    M entries once per d-column group, min(TY, d), and q_len·d X elements per K/V-row group
    with a valid row, min(TX, kv_len).
    """
    t = _Tiles(schedule, problem)
    d = problem.head_dim
    n_q, n_kv = problem.n_q, problem.n_kv
    ty_groups, tx_groups = min(schedule.threads_q, d), min(schedule.threads_kv, d)
    allowed = int(t.allowed.sum())
    qrv = int((t.q_len * t.visited).sum())  # Σ over visited tiles of q_len
    kvr = int(t.kv_rows.sum())  # Σ over visited tiles of kv_len
    qcg = int((t.q_len * t.kv_cols_groups).sum())  # Σ q_len·min(TX, kv_len): S-tile rows read
    krg = int((t.row_groups * t.kv_rows).sum())  # Σ kv_len·min(TY, q_len): S-tile columns read
    hr, hw, sr, sw = {}, {}, {}, {}
    # -- D = rowsum(dO ∘ O)
    _add(hr, "dO", n_q * d)
    _add(hr, "O", n_q * d)
    _add(hw, "D", n_q)
    _add(hw, "dK", n_kv * d)
    _add(hw, "dV", n_kv * d)
    _add(hw, "dQ", n_q * d)
    from sandbox import kinds

    if kinds.get(schedule.kind).backward == "flash":
        # dkdv: K_j, V_j once per K/V block some query sees; Q_i, dO_i, L_i, D_i per visited tile
        for x in ("K", "V"):
            _add(hr, x, d * t.kv_rows_loaded)
            _add(sw, x, d * t.kv_rows_loaded)
        for x in ("Q", "dO"):
            _add(hr, x, d * qrv)
            _add(sw, x, d * qrv)
        for x in ("L", "D"):
            _add(hr, x, qrv)
            _add(sw, x, qrv)
        _add(sw, "P", allowed)
        _add(sw, "dS", allowed)
        # dq: Q_i, dO_i, L_i, D_i once per Q block; K_j, V_j per visited tile
        for x in ("Q", "dO"):
            _add(hr, x, d * n_q)
            _add(sw, x, d * n_q)
        for x in ("L", "D"):
            _add(hr, x, n_q)
            _add(sw, x, n_q)
        for x in ("K", "V"):
            _add(hr, x, d * kvr)
            _add(sw, x, d * kvr)
        _add(sw, "dS", allowed)
        # SRAM reads: S and dP tiles in both kernels, dV/dK PᵀX tiles, dQ's dS K tile
        _add(sr, "Q", 3 * d * qcg)
        _add(sr, "dO", 3 * d * qcg)
        _add(sr, "K", 3 * d * krg)
        _add(sr, "V", 2 * d * krg)
        _add(sr, "L", 2 * qcg)
        _add(sr, "D", 2 * qcg)
        _add(sr, "P", allowed * ty_groups)
        _add(sr, "dS", allowed * (ty_groups + tx_groups))
        matmuls = 7
    else:  # standard: p, ds, dv (tn), dk (tn), dq (nn)
        _add(hr, "Q", 2 * d * qrv)
        _add(sw, "Q", 2 * d * qrv)
        _add(hr, "dO", 2 * d * qrv)
        _add(sw, "dO", 2 * d * qrv)
        _add(hr, "K", 2 * d * kvr)
        _add(sw, "K", 2 * d * kvr)
        _add(hr, "V", d * kvr)
        _add(sw, "V", d * kvr)
        for x in ("L", "D"):
            _add(hr, x, qrv)
            _add(sw, x, qrv)
        _add(hw, "P", allowed)
        _add(hw, "dS", allowed)
        _add(hr, "P", 2 * allowed)
        _add(hr, "dS", 2 * allowed)
        _add(sw, "P", allowed)
        _add(sw, "dS", 2 * allowed)
        _add(sr, "Q", 2 * d * qcg)
        _add(sr, "dO", 2 * d * qcg)
        _add(sr, "K", 2 * d * krg)
        _add(sr, "V", d * krg)
        _add(sr, "L", qcg)
        _add(sr, "D", qcg)
        _add(sr, "P", allowed * ty_groups)
        _add(sr, "dS", allowed * (ty_groups + tx_groups))
        matmuls = 5
    bh = problem.bh
    scaled = [{k: v * bh for k, v in c.items()} for c in (hr, hw, sr, sw)]
    flops = bh * (matmuls * 2 * d * int(t.area.sum()) + 2 * n_q * d)
    return IOReport(*scaled, itemsize=itemsizes(problem.dtype), flops=flops)


def splitkv_counts(schedule, problem, t, masked):
    """kernels/splitkv.py: flash2's loop per split (Q_i, statistics and partials once per split),
    then the combine kernel (L_s and O_s read back, weights in SRAM, O and L written once).

    The splits of a Q block share its visited tiles among them, so every per-tile term is
    flash2's; only the per-block prologue and epilogue are paid ``kv_splits`` times.
    """
    ns = schedule.kv_splits
    counts = flash2_counts(schedule, problem, t, masked)
    hr, hw, sr, sw = counts
    d = problem.head_dim
    o_groups = min(schedule.threads_kv, d)
    q_rows = int(t.q_len.sum())
    extra = (ns - 1) * q_rows  # rows handled again by the other splits' prologue and epilogue
    _add(hr, "Q", extra * d)
    _add(sw, "Q", extra * d)
    _add(sw, "m", extra)
    _add(sw, "l", extra)
    _add(sr, "m", extra)
    _add(sr, "l", extra * (1 + o_groups))
    # the partial phase writes Opart, Lpart where flash2 writes O, L
    hw["Opart"] = hw.pop("O") * ns
    hw["Lpart"] = hw.pop("L") * ns
    # combine
    _add(hr, "Lpart", ns * q_rows)
    _add(sw, "w", 2 * ns * q_rows)
    _add(sr, "w", 2 * ns * q_rows + ns * q_rows * d)
    _add(hr, "Opart", ns * q_rows * d)
    _add(hw, "O", q_rows * d)
    _add(hw, "L", q_rows)
    return counts
