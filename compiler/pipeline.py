"""``compile_model``: ONNX file in, ``.edgert`` artifact out.

Stages: load + check + shape inference -> [low-bit weights (``--weight-bits``,
:mod:`edgert.compiler.lowbit`)] -> [integer graph (``--int-only``)] -> every op supported? ->
Relax import -> build for the target -> package (atomic write). ``on_stage`` is called with a
short label as each stage starts, so the CLI can show progress.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from edgert import __version__
from edgert.artifact import MODEL_MEMBER, sha256, write_artifact
from edgert.compiler.check import check_model, load_model, require_supported
from edgert.compiler.lower import build_library, supported_ops, to_relax
from edgert.errors import InputError
from edgert.onnx_graph import graph_inputs, index_ranges, value_info_json
from edgert.targets import get_target

LIB_MEMBER = "lib/model.so"


def compile_model(model_path: str | os.PathLike, output: str | os.PathLike, *,
                  target: str = "host", threads: int | None = None,
                  on_stage: Callable[[str], None] | None = None,
                  int_only: bool = False, calib: str | os.PathLike | None = None,
                  calib_method: str = "minmax", act_bits: str = "auto", io: str = "float",
                  allow_float: bool = False,
                  on_progress: Callable[[int, int], None] | None = None,
                  weight_bits: int | str | None = None, group_size: int | str | None = None,
                  weight_zero_point: bool = False,
                  lowbit_min_elements: int | None = None, keep_float: Sequence[str] = (),
                  lut: str | None = None,
                  tuning_db: str | os.PathLike | None = None) -> Path:
    """Compile an fp32 ONNX model into a ``.edgert`` artifact.

    Args:
        model_path: the ONNX file.
        output: where to write the artifact (written atomically).
        target: a target name from ``edgert targets`` (``host`` = this machine).
        threads: worker threads the kernels are built for (default: all cores).
        on_stage: progress callback, called with a label as each stage starts.
        int_only: calibrate and rewrite the graph into the integer ONNX graph
            (``docs/integer-onnx.md``) before lowering; needs ``calib``.
        calib: calibration inputs (``.npz`` or a directory, see
            :func:`edgert.compiler.calibrate.load_samples`).
        calib_method: ``minmax`` or ``percentile``.
        act_bits: activation dtype policy, ``auto``, ``linear8``, ``8`` or ``16`` (see
            :mod:`edgert.compiler.quantize`).
        io: with ``int_only``: ``"float"`` (float32 graph inputs/outputs, quantized and
            dequantized inside the graph) or ``"int8"`` (integer I/O: the graph's float inputs
            and outputs become the integer tensors themselves, int8/int16 in and
            int8/int16/int32 out; their dtypes and scales go to the manifest's
            ``quantization.io``, see :class:`edgert.compiler.quantize.QuantizeReport`).
        allow_float: with ``int_only``: keep nodes that have no integer form in float32
            (dequantized before, requantized after) instead of failing; the manifest's
            ``quantization.float_nodes`` names them.
        on_progress: called with (batches done, batches in all) during calibration.
        weight_bits: 1, 2, 3, 4 or "ternary": MatMul/Gemm nodes with constant float weights
            become ``edgert.LutMatMul`` (table lookup on packed low-bit weights, see
            :mod:`edgert.compiler.lowbit`); with ``int_only`` the integer variant (int8
            activations, the weight scale folded into the Requant). The manifest's ``lowbit``
            section lists the nodes, their layouts and the bytes saved.
        group_size: rows of K per weight scale: 32, 64, 128 or "K"/0 (one group over K).
            Default 128, and K with ``int_only`` (the only choice there, except for ternary).
        weight_zero_point: asymmetric low-bit codes (a zero point per group and column).
        lowbit_min_elements: weights with fewer elements (K * N) stay as they are (default
            :data:`edgert.compiler.lowbit.MIN_ELEMENTS`).
        keep_float: glob patterns (fnmatch) of MatMul/Gemm node names or weight names that
            keep their float weights under ``weight_bits``.
        lut: with ``weight_bits``: ``"auto"`` (default: per node, the faster of table lookup
            and dequantize-then-multiply, timed here), ``"always"`` (table lookup) or
            ``"never"`` (dequantize); see :mod:`edgert.compiler.kernel_choice`.
        tuning_db: a tuning database folder written by ``edgert tune``
            (:mod:`edgert.compiler.tune`): kernels it has faster schedules for (for this
            target, same shapes) use them; the manifest's ``tuning`` section lists them.
            ``"shipped"`` (``None``, the default): the records shipped with edgert for the
            target, if any; ``"none"``: no records. The tuning cache is never read on its own.

    Returns:
        The artifact path.

    Raises:
        ModelError, UnsupportedOpError, QuantizationError, InputError, TargetError, CompileError.
    """
    import tvm

    from edgert.compiler.quantize import IO_MODES

    stage = on_stage or (lambda _label: None)
    if io not in IO_MODES:
        raise InputError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
    if not int_only and (io != "float" or allow_float):
        raise InputError("--io int8 and --allow-float apply to integer-only compilation: add "
                         "--int-only --calib DATA")
    lowbit = None
    if weight_bits is not None:
        from edgert.compiler.lowbit import MIN_ELEMENTS, make_config

        lowbit = make_config(weight_bits, group_size, zero_point=weight_zero_point,
                             integer=int_only,
                             min_elements=MIN_ELEMENTS if lowbit_min_elements is None
                             else lowbit_min_elements, keep=keep_float)
        from edgert.compiler.kernel_choice import check_mode

        lut = check_mode("auto" if lut is None else lut)
    elif group_size is not None or weight_zero_point or keep_float or lut is not None:
        raise InputError("--group-size, --weight-zero-point, --keep-float and --lut apply to "
                         "low-bit weights: add --weight-bits {1,2,3,4,ternary}")
    tgt = get_target(target)
    source = str(model_path)
    from edgert.compiler.tune import SHIPPED, resolve_tuning_db, shipped_db_root

    tuning_db = resolve_tuning_db(tuning_db, tgt)
    db_label = SHIPPED if tuning_db == shipped_db_root() else str(tuning_db)

    stage("checking the model")
    model = load_model(model_path)
    options = {"target": target, "threads": threads, "precision": "fp32"}
    extra = {}
    if lowbit is not None:
        options.update(weight_bits=lowbit.weight_bits,
                       group_size="K" if lowbit.group_size == 0 else lowbit.group_size,
                       weight_zero_point=weight_zero_point, lowbit_min_elements=lowbit.min_elements,
                       keep_float=list(keep_float), lut=lut)
    if int_only:
        model, extra = integer_model(model, calib, method=calib_method, act_bits=act_bits,
                                     source=source, stage=stage, on_progress=on_progress, io=io,
                                     allow_float=allow_float, lowbit=lowbit)
        options.update(precision="int-only", calib=Path(calib).name, calib_method=calib_method,
                       act_bits=act_bits, io=io, allow_float=allow_float)
    elif lowbit is not None:
        from edgert.compiler.lowbit import lowbit_model

        stage("quantizing weights to low bits")
        model, section = lowbit_model(model, lowbit.weight_bits, lowbit.group_size or "K",
                                      zero_point=weight_zero_point,
                                      min_elements=lowbit.min_elements, keep=lowbit.keep,
                                      source=source)
        model = check_model(model, source)
        extra = {"lowbit": section}
    if lowbit is not None:
        from edgert.compiler import kernel_choice

        stage("choosing LutMatMul kernels")
        choices = kernel_choice.choose_kernels(
            model, lut, tgt, threads,
            on_progress=lambda i, n: stage(f"timing LutMatMul kernels ({i}/{n} shapes)"))
        kernel_choice.apply_choices(model, choices)
        kernel_choice.record(extra["lowbit"], lut, choices)
    require_supported(model, supported_ops(), source=source)
    bounds = index_ranges(model)
    inputs = [value_info_json(v, source) | ({"range": bounds[v.name]} if v.name in bounds else {})
              for v in graph_inputs(model)]
    outputs = [value_info_json(v, source) for v in model.graph.output]

    stage("importing into TVM")
    mod = to_relax(model, source=source)

    stage(f"compiling for {tgt.name}")
    tuned: list[str] = []
    lib = build_library(mod, tgt, threads=threads, source=source, tuning_db=tuning_db,
                        tuned=tuned)
    if tuning_db is not None:
        options["tuning_db"] = db_label
        extra["tuning"] = {"db": db_label, "tuned_kernels": sorted(tuned)}

    stage("packaging")
    model_bytes = model.SerializeToString()
    manifest = {
        "edgert_version": __version__,
        "tvm_version": tvm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": tgt.to_json(),
        "inputs": inputs,
        "outputs": outputs,
        "lib": LIB_MEMBER,
        "source_model": {"name": Path(model_path).name, "sha256": sha256(Path(model_path).read_bytes())},
        "compile_options": options,
        **extra,
    }
    return write_artifact(output, manifest, {MODEL_MEMBER: model_bytes, LIB_MEMBER: lib})


def integer_model(model: onnx.ModelProto, calib: str | os.PathLike | None, *, method: str,
                  act_bits: str, source: str, stage: Callable[[str], None],
                  on_progress: Callable[[int, int], None] | None, io: str = "float",
                  allow_float: bool = False, lowbit: object | None = None
                  ) -> tuple[onnx.ModelProto, dict]:
    """Calibrate ``model`` and rewrite it into the integer graph; returns it and the manifest's
    ``quantization`` section (``io``: the integer I/O scales, present with ``io="int8"``;
    ``float_nodes``: node -> why it stayed float32, with ``allow_float``) and, with ``lowbit``
    (a :class:`edgert.compiler.lowbit.LowbitConfig` of the integer variant), the ``lowbit``
    section. Low-bit weights are chosen and quantized after pattern fusion; calibration runs on
    the model with them dequantized."""
    from edgert.compiler.calibrate import calibrate, load_samples
    from edgert.compiler.fuse import fuse_patterns
    from edgert.compiler.quantize import quantize_model

    if calib is None:
        raise InputError(
            "--int-only needs calibration data (--calib samples.npz, or a directory of .npz/.npy "
            "files): the integer scale of every tensor comes from the ranges that typical inputs "
            "produce, and without them any choice would clip or waste the integer range")
    feeds = load_samples(calib, [v.name for v in graph_inputs(model)])
    stage("fusing patterns")
    model, fused = fuse_patterns(model)
    model = check_model(model, source)
    plan = None
    if lowbit is not None:
        from edgert.compiler.lowbit import fake_quantized, plan_weights

        stage("quantizing weights to low bits")
        plan = plan_weights(model, lowbit, source=source)
        model = fake_quantized(model, plan)
    stage("calibrating")
    ranges = calibrate(model, feeds, method=method, progress=on_progress)
    stage("quantizing")
    qmodel, report = quantize_model(model, ranges, act_bits=act_bits, source=source, io=io,
                                    allow_float=allow_float,
                                    lowbit=None if plan is None else plan.weights)
    counts: dict[str, int] = {}
    for dtype in report.dtypes.values():
        counts[dtype] = counts.get(dtype, 0) + 1
    section = {"act_bits": act_bits, "calib_method": method, "activation_dtypes": counts,
               "narrowed": report.narrowed, "fused": {k: v for k, v in fused.items() if v},
               "float_nodes": report.float_nodes}
    if io == "int8":
        section["io"] = {"inputs": report.io.get("inputs", {}),
                         "outputs": report.io.get("outputs", {})}
    extra = {"quantization": section}
    if plan is not None:
        from edgert.compiler.lowbit import report as lowbit_report

        extra["lowbit"] = lowbit_report(plan, report.lowbit, variant="integer",
                                        left_float=report.float_nodes)
    return qmodel, extra
