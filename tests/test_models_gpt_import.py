"""models.gpt_params_from_nanogpt: a nanoGPT state dict onto the params of models.gpt.

The reference is nanoGPT's ``GPT.forward`` (dropout 0) written out in NumPy
from its ``model.py``, line by line, on nanoGPT's own names and (out, in)
Linear layout: the imported params must give its logits, in float64 to
1e-10. Shapes alone would not catch a forgotten transpose of the square
``c_proj`` weight; the logits do (the wrong twin below).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from functional_bp import models

ERF = np.vectorize(math.erf)


def fake_state_dict(V, block_size, n_layer, C, bias=True, seed=0, mask=True, tied=True):
    """Random weights under nanoGPT's names and shapes (biases and LayerNorms away from 0 and 1)."""
    rng = np.random.default_rng(seed)
    sd = {"transformer.wte.weight": rng.normal(0, 0.5, (V, C)),
          "transformer.wpe.weight": rng.normal(0, 0.5, (block_size, C))}
    linears = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C),
               "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    lns = [f"transformer.h.{i}.{ln}" for i in range(n_layer) for ln in ("ln_1", "ln_2")]
    for name in lns + ["transformer.ln_f"]:
        sd[f"{name}.weight"] = 1 + rng.normal(0, 0.3, C)
        if bias:
            sd[f"{name}.bias"] = rng.normal(0, 0.3, C)
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        for name, shape in linears.items():
            sd[f"{h}.{name}.weight"] = rng.normal(0, 0.5, shape)
            if bias:
                sd[f"{h}.{name}.bias"] = rng.normal(0, 0.3, shape[0])
        if mask:  # nanoGPT's causal-mask buffer without flash attention
            sd[f"{h}.attn.bias"] = np.tril(np.ones((block_size, block_size)))[None, None]
    sd["lm_head.weight"] = (sd["transformer.wte.weight"] if tied
                            else rng.normal(0, 0.5, (V, C)))
    return sd


def nanogpt_forward(sd, idx, n_layer, n_head):
    """nanoGPT's GPT.forward in NumPy (model.py, dropout 0): logits (B, T, V)."""
    def layer_norm(x, name):  # F.layer_norm(x, weight.shape, weight, bias, 1e-5)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return x * sd[f"{name}.weight"] + sd.get(f"{name}.bias", 0.0)

    def linear(x, name):  # nn.Linear: x @ weight.T + bias
        return x @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0.0)

    B, T = idx.shape
    C = sd["transformer.wte.weight"].shape[1]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][np.arange(T)]
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        q, k, v = np.split(linear(layer_norm(x, f"{h}.ln_1"), f"{h}.attn.c_attn"), 3, axis=2)
        k = k.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
        q = q.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
        att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(k.shape[-1]))
        att = np.where(np.tril(np.ones((T, T))) == 0, -np.inf, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att = att / att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + linear(y, f"{h}.attn.c_proj")
        u = linear(layer_norm(x, f"{h}.ln_2"), f"{h}.mlp.c_fc")
        x = x + linear(0.5 * u * (1.0 + ERF(u / math.sqrt(2.0))), f"{h}.mlp.c_proj")  # nn.GELU()
    x = layer_norm(x, "transformer.ln_f")
    return x @ sd["lm_head.weight"].T


def logits_error(params, net, sd, idx, n_layer, n_head):
    ours = np.asarray(net.forward(params, jnp.asarray(idx))[0])
    theirs = nanogpt_forward(sd, idx, n_layer, n_head)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


CONFIGS = [  # (V, block_size, n_layer, n_head, C, bias, T)
    (7, 6, 2, 2, 6, True, 6),
    (5, 8, 1, 4, 8, False, 5),
    (3, 4, 3, 1, 3, True, 1),
]


@pytest.mark.parametrize("V,block_size,n_layer,n_head,C,bias,T", CONFIGS)
def test_imported_params_give_nanogpts_logits(V, block_size, n_layer, n_head, C, bias, T):
    sd = fake_state_dict(V, block_size, n_layer, C, bias=bias)
    net = models.gpt(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=n_head,
                     n_embd=C, bias=bias)
    idx = np.random.default_rng(1).integers(0, V, (3, T))
    with jax.enable_x64(True):
        params = models.gpt_params_from_nanogpt(sd, net, dtype=jnp.float64)
        expected = jax.eval_shape(lambda k: net.init(k, (block_size,), jnp.float64),
                                  jax.random.key(0))
        assert (jax.tree.map(lambda a: (a.shape, a.dtype), params)
                == jax.tree.map(lambda s: (s.shape, s.dtype), expected))
        err = logits_error(params, net, sd, idx, n_layer, n_head)
    assert err < 1e-10, err


def test_forgotten_transpose_of_the_square_c_proj_is_caught():
    # The wrong twin: c_proj's (C, C) weight copied without its transpose has the right shape.
    V, block_size, n_layer, n_head, C = 7, 6, 1, 2, 6
    sd = fake_state_dict(V, block_size, n_layer, C)
    net = models.gpt(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=C)
    idx = np.random.default_rng(1).integers(0, V, (2, block_size))
    with jax.enable_x64(True):
        params = models.gpt_params_from_nanogpt(sd, net, dtype=jnp.float64)
        assert logits_error(params, net, sd, idx, n_layer, n_head) < 1e-10
        params[3][3]["W"] = params[3][3]["W"].T
        assert logits_error(params, net, sd, idx, n_layer, n_head) > 1e-3


def test_float32_compiled_prefix_and_untied_head():
    V, block_size, n_layer, n_head, C = 5, 4, 1, 2, 4
    sd = fake_state_dict(V, block_size, n_layer, C, mask=False, tied=False)
    sd = {f"_orig_mod.{k}": v.astype(np.float32) for k, v in sd.items()}  # torch.compile's names
    net = models.gpt(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=C)
    params = models.gpt_params_from_nanogpt(sd, net)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    plain = {k.removeprefix("_orig_mod."): v.astype(np.float64) for k, v in sd.items()}
    np.testing.assert_array_equal(params[-1]["W"], plain["lm_head.weight"].T.astype(np.float32))
    idx = np.random.default_rng(2).integers(0, V, (2, block_size))
    assert logits_error(params, net, plain, idx, n_layer, n_head) < 2e-5


def _net(**kw):
    return models.gpt(**{**dict(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4), **kw})


@pytest.mark.parametrize("sd_kw,net_kw,match", [
    (dict(bias=False), {}, r"no biases .*bias=False"),
    ({}, dict(bias=False), r"has biases: build models.gpt\(\.\.\., bias=True\)"),
    (dict(n_layer=2), {}, r"2 blocks, the network n_layer=1"),
    (dict(V=6), {}, r"transformer.wte.weight has shape \(6, 4\) but the network needs \(5, 4\)"),
    (dict(block_size=3), {}, r"transformer.wpe.weight has shape \(3, 4\) .* needs \(4, 4\)"),
])
def test_a_state_dict_that_does_not_fit_is_refused_with_the_fix(sd_kw, net_kw, match):
    args = {**dict(V=5, block_size=4, n_layer=1, C=4), **sd_kw}
    sd = fake_state_dict(args.pop("V"), args.pop("block_size"), args.pop("n_layer"),
                         args.pop("C"), **args)
    with pytest.raises(ValueError, match=match):
        models.gpt_params_from_nanogpt(sd, _net(**net_kw))


def test_bad_arguments_are_refused():
    sd = fake_state_dict(5, 4, 1, 4)
    with pytest.raises(ValueError, match=r"laid out as models.gpt builds it"):
        models.gpt_params_from_nanogpt(sd, models.mlp(5))
    with pytest.raises(ValueError, match=r"state_dict\): a mapping"):
        models.gpt_params_from_nanogpt(list(sd.values()), _net())
    bad = dict(sd, **{"transformer.ln_f.weight": np.array(["a"] * 4)})
    with pytest.raises(ValueError, match=r"transformer.ln_f.weight holds <U1 values"):
        models.gpt_params_from_nanogpt(bad, _net())
    extra = dict(sd, **{"transformer.h.0.attn.extra": np.zeros(4)})
    with pytest.raises(ValueError, match=r"unexpected \['transformer.h.0.attn.extra'\]"):
        models.gpt_params_from_nanogpt(extra, _net())
