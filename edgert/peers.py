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
