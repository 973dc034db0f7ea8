"""Helpers for the CUDA kernels of the op folders' ``tvm.py`` (``gpu_func``).

An op whose converter schedules its kernel for the CPU marks the PrimFunc with
:func:`mark` (the op's folder and its compute's keyword arguments). For a CUDA target,
:func:`edgert.compiler.schedule_cuda_ops.schedule_edgert_ops` finds those kernels and replaces
each by the op's ``gpu_func(func)``: the same TE compute rebuilt on the kernel's own buffers
(:func:`rebuild`, under :func:`edgert.ops._floatmath.tvm.cuda_rounding` so float products,
divisions and square roots round as the spec does despite TVM's ``--use_fast_math``) and
scheduled with its loops bound to CUDA blocks and threads.
"""

from __future__ import annotations

from typing import Any, Callable

THREADS = 128
"""CUDA threads per block of the ops' kernels."""
OP_ATTR, KWARGS_ATTR = "edgert.gpu_op", "edgert.gpu_op_kwargs"
"""PrimFunc attributes :func:`mark` sets."""


def mark(func: Any, folder: str, kwargs: dict[str, Any]) -> Any:
    """``func`` with the op's folder and compute keyword arguments (ints, strings, bools)."""
    return func.with_attrs({OP_ATTR: folder,
                            KWARGS_ATTR: {k: (int(v) if isinstance(v, bool) else v)
                                          for k, v in kwargs.items()}})


def kwargs_of(func: Any) -> dict[str, Any]:
    """The keyword arguments :func:`mark` stored (TVM strings and ints as Python values)."""
    out = {}
    for k, v in func.attrs[KWARGS_ATTR].items():
        out[str(k)] = str(v) if isinstance(v, str) else int(v)
    return out


def rebuild(func: Any, compute: Callable[..., Any]) -> Any:
    """The PrimFunc of ``compute(*inputs)`` on placeholders shaped as ``func``'s input buffers
    (its last buffer parameter is the output; scalar parameters, the symbolic dims that
    ``emit_te`` passes, keep their places), built under CUDA rounding; ``func``'s attributes
    kept."""
    from tvm import te

    from edgert.ops._floatmath.tvm import cuda_rounding

    def is_buffer(p: Any) -> bool:          # TVM 0.27: a buffer parameter is a buffer-typed var
        return "Buffer" in type(p.ty).__name__

    out_at = max(i for i, p in enumerate(func.params) if is_buffer(p))
    args = [te.placeholder(p.shape, p.dtype, name=p.name) if is_buffer(p) else p
            for p in func.params]
    inputs = [a for i, a in enumerate(args) if i != out_at and is_buffer(func.params[i])]
    with cuda_rounding():
        args[out_at] = compute(*inputs)
    new = te.create_prim_func(args).without_attr("global_symbol")
    keep = {str(k): v for k, v in func.attrs.items() if str(k) != "tirx.is_scheduled"}
    return new.with_attrs(keep)


def bind_threads(sch: Any, loop: Any) -> Any:
    """Split ``loop`` into blocks of :data:`THREADS` threads and bind it; returns the thread
    loop (the iterations past the extent are predicated off)."""
    block_loop, thread = sch.split(loop, factors=[None, THREADS])
    sch.bind(block_loop, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    return thread


def bind_outputs(sch: Any, name: str) -> Any:
    """One thread per output element of the ``[..., M, N]`` reduction block ``name`` (its
    last loop the reduction), which runs serially into a register accumulator."""
    block = sch.get_sblock(name)
    *spatial, _k = sch.get_loops(block)
    thread = bind_threads(sch, sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, thread)
    return sch


def finish(sch: Any) -> Any:
    """The schedule's PrimFunc marked scheduled (dlight leaves it alone) and opaque."""
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})
