"""Instruction-set facts of a target, read by the schedules.

What a kernel may use is decided here from a :class:`~edgert.targets.Target`'s CPU features
(the ``/proc/cpuinfo`` flags its generated code needs) and GPU architecture, never from the
machine the compiler runs on: ``host`` resolves to a target first
(:func:`edgert.targets.resolve_host`, which reads this machine's flags), so a compile on a
Zen 3 (AVX2 only) and on a Zen 4 (AVX-512 with VNNI and VPOPCNTDQ) both work, each with its
own kernels.

Dot-product instructions (:class:`DotIsa`): the integer matmul kernels are built around one
instruction that multiplies ``group`` operand elements packed in each int32 lane of one
register by those of another and adds each lane's products into that lane's int32:

=============  =====  =====  ===============================  ==============================
name           lanes  group  instruction                      where
=============  =====  =====  ===============================  ==============================
x86 (AVX2)     8      2      ``vpmaddwd`` (s16 pairs -> s32)  x86 with AVX2 (and AVX-512)
vnni           8      4      ``vpdpbusd`` (u8 x s8 quads)     x86 with AVX-512 VNNI
sdot           4      4      ``sdot`` (s8 quads)              aarch64 with dotprod (rpi5)
dp4a           1      4      ``__dp4a`` (s8 quads)            CUDA sm_61 and later
fma_*          8/16/4 1      float32 multiply-add             x86 AVX2 / AVX-512, NEON
=============  =====  =====  ===============================  ==============================

This module imports nothing heavy (no TVM): the runtime may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INT_DTYPES = ("int8", "int16")


@dataclass(frozen=True)
class DotIsa:
    """The dot-product instruction a matmul kernel is built around.

    Attributes:
        name: kernel name suffix.
        lanes: int32 (or float32) lanes of a vector register.
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
"""CUDA ``__dp4a`` (one int32 per thread, 4 int8 x int8 products)."""
FMA_X86 = DotIsa("fma_x86", 8, 1, "", False)
"""float32 on x86 (AVX2 FMA, AVX-512 machines too): 8-lane multiply-adds (``vfmadd``)."""
FMA_AVX512 = DotIsa("fma_avx512", 16, 1, "", False)
"""float32 on x86 with AVX-512: 16-lane multiply-adds (``vfmadd`` on zmm)."""
FMA_NEON = DotIsa("fma_neon", 4, 1, "", False)
"""float32 on aarch64 NEON: 4-lane multiply-adds (``fmla``)."""

DP4A_MIN_SM = 61
"""``__dp4a`` exists from sm_61 (Pascal) on."""


# ---------------------------------------------------------------- feature predicates

def has_avx2(target: Any) -> bool:
    """Whether a :class:`~edgert.targets.Target` runs x86-64 code with AVX2 on its CPU side
    (AVX-512 targets include AVX2; a CUDA target's host code is not ours to schedule)."""
    if target.arch != "x86_64" or target.cuda_arch:
        return False
    feats = set(target.cpu_features)
    return "avx2" in feats or any(f.startswith("avx512") for f in feats)


def has_avx512(target: Any) -> bool:
    """x86 with AVX-512 foundation (16-lane float32 FMA on zmm)."""
    return has_avx2(target) and "avx512f" in target.cpu_features


def has_vnni(target: Any) -> bool:
    """x86 with AVX-512 VNNI (``vpdpbusd``, u8 x s8 quads into int32)."""
    return has_avx2(target) and "avx512_vnni" in target.cpu_features


def has_vpopcntdq(target: Any) -> bool:
    """x86 with AVX-512 VPOPCNTDQ (vector popcount of 32/64-bit lanes)."""
    return has_avx2(target) and "avx512_vpopcntdq" in target.cpu_features


def has_neon(target: Any) -> bool:
    """aarch64 CPU code (NEON is part of every aarch64 target edgert knows)."""
    return target.arch == "aarch64" and not target.cuda_arch


def has_dotprod(target: Any) -> bool:
    """aarch64 with the dotprod extension (``sdot``/``udot``: Cortex-A76 and later)."""
    return target.arch == "aarch64" and "dotprod" in (target.vector_isa or "")


def cuda_sm(target: Any) -> int | None:
    """The CUDA compute capability as an integer (``sm_87`` -> 87), None for CPU targets."""
    return int(target.cuda_arch.removeprefix("sm_")) if target.cuda_arch else None


def vector_bits(target: Any) -> int:
    """Width of the CPU vector registers the schedules use, in bits: 512 with AVX-512, 256
    with AVX2, 128 on NEON, else 128 (SSE-class x86)."""
    if has_avx512(target):
        return 512
    if has_avx2(target):
        return 256
    return 128


# ---------------------------------------------------------------- kernel ISAs per target

def int_matmul_isa(target: Any) -> DotIsa | tuple[DotIsa, ...] | None:
    """The integer-matmul kernel ISA: dp4a on CUDA GPUs (sm_61+), AVX2 on x86 CPUs with AVX2
    (AVX-512 ones included; with VNNI, ``(VNNI, AVX2)``: VNNI where it applies), sdot on
    aarch64 CPUs with dotprod, else None (the generic compute)."""
    sm = cuda_sm(target)
    if sm is not None:
        return DP4A if sm >= DP4A_MIN_SM else None
    if has_avx2(target):
        return (VNNI, AVX2) if has_vnni(target) else AVX2
    if has_dotprod(target):
        return SDOT
    return None


def float_matmul_isa(target: Any) -> DotIsa | None:
    """The float32 matmul kernel ISA of a CPU target: FMA on x86 with AVX2 (16 lanes with
    AVX-512), NEON on aarch64, else None (CUDA targets keep dlight's schedules)."""
    if target.cuda_arch:
        return None
    if has_avx2(target):
        return FMA_AVX512 if has_avx512(target) else FMA_X86
    return FMA_NEON if target.arch == "aarch64" else None


def lut_isa(target: Any) -> str | None:
    """Which LutMatMul kernels a target gets: ``"x86"`` (``pshufb``, AVX2), ``"x86-vnni"``
    (the same with VNNI lookups for 4-bit), ``"neon"`` (``tbl``), or None (generic compute)."""
    if has_avx2(target):
        return "x86-vnni" if has_vnni(target) else "x86"
    if has_neon(target):
        return "neon"
    return None
