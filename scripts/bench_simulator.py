"""Time the simulator on long sequences: the target is Nq = Nk = 2**20, d = 128, 128x128 tiles, causal, < 1 s on one core.

    python scripts/bench_simulator.py

The cases and the timing: ``sandbox/lab/simulator_speed.py``.
"""

from sandbox.lab.simulator_speed import run

if __name__ == "__main__":
    run()
