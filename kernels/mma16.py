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

Two data movers serve the products (FlashAttention-2's):

- ``ldsm(sm, xch, tid, at)`` is ``ldmatrix.sync.aligned.m8n8.x4.shared.b16``: four 8×8 tiles of
  16-bit values from shared memory (``sm``, uint32 words). Lane l gives the address (word index
  ``at``, a multiple of 4) of row l % 8 of tile l // 8, 16 bytes; its register m comes back holding
  word l % 4 of row l // 4 of tile m, that is elements 2t, 2t + 1 of row g: a B fragment's b0 or
  b1 where the tile's rows are B's columns. ``ldsm_t`` (``.trans``) gives the transpose: elements
  (row 2t, column g) and (row 2t + 1, column g) of tile m, low half first: a B fragment where the
  tile's rows are B's rows.
- ``cp_async(sm, at, src, row, word, valid)`` is ``cp.async.cg.shared.global``: 16 bytes (words
  ``word`` .. ``word`` + 3 of ``src``'s row ``row``) to ``sm[at]`` .. ``sm[at + 3]``, without
  passing through registers, or 16 zero bytes where ``valid`` is false; ``cp_async_commit`` closes
  a group of them and ``cp_async_wait`` waits for every group the thread has committed
  (``cp_async_wait_but_one``: all but the newest); a barrier must follow before other threads
  read the words.

Two memory-model operations serve blocks that hand work to each other through a counter in
global memory (int32, at gpu scope; the ordered dQ of kernels/backward_tc.py):

- ``ld_acquire(a, i)`` is ``ld.acquire.gpu``: reads ``a[i]``, and nothing the thread does after
  it is seen before it (with a barrier after it, nothing the block does);
- ``red_release(a, i, v)`` is ``red.release.gpu.add``: adds ``v`` to ``a[i]`` once everything the
  thread did before is seen at gpu scope (with a barrier before it, everything the block did).

Neither needs a separate fence: on the H200 a ``fence.acq_rel.gpu`` (or ``cuda.threadfence``, a
``fence.sc.gpu``) where a block waits for its turn cost the ordered dQ 4.5–7% of the backward's time
(BENCHMARKS.md, "Fast backward, fp32: dQ in a fixed order").

On the GPU these are inline PTX. The simulator has no tensor cores and no cross-lane registers:
there the lanes swap their fragments through a shared array (``xch``, :data:`XCH16_PER_THREAD`
uint32 per thread, allocated by the kernel) with a barrier before and after, so every thread of
the block must make the same calls. Its 16-bit inputs are exact, its products are summed in fp64
and rounded once to fp32 per product (which the tensor cores need not match bit for bit), and its
packing rounds with NumPy's float16 and ml_dtypes' bfloat16 (to nearest even). Its ldmatrix
swaps the row addresses through the same exchange array; its cp.async copies at once. Its counter
operations are an atomic read, and a fence then an atomic add.
"""

import ml_dtypes
import numpy as np
from numba import cuda, uint64

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

    @cuda.jit(device=True)
    def _ldsm(sm, xch, tid, at, trans):
        """ldmatrix.x4 in the simulator: the lanes swap their row addresses through ``xch``."""
        xch[tid * XCH16_PER_THREAD] = at
        cuda.syncthreads()
        warp0 = tid - tid % 32
        lane = tid - warp0
        g, t = lane // 4, lane % 4
        out = []
        for m in range(4):
            if trans:
                lo, hi = (int(xch[(warp0 + 8 * m + 2 * t + e) * XCH16_PER_THREAD]) for e in (0, 1))
                half = 16 * (g % 2)
                out.append(np.uint32((((int(sm[lo + g // 2]) >> half) & 0xFFFF)
                                      | (((int(sm[hi + g // 2]) >> half) & 0xFFFF) << 16))))
            else:
                out.append(np.uint32(sm[int(xch[(warp0 + 8 * m + g) * XCH16_PER_THREAD]) + t]))
        cuda.syncthreads()
        return out[0], out[1], out[2], out[3]

    def ldsm(sm, xch, tid, at):
        """Four 8×8 tiles of 16-bit values, ldmatrix.x4 (the module docstring); every thread of the
        block must call it."""
        return _ldsm(sm, xch, tid, at, False)

    def ldsm_t(sm, xch, tid, at):
        """Four 8×8 tiles of 16-bit values, transposed: ldmatrix.x4.trans (the module docstring)."""
        return _ldsm(sm, xch, tid, at, True)

    def cp_async(sm, at, src, row, word, valid):
        """16 bytes of ``src``'s row ``row`` from word ``word`` on -> ``sm[at]``..: zeros where not
        ``valid`` (the module docstring); in the simulator, at once."""
        for i in range(4):
            sm[at + i] = src[row, word + i] if valid else 0

    @cuda.jit(device=True)
    def bar_sync(barrier, count):
        """A barrier of ``count`` threads (bar.sync ``barrier``, ``count``); in the simulator the
        whole block's (every thread of a kernel that calls it makes the same calls)."""
        cuda.syncthreads()

    def cp_async_commit():
        """Close the thread's group of cp_async copies (nothing to do in the simulator)."""

    def cp_async_wait():
        """Wait for the thread's committed cp_async copies (nothing to do in the simulator)."""

    def cp_async_wait_but_one():
        """Wait for all but the newest of the thread's committed groups (nothing to do in the simulator)."""

    @cuda.jit(device=True)
    def ld_acquire(a, i):
        """``a[i]``, read atomically (the simulator's memory is sequentially consistent)."""
        return cuda.atomic.add(a, i, 0)

    @cuda.jit(device=True)
    def red_release(a, i, v):
        """``a[i] += v`` atomically, after a fence."""
        cuda.threadfence()
        cuda.atomic.add(a, i, v)

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

    from numba.cuda import cgutils

    def _shared_address(context, builder, aryty, ary, index, index_type):
        """The 32-bit shared-window address of element ``index`` of a 1-D shared array."""
        data = context.make_array(aryty)(context, builder, ary).data
        i = context.cast(builder, index, index_type, types.intp)
        ptr = builder.gep(data, [i])
        return builder.ptrtoint(builder.addrspacecast(ptr, ir.PointerType(ptr.type.pointee, 3)), ir.IntType(32))

    def _ldsm_intrinsic(trans):
        ptx = (f"ldmatrix.sync.aligned.m8n8.x4{'.trans' if trans else ''}.shared.b16 "
               "{$0, $1, $2, $3}, [$4];")

        @intrinsic
        def _ld(typingctx, sm, at):
            if not isinstance(sm, types.Array) or sm.dtype != types.uint32 or not isinstance(at, types.Integer):
                return None
            sig = types.UniTuple(types.uint32, 4)(sm, at)

            def codegen(context, builder, signature, args):
                i32 = ir.IntType(32)
                addr = _shared_address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
                asm = ir.InlineAsm(ir.FunctionType(ir.LiteralStructType([i32] * 4), [i32]), ptx,
                                   "=r,=r,=r,=r,r,~{memory}", side_effect=True)
                res = builder.call(asm, [addr])
                return context.make_tuple(builder, signature.return_type,
                                          [builder.extract_value(res, i) for i in range(4)])

            return sig, codegen

        return _ld

    @intrinsic
    def _cp_async(typingctx, sm, at, src, row, word, valid):
        if not isinstance(sm, types.Array) or not isinstance(src, types.Array) or src.ndim != 2:
            return None

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            dst = _shared_address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
            srcty = signature.args[2]
            inds = [context.cast(builder, args[i], signature.args[i], types.intp) for i in (3, 4)]
            ptr = cgutils.get_item_pointer(context, builder, srcty, context.make_array(srcty)(context, builder, args[2]),
                                           inds, wraparound=False)
            gaddr = builder.ptrtoint(builder.addrspacecast(ptr, ir.PointerType(ptr.type.pointee, 1)), i64)
            ok = context.cast(builder, args[5], signature.args[5], types.boolean)
            size = builder.select(ok, ir.Constant(i32, 16), ir.Constant(i32, 0))
            asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [i32, i64, i32]),
                               "cp.async.cg.shared.global [$0], [$1], 16, $2;", "r,l,r,~{memory}", side_effect=True)
            builder.call(asm, [dst, gaddr, size])
            return context.get_dummy_value()

        return types.void(sm, at, src, row, word, valid), codegen

    def _asm_statement(ptx):
        @intrinsic
        def _stmt(typingctx):
            def codegen(context, builder, signature, args):
                builder.call(ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), ptx, "~{memory}", side_effect=True), [])
                return context.get_dummy_value()

            return types.void(), codegen

        return _stmt

    @intrinsic
    def _bar_sync(typingctx, barrier, count):
        if not isinstance(barrier, types.Integer) or not isinstance(count, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            ids = [context.cast(builder, args[i], signature.args[i], types.uint32) for i in (0, 1)]
            builder.call(ir.InlineAsm(ir.FunctionType(ir.VoidType(), [i32, i32]), "bar.sync $0, $1;",
                                      "r,r,~{memory}", side_effect=True), ids)
            return context.get_dummy_value()

        return types.void(barrier, count), codegen

    def _global_address(context, builder, aryty, ary, index, index_type):
        """The 64-bit generic address of element ``index`` of a 1-D array in global memory."""
        i = context.cast(builder, index, index_type, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, context.make_array(aryty)(context, builder, ary),
                                       [i], wraparound=False)
        return builder.ptrtoint(ptr, ir.IntType(64))

    def _counter_read(ptx):
        """An int32 read ``ptx`` of ``a[i]`` (operands: the value read, [the address]): an intrinsic."""

        @intrinsic
        def _read(typingctx, a, i):
            if not isinstance(a, types.Array) or a.ndim != 1 or a.dtype != types.int32 or not isinstance(i, types.Integer):
                return None

            def codegen(context, builder, signature, args):
                addr = _global_address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
                asm = ir.InlineAsm(ir.FunctionType(ir.IntType(32), [ir.IntType(64)]), ptx, "=r,l,~{memory}",
                                   side_effect=True)
                return builder.call(asm, [addr])

            return types.int32(a, i), codegen

        return _read

    @intrinsic
    def _red_release(typingctx, a, i, v):
        if (not isinstance(a, types.Array) or a.ndim != 1 or a.dtype != types.int32 or not isinstance(i, types.Integer)
                or not isinstance(v, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            addr = _global_address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
            x = context.cast(builder, args[2], signature.args[2], types.int32)
            builder.call(ir.InlineAsm(ir.FunctionType(ir.VoidType(), [ir.IntType(64), ir.IntType(32)]),
                                      "red.release.gpu.add.s32 [$0], $1;", "l,r,~{memory}", side_effect=True),
                         [addr, x])
            return context.get_dummy_value()

        return types.void(a, i, v), codegen

    _ld_acquire = _counter_read("ld.acquire.gpu.b32 $0, [$1];")

    @inline_device
    def ld_acquire(a, i):
        """``a[i]`` by ld.acquire.gpu (the module docstring)."""
        return _ld_acquire(a, i)

    @inline_device
    def red_release(a, i, v):
        """``a[i] += v`` by red.release.gpu.add (the module docstring)."""
        _red_release(a, i, v)

    _ldsm, _ldsm_t = _ldsm_intrinsic(False), _ldsm_intrinsic(True)
    _commit, _wait = _asm_statement("cp.async.commit_group;"), _asm_statement("cp.async.wait_group 0;")
    _wait_but_one = _asm_statement("cp.async.wait_group 1;")

    @inline_device
    def ldsm(sm, xch, tid, at):
        """Four 8×8 tiles of 16-bit values: ldmatrix.x4 (the module docstring); ``xch`` and ``tid``
        are the simulator's."""
        return _ldsm(sm, at)

    @inline_device
    def ldsm_t(sm, xch, tid, at):
        """Four 8×8 tiles of 16-bit values, transposed: ldmatrix.x4.trans (the module docstring)."""
        return _ldsm_t(sm, at)

    @inline_device
    def cp_async(sm, at, src, row, word, valid):
        """16 bytes of ``src``'s row ``row`` from word ``word`` on -> ``sm[at]``..: zeros where not
        ``valid`` (cp.async.cg, the module docstring)."""
        _cp_async(sm, at, src, row, word, valid)

    @inline_device
    def bar_sync(barrier, count):
        """bar.sync ``barrier``, ``count``: a barrier of ``count`` threads (whole warps; barrier 0 is
        ``cuda.syncthreads``'), which also orders their shared-memory accesses."""
        _bar_sync(barrier, count)

    @inline_device
    def cp_async_commit():
        """cp.async.commit_group: close the thread's group of copies."""
        _commit()

    @inline_device
    def cp_async_wait():
        """cp.async.wait_group 0: wait for every group the thread has committed."""
        _wait()

    @inline_device
    def cp_async_wait_but_one():
        """cp.async.wait_group 1: wait for all but the newest group the thread has committed."""
        _wait_but_one()

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


def row_copier(rows, words, stride, threads):
    """issue(xh, row0, n_valid, sm, base, tid): a block's cp.async copy of ``rows`` rows of ``words``
    32-bit words (a multiple of 4) of xh (2-D, rows of ``words`` words) from row row0 on -> SRAM at
    word ``base``, rows ``stride`` words apart: 16 bytes a thread, consecutive threads on consecutive
    16 bytes along a row, then the next row (whole sectors), zeros past n_valid rows. Every thread
    of the block (``threads`` of them) calls it; the caller commits the group."""
    per_row = words // 4
    chunks = rows * per_row
    its = -(-chunks // threads)
    full = chunks % threads == 0

    @inline_device
    def issue(xh, row0, n_valid, sm, base, tid):
        u0 = uint64(row0)
        n = uint64(n_valid)
        for it in range(its):
            e = uint64(tid) + uint64(it * threads)
            if full or e < uint64(chunks):
                r = e // uint64(per_row)
                w = (e % uint64(per_row)) * uint64(4)
                ok = r < n
                cp_async(sm, uint64(base) + r * uint64(stride) + w, xh, u0 + r if ok else u0, w, ok)

    return issue
