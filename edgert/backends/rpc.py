"""Run an artifact's compiled library on a remote board through TVM's RPC server.

The board runs TVM's stock server (``python -m tvm.exec.rpc_server --host 0.0.0.0 --port
9091``, the TVM runtime is enough there); this machine uploads the artifact's ``lib/model.so``
once per session, loads it into a Relax VM on the board and sends inputs / fetches outputs on
every call. The artifact must have been compiled for the board (``--target rpi5`` for a
Raspberry Pi 5): the local machine does not need to be able to run it.

Errors: an unreachable server or a library the board cannot load (another architecture) is a
:class:`~edgert.errors.TargetError` naming the address; a malformed address an
:class:`~edgert.errors.InputError`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from edgert.artifact import Artifact
from edgert.backends.tvm_vm import as_list, compiled_library
from edgert.errors import InputError, TargetError, last_line


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; raises :class:`InputError` when malformed."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"RPC address must be HOST:PORT (e.g. 192.168.1.20:9091), got {address!r}")
    return host, int(port)


def connect(address: str) -> object:
    """An RPC session with the TVM RPC server at ``HOST:PORT``.

    Raises:
        InputError: a malformed address.
        TargetError: the server cannot be reached.
    """
    from tvm import rpc

    host, port = parse_address(address)
    try:
        return rpc.connect(host, port)
    except Exception as e:   # noqa: BLE001 - TVM raises plain errors for socket problems
        raise TargetError(f"cannot reach the RPC server at {host}:{port}: {last_line(e)} (is "
                          "`python -m tvm.exec.rpc_server` running there?)") from None


class RpcBackend:
    """The artifact's library loaded into a Relax VM on a remote TVM RPC server.

    Args:
        artifact: a verified artifact (its target is the board's, not this machine's).
        address: ``HOST:PORT`` of the board's RPC server.
        threads: worker threads on the board (default: the server's default).
    """

    name = "tvm-rpc"

    def __init__(self, artifact: Artifact, address: str, *, threads: int | None = None) -> None:
        host, port = parse_address(address)
        self.target, library = compiled_library(artifact, threads)

        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        where = f"the RPC server at {host}:{port}"
        self.remote = connect(address)
        digest = artifact.manifest.get("members", {}).get(artifact.lib_member, "lib")  # checked at read
        remote_name = f"edgert-{digest[:16]}.so"
        with tempfile.TemporaryDirectory(prefix="edgert-rpc-") as tmp:
            path = os.path.join(tmp, remote_name)
            with open(path, "wb") as f:
                f.write(library)
            try:
                self.remote.upload(path, target=remote_name)
                module = self.remote.load_module(remote_name)
            except Exception as e:   # noqa: BLE001
                raise TargetError(
                    f"{where} cannot load {artifact.path} (compiled for {self.target.name}: "
                    f"{self.target.description}): {last_line(e)}") from None
        self.device = self.remote.cuda(0) if self.target.device == "cuda" else self.remote.cpu(0)
        if threads is not None:
            self.remote.get_function("runtime.config_threadpool")(1, threads)
        self.threads = threads
        self._vm = VirtualMachine(module, self.device)
        self._main = self._vm["main"]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        args = [self._tvm.runtime.tensor(a, self.device) for a in inputs]
        result = self._main(*args)
        return [r.numpy() for r in as_list(result)]
