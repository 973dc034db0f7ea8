"""Lower an ONNX model to TVM (Relax) and build a shared library for a target.

TVM's Relax ONNX frontend (with the integer-graph converters of ``lower_int``), inference-time
op decomposition, then ``tvm.compile`` with the target's dict. CPU targets: the integer and
float32 matmuls run on the kernels of :mod:`edgert.compiler.schedule_intmatmul` (x86 AVX2
``vpmaddwd`` and FMA, aarch64 ``sdot`` and NEON FMA), LutMatMul on those of
``edgert.ops.lut_matmul.tvm_x86``/``tvm_arm``, and TVM's default CPU pipeline gets the
elementwise and row-reduction schedules of :mod:`edgert.compiler.schedule_cpu` after operator
fusion.
CUDA targets: int8 matmuls run the ``__dp4a`` kernel of :mod:`edgert.compiler.schedule_cuda`,
everything else dlight's default GPU schedules, which every GPU kernel needs to bind its loops
to threads.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from functools import lru_cache
from typing import Any

import onnx

from edgert.compiler import schedule_cpu, schedule_rows
from edgert.compiler.fold import declared_shape
from edgert.errors import CompileError, TargetError, last_line
from edgert.onnx_graph import graph_inputs, node_label
from edgert.ops import register_schemas_for
from edgert.targets import Target, host_arch, isa


@lru_cache(maxsize=1)
def supported_ops() -> frozenset[tuple[str, str]]:
    """``(domain, op_type)`` pairs the compiler can lower: TVM's ONNX frontend table (default
    domain) plus the integer-graph converters of :mod:`edgert.compiler.lower_int`."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from edgert.compiler import lower_int

    tvm_ops = frozenset(("", op) for op in onnx_frontend._get_convert_map())
    return tvm_ops | lower_int.supported_ops()


def to_relax(model: onnx.ModelProto, source: str = "model") -> Any:
    """Import an ONNX model (fp32 or the integer graph of ``docs/integer-onnx.md``) into a Relax
    IRModule (weights embedded as constants).

    Raises:
        CompileError: one line naming the node and op TVM's importer failed on (when it got
            that far), its reason, and for a model with dynamic dims other than the batch, a
            pointer to ``--input-shape``. What TVM printed meanwhile (its dump of the node's
            inputs, the ``BlockBuilder destroyed`` warning of the abandoned import) stays in
            the build log: the failed import is released here, inside the stage's capture.
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgert.compiler.lower_int import integer_converters
    from edgert.compiler.standard_int_converters import tensor_gathers

    register_schemas_for(model)   # from_onnx runs the ONNX checker first
    try:
        with integer_converters(), tensor_gathers(model):
            mod = from_onnx(model, keep_params_in_input=False)
        return relax.transform.DecomposeOpsForInference()(mod)
    except Exception as e:
        message = _import_failure(e, model, source)
    gc.collect()                  # the failed import's BlockBuilder, freed while captured
    raise CompileError(message)


def _import_failure(error: BaseException, model: onnx.ModelProto, source: str) -> str:
    """The one-line message of a failed TVM import (see :func:`to_relax`)."""
    node = None
    tb = error.__traceback__
    while tb is not None:                  # the importer's loop over the graph's nodes
        if tb.tb_frame.f_code.co_name == "_construct_nodes":
            found = tb.tb_frame.f_locals.get("node")
            node = found if isinstance(found, onnx.NodeProto) else node
        tb = tb.tb_next
    where = f" at node {node_label(node)!r} ({node.op_type})" if node is not None else ""
    dynamic = [f"{v.name} {declared_shape(v)}" for v in graph_inputs(model)
               if any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim[1:])]
    hint = ("; the model has dynamic dims (" + ", ".join(dynamic) + "): fix them with "
            "--input-shape NAME=D1,D2,..." if dynamic else "")
    return f"{source}: TVM's ONNX import failed{where}: {last_line(error)}{hint}"


def build_library(mod: Any, target: Target, *, threads: int | None = None,
                  source: str = "model", tuning_db: str | os.PathLike | None = None,
                  tuned: list[str] | None = None) -> bytes:
    """Compile a Relax module for ``target`` and return the shared library's bytes.

    ``tuning_db``: a tuning database (``edgert tune``, :mod:`edgert.compiler.tune`) whose
    records for ``target`` replace the default schedules of the kernels they cover (CPU
    targets); the names of those kernels are appended to ``tuned``."""
    import tvm

    cc = linker_for(target)
    tvm_target = tvm.target.Target(target.tvm_target_dict(num_cores=threads))
    if tuning_db is not None and target.cuda_arch:
        raise TargetError(f"--tuning-db applies to CPU targets; {target.name} is a GPU target")
    try:
        if target.cuda_arch:
            from edgert.compiler import schedule_cuda_ops, schedule_intmatmul

            int_isa = schedule_intmatmul.target_isa(target)      # dp4a int8 matmuls
            if int_isa is not None:
                mod = schedule_intmatmul.schedule_int_matmuls(mod, tvm_target, isa=int_isa)
            mod = schedule_cuda_ops.schedule_edgert_ops(mod)    # LMul, Shift, hash, binary attn
            executable = tvm.compile(_schedule_for_gpu(mod, tvm_target), target=tvm_target)
        else:
            from edgert.compiler.build_parallel import compile_cpu   # kernels on threads

            executable = compile_cpu(_schedule_for_cpu(mod, target, tvm_target), tvm_target,
                                     tir_pipeline=schedule_cpu.register_tir_pipeline(),
                                     relax_pipeline=_cpu_relax_pipeline(target, tvm_target,
                                                                        tuning_db, tuned))
    except Exception as e:
        raise CompileError(f"{source}: TVM failed to compile for {target.name}: {last_line(e)}") from None
    with tempfile.TemporaryDirectory(prefix="edgert-build-") as tmp:
        lib_path = os.path.join(tmp, "model.so")
        try:
            if cc:
                executable.export_library(lib_path, cc=cc)
            else:
                executable.export_library(lib_path)
        except Exception as e:
            raise CompileError(f"{source}: linking the library for {target.name} failed: "
                               f"{last_line(e)}") from None
        with open(lib_path, "rb") as f:
            return f.read()


def _cpu_relax_pipeline(target: Target, tvm_target: Any, tuning_db: str | os.PathLike | None,
                        tuned: list[str] | None) -> Any:
    """The Relax pipeline for a CPU target: :func:`schedule_cpu.cpu_pipeline`, or with a
    tuning database its variant that applies the database's records first."""
    if tuning_db is None:
        return schedule_cpu.cpu_pipeline(tvm_target)
    from edgert.compiler.tuning_db import target_db_dir, tuned_cpu_pipeline

    return tuned_cpu_pipeline(tvm_target, target_db_dir(tuning_db, target), tuned)


def linker_for(target: Target) -> str | None:
    """The cross compiler for ``target``, or ``None`` to use the native one."""
    if target.arch == host_arch() or not target.cross_cc:
        return None
    if shutil.which(target.cross_cc) is None:
        raise TargetError(
            f"target {target.name} needs the cross compiler {target.cross_cc}; install it with "
            f"`apt-get install {target.cross_package}`"
        )
    return target.cross_cc


def _schedule_for_cpu(mod: Any, target: Target, tvm_target: Any) -> Any:
    """Our CPU kernels where the target has them (integer matmuls with AVX2 ``vpmaddwd`` on
    x86 and dotprod ``sdot`` on aarch64 (int8 operands), float32 matmuls with FMA on x86 AVX2
    and aarch64 NEON: see
    :mod:`edgert.compiler.schedule_intmatmul`; LutMatMul on x86 AVX2 and on aarch64 NEON: see
    :mod:`edgert.ops.lut_matmul.tvm_x86`, :mod:`edgert.ops.lut_matmul.tvm_arm`;
    convolutions first become im2col + matmul: :mod:`edgert.compiler.schedule_conv`, float32
    depthwise ones a kernel of their own: :mod:`edgert.compiler.schedule_depthwise`, other
    float32 grouped ones a batched matmul: :mod:`edgert.compiler.schedule_grouped`);
    everything else stays on TVM's default pipeline."""
    from edgert.compiler import (schedule_conv, schedule_conv_transpose, schedule_depthwise,
                                 schedule_grouped, schedule_intmatmul, schedule_nhwc,
                                 schedule_sigmoid)
    from edgert.compiler.schedule_int_conv import int_grouped_convs
    from edgert.ops.lmul_matmul import tvm_cpu as lmul_cpu

    mod = lmul_cpu.schedule_lmul_matmuls(mod, target)      # LMulMatMul: the vector kernel
    mod = schedule_nhwc.nhwc_convs(mod)           # float32 convolution chains kept NHWC
    mod = schedule_conv.convs_as_matmuls(schedule_depthwise.depthwise_convs(mod))
    mod = schedule_grouped.grouped_convs(mod)     # other float32 grouped ones: batched matmul
    mod = schedule_conv_transpose.transposed_convs(mod)   # float32, kernel == stride: a matmul
    mod = int_grouped_convs(mod)          # integer grouped ones (depthwise too): a kernel
    int_isa = schedule_intmatmul.target_isa(target)
    if int_isa is not None:
        mod = schedule_intmatmul.schedule_int_matmuls(mod, tvm_target, isa=int_isa)
    from edgert.compiler.schedule_attention import fused_attentions
    mod = fused_attentions(mod, tvm_target, isa.vector_bits(target) // 32)  # fp32 attention
    float_isa = schedule_intmatmul.float_isa(target)
    if float_isa is not None:
        mod = schedule_intmatmul.schedule_float_matmuls(mod, tvm_target, float_isa)
    mod = schedule_rows.schedule_row_ops(mod, tvm_target, isa.vector_bits(target) // 32)
    mod = schedule_cpu.vectorizable_softmax(schedule_cpu.vectorizable_erf(mod))
    mod = schedule_sigmoid.vectorizable_sigmoid(mod)      # float32 sigmoid: polynomial exp
    lut = isa.lut_isa(target)
    if lut in ("x86", "x86-vnni"):
        from edgert.ops.lut_matmul import tvm_x86    # pshufb (and VNNI) LutMatMul kernels

        mod = tvm_x86.schedule_lut_matmuls(mod, tvm_target, vnni=lut == "x86-vnni",
                                           zmm="avx512bw" in target.cpu_features)
    elif lut == "neon":
        from edgert.ops.lut_matmul import tvm_arm    # NEON tbl LutMatMul kernels

        mod = tvm_arm.schedule_lut_matmuls(mod, tvm_target)
    return mod


def _schedule_for_gpu(mod: Any, tvm_target: Any) -> Any:
    """dlight's default GPU schedules for every kernel not already ours (the dp4a int8 matmuls
    are), except that matmuls with an int8 operand are scheduled as plain int32 matmuls:
    dlight's int8 tensor-core path (``MatmulInt8Tensorization``, taken for sm_70+ when every dim
    exceeds 64) fails in TVM 0.27's CUDA codegen (``fragment_info_`` check) on a
    128 x 384 x 384 ``MatMulInteger``."""
    from tvm import relax, tirx
    from tvm.s_tir import dlight as dl
    from tvm.target import Target

    class Matmul(dl.gpu.Matmul):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if isinstance(func, tirx.PrimFunc) and any(
                    str(getattr(p.ty, "dtype", "")) == "int8" for p in func.params):
                target = Target({**target.export(), "arch": "sm_61"})   # no int8 WMMA
            return super().apply(func, target, tunable)

    mod = relax.transform.LegalizeOps()(mod)
    with tvm_target:
        return dl.ApplyDefaultSchedule(
            Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )(mod)
