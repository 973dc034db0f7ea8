"""Execution backends behind :class:`edgert.Session`.

A backend takes a verified :class:`~edgert.artifact.Artifact` and runs its graph on a list of
validated input arrays, returning the outputs in graph order. Each backend module is imported
only when a session asks for it, so ``import edgert`` stays light.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgert.artifact import Artifact
from edgert.errors import InputError


class Backend(Protocol):
    name: str

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the graph; inputs and outputs in graph order."""
        ...


BACKENDS = ("tvm", "numba")


def load_backend(name: str, artifact: Artifact, *, threads: int | None = None,
                 rpc: str | None = None) -> Backend:
    """Create the backend ``name`` for ``artifact`` (``rpc="HOST:PORT"``: the ``tvm`` backend on
    a remote board's TVM RPC server, :mod:`edgert.backends.rpc`).

    Every backend loads through here: the packed low-bit weight layouts are checked first
    (:func:`edgert.layouts.check_lut_layouts`; a stale artifact raises ``ArtifactError``)."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    if rpc is not None and name != "tvm":
        raise InputError(f"--rpc runs the compiled library on a board: use the tvm backend, "
                         f"not {name!r}")
    from edgert.layouts import check_lut_layouts

    check_lut_layouts(artifact)
    if rpc is not None:
        from edgert.backends.rpc import RpcBackend

        return RpcBackend(artifact, rpc, threads=threads)
    if name == "tvm":
        from edgert.backends.tvm_vm import TvmBackend

        return TvmBackend(artifact, threads=threads)
    if name == "numba":
        from edgert.backends.numba_backend import NumbaBackend

        return NumbaBackend(artifact, threads=threads)
    raise InputError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
