"""edgert.profiling: statistics, random inputs, kernel -> ONNX mapping, the JSON report
against its schema, the HTML page and the Chrome trace, on known values and on the MLP."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from edgert.errors import InputError
from edgert.profiling import ops, stats
from edgert.profiling.inputs import random_feed
from edgert.profiling.report_json import SCHEMA, SCHEMA_FILE

# ---------------------------------------------------------------------------------------------
# a small JSON Schema checker (jsonschema is not a dependency): the keywords the schema uses


def schema_errors(value, schema, root, path="$"):
    """Violations of ``schema`` by ``value``: type, const, enum, required, properties,
    additionalProperties, items, minItems, minimum, maximum, oneOf, $ref."""
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return schema_errors(value, node, root, path)
    errors = []
    if "oneOf" in schema:
        ok = [s for s in schema["oneOf"] if not schema_errors(value, s, root, path)]
        if len(ok) != 1:
            errors.append(f"{path}: matches {len(ok)} of oneOf")
    types = schema.get("type")
    if types is not None:
        kinds = {"object": dict, "array": list, "string": str, "boolean": bool,
                 "null": type(None), "integer": int, "number": (int, float)}
        wanted = types if isinstance(types, list) else [types]
        good = any(isinstance(value, kinds[t]) and not (t in ("integer", "number")
                                                        and isinstance(value, bool))
                   for t in wanted)
        if not good:
            return [f"{path}: {type(value).__name__} is not {wanted}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} < {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                errors += schema_errors(v, props[k], root, f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(v, schema["additionalProperties"], root, f"{path}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                errors += schema_errors(v, schema["items"], root, f"{path}[{i}]")
    return errors


def validate(report):
    schema = json.loads(SCHEMA_FILE.read_text())
    return schema_errors(report, schema, schema)


# ---------------------------------------------------------------------------------------------
# unit tests on known values


def test_latency_stats_on_known_timings():
    seconds = np.arange(1, 101) / 1e3            # 1..100 ms, shuffled
    np.random.default_rng(0).shuffle(seconds)
    s = stats.latency_stats(seconds)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(100.0)
    assert s["mean"] == pytest.approx(50.5) and s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(np.sqrt((100 ** 2 - 1) / 12))
    assert stats.throughput_per_s(seconds, batch=4) == pytest.approx(4 / 0.0505)
    counts, edges, scale = stats.histogram(seconds * 1e3 + 10, bins=10)     # 11..110 ms
    assert scale == "linear" and counts == [10] * 10 and (edges[0], edges[-1]) == (11, 110)
    assert stats.histogram([2.0, 2.0], bins=3)[0] == [2, 0, 0]
    counts, edges, scale = stats.histogram([1.0, 1.0, 10.0, 100.0], bins=2)
    assert scale == "log" and edges == pytest.approx([1.0, 10.0, 100.0]) and counts == [2, 2]
    with pytest.raises(ValueError):
        stats.latency_stats([])


def test_op_rows_shares_counts_and_order():
    k = SimpleNamespace
    times = [k(name="add1", calls=2, ms=1.0), k(name="matmul_fma_x86_k4_n8", calls=3, ms=3.0),
             k(name="(VM: builtins and dispatch)", calls=40, ms=0.0)]
    nodes = [("mm0", "MatMul"), ("a0", "Add"), ("mm1", "MatMul"), ("a1", "Add"),
             ("mm2", "MatMul")]
    order = ["matmul_fma_x86_k4_n8", "add1", "matmul_fma_x86_k4_n8", "add1",
             "matmul_fma_x86_k4_n8"]
    rows = ops.op_rows(times, order, nodes)
    assert [r.name for r in rows] == ["matmul_fma_x86_k4_n8", "add1", "(VM: builtins and dispatch)"]
    assert [r.share for r in rows] == pytest.approx([0.75, 0.25, 0.0])
    assert [r.calls for r in rows] == [3, 2, 40]
    assert rows[0].nodes == ["mm0", "mm1", "mm2"] and rows[1].nodes == ["a0", "a1"]
    assert rows[0].op_type == "MatMul" and rows[2].op_type == ops.VM_TYPE
    types = ops.by_op_type(rows + [ops.OpRow("add9", "Add", 0.5, 0.125, 1)])
    assert [(t["op_type"], t["kernels"], t["calls"]) for t in types] == [
        ("MatMul", 1, 3), ("Add", 2, 3), (ops.VM_TYPE, 1, 40)]
    assert types[1]["ms"] == pytest.approx(1.5)


def test_kernel_names_to_onnx_types():
    t = ops.kernel_op_types
    assert t("fused_add5_gelu") == ["Add", "Gelu"]
    assert t("fused_strided_slice1_squeeze_transpose2") == ["Slice", "Squeeze", "Transpose"]
    assert t("matmul_fma_x86_float32_packed_k32_n96") == ["MatMul"]
    assert t("fused_add3_add4", repeats=True) == ["Add", "Add"]
    assert t("lut_matmul", ["LutMatMul", "Shiftmax"]) == ["LutMatMul"]
    assert t("attention_d32_bshd_bshd_bshd_bshd_0", repeats=True) == ["MatMul", "Softmax", "MatMul"]
    # a convolution lowered to im2col + matmul + to_nchw maps all three to its Conv
    got = ops.map_calls_to_nodes(["im2col", "matmul_k9_n8", "to_nchw", "fused_add_relu"],
                                 [("c", "Conv"), ("r", "Relu")])
    assert got == [["c"], ["c"], ["c"], ["r"]]
    # NHWC chains: numbered kernels, a padding kernel and a matmul split in two belong to the
    # convolution after them; a 1x1 convolution is a bare matmul; TVM's spelling of HardSwish
    calls = ["nhwc_pad_nhwc", "nhwc_im2col3", "matmul_fma_x86_float32_packed_serial_c4",
             "matmul_fma_x86_float32_packed_serial_c4", "fused_reshape2_add_add1_tir_clip_divide_multiply",
             "matmul_fma_x86_float32_packed_parallel_c2", "nhwc_depthwise4"]
    nodes = [("c1", "Conv"), ("h", "HardSwish"), ("c2", "Conv"), ("dw", "Conv")]
    assert ops.map_calls_to_nodes(calls, nodes) == [["c1"]] * 4 + [["h"], ["c2"], ["dw"]]
    # integer-only graphs: ConvInteger, the Requant after it found by name
    calls = ["pad_nhwc2", "im2col_groups1", "int_matmul_x86_int8_int8_batched_k144_n16_par",
             "requant_nhwc4", "int_dw_nhwc5"]
    nodes = [("g", "ConvInteger"), ("q", "Requant"), ("d", "ConvInteger")]
    assert ops.map_calls_to_nodes(calls, nodes) == [["g"]] * 3 + [["q"], ["d"]]


def test_random_feed_shapes_dtypes_and_errors():
    spec = SimpleNamespace
    ins = [spec(name="x", shape=["batch", 3], dtype="float32"),
           spec(name="ids", shape=["batch", 5], dtype="int64"),
           spec(name="m", shape=[2], dtype="bool")]
    feed = random_feed(ins, batch=4, ranges={"ids": {"min": 3, "max": 7}})
    assert feed["x"].shape == (4, 3) and feed["x"].dtype == np.float32
    assert feed["ids"].shape == (4, 5) and feed["ids"].min() >= 3 and feed["ids"].max() <= 7
    assert feed["m"].dtype == bool
    given = random_feed(ins, given={"x": np.zeros((6, 3), np.float32)})
    assert given["ids"].shape == (6, 5)                   # 'batch' taken from the given x
    with pytest.raises(InputError, match=r"input 's'.*axis 1 \('seq'\)"):
        random_feed([spec(name="s", shape=[1, "seq"], dtype="float32")])
    with pytest.raises(InputError, match="unknown input"):
        random_feed(ins, given={"nope": np.zeros(1)})


def test_schema_checker_catches_violations():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["properties"]["schema"]["const"] == SCHEMA
    bad = {"schema": SCHEMA, "machine": {}, "results": [{"artifact": 1, "ops": [],
                                                         "energy": {"method": "guessed"}}]}
    errors = validate(bad)
    assert any("machine: missing" in e for e in errors)
    assert any("artifact" in e for e in errors) and any("latency_ms" in e for e in errors)
    assert any("oneOf" in e for e in errors)


# ---------------------------------------------------------------------------------------------
# the whole profile of the MLP artifact, in this process


@pytest.fixture(scope="module")
def mlp_profile(mlp_artifact):
    from edgert import Session
    from edgert.profiling import profile

    sess = Session(mlp_artifact, threads=1)
    return profile(sess, runs=12, warmup=2, batch=3, trace_runs=2)


def test_profile_json_validates_and_counts(mlp_profile):
    report = mlp_profile.to_json()
    assert validate(report) == []
    json.dumps(report, allow_nan=False)
    (res,) = report["results"]
    hist = res["latency_histogram"]
    assert res["runs"] == 12 and sum(hist["counts"]) == 12
    assert res["batch"] == 3 and res["input_shapes"] == {"x": [3, 20]}
    lat = res["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert sum(o["share"] for o in res["ops"]) == pytest.approx(1.0)
    assert {o["op_type"] for o in res["ops"]} >= {"Gemm", "Relu", "Tanh"}
    assert res["memory"]["weights_bytes"] == 4 * (20 * 64 + 64 + 64 * 64 + 64 + 64 * 5 + 5)
    assert res["energy"] is None or res["energy"]["method"] in ("modelled", "measured")


def test_trace_has_one_event_per_kernel_call(mlp_profile):
    res = mlp_profile.results[0]
    everything = json.loads(json.dumps(mlp_profile.trace_events()))
    assert [e["ph"] for e in everything].count("M") == 1
    events = [e for e in everything if e["ph"] == "X"]
    calls = sum(r.calls for r in res.ops if r.op_type != ops.VM_TYPE)
    assert len(events) == 2 * calls > 0                  # trace_runs=2
    for e in events:
        assert e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0
        assert set(e) >= {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        assert set(e["args"]) >= {"op_name", "op_type"}
    for run in (0, 1):
        ts = [e["ts"] for e in events if e["tid"] == run]
        assert ts == sorted(ts)
    assert [e["tid"] for e in events].count(0) == calls


def test_html_has_plots_and_no_external_resources(mlp_profile):
    from edgert.profiling.report_html import render_html

    page = render_html(mlp_profile.to_json())
    assert page.count("<svg") >= 2 and page.count('class="bar"') >= 5
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    assert "<link" not in page


def test_plain_text_report_without_rich(mlp_profile):
    from edgert.profiling.report_text import plain_text

    text = plain_text(mlp_profile.to_json())
    assert "p99 ms" in text and "per-kernel" in text and "Gemm" in text


class FakeDecoder:
    """A stand-in with the KV-cache decoder's I/O (edgert.models.llama): records each call's
    token count and cached positions."""

    def __init__(self, vocab=11, cache=(2, 2, 1, 4)):
        arg = SimpleNamespace
        self.vocab, self.cache, self.calls = vocab, cache, []
        self.inputs = [arg(name="input_ids", shape=[1, "sequence"], dtype="int64"),
                       arg(name="position_ids", shape=[1, "sequence"], dtype="int64"),
                       arg(name="attention_mask", shape=[1, 1, "sequence", "total"],
                           dtype="float32"),
                       arg(name="past", shape=["past", *cache], dtype="float32")]
        self.outputs = [arg(name="logits", shape=[1, "sequence", vocab], dtype="float32"),
                        arg(name="new_kv", shape=["sequence", *cache], dtype="float32")]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def run(self, _names, feed):
        n, p = feed["input_ids"].shape[1], feed["past"].shape[0]
        assert feed["attention_mask"].shape == (1, 1, n, p + n)
        assert feed["position_ids"].tolist() == [list(range(p, p + n))]
        assert feed["input_ids"].max() < self.vocab
        self.calls.append((n, p))
        return [np.zeros((1, n, self.vocab), np.float32),
                np.full((n, *self.cache), p, np.float32)]


def test_decoder_pp_tg_feeds_prompt_then_one_token_per_step():
    from edgert.profiling import llm

    fake = FakeDecoder()
    assert llm.is_decoder(fake)
    rates = llm.decoder_rates(fake, prompt_tokens=5, gen_tokens=3, repeats=2)
    assert fake.calls == [(5, 0), (1, 5), (1, 6), (1, 7)] * 2
    assert rates["pp"]["tokens"] == 5 and rates["tg"]["tokens"] == 3 and rates["repeats"] == 2
    assert rates["pp"]["tokens_per_s"] > 0 and rates["tg"]["tokens_per_s"] > 0
    feed = llm.decode_step_feed(fake, past_tokens=7)
    assert feed["past"].shape == (7, 2, 2, 1, 4) and feed["input_ids"].shape == (1, 1)


def test_core_imports_numpy_and_runtime_only():
    """A board bundle with numpy alone reuses the measuring core and the report writers."""
    import subprocess
    import sys

    code = ("import sys, edgert.profiling.api, edgert.profiling.report_json, "
            "edgert.profiling.report_html, edgert.profiling.report_text, edgert.profiling.trace;"
            "print([m for m in ('onnx', 'onnxruntime', 'rich', 'typer', 'torch', "
            "'edgert.compiler', 'edgert.energy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
