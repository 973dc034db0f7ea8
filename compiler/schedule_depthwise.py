"""Depthwise float32 convolutions as a kernel scheduled for CPUs.

TVM 0.27's default CPU pipeline builds a grouped ``relax.nn.conv2d`` as a scalar loop nest
over the output, padding inlined as a bounds check in every product, on one thread; MobileNets'
depthwise 3x3 and 5x5 layers spend a quarter of a batch-1 run there. :func:`depthwise_convs`
rewrites each float32 2-D convolution whose groups equal its input channels (a channel
multiplier ``M = O / C`` >= 1), with a constant weight, NCHW data and OIHW weight, before the
matmul rules run, into one kernel of its own:

- ``pad_nchw``: the input plane of the channel zero-padded, computed per output channel into a
  scratch buffer (a copy, so the products need no bounds checks);
- ``depthwise``: ``out[n, f, y, x] = sum_{i, j} xp[n, f // M, y*sh + i*dh, x*sw + j*dw] *
  w[f, 0, i, j]``, loops as (n*f parallel, y, i, j, x): the innermost loop runs along an output
  row, so LLVM vectorizes it (stride-1 reads for stride 1).

The products are summed in (i, j) order, as in the direct convolution, so results match TVM's
default build within float rounding. Integer convolutions (``ConvInteger``), grouped
convolutions with several input channels per group and activations as weights keep TVM's
default build, so integer graphs are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def depthwise_te(x: Any, w: Any, strides: tuple[int, int], padding: tuple[int, int, int, int],
                 dilation: tuple[int, int]) -> Any:
    """TVM TE: the depthwise convolution of ``x`` [N, C, H, W] float32 (static C, H, W) with
    ``w`` [O, 1, KH, KW] (O a multiple of C): [N, O, OH, OW]. ``padding``: (top, left, bottom,
    right) zeros."""
    from tvm import te

    from edgert.compiler.schedule_conv import output_size, padded_read

    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    n, c, h, wd = x.shape
    c, h, wd = int(c), int(h), int(wd)
    o, _, kh, kw = (int(d) for d in w.shape)
    mult = o // c
    oh, ow = output_size(h, wd, (kh, kw), strides, padding, dilation)
    xp = te.compute((n, c, h + top + bottom, wd + left + right),
                    lambda b, ci, y, z: padded_read(x, padding, b, ci, y, z), name="pad_nchw")
    i = te.reduce_axis((0, kh), name="i")
    j = te.reduce_axis((0, kw), name="j")
    return te.compute(
        (n, o, oh, ow),
        lambda b, f, y, z: te.sum(xp[b, f // mult, y * sh + i * dh, z * sw + j * dw]
                                  * w[f, 0, i, j], axis=[i, j]),
        name="depthwise")


def schedule_depthwise(func: Any) -> Any:
    """``func`` (the PrimFunc of :func:`depthwise_te`) scheduled: the padded plane computed per
    output channel, channels in parallel, the reduction outside the output-row loop."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, pad = sch.get_sblock("depthwise"), sch.get_sblock("pad_nchw")
    b, f, y, z, i, j = sch.get_loops(conv)
    planes = sch.fuse(b, f)
    sch.reorder(y, i, j, z)
    sch.parallel(planes)          # before decompose_reduction: TVM checks the reduction block
    sch.compute_at(pad, planes)
    sch.decompose_reduction(conv, i)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def depthwise_convs(mod: Any) -> Any:
    """Rewrite the float32 depthwise 2-D convolutions of a Relax module (before legalization)
    as the kernel of :func:`depthwise_te` (see the module docstring); others are left alone."""
    import tvm

    from edgert.compiler.relax_rewrite import rewrite_calls

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    return rewrite_calls(mod, lambda call: call.op.same_as(conv_op), _rewrite)


def _rewrite(rw: Any, call: Any) -> Any | None:
    """The kernel call replacing ``call`` (a ``relax.nn.conv2d``), or None to keep it."""
    from tvm import relax, te

    from edgert.compiler.schedule_conv import float32_conv_operands

    attrs = call.attrs
    operands = float32_conv_operands(rw, call)
    if operands is None:
        return None
    x, weight = operands
    c = int(x.ty.shape.values[1])
    groups = int(attrs.groups)
    if groups == 1 or groups != c or weight.shape[1] != 1 or weight.shape[0] % c:
        return None
    strides = tuple(int(v) for v in attrs.strides)
    dilation = tuple(int(v) for v in attrs.dilation)
    padding = tuple(int(p) for p in attrs.padding)
    key = ("depthwise", tuple(int(d) for d in x.ty.shape.values[1:]), weight.shape, strides,
           padding, dilation)
    data = te.placeholder(x.ty.shape.values, "float32", name="x")
    kernel = te.placeholder(weight.shape, "float32", name="w")
    out = depthwise_te(data, kernel, strides, padding, dilation)
    if key not in rw.kernels:
        symbol = f"depthwise{sum(k[0] == 'depthwise' for k in rw.kernels) or ''}"
        func = te.create_prim_func([data, kernel, out]).with_attr("global_symbol", symbol)
        rw.add_kernel(key, schedule_depthwise(func), symbol)
    shape = [x.ty.shape.values[0], *(int(d) for d in out.shape[1:])]
    return relax.call_tir(rw.kernels[key], [x, relax.const(weight)],
                          relax.TensorType(shape, "float32"))


LANES = 8
"""Channels per vector of the NHWC depthwise kernel (one AVX2 / two NEON registers of float32)."""


def depthwise_nhwc_te(xp: Any, w: Any, bias: Any, strides: tuple[int, int],
                      dilation: tuple[int, int], clamp: tuple[float, float],
                      prologue: tuple[Any, tuple[float, float], tuple[int, ...]] | None = None,
                      hardswish: tuple[float, float, float, float] | None = None) -> Any:
    """TVM TE: the depthwise convolution of a zero-padded NHWC input ``xp`` [N, HP, WP, C]
    float32 with ``w`` [KH, KW, C] (one output channel per input channel), plus ``bias`` [C],
    clamped to ``clamp`` (lo, hi; +-inf for no bound): [N, OH, OW, C]. With ``prologue``
    ``(in_bias [C], (lo, hi), padding)``, ``xp`` is the previous layer's result before its
    bias and activation: each tap reads ``clamp(xp + in_bias)`` inside the input and 0 on the
    ``padding`` border (top, left, bottom, right), so that neither the activated input nor its
    padded copy is written. ``hardswish`` ``(shift, lo, hi, scale)``: the clamped result ``e``
    becomes ``e * (clamp(e + shift, lo, hi) / scale)`` (PyTorch's hard-swish, in its order)."""
    from tvm import te, tirx

    from edgert.compiler.schedule_conv import _zero_outside, output_size

    (sh, sw), (dh, dw) = strides, dilation
    n, hp, wp, c = xp.shape
    hp, wp = int(hp), int(wp)
    kh, kw = (int(d) for d in w.shape[:2])
    pad = (0, 0, 0, 0) if prologue is None else prologue[2]
    oh, ow = output_size(hp, wp, (kh, kw), strides, pad, dilation)

    def tap(b: Any, yy: Any, zz: Any, f: Any) -> Any:
        if prologue is None:
            return xp[b, yy, zz, f]
        in_bias, (ilo, ihi), (top, left) = prologue[0], prologue[1], pad[:2]
        value = tirx.min(tirx.max(xp[b, yy - top, zz - left, f] + in_bias[f],
                                  tirx.const(ilo, "float32")), tirx.const(ihi, "float32"))
        return _zero_outside(value, pad, hp, wp, yy, zz)

    i = te.reduce_axis((0, kh), name="i")
    j = te.reduce_axis((0, kw), name="j")
    acc = te.compute(
        (n, oh, ow, c),
        lambda b, y, z, f: te.sum(tap(b, y * sh + i * dh, z * sw + j * dw, f) * w[i, j, f],
                                  axis=[i, j]),
        name="depthwise_nhwc")
    lo, hi = (tirx.const(v, "float32") for v in clamp)

    def activation(b: Any, y: Any, z: Any, f: Any) -> Any:
        e = tirx.min(tirx.max(acc[b, y, z, f] + bias[f], lo), hi)
        if hardswish is None:
            return e
        shift, slo, shi, scale = (tirx.const(v, "float32") for v in hardswish)
        return e * (tirx.min(tirx.max(e + shift, slo), shi) / scale)

    return te.compute((n, oh, ow, c), activation, name="epilogue")


def schedule_depthwise_nhwc(func: Any, block: str = "depthwise_nhwc") -> Any:
    """``func`` (the PrimFunc of :func:`depthwise_nhwc_te`, C a multiple of :data:`LANES`, or
    another NHWC window reduction ``block`` over (i, j) followed by a block ``epilogue``)
    scheduled: output rows (image * row) in parallel, then a tile of ``t`` output columns x
    :data:`LANES` channels held in registers over the KH x KW taps (the weight vector of a tap
    loaded once for the tile), the epilogue applied to the tile before it is stored."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, epi = sch.get_sblock(block), sch.get_sblock("epilogue")
    b, y, z, f, i, j = sch.get_loops(conv)
    ow = int(sch.get(z).extent)
    t = next(d for d in (4, 7, 3, 2, 1) if ow % d == 0)
    zo, zi = sch.split(z, factors=[None, t])
    fo, fi = sch.split(f, factors=[None, LANES])
    rows = sch.fuse(b, y)
    sch.reorder(rows, zo, fo, i, j, zi, fi)
    sch.parallel(rows)
    sch.reverse_compute_at(epi, fo)
    sch.set_scope(conv, 0, "local")
    sch.unroll(zi)
    sch.vectorize(fi)             # before decompose_reduction: TVM checks the reduction block
    init = sch.decompose_reduction(conv, i)
    sch.vectorize(sch.get_loops(init)[-1])
    ez, ef = sch.get_loops(epi)[-2:]
    sch.unroll(ez)
    sch.vectorize(ef)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def depthwise_nhwc(rw: Any, x: Any, weight: Any, strides: tuple[int, int],
                   padding: tuple[int, int, int, int], dilation: tuple[int, int],
                   bias: Any = None, clamp: tuple[float, float] = (-np.inf, np.inf),
                   prologue: tuple[Any, tuple[float, float]] | None = None,
                   hardswish: tuple[float, float, float, float] | None = None) -> Any:
    """Emit the NHWC depthwise convolution of ``x`` [N, H, W, C] float32 (static H, W, C; C a
    multiple of :data:`LANES`) with ``weight`` [C, 1, KH, KW] (numpy float32), ``bias`` [C]
    (numpy, or None) and the ``clamp`` of its activation fused in: zero-padded by
    :func:`edgert.compiler.schedule_conv.pad_te` first when ``padding`` has any, or, with
    ``prologue`` ``(in_bias [C] or None, (lo, hi))``, ``x`` taken before the previous layer's
    bias and clamp, which each tap applies (padding inside the kernel: see
    :func:`depthwise_nhwc_te`), and a ``hardswish`` after it. Returns the ``call_tir`` of the
    [N, OH, OW, C] result."""
    from tvm import relax, te

    from edgert.compiler.schedule_conv import _kernel_call, pad_te

    if any(padding) and prologue is None:
        x = rw.builder_.emit(_kernel_call(rw, "pad", pad_te, x, padding, fusable=True))
    c = int(x.ty.shape.values[3])
    w = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0).astype(np.float32))

    def vector(v: Any) -> np.ndarray:
        return np.zeros(c, np.float32) if v is None else np.asarray(v, np.float32).reshape(c)

    clamp = tuple(float(v) for v in clamp)
    in_clamp = None if prologue is None else tuple(float(v) for v in prologue[1])
    key = ("depthwise_nhwc", tuple(int(d) for d in x.ty.shape.values[1:]), w.shape, strides,
           dilation, clamp, in_clamp, padding if prologue is not None else None,
           None if hardswish is None else tuple(float(v) for v in hardswish))
    data = te.placeholder(x.ty.shape.values, "float32", name="x")
    kernel = te.placeholder(w.shape, "float32", name="w")
    shift = te.placeholder((c,), "float32", name="bias")
    params, args = [data, kernel, shift], [x, relax.const(w), relax.const(vector(bias))]
    pro = None
    if prologue is not None:
        in_shift = te.placeholder((c,), "float32", name="in_bias")
        pro = (in_shift, in_clamp, padding)
        params.append(in_shift)
        args.append(relax.const(vector(prologue[0])))
    out = depthwise_nhwc_te(data, kernel, shift, strides, dilation, clamp, pro, hardswish)
    if key not in rw.kernels:
        symbol = f"depthwise{sum(k[0] == 'depthwise_nhwc' for k in rw.kernels) or ''}"
        func = te.create_prim_func([*params, out]).with_attr("global_symbol", symbol)
        rw.add_kernel(key, schedule_depthwise_nhwc(func), symbol)
    shape = [x.ty.shape.values[0], *(int(d) for d in out.shape[1:])]
    return relax.call_tir(rw.kernels[key], args, relax.TensorType(shape, "float32"))
