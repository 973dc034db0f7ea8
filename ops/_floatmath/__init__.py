"""Float32 primitives whose every rounding is pinned, so that numpy, numba and TVM (which lets
LLVM contract a multiply and an add into an FMA) give the same bits. Used by the binary
attention ops (``docs/methods/binary-attention.md``), each three times:

    spec.py    numpy, the specification: ``exp_neg`` (a polynomial exp on float32)
    numba.py   scalar numba twins used inside the numba kernels: ``exp_neg_nb``
    tvm.py     TIR expression twins used inside the TE computes: ``exp_neg_tir``, ``fence``

The rules that make the three agree: only IEEE operations that are correctly rounded (``+ - * /``
and ``sqrt`` in float32, ``floor``), every product that meets an addition kept apart from it
(``llvm.arithmetic.fence`` in TIR; numpy and numba do not contract), sums in one stated order.
This package re-exports the numpy names only (importing it costs no numba).
"""

from edgert.ops._floatmath.spec import EXP_MAX, EXP_MIN, exp_neg

__all__ = ["EXP_MAX", "EXP_MIN", "exp_neg"]
