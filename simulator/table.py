"""The simulator's table of kinds: each kind's exact counts and its L2 request stream, declared once.

A kind's traits are in ``sandbox/vocabulary/kinds.py`` and its kernels in ``kernels/registry.py``;
``sandbox.register_kind`` registers all three. Here a kind has:

- ``counts``: ``(schedule, problem, tiles, masked) -> [hbm_reads, hbm_writes, sram_reads,
  sram_writes]``, the exact element counts of one (b, h) from its tile sums (``tiles``, a
  ``simulator.tile_sums.TileSums``; ``simulator/counts.py`` holds the built-in kinds' counters),
  which must equal the kernels' own counters;
- ``l2``: optionally, its kernel launches in order for the L2 model (``simulator/l2.py``):
  ``((phase, request generator, grid(schedule, problem)), ...)``, as ``simulator/streams.py``
  describes them (the built-in kinds' are there). A kind without one has no DRAM
  estimate (``simulate_dram`` says so).

The built-in kinds are entered by ``simulator/__init__.py``.
"""

import dataclasses

from sandbox.vocabulary import kinds


@dataclasses.dataclass(frozen=True)
class SimulatedKind:
    """A registered kind's model (see the module docstring)."""

    name: str
    counts: object
    l2: tuple = None

    def __post_init__(self):
        if not callable(self.counts):
            raise TypeError(f"kind {self.name!r}: counts must be a function (schedule, problem, tiles, masked) -> "
                            f"[hbm_reads, hbm_writes, sram_reads, sram_writes], got {type(self.counts).__name__}")
        if self.l2 is not None:
            for launch in self.l2:
                if len(launch) != 3 or not isinstance(launch[0], str) or not all(map(callable, launch[1:])):
                    raise TypeError(f"kind {self.name!r}: l2 must be ((phase, generator, grid), ...), got {launch!r}")


_TABLE = {}


def register(name, counts, l2=None):
    """Enter kind ``name`` (its traits must be registered in the vocabulary first).

    Raises:
        ValueError: the name is taken, or no kind of that name is declared in the vocabulary.
        TypeError: ``counts`` or ``l2`` of the wrong shape.
    """
    kinds.get(name)
    if name in _TABLE:
        raise ValueError(f"kind {name!r} is already in the simulator's table")
    entry = SimulatedKind(name, counts, None if l2 is None else tuple(l2))
    _TABLE[name] = entry
    return entry


def get(name):
    """The :class:`SimulatedKind` of kind ``name``.

    Raises:
        ValueError: the kind is not in the table.
    """
    try:
        return _TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind {name!r} has no counts in the simulator's table; kinds with counts: {names()}") from None


def names():
    """Kinds in the table, in registration order."""
    return tuple(_TABLE)
