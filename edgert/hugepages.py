"""Back a loaded model's weights by transparent huge pages (Linux; best effort).

A weight read from DRAM once per call (every projection of an LLM at one token) crosses a
4 KiB page every 4 KiB: with 4 KiB pages the TLB misses on nearly every page, and the
hardware prefetchers stop at page boundaries (``EDGERT_HUGE_PAGES=0 python
benchmarks/bench_llm.py ...`` measures the difference); numpy's own large arrays are advised
already.

TVM allocates a compiled library's constants itself while the library and its VM load, so
:class:`edgert.backends.tvm_vm.TvmBackend` takes :func:`anonymous_mappings` before loading
and calls :func:`back_by_huge_pages` after: each new (or grown) anonymous read-write mapping
is advised ``MADV_HUGEPAGE`` and collapsed now with ``MADV_COLLAPSE`` (Linux >= 6.1; otherwise
the kernel's khugepaged collapses it later, if it runs). glibc serves allocations below its
dynamic mmap threshold (which rises to the largest block freed so far, up to 32 MiB) from the
brk heap, and in a process that freed large blocks before, the constants land in free space
the heap already had: when the new mappings are too small to hold the constants, the whole
heap is backed too (0.15 s for a 100 MiB heap on the Zen 4, once). Neither call changes the
memory's contents; a failing call is ignored (:data:`last_collapse_errno` keeps why: EAGAIN or
ENOMEM when the kernel has no free huge page at that moment). ``EDGERT_HUGE_PAGES=0`` turns
this off.
"""

from __future__ import annotations

import ctypes
import os
import sys

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
_THP = "/sys/kernel/mm/transparent_hugepage"
last_collapse_errno = 0
"""errno of the last ``MADV_COLLAPSE`` that failed in this process (0: none failed)."""


def huge_page_size() -> int:
    """Bytes of a transparent huge page, or 0 where there are none (not Linux, THP
    ``never``, or turned off by ``EDGERT_HUGE_PAGES=0``)."""
    if not sys.platform.startswith("linux") or os.environ.get("EDGERT_HUGE_PAGES") == "0":
        return 0
    try:
        with open(f"{_THP}/enabled") as f:
            if "[never]" in f.read():
                return 0
        with open(f"{_THP}/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def anonymous_mappings(*, heap_only: bool = False) -> dict[int, int]:
    """The process's anonymous read-write mappings, the brk heap included (only the heap
    with ``heap_only``): ``{start: end}`` addresses, empty where /proc/self/maps cannot be
    read."""
    out = {}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                name = parts[5] if len(parts) > 5 else ""
                if parts[1].startswith("rw") and name in (("[heap]",) if heap_only
                                                          else ("", "[heap]")):
                    start, end = parts[0].split("-")
                    out[int(start, 16)] = int(end, 16)
    except OSError:
        pass
    return out


def new_regions(before: dict[int, int], after: dict[int, int]) -> list[tuple[int, int]]:
    """What ``after`` maps that ``before`` did not: new mappings whole, grown ones (the heap)
    from their old end."""
    return sorted((max(start, before.get(start, start)), end) for start, end in after.items()
                  if end > before.get(start, start))


def union(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ``(start, end)`` regions merged, in address order."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(regions):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def back_by_huge_pages(before: dict[int, int], constants_bytes: int = 0) -> int:
    """Advise and collapse into huge pages what was mapped since ``before`` (anonymous
    memory; the huge-page-aligned part of each region), and the whole brk heap when that is
    less than ``constants_bytes`` (what the load allocated at most, e.g. the library's size)
    over 2. Returns the bytes collapsed now."""
    global last_collapse_errno
    size = huge_page_size()
    if not size:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    collapsed = 0
    regions = new_regions(before, anonymous_mappings())
    if sum(end - start for start, end in regions) < constants_bytes // 2:
        regions = union(regions + list(anonymous_mappings(heap_only=True).items()))
    for start, end in regions:
        lo, hi = -(-start // size) * size, end // size * size
        if hi - lo < size:
            continue
        libc.madvise(lo, hi - lo, MADV_HUGEPAGE)
        if libc.madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            collapsed += hi - lo
        else:
            last_collapse_errno = ctypes.get_errno()
    return collapsed
