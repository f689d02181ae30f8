"""The CLI: thin commands, one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from sandbox.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba-cuda" in out and "backend" in out


def test_simulate_prints_counts(capsys):
    assert main(["simulate", "--kind", "flash2", "--n", "1024", "--d", "64", "--causal"]) == 0
    out = capsys.readouterr().out
    assert "Q" in out and "HBM total" in out
    # Q is read from HBM exactly once by flash2: 1024·64 elements
    q_row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["Q"])
    assert q_row[1] == str(1024 * 64)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--kind", "flash3"], "unknown schedule kind 'flash3'"),
        (["simulate", "--block-q", "1024"], "needs 274432 bytes of SRAM"),
        (["simulate", "--n", "0"], "n_q: expected a positive int, got 0"),
        (["simulate", "--d", "300"], "head_dim=300 exceeds"),
        (["run", "--kind", "flash2", "--block-q", "0"], "block_q: expected a positive int, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_run_checks_kernels_against_numpy_and_the_simulator(capsys):
    assert main(["run", "--kind", "flash2", "--n", "12", "--d", "4", "--causal"]) == 0
    out = capsys.readouterr().out
    assert "measured == simulated" in out and "max |O - O_ref|" in out


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "sandbox", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "simulate" in res.stdout and "run" in res.stdout
