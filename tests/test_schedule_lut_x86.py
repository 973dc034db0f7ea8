"""The x86 LutMatMul kernels (``ops/lut_matmul/tvm_x86.py``: AVX2, zmm, VNNI) equal the reference.

Table + lookup kernels are compared with ``lut_matmul.reference`` bit for bit over a grid of
layouts (every bit width and ternary, ragged N, odd 4-group counts per K tile, zero points,
M = 1, 9, 64), for float32 activations (int8 tables, group scales) and int8 activations
(exact int16 tables, and int8 tables with shifts); then a whole ``compile_model(...,
weight_bits=2)`` artifact must use the kernels (names and ``vpshufb`` in its library) and
match the numba backend. All kernels of the grid share one ``tvm.compile``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgert.ops.lut_matmul import tvm_dequant as sd
from edgert.ops.lut_matmul import tvm_x86 as sl
from edgert.compiler import weightquant as wq
from edgert.ops import lut_matmul
from edgert.targets import host_arch, host_cpu_features

from conftest import lowbit_mlp
from ophelpers import assert_bit_exact

HOST_AVX2 = host_arch() == "x86_64" and "avx2" in host_cpu_features()
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="needs an x86-64 CPU with AVX2")
TVM_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}

# (bits, group_size, K, N, float activations, table_bits, zero points ("float": exact-min),
#  tile_k)
CASES = [
    (1, 32, 128, 70, True, 8, False, None),
    (2, 128, 256, 96, True, 8, False, None),
    ("ternary", 64, 192, 33, True, 8, False, None),
    (3, 64, 256, 40, True, 8, True, None),
    (4, 32, 128, 40, True, 8, "float", None),   # exact-min: float32 zero points
    (4, 128, 256, 64, True, 8, False, None),
    (2, 120, 120, 50, True, 8, False, 20),       # 5 4-groups per K tile: a padded table
    (1, 256, 256, 33, False, 16, False, None),
    (2, 192, 192, 70, False, 16, False, None),
    (3, 128, 128, 96, False, 16, True, None),
    (4, 256, 256, 40, False, 8, False, None),
    (4, 120, 120, 31, False, 16, True, 20),
    (1, 240, 240, 50, True, 8, True, 20),        # 1 bit (biased lookups): padded, zero points
    (1, 128, 256, 40, False, 8, False, None),    # 1 bit, int8 tables with shifts (biased)
]
MS = (1, 9, 64)                 # 9: rows by pairs, then one left (float activations)
HALF_CASES = (1, 4)            # float activations: 2 bits symmetric, 4 bits exact-min
# dequantize-then-multiply kernel (float32 activations): (bits, group_size, K, N, zero points)
DEQUANT_CASES = [
    (1, 32, 128, 70, False),
    (2, 128, 256, 96, False),
    ("ternary", 64, 192, 33, False),
    (3, 32, 96, 40, True),        # K = 96: 32-row chunks
    (4, 32, 128, 40, "float"),    # exact-min
    (4, 128, 256, 64, False),
]
DEQUANT_MS = (1, 2, 3, 4, 9)      # single rows, a row block, the chunked path (>= 4 rows)


def _weight(case, seed):
    bits, gs, k, n, _, _, zp, tile_k = case
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    if bits == "ternary":
        return wq.quantize_ternary(w, gs, tile_k=tile_k)
    return wq.quantize_weight(w, bits, gs, zero_point=bool(zp), float_zero=zp == "float",
                              tile_k=tile_k)


def _acts(rng, case, m):
    k, float_acts = case[2], case[4]
    if float_acts:
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[0, :4] = 0.0                                   # a zero 4-group (table scale 0 rows)
        if m > 1:
            x[1] = 0.0                                   # a zero row
        return x
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x[0, :8] = -128                                      # |T| = 512, the int16 table extreme
    return x


@pytest.fixture(scope="module")
def lib():
    import tvm

    funcs = {}
    for j, case in enumerate(CASES):
        qw = _weight(case, j)
        fa, tb, zp = case[4], case[5], case[6]
        funcs[f"t{j}"] = sl.table_kernel(qw.layout, fa, tb, 2, f"t{j}")
        funcs[f"m{j}"] = sl.lookup_kernel(qw.layout, fa, tb, bool(zp), 2, f"m{j}")
    for j, case in enumerate(DEQUANT_CASES):
        funcs[f"d{j}"] = sd.dequant_kernel(_dequant_weight(case, j).layout, 2, name=f"d{j}")
    for j in HALF_CASES:                                 # float16 group scales
        qw = _weight(CASES[j], j)
        funcs[f"mh{j}"] = sl.lookup_kernel(qw.layout, True, 8, bool(CASES[j][6]), 2, f"mh{j}",
                                           half_scales=True)
    return tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(TVM_TARGET)).mod


def _dequant_weight(case, seed):
    bits, gs, k, n, zp = case
    return _weight((bits, gs, k, n, True, 8, zp, None), 50 + seed)


def test_kernels_use_avx2_lookups_only(lib):
    asm = lib.inspect_source("asm")
    assert asm.count("vpshufb") >= len(CASES) and "vpmaddubsw" in asm
    # the dequantize kernel: widen the code bytes, convert, FMA
    assert "vpmovzxbd" in asm and "vcvtdq2ps" in asm and "vfmadd" in asm
    assert "zmm" not in asm                    # AVX2 only: the reference machine has no AVX-512
    assert "prefetcht2" in asm                 # weight words prefetched, toward L2
    assert "vcvtph2ps" in asm                  # float16 group scales widened


@needs_avx2
@pytest.mark.parametrize("j", range(len(DEQUANT_CASES)))
def test_dequant_kernel_within_bound_of_reference(lib, j):
    import tvm

    qw = _dequant_weight(DEQUANT_CASES[j], j)
    layout = qw.layout
    consts = [sd.repack_codes(qw.planes, layout),
              *sd.repack_scales(qw.scales, qw.zero_points, layout)]
    rng = np.random.default_rng(200 + j)
    for m in DEQUANT_MS:
        x = rng.standard_normal((m, layout.K)).astype(np.float32)
        out = tvm.runtime.tensor(np.full((m, layout.N), np.nan, np.float32))
        lib[f"d{j}"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in consts], out)
        want = lut_matmul.reference(x, qw.planes, qw.scales, qw.zero_points, layout=layout,
                                    dequant=True)
        bound = lut_matmul.dequant_error_bound(x, qw.planes, qw.scales, qw.zero_points, layout)
        err = np.abs(out.numpy().astype(np.float64) - want)
        assert (err <= bound + np.abs(want) * 2.0 ** -24).all(), (DEQUANT_CASES[j], m)


def test_repack_codes_round_trip():
    """Every code lands in its (tile, row block, column) byte at its bit offset."""
    for j, case in enumerate(DEQUANT_CASES):
        qw = _dequant_weight(case, j)
        layout = qw.layout
        p = sd.code_bits(layout.bits)
        c = 8 // p
        w = sd.repack_codes(qw.planes, layout)
        assert w.shape == (layout.n_tiles, layout.K // c, 32)
        u = np.stack([(w >> (p * i)) & ((1 << p) - 1) for i in range(c)], axis=2)
        u = u.reshape(layout.n_tiles, layout.K, 32).transpose(1, 0, 2).reshape(layout.K, -1)
        np.testing.assert_array_equal(u[:, :layout.N], qw.codes())
        assert not u[:, layout.N:].any()


def _check_kernel(lib, prefix: str, case, seed: int, vnni: bool = False,
                  zmm: bool = False) -> None:
    import tvm

    qw = _weight(case, seed)
    layout, fa, tb = qw.layout, case[4], case[5]
    ops = sl.LutOperands(layout, qw.planes, qw.scales if fa else None, qw.zero_points, fa,
                         vnni=vnni, zmm=zmm)
    rng = np.random.default_rng(100 + seed)
    for m in MS:
        x = _acts(rng, case, m)
        inter = [tvm.runtime.tensor(np.zeros(s, d))
                 for s, d in sl.intermediate_shapes(layout, m, fa, tb)]
        xt = tvm.runtime.tensor(x)
        lib[f"t{prefix}{seed}"](xt, xt, *inter)
        out = tvm.runtime.tensor(np.zeros((m, layout.N), np.float32 if fa else np.int32))
        consts = [ops.w2] + ([ops.scales] if fa else []) + [ops.zc]
        tables = [inter[i] for i in ((2, 0, 1) if fa else (0, 1, 2))]   # (QT, TS or SH, RS)
        lib[f"m{prefix}{seed}"](*tables, *[tvm.runtime.tensor(c) for c in consts], out)
        want = lut_matmul.reference(x, qw.planes, qw.scales if fa else None, qw.zero_points,
                                    layout=layout, table_bits=None if fa else tb)
        assert_bit_exact(f"case {case} M={m}{' vnni' if vnni else ''}{' zmm' if zmm else ''}",
                         out.numpy(), want)


@needs_avx2
@pytest.mark.parametrize("j", range(len(CASES)))
def test_kernel_bit_exact_with_reference(lib, j):
    _check_kernel(lib, "", CASES[j], j)


@needs_avx2
@pytest.mark.parametrize("j", HALF_CASES)
def test_half_scales_kernel_bit_exact_with_reference(lib, j):
    """Scales that are float16 numbers are stored as float16 (half the scale bytes) and
    widened exactly: the results equal the reference's on the same scales."""
    import tvm

    case = CASES[j]
    qw = _weight(case, j)
    layout, scales = qw.layout, lut_matmul.spec.half_scales(qw.scales)
    ops = sl.LutOperands(layout, qw.planes, scales, qw.zero_points, True, half_scales=True)
    full = sl.LutOperands(layout, qw.planes, qw.scales, qw.zero_points, True)
    assert ops.scales.dtype == np.float16 and full.scales.dtype == np.float32
    with pytest.raises(ValueError, match="float16-exact"):
        sl.LutOperands(layout, qw.planes, qw.scales, qw.zero_points, True, half_scales=True)
    assert ops.scales.nbytes * 2 == full.scales.nbytes
    rng = np.random.default_rng(300 + j)
    for m in MS:
        x = _acts(rng, case, m)
        inter = [tvm.runtime.tensor(np.zeros(s, d))
                 for s, d in sl.intermediate_shapes(layout, m, True, 8)]
        xt = tvm.runtime.tensor(x)
        lib[f"t{j}"](xt, xt, *inter)
        out = tvm.runtime.tensor(np.zeros((m, layout.N), np.float32))
        lib[f"mh{j}"](inter[2], inter[0], inter[1],
                      *[tvm.runtime.tensor(c) for c in (ops.w2, ops.scales, ops.zc)], out)
        want = lut_matmul.reference(x, qw.planes, scales, qw.zero_points, layout=layout)
        assert_bit_exact(f"case {case} M={m} half scales", out.numpy(), want)


@needs_avx2
@pytest.mark.parametrize("bits,vnni", [(1, False), (2, False), (3, False), (4, False),
                                       (4, True)], ids=["1", "2", "3", "4", "4-vnni"])
def test_kernel_int16_sums_at_their_bound(bits, vnni):
    """Float32 activations: the kernel sums the lookups of ``lookup_span`` K tiles in int16
    before widening. Every lookup at |q| = 127 (x all +-1, every weight code the largest: each
    nibble picks table entry 15) must still come out exact, for each width at group 256 (the
    longest spans: 4 K tiles below 4 bits, 2 at 4 bits, the whole group with VNNI)."""
    import tvm

    qw = wq.quantize_weight(np.ones((256, 64), np.float32), bits, 256)   # group = K
    assert sl.lookup_span(qw.layout, True, vnni) == (4 if vnni or bits < 4 else 2)
    if vnni and not HOST_VNNI:      # (LLVM cannot select vpdpbusd for haswell either)
        pytest.skip("needs an x86-64 CPU with AVX-512 VNNI to run the VNNI kernel "
                    "(its build is checked by test_vnni_kernel_uses_vpdpbusd)")
    funcs = {"t": sl.table_kernel(qw.layout, True, 8, 1, "t"),
             "m": sl.lookup_kernel(qw.layout, True, 8, False, 1, "m", vnni=vnni)}
    lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(
        {**TVM_TARGET, "mcpu": "cascadelake" if vnni else "haswell"})).mod
    x = np.stack([np.ones(256, np.float32), -np.ones(256, np.float32)])
    ops = sl.LutOperands(qw.layout, qw.planes, qw.scales, None, True, vnni=vnni)
    inter = [tvm.runtime.tensor(np.zeros(s, d))
             for s, d in sl.intermediate_shapes(qw.layout, 2, True, 8)]
    xt = tvm.runtime.tensor(x)
    lib["t"](xt, xt, *inter)
    assert np.abs(inter[2].numpy()).max() == 127
    out = tvm.runtime.tensor(np.zeros((2, 64), np.float32))
    lib["m"](inter[2], inter[0], inter[1],
             *[tvm.runtime.tensor(c) for c in (ops.w2, ops.scales, ops.zc)], out)
    want = lut_matmul.reference(x, qw.planes, qw.scales, None, layout=qw.layout)
    assert_bit_exact(f"{bits} bits{' vnni' if vnni else ''}", out.numpy(), want)


# ---------------------------------------------------------------- the VNNI variant (4 bits)

VNNI_CASES = [j for j, case in enumerate(CASES) if case[0] == 4]
HOST_VNNI = HOST_AVX2 and "avx512_vnni" in host_cpu_features()


@pytest.fixture(scope="module")
def vnni_lib():
    import tvm

    funcs = {}
    for j in VNNI_CASES:
        case = CASES[j]
        layout, fa, tb, zp = _weight(case, j).layout, case[4], case[5], case[6]
        funcs[f"tv{j}"] = sl.table_kernel(layout, fa, tb, 2, f"tv{j}")
        funcs[f"mv{j}"] = sl.lookup_kernel(layout, fa, tb, bool(zp), 2, f"mv{j}", vnni=True)
    return tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(
        {**TVM_TARGET, "mcpu": "cascadelake"})).mod


def test_vnni_kernel_uses_vpdpbusd(vnni_lib):
    asm = vnni_lib.inspect_source("asm")
    assert asm.count("vpdpbusd") >= len(VNNI_CASES) and "vpshufb" in asm
    assert "vpmaddubsw" not in asm and "vpmovsxwd" not in asm     # no int16 stage


def test_vnni_kernel_only_for_static_rows_from_8():
    """The VNNI lookups win from cache (prefill), the vpmaddubsw ones from DRAM at one row
    (decode): 4-bit calls with >= VNNI_MIN_ROWS static rows get VNNI, symbolic rows do not."""
    from tvm import tirx

    four = _weight((4, 128, 256, 64, True, 8, False, None), 0).layout
    two = _weight((2, 128, 256, 64, True, 8, False, None), 0).layout
    m = tirx.Var("m", "int64")
    assert sl.wants_vnni(four, tirx.IntImm("int64", 16))
    assert sl.wants_vnni(four, tirx.IntImm("int64", 2) * tirx.IntImm("int64", 4))
    assert not sl.wants_vnni(four, tirx.IntImm("int64", sl.VNNI_MIN_ROWS - 1))
    assert not sl.wants_vnni(four, m) and not sl.wants_vnni(four, m * 8)
    assert not sl.wants_vnni(two, tirx.IntImm("int64", 64))


@needs_avx2
def test_compiled_avx512_target_picks_the_kernel_by_rows(tmp_path):
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.compiler.pipeline import LIB_MEMBER

    for rows, vnni in ((16, True), (None, False)):
        art = compile_model(lowbit_mlp(tmp_path / f"m{rows}.onnx", rows=rows),
                            tmp_path / f"m{rows}.edgert", target="x86-avx512", weight_bits=4,
                            group_size=32, threads=2, lut="always")
        lib = read_artifact(art).members[LIB_MEMBER]
        assert b"lut_matmul_x86" in lib and (b"_vnni" in lib) == vnni, rows
        assert (b"_zmm" in lib) == (not vnni), rows          # otherwise the zmm lookups


@pytest.mark.skipif(not HOST_VNNI, reason="needs an x86-64 CPU with AVX-512 VNNI")
@pytest.mark.parametrize("j", VNNI_CASES)
def test_vnni_kernel_bit_exact_with_reference(vnni_lib, j):
    _check_kernel(vnni_lib, "v", CASES[j], j, vnni=True)


def test_repack_weight_vnni_puts_a_columns_planes_in_one_dword():
    for j in VNNI_CASES:
        qw = _weight(CASES[j], j)
        layout = qw.layout
        kt, tk4, tk2, _, _, _ = sl.geometry(layout)
        w = sl.repack_weight_vnni(qw.planes, layout).reshape(
            layout.n_tiles, kt, tk2, 2, 2, 2, 4, 4)               # [nt,kt,fi2,g,j,L,d,e]
        nib = np.zeros((4, layout.K // 4, layout.n_tiles * 32), np.uint8)
        nib[:, :, :layout.N] = lut_matmul.plane_nibbles(qw.planes, layout)
        for h in range(2):
            got = (w >> (4 * h)) & 15
            nt, k, f2, g, jj, lane, d, e = np.indices(got.shape)
            f = k * tk4 + 2 * f2 + g
            col = nt * 32 + 16 * jj + 8 * h + 4 * lane + d
            real = 2 * f2 + g < tk4                                # not a padded 4-group
            np.testing.assert_array_equal(got[real], nib[e[real], f[real], col[real]])
            assert not got[~real].any()


def test_repack_weight_keeps_every_nibble():
    """Each (plane, 4-group, column) nibble lands exactly once in the re-packed words."""
    for case in CASES[:5]:
        qw = _weight(case, 0)
        layout = qw.layout
        w2 = sl.repack_weight(qw.planes, layout)
        kt, tk4, tk2, np_, odd, nv = sl.geometry(layout)
        assert w2.shape == (layout.n_tiles, kt, tk2, nv, 32)
        ones = np.full(layout.planes_shape, 255, np.uint8)
        assert int(np.unpackbits(sl.repack_weight(ones, layout)).sum()) == \
            layout.bits * layout.K * layout.N
        assert int(np.unpackbits(w2).sum()) == int(np.unpackbits(
            lut_matmul.plane_nibbles(qw.planes, layout)).sum())


# ---------------------------------------------------------------- the zmm variant (AVX-512BW)

ZMM_CASES = [0, 1, 3, 4, 7, 9, 10]   # every width, zero points, int16 and int8 tables
HOST_AVX512BW = HOST_AVX2 and "avx512bw" in host_cpu_features()


@pytest.fixture(scope="module")
def zmm_lib():
    import tvm

    funcs = {}
    for j in ZMM_CASES:
        case = CASES[j]
        layout, fa, tb, zp = _weight(case, j).layout, case[4], case[5], case[6]
        funcs[f"tz{j}"] = sl.table_kernel(layout, fa, tb, 2, f"tz{j}")
        funcs[f"mz{j}"] = sl.lookup_kernel(layout, fa, tb, bool(zp), 2, f"mz{j}", zmm=True)
    return tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(
        {**TVM_TARGET, "mcpu": "skylake-avx512"})).mod


def test_zmm_kernel_looks_up_on_zmm(zmm_lib):
    """Built for AVX-512BW (this test runs on any x86 host): every lookup and plane merge is a
    zmm ``vpshufb`` / ``vpmaddubsw``, none is left on ymm."""
    import re

    asm = zmm_lib.inspect_source("asm")
    assert all(sl.uses_zmm(_weight(CASES[j], j).layout) for j in ZMM_CASES)
    assert len(re.findall(r"vpshufb\s+%zmm", asm)) >= len(ZMM_CASES)
    assert len(re.findall(r"vpmaddubsw\s+%zmm", asm)) >= len(ZMM_CASES)
    assert not re.findall(r"vpshufb\s+%ymm", asm) and not re.findall(r"vpmaddubsw\s+%ymm", asm)


@pytest.mark.skipif(not HOST_AVX512BW, reason="needs an x86-64 CPU with AVX-512BW to run the "
                    "zmm kernel (its build is checked by test_zmm_kernel_looks_up_on_zmm)")
@pytest.mark.parametrize("j", ZMM_CASES)
def test_zmm_kernel_bit_exact_with_reference(zmm_lib, j):
    _check_kernel(zmm_lib, "z", CASES[j], j, zmm=True)


def test_zmm_variant_needs_an_even_pair_count():
    odd = _weight(CASES[6], 6).layout                   # tile_k 20: 5 4-groups, 3 pairs
    assert not sl.uses_zmm(odd)
    with pytest.raises(ValueError, match="even count"):
        sl.lookup_kernel(odd, True, 8, False, 2, "m", zmm=True)


def test_repack_weight_zmm_puts_two_pairs_side_by_side():
    for j in ZMM_CASES[:4]:
        qw = _weight(CASES[j], j)
        layout = qw.layout
        kt, _, tk2, _, _, nv = sl.geometry(layout)
        ymm = sl.repack_weight(qw.planes, layout)
        zmm = sl.repack_weight_zmm(qw.planes, layout).reshape(
            layout.n_tiles, kt, tk2 // 2, nv, 64)
        for v in range(nv):
            np.testing.assert_array_equal(zmm[:, :, :, v, :32], ymm[:, :, 0::2, v])
            np.testing.assert_array_equal(zmm[:, :, :, v, 32:], ymm[:, :, 1::2, v])


# ---------------------------------------------------------------- the whole pipeline

@needs_avx2
def test_compile_model_weight_bits_2_uses_the_kernel(tmp_path):
    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.compiler.pipeline import LIB_MEMBER

    art = compile_model(lowbit_mlp(tmp_path / "mlp.onnx"), tmp_path / "m2.edgert", weight_bits=2,
                        group_size=32, threads=2, lut="always")
    lib_bytes = read_artifact(art).members[LIB_MEMBER]
    assert b"lut_matmul_x86" in lib_bytes and b"lut_tables_x86" in lib_bytes
    assert b"_half_scales" in lib_bytes                  # the float variant's float16 scales
    tvm_s = edgert.Session(art, threads=2)
    numba_s = edgert.Session(art, backend="numba")
    rng = np.random.default_rng(5)
    for shape in [(1, 1, 128), (2, 4, 128), (1, 64, 128)]:
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        got, want = tvm_s.run(None, feed)[0], numba_s.run(None, feed)[0]
        assert got.shape == shape[:2] + (40,)
        # same float operations in the same order: measured bit-identical; allow an ulp
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
