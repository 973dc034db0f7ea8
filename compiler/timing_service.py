"""Build candidate models, load them, time them here: the measurements a compile makes on this
machine (``--lut auto``'s kernel choice, :mod:`edgert.compiler.kernel_choice`).

Each candidate (a small ONNX model) goes through the compile stages of
:mod:`edgert.compiler.stages` with default options for the target and thread count (no low-bit
rewrite, no kernel choice: the candidate already says which kernel it is), into an artifact in a
temporary folder, which the TVM backend of the runtime loads
(:class:`edgert.backends.tvm_vm.TvmBackend`). The candidates are timed interleaved, one call of
each in turn (:func:`edgert.timing.interleaved_latencies`), so a load change on a shared machine
hits them alike; the number of calls follows a time budget.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from edgert.targets import Target

TIME_BUDGET_S = 0.3
"""Timed seconds per candidate (at least :data:`MIN_REPEATS` calls)."""
MIN_REPEATS = 5
MAX_REPEATS = 200


def build_artifact(model: onnx.ModelProto, folder: str | os.PathLike, name: str,
                   target: Target, threads: int | None) -> Path:
    """Compile ``model`` for ``target`` and ``threads`` into ``folder/name.edgert`` (the model
    is saved as ``folder/name.onnx`` first: the artifact records its source); returns the
    artifact's path. Raises what the stages raise (CompileError...)."""
    from edgert.compiler.options import CompileOptions
    from edgert.compiler.stages import prepare
    from edgert.compiler.stages.check import check
    from edgert.compiler.stages.lower import lower
    from edgert.compiler.stages.package import package
    from edgert.compiler.stages.schedule import schedule

    src = Path(folder) / f"{name}.onnx"
    onnx.save_model(model, src)
    ctx = prepare(src, CompileOptions(target=target.name, threads=threads))
    graph = check(src, ctx)
    lowered = lower(graph, ctx)
    return package(graph, lowered, schedule(lowered, ctx), ctx, Path(folder) / f"{name}.edgert")


def median_latencies(models: Mapping[str, onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                     target: Target, threads: int | None) -> dict[str, float]:
    """Build every model of ``models`` (name -> model, all taking ``feeds``), load each and
    time them interleaved on this machine; returns name -> median seconds a call.

    Raises:
        EdgertError: a candidate that does not build or load here.
    """
    from edgert.artifact import read_artifact
    from edgert.backends.tvm_vm import TvmBackend
    from edgert.timing import interleaved_latencies

    with tempfile.TemporaryDirectory(prefix="edgert-timing-") as tmp:
        runs = {}
        for name, model in models.items():
            artifact = read_artifact(build_artifact(model, tmp, name, target, threads))
            backend = TvmBackend(artifact, threads=threads)
            inputs = [feeds[v["name"]] for v in artifact.manifest["inputs"]]
            runs[name] = (lambda b, x: lambda: b.run(x))(backend, inputs)
        once = interleaved_latencies(runs, repeats=1, warmup=1)
        slowest = max(float(v[0]) for v in once.values())
        repeats = int(np.clip(TIME_BUDGET_S / max(slowest, 1e-6), MIN_REPEATS, MAX_REPEATS))
        times = interleaved_latencies(runs, repeats=repeats, warmup=1)
    return {name: float(np.median(v)) for name, v in times.items()}
