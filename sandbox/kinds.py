"""Schedule kinds: the one place a kind is declared, for the kernels, the simulator and the tests.

A kind is a loop order over tiles (which blocks stay in SRAM, what goes back to HBM when). To
add one, write its three parts and register it here with one :func:`register` call:

- ``sram``: ``(schedule, head_dim, dtype) -> {phase: (Buffer, ...)}``, the shared-memory
  buffers of each kernel phase; the kernels lay out their dynamic shared memory from it and
  :meth:`Schedule.check_fits` sums it;
- ``kernels``: a module with ``phases(dtype) -> {phase: (maker, argument types)}`` (each maker
  ``(schedule, head_dim, dtype, count_io, causal, mask=None) -> (python kernel, smem bytes,
  grid(problem))``, compiled with ``cuda.jit``) and ``launch(launch, schedule, problem, q, k, v, out, lse,
  scale, counters, empty)``, which launches the phases in order and allocates any scratch with
  ``empty(shape, dtype, name)``;
- ``counts``: ``(schedule, problem, tiles, masked) -> [hbm_reads, hbm_writes, sram_reads,
  sram_writes]``, the exact element counts of one (b, h) (``simulator/counts.py``), which must
  equal the kernels' own counters.

Optionally, ``fast``: a module with a faster build of the same schedule for runs without
counters (same tiles, same loop order, same HBM traffic; its SRAM use may differ, and
``simulate`` models the counting build). It has ``eligible(schedule, head_dim, count_io, mask)
-> None or the reason it cannot run``, ``smem_bytes(schedule, head_dim)`` and ``phases(dtype)``
like ``kernels``; the kind's ``launch`` launches it. ``kernels/flash2_fast.py`` is flash2's.

Every registered kind is picked up by :class:`Schedule`, ``sandbox.attention``,
``sandbox.simulate``, the CLI and the test suite (``tests/kernels/test_attention.py``,
``tests/simulator/test_agreement.py``, ``tests/kernels/test_masks.py`` run over :func:`names`).
``docs/tutorial.md`` adds one end to end. References are "module:attribute" strings, imported
on first use, so that declaring a kind never imports Numba's CUDA target; the objects themselves
(functions, a namespace with ``phases`` and ``launch``) work too, e.g. in a notebook.
"""

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Kind:
    """A registered schedule kind (see the module docstring)."""

    name: str
    summary: str
    sram: str
    kernels: str
    counts: str
    #: its backward pass (sandbox.attention_backward), None for forward-only kinds: "flash" (the
    #: FlashAttention-2 backward with recomputation, which needs only the forward's O and L) or
    #: "standard" (P and dS in HBM); see kernels/backward.py
    backward: str = None
    #: its kernels take a mask predicate (they call the tile ops' ``allowed``/``tile_visited``)
    masks: bool = False
    #: it reads Schedule.kv_splits (others refuse kv_splits != 1)
    kv_splits: bool = False
    #: the module of its fast build (see the module docstring), or None
    fast: str = None

    def _resolve(self, ref):
        if not isinstance(ref, str):
            return ref  # the object itself (a notebook or the tutorial registers functions directly)
        module, _, attr = ref.partition(":")
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod

    def sram_buffers(self, schedule, head_dim, dtype):
        return self._resolve(self.sram)(schedule, head_dim, dtype)

    def kernel_module(self):
        return self._resolve(self.kernels)

    def fast_module(self):
        return None if self.fast is None else self._resolve(self.fast)

    def count(self, schedule, problem, tiles, masked):
        return self._resolve(self.counts)(schedule, problem, tiles, masked)


_REGISTRY = {}

#: The backward passes a kind may declare (kernels/backward.py).
BACKWARDS = (None, "flash", "standard")


def register(kind):
    """Add ``kind`` (a :class:`Kind`); its name must be new.

    Raises:
        ValueError: the name is taken or not an identifier.
    """
    if not isinstance(kind, Kind):
        raise TypeError(f"kind: expected a sandbox.kinds.Kind, got {type(kind).__name__}")
    if not kind.name.isidentifier():
        raise ValueError(f"kind name: expected an identifier, got {kind.name!r}")
    if kind.name in _REGISTRY:
        raise ValueError(f"kind {kind.name!r} is already registered")
    if kind.backward not in BACKWARDS:
        raise ValueError(f"kind {kind.name!r}: backward must be one of {BACKWARDS}, got {kind.backward!r}")
    _REGISTRY[kind.name] = kind
    return kind


def get(name):
    """The registered :class:`Kind` called ``name``.

    Raises:
        ValueError: no such kind.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"kind: unknown schedule kind {name!r}; expected one of {names()}") from None


def names():
    """Names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


# -- the built-in kinds -------------------------------------------------------------------
register(Kind("standard", "Algorithm 0: S and P written to HBM (three kernels: qk, softmax, pv)",
              sram="sandbox.schedule:standard_sram", kernels="kernels.standard",
              counts="simulator.counts:standard_counts", backward="standard", masks=True))
register(Kind("flash1", "Algorithm 1: outer loop over K/V blocks, O/l/m back to HBM every inner step",
              sram="sandbox.schedule:flash1_sram", kernels="kernels.flash1",
              counts="simulator.counts:flash1_counts", backward="flash", masks=True))
register(Kind("flash2", "FlashAttention-2 order: outer loop over Q blocks, O and L written once",
              sram="sandbox.schedule:flash2_sram", kernels="kernels.flash2",
              counts="simulator.counts:flash2_counts", backward="flash", masks=True, fast="kernels.flash2_fast"))
register(Kind("splitkv", "split-KV (flash-decoding): K/V range split over thread blocks, partial O and L "
                         "to HBM, then a combine kernel; for Nq << Nk",
              sram="sandbox.schedule:splitkv_sram", kernels="kernels.splitkv",
              counts="simulator.counts:splitkv_counts", masks=True, kv_splits=True))
