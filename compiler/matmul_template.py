"""The TVMScript matmul kernel of :mod:`edgert.compiler.schedule_intmatmul`, parsed once per
signature.

The kernel is assembled from TVMScript macros, each built by one function below from the
signature's constants (:class:`_Shape`): the register tile (:func:`_tile_macro`), a column
block and the A-panel packing (:func:`_block_macros`), one task (:func:`_task_macro`), the task
loops (:func:`_run_tasks_macro`) and the PrimFunc (:func:`_prim_func`). The layouts and the
arithmetic are described in :mod:`edgert.compiler.schedule_intmatmul`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgert.compiler.matmul_pack import MatmulConfig, pack_word
from edgert.targets.isa import DotIsa


@dataclass(frozen=True)
class _Shape:
    """The Python constants one kernel signature bakes into its TVMScript (closure values)."""

    MR: int
    NR: int
    MP: int
    L: int            # int32 (float32) lanes per vector
    G: int            # K elements per lane
    NV: int           # vectors per tile row
    WORD: str         # int32, or float32 for the float kernels
    VEC: str
    OPV: str
    FLOAT: bool
    PAR: bool
    BSEL: int         # batch index of B = BSEL * batch index of A
    INTRIN: str
    ACCUMULATES: bool
    EXTRA: int        # B's correction row (VNNI)
    OFFSET_A: bool
    BT: bool = False  # (float32, activation B) B given transposed, [BB, n, k]


def _shape(b_batched: bool, cfg: MatmulConfig, cores: int, isa: DotIsa,
           b_transposed: bool = False) -> _Shape:
    L, G = isa.lanes, isa.group
    return _Shape(cfg.mr, cfg.nr, cfg.mp, L, G, cfg.nr // L, isa.word,
                  f"{isa.word}x{L}", f"{isa.operand}x{L * G}", G == 1, cores > 1,
                  1 if b_batched else 0, isa.intrin, isa.accumulates,
                  1 if isa.a_offset else 0, bool(isa.a_offset), b_transposed)


@lru_cache(maxsize=None)
def template(a_dtype: str, b_dtype: str, b_packed: bool, b_batched: bool, cfg: MatmulConfig,
             cores: int, isa: DotIsa, b_transposed: bool = False) -> Any:
    """The kernel ``(A, B, k, n, nbc, C)`` with symbolic ``k``, ``n`` and column blocks per
    task ``nbc`` (int64 params), parsed once per signature;
    :func:`edgert.compiler.schedule_intmatmul.int_matmul_kernel` specializes it (TVMScript
    parsing costs ~0.5 s, specializing ~1 ms). ``b_transposed`` (float32, unpacked B only): B
    is given as ``[BB, n, k]`` and transposed while a task packs it."""
    if b_transposed and (b_packed or isa.group != 1):
        raise ValueError("b_transposed: float32 kernels with an activation B only")
    sh = _shape(b_batched, cfg, cores, isa, b_transposed)
    a_word, b_word, b_word_ragged = _word_loads(sh, b_dtype)
    tile = _tile_macro(sh)
    block, pack_panel = _block_macros(sh, tile, a_word)
    task = _task_macro(sh, block, b_word, b_word_ragged, b_packed)
    run_tasks = _run_tasks_macro(sh, pack_panel, task)
    return _prim_func(sh, run_tasks, a_dtype, b_dtype, b_packed)


def _word_loads(sh: _Shape, b_dtype: str) -> tuple:
    """TIR helpers (plain Python, called inside the macros): the packed words of A and B."""
    from tvm import tirx

    G, L, FLOAT, VEC, WORD, OFFSET_A = sh.G, sh.L, sh.FLOAT, sh.VEC, sh.WORD, sh.OFFSET_A
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

    return a_word, b_word, b_word_ragged


def _tile_macro(sh: _Shape) -> Any:
    from tvm.script import tirx as T

    NR, L, NV, WORD, VEC, OPV = sh.NR, sh.L, sh.NV, sh.WORD, sh.VEC, sh.OPV
    FLOAT, INTRIN, ACCUMULATES, OFFSET_A = sh.FLOAT, sh.INTRIN, sh.ACCUMULATES, sh.OFFSET_A

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
            if FLOAT:
                # row outside: one broadcast of A live at a time (6 x 16 on AVX2: 12
                # accumulators, 2 B vectors, 1 broadcast fit the 16 ymm registers; column
                # outside kept all 6 broadcasts live and spilled accumulators every K step)
                for r in T.unroll(rows):
                    for v in T.unroll(NV):
                        acc[T.Ramp((r * NV + v) * L, 1, L)] = \
                            acc[T.Ramp((r * NV + v) * L, 1, L)] \
                            + T.Broadcast(ap32[a0 + r * KG + p], L) \
                            * bsrc[T.Ramp(b0 + p * NR + v * L, 1, L)]
            else:
                for v in T.unroll(NV):
                    for r in T.unroll(rows):
                        if ACCUMULATES:
                            acc[T.Ramp((r * NV + v) * L, 1, L)] = T.call_llvm_pure_intrin(
                                VEC, INTRIN, acc[T.Ramp((r * NV + v) * L, 1, L)],
                                T.reinterpret(OPV, T.Broadcast(ap32[a0 + r * KG + p], L)),
                                T.reinterpret(OPV, bsrc[T.Ramp(b0 + p * NR + v * L, 1, L)]))
                        else:
                            acc[T.Ramp((r * NV + v) * L, 1, L)] = \
                                acc[T.Ramp((r * NV + v) * L, 1, L)] \
                                + T.call_llvm_pure_intrin(
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
    return tile


def _block_macros(sh: _Shape, tile: Any, a_word: Any) -> tuple[Any, Any]:
    from tvm.script import tirx as T

    MR, MP, G, WORD, FLOAT = sh.MR, sh.MP, sh.G, sh.WORD, sh.FLOAT

    @T.macro
    def block(ap32, a0, bsrc, b0, Cf, row0, rows, ncol, KG, n):
        # every row of the panel (at a0 in ap32) against one column block of B (at b0 in bsrc)
        full: T.let[T.int32] = T.floordiv(rows, MR)
        tail: T.let[T.int32] = rows - full * MR
        cols: T.let[T.int64] = n - ncol
        for mi in range(full):
            tile(MR, ap32, a0 + mi * MR * KG, bsrc, b0, Cf, (row0 + mi * MR) * n + ncol,
                 rows - mi * MR, cols, KG, n)
        if FLOAT:              # A itself, no zero rows past the panel: row by row
            for r in range(tail):
                tile(1, ap32, a0 + (full * MR + r) * KG, bsrc, b0, Cf,
                     (row0 + full * MR + r) * n + ncol, 1, cols, KG, n)
        elif tail * 2 > MR:    # a long row tail: the MR-row tile over zero rows
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
        bi: T.let[T.int64] = T.truncdiv(pi, MPN)
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
    return block, pack_panel


def _task_macro(sh: _Shape, block: Any, b_word: Any, b_word_ragged: Any, b_packed: bool) -> Any:
    from tvm.script import tirx as T

    MP, NR, L, G, NV, WORD = sh.MP, sh.NR, sh.L, sh.G, sh.NV, sh.WORD
    BSEL, EXTRA, FLOAT, BT = sh.BSEL, sh.EXTRA, sh.FLOAT, sh.BT

    @T.macro
    def task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH):
        # task t: batch bi, rows [mp*MP, +MP) of it (packed A panel bi * MPN + mp), column
        # blocks [nc*NBC, +NBC). (truncdiv: the operands are never negative; TVM's floordiv
        # by a run-time divisor lowers to sign fix-ups that made a kernel with a symbolic n
        # 2x slower to compile.)
        bi: T.let[T.int64] = T.truncdiv(t, MPN * NCH)
        rest: T.let[T.int64] = t - bi * (MPN * NCH)
        mp: T.let[T.int64] = T.truncdiv(rest, NCH)
        nc: T.let[T.int64] = rest - mp * NCH
        row0: T.let[T.int64] = bi * M + mp * MP           # first row of the panel in A and C
        rows: T.let[T.int32] = T.Cast("int32", T.min(T.int64(MP), M - mp * MP))
        nblocks: T.let[T.int64] = T.min(NBC, NBR - nc * NBC)
        # the panel's first word: in the packed panels, or (float32) in A itself
        a0: T.let[T.int64] = row0 * KG if FLOAT else (bi * MPN + mp) * (MP * KG)
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
                if BT and col0 + NR <= n:
                    # B^T [n, k]: column j of the block is row col0 + j (float32: G = 1, KG =
                    # k); one strided load of NR rows per K step, the lines reused from L1
                    for p in range(k):
                        bp32[T.Ramp((nbi * KG + p) * NR, 1, NR)] = Bf[T.Ramp(
                            b_base + col0 * k + p, k, NR)]
                elif BT:                       # the ragged last block, zero past N
                    for j in range(NR):
                        if col0 + j < n:
                            for p in range(k):
                                bp32[(nbi * KG + p) * NR + j] = Bf[b_base + (col0 + j) * k + p]
                        else:
                            for p in range(k):
                                bp32[(nbi * KG + p) * NR + j] = T.Cast(WORD, 0)
                elif col0 + NR <= n:
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
    return task


def _run_tasks_macro(sh: _Shape, pack_panel: Any, task: Any) -> Any:
    from tvm.script import tirx as T

    MP, NR, G, WORD, PAR, FLOAT = sh.MP, sh.NR, sh.G, sh.WORD, sh.PAR, sh.FLOAT

    @T.macro
    def run_tasks(Af, Bf, Cf, BA, M, k, n, NBC):
        KG: T.let[T.int64] = (k + G - 1) // G
        NBR: T.let[T.int64] = (n + NR - 1) // NR
        NCH: T.let[T.int64] = T.max((NBR + NBC - 1) // NBC, T.int64(1))   # (max: a divisor)
        MPN: T.let[T.int64] = (M + MP - 1) // MP
        # every A panel packed once, before the tasks (a task per panel and column chunk
        # would pack its panel once per chunk: 6-24 times on MiniLM's matmuls). Float32
        # panels would be plain copies of A's rows (one element per word): the tiles read A.
        if FLOAT:
            if PAR:
                for t in T.parallel(BA * MPN * NCH):
                    task(t, Af, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)
            else:
                for t in range(BA * MPN * NCH):
                    task(t, Af, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)
        elif PAR:
            ap32 = T.alloc_buffer((BA * MPN * MP * KG,), WORD)
            for pi in T.parallel(BA * MPN):
                pack_panel(pi, Af, ap32, M, MPN, k, KG)
            for t in T.parallel(BA * MPN * NCH):
                task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)
        else:
            ap32 = T.alloc_buffer((BA * MPN * MP * KG,), WORD)
            for pi in range(BA * MPN):
                pack_panel(pi, Af, ap32, M, MPN, k, KG)
            for t in range(BA * MPN * NCH):
                task(t, ap32, Bf, Cf, M, MPN, k, n, KG, NBR, NBC, NCH)
    return run_tasks


def _prim_func(sh: _Shape, run_tasks: Any, a_dtype: str, b_dtype: str, b_packed: bool) -> Any:
    from tvm.script import tirx as T

    NR, G, WORD, EXTRA, BT = sh.NR, sh.G, sh.WORD, sh.EXTRA, sh.BT

    def b_shape(bb: Any, k: Any, n: Any) -> tuple:     # an activation B: [BB, k, n] or B^T
        return (bb, n, k) if BT else (bb, k, n)

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
            B = T.match_buffer(b, b_shape(BB, k, n), b_dtype)
            C = T.match_buffer(c, (BA, M, n), WORD)
            Af = T.decl_buffer((BA * M * k,), a_dtype, data=A.data)
            Bf = T.decl_buffer((BB * k * n,), b_dtype, data=B.data)
            Cf = T.decl_buffer((BA * M * n,), WORD, data=C.data)
            run_tasks(Af, Bf, Cf, BA, M, k, n, nbc)

    return kernel
