"""Tensor-core products in fp32 precision: TF32 rounding and the 3xTF32 warp product, with the
CUDA simulator's fallback chosen here, in one place (and likewise the softmax's ``exp2``).

A float32 x is split into two parts (``split``): big = x rounded to TF32 (10 explicit mantissa
bits; to nearest, ties away from zero: half a TF32 ulp added to the bits, the low 13 bits cleared)
and small = x - big (exact in fp32), so x = big + small. The tensor cores read an fp32 operand as
TF32 by ignoring its low 13 bits (truncation, pinned by ``test_mma_truncates_operands``), so the
small part goes in raw and enters truncated, within 2^-10 of itself, that is within 2^-21·|x|. A
product a·b is then a_small·b_big + a_big·b_small + a_big·b_big (the a_small·b_small term, about
2^-22 of it, is dropped): three TF32 tensor-core products give an fp32-accurate one. This is
CUTLASS's ``OpMultiplyAddFastF32``, which PyTorch's memory-efficient SDPA kernel uses for fp32
inputs on sm_80 and newer (``DefaultGemmType<ArchTag, float>`` in its ``gemm_kernel_utils.h``),
with the same cheap rounding (its ``round_half_ulp_truncate``: three integer and float
instructions per split, where ``cvt.rna.tf32.f32`` is emulated by four per conversion on sm_90).

Inf stays inf (small = NaN then, as inf - inf); a finite x within half a TF32 ulp of the float32
maximum rounds to inf; a NaN whose payload lies only in the low 13 bits becomes inf, and its
small part NaN. Either way the products that use the small part are NaN, except the A_big·B_small
product skipped for fp16/bf16 inputs, whose NaNs keep their high payload bit.

The warp product is PTX's ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``: D = C + A·B
with A 16×8, B 8×8, C and D 16×8, spread over the 32 lanes of a warp. Lane l has
g = l // 4 and t = l % 4 and holds

    A: a0 = A[g, t], a1 = A[g + 8, t], a2 = A[g, t + 4], a3 = A[g + 8, t + 4]
    B: b0 = B[t, g], b1 = B[t + 4, g]
    C, D: c0 = C[g, 2t], c1 = C[g, 2t + 1], c2 = C[g + 8, 2t], c3 = C[g + 8, 2t + 1]

``exp2`` is the GPU's ``ex2.approx.ftz.f32`` (one MUFU.EX2; libdevice's exp2f is the same
instruction wrapped in a rescaling for subnormal results: 2 ulp on normal results, CUDA's math
API says), so results below 2^-126 are zero; in the simulator it is Python's, rounded to fp32.

On the GPU these are inline PTX (the rounding's integer add and mask, and ``mma.sync``). The simulator has no
tensor cores and no cross-lane registers: there the lanes of a warp swap their fragments through
a shared array (``xch``, :data:`XCH_PER_THREAD` floats per thread, allocated by the kernel),
with a barrier before and after, so every thread of the block must make the same calls. Its
split is the GPU's bit for bit and it truncates the operands as the tensor cores do; its sums
are fp64 rounded once to fp32 per product, which the tensor cores need not match bit for bit.
"""

import numpy as np
from numba import cuda

from kernels.tiles import inline_device
from sandbox.vocabulary.runtime import using_simulator

#: Floats of the simulator's exchange array per thread (unused on the GPU): a lane's A and B fragments.
XCH_PER_THREAD = 6

if using_simulator():

    def _bits(x):
        return int(np.float32(x).view(np.uint32))

    def _float(bits):
        return np.uint32(bits & 0xFFFFFFFF).view(np.float32)

    def split(x):
        """(big, small): big = x rounded to TF32 (half an ulp added to the bits, the low 13 bits
        cleared), small = x - big (the module docstring)."""
        x = np.float32(x)
        big = _float((_bits(x) + 0x1000) & 0xFFFFE000)
        with np.errstate(invalid="ignore"):
            return big, np.float32(x - big)

    def exp2(x):
        """2^x in fp32 (the GPU's is ex2.approx.ftz.f32): inf above fp32's range, as on the GPU
        (Python's ``math.exp2`` would raise there)."""
        with np.errstate(over="ignore"):
            return np.float32(np.exp2(np.float64(x)))

    def _truncated(x):
        """x as the tensor cores read a TF32 operand: its low 13 bits ignored."""
        return float(_float(_bits(x) & 0xFFFFE000))

    def _tf32_values(x):
        """The one value of a TF32 register, as the tensor cores read it."""
        return (_truncated(x),)

    @cuda.jit(device=True)  # (the simulator gives a jitted function's module its fake ``cuda`` while it runs)
    def simulated_mma(xch, tid, per_thread, k_dim, values, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k``k_dim`` warp product in the simulator, with the fragments of the
        module docstring (and kernels/mma16.py's for k_dim = 16): a register holds k_dim // 8 values
        of A's row or B's column, the lower k first, and ``values(x)`` gives them as the tensor cores
        read them. The lanes swap fragments through ``xch`` (``per_thread`` entries a thread) between
        two barriers, so every thread of the block must call it; each sums its c0..c3 in fp64 and
        rounds once to fp32."""
        base = tid * per_thread
        for i, x in enumerate((a0, a1, a2, a3, b0, b1)):
            xch[base + i] = x
        cuda.syncthreads()
        warp0 = tid - tid % 32
        lane = tid - warp0
        g, t = lane // 4, lane % 4
        per_register, half = k_dim // 8, k_dim // 2
        out = []
        for c, row, col in ((c0, g, 2 * t), (c1, g, 2 * t + 1), (c2, g + 8, 2 * t), (c3, g + 8, 2 * t + 1)):
            total = float(c)
            for k in range(k_dim):
                # A[row, k]: lane (row % 8)·4 + q, register a0..a3, value k % per_register;
                # B[k, col]: lane col·4 + q, register b0 or b1, value k % per_register
                q = (k % half) // per_register
                a = xch[(warp0 + (row % 8) * 4 + q) * per_thread + (row >= 8) + 2 * (k >= half)]
                b = xch[(warp0 + col * 4 + q) * per_thread + 4 + (k >= half)]
                total += values(a)[k % per_register] * values(b)[k % per_register]
            out.append(np.float32(total))
        cuda.syncthreads()
        return out[0], out[1], out[2], out[3]

    @cuda.jit(device=True)
    def mma(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k8 TF32 warp product (the module docstring's fragments): the lanes
        swap fragments through ``xch``; every thread of the block must call it."""
        return simulated_mma(xch, tid, XCH_PER_THREAD, 8, _tf32_values, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _tf32_big(typingctx, x):
        """x rounded to TF32: half a TF32 ulp added to the bits, the low 13 bits cleared.

        (Inline PTX with a side effect: LLVM would otherwise hoist loop-invariant splits out of
        the K/V loop and hold them in registers, Q's twice over.)"""
        if x != types.float32:
            return None
        sig = types.float32(types.float32)

        def codegen(context, builder, signature, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            asm = ir.InlineAsm(ir.FunctionType(i32, [i32]),
                               "{ .reg .b32 t; add.u32 t, $1, 4096; and.b32 $0, t, -8192; }", "=r,r",
                               side_effect=True)
            return builder.bitcast(builder.call(asm, [builder.bitcast(args[0], i32)]), f32)

        return sig, codegen

    @intrinsic
    def _ex2(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            asm = ir.InlineAsm(ir.FunctionType(f32, [f32]), "ex2.approx.ftz.f32 $0, $1;", "=f,f")
            return builder.call(asm, args)

        return types.float32(types.float32), codegen

    @inline_device
    def exp2(x):
        """2^x in fp32: ``ex2.approx.ftz.f32`` (the module docstring)."""
        return _ex2(x)

    @inline_device
    def split(x):
        """(big, small): big = x rounded to TF32, small = x - big (the module docstring)."""
        big = _tf32_big(x)
        return big, x - big

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

    @inline_device
    def mma(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k8 TF32 warp product (the module docstring's fragments): float32
        values, A and B read as TF32 (their low 13 bits ignored); ``xch`` and ``tid`` are the
        simulator's."""
        return _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
