"""TVM's RPC server inside the emulated aarch64 Python (run by ``edgert.targets.qemu``).

``python -m tvm.exec.rpc_server`` starts its listener in a fresh ``sys.executable`` process,
which the host kernel cannot exec (an aarch64 binary: qemu-user runs only the process it was
given). This script runs the same listener in this process instead (TVM's
``_popen_start_rpc_server``, what that child process would run); each connection is still
served in a forked process, which qemu-user supports. Usage: ``qemu_rpc_server.py PORT``.
"""

import sys
import time

from tvm.rpc import server


def main() -> None:
    port = int(sys.argv[1])
    server._popen_start_rpc_server("127.0.0.1", port, port + 1, silent=True)
    while True:              # the listener runs in a thread
        time.sleep(3600)


if __name__ == "__main__":
    main()
