"""``Meter``: measure joules per inference with an energy counter or power samples.

``Meter.measure(run_once, runs, idle_s)`` does, for every meter:

1. idle: nothing runs for ``idle_s`` seconds; the energy over that window gives the idle power
   ``P_idle`` (watts) of each domain;
2. runs: ``run_once()`` is called ``runs`` times; the energy ``E`` over that window (``T``
   seconds) is read;
3. joules per inference = ``(E - P_idle * T) / runs``, summed over the meter's total domains.

How the energy over a window is read depends on the meter:

- :class:`CounterMeter` (RAPL, NVML total energy): a cumulative counter in joules, read at
  the window's ends and between runs (every ``poll_s`` while idle) so that a counter that wraps
  (at its ``max_energy_range``) is caught as long as it wraps at most once between two reads;
- :class:`PowerMeter` (INA3221 rails, the Pi 5 PMIC, NVML power): power samples taken by a
  background thread every ``interval_s``, integrated by the trapezoid rule over the window;
- the external meter's CSV (:mod:`.power_csv`): its rows, integrated the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgert.energy.result import EnergyResult

Work = Callable[[Callable[[], None]], None]
"""The work of a window: called with ``tick``, which it calls between units of work."""


def integrate(times: Sequence[float], watts: Sequence[float], t0: float, t1: float) -> float:
    """Joules over ``[t0, t1]`` of power samples (``times`` ascending, seconds), by the
    trapezoid rule, the power linearly interpolated at ``t0`` and ``t1`` (held constant beyond
    the first / last sample).

    Raises:
        ValueError: no samples, or ``t1 < t0``.
    """
    if not times:
        raise ValueError("no power samples")
    if t1 < t0:
        raise ValueError(f"window end {t1} before its start {t0}")

    def at(t: float) -> float:
        if t <= times[0]:
            return watts[0]
        if t >= times[-1]:
            return watts[-1]
        for i in range(1, len(times)):
            if times[i] >= t:
                ta, tb = times[i - 1], times[i]
                f = 0.0 if tb == ta else (t - ta) / (tb - ta)
                return watts[i - 1] + f * (watts[i] - watts[i - 1])
        return watts[-1]

    pts = [(t0, at(t0))] + [(t, w) for t, w in zip(times, watts) if t0 < t < t1] + [(t1, at(t1))]
    return sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(pts, pts[1:]))


class Meter:
    """Something that reads a device's energy: subclasses say how (``_window``).

    Attributes:
        name: how results name the meter (``rapl``, ``nvml``, ``ina3221``, ``rpi5-pmic``,
            ``power-csv``).
        description: what it reads, for the result's ``source``.
        clock: seconds (monotonic for counters and samples, the wall clock for a CSV).
        sleep: how the idle window waits.
    """

    name = "meter"
    description = ""
    poll_s = 0.25

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep

    def measure(self, run_once: Callable[[], None], runs: int, idle_s: float = 1.0) -> EnergyResult:
        """Joules per inference of ``run_once`` (one inference), idle power subtracted.

        Args:
            run_once: runs one inference.
            runs: how many times to call it (more runs: a smaller share of meter noise).
            idle_s: seconds of idle measured before the runs (> 0).

        Returns:
            ``EnergyResult(method="measured")``: the breakdown holds the meter's total
            domains (idle subtracted), ``details`` the idle power, the gross energy, the
            window lengths and every domain read.
        """
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        if idle_s <= 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")

        def idle(tick: Callable[[], None]) -> None:
            left = idle_s
            while left > 0:
                step = min(self.poll_s, left)
                self.sleep(step)
                left -= step
                tick()

        def work(tick: Callable[[], None]) -> None:
            for _ in range(runs):
                run_once()
                tick()

        idle_j, idle_t = self._window(idle)
        run_j, run_t = self._window(work)
        return self._result(idle_j, idle_t, run_j, run_t, runs)

    # --- for subclasses ------------------------------------------------------------------
    def _window(self, work: Work) -> tuple[dict[str, float], float]:
        """Run ``work``; return (joules by domain over the window, the window's seconds)."""
        raise NotImplementedError

    def total_domains(self, domains: Sequence[str]) -> list[str]:
        """The domains whose sum is the device's energy (the others overlap them)."""
        return list(domains)

    def method(self) -> str:
        """How the energy is read, in words."""
        return self.description

    # --- the result ----------------------------------------------------------------------
    def _result(self, idle_j: dict[str, float], idle_t: float, run_j: dict[str, float],
                run_t: float, runs: int) -> EnergyResult:
        idle_w = {d: (idle_j.get(d, 0.0) / idle_t if idle_t > 0 else 0.0) for d in run_j}
        net = {d: (run_j[d] - idle_w[d] * run_t) / runs for d in run_j}
        total = self.total_domains(list(run_j))
        per_inference = sum(net[d] for d in total)
        idle_total = sum(idle_w[d] for d in total)
        details: dict[str, Any] = {
            "meter": self.name,
            "method": (f"{self.method()}: energy over {runs} runs ({run_t:.3f} s) minus the "
                       f"idle power ({idle_total:.3f} W, measured over {idle_t:.3f} s before "
                       f"the runs) times the runs' time, divided by the runs"),
            "runs": runs, "run_seconds": run_t, "idle_seconds": idle_t,
            "idle_watts": {d: idle_w[d] for d in total},
            "gross_joules": {d: run_j[d] for d in total},
            "total_domains": total,
            "all_domains_net_joules_per_inference": net,
        }
        if per_inference <= 0:
            details["warning"] = ("the runs used no more energy than idle: the meter's "
                                  "resolution or noise exceeds the work; use more runs")
        return EnergyResult("measured", per_inference, {d: net[d] for d in total},
                            f"{self.name}: {self.description}", details)


class CounterMeter(Meter):
    """A meter of cumulative energy counters: subclasses give :meth:`read_counters`."""

    def read_counters(self) -> dict[str, tuple[float, float | None]]:
        """domain -> (the counter in joules, the value it wraps at in joules or None)."""
        raise NotImplementedError

    def _window(self, work: Work) -> tuple[dict[str, float], float]:
        last = self.read_counters()
        totals = {d: 0.0 for d in last}

        def tick() -> None:
            nonlocal last
            now = self.read_counters()
            for d, (value, wrap) in now.items():
                before = last[d][0]
                delta = value - before
                if delta < 0 and wrap:
                    delta += wrap
                totals[d] += max(delta, 0.0)
            last = now

        t0 = self.clock()
        work(tick)
        tick()
        return totals, self.clock() - t0


class PowerMeter(Meter):
    """A meter of instantaneous power: subclasses give :meth:`sample`; a background thread
    samples every ``interval_s`` during each window."""

    interval_s = 0.02

    def sample(self) -> dict[str, float]:
        """domain -> watts now."""
        raise NotImplementedError

    def _window(self, work: Work) -> tuple[dict[str, float], float]:
        samples: list[tuple[float, dict[str, float]]] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def take() -> None:
            samples.append((self.clock(), self.sample()))

        def loop() -> None:
            try:
                while not stop.wait(self.interval_s):
                    take()
            except BaseException as e:  # noqa: BLE001 (reported by the caller)
                errors.append(e)

        t0 = self.clock()
        take()
        thread = threading.Thread(target=loop, name=f"edgert-{self.name}-sampler", daemon=True)
        thread.start()
        try:
            work(lambda: None)
        finally:
            stop.set()
            thread.join()
        if errors:
            raise errors[0]
        take()
        t1 = self.clock()
        samples.sort(key=lambda s: s[0])
        times = [t for t, _ in samples]
        joules = {d: integrate(times, [s[1].get(d, 0.0) for s in samples], t0, t1)
                  for d in samples[0][1]}
        return joules, t1 - t0
