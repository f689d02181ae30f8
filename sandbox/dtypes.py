"""Input dtypes the kernels accept, and the fp32 accumulation dtype."""

import numpy as np

#: Input/output dtypes of the kernels. Arithmetic always accumulates in fp32.
SUPPORTED = ("float32", "float16")

#: dtype of everything the kernels compute (S, P, ℓ, m, L, accumulators).
ACC = np.dtype(np.float32)


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
