"""The peer runtimes edgert is compared with (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import time
from typing import Any


def onnxruntime_session(model_path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session set up for side-by-side timing with edgert.

    Spinning of ORT's intra-op pool is turned off: interleaved with edgert's kernels, a
    spinning pool steals the cores from the other runtime (measured here: edgert's
    TransformerEncoder went from 1.9 ms to 6.0 ms next to a spinning ORT on 2 cores).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def llama_cpp_model(gguf_path: str | os.PathLike, threads: int | None = None, *,
                    logits_all: bool = False) -> Any:
    """llama.cpp (llama-cpp-python) on a GGUF file, set up for side-by-side timing with edgert:
    its threads pinned to ``threads`` (default: the physical cores, as edgert's), where
    llama-cpp-python's own default is half the CPUs. ``logits_all``: keep every position's
    logits (for perplexity). Raises ImportError when llama-cpp-python is not installed."""
    from llama_cpp import Llama

    from edgert.threads import physical_cores

    threads = threads or physical_cores()
    return Llama(model_path=str(gguf_path), n_ctx=1024, n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False)


def llama_cpp_generate(llm: Any, prompt: list[int], max_new: int) -> tuple[list[int], float, float]:
    """Greedy decoding with llama.cpp from a fresh context, timed like
    :func:`edgert.models.llama.generate`: one prefill over ``prompt`` gives the first token,
    then one step per further token. Returns ``(tokens, prefill seconds, decode seconds)``."""
    import numpy as np

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tokens = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
    t1 = time.perf_counter()
    while len(tokens) < max_new:
        llm.eval([tokens[-1]])
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    return tokens, t1 - t0, time.perf_counter() - t1


GGML_TYPES = {"f32": 0, "q4_0": 2, "q8_0": 8, "tq1_0": 34, "tq2_0": 35}
"""ggml's ``enum ggml_type`` values (ggml.h) for the kernels compared with; checked at load
against ``ggml_type_name``."""


def libggml_dir() -> tuple[str, str]:
    """The folder holding ``libggml-base.so`` / ``libggml-cpu.so`` and a line naming it: the
    PyPI wheel ``libggml-python`` (prebuilt ggml, generic AVX2 x86 build) first, else the
    libggml that llama-cpp-python built for this machine. Raises ImportError without either."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("libggml")
    if spec is not None and spec.submodule_search_locations:
        root = list(spec.submodule_search_locations)[0]
        for sub in ("lib64", "lib"):
            if os.path.exists(os.path.join(root, sub, "libggml-cpu.so")):
                version = importlib.metadata.version("libggml-python")
                return os.path.join(root, sub), f"libggml-python {version}"
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib = os.path.join(os.path.dirname(spec.origin), "lib")
        if os.path.exists(os.path.join(lib, "libggml-cpu.so")):
            version = importlib.metadata.version("llama_cpp_python")
            return lib, f"llama-cpp-python {version}'s libggml"
    raise ImportError("no libggml: pip install libggml-python (or llama-cpp-python)")


_GGML_POOLS: dict[tuple[str, int], int] = {}
"""ggml threadpools by (library folder, threads): made once, kept for the process (a pool per
instance would leave dozens of polling threads on the cores of a benchmark's copies)."""


class GgmlMatMul:
    """``y[M, N] = x[M, K] @ W[K, N]`` by ggml's CPU kernels (llama.cpp's own code), called
    through ctypes in the libggml of :func:`libggml_dir`. ``W`` is quantized by ggml
    itself (``q4_0``, ``tq1_0``, ``tq2_0`` ternary, ``q8_0``); ggml quantizes ``x`` to its dot
    type inside ``mul_mat`` as llama.cpp does. With ``threads > 1`` the graph runs on a ggml
    threadpool (``ggml_threadpool_new`` with its default parameters, polling as llama.cpp's
    does; one per thread count, shared) and is planned once (``ggml_graph_plan``):
    ``ggml_graph_compute_with_ctx`` would start and join its threads on every call (2-4 ms
    a call here).

    Raises ImportError when neither libggml-python nor llama-cpp-python is installed.
    """

    def __init__(self, w: Any, qtype: str, rows: int, threads: int) -> None:
        import ctypes

        import numpy as np

        lib_dir, _ = libggml_dir()
        base = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        cpu = ctypes.CDLL(os.path.join(lib_dir, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        p, i64, c_size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t

        class InitParams(ctypes.Structure):
            _fields_ = [("mem_size", c_size), ("mem_buffer", p), ("no_alloc", ctypes.c_bool)]

        class Cplan(ctypes.Structure):             # ggml-cpu.h, plus room for later fields
            _fields_ = [("work_size", c_size), ("work_data", p), ("n_threads", ctypes.c_int),
                        ("threadpool", p), ("abort_callback", p), ("abort_callback_data", p),
                        ("use_ref", ctypes.c_bool), ("_room", ctypes.c_char * 64)]

        for lib, name, res, args in [
                (base, "ggml_init", p, [InitParams]), (base, "ggml_free", None, [p]),
                (base, "ggml_new_tensor_2d", p, [p, ctypes.c_int, i64, i64]),
                (base, "ggml_get_data", p, [p]), (base, "ggml_nbytes", c_size, [p]),
                (base, "ggml_row_size", c_size, [ctypes.c_int, i64]),
                (base, "ggml_type_name", ctypes.c_char_p, [ctypes.c_int]),
                (base, "ggml_quantize_chunk", c_size, [ctypes.c_int, p, p, i64, i64, i64, p]),
                (base, "ggml_mul_mat", p, [p, p, p]), (base, "ggml_new_graph", p, [p]),
                (base, "ggml_build_forward_expand", None, [p, p]),
                (base, "ggml_threadpool_params_init", None, [p, ctypes.c_int]),
                (cpu, "ggml_cpu_init", None, []),
                (cpu, "ggml_threadpool_new", p, [p]), (cpu, "ggml_threadpool_pause", None, [p]),
                (cpu, "ggml_graph_plan", Cplan, [p, ctypes.c_int, p]),
                (cpu, "ggml_graph_compute", ctypes.c_int, [p, ctypes.POINTER(Cplan)])]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        cpu.ggml_cpu_init()
        qt = GGML_TYPES[qtype]
        if base.ggml_type_name(qt).decode() != qtype:
            raise ImportError(f"this libggml numbers its types differently ({qtype} is "
                              f"{base.ggml_type_name(qt).decode()!r})")
        k, n = w.shape
        wt = np.ascontiguousarray(w.T, np.float32)                 # ggml rows: columns of W
        mem = base.ggml_row_size(qt, k) * n + 8 * (k + n) * rows + (64 << 20)
        self._base, self._cpu = base, cpu
        self._ctx = base.ggml_init(InitParams(mem, None, False))
        a = base.ggml_new_tensor_2d(self._ctx, qt, k, n)
        base.ggml_quantize_chunk(qt, wt.ctypes.data, base.ggml_get_data(a), 0, n, k, None)
        b = base.ggml_new_tensor_2d(self._ctx, GGML_TYPES["f32"], k, rows)
        c = base.ggml_mul_mat(self._ctx, a, b)
        self._graph = base.ggml_new_graph(self._ctx)
        base.ggml_build_forward_expand(self._graph, c)
        self.weight_bytes = int(base.ggml_nbytes(a))
        f32 = ctypes.POINTER(ctypes.c_float)
        self._x = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(b), f32), (rows, k))
        self._y = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(c), f32), (rows, n))
        pool = None
        if threads > 1:                 # one pool per thread count, shared by every instance
            pool = _GGML_POOLS.get((lib_dir, threads))
            if pool is None:
                params = ctypes.create_string_buffer(4096)     # ggml_threadpool_params
                base.ggml_threadpool_params_init(params, threads)
                pool = _GGML_POOLS[(lib_dir, threads)] = cpu.ggml_threadpool_new(params)
        self._pool = pool
        self._plan = cpu.ggml_graph_plan(self._graph, threads, pool)
        self._work = np.empty(max(1, self._plan.work_size), np.uint8)
        self._plan.work_data = self._work.ctypes.data

    def run(self, x: Any) -> Any:
        """``x`` float32 [M, K] -> float32 [M, N] (a copy: ggml's buffer dies with ``self``)."""
        self._x[...] = x
        if self._cpu.ggml_graph_compute(self._graph, self._plan) != 0:
            raise RuntimeError("ggml_graph_compute failed")
        return self._y.copy()

    def pause(self) -> None:
        """Put the threadpool's workers to sleep now instead of polling for the next graph
        (they poll a while after each one, taking a core from whatever runs next, e.g. the
        next candidate of an interleaved benchmark). The next :meth:`run` wakes them."""
        if self._pool:
            self._cpu.ggml_threadpool_pause(self._pool)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self._base.ggml_free(self._ctx)
            self._ctx = None
