"""Small inline-SVG charts for the HTML report: no JavaScript, no external resources."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#3b6fb6", "#e07b39", "#4e9a5b", "#b94a6a", "#8a6bbf", "#c2a13a", "#3aa6a6",
           "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def hbars(labels: Sequence[str], values: Sequence[float], *, unit: str, title: str,
          width: int = 720, notes: Sequence[str] | None = None,
          colors: Sequence[str] | None = None) -> str:
    """A horizontal bar chart: one bar per label, its value printed after it (``unit``)."""
    row, left, top = 20, 220, 24
    height = top + row * max(1, len(values)) + 10
    scale = (width - left - 170) / max(max(values, default=0.0), 1e-30)
    parts = [_open(width, height, title), _title(title)]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        color = (colors or PALETTE)[i % len(colors or PALETTE)] if colors else PALETTE[0]
        note = f" {notes[i]}" if notes else ""
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" {FONT}>{escape(_cut(label))}'
            f'</text><rect class="bar" x="{left}" y="{y + 2}" width="{max(value * scale, 1):.1f}" '
            f'height="{row - 5}" fill="{color}"><title>{escape(label)}: {value:.6g} {unit}'
            f'</title></rect><text x="{left + max(value * scale, 1) + 4:.1f}" y="{y + 13}" '
            f'{FONT}>{value:.4g} {escape(unit)}{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: Sequence[int], edges: Sequence[float], *, title: str,
              marks: dict[str, float] | None = None, log: bool = False, width: int = 720,
              height: int = 220) -> str:
    """Bars of ``counts`` over bin ``edges`` (ms; equally wide on screen: linear or, with
    ``log``, geometric edges), with labelled vertical lines at ``marks`` (name -> ms: p50,
    p99...) placed on the same scale."""
    left, right, top, bottom = 40, 12, 26, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0

    def x_of(ms: float) -> float:
        if log and lo > 0:
            return left + math.log(ms / lo) / math.log(hi / lo) * w
        return left + (ms - lo) / span * w
    peak = max(max(counts, default=0), 1)
    bw = w / max(len(counts), 1)
    parts = [_open(width, height, title), _title(title),
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#444"/>']
    for i, c in enumerate(counts):
        bh = h * c / peak
        parts.append(f'<rect class="bar" x="{left + i * bw + 1:.1f}" y="{top + h - bh:.1f}" '
                     f'width="{max(bw - 2, 1):.1f}" height="{bh:.1f}" fill="{PALETTE[0]}">'
                     f'<title>{edges[i]:.4g}-{edges[i + 1]:.4g} ms: {c} runs</title></rect>')
    for x, text, anchor in ((lo, f"{lo:.4g} ms", "start"), (hi, f"{hi:.4g} ms", "end")):
        px = x_of(x)
        parts.append(f'<text x="{px:.1f}" y="{top + h + 14}" text-anchor="{anchor}" {FONT}>'
                     f'{text}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" {FONT}>{peak}</text>')
    for i, (name, x) in enumerate((marks or {}).items()):
        px = min(max(x_of(x), left), left + w)
        color = PALETTE[(i + 1) % len(PALETTE)]
        parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + h}" '
                     f'stroke="{color}" stroke-dasharray="4 3"/><text x="{px + 3:.1f}" '
                     f'y="{top + 10 + 12 * i}" fill="{color}" {FONT}>{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg class="plot" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">')


def _title(title: str) -> str:
    return f'<text x="4" y="14" font-family="sans-serif" font-size="13" font-weight="bold">' \
           f'{escape(title)}</text>'


def _cut(label: str, n: int = 34) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"
