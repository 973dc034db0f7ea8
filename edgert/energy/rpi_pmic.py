"""Raspberry Pi 5 power: the PMIC's ADC read by ``vcgencmd pmic_read_adc``.

The command prints one line per reading, currents and voltages of the same rails::

       VDD_CORE_A current(7)=0.67338000A
       VDD_CORE_V volt(15)=0.88300000V
        EXT5V_V volt(24)=5.15000000V

A rail's power is its current times its voltage (``<rail>_A`` with ``<rail>_V``); voltages
without a current (``EXT5V_V``, the 5 V input) are reported, not summed. The total is the sum
of the rails: the SoC, memory and board rails behind the PMIC, without the PMIC's own
conversion losses and without USB / peripheral power on the 5 V input.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence

from edgert.energy.meter import PowerMeter

COMMAND = ("vcgencmd", "pmic_read_adc")
LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")

Runner = Callable[[Sequence[str]], str]


def run_command(cmd: Sequence[str]) -> str:
    """Run ``cmd``; its standard output (OSError when it fails or is missing)."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"{' '.join(cmd)}: {e}") from None
    if done.returncode != 0:
        raise OSError(f"{' '.join(cmd)} exited with {done.returncode}: "
                      f"{(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


def parse_pmic(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """(rail -> watts, voltage-only reading -> volts) of ``vcgencmd pmic_read_adc`` output."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    watts = {rail: a * volts[rail] for rail, a in amps.items() if rail in volts}
    others = {rail: v for rail, v in volts.items() if rail not in amps}
    return watts, others


class RpiPmicMeter(PowerMeter):
    """The Pi 5 PMIC rails, sampled by running the command (``runner`` injectable)."""

    name = "rpi5-pmic"
    description = "Raspberry Pi 5 PMIC rails (vcgencmd pmic_read_adc), sampled"
    interval_s = 0.1

    def __init__(self, runner: Runner | None = None) -> None:
        super().__init__()
        self.runner = runner or run_command
        watts, _ = parse_pmic(self.runner(COMMAND))
        if not watts:
            raise OSError("vcgencmd pmic_read_adc printed no rail currents")

    def sample(self) -> dict[str, float]:
        return parse_pmic(self.runner(COMMAND))[0]
