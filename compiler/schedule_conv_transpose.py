"""Float32 transposed convolutions whose kernel equals their stride, as one matmul.

TVM 0.27's default CPU pipeline builds ``relax.nn.conv2d_transpose`` as a scalar loop nest on
one thread: PP-OCRv4's text detector upsamples twice with a 2x2, stride 2 ConvTranspose, and at
320x320 those two layers took most of a run. With the kernel equal to the stride and no padding
the output patches do not overlap: each input pixel ``x[n, :, y, z]`` alone makes the
``KH x KW`` block of output pixels ``(y*KH + i, z*KW + j)``, so :func:`transposed_convs` rewrites
such a layer (NCHW data, IOHW constant weight, one group, no dilation or output padding) as

1. ``to_nhwc``: the input as ``[N, H*W, C]`` (one transposing pass);
2. ``rows @ Wm`` with ``Wm[C, O*KH*KW]`` the weight itself (columns in (o, i, j) order): the
   float matmul kernels of :func:`edgert.compiler.schedule_intmatmul.schedule_float_matmuls`;
3. ``blocks_to_nchw``: ``out[n, o, y*KH + i, z*KW + j] = Y[n, y*W + z, (o*KH + i)*KW + j]``, a
   kernel that TVM's operator fusion merges with the bias and activation after it.

Each output is one product sum over C, in channel order, as in the direct computation, so
results equal TVM's default build and onnxruntime within float rounding
(``tests/test_schedule_conv_transpose.py``: rtol 1e-5). Other transposed convolutions keep the
default build.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def blocks_to_nchw_te(y: Any, w: int, kernel: tuple[int, int]) -> Any:
    """TVM TE: the matmul's [N, H*W, O*KH*KW] (static) as the output [N, O, H*KH, W*KW]."""
    from tvm import te, tirx

    kh, kw = kernel
    n, p, cols = y.shape
    h, o = int(p) // w, int(cols) // (kh * kw)
    shape = (n, *(tirx.const(v, "int64") for v in (o, h * kh, w * kw)))
    return te.compute(
        shape,
        lambda b, c, r, s: y[b, (r // kh) * w + s // kw, (c * kh + r % kh) * kw + s % kw],
        name="blocks_to_nchw")


def transposed_convs(mod: Any) -> Any:
    """Rewrite the float32 2-D transposed convolutions of a Relax module (before legalization)
    whose kernel equals their stride as a matmul (see the module docstring); others are left
    alone."""
    import tvm

    from edgert.compiler.relax_rewrite import rewrite_calls

    op = tvm.ir.Op.get("relax.nn.conv2d_transpose")
    return rewrite_calls(mod, lambda call: call.op.same_as(op), _rewrite)


def _rewrite(rw: Any, call: Any) -> Any | None:
    """The kernels replacing ``call`` (a ``relax.nn.conv2d_transpose``), or None to keep it."""
    from tvm import relax

    from edgert.compiler.schedule_conv import (_kernel_call, _tiles, float32_conv_operands,
                                               pad_nhwc_te)

    attrs = call.attrs
    operands = (float32_conv_operands(rw, call, kernel_layout="IOHW")
                if int(attrs.groups) == 1 else None)
    if operands is None:
        return None
    x, weight = operands
    c, o, kh, kw = weight.shape
    strides = tuple(int(v) for v in attrs.strides)
    if (strides != (kh, kw) or any(int(p) for p in attrs.padding)
            or any(int(p) for p in attrs.output_padding)
            or any(int(d) != 1 for d in attrs.dilation)):
        return None
    n, _, h, wd = x.ty.shape.values
    bb = rw.builder_
    rows = bb.emit(_kernel_call(rw, "to_nhwc", pad_nhwc_te, x, (0, 0, 0, 0),
                                schedule=_tiles if c % 8 == 0 else None))
    rows = bb.emit(relax.op.reshape(rows, [n, h * wd, c]))
    out = bb.emit(relax.op.matmul(rows, relax.const(
        np.ascontiguousarray(weight.reshape(c, o * kh * kw)))))
    return _kernel_call(rw, "blocks_to_nchw", blocks_to_nchw_te, out, int(wd), (kh, kw),
                        fusable=True)
