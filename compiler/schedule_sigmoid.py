"""Float32 sigmoid as a polynomial exp that LLVM vectorizes.

TVM 0.27 legalizes ``relax.sigmoid`` to ``1 / (1 + exp(-x))`` with libm's scalar ``expf`` per
element, which also keeps LLVM from vectorizing whatever operator fusion merges it with: the
SiLU (``x * sigmoid(x)``) after every convolution of YOLO-family detectors, fused with the
convolution's to_nchw and bias (:mod:`edgert.compiler.schedule_conv`).
:func:`vectorizable_sigmoid` computes it with
:func:`edgert.compiler.schedule_cpu.exp_expr` instead (relative error 7.9e-8), an elementwise
TE compute that fusion treats as before. Relative error of the sigmoid against float64: below
3e-7 over [-87, 88] (``tests/test_schedule_sigmoid.py``); past the exp's clamped range it gives
1 (x > 87.3) and about 4e-39 (x < -88.4), where the exact values are within 1e-38 of those.
"""

from __future__ import annotations

from typing import Any


def sigmoid_te(x: Any) -> Any:
    """TE: float32 ``1 / (1 + exp(-x))``, elementwise, with the polynomial exp."""
    from tvm import te, tirx

    from edgert.compiler.schedule_cpu import exp_expr

    one = tirx.const(1.0, "float32")
    return te.compute(x.shape, lambda *i: one / (one + exp_expr(-x(*i))), name="sigmoid_poly")


def vectorizable_sigmoid(mod: Any) -> Any:
    """Every float32 ``relax.sigmoid`` of ``mod`` (before legalization) as :func:`sigmoid_te`."""
    import tvm

    from edgert.compiler.relax_rewrite import rewrite_calls

    sigmoid = tvm.ir.Op.get("relax.sigmoid")

    def match(call: Any) -> bool:
        return call.op.same_as(sigmoid) and str(getattr(call.ty, "dtype", "")) == "float32"

    return rewrite_calls(mod, match,
                         lambda rw, call: rw.builder_.call_te(sigmoid_te, call.args[0]))
