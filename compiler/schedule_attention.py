"""A fused float32 attention kernel for CPUs: ``softmax(Q Kᵀ · scale + mask) V`` per head in
one kernel, the scores never written to memory.

TVM imports the attention of an ONNX transformer as four or five Relax calls (``matmul``, a
scale by ``divide`` or ``multiply``, an optional additive mask, ``softmax``, ``matmul``), with
``permute_dims`` around them that move the heads next to the batch. Run one by one they write
and re-read the ``[B, H, M, N]`` scores three times and copy Q, K, V and the output once each.
:func:`fused_attentions` replaces the chain by one call of :func:`attention_kernel`, which
reads Q, K and V in the layout they have before the head transposes (``[B, S, H, D]``, the
projection's output split into heads: ``bshd``) or after (``[B, H, S, D]``: ``bhsd``; K also
already transposed, ``[B, H, D, S]``: ``bhds``) and writes the output as ``[B, M, H, D]`` when
the graph transposes it back that way (the merge of the heads before the output projection),
so those copies vanish too.

The kernel, for L float32 lanes (8 on AVX2, 16 on AVX-512, 4 on NEON; fewer when the head dim
D is not a multiple), head dims up to 128 that are multiples of L:

- one parallel loop over tasks = (batch, head, block of :data:`ROWS` query rows);
- a task packs its head's K as ``Kᵀ`` ``[D, NP]`` (NP: the N keys padded to a multiple of
  ``2 L``, zeros past N) into a buffer of its own, then computes the ``ROWS x NP`` scores in
  register tiles of 4 rows x ``2 L`` keys (the float32 matmul's tile form: a broadcast of Q,
  two vectors of Kᵀ, fused multiply-adds over D) into a second buffer (``ROWS * NP`` floats:
  32 KiB at N = 512, in L1/L2);
- each score row gets ``scale`` and the mask row added, its max, ``exp(x - max)`` with the
  vector form of :func:`edgert.compiler.schedule_cpu.exp_expr` and its sum (the row kernels of
  :mod:`edgert.compiler.schedule_rows`: L partial results, a scalar tail past ``N mod L``);
- the output rows: tiles of up to 4 rows x up to 4 vectors of D, ``Σ_j p_j V_j`` over the N
  keys, times ``1 / sum`` at the store.

The full row of scores is kept (no online softmax, no blocking over keys): attentions over
more than :data:`MAX_FUSED_KEYS` static keys stay unfused (at 2048 keys the fused kernel took
1.3x the time of the unfused matmul, softmax and matmul kernels). Results differ from the unfused graph by float rounding only (sums in another order,
``x * (1 / c)`` for ``x / c``): within 1e-5 relative of numpy's float64 attention in
``tests/test_schedule_attention.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgert.compiler.relax_rewrite import (bound_call, num_cores, permute_axes, rewrite_calls,
                                           same_dims, static_int)
from edgert.compiler.schedule_cpu import PARALLEL_MIN_WORK, exp_expr
from edgert.compiler.schedule_rows import NEG_LARGE

ROWS = 24
"""Query rows per task (its scores: ``ROWS x NP`` floats)."""
MR = 6
"""Rows of the score tile (with 2 vectors of keys: 12 accumulators, 15 vector registers)."""
MAX_HEAD_DIM = 128
MAX_FUSED_KEYS = 1024
LAYOUTS = ("bshd", "bhsd", "bhds")


@dataclass(frozen=True)
class AttentionSpec:
    """What one kernel bakes in: the head dim ``d``, the layouts of Q, K, V and the output
    (``bshd``: ``[B, S, H, D]``; ``bhsd``: ``[B, H, S, D]``; K may also be ``bhds``:
    ``[B, H, D, S]``), the mask (None, or whether it varies over batch, heads and query rows:
    a float32 ``[MB, MH, MM, N]`` added to the scores), the scale of the scores, the lanes and
    whether tasks run in parallel."""

    d: int
    q: str = "bhsd"
    k: str = "bhsd"
    v: str = "bhsd"
    o: str = "bhsd"
    mask: tuple[bool, bool, bool] | None = None
    scale: float = 1.0
    lanes: int = 8
    parallel: bool = True


def _shape(layout: str, b: Any, h: Any, s: Any, d: Any) -> tuple:
    return {"bshd": (b, s, h, d), "bhsd": (b, h, s, d), "bhds": (b, h, d, s)}[layout]


def _offset(layout: str, b: Any, h: Any, s: Any, d: Any, H: Any, S: Any, D: int) -> Any:
    """Flat offset of element (batch b, head h, position s, channel d)."""
    if layout == "bshd":
        return ((b * S + s) * H + h) * D + d
    if layout == "bhsd":
        return ((b * H + h) * S + s) * D + d
    return ((b * H + h) * D + d) * S + s


def _s_stride(layout: str, H: Any, D: int) -> Any:
    """Distance between positions s and s + 1 (same head and channel)."""
    return {"bshd": H * D, "bhsd": D, "bhds": 1}[layout]


@dataclass(frozen=True)
class _Tiles:
    """The constants one kernel bakes into its TVMScript (closure values)."""

    D: int
    L: int
    NV: int           # key vectors of a score tile
    NR: int           # keys of a score tile (NV * L): the block of packed Kᵀ
    DV: int           # vectors per output row
    CV: int           # vectors of an output tile
    MR2: int          # rows of an output tile (<= 10 accumulators)


def _tiles(spec: AttentionSpec) -> _Tiles:
    D, L = spec.d, spec.lanes
    if D % L or D > MAX_HEAD_DIM or spec.k not in LAYOUTS:
        raise ValueError(f"head dim {D} with {L} lanes (a multiple of the lanes, at most "
                         f"{MAX_HEAD_DIM}) or layout {spec.k} not supported")
    DV = D // L
    CV = max(c for c in (1, 2, 3, 4) if DV % c == 0)
    return _Tiles(D, L, 2, 2 * L, DV, CV, min(4, 10 // CV))


def _vec(L: int) -> tuple:
    """``bcast(x)``, ``ramp(base, stride=1)`` of L lanes, and float32 zero."""
    from tvm import tirx

    return (lambda x: tirx.Broadcast(x, L)), (lambda base, stride=1: tirx.Ramp(base, stride, L)), \
        tirx.const(0, "float32")


def _pack_macro(spec: AttentionSpec, t: _Tiles) -> Any:
    from tvm.script import tirx as T

    D, L, NV, NR, LK = t.D, t.L, t.NV, t.NR, spec.k
    _, ramp, zero = _vec(L)

    @T.macro
    def pack_k(Kf, kt, bh, H, N, NB):
        # Kᵀ of head bh = b * H + h in blocks of NR keys: kt[((bh * NB + jb) * D + d) * NR
        # + jj] = K[b, h, jb * NR + jj, d], zero past N (a block's D rows are D cache lines)
        b: T.let[T.int64] = bh // H
        h: T.let[T.int64] = bh - b * H
        for jb in range(N // NR):
            for d in range(D):
                for v in T.unroll(NV):
                    kt[ramp(((bh * NB + jb) * D + d) * NR + v * L)] = Kf[ramp(
                        _offset(LK, b, h, jb * NR + v * L, d, H, N, D), _s_stride(LK, H, D))]
        for j in range(N // NR * NR, NB * NR):
            for d in range(D):
                kt[((bh * NB + j // NR) * D + d) * NR + j % NR] = T.if_then_else(
                    j < N, Kf[_offset(LK, b, h, T.min(j, N - 1), d, H, N, D)], zero)
    return pack_k


def _score_macro(spec: AttentionSpec, t: _Tiles) -> Any:
    from tvm.script import tirx as T

    D, L, NV, NR, LQ = t.D, t.L, t.NV, t.NR, spec.q
    bcast, ramp, zero = _vec(L)

    @T.macro
    def score_tile(R, Qf, kt, s, b, h, H, M, i, r0, jb, k0, NP):
        # scores of rows [r0, r0 + R) (query rows i + r0 ...) and keys [jb * NR, + NR) (their
        # packed block at k0 in kt)
        acc = T.alloc_buffer((R * NR,), "float32")
        for r in T.unroll(R):
            for v in T.unroll(NV):
                acc[ramp((r * NV + v) * L)] = bcast(zero)
        for d in range(D):
            for r in T.unroll(R):
                for v in T.unroll(NV):
                    acc[ramp((r * NV + v) * L)] = acc[ramp((r * NV + v) * L)] \
                        + bcast(Qf[_offset(LQ, b, h, i + r0 + r, d, H, M, D)]) \
                        * kt[ramp(k0 + d * NR + v * L)]
        for r in T.unroll(R):
            for v in T.unroll(NV):
                s[ramp((r0 + r) * NP + jb * NR + v * L)] = acc[ramp((r * NV + v) * L)]
    return score_tile


def _softmax_macro(spec: AttentionSpec, t: _Tiles) -> Any:
    from tvm.script import tirx as T

    L, SC, HAS_MASK = t.L, float(spec.scale), spec.mask is not None
    bcast, ramp, zero = _vec(L)

    @T.macro
    def softmax_row(s, Mf, inv, r, mbase, N, NP):
        # row r of s: x = s * scale (+ mask), then exp(x - max), 1 / sum into inv[r]
        base: T.let[T.int64] = r * NP
        nv: T.let[T.int64] = N // L * L
        acc = T.alloc_buffer((L,), "float32")
        st = T.alloc_buffer((2,), "float32")          # [max, sum]
        acc[ramp(0)] = bcast(T.float32(NEG_LARGE))
        for j in range(N // L):
            if HAS_MASK:
                s[ramp(base + j * L)] = s[ramp(base + j * L)] * bcast(T.float32(SC)) \
                    + Mf[ramp(mbase + j * L)]
            else:
                s[ramp(base + j * L)] = s[ramp(base + j * L)] * bcast(T.float32(SC))
            acc[ramp(0)] = T.max(acc[ramp(0)], s[ramp(base + j * L)])
        st[0] = acc[0]
        for u in T.unroll(L - 1):
            st[0] = T.max(st[0], acc[u + 1])
        for j in range(nv, N):
            if HAS_MASK:
                s[base + j] = s[base + j] * T.float32(SC) + Mf[mbase + j]
            else:
                s[base + j] = s[base + j] * T.float32(SC)
            st[0] = T.max(st[0], s[base + j])
        acc[ramp(0)] = bcast(zero)
        for j in range(N // L):
            s[ramp(base + j * L)] = exp_expr(s[ramp(base + j * L)] - bcast(st[0]))
            acc[ramp(0)] = acc[ramp(0)] + s[ramp(base + j * L)]
        st[1] = acc[0]
        for u in T.unroll(L - 1):
            st[1] = st[1] + acc[u + 1]
        for j in range(nv, N):
            s[base + j] = exp_expr(s[base + j] - st[0])
            st[1] = st[1] + s[base + j]
        inv[r] = T.float32(1) / st[1]
    return softmax_row


def _out_macro(spec: AttentionSpec, t: _Tiles) -> Any:
    from tvm.script import tirx as T

    D, L, CV, LV, LO = t.D, t.L, t.CV, spec.v, spec.o
    bcast, ramp, zero = _vec(L)

    @T.macro
    def out_tile(R, Vf, Of, s, inv, b, h, H, M, N, i, r0, c0, NP):
        # output rows [r0, r0 + R), channels [c0, c0 + CV * L): sum_j p[r, j] V[j, c]
        acc = T.alloc_buffer((R * CV * L,), "float32")
        for r in T.unroll(R):
            for v in T.unroll(CV):
                acc[ramp((r * CV + v) * L)] = bcast(zero)
        for j in range(N):
            for r in T.unroll(R):
                for v in T.unroll(CV):
                    acc[ramp((r * CV + v) * L)] = acc[ramp((r * CV + v) * L)] \
                        + bcast(s[(r0 + r) * NP + j]) \
                        * Vf[ramp(_offset(LV, b, h, j, c0 + v * L, H, N, D))]
        for r in T.unroll(R):
            for v in T.unroll(CV):
                Of[ramp(_offset(LO, b, h, i + r0 + r, c0 + v * L, H, M, D))] = \
                    acc[ramp((r * CV + v) * L)] * bcast(inv[r0 + r])
    return out_tile


def _body_macro(spec: AttentionSpec, t: _Tiles) -> Any:
    from tvm.script import tirx as T

    D, NR, DV, CV, MR2, L = t.D, t.NR, t.DV, t.CV, t.MR2, t.L
    MASK_B, MASK_H, MASK_M = spec.mask or (False, False, False)
    loop = T.parallel if spec.parallel else T.serial
    pack_k, score_tile = _pack_macro(spec, t), _score_macro(spec, t)
    softmax_row, out_tile = _softmax_macro(spec, t), _out_macro(spec, t)

    @T.macro
    def body(Qf, Kf, Vf, Mf, Of, B, H, M, N, MH, MM):
        NRB: T.let[T.int64] = (M + ROWS - 1) // ROWS
        NB: T.let[T.int64] = (N + NR - 1) // NR
        NP: T.let[T.int64] = NB * NR
        kt = T.alloc_buffer((B * H * NB * D * NR,), "float32")
        for bh in loop(B * H):
            pack_k(Kf, kt, bh, H, N, NB)
        for t in loop(B * H * NRB):
            bh: T.let[T.int64] = t // NRB
            i: T.let[T.int64] = (t - bh * NRB) * ROWS          # first query row of the task
            b: T.let[T.int64] = bh // H
            h: T.let[T.int64] = bh - b * H
            rows: T.let[T.int64] = T.min(T.int64(ROWS), M - i)
            s = T.alloc_buffer((ROWS * NP,), "float32")
            inv = T.alloc_buffer((ROWS,), "float32")
            for jb in range(NB):
                for mi in range(rows // MR):
                    score_tile(MR, Qf, kt, s, b, h, H, M, i, mi * MR, jb,
                               (bh * NB + jb) * (D * NR), NP)
                if rows >= MR and rows % MR != 0:     # the last MR rows again (overlapping)
                    score_tile(MR, Qf, kt, s, b, h, H, M, i, rows - MR, jb,
                               (bh * NB + jb) * (D * NR), NP)
                elif rows < MR:
                    for r in range(rows):
                        score_tile(1, Qf, kt, s, b, h, H, M, i, r, jb,
                                   (bh * NB + jb) * (D * NR), NP)
            for r in range(rows):
                softmax_row(s, Mf, inv, r,
                            (((b if MASK_B else 0) * MH + (h if MASK_H else 0)) * MM
                             + (i + r if MASK_M else 0)) * N, N, NP)
            for cb in range(DV // CV):
                for mi in range(rows // MR2):
                    out_tile(MR2, Vf, Of, s, inv, b, h, H, M, N, i, mi * MR2, cb * CV * L, NP)
                if rows >= MR2 and rows % MR2 != 0:   # the last MR2 rows again (overlapping)
                    out_tile(MR2, Vf, Of, s, inv, b, h, H, M, N, i, rows - MR2, cb * CV * L,
                             NP)
                elif rows < MR2:
                    for r in range(rows):
                        out_tile(1, Vf, Of, s, inv, b, h, H, M, N, i, r, cb * CV * L, NP)
    return body


@lru_cache(maxsize=None)
def attention_kernel(spec: AttentionSpec) -> Any:
    """The fused kernel as a TIR PrimFunc ``(q, k, v[, mask], o)`` for ``spec``; B, H, M (query
    rows) and N (keys) are symbolic, bound from the buffers' shapes."""
    from tvm.script import tirx as T

    t = _tiles(spec)
    D, LQ, LK, LV, LO = t.D, spec.q, spec.k, spec.v, spec.o
    body = _body_macro(spec, t)

    if spec.mask is not None:
        @T.prim_func
        def kernel(q: T.handle, k: T.handle, v: T.handle, mask: T.handle, o: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            B = T.int64()
            H = T.int64()
            M = T.int64()
            N = T.int64()
            MB = T.int64()
            MH = T.int64()
            MM = T.int64()
            Q = T.match_buffer(q, _shape(LQ, B, H, M, D), "float32")
            K = T.match_buffer(k, _shape(LK, B, H, N, D), "float32")
            V = T.match_buffer(v, _shape(LV, B, H, N, D), "float32")
            Mk = T.match_buffer(mask, (MB, MH, MM, N), "float32")
            O = T.match_buffer(o, _shape(LO, B, H, M, D), "float32")
            Qf = T.decl_buffer((B * H * M * D,), "float32", data=Q.data)
            Kf = T.decl_buffer((B * H * N * D,), "float32", data=K.data)
            Vf = T.decl_buffer((B * H * N * D,), "float32", data=V.data)
            Mf = T.decl_buffer((MB * MH * MM * N,), "float32", data=Mk.data)
            Of = T.decl_buffer((B * H * M * D,), "float32", data=O.data)
            body(Qf, Kf, Vf, Mf, Of, B, H, M, N, MH, MM)
    else:
        @T.prim_func
        def kernel(q: T.handle, k: T.handle, v: T.handle, o: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            B = T.int64()
            H = T.int64()
            M = T.int64()
            N = T.int64()
            Q = T.match_buffer(q, _shape(LQ, B, H, M, D), "float32")
            K = T.match_buffer(k, _shape(LK, B, H, N, D), "float32")
            V = T.match_buffer(v, _shape(LV, B, H, N, D), "float32")
            O = T.match_buffer(o, _shape(LO, B, H, M, D), "float32")
            Qf = T.decl_buffer((B * H * M * D,), "float32", data=Q.data)
            Kf = T.decl_buffer((B * H * N * D,), "float32", data=K.data)
            Vf = T.decl_buffer((B * H * N * D,), "float32", data=V.data)
            Of = T.decl_buffer((B * H * M * D,), "float32", data=O.data)
            body(Qf, Kf, Vf, Qf, Of, B, H, M, N, T.int64(1), T.int64(1))

    return kernel


# ---------------------------------------------------------------- the Relax rewrite

def _var_uses(mod: Any) -> tuple[dict, list]:
    """How often each Relax Var of ``mod``'s Relax functions is used (keyed by the Var), and
    the ``relax.matmul`` calls whose only use is ``permute_dims(., [0, 2, 1, 3])``."""
    import tvm
    from tvm import relax

    counts: dict = {}
    values: dict = {}

    @relax.expr_functor.visitor
    class Uses(relax.PyExprVisitor):
        def visit_var_(self, var: Any) -> None:
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var: Any) -> None:
            counts[var] = counts.get(var, 0) + 1

        def visit_var_binding_(self, binding: Any) -> None:
            values[binding.var] = binding.value
            self.visit_expr(binding.value)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Uses().visit_expr(func)
    permute, matmul = tvm.ir.Op.get("relax.permute_dims"), tvm.ir.Op.get("relax.matmul")
    merge = []
    for value in values.values():
        if isinstance(value, relax.Call) and value.op.same_as(permute) \
                and permute_axes(value, 4) == [0, 2, 1, 3] and counts.get(value.args[0], 0) == 1:
            inner = values.get(value.args[0])
            if isinstance(inner, relax.Call) and inner.op.same_as(matmul):
                merge.append(inner)
    return counts, merge


def _shape_of(expr: Any) -> list | None:
    """The static-rank shape of a float32 tensor expression, else None."""
    from tvm import relax

    ty = expr.ty
    if not (isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr)
            and str(ty.dtype) == "float32"):
        return None
    return list(ty.shape.values)


def _scalar_const(expr: Any) -> float | None:
    """The value of a float32 constant with one element, else None."""
    import tvm

    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    value = expr.value.numpy()
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.name == "float32" \
        else None


def _operand(rw: Any, x: Any, perm_bshd: list[int], perm_other: list[int] | None,
             other: str) -> tuple | None:
    """(tensor, its layout, its shape, the logical ``[.., S, D]`` dims) of the attention
    operand ``x``, read through ``permute_dims(src, perm_bshd)`` (``src`` in ``bshd``) or
    ``permute_dims(src, perm_other)`` (``src`` in ``bhsd``); else ``x`` itself in layout
    ``other`` (for K, ``x`` is Kᵀ ``[.., D, N]`` and ``other`` is ``bhds``)."""
    shape = _shape_of(x)
    if shape is None or len(shape) not in (3, 4):
        return None
    p = bound_call(rw, x, "relax.permute_dims")
    src = p.args[0] if p is not None else None
    src_shape = _shape_of(src) if src is not None else None
    logical = [*shape[:-2], shape[-1], shape[-2]] if other == "bhds" else shape
    if src_shape is not None and len(src_shape) == 4 and permute_axes(p, 4) == perm_bshd:
        return src, "bshd", src_shape, logical
    if perm_other is not None and src_shape is not None \
            and len(src_shape) == len(shape) == 4 and permute_axes(p, 4) == perm_other:
        return src, "bhsd", src_shape, logical
    return x, other, shape, logical


def _four_d(rw: Any, x: Any, shape: list) -> Any:
    """``x`` as a 4-D tensor (a view ``[1, ...]`` of a 3-D one)."""
    import tvm
    from tvm import relax

    if len(shape) == 4:
        return x
    return rw.builder_.emit(relax.op.memory.view(x, [tvm.tirx.IntImm("int64", 1), *shape]))


def _scores(rw: Any, x: Any, once: Any) -> tuple | None:
    """(the ``matmul(q, kt)`` call, the scale) when ``x`` is that matmul, optionally times or
    divided by scalar constants, every step used ``once``; else None."""
    scale = 1.0
    for op in ("relax.multiply", "relax.divide"):
        sc = bound_call(rw, x, op)
        if sc is not None and once(x):
            a, b = sc.args
            c_a, c_b = _scalar_const(a), _scalar_const(b)
            if c_b is not None and c_b != 0:
                scale, x = scale * (c_b if op == "relax.multiply" else 1.0 / c_b), a
            elif c_a is not None and op == "relax.multiply":
                scale, x = scale * c_a, b
    qk = bound_call(rw, x, "relax.matmul")
    return (qk, scale) if qk is not None and once(x) else None


def _chain(rw: Any, p_var: Any, once: Any) -> tuple | None:
    """(``matmul(q, kt)``, scale, mask or None) of the probabilities ``p_var`` =
    ``softmax(scores [+ mask], axis=-1)``, else None."""
    soft = bound_call(rw, p_var, "relax.nn.softmax")
    if soft is None or not once(p_var):
        return None
    x = soft.args[0]
    x_shape = _shape_of(x)
    if x_shape is None or int(soft.attrs.axis) not in (-1, len(x_shape) - 1):
        return None
    found = _scores(rw, x, once)
    if found is not None:
        return (*found, None)
    add = bound_call(rw, x, "relax.add")
    if add is None or not once(x):
        return None
    for xs, mask in (add.args, add.args[::-1]):
        found = _scores(rw, xs, once)
        if found is not None:
            return (*found, mask)
    return None


def _mask_operand(rw: Any, mask: Any, logical: list, n_dim: Any) -> tuple | None:
    """(the mask as a 4-D ``[MB, MH, MM, N]`` tensor, whether it varies over batch, heads and
    query rows) for scores of ``logical[:-1] + [n_dim]``, or None when it does not broadcast
    that way (a float32 mask whose last dim is N)."""
    import tvm
    from tvm import relax

    ms = _shape_of(mask)
    if ms is None or not ms or len(ms) > len(logical) or not same_dims(ms[-1:], [n_dim]):
        return None
    one = tvm.tirx.IntImm("int64", 1)
    full = [one] * (len(logical) - len(ms)) + ms
    varies = []
    for got, want in zip(full[:-1], logical[:-1]):
        if static_int(got) == 1 and static_int(want) != 1:
            varies.append(False)
        elif same_dims([got], [want]):
            varies.append(True)
        else:
            return None
    if len(full) == 3:
        full, varies = [one, *full], [False, *varies]
    if len(ms) != 4:
        mask = rw.builder_.emit(relax.op.memory.view(mask, full))
    return mask, tuple(varies)


def _lanes_for(d: int, lanes: int) -> int | None:
    """Vector lanes for head dim ``d``: the target's, else 8 or 4 when they divide it."""
    return next((n for n in (lanes, 8, 4) if n <= lanes and d % n == 0), None)


def fused_attentions(mod: Any, tvm_target: Any, lanes: int) -> Any:
    """Replace each float32 attention of a Relax module, ``matmul(softmax(matmul(q, kt) [* or
    / a scalar constant] [+ mask], axis=-1), v)`` whose intermediates have no other use, by
    one call of :func:`attention_kernel` (head dims up to :data:`MAX_HEAD_DIM`, a multiple of 4;
    ``lanes``: the target's float32 lanes). Transposes of the heads around it are read through:
    ``permute_dims(x, [0, 2, 1, 3])`` of Q, V (``bshd``), ``[0, 2, 3, 1]`` of K (``bshd``),
    ``[0, 1, 3, 2]`` of K (``bhsd``), and the output is written as ``[B, M, H, D]`` when its only
    use is ``permute_dims(., [0, 2, 1, 3])``. Run before the float32 matmul rewrite."""
    import tvm
    from tvm import relax

    matmul = tvm.ir.Op.get("relax.matmul")
    permute = tvm.ir.Op.get("relax.permute_dims")
    uses, merge = _var_uses(mod)
    cores = num_cores(tvm_target)
    outputs: list = []            # kernel outputs written [B, M, H, D]

    def once(var: Any) -> bool:
        return isinstance(var, relax.Var) and uses.get(var, 0) == 1

    def rewrite(rw: Any, call: Any) -> Any | None:
        if call.op.same_as(permute):             # the merge of heads after a bshd output
            inner = bound_call(rw, call.args[0], "relax.permute_dims")
            if inner is not None and permute_axes(call, 4) == [0, 2, 1, 3]:
                return next((o for o in outputs if inner.args[0].same_as(o)), None)
            return None
        found = _chain(rw, call.args[0], once)
        if found is None:
            return None
        qk, scale, mask = found
        ops = (_operand(rw, qk.args[0], [0, 2, 1, 3], None, "bhsd"),
               _operand(rw, qk.args[1], [0, 2, 3, 1], [0, 1, 3, 2], "bhds"),
               _operand(rw, call.args[1], [0, 2, 1, 3], None, "bhsd"))
        if any(o is None for o in ops) or len({len(o[3]) for o in ops}) != 1:
            return None
        qs, ks, vs = (o[3] for o in ops)
        d = static_int(qs[-1])
        if d is None or d > MAX_HEAD_DIM or _lanes_for(d, lanes) is None \
                or not same_dims([qs[-1], vs[-1], vs[-2]], [ks[-1], qs[-1], ks[-2]]) \
                or not same_dims(qs[:-2], ks[:-2]) or not same_dims(qs[:-2], vs[:-2]):
            return None
        one = tvm.tirx.IntImm("int64", 1)
        logical = [*qs[:-1], ks[-2]] if len(qs) == 4 else [one, *qs[:-1], ks[-2]]
        bsz, heads, m_dim, n_dim = logical           # the scores' [B, H, M, N]
        flags = None
        if mask is not None:
            found_mask = _mask_operand(rw, mask, [*qs[:-1], ks[-2]], n_dim)
            if found_mask is None:
                return None
            mask, flags = found_mask
        out_layout = "bshd" if len(qs) == 4 and any(call.same_as(c) for c in merge) \
            else "bhsd"
        work = [static_int(x) for x in logical]
        if work[3] is not None and work[3] > MAX_FUSED_KEYS:
            return None
        par = cores > 1 and (None in work or work[0] * work[1] * work[2] * work[3] * d
                             >= PARALLEL_MIN_WORK)
        spec = AttentionSpec(d, ops[0][1], ops[1][1], ops[2][1], out_layout, flags,
                             float(scale), _lanes_for(d, lanes), par)
        if spec not in rw.kernels:
            name = f"attention_d{d}_{spec.q}_{spec.k}_{spec.v}_{out_layout}_{len(rw.kernels)}"
            rw.add_kernel(spec, attention_kernel(spec).with_attr("global_symbol", name), name)
        o_shape = [bsz, m_dim, heads, d] if out_layout == "bshd" else [bsz, heads, m_dim, d]
        args = [_four_d(rw, o[0], o[2]) for o in ops] + ([] if mask is None else [mask])
        out = rw.builder_.emit(relax.call_tir(rw.kernels[spec], args,
                                              relax.TensorType(o_shape, "float32")))
        if out_layout == "bshd":        # the permute after it becomes `out` itself
            outputs.append(out)
            return relax.op.permute_dims(out, [0, 2, 1, 3])
        return relax.op.memory.view(out, call.ty.shape)

    def match(call: Any) -> bool:
        return call.op.same_as(matmul) or (call.op.same_as(permute) and bool(outputs))

    return rewrite_calls(mod, match, rewrite)
