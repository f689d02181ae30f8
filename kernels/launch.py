"""Compile (once, cached) and launch the kernels of a schedule; move arrays between host and device.

Every launch goes to one stream, the CUDA default (legacy) stream, which orders itself with
CuPy's and PyTorch's default streams without any host synchronization. Device inputs are
wrapped with ``sync=False`` (Numba would otherwise synchronize on every CUDA-array-interface
argument); the host waits only where the caller needs data: copies back to NumPy, and the
IO counters.
"""

import functools

import numpy as np
from numba import cuda, float32, from_dtype, int64, void

from kernels.counters import new_counters, to_report
from kernels.flash1 import make_flash1
from kernels.flash2 import make_flash2
from kernels.smem import allow_dynamic_smem, check_device_limit
from kernels.standard import make_standard
from sandbox.runtime import using_simulator


def _arr(dt, ndim):
    return from_dtype(np.dtype(dt))[(slice(None),) * (ndim - 1) + (slice(None, None, 1),)]


def _signatures(kind, dtype):
    IN4, F3, F4, C = _arr(dtype, 4), _arr(np.float32, 3), _arr(np.float32, 4), int64[::1]
    if kind == "flash2":
        return {"main": (IN4, IN4, IN4, IN4, F3, float32, C)}
    if kind == "flash1":
        return {"main": (IN4, IN4, IN4, IN4, F3, F3, F3, float32, C)}
    return {"qk": (IN4, IN4, F4, float32, C), "softmax": (F4, F4, F3, C), "pv": (F4, IN4, IN4, C)}


@functools.lru_cache(maxsize=256)
def build(schedule, head_dim, dtype_name, causal, count_io):
    """Compiled kernels for one (schedule, head_dim, dtype, causal, count_io), in launch order.

    Returns:
        tuple of (phase, kernel, smem_bytes, grid(problem)).
    """
    dtype = np.dtype(dtype_name)
    if schedule.kind == "standard":
        phases = make_standard(schedule, head_dim, dtype, count_io, causal)
    else:
        maker = make_flash2 if schedule.kind == "flash2" else make_flash1
        phases = {"main": maker(schedule, head_dim, dtype, count_io, causal)}
    out = []
    for phase, sig in _signatures(schedule.kind, dtype).items():
        py_func, smem_bytes, grid = phases[phase]
        signature = void(*sig)
        kernel = cuda.jit(signature)(py_func)
        if not using_simulator():
            allow_dynamic_smem(kernel.overloads[signature.args], smem_bytes)
        out.append((phase, kernel, smem_bytes, grid))
    return tuple(out)


def _device_empty(shape, dtype, what):
    try:
        return cuda.device_array(shape, dtype=dtype)
    except Exception as e:  # numba raises CudaAPIError / MemoryError variants for OOM
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise MemoryError(
            f"cannot allocate {what} {shape} {np.dtype(dtype).name} ({nbytes / 2**30:.2f} GiB) on the GPU: {e}"
        ) from e


def run(schedule, problem, q, k, v, count_io=False):
    """Run ``schedule`` on device arrays q, k, v (Numba device arrays, C-contiguous).

    Returns:
        (out, lse, report): device arrays (B, H, Nq, d) in the input dtype and (B, H, Nq)
        fp32, and the measured IOReport (None unless ``count_io``).
    """
    check_device_limit(schedule.sram_footprint(problem.head_dim, problem.dtype))  # before any attribute or launch
    launches = build(schedule, problem.head_dim, problem.dtype.name, problem.causal, bool(count_io))
    stream = cuda.default_stream()
    b, h, n_q, n_kv, d = problem.batch, problem.heads, problem.n_q, problem.n_kv, problem.head_dim
    out = _device_empty((b, h, n_q, d), problem.dtype, "O")
    lse = _device_empty((b, h, n_q), np.float32, "L")
    counters = cuda.to_device(new_counters(), stream=stream)
    scale = np.float32(problem.scale)
    block = (schedule.threads,)
    if schedule.kind == "flash2":
        (_, kern, smem, grid), = launches
        kern[grid(problem), block, stream, smem](q, k, v, out, lse, scale, counters)
    elif schedule.kind == "flash1":
        (_, kern, smem, grid), = launches
        l_hbm = _device_empty((b, h, n_q), np.float32, "l")
        m_hbm = _device_empty((b, h, n_q), np.float32, "m")
        kern[grid(problem), block, stream, smem](q, k, v, out, lse, l_hbm, m_hbm, scale, counters)
    else:
        (_, qk, smem_qk, g_qk), (_, sm, smem_sm, g_sm), (_, pv, smem_pv, g_pv) = launches
        s = _device_empty((b, h, n_q, n_kv), np.float32, "S")
        p = _device_empty((b, h, n_q, n_kv), np.float32, "P")
        qk[g_qk(problem), block, stream, smem_qk](q, k, s, scale, counters)
        sm[g_sm(problem), block, stream, smem_sm](s, p, lse, counters)
        pv[g_pv(problem), block, stream, smem_pv](p, v, out, counters)
    report = to_report(counters.copy_to_host(stream=stream), problem.dtype) if count_io else None
    return out, lse, report


def _wrap_like(x, like):
    """Return device array ``x`` as the same kind of object as the caller's input ``like``."""
    module = type(like).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy.asarray(x)
    if module == "torch":
        import torch

        return torch.as_tensor(x, device=like.device)
    return x


def attention_any(schedule, problem, q, k, v, count_io=False):
    """:func:`run` for NumPy inputs (copied over and back) or CUDA-array-interface inputs (left on the GPU).

    Returns:
        (out, lse, report) on the side the inputs came from.
    """
    on_host = isinstance(q, np.ndarray)
    if on_host:
        stream = cuda.default_stream()
        dq, dk, dv = (cuda.to_device(np.ascontiguousarray(x), stream=stream) for x in (q, k, v))
    else:
        dq, dk, dv = (cuda.as_cuda_array(x, sync=False) for x in (q, k, v))
        for name, x in (("q", dq), ("k", dk), ("v", dv)):
            if not x.is_c_contiguous():
                raise ValueError(f"{name}: expected a C-contiguous CUDA array; make a contiguous copy first")
    out, lse, report = run(schedule, problem, dq, dk, dv, count_io=count_io)
    if on_host:
        return out.copy_to_host(), lse.copy_to_host(), report
    return _wrap_like(out, q), _wrap_like(lse, q), report
