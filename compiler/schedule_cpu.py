"""CPU schedules for the kernels TVM's default pipeline leaves as scalar loops.

TVM 0.27's default CPU pipeline legalizes and fuses, then builds every PrimFunc as written:
one scalar loop nest per block, one thread. For the integer graph that leaves Requant,
ShiftGELU, the residual adds and the row ops (Shiftmax, ILayerNorm) as the larger part of a
MiniLM run once the matmuls have their own kernels (measured on all-MiniLM-L6, seq 128, one
thread: 14 of 36 ms). :func:`cpu_schedule_pass` runs after operator fusion (so a fused chain
is scheduled as one kernel) and applies, dlight-style, the first rule that accepts a PrimFunc:

- :class:`Elementwise`: every block spatial (Requant, ShiftGELU, Add, casts, and their fused
  chains). Intermediate blocks are inlined into the last one, whose loops become one
  parallel outer loop (``num-cores`` > 1) around a vectorized inner loop over the last axis.
- :class:`Rows`: row reductions that end with an elementwise block over the same rows
  (Shiftmax, ILayerNorm, softmax, layer norm): every block computed per row, rows in parallel.
  Nothing is vectorized by hand: LLVM vectorizes the row loops it can, and dlight's CPU
  reduction rule, which splits and vectorizes them, measured slower here (Shiftmax of
  [1, 12, 128, 128], 2 cores: 0.44 ms against 0.22 ms with this rule, 0.40 ms unscheduled).

Kernels that carry ``tirx.is_scheduled`` (the matmuls of
:mod:`edgert.compiler.schedule_intmatmul`) are left alone, and so are PrimFuncs no rule accepts
(grouped convolutions: the default build; the others run as im2col + matmul, see
:mod:`edgert.compiler.schedule_conv`). A schedule only reorders loops and changes none of the
arithmetic, so the integer kernels stay bit-exact (the op tests compare TVM with the numpy
references).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VECTOR_BYTES = 32
"""Bytes per vector register the inner loops are split for (AVX2 / two NEON registers)."""
PARALLEL_MIN_ELEMENTS = 4096
"""Kernels with a static element count below this run on one thread (a parallel launch
costs a few microseconds)."""


def cpu_schedule_pass(tvm_target: Any) -> Any:
    """The module pass that schedules a Relax module's PrimFuncs for a CPU target."""
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(Elementwise(), Rows())


def cpu_pipeline(tvm_target: Any, after_fusion: Callable[[Any], Any] | None = None) -> Any:
    """TVM's default CPU Relax pipeline with :func:`cpu_schedule_pass` after operator fusion;
    ``after_fusion(mod) -> mod`` runs right before that pass (``edgert tune`` applies its
    records there)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="EdgertCPUPipeline")
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with tvm_target:
            mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(tvm_target)
                                           + cpu_generic.legalize_passes(tvm_target))(mod)
            if after_fusion is not None:
                mod = after_fusion(mod)
            return tvm.transform.Sequential([cpu_schedule_pass(tvm_target)]
                                            + cpu_generic.dataflow_lower_passes(tvm_target)
                                            + cpu_generic.finalize_passes(tvm_target))(mod)

    return pipeline


def _static_extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _lanes(sch: Any, block: Any) -> int:
    """Vector lanes for a block: one register of its widest output dtype (at least 4)."""
    bits = max((w.source.dtype.bits for w in sch.get(block).writes), default=32)
    return max(VECTOR_BYTES * 8 // max(bits, 8), 4)


class _CPURule:
    """A dlight-style rule (``apply(func, target, tunable) -> Schedule | None``) for LLVM
    targets; subclasses schedule the blocks :meth:`blocks` finds."""

    def is_target_available(self, target: Any) -> bool:
        return target.kind.name == "llvm"

    def blocks(self, func: Any, target: Any) -> tuple[Any, list] | None:
        """A schedule of ``func`` and its normalized blocks, or None (not a CPU PrimFunc,
        or blocks dlight cannot normalize)."""
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        return (sch, infos) if infos else None


class Elementwise(_CPURule):
    """Rule for PrimFuncs whose blocks are all spatial (elementwise / broadcast / cast chains)."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.base import try_inline

        found = self.blocks(func, target)
        if found is None or not all(info.is_injective() for info in found[1]):
            return None
        sch, infos = found
        remaining = try_inline(sch, infos[:-1]) + [infos[-1]]
        cores = _num_cores(target)
        for info in remaining:
            loops = sch.get_loops(info.block_rv)
            if not loops:
                continue
            parallel = cores > 1 and _worth_parallel(sch, loops)
            inner = loops[-1]
            outer = loops[:-1]
            extent = _static_extent(sch, inner)
            lanes = _lanes(sch, info.block_rv)
            if extent is not None and extent >= lanes and extent % lanes == 0:
                if extent > lanes:
                    rest, vec = sch.split(inner, factors=[None, lanes])
                    outer = [*outer, rest]
                else:
                    vec = inner
                sch.vectorize(vec)
            elif extent is not None and 2 <= extent < lanes and not outer:
                sch.vectorize(inner)
            if outer and parallel:
                sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return sch


class Rows(_CPURule):
    """Rule for row reductions: blocks with the same leading spatial (row) axes, reductions
    over the trailing ones, and an elementwise last block."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        found = self.blocks(func, target)
        if found is None:
            return None
        sch, infos = found
        if len(infos) < 2 or not infos[-1].is_injective() \
                or all(info.is_injective() for info in infos):
            return None
        kinds = [info.dom_kind() for info in infos]
        lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
        loops = sch.get_loops(infos[-1].block_rv)
        if lead == 0 or lead >= len(loops):
            return None
        parallel = _num_cores(target) > 1 and _worth_parallel(sch, loops)
        rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
        if parallel:    # before compute_at: afterwards TVM refuses symbolic row loops
            sch.parallel(rows)
        try:
            for info in reversed(infos[:-1]):
                sch.compute_at(info.block_rv, rows, preserve_unit_loops=True)
        except Exception:   # noqa: BLE001 - a block that cannot move under the row loop
            return None
        return sch


def _worth_parallel(sch: Any, loops: list) -> bool:
    """A symbolic extent (batch, sequence) counts as large: :func:`guard_parallel_loops`
    decides at run time whether such a loop really goes to the thread pool."""
    total = 1
    for loop in loops:
        extent = _static_extent(sch, loop)
        if extent is None:
            return True
        total *= extent
    return total >= PARALLEL_MIN_ELEMENTS


def _num_cores(target: Any) -> int:
    from edgert.compiler.relax_rewrite import num_cores

    return num_cores(target)


def vectorizable_erf(mod: Any) -> Any:
    """Every float32 ``relax.erf`` of ``mod`` (the erf GELU of BERT-style models) as TVM's
    ``topi.fast_erf``: a rational polynomial that LLVM vectorizes, where the default erf calls
    libm's scalar ``erff`` per element. Over [-6, 6] its relative error is 3.3e-7 (a few ulp;
    ``tests/test_schedule_cpu.py`` pins it below 3.6e-7)."""
    import tvm
    from tvm import topi

    from edgert.compiler.relax_rewrite import rewrite_calls

    erf = tvm.ir.Op.get("relax.erf")

    def match(call: Any) -> bool:
        return call.op.same_as(erf) and str(getattr(call.ty, "dtype", "")) == "float32"

    return rewrite_calls(mod, match,
                         lambda rw, call: rw.builder_.call_te(topi.fast_erf, call.args[0]))


def vectorizable_softmax(mod: Any) -> Any:
    """Every float32 ``relax.nn.softmax`` of ``mod`` computed with :func:`exp_te`, a polynomial
    exp that LLVM vectorizes, where the default softmax calls libm's scalar ``expf``. MiniLM-L6's
    attention softmax over 12 x 128 x 128 values, 1 thread: 0.72 -> 0.34 ms."""
    import tvm
    from tvm import topi

    from edgert.compiler.relax_rewrite import rewrite_calls

    softmax = tvm.ir.Op.get("relax.nn.softmax")

    def match(call: Any) -> bool:
        return call.op.same_as(softmax) and str(getattr(call.ty, "dtype", "")) == "float32"

    def softmax_poly(x: Any, axis: int) -> Any:       # (the kernel's name)
        e = exp_te(topi.subtract(x, topi.max(x, axis=axis, keepdims=True)))
        return topi.divide(e, topi.sum(e, axis=axis, keepdims=True))

    return rewrite_calls(mod, match, lambda rw, call: rw.builder_.call_te(
        softmax_poly, call.args[0], int(call.attrs.axis)))


def exp_te(x: Any) -> Any:
    """TE: float32 exp, elementwise, as :func:`exp_expr`."""
    from tvm import te

    return te.compute(x.shape, lambda *i: exp_expr(x(*i)), name="exp_poly")


def exp_expr(v: Any) -> Any:
    """TIR: float32 exp of ``v`` (a float32 scalar or vector PrimExpr), as Cephes' ``expf``:
    x = n ln2 + r with |r| <= ln2/2 (ln2 split in two constants for an exact reduction), exp(r)
    by a degree-7 polynomial, times 2**n built in the exponent bits. Inputs are clamped to
    [-87.3, 88.37] (below, 1.2e-38 instead of a denormal or 0; above, 2.5e38 instead of up to
    3.4e38 or inf). Max relative error against float64 over the range: 7.9e-8 (measured;
    libm's 6e-8)."""
    from tvm import tirx

    lanes = int(v.ty.dtype.lanes)
    suffix = f"x{lanes}" if lanes > 1 else ""

    def f(value: float) -> Any:
        return tirx.const(value, "float32")

    v = tirx.max(tirx.min(v, f(88.37)), f(-87.3))          # 2**n stays a normal float
    n = tirx.floor(v * f(1.44269504088896341) + f(0.5))
    r = v - n * f(0.693359375) - n * f(-2.12194440e-4)
    p = f(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
              5.0000001201e-1):
        p = p * r + f(c)
    y = p * r * r + r + f(1.0)
    scale = tirx.reinterpret("float32" + suffix, tirx.shift_left(
        tirx.Cast("int32" + suffix, n) + tirx.const(127, "int32"), tirx.const(23, "int32")))
    return y * scale


# ---------------------------------------------------------------------------------------------
# Parallel loops over symbolic extents

TIR_PIPELINE = "edgert_cpu"
"""Name of TVM's default TIR lowering pipeline plus :func:`guard_parallel_loops`, registered
in ``tvm.tirx.compilation_pipeline.PIPELINE_MAP`` by :func:`register_tir_pipeline`."""
PARALLEL_MIN_WORK = 16384
"""Element operations below which a parallel loop runs on the calling thread alone: a launch
on TVM's pool costs a few microseconds, more than e.g. an RMSNorm over one token's 576 values."""
UNKNOWN_EXTENT = 64
"""What :func:`_work` assumes for a nested loop whose extent is symbolic too."""


def guard_parallel_loops(func: Any) -> Any:
    """``func`` with every parallel loop whose extent is symbolic (the sequence axis of an LLM,
    a dynamic batch) split at run time: ``if extent * work >= PARALLEL_MIN_WORK`` the parallel
    loop, else the same loop serial. The rules above can only decide on static extents, and
    an LLM's decode step runs hundreds of kernels over a symbolic axis of length 1."""
    from tvm import tirx

    def visit(stmt: Any) -> Any | None:          # the new statement, or None when unchanged
        if isinstance(stmt, tirx.For):
            if stmt.kind != tirx.ForKind.PARALLEL or isinstance(stmt.extent, tirx.IntImm):
                return None
            work = _work(stmt.body)
            if work >= PARALLEL_MIN_WORK:
                return None
            serial = tirx.For(stmt.loop_var, stmt.min, stmt.extent, tirx.ForKind.SERIAL,
                              stmt.body, None, stmt.annotations)
            big = tirx.GE(stmt.extent, tirx.const(-(-PARALLEL_MIN_WORK // max(work, 1)),
                                                  str(stmt.extent.ty)))
            return tirx.IfThenElse(big, stmt, serial)
        if isinstance(stmt, tirx.SeqStmt):
            new = [visit(s) for s in stmt.seq]
            if all(n is None for n in new):
                return None
            return tirx.SeqStmt([s if n is None else n for s, n in zip(stmt.seq, new)])
        if isinstance(stmt, tirx.AttrStmt):
            body = visit(stmt.body)
            return None if body is None else tirx.AttrStmt(stmt.node, stmt.attr_key,
                                                           stmt.value, body)
        if isinstance(stmt, tirx.IfThenElse):
            then, other = visit(stmt.then_case), (
                visit(stmt.else_case) if stmt.else_case is not None else None)
            if then is None and other is None:
                return None
            return tirx.IfThenElse(stmt.condition, then or stmt.then_case,
                                   other or stmt.else_case)
        return None

    body = visit(func.body)
    return func if body is None else func.with_body(body)


def _work(stmt: Any) -> int:
    """Element operations of ``stmt``, roughly: loop extents times the lanes of every store."""
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        extent = int(stmt.extent.value) if isinstance(stmt.extent, tirx.IntImm) \
            else UNKNOWN_EXTENT
        return extent * _work(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        return sum(_work(s) for s in stmt.seq)
    if isinstance(stmt, tirx.IfThenElse):
        return max(_work(stmt.then_case),
                   _work(stmt.else_case) if stmt.else_case is not None else 0)
    if isinstance(stmt, tirx.BufferStore):
        return max(int(stmt.value.ty.lanes) if hasattr(stmt.value.ty, "lanes") else 1, 1)
    if isinstance(stmt, tirx.Evaluate):
        return 1
    body = getattr(stmt, "body", None)
    return _work(body) if isinstance(body, tirx.Stmt) else 0


def register_tir_pipeline() -> str:
    """Register :data:`TIR_PIPELINE` (idempotent) and return its name for ``tvm.compile``."""
    import tvm
    from tvm.tirx import compilation_pipeline as cp

    if TIR_PIPELINE in cp.PIPELINE_MAP:
        return TIR_PIPELINE

    def pipeline(**kwargs: Any) -> tuple:
        lower, host, device = cp.PIPELINE_MAP["s_tir"](**kwargs)

        def run(mod: Any) -> Any:
            mod = lower(mod)
            funcs = {gv: guard_parallel_loops(f) for gv, f in mod.functions.items()
                     if isinstance(f, tvm.tirx.PrimFunc)}
            for gv, f in funcs.items():
                mod[gv] = f
            return tvm.tirx.transform.ConvertSSA()(mod)    # the loop var now bound twice

        return run, host, device

    cp.PIPELINE_MAP[TIR_PIPELINE] = pipeline
    return TIR_PIPELINE
