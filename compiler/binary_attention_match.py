"""Finding the attention subgraphs that ``--binary-attention`` replaces, and replacing them.

The pattern, as PyTorch exports it (``nn.MultiheadAttention``, ``scaled_dot_product_attention``,
hand-written attention) and as the bundled digits ViT and MiniLM hold it::

    MatMul(Q [B, H, S, D], Kt [B, H, D, T]) -> [Mul or Div by a positive constant scalar]
        -> [Add(bias)] -> Softmax(last axis) -> MatMul(., V [B, H, T, Dv])

(``scaled_dot_product_attention`` scales Q and Kt before the MatMul instead: the hash of a
vector ignores a positive scale, so those Muls simply stay in front of it.) Each tensor of the
chain must feed only the next node. A site becomes::

    K = Transpose(Kt, [0, 1, 3, 2])          (or Kt's own Transpose with the swap composed in)
    cq = edgert.HashCodes(Q, anchors, gamma, mean, proj)
    ck = edgert.HashCodes(K, anchors, gamma, mean, proj)      (one hash for queries and keys)
    out = edgert.BinaryAttention(cq, ck, V, [temperature], [bias])

A Softmax that looks like attention but does not fit (other ranks, a scale that is not a
positive constant, a bias per query with the linear form, intermediate tensors read elsewhere)
is kept, and the manifest says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.onnx_graph import node_attr
from edgert.ops import DOMAIN

SWAP_LAST = [0, 1, 3, 2]


@dataclass
class Site:
    """One attention subgraph: its node names and the tensors the replacement reads."""

    name: str                          # the Softmax node's name
    q: str
    kt: str
    v: str
    out: str
    bias: str | None
    heads: int | None                  # static head count (None: symbolic)
    removed: list[onnx.NodeProto]
    key_transpose: onnx.NodeProto | None = None       # Kt's producer, composed when private
    per_query_bias: bool = False
    probs: str = ""                                   # the Softmax's output


@dataclass
class GraphIndex:
    """Producers, consumers, constants and value types of one graph."""

    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    constants: dict[str, np.ndarray]
    types: dict[str, onnx.TypeProto]
    outputs: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphIndex:
        producer, consumers = {}, {}
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            for o in node.output:
                producer[o] = node
            for i in node.input:
                consumers.setdefault(i, []).append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
        return cls(producer, consumers, constants, types, {o.name for o in graph.output})

    def dims(self, name: str) -> list | None:
        """Dims of a float32 tensor (int, str or None each), None if unknown or not float32."""
        if name in self.constants:
            a = self.constants[name]
            return list(a.shape) if a.dtype == np.float32 else None
        t = self.types.get(name)
        if t is None or t.tensor_type.elem_type != TensorProto.FLOAT or not t.tensor_type.HasField(
                "shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.tensor_type.shape.dim]

    def private(self, name: str) -> bool:
        """Read by exactly one node and not a graph output."""
        return len(self.consumers.get(name, [])) == 1 and name not in self.outputs


def _softmax_axis_ok(node: onnx.NodeProto, opset: int) -> bool:
    axis = node_attr(node, "axis", -1 if opset >= 13 else 1)
    return axis in (-1, 3)


def _scale_input(node: onnx.NodeProto, g: GraphIndex) -> str | None:
    """The non-constant input of a Mul/Div by a positive constant scalar, else None."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    for i, other in ((0, 1), (1, 0)):
        if node.op_type == "Div" and i == 1:
            continue                                   # c / x is no scaling of x
        c = g.constants.get(node.input[other])
        if c is not None and c.size == 1 and float(c.reshape(())) > 0:
            return node.input[i]
    return None


def _chain(softmax: onnx.NodeProto, g: GraphIndex) -> tuple[onnx.NodeProto, list, str | None] | str:
    """(the Q·Kt MatMul, the chain's nodes, the bias) above a Softmax, or why it is no site."""
    nodes, bias = [], None
    cur = softmax.input[0]
    node = g.producer.get(cur)
    if node is not None and node.op_type == "Add":
        for i, other in ((0, 1), (1, 0)):
            p = g.producer.get(node.input[i])
            if p is not None and p.op_type in ("MatMul", "Mul", "Div"):
                nodes.append(node)
                bias, cur = node.input[other], node.input[i]
                break
        else:
            return "no Q·Kᵀ product under the softmax's Add"
        node = g.producer.get(cur)
    if node is not None and node.op_type in ("Mul", "Div"):
        inner = _scale_input(node, g)
        if inner is None:
            return f"{node.op_type} {node.name!r} is not a scaling by a positive constant"
        nodes.append(node)
        node = g.producer.get(inner)
    if node is None or node.op_type != "MatMul":
        return "the softmax's input is not a MatMul of queries and keys"
    chain = [node, *nodes[::-1]]
    for n in chain:
        if not g.private(n.output[0]):
            return f"{n.output[0]!r} is read by more than the attention"
    return node, chain, bias


def find_site(softmax: onnx.NodeProto, g: GraphIndex, opset: int, form: str) -> Site | str | None:
    """The site of a Softmax node, a reason to keep it, or None (no attention at all)."""
    users = g.consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return None
    found = _chain(softmax, g)
    if isinstance(found, str):
        return found
    qk, chain, bias = found
    pv = users[0]
    if not _softmax_axis_ok(softmax, opset) or not g.private(softmax.output[0]):
        return "softmax over another axis, or its probabilities are read elsewhere"
    q, kt, v = qk.input[0], qk.input[1], pv.input[1]
    dq, dk, dv = g.dims(q), g.dims(kt), g.dims(v)
    if dq is None or dk is None or dv is None or not len(dq) == len(dk) == len(dv) == 4:
        return "queries, keys and values must be float32 of rank 4 [B, H, S, D]"
    heads = {d for d in (dq[1], dk[1], dv[1]) if d is not None}
    if len(heads) > 1:
        return f"queries, keys and values have different head counts {sorted(map(str, heads))}"
    per_query = False
    if bias is not None:
        db = g.dims(bias)
        if db is None or len(db) != 4:
            return "the attention bias must be float32 of rank 4"
        per_query = db[2] != 1
    head = next(iter(heads)) if heads else None
    site = Site(softmax.name or softmax.output[0], q, kt, v, pv.output[0], bias,
                head if isinstance(head, int) else None, [*chain, softmax, pv],
                per_query_bias=per_query, probs=softmax.output[0])
    if form == "linear" and per_query:
        return "a bias per query (e.g. causal) has no linear form: use --attention-form quadratic"
    t = g.producer.get(kt)
    if t is not None and t.op_type == "Transpose" and g.private(kt) and node_attr(t, "perm", None):
        site.key_transpose = t
    return site


def _key_nodes(site: Site, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """The nodes making K [B, H, T, D] from Kt, and K's name."""
    t = site.key_transpose
    if t is None:
        k = f"{prefix}_keys"
        return [helper.make_node("Transpose", [site.kt], [k], name=k, perm=SWAP_LAST)], k
    site.removed.append(t)
    perm = list(node_attr(t, "perm", []))
    composed = [perm[i] for i in SWAP_LAST]
    if composed == [0, 1, 2, 3]:
        return [], t.input[0]
    k = f"{prefix}_keys"
    return [helper.make_node("Transpose", [t.input[0]], [k], name=k, perm=composed)], k


def site_nodes(site: Site, prefix: str, bits: int, form: str, with_temperature: bool
               ) -> list[onnx.NodeProto]:
    """The replacement of ``site`` (module docstring), reading the initializers
    ``{prefix}_anchors``, ``_gamma``, ``_mean``, ``_proj`` and ``_temperature``."""
    nodes, k = _key_nodes(site, prefix)
    params = [f"{prefix}_{p}" for p in ("anchors", "gamma", "mean", "proj")]
    cq, ck = f"{prefix}_query_codes", f"{prefix}_key_codes"
    nodes.append(helper.make_node("HashCodes", [site.q, *params], [cq], name=cq, domain=DOMAIN,
                                  bits=bits))
    nodes.append(helper.make_node("HashCodes", [k, *params], [ck], name=ck, domain=DOMAIN,
                                  bits=bits))
    extra = [f"{prefix}_temperature" if with_temperature else "", site.bias or ""]
    while extra and not extra[-1]:
        extra.pop()
    nodes.append(helper.make_node("BinaryAttention", [cq, ck, site.v, *extra], [site.out],
                                  name=site.name, domain=DOMAIN, bits=bits, form=form))
    return nodes


def replace_sites(graph: onnx.GraphProto, replacements: list[tuple[Site, list[onnx.NodeProto]]]
                  ) -> None:
    """Remove each site's nodes and put its replacement where its last node (the value
    MatMul) was, in place."""
    removed = {n.output[0] for site, _ in replacements for n in site.removed}
    at = {site.out: new for site, new in replacements}       # the value MatMul's output
    nodes = []
    for node in graph.node:
        if node.output and node.output[0] in at:
            nodes.extend(at[node.output[0]])
        if not node.output or node.output[0] not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
