"""Compile time of ``edgert compile`` as a user runs it: a fresh process per compile.

    python benchmarks/bench_compile.py [--models resnet18 mobilenet_v3_small resnet18-int
                                        minilm-l6-int] [--rounds 2]
                                       [--tree NAME=COMMIT ...] [--json out.json]

For each model, per round: a first compile (an empty compile cache: the whole pipeline, then
the artifact stored) and a second one of the same model (the cache's copy). Each compile is
``python -m edgert compile`` in a process of its own; the report gives its wall time and its
CPU time (user + sys of the process and what it ran, e.g. the linker), medians and the range
over the rounds, and each stage's median wall time as the CLI prints it.

``--tree NAME=COMMIT`` (repeatable) compiles with edgert's sources at that commit instead of the
working tree's (a git worktree under a temporary folder, put first on ``PYTHONPATH``); the trees
take turns in every round (order alternating), so that a before/after comparison sees the same
load; a tree without the compile cache compiles once a round.

Models: torchvision's ``resnet18`` and ``mobilenet_v3_small`` (random weights, see
:mod:`edgert.models.torchvision_zoo`, exported by ``torch.onnx.export(dynamo=False)``, opset 17,
1x3x224x224), ``resnet18-int`` (``--int-only``, calibrated on 4 random images) and
``minilm-l6-int`` (all-MiniLM-L6-v2 ``--int-only`` on the 64 calibration sentences of
``tests/test_minilm_int.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import emit

MODELS = ("resnet18", "mobilenet_v3_small", "resnet18-int", "minilm-l6-int")
REPO = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^\s+(\w+)\s+([\d.]+) s$")


def prepare(name: str, folder: Path) -> tuple[Path, list[str]]:
    """The ONNX file of ``name`` (written into ``folder``) and its extra CLI arguments."""
    if name == "minilm-l6-int":
        from edgert.models import minilm

        calib = folder / "minilm_calib.npz"
        np.savez(calib, **minilm.tokenize(minilm.load_sentences()[-64:]))
        return Path(minilm.all_minilm_l6_onnx()), ["--int-only", "--calib", str(calib)]
    import torch

    from edgert.models.torchvision_zoo import random_model

    arch = name.removesuffix("-int")
    path = folder / f"{arch}.onnx"
    if not path.exists():
        torch.onnx.export(random_model(arch, size=224), (torch.randn(1, 3, 224, 224),),
                          str(path), input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
    if not name.endswith("-int"):
        return path, []
    calib = folder / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((4, 3, 224, 224)).astype(np.float32))
    return path, ["--int-only", "--calib", str(calib)]


def worktree(commit: str, folder: Path) -> Path:
    """A folder to put first on PYTHONPATH to import edgert as of ``commit``: a worktree and
    an ``edgert`` package folder whose compiler/ops/targets subpackages point into it."""
    tree = folder / f"tree-{commit}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree),
                    commit], check=True, capture_output=True)
    overlay = folder / f"path-{commit}"
    shutil.copytree(tree / "edgert", overlay / "edgert", symlinks=True)
    for sub in ("compiler", "ops", "targets"):
        (overlay / "edgert" / sub).symlink_to(tree / sub)
    return overlay


def compile_once(model: Path, args: list[str], out: Path, env: dict) -> dict:
    """One ``edgert compile`` in a fresh process: wall and CPU seconds and its stage times."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgert", "compile", str(model), "-o", str(out),
                           *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    stages = {m[1]: float(m[2]) for m in map(STAGE_LINE.match, proc.stdout.splitlines()) if m}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "stages": stages}


def summary(runs: list[dict]) -> dict:
    out = {}
    for what in ("wall", "cpu"):
        values = [r[what] for r in runs]
        out[what] = [statistics.median(values), min(values), max(values)]
    names = {n for r in runs for n in r["stages"]}
    out["stages"] = {n: statistics.median(r["stages"].get(n, 0.0) for r in runs) for n in names}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=COMMIT")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    trees: dict = {} if args.tree else {"working tree": None}
    for spec in args.tree:
        name, _, commit = spec.partition("=")
        trees[name] = worktree(commit, work)
    results: dict = {}
    try:
        for name in args.models:
            model, extra = prepare(name, work)
            runs: dict = {}
            for r in range(args.rounds):
                order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                for tree, path in order:
                    env = {**os.environ, "EDGERT_COMPILE_CACHE": str(work / f"cache-{r}-{len(runs)}")}
                    env.pop("EDGERT_NO_COMPILE_CACHE", None)
                    if path is not None:
                        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
                    cached = path is None or (path / "edgert" / "compiler" /
                                              "compile_cache.py").exists()
                    for kind in ("first", "second") if cached else ("first",):
                        run = compile_once(model, extra, work / "out.edgert", env)
                        runs.setdefault(f"{tree}, {kind}", []).append(run)
                        print(f"{name} round {r} {tree} {kind}: wall {run['wall']:.1f} s, "
                              f"cpu {run['cpu']:.1f} s", flush=True)
                    shutil.rmtree(env["EDGERT_COMPILE_CACHE"], ignore_errors=True)
            results[name] = {k: summary(v) for k, v in runs.items()}
    finally:
        for spec in args.tree:
            commit = spec.partition("=")[2]
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(work / f"tree-{commit}")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'model':<20} {'compile':<26} {'wall s (range)':>20} {'cpu s (range)':>20}  stages")
    for name, rows in results.items():
        for label, s in rows.items():
            w, c = s["wall"], s["cpu"]
            stages = " ".join(f"{n} {v:.1f}" for n, v in sorted(s["stages"].items(),
                                                               key=lambda kv: -kv[1])[:4])
            print(f"{name:<20} {label:<26} {w[0]:6.1f} ({w[1]:.1f}-{w[2]:.1f}) "
                  f"{c[0]:8.1f} ({c[1]:.1f}-{c[2]:.1f})  {stages}")
    emit({"rounds": args.rounds, "results": results}, args.json)


if __name__ == "__main__":
    main()
