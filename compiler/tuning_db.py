"""Reading a tuning database and applying its records to a compile.

``edgert tune`` (:mod:`edgert.compiler.tune`) writes one folder per target and one per kernel,
named by the structural hash of the kernel (:func:`kernel_key`)::

    <db>/<target>/<hash>/database_workload.json        MetaSchedule JSONDatabase
    <db>/<target>/<hash>/database_tuning_record.json
    <db>/<target>/<hash>/edgert-kernel.json            name, shape, FLOPs, trials, ms

A compile with a database (:func:`tuned_cpu_pipeline`) looks every kernel up in
``<db>/<target>/`` after fusion and, where the tuned schedule measured faster than the default
one, replaces the kernel by it (marked ``tirx.is_scheduled``, so our default CPU schedules skip
it); all other kernels build as without a database.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

from edgert.targets import Target

KERNEL_META = "edgert-kernel.json"


def target_db_dir(db_root: str | os.PathLike, target: Target) -> Path:
    """The folder holding ``target``'s records inside a tuning database."""
    return Path(db_root) / target.name


def kernel_key(mod: Any) -> str:
    """A kernel's database key: the structural hash of its normalized module, 16 hex digits."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def normalize(func: Any) -> Any:
    """A PrimFunc as MetaSchedule keys it: an IRModule {"main": func}, normalized."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def buffer_params(func: Any) -> list | None:
    """The PrimFunc's parameters if all are buffers (TVM 0.27: buffer-typed Vars), else None."""
    params = list(func.params)
    if not all(type(p.ty).__name__ == "BufferType" for p in params):
        return None
    return params


def is_static(func: Any) -> bool:
    from tvm import tirx

    params = buffer_params(func)
    return params is not None and all(isinstance(d, tirx.IntImm)
                                      for p in params for d in p.shape)


def read_meta(kernel_dir: Path) -> dict:
    """A kernel folder's edgert-kernel.json ({} when missing or damaged)."""
    try:
        return json.loads((kernel_dir / KERNEL_META).read_text())
    except (OSError, ValueError):
        return {}


def light_tensor_intrin(target: Any) -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` (done by MetaSchedule's ``TuneContext``) cheap:
    register the package without running its ``__init__`` (which loads the CUDA, ROCm,
    Hexagon... intrinsics, ~50 s on 2 cores) and load only this CPU's intrinsics."""
    import importlib

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
        pkg.__package__ = name
        sys.modules[name] = pkg
    mtriple = str(target.attrs.get("mtriple", ""))
    arch = "arm_cpu" if mtriple.startswith("aarch64") else "x86"
    try:     # each target's own (a process may tune an rpi5 and then an x86 model)
        importlib.import_module(f"{name}.{arch}")
    except Exception:   # noqa: BLE001 - missing intrinsics only shrink the search space
        pass


def apply_tuning_db(mod: Any, db_dir: Path, tvm_target: Any,
                    applied: list[str] | None = None) -> Any:
    """Replace each PrimFunc of a fused Relax module that ``db_dir`` (one target's folder)
    has a faster-than-default record for by its tuned schedule (``tirx.is_scheduled``);
    the module is updated in place and returned."""
    from tvm import tirx
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    if not db_dir.is_dir():
        return mod
    light_tensor_intrin(tvm_target)
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or \
                (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
            continue
        if not is_static(func):
            continue
        norm = normalize(func)
        folder = db_dir / kernel_key(norm)
        meta = read_meta(folder)
        if not meta or meta.get("tuned_ms") is None:
            continue
        if meta.get("default_ms") is not None and meta["tuned_ms"] >= meta["default_ms"]:
            continue        # the default schedule measured as fast: keep it
        database = JSONDatabase(work_dir=str(folder), allow_missing=False)
        sch = database.query_schedule(norm, tvm_target, gv.name_hint)
        if sch is None:
            continue
        new = sch.mod["main"].without_attr("global_symbol")
        attrs = dict(func.attrs) if func.attrs is not None else {}
        new = new.with_attrs({**attrs, "tirx.is_scheduled": True}) if attrs else \
            new.with_attr("tirx.is_scheduled", True)
        updates[gv] = new
        if applied is not None:
            applied.append(gv.name_hint)
    for gv, new in updates.items():
        mod[gv] = new
    return mod


def tuned_cpu_pipeline(tvm_target: Any, db_dir: Path, applied: list[str] | None = None) -> Any:
    """:func:`edgert.compiler.schedule_cpu.cpu_pipeline` with the tuning records of
    ``db_dir`` applied after fusion, before our default CPU schedules."""
    from edgert.compiler.schedule_cpu import cpu_pipeline

    return cpu_pipeline(tvm_target,
                        after_fusion=lambda mod: apply_tuning_db(mod, db_dir, tvm_target, applied))
