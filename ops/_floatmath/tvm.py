"""TIR expression twins of :mod:`edgert.ops._floatmath.spec`, for use inside TE computes.

TVM lets LLVM contract ``a * b + c`` into one FMA (one rounding instead of two); :func:`fence`
(``llvm.arithmetic.fence``) keeps a product apart, so every product that meets an addition
goes through it and the TIR rounds as the spec does.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx

from edgert.ops._floatmath.spec import COEFFS, EXP_MAX, EXP_MIN, HALF, LN2_HI, LN2_LO, LOG2E


def fence(x: Any) -> Any:
    """``x`` (a float PrimExpr) through ``llvm.arithmetic.fence``: no FMA across it."""
    return tirx.call_llvm_pure_intrin(str(x.ty), "llvm.arithmetic.fence", x)


def _f(v: float) -> Any:
    return tirx.const(float(v), "float32")


def _let(name: str, value: Any, body: Any) -> Any:
    """``body(v)`` with ``v`` bound to ``value`` once (a TIR Let: the expression stays a DAG)."""
    value = tirx.const(value, "float32") if isinstance(value, float) else value
    value = value.asobject() if hasattr(value, "asobject") else value      # a tensor element
    var = tirx.Var(name, value.ty)
    return tirx.Let(var, value, body(var))


def exp_neg_tir(t: Any) -> Any:
    """TIR twin of :func:`~edgert.ops._floatmath.spec.exp_neg` for one float32 PrimExpr."""
    def with_t(tv: Any) -> Any:
        tc = tirx.max(tirx.min(tv, _f(EXP_MAX)), _f(EXP_MIN))
        return _let("exp_tc", tc, lambda tcv: _let(
            "exp_k", tirx.floor(fence(tcv * _f(LOG2E)) + _f(HALF)),
            lambda kv: _let("exp_r", (tcv - fence(kv * _f(LN2_HI))) - fence(kv * _f(LN2_LO)),
                            lambda rv: tirx.Select(tv < _f(EXP_MIN), _f(0.0),
                                                   fence(_poly(rv) * _pow2(kv))))))

    return _let("exp_t", t, with_t)


def _poly(r: Any) -> Any:
    p = _f(COEFFS[6])
    for c in COEFFS[5::-1]:
        p = fence(p * r) + _f(c)
    return p


def _pow2(k: Any) -> Any:
    """2**k (k a float32 holding an integer) from its bit pattern, k clamped to [-126, 127]."""
    ki = tirx.max(tirx.min(k.astype("int32"), tirx.const(127, "int32")),
                  tirx.const(-126, "int32"))
    return tirx.reinterpret("float32", tirx.shift_left(ki + tirx.const(127, "int32"),
                                                        tirx.const(23, "int32")))
