"""What the benchmark scripts share: printing and saving their JSON result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result`` as one JSON line (for logs) and, when ``path`` is given, write it there
    indented."""
    print(json.dumps(result))
    if path:
        path.write_text(json.dumps(result, indent=2))


def kernel_table(label: str, session: Any, feed: dict, top: int,
                 repeats: int = 20) -> list[dict[str, Any]]:
    """Print the ``top`` slowest kernels of one edgert run (``Session.kernel_times``: calls and
    ms per run, share of the run, the VM's own time as one row) under ``label``; returns
    them as rows."""
    times = session.kernel_times(feed, repeats=repeats)
    total = sum(t.ms for t in times) or 1.0
    print(f"  {label}: {total:.3f} ms a run, top {top} of {len(times)} rows")
    rows = []
    for t in times[:top]:
        print(f"    {t.name:<58}{t.calls:>5}x{t.ms:>10.3f} ms{100 * t.ms / total:>6.1f}%")
        rows.append({"kernel": t.name, "calls": t.calls, "ms": t.ms})
    return rows
