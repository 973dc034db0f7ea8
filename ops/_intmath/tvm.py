"""TIR expression twins of :mod:`edgert.ops._intmath.spec`, for use inside TE computes."""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from edgert.ops._intmath.spec import ISQRT_STEPS


def te_shift_exp(x: Any, x0: int, n: int) -> Any:
    """TIR twin of :func:`~edgert.ops._intmath.spec.shift_exp` for one int64 expression
    ``x <= 0`` (same arithmetic, same result)."""
    c = lambda v: tirx.const(v, "int64")  # noqa: E731
    x = x + tirx.shift_right(x, c(1)) - tirx.shift_right(x, c(4))
    x = tirx.max(x, c(n * x0))
    # x <= 0 and x0 < 0: divide the non-negative -x by |x0|, where floor == truncation. (TVM's
    # floordiv lowering by the constant -1 trips an analyzer binding error, so avoid it.)
    qi = tirx.truncdiv(-x, c(-x0))
    rem = x - qi * c(x0)
    e = tirx.shift_right(rem, c(1)) - c(x0)
    return tirx.shift_left(e, c(n) - qi)


def te_isqrt(v: Any) -> Any:
    """TE: exact floor square root, elementwise, of an int64 tensor with values in ``[1, 2**63)``.

    Same algorithm as :func:`~edgert.ops._intmath.spec.isqrt`: the bit length (64 - count of
    leading zeros), y0 = 2**ceil(bits/2), then :data:`ISQRT_STEPS` Newton steps, each kept only
    while it decreases (once it stops, it stays). One small stage per step: nesting the steps
    in one expression makes TVM's simplifier blow up.

    Returns:
        int64 tensor of ``v``'s shape.
    """
    c = lambda k: tirx.const(k, "int64")  # noqa: E731

    def start(*i):
        bits = c(64) - tirx.clz(v(*i)).astype("int64")      # bit length of v >= 1
        return tirx.shift_left(c(1), tirx.shift_right(bits + c(1), c(1)))   # 2**ceil(bits/2)

    def newton_from(y: Any, step: int) -> Any:
        def newton(*i):
            # y(*i) is bound once (Let): a GPU schedule that inlines the steps into one
            # expression then grows linearly in the steps, not 3**steps.
            yv = tirx.Var(f"isqrt_y{step}_v", "int64")
            z = tirx.shift_right(yv + tirx.truncdiv(v(*i), yv), c(1))   # v, y > 0
            return tirx.Let(yv, y(*i), tirx.min(z, yv))   # = z while it decreases
        return newton

    y = te.compute(v.shape, start, name="isqrt_y0")
    for step in range(ISQRT_STEPS):
        y = te.compute(v.shape, newton_from(y, step), name=f"isqrt_y{step + 1}")
    return y
