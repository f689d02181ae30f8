"""Loads and stores of the input dtype, widened to / rounded from fp32: ``to_f32``, ``from_f32``.

float32 and float16 are Numba types: a load is ``float32(x)`` and a store is Numba's own
conversion (round to nearest even). bfloat16 arrays reach the kernels as their uint16 bit
patterns (``sandbox.vocabulary.dtypes.storage_dtype``):

- widening is exact: the bf16 bits are the high half of the fp32 bits;
- rounding fp32 -> bf16 is round-to-nearest-even on the 16 bits dropped, overflow going to ±inf
  by the carry into the exponent, and NaN kept NaN (quiet bit set, sign kept).

The bit reinterpretation is the one primitive the CUDA simulator lacks (libdevice's
``int_as_float`` / ``float_as_int`` are stubs there): this module is the one place that chooses
the simulator's fallback, a NumPy view of the same bits.
"""

import numpy as np
from numba import cuda, float32, int32, int64, uint16

from sandbox.vocabulary.dtypes import is_bfloat16
from sandbox.vocabulary.runtime import using_simulator


def _bit_casts():
    """(bits_to_f32(b) -> float32 whose bits are b << 16, f32_to_bits(x) -> its bits as int64 in [0, 2³²))."""
    if using_simulator():

        def bits_to_f32(b):
            return np.uint32(int(b) << 16).view(np.float32)

        def f32_to_bits(x):
            return int(np.float32(x).view(np.uint32))

        return bits_to_f32, f32_to_bits
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def bits_to_f32(b):
        return libdevice.int_as_float(int32(int64(b) << 16))  # int32() wraps: a bit cast

    @cuda.jit(device=True)
    def f32_to_bits(x):
        return int64(libdevice.float_as_int(x)) & 0xFFFFFFFF

    return bits_to_f32, f32_to_bits


def make_convert(dtype):
    """(to_f32(x) -> float32, from_f32(x) -> storage value) device functions for input ``dtype``."""
    if not is_bfloat16(dtype):

        @cuda.jit(device=True)
        def to_f32(x):
            return float32(x)

        @cuda.jit(device=True)
        def from_f32(x):
            return x  # the store converts (fp16: round to nearest even)

        return to_f32, from_f32

    bits_to_f32, f32_to_bits = _bit_casts()

    @cuda.jit(device=True)
    def to_f32(x):
        return bits_to_f32(x)

    @cuda.jit(device=True)
    def from_f32(x):
        u = f32_to_bits(float32(x))
        if x != x:
            return uint16((u >> 16) | 0x40)  # NaN: keep the sign, set the quiet bit
        return uint16(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)

    return to_f32, from_f32
