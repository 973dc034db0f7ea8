"""Which meter to read: :func:`find_meter` and :func:`probe_meters`.

    power_csv given          the external meter's CSV (the whole board, the best figure)
    target rpi5              the Pi 5 PMIC (``vcgencmd pmic_read_adc``)
    target jetson-*          the INA3221 rails (hwmon)
    target cuda-*            NVML
    target x86-* or none     RAPL, then NVML

A meter that is missing or unreadable (RAPL's counters need root on recent kernels) is skipped
with its reason; with none left the caller models the energy instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from edgert.energy.meter import Meter


def _candidates(target: str | None, root: str | os.PathLike, runner: Any,
                nvml: Any) -> list[tuple[str, Callable[[], Meter]]]:
    from edgert.energy.ina3221 import Ina3221Meter
    from edgert.energy.nvml import open_nvml
    from edgert.energy.rapl import RaplMeter
    from edgert.energy.rpi_pmic import RpiPmicMeter

    t = (target or "host").lower()
    if t == "rpi5":
        return [("rpi5-pmic", lambda: RpiPmicMeter(runner))]
    if t.startswith("jetson"):
        return [("ina3221", lambda: Ina3221Meter(root))]
    if t.startswith("cuda"):
        return [("nvml", lambda: open_nvml(nvml))]
    if t == "host" or t.startswith("x86"):
        return [("rapl", lambda: RaplMeter(root)), ("nvml", lambda: open_nvml(nvml))]
    return []


def probe_meters(target: str | None = None, power_csv: str | os.PathLike | None = None, *,
                 root: str | os.PathLike = "/", runner: Any = None,
                 nvml: Any = None) -> tuple[Meter | None, list[str]]:
    """(the first readable meter or None, why each one tried was not usable).

    Args:
        target: an edgert target name (``rpi5``, ``jetson-orin``, ``cuda-sm90``, ``x86-avx2``;
            None or ``host``: this machine's RAPL, then NVML).
        power_csv: an external meter's CSV log: used whatever the target.
        root: the filesystem root of the sysfs trees (tests pass a fixture tree).
        runner: runs a command, returns its output (the Pi 5 PMIC; tests pass a recording).
        nvml: an NVML module (default: ``pynvml`` if importable).

    Raises:
        InputError: ``power_csv`` names no file.
    """
    if power_csv is not None:
        from edgert.energy.power_csv import PowerCsvMeter

        return PowerCsvMeter(power_csv), []
    reasons: list[str] = []
    candidates = _candidates(target, root, runner, nvml)
    if not candidates:
        reasons.append(f"target {target!r}: no meter known for it")
    for name, make in candidates:
        try:
            return make(), reasons
        except (OSError, ValueError) as e:
            reasons.append(f"{name}: {e}")
    return None, reasons


def find_meter(target: str | None = None, power_csv: str | os.PathLike | None = None,
               **where: Any) -> Meter | None:
    """The first readable meter for ``target`` (see :func:`probe_meters`), or None."""
    return probe_meters(target, power_csv, **where)[0]
