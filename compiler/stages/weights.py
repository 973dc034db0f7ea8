"""Stage ``weights``: low-bit weights of the float variant (``--weight-bits`` without
``--int-only``): MatMul/Gemm with constant float weights -> ``edgert.LutMatMul``.

The integer variant quantizes its weights during calibration
(:func:`edgert.compiler.stages.calibrate.calibrate`), after pattern fusion.
"""

from __future__ import annotations

from edgert.compiler.check import check_model
from edgert.compiler.stages import Context, Graph


def quantize_weights(graph: Graph, ctx: Context) -> Graph:
    """``graph`` with its large constant-weight matmuls on packed low-bit weights and the
    manifest's ``lowbit`` section; ``graph`` itself without ``--weight-bits`` or with
    ``--int-only``."""
    config = ctx.lowbit
    if config is None or ctx.options.int_only:
        return graph
    from edgert.compiler.lowbit import lowbit_model

    ctx.stage("quantizing weights to low bits")
    model, section = lowbit_model(graph.model, config.weight_bits, config.group_size or "K",
                                  zero_point=ctx.options.weight_zero_point,
                                  min_elements=config.min_elements, keep=config.keep,
                                  source=ctx.source)
    return graph.with_model(check_model(model, ctx.source), lowbit=section)
