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
  kernel (in parallel over panels); a word is broadcast to L lanes.
- Micro-kernel: ``MR`` rows x ``NR`` columns (default 4 x 16: on AVX2 8 ymm accumulators, 2 ymm
  of B, 1 broadcast; on NEON 16 q accumulators, 4 of B, 1 broadcast), K innermost. Tails: a row
  tail of at most ``MR/2`` rows runs a 1-row kernel per row, a longer one the ``MR``-row kernel
  over zero rows; a column tail uses masked stores.
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
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

OP_ATTR = "edgert.op"
"""PrimFunc attribute that marks a generic integer matmul (value ``"intmatmul"``)."""
OP_NAME = "intmatmul"
INT_DTYPES = ("int8", "int16")


@dataclass(frozen=True)
class MatmulConfig:
    """Knobs of the x86 kernel.

    Attributes:
        mr: rows of the register tile.
        nr: columns of the register tile (a multiple of 8: one ymm of int32 per 8 columns);
            also the column block of the packed B layout.
        mp: rows of A packed per task (a multiple of ``mr``).
        max_chunk: most column blocks (of ``nr``) one task computes.
        parallel_min_kn: kernels with ``K * N`` below this run serially (at typical M, a
            parallel launch costs more than such a matmul: ~1-5 us against ~0.5 us of work
            for 17 x 32 x 96); a symbolic K or N always gets the parallel loop.
    """

    mr: int = 4
    nr: int = 16
    mp: int = 32
    max_chunk: int = 4
    parallel_min_kn: int = 8192

    def __post_init__(self) -> None:
        if self.nr % 8 or self.nr <= 0 or self.mr <= 0 or self.mp % self.mr:
            raise ValueError(f"invalid MatmulConfig {self}")


DEFAULT_CONFIG = MatmulConfig()


@dataclass(frozen=True)
class DotIsa:
    """The dot-product instruction a kernel is built around: it multiplies ``group`` operand
    elements packed in each int32 lane of one register by those of another and adds each
    lane's products into that lane's int32.

    Attributes:
        name: kernel name suffix.
        lanes: int32 lanes of a vector register.
        group: K elements per lane: 2 (int16 pairs) or 4 (int8 quads) in an int32, or 1
            (float32 lanes: a plain multiply-add, which LLVM turns into FMA).
        intrin: the LLVM intrinsic ("" for the float multiply-add).
        accumulates: the intrinsic takes the accumulator as its first operand (sdot);
            otherwise its result is added to it (vpmaddwd).
        a_offset: the intrinsic multiplies *unsigned* A bytes (``vpdpbusd``): A is packed as
            ``a + 128`` (each byte xor 0x80) and the constant B carries one more word row,
            ``-128 * sum_k B[k, n]``, which the accumulators start from; constant B only.
    """

    name: str
    lanes: int
    group: int
    intrin: str
    accumulates: bool
    a_offset: bool = False

    @property
    def word(self) -> str:
        """dtype of a lane: of the packed words, the accumulators and the output."""
        return "float32" if self.group == 1 else "int32"

    @property
    def operand(self) -> str:
        """dtype of the packed elements."""
        return {1: "float32", 2: "int16", 4: "int8"}[self.group]

    @property
    def operands(self) -> tuple[str, ...]:
        """Operand dtypes the kernel takes (each is sign-extended into ``operand``)."""
        return {1: ("float32",), 2: INT_DTYPES, 4: ("int8",)}[self.group]


AVX2 = DotIsa("x86", 8, 2, "llvm.x86.avx2.pmadd.wd", False)
"""``vpmaddwd``: 8 lanes, each the sum of 2 int16 x int16 products."""
SDOT = DotIsa("sdot", 4, 4, "llvm.aarch64.neon.sdot.v4i32.v16i8", True)
"""aarch64 dotprod ``sdot``: 4 lanes, each accumulating 4 int8 x int8 products."""
VNNI = DotIsa("vnni", 8, 4, "llvm.x86.avx512.vpdpbusd.256", True, True)
"""x86 AVX-512 VNNI ``vpdpbusd`` on ymm: 8 lanes, each accumulating 4 uint8 x int8 products
(int8 A offset by 128, corrected through B's extra row); int8 x constant int8 B only."""
DP4A = DotIsa("dp4a", 1, 4, "__dp4a", True)
"""CUDA ``__dp4a`` (one int32 per thread, 4 int8 x int8 products): the GPU kernel of
:mod:`edgert.compiler.schedule_cuda`."""
FMA_X86 = DotIsa("fma_x86", 8, 1, "", False)
"""float32 on x86 (AVX2 FMA, AVX-512 machines too): 8-lane multiply-adds (``vfmadd``)."""
FMA_AVX512 = DotIsa("fma_avx512", 16, 1, "", False)
"""float32 on x86 with AVX-512: 16-lane multiply-adds (``vfmadd`` on zmm)."""
FMA_NEON = DotIsa("fma_neon", 4, 1, "", False)
"""float32 on aarch64 NEON: 4-lane multiply-adds (``fmla``)."""
FLOAT_CONFIG = MatmulConfig(mr=6, nr=16, mp=48)
"""Float tiles: 6 x 16 (on AVX2 12 ymm accumulators, 2 of B, 1 broadcast)."""
FLOAT_CONFIG_AVX512 = MatmulConfig(mr=6, nr=32, mp=48)
"""Float tiles on AVX-512: 6 x 32 (12 zmm accumulators of 32)."""


def target_isa(target: Any) -> DotIsa | tuple[DotIsa, ...] | None:
    """The integer-matmul kernel ISA of an edgert :class:`~edgert.targets.Target`: dp4a on CUDA
    GPUs (sm_61+), AVX2 on x86 CPUs with AVX2 (AVX-512 ones included; with VNNI, ``(VNNI,
    AVX2)``: VNNI where it applies), sdot on aarch64 CPUs with dotprod, else None."""
    if target.cuda_arch:
        return DP4A if int(target.cuda_arch.removeprefix("sm_")) >= 61 else None
    if target_has_avx2(target):
        return (VNNI, AVX2) if "avx512_vnni" in target.cpu_features else AVX2
    if target.arch == "aarch64" and "dotprod" in (target.vector_isa or ""):
        return SDOT
    return None


def target_has_avx2(target: Any) -> bool:
    """Whether an edgert :class:`~edgert.targets.Target` runs x86-64 code with AVX2 on its CPU
    side (AVX-512 targets include AVX2)."""
    if target.arch != "x86_64" or target.cuda_arch:
        return False
    feats = set(target.cpu_features)
    return "avx2" in feats or any(f.startswith("avx512") for f in feats)


def num_cores(tvm_target: Any) -> int:
    """``num-cores`` of a TVM target (the machine's CPU count when the target does not say)."""
    import os

    try:
        value = tvm_target.attrs.get("num-cores")
    except Exception:   # noqa: BLE001 - attrs of an unusual target kind
        value = None
    if value:
        return max(int(value), 1)
    return max(os.cpu_count() or 1, 1)


# ---------------------------------------------------------------- packing (numpy)

def float_isa(target: Any) -> DotIsa | None:
    """The float32 matmul kernel ISA of an edgert CPU target: FMA on x86 with AVX2, NEON on
    aarch64, else None (CUDA targets keep dlight's schedules)."""
    if target.cuda_arch:
        return None
    if target_has_avx2(target):
        return FMA_AVX512 if "avx512f" in target.cpu_features else FMA_X86
    return FMA_NEON if target.arch == "aarch64" else None


def pack_weight(b: np.ndarray, nr: int = DEFAULT_CONFIG.nr, group: int = 2) -> np.ndarray:
    """Pack a weight [K, N] into the kernel's [ceil(N/nr), ceil(K/group), nr, group] layout of
    int16 (``group`` 2), int8 (``group`` 4: int8 weights only) or float32 (``group`` 1: float32
    weights only), zero padded."""
    b = np.asarray(b)
    dtypes = {1: ("float32",), 2: INT_DTYPES, 4: ("int8",)}[group]
    if b.ndim != 2 or b.dtype.name not in dtypes:
        raise ValueError(f"pack_weight(group={group}) needs a {'/'.join(dtypes)} [K, N] matrix, "
                         f"got {b.dtype} {b.shape}")
    k, n = b.shape
    kg, nbr = -(-k // group), -(-n // nr)
    padded = np.zeros((group * kg, nbr * nr), {1: np.float32, 2: np.int16, 4: np.int8}[group])
    padded[:k, :n] = b
    return np.ascontiguousarray(padded.reshape(kg, group, nbr, nr).transpose(2, 0, 3, 1))


def pack_weight_words(b: np.ndarray, nr: int = DEFAULT_CONFIG.nr, group: int = 2,
                      a_offset: bool = False) -> np.ndarray:
    """:func:`pack_weight` as the kernel takes it: int32 [ceil(N/nr), ceil(K/group), nr], one
    group per int32 (the same bytes: element j of a group in bits ``[32j/group, 32(j+1)/group)``).
    ``a_offset`` (:data:`VNNI`): one more row ``[:, -1, :]`` holding ``-128 * sum_k b[k, n]``
    (int32, wrapping like the accumulators; zero for padded columns)."""
    packed = pack_weight(b, nr, group)
    words = packed.view(np.float32 if group == 1 else np.int32).reshape(packed.shape[:3])
    if not a_offset:
        return words
    k, n = np.asarray(b).shape
    nbr = words.shape[0]
    correction = np.zeros(nbr * nr, np.int64)
    correction[:n] = -128 * np.asarray(b, np.int64).sum(axis=0)
    extra = correction.astype(np.int32).reshape(nbr, 1, nr)          # |.| < 2**31 for k < 2**17
    return np.ascontiguousarray(np.concatenate([words, extra], axis=1))


def pack_word(load: Callable[[int], Any], group: int, lanes: int = 1, valid: Any = None) -> Any:
    """TIR: the int32 word of ``group`` integer elements ``load(j)`` (j < group), element j in
    bits ``[32j/group, 32(j+1)/group)``, sign-extended from the top one (little-endian: an int8
    quad is the 4 bytes in memory order, as ``sdot`` and CUDA's ``__dp4a`` read them). Elements
    ``j >= valid`` (a PrimExpr) are zero. ``load(j)`` is a scalar (``lanes`` 1) or a vector of
    ``lanes`` elements, and so is the word."""
    from tvm import tirx

    bits = 32 // group
    vec = f"int32x{lanes}" if lanes > 1 else "int32"

    def const(value: int) -> Any:
        c = tirx.IntImm("int32", value)
        return tirx.Broadcast(c, lanes) if lanes > 1 else c

    out = None
    for j in range(group):
        x = tirx.Cast(vec, load(j))
        if valid is not None:
            keep = tirx.Cast("int32", tirx.IntImm("int64", j) < valid)
            x = x * (tirx.Broadcast(keep, lanes) if lanes > 1 else keep)
        if j < group - 1:
            x = tirx.bitwise_and(x, const((1 << bits) - 1))
        if j:
            x = tirx.shift_left(x, const(bits * j))
        out = x if out is None else tirx.bitwise_or(out, x)
    return out


# ---------------------------------------------------------------- the TVMScript kernel

def int_matmul_kernel(a_dtype: str, b_dtype: str, k: int | None, n: int | None, *,
                      b_packed: bool, b_batched: bool = False,
                      config: MatmulConfig = DEFAULT_CONFIG, cores: int = 1,
                      isa: DotIsa = AVX2, name: str = "int_matmul_x86") -> Any:
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

    A is ``[BA, M, k]`` (BA, M symbolic), C is ``[BA, M, n]`` int32.
    """
    if a_dtype not in isa.operands or (not b_packed and b_dtype not in isa.operands):
        raise ValueError(f"{'/'.join(isa.operands)} operands expected for {isa.name}, got "
                         f"{a_dtype} and {b_dtype}")
    if b_packed and (k is None or n is None):
        raise ValueError("a packed (constant) B needs static k and n")
    if isa.a_offset and not b_packed:
        raise ValueError(f"{isa.name} takes a constant (packed) B only")
    if config.nr % isa.lanes:
        raise ValueError(f"nr={config.nr} is not a multiple of {isa.name}'s {isa.lanes} lanes")
    if isa is DP4A:
        from edgert.compiler.schedule_cuda import dp4a_kernel

        return dp4a_kernel(k, n, b_packed=b_packed, b_batched=b_batched, nr=config.nr,
                           name=name)
    template = _template(a_dtype, isa.word if b_packed else b_dtype, b_packed,
                         bool(b_batched) and not b_packed, config, max(int(cores), 1), isa)
    from tvm import tirx

    k_var, n_var, nbc_var = template.params[2:5]
    bind = {v: tirx.IntImm("int64", int(value))     # int64 like the params (not Python ints)
            for v, value in ((k_var, k), (n_var, n), (nbc_var, _chunk_blocks(n, config, cores)))
            if value is not None}
    return template.specialize(bind).with_attr("global_symbol", name)


def _chunk_blocks(n: int | None, cfg: MatmulConfig, cores: int) -> int:
    """Column blocks per task: enough chunks for ``2 * cores`` tasks at M = 1, at most
    ``cfg.max_chunk`` blocks (1 when n is symbolic)."""
    if n is None:
        return 1
    nbr = -(-n // cfg.nr)
    return max(1, min(cfg.max_chunk, nbr // max(2 * cores, 1)))


@lru_cache(maxsize=None)
def _template(a_dtype: str, b_dtype: str, b_packed: bool, b_batched: bool, cfg: MatmulConfig,
              cores: int, isa: DotIsa) -> Any:
    """The kernel ``(A, B, k, n, nbc, C)`` with symbolic ``k``, ``n`` and column blocks per
    task ``nbc`` (int64 params), parsed once per signature; :func:`int_matmul_kernel`
    specializes it (TVMScript parsing costs ~0.5 s, specializing ~1 ms)."""
    from tvm import tirx
    from tvm.script import tirx as T

    MR, NR, MP = cfg.mr, cfg.nr, cfg.mp
    L, G = isa.lanes, isa.group           # int32 lanes per vector, K elements per lane
    NV = NR // L                          # vectors per tile row
    WORD = isa.word                       # int32, or float32 for the float kernels
    VEC, OPV = f"{WORD}x{L}", f"{isa.operand}x{L * G}"
    FLOAT = G == 1
    PAR = cores > 1
    BSEL = 1 if b_batched else 0          # batch index of B = BSEL * batch index of A
    INTRIN, ACCUMULATES = isa.intrin, isa.accumulates
    EXTRA = 1 if isa.a_offset else 0      # B's correction row (VNNI)
    OFFSET_A = bool(isa.a_offset)
    OFFSET = tirx.IntImm("int32", -0x7F7F7F80)   # 0x80808080: each byte xor 0x80 (+128)

    def word(load, lanes, valid=None):
        if FLOAT:                         # one element per lane: no packing, no K tail
            return tirx.Cast(VEC if lanes > 1 else WORD, load(0))
        return pack_word(load, G, lanes, valid)

    def clamp(j, valid):
        return j if valid is None else tirx.min(tirx.IntImm("int64", j), valid - 1)

    def a_word(Af, base, valid=None):
        # A[base + j]: the word of G consecutive elements of a row (+128 a byte for VNNI)
        w = word(lambda j: Af[base + clamp(j, valid)], 1, valid)
        return tirx.bitwise_xor(w, OFFSET) if OFFSET_A else w

    def b_word(Bf, src, n, valid=None):
        # B[src + j*n + (0..L)]: L words of G consecutive K-rows
        return word(lambda j: Bf[tirx.Ramp(src + clamp(j, valid) * n, 1, L)], L, valid)

    def b_word_ragged(Bf, b_base, p, col, k, n):
        # one word of column col (zero past K and past N)
        def load(j):
            kk = G * p + j
            return tirx.if_then_else(
                tirx.And(kk < k, col < n),
                Bf[b_base + tirx.min(kk, k - 1) * n + tirx.min(col, n - 1)],
                tirx.Cast(b_dtype, 0))
        return word(load, 1)

    @T.macro
    def tile(rows, ap32, a0, bsrc, b0, Cf, c0, valid, cols, KG, n):
        # rows x NR register tile over all of K: acc += dot(bcast(A word), B words).
        # a0/b0: offsets of the A words and of the B block; c0: C offset of the tile's first
        # element; valid/cols: rows/columns of the tile that lie inside C.
        acc = T.alloc_buffer((rows * NR,), WORD)
        for r in T.unroll(rows):
            for v in T.unroll(NV):
                if OFFSET_A:   # VNNI: start from -128 * sum_k B (the row after the K words)
                    acc[T.Ramp((r * NV + v) * L, 1, L)] = bsrc[T.Ramp(b0 + KG * NR + v * L, 1, L)]
                else:
                    acc[T.Ramp((r * NV + v) * L, 1, L)] = T.Broadcast(T.Cast(WORD, 0), L)
        for p in range(KG):
            for v in T.unroll(NV):
                for r in T.unroll(rows):
                    if FLOAT:
                        acc[T.Ramp((r * NV + v) * L, 1, L)] = \
                            acc[T.Ramp((r * NV + v) * L, 1, L)] \
                            + T.Broadcast(ap32[a0 + r * KG + p], L) \
                            * bsrc[T.Ramp(b0 + p * NR + v * L, 1, L)]
                    elif ACCUMULATES:
                        acc[T.Ramp((r * NV + v) * L, 1, L)] = T.call_llvm_pure_intrin(
                            VEC, INTRIN, acc[T.Ramp((r * NV + v) * L, 1, L)],
                            T.reinterpret(OPV, T.Broadcast(ap32[a0 + r * KG + p], L)),
                            T.reinterpret(OPV, bsrc[T.Ramp(b0 + p * NR + v * L, 1, L)]))
                    else:
                        acc[T.Ramp((r * NV + v) * L, 1, L)] = \
                            acc[T.Ramp((r * NV + v) * L, 1, L)] + T.call_llvm_pure_intrin(
                                VEC, INTRIN,
                                T.reinterpret(OPV, T.Broadcast(ap32[a0 + r * KG + p], L)),
                                T.reinterpret(OPV, bsrc[T.Ramp(b0 + p * NR + v * L, 1, L)]))
        if cols >= NR:
            for r in T.unroll(rows):
                if r < valid:
                    for v in T.unroll(NV):
                        Cf[T.Ramp(c0 + r * n + v * L, 1, L)] = acc[T.Ramp((r * NV + v) * L, 1, L)]
        else:                  # column tail: masked stores
            for r in T.unroll(rows):
                if r < valid:
                    for v in T.unroll(NV):
                        T.evaluate(T.masked_store(
                            Cf, acc[T.Ramp((r * NV + v) * L, 1, L)],
                            T.Ramp(c0 + r * n + v * L, 1, L),
                            T.Ramp(0, 1, L) < T.Broadcast(T.Cast("int32", cols) - v * L, L)))

    @T.macro
    def block(ap32, a0, bsrc, b0, Cf, row0, rows, ncol, KG, n):
        # every row of the panel (at a0 in ap32) against one column block of B (at b0 in bsrc)
        full: T.let[T.int32] = T.floordiv(rows, MR)
        tail: T.let[T.int32] = rows - full * MR
        cols: T.let[T.int64] = n - ncol
        for mi in range(full):
            tile(MR, ap32, a0 + mi * MR * KG, bsrc, b0, Cf, (row0 + mi * MR) * n + ncol,
                 rows - mi * MR, cols, KG, n)
        if tail * 2 > MR:      # a long row tail: the MR-row tile over zero rows
            tile(MR, ap32, a0 + full * MR * KG, bsrc, b0, Cf, (row0 + full * MR) * n + ncol,
                 tail, cols, KG, n)
        else:                  # a short one: row by row
            for r in range(tail):
                tile(1, ap32, a0 + (full * MR + r) * KG, bsrc, b0, Cf,
                     (row0 + full * MR + r) * n + ncol, 1, cols, KG, n)

    @T.macro
    def pack_panel(pi, Af, ap32, M, MPN, k, KG):
        # A panel pi (batch pi // MPN, rows [mp*MP, +MP)) into ap32[pi * MP * KG ...]: rows of
        # KG int32 words of G elements (zero past K); zero rows up to a multiple of MR.
        # (Every buffer the kernel writes is accessed with its own dtype only: TVM
        # miscompiled stores through a view of another dtype.)
        bi: T.let[T.int64] = pi // MPN
        mp: T.let[T.int64] = pi - bi * MPN
        row0: T.let[T.int64] = bi * M + mp * MP
        rows: T.let[T.int32] = T.Cast("int32", T.min(T.int64(MP), M - mp * MP))
        base: T.let[T.int64] = pi * (MP * KG)
        for r in range((rows + MR - 1) // MR * MR):
            if r < rows:
                for p in range(k // G):
                    ap32[base + r * KG + p] = a_word(Af, (row0 + r) * k + G * p)
                if k % G != 0:
                    ap32[base + r * KG + KG - 1] = a_word(Af, (row0 + r) * k + G * (KG - 1),
                                                          k - G * (KG - 1))
            else:
                for p in range(KG):
                    ap32[base + r * KG + p] = T.Cast(WORD, 0)

    @T.macro
    def task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH):
        # task t: batch bi, rows [mp*MP, +MP) of it (packed A panel bi * MPN + mp), column
        # blocks [nc*NBC, +NBC)
        bi: T.let[T.int64] = t // (MPN * NCH)
        rest: T.let[T.int64] = t - bi * (MPN * NCH)
        mp: T.let[T.int64] = rest // NCH
        nc: T.let[T.int64] = rest - mp * NCH
        row0: T.let[T.int64] = bi * M + mp * MP           # first row of the panel in A and C
        rows: T.let[T.int32] = T.Cast("int32", T.min(T.int64(MP), M - mp * MP))
        nblocks: T.let[T.int64] = T.min(NBC, NBR - nc * NBC)
        a0: T.let[T.int64] = (bi * MPN + mp) * (MP * KG)
        if b_packed:
            for nbi in range(nblocks):
                block(ap32, a0, Bf, (nc * NBC + nbi) * ((KG + EXTRA) * NR), Cf, row0, rows,
                      (nc * NBC + nbi) * NR, KG, n)
        else:
            # this task's column chunk of B[bi or 0], packed into the same layout
            b_base: T.let[T.int64] = bi * BSEL * (k * n)
            bp32 = T.alloc_buffer((NBC * KG * NR,), WORD)
            for nbi in range(nblocks):
                col0: T.let[T.int64] = (nc * NBC + nbi) * NR
                if col0 + NR <= n:
                    # whole block: L columns of G K-rows -> L words at a time
                    for p in range(k // G):
                        for v in T.unroll(NV):
                            bp32[T.Ramp((nbi * KG + p) * NR + v * L, 1, L)] = b_word(
                                Bf, b_base + G * p * n + col0 + v * L, n)
                    if k % G != 0:
                        for v in T.unroll(NV):
                            bp32[T.Ramp((nbi * KG + KG - 1) * NR + v * L, 1, L)] = b_word(
                                Bf, b_base + G * (KG - 1) * n + col0 + v * L, n,
                                k - G * (KG - 1))
                else:
                    # the ragged last block, word by word with zero padding (clamped reads)
                    for p, j in T.grid(KG, NR):
                        bp32[(nbi * KG + p) * NR + j] = b_word_ragged(Bf, b_base, p, col0 + j,
                                                                      k, n)
            for nbi in range(nblocks):
                block(ap32, a0, bp32, nbi * (KG * NR), Cf, row0, rows, (nc * NBC + nbi) * NR,
                      KG, n)

    @T.macro
    def run_tasks(Af, Bf, Cf, BA, M, k, n, NBC):
        KG: T.let[T.int64] = (k + G - 1) // G
        NBR: T.let[T.int64] = (n + NR - 1) // NR
        NCH: T.let[T.int64] = T.max((NBR + NBC - 1) // NBC, T.int64(1))   # (max: a divisor)
        MPN: T.let[T.int64] = (M + MP - 1) // MP
        # every A panel packed once, before the tasks (a task per panel and column chunk
        # would pack its panel once per chunk: 6-24 times on MiniLM's matmuls)
        ap32 = T.alloc_buffer((BA * MPN * MP * KG,), WORD)
        if PAR:
            for pi in T.parallel(BA * MPN):
                pack_panel(pi, Af, ap32, M, MPN, k, KG)
            for t in T.parallel(BA * MPN * NCH):
                task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)
        else:
            for pi in range(BA * MPN):
                pack_panel(pi, Af, ap32, M, MPN, k, KG)
            for t in range(BA * MPN * NCH):
                task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)

    if b_packed:
        @T.prim_func
        def kernel(a: T.handle, b: T.handle, k: T.int64, n: T.int64, nbc: T.int64,
                   c: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            BA = T.int64()
            M = T.int64()
            A = T.match_buffer(a, (BA, M, k), a_dtype)
            B = T.match_buffer(b, ((n + NR - 1) // NR, (k + G - 1) // G + EXTRA, NR), WORD)
            C = T.match_buffer(c, (BA, M, n), WORD)
            Af = T.decl_buffer((BA * M * k,), a_dtype, data=A.data)
            Bf = T.decl_buffer(((n + NR - 1) // NR * ((k + G - 1) // G + EXTRA) * NR,), WORD,
                               data=B.data)
            Cf = T.decl_buffer((BA * M * n,), WORD, data=C.data)
            run_tasks(Af, Bf, Cf, BA, M, k, n, nbc)
    else:
        @T.prim_func
        def kernel(a: T.handle, b: T.handle, k: T.int64, n: T.int64, nbc: T.int64,
                   c: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            BA = T.int64()
            M = T.int64()
            BB = T.int64()
            A = T.match_buffer(a, (BA, M, k), a_dtype)
            B = T.match_buffer(b, (BB, k, n), b_dtype)
            C = T.match_buffer(c, (BA, M, n), WORD)
            Af = T.decl_buffer((BA * M * k,), a_dtype, data=A.data)
            Bf = T.decl_buffer((BB * k * n,), b_dtype, data=B.data)
            Cf = T.decl_buffer((BA * M * n,), WORD, data=C.data)
            run_tasks(Af, Bf, Cf, BA, M, k, n, nbc)

    return kernel


# ---------------------------------------------------------------- the Relax rewrite

def _static(dim: Any) -> int | None:
    from tvm import tirx

    return int(dim.value) if isinstance(dim, tirx.IntImm) else None


def _product(dims: list) -> Any:
    """Product of shape dims (PrimExprs), folded when static."""
    from tvm import tirx

    out: Any = tirx.IntImm("int64", 1)
    for d in dims:
        out = tirx.IntImm("int64", int(out.value) * int(d.value)) if (
            isinstance(out, tirx.IntImm) and isinstance(d, tirx.IntImm)) else out * d
    return out


def _same_dims(xs: list, ys: list) -> bool:
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()
    return len(xs) == len(ys) and all(
        x.same_as(y) or analyzer.can_prove_equal(x, y) for x, y in zip(xs, ys))


def rewrite_call_tirs(mod: Any, names: Container[str],
                      rewrite: Callable[[Any, Any], Any | None]) -> Any:
    """Rewrite every ``call_tir`` of a PrimFunc named in ``names`` in the Relax functions of
    ``mod``: ``rewrite(rw, call)`` returns the replacement (emitting what it needs with
    ``rw.builder_``) or None to keep the call; ``rw.add_kernel(key, func, name)`` adds a kernel
    PrimFunc once (opaque to operator fusion) under ``rw.kernels[key]``. PrimFuncs left unused
    are removed; ``mod`` itself comes back when nothing was rewritten."""
    import tvm

    call_tir_op = tvm.ir.Op.get("relax.call_tir")
    return rewrite_calls(mod, lambda call: call.op.same_as(call_tir_op)
                         and isinstance(call.args[0], tvm.ir.GlobalVar)
                         and call.args[0].name_hint in names, rewrite)


def rewrite_calls(mod: Any, match: Callable[[Any], bool],
                  rewrite: Callable[[Any, Any], Any | None]) -> Any:
    """:func:`rewrite_call_tirs` for every Relax call that ``match(call)`` accepts."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.kernels: dict[tuple, Any] = {}
            self.rewritten = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if isinstance(call, relax.Call) and match(call):
                new = rewrite(self, call)
                if new is not None:
                    self.rewritten += 1
                    return new
            return call

        def add_kernel(self, key: tuple, func: Any, name: str) -> None:
            self.kernels[key] = self.builder_.add_func(
                func.with_attr("op_pattern", 8), name)          # kOpaque: not fused

    rewriter = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    new_mod = rewriter.builder_.get()
    if not rewriter.rewritten:
        return mod
    return relax.transform.DeadCodeElimination()(new_mod)


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
        if not isinstance(args, relax.Tuple) or len(args.fields) != 2 or len(call.args) > 2:
            return None
        for emit in emitters:
            new = emit(rw, *args.fields, call.ty)
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


def _matmul_rewriter(tvm_target: Any, config: MatmulConfig,
                     isa: DotIsa) -> Callable[[Any, Any, Any, Any], Any | None]:
    """``emit(rw, a, b, out_ty)``: the kernel call replacing ``a @ b`` (or None to keep it): A
    reshaped to ``[batch, M, K]``, a constant B packed now (numpy), an activation B passed as
    ``[1 or batch, K, N]`` (a symbolic K or N goes to the kernel as an argument), then the
    kernel and a reshape back. Kernels are shared between calls of the same signature."""
    import tvm
    from tvm import relax, tirx

    cores = num_cores(tvm_target)

    def kernel(rw: Any, a_dtype: str, b_dtype: str, k: int | None, n: int | None,
               packed: bool, batched: bool) -> Any:
        key = (isa.name, a_dtype, b_dtype, k, n, packed, batched)
        if key not in rw.kernels:
            prefix = "matmul" if isa.group == 1 else "int_matmul"
            name = (f"{prefix}_{isa.name}_{a_dtype}_{'packed' if packed else b_dtype}"
                    f"{'_batched' if batched else ''}_k{k or 'var'}_n{n or 'var'}")
            small = k is not None and n is not None and k * n < config.parallel_min_kn
            func = int_matmul_kernel(a_dtype, b_dtype, k, n, b_packed=packed,
                                     b_batched=batched, config=config,
                                     cores=1 if small else cores, isa=isa, name=name)
            rw.add_kernel(key, func, name)
        return rw.kernels[key]

    def emit(rw: Any, a: Any, b: Any, out_ty: Any) -> Any | None:
        a_ty, b_ty = a.ty, b.ty
        if not all(isinstance(t, relax.TensorType) and isinstance(t.shape, relax.ShapeExpr)
                   for t in (a_ty, b_ty, out_ty)):
            return None
        a_dtype, b_dtype = str(a_ty.dtype), str(b_ty.dtype)
        a_shape, b_shape = list(a_ty.shape.values), list(b_ty.shape.values)
        if isa.a_offset and not isinstance(b, tvm.ir.GenericConst):
            return None                                    # VNNI: constant B only
        if (a_dtype not in isa.operands or b_dtype not in isa.operands or len(a_shape) < 2
                or len(b_shape) < 2 or len(b_shape) > len(a_shape)
                or not _same_dims(a_shape[-1:], b_shape[-2:-1])):
            return None
        k_dim, n_dim, m = a_shape[-1], b_shape[-1], a_shape[-2]
        k, n = _static(k_dim), _static(n_dim)
        if k == 0 or n == 0:
            return None
        a_batch, b_batch = a_shape[:-2], b_shape[:-2]
        one = tirx.IntImm("int64", 1)
        bb = rw.builder_
        if all(_static(d) == 1 for d in b_batch):          # one B for every row of A
            batch, m = one, _product(a_shape[:-1])
            b_const = isinstance(b, tvm.ir.GenericConst)
            gv = kernel(rw, a_dtype, isa.word if b_const else b_dtype, k, n, b_const, False)
            if b_const:                                    # packed now, once
                b3 = relax.const(pack_weight_words(b.value.numpy().reshape(k, n), config.nr,
                                                   isa.group, isa.a_offset))
            else:
                b3 = b if len(b_shape) == 3 else bb.emit(
                    relax.op.reshape(b, [one, k_dim, n_dim]))
        elif _same_dims(a_batch, b_batch):                   # batched activations
            batch = _product(a_batch)
            gv = kernel(rw, a_dtype, b_dtype, k, n, False, True)
            b3 = b if len(b_shape) == 3 else bb.emit(
                relax.op.reshape(b, [batch, k_dim, n_dim]))
        else:
            return None
        a3 = a if len(a_shape) == 3 and batch is not one else bb.emit(
            relax.op.reshape(a, [batch, m, k_dim]))
        dims = [relax.prim_value(d) for d, v in ((k_dim, k), (n_dim, n)) if v is None]
        out = bb.emit(relax.call_tir(gv, [a3, b3, *dims],
                                     relax.TensorType([batch, m, n_dim], isa.word)))
        # a view, not a reshape: the reshape after the kernel is legalized into a copy kernel
        return relax.op.memory.view(out, out_ty.shape)

    return emit
