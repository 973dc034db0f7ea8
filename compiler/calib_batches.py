"""Calibration samples cut into chunks the model accepts.

A model exported with a static batch of ``N`` (``[1, 3, 224, 224]``) rejects any other count
of samples per run, and a dynamic batch axis takes any: :func:`model_batch` reads which from
the graph inputs, and :func:`chunks` cuts the samples accordingly: ``N`` at a time for a static
batch (the last chunk filled up by repeating earlier samples: that changes no maximum), at most
:data:`BATCH` at a time for a dynamic one.

Samples are dicts input name -> array whose first axis holds samples (an array with one axis
fewer than the input is one sample). Arrays of a floating dtype are cast to the input's float
dtype; a rank or a fixed dim that cannot fit is an :class:`InputError` naming the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass

import numpy as np

from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs

BATCH = 32
"""Samples per run when the batch axis is dynamic."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, dims (int where fixed, None where dynamic; None for an unknown
    rank) and numpy dtype (None where ONNX's type has none)."""

    name: str
    dims: tuple[int | None, ...] | None
    dtype: np.dtype | None


def input_specs(model: object) -> list[InputSpec]:
    """The :class:`InputSpec` of each real graph input of ``model`` (an ONNX ModelProto)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    specs = []
    for v in graph_inputs(model):
        t = v.type.tensor_type
        dims = (tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                if t.HasField("shape") else None)
        try:
            dtype = np.dtype(tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else None
        except (KeyError, TypeError, ValueError):
            dtype = None
        specs.append(InputSpec(v.name, dims, dtype))
    return specs


def model_batch(specs: list[InputSpec]) -> int:
    """Samples per run: the fixed first dim of the inputs if one has it (a static batch),
    else :data:`BATCH`."""
    for s in specs:
        if s.dims and s.dims[0] is not None and s.dims[0] > 0:
            return s.dims[0]
    return BATCH


def chunks(feeds: Iterable[Mapping[str, np.ndarray]], specs: list[InputSpec],
           batch: int) -> Iterator[tuple[dict[str, np.ndarray], int, int]]:
    """Cut ``feeds`` into runs of ``batch`` samples (static batch: exactly ``batch``; dynamic:
    at most) along axis 0.

    Yields:
        (feed for one run, real samples in it, samples in all or 0 when ``feeds`` is an
        iterable of unknown length).

    Raises:
        InputError: a feed that is not a dict, lacks an input, or whose array cannot fit.
    """
    static = any(s.dims and s.dims[0] == batch for s in specs)
    total = 0
    if isinstance(feeds, Sized) and not isinstance(feeds, Mapping):
        feeds = [_fit(f, specs, i) for i, f in enumerate(feeds)]
        total = sum(_count(f) for f in feeds)
    for i, feed in enumerate(feeds):
        feed = _fit(feed, specs, i)
        n = _count(feed)
        for start in range(0, n, batch):
            real = min(batch, n - start)
            rows = np.arange(start, start + (batch if static else real)) % n
            yield ({k: v[start:start + real] if real == len(rows) else v[rows]
                    for k, v in feed.items()}, real, total)


def probe_runs(model: object, watch: Iterable[str], feeds: Iterable[Mapping[str, np.ndarray]],
               batch: int | None = None,
               progress: Callable[[int, int], None] | None = None
               ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]]:
    """Run ``model`` on ``feeds`` with onnxruntime (no graph optimizations), in the chunks of
    :func:`chunks` (``batch`` samples per run, default :func:`model_batch`), with the tensors of
    ``watch`` that the graph describes (``value_info`` or outputs) fetched as outputs.

    Yields:
        (the run's feed, watched tensor name -> value, real samples in the run); ``progress``
        is called with (samples done, samples in all or 0) after each run.

    Raises:
        InputError: a chunk the model rejects (the message gives the shapes fed), or no samples.
    """
    sess, fetched = _probe_session(model, set(watch))
    specs = input_specs(model)
    done = 0
    for feed, real, total in chunks(feeds, specs, batch or model_batch(specs)):
        try:
            values = dict(zip(fetched, sess.run(fetched, feed)))
        except Exception as e:  # onnxruntime raises its own exception types
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
            raise InputError(f"calibration inputs do not fit the model ({shapes}): {e}") from None
        yield feed, values, real
        done += real
        if progress:
            progress(done, total)
    if not done:
        raise InputError("calibration data holds no samples")


def _probe_session(model: object, watch: set[str]) -> tuple[object, list[str]]:
    """An onnxruntime session of ``model`` with every watched tensor as an output (no graph
    optimizations, no log output), and the names of its watched outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for v in probe.graph.value_info:
        if v.name in watch and v.name not in existing:
            probe.graph.output.append(v)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs() if o.name in watch]


def _count(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed (the fewest any input has)."""
    return min(len(v) for v in feed.values()) if feed else 0


def _fit(feed: object, specs: list[InputSpec], index: int) -> dict[str, np.ndarray]:
    """``feed``'s arrays as the inputs take them (samples on axis 0, float dtype cast), or an
    InputError naming the input and both shapes. Fitted feeds pass through unchanged."""
    if not isinstance(feed, Mapping):
        raise InputError(f"calibration sample {index}: expected a dict input name -> array, "
                         f"got {type(feed).__name__}")
    out = {}
    for s in specs:
        if s.name not in feed:
            raise InputError(f"calibration sample {index}: no array for input {s.name!r} "
                             f"(holds {', '.join(map(str, feed)) or 'nothing'})")
        a = np.asarray(feed[s.name])
        if s.dims is not None and a.ndim == len(s.dims) - 1:
            a = a[None]                                          # one sample
        if s.dims is not None and not _fits(a.shape, s.dims):
            want = ["N" if i == 0 else ("?" if d is None else d) for i, d in enumerate(s.dims)]
            raise InputError(f"calibration input {s.name!r} has shape {list(a.shape)}; the "
                             f"model's input is {[d if d is not None else '?' for d in s.dims]}"
                             f", so samples must be {want} (samples on axis 0)")
        if s.dtype is not None and s.dtype.kind == "f" and a.dtype.kind == "f" and a.dtype != s.dtype:
            a = a.astype(s.dtype)
        out[s.name] = a
    return out


def _fits(shape: tuple[int, ...], dims: tuple[int | None, ...]) -> bool:
    """Same rank and every fixed dim but the first (the samples axis) equal."""
    return (len(shape) == len(dims) and len(shape) > 0
            and all(d is None or d == n for n, d in zip(shape[1:], dims[1:])))
