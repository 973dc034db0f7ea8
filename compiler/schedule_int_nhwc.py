"""Integer convolution kernels on the NHWC side of the matmuls: a depthwise convolution
between two pointwise ones, the requantized (and transposed) matmul result, grouped im2col.

An integer MobileNet block is pointwise (a matmul on NHWC rows) -> depthwise -> pointwise.
With the depthwise kernel of :mod:`edgert.compiler.schedule_int_conv` on NCHW planes, the
expansion's int32 matmul result [N, H*W, C] is requantized *and transposed* to NCHW
(``to_nchw_requant``, over the largest tensor of the block), the depthwise convolution
reads and writes NCHW planes, and the projection transposes its input back to NHWC
(``pad_nhwc``). :func:`edgert.compiler.schedule_int_conv.int_grouped_convs` instead, where a
depthwise convolution (channel multiplier 1) reads a requantized matmul result:

- ``requant_nhwc``: the matmul result requantized in its own [N, H, W, C] layout (one
  contiguous pass, 8 int32 lanes a vector: :func:`requant_nhwc_te`);
- ``int_dw_nhwc``: the depthwise convolution on that NHWC input (:func:`int_dw_nhwc_te`):
  per output row (in parallel), the padded input rows it reads, then per block of 8
  channels (its 9 weight vectors held in registers) and output column an int32 accumulator
  vector over the KH x KW taps (``vpmovsxbd``, ``vpmulld``, ``vpaddd`` on AVX2; stride 2
  costs no strided loads, unlike along NCHW rows), the bias and Requant after it as its
  epilogue; it writes NCHW, or NHWC where a pointwise convolution reads it (which then
  needs no ``pad_nhwc``: the output is its matrix).

Results are bit-identical to the NCHW kernels (int32 accumulation modulo 2**32, then the
Requant's int64 arithmetic). On mobilenet_v2 (int-only, 1 thread, CPU time in one process,
outputs identical) the blocks took 0.77x the time of the NCHW path.
"""

from __future__ import annotations

from typing import Any


def requant_nhwc_te(y: Any, ow: int, ep: Any, groups: int = 1,
                    padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Any:
    """TVM TE: the int32 matmul result ``y`` plus the bias and requantized (``ep``, an
    :class:`edgert.compiler.int_epilogue.Epilogue`) as [N, OH, OW, C], zero-padded by
    ``padding`` (top, left, bottom, right) for a convolution that reads it. ``y``: [N, OH *
    OW, C] (``groups`` 1) or a grouped convolution's [G, N, OH * OW, C/G]."""
    from tvm import te, tirx

    if groups == 1:
        n, p, c = y.shape
    else:
        _, n, p, og = y.shape
        c, og = groups * int(og), int(og)
    oh = int(p) // ow
    top, left, bottom, right = padding

    def body(b: Any, i: Any, j: Any, ci: Any) -> Any:
        r = (i - top) * ow + j - left
        q = ep.value(y[b, r, ci] if groups == 1 else y[ci // og, b, r, ci % og], ci)
        if not any(padding):
            return q
        inside = tirx.all(i >= top, i < top + oh, j >= left, j < left + ow)
        return tirx.if_then_else(inside, q, tirx.const(0, ep.to))

    return te.compute((n, oh + top + bottom, ow + left + right, c), body, name="requant_nhwc")


def to_nchw_requant_te(y: Any, ow: int, ep: Any, groups: int = 1) -> Any:
    """TVM TE: the int32 matmul result ``y`` of an im2col convolution as [N, O, OH, OW], plus
    the bias and requantized (``ep``, an :class:`edgert.compiler.int_epilogue.Epilogue`;
    as ``to_nchw`` then the Requant), or int32 as it is (``ep`` None). ``y``: [N, OH * OW, O]
    (``groups`` 1), or [G, N, OH * OW, O/G] (a grouped convolution's batched matmul, groups
    first). With ``ep``, two stages: ``requant_rows``
    in ``y``'s own layout (channels contiguous), then the transpose of its narrow result."""
    from tvm import te

    if groups == 1:
        n, p, o = y.shape
        og = int(o)
    else:
        _, n, p, og = y.shape
        o, og = groups * int(og), int(og)
    if ep is not None:
        y = te.compute(y.shape, lambda *idx: ep.value(y(*idx), (
            idx[-1] if groups == 1 else idx[0] * og + idx[-1])), name="requant_rows")

    def at(b: Any, c: Any, r: Any) -> Any:
        return y[b, r, c] if groups == 1 else y[c // og, b, r, c % og]

    return te.compute((n, o, int(p) // ow, ow), lambda b, c, i, j: at(b, c, i * ow + j),
                      name="to_nchw_requant" if ep is not None else "to_nchw_grouped_int")


def schedule_requant_nhwc(func: Any) -> Any:
    """``requant_nhwc`` as (n * output row parallel, column, channels 8 a vector)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    b, i, j, c = sch.get_loops(sch.get_sblock("requant_nhwc"))
    sch.parallel(sch.fuse(b, i))
    _vector_channels(sch, c)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def int_dw_nhwc_te(x: Any, w: Any, strides: tuple[int, int],
                   padding: tuple[int, int, int, int], dilation: tuple[int, int], ep: Any,
                   nhwc_out: bool) -> Any:
    """TVM TE: the depthwise convolution of ``x`` [N, H, W, C] (int8/int16, static H, W, C)
    with ``w`` [KH, KW, C] (int32 values of int8 weights), plus the bias and requantized by
    ``ep`` (or int32, ``ep`` None): [N, OH, OW, C] when ``nhwc_out``, else [N, C, OH, OW].
    ``padding``: (top, left, bottom, right) zeros."""
    from tvm import te, tirx

    from edgert.compiler.schedule_conv import output_size

    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    n, h, wd, c = x.shape
    h, wd = int(h), int(wd)
    kh, kw = int(w.shape[0]), int(w.shape[1])
    oh, ow = output_size(h, wd, (kh, kw), strides, padding, dilation)

    def padded(b: Any, y: Any, z: Any, ci: Any) -> Any:
        inside = [y >= top, y < top + h, z >= left, z < left + wd]
        return tirx.if_then_else(tirx.all(*inside), x[b, y - top, z - left, ci],
                                 tirx.const(0, x.dtype))

    xp = te.compute((n, h + top + bottom, wd + left + right, c), padded, name="pad_rows")
    i = te.reduce_axis((0, kh), name="i")
    j = te.reduce_axis((0, kw), name="j")
    acc = te.compute(
        (n, oh, ow, c),
        lambda b, y, z, ci: te.sum(
            xp[b, y * sh + i * dh, z * sw + j * dw, ci].astype("int32") * w[i, j, ci],
            axis=[i, j]),
        name="int_dw")
    value = (lambda q, ci: q) if ep is None else ep.value
    if nhwc_out:
        return te.compute((n, oh, ow, c), lambda b, y, z, ci: value(acc[b, y, z, ci], ci),
                          name="int_dw_out")
    return te.compute((n, c, oh, ow), lambda b, ci, y, z: value(acc[b, y, z, ci], ci),
                      name="int_dw_out")


def schedule_int_dw_nhwc(func: Any) -> Any:
    """``func`` (of :func:`int_dw_nhwc_te`) scheduled: output rows in parallel, the padded
    input rows a row reads computed under it, then (column, block of 8 channels, taps, 8
    channels vectorized): one accumulator vector over all taps, written out by the epilogue
    before the next block."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, pad, out = (sch.get_sblock(n) for n in ("int_dw", "pad_rows", "int_dw_out"))
    b, y, z, c, i, j = sch.get_loops(conv)
    row = sch.fuse(b, y)
    co, ci = sch.split(c, factors=[None, 8])
    sch.reorder(row, co, z, i, j, ci)
    sch.parallel(row)
    sch.vectorize(ci)
    sch.reverse_compute_at(out, z)
    sch.compute_at(pad, row)
    sch.decompose_reduction(conv, i)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)




def group_patch_rows(sch: Any) -> bool:
    """im2col_groups as (group * image * output row parallel, column, i, j, channels), the
    channels of a group copied as vectors (16 int8 a group: one xmm); TVM's elementwise rule
    would fuse all six outer loops into one and index through divisions of it. Complete:
    returns True."""
    g, b, y, z, i, j, ci = sch.get_loops(sch.get_sblock("im2col_groups"))
    sch.parallel(sch.fuse(g, b, y))
    extent = int(sch.get(ci).extent)
    for lanes in (16, 8, 4):
        if extent % lanes == 0:
            sch.vectorize(sch.split(ci, factors=[None, lanes])[1])
            break
    return True


def _vector_channels(sch: Any, loop: Any) -> None:
    """Vectorize the channel ``loop`` 8 at a time where its extent allows."""
    if int(sch.get(loop).extent) % 8 == 0:
        sch.vectorize(sch.split(loop, factors=[None, 8])[1])
