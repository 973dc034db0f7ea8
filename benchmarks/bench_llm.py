"""LLM prompt processing and generation speed: edgert artifacts vs llama.cpp's llama-bench on the
same GGUF, each runner in a process of its own, rounds alternated.

    python examples/llm_decode.py --bits 4 [--lowbit-head]    # compiles (and caches) artifacts
    python benchmarks/bench_llm.py ~/.cache/edgert/llm/*-4-*.edgert --threads 2 \\
        --llama-bench /path/to/llama-bench --prompts 64 128 --gens 16 32 --rounds 5

Tests are named as llama-bench names them: ``pp N``, tokens/s of one prefill of an N-token
prompt into an empty KV cache (BOS + the first tokens of ``edgert/data/llm_eval.txt`` for
edgert, random tokens for llama-bench: the same work); ``tg N``, tokens/s of N single-token
steps from an empty cache (edgert feeds back its greedy token, llama-bench random ones).

Each round, every runner in turn (the order reversed every other round). An edgert artifact
runs each test once in its worker process (``processes.Worker``, warmed up once when it
starts). llama.cpp is one ``llama-bench -m GGUF -t THREADS -p ... -n ... -r 1 -o json`` process
per round (its default settings otherwise: it loads the file and warms each test up before
timing it); its path comes from ``--llama-bench`` or ``$EDGERT_LLAMA_BENCH``, and without one
only edgert is measured. Printed and written as JSON: per runner and test the median tokens/s
over the rounds and its range, and the ratio edgert / llama.cpp (> 1: edgert faster) taken
within each round, median [min-max].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from common import emit
from processes import Worker, serve

LLAMA_BENCH_ENV = "EDGERT_LLAMA_BENCH"
"""Environment variable naming the llama-bench binary when ``--llama-bench`` is not given."""
Test = tuple[str, int]
"""("pp", N) or ("tg", N)."""


def test_name(test: Test) -> str:
    """llama-bench's name of a test: "pp64", "tg32"."""
    return f"{test[0]}{test[1]}"


def edgert_runner(path: str, gguf: str, threads: int, prompt: list[int]) -> Any:
    """An edgert artifact, warmed up: ``test`` -> seconds of that test (see the module doc)."""
    import numpy as np

    from edgert import Session
    from edgert.models import llama

    config = llama.read_gguf(Path(gguf)).config
    session = Session(path, threads=threads)

    def seconds(test: Test) -> float:
        kind, n = test
        cache = llama.KVCache(session.run, config)
        start = time.perf_counter()
        if kind == "pp":
            cache.forward(prompt[:n])
        else:
            token = config.bos_id
            for _ in range(n):
                token = int(np.argmax(cache.forward([token])[-1]))
        return time.perf_counter() - start

    seconds(("pp", min(8, len(prompt))))                       # warm up
    seconds(("tg", 2))
    return seconds


def edgert_worker(conn: Any, path: str, gguf: str, threads: int, prompt: list[int]) -> None:
    """Serve one artifact in this process: ``("round", tests)`` -> {name: seconds};
    ``("stop", None)`` (:func:`processes.serve`)."""
    serve(conn, lambda: edgert_runner(path, gguf, threads, prompt),
          lambda seconds, cmd, tests: {test_name(t): seconds(t) for t in tests})


def llama_bench_round(binary: str, gguf: str, threads: int, tests: list[Test]) -> dict[str, float]:
    """One llama-bench process running ``tests`` once each: {name: seconds}.

    Raises:
        RuntimeError: llama-bench failed or printed no result for a test.
    """
    prompts = [n for kind, n in tests if kind == "pp"]
    gens = [n for kind, n in tests if kind == "tg"]
    cmd = [binary, "-m", gguf, "-t", str(threads), "-r", "1", "-o", "json",
           "-p", ",".join(map(str, prompts)) or "0", "-n", ",".join(map(str, gens)) or "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): "
                           f"{out.stderr.strip().splitlines()[-1:] or ''}")
    result = {}
    for row in json.loads(out.stdout):
        if row["n_prompt"] and not row["n_gen"]:
            result[f"pp{row['n_prompt']}"] = row["avg_ns"] * 1e-9
        elif row["n_gen"] and not row["n_prompt"]:
            result[f"tg{row['n_gen']}"] = row["avg_ns"] * 1e-9
    missing = [test_name(t) for t in tests if test_name(t) not in result]
    if missing:
        raise RuntimeError(f"llama-bench printed no result for {', '.join(missing)}")
    return result


def llama_bench_version(binary: str) -> str:
    """llama-bench's build line (``--version``), or "" when it prints none."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[-1] if lines else ""


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    from edgert.models import llama
    from edgert.threads import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path, help="compiled Llama artifacts")
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--llama-bench", default=os.environ.get(LLAMA_BENCH_ENV),
                        help=f"llama.cpp's llama-bench binary (default: ${LLAMA_BENCH_ENV})")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prompts", type=int, nargs="+", default=[64],
                        help="prompt lengths N of the pp N tests")
    parser.add_argument("--gens", type=int, nargs="+", default=[16],
                        help="token counts N of the tg N tests")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds between two runners' turns (TVM's pool stops spinning)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    args.threads = args.threads or physical_cores()     # the same for both runtimes
    gguf = args.gguf or llama.smollm2_gguf()
    model = llama.read_gguf(gguf)
    prompt = llama.eval_tokens(llama.tokenizer(model), model.config, max(args.prompts))
    if len(prompt) < max(args.prompts):
        parser.error(f"the evaluation text has {len(prompt)} tokens, fewer than "
                     f"{max(args.prompts)}")
    tests: list[Test] = [("pp", n) for n in args.prompts] + [("tg", n) for n in args.gens]
    names = [test_name(t) for t in tests]
    rounders: dict[str, Any] = {}
    workers = []
    for p in args.artifacts:
        w = Worker(edgert_worker, str(p), str(gguf), args.threads, prompt)
        workers.append(w)
        same_name = sum(q.name == p.name for q in args.artifacts) > 1
        rounders[f"edgert {p if same_name else p.name}"] = lambda w=w: w.call("round", tests)
    version = ""
    if args.llama_bench:
        version = llama_bench_version(args.llama_bench)
        rounders["llama.cpp"] = lambda: llama_bench_round(args.llama_bench, str(gguf),
                                                          args.threads, tests)
    else:
        print(f"no llama-bench (--llama-bench or ${LLAMA_BENCH_ENV}): edgert only")
    seconds: dict[str, list[dict[str, float]]] = {name: [] for name in rounders}
    try:
        for k in range(args.rounds):
            order = list(rounders) if k % 2 == 0 else list(rounders)[::-1]
            for name in order:
                seconds[name].append(rounders[name]())
                time.sleep(args.settle)
            print(f"round {k + 1}/{args.rounds}", flush=True)
    finally:
        for w in workers:
            w.close()

    def rate(name: str, test: str, k: int) -> float:
        return int(test[2:]) / seconds[name][k][test]

    rounds = range(args.rounds)
    peer = "llama.cpp" if "llama.cpp" in seconds else None
    rows = []
    for name in seconds:
        row: dict[str, Any] = {"runner": name}
        for test in names:
            row[test] = {"tok_s": _stats([rate(name, test, k) for k in rounds])}
            if peer and name != peer:
                row[test]["vs_llama_cpp"] = _stats(
                    [rate(name, test, k) / rate(peer, test, k) for k in rounds])
        rows.append(row)
    width = max(len(r["runner"]) for r in rows)
    print(f"\ntokens/s, median [min-max] over {args.rounds} rounds; vs llama.cpp: edgert / "
          f"llama.cpp within a round (> 1: edgert faster), median [min-max]")
    for test in names:
        print(f"\n{test}")
        for row in rows:
            t = row[test]["tok_s"]
            line = (f"  {row['runner']:>{width}} {t['median']:8.1f} "
                    f"[{t['min']:.1f}-{t['max']:.1f}]")
            if "vs_llama_cpp" in row[test]:
                r = row[test]["vs_llama_cpp"]
                line += f"   {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}x]"
            print(line)
    emit({"benchmark": "llm pp/tg tokens per second (llama-bench's tests), a process per runner",
          "gguf": Path(gguf).name, "threads": args.threads, "tests": names,
          "rounds": args.rounds, "llama_bench": version,
          "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
