"""Run an artifact's compiled library on the TVM Relax virtual machine.

Only ``tvm.runtime`` is used here, so this works with ``TVM_USE_RUNTIME_LIB=1`` (the
runtime-only mode meant for devices, where the compiler library is absent).
"""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np

from edgert.artifact import Artifact
from edgert.errors import ArtifactError, InputError, TargetError
from edgert.targets import TARGETS, check_can_run
from edgert.threads import physical_cores


class TvmBackend:
    """The compiled library of an artifact, loaded into a Relax VM."""

    name = "tvm"

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        target_name = artifact.manifest.get("target", {}).get("name")
        if target_name not in TARGETS:
            raise TargetError(f"{artifact.path}: unknown target {target_name!r} in the manifest")
        self.target = TARGETS[target_name]
        check_can_run(self.target)
        lib_member = artifact.lib_member
        if not lib_member or lib_member not in artifact.members:
            raise ArtifactError(f"{artifact.path}: no compiled library in the artifact")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        self.threads = threads if threads is not None else physical_cores()

        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        self.device = tvm.cuda(0) if self.target.device == "cuda" else tvm.cpu(0)
        self._module = _load_library(artifact.members[lib_member], artifact.path)
        self._vm = VirtualMachine(self._module, self.device)
        self._main = self._vm["main"]
        self._configured = threading.local()

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._configure_threads()
        args = [self._tvm.runtime.tensor(a, self.device) for a in inputs]
        result = self._main(*args)
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

    def _configure_threads(self) -> None:
        # TVM's thread pool is per calling thread: configure each thread on first use.
        if getattr(self._configured, "done", False):
            return
        config = self._tvm.get_global_func("runtime.config_threadpool")
        config(1, self.threads)
        self._configured.done = True


def _load_library(data: bytes, source: os.PathLike) -> object:
    """dlopen the library bytes through a temporary file (removed right after loading)."""
    import tvm

    with tempfile.TemporaryDirectory(prefix="edgert-lib-") as tmp:
        lib_path = os.path.join(tmp, "model.so")
        with open(lib_path, "wb") as f:
            f.write(data)
        try:
            return tvm.runtime.load_module(lib_path)
        except Exception as e:
            raise ArtifactError(f"{source}: the compiled library does not load: {e}") from None
