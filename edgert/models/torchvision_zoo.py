"""torchvision's classification models with random weights that behave like trained ones.

For tests and benchmarks that need the CNNs people use, exported the way they export them, where
no pretrained weights can be downloaded. torchvision's model definitions are plain PyTorch; its
C++ extension (detection ops: nms, roi_align) is not needed for them. Where the installed
torchvision wheel cannot load its extension next to this torch (a CUDA build beside a CPU torch),
:func:`torchvision_models` imports ``torchvision.models`` without running ``torchvision/__init__``.

A random network is chaotic (fp32 MobileNetV2 with random BatchNorm statistics loses 0.04 of
logit cosine to 1 % input noise), so no 8-bit graph could meet a cosine bound on it.
:func:`random_model` therefore measures the BatchNorm statistics on random images (non-trivial
means and variances that keep the signal's size through the depth), draws the affine parameters
around (1, 0), and scales the last BatchNorm of each residual branch by ``RESIDUAL_GAMMA``
(``RESIDUAL_GAMMA_OF`` for deeper models).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

ZOO = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet50",
       "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x1_0", "regnet_x_400mf", "mnasnet0_5")
RESIDUAL_GAMMA = 0.7
# deeper stacks need more: resnet50's 16 bottlenecks at 0.7 lose 0.006 of fp32 logit cosine to
# 1 % input noise (0.9996 at 0.5, like the other models at 0.7)
RESIDUAL_GAMMA_OF = {"resnet50": 0.5}
# torchvision's residual blocks: the output of their last BatchNorm is added to the block's input
RESIDUAL_BLOCKS = frozenset({"BasicBlock", "Bottleneck", "InvertedResidual", "MBConv",
                             "_InvertedResidual", "ResBottleneckBlock"})


def torchvision_models() -> types.ModuleType:
    """``torchvision.models``, imported normally or, when torchvision's C++ extension cannot load,
    as a bare package (the classification models need none of its ops).

    Raises:
        ImportError: torchvision is not installed.
    """
    try:
        return importlib.import_module("torchvision.models")
    except (ImportError, RuntimeError, OSError):
        pass
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]                     # the half-imported package
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("torchvision is not installed")
    package = types.ModuleType("torchvision")
    package.__spec__, package.__file__ = spec, spec.origin
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")


def random_model(name: str, *, size: int = 64, seed: int = 0, images: int = 16) -> Any:
    """``torchvision.models.<name>()`` with torchvision's initialization and BatchNorm statistics
    measured on ``images`` random ``3 x size x size`` images; eval mode (a ``torch.nn.Module``
    taking float32 ``[N, 3, size, size]`` and returning ``[N, 1000]`` logits)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = getattr(torchvision_models(), name)()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None                      # a plain average over the batch
                m.weight.uniform_(0.75, 1.25)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.randn(images, 3, size, size))
        for m in model.modules():
            if type(m).__name__ in RESIDUAL_BLOCKS:
                norms = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
                if norms:
                    norms[-1].weight.mul_(RESIDUAL_GAMMA_OF.get(name, RESIDUAL_GAMMA))
                    norms[-1].bias.mul_(RESIDUAL_GAMMA_OF.get(name, RESIDUAL_GAMMA))
    return model.eval()


def export(model: Any, path: Any, *, dynamo: bool, static_batch: bool = False,
           size: int = 64) -> Any:
    """Write ``model`` as ONNX with ``torch.onnx.export`` (opset 17 TorchScript, ``dynamo=False``,
    or the dynamo exporter), input ``x`` and output ``y``: a dynamic batch, or a static batch
    of 1. Returns ``path``."""
    import torch

    x = torch.randn(1 if static_batch else 2, 3, size, size)
    with torch.no_grad():
        if dynamo:
            shapes = None if static_batch else ({0: torch.export.Dim("batch")},)
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"],
                                        output_names=["y"], verbose=False, dynamic_shapes=shapes)
            program.save(str(path), external_data=False)
        else:
            axes = None if static_batch else {"x": {0: "batch"}, "y": {0: "batch"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], opset_version=17, dynamic_axes=axes)
    return path
