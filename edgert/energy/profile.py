"""``profile_energy``: measured joules per inference when a meter is readable, else modelled."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgert.energy.meters import probe_meters
from edgert.energy.model import modelled_energy
from edgert.energy.result import EnergyResult


def profile_energy(session: Any, run_once: Callable[[], None], runs: int, *,
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   target: str | None = None, power_csv: str | os.PathLike | None = None,
                   table: str | os.PathLike | None = None, idle_s: float = 1.0,
                   **where: Any) -> EnergyResult:
    """Energy per inference of ``session``: measured with the first readable meter (idle
    power subtracted), else modelled from its graph.

    Args:
        session: the :class:`edgert.Session` (its artifact's graph is what is modelled).
        run_once: runs one inference of ``session`` (the feed bound in).
        runs: how many inferences the measurement runs.
        input_shapes: the shapes ``run_once`` feeds (for the model; default: the model's own,
            a dynamic batch as 1).
        target: which meter to look for (:func:`edgert.energy.meters.probe_meters`; default:
            the artifact's target).
        power_csv: an external meter's ``timestamp,watts`` log: measure with it.
        table: the energy table of the model (default: the shipped 45 nm one).
        idle_s: seconds of idle measured before the runs.
        **where: ``root`` / ``runner`` / ``nvml`` for :func:`probe_meters` (tests).

    Returns:
        The measured result (its ``details["modelled_joules_per_inference"]`` gives the model's
        figure beside it), or the modelled one, whose ``details["meters"]`` says why nothing was
        measured. A modelled result never holds a measured figure.

    Raises:
        InputError: ``power_csv`` is unreadable or does not cover the runs; a bad table.
    """
    if target is None:
        manifest = getattr(session, "manifest", None) or {}
        target = (manifest.get("target") or {}).get("name")
    modelled = modelled_energy(session, input_shapes, table)
    meter, reasons = probe_meters(target, power_csv, **where)
    if meter is not None:
        try:
            measured = meter.measure(run_once, runs, idle_s)
        except OSError as e:                   # the meter stopped being readable
            reasons.append(f"{meter.name}: {e}")
        else:
            measured.details["modelled_joules_per_inference"] = modelled.joules_per_inference
            measured.details["modelled_source"] = modelled.source
            return measured
    modelled.details["meters"] = reasons or ["no meter found"]
    return modelled
