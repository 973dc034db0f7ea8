"""The Relax rewrite that puts an ISA's LutMatMul kernels in place of the generic compute.

The converter (:func:`edgert.ops.lut_matmul.tvm.emit`) marks every generic LutMatMul PrimFunc
with :func:`primfunc_attrs`: ``edgert.op = "lutmatmul"``, its layout (``edgert.lut_layout``,
JSON), ``edgert.lut_table_bits``, which optional inputs the call has and which kernel the node
asks for. :func:`rewrite_lut_matmuls` finds those calls and, where the weight (and scales /
zero points) are constants, replaces each by an ISA's kernels (:class:`LutKernels`: x86 in
:mod:`edgert.ops.lut_matmul.tvm_x86`, aarch64 in :mod:`edgert.ops.lut_matmul.tvm_arm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.ops.lut_matmul.layout import LutLayout
from edgert.ops.lut_matmul.spec import half_exact
from edgert.ops.lut_matmul.tvm_tables import intermediate_shapes

OP_ATTR = "edgert.op"
OP_NAME = "lutmatmul"
LAYOUT_ATTR = "edgert.lut_layout"
TABLE_BITS_ATTR = "edgert.lut_table_bits"
INPUTS_ATTR = "edgert.lut_inputs"
"""Which optional inputs the call has: ``"a,w"`` plus ``",scales"`` and/or ``",zero_points"``."""
KERNEL_ATTR = "edgert.lut_kernel"
"""``"lut"`` (table lookup) or ``"dequant"`` (the node's ``dequant = 1``)."""


def primfunc_attrs(layout: LutLayout, table_bits: int, has_scales: bool,
                   has_zero_points: bool, dequant: bool = False) -> dict[str, Any]:
    """The attributes the converter puts on a generic LutMatMul PrimFunc."""
    inputs = "a,w" + (",scales" if has_scales else "") + (",zero_points" if has_zero_points
                                                           else "")
    return {OP_ATTR: OP_NAME, LAYOUT_ATTR: layout.to_json(), TABLE_BITS_ATTR: int(table_bits),
            INPUTS_ATTR: inputs, KERNEL_ATTR: "dequant" if dequant else "lut"}


@dataclass(frozen=True)
class LutKernels:
    """One ISA's LutMatMul kernels for :func:`rewrite_lut_matmuls`.

    Attributes:
        isa: kernel name tag (``x86``, ``arm``).
        table_kernel, lookup_kernel: the PrimFunc factories (signatures as in
            :mod:`edgert.ops.lut_matmul.tvm_x86`).
        operands: the class re-packing the constants (``w2``, ``scales``, ``zc``, ``has_zp``).
        accepts: whether a layout suits the kernels.
        dequant: the ``dequant = 1`` kernel for float32 activations, or None (such calls keep
            the generic compute): a module with ``dequant_kernel(layout, cores, name=...)``,
            ``accepts(layout)`` and ``operands(planes, scales, zero_points, layout)``, as
            :mod:`edgert.ops.lut_matmul.tvm_dequant`.
        variant: the lookup variant a call of ``(layout, rows)`` gets, as keyword arguments
            of ``lookup_kernel`` and ``operands`` (x86: ``{"vnni": True}``, the ``vpdpbusd``
            lookups on AVX-512 VNNI targets; ``{"zmm": True}``, the zmm lookups on AVX-512BW
            targets; ``{}``: the plain kernel); None: always the plain kernel.
        half_scales: ``lookup_kernel`` and ``operands`` take ``half_scales=True`` (float16
            group scales) for float activations whose scales are float16 numbers.
    """

    isa: str
    table_kernel: Callable[..., Any]
    lookup_kernel: Callable[..., Any]
    operands: type
    accepts: Callable[[LutLayout], bool]
    dequant: Any = None
    variant: Callable[[LutLayout, Any], dict[str, bool]] | None = None
    half_scales: bool = False


@dataclass(frozen=True)
class _MarkedCall:
    """What a generic LutMatMul PrimFunc's attributes say."""

    layout: LutLayout
    table_bits: int
    inputs: list[str]
    dequant: bool


def _marked_calls(mod: Any) -> dict[str, _MarkedCall]:
    """PrimFunc name -> :class:`_MarkedCall` for every generic LutMatMul of ``mod``."""
    from tvm import tirx

    specs = {}
    for gv, f in mod.functions_items():
        if (isinstance(f, tirx.PrimFunc) and f.attrs is not None
                and str(f.attrs.get(OP_ATTR, "")) == OP_NAME and LAYOUT_ATTR in f.attrs):
            specs[gv.name_hint] = _MarkedCall(
                LutLayout.from_json(str(f.attrs[LAYOUT_ATTR])), int(f.attrs[TABLE_BITS_ATTR]),
                str(f.attrs[INPUTS_ATTR]).split(","),
                str(f.attrs.get(KERNEL_ATTR, "lut")) == "dequant")
    return specs


def _const_value(expr: Any) -> np.ndarray | None:
    import tvm

    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def rewrite_lut_matmuls(mod: Any, tvm_target: Any, kernels: LutKernels) -> Any:
    """Replace the generic LutMatMul calls of a Relax module by ``kernels``.

    Every ``call_tir`` of a PrimFunc marked ``edgert.op = "lutmatmul"`` whose weight (and
    scales / zero points) are constants and whose layout ``kernels.accepts`` becomes: A
    reshaped to ``[R, K]``, the table kernel (three outputs), the lookup kernel on the
    re-packed constants, a reshape back. A ``dequant = 1`` call with float32 activations
    becomes ``kernels.dequant``'s kernel on its re-packed codes, scales and zero terms instead
    (where there is one and it accepts the layout). Other calls are left alone.
    """
    from edgert.compiler.relax_rewrite import num_cores, rewrite_call_tirs

    specs = _marked_calls(mod)
    if not specs:
        return mod
    rewriter = _CallRewriter(kernels, num_cores(tvm_target), specs)
    return rewrite_call_tirs(mod, specs, rewriter.rewrite)


class _CallRewriter:
    """Rewrites one marked ``call_tir`` at a time (the callback of ``rewrite_call_tirs``)."""

    def __init__(self, kernels: LutKernels, cores: int, specs: dict[str, _MarkedCall]) -> None:
        self.kernels, self.cores, self.specs = kernels, cores, specs

    def kernel(self, rw: Any, kind: str, layout: LutLayout, float_acts: bool, tb: int,
               has_zp: bool, **variant: bool) -> Any:
        """The global var of kernel ``kind`` (``tables``, ``matmul``, ``dequant``) for these
        parameters, added to the module once."""
        key = (kind, layout, float_acts, tb, has_zp, tuple(sorted(variant)))
        if key not in rw.kernels:
            tag = (f"{'f32' if float_acts else 'i8'}_b{layout.bits}_k{layout.K}_n{layout.N}"
                   f"_g{layout.group_size}_t{tb}{'_zp' if has_zp else ''}"
                   + "".join(f"_{v}" for v in sorted(variant)))
            name = f"lut_{kind}_{self.kernels.isa}_{tag}"
            if kind == "tables":
                func = self.kernels.table_kernel(layout, float_acts, tb, self.cores, name)
            elif kind == "dequant":
                func = self.kernels.dequant.dequant_kernel(layout, self.cores, name=name)
            else:
                func = self.kernels.lookup_kernel(layout, float_acts, tb, has_zp, self.cores,
                                                  name, **variant)
            rw.add_kernel(key, func, name)
        return rw.kernels[key]

    def usable(self, spec: _MarkedCall) -> bool:
        if spec.dequant:
            return self.kernels.dequant is not None and self.kernels.dequant.accepts(spec.layout)
        return self.kernels.accepts(spec.layout)

    def rewrite(self, rw: Any, call: Any) -> Any | None:
        """The replacement of ``call``, or None to keep it."""
        from tvm import relax

        spec = self.specs[call.args[0].name_hint]
        args = call.args[1]
        if (not isinstance(args, relax.Tuple) or len(call.args) > 2
                or len(args.fields) != len(spec.inputs) or not self.usable(spec)):
            return None
        named = dict(zip(spec.inputs, args.fields))
        a = named["a"]
        w = _const_value(named["w"])
        scales = _const_value(named["scales"]) if "scales" in named else None
        zps = _const_value(named["zero_points"]) if "zero_points" in named else None
        if (w is None or ("scales" in named and scales is None)
                or ("zero_points" in named and zps is None)):
            return None
        a_ty, out_ty = a.ty, call.ty
        if not (isinstance(a_ty, relax.TensorType) and isinstance(a_ty.shape, relax.ShapeExpr)
                and isinstance(out_ty, relax.TensorType)):
            return None
        float_acts = str(a_ty.dtype) == "float32"
        if (not float_acts and str(a_ty.dtype) != "int8") or (spec.dequant and not float_acts):
            return None
        shape = list(a_ty.shape.values)
        rows = shape[0]
        for d in shape[1:-1]:
            rows = rows * d
        bb = rw.builder_
        a2 = a if len(shape) == 2 else bb.emit(relax.op.memory.view(a, [rows, spec.layout.K]))
        if spec.dequant:
            out = self.emit_dequant(rw, spec, a2, rows, w, scales, zps)
        else:
            out = self.emit_lookup(rw, spec, a2, rows, float_acts, w, scales, zps)
        return out if len(shape) == 2 else relax.op.memory.view(out, out_ty.shape)

    def emit_dequant(self, rw: Any, spec: _MarkedCall, a2: Any, rows: Any, w: np.ndarray,
                     scales: np.ndarray, zps: np.ndarray | None) -> Any:
        """The dequantize kernel on ``a2`` [rows, K] and its re-packed constants."""
        from tvm import relax

        layout = spec.layout
        consts = self.kernels.dequant.operands(w, scales, zps, layout)
        return rw.builder_.emit(relax.call_tir(
            self.kernel(rw, "dequant", layout, True, spec.table_bits, zps is not None),
            [a2, *(relax.const(c) for c in consts)],
            relax.TensorType([rows, layout.N], "float32")))

    def emit_lookup(self, rw: Any, spec: _MarkedCall, a2: Any, rows: Any, float_acts: bool,
                    w: np.ndarray, scales: np.ndarray | None, zps: np.ndarray | None) -> Any:
        """The table kernel on ``a2`` [rows, K], then the lookup kernel on its outputs and
        the re-packed constants."""
        from tvm import relax

        bb, layout, tb = rw.builder_, spec.layout, spec.table_bits
        choose = self.kernels.variant
        variant = choose(layout, rows) if choose is not None else {}
        if self.kernels.half_scales and float_acts and half_exact(scales):
            variant = {**variant, "half_scales": True}        # float16 group scales
        ops = self.kernels.operands(layout, w, scales, zps, float_acts, **variant)
        outs = intermediate_shapes(layout, rows, float_acts, tb)
        tabs = bb.emit(relax.call_tir(
            self.kernel(rw, "tables", layout, float_acts, tb, False), [a2, a2],  # see table_kernel
            [relax.TensorType(list(s), d) for s, d in outs]))
        parts = [bb.emit(relax.TupleGetItem(tabs, i))       # (QT, TS or SH, RS)
                 for i in ((2, 0, 1) if float_acts else (0, 1, 2))]
        consts = [relax.const(ops.w2)]
        if float_acts:
            consts.append(relax.const(ops.scales))
        consts.append(relax.const(ops.zc))
        return bb.emit(relax.call_tir(
            self.kernel(rw, "matmul", layout, float_acts, tb, ops.has_zp, **variant),
            [*parts, *consts],
            relax.TensorType([rows, layout.N], "float32" if float_acts else "int32")))
