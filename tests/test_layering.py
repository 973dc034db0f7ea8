"""The package's layering: no import cycles, a runtime that imports without the compiler, and
units small enough to read (files <= 600 lines, functions <= 80 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"edgert": "edgert", "compiler": "edgert.compiler", "ops": "edgert.ops",
            "targets": "edgert.targets"}
"""Source folder -> the package it installs as (pyproject's package-dir mapping)."""
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
COMPILER_ONLY = ("tvm.relax", "tvm.s_tir", "onnxruntime.quantization", "onnx.reference")
"""Modules a device that only runs artifacts must not need."""


def _sources() -> dict[str, Path]:
    """Module name -> file, for every module of the four source folders."""
    mods = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


def _targets(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> set[str]:
    """The project modules an import statement in ``module`` loads (``from P import x`` loads
    P and, when it is a module, P.x); each name is cut back to the longest known module."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if mods[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def _import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, module-level imports only): module -> project modules it imports.
    Function-level (lazy) imports count for cycles; edges to a module's own parent packages
    (imported implicitly) are left out."""
    mods = _sources()
    every, top = {}, {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        deps, module_level = set(), set()
        for stmt in tree.body:
            for node in ast.walk(stmt):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found = _targets(module, node, mods)
                    deps |= found
                    if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                             ast.ClassDef)):
                        module_level |= found
        every[module] = {d for d in deps if not module.startswith(d + ".")}
        top[module] = module_level
    return every, top


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    """The checker itself: a three-module loop and a self-contained chain."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    every, _ = _import_graph()
    assert len(every) > 50, "the source folders were not found"
    cycles = _cycles(every)
    assert not cycles, "import cycles (lazy imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_runtime_does_not_import_the_compiler_at_module_level():
    _, top = _import_graph()
    runtime = [m for m in top if m == "edgert" or m.startswith("edgert.") and not m.startswith(
        ("edgert.compiler", "edgert.ops", "edgert.targets"))]
    assert "edgert.session" in runtime and "edgert.cli" in runtime
    bad = {m: sorted(d for d in top[m] if d.startswith("edgert.compiler")) for m in runtime}
    assert not {m: d for m, d in bad.items() if d}


def test_import_edgert_loads_no_compiler_module():
    """A fresh interpreter: ``import edgert`` (and the Session class) loads neither TVM's
    compiler nor onnxruntime's quantizer nor ONNX's reference evaluator."""
    code = ("import sys, edgert; edgert.Session; import edgert.session; "
            f"print([m for m in sys.modules if m.startswith({COMPILER_ONLY!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"import edgert loaded {out.stdout.strip()}"


def _oversized() -> list[str]:
    found = []
    for module, path in _sources().items():
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines > MAX_FILE_LINES:
            found.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.name}: {length} lines")
    return found


def test_files_and_functions_are_small():
    """<= 600 lines a file and <= 80 lines a function in compiler/, ops/, edgert/, targets/
    (decorators not counted; tests and benchmarks are not checked)."""
    oversized = _oversized()
    assert not oversized, "too large: " + "; ".join(oversized)


def test_each_compile_stage_has_one_entry_function():
    """``compiler/stages/<stage>.py`` holds one public function (its entry), and the pipeline
    calls each of them."""
    pipeline = (ROOT / "compiler" / "pipeline.py").read_text()
    stages = sorted(p for p in (ROOT / "compiler" / "stages").glob("*.py")
                    if p.name != "__init__.py")
    assert len(stages) >= 7
    for path in stages:
        tree = ast.parse(path.read_text(), str(path))
        public = [n.name for n in tree.body
                  if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        assert len(public) == 1, f"{path.name}: public functions {public}"
        assert f"{public[0]}(" in pipeline, f"the pipeline does not call {public[0]}"
