"""Stage ``quantize`` (``--int-only``): a calibrated fp32 graph -> the integer ONNX graph
(``docs/integer-onnx.md``), with the manifest's ``quantization`` (and ``lowbit``) sections."""

from __future__ import annotations

from edgert.compiler.stages import Calibrated, Context, Graph


def quantize(cal: Calibrated, ctx: Context) -> Graph:
    """Rewrite ``cal``'s graph into the integer graph (:func:`edgert.compiler.quantize.
    quantize_model`). The ``quantization`` section: act_bits, calib_method, how many tensors
    got each activation dtype, the narrowed ranges, the fused patterns, the float nodes and,
    with ``io="int8"``, the integer I/O scales.

    Raises:
        QuantizationError, UnsupportedOpError: see :func:`edgert.compiler.quantize.quantize_model`.
    """
    from edgert.compiler.quantize import quantize_model

    opts = ctx.options
    ctx.stage("quantizing")
    model, report = quantize_model(cal.graph.model, dict(cal.ranges), act_bits=opts.act_bits,
                                   source=ctx.source, io=opts.io, allow_float=opts.allow_float,
                                   lowbit=None if cal.plan is None else cal.plan.weights)
    counts: dict[str, int] = {}
    for dtype in report.dtypes.values():
        counts[dtype] = counts.get(dtype, 0) + 1
    section = {"act_bits": opts.act_bits, "calib_method": opts.calib_method,
               "activation_dtypes": counts, "narrowed": report.narrowed,
               "fused": {k: v for k, v in cal.fused.items() if v},
               "float_nodes": report.float_nodes}
    if opts.io == "int8":
        section["io"] = {"inputs": report.io.get("inputs", {}),
                         "outputs": report.io.get("outputs", {})}
    sections = {"quantization": section}
    if cal.plan is not None:
        from edgert.compiler.lowbit import report as lowbit_report

        sections["lowbit"] = lowbit_report(cal.plan, report.lowbit, variant="integer",
                                           left_float=report.float_nodes)
    return cal.graph.with_model(model, **sections)
