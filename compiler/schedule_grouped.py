"""Grouped float32 convolutions (not depthwise) as one batched matmul over the groups.

TVM 0.27's default CPU pipeline builds a grouped ``relax.nn.conv2d`` as a scalar loop nest on
one thread: regnet_x_400mf's 3x3 convolutions of 16 channels a group ran it 8x slower than
onnxruntime. :func:`grouped_convs` rewrites each float32 2-D convolution with ``1 < groups``
that :mod:`edgert.compiler.schedule_depthwise` did not take (``C / groups`` input channels a
group), a constant weight, NCHW data, OIHW weight and a static batch, into the kernels of
:mod:`edgert.compiler.schedule_conv` with a group axis:

1. ``pad_nhwc_grouped`` (the ``pad_nhwc`` kernel of an ungrouped convolution), then
   ``im2col_grouped``: the patches of each group as ``cols[N, G, OH, OW, KH, KW, C/G]`` (runs
   of C/G contiguous channels), viewed as ``[N*G, OH*OW, KH*KW*C/G]``;
2. ``cols @ Wt`` with ``Wt[N*G, KH*KW*C/G, O/G]`` (each group's weight transposed at compile
   time, repeated for each image of the batch): a batched ``relax.matmul``, which the float
   kernels of :func:`edgert.compiler.schedule_intmatmul.schedule_float_matmuls` run (one task
   per group and panel of rows, so the groups run in parallel);
3. ``to_nchw_grouped``: the ``[N*G, OH*OW, O/G]`` result as ``[N, O, OH, OW]``, fused by
   TVM with the bias, activation and residual add after it.

The products of a group are summed in (kh, kw, c) order as fused multiply-adds, so results
equal the direct convolution within float rounding (the tests hold them to TVM's default build
and to onnxruntime at rtol 1e-4). Integer grouped convolutions and a symbolic batch keep TVM's
default build.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def im2col_grouped_reference(x: np.ndarray, groups: int, kernel: tuple[int, int],
                             strides: tuple[int, int], padding: tuple[int, int, int, int],
                             dilation: tuple[int, int]) -> np.ndarray:
    """The patches of each group of ``x`` [N, C, H, W] as [N, G, OH, OW, KH, KW, C/G] (numpy;
    the spec of :func:`edgert.compiler.schedule_conv.pad_nhwc_te` then
    :func:`im2col_grouped_te`)."""
    from edgert.compiler.schedule_conv import im2col_reference

    cols = im2col_reference(x, kernel, strides, padding, dilation)   # [N, OH, OW, KH, KW, C]
    n, oh, ow, kh, kw, c = cols.shape
    return cols.reshape(n, oh, ow, kh, kw, groups, c // groups).transpose(0, 5, 1, 2, 3, 4, 6)


def im2col_grouped_te(xp: Any, groups: int, kernel: tuple[int, int], strides: tuple[int, int],
                      dilation: tuple[int, int], *, groups_first: bool = False) -> Any:
    """TVM TE: the grouped im2col of a padded NHWC input ``xp`` [N, HP, WP, C] (static HP, WP,
    C): [N, G, OH, OW, KH, KW, C/G] (as :func:`im2col_grouped_reference`), or with
    ``groups_first`` [G, N, OH, OW, KH, KW, C/G] (the groups as a batched matmul's batch while
    N may stay symbolic)."""
    from tvm import te

    from edgert.compiler.schedule_conv import output_size

    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    n, hp, wp, c = xp.shape
    cg = int(c) // groups
    oh, ow = output_size(int(hp), int(wp), kernel, strides, (0, 0, 0, 0), dilation)

    def patch(b: Any, g: Any, y: Any, z: Any, i: Any, j: Any, ci: Any) -> Any:
        return xp[b, y * sh + i * dh, z * sw + j * dw, g * cg + ci]

    if groups_first:
        return te.compute((groups, n, oh, ow, kh, kw, cg),
                          lambda g, b, y, z, i, j, ci: patch(b, g, y, z, i, j, ci),
                          name="im2col_groups")
    return te.compute((n, groups, oh, ow, kh, kw, cg), patch, name="im2col_grouped")


def to_nchw_grouped_te(y: Any, groups: int, ow: int) -> Any:
    """TVM TE: the batched matmul's [N*G, OH*OW, O/G] (static) as the convolution's
    [N, O, OH, OW]."""
    from tvm import te, tirx

    ng, p, og = (int(d) for d in y.shape)
    shape = (tirx.const(v, "int64") for v in (ng // groups, groups * og, p // ow, ow))
    return te.compute(tuple(shape),
                      lambda b, c, i, j: y[b * groups + c // og, i * ow + j, c % og],
                      name="to_nchw_grouped")


def grouped_weight(weight: np.ndarray, groups: int, batch: int) -> np.ndarray:
    """The OIHW weight [O, C/G, KH, KW] of a grouped convolution as the batched matmul's right
    operand [batch * G, KH*KW*C/G, O/G] (rows in the (kh, kw, c) order of the columns)."""
    o, cg, kh, kw = weight.shape
    w = weight.reshape(groups, o // groups, cg, kh, kw).transpose(0, 3, 4, 2, 1)
    w = w.reshape(groups, kh * kw * cg, o // groups)
    return np.ascontiguousarray(np.tile(w, (batch, 1, 1)))


def grouped_convs(mod: Any) -> Any:
    """Rewrite the grouped float32 2-D convolutions of a Relax module (before legalization, after
    :func:`edgert.compiler.schedule_depthwise.depthwise_convs`) as im2col + batched matmul (see
    the module docstring); others are left alone."""
    import tvm

    from edgert.compiler.relax_rewrite import rewrite_calls

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    return rewrite_calls(mod, lambda call: call.op.same_as(conv_op), _rewrite)


def _rewrite(rw: Any, call: Any) -> Any | None:
    """The kernels replacing ``call`` (a ``relax.nn.conv2d``), or None to keep it."""
    from edgert.compiler.schedule_conv import (_kernel_call, _tiles, float32_conv_operands,
                                               pad_nhwc_te)

    attrs = call.attrs
    groups = int(attrs.groups)
    operands = float32_conv_operands(rw, call, static_batch=True) if groups > 1 else None
    if operands is None:
        return None
    x, weight = operands
    n, c = (int(d) for d in x.ty.shape.values[:2])
    o, cg = weight.shape[:2]
    if c != cg * groups or o % groups:
        return None
    strides = tuple(int(v) for v in attrs.strides)
    dilation = tuple(int(v) for v in attrs.dilation)
    bb = rw.builder_
    # "pad_nhwc" is schedule_conv's symbol (its own pass): the same kernel, its own name
    padded = bb.emit(_kernel_call(rw, "pad_nhwc_grouped", pad_nhwc_te, x,
                                  tuple(int(p) for p in attrs.padding),
                                  schedule=_tiles if c % 8 == 0 else None))
    out, oh, ow = _grouped_matmul(rw, padded, weight, groups, strides, dilation)
    return _kernel_call(rw, "to_nchw_grouped", to_nchw_grouped_te, out, groups, ow,
                        schedule=lambda sch: _group_rows(sch, o // groups), shape=[n, o, oh, ow],
                        fusable=True)


def _patch_rows(sch: Any) -> bool:
    """im2col_grouped as (image * group * output row parallel, column, i, j, channels), the
    channels vectorized 8 at a time when C/G is a multiple of 8 (schedule_cpu's elementwise
    rule would fuse all six outer loops into one and index through divisions of it: 1.5 ms
    instead of 0.1 ms for regnet's 64-channel layer at 28x28). Complete: returns True."""
    b, g, y, z, i, j, ci = sch.get_loops(sch.get_sblock("im2col_grouped"))
    sch.parallel(sch.fuse(b, g, y))
    extent = sch.get(ci).extent
    if int(extent) % 8 == 0:
        sch.vectorize(sch.split(ci, factors=[None, 8])[1])
    return True


def _group_rows(sch: Any, og: int) -> None:
    """to_nchw_grouped as (image, group, output row, channel of the group, column): a row's
    [OW, O/G] block of the matmul result stays in L1 while its channels are written. Loop
    order only: the kernel is fused with the bias and activation after it, then scheduled by
    :mod:`edgert.compiler.schedule_cpu`."""
    b, c, i, j = sch.get_loops(sch.get_sblock("to_nchw_grouped"))
    g, co = sch.split(c, factors=[None, og])
    sch.reorder(b, g, i, co, j)


def to_nhwc_grouped_te(y: Any, groups: int, ow: int) -> Any:
    """TVM TE: the batched matmul's [N*G, OH*OW, O/G] (static) as the NHWC [N, OH, OW, O]."""
    from tvm import te, tirx

    ng, p, og = (int(d) for d in y.shape)
    shape = (tirx.const(v, "int64") for v in (ng // groups, p // ow, ow, groups * og))
    return te.compute(tuple(shape),
                      lambda b, i, j, c: y[b * groups + c // og, i * ow + j, c % og],
                      name="to_nhwc_grouped")


def grouped_nhwc(rw: Any, x: Any, weight: np.ndarray, groups: int, strides: tuple[int, int],
                 padding: tuple[int, int, int, int], dilation: tuple[int, int],
                 nhwc: bool) -> Any:
    """Emit a grouped float32 convolution whose result is NHWC: ``x`` [N, H, W, C] when
    ``nhwc`` (else [N, C, H, W]; static dims), ``weight`` [O, C/G, KH, KW]; the same grouped
    im2col and batched matmul as the NCHW rewrite (see the module docstring). Returns the
    ``call_tir`` of the [N, OH, OW, O] result, which operator fusion merges with the bias and
    activation after it."""
    from edgert.compiler.schedule_conv import _kernel_call, _tiles, pad_nhwc_te, pad_te

    bb = rw.builder_
    n = int(x.ty.shape.values[0])
    c = int(x.ty.shape.values[3 if nhwc else 1])
    o = weight.shape[0]
    if not nhwc:
        x = bb.emit(_kernel_call(rw, "pad_nhwc_grouped", pad_nhwc_te, x, padding,
                                 schedule=_tiles if c % 8 == 0 else None))
    elif any(padding):
        x = bb.emit(_kernel_call(rw, "pad", pad_te, x, padding, fusable=True))
    out, oh, ow = _grouped_matmul(rw, x, weight, groups, strides, dilation)
    return _kernel_call(rw, "to_nhwc_grouped", to_nhwc_grouped_te, out, groups, ow,
                        shape=[n, oh, ow, o], fusable=True)


def _grouped_matmul(rw: Any, padded: Any, weight: np.ndarray, groups: int,
                    strides: tuple[int, int], dilation: tuple[int, int]) -> tuple[Any, int, int]:
    """Emit the grouped im2col of the padded NHWC ``padded`` [N, HP, WP, C] (static) and its
    batched matmul with ``weight`` [O, C/G, KH, KW]: ([N*G, OH*OW, O/G] float32, OH, OW)."""
    from tvm import relax

    from edgert.compiler.schedule_conv import _kernel_call

    bb = rw.builder_
    n = int(padded.ty.shape.values[0])
    _, cg, kh, kw = weight.shape
    cols = bb.emit(_kernel_call(rw, "im2col_grouped", im2col_grouped_te, padded, groups,
                                (kh, kw), strides, dilation, schedule=_patch_rows))
    oh, ow = (int(d) for d in cols.ty.shape.values[2:4])
    cols = bb.emit(relax.op.reshape(cols, [n * groups, oh * ow, kh * kw * cg]))
    return bb.emit(relax.op.matmul(cols, relax.const(grouped_weight(weight, groups, n)))), oh, ow
