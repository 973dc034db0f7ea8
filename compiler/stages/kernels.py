"""Stage ``kernels`` (``--weight-bits``): table lookup or dequantize-then-multiply, per
LutMatMul node (``--lut``, :mod:`edgert.compiler.kernel_choice`; ``auto`` times both kernels
here through :mod:`edgert.compiler.timing_service`)."""

from __future__ import annotations

from edgert.compiler.stages import Context, Graph


def choose_kernels(graph: Graph, ctx: Context) -> Graph:
    """``graph`` with every LutMatMul's ``dequant`` attribute set and the choices recorded in
    the ``lowbit`` section; ``graph`` itself without low-bit weights."""
    if ctx.lowbit is None:
        return graph
    from edgert.compiler import kernel_choice

    mode = ctx.options.lut_mode
    ctx.stage("choosing LutMatMul kernels")
    choices = kernel_choice.choose_kernels(
        graph.model, mode, ctx.target, ctx.options.threads,
        on_progress=lambda i, n: ctx.stage(f"timing LutMatMul kernels ({i}/{n} shapes)"))
    kernel_choice.apply_choices(graph.model, choices)
    section = dict(graph.sections["lowbit"])
    kernel_choice.record(section, mode, choices)
    return graph.with_model(graph.model, lowbit=section)
