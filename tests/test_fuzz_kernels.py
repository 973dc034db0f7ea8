"""Property-based fuzzing of every op in ``ops/`` (hypothesis): the numba kernel equals the numpy
reference bit for bit on random variations of the op's own example.

Each case draws a seed for ``spec.example(rng)`` (the op's values and attributes), then varies
it: the leading axis of the inputs that share the first input's leading size is cut to fewer
rows or doubled (a second, differently perturbed copy appended), and the first input (the
data operand) is pushed to extremes inside its own domain: random elements set to its
minimum or maximum, all of it at the minimum, at the maximum or zero, floats scaled by
powers of ten from 1e-30 to 1e30. A variation the reference itself refuses (an exception) is
discarded, never fed to numba. TVM is not fuzzed here (a build per example is too slow):
tests/test_op_*.py check TVM against the same references.

CI runs a fixed, derandomized set of ``EDGERT_FUZZ_EXAMPLES`` (default 8) cases per op;
developers raise it (``EDGERT_FUZZ_EXAMPLES=2000``) for a longer search.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgert.ops._common import registry  # noqa: E402

from ophelpers import assert_bit_exact  # noqa: E402

EXAMPLES = int(os.environ.get("EDGERT_FUZZ_EXAMPLES", "8"))
OPS = registry.names()
VALUE_MODES = ("as_is", "edges", "all_min", "all_max", "zeros", "scaled")
SHAPE_MODES = ("as_is", "fewer_rows", "double_rows")
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


def _push(a: np.ndarray, mode: str, frac: float, power: int,
          rng: np.random.Generator) -> np.ndarray:
    """``a`` with its values pushed to extremes of its own range (a copy)."""
    if a.size == 0 or mode == "as_is" or a.dtype == np.bool_:
        return a
    lo, hi = a.min(), a.max()
    out = a.copy()
    if mode == "edges":
        mask = rng.random(a.shape) < frac
        out[mask] = np.where(rng.random(int(mask.sum())) < 0.5, lo, hi).astype(a.dtype)
    elif mode == "all_min":
        out[...] = lo
    elif mode == "all_max":
        out[...] = hi
    elif mode == "zeros":
        out[...] = 0
    elif mode == "scaled" and a.dtype.kind == "f":
        with np.errstate(over="ignore"):
            out = (a * a.dtype.type(10.0 ** power)).astype(a.dtype)
        out[~np.isfinite(out)] = 0
    return out


def _reshape_rows(inputs: list, mode: str, rows: int, rng: np.random.Generator,
                  push: tuple) -> list:
    """Cut or double the leading axis of the inputs whose leading size is the first's."""
    first = inputs[0]
    if mode == "as_is" or first is None or first.ndim < 2:
        return inputs
    n = first.shape[0]
    out = []
    for i, a in enumerate(inputs):
        if a is None or a.ndim < 2 or a.shape[0] != n:
            out.append(a)
        elif mode == "fewer_rows":
            out.append(np.ascontiguousarray(a[:max(1, rows % n + 1)]))
        else:
            extra = _push(a, *push, rng) if i == 0 else a
            out.append(np.concatenate([a, extra]))
    return out


def _outputs(value: object) -> list[np.ndarray]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


@pytest.mark.parametrize("name", OPS)
def test_numba_kernel_equals_reference_bit_for_bit(name):
    op = registry.get(name)
    spec, kernel = op.part("spec"), op.numba_kernel
    tried: list[int] = []

    @FUZZ
    @given(seed=st.integers(0, 2**32 - 1), value_mode=st.sampled_from(VALUE_MODES),
           shape_mode=st.sampled_from(SHAPE_MODES), frac=st.floats(0.0, 1.0),
           power=st.integers(-30, 30), rows=st.integers(0, 64))
    def check(seed, value_mode, shape_mode, frac, power, rows):
        rng = np.random.default_rng(seed)
        example = spec.example(rng)
        kwargs = op.node_kwargs(example.attrs)
        inputs = list(example.inputs)
        push = (value_mode, frac, power)
        inputs = _reshape_rows(inputs, shape_mode, rows, rng, push)
        if inputs[0] is not None:
            inputs[0] = _push(inputs[0], *push, rng)
        try:
            with np.errstate(all="ignore"):
                want = _outputs(spec.reference(*inputs, **kwargs))
        except Exception:       # a variation outside the op's domain: not fed to numba
            return
        with np.errstate(all="ignore"):
            got = _outputs(kernel(*inputs, **kwargs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_bit_exact(f"{name} numba (seed {seed}, {value_mode}, {shape_mode})",
                             np.asarray(g), np.asarray(w))
        tried.append(seed)

    check()
    assert tried, f"{name}: every variation was refused by the reference"
