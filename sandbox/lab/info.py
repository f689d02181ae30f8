"""What this machine runs the sandbox on: versions, GPU or simulator, device properties."""

import platform
from importlib import metadata

from numba import cuda

from sandbox.vocabulary.gpus import KNOWN_GPUS, DeviceFacts, known_gpu
from sandbox.vocabulary.runtime import __version__, ensure_backend


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment():
    """dict of printable facts: package versions, backend, and for a GPU its name, SMs, shared memory, L2."""
    backend = ensure_backend()
    facts = {"sandbox": __version__, "python": platform.python_version()}
    for dist in ("numpy", "numba", "numba-cuda", "cuda-bindings", "matplotlib", "hypothesis", "cupy-cuda12x", "torch"):
        facts[dist] = _version(dist)
    facts["backend"] = "GPU" if backend == "gpu" else "Numba CUDA simulator (no CUDA GPU found)"
    if backend == "gpu":
        dev = cuda.get_current_device()
        facts["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        facts["compute capability"] = ".".join(map(str, dev.compute_capability))
        facts["SMs"] = dev.MULTIPROCESSOR_COUNT
        facts["opt-in shared memory/block"] = f"{dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN} bytes"
        facts["L2 cache"] = f"{dev.L2_CACHE_SIZE} bytes"
    return facts


def device_facts():
    """The current GPU's :class:`~sandbox.vocabulary.gpus.DeviceFacts`, read from the device; None without a GPU.

    Read: L2 size, SMs, shared memory (opt-in per block, per SM, reserved per block), the SM's warp
    and block limits. Peak bandwidth and FLOP/s are not device attributes: they come from
    :data:`~sandbox.vocabulary.gpus.KNOWN_GPUS` when the device's name is one of them, else stay None.
    """
    if ensure_backend() != "gpu":
        return None
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    known = next((g for key, g in KNOWN_GPUS.items() if key.upper() in name.upper().split()), None)

    def attr(attribute, default):
        try:
            return int(getattr(dev, attribute))
        except Exception:  # an attribute this driver or numba-cuda does not expose
            return default

    return DeviceFacts(
        name, l2_bytes=int(dev.L2_CACHE_SIZE), sms=int(dev.MULTIPROCESSOR_COUNT),
        smem_per_block_optin=int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        smem_per_sm=attr("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)),
        smem_reserved_per_block=attr("RESERVED_SHARED_MEMORY_PER_BLOCK", 1024),
        max_warps_per_sm=attr("MAX_THREADS_PER_MULTIPROCESSOR", 2048) // 32,
        max_blocks_per_sm=attr("MAX_BLOCKS_PER_MULTIPROCESSOR", 32),
        hbm_bytes_per_s=known.hbm_bytes_per_s if known else None,
        fp32_fma_flops=known.fp32_fma_flops if known else None,
        source="read from the device")


def resolve_gpu(gpu=None):
    """The machine a model describes: ``gpu`` (a name in ``KNOWN_GPUS`` or a DeviceFacts), else the device's.

    Raises:
        ValueError: ``gpu`` is None and there is no device to read (the CUDA simulator, no GPU): the
            caller must say which machine it models. TypeError: ``gpu`` of another type.
    """
    if gpu is not None:
        return known_gpu(gpu)
    facts = device_facts()
    if facts is None:
        known = ", ".join(sorted(KNOWN_GPUS))
        raise ValueError("gpu: no GPU to read the device facts (L2 size, SMs, shared memory) from, so Numba's "
                         f"CUDA simulator is active; say which machine to model: one of {known}")
    return facts
