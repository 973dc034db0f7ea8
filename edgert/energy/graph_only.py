"""The graph ``edgert compile`` would build, without building it (no TVM lowering or build).

For modelling: the energy model reads only the ONNX graph, and the graph stages take seconds
where the TVM build takes tens of seconds to minutes. The stages run in the order of
:func:`edgert.compiler.pipeline.compile_model`, up to (not including) ``lower``.
"""

from __future__ import annotations

import os
from typing import Any


def compile_graph(model_path: str | os.PathLike, **options: Any) -> Any:
    """The ``onnx.ModelProto`` that ``compile_model(model_path, out, **options)`` would lower
    and package (``int_only=True, calib=...``, ``lmul="attention"``,
    ``binary_attention=True, calib=...``...).

    Raises:
        the compiler's errors (ModelError, QuantizationError, InputError...).
    """
    from edgert.compiler.options import CompileOptions
    from edgert.compiler.stages import prepare
    from edgert.compiler.stages.binary_attention import binary_attention, binary_attention_int
    from edgert.compiler.stages.calibrate import calibrate
    from edgert.compiler.stages.check import check
    from edgert.compiler.stages.kernels import choose_kernels
    from edgert.compiler.stages.lmul import lmul_matmuls
    from edgert.compiler.stages.quantize import quantize
    from edgert.compiler.stages.weights import quantize_weights

    ctx = prepare(model_path, CompileOptions.of(None, **options))
    graph = check(model_path, ctx)
    if ctx.options.binary_attention:
        graph = binary_attention(graph, ctx)
    if ctx.options.lmul is not None:
        graph = lmul_matmuls(graph, ctx)
    if ctx.lowbit is not None and not ctx.options.int_only:
        graph = quantize_weights(graph, ctx)
    if ctx.options.int_only:
        calibrated = calibrate(graph, ctx)
        graph = quantize(calibrated, ctx)
        if ctx.options.binary_attention:
            graph = binary_attention_int(graph, calibrated.graph, ctx)
    if ctx.lowbit is not None:
        graph = choose_kernels(graph, ctx)
    return graph.model
