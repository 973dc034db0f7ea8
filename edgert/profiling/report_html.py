"""The single-file HTML report: tables and inline-SVG plots (:mod:`.svg`) of a JSON report;
no scripts, styles or fonts from outside, so it opens offline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from typing import Any

from edgert.profiling import svg
from edgert.profiling.report_text import _short, tables

TOP_OPS = 15

STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding: 4px 0; }
.note { color: #666; font-size: 12px; }
.method { display: inline-block; padding: 1px 6px; border-radius: 3px; color: #fff;
          background: #8a6bbf; font-size: 11px; }
.method.measured { background: #4e9a5b; }
svg.plot { display: block; margin: 8px 0; }
"""


def render_html(report: dict[str, Any]) -> str:
    """The HTML page of a JSON report (``ProfileResult.to_json()``)."""
    results = report["results"]
    body = [f"<h1>edgert profile: {escape(', '.join(_short(r['artifact']) for r in results))}"
            "</h1>", _machine(report)]
    body.extend(_comparison(results))
    for r in results:
        body.append(f"<h2>{escape(r['artifact'])}</h2>")
        body.append(_latency_plot(r))
        body.extend(_ops_plot(r))
        body.extend(_energy_plot(r))
        if r.get("llm"):
            llm = r["llm"]
            body.append(svg.hbars([f"pp {llm['pp']['tokens']}", f"tg {llm['tg']['tokens']}"],
                                  [llm["pp"]["tokens_per_s"] or 0.0,
                                   llm["tg"]["tokens_per_s"] or 0.0],
                                  unit="tokens/s", title="decoder: tokens per second",
                                  notes=[f"± {llm[k]['std']:.3g}" for k in ("pp", "tg")]))
    body.append("<h2>Tables</h2>")
    for title, header, rows in tables(report):
        body.append(_table(title, header, rows))
    body.append(f'<p class="note">schema {escape(report["schema"])}; energy figures are '
                "labelled <em>modelled</em> (operation counts times an energy table, not a "
                "measurement) or <em>measured</em> (a power meter, idle subtracted).</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgert profile</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write :func:`render_html` of ``report``, atomically."""
    from edgert.fileio import atomic_path

    text = render_html(report)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def _machine(report: dict[str, Any]) -> str:
    m, s = report.get("machine", {}), report.get("settings", {})
    bw = m.get("read_bandwidth_gbps")
    text = (f'{m.get("cpu", "?")}, {m.get("logical_cpus")} CPUs, {m.get("threads")} threads; '
            f'{m.get("os", "")}; edgert {m.get("edgert", "")}, TVM {m.get("tvm")}; '
            + (f"read bandwidth {bw:.1f} GB/s; " if bw else "")
            + f'{s.get("runs")} runs after {s.get("warmup")} warm-up'
            + (", interleaved" if s.get("interleaved") else "") + ".")
    return f'<p class="note">{escape(text)}</p>'


def _comparison(results: Sequence[dict[str, Any]]) -> list[str]:
    labels, values = [], []
    for r in results:
        labels.append(_short(r["artifact"]))
        values.append(r["latency_ms"]["p50"])
    for r in results:
        if r.get("compare"):
            labels.append(f"onnxruntime ({_short(r['compare']['model'])})")
            values.append(r["compare"]["latency_ms"]["p50"])
            break
    if len(values) < 2:
        return []
    out = ["<h2>Comparison</h2>",
           svg.hbars(labels, values, unit="ms", title="p50 latency (lower is faster)",
                     notes=[f"({v / values[0]:.2f}x)" for v in values], colors=svg.PALETTE)]
    energies = [(_short(r["artifact"]), r["energy"]) for r in results if r.get("energy")]
    if len(energies) > 1:
        unit, scale = _joule_unit(max(e["joules_per_inference"] for _, e in energies))
        out.append(svg.hbars([n for n, _ in energies],
                             [e["joules_per_inference"] / scale for _, e in energies],
                             unit=unit, title="energy per inference",
                             notes=[f"({e['method']})" for _, e in energies],
                             colors=svg.PALETTE))
    return out


def _latency_plot(r: dict[str, Any]) -> str:
    hist = r.get("latency_histogram")
    lat = r["latency_ms"]
    if not hist:
        return ""
    return svg.histogram(hist["counts"], hist["edges_ms"],
                         title=f"latency of {r.get('runs', '?')} runs (ms"
                         + (", log scale)" if hist.get("scale") == "log" else ")"),
                         log=hist.get("scale") == "log",
                         marks={"p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"]})


def _ops_plot(r: dict[str, Any]) -> list[str]:
    ops = r.get("ops") or []
    if not ops:
        note = r.get("ops_note", "no per-op breakdown")
        return [f'<p class="note">{escape(note)}</p>']
    top = ops[:TOP_OPS]
    labels = [f"{o['op_type']} · {o['name']}" for o in top]
    out = [f'<p class="note">{escape(r["ops_note"])}</p>'] if r.get("ops_note") else []
    out += [svg.hbars(labels, [o["ms"] for o in top], unit="ms",
                     title="time per run by kernel (ONNX op · kernel)",
                     notes=[f"{100 * o['share']:.1f}% ×{o['calls']}" for o in top])]
    types = (r.get("op_types") or [])[:TOP_OPS]
    if types:
        out.append(svg.hbars([t["op_type"] for t in types], [t["ms"] for t in types], unit="ms",
                             title="time per run by ONNX op type",
                             notes=[f"{100 * t['share']:.1f}%" for t in types],
                             colors=svg.PALETTE))
    return out


def _energy_plot(r: dict[str, Any]) -> list[str]:
    e = r.get("energy")
    if not e:
        return [f'<p class="note">{escape(r.get("energy_note") or "no energy figure")}</p>']
    method = str(e["method"])
    unit, scale = _joule_unit(e["joules_per_inference"])
    head = (f'<p>energy per inference: <b>{e["joules_per_inference"] / scale:.4g} {unit}</b> '
            f'<span class="method {escape(method)}">{escape(method)}</span> '
            f'<span class="note">{escape(str(e.get("source", "")))}</span></p>')
    parts = sorted(e.get("breakdown", {}).items(), key=lambda kv: -kv[1])
    if not parts:
        return [head]
    unit, scale = _joule_unit(parts[0][1])
    return [head, svg.hbars([k for k, _ in parts], [v / scale for _, v in parts], unit=unit,
                            title=f"energy per inference by category ({method})",
                            colors=svg.PALETTE)]


def _joule_unit(joules: float) -> tuple[str, float]:
    """The unit (and its size in joules) that shows ``joules`` as 1..1000."""
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9)):
        if abs(joules) >= scale:
            return unit, scale
    return "pJ", 1e-12


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><caption>{escape(title)}</caption><tr>{head}</tr>{body}</table>"
