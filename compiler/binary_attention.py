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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.compiler.binary_attention_fit import SiteData, fit_sites, fit_temperature
from edgert.compiler.binary_attention_match import (GraphIndex, Site, find_site,
                                                    replace_sites, site_nodes)
from edgert.errors import InputError
from edgert.ops import DOMAIN, OPSET_VERSION
from edgert.ops.binary_attention.spec import FORMS
from edgert.ops.hash_codes.spec import BITS

METHODS = ("ksh", "pca")
"""How the hash projection is fitted: supervised (kernel-based supervised hashing, greedy) or
the PCA baseline."""
DEFAULT_BITS = 16


def check_options(bits: int | None, form: str | None, method: str | None = None
                  ) -> tuple[int, str, str]:
    """Validate ``--hash-bits`` / ``--attention-form`` (and the fitting method); returns them
    with their defaults (16, quadratic, ksh). Raises InputError."""
    b = DEFAULT_BITS if bits is None else bits
    if b not in BITS:
        raise InputError(f"--hash-bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    f = "quadratic" if form is None else form
    if f not in FORMS:
        raise InputError(f"--attention-form must be one of {', '.join(FORMS)}, got {form!r}")
    m = "ksh" if method is None else method
    if m not in METHODS:
        raise InputError(f"binary attention fit method must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")
    return int(b), f, m


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


def _temperatures(data: SiteData, params: Any, bits: int, shared: bool) -> np.ndarray:
    """The softmax temperature of the fitted codes (the op's own codes, float32): one per
    head, or one for all heads when the hash is shared (the head count may be symbolic)."""
    from edgert.ops.binary_attention.spec import scores
    from edgert.ops.hash_codes import reference as hash_codes

    p = [params.anchors, params.gamma, params.mean, params.proj]
    s = [scores(hash_codes(q, *p, bits=bits), hash_codes(k, *p, bits=bits), bits)
         for q, k in zip(data.q, data.k)]
    if shared:
        return np.array([fit_temperature(s, data.probs, data.bias)], np.float32)
    pick = lambda a, h: None if a is None else a[:, h if a.shape[1] > 1 else 0]   # noqa: E731
    return np.array([fit_temperature([x[:, h] for x in s], [p_[:, h] for p_ in data.probs],
                                     [pick(b, h) for b in data.bias])
                     for h in range(data.q[0].shape[1])], np.float32)


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
    bits, form, method = check_options(bits, form, method)
    sites, kept = find_sites(model, form)
    section: dict[str, Any] = {"bits": bits, "form": form, "method": method, "replaced": [],
                               "kept": kept, "softmaxes": len(sites) + len(kept)}
    if not sites:
        return model, section
    data = collect(model, sites, calib, progress)
    with _one_blas_thread():
        out = _rewrite(model, sites, data, section, seed)
    return out, section


def _one_blas_thread() -> Any:
    """The fit multiplies small matrices: one BLAS thread beats several contending for the
    cores (20x on a busy two-core machine). Limited through threadpoolctl where installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def _rewrite(model: onnx.ModelProto, sites: list[Site], data: list[SiteData], section: dict,
             seed: int) -> onnx.ModelProto:
    """``model`` with every site replaced by its fitted hash; fills ``section["replaced"]``."""
    bits, form, method = section["bits"], section["form"], section["method"]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replacements, inits = [], []
    shared = [site.heads is None for site in sites]
    fits = fit_sites(data, shared, bits, method, seed=seed)
    for i, (site, d, (params, auc)) in enumerate(zip(sites, data, fits)):
        heads = 1 if shared[i] else d.q[0].shape[1]
        prefix = f"binary_attention_{i}"
        arrays = dict(anchors=params.anchors, gamma=params.gamma, mean=params.mean,
                      proj=params.proj)
        entry = {"name": site.name, "heads": heads, "shared": shared[i],
                 "pair_auc": [round(a, 4) for a in auc]}
        if form == "quadratic":
            arrays["temperature"] = _temperatures(d, params, bits, shared[i])
            entry["temperature"] = [round(float(t), 5) for t in arrays["temperature"]]
        inits += [numpy_helper.from_array(a, f"{prefix}_{k}") for k, a in arrays.items()]
        replacements.append((site, site_nodes(site, prefix, bits, form, form == "quadratic")))
        section["replaced"].append(entry)
    replace_sites(out.graph, replacements)
    out.graph.initializer.extend(inits)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return out
