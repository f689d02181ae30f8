"""The IO model: exact tile-level counts of a schedule, and the closed forms of the theory.

Imports the vocabulary (``sandbox``) and never the kernels.
"""

from simulator.counts import simulate_backward_counts, simulate_counts

__all__ = ["simulate_backward_counts", "simulate_counts"]
