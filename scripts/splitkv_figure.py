"""Split-KV vs flash2 for decoding shapes: runtime (GPU) and simulated HBM bytes -> CSV, JSON, figure.

    python scripts/splitkv_figure.py --out docs/splitkv

The study: ``sandbox/lab/decoding.py``.
"""

import argparse
import sys

from sandbox.lab.decoding import N_KV, N_Q, SPLITS, run_study


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/splitkv")
    p.add_argument("--n-q", nargs="+", type=int, default=list(N_Q))
    p.add_argument("--n-kv", nargs="+", type=int, default=list(N_KV))
    p.add_argument("--splits", nargs="+", type=int, default=list(SPLITS))
    a = p.parse_args(argv)
    run_study(a.out, a.n_q, a.n_kv, a.splits, progress=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
