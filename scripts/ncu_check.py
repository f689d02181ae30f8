"""Nsight Compute check: the kernels' measured global, L2 and DRAM bytes against the simulator's.

The same as ``python -m sandbox ncu``; what it measures and how: ``sandbox/lab/ncu.py``.

    python scripts/ncu_check.py --out results/ncu
    python scripts/ncu_check.py --kinds flash2 --n 4096 --d 64 128 --causal both --out results/ncu
    python scripts/ncu_check.py --dry-run        # check the configs, print the ncu command, run nothing
"""

import sys

from sandbox.cli import ncu_main

if __name__ == "__main__":
    sys.exit(ncu_main(prog="python scripts/ncu_check.py"))
