"""Decoder language models (``edgert.models.llama`` artifacts): prompt processing and token
generation rates, named as llama-bench names them (``pp N``: N prompt tokens in one prefill,
``tg M``: M tokens generated one step at a time)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

DECODER_INPUTS = ("input_ids", "position_ids", "attention_mask", "past")


def is_decoder(session: Any) -> bool:
    """True for an artifact with the KV-cache decoder's inputs (see edgert.models.llama)."""
    names = {i.name for i in session.get_inputs()}
    return set(DECODER_INPUTS) <= names


def _geometry(session: Any) -> tuple[tuple[int, ...], int]:
    """(cache shape per position [L, 2, KVH, HD], vocabulary size) from the artifact's I/O."""
    past = next(i for i in session.get_inputs() if i.name == "past")
    logits = session.get_outputs()[0]
    rest = tuple(past.shape[1:])
    if not all(isinstance(d, int) for d in rest) or not isinstance(logits.shape[-1], int):
        from edgert.errors import InputError
        raise InputError("this decoder artifact has dynamic cache or vocabulary sizes")
    return rest, int(logits.shape[-1])


def _feed(ids: np.ndarray, past: np.ndarray) -> dict[str, np.ndarray]:
    from edgert.models.llama import causal_mask

    n, p = len(ids), len(past)
    return {"input_ids": ids[None].astype(np.int64),
            "position_ids": np.arange(p, p + n, dtype=np.int64)[None],
            "attention_mask": causal_mask(n, p), "past": past}


def decode_step_feed(session: Any, past_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The feed of one generation step after ``past_tokens`` cached positions (random cache
    and token): what the latency runs of a decoder time."""
    cache, vocab = _geometry(session)
    rng = np.random.default_rng(seed)
    past = rng.standard_normal((past_tokens, *cache)).astype(np.float32)
    return _feed(rng.integers(0, vocab, 1), past)


def decoder_rates(session: Any, prompt_tokens: int, gen_tokens: int, repeats: int = 5,
                  seed: int = 0) -> dict[str, Any]:
    """``pp``/``tg`` tokens per second, mean and std over ``repeats`` generations from random
    prompts: one prefill of ``prompt_tokens`` tokens, then ``gen_tokens`` greedy steps, each
    feeding the previous step's argmax and the grown KV cache."""
    from edgert.backends.tvm_vm import aligned_empty

    cache, vocab = _geometry(session)
    rng = np.random.default_rng(seed)
    buffer = aligned_empty((prompt_tokens + gen_tokens, *cache), np.dtype(np.float32))
    pp, tg = [], []
    for _ in range(max(1, repeats)):
        ids = rng.integers(0, vocab, prompt_tokens)
        t0 = time.perf_counter()
        logits, new_kv = session.run(None, _feed(ids, buffer[:0]))
        buffer[:prompt_tokens] = new_kv
        token = int(np.argmax(logits[0, -1]))
        t1 = time.perf_counter()
        for step in range(gen_tokens):
            p = prompt_tokens + step
            logits, new_kv = session.run(None, _feed(np.array([token]), buffer[:p]))
            buffer[p:p + 1] = new_kv
            token = int(np.argmax(logits[0, -1]))
        t2 = time.perf_counter()
        pp.append(prompt_tokens / (t1 - t0))
        tg.append(gen_tokens / (t2 - t1) if gen_tokens else float("nan"))
    return {"pp": {"tokens": prompt_tokens, "tokens_per_s": float(np.mean(pp)),
                   "std": float(np.std(pp))},
            "tg": {"tokens": gen_tokens, "tokens_per_s": float(np.mean(tg)),
                   "std": float(np.std(tg))},
            "repeats": max(1, repeats)}
