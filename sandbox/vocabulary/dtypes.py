"""Input dtypes the kernels accept, how they are stored on the device, and the fp32 accumulation dtype.

bfloat16 comes from ``ml_dtypes`` (NumPy has none): ``np.dtype("bfloat16")`` works once it is
imported, which this module does. On the device a bfloat16 array is its raw 16-bit pattern
(uint16): Numba has no bfloat16 array type under the CUDA simulator, so the kernels load the bits
and widen them to fp32 themselves (``kernels/convert.py``), and round fp32 back to bfloat16 on
store. PyTorch bfloat16 tensors are accepted the same way (viewed as int16 bits, no copy).
"""

import ml_dtypes
import numpy as np

#: Input/output dtypes of the kernels. Arithmetic always accumulates in fp32.
SUPPORTED = ("float32", "float16", "bfloat16")

#: dtype of everything the kernels compute (S, P, ℓ, m, L, accumulators).
ACC = np.dtype(np.float32)

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def as_dtype(dtype, *, arg="dtype"):
    """Return ``dtype`` as a supported ``np.dtype``.

    Raises:
        TypeError: if ``dtype`` is not a dtype or dtype name, or is not supported.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{arg}: expected a NumPy dtype or one of {SUPPORTED}, got {dtype!r}") from None
    if dt.name not in SUPPORTED:
        raise TypeError(
            f"{arg}: unsupported dtype {dt.name}; supported are {', '.join(SUPPORTED)} "
            "(convert the inputs first, e.g. x.astype('float32'))"
        )
    return dt


def storage_dtype(dtype):
    """The dtype a device array of ``dtype`` is handed to Numba as: itself, or uint16 bits for bfloat16."""
    dt = np.dtype(dtype)
    return np.dtype(np.uint16) if dt == BFLOAT16 else dt


def is_bfloat16(dtype):
    return np.dtype(dtype) == BFLOAT16
