"""ONNX -> Relax converters for the integer graph (``docs/integer-onnx.md``).

TVM's ONNX frontend looks converters up by ``op_type`` alone in the module function
``onnx_frontend._get_convert_map()``. :func:`integer_converters` swaps that function, for the
duration of one import, for one returning TVM's map plus ours:

- the edgert ops (``Requant``, ``Shiftmax``, ``ShiftGELU``, ``ILayerNorm``, ``IntMatMul``,
  ``LutMatMul``) as ``call_tir`` of their TE computes (``edgert.ops.<op>.te_compute``);
  ``LutMatMul`` (float32 or int8 activations, low-bit packed weights) on its generic TE compute,
  its layout read from (and checked against) its attributes;
- ``MatMulInteger`` on the IntMatMul compute (int32 accumulation, no zero points);
- ``ConvInteger`` (missing in TVM): int8 operands cast to int32, then TVM's ``Conv`` converter;
- ``QuantizeLinear`` / ``DequantizeLinear`` with the contract's arithmetic spelled out: one float32
  division, ``nearbyint`` (round half to even), clamp, cast; ``float32(q) * scale``. (TVM's
  quantize calls ``round``, which means half away from zero but which TVM happens to lower to
  ``llvm.nearbyint`` / CUDA ``nearbyintf``; ours does not depend on that lowering.)
- ``Gather`` of a 1-D constant index from a shape stays a shape (TVM's makes it a tensor, which
  Reshape/Expand then refuse); every other Gather is TVM's.

The domain of a node is not seen by the frontend: :func:`supported_ops` pairs each converter
with its domain so that the model check rejects e.g. a ``Requant`` outside ``edgert``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

from edgert.ops import DOMAIN

EDGERT_OPS = {"Requant": "requant", "Shiftmax": "shiftmax", "ShiftGELU": "shiftgelu",
              "ILayerNorm": "ilayernorm", "IntMatMul": "intmatmul", "LutMatMul": "lutmatmul"}
"""edgert op type -> module under ``edgert.ops``."""
STANDARD_OPS = ("MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear", "Gather")
"""Default-domain ops converted here instead of (or in the absence of) TVM's converters."""

INT_MATMUL_ATTRS = {"edgert.op": "intmatmul"}
"""PrimFunc attributes of the integer matmuls: ``compiler/schedule_intmatmul.py`` finds them
by it."""


def emit_int_matmul(bb: Any, a: Any, b: Any, name: str = "matmul_integer") -> Any:
    """``a @ b`` (int8/int16 operands, int32 out) emitted on the IntMatMul compute, marked
    for :mod:`edgert.compiler.schedule_intmatmul`."""
    from edgert.ops import intmatmul

    return bb.emit_te(intmatmul.te_compute, a, b, primfunc_name_hint=name,
                      primfunc_attrs=INT_MATMUL_ATTRS)

_lock = threading.RLock()


def supported_ops() -> frozenset[tuple[str, str]]:
    """``(domain, op_type)`` pairs this module adds to TVM's frontend."""
    return frozenset([(DOMAIN, op) for op in EDGERT_OPS] + [("", op) for op in STANDARD_OPS])


@contextlib.contextmanager
def integer_converters() -> Iterator[None]:
    """Within the block, TVM's ONNX frontend also knows the converters of this module.

    Re-entrant and serialized by a lock (the frontend's map is module state).
    """
    from tvm.relax.frontend.onnx import onnx_frontend

    with _lock:
        original = onnx_frontend._get_convert_map

        def convert_map() -> dict[str, Any]:
            return {**original(), **_converters()}

        onnx_frontend._get_convert_map = convert_map
        try:
            yield
        finally:
            onnx_frontend._get_convert_map = original


def _converters() -> dict[str, Any]:
    """op_type -> converter class (built once; needs TVM)."""
    global _CONVERTERS
    if _CONVERTERS is None:
        _CONVERTERS = _make_converters()
    return _CONVERTERS


_CONVERTERS: dict[str, Any] | None = None


def _dtype_name(elem_type: int) -> str:
    """numpy dtype name of an ONNX TensorProto element type (e.g. 3 -> ``"int8"``)."""
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(int(elem_type)).name


def _make_converters() -> dict[str, Any]:
    import numpy as np
    import tvm
    from tvm import relax, te, tirx
    from tvm.relax.frontend.onnx.onnx_frontend import Conv, Gather as TvmGather, OnnxOpConverter

    def dtype(x: Any) -> str:
        return str(x.ty.dtype)

    def ndim(x: Any) -> int:
        return int(x.ty.ndim)

    def attrs_of(attr: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in attr.items() if k != "tvm_custom"}

    def node_name(attr: dict[str, Any]) -> str:
        return attr.get("tvm_custom", {}).get("name") or "?"

    def is_zero_constant(x: Any) -> bool:
        return isinstance(x, tvm.ir.GenericConst) and not np.any(x.value.numpy())

    def channel(x: Any, scale: Any, axis: int) -> int | None:
        """Axis of ``x`` that a 1-D ``scale`` runs along (``None``: one scale)."""
        if ndim(scale) == 0:
            return None
        if ndim(scale) != 1:
            raise ValueError(f"only scalar or 1-D (per-axis) scales are supported, got {scale.ty}")
        size = scale.ty.shape[0]
        if isinstance(size, tirx.IntImm) and int(size) == 1:
            return None
        return axis % ndim(x)

    def scalar_or_channel(t: Any, ax: int | None, idx: tuple) -> Any:
        if ax is None:
            return t() if len(t.shape) == 0 else t[0]
        return t[idx[ax]]

    def as_vector(bb: Any, v: Any) -> Any:
        """A scalar as a [1] tensor (a new constant when ``v`` is one)."""
        if isinstance(v, tvm.ir.GenericConst):
            return relax.const(v.value.numpy().reshape(1))
        return bb.normalize(relax.op.reshape(v, [1]))

    class EdgertOp(OnnxOpConverter):
        """``call_tir`` of ``edgert.ops.<module>.te_compute(*inputs, **attributes)``."""

        module = ""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            mod = importlib.import_module(f"edgert.ops.{cls.module}")
            args = [bb.normalize(x) for x in inputs if x is not None]
            attrs = cls.attributes(attrs_of(attr))
            return bb.emit_te(mod.te_compute, *cls.prepare(bb, args), **attrs,
                              **cls.tables(args, attrs), primfunc_name_hint=cls.module)

        @classmethod
        def prepare(cls, bb: Any, args: list) -> list:
            return args

        @classmethod
        def tables(cls, args: list, attrs: dict[str, Any]) -> dict[str, Any]:
            """Constant lookup tables the TE compute takes as keyword arguments."""
            return {}

        @classmethod
        def attributes(cls, attrs: dict[str, Any]) -> dict[str, Any]:
            return attrs

    class Requant(EdgertOp):
        module = "requant"

        @classmethod
        def prepare(cls, bb: Any, args: list) -> list:
            # te_compute indexes multiplier/shift as [1] or [C]: give scalars a dimension.
            q, m, e = args
            if isinstance(m, tvm.ir.GenericConst) and isinstance(e, tvm.ir.GenericConst):
                from edgert.ops import requant

                narrowed = requant.narrow(m.value.numpy().reshape(-1), e.value.numpy().reshape(-1))
                if narrowed is not None:    # int32 multipliers: a vectorizable multiply
                    return [q, *map(relax.const, narrowed)]
            return [q, *(v if ndim(v) else as_vector(bb, v) for v in (m, e))]

        @classmethod
        def attributes(cls, attrs: dict[str, Any]) -> dict[str, Any]:
            return {**attrs, "to": _dtype_name(attrs["to"])}   # TensorProto enum -> dtype name

    class ShiftGELU(EdgertOp):
        """The kernel looks each result up in a table of every input value."""

        module = "shiftgelu"

        @classmethod
        def tables(cls, args: list, attrs: dict[str, Any]) -> dict[str, Any]:
            from edgert.ops import shiftgelu

            return {"table": relax.const(shiftgelu.lookup_table(str(args[0].ty.dtype), **attrs))}

    class Shiftmax(EdgertOp):
        """The kernel looks each exponential up in a table of every ``q - max_row(q)``."""

        module = "shiftmax"

        @classmethod
        def tables(cls, args: list, attrs: dict[str, Any]) -> dict[str, Any]:
            from edgert.ops import shiftmax

            table = shiftmax.exp_table(str(args[0].ty.dtype), x0=attrs["x0"], n=attrs["n"])
            return {"table": relax.const(table)}

    def refuse_zero_points(op: str, inputs: list, attr: dict[str, Any]) -> None:
        for zp in inputs[2:4]:
            if zp is not None and not is_zero_constant(zp):
                raise ValueError(f"{op} {node_name(attr)}: zero points are not supported "
                                 "(the integer graph is symmetric)")

    def refuse_blocked(op: str, attr: dict[str, Any]) -> None:
        if attr.get("block_size", 0):
            raise ValueError(f"{op} {node_name(attr)}: blocked quantization is not supported")

    def edgert_op(name: str, module: str) -> type:
        return type(name, (EdgertOp,), {"module": module})

    class MatMulInteger(OnnxOpConverter):
        """int8 x int8 -> int32 on the IntMatMul compute; zero points are refused."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            a, b = inputs[0], inputs[1]
            refuse_zero_points("MatMulInteger", inputs, attr)
            if ndim(a) < 2 or ndim(b) < 2 or ndim(b) > ndim(a):
                raise ValueError(f"MatMulInteger {node_name(attr)}: operands of rank >= 2 with "
                                 f"rank(B) <= rank(A) are supported, got {a.ty} and {b.ty}")
            return emit_int_matmul(bb, a, b)

    class IntMatMul(EdgertOp):
        """``edgert.IntMatMul`` (int8/int16 operands) on the IntMatMul compute."""

        module = "intmatmul"

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            a, b = [x for x in inputs if x is not None]
            return emit_int_matmul(bb, a, b, cls.module)

    class LutMatMul(OnnxOpConverter):
        """``edgert.LutMatMul(A, W, scales?, zero_points?)`` on ``lutmatmul.te_compute`` (the
        generic compute), marked ``edgert.op = "lutmatmul"`` with its layout: on x86 AVX2
        targets ``compiler/schedule_lut_x86.py`` replaces it by the vpshufb kernels."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            from edgert.errors import ArtifactError
            from edgert.ops import lutmatmul

            attrs = attrs_of(attr)
            try:
                layout = lutmatmul.LutLayout.from_attrs(attrs)
            except ArtifactError as e:
                raise ValueError(f"LutMatMul {node_name(attr)}: {e}") from None
            table_bits = int(attrs.get("table_bits", 0)) or None
            dequant = bool(attrs.get("dequant", 0))
            a, w = bb.normalize(inputs[0]), bb.normalize(inputs[1])
            scales = inputs[2] if len(inputs) > 2 else None
            zps = inputs[3] if len(inputs) > 3 else None
            extra = [bb.normalize(x) for x in (scales, zps) if x is not None]

            def compute(at: Any, wt: Any, *rest: Any) -> Any:
                it = iter(rest)
                st = next(it) if scales is not None else None
                zt = next(it) if zps is not None else None
                return lutmatmul.te_compute(at, wt, st, zt, layout=layout, table_bits=table_bits,
                                            dequant=dequant)

            from edgert.compiler.schedule_lut_x86 import primfunc_attrs

            # marked for compiler/schedule_lut_x86.py (the AVX2 kernel on x86 targets)
            tb = lutmatmul._table_bits(np.dtype(str(a.ty.dtype)), table_bits)
            return bb.emit_te(compute, a, w, *extra, primfunc_name_hint="lutmatmul",
                              primfunc_attrs=primfunc_attrs(layout, tb, scales is not None,
                                                            zps is not None, dequant))

    class ConvInteger(OnnxOpConverter):
        """int8 NCHW (or 1-D/3-D) convolution -> int32: operands cast to int32, then ``Conv``."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, w = inputs[0], inputs[1]
            refuse_zero_points("ConvInteger", inputs, attr)
            x32 = bb.normalize(relax.op.astype(x, "int32"))
            w32 = bb.normalize(relax.op.astype(w, "int32"))
            return Conv._impl_v11(bb, [x32, w32, None], dict(attr), params)

    class QuantizeLinear(OnnxOpConverter):
        """``saturate(nearbyint(x / scale) + zp)``: float32 division, round half to even."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x, scale = inputs[0], inputs[1]
            zp = inputs[2] if len(inputs) > 2 else None
            refuse_blocked("QuantizeLinear", attr)
            out = (_dtype_name(attr["output_dtype"]) if attr.get("output_dtype")
                   else dtype(zp) if zp is not None else "uint8")
            if out not in ("int8", "uint8", "int16", "uint16"):
                raise ValueError(f"QuantizeLinear {node_name(attr)}: output {out} not supported")
            if dtype(x) != "float32" or dtype(scale) != "float32":
                raise ValueError(f"QuantizeLinear {node_name(attr)}: float32 x and scale expected")
            ax = channel(x, scale, attr.get("axis", 1))
            info = np.iinfo(out)

            def compute(xt: Any, st: Any, zt: Any | None = None) -> Any:
                def body(*i):
                    v = tirx.nearbyint(xt(*i) / scalar_or_channel(st, ax, i))
                    if zt is not None:
                        v = v + scalar_or_channel(zt, ax, i).astype("float32")
                    v = tirx.max(tirx.min(v, tirx.const(float(info.max), "float32")),
                                 tirx.const(float(info.min), "float32"))
                    return v.astype(out)

                return te.compute(xt.shape, body, name="quantize")

            args = [x, scale] + ([] if zp is None or is_zero_constant(zp) else [zp])
            return bb.emit_te(compute, *args, primfunc_name_hint="quantize_linear")

    class DequantizeLinear(OnnxOpConverter):
        """``float32(q - zp) * scale`` in float32, scale scalar or per channel along ``axis``."""

        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            q, scale = inputs[0], inputs[1]
            zp = inputs[2] if len(inputs) > 2 else None
            refuse_blocked("DequantizeLinear", attr)
            if dtype(scale) != "float32" or not dtype(q).startswith(("int", "uint")):
                raise ValueError(f"DequantizeLinear {node_name(attr)}: integer q and float32 "
                                 f"scale expected, got {dtype(q)} and {dtype(scale)}")
            ax = channel(q, scale, attr.get("axis", 1))

            def compute(qt: Any, st: Any, zt: Any | None = None) -> Any:
                def body(*i):
                    v = qt(*i)
                    if zt is not None:   # int32 x - zp of int32 operands: exact for 8/16 bit
                        v = v.astype("int32") - scalar_or_channel(zt, ax, i).astype("int32")
                    return v.astype("float32") * scalar_or_channel(st, ax, i)

                return te.compute(qt.shape, body, name="dequantize")

            args = [q, scale] + ([] if zp is None or is_zero_constant(zp) else [zp])
            return bb.emit_te(compute, *args, primfunc_name_hint="dequantize_linear")

    class Gather(TvmGather):
        """TVM's Gather, plus a 1-D constant index into a shape (``Gather(Shape(x), [0])``), which
        TVM turns into a tensor that a following Reshape/Expand then refuses: kept a shape here."""

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            data, indices = inputs[0], inputs[1]
            if (isinstance(data, relax.ShapeExpr) and isinstance(indices, tvm.ir.GenericConst)
                    and indices.value.numpy().ndim == 1 and attr.get("axis", 0) == 0):
                idx, n = indices.value.numpy().tolist(), len(data.values)
                if all(-n <= i < n for i in idx):
                    return relax.ShapeExpr([data.values[i] for i in idx])
            return TvmGather._impl_v13(bb, inputs, attr, params)

    table = {op: edgert_op(op, module) for op, module in EDGERT_OPS.items()}
    table.update(ShiftGELU=ShiftGELU, Shiftmax=Shiftmax)
    table["Requant"] = Requant
    table["IntMatMul"] = IntMatMul
    table["LutMatMul"] = LutMatMul
    table.update(MatMulInteger=MatMulInteger, ConvInteger=ConvInteger, Gather=Gather,
                 QuantizeLinear=QuantizeLinear, DequantizeLinear=DequantizeLinear)
    return table
