"""Adding a schedule kind: one call that declares it in every layer, and a table of what each kind has.

A kind is declared once per layer: its traits in the vocabulary (``sandbox/vocabulary/kinds.py``),
its kernels in ``kernels/registry.py``, its counts and L2 request stream in ``simulator/table.py``.
:func:`register_kind` fills all three; the bench's rows, the CLI's choices, the plots and the ncu
check read them. ``docs/tutorial.md`` adds a kind this way.
"""

from kernels import registry
from sandbox.lab import peers
from sandbox.vocabulary import kinds
from simulator import table


def register_kind(name, summary, *, sram, kernels, counts, backward=None, masks=False, kv_splits=False,
                  maths=("fma",), fast=None, l2=None):
    """Declare schedule kind ``name`` in the vocabulary, the kernels' registry and the simulator's table.

    Args:
        name: an identifier, new to all three.
        summary: one line saying what the kind does.
        sram: ``(schedule, head_dim, dtype) -> {phase: (Buffer, ...)}``, its shared-memory buffers
            per kernel phase (``sandbox/vocabulary/footprints.py``). A kind that takes V's own
            head dim d_v ≠ d says so with a ``head_dim_v=None`` argument here; its kernels' makers
            then get ``head_dim_v`` too, and its counts read ``problem.head_dim_v``.
        kernels: a module or namespace with ``phases(dtype)`` and ``launch(...)`` (``kernels/registry.py``).
        counts: ``(schedule, problem, tiles, masked) -> [hbm_reads, hbm_writes, sram_reads,
            sram_writes]``, the exact counts of one (b, h) (``simulator/table.py``).
        backward: None, "flash" or "standard": the backward pass its schedules run.
        masks: its kernels take a mask predicate.
        kv_splits: it reads ``Schedule.kv_splits``.
        maths: the ``Schedule.math`` values its builds offer.
        fast: ``{math: build}``, faster builds without counters (``kernels/registry.py``).
        l2: its launches for the L2 model, ``((phase, generator, grid), ...)`` (``simulator/streams.py``).

    Returns:
        The vocabulary's :class:`~sandbox.vocabulary.kinds.Kind`.

    Raises:
        ValueError: the name is taken in any layer, or a trait is out of range.
        TypeError: a part without the functions its layer needs.
    """
    taken = [layer for layer, names in (("vocabulary", kinds.names()), ("kernels", registry.names()),
                                        ("simulator", table.names())) if name in names]
    if taken:
        raise ValueError(f"kind {name!r} is already registered ({', '.join(taken)})")
    kind = kinds.Kind(name, summary, sram=sram, backward=backward, masks=masks, kv_splits=kv_splits,
                      maths=tuple(maths))
    # every part is checked before any registry changes, so that a bad part leaves none behind
    registry.KernelSet(name, kernels, dict(fast or {}))
    table.SimulatedKind(name, counts, None if l2 is None else tuple(l2))
    kinds.register(kind)
    registry.register(name, kernels, fast=fast)
    table.register(name, counts, l2=l2)
    return kind


def kind_names():
    """Names of the registered kinds, in registration order."""
    return kinds.names()


def capabilities():
    """For every registered kind, what it has in each layer.

    Returns:
        list of dicts: ``kind``, ``kernels`` and ``counts`` (registered), ``backward`` (its pass or
        None), ``masks``, ``fast`` (the maths of its fast builds), ``l2`` (a request stream for the
        L2 model) and ``bench`` (its rows in ``python -m sandbox bench``).
    """
    rows = []
    for name in kinds.names():
        kind = kinds.get(name)
        has_kernels, has_counts = name in registry.names(), name in table.names()
        rows.append({
            "kind": name,
            "kernels": has_kernels,
            "counts": has_counts,
            "backward": kind.backward,
            "masks": kind.masks,
            "fast": tuple(registry.get(name).fast) if has_kernels else (),
            "l2": has_counts and table.get(name).l2 is not None,
            "bench": peers.rows_of_kind(name),
        })
    return rows
