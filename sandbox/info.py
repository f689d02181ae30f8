"""What this machine runs the sandbox on: versions, GPU or simulator, device properties."""

from importlib import metadata


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment():
    """dict of printable facts: package versions, backend, and for a GPU its name, SMs, shared memory, L2."""
    import platform

    from sandbox import __version__
    from sandbox.runtime import ensure_backend

    backend = ensure_backend()
    facts = {"sandbox": __version__, "python": platform.python_version()}
    for dist in ("numpy", "numba", "numba-cuda", "cuda-bindings", "matplotlib", "hypothesis", "cupy-cuda12x", "torch"):
        facts[dist] = _version(dist)
    facts["backend"] = "GPU" if backend == "gpu" else "Numba CUDA simulator (no CUDA GPU found)"
    if backend == "gpu":
        from numba import cuda

        dev = cuda.get_current_device()
        facts["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        facts["compute capability"] = ".".join(map(str, dev.compute_capability))
        facts["SMs"] = dev.MULTIPROCESSOR_COUNT
        facts["opt-in shared memory/block"] = f"{dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN} bytes"
        facts["L2 cache"] = f"{dev.L2_CACHE_SIZE} bytes"
    return facts
