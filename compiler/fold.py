"""Fold what is known at compile time before any other stage sees the graph.

Exporters leave arithmetic on tensor shapes in the graph: ``Shape -> Gather/Slice -> Concat ->
Reshape`` for every reshape, ``Shape -> Slice -> Cast -> Sqrt -> Div`` for an attention scale
(PyTorch's TorchScript exporter), ``Shape -> Range -> Expand`` for a detector's anchor grid.
TVM's ONNX importer cannot take most of these when the dims are symbolic, and the integer-only
quantizer has no integer form for a float ``Sqrt``. :func:`fold_model` runs, in order:

1. ``--input-shape`` (:func:`override_inputs`): the named inputs' dims become the given
   integers (checked against the dims the model declares); inputs not named, and dims a
   static model already has, stay as they are, so a dynamic batch stays dynamic.
2. Rounds, until one changes nothing, of: ONNX shape inference (symbolic dims kept), then
   value propagation in graph order over (a) constants (initializers, ``Constant`` nodes,
   and nodes of the default domain whose inputs are all known, evaluated by
   ``onnx.reference``) and (b) partly known integer vectors: ``Shape`` of a tensor whose
   dims are partly static, through ``Gather``, ``Slice``, ``Concat``, ``Unsqueeze``,
   ``Squeeze``, integer ``Cast``, ``Identity`` and integer ``Add``/``Sub``/``Mul``. So the
   static dims of a dynamically batched tensor fold (the head dim of ``q`` in
   ``[batch, heads, seq, head_dim]``) while the batch stays a runtime value. A node whose
   outputs all became known is replaced by initializers of the same names when its value
   derives from a shape (up to ``MAX_FOLD_ELEMENTS`` elements), or when it and its inputs
   are small (``SMALL`` elements: scalars, shape vectors); weight transforms stay for the
   later stages. Folded values are exact: ``onnx.reference`` computes each op as ONNX
   defines it, in the op's dtype. A ``Reshape`` whose target is partly known, its runtime
   elements being the data's own dims at the same positions (a flatten's
   ``Concat(Shape(x)[0:1], [-1])``), gets a constant target with ``0`` there (ONNX's "copy
   this dim"), so TVM sees a constant reshape while the batch stays dynamic.
3. Nodes whose outputs nothing uses any more are removed, and the graph outputs' dims that
   shape inference now proves static are written into the model (symbolic ones stay).

Tensor names are kept (a folded tensor becomes an initializer of the same name; input and
output names never change), no op is fused or replaced by another, and nothing outside the
default ONNX domain is evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs, iter_nodes

MAX_ROUNDS = 16
MAX_FOLD_ELEMENTS = 1 << 20
"""A shape-derived value with more elements stays computed (a ConstantOfShape not blown up)."""
SMALL = 64
"""A constant computation not derived from a shape is folded only up to this many elements."""
DEFAULT = ("", "ai.onnx")
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
             onnx.TensorProto.INT8, onnx.TensorProto.UINT64, onnx.TensorProto.UINT32,
             onnx.TensorProto.UINT16, onnx.TensorProto.UINT8}


@dataclass
class FoldReport:
    """What :func:`fold_model` did.

    Attributes:
        overridden: input name -> the dims ``--input-shape`` gave (None: kept).
        folded: nodes replaced by initializers.
        reshaped: Reshape nodes given a constant target with ``0`` for "copy this dim".
        removed: nodes removed because nothing used their outputs any more.
        rounds: shape-inference rounds run.
    """

    overridden: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    folded: int = 0
    reshaped: int = 0
    removed: int = 0
    rounds: int = 0


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return str(dim.dim_value)
    return dim.dim_param or "?"


def declared_shape(value: onnx.ValueInfoProto) -> str:
    """A graph input's dims as the model declares them, e.g. ``(batch, 3, height, width)``
    (``?`` for an unnamed dynamic dim; round brackets, which the CLI's console prints as
    they are)."""
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return "(unknown rank)"
    return "(" + ", ".join(_dim_text(d) for d in ttype.shape.dim) + ")"


def override_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int | None]],
                    source: str = "model") -> dict[str, tuple[int | None, ...]]:
    """Fix the dims of the inputs named in ``shapes`` (in place), like onnxruntime's
    free-dimension overrides; a dim given as None keeps the model's. A declared static dim
    must equal the given one.

    Returns:
        input name -> the dims as given.

    Raises:
        InputError: an unknown input name, a rank or a static dim that differs from the
            model's (the message names the input and what the model declares).
    """
    inputs = {v.name: v for v in graph_inputs(model)}
    for name in shapes:
        if name not in inputs:
            known = ", ".join(f"{v.name} {declared_shape(v)}" for v in inputs.values())
            raise InputError(f"{source}: --input-shape names {name!r}, which is not an input of "
                             f"the model; its inputs: {known or 'none'}")
    done = {}
    for name, dims in shapes.items():
        value = inputs[name]
        dims = tuple(None if d is None else int(d) for d in dims)
        ttype = value.type.tensor_type
        given = ",".join("?" if d is None else str(d) for d in dims)
        if ttype.HasField("shape") and len(ttype.shape.dim) != len(dims):
            raise InputError(f"{source}: --input-shape {name}={given} has {len(dims)} dims; "
                             f"the model declares {name} {declared_shape(value)} "
                             f"({len(ttype.shape.dim)} dims)")
        if not ttype.HasField("shape") and None in dims:
            raise InputError(f"{source}: --input-shape {name}={given} keeps dims (?) the model "
                             f"does not declare: give every dim of {name}")
        for axis, (dim, want) in enumerate(zip(ttype.shape.dim, dims)):
            if (want is not None and dim.HasField("dim_value") and dim.dim_value > 0
                    and dim.dim_value != want):
                raise InputError(f"{source}: --input-shape {name}={given} sets dim {axis} to "
                                 f"{want}; the model declares {name} {declared_shape(value)} "
                                 f"with {dim.dim_value} there")
        old = [onnx.TensorShapeProto.Dimension() for _ in dims]
        for kept, dim in zip(old, ttype.shape.dim):
            kept.CopyFrom(dim)
        ttype.shape.Clear()
        ttype.shape.dim.extend(kept if d is None else onnx.TensorShapeProto.Dimension(dim_value=d)
                               for kept, d in zip(old, dims))
        done[name] = dims
    return done


@dataclass(frozen=True)
class _Dim:
    """A dim known only at run time: its symbol from shape inference (``dim_param``), or
    ``(tensor, axis)`` where it has none. Equal symbols are equal values."""

    key: str | tuple[str, int]


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer))


@dataclass
class _Partial:
    """A 0-d or 1-d integer tensor whose elements are partly known: ints, :class:`_Dim` (a
    runtime dim, by name) or None (a runtime value)."""

    values: np.ndarray          # dtype object
    dtype: np.dtype

    def __post_init__(self) -> None:
        if not isinstance(self.values, np.ndarray):          # one element picked by Gather
            cell = np.empty((), dtype=object)
            cell[()] = self.values
            self.values = cell

    def known(self) -> np.ndarray | None:
        """The value as an array when every element is known, else None."""
        if not all(_is_int(x) for x in self.values.reshape(-1)):
            return None
        return np.array(self.values.tolist(), dtype=self.dtype).reshape(self.values.shape)


class _Values:
    """What is known about each tensor while walking the graph once in order."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, list[int | _Dim]],
                 opset: int) -> None:
        self.opset = opset
        self.inits = {t.name: t for t in graph.initializer}
        self.inputs = {v.name for v in graph.input}     # an initializer listed here: not const
        self.shapes = shapes
        self.consts: dict[str, np.ndarray] = {}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}   # read on first use
        self.partial: dict[str, _Partial] = {}
        self.derived: set[str] = set()                  # values computed from a shape
        self.reshapes: dict[int, np.ndarray] = {}       # node index -> its constant shape

    def const(self, name: str) -> np.ndarray | None:
        if name in self.consts:
            return self.consts[name]
        if name in self.inits and name not in self.inputs:
            self.consts[name] = numpy_helper.to_array(self.inits[name])
        elif name in self.constant_nodes:
            node = self.constant_nodes.pop(name)
            tensor = [a.t for a in node.attribute if a.name == "value"]
            value = numpy_helper.to_array(tensor[0]) if tensor else None
            outs = [value] if value is not None else _evaluate(node, {}, self.opset)
            if outs is None:
                return None
            self.consts[name] = outs[0]
        return self.consts.get(name)

    def size(self, name: str) -> int | None:
        """The element count of a known value, without reading it; None if not known."""
        if name in self.consts:
            return self.consts[name].size
        if name in self.inits and name not in self.inputs:
            return math.prod(self.inits[name].dims)
        if name in self.constant_nodes:
            tensor = [a.t for a in self.constant_nodes[name].attribute if a.name == "value"]
            return math.prod(tensor[0].dims) if tensor else 1
        return None

    def part(self, name: str) -> _Partial | None:
        """``name`` as a partly known integer vector (a known one counts too)."""
        if name in self.partial:
            return self.partial[name]
        size = self.size(name)
        if size is None or size > SMALL:
            return None
        c = self.const(name)
        if c is not None and c.ndim <= 1 and c.dtype.kind in "iu" and c.size <= SMALL:
            return _Partial(np.array(c.tolist(), dtype=object).reshape(c.shape), c.dtype)
        return None

    def set_partial(self, name: str, p: _Partial) -> None:
        value = p.known()
        if value is not None:
            self.consts[name] = value
        else:
            self.partial[name] = p
        self.derived.add(name)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list | None:
    """Outputs of one node run by the ONNX reference evaluator (None if it cannot)."""
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:  # noqa: BLE001 - what the reference cannot run is simply not folded
        return None
    if not all(isinstance(o, np.ndarray) for o in outs) or len(outs) != len(node.output):
        return None
    return [np.asarray(o) for o in outs]


def _const_input(v: _Values, node: onnx.NodeProto, k: int) -> np.ndarray | None:
    return v.const(node.input[k]) if len(node.input) > k and node.input[k] else None


def _partial_slice(v: _Values, node: onnx.NodeProto, opset: int) -> _Partial | None:
    data = v.part(node.input[0])
    if data is None or data.values.ndim != 1:
        return None
    if opset < 10:
        a = _attrs(node)
        starts, ends, axes, steps = a.get("starts"), a.get("ends"), a.get("axes"), None
    else:
        starts, ends, axes, steps = (_const_input(v, node, k) for k in (1, 2, 3, 4))
        given = [len(node.input) > k and bool(node.input[k]) for k in (1, 2, 3, 4)]
        if any(g and x is None for g, x in zip(given, (starts, ends, axes, steps))):
            return None                                   # an input known only at run time
    if starts is None or len(list(np.reshape(starts, -1))) != 1:
        return None
    if axes is not None and int(np.reshape(axes, -1)[0]) not in (0, -1):
        return None
    step = 1 if steps is None else int(np.reshape(steps, -1)[0])
    start, end = int(np.reshape(starts, -1)[0]), int(np.reshape(ends, -1)[0])
    if step == 0:
        return None
    return _Partial(data.values[start:end:step], data.dtype)


def _partial_binary(v: _Values, node: onnx.NodeProto) -> _Partial | None:
    a, b = v.part(node.input[0]), v.part(node.input[1])
    if a is None or b is None or a.dtype != b.dtype:
        return None
    op = {"Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y}
    try:
        pairs = np.broadcast_arrays(a.values, b.values)
    except ValueError:
        return None
    out = [op[node.op_type](x, y) if _is_int(x) and _is_int(y) else None
           for x, y in zip(pairs[0].reshape(-1), pairs[1].reshape(-1))]
    return _Partial(np.array(out, dtype=object).reshape(pairs[0].shape), a.dtype)


def _partial_output(v: _Values, node: onnx.NodeProto, opset: int) -> _Partial | None:
    """The partly known value of a shape-vector op's (only) output, or None."""
    op, a = node.op_type, _attrs(node)
    if op == "Shape":
        dims = v.shapes.get(node.input[0])
        if dims is None:
            return None
        picked = dims[a.get("start", 0):a.get("end")]     # ONNX clamps as Python slices
        return _Partial(np.array(picked, dtype=object), np.dtype(np.int64))
    if op in ("Identity", "Cast"):
        p = v.part(node.input[0])
        if p is None or (op == "Cast" and a.get("to") not in INT_TYPES):
            return None
        dtype = p.dtype if op == "Identity" else helper.tensor_dtype_to_np_dtype(a["to"])
        return _Partial(p.values, np.dtype(dtype))
    if op == "Gather":
        data, idx = v.part(node.input[0]), _const_input(v, node, 1)
        if data is None or idx is None or data.values.ndim != 1 or a.get("axis", 0) not in (0, -1):
            return None
        if np.any(idx >= len(data.values)) or np.any(idx < -len(data.values)):
            return None
        return _Partial(data.values[idx.astype(np.int64)], data.dtype)
    if op == "Slice":
        return _partial_slice(v, node, opset)
    if op == "Concat":
        parts = [v.part(i) for i in node.input]
        if any(p is None or p.values.ndim != 1 for p in parts) or a.get("axis") not in (0, -1):
            return None
        return _Partial(np.concatenate([p.values for p in parts]), parts[0].dtype)
    if op in ("Unsqueeze", "Squeeze"):
        p = v.part(node.input[0])
        axes = a.get("axes") if opset < 13 else _const_input(v, node, 1)
        if p is None or (axes is not None and [int(x) for x in np.reshape(axes, -1)] not in
                         ([0], [-1])):
            return None
        if op == "Unsqueeze" and p.values.ndim == 0:
            return _Partial(p.values.reshape(1), p.dtype)
        if op == "Squeeze" and p.values.shape == (1,):
            return _Partial(p.values.reshape(()), p.dtype)
        return None
    if op in ("Add", "Sub", "Mul"):
        return _partial_binary(v, node)
    return None


def _output_size(v: _Values, node: onnx.NodeProto) -> float | None:
    """The element count of ops whose output size is not bounded by their inputs' (read from
    their constant inputs), None for other ops."""
    ins = [v.const(i) for i in node.input]
    if node.op_type in ("ConstantOfShape", "Expand"):
        return math.prod(max(int(d), 1) for d in ins[-1].reshape(-1))
    if node.op_type == "Tile":
        return ins[0].size * math.prod(int(r) for r in ins[1].reshape(-1))
    if node.op_type == "Range":
        start, limit, delta = (float(x.reshape(-1)[0]) for x in ins[:3])
        return max(math.ceil((limit - start) / delta), 0) if delta else math.inf
    return None


def _fold_constant_node(v: _Values, node: onnx.NodeProto, opset: int) -> bool:
    """Evaluate a node whose inputs are all known, if a shape derives it (output up to
    ``MAX_FOLD_ELEMENTS``) or everything is small (``SMALL``); True if it was."""
    if node.op_type == "Constant":
        v.constant_nodes[node.output[0]] = node
        return True
    ins = [i for i in node.input if i]
    sizes = [v.size(i) for i in ins]
    if (node.op_type in NONDETERMINISTIC or not ins or None in sizes
            or any(at.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for at in node.attribute)):
        return False
    derived = any(i in v.derived for i in ins)
    limit = MAX_FOLD_ELEMENTS if derived else SMALL
    if (not derived and max(sizes) > SMALL) or any(v.const(i) is None for i in ins):
        return False
    try:
        size = _output_size(v, node)
    except (ValueError, IndexError, TypeError, OverflowError):
        return False
    if size is not None and size > limit:
        return False
    outs = _evaluate(node, {i: v.const(i) for i in ins}, opset)
    if outs is None or any(o.size > limit for o in outs):
        return False
    for name, value in zip(node.output, outs):
        if name:
            v.consts[name] = value
            if derived:
                v.derived.add(name)
    return True


def _propagate(graph: onnx.GraphProto, shapes: dict[str, list[int | _Dim]],
               opset: int) -> _Values:
    """Walk the top-level graph in order and record every known and partly known value."""
    v = _Values(graph, shapes, opset)
    for index, node in enumerate(graph.node):
        if node.domain not in DEFAULT:
            continue
        if _fold_constant_node(v, node, opset):
            continue
        if node.op_type == "Reshape" and (target := _reshape_target(v, node)) is not None:
            v.reshapes[index] = target
        if len(node.output) == 1 and node.output[0]:
            try:
                p = _partial_output(v, node, opset)
            except (TypeError, ValueError, IndexError, KeyError):
                p = None
            if p is not None:
                v.set_partial(node.output[0], p)
    return v


def _reshape_target(v: _Values, node: onnx.NodeProto) -> np.ndarray | None:
    """The constant shape a ``Reshape`` whose target is read from its own input's dims can
    use instead: each runtime element that is the data's dim at the same position becomes
    ``0`` ("copy that dim", ONNX's rule without ``allowzero``), e.g. a flatten's
    ``Concat(Shape(x)[0:1], [-1])`` -> ``[0, -1]``. None when some element is another runtime
    value."""
    shape = v.part(node.input[1]) if len(node.input) > 1 else None
    dims = v.shapes.get(node.input[0])
    if (shape is None or dims is None or shape.values.ndim != 1 or shape.known() is not None
            or _attrs(node).get("allowzero", 0)):
        return None
    out = []
    for i, e in enumerate(shape.values):
        if _is_int(e):
            out.append(int(e))
        elif isinstance(e, _Dim) and i < len(dims) and dims[i] == e:
            out.append(0)
        else:
            return None
    return np.array(out, dtype=np.int64)


def _static_reshapes(model: onnx.ModelProto, v: _Values) -> int:
    """Give each Reshape of ``v.reshapes`` its constant target as a new initializer (the old
    target tensor is left to whoever else reads it); returns how many."""
    graph = model.graph
    taken = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
             | {o for n in graph.node for o in n.output})
    for index, target in v.reshapes.items():
        node = graph.node[index]
        name = next(n for k in range(len(taken) + 1)
                    if (n := f"{node.input[1]}_static" + (f"_{k}" if k else "")) not in taken)
        taken.add(name)
        graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
    return len(v.reshapes)


def _inference_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for shape inference: initializers of more than ``SMALL`` elements become
    typed graph inputs (their values matter to no shape; a model's weights would otherwise
    be serialized on every round)."""
    view = onnx.ModelProto(ir_version=model.ir_version)
    view.opset_import.extend(model.opset_import)
    view.functions.extend(model.functions)
    g, graph = view.graph, model.graph
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    listed = {v.name for v in graph.input}
    for t in graph.initializer:
        if math.prod(t.dims) <= SMALL:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return view


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | _Dim]]:
    """Every typed tensor's dims after shape inference (a :class:`_Dim` where not a static
    dim > 0)."""
    try:
        graph = onnx.shape_inference.infer_shapes(_inference_view(model), check_type=False,
                                                  strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001 - without shapes only constants fold; check reports it
        graph = model.graph
    out = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        ttype = value.type.tensor_type
        if value.type.HasField("tensor_type") and ttype.HasField("shape"):
            out[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                               else _Dim(d.dim_param or (value.name, k))
                               for k, d in enumerate(ttype.shape.dim)]
    return out


def _replace_known(model: onnx.ModelProto, v: _Values) -> int:
    """Replace nodes whose outputs are all known by initializers; returns how many."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    keep, folded, new_inits = [], 0, []
    for node in graph.node:
        names = [o for o in node.output if o]
        if (node.op_type == "Constant" or not names or node.domain not in DEFAULT
                or any(o in outputs or o not in v.consts for o in names)):
            keep.append(node)
            continue
        folded += 1
        new_inits.extend(numpy_helper.from_array(v.consts[o], o) for o in names)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)
        done = {t.name for t in new_inits}
        kept = [vi for vi in graph.value_info if vi.name not in done]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return folded


def _remove_unused(model: onnx.ModelProto) -> int:
    """Remove nodes (and initializers that are not graph inputs) nothing uses; returns the
    number of nodes removed."""
    graph = model.graph
    used = {o.name for o in graph.output}
    used |= {i for n in graph.node for a in n.attribute for s in [*a.graphs, a.g]
             for sn in iter_nodes(s) for i in sn.input}
    keep = []
    for node in reversed(graph.node):
        if any(o in used for o in node.output if o):
            keep.append(node)
            used.update(node.input)
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    inputs = {i.name for i in graph.input}
    for k in reversed(range(len(graph.initializer))):      # in place: no weight is copied
        if graph.initializer[k].name not in used and graph.initializer[k].name not in inputs:
            del graph.initializer[k]
    produced = {o for n in graph.node for o in n.output}
    infos = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return removed


def _write_output_dims(model: onnx.ModelProto) -> None:
    """Graph outputs' dims that shape inference proves static are written into the model."""
    dims = _static_dims(model)
    for out in model.graph.output:
        ttype, inferred = out.type.tensor_type, dims.get(out.name)
        if not out.type.HasField("tensor_type") or inferred is None:
            continue
        if not ttype.HasField("shape"):
            ttype.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in inferred)
        if len(ttype.shape.dim) != len(inferred):
            continue
        for dim, value in zip(ttype.shape.dim, inferred):
            if _is_int(value) and not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.Clear()
                dim.dim_value = value


def _unset_negative_dims(model: onnx.ModelProto) -> None:
    """A dim stored as a negative value (some exporters' way to say dynamic) becomes an
    unnamed dynamic dim, as ONNX spells it."""
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()


def fold_model(model: onnx.ModelProto,
               input_shapes: Mapping[str, Sequence[int | None]] | None = None,
               source: str = "model") -> tuple[onnx.ModelProto, FoldReport]:
    """Fix the overridden input dims and fold shape subgraphs (see the module docstring).

    Args:
        model: a valid ONNX model (not modified).
        input_shapes: input name -> dims (``--input-shape``).
        source: the model's path, as errors name it.

    Returns:
        (the new model, what was done).

    Raises:
        InputError: a bad ``input_shapes`` entry (see :func:`override_inputs`).
    """
    new = onnx.ModelProto()
    new.CopyFrom(model)
    report = FoldReport()
    _unset_negative_dims(new)
    report.overridden = override_inputs(new, input_shapes or {}, source)
    opset = next((o.version for o in new.opset_import if o.domain in DEFAULT), 1)
    for _ in range(MAX_ROUNDS):
        report.rounds += 1
        values = _propagate(new.graph, _static_dims(new), opset)
        reshaped = _static_reshapes(new, values)          # before: it reads node indices
        folded = _replace_known(new, values)
        report.folded += folded
        report.reshaped += reshaped
        report.removed += _remove_unused(new)
        if not folded and not reshaped:
            break
    if report.folded or report.reshaped or report.overridden:
        new.ir_version = max(new.ir_version, 4)          # initializers need not be inputs
        _write_output_dims(new)
    return new, report
