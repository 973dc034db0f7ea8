"""Chrome trace (the JSON onnxruntime's profiler writes): one complete event (``"ph": "X"``)
per kernel call; open it in https://ui.perfetto.dev or chrome://tracing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from edgert.backends.tvm_vm import KernelCall


def trace_events(calls: Sequence[KernelCall], nodes_of_call: Sequence[Sequence[str]],
                 op_types: Mapping[str, str], *, pid: int = 0,
                 label: str = "edgert") -> list[dict[str, Any]]:
    """A metadata event naming process ``pid`` ``label`` (``"ph": "M"``), then one complete
    event (``"ph": "X"``) per call: ``ts``/``dur`` in microseconds, ``tid`` the run, ``args``
    the ONNX ``op_name`` (nodes joined by ``,``), ``op_type`` and the ``kernel``."""
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                     "args": {"name": label}}]
    for call, nodes in zip(calls, nodes_of_call):
        events.append({
            "name": call.name, "cat": "Node", "ph": "X", "ts": round(call.start_us, 3),
            "dur": round(call.dur_us, 3), "pid": pid, "tid": call.run,
            "args": {"op_name": ",".join(nodes), "op_type": op_types.get(call.name, "?"),
                     "kernel": call.name, "run": call.run, "provider": label}})
    return events


def write_trace(path: str | os.PathLike, events: Sequence[Mapping[str, Any]]) -> None:
    """Write the events as a JSON list, atomically."""
    from edgert.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(list(events), f)
