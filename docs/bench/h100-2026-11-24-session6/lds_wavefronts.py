"""LDS.128 (ld.shared.v4) wavefronts per warp instruction for lane -> 16-byte-vector patterns.

Run under ncu: `OUT=<dir> bash lds_wavefronts.sh` from this folder on a GPU machine (it writes
lds-ncu.txt and prints the table of lds-table.txt). Each pattern maps lane l to the index of the
16-byte vector it reads (the 40-vector strides put different addresses in the same banks).
"""
import sys
import numpy as np
from numba import cuda, float32, uint64, int32

PATTERNS = {
    "all-same": lambda l: 0,
    "2 halves": lambda l: (l // 16) * 40,
    "4 quarters": lambda l: (l // 8) * 40,
    "lane%8 (128B)": lambda l: l % 8,
    "lane%16 (256B)": lambda l: l % 16,
    "lane (512B)": lambda l: l,
    "lane%4 (64B)": lambda l: l % 4,
    "lane//4 (8 vec)": lambda l: l // 4,
    "q0=q2,q1=q3": lambda l: ((l // 8) % 2) * 40,
    "lane%8 + 8*(l//16)": lambda l: l % 8 + 8 * (l // 16),
    "lane%4+4*(l//16)": lambda l: l % 4 + 4 * (l // 16),
    "lane%2 + 2*(l//8)": lambda l: l % 2 + 2 * (l // 8),
    "(l//8)%2*2+(l%2)": lambda l: ((l // 8) % 2) * 2 + l % 2,
    "A swz: 2q+i2": lambda l: ((l >> 3) & 1) * 2 + ((l >> 2) & 1),
    "B swz: i+4(q^h)": lambda l: (l & 3) + 4 * (((l >> 3) ^ (l >> 4)) & 1),
    "A plain tx8: l//8": lambda l: l // 8,
    "A q2: (l&1)+2(l>>4)": lambda l: (l & 1) + 2 * (l >> 4),
    "A q2: l&1": lambda l: l & 1,
    "B q2: (l>>1)&7": lambda l: (l >> 1) & 7,
    "B q2: l>>1": lambda l: l >> 1,
    "B q2: (l>>1)&3": lambda l: (l >> 1) & 3,
    "B q2: ((l>>1)&3)+4(l>>4)": lambda l: ((l >> 1) & 3) + 4 * (l >> 4),
    "l//2 + 16*?": lambda l: (l >> 1) + 8 * ((l >> 3) & 1),
}

@cuda.jit
def lds(out, pat, iters):
    sm = cuda.shared.array(8192, float32, alignment=16)
    tid = cuda.threadIdx.x
    for i in range(tid, 8192, cuda.blockDim.x):
        sm[i] = float32(i)
    cuda.syncthreads()
    base = uint64(4) * uint64(pat[tid % 32])
    a0 = float32(0); a1 = float32(0); a2 = float32(0); a3 = float32(0)
    for it in range(iters):
        o = uint64(4) * uint64(it & 7) * uint64(128) + base
        a0 += sm[o]; a1 += sm[o + uint64(1)]; a2 += sm[o + uint64(2)]; a3 += sm[o + uint64(3)]
    out[cuda.blockIdx.x * cuda.blockDim.x + tid] = a0 + a1 + a2 + a3

if __name__ == "__main__":
    names = list(PATTERNS)
    sel = names if len(sys.argv) < 2 else [names[int(i)] for i in sys.argv[1:]]
    out = cuda.device_array(132 * 256, np.float32)
    for name in sel:
        pat = cuda.to_device(np.array([PATTERNS[name](l) for l in range(32)], np.int32))
        lds[132, 256](out, pat, 4096)
        cuda.synchronize()
        print("ran", name, flush=True)
    ptx = lds.inspect_asm(lds.signatures[0]) if hasattr(lds, "inspect_asm") else ""
    print("ld.shared.v4 in PTX:", ptx.count("ld.shared.v4"))
