"""The global bytes Nsight Compute counts at L1: the simulator's bytes, rounded to the 32-byte sectors
each warp instruction touches.

ncu's ``l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum`` and ``..._op_st.sum`` add, for every warp-level
global load or store, 32 bytes for each sector its lanes touch (hit or miss). The simulator counts
the bytes the algorithm moves. The two agree where a warp's lanes cover whole sectors, which is how
every tile load and store of the counting kernels is written (``sandbox/lab/ncu.py``, "What the 2%
target means here"), with the exceptions below. For each one, the lanes of every warp of one block
are laid out as the kernel lays them out, instruction by instruction; sectors × 32 over the bytes
they ask for is the access's *factor*, and the expected L1 bytes of a launch are Σ over its
(tensor, load or store) of the simulator's bytes times that factor (1 where no pattern is listed).

- Every backward's ``d`` (kernels/backward.py, make_d): one thread per row of O and dO, reading
  its row element by element: a warp instruction reads one element from each of 32 rows, a whole
  sector each (8× in fp32).
- The flash backward's ``dkdv`` and the standard backward's ``dv`` and ``dk`` (kernels/matmul.py,
  make_tn): thread (ty, tx) stores rows tx + bb·TX and columns ty + c·TY of dK_j and dV_j, so a
  warp's lanes cover TX rows × 32/TX columns (4× in fp32 with TX = 16).
- standard's ``softmax`` (kernels/standard.py): thread 0 writes each row's L, one sector for 4 bytes.
- flash2's FMA build (kernels/flash2_fast.py): each thread stores its VO consecutive O columns as VO
  scalar stores, VO·4 bytes apart across the warp (4× with VO = 4); L from the lanes with tx = 0.
- flash2's tensor-core build (kernels/flash2_tc.py): Q_i and K_j read as pairs of scalars 16 bytes
  apart (columns t and t + 4 of each 8), O_i stored as pairs 4 bytes apart (columns 2t, 2t + 1),
  four lanes to a row: 2× each.
- flash2's 16-bit tensor-core build (kernels/flash2_tc16.py), whose threads move 32-bit words (two
  16-bit elements): O_i stored as the tensor-core build's, four lanes to a row, 16 bytes of a row
  per instruction (2×), and with a warp per 16 rows Q_i read likewise (2×); K_j and V_j (and with a
  warp per 32 rows Q_i) copied whole (cp.async, 16 bytes a lane, consecutive lanes consecutive
  bytes of a row), which ncu counts at :data:`LDGSTS_COUNTED` of the bytes they copy.
- flash2's fast backward (kernels/backward_tc.py) has none: its ``d`` reads O and dO as runs of
  consecutive elements, and dK_j, dV_j and dQ_i go from the mma accumulators through SRAM to
  whole-sector stores, so its global bytes are the simulator's.

Scalar accesses are assumed, one instruction per element as the source is written; a compiler
that merged a thread's neighbouring elements into a vector access would send fewer sectors. Each
pattern is held to the kernel's own accesses, traced under Numba's CUDA simulator
(tests/sandbox/test_ncu_sectors.py).

Under a mask the L2 request stream (``simulator/streams.py``) does not apply: it models the causal
cut only. The kernels skip the mask's empty tiles, and so do the simulator's counts; an access
marked :attr:`Access.every_row` moves each row of its tensor once in its launch whatever tiles are
visited (the counting kernels': d's O and dO, the dK and dV stores, standard's L), so its sectors
beyond its bytes are those of the mask-free stream. :func:`masked_l1_bytes` adds those to the
simulator's bytes under the mask. Where an access that is not whole sectors is not so marked (it
lies in the tile loop, as the tensor-core forward's K_j, or is of a build that takes no mask: the
fast forwards), a masked row has no sector model and is held to the simulator's bytes alone.

Example:
    >>> from sandbox import Schedule
    >>> round(factor(backward_d_rows, Schedule("flash2", 64, 64, 4, 4), 64, 4), 3)
    8.0
"""

import dataclasses

import numpy as np

from kernels import backward_tc, flash2_fast, flash2_tc, flash2_tc16
from sandbox.vocabulary import kinds
from sandbox.vocabulary.ioreport import itemsizes
from simulator import streams

#: Bytes of an L1/L2 sector: the unit ncu's L1 byte counts come in.
SECTOR = 32
#: Threads of a warp.
WARP = 32
#: ncu's L1 count of a cp.async copy (an LDGSTS.BYPASS instruction, 16 bytes a lane on whole
#: sectors) over the bytes it copies: 18 sectors counted for each 512-byte warp request, which fills
#: 16. Measured on an H200 (BENCHMARKS.md, "The ncu check of the 16-bit forward"): 66,560 requests,
#: 1,198,080 sectors counted, 34,078,720 bytes copied (ncu's own count of them, and the simulator's).
LDGSTS_COUNTED = 18 / 16


def _warps(threads):
    """The thread ids of each warp of a block of ``threads``."""
    return [range(w, min(w + WARP, threads)) for w in range(0, threads, WARP)]


def factor(instructions, schedule, head_dim, itemsize):
    """Sector bytes over requested bytes of one pattern for one block.

    Args:
        instructions: ``(schedule, head_dim) -> (columns, [[(row, col) of each active lane], ...])``,
            one list per warp instruction, ``columns`` the tensor's row length (head_dim, or 1 for L and D).
        itemsize: bytes of one element.

    Returns:
        float, at least 1 when no element straddles a sector (its tile starts on one).
    """
    columns, insts = instructions(schedule, head_dim)
    sectors = lanes = 0
    for inst in insts:
        sectors += len({(r * columns + c) * itemsize // SECTOR for r, c in inst})
        lanes += len(inst)
    return sectors * SECTOR / (lanes * itemsize) if lanes else 1.0


# -- the patterns: each a function (schedule, head_dim) -> (columns, instructions) -----------------
def backward_d_rows(schedule, head_dim):
    """kernels/backward.py make_d: thread r of the block reads row r of O (and of dO), column by column."""
    br, nt = schedule.block_q, schedule.threads
    insts = []
    for warp in _warps(nt):
        for r0 in range(0, br, nt):
            rows = [r0 + t for t in warp if r0 + t < br]
            insts += [[(r, c) for r in rows] for c in range(head_dim)] if rows else []
    return head_dim, insts


def transposed_store(schedule, head_dim):
    """kernels/matmul.py make_tn (and backward.py's dkdv): thread (ty, tx) = (tid // TX, tid % TX) stores
    rows tx + bb·TX and columns ty + c·TY of its Bc×d output tile."""
    tx_n, ty_n, tn = schedule.threads_kv, schedule.threads_q, schedule.thread_kv
    dcq = -(-head_dim // ty_n)
    insts = []
    for warp in _warps(schedule.threads):
        lanes = [divmod(t, tx_n) for t in warp]  # (ty, tx)
        for bb in range(tn):
            for c in range(dcq):
                inst = [(tx + bb * tx_n, ty + c * ty_n) for ty, tx in lanes
                        if tx + bb * tx_n < schedule.block_kv and ty + c * ty_n < head_dim]
                if inst:
                    insts.append(inst)
    return head_dim, insts


def one_thread_per_row(schedule, head_dim):
    """kernels/standard.py softmax: thread 0 alone writes the row's L (one block per row)."""
    return 1, [[(0, 0)]]


def _vec(n):
    """The widest vector (4, 2 or 1 floats) that tiles n, as kernels/flash2_fast.py groups a thread's
    rows and O columns."""
    return 4 if n % 4 == 0 else 2 if n % 2 == 0 else 1


def _fma_lanes(schedule):
    """Per warp, each lane's (ty, tx) in kernels/flash2_fast.py's lane layout."""
    paired, _ = flash2_fast.lane_layout(schedule)
    tx_n = schedule.threads_kv
    return [[flash2_fast.thread_coords(t, tx_n, paired) for t in warp] for warp in _warps(schedule.threads)]


def _fma_row(schedule, ty, a):
    vm = _vec(schedule.thread_q)
    return vm * ty + (a // vm) * vm * schedule.threads_q + a % vm


def fma_o_store(schedule, head_dim):
    """kernels/flash2_fast.py: O[row(ty, a), VO·tx + (c // VO)·VO·TX + c % VO] = ..., a scalar store per (a, c)."""
    tx_n, tm = schedule.threads_kv, schedule.thread_q
    do = head_dim // tx_n
    vo = _vec(do)
    insts = []
    for lanes in _fma_lanes(schedule):
        for a in range(tm):
            for c in range(do):
                col0 = (c // vo) * vo * tx_n + c % vo
                insts.append([(_fma_row(schedule, ty, a), vo * tx + col0) for ty, tx in lanes])
    return head_dim, insts


def fma_l_store(schedule, head_dim):
    """kernels/flash2_fast.py: the lanes with tx = 0 store L of their rows, one store per row a."""
    insts = []
    for lanes in _fma_lanes(schedule):
        for a in range(schedule.thread_q):
            inst = [(_fma_row(schedule, ty, a), 0) for ty, tx in lanes if tx == 0]
            if inst:
                insts.append(inst)
    return 1, insts


def _tc_lanes(schedule):
    """Per warp, each lane's (tid, g, t) in kernels/flash2_tc.py: row g (and g + 8) of the warp's 16, t = lane % 4."""
    return [[(tid, (tid % WARP) // 4, tid % 4) for tid in warp] for warp in _warps(schedule.threads)]


def tc_q_load(schedule, head_dim):
    """kernels/flash2_tc.py: Q[16w + g (+ 8), 8kk + t (+ 4)]: four scalar loads per 8 columns of d."""
    insts = []
    for lanes in _tc_lanes(schedule):
        for kk in range(head_dim // 8):
            for hi, plus in ((0, 0), (0, 4), (8, 0), (8, 4)):  # x0, x2, x1, x3 in the source's order
                insts.append([(16 * (tid // WARP) + g + hi, 8 * kk + t + plus) for tid, g, t in lanes])
    return head_dim, insts


def _tc_items(schedule, head_dim):
    """kernels/flash2_tc.py's K/V items: per item index it, each lane's (e4 = tid >> 2 + it·NT/4, t = tid & 3)."""
    nt = schedule.threads
    items = schedule.block_kv * head_dim // 2
    for it in range(-(-items // nt)):
        for warp in _warps(nt):
            yield [((tid >> 2) + it * (nt // 4), tid & 3) for tid in warp if tid + it * nt < items]


def tc_k_load(schedule, head_dim):
    """kernels/flash2_tc.py fetch_k: item (key, c) reads K[key, 8c + t] and K[key, 8c + t + 4]."""
    bc = schedule.block_kv
    insts = []
    for lanes in _tc_items(schedule, head_dim):
        for plus in (0, 4):
            insts.append([(e4 % bc, 8 * (e4 // bc) + t + plus) for e4, t in lanes])
    return head_dim, insts


def tc_v_load(schedule, head_dim):
    """kernels/flash2_tc.py fetch_v: item (col, c) reads V[8c + 2t, col] and V[8c + 2t + 1, col]."""
    insts = []
    for lanes in _tc_items(schedule, head_dim):
        for plus in (0, 1):
            insts.append([(8 * (e4 // head_dim) + 2 * t + plus, e4 % head_dim) for e4, t in lanes])
    return head_dim, insts


def _fragment_store(threads, head_dim):
    """A warp per 16 rows stores its m16n8 accumulators: row 16w + g + 8i, columns 8kk + 2t and
    8kk + 2t + 1, a scalar store each."""
    insts = []
    for warp in _warps(threads):
        lanes = [(tid, (tid % WARP) // 4, tid % 4) for tid in warp]
        for i in range(2):
            for kk in range(head_dim // 8):
                for plus in (0, 1):
                    insts.append([(16 * (tid // WARP) + g + 8 * i, 8 * kk + 2 * t + plus) for tid, g, t in lanes])
    return head_dim, insts


def tc_o_store(schedule, head_dim):
    """kernels/flash2_tc.py: O[16w + g + 8i, 8kk + 2t] and [..., 8kk + 2t + 1], a scalar store each."""
    return _fragment_store(schedule.threads, head_dim)


def tc_l_store(schedule, head_dim):
    """kernels/flash2_tc.py: the lanes with t = 0 store L of rows 16w + g and 16w + g + 8."""
    insts = []
    for lanes in _tc_lanes(schedule):
        for i in range(2):
            insts.append([(16 * (tid // WARP) + g + 8 * i, 0) for tid, g, t in lanes if t == 0])
    return 1, insts


def _words(insts):
    """Instructions of 32-bit words (row, word) as the two 16-bit elements each word holds."""
    return [[(r, 2 * w + e) for r, w in inst for e in (0, 1)] for inst in insts]


def _tc16_rows(schedule):
    """Per warp, each lane's (tid, row offsets): kernels/flash2_tc16.py's rows of lane (g, t) of warp w,
    8·thread_q·w + g + 16·mt + 8·i (mt < thread_q / 2, i < 2), and its t."""
    rows = 8 * schedule.thread_q
    return [[(tid, [rows * (tid // WARP) + g + hi for hi in range(0, rows, 8)], t) for tid, g, t in lanes]
            for lanes in _tc_lanes(schedule)]


def _copied_rows(rows, head_dim, threads):
    """kernels/flash2_tc16.py's cp.async copy of ``rows`` rows of 16-bit elements: chunk e of 16 bytes
    (four words) by thread e mod ``threads``, consecutive chunks along a row, then the next row."""
    words = head_dim // 2
    chunks = rows * words // 4
    insts = []
    for it in range(-(-chunks // threads)):
        for warp in _warps(threads):
            inst = [(e // (words // 4), 4 * (e % (words // 4)) + c) for e in (tid + it * threads for tid in warp)
                    if e < chunks for c in range(4)]
            if inst:
                insts.append(inst)
    return head_dim, _words(insts)


def tc16_copied(schedule, head_dim=None, itemsize=None):
    """Whether kernels/flash2_tc16.py copies Q_i by cp.async: with a warp per 32 rows."""
    return flash2_tc16.warp_rows(schedule) == 32


def always_copied(schedule, head_dim=None, itemsize=None):
    """An access a build copies by cp.async under every schedule (kernels/flash2_tc16.py's K_j, V_j)."""
    return True


def tc_backward_copied(phase):
    """copied(schedule, head_dim, itemsize): whether kernels/backward_tc.py's ``phase`` copies its tiles by
    cp.async: with two stages of streamed tiles (``backward_tc.stages``: fp32 inputs, 4-byte elements,
    and no mask; :func:`accesses` lists none under a mask)."""

    def copied(schedule, head_dim, itemsize):
        return itemsize == 4 and backward_tc.stages(schedule, head_dim, phase, np.float32) == 2

    return copied


def tc_backward_copy(tensor, phase):
    """kernels/backward_tc.py's ``phase`` copying ``tensor``'s block (a resident or a streamed one) by
    cp.async or loading it: consecutive threads on consecutive elements (16 bytes a thread in a copy)
    along whole rows, whole sectors either way."""
    resident = (tensor in "KV") == (phase == "dkdv")

    def pattern(schedule, head_dim):
        rows = (schedule.block_kv if phase == "dkdv" else schedule.block_q) if resident else (
            schedule.block_q if phase == "dkdv" else schedule.block_kv)
        threads = backward_tc.threads(schedule, phase)
        insts = []
        for it in range(-(-rows * head_dim // threads)):
            for warp in _warps(threads):
                inst = [divmod(e, head_dim) for e in (tid + it * threads for tid in warp) if e < rows * head_dim]
                if inst:
                    insts.append(inst)
        return head_dim, insts

    return pattern


def tc16_q_load(schedule, head_dim):
    """kernels/flash2_tc16.py, a warp per 16 rows: Q[16w + g (+ 8), word 8kk + t (+ 4)], four word
    loads per 16 columns of d; a warp per 32 rows: Q_i copied whole by cp.async (16 bytes a lane,
    consecutive lanes consecutive 16 bytes of a row, as K_j and V_j)."""
    if tc16_copied(schedule):
        return _copied_rows(schedule.block_q, head_dim, schedule.threads)
    insts = []
    for lanes in _tc_lanes(schedule):
        for kk in range(head_dim // 16):
            for hi, plus in ((0, 0), (0, 4), (8, 0), (8, 4)):
                insts.append([(16 * (tid // WARP) + g + hi, 8 * kk + t + plus) for tid, g, t in lanes])
    return head_dim, _words(insts)


def tc16_kv_copy(schedule, head_dim):
    """kernels/flash2_tc16.py: K_j and V_j copied whole by cp.async, Bc rows."""
    return _copied_rows(schedule.block_kv, head_dim, schedule.threads)


def tc16_o_store(schedule, head_dim):
    """kernels/flash2_tc16.py: O[8·thread_q·w + g + 16mt + 8i, word 4nn + t], two 16-bit columns per word."""
    insts = []
    for lanes in _tc16_rows(schedule):
        for x in range(schedule.thread_q):
            for nn in range(head_dim // 8):
                insts.append([(rows[x], 4 * nn + t) for tid, rows, t in lanes])
    return head_dim, _words(insts)


@dataclasses.dataclass(frozen=True)
class Access:
    """One access of a launch that ncu does not count as its bytes: a tensor's loads ("ld") or
    stores ("st"), the pattern that lays out its lanes, what the pattern is, in words,
    ``copied(schedule)``, whether it is a cp.async copy (counted at :data:`LDGSTS_COUNTED` of its
    sectors; None: never), and ``every_row``: whether its launch moves every row of the tensor once
    whatever tiles it visits, so that its bytes do not depend on a mask (False: it lies in the
    tile loop, or is not known not to)."""

    tensor: str
    op: str
    pattern: object
    what: str
    copied: object = None
    every_row: bool = False

    def counted(self, schedule, head_dim, itemsize):
        """ncu's count over the access's bytes: its sectors' bytes over its bytes, × :data:`LDGSTS_COUNTED`
        for a cp.async copy."""
        f = factor(self.pattern, schedule, head_dim, itemsize)
        return f * LDGSTS_COUNTED if self.copied is not None and self.copied(schedule, head_dim, itemsize) else f


_D = ("d", (Access("O", "ld", backward_d_rows, "one thread per row", every_row=True),
            Access("dO", "ld", backward_d_rows, "one thread per row", every_row=True)))
_TN = "rows tx + bb·TX, columns ty + c·TY per thread"
#: The counting kernels' accesses that are not whole sectors: forward by kind, backward by the
#: kind's backward trait; phase -> accesses.
PLAIN_FORWARD = {"standard": {"softmax": (Access("L", "st", one_thread_per_row, "thread 0 writes the row's L",
                                                 every_row=True),)}}
PLAIN_BACKWARD = {
    "flash": dict([_D, ("dkdv", (Access("dK", "st", transposed_store, _TN, every_row=True),
                                 Access("dV", "st", transposed_store, _TN, every_row=True)))]),
    "standard": dict([_D, ("dv", (Access("dV", "st", transposed_store, _TN, every_row=True),)),
                      ("dk", (Access("dK", "st", transposed_store, _TN, every_row=True),))]),
}
#: The fast builds' (kernels/registry.py's ``fast`` entries, by module), phase -> accesses.
FAST = {
    flash2_fast: {"main": (Access("O", "st", fma_o_store, "a thread's VO consecutive columns as VO scalar stores"),
                           Access("L", "st", fma_l_store, "the lanes with tx = 0"))},
    flash2_tc: {"main": (Access("Q", "ld", tc_q_load, "scalar pairs 16 bytes apart, 4 lanes per row"),
                         Access("K", "ld", tc_k_load, "scalar pairs 16 bytes apart, 4 lanes per row"),
                         Access("V", "ld", tc_v_load, "8 columns × 4 rows per instruction"),
                         Access("O", "st", tc_o_store, "scalar pairs 4 bytes apart, 4 lanes per row"),
                         Access("L", "st", tc_l_store, "the lanes with t = 0"))},
    flash2_tc16: {"main": (Access("Q", "ld", tc16_q_load, "words 16 bytes a row, 4 lanes per row; or cp.async",
                                  tc16_copied),
                           Access("K", "ld", tc16_kv_copy, "cp.async, 16 bytes a lane", always_copied),
                           Access("V", "ld", tc16_kv_copy, "cp.async, 16 bytes a lane", always_copied),
                           Access("O", "st", tc16_o_store, "words 16 bytes a row, 4 lanes per row"),
                           Access("L", "st", tc_l_store, "the lanes with t = 0"))},
    # with two stages every tile is copied by cp.async (the resident ones once a block: every row once)
    backward_tc: {phase: tuple(Access(x, "ld", tc_backward_copy(x, phase), "cp.async with two stages, 16 bytes a lane",
                                      tc_backward_copied(phase), every_row=(x in "KV") == (phase == "dkdv"))
                               for x in ("Q", "K", "V", "dO")) for phase in ("dkdv", "dq")},
}
#: The fast builds that copy nothing by cp.async under a mask (one stage: kernels/backward_tc.py's ``stages``).
UNCOPIED_UNDER_A_MASK = (backward_tc,)


def accesses(kind, backward, module=None, masked=False):
    """phase -> the :class:`Access` tuple of the kernels a run executes: the counting kernels' (``module``
    None: the plain build) or a fast build's (its module, ``kernels.builds.Build.module``), under a mask
    where ``masked``. A build not listed here has none: every access is taken as whole sectors."""
    if module is not None:
        if masked and module in UNCOPIED_UNDER_A_MASK:
            return {}
        return FAST.get(module, {})
    if backward:
        return PLAIN_BACKWARD.get(kinds.get(kind).backward, {})
    return PLAIN_FORWARD.get(kind, {})


def l1_bytes(per_launch, phase_accesses, schedule, head_dim, dtype):
    """The global bytes ncu should count at L1, per launch: the simulator's bytes times each access's factor.

    Args:
        per_launch: ``simulator.l2.simulate_dram(...).per_launch`` (each launch's per-tensor requested bytes).
        phase_accesses: :func:`accesses`' phase -> accesses.

    Returns:
        list, per launch, of dicts: phase, ld_bytes, st_bytes (expected at L1), hbm_ld_bytes,
        hbm_st_bytes (the simulator's), and factors {"<tensor> <ld|st>": factor} of the accesses
        that are not whole sectors.
    """
    sizes = itemsizes(dtype)
    out = []
    for launch in per_launch:
        row = {"phase": launch["phase"], "ld_bytes": 0.0, "st_bytes": 0.0, "hbm_ld_bytes": 0, "hbm_st_bytes": 0,
               "factors": {}}
        by_tensor = {(a.tensor, a.op): a for a in phase_accesses.get(launch["phase"], ())}
        for tensor, fields in launch["per_tensor"].items():
            for op, field in (("ld", "requested_read_bytes"), ("st", "requested_write_bytes")):
                n = fields.get(field, 0)
                if not n:
                    continue
                access = by_tensor.get((tensor, op))
                f = 1.0 if access is None else access.counted(schedule, head_dim, sizes[tensor])
                if f != 1.0:
                    row["factors"][f"{tensor} {op}"] = f
                row[f"{op}_bytes"] += n * f
                row[f"hbm_{op}_bytes"] += n
        out.append(row)
    return out


def stream_bytes(schedule, problem, backward=False):
    """The bytes of the request stream (``simulator.streams.tile_requests``), per launch and tensor, as
    ``simulator.l2.simulate_dram(...).per_launch`` lists them for :func:`l1_bytes` (phase, and per_tensor:
    requested_read_bytes, requested_write_bytes), without running the cache model."""
    out = []
    for launch in streams.tile_requests(schedule, problem, backward):
        req = launch.requests
        nbytes = streams.request_bytes(req)
        tensor, write = req[:, 6], req[:, 7]
        per_tensor = {}
        for t, w in sorted(set(zip(tensor.tolist(), write.tolist()))):
            field = "requested_write_bytes" if w else "requested_read_bytes"
            per_tensor.setdefault(streams.TENSORS[t], {})[field] = int(nbytes[(tensor == t) & (write == w)].sum())
        out.append({"phase": launch.phase, "per_tensor": per_tensor})
    return out


def masked_l1_bytes(l1, phase_accesses, hbm_ld_bytes, hbm_st_bytes):
    """The global bytes ncu should count at L1 under a mask: the simulator's bytes under the mask plus
    the sectors beyond their bytes of the accesses that are not whole sectors, from the mask-free
    stream (module docstring).

    Args:
        l1: :func:`l1_bytes` of the mask-free request stream (:func:`stream_bytes`).
        phase_accesses: :func:`accesses`' phase -> accesses.
        hbm_ld_bytes, hbm_st_bytes: the simulator's HBM read and write bytes under the mask.

    Returns:
        (ld_bytes, st_bytes, in_loop): ``in_loop`` lists the accesses ("phase: tensor op") that are not
        whole sectors and lie in the tile loop; when there are any, ld_bytes and st_bytes are None
        (no sector model under a mask).
    """
    every_row = {(phase, f"{a.tensor} {a.op}"): a.every_row for phase, acc in phase_accesses.items() for a in acc}
    in_loop = [f"{x['phase']}: {key}" for x in l1 for key in x["factors"] if not every_row[x["phase"], key]]
    if in_loop:
        return None, None, in_loop
    return (hbm_ld_bytes + sum(x["ld_bytes"] - x["hbm_ld_bytes"] for x in l1),
            hbm_st_bytes + sum(x["st_bytes"] - x["hbm_st_bytes"] for x in l1), [])


#: The tensors whose tiles move entry by entry where the mask allows, not row by row (standard's S, P, dS).
ENTRYWISE = ("S", "P", "dS")


def whole_sector_caveats(schedule, problem, masked_tensors=()):
    """Why accesses taken as whole sectors may not be, for this schedule and problem (empty when they are).

    Tile loads have consecutive threads on consecutive elements, register tiles TX threads along a
    row: whole sectors when every tile starts on a sector and each lane group spans whole sectors.
    ``masked_tensors``: under a mask, the tensors that move through HBM (the mask's partial tiles of
    S, P and dS move their allowed entries only).
    """
    it = problem.dtype.itemsize
    out = []
    if (schedule.threads_kv * it) % SECTOR or (schedule.threads_kv * 4) % SECTOR:
        out.append(f"TX={schedule.threads_kv}: a register tile's row segments are under whole sectors")
    if (problem.head_dim * it) % SECTOR:
        out.append(f"d·itemsize={problem.head_dim * it} bytes: rows of Q, K, V, O end mid-sector")
    if (schedule.block_kv * 4) % SECTOR or (problem.n_kv * 4) % SECTOR:
        out.append("Bc·4 or Nk·4 not a multiple of 32: S, P, dS tile rows end mid-sector")
    if problem.n_q % schedule.block_q or problem.n_kv % schedule.block_kv:
        out.append("ragged last blocks")
    if problem.causal:
        out.append("causal: the diagonal tiles' rows end mid-sector")
    entrywise = [t for t in ENTRYWISE if t in masked_tensors]
    if entrywise:
        out.append(f"mask: the partial tiles' rows of {', '.join(entrywise)} move their allowed entries only")
    return out


def describe(per_launch_l1):
    """One line naming every access that is not whole sectors: "phase: tensor op ×factor, ..."; "" if none."""
    parts = []
    for launch in per_launch_l1:
        if launch["factors"]:
            parts.append(f"{launch['phase']}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in launch["factors"].items()))
    return "; ".join(parts)
