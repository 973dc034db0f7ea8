"""TIR expression twins of :mod:`edgert.ops._floatmath.spec`, for use inside TE computes.

TVM lets LLVM contract ``a * b + c`` into one FMA (one rounding instead of two); :func:`fence`
(``llvm.arithmetic.fence``) keeps a product apart, so every product that meets an addition
goes through it and the TIR rounds as the spec does.

CUDA: TVM compiles CUDA with ``--use_fast_math`` (contracted multiply-adds, approximate division
and square root). Inside :func:`cuda_rounding` the fenced product becomes ``__fmul_rn`` (never
contracted), :func:`div` ``__fdiv_rn`` and :func:`sqrt` ``__fsqrt_rn`` (IEEE round to nearest
whatever the flags), so a CUDA kernel built from the same TE compute rounds as the spec too.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from tvm import tirx

from edgert.ops._floatmath.spec import COEFFS, EXP_MAX, EXP_MIN, HALF, LN2_HI, LN2_LO, LOG2E


_CUDA = contextvars.ContextVar("edgert_floatmath_cuda", default=False)


@contextlib.contextmanager
def cuda_rounding() -> Iterator[None]:
    """Within: :func:`fence`, :func:`div` and :func:`sqrt` emit CUDA's round-to-nearest
    intrinsics (module docstring) instead of the LLVM fence and plain operators."""
    token = _CUDA.set(True)
    try:
        yield
    finally:
        _CUDA.reset(token)


def in_cuda() -> bool:
    """Whether a TE compute is being built for CUDA (inside :func:`cuda_rounding`)."""
    return _CUDA.get()


def fence(x: Any) -> Any:
    """``x`` (a float PrimExpr) through ``llvm.arithmetic.fence``: no FMA across it. Under
    :func:`cuda_rounding` a product ``a * b`` becomes ``__fmul_rn(a, b)`` (anything else is
    returned as is: only a product can be contracted)."""
    if _CUDA.get():
        if isinstance(x, tirx.Mul):
            return tirx.call_pure_extern(str(x.ty), "__fmul_rn", x.a, x.b)
        return x
    return tirx.call_llvm_pure_intrin(str(x.ty), "llvm.arithmetic.fence", x)


def div(a: Any, b: Any) -> Any:
    """float32 ``a / b`` rounded to nearest (``__fdiv_rn`` under :func:`cuda_rounding`)."""
    if _CUDA.get():
        return tirx.call_pure_extern("float32", "__fdiv_rn", a, b)
    return a / b


def sqrt(x: Any) -> Any:
    """float32 square root rounded to nearest (``__fsqrt_rn`` under :func:`cuda_rounding`)."""
    if _CUDA.get():
        return tirx.call_pure_extern("float32", "__fsqrt_rn", x)
    return tirx.sqrt(x)


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
