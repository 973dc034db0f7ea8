"""`import edgert` stays light: no compiler, no TVM, no PyTorch until they are needed."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lazy():
    code = (
        "import sys, time; t = time.perf_counter(); import edgert; dt = time.perf_counter() - t;"
        "heavy = [m for m in ('tvm', 'torch', 'edgert.compiler', 'onnxruntime', 'numba') if m in sys.modules];"
        "print(heavy, dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, seconds = out.stdout.rsplit(" ", 1)
    assert heavy == "[]", f"import edgert pulled in {heavy}"
    print(f"import edgert: {float(seconds) * 1e3:.0f} ms")


def test_session_class_loads_without_compiler():
    code = "import sys, edgert; edgert.Session; print('edgert.compiler' in sys.modules, 'tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
