"""NVIDIA Jetson power rails: the INA3221 monitors through Linux hwmon sysfs.

Each ``/sys/class/hwmon/hwmon<N>/`` whose ``name`` is ``ina3221`` has up to three channels:

    in<C>_label    the rail (``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC`` on an Orin Nano)
    in<C>_input    the bus voltage in millivolts
    curr<C>_input  the current in milliamperes

A rail's power is ``in * curr / 1e6`` watts. Channels without both files (the Orin's "sum of
shunt voltages" channel) are skipped. The total is ``VDD_IN`` (the module's input, which
feeds the others) when a rail has that name, else the sum of all rails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from edgert.energy.meter import PowerMeter

HWMON = "sys/class/hwmon"
INPUT_RAIL = "VDD_IN"


class Ina3221Meter(PowerMeter):
    """The INA3221 rails under ``root`` (``/`` on a Jetson; a fixture tree in tests)."""

    name = "ina3221"
    description = "Jetson INA3221 rails (hwmon in*_input x curr*_input), sampled"
    interval_s = 0.02

    def __init__(self, root: str | os.PathLike = "/") -> None:
        super().__init__()
        self.rails: dict[str, tuple[Path, Path]] = {}
        base = Path(root) / HWMON
        for hw in sorted(base.glob("hwmon*")):
            if _read(hw / "name", "").strip() != "ina3221":
                continue
            for volt in sorted(hw.glob("in*_input")):
                ch = re.match(r"in(\d+)_input$", volt.name)
                curr = hw / f"curr{ch.group(1)}_input" if ch else None
                if curr is None or not curr.exists():
                    continue
                label = _read(hw / f"in{ch.group(1)}_label", "").strip() \
                    or f"{hw.name}-ch{ch.group(1)}"
                if label in self.rails:
                    label = f"{label}-{hw.name}"
                self.rails[label] = (volt, curr)
        if not self.rails:
            raise OSError(f"no INA3221 rails under {base}")
        self.sample()

    def sample(self) -> dict[str, float]:
        return {label: int(_read(v)) * int(_read(c)) * 1e-6
                for label, (v, c) in self.rails.items()}

    def total_domains(self, domains: Sequence[str]) -> list[str]:
        return [INPUT_RAIL] if INPUT_RAIL in domains else list(domains)


def _read(path: Path, default: str | None = None) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        if default is None:
            raise
        return default
