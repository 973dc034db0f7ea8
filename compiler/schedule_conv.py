"""Convolutions as im2col + matmul, so they run on our matmul kernels.

TVM 0.27's default CPU pipeline builds ``relax.nn.conv2d`` as a scalar loop nest (no tiling,
no vectorization, one thread). :func:`convs_as_matmuls` rewrites each 2-D convolution with a
constant weight (NCHW data, OIHW weight, one group) before the matmul rules run:

1. ``pad_nhwc``: the input zero-padded and transposed to NHWC (one pass), then ``im2col``:
   its patches as ``cols[N, OH, OW, KH, KW, C]``, copies of KW*C contiguous elements (C with
   dilation) without bounds checks, viewed as ``[N, OH*OW, KH*KW*C]`` (a pointwise
   convolution skips im2col). Each is a kernel of its own, opaque to fusion, scheduled by
   :class:`edgert.compiler.schedule_cpu.Elementwise` (a float32 pad_nhwc with C a multiple
   of 8 as a transpose in 8 x 8 tiles: :func:`_tiles`);
2. ``cols @ Wt`` with the weight transposed at compile time to ``[KH*KW*C, O]``: float32
   convolutions become ``relax.matmul`` (the FMA kernels of
   :func:`edgert.compiler.schedule_intmatmul.schedule_float_matmuls`); integer convolutions
   whose operands are int8 (or int16 data) cast to int32, which is how ``ConvInteger`` is
   lowered, become the IntMatMul compute on the narrow operands (the ``vpmaddwd`` /
   ``vpdpbusd`` / ``sdot`` kernels);
3. ``to_nchw``: the ``[N, OH*OW, O]`` result as the convolution's ``[N, O, OH, OW]``; for
   float32, a kernel that TVM's operator fusion merges with the bias, activation (Relu, Clip,
   x * Sigmoid(x)) and residual add after it, so the output is written once, not once by
   to_nchw and again by a ``fused_add_relu`` kernel.

Integer results are exact; float ones equal the direct convolution within rounding (the
products are summed in (kh, kw, c) order). Float32 depthwise convolutions get a kernel of
their own (:mod:`edgert.compiler.schedule_depthwise`), other float32 grouped ones a batched
matmul (:mod:`edgert.compiler.schedule_grouped`); integer grouped convolutions, other layouts
and activations as weights are not rewritten here.
Measured (``benchmarks/bench_conv.py``, 2-core Zen 4, 2 threads, batch 1; TVM default ->
im2col, and onnxruntime fp32):

========================================  ===========================  =========
layer                                     fp32 (ORT fp32)              int8
========================================  ===========================  =========
3x3 64->64 at 56x56 (ResNet)              123 -> 2.92 ms (2.67)        60 -> 1.07
1x1 256->64 at 56x56                      45.5 -> 1.87 ms (1.80)       41.6 -> 1.08
16x16 stride 16, 3->192 at 224 (DeiT)     30.7 -> 0.90 ms (0.93)       3.62 -> 0.33
3x3 stride 2, 3->32 at 224 (stem)         0.91 -> 0.73 ms (0.39)       1.55 -> 0.77
========================================  ===========================  =========

With three input channels (the stem) onnxruntime stays ahead: the transposes to NHWC and
back cost as much as the K = 27 matmul. Keeping activations NHWC between convolutions (TVM's
``ConvertLayout``) measured no faster on a five-convolution chain (8.22 against 8.29 ms).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgert.compiler.relax_rewrite import bound_value


def im2col_reference(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
                     padding: tuple[int, int, int, int],
                     dilation: tuple[int, int]) -> np.ndarray:
    """The patches of ``x`` [N, C, H, W] as [N, OH, OW, KH, KW, C] (numpy; the spec of
    :func:`pad_nhwc_te` then :func:`im2col_te`). ``padding``: (top, left, bottom, right)
    zeros; (OH, OW) from :func:`output_size`."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).transpose(0, 2, 3, 1)
    n, c = x.shape[:2]
    oh, ow = output_size(*x.shape[2:], kernel, strides, padding, dilation)
    out = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                       j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
    return out


def output_size(h: int, w: int, kernel: tuple[int, int], strides: tuple[int, int],
                padding: tuple[int, int, int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """(OH, OW) of a convolution over an H x W input (``padding``: top, left, bottom, right)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    return ((h + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (w + left + right - dw * (kw - 1) - 1) // sw + 1)


def pad_nhwc_te(x: Any, padding: tuple[int, int, int, int]) -> Any:
    """TVM TE: ``x`` [N, C, H, W] (static C, H, W) zero-padded and transposed to
    [N, H + top + bottom, W + left + right, C]: one pass over the input, so that
    :func:`im2col_te` copies contiguous runs without bounds checks."""
    from tvm import te

    top, left, bottom, right = padding
    n, c, h, w = x.shape
    h, w = int(h), int(w)
    return te.compute((n, h + top + bottom, w + left + right, c),
                      lambda b, y, z, ci: padded_read(x, padding, b, ci, y, z), name="pad_nhwc")


def padded_read(x: Any, padding: tuple[int, int, int, int], b: Any, ci: Any, y: Any,
                z: Any) -> Any:
    """TIR: element (y, z) of ``x`` [N, C, H, W] (static H, W; any dtype) padded with zeros by
    ``padding`` (top, left, bottom, right): ``x[b, ci, y - top, z - left]`` inside, 0 on the
    border (bounds tested only on the sides that have padding)."""
    top, left = padding[:2]
    h, w = int(x.shape[2]), int(x.shape[3])
    return _zero_outside(x[b, ci, y - top, z - left], padding, h, w, y, z)


def pad_te(x: Any, padding: tuple[int, int, int, int]) -> Any:
    """TVM TE: ``x`` [N, H, W, C] (NHWC, static H, W) zero-padded to
    [N, H + top + bottom, W + left + right, C] (the layout :func:`im2col_te` reads)."""
    from tvm import te

    top, left, bottom, right = padding
    n, h, w, c = x.shape
    h, w = int(h), int(w)
    return te.compute((n, h + top + bottom, w + left + right, c),
                      lambda b, y, z, ci: _zero_outside(x[b, y - top, z - left, ci], padding,
                                                        h, w, y, z), name="pad")


def _zero_outside(value: Any, padding: tuple[int, int, int, int], h: int, w: int, y: Any,
                  z: Any) -> Any:
    """TIR: ``value`` (the read at padded position (y, z) of an H x W plane) where (y, z) lies
    inside the plane, 0 on the ``padding`` border (tested only on sides that have padding)."""
    from tvm import tirx

    top, left, bottom, right = padding
    inside = []
    if top or bottom:
        inside += [y >= top, y < top + h]
    if left or right:
        inside += [z >= left, z < left + w]
    zero = tirx.const(0, getattr(value, "dtype", None) or str(value.ty))
    return tirx.if_then_else(tirx.all(*inside), value, zero) if inside else value


def im2col_te(xp: Any, kernel: tuple[int, int], strides: tuple[int, int],
              dilation: tuple[int, int]) -> Any:
    """TVM TE im2col of a padded NHWC input ``xp`` [N, HP, WP, C] (:func:`pad_nhwc_te`):
    [N, OH, OW, KH, KW, C] (as :func:`im2col_reference`)."""
    from tvm import te

    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    n, hp, wp, c = xp.shape
    oh, ow = output_size(int(hp), int(wp), kernel, strides, (0, 0, 0, 0), dilation)
    return te.compute((n, oh, ow, kh, kw, c),
                      lambda b, y, z, i, j, ci: xp[b, y * sh + i * dh, z * sw + j * dw, ci],
                      name="im2col")


def convs_as_matmuls(mod: Any) -> Any:
    """Rewrite the 2-D convolutions of a Relax module (before legalization) as im2col +
    matmul (see the module docstring); others are left alone."""
    import tvm

    from edgert.compiler.relax_rewrite import rewrite_calls

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    return rewrite_calls(mod, lambda call: call.op.same_as(conv_op), _rewrite)


def _rewrite(rw: Any, call: Any) -> Any | None:
    """The im2col + matmul replacing ``call`` (a ``relax.nn.conv2d``), or None to keep it."""
    from tvm import relax, tirx

    attrs = call.attrs
    if (attrs.groups != 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
            or attrs.out_layout != "NCHW"):
        return None
    x, w = call.args
    weight = _constant(rw, w)
    if weight is None or weight.ndim != 4:
        return None
    x_ty = x.ty
    if not isinstance(x_ty.shape, relax.ShapeExpr) or any(
            not isinstance(d, tirx.IntImm) for d in x_ty.shape.values[1:]):
        return None
    out_dtype = str(call.ty.dtype)
    if out_dtype == "float32" and str(x_ty.dtype) == "float32" and weight.dtype == np.float32:
        narrow, w_dtype = x, np.float32
    elif out_dtype == "int32" and weight.dtype.kind == "i" and _fits(weight, np.int8):
        narrow, w_dtype = _narrow_source(rw, x), np.int8
        if narrow is None:
            return None
    else:
        return None

    strides, dilation = (tuple(int(v) for v in attrs.strides),
                         tuple(int(v) for v in attrs.dilation))
    padding = tuple(int(p) for p in attrs.padding)
    padded = rw.builder_.emit(_kernel_call(
        rw, "pad_nhwc", pad_nhwc_te, narrow, padding,
        schedule=_tiles if w_dtype == np.float32 and weight.shape[1] % 8 == 0 else None))
    out, ow = patch_matmul(rw, padded, weight.astype(w_dtype), strides, dilation)
    return _kernel_call(rw, "to_nchw", to_nchw_te, out, ow, schedule=_rows_outside,
                        fusable=w_dtype == np.float32)


def conv_nhwc(rw: Any, x: Any, weight: np.ndarray, strides: tuple[int, int],
              padding: tuple[int, int, int, int], dilation: tuple[int, int],
              nhwc: bool) -> Any:
    """Emit a float32 convolution (one group) whose result stays NHWC: ``x`` [N, H, W, C] when
    ``nhwc`` (zero-padded by the ``pad`` kernel when ``padding`` has any, used as it is
    otherwise), else [N, C, H, W] (``pad_nhwc``); ``weight`` [O, C, KH, KW] float32. Returns
    the [N, OH, OW, O] result (a view of the matmul's [N, OH*OW, O])."""
    from tvm import relax

    bb = rw.builder_
    if not nhwc:
        padded = bb.emit(_kernel_call(rw, "pad_nhwc", pad_nhwc_te, x, padding,
                                      schedule=_tiles if weight.shape[1] % 8 == 0 else None))
    elif any(padding):
        padded = bb.emit(_kernel_call(rw, "pad", pad_te, x, padding, fusable=True))
    else:
        padded = x
    out, ow = patch_matmul(rw, padded, weight, strides, dilation)
    n, p, o = out.ty.shape.values
    return relax.op.reshape(out, [n, int(p) // ow, ow, o])


def patch_matmul(rw: Any, padded: Any, weight: np.ndarray, strides: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[Any, int]:
    """Emit ``im2col(padded) @ Wt`` for a padded NHWC input ``padded`` [N, HP, WP, C] (float32,
    or int8 / int16 with an int8 ``weight``) and ``weight`` [O, C, KH, KW] (its dtype: the
    matmul's right operand): the [N, OH*OW, O] result (float32 or int32) and OW. A pointwise
    convolution (1x1, stride 1) uses ``padded`` itself as the matrix."""
    from tvm import relax

    o, c, kh, kw = weight.shape
    bb = rw.builder_
    if (kh, kw, *strides) == (1, 1, 1, 1):          # pointwise: the NHWC input is the matrix
        cols = padded
    else:
        cols = bb.emit(_kernel_call(rw, "im2col", im2col_te, padded, (kh, kw), strides,
                                    dilation, schedule=_runs if dilation[1] == 1 else None))
    n, oh, ow = cols.ty.shape.values[:3]
    cols = bb.emit(relax.op.reshape(cols, [n, oh * ow, kh * kw * c]))
    # weight rows in the (kh, kw, c) order of the columns
    w_t = relax.const(np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(o, -1).T))
    if weight.dtype == np.float32:
        return bb.emit(relax.op.matmul(cols, w_t)), int(ow)
    from edgert.compiler.lower_int import emit_int_matmul

    return emit_int_matmul(bb, cols, w_t), int(ow)


def to_nchw_te(y: Any, ow: int) -> Any:
    """TVM TE: the matmul's [N, OH * OW, O] as the convolution's [N, O, OH, OW]."""
    from tvm import te, tirx

    n, p, o = y.shape
    rows, cols = (tirx.const(v, "int64") for v in (int(p) // ow, ow))  # int64 like Relax's
    return te.compute((n, o, rows, cols), lambda b, c, i, j: y[b, i * ow + j, c],
                      name="to_nchw")


def _runs(sch: Any) -> None:
    """im2col's (kernel column, channel) loops as one: without dilation along W, a patch row's
    KW * C elements are contiguous in the padded NHWC input (9 for a 3x3 RGB stem, against
    runs of C = 3)."""
    *_, j, ci = sch.get_loops(sch.get_sblock("im2col"))
    sch.fuse(j, ci)


def _tiles(sch: Any) -> bool:
    """pad_nhwc (float32, C a multiple of 8) as a transpose in 8 x 8 tiles: (n * row parallel,
    column tile, channel tile, column, 8 channels vectorized), so that a tile's reads stay in 8
    cache lines of the NCHW input (the default schedule, channels innermost, gathers 8 planes
    per vector store). A 64 x 56 x 56 input, 2 threads: 0.31 -> 0.15 ms. Complete: returns
    True."""
    b, y, z, c = sch.get_loops(sch.get_sblock("pad_nhwc"))
    co, ci = sch.split(c, factors=[None, 8])
    zo, zi = sch.split(z, factors=[None, 8])
    sch.reorder(b, y, zo, co, zi, ci)
    sch.parallel(sch.fuse(b, y))
    sch.vectorize(ci)
    return True


def _rows_outside(sch: Any) -> None:
    """to_nchw's loops as (n, output row, channel, column): a row's [OW, O] block of the
    matmul result stays in L1 while its channels are written (in the compute's order,
    channel outside, every channel would stream the whole result again)."""
    b, c, i, j = sch.get_loops(sch.get_sblock("to_nchw"))
    sch.reorder(b, i, c, j)


def _kernel_call(rw: Any, name: str, compute: Any, x: Any, *args: Any,
                 schedule: Any = None, shape: list | None = None, fusable: bool = False) -> Any:
    """``call_tir`` of ``compute(x_placeholder, *args)`` as a kernel of its own (one PrimFunc
    per name, input type and ``args``), opaque to operator fusion: fused with the reshape
    after it, im2col's loops would index through divisions of the flattened position, and
    the padding would be inlined into im2col. ``shape``: the output's, when its first dim is
    not the input's. ``fusable``: an injective kernel that operator fusion may merge with the
    elementwise ops after it (to_nchw with a convolution's bias, activation and residual add:
    one pass over the output instead of two)."""
    from tvm import relax, te

    key = (name, str(x.ty.dtype), tuple(int(d) for d in x.ty.shape.values[1:]), args)
    data = te.placeholder(x.ty.shape.values, str(x.ty.dtype), name="x")
    out = compute(data, *args)
    if key not in rw.kernels:
        symbol = f"{name}{sum(k[0] == name for k in rw.kernels) or ''}"
        func = te.create_prim_func([data, out]).with_attr("global_symbol", symbol)
        if schedule is not None:   # loop order only (schedule_cpu still applies) unless
            from tvm import s_tir  # the schedule says it is complete

            sch = s_tir.Schedule(func)
            complete = schedule(sch)
            func = sch.mod["main"]
            if complete:
                func = func.with_attr("tirx.is_scheduled", True)
        rw.add_kernel(key, func, symbol)
        if fusable:                # kInjective instead of add_kernel's kOpaque
            gv = rw.kernels[key]
            rw.builder_.update_func(gv, rw.builder_.get()[gv].with_attr("op_pattern", 2))
    if shape is None:
        shape = [x.ty.shape.values[0], *(int(d) for d in out.shape[1:])]
    return relax.call_tir(rw.kernels[key], [x], relax.TensorType(shape, str(x.ty.dtype)))


def float32_conv_operands(rw: Any, call: Any, kernel_layout: str = "OIHW",
                          static_batch: bool = False) -> tuple[Any, np.ndarray] | None:
    """``(x, weight)`` of a float32 NCHW convolution ``call`` (``relax.nn.conv2d`` or
    ``conv2d_transpose``) whose weight is a constant float32 4-D array in ``kernel_layout`` and
    whose input has static C, H, W (and N with ``static_batch``); None for any other."""
    from tvm import relax, tirx

    attrs = call.attrs
    if (attrs.data_layout != "NCHW" or attrs.kernel_layout != kernel_layout
            or attrs.out_layout != "NCHW" or str(call.ty.dtype) != "float32"):
        return None
    x, w = call.args
    weight = _constant(rw, w)
    dims = x.ty.shape.values if isinstance(x.ty.shape, relax.ShapeExpr) else None
    if (weight is None or weight.ndim != 4 or weight.dtype != np.float32
            or str(x.ty.dtype) != "float32" or dims is None
            or any(not isinstance(d, tirx.IntImm) for d in dims[0 if static_batch else 1:])):
        return None
    return x, weight


def _constant(rw: Any, expr: Any) -> np.ndarray | None:
    """The value of ``expr`` when it is a constant, possibly through a cast (numpy, in the
    cast's dtype), else None."""
    import tvm

    expr = bound_value(rw, expr)
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if _is_astype(expr):
        inner = _constant(rw, expr.args[0])
        return None if inner is None else inner.astype(str(expr.attrs.dtype))
    return None


def _narrow_source(rw: Any, expr: Any) -> Any | None:
    """The int8 or int16 tensor that ``expr`` (int32) was cast from, else None."""
    bound = bound_value(rw, expr)
    if _is_astype(bound) and str(bound.args[0].ty.dtype) in ("int8", "int16"):
        return bound.args[0]
    return None


def _is_astype(expr: Any) -> bool:
    import tvm
    from tvm import relax

    return isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.astype"))


def _fits(values: np.ndarray, dtype: type) -> bool:
    info = np.iinfo(dtype)
    return values.size == 0 or (values.min() >= info.min and values.max() <= info.max)
