"""Compiling for targets other than this machine: rpi5 (cross-linked) and CUDA (built without a GPU)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import edgert
from edgert.artifact import read_artifact
from edgert.compiler import compile_model
from edgert.errors import TargetError
from edgert.targets import can_run_here, get_target, host_arch

from conftest import random_input, rel_err

ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _elf_machine(lib: bytes) -> int:
    assert lib[:4] == b"\x7fELF"
    return int.from_bytes(lib[18:20], "little")


def test_missing_cross_compiler_names_the_package(model_files, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(TargetError, match="aarch64-linux-gnu-gcc.*apt-get install gcc-aarch64-linux-gnu"):
        compile_model(model_files["mlp"], tmp_path / "m.edgert", target="rpi5")
    assert not (tmp_path / "m.edgert").exists()


def test_rpi5_artifact_is_an_aarch64_library(aarch64_cc, model_files, tmp_path):
    art = compile_model(model_files["mlp"], tmp_path / "m.edgert", target="rpi5")
    manifest = read_artifact(art).manifest
    assert manifest["target"]["name"] == "rpi5"
    assert _elf_machine(read_artifact(art).members["lib/model.so"]) == ELF_MACHINE["aarch64"]
    with pytest.raises(TargetError, match="compiled for rpi5"):
        edgert.Session(art)


def test_jetson_orin_artifact_is_aarch64_with_cuda_kernels(aarch64_cc, model_files, tmp_path):
    art = read_artifact(compile_model(model_files["mlp"], tmp_path / "m.edgert",
                                      target="jetson-orin"))
    assert art.manifest["target"]["cuda_arch"] == "sm_87"
    lib = art.members["lib/model.so"]
    assert _elf_machine(lib) == ELF_MACHINE["aarch64"] and b"__global__" in lib


@pytest.fixture(scope="module")
def cuda_artifact(model_files, tmp_path_factory):
    return compile_model(model_files["mlp"], tmp_path_factory.mktemp("cuda") / "m.edgert",
                         target="cuda-sm80")


def test_cuda_artifact_builds_without_a_gpu(cuda_artifact):
    art = read_artifact(cuda_artifact)
    assert art.manifest["target"]["cuda_arch"] == "sm_80"
    assert _elf_machine(art.members["lib/model.so"]) == ELF_MACHINE[host_arch()]
    if not can_run_here(get_target("cuda-sm80"))[0]:
        with pytest.raises(TargetError, match="needs an NVIDIA GPU"):
            edgert.Session(cuda_artifact)


@pytest.mark.gpu
def test_cuda_artifact_matches_onnxruntime(cuda_artifact, model_files):
    sess = edgert.Session(cuda_artifact)
    x = random_input(["batch", 20], 4)
    [ours] = sess.run(None, {"x": x})
    [ref] = ort.InferenceSession(str(model_files["mlp"])).run(None, {"x": x})
    assert rel_err(ours, ref) <= 1e-4
    assert np.isfinite(ours).all()


@pytest.fixture(scope="module")
def cuda_int_lut_artifact(tmp_path_factory):
    """The demo ViT, integer-only with 4-bit LUT weights, for cuda-sm80 (ILayerNorm, Shiftmax,
    ShiftGELU, Requant, IntMatMul and LutMatMul all get GPU kernels)."""
    from edgert.demo import demo_calib_file, demo_files

    return compile_model(demo_files()[0], tmp_path_factory.mktemp("cuda") / "vit.edgert",
                         target="cuda-sm80", int_only=True, calib=demo_calib_file(),
                         weight_bits="4")


def test_integer_lut_graph_builds_for_cuda(cuda_int_lut_artifact):
    art = read_artifact(cuda_int_lut_artifact)
    assert art.manifest["target"]["cuda_arch"] == "sm_80"
    assert art.manifest["lowbit"]["nodes"]
    lib = art.members["lib/model.so"]
    # TVM 0.27 keeps the CUDA kernels as CUDA C in the library (compiled when it is loaded)
    kernels = b" ".join(re.findall(rb"__global__ void __launch_bounds__\(\d+\) (\w+)\(", lib))
    for op in (b"ilayernorm", b"shiftmax", b"shiftgelu", b"lutmatmul", b"int_matmul_dp4a"):
        assert op in kernels, op
    assert b"__dp4a(" in lib            # int8 x int8 matmuls: compiler/schedule_cuda.py


@pytest.mark.gpu
def test_cuda_integer_graph_is_bit_identical_to_cpu(cuda_int_lut_artifact, tmp_path):
    from edgert.demo import demo_calib_file, demo_files

    onnx_path, test = demo_files()
    cpu = compile_model(onnx_path, tmp_path / "cpu.edgert", int_only=True,
                        calib=demo_calib_file(), weight_bits="4")
    images = np.load(test)["images"]
    [ours] = edgert.Session(cuda_int_lut_artifact).run(None, {"image": images})
    [want] = edgert.Session(cpu).run(None, {"image": images})
    assert ours.dtype == want.dtype and np.array_equal(ours, want)


def test_large_int8_matmul_builds_for_cuda(tmp_path):
    """A MiniLM-sized MatMulInteger (every dim > 64: dlight would take its int8 tensor-core
    path, which TVM 0.27's CUDA codegen rejects) builds, as our dp4a kernel."""
    w = np.random.default_rng(0).integers(-128, 128, (384, 384), dtype=np.int8)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mm")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [1, 128, 384])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [1, 128, 384])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    onnx.save(model, tmp_path / "mm.onnx")
    art = compile_model(tmp_path / "mm.onnx", tmp_path / "mm.edgert", target="cuda-sm90")
    assert b"int_matmul_dp4a_int8_packed_k384_n384" in read_artifact(art).members["lib/model.so"]


@pytest.mark.gpu
@pytest.mark.parametrize("seq", [17, "seq"])
def test_cuda_dp4a_kernels_bit_exact(tmp_path, seq):
    """The dp4a kernels over ragged K and N, a broadcast and a batched activation B, a symbolic
    sequence length: equal to the numpy reference."""
    from test_schedule_intmatmul import int8_matmul_model

    model, feed, oracle = int8_matmul_model(seq)
    onnx.save(model, tmp_path / "m.onnx")
    sess = edgert.Session(compile_model(tmp_path / "m.onnx", tmp_path / "m.edgert",
                                        target="cuda-sm80"))
    for batch, s in [(1, 17), (3, 17)] + ([(1, 1), (2, 5), (1, 40)] if seq == "seq" else []):
        f = feed(batch, s)
        for i, (got, want) in enumerate(zip(sess.run(None, f), oracle(f))):
            assert got.dtype == want.dtype and np.array_equal(got, want), (i, batch, s)


def test_cuda_runtime_setup_refuses_clearly(monkeypatch):
    """What Session checks before loading a CUDA library (a stand-in tvm: no GPU needed): a GPU
    older than the artifact's arch, and no way to compile the kernels at load."""
    import importlib.util

    from edgert.backends import tvm_vm

    class Device:
        exist, compute_version = True, "7.5"

    class FakeTvm:
        __file__ = "/nonexistent/tvm/__init__.py"

        @staticmethod
        def get_global_func(name, allow_missing=False):
            return object()                      # the CUDA runtime is registered

        @staticmethod
        def cuda(index):
            return Device()

    def no_module(name):
        raise ModuleNotFoundError(name)

    with pytest.raises(TargetError, match="compiled for sm_80 GPUs; this GPU is sm_75"):
        tvm_vm._ensure_cuda_runtime(FakeTvm, "sm_80")
    Device.compute_version = "9.0"
    monkeypatch.setattr(importlib.util, "find_spec", no_module)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TargetError, match="cuda-bindings.*nvcc"):
        tvm_vm._ensure_cuda_runtime(FakeTvm, "sm_80")
