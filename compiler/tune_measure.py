"""Measuring kernels for ``edgert tune``: MetaSchedule's builder (in this process, without the
slow tensor-intrinsic import), its runner (a local worker, or a board's TVM RPC server) and the
tuning of one kernel into its database folder (:class:`Tuner`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgert.compiler.tune_kernels import Kernel
from edgert.compiler.tuning_db import KERNEL_META, light_tensor_intrin
from edgert.errors import CompileError, last_line
from edgert.fileio import atomic_path

_STRATEGY = {"evolutionary": "evolutionary", "random": "replay-trace"}
_EVALUATOR = {"number": 10, "repeat": 3, "min_repeat_ms": 20}

ProgressFn = Callable[[str, int, int, float | None], None]
"""``on_progress(kernel, trials done, trials asked, best ms so far)``."""


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


def measured_on(rpc: str | None) -> str:
    """Where timings come from: ``local`` (this machine) or ``rpc HOST:PORT`` (a board)."""
    return "local" if rpc is None else f"rpc {rpc}"


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
            on_batch(task_scheduler, task_id, [mean_secs(r.run_secs) for r in runner_results])

    return Progress()


def mean_secs(run_secs: Any) -> float | None:
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


class Tuner:
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

        light_tensor_intrin(tvm_target)
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
            secs = mean_secs(future.result().run_secs)
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
    secs = mean_secs(top[0].run_secs) if top else None
    return None if secs is None else 1e3 * secs
