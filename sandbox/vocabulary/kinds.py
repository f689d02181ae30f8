"""Schedule kinds' traits: what the vocabulary knows of a kind, declared once.

A kind is a loop order over tiles (which blocks stay in SRAM, what goes back to HBM when). Each
layer declares its part of a kind once: its traits here (name, summary, shared-memory footprint,
what it takes); its kernels in ``kernels/registry.py``; its counts and L2 request stream in
``simulator/table.py``. ``sandbox.register_kind`` (``sandbox/lab/kinds.py``) registers all three
in one call, and ``docs/tutorial.md`` adds a kind that way. Nothing here imports an executor.
"""

import dataclasses

from sandbox.vocabulary.footprints import BACKWARD_SRAM, flash1_sram, flash2_sram, splitkv_sram, standard_sram

#: The arithmetic a kind's builds may offer (``Schedule.math``): fp32 FMAs, three TF32
#: tensor-core products per fp32 product (kernels/mma.py), or, for fp16/bf16 inputs, one 16-bit
#: tensor-core product with fp32 accumulation (kernels/mma16.py).
MATHS = ("fma", "tf32x3", "f16")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A registered schedule kind's traits."""

    name: str
    summary: str
    #: ``(schedule, head_dim, dtype) -> {phase: (Buffer, ...)}``, the shared-memory buffers of each
    #: kernel phase (sandbox/vocabulary/footprints.py); the fit check sums it and the kernels lay
    #: out their dynamic shared memory from it
    sram: object
    #: its backward pass, None for forward-only kinds: "flash" (the FlashAttention-2 backward with
    #: recomputation, which needs only the forward's O and L) or "standard" (P and dS in HBM)
    backward: str = None
    #: its kernels take a mask predicate
    masks: bool = False
    #: its kernels take a score_mod (sandbox/vocabulary/score_mods.py)
    score_mods: bool = False
    #: it reads Schedule.kv_splits (others refuse kv_splits != 1)
    kv_splits: bool = False
    #: the ``Schedule.math`` values its builds offer
    maths: tuple = ("fma",)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"kind name: expected an identifier, got {self.name!r}")
        if not callable(self.sram):
            raise TypeError(f"kind {self.name!r}: sram must be a function (schedule, head_dim, dtype) -> "
                            f"{{phase: buffers}}, got {type(self.sram).__name__}")
        if self.backward is not None and self.backward not in BACKWARD_SRAM:
            raise ValueError(f"kind {self.name!r}: backward must be None or one of {tuple(BACKWARD_SRAM)}, "
                             f"got {self.backward!r}")
        if not self.maths or any(m not in MATHS for m in self.maths):
            raise ValueError(f"kind {self.name!r}: maths must be a non-empty tuple of {MATHS}, got {self.maths!r}")


_REGISTRY = {}


def register(kind):
    """Add ``kind`` (a :class:`Kind`); its name must be new.

    Raises:
        TypeError: not a Kind.
        ValueError: the name is taken.
    """
    if not isinstance(kind, Kind):
        raise TypeError(f"kind: expected a sandbox.vocabulary.kinds.Kind, got {type(kind).__name__}")
    if kind.name in _REGISTRY:
        raise ValueError(f"kind {kind.name!r} is already registered")
    _REGISTRY[kind.name] = kind
    return kind


def get(name):
    """The registered :class:`Kind` called ``name``.

    Raises:
        ValueError: no such kind.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind: unknown schedule kind {name!r}; expected one of {names()}") from None


def names():
    """Names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


def with_trait(trait):
    """Names of the registered kinds whose ``trait`` is set (e.g. "masks", "backward", "kv_splits")."""
    return tuple(k for k, kind in _REGISTRY.items() if getattr(kind, trait))


# -- the built-in kinds -------------------------------------------------------------------
register(Kind("standard", "Algorithm 0: S and P written to HBM (three kernels: qk, softmax, pv)",
              sram=standard_sram, backward="standard", masks=True, score_mods=True))
register(Kind("flash1", "Algorithm 1: outer loop over K/V blocks, O/l/m back to HBM every inner step",
              sram=flash1_sram, backward="flash", masks=True, score_mods=True))
register(Kind("flash2", "FlashAttention-2 order: outer loop over Q blocks, O and L written once",
              sram=flash2_sram, backward="flash", masks=True, maths=MATHS, score_mods=True))
register(Kind("splitkv", "split-KV (flash-decoding): K/V range split over thread blocks, partial O and L "
                         "to HBM, then a combine kernel; for Nq << Nk",
              sram=splitkv_sram, masks=True, kv_splits=True, score_mods=True))
