"""``LutMatMul``'s packed-weight layout and operand checks (numpy only, no TVM or numba).

Packed weights (layout version 1), uint8 ``[N_pad / tile_n, K / tile_k, bits, tile_k / 4,
tile_n / 2]``: byte ``[nt, kt, i, fi, h]`` holds ``nibble_i(f, nt*tile_n + h)`` in its low 4 bits
and ``nibble_i(f, nt*tile_n + tile_n/2 + h)`` in its high 4 bits, ``f = kt*tile_k/4 + fi``;
``nibble_i(f, n) = sum_j bit_i(u[4f + j, n]) << j``. Columns past N are zero codes. Every layout
parameter is in :class:`LutLayout` (ONNX attributes, JSON) and checked against the operands.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from edgert.errors import ArtifactError

OP_TYPE = "LutMatMul"
G = 4                       # activations per table (g); 2**G = 16 table entries
LAYOUT_VERSION = 1
MAX_TILE_K = 64             # 16 lookups per int16 partial sum
INT32_MAX = (1 << 31) - 1
INT8_SHIFT_LIMITS = (127, 254, 508)
"""int8 tables of int8 activations: a K tile's largest 4-group ``sum |x|`` above each limit adds
one to the tile's power-of-two table shift (so that ``|T / 2**sh| <= 127``)."""

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
        """Weight groups along K (rows of ``scales`` / ``zero_points``)."""
        return self.K // self.group_size

    @property
    def n_tiles(self) -> int:
        """Column tiles of ``tile_n`` (the last one zero padded past N)."""
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
        """Every field as a JSON object with sorted keys (stored in compiled PrimFuncs)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LutLayout:
        """The inverse of :meth:`to_json`; raises :class:`ArtifactError` on bad JSON, unknown
        or missing fields, or an invalid layout."""
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


def table_bits_for(a_dtype: np.dtype, table_bits: int | None) -> int:
    """The table entry width for activations of ``a_dtype``: 8 for float32 (the only choice),
    ``table_bits`` or 16 (the default, exact) for int8.

    Raises:
        TypeError / ValueError: another activation dtype, or a width it does not take.
    """
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

