"""``python -m tests``: the suite split over pytest processes, balanced by file, with one exit status."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import __main__ as runner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_arguments_split_into_jobs_the_durations_flag_and_pytest_options():
    assert runner.parse_args([]) == (None, False, [])
    assert runner.parse_args(["-j", "3", "-m", "gpu", "-q"]) == (3, False, ["-m", "gpu", "-q"])
    assert runner.parse_args(["-j4", "--write-durations", "-x"]) == (4, True, ["-x"])
    assert runner.parse_args(["--jobs=2"]) == (2, False, [])
    for bad in (["-j", "0"], ["-j", "two"], ["-j"]):
        with pytest.raises(SystemExit, match="python -m tests"):
            runner.parse_args(bad)


def test_paths_and_node_ids_run_as_given_options_do_not():
    assert runner.names_tests(["tests/test_layers.py"])
    assert runner.names_tests(["-q", "tests/test_layers.py::test_x"])
    assert not runner.names_tests(["-m", "gpu", "-k", "flash2 and not large"])


def test_the_files_are_every_test_module_under_tests():
    files = runner.test_files()
    assert "tests/test_parallel_runner.py" in files and "tests/kernels/test_backward_tc.py" in files
    assert files == sorted(files) and all(pathlib.Path(f).name.startswith("test_") for f in files)


def test_durations_name_existing_files_with_positive_seconds():
    seconds = runner.load_durations()
    assert seconds, "tests/durations.json balances the processes: write it with --write-durations"
    assert set(seconds) <= set(runner.test_files())
    assert all(s >= 0 for s in seconds.values())


def test_balance_puts_each_file_in_one_group_and_evens_the_seconds():
    seconds = {"a": 10.0, "b": 9.0, "c": 6.0, "d": 5.0, "e": 1.0}
    groups = runner.balance(list(seconds) + ["new"], seconds, 2)
    assert sorted(f for _, fs in groups for f in fs) == sorted(list(seconds) + ["new"])
    totals = [t for t, _ in groups]
    assert sum(totals) == 10 + 9 + 6 + 5 + 1 + 6  # "new" counts as the median, 6
    assert max(totals) - min(totals) <= 10  # greedy longest-first: within the largest file
    assert all(fs == sorted(fs) for _, fs in groups)
    assert runner.balance(["a", "b"], seconds, 8) == [(10.0, ["a"]), (9.0, ["b"])]  # no empty groups
    assert runner.balance(["x", "y"], {}, 2) == [(1.0, ["x"]), (1.0, ["y"])]


def test_summary_lines_give_counts_other_lines_none():
    line = "======= 3 failed, 1385 passed, 329 skipped, 2 warnings in 4261.02s (1:11:01) ========\n"
    assert runner.summary_counts(line) == {"failed": 3, "passed": 1385, "skipped": 329, "warning": 2}
    assert runner.summary_counts("== 1 passed, 47 deselected in 3.10s ==") == {"passed": 1, "deselected": 47}
    assert runner.summary_counts("3 passed, 738 deselected in 6.26s\n") == {"passed": 3, "deselected": 738}  # -q
    assert runner.summary_counts("== no tests ran in 0.01s ==") == {}
    assert runner.summary_counts("12.31s call     tests/test_x.py::test_y") == {}
    assert runner.summary_counts("tests/test_x.py ....  [ 40%]") == {}


def test_one_status_failures_first_then_interruptions_then_no_tests():
    assert runner.combined_status([0, 0]) == 0
    assert runner.combined_status([0, 5]) == 0  # one process's files had no selected test
    assert runner.combined_status([5, 5]) == 5
    assert runner.combined_status([2, 1]) == 1
    assert runner.combined_status([0, 2]) == 2
    assert runner.combined_status([0, 4]) == 4
    assert runner.combined_status([-9, 0]) == 137  # a process killed (SIGKILL): the shell's 128 + 9


def test_a_selection_runs_over_two_processes_and_reports_one_total():
    # every file is collected in one of the two processes; the -k selects three fast tests of this file
    before = runner.DURATIONS.read_text()
    res = subprocess.run(
        [sys.executable, "-m", "tests", "-j", "2", "-q", "-p", "no:cacheprovider",
         "-k", "summary_lines or one_status or arguments_split"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-2000:]
    assert "over 2 pytest processes" in out
    assert "[1/2]" in out and "[2/2]" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("python -m tests: 3 passed, ") and "deselected" in last and last.endswith("exit 0"), last
    slowest = next(line for line in out.splitlines() if line.startswith("slowest files: "))
    assert slowest.startswith("slowest files: tests/test_parallel_runner.py "), slowest  # the timing plugin
    assert runner.DURATIONS.read_text() == before  # written only when asked


def test_sigterm_stops_each_process_with_its_summary(tmp_path):
    """CI's timeout sends SIGTERM: every process gets SIGINT instead, so pytest stops and still prints
    its summary (on SIGTERM it would die without one), and the run's status says it was interrupted.
    Each process is held inside a test (tests/hold.py): one of the first file of each group is selected."""
    groups = runner.balance(runner.test_files(), runner.load_durations(), 2)
    assert len(groups) == 2
    selected = " or ".join(pathlib.Path(files[0]).stem for _, files in groups)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests", "-j", "2", "-q", "-p", "no:cacheprovider", "-p", "tests.hold", "-k", selected],
        cwd=ROOT, env=dict(os.environ, ATTN_TEST_HOLD=str(tmp_path / "held")), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while len(list(tmp_path.glob("held.*"))) < 2:  # both processes are inside a test
            assert proc.poll() is None and time.monotonic() < deadline, "the processes never reached a test"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    ends = re.findall(r"^\[\d/2\] \d+ files, exit (-?\d+): (.*)$", out, re.M)
    assert len(ends) == 2, out[-3000:]
    for code, summary in ends:
        assert code == "2" and "deselected in" in summary, (ends, out[-3000:])
    assert proc.returncode == runner.INTERRUPTED, out[-3000:]
    assert out.strip().splitlines()[-1].endswith("exit 2"), out[-3000:]
