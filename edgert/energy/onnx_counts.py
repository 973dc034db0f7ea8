"""Operation counts of the standard ONNX ops that edgert graphs hold (fp32 and integer).

The edgert-domain ops count themselves (``ops/<name>/counts.py``); this module counts the
default-domain ops, one small function per op family, each with its formula. Conventions (the
same as the op folders'):

- one scalar operation per count, in the element type: float32 -> ``fp32_*``, float16 /
  bfloat16 -> ``fp16_*``, (u)int8 and bool -> ``int8_*``, (u)int16 -> ``int16_*``, (u)int32 ->
  ``int32_*``, (u)int64 -> ``int64_*`` (a float64 op counts as fp32: no table has it);
- a division counts as a multiply in floats (there is no fp32 division entry) and as
  ``int64_div`` in integers; a square root counts as one float multiply;
- ``max`` / ``min`` / clamp bounds / selects are ``compares``; sign flips, bitwise logic and
  type conversions are free;
- ``bytes_read`` / ``bytes_written``: every input and output tensor once. Views (Reshape,
  Flatten, Squeeze, Unsqueeze, Identity) and shape queries move nothing: 0 bytes.

Every function takes a :class:`NodeIO` (the node's concrete input/output shapes and dtypes and
its attributes) and returns an ``OpCounts`` for one call; :func:`count_standard` dispatches on
the op type (passed on to the functions as the attribute ``_op``) and returns ``None`` for an
op this module does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes
from edgert.ops._floatmath.counts import EXP_NEG

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeIO:
    """One node's tensors: concrete shapes (``None`` for an absent optional input) and numpy
    dtypes, in node order, and its ONNX attributes (name -> value, strings decoded)."""

    in_shapes: Sequence[Shape | None]
    in_dtypes: Sequence[Any]
    out_shapes: Sequence[Shape]
    out_dtypes: Sequence[Any]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def numel(self, shape: Shape | None) -> int:
        return 0 if shape is None else int(np.prod(shape, dtype=np.int64))

    @property
    def out_numel(self) -> int:
        """Elements of the first output."""
        return self.numel(self.out_shapes[0])

    @property
    def moved(self) -> OpCounts:
        """Every input read once and every output written once."""
        return OpCounts(bytes_read=tensor_bytes(self.in_shapes, self.in_dtypes),
                        bytes_written=tensor_bytes(self.out_shapes, self.out_dtypes))


def kind(dtype: Any) -> str:
    """The ``OpCounts`` prefix of arithmetic in ``dtype`` (``fp32``, ``int8``...)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return "fp16" if dt.itemsize == 2 else "fp32"
    if dt.kind == "V" and dt.itemsize == 2:          # bfloat16 from ml_dtypes
        return "fp16"
    if dt.kind == "b":
        return "int8"
    return {1: "int8", 2: "int16", 4: "int32", 8: "int64"}[dt.itemsize]


def arith(dtype: Any, op: str, n: int) -> OpCounts:
    """``n`` scalar operations ``op`` (``add``, ``mul`` or ``div``) in ``dtype``."""
    k = kind(dtype)
    if op == "div":
        op, k = ("mul", k) if k.startswith("fp") else ("div", "int64")
    return OpCounts(**{f"{k}_{op}": int(n)})


# --- matrix products -------------------------------------------------------------------------

def _matmul_dims(a: Shape, b: Shape) -> tuple[int, int, int, int]:
    """(batch, M, K, N) of ``a @ b`` with numpy's 1-D promotion and batch broadcasting."""
    a2 = [1, *a] if len(a) == 1 else list(a)
    b2 = [*b, 1] if len(b) == 1 else list(b)
    batch = int(np.prod(np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2])), dtype=np.int64))
    return batch, int(a2[-2]), int(a2[-1]), int(b2[-1])


def matmul(io: NodeIO) -> OpCounts:
    """MatMul / MatMulInteger: ``B * M * N * K`` multiply-adds.

    Float: one multiply and one add per product in the operands' type. MatMulInteger:
    int8 multiplies (int16 when an operand is wider) and int32 accumulation, plus one int32
    add per operand element for each zero point given (``a - a_zero``, ``b - b_zero``).
    """
    batch, m, k, n = _matmul_dims(io.in_shapes[0], io.in_shapes[1])
    macs = batch * m * n * k
    dt = np.dtype(io.in_dtypes[0])
    if dt.kind == "f":
        ops = arith(dt, "mul", macs) + arith(dt, "add", macs)
    else:
        narrow = all(np.dtype(d).itemsize == 1 for d in io.in_dtypes[:2])
        ops = OpCounts(int32_add=macs) + (OpCounts(int8_mul=macs) if narrow
                                          else OpCounts(int16_mul=macs))
        zero = sum(io.numel(io.in_shapes[i]) for i in (0, 1)
                   if len(io.in_shapes) > i + 2 and io.in_shapes[i + 2] is not None)
        ops += OpCounts(int32_add=zero)
    return ops + io.moved


def gemm(io: NodeIO) -> OpCounts:
    """Gemm ``alpha * A' B' + beta * C``: ``M * N * K`` multiply-adds, then per output element
    one multiply when ``alpha != 1``, and with ``C``: one add (and one multiply when
    ``beta != 1``)."""
    a, b = list(io.in_shapes[0]), list(io.in_shapes[1])
    m, k = (a[1], a[0]) if io.attrs.get("transA", 0) else (a[0], a[1])
    n = b[0] if io.attrs.get("transB", 0) else b[1]
    dt = io.in_dtypes[0]
    outs = m * n
    ops = arith(dt, "mul", m * n * k) + arith(dt, "add", m * n * k)
    if float(io.attrs.get("alpha", 1.0)) != 1.0:
        ops += arith(dt, "mul", outs)
    if len(io.in_shapes) > 2 and io.in_shapes[2] is not None:
        ops += arith(dt, "add", outs)
        if float(io.attrs.get("beta", 1.0)) != 1.0:
            ops += arith(dt, "mul", outs)
    return ops + io.moved


def conv(io: NodeIO) -> OpCounts:
    """Conv / ConvInteger: per output element ``C_in / group * prod(kernel)`` multiply-adds
    (the weight ``W [C_out, C_in / group, k1, k2...]``), and one add per output element for a
    bias. ConvInteger: int8 multiplies, int32 adds, plus one int32 add per input element for
    ``x_zero_point`` and per weight element for ``w_zero_point`` when given."""
    w = io.in_shapes[1]
    per_out = int(np.prod(w[1:], dtype=np.int64))
    macs = io.out_numel * per_out
    dt = np.dtype(io.in_dtypes[0])
    if dt.kind == "f":
        ops = arith(dt, "mul", macs) + arith(dt, "add", macs)
        if len(io.in_shapes) > 2 and io.in_shapes[2] is not None:
            ops += arith(dt, "add", io.out_numel)
    else:
        ops = OpCounts(int8_mul=macs, int32_add=macs)
        zero = sum(io.numel(io.in_shapes[i]) for i in (0, 1)
                   if len(io.in_shapes) > i + 2 and io.in_shapes[i + 2] is not None)
        ops += OpCounts(int32_add=zero)
    return ops + io.moved


# --- element-wise ----------------------------------------------------------------------------

BINARY_OPS = {"Add": "add", "Sub": "add", "Sum": "add", "Mul": "mul", "Div": "div",
              "Mean": "add", "Pow": "mul"}
"""Element-wise arithmetic op -> the counted operation (Pow: ``x * x`` for the square it
almost always is)."""


def elementwise(op: str) -> Callable[[NodeIO], OpCounts]:
    """Add, Sub, Mul, Div, Pow, Sum, Mean: one ``op`` per output element (per extra operand
    for Sum / Mean), in the output's type; Mean also divides once per element."""

    def count(io: NodeIO) -> OpCounts:
        operands = max(2, sum(s is not None for s in io.in_shapes))
        ops = arith(io.in_dtypes[0], op, io.out_numel * (operands - 1))
        return ops + io.moved

    return count


def mean(io: NodeIO) -> OpCounts:
    """Mean of n operands: ``n - 1`` adds and one multiply (by ``1 / n``) per element."""
    return elementwise("add")(io) + arith(io.in_dtypes[0], "mul", io.out_numel)


def compare(io: NodeIO) -> OpCounts:
    """Relu, Max, Min, Clip, Where, Equal, Less, Greater, IsNaN...: one compare per output
    element per extra operand (Clip: one per bound given; Relu: ``max(x, 0)``; Where: a
    select)."""
    n = io.out_numel
    if io.attrs.get("_op") == "Clip":
        bounds = sum(s is not None for s in io.in_shapes[1:]) or 2
        return OpCounts(compares=n * bounds) + io.moved
    if io.attrs.get("_op") == "Where":
        return OpCounts(compares=n) + io.moved
    operands = max(2, sum(s is not None for s in io.in_shapes))
    return OpCounts(compares=n * (operands - 1)) + io.moved


def leaky_relu(io: NodeIO) -> OpCounts:
    """LeakyRelu / PRelu: ``x < 0 ? a * x : x``: 1 compare, 1 multiply per element."""
    n = io.out_numel
    return OpCounts(compares=n) + arith(io.in_dtypes[0], "mul", n) + io.moved


ERF = EXP_NEG + OpCounts(fp32_mul=9, fp32_add=7, compares=1)
"""One float32 ``erf`` (Abramowitz-Stegun 7.1.26): ``t = 1 / (1 + p|x|)`` (1 mul, 1 add, 1
reciprocal as a mul), the degree-5 polynomial in ``t`` (5 mul, 5 add), ``exp(-x*x)`` (1 mul +
EXP_NEG), ``1 - poly * e`` (1 mul, 1 add), the sign (1 compare)."""
SIGMOID = EXP_NEG + OpCounts(fp32_add=1, fp32_mul=1, compares=1)
"""``1 / (1 + exp(-x))``: the exp of ``-|x|`` (1 compare for the sign), 1 add, 1 reciprocal."""
TANH = EXP_NEG + OpCounts(fp32_mul=2, fp32_add=2, compares=1)
"""``1 - 2 / (exp(2|x|) + 1)`` with the sign: 1 mul (2x), EXP_NEG, 2 adds, 1 reciprocal."""
GELU_ERF = ERF + OpCounts(fp32_mul=3, fp32_add=1)
"""``0.5 x (1 + erf(x / sqrt 2))``: ERF, 3 multiplies, 1 add."""
GELU_TANH = TANH + OpCounts(fp32_mul=6, fp32_add=2)
"""``0.5 x (1 + tanh(c (x + 0.044715 x^3)))``: x^3 (2 mul), times 0.044715 (1 mul), 1 add,
times c (1 mul), TANH, 1 add, 0.5 x times (2 mul)."""
UNARY = {"Exp": EXP_NEG, "Erf": ERF, "Sigmoid": SIGMOID, "Tanh": TANH,
         "Sqrt": OpCounts(fp32_mul=1), "Reciprocal": OpCounts(fp32_mul=1),
         "Log": EXP_NEG, "HardSigmoid": OpCounts(fp32_mul=1, fp32_add=1, compares=2),
         "HardSwish": OpCounts(fp32_mul=2, fp32_add=1, compares=2),
         "Softplus": EXP_NEG + OpCounts(fp32_add=2), "Neg": OpCounts(), "Abs": OpCounts(),
         "Floor": OpCounts(compares=1), "Ceil": OpCounts(compares=1),
         "Round": OpCounts(fp32_add=2), "Sign": OpCounts(compares=2)}
"""Float unary op -> its operations per element (Log is costed like an exp: a reduction and a
polynomial of the same degree)."""


def unary(io: NodeIO, per_element: OpCounts) -> OpCounts:
    """A float unary op: ``per_element`` times the output's elements."""
    return per_element.times(io.out_numel) + io.moved


def gelu(io: NodeIO) -> OpCounts:
    """Gelu: GELU_ERF per element (``approximate = "tanh"``: GELU_TANH)."""
    per = GELU_TANH if io.attrs.get("approximate", "none") == "tanh" else GELU_ERF
    return unary(io, per)


def batch_norm(io: NodeIO) -> OpCounts:
    """BatchNormalization (inference): folded to ``x * s + t``: 1 mul, 1 add per element."""
    n = io.out_numel
    return arith(io.in_dtypes[0], "mul", n) + arith(io.in_dtypes[0], "add", n) + io.moved


# --- normalizations and reductions ----------------------------------------------------------

def _rows(shape: Shape, axis: int) -> tuple[int, int]:
    """(rows, row length) of ``shape`` reduced over the axes from ``axis`` on."""
    axis = axis % len(shape) if shape else 0
    length = int(np.prod(shape[axis:], dtype=np.int64))
    n = int(np.prod(shape, dtype=np.int64))
    return (n // length if length else 0), length


def softmax(io: NodeIO) -> OpCounts:
    """Softmax / LogSoftmax over an axis, per element: the row max (1 compare), ``x - max``
    (1 add), EXP_NEG, the row sum (1 add), times the reciprocal (1 mul); per row one reciprocal
    (1 mul). The rows are the elements along ``axis`` (default -1)."""
    shape = io.in_shapes[0]
    n = io.numel(shape)
    axis = int(io.attrs.get("axis", -1)) % len(shape)
    rows = n // int(shape[axis]) if n else 0
    per_element = EXP_NEG + OpCounts(compares=1, fp32_add=2, fp32_mul=1)
    return per_element.times(n) + OpCounts(fp32_mul=rows) + io.moved


def layer_norm(io: NodeIO) -> OpCounts:
    """LayerNormalization over the axes from ``axis`` (default -1), per element: the sum
    (1 add), ``d = x - mean`` (1 add), ``d * d`` (1 mul), its sum (1 add), ``d * rstd``
    (1 mul), times gamma (1 mul), plus beta when given (1 add); per row: mean and variance
    (2 mul by ``1 / n``), ``+ eps`` (1 add), ``rsqrt`` (2 mul: a root and a reciprocal)."""
    rows, _ = _rows(io.in_shapes[0], int(io.attrs.get("axis", -1)))
    n = io.numel(io.in_shapes[0])
    beta = len(io.in_shapes) > 2 and io.in_shapes[2] is not None
    per_element = OpCounts(fp32_add=3 + int(beta), fp32_mul=3)
    per_row = OpCounts(fp32_mul=4, fp32_add=1)
    return per_element.times(n) + per_row.times(rows) + io.moved


REDUCE = {"ReduceSum": "add", "ReduceMean": "add", "ReduceMax": "compare",
          "ReduceMin": "compare", "ReduceSumSquare": "mac", "ReduceL2": "mac"}


def reduce(op_type: str) -> Callable[[NodeIO], OpCounts]:
    """ReduceSum / Mean / Max / Min / SumSquare / L2: one add (or compare; SumSquare and L2 a
    multiply-add) per input element; ReduceMean one multiply (by ``1 / n``) and ReduceL2 one
    square root (a multiply) per output element."""

    def count(io: NodeIO) -> OpCounts:
        n, outs, dt = io.numel(io.in_shapes[0]), io.out_numel, io.in_dtypes[0]
        how = REDUCE[op_type]
        if how == "compare":
            ops = OpCounts(compares=n)
        elif how == "mac":
            ops = arith(dt, "mul", n) + arith(dt, "add", n)
        else:
            ops = arith(dt, "add", n)
        if op_type in ("ReduceMean", "ReduceL2"):
            ops += arith(dt, "mul", outs)
        return ops + io.moved

    count.__doc__ = f"{op_type}: see :func:`reduce`."
    return count


def pool(io: NodeIO) -> OpCounts:
    """MaxPool / AveragePool / GlobalMaxPool / GlobalAveragePool / LpPool: per output element
    ``prod(kernel)`` compares (max) or adds (average), and for average one multiply (by
    ``1 / count``). Global pools take the whole spatial extent as the kernel."""
    op = io.attrs["_op"]
    x = io.in_shapes[0]
    if op.startswith("Global"):
        window = int(np.prod(x[2:], dtype=np.int64))
    else:
        window = int(np.prod(io.attrs["kernel_shape"], dtype=np.int64))
    taps = io.out_numel * window
    dt = io.in_dtypes[0]
    if "Max" in op:
        return OpCounts(compares=taps) + io.moved
    return arith(dt, "add", taps) + arith(dt, "mul", io.out_numel) + io.moved


# --- quantization ----------------------------------------------------------------------------

def quantize_linear(io: NodeIO) -> OpCounts:
    """QuantizeLinear, per element: ``x / scale`` (1 fp32 mul by the reciprocal), round to
    nearest even (1 fp32 add: the add-and-subtract of 1.5 * 2^23 counted once), ``+ zero_point``
    (1 int32 add), the clip to the output type (2 compares)."""
    n = io.numel(io.in_shapes[0])
    return OpCounts(fp32_mul=n, fp32_add=n, int32_add=n, compares=2 * n) + io.moved


def dequantize_linear(io: NodeIO) -> OpCounts:
    """DequantizeLinear, per element: ``x - zero_point`` (1 int32 add), times ``scale``
    (1 fp32 mul)."""
    n = io.numel(io.in_shapes[0])
    return OpCounts(int32_add=n, fp32_mul=n) + io.moved


def dynamic_quantize_linear(io: NodeIO) -> OpCounts:
    """DynamicQuantizeLinear: the range (2 compares per element), then QuantizeLinear's
    per-element work; the scale and zero point once (4 fp32 operations, not counted)."""
    n = io.numel(io.in_shapes[0])
    return OpCounts(compares=2 * n) + quantize_linear(io)


def per_input_element(field: str) -> Callable[[NodeIO], OpCounts]:
    """ArgMax, ArgMin, TopK (``compares``), CumSum (adds in the input's type), BitShift
    (``shifts``): one operation per element of the first input."""

    def count(io: NodeIO) -> OpCounts:
        n = io.numel(io.in_shapes[0])
        ops = arith(io.in_dtypes[0], "add", n) if field == "add" else OpCounts(**{field: n})
        return ops + io.moved

    return count


# --- data movement ---------------------------------------------------------------------------

def moved_only(io: NodeIO) -> OpCounts:
    """Transpose, Concat, Slice, Gather, Expand, Tile, Split, Pad, Cast, Resize (nearest),
    bitwise logic...: no arithmetic (a conversion is free), every input and output tensor
    moved once."""
    return io.moved


def view(io: NodeIO) -> OpCounts:
    """Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape, Size, Constant...: a view or a
    shape query, nothing moved."""
    return OpCounts()


VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size",
         "Constant", "ConstantOfShape", "Dropout", "Range")
MOVES = ("Transpose", "Concat", "Slice", "Gather", "GatherElements", "GatherND", "Expand",
         "Tile", "Split", "Pad", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth",
         "ScatterND", "ScatterElements", "Resize", "Not", "And", "Or", "Xor", "NonZero",
         "Trilu")
COMPARES = ("Relu", "Max", "Min", "Clip", "Where", "Equal", "Less", "LessOrEqual", "Greater",
            "GreaterOrEqual", "IsNaN", "IsInf")
POOLS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "LpPool")

COUNTERS: dict[str, Callable[[NodeIO], OpCounts]] = {
    "MatMul": matmul, "MatMulInteger": matmul, "Gemm": gemm,
    "Conv": conv, "ConvInteger": conv,
    **{op: elementwise(how) for op, how in BINARY_OPS.items() if op != "Mean"},
    "Mean": mean,
    **{op: compare for op in COMPARES},
    "LeakyRelu": leaky_relu, "PRelu": leaky_relu,
    **{op: (lambda io, per=per: unary(io, per)) for op, per in UNARY.items()},
    "Gelu": gelu, "BatchNormalization": batch_norm,
    "Softmax": softmax, "LogSoftmax": softmax, "LayerNormalization": layer_norm,
    **{op: reduce(op) for op in REDUCE},
    **{op: pool for op in POOLS},
    "ArgMax": per_input_element("compares"), "ArgMin": per_input_element("compares"),
    "TopK": per_input_element("compares"), "CumSum": per_input_element("add"),
    "BitShift": per_input_element("shifts"),
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    **{op: moved_only for op in MOVES},
    **{op: view for op in VIEWS},
}
"""Default-domain op type -> its counting function."""


def count_standard(op_type: str, io: NodeIO) -> OpCounts | None:
    """Counts of one call of the default-domain op ``op_type`` (``None``: not known here)."""
    fn = COUNTERS.get(op_type)
    if fn is None:
        return None
    io = NodeIO(io.in_shapes, io.in_dtypes, io.out_shapes, io.out_dtypes,
                {**io.attrs, "_op": op_type})
    return fn(io)
