"""Raise a compiled kernel's dynamic shared memory limit above 48 KB (NVIDIA/numba-cuda#94).

numba-cuda launches with any dynamic shared memory size but gives no way to opt a kernel
in above the default 48 KB; the driver attribute is set here, through cuda-bindings, on
the CUfunction numba compiled.
"""

import functools

from numba import cuda

from sandbox.vocabulary.gpus import known_gpu
from sandbox.vocabulary.runtime import using_simulator

DEFAULT_LIMIT = 48 * 1024
#: The machine (sandbox.vocabulary.gpus.KNOWN_GPUS) whose shared-memory facts stand in where there
#: is no device to read (the simulator): the H100, on which the fast build's occupancy was tuned.
MODELLED_GPU = "h100"


def device_smem_optin():
    """Opt-in shared memory per block of the current device, in bytes (None under the simulator)."""
    if using_simulator():
        return None
    return _attribute(cuda.get_current_device().id, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN")


def smem_per_sm():
    """Shared memory of one SM and the driver's reservation per resident block, in bytes: the
    current device's, or under the simulator :data:`MODELLED_GPU`'s."""
    if using_simulator():
        gpu = known_gpu(MODELLED_GPU)
        return gpu.smem_per_sm, gpu.smem_reserved_per_block
    device = cuda.get_current_device().id
    return (_attribute(device, "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"),
            _attribute(device, "RESERVED_SHARED_MEMORY_PER_BLOCK"))


@functools.lru_cache(maxsize=None)
def _attribute(device_id, name):
    return int(getattr(cuda.get_current_device(), name))


def check_device_limit(nbytes):
    """Raise ValueError, before any launch, if ``nbytes`` exceed the device's opt-in limit."""
    limit = device_smem_optin()
    if limit is not None and nbytes > limit:
        raise ValueError(
            f"schedule needs {nbytes} bytes of shared memory per block but this GPU allows at most {limit}"
        )


def allow_dynamic_smem(compiled_kernel, nbytes):
    """Let ``compiled_kernel`` (a numba ``_Kernel``) launch with ``nbytes`` of dynamic shared memory.

    The 48 KB default bounds static + dynamic shared memory together (a masked kernel has a
    4-byte static array for its tile vote), so the attribute is set whenever their sum exceeds it.
    """
    if using_simulator() or nbytes + compiled_kernel.shared_mem_per_block <= DEFAULT_LIMIT:
        return
    from cuda.bindings import driver as cu

    handle = compiled_kernel._codelibrary.get_cufunc().handle
    attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    if isinstance(handle, cu.CUkernel):
        # numba-cuda >= 0.2x loads code as a library (cuda.core): the handle is a CUkernel
        device = cuda.get_current_device().id
        (err,) = cu.cuKernelSetAttribute(attr, int(nbytes), handle, cu.CUdevice(device))
    else:
        if not isinstance(handle, cu.CUfunction):  # ctypes binding: a raw pointer value
            handle = cu.CUfunction(int(getattr(handle, "value", handle)))
        (err,) = cu.cuFuncSetAttribute(handle, attr, int(nbytes))
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"setting MAX_DYNAMIC_SHARED_SIZE_BYTES={nbytes} on {compiled_kernel} failed: {err}")
