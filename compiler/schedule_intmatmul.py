"""CPU kernels for the integer matmuls (``MatMulInteger``, ``edgert.IntMatMul``): x86 AVX2
``vpmaddwd`` and aarch64 dotprod ``sdot``, one TVMScript template for both.

TVM's default CPU pipeline schedules nothing, so the TE reduction the converters emit
(:func:`edgert.ops.intmatmul.te_compute`) runs as a scalar triple loop.
:func:`schedule_int_matmuls` replaces every such call (recognised by the PrimFunc attribute
``edgert.op = "intmatmul"`` that ``lower_int`` sets) with a hand-written kernel built around one
dot-product instruction (:class:`DotIsa`, chosen per target by :func:`target_isa`):

- :data:`AVX2` (x86 with AVX2 or AVX-512): ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``) multiplies
  16 int16 pairs and adds each pair into one of 8 int32 lanes. Operands (int8 or int16) are
  sign-extended to int16 and consumed in pairs of K (G = 2).
- :data:`SDOT` (aarch64 with dotprod: rpi5): ``sdot`` (``llvm.aarch64.neon.sdot``) adds 4
  int8 x int8 products into each of 4 int32 lanes: int8 operands only, in quads of K (G = 4).
  int16 operands (``--act-bits`` keeps some activations int16) stay on the generic compute.

The arithmetic is int32 modulo 2**32 like every int32 accumulation, so results are bit-identical
with :func:`edgert.ops.intmatmul.reference` whenever the int32 bound holds (the quantizer proves
it). The kernel, for an ISA of L int32 lanes and G elements per lane:

- Layout of B (the right operand), ``[ceil(N/NR), ceil(K/G), NR, G]`` of int16 (G = 2) or int8
  (G = 4): ``packed[nb, p, j, h] = B[G*p + h, nb*NR + j]``, zero where ``G*p + h >= K`` or the
  column is past N (:func:`pack_weight`); the kernel takes the same bytes as int32 words
  ``[.., NR]``, one group per int32 (:func:`pack_weight_words`). A constant weight [K, N] is
  packed once, by numpy, when the module is rewritten, so the runtime never re-packs it. A B
  that is an activation (attention ``Q·K^T`` and ``P·V``, batched) is packed by the kernel, one
  column chunk per task.
- A is packed first, in panels of ``MP`` rows of int32 words (element h of a group in bits
  ``[32h/G, 32(h+1)/G)``; zero past K and past M), every panel once, into a workspace of the
  kernel (in parallel over panels); a word is broadcast to L lanes. Float32 kernels skip it:
  their words are single elements, so a panel would be a plain copy of A's rows (7 MB for a
  ResNet 3x3 64->64 convolution at 56x56); their tiles read A directly.
- Micro-kernel: ``MR`` rows x ``NR`` columns (default 4 x 16: on AVX2 8 ymm accumulators, 2 ymm
  of B, 1 broadcast; on NEON 16 q accumulators, 4 of B, 1 broadcast), K innermost. Tails: a row
  tail of at most ``MR/2`` rows runs a 1-row kernel per row, a longer one the ``MR``-row kernel
  over zero rows (float32, reading A itself, always row by row); a column tail uses masked
  stores.
- Parallelism: one parallel loop over tasks = (batch, panel of ``MP`` rows, chunk of columns),
  the chunk width picked so that even ``M = 1`` yields ``2 * num-cores`` tasks; no parallel
  loop at all when ``num-cores`` is 1 or ``K * N`` is small (``parallel_min_kn``). (A run-time
  choice on M would duplicate the kernel body: twice the parse and compile time; a chunk
  width computed at run time made each kernel 4x slower to compile.) Packing A in each task
  instead, as before, packed a panel once per chunk: 6-24 times on all-MiniLM-L6's matmuls,
  9% of its one-thread run.

The kernels carry ``tirx.is_scheduled`` so that nothing downstream re-schedules them, and are
marked opaque for operator fusion. Other targets (generic aarch64 without dotprod, CUDA) keep
the generic compute.

Not rewritten (left on the generic compute): batch dims of B that are neither absent/all 1
nor equal to A's (a broadcast between different batch shapes). A symbolic K or N (activation
B only) is handled by the unspecialized kernel, which takes it as an argument.

Float32 kernels are shared between shapes: K and N are arguments of the call, so one kernel
serves every matmul of a signature (B packed or not, batched, transposed; serial or parallel;
the column blocks per task, 1 to ``max_chunk``). A CNN's convolutions then build a handful of
matmul kernels instead of one per (K, N) (mobilenet_v3_small: 5 instead of 33; its compile
took 26 s of CPU time instead of 40, docs/benchmarks.md "Compile time"). Integer kernels stay specialized per (K, N).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgert.compiler.matmul_pack import (DEFAULT_CONFIG, FLOAT_CONFIG, FLOAT_CONFIG_AVX512,
                                         MatmulConfig, pack_weight, pack_weight_words, pack_word)
from edgert.compiler.relax_rewrite import (bound_call, dims_product, num_cores, permute_axes,
                                           rewrite_call_tirs, rewrite_calls, same_dims,
                                           static_int)
from edgert.targets import isa as _isa
from edgert.targets.isa import (AVX2, DP4A, FMA_AVX512, FMA_NEON, FMA_X86, INT_DTYPES, SDOT,
                                VNNI, DotIsa)

__all__ = ["AVX2", "DP4A", "FMA_AVX512", "FMA_NEON", "FMA_X86", "SDOT", "VNNI", "DotIsa",
           "INT_DTYPES", "DEFAULT_CONFIG", "FLOAT_CONFIG", "FLOAT_CONFIG_AVX512", "MatmulConfig",
           "pack_weight", "pack_weight_words", "pack_word", "num_cores", "rewrite_call_tirs",
           "rewrite_calls", "target_isa", "target_has_avx2", "float_isa", "int_matmul_kernel",
           "schedule_int_matmuls", "schedule_float_matmuls"]

OP_ATTR = "edgert.op"
"""PrimFunc attribute that marks a generic integer matmul (value ``"intmatmul"``)."""
OP_NAME = "intmatmul"


def target_isa(target: Any) -> DotIsa | tuple[DotIsa, ...] | None:
    """The integer-matmul kernel ISA of an edgert :class:`~edgert.targets.Target`
    (:func:`edgert.targets.isa.int_matmul_isa`)."""
    return _isa.int_matmul_isa(target)


def target_has_avx2(target: Any) -> bool:
    """Whether a target runs x86-64 code with AVX2 on its CPU side
    (:func:`edgert.targets.isa.has_avx2`)."""
    return _isa.has_avx2(target)


def float_isa(target: Any) -> DotIsa | None:
    """The float32 matmul kernel ISA of a CPU target (:func:`edgert.targets.isa.float_matmul_isa`)."""
    return _isa.float_matmul_isa(target)


# ---------------------------------------------------------------- the TVMScript kernel

def int_matmul_kernel(a_dtype: str, b_dtype: str, k: int | None, n: int | None, *,
                      b_packed: bool, b_batched: bool = False,
                      config: MatmulConfig = DEFAULT_CONFIG, cores: int = 1,
                      isa: DotIsa = AVX2, name: str = "int_matmul_x86",
                      b_transposed: bool = False, shared: bool = False,
                      nbc: int = 1) -> Any:
    """The ``isa`` kernel (integer, or float32 for the FMA ISAs) as a TIR PrimFunc
    ``(A, B, C)``, specialized to ``k`` and ``n``.

    Args:
        a_dtype, b_dtype: ``int8`` or ``int16`` (AVX2), ``int8`` (sdot).
        k, n: the inner and output dims; ``None`` leaves one symbolic: the PrimFunc then takes
            it as an int64 argument after B (``(A, B, k, n, C)``, as ``call_tir`` passes them).
        b_packed: B is the constant int32 [ceil(n/NR), ceil(k/group), NR] of
            :func:`pack_weight_words` (``k`` and ``n`` static); otherwise B is ``[BB, k, n]``
            of ``b_dtype``, packed by the kernel.
        b_batched: (unpacked B) ``BB`` equals A's batch; otherwise ``BB = 1`` is broadcast.
        cores: ``num-cores`` of the target (1: no parallel loop at all).
        isa: :data:`AVX2`, :data:`SDOT` or :data:`DP4A` (the CUDA kernel; ``cores`` unused).
        b_transposed: (float32 ISAs, unpacked B) B is given as ``[BB, n, k]``, its transpose
            (attention's ``Q K^T`` without a transpose kernel).
        shared: one kernel for many shapes: ``k`` and ``n`` (both None) are int64 arguments
            after B (``(A, B, k, n, C)``), a packed B included, and ``nbc`` (column blocks
            per task, see :func:`chunk_blocks`) is fixed; one build serves every matmul of a
            signature (a CNN's convolutions). (``nbc`` as an argument too made the kernel
            ~6x slower to compile.)

    A is ``[BA, M, k]`` (BA, M symbolic), C is ``[BA, M, n]`` int32.
    """
    if a_dtype not in isa.operands or (not b_packed and b_dtype not in isa.operands):
        raise ValueError(f"{'/'.join(isa.operands)} operands expected for {isa.name}, got "
                         f"{a_dtype} and {b_dtype}")
    if shared and (k is not None or n is not None or isa is DP4A):
        raise ValueError("a shared kernel takes k and n as arguments (CPU ISAs only)")
    if b_packed and (k is None or n is None) and not shared:
        raise ValueError("a packed (constant) B needs static k and n (or a shared kernel)")
    if isa.a_offset and not b_packed:
        raise ValueError(f"{isa.name} takes a constant (packed) B only")
    if config.nr % isa.lanes:
        raise ValueError(f"nr={config.nr} is not a multiple of {isa.name}'s {isa.lanes} lanes")
    if isa is DP4A:
        from edgert.compiler.schedule_cuda import dp4a_kernel

        return dp4a_kernel(k, n, b_packed=b_packed, b_batched=b_batched, nr=config.nr,
                           name=name)
    from edgert.compiler.matmul_template import template as _template

    template = _template(a_dtype, isa.word if b_packed else b_dtype, b_packed,
                         bool(b_batched) and not b_packed, config, max(int(cores), 1), isa,
                         b_transposed)
    from tvm import tirx

    k_var, n_var, nbc_var = template.params[2:5]
    nbc = nbc if shared else chunk_blocks(n, config, cores)
    bind = {v: tirx.IntImm("int64", int(value))     # int64 like the params (not Python ints)
            for v, value in ((k_var, k), (n_var, n), (nbc_var, nbc)) if value is not None}
    return template.specialize(bind).with_attr("global_symbol", name)


def chunk_blocks(n: int | None, cfg: MatmulConfig, cores: int) -> int:
    """Column blocks per task: enough chunks for ``2 * cores`` tasks at M = 1, at most
    ``cfg.max_chunk`` blocks (1 when n is symbolic)."""
    if n is None:
        return 1
    nbr = -(-n // cfg.nr)
    return max(1, min(cfg.max_chunk, nbr // max(2 * cores, 1)))

# ---------------------------------------------------------------- the Relax rewrite

def schedule_int_matmuls(mod: Any, tvm_target: Any, config: MatmulConfig = DEFAULT_CONFIG,
                         isa: DotIsa | tuple[DotIsa, ...] = AVX2) -> Any:
    """Replace the generic integer matmuls of a Relax module by the ``isa`` kernels.

    Every ``call_tir`` of a PrimFunc marked ``edgert.op = "intmatmul"`` is rewritten by
    :func:`_matmul_rewriter`: with several ISAs, by the first that takes the call (VNNI for
    int8 x constant int8, then AVX2 for the rest). Other calls (operand dtypes no ISA takes:
    int16 for sdot) and functions are left alone. The caller checks that the target has the
    ISAs (:func:`target_isa`).
    """
    from tvm import relax, tirx

    names = {gv.name_hint for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and f.attrs is not None
             and str(f.attrs.get(OP_ATTR, "")) == OP_NAME}
    if not names:
        return mod
    emitters = [_matmul_rewriter(tvm_target, config, i)
                for i in (isa if isinstance(isa, tuple) else (isa,))]

    def rewrite(rw: Any, call: Any) -> Any | None:
        args = call.args[1]
        # (a, b), then perhaps the symbolic dims of A's shape expressions (a grouped
        # convolution's [G, N * OH * OW, K] with a symbolic N), which the kernel binds itself
        if (not isinstance(args, relax.Tuple) or len(args.fields) < 2 or len(call.args) > 2
                or any(isinstance(f.ty, relax.TensorType) for f in args.fields[2:])):
            return None
        for emit in emitters:
            new = emit(rw, *args.fields[:2], call.ty)
            if new is not None:
                return new
        return None

    return rewrite_call_tirs(mod, names, rewrite)


def schedule_float_matmuls(mod: Any, tvm_target: Any, isa: DotIsa,
                           config: MatmulConfig | None = None) -> Any:
    """Replace the float32 ``relax.matmul`` calls of a Relax module (ONNX MatMul and Gemm, before
    legalization) by the ``isa`` float kernels (:data:`FMA_X86`, :data:`FMA_NEON`), rewritten
    like the integer ones (:func:`_matmul_rewriter`); TVM's default CPU pipeline would run them
    as scalar loops. Results match the generic compute within float rounding (the products are
    summed in the same K order, as fused multiply-adds)."""
    import tvm

    matmul_op = tvm.ir.Op.get("relax.matmul")
    if config is None:
        config = FLOAT_CONFIG_AVX512 if isa is FMA_AVX512 else FLOAT_CONFIG
    emit = _matmul_rewriter(tvm_target, config, isa)

    def rewrite(rw: Any, call: Any) -> Any | None:
        return emit(rw, call.args[0], call.args[1], call.ty)

    return rewrite_calls(mod, lambda call: call.op.same_as(matmul_op), rewrite)


def _transposed_constant(rw: Any, b: Any) -> Any | None:
    """``b`` when it is ``permute_dims`` of a constant (ONNX ``Gemm(transB=1)``, a Linear
    layer): the transposed constant, so that it is packed once at compile time like a MatMul
    weight; else None."""
    import numpy as np
    import tvm
    from tvm import relax

    b = bound_call(rw, b, "relax.permute_dims")
    if b is None or not isinstance(b.args[0], tvm.ir.GenericConst):
        return None
    value = b.args[0].value.numpy()
    return relax.const(np.ascontiguousarray(np.transpose(value, permute_axes(b, value.ndim))))


def _transposed_activation(rw: Any, b: Any) -> Any | None:
    """The activation ``x`` when ``b`` is ``permute_dims(x)`` swapping its last two axes only
    (attention's ``K^T``), so that the kernel reads ``x`` as ``B^T``; else None."""
    import tvm
    from tvm import relax

    b = bound_call(rw, b, "relax.permute_dims")
    if b is None or isinstance(b.args[0], tvm.ir.GenericConst) \
            or not (isinstance(b.args[0].ty, relax.TensorType) and b.args[0].ty.ndim >= 2):
        return None
    ndim = b.args[0].ty.ndim
    return b.args[0] if permute_axes(b, ndim) == [*range(ndim - 2), ndim - 1, ndim - 2] else None


def _serial(config: MatmulConfig, k: int | None, n: int | None,
            b_count: int) -> tuple[bool, bool]:
    """(whether a kernel runs serially, whether it runs in parallel only thanks to its
    ``b_count`` B matrices): a constant batched B (a grouped convolution's groups) makes a
    call's work ``b_count * K * N`` a row, not ``K * N``."""
    if k is None or n is None:
        return False, False
    small = b_count * k * n < config.parallel_min_kn
    return small, not small and k * n < config.parallel_min_kn


def _one_constant(b: Any) -> bool:
    """Whether ``b`` is one constant matrix (all batch dims 1), what VNNI kernels pack."""
    import tvm

    return isinstance(b, tvm.ir.GenericConst) and all(
        static_int(d) == 1 for d in b.ty.shape.values[:-2])


def _matmul_rewriter(tvm_target: Any, config: MatmulConfig,
                     isa: DotIsa) -> Callable[[Any, Any, Any, Any], Any | None]:
    """``emit(rw, a, b, out_ty)``: the kernel call replacing ``a @ b`` (or None to keep it): A
    reshaped to ``[batch, M, K]``, a constant B packed now (numpy), an activation B passed as
    ``[1 or batch, K, N]`` (float32: a transposed activation as ``[1 or batch, N, K]``, see
    :func:`_transposed_activation`; a symbolic K or N goes to the kernel as an argument), then
    the kernel and a reshape back. Kernels are shared between calls of the same signature."""
    import tvm
    from tvm import relax, tirx

    cores = num_cores(tvm_target)

    def kernel(rw: Any, a_dtype: str, b_dtype: str, k_dim: Any, n_dim: Any,
               packed: bool, batched: bool, bt: bool = False,
               b_count: int = 1) -> tuple[Any, list]:
        return _kernel(rw, isa, config, cores, (a_dtype, b_dtype, packed, batched, bt),
                       k_dim, n_dim, b_count)

    def emit(rw: Any, a: Any, b: Any, out_ty: Any) -> Any | None:
        if isa.group == 1:                    # float: Gemm's transB of a constant weight
            const_b = _transposed_constant(rw, b)
            b = b if const_b is None else const_b
        a_ty, b_ty = a.ty, b.ty
        if not all(isinstance(t, relax.TensorType) and isinstance(t.shape, relax.ShapeExpr)
                   for t in (a_ty, b_ty, out_ty)):
            return None
        a_dtype, b_dtype = str(a_ty.dtype), str(b_ty.dtype)
        a_shape, b_shape = list(a_ty.shape.values), list(b_ty.shape.values)
        if isa.a_offset and not _one_constant(b):
            return None                     # VNNI: one constant B only (packed at compile time)
        if (a_dtype not in isa.operands or b_dtype not in isa.operands or len(a_shape) < 2
                or len(b_shape) < 2 or len(b_shape) > len(a_shape)
                or not same_dims(a_shape[-1:], b_shape[-2:-1])):
            return None
        k_dim, n_dim, m = a_shape[-1], b_shape[-1], a_shape[-2]
        k, n = static_int(k_dim), static_int(n_dim)
        if k == 0 or n == 0:
            return None
        a_batch, b_batch = a_shape[:-2], b_shape[:-2]
        one = tirx.IntImm("int64", 1)
        bb = rw.builder_
        b_const = isinstance(b, tvm.ir.GenericConst)
        bt = None if b_const or isa.group != 1 else _transposed_activation(rw, b)
        src, last2 = (b, [k_dim, n_dim]) if bt is None else (bt, [n_dim, k_dim])
        if all(static_int(d) == 1 for d in b_batch):          # one B for every row of A
            batch, m = one, dims_product(a_shape[:-1])
            gv, dims = kernel(rw, a_dtype, isa.word if b_const else b_dtype, k_dim, n_dim,
                              b_const, False, bt is not None)
            if b_const:                                    # packed now, once
                b3 = relax.const(pack_weight_words(b.value.numpy().reshape(k, n), config.nr,
                                                   isa.group, isa.a_offset))
            else:
                b3 = src if len(b_shape) == 3 else bb.emit(relax.op.reshape(src, [one, *last2]))
        elif same_dims(a_batch, b_batch):      # batched activations (or constants: groups)
            batch = dims_product(a_batch)
            count = static_int(batch) if b_const else None
            gv, dims = kernel(rw, a_dtype, b_dtype, k_dim, n_dim, False, True, bt is not None,
                              count or 1)
            b3 = src if len(b_shape) == 3 else bb.emit(relax.op.reshape(src, [batch, *last2]))
        else:
            return None
        a3 = a if len(a_shape) == 3 and batch is not one else bb.emit(
            relax.op.reshape(a, [batch, m, k_dim]))
        out = bb.emit(relax.call_tir(gv, [a3, b3, *map(relax.prim_value, dims)],
                                     relax.TensorType([batch, m, n_dim], isa.word)))
        # a view, not a reshape: the reshape after the kernel is legalized into a copy kernel
        return relax.op.memory.view(out, out_ty.shape)

    return emit


def _kernel(rw: Any, isa: DotIsa, config: MatmulConfig, cores: int, signature: tuple,
            k_dim: Any, n_dim: Any, b_count: int) -> tuple[Any, list]:
    """The kernel's GlobalVar (added to ``rw`` once per key) and the shape arguments of its
    call: float32, k and n of the shared kernel; integer, the symbolic ones of k, n.
    ``signature``: (a_dtype, b_dtype, packed, batched, bt); ``b_count``: B matrices of a
    constant batched B (a grouped convolution's groups): the work of one call is
    b_count * K * N per row, not K * N."""
    a_dtype, b_dtype, packed, batched, bt = signature
    shared = isa.group == 1      # float32: one kernel per signature, shapes as arguments
    k, n = static_int(k_dim), static_int(n_dim)
    small, par = _serial(config, k, n, b_count)
    # (a serial kernel's tasks run in order: the most blocks a task, its A rows reused)
    nbc = config.max_chunk if small else chunk_blocks(n, config, cores)
    key = (isa.name, a_dtype, b_dtype, nbc if shared else k, None if shared else n,
           packed, batched, bt, small)
    if key not in rw.kernels:
        prefix = "matmul" if isa.group == 1 else "int_matmul"
        shape = (f"_{'serial' if small else 'parallel'}_c{nbc}" if shared
                 else f"_k{k or 'var'}_n{n or 'var'}{'_par' if par else ''}")
        name = (f"{prefix}_{isa.name}_{a_dtype}_{'packed' if packed else b_dtype}"
                f"{'_batched' if batched else ''}{'_bt' if bt else ''}{shape}")
        func = int_matmul_kernel(a_dtype, b_dtype, None if shared else k,
                                 None if shared else n, b_packed=packed,
                                 b_batched=batched, config=config,
                                 cores=1 if small else cores, isa=isa, name=name,
                                 b_transposed=bt, shared=shared, nbc=nbc)
        rw.add_kernel(key, func, name)
    if not shared:
        return rw.kernels[key], [d for d, v in ((k_dim, k), (n_dim, n)) if v is None]
    return rw.kernels[key], [k_dim, n_dim]
