"""Stage ``binary_attention`` (``--binary-attention``): attention subgraphs -> binary codes and
popcount scores (:mod:`edgert.compiler.binary_attention`), fitted on the calibration samples,
right after ``check``, so the later stages see the new nodes. With ``--int-only`` the integer
form (:mod:`.binary_attention_int`) runs after ``quantize`` instead, on the integer graph."""

from __future__ import annotations

from edgert.compiler.check import check_model
from edgert.compiler.stages import Context, Graph
from edgert.onnx_graph import graph_inputs


def binary_attention(graph: Graph, ctx: Context) -> Graph:
    """``graph`` with its attention on ``edgert.HashCodes`` + ``edgert.BinaryAttention`` and
    the manifest's ``binary_attention`` section; ``graph`` itself without the option.

    Raises:
        InputError: calibration data that does not fit the model.
    """
    opts = ctx.options
    if not opts.binary_attention or opts.int_only:
        return graph
    from edgert.compiler.binary_attention import binary_attention_model
    from edgert.compiler.calibrate import sample_feeds

    feeds = sample_feeds(opts.calib, [v.name for v in graph_inputs(graph.model)])
    ctx.stage("fitting binary attention hashes")
    model, section = binary_attention_model(graph.model, feeds, opts.hash_bits,
                                            opts.attention_form, progress=ctx.progress)
    return graph.with_model(check_model(model, ctx.source), binary_attention=section)
