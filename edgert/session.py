"""``Session``: run a compiled ``.edgert`` artifact, with onnxruntime's habits.

    sess = edgert.Session("model.edgert")
    [logits] = sess.run(None, {"x": batch})

Inputs are validated before anything runs (names, dtypes, ranks, fixed dimensions, the
consistency of symbolic dimensions across inputs, the values of integer inputs that index
a table, e.g. token ids: the manifest's ``range``, and that float inputs hold no NaN or
infinity unless ``check_finite=False``); any mismatch is an :class:`InputError` naming the
input and what was expected (and the first offending element). ``run`` may be called from several threads: calls
into one backend are serialized by a lock (the TVM virtual machine keeps per-call state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgert.artifact import Artifact, read_artifact
from edgert.errors import InputError
from edgert.intio import io_specs

if TYPE_CHECKING:
    from edgert.backends.tvm_vm import KernelCall, KernelTime

_ONNX_TYPE_NAMES = {
    "float32": "float", "float64": "double", "float16": "float16", "int8": "int8",
    "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
    "int64": "int64", "bool": "bool",
}


@dataclass(frozen=True)
class NodeArg:
    """An input or output of a model.

    Attributes:
        name: tensor name in the ONNX graph.
        shape: one entry per axis: an int for a fixed size, a str for a symbolic one
            (``"batch"``), ``None`` when unknown.
        dtype: numpy dtype name (``"float32"``, ``"int8"``...).
    """

    name: str
    shape: list[int | str | None]
    dtype: str

    @property
    def type(self) -> str:
        """onnxruntime-style type string, e.g. ``tensor(float)``."""
        return f"tensor({_ONNX_TYPE_NAMES.get(self.dtype, self.dtype)})"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeArg:
        return cls(str(d["name"]), list(d["shape"]), str(d["dtype"]))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Session:
    """Load an artifact once, then run it many times.

    Args:
        path: a ``.edgert`` file written by ``edgert compile``.
        backend: ``"tvm"`` (the compiled library; default) or ``"numba"`` (interprets the
            artifact's integer ONNX graph with the numba kernels of ``edgert.ops``; no TVM).
        threads: worker threads for the compiled kernels (default: the physical cores
            this process may use). Each session keeps its own count, also with several
            sessions in one process.
        rpc: ``"HOST:PORT"`` of a board's TVM RPC server (``python -m tvm.exec.rpc_server``):
            the compiled library runs there (compiled for that board's target); inputs and
            outputs travel over the network. Unreachable server: :class:`TargetError`.
        check_finite: refuse float inputs holding NaN or +-inf (default), naming the input and
            the first such element: an integer graph would turn them into saturated or
            arbitrary integers and answer with confident finite numbers. ``False`` skips the
            one vectorized pass over each float input (see docs/reliability.md for its cost
            and for what a graph does with non-finite values).

    Raises:
        ArtifactError: the file is damaged or of an unknown format version.
        TargetError: the artifact was compiled for a machine this one is not.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str = "tvm",
                 threads: int | None = None, rpc: str | None = None,
                 check_finite: bool = True) -> None:
        from edgert.backends import load_backend

        self._artifact: Artifact = read_artifact(path)      # the manifest's schema is checked
        manifest = self._artifact.manifest
        self._inputs = [NodeArg.from_json(d) for d in manifest["inputs"]]
        self._outputs = [NodeArg.from_json(d) for d in manifest["outputs"]]
        self._check_finite = bool(check_finite)
        self._output_index = {o.name: i for i, o in enumerate(self._outputs)}
        self._ranges = {d["name"]: d["range"] for d in manifest["inputs"] if d.get("range")}
        self._integer_inputs: dict[str, Any] = dict((io_specs(manifest) or {}).get("inputs") or {})
        self._backend = load_backend(backend, self._artifact, threads=threads, rpc=rpc)
        self._lock = threading.Lock()

    @property
    def manifest(self) -> dict[str, Any]:
        """The artifact's manifest (target, versions, compile options...)."""
        return self._artifact.manifest

    @property
    def backend(self) -> str:
        """Name of the backend executing this session."""
        return self._backend.name

    def get_inputs(self) -> list[NodeArg]:
        """The model inputs, in order."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        """The model outputs, in order."""
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model.

        Args:
            output_names: which outputs to return, in that order; ``None`` for all.
            input_feed: input name -> array of the declared dtype and shape.

        Returns:
            One numpy array per requested output.

        Raises:
            InputError: a missing, unknown or mismatched input, or an unknown output name.
        """
        wanted = self._output_positions(output_names)
        arrays = self._validate(input_feed)
        with self._lock:
            outputs = self._backend.run(arrays)
        return [outputs[i] for i in wanted]

    def kernel_times(self, input_feed: Mapping[str, np.ndarray], *,
                     repeats: int = 20) -> list[KernelTime]:
        """Where a run's time goes: each kernel the run calls, with its calls and milliseconds
        per run, and one row for the VM's own time (its builtins and dispatch: a plain run's
        median minus the kernels), slowest first (see
        :meth:`edgert.backends.tvm_vm.TvmBackend.kernel_times`).

        Raises:
            InputError: bad ``input_feed``, ``repeats`` < 1, or a session not on the local
                ``tvm`` backend.
            TargetError: a CUDA artifact.
        """
        return self._profiled("kernel_times", input_feed, repeats, "repeats")

    def kernel_calls(self, input_feed: Mapping[str, np.ndarray], *,
                     runs: int = 1) -> list[KernelCall]:
        """Every kernel call of ``runs`` runs, in call order, with its start and duration in
        microseconds (the per-op timeline of ``edgert profile --trace``; see
        :meth:`edgert.backends.tvm_vm.TvmBackend.kernel_calls`).

        Raises:
            InputError: bad ``input_feed``, ``runs`` < 1, or a session not on the local
                ``tvm`` backend.
            TargetError: a CUDA artifact.
        """
        return self._profiled("kernel_calls", input_feed, runs, "runs")

    def _profiled(self, method: str, input_feed: Mapping[str, np.ndarray], runs: int,
                  runs_name: str) -> Any:
        """The backend's instrumented ``method`` over ``runs`` runs on ``input_feed``."""
        if runs < 1:
            raise InputError(f"{runs_name} must be >= 1, got {runs}")
        if not hasattr(self._backend, method):
            raise InputError(f"per-kernel times need the local tvm backend; this session runs "
                             f"on {self._backend.name}")
        arrays = self._validate(input_feed)
        with self._lock:
            return getattr(self._backend, method)(arrays, runs)

    def _output_positions(self, output_names: Sequence[str] | None) -> list[int]:
        if output_names is None:
            return list(range(len(self._outputs)))
        if isinstance(output_names, str):
            output_names = [output_names]
        unknown = [n for n in output_names if n not in self._output_index]
        if unknown:
            raise InputError(
                f"unknown output name(s) {', '.join(map(repr, unknown))}; "
                f"the model's outputs are {', '.join(o.name for o in self._outputs)}"
            )
        return [self._output_index[n] for n in output_names]

    def _validate(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputError("input_feed must be a dict mapping input names to numpy arrays")
        names = [i.name for i in self._inputs]
        missing = [n for n in names if n not in feed]
        unknown = [n for n in feed if n not in names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
            raise InputError(f"{'; '.join(parts)}; the model's inputs are {', '.join(names)}")
        symbols: dict[str, tuple[int, str]] = {}
        arrays = []
        for spec in self._inputs:
            hint, value = "", feed[spec.name]
            if (spec.name in self._integer_inputs and isinstance(value, np.ndarray)
                    and value.dtype.kind == "f"):
                scale = self._integer_inputs[spec.name].get("scale")
                hint = (f" (this artifact has integer I/O, --io int8: quantize the input first, "
                        f"q = saturate(round_half_even(x / {scale!r})) as {spec.dtype}; "
                        "edgert.intio.quantize does it)")
            array = _check_input(spec, value, symbols, hint)
            if self._check_finite and array.dtype.kind == "f":
                check_finite(spec.name, array)
            if spec.name in self._ranges:
                _check_range(spec.name, array, self._ranges[spec.name])
            arrays.append(array)
        return arrays


def _check_input(spec: NodeArg, value: Any, symbols: dict[str, tuple[int, str]],
                 dtype_hint: str = "") -> np.ndarray:
    """Validate one input against its spec; returns it as a C-contiguous array. ``dtype_hint``
    is added to a dtype mismatch's message."""
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"input {spec.name!r}: expected a numpy array, got {type(value).__name__}"
        )
    if value.dtype != np.dtype(spec.dtype):
        raise InputError(
            f"input {spec.name!r}: expected dtype {spec.dtype}, got {value.dtype}{dtype_hint}"
        )
    if value.ndim != len(spec.shape):
        raise InputError(
            f"input {spec.name!r}: expected rank {len(spec.shape)} (shape {_fmt(spec.shape)}), "
            f"got rank {value.ndim} (shape {list(value.shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(
                f"input {spec.name!r}: axis {axis} must be {want} (shape {_fmt(spec.shape)}), "
                f"got {got} (shape {list(value.shape)})"
            )
        if isinstance(want, str):
            seen = symbols.setdefault(want, (got, spec.name))
            if seen[0] != got:
                raise InputError(
                    f"input {spec.name!r}: axis {axis} ({want!r}) is {got}, but input "
                    f"{seen[1]!r} has {want!r} = {seen[0]}"
                )
    return np.ascontiguousarray(value)


def check_finite(name: str, value: np.ndarray) -> None:
    """Refuse a float array holding NaN or +-inf, naming the first such element (row-major
    order) and how many there are. One vectorized pass (``np.isfinite(...).all()``); the
    index is searched only when the check fails.

    Raises:
        InputError: ``value`` holds a non-finite element.
    """
    found = nonfinite(value)
    if found is not None:
        count, where = found
        raise InputError(
            f"input {name!r}: holds {count} non-finite value(s) (NaN or +-inf), the first "
            f"{value[tuple(where)]} at index {where}; pass check_finite=False (edgert run "
            "--no-check-finite) to run anyway")


def nonfinite(value: np.ndarray) -> tuple[int, list[int]] | None:
    """(how many, index of the first in row-major order) of the NaN and +-inf elements of a
    float array, or None when all are finite (or it is not a float array)."""
    if value.dtype.kind not in "fc" or value.size == 0 or bool(np.isfinite(value).all()):
        return None
    bad = ~np.isfinite(value)
    return int(bad.sum()), [int(i) for i in np.unravel_index(int(np.argmax(bad)), value.shape)]


def _check_range(name: str, value: np.ndarray, bounds: Mapping[str, Any]) -> None:
    """Refuse index values outside ``[bounds["min"], bounds["max"]]`` (compiled kernels would
    read outside the table), naming the first offending element."""
    lo, hi = int(bounds["min"]), int(bounds["max"])
    if value.size == 0 or (lo <= value.min() and value.max() <= hi):
        return
    where = tuple(int(i) for i in np.argwhere((value < lo) | (value > hi))[0])
    raise InputError(f"input {name!r}: values must lie in [{lo}, {hi}] (it indexes "
                     f"{bounds.get('why', 'a table')}), got {value[where]} at index {list(where)}")


def _fmt(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
