"""Tensor-core products in fp32 precision: TF32 rounding and the 3xTF32 warp product, with the
CUDA simulator's fallback chosen here, in one place.

A float32 x is split into two TF32 values (10 explicit mantissa bits each): big = tf32(x),
small = tf32(x - big), so x = big + small up to about 2^-22·|x|. A product a·b is then
a_small·b_big + a_big·b_small + a_big·b_big (the a_small·b_small term, about 2^-22 of it, is
dropped): three TF32 tensor-core products give an fp32-accurate one. This is CUTLASS's
``OpMultiplyAddFastF32``, which PyTorch's memory-efficient SDPA kernel uses for fp32 inputs on
sm_80 and newer (``DefaultGemmType<ArchTag, float>`` in its ``gemm_kernel_utils.h``).

The warp product is PTX's ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``: D = C + A·B
with A 16×8, B 8×8, C and D 16×8, spread over the 32 lanes of a warp. Lane l has
g = l // 4 and t = l % 4 and holds

    A: a0 = A[g, t], a1 = A[g + 8, t], a2 = A[g, t + 4], a3 = A[g + 8, t + 4]
    B: b0 = B[t, g], b1 = B[t + 4, g]
    C, D: c0 = C[g, 2t], c1 = C[g, 2t + 1], c2 = C[g + 8, 2t], c3 = C[g + 8, 2t + 1]

On the GPU both are inline PTX (``cvt.rna.tf32.f32`` and ``mma.sync``). The simulator has no
tensor cores and no cross-lane registers: there the lanes of a warp swap their fragments through
a shared array (``xch``, :data:`XCH_PER_THREAD` floats per thread, allocated by the kernel),
with a barrier before and after, so every thread of the block must make the same calls. Its
TF32 rounding is exact (round to nearest, ties away from zero, like ``cvt.rna``); its sums are
fp64 rounded once to fp32 per product, which the tensor cores need not match bit for bit.
"""

import numpy as np
from numba import cuda

from sandbox.runtime import using_simulator

#: Floats of the simulator's exchange array per thread (unused on the GPU): a lane's A and B fragments.
XCH_PER_THREAD = 6

if using_simulator():

    def tf32(x):
        """x rounded to TF32 (10 explicit mantissa bits), nearest with ties away from zero; NaN and
        ±inf unchanged; a float32 whose low 13 bits are zero."""
        bits = int(np.float32(x).view(np.uint32))
        if bits & 0x7F800000 == 0x7F800000:
            return np.float32(x)
        return np.uint32(((bits + 0x1000) & 0xFFFFE000) & 0xFFFFFFFF).view(np.float32)

    @cuda.jit(device=True)  # (the simulator gives a jitted function's module its fake ``cuda`` while it runs)
    def mma(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k8 TF32 warp product (the module docstring's fragments): the lanes
        swap fragments through ``xch``; every thread of the block must call it."""
        base = tid * XCH_PER_THREAD
        for i, x in enumerate((a0, a1, a2, a3, b0, b1)):
            xch[base + i] = x
        cuda.syncthreads()
        warp0 = tid - tid % 32
        lane = tid - warp0
        g, t = lane // 4, lane % 4
        out = []
        for c, row, col in ((c0, g, 2 * t), (c1, g, 2 * t + 1), (c2, g + 8, 2 * t), (c3, g + 8, 2 * t + 1)):
            total = float(c)
            for k in range(8):
                # A[row, k]: lane (row % 8)·4 + k % 4, register a0..a3; B[k, col]: lane col·4 + k % 4, b0 or b1
                a = xch[(warp0 + (row % 8) * 4 + k % 4) * XCH_PER_THREAD + (row >= 8) + 2 * (k >= 4)]
                b = xch[(warp0 + col * 4 + k % 4) * XCH_PER_THREAD + 4 + (k >= 4)]
                total += float(a) * float(b)
            out.append(np.float32(total))
        cuda.syncthreads()
        return out[0], out[1], out[2], out[3]

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def tf32(typingctx, x):
        """x rounded to TF32 (``cvt.rna.tf32.f32``), as a float32 whose low 13 bits are zero.

        (A side effect for LLVM: loop-invariant conversions would otherwise be hoisted out of the
        K/V loop and held in registers, Q's twice over.)"""
        if x != types.float32:
            return None
        sig = types.float32(types.float32)

        def codegen(context, builder, signature, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            cvt = ir.InlineAsm(ir.FunctionType(i32, [f32]), "cvt.rna.tf32.f32 $0, $1;", "=r,f", side_effect=True)
            return builder.bitcast(builder.call(cvt, args), f32)

        return sig, codegen

    _MMA = ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")

    @intrinsic
    def _mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        f = types.float32
        if any(x != f for x in (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)):
            return None
        sig = types.UniTuple(f, 4)(f, f, f, f, f, f, f, f, f, f)

        def codegen(context, builder, signature, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            asm = ir.InlineAsm(fnty, _MMA, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", side_effect=True)
            ins = [builder.bitcast(v, i32) for v in args[:6]] + list(args[6:])
            res = builder.call(asm, ins)
            return context.make_tuple(builder, signature.return_type, [builder.extract_value(res, i) for i in range(4)])

        return sig, codegen

    @cuda.jit(device=True, forceinline=True)
    def mma(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k8 TF32 warp product (the module docstring's fragments): float32
        values (A and B holding TF32 ones); ``xch`` and ``tid`` are the simulator's."""
        return _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
