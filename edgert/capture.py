"""Capture what libraries write to the process's stdout and stderr, at the file-descriptor level.

TVM's C++ logging (``[12:00:00] .../transform.h:1261: Warning: ...``), onnxruntime's and
numba's messages are written by native code straight to file descriptors 1 and 2, so replacing
``sys.stdout``/``sys.stderr`` hides nothing. :func:`captured` points fds 1 and 2 at a temporary
file for the duration of a block (``os.dup2``) and hands back the text written there;
``sys.stdout`` and ``sys.stderr`` point there too meanwhile, so Python's ``print``,
``warnings`` and ``logging`` output is included. :func:`terminal_stream` is a stream
on the terminal's stderr made before any capture, for progress shown while a capture runs;
:func:`released` wraps a callback so that it prints where the caller expects.

Captures are process-wide (file descriptors are); nested captures are allowed (the inner one
sees nothing, the outer one keeps the text). Importing this module loads nothing heavy.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

MAX_CHARS = 8 << 20
"""At most this many characters of one capture are kept (the last ones): a TVM IR dump can run
to megabytes."""

_lock = threading.Lock()
_active = 0


def _flush_all() -> None:
    """Flush Python's and C's stdio buffers so earlier output lands where it was meant to."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def terminal_stream(fd: int = 2) -> TextIO:
    """A line-buffered text stream on a duplicate of ``fd`` (2: stderr, 1: stdout) as it is
    now: what is written to it reaches the terminal (or wherever the fd pointed) even while
    :func:`captured` runs. Falls back to ``sys.stderr``/``sys.stdout`` where the fd is closed."""
    try:
        return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
    except OSError:
        return sys.stdout if fd == 1 else sys.stderr


@dataclass
class _Redirect:
    """The state of the running capture: the original fds 1 and 2 (duplicates), the original
    ``sys.stdout``/``sys.stderr``, the temporary file's fd and the text stream on it."""

    saved: tuple[int, int]
    streams: tuple[TextIO, TextIO]
    target: int
    text_out: TextIO


_current: _Redirect | None = None


def _point_at_file(r: _Redirect) -> None:
    os.dup2(r.target, 1)
    os.dup2(r.target, 2)
    sys.stdout = sys.stderr = r.text_out


def _point_back(r: _Redirect) -> None:
    r.text_out.flush()
    sys.stdout, sys.stderr = r.streams
    _flush_all()
    os.dup2(r.saved[0], 1)
    os.dup2(r.saved[1], 2)


@contextmanager
def captured(sink: list[str]) -> Iterator[None]:
    """Redirect fds 1 and 2 (and ``sys.stdout``/``sys.stderr``) to a temporary file while the
    block runs; afterwards append the text written there (UTF-8, undecodable bytes replaced;
    at most :data:`MAX_CHARS`, the last ones) to ``sink``, also when the block raises.
    Inside another capture: does nothing (the outer capture keeps the text)."""
    global _active, _current
    with _lock:
        nested = _active > 0
        _active += 1
    if nested:
        try:
            yield
        finally:
            with _lock:
                _active -= 1
        return
    _flush_all()
    saved = (os.dup(1), os.dup(2))
    try:
        with tempfile.TemporaryFile() as tmp:
            text_out = open(tmp.fileno(), "w", buffering=1, encoding="utf-8", errors="replace",
                            closefd=False)
            _current = _Redirect(saved, (sys.stdout, sys.stderr), tmp.fileno(), text_out)
            _point_at_file(_current)
            try:
                yield
            finally:
                _point_back(_current)
                _current = None
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
                sink.append(text if len(text) <= MAX_CHARS
                            else "[... earlier output cut]\n" + text[-MAX_CHARS:])
    finally:
        os.close(saved[0])
        os.close(saved[1])
        with _lock:
            _active -= 1


def released(fn: Callable[..., T] | None) -> Callable[..., T] | None:
    """``fn`` wrapped to run with the original stdout and stderr even inside a capture (for
    callbacks of the caller's, such as progress printing); None stays None."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        r = _current
        if r is None:
            return fn(*args, **kwargs)
        _point_back(r)
        try:
            return fn(*args, **kwargs)
        finally:
            _flush_all()
            _point_at_file(r)
    return call
