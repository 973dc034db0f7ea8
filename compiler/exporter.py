"""Export a PyTorch module to ONNX with a dynamic batch axis.

Uses ``torch.onnx.export`` with the ``torch.export`` (dynamo) exporter, the one PyTorch
maintains. Axis 0 of every input (and output) is symbolic (``batch``) unless
``dynamic_batch=False``. PyTorch's fused attention fast path (``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` in eval mode without gradients call one native kernel, which no
ONNX exporter can write) is switched off while exporting, so the graph holds the attention's
ops, and restored afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError, ModelError
from edgert.fileio import atomic_path


def export(module: Any, example_inputs: Any, path: str | os.PathLike, *,
           input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None,
           dynamic_batch: bool = True, opset: int | None = None) -> Path:
    """Export ``module`` to an ONNX file.

    Args:
        module: a ``torch.nn.Module`` (put in eval mode here).
        example_inputs: a tensor or a tuple of tensors, the module's positional inputs.
        path: destination ``.onnx`` (written atomically).
        input_names / output_names: graph names (default ``input_0``... / ``output_0``...).
        dynamic_batch: make axis 0 of every input symbolic (``batch``).
        opset: ONNX opset (default: the exporter's).

    Returns:
        The written path.
    """
    try:
        import torch
    except ImportError:
        raise EdgertError("export needs PyTorch: pip install 'edgert[export]'") from None

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if input_names is None:
        input_names = [f"input_{i}" for i in range(len(example_inputs))]
    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises a size-1 axis to the constant 1: show it a batch of 2.
        example_inputs = tuple(_batch_of_two(t) for t in example_inputs)
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)

    try:
        with torch.no_grad(), attention_fastpath_off():
            program = torch.onnx.export(
                module, example_inputs, dynamo=True, input_names=list(input_names),
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False,
            )
        with atomic_path(path) as tmp:
            program.save(str(tmp), external_data=False)
    except Exception as e:
        text = str(e).strip()
        raise ModelError(f"exporting {type(module).__name__} to ONNX failed: "
                         f"{text.splitlines()[0] if text else type(e).__name__}") from None
    return Path(path)


@contextlib.contextmanager
def attention_fastpath_off() -> Iterator[None]:
    """Switch PyTorch's fused attention fast path off (``torch.backends.mha``) for the block and
    restore the previous setting afterwards. In eval mode without gradients,
    ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` otherwise call
    ``aten::_transformer_encoder_layer_fwd`` / ``aten::_native_multi_head_attention``, which
    the TorchScript exporter refuses ("not supported")."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _batch_of_two(t: Any) -> Any:
    return t.expand(2, *t.shape[1:]).contiguous() if t.dim() > 0 and t.shape[0] == 1 else t


def load_factory(spec: str) -> tuple[Any, Any]:
    """Call ``MODULE:FACTORY`` (a module path or a ``.py`` file) and return its result.

    The factory must return ``(torch_module, example_inputs)``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EdgertError(f"expected MODULE:FACTORY (e.g. mypkg.models:make), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).resolve()
            spec_ = importlib.util.spec_from_file_location(file.stem, file)
            if spec_ is None or spec_.loader is None or not file.is_file():
                raise ImportError(f"no such file {module_name}")
            mod = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(mod)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            mod = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgertError(f"cannot import {module_name!r}: {e}") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise EdgertError(f"{module_name!r} has no callable {attr!r}")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EdgertError(f"{spec} must return (torch_module, example_inputs), got "
                          f"{type(result).__name__}")
    return result
