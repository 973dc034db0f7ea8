"""A LayerNorm written out as ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add
(PaddlePaddle's exports, opset 12; the fusion ahead of quantization fuses it only from opset 13
on, :mod:`edgert.compiler.fuse`) -> the ``LayerNormalization`` rule (``ILayerNorm``).

:func:`decomposed` finds such patterns in the graph the quantizer walks
(:func:`edgert.compiler.fuse.layernorm_sites`: last axis, ``(x - mean) / sqrt(var + eps)``,
optional constant gamma and beta): the walk then gives each pattern's ``ReduceMean`` the fused
node and skips the pattern's other nodes. The integer form is ILayerNorm's: it normalizes the
int16 input exactly as for an exported ``LayerNormalization`` (its own integer square root;
epsilon, far below the integer variance's resolution, plays no part there either).
"""

from __future__ import annotations

import onnx

from edgert.compiler.fuse import layernorm_sites
from edgert.compiler.quantize.core import Quantizer


def decomposed(q: Quantizer) -> dict[int, onnx.NodeProto]:
    """Index of each decomposed LayerNorm's ``ReduceMean`` in ``q.model`` -> the
    ``LayerNormalization`` node that stands for the pattern; the pattern's other nodes go into
    ``q.skip`` and the new ``[C]`` scale/bias constants into ``q.inits``."""
    graph = q.model.graph
    index = {n.output[0]: i for i, n in enumerate(graph.node) if n.output}
    out = {}
    for names, node, params in layernorm_sites(q.model, q.shapes):
        at = [index[name] for name in names]
        out[at[0]] = node
        q.skip.update(at[1:])
        q.inits.update(params)
        q.used.update(params)
    return out
