"""The ``edgert.profile/1`` JSON report. Its JSON Schema is ``edgert/data/profile.schema.json``
(docs/profiling.md explains each field). Adding optional fields keeps the version; renaming or
removing one, or changing a unit, makes ``edgert.profile/2``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA = "edgert.profile/1"
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "data" / "profile.schema.json"
"""The JSON Schema (draft 2020-12) of :data:`SCHEMA` reports, shipped with the package."""


def to_json(result: Any) -> dict[str, Any]:
    """``{"schema", "machine", "settings", "results": [...]}`` of a
    :class:`edgert.profiling.api.ProfileResult`."""
    return {"schema": SCHEMA, "machine": result.machine, "settings": result.settings,
            "results": [r.to_json() for r in result.results]}


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write a report, atomically (2-space indented)."""
    from edgert.fileio import atomic_path

    text = dumps(report)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")


def dumps(report: dict[str, Any]) -> str:
    """The report as JSON text (NaN and infinities become null)."""
    return json.dumps(_finite(report), indent=2, allow_nan=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """A copy with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
