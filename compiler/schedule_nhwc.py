"""Float32 convolution chains kept NHWC: no transpose between consecutive convolutions.

The NCHW rewrites of :mod:`edgert.compiler.schedule_conv` transpose every convolution's input
to NHWC (``pad_nhwc``) and its matmul result back to NCHW (``to_nchw``, fused with the bias and
activation after it). On MobileNet-V2 those transposes were the largest kernels of a batch-1 run
(the fused ``to_nchw`` over a 96 x 112 x 112 result writes NCHW rows while reading the NHWC
result with a stride of 96 floats: 6 ms of a 44 ms run at 1 thread, loaded machine).
:func:`nhwc_convs` runs before those rewrites and gives each float32 convolution with a
constant weight and static C, H, W an NHWC result:

- one group: ``pad`` (when padded; a pointwise convolution reads its input as it is) + im2col
  + the FMA matmul, its [N, OH*OW, O] result viewed as [N, OH, OW, O]
  (:func:`edgert.compiler.schedule_conv.conv_nhwc`);
- depthwise (C a multiple of 8, one output channel per input channel): the vector kernel of
  :func:`edgert.compiler.schedule_depthwise.depthwise_nhwc`, with the bias add and a
  following Relu / Clip / Max / Min by constants folded into its epilogue;
- other groups: :func:`edgert.compiler.schedule_grouped.grouped_nhwc`.

Ops between convolutions follow the NHWC layout when they are elementwise (unary ops, and
binary ops whose other operand is a scalar, an [N, C, 1, 1] channel vector, which is
transposed (constants at compile time), or another value of the same shape, transposed once
if it is NCHW), the spatial ``mean`` (global average pooling), max pooling (a vector kernel:
:func:`max_pool_nhwc_te`), ``concat`` and ``split`` along the channels and ``resize2d`` (YOLO
necks). Any other consumer of an NHWC value gets it back as
NCHW through one ``to_nchw`` kernel, emitted once per value before its first such use; the
graph's inputs and outputs stay NCHW. A convolution whose input is NCHW (the first one) reads
it through ``pad_nhwc`` as before. Results equal the NCHW rewrites' up to float rounding (the
same products, summed in the same (kh, kw, c) order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgert.compiler.schedule_nhwc_fold import (call_tir_clamp, constant_value, epilogue,
                                               prologue, static_shape)

UNARY = frozenset({"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh",
                   "relax.nn.silu", "relax.nn.gelu", "relax.exp", "relax.negative",
                   "relax.abs", "relax.sqrt", "relax.nn.leakyrelu"})
"""Elementwise Relax ops of one tensor (other arguments: attributes or scalars)."""
BINARY = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide",
                    "relax.maximum", "relax.minimum", "relax.power"})
"""Broadcasting elementwise Relax ops of two tensors."""
def nhwc_convs(mod: Any) -> Any:
    """Rewrite the float32 convolutions of a Relax module (before legalization, before the
    NCHW convolution rewrites) and the elementwise ops between them to NHWC (see the module
    docstring); ``mod`` itself when it has no such convolution."""
    from tvm import relax

    mutator = _Nhwc(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.prepare(func)
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    if not mutator.convs:
        return mod
    return relax.transform.DeadCodeElimination()(mutator.builder_.get())


def _make_mutator() -> type:
    from tvm import relax

    @relax.expr_functor.mutator
    class Nhwc(relax.PyExprMutator):
        """The rewrite of :func:`nhwc_convs`: ``nhwc`` maps a variable of the source function to
        its NHWC value, ``nchw`` to its NCHW one once needed; ``fused`` holds the bias and
        activation bindings folded into a depthwise kernel's epilogue."""

        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.kernels: dict[tuple, Any] = {}
            self.convs = 0

        def prepare(self, func: Any) -> None:
            self.bindings: dict[Any, Any] = {}
            self.users: dict[Any, list] = {}
            self.nhwc: dict[Any, Any] = {}
            self.nchw: set = set()
            self.fused: set = set()
            for block in func.body.blocks:
                for binding in block.bindings:
                    if isinstance(binding, relax.VarBinding):
                        self.bindings[binding.var] = binding.value
                        for v in relax.analysis.free_vars(binding.value):
                            self.users.setdefault(v, []).append(binding.var)
            for v in relax.analysis.free_vars(func.body.body):
                self.users.setdefault(v, []).append(None)        # the function's result

        def add_kernel(self, key: tuple, func: Any, name: str) -> None:
            name = f"nhwc_{name}"    # apart from the NCHW rewrites' kernels, which run later
            self.kernels[key] = self.builder_.add_func(
                func.with_attr("op_pattern", 8).with_attr("global_symbol", name), name)

        def lookup_binding(self, var: Any) -> Any:
            return self.bindings.get(var)

        def visit_var_binding_(self, binding: Any) -> None:
            var, value = binding.var, binding.value
            if var in self.fused:
                return
            if isinstance(var, relax.DataflowVar) and isinstance(value, (relax.Call,
                                                                         relax.TupleGetItem)):
                new = _nhwc_value(self, var, value)
                if new is not None:
                    expr, is_nhwc, *target = new
                    var = target[0] if target else var   # a fused epilogue's last binding
                    emitted = self.builder_.emit(expr, var.name)
                    if is_nhwc:
                        self.nhwc[var] = emitted
                    else:
                        self.set_var_remap(var, emitted)
                    return
            for v in relax.analysis.free_vars(value):
                if v in self.nhwc and v not in self.nchw:
                    self.set_var_remap(v, self.builder_.emit(_to_nchw(self, self.nhwc[v])))
                    self.nchw.add(v)
            super().visit_var_binding_(binding)

    return Nhwc


def _Nhwc(mod: Any) -> Any:
    return _make_mutator()(mod)


def _to_nchw(rw: Any, x: Any) -> Any:
    """The ``to_nchw`` kernel call of an NHWC value ``x`` [N, H, W, C] (static H, W, C), or
    the tuple of those of a tuple of NHWC values (a channel split)."""
    from tvm import relax

    from edgert.compiler.schedule_conv import _kernel_call, _rows_outside, to_nchw_te

    if isinstance(x.ty, relax.TupleType):
        return relax.Tuple([rw.builder_.emit(_to_nchw(rw, rw.builder_.emit(
            relax.TupleGetItem(x, i)))) for i in range(len(x.ty.fields))])
    n, h, w, c = x.ty.shape.values
    rows = rw.builder_.emit(relax.op.reshape(x, [n, h * w, c]))
    return _kernel_call(rw, "to_nchw", to_nchw_te, rows, int(w), schedule=_rows_outside)


def _to_nhwc(rw: Any, x: Any) -> Any:
    """The NHWC value of ``x`` [N, C, H, W] (static), transposed once (``pad_nhwc`` without
    padding) and remembered for later uses."""
    from edgert.compiler.schedule_conv import _kernel_call, _tiles, pad_nhwc_te

    if x not in rw.nhwc:
        c = int(x.ty.shape.values[1])
        rw.nhwc[x] = rw.builder_.emit(_kernel_call(
            rw, "pad_nhwc", pad_nhwc_te, rw.visit_expr(x), (0, 0, 0, 0),
            schedule=_tiles if c % 8 == 0 else None))
        rw.nchw.add(x)                       # its NCHW value exists
    return rw.nhwc[x]


def _nhwc_value(rw: Any, var: Any, call: Any) -> tuple | None:
    """``(expr, is_nhwc)`` computing ``var = call`` from NHWC values (``expr`` NHWC when
    ``is_nhwc``, else the value itself), ``(expr, True, last)`` when ``expr`` is the value of
    a later binding ``last`` (a depthwise kernel with its epilogue), or None when ``call`` is
    not rewritten."""
    import tvm
    from tvm import relax

    if isinstance(call, relax.TupleGetItem):
        if call.tuple_value not in rw.nhwc:
            return None
        return relax.TupleGetItem(rw.nhwc[call.tuple_value], call.index), True
    op = call.op
    if isinstance(op, tvm.ir.Op):
        name = op.name
        if name in ("relax.concat", "relax.split", "relax.image.resize2d"):
            return _channels_or_resize(rw, call)
        if name == "relax.nn.conv2d":
            return _conv(rw, var, call)
        if name in UNARY and call.args and call.args[0] in rw.nhwc:
            args = [rw.nhwc[call.args[0]], *(rw.visit_expr(a) for a in call.args[1:])]
            return relax.Call(op, args, call.attrs), True
        if name in BINARY:
            args = _binary_operands(rw, call.args)
            return None if args is None else (relax.Call(op, args, call.attrs), True)
        if name == "relax.mean" and call.args[0] in rw.nhwc and call.attrs.axis is not None \
                and sorted(int(a) % 4 for a in call.attrs.axis) == [2, 3]:
            keep = bool(call.attrs.keepdims)
            return relax.op.mean(rw.nhwc[call.args[0]], axis=[1, 2], keepdims=keep), keep
        if name == "relax.nn.max_pool2d" and str(call.ty.dtype) == "float32":
            pooled = _max_pool(rw, call)
            return None if pooled is None else (pooled, True)
    clamp = call_tir_clamp(rw, call)
    if clamp is not None:
        x, which, bound = clamp
        fn = relax.op.maximum if which == 0 else relax.op.minimum
        return fn(rw.nhwc[x], rw.visit_expr(bound)), True
    return None


def _channels_or_resize(rw: Any, call: Any) -> tuple[Any, bool] | None:
    """NHWC ``concat`` / ``split`` along the channels (of 4-D values, at least one NHWC; the
    others transposed once) and NHWC ``resize2d`` of an NHWC value; None for others."""
    from tvm import relax

    name, attrs = call.op.name, call.attrs
    if name == "relax.concat":
        fields = getattr(call.args[0], "fields", None)
        shapes = [static_shape(f) for f in fields or ()]
        if (not fields or attrs.axis is None or int(attrs.axis) % 4 != 1
                or any(s is None or len(s) != 4 for s in shapes)
                or not any(f in rw.nhwc for f in fields)):
            return None
        return relax.op.concat([rw.nhwc[f] if f in rw.nhwc else _to_nhwc(rw, f)
                                for f in fields], axis=3), True
    x = call.args[0]
    if x not in rw.nhwc or len(static_shape(x) or ()) != 4:
        return None
    if name == "relax.split":
        if int(attrs.axis) % 4 != 1:
            return None
        parts = attrs.indices_or_sections
        parts = [int(v) for v in parts] if hasattr(parts, "__len__") else int(parts)
        return relax.op.split(rw.nhwc[x], parts, axis=3), True
    if attrs.layout != "NCHW":
        return None
    return relax.op.image.resize2d(
        rw.nhwc[x], rw.visit_expr(call.args[1]), roi=[float(v) for v in attrs.roi],
        layout="NHWC", method=attrs.method,
        coordinate_transformation_mode=attrs.coordinate_transformation_mode,
        rounding_method=attrs.rounding_method, cubic_alpha=float(attrs.cubic_alpha),
        cubic_exclude=int(attrs.cubic_exclude),
        extrapolation_value=float(attrs.extrapolation_value),
        out_dtype=None if attrs.out_dtype is None else str(attrs.out_dtype)), True


def _binary_operands(rw: Any, args: Any) -> list | None:
    """The NHWC operands of a broadcasting binary op: at least one an NHWC value, the other
    an NHWC value, a scalar or a channel vector ([N, C, 1, 1] or fewer leading dims); None
    otherwise."""
    from tvm import relax

    if len(args) != 2 or not any(a in rw.nhwc for a in args):
        return None
    out = []
    for a in args:
        if a in rw.nhwc:
            out.append(rw.nhwc[a])
            continue
        shape = static_shape(a)
        if shape is None or len(shape) > 4:
            return None
        full = [1] * (4 - len(shape)) + shape
        if full[2:] != [1, 1]:
            other = static_shape(next(b for b in args if b in rw.nhwc))
            if full != other:
                return None
            out.append(_to_nhwc(rw, a))      # e.g. a residual from the graph's NCHW input
            continue
        if all(d == 1 for d in full):           # a scalar broadcasts alike in both layouts
            out.append(rw.visit_expr(a))
            continue
        value = constant_value(rw, a)
        if value is not None:
            out.append(relax.const(np.ascontiguousarray(
                value.reshape(full).transpose(0, 2, 3, 1))))
        else:
            four = rw.builder_.emit(relax.op.reshape(rw.visit_expr(a), full))
            out.append(rw.builder_.emit(relax.op.permute_dims(four, [0, 2, 3, 1])))
    return out


def _conv(rw: Any, var: Any, call: Any) -> tuple | None:
    """The NHWC kernels of a float32 convolution ``var = call`` as ``(expr, True)``, or
    ``(expr, True, last)`` (:func:`_nhwc_value`), or None when its operands or groups do not
    fit them."""
    from edgert.compiler.schedule_conv import conv_nhwc, float32_conv_operands
    from edgert.compiler.schedule_depthwise import LANES, depthwise_nhwc
    from edgert.compiler.schedule_grouped import grouped_nhwc

    operands = float32_conv_operands(rw, call)
    if operands is None:
        return None
    x, weight = operands
    nhwc = x in rw.nhwc
    data = rw.nhwc[x] if nhwc else rw.visit_expr(x)
    attrs = call.attrs
    groups = int(attrs.groups)
    c = int(x.ty.shape.values[1])
    o, cg = weight.shape[:2]
    strides = tuple(int(v) for v in attrs.strides)
    dilation = tuple(int(v) for v in attrs.dilation)
    padding = tuple(int(p) for p in attrs.padding)
    if groups == 1:
        expr = conv_nhwc(rw, data, weight, strides, padding, dilation, nhwc)
    elif groups == c == o and cg == 1 and c % LANES == 0:
        bias, clamp, last, swish = epilogue(rw, var, c)
        pro = prologue(rw, var, x, c) if nhwc else None
        if pro is not None:     # the input's bias and clamp applied by each tap
            rw.convs += 1
            return depthwise_nhwc(rw, rw.nhwc[pro[0]], weight, strides, padding, dilation,
                                  bias, clamp, pro[1:], swish), True, last
        if not nhwc:            # the NCHW input transposed and padded in one pass
            from edgert.compiler.schedule_conv import _kernel_call, _tiles, pad_nhwc_te

            data = rw.builder_.emit(_kernel_call(rw, "pad_nhwc", pad_nhwc_te, data, padding,
                                                 schedule=_tiles))
            padding = (0, 0, 0, 0)
        rw.convs += 1
        return depthwise_nhwc(rw, data, weight, strides, padding, dilation, bias,
                              clamp, hardswish=swish), True, last
    elif c == cg * groups and o % groups == 0 and static_shape(x) is not None:
        expr = grouped_nhwc(rw, data, weight, groups, strides, padding, dilation, nhwc)
    else:
        return None
    rw.convs += 1
    return expr, True


def max_pool_nhwc_te(x: Any, pool: tuple[int, int], strides: tuple[int, int],
                     padding: tuple[int, int, int, int], dilation: tuple[int, int]) -> Any:
    """TVM TE: the max pooling of ``x`` [N, H, W, C] float32 (static H, W) over ``pool``
    windows, ``padding`` (top, left, bottom, right) read as -inf: [N, OH, OW, C] (floor
    rounding of the output size)."""
    from tvm import te, tirx

    from edgert.compiler.schedule_conv import output_size

    (kh, kw), (sh, sw), (dh, dw) = pool, strides, dilation
    top, left, bottom, right = padding
    n, h, w, c = x.shape
    h, w = int(h), int(w)
    oh, ow = output_size(h, w, pool, strides, padding, dilation)
    i = te.reduce_axis((0, kh), name="i")
    j = te.reduce_axis((0, kw), name="j")

    def tap(b: Any, y: Any, z: Any, f: Any) -> Any:
        yy, zz = y * sh + i * dh, z * sw + j * dw
        inside = tirx.all(yy >= top, yy < top + h, zz >= left, zz < left + w)
        return tirx.if_then_else(inside, x[b, yy - top, zz - left, f],
                                 tirx.min_value("float32"))

    acc = te.compute((n, oh, ow, c), lambda b, y, z, f: te.max(tap(b, y, z, f), axis=[i, j]),
                     name="max_pool_nhwc")
    return te.compute((n, oh, ow, c), lambda b, y, z, f: acc[b, y, z, f], name="epilogue")


def _max_pool(rw: Any, call: Any) -> Any | None:
    """The NHWC max-pooling kernel for ``call`` (``relax.nn.max_pool2d``, NCHW, of an NHWC
    value with C a multiple of 8, floor rounding), or None."""
    from tvm import relax, te

    from edgert.compiler.schedule_depthwise import LANES, schedule_depthwise_nhwc

    attrs = call.attrs
    x = rw.nhwc.get(call.args[0])
    shape = static_shape(x) if x is not None else None
    if (shape is None or attrs.layout != "NCHW" or attrs.out_layout != "NCHW"
            or bool(attrs.ceil_mode) or shape[3] % LANES):
        return None
    pool, strides, dilation = (tuple(int(v) for v in getattr(attrs, a))
                               for a in ("pool_size", "strides", "dilation"))
    padding = tuple(int(v) for v in attrs.padding)
    key = ("max_pool_nhwc", tuple(shape), pool, strides, padding, dilation)
    data = te.placeholder(shape, "float32", name="x")
    out = max_pool_nhwc_te(data, pool, strides, padding, dilation)
    if key not in rw.kernels:
        symbol = f"max_pool{sum(k[0] == 'max_pool_nhwc' for k in rw.kernels) or ''}"
        func = te.create_prim_func([data, out]).with_attr("global_symbol", symbol)
        rw.add_kernel(key, schedule_depthwise_nhwc(func, "max_pool_nhwc"), symbol)
    return relax.call_tir(rw.kernels[key], [x],
                          relax.TensorType([int(d) for d in out.shape], "float32"))
