"""Build a Relax module's kernels for a CPU target on several threads.

``tvm.compile`` lowers every PrimFunc of a model into one LLVM module and emits its machine code
on one thread; for a CNN that is most of a compile (resnet18 fp32: TIR lowering, LLVM's
optimizer and its code emission took 10 of 13 s of CPU time). Here the Relax pipeline runs as
in ``tvm.compile``, then the PrimFuncs are split into :func:`build_jobs` parts of about equal
size, each part is lowered, optimized and emitted as an object file on a thread of its own (TVM
releases the GIL in its C++ calls, and each build has its own LLVM context), and the objects
are linked together with the VM's bytecode and constants into one shared library, as
``export_library`` links its one object. The VM finds each kernel by its symbol in that
library, so the artifact loads and runs exactly as before.

``EDGERT_BUILD_JOBS`` sets the number of parts (1: one part, built on the calling thread).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

JOBS_ENV = "EDGERT_BUILD_JOBS"
MAX_JOBS = 4


def build_jobs() -> int:
    """Threads a build uses: ``$EDGERT_BUILD_JOBS``, else the usable cores (at most
    :data:`MAX_JOBS`)."""
    try:
        return max(1, int(os.environ[JOBS_ENV]))
    except (KeyError, ValueError):
        return max(1, min(MAX_JOBS, len(os.sched_getaffinity(0))))


def _size(stmt: Any) -> int:
    """Statements in a TIR body: roughly what LLVM spends on a kernel (0.96 correlated with
    the length of its JSON form over resnet18's kernels, at a fifteenth of the cost)."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return 1 + sum(_size(s) for s in stmt.seq)
    if isinstance(stmt, tirx.IfThenElse):
        return 1 + _size(stmt.then_case) + (0 if stmt.else_case is None
                                              else _size(stmt.else_case))
    for attr in ("block", "body"):                 # For, LetStmt, SBlockRealize, SBlock...
        sub = getattr(stmt, attr, None)
        if isinstance(sub, tvm_stmt_types()):
            return 1 + _size(sub)
    return 1


@lru_cache(maxsize=1)
def tvm_stmt_types() -> tuple:
    """TIR statement classes (``s_tir.SBlock`` is not a ``tirx.Stmt`` subclass in 0.27)."""
    from tvm import s_tir, tirx

    return (tirx.Stmt, s_tir.SBlock)


def split_functions(tir_mod: Any, parts: int) -> list[Any]:
    """``tir_mod``'s PrimFuncs in up to ``parts`` IRModules of about equal total size (largest
    first, each to the smallest part so far)."""
    import tvm

    sized = sorted(((_size(func.body), gv.name_hint, gv, func)
                    for gv, func in tir_mod.functions_items()), key=lambda s: (-s[0], s[1]))
    groups: list[list] = [[] for _ in range(min(parts, len(sized)) or 1)]
    loads = [0] * len(groups)
    for size, _name, gv, func in sized:
        i = loads.index(min(loads))
        groups[i].append((gv, func))
        loads[i] += size
    return [tvm.IRModule(dict(group), attrs=tir_mod.attrs) for group in groups if group]


class Built:
    """A Relax VM executable whose kernels are object files already (:func:`compile_cpu`),
    in a temporary folder removed by :meth:`export_library` (or when this is collected)."""

    def __init__(self, tvm_target: Any) -> None:
        self.executable: Any = None
        self.tvm_target = tvm_target
        self.objects = tempfile.TemporaryDirectory(prefix="edgert-objects-")

    def export_library(self, lib_path: str, cc: str | None = None) -> None:
        """Link the executable and its kernels into the shared library ``lib_path`` (with
        ``cc``, default the native compiler), as ``Executable.export_library`` does; once."""
        kwargs = {"cc": cc} if cc else {}
        try:
            self.executable.export_library(
                lib_path, fpack_imports=_pack_imports(self.tvm_target), **kwargs)
        finally:
            self.objects.cleanup()


def compile_cpu(mod: Any, tvm_target: Any, *, relax_pipeline: Any, tir_pipeline: Any,
                jobs: int | None = None) -> Built:
    """What ``tvm.compile(mod, tvm_target, relax_pipeline=..., tir_pipeline=...)`` makes, with
    the kernels built on ``jobs`` threads (default :func:`build_jobs`) into object files."""
    import tvm
    from tvm import relax
    from tvm.relax import vm_build

    with tvm_target:
        mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    tir_mod = vm_build._filter_tir(mod)
    built, libs = Built(tvm_target), []
    if tir_mod is not None:
        parts = split_functions(tir_mod, jobs or build_jobs())
        objects = _build_objects(parts, tvm_target, tir_pipeline, built.objects.name)
        libs = [tvm.runtime.load_static_library(path, names) for path, names in objects]
    built.executable = relax.VMExecutable(vm_build._ffi_api.VMLink(
        builder, tvm_target, libs[0] if libs else None, libs[1:] + ext_libs, params))
    return built


def _build_objects(parts: list[Any], tvm_target: Any, tir_pipeline: Any,
                   folder: str) -> list[tuple[str, list[str]]]:
    """Lower and emit each part as an object file (one thread a part); returns (path, the
    names of its kernels) for each."""
    import tvm

    def build(index: int) -> tuple[str, list[str]]:
        part = parts[index]
        lib = tvm.tirx.build(part, target=tvm_target, pipeline=tir_pipeline)
        path = os.path.join(folder, f"kernels{index}.o")
        lib.write_to_file(path)
        return path, [gv.name_hint for gv in part.get_global_vars()]

    if len(parts) == 1:
        return [build(0)]
    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="edgert-build") as pool:
        return list(pool.map(build, range(len(parts))))


def _pack_imports(tvm_target: Any) -> Callable[..., str]:
    """``export_library``'s ``fpack_imports``: the VM's bytecode and constants as an LLVM
    object for ``tvm_target``'s triple (what ``export_library`` does itself when one of the
    modules is an LLVM module; ours are object files already)."""
    import tvm

    host = tvm_target.host or tvm_target
    triple = str(host.attrs.get("mtriple", "")) or tvm.get_global_func(
        "target.llvm_get_system_triple")()

    def pack(mod: Any, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        path = os.path.join(workspace_dir, f"{prefix}devc.o")
        packed = tvm.runtime._ffi_api.ModulePackImportsToLLVM(
            mod, is_system_lib, json.dumps({"kind": "llvm", "mtriple": triple}), prefix)
        packed.write_to_file(path)
        return path

    return pack
