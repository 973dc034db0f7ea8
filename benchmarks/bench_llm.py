"""LLM prefill and decode speed: edgert artifacts vs llama.cpp on the same GGUF, interleaved.

    python examples/llm_decode.py --bits 4            # compiles (and caches) the artifacts
    python benchmarks/bench_llm.py ~/.cache/edgert/llm/*-4-*.edgert [--threads 2]

Every runner (each edgert artifact, llama.cpp through llama-cpp-python when installed) runs in
a process of its own (``processes.Worker``). Each round, every runner in turn (the order
reversed every other round): a fresh KV cache, a prefill of the first ``--prefill`` tokens of
``edgert/data/llm_eval.txt`` (timed), then ``--steps`` greedy decode steps (timed). Printed and
written as JSON: the medians over ``--rounds`` and their ranges, and the ratios to llama.cpp
(> 1: edgert faster) taken within each round, median [min-max].
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import emit
from processes import Worker, serve


def round_runner(kind: str, path: str, gguf: str, threads: int,
                 prefill: list[int]) -> Callable[[int], tuple[float, float]]:
    """One runner, warmed up: ``steps`` -> (prefill s, decode s) of a fresh generation."""
    from edgert.models import llama

    model = llama.read_gguf(Path(gguf))
    if kind == "edgert":
        from edgert import Session

        session = Session(path, threads=threads)

        def one_round(steps: int) -> tuple[float, float]:
            gen = llama.generate(session.run, model.config, prefill, steps + 1)
            return gen.prefill_s, gen.decode_s
    else:
        from edgert.peers import llama_cpp_generate, llama_cpp_model

        llm = llama_cpp_model(Path(gguf), threads)

        def one_round(steps: int) -> tuple[float, float]:
            _, prefill_s, decode_s = llama_cpp_generate(llm, prefill, steps + 1)
            return prefill_s, decode_s
    one_round(2)                                                  # warm up
    return one_round


def runner_worker(conn: Any, kind: str, path: str, gguf: str, threads: int,
                  prefill: list[int]) -> None:
    """Serve one runner in this process: ``("round", steps)`` -> (prefill s, decode s);
    ``("stop", None)`` (:func:`processes.serve`)."""
    serve(conn, lambda: round_runner(kind, path, gguf, threads, prefill),
          lambda one_round, cmd, steps: one_round(steps))


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    from edgert.models import llama
    from edgert.threads import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="compiled Llama artifacts")
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between two runners' turns (TVM's pool stops spinning)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    args.threads = args.threads or physical_cores()     # the same for both runtimes
    gguf = args.gguf or llama.smollm2_gguf()
    model = llama.read_gguf(gguf)
    prefill = llama.eval_tokens(llama.tokenizer(model), model.config, args.prefill)
    workers: dict[str, Worker] = {}
    for p in args.artifacts:
        workers[f"edgert {p.name}"] = Worker(runner_worker, "edgert", str(p), str(gguf),
                                             args.threads, prefill)
    try:
        workers["llama.cpp"] = Worker(runner_worker, "llama.cpp", "", str(gguf), args.threads,
                                      prefill)
    except RuntimeError as e:
        print(f"llama.cpp not run ({e}): edgert only")
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in workers}
    for k in range(args.rounds):
        order = list(workers) if k % 2 == 0 else list(workers)[::-1]
        for name in order:
            p, d = workers[name].call("round", args.steps)
            times[name][0].append(len(prefill) / p)
            times[name][1].append(args.steps / d)
            time.sleep(args.settle)
    for w in workers.values():
        w.close()
    peer = times.get("llama.cpp")
    rows = []
    for name, (p, d) in times.items():
        row: dict[str, Any] = {"runner": name, "prefill_tok_s": _stats(p),
                               "decode_tok_s": _stats(d)}
        if peer is not None:
            row["prefill_vs_llama_cpp"] = _stats([a / b for a, b in zip(p, peer[0])])
            row["decode_vs_llama_cpp"] = _stats([a / b for a, b in zip(d, peer[1])])
        rows.append(row)
    print(f"\n{'runner':>60} {'prefill tok/s':>14} {'decode tok/s':>13} "
          f"{'vs llama.cpp (prefill, decode)':>34}")
    for row in rows:
        ratio = ""
        if "decode_vs_llama_cpp" in row:
            rp, rd = row["prefill_vs_llama_cpp"], row["decode_vs_llama_cpp"]
            ratio = (f"{rp['median']:.2f}x [{rp['min']:.2f}-{rp['max']:.2f}], "
                     f"{rd['median']:.2f}x [{rd['min']:.2f}-{rd['max']:.2f}]")
        print(f"{row['runner']:>60} {row['prefill_tok_s']['median']:14.1f} "
              f"{row['decode_tok_s']['median']:13.1f} {ratio:>34}")
    emit({"benchmark": "llm prefill/decode tokens per second, a process per runner",
          "gguf": Path(gguf).name, "threads": args.threads, "prefill_tokens": len(prefill),
          "decode_steps": args.steps, "rounds": args.rounds,
          "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
