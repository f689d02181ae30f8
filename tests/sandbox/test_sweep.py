"""Sweeps: files with provenance, atomic partial results, resume; plots and the demo."""

import csv
import dataclasses
import json
import os

import pytest

from sandbox.lab import records, sweep as sweep_mod
from sandbox.cli import main
from sandbox.lab.sweep import SweepSpec, load, run_sweep

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
    from sandbox import simulate

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
    from sandbox.lab.plots import PLOTS

    for name in PLOTS:
        assert os.path.getsize(tmp_path / "figures" / f"{name}.png") > 1000
        assert os.path.exists(tmp_path / "data" / f"{name}.json")
    check = json.loads((tmp_path / "kernel_check.json").read_text())
    assert all(k["counts_agree"] and k["max_abs_error"] < 1e-5 for k in check["kinds"].values())
    assert "figures:" in capsys.readouterr().out


def test_timing_is_refused_under_the_simulator_and_skipped_in_sweeps(tmp_path):
    from sandbox import Problem, Schedule
    from sandbox.lab.timing import time_attention
    from sandbox.vocabulary.runtime import using_simulator

    if not using_simulator():
        pytest.skip("checks the simulator's behaviour")
    with pytest.raises(RuntimeError, match="kernel timing needs a GPU"):
        time_attention(Schedule("flash2", block_q=8, block_kv=8), Problem(1, 1, 8, 8, 4))
    spec = SweepSpec(kinds=("flash2",), n=(64,), head_dim=(8,), blocks=((16, 16),), time_kernels=True)
    (row,) = run_sweep(spec, str(tmp_path / "t.csv"))
    assert row["runtime_ms"] is None and row["hbm_bytes"] > 0


# -- files under faults, and the sweep command's arguments ------------------------------------

SMALL = SweepSpec(kinds=("flash2",), n=(64, 128), head_dim=(8,), blocks=((16, 16),))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_cli_sweep_creates_the_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "s.csv"
    assert main(["sweep", "--kind", "flash2", "--n", "64", "--d", "8", "--block", "16x16", "--out", str(out)]) == 0
    assert len(_csv_rows(out)) == 1 and (tmp_path / "new" / "deeper" / "s.json").exists()


def test_the_destination_is_named_when_its_folder_is_missing(tmp_path):
    from sandbox.lab.records import atomic_write

    with pytest.raises(FileNotFoundError) as e:
        atomic_write(tmp_path / "missing" / "x.csv", "x")
    assert e.value.filename == str(tmp_path / "missing" / "x.csv")


@pytest.mark.parametrize("argv, message", [
    (["--block", "32x32", "--sram-bytes", "65536"], "--block and --sram-bytes both set the blocks: give one"),
    (["--time"], "--time needs a GPU"),
])
def test_cli_sweep_refuses_arguments_it_would_ignore(argv, message, tmp_path, capsys):
    from sandbox.vocabulary.runtime import using_simulator

    if "--time" in argv and not using_simulator():
        pytest.skip("a GPU is present: --time times the kernels")
    out = tmp_path / "s.csv"
    assert main(["sweep", "--kind", "flash2", "--n", "64", "--d", "8", "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_cli_sweep_sram_bytes_alone_uses_the_paper_rule(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sweep", "--kind", "flash2", "--n", "64", "--d", "8", "--sram-bytes", "1024", "--out", str(out)]) == 0
    (row,) = _csv_rows(out)
    from sandbox import Schedule

    rule = Schedule.from_sram(1024, head_dim=8, kind="flash2")
    assert (row["block_q"], row["block_kv"], row["sram_bytes"]) == (str(rule.block_q), str(rule.block_kv), "1024")


def test_an_infeasible_point_stops_the_sweep_keeping_the_points_before_it(tmp_path):
    spec = SweepSpec(kinds=("flash2",), n=(64, 128), head_dim=(8,), blocks=((16, 16), (1024, 1024)))
    path = str(tmp_path / "s.csv")
    from sandbox import Schedule

    with pytest.raises(ValueError) as why:
        Schedule("flash2", block_q=1024, block_kv=1024)
    with pytest.raises(ValueError, match=r"impossible point Br=1024 Bc=1024 d=8 float32 flash2: .+; --skip-infeasible"):
        run_sweep(spec, path)
    (row,) = load(path)[1]
    assert (row["n_q"], row["block_q"], row["infeasible"]) == (64, 16, None)
    rows = run_sweep(spec, path, skip_infeasible=True)
    assert rows.already_done == 1 and rows.infeasible == 2 and len(rows) == 4
    bad = [r for r in rows if r["infeasible"]]
    assert [(r["n_q"], r["block_q"]) for r in bad] == [(64, 1024), (128, 1024)]
    assert all(r["infeasible"] == str(why.value) and r["hbm_bytes"] is None for r in bad)
    assert all(r["hbm_bytes"] > 0 for r in rows if not r["infeasible"])
    assert load(str(tmp_path / "s.json"))[1] == rows == load(path)[1]


def test_cli_skip_infeasible_says_how_many_and_plots_leave_them_out(tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    argv = ["sweep", "--kind", "flash2", "--n", "64", "128", "--d", "8", "--block", "16x16", "1024x1024", "--out", out]
    assert main(argv) == 2
    assert "--skip-infeasible" in capsys.readouterr().err
    assert main(argv + ["--skip-infeasible"]) == 0
    assert "4 points (2 infeasible" in capsys.readouterr().out
    assert main(["plot", "hbm_vs_n", "--data", out, "--out", str(tmp_path / "fig")]) == 0
    assert os.path.getsize(tmp_path / "fig" / "hbm_vs_n.png") > 1000


def test_another_grid_on_the_same_files_is_refused_unless_appended(tmp_path):
    path = str(tmp_path / "s.csv")
    run_sweep(SMALL, path, argv=["python", "-m", "sandbox", "sweep", "--n", "64", "128"])
    other = dataclasses.replace(SMALL, n=(256,))
    with pytest.raises(ValueError, match="holds another grid's points: .*--append"):
        run_sweep(other, path, argv=["python", "-m", "sandbox", "sweep", "--n", "256"])
    assert len(load(path)[1]) == 2  # untouched
    rows = run_sweep(other, path, argv=["python", "-m", "sandbox", "sweep", "--n", "256", "--append"], append=True)
    assert [r["n_q"] for r in rows] == [64, 128, 256] and rows.already_done == 0
    for prov, _ in (load(path), load(str(tmp_path / "s.json"))):
        assert prov["commands"] == ["python -m sandbox sweep --n 64 128", "python -m sandbox sweep --n 256 --append"]
        assert prov["grids"] == [SMALL.axes(), other.axes()]
    again = run_sweep(SMALL, path, argv=["python", "-m", "sandbox", "sweep", "--n", "64", "128"])  # either grid resumes
    assert again.already_done == 2 and len(again) == 3


def test_a_resume_says_how_many_points_were_done(tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    argv = ["sweep", "--kind", "flash2", "--n", "64", "128", "--d", "8", "--block", "16x16", "--out", out]
    assert main(argv) == 0
    assert "resumed" not in capsys.readouterr().out
    assert main(argv) == 0
    assert f"resumed: 2 points were already in {out}" in capsys.readouterr().out


def _damage(path):
    """Cut the last row short, put junk in one value and a NUL byte in another row."""
    with open(path) as f:
        lines = f.readlines()
    data = [i for i, line in enumerate(lines) if line[0] not in "#k"]  # rows (the header starts with "kind")
    fields = lines[data[0]].split(",")
    fields[COLUMNS_INDEX["hbm_bytes"]] = "12x4"
    lines[data[0]] = ",".join(fields)
    lines[data[1]] = lines[data[1]].replace(",", ",\x00", 1)
    lines[data[-1]] = lines[data[-1]][: len(lines[data[-1]]) // 2]
    with open(path, "w") as f:
        f.writelines(lines)


COLUMNS_INDEX = {c: i for i, c in enumerate(sweep_mod.COLUMNS)}


def test_damaged_rows_are_recomputed_on_resume(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "s.csv")
    fresh = run_sweep(SPEC, path)
    _damage(path)
    measured = []
    real = sweep_mod.measure_point
    monkeypatch.setattr(sweep_mod, "measure_point", lambda s, p, t=False: measured.append(1) or real(s, p, t))
    rows = run_sweep(SPEC, path)
    assert rows == fresh and rows.damaged == 3 and len(measured) == 3 and rows.already_done == 12 - 3
    assert load(str(tmp_path / "s.json"))[1] == fresh == load(path)[1]
    _damage(path)
    assert main(["sweep", "--kind", "flash1", "flash2", "--n", "128", "256", "512", "--d", "16",
                 "--block", "16x16", "32x16", "--out", path]) == 0
    assert f"3 damaged rows in {path} were left out and their points computed again" in capsys.readouterr().out
    assert load(path)[1] == fresh


def test_a_file_that_is_not_a_sweep_is_not_overwritten(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match=f"{path} is not a sweep's CSV"):
        run_sweep(SMALL, str(path))
    assert path.read_text() == "name,value\na,1\n"


def test_cli_out_json_keeps_the_csv_and_json_apart(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["sweep", "--kind", "flash2", "--n", "64", "--d", "8", "--block", "16x16", "--out", str(out)]) == 0
    assert len(_csv_rows(tmp_path / "s.csv")) == 1
    assert len(json.loads(out.read_text())["rows"]) == 1
    assert f"in {tmp_path / 's.csv'} and {out}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="csv_path and json_path are both"):
        run_sweep(SMALL, str(tmp_path / "t.csv"), json_path=str(tmp_path / "t.csv"))


def test_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        run_sweep(SMALL, str(tmp_path / "s.csv"))
    finally:
        os.umask(old)
    assert {os.stat(tmp_path / f).st_mode & 0o777 for f in ("s.csv", "s.json")} == {0o644}


@pytest.mark.parametrize("argv0, typed", [
    ("/venv/lib/python3.12/site-packages/sandbox/__main__.py", "python -m sandbox"),
    ("/venv/bin/attention-sandbox", "attention-sandbox"),
])
def test_provenance_records_the_command_as_typed(argv0, typed, tmp_path):
    argv = [argv0, "sweep", "--n", "64", "128", "--out", "my results.csv"]
    assert records.command_line(argv) == f"{typed} sweep --n 64 128 --out 'my results.csv'"
    run_sweep(SMALL, str(tmp_path / "s.csv"), argv=argv)
    assert load(str(tmp_path / "s.json"))[0]["command"] == f"{typed} sweep --n 64 128 --out 'my results.csv'"


def test_json_rows_hold_typed_values(tmp_path):
    run_sweep(SMALL, str(tmp_path / "s.csv"))
    row = json.loads((tmp_path / "s.json").read_text())["rows"][0]
    assert row["kind"] == "flash2" and row["dtype"] == "float32" and row["causal"] is False
    assert all(type(row[c]) is int for c in ("batch", "n_q", "block_q", "sram_bytes", "hbm_bytes", "flops"))
    assert row["runtime_ms"] is None and row["infeasible"] is None


SLOW_SWEEP = """
import sys, time
from sandbox.vocabulary.runtime import ensure_backend
ensure_backend()
from sandbox.lab.sweep import SweepSpec, run_sweep

def slow(points):
    for i, p in enumerate(points):
        if i == 2:
            print("ready", flush=True)
            time.sleep(60)
        yield p

spec = SweepSpec(kinds=("flash2",), n=(64, 128, 256, 512), head_dim=(8,), blocks=((16, 16),))
run_sweep(spec, sys.argv[1], progress=slow, flush_seconds=1e9, argv=["python", "-m", "sandbox", "sweep", "--slow"])
"""


def _start_slow_sweep(path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SLOW_SWEEP, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    with proc.stdout:
        assert proc.stdout.readline() == "ready\n"  # two points done, none saved yet
    return proc


def test_sigterm_saves_csv_and_json_before_exiting(tmp_path):
    import signal

    path = str(tmp_path / "s.csv")
    proc = _start_slow_sweep(path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    (_, rows), (_, json_rows) = load(path), load(str(tmp_path / "s.json"))
    assert [r["n_q"] for r in rows] == [64, 128] and json_rows == rows
    assert sorted(os.listdir(tmp_path)) == ["s.csv", "s.json"]  # lock released, no temporary left


def test_a_second_writer_is_refused_naming_the_first_and_a_stale_lock_taken_over(tmp_path, capsys):
    import signal
    import socket
    import subprocess
    import sys

    path = str(tmp_path / "s.csv")
    proc = _start_slow_sweep(path)
    try:
        with pytest.raises(sweep_mod.SweepLockedError,
                           match=f"pid {proc.pid} on {socket.gethostname()} .*python -m sandbox sweep --slow"):
            run_sweep(dataclasses.replace(SMALL, n=(32,)), path, append=True)
        assert main(["sweep", "--kind", "flash2", "--n", "32", "--d", "8", "--out", path, "--append"]) == 2
        err = capsys.readouterr().err
        assert f"another sweep is writing these files: pid {proc.pid}" in err and err.count("\n") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "s.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "gone"}))
    rows = run_sweep(dataclasses.replace(SMALL, n=(32,)), path, append=True)
    assert [r["n_q"] for r in rows] == [64, 128, 32] and not lock.exists()
