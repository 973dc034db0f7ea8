"""Weights backed by transparent huge pages (``edgert/hugepages.py``)."""

from __future__ import annotations

import mmap
import platform

import numpy as np
import pytest

from edgert import hugepages


def _collapse_supported() -> bool:
    if not hugepages.huge_page_size():
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (6, 1)                  # MADV_COLLAPSE


needs_collapse = pytest.mark.skipif(not _collapse_supported(),
                                    reason="needs Linux >= 6.1 with transparent huge pages")


def _huge_kb(start: int) -> int:
    """AnonHugePages (kB) of the mapping that starts at ``start``."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split()[0] and not line.split()[0].endswith(":"):
                found = int(line.split("-")[0], 16) == start
            elif found and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


@needs_collapse
def test_new_anonymous_mapping_is_collapsed_into_huge_pages():
    size = hugepages.huge_page_size()
    before = hugepages.anonymous_mappings()
    region = mmap.mmap(-1, 4 * size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.write(b"\x01" * len(region))                  # populate with 4 KiB pages
        start = np.frombuffer(region, np.uint8).ctypes.data
        # the kernel may merge the mapping with a neighbour made meanwhile (another thread's):
        # one new region covers it
        new = hugepages.new_regions(before, hugepages.anonymous_mappings())
        assert any(lo <= start and start + len(region) <= hi for lo, hi in new), new
        assert _huge_kb(start) == 0
        collapsed = hugepages.back_by_huge_pages(before)
        assert collapsed >= 2 * size                         # at least the aligned middle
        assert _huge_kb(start) * 1024 >= 2 * size
        assert region[:] == b"\x01" * len(region)            # contents unchanged
    finally:
        region.close()


def test_new_regions_takes_new_mappings_and_growth():
    before = {0x1000: 0x5000, 0x10000: 0x20000}
    after = {0x1000: 0x9000, 0x10000: 0x20000, 0x40000: 0x50000}
    assert hugepages.new_regions(before, after) == [(0x5000, 0x9000), (0x40000, 0x50000)]


def test_off_switch_and_old_mappings_are_left_alone(monkeypatch):
    monkeypatch.setenv("EDGERT_HUGE_PAGES", "0")
    assert hugepages.huge_page_size() == 0
    assert hugepages.back_by_huge_pages({}) == 0
    monkeypatch.delenv("EDGERT_HUGE_PAGES")
    # nothing new since the snapshot: nothing advised
    assert hugepages.back_by_huge_pages(hugepages.anonymous_mappings()) == 0


def _matmul_artifact(tmp_path) -> tuple:
    """An artifact whose one weight (float32 1024 x 2048, 8 MiB) TVM allocates on load."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgert.compiler import compile_model

    w = np.random.default_rng(0).standard_normal((1024, 2048)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048])],
        [numpy_helper.from_array(w, "w")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return compile_model(path, tmp_path / "mm.edgert", threads=1), w


# A fresh process, so that the heap is the same every run (after a long test session the
# weights may land anywhere); prints the bytes collapsed and the errno of a failed collapse.
_SESSION = """
import sys
import numpy as np
import edgert
from edgert import hugepages
sess = edgert.Session(sys.argv[1], threads=1)
x = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)
np.save(sys.argv[2], sess.run(None, {"x": x})[0])
print(sess._backend.huge_page_bytes, hugepages.last_collapse_errno)
"""


def _collapsed_bytes(script: str, *args: str) -> int:
    """Run ``script`` in a fresh interpreter; the bytes it collapsed. Skips (with the errno)
    only when the kernel refused for want of free huge pages, which no code of ours decides."""
    import errno
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script, *args], check=True,
                         capture_output=True, text=True).stdout.split()
    collapsed, err = int(out[-2]), int(out[-1])
    if collapsed == 0 and err in (errno.EAGAIN, errno.ENOMEM):
        pytest.skip(f"the kernel had no free huge page now (MADV_COLLAPSE: errno {err})")
    return collapsed


@needs_collapse
def test_session_weights_get_huge_pages(tmp_path):
    art, w = _matmul_artifact(tmp_path)
    assert _collapsed_bytes(_SESSION, str(art), str(tmp_path / "y.npy")) >= \
        hugepages.huge_page_size()
    x = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ w, rtol=1e-4, atol=1e-4)


# TVM imported, glibc's mmap threshold raised by freeing a 64 MiB block, then 100 MiB of free
# space inside the heap: the 8 MiB weight is placed in that space, which no new mapping shows
_REUSED_HEAP = """
import ctypes, sys
import edgert, tvm
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(64 << 20))
chunks = [libc.malloc(64 << 10) for _ in range(1600)]
fence = libc.malloc(64)
for chunk in chunks:
    libc.free(chunk)
from edgert import hugepages
print(edgert.Session(sys.argv[1], threads=1)._backend.huge_page_bytes, hugepages.last_collapse_errno)
"""


@needs_collapse
def test_weights_placed_in_free_heap_space_get_huge_pages(tmp_path):
    art, _ = _matmul_artifact(tmp_path)
    assert _collapsed_bytes(_REUSED_HEAP, str(art)) >= 3 * hugepages.huge_page_size()  # 8 MiB


def test_union_merges_overlapping_and_touching_regions():
    assert hugepages.union([(50, 60), (0, 10), (10, 20), (15, 30), (40, 45)]) == [
        (0, 30), (40, 45), (50, 60)]
