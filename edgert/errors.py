"""The error hierarchy of edgert.

Every error a user can cause (a bad model, a bad input, a damaged artifact, a target this
machine cannot run) is an :class:`EdgertError` subclass with its own CLI exit code, so scripts
can tell them apart and the CLI prints one line instead of a traceback.
"""

from __future__ import annotations


class EdgertError(Exception):
    """Base class of all edgert errors meant for the user."""

    exit_code = 1


class ModelError(EdgertError):
    """The model file is missing, unreadable or not a valid ONNX model."""

    exit_code = 3


class UnsupportedOpError(ModelError):
    """The model uses operators edgert cannot compile (all of them are listed at once)."""

    exit_code = 4

    def __init__(self, unsupported: list[tuple[str, str]], source: str = "model") -> None:
        self.unsupported = list(unsupported)
        kinds = sorted({op for op, _ in self.unsupported})
        nodes = ", ".join(f"{name} ({op})" for op, name in self.unsupported)
        super().__init__(
            f"{source}: {len(self.unsupported)} node(s) use unsupported operators "
            f"{', '.join(kinds)}: {nodes}"
        )


class UnsupportedOpsetError(UnsupportedOpError):
    """The model's default-domain opset is outside the range edgert compiles (same exit code
    as an unsupported operator: the model must be converted or re-exported)."""

    def __init__(self, message: str) -> None:
        self.unsupported = []
        ModelError.__init__(self, message)


class QuantizationError(ModelError):
    """A model cannot be made integer-only: a node without an integer form, a range check
    that no scale choice can satisfy, or missing calibration data."""

    exit_code = 9


class InputError(EdgertError):
    """An input given to a session (or on the command line) does not match the model."""

    exit_code = 5


class ArtifactError(EdgertError):
    """A ``.edgert`` artifact is damaged, of an unknown format version, or incomplete."""

    exit_code = 6


class TargetError(EdgertError):
    """An unknown target, a missing toolchain, or an artifact this machine cannot run."""

    exit_code = 7


class CompileError(EdgertError):
    """The compiler failed on a model that passed the checks (a bug or an unsupported case)."""

    exit_code = 8


def last_line(error: BaseException, limit: int = 400) -> str:
    """The last non-empty line of a (TVM) exception's message, at most ``limit`` characters:
    TVM puts the reason last, after a traceback of its own."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "EdgertError",
    "ModelError",
    "UnsupportedOpError",
    "UnsupportedOpsetError",
    "QuantizationError",
    "InputError",
    "ArtifactError",
    "TargetError",
    "CompileError",
]
