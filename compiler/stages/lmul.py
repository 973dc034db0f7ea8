"""Stage ``lmul`` (``--lmul attention|all``): float32 matmuls -> ``edgert.LMulMatMul``
(:mod:`edgert.compiler.lmul`), right after ``check``, so the later stages see the new nodes."""

from __future__ import annotations

from edgert.compiler.check import check_model
from edgert.compiler.stages import Context, Graph


def lmul_matmuls(graph: Graph, ctx: Context) -> Graph:
    """``graph`` with its ``--lmul`` matmuls on L-Mul products and the manifest's ``lmul``
    section; ``graph`` itself without ``--lmul``.
    """
    mode = ctx.options.lmul
    if mode is None:
        return graph
    from edgert.compiler.lmul import lmul_model

    ctx.stage("replacing matmul products by L-Mul")
    model, section = lmul_model(graph.model, mode, ctx.options.lmul_mantissa)
    return graph.with_model(check_model(model, ctx.source), lmul=section)
