"""Load-time checks of the packed weight layouts in an artifact (``edgert.LutMatMul``).

The packed bytes of a low-bit weight mean something only under the layout they were packed
with (bits, group size, K, N, tiles, g, layout version: :class:`edgert.ops.lut_matmul.LutLayout`),
and the kernels index them by the LutMatMul node's layout attributes. Every backend is created
through :func:`edgert.backends.load_backend`, which calls :func:`check_lut_layouts` first: an
artifact whose attributes are invalid for this build (e.g. another ``layout_version``), disagree
with the operands they describe (packed weight, scales, zero points) or with the layout the
compiler recorded in the manifest (``lowbit.nodes``) is refused with an
:class:`~edgert.errors.ArtifactError` naming the node and the field.

Artifacts without LutMatMul nodes cost one substring search of ``model.onnx``.
"""

from __future__ import annotations

from typing import Any

from edgert.artifact import Artifact
from edgert.errors import ArtifactError

OP_TYPE = b"LutMatMul"


def check_lut_layouts(artifact: Artifact) -> int:
    """Validate every ``edgert.LutMatMul`` node of ``artifact``; returns how many there are.

    Raises:
        ArtifactError: a node whose layout attributes are missing or invalid, whose packed
            weight / scales / zero points do not have the shapes its layout needs, or whose
            layout differs from the manifest's record; or a manifest record without its node.
    """
    lowbit = artifact.manifest.get("lowbit") or {}
    records = {e.get("lut_node"): (label, e) for label, e in (lowbit.get("nodes") or {}).items()
               if isinstance(e, dict)}
    if OP_TYPE not in artifact.model_bytes and not records:
        return 0
    import onnx
    from onnx import numpy_helper

    from edgert.ops import DOMAIN
    from edgert.ops.lut_matmul import LutLayout

    source = str(artifact.path)
    try:
        model = onnx.load_model_from_string(artifact.model_bytes)
    except Exception as e:
        raise ArtifactError(f"{source}: model.onnx is not a valid ONNX model ({e})") from None
    inits = {t.name: t for t in model.graph.initializer}
    seen = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "LutMatMul" or node.domain != DOMAIN:
            continue
        seen += 1
        name = node.name or f"#{index}"
        where = f"{source}: LutMatMul node {name!r}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        try:
            layout = LutLayout.from_attrs(attrs)
        except (ArtifactError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: {e}") from None
        tb = attrs.get("table_bits")
        if tb not in (8, 16):
            raise ArtifactError(f"{where}: table_bits = {tb} (8 or 16)")
        if attrs.get("dequant", 0) not in (0, 1):
            raise ArtifactError(f"{where}: dequant = {attrs['dequant']} (0 or 1)")
        record = records.pop(node.name, None) if node.name else None
        if record is not None:
            _check_record(where, layout, record)
        _check_operands(where, layout, node, inits, numpy_helper)
    if records:
        missing = ", ".join(f"{label} (LutMatMul node {lut!r})" for lut, (label, _) in
                            records.items())
        raise ArtifactError(f"{source}: the manifest records low-bit nodes that model.onnx does "
                            f"not have: {missing}")
    return seen


def _check_operands(where: str, layout: Any, node: Any, inits: dict, numpy_helper: Any) -> None:
    """The constant operands have the dtypes and shapes the layout needs."""
    from onnx import TensorProto

    groups = [layout.n_groups, layout.N]
    float_acts = len(node.input) > 2 and bool(node.input[2])     # scales: the float variant
    zero_types = (TensorProto.UINT8, TensorProto.FLOAT) if float_acts else (TensorProto.UINT8,)
    wanted = [("packed weight", (TensorProto.UINT8,), list(layout.planes_shape)),
              ("scales", (TensorProto.FLOAT,), groups), ("zero points", zero_types, groups)]
    for i, (what, elems, shape) in enumerate(wanted, start=1):
        if len(node.input) <= i or not node.input[i] or node.input[i] not in inits:
            if i == 1:
                raise ArtifactError(f"{where}: the packed weight is not a constant initializer")
            continue
        t = inits[node.input[i]]
        if t.data_type not in elems or list(t.dims) != shape:
            have = f"{TensorProto.DataType.Name(t.data_type).lower()}{list(t.dims)}"
            need = " or ".join(f"{TensorProto.DataType.Name(e).lower()}{shape}" for e in elems)
            raise ArtifactError(f"{where}: {what} {node.input[i]!r} is {have}, its layout "
                                f"attributes {layout.to_json()} need {need}; the artifact is "
                                "stale or damaged: recompile the model")


def _check_record(where: str, layout: Any, record: tuple[str, dict]) -> None:
    """The node's layout equals the one the compiler recorded in the manifest."""
    from dataclasses import fields

    label, entry = record
    stored = entry.get("layout")
    if not isinstance(stored, dict):
        raise ArtifactError(f"{where}: the manifest's lowbit record of {label} has no layout")
    diff = [f"{f.name} = {getattr(layout, f.name)} in model.onnx, {stored.get(f.name)} in the "
            f"manifest" for f in fields(layout) if stored.get(f.name) != getattr(layout, f.name)]
    if diff:
        raise ArtifactError(f"{where} (from {label}): layout does not match the manifest: "
                            + "; ".join(diff) + "; the artifact is stale or damaged: recompile "
                            "the model")
