"""The bench (``python -m sandbox bench``): everything but the GPU timings themselves.

The whole path of ``run_bench`` (inputs, float64 check, memory, rows, ratios, files) runs here
under the CUDA simulator with our kernels and stand-in peers, with a stand-in timer; PyTorch and
CuPy are not needed: the blog post's blockwise algorithm and the naive one are checked on NumPy arrays.
"""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from sandbox import Problem, Schedule, reference_attention, reference_attention_backward

from sandbox.lab import bench, bench_check, info
from sandbox.lab.bench import (
    BenchSpec, add_ratios, attention_flops, attention_pairs, format_table, is_oom, run_bench, short_message,
)
from sandbox.lab.bench_check import Reference, sample_pairs, sample_rows, tolerance
from sandbox.lab.peers import (
    Impl, Ours, Sdpa, blockwise_attention, default_schedules, implementations, make_input_sets, naive_attention,
    peak_extra_bytes, sdpa_unavailable_reason,
)
from sandbox.cli import main
from sandbox.vocabulary.gpus import KNOWN_GPUS
from sandbox.vocabulary.reference import causal_mask
from sandbox.vocabulary.runtime import using_simulator
from sandbox.lab.sweep import extra_hbm_bytes
from sandbox.lab.timing import rotation_sets, time_back_to_back, time_calls

MiB = 2**20


# -- FLOPs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_q, n_kv", [(1, 1), (5, 5), (7, 3), (3, 7), (64, 64), (100, 37), (37, 100)])
def test_causal_pairs_are_counted_exactly(n_q, n_kv):
    brute = sum(min(i + 1, n_kv) for i in range(n_q))
    assert attention_pairs(n_q, n_kv, True) == brute == int(causal_mask(n_q, n_kv).sum())
    assert attention_pairs(n_q, n_kv, False) == n_q * n_kv


def test_flops_forward_and_backward():
    p = Problem(2, 16, 1024, 1024, 64)
    assert attention_flops(p) == 4 * 2 * 16 * 64 * 1024 * 1024 == 8_589_934_592
    assert attention_flops(p, "bwd") == 2.5 * attention_flops(p)
    c = Problem(2, 16, 1024, 1024, 64, causal=True)
    assert attention_flops(c) == 4 * 2 * 16 * 64 * (1024 * 1025 // 2)
    assert attention_flops(c, "bwd") == 10 * 2 * 16 * 64 * (1024 * 1025 // 2)


# -- rotation and timing --------------------------------------------------------------------

def test_rotation_sets():
    l2 = 50 * MiB
    assert rotation_sets(24 * MiB, l2) == 5  # ⌈100 / 24⌉: B=2 H=16 N=1024 d=64 fp32 q, k, v
    assert rotation_sets(32 * MiB, l2) == 4  # with dO
    assert rotation_sets(50 * MiB, l2) == 2
    assert rotation_sets(1024, l2) == 8  # capped
    assert rotation_sets(2**30, l2) == 1  # one set is already 20x the L2
    assert rotation_sets(MiB, l2, free_bytes=12 * MiB) == 3  # a quarter of free memory
    assert rotation_sets(MiB, l2, free_bytes=MiB) == 1  # never zero
    assert rotation_sets(MiB, l2, free_bytes=float("inf")) == 8  # the simulator's "infinite" memory
    assert rotation_sets(2**30, l2, lo=2) == 2  # time_attention keeps its two sets
    assert rotation_sets(24 * MiB, 60 * MiB) == 5  # an H200: ⌈120 / 24⌉


def test_time_calls_warms_up_then_rotates_through_the_sets():
    seen = []
    calls = [lambda i=i: seen.append(i) for i in range(3)]
    times = time_calls(calls, repeats=7, warmup=2)
    assert seen == [0, 1] + [0, 1, 2, 0, 1, 2, 0]
    assert len(times) == 7


def test_time_back_to_back_warms_up_then_times_batches():
    seen = []
    calls = [lambda i=i: seen.append(i) for i in range(2)]
    times = time_back_to_back(calls, repeats=3, batches=4, warmup=1)
    assert seen == [0] + [0, 1, 0] * 4
    assert len(times) == 4  # (the simulator's events give no real times)


# -- tables and ratios ----------------------------------------------------------------------

def _row(impl, ours, tflops="", status="ok", n=1024, **kw):
    row = dict.fromkeys(bench.COLUMNS, "")
    row.update(impl=impl, ours=ours, dir="fwd", dtype="float32", causal=False, batch=2, heads=16, n=n, d=64,
               tflops=tflops, status=status, **kw)
    return row


def test_ratio_to_the_best_peer_and_the_table():
    rows = [
        _row("sdpa-efficient", False, 20.0, ms=0.5, peak_extra_mib=8.0, max_err=4e-7),
        _row("sdpa-math", False, 10.0, ms=1.0),
        _row("sdpa-flash", False, status="n/a: the flash backend takes fp16/bf16 only"),
        _row("flash2", True, 5.0, ms=2.0, peak_extra_mib=8.1),
        _row("standard", True, status="OOM: cannot allocate S (2, 16, 65536, 65536) float32 (512.00 GiB)"),
        _row("flash1", True, status="WRONG (max err 0.3 in O, tolerance 0.0005)", max_err=0.3),
        _row("flash2", True, 3.0, n=4096),  # a group with no peer: no ratio
        _row("sdpa-math", False, 99.0, status="WRONG (max err 1 in O, tolerance 0.0005)", n=4096),  # not a peer then
    ]
    add_ratios(rows)
    assert [r["x_best_peer"] for r in rows] == [1.0, 0.5, "", 0.25, "", "", "", ""]
    lines = format_table(rows).splitlines()
    assert "4·B·H·d" in lines[0] and "2.5x" in lines[0]
    header = lines[2].split()
    assert header[:2] == ["impl", "dir"] and "TFLOP/s" in header and "status" in header
    flash2 = lines[7].split()
    assert flash2[:2] == ["flash2", "fwd"] and flash2[6:10] == ["2", "5", "0.25", "8.1"] and flash2[-1] == "ok"
    assert lines[8].endswith("OOM: cannot allocate S (2, 16, 65536, 65536) float32 (512.00 GiB)")
    assert "WRONG (max err 0.3 in O" in lines[9] and "0.3" in lines[9].split("WRONG")[0]


def test_oom_messages_are_recognized_and_short(monkeypatch):
    import kernels.launch as launch

    class NoMemory:
        @staticmethod
        def device_array(shape, dtype):
            raise RuntimeError("[CUresult.CUDA_ERROR_OUT_OF_MEMORY] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(launch, "cuda", NoMemory)
    with pytest.raises(MemoryError) as ours:
        launch.device_empty((2, 16, 65536, 65536), np.float32, "S")
    assert is_oom(ours.value)
    assert short_message(ours.value) == "cannot allocate S (2, 16, 65536, 65536) float32 (512.00 GiB)"

    class OutOfMemoryError(RuntimeError):  # what torch.cuda.OutOfMemoryError is called
        pass

    torch_oom = OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 GiB. GPU 0 has a total capacity of "
                                 "79.19 GiB of which 78.51 GiB is free. Of the allocated memory ...")
    assert is_oom(torch_oom) and short_message(torch_oom) == "CUDA out of memory. Tried to allocate 512.00 GiB."
    assert not is_oom(ValueError("head_dim=300 exceeds"))
    assert short_message(ValueError("x" * 300), limit=50) == "x" * 47 + "..."


# -- the peers' algorithms, on NumPy --------------------------------------------------------

def _qkv(shape_q, n_kv, dtype, seed=0):
    rng = np.random.default_rng(seed)
    b, h, _, d = shape_q
    return (rng.standard_normal(shape_q).astype(dtype),
            *(rng.standard_normal((b, h, n_kv, d)).astype(dtype) for _ in range(2)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_kv, block", [(50, 50, 16), (33, 70, 32), (70, 33, 8), (16, 16, 128)])
def test_blog_blockwise_algorithm_is_attention(n_q, n_kv, block, causal):
    q, k, v = _qkv((2, 3, n_q, 8), n_kv, np.float32)
    out = blockwise_attention(q, k, v, block, causal, xp=np)
    assert out.dtype == np.float32 and out.shape == q.shape
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=causal), rtol=0, atol=2e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_blog_blockwise_and_naive_in_fp16(causal):
    q, k, v = _qkv((1, 2, 96, 16), 96, np.float16, seed=1)
    ref = reference_attention(q, k, v, causal=causal)
    atol = tolerance("float16", float(np.abs(v).max()))
    for out in (blockwise_attention(q, k, v, 32, causal, xp=np), naive_attention(q, k, v, causal, xp=np)):
        assert out.dtype == np.float16
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("causal", [False, True])
def test_naive_attention_is_attention(causal):
    q, k, v = _qkv((2, 2, 40, 8), 40, np.float32, seed=2)
    out = naive_attention(q, k, v, causal, scale=0.3, xp=np)
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=causal, scale=0.3), rtol=0, atol=2e-6)


# -- the float64 check ----------------------------------------------------------------------

def test_samples_and_tolerances():
    rows = sample_rows(16384)
    assert len(rows) == 128 and rows[0] == 0 and rows[-1] == 16383 and np.all(np.diff(rows) > 0)
    assert list(sample_rows(40)) == list(range(40))
    assert sample_pairs(2, 16, 4) == [(0, 0), (0, 10), (1, 5), (1, 15)]
    assert len(sample_pairs(2, 16, 32)) == 32
    assert tolerance("float32", 2.0) == pytest.approx(2e-4)
    assert tolerance("float16", 1.0) == pytest.approx(4 * 2**-11 + 1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_and_check_against_the_numpy_reference(causal, monkeypatch):
    from numba import cuda

    monkeypatch.setattr(bench_check, "CHUNK_ELEMENTS", 40 * 7)  # dK, dV in 6 chunks of 7 query rows
    monkeypatch.setattr(bench_check, "MAX_PAIRS_HOST", {"fwd": 6, "bwd": 6})
    monkeypatch.setattr(bench_check, "MAX_PAIRS", {"fwd": 6, "bwd": 6})
    problem = Problem(2, 3, 40, 40, 8, causal=causal)
    (inputs,) = make_input_sets(problem, 1, backward=True, seed=3, lib="numba")  # a NumPy reference
    q, k, v, dout = (x.copy_to_host() for x in inputs.arrays)
    fwd, bwd = Reference(inputs, problem, "fwd"), Reference(inputs, problem, "bwd")
    assert fwd.pairs == [(b, h) for b in range(2) for h in range(3)] and list(fwd.rows) == list(range(40))
    out = reference_attention(q, k, v, causal=causal)
    for (b, h), got in zip(fwd.pairs, fwd.expected["O"]):
        np.testing.assert_allclose(got, out[b, h], rtol=0, atol=1e-12)
    grads = reference_attention_backward(q, k, v, dout, causal=causal)
    for name, want in zip(("dQ", "dK", "dV"), grads):
        for (b, h), got in zip(bwd.pairs, bwd.expected[name]):
            np.testing.assert_allclose(got, want[b, h], rtol=0, atol=1e-12)
    tol = lambda scale: tolerance("float32", scale)  # noqa: E731
    assert fwd.check(cuda.to_device(out.astype(np.float32)), tol)[0]  # a Numba device array, as ours return
    off = out.copy()
    off[1, 2, 5, 3] += 0.5
    ok, err, atol, name = fwd.check(off, tol)
    assert not ok and err == pytest.approx(0.5) and name == "O" and atol == pytest.approx(1e-4 * np.abs(v).max())
    off[0, 0, 0, 0] = np.nan
    ok, err, _, _ = fwd.check(off, tol)
    assert not ok and np.isnan(err)
    assert bwd.check(grads, tol)[0]
    dk = grads[1].copy()
    dk[0, 1, 39, 0] += 1.0
    ok, err, _, name = bwd.check((grads[0], dk, grads[2]), tol)
    assert not ok and name == "dK" and err == pytest.approx(1.0)


# -- our kernels' memory and the registry ---------------------------------------------------

@pytest.mark.parametrize("kind", ["standard", "flash1", "flash2", "splitkv"])
def test_our_extra_memory_is_what_the_launcher_allocates(kind):
    problem = Problem(1, 1, 16, 16, 4)  # B·H·N = 16 rows of 4, N² = 256 scores
    splits = {"kv_splits": 3} if kind == "splitkv" else {}
    schedule = Schedule(kind, block_q=8, block_kv=8, thread_q=4, thread_kv=4, **splits)
    (inputs,) = make_input_sets(problem, 1, backward=True, lib="numba")
    fwd = peak_extra_bytes("numba", Ours(kind, "fwd", schedule).prepare(inputs, problem))
    o_bytes = 16 * 4 * 4
    assert fwd == o_bytes + extra_hbm_bytes(schedule, problem)  # O, L; and S, P (standard) or ℓ, m (flash1)
    assert fwd - o_bytes == {"standard": 16 * 4 + 2 * 256 * 4, "flash1": 3 * 16 * 4, "flash2": 16 * 4,
                             "splitkv": 16 * 4 + 3 * (o_bytes + 16 * 4)}[kind]  # 3 partial O and L
    if kind in ("standard", "flash2"):
        bwd = peak_extra_bytes("numba", Ours(kind, "bwd", schedule).prepare(inputs, problem))
        n_by_n = 2 * 256 * 4 if kind == "standard" else 0  # P and dS
        assert bwd == 3 * o_bytes + 16 * 4 + n_by_n  # dQ, dK, dV, D


def test_registry_and_schedules(monkeypatch):
    impls = implementations(backward=True)
    assert [(i.name, i.direction) for i in impls] == [
        ("sdpa-flash", "fwd"), ("sdpa-cudnn", "fwd"), ("sdpa-efficient", "fwd"), ("sdpa-math", "fwd"),
        ("cupy-naive", "fwd"), ("torch-blockwise", "fwd"), ("standard", "fwd"), ("flash1", "fwd"), ("flash2", "fwd"),
        ("flash2-plain", "fwd"), ("splitkv", "fwd"), ("sdpa-flash", "bwd"), ("sdpa-cudnn", "bwd"),
        ("sdpa-efficient", "bwd"), ("sdpa-math", "bwd"), ("standard", "bwd"), ("flash1", "bwd"), ("flash2", "bwd"),
        ("flash2-plain", "bwd"),
    ]
    assert [i.ours for i in impls[6:10]] == [True] * 4 and not any(i.ours for i in impls[:6])
    assert impls[8].schedule == impls[9].schedule == Schedule("flash2", block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    assert (impls[8].fast, impls[9].fast) == (None, False)  # flash2: the fast build where it runs; -plain: never
    tuned = implementations(["flash2"], backward=True, schedules=default_schedules(tune=True))
    assert tuned[0].schedule is None  # the autotuned one, per (head_dim, dtype)
    assert tuned[1].direction == "bwd" and tuned[1].schedule is None  # the backward's own tuned one
    assert impls[-1].fast is False and impls[-2].fast is None  # flash2-plain (bwd): the counting source
    assert default_schedules(block_q=32, tune=True)["flash2"].block_q == 32  # an override is not tuned away
    assert [i.name for i in implementations(["flash2", "sdpa-math"])] == ["sdpa-math", "flash2"]
    with pytest.raises(ValueError, match="unknown implementation 'flash3'"):
        implementations(["flash3"])
    tc = default_schedules(math="tf32x3")  # the tensor-core build's own 2 x Bc/4 tile unless one is given
    assert (tc["flash2"].thread_q, tc["flash2"].thread_kv, tc["flash2"].math) == (2, 16, "tf32x3")
    assert (tc["standard"].thread_q, tc["standard"].math) == (4, "fma")
    s = default_schedules(block_q=32, thread_kv=2)["standard"]
    assert (s.block_q, s.block_kv, s.thread_q, s.thread_kv) == (32, 64, 4, 2)
    fp32, fp16 = Problem(1, 1, 64, 64, 64), Problem(1, 1, 64, 64, 64, dtype="float16")
    monkeypatch.setattr("sandbox.lab.peers.torch_cuda", lambda: (True, ""))  # as on a GPU machine
    monkeypatch.setattr("sandbox.lab.peers.installed", lambda module: True)
    for name in ("sdpa-flash", "sdpa-cudnn"):
        assert Sdpa(name).available(fp32) == (False, f"{name} takes fp16/bf16 only")
        assert Sdpa(name).available(fp16) == (True, "")
    monkeypatch.setattr("sandbox.lab.peers.torch_cuda", lambda: (False, "torch is not installed"))
    assert Sdpa("sdpa-math").available(fp32) == (False, "torch is not installed")
    ok, why = Ours("flash2", "fwd", Schedule("flash2", block_q=64, block_kv=64)).available(Problem(1, 1, 64, 64, 300))
    assert not ok and "head_dim=300 exceeds" in why


def test_sdpa_refusal_reason():
    class W:
        message = "Flash attention kernel not used because:\nmore"

    no_kernel = RuntimeError("No available kernel. Aborting execution.")
    assert sdpa_unavailable_reason(no_kernel, [W()]) == "Flash attention kernel not used because:"
    assert sdpa_unavailable_reason(no_kernel) == "No available kernel. Aborting execution."
    assert sdpa_unavailable_reason(RuntimeError("CUDA error: illegal memory access")) is None


# -- the whole run, under the simulator -----------------------------------------------------

class _Peer(Impl):
    """A stand-in peer: correct (float64 NumPy), wrong (zeros), out of memory, interrupting, or absent."""

    memory = "numba"

    def __init__(self, name, behaviour, ms=2.0):
        super().__init__(name)
        self.behaviour, self.ms = behaviour, ms

    def available(self, problem):
        return (False, "not on this machine") if self.behaviour == "absent" else (True, "")

    def prepare(self, inputs, problem):
        from numba import cuda

        if self.behaviour == "oom":
            raise MemoryError("cannot allocate S (1, 1, 16, 16) float32 (0.00 GiB) on the GPU: out of memory")
        if self.behaviour == "interrupt":
            raise KeyboardInterrupt
        host = [x.copy_to_host() if hasattr(x, "copy_to_host") else x.cpu().numpy() for x in inputs.view("numba")[:3]]
        out = reference_attention(*host, causal=problem.causal).astype(problem.dtype)
        if self.behaviour == "wrong":
            out[:] = 0
        call = lambda: cuda.to_device(out)  # noqa: E731
        call.ms = self.ms
        return call


def _spec(peers, **kw):
    class Spec(BenchSpec):
        def implementations(self):
            ours = Ours("flash2", "fwd", Schedule("flash2", block_q=8, block_kv=8, thread_q=4, thread_kv=4))
            return [*peers, ours]

    return Spec(n=(16,), head_dim=(8,), batch=1, heads=1, repeats=3, warmup=1, **kw)


@pytest.fixture
def fake_timer(monkeypatch):
    # the device query answers for the simulator; an L2 of 1 byte: one input set, fewer simulator launches
    monkeypatch.setattr(info, "device_facts", lambda: dataclasses.replace(KNOWN_GPUS["h200"], l2_bytes=1))
    timed = []

    def timer(calls, repeats):
        ms = getattr(calls[0], "ms", 4.0)
        timed.append(ms)
        return [ms] * repeats

    timer.timed = timed
    return timer


def test_run_bench_rows_files_and_ratios(tmp_path, fake_timer):
    peers = [_Peer("good", "ok"), _Peer("wrong", "wrong"), _Peer("oom", "oom"), _Peer("absent", "absent")]
    path = str(tmp_path / "b.csv")
    rows = run_bench(_spec(peers), path, argv=["python", "-m", "sandbox", "bench"], timer=fake_timer,
                     require_gpu=False)
    status = {r["impl"]: r["status"] for r in rows}
    assert status["good"] == status["flash2"] == "ok"
    assert status["wrong"].startswith("WRONG (max err ") and "in O" in status["wrong"]
    assert status["oom"] == "OOM: cannot allocate S (1, 1, 16, 16) float32 (0.00 GiB)"
    assert status["absent"] == "n/a: not on this machine"
    assert fake_timer.timed == [2.0, 4.0]  # the good peer and flash2; never the wrong one
    good, wrong, flash2 = rows[0], rows[1], rows[-1]
    assert good["x_best_peer"] == 1.0 and flash2["x_best_peer"] == pytest.approx(0.5)
    assert flash2["tflops"] == pytest.approx(attention_flops(Problem(1, 1, 16, 16, 8)) / 4e-3 / 1e12)
    assert flash2["ms"] == flash2["ms_min"] == 4.0 and flash2["n_sets"] == 1 and flash2["ours"]
    assert flash2["max_err"] < flash2["tol"] and flash2["peak_extra_mib"] * MiB == 16 * 8 * 4 + 16 * 4  # O and L
    assert wrong["ms"] == "" and wrong["max_err"] > wrong["tol"]
    assert "Br=8 Bc=8" in flash2["schedule"]
    with open(path) as f:
        lines = f.read().splitlines()
    notes = [line for line in lines if line.startswith("# ")]
    assert any(n.startswith("# command: python -m sandbox bench") for n in notes)
    assert any(n.startswith("# git commit: ") for n in notes)
    assert any(n.startswith("# column tflops: ") and "Σ_i min(i+1, Nk)" in n for n in notes)
    table = list(csv.DictReader(line for line in lines if not line.startswith("# ")))
    assert [r["impl"] for r in table] == ["good", "wrong", "oom", "absent", "flash2"]
    assert float(table[-1]["x_best_peer"]) == pytest.approx(0.5)
    with open(tmp_path / "b.json") as f:
        doc = json.load(f)
    assert len(doc["rows"]) == 5 and doc["provenance"]["numba-cuda"] and "nvidia driver" in doc["provenance"]
    assert doc["rows"][-1]["status"] == "ok" and tuple(doc["columns"]) == bench.COLUMNS


def _rotation_l2(monkeypatch, tmp_path, **kw):
    """The L2 size run_bench's input rotation was computed for, and the provenance it wrote."""
    seen = []

    def spy(bytes_per_set, l2_bytes, *args, **kwargs):
        seen.append(l2_bytes)
        return 1

    monkeypatch.setattr(bench, "rotation_sets", spy)
    path = str(tmp_path / "b.csv")
    run_bench(_spec([]), path, timer=lambda calls, repeats: [1.0] * repeats, require_gpu=False, **kw)
    with open(os.path.splitext(path)[0] + ".json") as f:
        return seen, json.load(f)["provenance"]


def test_rotation_covers_the_devices_l2(monkeypatch, tmp_path):
    """The L2 size comes from the device query (an H200 here: 60 MiB), and the provenance records the facts."""
    h200 = dataclasses.replace(KNOWN_GPUS["h200"], source="read from the device")
    monkeypatch.setattr(info, "device_facts", lambda: h200)
    seen, prov = _rotation_l2(monkeypatch, tmp_path)
    assert seen == [62_914_560]
    assert prov["device facts"]["l2_bytes"] == 62_914_560 and prov["device facts"]["sms"] == 132
    assert prov["device facts"]["source"] == "read from the device"


def test_rotation_without_a_device_needs_the_machine_named(monkeypatch, tmp_path):
    monkeypatch.setattr(info, "device_facts", lambda: None)  # the CUDA simulator: nothing to read
    with pytest.raises(ValueError, match="gpu: no GPU to read the device facts"):
        _rotation_l2(monkeypatch, tmp_path)
    seen, prov = _rotation_l2(monkeypatch, tmp_path, gpu="h100")
    assert seen == [50 * MiB] and prov["device facts"]["name"] == KNOWN_GPUS["h100"].name


def test_interrupted_bench_keeps_the_rows_done(tmp_path, fake_timer):
    path = str(tmp_path / "b.csv")
    rows = []
    with pytest.raises(KeyboardInterrupt):
        run_bench(_spec([_Peer("good", "ok"), _Peer("stop", "interrupt")]), path, rows=rows, timer=fake_timer,
                  require_gpu=False)
    assert [r["impl"] for r in rows] == ["good"]
    _, on_disk = bench.load(path)
    assert [r["impl"] for r in on_disk] == ["good"] and on_disk[0]["status"] == "ok"
    with open(tmp_path / "b.json") as f:
        assert [r["impl"] for r in json.load(f)["rows"]] == ["good"]


def test_files_are_replaced_atomically(tmp_path, monkeypatch):
    path, json_path = str(tmp_path / "b.csv"), str(tmp_path / "b.json")
    bench.save([_row("sdpa-math", False, 10.0)], {"command": "x"}, path, json_path)
    with open(path) as f:
        before = f.read()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        bench.save([_row("sdpa-math", False, 10.0), _row("flash2", True, 1.0)], {"command": "x"}, path, json_path)
    with open(path) as f:
        assert f.read() == before  # the last complete file, not a torn one
    assert sorted(os.listdir(tmp_path)) == ["b.csv", "b.json"]  # no temporary left behind


# -- the command line -----------------------------------------------------------------------

def test_cli_bench_needs_a_gpu(tmp_path, capsys):
    if not using_simulator():
        pytest.skip("checks the simulator's behaviour")
    out = tmp_path / "b.csv"
    assert main(["bench", "--n", "64", "--d", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench needs a CUDA GPU: ") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--impl", "flash3"], "unknown implementation 'flash3'"),
        (["bench", "--repeats", "0"], "repeats: expected at least 1, got 0"),
        (["bench", "--block-q", "0"], "block_q: expected a positive int, got 0"),
        (["bench", "--n", "0"], "n_q: expected a positive int, got 0"),
        (["bench", "--thread-q", "1", "--thread-kv", "1"], "exceeds 1024 per block"),
    ],
)
def test_cli_bench_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_bench_masks_are_exclusive(capsys):
    assert main(["bench", "--causal", "--both-masks"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_bench_prints_the_table_and_maps_its_arguments(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_run_bench(spec, csv_path, progress=None, argv=None, rows=None):
        seen.update(spec=spec, csv_path=csv_path)
        rows.append(_row("sdpa-efficient", False, 20.0, ms=0.5, x_best_peer=1.0))
        rows.append(_row("flash2", True, status="WRONG (max err 0.3 in O, tolerance 0.0005)"))
        return rows

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    out = str(tmp_path / "x.csv")
    argv = ["bench", "--n", "1024", "4096", "--d", "64", "--both-masks", "--impl", "flash2", "sdpa-efficient",
            "--backward", "--block-kv", "32", "--dtype", "float16", "--out", out]
    assert main(argv) == 1  # a WRONG row fails the command
    spec = seen["spec"]
    assert (spec.n, spec.head_dim, spec.causal, spec.impls, spec.backward, spec.dtype) == (
        (1024, 4096), (64,), (False, True), ("flash2", "sdpa-efficient"), True, ("float16",))
    assert spec.schedules()["flash2"].block_kv == 32 and spec.repeats == 10 and seen["csv_path"] == out
    printed = capsys.readouterr().out
    assert "sdpa-efficient" in printed and "WRONG (max err 0.3" in printed and "2 rows in" in printed


def test_cli_bench_interrupt_prints_rows_done_and_exits_130(monkeypatch, capsys):
    def interrupted(spec, csv_path, progress=None, argv=None, rows=None):
        rows.append(_row("sdpa-math", False, 10.0, ms=1.0))
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_bench", interrupted)
    assert main(["bench", "--n", "64", "--d", "16"]) == 130
    captured = capsys.readouterr()
    assert "sdpa-math" in captured.out and "interrupted: 1 rows kept in bench.csv" in captured.err


def test_our_backward_rows_ask_for_the_fast_backward_where_it_runs(monkeypatch):
    """flash2's backward row asks for the (opt-in) fast backward where its schedule has one, the
    plain row never; a tuned backward schedule that cannot be had (no GPU here, or no candidate
    runs) leaves the row on the default schedule and the plain backward."""
    from kernels.flash2_tc import tc_schedule
    from sandbox.lab.peers import Ours

    p = Problem(1, 1, 64, 64, 64)
    assert Ours("flash2", "bwd", tc_schedule(64, 64)).fast_for(p) is True
    assert Ours("flash2", "bwd", tc_schedule(64, 64)).chosen(p).name == "fast-tf32x3"
    assert Ours("flash2-plain", "bwd", tc_schedule(64, 64), fast=False).chosen(p).name == "plain"
    assert Ours("flash2", "bwd", Schedule("flash2", block_q=64, block_kv=64)).fast_for(p) is None
    assert Ours("flash2", "fwd", tc_schedule(64, 64)).fast_for(p) is None  # the forward's own default
    untuned = Ours("flash2", "bwd", None)

    def no_candidate(*args, **kwargs):
        raise RuntimeError("autotune: no candidate ran")

    monkeypatch.setattr("sandbox.lab.peers.tuned_schedule", no_candidate)
    assert untuned.schedule_for(p) == default_schedules()["flash2"]
    assert untuned.chosen(p).name == "plain" and untuned.available(p) == (True, "")
    spec = bench.BenchSpec(n=(64,), head_dim=(64,), impls=("flash2", "sdpa-efficient"), backward_only=True)
    assert spec.backward and [(i.name, i.direction) for i in spec.implementations()] == [
        ("sdpa-efficient", "bwd"), ("flash2", "bwd")]


# -- grouped K/V heads (--heads-kv) ----------------------------------------------------------

def test_grouped_spec_rows_inputs_and_our_builds():
    """With H_kv < H every problem is grouped, k and v have H_kv heads, flash2's forward runs its
    fast build and the backward its plain one (the row's schedule says why), and the peers without
    grouped heads are n/a."""
    from kernels.builds import GROUPED_REFUSAL
    from sandbox.lab.peers import NO_GROUPED_HEADS, CupyNaive, TorchBlockwise

    spec = BenchSpec(n=(16,), head_dim=(8,), batch=1, heads=4, heads_kv=2, backward=True)
    p, = spec.problems()
    assert (p.heads, p.heads_kv, p.group) == (4, 2, 2)
    q, k, v, dout = make_input_sets(p, 1, True, lib="numba")[0].arrays
    assert q.shape == dout.shape == (1, 4, 16, 8) and k.shape == v.shape == (1, 2, 16, 8)
    fast = Ours("flash2", "fwd", Schedule("flash2", block_q=64, block_kv=64))
    assert fast.chosen(p).fast or using_simulator()
    assert GROUPED_REFUSAL not in fast.describe(p) and GROUPED_REFUSAL not in fast.describe(Problem(1, 4, 16, 16, 8))
    # a schedule whose fast backward runs ungrouped: grouped, the row asks for none
    from kernels.flash2_tc import tc_schedule

    bwd = Ours("flash2", "bwd", tc_schedule(64, 64))
    grouped64 = Problem(1, 4, 64, 64, 64, heads_kv=1)
    assert bwd.fast_for(Problem(1, 4, 64, 64, 64)) is True and bwd.fast_for(grouped64) is None
    assert bwd.chosen(grouped64).name == "plain" and GROUPED_REFUSAL in bwd.describe(grouped64)
    assert TorchBlockwise("torch-blockwise").available(p) == (False, NO_GROUPED_HEADS)
    assert CupyNaive("cupy-naive").available(p) == (False, NO_GROUPED_HEADS)
    label = bench.Task(p, fast).label
    assert label.endswith("H_kv=2") and "H_kv" not in bench.Task(Problem(1, 4, 16, 16, 8), fast).label
    # a backward row with no schedule of its own takes the default one grouped: the tuner chooses fast
    # backwards' blocks, and grouped calls run the plain backward
    from sandbox.lab.peers import default_schedules

    assert Ours("flash2", "bwd", None).schedule_for(p) == default_schedules()["flash2"]


class _GroupedPeer(Impl):
    """A stand-in peer for grouped heads: float64 attention with K/V head h // (H / H_kv), its inputs'
    shapes recorded; "refuse" raises SDPA's "No available kernel" after warning why, as PyTorch does."""

    memory = "numba"

    def __init__(self, name, direction="fwd", behaviour="ok"):
        super().__init__(name, direction)
        self.behaviour, self.seen = behaviour, []

    def prepare(self, inputs, problem):
        import warnings

        from numba import cuda

        q, k, v, dout = (None if x is None else x.copy_to_host() for x in inputs.view("numba"))
        self.seen.append((q.shape, k.shape, v.shape))
        if self.behaviour == "refuse":
            def refuse():
                warnings.warn("Efficient attention not used because: enable_gqa is not supported")
                raise RuntimeError("No available kernel. Aborting execution.")
            return refuse
        k_q, v_q = (np.repeat(x, problem.group, axis=1) for x in (k, v))
        if self.direction == "fwd":
            out = reference_attention(q, k_q, v_q, causal=problem.causal).astype(problem.dtype)
            return lambda: cuda.to_device(out)
        dq, dk, dv = reference_attention_backward(q, k_q, v_q, dout, causal=problem.causal)[:3]
        grads = [dq] + [x.reshape(x.shape[0], -1, problem.group, *x.shape[2:]).sum(axis=2) for x in (dk, dv)]
        return lambda: tuple(cuda.to_device(x.astype(problem.dtype)) for x in grads)


def test_run_bench_grouped_forward_and_backward(tmp_path, fake_timer):
    """The whole path with H = 4, H_kv = 2: our flash2's forward and backward (plain builds) and a
    grouped peer are checked against float64 (dK, dV summed over each group) and timed; a peer that
    refuses grouped heads is n/a with its reason; the rows and files carry H_kv."""
    peers = [_GroupedPeer("gqa-peer"), _GroupedPeer("gqa-peer", "bwd"), _GroupedPeer("gqa-refuses", behaviour="refuse")]
    schedule = Schedule("flash2", block_q=8, block_kv=8, thread_q=4, thread_kv=4)

    class Spec(BenchSpec):
        def implementations(self):
            return [peers[0], peers[2], Ours("flash2", "fwd", schedule), peers[1], Ours("flash2", "bwd", schedule)]

    spec = Spec(n=(16,), head_dim=(8,), batch=1, heads=4, heads_kv=2, repeats=2, warmup=0, backward=True)
    path = str(tmp_path / "g.csv")
    rows = run_bench(spec, path, timer=fake_timer, require_gpu=False)
    got = {(r["impl"], r["dir"]): r for r in rows}
    assert [r["status"] for r in rows] == ["ok", "n/a: Efficient attention not used because: enable_gqa is not supported",
                                           "ok", "ok", "ok"]
    assert all(r["heads"] == 4 and r["heads_kv"] == 2 for r in rows)
    for key in (("flash2", "fwd"), ("flash2", "bwd"), ("gqa-peer", "bwd")):
        assert got[key]["max_err"] <= got[key]["tol"], key
    assert "(fast-fma build)" in got["flash2", "fwd"]["schedule"] and "(plain build" in got["flash2", "bwd"]["schedule"]
    assert peers[0].seen[0] == ((1, 4, 16, 8), (1, 2, 16, 8), (1, 2, 16, 8))
    assert got["flash2", "fwd"]["x_best_peer"] == pytest.approx(1.0)  # the grouped peer is its group's best
    _, on_disk = bench.load(path)
    assert [r["heads_kv"] for r in on_disk] == ["2"] * 5


def test_a_wrong_grouped_gradient_is_caught():
    """dK of a K/V head is the sum over its group's query heads: one query head's share is WRONG."""
    p = Problem(1, 4, 16, 16, 8, heads_kv=2)
    inputs = make_input_sets(p, 1, True, lib="numba")[0]
    ref = Reference(inputs, p, "bwd")
    assert ref.kv_pairs == list(dict.fromkeys((b, h // 2) for b, h in ref.pairs)) == ref.pairs_of["dK"]
    q, k, v, dout = (x.copy_to_host() for x in inputs.arrays)
    k_q, v_q = (np.repeat(x, 2, axis=1) for x in (k, v))
    dq, dk, dv = reference_attention_backward(q, k_q, v_q, dout)[:3]
    summed = [x.reshape(1, 2, 2, 16, 8).sum(axis=2) for x in (dk, dv)]
    tol = lambda scale: tolerance(np.dtype("float32"), scale)  # noqa: E731
    assert ref.check((dq, *summed), tol)[0]
    ok, _, _, tensor = ref.check((dq, dk[:, ::2], summed[1]), tol)
    assert not ok and tensor == "dK"


def test_sdpa_is_called_with_enable_gqa(monkeypatch):
    """Sdpa's call for a grouped problem: q with H heads, k and v with H_kv, ``enable_gqa=True``;
    ungrouped, no ``enable_gqa`` (a torch before 2.5 takes none). PyTorch is replaced by a recorder."""
    import sys
    import types

    calls = []
    F = types.ModuleType("torch.nn.functional")
    F.scaled_dot_product_attention = lambda q, k, v, **kw: calls.append((q.shape, k.shape, v.shape, kw)) or q
    torch = types.ModuleType("torch")
    torch.nn = types.ModuleType("torch.nn")
    torch.nn.functional = F
    for name, module in (("torch", torch), ("torch.nn", torch.nn), ("torch.nn.functional", F)):
        monkeypatch.setitem(sys.modules, name, module)
    from sandbox.lab.peers import InputSet, sdpa_arguments

    p = Problem(1, 8, 16, 16, 8, heads_kv=2, causal=True)
    rng = np.random.default_rng(0)
    inputs = InputSet("torch", rng.standard_normal((1, 8, 16, 8)), *(rng.standard_normal((1, 2, 16, 8)),) * 2)
    Sdpa("sdpa-flash").prepare(inputs, p)()
    assert calls == [((1, 8, 16, 8), (1, 2, 16, 8), (1, 2, 16, 8),
                      {"is_causal": True, "scale": p.scale, "enable_gqa": True})]
    assert "enable_gqa" not in sdpa_arguments(Problem(1, 8, 16, 16, 8))


def test_cli_bench_heads_kv(monkeypatch, tmp_path):
    seen = {}

    def fake_run_bench(spec, csv_path, progress=None, argv=None, rows=None):
        seen["spec"] = spec
        return rows

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    assert main(["bench", "--heads", "8", "--heads-kv", "2", "--out", str(tmp_path / "x.csv")]) == 0
    assert seen["spec"].heads_kv == 2 and {p.heads_kv for p in seen["spec"].problems()} == {2}


def test_cli_bench_heads_kv_that_does_not_divide_is_one_line(capsys):
    assert main(["bench", "--heads", "8", "--heads-kv", "3"]) == 2
    err = capsys.readouterr().err
    assert "do not divide the 8 query heads" in err and err.count("\n") == 1


def test_atomic_dq_rows_follow_our_backward_rows():
    """``BenchSpec(atomic_dq=True)`` (``bench --atomic-dq``): after each of our kinds' backward rows its
    ``-atomic-dq`` twin, run with ``deterministic=False``, whose schedule column says whether this
    build adds dQ by atomics (the paired dkdv at d = 128, 64×64: yes; d = 64: no); the deterministic
    row's says where it adds them in a fixed order."""
    from kernels.flash2_tc import tc_schedule
    from sandbox.lab.bench import BenchSpec

    spec = BenchSpec(n=(256,), head_dim=(64,), impls=("flash2", "flash2-plain", "sdpa-efficient"), backward_only=True,
                     atomic_dq=True, block_q=64, block_kv=64, math="tf32x3")
    rows = [(i.name, i.direction, getattr(i, "deterministic", True)) for i in spec.implementations()]
    assert rows == [("sdpa-efficient", "bwd", True), ("flash2", "bwd", True), ("flash2-atomic-dq", "bwd", False),
                    ("flash2-plain", "bwd", True)]
    twin = spec.implementations()[2]
    assert twin.key == "flash2" and twin.fast_for(Problem(1, 1, 256, 256, 128)) is True
    assert twin.describe(Problem(1, 1, 256, 256, 64)).endswith("deterministic: no atomic dQ for this build)")
    paired = type(twin)("flash2", "bwd", tc_schedule(64, 64), deterministic=False)
    assert paired.describe(Problem(1, 1, 256, 256, 128)).endswith("; dQ by atomics)")
    ordered = type(twin)("flash2", "bwd", tc_schedule(64, 64))  # (deterministic: the same atomics, in order)
    assert ordered.describe(Problem(1, 1, 256, 256, 128)).endswith("; dQ by atomics in a fixed order)")
    assert type(twin)("flash2", "bwd", tc_schedule(64, 64)).describe(Problem(1, 1, 256, 256, 64)).endswith("build)")
