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


def exp_neg_tir(t: Any) -> Any:
    """TIR twin of :func:`~edgert.ops._floatmath.spec.exp_neg` for one float32 PrimExpr."""
    tc = tirx.max(tirx.min(t, _f(EXP_MAX)), _f(EXP_MIN))
    k = tirx.floor(fence(tc * _f(LOG2E)) + _f(HALF))
    r = (tc - fence(k * _f(LN2_HI))) - fence(k * _f(LN2_LO))
    p = _f(COEFFS[6])
    for c in COEFFS[5::-1]:
        p = fence(p * r) + _f(c)
    ki = tirx.max(tirx.min(k.astype("int32"), tirx.const(127, "int32")),
                  tirx.const(-126, "int32"))
    two_k = tirx.reinterpret("float32", tirx.shift_left(ki + tirx.const(127, "int32"),
                                                         tirx.const(23, "int32")))
    return tirx.Select(t < _f(EXP_MIN), _f(0.0), fence(p * two_k))
