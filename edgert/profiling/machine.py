"""The ``machine`` object of a profile: what the numbers were measured on."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None, roofline_gbps: float | None) -> dict[str, Any]:
    """Host name, OS, CPU, cores, threads used, versions, and the measured read bandwidth."""
    from edgert import __version__
    from edgert.threads import physical_cores

    try:
        import tvm
        tvm_version = tvm.__version__
    except Exception:                               # a board with the runtime only
        tvm_version = None
    return {"hostname": platform.node(), "os": f"{platform.system()} {platform.release()}",
            "arch": platform.machine(), "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "edgert": __version__, "tvm": tvm_version,
            "read_bandwidth_gbps": roofline_gbps}
