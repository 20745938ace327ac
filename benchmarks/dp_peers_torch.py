"""PyTorch twins of our networks for ``benchmarks/dp_peers.py``: the same weights, the same function.

Imported only where torch is installed (it is never a dependency of the
library). Two kinds of twin, each a :class:`Twin`: a fresh ``nn.Module``
holding a copy of our weights, and the map from its gradients back to our
params' nesting, so that every implementation's clipped gradient is compared
with the JAX reference leaf by leaf.

- :func:`cnn_twin`: a flat ``layers.Sequential`` of Reshape, Conv1D, Conv2D,
  MaxPool1D/2D, relu Activation, Flatten and Dense, translated layer by layer.
  Ours computes in channels-last layouts (N, W, C) and (N, H, W, C), PyTorch's
  convolutions in channels-first (N, C, W) and (N, C, H, W): a permutation is
  inserted wherever the layout changes (before a convolution or pooling, and
  back before a Flatten, Reshape or Dense, so Flatten reads the values in our
  order and Dense's weight needs no permutation). Kernels: ours (K..., c_in,
  c_out), PyTorch's (c_out, c_in, K...); Dense W (in, out), ``nn.Linear``'s
  (out, in). Paddings are our resolved (lo, hi) pairs, which must be
  symmetric (PyTorch pads both sides alike).
- :func:`gpt_twin`: nanoGPT's ``model.py`` (imported from its folder), with
  two changes made by the subclass :class:`UntiedGPT` and nowhere else: the
  head is untied (``lm_head.weight`` its own Parameter, initialised from our
  head's weights; ours trains the head as its own matrix, and Opacus's ghost
  clipping refuses a tied head), and the position indices are expanded to
  (B, T) before the position embedding (nanoGPT passes ``arange(T)`` of shape
  (T,), which Opacus's per-sample embedding hooks read as a batch of T; its
  ghost mode does not run at all without the expansion, nor with a
  non-contiguous one: its embedding norm calls ``.view`` on the indices). ``forward`` returns
  the logits (B, T, V) of every position; the loss is taken outside, as for
  the CNNs. Weights go in under nanoGPT's names
  (``gpt_bench.state_dict``), gradients come back through
  ``models.gpt_params_from_nanogpt``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import torch

from functional_bp import layers as fl
from functional_bp import models
from functional_bp.layers.base import abstract_init
from functional_bp.layers.conv import resolve_padding


@dataclass
class Twin:
    """``make()``: a fresh module with our weights; ``grads(module)``: its .grad as our params."""

    make: Callable[[], torch.nn.Module]
    grads: Callable[[torch.nn.Module], list]
    sequence: bool  # logits (B, T, V) and labels (B, T): the loss is the mean over T per example


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))


class _Permute(torch.nn.Module):
    """A permutation of the axes into a contiguous tensor.

    Contiguous on purpose: given the channels-last strides a bare
    ``permute`` leaves (PyTorch's convolutions then keep that memory format),
    Opacus 1.6's per-sample convolution gradients came out wrong in this
    benchmark (relative error 1.0 on the second and third kernels of the 2-D
    CNN with per-sample hooks, every clip factor off with ghost clipping)
    while plain PyTorch's gradient agreed with ours.
    """

    def __init__(self, *order):
        super().__init__()
        self.order = order

    def forward(self, x):
        return x.permute(*self.order).contiguous()


class _Reshape(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def _unwrap(module):
    """The plain module under Opacus's wrappers (GradSampleModule keeps it as ``_module``)."""
    return getattr(module, "_module", module)


def cnn_twin(net, params, input_shape) -> Twin:
    """A ``torch.nn.Sequential`` computing ``net``'s function with ``params``, input in our layout."""
    plan = []  # (kind, arguments, our params index or None)
    shape = tuple(input_shape)
    for i, layer in enumerate(net.layers):
        _, out = abstract_init(layer, shape)
        plan.append((layer, shape, out, i))
        shape = tuple(out)

    def make():
        mods, where, channels_first = [], {}, False
        for layer, shape_in, shape_out, i in plan:
            spatial = len(shape_in) - 1
            to_first = (0, spatial + 1, *range(1, spatial + 1))
            to_last = (0, *range(2, spatial + 2), 1)
            if isinstance(layer, (fl.Conv1D, fl.Conv2D, fl.MaxPool1D, fl.MaxPool2D)):
                if not channels_first:
                    mods.append(_Permute(*to_first))
                    channels_first = True
            elif channels_first:
                mods.append(_Permute(*(0, *range(2, len(shape_in) + 1), 1)))
                channels_first = False
            if isinstance(layer, (fl.Conv1D, fl.Conv2D)):
                k, s, d = _ksd(layer)
                pads = resolve_padding(layer.padding, shape_in[:-1], k, s, d)
                if any(lo != hi for lo, hi in pads):
                    raise ValueError(f"cnn_twin: layer {i} ({layer!r}) pads {pads}: PyTorch "
                                     "pads both sides alike; use symmetric padding")
                conv = (torch.nn.Conv1d if spatial == 1 else torch.nn.Conv2d)(
                    shape_in[-1], layer.features, k, stride=s, dilation=d,
                    padding=tuple(lo for lo, _ in pads))
                W = np.asarray(params[i]["W"])  # (K..., c_in, c_out) -> (c_out, c_in, K...)
                with torch.no_grad():
                    conv.weight.copy_(_t(np.transpose(W, (W.ndim - 1, W.ndim - 2,
                                                          *range(W.ndim - 2)))))
                    conv.bias.copy_(_t(params[i]["b"]))
                where[i] = len(mods)
                mods.append(conv)
            elif isinstance(layer, (fl.MaxPool1D, fl.MaxPool2D)):
                w = tuple(np.broadcast_to(layer.window, (spatial,)))
                st = tuple(np.broadcast_to(layer.stride if layer.stride is not None
                                           else layer.window, (spatial,)))
                if layer.padding != "VALID":
                    raise ValueError(f"cnn_twin: layer {i} ({layer!r}): only VALID pooling")
                mods.append((torch.nn.MaxPool1d if spatial == 1 else torch.nn.MaxPool2d)(
                    tuple(int(v) for v in w), tuple(int(v) for v in st)))
            elif isinstance(layer, fl.Activation):
                if layer.fn.name != "relu":
                    raise ValueError(f"cnn_twin: layer {i}: activation {layer.fn.name!r} "
                                     "not translated (relu only)")
                mods.append(torch.nn.ReLU())
            elif isinstance(layer, (fl.Flatten, fl.Reshape)):
                mods.append(_Reshape(shape_out))  # channels-last order, as ours
            elif isinstance(layer, fl.Dense):
                lin = torch.nn.Linear(shape_in[-1], layer.features, bias=layer.bias)
                with torch.no_grad():
                    lin.weight.copy_(_t(np.asarray(params[i]["W"]).T))
                    if layer.bias:
                        lin.bias.copy_(_t(params[i]["b"]))
                where[i] = len(mods)
                mods.append(lin)
            else:
                raise ValueError(f"cnn_twin: layer {i} ({type(layer).__name__}) has no "
                                 "PyTorch translation here")
        model = torch.nn.Sequential(*mods)
        model._ours_where = where
        return model

    def grads(module):
        model = _unwrap(module)
        out = []
        for i, p in enumerate(params):
            if not p:
                out.append({})
                continue
            mod = model[model._ours_where[i]]
            g = mod.weight.grad.detach().numpy()
            W = (np.transpose(g, (*range(2, g.ndim), 1, 0)) if g.ndim > 2 else g.T)
            leaf = {"W": W}
            if "b" in p:
                leaf["b"] = mod.bias.grad.detach().numpy()
            out.append(leaf)
        return out

    return Twin(make, grads, sequence=False)


def _ksd(layer):
    n = 1 if isinstance(layer, fl.Conv1D) else 2
    as_t = lambda v: tuple(int(u) for u in np.broadcast_to(v, (n,)))  # noqa: E731
    return as_t(layer.kernel_size), as_t(layer.stride), as_t(layer.dilation)


def nanogpt_module(nanogpt: Path):
    """nanoGPT's ``model`` module, imported from its folder (its own file, unchanged)."""
    nanogpt = str(Path(nanogpt).resolve())
    if not (Path(nanogpt) / "model.py").is_file():
        raise SystemExit(f"--nanogpt {nanogpt}: no model.py there (nanoGPT's folder expected)")
    if nanogpt not in sys.path:
        sys.path.insert(0, nanogpt)
    return importlib.import_module("model")


def gpt_twin(nanogpt: Path, net, params, shape: dict) -> Twin:
    """nanoGPT's GPT (untied head, positions (B, T)) with our weights, and its grads as ours."""
    from gpt_bench import state_dict  # our params under nanoGPT's names

    mod = nanogpt_module(nanogpt)

    class UntiedGPT(mod.GPT):
        """nanoGPT's GPT with its own head matrix and position indices of shape (B, T)."""

        def __init__(self, config):
            super().__init__(config)
            self.lm_head.weight = torch.nn.Parameter(self.lm_head.weight.detach().clone())

        def forward(self, idx):
            b, t = idx.size()
            # a contiguous (B, T) copy: Opacus's ghost norm of an Embedding views its indices
            pos = torch.arange(0, t, dtype=torch.long, device=idx.device).expand(b, t).contiguous()
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
            for block in self.transformer.h:
                x = block(x)
            return self.lm_head(self.transformer.ln_f(x))

    sd = {k: torch.from_numpy(np.ascontiguousarray(v))
          for k, v in state_dict(params, shape["n_layer"]).items()}
    config = mod.GPTConfig(block_size=shape["T"], vocab_size=shape["V"],
                           n_layer=shape["n_layer"], n_head=shape["n_head"],
                           n_embd=shape["n_embd"], dropout=0.0, bias=False)

    def make():
        model = UntiedGPT(config)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith(".attn.bias")]
        if missing or unexpected:
            raise RuntimeError(f"gpt_twin: weights do not fit nanoGPT's model: missing "
                               f"{missing}, unexpected {unexpected}")
        if model.lm_head.weight is model.transformer.wte.weight:
            raise RuntimeError("gpt_twin: the head is still tied")
        return model.train()

    def grads(module):
        model = _unwrap(module)
        g = {n: p.grad.detach().numpy() for n, p in model.named_parameters()}
        return jax.tree.map(np.asarray, models.gpt_params_from_nanogpt(g, net))

    return Twin(make, grads, sequence=True)


def stock_ghost_check(nanogpt: Path, params, shape: dict, x, y, clip_norm: float) -> dict:
    """What Opacus's ghost clipping does with nanoGPT's model as it is, and with the head untied.

    One forward and backward of ``GradSampleModuleFastGradientClipping`` on
    (a) nanoGPT's ``GPT`` unchanged (tied head, positions of shape (T,)) and
    (b) the same with only the head untied; each answers "ran" or the error
    it stopped with (type and first line). The benchmark itself runs
    :class:`UntiedGPT` of :func:`gpt_twin`, which changes both.
    """
    from gpt_bench import state_dict
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    mod = nanogpt_module(nanogpt)
    config = mod.GPTConfig(block_size=shape["T"], vocab_size=shape["V"],
                           n_layer=shape["n_layer"], n_head=shape["n_head"],
                           n_embd=shape["n_embd"], dropout=0.0, bias=False)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v))
          for k, v in state_dict(params, shape["n_layer"]).items()}
    tx = torch.from_numpy(np.array(x, np.int64))
    ty = torch.from_numpy(np.array(y, np.int64))
    out = {}
    for label, untie in (("nanoGPT's GPT as it is (tied head, positions (T,))", False),
                         ("head untied, positions (T,)", True)):
        try:
            model = mod.GPT(config)
            if untie:
                model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
                model.load_state_dict(sd, strict=False)
            else:
                model.load_state_dict({k: v for k, v in sd.items() if k != "lm_head.weight"},
                                      strict=False)
            gsm = GradSampleModuleFastGradientClipping(
                model, max_grad_norm=clip_norm, use_ghost_clipping=True, loss_reduction="mean")
            opt = DPOptimizerFastGradientClipping(
                torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0,
                max_grad_norm=clip_norm, expected_batch_size=tx.shape[0], loss_reduction="mean")
            loss = DPLossFastGradientClipping(gsm, opt, torch.nn.CrossEntropyLoss(),
                                              loss_reduction="mean")
            logits = gsm(tx, ty)[0]
            loss(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1),
                 shape=tuple(ty.shape)).backward()
            opt.pre_step()
            out[label] = "ran"
        except Exception as e:  # noqa: BLE001 - the answer is the error
            first = (str(e).strip().splitlines() or [""])[0][:200]
            out[label] = f"stopped: {type(e).__name__}: {first}"
    return out


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """AdamW's parameter groups by nanoGPT's rule: decay on tensors with two or more axes."""
    ps = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]


def peak_allocated(fn) -> float:
    """Peak bytes allocated through PyTorch's CPU allocator during ``fn()``, net of before.

    From the profiler's allocation events (``profile_memory=True``), summed
    in time order: the high-water mark of what the call allocated and had not
    yet freed, including what it leaves allocated (gradients, per-sample
    gradients). Not seen: memory obtained outside PyTorch's allocator (the
    BLAS and oneDNN libraries' scratch space, Python objects). NaN if this
    PyTorch does not expose the events.
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        deltas = [n for _, n in sorted((e.start_ns(), e.nbytes()) for e in events)]
    except (AttributeError, RuntimeError):
        return float("nan")
    cur = peak = 0
    for d in deltas:
        cur += d
        peak = max(peak, cur)
    return float(peak) if deltas else float("nan")
