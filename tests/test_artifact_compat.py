"""Artifacts written by edgert 0.2.0 (before ops moved into op folders and the compiler into
stages) still load and compute what they computed then.

``tests/data/artifacts_0.2.0/`` holds the built-in digits ViT compiled by 0.2.0 for
``x86-avx2`` in fp32, integer-only and 4-bit LUT weights, and ``expected.npz``: 0.2.0's outputs
for 16 test images (TVM for all three, the numba backend for the integer one). The integer
graph's outputs must be bit-identical; the fp32 and LUT ones too, since the compiled library is
the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgert
from edgert.targets import can_run_here, get_target

DATA = Path(__file__).resolve().parent / "data" / "artifacts_0.2.0"
CASES = [("vit_fp32", "tvm"), ("vit_int", "tvm"), ("vit_int", "numba"), ("vit_w4", "tvm")]


@pytest.mark.parametrize(("name", "backend"), CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_artifact_of_0_2_0_runs_bit_identically(name: str, backend: str) -> None:
    if backend == "tvm" and not can_run_here(get_target("x86-avx2"))[0]:
        pytest.skip("the 0.2.0 artifacts hold x86-avx2 code; this CPU cannot run it")
    expected = np.load(DATA / "expected.npz")
    session = edgert.Session(DATA / f"{name}.edgert", backend=backend)
    (out,) = session.run(None, {session.get_inputs()[0].name: expected["images"]})
    key = name if backend == "tvm" else f"{name}_{backend}"
    np.testing.assert_array_equal(out, expected[key])
