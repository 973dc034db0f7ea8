"""The aarch64 NEON LutMatMul kernels (``ops/lut_matmul/tvm_arm.py``).

1. Compiled for rpi5 (Cortex-A76), the lookup kernels use ``tbl`` and no FMA (``fmla`` /
   ``fmadd``: the float epilogue is fenced), checked in the assembly; no qemu needed.
2. Under qemu-aarch64 (:func:`edgert.targets.qemu.run_under_qemu`), rpi5 artifacts equal the
   host (x86) artifacts of the same model bit for bit: a graph of bare LutMatMul nodes over a
   grid of layouts (float32 and int8 activations, int16 and int8 tables, zero points, ragged
   N, an odd 4-group count per K tile) also equal to ``lut_matmul.reference``; a fp32 MLP with
   ``weight_bits`` 2, 3 and ternary; the int-only tiny ViT with ``weight_bits`` 2, 3 and
   ternary. These skip like ``tests/test_qemu_rpi5.py`` when qemu or the cross compiler is
   missing (``EDGERT_REQUIRE_QEMU=1`` makes that a failure).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgert
from edgert.ops.lut_matmul import tvm_arm as sa
from edgert.compiler import weightquant as wq
from edgert.demo import demo_calib_file, demo_files
from edgert.ops import DOMAIN, lut_matmul
from edgert.targets import TARGETS
from edgert.targets.qemu import run_under_qemu

from conftest import lowbit_mlp, raw_bits, rpi5_and_host
from ophelpers import assert_bit_exact, integer_model, skip_unless_opted_in


# (bits, group_size, K, N, float activations, table_bits, zero points ("float": exact-min),
#  tile_k)
CASES = [
    (1, 32, 128, 70, True, 8, False, None),
    (2, 128, 128, 96, True, 8, False, None),
    ("ternary", 64, 128, 33, True, 8, False, None),
    (3, 64, 128, 40, True, 8, True, None),
    (4, 32, 128, 40, True, 8, "float", None),   # exact-min: float32 zero points
    (4, 128, 128, 64, True, 8, False, None),
    (2, 120, 120, 50, True, 8, False, 20),       # 5 4-groups per K tile: a padded table
    (1, 128, 128, 33, False, 16, False, None),
    (2, 64, 128, 70, False, 16, False, None),
    (3, 128, 128, 96, False, 16, True, None),
    (4, 128, 128, 40, False, 8, False, None),
    (2, 128, 128, 40, False, 8, True, None),
    (4, 120, 120, 31, False, 16, True, 20),
]


def _weight(case, seed):
    bits, gs, k, n, _, _, zp, tile_k = case
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    if bits == "ternary":
        return wq.quantize_ternary(w, gs, tile_k=tile_k)
    return wq.quantize_weight(w, bits, gs, zero_point=bool(zp), float_zero=zp == "float",
                              tile_k=tile_k)


# ---------------------------------------------------------------- 1. the assembly

def test_rpi5_kernels_use_tbl_and_no_fma():
    """Sequential lookup kernels (``cores = 1``: each body stays in its ``m<j>_compute_``
    function instead of a parallel lambda), every case in one ``tvm.compile``. (The table
    kernel is the x86 module's scalar TIR; LLVM vectorizes it with its own shuffles.)"""
    import tvm

    funcs = {}
    for j, case in enumerate(CASES):
        qw = _weight(case, j)
        fa, tb, zp = case[4], case[5], case[6]
        funcs[f"m{j}"] = sa.lookup_kernel(qw.layout, fa, tb, bool(zp), 1, f"m{j}")
    tgt = tvm.target.Target(TARGETS["rpi5"].tvm_target_dict(num_cores=1))
    asm = tvm.compile(tvm.IRModule(funcs), target=tgt).mod.inspect_source("asm")
    assert not re.search(r"\b(fmla|fmls|fmadd|fmsub|fnmadd|fnmsub)\b", asm), \
        "FMA contraction (the float epilogue must round every product)"
    for j in range(len(CASES)):            # every lookup kernel body has its tbl lookups
        body = asm.split(f"\nm{j}_compute_:", 1)[1].split("\n.Lfunc_end", 1)[0]
        # 16-lane lookups, unrolled over the planes, both nibbles and the byte planes
        bits, fa, tb = CASES[j][0], CASES[j][4], CASES[j][5]
        want = 2 * (2 if bits == "ternary" else bits) * (1 if fa or tb == 8 else 2)
        assert len(re.findall(r"\btbl\s+v\d+\.16b, \{ v\d+\.16b \}", body)) >= want, \
            f"case {CASES[j]}: not {want} tbl"


def test_repack_weight_keeps_every_nibble():
    """Each (plane, 4-group, column) nibble lands in its place; any layout ``tile_n`` (the
    kernel's 32-column tiles come from the re-pack)."""
    w16 = np.random.default_rng(1).standard_normal((128, 50)).astype(np.float32)
    weights = [_weight(case, 0) for case in CASES[:6]]
    weights.append(wq.quantize_weight(w16, 3, 64, tile_n=16))
    for qw in weights:
        layout = qw.layout
        w2 = sa.repack_weight(qw.planes, layout)
        kt, tk4, _, nt = sa._geometry(layout)
        assert w2.shape == (nt, kt, tk4, layout.bits, 16)
        nib = lut_matmul.plane_nibbles(qw.planes, layout)           # [b, K/4, N]
        lo, hi = w2 & 15, w2 >> 4                                  # [nt, kt, tk4, b, 16]
        cols = np.concatenate([lo, hi], axis=-1)                   # column 32 nt + c
        got = cols.transpose(3, 1, 2, 0, 4).reshape(layout.bits, layout.K // 4, nt * 32)
        np.testing.assert_array_equal(got[:, :, :layout.N], nib)
        assert not got[:, :, layout.N:].any()


# ---------------------------------------------------------------- 2. under qemu

def _lut_graph():
    """One graph, one LutMatMul node per case (inputs by (K, dtype)), every output kept."""
    nodes, inits, ins, outs, feed, want = [], [], {}, [], {}, []
    rng = np.random.default_rng(7)
    for j, case in enumerate(CASES):
        k, fa, tb = case[2], case[4], case[5]
        qw = _weight(case, j)
        a = f"x{'f' if fa else 'i'}{k}"
        if a not in ins:
            ins[a] = helper.make_tensor_value_info(a, TP.FLOAT if fa else TP.INT8, [5, k])
            if fa:
                x = rng.standard_normal((5, k)).astype(np.float32)
                x[0, :4] = 0.0                                   # a zero 4-group
                x[1] = 0.0                                       # a zero row
            else:
                x = rng.integers(-128, 128, (5, k)).astype(np.int8)
                x[0, :8] = -128                                  # |T| = 512
            feed[a] = x
        names = [a, f"w{j}"]
        inits.append(numpy_helper.from_array(qw.planes, f"w{j}"))
        if fa:
            inits.append(numpy_helper.from_array(qw.scales, f"s{j}"))
        names.append(f"s{j}" if fa else "")
        if qw.zero_points is not None:
            inits.append(numpy_helper.from_array(qw.zero_points, f"z{j}"))
            names.append(f"z{j}")
        while names[-1] == "":
            names.pop()
        nodes.append(helper.make_node("LutMatMul", names, [f"y{j}"], name=f"lut{j}",
                                      domain=DOMAIN, **qw.layout.to_attrs(), table_bits=tb))
        outs.append(helper.make_tensor_value_info(f"y{j}", TP.FLOAT if fa else TP.INT32,
                                                  [5, case[3]]))
        want.append(lut_matmul.reference(feed[a], qw.planes, qw.scales if fa else None,
                                         qw.zero_points, layout=qw.layout,
                                         table_bits=None if fa else tb))
    return integer_model(nodes, list(ins.values()), outs, inits), feed, want


def test_lut_grid_rpi5_under_qemu_equals_reference_and_host(qemu_env, tmp_path):
    model, feed, want = _lut_graph()
    onnx.save(model, tmp_path / "lut_grid.onnx")
    rpi5, host = rpi5_and_host(tmp_path / "lut_grid.onnx", tmp_path, "lut_grid")
    from edgert.artifact import read_artifact
    from edgert.compiler.pipeline import LIB_MEMBER

    lib = read_artifact(rpi5).members[LIB_MEMBER]
    assert lib.count(b"lut_matmul_arm_") >= len(CASES)
    got = run_under_qemu(rpi5, feed)
    ref_host = edgert.Session(host).run(None, feed)
    for case, g, h, w in zip(CASES, got, ref_host, want):
        assert_bit_exact(f"{case}: rpi5 (qemu) vs reference", raw_bits(g), raw_bits(w))
        assert_bit_exact(f"{case}: rpi5 (qemu) vs host", raw_bits(g), raw_bits(h))


@pytest.mark.parametrize("bits", [2, 3, "ternary"])
def test_fp32_lowbit_mlp_rpi5_under_qemu_bit_identical(qemu_env, tmp_path, bits):
    if bits != 2:       # every bit width's kernels: test_lut_grid_rpi5_under_qemu_...
        skip_unless_opted_in("EDGERT_QEMU", f"the {bits}-bit MLP under qemu")
    rpi5, host = rpi5_and_host(lowbit_mlp(tmp_path / "mlp.onnx"), tmp_path, f"mlp_w{bits}",
                       weight_bits=bits, group_size=32)
    from edgert.artifact import read_artifact
    from edgert.compiler.pipeline import LIB_MEMBER

    lib = read_artifact(rpi5).members[LIB_MEMBER]
    assert b"lut_matmul_arm" in lib and b"lut_tables_arm" in lib
    feed = {"x": np.random.default_rng(5).standard_normal((2, 3, 128)).astype(np.float32)}
    [got] = run_under_qemu(rpi5, feed)
    [want] = edgert.Session(host).run(None, feed)
    assert_bit_exact(f"fp32 MLP, weight_bits={bits}: rpi5 (qemu) vs host",
                     raw_bits(got), raw_bits(want))


@pytest.mark.parametrize("bits", [2, 3, "ternary"])
def test_int_only_lowbit_vit_rpi5_under_qemu_bit_identical(qemu_env, tmp_path, bits):
    if bits != 2:
        skip_unless_opted_in("EDGERT_QEMU", f"the {bits}-bit int-only ViT under qemu")
    rpi5, host = rpi5_and_host(demo_files()[0], tmp_path, f"vit_w{bits}", int_only=True,
                       calib=demo_calib_file(), weight_bits=bits)
    assert edgert.Session(host).manifest["lowbit"]["nodes"]
    feed = {"image": np.load(demo_files()[1])["images"][:16]}
    [got] = run_under_qemu(rpi5, feed)
    [want] = edgert.Session(host).run(None, feed)
    assert_bit_exact(f"int-only ViT, weight_bits={bits}: rpi5 (qemu) vs host",
                     raw_bits(got), raw_bits(want))
