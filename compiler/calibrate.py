"""Calibration: run the fp32 graph on sample inputs and collect the range of every float tensor.

The quantizer turns these ranges into scales (symmetric: ``scale = amax / qmax``). Methods:
- ``minmax``: ``amax`` = the largest ``|x|`` seen over all samples.
- ``percentile``: per batch the ``p``-th percentile of ``|x|`` (default 99.99), averaged over
  batches (no histogram to keep); clips rare outliers. Measured on MiniLM it hurts (ivit.md), so
  ``minmax`` is the default.
Per-channel maxima over the last axis are kept for every tensor too (SmoothQuant needs them for
Linear inputs).

Calibration data: an ``.npz`` holding one array per model input (first axis = samples), or a
directory of ``.npz`` files (same form) and, for single-input models, ``.npy`` files; from Python
also an iterable of such dicts (input name -> array). onnxruntime runs the fp32 graph with every
intermediate float tensor added as a graph output, on chunks of samples the model accepts
(:mod:`edgert.compiler.calib_batches`): one at a time for a static batch of 1, ``N`` at a time
for a static batch of ``N``, :data:`BATCH` at a time for a dynamic batch axis. With
``percentile`` the percentile is taken per chunk, so it depends on the chunk size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.compiler.calib_batches import BATCH
from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs

METHODS = ("minmax", "percentile")
__all__ = ["BATCH", "METHODS", "TensorRange", "calibrate", "float_tensors", "load_samples",
           "sample_feeds"]


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
            try:
                feeds.append({input_names[0]: np.load(f, allow_pickle=False)})
            except Exception as e:    # EOFError (0 bytes), ValueError, OSError...
                raise InputError(f"{f}: not a readable .npy file ({e or type(e).__name__})") from None
            continue
        try:
            with np.load(f, allow_pickle=False) as data:
                missing = [n for n in input_names if n not in data.files]
                if missing:
                    raise InputError(f"{f}: no array for input(s) {', '.join(missing)} "
                                     f"(holds {', '.join(data.files) or 'nothing'})")
                feeds.append({n: data[n] for n in input_names})
        except InputError:
            raise
        except Exception as e:        # EOFError (0 bytes), BadZipFile, ValueError, OSError...
            raise InputError(f"{f}: not a readable .npz file ({e or type(e).__name__})") from None
    return feeds


def sample_feeds(calib: object, input_names: list[str]) -> Iterable[dict[str, np.ndarray]]:
    """The feeds of ``--calib``: a path (:func:`load_samples`) or, from Python, a dict or an
    iterable of dicts input name -> array (returned as given, read lazily by
    :func:`edgert.compiler.calib_batches.chunks`). Raises InputError for anything else."""
    if isinstance(calib, (str, os.PathLike)):
        return load_samples(calib, input_names)
    if isinstance(calib, Mapping):
        return [calib]
    if not isinstance(calib, Iterable) or isinstance(calib, bytes):
        raise InputError(f"calibration data must be an .npz file, a directory or an iterable "
                         f"of dicts input name -> array, not {type(calib).__name__}")
    return calib


def float_tensors(model: object) -> list[str]:
    """Names of the float32 graph inputs and of every float32 tensor computed by a node (after
    shape inference), in graph order."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type for v in
             [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    names = [v.name for v in graph_inputs(model)]
    names += [o for node in model.graph.node for o in node.output if o]
    return [n for n in names if types.get(n) == TensorProto.FLOAT]


def calibrate(model: object, feeds: Iterable[dict[str, np.ndarray]], *, method: str = "minmax",
              percentile: float = 99.99, batch: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, TensorRange]:
    """Ranges of every graph input and float intermediate of ``model`` (shape-inferred ModelProto).

    Args:
        feeds: dicts input name -> array, each array's first axis holding samples (a dict of
            arrays one axis short is one sample): :func:`load_samples`' list, or any iterable
            (read once, lazily).
        method: ``minmax`` or ``percentile``.
        batch: samples per onnxruntime run (default: what the model accepts,
            :func:`edgert.compiler.calib_batches.model_batch`).
        progress: called with (samples done, samples in all; 0 when an iterable's length is
            unknown) after each run.

    Raises:
        InputError: unknown method, no samples, or inputs the model rejects (the message names
            the input and both shapes).
    """
    from edgert.compiler.calib_batches import probe_runs

    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    watched = float_tensors(model)
    acc: dict[str, list] = {n: [] for n in watched}
    chan: dict[str, np.ndarray] = {}
    for feed, values, _ in probe_runs(model, watched, feeds, batch, progress):
        values.update({k: v for k, v in feed.items() if k in acc})
        for name, v in values.items():
            _accumulate(acc, chan, name, np.abs(np.asarray(v, np.float64)), method, percentile)
    ranges = {}
    for name, vals in acc.items():
        if not vals:
            continue
        amax = float(max(vals)) if method == "minmax" else float(np.mean(vals))
        ranges[name] = TensorRange(amax, chan.get(name))
    return ranges


def _accumulate(acc: dict[str, list], chan: dict[str, np.ndarray], name: str, a: np.ndarray,
                method: str, percentile: float) -> None:
    """Add one chunk's ``|x|`` (float64) of tensor ``name``: its max or percentile, and the
    per-channel maxima over the last axis."""
    if a.size == 0:
        return
    acc[name].append(a.max() if method == "minmax" else np.percentile(a, percentile))
    if a.ndim:
        c = a.reshape(-1, a.shape[-1]).max(axis=0)
        chan[name] = c if name not in chan or chan[name].shape != c.shape else np.maximum(chan[name], c)
