"""Each runtime in its own process: what the benchmarks share.

A :class:`Worker` starts ``target(conn, *args)`` in a spawned process and talks to it over a
pipe: the target (built on :func:`serve`) answers every request with ``("ok", value)`` or
``("error", message)``, its first answer saying whether it loaded. :func:`open_runtime` loads
an edgert artifact or an ONNX file for onnxruntime, :func:`call_times` times a call.
:func:`in_child` runs one function (a compile, a quantization) in a fresh process, so a crash
in native code is a row of the report, not the end of the benchmark.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

SPAWN = multiprocessing.get_context("spawn")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Worker:
    """One runtime in its own process, called one request at a time."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self._answer()                           # loaded, or the error that stopped it

    def _answer(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(f"runtime process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def call(self, cmd: str, arg: Any) -> Any:
        self.conn.send((cmd, arg))
        return self._answer()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(("stop", None))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def serve(conn: Any, load: Callable[[], Any], handle: Callable[[Any, str, Any], Any]) -> None:
    """The process side of a :class:`Worker`: ``state = load()``, answered ``("ok", None)`` (or
    the error, which ends the process); then every request ``(cmd, arg)`` answered with
    ``("ok", handle(state, cmd, arg))`` or ``("error", message)``, until ``("stop", _)``."""
    try:
        state = load()
        conn.send(("ok", None))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", one_line(e)))
        return
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            return
        try:
            conn.send(("ok", handle(state, cmd, arg)))
        except Exception as e:  # noqa: BLE001 - reported to the parent as one line
            conn.send(("error", one_line(e)))


def open_runtime(runtime: str, path: str, threads: int | None) -> Any:
    """A runner with ``run(None, feed)``: an ``edgert.Session`` of the artifact ``path`` when
    ``runtime`` starts with "edgert", else an onnxruntime session of the ONNX file ``path``."""
    if runtime.startswith("edgert"):
        import edgert

        return edgert.Session(path, threads=threads)
    from edgert.peers import onnxruntime_session

    return onnxruntime_session(path, threads)


def call_times(call: Callable[[], Any], repeats: int) -> np.ndarray:
    """Wall seconds of each of ``repeats`` calls of ``call``, float64 [repeats]."""
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return times


def guarded(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """``fn(*args)`` as (its value, None) or (None, the error as one line): no exception object
    crosses the process boundary (edgert's errors take other arguments than their message, so
    they would not unpickle)."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - a failed compile is a row, not a crash
        return None, one_line(e)


def in_child(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """Run ``fn(*args)`` in a fresh process: (its return value, None) or (None, the error);
    a process that dies (a crash in native code) is an error too."""
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        try:
            return pool.submit(guarded, fn, *args).result()
        except BrokenProcessPool:
            return None, "the process died (a crash in native code)"
