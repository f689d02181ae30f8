"""What the ncu check measures (``sandbox.lab.ncu``): its configs and calibration probes, their
command-line form between the parent and the profiled child (``sandbox.lab.ncu_child``), and the
schedule, problem, build and kernel launches of each.

A config is one row of the check: a kind, N (= Nq = Nk), d, causal, the direction ("fwd": the
forward; "bwd": the backward, ``kernels.launch.run_backward``), the build: "plain" (the
counting kernels' source without counters: what the simulator mirrors) or "fast-<math>" (the fast
build of ``Schedule(math=<math>)``, chosen by ``kernels.builds.choose_build(..., fast=True)``; for
the backward by ``kernels.builds.choose_backward_build(..., fast=True)``), and a mask: "" (none)
or a built-in mask's spec (``sandbox.vocabulary.masks.from_spec``: "sliding_window:256", ...),
which the kernels and the simulator apply with causal (causal AND mask).

``settings`` below is the check's parsed arguments (``python -m sandbox ncu``; the child gets the
model's share of them): ``batch``, ``heads``, ``dtype``, ``block_q``, ``block_kv``, ``thread_q``,
``thread_kv``, ``kv_splits``.
"""

import dataclasses
import functools

from kernels import builds
from kernels.flash2_tc import tc_schedule
from kernels.flash2_tc16 import tc16_schedule
from simulator import streams, table
from sandbox.vocabulary import kinds, masks
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import F16_THREAD_Q, Schedule

#: Sizes measured by default: N = Nq = Nk, and d.
DEFAULT_N = (1024, 4096, 16384)
DEFAULT_D = (64, 128)
#: Calibration probes (kernels/l2probe.py), measured before the configs in the same profiled run:
#: a spin (one block writes 4 bytes, then only computes, for about 0.1 and 0.4 s on an H100): any
#: DRAM writes during it are not its own data, and give the background write rate; a write stream
#: (X MiB written once by a full grid): what does not reach DRAM during it stayed dirty in L2,
#: which gives the most dirty data the L2 holds (the model's dirty limit).
PROBE_SPINS = (10**7, 4 * 10**7)
#: a check, not a calibration: one block rewriting 1 MiB (flash1's O pattern: the same lines
#: dirtied again and again) this many passes: its DRAM writes should be the background's alone
PROBE_REWRITE_PASSES = 2000
PROBE_REWRITE_MIB = 1
PROBE_STREAMS_MIB = (64, 128)
PROBE_STREAM_BLOCKS = 528
PROBE_THREADS = 256
PROBE_NAMES = ("spin", "stream", "rewrite")


#: A row's direction: the forward pass or the backward pass.
DIRECTIONS = ("fwd", "bwd")
#: The builds a row can name (kernels/builds.py's names): the plain kernels, or a fast build by its
#: arithmetic (sandbox.vocabulary.kinds.MATHS).
PLAIN = builds.PLAIN
FAST_PREFIX = "fast-"
BUILD_NAMES = (PLAIN,) + tuple(FAST_PREFIX + math for math in kinds.MATHS)
#: Arithmetic whose builds fix the thread tile: the schedule for Br × Bc blocks and the settings'
#: thread_q (the 16-bit build takes 2 or 4, a warp per 16 or 32 rows; 3xTF32 has 2 only).
FIXED_TILE_SCHEDULES = {"tf32x3": lambda br, bc, tq: tc_schedule(br, bc),
                        "f16": lambda br, bc, tq: tc16_schedule(br, bc, 8 * tq if tq in F16_THREAD_Q else 16)}


def l2_kinds():
    """The registered kinds the check can measure: those with an L2 request stream (``simulator/table.py``)."""
    return tuple(k for k in table.names() if table.get(k).l2 is not None)


class BuildUnavailable(Exception):
    """The build a row names is not there to run (the message says why): the row is skipped."""


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured row: the schedule kind, N (= Nq = Nk), d, causal, direction, build, mask spec (module docstring)."""

    kind: str
    n: int
    d: int
    causal: bool
    direction: str = "fwd"
    build: str = PLAIN
    mask: str = ""

    @property
    def backward(self):
        return self.direction == "bwd"

    @property
    def math(self):
        """The fast build's ``Schedule.math``, None for the plain kernels."""
        return self.build[len(FAST_PREFIX):] if self.build.startswith(FAST_PREFIX) else None

    def spec(self):
        """"kind:N:d:causal[:direction:build[:mask]]", the child's command-line form (the short one for the
        plain forward without a mask; the mask's own spec, colons and all, last)."""
        base = f"{self.kind}:{self.n}:{self.d}:{int(self.causal)}"
        if self.mask:
            return f"{base}:{self.direction}:{self.build}:{self.mask}"
        return base if (self.direction, self.build) == ("fwd", PLAIN) else f"{base}:{self.direction}:{self.build}"

    @classmethod
    def parse(cls, spec):
        """A :meth:`spec` back; ValueError for a direction, build or mask spec it does not know."""
        fields = spec.split(":")
        if len(fields) == 4:
            fields += ["fwd", PLAIN]
        if len(fields) < 6 or fields[4] not in DIRECTIONS or fields[5] not in BUILD_NAMES:
            raise ValueError(f"config spec {spec!r}: expected kind:N:d:causal[:{'|'.join(DIRECTIONS)}:"
                             f"{'|'.join(BUILD_NAMES)}[:mask]]")
        kind, n, d, causal, direction, build = fields[:6]
        mask = ":".join(fields[6:])
        if mask:
            masks.parse_spec(mask)  # (a bad one says which forms it takes)
        return cls(kind, int(n), int(d), causal in ("1", "true", "True"), direction, build, mask)

    def label(self):
        what = self.kind + (" backward" if self.backward else "") + ("" if self.build == PLAIN else f" {self.build}")
        return (f"{what} N={self.n} d={self.d}" + (" causal" if self.causal else "")
                + (f" mask={self.mask}" if self.mask else ""))


@dataclasses.dataclass(frozen=True)
class Probe:
    """One calibration probe: "spin" (``arg`` iterations), "stream" (``arg`` MiB written) or "rewrite"
    (``arg`` passes over PROBE_REWRITE_MIB by one block)."""

    name: str
    arg: int
    kind = "probe"

    def spec(self):
        return f"probe:{self.name}:{self.arg}"

    def label(self):
        return f"probe {self.name} {self.arg}" + {"stream": " MiB", "spin": " iterations", "rewrite": " passes"}[self.name]

    def grid(self):
        return (PROBE_STREAM_BLOCKS, 1, 1) if self.name == "stream" else (1, 1, 1)

    def buffer_elements(self):
        mib = {"spin": 0, "stream": self.arg, "rewrite": PROBE_REWRITE_MIB}[self.name]
        return max(1, mib * 2**20 // 4)


def calibration_probes():
    """The probes measured before the configs, in order: the spins, the write streams, the rewrite check."""
    return ([Probe("spin", n) for n in PROBE_SPINS] + [Probe("stream", m) for m in PROBE_STREAMS_MIB]
            + [Probe("rewrite", PROBE_REWRITE_PASSES)])


def parse_spec(spec):
    """A child spec: a :class:`Probe` ("probe:name:arg") or a :class:`Config`."""
    if spec.startswith("probe:"):
        _, name, arg = spec.split(":")
        if name not in PROBE_NAMES:
            raise ValueError(f"unknown probe {name!r}")
        return Probe(name, int(arg))
    return Config.parse(spec)


def make_schedule(cfg, settings):
    """The config's schedule: the settings' blocks and register tile (or the one its build's arithmetic
    fixes, :data:`FIXED_TILE_SCHEDULES`: the 16-bit build's a warp per 32 rows at thread_q = 4, else 16), ``kv_splits`` for kinds that read it, the fast build's math."""
    if cfg.math in FIXED_TILE_SCHEDULES:
        return FIXED_TILE_SCHEDULES[cfg.math](settings.block_q, settings.block_kv, settings.thread_q)
    return Schedule(cfg.kind, block_q=settings.block_q, block_kv=settings.block_kv, thread_q=settings.thread_q,
                    thread_kv=settings.thread_kv, kv_splits=settings.kv_splits if kinds.get(cfg.kind).kv_splits else 1,
                    math=cfg.math or "fma")


def make_problem(cfg, settings):
    return Problem(settings.batch, settings.heads, cfg.n, cfg.n, cfg.d, dtype=settings.dtype, causal=cfg.causal)


def make_mask(cfg, settings):
    """The config's :class:`sandbox.vocabulary.masks.Mask` (None without one), over its schedule's blocks.

    One object per (spec, N, Br, Bc): the kernels compile it once (``kernels.launch.build`` caches per
    Mask object) and the simulator evaluates it once (``Mask.evaluate`` keeps the last box).

    Raises:
        ValueError: a bad mask spec, or a block layout over CUDA's constant memory.
    """
    if not cfg.mask:
        return None
    schedule = make_schedule(cfg, settings)
    return _mask(cfg.mask, cfg.n, schedule.block_q, schedule.block_kv)


@functools.lru_cache(maxsize=16)
def _mask(spec, n, block_q, block_kv):
    return masks.from_spec(spec, n, n, block_q, block_kv)


def resolve_build(cfg, schedule, mask=None):
    """The :class:`kernels.builds.Build` the config runs (its name is the config's build), under ``mask``
    (:func:`make_mask`'s).

    Raises:
        ValueError: a forward fast build that cannot run the config (the reason is choose_build's: a mask,
            for one).
        BuildUnavailable: a backward fast build the kind does not have, or that cannot run the config.
    """
    if not cfg.backward:
        chosen = builds.choose_build(schedule, cfg.d, fast=cfg.build != PLAIN, mask=mask)
    elif cfg.build == PLAIN:
        chosen = builds.choose_backward_build(schedule, cfg.d, fast=False, mask=mask)
    else:
        try:
            chosen = builds.choose_backward_build(schedule, cfg.d, fast=True, mask=mask)
        except ValueError as e:
            raise BuildUnavailable(str(e)) from None
    if chosen.name != cfg.build:
        raise BuildUnavailable(f"kernels/builds.py chose {chosen.name!r}, not {cfg.build!r}")
    return chosen


def launches(cfg, settings):
    """The config's kernel launches, ``(phase, generator, grid)`` in launch order: its L2 request stream
    (the kind's in the simulator's table, or its backward's, ``simulator.streams.launches``). A fast build
    launches the plain build's kernels' grids: it moves the same tiles."""
    return streams.launches(make_schedule(cfg, settings), cfg.backward)


def expected_grids(cfg, settings):
    """The grid of each kernel the config (or probe) launches, as (x, y, z), in launch order."""
    if isinstance(cfg, Probe):
        return [cfg.grid()]
    schedule, problem = make_schedule(cfg, settings), make_problem(cfg, settings)
    grids = [tuple(grid(schedule, problem)) for _, _, grid in launches(cfg, settings)]
    return [g + (1,) * (3 - len(g)) for g in grids]
