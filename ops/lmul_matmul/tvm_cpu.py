"""The vectorized CPU kernel of ``LMulMatMul`` (x86 AVX2 / AVX-512, aarch64 NEON), in TIR.

:func:`kernel` is one PrimFunc ``(A [BA, M, K], B [BB, K, N], Y [BO, M, N])`` (float32, every
dim symbolic; ``BA`` and ``BB`` are 1 or ``BO``: the converter reshapes the operands to
this form) whose inner loop spends two vector instructions per ``lanes`` products, an
integer add and the float add of the accumulation. That is the spec's bit-level L-Mul
(``spec.lmul_bits``) re-arranged, not approximated:

1. Encoding, once per element (vectorized): ``ea = ((|x| & mask) - C) xor sign(x)`` and
   ``eb = (|y| & mask) | sign(y)`` (uint32). Where the product of ``x`` and ``y`` is in the
   normal range, its magnitude ``s = (|x| & mask) + (|y| & mask) - C`` is in
   ``[2**23, 2**31)``, so the wrapping sum ``ea + eb = s + 2**31 (sign(x) + sign(y))`` is
   ``s`` with the sign bit ``sign(x) xor sign(y)``: the product's bit pattern in one add. A
   zero or denormal ``x`` gets the code :func:`a_zero`, a zero or denormal ``y`` a 0 in the
   mask ``mb`` (all ones otherwise). Per row of A and per column of B: the least and greatest
   ``|.| & mask`` of the normal elements and whether an Inf or NaN is there; per row of A
   and per column of B and per :data:`PANEL_K` of k: whether a zero or denormal is there.
   B is encoded once per call (on one thread), packed by column tiles (``K x W`` words
   a tile, then the tail columns row by row), so a tile reads its panel contiguously. A is
   encoded by each parallel task for its own :data:`GROUP` rows, into a task buffer that
   stays in cache (an n x n operand is read once, not written back encoded).
2. Main loop, per tile of :data:`ROWS` output rows x :data:`UNROLL` vectors of columns (the
   rows share each load of B) and per panel of k, ``k`` ascending (each output is its own
   accumulator, the spec's order): where neither the tile's rows nor its columns hold a
   zero in that panel, ``acc += ea + eb`` read as float32; elsewhere the masked form
   ``acc += (ea + eb) & mb & (ea != a_zero ? ~0 : 0)``, a zero product read as +0 (the
   spec's product there is +0 or -0, and the two sums agree: the accumulator starts at +0
   and is never -0, since a round-to-nearest sum is -0 only when both terms are). Rows and
   columns past the last full tile take the masked form one row at a time, on one vector,
   then on scalars.
3. Fix-up, per output element: the fast form equals the spec wherever no product of it
   leaves the normal range and no operand is Inf or NaN. The row and column bounds decide
   that (``min ea + min eb >= 0x00800000`` and ``max ea + max eb <= 0x7F7FFFFF`` with the
   signs cleared, no Inf/NaN flag); every other element is recomputed in scalar code by the
   spec's full formula (:func:`edgert.ops.lmul_matmul.tvm.lmul_tir`), from 0 in ascending k.

The sums are formed in uint32 (no signed-overflow rules); for products outside the normal
range the fix-up discards them. Rows run in parallel; the pre-passes and the fix-up are
O(M K + K N + M N) against the O(M N K) products.

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
128 x 128 columns: 64 KiB of encoded B, kept in L2 while the task's row tiles use it); the
accumulators of a tile go through the output between k panels (float32: the same bits).
The zero flags are kept per panel of k too. A multiple of every vector width."""
FAR = 1 << 40
"""Bound sentinel (int64): a row or column with no normal element has ``min = FAR``,
``max = -FAR``; one with an Inf or NaN has ``min = -FAR`` (always recomputed)."""
NONE = 0x7FFFFFFF
"""int32 start of a least-magnitude reduction (above every ``|.| & mask`` of a normal)."""


def a_zero(mantissa_bits: int) -> int:
    """``ea`` of a zero or denormal element of A (uint32): one past the greatest
    ``(|x| & mask) - C``, a code no normal ``x`` of either sign has (the codes of normals
    span less than 2**31 either way)."""
    hi_a = (MAX_FINITE & truncation_mask(mantissa_bits)) - constant(mantissa_bits)
    lo_a = MIN_NORMAL - constant(mantissa_bits)
    assert hi_a - lo_a + 1 < 1 << 31
    return hi_a + 1


def _panels(depth: Any) -> Any:
    """The number of k panels (:data:`PANEL_K`) of a depth (an expression)."""
    return (depth + PANEL_K - 1) // PANEL_K


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
    assert PANEL_K % lanes == 0 and GROUP % rows == 0
    row_block = _row_macros(T, m, lanes, unroll, rows)
    prepass_b = _prepass_b_macro(T, m, lanes, unroll)
    loop = T.parallel if parallel else T.serial
    PK = PANEL_K

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
        EB = T.alloc_buffer((BB * K * N,), "uint32")
        MB = T.alloc_buffer((BB * K * N,), "uint32")
        # the least |y| per (k panel, column): below MIN_NORMAL where a zero is there
        ZB = T.alloc_buffer((BB * ((K + PK - 1) // PK) * N + 1,), "int32")
        LOB = T.alloc_buffer((BB * N + BB,), "int64")    # per column, then per batch
        HIB = T.alloc_buffer((BB * N + BB,), "int64")
        for bb in range(BB):     # O(K N) a batch: not worth a parallel launch (a barrier)
            prepass_b(Bf, EB, MB, ZB, LOB, HIB, bb, K, N, BB)
        for tb in loop(BO * ((M + GROUP - 1) // GROUP)):
            row_block(Af, Bf, Yf, EB, MB, ZB, LOB, HIB, tb, M, K, N, BA, BB)

    return lmul_matmul_cpu


def _product(T: Any, m: int, L: int, masked: bool) -> Any:
    """The product macro: ``nv`` vectors of products of row ``a_at`` and the encoded B at
    ``b_at + k * stride`` (step ``k``), added into ``acc`` (module docstring, step 2):
    plain, or masked for zeros."""
    F32 = f"float32x{L}"
    AZ = a_zero(m)

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    @T.macro
    def product_tile(EA, EB, MB, acc, acc_at, a_at, b_at, k, stride, nv):
        ea = EA[a_at + k]
        for u in T.unroll(nv):
            s = T.Broadcast(ea, L) + EB[vec(b_at + k * stride + u * L)]
            if masked:
                s = s & MB[vec(b_at + k * stride + u * L)] & T.Broadcast(
                    T.Select(ea == T.uint32(AZ), T.uint32(0), T.uint32(0xFFFFFFFF)), L)
            acc[vec(acc_at + u * L)] = acc[vec(acc_at + u * L)] + T.reinterpret(F32, s)

    return product_tile


def _rest_macro(T: Any, m: int, L: int, U: int) -> Any:
    """The macro finishing one output row: its vector tail, its scalar tail (masked form),
    then the recomputation of the elements the bounds flag (module docstring, steps 2, 3)."""
    W = L * U
    AZ = a_zero(m)
    product_tile = _product(T, m, L, masked=True)

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    @T.macro
    def rest(Af, Bf, Yf, EA, EB, MB, LOA, HIA, LOB, HIB, t, i, ia, M, K, N, BA, BB):
        cb = (t % BB) * N
        a_at = ia * K                                 # the task's encoded row
        x_at = ((t % BA) * M + i) * K                 # the row of A
        b_at = (t % BB) * K * N
        y_at = (t * M + i) * N
        nw = N % W                                    # the tail's columns (packed_at)
        e_at = BB * K * (N - nw) + (t % BB) * K * nw - (N - nw)
        acc = T.alloc_buffer((L,), "float32", scope="local")
        for jv in range(nw // L):
            j0 = N - nw + jv * L
            acc[vec(0)] = T.Broadcast(T.float32(0), L)
            for k in range(K):
                product_tile(EA, EB, MB, acc, 0, a_at, e_at + j0, k, nw, 1)
            Yf[vec(y_at + j0)] = acc[vec(0)]
        one = T.alloc_buffer((1,), "float32", scope="local")
        for j in range(N // L * L, N):
            one[0] = T.float32(0)
            for k in range(K):
                if EA[a_at + k] != T.uint32(AZ):
                    one[0] = one[0] + T.reinterpret("float32", (
                        EA[a_at + k] + EB[e_at + k * nw + j]) & MB[e_at + k * nw + j])
            Yf[y_at + j] = one[0]
        if (LOA[ia] + LOB[BB * N + t % BB] < T.int64(MIN_NORMAL)
                or HIA[ia] + HIB[BB * N + t % BB] > T.int64(MAX_FINITE)):
            for j in range(N):        # the row may meet a column it cannot take fast
                if (LOA[ia] + LOB[cb + j] < T.int64(MIN_NORMAL)
                        or HIA[ia] + HIB[cb + j] > T.int64(MAX_FINITE)):
                    one[0] = T.float32(0)
                    for k in range(K):
                        one[0] = one[0] + lmul_tir(Af[x_at + k], Bf[b_at + k * N + j], m)
                    Yf[y_at + j] = one[0]

    return rest


def _tiles_macro(T: Any, m: int, L: int, U: int, rows: int, masked: bool) -> Any:
    """The macro of one tile of ``rows`` output rows from ``i0`` (the task's encoded rows
    from ``ia``) x ``U`` vectors (column tile ``jb``) over ``k0 <= k < k1``: accumulators
    from 0 (first panel) or from the output, the products (:func:`_product`), back to the
    output."""
    W = L * U
    product_tile = _product(T, m, L, masked)

    def vec(start: Any) -> Any:
        return T.Ramp(start, 1, L)

    @T.macro
    def tiles(Yf, EA, EB, MB, t, i0, ia, M, K, N, BB, k0, k1, jb):
        b_at = ((t % BB) * (N // W) + jb) * K * W           # the packed tile (packed_at)
        acc = T.alloc_buffer((rows * W,), "float32", scope="local")
        for r in T.unroll(rows):
            for u in T.unroll(U):
                if k0 == 0:
                    acc[vec(r * W + u * L)] = T.Broadcast(T.float32(0), L)
                else:
                    acc[vec(r * W + u * L)] = Yf[vec((t * M + i0 + r) * N + jb * W + u * L)]
        for k in range(k0, k1):
            for r in T.unroll(rows):
                product_tile(EA, EB, MB, acc, r * W, (ia + r) * K, b_at, k, W, U)
        for r in T.unroll(rows):
            for u in T.unroll(U):
                Yf[vec((t * M + i0 + r) * N + jb * W + u * L)] = acc[vec(r * W + u * L)]

    return tiles


def _row_macros(T: Any, m: int, L: int, U: int, R: int) -> Any:
    """The macro of one parallel task, :data:`GROUP` output rows of one batch: over panels of
    B (:data:`PANEL_K` x :data:`PANEL_TILES`), tiles of ``R`` rows x ``U`` vectors of ``L``
    columns, plain or masked as the zero flags say (leftover rows one at a time, masked),
    then each row's tails and recomputed elements (:func:`_rest_macro`)."""
    W, PK, PT = L * U, PANEL_K, PANEL_TILES
    rest = _rest_macro(T, m, L, U)
    plain_r, masked_r = _tiles_macro(T, m, L, U, R, False), _tiles_macro(T, m, L, U, R, True)
    masked_1 = _tiles_macro(T, m, L, U, 1, True)      # leftover rows: fewer than R a group
    prepass_a = _prepass_a_macro(T, m, L)

    @T.macro
    def tile_zeros(ZA, ZB, zero, t, ia, K, N, BB, kc, jb):
        """``zero[0]``: 1 where a zero or denormal meets the tile in panel ``kc``."""
        NKP = _panels(K)
        zero[0] = 0
        for r in range(R):
            zero[0] = zero[0] | ZA[(ia + r) * NKP + kc]
        for j in range(W):
            if ZB[((t % BB) * NKP + kc) * N + jb * W + j] < MIN_NORMAL:
                zero[0] = 1

    @T.macro
    def row_block(Af, Bf, Yf, EB, MB, ZB, LOB, HIB, g, M, K, N, BA, BB):
        t = g // ((M + GROUP - 1) // GROUP)
        r0 = g % ((M + GROUP - 1) // GROUP) * GROUP
        n_rows = T.min(GROUP, M - r0)
        EA = T.alloc_buffer((GROUP * K,), "uint32")          # the task's rows, encoded
        ZA = T.alloc_buffer((GROUP * _panels(K) + 1,), "int32")    # 1: a zero in the panel
        LOA = T.alloc_buffer((GROUP,), "int64")
        HIA = T.alloc_buffer((GROUP,), "int64")
        for i in range(n_rows):
            prepass_a(Af, EA, ZA, LOA, HIA, (t % BA) * M + r0 + i, i, K)
        zero = T.alloc_buffer((1,), "int32", scope="local")
        for nc in range((N // W + PT - 1) // PT):
            for kc in range((K + PK - 1) // PK):
                k0, k1 = kc * PK, T.min(K, kc * PK + PK)
                for rb in range(n_rows // R):
                    for jb in range(nc * PT, T.min(N // W, nc * PT + PT)):
                        tile_zeros(ZA, ZB, zero, t, rb * R, K, N, BB, kc, jb)
                        if zero[0] == 0:
                            plain_r(Yf, EA, EB, MB, t, r0 + rb * R, rb * R, M, K, N, BB, k0, k1,
                                    jb)
                        else:
                            masked_r(Yf, EA, EB, MB, t, r0 + rb * R, rb * R, M, K, N, BB, k0,
                                     k1, jb)
                for i in range(n_rows // R * R, n_rows):
                    for jb in range(nc * PT, T.min(N // W, nc * PT + PT)):
                        masked_1(Yf, EA, EB, MB, t, r0 + i, i, M, K, N, BB, k0, k1, jb)
        for i in range(n_rows):
            rest(Af, Bf, Yf, EA, EB, MB, LOA, HIA, LOB, HIB, t, r0 + i, i, M, K, N, BA, BB)

    return row_block


class _Values:
    """PrimExpr builders on a float32 element ``x`` (closures for the encoding macros, which
    are written without bindings: a value bound inside a vectorized loop stays scalar)."""

    def __init__(self, T: Any, m: int) -> None:
        self.T, self.mask = T, truncation_mask(m)

    def bits(self, x: Any) -> Any:
        return self.T.reinterpret("uint32", x)

    def magnitude(self, x: Any) -> Any:
        """|x| as int32."""
        return self.T.reinterpret("int32", self.bits(x) & self.T.uint32(MAGNITUDE))

    def cut(self, x: Any) -> Any:
        """|x| with the mantissa cut, uint32."""
        return self.bits(x) & self.T.uint32(MAGNITUDE & self.mask)

    def normal(self, x: Any) -> Any:
        return self.T.And(self.magnitude(x) >= MIN_NORMAL, self.magnitude(x) < INF)

    def cut_or(self, x: Any, other: int) -> Any:
        """The cut magnitude as int32 where ``x`` is normal, else ``other``."""
        return self.T.Select(self.normal(x), self.T.reinterpret("int32", self.cut(x)), other)

    def sign(self, x: Any) -> Any:
        return self.bits(x) & self.T.uint32(SIGN)


def _prepass_a_macro(T: Any, m: int, L: int) -> Any:
    """The encoding of one row of A: ``EA``, the zero flags ``ZA`` per panel of k and the
    bounds ``LOA``, ``HIA`` (int64, ``- C`` applied; see :data:`FAR`)."""
    C, AZ, PK, v = constant(m), a_zero(m), PANEL_K, _Values(T, m)

    @T.macro
    def encode_a(Af, EA, acc, at, to, lane):
        """Encode A's element ``at`` into ``EA[to]``; fold it into the lane's reductions
        (``acc``: least and greatest cut magnitude, greatest and least |x|)."""
        EA[to] = T.Select(v.normal(Af[at]), (v.cut(Af[at]) - T.uint32(C)) ^ v.sign(Af[at]),
                          T.uint32(AZ))
        acc[lane] = T.min(acc[lane], v.cut_or(Af[at], NONE))
        acc[L + lane] = T.max(acc[L + lane], v.cut_or(Af[at], 0))
        acc[2 * L + lane] = T.max(acc[2 * L + lane], v.magnitude(Af[at]))
        acc[3 * L + lane] = T.min(acc[3 * L + lane], v.magnitude(Af[at]))

    @T.macro
    def prepass_a(Af, EA, ZA, LOA, HIA, r, d, K):
        NKP = _panels(K)
        acc = T.alloc_buffer((4 * L,), "int32", scope="local")
        red = T.alloc_buffer((4,), "int32", scope="local")
        for lane in T.vectorized(L):
            acc[lane] = NONE
            acc[L + lane] = 0
            acc[2 * L + lane] = 0
        for kc in range(NKP):
            k0, k1 = kc * PK, T.min(K, kc * PK + PK)
            for lane in T.vectorized(L):
                acc[3 * L + lane] = NONE
            for kv in range((k1 - k0) // L):
                for lane in T.vectorized(L):
                    encode_a(Af, EA, acc, r * K + k0 + kv * L + lane,
                             d * K + k0 + kv * L + lane, lane)
            for k in range(k0 + (k1 - k0) // L * L, k1):
                encode_a(Af, EA, acc, r * K + k, d * K + k, 0)
            red[3] = NONE
            for lane in range(L):
                red[3] = T.min(red[3], acc[3 * L + lane])
            ZA[d * NKP + kc] = T.Select(red[3] < MIN_NORMAL, 1, 0)
        red[0] = NONE
        red[1] = 0
        red[2] = 0
        for lane in range(L):
            red[0] = T.min(red[0], acc[lane])
            red[1] = T.max(red[1], acc[L + lane])
            red[2] = T.max(red[2], acc[2 * L + lane])
        LOA[d] = T.Select(red[2] >= INF, T.int64(-FAR),
                          T.Select(red[0] == NONE, T.int64(FAR),
                                   T.Cast("int64", red[0]) - T.int64(C)))
        HIA[d] = T.Select(red[1] == 0, T.int64(-FAR), T.Cast("int64", red[1]) - T.int64(C))

    return prepass_a


def _prepass_b_macro(T: Any, m: int, L: int, U: int) -> Any:
    """The encoding of one batch of B: ``EB``, ``MB``, the least |y| per (panel of k,
    column) ``ZB`` and the bounds ``LOB``, ``HIB`` per column, then per batch (int64)."""
    PK, W, v = PANEL_K, L * U, _Values(T, m)

    @T.macro
    def encode_b(Bf, EB, MB, ZB, LB, HB, SB, at, to, j, zat):
        """Encode B's element ``at`` (column ``j``) into ``EB[to]``, ``MB[to]``; fold it into
        the column's reductions (``LB``, ``HB``, ``SB``: least and greatest cut magnitude,
        greatest |y|) and into the (panel, column) least |y| ``ZB[zat]``."""
        EB[to] = v.cut(Bf[at]) | v.sign(Bf[at])
        MB[to] = T.Select(v.magnitude(Bf[at]) >= MIN_NORMAL, T.uint32(0xFFFFFFFF), T.uint32(0))
        LB[j] = T.min(LB[j], v.cut_or(Bf[at], NONE))
        HB[j] = T.max(HB[j], v.cut_or(Bf[at], 0))
        SB[j] = T.max(SB[j], v.magnitude(Bf[at]))
        ZB[zat] = T.min(ZB[zat], v.magnitude(Bf[at]))

    @T.macro
    def prepass_b(Bf, EB, MB, ZB, LOB, HIB, bb, K, N, BB):
        NKP = _panels(K)
        LB = T.alloc_buffer((N,), "int32")
        HB = T.alloc_buffer((N,), "int32")
        SB = T.alloc_buffer((N,), "int32")
        for j in range(N):
            LB[j] = NONE
            HB[j] = 0
            SB[j] = 0
        for kc in range(NKP):
            for j in range(N):
                ZB[(bb * NKP + kc) * N + j] = NONE
        nw = N % W
        for k in range(K):
            for jv in range(N // W * U):               # full column tiles: packed
                for lane in T.vectorized(L):
                    encode_b(Bf, EB, MB, ZB, LB, HB, SB, (bb * K + k) * N + jv * L + lane,
                             ((bb * (N // W) + jv // U) * K + k) * W + jv % U * L + lane,
                             jv * L + lane, (bb * NKP + k // PK) * N + jv * L + lane)
            for jv in range(nw // L):                  # the tail's vector, then its scalars
                for lane in T.vectorized(L):
                    encode_b(Bf, EB, MB, ZB, LB, HB, SB,
                             (bb * K + k) * N + N - nw + jv * L + lane,
                             BB * K * (N - nw) + (bb * K + k) * nw + jv * L + lane,
                             N - nw + jv * L + lane,
                             (bb * NKP + k // PK) * N + N - nw + jv * L + lane)
            for j in range(N // L * L, N):
                encode_b(Bf, EB, MB, ZB, LB, HB, SB, (bb * K + k) * N + j,
                         BB * K * (N - nw) + (bb * K + k) * nw + j - (N - nw), j,
                         (bb * NKP + k // PK) * N + j)
        LOB[BB * N + bb] = T.int64(FAR)
        HIB[BB * N + bb] = T.int64(-FAR)
        for j in range(N):
            LOB[bb * N + j] = T.Select(SB[j] >= INF, T.int64(-FAR),
                                       T.Select(LB[j] == NONE, T.int64(FAR),
                                                T.Cast("int64", LB[j])))
            HIB[bb * N + j] = T.Select(HB[j] == 0, T.int64(-FAR), T.Cast("int64", HB[j]))
            LOB[BB * N + bb] = T.min(LOB[BB * N + bb], LOB[bb * N + j])
            HIB[BB * N + bb] = T.max(HIB[BB * N + bb], HIB[bb * N + j])

    return prepass_b


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
