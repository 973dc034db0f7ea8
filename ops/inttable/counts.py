"""Operations of one ``IntTable`` call, from the spec's arithmetic.

Per element of ``q``:

    k = q + 128                  1 int32 add
    out = table[k]               1 lookup

Bytes: ``q`` and the 256-entry table read once, the output (the table's dtype) written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops._common.op import OpCounts, tensor_bytes


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for inputs ``(q, table)`` of these shapes/dtypes (``attrs`` change nothing)."""
    n = int(np.prod(input_shapes[0], dtype=np.int64))
    out = np.dtype(input_dtypes[1])
    return OpCounts(int32_add=n, lookups=n, bytes_read=tensor_bytes(input_shapes, input_dtypes),
                    bytes_written=n * out.itemsize)
