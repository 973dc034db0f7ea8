"""Modelled energy per inference of the digits ViT and MiniLM-L6 in four compilations.

    python benchmarks/bench_energy.py [--seq 128] [--json out.json] [--table FILE.toml]

For each model: fp32, ``--int-only``, ``--lmul attention`` and ``--binary-attention`` (16-bit
codes, quadratic form), the graph that ``edgert compile`` builds (its graph stages only:
:func:`edgert.compiler.compile_graph`; the energy model reads only the graph, so the
TVM build is skipped), its modelled joules per inference (:func:`edgert.energy.modelled_energy`,
the shipped 45 nm table unless ``--table``), the ratio to fp32, the arithmetic and memory parts,
and for L-Mul the energy of the replaced matmuls (``edgert.LMulMatMul`` against the fp32
MatMuls it replaced: the "per dot product" ratio). Beside them the published figures: L-Mul
(Luo & Sun 2024, "Addition is all you need for energy-efficient language models") -80 % energy
per dot product, EcoFormer (Liu et al., NeurIPS 2022) -73 % on-chip energy on ImageNet. The
goal for integer-only: at most 0.3x the fp32 energy.

Calibration data: the ViT's packaged calibration images; MiniLM: 32 packaged sentences,
tokenized and padded to ``--seq`` tokens (the input shape counted: batch 1 x ``--seq``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common import emit

VARIANTS = {"fp32": {}, "int-only": {"int_only": True, "calib": True},
            "lmul-attention": {"lmul": "attention"},
            "binary-attention": {"binary_attention": True, "calib": True}}
PUBLISHED = {"lmul-attention": "L-Mul: 0.20x per dot product",
             "binary-attention": "EcoFormer: 0.27x attention on chip (ImageNet)",
             "int-only": "goal: <= 0.30x"}
MEMORY = ("sram", "dram")


def vit_case(tmp: Path, seq: int) -> tuple[Path, Path, dict[str, list[int]]]:
    from edgert.demo import demo_calib_file, demo_files

    return demo_files()[0], demo_calib_file(), {"image": [1, 1, 8, 8]}


def minilm_case(tmp: Path, seq: int) -> tuple[Path, Path, dict[str, list[int]]]:
    from edgert.models import minilm

    feed = minilm.tokenize(minilm.load_sentences()[-32:], max_length=seq)
    pad = seq - feed["input_ids"].shape[1]
    calib = tmp / "minilm_calib.npz"
    np.savez(calib, **{k: np.pad(v, ((0, 0), (0, pad))) for k, v in feed.items()})
    return minilm.all_minilm_l6_onnx(), calib, {k: [1, seq] for k in feed}


def model_energy(name: str, case: Any, tmp: Path, seq: int, table: str | None) -> list[dict]:
    from edgert.energy import modelled_energy
    from edgert.compiler import compile_graph

    model, calib, shapes = case(tmp, seq)
    rows = []
    for variant, options in VARIANTS.items():
        opts = {k: (calib if k == "calib" else v) for k, v in options.items()}
        print(f"  {name} {variant}: compiling the graph", file=sys.stderr, flush=True)
        result = modelled_energy(compile_graph(model, **opts), shapes, table)
        memory = sum(result.breakdown.get(k, 0.0) for k in MEMORY)
        rows.append({"model": name, "variant": variant, "joules": result.joules_per_inference,
                     "arithmetic": result.joules_per_inference - memory, "memory": memory,
                     "by_op": result.details["joules_by_op_type"],
                     "uncounted": result.details["uncounted_ops"],
                     "source": result.source})
        print(f"    {result.summary()}", file=sys.stderr, flush=True)
    fp32 = rows[0]
    for row in rows:
        row["ratio"] = row["joules"] / fp32["joules"]
    lmul = next(r for r in rows if r["variant"] == "lmul-attention")
    replaced = fp32["by_op"].get("MatMul", 0.0) - lmul["by_op"].get("MatMul", 0.0)
    if replaced > 0:
        lmul["dot_product_ratio"] = lmul["by_op"].get("edgert.LMulMatMul", 0.0) / replaced
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"| model | compile | modelled energy / inference | vs fp32 | arithmetic | memory "
          f"| published / goal |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x"
        if "dot_product_ratio" in r:
            ratio += f" (replaced matmuls: {r['dot_product_ratio']:.2f}x)"
        print(f"| {r['model']} | {r['variant']} | {r['joules'] * 1e6:.3f} uJ | {ratio} "
              f"| {r['arithmetic'] * 1e6:.3f} uJ | {r['memory'] * 1e6:.3f} uJ "
              f"| {PUBLISHED.get(r['variant'], '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seq", type=int, default=128, help="MiniLM tokens per input")
    parser.add_argument("--table", default=None, help="energy table TOML (default: 45 nm)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--models", default="vit,minilm")
    args = parser.parse_args()
    cases = {"vit-digits": vit_case, "minilm-l6": minilm_case}
    wanted = {"vit": "vit-digits", "minilm": "minilm-l6"}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            name = wanted[key.strip()]
            rows += model_energy(name, cases[name], Path(tmp), args.seq, args.table)
    print_table(rows)
    emit({"bench": "energy", "seq": args.seq, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
