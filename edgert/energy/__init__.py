"""Energy per inference, measured where a meter is readable and modelled everywhere.

    modelled_energy(artifact, input_shapes=None, table=None) -> EnergyResult
    find_meter(target=None, power_csv=None) -> Meter | None
    Meter.measure(run_once, runs, idle_s=1.0) -> EnergyResult
    profile_energy(session, run_once, runs, ...) -> EnergyResult   (measured, else modelled)

Modelled (:mod:`.model`): the compiled graph's operation counts (:mod:`.graph_counts`: the
edgert ops' ``counts.py`` and :mod:`.onnx_counts` for the standard ops) times a per-operation
energy table (:mod:`.table`, default ``edgert/data/energy_45nm.toml``). Measured
(:mod:`.meters`): Linux powercap/RAPL, NVML, Jetson INA3221 rails, the Raspberry Pi 5 PMIC, an
external meter's CSV; the idle power is measured first and subtracted.

Imports only the standard library, numpy and the edgert runtime at module level (onnx when a
graph is counted), so a board bundle with only numpy can measure.
"""

from __future__ import annotations

from edgert.energy.result import EnergyResult
from edgert.energy.model import modelled_energy
from edgert.energy.meters import Meter, find_meter
from edgert.energy.profile import profile_energy

__all__ = ["EnergyResult", "Meter", "find_meter", "modelled_energy", "profile_energy"]
