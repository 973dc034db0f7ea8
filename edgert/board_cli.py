"""The board's ``edgert`` command: run, profile and inspect compiled artifacts with numpy and
TVM's runtime only (a bundle written by ``edgert bundle``, see docs/deploy.md).

    python3 deploy/edgert run digits -i image=x.npy -o out.npz
    python3 deploy/edgert profile digits --runs 200
    python3 deploy/edgert inspect digits

It is argparse, not typer/rich: the board has no packages besides numpy. A MODEL is a
``.edgert`` path or the name of an artifact in the bundle's ``models/`` folder. Commands that
need the full install (``compile``, ``export``, ``tune``, ``bundle``, ``demo``) end with one line
saying so. Every edgert error ends in one line on stderr and its exit code
(:mod:`edgert.errors`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import EdgertError, InputError
from edgert.feeds import load_inputs, save_npz

FULL_INSTALL_ONLY = ("compile", "export", "tune", "bundle", "demo")
BUNDLE_INFO = "bundle.json"
MODELS_DIR = "models"
PROFILE_RUNS = 100
MISSING_EXIT = 10
"""Exit code of a command this board cannot do: it needs the full install, a module the bundle
left out or a package not installed here (edgert.errors uses 1 and 3-9)."""


class FullInstallError(EdgertError):
    """A command that needs edgert's compiler (the full install) was run from a bundle."""

    exit_code = MISSING_EXIT


def bundle_root() -> Path:
    """The bundle folder this package lies in (``deploy/`` for ``deploy/edgert/``)."""
    return Path(__file__).resolve().parent.parent


def bundle_info() -> dict[str, Any]:
    """The bundle's ``bundle.json`` (target, backend, models, versions); ``{}`` when this
    edgert is not a bundle (a full install)."""
    path = bundle_root() / BUNDLE_INFO
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resolve_model(model: str) -> Path:
    """A MODEL argument as a path: the file itself, else ``models/<model>[.edgert]`` of the
    bundle.

    Raises:
        InputError: neither exists (names the bundle's models).
    """
    path = Path(model)
    if path.is_file():
        return path
    models = bundle_root() / MODELS_DIR
    for candidate in (models / model, models / f"{model}.edgert"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in models.glob("*.edgert")) if models.is_dir() else []
    hint = f"; the bundle's models: {', '.join(known)}" if known else ""
    raise InputError(f"{model}: no such artifact file{hint}")


def default_backend() -> str:
    """The backend the bundle was made for (``tvm`` unless ``--backend numba``)."""
    return str(bundle_info().get("backend", "tvm"))


# ---------------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    """Run an artifact on .npy/.npz inputs; print each output's shape/dtype/min/max/mean."""
    from edgert.session import Session

    sess = Session(resolve_model(args.model), backend=args.backend or default_backend(),
                   threads=args.threads)
    feed = load_inputs(args.input)
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(None, feed)
    rows = [("output", "shape", "dtype", "min", "max", "mean")]
    for name, value in zip(names, results):
        stats = ([f"{value.min():.6g}", f"{value.max():.6g}", f"{value.mean():.6g}"]
                 if value.size else ["-"] * 3)
        rows.append((name, str(list(value.shape)), str(value.dtype), *stats))
    print_table(rows)
    if args.output:
        save_npz(Path(args.output), dict(zip(names, results)))
        print(f"wrote {args.output}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Latency (min, mean, p50, p90, p99, max, std in milliseconds) and, on the tvm backend,
    per-kernel times of an artifact on given or random inputs, by :func:`edgert.profiling.profile`
    (no energy figure: the board command times only)."""
    from edgert.profiling import api, report_text
    from edgert.session import Session

    path = resolve_model(args.model)
    sess = Session(path, backend=args.backend or default_backend(), threads=args.threads)
    given = load_inputs(args.input) if args.input else None
    result = api.profile(sess, runs=args.runs, warmup=args.warmup, threads=args.threads,
                         inputs_given=given, energy=False)
    report = result.to_json()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{path}: {args.runs} runs after {args.warmup} warm-up, {sess.backend} backend\n")
        print(report_text.plain_text(report))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """The artifact's manifest: target, versions, inputs and outputs, compile options and, where
    recorded, its ops and quantization (no onnx needed)."""
    from edgert.artifact import read_artifact

    art = read_artifact(resolve_model(args.model))
    m = art.manifest
    info = manifest_summary(m, art)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    t = m.get("target") or {}
    print(f"{art.path} (edgert artifact)")
    print(f"target {t.get('name')} ({t.get('description', '?')}), edgert "
          f"{m.get('edgert_version')}, TVM {m.get('tvm_version')}, format "
          f"{m.get('format_version')}")
    opts = m.get("compile_options") or {}
    if opts:
        print("compiled with: " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())
                                           if v is not None))
    rows = [("", "name", "shape", "dtype", "valid values")]
    for kind in ("inputs", "outputs"):
        for v in m.get(kind) or []:
            r = v.get("range")
            rows.append((kind[:-1], v["name"], str(v["shape"]), v["dtype"],
                         f"[{r['min']}, {r['max']}]" if r else "-"))
    print_table(rows)
    if info.get("activation_dtypes"):
        print(f"integer-only activations: {info['activation_dtypes']}")
    if info.get("ops"):
        print_table([("op", "count"), *((op, str(n)) for op, n in info["ops"].items())])
    print("members: " + ", ".join(f"{n} ({len(d) / 1024:.1f} KiB)"
                                   for n, d in art.members.items()))
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    """The targets and whether this board runs each (and what the bundle was made for)."""
    from edgert.targets import can_run_here, list_targets

    rows = [("target", "description", "runs here")]
    for t in list_targets():
        ok, why = can_run_here(t)
        rows.append((t.name, t.description, "yes" if ok else f"no: {why}"))
    print_table(rows)
    info = bundle_info()
    if info:
        print(f"this bundle: {info.get('target')} ({info.get('backend')} backend)")
    return 0


def cmd_full_install(args: argparse.Namespace) -> int:
    raise FullInstallError(
        f"`edgert {args.command}` needs the full edgert install (the compiler, onnx and TVM's "
        "compiler); this board bundle only runs, profiles and inspects compiled .edgert files: "
        f"{args.command} on a development machine, then `edgert bundle` the artifacts")


# ---------------------------------------------------------------------------------- helpers


def manifest_summary(m: dict[str, Any], art: Any = None) -> dict[str, Any]:
    """The fields ``inspect`` shows, JSON-ready: target, versions, inputs, outputs, compile
    options, activation dtypes and op counts where the manifest records them."""
    q = m.get("quantization") or {}
    return {
        "path": str(art.path) if art is not None else None,
        "target": (m.get("target") or {}).get("name"),
        "edgert_version": m.get("edgert_version"),
        "tvm_version": m.get("tvm_version"),
        "format_version": m.get("format_version"),
        "inputs": m.get("inputs") or [],
        "outputs": m.get("outputs") or [],
        "compile_options": m.get("compile_options") or {},
        "activation_dtypes": q.get("activation_dtypes"),
        "ops": m.get("ops") or (op_counts(art.model_bytes) if art is not None else None),
        "members": sorted(art.members) if art is not None else None,
    }


def op_counts(model_bytes: bytes) -> dict[str, int] | None:
    """Node count per op type (``domain.Op`` outside the default domain) of a serialized ONNX
    model, read from the protobuf wire format without onnx; None when this edgert has no wire
    reader or the model cannot be read. Field numbers: ModelProto.graph = 7,
    GraphProto.node = 1, NodeProto.op_type = 4, NodeProto.domain = 7."""
    try:
        from edgert.onnx_wire import WireError, fields
    except ImportError:
        return None
    counts: dict[str, int] = {}
    try:
        for number, wire, graph in fields(memoryview(model_bytes)):
            if number != 7 or wire != 2:
                continue
            for n, w, node in fields(graph):
                if n != 1 or w != 2:
                    continue
                op = domain = ""
                for f, fw, value in fields(node):
                    if f == 4 and fw == 2:
                        op = bytes(value).decode("utf-8", "replace")
                    elif f == 7 and fw == 2:
                        domain = bytes(value).decode("utf-8", "replace")
                key = f"{domain}.{op}" if domain and domain != "ai.onnx" else op
                counts[key] = counts.get(key, 0) + 1
    except WireError:
        return None
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def print_table(rows: list[Sequence[str]]) -> None:
    """Rows of strings as left-aligned columns (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def missing_module_hint(name: str) -> str:
    """One line for a module this board lacks: an edgert module the bundle left out (the numba
    backend, the compiler) or a Python package not installed here."""
    if name.split(".")[0] == "edgert":
        return (f"{name} is not in this bundle: the numba backend needs a bundle made with "
                "`edgert bundle --backend numba`, compiling needs the full install")
    return (f"this needs the Python package {name.split('.')[0]}, which is not installed here "
            "(pip install -r requirements.txt next to the bundle's edgert/ folder)")


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the board CLI."""
    from edgert import __version__

    p = argparse.ArgumentParser(
        prog="edgert", description="edgert on a board: run, profile and inspect compiled "
        ".edgert artifacts (numpy + TVM's runtime; compiling needs the full install).")
    p.add_argument("--version", action="version", version=f"edgert {__version__} (board)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def model_arg(c: argparse.ArgumentParser) -> None:
        c.add_argument("model", metavar="MODEL", help="a .edgert file, or the name of one in "
                       "the bundle's models/ folder")

    def run_opts(c: argparse.ArgumentParser, required: bool) -> None:
        c.add_argument("-i", "--input", action="append", default=[], required=required,
                       metavar="NAME=FILE.npy|FILE.npz", help="an input (repeat per input), "
                       "or one .npz holding every input by name")
        c.add_argument("--backend", choices=("tvm", "numba"), default=None,
                       help="tvm: the compiled library (default); numba: the graph (needs "
                       "numba and onnx)")
        c.add_argument("--threads", type=_positive, default=None,
                       help="worker threads (default: the physical cores)")

    c = sub.add_parser("run", help="run an artifact on .npy/.npz inputs")
    model_arg(c)
    run_opts(c, required=True)
    c.add_argument("-o", "--output", help="save all outputs to this .npz file")
    c.set_defaults(func=cmd_run)

    c = sub.add_parser("profile", help="latency of an artifact (random inputs unless -i)")
    model_arg(c)
    run_opts(c, required=False)
    c.add_argument("--runs", type=_positive, default=PROFILE_RUNS, help="timed runs")
    c.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_profile)

    c = sub.add_parser("inspect", help="an artifact's manifest: target, inputs, outputs, ops")
    model_arg(c)
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_inspect)

    c = sub.add_parser("targets", help="the targets and whether this board runs each")
    c.set_defaults(func=cmd_targets)

    for name in FULL_INSTALL_ONLY:
        c = sub.add_parser(name, help="needs the full install", add_help=False)
        c.add_argument("rest", nargs=argparse.REMAINDER)
        c.set_defaults(func=cmd_full_install)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; edgert errors become one line and their exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgertError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        print(f"error: {missing_module_hint(e.name or str(e))}", file=sys.stderr)
        return MISSING_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
