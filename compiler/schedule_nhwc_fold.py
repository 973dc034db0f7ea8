"""The bias and activations around a float32 depthwise convolution that the NHWC depthwise
kernel (:func:`edgert.compiler.schedule_depthwise.depthwise_nhwc`) applies itself, found in the
Relax bindings of :mod:`edgert.compiler.schedule_nhwc`: after it (:func:`epilogue`: a bias add,
Relu / Clip / ``maximum`` / ``minimum`` by constants, PyTorch's hard-swish) and before it
(:func:`prologue`: the previous layer's bias and clamp, applied to each tap), each binding used
only by the next one; and the constant and shape look-ups that matching needs. ``rw`` is the
rewrite's mutator (``bindings``: variable -> value of the source function, ``users``: variable
-> the variables bound from it, ``nhwc``: variable -> its NHWC value, ``fused``: the bindings
folded into a kernel)."""

from __future__ import annotations

from typing import Any

import numpy as np

CLAMPS = {"maximum": 0, "minimum": 1}
"""``call_tir`` PrimFuncs of TVM's ONNX Clip (``maximum`` / ``minimum`` with a scalar): the
clamp bound each sets (0: lower, 1: upper)."""



def epilogue(rw: Any, var: Any, channels: int) -> tuple[np.ndarray | None, tuple, Any]:
    """The bias and clamp that a depthwise convolution's kernel can apply: a following add of
    a constant channel vector, then Relu / Clip / ``maximum`` / ``minimum`` by constants, each
    the only user of the one before. Returns ``(bias [C] or None, (lo, hi), last variable)``
    and marks the folded bindings in ``rw.fused``."""
    import tvm
    from tvm import relax

    bias, lo, hi, last = None, -np.inf, np.inf, var
    folded = []

    def only_user(v: Any) -> Any:
        users = rw.users.get(v, [])
        return users[0] if len(users) == 1 and isinstance(users[0], relax.DataflowVar) else None

    nxt = only_user(last)
    value = rw.bindings.get(nxt) if nxt is not None else None
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == "relax.add" and len(value.args) == 2):
        other = value.args[1] if value.args[0].same_as(last) else value.args[0]
        vec = constant_value(rw, other)
        shape = static_shape(other)
        if vec is not None and shape is not None and vec.size == channels and (
                [1] * (4 - len(shape)) + shape)[2:] == [1, 1]:
            bias, last = vec.reshape(channels), nxt
            folded.append(nxt)
    while True:
        nxt = only_user(last)
        value = rw.bindings.get(nxt) if nxt is not None else None
        bounds = _clamp_of(rw, value, last)
        if bounds is None:
            break
        new_lo, new_hi = max(lo, bounds[0]), min(hi, bounds[1])
        if new_lo > new_hi:
            break
        lo, hi, last = new_lo, new_hi, nxt
        folded.append(nxt)
    swish = _hardswish(rw, last)
    if swish is not None:
        folded += swish[0]
        last = swish[0][-1]
    rw.fused.update(folded)
    return bias, (lo, hi), last, None if swish is None else swish[1]


def _hardswish(rw: Any, x: Any) -> tuple[list, tuple[float, float, float, float]] | None:
    """``(bindings, (shift, lo, hi, scale))`` when ``x`` feeds only a hard-swish as exported
    by PyTorch, ``x * (clamp(x + shift, lo, hi) / scale)`` (the bindings of the add, clamps,
    divide and multiply, the multiply last), else None."""
    from tvm import relax

    users = rw.users.get(x, [])
    if len(users) != 2 or not all(isinstance(u, relax.DataflowVar) for u in users):
        return None
    for add, mul in (users, users[::-1]):
        value = rw.bindings.get(add)
        if not _is_op(value, "relax.add") or len(value.args) != 2 \
                or not any(a.same_as(x) for a in value.args):
            continue
        shift = _scalar_value(rw, value.args[1] if value.args[0].same_as(x) else value.args[0])
        chain, lo, hi, cur = [add], -np.inf, np.inf, add
        while shift is not None and len(rw.users.get(cur, [])) == 1:
            nxt = rw.users[cur][0]
            bounds = _clamp_of(rw, rw.bindings.get(nxt), cur)
            if bounds is None:
                break
            lo, hi, cur = max(lo, bounds[0]), min(hi, bounds[1]), nxt
            chain.append(nxt)
        div = rw.users.get(cur, [None])
        value = rw.bindings.get(div[0]) if len(div) == 1 else None
        if len(chain) < 2 or lo > hi or not _is_op(value, "relax.divide") \
                or not value.args[0].same_as(cur) or rw.users.get(div[0]) != [mul]:
            continue
        scale = _scalar_value(rw, value.args[1])
        value = rw.bindings.get(mul)
        if scale is None or not _is_op(value, "relax.multiply") or len(value.args) != 2 \
                or not (value.args[0].same_as(x) and value.args[1].same_as(div[0])
                        or value.args[1].same_as(x) and value.args[0].same_as(div[0])):
            continue
        return [*chain, div[0], mul], (shift, lo, hi, scale)
    return None


def _clamp_of(rw: Any, value: Any, x: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` when ``value`` clamps ``x`` by constants (Relu, Clip, ``call_tir``
    maximum / minimum of a scalar), else None."""
    found = _clamp_input(rw, value)
    return found[1] if found is not None and found[0].same_as(x) else None


def _clamp_input(rw: Any, value: Any) -> tuple[Any, tuple[float, float]] | None:
    """``(x, (lo, hi))`` when ``value`` clamps a variable ``x`` by constants, else None."""
    from tvm import relax

    if not isinstance(value, relax.Call) or not value.args:
        return None
    clamp = call_tir_clamp(rw, value, require_nhwc=False)
    if clamp is not None:
        bound = _scalar_value(rw, clamp[2])
        if bound is None:
            return None
        return clamp[0], ((bound, np.inf) if clamp[1] == 0 else (-np.inf, bound))
    if not isinstance(value.args[0], relax.Var):
        return None
    if _is_op(value, "relax.nn.relu"):
        return value.args[0], (0.0, np.inf)
    if _is_op(value, "relax.clip") and len(value.args) == 3:
        bounds = [_prim_float(a) for a in value.args[1:]]
        return None if None in bounds else (value.args[0], (bounds[0], bounds[1]))
    return None


def prologue(rw: Any, conv: Any, x: Any, channels: int) -> tuple | None:
    """``(source, bias [C] or None, (lo, hi))`` when the input ``x`` of the depthwise
    convolution ``conv`` is ``clamp(source + bias)`` (an add of a constant channel vector and/or
    clamps by constants, each binding used only by the next one and ``x`` only by ``conv``),
    ``source`` an NHWC value: the depthwise kernel can apply them to its taps. Else None."""
    from tvm import relax

    def single(v: Any, user: Any) -> bool:
        return isinstance(v, relax.DataflowVar) and rw.users.get(v) == [user]

    bounds, cur, user = [], x, conv
    while single(cur, user):
        found = _clamp_input(rw, rw.bindings.get(cur))
        if found is None:
            break
        bounds.append(found[1])
        cur, user = found[0], cur
    bias = None
    value = rw.bindings.get(cur)
    if single(cur, user) and _is_op(value, "relax.add") and len(value.args) == 2:
        for k in (0, 1):
            vec, shape = constant_value(rw, value.args[1 - k]), static_shape(value.args[1 - k])
            if vec is not None and shape is not None and vec.size == channels and (
                    [1] * (4 - len(shape)) + shape)[2:] == [1, 1]:
                bias, cur = vec.reshape(channels), value.args[k]
                break
    if (bias is None and not bounds) or cur not in rw.nhwc:
        return None
    lo, hi = -np.inf, np.inf
    for a, b in reversed(bounds):       # in the order they are applied
        lo, hi = max(lo, a), min(hi, b)
        if lo > hi:
            return None
    return cur, bias, (lo, hi)


def _is_op(value: Any, name: str) -> bool:
    import tvm
    from tvm import relax

    return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == name)


def call_tir_clamp(rw: Any, call: Any, require_nhwc: bool = True) -> tuple | None:
    """``(x, 0 or 1, bound)`` for ``call_tir(maximum* / minimum*, (x, bound))`` with a 0-d
    ``bound`` and the result shaped as ``x`` (TVM's ONNX Clip), else None."""
    import tvm

    if not call.op.same_as(tvm.ir.Op.get("relax.call_tir")):
        return None
    gv, args = call.args[0], call.args[1]
    if not isinstance(gv, tvm.ir.GlobalVar) or len(getattr(args, "fields", ())) != 2:
        return None
    which = next((k for name, k in CLAMPS.items()
                  if gv.name_hint.rstrip("0123456789") == name), None)
    x, bound = args.fields
    if which is None or (require_nhwc and x not in rw.nhwc) or static_shape(bound) != []:
        return None
    if static_shape(x) is None or static_shape(x) != static_shape_of(call.ty):
        return None
    return x, which, bound


def _prim_float(expr: Any) -> float | None:
    """The number of a constant scalar argument (``IntImm`` / ``FloatImm``, possibly inside a
    ``PrimValue``), else None."""
    from tvm import tirx

    expr = getattr(expr, "value", None) if not isinstance(expr, (tirx.IntImm,
                                                                 tirx.FloatImm)) else expr
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm)):
        return float(expr.value)
    return None


def _scalar_value(rw: Any, expr: Any) -> float | None:
    """The value of a 0-d float expression built from constants by ``where`` and ``isnan``
    (TVM's ONNX Clip bounds), else None."""
    import tvm
    from tvm import relax

    expr = rw.bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr
    if isinstance(expr, tvm.ir.GenericConst):
        value = expr.value.numpy()
        return float(value) if value.size == 1 else None
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        args = [_scalar_value(rw, a) for a in expr.args]
        if None in args:
            return None
        if expr.op.name == "relax.isnan":
            return float(np.isnan(args[0]))
        if expr.op.name == "relax.where":
            return args[1] if args[0] else args[2]
    return None


def constant_value(rw: Any, expr: Any) -> np.ndarray | None:
    """The numpy value of a constant, possibly through variables bound to ``reshape`` of it
    (the ONNX importer's bias vectors), else None."""
    import tvm
    from tvm import relax

    from edgert.compiler.schedule_conv import _constant

    value = _constant(rw, expr)
    if value is not None:
        return value
    bound = rw.bindings.get(expr) if isinstance(expr, relax.Var) else None
    if isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op) \
            and bound.op.name == "relax.reshape":
        inner = constant_value(rw, bound.args[0])
        shape = static_shape(expr)
        if inner is not None and shape is not None:
            return inner.reshape(shape)
    return None


def static_shape(expr: Any) -> list[int] | None:
    """The static shape of a tensor expression, else None."""
    return static_shape_of(getattr(expr, "ty", None))


def static_shape_of(ty: Any) -> list[int] | None:
    from tvm import relax, tirx

    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr) or any(
            not isinstance(d, tirx.IntImm) for d in shape.values):
        return None
    return [int(d) for d in shape.values]
