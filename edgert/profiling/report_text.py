"""The terminal report: rich tables when rich is installed, plain aligned text otherwise.
Works from the JSON report (``ProfileResult.to_json()``), so a saved report prints the same."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgert.profiling.stats import STAT_KEYS

TOP_OPS = 15
"""Kernels listed per artifact (the rest summed in one row)."""


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report, as text cells."""
    results = report["results"]
    names = [_short(r["artifact"]) for r in results]
    out = []
    header = ["", *names]
    rows = [[f"{k} ms", *[_ms(r["latency_ms"][k]) for r in results]] for k in STAT_KEYS]
    rows.append(["throughput /s", *[_num(r["throughput_per_s"]) for r in results]])
    if len(results) > 1:
        base = results[0]["latency_ms"]["p50"]
        rows.append([f"p50 vs {names[0]}", *[f"{r['latency_ms']['p50'] / base:.2f}x"
                                             for r in results]])
    out.append(("latency", header, rows))
    for r, name in zip(results, names):
        cmp_ = r.get("compare")
        if cmp_:
            crow = [[f"{k} ms", _ms(r["latency_ms"][k]), _ms(cmp_["latency_ms"][k]),
                     f"{cmp_['latency_ms'][k] / r['latency_ms'][k]:.2f}x"
                     if r["latency_ms"][k] else "-"] for k in ("min", "p50", "p90", "p99", "mean")]
            out.append((f"{name} vs onnxruntime ({_short(cmp_['model'])}, same process, "
                        "interleaved)", ["", "edgert", "onnxruntime", "ort / edgert"], crow))
        if r.get("llm"):
            llm = r["llm"]
            lrows = [[f"{k} {llm[k]['tokens']}", f"{_num(llm[k]['tokens_per_s'])} "
                      f"± {_num(llm[k]['std'])}"] for k in ("pp", "tg")]
            out.append((f"{name}: tokens/s (mean ± std of {llm.get('repeats', '?')})",
                        ["test", "t/s"], lrows))
        ops = r.get("ops") or []
        if ops:
            orows = [[o["name"][:48], o["op_type"][:28], _ms(o["ms"]), f"{100 * o['share']:.1f}%",
                      str(o["calls"]), _nodes(o.get("onnx_nodes", []))] for o in ops[:TOP_OPS]]
            if len(ops) > TOP_OPS:
                rest = ops[TOP_OPS:]
                orows.append([f"({len(rest)} more)", "", _ms(sum(o["ms"] for o in rest)),
                              f"{100 * sum(o['share'] for o in rest):.1f}%",
                              str(sum(o["calls"] for o in rest)), ""])
            note = f" (note: {r['ops_note']})" if r.get("ops_note") else ""
            out.append((f"{name}: per-kernel time per run{note}",
                        ["kernel", "ONNX op", "ms", "share", "calls", "ONNX nodes"], orows))
    out.append(("memory, bandwidth, energy", header, _resource_rows(results)))
    return out


def _resource_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    def col(fn: Any) -> list[str]:
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        return cells

    rows = [
        ["artifact", *col(lambda r: _bytes(r["memory"]["artifact_bytes"]))],
        ["weights", *col(lambda r: _bytes(r["memory"]["weights_bytes"]))],
        ["RSS at load", *col(lambda r: _bytes(r["memory"]["load_rss_bytes"]))],
        ["peak RSS", *col(lambda r: _bytes(r["memory"]["peak_rss_bytes"]))],
        ["weight bandwidth", *col(lambda r: f"{r['bandwidth']['achieved_gbps']:.2f} GB/s")],
        ["% of read roofline", *col(lambda r: f"{r['bandwidth']['percent_of_roofline']:.0f}% of "
                                    f"{r['bandwidth']['roofline_read_gbps']:.1f} GB/s")],
        ["energy / inference", *col(_energy_cell)],
        ["energy source", *col(lambda r: r["energy"]["source"] if r["energy"]
                               else r.get("energy_note", "-"))],
    ]
    return rows


def _energy_cell(r: dict[str, Any]) -> str:
    e = r.get("energy")
    if not e:
        return "-"
    return f"{_joules(e['joules_per_inference'])} ({e['method']})"


def _joules(j: float) -> str:
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)):
        if abs(j) >= scale:
            return f"{j / scale:.3g} {unit}"
    return f"{j / 1e-12:.3g} pJ"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}" if x < 1 else f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _short(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _nodes(names: Sequence[str]) -> str:
    if not names:
        return ""
    text = ", ".join(names[:2])
    return text + (f" +{len(names) - 2}" if len(names) > 2 else "")


def plain_text(report: dict[str, Any]) -> str:
    """The report as aligned plain text (no rich)."""
    lines = []
    for title, header, rows in tables(report):
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]
        lines.append(title)
        for row in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")
    return "\n".join(lines)


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """Print the report with rich (to ``console`` or stdout), else as plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain_text(report))
        return
    console = console or Console()
    for title, header, rows in tables(report):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
