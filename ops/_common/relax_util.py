"""Helpers for the op folders' ``tvm.py``: the Relax ONNX-frontend converter base class.

TVM's ONNX frontend calls ``Converter._impl_v1(bb, inputs, attr, params)`` for each node of an
edgert op (``compiler/lower_int.py`` puts every registered op's converter in its map). Imports
TVM; only the ``tvm.py`` modules (themselves imported on demand) import this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter


def dtype_name(elem_type: int) -> str:
    """numpy dtype name of an ONNX TensorProto element type (e.g. 3 -> ``"int8"``)."""
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(int(elem_type)).name


def attrs_of(attr: dict[str, Any]) -> dict[str, Any]:
    """The node's ONNX attributes (the frontend's ``attr`` less its ``tvm_custom`` entry)."""
    return {k: v for k, v in attr.items() if k != "tvm_custom"}


def node_name(attr: dict[str, Any]) -> str:
    """The node's name for error messages (``"?"`` when it has none)."""
    return attr.get("tvm_custom", {}).get("name") or "?"


def as_vector(bb: Any, v: Any) -> Any:
    """A scalar Relax expression as a [1] tensor (a new constant when ``v`` is one)."""
    if isinstance(v, tvm.ir.GenericConst):
        return relax.const(v.value.numpy().reshape(1))
    return bb.normalize(relax.op.reshape(v, [1]))


class EdgertConverter(OnnxOpConverter):
    """``call_tir`` of ``op.te_compute(*prepare(inputs), **op.node_kwargs(attrs), **tables)``.

    Subclasses set ``op`` (their folder's ``OP``) and may override :meth:`prepare` (the Relax
    arguments) and :meth:`tables` (constant tables the compute takes as keyword arguments).
    The PrimFunc is named after the op's folder.
    """

    op: Any = None

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: D102 (the frontend's entry point)
        args = [bb.normalize(x) for x in inputs if x is not None]
        kwargs = cls.op.node_kwargs(attrs_of(attr))
        return bb.emit_te(cls.op.te_compute, *cls.prepare(bb, args), **kwargs,
                          **cls.tables(args, kwargs), primfunc_name_hint=cls.op.folder)

    @classmethod
    def prepare(cls, bb: Any, args: list) -> list:
        """The Relax arguments of the compute (default: the node's present inputs)."""
        return args

    @classmethod
    def tables(cls, args: list, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Constant lookup tables the TE compute takes as keyword arguments (default: none)."""
        return {}


def optional_inputs(bb: Any, inputs: list[Any], required: int,
                    optional: int) -> tuple[list[Any], list[Any]]:
    """A node's inputs, normalized, as (the ``required`` first ones, the ``optional`` ones after
    them with None where absent: an absent input may sit before a given one)."""
    given = [None if x is None else bb.normalize(x) for x in inputs]
    given += [None] * (required + optional - len(given))
    return given[:required], given[required:required + optional]


def emit_scheduled(bb: Any, te_compute: Callable[..., Any], required: list[Any],
                   optional: list[Any], name: str, schedule: Callable[[Any], Any],
                   **kwargs: Any) -> Any:
    """Emit ``te_compute(*required, *optional, **kwargs)`` (absent optional inputs passed as
    None, only the given ones becoming parameters) as the PrimFunc ``name`` and replace it by
    ``schedule(func)`` unless it is already scheduled (``emit_te`` reuses an identical function
    emitted before). Returns the output variable."""

    def compute(*tensors: Any) -> Any:
        given = iter(tensors[len(required):])
        return te_compute(*tensors[:len(required)],
                          *(None if x is None else next(given) for x in optional), **kwargs)

    args = [*required, *(x for x in optional if x is not None)]
    out = bb.emit_te(compute, *args, primfunc_name_hint=name)
    gv = bb.lookup_binding(out).args[0]
    func = bb.get()[gv]
    if not (func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)):
        bb.update_func(gv, schedule(func))
    return out
