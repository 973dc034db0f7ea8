"""Helpers for op and model tests: build a TE compute for this machine and run it on numpy arrays,
compare bits, build integer graphs, export small PyTorch models, compare outputs by cosine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def run_te(compute: Callable[..., Any], arrays: list[np.ndarray], *,
           tensors: dict[str, np.ndarray] | None = None, **attrs: Any) -> np.ndarray:
    """Build ``compute(*placeholders, **tensor_placeholders, **attrs)`` with TVM for the host
    CPU and run it on ``arrays`` (positional) and ``tensors`` (keyword tensor arguments)."""
    import tvm
    from tvm import te

    from edgert.targets import resolve_host

    tensors = tensors or {}
    phs = [te.placeholder(a.shape, dtype=str(a.dtype), name=f"in{i}") for i, a in enumerate(arrays)]
    kw = {k: te.placeholder(a.shape, dtype=str(a.dtype), name=k) for k, a in tensors.items()}
    out = compute(*phs, **kw, **attrs)
    func = te.create_prim_func([*phs, *kw.values(), out])
    lib = tvm.compile(func, target=tvm.target.Target(resolve_host().tvm_target_dict()))
    shape = [int(d) for d in out.shape]
    result = tvm.runtime.tensor(np.zeros(shape, str(out.dtype)))
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [*arrays, *tensors.values()]],
        result)
    return result.numpy()


def assert_bit_exact(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, same shape, same values; on failure say where the first difference is."""
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    diff = np.argwhere(got != want)
    assert diff.size == 0, (f"{name}: {len(diff)} elements differ, first at {tuple(diff[0])}: "
                            f"{got[tuple(diff[0])]} != {want[tuple(diff[0])]}")


def integer_model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any],
                  *, check: bool = True) -> Any:
    """An integer ONNX graph as the compiler writes it (default opset 21 + edgert 1), checked
    with the edgert schemas registered unless ``check`` is False."""
    import onnx
    from onnx import helper

    from edgert.ops import DOMAIN, register_schemas

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(DOMAIN, 1)])
    if check:
        register_schemas()
        onnx.checker.check_model(model, full_check=True)
    return model


def row_cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0; the other axes flattened), in float64."""
    g = got.reshape(len(got), -1).astype(np.float64)
    w = want.reshape(len(want), -1).astype(np.float64)
    return (g * w).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(w, axis=1)


def export_dynamic_batch(model: Any, x: Any, path: Any, exporter: str) -> Any:
    """Write ``model`` (a torch module taking ``x``: input ``x``, output ``y``) as ONNX with a
    dynamic batch: ``exporter`` ``"dynamo"``, or TorchScript (``dynamo=False``, opset 17).
    Returns ``path``."""
    import torch

    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              verbose=False).save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def skip_unless_opted_in(variable: str, what: str) -> None:
    """Skip, saying how to run it, unless the environment variable ``variable`` is ``all``: the
    longer variants of a test grid that CI leaves out to stay in its time budget."""
    import os

    import pytest

    if os.environ.get(variable) != "all":
        pytest.skip(f"{what}: set {variable}=all to run it (the default run keeps one case)")
