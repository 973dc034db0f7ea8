"""The body of ``edgert profile`` (the typer wrapper in :mod:`edgert.cli` only parses options):
profile with a progress bar, print the report, write the JSON, HTML and trace files."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from edgert.feeds import load_inputs

Opt = typer.Option


def make_profile_cli(out: Any, terminal_console: Callable[[], Any]) -> Callable[..., None]:
    """The typer command ``edgert profile``, printing to ``out`` (a rich console), its progress
    bar on ``terminal_console()``."""

    def profile(
        artifacts: Annotated[list[Path], typer.Argument(help="One or more .edgert artifacts "
                                                        "(several: compared side by side).")],
        runs: Annotated[int, Opt(min=1, help="Timed runs of each artifact.")] = 100,
        warmup: Annotated[int, Opt(min=0, help="Untimed runs first.")] = 10,
        threads: Annotated[Optional[int], Opt(min=1, help="Worker threads (default: the "
                                              "physical cores).")] = None,
        batch: Annotated[int, Opt(min=1, help="Size of a dynamic batch axis of the random "
                                  "inputs.")] = 1,
        inputs: Annotated[Optional[list[str]], Opt(
            "--input", "-i", help="NAME=file.npy (or one .npz); other inputs are random.")] = None,
        compare: Annotated[Optional[Path], Opt(help="Also run onnxruntime on this ONNX model (the "
                                               "artifact's source), interleaved.")] = None,
        json_out: Annotated[Optional[Path], Opt("--json", help="Write the JSON report (schema "
                                                "edgert.profile/1).")] = None,
        html_out: Annotated[Optional[Path], Opt("--html", help="Write a single-file HTML report "
                                                "with plots.")] = None,
        trace_out: Annotated[Optional[Path], Opt("--trace", help="Write a Chrome-trace timeline "
                                                 "of the kernels (opens in Perfetto).")] = None,
        energy_table: Annotated[Optional[Path], Opt(help="Energy table (TOML) of the modelled "
                                                    "energy.")] = None,
        power_csv: Annotated[Optional[Path], Opt(help="Power samples of an external meter (CSV): "
                                                 "measured energy.")] = None,
        prompt_tokens: Annotated[Optional[int], Opt(min=1, help="Decoder LLMs: prompt tokens of "
                                                    "the pp test (default 64).")] = None,
        gen_tokens: Annotated[Optional[int], Opt(min=0, help="Decoder LLMs: generated tokens of "
                                                 "the tg test (default 16).")] = None,
    ) -> None:
        """Latency (min/mean/p50/p90/p99/max/std), per-op time, memory, bandwidth and energy of
        artifacts; JSON, HTML and trace reports."""
        profile_command(artifacts, runs=runs, warmup=warmup, threads=threads, batch=batch,
                        feed=load_inputs(inputs or []), compare=compare, json_out=json_out,
                        html_out=html_out, trace_out=trace_out, energy_table=energy_table,
                        power_csv=power_csv, prompt_tokens=prompt_tokens,
                        gen_tokens=gen_tokens, console=out, err_console=terminal_console())

    return profile


def profile_command(artifacts: Sequence[Path], *, runs: int, warmup: int, threads: int | None,
                    batch: int, feed: Mapping[str, np.ndarray], compare: Path | None,
                    json_out: Path | None, html_out: Path | None, trace_out: Path | None,
                    energy_table: Path | None, power_csv: Path | None,
                    prompt_tokens: int | None, gen_tokens: int | None,
                    console: Any = None, err_console: Any = None) -> dict[str, Any]:
    """Run :func:`edgert.profiling.profile` on ``artifacts``, print the report to ``console``
    and write the requested files (each atomically). Returns the JSON report."""
    from edgert.profiling.api import profile
    from edgert.profiling.report_json import write_json
    from edgert.profiling.report_text import print_report

    with _progress_bar(err_console) as tick:
        result = profile(*artifacts, runs=runs, warmup=warmup, threads=threads, batch=batch,
                         inputs_given=feed, compare=compare, energy_table=energy_table,
                         power_csv=power_csv, prompt_tokens=prompt_tokens,
                         gen_tokens=gen_tokens, progress=tick)
    report = result.to_json()
    print_report(report, console)
    written = []
    if json_out:
        write_json(json_out, report)
        written.append(json_out)
    if html_out:
        from edgert.profiling.report_html import write_html

        write_html(html_out, report)
        written.append(html_out)
    if trace_out:
        from edgert.profiling.trace import write_trace

        write_trace(trace_out, result.trace_events())
        written.append(trace_out)
    for path in written:
        _say(console, f"wrote {path}")
    return report


def _say(console: Any, text: str) -> None:
    if console is None:
        print(text)
    else:
        console.print(text, highlight=False)


class _progress_bar:
    """A rich progress bar on ``console`` (stderr) while profiling; a no-op without rich or a
    terminal. Entered, it yields the ``progress(stage, done, total)`` callback."""

    LABELS = {"runs": "timed runs", "details": "per-op, memory, energy", "llm": "pp/tg"}

    def __init__(self, console: Any) -> None:
        self.console, self.bar, self.tasks = console, None, {}

    def __enter__(self) -> Any:
        try:
            from rich.progress import Progress
        except ImportError:
            return lambda *_: None
        if self.console is None or not getattr(self.console, "is_terminal", False) or \
                os.environ.get("EDGERT_NO_PROGRESS"):
            return lambda *_: None
        self.bar = Progress(console=self.console, transient=True)
        self.bar.__enter__()
        return self.tick

    def tick(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(self.LABELS.get(stage, stage), total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
