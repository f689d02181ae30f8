"""A pytest plugin for the runner's own tests (tests/test_parallel_runner.py): with ``-p tests.hold``
and ``ATTN_TEST_HOLD`` naming a path, each test first creates ``<path>.<pid>`` and then waits a
minute, so that a test can signal ``python -m tests`` while its processes are in the middle of a test."""

import os
import pathlib
import time

ENV = "ATTN_TEST_HOLD"


def pytest_runtest_call(item):
    path = os.environ.get(ENV)
    if path:
        pathlib.Path(f"{path}.{os.getpid()}").touch()
        time.sleep(60)
