"""Root test configuration: backend choice, hypothesis profiles, the gpu marker's skip."""

import os

from sandbox.vocabulary.runtime import ensure_backend

# Before anything imports numba.cuda: the CUDA simulator when no GPU is present.
BACKEND = ensure_backend()

import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# ci: reproducible and bounded (the CUDA simulator runs each thread as a Python thread).
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=12, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
# gpu: a real device, so larger shapes (see tests/strategies.py) and more examples.
settings.register_profile("gpu", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
# gpu-first-failure: as gpu, but the first failing example is reported as found, not shrunk (every
# shrink step runs the kernels again: minutes on a device whose time is short).
settings.register_profile("gpu-first-failure", parent=settings.get_profile("gpu"), print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if BACKEND == "gpu" else "ci"))


def pytest_collection_modifyitems(config, items):
    if BACKEND == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a real CUDA GPU; running under Numba's CUDA simulator")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"attention sandbox backend: {BACKEND} (HYPOTHESIS_PROFILE={settings._current_profile})"


@pytest.fixture
def isolated_kinds(monkeypatch):
    """Kinds registered in a test stay in it: every layer's registry is restored afterwards."""
    from kernels import registry
    from sandbox.vocabulary import kinds
    from simulator import table

    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(table, "_TABLE", dict(table._TABLE))
