"""Operations of one ``LutMatMul`` call, from the spec's arithmetic and the weight layout.

Notation: ``R`` activation rows (the product of ``A``'s leading dimensions), ``K``, ``N``, ``b``
weight bits, ``F = K / 4`` 4-groups, ``NG = K / group_size`` weight groups, ``KT = K / tile_k``
K tiles. Sign choices ``+-x_j`` fold into the adds; ``zc`` (per group and column) is a constant
of the weights, not counted; a division counts as a multiply; conversions are free.

Table lookup (``dequant = 0``), per row:
    tables         per 4-group 8 entries of 3 adds, 8 mirrored entries (negations, counted
                   as adds): 32 adds per 4-group, in float32 (float A) or int32 (int8 A)
    lookups        one per (plane, 4-group, column): ``b * F * N``, each summed in int16
                   (``b * F * N`` int16 adds, per (plane, K tile) at most 16 of them)
    widening       per (plane, K tile, column) a shift by the plane (``<< i``) and an int32 add
float32 A, also per row:
    table scales   per 4-group 3 fp32 adds (``|x0| + |x1| + |x2| + |x3|``) and 1 compare (max);
                   per group 1 fp32 multiply (``/ 127``) and 1 compare (``ts > 0``)
    quantization   per table entry (16 per 4-group) 1 fp32 multiply (``T / ts``) and 2
                   compares (the clip to +-127)
    row sums       per 4-group 1 fp32 add (``r += T[15]``)
    epilogue       per (group, column) ``s * ((ts * A + zc * r) * 0.5)`` added into ``y``:
                   4 fp32 multiplies, 2 fp32 adds
int8 A, also per row:
    int8 tables    (``table_bits = 8``) per 4-group 3 int32 adds (abs sums) and 1 compare (max);
                   per K tile 3 compares (the shift); per table entry ``round_half_even(T /
                   2**sh)``: 2 int32 adds, 3 shifts (two shifts and the ``& 1`` mask), 1
                   compare (``sh == 0``); per (K tile, column) 1 shift (``<< sh``)
    zero term      ``K`` int32 adds (row sums per group), per (group, column) 1 int32 multiply
                   and 1 int32 add

Dequantize (``dequant = 1``): per weight (``K * N``, once a call) its code from the bit
planes (``2b`` shifts, ``b - 1`` int32 adds) and ``s * ((2u - z2) * 0.5)`` (float32: 3 fp32
multiplies, 1 fp32 add) or ``2u - z2`` (int8 A: 1 shift, 1 int32 add); then ``R * K * N``
multiply-adds (fp32, or int32 for int8 A).

Bytes: every input read once (the packed weight: :func:`weight_bytes`), the float32 / int32
output written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.ops.lut_matmul.layout import G, LutLayout
from edgert.ops._common.op import OpCounts, tensor_bytes


def weight_bytes(attrs: Mapping[str, Any]) -> int:
    """Bytes of the packed weight of a node with these layout attributes: ``N_pad * K * b / 8``
    (``N_pad``: N rounded up to whole tiles of ``tile_n`` columns)."""
    return int(np.prod(LutLayout.from_attrs(dict(attrs)).planes_shape, dtype=np.int64))


def counts(input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
           attrs: Mapping[str, Any]) -> OpCounts:
    """Counts for inputs ``(A, W, scales?, zero_points?)`` of these shapes / dtypes (``None``
    for an absent optional input) and the node's ONNX ``attrs`` (the layout, ``table_bits``,
    ``dequant``)."""
    layout = LutLayout.from_attrs(dict(attrs))
    a_shape = input_shapes[0]
    rows = int(np.prod(a_shape[:-1], dtype=np.int64))
    float_acts = np.dtype(input_dtypes[0]) == np.float32
    table_bits = attrs.get("table_bits")
    if bool(attrs.get("dequant", 0)):
        ops = _dequant(layout, rows, float_acts)
    elif float_acts:
        ops = _lookup(layout, rows, float_acts) + _float_tables(layout).times(rows)
    else:
        int8_tables = table_bits is not None and int(table_bits) == 8
        ops = _lookup(layout, rows, float_acts) + _int_extras(layout, int8_tables).times(rows)
    moved = OpCounts(bytes_read=tensor_bytes(input_shapes, input_dtypes),
                     bytes_written=rows * layout.N * 4)
    return ops + moved


def _lookup(layout: LutLayout, rows: int, float_acts: bool) -> OpCounts:
    """Tables, lookups and their widening, for ``rows`` rows."""
    f, b, n = layout.K // G, layout.bits, layout.N
    kt = layout.K // layout.tile_k
    tables = OpCounts(fp32_add=32 * f) if float_acts else OpCounts(int32_add=32 * f)
    per_row = tables + OpCounts(lookups=b * f * n, int16_add=b * f * n,
                                shifts=b * kt * n, int32_add=b * kt * n)
    return per_row.times(rows)


def _float_tables(layout: LutLayout) -> OpCounts:
    """Per row, float32 activations: table scales, quantization, row sums, the epilogue."""
    f, ng, n = layout.K // G, layout.n_groups, layout.N
    return OpCounts(fp32_add=3 * f + f + 2 * ng * n, compares=f + ng + 2 * 16 * f,
                    fp32_mul=ng + 16 * f + 4 * ng * n)


def _int_extras(layout: LutLayout, int8_tables: bool) -> OpCounts:
    """Per row, int8 activations: the int8 tables' shifts (``table_bits = 8``), the zero term."""
    f, ng, n, k = layout.K // G, layout.n_groups, layout.N, layout.K
    kt = k // layout.tile_k
    zero = OpCounts(int32_add=k + ng * n, int32_mul=ng * n)
    if not int8_tables:
        return zero
    return zero + OpCounts(int32_add=3 * f + 2 * 16 * f, compares=f + 3 * kt + 16 * f,
                           shifts=3 * 16 * f + kt * n)


def _dequant(layout: LutLayout, rows: int, float_acts: bool) -> OpCounts:
    """``dequant = 1``: the dequantized weight (once), then the matmul."""
    kn, b = layout.K * layout.N, layout.bits
    codes = OpCounts(shifts=2 * b * kn, int32_add=(b - 1) * kn)
    if float_acts:
        weight = OpCounts(fp32_mul=3 * kn, fp32_add=kn)
        product = OpCounts(fp32_mul=kn, fp32_add=kn)
    else:
        weight = OpCounts(shifts=kn, int32_add=kn)
        product = OpCounts(int32_mul=kn, int32_add=kn)
    return codes + weight + product.times(rows)
