"""``EnergyResult``: joules per inference, how they were found, and their parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("modelled", "measured")


@dataclass
class EnergyResult:
    """Energy of one inference.

    Attributes:
        method: ``"measured"`` (a meter's counter or power samples, idle power subtracted) or
            ``"modelled"`` (operation counts times an energy table; never a measurement).
        joules_per_inference: joules per inference (per sample of a batch).
        breakdown: joules per inference by category: for ``modelled`` the arithmetic types
            (``fp32``, ``int8``...), ``shift``, ``compare``, ``lookup``, ``popcount``, ``sram``,
            ``dram``; for ``measured`` the meter's domains or rails, idle subtracted.
        source: the energy table (name and file) or the meter.
        details: how it was found: counts, shapes and the memory model, or the idle power,
            the runs and the measuring window (JSON-serializable).
    """

    method: str
    joules_per_inference: float
    breakdown: dict[str, float] = field(default_factory=dict)
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def summary(self) -> str:
        """One line for people: the figure, how it was found, from what. A modelled result
        says so and holds no measured figure."""
        figure = format_joules(self.joules_per_inference)
        if self.method == "modelled":
            return (f"modelled: {figure} per inference (operation counts x {self.source}; "
                    f"not a measurement)")
        idle = sum((self.details.get("idle_watts") or {}).values())
        return (f"measured: {figure} per inference ({self.source}; idle {idle:.3g} W "
                f"subtracted)")

    def to_json(self) -> dict[str, Any]:
        """``{"method", "joules_per_inference", "breakdown", "source", "details"}``."""
        return {"method": self.method, "joules_per_inference": float(self.joules_per_inference),
                "breakdown": {k: float(v) for k, v in self.breakdown.items()},
                "source": self.source, "details": self.details}


def format_joules(joules: float) -> str:
    """``1.46e-06`` -> ``"1.46 uJ"`` (J, mJ, uJ, nJ, pJ)."""
    for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ")):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules / 1e-12:.3g} pJ"
