"""Thread counts: TVM's pool is reserved for every logical CPU when edgert is imported, so a
session can ask for more threads than TVM's default (half the logical CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys

from edgert.threads import logical_cpus, physical_cores


def _tvm_num_threads_after_import(env: dict[str, str]) -> str:
    code = "import os, edgert; print(os.environ.get('TVM_NUM_THREADS'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_reserves_one_worker_per_logical_cpu():
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    assert _tvm_num_threads_after_import(env) == str(logical_cpus())


def test_an_explicit_tvm_num_threads_wins():
    assert _tvm_num_threads_after_import({**os.environ, "TVM_NUM_THREADS": "3"}) == "3"


def test_core_counts_are_consistent():
    assert 1 <= physical_cores() <= logical_cpus() <= (os.cpu_count() or 1)
