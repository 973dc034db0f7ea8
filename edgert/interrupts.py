"""SIGINT and SIGTERM for the command line: unwind cleanly, exit 130 / 143.

Python's default SIGTERM ends the process on the spot: no ``finally`` runs, so the temporary
folders of a TVM build and the half-written artifact next to the output stay behind. And a
Ctrl-C that arrives while TVM runs a Python callback inside its C++ code comes back out of TVM
as a TVM error, which the compiler reports as a compile failure (exit 8).

:func:`signals_raise` makes both signals raise (SIGINT :class:`KeyboardInterrupt`, SIGTERM
:class:`Terminated`) and remembers which arrived; :func:`exit_code` then gives ``128 +
signal`` whatever the exception looked like by the time it reached the top, so the CLI exits
130 or 143 also when TVM wrapped the interrupt into an error of its own. Signals that arrive
while the first one unwinds are recorded but do not raise again, so the clean-up in
``finally`` blocks runs to its end.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from edgert.errors import EdgertError

HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


class Terminated(BaseException):
    """SIGTERM arrived (a ``BaseException``, like :class:`KeyboardInterrupt`: no
    ``except Exception`` swallows it)."""


def _raise(signum: int, _frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if not first:
        return                                  # already unwinding: let the clean-up finish
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block (main thread only; elsewhere it does nothing), SIGINT raises
    :class:`KeyboardInterrupt` and SIGTERM :class:`Terminated`; the previous handlers come
    back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def received() -> int | None:
    """The first signal that arrived during the last :func:`signals_raise` block, or None."""
    return _received[0] if _received else None


def exit_code() -> int | None:
    """``128 + signal`` (130 for SIGINT, 143 for SIGTERM) if a signal arrived, else None."""
    signum = received()
    return None if signum is None else 128 + int(signum)


def run_app(app: Callable[[], Any], console: Any) -> None:
    """Run the CLI ``app`` (it ends with SystemExit) inside :func:`signals_raise`: an
    :class:`EdgertError` prints one ``error:`` line on ``console`` (a rich Console on stderr)
    and exits with its code; an interrupt prints ``interrupted`` and exits ``128 + signal``
    (a failed compile's build log, which the error would have named, is removed)."""
    try:
        with signals_raise():
            app()
        return
    except EdgertError as e:
        if exit_code() is None:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        log = getattr(e, "build_log", None)
        if log:
            Path(log).unlink(missing_ok=True)
    except (KeyboardInterrupt, Terminated, SystemExit) as e:
        if exit_code() is None and not isinstance(e, KeyboardInterrupt):
            raise
    console.print("interrupted")
    sys.exit(exit_code() or 130)
