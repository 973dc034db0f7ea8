"""CUDA kernel for the int8 x int8 integer matmuls: CUDA's ``__dp4a`` (4 int8 products added
into an int32 in one instruction, sm_61+).

TVM's default GPU schedules (dlight) turn ``MatMulInteger`` / ``edgert.IntMatMul`` into int32
multiply-adds, and their int8 tensor-core path fails in TVM 0.27's CUDA codegen (see
``lower._schedule_for_gpu``). :func:`dp4a_kernel` is the CUDA sibling of the CPU kernels of
:mod:`edgert.compiler.schedule_intmatmul`, used through the same Relax rewrite
(``schedule_int_matmuls(..., isa=DP4A)``) for int8 operands (int16 ones keep dlight's kernels):

- B (the right operand) is either a constant weight, packed at compile time into the CPU
  kernels' int32 words (:func:`~edgert.compiler.schedule_intmatmul.pack_weight_words` with
  ``group=4``: word ``[nb, p, j]`` holds ``B[4p..4p+3, nb*NR + j]``, little-endian bytes as
  ``__dp4a`` reads them), or an activation ``[1 or batch, K, N]`` whose words the kernel
  gathers from 4 rows.
- A's words are read as int32 straight from memory when K is a static multiple of 4 (a row
  then starts on a 4-byte boundary), else gathered byte by byte with zero padding past K.
- Each thread computes ``RM`` rows of one column; a block is ``TX`` columns x ``TY * RM`` rows of
  one batch entry. Out-of-range threads read clamped addresses and store nothing.

Integer arithmetic, so the results are bit-identical with :func:`edgert.ops.intmatmul.reference`
(and with every CPU build) under the int32 bound the quantizer proves.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

TX, TY, RM = 64, 4, 4
"""Threads per block over columns, over row groups; rows per thread."""


def dp4a_kernel(k: int | None, n: int | None, *, b_packed: bool, b_batched: bool, nr: int,
                name: str) -> Any:
    """The kernel as a TIR PrimFunc ``(A, B, [k], [n], C)``: A int8 ``[BA, M, k]``, B the packed
    int32 ``[ceil(n/nr), ceil(k/4), nr]`` (``b_packed``, static k and n) or int8
    ``[BB, k, n]`` (BB = BA when ``b_batched``, else 1), C int32 ``[BA, M, n]``; a ``None``
    dim stays a symbolic int64 argument."""
    from tvm import tirx

    template = _template(b_packed, bool(b_batched) and not b_packed, nr,
                         k is not None and k % 4 == 0)
    k_var, n_var = template.params[2:4]
    bind = {v: tirx.IntImm("int64", int(value)) for v, value in ((k_var, k), (n_var, n))
            if value is not None}
    return template.specialize(bind).with_attr("global_symbol", name)


@lru_cache(maxsize=None)
def _template(b_packed: bool, b_batched: bool, nr: int, a_aligned: bool) -> Any:
    from tvm import tirx
    from tvm.script import tirx as T

    from edgert.compiler.matmul_pack import pack_word

    ROWS = TY * RM
    BSEL = 1 if b_batched else 0

    def a_word(Af, Aw, base, p, k):
        # the word of A[base + 4p .. +3] (base: the row's first element), zero past k
        if a_aligned:
            return Aw[base // 4 + p]
        return pack_word(lambda j: Af[base + tirx.min(4 * p + j, k - 1)], 4, 1, k - 4 * p)

    def b_word(Bf, b_base, p, col, k, n):
        # the word of B[b_base + (4p .. 4p+3) * n + col], zero past k
        return pack_word(lambda j: Bf[b_base + tirx.min(4 * p + j, k - 1) * n + col], 4, 1,
                         k - 4 * p)

    @T.macro
    def body(Af, Aw, Bf, Cf, BA, M, k, n):
        MB: T.let[T.int64] = (M + ROWS - 1) // ROWS
        for bx in T.thread_binding((n + TX - 1) // TX, thread="blockIdx.x"):
            for by in T.thread_binding(BA * MB, thread="blockIdx.y"):
                for ty in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx in T.thread_binding(TX, thread="threadIdx.x"):
                        acc = T.alloc_buffer((RM,), "int32", scope="local")
                        bi: T.let[T.int64] = by // MB
                        m0: T.let[T.int64] = (by - bi * MB) * ROWS + ty * RM
                        col: T.let[T.int64] = T.min(bx * TX + tx, n - 1)    # clamped
                        for r in T.unroll(RM):
                            acc[r] = 0
                        for p in range((k + 3) // 4):
                            if b_packed:
                                bw: T.let[T.int32] = Bf[((col // nr) * ((k + 3) // 4) + p) * nr
                                                        + col % nr]
                            else:
                                bw: T.let[T.int32] = b_word(Bf, bi * BSEL * (k * n), p, col,
                                                            k, n)
                            for r in T.unroll(RM):
                                acc[r] = T.call_pure_extern(
                                    "int32", "__dp4a",
                                    a_word(Af, Aw, (bi * M + T.min(m0 + r, M - 1)) * k, p, k),
                                    bw, acc[r])
                        for r in T.unroll(RM):
                            if m0 + r < M and bx * TX + tx < n:
                                Cf[(bi * M + m0 + r) * n + bx * TX + tx] = acc[r]

    if b_packed:
        @T.prim_func
        def kernel(a: T.handle, b: T.handle, k: T.int64, n: T.int64, c: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            BA = T.int64()
            M = T.int64()
            A = T.match_buffer(a, (BA, M, k), "int8")
            B = T.match_buffer(b, ((n + nr - 1) // nr, (k + 3) // 4, nr), "int32")
            C = T.match_buffer(c, (BA, M, n), "int32")
            Af = T.decl_buffer((BA * M * k,), "int8", data=A.data)
            Aw = T.decl_buffer((BA * M * k // 4,), "int32", data=A.data)
            Bf = T.decl_buffer(((n + nr - 1) // nr * ((k + 3) // 4) * nr,), "int32", data=B.data)
            Cf = T.decl_buffer((BA * M * n,), "int32", data=C.data)
            body(Af, Aw, Bf, Cf, BA, M, k, n)
    else:
        @T.prim_func
        def kernel(a: T.handle, b: T.handle, k: T.int64, n: T.int64, c: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            BA = T.int64()
            M = T.int64()
            BB = T.int64()
            A = T.match_buffer(a, (BA, M, k), "int8")
            B = T.match_buffer(b, (BB, k, n), "int8")
            C = T.match_buffer(c, (BA, M, n), "int32")
            Af = T.decl_buffer((BA * M * k,), "int8", data=A.data)
            Aw = T.decl_buffer((BA * M * k // 4,), "int32", data=A.data)
            Bf = T.decl_buffer((BB * k * n,), "int8", data=B.data)
            Cf = T.decl_buffer((BA * M * n,), "int32", data=C.data)
            body(Af, Aw, Bf, Cf, BA, M, k, n)

    return kernel
