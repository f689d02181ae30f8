"""The roofline (``python -m sandbox roofline``): its arithmetic on hand-made numbers, the ceilings'
FLOP accounting, the whole GPU path under the CUDA simulator with a stand-in timer, the files it
writes and draws again without a GPU, and the command line."""

import dataclasses
import json
import os

import pytest

from sandbox.cli import build_parser, main
from sandbox.lab import ceilings as ceilings_module
from sandbox.lab import info, roofline
from sandbox.lab.ceilings import CHAINS, Ceilings, copy_bandwidth, fma_throughput, measure_ceilings, mma_throughput
from sandbox.lab.roofline import Entry, derive, entries, from_csv, predict, run_roofline
from sandbox.vocabulary.gpus import KNOWN_GPUS
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import Schedule

#: 1 TB/s, 10 TFLOP/s of FMAs, 60 TFLOP/s of TF32 (so 20 of 3xTF32).
CEILINGS = Ceilings(hbm_bytes_per_s=1e12, fma_flops_per_s=10e12, tf32_mma_flops_per_s=60e12)


# -- the model ------------------------------------------------------------------------------

def test_prediction_takes_the_larger_term_and_the_builds_ceiling():
    # 1 TFLOP of FMAs over 2 GB: compute 100 ms, memory 2 ms
    p = predict(2e9, 1e12, "fma", CEILINGS)
    assert p["intensity"] == 500 and p["ceiling_flops_per_s"] == 10e12
    assert p["memory_ms"] == pytest.approx(2.0) and p["compute_ms"] == pytest.approx(100.0)
    assert p["predicted_ms"] == pytest.approx(100.0) and p["bound"] == "compute"
    # the same FLOPs as 3xTF32: a third of 60 TFLOP/s, 50 ms
    p = predict(2e9, 1e12, "tf32x3", CEILINGS)
    assert p["ceiling_flops_per_s"] == pytest.approx(20e12) and p["predicted_ms"] == pytest.approx(50.0)
    # 50 GB and 0.1 TFLOP: memory 50 ms beats compute 10 ms
    p = predict(5e10, 1e11, "fma", CEILINGS)
    assert p["predicted_ms"] == pytest.approx(50.0) and p["bound"] == "memory" and p["intensity"] == 2


def test_derived_row_holds_what_it_achieved_and_the_error():
    row = derive({"hbm_bytes": 2e9, "flops": 1e12, "arithmetic": "fma", "ms": 125.0}, CEILINGS)
    assert row["rel_error"] == pytest.approx((125 - 100) / 125)
    assert row["achieved_flops_per_s"] == pytest.approx(8e12) and row["achieved_bytes_per_s"] == pytest.approx(1.6e10)
    faster = derive({"hbm_bytes": 2e9, "flops": 1e12, "arithmetic": "fma", "ms": 80.0}, CEILINGS)
    assert faster["rel_error"] == pytest.approx(-0.25)  # faster than predicted: a negative error
    untimed = derive({"hbm_bytes": 2e9, "flops": 1e12, "arithmetic": "fma", "ms": None}, CEILINGS)
    assert untimed["predicted_ms"] == pytest.approx(100.0) and "rel_error" not in untimed


def test_bad_ceilings_and_arithmetic_are_refused():
    with pytest.raises(ValueError, match="hbm_bytes_per_s: expected a positive finite number"):
        Ceilings(0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="tf32_mma_flops_per_s"):
        Ceilings(1.0, 1.0, float("inf"))
    with pytest.raises(ValueError, match="arithmetic: expected one of fma, tf32x3"):
        CEILINGS.flops_per_s("tf32")
    with pytest.raises(ValueError, match="hbm_bytes"):
        predict(0, 1e12, "fma", CEILINGS)
    # a file written before the 16-bit ceiling was measured has none: a 16-bit row cannot be predicted
    with pytest.raises(ValueError, match="'f16': its ceiling .* was not measured"):
        CEILINGS.flops_per_s("f16")
    assert dataclasses.replace(CEILINGS, f16_mma_flops_per_s=5e14).flops_per_s("f16") == 5e14


# -- the rows -------------------------------------------------------------------------------

def test_entries_cover_every_kind_and_flash2s_builds():
    from sandbox.lab.peers import ours

    p = Problem(2, 16, 4096, 4096, 128)
    rows = entries([p], backward=True)
    forward = {e.name: e for e in rows if e.direction == "fwd"}
    assert set(forward) == set(ours()) | {roofline.TC_ROW}
    assert {e.schedule.kind for e in rows} >= {"standard", "flash1", "flash2", "splitkv"}
    tc = forward[roofline.TC_ROW]
    assert (tc.schedule.math, tc.schedule.block_q, tc.schedule.block_kv, tc.fast) == ("tf32x3", 128, 32, True)
    assert forward["flash2"].schedule.math == "fma" and forward["flash2-plain"].fast is False
    assert {e.name for e in rows if e.direction == "bwd"} == {"standard", "flash1", "flash2", roofline.TC_ROW}
    counted = {(e.name, e.direction): roofline.counted(e) for e in rows}
    assert counted["flash2", "fwd"]["build"] == "fast-fma" and counted["flash2", "fwd"]["arithmetic"] == "fma"
    assert counted[roofline.TC_ROW, "fwd"]["arithmetic"] == counted[roofline.TC_ROW, "bwd"]["arithmetic"] == "tf32x3"
    assert counted["flash2-plain", "fwd"]["build"] == counted["flash2", "bwd"]["build"] == "plain"
    assert counted["flash2", "bwd"]["arithmetic"] == "fma"
    assert counted["flash2", "bwd"]["flops"] == 7 * 2 * 128 * 4096 * 4096 * 32 + 2 * 32 * 4096 * 128
    assert counted["flash2", "bwd"]["flops_convention"] == 10 * 32 * 128 * 4096 * 4096


def test_entries_of_16_bit_problems_add_the_16_bit_tensor_core_build():
    rows = entries([Problem(2, 16, 4096, 4096, 64, dtype="float16")])
    f16 = [e for e in rows if e.name == roofline.TC16_ROW]
    assert len(f16) == 1 and f16[0].direction == "fwd" and f16[0].fast is True
    assert (f16[0].schedule.math, f16[0].schedule.block_q, f16[0].schedule.block_kv) == ("f16", 128, 64)
    row = roofline.counted(f16[0])
    assert (row["build"], row["arithmetic"]) == ("fast-f16", "f16")
    assert not [e for e in entries([Problem(2, 16, 4096, 4096, 64)]) if e.name == roofline.TC16_ROW]


# -- the ceilings' accounting ---------------------------------------------------------------

def _timer(ms):
    """A stand-in for time_calls: runs every call once (so the kernels run), reports ``ms`` each time."""
    seen = []

    def timer(calls, repeats, warmup=0):
        for call in calls:
            call()
        seen.append((repeats, warmup))
        return [ms] * repeats

    timer.seen = seen
    return timer


def test_ceilings_count_the_flops_and_bytes_they_time():
    timer = _timer(2.0)
    bandwidth, copy = copy_bandwidth(4096, repeats=3, timer=timer)
    assert bandwidth == pytest.approx(2 * 4096 / 2e-3) and copy == {"copy_bytes": 4096, "ms": 2.0}
    fma, run = fma_throughput(sms=2, blocks_per_sm=1, threads=32, trips=3, repeats=3, timer=timer)
    assert run["flops"] == 2 * 32 * 3 * 2 * CHAINS * 4 and fma == pytest.approx(run["flops"] / 2e-3)
    tf32, run = mma_throughput(sms=1, blocks_per_sm=1, threads=64, trips=2, repeats=3, timer=timer)
    assert run["flops"] == 2 * 2 * CHAINS * 2 * 16 * 8 * 8 and tf32 == pytest.approx(run["flops"] / 2e-3)
    assert timer.seen == [(3, ceilings_module.WARMUP)] * 3


def test_measure_ceilings_with_small_runs():
    small = {k: {"blocks_per_sm": 1, "threads": 32, "trips": 1} for k in ("fma", "mma")}
    found, details = measure_ceilings(sms=1, copy_bytes=1024, repeats=1, timer=_timer(1.0), runs=small)
    assert found == Ceilings(2 * 1024 / 1e-3, 32 * 2 * CHAINS * 4 / 1e-3, CHAINS * 2048 / 1e-3, CHAINS * 4096 / 1e-3)
    assert set(details) == {"copy", "fma", "mma", "mma16"} and details["mma16"]["threads"] == 32


# -- the whole path under the simulator, and drawing it again -------------------------------

@pytest.fixture
def simulated_gpu(monkeypatch):
    """The device query answers for the simulator; an L2 of 1 byte: one input set."""
    monkeypatch.setattr(info, "device_facts", lambda: dataclasses.replace(KNOWN_GPUS["h200"], l2_bytes=1))


def test_run_roofline_under_the_simulator_then_from_csv(tmp_path, simulated_gpu):
    p = Problem(1, 1, 16, 16, 8)
    s = Schedule("flash2", block_q=8, block_kv=8, thread_q=4, thread_kv=4)
    too_big = dataclasses.replace(s, sram_bytes=1024)  # its tiles need more SRAM: counted as n/a, not run
    todo = [Entry("flash2-plain", "fwd", s, p, fast=False), Entry("flash2", "bwd", s, p),
            Entry("flash2-small", "fwd", too_big, p)]
    out = str(tmp_path / "r")
    rows, found, paths = run_roofline(out, todo, repeats=2, timer=lambda calls, repeats: [4.0] * repeats,
                                      require_gpu=False, ceilings=(CEILINGS, {"copy": {}}), argv=["test"])
    assert found == CEILINGS and [os.path.basename(x) for x in paths] == ["roofline.csv", "roofline.json",
                                                                         "roofline.png"]
    plain, back, small = rows
    assert plain["status"] == back["status"] == "ok" and small["status"].startswith("n/a: schedule flash2 Br=8")
    assert plain["ms"] == 4.0 and plain["max_err"] < 1e-4 and plain["build"] == "plain"
    assert plain["hbm_bytes"] == roofline.simulate(s, p).hbm_bytes and back["dir"] == "bwd"
    assert plain["rel_error"] == pytest.approx((4.0 - plain["predicted_ms"]) / 4.0)
    assert small["rel_error"] is None and all(os.path.getsize(x) > 0 for x in paths)
    with open(paths[1]) as f:
        doc = json.load(f)
    assert doc["ceilings"]["fma_flops_per_s"] == 10e12 and doc["provenance"]["command"] == "test"
    # drawn again from the CSV alone, without the GPU: the same predictions
    again, found_again, paths_again = from_csv(paths[0], str(tmp_path / "again"), argv=["again"])
    assert found_again == CEILINGS and os.path.getsize(paths_again[2]) > 0
    assert [a["name"] for a in again] == [r["name"] for r in rows]
    for column in ("predicted_ms", "rel_error", "achieved_flops_per_s"):
        assert [a[column] for a in again[:2]] == pytest.approx([r[column] for r in rows[:2]])
    assert again[2]["status"] == small["status"] and again[2]["predicted_ms"] is None


def _saved(tmp_path, rows, ceilings=CEILINGS):
    path = str(tmp_path / "in.csv")
    roofline.save(rows, ceilings, {"device": "a test GPU", "date": "today"}, path, str(tmp_path / "in.json"))
    return path


def _row(name, kind, build, arithmetic, hbm_bytes, flops, ms, direction="fwd", status="ok"):
    row = dict.fromkeys(roofline.COLUMNS)
    row.update(name=name, dir=direction, kind=kind, build=build, arithmetic=arithmetic, dtype="float32",
               causal=False, batch=2, heads=16, n=4096, d=64, hbm_bytes=hbm_bytes, flops=flops, ms=ms, status=status)
    return row


def test_figure_and_table_from_a_small_csv(tmp_path, capsys):
    """A hand-made file of three timed rows and one that failed: the command draws it without a GPU."""
    path = _saved(tmp_path, [
        _row("flash2", "flash2", "fast-fma", "fma", 2e9, 1e12, 125.0),
        _row("flash2-tf32x3", "flash2", "fast-tf32x3", "tf32x3", 2e9, 1e12, 60.0),
        _row("standard", "standard", "plain", "fma", 5e10, 1e11, 55.0, direction="bwd"),
        _row("splitkv", "splitkv", "plain", "fma", 2e9, 1e12, None, status="error: RuntimeError: boom"),
    ])
    out = str(tmp_path / "figs")
    assert main(["roofline", "--from-csv", path, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "+20%" in printed and "compute" in printed and "memory" in printed and "error: RuntimeError" in printed
    assert "3xTF32: 20.0" in printed
    assert os.path.getsize(os.path.join(out, "roofline.png")) > 0
    _, _, rows = roofline.load(os.path.join(out, "roofline.csv"))
    assert [r["predicted_ms"] for r in rows[:3]] == pytest.approx([100.0, 50.0, 50.0])
    assert [r["bound"] for r in rows] == ["compute", "compute", "memory", None]


@pytest.mark.parametrize("content, message", [
    ("# date: today\nname,ms\nflash2,1.0\n", "has no ceiling hbm_bytes_per_s"),
    ("# ceiling hbm_bytes_per_s: 1e12\n# ceiling fma_flops_per_s: 1e13\n# ceiling tf32_mma_flops_per_s: 6e13\n"
     "name,ms\nflash2,1.0\n", "has no column dir, kind, arithmetic, hbm_bytes, flops, status"),
])
def test_from_csv_of_another_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "x.csv"
    path.write_text(content)
    assert main(["roofline", "--from-csv", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_from_csv_without_a_timed_row_is_refused(tmp_path, capsys):
    path = _saved(tmp_path, [_row("flash1", "flash1", "plain", "fma", 2e9, 1e12, None, status="n/a: no room")])
    assert main(["roofline", "--from-csv", path, "--out", str(tmp_path / "o")]) == 2
    assert "has no timed row" in capsys.readouterr().err


# -- the command line -----------------------------------------------------------------------

def test_cli_roofline_arguments():
    a = build_parser().parse_args(["roofline", "--out", "r", "--d", "64", "--n", "1024", "2048", "--both-masks",
                                   "--backward", "--repeats", "3", "--copy-bytes", "4096"])
    assert (a.out, a.d, a.n, a.backward, a.tune, a.repeats, a.copy_bytes, a.from_csv) == (
        "r", [64], [1024, 2048], True, False, 3, 4096, None)
    assert (a.batch, a.heads, a.dtype) == (2, 16, ["float32"]) and a.both_masks
    default = build_parser().parse_args(["roofline"])
    assert (default.out, default.n, default.d, default.backward) == ("results/roofline", [4096], [64, 128], False)


def test_cli_roofline_needs_a_gpu_or_a_file(tmp_path, capsys):
    if not using_simulator():
        pytest.skip("checks the simulator's behaviour")
    assert main(["roofline", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roofline needs a GPU") and "--from-csv" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_cli_roofline_maps_its_arguments(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_run(out_dir, rows_to_run, rows=None, **kw):
        seen.update(out_dir=out_dir, todo=rows_to_run, **kw)
        rows.append(derive(_row("flash2", "flash2", "fast-fma", "fma", 2e9, 1e12, 125.0), CEILINGS))
        return rows, CEILINGS, ["a.csv", "a.json", "a.png"]

    monkeypatch.setattr(roofline, "run_roofline", fake_run)
    monkeypatch.setattr("sandbox.vocabulary.runtime.using_simulator", lambda: False)
    assert main(["roofline", "--out", str(tmp_path), "--d", "64", "--causal", "--backward", "--repeats", "4"]) == 0
    assert seen["out_dir"] == str(tmp_path) and seen["repeats"] == 4
    problems = {e.problem for e in seen["todo"]}
    assert problems == {Problem(2, 16, 4096, 4096, 64, causal=True)}
    assert {e.direction for e in seen["todo"]} == {"fwd", "bwd"}
    assert "+20%" in capsys.readouterr().out


@pytest.mark.gpu
def test_ceilings_on_the_gpu_are_near_the_datasheet():
    """The measured ceilings are what the kernels claim to reach: within reach of the datasheet's peaks
    (where the GPU is in the table of sandbox.vocabulary.gpus), and the tensor cores above the FMAs."""
    facts = info.device_facts()
    found, details = measure_ceilings(facts.sms, repeats=3)
    if facts.fp32_fma_flops:
        assert 0.5 * facts.fp32_fma_flops < found.fma_flops_per_s < 1.1 * facts.fp32_fma_flops, details
    if facts.hbm_bytes_per_s:
        assert 0.5 * facts.hbm_bytes_per_s < found.hbm_bytes_per_s < 1.05 * facts.hbm_bytes_per_s, details
    assert found.tf32_mma_flops_per_s > 2 * found.fma_flops_per_s, details
