"""``LutMatMul``: low-bit weight x activation matmul by table lookup (T-MAC), no dequantization.

    layout.py        LutLayout (every packed-weight parameter), operand checks
    spec.py          reference (normative numpy; the formulas), weight codes, tables, example
    numba.py         numba_kernel (= kernel)
    tvm.py           te_compute (generic TE), emit / Converter (the ONNX node -> Relax)
    tvm_rewrite.py   the Relax rewrite putting an ISA's kernels in place of the generic compute
    tvm_tables.py    the table kernel (portable TIR, shared by x86 and aarch64)
    tvm_lookup.py    the lookup PrimFunc's loops and epilogue (shared by x86 and aarch64)
    tvm_pack_x86.py  the x86 kernels' weight / scale re-packs (numpy)
    tvm_x86.py       AVX2 vpshufb (and AVX-512 VNNI) lookups; schedule_lut_matmuls
    tvm_arm.py       aarch64 NEON tbl lookups; schedule_lut_matmuls
    tvm_dequant.py   x86 dequantize-then-multiply kernel (``dequant = 1``)
    schema.py        schema, node_kwargs
    counts.py        counts, weight_bytes
"""

from edgert.ops.lut_matmul.layout import (
    G,
    INT32_MAX,
    LAYOUT_VERSION,
    MAX_TILE_K,
    OP_TYPE,
    LutLayout,
    check_operands,
    table_bits_for,
)
from edgert.ops.lut_matmul.spec import (
    accumulator_bound,
    codes,
    dequant_error_bound,
    dequantize_codes,
    dequantized_weight,
    doubled_weight,
    doubled_zero,
    int8_table_shift,
    plane_nibbles,
    quantize_float_tables,
    reference,
    shift_round_half_even,
    tables,
    zero_constant,
)
from edgert.ops._common.op import Op, lazy_exports

OP = Op(OP_TYPE, __name__, extra_parts=("layout", "tvm_rewrite", "tvm_tables", "tvm_lookup",
                                        "tvm_pack_x86", "tvm_x86", "tvm_arm", "tvm_dequant"))

__getattr__ = lazy_exports(__name__, {"numba_kernel": "numba", "te_compute": "tvm"})

__all__ = ["G", "INT32_MAX", "LAYOUT_VERSION", "MAX_TILE_K", "OP", "OP_TYPE", "LutLayout",
           "accumulator_bound", "check_operands", "codes", "dequant_error_bound",
           "dequantize_codes", "dequantized_weight", "doubled_weight", "doubled_zero",
           "int8_table_shift", "numba_kernel", "plane_nibbles", "quantize_float_tables",
           "reference", "shift_round_half_even", "table_bits_for", "tables", "te_compute",
           "zero_constant"]
