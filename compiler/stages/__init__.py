"""The stages of ``edgert compile`` and the values that flow between them.

Each stage is one module with one entry function (typed input -> typed output);
:mod:`edgert.compiler.pipeline` calls them in order. The values:

- :class:`Context`: what every stage reads (options, the resolved target and tuning database,
  the low-bit configuration, progress hooks); made once by :func:`prepare`.
- :class:`Graph`: an ONNX model plus the manifest sections the stages wrote for it so far
  (``quantization``, ``lowbit``).
- :class:`Calibrated`: a graph ready to quantize, with the calibrated range of every tensor.
- :class:`Lowered`: the Relax module and the manifest's input/output specs.
- :class:`Library`: the compiled shared library and the ``tuning`` section.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgert.compiler.options import CompileOptions
from edgert.targets import Target, get_target

StageFn = Callable[[str], None]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Context:
    """What every stage reads.

    Attributes:
        options: the checked options.
        target: the resolved target (``host`` already resolved to this machine's).
        source: the model path as errors name it.
        lowbit: the :class:`edgert.compiler.lowbit.LowbitConfig` (None: no low-bit weights).
        tuning_db: the tuning database a build applies (None: none).
        tuning_label: how the manifest names it (``shipped`` or the folder).
        stage: called with a short label as each stage starts.
        progress: called with (samples done, samples in all; 0 when unknown) during
            calibration.
    """

    options: CompileOptions
    target: Target
    source: str
    lowbit: Any = None
    tuning_db: Path | None = None
    tuning_label: str | None = None
    stage: StageFn = field(default=lambda _label: None, repr=False)
    progress: ProgressFn | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Graph:
    """An ONNX model between stages and the manifest sections written for it so far."""

    model: Any                                   # onnx.ModelProto
    sections: Mapping[str, dict] = field(default_factory=dict)

    def with_model(self, model: Any, **sections: dict) -> Graph:
        """This graph with ``model`` and ``sections`` replacing (or adding) sections."""
        return Graph(model, {**self.sections, **sections})


@dataclass(frozen=True)
class Calibrated:
    """A fused fp32 graph (its low-bit weights, if any, dequantized in place) ready to be
    quantized, and the calibrated ranges of its float tensors.

    Attributes:
        graph: the graph.
        ranges: tensor name -> :class:`edgert.compiler.calibrate.TensorRange`.
        fused: pattern -> how many were fused (``fuse_patterns``).
        plan: the :class:`edgert.compiler.lowbit.Plan` of the low-bit weights, or None.
    """

    graph: Graph
    ranges: Mapping[str, Any]
    fused: Mapping[str, int]
    plan: Any = None


@dataclass(frozen=True)
class Lowered:
    """The model imported into TVM: the Relax IRModule and the manifest's I/O specs."""

    module: Any
    inputs: list[dict]
    outputs: list[dict]


@dataclass(frozen=True)
class Library:
    """The compiled shared library (bytes) and the manifest's ``tuning`` section (None when
    no tuning database applied)."""

    data: bytes
    tuning: dict | None = None


def prepare(model_path: str | os.PathLike, options: CompileOptions,
            on_stage: StageFn | None = None, on_progress: ProgressFn | None = None) -> Context:
    """Check ``options`` and resolve the target and the tuning database (nothing is read
    from the model yet). Raises InputError, TargetError."""
    from edgert.compiler import tune

    options.check()
    lowbit = options.lowbit_config()
    target = get_target(options.target)
    tuning_db = tune.resolve_tuning_db(options.tuning_db, target)
    label = None if tuning_db is None else (
        tune.SHIPPED if tuning_db == tune.shipped_db_root() else str(tuning_db))
    return Context(options, target, str(model_path), lowbit, tuning_db, label,
                   on_stage or (lambda _label: None), on_progress)
