"""``--shift-linear``: the chosen Linears of an integer graph multiply by shifts
(``edgert.ShiftMatMul``, :mod:`edgert.ops.shift_matmul`; ``docs/methods/shift-linear.md``).

The pass runs on the integer graph (after ``quantize``): a chosen Linear's ``MatMulInteger``
(int8 activations) or ``IntMatMul`` (int16 activations) with its constant int8 per-column
weights ``q`` becomes ``ShiftMatMul`` on the codes of ``q`` rounded to the nearest signed power
of two (:func:`~edgert.ops.shift_matmul.spec.power_of_two_codes`, magnitudes 0, 1, 2, ..., 128).
The codes are in ``q``'s units, so the accumulator keeps its scale ``s_x * s_w[n]``: the bias
``Add`` and the ``Requant`` (or ``DequantizeLinear``) after it stay as they are.

Choices (``choice``):

- ``mlp``: the two Linears of each MLP block: a Linear whose output (after its bias) goes
  through an activation (``Gelu``, ``Relu``, ...) into another Linear, and that Linear.
- ``all``: every Linear (``MatMul`` with a constant 2-D weight, ``Gemm`` with a constant B).
- a pattern: a glob (``fnmatch``, case-sensitive), or a regular expression after ``re:``
  (``re.search``), matched against each Linear's names in the fp32 graph: the MatMul/Gemm
  node, its weight, the bias ``Add`` node and bias, and the Linear's output. E.g.
  ``blocks.1.mlp.*`` (the bias names of a torch export), ``re:mlp\\.0``.

The choice is made on the fp32 graph the quantizer read (names and structure are lost in the
integer graph); its Linears are found in the integer graph by their weights, which the
quantizer names ``<fp32 weight>_int8_q[N]``. Not replaced, with the reason in the manifest's
``shift_linear`` section: a Linear the quantizer gave low-bit weights or left float, and one
whose int32 accumulator bound (:func:`~edgert.ops.shift_matmul.spec.accumulator_bound`, with
the largest activation of its dtype) does not hold with the rounded weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.errors import InputError
from edgert.onnx_graph import node_attr
from edgert.ops import DOMAIN, OPSET_VERSION
from edgert.ops.shift_matmul.spec import (INT32_MAX, OP_TYPE, accumulator_bound,
                                          code_weights, power_of_two_codes)

MODES = ("mlp", "all")
"""``--shift-linear`` values besides a pattern."""
ACTIVATIONS = frozenset({"Gelu", "Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu",
                         "LeakyRelu", "Selu", "Celu", "Softplus", "Mish", "PRelu"})
"""The ops between the two Linears of an MLP block (``mlp``)."""
INT_LINEARS = ("MatMulInteger", "IntMatMul")
ACT_MAX = {TensorProto.INT8: 128, TensorProto.INT16: 32768}
"""Largest ``|a|`` of an activation of each dtype (the bound's ``a_max``)."""


@dataclass(frozen=True)
class Linear:
    """A Linear of the fp32 graph: its MatMul/Gemm node, weight, and the names a pattern is
    matched against."""

    label: str
    weight: str
    output: str
    names: tuple[str, ...]


def matcher(choice: str) -> Callable[[str], bool] | None:
    """The name test of a pattern choice (None for ``mlp`` / ``all``). Raises InputError for
    an empty choice or a regular expression that does not compile."""
    if not choice or not choice.strip():
        raise InputError("--shift-linear needs mlp, all or a name pattern")
    if choice in MODES:
        return None
    if choice.startswith("re:"):
        try:
            rx = re.compile(choice[3:])
        except re.error as e:
            raise InputError(f"--shift-linear {choice!r}: not a regular expression ({e})") from None
        return lambda name: rx.search(name) is not None
    return lambda name: fnmatchcase(name, choice)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def find_linears(model: onnx.ModelProto) -> list[Linear]:
    """The Linears of an fp32 graph, in graph order: a ``MatMul`` whose B is a 2-D float
    initializer, or a ``Gemm`` with an initializer B and ``transA = 0``; a MatMul's output is
    that of its bias ``Add`` when a single ``Add`` with an initializer follows it."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    out = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type != TensorProto.FLOAT:
            continue
        label = node.name or node.output[0]
        names = [label, w.name, node.output[0]]
        output = node.output[0]
        if node.op_type == "MatMul" and len(w.dims) == 2:
            nxt = users.get(output, [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                bias = [i for i in nxt[0].input if i != output]
                if bias and bias[0] in inits:
                    output = nxt[0].output[0]
                    names += [nxt[0].name, bias[0], output]
        elif node.op_type == "Gemm" and not node_attr(node, "transA", 0):
            names += [i for i in node.input[2:] if i]
        else:
            continue
        out.append(Linear(label, w.name, output, tuple(n for n in names if n)))
    return out


def mlp_linears(model: onnx.ModelProto, linears: list[Linear]) -> set[str]:
    """Labels of the Linears of MLP blocks: Linear -> activation(s) -> Linear, both."""
    users = _consumers(model.graph)
    by_input: dict[str, Linear] = {}
    label_of = {}
    for node in model.graph.node:
        label_of[node.name or (node.output[0] if node.output else "")] = node
    for lin in linears:
        by_input.setdefault(label_of[lin.label].input[0], lin)
    chosen: set[str] = set()
    for lin in linears:
        tensor, seen_act = lin.output, False
        while True:
            nxt = users.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type not in ACTIVATIONS:
                break
            tensor, seen_act = nxt[0].output[0], True
        second = by_input.get(tensor)
        if seen_act and second is not None:
            chosen.update((lin.label, second.label))
    return chosen


def choose(model: onnx.ModelProto, choice: str) -> tuple[list[Linear], list[Linear]]:
    """(the chosen Linears, every Linear) of the fp32 graph for ``choice``."""
    test = matcher(choice)
    linears = find_linears(model)
    if choice == "all":
        return linears, linears
    if choice == "mlp":
        labels = mlp_linears(model, linears)
        return [lin for lin in linears if lin.label in labels], linears
    return [lin for lin in linears if any(test(n) for n in lin.names)], linears


def _int_weight_index(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """fp32 weight name -> the integer Linears reading its int8 copy."""
    inits = {t.name for t in graph.initializer}
    pattern = re.compile(r"^(.*)_int8_q\d*$")
    index: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type in INT_LINEARS and len(node.input) == 2 and node.input[1] in inits:
            m = pattern.match(node.input[1])
            if m:
                index.setdefault(m.group(1), []).append(node)
    return index


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _bias_of(graph: onnx.GraphProto, acc: str, inits: dict[str, np.ndarray]) -> np.ndarray | None:
    """The int32 bias added to the accumulator ``acc`` (the quantizer's ``Add``), if any."""
    for node in graph.node:
        if node.op_type == "Add" and acc in node.input:
            other = [i for i in node.input if i != acc]
            if other and other[0] in inits:
                return inits[other[0]]
    return None


def _replace(node: onnx.NodeProto, graph: onnx.GraphProto, inits: dict[str, np.ndarray],
             types: dict[str, int]) -> tuple[onnx.NodeProto, onnx.TensorProto, dict] | str:
    """The ShiftMatMul node, its codes initializer and the node's report; or why not."""
    a, w = node.input
    q = inits[w]
    if q.dtype != np.int8 or q.ndim != 2:
        return f"weight {w!r} is not int8 [K, N]"
    a_max = ACT_MAX.get(types.get(a, 0))
    if a_max is None:
        return f"activation {a!r} is not int8 or int16"
    codes = power_of_two_codes(q)
    bound = accumulator_bound(a_max, codes, _bias_of(graph, node.output[0], inits))
    if bound > INT32_MAX:
        return f"the int32 accumulator bound fails with power-of-two weights ({bound})"
    name = f"{w}_shift"
    qi = q.astype(np.int64)
    err = float(np.linalg.norm(code_weights(codes) - qi) / max(np.linalg.norm(qi), 1e-12))
    new = helper.make_node(OP_TYPE, [a, name], list(node.output), name=node.name, domain=DOMAIN)
    report = {"node": node.name, "K": int(q.shape[0]), "N": int(q.shape[1]),
              "activation": "int8" if a_max == 128 else "int16",
              "rounding_error": round(err, 6),
              "zero_weights": int((codes == 0).sum())}
    return new, numpy_helper.from_array(codes, name), report


def shift_linear_model(int_model: onnx.ModelProto, fp32_model: onnx.ModelProto, choice: str
                       ) -> tuple[onnx.ModelProto, dict]:
    """``int_model`` with the ``choice`` Linears of ``fp32_model`` (the graph it was quantized
    from) on ``edgert.ShiftMatMul``, and the manifest's ``shift_linear`` section:
    ``{"choice", "linears": Linears of the fp32 graph, "replaced": {fp32 Linear: {"node",
    "K", "N", "activation", "rounding_error", "zero_weights"}}, "kept": {fp32 Linear: why}}``.
    ``rounding_error`` is ``||2^e - q|| / ||q||`` over the layer's int8 weights ``q``.

    Raises:
        InputError: an empty choice, a bad regular expression, or no Linear chosen.
    """
    chosen, linears = choose(fp32_model, choice)
    if not chosen:
        shown = ", ".join(lin.label for lin in linears[:8]) + (", ..." if len(linears) > 8 else "")
        raise InputError(f"--shift-linear {choice}: no Linear of the model matches (its "
                         f"{len(linears)} Linears: {shown or 'none'}; a pattern is matched "
                         f"against node, weight, bias and output names)")
    out = onnx.ModelProto()
    out.CopyFrom(int_model)
    graph = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    types = _elem_types(out)
    index = _int_weight_index(graph)
    swap: dict[int, onnx.NodeProto] = {}
    new_inits: dict[str, onnx.TensorProto] = {}
    replaced: dict[str, dict] = {}
    kept: dict[str, str] = {}
    for lin in chosen:
        nodes = index.get(lin.weight)
        if not nodes:
            kept[lin.label] = "not an int8 MatMulInteger/IntMatMul in the integer graph"
            continue
        for node in nodes:
            done = _replace(node, graph, inits, types)
            if isinstance(done, str):
                kept[lin.label] = done
                continue
            swap[id(node)], init, replaced[lin.label] = done[0], done[1], done[2]
            new_inits[init.name] = init
    nodes = [swap.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits.values())
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    old = {i for n in int_model.graph.node if n.op_type in INT_LINEARS for i in n.input[1:]}
    for t in [t for t in graph.initializer if t.name in old and t.name not in used]:
        graph.initializer.remove(t)         # the int8 weights now read as codes
    if replaced and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return out, {"choice": choice, "linears": len(linears), "replaced": replaced, "kept": kept}


def summary(section: dict) -> str:
    """One line on the manifest's ``shift_linear`` section, for ``edgert inspect``."""
    done = [f"{name} ({v['K']}x{v['N']}, weight rounding error {100 * v['rounding_error']:.1f}%)"
            for name, v in section["replaced"].items()]
    kept = [f"{name} ({why})" for name, why in section["kept"].items()]
    return (f"shift linears (--shift-linear {section['choice']}): {len(done)} of "
            f"{section['linears']} Linears on power-of-two weights"
            + (": " + ", ".join(done) if done else "")
            + ("; kept: " + ", ".join(kept) if kept else ""))
