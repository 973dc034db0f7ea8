"""Relax rewrites shared by the kernel schedules: replace matching calls of a Relax module
(``call_tir`` of named PrimFuncs, or any call a predicate accepts) by what a callback emits,
adding each kernel PrimFunc once; and the ``num-cores`` of a TVM target."""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from typing import Any


def num_cores(tvm_target: Any) -> int:
    """``num-cores`` of a TVM target (the machine's CPU count when the target does not say)."""
    try:
        value = tvm_target.attrs.get("num-cores")
    except Exception:   # noqa: BLE001 - attrs of an unusual target kind
        value = None
    if value:
        return max(int(value), 1)
    return max(os.cpu_count() or 1, 1)


def static_int(dim: Any) -> int | None:
    """A shape dim as an int when it is static, else None."""
    from tvm import tirx

    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def dims_product(dims: list) -> Any:
    """Product of shape dims (PrimExprs), folded when static."""
    from tvm import tirx

    out: Any = tirx.IntImm("int64", 1)
    for d in dims:
        out = tirx.IntImm("int64", int(out.value) * int(d.value)) if (
            isinstance(out, tirx.IntImm) and isinstance(d, tirx.IntImm)) else out * d
    return out


def same_dims(xs: list, ys: list) -> bool:
    """Whether two lists of shape dims are provably equal, dim by dim."""
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()
    return len(xs) == len(ys) and all(
        x.same_as(y) or analyzer.can_prove_equal(x, y) for x, y in zip(xs, ys))


def bound_value(rw: Any, expr: Any) -> Any:
    """What a dataflow variable is bound to in the rewriter ``rw``, following Var-to-Var
    bindings (``expr`` itself when it is not a bound Var)."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        value = rw.lookup_binding(expr)
        if value is None:
            break
        expr = value
    return expr


def bound_call(rw: Any, expr: Any, op_name: str) -> Any | None:
    """The call of the Relax op ``op_name`` (e.g. ``"relax.permute_dims"``) that ``expr`` is
    bound to, else None."""
    import tvm
    from tvm import relax

    value = bound_value(rw, expr)
    if isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get(op_name)):
        return value
    return None


def permute_axes(call: Any, ndim: int) -> list[int]:
    """The axes of a ``permute_dims`` call on an ``ndim``-D tensor (None: all reversed)."""
    if call.attrs.axes is None:
        return list(range(ndim))[::-1]
    return [int(a) % ndim for a in call.attrs.axes]


def rewrite_call_tirs(mod: Any, names: Container[str],
                      rewrite: Callable[[Any, Any], Any | None]) -> Any:
    """Rewrite every ``call_tir`` of a PrimFunc named in ``names`` in the Relax functions of
    ``mod``: ``rewrite(rw, call)`` returns the replacement (emitting what it needs with
    ``rw.builder_``) or None to keep the call; ``rw.add_kernel(key, func, name)`` adds a kernel
    PrimFunc once (opaque to operator fusion) under ``rw.kernels[key]``. PrimFuncs left unused
    are removed; ``mod`` itself comes back when nothing was rewritten."""
    import tvm

    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    return rewrite_calls(mod, lambda call: call.op.same_as(call_tir_op)
                         and isinstance(call.args[0], tvm.ir.GlobalVar)
                         and call.args[0].name_hint in names, rewrite)


def rewrite_calls(mod: Any, match: Callable[[Any], bool],
                  rewrite: Callable[[Any, Any], Any | None]) -> Any:
    """:func:`rewrite_call_tirs` for every Relax call that ``match(call)`` accepts."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.kernels: dict[tuple, Any] = {}
            self.rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if isinstance(call, relax.Call) and match(call):
                new = rewrite(self, call)
                if new is not None:
                    self.rewritten += 1
                    return new
            return call

        def add_kernel(self, key: tuple, func: Any, name: str) -> None:
            self.kernels[key] = self.builder_.add_func(
                func.with_attr("op_pattern", 8), name)          # kOpaque: not fused

    rewriter = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    new_mod = rewriter.builder_.get()
    if not rewriter.rewritten:
        return mod
    return relax.transform.DeadCodeElimination()(new_mod)

