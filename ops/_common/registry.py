"""The edgert ops, found by walking the folders of ``edgert.ops``: nothing else lists them.

Every sub-package of ``edgert.ops`` whose name does not start with ``_`` is an op folder and
sets ``OP`` (an :class:`~edgert.ops._common.op.Op`); ``_``-prefixed sub-packages hold shared helpers
(``_intmath``). Discovery imports each folder's ``__init__`` only, which imports neither numba,
TVM nor onnx.

    registry.get("Shiftmax")   the Op of an op type (KeyError when there is none)
    registry.all()             every Op, sorted by name
    registry.names()           every op type, sorted
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from edgert.ops._common.op import Op

_lock = threading.Lock()
_ops: dict[str, Op] | None = None
_without_op: list[str] = []


def _discover() -> dict[str, Op]:
    global _ops
    with _lock:
        if _ops is None:
            import edgert.ops as package

            found: dict[str, Op] = {}
            missing: list[str] = []
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not info.ispkg or info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{package.__name__}.{info.name}")
                op = getattr(module, "OP", None)
                if not isinstance(op, Op):
                    missing.append(info.name)
                    continue
                if op.name in found:
                    raise RuntimeError(f"edgert op {op.name} is declared by both "
                                       f"{found[op.name].package} and {op.package}")
                found[op.name] = op
            _without_op[:] = missing
            _ops = found
    return _ops


def get(name: str) -> Op:
    """The op whose ``op_type`` (in the edgert domain) is ``name``."""
    ops = _discover()
    if name not in ops:
        raise KeyError(f"no edgert op {name!r}; known: {', '.join(sorted(ops))}")
    return ops[name]


def find(name: str) -> Op | None:
    """Like :func:`get`, ``None`` when there is no such op."""
    return _discover().get(name)


def all() -> list[Op]:  # noqa: A001 (the registry's vocabulary: registry.all())
    """Every op, sorted by name."""
    ops = _discover()
    return [ops[name] for name in sorted(ops)]


def names() -> list[str]:
    """Every op type, sorted."""
    return sorted(_discover())


def folders_without_op() -> list[str]:
    """Op folders (sub-packages without a leading ``_``) that set no ``OP``: a mistake that the
    registry test reports."""
    _discover()
    return list(_without_op)
