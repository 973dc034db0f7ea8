"""Which of edgert's own modules a board bundle carries, and the check that they import nothing
the board lacks.

The board has Python, numpy and the bundle: edgert's runtime (``Session``, the TVM backend,
the board CLI, the profiler core), TVM's runtime files and the artifacts. Modules that import
onnx, onnxruntime, typer/rich or the compiler at their top level stay out (``cli``,
``model_info``, ``onnx_graph``, ``demo``, ``peers``, ``capture``, ``backends.reference``,
``backends.rpc``, ``edgert.compiler``, ``edgert.models``); :func:`top_level_imports` lets the
tests prove it for the kept ones. The numba backend (``--backend numba``) adds the graph
interpreter, ``edgert.ops`` and ``onnx_graph``: it needs numba and onnx on the board.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOTS = ("edgert", "edgert.session", "edgert.board_cli", "edgert.backends",
         "edgert.backends.tvm_vm", "edgert.targets", "edgert.timing", "edgert.profiling",
         "edgert.profiling.api")
"""Where the module walk starts (``pkg.*``: every module of a package, when it exists); every
``edgert`` module these import, at module level or inside a function, comes along unless it is
:data:`LEFT_OUT`."""
LEFT_OUT = ("edgert.compiler", "edgert.ops", "edgert.models", "edgert.bundle", "edgert.cli",
            "edgert.__main__", "edgert.model_info", "edgert.onnx_graph", "edgert.demo",
            "edgert.peers", "edgert.capture", "edgert.backends.reference",
            "edgert.backends.rpc", "edgert.backends.numba*", "edgert.targets.qemu*",
            "edgert.targets.isa", "edgert.profiling.command")
"""Modules (with their submodules; ``*``: every name with that prefix) a bundle never
carries: compiler code, top-level imports of onnx/onnxruntime/typer/rich/torch, host tools."""
NUMBA_ROOTS = ("edgert.backends.numba_backend", "edgert.onnx_graph", "edgert.ops.**")
"""Added by ``--backend numba`` (numba and onnx on the board)."""
NUMBA_KEPT = ("edgert.ops", "edgert.onnx_graph", "edgert.backends.numba*")
"""The :data:`LEFT_OUT` entries a ``--backend numba`` bundle carries after all."""
LOWBIT_ROOTS = ("edgert.ops.lut_matmul",)
"""Added when an artifact has low-bit (``LutMatMul``) weights: the load-time layout check
(:mod:`edgert.layouts`) reads them with onnx, which the board then needs too."""
LOWBIT_KEPT = ("edgert.ops",)
BOARD_ONLY_DEPS = frozenset({"numpy", "tvm", "tvm_ffi", "edgert"})
"""Top-level packages a tvm bundle's modules may import at module level (besides the standard
library)."""
NUMBA_DEPS = frozenset({"numba", "onnx"})
DATA_FILES = ("data/profile.schema.json", "data/energy_45nm.toml")
"""Package data the profiler core reads (the report's JSON Schema, the energy table), carried
when present."""
BOARD_MAIN = "board_main.py"
"""This package's file that becomes the bundle's ``edgert/__main__.py``."""
RUNTIME_ONLY_STANZA = '''

# Added by `edgert bundle`: this copy runs compiled artifacts with TVM's runtime only (the
# compiler library is not in the bundle), see docs/deploy.md.
import os as _os  # noqa: E402

_os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
'''


def source_files(*, numba: bool = False, lowbit: bool = False) -> dict[str, Path]:
    """Bundle path (``edgert/session.py``...) -> source file for the modules a bundle carries:
    the :data:`ROOTS` and every edgert module they import, transitively, minus
    :data:`LEFT_OUT` (for ``numba``: plus :data:`NUMBA_ROOTS`; for ``lowbit``: plus
    :data:`LOWBIT_ROOTS`)."""
    roots = ROOTS + (NUMBA_ROOTS if numba else ()) + (LOWBIT_ROOTS if lowbit else ())
    kept = (NUMBA_KEPT if numba else ()) + (LOWBIT_KEPT if lowbit else ())
    left_out = tuple(m for m in LEFT_OUT if m not in kept)
    todo = [m for r in roots for m in _expand(r)]
    files: dict[str, Path] = {}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or _left_out(name, left_out):
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files[_bundle_path(name, path)] = path
        parent = name.rpartition(".")[0]
        todo.extend([parent] if parent else [])
        todo.extend(edgert_imports(path, name))
    return dict(sorted(files.items()))


def edgert_imports(path: Path, name: str) -> list[str]:
    """The ``edgert`` modules ``path`` (module ``name``) imports anywhere in its code, with
    ``from edgert.x import y`` giving ``edgert.x.y`` too when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "edgert"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "edgert":
                continue
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names
                      if _module_file(f"{base}.{a.name}") is not None]
    return found


def _expand(root: str) -> list[str]:
    """``pkg.*`` -> the package and its modules; ``pkg.**`` -> recursively; else ``root``."""
    if not root.endswith("*"):
        return [root]
    pkg = root.rstrip("*").rstrip(".")
    folder = _subpackage_dir(pkg)
    if folder is None:
        return []
    names = []
    for path in sorted(folder.rglob("*.py") if root.endswith("**") else folder.glob("*.py")):
        rel = path.relative_to(folder).with_suffix("").parts
        if rel[-1] == "__init__":
            rel = rel[:-1]
        names.append(".".join((pkg, *rel)))
    return names


def _left_out(name: str, left_out: tuple[str, ...]) -> bool:
    return any(name.startswith(m[:-1]) if m.endswith("*") else
               (name == m or name.startswith(m + ".")) for m in left_out)


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` without importing it (parents are imported)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _bundle_path(name: str, path: Path) -> str:
    parts = name.split(".")
    if path.name == "__init__.py":
        parts.append("__init__")
    return "/".join(parts) + ".py"


def copy_edgert(dest: Path, *, numba: bool = False, lowbit: bool = False) -> int:
    """Copy edgert's runtime modules (:func:`source_files`) to ``dest/edgert`` (``dest`` is the
    bundle folder) with the board's ``__main__.py``; returns the bytes written."""
    total = 0
    for rel, src in source_files(numba=numba, lowbit=lowbit).items():
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        total += out.stat().st_size
    root = _subpackage_dir("edgert")
    for rel in DATA_FILES:
        if root is not None and (root / rel).is_file():
            out = dest / "edgert" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, out)
            total += out.stat().st_size
    init = dest / "edgert" / "__init__.py"
    with open(init, "a", encoding="utf-8") as f:
        f.write(RUNTIME_ONLY_STANZA)
    main = dest / "edgert" / "__main__.py"
    shutil.copyfile(Path(__file__).with_name(BOARD_MAIN), main)
    return total + len(RUNTIME_ONLY_STANZA) + main.stat().st_size


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names a module imports at module level (not inside functions, not
    under ``if TYPE_CHECKING``): ``{"numpy", "edgert", "os"...}``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                names.update(a.name.split(".")[0] for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                names.add(sub.module.split(".")[0])
    return names


def _subpackage_dir(name: str) -> Path | None:
    """The folder of package ``name`` (the package-dir mapping puts ``edgert.targets`` in
    ``targets/`` and ``edgert.ops`` in ``ops/``), found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
