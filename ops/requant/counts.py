"""Operations of one ``Requant`` call, from the spec's arithmetic.

For ``q`` of N elements and C channels (C = multiplier size, 1 per tensor), the spec computes
``round = 1 << (e - 1)`` once per channel (C int64 adds for ``e - 1``, C shifts), then per element

    acc = q * m + round          1 int64 multiply, 1 int64 add
    v   = acc >> e               1 shift
    out = clip(v, lo, hi)        2 compares

Bytes: ``q``, ``multiplier`` and ``shift`` read once, the output (``to``) written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for inputs ``(q, multiplier, shift)`` of these shapes/dtypes and ONNX ``attrs``."""
    from edgert.ops.requant.schema import node_kwargs

    n = int(np.prod(input_shapes[0], dtype=np.int64))
    c = int(np.prod(input_shapes[1], dtype=np.int64))
    out = np.dtype(node_kwargs(attrs)["to"])
    return OpCounts(int64_mul=n, int64_add=n + c, shifts=n + c, compares=2 * n,
                    bytes_read=tensor_bytes(input_shapes, input_dtypes),
                    bytes_written=n * out.itemsize)
