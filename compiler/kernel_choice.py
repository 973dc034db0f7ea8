"""``--lut auto|always|never``: table lookup or dequantize-then-multiply, per LutMatMul node.

Every ``edgert.LutMatMul`` node can run two ways on the same packed operands: by table lookup
(T-MAC; ``dequant = 0``) or by dequantizing its weight and multiplying (``dequant = 1``; on x86
AVX2 with float32 activations :mod:`edgert.ops.lut_matmul.tvm_dequant`, elsewhere the generic
compute). ``--lut always`` keeps lookups, ``never`` dequantizes every node, and ``auto``
(the default) times both kernels for each distinct node signature (layout, activation dtype,
table bits, zero points, rows) on this machine at compile time and keeps the faster one:

- rows: the product of the activation's leading dimensions when they are static; symbolic
  ones (an LLM's sequence length) are timed at 1 row, token generation, where most of an LLM's
  time goes;
- each kernel is compiled alone (one node, random operands of the node's shapes and dtypes, the
  compile's target and threads), loaded and timed interleaved with its rival, median, by the
  timing service (:func:`edgert.compiler.timing_service.median_latencies`);
- results are cached in ``$EDGERT_CACHE/kernel_choice.json`` (default
  ``~/.cache/edgert``; ``$EDGERT_KERNEL_CHOICE`` names another file), keyed by target,
  threads, CPU model, edgert version and the signature, so a shape is timed once per machine;
- a target this machine cannot run (a cross-compile) is not timed: a cached result is
  used if there is one, else table lookup (T-MAC's finding on CPUs), and the manifest says so;
- nodes with no scheduled dequantize kernel (int8 activations, targets without AVX2) are not
  timed either: the generic compute is never the faster one;
- a signature whose timing fails (a kernel that does not build or run here) keeps table lookup,
  with the error in the manifest, and is not cached.

With float32 activations the two kernels do not give the same numbers: lookups round the
tables to int8, dequantization is the exact dequantized matmul (``ops/lut_matmul/spec.py``).
With int8 activations they agree bit for bit (exact int16 tables).

The manifest's ``lowbit`` section records ``"lut": mode`` and per node ``"kernel"`` ("lut" or
"dequant") and ``"kernel_choice"`` (how it was chosen, and the times).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgert import __version__
from edgert.compiler.options import LUT_MODES
from edgert.compiler.options import check_lut_mode as check_mode
from edgert.errors import EdgertError
from edgert.targets import Target, can_run_here, isa

__all__ = ["LUT_MODES", "Choice", "Signature", "apply_choices", "check_mode", "choose_kernels",
           "record", "signature_model", "time_signature"]

CACHE_FILE = "kernel_choice.json"
CACHE_FILE_ENV = "EDGERT_KERNEL_CHOICE"


@dataclass(frozen=True)
class Choice:
    """The kernel of one LutMatMul node.

    Attributes:
        kernel: "lut" or "dequant".
        how: "--lut always", "--lut never", "timed", "cached" or "not timed: <why>".
        rows: activation rows it was timed at (None: not timed).
        lut_ms, dequant_ms: median times (None: not timed).
    """

    kernel: str
    how: str
    rows: int | None = None
    lut_ms: float | None = None
    dequant_ms: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "kernel"}


CHOICE_FIELDS = {f.name for f in fields(Choice)}


def cache_path() -> Path:
    """``$EDGERT_KERNEL_CHOICE``, else ``kernel_choice.json`` in edgert's cache folder."""
    from edgert.models.wheels import cache_dir

    env = os.environ.get(CACHE_FILE_ENV)
    return Path(env) if env else cache_dir() / CACHE_FILE


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Signature:
    """What a LutMatMul kernel's speed depends on."""

    attrs: tuple[tuple[str, int], ...]       # the node's INT attributes, ``dequant`` left out
    a_dtype: int                             # TensorProto element type of A
    scales: bool
    zero_points: int | None                  # TensorProto element type, None: symmetric
    rows: int

    def key(self, target: Target, threads: int | None) -> str:
        return json.dumps([target.name, threads or os.cpu_count(), _cpu_model(), __version__,
                           list(self.attrs), self.a_dtype, self.scales, self.zero_points,
                           self.rows])


def _signature(node: onnx.NodeProto, infos: dict, inits: dict) -> Signature:
    """``infos``: value name -> ValueInfoProto (graph inputs and value_info); ``inits``: name ->
    initializer. Rows: the product of A's leading dims when all are static, else 1."""
    attrs = tuple(sorted((a.name, int(a.i)) for a in node.attribute if a.name != "dequant"))
    a = infos.get(node.input[0])
    a_dtype = a.type.tensor_type.elem_type if a is not None else TensorProto.FLOAT
    dims = list(a.type.tensor_type.shape.dim)[:-1] if a is not None else []
    rows = (int(np.prod([d.dim_value for d in dims]))
            if dims and all(d.HasField("dim_value") for d in dims) else 1)
    has = [len(node.input) > i and bool(node.input[i]) for i in (2, 3)]
    zp = inits[node.input[3]].data_type if has[1] else None
    return Signature(attrs, a_dtype, has[0], zp, rows)


def lut_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    from edgert.ops import DOMAIN

    return [n for n in model.graph.node if n.op_type == "LutMatMul" and n.domain == DOMAIN]


def choose_kernels(model: onnx.ModelProto, mode: str, target: Target, threads: int | None,
                   *, on_progress: Callable[[int, int], None] | None = None
                   ) -> dict[str, Choice]:
    """The kernel of every LutMatMul node (by node name) under ``--lut mode``.

    Args:
        model: a shape-inferred model with LutMatMul nodes (not changed).
        mode: "auto", "always" or "never".
        target, threads: what the model is compiled for (``auto`` times kernels built alike).
        on_progress: called with (signatures timed, signatures to time).
    """
    check_mode(mode)
    nodes = lut_nodes(model)
    if mode != "auto":
        kernel = "lut" if mode == "always" else "dequant"
        return {n.name: Choice(kernel, f"--lut {mode}") for n in nodes}
    inits = {t.name: t for t in model.graph.initializer}
    infos = {v.name: v for v in [*model.graph.input, *model.graph.value_info]}
    sigs = {n.name: _signature(n, infos, inits) for n in nodes}
    keys = {sig: sig.key(target, threads) for sig in set(sigs.values())}
    cache_file = cache_path()
    try:
        cache = {k: v for k, v in json.loads(cache_file.read_text()).items()
                 if isinstance(v, dict) and v.get("kernel") in ("lut", "dequant")
                 and set(v) <= CHOICE_FIELDS}
    except (OSError, ValueError, AttributeError):
        cache = {}                     # a missing or damaged cache: time again
    runnable, why = can_run_here(target)
    todo = sorted((s for s, key in keys.items()
                   if key not in cache and has_dequant_kernel(target, s)), key=keys.get)
    timed: dict[Signature, Choice] = {}
    if runnable:
        for i, sig in enumerate(todo):
            if on_progress:
                on_progress(i, len(todo))
            try:
                timed[sig] = time_signature(sig, target, threads)
            except EdgertError as e:           # a kernel that fails to build or run here
                timed[sig] = Choice("lut", f"not timed: {e}")
                continue
            cache[keys[sig]] = asdict(timed[sig])
        if on_progress:
            on_progress(len(todo), len(todo))
        if any(c.how == "timed" for c in timed.values()):
            _write_cache(cache_file, cache)
    out = {}
    for name, sig in sigs.items():
        key = keys[sig]
        if sig in timed:
            out[name] = timed[sig]
        elif key in cache:
            out[name] = Choice(**{**cache[key], "how": "cached"})
        elif not has_dequant_kernel(target, sig):
            out[name] = Choice("lut", "not timed: no scheduled dequantize kernel for "
                               + ("this target" if sig.a_dtype == TensorProto.FLOAT
                                  else "int8 activations"))
        else:
            out[name] = Choice("lut", f"not timed: {why}")
    return out


def has_dequant_kernel(target: Target, sig: Signature) -> bool:
    """Whether ``dequant = 1`` has a scheduled kernel (x86 AVX2, float32 activations) rather
    than the generic compute."""
    return sig.a_dtype == TensorProto.FLOAT and isa.has_avx2(target)


def _write_cache(path: Path, cache: dict) -> None:
    from edgert.fileio import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass                       # a read-only cache only costs timing again next time


def apply_choices(model: onnx.ModelProto, choices: dict[str, Choice]) -> None:
    """Set each LutMatMul node's ``dequant`` attribute from ``choices`` (in place)."""
    for node in lut_nodes(model):
        keep = [a for a in node.attribute if a.name != "dequant"]
        del node.attribute[:]
        node.attribute.extend(keep)
        if choices[node.name].kernel == "dequant":
            node.attribute.append(helper.make_attribute("dequant", 1))


def record(section: dict, mode: str, choices: dict[str, Choice]) -> None:
    """Add ``lut`` and each node's ``kernel`` / ``kernel_choice`` to the manifest's ``lowbit``
    section (nodes are matched by their ``lut_node``)."""
    section["lut"] = mode
    for entry in section.get("nodes", {}).values():
        choice = choices.get(entry.get("lut_node"))
        if choice is not None:
            entry["kernel"] = choice.kernel
            entry["kernel_choice"] = choice.to_json()


# ---------------------------------------------------------------- timing

def signature_model(sig: Signature, dequant: bool, seed: int = 0) -> onnx.ModelProto:
    """One LutMatMul node of signature ``sig`` on random operands (A [rows, K] is the input)."""
    from edgert.ops import DOMAIN, OPSET_VERSION
    from edgert.ops.lut_matmul import LutLayout

    attrs = dict(sig.attrs)
    layout = LutLayout.from_attrs(attrs)
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(
        rng.integers(0, 256, layout.planes_shape, dtype=np.uint8), "w")]
    names = ["a", "w"]
    groups = (layout.n_groups, layout.N)
    if sig.scales:
        inits.append(numpy_helper.from_array(
            rng.uniform(0.01, 0.1, groups).astype(np.float32), "s"))
    names.append("s" if sig.scales else "")
    if sig.zero_points is not None:
        zp = (rng.uniform(0, (1 << layout.bits) - 1, groups).astype(np.float32)
              if sig.zero_points == TensorProto.FLOAT
              else rng.integers(0, 1 << layout.bits, groups, dtype=np.uint8))
        inits.append(numpy_helper.from_array(zp, "z"))
        names.append("z")
    while names and not names[-1]:
        names.pop()
    out_type = TensorProto.FLOAT if sig.a_dtype == TensorProto.FLOAT else TensorProto.INT32
    node = helper.make_node("LutMatMul", names, ["y"], name="lut", domain=DOMAIN,
                            **attrs, **({"dequant": 1} if dequant else {}))
    graph = helper.make_graph(
        [node], "kernel_choice",
        [helper.make_tensor_value_info("a", sig.a_dtype, [sig.rows, layout.K])],
        [helper.make_tensor_value_info("y", out_type, [sig.rows, layout.N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])


def time_signature(sig: Signature, target: Target, threads: int | None) -> Choice:
    """Compile both kernels of ``sig`` for ``target`` and time them here, interleaved
    (:mod:`edgert.compiler.timing_service`)."""
    from edgert.compiler.timing_service import median_latencies

    rng = np.random.default_rng(1)
    k = dict(sig.attrs)["K"]
    a = (rng.standard_normal((sig.rows, k)).astype(np.float32)
         if sig.a_dtype == TensorProto.FLOAT
         else rng.integers(-127, 128, (sig.rows, k)).astype(np.int8))
    models = {kind: signature_model(sig, kind == "dequant") for kind in ("lut", "dequant")}
    times = median_latencies(models, {"a": a}, target, threads)
    ms = {kind: v * 1e3 for kind, v in times.items()}
    kernel = "dequant" if ms["dequant"] < ms["lut"] else "lut"
    return Choice(kernel, "timed", sig.rows, round(ms["lut"], 4), round(ms["dequant"], 4))
