"""Exact HBM/SRAM element counts of a schedule, at tile granularity, in Python integers.

The model executes the schedule's algorithm (the loop orders in the docstrings of
``kernels/standard.py``, ``kernels/flash1.py``, ``kernels/flash2.py``, as described by the
Schedule) over tiles, never over elements, and never looks at the kernels' code or counters.
The counting rules it applies are the ones stated in ``kernels/tiles.py``'s docstring:

- a tile load moves each in-range element once (HBM read + SRAM write);
- S tile: threads with a valid row and a valid column read, for each of d steps, their valid
  rows of Q and valid columns of K: d·q_len·min(TX, kv_len) Q reads, d·kv_len·min(TY, q_len) K reads;
- S and P entries move only where the mask allows;
- PV tile: threads with a valid row and an O column read their allowed P entries and their V
  columns at each of kv_len steps: A·min(TX, d_v) P reads, kv_len·d_v·min(TY, q_len) V reads.

V and O (and the backward's dO and dV) are d_v wide (``problem.head_dim_v``), Q and K d wide.

Every count is a sum over visited tiles of a product of per-block factors, read from the tile
sums of ``simulator/tile_sums.py``: without a mask those have closed forms, so the cost does not
grow with N and the counts are exact Python integers at any size.

Each kind's counter (entered in ``simulator/table.py``) turns the tile sums of one (b, h) into its
four count dicts; the built-in kinds' counters are here, with the helpers a new kind's counter
uses (:func:`new_counts`, :func:`add`, :func:`tile_math`), and the backward pass's counts.

With a mask predicate (``sandbox.vocabulary.masks``) a tile is visited where it holds at least one allowed
entry, as the kernels decide it; the predicate is evaluated over every entry of every (b, h)
(``sandbox.vocabulary.masks.tile_allowed``, compiled with Numba), so that path costs O(B·H·Nq·Nk) and is
refused above :data:`MAX_MASK_ENTRIES` entries.

With a score_mod (``sandbox.vocabulary.score_mods``) every tile on which a kernel evaluates it
(or its derivative) reads its captured arrays once from HBM, as the tensor "mod" in 4-byte words
(:func:`add_score_mod`): the forward's kernels evaluate it once per visited tile, the flash
backward twice (dkdv and dq), the standard backward once (p, which also writes score_mod'(S),
"dmod", for ds to read back).
"""

from sandbox.vocabulary import kinds
from sandbox.vocabulary.ioreport import IOReport, itemsizes
from sandbox.vocabulary.masks import tile_allowed
from simulator import table
from simulator.tile_sums import TileSums

#: The most (b, h, query, key) entries a mask is evaluated over (2^36: minutes of compiled code).
MAX_MASK_ENTRIES = 2**36


def _add(d, tensor, n):
    d[tensor] = d.get(tensor, 0) + int(n)


def simulate_counts(schedule, problem, mask=None, score_mod=None):
    """Element counts and FLOPs of ``schedule`` on ``problem`` (under ``mask``, a sandbox.vocabulary.masks predicate,
    with ``score_mod``, a sandbox.vocabulary.score_mods.ScoreMod).

    With grouped K/V heads (``problem.heads_kv`` < ``problem.heads``) the kernels read K and V per
    query head, each from its K/V head: the counts are those of H K/V heads.

    Returns:
        IOReport with Q/K/V/O counted in the problem's dtype and the rest in fp32; every count
        an exact Python int.

    Raises:
        ValueError: a mask on a problem of more than :data:`MAX_MASK_ENTRIES` entries (it is
            evaluated densely).
    """
    def count_one(t):
        counts, area = _forward_counts(schedule, problem, t, masked=mask is not None)
        add_score_mod(counts, score_mod, t.visited)
        return counts, area

    counts, area = _over_heads(schedule, problem, mask, count_one)
    # S (d) and PV (d_v) over visited tiles, 2 FLOPs per multiply-add
    flops = 2 * (problem.head_dim + problem.head_dim_v) * area
    return IOReport(*counts, itemsize=itemsizes(problem.dtype), flops=flops)


def _over_heads(schedule, problem, mask, count_one):
    """``count_one(tile_sums) -> (four count dicts, visited area)`` of one (b, h), summed over every
    (b, h): without a mask one closed form times B·H; with one, each (b, h) from its own tiles."""
    if mask is None:
        counts, area = count_one(TileSums(schedule, problem))
        return [{k: v * problem.bh for k, v in c.items()} for c in counts], area * problem.bh
    check_mask_affordable(problem)
    allowed = tile_allowed(mask, problem, schedule.block_q, schedule.block_kv)
    counts, area = [{}, {}, {}, {}], 0
    for b in range(problem.batch):
        for h in range(problem.heads):
            c, a = count_one(TileSums(schedule, problem, allowed[b, h]))
            for total, part in zip(counts, c):
                for k, v in part.items():
                    _add(total, k, v)
            area += a
    return counts, area


def add_score_mod(counts, score_mod, tiles):
    """counts' HBM reads of "mod" += the score_mod's captured words (``ScoreMod.captured_words``) for each
    of ``tiles`` tiles that evaluate it (nothing without a score_mod, or one that captures no array)."""
    if score_mod is not None and score_mod.captured_words() and tiles:
        _add(counts[0], "mod", score_mod.captured_words() * tiles)


def check_mask_affordable(problem):
    """Raise ValueError if evaluating a mask at every entry of ``problem`` is past :data:`MAX_MASK_ENTRIES`."""
    entries = problem.bh * problem.n_q * problem.n_kv
    if entries > MAX_MASK_ENTRIES:
        raise ValueError(
            f"mask: the simulator evaluates a mask at every entry, and B·H·Nq·Nk = {entries} exceeds "
            f"{MAX_MASK_ENTRIES}; simulate a smaller problem, or use causal=True without a mask"
        )


def _forward_counts(schedule, problem, t, masked):
    """([hbm_r, hbm_w, sram_r, sram_w] of one (b, h), Σ visited tile areas): the kind's own counter."""
    return table.get(schedule.kind).counts(schedule, problem, t, masked), t.area


def new_counts():
    """Four empty dicts: hbm_reads, hbm_writes, sram_reads, sram_writes (tensor -> elements)."""
    return [{}, {}, {}, {}]


def add(counts, tensor, n):
    """counts[tensor] += n (an int)."""
    _add(counts, tensor, n)


def tile_math(schedule, problem, t, counts):
    """The SRAM reads of S = Q Kᵀ (d steps) and O += P V (d_v columns) on every visited tile
    (kernels/tiles.py's rules)."""
    d, dv = problem.head_dim, problem.head_dim_v
    sr = counts[2]
    o_groups = min(schedule.threads_kv, dv)
    _add(sr, "Q", d * t.q_col_groups)
    _add(sr, "K", d * t.kv_row_groups)
    _add(sr, "P", t.allowed * o_groups)
    _add(sr, "V", dv * t.kv_row_groups)


def _start(schedule, problem, t):
    """A kind counter's start: the counts with the tile math in, and its shorthands (d, the O column
    groups min(TX, d_v), Σ q_len, the allowed entries, Σ over visited tiles of q_len)."""
    counts = new_counts()
    tile_math(schedule, problem, t, counts)
    d = problem.head_dim
    sums = (d, min(schedule.threads_kv, problem.head_dim_v), t.q_rows, t.allowed, t.q_rows_visits)
    return counts, sums


def flash2_counts(schedule, problem, t, masked):
    """kernels/flash2.py: Q_i once, K_j and V_j per visited tile, O and L once; statistics in SRAM."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    dv = problem.head_dim_v
    _add(hr, "Q", q_rows * d)
    _add(sw, "Q", q_rows * d)
    for x, w in (("K", d), ("V", dv)):
        _add(hr, x, w * t.kv_rows)
        _add(sw, x, w * t.kv_rows)
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
    _add(hw, "O", q_rows * dv)
    _add(hw, "L", q_rows)
    return counts


def flash1_counts(schedule, problem, t, masked):
    """kernels/flash1.py (Algorithm 1): K_j, V_j once; Q_i, O_i, l_i, m_i through HBM per visited tile."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    dv = problem.head_dim_v
    # init O = 0, l = 0, m = -inf in HBM
    _add(hw, "O", q_rows * dv)
    _add(hw, "l", q_rows)
    _add(hw, "m", q_rows)
    for x, w in (("K", d), ("V", dv)):
        _add(hr, x, w * t.kv_rows_loaded)
        _add(sw, x, w * t.kv_rows_loaded)
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
    _add(hr, "O", q_rows_visits * dv)
    _add(hw, "O", q_rows_visits * dv)
    # L: once per row at its last K/V block; under a mask, initialized to -inf and
    # rewritten at every visited tile (a row's last block is not known in advance)
    _add(hw, "L", q_rows + q_rows_visits if masked else q_rows)
    return counts


def standard_counts(schedule, problem, t, masked):
    """kernels/standard.py: S and P through HBM (qk, softmax, pv kernels)."""
    counts, (d, o_groups, q_rows, allowed, q_rows_visits) = _start(schedule, problem, t)
    hr, hw, sr, sw = counts
    dv = problem.head_dim_v
    nt = schedule.threads
    _add(hr, "Q", q_rows_visits * d)
    _add(sw, "Q", q_rows_visits * d)
    _add(hr, "K", d * t.kv_rows)
    _add(sw, "K", d * t.kv_rows)
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
    _add(hr, "V", dv * t.kv_rows)
    _add(sw, "V", dv * t.kv_rows)
    _add(hw, "O", q_rows * dv)
    return counts


def simulate_backward_counts(schedule, problem, mask=None, score_mod=None):
    """Element counts and FLOPs of the backward pass of ``schedule`` (see kernels/backward.py's algorithm).

    Same counting rules as the forward; PᵀX tiles (dV += Pᵀ dO, dK += dSᵀ Q) read their allowed
    M entries once per d-column group, min(TY, d), and q_len·d X elements per K/V-row group
    with a valid row, min(TX, kv_len). Under ``mask`` (the forward's predicate) every backward
    kernel visits the tiles the forward visits, evaluated as for :func:`simulate_counts`. With
    grouped K/V heads every query head's blocks read its K/V head's tiles, as without grouping, and
    dK, dV pass through fp32 partials (:func:`_group_sum_counts`). ``score_mod``: see the module docstring.

    Raises:
        ValueError: a mask on a problem of more than :data:`MAX_MASK_ENTRIES` entries.
    """
    counts, area = _over_heads(schedule, problem, mask, lambda t: _backward_counts(schedule, problem, t, score_mod))
    if problem.group > 1:
        _group_sum_counts(problem, counts)
    # matmuls over d (S = QKᵀ, dK, dQ) and over d_v (dP = dO Vᵀ, dV): flash recomputes S and dP in
    # both of its kernels (4 + 3), standard computes each once (3 + 2); then D = rowsum(dO ∘ O)
    d, dv = problem.head_dim, problem.head_dim_v
    per_entry = 4 * d + 3 * dv if kinds.get(schedule.kind).backward == "flash" else 3 * d + 2 * dv
    flops = 2 * per_entry * area + 2 * problem.bh * problem.n_q * dv
    return IOReport(*counts, itemsize=itemsizes(problem.dtype), flops=flops)


def _group_sum_counts(problem, counts):
    """Grouped K/V heads (H_kv < H): each query head's dK, dV go to HBM as fp32 partials (B, H, Nk, d)
    and (B, H, Nk, d_v), which the group sum reads once and adds up into dK, dV (B, H_kv, Nk, ·), in
    registers."""
    hr, hw = counts[0], counts[1]
    for x, w in (("dK", problem.head_dim), ("dV", problem.head_dim_v)):
        part = hw.pop(x)
        _add(hw, x + "part", part)
        _add(hr, x + "part", part)
        _add(hw, x, problem.bh_kv * problem.n_kv * w)


def _backward_counts(schedule, problem, t, score_mod=None):
    """The backward's four count dicts for one (b, h) with tile sums ``t``, and the visited area."""
    d, dv = problem.head_dim, problem.head_dim_v
    n_q, n_kv = problem.n_q, problem.n_kv
    ty_groups, tx_groups = min(schedule.threads_q, d), min(schedule.threads_kv, d)
    ty_groups_v = min(schedule.threads_q, dv)  # dV's d_v-column groups (dV += Pᵀ dO)
    allowed = t.allowed
    qrv = t.q_rows_visits  # Σ over visited tiles of q_len
    kvr = t.kv_rows  # Σ over visited tiles of kv_len
    qcg = t.q_col_groups  # Σ q_len·min(TX, kv_len): S-tile rows read
    krg = t.kv_row_groups  # Σ kv_len·min(TY, q_len): S-tile columns read
    hr, hw, sr, sw = {}, {}, {}, {}
    # -- D = rowsum(dO ∘ O)
    _add(hr, "dO", n_q * dv)
    _add(hr, "O", n_q * dv)
    _add(hw, "D", n_q)
    _add(hw, "dK", n_kv * d)
    _add(hw, "dV", n_kv * dv)
    _add(hw, "dQ", n_q * d)
    if kinds.get(schedule.kind).backward == "flash":
        # dkdv: K_j, V_j once per K/V block some query sees; Q_i, dO_i, L_i, D_i per visited tile
        for x, w in (("K", d), ("V", dv)):
            _add(hr, x, w * t.kv_rows_loaded)
            _add(sw, x, w * t.kv_rows_loaded)
        for x, w in (("Q", d), ("dO", dv)):
            _add(hr, x, w * qrv)
            _add(sw, x, w * qrv)
        for x in ("L", "D"):
            _add(hr, x, qrv)
            _add(sw, x, qrv)
        _add(sw, "P", allowed)
        _add(sw, "dS", allowed)
        # dq: Q_i, dO_i, L_i, D_i once per Q block; K_j, V_j per visited tile
        for x, w in (("Q", d), ("dO", dv)):
            _add(hr, x, w * n_q)
            _add(sw, x, w * n_q)
        for x in ("L", "D"):
            _add(hr, x, n_q)
            _add(sw, x, n_q)
        for x, w in (("K", d), ("V", dv)):
            _add(hr, x, w * kvr)
            _add(sw, x, w * kvr)
        _add(sw, "dS", allowed)
        # SRAM reads: S and dP tiles in both kernels, dV/dK PᵀX tiles, dQ's dS K tile
        _add(sr, "Q", 3 * d * qcg)
        _add(sr, "dO", 3 * dv * qcg)
        _add(sr, "K", 3 * d * krg)
        _add(sr, "V", 2 * dv * krg)
        _add(sr, "L", 2 * qcg)
        _add(sr, "D", 2 * qcg)
        _add(sr, "P", allowed * ty_groups_v)
        _add(sr, "dS", allowed * (ty_groups + tx_groups))
        add_score_mod([hr], score_mod, 2 * t.visited)  # dkdv and dq each rebuild P on every visited tile
    else:  # standard: p, ds, dv (tn), dk (tn), dq (nn)
        _add(hr, "Q", 2 * d * qrv)
        _add(sw, "Q", 2 * d * qrv)
        _add(hr, "dO", 2 * dv * qrv)
        _add(sw, "dO", 2 * dv * qrv)
        _add(hr, "K", 2 * d * kvr)
        _add(sw, "K", 2 * d * kvr)
        _add(hr, "V", dv * kvr)
        _add(sw, "V", dv * kvr)
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
        _add(sr, "dO", 2 * dv * qcg)
        _add(sr, "K", 2 * d * krg)
        _add(sr, "V", dv * krg)
        _add(sr, "L", qcg)
        _add(sr, "D", qcg)
        _add(sr, "P", allowed * ty_groups_v)
        _add(sr, "dS", allowed * (ty_groups + tx_groups))
        if score_mod is not None:  # p evaluates it per visited tile and writes score_mod'(S); ds reads that
            add_score_mod([hr], score_mod, t.visited)
            _add(hw, "dmod", allowed)
            _add(hr, "dmod", allowed)
    return [hr, hw, sr, sw], t.area


def splitkv_counts(schedule, problem, t, masked):
    """kernels/splitkv.py: flash2's loop per split (Q_i, statistics and partials once per split),
    then the combine kernel (L_s and O_s read back, weights in SRAM, O and L written once).

    The splits of a Q block share its visited tiles among them, so every per-tile term is
    flash2's; only the per-block prologue and epilogue are paid ``kv_splits`` times.
    """
    ns = schedule.kv_splits
    counts = flash2_counts(schedule, problem, t, masked)
    hr, hw, sr, sw = counts
    d, dv = problem.head_dim, problem.head_dim_v
    o_groups = min(schedule.threads_kv, dv)
    q_rows = t.q_rows
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
    _add(sr, "w", 2 * ns * q_rows + ns * q_rows * dv)
    _add(hr, "Opart", ns * q_rows * dv)
    _add(hw, "O", q_rows * dv)
    _add(hw, "L", q_rows)
    return counts
