"""The energy meter readers against fixtures in the devices' formats (tests/data/energy/):
RAPL sysfs (with a wrap-around), NVML (a stand-in module), Jetson INA3221 hwmon, the Pi 5 PMIC's
command output, an external meter's CSV; and the fallback to a modelled figure when nothing is
readable."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgert.energy import find_meter, profile_energy
from edgert.energy.ina3221 import Ina3221Meter
from edgert.energy.meter import integrate
from edgert.energy.meters import probe_meters
from edgert.energy.nvml import NvmlEnergyMeter, NvmlPowerMeter, open_nvml
from edgert.energy.power_csv import PowerCsvMeter, read_power_csv
from edgert.energy.rapl import RaplMeter
from edgert.energy.rpi_pmic import COMMAND, RpiPmicMeter, parse_pmic
from edgert.errors import InputError

DATA = Path(__file__).parent / "data" / "energy"
ZONES = "sys/class/powercap"


class FakeClock:
    """A clock that only moves when told to (sleep, or a test's run)."""

    def __init__(self, t: float = 0.0, on_sleep=None) -> None:
        self.t = t
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s
        if self.on_sleep:
            self.on_sleep(s)


def _tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(DATA / name, root)
    return root


def _add_uj(zone: Path, joules: float) -> None:
    """Advance a RAPL zone's counter like the kernel does, wrapping at max_energy_range_uj."""
    wrap = int((zone / "max_energy_range_uj").read_text())
    value = int((zone / "energy_uj").read_text()) + round(joules * 1e6)
    (zone / "energy_uj").write_text(f"{value - wrap if value >= wrap else value}\n")


def test_rapl_counter_deltas_with_wrap_and_idle_subtracted(tmp_path):
    root = _tree(tmp_path, "rapl")
    pkg, psys = root / ZONES / "intel-rapl:0", root / ZONES / "intel-rapl:1"
    meter = RaplMeter(root)
    assert list(meter.zones) == ["package-0", "psys"]        # sub-zone intel-rapl:0:0 not read

    def idle_draw(s: float) -> None:                          # 2 W idle, psys 3 W
        _add_uj(pkg, 2.0 * s)
        _add_uj(psys, 3.0 * s)

    clock = FakeClock(on_sleep=idle_draw)
    meter.clock, meter.sleep = clock, clock.sleep

    def run_once() -> None:                                   # 0.5 s at 10 W (psys 12 W)
        clock.t += 0.5
        _add_uj(pkg, 5.0)
        _add_uj(psys, 6.0)

    result = meter.measure(run_once, runs=4, idle_s=1.0)
    # the package counter started 0.129 J below its wrap value: the first run wrapped it
    assert int((pkg / "energy_uj").read_text()) < 262143200000
    assert result.method == "measured"
    assert result.details["gross_joules"]["package-0"] == pytest.approx(20.0, rel=1e-9)
    assert result.details["idle_watts"]["package-0"] == pytest.approx(2.0, rel=1e-9)
    # (20 J - 2 W * 2 s) / 4 runs; psys overlaps the package and is left out of the total
    assert result.joules_per_inference == pytest.approx(4.0, rel=1e-9)
    assert list(result.breakdown) == ["package-0"]
    assert "idle power" in result.details["method"]


def test_rapl_unreadable_or_absent(tmp_path):
    with pytest.raises(OSError, match="no RAPL zones"):
        RaplMeter(tmp_path)
    root = _tree(tmp_path, "rapl")
    (root / ZONES / "intel-rapl:0" / "energy_uj").unlink()   # as if root-only
    meter, reasons = probe_meters("x86-avx2", root=root, nvml=_NoNvml())
    assert meter is None and any(r.startswith("rapl:") for r in reasons)


class _Nvml:
    """A stand-in for pynvml: one GPU, a counter in mJ and a power reading in mW."""

    def __init__(self, energy_mj: list[int] | None, power_mw: int = 75000) -> None:
        self.energy_mj, self.power_mw, self.inits = energy_mj, power_mw, 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy_mj is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.energy_mj[0]

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw


class _NoNvml:
    def nvmlInit(self):
        raise RuntimeError("NVML Shared Library Not Found")


def test_nvml_total_energy_counter():
    nvml = _Nvml(energy_mj=[1_000_000])
    meter = open_nvml(nvml)
    assert isinstance(meter, NvmlEnergyMeter)
    clock = FakeClock(on_sleep=lambda s: nvml.energy_mj.__setitem__(
        0, nvml.energy_mj[0] + round(60_000 * s)))                 # 60 W idle
    meter.clock, meter.sleep = clock, clock.sleep

    def run_once():
        clock.t += 0.1
        nvml.energy_mj[0] += 25_000                               # 250 W for 0.1 s

    result = meter.measure(run_once, runs=10, idle_s=0.5)
    assert result.joules_per_inference == pytest.approx(25.0 - 6.0, rel=1e-9)
    assert result.breakdown == pytest.approx({"gpu0": 19.0}, rel=1e-9)


def test_nvml_without_counter_samples_power():
    meter = open_nvml(_Nvml(energy_mj=None, power_mw=75500))
    assert isinstance(meter, NvmlPowerMeter)
    assert meter.sample() == {"gpu0": pytest.approx(75.5)}
    with pytest.raises(OSError, match="NVML"):
        open_nvml(_NoNvml())


def test_ina3221_rails(tmp_path):
    meter = Ina3221Meter(_tree(tmp_path, "jetson"))
    watts = meter.sample()
    assert set(watts) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}   # no channel 7 (no current)
    assert watts["VDD_IN"] == pytest.approx(5.072 * 1.488)
    assert watts["VDD_SOC"] == pytest.approx(5.064 * 0.568)
    assert meter.total_domains(list(watts)) == ["VDD_IN"]          # it feeds the others


def test_power_meter_integrates_samples_idle_subtracted(tmp_path):
    """End to end with the sampling thread (real time): VDD_IN at 5.0 W idle, 8.0 W busy."""
    root = _tree(tmp_path, "jetson")
    hw = root / "sys/class/hwmon/hwmon1"
    (hw / "in1_input").write_text("5000\n")
    (hw / "curr1_input").write_text("1000\n")
    meter = Ina3221Meter(root)
    meter.interval_s = 0.005

    def run_once():                         # replaced whole: a sysfs read never sees half a file
        (hw / "next").write_text("1600\n")
        os.replace(hw / "next", hw / "curr1_input")
        time.sleep(0.05)

    result = meter.measure(run_once, runs=4, idle_s=0.2)
    assert result.details["idle_watts"]["VDD_IN"] == pytest.approx(5.0)
    assert result.joules_per_inference == pytest.approx(3.0 * 0.05, rel=0.25)


def test_pmic_output_parsed():
    text = (DATA / "pmic_read_adc.txt").read_text()
    watts, volts_only = parse_pmic(text)
    assert len(watts) == 12 and volts_only == {"EXT5V": 5.15, "BATT": 0.0}
    assert watts["VDD_CORE"] == pytest.approx(0.67338 * 0.883)
    calls = []

    def runner(cmd):
        calls.append(tuple(cmd))
        return text

    meter = find_meter("rpi5", runner=runner)
    assert isinstance(meter, RpiPmicMeter) and calls[0] == COMMAND
    assert sum(meter.sample().values()) == pytest.approx(sum(watts.values()))

    def missing(cmd):
        raise OSError("vcgencmd: not found")

    assert find_meter("rpi5", runner=missing) is None


def test_integrate_trapezoid():
    times, watts = [0.0, 1.0, 2.0, 4.0], [2.0, 4.0, 4.0, 0.0]
    assert integrate(times, watts, 0.0, 4.0) == pytest.approx(3.0 + 4.0 + 4.0)
    assert integrate(times, watts, 0.5, 1.5) == pytest.approx(0.5 * (3.0 + 4.0) / 2 + 0.5 * 4.0)
    assert integrate(times, watts, -1.0, 0.0) == pytest.approx(2.0)   # held before the first


def test_power_csv_window(tmp_path):
    meter = PowerCsvMeter(DATA / "power.csv")
    clock = FakeClock(1000.0)
    meter.clock, meter.sleep = clock, clock.sleep

    def run_once():
        clock.t += 0.5

    result = meter.measure(run_once, runs=4, idle_s=1.0)
    # idle 1000..1001 at 3 W; runs 1001..1003: 3 -> 9 W over the first 0.5 s, then 9 W
    assert result.details["idle_watts"]["total"] == pytest.approx(3.0)
    assert result.joules_per_inference == pytest.approx((3.0 + 13.5 - 3.0 * 2.0) / 4)


def test_power_csv_formats_and_errors(tmp_path):
    times, watts = read_power_csv(DATA / "power_iso.csv")
    assert watts == [2.0, 2.0, 6.0] and times[1] - times[0] == pytest.approx(1.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("1000.0,3.0\n1000.5,lots\n")
    with pytest.raises(InputError, match=r"bad\.csv, line 2"):
        read_power_csv(bad)
    with pytest.raises(InputError, match="no such file"):
        find_meter(power_csv=tmp_path / "absent.csv")
    late = PowerCsvMeter(DATA / "power.csv")                  # the log ends at 1003.5
    clock = FakeClock(1003.0)
    late.clock, late.sleep, late.wait_s = clock, clock.sleep, 0.3
    with pytest.raises(InputError, match="not covered"):
        late.measure(lambda: None, runs=1, idle_s=1.0)


def _matmul_model() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.5] * 12)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nothing_readable_gives_a_modelled_figure_only(tmp_path):
    ran = []
    result = profile_energy(_matmul_model(), lambda: ran.append(1), 3, target="x86-avx2",
                            root=tmp_path, nvml=_NoNvml())
    assert result.method == "modelled" and not ran
    assert any(r.startswith("rapl:") for r in result.details["meters"])
    line = result.summary()
    assert line.startswith("modelled:") and "not a measurement" in line
    assert "measured" not in line
    js = result.to_json()
    assert js["method"] == "modelled"
    assert not {"idle_watts", "gross_joules", "run_seconds"} & set(js["details"])


def test_profile_energy_measures_when_readable(tmp_path):
    root = _tree(tmp_path, "rapl")
    pkg = root / ZONES / "intel-rapl:0"
    result = profile_energy(_matmul_model(), lambda: _add_uj(pkg, 1.0), 2, target="x86-avx2",
                            root=root, idle_s=0.01)
    assert result.method == "measured" and result.details["meter"] == "rapl"
    assert result.details["gross_joules"]["package-0"] == pytest.approx(2.0, rel=1e-9)
    assert result.details["modelled_joules_per_inference"] > 0
    assert result.summary().startswith("measured:")
