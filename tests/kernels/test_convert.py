"""bfloat16 loads and stores (kernels/convert.py) against ml_dtypes, bit for bit, on every backend.

Under the CUDA simulator this checks the NumPy fallback; on a GPU (run this file without ``-m gpu``)
the libdevice bit casts.
"""

import ml_dtypes
import numpy as np

from sandbox.vocabulary.runtime import ensure_backend

ensure_backend()

from numba import cuda  # noqa: E402

from kernels.convert import make_convert  # noqa: E402

to_f32, from_f32 = make_convert("bfloat16")


@cuda.jit
def _convert(bits, widened, x, rounded):
    for i in range(bits.shape[0]):
        widened[i] = to_f32(bits[i])
    for i in range(x.shape[0]):
        rounded[i] = from_f32(x[i])


def _edge_floats():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.0, 1.00390625, 1.01171875],
                       dtype=np.float32)
    # every tie and near-tie of the 16 dropped bits: round-to-nearest-even must pick the even side
    ties = (np.arange(0, 2**16, 7, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    random_bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([special, ties, random_bits, rng.standard_normal(1000).astype(np.float32)])


def test_bfloat16_conversions_match_ml_dtypes():
    bits = np.arange(2**16, dtype=np.uint16)  # every bfloat16 value, NaNs included
    x = _edge_floats()
    widened = np.zeros(bits.size, np.float32)
    rounded = np.zeros(x.size, np.uint16)
    d_widened, d_rounded = cuda.to_device(widened), cuda.to_device(rounded)
    _convert[1, 1](cuda.to_device(bits), d_widened, cuda.to_device(x), d_rounded)
    widened, rounded = d_widened.copy_to_host(), d_rounded.copy_to_host()

    expected = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), expected.view(np.uint32))  # exact, NaN payloads too

    nan = np.isnan(x)
    with np.errstate(invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(rounded[~nan], expected.view(np.uint16)[~nan])
    assert np.isnan(rounded[nan].view(ml_dtypes.bfloat16).astype(np.float32)).all()
    assert np.array_equal(rounded[nan] >> 15, x[nan].view(np.uint32) >> 31)  # the sign of a NaN is kept
    assert nan.sum() > 0 and np.isinf(x).sum() == 2
