"""An external power meter's log: a CSV of ``timestamp,watts`` rows (``--power-csv FILE``).

The meter (a USB power meter, a lab supply, a smart plug) logs while edgert runs; edgert notes
the wall-clock times of its idle and run windows and integrates the rows over them (trapezoid
rule, :func:`edgert.energy.meter.integrate`). Rows:

    timestamp  Unix seconds (``1733600000.25``) or ISO 8601 (``2026-12-07T19:30:00.250+00:00``;
               without a zone: local time)
    watts      the power at that time

A first row (after comments) that is not numbers is a header; empty lines and ``#`` comments are skipped. After
each window edgert waits up to ``wait_s`` seconds for the log to reach the window's end.
"""

from __future__ import annotations

import csv
import os
import time
from datetime import datetime
from pathlib import Path

from edgert.energy.meter import Meter, Work, integrate
from edgert.errors import InputError


def parse_timestamp(text: str) -> float:
    """Unix seconds of ``text`` (a number or ISO 8601). Raises ValueError."""
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()).timestamp()


def read_power_csv(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """(times, watts) of the rows, sorted by time.

    Raises:
        InputError: the file is unreadable or a row is not ``timestamp,watts`` (names the line).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"power CSV {file}: cannot read it ({e})") from None
    rows: list[tuple[float, float]] = []
    header_allowed = True
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            if len(row) < 2:
                raise ValueError("fewer than 2 columns")
            rows.append((parse_timestamp(row[0]), float(row[1])))
            header_allowed = False
        except ValueError as e:
            if header_allowed:
                header_allowed = False
                continue                            # a header
            raise InputError(f"power CSV {file}, line {n}: expected timestamp,watts, got "
                             f"{','.join(row)[:80]!r} ({e})") from None
    rows.sort()
    return [t for t, _ in rows], [w for _, w in rows]


class PowerCsvMeter(Meter):
    """An external meter's CSV log (wall-clock times)."""

    name = "power-csv"
    wait_s = 5.0

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"power CSV {self.path}: no such file (start the meter's log "
                             f"first)")
        self.clock = time.time
        self.description = f"external meter log {self.path} (timestamp,watts rows, integrated)"

    def _window(self, work: Work) -> tuple[dict[str, float], float]:
        t0 = self.clock()
        work(lambda: None)
        t1 = self.clock()
        waited = 0.0
        while True:
            times, watts = read_power_csv(self.path)
            if times and times[-1] >= t1:
                break
            if waited >= self.wait_s:
                last = f"its last row is at {times[-1]:.3f}" if times else "it has no rows"
                raise InputError(f"power CSV {self.path}: the window {t0:.3f}..{t1:.3f} (Unix "
                                 f"seconds) is not covered: {last}")
            self.sleep(0.1)
            waited += 0.1
        if times[0] > t0:
            raise InputError(f"power CSV {self.path}: its first row ({times[0]:.3f}) is after "
                             f"the window's start ({t0:.3f}): the log must run before edgert")
        return {"total": integrate(times, watts, t0, t1)}, t1 - t0
