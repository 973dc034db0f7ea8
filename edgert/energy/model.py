"""Modelled energy: the compiled graph's operation counts times an energy table.

    E = sum over counted operations (count x pJ per operation)          arithmetic
      + weight traffic + activation traffic                             memory

Memory traffic model (deliberately simple; every access is a 64-bit word):

- weights (the initializers the graph reads, all together ``W`` bytes) are read once per
  inference: from DRAM (``memory.dram`` per 64 bits) when ``W`` exceeds ``cache.cache_bytes``,
  else from the smallest SRAM of the table (8 KB, 32 KB, 1 MB) that holds them all;
- activations: each node reads its non-weight inputs and writes its outputs once (the bytes its
  counts give; views such as Reshape move nothing), from the smallest SRAM of the table
  (8 KB, 32 KB, 1 MB) that holds all of the node's activation tensors, the 1 MB one for
  larger tensors: activations stay on chip (they are produced and consumed in tiles; a graph
  whose activations stream through DRAM would cost more than this model says).

Per inference: a graph counted at batch ``B`` (the first dim of the first input) is divided by
``B``. What the model leaves out: instruction fetch and control, register files, data
reuse inside a kernel beyond "each tensor once", leakage and idle power. It compares
graphs (fp32 vs integer vs L-Mul) on one process; it is not a prediction of a board's
measured joules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from edgert.energy.graph_counts import GraphCounts, count_graph
from edgert.energy.result import EnergyResult
from edgert.energy.table import SRAM_LEVELS, EnergyTable, load_table

PJ = 1e-12
WORD = 8
"""Bytes per memory access (the table's energies are per 64 bits)."""
MEMORY_MODEL = ("weights once per inference from DRAM above the cache size, else from the "
                "smallest SRAM holding them; activations (each tensor once per node) from the "
                "smallest SRAM holding the node's activations, else the 1 MB SRAM")


def category(field_name: str) -> str:
    """The breakdown category of an ``OpCounts`` field: ``fp32_mul`` -> ``fp32``,
    ``shifts`` -> ``shift``."""
    if "_" in field_name:
        return field_name.split("_", 1)[0]
    return field_name.rstrip("s")


def load_graph(artifact: Any) -> Any:
    """The ONNX graph of an artifact path, a :class:`edgert.Session` or an ``onnx.ModelProto``."""
    import onnx

    from edgert.artifact import read_artifact

    if isinstance(artifact, onnx.ModelProto):
        return artifact
    if isinstance(artifact, (str, os.PathLike)):
        return onnx.load_from_string(read_artifact(artifact).model_bytes)
    loaded = getattr(artifact, "_artifact", None)      # an edgert.Session holds its artifact
    if loaded is None:
        raise TypeError(f"modelled_energy takes an artifact path, a Session or an "
                        f"onnx.ModelProto, not {type(artifact).__name__}")
    return onnx.load_from_string(loaded.model_bytes)


def modelled_energy(artifact: Any, input_shapes: Mapping[str, Sequence[int]] | None = None,
                    table: str | os.PathLike | None = None) -> EnergyResult:
    """Model the energy of one inference of a compiled graph.

    Args:
        artifact: a ``.edgert`` path, an :class:`edgert.Session`, or an ``onnx.ModelProto``.
        input_shapes: input name -> concrete shape to count at (default: the model's shapes,
            a dynamic first dim as 1; other dynamic dims must be given).
        table: an energy table TOML file (default: the shipped 45 nm table).

    Returns:
        An ``EnergyResult`` with ``method="modelled"``: joules per inference (per batch
        sample), the breakdown by arithmetic type and memory level, and in ``details`` the
        operation counts, the bytes, the per-op-type joules and the table.

    Raises:
        InputError: a bad table or input shape. ModelError / ArtifactError: an unreadable graph.
    """
    energy_table = load_table(table)
    graph = load_graph(artifact)
    counts = count_graph(graph, input_shapes)
    return energy_of_counts(counts, energy_table)


def energy_of_counts(counts: GraphCounts, table: EnergyTable) -> EnergyResult:
    """Joules per inference of counted nodes under ``table`` (see the module docstring)."""
    first = next(iter(counts.input_shapes.values()), ())
    batch = max(1, int(first[0])) if len(first) else 1
    breakdown: dict[str, float] = {}
    by_op: dict[str, float] = {}

    def add(cat: str, op_type: str, joules: float) -> None:
        if joules:
            breakdown[cat] = breakdown.get(cat, 0.0) + joules / batch
            by_op[op_type] = by_op.get(op_type, 0.0) + joules / batch

    for node in counts.nodes:
        for name, n in node.counts.as_dict().items():
            if n and not name.startswith("bytes_"):
                add(category(name), node.op_type, n * table.op_pj(name) * PJ)
        level, pj = _activation_level(node.activation_footprint, table)
        add(level, node.op_type, node.activation_bytes / WORD * pj * PJ)
    weight_bytes = sum(counts.weights.values())
    weight_level = "dram" if weight_bytes > table.cache_bytes else sram_key(weight_bytes)
    add("dram" if weight_level == "dram" else "sram", "weights",
        weight_bytes / WORD * table.memory[weight_level] * PJ)
    total = sum(breakdown.values())
    details = {
        "method": (f"operation counts of the graph at batch {batch} times pJ per operation "
                   f"of {table.name}, plus memory traffic ({MEMORY_MODEL}); divided by the "
                   f"batch"),
        "batch": batch,
        "input_shapes": {k: list(v) for k, v in counts.input_shapes.items()},
        "shapes_from": counts.shapes_from,
        "counts": {k: v for k, v in counts.total().as_dict().items() if v},
        "weight_bytes": weight_bytes,
        "weights_from": weight_level,
        "joules_by_op_type": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "uncounted_ops": dict(counts.uncounted),
        "memory_model": MEMORY_MODEL,
        "table": table.to_json(),
    }
    return EnergyResult("modelled", total, breakdown, f"{table.name} ({table.path})", details)


def _activation_level(footprint: int, table: EnergyTable) -> tuple[str, float]:
    """(category, pJ per 64-bit access) of a node whose activations take ``footprint`` bytes:
    always SRAM, the smallest entry holding them (the 1 MB one above that)."""
    return "sram", table.memory[sram_key(footprint)]


def sram_key(footprint: int) -> str:
    """The smallest SRAM entry of the table holding ``footprint`` bytes (the largest if none)."""
    for size, key in SRAM_LEVELS:
        if footprint <= size:
            return key
    return SRAM_LEVELS[-1][1]
