"""The autotuner's choice and its cache, with a stand-in timer (timings need a GPU; tests/kernels/test_fast.py
checks on one that the candidates compile without spilling)."""

import json

import pytest

from sandbox import Schedule, autotune


def fake_timer(ms_by_tile, calls):
    def timer(schedule, problem):
        calls.append((schedule, problem))
        key = (schedule.block_q, schedule.block_kv, schedule.thread_q, schedule.thread_kv)
        if ms_by_tile.get(key) == "fail":
            raise RuntimeError("too many resources requested for launch")
        return ms_by_tile.get(key, 10.0)

    return timer


def test_picks_the_fastest_and_caches_it(tmp_path):
    path = tmp_path / "autotune.json"
    calls = []
    timer = fake_timer({(128, 32, 4, 4): 3.0, (64, 64, 4, 4): 4.0, (128, 64, 8, 4): "fail"}, calls)
    best, entry = autotune.tune(128, "float32", path=path, timer=timer, device_name="GPU X", progress=None)
    assert best == Schedule("flash2", block_q=128, block_kv=32, thread_q=4, thread_kv=4)
    expected = autotune.candidates(128)
    assert [c for c, _ in calls] == expected  # every candidate timed once, in order
    assert calls[0][1].n_q == autotune.TUNE_N and calls[0][1].head_dim == 128 and calls[0][1].bh == 32
    assert "too many resources" in entry["errors"]["flash2 Br=128 Bc=64 threads=16x16 tile=8x4 M=232448"]
    assert entry["ms"][best.describe()] == 3.0 and len(entry["ms"]) == len(expected) - 1
    # cached: the second call times nothing and returns the same choice
    again, _ = autotune.tune(128, "float32", path=path, timer=fake_timer({}, calls), device_name="GPU X", progress=None)
    assert again == best and len(calls) == len(expected)
    # another dtype, GPU or head_dim is a different key
    cache = json.loads(path.read_text())
    autotune.tune(128, "bfloat16", path=path, timer=timer, device_name="GPU X", progress=None)
    autotune.tune(128, "float32", path=path, timer=timer, device_name="GPU Y", progress=None)
    assert len(json.loads(path.read_text())) == len(cache) + 2
    # refresh times again
    before = len(calls)
    autotune.tune(128, "float32", path=path, timer=timer, device_name="GPU X", progress=None, refresh=True)
    assert len(calls) == before + len(expected)


def test_key_names_what_the_choice_depends_on(monkeypatch):
    key = autotune.cache_key("NVIDIA H100 80GB HBM3", 64, "float16", False)
    assert key.startswith("NVIDIA H100 80GB HBM3|d=64|float16|causal=False|numba-cuda ")
    assert key.endswith(f"|kernel {autotune.kernel_hash()}")
    monkeypatch.setattr(autotune, "kernel_hash", lambda: "changed")
    assert autotune.cache_key("NVIDIA H100 80GB HBM3", 64, "float16", False) != key  # a changed kernel is tuned again


def test_candidates_are_ones_the_fast_build_takes():
    from kernels.launch import use_fast

    for d in (64, 128):
        cands = autotune.candidates(d)
        assert cands and all(use_fast(s, d) for s in cands)
    assert Schedule("flash2", block_q=64, block_kv=64) in autotune.candidates(64)  # the default is one
    fma8 = [s for s in autotune.candidates(8) if s.math == "fma"]
    assert fma8 and all(s.threads_kv == 8 for s in fma8)  # 8 divides d = 8
    assert any(s.math == "tf32x3" for s in autotune.candidates(64))  # and the tensor-core build's
    assert autotune.candidates(12) == []  # no FMA candidate's 16 or 8 threads per row divides d = 12, nor 8


def test_no_candidate_ran(tmp_path):
    every = {(s.block_q, s.block_kv, s.thread_q, s.thread_kv): "fail" for s in autotune.candidates(64)}
    with pytest.raises(RuntimeError, match="no candidate ran at head_dim=64"):
        autotune.tune(64, path=tmp_path / "a.json", timer=fake_timer(every, []), device_name="G", progress=None)
    assert not (tmp_path / "a.json").exists()


def test_unreadable_cache_is_ignored_and_replaced(tmp_path, capsys):
    path = tmp_path / "autotune.json"
    path.write_text("{not json")
    best, _ = autotune.tune(64, path=path, timer=fake_timer({}, []), device_name="G", progress=None)
    assert "ignoring unreadable cache" in capsys.readouterr().err
    assert json.loads(path.read_text())  # rewritten whole
    assert not list(tmp_path.glob(".autotune-*"))  # no temporary file left behind


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_SANDBOX_CACHE", str(tmp_path))
    assert autotune.cache_path() == tmp_path / "autotune.json"


def test_timing_needs_a_gpu():
    from sandbox.runtime import using_simulator

    if not using_simulator():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="autotuning needs a GPU"):
        autotune.tune(64, device_name="G")


def test_tune_command_tunes_each_mask(monkeypatch, capsys):
    """``python -m sandbox tune --both-masks`` tunes the causal kernels too (the bench runs them)."""
    import sandbox.cli as cli
    import sandbox.runtime as runtime

    calls = []

    def fake_tune(d, dtype, causal=False, refresh=False):
        calls.append((d, dtype, causal))
        return Schedule("flash2", block_q=64, block_kv=64, thread_q=4, thread_kv=4), {"ms": {"x": 1.0}, "errors": {}}

    monkeypatch.setattr(autotune, "tune", fake_tune)
    monkeypatch.setattr(runtime, "using_simulator", lambda: False)
    args = cli.build_parser().parse_args(["tune", "--d", "64", "--both-masks"])
    assert args.func(args) == 0
    assert calls == [(64, "float32", False), (64, "float32", True)]
    assert "d=64 float32 causal: " in capsys.readouterr().out
    calls.clear()
    args = cli.build_parser().parse_args(["tune", "--d", "128", "--dtype", "float16", "--causal"])
    assert args.func(args) == 0 and calls == [(128, "float16", True)]
