"""``Op``: one op of the edgert ONNX domain, as its folder ``ops/<name>/`` declares it.

An op folder is a sub-package of ``edgert.ops`` with these modules (``docs/adding-an-op.md``):

    spec.py     ``reference(*inputs, **kwargs)``: the normative numpy meaning;
                ``example(rng) -> Example``: a small random case (inputs + ONNX attributes)
    numba.py    ``kernel(*inputs, **kwargs)``: the numba twin, bit-identical to ``reference``
    tvm.py      ``te_compute(*inputs, **kwargs)``: the TVM TE compute;
                ``Converter``: the Relax ONNX-frontend converter class of the node
    schema.py   ``schema()``: the ONNX ``OpSchema``;
                ``node_kwargs(attrs)``: ONNX node attributes -> the keyword arguments that
                ``reference``, ``kernel`` and ``te_compute`` all take
    counts.py   ``counts(input_shapes, input_dtypes, attrs) -> OpCounts``: operations per call
    quantize.py OPTIONAL: the quantizer's rewrite rule producing this op

and an ``__init__.py`` that sets ``OP = Op("<OpType>", __name__)``. Every part is imported only
when asked for (:meth:`Op.part`), so finding the ops imports neither numba, TVM nor onnx.
Further modules (e.g. per-ISA schedules ``tvm_x86.py``, ``tvm_arm.py``) are listed in
``Op.extra_parts`` so that the registry test checks that they import.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

PARTS = ("spec", "numba", "tvm", "schema", "counts")
"""The modules every op folder has."""
PART_ENTRIES = {"spec": ("reference", "example"), "numba": ("kernel",),
                "tvm": ("te_compute", "Converter"), "schema": ("schema", "node_kwargs"),
                "counts": ("counts",)}
"""The names each part defines (what the consumers call)."""
OPTIONAL_PARTS = ("quantize",)
"""Modules an op folder may have."""


class UnsupportedAttribute(ValueError):
    """An ONNX attribute value the op's kernels do not handle (e.g. ``Requant`` to float)."""


@dataclass(frozen=True)
class Example:
    """A small random case of an op: what one ONNX node of it receives.

    Attributes:
        inputs: input arrays in node order (``None`` for an absent optional input).
        attrs: ONNX node attributes (name -> int, float, list or array), as an ONNX node
            stores them; ``Op.node_kwargs(attrs)`` gives the kernels' keyword arguments.
    """

    inputs: tuple[np.ndarray | None, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpCounts:
    """Operations of one call, by kind (all non-negative ints; 0 when the op has none).

    ``<type>_<op>`` counts scalar arithmetic in that type (``int64_div`` covers ``//``);
    ``shifts`` (any width), ``compares`` (max / min / clamp bounds / selects), ``lookups``
    (table loads), ``popcounts``; ``bytes_read`` / ``bytes_written``: tensor bytes an ideal
    kernel moves (every input and output once, intermediates in registers).
    """

    int8_mul: int = 0
    int8_add: int = 0
    int16_mul: int = 0
    int16_add: int = 0
    int32_add: int = 0
    int32_mul: int = 0
    int64_add: int = 0
    int64_mul: int = 0
    int64_div: int = 0
    fp32_add: int = 0
    fp32_mul: int = 0
    fp16_add: int = 0
    fp16_mul: int = 0
    lookups: int = 0
    popcounts: int = 0
    shifts: int = 0
    compares: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})

    def times(self, k: int) -> OpCounts:
        """Every count multiplied by ``k`` (e.g. per element -> per call)."""
        return OpCounts(**{name: v * int(k) for name, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def tensor_bytes(shapes: Sequence[Sequence[int]], dtypes: Sequence[Any]) -> int:
    """Bytes of tensors of these shapes and numpy dtypes (``None`` shapes are skipped)."""
    return sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
               for s, d in zip(shapes, dtypes) if s is not None)


@dataclass(frozen=True)
class Op:
    """One edgert op, found by :mod:`edgert.ops._common.registry` in its folder.

    Attributes:
        name: the ``op_type`` in the ``edgert`` ONNX domain (e.g. ``"Shiftmax"``).
        package: the folder's package (``edgert.ops.shiftmax``); pass ``__name__``.
        extra_parts: further sub-modules of the folder (schedules per ISA, kernel variants)
            that the registry test imports; load them with :meth:`part`.
    """

    name: str
    package: str
    extra_parts: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The folder name (``shiftmax``), also the PrimFunc name hint of its kernels."""
        return self.package.rsplit(".", 1)[-1]

    def part(self, part: str) -> ModuleType:
        """The folder's module ``part`` (imported on first use)."""
        return importlib.import_module(f"{self.package}.{part}")

    def has_part(self, part: str) -> bool:
        """Whether the folder has a module ``part`` (without importing it)."""
        return importlib.util.find_spec(f"{self.package}.{part}") is not None

    def missing_parts(self) -> list[str]:
        """What the folder lacks: ``"<part>"`` for an absent module of :data:`PARTS` or
        ``extra_parts``, ``"<part>.<name>"`` for an entry of :data:`PART_ENTRIES` a part does not
        define. Imports every part (numba and TVM included)."""
        missing: list[str] = []
        for part in (*PARTS, *self.extra_parts):
            if not self.has_part(part):
                missing.append(part)
                continue
            module = self.part(part)
            missing += [f"{part}.{name}" for name in PART_ENTRIES.get(part, ())
                        if not hasattr(module, name)]
        return missing

    # --- the parts ------------------------------------------------------------------------
    @property
    def spec(self) -> ModuleType:
        return self.part("spec")

    @property
    def numba(self) -> ModuleType:
        return self.part("numba")

    @property
    def tvm(self) -> ModuleType:
        return self.part("tvm")

    @property
    def quantize(self) -> ModuleType | None:
        """The quantizer's rewrite rule module, or ``None`` when the folder has none."""
        return self.part("quantize") if self.has_part("quantize") else None

    # --- the functions consumers call -----------------------------------------------------
    @property
    def reference(self) -> Callable[..., np.ndarray]:
        """``spec.reference(*inputs, **kwargs)``: the normative numpy function."""
        return self.spec.reference

    @property
    def numba_kernel(self) -> Callable[..., np.ndarray]:
        """``numba.kernel(*inputs, **kwargs)``: bit-identical to :attr:`reference`."""
        return self.numba.kernel

    @property
    def te_compute(self) -> Callable[..., Any]:
        """``tvm.te_compute(*tensors, **kwargs)``: the TE compute."""
        return self.tvm.te_compute

    @property
    def converter(self) -> type:
        """``tvm.Converter``: the Relax ONNX-frontend converter class of this op's nodes."""
        return self.tvm.Converter

    def schema(self) -> Any:
        """The ``onnx.defs.OpSchema`` of this op."""
        return self.part("schema").schema()

    def node_kwargs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """ONNX node attributes -> keyword arguments of reference / kernel / te_compute.

        Raises:
            UnsupportedAttribute: an attribute value the kernels do not handle.
        """
        return self.part("schema").node_kwargs(attrs)

    def counts(self, input_shapes: Sequence[Sequence[int] | None], input_dtypes: Sequence[Any],
               attrs: Mapping[str, Any]) -> OpCounts:
        """Operations of one call on inputs of these shapes and dtypes (``None`` for an absent
        optional input) with these ONNX attributes."""
        return self.part("counts").counts(input_shapes, input_dtypes, attrs)

    def example(self, rng: np.random.Generator) -> Example:
        """A small random case (``spec.example``), for the backend-agreement tests."""
        return self.spec.example(rng)


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for an op folder's ``__init__``: ``names`` maps a public
    name to the folder module defining it (e.g. ``{"numba_kernel": "numba"}``), which is imported
    on first access, so ``from edgert.ops import shiftmax; shiftmax.numba_kernel`` keeps working
    without importing numba or TVM with the package."""

    def __getattr__(name: str) -> Any:
        part = names.get(name)
        if part is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{part}"), name)

    return __getattr__
