"""``python -m sandbox``: see sandbox/cli.py."""

import sys

from sandbox.cli import main

if __name__ == "__main__":  # (not when a worker process of the gqa_l2 model imports this module)
    sys.exit(main(prog="python -m sandbox"))
