"""``compile_model``: ONNX file in, ``.edgert`` artifact out, as a list of stages.

Each stage is a module of :mod:`edgert.compiler.stages` with one entry function (typed input
-> typed output, the types in :mod:`edgert.compiler.stages`); bracketed ones run only when
their option asks for them:

====================  =======================================  ==============================
stage                 in -> out                                 module
====================  =======================================  ==============================
export                torch module -> ONNX file                ``edgert export``
                                                               (:mod:`edgert.compiler.exporter`)
check                 ONNX file -> fp32 Graph                  :mod:`.stages.check`
[binary_attention]    Graph -> Graph with BinaryAttention      :mod:`.stages.binary_attention`
[lmul]                Graph -> Graph with LMulMatMul           :mod:`.stages.lmul`
[weights]             Graph -> Graph with LutMatMul            :mod:`.stages.weights`
[calibrate]           Graph -> Calibrated (graph + ranges)     :mod:`.stages.calibrate`
[quantize]            Calibrated -> integer Graph              :mod:`.stages.quantize`
[binary_attention]    integer Graph -> integer binary codes     :mod:`.stages.binary_attention_int`
[shift_linear]        Graph -> Graph with ShiftMatMul          :mod:`.stages.shift_linear`
[kernels]             Graph -> Graph (lut or dequant / node)   :mod:`.stages.kernels`
lower                 Graph -> Lowered (Relax IRModule)        :mod:`.stages.lower`
schedule              Lowered -> Library (shared library)      :mod:`.stages.schedule`
package               Graph + Lowered + Library -> .edgert     :mod:`.stages.package`
====================  =======================================  ==============================

``binary_attention`` runs with ``--binary-attention`` (after ``quantize`` with
``--int-only``); ``lmul`` with ``--lmul``; ``weights``
is the float variant of ``--weight-bits``;
``calibrate`` and ``quantize`` run with ``--int-only`` (the integer variant of
``--weight-bits`` chooses its weights in ``calibrate``); ``kernels`` with ``--weight-bits``;
``shift_linear`` with ``--shift-linear`` (integer graphs).
``on_stage`` is called with a short label as each step starts and ``on_stage_done`` with
each stage's time, so the CLI can show progress; library output goes to the build log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgert.capture import released
from edgert.compiler import compile_cache
from edgert.compiler.build_log import BuildLog
from edgert.compiler.options import CompileOptions
from edgert.compiler.stages import Context, Graph, prepare
from edgert.compiler.stages.binary_attention import binary_attention
from edgert.compiler.stages.binary_attention_int import binary_attention_int
from edgert.compiler.stages.calibrate import calibrate
from edgert.compiler.stages.check import check
from edgert.compiler.stages.kernels import choose_kernels
from edgert.compiler.stages.lmul import lmul_matmuls
from edgert.compiler.stages.lower import lower
from edgert.compiler.stages.package import LIB_MEMBER, package
from edgert.compiler.stages.quantize import quantize
from edgert.compiler.stages.schedule import schedule
from edgert.compiler.stages.shift_linear import shift_linears
from edgert.compiler.stages.weights import quantize_weights

__all__ = ["CompileOptions", "LIB_MEMBER", "compile_graph", "compile_model"]


def compile_model(model_path: str | os.PathLike, output: str | os.PathLike,
                  options: CompileOptions | None = None, *,
                  on_stage: Callable[[str], None] | None = None,
                  on_progress: Callable[[int, int], None] | None = None,
                  on_stage_done: Callable[[str, float], None] | None = None,
                  cache: bool | None = None, **fields: Any) -> Path:
    """Compile an fp32 ONNX model into a ``.edgert`` artifact.

    What TVM and the other libraries print is captured per stage into the build log
    (:mod:`edgert.compiler.build_log`): the artifact's ``build.log`` member, or, when the
    compile fails, ``<output stem>.build.log`` (named in the error).

    Args:
        model_path: the ONNX file.
        output: where to write the artifact (written atomically).
        options: what to compile for and how (:class:`CompileOptions`; default: all defaults).
        on_stage: progress callback, called with a label as each step starts.
        on_progress: called with (samples done, samples in all; 0 when unknown) during
            calibration.
        on_stage_done: called with (stage, seconds) as each stage ends: ``check``,
            ``binary_attention``, ``lmul``, ``weights``, ``calibrate``, ``quantize``,
            ``shift_linear``, ``kernels``, ``lower``, ``build``, ``package`` (those that run),
            or only ``cached`` when the compile cache had the artifact.
        cache: use the compile cache (:mod:`edgert.compiler.compile_cache`): reuse the
            artifact of an identical earlier compile, store this one. None (default): yes,
            unless ``EDGERT_NO_COMPILE_CACHE=1``.
        **fields: :class:`CompileOptions` fields given as keywords (``target="rpi5"``,
            ``int_only=True``...), applied over ``options``.

    Returns:
        The artifact path.

    Raises:
        ModelError, UnsupportedOpError, QuantizationError, InputError, TargetError, CompileError.
    """
    ctx = prepare(model_path, CompileOptions.of(options, **fields), released(on_stage),
                  released(on_progress))           # the callbacks print to the real terminal
    log = BuildLog(on_stage_done)
    key = compile_cache.cache_key(model_path, ctx) if compile_cache.enabled(cache) else None
    if key is None:
        return _compile(model_path, output, ctx, log, output)
    start = time.perf_counter()
    path, hit = compile_cache.compiled(
        key, output, lambda dest: _compile(model_path, dest, ctx, log, output))
    if hit and on_stage_done is not None:
        on_stage_done("cached", time.perf_counter() - start)
    return path


def _compile(model_path: str | os.PathLike, dest: str | os.PathLike, ctx: Context,
             log: BuildLog, output: str | os.PathLike) -> Path:
    """Run the stages and write the artifact to ``dest`` (a failure's build log goes next
    to ``output``)."""
    _import_tvm_without_torch()
    with log.kept_on_failure(output):
        graph = graph_stages(model_path, ctx, log)
        with log.stage("lower"):                    # ONNX -> Relax IRModule
            lowered = lower(graph, ctx)
        with log.stage("build"):                    # our kernels + TVM build -> library
            library = schedule(lowered, ctx)
        with log.stage("package"):
            return package(graph, lowered, library, ctx, dest, build_log=log.text())


def _import_tvm_without_torch() -> None:
    """Import TVM, keeping PyTorch out unless something imported it already: ``tvm_ffi``
    imports torch on its own import (for handing torch tensors to TVM functions, which the
    compiler never does), 3 s of CPU time on 2 cores, a fifth of a CNN's compile. torch
    still imports normally afterwards (``sys.modules`` is restored)."""
    if "tvm" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None                     # `import torch` raises ImportError
    try:
        import tvm  # noqa: F401
    finally:
        del sys.modules["torch"]


def compile_graph(model_path: str | os.PathLike, options: CompileOptions | None = None,
                  **fields: Any) -> Any:
    """The ``onnx.ModelProto`` that :func:`compile_model` with these options would lower and
    package: the graph stages only, no TVM lowering or build (seconds instead of tens of
    seconds; what the energy model reads).

    Raises:
        ModelError, UnsupportedOpError, QuantizationError, InputError, TargetError.
    """
    ctx = prepare(model_path, CompileOptions.of(options, **fields))
    return graph_stages(model_path, ctx, BuildLog(None)).model


def graph_stages(model_path: str | os.PathLike, ctx: Context, log: BuildLog) -> Graph:
    """The stages from ``check`` to ``kernels`` (those the options ask for), each timed and
    captured by ``log``: the ONNX file -> the Graph that ``lower`` takes."""
    with log.stage("check"):                        # ONNX file -> checked fp32 graph
        graph = check(model_path, ctx)
    if ctx.options.binary_attention and not ctx.options.int_only:
        with log.stage("binary_attention"):         # [--binary-attention] hashed attention
            graph = binary_attention(graph, ctx)
    if ctx.options.lmul is not None:
        with log.stage("lmul"):                     # [--lmul] L-Mul matmuls
            graph = lmul_matmuls(graph, ctx)
    if ctx.lowbit is not None and not ctx.options.int_only:
        with log.stage("weights"):                  # [--weight-bits, float] LutMatMul weights
            graph = quantize_weights(graph, ctx)
    if ctx.options.int_only:                        # [--int-only] ranges -> integer graph
        with log.stage("calibrate"):
            calibrated = calibrate(graph, ctx)
        with log.stage("quantize"):
            graph = quantize(calibrated, ctx)
        if ctx.options.binary_attention:
            with log.stage("binary_attention"):     # integer codes on the quantized scores
                graph = binary_attention_int(graph, calibrated.graph, ctx)
        if ctx.options.shift_linear is not None:
            with log.stage("shift_linear"):         # [--shift-linear] power-of-two weights
                graph = shift_linears(graph, calibrated.graph, ctx)
    if ctx.lowbit is not None:
        with log.stage("kernels"):                  # [--weight-bits] lookup or dequantize
            graph = choose_kernels(graph, ctx)
    return graph
