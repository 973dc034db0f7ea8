"""``IntTable``: an elementwise function of an int8 tensor, read from a 256-entry table.

Specification:
    input q: int8, any shape; table: int8 or int16, shape [256];
    out[i] = table[q[i] + 128]          (same shape as q, the table's dtype)
The op itself is a lookup; the meaning is in the table, which the quantizer computes at compile
time from the input scale ``s_in``, the output scale ``s_out`` and a float function ``f``
(:func:`make_table`):
    table[k] = clamp(round_half_even(f((k - 128) * s_in) / s_out), lo, hi),  k = 0..255
in float64. The output is therefore ``f`` of the dequantized input rounded once to the output
grid: no approximation error beyond that rounding (and float64's, ~1e-16 relative, which can
only move an exact tie). Every input value has an entry, -128 included.

Functions (:data:`FUNCTIONS`): ``hardsigmoid`` (``clip(alpha x + beta, 0, 1)``, ONNX defaults
alpha 0.2, beta 0.5), ``hardswish`` (``x * clip(x / 6 + 1/2, 0, 1)``), ``sigmoid``, ``silu``
(``x * sigmoid(x)``, what ``Mul(x, Sigmoid(x))`` computes) and ``tanh``.

ONNX (domain ``edgert``): ``IntTable(q: int8, table: int8|int16 [256]) -> int8|int16`` with an
optional string attribute ``function`` naming what the table holds (for readers; the kernels
ignore it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgert.ops._common.op import Example

OP_TYPE = "IntTable"
TABLE_SIZE = 256
OFFSET = 128                       # table index of q = 0
OUT_DTYPES = {"int8": np.int8, "int16": np.int16}
FUNCTIONS = ("hardsigmoid", "hardswish", "sigmoid", "silu", "tanh")
SATURATION_GRID = 4097             # points of the input range searched by saturated_range


def check_operands(q: np.ndarray, table: np.ndarray) -> None:
    """Raise ValueError unless ``q`` is int8 and ``table`` int8/int16 of shape [256]."""
    if q.dtype != np.int8:
        raise ValueError(f"IntTable: input must be int8, got {q.dtype}")
    if table.dtype.name not in OUT_DTYPES or table.shape != (TABLE_SIZE,):
        raise ValueError(f"IntTable: table must be int8/int16 [256], got {table.dtype} "
                         f"{list(table.shape)}")


def reference(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Normative numpy IntTable: ``table[q + 128]`` (int8 ``q``, int8/int16 ``table`` [256]);
    the output has ``q``'s shape and ``table``'s dtype."""
    q, table = np.asarray(q), np.asarray(table)
    check_operands(q, table)
    return table[q.astype(np.int32) + OFFSET]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))                       # no overflow for either sign
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def float_function(name: str, *, alpha: float = 0.2,
                   beta: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
    """The float64 function ``name`` of :data:`FUNCTIONS` (``alpha``, ``beta``: HardSigmoid's).

    Raises:
        ValueError: an unknown name.
    """
    if name == "hardsigmoid":
        return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)
    if name == "hardswish":
        return lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if name == "sigmoid":
        return _sigmoid
    if name == "silu":
        return lambda x: x * _sigmoid(x)
    if name == "tanh":
        return np.tanh
    raise ValueError(f"IntTable: unknown function {name!r} (known: {', '.join(FUNCTIONS)})")


def make_table(f: Callable[[np.ndarray], np.ndarray], s_in: float, s_out: float,
               dtype: str = "int8", lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """The table of ``f`` for input scale ``s_in`` and output scale ``s_out`` (float64 > 0):
    ``clamp(round_half_even(f((k - 128) * s_in) / s_out), lo, hi)`` as ``dtype`` [256]; ``lo``
    and ``hi`` default to the dtype's symmetric range ``[-qmax, qmax]``."""
    if not (s_in > 0 and s_out > 0):
        raise ValueError(f"IntTable: scales must be > 0, got s_in={s_in}, s_out={s_out}")
    qmax = int(np.iinfo(OUT_DTYPES[dtype]).max)
    lo = -qmax if lo is None else lo
    hi = qmax if hi is None else hi
    x = (np.arange(TABLE_SIZE, dtype=np.float64) - OFFSET) * float(s_in)
    return np.clip(np.rint(f(x) / float(s_out)), lo, hi).astype(OUT_DTYPES[dtype])


def saturated_range(f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float,
                    s_out: float, qmax: int) -> tuple[float, float]:
    """The part ``[a, b]`` of the input range ``[lo, hi]`` outside which ``f``, rounded to the
    output grid ``s_out`` (clamped to ``+-qmax``), no longer changes: clamping the input to
    ``[a, b]`` gives the same outputs (checked on a grid of the range), so the input scale
    can be ``max(|a|, |b|) / 127`` instead of ``max(|lo|, |hi|) / 127``. HardSigmoid saturates
    at +-3 (torch's alpha), HardSwish below -3, Sigmoid and Tanh where they are within half a
    step of their limits."""
    if not hi > lo:
        return lo, hi
    grid = np.linspace(lo, hi, SATURATION_GRID)
    r = np.clip(np.rint(f(grid) / s_out), -qmax, qmax)
    moving = np.flatnonzero(r != r[-1])
    b = grid[min(moving[-1] + 1, len(grid) - 1)] if moving.size else grid[0]
    moving = np.flatnonzero(r != r[0])
    a = grid[max(moving[0] - 1, 0)] if moving.size else grid[-1]
    return float(min(a, b)), float(max(a, b))


def example(rng: np.random.Generator) -> Example:
    """int8 [3, 5, 7] (every value -128..127 possible) through a sigmoid table to int16."""
    q = rng.integers(-128, 128, (3, 5, 7)).astype(np.int8)
    table = make_table(float_function("sigmoid"), 0.05, 1.0 / 32767, "int16")
    return Example((q, table), {"function": "sigmoid"})
