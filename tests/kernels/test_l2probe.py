"""The L2 probe kernels (kernels/l2probe.py) do what ncu_check's calibration assumes they do."""

import numpy as np
import pytest

from sandbox.vocabulary.runtime import ensure_backend

ensure_backend()

from numba import cuda  # noqa: E402

from kernels.l2probe import rewrite, write_spin  # noqa: E402


@pytest.mark.parametrize("blocks, threads, n, spin", [(1, 32, 1, 5), (3, 32, 1000, 0), (2, 64, 77, 3)])
def test_write_spin_writes_every_element_once(blocks, threads, n, spin):
    buf = cuda.to_device(np.full(n, -1.0, np.float32))
    sink = cuda.to_device(np.zeros(1, np.float32))
    write_spin[blocks, threads](buf, np.float32(2.5), spin, sink)
    assert np.array_equal(buf.copy_to_host(), np.full(n, 2.5, np.float32))
    assert sink.copy_to_host()[0] == 0  # the spin's result is never stored for finite values


@pytest.mark.parametrize("blocks, threads, n, passes", [(1, 32, 100, 3), (2, 16, 7, 4)])
def test_rewrite_adds_one_per_pass(blocks, threads, n, passes):
    host = np.arange(n, dtype=np.float32)
    buf = cuda.to_device(host)
    rewrite[blocks, threads](buf, passes)
    assert np.array_equal(buf.copy_to_host(), host + passes)
