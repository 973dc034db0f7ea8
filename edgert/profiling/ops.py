"""Per-operator breakdown: compiled kernels mapped back to the ONNX graph they came from.

TVM names a kernel after the Relax ops it fuses (``fused_add5_gelu``, ``transpose1``) or, for
edgert's own kernels, after the op and its schedule (``matmul_fma_x86_float32_packed_k32_n96``,
``shiftmax``). :func:`kernel_op_types` reads the ONNX op types out of such a name;
:func:`map_calls_to_nodes` walks a run's kernel calls and the graph's nodes together in
order and gives each kernel the nodes it most likely computes. It is a best effort: shape-only
nodes (Reshape, Shape) usually have no kernel, and a fused kernel may stand for nodes of types
its name does not spell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONV = ("Conv", "ConvInteger")
"""The ONNX types of a convolution (fp32 and integer-only graphs)."""

ALIASES: dict[str, tuple[str, ...]] = {
    "matmul": ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul") + CONV,
    "dense": ("Gemm", "MatMul"), "add": ("Add", "Sum"), "multiply": ("Mul",),
    "subtract": ("Sub",), "divide": ("Div",), "gelu": ("Gelu",),
    "layer_norm": ("LayerNormalization",), "rms_norm": ("RMSNormalization",),
    "softmax": ("Softmax",), "transpose": ("Transpose",),
    "strided_slice": ("Slice", "Split", "Gather"), "split": ("Split",),
    "squeeze": ("Squeeze",), "expand_dims": ("Unsqueeze",), "concatenate": ("Concat",),
    "broadcast_to": ("Expand",), "take": ("Gather",), "where": ("Where",),
    "im2col": CONV, "to_nchw": CONV, "conv2d": CONV, "conv1d": CONV, "conv": CONV,
    "depthwise": CONV, "dw": CONV,
    "add_clip_divide_multiply": ("HardSwish",), "multiply_add_clip": ("HardSigmoid",),
    "relu": ("Relu",), "tanh": ("Tanh",), "sigmoid": ("Sigmoid",), "erf": ("Erf",),
    "exp": ("Exp",), "sqrt": ("Sqrt",), "rsqrt": ("Sqrt",), "power": ("Pow",),
    "max_pool2d": ("MaxPool",), "avg_pool2d": ("AveragePool",),
    "adaptive_avg_pool2d": ("GlobalAveragePool",), "mean": ("ReduceMean", "GlobalAveragePool"),
    "sum": ("ReduceSum",), "max": ("ReduceMax", "Max"), "min": ("ReduceMin", "Min"),
    "maximum": ("Max",), "minimum": ("Min",), "clip": ("Clip",), "reshape": ("Reshape",),
    "astype": ("Cast",), "cast": ("Cast",), "shape_func": ("Shape",),
    "shape_to_tensor": ("Shape",), "arange": ("Range",), "cumsum": ("CumSum",),
    "TVMTensorCreateView": ("Reshape", "Flatten", "Squeeze", "Unsqueeze"),
}
"""TVM / Relax op names (after ``fused_`` and the numeric suffix are dropped) -> the ONNX op
types they come from, most likely first (a matmul may be a 1x1 convolution; the
decomposed forms of HardSwish and HardSigmoid as TVM spells them)."""

FUSED: dict[str, tuple[str, ...]] = {"attention": ("MatMul", "Softmax", "MatMul")}
"""Kernel name tokens that stand for several ONNX nodes in a row (the fused attention
kernel: scores, softmax, times V; its scale and mask nodes are not spelled)."""

CONV_PADDING = re.compile(r"^(nhwc_)?pad(_nhwc)?\d*$")
"""A kernel that only pads a convolution's input: part of the convolution after it."""

_NOISE = re.compile(r"^(k\d+|n\d+|[a-z]*\d+bit|float\d+|int\d+|uint\d+|x86|fma|avx\d*|neon|sdot|"
                    r"packed|batched|tir|poly|runtime|compute|nt|nn|relax)$")
VM_TYPE = "(VM)"
"""``op_type`` of the row for the VM's own time."""


@dataclass
class OpRow:
    """One kernel of the breakdown: ``ms`` per run (all its calls), ``share`` of the summed
    time (0..1), ``calls`` per run, the ONNX ``op_type`` s it computes joined by ``+`` and
    the ONNX ``nodes`` it was mapped to (names in the artifact's model.onnx)."""

    name: str
    op_type: str
    ms: float
    share: float
    calls: int
    nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "ms": self.ms, "share": self.share,
                "calls": self.calls, "onnx_nodes": list(self.nodes)}


def _tokens(kernel: str) -> list[str]:
    name = kernel.rsplit(".", 1)[-1]
    name = name[len("fused_"):] if name.startswith("fused_") else name
    raw = [t for t in name.split("_") if t]
    out = []
    for t in raw:
        t = t if _NOISE.match(t) or t in ALIASES else re.sub(r"\d+$", "", t) or t
        if not _NOISE.match(t):
            out.append(t)
    return out


def kernel_op_types(kernel: str, graph_types: Iterable[str] = (), *,
                    repeats: bool = False) -> list[str]:
    """ONNX op types a kernel name spells, in name order (``fused_add5_gelu`` ->
    ``["Add", "Gelu"]``). Runs of name tokens are matched first against ``graph_types`` (the op
    types of the graph at hand, so edgert's own ops such as ``Shiftmax`` are found by name),
    longest run first, then against :data:`ALIASES`; unknown tokens are dropped. ``repeats``:
    keep a type each time it is spelled (``fused_add3_add4`` -> ``["Add", "Add"]``)."""
    if kernel.endswith("TVMTensorCreateView"):
        return list(ALIASES["TVMTensorCreateView"][:1])
    normal = {t.lower().replace("_", ""): t for t in graph_types}
    tokens, found, i = _tokens(kernel), [], 0
    while i < len(tokens):
        for n in range(min(4, len(tokens) - i), 0, -1):
            joined = "_".join(tokens[i:i + n])
            hit = normal.get(joined.replace("_", "")) or (
                ALIASES[joined][0] if joined in ALIASES else None)
            hits = FUSED.get(joined, (hit,) if hit else ())
            if hits:
                found.extend(h for h in hits if repeats or h not in found)
                i += n
                break
        else:
            i += 1
    return found


def _candidates(kernel: str, graph_types: set[str]) -> list[tuple[str, ...]]:
    """For each op type the kernel spells: all ONNX types it may stand for in this graph."""
    out = []
    for t in kernel_op_types(kernel, graph_types, repeats=True):
        alias = next((v for v in ALIASES.values() if v[0] == t), (t,))
        present = tuple(a for a in alias if a in graph_types) or (t,)
        out.append(present)
    if kernel.endswith("TVMTensorCreateView"):
        out = [tuple(a for a in ALIASES["TVMTensorCreateView"] if a in graph_types) or ("Reshape",)]
    return out


def map_calls_to_nodes(calls: Sequence[str], nodes: Sequence[tuple[str, str]]
                       ) -> list[list[str]]:
    """For each kernel call of one run (names, in call order), the ONNX node names it most
    likely computes. Each call spells op types (:func:`kernel_op_types`, one slot per type
    spelled); the slots of all calls, in call order, are aligned with the graph's ``nodes``
    ((name, op_type), topological order) by a longest common subsequence in which a slot
    matches a node of one of the ONNX types its name may stand for. A convolution lowered to
    padding, im2col, one or more matmuls and ``to_nchw`` maps all of them to its Conv node. A
    call whose slots found no node maps to no node."""
    graph_types = {t for _, t in nodes}
    slots: list[tuple[int, tuple[str, ...]]] = []
    conv_parts: dict[int, int] = {}                 # call -> the im2col call of its Conv
    paddings = [c for c, kernel in enumerate(calls) if CONV_PADDING.match(_base(kernel))]
    for c, kernel in enumerate(calls):
        head = conv_parts.get(c - 1, c - 1)
        if c and ("matmul" in kernel or _base(kernel) == "to_nchw") and "im2col" in calls[head]:
            conv_parts[c] = head
            continue
        if c not in paddings:
            slots.extend((c, types) for types in _candidates(kernel, graph_types))
    out: list[list[str]] = [[] for _ in calls]
    for s, j in _lcs([t for _, t in slots], [t for _, t in nodes]):
        out[slots[s][0]].append(nodes[j][0])
    for c, first in conv_parts.items():
        out[c] = list(out[first])
    for c in reversed(paddings):
        out[c] = list(out[c + 1]) if c + 1 < len(calls) else []
    return out


def _base(kernel: str) -> str:
    """A kernel's name without its module prefix and numeric suffix (``nhwc_im2col3`` ->
    ``nhwc_im2col``)."""
    return re.sub(r"\d+$", "", kernel.rsplit(".", 1)[-1])


def _lcs(slots: Sequence[tuple[str, ...]], types: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs (slot, node) of a longest common subsequence, slot i matching node j when
    ``types[j] in slots[i]``; for long graphs (over :data:`LCS_CELLS` cells) a greedy
    in-order match instead."""
    n, m = len(slots), len(types)
    if n * m > LCS_CELLS:
        pairs, j = [], 0
        for i, want in enumerate(slots):
            k = next((k for k in range(j, min(m, j + 32)) if types[k] in want), None)
            if k is not None:
                pairs.append((i, k))
                j = k + 1
        return pairs
    table = np.zeros((n + 1, m + 1), dtype=np.int32)
    for i in range(1, n + 1):
        want, row, up = slots[i - 1], table[i], table[i - 1]
        hit = np.fromiter((t in want for t in types), dtype=bool, count=m)
        for j in range(1, m + 1):
            row[j] = up[j - 1] + 1 if hit[j - 1] else max(up[j], row[j - 1])
    pairs, i, j = [], n, m
    while i and j:
        if types[j - 1] in slots[i - 1] and table[i, j] == table[i - 1, j - 1] + 1:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif table[i - 1, j] >= table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


LCS_CELLS = 3_000_000
"""Above slots x nodes this many cells the alignment is greedy (time and memory)."""


def op_rows(kernel_times: Sequence[Any], call_order: Sequence[str],
            nodes: Sequence[tuple[str, str]],
            mapping: Sequence[Sequence[str]] | None = None) -> list[OpRow]:
    """The breakdown table: one :class:`OpRow` per entry of
    :meth:`edgert.Session.kernel_times` (``name``, ``calls``, ``ms``), with ONNX types and
    nodes from one run's ``call_order`` mapped onto ``nodes`` ((name, op_type) in graph
    order; empty when the graph could not be read); ``mapping``: :func:`map_calls_to_nodes`
    of them when already computed. Slowest first."""
    from edgert.backends.tvm_vm import VM_OVERHEAD

    graph_types = {t for _, t in nodes}
    mapped: dict[str, list[str]] = {}
    if mapping is None:
        mapping = map_calls_to_nodes(call_order, nodes)
    for kernel, names in zip(call_order, mapping):
        mapped.setdefault(kernel, []).extend(names)
    type_of = dict((n, t) for n, t in nodes)
    total = sum(k.ms for k in kernel_times) or 1.0
    rows = []
    for k in kernel_times:
        if k.name == VM_OVERHEAD:
            op_type = VM_TYPE
        elif mapped.get(k.name):
            op_type = "+".join(dict.fromkeys(type_of[n] for n in mapped[k.name]))
        else:
            op_type = "+".join(kernel_op_types(k.name, graph_types)) or "?"
        rows.append(OpRow(k.name, op_type, k.ms, k.ms / total, k.calls, mapped.get(k.name, [])))
    return sorted(rows, key=lambda r: -r.ms)


def by_op_type(rows: Sequence[OpRow]) -> list[dict[str, Any]]:
    """The breakdown summed by ``op_type`` (a fused kernel counts once, under its joined
    types): ``{"op_type", "ms", "share", "kernels", "calls"}``, slowest first."""
    sums: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = sums.setdefault(r.op_type, {"op_type": r.op_type, "ms": 0.0, "share": 0.0,
                                        "kernels": 0, "calls": 0})
        d["ms"] += r.ms
        d["share"] += r.share
        d["kernels"] += 1
        d["calls"] += r.calls
    return sorted(sums.values(), key=lambda d: -d["ms"])


def graph_nodes(model_bytes: bytes) -> list[tuple[str, str]]:
    """(name, op_type) of every node of a serialized ONNX model, in graph order; empty when
    the ``onnx`` package is not installed (a board with numpy only)."""
    try:
        import onnx
    except ImportError:
        return []
    model = onnx.load_from_string(model_bytes)
    return [(n.name or f"{n.op_type}_{i}", n.op_type) for i, n in enumerate(model.graph.node)]
