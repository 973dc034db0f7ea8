"""The schema of an artifact's ``manifest.json``, and its agreement with the graph inside.

A manifest is trusted by everything that loads an artifact (names, dtypes and shapes of the
inputs, the library member, the target...), and it is plain JSON anyone can edit. Before any of
it is used, :func:`validate_manifest` checks every field a reader relies on (types, ranks,
names, dtypes, the target, member paths that stay inside the archive) and
:func:`check_against_graph` checks that the inputs and outputs it declares are the ones of the
ONNX graph it hashes (read with :mod:`edgert.onnx_wire`: standard library only, so a board
bundle without onnx checks it too). Any problem is an :class:`ArtifactError` naming the field.

Fields that are not listed here (sections written by newer compilers of the same format
version) are left alone: a reader that does not know them does not use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from edgert.errors import ArtifactError
from edgert.onnx_wire import ELEM_DTYPES, WireError, graph_io

DTYPES = frozenset(ELEM_DTYPES.values())
"""The dtypes an input or output may declare (numpy names)."""
INTEGER_IO_DTYPES = frozenset({"int8", "int16", "int32"})
MAX_RANK = 32
MAX_NAME = 4096
MAX_MEMBER_PATH = 255
_HEX64 = re.compile(r"[0-9a-f]{64}")
_OPTIONAL_SECTIONS = ("compile_options", "quantization", "lowbit", "lmul", "binary_attention",
                      "shift_linear", "tuning", "source_model")
_OPTIONAL_TEXT = ("edgert_version", "tvm_version", "created")


def member_path_problem(name: Any) -> str | None:
    """Why ``name`` is not an acceptable member path (a relative POSIX path that stays inside
    the archive), or None."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if len(name) > MAX_MEMBER_PATH:
        return f"longer than {MAX_MEMBER_PATH} characters"
    if "\\" in name or "\0" in name or ":" in name:
        return "holds a backslash, a NUL or a colon"
    if name.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' component"
    return None


def validate_manifest(manifest: Mapping[str, Any], source: str,
                      zip_names: Collection[str]) -> None:
    """Check every field a reader uses; ``zip_names`` are the archive's entries.

    Raises:
        ArtifactError: the first problem found, naming the field (``inputs[0].shape[1]``).
    """
    bad = _Problems(source)
    members = manifest.get("members")
    if not isinstance(members, Mapping) or not members:
        bad("members", "must be an object of member path -> sha256", members)
    for name, digest in members.items():
        why = member_path_problem(name)
        if why:
            bad("members", f"path {name!r} {why}")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            bad(f"members[{name!r}]", "must be 64 lowercase hex digits (sha256)", digest)
        if name not in zip_names:
            bad("members", f"lists {name!r}, which the archive does not hold")
    if "model.onnx" not in members:
        bad("members", "must list 'model.onnx'")
    for key in ("lib", "build_log"):
        value = manifest.get(key)
        if value is not None and (not isinstance(value, str) or value not in members):
            bad(key, "must name a member the manifest lists", value)
    _check_target(bad, manifest.get("target"))
    inputs = _check_values(bad, "inputs", manifest.get("inputs"))
    outputs = _check_values(bad, "outputs", manifest.get("outputs"))
    for key in _OPTIONAL_TEXT:
        if key in manifest and not isinstance(manifest[key], str):
            bad(key, "must be a string", manifest[key])
    for key in _OPTIONAL_SECTIONS:
        if manifest.get(key) is not None and not isinstance(manifest[key], Mapping):
            bad(key, "must be an object", manifest[key])
    quant = manifest.get("quantization") or {}
    if quant.get("io") is not None:
        _check_integer_io(bad, quant["io"], inputs, outputs)


def check_against_graph(manifest: Mapping[str, Any], model: bytes, source: str) -> None:
    """Check that the manifest's inputs and outputs (names, order, dtypes, shapes) are those
    of the serialized ONNX graph ``model``, as the compiler wrote them.

    Raises:
        ArtifactError: a damaged graph, or the first input/output that differs.
    """
    try:
        graph_inputs, graph_outputs = graph_io(model)
    except WireError as e:
        raise ArtifactError(f"{source}: member 'model.onnx' is not a valid ONNX model ({e})") from None
    for kind, graph in (("inputs", graph_inputs), ("outputs", graph_outputs)):
        declared = [{k: d[k] for k in ("name", "shape", "dtype")} for d in manifest[kind]]
        if [d["name"] for d in declared] != [g["name"] for g in graph]:
            raise ArtifactError(
                f"{source}: manifest.json {kind} {[d['name'] for d in declared]} are not the "
                f"graph's {[g['name'] for g in graph]} (the manifest was edited or belongs to "
                "another model)")
        for d, g in zip(declared, graph):
            if d != g:
                raise ArtifactError(
                    f"{source}: manifest.json {kind[:-1]} {d['name']!r} is declared as "
                    f"{d['dtype']} {d['shape']}, the graph has {g['dtype']} {g['shape']}")


class _Problems:
    """Raises the ArtifactError of one manifest field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, field: str, why: str, *got: Any) -> None:
        shown = f", got {_short(got[0])}" if got else ""
        raise ArtifactError(f"{self.source}: manifest.json {field} {why}{shown}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_target(bad: _Problems, target: Any) -> None:
    if not isinstance(target, Mapping):
        bad("target", "must be an object", target)
    name = target.get("name")
    if not isinstance(name, str) or not name:
        bad("target.name", "must be a non-empty string", name)
    for key in ("arch", "device", "vector_isa", "cuda_arch", "cross_cc", "description"):
        if target.get(key) is not None and not isinstance(target[key], str):
            bad(f"target.{key}", "must be a string or null", target[key])


def _check_values(bad: _Problems, kind: str, values: Any) -> list[str]:
    """Check the ``inputs`` or ``outputs`` list; returns the names."""
    if not isinstance(values, list) or not values:
        bad(kind, "must be a non-empty list", values)
    names: list[str] = []
    for i, v in enumerate(values):
        where = f"{kind}[{i}]"
        if not isinstance(v, Mapping):
            bad(where, "must be an object", v)
        name = v.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            bad(f"{where}.name", "must be a non-empty string", name)
        if name in names:
            bad(f"{where}.name", f"repeats {name!r}")
        names.append(name)
        if v.get("dtype") not in DTYPES:
            bad(f"{where}.dtype", f"must be one of {', '.join(sorted(DTYPES))}", v.get("dtype"))
        shape = v.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            bad(f"{where}.shape", f"must be a list of at most {MAX_RANK} dims", shape)
        for axis, dim in enumerate(shape):
            if not (dim is None or (isinstance(dim, str) and dim)
                    or (type(dim) is int and 0 <= dim < 1 << 62)):
                bad(f"{where}.shape[{axis}]", "must be an int >= 0, a name or null", dim)
        if kind == "inputs" and v.get("range") is not None:
            _check_range(bad, f"{where}.range", v["range"])
    return names


def _check_range(bad: _Problems, where: str, bounds: Any) -> None:
    if not isinstance(bounds, Mapping):
        bad(where, "must be an object", bounds)
    lo, hi = bounds.get("min"), bounds.get("max")
    if type(lo) is not int or type(hi) is not int or lo > hi:
        bad(where, "must hold integers min <= max", bounds)


def _check_integer_io(bad: _Problems, io: Any, inputs: list[str], outputs: list[str]) -> None:
    if not isinstance(io, Mapping):
        bad("quantization.io", "must be an object", io)
    for kind, names in (("inputs", inputs), ("outputs", outputs)):
        specs = io.get(kind) or {}
        if not isinstance(specs, Mapping):
            bad(f"quantization.io.{kind}", "must be an object", specs)
        for name, spec in specs.items():
            where = f"quantization.io.{kind}[{name!r}]"
            if name not in names:
                bad(where, f"names no model {kind[:-1]}")
            if not isinstance(spec, Mapping) or spec.get("dtype") not in INTEGER_IO_DTYPES:
                bad(f"{where}.dtype", "must be int8, int16 or int32", spec)
            scale = spec.get("scale")
            scales = scale if isinstance(scale, list) else [scale]
            if not scales or not all(_positive(s) for s in scales):
                bad(f"{where}.scale", "must be a finite float > 0 or a list of them", scale)
            axis = spec.get("axis")
            if isinstance(scale, list) and (type(axis) is not int or axis < 0):
                bad(f"{where}.axis", "must be an int >= 0 for a per-channel scale", axis)


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
