"""Run aarch64 (``rpi5``, ``aarch64``) artifacts on an x86-64 machine under qemu-user.

An rpi5 artifact's ``lib/model.so`` is an aarch64 library for TVM's Relax VM, so it can only be
loaded by an aarch64 process. :func:`run_under_qemu` starts one: an aarch64 Python from Debian's
arm64 packages, run by ``qemu-aarch64`` (user-mode emulation), with the aarch64 wheels of
numpy and of the same apache-tvm / apache-tvm-ffi versions as this machine's on its path. It
executes ``qemu_runner.py`` (next to this file), which loads the library with TVM's runtime
only (``TVM_USE_RUNTIME_LIB=1``), runs the VM's ``main`` and hands the outputs back through an
``.npz`` file. qemu emulates the target's CPU model where it knows it (``cortex-a76`` for
rpi5, ``cortex-a53`` for generic aarch64), so an instruction the real CPU lacks fails with
SIGILL as it would on the device.

What is cached where (:func:`ensure_aarch64_env`), under ``$EDGERT_CACHE/aarch64`` (default
``~/.cache/edgert/aarch64``), one folder per version key
``tvm<V>-ffi<V>-numpy<V>-env<N>``:

    sysroot/   Debian arm64 packages extracted with ``dpkg-deb -x`` (nothing is installed):
               python3.X-minimal, libpython3.X-minimal, libpython3.X-stdlib, libc6, libstdc++6,
               libgcc-s1, zlib1g, libexpat1, libffi — about 52 MB. It is qemu's ``-L`` prefix,
               so the environment is self-contained: it does not use the cross toolchain's libc.
    site/      the aarch64 wheels (manylinux) of apache-tvm (without ``libtvm_compiler.so``,
               the CUDA runtime and the C++ sources), apache-tvm-ffi, numpy, ml_dtypes,
               typing_extensions and cloudpickle (TVM's RPC server needs it), unpacked;
               about 86 MB.
    env.json   versions, the Python path inside the sysroot; written last (its presence marks
               a complete environment).

The packages come from the Debian mirrors in this machine's apt sources through a private apt
state (``apt-get update``/``apt-get download`` with ``APT::Architecture=arm64`` and lists kept in
a temporary folder): no ``dpkg --add-architecture`` and no root needed. The wheels come from
``pip download --platform manylinux_2_X_aarch64``. A first setup downloads about 20 MB of
package lists, 8 MB of .debs and 115 MB of wheels, then runs a self-test under qemu that also
writes the ``.pyc`` files (imports under emulation are ~3x faster with them): it takes about
15 s with a fast mirror (measured 12-15 s on 2 cores), longer on a slow network. A cached
setup is a file check (milliseconds). One :func:`run_under_qemu` call costs about 2-3 s of
fixed start-up (emulated Python, numpy and tvm imports) plus the emulated run itself.

Requirements: ``qemu-aarch64`` (Debian package ``qemu-user``, or ``qemu-aarch64-static`` from
``qemu-user-static``), ``apt-get`` and ``dpkg-deb`` (a Debian-family machine whose mirror carries
arm64, as deb.debian.org does), pip, and network access for the first setup.
``python -m edgert.targets.qemu`` (or ``scripts/setup_aarch64.sh``) prepares the cache ahead.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from edgert.errors import ArtifactError, InputError, TargetError

CACHE_ENV = "EDGERT_CACHE"
ENV_FORMAT = 2                      # bump when the layout or the package set changes
QEMU_BINARIES = ("qemu-aarch64", "qemu-aarch64-static")
RUNNER = Path(__file__).with_name("qemu_runner.py")
RPC_SERVER = Path(__file__).with_name("qemu_rpc_server.py")
# qemu CPU models for the registry's mcpu values; anything else runs on qemu's "max" CPU.
QEMU_CPUS = {"cortex-a76": "cortex-a76", "cortex-a78": "max", "generic": "cortex-a53"}
INSTALL_HINT = "apt-get install qemu-user"
# Runtime libraries taken from the Python packages' dependencies (names differ by release).
_LIB_DEPS = re.compile(r"^(libc6|zlib1g|libexpat1|libffi\d+)$")
# Wheel members left out: the 240 MB compiler library (runtime-only mode needs none), the CUDA
# runtime, and sources/headers.
_SKIP_MEMBERS = re.compile(
    r"^(tvm/lib/libtvm_compiler\.so|tvm/lib/libtvm_runtime_cuda\.so|tvm/(3rdparty|src|include)/"
    r"|tvm_ffi/(3rdparty|include)/)"
)
Log = Callable[[str], None]


def cache_base() -> Path:
    """edgert's download cache: ``$EDGERT_CACHE`` if set, else ``~/.cache/edgert``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgert"


def cache_root() -> Path:
    """``$EDGERT_CACHE/aarch64`` if ``EDGERT_CACHE`` is set, else ``~/.cache/edgert/aarch64``."""
    return cache_base() / "aarch64"


def find_qemu() -> str:
    """Path of ``qemu-aarch64`` (or ``qemu-aarch64-static``); TargetError naming the package."""
    for name in QEMU_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise TargetError(
        f"running aarch64 artifacts on this machine needs qemu-aarch64 (user-mode emulation); "
        f"install it with `{INSTALL_HINT}`"
    )


def versions() -> dict[str, str]:
    """The versions the aarch64 environment mirrors: this machine's TVM, TVM FFI and numpy."""
    try:
        return {"tvm": metadata.version("apache-tvm"),
                "tvm_ffi": metadata.version("apache-tvm-ffi"),
                "numpy": np.__version__}
    except metadata.PackageNotFoundError as e:
        raise TargetError(f"edgert's TVM is not installed properly ({e})") from None


def env_key() -> str:
    """The cache folder name for this machine's versions."""
    v = versions()
    return f"tvm{v['tvm']}-ffi{v['tvm_ffi']}-numpy{v['numpy']}-env{ENV_FORMAT}"


def ensure_aarch64_env(*, log: Log | None = None) -> Path:
    """Set up (first call) or reuse the cached aarch64 Python + numpy + TVM runtime environment.

    Returns the environment folder (``sysroot/``, ``site/``, ``env.json``; see the module
    docstring for what is cached where). A first setup takes about 15 s with a fast mirror and
    needs network access; later calls only check that ``env.json`` exists. Concurrent callers
    are serialized with a lock file; an interrupted setup leaves nothing behind but a temporary
    folder that the next setup removes.

    Args:
        log: called with one line per setup step (and its duration), if given.

    Raises:
        TargetError: qemu-aarch64 is missing (names the package to install), this machine has
            no apt-get/dpkg-deb/pip, or a download or the self-test under qemu failed (the
            message says which step and shows the tool's last output lines).
    """
    find_qemu()
    env_dir = cache_root() / env_key()
    return built_once(env_dir, "env.json", lambda: _build(env_dir, log or (lambda _line: None)),
                      "the aarch64 environment cache")


def built_once(folder: Path, marker: str, build: Callable[[], None], what: str) -> Path:
    """``folder`` of a cache, built by ``build()`` unless its ``marker`` file (written last by
    ``build``) exists; concurrent processes build it once, under a lock file in its parent.

    Raises:
        TargetError: the parent folder cannot be created (``what`` names the cache); what
            ``build`` raises.
    """
    if (folder / marker).is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TargetError(f"cannot create {what} {folder.parent}: {e}") from None
    with _locked(folder.parent / ".lock"):
        if not (folder / marker).is_file():
            build()
    return folder


def run_under_qemu(artifact_path: str | os.PathLike, feeds: Mapping[str, np.ndarray], *,
                   threads: int = 1, timeout: float = 600) -> list[np.ndarray]:
    """Run an aarch64 artifact's compiled library under qemu-aarch64 and return its outputs.

    Args:
        artifact_path: a ``.edgert`` file compiled for an aarch64 CPU target (``rpi5``,
            ``aarch64``); read and verified like :class:`edgert.Session` does.
        feeds: input name -> array, of the dtypes in the manifest (every input, no others).
        threads: TVM worker threads inside the emulated process (default 1: emulated spinning
            worker threads only slow a small model down).
        timeout: seconds before the emulated run is abandoned.

    Returns:
        One numpy array per model output, in the manifest's order.

    Raises:
        ArtifactError, InputError, TargetError (not an aarch64 CPU artifact, no qemu, the
        environment cannot be set up, or the emulated run failed: the message has its stderr).
    """
    from edgert.artifact import read_artifact

    art = read_artifact(artifact_path)
    target = art.manifest.get("target") or {}
    if target.get("arch") != "aarch64" or target.get("device", "cpu") != "cpu":
        raise TargetError(
            f"{art.path}: run_under_qemu runs aarch64 CPU artifacts; this one was compiled for "
            f"{target.get('name')!r} ({target.get('arch')}, {target.get('device')})"
        )
    lib = art.lib_member
    if not lib or lib not in art.members:
        raise ArtifactError(f"{art.path}: no compiled library in the artifact")
    arrays = _ordered_inputs(art.manifest, feeds)
    qemu, env_dir, info = _guest()
    mcpu = (target.get("tvm_target") or {}).get("mcpu", "generic")
    with tempfile.TemporaryDirectory(prefix="edgert-qemu-") as tmp:
        lib_path, in_path, out_path = (os.path.join(tmp, n) for n in ("model.so", "in.npz",
                                                                       "out.npz"))
        with open(lib_path, "wb") as f:
            f.write(art.members[lib])
        np.savez(in_path, **{f"in{i}": a for i, a in enumerate(arrays)})
        proc = _run_guest(qemu, env_dir, info, [lib_path, in_path, out_path, str(int(threads))],
                          cpu=_qemu_cpu(qemu, mcpu), timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise TargetError(f"{art.path}: the run under qemu-aarch64 failed "
                              f"(exit status {proc.returncode}):\n{_tail(proc.stderr)}")
        with np.load(out_path) as data:
            count = sum(1 for name in data.files if name.startswith("out"))
            outputs = [data[f"out{i}"] for i in range(count)]
    want = len(art.manifest.get("outputs") or [])
    if want and len(outputs) != want:
        raise TargetError(f"{art.path}: the run under qemu returned {len(outputs)} outputs, "
                          f"the manifest lists {want}")
    return outputs


# ---------------------------------------------------------------------------------------------
# Running the guest


def _guest() -> tuple[str, Path, dict]:
    """qemu, the cached aarch64 environment (set up on first use) and its ``env.json``."""
    qemu = find_qemu()
    env_dir = ensure_aarch64_env()
    return qemu, env_dir, json.loads((env_dir / "env.json").read_text())


def guest_command(qemu: str, env_dir: Path, info: dict, args: list[str], *, cpu: str = "max",
                  write_pyc: bool = False) -> tuple[list[str], dict[str, str]]:
    """``qemu-aarch64 -cpu CPU -L sysroot python ARGS`` and its clean environment."""
    sysroot = env_dir / "sysroot"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": str(env_dir / "site"),
        "PYTHONNOUSERSITE": "1",
        "TVM_USE_RUNTIME_LIB": "1",
    }
    if not write_pyc:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return [qemu, "-cpu", cpu, "-L", str(sysroot), str(sysroot / info["python"]), *args], env


def rpc_server_command(port: int, *, mcpu: str = "cortex-a76") -> tuple[list[str], dict[str, str]]:
    """A command (and environment) that runs TVM's RPC server (``qemu_rpc_server.py``) in the
    cached aarch64 environment under qemu, listening on 127.0.0.1:``port``: an emulated board for
    ``Session(rpc=...)`` and ``edgert tune --rpc`` (correctness, not speed)."""
    qemu, env_dir, info = _guest()
    return guest_command(qemu, env_dir, info, [str(RPC_SERVER), str(port)],
                         cpu=_qemu_cpu(qemu, mcpu))


def _run_guest(qemu: str, env_dir: Path, info: dict, args: list[str], *, cpu: str = "max",
               timeout: float = 600, write_pyc: bool = False) -> subprocess.CompletedProcess:
    """``qemu-aarch64 -cpu CPU -L sysroot python qemu_runner.py ARGS`` with a clean env."""
    cmd, env = guest_command(qemu, env_dir, info, [str(RUNNER), *args], cpu=cpu,
                             write_pyc=write_pyc)
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TargetError(f"the run under qemu-aarch64 took over {timeout:.0f} s") from None


@functools.lru_cache(maxsize=None)
def _qemu_cpu(qemu: str, mcpu: str) -> str:
    """The qemu CPU model for an LLVM ``mcpu`` (so that code using an extension the real CPU
    lacks fails with SIGILL, as on the device); ``max`` when this qemu does not know it."""
    cpu = QEMU_CPUS.get(mcpu, "max")
    try:
        known = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True,
                               timeout=60).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return "max"
    return cpu if cpu in known else "max"


def _ordered_inputs(manifest: dict, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    specs = manifest.get("inputs") or []
    names = [s["name"] for s in specs]
    missing = [n for n in names if n not in feeds]
    unknown = [n for n in feeds if n not in names]
    if missing or unknown:
        raise InputError(f"missing input(s) {missing}, unknown input(s) {unknown}; "
                         f"the model's inputs are {', '.join(names)}")
    arrays = []
    for spec in specs:
        a = feeds[spec["name"]]
        if not isinstance(a, np.ndarray) or a.dtype != np.dtype(spec["dtype"]):
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise InputError(f"input {spec['name']!r}: expected a {spec['dtype']} array, "
                             f"got {got}")
        arrays.append(np.ascontiguousarray(a))
    return arrays


# ---------------------------------------------------------------------------------------------
# Setting the environment up


def _build(env_dir: Path, log: Log) -> None:
    root = env_dir.parent
    for stale in root.glob(f".{env_dir.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(env_dir, ignore_errors=True)          # incomplete (no env.json)
    for tool, package in (("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise TargetError(f"setting up the aarch64 environment needs {tool} ({package}); "
                              "it downloads Debian's arm64 Python packages")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{env_dir.name}.tmp", dir=root))
    try:
        py, glibc = _fetch_debian(tmp, log)
        _fetch_wheels(tmp, py, glibc, log)
        os.rename(tmp, env_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = {"python": f"usr/bin/python{py}", "python_version": py, "glibc": glibc,
            **versions(), "env_format": ENV_FORMAT}
    step = time.perf_counter()
    proc = _run_guest(find_qemu(), env_dir, info, ["--selftest"], timeout=600, write_pyc=True)
    if proc.returncode != 0:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise TargetError("the aarch64 environment does not work under qemu-aarch64 "
                          f"(self-test exit status {proc.returncode}):\n{_tail(proc.stderr)}")
    log(f"self-test under qemu: {proc.stdout.strip()} ({time.perf_counter() - step:.1f} s)")
    info["setup_seconds"] = round(time.perf_counter() - start, 1)
    tmp_json = env_dir / ".env.json.tmp"
    tmp_json.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(tmp_json, env_dir / "env.json")
    log(f"aarch64 environment ready in {env_dir} ({info['setup_seconds']} s)")


def _fetch_debian(dest: Path, log: Log) -> tuple[str, str]:
    """Download and extract the arm64 Python + runtime libraries into ``dest/sysroot``.
    Returns the Python version (``3.11``) and the glibc version (``2.36``)."""
    step = time.perf_counter()
    apt_dir, debs, sysroot = dest / "apt", dest / "debs", dest / "sysroot"
    for d in (apt_dir / "lists" / "partial", apt_dir / "cache" / "archives" / "partial", debs):
        d.mkdir(parents=True)
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1",
            "-q"]
    # As root, apt would download as the "_apt" user, who cannot write into a cache under /root.
    with contextlib.suppress(KeyError):
        opts += ["-o", f"APT::Sandbox::User={pwd.getpwuid(os.getuid()).pw_name}"]
    update = _tool(["apt-get", *opts, "update"], "apt-get update (arm64 package lists)",
                   check=False, timeout=600)

    def cache(*args: str) -> subprocess.CompletedProcess:
        return _tool(["apt-cache", *opts, *args], "apt-cache", check=False)

    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if cache("show", f"python{host_py}-minimal").returncode == 0:
        py = host_py
    else:
        depends = cache("depends", "python3-minimal").stdout
        m = re.search(r"Depends: python(3\.\d+)-minimal", depends)
        if not m:
            raise TargetError(
                "no arm64 Python package found in this machine's apt sources (does the mirror "
                f"carry arm64, and is the network reachable?); apt-get update said:\n"
                f"{_tail(update.stdout + update.stderr)}")
        py = m.group(1)
    pkgs = [f"python{py}-minimal", f"libpython{py}-minimal", f"libpython{py}-stdlib"]
    deps = re.findall(r"^\s*\|?(?:Pre)?Depends: (\S+)$", cache("depends", *pkgs).stdout, re.M)
    pkgs += sorted({d for d in deps if _LIB_DEPS.match(d)} | {"libc6", "libstdc++6", "libgcc-s1"})
    _tool(["apt-get", *opts, "download", *pkgs], "apt-get download (arm64 .debs)", cwd=debs,
          timeout=600)
    glibc = ""
    for deb in sorted(debs.glob("*.deb")):
        _tool(["dpkg-deb", "-x", str(deb), str(sysroot)], f"dpkg-deb -x {deb.name}")
        m = re.match(r"libc6_(\d+\.\d+)", deb.name)
        glibc = m.group(1) if m else glibc
    if not (sysroot / "usr" / "bin" / f"python{py}").is_file() or not glibc:
        raise TargetError(f"the arm64 packages {pkgs} did not give python{py} and libc6")
    shutil.rmtree(apt_dir)
    shutil.rmtree(debs)
    log(f"Debian arm64 python{py} + glibc {glibc} ({len(pkgs)} packages): "
        f"{time.perf_counter() - step:.1f} s")
    return py, glibc


def _fetch_wheels(dest: Path, py: str, glibc: str, log: Log) -> None:
    """Download the aarch64 wheels and unpack them into ``dest/site``."""
    step = time.perf_counter()
    wheels, site = dest / "wheels", dest / "site"
    v = versions()
    platforms = manylinux_platforms("aarch64", glibc)
    pip_download([f"apache-tvm=={v['tvm']}", f"apache-tvm-ffi=={v['tvm_ffi']}", "ml_dtypes",
                  "typing_extensions", "cloudpickle"],     # cloudpickle: TVM's RPC server
                 wheels, py=py, platforms=platforms,
                 what="pip download (aarch64 wheels of apache-tvm)", timeout=900)
    # numpy: the host's version if it has a wheel for this Python, else the newest that does.
    if pip_download([f"numpy=={v['numpy']}"], wheels, py=py, platforms=platforms,
                    what="pip download numpy", check=False, timeout=600).returncode != 0:
        pip_download(["numpy"], wheels, py=py, platforms=platforms,
                     what="pip download (aarch64 wheel of numpy)", timeout=600)
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                if not _SKIP_MEMBERS.match(member):
                    zf.extract(member, site)
    shutil.rmtree(wheels)
    log(f"aarch64 wheels (tvm {v['tvm']}, tvm-ffi {v['tvm_ffi']}, numpy): "
        f"{time.perf_counter() - step:.1f} s")


def manylinux_platforms(arch: str, glibc: str) -> list[str]:
    """pip ``--platform`` tags a machine with ``glibc`` (``"2.36"``) on ``arch`` (``x86_64``,
    ``aarch64``) accepts: ``manylinux_2_X_<arch>`` for X from its minor down to 17, and
    ``manylinux2014_<arch>``."""
    major, minor = (int(x) for x in glibc.split("."))
    return [*(f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)),
            f"manylinux2014_{arch}"]


def pip_download(requirements: list[str], dest: Path, *, py: str, platforms: list[str],
                 what: str, check: bool = True, timeout: float = 600,
                 context: str = "aarch64 environment setup") -> subprocess.CompletedProcess:
    """``pip download --no-deps --only-binary=:all:`` of ``requirements`` (``name==version``)
    for CPython ``py`` (``"3.11"``) on ``platforms`` into ``dest``: wheels for another machine.
    pip's own HTTP cache makes a repeated download cheap.

    Raises:
        TargetError: pip failed (``check``) or took over ``timeout`` seconds; the message
            starts with ``context`` and names ``what``.
    """
    tag = "cp" + py.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "--python-version", py, "--implementation", "cp",
           "--abi", tag, *(f"--platform={p}" for p in platforms), "-d", str(dest),
           *requirements]
    return _tool(cmd, what, check=check, timeout=timeout, context=context)


def _tool(cmd: list[str], what: str, *, check: bool = True, cwd: Path | None = None,
          timeout: float = 300, context: str = "aarch64 environment setup"
          ) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, "LANG": "C", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise TargetError(f"{context}: {what} took over {timeout:.0f} s "
                          "(no network?)") from None
    except OSError as e:
        raise TargetError(f"{context}: {what} could not start: {e}") from None
    if check and proc.returncode != 0:
        raise TargetError(f"{context}: {what} failed (exit status "
                          f"{proc.returncode}; no network?):\n{_tail(proc.stdout + proc.stderr)}")
    return proc


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgert.targets.qemu``: set the cache up (or confirm it) and print its path."""
    del argv
    start = time.perf_counter()
    try:
        env_dir = ensure_aarch64_env(log=lambda line: print(line, flush=True))
    except TargetError as e:
        print(f"error: {e}", file=sys.stderr)
        return TargetError.exit_code
    print(f"{env_dir} ({time.perf_counter() - start:.1f} s)")
    return 0


__all__ = ["ensure_aarch64_env", "run_under_qemu", "cache_base", "cache_root", "env_key",
           "find_qemu", "versions", "manylinux_platforms", "pip_download", "guest_command"]


if __name__ == "__main__":
    sys.exit(main())
