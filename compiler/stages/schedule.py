"""Stage ``schedule``: a Relax IRModule -> the target's shared library (our kernels and
schedules per target, tuning records, ``tvm.compile``, linking)."""

from __future__ import annotations

from edgert.compiler.stages import Context, Library, Lowered


def schedule(lowered: Lowered, ctx: Context) -> Library:
    """Build ``lowered`` for ``ctx.target`` (:func:`edgert.compiler.lower.build_library`);
    the ``tuning`` section names the kernels a tuning database gave their schedule.

    Raises:
        CompileError, TargetError.
    """
    from edgert.compiler.lower import build_library

    ctx.stage(f"compiling for {ctx.target.name}")
    tuned: list[str] = []
    data = build_library(lowered.module, ctx.target, threads=ctx.options.threads,
                         source=ctx.source, tuning_db=ctx.tuning_db, tuned=tuned)
    tuning = None
    if ctx.tuning_db is not None:
        tuning = {"db": ctx.tuning_label, "tuned_kernels": sorted(tuned)}
    return Library(data, tuning)
