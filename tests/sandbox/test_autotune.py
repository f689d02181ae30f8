"""The autotuner's choice and its cache, with a stand-in timer (timings need a GPU; tests/kernels/test_fast.py
checks on one that the candidates compile without spilling)."""

import json
import os

import pytest

from sandbox import Schedule

from sandbox.lab import autotune


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
    backward = autotune.cache_key("NVIDIA H100 80GB HBM3", 64, "float16", False, backward=True)
    assert "|causal=False|backward deterministic|" in backward and backward.endswith(
        f"|kernel {autotune.kernel_hash(backward=True)}")
    atomic = autotune.cache_key("NVIDIA H100 80GB HBM3", 64, "float16", False, backward=True, deterministic=False)
    assert atomic == backward.replace("|backward deterministic|", "|backward atomic dQ|")  # tuned apart
    assert autotune.kernel_hash(backward=True) != autotune.kernel_hash()  # the fast backward's own source
    assert "kernels.backward_tc" in [m.__name__ for m in autotune.fast_build_modules(backward=True)]
    monkeypatch.setattr(autotune, "kernel_hash", lambda backward=False: "changed")
    assert autotune.cache_key("NVIDIA H100 80GB HBM3", 64, "float16", False) != key  # a changed kernel is tuned again


def test_the_backward_is_tuned_over_its_own_candidates(tmp_path, monkeypatch):
    monkeypatch.setattr("kernels.builds.device_smem_optin", lambda: 232448)  # an H200's opt-in shared memory
    blocks = {d: [(s.block_q, s.block_kv) for s in autotune.backward_candidates(d)] for d in (64, 128)}
    assert blocks[64] == list(autotune.BACKWARD_CANDIDATES)  # every one fits at d = 64
    assert blocks[128] == [(128, 64), (64, 128), (64, 64)]  # 256×128 and 128×128 need over 227 KB at d = 128
    assert autotune.backward_candidates(60) == []  # d not a multiple of 8
    # fp16 and bf16 inputs: the 16-bit fast backward's candidates too (fp32: none of them)
    for dtype in ("float16", "bfloat16"):
        maths = [(s.math, s.block_q, s.block_kv) for s in autotune.backward_candidates(64, dtype)]
        assert maths == ([("tf32x3", *b) for b in autotune.BACKWARD_CANDIDATES]
                         + [("f16", *b) for b in autotune.BACKWARD16_CANDIDATES])
    assert {s.math for s in autotune.backward_candidates(64, "float32")} == {"tf32x3"}
    fma = {"schedule": {"kind": "flash2", "block_q": 64, "block_kv": 64}, "ms": {"x": 1.0}}
    assert "not one the fast build runs" in autotune.entry_problem("G|d=64|float32|causal=False|backward deterministic|x",
                                                                   fma)
    times = {(s.block_q, s.block_kv): 10.0 + i for i, s in enumerate(autotune.backward_candidates(64))}
    best_key = max(times, key=times.get)
    times[best_key] = 1.0
    timer = lambda s, p: times[(s.block_q, s.block_kv)]  # noqa: E731
    best, entry = autotune.tune(64, path=tmp_path / "a.json", timer=timer, device_name="G", progress=None,
                                backward=True)
    assert (best.block_q, best.block_kv) == best_key and best.math == "tf32x3"
    cache = json.loads((tmp_path / "a.json").read_text())
    (key,) = cache
    assert "|backward deterministic|" in key and autotune.entry_problem(key, cache[key]) is None
    assert cache[key]["timing"] == "a caller's timer"
    forward, _ = autotune.tune(64, path=tmp_path / "a.json", timer=lambda s, p: 1.0, device_name="G", progress=None)
    assert len(json.loads((tmp_path / "a.json").read_text())) == 2  # the forward's entry beside it
    # dQ by atomics: its own entry, its own choice
    times[best_key], times[(64, 64)] = 5.0, 0.5
    atomic, _ = autotune.tune(64, path=tmp_path / "a.json", timer=timer, device_name="G", progress=None,
                              backward=True, deterministic=False)
    assert (atomic.block_q, atomic.block_kv) == (64, 64)
    cache = json.loads((tmp_path / "a.json").read_text())
    assert len(cache) == 3 and sum("|backward atomic dQ|" in k for k in cache) == 1
    again, _ = autotune.tune(64, path=tmp_path / "a.json", timer=timer, device_name="G", progress=None, backward=True)
    assert again == best  # the deterministic choice, from the cache
    with pytest.raises(ValueError, match="backward=True"):
        autotune.tune(64, path=tmp_path / "a.json", timer=timer, device_name="G", progress=None, deterministic=False)
    with pytest.raises(TypeError, match="True or False"):
        autotune.tune(64, path=tmp_path / "a.json", timer=timer, device_name="G", progress=None, backward=True,
                      deterministic=0)


def test_the_spill_check_compiles_the_build_each_mode_runs(monkeypatch):
    """The spill check compiles the atomic-dQ dkdv where the schedule has one (kernels/backward_tc.py,
    atomic_dq): in the GPU's order with dQ by atomics, in a fixed order (ORDERED_DQ) in the
    deterministic mode; elsewhere the dq kernel's build. A spill is reported."""
    from kernels.flash2_tc import tc_schedule

    built = []

    class Compiled:
        local_mem_per_thread = 0

    class Kernel:
        overloads = {"sig": Compiled()}

    def fake_build(schedule, head_dim, dtype, causal, chosen, backward=False, **extra):
        built.append((head_dim, causal, chosen.name, backward, extra))
        return {"dkdv": (Kernel(), None, None)}

    monkeypatch.setattr(autotune, "build", fake_build)
    paired = tc_schedule(64, 64)  # d = 128: paired, so the atomic-dQ dkdv exists
    assert autotune._local_memory(paired, 128, "float32", backward=True, causal=False, deterministic=False) == 0
    assert built == [(128, False, "fast-tf32x3", True, {"atomic_dq": True})]
    built.clear()
    assert autotune._local_memory(paired, 64, "float32", backward=True, causal=True, deterministic=False) == 0
    assert built == [(64, True, "fast-tf32x3", True, {})]  # d = 64: not paired, the dq kernel's build
    built.clear()
    autotune._local_memory(paired, 128, "float32", backward=True, deterministic=True)
    ordered = {"atomic_dq": True, "ordered_dq": True}  # causal and not, the deterministic build: dQ in order
    assert [b[4] for b in built] == [ordered, ordered]
    built.clear()
    autotune._local_memory(paired, 64, "float32", backward=True, causal=True, deterministic=True)
    assert built == [(64, True, "fast-tf32x3", True, {})]  # d = 64: the dq kernel
    Compiled.local_mem_per_thread = 16
    assert autotune._local_memory(paired, 128, "float32", backward=True, causal=False, deterministic=False) == 16


def test_candidates_are_ones_the_fast_build_takes():
    from kernels.builds import choose_build

    for d in (64, 128):
        cands = autotune.candidates(d)
        assert cands and all(choose_build(s, d).fast for s in cands)
    assert Schedule("flash2", block_q=64, block_kv=64) in autotune.candidates(64)  # the default is one
    fma8 = [s for s in autotune.candidates(8) if s.math == "fma"]
    assert fma8 and all(s.threads_kv == 8 for s in fma8)  # 8 divides d = 8
    assert any(s.math == "tf32x3" for s in autotune.candidates(64))  # and the tensor-core build's
    assert autotune.candidates(12) == []  # no FMA candidate's 16 or 8 threads per row divides d = 12, nor 8


def test_16_bit_inputs_are_also_tuned_over_the_16_bit_tensor_core_build(tmp_path):
    """fp16 and bf16 candidates include TC16_CANDIDATES (math="f16"); fp32's do not, and a cached
    f16 choice under an fp32 key is dropped."""
    for dtype in ("float16", "bfloat16"):
        f16 = [(s.block_q, s.block_kv, 8 * s.thread_q) for s in autotune.candidates(64, dtype) if s.math == "f16"]
        assert f16 == list(autotune.TC16_CANDIDATES)
    assert all(s.math != "f16" for s in autotune.candidates(64))  # fp32
    assert [s.math for s in autotune.candidates(24, "float16")].count("f16") == 0  # d not a multiple of 16
    times = {s.describe(): 5.0 for s in autotune.candidates(64, "bfloat16")}
    chosen = autotune.candidates(64, "bfloat16")[-1]
    times[chosen.describe()] = 1.0
    best, entry = autotune.tune(64, "bfloat16", path=tmp_path / "a.json", timer=lambda s, p: times[s.describe()],
                                device_name="G", progress=None)
    assert best == chosen and best.math == "f16" and len(entry["ms"]) == len(times)
    (key,) = json.loads((tmp_path / "a.json").read_text())
    assert autotune.entry_problem(key, entry) is None
    fp32_key = key.replace("|bfloat16|", "|float32|")
    assert "is not one the fast build runs at d=64, float32" in autotune.entry_problem(fp32_key, entry)


def test_no_candidate_ran(tmp_path):
    every = {(s.block_q, s.block_kv, s.thread_q, s.thread_kv): "fail" for s in autotune.candidates(64)}
    with pytest.raises(RuntimeError, match="no candidate ran at head_dim=64"):
        autotune.tune(64, path=tmp_path / "a.json", timer=fake_timer(every, []), device_name="G", progress=None)
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("text, reason", [("{not json", "not JSON"), ("[]", "got list"), ("null", "got NoneType"),
                                          ('"x"', "got str")])
def test_a_file_that_is_not_a_cache_is_named_set_aside_and_replaced(tmp_path, text, reason):
    path = tmp_path / "autotune.json"
    path.write_text(text)
    with pytest.warns(autotune.CacheWarning, match=f"{path} is not a cache .*{reason}.*set aside as {path}.bad-"):
        best, _ = autotune.tune(64, path=path, timer=fake_timer({}, []), device_name="G", progress=None)
    (bad,) = tmp_path.glob("autotune.json.bad-*")
    assert bad.read_text() == text  # kept for a look, out of the way
    assert Schedule(**json.loads(path.read_text())[autotune.cache_key("G", 64, "float32", False)]["schedule"]) == best
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary file left behind


def _entry(schedule, ms=1.0):
    import dataclasses

    return {"schedule": dataclasses.asdict(schedule), "ms": {schedule.describe(): ms}, "errors": {}}


@pytest.mark.parametrize("bad, reason", [
    (_entry(Schedule("standard", block_q=64, block_kv=64)), "a 'standard' schedule, not flash2's"),
    ({"schedule": {"kind": "flash2", "block_q": "x"}}, "not a schedule"),
    ({"schedule": {"kind": "flash2", "warp": 3}}, "not a schedule"),
    (_entry(Schedule("flash2", block_q=64, block_kv=64, thread_q=8, thread_kv=3)), "not one the fast build runs"),
    ({"schedule": None}, "no schedule"),
    ([], "no schedule"),
    ({**_entry(Schedule("flash2", block_q=64, block_kv=64)), "ms": "fast"}, "no candidate times"),
])
def test_a_bad_entry_is_dropped_named_and_tuned_again(tmp_path, bad, reason):
    path = tmp_path / "autotune.json"
    key = autotune.cache_key("G", 64, "float32", False)
    good_key = autotune.cache_key("G", 128, "float32", False)
    good = _entry(Schedule("flash2", block_q=128, block_kv=32, thread_q=4, thread_kv=4))
    path.write_text(json.dumps({key: bad, good_key: good}))
    calls = []
    with pytest.warns(autotune.CacheWarning, match=f"{path}: dropping the entry .*d=64.* \\(.*{reason}"):
        best, _ = autotune.tune(64, path=path, timer=fake_timer({(64, 32, 4, 4): 1.0}, calls), device_name="G",
                                progress=None)
    assert calls and best == Schedule("flash2", block_q=64, block_kv=32, thread_q=4, thread_kv=4)  # tuned again
    cache = json.loads(path.read_text())
    assert cache[good_key] == good and Schedule(**cache[key]["schedule"]) == best  # the bad entry replaced


def test_an_unwritable_cache_keeps_the_results_in_memory(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = blocker / "autotune.json"  # its folder cannot be made
    calls = []
    with pytest.warns(autotune.CacheWarning, match=f"{path} cannot be written.*in memory"):
        best, entry = autotune.tune(64, path=path, timer=fake_timer({(64, 32, 4, 4): 1.0}, calls),
                                    device_name="unwritable", progress=None)
    assert best == Schedule("flash2", block_q=64, block_kv=32, thread_q=4, thread_kv=4) and entry["ms"]
    timed = len(calls)
    again, _ = autotune.tune(64, path=path, timer=fake_timer({}, calls), device_name="unwritable", progress=None)
    assert again == best and len(calls) == timed  # not timed again in this process


def test_the_cache_is_written_atomically_with_the_usual_mode(tmp_path, monkeypatch):
    path = tmp_path / "autotune.json"
    old = os.umask(0o022)
    try:
        autotune.tune(64, path=path, timer=fake_timer({}, []), device_name="G", progress=None)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".tmp-*"))
    replaced = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append(b) or real(a, b))
    autotune.tune(128, path=path, timer=fake_timer({}, []), device_name="G", progress=None)
    assert replaced == [str(path)] and len(json.loads(path.read_text())) == 2


def test_tuned_schedule_without_a_gpu_says_it_needs_one(tmp_path):
    """Without the simulator and without a CUDA device: a RuntimeError saying so, not the driver's setup error."""
    import subprocess
    import sys

    from sandbox.vocabulary.runtime import gpu_present

    if gpu_present():
        pytest.skip("a GPU is present")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["ATTN_SANDBOX_CACHE"] = str(tmp_path)
    code = ("from sandbox.lab.autotune import tuned_schedule\n"
            "try:\n    tuned_schedule(64)\nexcept RuntimeError as e:\n    print('RuntimeError:', e)\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    # importing sandbox turns the CUDA simulator on where no GPU is present; either way the error says why
    assert out.stdout.startswith("RuntimeError: autotuning needs a GPU: "), out.stderr[-500:]


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_SANDBOX_CACHE", str(tmp_path))
    assert autotune.cache_path() == tmp_path / "autotune.json"


def test_timing_needs_a_gpu():
    from sandbox.vocabulary.runtime import using_simulator

    if not using_simulator():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="autotuning needs a GPU"):
        autotune.tune(64, device_name="G")


def test_tune_command_tunes_each_mask(monkeypatch, capsys):
    """``python -m sandbox tune --both-masks`` tunes the causal kernels too (the bench runs them)."""
    import sandbox.cli as cli
    import sandbox.vocabulary.runtime as runtime

    calls = []

    def fake_tune(d, dtype, causal=False, refresh=False, backward=False, deterministic=True):
        calls.append((d, dtype, causal) + (("backward",) if backward else ()) + (() if deterministic else ("atomic",)))
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
    calls.clear()
    args = cli.build_parser().parse_args(["tune", "--d", "64", "--backward"])
    assert args.func(args) == 0 and calls == [(64, "float32", False, "backward")]
    assert "backward d=64 float32: " in capsys.readouterr().out
    calls.clear()
    args = cli.build_parser().parse_args(["tune", "--d", "128", "--backward", "--atomic-dq"])
    assert args.func(args) == 0 and calls == [(128, "float32", False, "backward", "atomic")]
    assert "backward, atomic dQ, d=128 float32: " in capsys.readouterr().out
    args = cli.build_parser().parse_args(["tune", "--d", "128", "--atomic-dq"])
    assert args.func(args) == cli.EXIT_USAGE and calls == [(128, "float32", False, "backward", "atomic")]
    assert "add --backward" in capsys.readouterr().err
