"""Fine-tuning a PyTorch model with binary attention in place, so that its exported ONNX file
carries hash functions fitted for it (``docs/methods/binary-attention.md``).

:func:`finetune` finds the model's attention while it runs (no change to its modules):

- ``softmax(Q @ Kᵀ [* or / a positive constant] [+ bias], dim=-1)`` on rank-4 tensors
  ``[B, H, S, D]``, as hand-written attention (the digits ViT) computes it;
- ``torch.nn.functional.scaled_dot_product_attention`` (``attn_mask`` boolean or additive,
  ``is_causal``);
- ``nn.MultiheadAttention``, run through scaled_dot_product_attention (``need_weights=False``
  while fine-tuning: the attention weights are not returned then).

Those are the subgraphs ``--binary-attention`` replaces in the exported graph, in the same order
(one site per attention call of a forward pass). Steps:

1. the post-training fit of the compiler pass (:func:`edgert.compiler.binary_attention_fit.
   fit_sites`, and the softmax temperature of the quadratic form) on the attention of the
   calibration samples: the fine-tune starts where ``--binary-attention`` alone ends;
2. training for ``epochs`` with every attention's probabilities replaced by those of the binary
   codes: ``softmax(tau * Hq·Hkᵀ + bias)`` (quadratic) or ``w_j (Hq·Hk_j + b + 1)`` normalized per
   row (linear, ``w_j = exp(bias_j)``), the codes ``sign`` of the hash projection in the forward
   pass and the gradient of ``tanh`` of it in the backward pass (a straight-through estimator).
   The model's weights, each hash's projection and mean feature, and the temperatures train;
   the anchors and the bandwidth stay as fitted;
3. the hashes returned as :class:`FinetunedHashes`; :meth:`FinetunedHashes.attach` writes them
   into an exported ONNX file's metadata (key :data:`METADATA_KEY`). ``edgert compile
   --binary-attention`` then uses them instead of fitting its own (the manifest's method is
   ``finetuned``; ``--calib`` still measures their pair AUC).

The model itself keeps its softmax attention: export it as usual. Its float graph alone (without
``--binary-attention``) is the fine-tuned model with exact attention, no longer the one trained
for.

PyTorch is optional (``pip install 'edgert[export]'``): it is imported inside the functions;
:class:`FinetunedHashes` and :func:`carried_hashes` (what the compiler uses) need only numpy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgert.compiler.binary_attention_fit import (HashParams, SiteData, check_options, fit_sites,
                                                  one_blas_thread, temperatures)
from edgert.errors import EdgertError, InputError, ModelError

METADATA_KEY = "edgert.binary_attention.hashes"
"""The ONNX ``metadata_props`` key holding fine-tuned hashes (JSON, :meth:`FinetunedHashes.
to_json`)."""
CALIB_SAMPLES = 32
"""Samples the starting fit uses when ``calib`` is not given (the first of ``data``)."""
_BIAS_FLOOR = -1e4
"""Masked logits (``-inf`` from boolean masks) are clamped here, as the fit does."""


@dataclass(frozen=True)
class SiteHash:
    """The hash of one attention site: the inputs of ``edgert.HashCodes`` (float32 ``anchors``
    [Hp, m, D], ``gamma`` [Hp], ``mean`` [Hp, m], ``proj`` [Hp, b, m]) and the quadratic form's
    ``temperature`` [Hp] (None for the linear form)."""

    params: HashParams
    temperature: np.ndarray | None


@dataclass(frozen=True)
class FinetunedHashes:
    """The hashes of every attention site of a model, in the order its forward pass runs them
    (the order of the Softmax nodes of its exported graph), for ``bits``-bit codes and the
    attention ``form`` they were trained with."""

    bits: int
    form: str
    sites: tuple[SiteHash, ...]

    def to_json(self) -> str:
        """The metadata value: float32 arrays as nested lists (each float32 exactly)."""
        def arr(a: np.ndarray | None) -> Any:
            return None if a is None else np.asarray(a, np.float32).tolist()

        return json.dumps({"version": 1, "bits": self.bits, "form": self.form, "sites": [
            {"anchors": arr(s.params.anchors), "gamma": arr(s.params.gamma),
             "mean": arr(s.params.mean), "proj": arr(s.params.proj),
             "temperature": arr(s.temperature)} for s in self.sites]})

    @classmethod
    def from_json(cls, text: str) -> FinetunedHashes:
        """Inverse of :meth:`to_json`; ModelError for a value it did not write."""
        try:
            raw = json.loads(text)
            f32 = lambda v: None if v is None else np.asarray(v, np.float32)   # noqa: E731
            sites = tuple(SiteHash(HashParams(f32(s["anchors"]), f32(s["gamma"]),
                                              f32(s["mean"]), f32(s["proj"])),
                                   f32(s["temperature"])) for s in raw["sites"])
            return cls(int(raw["bits"]), str(raw["form"]), sites)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"the model's {METADATA_KEY!r} metadata is not readable: "
                             f"{e}") from None

    def attach(self, model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
        """Write the hashes into an ONNX model's metadata: in place for a ModelProto, else
        rewriting the file atomically. Returns the model."""
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
        kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        proto.metadata_props.add(key=METADATA_KEY, value=self.to_json())
        if not isinstance(model, onnx.ModelProto):
            path = Path(model)
            tmp = path.with_name(path.name + ".tmp")
            try:
                onnx.save(proto, os.fspath(tmp))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return proto

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Within the block, ``model``'s attention runs on these binary codes (exact signs,
        PyTorch arithmetic): to evaluate the fine-tuned model in PyTorch."""
        hashes = _torch_hashes(self, _first_parameter(model))
        with _AttentionMode("hash", hashes, self.bits, self.form):
            yield model


def carried_hashes(model: onnx.ModelProto) -> FinetunedHashes | None:
    """The fine-tuned hashes a model carries in its metadata (:meth:`FinetunedHashes.attach`),
    or None."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return FinetunedHashes.from_json(prop.value)
    return None


# ---------------------------------------------------------------- fine-tuning (PyTorch)


def finetune(model: Any, data: Any, epochs: int, *, bits: int | None = None,
             form: str | None = None, calib: Any = None, lr: float = 1e-3,
             hash_lr: float = 1e-2, batch_size: int = 64, seed: int = 0,
             loss: Callable[[Any, Any], Any] | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> FinetunedHashes:
    """Fine-tune ``model`` (a ``torch.nn.Module``, in place) with binary attention (module
    docstring) and return its hashes.

    Args:
        model: the trained float model; its weights are updated.
        data: ``(inputs, targets)`` arrays or tensors (samples on axis 0, shuffled into batches
            of ``batch_size`` each epoch), or an iterable of ``(inputs, targets)`` batches it
            can iterate once per epoch (a ``DataLoader``).
        epochs: passes over ``data``.
        bits / form: code bits (8, 16, 32; default 16) and ``quadratic`` or ``linear`` (the
            default): what ``edgert compile --binary-attention`` will build.
        calib: model inputs (one tensor or array, samples on axis 0) for the starting
            post-training fit; default the first :data:`CALIB_SAMPLES` inputs of ``data``.
        lr / hash_lr: AdamW learning rates of the model's weights and of the hash parameters.
        seed: seeds the fit's anchors and the batch order.
        loss: ``loss(output, targets)``; default cross-entropy (a classifier's logits).
        progress: called after each epoch with (epoch, epochs, mean training loss).

    Returns:
        The hashes, to :meth:`FinetunedHashes.attach` to the exported model.

    Raises:
        InputError: bad options, or a model without attention this finds.
    """
    torch = _torch()
    bits, form, _ = check_options(bits, form)
    loss = loss or torch.nn.functional.cross_entropy
    device_param = _first_parameter(model)
    batches = _batches(data, batch_size, seed)
    if calib is None:
        calib = next(iter(batches(None)))[0][:CALIB_SAMPLES]
    start = _starting_fit(model, _as_tensor(calib, device_param), bits, form, seed)
    hashes = _torch_hashes(start, device_param)
    trainable = [p for h in hashes for p in h.trainable()]
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad],
                              "lr": lr},
                             {"params": trainable, "lr": hash_lr, "weight_decay": 0.0}])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in batches(gen):
            with _AttentionMode("hash", hashes, bits, form):
                out = model(_as_tensor(x, device_param))
            value = loss(out, _as_tensor(y, device_param, keep_dtype=True))
            opt.zero_grad()
            value.backward()
            opt.step()
            total, count = total + float(value.detach()), count + 1
        if progress is not None:
            progress(epoch + 1, epochs, total / max(count, 1))
    model.eval()
    return _export_hashes(hashes, bits, form)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise EdgertError("fine-tuning needs PyTorch: pip install 'edgert[export]'") from None
    return torch


def _first_parameter(model: Any) -> Any:
    p = next(iter(model.parameters()), None)
    if p is None:
        raise InputError("the model has no parameters to fine-tune")
    return p


def _as_tensor(x: Any, like: Any, keep_dtype: bool = False) -> Any:
    torch = _torch()
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not keep_dtype and t.is_floating_point():
        t = t.to(like.dtype)
    return t.to(like.device)


def _batches(data: Any, batch_size: int, seed: int) -> Callable[[Any], Iterable]:
    """A function of a torch.Generator (None: no shuffle) giving one epoch's batches."""
    torch = _torch()
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        n = len(x)
        if len(y) != n:
            raise InputError(f"finetune data: {n} inputs but {len(y)} targets")

        def epoch(gen: Any) -> Iterator:
            order = torch.arange(n) if gen is None else torch.randperm(n, generator=gen)
            for idx in order.split(batch_size):
                i = idx.numpy()
                yield x[i], y[i]

        return epoch
    return lambda gen: iter(data)


# ---------------------------------------------------------------- the attention sites


def _pad_bias(bias: Any) -> Any:
    """A bias (or None) as a rank-4 float tensor, masked entries clamped to the fit's floor."""
    if bias is None:
        return None
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    return bias.clamp_min(_BIAS_FLOOR)


class _TorchHash:
    """One site's hash in PyTorch: fixed anchors and bandwidth, trainable mean, projection and
    log temperature."""

    def __init__(self, site: SiteHash, like: Any) -> None:
        torch = _torch()
        t = lambda a, grad: torch.tensor(np.asarray(a, np.float32), dtype=like.dtype,   # noqa
                                         device=like.device, requires_grad=grad)
        self.anchors, self.gamma = t(site.params.anchors, False), t(site.params.gamma, False)
        self.mean, self.proj = t(site.params.mean, True), t(site.params.proj, True)
        temp = site.temperature
        self.log_temperature = None if temp is None else t(np.log(temp), True)

    def trainable(self) -> list[Any]:
        return [p for p in (self.mean, self.proj, self.log_temperature) if p is not None]

    def codes(self, x: Any, exact: bool) -> Any:
        """+/-1 codes [B, H, S, b] of vectors ``x`` [B, H, S, D]; with a tanh gradient unless
        ``exact``."""
        torch = _torch()
        nrm = x.norm(dim=-1, keepdim=True)
        xh = x / torch.where(nrm == 0, torch.ones_like(nrm), nrm)
        dist = ((xh.unsqueeze(-2) - self.anchors[:, None]) ** 2).sum(-1)      # [B, H, S, m]
        feat = torch.exp(-dist * self.gamma[:, None, None]) - self.mean[:, None]
        p = torch.einsum("bhsm,hkm->bhsk", feat, self.proj)
        hard = torch.where(p >= 0, 1.0, -1.0).to(p.dtype)
        if exact:
            return hard
        soft = torch.tanh(p)
        return hard + soft - soft.detach()

    def probs(self, q: Any, k: Any, bias: Any, bits: int, form: str, exact: bool) -> Any:
        """The attention probabilities [B, H, S, T] of the codes of ``q`` and keys ``k``."""
        torch = _torch()
        s = self.codes(q, exact) @ self.codes(k, exact).transpose(-1, -2)
        bias = _pad_bias(bias)
        if form == "quadratic":
            logits = torch.exp(self.log_temperature)[:, None, None] * s
            return torch.softmax(logits if bias is None else logits + bias, dim=-1)
        kernel = s + (bits + 1)
        if bias is not None:
            if bias.shape[-2] != 1:
                raise InputError("a bias per query (e.g. causal) has no linear form: "
                                 "use form='quadratic'")
            kernel = kernel * torch.exp(bias)
        return kernel / kernel.sum(-1, keepdim=True)


def _attention_funcs() -> dict[str, set]:
    torch = _torch()
    F = torch.nn.functional
    T = torch.Tensor
    return {"matmul": {torch.matmul, T.matmul, T.__matmul__},
            "mul": {torch.mul, T.mul, T.__mul__, T.__rmul__},
            "div": {torch.div, T.div, T.__truediv__},
            "add": {torch.add, T.add, T.__add__, T.__radd__},
            "softmax": {torch.softmax, T.softmax, F.softmax},
            "sdpa": {F.scaled_dot_product_attention},
            "mha": {F.multi_head_attention_forward}}


def _positive_scalar(v: Any) -> bool:
    torch = _torch()
    if isinstance(v, (int, float)):
        return v > 0
    return isinstance(v, torch.Tensor) and v.numel() == 1 and bool(v.detach().reshape(()) > 0)


class _AttentionMode:
    """A torch function mode finding the attention sites of one forward pass (module
    docstring), in call order (site ``i`` of a forward pass is call ``i`` modulo the number of
    hashes, so one mode may see several passes). ``collect``: records each site's queries, keys, probabilities
    and bias (numpy, in :attr:`data`) and changes nothing; ``hash``: each site's probabilities
    come from its binary codes (``hashes[i]``; ``exact`` codes without the tanh gradient when
    autograd is off)."""

    def __init__(self, mode: str, hashes: list[_TorchHash] | None, bits: int, form: str) -> None:
        from torch.overrides import TorchFunctionMode

        outer = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (),
                                   kwargs: Any = None) -> Any:
                return outer.dispatch(self, func, args, kwargs or {})

        self.mode, self.hashes, self.bits, self.form = mode, hashes, bits, form
        self.funcs = _attention_funcs()
        self.origin: dict[int, tuple] = {}            # id(tensor) -> (tensor, q, kt, bias)
        self.sites = 0
        self.data: list[SiteData] = []
        self._mode = Mode()

    def __enter__(self) -> _AttentionMode:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self.origin.clear()

    def _tracked(self, t: Any) -> tuple | None:
        got = self.origin.get(id(t))
        return got if got is not None and got[0] is t else None

    def dispatch(self, mode: Any, func: Any, args: tuple, kwargs: dict) -> Any:
        f = self.funcs
        if func in f["mha"]:
            return self._mha(func, args, kwargs)
        if func in f["sdpa"]:
            return self._sdpa(*args, **kwargs)
        if func in f["softmax"]:
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            site = self._tracked(x)
            if site is not None and dim in (-1, x.dim() - 1):
                return self._site(site[1], site[2].transpose(-1, -2), site[3],
                                  lambda: func(*args, **kwargs))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in f["matmul"] and len(args) == 2:
            a, b = args
            if getattr(a, "dim", lambda: 0)() == 4 and getattr(b, "dim", lambda: 0)() == 4:
                self.origin[id(out)] = (out, a, b, None)
        elif func in f["mul"] or func in f["div"]:
            for i in ((0, 1) if func in f["mul"] else (0,)):
                site = self._tracked(args[i])
                if site is not None and site[3] is None and _positive_scalar(args[1 - i]):
                    self.origin[id(out)] = (out, *site[1:])
        elif func in f["add"] and len(args) == 2:
            for i in (0, 1):
                site = self._tracked(args[i])
                other = args[1 - i]
                if site is not None and site[3] is None and hasattr(other, "dim"):
                    self.origin[id(out)] = (out, site[1], site[2], other)
                    break
        return out

    def _mha(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """``multi_head_attention_forward`` without weights: its scaled_dot_product_attention
        call (a module global of torch.nn.functional, looked up when called) is the site."""
        import torch.nn.functional as F

        sdpa = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self._sdpa
        try:
            return func(*args, **{**kwargs, "need_weights": False})
        finally:
            F.scaled_dot_product_attention = sdpa

    def _sdpa(self, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Any = None, **kw: Any) -> Any:
        torch = _torch()
        if kw.get("enable_gqa") or q.dim() != 4:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kw)
        s, t = q.shape[-2], k.shape[-2]
        bias = None
        if is_causal:
            keep = torch.ones(s, t, dtype=torch.bool, device=q.device).tril()
            attn_mask = keep if attn_mask is None else attn_mask
        if attn_mask is not None:
            bias = (torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
                    .masked_fill(~attn_mask, _BIAS_FLOOR) if attn_mask.dtype == torch.bool
                    else attn_mask)
        sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])

        def exact() -> Any:
            logits = (q @ k.transpose(-1, -2)) * sc
            return torch.softmax(logits if bias is None else logits + bias, dim=-1)

        p = self._site(q, k, bias, exact)
        if dropout_p > 0 and torch.is_grad_enabled():
            p = torch.nn.functional.dropout(p, dropout_p)
        return p @ v

    def _site(self, q: Any, k: Any, bias: Any, exact: Callable[[], Any]) -> Any:
        torch = _torch()
        i = self.sites
        self.sites += 1
        self.origin.clear()                     # one chain at a time: drop its tensors
        if self.mode == "collect":
            probs = exact()
            while len(self.data) <= i:
                self.data.append(SiteData([], [], [], []))
            np32 = lambda t: t.detach().to(torch.float32).cpu().numpy()        # noqa: E731
            d = self.data[i]
            d.q.append(np32(q))
            d.k.append(np32(k))
            d.probs.append(np32(probs))
            d.bias.append(None if bias is None else np32(_pad_bias(bias)))
            return probs
        if not self.hashes:
            raise InputError("no hashes to run the attention on")
        i %= len(self.hashes)                   # every forward pass runs the sites in order
        return self.hashes[i].probs(q, k, bias, self.bits, self.form,
                                    exact=not torch.is_grad_enabled())


def _starting_fit(model: Any, calib: Any, bits: int, form: str, seed: int) -> FinetunedHashes:
    """The compiler pass's post-training fit of every site, on ``calib``'s attention."""
    torch = _torch()

    was_training = model.training
    model.eval()
    mode = _AttentionMode("collect", None, bits, form)
    with torch.no_grad(), mode:
        model(calib)
    model.train(was_training)
    if not mode.data:
        raise InputError("finetune found no attention in the model (softmax(Q @ Kᵀ ...) on "
                         "[B, H, S, D] tensors, scaled_dot_product_attention or "
                         "nn.MultiheadAttention)")
    with one_blas_thread():
        fits = fit_sites(mode.data, [False] * len(mode.data), bits, seed=seed)
        sites = tuple(SiteHash(params, temperatures(d, params, bits, False)
                               if form == "quadratic" else None)
                      for d, (params, _auc) in zip(mode.data, fits))
    return FinetunedHashes(bits, form, sites)


def _torch_hashes(hashes: FinetunedHashes, like: Any) -> list[_TorchHash]:
    return [_TorchHash(s, like) for s in hashes.sites]


def _export_hashes(hashes: list[_TorchHash], bits: int, form: str) -> FinetunedHashes:
    def np32(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy(), np.float32)

    sites = tuple(SiteHash(HashParams(np32(h.anchors), np32(h.gamma), np32(h.mean),
                                      np32(h.proj)),
                           None if h.log_temperature is None
                           else np32(h.log_temperature.exp()))
                  for h in hashes)
    return FinetunedHashes(bits, form, sites)


def check_carried(hashes: FinetunedHashes, bits: int | None, form: str | None,
                  site_count: int) -> tuple[int, str]:
    """The bits and form to compile carried ``hashes`` with: the options when given (they must
    be the hashes' own), else the hashes'. Raises InputError on a mismatch."""
    if bits is not None and int(bits) != hashes.bits:
        raise InputError(f"the model carries fine-tuned {hashes.bits}-bit hashes: drop "
                         f"--hash-bits {bits} or give --hash-bits {hashes.bits}")
    if form is not None and form != hashes.form:
        raise InputError(f"the model's hashes were fine-tuned for the {hashes.form} form: drop "
                         f"--attention-form {form} or fine-tune for it")
    if site_count != len(hashes.sites):
        raise InputError(f"the model carries fine-tuned hashes for {len(hashes.sites)} "
                         f"attention sites, but --binary-attention finds {site_count} in its "
                         f"graph")
    return hashes.bits, hashes.form

