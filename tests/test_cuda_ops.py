"""The CUDA kernels of LMulMatMul, ShiftMatMul, HashCodes and BinaryAttention
(``gpu_func`` in each op's ``tvm.py``, applied by :mod:`edgert.compiler.schedule_cuda_ops`).

Without a GPU: each op, as a one-node ONNX graph through the compiler's own lowering, builds
for cuda-sm80 and the generated CUDA source holds what the method promises (thread-bound
loops; ``__popc`` for the popcount; shifts and no multiply for ShiftMatMul; integer adds of
bit patterns and no float multiply for L-Mul; round-to-nearest products, divisions and square
roots where TVM's ``--use_fast_math`` would contract or approximate). A small attention model
compiles for cuda-sm80 with ``--lmul attention``, ``--binary-attention`` and ``--int-only
--shift-linear all``, and for jetson-orin with ``--binary-attention`` (with the aarch64 cross
compiler; kernels with symbolic dims, whose PrimFuncs take the batch as a scalar).

With a GPU (marked ``gpu``): each kernel runs on it and equals the numba kernel bit for bit.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.ops import DOMAIN, registry

from ophelpers import assert_bit_exact, integer_model

TARGET = "cuda-sm80"


def _example(name: str, seed: int, **attrs) -> tuple:
    """The op's own example case (attrs overriding its attributes where the example uses
    them), the spec's kwargs and output."""
    op = registry.get(name)
    example = op.example(np.random.default_rng(seed))
    merged = {**example.attrs, **attrs}
    return op, list(example.inputs), merged, op.node_kwargs(merged)


def _hash_example(seed: int, bits: int) -> tuple:
    """HashCodes of ``bits`` bits on [2, 3, 7, 8] vectors, one parameter set for all heads."""
    from edgert.ops.hash_codes.spec import random_params

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    x[0, 0, 0] = 0                                                # the zero vector's norm
    op = registry.get("HashCodes")
    return op, [x, *random_params(rng, 1, 8, bits, m=9)], {"bits": bits}, {"bits": bits}


def _linear_example(seed: int, bias: bool, bits: int) -> tuple:
    """BinaryAttention, linear form, codes of ``bits`` bits, a per-key bias or none."""
    from edgert.ops.hash_codes.spec import code_dtype

    rng = np.random.default_rng(seed)
    dt = np.dtype(code_dtype(bits))
    top = int(np.iinfo(dt).max)
    cq = rng.integers(0, top, (2, 2, 5), dtype=np.uint64, endpoint=True).astype(dt)
    ck = rng.integers(0, top, (2, 2, 7), dtype=np.uint64, endpoint=True).astype(dt)
    v = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    b = np.where(rng.random((2, 1, 1, 7)) < 0.3, -2.0, 0.5).astype(np.float32) if bias else None
    op = registry.get("BinaryAttention")
    attrs = {"bits": bits, "form": "linear"}
    return op, [cq, ck, v, None, b], attrs, op.node_kwargs(attrs)


CASES = {
    "lmul": lambda: _example("LMulMatMul", 1),
    "lmul_m2": lambda: _example("LMulMatMul", 2, mantissa_bits=2),
    "shift": lambda: _example("ShiftMatMul", 3),
    "hash16": lambda: _example("HashCodes", 4),
    "hash32": lambda: _hash_example(5, bits=32),
    "binary_quadratic": lambda: _example("BinaryAttention", 6),
    "binary_linear": lambda: _linear_example(7, bias=False, bits=32),
    "binary_linear_bias": lambda: _linear_example(8, bias=True, bits=8),
}


def _one_node(op, inputs: list, attrs: dict, want: np.ndarray) -> onnx.ModelProto:
    """``op`` as the only node: every input a graph input ("" where absent)."""
    names = ["" if x is None else f"in{i}" for i, x in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    graph_in = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype),
                                              x.shape) for n, x in zip(names, inputs) if n]
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(want.dtype),
                                        want.shape)
    node = helper.make_node(op.name, names, ["out"], domain=DOMAIN, **attrs)
    return integer_model([node], graph_in, [out], [])


def _build(case: str) -> tuple:
    """(executable, CUDA source, inputs, numba output) of the case built for cuda-sm80 the way
    ``build_library`` does."""
    import tvm

    from edgert.compiler.lower import _schedule_for_gpu, to_relax
    from edgert.compiler.schedule_cuda_ops import schedule_edgert_ops
    from edgert.targets import get_target

    op, inputs, attrs, kwargs = CASES[case]()
    want = op.numba_kernel(*inputs, **kwargs)
    mod = schedule_edgert_ops(to_relax(_one_node(op, inputs, attrs, want), source=case))
    tvm_target = tvm.target.Target(get_target(TARGET).tvm_target_dict())
    executable = tvm.compile(_schedule_for_gpu(mod, tvm_target), target=tvm_target)
    sources = []
    stack = [executable.mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            sources.append(m.inspect_source())
        stack.extend(m.imports)
    assert len(sources) == 1, "one CUDA module expected"
    return executable, sources[0], inputs, want


def _kernel(source: str, name: str) -> str:
    """The body of the ``__global__`` kernel ``<name>_kernel`` (up to the next kernel)."""
    start = source.index(f"{name}_kernel(", source.index("__global__"))
    body = source[source.index("{", start):]
    nxt = body.find("__global__")
    return body if nxt < 0 else body[:nxt]


def _non_index(body: str, op: str = "*") -> list[str]:
    """``a <op> b`` in the kernel body where neither side is an integer literal (index
    arithmetic multiplies and divides by literals only)."""
    found = []
    for a, b in re.findall(r"([\w.\[\])(]+) " + re.escape(op) + r" ([\w.\[\])(]+)", body):
        if not (a.strip("()").isdigit() or b.strip("()").isdigit()):
            found.append(f"{a} {op} {b}")
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_builds_for_cuda_and_the_source_says_how(case):
    _, source, inputs, _ = _build(case)
    kind = case.split("_")[0].rstrip("0123456789")
    name = {"lmul": "lmul_matmul", "shift": "shift_matmul", "hash": "hash_codes",
            "binary": "binary_attention"}[kind]
    body = _kernel(source, name)
    assert "threadIdx.x" in body
    if kind == "lmul":
        assert re.search(r"\(\*\(uint \*\)\(&", body)           # float read as uint32 bits
        assert re.search(r"\(uint\)\d+\) \+ \(", body)           # integer add of magnitudes
        assert _non_index(body) == [] and "__fmul" not in body
    elif kind == "shift":
        assert "<<" in body and _non_index(body) == []
    elif kind == "hash":
        assert all(f in body for f in ("__fmul_rn", "__fdiv_rn", "__fsqrt_rn"))
        assert _non_index(body) == [] and _non_index(body, "/") == []
    elif case == "binary_quadratic":           # scores b - 2 popcount(cq xor ck)
        assert re.search(r"__popc\(\(\(uint\)\(\w+\[[^]]+\] \^ ", body)
        assert "__fdiv_rn" in body and "__fmul_rn" in body
    else:                                      # linear: signed sums selected by code bits
        assert ">>" in body and "__popc" not in body and "__fdiv_rn" in body


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_runs_on_the_gpu_as_numba_does(case):
    import tvm
    from tvm import relax

    executable, _, inputs, want = _build(case)
    dev = tvm.cuda(0)
    vm = relax.VirtualMachine(executable, dev)
    got = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x), dev)
                       for x in inputs if x is not None])
    assert_bit_exact(f"{case} on the GPU", got.numpy(), want)


# ---------------------------------------------------------------- whole models

S, H, D = 6, 2, 4


def _attention_model() -> onnx.ModelProto:
    """x [b, S, H*D] -> Q, K, V heads -> softmax(Q Kᵀ / sqrt(D)) V -> [b, H, S, D]."""
    rng = np.random.default_rng(0)
    e = H * D
    inits = [numpy_helper.from_array((rng.standard_normal((e, e)) / np.sqrt(e)).astype(
        np.float32), f"w{p}") for p in "qkv"]
    inits += [numpy_helper.from_array(np.array([0, S, H, D], np.int64), "split"),
              numpy_helper.from_array(np.float32(np.sqrt(D)), "sqrt_d")]
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_flat"]),
                  helper.make_node("Reshape", [f"{p}_flat", "split"], [f"{p}_split"]),
                  helper.make_node("Transpose", [f"{p}_split"], [p], perm=perm)]
    nodes += [helper.make_node("MatMul", ["q", "k"], ["qk"]),
              helper.make_node("Div", ["qk", "sqrt_d"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["probs", "v"], ["y"])]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(
        "x", f, ["b", S, e])], [helper.make_tensor_value_info("y", f, ["b", H, S, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _compile_attention(tmp_path, target: str, fields: dict) -> bytes:
    """The tiny attention model compiled for ``target`` with ``fields``; the library's bytes
    (the manifest checked for the target and the option's section)."""
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model

    src = tmp_path / "attention.onnx"
    onnx.save(_attention_model(), src)
    calib = {"x": np.random.default_rng(1).standard_normal((16, S, H * D)).astype(np.float32)}
    extra = {"calib": calib} if "lmul" not in fields else {}
    art = read_artifact(compile_model(src, tmp_path / "a.edgert", target=target, **fields,
                                      **extra))
    assert art.manifest["target"]["name"] == target
    assert art.manifest[next(k for k in ("lmul", "binary_attention", "shift_linear")
                             if k in fields)]
    return art.members["lib/model.so"]


@pytest.mark.parametrize("fields,kernel", [
    ({"lmul": "attention"}, b"lmul_matmul_kernel"),
    ({"binary_attention": True, "hash_bits": 16}, b"binary_attention_kernel"),
    ({"int_only": True, "shift_linear": "all"}, b"shift_matmul_kernel"),
])
def test_attention_model_compiles_for_cuda(tmp_path, fields, kernel):
    """``--lmul``, ``--binary-attention`` and ``--shift-linear`` compile for a GPU target:
    the artifact's library holds the op's CUDA kernel."""
    assert kernel in _compile_attention(tmp_path, TARGET, fields)


def test_binary_attention_compiles_for_jetson_orin(aarch64_cc, tmp_path):
    """jetson-orin (sm_87, aarch64 host code): the hash and attention kernels in an aarch64
    library."""
    lib = _compile_attention(tmp_path, "jetson-orin", {"binary_attention": True})
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183   # EM_AARCH64
    assert b"hash_codes_kernel" in lib and b"binary_attention_kernel" in lib
