"""``edgert profile``: where an artifact's time, memory and energy go.

The measuring core (:mod:`.stats`, :mod:`.inputs`, :mod:`.ops`,
:mod:`.bandwidth`, :mod:`.memory`, :mod:`.llm`, :mod:`.machine`, :mod:`.api`) and the report
writers :mod:`.report_json`, :mod:`.report_html` (plots by :mod:`.svg`), :mod:`.report_text`
and :mod:`.trace` need only numpy and edgert's runtime, so a board with numpy alone runs them;
onnx, onnxruntime and rich are imported inside the functions that use them (the text report
falls back to plain text without rich). :mod:`.command` is the ``edgert profile`` command.

    from edgert.profiling import profile
    result = profile("model.edgert", runs=100)
    print(result.latency_ms["p50"])
"""

from __future__ import annotations

from typing import Any

__all__ = ["profile", "ProfileResult", "SCHEMA"]


def __getattr__(name: str) -> Any:
    if name in ("profile", "ProfileResult"):
        from edgert.profiling import api

        return getattr(api, name)
    if name == "SCHEMA":
        from edgert.profiling.report_json import SCHEMA

        return SCHEMA
    raise AttributeError(f"module 'edgert.profiling' has no attribute {name!r}")
