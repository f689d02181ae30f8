"""Sums over the tiles one (b, h) visits, as exact Python integers: what the kinds' counters read.

A tile (i, j) is visited unless causal and every key of block j lies after the last query of
block i; under a mask, where it holds at least one allowed entry (``simulator/counts.py`` finds
those tiles). Every count of ``simulator/counts.py`` is a sum over visited tiles of a product of
per-block factors; :class:`TileSums` holds those sums. Without a mask they have closed forms (the
Q blocks fall into three classes, and the causal staircase is a floor sum, :func:`floor_sum`), so
the cost does not grow with N and the sums are exact Python integers at any size (N = 2⁴⁰
included; int64 would wrap from N ≈ 2³²). Under a mask they are summed over the tiles of one
(b, h), from the allowed entries per tile.
"""

import numpy as np


def floor_sum(n, m, a, b):
    """Σ_{i=0}^{n-1} ⌊(a·i + b)/m⌋ for integers n, a, b >= 0, m >= 1, in O(log m) steps (exact)."""
    total = 0
    while True:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        y_max = a * n + b
        if y_max < m:
            return total
        n, b = divmod(y_max, m)
        m, a = a, m


class TileSums:
    """Sums over the tiles one (b, h) visits, as exact Python ints: what a kind's counter reads.

    With q_len_i the rows of Q block i, kv_len_j the rows of K/V block j, and V_i the K/V
    blocks Q block i visits:

    Attributes:
        q_rows: Σ_i q_len_i (Nq).
        visited: Σ_i |V_i|, the visited tiles.
        q_rows_visits: Σ_i q_len_i·|V_i|, the Q rows loaded once per visited tile.
        kv_rows: Σ_i Σ_{j∈V_i} kv_len_j, the K/V rows loaded once per visited tile.
        area: Σ_i q_len_i·Σ_{j∈V_i} kv_len_j, the dense entries of the visited tiles.
        q_col_groups: Σ_i q_len_i·Σ_{j∈V_i} min(TX, kv_len_j): S-tile Q reads per d step.
        kv_row_groups: Σ_i min(TY, q_len_i)·Σ_{j∈V_i} kv_len_j: S-tile K reads per d step.
        allowed: the allowed (query, key) entries (all of them lie in visited tiles).
        kv_rows_loaded: rows of the K/V blocks some visited tile needs (flash1's outer loop).
    """

    def __init__(self, schedule, problem, allowed=None):
        """``allowed``: the allowed entries per tile (Tr, Tc) of one (b, h) under a mask, or None."""
        if allowed is None:
            self._closed_form(schedule, problem)
        else:
            self._from_tiles(schedule, problem, np.asarray(allowed))

    def _closed_form(self, schedule, problem):
        br, bc = schedule.block_q, schedule.block_kv
        n_q, n_kv, causal = problem.n_q, problem.n_kv, problem.causal
        ty, tx = schedule.threads_q, schedule.threads_kv
        tr, tc = -(-n_q // br), -(-n_kv // bc)
        kv_last = n_kv - (tc - 1) * bc  # rows of the last K/V block

        def kv_rows(v):  # Σ kv_len_j over the first v K/V blocks
            return min(n_kv, v * bc)

        def col_groups(v):  # Σ min(TX, kv_len_j) over the first v K/V blocks
            return v * min(tx, bc) - (min(tx, bc) - min(tx, kv_last) if v == tc else 0)

        # Three classes of Q blocks: the full blocks i < k, which (causal) stop short of the last
        # K/V block and visit u_i = ⌈(i+1)·Br/Bc⌉ blocks; the other full blocks, which visit all
        # Tc; and the last block, which may be short.
        if causal:
            k = min(tr - 1, (tc - 1) * bc // br)  # (i+1)·Br <= (Tc-1)·Bc  <=>  u_i < Tc
            u_sum = k + floor_sum(k, bc, br, br - 1)  # Σ_{i<k} (⌊((i+1)·Br - 1)/Bc⌋ + 1)
            v_last = min(tc, (n_q - 1) // bc + 1)
        else:
            k, u_sum, v_last = 0, 0, tc
        n_all = tr - 1 - k  # full blocks that visit every K/V block
        q_last = n_q - (tr - 1) * br
        full_kv_rows = bc * u_sum + n_all * n_kv  # Σ over the full blocks of Σ kv_len_j
        self.q_rows = n_q
        self.visited = u_sum + n_all * tc + v_last
        self.q_rows_visits = br * (u_sum + n_all * tc) + q_last * v_last
        self.kv_rows = full_kv_rows + kv_rows(v_last)
        self.area = br * full_kv_rows + q_last * kv_rows(v_last)
        self.q_col_groups = br * (min(tx, bc) * u_sum + n_all * col_groups(tc)) + q_last * col_groups(v_last)
        self.kv_row_groups = min(ty, br) * full_kv_rows + min(ty, q_last) * kv_rows(v_last)
        if causal:  # row r sees keys 0..min(r, Nk-1)
            seen = min(n_q, n_kv)
            self.allowed = seen * (seen + 1) // 2 + (n_q - seen) * n_kv
        else:
            self.allowed = n_q * n_kv
        # flash1's outer loop: K/V blocks with a key some query may see (whole blocks are loaded)
        kv_blocks_loaded = -(-min(n_kv, n_q) // bc) if causal else tc
        self.kv_rows_loaded = min(n_kv, kv_blocks_loaded * bc)

    def _from_tiles(self, schedule, problem, allowed):
        br, bc = schedule.block_q, schedule.block_kv
        tr, tc = allowed.shape
        q_len = np.minimum(br, problem.n_q - np.arange(tr, dtype=np.int64) * br)
        kv_len = np.minimum(bc, problem.n_kv - np.arange(tc, dtype=np.int64) * bc)
        vis = allowed > 0
        visited = vis.sum(axis=1)
        kv_rows = vis @ kv_len
        total = lambda x: int(np.sum(x, dtype=object))  # noqa: E731  (exact: no int64 wrap)
        self.q_rows = total(q_len)
        self.visited = total(visited)
        self.q_rows_visits = total(q_len.astype(object) * visited)
        self.kv_rows = total(kv_rows)
        self.area = total(q_len.astype(object) * kv_rows)
        self.q_col_groups = total(q_len.astype(object) * (vis @ np.minimum(schedule.threads_kv, kv_len)))
        self.kv_row_groups = total(np.minimum(schedule.threads_q, q_len).astype(object) * kv_rows)
        self.allowed = total(allowed)
        self.kv_rows_loaded = total(kv_len[vis.any(axis=0)])
