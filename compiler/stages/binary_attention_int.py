"""Stage ``binary_attention_int`` (``--int-only --binary-attention``): the integer graph's
attention scores on integer binary codes (:mod:`edgert.compiler.binary_attention_int`), fitted on
the calibration samples, right after ``quantize``."""

from __future__ import annotations

from edgert.compiler.check import check_model
from edgert.compiler.stages import Context, Graph
from edgert.onnx_graph import graph_inputs


def binary_attention_int(graph: Graph, fp32: Graph, ctx: Context) -> Graph:
    """``--int-only --binary-attention``: the integer ``graph`` (quantized from ``fp32``) with
    its attention scores on integer binary codes, and the manifest's ``binary_attention``
    section; ``graph`` itself without the option.

    Raises:
        InputError: calibration data that does not fit the model, fine-tuned hashes.
    """
    opts = ctx.options
    if not opts.binary_attention:
        return graph
    from edgert.compiler.binary_attention_int import integer_binary_attention
    from edgert.compiler.calibrate import sample_feeds

    feeds = sample_feeds(opts.calib, [v.name for v in graph_inputs(fp32.model)])
    ctx.stage("fitting integer binary attention hashes")
    model, section = integer_binary_attention(graph.model, fp32.model, feeds, opts.hash_bits,
                                              opts.attention_form, progress=ctx.progress)
    return graph.with_model(check_model(model, ctx.source), binary_attention=section)
