"""TVM side of ``ShiftMatMul``: the TE compute, its CPU schedule and the Relax converter.

The compute decodes each weight code in the product's expression (``e = |c| - 1``, the sign
and the zero weight as selects) and sums ``x << e`` in int32 over k with ``te.sum``. Integer
sums are associative, so any loop order and vector split gives the spec's bits.

Schedule (:func:`schedule`, one for every CPU target): A's leading dims and the rows fused into
one outer loop (parallel when the work is large enough), column chunks of :data:`LANES` int32,
then k serial, then the chunk's columns vectorized: per k, one activation broadcast and shifted
by a vector of per-column shift counts (AVX2 / AVX-512 ``vpsllvd``, NEON ``sshl``: LLVM picks
the instruction from the target, 8 lanes being one ymm, half a zmm or two q registers), the
signs applied by blends, added to the accumulators. No per-ISA variant: the same three
instructions exist on each, only the register width differs, and LLVM splits or joins the
vectors. The accumulator is initialized by its own block before the k loop
(``decompose_reduction``).

CUDA (:func:`gpu_func`): one thread per output element (rows and column fused, blocks of
:data:`~edgert.ops._common.gpu.THREADS`), k serial in a register accumulator: per k one
variable shift, a negation select and an int32 add, no multiply.

The converter emits the compute with ``emit_te`` and replaces the PrimFunc by its scheduled
form, marked ``tirx.is_scheduled`` (the CPU pipeline's rules leave it alone) and opaque to
operator fusion (``op_pattern`` 8).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._common.gpu import mark
from edgert.ops._common.relax_util import EdgertConverter
from edgert.ops.shift_matmul import OP

LANES = 8
"""int32 columns per vector: 32 bytes."""
PARALLEL_MIN_WORK = 1 << 15
"""Products (rows x columns x K, static) below which the kernel runs on one thread."""


def shift_tir(x: Any, code: Any) -> Any:
    """One product ``shift(x, c)`` of the spec: ``x`` any integer PrimExpr, ``code`` the int8
    weight code -> int32 PrimExpr."""
    x32, c = x.astype("int32"), code.astype("int32")
    zero = tirx.const(0, "int32")
    mag = tirx.Select(c < zero, zero - c, c)
    p = x32 << tirx.max(mag - tirx.const(1, "int32"), zero)
    return tirx.Select(c > zero, p, tirx.Select(c < zero, zero - p, zero))


def te_compute(a: Any, w: Any) -> Any:
    """TVM TE ShiftMatMul: ``a`` int8|int16 [..., M, K], ``w`` int8 codes [K, N] -> int32
    [..., M, N]."""
    *lead, depth = a.shape
    cols = w.shape[1]
    r = te.reduce_axis((0, depth), name="k")

    def body(*idx):
        *row, j = idx
        return te.sum(shift_tir(a(*row, r), w(r, j)), axis=r)

    return te.compute((*lead, cols), body, name="shift_matmul")


def _static(dim: Any) -> int | None:
    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def schedule(func: Any) -> Any:
    """The scheduled form of the PrimFunc of :func:`te_compute` (module docstring): columns
    vectorized, k serial inside each column chunk, rows in parallel when the work is large;
    marked scheduled and opaque to fusion."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("shift_matmul")
    *outer, col, k = sch.get_loops(block)
    extents = [_static(sch.get(loop).extent) for loop in (*outer, col, k)]
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    work = 1
    for e in extents:
        work = None if work is None or e is None else work * e
    if work is None or work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)                   # before decompose_reduction, which it requires
    n = extents[-2]
    lanes = LANES if n is None or n % LANES == 0 or n % 4 else 4
    chunk, lane = sch.split(col, factors=[None, lanes])
    sch.reorder(chunk, k, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, k)
    init_lane = sch.get_loops(init)[-1]
    if sch.get(init_lane).kind != sch.get(lane).kind:
        sch.vectorize(init_lane)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def gpu_func(func: Any) -> Any:
    """The CUDA kernel for a kernel of this op (module docstring)."""
    from tvm import s_tir

    from edgert.ops._common import gpu

    sch = s_tir.Schedule(gpu.rebuild(func, te_compute))
    return gpu.finish(gpu.bind_outputs(sch, "shift_matmul"))


class Converter(EdgertConverter):
    """``edgert.ShiftMatMul``: the TE compute, replaced by its :func:`schedule`."""

    op = OP

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        a, w = [bb.normalize(x) for x in inputs if x is not None]
        out = bb.emit_te(te_compute, a, w, primfunc_name_hint=OP.folder)
        gv = bb.lookup_binding(out).args[0]
        func = bb.get()[gv]
        if not (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
            bb.update_func(gv, mark(schedule(func), OP.folder, {}))
        return out
