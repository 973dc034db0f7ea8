"""Stage ``shift_linear`` (``--shift-linear mlp|all|PATTERN``): the chosen Linears of the
integer graph -> ``edgert.ShiftMatMul`` on power-of-two weights (:mod:`edgert.compiler.
shift_linear`), right after ``quantize``."""

from __future__ import annotations

from edgert.compiler.check import check_model
from edgert.compiler.stages import Context, Graph


def shift_linears(graph: Graph, fp32: Graph, ctx: Context) -> Graph:
    """``graph`` (the integer graph quantized from ``fp32``) with its ``--shift-linear``
    Linears on shifts and the manifest's ``shift_linear`` section; ``graph`` itself without
    ``--shift-linear``.

    Raises:
        InputError: a bad pattern.
    """
    choice = ctx.options.shift_linear
    if choice is None:
        return graph
    from edgert.compiler.shift_linear import shift_linear_model

    ctx.stage("rounding Linear weights to powers of two")
    model, section = shift_linear_model(graph.model, fp32.model, choice)
    return graph.with_model(check_model(model, ctx.source), shift_linear=section)
