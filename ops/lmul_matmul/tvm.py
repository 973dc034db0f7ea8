"""TVM side of ``LMulMatMul``: the TE compute, its CPU schedule and the Relax converter.

The compute is the spec's arithmetic on uint32 bit patterns (``tirx.reinterpret``): the sum
of the two truncated magnitudes is below 2**32, and the range checks compare it with
``C + 0x00800000`` and ``C + 0x7F7FFFFF`` (both below 2**32) before subtracting ``C``, so no
uint32 operation wraps. The reduction is a float32 ``te.sum`` over k.

The converter hands the compute rank-3 operands ``[B, M, K] @ [B, K, N]`` (reshaped, batch
broadcast expanded: :func:`batched_operands`) and marks it with
the mantissa; CPU builds replace it by the vector kernel of :mod:`edgert.ops.lmul_matmul.tvm_cpu`
(``compiler/lower.py``), CUDA builds by :func:`gpu_func`. The generic schedule below is the
form the converter emits (and the reference for :func:`gpu_func`'s rebuild).

Schedule (:func:`schedule`, the same for x86 and aarch64): the batch and row loops fused into
one outer loop (parallel when the work is large enough), then column chunks of
:data:`LANES`, then k serial, then the chunk's columns vectorized (one AVX2 ymm register, two
NEON q registers). A static column count that is not a multiple of :data:`LANES` is
partitioned into a vectorized part and a scalar tail; a symbolic one (attention scores over a
dynamic sequence length) keeps the predicated chunk loop, which LLVM runs scalar (TVM's
``loop_partition`` takes static extents only). Each output element is still the sum of its
products in ascending k, each addition rounded: the spec's order, so every target gives the
spec's bits (no multiply in the chain, so nothing for LLVM to contract into an FMA). The
accumulator is initialized by its own block before the k loop (``decompose_reduction``).

CUDA (:func:`gpu_func`): one thread per output element (batch, row and column fused, blocks
of :data:`~edgert.ops._common.gpu.THREADS`), k serial in a register accumulator: the same
ascending-k float32 sum, so the GPU gives the spec's bits too (the L-Mul is integer adds on the
bit patterns; no multiply for ``--use_fast_math`` to contract).

The converter emits the compute with ``emit_te`` and replaces the PrimFunc by its scheduled
form, marked ``tirx.is_scheduled`` (the CPU pipeline's rules leave it alone) and opaque to
operator fusion (``op_pattern`` 8: a fused epilogue would bring the default loop nest back).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._common.gpu import mark
from edgert.ops._common.relax_util import EdgertConverter, attrs_of
from edgert.ops.lmul_matmul import OP
from edgert.ops.lmul_matmul.spec import (INF, MAGNITUDE, MAX_FINITE, MIN_NORMAL, NAN, SIGN,
                                         check_mantissa_bits, constant, truncation_mask)

MANTISSA_ATTR = "edgert.lmul_mantissa"
"""PrimFunc attribute the converter sets on its kernel (the mantissa bits): CPU builds swap in
:func:`edgert.ops.lmul_matmul.tvm_cpu.kernel` for it."""
LANES = 8
"""float32 columns per vector: 32 bytes."""
PARALLEL_MIN_WORK = 1 << 15
"""Products (rows x columns x K, static) below which the kernel runs on one thread."""


def _u32(value: int) -> Any:
    return tirx.const(value, "uint32")


def lmul_tir(x: Any, y: Any, mantissa_bits: int) -> Any:
    """One L-Mul of two float32 PrimExprs (the spec's bit-level form) -> float32 PrimExpr."""
    c = constant(mantissa_bits)
    xb, yb = tirx.reinterpret("uint32", x), tirx.reinterpret("uint32", y)
    ax, ay = xb & _u32(MAGNITUDE), yb & _u32(MAGNITUDE)
    mask = _u32(truncation_mask(mantissa_bits))
    s = (ax & mask) + (ay & mask)
    mag = tirx.Select(s < _u32(c + MIN_NORMAL), _u32(0),
                      tirx.Select(s > _u32(c + MAX_FINITE), _u32(MAX_FINITE), s - _u32(c)))
    zero = tirx.Or(ax < _u32(MIN_NORMAL), ay < _u32(MIN_NORMAL))
    inf = tirx.Or(ax == _u32(INF), ay == _u32(INF))
    mag = tirx.Select(inf, _u32(INF), tirx.Select(zero, _u32(0), mag))
    nan = tirx.Or(tirx.Or(ax > _u32(INF), ay > _u32(INF)), tirx.And(inf, zero))
    bits = tirx.Select(nan, _u32(NAN), ((xb ^ yb) & _u32(SIGN)) | mag)
    return tirx.reinterpret("float32", bits)


def _is_one(dim: Any) -> bool:
    return int(getattr(dim, "value", -1) if not isinstance(dim, int) else dim) == 1


def _broadcast(a_batch: list, b_batch: list) -> list:
    """The output batch dims (numpy broadcasting; two symbolic dims are taken as equal)."""
    n = max(len(a_batch), len(b_batch))
    a_pad = [None] * (n - len(a_batch)) + list(a_batch)
    b_pad = [None] * (n - len(b_batch)) + list(b_batch)
    out = []
    for x, y in zip(a_pad, b_pad):
        out.append(y if x is None or (_is_one(x) and y is not None) else x)
    return out


def _operand_index(dims: list, out_idx: tuple) -> list:
    """Indices into an operand's batch dims for output batch indices (right-aligned; a dim of
    1 is broadcast)."""
    offset = len(out_idx) - len(dims)
    return [0 if _is_one(d) else out_idx[offset + i] for i, d in enumerate(dims)]


def te_compute(a: Any, b: Any, *, mantissa_bits: int) -> Any:
    """TVM TE LMulMatMul: ``a`` float32 [..., M, K], ``b`` float32 [..., K, N] (batch dims
    broadcast) -> float32 [..., M, N], the products summed in ascending k."""
    m = check_mantissa_bits(mantissa_bits)
    *a_batch, rows, depth = a.shape
    *b_batch, _, cols = b.shape
    r = te.reduce_axis((0, depth), name="k")

    def body(*idx):
        *bi, i, j = idx
        x = a(*_operand_index(a_batch, tuple(bi)), i, r)
        y = b(*_operand_index(b_batch, tuple(bi)), r, j)
        return te.sum(lmul_tir(x, y, m), axis=r)

    return te.compute((*_broadcast(a_batch, b_batch), rows, cols), body, name="lmul_matmul")


def batched_operands(bb: Any, a: Any, b: Any) -> tuple[Any, Any, list]:
    """``a`` [..., M, K] and ``b`` [..., K, N] (Relax, numpy batch broadcasting) as the
    kernel's rank-3 operands ``[BA, M, K]``, ``[BB, K, N]`` (each batch 1 or the output's
    batch count; an operand broadcast over part of the batch is expanded with
    ``broadcast_to``), and the output's full shape ``[batch..., M, N]``."""
    from tvm import relax

    a_shape, b_shape = list(a.ty.shape.values), list(b.ty.shape.values)
    batch = _broadcast(a_shape[:-2], b_shape[:-2])
    count = 1
    for d in batch:
        count = count * d

    def rank3(x: Any, shape: list) -> Any:
        own = shape[:-2]
        if all(_is_one(d) for d in own):
            return bb.normalize(relax.op.reshape(x, [1, *shape[-2:]]))
        padded = [1] * (len(batch) - len(own)) + own
        if any(_is_one(d) and not _is_one(o) for d, o in zip(padded, batch)):
            x = bb.normalize(relax.op.broadcast_to(x, [*batch, *shape[-2:]]))
        return bb.normalize(relax.op.reshape(x, [count, *shape[-2:]]))

    return rank3(a, a_shape), rank3(b, b_shape), [*batch, a_shape[-2], b_shape[-1]]


def _static(dim: Any) -> int | None:
    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def schedule(func: Any) -> Any:
    """The scheduled form of the PrimFunc of :func:`te_compute` (module docstring): vectorized
    over columns, k serial, rows in parallel when the work is large; marked scheduled and
    opaque to fusion. A static column count that is not a multiple of :data:`LANES` is
    partitioned: the multiple is vectorized, the rest runs as a scalar tail (a predicated
    vector loop would make LLVM scalarize every column)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("lmul_matmul")
    *outer, col, k = sch.get_loops(block)
    extents = [_static(sch.get(loop).extent) for loop in (*outer, col, k)]
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = 1
    for e in extents:
        work = None if work is None or e is None else work * e
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)                   # before decompose_reduction, which it requires
    n = extents[-2]
    if n is not None and n > LANES and n % LANES:
        body, tail = sch.loop_partition(col, [n - n % LANES, None])
        _vectorize_columns(sch, sch.get_child_blocks(body)[0])
        tail_block = sch.get_child_blocks(tail)[0]
        sch.reorder(*sch.get_loops(tail_block)[-2:][::-1])     # k outside the tail columns
        sch.decompose_reduction(tail_block, sch.get_loops(tail_block)[-2])
    else:
        _vectorize_columns(sch, block)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def _vectorize_columns(sch: Any, block: Any) -> None:
    """Under the block's innermost two loops (columns, k): column chunks of :data:`LANES`
    (4 when the static count is a multiple of 4 only), k, the chunk's columns vectorized; the
    accumulators initialized by their own vectorized block before the k loop."""
    col, k = sch.get_loops(block)[-2:]
    n = _static(sch.get(col).extent)
    lanes = LANES if n is None or n % LANES == 0 or n % 4 else 4
    chunk, lane = sch.split(col, factors=[None, lanes])
    sch.reorder(chunk, k, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, k)
    init_lane = sch.get_loops(init)[-1]
    if sch.get(init_lane).kind != sch.get(lane).kind:
        sch.vectorize(init_lane)


def gpu_func(func: Any) -> Any:
    """The CUDA kernel for a kernel of this op (module docstring): one thread per output, k
    serial, accumulated in a register."""
    from tvm import s_tir

    from edgert.ops._common import gpu

    kwargs = gpu.kwargs_of(func)
    sch = s_tir.Schedule(gpu.rebuild(func, lambda a, b: te_compute(a, b, **kwargs)))
    return gpu.finish(gpu.bind_outputs(sch, "lmul_matmul"))


class Converter(EdgertConverter):
    """``edgert.LMulMatMul``: the TE compute, replaced by its :func:`schedule`."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        from tvm import relax

        a, b = [bb.normalize(x) for x in inputs if x is not None]
        kwargs = OP.node_kwargs(attrs_of(attr))
        a3, b3, shape = batched_operands(bb, a, b)           # [B, M, K] @ [B, K, N]
        out = bb.emit_te(te_compute, a3, b3, **kwargs, primfunc_name_hint=OP.folder)
        gv = bb.lookup_binding(out).args[0]
        func = bb.get()[gv]
        if not (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
            func = mark(schedule(func), OP.folder, kwargs)
            bb.update_func(gv, func.with_attr(MANTISSA_ATTR, kwargs["mantissa_bits"]))
        return bb.normalize(relax.op.reshape(out, shape))
