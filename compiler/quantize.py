"""The quantizer: an fp32 ONNX graph plus calibrated ranges -> the integer ONNX graph.

The result follows ``docs/integer-onnx.md``. Every float tensor of the input graph is carried as
a :class:`QTensor` (an integer tensor with a scale). Scales change only through ``Requant``, and
lazily: a producer leaves its int32 accumulator as it is, and each consumer asks
(:meth:`Quantizer.need`) for the dtype and scale it wants, so a Linear feeding a residual add is
requantized once, straight to the add's scale.

Activation dtypes follow one documented policy (``act_bits``):
- ``"auto"`` (default; the post-training recipe of ``shared/reference/ivit.md``): int16 for the
  residual stream, LayerNorm and GELU inputs, and the two FFN Linear inputs (a Linear whose
  output feeds a GELU, or whose input comes from one); int8 for other Linear inputs, Q/K/V,
  attention scores (Shiftmax input) and convolutions.
- ``"linear8"``: as ``auto``, but every Linear input int8 (the FFN ones too), so every matmul
  with a constant weight is int8 x int8 (on rpi5 the ``sdot`` kernel; int16 operands stay on
  the generic compute there); the residual stream, LayerNorm and GELU inputs stay int16.
  Measured on all-MiniLM-L6-v2 (221 sentences, mean cosine to fp32): 0.978 (min 0.899), vs
  0.994 for ``auto``, 0.60 for ``"8"`` and 0.958 for onnxruntime's dynamic int8.
- ``"8"``: int8 everywhere (I-ViT as published).  ``"16"``: int16 wherever an op allows it
  (all Linear inputs and the residual stream; attention operands and convolutions stay int8).
Shiftmax outputs are 16-bit probabilities (k = 16).

Integer-valued float tensors: a ``Cast`` from an integer tensor (attention masks) is carried
exactly (scale 1, int32, clamped to its calibrated range) with a proven interval; ``Sub``,
``Mul``, ``ReduceSum``, ``Clip`` and ``Div`` on such tensors stay integer, which makes the
mean pooling ``sum(x * mask) / max(sum(mask), eps)`` integer (the division truncates: at most
one unit of the output scale). A scores bias ``mask * C`` with ``C <= -10000`` added before a
Softmax becomes Shiftmax's ``exclude`` input (fp32 ``exp(-10000)`` is exactly 0 as well).

Range checks at compile time: every int32 accumulator is bounded from the integer weights and
the activation range (:func:`edgert.ops.intmatmul.accumulator_bound`); when the bound fails
the activation range is narrowed (the Requant clamps to a smaller ``qmax``), never overflowed.

Low-bit weights (``lowbit``, from :mod:`edgert.compiler.lowbit`): the Linears it names become
``LutMatMul(x: int8, packed W, , [zero_points])`` (exact int16 tables): their input is int8
whatever ``act_bits`` says, the accumulator is ``x @ 2 (u - z)`` at scale ``s_x * s_w[n] / 2``
(one weight scale per column, folded by the consumer's Requant), bias and bounds as for int8
weights. Without ``lowbit`` nothing changes.

Graph I/O (``io``):
- ``"float"`` (default): float graph inputs are quantized inside the graph (``QuantizeLinear``
  where a consumer needs them) and float outputs dequantized (``DequantizeLinear``).
- ``"int8"`` ("integer I/O"): each float graph input becomes an integer input (int8 or int16:
  the widest dtype its consumers want, scale ``float32(amax / qmax)``) and each float output is
  the integer tensor itself (int8, int16 or int32, per-tensor or per-channel scale), so the graph
  has no boundary ops. The scales are in :attr:`QuantizeReport.io`. An int8 input may hold -128
  (bound ``qmax + 1``, as after a boundary ``QuantizeLinear``). For the same calibration the
  graph equals the ``"float"`` graph minus its boundary ops wherever the float graph quantizes an
  input once (the usual case), so its integer outputs are bit for bit what the ``"float"``
  graph dequantizes.

Float fallback (``allow_float``): a node with no integer form (no handler, or a handler that
raises :class:`QuantizationError`; its partial output is rolled back) stays float32. Its
integer inputs are dequantized (``DequantizeLinear`` with their scale, per channel where they
have one), it runs on float32, and its float outputs keep their names; an integer consumer
quantizes them (``QuantizeLinear`` at the scale calibrated for the original tensor), a graph
output takes them as they are (with ``io="int8"`` it is quantized to the wide dtype instead).
Without ``allow_float`` such a node is an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.compiler.calibrate import TensorRange
from edgert.errors import QuantizationError, UnsupportedOpError
from edgert.onnx_graph import graph_inputs, node_label
from edgert.ops import DOMAIN, OPSET_VERSION, ilayernorm, register_schemas, requant
from edgert.ops import shiftgelu, shiftmax

ACT_BITS = ("auto", "linear8", "8", "16")
QMAX = {"int8": 127, "int16": 32767}
ELEM = {"int8": TensorProto.INT8, "int16": TensorProto.INT16, "int32": TensorProto.INT32}
INT32_MAX = (1 << 31) - 1
ADD_EXTRA_BITS = 8          # residual sums are kept 8 bits finer than their output scale
SHIFTMAX_BITS = 16
DEFAULT_ROW_LEN = 4096      # row length assumed by range checks when it is not static
MASK_BIAS = 1e4             # |C| of a scores bias mask * C that excludes an element
OPSET = 21
IO_MODES = ("float", "int8")
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


class Quantizer:
    """Rewrite one fp32 model. Use :func:`quantize_model`."""

    def __init__(self, model: onnx.ModelProto, ranges: dict[str, TensorRange], *,
                 act_bits: str = "auto", source: str = "model", io: str = "float",
                 allow_float: bool = False, lowbit: dict | None = None) -> None:
        if act_bits not in ACT_BITS:
            raise QuantizationError(f"act_bits must be one of {', '.join(ACT_BITS)}, got {act_bits!r}")
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
        self.used = {n for n in self.types} | {o for n in g.node for o in n.output} | set(self.inits)
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
        self._handlers: dict[str, Callable[[onnx.NodeProto], None]] = {}

    # --- small helpers ---------------------------------------------------------------------
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

    # --- the one place scales change ---------------------------------------------------------
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
                t = self._requant(src, dtype, float(scale), qmax, lo)
            elif lo > -qmax or qmax < QMAX[dtype]:
                t = self._requant(src, dtype, s32, qmax, lo)
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
                t = self._requant(t, dtype, float(s32), qmax, lo)
        else:
            src = self.q.get(name)
            if src is None:
                raise self.fail(f"tensor {name!r} has no integer form")
            if (src.dtype == dtype and src.per_tensor and float(src.scale) == float(scale)
                    and src.bound <= qmax and lo <= -qmax):
                return src
            t = self._requant(src, dtype, float(scale), qmax, lo)
        self.cache[key] = t
        return t

    def _requant(self, src: QTensor, dtype: str, scale: float, qmax: int, lo: int) -> QTensor:
        try:
            m, e = requant.params(src.scale / scale)
        except ValueError as err:
            raise self.fail(str(err)) from None
        out = self.emit("Requant", [src.name, self.const(m.reshape(-1), f"{src.name}_m"),
                                    self.const(e.reshape(-1), f"{src.name}_e")],
                        src.name, ELEM[dtype], domain=DOMAIN, to=ELEM[dtype], lo=lo, hi=qmax,
                        axis=src.axis)
        return QTensor(out, dtype, np.asarray(scale), bound=qmax)

    # --- dtype policy -----------------------------------------------------------------------
    def wide(self) -> str:
        return "int8" if self.act_bits == "8" else "int16"

    def linear_dtype(self, node: onnx.NodeProto, a: str) -> str:
        if node.output[0] in self.lowbit or self.act_bits == "linear8":
            return "int8"                   # (LutMatMul's integer tables assume |x| <= 128)
        if self.act_bits != "auto":
            return "int8" if self.act_bits == "8" else "int16"
        after = self._bias_add(node)
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
            elif c.op_type in ("MatMul", "Gemm") and c.input[0] == name and self._weight(c) is not None:
                wants.add(self.linear_dtype(c, name))
            elif c.op_type in ("Add", "LayerNormalization", "Gelu"):
                wants.add(self.wide())
            elif self.allow_float and c.op_type not in self._handlers:
                wants.add(self.wide())          # dequantized for a float node: keep precision
            else:
                wants.add("int8")
        if name in self.outputs:
            wants.add(self.wide())
        return "int16" if "int16" in wants else "int8"

    # --- graph walk ---------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        handlers = self._handlers = self.handlers()
        bad = [(n.op_type, node_label(n, i)) for i, n in enumerate(self.model.graph.node)
               if self._is_float_node(n) and n.op_type not in handlers]
        if bad and not self.allow_float:
            raise UnsupportedOpError(bad, source=f"{self.source} (no integer form; --allow-float "
                                                 "keeps such nodes in float32)")
        self._graph_inputs()
        for i, node in enumerate(self.model.graph.node):
            if i in self.skip:
                continue
            self.current = node_label(node, i)
            if not self._is_float_node(node):
                self.nodes.append(node)
                continue
            handler = handlers.get(node.op_type)
            if handler is None:
                self.float_node(node, f"{node.op_type} has no integer form")
            elif not self.allow_float:
                handler(node)
            else:
                saved = self._save()
                try:
                    handler(node)
                except QuantizationError as e:
                    self._restore(saved)
                    self.float_node(node, getattr(e, "reason", str(e)))
        return self._finish()

    def _graph_inputs(self) -> None:
        """The inputs of the new graph. Float inputs stay float32 tensors (``io="float"``: a
        consumer quantizes them) or become integer inputs (``io="int8"``: one dtype, the widest
        its consumers want, at the calibrated scale ``float32(amax / qmax)``)."""
        for v in graph_inputs(self.model):
            if not self.is_float(v.name):
                self.new_inputs.append(v)
                continue
            if self.io == "float":
                self.float_values[v.name] = v.name
                self.new_inputs.append(v)
                continue
            self.current = f"<graph input {v.name!r}>"
            dtype = self.downstream_dtype(v.name)
            scale = float(np.float32(max(self.amax(v.name), 1e-12) / QMAX[dtype]))
            t = QTensor(v.name, dtype, np.asarray(scale), bound=QMAX[dtype] + 1)
            self.q[v.name] = self.int_inputs[v.name] = t
            self.report.dtypes.setdefault(v.name, dtype)
            self.report.io.setdefault("inputs", {})[v.name] = {"dtype": dtype, "scale": scale,
                                                                "axis": None}
            new = onnx.ValueInfoProto()
            new.CopyFrom(v)
            new.type.tensor_type.elem_type = ELEM[dtype]
            self.new_inputs.append(new)

    # --- float fallback (allow_float) -----------------------------------------------------------
    def _save(self) -> tuple:
        """Everything a handler changes, to undo a handler that fails (``allow_float``)."""
        r = self.report
        return (len(self.nodes), len(self.new_inits), dict(self.value_types), dict(self.cache),
                dict(self.q), set(self.skip), dict(r.dtypes), dict(r.narrowed),
                dict(self.mask_bias), dict(self.masked), dict(r.lowbit))

    def _restore(self, saved: tuple) -> None:
        n_nodes, n_inits, self.value_types, self.cache, self.q, self.skip, dtypes, narrowed, \
            self.mask_bias, self.masked, lowbit = saved
        del self.nodes[n_nodes:]
        del self.new_inits[n_inits:]
        self.report.dtypes, self.report.narrowed, self.report.lowbit = dtypes, narrowed, lowbit

    def float_input(self, name: str) -> str:
        """The float32 tensor of the new graph standing for the old float tensor ``name``: a
        float initializer or float32 tensor as it is, an integer one through DequantizeLinear
        (``float32(q) * float32(scale)``, per channel where it has a channel scale)."""
        if name in self.inits:
            return name
        t = self.q.get(name)
        if t is None:
            if name in self.float_values:
                return self.float_values[name]
            raise self.fail(f"tensor {name!r} has neither an integer nor a float form here")
        scale = t.scale.astype(np.float32)
        attrs = {}
        if not t.per_tensor:
            rank = len(self.shapes.get(name) or [])
            if not rank:
                raise self.fail(f"the rank of {name!r} is unknown: cannot dequantize its "
                                "per-channel scale")
            attrs["axis"] = t.axis % rank
        key = (t.name, scale.tobytes(), attrs.get("axis"))
        if key not in self.dequantized:
            out = self.fresh(name, "_float")
            sc = self.const(scale, f"{name}_scale")
            self.nodes.append(helper.make_node("DequantizeLinear", [t.name, sc], [out], name=out,
                                               **attrs))
            self.value_types[out] = TensorProto.FLOAT
            self.dequantized[key] = out
        self.float_values.setdefault(name, self.dequantized[key])
        return self.dequantized[key]

    def float_node(self, node: onnx.NodeProto, reason: str) -> None:
        """Keep ``node`` in float32 (``allow_float``): float inputs through :meth:`float_input`,
        float outputs registered in ``float_values`` under their own names (a graph output of an
        ``io="int8"`` graph gets a new name: the integer output takes the old one)."""
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise self.fail(f"{reason}, and a node with subgraphs cannot be kept in float32")
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:], new.output[:]
        new.input.extend(self.float_input(n) if n and self.is_float(n) else n for n in node.input)
        for out in node.output:
            name = out
            if out and self.is_float(out):
                if self.io == "int8" and out in self.outputs:
                    name = self.fresh(out, "_float")
                self.float_values[out] = name
            if out and out in self.types:
                self.value_types[name] = self.types[out]
            new.output.append(name)
        self.nodes.append(new)
        self.report.float_nodes[self.current] = reason

    def _is_float_node(self, node: onnx.NodeProto) -> bool:
        return any(self.is_float(n) for n in [*node.input, *node.output] if n)

    def handlers(self) -> dict[str, Callable[[onnx.NodeProto], None]]:
        table = {"MatMul": self.matmul, "Gemm": self.gemm, "Conv": self.conv, "Add": self.add,
                 "Mul": self.scale_by_const, "Div": self.scale_by_const, "Softmax": self.softmax,
                 "Gelu": self.gelu, "LayerNormalization": self.layernorm, "Relu": self.relu,
                 "Shape": self.shape, "Cast": self.cast, "Sub": self.sub,
                 "ReduceSum": self.reduce_sum, "Clip": self.clip}
        table.update({op: self.shape_op for op in SHAPE_OPS})
        return table

    def _finish(self) -> onnx.ModelProto:
        g = self.model.graph
        outputs = list(g.output)
        for i, out in enumerate(g.output):
            if not self.is_float(out.name):
                continue
            self.current = f"<graph output {out.name!r}>"
            if self.io == "int8":
                outputs[i] = self._integer_output(out)
                continue
            if out.name in self.float_values and out.name not in self.q:
                continue                           # computed in float32 under its own name
            t = self.q[out.name]
            axis = t.axis % len(self.shapes[out.name]) if not t.per_tensor else 0
            scale = self.const(t.scale.astype(np.float32), f"{out.name}_scale")
            attrs = {} if t.per_tensor else {"axis": axis}
            self.nodes.append(helper.make_node("DequantizeLinear", [t.name, scale], [out.name],
                                               name=f"{out.name}_dequantize", **attrs))
        used = {n for node in self.nodes for n in node.input}
        kept = [t for t in g.initializer if t.name in used]    # float ones: for float nodes
        declared = {o.name for o in outputs}
        vi = [helper.make_tensor_value_info(n, elem, None) for n, elem in self.value_types.items()
              if n not in declared]
        graph = helper.make_graph(self.nodes, f"{g.name}_int", self.new_inputs,
                                  outputs, kept + self.new_inits, value_info=vi)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(DOMAIN, OPSET_VERSION)],
                                  producer_name="edgert", ir_version=10)
        register_schemas()
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # the checker raises several types
            raise QuantizationError(f"{self.source}: the integer graph fails the ONNX checker "
                                    f"(a quantizer bug): {str(e).splitlines()[0]}") from None
        return model

    def _integer_output(self, out: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
        """``io="int8"``: the graph output ``out`` as its integer tensor (renamed to ``out``'s
        name; an output computed in float32 is quantized to the wide dtype first); records its
        dtype and scale in the report and returns the output's new value info."""
        t = self.q.get(out.name) or self.need(out.name, self.wide())
        if t.name != out.name:
            producer = next((i for i, n in enumerate(self.nodes) if t.name in n.output), None)
            read = any(t.name in n.input for n in self.nodes) or t.name in self.int_inputs
            taken = t.name in {o.name for o in self.model.graph.output}   # renamed for another
            if producer is None or read or taken:
                self.nodes.append(helper.make_node("Identity", [t.name], [out.name],
                                                   name=f"{out.name}_output"))
            else:                       # rename the producer's output (a node made here)
                node = onnx.NodeProto()
                node.CopyFrom(self.nodes[producer])
                node.output[list(node.output).index(t.name)] = out.name
                self.nodes[producer] = node
                self.value_types.pop(t.name, None)
                for table in (self.q, self.cache):       # a second output of the same tensor
                    for key, value in list(table.items()):
                        if value.name == t.name:
                            table[key] = replace(value, name=out.name)
        scale = t.scale.astype(np.float32)
        if t.per_tensor:
            spec: dict = {"dtype": t.dtype, "scale": float(scale), "axis": None}
        else:
            spec = {"dtype": t.dtype, "scale": [float(v) for v in scale],
                    "axis": t.axis % len(self.shapes[out.name])}
        self.report.io.setdefault("outputs", {})[out.name] = spec
        new = onnx.ValueInfoProto()
        new.CopyFrom(out)
        new.type.tensor_type.elem_type = ELEM[t.dtype]
        return new

    # --- handlers -----------------------------------------------------------------------------
    def _weight(self, node: onnx.NodeProto) -> np.ndarray | None:
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

    def _bias_add(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray] | None:
        """The ``Add(node_output, bias[N])`` right after a MatMul, when there is exactly one."""
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in self.outputs:
            return None
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if other not in self.inits or not self.is_float(other):
            return None
        bias = np.asarray(self.inits[other], np.float64)
        n = self._weight(node).shape[1]
        if bias.size != n or bias.shape[-1] != n:
            return None
        return add, bias.reshape(n)

    def matmul(self, node: onnx.NodeProto) -> None:
        w = self._weight(node)
        if w is None:
            self.act_matmul(node)
            return
        found = self._bias_add(node)
        bias, out = (found[1], found[0].output[0]) if found else (None, node.output[0])
        if found:
            self.skip.add(self.index[id(found[0])])
        self.linear(node, node.input[0], w, bias, out)

    def gemm(self, node: onnx.NodeProto) -> None:
        w = self._weight(node)
        if w is None:
            raise self.fail("Gemm needs a constant B and transA = 0")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.inits:
                raise self.fail("Gemm with a non-constant C")
            bias = np.broadcast_to(np.asarray(self.inits[node.input[2]], np.float64)
                                   * attrs.get("beta", 1.0), (w.shape[1],))
        self.linear(node, node.input[0], w, bias, node.output[0])

    def _weights_per_channel(self, w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """int8 weights, symmetric per output channel along ``axis``; returns (wq, scale[C])."""
        other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        s = np.maximum(np.abs(w).max(axis=other) / 127.0, WEIGHT_EPS)
        shape = [1] * w.ndim
        shape[axis] = -1
        return np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8), s

    def _fit_accumulator(self, a: str, dtype: str, l1: np.ndarray,
                         bias: np.ndarray | None, s_w: np.ndarray) -> tuple[int, np.ndarray | None]:
        """Largest activation ``qmax`` (<= the dtype's) for which ``qmax * l1 + |bias_q|`` fits
        int32; returns (qmax, bias_q)."""
        qmax = QMAX[dtype]
        amax = max(self.amax(a), 1e-12)
        while True:
            s_a = amax / qmax
            bias_q = None if bias is None else np.rint(bias / (s_a * s_w)).astype(np.int64)
            extra = np.zeros_like(l1) if bias_q is None else np.abs(bias_q)
            worst = int(((qmax + 1) * l1 + extra).max())     # +1: boundary saturation at -qmax-1
            if worst <= INT32_MAX:
                return qmax, bias_q
            new = int((INT32_MAX - int(extra.max())) // max(int(l1.max()), 1)) - 1
            if new < 1 or new >= qmax:
                raise self.fail(f"int32 accumulator cannot hold this layer (bound {worst})")
            qmax = new
            self.report.narrowed[a] = qmax

    def linear(self, node: onnx.NodeProto, a: str, w: np.ndarray, bias: np.ndarray | None,
               out: str) -> None:
        if node.output[0] in self.lowbit:
            self.lowbit_linear(node, a, self.lowbit[node.output[0]], bias, out)
            return
        dtype = self.linear_dtype(node, a)
        wq, s_w = self._weights_per_channel(w, axis=1)
        l1 = np.abs(wq.astype(np.int64)).sum(axis=0)
        qmax, bias_q = self._fit_accumulator(a, dtype, l1, bias, s_w)
        x = self.need(a, dtype, qmax=qmax)
        op, domain = ("MatMulInteger", "") if dtype == "int8" else ("IntMatMul", DOMAIN)
        acc = self.emit(op, [x.name, self.const(wq, f"{node.input[1]}_int8")], out,
                        TensorProto.INT32, domain=domain)
        self._accumulator(acc, x, l1, bias_q, s_w, out)

    def _accumulator(self, acc: str, x: QTensor, l1: np.ndarray, bias_q: np.ndarray | None,
                     s_w: np.ndarray, out: str) -> None:
        """Register a Linear's int32 accumulator ``acc`` (plus the int32 bias, when there is
        one) as the integer form of ``out``: scale ``s_x * s_w`` per column, bound
        ``max(|x| * l1 + |bias|)``."""
        bound = x.bound * l1
        if bias_q is not None:
            acc = self.emit("Add", [acc, self.const(bias_q.astype(np.int32), f"{out}_bias")], out,
                            TensorProto.INT32)
            bound = bound + np.abs(bias_q)
        self.q[out] = QTensor(acc, "int32", float(x.scale) * s_w, axis=-1, bound=int(bound.max()))

    def lowbit_linear(self, node: onnx.NodeProto, a: str, lw, bias: np.ndarray | None,
                      out: str) -> None:
        """A Linear with low-bit weights (``compiler/lowbit.py``): ``LutMatMul(x: int8, W, ,
        [zero_points])`` with exact int16 tables, an int32 accumulator equal to ``x @ 2 (u - z)``
        at scale ``s_x * s_w[n] / 2`` (one weight scale per column, folded into the Requant a
        consumer asks for), the bias added in int32 at that scale."""
        from edgert.compiler import weightquant
        from edgert.compiler.lowbit import INT_TABLE_BITS

        qw = lw.qw
        try:
            s_w = np.maximum(weightquant.integer_output_scale(qw, 1.0), WEIGHT_EPS)
        except QuantizationError as e:
            raise self.fail(str(e)) from None
        l1 = np.abs(qw.signed_codes().astype(np.int64)).sum(axis=0)
        qmax, bias_q = self._fit_accumulator(a, "int8", l1, bias, s_w)
        x = self.need(a, "int8", qmax=qmax)
        planes = self.const(qw.planes, f"{lw.weight}_lut{qw.layout.bits}")
        inputs = [x.name, planes]
        if qw.zero_points is not None:
            inputs += ["", self.const(qw.zero_points, f"{lw.weight}_lut_zero_points")]
        acc = self.emit("LutMatMul", inputs, out, TensorProto.INT32, domain=DOMAIN,
                        **qw.layout.to_attrs(), table_bits=INT_TABLE_BITS)
        self._accumulator(acc, x, l1, bias_q, s_w, out)
        self.report.lowbit[self.current] = acc

    def act_matmul(self, node: onnx.NodeProto) -> None:
        a_name, b_name = node.input
        prev = self.q.get(a_name)
        a = prev if prev is not None and prev.row_sum is not None else self.need(a_name, "int8")
        b = self.need(b_name, "int8")
        k = self.static_dim(a_name, -1)
        if a.row_sum is not None:
            bound = a.row_sum * b.bound
        elif k is not None:
            bound = a.bound * b.bound * k
        else:
            raise self.fail("the inner dimension of an activation MatMul must be static")
        if bound > INT32_MAX:
            raise self.fail(f"int32 accumulator bound {bound} exceeded (inner dimension {k})")
        op, domain = ("MatMulInteger", "") if a.dtype == b.dtype == "int8" else ("IntMatMul", DOMAIN)
        acc = self.emit(op, [a.name, b.name], node.output[0], TensorProto.INT32, domain=domain)
        self.q[node.output[0]] = QTensor(acc, "int32", np.asarray(float(a.scale) * float(b.scale)),
                                         bound=bound)

    def conv(self, node: onnx.NodeProto) -> None:
        if node.input[1] not in self.inits:
            raise self.fail("Conv needs a constant weight")
        w = np.asarray(self.inits[node.input[1]], np.float64)
        wq, s_w = self._weights_per_channel(w, axis=0)
        l1 = np.abs(wq.astype(np.int64)).reshape(wq.shape[0], -1).sum(axis=1)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = np.asarray(self.inits[node.input[2]], np.float64).reshape(-1)
        qmax, bias_q = self._fit_accumulator(node.input[0], "int8", l1, bias, s_w)
        x = self.need(node.input[0], "int8", qmax=qmax)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out = node.output[0]
        acc = self.emit("ConvInteger", [x.name, self.const(wq, f"{node.input[1]}_int8")], out,
                        TensorProto.INT32, **attrs)
        bound = int((x.bound * l1).max())
        if bias_q is not None:
            b = bias_q.astype(np.int32).reshape(-1, *([1] * (w.ndim - 2)))
            acc = self.emit("Add", [acc, self.const(b, f"{out}_bias")], out, TensorProto.INT32)
            bound = int((x.bound * l1 + np.abs(bias_q)).max())
        rank = len(self.shapes.get(out) or [0] * w.ndim)
        self.q[out] = QTensor(acc, "int32", float(x.scale) * s_w, axis=1 - rank, bound=bound)

    def add(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        biases = [n for n in node.input if n in self.mask_bias]
        if biases:
            users = self.consumers.get(out, [])
            if len(biases) != 1 or out in self.outputs or any(u.op_type != "Softmax" for u in users):
                raise self.fail("an attention-mask bias (mask * C, C <= -1e4) must be added to "
                                "scores that only feed a Softmax")
            scores = next(n for n in node.input if n not in self.mask_bias)
            self.masked[out] = (scores, self.mask_bias[biases[0]].name)
            return
        dtype = self.wide()
        s_out = max(self.amax(out), 1e-12) / QMAX[dtype] / 2**ADD_EXTRA_BITS
        lim = (1 << 30) - 1
        parts, bound = [], 0
        for name in node.input:
            if name in self.inits:
                v = np.clip(np.rint(np.asarray(self.inits[name], np.float64) / s_out), -lim, lim)
                parts.append(self.const(v.astype(np.int32), f"{out}_addend"))
                bound += int(np.abs(v).max()) if v.size else 0
                continue
            src = self.q.get(name) or self.need(name, dtype)
            t = self._requant_to_int32(src, s_out, lim)
            parts.append(t.name)
            bound += t.bound
        if bound > INT32_MAX:
            raise self.fail(f"residual sum bound {bound} exceeds int32")
        acc = self.emit("Add", parts, out, TensorProto.INT32)
        self.q[out] = QTensor(acc, "int32", np.asarray(s_out), bound=bound)

    def _requant_to_int32(self, src: QTensor, scale: float, lim: int) -> QTensor:
        ratio = np.abs(src.scale / scale)
        bound = min(lim, int(math.ceil(src.bound * float(ratio.max()))) + 1)
        t = self._requant(src, "int32", scale, lim, -lim)
        return replace(t, bound=bound)

    def scale_by_const(self, node: onnx.NodeProto) -> None:
        x, c = node.input
        if c not in self.inits and node.op_type == "Mul" and x in self.inits:
            x, c = c, x
        if c not in self.inits and x not in self.inits:
            self.int_product(node)
            return
        if c not in self.inits or self.inits[c].size != 1 or x in self.inits:
            raise self.fail(f"{node.op_type} of two activations has no integer form here")
        value = float(np.asarray(self.inits[c]).reshape(()))
        if value == 0.0 or not math.isfinite(value):
            raise self.fail(f"{node.op_type} by {value}")
        src = self.q.get(x) or self.need(x, self.downstream_dtype(x))
        factor = value if node.op_type == "Mul" else 1.0 / value
        out = replace(src, scale=src.scale * factor)
        self.q[node.output[0]] = out
        if self.exact(x) is not None and src.interval[0] >= 0 and float(out.scale) <= -MASK_BIAS:
            self.mask_bias[node.output[0]] = src

    # --- integer-valued tensors (masks, counts) --------------------------------------------------
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

    def cast(self, node: onnx.NodeProto) -> None:
        src, out = node.input[0], node.output[0]
        if self.is_float(src):
            raise self.fail("Cast of a float tensor has no integer form")
        if self.types.get(src) == TensorProto.BOOL:
            a, name, interval = 1, src, (0, 1)
        else:
            a = max(1, math.ceil(self.amax(out)))
            dtype = helper.tensor_dtype_to_np_dtype(self.types[src])
            name = self.emit("Clip", [src, self.const(np.array(-a, dtype), f"{out}_lo"),
                                      self.const(np.array(a, dtype), f"{out}_hi")], out, self.types[src])
            interval = (-a, a)
        c = self.emit("Cast", [name], out, TensorProto.INT32, to=TensorProto.INT32)
        self.q[out] = QTensor(c, "int32", np.asarray(1.0), bound=a, interval=interval)

    def sub(self, node: onnx.NodeProto) -> None:
        ends = []
        for name in node.input:
            if name in self.inits:
                v = self.int_const(name)
                ends.append((self.const(np.array(v, np.int32), f"{node.output[0]}_c"), (v, v)))
            elif (t := self.exact(name)) is not None:
                ends.append((t.name, t.interval))
            else:
                raise self.fail("Sub of float activations has no integer form here (only of "
                                "integer-valued tensors such as masks)")
        (a, (alo, ahi)), (b, (blo, bhi)) = ends
        lo, hi = alo - bhi, ahi - blo
        out = self.emit("Sub", [a, b], node.output[0], TensorProto.INT32)
        self.q[node.output[0]] = QTensor(out, "int32", np.asarray(1.0), bound=max(-lo, hi),
                                         interval=(lo, hi))

    def int_product(self, node: onnx.NodeProto) -> None:
        """``x * mask`` or ``x / count`` with an integer-valued mask or count (pooling)."""
        a, b = node.input
        if node.op_type == "Mul" and self.exact(a) is not None:
            a, b = b, a
        e = self.exact(b)
        if e is None:
            raise self.fail(f"{node.op_type} of two activations has no integer form here (one "
                            "operand must be an integer-valued tensor such as a mask)")
        x = self.as_int32(a)
        lo, hi = e.interval
        if node.op_type == "Mul":
            bound = x.bound * max(-lo, hi)
            if bound > INT32_MAX:
                raise self.fail(f"int32 product bound {bound} exceeded")
            interval = None
            if x.interval is not None:
                corners = [p * q for p in x.interval for q in e.interval]
                interval = (min(corners), max(corners))
        else:
            if lo < 1:
                raise self.fail("integer division by a tensor that may be 0 (clip it to >= 1)")
            bound, interval = x.bound, None
        out = self.emit(node.op_type, [x.name, e.name], node.output[0], TensorProto.INT32)
        self.q[node.output[0]] = QTensor(out, "int32", x.scale, bound=bound, interval=interval)

    def reduce_sum(self, node: onnx.NodeProto) -> None:
        x, out = node.input[0], node.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(self.shapes.get(x) or [])
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.inits:
                raise self.fail("ReduceSum needs constant axes")
            axes = [int(v) for v in np.asarray(self.inits[node.input[1]]).reshape(-1)]
        else:
            axes = list(attrs.get("axes", [] if attrs.get("noop_with_empty_axes") else range(rank)))
        count = 1
        for ax in axes:
            count *= self.static_dim(x, ax) or DEFAULT_ROW_LEN
        t = self.as_int32(x)
        bound = t.bound * count
        if bound > INT32_MAX:
            raise self.fail(f"ReduceSum bound {bound} exceeds int32")
        new = self.emit("ReduceSum", [t.name, *node.input[1:]], out, TensorProto.INT32,
                        **{k: v for k, v in attrs.items() if k in ("keepdims", "noop_with_empty_axes")})
        interval = None if t.interval is None else (min(0, t.interval[0] * count),
                                                    max(0, t.interval[1] * count))
        self.q[out] = QTensor(new, "int32", t.scale, bound=bound, interval=interval)

    def clip(self, node: onnx.NodeProto) -> None:
        x, out = node.input[0], node.output[0]
        t = self.q.get(x) or self.need(x, self.downstream_dtype(x))
        if not t.per_tensor or float(t.scale) <= 0:
            raise self.fail("Clip needs a per-tensor positive scale")
        top = QMAX.get(t.dtype, INT32_MAX)
        limits = [-top - 1, top]
        for i, pick in ((1, math.ceil), (2, math.floor)):
            if len(node.input) > i and node.input[i]:
                if node.input[i] not in self.inits:
                    raise self.fail("Clip needs constant bounds")
                v = pick(float(np.asarray(self.inits[node.input[i]]).reshape(())) / float(t.scale))
                limits[i - 1] = min(max(v, -top - 1), top)
        lo, hi = limits
        np_dtype = np.dtype(t.dtype)
        new = self.emit("Clip", [t.name, self.const(np.array(lo, np_dtype), f"{out}_lo"),
                                 self.const(np.array(hi, np_dtype), f"{out}_hi")], out, ELEM[t.dtype])
        interval = None
        if t.interval is not None:
            interval = (min(max(t.interval[0], lo), hi), max(min(t.interval[1], hi), lo))
        self.q[out] = QTensor(new, t.dtype, t.scale, bound=min(t.bound, max(-lo, hi)),
                              interval=interval)

    def softmax(self, node: onnx.NodeProto) -> None:
        x, exclude = node.input[0], []
        if x in self.masked:
            x, mask = self.masked[x]
            exclude = [mask]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        rank = len(self.shapes.get(x) or [])
        if axis not in (-1, rank - 1):
            raise self.fail(f"Softmax over axis {axis}; only the last axis is supported")
        t = self.need(x, "int8")
        length = self.static_dim(x, -1) or DEFAULT_ROW_LEN
        try:
            p = shiftmax.params(float(t.scale), length, k=SHIFTMAX_BITS)
        except ValueError as e:
            raise self.fail(str(e)) from None
        dtype = shiftmax.out_dtype(SHIFTMAX_BITS)
        out = self.emit("Shiftmax", [t.name, *exclude], node.output[0], ELEM[dtype], domain=DOMAIN,
                        **p)
        top = 1 << (SHIFTMAX_BITS - 1)
        self.q[node.output[0]] = QTensor(out, dtype, np.asarray(1.0 / top), bound=top - 1,
                                         row_sum=top + length)

    def gelu(self, node: onnx.NodeProto) -> None:
        t = self.need(node.input[0], self.wide())
        try:
            p = shiftgelu.params(float(t.scale))
        except ValueError as e:
            raise self.fail(str(e)) from None
        out = self.emit("ShiftGELU", [t.name], node.output[0], TensorProto.INT32, domain=DOMAIN, **p)
        self.q[node.output[0]] = QTensor(out, "int32", np.asarray(float(t.scale) * 2.0**-7),
                                         bound=t.bound * 127)

    def layernorm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x = node.input[0]
        rank = len(self.shapes.get(x) or [])
        if attrs.get("axis", -1) not in (-1, rank - 1):
            raise self.fail("LayerNormalization over more than the last axis")
        n = self.static_dim(x, -1)
        if n is None or node.input[1] not in self.inits:
            raise self.fail("LayerNormalization needs a static channel count and constant scale")
        gamma = np.broadcast_to(np.asarray(self.inits[node.input[1]], np.float64), (n,))
        beta = np.zeros(n)
        if len(node.input) > 2 and node.input[2]:
            beta = np.broadcast_to(np.asarray(self.inits[node.input[2]], np.float64), (n,))
        t = self.need(x, self.wide())
        # A channel whose beta/gamma exceeds ILayerNorm's bias range (a tiny gamma) gets its
        # beta added after the per-channel scale is applied, on a fine int32 scale.
        late = ~ilayernorm.bias_fits(beta, gamma, n)
        try:
            bias = ilayernorm.fold_beta(np.where(late, 0.0, beta), gamma, n)
        except ValueError as e:
            raise self.fail(str(e)) from None
        out = node.output[0]
        acc = self.emit("ILayerNorm", [t.name, self.const(bias, f"{out}_beta")], out,
                        TensorProto.INT32, domain=DOMAIN)
        q = QTensor(acc, "int32", ilayernorm.output_scale(n) * gamma, bound=INT32_MAX)
        if late.any():
            s_out = max(self.amax(out), 1e-12) / QMAX[self.wide()] / 2**ADD_EXTRA_BITS
            fine = self._requant_to_int32(q, s_out, (1 << 30) - 1)
            late_q = np.where(late, np.rint(beta / s_out), 0).astype(np.int64)
            acc = self.emit("Add", [fine.name, self.const(late_q.astype(np.int32), f"{out}_late_beta")],
                            out, TensorProto.INT32)
            q = QTensor(acc, "int32", np.asarray(s_out), bound=fine.bound + int(np.abs(late_q).max()))
        self.q[out] = q

    def relu(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        dtype = self.downstream_dtype(out)
        t = self.need(node.input[0], dtype, scale=max(self.amax(out), 1e-12) / QMAX[dtype], lo=0)
        self.q[out] = t

    def shape(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        t = self.q.get(x) or self.need(x, self.downstream_dtype(x))
        self.nodes.append(helper.make_node("Shape", [t.name], list(node.output), name=node.name,
                                           **{a.name: helper.get_attribute_value(a)
                                              for a in node.attribute}))

    def shape_op(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        dtype = self.downstream_dtype(out)
        data = [0] if node.op_type != "Concat" else range(len(node.input))
        inputs = list(node.input)
        src = None
        for i in data:
            name = node.input[i]
            if not self.is_float(name):
                continue
            if node.op_type == "Concat":
                src = self.need(name, dtype, scale=max(self.amax(out), 1e-12) / QMAX[dtype])
            else:
                have = self.q.get(name)
                keep = have is not None and have.per_tensor and (have.dtype != "int32"
                                                                 or have.interval is not None)
                src = have if keep else self.need(name, dtype)
            inputs[i] = src.name
        new = self.fresh(out)
        self.nodes.append(helper.make_node(node.op_type, inputs, [new], name=new,
                                           **{a.name: helper.get_attribute_value(a)
                                              for a in node.attribute}))
        self.value_types[new] = ELEM[src.dtype]
        self.q[out] = replace(src, name=new)


def quantize_model(model: onnx.ModelProto, ranges: dict[str, TensorRange], *,
                   act_bits: str = "auto", source: str = "model", io: str = "float",
                   allow_float: bool = False, lowbit: dict | None = None
                   ) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Rewrite a shape-inferred fp32 model into the integer ONNX graph.

    Args:
        model: the fp32 model (shape-inferred; fused patterns already folded).
        ranges: calibrated ranges of its float tensors.
        act_bits: activation dtype policy (module docstring).
        source: what to call the model in errors.
        io: ``"float"`` (boundary Quantize/DequantizeLinear) or ``"int8"`` (integer graph
            inputs and outputs; their scales in ``report.io``).
        allow_float: keep nodes without an integer form in float32 instead of failing
            (``report.float_nodes`` says which and why).
        lowbit: node output -> :class:`edgert.compiler.lowbit.LowbitWeight`: those Linears
            become ``LutMatMul`` on int8 activations (``report.lowbit`` names them).

    Raises:
        UnsupportedOpError: nodes without an integer form (all listed at once; not with
            ``allow_float``).
        QuantizationError: a node whose range checks cannot be met (named; with
            ``allow_float`` only where keeping it float fails too).
    """
    q = Quantizer(model, ranges, act_bits=act_bits, source=source, io=io, allow_float=allow_float,
                  lowbit=lowbit)
    return q.run(), q.report
