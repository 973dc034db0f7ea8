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
