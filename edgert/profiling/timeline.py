"""Every kernel call of a run, in order, with its start and duration: the per-op timeline
behind ``--trace`` and the mapping of kernels to ONNX nodes (:mod:`.ops`).

It uses the same Relax VM instrument as :meth:`edgert.Session.kernel_times` (which gives the
per-kernel sums), on a second VM over the session's loaded library.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.errors import InputError


@dataclass(frozen=True)
class KernelCall:
    """One call of a compiled kernel: ``start_us`` from the start of the first recorded run,
    ``dur_us`` its wall time (microseconds, including the instrument's own ~1 us)."""

    name: str
    run: int
    start_us: float
    dur_us: float


def record_calls(session: Any, feed: Mapping[str, np.ndarray], runs: int = 1) -> list[KernelCall]:
    """The kernel calls of ``runs`` runs of ``session`` on ``feed`` (after one unrecorded
    warm-up run), in call order. TVM's ``vm.builtin.*`` helpers are left out, as in
    :meth:`edgert.Session.kernel_times`.

    Raises:
        InputError: a session not on the local ``tvm`` backend, or on a CUDA artifact.
    """
    backend = getattr(session, "_backend", None)
    if backend is None or not hasattr(backend, "_module") or \
            getattr(getattr(backend, "target", None), "device", "cpu") == "cuda":
        raise InputError("a kernel timeline needs a local CPU tvm session")
    from tvm.runtime.vm import VirtualMachine

    session.run(None, feed)                       # validates the feed, warms the caches
    arrays = [np.ascontiguousarray(feed[i.name]) for i in session.get_inputs()]
    calls: list[KernelCall] = []
    state = {"run": 0, "start": 0.0, "origin": 0.0}

    def instrument(_func: object, symbol: str, before: bool, *_rest: object) -> int:
        now = time.perf_counter()
        if before:
            state["start"] = now
        elif not symbol.startswith("vm.builtin."):
            calls.append(KernelCall(symbol, state["run"], (state["start"] - state["origin"]) * 1e6,
                                    (now - state["start"]) * 1e6))
        return 0                                   # kNoOp: run the call as usual

    vm = VirtualMachine(backend._module, backend.device)
    with session._lock:
        backend._configure_threads()
        args = [backend._stage(i, a) for i, a in enumerate(arrays)]
        main = vm["main"]
        main(*args)                                # uninstrumented warm-up of this VM
        vm.set_instrument(instrument)
        state["origin"] = time.perf_counter()
        for r in range(runs):
            state["run"] = r
            main(*args)
    return calls
