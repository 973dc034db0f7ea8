"""TVM ONNX-frontend converters of the default-domain ops of the integer graph
(``docs/integer-onnx.md``); :mod:`edgert.compiler.lower_int` adds them to the frontend's map.

- ``MatMulInteger`` on the IntMatMul compute (int32 accumulation, no zero points);
- ``ConvInteger`` (missing in TVM): int8 operands cast to int32, then TVM's ``Conv`` converter;
- ``QuantizeLinear`` / ``DequantizeLinear`` with the contract's arithmetic spelled out: one float32
  division, ``nearbyint`` (round half to even), clamp, cast; ``float32(q) * scale``. (TVM's
  quantize calls ``round``, which means half away from zero but which TVM happens to lower to
  ``llvm.nearbyint`` / CUDA ``nearbyintf``; ours does not depend on that lowering.)
- ``Gather`` of a 1-D constant index from a shape stays a shape (TVM's makes it a tensor, which
  Reshape/Expand then refuse) unless an op that TVM's importer refuses shapes for reads it
  (:func:`shape_gathers_read_as_tensors`: TorchScript's BERT mask index ``Range(0, batch) *
  Shape(mask)[1:2]``), then an int64 tensor; every other Gather is TVM's.
- ``Expand`` to a constant shape of a tensor with a symbolic dim (an attention mask
  ``[batch, 1, 1, keys]`` expanded over the heads): the constant becomes a shape, which TVM's
  converter handles with symbolic dims (its constant path reads every data dim as a number).
- ``Range`` with constant integer start and step and a limit read from a shape (``arange(batch)``
  of an attention mask built by indexing): ``arange`` over the symbolic dim itself; TVM's
  converter turns the limit into a tensor and back into a new shape variable, which TVM's
  build then rejects (``VarRemapGet``).
- ``MaxPool`` (int8 in the integer graph): ``auto_pad = SAME_*`` becomes explicit pads computed
  from the static spatial dims (TVM's converter converts the whole shape to ints, so a dynamic
  batch fails, and its SAME_LOWER output size is floor, not ONNX's ceil); then TVM's MaxPool,
  which pads with the dtype's minimum.

Imports TVM: imported only when a model is converted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import onnx

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import Conv, OnnxOpConverter
from tvm.relax.frontend.onnx.onnx_frontend import Expand as TvmExpand
from tvm.relax.frontend.onnx.onnx_frontend import Gather as TvmGather
from tvm.relax.frontend.onnx.onnx_frontend import MaxPool as TvmMaxPool
from tvm.relax.frontend.onnx.onnx_frontend import Range as TvmRange

from edgert.onnx_graph import same_pads
from edgert.ops.intmatmul.tvm import emit_int_matmul
from edgert.ops._common.relax_util import dtype_name, node_name


def _dtype(x: Any) -> str:
    return str(x.ty.dtype)


def _ndim(x: Any) -> int:
    return int(x.ty.ndim)


def _is_zero_constant(x: Any) -> bool:
    return isinstance(x, tvm.ir.GenericConst) and not np.any(x.value.numpy())


def _channel(x: Any, scale: Any, axis: int) -> int | None:
    """Axis of ``x`` that a 1-D ``scale`` runs along (``None``: one scale)."""
    if _ndim(scale) == 0:
        return None
    if _ndim(scale) != 1:
        raise ValueError(f"only scalar or 1-D (per-axis) scales are supported, got {scale.ty}")
    size = scale.ty.shape[0]
    if isinstance(size, tirx.IntImm) and int(size) == 1:
        return None
    return axis % _ndim(x)


def _scalar_or_channel(t: Any, ax: int | None, idx: tuple) -> Any:
    if ax is None:
        return t() if len(t.shape) == 0 else t[0]
    return t[idx[ax]]


def _refuse_zero_points(op: str, inputs: list, attr: dict[str, Any]) -> None:
    for zp in inputs[2:4]:
        if zp is not None and not _is_zero_constant(zp):
            raise ValueError(f"{op} {node_name(attr)}: zero points are not supported "
                             "(the integer graph is symmetric)")


def _refuse_blocked(op: str, attr: dict[str, Any]) -> None:
    if attr.get("block_size", 0):
        raise ValueError(f"{op} {node_name(attr)}: blocked quantization is not supported")


class MatMulInteger(OnnxOpConverter):
    """int8 x int8 -> int32 on the IntMatMul compute; zero points are refused."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, b = inputs[0], inputs[1]
        _refuse_zero_points("MatMulInteger", inputs, attr)
        if _ndim(a) < 2 or _ndim(b) < 2 or _ndim(b) > _ndim(a):
            raise ValueError(f"MatMulInteger {node_name(attr)}: operands of rank >= 2 with "
                             f"rank(B) <= rank(A) are supported, got {a.ty} and {b.ty}")
        return emit_int_matmul(bb, a, b)


class ConvInteger(OnnxOpConverter):
    """int8 NCHW (or 1-D/3-D) convolution -> int32: operands cast to int32, then ``Conv``."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w = inputs[0], inputs[1]
        _refuse_zero_points("ConvInteger", inputs, attr)
        x32 = bb.normalize(relax.op.astype(x, "int32"))
        w32 = bb.normalize(relax.op.astype(w, "int32"))
        return Conv._impl_v11(bb, [x32, w32, None], dict(attr), params)


def _quantize_output(attr: dict[str, Any], zp: Any | None) -> str:
    """Output dtype of a QuantizeLinear: ``output_dtype``, else the zero point's, else uint8."""
    out = (dtype_name(attr["output_dtype"]) if attr.get("output_dtype")
           else _dtype(zp) if zp is not None else "uint8")
    if out not in ("int8", "uint8", "int16", "uint16"):
        raise ValueError(f"QuantizeLinear {node_name(attr)}: output {out} not supported")
    return out


class QuantizeLinear(OnnxOpConverter):
    """``saturate(nearbyint(x / scale) + zp)``: float32 division, round half to even."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 else None
        _refuse_blocked("QuantizeLinear", attr)
        out = _quantize_output(attr, zp)
        if _dtype(x) != "float32" or _dtype(scale) != "float32":
            raise ValueError(f"QuantizeLinear {node_name(attr)}: float32 x and scale expected")
        ax = _channel(x, scale, attr.get("axis", 1))
        info = np.iinfo(out)

        def compute(xt: Any, st: Any, zt: Any | None = None) -> Any:
            def body(*i):
                v = tirx.nearbyint(xt(*i) / _scalar_or_channel(st, ax, i))
                if zt is not None:
                    v = v + _scalar_or_channel(zt, ax, i).astype("float32")
                v = tirx.max(tirx.min(v, tirx.const(float(info.max), "float32")),
                             tirx.const(float(info.min), "float32"))
                return v.astype(out)

            return te.compute(xt.shape, body, name="quantize")

        args = [x, scale] + ([] if zp is None or _is_zero_constant(zp) else [zp])
        return bb.emit_te(compute, *args, primfunc_name_hint="quantize_linear")


class DequantizeLinear(OnnxOpConverter):
    """``float32(q - zp) * scale`` in float32, scale scalar or per channel along ``axis``."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        q, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 else None
        _refuse_blocked("DequantizeLinear", attr)
        if _dtype(scale) != "float32" or not _dtype(q).startswith(("int", "uint")):
            raise ValueError(f"DequantizeLinear {node_name(attr)}: integer q and float32 "
                             f"scale expected, got {_dtype(q)} and {_dtype(scale)}")
        ax = _channel(q, scale, attr.get("axis", 1))

        def compute(qt: Any, st: Any, zt: Any | None = None) -> Any:
            def body(*i):
                v = qt(*i)
                if zt is not None:   # int32 x - zp of int32 operands: exact for 8/16 bit
                    v = v.astype("int32") - _scalar_or_channel(zt, ax, i).astype("int32")
                return v.astype("float32") * _scalar_or_channel(st, ax, i)

            return te.compute(qt.shape, body, name="dequantize")

        args = [q, scale] + ([] if zp is None or _is_zero_constant(zp) else [zp])
        return bb.emit_te(compute, *args, primfunc_name_hint="dequantize_linear")


SHAPE_READERS = frozenset({"Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape",
                           "Expand", "Concat", "Equal", "Where", "Cast", "CastLike", "Squeeze"})
"""The ops TVM's ONNX importer lets read a shape value (its ``shape_compatible_ops``); it
refuses a shape input to any other op ("cannot handle ShapeExpr inputs")."""

_TENSOR_GATHERS: ContextVar[frozenset[str]] = ContextVar("tensor_gathers", default=frozenset())


def shape_gathers_read_as_tensors(model: onnx.ModelProto) -> frozenset[str]:
    """Names of the top-level ``Gather`` nodes whose output some op outside
    :data:`SHAPE_READERS` (or a graph output) reads: their shape values must be tensors.
    Only nodes with a unique, non-empty name (TVM passes the converter the node's name)."""
    graph = model.graph
    names = [n.name for n in graph.node]
    unique = {n for n in names if n and names.count(n) == 1}
    read_as_tensor = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type not in SHAPE_READERS or node.domain not in ("", "ai.onnx"):
            read_as_tensor.update(node.input)
    return frozenset(n.name for n in graph.node if n.op_type == "Gather" and n.name in unique
                     and any(o in read_as_tensor for o in n.output))


@contextlib.contextmanager
def tensor_gathers(model: onnx.ModelProto) -> Iterator[None]:
    """Within the block, :class:`Gather` reads :func:`shape_gathers_read_as_tensors` of
    ``model``."""
    token = _TENSOR_GATHERS.set(shape_gathers_read_as_tensors(model))
    try:
        yield
    finally:
        _TENSOR_GATHERS.reset(token)


class Gather(TvmGather):
    """TVM's Gather, plus a 1-D constant index into a shape (``Gather(Shape(x), [0])``), which
    TVM turns into a tensor that a following Reshape/Expand then refuses: kept a shape here,
    or, where an op that takes no shape reads it (:func:`tensor_gathers`), the int64 tensor of
    those dims."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, indices = inputs[0], inputs[1]
        if (isinstance(data, relax.ShapeExpr) and isinstance(indices, tvm.ir.GenericConst)
                and indices.value.numpy().ndim == 1 and attr.get("axis", 0) == 0):
            idx, n = indices.value.numpy().tolist(), len(data.values)
            if all(-n <= i < n for i in idx):
                picked = relax.ShapeExpr([data.values[i] for i in idx])
                if node_name(attr) in _TENSOR_GATHERS.get():
                    return bb.normalize(relax.op.shape_to_tensor(picked))
                return picked
        return TvmGather._impl_v13(bb, inputs, attr, params)


class Expand(TvmExpand):
    """TVM's Expand; a constant target shape of a tensor with a symbolic dim goes as a
    ``ShapeExpr`` (module docstring)."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, shape = inputs[0], inputs[1]
        if (isinstance(shape, tvm.ir.GenericConst) and shape.value.numpy().ndim == 1
                and not all(isinstance(d, tirx.IntImm) for d in data.ty.shape)):
            dims = [tirx.IntImm("int64", int(v)) for v in shape.value.numpy().tolist()]
            return TvmExpand._impl_v13(bb, [data, relax.ShapeExpr(dims)], attr, params)
        return TvmExpand._impl_v13(bb, inputs, attr, params)


def _shape_scalar(bb: Any, x: Any) -> Any:
    """A scalar integer input as a PrimExpr: an integer constant, or a value read from a shape
    (``reshape(shape_to_tensor(shape([d])), [])``, what TVM makes of ``Squeeze(Shape(x))``);
    else None."""
    for _ in range(8):
        if isinstance(x, tvm.ir.GenericConst):
            v = x.value.numpy()
            ok = v.size == 1 and v.dtype.kind in "iu"
            return tirx.IntImm("int64", int(v.reshape(()))) if ok else None
        if tvm.ir.is_prim_expr(x):
            return x
        if isinstance(x, relax.Var):
            x = bb.lookup_binding(x)
        elif isinstance(x, relax.Call) and x.op.name == "relax.reshape":
            x = x.args[0]
        elif isinstance(x, relax.Call) and x.op.name == "relax.shape_to_tensor":
            shape = x.args[0]
            ok = isinstance(shape, relax.ShapeExpr) and len(shape.values) == 1
            return shape.values[0] if ok else None
        else:
            return None
    return None


class Range(TvmRange):
    """TVM's Range; ``arange`` over a symbolic dim when the limit is read from a shape and
    start and step are integer constants (module docstring)."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        start, limit, step = (_shape_scalar(bb, x) for x in inputs)
        if (isinstance(start, tirx.IntImm) and isinstance(step, tirx.IntImm)
                and limit is not None and _dtype(inputs[0]) in ("int32", "int64")):
            return relax.op.arange(start, limit, step, _dtype(inputs[0]))
        return TvmRange._impl_v12(bb, inputs, attr, params)


class MaxPool(TvmMaxPool):
    """TVM's MaxPool with ``SAME_*`` padding resolved here from the static spatial dims."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        auto_pad = attr.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spatial = list(inputs[0].ty.shape)[2:]
            if not all(isinstance(d, tirx.IntImm) for d in spatial):
                raise ValueError(f"MaxPool {node_name(attr)}: auto_pad={auto_pad} needs static "
                                 "spatial dims")
            nd = len(spatial)
            attr = dict(attr)
            attr["pads"] = same_pads(auto_pad, [int(d) for d in spatial],
                                     list(attr["kernel_shape"]),
                                     list(attr.get("strides", [1] * nd)),
                                     list(attr.get("dilations", [1] * nd)))
            attr["auto_pad"] = b"NOTSET"
        return TvmMaxPool._impl_v1(bb, inputs, attr, params)


CONVERTERS: dict[str, type] = {
    "MatMulInteger": MatMulInteger, "ConvInteger": ConvInteger, "Gather": Gather,
    "Expand": Expand, "Range": Range,
    "MaxPool": MaxPool,
    "QuantizeLinear": QuantizeLinear, "DequantizeLinear": DequantizeLinear,
}
"""op_type -> converter class, for the default domain."""
