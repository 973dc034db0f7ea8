"""Target descriptions: what edgert can compile for, and whether this machine can run it.

A :class:`Target` holds everything the compiler and the runtime need to know about a
platform: the TVM target (in the dict form TVM 0.27 requires), the CPU architecture and
features the generated code relies on, the C compiler used to link the library, and the GPU
(if any). ``host`` is not a target of its own: it resolves to the best known target that the
machine it runs on can execute.
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgert.errors import TargetError


@dataclass(frozen=True)
class Target:
    """One compilation target.

    Attributes:
        name: the registry name (``rpi5``, ``x86-avx2``...).
        description: one line for ``edgert targets``.
        arch: CPU architecture of the host code, as ``platform.machine()`` reports it.
        cpu_features: ``/proc/cpuinfo`` flags the generated CPU code needs.
        llvm: the TVM ``llvm`` target dict for the CPU side.
        cross_cc: C compiler that links the library when it differs from the build machine's.
        cross_package: the Debian package that provides ``cross_cc``.
        cuda_arch: ``sm_XY`` for CUDA targets, else ``None``.
    """

    name: str
    description: str
    arch: str
    cpu_features: tuple[str, ...]
    llvm: dict[str, Any]
    cross_cc: str | None = None
    cross_package: str | None = None
    cuda_arch: str | None = None
    vector_isa: str = ""

    @property
    def device(self) -> str:
        """``"cuda"`` for GPU targets, ``"cpu"`` otherwise."""
        return "cuda" if self.cuda_arch else "cpu"

    def tvm_target_dict(self, num_cores: int | None = None) -> dict[str, Any]:
        """The TVM target as a dict (TVM 0.27 rejects the old target strings)."""
        host = copy.deepcopy(self.llvm)
        if num_cores:
            host["num-cores"] = int(num_cores)
        if self.cuda_arch:
            return {"kind": "cuda", "arch": self.cuda_arch, "host": host}
        return host

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (``edgert targets --json``, artifact manifests)."""
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "device": self.device,
            "cpu_features": list(self.cpu_features),
            "vector_isa": self.vector_isa,
            "cuda_arch": self.cuda_arch,
            "cross_cc": self.cross_cc,
            "tvm_target": self.tvm_target_dict(),
        }


_X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
_ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
_ARM_CC = dict(cross_cc="aarch64-linux-gnu-gcc", cross_package="gcc-aarch64-linux-gnu")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("x86-avx2", "x86-64 with AVX2 and FMA (Haswell and later)", "x86_64",
               ("avx2", "fma"), {**_X86, "mcpu": "haswell"}, vector_isa="avx2"),
        Target("x86-avx512", "x86-64 with AVX-512 VNNI (Cascade Lake and later)", "x86_64",
               ("avx512f", "avx512bw", "avx512_vnni"), {**_X86, "mcpu": "cascadelake"},
               vector_isa="avx512-vnni"),
        Target("aarch64", "generic 64-bit Arm with NEON", "aarch64", ("asimd",),
               {**_ARM, "mcpu": "generic", "mattr": ["+neon"]}, vector_isa="neon", **_ARM_CC),
        Target("rpi5", "Raspberry Pi 5 (Cortex-A76: NEON, dotprod)", "aarch64",
               ("asimd", "asimddp"),
               {**_ARM, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
               vector_isa="neon-dotprod", **_ARM_CC),
        Target("jetson-orin", "NVIDIA Jetson Orin (Cortex-A78AE + CUDA sm_87)", "aarch64",
               ("asimd", "asimddp"),
               {**_ARM, "mcpu": "cortex-a78", "mattr": ["+neon", "+dotprod"]},
               cuda_arch="sm_87", vector_isa="neon-dotprod", **_ARM_CC),
        Target("cuda-sm80", "NVIDIA Ampere GPU (A100, sm_80) on an x86-64 host", "x86_64",
               ("avx2",), {**_X86, "mcpu": "haswell"}, cuda_arch="sm_80", vector_isa="avx2"),
        Target("cuda-sm90", "NVIDIA Hopper GPU (H100/H200, sm_90) on an x86-64 host", "x86_64",
               ("avx2",), {**_X86, "mcpu": "haswell"}, cuda_arch="sm_90", vector_isa="avx2"),
    ]
}


@lru_cache(maxsize=1)
def host_cpu_features() -> frozenset[str]:
    """CPU feature flags of this machine (``flags``/``Features`` lines of /proc/cpuinfo), or
    the comma-separated list in ``$EDGERT_CPU_FEATURES`` when set (an emulator such as
    qemu-user shows the host's /proc/cpuinfo to the guest)."""
    forced = os.environ.get("EDGERT_CPU_FEATURES")
    if forced is not None:
        return frozenset(f for f in forced.replace(",", " ").split() if f)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def host_arch() -> str:
    """This machine's architecture, normalised to ``x86_64`` or ``aarch64``."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def resolve_host() -> Target:
    """The best CPU target this machine can run (what ``--target host`` means)."""
    for name in ("x86-avx512", "x86-avx2", "rpi5", "aarch64"):
        if can_run_here(TARGETS[name])[0]:
            return TARGETS[name]
    raise TargetError(
        f"no known target matches this machine ({host_arch()}); "
        f"edgert needs x86-64 with AVX2 or 64-bit Arm with NEON"
    )


def get_target(name: str) -> Target:
    """Look a target up by name; ``host`` resolves to this machine's CPU target."""
    if name == "host":
        return resolve_host()
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target {name!r}; known targets: host, {', '.join(TARGETS)}"
        ) from None


def can_run_here(target: Target) -> tuple[bool, str]:
    """Whether code built for ``target`` runs on this machine, and if not, why."""
    if host_arch() != target.arch:
        return False, f"it needs an {target.arch} CPU, this machine is {host_arch()}"
    missing = [f for f in target.cpu_features if f not in host_cpu_features()]
    if missing:
        return False, f"this CPU lacks {', '.join(missing)}"
    if target.cuda_arch and not cuda_device_present():
        return False, f"it needs an NVIDIA GPU ({target.cuda_arch}) and none was found"
    return True, ""


def check_can_run(target: Target) -> None:
    """Raise :class:`TargetError` saying where ``target`` runs if it cannot run here."""
    ok, why = can_run_here(target)
    if not ok:
        raise TargetError(
            f"this artifact was compiled for {target.name} ({target.description}): {why}"
        )


def cuda_device_present() -> bool:
    """True when an NVIDIA driver and GPU are visible (checked without importing TVM)."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def list_targets() -> list[Target]:
    """All registered targets in a stable order."""
    return list(TARGETS.values())


__all__ = [
    "Target",
    "TARGETS",
    "get_target",
    "resolve_host",
    "can_run_here",
    "check_can_run",
    "host_cpu_features",
    "host_arch",
    "cuda_device_present",
    "list_targets",
]
