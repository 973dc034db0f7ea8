"""``--lut auto|always|never`` (``compiler/kernel_choice.py``): each LutMatMul node runs by
table lookup or by dequantize-then-multiply, chosen by flag or by timing both here; the choice
is in the node (``dequant``), in the library (the kernel's name) and in the manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import edgert
from edgert.artifact import read_artifact
from edgert.compiler import compile_model
from edgert.compiler import kernel_choice as kc
from edgert.compiler.pipeline import LIB_MEMBER
from edgert.errors import InputError
from edgert.ops.lut_matmul import LutLayout
from edgert.targets import get_target, host_arch, host_cpu_features

from conftest import lowbit_mlp, run_cli

needs_avx2 = pytest.mark.skipif(host_arch() != "x86_64" or "avx2" not in host_cpu_features(),
                                reason="needs an x86-64 CPU with AVX2")


def _signature(*, rows: int, group_size: int = 32, table_bits: int = 8, tile_k: int = 32,
               a_dtype: int = TensorProto.FLOAT, scales: bool = True) -> kc.Signature:
    """A 2-bit 128 x 40 LutMatMul signature (symmetric weights)."""
    attrs = LutLayout(bits=2, group_size=group_size, K=128, N=40, tile_k=tile_k).to_attrs()
    return kc.Signature(tuple(sorted({**attrs, "table_bits": table_bits}.items())), a_dtype,
                        scales, None, rows)


def _dequant_attrs(art) -> dict[str, int]:
    model = onnx.load_model_from_string(read_artifact(art).model_bytes)
    return {n.name: next((a.i for a in n.attribute if a.name == "dequant"), 0)
            for n in model.graph.node if n.op_type == "LutMatMul"}


@needs_avx2
def test_lut_never_runs_the_dequant_kernel(tmp_path):
    art = compile_model(lowbit_mlp(tmp_path / "mlp.onnx"), tmp_path / "m.edgert", weight_bits=4,
                        group_size=32, threads=2, lut="never")
    assert b"lut_dequant_x86" in read_artifact(art).members[LIB_MEMBER]
    assert b"lut_matmul_x86" not in read_artifact(art).members[LIB_MEMBER]
    assert _dequant_attrs(art) == {"fc1": 1, "fc2": 1}
    lowbit = read_artifact(art).manifest["lowbit"]
    assert lowbit["lut"] == "never"
    assert {e["kernel"] for e in lowbit["nodes"].values()} == {"dequant"}
    assert all(e["kernel_choice"] == {"how": "--lut never"} for e in lowbit["nodes"].values())
    tvm_s, numba_s = edgert.Session(art, threads=2), edgert.Session(art, backend="numba")
    lut = edgert.Session(compile_model(tmp_path / "mlp.onnx", tmp_path / "l.edgert",
                                       weight_bits=4, group_size=32, threads=2, lut="always"))
    for shape in [(1, 1, 128), (1, 9, 128), (2, 4, 128)]:
        feed = {"x": np.random.default_rng(5).standard_normal(shape).astype(np.float32)}
        got, want = tvm_s.run(None, feed)[0], numba_s.run(None, feed)[0]
        # numba sums in float64, the kernel in float32 (the bound is in ops/lut_matmul/spec.py)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
        # table lookup rounds its tables: a different (less exact) result
        assert np.abs(lut.run(None, feed)[0] - want).max() > 1e-3 * np.abs(want).max()


def _fake_timings(monkeypatch, lut_s: float, dequant_s: float) -> list[set[str]]:
    """Make :func:`edgert.timing.interleaved_latencies` report ``lut_s`` / ``dequant_s`` seconds
    per call for the "lut" / "dequant" candidates (after calling each once, so both kernels
    still build and run); returns the candidate names of each call, appended as they come."""
    from edgert import timing

    calls: list[set[str]] = []

    def fake(fns, *, repeats=50, warmup=3):
        calls.append(set(fns))
        for fn in fns.values():
            fn()
        return {name: np.full(repeats, {"lut": lut_s, "dequant": dequant_s}[name])
                for name in fns}

    monkeypatch.setattr(timing, "interleaved_latencies", fake)
    return calls


@needs_avx2
@pytest.mark.parametrize("faster", ["dequant", "lut"])
def test_lut_auto_times_both_kernels_and_caches_the_choice(tmp_path, monkeypatch, faster):
    """With timings injected so that ``faster`` is known to win: ``auto`` picks it for every
    node, records both times, sets ``dequant`` in the node and caches the choice; a second
    compile takes it from the cache without timing."""
    cache = tmp_path / "choice.json"
    monkeypatch.setenv(kc.CACHE_FILE_ENV, str(cache))
    times = {"lut": 0.002, "dequant": 0.003} if faster == "lut" else \
        {"lut": 0.003, "dequant": 0.002}
    calls = _fake_timings(monkeypatch, times["lut"], times["dequant"])
    src = lowbit_mlp(tmp_path / "mlp16.onnx", rows=16)
    art = compile_model(src, tmp_path / "a.edgert", weight_bits=4, threads=2)   # auto
    assert calls and all(c == {"lut", "dequant"} for c in calls)
    lowbit = read_artifact(art).manifest["lowbit"]
    assert lowbit["lut"] == "auto"
    attrs = _dequant_attrs(art)
    assert len(lowbit["nodes"]) == 2
    for entry in lowbit["nodes"].values():
        assert entry["kernel"] == faster
        assert entry["kernel_choice"] == {"how": "timed", "rows": 16,
                                          "lut_ms": 1e3 * times["lut"],
                                          "dequant_ms": 1e3 * times["dequant"]}
        assert attrs[entry["lut_node"]] == (faster == "dequant")
    cached = json.loads(cache.read_text())
    assert len(cached) == 2                                   # two shapes, one entry each
    assert {v["kernel"] for v in cached.values()} == {faster}
    calls.clear()
    again = read_artifact(compile_model(src, tmp_path / "b.edgert", weight_bits=4, threads=2))
    assert not calls                                          # nothing timed again
    for entry in again.manifest["lowbit"]["nodes"].values():
        assert entry["kernel_choice"]["how"] == "cached" and entry["kernel"] == faster


def test_symbolic_rows_are_timed_at_one_row_and_other_targets_not_at_all(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv(kc.CACHE_FILE_ENV, str(tmp_path / "choice.json"))
    sig = _signature(rows=1)
    model = kc.signature_model(sig, dequant=False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "m"
    model = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in model.graph.input}
    assert kc._signature(model.graph.node[0], infos, {}) == sig        # symbolic: 1 row
    rpi5 = get_target("rpi5")
    if host_arch() != "aarch64":
        choice = kc.choose_kernels(model, "auto", rpi5, 4)["lut"]
        assert choice.kernel == "lut" and choice.how.startswith("not timed: ")
    for mode, kernel in (("always", "lut"), ("never", "dequant")):
        assert kc.choose_kernels(model, mode, rpi5, 4)["lut"] == kc.Choice(kernel,
                                                                           f"--lut {mode}")


def test_lut_flag_is_checked(tmp_path):
    src = lowbit_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(InputError, match="--lut must be one of auto, always, never"):
        compile_model(src, tmp_path / "x.edgert", weight_bits=4, lut="sometimes")
    with pytest.raises(InputError, match="apply to low-bit weights"):
        compile_model(src, tmp_path / "x.edgert", lut="never")
    assert not (tmp_path / "x.edgert").exists()


@needs_avx2
def test_cli_lut_flag_and_inspect(tmp_path):
    src = lowbit_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "m.edgert"
    done = run_cli("compile", str(src), "-o", str(out), "--weight-bits", "2", "--lut", "never")
    assert done.returncode == 0, done.stderr
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0 and "--lut never" in shown.stdout
    assert shown.stdout.count("dequant") >= 2


def test_int8_activations_are_not_timed():
    """The integer variant's dequantize path is the generic compute: never timed, lookups."""
    sig = _signature(group_size=128, table_bits=16, tile_k=64, a_dtype=TensorProto.INT8,
                     scales=False, rows=4)
    model = onnx.shape_inference.infer_shapes(kc.signature_model(sig, dequant=False))
    choice = kc.choose_kernels(model, "auto", get_target("host"), 2)["lut"]
    assert choice == kc.Choice("lut", "not timed: no scheduled dequantize kernel for int8 "
                                      "activations")


def test_a_failed_timing_keeps_lookups_and_is_not_cached(tmp_path, monkeypatch):
    from edgert.errors import CompileError

    cache = tmp_path / "choice.json"
    monkeypatch.setenv(kc.CACHE_FILE_ENV, str(cache))

    def fail(sig, target, threads):
        raise CompileError("model: TVM failed to compile for x86-avx2: boom")

    monkeypatch.setattr(kc, "time_signature", fail)
    sig = _signature(rows=2)
    model = onnx.shape_inference.infer_shapes(kc.signature_model(sig, dequant=False))
    target = get_target("x86-avx2")
    choice = kc.choose_kernels(model, "auto", target, 2)["lut"]
    if host_arch() == "x86_64" and "avx2" in host_cpu_features():
        assert choice == kc.Choice("lut", "not timed: model: TVM failed to compile for "
                                          "x86-avx2: boom")
        assert not cache.exists()
    else:
        assert choice.kernel == "lut" and choice.how.startswith("not timed: ")


def test_a_damaged_cache_is_ignored(tmp_path, monkeypatch):
    cache = tmp_path / "choice.json"
    monkeypatch.setenv(kc.CACHE_FILE_ENV, str(cache))
    sig = _signature(rows=2)
    model = onnx.shape_inference.infer_shapes(kc.signature_model(sig, dequant=False))
    rpi5 = get_target("rpi5")                          # not timed here: only the cache counts
    for text in ("{not json", "[1, 2]", json.dumps({sig.key(rpi5, 2): {"kernel": "fast"}}),
                 json.dumps({sig.key(rpi5, 2): {"kernel": "dequant", "speed": 1}})):
        cache.write_text(text)
        if host_arch() != "aarch64":
            assert kc.choose_kernels(model, "auto", rpi5, 2)["lut"].kernel == "lut"
    cache.write_text(json.dumps({sig.key(rpi5, 2): {"kernel": "dequant", "how": "timed"}}))
    assert kc.choose_kernels(model, "auto", rpi5, 2)["lut"] == kc.Choice("dequant", "cached")
