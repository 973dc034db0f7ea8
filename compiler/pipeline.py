"""``compile_model``: ONNX file in, ``.edgert`` artifact out.

Stages: load + check + shape inference -> every op supported? -> Relax import -> build for the
target -> package (atomic write). ``on_stage`` is called with a short label as each stage
starts, so the CLI can show progress.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

from edgert import __version__
from edgert.artifact import MODEL_MEMBER, sha256, write_artifact
from edgert.compiler.check import load_model, require_supported
from edgert.compiler.lower import build_library, supported_ops, to_relax
from edgert.onnx_graph import graph_inputs, value_info_json
from edgert.targets import get_target

LIB_MEMBER = "lib/model.so"


def compile_model(model_path: str | os.PathLike, output: str | os.PathLike, *,
                  target: str = "host", threads: int | None = None,
                  on_stage: Callable[[str], None] | None = None) -> Path:
    """Compile an fp32 ONNX model into a ``.edgert`` artifact.

    Args:
        model_path: the ONNX file.
        output: where to write the artifact (written atomically).
        target: a target name from ``edgert targets`` (``host`` = this machine).
        threads: worker threads the kernels are built for (default: all cores).
        on_stage: progress callback, called with a label as each stage starts.

    Returns:
        The artifact path.

    Raises:
        ModelError, UnsupportedOpError, TargetError, CompileError.
    """
    import tvm

    stage = on_stage or (lambda _label: None)
    tgt = get_target(target)
    source = str(model_path)

    stage("checking the model")
    model = load_model(model_path)
    require_supported(model, supported_ops(), source=source)
    inputs = [value_info_json(v, source) for v in graph_inputs(model)]
    outputs = [value_info_json(v, source) for v in model.graph.output]

    stage("importing into TVM")
    mod = to_relax(model, source=source)

    stage(f"compiling for {tgt.name}")
    lib = build_library(mod, tgt, threads=threads, source=source)

    stage("packaging")
    model_bytes = model.SerializeToString()
    manifest = {
        "edgert_version": __version__,
        "tvm_version": tvm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": tgt.to_json(),
        "inputs": inputs,
        "outputs": outputs,
        "lib": LIB_MEMBER,
        "source_model": {"name": Path(model_path).name, "sha256": sha256(Path(model_path).read_bytes())},
        "compile_options": {"target": target, "threads": threads, "precision": "fp32"},
    }
    return write_artifact(output, manifest, {MODEL_MEMBER: model_bytes, LIB_MEMBER: lib})
