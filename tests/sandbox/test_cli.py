"""The CLI: thin commands, one-line errors with exit code 2."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sandbox.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        (["simulate", "--kind", "flash3"], "argument --kind: unknown schedule kind 'flash3'; expected one of standard"),
        (["sweep", "--kind", "flash3", "--out", "x.csv"], "unknown schedule kind 'flash3'"),
        (["sweep", "--experiment", "nope", "--out", "x.csv"],
         "argument --experiment: unknown experiment 'nope'; expected one of hbm_vs_sram, "),
        (["plot", "nope", "--data", "x.json"], "argument figure: unknown figure 'nope'"),
        (["simulate", "--n", "many"], "argument --n: invalid int value: 'many'"),
        (["simulate", "--math", "tf32x3", "--thread-q", "4", "--thread-kv", "4"],
         "math='tf32x3' needs the thread tile 2x16 (thread_q=2, thread_kv=block_kv/4)"),
        (["run", "--kind", "flash2", "--math", "tf32x3"], "math='tf32x3' needs block_q a multiple of 16"),
        (["simulate", "--math", "tf32x3", "--kind", "flash1"], "kind 'flash1' has no build with that arithmetic (kinds that have one: flash2"),
        (["simulate", "--block-q", "1024"], "needs 274432 bytes of SRAM"),
        (["simulate", "--n", "0"], "n_q: expected a positive int, got 0"),
        (["simulate", "--d", "300"], "head_dim=300 exceeds"),
        (["run", "--kind", "flash2", "--block-q", "0"], "block_q: expected a positive int, got 0"),
        (["demo", "--jobs", "0"], "expected a positive number of processes, got '0'"),
        (["sweep", "--experiment", "gqa_l2", "-j", "two"], "expected a positive number of processes, got 'two'"),
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


def test_tf32x3_takes_its_tile_by_default(capsys):
    assert main(["simulate", "--math", "tf32x3", "--n", "256", "--d", "64"]) == 0
    out = capsys.readouterr().out
    assert "flash2 Br=64 Bc=64 threads=32x4 tile=2x16" in out and "math=tf32x3" in out


def test_library_memory_error_is_one_line(monkeypatch, capsys):
    """A problem too large for this machine (the library's MemoryError) is one line, exit 2."""
    import sandbox.api

    def too_big(*args, **kwargs):
        return np.zeros(2**50, dtype=np.int64)  # 8 PiB: numpy's MemoryError, "Unable to allocate ..."

    monkeypatch.setattr(sandbox.api, "simulate", too_big)
    assert main(["simulate", "--n", "1099511627776", "--d", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not enough memory (Unable to allocate") and err.count("\n") == 1


def _sweep_file(tmp_path):
    assert main(["sweep", "--kind", "flash1", "flash2", "--n", "64", "128", "--d", "16", "--sram-bytes", "8192",
                 "16384", "--out", str(tmp_path / "my.csv")]) == 0
    return tmp_path / "my.json"


def test_sweep_provenance_holds_the_command_as_typed(tmp_path):
    from sandbox.lab.sweep import load

    prov, _ = load(str(_sweep_file(tmp_path)))
    assert prov["command"] == ("attention-sandbox sweep --kind flash1 flash2 --n 64 128 --d 16 --sram-bytes 8192 16384 "
                               f"--out {tmp_path / 'my.csv'}")


def test_plot_of_the_readme_sweep(tmp_path, capsys):
    """The README's sweep example (small) and plot hbm_vs_n: the figure's files."""
    data = _sweep_file(tmp_path)
    capsys.readouterr()
    assert main(["plot", "hbm_vs_n", "--data", str(data), "--out", str(tmp_path / "figs")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "figs" / f"hbm_vs_n.{e}") for e in ("png", "svg")]


@pytest.mark.parametrize(
    "figure, content, message",
    [
        ("hbm_vs_n", '{"rows": []}', "is not a sweep file: it has no 'provenance'"),
        ("hbm_vs_n", "not json", "is not a sweep file"),
        ("hbm_vs_n", "a,b\n1,2\n", "is not a sweep's CSV (no columns kind, "),
        ("gpt2_medium", "a,b\n1,2\n", "is not a sweep's CSV (no columns kind, "),
        ("block_size", None, "block_size draws one bar per Bc for one setting, and this sweep also varies kind"),
        ("hbm_vs_sram", None, "hbm_vs_sram draws the bounds for one N and d"),
    ],
)
def test_plot_of_a_file_it_cannot_draw_is_one_line(tmp_path, capsys, figure, content, message):
    if content is None:
        data = _sweep_file(tmp_path)
    else:
        data = tmp_path / ("data.csv" if content.startswith("a,b") else "data.json")
        data.write_text(content)
    capsys.readouterr()
    assert main(["plot", figure, "--data", str(data), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_version(capsys):
    from sandbox import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"attention-sandbox {__version__}\n"


def test_every_option_has_help():
    """--batch, --heads, --scale, --thread-tile, --out ...: every option of every subcommand says what it is."""
    import argparse

    from sandbox.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest} has no help"


def test_choices_come_from_the_library():
    import argparse

    from sandbox.lab.peers import impl_names
    from sandbox.cli import build_parser
    from sandbox.vocabulary.dtypes import SUPPORTED
    from sandbox.lab.experiments import EXPERIMENTS
    from sandbox.vocabulary.kinds import names
    from sandbox.vocabulary.schedule import MATHS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    opt = {(cmd, o): a.choices for cmd, p in sub.items() for a in p._actions for o in a.option_strings or [a.dest]}
    assert opt["simulate", "--kind"] == names() and opt["run", "--kind"] == names() + ("all",)
    assert opt["sweep", "--kind"] == names()
    for cmd in ("simulate", "run", "sweep", "bench", "tune"):
        assert tuple(opt[cmd, "--dtype"]) == SUPPORTED
    for cmd in ("simulate", "run", "bench"):
        assert tuple(opt[cmd, "--math"]) == MATHS
    assert tuple(opt["sweep", "--experiment"]) == tuple(EXPERIMENTS) == tuple(opt["plot", "figure"])
    assert tuple(opt["bench", "--impl"]) == impl_names()


def test_usage_names_the_command_as_it_was_run():
    """The console script's usage says attention-sandbox; python -m sandbox says python -m sandbox."""
    import shutil

    from sandbox.cli import build_parser

    assert build_parser().format_usage().startswith("usage: attention-sandbox ")
    res = subprocess.run([sys.executable, "-m", "sandbox", "simulate", "--kind", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.startswith("python -m sandbox simulate: error: argument --kind")
    assert res.stderr.count("\n") == 1
    script = shutil.which("attention-sandbox", path=os.path.dirname(sys.executable))
    if script:  # installed: its own name
        res = subprocess.run([script, "--help"], capture_output=True, text=True)
        assert res.stdout.startswith("usage: attention-sandbox ")
