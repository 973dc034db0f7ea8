"""The typer command ``edgert bundle`` (registered in :mod:`edgert.cli` with one line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from edgert.bundle.build import BACKENDS

Opt = typer.Option


def make_bundle_cli(out: Any, terminal_console: Callable[[], Any]) -> Callable[..., None]:
    """The typer command ``edgert bundle``, printing its report to ``out`` (a rich console) and
    its progress on ``terminal_console()``."""

    def bundle(
        artifacts: Annotated[list[Path], typer.Argument(help="The .edgert artifacts to deploy.")],
        output: Annotated[Path, Opt("--output", "-o", help="Bundle folder, or a .tar.gz file.")],
        target: Annotated[Optional[str], Opt("--target", "-t", help="The board's target "
                                             "(default: the artifacts').")] = None,
        backend: Annotated[Literal[BACKENDS], Opt(help="tvm: TVM's runtime files go in; numba: "
                                                  "none (the board needs numba and onnx).")
                           ] = "tvm",
        python: Annotated[Optional[str], Opt(help="The board's Python version, e.g. 3.11 "
                                             "(default: this machine's).")] = None,
    ) -> None:
        """A runtime-only folder for a board: the artifacts, edgert's runtime and TVM's runtime
        for its CPU, without the compiler; run there with `python3 DIR/edgert run ...`."""
        from edgert.bundle import make_bundle

        with terminal_console().status("writing the bundle") as status:
            report = make_bundle(artifacts, output, target=target, backend=backend,
                                 python=python, log=lambda line: status.update(line))
        out.print(f"wrote {report.path} for {report.target} ({report.backend} backend); the "
                  f"board needs Python {report.python} and {', '.join(report.requirements)}",
                  highlight=False, soft_wrap=True)
        for line in report.lines():
            out.print(line, highlight=False)

    return bundle
