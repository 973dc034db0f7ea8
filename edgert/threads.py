"""Thread counts for the compiled kernels.

TVM sizes its worker pool once per process, when the first parallel kernel runs, from
``TVM_NUM_THREADS`` (default: half the logical CPUs). ``runtime.config_threadpool`` can
shrink the pool later but never grow it, so ``Session(threads=N)`` could not ask for more
than that first size. ``reserve_tvm_pool`` (called when ``edgert`` is imported, before
TVM is) sets the pool's upper bound to every logical CPU unless the user set it; each
session then picks its own count, by default the physical cores.

How the pool waits and where its threads may run is a *thread policy* (:data:`POLICIES`),
also set at import as TVM environment defaults: ``EDGERT_THREAD_POLICY`` names one (default
:data:`DEFAULT_POLICY`), and a ``TVM_*`` variable the user set wins over the policy's value.
TVM reads these once per process, so the policy holds for every session in it.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from typing import Callable

POLICIES: dict[str, dict[str, str]] = {
    # TVM's own behaviour: an idle worker calls sched_yield 300000 times (0.1-0.3 s) before it
    # sleeps on a condition variable; workers are pinned one per core; every run uses all of
    # the session's threads.
    "tvm": {},
    # as "tvm", but the OS may move every worker to any core.
    "unbound": {"TVM_BIND_THREADS": "0"},
    # unpinned, and an idle worker sleeps at once (each parallel kernel then wakes it).
    "nospin": {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "0"},
    # TVM's pool as in "tvm", but each session times its runs and uses 1 thread instead of
    # all of them while that is faster (other processes or another spinning pool hold the
    # cores): see AdaptiveThreads.
    "adaptive": {},
}
"""Thread policy name -> the TVM environment defaults it sets."""
DEFAULT_POLICY = "adaptive"
"""The policy used when ``EDGERT_THREAD_POLICY`` is unset."""


def logical_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Distinct (package, core) pairs among the usable CPUs; logical CPUs if unknown."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = set()
    for topo in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology"):
        cpu = int(topo.split("/")[-2][3:])
        if usable is not None and cpu not in usable:
            continue
        try:
            with open(f"{topo}/core_id") as f_core, open(f"{topo}/physical_package_id") as f_pkg:
                cores.add((f_pkg.read().strip(), f_core.read().strip()))
        except OSError:
            return logical_cpus()
    return len(cores) or logical_cpus()


def thread_policy() -> str:
    """The policy named by ``EDGERT_THREAD_POLICY`` (:data:`DEFAULT_POLICY` when unset; an
    unknown name warns once and falls back to it: this runs at import, where an exception
    would break ``import edgert``)."""
    name = os.environ.get("EDGERT_THREAD_POLICY", "").strip().lower() or DEFAULT_POLICY
    if name not in POLICIES:
        warnings.warn(f"EDGERT_THREAD_POLICY={name!r} is not one of {', '.join(POLICIES)}; "
                      f"using {DEFAULT_POLICY!r}", RuntimeWarning, stacklevel=2)
        return DEFAULT_POLICY
    return name


def reserve_tvm_pool() -> None:
    """Let TVM's pool hold one worker per logical CPU and set the thread policy's TVM
    variables; a TVM variable already in the environment wins. Must run before TVM's pool
    starts (``edgert``'s import does it)."""
    os.environ.setdefault("TVM_NUM_THREADS", str(logical_cpus()))
    for key, value in POLICIES[thread_policy()].items():
        os.environ.setdefault(key, value)


class AdaptiveThreads:
    """Chooses, run by run, between ``threads`` workers and 1 (the "adaptive" policy).

    A parallel kernel splits its work evenly over the workers and waits for the slowest, so
    when other processes (or another runtime's spinning pool) hold the cores, a run waits for
    a descheduled worker: a 100 us kernel took milliseconds. One thread only loses its share.
    The count in use keeps a window of its last run times (wall seconds); every ``gap`` runs
    the other count is tried for ``TRIES`` runs and taken if their median is smaller than the
    window's. ``gap`` is 32 after a switch and doubles (to 1024) each time a try loses; a try
    comes at once when the window's median grows past 1.5x what it was at the last decision
    (the machine got busy).

    Slower runs say when the machine got busy; nothing in 1-thread runs says when it got quiet
    again (their time hardly changes). ``idle`` (:func:`idle_cpu_seconds` where the OS tells)
    answers that: while on 1 thread, every :attr:`PROBE_SECONDS` of wall time the chooser
    reads the machine's idle CPU time, and when at least :attr:`IDLE_SHARE` of the other
    workers' CPUs sat idle over that interval it tries all threads at the next run. Leaving
    all threads for 1 takes a try that is :attr:`MARGIN` faster, so noise on a quiet machine
    does not give away the parallel speed.
    """

    WINDOW = 5
    TRIES = 3
    FIRST_GAP = 32
    MAX_GAP = 1024
    SLOWER = 1.5
    MARGIN = 0.85
    PROBE_SECONDS = 0.05
    IDLE_SHARE = 0.75

    def __init__(self, threads: int,
                 idle: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.full = threads
        self.idle = idle
        self.clock = clock
        self.probed: tuple[float, float] | None = None   # (clock, idle CPU seconds) last read
        self.best = threads
        self.kept: list[float] = []          # the best count's recent run times
        self.trial: list[float] = []         # the other count's, during a try
        self.gap = 2                         # the first try comes early
        self.until_try = self.gap
        self.reference = float("inf")        # the window's median at the last decision

    def next_count(self) -> int:
        """The thread count for the next run."""
        if self.full == 1:
            return 1
        if self.best == 1 and not self.trial and self._cores_idle():
            self.until_try = 0
        if self.until_try <= 0:
            return 1 if self.best == self.full else self.full
        self.until_try -= 1
        return self.best

    def record(self, count: int, seconds: float) -> None:
        """Note that a run with ``count`` threads took ``seconds`` (wall)."""
        if self.full == 1:
            return
        if count == self.best:
            self.kept = [*self.kept[1 - self.WINDOW:], seconds]
            if len(self.kept) == self.WINDOW and _median(self.kept) > self.SLOWER * self.reference:
                self.until_try = 0
            return
        self.trial.append(seconds)
        if len(self.trial) < self.TRIES:
            return
        needed = 1.0 if count == self.full else self.MARGIN
        if not self.kept or _median(self.trial) < needed * _median(self.kept):
            self.best, self.kept, self.gap = count, self.trial, self.FIRST_GAP
        else:
            self.gap = max(self.FIRST_GAP, min(2 * self.gap, self.MAX_GAP))
        self.trial = []
        self.until_try = self.gap
        self.reference = _median(self.kept)
        self.probed = None

    def _cores_idle(self) -> bool:
        """Whether the other workers' CPUs sat idle since the last probe (read at most every
        :attr:`PROBE_SECONDS`; the first read after a decision only starts an interval)."""
        if self.idle is None:
            return False
        now = self.clock()
        if self.probed is not None and now - self.probed[0] < self.PROBE_SECONDS:
            return False
        seconds = self.idle()
        if seconds is None:
            self.idle = None
            return False
        last, self.probed = self.probed, (now, seconds)
        if last is None:
            return False
        idle_cpus = (seconds - last[1]) / (now - last[0])
        return idle_cpus >= self.IDLE_SHARE * (self.full - 1)


def idle_cpu_seconds() -> float | None:
    """The machine's idle CPU time so far, summed over CPUs (seconds; Linux ``/proc/stat``'s
    idle and iowait, in clock ticks of usually 10 ms), or None where it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        return (int(fields[4]) + int(fields[5])) / _TICKS_PER_SECOND
    except (OSError, ValueError, IndexError):
        return None


_TICKS_PER_SECOND = (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf")
                     and "SC_CLK_TCK" in os.sysconf_names else 100)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
