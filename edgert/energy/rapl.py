"""Linux powercap / RAPL energy counters (Intel, and AMD Zen under the same ``intel-rapl`` name).

Each top-level zone ``/sys/class/powercap/intel-rapl:<N>/`` holds:

    name                  the domain (``package-0``, ``psys``, ``dram``...)
    energy_uj             the cumulative energy in microjoules (reading it needs root on
                          kernels since 5.10: CVE-2020-8694)
    max_energy_range_uj   the value the counter wraps at

The total is the sum of the top-level zones except ``psys`` (the platform zone, which already
holds the packages) when a package zone is there; the sub-zones (``intel-rapl:0:0``: core,
uncore, dram of a package) are parts of their package and are not read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from edgert.energy.meter import CounterMeter

POWERCAP = "sys/class/powercap"
ZONE = re.compile(r"^intel-rapl:(\d+)$")
UJ = 1e-6


class RaplMeter(CounterMeter):
    """The RAPL counters under ``root`` (``/`` on a real machine; a fixture tree in tests)."""

    name = "rapl"
    description = "Linux powercap/RAPL energy counters"

    def __init__(self, root: str | os.PathLike = "/") -> None:
        super().__init__()
        base = Path(root) / POWERCAP
        zones = sorted((p for p in base.glob("intel-rapl:*") if ZONE.match(p.name)),
                       key=lambda p: int(ZONE.match(p.name).group(1)))
        self.zones: dict[str, Path] = {}
        for zone in zones:
            label = _read(zone / "name").strip() or zone.name
            if label in self.zones:
                label = f"{label}-{zone.name}"
            self.zones[label] = zone
        if not self.zones:
            raise OSError(f"no RAPL zones under {base}")
        self.read_counters()                   # readable now, or OSError (permissions)

    def read_counters(self) -> dict[str, tuple[float, float | None]]:
        out = {}
        for label, zone in self.zones.items():
            value = int(_read(zone / "energy_uj"))
            wrap = int(_read(zone / "max_energy_range_uj"))
            out[label] = (value * UJ, wrap * UJ if wrap > 0 else None)
        return out

    def total_domains(self, domains: Sequence[str]) -> list[str]:
        packages = [d for d in domains if d.startswith("package")]
        if packages:
            return [d for d in domains if not d.startswith("psys")]
        return list(domains)

    def method(self) -> str:
        return f"{self.description} ({', '.join(self.zones)})"


def _read(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()
