"""Every op folder is complete, and every backend agrees with the op's spec bit for bit.

The registry (``edgert.ops.registry``) walks ``ops/``; for each op found, on its own small random
case (``OP.example(rng)``):
- the folder has spec, numba, tvm, schema and counts (and the names the consumers call);
- the numba kernel, the TE compute built for this host (llvm) and the TVM converter (a one-node
  ONNX graph through ``to_relax`` and a Relax build) equal ``spec.reference``;
- the numpy reference executor and the numba backend's interpreter run the one-node graph to the
  same result (their handlers are generated from the registry);
- ``counts`` returns non-negative ints, with the bytes moved at least the inputs' and outputs'.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edgert.ops
from edgert.ops import DOMAIN, registry
from edgert.ops._common.op import PARTS, Example, Op, OpCounts

from ophelpers import assert_bit_exact, integer_model

OPS = registry.names()


def _case(name: str) -> tuple[Op, Example, dict, np.ndarray]:
    """The op, its example (seeded by the op's name), the kernels' kwargs and the spec's output."""
    op = registry.get(name)
    rng = np.random.default_rng(sum(name.encode()))
    example = op.example(rng)
    kwargs = op.node_kwargs(example.attrs)
    return op, example, kwargs, op.reference(*example.inputs, **kwargs)


def _one_node_model(op: Op, example: Example, want: np.ndarray) -> onnx.ModelProto:
    """``op`` as the only node: input 0 a graph input, the others initializers ("" if absent)."""
    names = ["" if x is None else f"in{i}" for i, x in enumerate(example.inputs)]
    while names and not names[-1]:
        names.pop()
    graph_in = [helper.make_tensor_value_info(names[0], helper.np_dtype_to_tensor_dtype(
        example.inputs[0].dtype), example.inputs[0].shape)]
    inits = [numpy_helper.from_array(x, n) for n, x in zip(names[1:], example.inputs[1:])
             if n]
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(want.dtype),
                                        want.shape)
    node = helper.make_node(op.name, names, ["out"], domain=DOMAIN, **example.attrs)
    return integer_model([node], graph_in, [out], inits)


def test_every_folder_declares_an_op():
    """A sub-package of ops/ without a leading "_" sets OP; a folder of .py files is a package."""
    assert registry.folders_without_op() == []
    root = Path(edgert.ops.__file__).parent
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(("_", ".")) and any(folder.glob("*.py")):
            assert (folder / "__init__.py").exists(), f"ops/{folder.name} lacks __init__.py"
    assert {"Requant", "Shiftmax", "ShiftGELU", "ILayerNorm", "IntMatMul"} <= set(OPS)


def test_a_missing_part_is_reported():
    """The completeness check fails on a folder that lacks parts (``_intmath`` has no schema)."""
    missing = Op("NotAnOp", "edgert.ops._intmath").missing_parts()
    assert "schema" in missing and "spec.reference" in missing and "tvm.Converter" in missing


@pytest.mark.parametrize("name", OPS)
def test_folder_has_every_part(name):
    op = registry.get(name)
    assert op.missing_parts() == [], f"ops/{op.folder} is incomplete"
    for part in PARTS:
        assert op.has_part(part), part
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    assert issubclass(op.converter, OnnxOpConverter)
    assert op.schema().name == name and op.schema().domain == DOMAIN


@pytest.mark.parametrize("name", OPS)
def test_numba_equals_spec(name):
    op, example, kwargs, want = _case(name)
    assert_bit_exact(f"{name} numba", op.numba_kernel(*example.inputs, **kwargs), want)


def _run_te(op: Op, inputs: tuple, kwargs: dict) -> np.ndarray:
    """``op.te_compute`` on placeholders (``None`` where an input is absent), built for the host
    CPU and run on ``inputs``."""
    import tvm
    from tvm import te

    from edgert.targets import resolve_host

    phs = [None if x is None else te.placeholder(x.shape, str(x.dtype), f"in{i}")
           for i, x in enumerate(inputs)]
    out = op.te_compute(*phs, **kwargs)
    func = te.create_prim_func([*[p for p in phs if p is not None], out])
    lib = tvm.compile(func, target=tvm.target.Target(resolve_host().tvm_target_dict()))
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs if x is not None], result)
    return result.numpy()


@pytest.mark.parametrize("name", OPS)
def test_te_compute_equals_spec(name):
    op, example, kwargs, want = _case(name)
    assert_bit_exact(f"{name} TE", _run_te(op, example.inputs, kwargs), want)


@pytest.mark.parametrize("name", OPS)
def test_tvm_converter_equals_spec(name):
    """The folder's Relax converter, as ``compile`` uses it: ONNX node -> Relax -> llvm."""
    import tvm
    from tvm import relax

    from edgert.compiler.lower import to_relax

    op, example, _, want = _case(name)
    mod = to_relax(_one_node_model(op, example, want), source=name)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(example.inputs[0]))
    assert_bit_exact(f"{name} Relax", got.numpy(), want)


@pytest.mark.parametrize("name", OPS)
def test_graph_executors_equal_spec(name):
    """The reference executor's and the numba backend's handlers (made from the registry)."""
    from edgert.backends.numba_backend import Plan
    from edgert.backends.reference import run_reference

    op, example, _, want = _case(name)
    model = _one_node_model(op, example, want)
    feeds = {"in0": example.inputs[0]}
    assert_bit_exact(f"{name} reference executor", run_reference(model, feeds)[0], want)
    assert_bit_exact(f"{name} numba backend", Plan(model).run([example.inputs[0]])[0], want)


@pytest.mark.parametrize("name", OPS)
def test_counts_are_non_negative_ints(name):
    op, example, _, want = _case(name)
    shapes = [None if x is None else x.shape for x in example.inputs]
    dtypes = [None if x is None else x.dtype for x in example.inputs]
    counts = op.counts(shapes, dtypes, example.attrs)
    assert isinstance(counts, OpCounts)
    values = counts.as_dict()
    assert all(type(v) is int and v >= 0 for v in values.values()), values
    assert sum(v for k, v in values.items() if not k.startswith("bytes_")) > 0, values
    assert counts.bytes_read >= sum(x.nbytes for x in example.inputs if x is not None)
    assert counts.bytes_written >= want.nbytes


def test_registry_does_not_import_numba_or_tvm():
    """Finding the ops imports neither numba nor TVM (``import edgert`` stays light)."""
    import subprocess
    import sys

    code = ("import sys; from edgert.ops import registry; registry.all(); import edgert; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numba', 'tvm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
