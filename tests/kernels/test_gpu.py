"""Kernel checks that need a real GPU: long sequences, large shared memory, device arrays, the fast build."""

import re

import numpy as np
import pytest

from sandbox import Problem, Schedule

from sandbox.vocabulary import kinds
from sandbox import attention
from tests.strategies import KINDS, make_inputs
from tests.tolerances import tolerances

pytestmark = pytest.mark.gpu



def reference_rows(q, k, v, rows, causal, scale):
    """float64 attention for the selected query rows only (a full N×N reference at N = 16K is slow)."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = scale * np.einsum("bhid,bhjd->bhij", q64[:, :, rows], k64)
    if causal:
        s = np.where(np.arange(k.shape[2])[None, :] <= np.asarray(rows)[:, None], s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", p / l, v64), (m + np.log(l))[..., 0]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("n", [1024, 4096, 16384])
@pytest.mark.parametrize("kind", KINDS)
def test_long_sequences(kind, n, d, causal):
    problem = Problem(batch=1, heads=2, n_q=n, n_kv=n, head_dim=d, causal=causal)
    q, k, v = make_inputs(problem, seed=n + d)
    schedule = Schedule(kind, block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    out, lse = attention(q, k, v, schedule=schedule, causal=causal, return_lse=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    rng = np.random.default_rng(0)
    rows = np.unique(np.concatenate([[0, 1, 63, 64, n - 1], rng.integers(0, n, 59)]))
    ref_out, ref_lse = reference_rows(q, k, v, rows, causal, problem.scale)
    atol_out, atol_lse = tolerances(q[:, :, rows], k, v, ref_out, ref_lse, causal, problem.scale, "float32", rows=rows)
    np.testing.assert_allclose(out[:, :, rows], ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse[:, :, rows], ref_lse, rtol=0, atol=atol_lse)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_memory_above_48k(kind):
    """Br = Bc = 64 at d = 128 fp32 needs ~112 KB of shared memory: the opt-in attribute must be set."""
    schedule = Schedule(kind, block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    assert schedule.sram_footprint(128, "float32") > 48 * 1024
    problem = Problem(batch=1, heads=1, n_q=300, n_kv=200, head_dim=128, causal=True)
    q, k, v = make_inputs(problem, seed=2)
    from sandbox import reference_attention

    out = attention(q, k, v, schedule=schedule, causal=True)
    np.testing.assert_allclose(out, reference_attention(q, k, v, causal=True), rtol=0, atol=1e-5)


def test_schedule_over_the_device_limit_is_refused():
    from kernels.smem import device_smem_optin

    schedule = Schedule("flash2", block_q=128, block_kv=256, sram_bytes=2**21)
    need = schedule.sram_footprint(128, "float32")
    limit = device_smem_optin()
    assert need > limit
    x = np.zeros((1, 1, 8, 128), np.float32)
    with pytest.raises(ValueError, match=f"needs {need} bytes of shared memory per block but this GPU allows at most {limit}"):
        attention(x, x, x, schedule=schedule)


def test_fast_build_compiles_the_counters_away():
    from kernels.builds import choose_build
    from kernels.launch import build

    schedule = Schedule("flash2", block_q=32, block_kv=32)
    plain, counting = (choose_build(schedule, 64, count_io=c, fast=False) for c in (False, True))
    fast, _, _ = build(schedule, 64, "float32", False, plain)["main"]
    counting, _, _ = build(schedule, 64, "float32", False, counting)["main"]
    fast_ptx = next(iter(fast.inspect_asm().values()))
    counting_ptx = next(iter(counting.inspect_asm().values()))
    atomics = re.compile(r"^\s*(@%p\d+\s+)?(atom|red)\.", re.MULTILINE)  # PTX atomic/reduction instructions
    assert atomics.search(counting_ptx)
    assert not atomics.search(fast_ptx)
    fast_k, counting_k = (next(iter(x.overloads.values())) for x in (fast, counting))
    assert fast_k.local_mem_per_thread <= counting_k.local_mem_per_thread
    assert fast_k.regs_per_thread <= counting_k.regs_per_thread


@pytest.mark.parametrize("library", ["cupy", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_device_arrays_stay_on_the_device(kind, library):
    lib = pytest.importorskip(library)
    problem = Problem(batch=2, heads=3, n_q=100, n_kv=77, head_dim=32, causal=True)
    q, k, v = make_inputs(problem, seed=4)
    if library == "cupy":
        dq, dk, dv = (lib.asarray(x) for x in (q, k, v))
    else:
        dq, dk, dv = (lib.as_tensor(x, device="cuda") for x in (q, k, v))
    schedule = Schedule(kind, block_q=32, block_kv=32)
    out, lse, report = attention(dq, dk, dv, schedule=schedule, causal=True, return_lse=True, count_io=True)
    assert type(out) is type(dq) and type(lse) is type(dq)
    host_out, host_lse, host_report = attention(q, k, v, schedule=schedule, causal=True, return_lse=True, count_io=True)
    to_np = (lambda x: lib.asnumpy(x)) if library == "cupy" else (lambda x: x.cpu().numpy())
    np.testing.assert_array_equal(to_np(out), host_out)
    np.testing.assert_array_equal(to_np(lse), host_lse)
    assert report == host_report


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_fp16_long(kind, dtype):
    problem = Problem(batch=1, heads=1, n_q=2048, n_kv=2048, head_dim=64, dtype=dtype, causal=True)
    q, k, v = make_inputs(problem, seed=9)
    out = attention(q, k, v, schedule=Schedule(kind, block_q=64, block_kv=64), causal=True)
    rows = np.arange(0, 2048, 97)
    ref, ref_lse = reference_rows(q, k, v, rows, True, problem.scale)
    stores = 2048 // 64 + 1 if kind == "flash1" else 1
    atol, _ = tolerances(q[:, :, rows], k, v, ref, ref_lse, True, problem.scale, dtype, o_stores=stores, rows=rows)
    np.testing.assert_allclose(out[:, :, rows].astype(np.float64), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_bfloat16_tensors(kind):
    """PyTorch bfloat16 tensors (no __cuda_array_interface__) give bfloat16 tensors, bit-identical to the NumPy path."""
    torch = pytest.importorskip("torch")
    from sandbox import attention_backward

    problem = Problem(batch=1, heads=2, n_q=70, n_kv=90, head_dim=48, dtype="bfloat16", causal=True)
    q, k, v = make_inputs(problem, seed=5)
    dout = make_inputs(problem, seed=6)[0]
    to_t = lambda x: torch.from_numpy(x.view(np.int16)).cuda().view(torch.bfloat16)  # noqa: E731
    to_np = lambda t: t.view(torch.int16).cpu().numpy().view(q.dtype)  # noqa: E731
    schedule = Schedule(kind, block_q=32, block_kv=32)
    out, lse = attention(to_t(q), to_t(k), to_t(v), schedule=schedule, causal=True, return_lse=True)
    assert out.dtype == torch.bfloat16 and out.is_cuda and lse.dtype == torch.float32
    host_out, host_lse = attention(q, k, v, schedule=schedule, causal=True, return_lse=True)
    np.testing.assert_array_equal(to_np(out).view(np.uint16), host_out.view(np.uint16))
    np.testing.assert_array_equal(lse.cpu().numpy(), host_lse)
    if not kinds.get(kind).backward:
        return
    grads = attention_backward(to_t(q), to_t(k), to_t(v), out, lse, to_t(dout), schedule=schedule, causal=True)
    host_grads = attention_backward(q, k, v, host_out, host_lse, dout, schedule=schedule, causal=True)
    for g, hg in zip(grads, host_grads):
        assert g.dtype == torch.bfloat16
        np.testing.assert_array_equal(to_np(g).view(np.uint16), hg.view(np.uint16))


def test_static_plus_dynamic_shared_memory_over_48k():
    """Regression: a masked kernel adds 4 bytes of static shared memory (its tile vote); with exactly
    48 KB of dynamic shared memory (standard's PV product at d = 128, 64x64) the sum needs the opt-in."""
    from sandbox import masks, reference_attention

    schedule = Schedule("standard", block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    problem = Problem(batch=1, heads=1, n_q=70, n_kv=90, head_dim=128)
    q, k, v = make_inputs(problem, seed=3)
    mask = masks.sliding_window(5)
    out = attention(q, k, v, schedule=schedule, mask=mask)
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask=mask), rtol=0, atol=1e-5)



def test_lean_launch_passes_numbas_parameters():
    """kernels/launch.py's lean launch passes, argument by argument, the kernel parameters Numba's own
    launcher builds (its flattened array ABI; scalars as ctypes values), and the kernel launched
    Numba's way writes the same outputs, bit for bit."""
    from numba import cuda

    from kernels import launch

    problem = Problem(batch=2, heads=3, n_q=200, n_kv=130, head_dim=64, dtype="float16", causal=True)
    schedule = Schedule("flash2", 64, 64, math="f16")
    q, k, v = launch.to_device(list(make_inputs(problem, seed=3)), "qkv")
    out, lse, _, chosen = launch.run(schedule, problem, q, k, v, fast=True)
    (kernel, smem, grid), = launch.build(schedule, 64, "float16", True, chosen).values()
    overload, = kernel.overloads.values()
    args = (q, k, v, out, lse, np.float32(problem.scale), launch._counters(False))
    numbas = []
    for ty, val in zip(overload.argument_types, args):
        overload._prepare_args(ty, val, 0, [], numbas)

    def values(params):
        return [(type(x).__name__, x.value) if hasattr(x, "_type_") else x for x in params]

    assert values(launch.lean_args(overload, args, 0, [])) == values(numbas)
    o2, l2 = cuda.device_array_like(out), cuda.device_array_like(lse)
    kernel[grid(problem), (schedule.threads,), 0, smem](q, k, v, o2, l2, *args[5:])
    np.testing.assert_array_equal(o2.copy_to_host(), out.copy_to_host())
    np.testing.assert_array_equal(l2.copy_to_host(), lse.copy_to_host())
