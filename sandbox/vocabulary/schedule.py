"""The block schedule: one declaration that the kernels are specialized from and the simulator counts.

A ``Schedule`` is the mapping of attention onto the memory hierarchy, level by level:

- HBM → SRAM: Q is cut into Tr blocks of Br rows, K and V into Tc blocks of Bc rows;
  ``kind`` fixes the loop order and what goes back to HBM between tiles.
- SRAM → registers: a thread block of ``threads_q × threads_kv`` threads covers a Br×Bc tile
  of S; each thread owns a ``thread_q × thread_kv`` register tile of it. Thread (ty, tx) owns
  the rows ``ty + a·threads_q`` (a < thread_q) and columns ``tx + b·threads_kv``: rows of S and
  O, columns of S, and (strided the same way) columns of O.

The SRAM footprint is counted buffer by buffer by :func:`sram_buffers`, which the kernels
also use to lay out their dynamic shared memory: one formula for both.
"""

import dataclasses
import inspect
import math

import numpy as np

from sandbox.vocabulary import kinds
from sandbox.vocabulary.dtypes import as_dtype
from sandbox.vocabulary.footprints import BACKWARD_SRAM, sram_offsets
from sandbox.vocabulary.gpus import KNOWN_GPUS
from sandbox.vocabulary.kinds import MATHS

#: The tensor-core build's tiles (kernels/flash2_tc.py): a warp per 16 rows of Q, mma fragments
#: of 8 columns of S, and each thread a thread_q × Bc/4 register tile of S.
TF32X3_BLOCK_Q_MULTIPLE = 16
TF32X3_BLOCK_KV_MULTIPLE = 8
TF32X3_THREAD_Q = 2
#: The 16-bit tensor-core build's tiles (kernels/flash2_tc16.py): a warp per 16 rows of Q (thread
#: tile 2 × Bc/4, as above) or per 32 rows (4 × Bc/4), Br a multiple of a warp's rows, and Bc a
#: multiple of 16, the k16 step of the P·V product (16 keys).
F16_BLOCK_Q_MULTIPLE = 16
F16_BLOCK_KV_MULTIPLE = 16
F16_THREAD_Q = (2, 4)
#: (Br multiple, Bc multiple) of each tensor-core arithmetic at its default thread tile, 2 × Bc/4.
TENSOR_CORE_TILES = {"tf32x3": (TF32X3_BLOCK_Q_MULTIPLE, TF32X3_BLOCK_KV_MULTIPLE),
                     "f16": (F16_BLOCK_Q_MULTIPLE, F16_BLOCK_KV_MULTIPLE)}
#: The thread_q each tensor-core arithmetic takes (a warp per 8·thread_q rows of Q).
TENSOR_CORE_THREAD_Q = {"tf32x3": (TF32X3_THREAD_Q,), "f16": F16_THREAD_Q}

#: Default SRAM capacity M: the opt-in shared memory per thread block of the Hopper GPUs in
#: sandbox/vocabulary/gpus.py (227 KiB on the H100 and the H200 alike).
DEFAULT_SRAM_BYTES = KNOWN_GPUS["h200"].smem_per_block_optin

#: Largest head dimension the kernels are built for.
MAX_HEAD_DIM = 256

#: Threads per block the default thread layout aims at (at most).
DEFAULT_MAX_THREADS = 256
#: Hardware limit on threads per block.
MAX_THREADS = 1024
#: The largest register tile edge the default layout picks.
_THREAD_TILE_CHOICES = (1, 2, 4, 8, 16)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _registered_kind(kind):
    """The registered kind called ``kind``; TypeError for a non-str, ValueError naming the known kinds."""
    if not isinstance(kind, str):
        raise TypeError(f"kind: expected a kind name, one of {kinds.names()}, got {kind!r} ({type(kind).__name__})")
    return kinds.get(kind)


def default_thread_tile(block_q, block_kv, max_threads=DEFAULT_MAX_THREADS):
    """The smallest square register tile t×t with ⌈Br/t⌉·⌈Bc/t⌉ ≤ ``max_threads`` threads."""
    for t in _THREAD_TILE_CHOICES:
        if math.ceil(block_q / t) * math.ceil(block_kv / t) <= max_threads:
            return t, t
    t = _THREAD_TILE_CHOICES[-1]
    return t, t


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How one attention call is tiled; immutable, hashable, validated.

    Args:
        kind: a registered kind (``sandbox.vocabulary.kinds.names()``).
        block_q: Br, rows of a Q block.
        block_kv: Bc, rows of a K/V block.
        thread_q, thread_kv: each thread's register tile of S (rows, columns); default: the
            smallest square tile that keeps the block at ≤ 256 threads (with ``math="tf32x3"``
            or ``"f16"``: 2 × Bc/4, a warp per 16 rows; ``"f16"`` also takes 4 × Bc/4, a warp
            per 32 rows).
        sram_bytes: M, the SRAM capacity the schedule assumes (default: 227 KiB, the H100's and
            H200's opt-in shared memory per block).
        kv_splits: how many thread blocks share one Q block's K/V range (kinds registered with
            ``kv_splits=True``, i.e. "splitkv"; 1 for the others).
        math: the fast build's arithmetic (:data:`MATHS`): "fma", fp32 FMAs on the CUDA cores;
            "tf32x3", flash2's tensor-core build (kernels/flash2_tc.py): each fp32 product as
            three TF32 tensor-core products, the arithmetic of PyTorch SDPA's memory-efficient
            fp32 kernel; "f16", flash2's 16-bit tensor-core build for fp16/bf16 inputs
            (kernels/flash2_tc16.py): one m16n8k16 product with fp32 accumulation, as in
            FlashAttention-2 (other dtypes take another build). Counting runs (``count_io``) and
            masks take the counting build, whose arithmetic is FMA either way; the HBM traffic is
            the same.

    Raises:
        ValueError: unknown kind, non-positive sizes, a thread block over 1024 threads,
            ``math="tf32x3"`` with blocks or a thread tile the tensor cores cannot take (Br a
            multiple of 16, Bc of 8, tile 2 × Bc/4), likewise ``math="f16"`` (tile 2 × Bc/4 or
            4 × Bc/4, Br a multiple of 8·thread_q and of 16, Bc of 16), or tiles whose head_dim-independent part
            already exceeds ``sram_bytes``.

    Example:
        >>> s = Schedule("flash2", block_q=16, block_kv=16)
        >>> s.threads, s.thread_q
        (64, 2)
    """

    kind: str
    block_q: int
    block_kv: int
    thread_q: int = None
    thread_kv: int = None
    sram_bytes: int = DEFAULT_SRAM_BYTES
    kv_splits: int = 1
    math: str = "fma"

    def __post_init__(self):
        kind = _registered_kind(self.kind)
        if not isinstance(self.math, str) or self.math not in MATHS:
            raise ValueError(f"math: expected one of {MATHS}, got {self.math!r}")
        if self.math not in kind.maths:
            offer = ", ".join(f"{k} ({'/'.join(kinds.get(k).maths)})" for k in kinds.names() if self.math in kinds.get(k).maths)
            raise ValueError(f"math={self.math!r}: kind {self.kind!r} has no build with that arithmetic "
                             f"(kinds that have one: {offer})")
        object.__setattr__(self, "kv_splits", _positive_int(self.kv_splits, "kv_splits"))
        if self.kv_splits != 1 and not kind.kv_splits:
            with_splits = ", ".join(k for k in kinds.names() if kinds.get(k).kv_splits)
            raise ValueError(f"kv_splits={self.kv_splits}: kind {self.kind!r} does not split K/V "
                             f"(kinds that do: {with_splits})")
        for name in ("block_q", "block_kv", "sram_bytes"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), name))
        tq, tkv = default_thread_tile(self.block_q, self.block_kv)
        if self.math in TENSOR_CORE_TILES:  # the one tile the tensor cores' fragments take
            tq, tkv = TF32X3_THREAD_Q, max(1, self.block_kv // 4)
        if self.thread_q is None:
            object.__setattr__(self, "thread_q", min(tq, self.block_q))
        if self.thread_kv is None:
            object.__setattr__(self, "thread_kv", min(tkv, self.block_kv))
        for name, block in (("thread_q", "block_q"), ("thread_kv", "block_kv")):
            value = _positive_int(getattr(self, name), name)
            object.__setattr__(self, name, value)
            if value > getattr(self, block):
                raise ValueError(f"{name}={value} is larger than its block ({block}={getattr(self, block)})")
        if self.math in TENSOR_CORE_TILES:
            self._check_tensor_core_tiles()
        if self.threads > MAX_THREADS:
            raise ValueError(
                f"thread layout {self.threads_q}x{self.threads_kv} = {self.threads} threads exceeds {MAX_THREADS} "
                f"per block (block_q={self.block_q}, block_kv={self.block_kv}); raise thread_q/thread_kv"
            )
        # The S/P tile and row statistics do not depend on head_dim: check them now.
        need = self.sram_footprint(head_dim=0, dtype="float16")
        if need > self.sram_bytes:
            raise ValueError(
                f"schedule needs {need} bytes of SRAM before any Q/K/V tile "
                f"(S tile block_q x block_kv = {self.block_q}x{self.block_kv} fp32) but sram_bytes={self.sram_bytes}"
            )

    def _check_tensor_core_tiles(self):
        """math="tf32x3" or "f16": a warp per 16 rows of Q (f16: or 32), mma fragments of 8 columns
        (Bc a multiple of :data:`TENSOR_CORE_TILES`'s), thread tile 2 × Bc/4 (f16: or 4 × Bc/4)."""
        br, bc = self.block_q, self.block_kv
        q_multiple, kv_multiple = TENSOR_CORE_TILES[self.math]
        takes = TENSOR_CORE_THREAD_Q[self.math]
        if self.thread_q not in takes or self.thread_kv != bc // 4:
            tiles = " or ".join(f"{tq}x{bc // 4}" for tq in takes)
            qs = " or ".join(str(tq) for tq in takes)
            raise ValueError(
                f"math={self.math!r} needs the thread tile {tiles} (thread_q={qs}, "
                f"thread_kv=block_kv/4), got thread_q={self.thread_q}, thread_kv={self.thread_kv}; "
                f"leave them unset to get it"
            )
        q_multiple = max(q_multiple, 8 * self.thread_q)  # a warp per 8·thread_q rows
        if br % q_multiple or bc % kv_multiple:
            raise ValueError(
                f"math={self.math!r} needs block_q a multiple of {q_multiple} and block_kv a multiple "
                f"of {kv_multiple}, got block_q={br}, block_kv={bc}; e.g. block_q=64, block_kv=32"
            )

    # -- thread layout --------------------------------------------------------------------
    @property
    def threads_q(self):
        """Threads along Br: ⌈Br / thread_q⌉."""
        return -(-self.block_q // self.thread_q)

    @property
    def threads_kv(self):
        """Threads along Bc: ⌈Bc / thread_kv⌉."""
        return -(-self.block_kv // self.thread_kv)

    @property
    def threads(self):
        """Threads per thread block."""
        return self.threads_q * self.threads_kv

    # -- SRAM -----------------------------------------------------------------------------
    def sram_footprint(self, head_dim, dtype, backward=False, head_dim_v=None):
        """Bytes of shared memory the largest kernel of this schedule allocates (with alignment);
        ``head_dim_v``: V's head dim d_v (None: ``head_dim``)."""
        bufs = sram_buffers(self, head_dim, dtype, backward=backward, head_dim_v=head_dim_v)
        return max(sram_offsets(b)[1] for b in bufs.values())

    def check_fits(self, head_dim, dtype, backward=False, head_dim_v=None):
        """Raise ValueError if the tiles for ``head_dim`` (and V's ``head_dim_v``, None: the same) and
        ``dtype`` overflow ``sram_bytes``."""
        if head_dim > MAX_HEAD_DIM:
            raise ValueError(f"head_dim={head_dim} exceeds the largest supported head_dim ({MAX_HEAD_DIM})")
        if head_dim_v is not None and head_dim_v > MAX_HEAD_DIM:
            raise ValueError(f"head_dim_v={head_dim_v} exceeds the largest supported head_dim ({MAX_HEAD_DIM})")
        need = self.sram_footprint(head_dim, dtype, backward=backward, head_dim_v=head_dim_v)
        dims = f"head_dim={head_dim}" + ("" if head_dim_v in (None, head_dim) else f", head_dim_v={head_dim_v}")
        if need > self.sram_bytes:
            raise ValueError(
                f"schedule {self.kind} Br={self.block_q} Bc={self.block_kv} needs {need} bytes of SRAM "
                f"{'for the backward pass ' if backward else ''}"
                f"at {dims}, {np.dtype(dtype).name}, but its capacity is "
                f"sram_bytes={self.sram_bytes}; use smaller blocks or Schedule.from_sram"
            )

    @classmethod
    def from_sram(cls, sram_bytes, *, head_dim, kind="flash2", dtype="float32", backward=False, head_dim_v=None,
                  **kwargs):
        """The paper's block rule for SRAM of ``sram_bytes`` bytes.

        Bc = ⌈M/4d⌉, Br = min(⌈M/4d⌉, d) with M = ``sram_bytes // itemsize(dtype)`` elements. With V's
        own head dim d_v (``head_dim_v``; None: d) the rule budgets Q and K tiles of d columns and
        V and O tiles of d_v: Bc = ⌈M/(2d + 2d_v)⌉, the same rule when d_v = d.
        The rule is asymptotic: it budgets Q, K, V and O tiles of d columns and nothing else,
        while our kernels also keep the Br×Bc fp32 S/P tile and fp32 row statistics in SRAM
        (:func:`sram_buffers`). Where the rule's blocks overflow ``sram_bytes``, Bc is lowered
        (and Br = min(Bc, d) with it) until the footprint fits; with ``backward``, until the
        backward's footprint fits too, so that one schedule runs both passes in ``sram_bytes``.

        Raises:
            ValueError: an unknown ``kind``, ``backward`` for a kind without a backward pass, or not
                even Br = Bc = 1 fits.
            TypeError: a ``sram_bytes`` or ``head_dim`` that is not an int, an unsupported ``dtype``.
        """
        _registered_kind(kind)  # an unknown kind is named as such, not taken for a lack of SRAM
        dt = as_dtype(dtype)
        head_dim = _positive_int(head_dim, "head_dim")
        dv = head_dim if head_dim_v is None else _positive_int(head_dim_v, "head_dim_v")
        m_elems = _positive_int(sram_bytes, "sram_bytes") // dt.itemsize
        bc = max(1, -(-m_elems // (2 * head_dim + 2 * dv)))
        passes = (False, True) if backward else (False,)
        while bc >= 1:
            br = min(bc, head_dim)
            try:
                sched = cls(kind, block_q=br, block_kv=bc, sram_bytes=sram_bytes, **kwargs)
            except ValueError:
                sched = None
            if sched is not None and all(sched.sram_footprint(head_dim, dt, backward=b, head_dim_v=head_dim_v)
                                         <= sram_bytes for b in passes):
                return sched
            bc = bc - max(1, bc // 16)
        raise ValueError(
            f"sram_bytes={sram_bytes} cannot hold even 1x1 tiles at head_dim={head_dim}, {dt.name}"
        )

    def describe(self):
        """One line naming the schedule."""
        return (
            f"{self.kind} Br={self.block_q} Bc={self.block_kv} threads={self.threads_q}x{self.threads_kv} "
            f"tile={self.thread_q}x{self.thread_kv} M={self.sram_bytes}"
            + (f" splits={self.kv_splits}" if self.kv_splits != 1 else "")
            + (f" math={self.math}" if self.math != "fma" else "")
        )


def sram_buffers(schedule, head_dim, dtype, backward=False, head_dim_v=None):
    """The shared-memory buffers of each kernel of ``schedule``, in allocation order.

    ``head_dim_v``: V's head dim d_v (None: ``head_dim``); passed on to the footprint only where it
    differs from ``head_dim``, so a kind's footprint that takes no d_v keeps working for d_v = d.

    Q/K/V tiles are kept in the input dtype; S/P and row statistics in fp32. O lives in
    registers (each thread's tile of the Br×d output), never in SRAM.

    Returns:
        dict phase name → tuple of :class:`~sandbox.vocabulary.footprints.Buffer`: the kind's own (its ``sram`` trait,
        :mod:`sandbox.vocabulary.kinds`), or with ``backward`` its backward's
        (:data:`sandbox.vocabulary.footprints.BACKWARD_SRAM`).

    Raises:
        ValueError: ``backward`` for a kind that has no backward pass; a ``head_dim_v`` other than
            ``head_dim`` for a kind whose footprint takes none.
    """
    kind = kinds.get(schedule.kind)
    extra = {} if head_dim_v is None or head_dim_v == head_dim else {"head_dim_v": head_dim_v}
    if not backward:
        if extra and "head_dim_v" not in inspect.signature(kind.sram).parameters:
            raise ValueError(f"head_dim_v={head_dim_v}: kind {schedule.kind!r} takes no V head dim of its own "
                             f"(its sram footprint has no head_dim_v argument); pass v with head_dim={head_dim} "
                             f"columns, or give the kind's footprint, kernels and counts a head_dim_v")
        return kind.sram(schedule, head_dim, dtype, **extra)
    if kind.backward is None:
        raise ValueError(f"schedule kind {schedule.kind!r} has no backward pass (kinds with one: "
                         f"{', '.join(k for k in kinds.names() if kinds.get(k).backward)})")
    return BACKWARD_SRAM[kind.backward](schedule, head_dim, dtype, **extra)


#: The schedule ``attention`` and ``simulate`` use when none is given.
DEFAULT_SCHEDULE = Schedule("flash2", block_q=64, block_kv=64)
