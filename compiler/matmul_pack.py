"""Packed operand layouts of the matmul kernels (:mod:`edgert.compiler.schedule_intmatmul`,
:mod:`edgert.compiler.schedule_cuda`): the kernel knobs, numpy packing of a constant weight at
compile time, and the TIR expression of one packed word.

Layout of B, ``[ceil(N/NR), ceil(K/G), NR, G]`` of int16 (G = 2), int8 (G = 4) or float32
(G = 1): ``packed[nb, p, j, h] = B[G*p + h, nb*NR + j]``, zero where ``G*p + h >= K`` or the
column is past N; the kernels take the same bytes as int32 (float32) words ``[.., NR]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.targets.isa import INT_DTYPES

@dataclass(frozen=True)
class MatmulConfig:
    """Knobs of the x86 kernel.

    Attributes:
        mr: rows of the register tile.
        nr: columns of the register tile (a multiple of 8: one ymm of int32 per 8 columns);
            also the column block of the packed B layout.
        mp: rows of A packed per task (a multiple of ``mr``).
        max_chunk: most column blocks (of ``nr``) one task computes.
        parallel_min_kn: kernels with ``K * N`` below this run serially (at typical M, a
            parallel launch costs more than such a matmul: ~1-5 us against ~0.5 us of work
            for 17 x 32 x 96); a symbolic K or N always gets the parallel loop.
    """

    mr: int = 4
    nr: int = 16
    mp: int = 32
    max_chunk: int = 4
    parallel_min_kn: int = 8192

    def __post_init__(self) -> None:
        if self.nr % 8 or self.nr <= 0 or self.mr <= 0 or self.mp % self.mr:
            raise ValueError(f"invalid MatmulConfig {self}")


DEFAULT_CONFIG = MatmulConfig()
FLOAT_CONFIG = MatmulConfig(mr=6, nr=16, mp=48)
"""Float tiles: 6 x 16 (on AVX2 12 ymm accumulators, 2 of B, 1 broadcast)."""
FLOAT_CONFIG_AVX512 = MatmulConfig(mr=6, nr=32, mp=48)
"""Float tiles on AVX-512: 6 x 32 (12 zmm accumulators of 32)."""

def pack_weight(b: np.ndarray, nr: int = DEFAULT_CONFIG.nr, group: int = 2) -> np.ndarray:
    """Pack a weight [K, N] into the kernel's [ceil(N/nr), ceil(K/group), nr, group] layout of
    int16 (``group`` 2), int8 (``group`` 4: int8 weights only) or float32 (``group`` 1: float32
    weights only), zero padded."""
    b = np.asarray(b)
    dtypes = {1: ("float32",), 2: INT_DTYPES, 4: ("int8",)}[group]
    if b.ndim != 2 or b.dtype.name not in dtypes:
        raise ValueError(f"pack_weight(group={group}) needs a {'/'.join(dtypes)} [K, N] matrix, "
                         f"got {b.dtype} {b.shape}")
    k, n = b.shape
    kg, nbr = -(-k // group), -(-n // nr)
    padded = np.zeros((group * kg, nbr * nr), {1: np.float32, 2: np.int16, 4: np.int8}[group])
    padded[:k, :n] = b
    return np.ascontiguousarray(padded.reshape(kg, group, nbr, nr).transpose(2, 0, 3, 1))


def pack_weight_words(b: np.ndarray, nr: int = DEFAULT_CONFIG.nr, group: int = 2,
                      a_offset: bool = False) -> np.ndarray:
    """:func:`pack_weight` as the kernel takes it: int32 [ceil(N/nr), ceil(K/group), nr], one
    group per int32 (the same bytes: element j of a group in bits ``[32j/group, 32(j+1)/group)``).
    ``a_offset`` (:data:`VNNI`): one more row ``[:, -1, :]`` holding ``-128 * sum_k b[k, n]``
    (int32, wrapping like the accumulators; zero for padded columns)."""
    packed = pack_weight(b, nr, group)
    words = packed.view(np.float32 if group == 1 else np.int32).reshape(packed.shape[:3])
    if not a_offset:
        return words
    k, n = np.asarray(b).shape
    nbr = words.shape[0]
    correction = np.zeros(nbr * nr, np.int64)
    correction[:n] = -128 * np.asarray(b, np.int64).sum(axis=0)
    extra = correction.astype(np.int32).reshape(nbr, 1, nr)          # |.| < 2**31 for k < 2**17
    return np.ascontiguousarray(np.concatenate([words, extra], axis=1))


def pack_word(load: Callable[[int], Any], group: int, lanes: int = 1, valid: Any = None) -> Any:
    """TIR: the int32 word of ``group`` integer elements ``load(j)`` (j < group), element j in
    bits ``[32j/group, 32(j+1)/group)``, sign-extended from the top one (little-endian: an int8
    quad is the 4 bytes in memory order, as ``sdot`` and CUDA's ``__dp4a`` read them). Elements
    ``j >= valid`` (a PrimExpr) are zero. ``load(j)`` is a scalar (``lanes`` 1) or a vector of
    ``lanes`` elements, and so is the word."""
    from tvm import tirx

    bits = 32 // group
    vec = f"int32x{lanes}" if lanes > 1 else "int32"

    def const(value: int) -> Any:
        c = tirx.IntImm("int32", value)
        return tirx.Broadcast(c, lanes) if lanes > 1 else c

    out = None
    for j in range(group):
        x = tirx.Cast(vec, load(j))
        if valid is not None:
            keep = tirx.Cast("int32", tirx.IntImm("int64", j) < valid)
            x = x * (tirx.Broadcast(keep, lanes) if lanes > 1 else keep)
        if j < group - 1:
            x = tirx.bitwise_and(x, const((1 << bits) - 1))
        if j:
            x = tirx.shift_left(x, const(bits * j))
        out = x if out is None else tirx.bitwise_or(out, x)
    return out

