"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Where the GPU has a total energy counter (``nvmlDeviceGetTotalEnergyConsumption``: millijoules
since the driver loaded, Volta and later) it is read like any counter; otherwise the board power
(``nvmlDeviceGetPowerUsage``, milliwatts) is sampled and integrated. Every GPU NVML sees is
read (domains ``gpu0``, ``gpu1``...).
"""

from __future__ import annotations

from typing import Any

from edgert.energy.meter import CounterMeter, PowerMeter


def load_nvml(nvml: Any = None) -> tuple[Any, list[Any]]:
    """(the NVML module, its device handles), initialized.

    Raises:
        OSError: ``pynvml`` is not installed, NVML fails to load or there is no GPU.
    """
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[import-not-found]
        except ImportError:
            raise OSError("pynvml (nvidia-ml-py) is not installed") from None
    try:
        nvml.nvmlInit()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as e:  # noqa: BLE001 (pynvml raises NVMLError subclasses)
        raise OSError(f"NVML: {e}") from None
    if not handles:
        raise OSError("NVML: no GPU")
    return nvml, handles


class NvmlEnergyMeter(CounterMeter):
    """The GPUs' total energy counters (millijoules)."""

    name = "nvml"
    description = "NVML total energy counter (nvmlDeviceGetTotalEnergyConsumption)"

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        super().__init__()
        self.nvml, self.handles = nvml, handles
        self.read_counters()

    def read_counters(self) -> dict[str, tuple[float, float | None]]:
        return {f"gpu{i}": (self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) * 1e-3, None)
                for i, h in enumerate(self.handles)}


class NvmlPowerMeter(PowerMeter):
    """The GPUs' power readings (milliwatts), sampled."""

    name = "nvml"
    description = "NVML power samples (nvmlDeviceGetPowerUsage), integrated"
    interval_s = 0.02

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        super().__init__()
        self.nvml, self.handles = nvml, handles
        self.sample()

    def sample(self) -> dict[str, float]:
        return {f"gpu{i}": self.nvml.nvmlDeviceGetPowerUsage(h) * 1e-3
                for i, h in enumerate(self.handles)}


def open_nvml(nvml: Any = None) -> NvmlEnergyMeter | NvmlPowerMeter:
    """The counter meter when every GPU has the energy counter, else the power meter.

    Raises:
        OSError: NVML is not usable here.
    """
    nvml, handles = load_nvml(nvml)
    try:
        return NvmlEnergyMeter(nvml, handles)
    except Exception:  # noqa: BLE001 (NVMLError_NotSupported and kin)
        pass
    try:
        return NvmlPowerMeter(nvml, handles)
    except Exception as e:  # noqa: BLE001
        raise OSError(f"NVML: no energy counter and no power reading ({e})") from None
