"""LLM prefill and decode speed: edgert artifacts vs llama.cpp on the same GGUF, interleaved.

    python examples/llm_decode.py --bits 4            # compiles (and caches) the artifacts
    python benchmarks/bench_llm.py ~/.cache/edgert/llm/*-4-*.edgert [--threads 2]

Each round, every runner in turn: a fresh KV cache, a prefill of the first ``--prefill``
tokens of ``edgert/data/llm_eval.txt`` (timed), then ``--steps`` greedy decode steps (timed).
Runners alternate round by round, so the load of this shared machine moves them alike; the
medians over ``--rounds`` and their ratios to llama.cpp (llama-cpp-python, when installed; > 1:
edgert faster) are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import emit

from edgert import Session
from edgert.models import llama
from edgert.peers import llama_cpp_generate, llama_cpp_model
from edgert.threads import physical_cores


class EdgertRunner:
    def __init__(self, path: Path, config: llama.LlamaConfig, threads: int | None) -> None:
        self.name = f"edgert {path.name}"
        self.session, self.config = Session(path, threads=threads), config

    def round(self, prefill: list[int], steps: int) -> tuple[float, float]:
        gen = llama.generate(self.session.run, self.config, prefill, steps + 1)
        return gen.prefill_s, gen.decode_s


class LlamaCppRunner:
    name = "llama.cpp"

    def __init__(self, gguf: Path, threads: int) -> None:
        self.llm = llama_cpp_model(gguf, threads)

    def round(self, prefill: list[int], steps: int) -> tuple[float, float]:
        _, prefill_s, decode_s = llama_cpp_generate(self.llm, prefill, steps + 1)
        return prefill_s, decode_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="compiled Llama artifacts")
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    args.threads = args.threads or physical_cores()     # the same for both runtimes
    gguf = args.gguf or llama.smollm2_gguf()
    model = llama.read_gguf(gguf)
    prefill = llama.eval_tokens(llama.tokenizer(model), model.config, args.prefill)
    runners = [EdgertRunner(p, model.config, args.threads) for p in args.artifacts]
    try:
        runners.append(LlamaCppRunner(gguf, args.threads))
    except ImportError:
        print("llama-cpp-python is not installed: edgert only")
    times = {r.name: ([], []) for r in runners}
    for r in runners:
        r.round(prefill, 2)                                           # warm up
    for _ in range(args.rounds):
        for r in runners:
            p, d = r.round(prefill, args.steps)
            times[r.name][0].append(len(prefill) / p)
            times[r.name][1].append(args.steps / d)
    rows = [{"runner": name, "prefill_tok_s": statistics.median(p),
             "decode_tok_s": statistics.median(d)} for name, (p, d) in times.items()]
    peer = next((r for r in rows if r["runner"] == "llama.cpp"), None)
    print(f"\n{'runner':>60} {'prefill tok/s':>14} {'decode tok/s':>13} {'vs llama.cpp':>14}")
    for row in rows:
        if peer is not None:
            row["prefill_vs_llama_cpp"] = row["prefill_tok_s"] / peer["prefill_tok_s"]
            row["decode_vs_llama_cpp"] = row["decode_tok_s"] / peer["decode_tok_s"]
        ratio = (f"{row['prefill_vs_llama_cpp']:.2f}x / {row['decode_vs_llama_cpp']:.2f}x"
                 if peer is not None else "")
        print(f"{row['runner']:>60} {row['prefill_tok_s']:14.1f} {row['decode_tok_s']:13.1f}"
              f" {ratio:>14}")
    emit({"benchmark": "llm prefill/decode tokens per second", "gguf": gguf.name,
          "threads": args.threads, "prefill_tokens": len(prefill), "decode_steps": args.steps,
          "rounds": args.rounds, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
