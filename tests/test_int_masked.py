"""Attention masks and mean pooling in integer-only graphs (BERT-style sentence encoders).

A tiny randomly initialized encoder in PyTorch, exported the way HuggingFace BERT is
(TorchScript exporter, opset 17: erf-form GELU, fused LayerNorm, ``(1 - mask) * -10000``
added to the scores, in-graph mean pooling ``sum(x * mask) / clamp(sum(mask), 1e-9)``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import Session
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.backends.reference import run_reference
from edgert.compiler import compile_model
from edgert.model_info import inspect_path

from ophelpers import assert_bit_exact

torch = pytest.importorskip("torch")

VOCAB, D, HEADS, FF, MAXLEN = 60, 32, 4, 64, 24


def _encoder() -> "torch.nn.Module":
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(MAXLEN, D)
            self.ln0, self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
            self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc1, self.fc2 = nn.Linear(D, FF), nn.Linear(FF, D)
            self.register_buffer("pos_ids", torch.arange(MAXLEN)[None])   # as HF BERT does

        def forward(self, ids, mask):
            b, s = ids.shape
            x = self.ln0(self.tok(ids) + self.pos(self.pos_ids[:, :s]))
            q, k, v = (t.reshape(b, s, HEADS, D // HEADS).transpose(1, 2)
                       for t in self.qkv(x).chunk(3, dim=-1))   # Slice arithmetic on shapes
            bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
            p = torch.softmax(q @ k.transpose(-1, -2) / (D // HEADS) ** 0.5 + bias, dim=-1)
            x = self.ln1(x + self.out((p @ v).transpose(1, 2).reshape(b, s, D)))
            x = self.ln2(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))
            m = mask[..., None].float()
            return x, (x * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)

    torch.manual_seed(0)
    return Tiny().eval()


def _batch(rng, n: int, lengths: tuple[int, int] = (3, 20)) -> dict[str, np.ndarray]:
    lens = rng.integers(*lengths, n)
    s = int(lens.max())
    ids = rng.integers(1, VOCAB, (n, s)).astype(np.int64)
    mask = (np.arange(s)[None] < lens[:, None]).astype(np.int64)
    return {"ids": ids * mask, "mask": mask}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("masked")
    rng = np.random.default_rng(0)
    src = tmp / "tiny_encoder.onnx"
    feed = _batch(rng, 2)
    torch.onnx.export(_encoder(), (torch.from_numpy(feed["ids"]), torch.from_numpy(feed["mask"])),
                      str(src), dynamo=False, opset_version=17, input_names=["ids", "mask"],
                      output_names=["tokens", "pooled"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("ids", "mask", "tokens")}
                      | {"pooled": {0: "batch"}})
    calib = tmp / "calib.npz"
    np.savez(calib, **_batch(rng, 64))
    return src, compile_model(src, tmp / "tiny.edgert", int_only=True, calib=calib)


def test_integer_graph_has_no_float_ops_and_masks_become_shiftmax_exclude(compiled):
    _, artifact = compiled
    info = inspect_path(artifact)
    assert info["float_ops"] == 0, info
    graph = onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER]).graph
    (softmax,) = [n for n in graph.node if n.op_type == "Shiftmax"]
    assert len(softmax.input) == 2          # the mask arrives as Shiftmax's exclude input
    assert {"ReduceSum", "Div"} <= {n.op_type for n in graph.node}    # integer mean pooling
    fused = read_artifact(artifact).manifest["quantization"]["fused"]
    assert fused["Gelu(erf)"] == 1
    consts = {t.name for t in graph.initializer}       # chunk's shape arithmetic folded:
    chunks = [n for n in graph.node if n.op_type == "Slice" and n.input[0] not in consts]
    assert chunks and all(set(n.input[1:]) <= consts for n in chunks)   # constant bounds


def test_backends_bit_exact_and_close_to_fp32(compiled):
    src, artifact = compiled
    feed = _batch(np.random.default_rng(1), 16)
    want = run_reference(onnx.load_from_string(read_artifact(artifact).members[MODEL_MEMBER]), feed)
    for backend in ("tvm", "numba"):
        for i, (g, w) in enumerate(zip(Session(artifact, backend=backend).run(None, feed), want)):
            assert_bit_exact(f"{backend} output {i}", g, w)
    fp32 = ort.InferenceSession(str(src)).run(["pooled"], feed)[0]
    pooled = want[1]
    cos = (fp32 * pooled).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(pooled, axis=1)
    assert cos.min() > 0.995, cos


def test_padding_changes_nothing_bit_for_bit(compiled):
    """Excluded positions take no part in Shiftmax, P@V or the pooling sums: a sentence padded
    inside a batch gets exactly the embedding it gets alone."""
    _, artifact = compiled
    feed = _batch(np.random.default_rng(2), 6, lengths=(2, 12))
    session = Session(artifact, backend="numba")
    batched = session.run(["pooled"], feed)[0]
    for row, length in enumerate(feed["mask"].sum(1)):
        alone = {k: v[row:row + 1, :length] for k, v in feed.items()}
        np.testing.assert_array_equal(session.run(["pooled"], alone)[0][0], batched[row])
