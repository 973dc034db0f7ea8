"""Calibration: run the fp32 graph on sample inputs and collect the range of every float tensor.

The quantizer turns these ranges into scales (symmetric: ``scale = amax / qmax``). Methods:
- ``minmax``: ``amax`` = the largest ``|x|`` seen over all samples.
- ``percentile``: per batch the ``p``-th percentile of ``|x|`` (default 99.99), averaged over
  batches (no histogram to keep); clips rare outliers. Measured on MiniLM it hurts (ivit.md), so
  ``minmax`` is the default.
Per-channel maxima over the last axis are kept for every tensor too (SmoothQuant needs them for
Linear inputs).

Calibration data: an ``.npz`` holding one array per model input (first axis = samples), or a
directory of ``.npz`` files (same form) and, for single-input models, ``.npy`` files. onnxruntime
runs the fp32 graph with every intermediate float tensor added as a graph output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs

METHODS = ("minmax", "percentile")
BATCH = 32


@dataclass
class TensorRange:
    """Calibrated range of one float tensor: ``amax`` (float, >= 0) and the per-channel max of
    ``|x|`` over the last axis (float64 [C]; None for scalars)."""

    amax: float
    channel_amax: np.ndarray | None


def load_samples(path: str | os.PathLike, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Read calibration inputs; returns one feed dict per file (arrays: samples on axis 0).

    Raises:
        InputError: a missing path, an empty directory, a file without some input, or ``.npy``
            files for a model with several inputs.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"calibration data {p} does not exist")
    files = sorted(f for f in p.iterdir() if f.suffix in (".npz", ".npy")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"calibration directory {p} holds no .npz or .npy files")
    feeds = []
    for f in files:
        if f.suffix == ".npy":
            if len(input_names) != 1:
                raise InputError(f"{f}: .npy calibration files need a single-input model; this one "
                                 f"has inputs {', '.join(input_names)} (use .npz with one array each)")
            feeds.append({input_names[0]: np.load(f, allow_pickle=False)})
            continue
        try:
            with np.load(f, allow_pickle=False) as data:
                missing = [n for n in input_names if n not in data.files]
                if missing:
                    raise InputError(f"{f}: no array for input(s) {', '.join(missing)} "
                                     f"(holds {', '.join(data.files) or 'nothing'})")
                feeds.append({n: data[n] for n in input_names})
        except (OSError, ValueError) as e:
            raise InputError(f"{f}: not a readable .npz file ({e})") from None
    return feeds


def _batches(feeds: list[dict[str, np.ndarray]], batch: int) -> Iterator[dict[str, np.ndarray]]:
    for feed in feeds:
        n = min(len(v) for v in feed.values())
        for start in range(0, n, batch):
            yield {k: v[start:start + batch] for k, v in feed.items()}


def float_tensors(model: object) -> list[str]:
    """Names of the float32 graph inputs and of every float32 tensor computed by a node (after
    shape inference), in graph order."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type for v in
             [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    names = [v.name for v in graph_inputs(model)]
    names += [o for node in model.graph.node for o in node.output if o]
    return [n for n in names if types.get(n) == TensorProto.FLOAT]


def calibrate(model: object, feeds: list[dict[str, np.ndarray]], *, method: str = "minmax",
              percentile: float = 99.99,
              progress: Callable[[int, int], None] | None = None) -> dict[str, TensorRange]:
    """Ranges of every graph input and float intermediate of ``model`` (shape-inferred ModelProto).

    Args:
        feeds: from :func:`load_samples`; each array's first axis holds samples.
        method: ``minmax`` or ``percentile``.
        progress: called with (batches done, batches in all).

    Raises:
        InputError: unknown method, no samples, or inputs the model rejects.
    """
    import onnx
    import onnxruntime as ort

    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    watched = float_tensors(model)
    watch_set = set(watched)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for v in probe.graph.value_info:
        if v.name in watch_set and v.name not in existing:
            probe.graph.output.append(v)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs() if o.name in watch_set]
    batches = list(_batches(feeds, BATCH))
    if not batches:
        raise InputError("calibration data holds no samples")
    acc: dict[str, list] = {n: [] for n in watched}
    chan: dict[str, np.ndarray] = {}
    for done, feed in enumerate(batches, 1):
        try:
            values = dict(zip(out_names, sess.run(out_names, feed)))
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"calibration inputs do not fit the model: {e}") from None
        values.update({k: v for k, v in feed.items() if k in acc})
        for name, v in values.items():
            a = np.abs(np.asarray(v, np.float64))
            if a.size == 0:
                continue
            acc[name].append(a.max() if method == "minmax" else np.percentile(a, percentile))
            if a.ndim:
                c = a.reshape(-1, a.shape[-1]).max(axis=0)
                chan[name] = c if name not in chan or chan[name].shape != c.shape else np.maximum(chan[name], c)
        if progress:
            progress(done, len(batches))
    ranges = {}
    for name, vals in acc.items():
        if not vals:
            continue
        amax = float(max(vals)) if method == "minmax" else float(np.mean(vals))
        ranges[name] = TensorRange(amax, chan.get(name))
    return ranges

