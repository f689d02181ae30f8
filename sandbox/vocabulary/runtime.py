"""Choose between a real CUDA GPU and Numba's CUDA simulator, before anything imports numba.cuda;
check that the ``kernels`` and ``simulator`` packages Python finds are the ones installed with ``sandbox``."""

import ctypes
import functools
import importlib.util
import os
import sys

#: The installed version (setup.cfg reads it from here).
__version__ = "0.1.0"

SIM_ENV = "NUMBA_ENABLE_CUDASIM"

#: The distribution that installs ``sandbox``, ``kernels`` and ``simulator`` (setup.cfg).
DISTRIBUTION = "attention-io-sandbox"

#: Top-level packages installed beside ``sandbox``: other distributions on PyPI use these names too.
SIBLING_PACKAGES = ("kernels", "simulator")


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
    """True if Numba's CUDA simulator is (or will be) active.

    Once numba.cuda is imported, the module loaded decides (setting the environment variable
    afterwards changes nothing); before, the environment does.
    """
    cuda = sys.modules.get("numba.cuda")
    jit = getattr(cuda, "jit", None)
    if jit is not None:
        return jit.__module__.startswith("numba.cuda.simulator")
    return os.environ.get(SIM_ENV, "0") not in ("", "0")


def check_backend():
    """Refuse to run kernels when numba.cuda was loaded for a GPU this machine does not have.

    Numba chooses between the GPU and its CUDA simulator once, when numba.cuda is first imported.
    If that happened before :func:`ensure_backend` (``from numba import cuda`` ahead of
    ``import sandbox``) on a machine without a GPU, no kernel can run, and Numba's own error
    (``CudaSupportError``) does not say why.

    Raises:
        RuntimeError: the backend cannot run kernels, with what to do instead.
    """
    if "numba.cuda" in sys.modules and not using_simulator() and not gpu_present():
        raise RuntimeError(
            "no CUDA GPU found, and numba.cuda was imported for a GPU before sandbox could choose Numba's "
            f"CUDA simulator; import sandbox before numba.cuda, or set {SIM_ENV}=1 in the environment "
            "before starting Python"
        )


def _package_root():
    """The folder that holds this ``sandbox`` package, where its sibling packages are installed too."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def _found_at(name):
    """(path of the package Python imports as ``name``, or None; its spec's search folders)."""
    module = sys.modules.get(name)
    if module is not None:
        spec = getattr(module, "__spec__", None)
        origin = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None)
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    return (origin if origin and os.path.isfile(origin) else None), locations


def _distributions_providing(name):
    """Names of the installed distributions that ship a top-level ``name``."""
    from importlib.metadata import packages_distributions

    try:
        return sorted(set(packages_distributions().get(name, [])))
    except Exception:  # a damaged installed distribution's metadata: nothing to report
        return []


def check_packages(names=SIBLING_PACKAGES):
    """Check that each of ``names`` imports from beside this ``sandbox``, not from another distribution.

    Other distributions install top-level ``kernels`` and ``simulator`` packages too; whichever
    comes first on ``sys.path`` would be imported silently. Only locates the packages (nothing
    is imported).

    Raises:
        ImportError: a package is missing or is another one, naming the file found, the one
            expected and the fix.
    """
    root = _package_root()
    for name in names:
        expected = os.path.join(root, name)
        origin, locations = _found_at(name)
        if origin is not None and os.path.realpath(os.path.dirname(origin)) == expected:
            continue
        if origin is None and not locations:
            raise ImportError(
                f"no module named {name!r}: the installation of {DISTRIBUTION} is incomplete "
                f"(expected {os.path.join(expected, '__init__.py')}); reinstall it with pip install ."
            )
        found = origin or f"a namespace package in {', '.join(locations)}"
        others = [d for d in _distributions_providing(name) if d.lower().replace("_", "-") != DISTRIBUTION]
        if others:
            fix = (f"it comes from the distribution {', '.join(others)}; uninstall it "
                   f"(pip uninstall {' '.join(others)}) or install {DISTRIBUTION} in a virtual environment of its own")
        else:
            fix = (f"a folder named {name!r} earlier on sys.path (the current directory or the script's) "
                   f"shadows it; run from another directory or rename that folder")
        raise ImportError(
            f"{name!r} resolves to {found}, not to {DISTRIBUTION}'s {os.path.join(expected, '__init__.py')}: {fix}"
        )


def prepare():
    """What ``import sandbox`` does first: :func:`ensure_backend`, then :func:`check_packages`."""
    ensure_backend()
    check_packages()
