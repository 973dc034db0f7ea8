"""Stage ``calibrate`` (``--int-only``): fuse patterns, choose the low-bit weights (if any),
and run the fp32 graph on the calibration samples to collect every tensor's range."""

from __future__ import annotations

from edgert.compiler.stages import Calibrated, Context, Graph
from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs


def calibrate(graph: Graph, ctx: Context) -> Calibrated:
    """The fused graph (low-bit weights dequantized in place, so calibration sees the values
    the integer graph will compute with) and its calibrated ranges.

    Raises:
        InputError: no calibration data, or samples that do not match the inputs.
    """
    from edgert.compiler.calibrate import calibrate as collect_ranges
    from edgert.compiler.calibrate import sample_feeds
    from edgert.compiler.check import check_model, finite_samples
    from edgert.compiler.fuse import fuse_patterns

    opts = ctx.options
    if opts.calib is None:
        raise InputError(
            "--int-only needs calibration data (--calib samples.npz, or a directory of .npz/.npy "
            "files): the integer scale of every tensor comes from the ranges that typical inputs "
            "produce, and without them any choice would clip or waste the integer range")
    feeds = finite_samples(sample_feeds(opts.calib, [v.name for v in graph_inputs(graph.model)]))
    ctx.stage("fusing patterns")
    model, fused = fuse_patterns(graph.model)
    model = check_model(model, ctx.source)
    plan = None
    if ctx.lowbit is not None:
        from edgert.compiler.lowbit import fake_quantized, plan_weights

        ctx.stage("quantizing weights to low bits")
        plan = plan_weights(model, ctx.lowbit, source=ctx.source)
        model = fake_quantized(model, plan)
    ctx.stage("calibrating")                    # chunks of samples the model accepts
    ranges = collect_ranges(model, feeds, method=opts.calib_method, progress=ctx.progress)
    return Calibrated(graph.with_model(model), ranges, fused, plan)
