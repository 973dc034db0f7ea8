"""Handlers of the default-domain ONNX ops in the numba backend (:mod:`.numba_backend`).

Integer arithmetic (``MatMulInteger``, ``ConvInteger`` on the IntMatMul numba kernel, ``MaxPool``,
``Add``...), the boundary ops (``QuantizeLinear``, ``DequantizeLinear``), the shape ops and the
fallback of float nodes to ``onnx.reference``; the semantics are listed in the backend's module
docstring.
:data:`FACTORIES` maps each op type to its handler factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from edgert.backends.numba_nodes import Factory, Handler, Node, Unsupported
from edgert.onnx_graph import same_pads
from edgert.ops.intmatmul.numba import matmul, numba_kernel

FACTORIES: dict[str, Factory] = {}
"""Default-domain op type -> handler factory."""

_QUANT_DTYPES = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max))
                 for t in (np.int8, np.uint8, np.int16, np.uint16)}
_CAST_DTYPES = {np.dtype(t) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                      np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                      np.float64)}


def handles(*names: str) -> Callable[[Factory], Factory]:
    """Decorator: the factory handles the default-domain ops ``names``."""
    def register(factory: Factory) -> Factory:
        for name in names:
            FACTORIES[name] = factory
        return factory
    return register


# --- integer arithmetic ----------------------------------------------------------------------------

def _operand(x: np.ndarray, zero_point: int | None) -> np.ndarray:
    """An int8/int16 operand for the kernels: ``x - zero_point`` (uint8 widens to int16)."""
    if zero_point is None:
        return x.astype(np.int16) if x.dtype == np.uint8 else x
    return x.astype(np.int16) - np.int16(zero_point)


@handles("MatMulInteger")
def _matmulinteger(node: Node) -> Handler:
    za, zb = node.zero_point(2), node.zero_point(3)

    def run(a, b, _za=None, _zb=None):
        return (matmul(_operand(a, za), _operand(b, zb)),)
    return run


@handles("ConvInteger")
def _convinteger(node: Node) -> Handler:
    zx, zw = node.zero_point(2), node.zero_point(3)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad}")
    group = int(node.attr("group", 1))
    pads, strides, dilations = (node.attr(k, None) for k in ("pads", "strides", "dilations"))

    def run(x, w, _zx=None, _zw=None):
        x, w = _operand(x, zx), _operand(w, zw)
        nd = x.ndim - 2
        kshape = w.shape[2:]
        st = list(strides or [1] * nd)
        dil = list(dilations or [1] * nd)
        pd = _conv_pads(auto_pad, pads, x.shape[2:], kshape, st, dil)
        n, c = x.shape[:2]
        m = w.shape[0]
        if w.shape[1] * group != c or m % group:
            raise ValueError(f"ConvInteger: x {x.shape}, w {w.shape} and group {group} disagree")
        cols, out_sp = _im2col(x, kshape, pd, st, dil)
        cols = cols.reshape(n, group, -1, cols.shape[-1])
        out = numba_kernel(w.reshape(1, group, m // group, -1), cols)
        return (out.reshape(n, m, *out_sp),)
    return run


def _conv_pads(auto_pad: str, pads: Sequence[int] | None, spatial: Sequence[int],
               kshape: Sequence[int], strides: Sequence[int], dil: Sequence[int]) -> list[int]:
    """Begin pads then end pads, one per spatial axis (ONNX Conv ``auto_pad`` rules)."""
    nd = len(spatial)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad == "NOTSET":
        return list(pads or [0] * (2 * nd))
    return same_pads(auto_pad, spatial, kshape, strides, dil)


def _im2col(x: np.ndarray, kshape: Sequence[int], pads: Sequence[int], strides: Sequence[int],
            dil: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """x [N, C, *S] -> columns [N, C * prod(kshape), prod(out)] (rows: channel, then kernel
    offset, as ``w.reshape(M, -1)``) and the output spatial shape."""
    n, c, *spatial = x.shape
    nd = len(spatial)
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    out_sp = [(x.shape[2 + i] - (kshape[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    if any(o < 1 for o in out_sp):
        raise ValueError(f"ConvInteger: kernel {list(kshape)} does not fit the padded input "
                         f"{list(x.shape[2:])}")
    cols = np.empty((n, c, *kshape, *out_sp), x.dtype)
    every = (slice(None), slice(None))
    for off in np.ndindex(*kshape):
        src = tuple(slice(o * dl, o * dl + (size - 1) * s + 1, s)
                    for o, dl, size, s in zip(off, dil, out_sp, strides))
        cols[(*every, *off)] = x[(*every, *src)]
    return cols.reshape(n, c * int(np.prod(kshape)), int(np.prod(out_sp))), out_sp


@handles("MaxPool")
def _maxpool(node: Node) -> Handler:
    """Integer ``MaxPool`` (one output): padding takes no part (it is the dtype's minimum);
    ``ceil_mode`` keeps a last window only when it starts inside the input or the begin pad."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad}")
    if int(node.attr("storage_order", 0)) or len(node.proto.output) > 1:
        raise Unsupported("Indices output / storage_order")
    kshape = [int(k) for k in node.attr("kernel_shape")]
    nd = len(kshape)
    st = [int(v) for v in node.attr("strides", None) or [1] * nd]
    dil = [int(v) for v in node.attr("dilations", None) or [1] * nd]
    pads, ceil_mode = node.attr("pads", None), int(node.attr("ceil_mode", 0))

    def run(x):
        if x.dtype.kind not in "iu":
            raise ValueError(f"MaxPool: integer input expected, got {x.dtype}")
        pd = _conv_pads(auto_pad, pads, x.shape[2:], kshape, st, dil)
        return (_max_pool(x, kshape, pd, st, dil, bool(ceil_mode)),)
    return run


def _max_pool(x: np.ndarray, kshape: Sequence[int], pads: Sequence[int],
              strides: Sequence[int], dil: Sequence[int], ceil_mode: bool) -> np.ndarray:
    """Max over each window of x [N, C, *S] (begin/end ``pads``), as ONNX MaxPool."""
    nd = len(kshape)
    spatial = x.shape[2:]
    out_sp = []
    for i in range(nd):
        span = spatial[i] + pads[i] + pads[i + nd] - (kshape[i] - 1) * dil[i] - 1
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1                                  # the last window would start in the end pad
        out_sp.append(o)
    if any(o < 1 for o in out_sp):
        raise ValueError(f"MaxPool: kernel {list(kshape)} does not fit the input {list(spatial)}")
    extra = [max(0, (out_sp[i] - 1) * strides[i] + (kshape[i] - 1) * dil[i] + 1
                 - spatial[i] - pads[i] - pads[i + nd]) for i in range(nd)]
    lowest = np.iinfo(x.dtype).min
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd] + extra[i]) for i in range(nd)],
                constant_values=lowest)
    out = np.full((*x.shape[:2], *out_sp), lowest, x.dtype)
    every = (slice(None), slice(None))
    for off in np.ndindex(*kshape):
        src = tuple(slice(o * dl, o * dl + (size - 1) * s + 1, s)
                    for o, dl, size, s in zip(off, dil, out_sp, strides))
        np.maximum(out, xp[(*every, *src)], out=out)
    return out


@handles("Add")
def _add(node: Node) -> Handler:
    return lambda a, b: (np.asarray(np.add(a, b)),)


@handles("Sub")
def _sub(node: Node) -> Handler:
    return lambda a, b: (np.asarray(np.subtract(a, b)),)


@handles("Mul")
def _mul(node: Node) -> Handler:
    return lambda a, b: (np.asarray(np.multiply(a, b)),)


@handles("Div")
def _div(node: Node) -> Handler:
    def run(a, b):
        if a.dtype.kind == "f":                  # a float node kept by --allow-float
            return (np.asarray(np.divide(a, b)),)
        q = np.floor_divide(a, b)                # ONNX integer Div truncates toward zero
        return (np.asarray(q + ((q < 0) & (q * b != a))).astype(a.dtype, copy=False),)
    return run


@handles("ReduceSum")
def _reduce_sum(node: Node) -> Handler:
    keepdims, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))

    def run(x, axes=None):
        if axes is None or axes.size == 0:
            if noop:
                return (x,)
            axes = np.arange(x.ndim)
        return (np.sum(x, axis=tuple(int(a) for a in axes), keepdims=keepdims, dtype=x.dtype),)
    return run


@handles("Clip")
def _clip(node: Node) -> Handler:
    def run(x, lo=None, hi=None):
        return (x if lo is None and hi is None else np.clip(x, lo, hi).astype(x.dtype, copy=False),)
    return run


@handles("Equal")
def _equal(node: Node) -> Handler:
    return lambda a, b: (np.asarray(np.equal(a, b)),)


_LOGIC = {"Not": np.logical_not, "And": np.logical_and, "Or": np.logical_or,
          "Xor": np.logical_xor, "Less": np.less, "LessOrEqual": np.less_equal,
          "Greater": np.greater, "GreaterOrEqual": np.greater_equal}


@handles(*_LOGIC)
def _logic(node: Node) -> Handler:
    """Bool logic and comparisons (attention masks built in the graph): numpy's, elementwise
    with broadcasting, bool results."""
    fn = _LOGIC[node.proto.op_type]
    return lambda *args: (np.asarray(fn(*args)),)


@handles("Max", "Min")
def _max_min(node: Node) -> Handler:
    """Elementwise ``Max`` / ``Min`` of any number of integer tensors (broadcasting)."""
    fn = np.maximum if node.proto.op_type == "Max" else np.minimum

    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return (np.asarray(out),)
    return run


@handles("Range")
def _range(node: Node) -> Handler:
    return lambda start, limit, delta: (np.arange(start.item(), limit.item(), delta.item(),
                                                  dtype=start.dtype),)


@handles("Where")
def _where(node: Node) -> Handler:
    return lambda c, a, b: (np.asarray(np.where(c, a, b)),)


@handles("ConstantOfShape")
def _constant_of_shape(node: Node) -> Handler:
    value = np.asarray(node.attr("value", np.zeros(1, np.float32))).reshape(-1)
    return lambda shape: (np.full(tuple(int(d) for d in shape), value[0], value.dtype),)


# --- float nodes (--allow-float) ------------------------------------------------------------------

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}


def float_fallback(opset: int) -> Factory:
    """A factory running one float node on ``onnx.reference`` (default-domain ``opset``)."""

    def factory(node: Node) -> Handler:
        from onnx.reference import ReferenceEvaluator

        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.proto.attribute):
            raise Unsupported("subgraphs")
        try:
            evaluator = ReferenceEvaluator(node.proto, opsets={"": opset})
        except Exception:                    # onnx.reference has no such op (or version)
            raise Unsupported("no onnx.reference implementation") from None
        names = list(node.proto.input)

        def run(*args):
            feeds = {n: a for n, a in zip(names, args) if n}
            return [np.asarray(v) for v in evaluator.run(None, feeds)]
        return run
    return factory


# --- boundary ops ---------------------------------------------------------------------------------

def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scale/zero point ready to broadcast: one value as 0-d, a vector along ``axis``."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _quant_axis(node: Node) -> int:
    """The ``axis`` of a QuantizeLinear/DequantizeLinear; rejects blocked quantization and
    opset-23 ``precision``."""
    if int(node.attr("block_size", 0)):
        raise Unsupported("blocked quantization")
    if int(node.attr("precision", 0)):
        raise Unsupported("precision")
    return int(node.attr("axis", 1))


@handles("QuantizeLinear")
def _quantize(node: Node) -> Handler:
    axis = _quant_axis(node)
    zp = node.consts[2] if node.has_input(2) else None
    out_attr = int(node.attr("output_dtype", 0))
    if zp is not None:
        fixed: np.dtype | None = zp.dtype
    elif node.has_input(2):
        fixed = None                                   # the zero point's type, seen at run time
    else:
        fixed = helper.tensor_dtype_to_np_dtype(out_attr) if out_attr else np.dtype(np.uint8)
    if fixed is not None and fixed not in _QUANT_DTYPES:
        raise Unsupported(f"output type {fixed}")
    skip_zp = zp is not None and not zp.any()

    def run(x, scale, z=None):
        dtype = fixed if fixed is not None else z.dtype
        lo, hi = _QUANT_DTYPES[dtype]
        with np.errstate(over="ignore"):                   # x / scale may overflow to inf
            y = np.rint(x / _along(scale, x.ndim, axis))  # float32: one division, half to even
        if z is not None and not skip_zp:
            y = y + _along(z, x.ndim, axis)
        return (np.clip(y, lo, hi).astype(dtype),)
    return run


@handles("DequantizeLinear")
def _dequantize(node: Node) -> Handler:
    axis = _quant_axis(node)
    zp = node.consts[2] if node.has_input(2) else None
    skip_zp = zp is not None and not zp.any()
    out_attr = int(node.attr("output_dtype", 0))
    out = helper.tensor_dtype_to_np_dtype(out_attr) if out_attr else None

    def run(x, scale, z=None):
        dx = x.astype(np.float32)
        if z is not None and not skip_zp:
            dx = dx - _along(z, x.ndim, axis)
        y = dx * _along(scale, x.ndim, axis)
        return (y.astype(out if out is not None else scale.dtype, copy=False),)
    return run


# --- shape ops ------------------------------------------------------------------------------------

@handles("Identity")
def _identity(node: Node) -> Handler:
    return lambda x: (x,)


@handles("Constant")
def _constant(node: Node) -> Handler:
    attrs = [a.name for a in node.proto.attribute]
    if len(attrs) != 1 or attrs[0] not in ("value", "value_float", "value_floats", "value_int",
                                            "value_ints"):
        raise Unsupported(f"attribute {', '.join(attrs) or '(none)'}")
    value = node.attr(attrs[0])
    if attrs[0] in ("value_float", "value_floats"):
        value = np.array(value, np.float32)
    elif attrs[0] in ("value_int", "value_ints"):
        value = np.array(value, np.int64)
    return lambda: (value,)


@handles("Cast")
def _cast(node: Node) -> Handler:
    dtype = helper.tensor_dtype_to_np_dtype(int(node.attr("to")))
    if dtype not in _CAST_DTYPES:
        raise Unsupported(f"to={dtype}")
    return lambda x: (x.astype(dtype, copy=False),)


@handles("Shape")
def _shape(node: Node) -> Handler:
    start, end = node.attr("start", 0), node.attr("end", None)
    return lambda x: (np.array(x.shape[start:end], np.int64),)


@handles("Reshape")
def _reshape(node: Node) -> Handler:
    allowzero = int(node.attr("allowzero", 0))

    def run(data, shape):
        dims = [int(d) for d in shape]
        if not allowzero:
            dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (data.reshape(dims),)
    return run


@handles("Transpose")
def _transpose(node: Node) -> Handler:
    perm = node.attr("perm", None)
    return lambda x: (np.transpose(x, perm),)


@handles("Squeeze")
def _squeeze(node: Node) -> Handler:
    def run(x, axes=None):
        return (np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in axes)),)
    return run


@handles("Unsqueeze")
def _unsqueeze(node: Node) -> Handler:
    return lambda x, axes: (np.expand_dims(x, tuple(int(a) for a in axes)),)


@handles("Pad")
def _pad(node: Node) -> Handler:
    """ONNX ``Pad`` in ``constant`` mode, non-negative pads (an integer ConvTranspose's zero
    insertion); other modes and negative pads (cropping) are not handled."""
    if node.attr("mode", "constant") != "constant":
        raise Unsupported(f"Pad mode {node.attr('mode')!r}")

    def run(data, pads, value=None, axes=None):
        axes_ = range(data.ndim) if axes is None else [int(a) % data.ndim for a in axes]
        n, width = len(pads) // 2, [(0, 0)] * data.ndim
        for k, a in enumerate(axes_):
            width[a] = (int(pads[k]), int(pads[k + n]))
        if min(min(w) for w in width) < 0:
            raise ValueError("Pad: negative pads are not handled")
        fill = 0 if value is None or value.size == 0 else value.reshape(())[()]
        return (np.pad(data, width, constant_values=fill),)
    return run


@handles("Flatten")
def _flatten(node: Node) -> Handler:
    axis = int(node.attr("axis", 1))

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        if not 0 <= a <= x.ndim:
            raise ValueError(f"Flatten: axis {axis} out of range for rank {x.ndim}")
        return (x.reshape(int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))),)
    return run


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """One axis of ONNX ``Slice``: negative values count from the end, then start is clamped to
    [0, dim] (step > 0) or [0, dim - 1] (step < 0), end to [0, dim] or [-1, dim - 1]. (Python
    slices differ for step < 0 and start < -dim: they give nothing, ONNX starts at 0.)"""
    if step == 0:
        raise ValueError("Slice: steps must not be 0")
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    if dim == 0:
        return slice(0, 0, step)
    end = min(max(end, -1), dim - 1)
    return slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)


@handles("Slice")
def _slice(node: Node) -> Handler:
    def run(data, starts, ends, axes=None, steps=None):
        n = len(starts)
        axes_ = range(n) if axes is None else [int(a) for a in axes]
        steps_ = [1] * n if steps is None else [int(s) for s in steps]
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes_, steps_):
            index[a] = _slice_bounds(int(s), int(e), st, data.shape[a])
        return (data[tuple(index)],)
    return run


@handles("Gather")
def _gather(node: Node) -> Handler:
    axis = int(node.attr("axis", 0))

    def run(data, indices):
        a = axis + data.ndim if axis < 0 else axis
        idx = indices.astype(np.int64)
        idx = np.where(idx < 0, idx + data.shape[a], idx)
        return (np.asarray(np.take(data, idx, axis=a)),)
    return run


@handles("GatherND")
def _gather_nd(node: Node) -> Handler:
    """ONNX ``GatherND``: slices of ``data`` at the index tuples along the last axis of
    ``indices`` (negative indices count from the end), the first ``batch_dims`` axes shared."""
    b = int(node.attr("batch_dims", 0))

    def run(data, indices):
        k, batch = indices.shape[-1], data.shape[:b]
        n = int(np.prod(batch, dtype=np.int64))
        d = data.reshape(n, *data.shape[b:])
        idx = indices.astype(np.int64).reshape(n, -1, k)
        idx = np.where(idx < 0, idx + np.array(data.shape[b:b + k]), idx)
        rows = np.arange(n)[:, None]
        out = d[(rows, *np.moveaxis(idx, -1, 0))]
        return (np.asarray(out.reshape(*indices.shape[:-1], *data.shape[b + k:])),)
    return run


@handles("Concat")
def _concat(node: Node) -> Handler:
    axis = int(node.attr("axis"))
    return lambda *xs: (np.concatenate(xs, axis=axis),)


@handles("Split")
def _split(node: Node) -> Handler:
    """ONNX ``Split``: sizes from the ``split`` input (opset >= 13), else ``num_outputs`` (opset
    18) or as many outputs as the node has, equal parts (the last one smaller)."""
    axis = int(node.attr("axis", 0))
    count = int(node.attr("num_outputs", 0)) or len(node.proto.output)

    def run(x, split=None):
        a = axis + x.ndim if axis < 0 else axis
        if split is None:
            part = -(-x.shape[a] // count)
            sizes = [min(part, x.shape[a] - i * part) for i in range(count)]
        else:
            sizes = [int(s) for s in split]
        cuts = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, cuts, axis=a))
    return run


@handles("Expand")
def _expand(node: Node) -> Handler:
    def run(x, shape):
        return (np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))),)
    return run


_NEAREST = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil":
            lambda v: np.floor(v + 0.5), "floor": np.floor, "ceil": np.ceil}


def _source_index(out: int, size: int, scale: float, mode: str, nearest: str) -> np.ndarray:
    """Input index of each of ``out`` outputs along one axis of a nearest ``Resize``."""
    x = np.arange(out, dtype=np.float64)
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out > 1):
        v = (x + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        v = np.zeros_like(x)
    elif mode == "align_corners":
        v = x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        v = x / scale
    elif mode == "tf_half_pixel_for_nn":
        v = (x + 0.5) / scale
    else:
        raise Unsupported(f"Resize coordinate_transformation_mode {mode!r}")
    return np.clip(_NEAREST[nearest](v), 0, size - 1).astype(np.int64)


@handles("Resize")
def _resize(node: Node) -> Handler:
    """ONNX ``Resize`` in ``nearest`` mode (the integer graph moves integer tensors with it):
    output dims from ``sizes`` or ``floor(dim * scale)``, then one gather per resized axis."""
    attrs = node.attributes()
    if attrs.get("mode", "nearest") != "nearest" or attrs.get("antialias", 0) or "axes" in attrs:
        raise Unsupported("Resize other than nearest mode over all axes")
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = attrs.get("nearest_mode", "round_prefer_floor")
    if nearest not in _NEAREST or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported(f"Resize nearest_mode {nearest!r}")

    def run(x, roi=None, scales=None, sizes=None):
        if sizes is not None and np.size(sizes):
            dims = [int(s) for s in sizes]
            factors = [d / n for d, n in zip(dims, x.shape)]
        else:
            factors = [float(s) for s in scales]
            dims = [int(np.floor(n * f)) for n, f in zip(x.shape, factors)]
        for ax, (n, d, f) in enumerate(zip(x.shape, dims, factors)):
            if d != n or f != 1.0:
                x = np.take(x, _source_index(d, n, f, mode, nearest), axis=ax)
        return (np.ascontiguousarray(x),)
    return run
