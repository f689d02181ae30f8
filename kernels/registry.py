"""The kernels' registry: each kind's kernel module, and its fast builds, declared once.

A kind's traits (footprint, backward, masks) are in ``sandbox/vocabulary/kinds.py`` and its counts
in ``simulator/table.py``; ``sandbox.register_kind`` registers all three. Here a kind has:

- ``kernels``: a module (or namespace) with ``phases(dtype) -> {phase: (maker, argument types)}``,
  each maker ``(schedule, head_dim, dtype, count_io, causal, mask=None) -> (python kernel, smem
  bytes, grid(problem))``, compiled with ``cuda.jit``, and ``launch(launch, schedule, problem, q,
  k, v, out, lse, scale, counters, empty)``, which launches the phases in order and allocates any
  scratch with ``empty(shape, dtype, name)``. With ``count_io`` its kernels count every element
  they move (the counting build); without, the same source runs with the counters compiled out.
- ``fast``: optionally, ``{Schedule.math: build}``, faster builds of the same schedule for runs
  without counters or masks (same tiles, same loop order, same HBM traffic). A build has
  ``eligible(schedule, head_dim, count_io, mask) -> None or the reason it cannot run``,
  ``smem_bytes(schedule, head_dim)``, ``min_blocks_per_sm(schedule, head_dim)`` and ``phases(dtype)``,
  and optionally ``dtype_refusal(dtype) -> None or the reason`` for a build that takes only some
  input dtypes (kernels/builds.py asks it when the dtype is known).
- ``fast_backward``: optionally, ``{Schedule.math: build}``, fast builds of the kind's backward (same
  tiles and HBM traffic as its counting backward), with the same functions, ``phases`` giving the
  counting backward's phases and arguments, plus ``threads(schedule, phase)``, each phase's block size.

Which build runs is decided in one place, ``kernels/builds.py``.
"""

import dataclasses
import types

from kernels import backward_tc, backward_tc16, flash1, flash2, flash2_fast, flash2_tc, flash2_tc16, splitkv, standard
from sandbox.vocabulary import kinds


@dataclasses.dataclass(frozen=True)
class KernelSet:
    """A registered kind's kernels (see the module docstring)."""

    name: str
    kernels: object
    fast: dict = dataclasses.field(default_factory=dict)
    fast_backward: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for attr in ("phases", "launch"):
            if not callable(getattr(self.kernels, attr, None)):
                raise TypeError(f"kind {self.name!r}: its kernels need a {attr}() (see kernels/registry.py)")
        build_attrs = ("eligible", "smem_bytes", "min_blocks_per_sm", "phases")
        for field, what, attrs in (("fast", "fast build", build_attrs),
                                   ("fast_backward", "fast backward", build_attrs + ("threads",))):
            for math, build in getattr(self, field).items():
                for attr in attrs:
                    if not callable(getattr(build, attr, None)):
                        raise TypeError(f"kind {self.name!r}: its {what} for math={math!r} needs a {attr}() "
                                        f"(see kernels/registry.py)")
            object.__setattr__(self, field, types.MappingProxyType(dict(getattr(self, field))))


_REGISTRY = {}


def register(name, kernels, fast=None, fast_backward=None):
    """Register the kernels of kind ``name`` (its traits must be registered in the vocabulary first).

    Raises:
        ValueError: the name is taken, or no kind of that name is declared in the vocabulary.
        TypeError: a module without the functions a kind's kernels need.
    """
    kinds.get(name)  # declared in the vocabulary: ValueError naming the kinds if not
    if name in _REGISTRY:
        raise ValueError(f"kind {name!r} already has kernels registered")
    entry = KernelSet(name, kernels, dict(fast or {}), dict(fast_backward or {}))
    _REGISTRY[name] = entry
    return entry


def get(name):
    """The :class:`KernelSet` of kind ``name``.

    Raises:
        ValueError: no kernels are registered for it.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind {name!r} has no kernels registered; kinds with kernels: {names()}") from None


def names():
    """Kinds with registered kernels, in registration order."""
    return tuple(_REGISTRY)


register("standard", standard)
register("flash1", flash1)
register("flash2", flash2, fast={"fma": flash2_fast, "tf32x3": flash2_tc, "f16": flash2_tc16}, fast_backward={"tf32x3": backward_tc, "f16": backward_tc16})
register("splitkv", splitkv)
