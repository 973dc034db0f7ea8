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
