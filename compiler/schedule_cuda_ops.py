"""CUDA kernels for the edgert ops whose converters schedule their kernels for the CPU.

The converters of LMulMatMul, ShiftMatMul, HashCodes and BinaryAttention replace their TE
kernels by CPU schedules (vector lanes, parallel loops) marked ``tirx.is_scheduled``, which a
GPU build cannot use: every GPU kernel binds its loops to CUDA blocks and threads. They also
mark each kernel with its op (:func:`edgert.ops._common.gpu.mark`); for a CUDA target,
:func:`schedule_edgert_ops` replaces each marked kernel by its op's ``gpu_func`` (the same TE
compute rebuilt on the kernel's buffers and bound to threads; see each op's ``tvm.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

from edgert.ops._common.gpu import OP_ATTR


def schedule_edgert_ops(mod: Any) -> Any:
    """``mod`` with every kernel an op marked replaced by the op's CUDA kernel."""
    from tvm import tirx

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or OP_ATTR not in func.attrs:
            continue
        module = importlib.import_module(f"edgert.ops.{func.attrs[OP_ATTR]}.tvm")
        mod.update_func(gv, module.gpu_func(func))
    return mod
