"""A pytest plugin that sums each test file's time (setup, call and teardown of its tests) and writes
``{path: seconds}`` as JSON to the file that ``ATTN_TEST_TIMES`` names when the session ends.

``python -m tests`` loads it into every pytest process it starts (``-p tests.timing``) to balance
the files over the processes of the next run and to list the slowest files.
"""

import collections
import json
import os
import pathlib

ENV = "ATTN_TEST_TIMES"

_seconds = collections.defaultdict(float)


def pytest_runtest_logreport(report):
    _seconds[report.location[0].replace(os.sep, "/")] += report.duration


def pytest_sessionfinish(session):
    path = os.environ.get(ENV)
    if path:
        pathlib.Path(path).write_text(json.dumps(dict(sorted(_seconds.items())), indent=1) + "\n")
