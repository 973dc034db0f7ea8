"""`edgert profile` end to end on the MLP artifact: the terminal report, the JSON (against its
schema), the Chrome trace, and the HTML page rendered by headless chromium."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from conftest import run_cli
from test_profile import validate


@pytest.fixture(scope="module")
def cli_run(mlp_artifact, model_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    proc = run_cli("profile", str(mlp_artifact), str(mlp_artifact), "--runs", "15", "--warmup",
                   "2", "--threads", "1", "--batch", "2", "--compare", str(model_files["mlp"]),
                   "--json", str(out / "p.json"), "--html", str(out / "p.html"),
                   "--trace", str(out / "t.json"))
    return proc, out


def test_cli_report_and_json(cli_run):
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr
    for word in ("p99 ms", "throughput", "onnxruntime", "per-kernel", "Gemm", "peak RSS",
                 "modelled"):
        assert word in proc.stdout
    report = json.loads((out / "p.json").read_text())
    assert validate(report) == []
    assert len(report["results"]) == 2 and report["settings"]["interleaved"] is True
    for res in report["results"]:
        assert res["runs"] == 15 and res["batch"] == 2
        assert res["compare"]["runtime"] == "onnxruntime" and res["compare"]["speedup_p50"] > 0
        assert res["energy"]["method"] in ("modelled", "measured")


def test_cli_trace_is_chrome_trace(cli_run):
    _, out = cli_run
    events = json.loads((out / "t.json").read_text())
    report = json.loads((out / "p.json").read_text())
    assert isinstance(events, list)
    for pid, res in enumerate(report["results"]):
        calls = sum(o["calls"] for o in res["ops"] if o["op_type"] != "(VM)")
        mine = [e for e in events if e["pid"] == pid and e["ph"] == "X"]
        assert [e for e in events if e["pid"] == pid and e["ph"] == "M"][0]["args"]["name"] \
            == res["artifact"]
        assert len(mine) == calls > 0                     # one event per kernel call, one run
        assert all(e["ph"] == "X" and isinstance(e["ts"], (int, float)) for e in mine)
        assert {e["name"] for e in mine} == {o["name"] for o in res["ops"]
                                             if o["op_type"] != "(VM)"}


def _png_size_and_spread(path) -> tuple[int, int, float, int]:
    """(width, height, std of the pixel values, distinct colors) of a PNG: with Pillow when
    installed, else from the raw scanlines (zlib + struct: filtered bytes, whose spread is 0
    for a blank page too)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    try:
        from PIL import Image
    except ImportError:
        pos, idat, header = 8, b"", None
        while pos < len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind == b"IHDR":
                header = struct.unpack(">II", data[pos + 8:pos + 16])
            elif kind == b"IDAT":
                idat += data[pos + 8:pos + 8 + length]
            pos += 12 + length
        width, height = header
        raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, -1)[:, 1:]
        return width, height, float(raw.std()), len(np.unique(raw))
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    colors = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    return pixels.shape[1], pixels.shape[0], float(pixels.std()), colors


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", *args], capture_output=True, text=True,
                          timeout=90)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install chromium; .ci/run installs it)")
def test_html_renders_in_headless_chromium(cli_run):
    _, out = cli_run
    page = (out / "p.html").resolve()
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<svg") >= 4                      # comparison, histogram, ops, energy x2
    assert html.count('class="bar"') >= 20
    assert "edgert profile" in html and "modelled" in html
    shot = out / "shot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=900,1200", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, spread, colors = _png_size_and_spread(shot)
    assert (width, height) == (900, 1200)
    assert spread > 10 and colors > 8                  # text, bars in several colors: not blank


def _tiny_decoder_onnx(path, vocab=32, cache=(1, 2, 1, 4)):
    """An ONNX graph with the KV-cache decoder's inputs and outputs (edgert.models.llama): logits
    looked up by token, mean of past and mask added; new_kv looked up by token."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, vocab)).astype(np.float32),
                                     "emb"),
             numpy_helper.from_array(rng.standard_normal((vocab, int(np.prod(cache))))
                                     .astype(np.float32), "kv"),
             numpy_helper.from_array(np.array([-1, *cache], np.int64), "kvshape"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["l0"]),
             helper.make_node("ReduceMean", ["past"], ["pm"], keepdims=0),
             helper.make_node("ReduceMean", ["attention_mask"], ["mm"], keepdims=0),
             helper.make_node("Add", ["pm", "mm"], ["s"]),
             helper.make_node("Add", ["l0", "s"], ["logits"]),
             helper.make_node("Squeeze", ["input_ids", "zero"], ["ids"]),
             helper.make_node("Gather", ["kv", "ids"], ["kv0"]),
             helper.make_node("Reshape", ["kv0", "kvshape"], ["new_kv"])]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "decoder", [
        info("input_ids", T.INT64, [1, "sequence"]), info("position_ids", T.INT64, [1, "sequence"]),
        info("attention_mask", T.FLOAT, [1, 1, "sequence", "total"]),
        info("past", T.FLOAT, ["past", *cache])],
        [info("logits", T.FLOAT, [1, "sequence", vocab]),
         info("new_kv", T.FLOAT, ["sequence", *cache])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_cli_decoder_pp_tg(tmp_path):
    from ophelpers import skip_unless_opted_in

    skip_unless_opted_in("EDGERT_PROFILE", "edgert profile of a compiled decoder (pp/tg)")
    from edgert.compiler import compile_model

    art = compile_model(_tiny_decoder_onnx(tmp_path / "dec.onnx"), tmp_path / "dec.edgert")
    proc = run_cli("profile", str(art), "--runs", "5", "--warmup", "1", "--prompt-tokens", "6",
                   "--gen-tokens", "3", "--json", str(tmp_path / "d.json"))
    assert proc.returncode == 0, proc.stderr
    assert "pp 6" in proc.stdout and "tg 3" in proc.stdout
    (res,) = json.loads((tmp_path / "d.json").read_text())["results"]
    assert validate({"schema": "edgert.profile/1", "machine": {"os": "", "arch": "", "cpu": "",
                                                               "logical_cpus": 1, "edgert": ""},
                     "results": [res]}) == []
    assert res["llm"]["pp"]["tokens"] == 6 and res["llm"]["tg"]["tokens_per_s"] > 0
    assert res["input_shapes"]["past"] == [6, 1, 2, 1, 4]          # one step after the prompt
