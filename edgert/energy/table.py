"""The energy table: picojoules per operation and per memory access, read from a TOML file.

The shipped table is ``edgert/data/energy_45nm.toml`` (45 nm, Horowitz ISSCC 2014; the file
cites the source and says how each entry the paper lacks was derived). A user table has the
same sections and keys; every key must be present and be a non-negative number::

    [source]  name, citation                       (strings)
    [ops]     pJ per scalar operation: int8_add ... fp32_mul, shift, compare, lookup, popcount
    [memory]  pJ per 64-bit access: sram_8kb, sram_32kb, sram_1mb, dram
    [cache]   cache_bytes: weights above this size in all are read from DRAM
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgert.errors import InputError

DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "data" / "energy_45nm.toml"
"""The shipped 45 nm table."""

OP_KEYS = ("int8_add", "int16_add", "int32_add", "int64_add", "int8_mul", "int16_mul",
           "int32_mul", "int64_mul", "int64_div", "fp16_add", "fp16_mul", "fp32_add",
           "fp32_mul", "shift", "compare", "lookup", "popcount")
"""Keys of ``[ops]`` (pJ per operation)."""
MEMORY_KEYS = ("sram_8kb", "sram_32kb", "sram_1mb", "dram")
"""Keys of ``[memory]`` (pJ per 64-bit access)."""
SRAM_LEVELS = ((8 << 10, "sram_8kb"), (32 << 10, "sram_32kb"), (1 << 20, "sram_1mb"))
"""(capacity in bytes, key) of the SRAM entries, smallest first."""

COUNT_KEY = {"shifts": "shift", "compares": "compare", "lookups": "lookup",
             "popcounts": "popcount"}
"""``OpCounts`` field -> ``[ops]`` key where the names differ (the rest are equal)."""


@dataclass(frozen=True)
class EnergyTable:
    """Energies of one process (all in picojoules).

    Attributes:
        path: the file it was read from.
        name: ``[source] name`` (how reports name the table).
        citation: ``[source] citation``.
        ops: ``[ops]`` key -> pJ per scalar operation.
        memory: ``[memory]`` key -> pJ per 64-bit access.
        cache_bytes: weights larger than this (bytes, all together) come from DRAM.
    """

    path: Path
    name: str
    citation: str
    ops: dict[str, float]
    memory: dict[str, float]
    cache_bytes: int

    def op_pj(self, count_field: str) -> float:
        """pJ of one operation counted in the ``OpCounts`` field ``count_field``."""
        return self.ops[COUNT_KEY.get(count_field, count_field)]

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "citation": self.citation,
                "ops_pj": dict(self.ops), "memory_pj_per_64bit": dict(self.memory),
                "cache_bytes": self.cache_bytes}


def load_table(path: str | os.PathLike | None = None) -> EnergyTable:
    """Read an energy table (default: the shipped 45 nm one).

    Raises:
        InputError: the file is missing or not TOML, or a key is missing, unknown or not a
            non-negative number (the message names the file and the key).
    """
    import tomllib

    file = Path(path) if path is not None else DEFAULT_TABLE
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"energy table {file}: cannot read it ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"energy table {file}: not a TOML file ({e})") from None
    _check_sections(file, data)
    source = data["source"]
    for key in ("name", "citation"):
        if not isinstance(source.get(key), str):
            raise InputError(f"energy table {file}: [source] {key} must be a string")
    ops = _numbers(file, data, "ops", OP_KEYS)
    memory = _numbers(file, data, "memory", MEMORY_KEYS)
    cache = _numbers(file, data, "cache", ("cache_bytes",))
    return EnergyTable(file, source["name"], source["citation"], ops, memory,
                       int(cache["cache_bytes"]))


def _check_sections(file: Path, data: dict[str, Any]) -> None:
    known = ("source", "ops", "memory", "cache")
    for section in data:
        if section not in known:
            raise InputError(f"energy table {file}: unknown section [{section}] "
                             f"(known: {', '.join(known)})")
    for section in known:
        if not isinstance(data.get(section), dict):
            raise InputError(f"energy table {file}: missing section [{section}]")


def _numbers(file: Path, data: dict[str, Any], section: str,
             keys: tuple[str, ...]) -> dict[str, float]:
    """``data[section]``, checked to hold exactly ``keys``, each a non-negative number."""
    values = data[section]
    for key in values:
        if key not in keys:
            raise InputError(f"energy table {file}: unknown key {section}.{key} "
                             f"(known: {', '.join(keys)})")
    out: dict[str, float] = {}
    for key in keys:
        if key not in values:
            raise InputError(f"energy table {file}: missing key {section}.{key}")
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise InputError(f"energy table {file}: {section}.{key} must be a non-negative "
                             f"number, got {v!r}")
        out[key] = float(v)
    return out
