"""edgert: an on-device edge inference runtime.

``edgert.Session`` runs compiled ``.edgert`` artifacts; the compiler (``edgert.compiler``) is
imported only when asked for, so this package imports quickly on a device. ``edgert.profile``
(:mod:`edgert.profiling`) measures an artifact's latency, per-op time, memory and energy.
"""

from __future__ import annotations

from typing import Any

from edgert.errors import (
    ArtifactError,
    CompileError,
    EdgertError,
    InputError,
    ModelError,
    QuantizationError,
    TargetError,
    UnsupportedOpError,
)
from edgert.threads import reserve_tvm_pool

reserve_tvm_pool()

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "Session",
    "NodeArg",
    "EdgertError",
    "ModelError",
    "UnsupportedOpError",
    "QuantizationError",
    "InputError",
    "ArtifactError",
    "TargetError",
    "CompileError",
    "profile",
    "ProfileResult",
]


def __getattr__(name: str) -> Any:
    if name in ("Session", "NodeArg"):
        from edgert import session

        return getattr(session, name)
    if name in ("profile", "ProfileResult"):
        from edgert.profiling import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgert' has no attribute {name!r}")
