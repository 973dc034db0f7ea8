"""``edgert tune``: search faster schedules for a model's hot kernels and keep them for compiles.

How it works:

1. The model is imported and lowered exactly as :func:`edgert.compiler.lower.build_library`
   does for a CPU target, up to the point where TVM's PrimFuncs are final but not yet scheduled:
   our integer-matmul kernels first (``tirx.is_scheduled``, left alone), then TVM's CPU library
   dispatch, ``LegalizeOps`` and operator fusion (:func:`prepare_kernels`,
   :mod:`edgert.compiler.tune_kernels`).
2. Every static-shape PrimFunc not already scheduled is a candidate kernel; candidates are
   ranked by FLOPs x calls and the top ones (``top``, above 1 % of the model's FLOPs) are tuned.
3. Each kernel is timed with its default schedule (what a compile without a database builds:
   :func:`edgert.compiler.schedule_cpu.cpu_schedule_pass` or TVM's unscheduled loops), then
   tuned with MetaSchedule (TVM's default CPU search space, evolutionary or random search,
   random cost model since xgboost is not a dependency), measured on this machine. Candidates
   are built in this process (TVM's ``LocalBuilder`` starts fresh worker processes for every
   batch, and its default build function imports ``tvm.s_tir.tensor_intrin``, ~50 s, mostly
   CUDA intrinsics) and run in a ``LocalRunner`` worker (:mod:`edgert.compiler.tune_measure`).
4. Records go to a database directory, one folder per target and one per kernel, named by the
   structural hash of the kernel (its computation and shapes)::

       <db>/<target>/<hash>/database_workload.json      MetaSchedule JSONDatabase
       <db>/<target>/<hash>/database_tuning_record.json
       <db>/<target>/<hash>/edgert-kernel.json          name, shape, FLOPs, trials, ms

   A kernel is tuned in a temporary copy of its folder that replaces it file by file when done
   (the workload file never changes, so a crash leaves a consistent folder); a rerun skips
   kernels that already have the asked trials and continues the others from their records.
   The default ``<db>`` is ``$EDGERT_CACHE/tuning`` (``~/.cache/edgert/tuning``).
5. ``edgert compile --tuning-db DB`` (:func:`edgert.compiler.tuning_db.tuned_cpu_pipeline`)
   looks every kernel up in ``DB/<target>/`` after fusion and, where the tuned schedule
   measured faster than the default one, replaces the kernel by it (marked
   ``tirx.is_scheduled``, so our default CPU schedules skip it); all other kernels build as
   without a database. Without ``--tuning-db`` a compile uses the records shipped inside the
   package (:func:`shipped_db_root`, a copy of a ``DB/<target>/`` folder; ``--tuning-db
   none``: none), never the cache on its own, so a compile does not depend on what was tuned
   on the machine before.

A board is tuned from here through its TVM RPC server (``rpc="HOST:PORT"``, ``edgert tune
--target rpi5 --rpc HOST:PORT``): candidates are built (cross-compiled) in this process and
MetaSchedule's ``RPCRunner`` uploads each library to the server and times it there (directly,
without a tracker: :func:`edgert.compiler.tune_measure.connect_server`). Without ``rpc`` only
CPU targets this machine can run are tuned. Only kernels with static shapes are tuned (a
symbolic batch axis is skipped).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgert.compiler.tune_kernels import Kernel, model_kernels, prepare_kernels
from edgert.compiler.tune_measure import KernelResult, ProgressFn, Tuner, measured_on
from edgert.compiler.tuning_db import (KERNEL_META, apply_tuning_db, read_meta, target_db_dir,
                                       tuned_cpu_pipeline)
from edgert.errors import InputError, TargetError
from edgert.targets import Target, can_run_here, get_target

__all__ = ["KERNEL_META", "NO_DB", "SHIPPED", "Kernel", "KernelResult", "TuneReport",
           "apply_tuning_db", "default_db_root", "model_kernels", "prepare_kernels",
           "resolve_tuning_db", "shipped_db_root", "target_db_dir", "tune_model",
           "tuned_cpu_pipeline"]

CACHE_ENV = "EDGERT_CACHE"
DEFAULT_TRIALS = 64
DEFAULT_TOP = 10
MIN_FLOP_SHARE = 0.01
"""Kernels with less than this share of the model's FLOPs are not worth tuning."""
SEARCHES = ("evolutionary", "random")


def default_db_root() -> Path:
    """``$EDGERT_CACHE/tuning`` if ``EDGERT_CACHE`` is set, else ``~/.cache/edgert/tuning``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env) if env else Path.home() / ".cache" / "edgert") / "tuning"


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
    if trials < 1:
        raise InputError(f"--trials must be at least 1, got {trials}")
    if search not in SEARCHES:
        raise InputError(f"--search must be one of {', '.join(SEARCHES)}, got {search!r}")
    tgt = _tunable_target(target, rpc)
    start = time.monotonic()
    deadline = None if budget_minutes is None else start + 60.0 * budget_minutes
    stage = on_stage or (lambda _s: None)
    db_dir = target_db_dir(db if db is not None else default_db_root(), tgt)
    tvm_target, kernels = _model_kernels(model_path, tgt, threads, stage)
    chosen, skipped = _choose(kernels, top)
    run = _Run(tgt, tvm_target, db_dir, trials, trials_per_batch, search, seed, rpc, deadline,
               stage, on_progress)
    tuned, budget_hit = _tune_kernels(chosen, run)
    return TuneReport(tgt.name, str(db_dir), tuned + skipped, budget_hit,
                      time.monotonic() - start, measured_on(rpc))


@dataclass(frozen=True)
class _Run:
    """The settings of one :func:`tune_model` call that every kernel's tuning reads."""

    target: Target
    tvm_target: Any
    db_dir: Path
    trials: int
    per_batch: int
    search: str
    seed: int | None
    rpc: str | None
    deadline: float | None                   # time.monotonic() at which to stop, or None
    stage: Callable[[str], None]
    on_progress: ProgressFn | None


def _model_kernels(model_path: str | os.PathLike, tgt: Target, threads: int | None,
                   stage: Callable[[str], None]) -> tuple[Any, list[Kernel]]:
    """The TVM target (with ``num-cores``) and the model's candidate kernels, largest first."""
    import tvm

    from edgert.compiler.check import load_model, require_supported
    from edgert.compiler.lower import supported_ops, to_relax
    from edgert.threads import physical_cores

    source = str(model_path)
    stage("checking the model")
    model = load_model(model_path)
    require_supported(model, supported_ops(), source=source)
    stage("importing into TVM")
    tvm_target = tvm.target.Target(tgt.tvm_target_dict(num_cores=threads or physical_cores()))
    mod = prepare_kernels(to_relax(model, source=source), tgt, tvm_target)
    kernels, _skipped = model_kernels(mod)
    return tvm_target, kernels


def _choose(kernels: list[Kernel], top: int) -> tuple[list[Kernel], list[KernelResult]]:
    """The kernels to tune (at most ``top``, each above :data:`MIN_FLOP_SHARE` of the model's
    FLOPs) and the results of the others (skipped: why)."""
    total_flops = sum(k.flops * k.calls for k in kernels) or 1.0
    chosen, skipped = [], []
    for k in kernels:
        if len(chosen) >= top:
            status = f"skipped: not in the top {top}"
        elif k.flops * k.calls < MIN_FLOP_SHARE * total_flops:
            status = f"skipped: under {MIN_FLOP_SHARE:.0%} of the model's FLOPs"
        else:
            chosen.append(k)
            continue
        skipped.append(KernelResult(k.name, k.key, k.signature, k.flops, k.calls, status))
    return chosen, skipped


def _tune_kernels(chosen: list[Kernel], run: _Run) -> tuple[list[KernelResult], bool]:
    """Tune each chosen kernel up to ``run.trials`` (those with as many records are cached);
    returns the results and whether the time budget ran out."""
    budget_hit = False
    tuner = None
    results = []
    try:
        for k in chosen:
            meta = read_meta(run.db_dir / k.key)
            done = int(meta.get("trials", 0))
            complete = int(meta.get("complete_for", 0))
            res = KernelResult(k.name, k.key, k.signature, k.flops, k.calls, "cached", done,
                               0, meta.get("default_ms"), meta.get("tuned_ms"))
            results.append(res)
            if max(done, complete) >= run.trials:
                if run.on_progress:
                    run.on_progress(k.name, run.trials, run.trials, res.tuned_ms)
                continue
            if run.deadline is not None and time.monotonic() >= run.deadline:
                res.status, budget_hit = "budget", True
                continue
            if tuner is None:
                from edgert.compiler.lower import linker_for

                run.stage("starting the measurement worker")
                tuner = Tuner(run.tvm_target, search=run.search, seed=run.seed, rpc=run.rpc,
                              cross_cc=linker_for(run.target))
            run.stage(f"tuning {k.name}")
            res.status = "tuned"
            finished = tuner.tune(k, run.db_dir, asked=run.trials, already=done, meta=meta,
                                  per_batch=run.per_batch, deadline=run.deadline, result=res,
                                  on_progress=run.on_progress)
            if not finished:
                res.status, budget_hit = "budget", True
    finally:
        if tuner is not None:
            tuner.close()
    return results, budget_hit


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
