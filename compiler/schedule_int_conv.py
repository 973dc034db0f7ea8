"""Integer grouped and depthwise convolutions as kernels scheduled for CPUs, and the Requant
after an integer convolution as its epilogue.

TVM 0.27's default CPU pipeline builds a grouped ``relax.nn.conv2d`` as a scalar loop nest on
one thread; in an integer-only MobileNet-V2 its depthwise layers (``ConvInteger`` with
``group = C``, lowered as int8 operands cast to int32, then ``conv2d``) took a quarter of the
run. :func:`int_grouped_convs` rewrites each 2-D convolution whose groups equal its input
channels (a channel multiplier ``O / C`` >= 1), int32 out, operands cast to int32 from int8
(or int16 data), a constant weight, NCHW data and OIHW weight, before the matmul rules run,
into one kernel of its own (float32 ones are :mod:`edgert.compiler.schedule_depthwise`'s):

- ``pad_int``: the plane of the output channel's input, narrow (int8/int16), zero-padded
  into a scratch plane as zeros then a copy of the rows (with the bounds check in one pass
  it ran byte by byte, as long as the convolution itself; TVM's ``decompose_padding``
  declines an int64 batch, so a symbolic batch keeps the one pass);
- ``int_conv``: ``out[n, f, y, x] = sum_{i, j} int32(xp[n, f // M, y*sh + i*dh, x*sw + j*dw])
  * int32(w[f, 0, i, j])``, loops as (n*f parallel, y, i, j, x): the innermost loop runs
  along an output row of int32 accumulators, which LLVM vectorizes (sign-extending loads,
  ``vpmulld``, ``vpaddd`` on AVX2);
- the epilogue: a Requant of the convolution (``edgert.Requant``, per output channel or per
  tensor), after a constant per-channel bias ``Add`` or not, is computed row by row from the
  accumulators in the same kernel (:func:`edgert.ops.requant.tvm.requant_value`), so the int32
  result never reaches memory and the next layer reads the narrow output.

The same Requant after an im2col convolution (:mod:`edgert.compiler.schedule_conv`: its
``to_nchw`` of the int32 matmul result, then the bias ``Add`` and the Requant, two passes over
an int32 NCHW tensor) becomes one kernel, ``to_nchw_requant``, which reads the matmul result
and writes the narrow NCHW output
(:func:`edgert.compiler.schedule_int_nhwc.to_nchw_requant_te`).

The arithmetic is int32 modulo 2**32 like TVM's default build of the same conv2d, then the
Requant's int64 arithmetic, so results are bit-identical to it (and to the direct
convolution in int64 wherever the int32 bound holds, which the quantizer proves).

Grouped convolutions with several input channels a group (regnet's 16-channel groups) are a
matmul per group instead (the depthwise kernel above, groups along output rows, ran them no
faster than TVM's default build: rows of 7-28 outputs are too short to vectorize):

- ``pad_nhwc_grouped`` (``schedule_conv``'s ``pad_nhwc``), then ``im2col_groups``: each
  group's patches as ``cols[G, N, OH, OW, KH, KW, C/G]``
  (:func:`~edgert.compiler.schedule_grouped.im2col_grouped_te`, groups first) viewed as ``[G, N*OH*OW,
  KH*KW*C/G]``: groups first, so the batch may stay symbolic and the weight is one
  ``[G, K, O/G]`` constant (``schedule_grouped.grouped_weight``);
- the batched IntMatMul ``cols @ Wg``, which :mod:`edgert.compiler.schedule_intmatmul` runs
  on its ``vpmaddwd`` / ``sdot`` kernel with the groups as the batch (in parallel);
- ``to_nchw_grouped_int`` of the ``[G, N, OH*OW, O/G]`` result, or with the bias and Requant
  after it, ``to_nchw_requant`` (one pass to the narrow NCHW output).

A depthwise convolution (multiplier 1) that reads a pointwise convolution's requantized
matmul result runs on NHWC data instead, between the two matmuls
(:mod:`edgert.compiler.schedule_int_nhwc`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgert.compiler.int_epilogue import Epilogue, epilogue_of, placeholders


def int_conv_reference(x: np.ndarray, w: np.ndarray, groups: int, strides: tuple[int, int],
                       padding: tuple[int, int, int, int],
                       dilation: tuple[int, int]) -> np.ndarray:
    """The grouped convolution of ``x`` [N, C, H, W] (int8/int16) with ``w`` [O, C/G, KH, KW]
    (int8) as int32 [N, O, OH, OW] (numpy, summed in int64 then wrapped to int32; the spec of
    :func:`int_conv_te`). ``padding``: (top, left, bottom, right) zeros."""
    from edgert.compiler.schedule_conv import output_size

    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh, ow = output_size(h, wd, (kh, kw), strides, padding, dilation)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out = np.zeros((n, o, oh, ow), np.int64)
    for f in range(o):
        g = f // og
        for ci in range(cg):
            for i in range(kh):
                for j in range(kw):
                    rows = xp[:, g * cg + ci, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                              j * dw:j * dw + sw * (ow - 1) + 1:sw]
                    out[:, f] += rows * int(w[f, ci, i, j])
    return out.astype(np.int32)


def int_conv_te(x: Any, w: Any, groups: int, strides: tuple[int, int],
                padding: tuple[int, int, int, int], dilation: tuple[int, int],
                epilogue: Epilogue | None = None) -> Any:
    """TVM TE: the grouped convolution of ``x`` [N, C, H, W] int8/int16 (static C, H, W) with
    ``w`` [O, C/G, KH, KW] int8: int32 [N, O, OH, OW] (as :func:`int_conv_reference`), or with
    an ``epilogue``, the Requant of it plus the bias (in ``epilogue.to``)."""
    from tvm import te

    from edgert.compiler.schedule_conv import output_size, padded_read

    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    n, c, h, wd = x.shape
    c, h, wd = int(c), int(h), int(wd)
    o, cg, kh, kw = (int(d) for d in w.shape)
    og = o // groups
    oh, ow = output_size(h, wd, (kh, kw), strides, padding, dilation)
    xp = te.compute((n, c, h + top + bottom, wd + left + right),
                    lambda b, ci, y, z: padded_read(x, padding, b, ci, y, z), name="pad_int")
    ch = te.reduce_axis((0, cg), name="ch")
    i = te.reduce_axis((0, kh), name="i")
    j = te.reduce_axis((0, kw), name="j")
    acc = te.compute(
        (n, o, oh, ow),
        lambda b, f, y, z: te.sum(
            xp[b, f // og * cg + ch, y * sh + i * dh, z * sw + j * dw].astype("int32")
            * w[f, ch, i, j].astype("int32"), axis=[ch, i, j]),
        name="int_conv")
    if epilogue is None:
        return acc
    ep = epilogue
    return te.compute((n, o, oh, ow), lambda b, f, y, z: ep.value(acc[b, f, y, z], f),
                      name="int_conv_requant")


def schedule_int_conv(func: Any, epilogue: bool) -> Any:
    """``func`` (the PrimFunc of :func:`int_conv_te`, depthwise) scheduled: output channels in
    parallel, the reduction outside the output-row loop, the padded plane computed per output
    channel; with an ``epilogue``, a row of accumulators per output row, requantized after
    it."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, pad = sch.get_sblock("int_conv"), sch.get_sblock("pad_int")
    b, f, y, z, ch, i, j = sch.get_loops(conv)
    planes = sch.fuse(b, f)
    sch.reorder(ch, i, j, z)
    sch.parallel(planes)          # before decompose_reduction: TVM checks the reduction block
    if epilogue:
        sch.reverse_compute_at(sch.get_sblock("int_conv_requant"), y)
    sch.compute_at(pad, planes)
    rows = sch.get_loops(pad)[1]
    if sch.can_decompose_padding(pad, rows):   # zeros, then a plain copy of the rows (one
        sch.decompose_padding(pad, rows)       # pass with a bounds check per byte: scalar)
    sch.decompose_reduction(conv, ch)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def int_grouped_convs(mod: Any) -> Any:
    """Rewrite the integer grouped 2-D convolutions of a Relax module (before legalization):
    depthwise ones as the kernel of :func:`int_conv_te`, others as a batched matmul over the
    groups (see the module docstring), with the Requant that follows one (after a constant
    bias) as its epilogue; others are left alone."""
    import tvm
    from tvm import tirx

    from edgert.compiler.relax_rewrite import rewrite_calls
    from edgert.ops.requant.tvm import OP_ATTR, OP_NAME

    requants = {gv.name_hint: {k: f.attrs[f"edgert.requant.{k}"] for k in _REQUANT_KWARGS}
                for gv, f in mod.functions_items()
                if isinstance(f, tirx.PrimFunc) and f.attrs is not None
                and str(f.attrs.get(OP_ATTR, "")) == OP_NAME}
    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    found = _Found()

    def match(call: Any) -> bool:
        return call.op.same_as(conv_op) or (
            call.op.same_as(call_tir_op) and isinstance(call.args[0], tvm.ir.GlobalVar)
            and (call.args[0].name_hint in requants
                 or call.args[0].name_hint.startswith("pad_nhwc")))

    def rewrite(rw: Any, call: Any) -> Any | None:
        if call.op.same_as(conv_op):
            return _rewrite_conv(rw, call, found)
        if call.args[0].name_hint not in requants:
            return _nhwc_for_pointwise(rw, call, found)
        new = _rewrite_requant(rw, call, requants[call.args[0].name_hint], found)
        if new is not None:
            found.consumed.add(_source(rw, call)[0].args[0].name_hint)
        return new

    new = rewrite_calls(mod, match, rewrite)
    return _without_unused(new, found.consumed) if new is not mod else mod


def _without_unused(mod: Any, names: Any) -> Any:
    """``mod`` without the kernels of ``names`` that no Relax function calls any more (those
    a Requant epilogue replaced; dead-code elimination keeps PrimFuncs with a global symbol)."""
    from tvm import relax

    used = {gv.name_hint for _, f in mod.functions_items() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    for gv, _ in list(mod.functions_items()):
        if gv.name_hint in names and gv.name_hint not in used:
            del mod[gv]
    return mod


_REQUANT_KWARGS = ("lo", "hi", "to", "axis")


@dataclass(frozen=True)
class _Geometry:
    """A grouped convolution's attributes (padding: top, left, bottom, right)."""

    groups: int
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]


@dataclass
class _Found:
    """The kernels one rewrite emitted, by symbol, that a later call may build on."""

    geometries: dict[str, _Geometry] = field(default_factory=dict)  # depthwise, no epilogue
    grouped: dict[str, int] = field(default_factory=dict)   # to_nchw_grouped_int: groups
    rows: dict[str, tuple] = field(default_factory=dict)    # to_nchw_requant: (ow, ep_key,
    #                                                         groups)
    nhwc: dict[str, tuple] = field(default_factory=dict)    # int_dw_nhwc: (geometry, ep_key,
    consumed: set[str] = field(default_factory=set)         # NHWC out); kernels replaced


def _rewrite_conv(rw: Any, call: Any, found: _Found) -> Any | None:
    """The kernel call replacing ``call`` (a ``relax.nn.conv2d``), or None to keep it."""
    from tvm import relax, tirx

    from edgert.compiler.schedule_conv import _constant, _fits, _narrow_source

    attrs = call.attrs
    groups = int(attrs.groups)
    if (groups == 1 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
            or attrs.out_layout != "NCHW" or str(call.ty.dtype) != "int32"):
        return None
    x, w = call.args
    weight = _constant(rw, w)
    if weight is None or weight.ndim != 4 or weight.dtype.kind != "i" or not _fits(weight, np.int8):
        return None
    narrow = _narrow_source(rw, x)
    if narrow is None:
        return None
    x_ty = narrow.ty
    if not isinstance(x_ty.shape, relax.ShapeExpr) or any(
            not isinstance(d, tirx.IntImm) for d in x_ty.shape.values[1:]):
        return None
    c = int(x_ty.shape.values[1])
    o, cg = weight.shape[:2]
    if cg * groups != c or o % groups:
        return None
    geometry = _Geometry(groups, tuple(int(v) for v in attrs.strides),
                         tuple(int(p) for p in attrs.padding),
                         tuple(int(v) for v in attrs.dilation))
    source = _bound_kernel(rw, narrow, found.rows)
    if cg == 1 and o == c and source is not None and found.rows[source.args[0].name_hint][2] == 1:
        # the requantized matmul result of a pointwise convolution: read it NHWC
        found.consumed.add(source.args[0].name_hint)
        w32 = relax.const(np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)).astype(np.int32))
        return _emit_dw_nhwc(rw, [_emit_requant_nhwc(rw, source, found), w32], geometry, None,
                             False, found)
    if cg == 1:                            # depthwise (a channel multiplier O / C)
        return _emit(rw, narrow, weight.astype(np.int8), geometry, None, found)
    return _emit_grouped(rw, narrow, weight.astype(np.int8), geometry, found)


def _rewrite_requant(rw: Any, call: Any, kwargs: dict[str, Any], found: _Found) -> Any | None:
    """The kernel with ``call`` (a Requant ``call_tir`` of ``q``, or of ``q`` plus a constant
    bias) as its epilogue, where ``q`` is one of this module's depthwise kernels or
    ``to_nchw_grouped_int`` without epilogue, or :mod:`edgert.compiler.schedule_conv`'s
    ``to_nchw`` of an int32 matmul; or None to keep it."""
    import tvm
    from tvm import relax

    from edgert.compiler.schedule_conv import _constant

    fields = call.args[1].fields
    if len(fields) != 3:                # (q, multiplier, shift) only; not a fused Requant
        return None
    _, m_expr, e_expr = fields
    m, e = _constant(rw, m_expr), _constant(rw, e_expr)
    if m is None or e is None or m.size != e.size:
        return None
    q, bias = _source(rw, call)
    if not (isinstance(q, relax.Call) and isinstance(q.args[0], tvm.ir.GlobalVar)
            and len(q.ty.shape.values) == 4):
        return None
    name = q.args[0].name_hint
    geometries, grouped = found.geometries, found.grouped
    if name not in geometries and name not in grouped and name not in found.nhwc and not (
            name.startswith("to_nchw") and len(q.args[1].fields) == 1
            and str(q.args[1].fields[0].ty.dtype) == "int32"):
        return None
    o = int(q.ty.shape.values[1])
    if bias is not None:
        if bias.dtype != np.int32 or not (bias.size == 1 or (
                bias.size == o and bias.ndim >= 3 and bias.shape[-3] == o)):
            return None                     # not one value per output channel
        bias = np.broadcast_to(bias.reshape(-1), (o,)).astype(np.int32)
    if m.size != 1 and (m.size != o or int(kwargs["axis"]) not in (1, -3)):
        return None
    epilogue = (bias, m.reshape(-1), e.reshape(-1).astype(np.int64), int(kwargs["lo"]),
                int(kwargs["hi"]), str(kwargs["to"]))
    if name in geometries:
        narrow, w_const = q.args[1].fields
        return _emit(rw, narrow, _constant(rw, w_const), geometries[name], epilogue, found)
    if name in found.nhwc:
        _, _, values, ep_key = epilogue_of(epilogue)
        return _emit_dw_nhwc(rw, [*q.args[1].fields[:2], *map(_const, values)],
                             found.nhwc[name][0], ep_key, False, found)
    return _emit_to_nchw(rw, q.args[1].fields[0], int(q.ty.shape.values[3]), epilogue,
                         grouped.get(name, 1), found)


def _source(rw: Any, call: Any) -> tuple[Any, np.ndarray | None]:
    """What the Requant ``call`` requantizes, through a constant ``Add`` (then also the
    constant, numpy), else ``(q, None)``; ``q`` the expression bound to the variable."""
    import tvm
    from tvm import relax

    from edgert.compiler.relax_rewrite import bound_value
    from edgert.compiler.schedule_conv import _constant

    q = bound_value(rw, call.args[1].fields[0])
    if isinstance(q, relax.Call) and q.op.same_as(tvm.ir.Op.get("relax.add")):
        for conv_side, bias_side in ((0, 1), (1, 0)):
            bias = _constant(rw, q.args[bias_side])
            if bias is not None:
                return bound_value(rw, q.args[conv_side]), bias
    return q, None


def _call(rw: Any, key: tuple, args: list, consts: list, shape: list, dtype: str) -> Any:
    """``call_tir`` of the kernel ``rw.kernels[key]`` on ``args`` then the ``consts``."""
    from tvm import relax

    return relax.call_tir(rw.kernels[key], [*args, *map(_const, consts)],
                          relax.TensorType(shape, dtype))


def _const(value: np.ndarray) -> Any:
    from tvm import relax

    return relax.const(value, str(value.dtype))              # (int64 stays int64)


def _emit(rw: Any, narrow: Any, weight: np.ndarray, geometry: _Geometry,
          epilogue: tuple | None, found: _Found) -> Any:
    """``call_tir`` of the kernel (added once per signature) on ``narrow`` and the constant
    int8 ``weight``, with the ``epilogue`` (numpy bias or None, m, e; lo, hi, to) or not."""
    from tvm import te, tirx

    g = geometry
    x_ty = narrow.ty
    dtype = str(x_ty.dtype)
    # static dims as int32: with an int64 batch, decompose_padding declines the pad
    dims = [int(d) if isinstance(d, tirx.IntImm) else d for d in x_ty.shape.values]
    data = te.placeholder(dims, dtype, name="x")
    kernel = te.placeholder(weight.shape, "int8", name="w")
    inputs, consts, ep, ep_key = [data, kernel], [weight.astype(np.int8)], None, None
    if epilogue is not None:
        ep, phs, values, ep_key = epilogue_of(epilogue)
        inputs, consts = inputs + phs, consts + values
    out = int_conv_te(data, kernel, g.groups, g.strides, g.padding, g.dilation, ep)
    key = ("int_conv", dtype, tuple(int(d) for d in x_ty.shape.values[1:]), weight.shape, g,
           ep_key)
    if key not in rw.kernels:
        symbol = f"int_conv{sum(k[0] == 'int_conv' for k in rw.kernels) or ''}"
        func = te.create_prim_func([*inputs, out]).with_attr("global_symbol", symbol)
        rw.add_kernel(key, schedule_int_conv(func, epilogue=ep is not None), symbol)
        if ep is None:           # a Requant after it may become its epilogue
            found.geometries[rw.kernels[key].name_hint] = g
    shape = [x_ty.shape.values[0], *(int(d) for d in out.shape[1:])]
    return _call(rw, key, [narrow], consts, shape, str(out.dtype))


def _emit_to_nchw(rw: Any, y: Any, ow: int, epilogue: tuple | None, groups: int,
                  found: _Found) -> Any:
    """``call_tir`` of :func:`~edgert.compiler.schedule_int_nhwc.to_nchw_requant_te` on ``y``
    (the int32 matmul result) with the ``epilogue`` (or without: int32 out): one pass from the matmul's result to the narrow NCHW
    output, where ``to_nchw`` then the Requant wrote and read the int32 NCHW result once more.
    Loops as (n * output row in parallel, channel, column), like ``to_nchw``: a row's block of
    the matmul result stays in cache while its channels are written (TVM's elementwise rule
    left this loop nest on one thread). The Requant runs per output row before the
    transpose, along the contiguous channels, 8 int32 lanes a vector (requantized along the
    columns, as the transpose reads them, each vector was a gather: mobilenet_v2's 96 x
    112 x 112 took 1.2-2x as long)."""
    from tvm import s_tir, te

    from edgert.compiler import schedule_int_nhwc as nhwc

    ep, phs, values, ep_key = (None, [], [], None) if epilogue is None else \
        epilogue_of(epilogue)
    data = te.placeholder(y.ty.shape.values, "int32", name="y")
    out = nhwc.to_nchw_requant_te(data, ow, ep, groups)
    name = out.op.name
    batch_axis = 0 if groups == 1 else 1
    dims = y.ty.shape.values
    key = (name, tuple(int(d) for a, d in enumerate(dims) if a != batch_axis), ow, ep_key,
           groups)
    if key not in rw.kernels:
        symbol = f"{name}{sum(k[0] == name for k in rw.kernels) or ''}"
        sch = s_tir.Schedule(te.create_prim_func([data, *phs, out])
                             .with_attr("global_symbol", symbol))
        b, c, i, j = sch.get_loops(sch.get_sblock(name))
        sch.reorder(b, i, c, j)
        row = sch.fuse(b, i)
        sch.parallel(row)
        if ep is not None:
            rows = sch.get_sblock("requant_rows")
            sch.compute_at(rows, row)
            channels = sch.get_loops(rows)[-1]
            if int(sch.get(channels).extent) % 8 == 0:
                sch.vectorize(sch.split(channels, factors=[None, 8])[1])
        rw.add_kernel(key, sch.mod["main"].with_attr("tirx.is_scheduled", True), symbol)
        if ep is not None:       # a convolution after it may read its result NHWC
            found.rows[rw.kernels[key].name_hint] = (ow, ep_key, groups)
    n = dims[batch_axis]
    return _call(rw, key, [y], values, [n, *(int(d) for d in out.shape[1:])], str(out.dtype))


def _emit_grouped(rw: Any, narrow: Any, weight: np.ndarray, geometry: _Geometry,
                  found: _Found) -> Any:
    """The kernels of a grouped (not depthwise) convolution of ``narrow`` (int8/int16 NCHW,
    static C, H, W) with the constant int8 ``weight`` [O, C/G, KH, KW]: padded NHWC input,
    ``im2col_groups``, the batched IntMatMul over the groups, ``to_nchw_grouped_int`` (see the
    module docstring); its symbol goes into ``found.grouped`` so that a Requant after it becomes
    ``to_nchw_requant``."""
    from tvm import relax

    from edgert.compiler import schedule_int_nhwc as nhwc
    from edgert.compiler.lower_int import emit_int_matmul
    from edgert.compiler.schedule_conv import _kernel_call, output_size, pad_nhwc_te
    from edgert.compiler.schedule_grouped import grouped_weight, im2col_grouped_te

    def im2col_groups_te(*args: Any) -> Any:
        return im2col_grouped_te(*args, groups_first=True)

    g = geometry
    o, cg, kh, kw = weight.shape
    n, _, h, w = narrow.ty.shape.values
    oh, ow = output_size(int(h), int(w), (kh, kw), g.strides, g.padding, g.dilation)
    bb = rw.builder_
    source = _bound_kernel(rw, narrow, found.rows)
    if source is not None:      # a requantized matmul result: padded NHWC in one pass
        found.consumed.add(source.args[0].name_hint)
        padded = _emit_requant_nhwc(rw, source, found, g.padding)
    else:
        padded = bb.emit(_kernel_call(rw, "pad_nhwc_grouped", pad_nhwc_te, narrow, g.padding))
    cols = bb.emit(_kernel_call(rw, "im2col_groups", im2col_groups_te, padded, g.groups,
                                (kh, kw), g.strides, g.dilation,
                                schedule=nhwc.group_patch_rows,
                                shape=[g.groups, n, oh, ow, kh, kw, cg]))
    cols = bb.emit(relax.op.reshape(cols, [g.groups, n * oh * ow, kh * kw * cg]))
    out = emit_int_matmul(bb, cols, relax.const(grouped_weight(weight, g.groups, 1)))
    out = bb.emit(relax.op.memory.view(out, relax.ShapeExpr([g.groups, n, oh * ow,
                                                             o // g.groups])))
    call = _emit_to_nchw(rw, out, ow, None, g.groups, found)
    found.grouped[call.args[0].name_hint] = g.groups
    return call


def _bound_kernel(rw: Any, expr: Any, symbols: Any) -> Any | None:
    """The ``call_tir`` that ``expr`` is bound to where it calls a kernel named in
    ``symbols``, else None."""
    import tvm
    from tvm import relax

    from edgert.compiler.relax_rewrite import bound_value

    bound = bound_value(rw, expr)
    if (isinstance(bound, relax.Call) and bound.op.same_as(tvm.ir.Op.get("relax.call_tir"))
            and isinstance(bound.args[0], tvm.ir.GlobalVar)
            and bound.args[0].name_hint in symbols):
        return bound
    return None


def _emit_requant_nhwc(rw: Any, source: Any, found: _Found,
                       padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Any:
    """The variable of ``requant_nhwc`` on the arguments of ``source`` (a ``to_nchw_requant``
    call: the int32 matmul result and the epilogue's constants): the same narrow values as
    [N, OH, OW, C], zero-padded by ``padding``."""
    from tvm import relax, te

    from edgert.compiler.schedule_int_nhwc import requant_nhwc_te, schedule_requant_nhwc

    y, *consts = source.args[1].fields
    ow, ep_key, groups = found.rows[source.args[0].name_hint]
    ep, phs = placeholders(ep_key)
    data = te.placeholder(y.ty.shape.values, "int32", name="y")
    out = requant_nhwc_te(data, ow, ep, groups, padding)
    dims = [d for a, d in enumerate(y.ty.shape.values) if a != (0 if groups == 1 else 1)]
    key = ("requant_nhwc", tuple(int(d) for d in dims), ow, ep_key, groups, padding)
    if key not in rw.kernels:
        symbol = f"requant_nhwc{sum(k[0] == 'requant_nhwc' for k in rw.kernels) or ''}"
        func = te.create_prim_func([data, *phs, out]).with_attr("global_symbol", symbol)
        rw.add_kernel(key, schedule_requant_nhwc(func), symbol)
    shape = [y.ty.shape.values[0 if groups == 1 else 1], *(int(d) for d in out.shape[1:])]
    return rw.builder_.emit(relax.call_tir(rw.kernels[key], [y, *consts],
                                           relax.TensorType(shape, ep.to)))


def _emit_dw_nhwc(rw: Any, args: list, geometry: _Geometry, ep_key: tuple | None,
                  nhwc_out: bool, found: _Found) -> Any:
    """``call_tir`` of the NHWC depthwise kernel (:func:`edgert.compiler.schedule_int_nhwc.
    int_dw_nhwc_te`) on ``args``: the NHWC input, the int32 [KH, KW, C] weight constant,
    then the epilogue's constants (``ep_key`` of
    :func:`~edgert.compiler.int_epilogue.epilogue_of`, or None); output NHWC
    where ``nhwc_out``, else NCHW."""
    from tvm import relax, te, tirx

    from edgert.compiler.schedule_int_nhwc import int_dw_nhwc_te, schedule_int_dw_nhwc

    g, (x, w) = geometry, args[:2]
    dims = [int(d) if isinstance(d, tirx.IntImm) else d for d in x.ty.shape.values]
    data = te.placeholder(dims, str(x.ty.dtype), name="x")
    kernel = te.placeholder([int(d) for d in w.ty.shape.values], "int32", name="w")
    ep, phs = (None, []) if ep_key is None else placeholders(ep_key)
    out = int_dw_nhwc_te(data, kernel, g.strides, g.padding, g.dilation, ep, nhwc_out)
    key = ("int_dw_nhwc", str(x.ty.dtype), tuple(dims[1:]), tuple(kernel.shape), g, ep_key,
           nhwc_out)
    if key not in rw.kernels:
        symbol = f"int_dw_nhwc{sum(k[0] == 'int_dw_nhwc' for k in rw.kernels) or ''}"
        func = te.create_prim_func([data, kernel, *phs, out])
        rw.add_kernel(key, schedule_int_dw_nhwc(func.with_attr("global_symbol", symbol)), symbol)
        found.nhwc[rw.kernels[key].name_hint] = (g, ep_key, nhwc_out)
    shape = [x.ty.shape.values[0], *(int(d) for d in out.shape[1:])]
    return relax.call_tir(rw.kernels[key], args, relax.TensorType(shape, str(out.dtype)))


def _nhwc_for_pointwise(rw: Any, call: Any, found: _Found) -> Any | None:
    """``call`` (a ``pad_nhwc`` call_tir that pads nothing: a pointwise convolution's input)
    replaced by the NHWC-output variant of the depthwise kernel whose NCHW output it
    transposes (the depthwise output is the matrix), or by ``requant_nhwc`` where it
    transposes a ``to_nchw_requant``; else None."""
    from tvm import relax

    args = call.args[1].fields
    if len(args) != 1:
        return None
    source = _bound_kernel(rw, args[0], {**found.nhwc, **found.rows})
    if source is None or not isinstance(source.ty.shape, relax.ShapeExpr):
        return None
    _, c, oh, ow = source.ty.shape.values
    if [int(d) for d in call.ty.shape.values[1:]] != [int(oh), int(ow), int(c)]:
        return None                                   # padded: not a pointwise input
    name = source.args[0].name_hint
    if name in found.rows:         # a requantized matmul result: requantized NHWC instead
        found.consumed.add(name)
        return _emit_requant_nhwc(rw, source, found)
    geometry, ep_key, nhwc_out = found.nhwc[name]
    if nhwc_out or ep_key is None:
        return None
    found.consumed.add(name)
    return _emit_dw_nhwc(rw, list(source.args[1].fields), geometry, ep_key, True, found)
