"""Integer primitives shared by the I-ViT ops (``docs/methods/ivit.md``), each three times:

    spec.py    numpy, the specification (int64 throughout): ``shift_exp``, ``isqrt``
    numba.py   scalar numba twins used inside the numba kernels: ``shift_exp_nb``, ``isqrt_nb``
    tvm.py     TIR expression twins used inside the TE computes: ``te_shift_exp``

Shifts are arithmetic (floor toward -inf); ``//`` of a non-negative numerator by a positive
divisor is floor. This package re-exports the numpy names only (importing it costs no numba).
"""

from edgert.ops._intmath.spec import INT31_MAX, isqrt, shift_exp

__all__ = ["INT31_MAX", "isqrt", "shift_exp"]
