"""Pattern fusion ahead of quantization: decomposed GELU / LayerNorm / Softmax -> the fused ops.

The quantizer understands only the fused ``Gelu``, ``LayerNormalization`` and last-axis
``Softmax``; exporters often emit them decomposed. :func:`fuse_patterns` runs, in order:

1. ``Constant`` nodes -> initializers of the same name (not those that are graph outputs).
2. Constant folding to a fixed point: a deterministic default-domain node whose inputs are all
   initializers is evaluated with ``onnx.reference`` and replaced by initializers (not when an
   output is a graph output, nor when a result has more than ``MAX_FOLD_ELEMENTS`` elements and
   more than its inputs together: a weight may be transposed, a ConstantOfShape not blown up).
3. GELU: from each ``Erf``/``Tanh`` walk up to candidate inputs ``x``, grow the elementwise region
   fed by ``x`` (Add/Sub/Mul/Div/Pow/Erf/Tanh with scalar-constant other operands), evaluate it on a
   grid and compare with exact and tanh GELU; a match with a single outside-used result ``y``
   becomes ``Gelu(x) -> y`` (the default opset is raised to 20, see :func:`_raise_opset`).
4. ``LayerNormalization`` from ReduceMean/Sub/Pow|Mul/ReduceMean/Add/Sqrt/Div|Reciprocal+Mul
   [/Mul gamma][/Add beta] over the last axis.
5. ``Softmax(axis=-1)`` from ``Exp([Sub(x, ReduceMax(x))]) / ReduceSum(.)`` over the last axis.

Only the top-level graph is rewritten (subgraphs' uses of outer tensors are respected). GELU
and LayerNorm are fused only when the default opset is >= 13 (raising it from below is unsafe).

Naming rule: calibration ranges are keyed by the tensor names of the original graph, so every
surviving tensor keeps its name and a fused node writes the name of the last tensor it replaces.
The only new names are node names and constant initializers (a LayerNorm scale/bias of ones/zeros
or broadcast to ``[C]``, and Reduce ``axes`` moved to an input when the opset is raised past 17).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgert.onnx_graph import iter_nodes

MAX_FOLD_ELEMENTS = 1 << 20
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
DEFAULT = ("", "ai.onnx")
GELU_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh"}
GELU_GRID = np.linspace(-8, 8, 401, dtype=np.float32).astype(np.float64)
GELU_ATOL = 1e-5
GELU_REGION_MAX = 32
REDUCE_AXES_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"}
COUNT_KEYS = ("constant_to_initializer", "constant_folded", "static_shape", "Gelu(erf)",
              "Gelu(tanh)", "LayerNormalization", "Softmax")
_EVAL = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
         "Pow": np.power, "Erf": np.vectorize(math.erf, otypes=[np.float64]), "Tanh": np.tanh}
_GELU_REF = {"none": 0.5 * GELU_GRID * (1 + _EVAL["Erf"](GELU_GRID / math.sqrt(2))),
             "tanh": 0.5 * GELU_GRID * (1 + np.tanh(math.sqrt(2 / math.pi)
                                                    * (GELU_GRID + 0.044715 * GELU_GRID ** 3)))}


class _Graph:
    """A mutable view of a (copied) top-level graph: node list, initializers, use indices."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT), 1)
        self.nodes = [_clone(n) for n in g.node]
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.inputs = {i.name for i in g.input}                # initializers listed here: not const
        self.outputs = {o.name for o in g.output}
        self.sub_uses = {i for n in g.node for a in n.attribute for s in [*a.graphs, a.g]
                         for sn in iter_nodes(s) for i in sn.input}
        self.node_names = {n.name for n in g.node}
        self.names = self.inputs | set(self.inits) | {o for n in g.node for o in n.output}
        self._arrays: dict[str, np.ndarray] = {}
        self._index: tuple[dict, dict] | None = None

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer that is not a graph input, else None."""
        if name not in self.inits or name in self.inputs:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.inits[name])
        return self._arrays[name]

    def scalar(self, name: str) -> float | None:
        """The value of a constant with one element and rank <= 1, else None."""
        a = self.const(name)
        return float(a.reshape(-1)[0]) if a is not None and a.size == 1 and a.ndim <= 1 else None

    def set_const(self, name: str, value: np.ndarray | onnx.TensorProto) -> None:
        """Add (or replace) the initializer ``name``."""
        t = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(
            np.asarray(value), name)
        t.name = name
        self.inits[name], self.names = t, self.names | {name}
        self._arrays.pop(name, None)

    def fresh(self, base: str, taken: set[str]) -> str:
        """A name starting with ``base`` not in ``taken`` (which it is added to)."""
        name = next(n for k in itertools.count()
                    if (n := f"{base}_{k}" if k else base) not in taken)
        taken.add(name)
        return name

    def index(self) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
        """(producer of each tensor, consumers of each tensor), rebuilt after a change."""
        if self._index is None:
            prod, cons = {}, {}
            for n in self.nodes:
                for o in n.output:
                    prod[o] = n
                for i in dict.fromkeys(n.input):
                    cons.setdefault(i, []).append(n)
            self._index = prod, cons
        return self._index

    def only_used_by(self, tensors: Iterable[str], nodes: list[onnx.NodeProto]) -> bool:
        """True when none of ``tensors`` is a graph output or used outside ``nodes``."""
        ids, cons = {id(n) for n in nodes}, self.index()[1]
        return all(t not in self.outputs and t not in self.sub_uses
                   and all(id(c) in ids for c in cons.get(t, [])) for t in tensors)

    def single_user(self, tensor: str, op: str) -> onnx.NodeProto | None:
        """The only consumer of ``tensor`` if it is an ``op`` node and ``tensor`` is internal."""
        users = self.index()[1].get(tensor, [])
        ok = len(users) == 1 and users[0].op_type == op and users[0].domain in DEFAULT
        return users[0] if ok and self.only_used_by([tensor], users) else None

    def replace(self, old: list[onnx.NodeProto], op: str, inputs: list[str], output: str,
                **attrs: object) -> None:
        """Put one ``op`` node writing ``output`` where the last of ``old`` was; drop ``old``."""
        ids = {id(n) for n in old}
        at = max(i for i, n in enumerate(self.nodes) if id(n) in ids)
        name = self.fresh(f"{op}_{output}", self.node_names)
        self.nodes[at] = helper.make_node(op, inputs, [output], name=name, **attrs)
        self.nodes = [n for n in self.nodes if id(n) not in ids]
        self._index = None


def _clone(msg: onnx.NodeProto | onnx.TensorProto) -> onnx.NodeProto | onnx.TensorProto:
    """A detached copy of a protobuf message."""
    new = type(msg)()
    new.CopyFrom(msg)
    return new


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list | None:
    """Outputs of one node run by the ONNX reference evaluator (None if it fails)."""
    try:
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:  # noqa: BLE001 - anything the reference cannot run is simply not folded
        return None
    return outs if all(isinstance(o, np.ndarray) for o in outs) else None


def _constants_to_initializers(g: _Graph) -> int:
    """Step 1: Constant nodes (any value_* attribute) -> initializers; returns how many."""
    keep = []
    for n in g.nodes:
        if n.op_type == "Constant" and n.domain in DEFAULT and n.output[0] not in g.outputs:
            tensor = [_clone(a.t) for a in n.attribute if a.name == "value"]
            val = tensor or _evaluate(n, {}, g.opset)
            if val:
                g.set_const(n.output[0], val[0])
                continue
        keep.append(n)
    count, g.nodes, g._index = len(g.nodes) - len(keep), keep, None
    return count


def _try_fold(g: _Graph, n: onnx.NodeProto) -> list[np.ndarray] | None:
    """Values of ``n``'s outputs if it can be folded (see the module docstring), else None."""
    ins = [i for i in n.input if i]
    if (n.domain not in DEFAULT or n.op_type in NONDETERMINISTIC or not ins
            or any(g.const(i) is None for i in ins) or any(o in g.outputs for o in n.output)
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in n.attribute)):
        return None
    limit = max(MAX_FOLD_ELEMENTS, sum(g.const(i).size for i in ins))
    if n.op_type in ("ConstantOfShape", "Expand"):       # shape is the last input: check first
        if math.prod(max(int(d), 1) for d in g.const(n.input[-1]).reshape(-1)) > limit:
            return None
    outs = _evaluate(n, {i: g.const(i) for i in ins}, g.opset)
    ok = outs is not None and len(outs) == len(n.output) and all(o.size <= limit for o in outs)
    return outs if ok else None


def _fold_static_shapes(g: _Graph, shapes: dict[str, list[int | None]]) -> int:
    """``Shape(x)`` and ``Gather(Shape(x), const)`` become constants where the dims they read are
    static (e.g. the last dim in ``chunk``'s slice arithmetic); returns how many were folded."""
    prod, count, keep = g.index()[0], 0, []
    for n in g.nodes:
        value = None
        if n.op_type == "Shape" and n.domain in DEFAULT and n.output[0] not in g.outputs:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            dims = shapes.get(n.input[0])
            if dims is not None:
                dims = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
                value = dims if None not in dims else None
        elif (n.op_type == "Gather" and n.domain in DEFAULT and g.const(n.input[1]) is not None
              and (src := prod.get(n.input[0])) is not None and src.op_type == "Shape"
              and not src.attribute and n.output[0] not in g.outputs):
            dims = shapes.get(src.input[0]) or []
            idx = g.const(n.input[1])
            picked = [dims[int(i)] if -len(dims) <= int(i) < len(dims) else None
                      for i in idx.reshape(-1)]
            value = np.array(picked).reshape(idx.shape) if None not in picked else None
        if value is None:
            keep.append(n)
            continue
        g.set_const(n.output[0], np.array(value, np.int64))
        count += 1
    g.nodes, g._index = keep, None
    return count


def _fold_constants(g: _Graph) -> int:
    """Step 2: fold constant subgraphs into initializers until nothing changes."""
    count, changed = 0, True
    while changed:
        keep = []
        for n in g.nodes:
            vals = _try_fold(g, n)
            if vals is None:
                keep.append(n)
                continue
            for name, v in zip(n.output, vals):
                if name:
                    g.set_const(name, v)
        changed, count, g.nodes = len(keep) < len(g.nodes), count + len(g.nodes) - len(keep), keep
    g._index = None
    return count


def _elementwise(g: _Graph, n: onnx.NodeProto) -> bool:
    """An Add/Sub/Mul/Div/Pow/Erf/Tanh node whose constant inputs are all scalars."""
    return (n.op_type in GELU_OPS and n.domain in DEFAULT and len(n.output) == 1
            and all(g.const(i) is None or g.scalar(i) is not None for i in n.input))


def _gelu_inputs(g: _Graph, trigger: onnx.NodeProto, limit: int = 12) -> list[str]:
    """Candidate GELU inputs: ancestors of ``trigger`` through elementwise nodes, nearest first."""
    prod, seen, queue = g.index()[0], [], [trigger.input[0]]
    while queue and len(seen) < limit:
        t = queue.pop(0)
        if t in seen or g.const(t) is not None:
            continue
        seen.append(t)
        if t in prod and _elementwise(g, prod[t]):
            queue.extend(prod[t].input)
    return seen


def _grow_region(g: _Graph, x: str) -> list[onnx.NodeProto]:
    """Elementwise nodes computable from ``x`` and scalar constants alone (topological order)."""
    cons, avail, region, queue, ids = g.index()[1], {x}, [], [x], set()
    while queue and len(region) < GELU_REGION_MAX:
        for n in cons.get(queue.pop(0), []):
            if (id(n) not in ids and _elementwise(g, n)
                    and all(i in avail or g.scalar(i) is not None for i in n.input)):
                region.append(n)
                ids.add(id(n))
                avail.add(n.output[0])
                queue.append(n.output[0])
    return region


def _match_gelu(g: _Graph, trigger: onnx.NodeProto, shapes: dict) -> tuple | None:
    """The rewrite (see :func:`_fuse`) of a GELU region containing ``trigger``, else None."""
    for x in _gelu_inputs(g, trigger):
        region, vals = _grow_region(g, x), {x: GELU_GRID}
        with np.errstate(all="ignore"):
            for n in region:
                args = [vals[i] if i in vals else g.scalar(i) for i in n.input]
                vals[n.output[0]] = np.broadcast_to(_EVAL[n.op_type](*args), GELU_GRID.shape)
        for node in region:
            y = node.output[0]
            for approx, ref in _GELU_REF.items():
                if not np.abs(vals[y] - ref).max() <= GELU_ATOL:
                    continue
                need, sub = {y}, []
                for n in reversed(region):
                    if n.output[0] in need:
                        sub.insert(0, n)
                        need.update(n.input)
                if g.only_used_by([n.output[0] for n in sub if n is not node], sub):
                    key = "Gelu(erf)" if approx == "none" else "Gelu(tanh)"
                    return key, sub, "Gelu", [x], y, {"approximate": approx}
    return None


def _last_axis(g: _Graph, n: onnx.NodeProto, rank: int | None) -> bool:
    """True when the Reduce node ``n`` reduces only the last axis with keepdims=1."""
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    axes = attrs.get("axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        axes = g.const(n.input[1])
    if attrs.get("keepdims", 1) != 1 or axes is None or len(list(np.reshape(axes, -1))) != 1:
        return False
    axis = int(np.reshape(axes, -1)[0])
    return axis == -1 or (rank is not None and axis == rank - 1)


def _ln_param(g: _Graph, name: str | None, size: int | None, fill: float, dtype: np.dtype,
              base: str) -> str | None:
    """A 1-D [C] initializer for a LayerNorm scale/bias (``name`` reused when already [C])."""
    arr = np.full(1, fill, dtype) if name is None else g.const(name)
    size = size if arr.shape[-1:] in ((1,), ()) else arr.shape[-1]
    if (size is None or any(d != 1 for d in arr.shape[:-1])
            or arr.shape[-1:] not in ((1,), (size,), ())):
        return None
    if name is not None and arr.shape == (size,):
        return name
    new = g.fresh(base, g.names)
    g.set_const(new, np.broadcast_to(arr.reshape(-1), (size,)).astype(arr.dtype))
    return new


def _other(node: onnx.NodeProto, tensor: str) -> str | None:
    """The other input of a two-input node one of whose inputs is ``tensor`` (else None)."""
    rest = list(node.input)
    if len(rest) != 2 or tensor not in rest:
        return None
    rest.remove(tensor)
    return rest[0] if rest[0] != tensor else None


def _match_layernorm(g: _Graph, r1: onnx.NodeProto, shapes: dict) -> tuple | None:
    """The rewrite (see :func:`_fuse`) of a decomposed LayerNorm starting at ReduceMean ``r1``."""
    x, rank = r1.input[0], len(shapes[r1.input[0]]) if r1.input[0] in shapes else None
    sub = g.single_user(r1.output[0], "Sub")
    if not _last_axis(g, r1, rank) or sub is None or list(sub.input) != [x, r1.output[0]]:
        return None
    d, users = sub.output[0], g.index()[1].get(sub.output[0], [])
    sq = [u for u in users if (u.op_type == "Pow" and u.input[0] == d and g.scalar(u.input[1]) == 2)
          or (u.op_type == "Mul" and list(u.input) == [d, d])]
    r2 = g.single_user(sq[0].output[0], "ReduceMean") if len(sq) == 1 else None
    add = g.single_user(r2.output[0], "Add") if r2 is not None and _last_axis(g, r2, rank) else None
    eps = g.scalar(_other(add, r2.output[0]) or "") if add is not None else None
    sqrt = g.single_user(add.output[0], "Sqrt") if eps is not None else None
    if sqrt is None:
        return None
    nodes = [r1, sub, sq[0], r2, add, sqrt]
    div = g.single_user(sqrt.output[0], "Div")
    rec = g.single_user(sqrt.output[0], "Reciprocal")
    last = div if div is not None and list(div.input) == [d, sqrt.output[0]] else None
    mul = g.single_user(rec.output[0], "Mul") if rec is not None else None
    if mul is not None and _other(mul, rec.output[0]) == d:
        nodes, last = nodes + [rec], mul
    if last is None or not g.only_used_by([d], nodes + [last]):
        return None
    nodes.append(last)
    params = {"Mul": None, "Add": None}
    for op in params:
        nxt = g.single_user(last.output[0], op)
        other = _other(nxt, last.output[0]) if nxt is not None else None
        if other is not None and g.const(other) is not None:
            params[op], last = other, nxt
            nodes.append(nxt)
    size = (shapes.get(x) or [None])[-1]
    dtype = g.const(_other(add, r2.output[0])).dtype
    y = last.output[0]
    scale = _ln_param(g, params["Mul"], size, 1.0, dtype, f"{y}_scale")
    bias = _ln_param(g, params["Add"], size, 0.0, dtype, f"{y}_bias") if params["Add"] else None
    if scale is None or (params["Add"] and bias is None):
        return None
    inputs, op = [x, scale] + ([bias] if bias else []), "LayerNormalization"
    return op, nodes, op, inputs, y, {"axis": -1, "epsilon": eps}


def layernorm_sites(model: onnx.ModelProto, shapes: dict[str, list[int | None]]
                    ) -> list[tuple[list[str], onnx.NodeProto, dict[str, np.ndarray]]]:
    """The decomposed LayerNorms of step 4 in ``model`` (constants already initializers),
    whatever its opset: for each, the first output names of the nodes it spans (its
    ``ReduceMean`` first), the ``LayerNormalization`` node that computes the same (axis -1,
    writing the last tensor's name) and the new ``[C]`` scale/bias initializers it reads.
    The quantizer uses it where the opset keeps step 4 from fusing (below 13: PaddlePaddle's
    exports). ``model`` is not modified."""
    g, sites, taken = _Graph(model), [], set()
    old = {t.name for t in model.graph.initializer}
    for n in list(g.nodes):
        if n.op_type != "ReduceMean" or n.domain not in DEFAULT or n.output[0] in taken:
            continue
        m = _match_layernorm(g, n, shapes)
        if m is None or any(k.output[0] in taken for k in m[1]):
            continue
        _, nodes, op, inputs, y, attrs = m
        taken.update(k.output[0] for k in nodes)
        new = {i: g.const(i) for i in inputs[1:] if i not in old}
        sites.append(([k.output[0] for k in nodes],
                      helper.make_node(op, inputs, [y], name=f"{op}_{y}", **attrs), new))
    return sites


def _match_softmax(g: _Graph, div: onnx.NodeProto, shapes: dict) -> tuple | None:
    """The rewrite (see :func:`_fuse`) of ``Exp([Sub(x, ReduceMax(x))]) / ReduceSum(.)`` ending
    at Div ``div``, else None."""
    prod = g.index()[0]
    e, s = div.input
    ex, rs = prod.get(e), prod.get(s)
    if (ex is None or rs is None or ex.op_type != "Exp" or rs.op_type != "ReduceSum"
            or rs.input[0] != e or not g.only_used_by([e, s], [rs, div])):
        return None
    x, nodes = ex.input[0], [ex, rs, div]
    if not _last_axis(g, rs, len(shapes[x]) if x in shapes else None):
        return None
    sb = prod.get(x)
    mx = prod.get(sb.input[1]) if sb is not None and sb.op_type == "Sub" else None
    if (mx is not None and mx.op_type == "ReduceMax" and mx.input[0] == sb.input[0]
            and _last_axis(g, mx, len(shapes[x]) if x in shapes else None)
            and g.only_used_by([x, mx.output[0]], [sb, ex])):
        x, nodes = sb.input[0], [mx, sb, *nodes]
    return "Softmax", nodes, "Softmax", [x], div.output[0], {"axis": -1}


def _fuse(g: _Graph, op: str, counts: dict[str, int], shapes: dict) -> None:
    """Steps 3-5 for one kind of pattern, repeated until no trigger node matches. A matcher
    returns (count key, nodes to remove, fused op, its inputs, its output y, its attributes)."""
    triggers = {"Gelu": ("Erf", "Tanh"), "LayerNormalization": ("ReduceMean",),
                "Softmax": ("Div",)}[op]
    matcher = {"Gelu": _match_gelu, "LayerNormalization": _match_layernorm,
               "Softmax": _match_softmax}[op]
    while m := next((m for n in g.nodes if n.op_type in triggers and n.domain in DEFAULT
                     for m in [matcher(g, n, shapes)] if m), None):
        key, nodes, fused_op, inputs, y, attrs = m
        g.replace(nodes, fused_op, inputs, y, **attrs)
        counts[key] += 1


def _raise_opset(g: _Graph, need: int) -> None:
    """Raise the default opset to ``need``: Reduce ``axes`` attributes become inputs (opset 18)
    and GridSample modes are renamed (opset 20); other ops keep their meaning from 13 on."""
    for n in g.nodes if g.opset < 18 <= need else []:
        axes = [a for a in n.attribute if a.name == "axes"]
        if n.op_type in REDUCE_AXES_18 and n.domain in DEFAULT and axes:
            name = g.fresh(f"{n.output[0]}_axes", g.names)
            g.set_const(name, np.array(axes[0].ints, np.int64))
            n.input[:] = [n.input[0], name]
            n.attribute.remove(axes[0])
    for n in g.nodes if g.opset < 20 <= need else []:
        for a in n.attribute:
            if n.op_type == "GridSample" and a.name == "mode":
                a.s = {b"bilinear": b"linear", b"bicubic": b"cubic"}.get(a.s, a.s)
    g.opset = max(g.opset, need)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static dims (None where unknown) of every tensor shape inference can type."""
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # noqa: BLE001 - without shapes only the axis=-1 / [C]-param forms match
        graph = model.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.tensor_type.HasField("shape")}


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Stable topological order (subgraph uses of outer tensors count as inputs)."""
    prod = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [{prod[i] for i in [*n.input, *(sn_i for a in n.attribute for s in [*a.graphs, a.g]
                                          for sn in iter_nodes(s) for sn_i in sn.input)]
             if i in prod and prod[i] != k} for k, n in enumerate(nodes)]
    users, missing = [[] for _ in nodes], [len(d) for d in deps]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    heap, order = [k for k, m in enumerate(missing) if not m], []
    while heap:
        order.append(k := heapq.heappop(heap))
        for u in users[k]:
            missing[u] -= 1
            if not missing[u]:
                heapq.heappush(heap, u)
    if len(order) < len(nodes):
        raise ValueError("fuse_patterns: the graph has a cycle")
    return [nodes[k] for k in order]


def _write(model: onnx.ModelProto, g: _Graph) -> None:
    """Store ``g`` back into ``model`` (a copy): nodes, used initializers, opset, value_info."""
    graph, nodes = model.graph, _toposort(g.nodes)
    used = {i for n in nodes for i in n.input} | g.outputs | g.sub_uses
    produced = {o for n in nodes for o in n.output}
    old = {t.name for t in graph.initializer}
    for k in reversed(range(len(graph.initializer))):
        if graph.initializer[k].name not in used:
            del graph.initializer[k]
    graph.initializer.extend(t for name, t in g.inits.items() if name not in old and name in used)
    for field, keep in ((graph.input, lambda v: v.name not in old or v.name in used),
                        (graph.value_info, lambda v: v.name in produced)):
        kept = [v for v in field if keep(v)]
        del field[:]
        field.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    for o in model.opset_import:
        if o.domain in DEFAULT:
            o.version = g.opset
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(
        [helper.make_opsetid("", g.opset)]))


def fuse_patterns(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Fold constants and fuse decomposed GELU / LayerNorm / Softmax (see the module docstring).

    Args:
        model: an fp32 ONNX model; not modified.

    Returns:
        (the new model, checked with ``onnx.checker``; the count of each rewrite, keys
        ``COUNT_KEYS``, e.g. ``{"constant_folded": 12, "Gelu(erf)": 3, ...}``).
    """
    new = onnx.ModelProto()
    new.CopyFrom(model)
    g = _Graph(new)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["constant_to_initializer"] = _constants_to_initializers(g)
    counts["constant_folded"] = _fold_constants(g)
    _write(new, g)
    shapes, g = _shapes(new), _Graph(new)
    counts["static_shape"] = _fold_static_shapes(g, shapes)
    if counts["static_shape"]:
        counts["constant_folded"] += _fold_constants(g)
        _write(new, g)
        shapes, g = _shapes(new), _Graph(new)
    for op, need in (("Gelu", 20), ("LayerNormalization", 17), ("Softmax", 1)):
        if g.opset >= min(need, 13):                 # raising the opset from below 13 is unsafe
            _fuse(g, op, counts, shapes)
    gelus = counts["Gelu(erf)"] + counts["Gelu(tanh)"]
    _raise_opset(g, 20 if gelus else 17 if counts["LayerNormalization"] else g.opset)
    _write(new, g)
    onnx.checker.check_model(new)
    return new, counts
