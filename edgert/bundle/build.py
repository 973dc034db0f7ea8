"""``edgert bundle``: write a board's runtime-only folder (or .tar.gz) for compiled artifacts.

Layout of a bundle (``deploy/``)::

    edgert/            edgert's runtime modules (:mod:`.contents`) and the board CLI as
                       ``__main__.py``: ``python3 deploy/edgert run ...``
    tvm/, tvm_ffi/     TVM's runtime files for the board (:mod:`.runtime_files`); absent in a
                       ``--backend numba`` bundle
    *.dist-info/       their metadata (tvm_ffi finds its libraries through RECORD)
    models/            the artifacts, byte for byte
    requirements.txt   the pinned Python packages the board must have (numpy; numba and onnx
                       for --backend numba)
    bundle.json        target, backend, Python version, versions, models, sizes
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgert.errors import InputError, TargetError

BACKENDS = ("tvm", "numba")
CUDA_NOTE = ("# CUDA targets compile their kernels when they load: also NVRTC's Python bindings\n"
             "# (cuda-bindings) or the CUDA toolkit's nvcc on the PATH (JetPack has it)\n")
Log = Callable[[str], None]


@dataclass
class BundleReport:
    """What :func:`make_bundle` wrote.

    Attributes:
        path: the bundle folder or ``.tar.gz`` file.
        target: the target name it is for.
        backend: ``tvm`` or ``numba``.
        python: the board's CPython version (``"3.11"``).
        parts: part name -> bytes on disk (uncompressed): ``edgert``, ``tvm runtime``,
            ``models``, ``other`` (requirements.txt, bundle.json).
        archive_bytes: the ``.tar.gz`` file's size, or None for a folder.
        requirements: the lines of requirements.txt.
    """

    path: Path
    target: str
    backend: str
    python: str
    requirements: list[str] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)
    archive_bytes: int | None = None

    @property
    def runtime_bytes(self) -> int:
        """Everything but the artifacts (numpy is not in the bundle)."""
        return sum(v for k, v in self.parts.items() if k != "models")

    def lines(self) -> list[str]:
        """The size report the CLI prints, one line per part."""
        out = [f"{name:<13} {_mb(size)}" for name, size in self.parts.items()]
        out.append(f"{'total':<13} {_mb(sum(self.parts.values()))} "
                   f"({_mb(self.runtime_bytes)} without the models; numpy not included)")
        if self.archive_bytes is not None:
            out.append(f"{'archive':<13} {_mb(self.archive_bytes)} (.tar.gz)")
        return out


def make_bundle(artifacts: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                target: str | None = None, backend: str = "tvm", python: str | None = None,
                cache: Path | None = None, log: Log | None = None) -> BundleReport:
    """Write a runtime-only bundle of ``artifacts`` for a board.

    Args:
        artifacts: ``.edgert`` files (their file names, unique, become the model names).
        output: a folder (created; a previous bundle there is replaced) or a ``.tar.gz`` /
            ``.tgz`` file.
        target: the board's target name (``rpi5``, ``x86-avx2``...; ``host`` = this machine);
            default: the first artifact's target.
        backend: ``tvm`` (TVM's runtime files go in) or ``numba`` (no TVM; the board needs
            numba and onnx, see docs/deploy.md).
        python: the board's CPython version (``"3.11"``); default: this machine's. TVM's FFI
            extension is built per Python version.
        cache: where the TVM runtime files are cached (default ``$EDGERT_CACHE`` or
            ``~/.cache/edgert``).
        log: called with progress lines, if given.

    Returns:
        A :class:`BundleReport` with the sizes.

    Raises:
        InputError: no artifacts, two with the same file name, an unknown backend, a bad
            ``python`` or an output that exists and is not a bundle.
        ArtifactError: an artifact is damaged.
        TargetError: an artifact was compiled for another target (names both), an unknown
            target, or TVM's runtime files cannot be fetched.
    """
    log = log or (lambda _line: None)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    paths, names, board, lowbit = _checked_inputs(artifacts, target, backend, python)
    out = Path(output)
    archive = out.name.endswith((".tar.gz", ".tgz"))
    if not archive:
        _check_replaceable(out)
    runtime = None
    if backend == "tvm":
        from edgert.bundle.runtime_files import ensure_runtime_files

        runtime = ensure_runtime_files(board.arch, python, cuda=board.device == "cuda",
                                       cache=cache, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        report = BundleReport(out, board.name, backend, python,
                              requirements=board_requirements(backend, lowbit))
        report.parts = _fill(stage, board, report, dict(zip(names, paths)), runtime, lowbit)
        if archive:
            report.archive_bytes = _write_archive(stage, out)
        else:
            _replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _checked_inputs(artifacts: Sequence[str | os.PathLike], target: str | None, backend: str,
                    python: str) -> tuple[list[Path], list[str], Any, bool]:
    """The artifact paths, their names in the bundle, the board's Target and whether an
    artifact has low-bit (LutMatMul) weights, after every check that needs no download (see
    :func:`make_bundle`'s Raises)."""
    from edgert.artifact import read_artifact
    from edgert.targets import get_target

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if not artifacts:
        raise InputError("give at least one .edgert artifact to bundle")
    if not _is_python_version(python):
        raise InputError(f"--python {python!r}: give a CPython version such as 3.11")
    paths = [Path(a) for a in artifacts]
    names = [p.name if p.suffix == ".edgert" else f"{p.name}.edgert" for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two artifacts named {', '.join(dupes)}: rename one (the file name "
                         "is the model's name in the bundle)")
    arts = [read_artifact(p) for p in paths]
    board = get_target(target or (arts[0].manifest.get("target") or {}).get("name") or "host")
    if backend == "tvm":
        for art in arts:
            check_artifact_target(art.path, art.manifest, board)
    lowbit = any(b"LutMatMul" in art.model_bytes for art in arts)
    return paths, names, board, lowbit


def _fill(stage: Path, board: Any, report: BundleReport, models: dict[str, Path],
          runtime: Path | None, lowbit: bool) -> dict[str, int]:
    """Write the bundle's contents into ``stage``; returns the bytes of each part."""
    from edgert.bundle.contents import copy_edgert

    parts = {"edgert": copy_edgert(stage, numba=report.backend == "numba", lowbit=lowbit)}
    if runtime is not None:
        parts["tvm runtime"] = _copy_runtime(runtime, stage)
    (stage / "models").mkdir()
    for name, path in models.items():
        shutil.copyfile(path, stage / "models" / name)
    parts["models"] = sum(f.stat().st_size for f in (stage / "models").iterdir())
    cuda = CUDA_NOTE if board.device == "cuda" else ""
    (stage / "requirements.txt").write_text(
        "# Python packages the board needs besides this bundle (pip install -r "
        "requirements.txt)\n" + "\n".join(report.requirements) + "\n" + cuda)
    (stage / "bundle.json").write_text(json.dumps(
        _bundle_info(board, report.backend, report.python, list(models), parts, runtime),
        indent=1, sort_keys=True) + "\n")
    parts["other"] = sum((stage / n).stat().st_size for n in ("requirements.txt", "bundle.json"))
    return parts


def check_artifact_target(path: Path, manifest: dict[str, Any], board: Any) -> None:
    """Refuse an artifact the board cannot run: compiled for another target, unless that target
    is a subset of the board's (same architecture and device, CPU features the board has:
    a generic ``aarch64`` artifact on ``rpi5``).

    Raises:
        TargetError: one line naming the artifact's target and the bundle's.
    """
    from edgert.targets import TARGETS

    name = (manifest.get("target") or {}).get("name")
    if name == board.name:
        return
    art = TARGETS.get(name)
    if (art is not None and art.arch == board.arch and art.device == board.device
            and art.cuda_arch == board.cuda_arch
            and set(art.cpu_features) <= set(board.cpu_features)):
        return
    raise TargetError(f"{path} was compiled for {name}, the bundle is for {board.name}: "
                      f"recompile it with --target {board.name}")


def board_requirements(backend: str, lowbit: bool = False) -> list[str]:
    """The pinned packages a board needs (this machine's versions, which the bundle was
    tested with): numpy; numba, llvmlite and onnx too for the numba backend; onnx for
    artifacts with low-bit weights (their load-time layout check reads the graph)."""
    names = ["numpy"] + (["numba", "llvmlite", "onnx"] if backend == "numba" else
                         ["onnx"] if lowbit else [])
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise TargetError(f"the {backend} backend's bundle needs {name} installed here "
                              "(its version is pinned for the board)") from None
    return pins


def _bundle_info(board: Any, backend: str, python: str, names: list[str],
                 parts: dict[str, int], runtime: Path | None) -> dict[str, Any]:
    from edgert import __version__

    info: dict[str, Any] = {"format": 1, "edgert_version": __version__, "target": board.name,
                            "arch": board.arch, "device": board.device, "backend": backend,
                            "python": python, "models": names, "sizes": dict(parts)}
    if runtime is not None:
        meta = json.loads((runtime / "files.json").read_text())
        info["tvm"] = {"tvm": meta["tvm"], "tvm_ffi": meta["tvm_ffi"]}
    return info


def _copy_runtime(runtime: Path, stage: Path) -> int:
    files = json.loads((runtime / "files.json").read_text())["files"]
    for rel in files:
        dest = stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(runtime / rel, dest)
    return sum(files.values())


def _write_archive(stage: Path, out: Path) -> int:
    """``stage``'s contents as ``out`` (.tar.gz), one top folder named like the archive."""
    from edgert.fileio import atomic_path

    top = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for child in sorted(stage.iterdir()):
                tar.add(child, arcname=f"{top}/{child.name}")
    return out.stat().st_size


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / "bundle.json").is_file())):
        raise InputError(f"{out} exists and is not an edgert bundle: give a new folder or a "
                         ".tar.gz file")


def _replace(stage: Path, out: Path) -> None:
    """Put the finished ``stage`` at ``out``, replacing an older bundle there."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, out)


def _is_python_version(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 2 and all(p.isdigit() for p in parts) and parts[0] == "3"


def _mb(size: int) -> str:
    return f"{size / 1e6:6.2f} MB"
