"""The kernels ``edgert tune`` can tune in a model: the model lowered as a CPU compile lowers it,
up to the point where TVM's PrimFuncs are final but not yet scheduled, then every static-shape
PrimFunc not already scheduled, ranked by FLOPs x calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgert.compiler.tuning_db import buffer_params, is_static, kernel_key, normalize
from edgert.targets import Target


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


def _signature(func: Any) -> str:
    """``float32 64x64, 64x64, 64 -> 64x64`` (inputs -> output; dtype given once if shared)."""
    def dim(d: Any) -> str:
        return str(d.value) if hasattr(d, "value") else str(d)

    params = buffer_params(func) or []
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
        if not is_static(func):
            skipped[name] = "symbolic shape (only static-shape kernels are tuned)"
            continue
        norm = normalize(func)
        try:
            flops = float(estimate_tir_flops(norm))
        except Exception:   # noqa: BLE001 - an unusual PrimFunc the estimator rejects
            flops = 0.0
        kernels.append(Kernel(name, kernel_key(norm), flops, calls.get(name, 1),
                              _signature(func), norm))
    kernels.sort(key=lambda k: (-k.flops * k.calls, k.name))
    return kernels, skipped
