"""The IO model: exact tile-level counts of a schedule, the closed forms of the theory, and an L2 model.

Imports the vocabulary (``sandbox.vocabulary``) and never the kernels. Each kind's counts and L2
request stream are entered once, in ``simulator/table.py``; the built-in kinds' below.
"""

from simulator import counts, streams, table
from simulator.counts import simulate_backward_counts, simulate_counts
from simulator.l2 import simulate_dram

table.register("standard", counts.standard_counts, l2=streams.STANDARD_LAUNCHES)
table.register("flash1", counts.flash1_counts, l2=streams.FLASH1_LAUNCHES)
table.register("flash2", counts.flash2_counts, l2=streams.FLASH2_LAUNCHES)
table.register("splitkv", counts.splitkv_counts, l2=streams.SPLITKV_LAUNCHES)

__all__ = ["simulate_backward_counts", "simulate_counts", "simulate_dram"]
