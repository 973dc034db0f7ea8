"""The error study of L-Mul: its products against exact ones and against float8 products.

Used by ``tests/test_op_lmul_matmul.py`` (which asserts the paper's ordering) and by
``docs/methods/lmul.md`` (the table). Errors are relative to the exact product of the
original float32 operands (computed in float64, exact for float32 inputs):
``mean(|approx - x*y| / |x*y|)`` over the pairs.

- :func:`lmul_product`: the op's L-Mul (bit-level form, :func:`spec.lmul`);
- :func:`formula_product`: the paper's formula read literally, ``(1 + mx + my + 2^-l) *
  2^(ex+ey)`` with no carry into the exponent (float64), for comparison only;
- :func:`float8_product`: both operands rounded to a float8 type (``ml_dtypes``), multiplied
  exactly, and the product rounded to that type too (``round_product``) or kept exact;
- :func:`log_uniform_error`: the expected error when the operands' mantissas are
  log-uniformly distributed (``2^u - 1``, u uniform in [0, 1): the scale-invariant
  distribution that samples spread over many binades approach), by a midpoint rule on a grid
  of ``points x points`` instead of sampling: the theoretical value the sampled errors of the
  normal pairs should be near.

Imports numpy, and ``ml_dtypes`` inside :func:`float8_product` (installed with onnx).
"""

from __future__ import annotations

import numpy as np

from edgert.ops.lmul_matmul.spec import lmul, offset_bits, truncation_mask

FLOAT8_TYPES = ("float8_e4m3fn", "float8_e5m2")


def relative_error(approx: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean of ``|approx - x*y| / |x*y|`` (float64; pairs whose exact product is 0 skipped)."""
    exact = np.asarray(x, np.float64) * np.asarray(y, np.float64)
    keep = exact != 0
    err = np.abs(np.asarray(approx, np.float64)[keep] - exact[keep]) / np.abs(exact[keep])
    return float(err.mean())


def lmul_product(x: np.ndarray, y: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """The op's L-Mul of float32 arrays (float32)."""
    return lmul(np.asarray(x, np.float32), np.asarray(y, np.float32), mantissa_bits)


def formula_product(x: np.ndarray, y: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """``(-1)^(sx^sy) (1 + mx + my + 2^-l) 2^(ex+ey)`` on mantissas truncated to
    ``mantissa_bits``, no carry (float64; normal finite operands only)."""
    def split(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bits = np.asarray(v, np.float32).view(np.uint32).astype(np.int64)
        sign = np.where(bits >> 31, -1.0, 1.0)
        exp = ((bits >> 23) & 0xFF) - 127
        frac = (bits & truncation_mask(mantissa_bits) & 0x7FFFFF) / float(1 << 23)
        return sign, exp, frac

    sx, ex, mx = split(x)
    sy, ey, my = split(y)
    return sx * sy * (1.0 + mx + my + 2.0 ** -offset_bits(mantissa_bits)) * np.exp2(ex + ey)


def float8_product(x: np.ndarray, y: np.ndarray, dtype: str,
                   round_product: bool = True) -> np.ndarray:
    """``x`` and ``y`` rounded to the float8 type ``dtype`` (``float8_e4m3fn`` or
    ``float8_e5m2``, round to nearest even, as ``ml_dtypes`` casts), their exact product
    (float64), rounded to ``dtype`` as well when ``round_product``."""
    import ml_dtypes

    t = getattr(ml_dtypes, dtype)
    xr = np.asarray(x, np.float32).astype(t).astype(np.float64)
    yr = np.asarray(y, np.float32).astype(t).astype(np.float64)
    product = xr * yr
    return product.astype(np.float32).astype(t).astype(np.float64) if round_product else product


def log_uniform_error(mantissa_bits: int, formula: bool = False, points: int = 1024) -> float:
    """Expected relative error of L-Mul of width ``mantissa_bits`` (``formula``: of the
    no-carry formula) for log-uniform mantissas (module docstring), by the midpoint rule on
    ``points x points`` mantissa pairs ``2^u``, u in [0, 1) (no exponent over/underflow)."""
    u = (np.arange(points) + 0.5) / points
    v = np.exp2(u).astype(np.float32)                  # 1 <= v < 2: the mantissa 1 + m
    x, y = np.meshgrid(v, v, indexing="ij")
    product = formula_product if formula else lmul_product
    return relative_error(product(x, y, mantissa_bits), x, y)


def error_table(x: np.ndarray, y: np.ndarray, widths: tuple[int, ...] = (2, 3, 4, 5, 23)
                ) -> dict[str, float]:
    """Mean relative errors of every approximation on the pairs ``(x, y)``: ``lmul<m>`` and
    ``formula<m>`` for each width, ``<float8 type>`` (product rounded) and ``<float8
    type>_exact_product``."""
    table: dict[str, float] = {}
    for m in widths:
        table[f"lmul{m}"] = relative_error(lmul_product(x, y, m), x, y)
        table[f"formula{m}"] = relative_error(formula_product(x, y, m), x, y)
    for t in FLOAT8_TYPES:
        table[t] = relative_error(float8_product(x, y, t), x, y)
        table[f"{t}_exact_product"] = relative_error(float8_product(x, y, t, False), x, y)
    return table
