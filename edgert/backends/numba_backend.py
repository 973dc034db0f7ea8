"""Run an artifact's integer ONNX graph with a small interpreter over the ops' numba kernels.

No TVM, no onnxruntime: ``onnx`` parses ``model.onnx`` (and ``onnx.reference`` runs the float
nodes an ``--allow-float`` build keeps, see below). Everything
that does not depend on the inputs is done once at load (:class:`Plan`): initializers become
read-only numpy arrays, attributes are converted, one handler is picked per node, nodes whose
inputs are all constant are evaluated (constant folding), and the point after which each
intermediate tensor is dead is recorded so that ``run`` frees it early.

Ops (the contract is ``docs/integer-onnx.md``; shapes follow ONNX/numpy broadcasting):
    edgert domain (numba kernels of ``ops/``): ``Requant`` (int8/16/32 -> int8/16/32),
        ``Shiftmax`` (int8/16 -> int8/16), ``ShiftGELU`` (int8/16 -> int32), ``ILayerNorm``
        (int8/16/32 [..., N], optional int32 bias [N] -> int32), ``IntMatMul`` (int8/16 -> int32),
        ``LutMatMul`` (float32 or int8 [..., M, K] x packed low-bit weights -> float32 or int32;
        its layout attributes are checked at load, :class:`~edgert.errors.ArtifactError`).
    integer arithmetic: ``MatMulInteger`` (int8/uint8 -> int32, numpy matmul shapes, rank-1
        operands included) on ``intmatmul.numba_kernel``; ``ConvInteger`` (N-d, NCHW..., pads,
        strides, dilations, group, auto_pad) as numpy im2col + ``intmatmul.numba_kernel``;
        ``Add`` (numpy broadcasting, wrapping like int32 hardware). Zero points, when present,
        must be constant scalars (the contract has none).
    boundary: ``QuantizeLinear`` (float32 ``x / scale``, round half to even, saturate to the
        zero point's int8/uint8/int16/uint16; per tensor or per ``axis``), ``DequantizeLinear``
        (``float32(q) * scale``, per tensor or per ``axis``).
    shape ops, numpy exactly as ONNX (opset >= 13) defines them: ``Reshape`` (0, -1,
        ``allowzero``), ``Transpose``, ``Squeeze`` / ``Unsqueeze`` (axes as an input),
        ``Flatten``, ``Slice`` (axes/steps optional, negative indices and steps, ONNX clamping),
        ``Gather`` (negative indices), ``Concat``, ``Expand``, ``Identity``, ``Shape``
        (start/end), ``Constant``, ``Cast`` (numeric types).
    float nodes (``--allow-float``): ``Div`` of floats is IEEE float division; a default-domain
        op without a kernel here whose outputs the graph declares floating point (graph
        outputs or ``value_info``, which the quantizer writes for every tensor) runs on
        ``onnx.reference`` (numpy), one node at a time. Correctly rounded IEEE ops (``Sqrt``,
        arithmetic) give what TVM gives bit for bit; transcendental ones (``Exp``, ``Sin``,
        ``Sigmoid``...) may differ from TVM's in the last bit, which the next ``QuantizeLinear``
        can turn into one unit.
Any other op (or an unsupported attribute value) raises :class:`UnsupportedOpError` at load,
listing every such node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.artifact import MODEL_MEMBER, Artifact
from edgert.errors import ArtifactError, InputError, ModelError, UnsupportedOpError
from edgert.onnx_graph import node_label
from edgert.ops import DOMAIN, ilayernorm, intmatmul, requant, shiftgelu, shiftmax

Handler = Callable[..., Sequence[np.ndarray]]
"""A node at run time: input arrays (``None`` for an absent optional input) -> output arrays."""

MIN_OPSET = 13
_REQUIRED = object()
_QUANT_DTYPES = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max))
                 for t in (np.int8, np.uint8, np.int16, np.uint16)}
_CAST_DTYPES = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                      np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                      np.float64)}


class NumbaBackend:
    """The ``model.onnx`` of an artifact, run node by node on numpy and the ops' numba kernels.

    Needs neither a compiled library nor a target this machine can run: only the graph.

    Args:
        artifact: a verified artifact.
        threads: numba worker threads (clamped to ``numba.config.NUMBA_NUM_THREADS``);
            default: numba's (all of them).
    """

    name = "numba"

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        import numba

        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.threads = None if threads is None else min(threads, numba.config.NUMBA_NUM_THREADS)
        self._set_num_threads = numba.set_num_threads
        source = str(artifact.path)
        try:
            model = onnx.load_model_from_string(artifact.members[MODEL_MEMBER])
        except Exception as e:
            raise ModelError(f"{source}: {MODEL_MEMBER} is not a valid ONNX model ({e})") from None
        self.plan = Plan(model, source=source)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the graph; inputs and outputs in graph order."""
        if self.threads is not None:
            # numba's thread count belongs to the calling thread: set it on every call.
            self._set_num_threads(self.threads)
        return self.plan.run(inputs)


@dataclass
class _Step:
    handler: Handler
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    label: str
    free: tuple[str, ...] = ()


class Plan:
    """An ONNX graph prepared for repeated runs (see the module docstring).

    Args:
        model: the integer graph (default-domain opset >= 13, ``edgert`` opset 1).
        source: what to call the model in error messages.

    Raises:
        UnsupportedOpError: nodes with ops (or attribute values) this interpreter lacks, all
            of them named at once.
        ModelError: an opset below 13, a graph that is not topologically sorted, or a node
            that fails while its constant inputs are folded.
    """

    def __init__(self, model: onnx.ModelProto, *, source: str = "model") -> None:
        opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        if opsets.get("", 0) < MIN_OPSET:
            raise ModelError(f"{source}: the numba backend needs default-domain opset >= "
                             f"{MIN_OPSET}, the model has {opsets.get('', 'none')}")
        graph = model.graph
        if len(graph.sparse_initializer):
            raise ModelError(f"{source}: sparse initializers are not supported")
        consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            try:
                consts[init.name] = _frozen(numpy_helper.to_array(init))
            except Exception as e:
                raise ModelError(f"{source}: initializer {init.name!r} cannot be read ({e})") from None
        self.input_names = [v.name for v in graph.input if v.name not in consts]
        self.output_names = [v.name for v in graph.output]
        declared = {v.name: v.type.tensor_type.elem_type
                    for v in [*graph.input, *graph.value_info, *graph.output]
                    if v.type.HasField("tensor_type")}
        defined = set(consts) | set(self.input_names)
        steps: list[_Step] = []
        unsupported: list[tuple[str, str]] = []
        for index, node in enumerate(graph.node):
            label = node_label(node, index)
            for name in node.input:
                if name and name not in defined:
                    raise ModelError(f"{source}: node {label} reads {name!r} before any node "
                                     "computes it (nodes must be in topological order)")
            defined.update(n for n in node.output if n)
            domain = "" if node.domain == "ai.onnx" else node.domain
            factory = _FACTORIES.get((domain, node.op_type))
            op = node.op_type if not domain else f"{domain}.{node.op_type}"
            if factory is None and not domain and any(declared.get(o) in _FLOAT_TYPES
                                                      for o in node.output if o):
                factory = _float_fallback(opsets[""])
            if factory is None:
                unsupported.append((op, label))
                continue
            info = _Node(node, label, [consts.get(n) if n else None for n in node.input])
            try:
                step = _Step(factory(info), tuple(node.input), tuple(node.output), label)
            except _Unsupported as e:
                unsupported.append((f"{op} with {e}", label))
                continue
            except ModelError as e:
                raise ModelError(f"{source}: {e}") from None
            if all(not n or n in consts for n in node.input):
                _fold(step, consts, source)
            else:
                steps.append(step)
        if unsupported:
            raise UnsupportedOpError(unsupported, source=f"{source} (numba backend)")
        missing = [n for n in self.output_names if n not in defined]
        if missing:
            raise ModelError(f"{source}: graph output(s) {', '.join(missing)} are never computed")
        self.constants = consts
        self.steps = _with_frees(steps, set(self.output_names))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the graph on ``inputs`` (graph order) and return the outputs (graph order).

        Outputs are C-contiguous, writeable and never share memory with an input or a constant.
        """
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.input_names, inputs))
        for step in self.steps:
            args = [env[n] if n else None for n in step.inputs]
            try:
                results = step.handler(*args)
            except Exception as e:
                if hasattr(e, "add_note"):                  # Python >= 3.11
                    e.add_note(f"in node {step.label} (numba backend)")
                raise
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
            for name in step.free:
                del env[name]
        outputs: list[np.ndarray] = []
        for name in self.output_names:
            outputs.append(_own(env[name], [*inputs, *outputs]))
        return outputs


def _fold(step: _Step, consts: dict[str, np.ndarray], source: str) -> None:
    """Evaluate a node whose inputs are all constants; its outputs become constants."""
    try:
        results = step.handler(*[consts[n] if n else None for n in step.inputs])
    except Exception as e:
        raise ModelError(f"{source}: node {step.label} fails on its constant inputs ({e})") from None
    for name, value in zip(step.outputs, results):
        if name:
            consts[name] = _frozen(np.array(value))


def _with_frees(steps: list[_Step], keep: set[str]) -> list[_Step]:
    """Record on each step the intermediates that no later step reads."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in (*step.inputs, *step.outputs):
            if name:
                last[name] = i
    produced = {n for s in steps for n in s.outputs if n}
    for i, step in enumerate(steps):
        step.free = tuple(sorted({n for n in (*step.inputs, *step.outputs)
                                  if n in produced and n not in keep and last[n] == i}))
    return steps


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _own(value: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """An output the caller may keep and modify: contiguous, writeable, sharing no memory with
    ``others`` (the inputs and the outputs before it) nor with a (read-only) constant."""
    value = np.asarray(value)
    if (not value.flags.writeable or not value.flags.c_contiguous
            or any(np.may_share_memory(value, x) for x in others)):
        return np.array(value, order="C")
    return value


# --- node preparation --------------------------------------------------------------------------

class _Unsupported(Exception):
    """A supported op with an attribute value or input form this backend does not handle."""


@dataclass
class _Node:
    proto: onnx.NodeProto
    label: str
    consts: list[np.ndarray | None]   # the value of each input known at load, else None

    def attr(self, name: str, default: Any = _REQUIRED) -> Any:
        for a in self.proto.attribute:
            if a.name == name:
                if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                              onnx.AttributeProto.SPARSE_TENSOR):
                    kind = onnx.AttributeProto.AttributeType.Name(a.type)
                    raise _Unsupported(f"a {kind} attribute {name!r}")
                value = helper.get_attribute_value(a)
                if isinstance(value, onnx.TensorProto):
                    return numpy_helper.to_array(value)
                return value.decode() if isinstance(value, bytes) else value
        if default is _REQUIRED:
            raise ModelError(f"node {self.label} ({self.proto.op_type}) lacks attribute {name!r}")
        return default

    def has_input(self, i: int) -> bool:
        return len(self.proto.input) > i and bool(self.proto.input[i])

    def zero_point(self, i: int) -> int | None:
        """The constant scalar zero point at input ``i``: None when absent or 0."""
        if not self.has_input(i):
            return None
        value = self.consts[i]
        if value is None or value.size != 1:
            raise _Unsupported("a zero point that is not a constant scalar")
        return int(value.reshape(())) or None


_FACTORIES: dict[tuple[str, str], Callable[[_Node], Handler]] = {}


def _op(*names: str, domain: str = "") -> Callable:
    def register(factory: Callable[[_Node], Handler]) -> Callable[[_Node], Handler]:
        for name in names:
            _FACTORIES[(domain, name)] = factory
        return factory
    return register


def supported_ops() -> list[str]:
    """The op types this backend runs (``domain.Op`` outside the default domain)."""
    return sorted(op if not d else f"{d}.{op}" for d, op in _FACTORIES)


# --- edgert ops ----------------------------------------------------------------------------------

@_op("Requant", domain=DOMAIN)
def _requant(node: _Node) -> Handler:
    to = helper.tensor_dtype_to_np_dtype(int(node.attr("to"))).name
    if to not in requant.OUT_DTYPES:
        raise _Unsupported(f"to={to}")
    kw = dict(lo=int(node.attr("lo")), hi=int(node.attr("hi")), to=to, axis=int(node.attr("axis")))
    return lambda q, m, e: (requant.numba_kernel(q, m, e, **kw),)


@_op("Shiftmax", domain=DOMAIN)
def _shiftmax(node: _Node) -> Handler:
    kw = dict(x0=int(node.attr("x0")), n=int(node.attr("n")), k=int(node.attr("k")))
    return lambda q, exclude=None: (shiftmax.numba_kernel(q, exclude, **kw),)


@_op("ShiftGELU", domain=DOMAIN)
def _shiftgelu(node: _Node) -> Handler:
    kw = dict(x0=int(node.attr("x0")), n=int(node.attr("n")))
    return lambda q: (shiftgelu.numba_kernel(q, **kw),)


@_op("ILayerNorm", domain=DOMAIN)
def _ilayernorm(node: _Node) -> Handler:
    return lambda x, bias=None: (ilayernorm.numba_kernel(x, bias),)


@_op("IntMatMul", domain=DOMAIN)
def _intmatmul(node: _Node) -> Handler:
    return lambda a, b: (_int_matmul(a, b),)


@_op("LutMatMul", domain=DOMAIN)
def _lutmatmul(node: _Node) -> Handler:
    from edgert.ops import lutmatmul

    attrs = {a.name: node.attr(a.name) for a in node.proto.attribute}
    try:
        layout = lutmatmul.LutLayout.from_attrs(attrs)
    except ArtifactError as e:
        raise ArtifactError(f"node {node.label}: {e}") from None
    table_bits = int(attrs["table_bits"]) if "table_bits" in attrs else None
    dequant = bool(attrs.get("dequant", 0))

    def run(a, w, scales=None, zero_points=None):
        return (lutmatmul.numba_kernel(a, w, scales, zero_points, layout=layout,
                                       table_bits=table_bits, dequant=dequant),)
    return run


# --- integer arithmetic ----------------------------------------------------------------------------

def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy ``matmul`` shapes (rank-1 operands too) on ``intmatmul.numba_kernel``: int32 out."""
    vec_a, vec_b = a.ndim == 1, b.ndim == 1
    out = intmatmul.numba_kernel(a[None, :] if vec_a else a, b[:, None] if vec_b else b)
    if vec_b:
        out = out[..., 0]
    if vec_a:
        out = out[..., 0] if vec_b else out[..., 0, :]
    return out


def _operand(x: np.ndarray, zero_point: int | None) -> np.ndarray:
    """An int8/int16 operand for the kernels: ``x - zero_point`` (uint8 widens to int16)."""
    if zero_point is None:
        return x.astype(np.int16) if x.dtype == np.uint8 else x
    return x.astype(np.int16) - np.int16(zero_point)


@_op("MatMulInteger")
def _matmulinteger(node: _Node) -> Handler:
    za, zb = node.zero_point(2), node.zero_point(3)

    def run(a, b, _za=None, _zb=None):
        return (_int_matmul(_operand(a, za), _operand(b, zb)),)
    return run


@_op("ConvInteger")
def _convinteger(node: _Node) -> Handler:
    zx, zw = node.zero_point(2), node.zero_point(3)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={auto_pad}")
    group = int(node.attr("group", 1))
    pads, strides, dilations = (node.attr(k, None) for k in ("pads", "strides", "dilations"))

    def run(x, w, _zx=None, _zw=None):
        x, w = _operand(x, zx), _operand(w, zw)
        nd = x.ndim - 2
        kshape = w.shape[2:]
        st = list(strides or [1] * nd)
        dil = list(dilations or [1] * nd)
        pd = _conv_pads(auto_pad, pads, x.shape[2:], kshape, st, dil)
        n, c = x.shape[:2]
        m = w.shape[0]
        if w.shape[1] * group != c or m % group:
            raise ValueError(f"ConvInteger: x {x.shape}, w {w.shape} and group {group} disagree")
        cols, out_sp = _im2col(x, kshape, pd, st, dil)
        cols = cols.reshape(n, group, -1, cols.shape[-1])
        out = intmatmul.numba_kernel(w.reshape(1, group, m // group, -1), cols)
        return (out.reshape(n, m, *out_sp),)
    return run


def _conv_pads(auto_pad: str, pads: Sequence[int] | None, spatial: Sequence[int],
               kshape: Sequence[int], strides: Sequence[int], dil: Sequence[int]) -> list[int]:
    """Begin pads then end pads, one per spatial axis (ONNX Conv ``auto_pad`` rules)."""
    nd = len(spatial)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad == "NOTSET":
        return list(pads or [0] * (2 * nd))
    head, tail = [], []
    for d, k, s, dl in zip(spatial, kshape, strides, dil):
        total = max(0, (-(-d // s) - 1) * s + (k - 1) * dl + 1 - d)
        first = (total + 1) // 2 if auto_pad == "SAME_LOWER" else total // 2
        head.append(first)
        tail.append(total - first)
    return head + tail


def _im2col(x: np.ndarray, kshape: Sequence[int], pads: Sequence[int], strides: Sequence[int],
            dil: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """x [N, C, *S] -> columns [N, C * prod(kshape), prod(out)] (rows: channel, then kernel
    offset, as ``w.reshape(M, -1)``) and the output spatial shape."""
    n, c, *spatial = x.shape
    nd = len(spatial)
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    out_sp = [(x.shape[2 + i] - (kshape[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    if any(o < 1 for o in out_sp):
        raise ValueError(f"ConvInteger: kernel {list(kshape)} does not fit the padded input "
                         f"{list(x.shape[2:])}")
    cols = np.empty((n, c, *kshape, *out_sp), x.dtype)
    every = (slice(None), slice(None))
    for off in np.ndindex(*kshape):
        src = tuple(slice(o * dl, o * dl + (size - 1) * s + 1, s)
                    for o, dl, size, s in zip(off, dil, out_sp, strides))
        cols[(*every, *off)] = x[(*every, *src)]
    return cols.reshape(n, c * int(np.prod(kshape)), int(np.prod(out_sp))), out_sp


@_op("Add")
def _add(node: _Node) -> Handler:
    return lambda a, b: (np.asarray(np.add(a, b)),)


@_op("Sub")
def _sub(node: _Node) -> Handler:
    return lambda a, b: (np.asarray(np.subtract(a, b)),)


@_op("Mul")
def _mul(node: _Node) -> Handler:
    return lambda a, b: (np.asarray(np.multiply(a, b)),)


@_op("Div")
def _div(node: _Node) -> Handler:
    def run(a, b):
        if a.dtype.kind == "f":                  # a float node kept by --allow-float
            return (np.asarray(np.divide(a, b)),)
        q = np.floor_divide(a, b)                # ONNX integer Div truncates toward zero
        return (np.asarray(q + ((q < 0) & (q * b != a))).astype(a.dtype, copy=False),)
    return run


@_op("ReduceSum")
def _reduce_sum(node: _Node) -> Handler:
    keepdims, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))

    def run(x, axes=None):
        if axes is None or axes.size == 0:
            if noop:
                return (x,)
            axes = np.arange(x.ndim)
        return (np.sum(x, axis=tuple(int(a) for a in axes), keepdims=keepdims, dtype=x.dtype),)
    return run


@_op("Clip")
def _clip(node: _Node) -> Handler:
    def run(x, lo=None, hi=None):
        return (x if lo is None and hi is None else np.clip(x, lo, hi).astype(x.dtype, copy=False),)
    return run


@_op("Equal")
def _equal(node: _Node) -> Handler:
    return lambda a, b: (np.asarray(np.equal(a, b)),)


@_op("Where")
def _where(node: _Node) -> Handler:
    return lambda c, a, b: (np.asarray(np.where(c, a, b)),)


@_op("ConstantOfShape")
def _constant_of_shape(node: _Node) -> Handler:
    value = np.asarray(node.attr("value", np.zeros(1, np.float32))).reshape(-1)
    return lambda shape: (np.full(tuple(int(d) for d in shape), value[0], value.dtype),)


# --- float nodes (--allow-float) ------------------------------------------------------------------

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


def _float_fallback(opset: int) -> Callable[[_Node], Handler]:
    """A factory running one float node on ``onnx.reference`` (default-domain ``opset``)."""

    def factory(node: _Node) -> Handler:
        from onnx.reference import ReferenceEvaluator

        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.proto.attribute):
            raise _Unsupported("subgraphs")
        try:
            evaluator = ReferenceEvaluator(node.proto, opsets={"": opset})
        except Exception:                    # onnx.reference has no such op (or version)
            raise _Unsupported("no onnx.reference implementation") from None
        names = list(node.proto.input)

        def run(*args):
            feeds = {n: a for n, a in zip(names, args) if n}
            return [np.asarray(v) for v in evaluator.run(None, feeds)]
        return run
    return factory


# --- boundary ops ---------------------------------------------------------------------------------

def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scale/zero point ready to broadcast: one value as 0-d, a vector along ``axis``."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _quant_axis(node: _Node) -> int:
    """The ``axis`` of a QuantizeLinear/DequantizeLinear; rejects blocked quantization and
    opset-23 ``precision``."""
    if int(node.attr("block_size", 0)):
        raise _Unsupported("blocked quantization")
    if int(node.attr("precision", 0)):
        raise _Unsupported("precision")
    return int(node.attr("axis", 1))


@_op("QuantizeLinear")
def _quantize(node: _Node) -> Handler:
    axis = _quant_axis(node)
    zp = node.consts[2] if node.has_input(2) else None
    out_attr = int(node.attr("output_dtype", 0))
    if zp is not None:
        fixed: np.dtype | None = zp.dtype
    elif node.has_input(2):
        fixed = None                                   # the zero point's type, seen at run time
    else:
        fixed = helper.tensor_dtype_to_np_dtype(out_attr) if out_attr else np.dtype(np.uint8)
    if fixed is not None and fixed not in _QUANT_DTYPES:
        raise _Unsupported(f"output type {fixed}")
    skip_zp = zp is not None and not zp.any()

    def run(x, scale, z=None):
        dtype = fixed if fixed is not None else z.dtype
        lo, hi = _QUANT_DTYPES[dtype]
        with np.errstate(over="ignore"):                   # x / scale may overflow to inf
            y = np.rint(x / _along(scale, x.ndim, axis))  # float32: one division, half to even
        if z is not None and not skip_zp:
            y = y + _along(z, x.ndim, axis)
        return (np.clip(y, lo, hi).astype(dtype),)
    return run


@_op("DequantizeLinear")
def _dequantize(node: _Node) -> Handler:
    axis = _quant_axis(node)
    zp = node.consts[2] if node.has_input(2) else None
    skip_zp = zp is not None and not zp.any()
    out_attr = int(node.attr("output_dtype", 0))
    out = helper.tensor_dtype_to_np_dtype(out_attr) if out_attr else None

    def run(x, scale, z=None):
        dx = x.astype(np.float32)
        if z is not None and not skip_zp:
            dx = dx - _along(z, x.ndim, axis)
        y = dx * _along(scale, x.ndim, axis)
        return (y.astype(out if out is not None else scale.dtype, copy=False),)
    return run


# --- shape ops ------------------------------------------------------------------------------------

@_op("Identity")
def _identity(node: _Node) -> Handler:
    return lambda x: (x,)


@_op("Constant")
def _constant(node: _Node) -> Handler:
    attrs = [a.name for a in node.proto.attribute]
    if len(attrs) != 1 or attrs[0] not in ("value", "value_float", "value_floats", "value_int",
                                            "value_ints"):
        raise _Unsupported(f"attribute {', '.join(attrs) or '(none)'}")
    value = node.attr(attrs[0])
    if attrs[0] in ("value_float", "value_floats"):
        value = np.array(value, np.float32)
    elif attrs[0] in ("value_int", "value_ints"):
        value = np.array(value, np.int64)
    return lambda: (value,)


@_op("Cast")
def _cast(node: _Node) -> Handler:
    dtype = helper.tensor_dtype_to_np_dtype(int(node.attr("to")))
    if dtype not in _CAST_DTYPES:
        raise _Unsupported(f"to={dtype}")
    return lambda x: (x.astype(dtype, copy=False),)


@_op("Shape")
def _shape(node: _Node) -> Handler:
    start, end = node.attr("start", 0), node.attr("end", None)
    return lambda x: (np.array(x.shape[start:end], np.int64),)


@_op("Reshape")
def _reshape(node: _Node) -> Handler:
    allowzero = int(node.attr("allowzero", 0))

    def run(data, shape):
        dims = [int(d) for d in shape]
        if not allowzero:
            dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (data.reshape(dims),)
    return run


@_op("Transpose")
def _transpose(node: _Node) -> Handler:
    perm = node.attr("perm", None)
    return lambda x: (np.transpose(x, perm),)


@_op("Squeeze")
def _squeeze(node: _Node) -> Handler:
    def run(x, axes=None):
        return (np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in axes)),)
    return run


@_op("Unsqueeze")
def _unsqueeze(node: _Node) -> Handler:
    return lambda x, axes: (np.expand_dims(x, tuple(int(a) for a in axes)),)


@_op("Flatten")
def _flatten(node: _Node) -> Handler:
    axis = int(node.attr("axis", 1))

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        if not 0 <= a <= x.ndim:
            raise ValueError(f"Flatten: axis {axis} out of range for rank {x.ndim}")
        return (x.reshape(int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))),)
    return run


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """One axis of ONNX ``Slice``: negative values count from the end, then start is clamped to
    [0, dim] (step > 0) or [0, dim - 1] (step < 0), end to [0, dim] or [-1, dim - 1]. (Python
    slices differ for step < 0 and start < -dim: they give nothing, ONNX starts at 0.)"""
    if step == 0:
        raise ValueError("Slice: steps must not be 0")
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    if dim == 0:
        return slice(0, 0, step)
    end = min(max(end, -1), dim - 1)
    return slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)


@_op("Slice")
def _slice(node: _Node) -> Handler:
    def run(data, starts, ends, axes=None, steps=None):
        n = len(starts)
        axes_ = range(n) if axes is None else [int(a) for a in axes]
        steps_ = [1] * n if steps is None else [int(s) for s in steps]
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes_, steps_):
            index[a] = _slice_bounds(int(s), int(e), st, data.shape[a])
        return (data[tuple(index)],)
    return run


@_op("Gather")
def _gather(node: _Node) -> Handler:
    axis = int(node.attr("axis", 0))

    def run(data, indices):
        a = axis + data.ndim if axis < 0 else axis
        idx = indices.astype(np.int64)
        idx = np.where(idx < 0, idx + data.shape[a], idx)
        return (np.asarray(np.take(data, idx, axis=a)),)
    return run


@_op("Concat")
def _concat(node: _Node) -> Handler:
    axis = int(node.attr("axis"))
    return lambda *xs: (np.concatenate(xs, axis=axis),)


@_op("Expand")
def _expand(node: _Node) -> Handler:
    def run(x, shape):
        return (np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))),)
    return run
