"""``--binary-attention``: replace the attention subgraphs of an fp32 ONNX graph by binary
codes and popcount scores (``edgert.HashCodes`` + ``edgert.BinaryAttention``), fitted on
calibration data after training (``docs/methods/binary-attention.md``).

Steps: find the sites (:mod:`edgert.compiler.binary_attention_match`); run the fp32 graph on
the calibration samples with each site's queries, transposed keys, probabilities and bias as
extra outputs (onnxruntime, in the chunks the model accepts); fit each site's hash per head
(:mod:`edgert.compiler.binary_attention_fit`) and, for the quadratic form, the softmax
temperature per head on the fitted codes; rewrite the graph. The manifest's
``binary_attention`` section lists the sites replaced (heads, each head's pair AUC and
temperature) and those kept with the reason.

A model exported after :func:`finetune` carries its fine-tuned hashes in its metadata
(:mod:`edgert.compiler.binary_attention_finetune`): they replace the fit (method
``finetuned``); the calibration samples then only measure their pair AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.compiler.binary_attention_finetune import (FinetunedHashes, carried_hashes,
                                                       check_carried, finetune)
from edgert.compiler.binary_attention_fit import (DEFAULT_BITS, METHODS, HashParams, SiteData,
                                                  check_options, fit_sites, labels,
                                                  one_blas_thread, pair_auc, stack,
                                                  temperatures)
from edgert.compiler.binary_attention_match import (GraphIndex, Site, find_site,
                                                    replace_sites, site_nodes)
from edgert.errors import InputError
from edgert.ops import DOMAIN, OPSET_VERSION

__all__ = ["DEFAULT_BITS", "METHODS", "FinetunedHashes", "binary_attention_model",
           "check_options", "finetune", "find_sites"]
def find_sites(model: onnx.ModelProto, form: str) -> tuple[list[Site], dict[str, str]]:
    """The attention sites of ``model`` (shape-inferred) and the softmaxes kept, with why."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    g = GraphIndex.of(model.graph)
    sites, kept = [], {}
    for node in model.graph.node:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        found = find_site(node, g, opset, form)
        if isinstance(found, Site):
            sites.append(found)
        elif isinstance(found, str):
            kept[node.name or node.output[0]] = found
    return sites, kept


def collect(model: onnx.ModelProto, sites: list[Site], feeds: Iterable[Mapping[str, Any]],
            progress: Callable[[int, int], None] | None = None) -> list[SiteData]:
    """Each site's calibration tensors (queries, keys, probabilities, bias) over ``feeds``."""
    from edgert.compiler.calib_batches import probe_runs

    g = GraphIndex.of(model.graph)
    wanted = sorted({n for s in sites for n in (s.q, s.kt, s.probs, s.bias) if n})
    data = [SiteData([], [], [], []) for _ in sites]
    for feed, values, real in probe_runs(model, wanted, feeds, progress=progress):
        values.update({k: np.asarray(v) for k, v in feed.items()})

        def value(name: str) -> np.ndarray:
            v = values[name] if name in values else g.constants[name]
            return np.asarray(v, np.float32)[:real]

        for d, s in zip(data, sites):
            d.q.append(value(s.q))
            d.k.append(np.ascontiguousarray(np.swapaxes(value(s.kt), -1, -2)))
            d.probs.append(value(s.probs))
            d.bias.append(None if s.bias is None else value(s.bias))
    return data


def binary_attention_model(model: onnx.ModelProto, calib: Iterable[Mapping[str, Any]],
                           bits: int | None = None, form: str | None = None,
                           method: str | None = None, *, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None
                           ) -> tuple[onnx.ModelProto, dict]:
    """``model`` (shape-inferred fp32) with its attention on binary codes, and the manifest's
    ``binary_attention`` section: ``{"bits", "form", "method", "softmaxes", "replaced": [{"name",
    "heads", "shared", "pair_auc", "temperature"}], "kept": {name: why}}``.

    Args:
        calib: calibration feeds (dicts input name -> array, samples on axis 0).
        bits / form / method: code bits (16), ``quadratic`` or ``linear``, ``ksh`` or ``pca``.

    Raises:
        InputError: bad options or calibration data that does not fit the model.
    """
    carried = carried_hashes(model)
    if carried is not None:
        bits, form = carried.bits if bits is None else bits, carried.form if form is None else form
    bits, form, method = check_options(bits, form, method)
    sites, kept = find_sites(model, form)
    if carried is not None:
        check_carried(carried, bits, form, len(sites))
        method = "finetuned"
    section: dict[str, Any] = {"bits": bits, "form": form, "method": method, "replaced": [],
                               "kept": kept, "softmaxes": len(sites) + len(kept)}
    if not sites:
        return model, section
    data = collect(model, sites, calib, progress)
    with one_blas_thread():
        out = _rewrite(model, sites, data, section, seed, carried)
    return out, section


def _carried_fits(carried: FinetunedHashes, sites: list[Site], data: list[SiteData], bits: int
                  ) -> list[tuple[HashParams, list[float]]]:
    """The fine-tuned hash of each site and its pair AUC per head on the calibration
    attention; InputError where a hash does not fit its site's heads or vector length."""
    from edgert.ops.binary_attention.spec import scores
    from edgert.ops.hash_codes import reference as hash_codes

    out = []
    for i, (site, d, h) in enumerate(zip(sites, data, carried.sites)):
        p = h.params
        heads, dim = d.q[0].shape[1], d.q[0].shape[-1]
        if p.anchors.shape[0] not in (1, heads) or p.anchors.shape[2] != dim:
            raise InputError(f"fine-tuned hash {i} is for {p.anchors.shape[0]} heads of "
                             f"{p.anchors.shape[2]} values; attention {site.name!r} has "
                             f"{heads} heads of {dim}")
        blk = stack(d)
        y = labels(blk.probs, blk.valid)
        arrays = [p.anchors, p.gamma, p.mean, p.proj]
        codes = lambda x: hash_codes(np.moveaxis(x, 0, 1).astype(np.float32), *arrays,  # noqa
                                     bits=bits)
        s = scores(codes(blk.q), codes(blk.k), bits)                  # [N, H, S, T]
        out.append((p, [pair_auc(s[:, g], y[g]) for g in range(heads)]))
    return out


def _rewrite(model: onnx.ModelProto, sites: list[Site], data: list[SiteData], section: dict,
             seed: int, carried: FinetunedHashes | None = None) -> onnx.ModelProto:
    """``model`` with every site replaced by its fitted (or ``carried``) hash; fills
    ``section["replaced"]``."""
    bits, form, method = section["bits"], section["form"], section["method"]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replacements, inits = [], []
    if carried is None:
        shared = [site.heads is None for site in sites]
        fits = fit_sites(data, shared, bits, method, seed=seed)
    else:
        shared = [h.params.proj.shape[0] == 1 for h in carried.sites]
        fits = _carried_fits(carried, sites, data, bits)
    for i, (site, d, (params, auc)) in enumerate(zip(sites, data, fits)):
        heads = 1 if shared[i] else d.q[0].shape[1]
        prefix = f"binary_attention_{i}"
        arrays = dict(anchors=params.anchors, gamma=params.gamma, mean=params.mean,
                      proj=params.proj)
        entry = {"name": site.name, "heads": heads, "shared": shared[i],
                 "pair_auc": [round(a, 4) for a in auc]}
        if form == "quadratic":
            arrays["temperature"] = (temperatures(d, params, bits, shared[i]) if carried is None
                                     else carried.sites[i].temperature)
            entry["temperature"] = [round(float(t), 5) for t in arrays["temperature"]]
        inits += [numpy_helper.from_array(a, f"{prefix}_{k}") for k, a in arrays.items()]
        replacements.append((site, site_nodes(site, prefix, bits, form, form == "quadratic")))
        section["replaced"].append(entry)
    replace_sites(out.graph, replacements)
    out.graph.initializer.extend(inits)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return out
