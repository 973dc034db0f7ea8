"""``python3 deploy/edgert ...``: the board CLI of a runtime bundle (copied into the bundle as
``edgert/__main__.py``; ``python3 -m edgert`` from the bundle folder works as well).

Run as ``python3 deploy/edgert``, Python puts ``deploy/edgert`` itself first on ``sys.path``;
the bundle's root (``deploy/``, holding ``edgert/``, ``tvm/`` and ``tvm_ffi/``) must be there
instead, so that ``import edgert`` finds the package and not its modules one by one.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(_here)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
if _root not in sys.path:
    sys.path.insert(0, _root)
os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

from edgert.board_cli import main  # noqa: E402

sys.exit(main())
