"""The vectorized CPU kernel of ``LMulMatMul`` (x86 AVX2 / AVX-512, aarch64 NEON), in TIR.

:func:`kernel` is one PrimFunc ``(A [BA, M, K], B [BB, K, N], Y [BO, M, N])`` (float32, every
dim symbolic; ``BA`` and ``BB`` are 1 or ``BO``: the converter reshapes the operands to
this form) whose inner loop spends six vector instructions per ``lanes`` products: an
integer add, a signed max, an and, two xors and the float add of the accumulation.
That is the spec's bit-level L-Mul (``spec.lmul_bits``) re-arranged, not approximated:

1. Pre-pass over A, per element: ``ea = (|x| & mask) - C`` (uint32, wrapping) and its sign
   word; a zero or denormal ``x`` gets the sentinel :data:`A_ZERO` instead. Per row: whether
   it holds an Inf or NaN, and the least and greatest ``ea`` of its normal elements (int64).
2. Pre-pass over B: ``eb = |y| & mask``, a zero or denormal ``y`` gets :func:`b_zero`
   (``-max ea``: ``ea + eb <= 0`` for every normal ``x``); the sign word; per column the
   same flags and bounds.
3. Main loop, per tile of :data:`ROWS` output rows x :data:`UNROLL` vectors of columns (the
   rows share each load of B), ``k`` ascending (serial: each output is its own accumulator,
   the spec's order):
   ``(max(ea + eb, 0) & nz(x)) ^ sign(x) ^ sign(y)`` read as float32 (``nz(x)`` all ones,
   or 0 where ``ea`` is the zero sentinel: a zero times a zero, which no additive code can
   send below 0), added into the accumulators. Rows and columns past the last full tile
   run the same arithmetic one row at a time, on one vector, then on scalars.
4. Fix-up, per output element: the fast form equals the spec wherever no product of it
   leaves the normal range and no operand is Inf or NaN. The row and column bounds decide
   that (``min ea + min eb >= 0x00800000`` and ``max ea + max eb <= 0x7F7FFFFF``, no
   Inf/NaN flag); every other element is recomputed in scalar code by the spec's full
   formula (:func:`edgert.ops.lmul_matmul.tvm.lmul_tir`), from 0 in ascending k.

The sum of ``ea`` and ``eb`` is formed in uint32 (no signed-overflow rules): for products in
the normal range it is the exact integer, for the rest its value is discarded by the fix-up;
zero products land in ``[-2**31, 0]`` as int32, which the max turns into 0. Rows run in
parallel; the pre-passes and the fix-up are O(M K + K N + M N) against the O(M N K) products.

:func:`schedule_lmul_matmuls` puts this kernel, with the target's vector width (16 lanes with
AVX-512, 8 with AVX2, 4 on NEON and SSE), in place of every PrimFunc the converter marked
with :data:`MANTISSA_ATTR`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edgert.ops.lmul_matmul.tvm import MANTISSA_ATTR, lmul_tir
from edgert.ops.lmul_matmul.spec import (INF, MAGNITUDE, MAX_FINITE, MIN_NORMAL, SIGN,
                                         check_mantissa_bits, constant, truncation_mask)

UNROLL = 2
"""Vectors of columns per tile (independent accumulators: the float adds' latency hidden)."""
ROWS = 4
"""Output rows per tile: they share each load of B."""
GROUP = 32
"""Output rows per parallel task (a multiple of :data:`ROWS`)."""
PANEL_K, PANEL_TILES = 128, 8
"""The task's rows go over B in panels of this many k by this many column tiles (with AVX2
128 x 128 columns: 128 KiB of encoded B, kept in L2 while the task's row tiles use it); the
accumulators of a tile go through the output between k panels (float32: the same bits)."""
A_ZERO = 0x7FFFFFFF
"""``ea`` of a zero or denormal element of A (no normal element has it: ``ea < 2**30``)."""
FAR = 1 << 40
"""Bound sentinel (int64): a row or column with no normal element has ``min = FAR``,
``max = -FAR``; one with an Inf or NaN has ``min = -FAR`` (always recomputed)."""


def b_zero(mantissa_bits: int) -> int:
    """``eb`` of a zero or denormal element of B as uint32: ``-(max ea)``, so that
    ``ea + eb`` is in ``[-2**31, 0]`` (as int32) for every normal element of A."""
    hi_a = (MAX_FINITE & truncation_mask(mantissa_bits)) - constant(mantissa_bits)
    lo_a = MIN_NORMAL - constant(mantissa_bits)
    assert hi_a - lo_a < 1 << 31
    return (-hi_a) & 0xFFFFFFFF


def lanes_for(target: Any) -> int:
    """float32 lanes of one vector register of an edgert CPU target."""
    from edgert.targets import isa

    return isa.vector_bits(target) // 32


@lru_cache(maxsize=None)
def kernel(mantissa_bits: int, lanes: int = 8, unroll: int = UNROLL, rows: int = ROWS,
           parallel: bool = True) -> Any:
    """The PrimFunc (module docstring): ``(A f32 [BA, M, K], B f32 [BB, K, N],
    Y f32 [BO, M, N])``, ``BA`` and ``BB`` each 1 or ``BO``; ``lanes`` float32 per vector,
    ``unroll`` vectors per column tile; rows in parallel when ``parallel``."""
    from tvm.script import tirx as T

    m = check_mantissa_bits(mantissa_bits)
    row_block = _row_macros(T, m, lanes, unroll, rows)
    prepass_a, prepass_b = _prepass_macros(T, m)

    @T.prim_func
    def lmul_matmul_cpu(a_h: T.handle, b_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        BA, BB, BO = T.int64(), T.int64(), T.int64()
        M, K, N = T.int64(), T.int64(), T.int64()
        A = T.match_buffer(a_h, (BA, M, K), "float32")
        B = T.match_buffer(b_h, (BB, K, N), "float32")
        Y = T.match_buffer(y_h, (BO, M, N), "float32")
        Af = T.decl_buffer((BA * M * K,), "float32", data=A.data)
        Bf = T.decl_buffer((BB * K * N,), "float32", data=B.data)
        Yf = T.decl_buffer((BO * M * N,), "float32", data=Y.data)
        EA = T.alloc_buffer((BA * M * K,), "uint32")
        SA = T.alloc_buffer((BA * M * K,), "int32")
        EB = T.alloc_buffer((BB * K * N,), "uint32")
        SB = T.alloc_buffer((BB * K * N,), "int32")
        LOA = T.alloc_buffer((BA * M,), "int64")
        HIA = T.alloc_buffer((BA * M,), "int64")
        LOB = T.alloc_buffer((BB * N + BB,), "int64")    # per column, then per batch
        HIB = T.alloc_buffer((BB * N + BB,), "int64")
        if parallel:
            for r in T.parallel(BA * M):
                prepass_a(Af, EA, SA, LOA, HIA, r, K)
            for bb in T.parallel(BB):
                prepass_b(Bf, EB, SB, LOB, HIB, bb, K, N, BB)
            for tb in T.parallel(BO * ((M + GROUP - 1) // GROUP)):
                row_block(Af, Bf, Yf, EA, SA, EB, SB, LOA, HIA, LOB, HIB, tb, M, K, N, BA, BB)
        else:
            for r in range(BA * M):
                prepass_a(Af, EA, SA, LOA, HIA, r, K)
            for bb in range(BB):
                prepass_b(Bf, EB, SB, LOB, HIB, bb, K, N, BB)
            for tb in range(BO * ((M + GROUP - 1) // GROUP)):
                row_block(Af, Bf, Yf, EA, SA, EB, SB, LOA, HIA, LOB, HIB, tb, M, K, N, BA, BB)

    return lmul_matmul_cpu


def _product_macro(T: Any, L: int) -> Any:
    """The macro adding ``nv`` vectors of products of row ``a_at`` and column tile ``b_at``
    at step ``k`` into ``acc`` (module docstring, step 3)."""
    I32, F32 = f"int32x{L}", f"float32x{L}"

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    @T.macro
    def product_tile(EA, SA, EB, SB, acc, acc_at, a_at, b_at, k, N, nv):
        for u in T.unroll(nv):
            acc[vec(acc_at + u * L)] = acc[vec(acc_at + u * L)] + T.reinterpret(F32, (T.max(
                T.reinterpret(I32, T.Broadcast(EA[a_at + k], L)
                              + EB[vec(b_at + k * N + u * L)]),
                T.Broadcast(T.int32(0), L)) & T.Broadcast(T.Select(
                    EA[a_at + k] == T.uint32(A_ZERO), T.int32(0), T.int32(-1)), L))
                ^ T.Broadcast(SA[a_at + k], L) ^ SB[vec(b_at + k * N + u * L)])

    return product_tile


def _rest_macro(T: Any, m: int, L: int, U: int, product_tile: Any) -> Any:
    """The macro finishing one output row: its vector tail, its scalar tail, then the
    recomputation of the elements the bounds flag (module docstring, steps 3 and 4)."""
    W = L * U

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    @T.macro
    def rest(Af, Bf, Yf, EA, SA, EB, SB, LOA, HIA, LOB, HIB, t, i, M, K, N, BA, BB):
        ra = (t % BA) * M + i
        cb = (t % BB) * N
        a_at = ra * K
        b_at = (t % BB) * K * N
        y_at = (t * M + i) * N
        acc = T.alloc_buffer((L,), "float32", scope="local")
        for jv in range(N % W // L):
            j0 = N // W * W + jv * L
            acc[vec(0)] = T.Broadcast(T.float32(0), L)
            for k in range(K):
                product_tile(EA, SA, EB, SB, acc, 0, a_at, b_at + j0, k, N, 1)
            Yf[vec(y_at + j0)] = acc[vec(0)]
        one = T.alloc_buffer((1,), "float32", scope="local")
        for j in range(N // L * L, N):
            one[0] = T.float32(0)
            for k in range(K):
                ea = EA[a_at + k]
                sgn = SA[a_at + k] ^ SB[b_at + k * N + j]
                if ea == T.uint32(A_ZERO):
                    one[0] = one[0] + T.reinterpret("float32", sgn)
                else:
                    s = T.reinterpret("int32", ea + EB[b_at + k * N + j])
                    one[0] = one[0] + T.reinterpret("float32", T.max(s, 0) ^ sgn)
            Yf[y_at + j] = one[0]
        if (LOA[ra] + LOB[BB * N + t % BB] < T.int64(MIN_NORMAL)
                or HIA[ra] + HIB[BB * N + t % BB] > T.int64(MAX_FINITE)):
            for j in range(N):        # the row may meet a column it cannot take fast
                if (LOA[ra] + LOB[cb + j] < T.int64(MIN_NORMAL)
                        or HIA[ra] + HIB[cb + j] > T.int64(MAX_FINITE)):
                    one[0] = T.float32(0)
                    for k in range(K):
                        one[0] = one[0] + lmul_tir(Af[a_at + k], Bf[b_at + k * N + j], m)
                    Yf[y_at + j] = one[0]

    return rest


def _row_macros(T: Any, m: int, L: int, U: int, R: int) -> Any:
    """The macro of one parallel task, :data:`GROUP` output rows of one batch: over panels of
    B (:data:`PANEL_K` x :data:`PANEL_TILES`), tiles of ``R`` rows x ``U`` vectors of ``L``
    columns (the rows share the loads of B; leftover rows one at a time), then each row's
    tails and recomputed elements (:func:`_rest_macro`)."""
    W = L * U
    product_tile = _product_macro(T, L)

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    def tiles_macro(rows: int) -> Any:
        @T.macro
        def tiles(Yf, EA, SA, EB, SB, t, i0, M, K, N, BA, BB, k0, k1, jb0, jb1):
            b_at = (t % BB) * K * N
            acc = T.alloc_buffer((rows * W,), "float32", scope="local")
            for jb in range(jb0, jb1):
                for r in T.unroll(rows):
                    for u in T.unroll(U):
                        if k0 == 0:
                            acc[vec(r * W + u * L)] = T.Broadcast(T.float32(0), L)
                        else:
                            acc[vec(r * W + u * L)] = Yf[vec((t * M + i0 + r) * N + jb * W
                                                             + u * L)]
                for k in range(k0, k1):
                    for r in T.unroll(rows):
                        product_tile(EA, SA, EB, SB, acc, r * W, ((t % BA) * M + i0 + r) * K,
                                     b_at + jb * W, k, N, U)
                for r in T.unroll(rows):
                    for u in T.unroll(U):
                        Yf[vec((t * M + i0 + r) * N + jb * W + u * L)] = acc[vec(r * W + u * L)]
        return tiles

    rest = _rest_macro(T, m, L, U, product_tile)
    tiles_r, tiles_1 = tiles_macro(R), tiles_macro(1)

    @T.macro
    def row_block(Af, Bf, Yf, EA, SA, EB, SB, LOA, HIA, LOB, HIB, g, M, K, N, BA, BB):
        t = g // ((M + GROUP - 1) // GROUP)
        r0 = g % ((M + GROUP - 1) // GROUP) * GROUP
        n_rows = T.min(GROUP, M - r0)
        for nc in range((N // W + PANEL_TILES - 1) // PANEL_TILES):
            for kc in range((K + PANEL_K - 1) // PANEL_K):
                for rb in range(n_rows // R):
                    tiles_r(Yf, EA, SA, EB, SB, t, r0 + rb * R, M, K, N, BA, BB, kc * PANEL_K,
                            T.min(K, kc * PANEL_K + PANEL_K), nc * PANEL_TILES,
                            T.min(N // W, nc * PANEL_TILES + PANEL_TILES))
                for i in range(r0 + n_rows // R * R, r0 + n_rows):
                    tiles_1(Yf, EA, SA, EB, SB, t, i, M, K, N, BA, BB, kc * PANEL_K,
                            T.min(K, kc * PANEL_K + PANEL_K), nc * PANEL_TILES,
                            T.min(N // W, nc * PANEL_TILES + PANEL_TILES))
        for i in range(r0, r0 + n_rows):
            rest(Af, Bf, Yf, EA, SA, EB, SB, LOA, HIA, LOB, HIB, t, i, M, K, N, BA, BB)

    return row_block


def _prepass_macros(T: Any, m: int) -> tuple[Any, Any]:
    """The pre-pass macros over a row of A and over one batch of B (module docstring)."""
    C, MASK, BZ = constant(m), truncation_mask(m), b_zero(m)

    @T.macro
    def prepass_a(Af, EA, SA, LOA, HIA, r, K):
        LOA[r] = T.int64(FAR)
        HIA[r] = T.int64(-FAR)
        for k in range(K):
            x = T.reinterpret("uint32", Af[r * K + k])
            ax = x & T.uint32(MAGNITUDE)
            SA[r * K + k] = T.reinterpret("int32", x & T.uint32(SIGN))
            EA[r * K + k] = T.uint32(A_ZERO)
            if ax >= T.uint32(INF):
                LOA[r] = T.int64(-FAR)
            elif ax >= T.uint32(MIN_NORMAL):
                e = T.Cast("int64", ax & T.uint32(MASK)) - T.int64(C)
                EA[r * K + k] = T.Cast("uint32", e & T.int64(0xFFFFFFFF))
                LOA[r] = T.min(LOA[r], e)
                HIA[r] = T.max(HIA[r], e)

    @T.macro
    def prepass_b(Bf, EB, SB, LOB, HIB, bb, K, N, BB):
        for j in range(N):
            LOB[bb * N + j] = T.int64(FAR)
            HIB[bb * N + j] = T.int64(-FAR)
        for k in range(K):
            for j in range(N):
                at = (bb * K + k) * N + j
                y = T.reinterpret("uint32", Bf[at])
                ay = y & T.uint32(MAGNITUDE)
                SB[at] = T.reinterpret("int32", y & T.uint32(SIGN))
                EB[at] = T.uint32(BZ)
                if ay >= T.uint32(INF):
                    LOB[bb * N + j] = T.int64(-FAR)
                elif ay >= T.uint32(MIN_NORMAL):
                    EB[at] = ay & T.uint32(MASK)
                    e = T.Cast("int64", ay & T.uint32(MASK))
                    LOB[bb * N + j] = T.min(LOB[bb * N + j], e)
                    HIB[bb * N + j] = T.max(HIB[bb * N + j], e)
        LOB[BB * N + bb] = T.int64(FAR)
        HIB[BB * N + bb] = T.int64(-FAR)
        for j in range(N):
            LOB[BB * N + bb] = T.min(LOB[BB * N + bb], LOB[bb * N + j])
            HIB[BB * N + bb] = T.max(HIB[BB * N + bb], HIB[bb * N + j])

    return prepass_a, prepass_b


# ---------------------------------------------------------------- the swap-in pass

def schedule_lmul_matmuls(mod: Any, target: Any) -> Any:
    """``mod`` with every PrimFunc marked with :data:`MANTISSA_ATTR` (the converter's generic
    rank-3 kernel) replaced by :func:`kernel` for the edgert CPU ``target``'s vector width."""
    lanes = lanes_for(target)
    for gv, func in list(mod.functions.items()):
        attrs = getattr(func, "attrs", None)
        if attrs is None or MANTISSA_ATTR not in attrs:
            continue
        scalars = [p for p in func.params if "Buffer" not in type(p.ty).__name__]
        new = _with_scalar_params(kernel(int(attrs[MANTISSA_ATTR]), lanes), scalars)
        keep = {str(k): v for k, v in attrs.items() if str(k) != "global_symbol"}
        mod[gv] = new.with_attrs({**keep, "tirx.is_scheduled": True})
    return mod


def _with_scalar_params(func: Any, extra: list) -> Any:
    """``func`` (no global symbol) taking unused scalars like ``extra`` between its input and
    output buffers, where ``call_tir`` passes the symbolic dims the operands' shapes do not
    name alone (a batch ``b * h``)."""
    from tvm import tirx

    func = func.without_attr("global_symbol")
    if not extra:
        return func
    a, b, y = func.params
    params = [a, b, *(tirx.Var(p.name, p.ty) for p in extra), y]
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)
