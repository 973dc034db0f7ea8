"""The edgert op set: one module per op (numpy reference, numba kernel, TVM compute, schema).

Custom ops live in the ONNX domain :data:`DOMAIN`. The integer-only ops (Requant, Shiftmax,
ShiftGELU, ILayerNorm) and the low-bit ops (LutMatMul, LMulMatMul, BinaryAttention) are added
here by their issues; the fp32 path uses standard ONNX ops only.
"""

DOMAIN = "edgert"
