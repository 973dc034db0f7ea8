"""Thread counts for the compiled kernels.

TVM sizes its worker pool once per process, when the first parallel kernel runs, from
``TVM_NUM_THREADS`` (default: half the logical CPUs). ``runtime.config_threadpool`` can
shrink the pool later but never grow it, so ``Session(threads=N)`` could not ask for more
than that first size. ``reserve_tvm_pool`` (called when ``edgert`` is imported, before
TVM is) sets the pool's upper bound to every logical CPU unless the user set it; each
session then picks its own count, by default the physical cores.
"""

from __future__ import annotations

import glob
import os


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


def reserve_tvm_pool() -> None:
    """Let TVM's pool hold one worker per logical CPU (an explicit TVM_NUM_THREADS wins)."""
    os.environ.setdefault("TVM_NUM_THREADS", str(logical_cpus()))
