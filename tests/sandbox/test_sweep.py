"""Sweeps: files with provenance, atomic partial results, resume; plots and the demo."""

import csv
import json
import os

import pytest

from sandbox import sweep as sweep_mod
from sandbox.cli import main
from sandbox.sweep import SweepSpec, load, run_sweep

SPEC = SweepSpec(kinds=("flash1", "flash2"), n=(128, 256, 512), head_dim=(16,), blocks=((16, 16), (32, 16)))


def test_sweep_writes_csv_and_json_with_provenance(tmp_path):
    path = str(tmp_path / "s.csv")
    rows = run_sweep(SPEC, path, argv=["python", "-m", "sandbox", "sweep"])
    assert len(rows) == 2 * 3 * 2
    with open(path) as f:
        header = [line for line in f if line.startswith("# ")]
    assert any(line.startswith("# numba-cuda: ") for line in header)
    assert any(line.startswith("# command: python -m sandbox sweep") for line in header)
    prov, json_rows = load(str(tmp_path / "s.json"))
    assert prov["backend"] and json_rows == rows == load(path)[1]
    # each row is the simulator's count for its point
    from sandbox import Problem, Schedule
    from sandbox.lab import simulate

    r = rows[0]
    rep = simulate(Schedule(r["kind"], block_q=r["block_q"], block_kv=r["block_kv"]), Problem(1, 1, r["n_q"], r["n_kv"], 16))
    assert r["hbm_bytes"] == rep.hbm_bytes and r["flops"] == rep.flops
    back = simulate(Schedule(r["kind"], block_q=r["block_q"], block_kv=r["block_kv"]), Problem(1, 1, r["n_q"], r["n_kv"], 16), backward=True)
    assert r["hbm_bytes_backward"] == back.hbm_bytes


def test_interrupted_sweep_leaves_valid_files_and_resumes(tmp_path, monkeypatch):
    path = str(tmp_path / "s.csv")
    done = []

    def interrupting(points):
        for i, p in enumerate(points):
            if i == 5:
                raise KeyboardInterrupt
            done.append(p)
            yield p

    with pytest.raises(KeyboardInterrupt):
        run_sweep(SPEC, path, progress=interrupting)
    _, partial = load(path)
    assert len(partial) == 5
    with open(str(tmp_path / "s.json")) as f:
        assert len(json.load(f)["rows"]) == 5  # valid JSON, not a torn write
    measured = []
    real = sweep_mod.measure_point
    monkeypatch.setattr(sweep_mod, "measure_point", lambda s, p, t=False: measured.append(1) or real(s, p, t))
    rows = run_sweep(SPEC, path)
    assert len(rows) == 12 and len(measured) == 12 - 5  # the first five were not recomputed
    assert rows == run_sweep(SPEC, str(tmp_path / "fresh.csv"))  # same rows, same order


def test_impossible_grid_is_refused():
    with pytest.raises(ValueError, match=r"impossible point Br=512 Bc=512 .* needs"):
        SweepSpec(kinds=("flash2",), blocks=((512, 512),)).points()
    with pytest.raises(ValueError, match="unknown schedule kind 'flash9'"):
        SweepSpec(kinds=("flash9",)).points()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--kind", "flash9", "--out", "x.csv"], "unknown schedule kind 'flash9'"),
        (["sweep", "--block", "4096x4096", "--out", "x.csv"], "impossible point Br=4096 Bc=4096"),
        (["sweep", "--experiment", "nope", "--out", "x.csv"], "unknown experiment 'nope'"),
        (["sweep", "--out", "/proc/forbidden/x.csv", "--n", "64", "--d", "8"], "/proc/forbidden"),
        (["plot", "hbm_vs_n", "--data", "/nonexistent.json"], "No such file"),
        (["plot", "nope", "--data", "x.json"], "unknown figure 'nope'"),
    ],
)
def test_cli_bad_sweeps_are_one_line_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_sweep_then_plot(tmp_path, capsys):
    out = str(tmp_path / "hbm.csv")
    assert main(["sweep", "--kind", "standard", "flash1", "flash2", "--n", "256", "512", "--d", "32", "--out", out]) == 0
    assert main(["plot", "hbm_vs_n", "--data", out, "--out", str(tmp_path / "fig")]) == 0
    for ext in ("png", "svg"):
        assert os.path.getsize(tmp_path / "fig" / f"hbm_vs_n.{ext}") > 1000
    with open(out) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert len(rows) == 6


def test_demo_writes_every_figure_and_the_kernel_check(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    from sandbox.plots import PLOTS

    for name in PLOTS:
        assert os.path.getsize(tmp_path / "figures" / f"{name}.png") > 1000
        assert os.path.exists(tmp_path / "data" / f"{name}.json")
    check = json.loads((tmp_path / "kernel_check.json").read_text())
    assert all(k["counts_agree"] and k["max_abs_error"] < 1e-5 for k in check["kinds"].values())
    assert "figures:" in capsys.readouterr().out


def test_timing_is_refused_under_the_simulator_and_skipped_in_sweeps(tmp_path):
    from sandbox import Problem, Schedule
    from sandbox.bench import time_attention
    from sandbox.runtime import using_simulator

    if not using_simulator():
        pytest.skip("checks the simulator's behaviour")
    with pytest.raises(RuntimeError, match="kernel timing needs a GPU"):
        time_attention(Schedule("flash2", block_q=8, block_kv=8), Problem(1, 1, 8, 8, 4))
    spec = SweepSpec(kinds=("flash2",), n=(64,), head_dim=(8,), blocks=((16, 16),), time_kernels=True)
    (row,) = run_sweep(spec, str(tmp_path / "t.csv"))
    assert row["runtime_ms"] is None and row["hbm_bytes"] > 0
