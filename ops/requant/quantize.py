"""Quantizer rule: the ``edgert.Requant`` insertion — the one place a tensor's dtype or scale
changes (:meth:`edgert.compiler.quantize.core.Quantizer.need` calls :func:`insert` through the
op registry).

``Requant(x, m, e)`` rescales an integer tensor by ``src_scale / scale`` as the dyadic number
``m * 2^-e`` (per channel along ``axis`` when the source scale is per channel), rounds and
clamps to ``[lo, hi]``. No ONNX op is rewritten into it (``ONNX_OPS`` is empty).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

from edgert.ops.requant.spec import OP_TYPE, params

ONNX_OPS: tuple[str, ...] = ()
_ELEM = {"int8": TensorProto.INT8, "int16": TensorProto.INT16, "int32": TensorProto.INT32}


def insert(q: Any, src: str, src_scale: np.ndarray, axis: int, dtype: str, scale: float,
           qmax: int, lo: int) -> str:
    """Emit ``Requant(src)`` from ``src_scale`` (float64, () or [C] along ``axis``) to the
    per-tensor ``scale``, clamped to ``[lo, qmax]`` as ``dtype`` (int8/int16/int32); returns
    the output's name. Raises ``q.fail(...)`` when the ratio has no dyadic form."""
    from edgert.ops import DOMAIN

    try:
        m, e = params(src_scale / scale)
    except ValueError as err:
        raise q.fail(str(err)) from None
    elem = _ELEM[dtype]
    return q.emit(OP_TYPE, [src, q.const(m.reshape(-1), f"{src}_m"),
                            q.const(e.reshape(-1), f"{src}_e")],
                  src, elem, domain=DOMAIN, to=elem, lo=lo, hi=qmax, axis=axis)
