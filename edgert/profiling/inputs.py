"""Inputs to profile with: the user's arrays, and random ones of the declared shapes and dtypes
for the rest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgert.errors import InputError


def random_feed(inputs: Sequence[Any], *, batch: int = 1,
                given: Mapping[str, np.ndarray] | None = None,
                ranges: Mapping[str, Mapping[str, Any]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for ``inputs`` (:class:`edgert.NodeArg` s): the ``given`` arrays as they are, the
    others random: float standard normal, integers uniform in the manifest's ``range`` of that
    input (token ids) or in [0, 1], bool uniform.

    Symbolic dimensions take their size from a given input with the same symbol, else the
    first axis takes ``batch``; any other symbolic or unknown dimension is an error naming the
    input and the axis.

    Raises:
        InputError: a dimension that cannot be chosen, an unknown given input, batch < 1.
    """
    given = dict(given or {})
    ranges = ranges or {}
    if batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}")
    names = {i.name for i in inputs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the model's "
                         f"inputs are {', '.join(i.name for i in inputs)}")
    symbols = _given_symbols(inputs, given)
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        if spec.name in given:
            feed[spec.name] = given[spec.name]
            continue
        shape = [_dim(spec, axis, d, symbols, batch) for axis, d in enumerate(spec.shape)]
        feed[spec.name] = _random_array(rng, shape, spec.dtype, ranges.get(spec.name))
    return feed


def _given_symbols(inputs: Sequence[Any], given: Mapping[str, np.ndarray]) -> dict[str, int]:
    symbols: dict[str, int] = {}
    for spec in inputs:
        value = given.get(spec.name)
        if value is None or np.ndim(value) != len(spec.shape):
            continue
        for want, got in zip(spec.shape, np.shape(value)):
            if isinstance(want, str):
                symbols.setdefault(want, int(got))
    return symbols


def _dim(spec: Any, axis: int, dim: int | str | None, symbols: Mapping[str, int],
         batch: int) -> int:
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and dim in symbols:
        return symbols[dim]
    if axis == 0:
        return batch
    label = f"{dim!r}" if dim is not None else "unknown"
    raise InputError(f"input {spec.name!r}: axis {axis} ({label}) is dynamic and only the batch "
                     f"axis is chosen for you (--batch); give this input: "
                     f"--input {spec.name}=file.npy")


def _random_array(rng: np.random.Generator, shape: list[int], dtype: str,
                  bounds: Mapping[str, Any] | None) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        lo, hi = (int(bounds["min"]), int(bounds["max"])) if bounds else (0, 1)
        return rng.integers(lo, hi + 1, shape).astype(dt)
    raise InputError(f"cannot make a random input of dtype {dtype}; give it with --input")
