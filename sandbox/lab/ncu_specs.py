"""What the ncu check measures (``sandbox.lab.ncu``): its configs and calibration probes, their
command-line form between the parent and the profiled child (``sandbox.lab.ncu_child``), and the
schedule, problem and kernel launches of each.

``settings`` below is the check's parsed arguments (``python -m sandbox ncu``; the child gets the
model's share of them): ``batch``, ``heads``, ``dtype``, ``block_q``, ``block_kv``, ``thread_q``,
``thread_kv``, ``kv_splits``.
"""

import dataclasses

from simulator import table
from sandbox.vocabulary import kinds
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import Schedule

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


def l2_kinds():
    """The registered kinds the check can measure: those with an L2 request stream (``simulator/table.py``)."""
    return tuple(k for k in table.names() if table.get(k).l2 is not None)


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured point: the schedule kind, N (= Nq = Nk), d, causal."""

    kind: str
    n: int
    d: int
    causal: bool

    def spec(self):
        """"kind:N:d:causal", the child's command-line form."""
        return f"{self.kind}:{self.n}:{self.d}:{int(self.causal)}"

    @classmethod
    def parse(cls, spec):
        kind, n, d, causal = spec.split(":")
        return cls(kind, int(n), int(d), causal in ("1", "true", "True"))

    def label(self):
        return f"{self.kind} N={self.n} d={self.d}" + (" causal" if self.causal else "")


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


def make_schedule(kind, settings):
    """The config's schedule: the settings' blocks and register tile; ``kv_splits`` for kinds that read it."""
    return Schedule(kind, block_q=settings.block_q, block_kv=settings.block_kv, thread_q=settings.thread_q,
                    thread_kv=settings.thread_kv, kv_splits=settings.kv_splits if kinds.get(kind).kv_splits else 1)


def make_problem(cfg, settings):
    return Problem(settings.batch, settings.heads, cfg.n, cfg.n, cfg.d, dtype=settings.dtype, causal=cfg.causal)


def launches(kind):
    """The kind's kernel launches, ``(phase, generator, grid)`` in launch order: its L2 request stream in the
    simulator's table (``simulator.table.get(kind).l2``)."""
    return table.get(kind).l2


def expected_grids(cfg, settings):
    """The grid of each kernel the config (or probe) launches, as (x, y, z), in launch order."""
    if isinstance(cfg, Probe):
        return [cfg.grid()]
    schedule, problem = make_schedule(cfg.kind, settings), make_problem(cfg, settings)
    return [tuple(grid(schedule, problem)) + (1,) * (3 - len(grid(schedule, problem)))
            for _, _, grid in launches(cfg.kind)]
