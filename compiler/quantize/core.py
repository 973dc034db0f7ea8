"""The quantizer's state and the one place scales change.

A :class:`Quantizer` walks one fp32 graph (:mod:`edgert.compiler.quantize.driver`) and carries
every float tensor of it as a :class:`QTensor`: an integer tensor of the new graph with a scale.
Rules (one function per ONNX op type, :mod:`edgert.compiler.quantize.rules`) emit the new nodes
through :meth:`Quantizer.emit` and ask for their inputs with :meth:`Quantizer.need`, which
inserts a ``Requant`` where the dtype or scale differs. The dtype policy (``act_bits``) is
:meth:`Quantizer.linear_dtype` and :meth:`Quantizer.downstream_dtype`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.compiler.calibrate import TensorRange
from edgert.compiler.options import IO_MODES
from edgert.errors import QuantizationError
from edgert.onnx_graph import graph_inputs
from edgert.ops import registry

ACT_BITS = ("auto", "linear8", "8", "16")
QMAX = {"int8": 127, "int16": 32767}
ELEM = {"int8": TensorProto.INT8, "int16": TensorProto.INT16, "int32": TensorProto.INT32}
INT32_MAX = (1 << 31) - 1
ADD_EXTRA_BITS = 8          # residual sums are kept 8 bits finer than their output scale
DEFAULT_ROW_LEN = 4096      # row length assumed by range checks when it is not static
MASK_BIAS = 1e4             # |C| of a scores bias mask * C that excludes an element
OPSET = 21
SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
             "Expand", "Identity", "Concat"}
WEIGHT_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class QTensor:
    """An integer tensor of the new graph standing for a float tensor of the old one.

    Attributes:
        name: tensor name in the integer graph.
        dtype: "int8", "int16" or "int32".
        scale: real value of one unit, float64; shape () or [C] along ``axis``.
        axis: channel axis of a per-channel scale (negative, counted from the end).
        bound: proven bound on ``|value|``.
        row_sum: for Shiftmax outputs, a bound on the sum of a row (else None).
        interval: for integer-valued tensors (scale 1), proven (min, max) of the values.
    """

    name: str
    dtype: str
    scale: np.ndarray
    axis: int = -1
    bound: int = 0
    row_sum: int | None = None
    interval: tuple[int, int] | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.ndim == 0


@dataclass
class QuantizeReport:
    """What the quantizer did.

    Attributes:
        act_bits: the dtype policy.
        dtypes: old float tensor -> the first integer dtype chosen for it.
        narrowed: tensor -> the smaller ``qmax`` its range was narrowed to.
        io: with ``io="int8"``, ``{"inputs": {name: spec}, "outputs": {name: spec}}`` for every
            float graph input/output, ``spec = {"dtype": "int8"|"int16"|"int32", "scale":
            float | list[float], "axis": int | None}``: a per-tensor scale is one float32
            value, a per-channel one a list along ``axis`` (non-negative). ``x = float32(q) *
            scale`` (broadcast along ``axis``); inputs are ``q = saturate(round_half_even(
            float32(x) / float32(scale)))``. Empty with ``io="float"``.
        float_nodes: with ``allow_float``, node label -> why it stayed float32.
        lowbit: with low-bit weights (``lowbit`` plan), node label -> name of the
            ``LutMatMul`` node it became.
    """

    act_bits: str
    dtypes: dict[str, str] = field(default_factory=dict)
    narrowed: dict[str, int] = field(default_factory=dict)
    io: dict[str, dict[str, dict]] = field(default_factory=dict)
    float_nodes: dict[str, str] = field(default_factory=dict)
    lowbit: dict[str, str] = field(default_factory=dict)


Rule = Callable[["Quantizer", onnx.NodeProto], None]
"""A rewrite rule: emits the integer form of one node (``q.q[output]``) or raises
:class:`QuantizationError` through :meth:`Quantizer.fail`."""


class Quantizer:
    """The state of one rewrite: the old graph's tensors, the new graph's nodes and
    initializers, the integer form of every float tensor done so far. Use
    :func:`edgert.compiler.quantize.quantize_model`."""

    def __init__(self, model: onnx.ModelProto, ranges: dict[str, TensorRange], *,
                 act_bits: str = "auto", source: str = "model", io: str = "float",
                 allow_float: bool = False, lowbit: dict | None = None) -> None:
        if act_bits not in ACT_BITS:
            raise QuantizationError(f"act_bits must be one of {', '.join(ACT_BITS)}, "
                                    f"got {act_bits!r}")
        if io not in IO_MODES:
            raise QuantizationError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
        self.model, self.ranges, self.act_bits, self.source = model, ranges, act_bits, source
        self.io, self.allow_float = io, allow_float
        self.lowbit = lowbit or {}        # node output -> LowbitWeight (compiler/lowbit.py)
        g = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | None]] = {}
        for v in [*g.input, *g.value_info, *g.output]:
            tt = v.type.tensor_type
            self.types[v.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None
                                       for d in tt.shape.dim]
        for name, arr in self.inits.items():
            self.types[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
            self.shapes[name] = list(arr.shape)
        self.graph_inputs = {i.name for i in graph_inputs(model)}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
            for o in node.output:
                self.producer[o] = node
        self.outputs = {o.name for o in g.output}
        self.q: dict[str, QTensor] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.value_types: dict[str, int] = {}
        self.used = ({n for n in self.types} | {o for n in g.node for o in n.output}
                     | set(self.inits))
        self.cache: dict[tuple, QTensor] = {}
        self.skip: set[int] = set()
        self.report = QuantizeReport(act_bits)
        self.index = {id(n): i for i, n in enumerate(g.node)}
        self.weights: dict[int, np.ndarray | None] = {}
        self.current = "model"
        self.mask_bias: dict[str, QTensor] = {}           # old name -> the exact mask it scales
        self.masked: dict[str, tuple[str, str]] = {}      # Add output -> (scores, exclude tensor)
        self.float_values: dict[str, str] = {}            # old float tensor -> float32 tensor here
        self.int_inputs: dict[str, QTensor] = {}          # io="int8": the integer graph inputs
        self.dequantized: dict[tuple, str] = {}           # (int tensor, scale, axis) -> float32
        self.new_inputs: list[onnx.ValueInfoProto] = []
        self.rules: dict[str, Rule] = {}            # op type -> rule (rules.table())

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == TensorProto.FLOAT

    def fresh(self, base: str, suffix: str = "_q") -> str:
        name, i = f"{base}{suffix}", 1
        while name in self.used:
            name, i = f"{base}{suffix}{i}", i + 1
        self.used.add(name)
        return name

    def emit(self, op: str, inputs: list[str], base: str, out_elem: int, *, domain: str = "",
             **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        self.value_types[out] = out_elem
        return out

    def const(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def fail(self, message: str) -> QuantizationError:
        error = QuantizationError(f"{self.source}: node {self.current}: {message}")
        error.reason = message          # what --allow-float records for a node left float
        return error

    def amax(self, name: str) -> float:
        if name in self.inits:
            return float(np.abs(self.inits[name]).max()) if self.inits[name].size else 0.0
        if name not in self.ranges:
            raise self.fail(f"no calibrated range for tensor {name!r}")
        return self.ranges[name].amax

    def static_dim(self, name: str, axis: int) -> int | None:
        shape = self.shapes.get(name)
        if not shape or not -len(shape) <= axis < len(shape):
            return None
        return shape[axis]

    def need(self, name: str, dtype: str, *, scale: float | None = None, qmax: int | None = None,
             lo: int | None = None) -> QTensor:
        """``name`` (a float tensor of the old graph) as ``dtype`` at a per-tensor scale.

        The scale defaults to ``amax / qmax`` from calibration. ``lo`` (default ``-qmax``)
        lets a Relu clamp at 0.
        """
        qmax = qmax or QMAX[dtype]
        if scale is None:
            scale = max(self.amax(name), 1e-12) / qmax
        lo = -qmax if lo is None else lo
        key = (name, dtype, float(scale), qmax, lo)
        if key in self.cache:
            return self.cache[key]
        self.report.dtypes.setdefault(name, dtype)
        if name in self.inits:
            value = np.asarray(self.inits[name], np.float64)
            ints = np.clip(np.rint(value / scale), lo, qmax).astype(dtype)
            t = QTensor(self.const(ints, name), dtype, np.asarray(scale), bound=qmax)
        elif name in self.int_inputs:
            # io="int8": the integer graph input itself where its dtype and scale are the ones
            # asked for (what the boundary QuantizeLinear would give), else a Requant of it.
            src, s32 = self.int_inputs[name], float(np.float32(scale))
            if src.dtype != dtype or float(src.scale) != s32:
                t = self.requant(src, dtype, float(scale), qmax, lo)
            elif lo > -qmax or qmax < QMAX[dtype]:
                t = self.requant(src, dtype, s32, qmax, lo)
            else:
                t = src
        elif name in self.float_values and name not in self.q:
            # a float32 tensor of the new graph: a float graph input, or a float node's output
            s32 = np.float32(scale)
            zp = self.const(np.array(0, dtype), f"{name}_zero_point")
            sc = self.const(np.array(s32, np.float32), f"{name}_scale")
            out = self.emit("QuantizeLinear", [self.float_values[name], sc, zp], name, ELEM[dtype])
            t = QTensor(out, dtype, np.asarray(float(s32)), bound=qmax + 1)
            if lo > -qmax or qmax < QMAX[dtype]:
                t = self.requant(t, dtype, float(s32), qmax, lo)
        else:
            src = self.q.get(name)
            if src is None:
                raise self.fail(f"tensor {name!r} has no integer form")
            if (src.dtype == dtype and src.per_tensor and float(src.scale) == float(scale)
                    and src.bound <= qmax and lo <= -qmax):
                return src
            t = self.requant(src, dtype, float(scale), qmax, lo)
        self.cache[key] = t
        return t

    def requant(self, src: QTensor, dtype: str, scale: float, qmax: int, lo: int) -> QTensor:
        """``src`` rescaled to ``dtype`` at ``scale``, clamped to ``[lo, qmax]``: a Requant node
        (the rule of ``ops/requant/quantize.py``, found through the op registry)."""
        out = registry.get("Requant").quantize.insert(self, src.name, src.scale, src.axis, dtype,
                                                       scale, qmax, lo)
        return QTensor(out, dtype, np.asarray(scale), bound=qmax)

    def wide(self) -> str:
        return "int8" if self.act_bits == "8" else "int16"

    def linear_dtype(self, node: onnx.NodeProto, a: str) -> str:
        if node.output[0] in self.lowbit or self.act_bits == "linear8":
            return "int8"                   # (LutMatMul's integer tables assume |x| <= 128)
        if self.act_bits != "auto":
            return "int8" if self.act_bits == "8" else "int16"
        after = self.bias_add(node)
        out = after[0].output[0] if after else node.output[0]
        ffn = (self._through_shape_ops_up(a) in {"Gelu"}
               or any(c.op_type == "Gelu" for c in self.consumers.get(out, [])))
        return "int16" if ffn else "int8"

    def _through_shape_ops_up(self, name: str) -> str | None:
        node = self.producer.get(name)
        while node is not None and node.op_type in SHAPE_OPS - {"Concat"}:
            node = self.producer.get(node.input[0])
        return node.op_type if node is not None else None

    def downstream_dtype(self, name: str) -> str:
        """The widest dtype any consumer of ``name`` wants (looking through shape ops)."""
        wants = set()
        for c in self.consumers.get(name, []):
            if c.op_type in SHAPE_OPS and c.input[0] == name or c.op_type == "Concat":
                wants.add(self.downstream_dtype(c.output[0]))
            elif (c.op_type in ("MatMul", "Gemm") and c.input[0] == name
                  and self.weight(c) is not None):
                wants.add(self.linear_dtype(c, name))
            elif c.op_type in ("Add", "LayerNormalization", "Gelu"):
                wants.add(self.wide())
            elif self.allow_float and c.op_type not in self.rules:
                wants.add(self.wide())          # dequantized for a float node: keep precision
            else:
                wants.add("int8")
        if name in self.outputs:
            wants.add(self.wide())
        return "int16" if "int16" in wants else "int8"

    def weight(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The float weight [K, N] of a MatMul/Gemm with a constant right operand, else None
        (computed once per node: the dtype policy asks for it again and again)."""
        key = id(node)
        if key not in self.weights:
            self.weights[key] = self._read_weight(node)
        return self.weights[key]

    def _read_weight(self, node: onnx.NodeProto) -> np.ndarray | None:
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) or node.input[1] not in self.inits:
                return None
            w = np.asarray(self.inits[node.input[1]], np.float64)
            w = w.T if attrs.get("transB", 0) else w
            return w * attrs.get("alpha", 1.0)
        b = node.input[1]
        if b in self.inits and self.inits[b].ndim == 2 and self.is_float(b):
            return np.asarray(self.inits[b], np.float64)
        return None

    def bias_add(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray] | None:
        """The ``Add(node_output, bias[N])`` right after a MatMul, when there is exactly one."""
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in self.outputs:
            return None
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in self.inits or not self.is_float(other):
            return None
        bias = np.asarray(self.inits[other], np.float64)
        n = self.weight(node).shape[1]
        if bias.size != n or bias.shape[-1] != n:
            return None
        return add, bias.reshape(n)

    def requant_to_int32(self, src: QTensor, scale: float, lim: int) -> QTensor:
        ratio = np.abs(src.scale / scale)
        bound = min(lim, int(math.ceil(src.bound * float(ratio.max()))) + 1)
        t = self.requant(src, "int32", scale, lim, -lim)
        return replace(t, bound=bound)

    def exact(self, name: str) -> QTensor | None:
        """The integer form of an integer-valued float tensor (scale 1, known interval)."""
        t = self.q.get(name)
        ok = t is not None and t.interval is not None and t.per_tensor and float(t.scale) == 1.0
        return t if ok else None

    def as_int32(self, name: str) -> QTensor:
        """``name`` as a per-tensor int32 tensor whose values are at most int16-sized (or exact)."""
        t = self.q.get(name)
        if t is None or not t.per_tensor or (t.interval is None and t.bound > QMAX["int16"]):
            t = self.need(name, self.wide())
        if t.dtype != "int32":
            t = replace(t, dtype="int32", name=self.emit("Cast", [t.name], name, TensorProto.INT32,
                                                         to=TensorProto.INT32))
        return t

    def int_const(self, name: str) -> int:
        value = np.asarray(self.inits[name], np.float64)
        if value.size != 1 or value.reshape(()) != np.rint(value.reshape(())):
            raise self.fail(f"constant {name!r} is not one integer value")
        return int(value.reshape(()))
