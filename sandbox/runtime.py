"""Choose between a real CUDA GPU and Numba's CUDA simulator, before anything imports numba.cuda."""

import ctypes
import functools
import os
import sys

SIM_ENV = "NUMBA_ENABLE_CUDASIM"


@functools.lru_cache(maxsize=None)
def gpu_present():
    """True if the CUDA driver loads and reports at least one device (asks the driver, not Numba)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    try:
        if lib.cuInit(0) != 0:
            return False
        count = ctypes.c_int(0)
        return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (AttributeError, OSError):
        return False


def ensure_backend():
    """Turn on the CUDA simulator when no GPU is present, unless the user chose already.

    Must run before the first ``import numba.cuda``; afterwards it only reports.

    Returns:
        "gpu" or "simulator".
    """
    changed = False
    if "numba.cuda" not in sys.modules:
        if SIM_ENV not in os.environ and not gpu_present():
            os.environ[SIM_ENV] = "1"
            changed = True
        # flash1 launches one block per (batch, head) by design: not worth a warning per call
        if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
            os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
            changed = True
    config = sys.modules.get("numba.core.config")
    if changed and config is not None:  # numba read its environment already (e.g. pytest's warning filters)
        config.reload_config()
    return "simulator" if using_simulator() else "gpu"


def using_simulator():
    """True if Numba's CUDA simulator is (or will be) active."""
    return os.environ.get(SIM_ENV, "0") not in ("", "0")
