"""``edgert.ShiftMatMul`` (``ops/shift_matmul``): the rounding of weights to powers of two,
the spec against plain integer matmul, numpy == numba == TVM bit for bit (extremes included),
the vectorized x86 kernel, and rpi5 under qemu.

- Rounding (:func:`power_of_two_codes`): checked against a brute-force nearest over the 17
  representable weights (0, +-1, ..., +-128; ties to the smaller magnitude) and on worked
  values; stated bound: the relative error of a nonzero int8 weight is at most 1/3 (|q| = 1.5 *
  2^e lies halfway between 2^e and 2^(e+1)); regression pin on Gaussian weights (the relative
  RMS error of one layer, measured 0.1956, pinned at 0.215: +10%).
- The spec is an integer matmul with the decoded weights: ``reference(a, c) == a @ 2^e`` in
  int64, exact.
- Backends on int8 and int16 activations with every code, at the extremes (-32768 x 128 summed
  over K = 511: 2^31 - 2^22, one step from int32's limit), rank 2 to 4, column counts that are
  and are not multiples of 8.
- rpi5 (aarch64, NEON) under qemu == this machine == the reference executor on a small
  ``--int-only --shift-linear mlp`` MLP.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgert.ops import shift_matmul as S
from edgert.ops.shift_matmul import spec

ERROR_PIN = 0.215
"""Relative RMS error of power-of-two rounding on int8 Gaussian weights [256, 64] (per-column
scales): measured 0.1956, pinned with 10% slack."""


def _same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype == np.int32 and got.shape == want.shape, name
    assert np.array_equal(got, want), f"{name}: {int((got != want).sum())} elements differ"


# ---------------------------------------------------------------- rounding to powers of two


@pytest.mark.parametrize("v,want", [(0, 0), (0.5, 0), (0.6, 1), (1, 1), (2, 2), (3, 2), (5, 4),
                                    (6, 4), (7, 8), (11, 8), (13, 16), (96, 64), (97, 128),
                                    (127, 128), (-127, -128), (-3, -2), (300, 128)])
def test_worked_roundings(v, want):
    assert int(spec.code_weights(spec.power_of_two_codes(np.array([v])))[0]) == want


def test_rounding_is_the_nearest_representable_weight():
    levels = np.array([0] + [s * 2**e for e in range(8) for s in (1, -1)], np.float64)
    v = np.random.default_rng(0).uniform(-140, 140, 20_000)
    v[:255] = np.arange(-127, 128)                         # every int8 weight, the ties too
    got = spec.code_weights(spec.power_of_two_codes(v)).astype(np.float64)
    dist = np.abs(v[:, None] - levels[None, :])
    best = dist.min(axis=1)
    assert np.array_equal(np.abs(v - got), best)           # no nearer level exists
    ties = (dist == best[:, None]).sum(axis=1) > 1
    assert ties.any()
    smaller = np.array([min(levels[dist[i] == best[i]], key=abs) for i in np.flatnonzero(ties)])
    assert np.array_equal(got[ties], smaller)              # a tie goes to the smaller magnitude
    assert np.array_equal(np.sign(got[got != 0]), np.sign(v[got != 0]))


def test_rounding_error_of_int8_weights():
    q = np.arange(-127, 128)
    w = spec.code_weights(spec.power_of_two_codes(q))
    nz = q != 0
    rel = np.abs(w[nz] - q[nz]) / np.abs(q[nz])
    assert rel.max() <= 1 / 3 + 1e-12 and rel.max() == pytest.approx(1 / 3)   # at |q| = 3
    x = np.random.default_rng(1).standard_normal((256, 64))
    qw = np.rint(x / (np.abs(x).max(axis=0) / 127))
    r = spec.code_weights(spec.power_of_two_codes(qw))
    err = np.linalg.norm(r - qw) / np.linalg.norm(qw)
    print(f"power-of-two rounding of int8 Gaussian weights: relative RMS error {err:.4f}")
    assert 0.1 < err <= ERROR_PIN


# ---------------------------------------------------------------- the spec and the backends


def test_spec_is_an_integer_matmul_with_the_decoded_weights():
    rng = np.random.default_rng(2)
    a = rng.integers(-32768, 32768, (3, 7, 40)).astype(np.int16)
    c = rng.integers(-8, 9, (40, 11)).astype(np.int8)
    want = a.astype(np.int64) @ spec.code_weights(c)
    assert np.array_equal(S.reference(a, c), want.astype(np.int32))


def test_rejects_what_it_does_not_take():
    a = np.zeros((2, 4), np.int8)
    with pytest.raises(ValueError, match="codes"):
        S.reference(a, np.full((4, 3), 9, np.int8))
    with pytest.raises(TypeError):
        S.reference(a.astype(np.float32), np.zeros((4, 3), np.int8))
    with pytest.raises(ValueError, match="inner"):
        S.reference(a, np.zeros((5, 3), np.int8))
    with pytest.raises(OverflowError):                      # K = 513 at the extremes
        S.reference(np.full((1, 513), -32768, np.int16), np.full((513, 1), 8, np.int8))
    assert S.accumulator_bound(32768, np.full((512, 1), 8, np.int8)) == 2**31


def test_counts_have_shifts_and_no_multiplies():
    c = S.OP.counts([[2, 17, 32], [32, 64]], [np.int8, np.int8], {})
    assert c.shifts == 2 * 17 * 32 * 64 and c.int32_add == 2 * 17 * 32 * 64 + 32 * 64
    assert all(getattr(c, f) == 0 for f in ("int8_mul", "int16_mul", "int32_mul", "fp32_mul"))


def _operands(rng, a_shape, k, n, dtype, extreme):
    info = np.iinfo(dtype)
    a = rng.integers(info.min, int(info.max) + 1, (*a_shape, k)).astype(dtype)
    c = rng.integers(-8, 9, (k, n)).astype(np.int8)
    if extreme:                                             # the largest |sum| int32 holds
        a[..., 0, :] = info.min
        c[:, 0], c[:, 1] = 8, -8
    return a, c


def _tvm_kernel(a_shape: tuple, dtype: str, n: int, target: dict | None = None):
    """The scheduled kernel (as the converter emits it) built for the host (or ``target``);
    returns (library, LLVM IR text)."""
    import tvm
    from tvm import te

    from edgert.ops.shift_matmul.tvm import schedule, te_compute
    from edgert.targets import resolve_host

    a = te.placeholder(a_shape, dtype, "a")
    w = te.placeholder((a_shape[-1], n), "int8", "w")
    func = schedule(te.create_prim_func([a, w, te_compute(a, w)]))
    lib = tvm.compile(func, target=tvm.target.Target(target or resolve_host().tvm_target_dict()))
    return lib, lib.mod.inspect_source("ll")


CASES = [  # lead dims of A, K, N, dtype, extremes
    ((3, 17), 511, 10, np.int16, True),       # 2^31 - 2^22 at the extremes; N not a multiple of 8
    ((2, 2, 5), 64, 24, np.int8, True),       # rank 4
    ((40,), 96, 64, np.int16, False),         # rank 2, parallel rows
]


@pytest.mark.parametrize("lead,k,n,dtype,extreme", CASES)
def test_numpy_numba_tvm_agree(lead, k, n, dtype, extreme):
    import tvm

    rng = np.random.default_rng(k + n)
    a, c = _operands(rng, lead, k, n, dtype, extreme)
    want = S.reference(a, c)
    if k == 511:                                            # -32768 * 128 * 511
        assert int(np.abs(want.astype(np.int64)).max()) == 2**31 - 2**22
    _same("numba", S.numba_kernel(a, c), want)
    lib, _ = _tvm_kernel(a.shape, np.dtype(dtype).name, n)
    out = tvm.runtime.tensor(np.zeros(want.shape, np.int32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(c), out)
    _same("TVM", out.numpy(), want)


def test_kernel_shifts_vectors_on_each_cpu_target():
    """x86 AVX2 / AVX-512 and rpi5 (NEON): per k, 8 columns shifted by a vector of counts and
    added as one vector (``shl <8 x i32>``, ``add <8 x i32>`` in LLVM IR, which LLVM lowers to
    one ymm, half a zmm or two q registers), no multiply."""
    from edgert.targets import get_target

    for name in ("x86-avx2", "x86-avx512", "rpi5"):
        _, ll = _tvm_kernel((2, 17, 32), "int8", 64, get_target(name).tvm_target_dict())
        assert re.search(r"shl (nsw )?<8 x i32>", ll), name
        assert re.search(r"add (nsw )?<8 x i32>", ll), name
        assert not re.search(r"\bmul (nsw )?<\d+ x i32>", ll), name


# ---------------------------------------------------------------- rpi5 under qemu


def _shift_graph(path, codes: np.ndarray) -> None:
    """x int16 [b, 5, K] -> ShiftMatMul(x, codes) -> y int32 [b, 5, N]: the op as the
    ``--shift-linear`` pass writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ophelpers import integer_model

    k, n = codes.shape
    model = integer_model(
        [helper.make_node("ShiftMatMul", ["x", "w"], ["y"], name="fc", domain="edgert")],
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["b", 5, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["b", 5, n])],
        [numpy_helper.from_array(codes, "w")])
    onnx.save(model, path)


def test_rpi5_under_qemu_matches_host_and_reference(qemu_env, tmp_path):
    """One small case: rpi5 (NEON, under qemu) and this machine give the reference's bits."""
    import edgert
    from edgert.compiler import compile_model
    from edgert.targets.qemu import run_under_qemu

    rng = np.random.default_rng(4)
    x, codes = _operands(rng, (3, 5), 40, 12, np.int16, True)
    _shift_graph(tmp_path / "g.onnx", codes)
    want = S.reference(x, codes)
    rpi5 = compile_model(tmp_path / "g.onnx", tmp_path / "rpi5.edgert", target="rpi5")
    host = compile_model(tmp_path / "g.onnx", tmp_path / "host.edgert")
    [got_rpi5] = run_under_qemu(rpi5, {"x": x})
    [got_host] = edgert.Session(host).run(None, {"x": x})
    _same("rpi5 (qemu) vs reference", got_rpi5, want)
    _same("host vs reference", got_host, want)
