"""Device facts: what the L2 model, the bench and the ncu check need to know about a GPU.

A :class:`DeviceFacts` record holds them. On a GPU the lab reads it from the device
(``sandbox.lab.info.device_facts()``); where there is no device to read (Numba's CUDA simulator, a
machine without a GPU) the caller names the machine it models, one of :data:`KNOWN_GPUS`. Nothing
assumes a GPU silently.

The machines, side by side (the one table of them in this project):

==========================  ======================  ======================  =====================================
fact                        H100 SXM5               H200 SXM                source
==========================  ======================  ======================  =====================================
L2 cache                    50 MiB (52,428,800 B)   60 MiB (62,914,560 B)   cudaDeviceProp.l2CacheSize
SMs                         132                     132                     cudaDeviceProp.multiProcessorCount
opt-in shared memory/block  227 KB (232,448 B)      227 KB (232,448 B)      sharedMemPerBlockOptin; CUDA C++
                                                                            Programming Guide, cc 9.0 table
shared memory/SM            228 KB (233,472 B)      228 KB (233,472 B)      sharedMemPerMultiprocessor
reserved shared memory      1 KB per block          1 KB per block          reservedSharedMemPerBlock
warps, blocks per SM        64, 32                  64, 32                  CUDA C++ Programming Guide, cc 9.0
HBM bandwidth               3.35 TB/s (HBM3)        4.8 TB/s (HBM3e)        NVIDIA H100 and H200 datasheets
fp32 FMA peak               67 TFLOP/s              67 TFLOP/s              NVIDIA H100 and H200 datasheets
==========================  ======================  ======================  =====================================

Example:
    >>> known_gpu("h200").l2_bytes == 60 * 2**20
    True
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """One GPU's facts, as the models use them.

    Attributes:
        name: the device's name ("NVIDIA H200", or the one it reports).
        l2_bytes: L2 cache size.
        sms: streaming multiprocessors.
        smem_per_block_optin: the most shared memory one block may opt in to, bytes.
        smem_per_sm: shared memory of one SM, bytes (blocks in flight share it).
        smem_reserved_per_block: shared memory the system reserves per block, bytes.
        max_warps_per_sm, max_blocks_per_sm: the SM's limits on resident warps and blocks.
        hbm_bytes_per_s: peak HBM bandwidth (None where not known).
        fp32_fma_flops: peak fp32 FMA throughput, FLOP/s (None where not known).
        source: where the facts come from ("read from the device", or the table's sources).
    """

    name: str
    l2_bytes: int
    sms: int
    smem_per_block_optin: int
    smem_per_sm: int
    smem_reserved_per_block: int = 1024
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    hbm_bytes_per_s: float = None
    fp32_fma_flops: float = None
    source: str = ""

    def __post_init__(self):
        for field in ("l2_bytes", "sms", "smem_per_block_optin", "smem_per_sm", "max_warps_per_sm",
                      "max_blocks_per_sm"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")


_DATASHEETS = "NVIDIA {} datasheet; CUDA C++ Programming Guide (compute capability 9.0); cudaDeviceProp"

#: The machines this project has run on, by the short name the CLI and the API take.
KNOWN_GPUS = {
    "h100": DeviceFacts("NVIDIA H100 SXM5", l2_bytes=50 * 2**20, sms=132, smem_per_block_optin=227 * 1024,
                        smem_per_sm=228 * 1024, hbm_bytes_per_s=3.35e12, fp32_fma_flops=67e12,
                        source=_DATASHEETS.format("H100")),
    "h200": DeviceFacts("NVIDIA H200 SXM", l2_bytes=60 * 2**20, sms=132, smem_per_block_optin=227 * 1024,
                        smem_per_sm=228 * 1024, hbm_bytes_per_s=4.8e12, fp32_fma_flops=67e12,
                        source=_DATASHEETS.format("H200")),
}


def known_gpu(gpu):
    """The facts of ``gpu``: a :class:`DeviceFacts` (returned as it is) or a name in :data:`KNOWN_GPUS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones). TypeError: anything else.
    """
    if isinstance(gpu, DeviceFacts):
        return gpu
    if not isinstance(gpu, str):
        raise TypeError(f"gpu: expected one of {sorted(KNOWN_GPUS)} or a DeviceFacts, got {type(gpu).__name__}")
    try:
        return KNOWN_GPUS[gpu.lower()]
    except KeyError:
        raise ValueError(f"gpu: unknown machine {gpu!r}; known: {', '.join(sorted(KNOWN_GPUS))}") from None
