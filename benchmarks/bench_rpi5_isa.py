"""What rpi5 (Cortex-A76) builds are made of, read from the compiled code: the instructions each
kernel uses. qemu-aarch64 runs them to check the results; it does not time them (an emulator's
speed says nothing about the board's), so no times are reported.

    python benchmarks/bench_rpi5_isa.py [--top 12] [--json out.json]

The demo ViT is compiled for rpi5 five ways: fp32; integer-only (``--int-only``); integer-only
with every Linear input int8 (``--act-bits linear8``: int8 x int8 matmuls, all on ``sdot``); fp32
activations with 4-bit LUT weights (``--weight-bits 4 --group-size 32``); integer-only with 4-bit
LUT weights. For each build:

- every kernel of the library (a function symbol of ``aarch64-linux-gnu-objdump -d``; TVM's
  parallel bodies ``*_compute_`` count as their own) with its instruction count and the counts
  of the instruction classes that show which code path it took: ``sdot`` (int8 dot products,
  our integer matmul kernel), ``tbl`` (LUT lookups), widening integer multiplies
  (``smull``/``smlal``/``umull``...: LLVM's generic integer code), other integer multiplies,
  float multiply(-add)s, SIMD instructions (any ``v`` register operand), loads and stores;
- the outputs on the digits test images under qemu-aarch64 against the same model built for
  this machine: bit-identical (integer builds) or the largest difference relative to the
  largest logit (float builds).

Needs the cross toolchain and the cached qemu environment (``scripts/setup_aarch64.sh``).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "edgert" / "data"
VARIANTS = {
    "fp32": {},
    "int": {"int_only": True},
    "int-linear8": {"int_only": True, "act_bits": "linear8"},
    "fp32-w4": {"weight_bits": "4", "group_size": 32},
    "int-w4": {"int_only": True, "weight_bits": "4"},
}
CLASSES = {   # class -> mnemonic pattern (full match)
    "sdot": r"[su]dot",
    "tbl": r"tb[lx]",
    "widening mul": r"[su]m(ull|lal|lsl)2?",
    "int mul": r"(mul|mla|mls|madd|msub|smaddl|smulh)",
    "float mul": r"f(mul|mla|mls|madd|msub|nmadd|nmsub)",
    "load": r"ld.*",
    "store": r"st.*",
}
FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSTRUCTION = re.compile(r"^\s+[0-9a-f]+:\s+([a-z][a-z0-9.]*)\s*(.*)$")


def disassemble(lib: bytes) -> dict[str, collections.Counter]:
    """Per function of an aarch64 shared library: instruction classes (:data:`CLASSES`, plus
    ``"simd"`` and ``"total"``) and their counts."""
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(lib)
        f.flush()
        text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", f.name],
                              check=True, capture_output=True, text=True).stdout
    functions: dict[str, collections.Counter] = {}
    current = None
    for line in text.splitlines():
        if m := FUNCTION.match(line):
            current = functions.setdefault(m.group(1), collections.Counter())
        elif current is not None and (m := INSTRUCTION.match(line)):
            mnemonic, operands = m.group(1).split(".")[0], m.group(2)
            current["total"] += 1
            for name, pattern in CLASSES.items():
                if re.fullmatch(pattern, mnemonic):
                    current[name] += 1
                    break
            if re.search(r"\bv\d+\.", operands):
                current["simd"] += 1
    return {name: c for name, c in functions.items() if c["total"]}


def kernels(functions: dict[str, collections.Counter]) -> dict[str, collections.Counter]:
    """The model's kernels: TVM's generated functions, without the PLT stubs, the runtime's
    glue (``__tvm_*``, ``_init``...) and the VM's packed wrappers around them."""
    return {n: c for n, c in functions.items()
            if not n.startswith(("_", ".", "__tvm")) and "@plt" not in n
            and n not in ("call_weak_fn", "deregister_tm_clones", "register_tm_clones",
                          "frame_dummy")}


def run(top: int) -> dict:
    import edgert
    from edgert.artifact import read_artifact
    from edgert.compiler import compile_model
    from edgert.targets.qemu import run_under_qemu

    images = np.load(DATA / "vit_digits_test.npz")["images"]
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench-rpi5-") as tmp:
        for name, opts in VARIANTS.items():
            if opts.get("int_only"):
                opts = {**opts, "calib": DATA / "vit_digits_calib.npz"}
            print(f"compiling vit-{name} for rpi5 and for this machine", flush=True)
            rpi5 = compile_model(DATA / "vit_digits.onnx", Path(tmp) / f"{name}-rpi5.edgert",
                                 target="rpi5", **opts)
            host = compile_model(DATA / "vit_digits.onnx", Path(tmp) / f"{name}-host.edgert",
                                 **opts)
            art = read_artifact(rpi5)
            per_kernel = kernels(disassemble(art.members[art.lib_member]))
            [got] = run_under_qemu(rpi5, {"image": images})
            [want] = edgert.Session(host).run(None, {"image": images})
            totals = sum(per_kernel.values(), collections.Counter())
            row = {"kernels": len(per_kernel), "totals": dict(totals),
                   "top": {k: dict(c) for k, c in sorted(per_kernel.items(),
                                                          key=lambda kv: -kv[1]["total"])[:top]}}
            if name.startswith("int"):
                row["bit_identical"] = bool(np.array_equal(got, want))
            else:
                row["rel_err"] = float(np.abs(got - want).max() / np.abs(want).max())
            result[name] = row
    return result


def report(result: dict) -> None:
    cols = ["total", *CLASSES, "simd"]
    for name, row in result.items():
        check = (f"bit-identical to the host build: {row['bit_identical']}"
                 if "bit_identical" in row else f"max rel diff to the host build {row['rel_err']:.1e}")
        print(f"\nvit-{name}: {row['kernels']} kernels; under qemu {check}")
        print(f"  {'kernel':48}" + "".join(f"{c:>13}" for c in cols))
        for kernel, counts in [("(all kernels)", row["totals"]), *row["top"].items()]:
            print(f"  {kernel[:48]:48}" + "".join(f"{counts.get(c, 0):>13}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=12, help="kernels listed per build (largest first)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(args.top)
    report(result)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
