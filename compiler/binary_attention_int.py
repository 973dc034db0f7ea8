"""``--int-only --binary-attention``: binary attention in an integer graph (both forms,
``docs/methods/binary-attention.md``).

The kernelized hash is float arithmetic (a norm, ``exp``), so the integer graph hashes with a
linear one: bit i of a vector x is ``x · w_i >= 0`` (0 counts as +1), with ``w_i`` a row of an
int8 matrix W, the sum in int32. The quantizer's int8 queries and keys are the fp32 vectors
over a positive scale, so the bits are those of the fp32 vectors under W. W is fitted per head
on the calibration attention by the same supervised fit as the kernelized hash
(:func:`~edgert.compiler.binary_attention_fit.fit_projection`), run on the raw query and key
vectors instead of the RBF features, then rounded to int8 per bit.

This pass runs after ``quantize``: it finds each attention site in the fp32 graph, its
``Shiftmax`` in the integer graph (named after the Softmax's output) and the
``MatMulInteger(Q, Kᵀ)`` under it (through ``Requant``). The codes and their similarities are
one node, ``edgert.IntBinaryAttention`` (``ops/int_binary_attention/``): the packed codes of
Q and K (the signs of the int32 projections), then xor and popcount. The quadratic form
rewrites::

    keys = Transpose(Kᵀ)                                  [B, H, T, D]
    s    = IntBinaryAttention(Q, keys, W, m; quadratic)    int32 m_h (b - 2 popcount(cq ^ ck))
    p    = Shiftmax(Cast(s, int8), [exclude]; x0 = -X)     logits m_h s / X

so the score is the popcount similarity of the codes times the head's integer ``m_h``, and the
fitted temperature τ_h becomes the ratio ``m_h / X`` (``X`` shared by the site's heads, the
largest with every ``m_h = round(τ_h X)`` at most ``127 // b``). The probabilities then feed
the quantizer's own integer probabilities · V (``MatMulInteger`` + ``Requant``).

The linear form (``--attention-form linear``) replaces the Shiftmax and its product with V::

    y = IntBinaryAttention(Q, keys, W, V; linear, frac = k - 1)   int32
        = round(2**frac · Σ_j (s_ij + c) v_j / Σ_j (s_ij + c)),  c = b + 1

which has the units of the k-bit Shiftmax probabilities times V, so the quantizer's Requant
after that product stays as it is. All of it is exact integer arithmetic: numpy, numba and
TVM agree bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert.compiler.binary_attention_fit import (check_options, fit_projection,
                                                  fit_temperature, labels, one_blas_thread,
                                                  pair_auc, stack)
from edgert.compiler.binary_attention_match import SWAP_LAST, GraphIndex, Site
from edgert.errors import InputError
from edgert.ops import DOMAIN
from edgert.compiler.quantize.core import DEFAULT_ROW_LEN
from edgert.ops.shiftmax import spec as shiftmax
from edgert.ops.shiftmax.quantize import SHIFTMAX_BITS

__all__ = ["integer_binary_attention"]

METHOD = "linear"
"""The manifest's ``method`` for the integer hash (sign of an int8 projection)."""
_SCORE_NODES = ("Requant",)
"""Integer nodes the quantizer may put between the scores' MatMulInteger and the Shiftmax."""


def _signs(z: np.ndarray) -> np.ndarray:
    return np.where(z >= 0, 1.0, -1.0)


def int8_rows(proj: np.ndarray) -> np.ndarray:
    """The projection [G, b, D] as int8, each row scaled to a largest magnitude of 127
    (a positive scale per bit leaves its sign unchanged)."""
    top = np.abs(proj).max(-1, keepdims=True)
    return np.clip(np.rint(proj * 127.0 / np.where(top > 0, top, 1.0)), -127, 127).astype(np.int8)


def codes(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """±1 codes (float64) of vectors ``x`` [..., D] under int8 rows ``w`` [b, D] (0 -> +1)."""
    return _signs(np.asarray(x, np.float64) @ w.astype(np.float64).T)


def multipliers(tau: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Integer ``m_h`` in [1, 127 // bits] per head and the shared ``X`` with ``m_h / X`` close to
    τ_h: X is the largest integer keeping ``round(τ_h X) <= 127 // bits`` for every head."""
    top = 127 // bits
    x = max(1, int(np.floor((top + 0.5) / max(float(np.max(tau)), 1e-6))))
    m = np.clip(np.rint(np.asarray(tau, np.float64) * x), 1, top).astype(np.int64)
    return m, x


def _shiftmax_of(site: Site, int_graph: onnx.GraphProto, g: GraphIndex
                 ) -> tuple[onnx.NodeProto, onnx.NodeProto] | str:
    """The integer graph's Shiftmax of ``site`` and the scores' MatMulInteger under it, or why
    there is none to rewrite."""
    pattern = re.compile(re.escape(site.probs) + r"_q\d*")
    found = [n for n in int_graph.node if n.op_type == "Shiftmax" and n.domain == DOMAIN
             and pattern.fullmatch(n.output[0])]
    if len(found) != 1:
        return "its softmax has no Shiftmax of its own in the integer graph"
    node = g.producer.get(found[0].input[0])
    while node is not None and node.op_type in _SCORE_NODES and g.private(node.output[0]):
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "MatMulInteger" or not g.private(node.output[0]):
        return ("the quantizer adds the attention bias to the integer scores (integer codes "
                "take a mask only where it became Shiftmax's exclude input)")
    return found[0], node


def _fit(data: Any, bits: int, shared: bool, form: str
         ) -> tuple[np.ndarray, list[float], np.ndarray | None]:
    """int8 W [G, b, D], each head's pair AUC and (quadratic form) fitted temperature for one
    site."""
    blk = stack(data)
    blk = blk.pooled() if shared else blk
    y = labels(blk.probs, blk.valid)
    w = int8_rows(fit_projection(blk.q, blk.k, y, bits))
    sq = np.stack([codes(blk.q[h], w[h]) for h in range(len(w))])      # [G, N, S, b]
    sk = np.stack([codes(blk.k[h], w[h]) for h in range(len(w))])
    auc = [pair_auc(sq[h] @ np.swapaxes(sk[h], 1, 2), y[h]) for h in range(len(w))]
    if form != "quadratic":
        return w, auc, None
    heads = data.q[0].shape[1]
    pick = lambda a, h: None if a is None else a[:, h if a.shape[1] > 1 else 0]   # noqa: E731
    taus = []
    for h in range(len(w)):
        hs = range(heads) if shared else [h]
        s = [codes(q[:, i], w[h]) @ np.swapaxes(codes(k[:, i], w[h]), 1, 2)
             for q, k in zip(data.q, data.k) for i in hs]
        p = [pr[:, i] for pr in data.probs for i in hs]
        b = [pick(bi, i) for bi in data.bias for i in hs]
        taus.append(fit_temperature(s, p, b))
    return w, auc, np.array(taus)


def integer_binary_attention(int_model: onnx.ModelProto, fp32_model: onnx.ModelProto,
                             calib: Iterable[Mapping[str, Any]], bits: int | None = None,
                             form: str | None = None, *,
                             progress: Callable[[int, int], None] | None = None
                             ) -> tuple[onnx.ModelProto, dict]:
    """``int_model`` (the quantizer's integer graph of ``fp32_model``, shape-inferred) with its
    attention on integer binary codes (module docstring), and the manifest's
    ``binary_attention`` section: ``{"bits", "form", "method": "linear", "integer": True,
    "softmaxes", "replaced": [{"name", "heads", "shared", "pair_auc", and "temperature",
    "multipliers", "x0" (quadratic) or "frac" (linear)}], "kept": {name: why}}``.

    Args:
        calib: calibration feeds of ``fp32_model`` (dicts input name -> array).
        bits: code bits (16 by default); form: ``quadratic`` (default) or ``linear``.

    Raises:
        InputError: fine-tuned (kernelized) hashes, bad calibration data.
    """
    from edgert.compiler.binary_attention import collect, find_sites
    from edgert.compiler.binary_attention_finetune import carried_hashes
    from edgert.compiler.quantize.driver import live_nodes

    bits, form, _ = check_options(bits, form)
    if carried_hashes(fp32_model) is not None:
        raise InputError("the model carries fine-tuned kernelized hashes, which are float "
                         "arithmetic: compile it without --int-only")
    sites, kept = find_sites(fp32_model, form)
    section: dict[str, Any] = {"bits": bits, "form": form, "method": METHOD, "integer": True,
                               "replaced": [], "kept": kept, "softmaxes": len(sites) + len(kept)}
    g, fg = GraphIndex.of(int_model.graph), GraphIndex.of(fp32_model.graph)
    matched = []
    for site in sites:
        found = _shiftmax_of(site, int_model.graph, g)
        if form == "linear" and not isinstance(found, str):
            found = _values_of(found, g)
        if isinstance(found, str):
            kept[site.name] = found
        else:
            matched.append((site, *found))
    if not matched:
        return int_model, section
    data = collect(fp32_model, [m[0] for m in matched], calib, progress)
    out = onnx.ModelProto()
    out.CopyFrom(int_model)
    graph = out.graph
    new_of: dict[str, list[onnx.NodeProto]] = {}
    inits: list[onnx.TensorProto] = []
    with one_blas_thread():
        for i, ((site, sm, mm, *pv), d) in enumerate(zip(matched, data)):
            shared = site.heads is None
            w, auc, tau = _fit(d, bits, shared, form)
            prefix = f"binary_attention_{i}"
            entry = {"name": site.name, "heads": len(w), "shared": shared,
                     "pair_auc": [round(a, 4) for a in auc]}
            if form == "quadratic":
                m, x = multipliers(tau, bits)
                nodes, new = _site_nodes(prefix, sm, mm, w, m, x, _row_len(fg, site))
                new_of[sm.output[0]] = nodes
                entry.update({"temperature": [round(float(t), 5) for t in tau],
                              "multipliers": [int(v) for v in m], "x0": -x})
            else:
                nodes, new, frac = _linear_nodes(prefix, sm, mm, pv[0], w)
                new_of[sm.output[0]], new_of[pv[0].output[0]] = [], nodes
                entry["frac"] = frac
            inits += new
            section["replaced"].append(entry)
    nodes = []
    for node in graph.node:
        nodes.extend(new_of.get(node.output[0], [node]) if node.output else [node])
    keep = live_nodes(nodes, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(inits)
    used = {n for node in keep for n in node.input}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return out, section


def _row_len(g: GraphIndex, site: Site) -> int:
    """The static key count of ``site`` (the quantizer's default where it is symbolic)."""
    dims = g.dims(site.probs) or [None]
    return dims[-1] if isinstance(dims[-1], int) and dims[-1] > 0 else DEFAULT_ROW_LEN


def _values_of(found: tuple[onnx.NodeProto, onnx.NodeProto], g: GraphIndex
               ) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | str:
    """The Shiftmax, the scores' MatMulInteger and the product of the probabilities with
    int8 V that the linear form replaces, or why it cannot."""
    sm, mm = found
    if len(sm.input) > 1 and sm.input[1]:
        return "the linear integer form takes no mask (Shiftmax has an exclude input)"
    users = g.consumers.get(sm.output[0], [])
    if not g.private(sm.output[0]) or users[0].op_type not in ("MatMulInteger", "IntMatMul") \
            or users[0].input[0] != sm.output[0] or len(users[0].input) != 2:
        return "its integer probabilities are read by other than one product with V"
    v = users[0].input[1]
    t = g.types.get(v)
    if t is None or t.tensor_type.elem_type != TensorProto.INT8:
        return "its values are not int8 in the integer graph"
    return sm, mm, users[0]


def _hash_inits(prefix: str, w: np.ndarray, m: np.ndarray | None
                ) -> list[onnx.TensorProto]:
    """The projection [Hp, b, D] (int8) and the multipliers [Hp] (int32) as initializers."""
    arrays = {"proj": w} if m is None else {"proj": w, "multipliers": m.astype(np.int32)}
    return [numpy_helper.from_array(np.ascontiguousarray(a), f"{prefix}_{k}")
            for k, a in arrays.items()]


def _keys_node(prefix: str, mm: onnx.NodeProto) -> onnx.NodeProto:
    """``Transpose(Kᵀ)``: the keys [..., T, D] that IntBinaryAttention hashes."""
    return helper.make_node("Transpose", [mm.input[1]], [f"{prefix}_keys"], name=f"{prefix}_keys",
                            perm=SWAP_LAST)


def _site_nodes(prefix: str, sm: onnx.NodeProto, mm: onnx.NodeProto, w: np.ndarray,
                m: np.ndarray, x: int, row_len: int
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The quadratic form's nodes replacing Shiftmax ``sm`` (module docstring) and their
    initializers (``w`` [Hp, b, D], ``m`` [Hp]; Hp = 1 for a shared hash)."""
    n = lambda s: f"{prefix}_{s}"                                         # noqa: E731
    p = shiftmax.params(1.0 / x, row_len, k=SHIFTMAX_BITS)
    p["x0"] = -x                                    # floor(-1 / (1 / x)) may round past -x
    bits = w.shape[1]
    nodes = [
        _keys_node(prefix, mm),
        helper.make_node("IntBinaryAttention", [mm.input[0], n("keys"), n("proj"),
                                                n("multipliers")],
                         [n("scores32")], name=n("scores32"), domain=DOMAIN, bits=bits,
                         form="quadratic"),
        helper.make_node("Cast", [n("scores32")], [n("scores")], name=n("scores"),
                         to=TensorProto.INT8),
        helper.make_node("Shiftmax", [n("scores"), *sm.input[1:]], list(sm.output),
                         name=sm.name, domain=DOMAIN, **p),
    ]
    return nodes, _hash_inits(prefix, w, m.reshape(-1))


def _linear_nodes(prefix: str, sm: onnx.NodeProto, mm: onnx.NodeProto, pv: onnx.NodeProto,
                  w: np.ndarray) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], int]:
    """The linear form's nodes replacing Shiftmax ``sm`` and its product ``pv`` with V, their
    initializers and ``frac`` (the units of the k-bit probabilities: ``k - 1``)."""
    k = next((a.i for a in sm.attribute if a.name == "k"), SHIFTMAX_BITS)
    frac = int(k) - 1
    node = helper.make_node("IntBinaryAttention",
                            [mm.input[0], f"{prefix}_keys", f"{prefix}_proj", "", pv.input[1]],
                            list(pv.output), name=f"{prefix}_linear", domain=DOMAIN,
                            bits=w.shape[1], form="linear", frac=frac)
    return [_keys_node(prefix, mm), node], _hash_inits(prefix, w, None), frac
