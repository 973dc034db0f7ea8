"""The tiny ViT behind `edgert demo`: train on scikit-learn's digits, export, compile, run.

    python examples/vit_digits.py                 # rebuild edgert/data/vit_digits{.onnx,_test.npz,_calib.npz}
    python examples/vit_digits.py --out /tmp/vit  # write somewhere else
    python examples/vit_digits.py --finetune-binary linear --out /tmp/vit
        # the bundled model fine-tuned with binary attention (3 epochs), exported with its
        # hashes to vit_digits_binary_linear.onnx, compiled with --binary-attention, against
        # the post-training fit

Steps: load the 8x8 digits (1797 images) and split off a stratified 20% held-out test set;
train a 2-block ViT (2x2 patches -> 16 tokens + a class token, width 32, 4 heads, GELU MLP)
with a fixed seed; export it to ONNX with a dynamic batch axis; check that onnxruntime on the
ONNX file agrees with PyTorch; compile it with edgert for this machine and check the compiled
model against onnxruntime. Needs torch and scikit-learn (`pip install -e '.[dev]'`).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

DATA_DIR = Path(__file__).resolve().parent.parent / "edgert" / "data"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """Input (batch, 1, 8, 8) float32 in [0, 1]; output (batch, 10) logits."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 64,
                 patch: int = 2, classes: int = 10) -> None:
        super().__init__()
        tokens = (8 // patch) ** 2
        self.patch = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def load_split(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Digits as float32 (N, 1, 8, 8) in [0, 1], split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(images, digits.target.astype(np.int64), test_size=0.2,
                            stratify=digits.target, random_state=seed)


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    model = TinyViT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * math.ceil(len(x) / 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def from_onnx(path: str | Path) -> TinyViT:
    """The TinyViT of an ONNX file this script exported (its weights read back)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    model = TinyViT()
    state = model.state_dict()
    # the exporter stores each Linear's weight transposed, unnamed, as the MatMul's 2nd input
    linear = [n for n in state if n.endswith(".weight") and state[n].dim() == 2 and n != "head.weight"]
    matmuls = [n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if len(linear) != len(matmuls):
        raise ValueError(f"{path}: {len(matmuls)} weight MatMuls for {len(linear)} Linear layers")
    values = {**{n: inits[n] for n in state if n in inits},
              **{n: inits[m].T for n, m in zip(linear, matmuls)}}
    missing = set(state) - set(values)
    if missing:
        raise ValueError(f"{path}: no weights for {sorted(missing)}")
    model.load_state_dict({n: torch.from_numpy(np.array(v)) for n, v in values.items()})
    return model.eval()


def finetune_binary(form: str, epochs: int, out: Path) -> int:
    """The bundled model with binary attention: post-training fit against a short fine-tune
    (``edgert.compiler.binary_attention.finetune``), both compiled, top-1 on the held-out
    digits."""
    import edgert
    from edgert.compiler import compile_model, export
    from edgert.compiler.binary_attention import finetune

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = load_split()
    calib = {"image": x_train[:32]}
    out.mkdir(parents=True, exist_ok=True)
    bundled = DATA_DIR / "vit_digits.onnx"

    def correct(onnx_path: Path, name: str) -> int:
        art = compile_model(onnx_path, out / f"{name}.edgert", binary_attention=True,
                            attention_form=form, calib=calib)
        [logits] = edgert.Session(art).run(None, {"image": x_test})
        return int((logits.argmax(1) == y_test).sum())

    post = correct(bundled, f"vit_digits_post_{form}")
    print(f"post-training binary attention ({form}): {post}/{len(y_test)}")
    model = from_onnx(bundled)
    hashes = finetune(model, (x_train, y_train), epochs, form=form, calib=x_train[:32],
                      progress=lambda e, n, loss: print(f"epoch {e}/{n}: loss {loss:.4f}"))
    path = export(model, (torch.from_numpy(x_train[:2].copy()),),
                  out / f"vit_digits_binary_{form}.onnx", input_names=["image"],
                  output_names=["logits"])
    hashes.attach(path)
    tuned = correct(path, f"vit_digits_binary_{form}")
    print(f"fine-tuned {epochs} epochs ({form}): {tuned}/{len(y_test)}; wrote {path}")
    return 0 if tuned > post else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--min-accuracy", type=float, default=0.9,
                        help="fail if held-out accuracy is below this")
    parser.add_argument("--finetune-binary", choices=["quadratic", "linear"],
                        help="fine-tune the bundled model with binary attention of this form")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.finetune_binary:
        return finetune_binary(args.finetune_binary, args.finetune_epochs, args.out)

    import onnxruntime as ort

    import edgert
    from edgert.compiler import compile_model, export

    torch.set_num_threads(2)
    x_train, x_test, y_train, y_test = load_split()
    model = train(x_train, y_train, args.epochs)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    acc = float((torch_logits.argmax(1) == y_test).mean())
    print(f"trained {args.epochs} epochs: held-out accuracy {acc:.4f} on {len(y_test)} images")
    if acc < args.min_accuracy:
        print(f"accuracy below {args.min_accuracy}", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = export(model, (torch.from_numpy(x_test[:2]),), args.out / "vit_digits.onnx",
                       input_names=["image"], output_names=["logits"])
    np.savez_compressed(args.out / "vit_digits_test.npz", images=x_test, labels=y_test)
    # calibration samples for --int-only: 128 training images (never the held-out ones)
    calib = np.random.default_rng(0).choice(len(x_train), 128, replace=False)
    np.savez_compressed(args.out / "vit_digits_calib.npz", image=x_train[calib])

    ort_logits = ort.InferenceSession(str(onnx_path)).run(None, {"image": x_test})[0]
    ort_err = float(np.abs(ort_logits - torch_logits).max())
    print(f"onnxruntime vs torch: max |diff| {ort_err:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        art = compile_model(onnx_path, Path(tmp) / "vit.edgert", target="host")
        [ours] = edgert.Session(art).run(None, {"image": x_test})
    rel = float(np.abs(ours - ort_logits).max() / np.abs(ort_logits).max())
    ours_acc = float((ours.argmax(1) == y_test).mean())
    print(f"edgert vs onnxruntime: max relative diff {rel:.2e}; edgert accuracy {ours_acc:.4f}")
    print(f"wrote {onnx_path}, {args.out / 'vit_digits_test.npz'} and vit_digits_calib.npz")
    return 0 if ort_err < 1e-4 and rel < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
