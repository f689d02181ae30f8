"""The IO model: exact tile-level counts of a schedule, the closed forms of the theory, and an L2 model (l2.py).

Imports the vocabulary (``sandbox``) and never the kernels.
"""

from simulator.counts import simulate_backward_counts, simulate_counts
from simulator.l2 import simulate_dram

__all__ = ["simulate_backward_counts", "simulate_counts", "simulate_dram"]
