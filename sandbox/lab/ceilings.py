"""The roofline's ceilings, measured on the current GPU: HBM copy bandwidth, fp32 FMA, TF32 and fp16 mma.sync throughput.

- **HBM bandwidth**: a device-to-device copy of a :data:`COPY_BYTES` array (far beyond the L2),
  counted as its bytes read plus its bytes written, the way the simulator counts HBM traffic.
- **fp32 FMA**: ``kernels.ceilings.fma_chains``, launched as :data:`RUNS` says (every thread
  8 independent chains).
- **TF32 tensor cores**: ``kernels.ceilings.make_mma_chains``, m16n8k8 ``mma.sync`` (the
  instruction flash2's tensor-core build issues), 8 independent accumulators per warp. A build
  that makes each fp32 product of three TF32 products (``math="tf32x3"``) has a third of it.
- **16-bit tensor cores**: ``kernels.ceilings.make_mma16_chains``, m16n8k16 fp16 ``mma.sync`` with
  fp32 accumulation (the instruction flash2's 16-bit build issues, ``math="f16"``; bf16's runs at
  the same rate), launched as the TF32 one.

Each is the median of ``repeats`` calls timed with CUDA events (``sandbox.lab.timing.time_calls``)
after warm-up calls, which also compile the kernels.
"""

import dataclasses
import math
import numbers
import statistics

import numpy as np
from numba import cuda

from kernels.ceilings import (
    CHAINS,
    FMA_FLOPS_PER_TRIP,
    MMA16_FLOPS,
    MMA_FLOPS,
    fma_chains,
    make_mma16_chains,
    make_mma_chains,
)
from sandbox.lab.timing import REPEATS, WARMUP, time_calls

#: Bytes of the array the bandwidth copy reads (and of the one it writes): 1 GiB.
COPY_BYTES = 2**30
#: The launch of each arithmetic kernel: blocks of 256 threads (8 warps), 8 per SM for the FMA
#: kernel (64 warps: every SM full) and 4 for the mma kernel (32 warps, 8 products in flight
#: each); loop trips for about 10 ms (FMA) and a few ms (mma) per call on an H200.
RUNS = {"fma": {"blocks_per_sm": 8, "threads": 256, "trips": 2**15},
        "mma": {"blocks_per_sm": 4, "threads": 256, "trips": 2**14}}
#: The FMA chains' factor and term: x stays near 1, far from overflow and subnormals.
FMA_A, FMA_B = np.float32(0.999999), np.float32(1e-6)

#: The arithmetic of a build (``Schedule.math``) → (the ceiling it runs on, products per fp32 product).
ARITHMETIC = {"fma": ("fma_flops_per_s", 1), "tf32x3": ("tf32_mma_flops_per_s", 3), "f16": ("f16_mma_flops_per_s", 1)}


#: Ceilings a file may lack (written before they were measured).
OPTIONAL = ("f16_mma_flops_per_s",)


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """A GPU's measured ceilings.

    Attributes:
        hbm_bytes_per_s: copy bandwidth, bytes read + written per second.
        fma_flops_per_s: fp32 FMA throughput, FLOP/s (2 per FMA).
        tf32_mma_flops_per_s: TF32 ``mma.sync`` throughput, FLOP/s (2 per multiply-add).
        f16_mma_flops_per_s: fp16 ``mma.sync`` throughput with fp32 accumulation, FLOP/s; None
            where it was not measured (files written before it was).
    """

    hbm_bytes_per_s: float
    fma_flops_per_s: float
    tf32_mma_flops_per_s: float
    f16_mma_flops_per_s: float = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"{f.name}: expected a positive finite number, got {value!r}")

    def flops_per_s(self, arithmetic):
        """The FLOP/s ceiling of the products made with ``arithmetic`` ("fma"; "tf32x3": a third of
        TF32's; "f16": the 16-bit tensor cores').

        Raises:
            ValueError: an arithmetic not in :data:`ARITHMETIC`, or one whose ceiling was not measured.
        """
        try:
            ceiling, products = ARITHMETIC[arithmetic]
        except KeyError:
            raise ValueError(f"arithmetic: expected one of {', '.join(ARITHMETIC)}, got {arithmetic!r}") from None
        if getattr(self, ceiling) is None:
            raise ValueError(f"arithmetic {arithmetic!r}: its ceiling ({ceiling}) was not measured in this run")
        return getattr(self, ceiling) / products


def _median_seconds(calls, repeats, timer):
    return statistics.median(timer(calls, repeats, warmup=WARMUP)) * 1e-3


def copy_bandwidth(nbytes=COPY_BYTES, repeats=REPEATS, timer=time_calls):
    """Bytes read + written per second of a device-to-device copy of ``nbytes`` (float32 elements).

    Returns:
        (bytes per second, details): details holds the array's bytes and the median ms.
    """
    n = nbytes // 4
    src = cuda.to_device(np.arange(n, dtype=np.float32))
    dst = cuda.device_array(n, np.float32)
    seconds = _median_seconds([lambda: dst.copy_to_device(src)], repeats, timer)
    return 2 * n * 4 / seconds, {"copy_bytes": n * 4, "ms": seconds * 1e3}


def fma_throughput(sms, blocks_per_sm, threads, trips, repeats=REPEATS, timer=time_calls):
    """fp32 FLOP/s of :func:`kernels.ceilings.fma_chains`: ``blocks_per_sm`` blocks of ``threads`` per SM,
    ``trips`` loop trips (:data:`RUNS` has the ceiling's).

    Returns:
        (FLOP/s, details): the grid, the trips, the FLOPs of one call and its median ms.
    """
    blocks = sms * blocks_per_sm
    x = cuda.to_device(np.ones((blocks * threads, CHAINS), np.float32))
    seconds = _median_seconds([lambda: fma_chains[blocks, threads](x, FMA_A, FMA_B, trips)], repeats, timer)
    flops = blocks * threads * trips * FMA_FLOPS_PER_TRIP
    return flops / seconds, {"blocks": blocks, "threads": threads, "trips": trips, "flops": flops,
                             "ms": seconds * 1e3}


def mma_throughput(sms, blocks_per_sm, threads, trips, repeats=REPEATS, timer=time_calls, seed=0):
    """TF32 FLOP/s of :func:`kernels.ceilings.make_mma_chains`: ``blocks_per_sm`` blocks of ``threads`` per
    SM, ``trips`` loop trips (:data:`RUNS` has the ceiling's).

    A and B hold multiples of 1/8 in [-1, 1] (exact in TF32), so the accumulators grow by at most
    8 per product: far from overflow over any run.

    Returns:
        (FLOP/s, details): the grid, the trips, the FLOPs of one call and its median ms.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(-8, 9, (16, 8)).astype(np.float32) / 8
    b = rng.integers(-8, 9, (8, 8)).astype(np.float32) / 8
    return _chains_throughput(make_mma_chains(threads), a, b, MMA_FLOPS, sms, blocks_per_sm, threads, trips,
                              repeats, timer)


def mma16_throughput(sms, blocks_per_sm, threads, trips, repeats=REPEATS, timer=time_calls, seed=0):
    """fp16 FLOP/s of :func:`kernels.ceilings.make_mma16_chains`, launched as :func:`mma_throughput`.

    A and B hold multiples of 1/8 in [-1, 1] (exact in fp16), so the accumulators grow by at most
    16 per product: far from overflow over any run.

    Returns:
        (FLOP/s, details): the grid, the trips, the FLOPs of one call and its median ms.
    """
    rng = np.random.default_rng(seed)
    a = pairs(rng.integers(-8, 9, (16, 16)).astype(np.float16) / np.float16(8))
    b = pairs(rng.integers(-8, 9, (8, 16)).astype(np.float16) / np.float16(8))
    return _chains_throughput(make_mma16_chains(threads), a, b, MMA16_FLOPS, sms, blocks_per_sm, threads, trips,
                              repeats, timer)


def _chains_throughput(kernel, a, b, flops_per_product, sms, blocks_per_sm, threads, trips, repeats, timer):
    """FLOP/s of an mma chains kernel of ``kernels.ceilings`` over zeroed accumulators."""
    blocks = sms * blocks_per_sm
    warps = blocks * threads // 32
    a, b = cuda.to_device(a), cuda.to_device(b)
    c = cuda.to_device(np.zeros((warps, CHAINS, 16, 8), np.float32))
    seconds = _median_seconds([lambda: kernel[blocks, threads](a, b, c, trips)], repeats, timer)
    flops = warps * trips * CHAINS * flops_per_product
    return flops / seconds, {"blocks": blocks, "threads": threads, "trips": trips, "flops": flops,
                             "ms": seconds * 1e3}


def pairs(x):
    """An fp16 matrix's rows as uint32 words of two neighbours, the lower column in the low half
    (``kernels.mma16``'s registers): (rows, 2·words) float16 -> (rows, words) uint32."""
    return np.ascontiguousarray(x, np.float16).view(np.uint32)


def measure_ceilings(sms, copy_bytes=COPY_BYTES, repeats=REPEATS, timer=time_calls, runs=None):
    """All four ceilings on the current GPU (``sms``: its SMs, ``sandbox.lab.info.device_facts().sms``).

    Args:
        copy_bytes: bytes of the copied array.
        runs: ``{"fma": {...}, "mma": {...}}``, launch settings overriding :data:`RUNS`'s (small
            runs); the 16-bit mma runs as the TF32 one.

    Returns:
        (:class:`Ceilings`, details): details per ceiling, for the result files' provenance.
    """
    runs = {k: {**v, **(runs or {}).get(k, {})} for k, v in RUNS.items()}
    bandwidth, copy = copy_bandwidth(copy_bytes, repeats, timer)
    fma, fma_run = fma_throughput(sms, **runs["fma"], repeats=repeats, timer=timer)
    tf32, mma_run = mma_throughput(sms, **runs["mma"], repeats=repeats, timer=timer)
    f16, mma16_run = mma16_throughput(sms, **runs["mma"], repeats=repeats, timer=timer)
    return Ceilings(bandwidth, fma, tf32, f16), {"copy": copy, "fma": fma_run, "mma": mma_run, "mma16": mma16_run}
