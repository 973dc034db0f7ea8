"""``LutMatMul``: low-bit weight x activation matmul by table lookup (T-MAC), no dequantization.

Method: ``shared/reference/tmac.md``. Weights are b-bit codes ``u`` (b in 1..4) quantized per
(group of ``group_size`` rows of K, column) by :mod:`edgert.compiler.weightquant`; this module
only ever sees them as packed bit planes (layout below) plus scales and optional zero points.

Code convention (one formula for every scheme; ``z2 = 2 * z`` is the doubled zero point):
    w[k, n] = s[g, n] * (u[k, n] - z)          g = k // group_size
    symmetric (no zero-point input):  z = 2**(b-1) for b >= 2 (tmac.md), z = 1/2 for b = 1
                                      (so 1-bit weights are +-s/2), i.e. z2 = 2**b or 1
    asymmetric: z = zero_points[g, n], an integer code in [0, 2**b)   (z2 = 2 * z)
    exact-min (float32 A only): z = zero_points[g, n] a float32, any real offset: with
                z = -min / s the weight is ``min + s * u`` (GGUF Q4_1's form), and zc below
                is a float32
    ternary (BitNet b1.58): b = 2, u = t + 2 in {1, 2, 3}, symmetric (z = 2)
With bit planes ``u = sum_i 2**i * bit_i`` and ``sigma_i = 2 * bit_i - 1`` (a +-1 weight):
    2 * (u - z) = sum_i 2**i * sigma_i + zc,      zc = 2**b - 1 - z2     (an integer)
so ``x . w = s/2 * (sum_i 2**i * (x . sigma_i) + zc * sum(x))``: b one-bit dot products, each
done by table lookup, plus a per-row constant (``zc = -1`` symmetric b >= 2, ``0`` for b = 1).

Tables (g = 4): for each 4-group f of K, ``T_f[idx] = sum_j (bit j of idx ? +x_j : -x_j)``,
computed as ``((t0 + t1) + t2) + t3`` (t_j = +-x_j, this order on every backend) for idx < 8
only; ``T_f[15 - idx] = -T_f[idx]`` (mirror). A nibble of 4 weight bits of one column and one
plane indexes the table: ``x[4f:4f+4] . sigma_i[4f:4f+4, n] = T_f[nibble_i(f, n)]``.

Variants (chosen by the activation dtype):

float32 activations ``a`` [..., M, K] -> float32 [..., M, N]  (``table_bits = 8``):
    table scale ts[m, g] = max_{f in g} (((|x0| + |x1|) + |x2|) + |x3|) / 127    (float32)
    q_f[idx] = clip(round_half_even(T_f[idx] / ts), -127, 127) as int8  (0 where ts == 0);
    symmetric rounding keeps the mirror exactly.
    A[m, g, n] = sum_i 2**i * sum_{f in g} q_f[nibble_i(f, n)]     (exact integer)
    r[m, g] = sum_{f in g} T_f[15]          (float32 sum of the unquantized x, f in order)
    y[m, n] = sum_g (sequentially) s[g, n] * ((ts[m, g] * A + zc[g, n] * r[m, g]) * 0.5)
    Error against ``x @ dequant(W)``: table rounding only (|q - T/ts| <= 1/2), see the tests.

int8 activations ``a`` [..., M, K] (one scale s_x over all of K) -> int32 [..., M, N]:
    acc[m, n] = sum_i 2**i * sum_f L_i(f, n) + sum_g zc[g, n] * sum_{k in g} x[m, k]
    an integer at scale ``s_x * s[n] / 2``; the weight scales are not an input: the compiler
    folds them (one per column, equal across groups) into the following ``Requant``.
    ``table_bits = 16``: L = T_f[nibble] exactly (|T| <= 512: int16 tables; SIMD kernels do two
    byte-plane lookups, low byte unsigned + high byte signed). acc equals
    ``IntMatMul(x, 2 * (u - z))`` bit for bit.
    ``table_bits = 8``: int8 tables with a power-of-two scale per (row, K tile of ``tile_k``):
    sh = #{127, 254, 508 below max_{f in tile} sum_j |x_j|} in [0, 3], entries
    ``q = round_half_even(T / 2**sh)`` (|q| <= 127, mirror kept), lookups widened back by
    ``<< sh``. Exact (sh = 0) whenever no 4-group of the tile has sum |x| > 127.
    Every quantity is an integer: numpy, numba and TVM agree bit for bit.

Kernel attribute ``dequant`` (0 by default): with ``dequant = 1`` the same operands are
multiplied by dequantization instead of table lookup (``--lut never``, or ``--lut auto`` where it
timed faster, :mod:`edgert.compiler.kernel_choice`):
    float32 A: y = A @ Wd,  Wd[k, n] = s[g, n] * ((2u - z2) * 0.5)   (:func:`dequantized_weight`,
               float32; ``z2 = 2 * z``, :func:`doubled_zero`). The reference sums in float64 and
               rounds once; kernels sum in float32 in any order (and may form Wd as
               ``fma(u, s, -s * z)``): within ``(K + 4) * 2**-24 * (|A| @ (|s| * (u + |z|)))``
               of the reference (:func:`dequant_error_bound`, asserted in the tests). No table
               rounding: this is the exact dequantized matmul, more accurate than the tables.
    int8 A:    acc = A @ (2u - z2) exactly, as int32: equal to the ``table_bits = 16`` result
               bit for bit (and to ``table_bits = 8`` wherever its shift is 0).

Lookups are summed per (plane, K tile) over at most 16 nibbles (``tile_k <= 64``) in int16
(|sum| <= 16 * 512 fits), then widened to int32; an exact integer sum, as the reference writes.

CPU kernels: ``compiler/schedule_lut_x86.py`` (AVX2 ``vpshufb``) and
``compiler/schedule_lut_arm.py`` (NEON ``tbl``) replace :func:`te_compute` in compiled
artifacts, bit-exact with :func:`reference` for both variants.

Packed weights (layout version 1), uint8 ``[N_pad / tile_n, K / tile_k, bits, tile_k / 4,
tile_n / 2]``: byte ``[nt, kt, i, fi, h]`` holds ``nibble_i(f, nt*tile_n + h)`` in its low 4 bits
and ``nibble_i(f, nt*tile_n + tile_n/2 + h)`` in its high 4 bits, ``f = kt*tile_k/4 + fi``;
``nibble_i(f, n) = sum_j bit_i(u[4f + j, n]) << j``. Columns past N are zero codes. Every layout
parameter is in :class:`LutLayout` (ONNX attributes, JSON) and checked against the operands.

ONNX (domain ``edgert``): ``LutMatMul(A: float|int8, W: uint8, scales?: float,
zero_points?: uint8|float) -> float|int32`` with INT attributes ``bits, g, group_size, K, N, tile_n,
tile_k, layout_version, table_bits`` and the optional ``dequant`` (0 or 1, default 0);
``scales`` [K/group_size, N] is required for float A and absent for int8 A; ``zero_points``
[K/group_size, N] selects the asymmetric scheme (float32 zero points, float A only: the
exact-min scheme).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numba import njit, prange

from edgert.errors import ArtifactError

OP_TYPE = "LutMatMul"
G = 4                       # activations per table (g); 2**G = 16 table entries
LAYOUT_VERSION = 1
MAX_TILE_K = 64             # 16 lookups per int16 partial sum
INT32_MAX = (1 << 31) - 1
_INT8_SHIFT_LIMITS = (127, 254, 508)   # sum |x| above each adds one to the table shift


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class LutLayout:
    """Every parameter the packed weight bytes depend on.

    Attributes:
        bits: weight bits b (1..4): number of bit planes.
        group_size: rows of K sharing one scale / zero point (divides K, multiple of tile_k).
        K, N: weight shape [K, N] (``y = x @ W``).
        tile_n: columns per tile (even; two columns share a byte).
        tile_k: rows of K per tile (multiple of 4, at most 64, divides group_size).
        g: activations per table, always 4.
        layout_version: byte order version (:data:`LAYOUT_VERSION`).
    """

    bits: int
    group_size: int
    K: int
    N: int
    tile_n: int = 32
    tile_k: int = 64
    g: int = G
    layout_version: int = LAYOUT_VERSION

    def __post_init__(self) -> None:
        problems = []
        if self.layout_version != LAYOUT_VERSION:
            problems.append(f"layout_version {self.layout_version} (this build reads "
                            f"{LAYOUT_VERSION})")
        if self.g != G:
            problems.append(f"g = {self.g} (only g = {G} is implemented)")
        if not 1 <= self.bits <= 4:
            problems.append(f"bits = {self.bits} (1..4)")
        if self.tile_n <= 0 or self.tile_n % 2:
            problems.append(f"tile_n = {self.tile_n} (a positive even number)")
        if self.tile_k <= 0 or self.tile_k % G or self.tile_k > MAX_TILE_K:
            problems.append(f"tile_k = {self.tile_k} (a multiple of {G}, at most {MAX_TILE_K})")
        elif self.group_size <= 0 or self.group_size % self.tile_k:
            problems.append(f"group_size = {self.group_size} (a multiple of tile_k "
                            f"{self.tile_k})")
        elif self.K <= 0 or self.K % self.group_size:
            problems.append(f"K = {self.K} (a multiple of group_size {self.group_size})")
        if self.N <= 0:
            problems.append(f"N = {self.N}")
        if problems:
            raise ArtifactError("invalid LutMatMul layout: " + "; ".join(problems))

    @property
    def n_groups(self) -> int:
        return self.K // self.group_size

    @property
    def n_tiles(self) -> int:
        return -(-self.N // self.tile_n)

    @property
    def planes_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of the packed uint8 weight."""
        return (self.n_tiles, self.K // self.tile_k, self.bits, self.tile_k // G,
                self.tile_n // 2)

    def to_attrs(self) -> dict[str, int]:
        """The ONNX node attributes (all INT)."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> LutLayout:
        """From ONNX attributes (extra keys such as ``table_bits`` are ignored)."""
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(attrs))
        if missing:
            raise ArtifactError(f"LutMatMul layout attributes missing: {', '.join(missing)}")
        return cls(**{k: int(v) for k, v in attrs.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LutLayout:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"LutMatMul layout is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ArtifactError("LutMatMul layout JSON must be an object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ArtifactError(f"LutMatMul layout has unknown fields: {', '.join(unknown)}")
        return cls.from_attrs(data)

    def require(self, expected: LutLayout) -> None:
        """Raise :class:`ArtifactError` naming every field where ``self`` (the stored layout)
        differs from ``expected`` (the layout a kernel was built for)."""
        diff = [f"{f.name}: stored {getattr(self, f.name)}, kernel {getattr(expected, f.name)}"
                for f in fields(self) if getattr(self, f.name) != getattr(expected, f.name)]
        if diff:
            raise ArtifactError("LutMatMul weight layout does not match the kernel ("
                                + "; ".join(diff) + "); re-pack the weights for this kernel")


def _table_bits(a_dtype: np.dtype, table_bits: int | None) -> int:
    if a_dtype == np.float32:
        if table_bits not in (None, 8):
            raise ValueError(f"LutMatMul: float32 activations use int8 tables, not {table_bits}")
        return 8
    if a_dtype == np.int8:
        if table_bits not in (None, 8, 16):
            raise ValueError(f"LutMatMul: table_bits must be 8 or 16, got {table_bits}")
        return 16 if table_bits is None else int(table_bits)
    raise TypeError(f"LutMatMul activations must be float32 or int8, got {a_dtype}")


def check_operands(layout: LutLayout, a: np.ndarray, planes: np.ndarray,
                   scales: np.ndarray | None, zero_points: np.ndarray | None) -> None:
    """Raise a clear error when the operands do not match ``layout``.

    Raises:
        ArtifactError: packed weights, scales or zero points of another layout.
        TypeError / ValueError: activations of a wrong dtype or inner dimension.
    """
    if a.dtype not in (np.float32, np.int8):
        raise TypeError(f"LutMatMul activations must be float32 or int8, got {a.dtype}")
    if planes.dtype != np.uint8 or tuple(planes.shape) != layout.planes_shape:
        raise ArtifactError(
            f"LutMatMul packed weight is {planes.dtype}{list(planes.shape)}, the layout "
            f"{layout.to_json()} needs uint8{list(layout.planes_shape)}")
    if a.ndim < 2 or a.shape[-1] != layout.K:
        raise ValueError(f"LutMatMul activations {list(a.shape)} must be [..., M, {layout.K}]")
    groups = (layout.n_groups, layout.N)
    if a.dtype == np.float32:
        if scales is None:
            raise ValueError("LutMatMul with float32 activations needs scales")
    elif scales is not None:
        raise ValueError("LutMatMul with int8 activations takes no scales: they are folded "
                         "into the Requant that follows")
    if scales is not None and (scales.dtype != np.float32 or tuple(scales.shape) != groups):
        raise ArtifactError(f"LutMatMul scales are {scales.dtype}{list(scales.shape)}, the "
                            f"layout needs float32{list(groups)}")
    if zero_points is not None:
        kinds = ("uint8", "float32") if a.dtype == np.float32 else ("uint8",)
        if str(zero_points.dtype) not in kinds or tuple(zero_points.shape) != groups:
            raise ArtifactError(f"LutMatMul zero points are {zero_points.dtype}"
                                f"{list(zero_points.shape)}, the layout needs "
                                f"{' or '.join(kinds)}{list(groups)}")
        if zero_points.dtype == np.float32:
            if not np.isfinite(zero_points).all():
                raise ArtifactError("LutMatMul float zero points must be finite")
        elif zero_points.size and int(zero_points.max()) >= 1 << layout.bits:
            raise ArtifactError(f"LutMatMul zero points exceed {layout.bits}-bit codes")


def zero_constant(layout: LutLayout, zero_points: np.ndarray | None) -> np.ndarray:
    """``zc = 2**b - 1 - 2*z`` per (group, column), int32 [K/group_size, N] (float32 for
    float32 zero points)."""
    b = layout.bits
    if zero_points is None:
        z2 = (1 << b) if b >= 2 else 1
        return np.full((layout.n_groups, layout.N), (1 << b) - 1 - z2, np.int32)
    if zero_points.dtype == np.float32:
        return (np.float32((1 << b) - 1) - np.float32(2) * zero_points).astype(np.float32)
    return ((1 << b) - 1 - 2 * zero_points.astype(np.int32)).astype(np.int32)


def plane_nibbles(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """Unpack the packed weight into nibbles, uint8 [bits, K/4, N] (``nibble_i(f, n)``)."""
    nt, kt, b, tk4, tn2 = layout.planes_shape
    nib = np.stack([planes & 15, planes >> 4], axis=4)          # [nt, kt, b, tk4, 2, tn2]
    nib = nib.transpose(2, 1, 3, 0, 4, 5).reshape(b, kt * tk4, nt * 2 * tn2)
    return np.ascontiguousarray(nib[:, :, :layout.N])


def codes(planes: np.ndarray, layout: LutLayout) -> np.ndarray:
    """The weight codes ``u``, uint8 [K, N], from the packed bit planes."""
    nib = plane_nibbles(planes, layout)                                   # [b, K/4, N]
    bits = (nib[:, :, None, :] >> np.arange(G, dtype=np.uint8)[None, None, :, None]) & 1
    u = np.zeros(bits.shape[1:], np.uint8)
    for i in range(layout.bits):
        u |= bits[i] << np.uint8(i)
    return u.reshape(layout.K, layout.N)


def doubled_zero(zero_points: np.ndarray | None, bits: int, shape: tuple[int, int]
                 ) -> np.ndarray:
    """``z2 = 2 * z`` per (group, column), int16 of ``shape`` [K / group_size, N] (float32 for
    float32 zero points; symmetric: ``2**b``, or 1 for 1-bit weights)."""
    if zero_points is not None and zero_points.dtype == np.float32:
        return np.float32(2) * zero_points
    if zero_points is not None:
        return 2 * np.asarray(zero_points, np.int16)
    return np.full(shape, (1 << bits) if bits >= 2 else 1, np.int16)


def doubled_weight(u: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """``2u - z2`` [K, N] from codes ``u`` [K, N]: int16, or float32 for float32 zero points
    (one rounding). ``zero_points`` (or the symmetric constant) is per (group, column)."""
    k, n = u.shape
    z2 = doubled_zero(zero_points, bits, (1, n))            # (1, n): the symmetric constant
    z2 = np.repeat(z2, k // z2.shape[0], axis=0)
    if z2.dtype == np.float32:
        return (np.float32(2) * u.astype(np.float32)) - z2
    return 2 * u.astype(np.int16) - z2


def dequantize_codes(u: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                     bits: int) -> np.ndarray:
    """float32 [K, N] ``s[g, n] * ((2u - z2) * 0.5)`` from codes ``u`` [K, N] and per-group
    scales / zero points."""
    two = doubled_weight(u, zero_points, bits)
    s = np.repeat(np.asarray(scales, np.float32), u.shape[0] // scales.shape[0], axis=0)
    return (s * (two.astype(np.float32) * np.float32(0.5))).astype(np.float32)


def dequantized_weight(planes: np.ndarray, scales: np.ndarray,
                       zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """The weight a float LutMatMul stands for (``dequant = 1`` multiplies by exactly this):
    :func:`dequantize_codes` of the packed codes."""
    return dequantize_codes(codes(planes, layout), scales, zero_points, layout.bits)


def dequant_error_bound(a: np.ndarray, planes: np.ndarray, scales: np.ndarray,
                        zero_points: np.ndarray | None, layout: LutLayout) -> np.ndarray:
    """Per output element, float64 [..., M, N]: how far a float32 ``dequant = 1`` kernel may
    be from :func:`reference`: ``(K + 4) * 2**-24 * (|A| @ (|s| * (u + |z|)))`` (a float32
    sum of K products in any order, the weight formed with up to two roundings)."""
    u = codes(planes, layout).astype(np.float64)
    z = np.abs(doubled_zero(zero_points, layout.bits, (layout.n_groups, layout.N))
               .astype(np.float64)) / 2
    mag = np.repeat(np.abs(scales.astype(np.float64)), layout.group_size, axis=0) * (
        u + np.repeat(z, layout.group_size, axis=0))
    return (layout.K + 4) * 2.0 ** -24 * (np.abs(a.astype(np.float64)) @ mag)


# ---------------------------------------------------------------- tables (numpy)

def _signs() -> np.ndarray:
    """[8, 4] bool: bit j of idx for idx < 8 (bit 3 is always 0: -x3)."""
    return ((np.arange(8)[:, None] >> np.arange(G)[None, :]) & 1).astype(bool)


def tables(x4: np.ndarray) -> np.ndarray:
    """The 16-entry tables of 4-groups ``x4`` [..., 4] (float32 or int32) -> [..., 16].

    Entries idx < 8 are ``((t0 + t1) + t2) + t3`` with ``t_j = +-x_j``; the rest mirror:
    ``T[15 - idx] = -T[idx]``."""
    s = _signs()
    x = x4[..., None, :]                                         # [..., 1, 4]
    t = np.where(s, x, -x)                                       # [..., 8, 4]
    half = ((t[..., 0] + t[..., 1]) + t[..., 2]) + t[..., 3]
    return np.concatenate([half, -half[..., ::-1]], axis=-1)


def _abs_sums(x4: np.ndarray) -> np.ndarray:
    a = np.abs(x4)
    return ((a[..., 0] + a[..., 1]) + a[..., 2]) + a[..., 3]


def quantize_float_tables(x4: np.ndarray, group_fours: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 tables and their float32 scales for float32 4-groups ``x4`` [R, F, 4].

    Returns:
        ``(q int8 [R, F, 16], ts float32 [R, F / group_fours])``: one scale per weight group.
    """
    r, f = x4.shape[:2]
    t = tables(x4)
    mx = _abs_sums(x4).reshape(r, f // group_fours, group_fours).max(axis=2)
    ts = (mx / np.float32(127)).astype(np.float32)
    safe = np.where(ts > 0, ts, np.float32(1)).astype(np.float32)
    q = np.rint(t / np.repeat(safe, group_fours, axis=1)[..., None])
    return np.clip(q, -127, 127).astype(np.int8), ts


def int8_table_shift(x4: np.ndarray, tile_fours: int) -> np.ndarray:
    """Power-of-two table shift per (row, K tile), int32 [R, F / tile_fours], in [0, 3]."""
    r, f = x4.shape[:2]
    mx = _abs_sums(x4.astype(np.int32)).reshape(r, f // tile_fours, tile_fours).max(axis=2)
    return sum((mx > lim).astype(np.int32) for lim in _INT8_SHIFT_LIMITS)


def shift_round_half_even(t: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """``round_half_even(t / 2**sh)`` in integers (int32 in and out, ``sh >= 0``)."""
    t, sh = np.asarray(t, np.int32), np.asarray(sh, np.int32)
    half = np.left_shift(1, np.maximum(sh - 1, 0))
    q = (t + half - 1 + ((t >> sh) & 1)) >> sh
    return np.where(sh == 0, t, q).astype(np.int32)


# ---------------------------------------------------------------- reference

def _lookup_sums(q: np.ndarray, nib: np.ndarray, fours: int) -> np.ndarray:
    """``sum_i 2**i * sum_{f in block} q[r, f, nib[i, f, n]]`` per block of ``fours`` 4-groups:
    int64 [R, F / fours, N]."""
    r, f, _ = q.shape
    rows_f = np.arange(f)[:, None]
    out = np.zeros((r, f // fours, nib.shape[2]), np.int64)
    for i in range(nib.shape[0]):
        look = q[:, rows_f, nib[i]].astype(np.int64)                     # [R, F, N]
        out += look.reshape(r, f // fours, fours, -1).sum(axis=2) << i
    return out


def reference(a: np.ndarray, planes: np.ndarray, scales: np.ndarray | None = None,
              zero_points: np.ndarray | None = None, *, layout: LutLayout,
              table_bits: int | None = None, dequant: bool = False) -> np.ndarray:
    """Normative numpy LutMatMul (see the module docstring).

    Args:
        a: float32 or int8 activations [..., M, K].
        planes: uint8 packed weight (``layout.planes_shape``).
        scales: float32 [K/group_size, N] (float32 activations only).
        zero_points: uint8 [K/group_size, N], float32 (float32 ``a`` only) or None
            (symmetric).
        table_bits: 8 or 16 for int8 activations (default 16), 8 (default) for float32.
        dequant: multiply by the dequantized weight instead of table lookup (the ``dequant``
            attribute; ``table_bits`` is then unused).

    Returns:
        float32 [..., M, N] (float32 activations) or int32 [..., M, N] at scale s_x*s[n]/2.
    """
    a, planes = np.asarray(a), np.asarray(planes)
    check_operands(layout, a, planes, scales, zero_points)
    tb = _table_bits(a.dtype, table_bits)
    lead = a.shape[:-1]
    if dequant:
        a2 = a.reshape(-1, layout.K)
        if a.dtype == np.float32:
            w = dequantized_weight(planes, scales, zero_points, layout)
            out = (a2.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
        else:
            two = doubled_weight(codes(planes, layout), zero_points, layout.bits)
            out = _int32_checked(a2.astype(np.int64) @ two.astype(np.int64))
        return out.reshape(*lead, layout.N)
    x4 = a.reshape(-1, layout.K // G, G)
    nib = plane_nibbles(planes, layout)
    zc = zero_constant(layout, zero_points)
    gf = layout.group_size // G
    if a.dtype == np.float32:
        q, ts = quantize_float_tables(x4, gf)
        acc = _lookup_sums(q, nib, gf).astype(np.float32)                 # [R, NG, N]
        t15 = tables(x4)[..., 15]                                         # sum x per 4-group
        out = np.zeros((x4.shape[0], layout.N), np.float32)
        for g in range(layout.n_groups):
            rs = np.zeros(x4.shape[0], np.float32)
            for f in range(g * gf, (g + 1) * gf):
                rs = rs + t15[:, f]
            inner = (ts[:, g:g + 1] * acc[:, g, :] + zc[g].astype(np.float32) * rs[:, None])
            out = out + scales[g] * (inner * np.float32(0.5))
        return out.reshape(*lead, layout.N)
    x4i = x4.astype(np.int32)
    t = tables(x4i)
    tf = layout.tile_k // G
    if tb == 8:
        sh = int8_table_shift(x4i, tf)
        q = shift_round_half_even(t, np.repeat(sh, tf, axis=1)[..., None])
        per_tile = _lookup_sums(q, nib, tf) << sh[..., None].astype(np.int64)
        acc = per_tile.sum(axis=1)
    else:
        acc = _lookup_sums(t, nib, layout.K // G)[:, 0]
    rowsum = x4i.astype(np.int64).reshape(x4.shape[0], layout.n_groups, -1).sum(axis=2)
    acc = acc + rowsum @ zc.astype(np.int64)
    return _int32_checked(acc).reshape(*lead, layout.N)


def _int32_checked(acc: np.ndarray) -> np.ndarray:
    if acc.size and np.abs(acc).max() > INT32_MAX:
        raise OverflowError("LutMatMul: accumulator exceeds int32 (the compile-time bound failed)")
    return acc.astype(np.int32)


def accumulator_bound(layout: LutLayout, a_max: int = 128, table_bits: int = 16) -> int:
    """A bound on ``|acc|`` of the integer variant for ``|x| <= a_max`` (a Python int).

    ``|2 * (u - z)| <= 2 * (2**b - 1)`` for every scheme, so exact tables give
    ``a_max * K * 2 * (2**b - 1)``; int8 tables add at most ``2**(sh-1) <= 4`` per lookup,
    i.e. ``(2**b - 1) * K`` in all. The compiler checks it against int32 (the reference also
    checks the values at run time)."""
    top = (1 << layout.bits) - 1
    return layout.K * top * (2 * a_max + (1 if table_bits == 8 else 0))


# ---------------------------------------------------------------- numba

@njit(cache=True, inline="always")
def _row_tables(x, k4):
    """Float or int tables [k4, 16] (same order of operations as :func:`tables`)."""
    t = np.empty((k4, 16), x.dtype)
    for f in range(k4):
        for idx in range(8):
            v = x[4 * f] if idx & 1 else -x[4 * f]
            v = v + (x[4 * f + 1] if idx & 2 else -x[4 * f + 1])
            v = v + (x[4 * f + 2] if idx & 4 else -x[4 * f + 2])
            v = v + (-x[4 * f + 3])
            t[f, idx] = v
            t[f, 15 - idx] = -v
    return t


@njit(cache=True, inline="always")
def _abs_sum4(x, f):
    """((|x0| + |x1|) + |x2|) + |x3| of 4-group f (the order of :func:`_abs_sums`)."""
    return ((abs(x[4 * f]) + abs(x[4 * f + 1])) + abs(x[4 * f + 2])) + abs(x[4 * f + 3])


@njit(cache=True, inline="always")
def _lookup_tile(qt, planes, nt, kt, f0, nbits, tk4, tn2, acc16):
    """One (n tile, k tile, plane) per call: int16 sums of <= 16 lookups for tile_n columns."""
    for h in range(2 * tn2):
        acc16[h] = 0
    for fi in range(tk4):
        for h in range(tn2):
            byte = planes[nt, kt, nbits, fi, h]
            acc16[h] += qt[f0 + fi, byte & 15]
            acc16[tn2 + h] += qt[f0 + fi, byte >> 4]


@njit(cache=True, parallel=True)
def _lut_float_nb(x2, planes, scales, zc, gsize, out):
    rows, k = x2.shape
    n = out.shape[1]
    nt_count, kt_count, nbits, tk4, tn2 = planes.shape
    tn = 2 * tn2
    k4 = k // 4
    gf = gsize // 4
    ngroups = k // gsize
    for r in prange(rows):
        x = x2[r]
        t = _row_tables(x, k4)
        ts = np.empty(ngroups, np.float32)
        rs = np.zeros(ngroups, np.float32)
        for g in range(ngroups):
            mx = np.float32(0)
            for f in range(g * gf, (g + 1) * gf):
                mx = max(mx, _abs_sum4(x, f))
                rs[g] = rs[g] + t[f, 15]
            ts[g] = mx / np.float32(127)
        q = np.empty((k4, 16), np.int8)
        for f in range(k4):
            d = ts[f // gf] if ts[f // gf] > 0 else np.float32(1)
            for idx in range(16):
                v = np.rint(t[f, idx] / d)
                q[f, idx] = np.int8(min(max(v, -127.0), 127.0))
        acc = np.zeros((ngroups, nt_count * tn), np.int32)
        acc16 = np.empty(tn, np.int16)
        for nt in range(nt_count):
            for kt in range(kt_count):
                g = kt * tk4 // gf
                for i in range(nbits):
                    _lookup_tile(q, planes, nt, kt, kt * tk4, i, tk4, tn2, acc16)
                    for h in range(tn):
                        acc[g, nt * tn + h] += np.int32(acc16[h]) << i
        for c in range(n):
            y = np.float32(0)
            for g in range(ngroups):
                inner = ts[g] * np.float32(acc[g, c]) + np.float32(zc[g, c]) * rs[g]
                y = y + scales[g, c] * (inner * np.float32(0.5))
            out[r, c] = y


@njit(cache=True, parallel=True)
def _lut_int_nb(x2, planes, zc, gsize, int8_tables, out):
    rows, k = x2.shape
    n = out.shape[1]
    nt_count, kt_count, nbits, tk4, tn2 = planes.shape
    tn = 2 * tn2
    k4 = k // 4
    ngroups = k // gsize
    for r in prange(rows):
        x = x2[r].astype(np.int32)
        t = _row_tables(x, k4)
        sh = np.zeros(kt_count, np.int32)
        if int8_tables:
            for kt in range(kt_count):
                mx = 0
                for f in range(kt * tk4, (kt + 1) * tk4):
                    mx = max(mx, _abs_sum4(x, f))
                sh[kt] = (mx > 127) + (mx > 254) + (mx > 508)
                s_ = sh[kt]
                if s_ > 0:
                    half = 1 << (s_ - 1)
                    for f in range(kt * tk4, (kt + 1) * tk4):
                        for idx in range(16):
                            v = t[f, idx]
                            t[f, idx] = (v + half - 1 + ((v >> s_) & 1)) >> s_
        qt = t.astype(np.int16)
        acc = np.zeros(nt_count * tn, np.int32)
        acc16 = np.empty(tn, np.int16)
        for nt in range(nt_count):
            for kt in range(kt_count):
                for i in range(nbits):
                    _lookup_tile(qt, planes, nt, kt, kt * tk4, i, tk4, tn2, acc16)
                    for h in range(tn):
                        acc[nt * tn + h] += (np.int32(acc16[h]) << sh[kt]) << i
        rowsum = np.zeros(ngroups, np.int32)
        for kk in range(k):
            rowsum[kk // gsize] += x[kk]
        for c in range(n):
            v = acc[c]
            for g in range(ngroups):
                v += zc[g, c] * rowsum[g]
            out[r, c] = v


@njit(cache=True, parallel=True)
def _dequant_nb(x2, w, out):
    """``out = x2 @ w`` summed in x2's dtype (float64 or int64), cast once at the end."""
    rows, k = x2.shape
    n = w.shape[1]
    for r in prange(rows):
        acc = np.zeros(n, x2.dtype)
        for kk in range(k):
            x = x2[r, kk]
            for c in range(n):
                acc[c] += x * w[kk, c]
        for c in range(n):
            out[r, c] = acc[c]


def numba_kernel(a: np.ndarray, planes: np.ndarray, scales: np.ndarray | None = None,
                 zero_points: np.ndarray | None = None, *, layout: LutLayout,
                 table_bits: int | None = None, dequant: bool = False) -> np.ndarray:
    """numba twin of :func:`reference`: bit-identical for int8 activations; for float32 the
    same operations in the same order (agreement within 1e-5 of max |y| asserted; ``dequant``:
    the reference's float64 sum, within its error bound)."""
    a, planes = np.asarray(a), np.asarray(planes)
    check_operands(layout, a, planes, scales, zero_points)
    tb = _table_bits(a.dtype, table_bits)
    x2 = np.ascontiguousarray(a.reshape(-1, layout.K))
    if dequant:
        if a.dtype == np.float32:
            w = dequantized_weight(planes, scales, zero_points, layout).astype(np.float64)
            out = np.empty((x2.shape[0], layout.N), np.float32)
            _dequant_nb(x2.astype(np.float64), w, out)
        else:
            w = doubled_weight(codes(planes, layout), zero_points, layout.bits)
            out = np.empty((x2.shape[0], layout.N), np.int32)
            _dequant_nb(x2.astype(np.int64), w.astype(np.int64), out)
        return out.reshape(*a.shape[:-1], layout.N)
    planes = np.ascontiguousarray(planes)
    zc = zero_constant(layout, zero_points)
    if a.dtype == np.float32:
        out = np.empty((x2.shape[0], layout.N), np.float32)
        _lut_float_nb(x2, planes, np.ascontiguousarray(scales), zc, layout.group_size, out)
    else:
        out = np.empty((x2.shape[0], layout.N), np.int32)
        _lut_int_nb(x2, planes, zc, layout.group_size, tb == 8, out)
    return out.reshape(*a.shape[:-1], layout.N)


# ---------------------------------------------------------------- TVM TE

def te_compute(a: Any, planes: Any, scales: Any = None, zero_points: Any = None, *,
               layout: LutLayout, table_bits: int | None = None, dequant: bool = False) -> Any:
    """TVM TE LutMatMul: ``a`` [..., M, K] float32 or int8, ``planes`` uint8 packed,
    ``scales`` float32 [K/group_size, N] (float a), ``zero_points`` uint8, float32 (float a)
    or None.
    Generic compute (stages: tables, table scale/shift, lookup sums, combine; ``dequant``: the
    dequantized weight, then a matmul); the result is float32 or int32 [..., M, N]."""
    from tvm import te, tirx

    dtype = str(a.dtype)
    tb = _table_bits(np.dtype(dtype), table_bits)
    if [int(d) for d in planes.shape] != list(layout.planes_shape) or int(a.shape[-1]) != layout.K:
        raise ArtifactError(f"LutMatMul TE operands {list(a.shape)}, {list(planes.shape)} do "
                            f"not match the layout {layout.to_json()}")
    lead = list(a.shape[:-1])
    nl = len(lead)
    f_count, gf, tf = layout.K // G, layout.group_size // G, layout.tile_k // G
    tn, tn2 = layout.tile_n, layout.tile_n // 2
    acc_t = "float32" if dtype == "float32" else "int32"

    def xv(li, f, j):
        return a(*li, f * G + j).astype(acc_t)

    def table_body(*idx):
        *li, f, e = idx
        base = tirx.Select(e < 8, e, 15 - e)
        v = None
        for j in range(G):
            xj = xv(li, f, j)
            term = (-xj if j == G - 1 else
                    tirx.Select(tirx.bitwise_and(tirx.shift_right(base, j), 1) == 1, xj, -xj))
            v = term if v is None else v + term
        return tirx.Select(e < 8, v, -v)

    table = te.compute((*lead, f_count, 16), table_body, name="lut_table")

    def abs_sum(li, f):
        return ((tirx.abs(xv(li, f, 0)) + tirx.abs(xv(li, f, 1))) + tirx.abs(xv(li, f, 2))) \
            + tirx.abs(xv(li, f, 3))

    def nibble(i, f, n):
        byte = planes[n // tn, f // tf, i, f % tf, n % tn % tn2].astype("int32")
        return tirx.bitwise_and(tirx.shift_right(byte, (n % tn // tn2) * 4), 15)

    if zero_points is None:
        zc0 = int(zero_constant(layout, None)[0, 0])

        def zc(g, n):
            return tirx.const(zc0, acc_t)
    elif str(zero_points.dtype) == "float32":
        def zc(g, n):
            return (tirx.const(float((1 << layout.bits) - 1), "float32")
                    - tirx.const(2.0, "float32") * zero_points[g, n])
    else:
        def zc(g, n):
            return (tirx.const((1 << layout.bits) - 1, "int32")
                    - 2 * zero_points[g, n].astype("int32")).astype(acc_t)

    if dequant:
        return _te_dequant(te, tirx, a, nibble, scales, zero_points, layout, lead, acc_t)

    if dtype == "float32":
        rf = te.reduce_axis((0, gf), name="rf")
        tmax = te.compute((*lead, layout.n_groups),
                          lambda *i: te.max(abs_sum(i[:-1], i[-1] * gf + rf), axis=rf),
                          name="lut_absmax")
        ts = te.compute(tmax.shape, lambda *i: tmax(*i) / tirx.const(127.0, "float32"),
                        name="lut_scale")

        def q_body(*idx):
            *li, f, e = idx
            s = ts(*li, f // gf)
            d = tirx.Select(s > tirx.const(0.0, "float32"), s, tirx.const(1.0, "float32"))
            v = tirx.nearbyint(table(*li, f, e) / d)
            return tirx.max(tirx.min(v, tirx.const(127.0, "float32")),
                            tirx.const(-127.0, "float32")).astype("int8")

        q = te.compute(table.shape, q_body, name="lut_qtable")
        rg, ri = te.reduce_axis((0, gf), name="rg"), te.reduce_axis((0, layout.bits), name="ri")
        lsum = te.compute(
            (*lead, layout.n_groups, layout.N),
            lambda *i: te.sum(tirx.shift_left(
                q(*i[:nl], i[nl] * gf + rg, nibble(ri, i[nl] * gf + rg, i[nl + 1])).astype("int32"),
                ri), axis=[rg, ri]), name="lut_lookup")
        rr = te.reduce_axis((0, gf), name="rr")
        rsum = te.compute((*lead, layout.n_groups),
                          lambda *i: te.sum(table(*i[:-1], i[-1] * gf + rr, 15), axis=rr),
                          name="lut_rowsum")
        rgo = te.reduce_axis((0, layout.n_groups), name="rgo")
        half = tirx.const(0.5, "float32")

        def out_body(*idx):
            *li, n = idx
            inner = ts(*li, rgo) * lsum(*li, rgo, n).astype("float32") + zc(rgo, n) * rsum(*li, rgo)
            return te.sum(scales[rgo, n] * (inner * half), axis=rgo)

        return te.compute((*lead, layout.N), out_body, name="lut_matmul")

    if tb == 8:
        rt = te.reduce_axis((0, tf), name="rt")
        tmax = te.compute((*lead, layout.K // layout.tile_k),
                          lambda *i: te.max(abs_sum(i[:-1], i[-1] * tf + rt), axis=rt),
                          name="lut_absmax")
        shift = te.compute(tmax.shape, lambda *i: sum(
            (tmax(*i) > lim).astype("int32") for lim in _INT8_SHIFT_LIMITS), name="lut_shift")

        def q_body(*idx):
            *li, f, e = idx
            s = shift(*li, f // tf)
            v = table(*li, f, e)
            half = tirx.shift_left(tirx.const(1, "int32"), tirx.max(s - 1, 0))
            r = tirx.shift_right(v + half - 1 + tirx.bitwise_and(tirx.shift_right(v, s), 1), s)
            return tirx.Select(s == 0, v, r).astype("int16")

        q = te.compute(table.shape, q_body, name="lut_qtable")

        def tile_shift(li, f):
            return shift(*li, f // tf)
    else:
        q = table

        def tile_shift(li, f):
            return tirx.const(0, "int32")

    rk, ri = te.reduce_axis((0, f_count), name="rk"), te.reduce_axis((0, layout.bits), name="ri")
    lsum = te.compute(
        (*lead, layout.N),
        lambda *i: te.sum(tirx.shift_left(
            q(*i[:nl], rk, nibble(ri, rk, i[nl])).astype("int32"),
            ri + tile_shift(i[:nl], rk)), axis=[rk, ri]), name="lut_lookup")
    rr = te.reduce_axis((0, layout.group_size), name="rr")
    rsum = te.compute((*lead, layout.n_groups),
                      lambda *i: te.sum(a(*i[:-1], i[-1] * layout.group_size + rr).astype("int32"),
                                        axis=rr), name="lut_rowsum")
    rgo = te.reduce_axis((0, layout.n_groups), name="rgo")
    zterm = te.compute((*lead, layout.N),
                       lambda *i: te.sum(zc(rgo, i[nl]) * rsum(*i[:nl], rgo), axis=rgo),
                       name="lut_zero")
    return te.compute((*lead, layout.N), lambda *i: lsum(*i) + zterm(*i), name="lut_matmul")


def _te_dequant(te: Any, tirx: Any, a: Any, nibble: Any, scales: Any, zero_points: Any,
                layout: LutLayout, lead: list, acc_t: str) -> Any:
    """``dequant = 1``: the weight ``s * ((2u - z2) * 0.5)`` (float) or ``2u - z2`` (int32)
    as a [K, N] stage, then ``a @ w`` summed in float32 / int32."""
    b, gs = layout.bits, layout.group_size

    def u(k, n):
        return sum(tirx.shift_left(tirx.bitwise_and(
            tirx.shift_right(nibble(i, k // G, n), k % G), 1), i) for i in range(b))

    def z2(g, n):
        if zero_points is None:
            return tirx.const((1 << b) if b >= 2 else 1, acc_t)
        if str(zero_points.dtype) == "float32":
            return tirx.const(2.0, "float32") * zero_points[g, n]
        return 2 * zero_points[g, n].astype("int32")

    if acc_t == "float32":
        w = te.compute((layout.K, layout.N), lambda k, n: scales[k // gs, n] * (
            (tirx.const(2.0, "float32") * u(k, n).astype("float32") - z2(k // gs, n))
            * tirx.const(0.5, "float32")), name="lut_dequant")
    else:
        w = te.compute((layout.K, layout.N), lambda k, n: 2 * u(k, n) - z2(k // gs, n),
                       name="lut_dequant")
    rk = te.reduce_axis((0, layout.K), name="rk")
    return te.compute((*lead, layout.N), lambda *i: te.sum(
        a(*i[:-1], rk).astype(acc_t) * w[rk, i[-1]], axis=rk), name="lut_matmul")


# ---------------------------------------------------------------- ONNX schema

ATTRIBUTES = ("bits", "g", "group_size", "K", "N", "tile_n", "tile_k", "layout_version",
              "table_bits")


def schema() -> object:
    """ONNX schema of ``edgert.LutMatMul``."""
    from onnx import TensorProto

    from edgert.ops import make_schema

    def infer(ctx: Any) -> None:
        """float32 for float A, int32 for int8 A; shape [..., M, N] (N from the attribute)."""
        import onnx

        a = ctx.get_input_type(0)
        if a is None or not a.HasField("tensor_type"):
            return
        out = onnx.TypeProto()
        out.tensor_type.elem_type = (TensorProto.FLOAT
                                     if a.tensor_type.elem_type == TensorProto.FLOAT
                                     else TensorProto.INT32)
        n_attr = ctx.get_attribute("N")
        if a.tensor_type.HasField("shape") and len(a.tensor_type.shape.dim) >= 2 and n_attr:
            dims = list(a.tensor_type.shape.dim)[:-1]
            out.tensor_type.shape.dim.extend(dims)
            out.tensor_type.shape.dim.add().dim_value = n_attr.i
        ctx.set_output_type(0, out)

    docs = {
        "bits": "weight bits b (1..4)", "g": "activations per table (4)",
        "group_size": "rows of K per scale / zero point", "K": "inner dimension",
        "N": "output columns", "tile_n": "columns per packed tile",
        "tile_k": "rows of K per packed tile (<= 64)",
        "layout_version": "packed byte order version (1)",
        "table_bits": "8 or 16: table entry width for int8 A (8 for float A)",
        "dequant": "1: multiply by the dequantized weight instead of table lookup (default 0)",
    }
    return make_schema(
        OP_TYPE, __doc__ or "",
        inputs=[("A", "T", "activations [..., M, K]"),
                ("W", "tensor(uint8)", "packed bit planes (layout version 1)"),
                ("scales?", "tensor(float)", "[K/group_size, N], float A only"),
                ("zero_points?", "Z", "[K/group_size, N] codes (asymmetric), float: exact-min")],
        outputs=[("Y", "U", "float32 [..., M, N], or int32 at scale s_a * s_w[n] / 2")],
        type_constraints=[("T", ["tensor(float)", "tensor(int8)"], "activations"),
                          ("U", ["tensor(float)", "tensor(int32)"], "output"),
                          ("Z", ["tensor(uint8)", "tensor(float)"], "zero points")],
        attributes=[(name, "INT", docs[name]) for name in ATTRIBUTES],
        optional_attributes=[("dequant", "INT", docs["dequant"])],
        infer=infer,
    )
