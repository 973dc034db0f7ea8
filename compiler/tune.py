"""``edgert tune``: search faster schedules for a model's hot kernels and keep them for compiles.

How it works:

1. The model is imported and lowered exactly as :func:`edgert.compiler.lower.build_library`
   does for a CPU target, up to the point where TVM's PrimFuncs are final but not yet scheduled:
   our integer-matmul kernels first (``tirx.is_scheduled``, left alone), then TVM's CPU library
   dispatch, ``LegalizeOps`` and operator fusion (:func:`prepare_kernels`).
2. Every static-shape PrimFunc not already scheduled is a candidate kernel; candidates are
   ranked by FLOPs x calls and the top ones (``top``, above 1 % of the model's FLOPs) are tuned.
3. Each kernel is timed with its default schedule (what a compile without a database builds:
   :func:`edgert.compiler.schedule_cpu.cpu_schedule_pass` or TVM's unscheduled loops), then
   tuned with MetaSchedule (TVM's default CPU search space, evolutionary or random search,
   random cost model since xgboost is not a dependency), measured on this machine. Candidates
   are built in this process (TVM's ``LocalBuilder`` starts fresh worker processes for every
   batch, and its default build function imports ``tvm.s_tir.tensor_intrin``, ~50 s, mostly
   CUDA intrinsics) and run in a ``LocalRunner`` worker.
4. Records go to a database directory, one folder per target and one per kernel, named by the
   structural hash of the kernel (its computation and shapes)::

       <db>/<target>/<hash>/database_workload.json        MetaSchedule JSONDatabase
       <db>/<target>/<hash>/database_tuning_record.json
       <db>/<target>/<hash>/edgert-kernel.json            name, shape, FLOPs, trials, default/best ms

   A kernel is tuned in a temporary copy of its folder that replaces it file by file when done
   (the workload file never changes, so a crash leaves a consistent folder); a rerun skips
   kernels that already have the asked trials and continues the others from their records.
   The default ``<db>`` is ``$EDGERT_CACHE/tuning`` (``~/.cache/edgert/tuning``).
5. ``edgert compile --tuning-db DB`` (:func:`tuned_cpu_pipeline`) looks every kernel up in
   ``DB/<target>/`` after fusion and, where the tuned schedule measured faster than the default
   one, replaces the kernel by it (marked ``tirx.is_scheduled``, so our default CPU schedules
   skip it); all other kernels build as without a database. Without ``--tuning-db`` a compile
   uses the records shipped inside the package (:func:`shipped_db_root`, a copy of a
   ``DB/<target>/`` folder; ``--tuning-db none``: none), never the cache on its own, so a
   compile does not depend on what was tuned on the machine before.

A board is tuned from here through its TVM RPC server (``rpc="HOST:PORT"``, ``edgert tune
--target rpi5 --rpc HOST:PORT``): candidates are built (cross-compiled) in this process and
MetaSchedule's ``RPCRunner`` uploads each library to the server and times it there (directly,
without a tracker: :func:`connect_server`). Without ``rpc`` only CPU targets this machine can
run are tuned. Only kernels with static shapes are tuned (a symbolic batch axis is skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgert.errors import CompileError, InputError, TargetError, last_line
from edgert.fileio import atomic_path
from edgert.targets import Target, can_run_here, get_target

CACHE_ENV = "EDGERT_CACHE"
KERNEL_META = "edgert-kernel.json"
DEFAULT_TRIALS = 64
DEFAULT_TOP = 10
MIN_FLOP_SHARE = 0.01
"""Kernels with less than this share of the model's FLOPs are not worth tuning."""
SEARCHES = ("evolutionary", "random")
_STRATEGY = {"evolutionary": "evolutionary", "random": "replay-trace"}
_EVALUATOR = {"number": 10, "repeat": 3, "min_repeat_ms": 20}


def default_db_root() -> Path:
    """``$EDGERT_CACHE/tuning`` if ``EDGERT_CACHE`` is set, else ``~/.cache/edgert/tuning``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env) if env else Path.home() / ".cache" / "edgert") / "tuning"


def target_db_dir(db_root: str | os.PathLike, target: Target) -> Path:
    """The folder holding ``target``'s records inside a tuning database."""
    return Path(db_root) / target.name


SHIPPED = "shipped"
"""``tuning_db`` value: the records that come with edgert for the target (the default)."""
NO_DB = "none"
"""``tuning_db`` value: no records, every kernel on its default schedule."""


def shipped_db_root() -> Path:
    """The tuning database inside the edgert package (``edgert/data/tuning``): the same layout
    as one ``edgert tune`` writes; a target's folder is copied there to ship its records."""
    from importlib import resources

    return Path(str(resources.files("edgert"))) / "data" / "tuning"


def resolve_tuning_db(tuning_db: str | os.PathLike | None, target: Target) -> Path | None:
    """The database a compile for ``target`` uses: ``"shipped"`` (or ``None``) is edgert's own
    records when it ships some for the target (else no database), ``"none"`` is no database,
    anything else a folder written by ``edgert tune`` (:class:`InputError` when missing)."""
    if tuning_db is None or str(tuning_db) == SHIPPED:
        root = shipped_db_root()
        return root if any(target_db_dir(root, target).glob(f"*/{KERNEL_META}")) else None
    if str(tuning_db) == NO_DB:
        return None
    if not Path(tuning_db).is_dir():
        raise InputError(f"--tuning-db {tuning_db}: no such directory (or use "
                         f"'{SHIPPED}' or '{NO_DB}')")
    return Path(tuning_db)


@dataclass
class Kernel:
    """A tunable PrimFunc of the model: its name in the module, workload hash, FLOPs per call,
    calls per model run, and a short signature (``float32[64, 64] x ... -> ...``)."""

    name: str
    key: str
    flops: float
    calls: int
    signature: str
    mod: Any = field(repr=False, default=None)   # IRModule {"main": PrimFunc}, normalized


@dataclass
class KernelResult:
    """What ``tune`` did for one kernel (``status``: tuned, cached, budget, skipped: why)."""

    name: str
    key: str
    signature: str
    flops: float
    calls: int
    status: str
    trials: int = 0           # measured trials in the database for this kernel
    new_trials: int = 0       # measured in this run
    default_ms: float | None = None
    tuned_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.default_ms and self.tuned_ms:
            return self.default_ms / self.tuned_ms
        return None


@dataclass
class TuneReport:
    target: str
    db_dir: str
    kernels: list[KernelResult]
    budget_hit: bool
    seconds: float
    measured_on: str = "local"
    """``local`` (this machine) or ``rpc HOST:PORT`` (a board's TVM RPC server)."""

    def to_json(self) -> dict:
        return {"target": self.target, "db_dir": self.db_dir, "budget_hit": self.budget_hit,
                "seconds": round(self.seconds, 1), "measured_on": self.measured_on,
                "kernels": [asdict(k) | {"speedup": k.speedup} for k in self.kernels]}


ProgressFn = Callable[[str, int, int, float | None], None]
"""``on_progress(kernel, trials done, trials asked, best ms so far)``."""


# ------------------------------------------------------------------ kernels of a model

def prepare_kernels(mod: Any, target: Target, tvm_target: Any) -> Any:
    """The Relax module as :func:`build_library`'s CPU pipeline sees it right before our
    schedule pass: integer matmul kernels, library dispatch, legalization, fusion."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from edgert.compiler import lower

    mod = lower._schedule_for_cpu(mod, target, tvm_target)
    with tvm_target:
        return tvm.transform.Sequential(cpu_generic.library_dispatch_passes(tvm_target)
                                        + cpu_generic.legalize_passes(tvm_target))(mod)


def kernel_key(mod: Any) -> str:
    """A kernel's database key: the structural hash of its normalized module, 16 hex digits."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _normalize(func: Any) -> Any:
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def _buffer_params(func: Any) -> list | None:
    """The PrimFunc's parameters if all are buffers (TVM 0.27: buffer-typed Vars), else None."""
    params = list(func.params)
    if not all(type(p.ty).__name__ == "BufferType" for p in params):
        return None
    return params


def _is_static(func: Any) -> bool:
    from tvm import tirx

    params = _buffer_params(func)
    return params is not None and all(isinstance(d, tirx.IntImm)
                                      for p in params for d in p.shape)


def _signature(func: Any) -> str:
    """``float32 64x64, 64x64, 64 -> 64x64`` (inputs -> output; dtype given once if shared)."""
    def dim(d: Any) -> str:
        return str(d.value) if hasattr(d, "value") else str(d)

    params = _buffer_params(func) or []
    dtypes = {str(p.dtype) for p in params}
    shapes = [("x".join(dim(d) for d in p.shape) or "scalar")
              + ("" if len(dtypes) == 1 else f" {p.dtype}") for p in params]
    text = ", ".join(shapes[:-1]) + " -> " + shapes[-1] if len(shapes) > 1 else "".join(shapes)
    return f"{dtypes.pop()} {text}" if len(dtypes) == 1 else text


def model_kernels(mod: Any) -> tuple[list[Kernel], dict[str, str]]:
    """The candidate kernels of a prepared module (largest FLOPs x calls first) and the
    PrimFuncs that are not candidates, name -> why."""
    from tvm import relax, tirx
    from tvm.s_tir.analysis import estimate_tir_flops

    calls: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            gv = expr.args[0]
            calls[gv.name_hint] = calls.get(gv.name_hint, 0) + 1

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    kernels, skipped = [], {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            skipped[name] = "hand kernel (already scheduled)"
            continue
        if not _is_static(func):
            skipped[name] = "symbolic shape (only static-shape kernels are tuned)"
            continue
        norm = _normalize(func)
        try:
            flops = float(estimate_tir_flops(norm))
        except Exception:   # noqa: BLE001 - an unusual PrimFunc the estimator rejects
            flops = 0.0
        kernels.append(Kernel(name, kernel_key(norm), flops, calls.get(name, 1),
                              _signature(func), norm))
    kernels.sort(key=lambda k: (-k.flops * k.calls, k.name))
    return kernels, skipped


# ------------------------------------------------------------------ tuning

def tune_model(model_path: str | os.PathLike, *, target: str = "host", trials: int = DEFAULT_TRIALS,
               budget_minutes: float | None = None, db: str | os.PathLike | None = None,
               top: int = DEFAULT_TOP, threads: int | None = None, search: str = "evolutionary",
               trials_per_batch: int = 16, seed: int | None = None, rpc: str | None = None,
               on_stage: Callable[[str], None] | None = None,
               on_progress: ProgressFn | None = None) -> TuneReport:
    """Tune the hottest kernels of an ONNX model (fp32 graph as given) for ``target``.

    Args:
        model_path: the ONNX model.
        target: a CPU target this machine can run (``host`` = this machine), or, with
            ``rpc``, the board's target (``rpi5``).
        trials: measured schedules per kernel (kernels that already have as many are skipped;
            fewer: tuning continues from their records).
        budget_minutes: stop tuning (cleanly, records kept) once this much time has passed.
        db: the tuning database folder (default :func:`default_db_root`); records go to
            ``db/<target>/``.
        top: tune at most this many kernels, largest FLOPs x calls first.
        threads: the ``num-cores`` kernels are tuned for (default: physical cores).
        search: ``evolutionary`` (MetaSchedule's evolutionary search around the best
            records) or ``random`` (independent random samples of the space: cheaper per trial).
        trials_per_batch: schedules built and measured per round (the budget is checked
            between rounds).
        rpc: ``HOST:PORT`` of a board's TVM RPC server (``python -m tvm.exec.rpc_server``):
            candidates are cross-compiled here and measured there.
        on_stage, on_progress: progress callbacks for the CLI.

    Returns:
        A :class:`TuneReport`.
    """
    import tvm

    from edgert.compiler.check import load_model, require_supported
    from edgert.compiler.lower import supported_ops, to_relax
    from edgert.threads import physical_cores

    if trials < 1:
        raise InputError(f"--trials must be at least 1, got {trials}")
    if search not in SEARCHES:
        raise InputError(f"--search must be one of {', '.join(SEARCHES)}, got {search!r}")
    tgt = _tunable_target(target, rpc)
    start = time.monotonic()
    deadline = None if budget_minutes is None else start + 60.0 * budget_minutes
    stage = on_stage or (lambda _s: None)
    db_dir = target_db_dir(db if db is not None else default_db_root(), tgt)
    source = str(model_path)

    stage("checking the model")
    model = load_model(model_path)
    require_supported(model, supported_ops(), source=source)
    stage("importing into TVM")
    tvm_target = tvm.target.Target(tgt.tvm_target_dict(num_cores=threads or physical_cores()))
    mod = prepare_kernels(to_relax(model, source=source), tgt, tvm_target)
    kernels, _skipped = model_kernels(mod)
    total_flops = sum(k.flops * k.calls for k in kernels) or 1.0
    results: list[KernelResult] = []
    chosen = []
    for k in kernels:
        if len(chosen) >= top:
            status = f"skipped: not in the top {top}"
        elif k.flops * k.calls < MIN_FLOP_SHARE * total_flops:
            status = f"skipped: under {MIN_FLOP_SHARE:.0%} of the model's FLOPs"
        else:
            chosen.append(k)
            continue
        results.append(KernelResult(k.name, k.key, k.signature, k.flops, k.calls, status))

    budget_hit = False
    tuner = None
    tuned_results = []
    try:
        for k in chosen:
            meta = _read_meta(db_dir / k.key)
            done = int(meta.get("trials", 0))
            complete = int(meta.get("complete_for", 0))
            res = KernelResult(k.name, k.key, k.signature, k.flops, k.calls, "cached", done,
                               0, meta.get("default_ms"), meta.get("tuned_ms"))
            tuned_results.append(res)
            if max(done, complete) >= trials:
                if on_progress:
                    on_progress(k.name, trials, trials, res.tuned_ms)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                res.status, budget_hit = "budget", True
                continue
            if tuner is None:
                from edgert.compiler.lower import linker_for

                stage("starting the measurement worker")
                tuner = _Tuner(tvm_target, search=search, seed=seed, rpc=rpc,
                               cross_cc=linker_for(tgt))
            stage(f"tuning {k.name}")
            res.status = "tuned"
            finished = tuner.tune(k, db_dir, asked=trials, already=done, meta=meta,
                                  per_batch=trials_per_batch, deadline=deadline, result=res,
                                  on_progress=on_progress)
            if not finished:
                res.status, budget_hit = "budget", True
    finally:
        if tuner is not None:
            tuner.close()
    return TuneReport(tgt.name, str(db_dir), tuned_results + results, budget_hit,
                      time.monotonic() - start, measured_on(rpc))


def measured_on(rpc: str | None) -> str:
    """Where timings come from: ``local`` (this machine) or ``rpc HOST:PORT`` (a board)."""
    return "local" if rpc is None else f"rpc {rpc}"


def _tunable_target(name: str, rpc: str | None) -> Target:
    tgt = get_target(name)
    if tgt.cuda_arch:
        raise TargetError(f"tuning is available for CPU targets only; {tgt.name} is a GPU target")
    if rpc is not None:
        from edgert.backends.rpc import parse_address
        from edgert.compiler.lower import linker_for

        parse_address(rpc)                  # InputError when malformed
        linker_for(tgt)                     # TargetError when the cross compiler is missing
        return tgt
    ok, why = can_run_here(tgt)
    if not ok:
        raise TargetError(f"tuning measures kernels on the target, and {tgt.name} cannot run "
                          f"here: {why}; measure on the board through its TVM RPC server "
                          f"with --rpc HOST:PORT")
    return tgt


def _read_meta(kernel_dir: Path) -> dict:
    try:
        return json.loads((kernel_dir / KERNEL_META).read_text())
    except (OSError, ValueError):
        return {}


def _light_tensor_intrin(target: Any) -> None:
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


def build_kernel(mod: Any, target: Any, _params: Any = None) -> Any:
    """MetaSchedule build function: ``default_build`` without the tensor-intrinsic import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_kernel(rt_mod: Any, cross_cc: str | None) -> str:
    """Write a built candidate as a shared library in a fresh temporary folder (with the
    target's cross compiler when it has one); returns its path."""
    path = os.path.join(tempfile.mkdtemp(prefix="edgert-tune-"), "tvm_tmp_mod.so")
    if cross_cc:
        rt_mod.export_library(path, cc=cross_cc)
    else:
        rt_mod.export_library(path)
    return path


def _make_builder(cross_cc: str | None = None) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds candidates one after the other in this process."""

        def build(self, build_inputs: list) -> list:
            results = []
            for inp in build_inputs:
                try:
                    path = export_kernel(build_kernel(inp.mod, inp.target, None), cross_cc)
                    results.append(BuilderResult(path, None))
                except Exception as e:   # noqa: BLE001 - a candidate that fails to build
                    results.append(BuilderResult(None, f"build failed: {e}"[-2000:]))
            return results

    return InProcessBuilder()


def _make_callback(on_batch: Callable[[Any, int, list], None]) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, _candidates: list,
                  _builder_results: list, runner_results: list) -> None:
            on_batch(task_scheduler, task_id, [_mean_secs(r.run_secs) for r in runner_results])

    return Progress()


def _mean_secs(run_secs: Any) -> float | None:
    if not run_secs:
        return None
    values = [float(s) for s in run_secs]
    mean = sum(values) / len(values)
    return mean if mean < 1e9 else None    # MetaSchedule marks failed runs with 1e10


def connect_server(rpc_config: Any) -> Any:
    """MetaSchedule ``f_create_session`` for a board's own RPC server (no tracker): the
    server's host and port travel in ``RPCConfig``'s tracker fields."""
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, int(rpc_config.tracker_port),
                       session_timeout=rpc_config.session_timeout_sec)


def alloc_arguments(_session: Any, device: Any, args_info: list, alloc_repeat: int) -> list:
    """MetaSchedule ``f_alloc_argument`` for a runtime-only board: random inputs made here
    and copied to the board (TVM's default asks the server for
    ``tvm.contrib.random.random_fill_for_measure``, which a runtime-only TVM lacks)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeats = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise ValueError(f"cannot allocate a {kind} argument")
            if np.dtype(dtype).kind == "f":
                value = rng.standard_normal(shape).astype(dtype)
            else:
                value = rng.integers(-8, 8, shape).astype(dtype)
            args.append(tvm.runtime.tensor(value, device))
        repeats.append(args)
    return repeats


class _Tuner:
    """One measurement worker (LocalRunner, or an RPCRunner talking to a board's server) and
    builder for a tuning session."""

    def __init__(self, tvm_target: Any, *, search: str, seed: int | None,
                 rpc: str | None = None, cross_cc: str | None = None) -> None:
        from tvm.s_tir.meta_schedule.runner import (
            EvaluatorConfig,
            LocalRunner,
            RPCConfig,
            RPCRunner,
        )

        _light_tensor_intrin(tvm_target)
        self.target = tvm_target
        self.search = search
        self.seed = seed
        self.measured_on = measured_on(rpc)
        self.builder = _make_builder(cross_cc)
        evaluator = EvaluatorConfig(**_EVALUATOR)
        if rpc is None:
            self.runner = LocalRunner(timeout_sec=60, evaluator_config=evaluator)
        else:
            from edgert.backends.rpc import connect, parse_address

            # a clear error now if unreachable (the session closes at once: the server
            # serves one at a time)
            connect(rpc)
            host, port = parse_address(rpc)
            self.runner = RPCRunner(
                RPCConfig(tracker_host=host, tracker_port=port, tracker_key="edgert",
                          session_timeout_sec=120),
                evaluator, f_create_session=connect_server, f_alloc_argument=alloc_arguments,
                max_workers=1)

    def close(self) -> None:
        pool = getattr(self.runner, "pool", None)
        if pool is not None:
            try:
                pool.shutdown()
            except Exception:   # noqa: BLE001 - best effort at exit
                pass

    def measure_default(self, kernel: Kernel) -> float | None:
        """Milliseconds of the kernel as a compile without a database builds it."""
        from tvm.s_tir.meta_schedule.arg_info import ArgInfo
        from tvm.s_tir.meta_schedule.builder import BuilderInput
        from tvm.s_tir.meta_schedule.runner import RunnerInput

        from edgert.compiler.schedule_cpu import cpu_schedule_pass

        with self.target:
            mod = cpu_schedule_pass(self.target)(kernel.mod)
        (built,) = self.builder.build([BuilderInput(mod, self.target)])
        if built.error_msg:
            return None
        try:
            (future,) = self.runner.run([RunnerInput(built.artifact_path, "cpu",
                                                     ArgInfo.from_prim_func(mod["main"]))])
            secs = _mean_secs(future.result().run_secs)
        finally:
            shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
        return None if secs is None else 1e3 * secs

    def tune(self, kernel: Kernel, db_dir: Path, *, asked: int, already: int, meta: dict,
             per_batch: int, deadline: float | None, result: KernelResult,
             on_progress: ProgressFn | None) -> bool:
        """Tune ``kernel`` up to ``asked`` trials in its database folder; False when the
        budget ended first."""
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule.database import JSONDatabase
        from tvm.s_tir.meta_schedule.measure_callback import MeasureCallback

        if result.default_ms is None:
            result.default_ms = self.measure_default(kernel)
        final = db_dir / kernel.key
        db_dir.mkdir(parents=True, exist_ok=True)
        state = {"new": 0, "best": result.tuned_ms, "stopped": False}
        if on_progress:
            on_progress(kernel.name, already, asked, state["best"])

        def on_batch(task_scheduler: Any, task_id: int, secs: list) -> None:
            state["new"] += len(secs)
            good = [1e3 * s for s in secs if s is not None]
            if good and (state["best"] is None or min(good) < state["best"]):
                state["best"] = min(good)
            if on_progress:
                on_progress(kernel.name, min(already + state["new"], asked), asked, state["best"])
            if deadline is not None and time.monotonic() >= deadline:
                state["stopped"] = True
                task_scheduler.terminate_task(task_id)

        with tempfile.TemporaryDirectory(prefix=f".{kernel.key}.", dir=db_dir) as work:
            for name in ("database_workload.json", "database_tuning_record.json"):
                if (final / name).is_file():
                    shutil.copyfile(final / name, Path(work) / name)
            database = JSONDatabase(work_dir=work)
            remaining = asked - already
            ctx = ms.TuneContext(mod=kernel.mod, target=self.target,
                                 space_generator="post-order-apply",
                                 search_strategy=_STRATEGY[self.search], task_name=kernel.name,
                                 num_threads=os.cpu_count() or 1,
                                 rand_state=-1 if self.seed is None else self.seed).clone()
            try:
                ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=work,
                              max_trials_global=remaining, max_trials_per_task=remaining,
                              num_trials_per_iter=min(per_batch, remaining),
                              builder=self.builder, runner=self.runner, database=database,
                              cost_model="random",
                              measure_callbacks=MeasureCallback.create("default")
                              + [_make_callback(on_batch)],
                              task_scheduler="round-robin")
            except Exception as e:
                raise CompileError(f"tuning {kernel.name} failed: {last_line(e)}") from None
            best = _best_ms(database, kernel.mod)
            if best is not None:
                result.tuned_ms = best
            result.new_trials = state["new"]
            result.trials = already + state["new"]
            # Publish: the workload file is the same in every version of this folder, so
            # replacing the files one by one leaves a consistent folder at every step.
            final.mkdir(parents=True, exist_ok=True)
            for name in ("database_workload.json", "database_tuning_record.json"):
                os.replace(Path(work) / name, final / name)
        finished = not state["stopped"] or result.trials >= asked
        new_meta = {"name": kernel.name, "signature": kernel.signature, "flops": kernel.flops,
                    "num_cores": int(self.target.attrs.get("num-cores", 0) or 0),
                    "trials": result.trials,
                    "complete_for": max(asked if finished else 0, int(meta.get("complete_for", 0))),
                    "default_ms": result.default_ms, "tuned_ms": result.tuned_ms,
                    "search": self.search, "measured_on": self.measured_on,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with atomic_path(final / KERNEL_META) as tmp:
            tmp.write_text(json.dumps(new_meta, indent=1, default=str) + "\n")
        return finished


def _best_ms(database: Any, mod: Any) -> float | None:
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    secs = _mean_secs(top[0].run_secs) if top else None
    return None if secs is None else 1e3 * secs


# ------------------------------------------------------------------ compiling with records

def apply_tuning_db(mod: Any, db_dir: Path, tvm_target: Any, applied: list[str] | None = None) -> Any:
    """Replace each PrimFunc of a fused Relax module that ``db_dir`` (one target's folder)
    has a faster-than-default record for by its tuned schedule (``tirx.is_scheduled``);
    the module is updated in place and returned."""
    from tvm import tirx
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    if not db_dir.is_dir():
        return mod
    _light_tensor_intrin(tvm_target)
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or \
                (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
            continue
        if not _is_static(func):
            continue
        norm = _normalize(func)
        folder = db_dir / kernel_key(norm)
        meta = _read_meta(folder)
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
