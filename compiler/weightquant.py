"""Low-bit weight quantization and bit-plane packing for ``edgert.LutMatMul``.

A float weight ``W`` [K, N] (ONNX MatMul layout, ``y = x @ W``) becomes b-bit codes
``u`` in [0, 2**b), one float32 scale per (group of ``group_size`` rows of K, column) and
optionally one zero point per (group, column); the value of a code is (the convention of
:mod:`edgert.ops.lut_matmul`, following ``docs/methods/tmac.md``)::

    w = s * (u - z)     symmetric:  z = 2**(b-1) for b >= 2, z = 1/2 for b = 1 (w = +-s/2)
                        asymmetric: z = zero point, an integer code in [0, 2**b)
                        exact-min:  z = -min / s, a float32 (float activations only)

Scales (all float32):
- symmetric, b >= 2: the codes cover ``[-2**(b-1), 2**(b-1) - 1] * s``; ``s`` is the best (least
  squared error per group and column) of :data:`SCALE_GRID` multiples of
  ``max|w| / 2**(b-1)`` (round half even, clip to the code range).
- symmetric, b = 1: ``u = (w >= 0)``, ``s = 2 * mean|w|`` (the least-squares scale of a sign code).
- asymmetric: min-max, ``s = (max - min) / (2**b - 1)``, ``z = clip(round(-min / s))``,
  ``u = clip(round(w / s) + z)``; a constant group ``c`` gets ``s = |c|`` (1 when c = 0).
- exact-min: the same ``s``, ``z = -min / s`` unrounded, ``u = clip(round((w - min) / s))``: the
  grid ``min + s * u`` runs exactly from min to max. A weight already on such a grid (GGUF
  Q4_1/Q4_0 blocks of the same group size) comes back unchanged, where the integer zero point
  would shift it by up to s / 2. The float LutMatMul takes it at no cost (``zc`` is a float).
- ternary (BitNet b1.58, :func:`quantize_ternary`): ``gamma = mean|W|`` over the tensor,
  ``t = clip(round(W / (gamma + 1e-5)), -1, 1)``, ``w = t * gamma``. Stored as **2 bit planes**:
  the symmetric b = 2 code ``u = t + 2`` in {1, 2, 3} (code 0 unused), every scale = gamma.
  The kernel is the 2-bit kernel; nothing ternary-specific is needed downstream.

Group sizes are 32, 64 or 128, or K itself (one scale per column, what the integer variant
of LutMatMul needs: its weight scales fold into the following Requant, which is possible
only when a column's scales are equal across groups, see :func:`integer_output_scale`).

Packing: :func:`pack_planes` writes the layout of :class:`~edgert.ops.lut_matmul.LutLayout`
(bit planes, nibbles of 4 weight bits per column, two columns a byte, tiles of ``tile_n``
columns x ``tile_k`` rows); :func:`unpack_planes` inverts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edgert.errors import ArtifactError, QuantizationError
from edgert.ops.lut_matmul import G, MAX_TILE_K, LutLayout, codes, dequantize_codes, doubled_weight

unpack_planes = codes
"""Codes uint8 [K, N] from packed planes (inverse of :func:`pack_planes`)."""

GROUP_SIZES = (32, 64, 128)
BITS = (1, 2, 3, 4)
SCALE_GRID = np.linspace(0.5, 1.5, 21)
"""Multiples of ``max|w| / 2**(b-1)`` tried as the symmetric scale (b >= 2)."""
SCHEMES = ("symmetric", "asymmetric", "exact-min", "ternary")
"""exact-min: float32 zero points ``z = -min / s``, so a group's grid is ``min + s * u`` and
spans [min, max] exactly (float activations only; GGUF Q4_1 weights survive it unchanged)."""


@dataclass(frozen=True)
class QuantizedWeight:
    """A packed low-bit weight, ready for ``LutMatMul``.

    Attributes:
        planes: uint8 ``layout.planes_shape``, the packed bit planes.
        scales: float32 [K / group_size, N].
        zero_points: uint8 [K / group_size, N] (asymmetric), float32 (exact-min) or None.
        layout: every layout parameter.
        scheme: one of :data:`SCHEMES`.
    """

    planes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    layout: LutLayout
    scheme: str

    def codes(self) -> np.ndarray:
        """The codes u, uint8 [K, N]."""
        return codes(self.planes, self.layout)

    def dequantize(self) -> np.ndarray:
        """float32 [K, N]: ``s * (u - z)`` (the exact value the kernels stand for)."""
        return dequantize_codes(self.codes(), self.scales, self.zero_points, self.layout.bits)

    def signed_codes(self) -> np.ndarray:
        """int8 [K, N]: ``2 * (u - z)``, the integer weight of the integer LutMatMul."""
        if self.scheme == "exact-min":
            raise QuantizationError("exact-min weights have float zero points: no integer form")
        return doubled_weight(self.codes(), self.zero_points, self.layout.bits).astype(np.int8)

    def meta(self) -> dict:
        """JSON-ready description (layout plus scheme) for an artifact manifest."""
        return {"layout": json.loads(self.layout.to_json()), "scheme": self.scheme,
                "zero_points": self.zero_points is not None}


# ---------------------------------------------------------------- codes

def _check(w: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise QuantizationError(f"weight quantization needs a float [K, N] matrix, got "
                                f"{w.dtype}{list(w.shape)}")
    if bits not in BITS:
        raise QuantizationError(f"weight bits must be one of {BITS}, got {bits}")
    k = w.shape[0]
    if group_size not in GROUP_SIZES and group_size != k:
        raise QuantizationError(f"group size must be one of {GROUP_SIZES} or K = {k}, got "
                                f"{group_size}")
    if k % group_size:
        raise QuantizationError(f"K = {k} is not a multiple of the group size {group_size}")
    if k % G:
        raise QuantizationError(f"K = {k} is not a multiple of g = {G}")
    if not np.isfinite(w).all():
        raise QuantizationError("weight has non-finite values")
    return w.astype(np.float32)


def _grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    k, n = w.shape
    return w.reshape(k // group_size, group_size, n)


def quantize_codes(w: np.ndarray, bits: int, group_size: int, *, zero_point: bool = False,
                   float_zero: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Group-wise b-bit codes of a float weight [K, N].

    ``zero_point``: min-max codes with an integer zero point per (group, column); with
    ``float_zero`` too, the zero point is the float32 ``-min / s`` (the exact-min scheme).

    Returns:
        ``(codes uint8 [K, N], scales float32 [K/G, N], zero_points uint8 (float32 with
        float_zero) [K/G, N] or None)``.

    Raises:
        QuantizationError: bad bits or group size, K not a multiple of it, a non-float or
            non-finite weight.
    """
    w = _check(w, bits, group_size)
    wg = _grouped(w, group_size)                                       # [NG, G, N]
    top = (1 << bits) - 1
    if zero_point:
        lo, hi = wg.min(axis=1), wg.max(axis=1)
        s = (hi - lo) / np.float32(top)
        const = s == 0
        s = np.where(const, np.where(hi != 0, np.abs(hi), np.float32(1)), s).astype(np.float32)
        if float_zero:
            z = (-lo / s).astype(np.float32)
            u = np.clip(np.rint((wg - lo[:, None, :]) / s[:, None, :]), 0, top)
            return u.reshape(w.shape).astype(np.uint8), s, z
        z = np.clip(np.rint(-lo / s), 0, top)
        u = np.clip(np.rint(wg / s[:, None, :]) + z[:, None, :], 0, top)
        return (u.reshape(w.shape).astype(np.uint8), s, z.astype(np.uint8))
    if bits == 1:
        s = (2 * np.abs(wg).mean(axis=1)).astype(np.float32)
        return ((w >= 0).astype(np.uint8), s, None)
    half = 1 << (bits - 1)
    amax = np.abs(wg).max(axis=1)                                      # [NG, N]
    best_s = np.zeros_like(amax)
    best_err = np.full(amax.shape, np.inf, np.float64)
    for f in SCALE_GRID:
        s = (amax * np.float32(f / half)).astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1))
        v = np.clip(np.rint(wg / safe[:, None, :]), -half, half - 1)
        err = ((v * s[:, None, :] - wg).astype(np.float64) ** 2).sum(axis=1)
        better = err < best_err
        best_s, best_err = np.where(better, s, best_s), np.where(better, err, best_err)
    safe = np.where(best_s > 0, best_s, np.float32(1))
    v = np.clip(np.rint(wg / safe[:, None, :]), -half, half - 1)
    return ((v + half).reshape(w.shape).astype(np.uint8), best_s.astype(np.float32), None)


# ---------------------------------------------------------------- packing

def default_tile_k(group_size: int) -> int:
    """The largest tile_k (<= 64, a multiple of 4) dividing ``group_size``."""
    for t in range(MAX_TILE_K, 0, -G):
        if group_size % t == 0:
            return t
    raise QuantizationError(f"group size {group_size} is not a multiple of {G}")


def pack_planes(codes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Pack codes uint8 [K, N] (< 2**bits) into the layout's uint8 bit planes (module doc)."""
    codes = np.asarray(codes)
    if codes.shape != (layout.K, layout.N):
        raise QuantizationError(f"codes {list(codes.shape)} do not match the layout "
                                f"[{layout.K}, {layout.N}]")
    if codes.size and int(codes.max()) >= 1 << layout.bits:
        raise QuantizationError(f"codes exceed {layout.bits} bits")
    nt, kt, b, tk4, tn2 = layout.planes_shape
    padded = np.zeros((layout.K, nt * layout.tile_n), np.uint8)
    padded[:, :layout.N] = codes
    bits = (padded[None] >> np.arange(b, dtype=np.uint8)[:, None, None]) & 1   # [b, K, Np]
    weights = (1 << np.arange(G, dtype=np.uint8))[None, None, :, None]
    nib = (bits.reshape(b, layout.K // G, G, -1) * weights).sum(axis=2).astype(np.uint8)
    nib = nib.reshape(b, kt, tk4, nt, 2, tn2)                          # column = (nt, hi, h)
    packed = nib[:, :, :, :, 0, :] | (nib[:, :, :, :, 1, :] << 4)      # [b, kt, tk4, nt, tn2]
    return np.ascontiguousarray(packed.transpose(3, 1, 0, 2, 4))


def _layout(k: int, n: int, bits: int, group_size: int, tile_n: int, tile_k: int | None
            ) -> LutLayout:
    tk = default_tile_k(group_size) if tile_k is None else tile_k
    try:
        return LutLayout(bits=bits, group_size=group_size, K=k, N=n, tile_n=tile_n, tile_k=tk)
    except ArtifactError as err:
        raise QuantizationError(str(err)) from None


def quantize_weight(w: np.ndarray, bits: int, group_size: int = 128, *,
                    zero_point: bool = False, float_zero: bool = False, tile_n: int = 32,
                    tile_k: int | None = None) -> QuantizedWeight:
    """Quantize and pack a float weight [K, N] for ``LutMatMul`` (see the module doc);
    ``float_zero`` (with ``zero_point``): the exact-min scheme."""
    codes, scales, zps = quantize_codes(w, bits, group_size, zero_point=zero_point,
                                        float_zero=float_zero)
    layout = _layout(codes.shape[0], codes.shape[1], bits, group_size, tile_n, tile_k)
    scheme = ("exact-min" if float_zero else "asymmetric") if zero_point else "symmetric"
    return QuantizedWeight(pack_planes(codes, layout), scales, zps, layout, scheme)


def quantize_ternary(w: np.ndarray, group_size: int = 128, *, tile_n: int = 32,
                     tile_k: int | None = None, eps: float = 1e-5) -> QuantizedWeight:
    """BitNet b1.58 ternary weights {-1, 0, +1} * gamma (absmean, one gamma per tensor),
    stored as the symmetric 2-bit code ``t + 2`` with gamma in every (group, column) scale.
    ``group_size`` only sets the table-scale granularity of the float LutMatMul."""
    w = _check(w, 2, group_size)
    gamma = np.float32(np.abs(w).mean(dtype=np.float64))
    t = np.clip(np.rint(w / (gamma + np.float32(eps))), -1, 1)
    codes = (t + 2).astype(np.uint8)
    layout = _layout(w.shape[0], w.shape[1], 2, group_size, tile_n, tile_k)
    scales = np.full((layout.n_groups, layout.N), gamma, np.float32)
    return QuantizedWeight(pack_planes(codes, layout), scales, None, layout, "ternary")


def integer_output_scale(qw: QuantizedWeight, act_scale: float) -> np.ndarray:
    """Scale of the integer LutMatMul accumulator per column, float64 [N]:
    ``act_scale * s[n] / 2`` (the Requant ratio is this over the output scale).

    Raises:
        QuantizationError: a column whose scales differ between groups (group-wise scales do
            not fold into one Requant; quantize with ``group_size = K`` or ternary).
    """
    s = qw.scales.astype(np.float64)
    if not (s == s[:1]).all():
        raise QuantizationError("integer LutMatMul needs one weight scale per column (equal "
                                "across groups): quantize with group_size = K")
    return act_scale * s[0] / 2
