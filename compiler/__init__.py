"""The host-side compiler: export, checks, lowering to TVM, packaging (the stages are listed in
:mod:`edgert.compiler.pipeline`).

Importing this package is cheap; TVM and PyTorch are imported by the functions that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export", "compile_model", "compile_graph", "CompileOptions", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from edgert.compiler.exporter import export

        return export
    if name in ("compile_model", "compile_graph"):
        from edgert.compiler import pipeline

        return getattr(pipeline, name)
    if name == "CompileOptions":
        from edgert.compiler.options import CompileOptions

        return CompileOptions
    if name == "load_model":
        from edgert.compiler.check import load_model

        return load_model
    raise AttributeError(f"module 'edgert.compiler' has no attribute {name!r}")
