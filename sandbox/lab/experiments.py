"""Named experiments: each is a sweep (data) and a figure drawn from its file.

    python -m sandbox sweep --experiment hbm_vs_sram --out results/data/hbm_vs_sram.csv
    python -m sandbox plot hbm_vs_sram --data results/data/hbm_vs_sram.json --out results/figures
"""

import dataclasses

from sandbox.lab.grouping import GroupedSpec, load_grouped, run_grouped
from sandbox.lab.sweep import PAPER_KINDS as KINDS, SweepSpec, load, run_sweep
from sandbox.vocabulary import kinds


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A sweep and the figure that shows it.

    Attributes:
        name: the experiment's name, and its figure's (``sandbox.lab.plots.PLOTS``).
        grid: its :class:`SweepSpec`, or a function returning one, called each time the grid is
            asked for: a grid that reads the registries sees the kinds registered by then.
        runner: ``runner(spec, csv_path, json_path, progress=, argv=)`` writes the data and returns
            its rows (default :func:`sandbox.lab.sweep.run_sweep`, for a SweepSpec).
        loader: ``loader(path)`` -> (provenance, rows) of the files it writes (default
            :func:`sandbox.lab.sweep.load`).
        parallel: the runner also takes ``jobs=``, the processes its points run over.
    """

    name: str
    grid: object
    runner: object = run_sweep
    loader: object = load
    parallel: bool = False

    @property
    def spec(self):
        """The experiment's :class:`SweepSpec`."""
        return self.grid() if callable(self.grid) else self.grid

    def run(self, csv_path, json_path=None, progress=None, argv=None, jobs=1):
        """Write the experiment's data to ``csv_path`` and its JSON beside it (or ``json_path``); the rows.
        ``jobs``: processes, for a ``parallel`` experiment (others run in this one)."""
        extra = {"jobs": jobs} if self.parallel else {}
        return self.runner(self.spec, csv_path, json_path, progress=progress, argv=argv, **extra)

    def load(self, path):
        """(provenance, rows) of the experiment's data file (JSON or CSV)."""
        return self.loader(path)


def flash_backward_kinds():
    """The registered kinds whose backward pass is FlashAttention-2's (recomputation from O and L)."""
    return tuple(k for k in kinds.with_trait("backward") if kinds.get(k).backward == "flash")


#: SRAM sizes M of the HBM-against-M experiments, in bytes: 2 KiB to 2 MiB.
SRAM_SIZES = tuple(2**k for k in range(11, 22))


EXPERIMENTS = {
    e.name: e
    for e in [
        # HBM accesses vs SRAM size M (paper's block rule), N = 4096, d = 64
        Experiment("hbm_vs_sram", SweepSpec(kinds=KINDS, n=(4096,), head_dim=(64,), sram=SRAM_SIZES)),
        # the backward's HBM accesses vs M, beside the forward's, for the kinds with FlashAttention-2's
        # backward; blocks by the paper's rule, lowered until the backward's tiles fit M too
        Experiment(
            "backward_hbm_vs_sram",
            lambda: SweepSpec(kinds=flash_backward_kinds(), n=(4096,), head_dim=(64,), sram=SRAM_SIZES,
                              fit_backward=True),
        ),
        # HBM accesses and extra memory vs N, Br = Bc = 64, d = 64
        Experiment(
            "hbm_vs_n",
            SweepSpec(kinds=KINDS, n=tuple(2**k for k in range(8, 16)), head_dim=(64,), blocks=((64, 64),)),
        ),
        # FlashAttention paper Fig. 2 (middle): flash1, N = 1024, d = 64, Br = 64, fp16
        Experiment(
            "block_size",
            SweepSpec(
                kinds=("flash1",), n=(1024,), head_dim=(64,), dtype=("float16",), batch=(8,), heads=(16,),
                blocks=tuple((64, bc) for bc in (64, 128, 256, 512)), sram_bytes=2**20, time_kernels=True,
            ),
        ),
        # GPT-2 medium attention (N = 1024, d = 64, 16 heads, batch 64), fp16, Br = Bc = 64
        Experiment(
            "gpt2_medium",
            SweepSpec(kinds=KINDS, n=(1024,), head_dim=(64,), dtype=("float16",), batch=(64,), heads=(16,),
                      causal=(False, True), blocks=((64, 64),), time_kernels=True),
        ),
        # SRAM reads vs the thread register tile t×t, flash2, Br = Bc = 64, N = 4096, d = 64
        Experiment(
            "sram_vs_tile",
            SweepSpec(kinds=("flash2",), n=(4096,), head_dim=(64,), blocks=((64, 64),), thread_tiles=(2, 4, 8, 16, 32)),
        ),
        # grouped K/V heads: the L2 model's DRAM bytes and the bytes requested vs the group size H / H_kv,
        # B = 1, H = 32, N = 4096, d = 128, fp32, Br = Bc = 64, the H200's L2; forward and backward
        Experiment("gqa_l2", GroupedSpec(), runner=run_grouped, loader=load_grouped, parallel=True),
    ]
}

#: The paper's Figure 2 (left) table, forward + backward on an A100: HBM reads + writes in GB.
PAPER_GPT2_MEDIUM_GB = {"standard": 40.3, "flash": 4.4}
#: The same table's GFLOPs and runtime (ms), standard attention and FlashAttention.
PAPER_GPT2_MEDIUM_GFLOPS = {"standard": 66.6, "flash": 75.2}
PAPER_GPT2_MEDIUM_MS = {"standard": 41.7, "flash": 7.3}
#: The setting of that table (GPT-2 medium attention), as sweep columns.
PAPER_GPT2_MEDIUM_SETTING = {"n_q": 1024, "n_kv": 1024, "head_dim": 64, "batch": 64, "heads": 16, "dtype": "float16"}
