"""Stage ``package``: graph + library -> the ``.edgert`` artifact (manifest, integer or fp32
ONNX, shared library), written atomically."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from edgert import __version__
from edgert.artifact import BUILD_LOG_MEMBER, MODEL_MEMBER, sha256, write_artifact
from edgert.compiler.stages import Context, Graph, Library, Lowered

LIB_MEMBER = "lib/model.so"


def package(graph: Graph, lowered: Lowered, library: Library, ctx: Context,
            output: str | os.PathLike, build_log: str | None = None) -> Path:
    """Write the artifact (with ``build_log``, the compile's log text, as member
    ``build.log`` when given); returns its path."""
    import tvm

    ctx.stage("packaging")
    source = Path(ctx.source)
    sections = dict(graph.sections)
    if library.tuning is not None:
        sections["tuning"] = library.tuning
    manifest = {
        "edgert_version": __version__,
        "tvm_version": tvm.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": ctx.target.to_json(),
        "inputs": lowered.inputs,
        "outputs": lowered.outputs,
        "lib": LIB_MEMBER,
        "source_model": {"name": source.name, "sha256": sha256(source.read_bytes())},
        "compile_options": _compile_options(ctx),
        **sections,
    }
    members = {MODEL_MEMBER: graph.model.SerializeToString(), LIB_MEMBER: library.data}
    if build_log is not None:
        manifest["build_log"] = BUILD_LOG_MEMBER
        members[BUILD_LOG_MEMBER] = build_log.encode("utf-8")
    return write_artifact(output, manifest, members)


def _compile_options(ctx: Context) -> dict:
    """The manifest's ``compile_options``: what was asked, with the defaults filled in."""
    opts, lowbit = ctx.options, ctx.lowbit
    out: dict = {"target": opts.target, "threads": opts.threads, "precision": "fp32"}
    if lowbit is not None:
        out.update(weight_bits=lowbit.weight_bits,
                   group_size="K" if lowbit.group_size == 0 else lowbit.group_size,
                   weight_zero_point=opts.weight_zero_point,
                   lowbit_min_elements=lowbit.min_elements, keep_float=list(opts.keep_float),
                   lut=opts.lut_mode)
    if opts.int_only:
        calib = (Path(opts.calib).name if isinstance(opts.calib, (str, os.PathLike))
                 else "samples given in Python")
        out.update(precision="int-only", calib=calib,
                   calib_method=opts.calib_method, act_bits=opts.act_bits, io=opts.io,
                   allow_float=opts.allow_float)
    if opts.input_shapes:
        out["input_shapes"] = {name: list(dims) for name, dims in opts.input_shapes}
    if ctx.tuning_db is not None:
        out["tuning_db"] = ctx.tuning_label
    return out
