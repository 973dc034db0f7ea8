"""``IntMatMul``: integer matrix product with int32 accumulators (int8/int16 operands).

Specification (``shared/reference/ivit.md``, "Tensors"; numpy ``matmul`` semantics):
    out[..., m, n] = sum_k a[..., m, k] * b[..., k, n]      exact (int64), stored as int32
Precondition, proven at compile time by the quantizer (:func:`accumulator_bound`): every
partial sum fits int32, so kernels may accumulate in int32 and stay bit-identical with the
int64 reference (a partial sum is bounded by ``sum_k |a| * |b|``, which the bound covers).
The reference checks the final values at run time and raises on overflow.

ONNX: the int8 x int8 case is written as the standard ``MatMulInteger`` (no zero points);
mixed or int16 operands, which ``MatMulInteger`` does not allow, as
``edgert.IntMatMul(A: int8|int16, B: int8|int16) -> int32``. Both run on these kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

OP_TYPE = "IntMatMul"
IN_DTYPES = (np.int8, np.int16)
INT32_MAX = (1 << 31) - 1


def accumulator_bound(a_max: int, b: np.ndarray, bias: np.ndarray | None = None) -> int:
    """Largest possible ``|sum_k a[k] * b[k, n] + bias[n]|`` for ``|a| <= a_max`` (a Python int).

    Args:
        a_max: bound on the absolute value of the activations (e.g. 127 or 32767).
        b: integer weights [K, N] (or [..., K, N]; the max is over every column).
        bias: optional integer bias [N] added to the accumulator.
    """
    col = np.abs(np.asarray(b, np.int64)).sum(axis=-2)
    if bias is not None:
        return int((a_max * col + np.abs(np.asarray(bias, np.int64))).max())
    return int(a_max * col.max())


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype not in IN_DTYPES or b.dtype not in IN_DTYPES:
        raise TypeError(f"IntMatMul operands must be int8 or int16, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"IntMatMul needs operands of rank >= 2, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"IntMatMul: inner dimensions differ, {a.shape} @ {b.shape}")


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normative numpy IntMatMul: exact int64 product, int32 result (raises on overflow)."""
    a, b = np.asarray(a), np.asarray(b)
    _check(a, b)
    out = np.matmul(a.astype(np.int64), b.astype(np.int64))
    if out.size and np.abs(out).max() > INT32_MAX:
        raise OverflowError("IntMatMul: accumulator exceeds int32 (the compile-time bound failed)")
    return out.astype(np.int32)


@njit(cache=True, parallel=True)
def _matmul_nb(a3, b3, out3):
    batch, rows, depth = a3.shape
    cols = b3.shape[2]
    b_batch = b3.shape[0]
    for t in prange(batch * rows):
        bi = t // rows
        i = t - bi * rows
        bj = bi if b_batch > 1 else 0
        acc = np.zeros(cols, np.int32)
        for k in range(depth):
            av = np.int32(a3[bi, i, k])
            for j in range(cols):
                acc[j] += av * np.int32(b3[bj, k, j])
        out3[bi, i, :] = acc


def numba_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numba twin of :func:`reference` (int32 accumulation; bit-identical under the bound)."""
    a, b = np.asarray(a), np.asarray(b)
    _check(a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    a3 = np.ascontiguousarray(np.broadcast_to(a, (*batch, m, k))).reshape(-1, m, k)
    if b.ndim == 2:
        b3 = np.ascontiguousarray(b).reshape(1, k, n)
    else:
        b3 = np.ascontiguousarray(np.broadcast_to(b, (*batch, k, n))).reshape(-1, k, n)
    out = np.empty((a3.shape[0], m, n), np.int32)
    _matmul_nb(a3, b3, out)
    return out.reshape(*batch, m, n)


def te_compute(a: Any, b: Any) -> Any:
    """TVM TE IntMatMul: ``a`` [..., M, K], ``b`` [K, N] or [..., K, N] (batch dims equal or
    1 in ``b``); int32 accumulation."""
    from tvm import te

    *a_batch, m, k = a.shape
    *b_batch, _, n = b.shape
    r = te.reduce_axis((0, k), name="k")
    offset = len(a_batch) - len(b_batch)

    def b_index(batch_idx: tuple) -> list:
        idx = []
        for i, dim in enumerate(b_batch):
            idx.append(0 if isinstance(dim, int) and dim == 1 or getattr(dim, "value", None) == 1
                       else batch_idx[offset + i])
        return idx

    def body(*idx):
        *bi, i, j = idx
        return te.sum(a(*bi, i, r).astype("int32") * b(*b_index(tuple(bi)), r, j).astype("int32"),
                      axis=r)

    return te.compute((*a_batch, m, n), body, name="int_matmul")


def schema() -> object:
    """ONNX schema of ``edgert.IntMatMul``."""
    from onnx import TensorProto

    from edgert.ops import make_schema

    def infer(ctx: Any) -> None:
        """int32; shape [..., M, N] taken from A's leading dims and B's last dim when known."""
        import onnx

        out = onnx.TypeProto()
        out.tensor_type.elem_type = TensorProto.INT32
        a, b = ctx.get_input_type(0), ctx.get_input_type(1)
        if (a is not None and b is not None and a.tensor_type.HasField("shape")
                and b.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2):
            dims = list(a.tensor_type.shape.dim)[:-1] + [b.tensor_type.shape.dim[-1]]
            out.tensor_type.shape.dim.extend(dims)
        ctx.set_output_type(0, out)

    return make_schema(
        OP_TYPE, __doc__ or "",
        inputs=[("A", "T1", "[..., M, K] at scale s_a"), ("B", "T2", "[..., K, N] at scale s_b")],
        outputs=[("Y", "tensor(int32)", "[..., M, N] at scale s_a * s_b")],
        type_constraints=[("T1", ["tensor(int8)", "tensor(int16)"], "A"),
                          ("T2", ["tensor(int8)", "tensor(int16)"], "B")],
        attributes=[],
        infer=infer,
    )
