"""Run an artifact's compiled library on the TVM Relax virtual machine.

Only ``tvm.runtime`` is used here, so this works with ``TVM_USE_RUNTIME_LIB=1`` (the
runtime-only mode meant for devices, where the compiler library is absent).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgert.artifact import Artifact
from edgert.errors import ArtifactError, InputError, TargetError
from edgert.hugepages import anonymous_mappings, back_by_huge_pages
from edgert.targets import TARGETS, Target, check_can_run
from edgert.threads import AdaptiveThreads, idle_cpu_seconds, physical_cores, thread_policy


class TvmBackend:
    """The compiled library of an artifact, loaded into a Relax VM."""

    name = "tvm"

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        self.target, library = compiled_library(artifact, threads)
        check_can_run(self.target)
        self.threads = threads if threads is not None else physical_cores()

        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        if self.target.device == "cuda":
            _ensure_cuda_runtime(tvm, self.target.cuda_arch)
        self.device = tvm.cuda(0) if self.target.device == "cuda" else tvm.cpu(0)
        before = anonymous_mappings()
        self._module = _load_library(library, artifact.path)
        self._vm = VirtualMachine(self._module, self.device)
        # the constants TVM just allocated (weights): huge pages, see edgert.hugepages
        self.huge_page_bytes = (back_by_huge_pages(before, len(library))
                                if self.target.device != "cuda" else 0)
        self._main = self._vm["main"]
        # the "adaptive" thread policy: 1 thread instead of all while that runs faster
        self._adaptive = (AdaptiveThreads(self.threads, idle_cpu_seconds)
                          if thread_policy() == "adaptive" and self.target.device != "cuda"
                          else None)
        self._staging: dict[int, tuple[np.ndarray, object]] = {}

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        count = self._adaptive.next_count() if self._adaptive else self.threads
        self._configure_threads(count)
        if self.target.device == "cuda":
            args = [self._tvm.runtime.tensor(a, self.device) for a in inputs]
            result = self._main(*args)
            return [r.numpy() for r in as_list(result)]
        # CPU: each input is copied into a 64-byte aligned staging array kept from call to call
        # and lent to TVM by DLPack; outputs are numpy views of the VM's fresh output tensors
        # (kept alive by the view). Converting with tvm.runtime.tensor / .numpy() instead costs
        # ~25 us a call, more than the kernels of a small model (benchmarks/bench_overhead.py).
        # Large inputs that are already aligned and contiguous (an LLM's KV cache, see
        # aligned_empty) are lent as they are: the copy would cost more than the DLPack call.
        # Callers serialize run() (Session holds a lock): the staging arrays are shared.
        args = [self._stage(i, a) for i, a in enumerate(inputs)]
        start = time.perf_counter()
        outputs = as_list(self._main(*args))
        if self._adaptive:
            self._adaptive.record(count, time.perf_counter() - start)
        return [np.from_dlpack(r).copy() if any(r.same_as(t) for t in args)   # an input echoed
                else np.from_dlpack(r) for r in outputs]

    def kernel_times(self, inputs: list[np.ndarray], repeats: int) -> list[KernelTime]:
        """Wall time of each kernel the VM calls (ours and TVM's), summed over ``repeats`` runs
        after one warm-up run and given per run, slowest first, and one row
        :data:`VM_OVERHEAD`: what the run costs beyond its kernels (the VM's builtins, which
        allocate and make shapes, and its dispatch), the median time of a plain run minus the
        kernels' sum, with the builtins' calls. Each call's time has the instrument's own cost
        (about a microsecond, estimated as the shortest call seen) taken off."""
        self._configure_threads()
        args = [self._stage(i, a) for i, a in enumerate(inputs)]
        plain = self._main
        plain(*args)
        run_ms = []
        for _ in range(repeats):
            start = time.perf_counter()
            plain(*args)
            run_ms.append((time.perf_counter() - start) * 1e3)
        spans: dict[str, list[float]] = {}
        for call in self._instrumented_runs(args, repeats):
            spans.setdefault(call.name, []).append(call.dur_us * 1e-6)
        overhead = min((min(v) for v in spans.values()), default=0.0)
        times = [KernelTime(name, len(v) // repeats,
                            sum(t - overhead for t in v) / repeats * 1e3)
                 for name, v in spans.items() if not name.startswith(BUILTIN_PREFIX)]
        builtin_calls = sum(len(v) for name, v in spans.items() if name.startswith(BUILTIN_PREFIX))
        vm_ms = max(float(np.median(run_ms)) - sum(t.ms for t in times), 0.0)
        times.append(KernelTime(VM_OVERHEAD, builtin_calls // repeats, vm_ms))
        return sorted(times, key=lambda k: -k.ms)

    def kernel_calls(self, inputs: list[np.ndarray], runs: int) -> list[KernelCall]:
        """Every kernel call of ``runs`` runs (after one unrecorded warm-up run) in call order,
        TVM's ``vm.builtin.*`` helpers left out: the per-op timeline."""
        self._configure_threads()
        args = [self._stage(i, a) for i, a in enumerate(inputs)]
        self._main(*args)
        return [c for c in self._instrumented_runs(args, runs)
                if not c.name.startswith(BUILTIN_PREFIX)]

    def _instrumented_runs(self, args: list[object], runs: int) -> list[KernelCall]:
        """``runs`` runs on a second VM over the same library with an instrument around each
        call (after one uninstrumented warm-up of that VM): every call, builtins included."""
        from tvm.runtime.vm import VirtualMachine

        if self.target.device == "cuda":
            raise TargetError("per-kernel times are measured for CPU artifacts only (CUDA "
                              "kernels run asynchronously)")
        calls: list[KernelCall] = []
        state = {"run": 0, "start": 0.0, "origin": 0.0}

        def instrument(_func: object, symbol: str, before: bool, *_rest: object) -> int:
            now = time.perf_counter()
            if before:
                state["start"] = now
            else:
                calls.append(KernelCall(symbol, state["run"],
                                        (state["start"] - state["origin"]) * 1e6,
                                        (now - state["start"]) * 1e6))
            return 0                                   # kNoOp: run the call as usual

        vm = VirtualMachine(self._module, self.device)
        main = vm["main"]
        main(*args)
        vm.set_instrument(instrument)
        state["origin"] = time.perf_counter()
        for r in range(runs):
            state["run"] = r
            main(*args)
        return calls

    def _stage(self, index: int, a: np.ndarray) -> object:
        """Input ``index`` copied into its staging array; returns the TVM tensor viewing it."""
        if (a.nbytes >= LEND_BYTES and a.flags.c_contiguous and a.dtype.isnative
                and a.ctypes.data % ALIGNMENT == 0):
            return self._tvm.runtime.from_dlpack(a)
        host, tensor = self._staging.get(index, (None, None))
        if host is None or host.shape != a.shape or host.dtype != a.dtype:
            host = aligned_empty(a.shape, a.dtype)
            if a.size == 0:   # numpy's pointer of an empty view need not be aligned
                tensor = self._tvm.runtime.empty(a.shape, str(a.dtype), self.device)
            else:
                tensor = self._tvm.runtime.from_dlpack(host)
            self._staging[index] = (host, tensor)
        np.copyto(host, a)
        return tensor

    def _configure_threads(self, count: int | None = None) -> None:
        # TVM's thread pool is per calling thread, shared by the sessions it runs: configure
        # it whenever its count differs from what this run needs.
        count = count or self.threads
        if getattr(_POOL_COUNT, "count", None) == count:
            return
        config = self._tvm.get_global_func("runtime.config_threadpool")
        config(1, count)
        _POOL_COUNT.count = count


_POOL_COUNT = threading.local()
"""The worker count TVM's pool of the calling thread was last configured with."""


@dataclass(frozen=True)
class KernelTime:
    """One function of a run: its name, calls per run and milliseconds per run (all calls)."""

    name: str
    calls: int
    ms: float


@dataclass(frozen=True)
class KernelCall:
    """One call of a compiled function: ``run`` its run's index, ``start_us`` from the start
    of the first recorded run, ``dur_us`` its wall time (microseconds, including the
    instrument's own ~1 us)."""

    name: str
    run: int
    start_us: float
    dur_us: float


BUILTIN_PREFIX = "vm.builtin."
"""TVM's own helper functions (allocation, shapes), not kernels."""
VM_OVERHEAD = "(VM: builtins and dispatch)"
"""The :meth:`TvmBackend.kernel_times` row for a run's time outside its kernels."""
ALIGNMENT = 64
"""Byte alignment TVM requires of tensors it does not allocate itself."""
LEND_BYTES = 1 << 20
"""Inputs this large, aligned and C-contiguous are lent to TVM without a staging copy."""


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data is ``ALIGNMENT``-byte aligned (a
    prefix ``a[:n]`` of it is too, so a growing buffer can be fed without copies)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buf.ctypes.data % ALIGNMENT
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def compiled_library(artifact: Artifact, threads: int | None) -> tuple[Target, bytes]:
    """The artifact's target (from its manifest) and compiled library bytes; checks the
    requested thread count too.

    Raises:
        TargetError: the manifest names no known target.
        ArtifactError: the artifact holds no compiled library.
        InputError: ``threads`` < 1.
    """
    target_name = artifact.manifest.get("target", {}).get("name")
    if target_name not in TARGETS:
        raise TargetError(f"{artifact.path}: unknown target {target_name!r} in the manifest")
    lib_member = artifact.lib_member
    if not lib_member or lib_member not in artifact.members:
        raise ArtifactError(f"{artifact.path}: no compiled library in the artifact")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    return TARGETS[target_name], artifact.members[lib_member]


def as_list(result: object) -> list:
    """The VM's result (one tensor, or a tuple of them) as a list."""
    return [result] if hasattr(result, "shape") else list(result)


_CUDA_RUNTIME: list = []   # the loaded libtvm_runtime_cuda, kept alive


def _ensure_cuda_runtime(tvm: object, arch: str) -> None:
    """Prepare TVM's runtime to load a CUDA library built for ``arch`` (``sm_XY``).

    1. TVM's CUDA runtime (``libtvm_runtime_cuda.so``) must be registered: a full ``import tvm``
       loads it, the runtime-only mode meant for devices (``TVM_USE_RUNTIME_LIB=1``) does not,
       so it is loaded here from TVM's library folder.
    2. TVM 0.27 stores CUDA kernels as CUDA C source in the library and compiles them when the
       library is loaded, through ``tvm_callback_cuda_compile``. TVM's own callback asks the
       compiler library for the current target's arch, which the runtime-only mode lacks; ours
       compiles for this GPU's arch (at least ``arch``: the kernels were scheduled for it) to a
       cubin with NVRTC (``cuda-bindings``) when it is importable, else to a fatbin with
       ``nvcc``.

    Raises:
        TargetError: this TVM has no CUDA runtime, the GPU is older than ``arch``, or neither
            NVRTC nor nvcc is available.
    """
    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        import ctypes

        path = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
        try:
            _CUDA_RUNTIME.append(ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL))
        except OSError as e:
            raise TargetError(f"this TVM installation cannot run CUDA artifacts: loading {path} "
                              f"failed ({e})") from None
    import importlib.util
    import shutil

    import tvm_ffi

    device = tvm.cuda(0)
    if not device.exist:
        raise TargetError(f"this artifact needs an NVIDIA GPU ({arch}) and CUDA found none")
    device_arch = "sm_" + device.compute_version.replace(".", "")
    if int(device_arch.removeprefix("sm_")) < int(arch.removeprefix("sm_")):
        raise TargetError(f"this artifact was compiled for {arch} GPUs; this GPU is {device_arch}")
    arch = device_arch

    try:
        has_nvrtc = importlib.util.find_spec("cuda.bindings") is not None
    except ModuleNotFoundError:          # no "cuda" package at all
        has_nvrtc = False
    if has_nvrtc:
        compiler, fmt, target_arch = "nvrtc", "cubin", arch
    elif shutil.which("nvcc"):
        version = arch.removeprefix("sm_")
        compiler, fmt, target_arch = "nvcc", "fatbin", ["-gencode",
                                                        f"arch=compute_{version},code=sm_{version}"]
    else:
        raise TargetError("running a CUDA artifact compiles its kernels when it loads: install "
                          "NVRTC's Python bindings (pip install cuda-bindings) or put the CUDA "
                          "toolkit's nvcc on the PATH")

    def compile_cuda(code: str, *_target: object) -> bytearray:
        from tvm.support import nvcc

        return nvcc.compile_cuda(code, target_format=fmt, arch=target_arch, compiler=compiler)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


def _load_library(data: bytes, source: os.PathLike) -> object:
    """dlopen the library bytes through a temporary file (removed right after loading)."""
    import tvm

    with tempfile.TemporaryDirectory(prefix="edgert-lib-") as tmp:
        lib_path = os.path.join(tmp, "model.so")
        with open(lib_path, "wb") as f:
            f.write(data)
        try:
            return tvm.runtime.load_module(lib_path)
        except Exception as e:
            raise ArtifactError(f"{source}: the compiled library does not load: {e}") from None
