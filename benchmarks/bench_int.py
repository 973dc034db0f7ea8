"""Integer-only edgert vs edgert fp32 vs onnxruntime fp32 / int8: latency and accuracy, side by side.

    python benchmarks/bench_int.py [--models tiny-vit minilm-l6] [--batches 1 8]
                                   [--threads 1 2] [--repeats 50] [--seq 128]
                                   [--act-bits auto linear8] [--edgert-fp32 auto|always|never]
                                   [--json out.json]

Models:
- ``tiny-vit``: the packaged digits ViT; accuracy = top-1 on its 360 held-out images.
- ``minilm-l6``: all-MiniLM-L6-v2 (exported from its PyPI wheel), timed on ``--seq`` tokens
  (sentences padded to that length); accuracy = mean cosine of the sentence embedding against
  onnxruntime fp32 on the 221 held-out packaged sentences (1.0 for the fp32 peers).

edgert fp32 is left out of MiniLM runs by default (``--edgert-fp32 auto``) to keep them short;
``--edgert-fp32 always`` adds it (``bench_fp32.py`` compares the fp32 paths).

Peers: onnxruntime fp32, onnxruntime int8 from ``quantize_dynamic`` and ``quantize_static``
(QDQ, calibrated on the same inputs edgert uses). All candidates of one (model, batch,
threads) cell are timed interleaved in one process; compare the ratios, not absolute times
(this machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common import emit, kernel_table

Feed = dict[str, np.ndarray]


@dataclass
class Case:
    """One benchmarked model: its fp32 ONNX, calibration inputs, timed inputs and accuracy."""

    name: str
    model: Path
    calib: Feed                                # calibration inputs (a batch per input name)
    timed: Callable[[int], Feed]               # batch size -> inputs to time
    accuracy: Callable[[Any], float]           # runner (``run(None, feed)``) -> score
    with_edgert_fp32: bool = True              # time edgert's fp32 build under ``auto``


def tiny_vit_case() -> Case:
    from edgert.demo import demo_calib_file, demo_files

    model, test = demo_files()
    data = np.load(test)
    images, labels = data["images"], data["labels"]
    return Case("tiny-vit", model, {"image": np.load(demo_calib_file())["image"]},
                lambda b: {"image": images[:b]},
                lambda r: float((r.run(None, {"image": images})[0].argmax(1) == labels).mean()))


def minilm_l6_case(seq: int) -> Case:
    from edgert.models import minilm
    from edgert.peers import onnxruntime_session

    model = minilm.all_minilm_l6_onnx()
    sentences = minilm.load_sentences()
    held_out, calib = minilm.tokenize(sentences[:-64]), minilm.tokenize(sentences[-64:])
    reference = onnxruntime_session(model).run(["sentence_embedding"], held_out)[0]
    padded = {k: np.pad(v[:, :seq], ((0, 0), (0, seq - min(seq, v.shape[1]))))
              for k, v in held_out.items()}

    def accuracy(runner: Any) -> float:
        out = np.concatenate([runner.run(["sentence_embedding"],
                                         {k: v[i:i + 32] for k, v in held_out.items()})[0]
                              for i in range(0, len(held_out["input_ids"]), 32)])
        return float(minilm.cosine(out, reference).mean())

    return Case("minilm-l6", model, calib,
                lambda b: {k: v[:b] for k, v in padded.items()}, accuracy, with_edgert_fp32=False)


def ort_int8_models(case: Case, tmp: Path) -> dict[str, Path]:
    """onnxruntime's own int8 versions of the model: dynamic and static QDQ."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / f"{case.name}_pre.onnx"
    dyn, sta = tmp / f"{case.name}_ort_dynamic.onnx", tmp / f"{case.name}_ort_static.onnx"
    n = len(next(iter(case.calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: v[i:i + 1] for k, v in case.calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.items, None)

    with contextlib.chdir(tmp):     # ORT's quantizers leave temporary files in the cwd
        try:
            quant_pre_process(str(case.model), str(pre))
        except Exception:  # noqa: BLE001 - ORT's symbolic shape inference gives up on some exports
            quant_pre_process(str(case.model), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8)
        quantize_static(str(pre), str(sta), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"ort-int8-dynamic": dyn, "ort-int8-static": sta}


def bench_case(case: Case, args: argparse.Namespace, tmp: Path) -> list[dict]:
    import edgert
    from edgert.compiler import compile_model
    from edgert.peers import onnxruntime_session
    from edgert.timing import interleaved_latencies, summarize

    calib_path = tmp / f"{case.name}_calib.npz"
    np.savez(calib_path, **case.calib)
    peers = {"ort-fp32": case.model, **ort_int8_models(case, tmp)}
    rows, accuracy = [], {}
    for threads in args.threads:
        arts = {("edgert-int" if ab == "auto" else f"edgert-int-{ab}"): compile_model(
            case.model, tmp / f"{case.name}_int{ab}_{threads}.edgert", threads=threads,
            int_only=True, calib=calib_path, act_bits=ab) for ab in args.act_bits}
        if args.edgert_fp32 == "always" or (args.edgert_fp32 == "auto" and case.with_edgert_fp32):
            arts["edgert-fp32"] = compile_model(case.model, tmp / f"{case.name}_fp{threads}.edgert",
                                                threads=threads)
        runners = {name: edgert.Session(p, threads=threads) for name, p in arts.items()}
        runners.update({name: onnxruntime_session(p, threads) for name, p in peers.items()})
        for name, r in runners.items():
            accuracy.setdefault(name, case.accuracy(r))
        for batch in args.batches:
            feed = case.timed(batch)
            lat = interleaved_latencies({n: (lambda r=r: r.run(None, feed)) for n, r in runners.items()},
                                        repeats=args.repeats, warmup=5)
            p50 = {n: summarize(v)["p50_ms"] for n, v in lat.items()}
            for name, ms in p50.items():
                rows.append({"model": case.name, "batch": batch, "threads": threads,
                             "runtime": name, "p50_ms": ms,
                             "vs_ort_fp32": ms / p50["ort-fp32"],
                             "vs_ort_int8_dynamic": ms / p50["ort-int8-dynamic"],
                             "vs_ort_int8_static": ms / p50["ort-int8-static"],
                             "accuracy": accuracy[name]})
            for name, r in runners.items():
                if args.kernels and name.startswith("edgert"):
                    kernel_table(f"{case.name} {name} batch {batch}, {threads} threads", r,
                                 feed, args.kernels)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-vit", "minilm-l6"],
                        choices=["tiny-vit", "minilm-l6"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seq", type=int, default=128, help="MiniLM tokens per sentence")
    parser.add_argument("--edgert-fp32", choices=["auto", "always", "never"], default="auto",
                        help="time edgert's fp32 build too (auto: not for MiniLM)")
    parser.add_argument("--act-bits", nargs="+", default=["auto", "linear8"],
                        choices=["auto", "linear8", "8", "16"],
                        help="integer-only builds to time (edgert-int = auto; linear8: every "
                        "Linear int8 x int8, VNNI vpdpbusd on AVX-512 VNNI machines)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="also print each edgert build's N slowest kernels")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    makers = {"tiny-vit": tiny_vit_case, "minilm-l6": lambda: minilm_l6_case(args.seq)}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for name in args.models:
            rows += bench_case(makers[name](), args, Path(tmp_dir))

    print(f"{'model':<11}{'runtime':<22}{'batch':>6}{'threads':>8}{'p50 ms':>10}{'/ORT fp32':>11}"
          f"{'/int8 dyn':>11}{'/int8 QDQ':>11}{'accuracy':>10}")
    for r in rows:
        print(f"{r['model']:<11}{r['runtime']:<22}{r['batch']:>6}{r['threads']:>8}{r['p50_ms']:>10.3f}"
              f"{r['vs_ort_fp32']:>10.2f}x{r['vs_ort_int8_dynamic']:>10.2f}x"
              f"{r['vs_ort_int8_static']:>10.2f}x{r['accuracy']:>10.4f}")
    result = {"benchmark": "integer-only latency (ratios < 1: faster than the peer)", "rows": rows}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
