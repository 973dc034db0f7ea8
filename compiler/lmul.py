"""``--lmul``: replace float32 matmuls of an ONNX graph by ``edgert.LMulMatMul`` (L-Mul
products, :mod:`edgert.ops.lmul_matmul`; ``docs/methods/lmul.md``).

Modes:

- ``attention``: every ``MatMul`` whose two inputs are both computed at run time (neither a
  constant nor computed from constants only). In a transformer these are the attention
  matmuls, ``Q·Kᵀ`` and ``scores·V``; the projections and the MLP multiply by weights.
- ``all``: every ``MatMul``, and every ``Gemm`` that is a matrix product: ``transA = 0``,
  ``alpha = 1`` and ``beta = 1`` (or no C). Its ``transB`` is applied to B first (a constant
  B is transposed here, once; a computed one by a ``Transpose`` node) and its C is added by
  an ``Add`` after the product (ONNX broadcasting, as ``Gemm`` does).

Not replaced (listed with the reason in the manifest's ``lmul`` section): an operand of rank
1 or of unknown rank, a non-float32 operand, a ``Gemm`` with other attributes. Subgraphs
(If / Loop bodies) are not searched. Convolutions stay convolutions.

The graph gets the ``edgert`` opset import; the nodes keep their names (prefixed ``lmul_``
for the added Transpose / Add).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.errors import InputError
from edgert.onnx_graph import iter_nodes, node_attr
from edgert.ops import DOMAIN, OPSET_VERSION
from edgert.ops.lmul_matmul.spec import DEFAULT_MANTISSA_BITS, MANTISSA_BITS, OP_TYPE

MODES = ("attention", "all")
"""``--lmul`` values."""


def check_mode(mode: str, mantissa_bits: int | None) -> int:
    """Validate ``--lmul`` and ``--lmul-mantissa``; returns the mantissa width (default
    :data:`~edgert.ops.lmul_matmul.spec.DEFAULT_MANTISSA_BITS`). Raises InputError."""
    if mode not in MODES:
        raise InputError(f"--lmul must be one of {', '.join(MODES)}, got {mode!r}")
    m = DEFAULT_MANTISSA_BITS if mantissa_bits is None else mantissa_bits
    if m not in MANTISSA_BITS:
        raise InputError(f"--lmul-mantissa must be one of "
                         f"{', '.join(map(str, MANTISSA_BITS))}, got {mantissa_bits!r}")
    return int(m)


@dataclass
class _Graph:
    """What the rewrite reads of the graph: constants, ranks, element types."""

    constants: dict[str, np.ndarray | None]
    ranks: dict[str, int]
    types: dict[str, int]
    new_inits: list[onnx.TensorProto] = field(default_factory=list)

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _Graph:
        constants: dict[str, np.ndarray | None] = {t.name: None for t in graph.initializer}
        for node in graph.node:        # computed from constants only (shape-free ops included)
            if node.op_type == "Constant" or (
                    node.input and all(not i or i in constants for i in node.input)):
                constants.update({o: None for o in node.output})
        ranks, types = {}, {}
        for v in [*graph.input, *graph.value_info, *graph.output]:
            t = v.type.tensor_type
            if v.type.HasField("tensor_type"):
                types[v.name] = t.elem_type
                if t.HasField("shape"):
                    ranks[v.name] = len(t.shape.dim)
        for t in graph.initializer:
            ranks[t.name], types[t.name] = len(t.dims), t.data_type
        return cls(constants, ranks, types)

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def why_not(self, names: list[str]) -> str | None:
        """Why operands of these names cannot be L-Mul operands (None: they can)."""
        for name in names:
            if self.types.get(name) != TensorProto.FLOAT:
                return f"operand {name!r} is not float32"
            rank = self.ranks.get(name)
            if rank is None:
                return f"operand {name!r} has an unknown rank"
            if rank < 2:
                return f"operand {name!r} has rank {rank} (LMulMatMul needs >= 2)"
        return None


def _gemm_nodes(node: onnx.NodeProto, g: _Graph, inits: dict[str, onnx.TensorProto],
                mantissa_bits: int) -> list[onnx.NodeProto] | str:
    """The nodes replacing a matrix-product Gemm, or why it is kept."""
    a, b, *rest = list(node.input)
    c = rest[0] if rest and rest[0] else None
    if node_attr(node, "transA", 0) or float(node_attr(node, "alpha", 1.0)) != 1.0 or (
            c is not None and float(node_attr(node, "beta", 1.0)) != 1.0):
        return "Gemm with transA, alpha != 1 or beta != 1 is not a plain matrix product"
    why = g.why_not([a, b])
    if why is not None:
        return why
    name = node.name or node.output[0]
    nodes = []
    if node_attr(node, "transB", 0):
        if b in inits:
            t = numpy_helper.to_array(inits[b]).T.copy()
            b_t = f"{b}_lmul_t"
            if b_t not in {x.name for x in g.new_inits}:
                g.new_inits.append(numpy_helper.from_array(t, b_t))
        else:
            b_t = f"{b}_lmul_t"
            nodes.append(helper.make_node("Transpose", [b], [b_t], name=f"lmul_{name}_transpose",
                                          perm=[1, 0]))
        b = b_t
    product = node.output[0] if c is None else f"{node.output[0]}_lmul"
    nodes.append(helper.make_node(OP_TYPE, [a, b], [product], name=name, domain=DOMAIN,
                                  mantissa_bits=mantissa_bits))
    if c is not None:
        nodes.append(helper.make_node("Add", [product, c], [node.output[0]],
                                      name=f"lmul_{name}_bias"))
    return nodes


def _rewrite(node: onnx.NodeProto, mode: str, g: _Graph,
             inits: dict[str, onnx.TensorProto], mantissa_bits: int
             ) -> list[onnx.NodeProto] | str | None:
    """Replacement nodes, a reason to keep a candidate, or None for a node that is no
    candidate of ``mode``."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "MatMul":
        if mode == "attention" and any(g.is_constant(i) for i in node.input):
            return None
        why = g.why_not(list(node.input))
        if why is not None:
            return why
        return [helper.make_node(OP_TYPE, list(node.input), list(node.output),
                                 name=node.name or node.output[0], domain=DOMAIN,
                                 mantissa_bits=mantissa_bits)]
    if node.op_type == "Gemm" and mode == "all":
        return _gemm_nodes(node, g, inits, mantissa_bits)
    return None


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers of ``names`` that nothing reads any more (weights transposed
    into a new initializer)."""
    used = {i for n in iter_nodes(graph) for i in n.input} | {o.name for o in graph.output}
    dead = [t for t in graph.initializer if t.name in names and t.name not in used]
    for t in dead:
        graph.initializer.remove(t)


def lmul_model(model: onnx.ModelProto, mode: str, mantissa_bits: int | None = None
               ) -> tuple[onnx.ModelProto, dict]:
    """``model`` (shape-inferred fp32) with its ``mode`` matmuls on ``edgert.LMulMatMul``, and
    the manifest's ``lmul`` section: ``{"mode", "mantissa_bits", "replaced": [node names],
    "kept": {node name: why}, "matmuls": MatMul + Gemm nodes of the graph}``.

    Raises:
        InputError: an unknown mode or mantissa width.
    """
    m = check_mode(mode, mantissa_bits)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = _Graph.of(graph)
    inits = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    replaced: list[str] = []
    kept: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        new = _rewrite(node, mode, g, inits, m)
        label = node.name or node.output[0]
        if isinstance(new, list):
            nodes.extend(new)
            replaced.append(label)
            continue
        if isinstance(new, str):
            kept[label] = new
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(g.new_inits)
    _drop_unused(graph, {t.name[:-len("_lmul_t")] for t in g.new_inits})
    if replaced and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    matmuls = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    return out, {"mode": mode, "mantissa_bits": m, "replaced": replaced, "kept": kept,
                 "matmuls": matmuls}
