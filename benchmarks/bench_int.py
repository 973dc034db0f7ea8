"""Integer-only edgert vs edgert fp32 vs onnxruntime fp32 / int8: latency and accuracy, side by side.

    python benchmarks/bench_int.py [--batches 1 8] [--threads 1 2] [--repeats 100] [--json out.json]

Model: the packaged tiny ViT (digits; accuracy on its 360 held-out images). Peers: onnxruntime
fp32, onnxruntime int8 from ``quantize_dynamic`` and ``quantize_static`` (QDQ, calibrated on the
same 128 images edgert uses). All candidates of one (batch, threads) cell are timed
interleaved in one process; compare the ratios, not absolute times (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def ort_int8_models(fp32: Path, calib: np.ndarray, tmp: Path) -> dict[str, Path]:
    """onnxruntime's own int8 versions of the model: dynamic and static QDQ."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    dyn, sta = tmp / "ort_dynamic.onnx", tmp / "ort_static.onnx"
    quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(pre), str(sta), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"ort-int8-dynamic": dyn, "ort-int8-static": sta}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import edgert
    from edgert.compiler import compile_model
    from edgert.demo import demo_calib_file, demo_files
    from edgert.peers import onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    model, test = demo_files()
    calib_path = demo_calib_file()
    data = np.load(test)
    images, labels = data["images"], data["labels"]
    rows, accuracy = [], {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        peers = {"ort-fp32": model, **ort_int8_models(model, np.load(calib_path)["image"], tmp)}
        for threads in args.threads:
            arts = {
                "edgert-int": compile_model(model, tmp / f"int{threads}.edgert", threads=threads,
                                            int_only=True, calib=calib_path),
                "edgert-fp32": compile_model(model, tmp / f"fp{threads}.edgert", threads=threads),
            }
            runners = {name: edgert.Session(p, threads=threads) for name, p in arts.items()}
            runners.update({name: onnxruntime_session(p, threads) for name, p in peers.items()})
            for name, r in runners.items():
                accuracy[name] = float((r.run(None, {"image": images})[0].argmax(1) == labels).mean())
            for batch in args.batches:
                feed = {"image": images[:batch]}
                lat = interleaved_latencies({n: (lambda r=r: r.run(None, feed)) for n, r in runners.items()},
                                            repeats=args.repeats, warmup=5)
                p50 = {n: summarize(v)["p50_ms"] for n, v in lat.items()}
                for name, ms in p50.items():
                    rows.append({"model": "tiny-vit", "batch": batch, "threads": threads,
                                 "runtime": name, "p50_ms": ms,
                                 "vs_ort_fp32": ms / p50["ort-fp32"],
                                 "vs_ort_int8_dynamic": ms / p50["ort-int8-dynamic"],
                                 "accuracy": accuracy[name]})

    print(f"{'runtime':<18}{'batch':>6}{'threads':>8}{'p50 ms':>10}{'/ORT fp32':>11}"
          f"{'/ORT int8':>11}{'accuracy':>10}")
    for r in rows:
        print(f"{r['runtime']:<18}{r['batch']:>6}{r['threads']:>8}{r['p50_ms']:>10.3f}"
              f"{r['vs_ort_fp32']:>10.2f}x{r['vs_ort_int8_dynamic']:>10.2f}x{r['accuracy']:>10.4f}")
    result = {"benchmark": "integer-only latency (ratios < 1: faster than the peer)", "rows": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
