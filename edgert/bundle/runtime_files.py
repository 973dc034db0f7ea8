"""TVM's runtime for a board: the few files of the apache-tvm / apache-tvm-ffi wheels that
``TVM_USE_RUNTIME_LIB=1`` loads, for the board's CPU architecture and Python version.

What is kept of the wheels (the same versions as this machine's TVM):

    tvm/lib/libtvm_runtime.so            the runtime (3.3 MB on x86-64)
    tvm/lib/libtvm_runtime_cuda.so       CUDA targets only
    tvm_ffi/lib/libtvm_ffi*.so           the FFI library (and its small testing library,
                                         which ``import tvm`` loads)
    tvm_ffi/core.cpython-*.so            the FFI's Python extension (one per Python version)
    the .py files a runtime-only ``import tvm`` and the Relax VM import (measured on this
    machine: see :func:`imported_python_files`) and all of ``tvm/runtime/``
    typing_extensions.py                 tvm_ffi imports it (pure Python, its own wheel)
    <dist>.dist-info/{METADATA,RECORD}   RECORD lists only the files kept: tvm_ffi finds its
                                         libraries through it

Everything else stays out: ``libtvm_compiler.so`` (248 MB), ``libtvm_runtime_extra.so`` (only a
full ``import tvm`` loads it), the compiler's Python packages (relax, s_tir, topi, ...),
headers, C++ sources, CMake files, tests and byte code.

The wheels come from ``pip download --platform manylinux_2_X_<arch> --only-binary=:all:
--no-deps`` (:func:`edgert.targets.qemu.pip_download`); the kept files are cached under
``$EDGERT_CACHE/runtime/<key>/`` (default ``~/.cache/edgert/runtime``), so a second bundle
for the same board is a file copy. A first fetch downloads about 105 MB of wheels (pip's own
cache makes a repeat cheap) and takes a few seconds. Offline, a board of this machine's
architecture and Python version gets the same files from this machine's installed wheels.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from edgert.errors import TargetError

RUNTIME_FORMAT = 2
"""Bump when the kept file set changes (it is part of the cache key)."""
BOARD_GLIBC = "2.35"
"""The oldest glibc the wheels are chosen for (Ubuntu 22.04 / JetPack 6; Raspberry Pi OS
bookworm has 2.36): the TVM wheels need 2.28 (x86-64) or 2.27 (aarch64)."""
PURE_DEPS = ("typing_extensions",)
"""Pure-Python packages TVM's runtime imports: their wheels come along (this machine's
versions) and all their .py files are kept."""
KEPT_LIBRARIES = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so",
                  "tvm_ffi/lib/libtvm_ffi_testing.so", "tvm_ffi/core.*.so")
CUDA_LIBRARIES = ("tvm/lib/libtvm_runtime_cuda.so",)
WHOLE_PACKAGES = ("tvm/runtime/",)
"""Kept as a whole (their .py files): functions there import siblings lazily."""
DIST_FILES = ("METADATA",)
PROBE = """
import json, os, sys
import tvm, tvm.runtime, tvm.runtime.vm
from edgert.backends import tvm_vm
site = os.path.dirname(os.path.dirname(tvm.__file__))
files = sorted({os.path.relpath(m.__file__, site) for name, m in list(sys.modules.items())
                if name.split(".")[0] in ("tvm", "tvm_ffi") and getattr(m, "__file__", None)
                and m.__file__.endswith(".py")})
print(json.dumps(files))
"""
Log = Callable[[str], None]


def runtime_key(arch: str, python: str, cuda: bool) -> str:
    """The cache folder name: TVM and FFI versions, Python tag, architecture, CUDA or not."""
    from edgert.targets.qemu import versions

    v = versions()
    return (f"tvm{v['tvm']}-ffi{v['tvm_ffi']}-cp{python.replace('.', '')}-{arch}"
            f"{'-cuda' if cuda else ''}-r{RUNTIME_FORMAT}")


def ensure_runtime_files(arch: str, python: str, *, cuda: bool = False,
                         cache: Path | None = None, log: Log | None = None) -> Path:
    """The folder holding TVM's runtime files for ``arch`` (``x86_64``, ``aarch64``) and
    CPython ``python`` (``"3.11"``), fetched and cut down on first use, then cached.

    The folder holds ``tvm/``, ``tvm_ffi/``, the two ``.dist-info`` folders and ``files.json``
    (relative path -> bytes; written last: its presence marks a complete folder).

    Args:
        cache: the cache root (default: :func:`edgert.targets.qemu.cache_base`).
        log: called with one line per step, if given.

    Raises:
        TargetError: pip cannot download the wheels (no network, no wheel for this Python or
            architecture), or this machine's TVM cannot be probed.
    """
    from edgert.targets.qemu import built_once, cache_base

    folder = (cache or cache_base()) / "runtime" / runtime_key(arch, python, cuda)
    return built_once(folder, "files.json",
                      lambda: _fetch(folder, arch, python, cuda, log or (lambda _line: None)),
                      "the runtime cache")


def imported_python_files() -> list[str]:
    """The .py files (relative to site-packages: ``tvm/runtime/vm.py``...) that a runtime-only
    ``import tvm`` and edgert's TVM backend import, measured in a fresh process of this
    machine's Python (same TVM version as the wheels; pure Python is the same on every
    architecture).

    Raises:
        TargetError: the probe failed (TVM not installed properly).
    """
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise TargetError(f"cannot list the files of TVM's runtime (import tvm with "
                          f"TVM_USE_RUNTIME_LIB=1 failed):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def is_kept(member: str, python_files: set[str], cuda: bool) -> bool:
    """Whether a wheel member goes into the bundle (see the module docstring)."""
    libs = KEPT_LIBRARIES + (CUDA_LIBRARIES if cuda else ())
    if any(fnmatch.fnmatchcase(member, pattern) for pattern in libs):
        return True
    if not member.endswith(".py"):
        return False
    if member.split("/")[0].removesuffix(".py") in PURE_DEPS:
        return True
    return member in python_files or member.startswith(WHOLE_PACKAGES)


def _fetch(folder: Path, arch: str, python: str, cuda: bool, log: Log) -> None:
    from edgert.targets.qemu import manylinux_platforms, pip_download, versions

    start = time.perf_counter()
    v = versions()
    for stale in folder.parent.glob(f".{folder.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp", dir=folder.parent))
    try:
        wheels = tmp / "wheels"
        pure = [f"{name}=={metadata.version(name)}" for name in PURE_DEPS]
        try:
            pip_download([f"apache-tvm=={v['tvm']}", f"apache-tvm-ffi=={v['tvm_ffi']}", *pure],
                         wheels, py=python, platforms=manylinux_platforms(arch, BOARD_GLIBC),
                         what=f"pip download (the {arch} wheels of apache-tvm for Python "
                         f"{python})", timeout=900,
                         context="fetching TVM's runtime for the bundle")
        except TargetError:
            if not _is_this_machine(arch, python):
                raise
            log("pip download failed (offline?): taking the same files from this machine's "
                "installed wheels")
            wheels = None
        python_files = set(imported_python_files())
        tree = tmp / "tree"
        sizes: dict[str, int] = {}
        if wheels is None:
            sizes = _copy_installed(tree, python_files, cuda)
        else:
            for whl in sorted(wheels.glob("*.whl")):
                sizes.update(_extract_kept(whl, tree, python_files, cuda))
        missing = [p for p in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
                   if p not in sizes]
        if missing:
            raise TargetError(f"the wheels of apache-tvm lack {', '.join(missing)}")
        (tree / "files.json").write_text(json.dumps(
            {"arch": arch, "python": python, "cuda": cuda, **v, "files": sizes}, indent=1,
            sort_keys=True))
        os.rename(tree, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(sizes.values()) / 1e6
    log(f"TVM runtime for {arch}, Python {python}: {len(sizes)} files, {total:.1f} MB "
        f"({time.perf_counter() - start:.1f} s)")


def _is_this_machine(arch: str, python: str) -> bool:
    """Whether this machine's installed TVM wheels are the ones a board of ``arch`` with CPython
    ``python`` needs (then they stand in for a download that failed)."""
    from edgert.targets import host_arch

    return arch == host_arch() and python == f"{sys.version_info.major}.{sys.version_info.minor}"


def _copy_installed(tree: Path, python_files: set[str], cuda: bool) -> dict[str, int]:
    """The kept files of this machine's installed apache-tvm, apache-tvm-ffi and
    :data:`PURE_DEPS` (the files of their wheels, listed by each RECORD), with the same
    dist-info as :func:`_extract_kept` writes."""
    sizes: dict[str, int] = {}
    for name in ("apache-tvm", "apache-tvm-ffi", *PURE_DEPS):
        dist = metadata.distribution(name)
        kept = []
        for f in dist.files or []:
            rel = f.as_posix()
            info_dir = rel.split("/")[0].endswith(".dist-info")
            if not is_kept(rel, python_files, cuda) and not (
                    info_dir and rel.split("/")[-1] in DIST_FILES):
                continue
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dist.locate_file(f), dest)
            sizes[rel] = dest.stat().st_size
            kept.append(rel)
        info = next((k.split("/")[0] for k in kept if k.endswith("/METADATA")), None)
        if info is None:
            continue
        record = dist.read_text("RECORD") or ""
        lines = [ln for ln in record.splitlines() if ln.split(",")[0] in set(kept)]
        path = tree / info / "RECORD"
        path.write_text("\n".join([*lines, f"{info}/RECORD,,"]) + "\n")
        sizes[f"{info}/RECORD"] = path.stat().st_size
    return sizes


def _extract_kept(whl: Path, tree: Path, python_files: set[str], cuda: bool) -> dict[str, int]:
    """Extract the kept members of one wheel, and its dist-info with a RECORD of only them."""
    sizes: dict[str, int] = {}
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        dist = next((n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")),
                    None)
        kept = [n for n in names if is_kept(n, python_files, cuda)]
        for name in kept:
            zf.extract(name, tree)
            sizes[name] = zf.getinfo(name).file_size
        if dist is None:
            return sizes
        for name in DIST_FILES:
            member = f"{dist}/{name}"
            if member in names:
                zf.extract(member, tree)
                sizes[member] = zf.getinfo(member).file_size
        record = zf.read(f"{dist}/RECORD").decode() if f"{dist}/RECORD" in names else ""
        keep = set(kept) | {f"{dist}/{n}" for n in DIST_FILES}
        lines = [ln for ln in record.splitlines() if ln.split(",")[0] in keep]
        lines.append(f"{dist}/RECORD,,")
        path = tree / dist / "RECORD"
        path.write_text("\n".join(lines) + "\n")
        sizes[f"{dist}/RECORD"] = path.stat().st_size
    return sizes
