"""``edgert.IntBinaryAttention``: binary attention in integers only, both forms, on every
backend, and the ``popcnt`` instruction in the built x86 kernel.

- numpy spec == numba == TVM (the scheduled kernels the converter emits) bit for bit: 8, 16
  and 32 bits, one projection per head or one shared, shapes that take every schedule path
  (value columns vectorized by 8 and 4 lanes and a scalar remainder, the parallel loops),
  values at the int8 extremes.
- The codes are the signs of the int32 projections and the quadratic scores the ±1 dot
  products of those signs (what int8 multiply-adds of ±1 codes give), times the multiplier.
- The linear form's sums (by associativity, no score) equal the quadratic computation of its
  kernel ``sum_j (s_ij + c) v_j`` and ``sum_j (s_ij + c)`` from the popcount scores exactly, and
  its output is their quotient times 2**frac rounded half up (within 1/2 of the exact ratio).
- The x86 kernels built for x86-avx2 and x86-avx512: the popcount instruction is in the
  disassembly, and each runs bit-exact where this CPU has its features.
- The CUDA kernels (``gpu_func``) build for cuda-sm80 without a GPU (``__popc`` of the codes'
  xor in the quadratic source); with a GPU (marked ``gpu``) they equal the spec bit for bit.
"""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from edgert.ops import int_binary_attention as IBA
from edgert.ops.binary_attention.spec import scores

from ophelpers import assert_bit_exact


def _inputs(rng, lead, heads, s, t, d, dv, bits, shared=False, form="quadratic",
            extremes=False):
    q, k, proj, mult, v = IBA.random_inputs(rng, lead, heads, s, t, d, dv, bits, shared)
    if extremes:                                        # int8 extremes drive the sums' bounds
        for a in (q, k, v):
            a[..., ::2] = -128
            a[..., 1::3] = 127
    return [q, k, proj, mult, None] if form == "quadratic" else [q, k, proj, None, v]


def _build(arrays, form, bits, target=None):
    """The scheduled kernel (as the converter emits it) built for ``target`` (default: this
    machine); returns the library and the output shape."""
    import tvm
    from tvm import te

    from edgert.ops.int_binary_attention.tvm import schedule, te_compute
    from edgert.targets import resolve_host

    phs = [None if a is None else te.placeholder(a.shape, str(a.dtype), f"in{i}")
           for i, a in enumerate(arrays)]
    out = te_compute(*phs, bits=bits, form=form)
    func = schedule(te.create_prim_func([p for p in phs if p is not None] + [out]), form)
    target = target or resolve_host().tvm_target_dict()
    return tvm.compile(func, target=tvm.target.Target(target)), [int(n) for n in out.shape]


def _run_tvm(arrays, form, bits, target=None) -> np.ndarray:
    import tvm

    lib, shape = _build(arrays, form, bits, target)
    res = tvm.runtime.tensor(np.zeros(shape, np.int32))
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays if a is not None], res)
    return res.numpy()


CASES = [  # lead, heads, S, T, D, Dv, shared, bits
    ((2,), 3, 5, 7, 8, 8, False, 16),         # the ViT's D, 8 value lanes
    ((1,), 2, 17, 17, 8, 12, True, 8),        # 4 lanes + a scalar remainder, shared hash
    ((3,), 4, 40, 40, 16, 8, False, 32),      # large enough for the parallel loops
    ((), 2, 6, 9, 5, 3, False, 16),           # no batch dim, scalar value columns
]


@pytest.mark.parametrize("form", ["quadratic", "linear"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_backends_bit_exact(form, case):
    from edgert.ops.int_binary_attention.numba import numba_kernel

    lead, heads, s, t, d, dv, shared, bits = CASES[case]
    rng = np.random.default_rng(case * 100 + bits)
    arrays = _inputs(rng, lead, heads, s, t, d, dv, bits, shared, form, extremes=case == 1)
    want = IBA.reference(*arrays, bits=bits, form=form)
    assert want.dtype == np.int32
    assert_bit_exact("numba", numba_kernel(*arrays, bits=bits, form=form), want)
    assert_bit_exact("tvm", _run_tvm(arrays, form, bits), want)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_scores_are_the_pm1_dot_products_of_the_projection_signs(bits):
    rng = np.random.default_rng(bits)
    q, k, proj, mult, _v = IBA.random_inputs(rng, (2,), 3, 6, 9, 8, 4, bits)
    k[0, 0, 0] = 0                                        # z = 0 counts as +1
    sign = lambda x: np.where(x.astype(np.int64) @ np.swapaxes(proj, 1, 2).astype(np.int64)[None]
                              < 0, -1, 1)                # noqa: E731
    hq, hk = sign(q), sign(k)
    unpack = (IBA.codes(k, proj, bits).astype(np.uint64)[..., None]
              >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    np.testing.assert_array_equal(2 * unpack.astype(np.int64) - 1, hk)
    want = mult.reshape(-1, 1, 1) * (hq @ np.swapaxes(hk, -1, -2))
    np.testing.assert_array_equal(IBA.reference(q, k, proj, mult, bits=bits), want)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_linear_form_equals_the_quadratic_kernel_exactly(bits):
    rng = np.random.default_rng(7 + bits)
    q, k, proj, _mult, v = IBA.random_inputs(rng, (3,), 4, 11, 13, 8, 6, bits)
    cq, ck = IBA.codes(q, proj, bits), IBA.codes(k, proj, bits)
    num, den = IBA.linear_sums(cq, ck, v, bits)
    knum, kden = IBA.kernel_sums(cq, ck, v, bits)
    np.testing.assert_array_equal(num, knum)
    np.testing.assert_array_equal(den, kden)
    kern = scores(cq, ck, bits).astype(np.int64) + bits + 1
    assert kern.min() >= 1 and kern.max() <= 2 * bits + 1
    frac = 15
    out = IBA.reference(q, k, proj, None, v, bits=bits, form="linear", frac=frac)
    np.testing.assert_array_equal(out, IBA.round_div(knum, kden[..., None], frac))
    for idx in [(0, 0, 0, 0), (2, 3, 10, 5), (1, 2, 4, 3)]:   # rounded half up, exactly
        exact = Fraction(int(knum[idx]) << frac, int(kden[idx[:-1]]))
        assert exact - Fraction(1, 2) <= out[idx] < exact + Fraction(1, 2)
    err = np.abs(out / 2.0**frac - knum / kden[..., None])
    assert err.max() <= 0.5 / 2**frac + 1e-12


def test_inputs_the_kernels_refuse():
    rng = np.random.default_rng(0)
    q, k, proj, mult, v = IBA.random_inputs(rng, (1,), 2, 3, 4, 8, 4, 16)
    with pytest.raises(TypeError):
        IBA.reference(q.astype(np.int16), k, proj, bits=16)
    with pytest.raises(ValueError, match="Proj"):
        IBA.reference(q, k, proj, bits=8)
    with pytest.raises(ValueError, match="linear form needs"):
        IBA.reference(q, k, proj, bits=16, form="linear")
    with pytest.raises(ValueError, match="frac"):
        IBA.reference(q, k, proj, None, v, bits=16, form="linear", frac=24)
    assert IBA.max_keys(32) * 65 * 128 < 2**31 <= (IBA.max_keys(32) + 1) * 65 * 128


def test_counts_have_no_multiply_in_the_scores():
    from edgert.ops.int_binary_attention import OP

    shapes = [(1, 4, 17, 8), (1, 4, 17, 8), (4, 16, 8), (4,), None]
    dtypes = [np.int8, np.int8, np.int8, np.int32, None]
    quad = OP.counts(shapes, dtypes, {"bits": 16, "form": "quadratic"})
    assert quad.popcounts == 4 * 17 * 17
    assert quad.int8_mul == 4 * 2 * 17 * 16 * 8            # the codes only
    assert quad.int32_mul == 4 * 17 * 17                   # the multiplier
    lin = OP.counts([*shapes[:3], None, (1, 4, 17, 8)], [*dtypes[:3], None, np.int8],
                    {"bits": 16, "form": "linear", "frac": 15})
    assert lin.popcounts == 0 and lin.int64_div == 4 * 17 * 8
    assert lin.int8_mul == quad.int8_mul and lin.fp32_mul == 0


POPCOUNTS = {"popcnt": r"\tpopcnt[lwq]?\s", "vpopcnt": r"\tvpopcnt[bwdq]\s",
             "nibble table": r"\tvpshufb\s"}
"""How a popcount shows in x86 assembly: the scalar instruction, AVX-512's vector one, or
AVX2's (which has no vector popcount) nibble-table lookup, ``vpshufb`` (LLVM's own expansion
of a vectorized ``llvm.ctpop``)."""


VPOPCNT = ("avx512_vpopcntdq", "avx512_bitalg")
"""CPU flags of AVX-512's vector popcount on 64/32-bit (VPOPCNTDQ) and 16/8-bit (BITALG)
lanes."""


@pytest.mark.parametrize("name", ["x86-avx2", "x86-avx512", "x86-avx512+vpopcnt"])
def test_x86_kernels_count_bits_with_popcount_instructions(name, tmp_path):
    """The quadratic kernel built for each x86 target, disassembled: its scores count bits
    with the CPU's popcount instructions, never a shift-and-mask emulation (LLVM vectorizes
    the loop over keys: on AVX2, which has no vector popcount, with the ``vpshufb`` table and
    ``popcnt`` in the scalar remainder; with VPOPCNTDQ and BITALG with ``vpopcnt``). Where
    this CPU has the target's features, both forms also run bit-exact (on an AVX-512 machine
    the AVX2 build is the forced AVX2 path)."""
    from edgert.targets import can_run_here, get_target, host_arch, host_cpu_features

    if host_arch() != "x86_64":
        pytest.skip(f"this machine is {host_arch()}, not x86-64")
    target = get_target(name.split("+")[0])
    llvm = target.tvm_target_dict()
    if name.endswith("+vpopcnt"):
        llvm = {**llvm, "mattr": [*llvm.get("mattr", []), "+avx512vpopcntdq", "+avx512bitalg"]}
    rng = np.random.default_rng(1)
    arrays = _inputs(rng, (2,), 4, 32, 35, 8, 8, 16)       # 35 keys: a scalar remainder
    lib, _ = _build(arrays, "quadratic", 16, llvm)
    so = tmp_path / "kernel.so"
    lib.export_library(str(so))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(so)], check=True,
                         capture_output=True, text=True).stdout
    found = {k: len(re.findall(p, asm)) for k, p in POPCOUNTS.items()}
    print(f"\n{name}: popcount instructions: {found}")
    assert found["popcnt"] > 0, "no scalar popcnt in the remainder loop"
    if name.endswith("+vpopcnt"):        # the vector loop on the vector popcount
        assert found["vpopcnt"] > 0 and found["nibble table"] == 0
    else:                                # the vector loop on the nibble table
        assert found["nibble table"] > 0 and found["vpopcnt"] == 0
    ok, why = can_run_here(target)
    lacking = [f for f in VPOPCNT if f not in host_cpu_features()] if "+" in name else []
    if not ok or lacking:
        pytest.skip(f"built and disassembled only: {why if not ok else 'no ' + str(lacking)}")
    for form in ("quadratic", "linear"):
        arrays = _inputs(rng, (2,), 4, 20, 24, 8, 8, 16, form=form)
        assert_bit_exact(f"{name} {form}", _run_tvm(arrays, form, 16, llvm),
                         IBA.reference(*arrays, bits=16, form=form))


def _cuda_build(form: str):
    """A one-node IntBinaryAttention graph through the compiler's lowering, built for
    cuda-sm80 as ``build_library`` does: (executable, CUDA source, inputs, spec output)."""
    import tvm
    from onnx import helper

    from edgert.compiler.lower import _schedule_for_gpu, to_relax
    from edgert.compiler.schedule_cuda_ops import schedule_edgert_ops
    from edgert.ops import DOMAIN
    from edgert.targets import get_target

    from ophelpers import integer_model

    arrays = _inputs(np.random.default_rng(5), (2,), 3, 6, 7, 8, 8, 16, form=form)
    want = IBA.reference(*arrays, bits=16, form=form)
    names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
    while not names[-1]:
        names.pop()
    graph_in = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                              a.shape) for n, a in zip(names, arrays) if n]
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(want.dtype),
                                        want.shape)
    node = helper.make_node("IntBinaryAttention", names, ["out"], domain=DOMAIN, bits=16,
                            form=form)
    mod = schedule_edgert_ops(to_relax(integer_model([node], graph_in, [out], []),
                                       source=form))
    target = tvm.target.Target(get_target("cuda-sm80").tvm_target_dict())
    executable = tvm.compile(_schedule_for_gpu(mod, target), target=target)
    stack, sources = [executable.mod], []
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            sources.append(m.inspect_source())
        stack.extend(m.imports)
    return executable, "".join(sources), arrays, want


@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_builds_for_cuda_with_popc(form):
    """Without a GPU: the CUDA source binds threads, and the quadratic scores are ``__popc``
    of the codes' xor."""
    _exe, source, _arrays, _want = _cuda_build(form)
    assert "threadIdx.x" in source
    if form == "quadratic":
        assert re.search(r"__popc\(", source) and "^" in source
    else:
        assert ">>" in source and "__popc" not in source


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["quadratic", "linear"])
def test_runs_on_the_gpu_as_the_spec(form):
    import tvm
    from tvm import relax

    executable, _source, arrays, want = _cuda_build(form)
    dev = tvm.cuda(0)
    got = relax.VirtualMachine(executable, dev)["main"](
        *[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays if a is not None])
    assert_bit_exact(f"{form} on the GPU", got.numpy(), want)
