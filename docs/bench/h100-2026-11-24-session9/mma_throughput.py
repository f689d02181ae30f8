"""mma.sync m16n8k8 TF32 throughput on this GPU: NCH independent accumulator chains per warp."""
import sys, numpy as np
from numba import cuda, float32
from kernels.mma import mma
def make(nch):
    @cuda.jit
    def k(out, iters):
        tid = cuda.threadIdx.x
        a0 = float32(tid) * float32(1e-3)
        c = cuda.local.array((nch, 4), float32)
        for ch in range(nch):
            for i in range(4):
                c[ch, i] = float32(0)
        for it in range(iters):
            for ch in range(nch):
                c[ch, 0], c[ch, 1], c[ch, 2], c[ch, 3] = mma(None, tid, a0, a0, a0, a0, a0, a0, c[ch, 0], c[ch, 1], c[ch, 2], c[ch, 3])
        t = float32(0)
        for ch in range(nch):
            for i in range(4):
                t += c[ch, i]
        out[cuda.blockIdx.x * cuda.blockDim.x + tid] = t
    return k
iters = 4096
for nch in (2, 4, 8, 16):
    k = make(nch)
    for warps in (4, 8, 16):
        for bps in (1, 2):
            blocks = 132 * bps
            out = cuda.device_array(blocks * warps * 32, np.float32)
            k[blocks, warps * 32](out, iters); cuda.synchronize()
            e0, e1 = cuda.event(), cuda.event()
            e0.record(); k[blocks, warps * 32](out, iters); e1.record(); e1.synchronize()
            ms = cuda.event_elapsed_time(e0, e1)
            fl = blocks * warps * iters * nch * 2048
            print(f"nch={nch:2d} warps/block={warps:2d} blocks/SM={bps} warps/SMSP={warps*bps/4:4.1f}: {ms:7.3f} ms  {fl/ms/1e9:6.1f} TF32 TFLOP/s", flush=True)
