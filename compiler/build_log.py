"""The build log of one compile: each stage's name and time, and everything the libraries
printed while it ran (TVM's C++ warnings, onnxruntime's and Python's warnings), captured at the
file-descriptor level (:mod:`edgert.capture`) so the terminal shows only edgert's progress.

A successful compile stores the log in the artifact (member ``build.log``, read by
``edgert inspect --build-log``); a failed one writes it next to the output
(``<output stem>.build.log``) and names that file in the error.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgert.capture import captured
from edgert.errors import CompileError, EdgertError

StageDoneFn = Callable[[str, float], None]


class BuildLog:
    """Stage records of one compile, in order.

    Args:
        on_stage_done: called with (stage name, seconds) as each stage ends successfully.
    """

    def __init__(self, on_stage_done: StageDoneFn | None = None) -> None:
        self._parts: list[str] = []
        self._printed = False          # did any library print something
        self._on_stage_done = on_stage_done

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run the block as stage ``name``: timed, library output captured into the log."""
        start, sink, ok = time.perf_counter(), [], False
        try:
            with captured(sink):
                yield
            ok = True
        finally:
            seconds = time.perf_counter() - start
            text = "".join(sink)
            self._printed = self._printed or bool(text.strip())
            status = "" if ok else ", failed"
            self._parts.append(f"== {name} ({seconds:.2f} s{status})\n"
                               + (text if not text or text.endswith("\n") else text + "\n"))
            if ok and self._on_stage_done is not None:
                self._on_stage_done(name, seconds)

    def text(self) -> str:
        """The log so far (UTF-8 text)."""
        return "".join(self._parts)

    @contextmanager
    def kept_on_failure(self, output: str | os.PathLike) -> Iterator[None]:
        """When the block raises a compile error (or a bug), or libraries printed anything,
        write the log next to ``output`` and name the file in the error: an
        :class:`EdgertError`'s one-line message gets `` (build log: PATH)``, another exception
        a note."""
        try:
            yield
        except Exception as e:
            user_error = isinstance(e, EdgertError) and not isinstance(e, CompileError)
            if user_error and not self._printed:
                raise
            path = self._write_failure(output, e)
            if path is None:
                raise
            if isinstance(e, EdgertError):
                e.args = (f"{e} (build log: {path})",)
            else:
                e.add_note(f"build log: {path}")
            e.build_log = path
            raise

    def _write_failure(self, output: str | os.PathLike, error: BaseException) -> Path | None:
        """Write the log and the error to ``<output stem>.build.log`` (the temporary folder if
        the output's folder does not exist); None if it cannot be written."""
        out = Path(output)
        path = out.with_name(out.stem + ".build.log")
        if not path.parent.is_dir():
            path = Path(tempfile.gettempdir()) / path.name
        try:
            path.write_text(self.text() + f"== error\n{type(error).__name__}: {error}\n",
                            encoding="utf-8")
        except OSError:
            return None
        return path
