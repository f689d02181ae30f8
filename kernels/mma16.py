"""Tensor-core products of 16-bit inputs with fp32 accumulation: the fp16 and bf16 warp products
and the packing of two fp32 values into one 16-bit pair, with the CUDA simulator's fallback
chosen here, in one place (as kernels/mma.py does for the TF32 product).

The warp product is PTX's ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`` (and its
``.bf16`` twin): D = C + A·B with A 16×16, B 16×8, C and D 16×8 in fp32, spread over the 32
lanes of a warp. A and B are 16-bit values, two to a 32-bit register: the lower column (A) or
row (B) index in the low half. Lane l has g = l // 4 and t = l % 4 and holds

    A: a0 = A[g, 2t : 2t+2], a1 = A[g + 8, 2t : 2t+2], a2 = A[g, 2t+8 : 2t+10], a3 = A[g + 8, 2t+8 : 2t+10]
    B: b0 = B[2t : 2t+2, g], b1 = B[2t+8 : 2t+10, g]
    C, D: c0 = C[g, 2t], c1 = C[g, 2t + 1], c2 = C[g + 8, 2t], c3 = C[g + 8, 2t + 1]

C's layout for two adjacent 8-column tiles, c0..c3 of tile 2c and of tile 2c + 1, is A's layout
for one 16-column step (rows g and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9): what
FlashAttention-2 uses to feed the S accumulator, as P, straight back into the P·V product.

``pack(lo, hi)`` rounds two fp32 values to the 16-bit type (to nearest, ties to even) and packs
them as a register holds them: lo in the low half. On the GPU it is ``cvt.rn.f16x2.f32`` (or
``.bf16x2``), one instruction; PTX puts its first source operand in the upper half.

On the GPU these are inline PTX. The simulator has no tensor cores and no cross-lane registers:
there the lanes swap their fragments through a shared array (``xch``, :data:`XCH16_PER_THREAD`
uint32 per thread, allocated by the kernel) with a barrier before and after, so every thread of
the block must make the same calls. Its 16-bit inputs are exact, its products are summed in fp64
and rounded once to fp32 per product (which the tensor cores need not match bit for bit), and its
packing rounds with NumPy's float16 and ml_dtypes' bfloat16 (to nearest even).
"""

import ml_dtypes
import numpy as np
from numba import cuda

from kernels.tiles import inline_device
from sandbox.vocabulary.dtypes import is_bfloat16
from sandbox.vocabulary.runtime import using_simulator

#: uint32 of the simulator's exchange array per thread (unused on the GPU): a lane's A and B fragments.
XCH16_PER_THREAD = 6

if using_simulator():

    def _halves_f16(words):
        """The fp16 values of uint32 registers, two per register (low half first), as Python floats."""
        return np.ascontiguousarray(words, np.uint32).ravel().view(np.float16).tolist()

    def _halves_bf16(words):
        """The bf16 values of uint32 registers, two per register (low half first), as Python floats
        (a bf16 is fp32's high half)."""
        bits = np.ascontiguousarray(words, np.uint32).ravel().view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).tolist()

    def _pack_with(t):
        def pack(lo, hi):
            with np.errstate(over="ignore"):  # (beyond the type's range: inf, as on the GPU)
                bits = np.array([lo, hi], np.float32).astype(t).view(np.uint16)
            return np.uint32(int(bits[0]) | (int(bits[1]) << 16))

        return pack

    pack_f16 = _pack_with(np.float16)
    pack_f16.__doc__ = "(lo, hi) fp32 -> one register of two fp16, rounded to nearest even (the module docstring)."
    pack_bf16 = _pack_with(ml_dtypes.bfloat16)
    pack_bf16.__doc__ = "(lo, hi) fp32 -> one register of two bf16, rounded to nearest even (the module docstring)."

    def _make_mma(halves):
        @cuda.jit(device=True)  # (the simulator gives a jitted function's module its fake ``cuda`` while it runs)
        def mma(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            """D = C + A·B, one m16n8k16 warp product (the module docstring's fragments): the lanes
            swap fragments through ``xch``; every thread of the block must call it."""
            base = tid * XCH16_PER_THREAD
            for i, x in enumerate((a0, a1, a2, a3, b0, b1)):
                xch[base + i] = x
            cuda.syncthreads()
            warp0 = tid - tid % 32
            lane = tid - warp0
            g, t = lane // 4, lane % 4
            regs = np.asarray(xch[warp0 * XCH16_PER_THREAD:(warp0 + 32) * XCH16_PER_THREAD]).reshape(32, -1)
            # A[row, k] for k = 0..15: lanes (row % 8)·4 + 0..3, register a0 or a1 (row >= 8) for k < 8,
            # a2 or a3 for k >= 8, half k % 2; B[k, col]: lanes col·4 + 0..3, register b0 (k < 8) or b1
            a_rows = [halves([regs[(row % 8) * 4:(row % 8) * 4 + 4, (row >= 8) + 2 * hi] for hi in (0, 1)])
                      for row in (g, g + 8)]
            b_cols = [halves([regs[col * 4:col * 4 + 4, 4 + hi] for hi in (0, 1)]) for col in (2 * t, 2 * t + 1)]
            out = []
            for c, i, j in ((c0, 0, 0), (c1, 0, 1), (c2, 1, 0), (c3, 1, 1)):
                total = float(c)
                for a, b in zip(a_rows[i], b_cols[j]):  # (fp16 and bf16 products are exact in fp64)
                    total += a * b
                out.append(np.float32(total))
            cuda.syncthreads()
            return out[0], out[1], out[2], out[3]

        return mma

    mma_f16 = _make_mma(_halves_f16)
    mma_bf16 = _make_mma(_halves_bf16)

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    def _mma_intrinsic(ab):
        ptx = (f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32 "
               "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")

        @intrinsic
        def _mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            f, u = types.float32, types.uint32
            if any(x != u for x in (a0, a1, a2, a3, b0, b1)) or any(x != f for x in (c0, c1, c2, c3)):
                return None
            sig = types.UniTuple(f, 4)(u, u, u, u, u, u, f, f, f, f)

            def codegen(context, builder, signature, args):
                f32, i32 = ir.FloatType(), ir.IntType(32)
                fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
                asm = ir.InlineAsm(fnty, ptx, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", side_effect=True)
                res = builder.call(asm, list(args))
                return context.make_tuple(builder, signature.return_type,
                                          [builder.extract_value(res, i) for i in range(4)])

            return sig, codegen

        return _mma

    def _pack_intrinsic(ab):
        ptx = f"cvt.rn.{ab}x2.f32 $0, $2, $1;"  # (PTX: the first source goes to the upper half)

        @intrinsic
        def _pack(typingctx, lo, hi):
            if lo != types.float32 or hi != types.float32:
                return None

            def codegen(context, builder, signature, args):
                f32, i32 = ir.FloatType(), ir.IntType(32)
                asm = ir.InlineAsm(ir.FunctionType(i32, [f32, f32]), ptx, "=r,f,f")
                return builder.call(asm, list(args))

            return types.uint32(types.float32, types.float32), codegen

        return _pack

    _mma_f16, _mma_bf16 = _mma_intrinsic("f16"), _mma_intrinsic("bf16")
    _pack_f16, _pack_bf16 = _pack_intrinsic("f16"), _pack_intrinsic("bf16")

    @inline_device
    def mma_f16(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k16 fp16 warp product (the module docstring's fragments): A and B
        uint32 registers of two fp16 each, C and D fp32; ``xch`` and ``tid`` are the simulator's."""
        return _mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

    @inline_device
    def mma_bf16(xch, tid, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = C + A·B, one m16n8k16 bf16 warp product, as :func:`mma_f16`."""
        return _mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

    @inline_device
    def pack_f16(lo, hi):
        """(lo, hi) fp32 -> one register of two fp16: ``cvt.rn.f16x2.f32`` (the module docstring)."""
        return _pack_f16(lo, hi)

    @inline_device
    def pack_bf16(lo, hi):
        """(lo, hi) fp32 -> one register of two bf16: ``cvt.rn.bf16x2.f32`` (the module docstring)."""
        return _pack_bf16(lo, hi)


def products(dtype):
    """(mma, pack) for 16-bit inputs of ``dtype``: :func:`mma_f16` and :func:`pack_f16` for
    float16, :func:`mma_bf16` and :func:`pack_bf16` for bfloat16.

    Raises:
        ValueError: any other dtype.
    """
    if is_bfloat16(dtype):
        return mma_bf16, pack_bf16
    if np.dtype(dtype) == np.float16:
        return mma_f16, pack_f16
    raise ValueError(f"the 16-bit tensor-core products take float16 or bfloat16 operands, not {np.dtype(dtype).name}")
