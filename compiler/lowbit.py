"""Low-bit weights (``edgert compile --weight-bits``): MatMul/Gemm -> ``edgert.LutMatMul``.

Every MatMul whose right operand B is a constant float32 [K, N] initializer, and every Gemm
with a constant float32 B (``transA = 0``), gets its weight quantized to 1-4 bits or ternary by
:mod:`edgert.compiler.weightquant` (group-wise scales, optional zero points) and packed into the
bit planes of :class:`edgert.ops.lut_matmul.LutLayout`; the node becomes ``LutMatMul``, computed
by table lookup (T-MAC, ``docs/methods/tmac.md``), never by dequantizing.

Two variants:

- float (no ``--int-only``, :func:`lowbit_model`): ``LutMatMul(A: float32, W, scales[,
  zero_points])`` with int8 tables (``table_bits = 8``), group size ``--group-size`` (default
  128). A Gemm's ``transB`` is applied and ``alpha`` folded into the weight before it is
  quantized; its bias ``C`` becomes an ``Add(Y, beta * C)`` after (``Mul`` by beta for a
  non-constant C with beta != 1). The group scales are rounded to float16 numbers
  (:func:`edgert.ops.lut_matmul.spec.half_scales`, a relative change <= 2**-11, far below
  the quantization step), so the x86 kernels read them in half the bytes.
- integer (``--int-only``, :func:`plan_weights` + :mod:`edgert.compiler.quantize`): the
  Linear's int8 activations go into ``LutMatMul(A: int8, W, , [zero_points])`` with exact int16
  tables (``table_bits = 16``); its int32 accumulator is at scale ``s_x * s_w[n] / 2`` and the
  usual ``Requant`` folds that per-column weight scale. That needs one weight scale per column,
  so **the integer variant quantizes with one group over all of K** (``--group-size K``, its
  default; other group sizes are refused, except for ternary weights whose one scale per tensor
  folds whatever the group). Low-bit Linears read int8 activations whatever ``--act-bits`` says
  (the integer tables assume ``|x| <= 128``). Calibration runs on the model with the low-bit
  weights dequantized, so the activation ranges are the ranges of the low-bit network.

Which nodes are converted (``report["skipped"]`` says why a MatMul/Gemm is not):
- not kept by ``--keep-float PATTERN`` (a glob on the node name or the weight name, e.g. an
  LLM's output head: ``--keep-float head``);
- B must be a float32 2-D initializer (activation x activation MatMuls stay as they are), A of
  a known rank >= 2, ``transA = 0`` for a Gemm;
- weights with ``K * N < min_elements`` (default :data:`MIN_ELEMENTS` = 1024, e.g. a 32 x 10
  classifier head) are skipped: packing saves a few KiB at most there, and such heads are where
  low-bit error costs the most accuracy;
- K must be a multiple of 4 (one table per 4 activations), else the node is skipped.

Group sizes: 32, 64, 128, or K (``"K"`` or 0: one group over all of K). A group size larger
than a weight's K means one group over its K. A K that is larger than the group size but not a
multiple of it is an error (:class:`QuantizationError` naming the node, K, the group size and
the group sizes that would work): skipping it silently would leave a large weight in float32.

The manifest's ``lowbit`` section (:func:`report`): ``{"weight_bits", "group_size", "scheme",
"variant", "min_elements", "nodes": {node: {"bits", "K", "N", "group_size", "scheme",
"layout", "bytes_fp32", "bytes_packed", "lut_node"}}, "skipped": {node: why}, "bytes_saved"}``
(``layout`` is the :class:`LutLayout` JSON object, ``lut_node`` the name of the LutMatMul node
in ``model.onnx``; ``bytes_saved``: float variant, the initializer bytes of the graph before
minus after (a float weight another node still reads stays and saves nothing); integer variant,
fp32 minus packed bytes of the distinct weights converted, whose scales live in Requants and are
not counted). At load the layout attributes
of every LutMatMul node are checked against it and against their operands
(:func:`edgert.layouts.check_lut_layouts`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.errors import InputError, QuantizationError
from edgert.ops.lut_matmul.spec import half_scales
from edgert.onnx_graph import iter_nodes, node_label

WEIGHT_BITS = ("1", "2", "3", "4", "ternary")
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 128
MIN_ELEMENTS = 1024
"""Weights with fewer elements (K * N) stay as they are (see the module docstring)."""
FLOAT_TABLE_BITS = 8
INT_TABLE_BITS = 16


@dataclass(frozen=True)
class LowbitConfig:
    """What ``--weight-bits`` / ``--group-size`` / ``--weight-zero-point`` ask for.

    Attributes:
        bits: weight bits (1..4; 2 for ternary).
        scheme: "symmetric", "asymmetric" (integer zero points, the integer variant's
            ``--weight-zero-point``), "exact-min" (float zero points, the float variant's) or
            "ternary".
        group_size: rows of K per scale, 0 = all of K.
        min_elements: smaller weights (K * N) are skipped.
        integer: the integer variant (``--int-only``).
        tile_n: packed tile width (columns).
        keep: ``--keep-float`` glob patterns: a node whose name or weight name matches one
            stays float32 (an LLM's output head, say).
    """

    bits: int
    scheme: str
    group_size: int
    min_elements: int = MIN_ELEMENTS
    integer: bool = False
    tile_n: int = 32
    keep: tuple[str, ...] = ()

    @property
    def weight_bits(self) -> int | str:
        return "ternary" if self.scheme == "ternary" else self.bits


def parse_weight_bits(value: int | str) -> tuple[int, bool]:
    """``--weight-bits`` -> (bits, ternary). Raises InputError."""
    text = str(value).strip().lower()
    if text not in WEIGHT_BITS:
        raise InputError(f"--weight-bits must be one of {', '.join(WEIGHT_BITS)}, got {value!r}")
    return (2, True) if text == "ternary" else (int(text), False)


def parse_group_size(value: int | str | None) -> int | None:
    """``--group-size`` -> 32, 64, 128, 0 (= K) or None (not given). Raises InputError."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() == "k":
        return 0
    try:
        g = int(text)
    except ValueError:
        g = -1
    if g != 0 and g not in GROUP_SIZES:
        raise InputError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))} or K "
                         f"(or 0: one group over all of K), got {value!r}")
    return g


def make_config(weight_bits: int | str, group_size: int | str | None = None, *,
                zero_point: bool = False, integer: bool = False,
                min_elements: int = MIN_ELEMENTS, keep: Sequence[str] = ()) -> LowbitConfig:
    """Validate the flags and fill in the defaults (group 128, or K with ``integer``).

    Raises:
        InputError: an unknown bit width or group size, zero points with ternary weights, or
            a group size other than K for the integer variant (non-ternary).
    """
    bits, ternary = parse_weight_bits(weight_bits)
    group = parse_group_size(group_size)
    if ternary and zero_point:
        raise InputError("--weight-zero-point does not apply to ternary weights (-1, 0, +1 times "
                         "one scale)")
    if group is None:
        group = 0 if integer else DEFAULT_GROUP_SIZE
    elif integer and group != 0 and not ternary:
        raise InputError(
            f"--int-only --weight-bits needs --group-size K (its default): the integer LutMatMul "
            f"has one weight scale per column, folded into the Requant after it, and group-wise "
            f"scales (--group-size {group}) cannot be folded")
    if min_elements < 0:
        raise InputError(f"min_elements must be >= 0, got {min_elements}")
    scheme = ("ternary" if ternary else "symmetric" if not zero_point
              else "asymmetric" if integer else "exact-min")
    return LowbitConfig(bits, scheme, group, min_elements, integer, keep=tuple(keep))


@dataclass
class LowbitWeight:
    """One node's quantized weight (``qw.dequantize()`` is the weight it stands for, alpha
    included).

    Attributes:
        label: the node's label (its name, else a description).
        output: the node's first output (unique: the key of a plan).
        weight: the B initializer's name.
        qw: the packed weight (:class:`edgert.compiler.weightquant.QuantizedWeight`).
        trans_b, alpha: how B became ``w = alpha * op(B)`` (Gemm; MatMul: False, 1.0).
    """

    label: str
    output: str
    weight: str
    qw: object
    trans_b: bool = False
    alpha: float = 1.0

    def entry(self, lut_node: str, *, integer: bool = False) -> dict:
        """The manifest record of this node (``integer``: the scales are folded into a
        Requant, not stored with the packed weight)."""
        lay = self.qw.layout
        packed = self.qw.planes.nbytes + (0 if integer else self.qw.scales.nbytes) + (
            0 if self.qw.zero_points is None else self.qw.zero_points.nbytes)
        return {"bits": lay.bits, "K": lay.K, "N": lay.N, "group_size": lay.group_size,
                "scheme": self.qw.scheme, "layout": self.qw.meta()["layout"],
                "bytes_fp32": 4 * lay.K * lay.N, "bytes_packed": int(packed),
                "lut_node": lut_node}


@dataclass
class Plan:
    """The nodes to convert (by first output) and the ones skipped (label -> why)."""

    config: LowbitConfig
    weights: dict[str, LowbitWeight] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def working_group_sizes(k: int) -> list[str]:
    """The ``--group-size`` values that divide K (``K`` always does)."""
    return [str(g) for g in GROUP_SIZES if g <= k and k % g == 0] + ["K"]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None] | None]:
    out: dict[str, list[int | None] | None] = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = v.type.tensor_type
        out[v.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                       if tt.HasField("shape") else None)
    return out


def plan_weights(model: onnx.ModelProto, config: LowbitConfig, *, source: str = "model") -> Plan:
    """Choose the nodes to convert and quantize their weights (the model is not changed).

    Args:
        model: a shape-inferred model (top-level MatMul/Gemm nodes are considered).
        config: from :func:`make_config`.

    Raises:
        QuantizationError: a weight whose K (larger than the group size) is not a multiple of
            the group size.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shapes = _shapes(model)
    plan = Plan(config)
    cache: dict[tuple, object] = {}
    for index, node in enumerate(g.node):
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        label = node_label(node, index)
        b = node.input[1]
        kept = next((p for p in config.keep if fnmatchcase(node.name, p) or fnmatchcase(b, p)),
                    None)
        if kept is not None:
            plan.skipped[label] = f"kept float (--keep-float {kept})"
            continue
        if b not in inits:
            plan.skipped[label] = "B is not a constant initializer"
            continue
        if inits[b].data_type != TensorProto.FLOAT or len(inits[b].dims) != 2:
            plan.skipped[label] = (f"B is {TensorProto.DataType.Name(inits[b].data_type).lower()}"
                                   f"{list(inits[b].dims)}, not a float32 matrix")
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            plan.skipped[label] = "Gemm with transA = 1"
            continue
        rank = len(shapes[node.input[0]]) if shapes.get(node.input[0]) is not None else None
        if rank is None or rank < 2:
            plan.skipped[label] = (f"A has rank {rank}" if rank is not None
                                   else "the rank of A is unknown") + " (LutMatMul needs >= 2)"
            continue
        trans_b = bool(attrs.get("transB", 0)) if node.op_type == "Gemm" else False
        alpha = float(attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        k, n = (inits[b].dims[1], inits[b].dims[0]) if trans_b else tuple(inits[b].dims)
        if k * n < config.min_elements:
            plan.skipped[label] = (f"small weight: K x N = {k} x {n} < {config.min_elements} "
                                   "elements")
            continue
        if k % 4:
            plan.skipped[label] = f"K = {k} is not a multiple of 4 (one table per 4 activations)"
            continue
        group = k if config.group_size == 0 or config.group_size >= k else config.group_size
        if k % group:
            raise QuantizationError(
                f"{source}: node {label}: K = {k} is not a multiple of the group size {group}; "
                f"group sizes that work for this weight: {', '.join(working_group_sizes(k))} "
                f"(--group-size K: one group over all of K)")
        key = (b, trans_b, alpha, group)
        if key not in cache:
            try:
                cache[key] = _quantize_weight(inits[b], trans_b, alpha, group, config)
            except QuantizationError as e:
                raise QuantizationError(f"{source}: node {label}: {e}") from None
        plan.weights[node.output[0]] = LowbitWeight(label, node.output[0], b, cache[key],
                                                    trans_b, alpha)
    return plan


def _quantize_weight(init: onnx.TensorProto, trans_b: bool, alpha: float, group: int,
                     config: LowbitConfig) -> object:
    """The :mod:`edgert.compiler.weightquant` codes of one float32 weight initializer (as
    [K, N]: transposed with ``trans_b``, times ``alpha``). Raises QuantizationError."""
    from edgert.compiler import weightquant as wq

    w = numpy_helper.to_array(init).astype(np.float64)
    w = (w.T if trans_b else w) * alpha
    if not np.isfinite(w).all():
        raise QuantizationError("the weight has non-finite values")
    if config.scheme == "ternary":
        return wq.quantize_ternary(w.astype(np.float32), group, tile_n=config.tile_n)
    return wq.quantize_weight(w.astype(np.float32), config.bits, group,
                              zero_point=config.scheme != "symmetric",
                              float_zero=config.scheme == "exact-min", tile_n=config.tile_n)


# ---------------------------------------------------------------- graph editing helpers

class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.used = ({t.name for t in g.initializer} | {v.name for v in g.input}
                     | {v.name for v in g.output} | {v.name for v in g.value_info}
                     | {o for n in iter_nodes(g) for o in [*n.input, *n.output, n.name]})

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _readers(model: onnx.ModelProto) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in iter_nodes(model.graph):
        for i in n.input:
            count[i] = count.get(i, 0) + 1
    for o in model.graph.output:
        count[o.name] = count.get(o.name, 0) + 1
    return count


def _init_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes
               for t in model.graph.initializer)


def _with_edgert_opset(model: onnx.ModelProto) -> None:
    from edgert.ops import DOMAIN, OPSET_VERSION

    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))


def _drop_unread(model: onnx.ModelProto, names: set[str]) -> None:
    readers = _readers(model)
    keep = [t for t in model.graph.initializer if t.name not in names or readers.get(t.name)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    kept = {t.name for t in keep}
    inputs = [v for v in model.graph.input if v.name not in names or v.name in kept]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _add_gemm_bias(node: onnx.NodeProto, bias: str, lut_out: str, g: onnx.GraphProto,
                   names: _Names, nodes: list[onnx.NodeProto]) -> None:
    """Append ``y = lut_out + beta * C`` for a Gemm's bias ``C`` (a constant C is scaled
    now, another gets a Mul node)."""
    y = node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    beta = float(attrs.get("beta", 1.0))
    c = bias
    if beta != 1.0:
        init = next((t for t in g.initializer if t.name == bias), None)
        if init is not None:
            c = names.fresh(f"{bias}_beta")
            value = (numpy_helper.to_array(init).astype(np.float64) * beta)
            g.initializer.append(numpy_helper.from_array(value.astype(np.float32), c))
        else:
            b_name, c = names.fresh(f"{y}_beta"), names.fresh(f"{bias}_times_beta")
            g.initializer.append(numpy_helper.from_array(np.array(beta, np.float32), b_name))
            nodes.append(helper.make_node("Mul", [bias, b_name], [c],
                                          name=names.fresh(f"{y}_bias_scale")))
    nodes.append(helper.make_node("Add", [lut_out, c], [y],
                                  name=names.fresh(f"{node.name or y}_bias")))


# ---------------------------------------------------------------- the float variant

def lowbit_model(model: onnx.ModelProto, bits: int | str, group_size: int | str | None = None,
                 *, zero_point: bool = False, min_elements: int = MIN_ELEMENTS,
                 keep: Sequence[str] = (), source: str = "model") -> tuple[onnx.ModelProto, dict]:
    """Rewrite the MatMul/Gemm nodes with constant float weights into float ``LutMatMul``.

    Args:
        model: a shape-inferred fp32 model (not changed; a copy is returned).
        bits: 1, 2, 3, 4 or "ternary".
        group_size: 32, 64, 128, "K" or 0 (one group over K); default 128.
        zero_point: asymmetric codes (a zero point per group and column).
        min_elements: weights with fewer elements stay float (:data:`MIN_ELEMENTS`).
        keep: glob patterns of node or weight names that stay float.

    Returns:
        ``(model, report)``: the rewritten model (edgert opset imported; run shape inference
        again) and the manifest's ``lowbit`` section (:func:`report`).

    Raises:
        InputError: a bad bit width or group size. QuantizationError: see :func:`plan_weights`.
    """
    config = make_config(bits, group_size, zero_point=zero_point, min_elements=min_elements,
                         keep=keep)
    plan = plan_weights(model, config, source=source)
    new = onnx.ModelProto()
    new.CopyFrom(model)
    before = _init_bytes(new)
    names = _Names(new)
    g = new.graph
    packed: dict[int, tuple[str, str, str | None]] = {}
    nodes: list[onnx.NodeProto] = []
    done: dict[str, str] = {}
    name_count = Counter(n.name for n in g.node)
    for node in g.node:
        lw = plan.weights.get(node.output[0]) if node.output else None
        if lw is None:
            nodes.append(node)
            continue
        qw = lw.qw
        if id(qw) not in packed:
            base = lw.weight
            p = names.fresh(f"{base}_lut{qw.layout.bits}")
            s = names.fresh(f"{base}_lut_scales")
            g.initializer.extend([numpy_helper.from_array(qw.planes, p),
                                  numpy_helper.from_array(half_scales(qw.scales), s)])
            z = None
            if qw.zero_points is not None:
                z = names.fresh(f"{base}_lut_zero_points")
                g.initializer.append(numpy_helper.from_array(qw.zero_points, z))
            packed[id(qw)] = (p, s, z)
        p, s, z = packed[id(qw)]
        y = node.output[0]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        lut_out = names.fresh(f"{y}_lut") if bias else y
        unique = node.name and name_count[node.name] == 1
        lut_name = node.name if unique else names.fresh(f"{y}_lutmatmul")   # its node's name
        nodes.append(helper.make_node(
            "LutMatMul", [node.input[0], p, s] + ([z] if z else []), [lut_out], name=lut_name,
            domain="edgert", **qw.layout.to_attrs(), table_bits=FLOAT_TABLE_BITS))
        if bias:
            _add_gemm_bias(node, bias, lut_out, g, names, nodes)
        done[lw.label] = lut_name
    del g.node[:]
    g.node.extend(nodes)
    # value_info of rewritten outputs is inferred again (a Gemm's output keeps its own).
    _drop_unread(new, {lw.weight for lw in plan.weights.values()}
                 | {n for n in (x.input[2] for x in model.graph.node
                                if x.op_type == "Gemm" and len(x.input) > 2) if n})
    _with_edgert_opset(new)
    return new, report(plan, done, before - _init_bytes(new), variant="float")


def report(plan: Plan, done: dict[str, str], bytes_saved: int | None = None, *, variant: str,
           left_float: dict[str, str] | None = None) -> dict:
    """The manifest's ``lowbit`` section for the nodes converted (``done``: label -> LutMatMul
    node name); planned nodes not converted go to ``skipped`` with ``left_float``'s reason.
    ``bytes_saved`` defaults to fp32 minus packed bytes over the distinct weights converted
    (the integer variant: its graph never held the float weights)."""
    c = plan.config
    integer = variant == "integer"
    nodes = {lw.label: lw.entry(done[lw.label], integer=integer) for lw in plan.weights.values()
             if lw.label in done}
    if bytes_saved is None:
        distinct = {id(lw.qw): lw.entry("", integer=integer) for lw in plan.weights.values()
                    if lw.label in done}
        bytes_saved = sum(e["bytes_fp32"] - e["bytes_packed"] for e in distinct.values())
    skipped = dict(plan.skipped)
    for lw in plan.weights.values():
        if lw.label not in done:
            skipped[lw.label] = (left_float or {}).get(lw.label, "not converted")
    return {"weight_bits": c.weight_bits, "group_size": "K" if c.group_size == 0 else c.group_size,
            "scheme": c.scheme, "variant": variant, "min_elements": c.min_elements,
            "nodes": nodes, "skipped": skipped, "bytes_saved": int(bytes_saved)}


# ---------------------------------------------------------------- the integer variant

def fake_quantized(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """A copy of ``model`` whose planned nodes read their dequantized low-bit weights (a new
    initializer per node, in B's own orientation and divided by a Gemm's alpha), for
    calibration and for the quantizer (which takes the packed weights from the plan)."""
    new = onnx.ModelProto()
    new.CopyFrom(model)
    names = _Names(new)
    made: dict[tuple, str] = {}
    for node in new.graph.node:
        lw = plan.weights.get(node.output[0]) if node.output else None
        if lw is None:
            continue
        key = (id(lw.qw), lw.trans_b, lw.alpha)
        if key not in made:
            w = lw.qw.dequantize().astype(np.float64) / lw.alpha
            w = w.T if lw.trans_b else w
            made[key] = names.fresh(f"{lw.weight}_w{lw.qw.layout.bits}")
            new.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32),
                                                                 made[key]))
        node.input[1] = made[key]
    _drop_unread(new, {lw.weight for lw in plan.weights.values()})
    return new
