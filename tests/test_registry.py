"""The registry of layer types, the weight-decay rule layers declare, and the generic test strategies.

- ``from_config`` finds types in the explicit registry only: a user's class
  named ``Dense`` does not replace the built-in, private bases are not types,
  a user's type is registered explicitly and may not shadow a built-in
  (issue 19), and old network descriptions still load;
- the text form's words and options come from the registry and the
  dataclass fields, so a registered layer needs no parser code;
- weight decay applies to the params a layer declares in ``decayed_params``,
  whatever they are called;
- docs/layers.md's table of words is the one the registry renders;
- tests/network_strategies.py draws and checks a layer whose parameter is
  not called W with no table keyed by layer type (the fill by shape, the
  float64 truth's scales from the layer's own backward), and its wrong twin
  is caught.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp import models
from functional_bp.layers.base import sum_rows
from functional_bp.network import decay_mask
from network_strategies import _abs_trace, compare_backprop, compare_per_example, make_net_case

ROOT = Path(__file__).resolve().parents[1]


# --- a user's layer type with a parameter "s" (y = x * s / rms(x)) ----------------------
@dataclasses.dataclass(frozen=True)
class UserRMSNorm(fl.Layer):
    """y = s ⊙ x / sqrt(mean(x^2) + eps) over the last axis."""

    eps: float = 1e-6
    decayed_params = ("s",)  # decayed, to show the rule follows the declaration

    def init(self, key, input_shape, dtype=jnp.float32):
        return {"s": jnp.ones(input_shape[-1:], dtype)}, tuple(input_shape)

    def forward(self, params, x, key=None):
        r = 1 / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        xhat = x * r
        return params["s"].reshape((1,) * (x.ndim - 1) + (-1,)) * xhat, (xhat, r)

    def backward(self, params, cache, dy):
        xhat, r = cache
        d = xhat.shape[-1]
        h = dy * params["s"].reshape((1,) * (dy.ndim - 1) + (-1,))
        dx = r * (h - xhat * jnp.mean(h * xhat, axis=-1, keepdims=True))
        return {"s": jnp.sum((dy * xhat).reshape(-1, d), axis=0)}, dx

    def sq_norms(self, params, cache, dy):
        xhat, _ = cache
        m, d = dy.shape[0], dy.shape[-1]
        return sum_rows(jnp.sum((dy * xhat).reshape(m, -1, d), axis=1))


@dataclasses.dataclass(frozen=True)
class UserRMSNormWrong(UserRMSNorm):
    """The wrong twin: the backward forgets the path through the rms (dx = r h)."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        xhat, r = cache
        return grads, r * dy * params["s"].reshape((1,) * (dy.ndim - 1) + (-1,))


fl.register(UserRMSNorm, "user_rmsnorm")
fl.register(UserRMSNormWrong, "user_rmsnorm_wrong")


# --- from_config: the explicit registry --------------------------------------------------
def test_a_users_class_named_dense_does_not_replace_the_builtin():
    @dataclasses.dataclass(frozen=True)
    class Dense(fl.Layer):  # noqa: F811  (a user's own class of a built-in's name)
        features: int = 1

    layer = fl.from_config({"type": "Dense", "features": 3, "scale": 2.0})
    assert type(layer) is fl.Dense and layer == fl.Dense(3)
    with pytest.raises(ValueError, match=r"register\(Dense\): Dense is a built-in layer type"):
        fl.register(Dense, "mydense")


@pytest.mark.parametrize("name", ["_Conv", "_Pool", "_MaxPool", "Layer", "NoSuchLayer", None])
def test_private_bases_and_unknown_names_are_not_types(name):
    with pytest.raises(ValueError, match=r"unknown layer type .*must be registered first"):
        fl.from_config({"type": name, "features": 3, "kernel_size": 2})


def test_old_network_descriptions_still_load():
    # as checkpoints written before the registry recorded them
    old = {"type": "Sequential", "layers": [
        {"type": "Reshape", "shape": [-1, 1]},
        {"type": "Conv1D", "features": 4, "kernel_size": 3, "stride": 2, "padding": [[1, 1]],
         "dilation": 1, "scale": 2.0},
        {"type": "Activation", "fn": "relu"},
        {"type": "MaxPool1D", "window": 2, "stride": None, "padding": "VALID"},
        {"type": "Flatten"},
        {"type": "Residual", "layers": [{"type": "LayerNorm", "eps": 1e-05},
                                        {"type": "Dense", "features": 40, "scale": 2.0}]},
        {"type": "Dropout", "rate": 0.25},
        {"type": "Dense", "features": 3, "scale": 2.0}]}
    net = fl.from_config(old)
    assert net == fl.Sequential(
        fl.Reshape((-1, 1)), fl.Conv1D(4, 3, stride=2, padding=1), fl.Activation("relu"),
        fl.MaxPool1D(2), fl.Flatten(), fl.Residual(fl.LayerNorm(), fl.Dense(40)),
        fl.Dropout(0.25), fl.Dense(3))
    assert net.output_shape((40,)) == (3,)


def test_a_registered_user_layer_round_trips_and_builds_from_text():
    net = models.build("dense 8, user_rmsnorm eps=1e-3, dense 2", 2)
    assert net.layers[1] == UserRMSNorm(eps=1e-3)
    assert fl.from_config(json.loads(json.dumps(fl.to_config(net)))) == net
    assert "user_rmsnorm" in fl.layer_words() and fl.layer_type("UserRMSNorm") is UserRMSNorm
    with pytest.raises(ValueError, match=r"'user_rmsnorm 1 eps=2': eps is given twice"):
        models.build("user_rmsnorm 1 eps=2", 1)
    with pytest.raises(ValueError, match=r"'user_rmsnorm eps=tiny': eps: a number; got 'tiny'"):
        models.build("user_rmsnorm eps=tiny", 1)


def test_an_unregistered_layer_cannot_be_written():
    @dataclasses.dataclass(frozen=True)
    class Unlisted(fl.Layer):
        pass

    with pytest.raises(ValueError, match=r"Unlisted is not registered.*functional_bp\.layers\."
                                         r"register\(Unlisted, 'unlisted'\)"):
        fl.to_config(fl.Sequential(fl.Dense(2), Unlisted()))


@pytest.mark.parametrize("words, error, message", [
    (("dense",), ValueError, r"'dense' is the word of the built-in Dense"),
    (("res",), ValueError, r"'res' is the word of the built-in Residual"),
    (("relu",), ValueError, r"'relu' is the word of the built-in Activation"),
    (("user_rmsnorm",), ValueError, r"'user_rmsnorm' is taken by UserRMSNorm"),
    (("Bad Word",), ValueError, r"lowercase letters"),
    ((3,), TypeError, r"words are strings"),
])
def test_register_refuses_what_would_shadow_or_break_the_text_form(words, error, message):
    @dataclasses.dataclass(frozen=True)
    class Other(fl.Layer):
        pass

    with pytest.raises(error, match=message):
        fl.register(Other, *words)


def test_register_takes_layer_dataclasses_only_and_a_redefinition_replaces():
    with pytest.raises(TypeError, match=r"frozen dataclass subclass of"):
        fl.register(int, "integer")

    def define():
        @dataclasses.dataclass(frozen=True)
        class Redefined(fl.Layer):
            k: int = 1
        return Redefined

    first, second = define(), define()  # a notebook cell run twice
    fl.register(first, "redefined")
    fl.register(second, "redefined")
    assert type(models.build("redefined 2", 1).layers[0]) is second
    assert fl.layer_type("Redefined") is second


def test_every_exported_layer_type_is_registered():
    exported = [getattr(fl, n) for n in fl.__all__]
    types = [c for c in exported if isinstance(c, type) and issubclass(c, fl.Layer)
             and c is not fl.Layer]
    assert types and all(fl.layer_type(c.__name__) is c for c in types)
    assert set(fl.layer_types()) >= {c.__name__ for c in types}


def test_the_docs_table_is_the_registrys():
    page = (ROOT / "docs" / "layers.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- words-table:begin -->\n(.*?)\n<!-- words-table:end -->", page, re.S)
    assert block, "docs/layers.md has no words-table block"
    assert block.group(1) == fl.words_table(), (
        "docs/layers.md's table of words is not the registry's: paste the output of\n"
        "python -c 'from functional_bp import layers; print(layers.words_table())'")


# --- weight decay: what each layer declares -------------------------------------------
def test_decay_follows_the_declaration_not_the_name():
    @dataclasses.dataclass(frozen=True)
    class NamedW(fl.Layer):  # a parameter called W that the layer does not declare
        def init(self, key, input_shape, dtype=jnp.float32):
            return {"W": jnp.full(input_shape[-1:], 0.5, dtype)}, tuple(input_shape)

        def forward(self, params, x, key=None):
            return x * params["W"][None], x

        def backward(self, params, cache, dy):
            return {"W": jnp.sum(dy * cache, axis=0)}, dy * params["W"][None]

    net = fl.Sequential(fl.Dense(4), UserRMSNorm(), NamedW(), fl.LayerNorm(), fl.Dense(3))
    params = net.init(jax.random.key(0), (5,))
    assert decay_mask(net, params) == [{"W": True, "b": False}, {"s": True}, {"W": False},
                                       {"scale": False, "bias": False}, {"W": True, "b": False}]
    x = jax.random.normal(jax.random.key(1), (6, 5))
    y = jnp.arange(6) % 3
    kw = dict(network=net, loss="softmax_cross_entropy")
    l2 = 0.5
    J0, g0 = fbp.value_and_grad(params, (x, y), **kw)
    J1, g1 = fbp.value_and_grad(params, (x, y), l2=l2, **kw)
    decayed = [params[0]["W"], params[1]["s"], params[4]["W"]]
    np.testing.assert_allclose(J1 - J0, 0.5 * l2 * sum(float(jnp.sum(w * w)) for w in decayed),
                               rtol=1e-5)
    for (i, k), w in zip([(0, "W"), (1, "s"), (4, "W")], decayed):
        np.testing.assert_allclose(g1[i][k] - g0[i][k], l2 * w, rtol=1e-4, atol=1e-6)
    for i, k in [(0, "b"), (2, "W"), (3, "scale"), (3, "bias"), (4, "b")]:
        np.testing.assert_array_equal(g1[i][k], g0[i][k])
    ref = jax.grad(fbp.objective)(params, (x, y), l2=l2, **kw)  # the plain-JAX objective agrees
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_the_builtin_kernels_are_decayed_and_nothing_else():
    net = fl.Sequential(fl.Embedding(7, 6), fl.PositionalEmbedding(4), fl.Conv1D(6, 2),
                        fl.LayerNorm(), fl.Flatten(), fl.Dense(2))
    params = net.init(jax.random.key(0), (4,))
    assert decay_mask(net, params) == [{"W": True}, {"W": True}, {"W": True, "b": False},
                                       {"scale": False, "bias": False}, {},
                                       {"W": True, "b": False}]
    mlp = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
    assert decay_mask(None, mlp) == [{"W": True, "b": False}] * 2
    assert decay_mask(None, tuple(mlp)) == ({"W": True, "b": False},) * 2


# --- the strategies take what they need from the layer -----------------------------------
def _case(layer, seed=0, dtype=jnp.float64, l2=0.5):
    net = fl.Sequential(fl.Dense(5), layer, fl.Activation("tanh"), fl.Flatten(), fl.Dense(3))
    return make_net_case(net, (2, 4), 3, "softmax_cross_entropy", l2=l2, dtype=dtype,
                         seed=seed, target_kind="labels")


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_a_layer_with_a_parameter_s_goes_through_the_strategies(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        case = _case(UserRMSNorm(), dtype=dtype)
        s = case.params[1]["s"]
        assert s.shape == (5,) and not np.allclose(s, 1)  # drawn by its shape, away from 1
        compare_backprop(case)
        compare_per_example(case)


def test_the_wrong_twin_is_caught():
    with jax.enable_x64(True):
        with pytest.raises(AssertionError):
            compare_backprop(_case(UserRMSNormWrong()))


def test_abs_trace_is_each_backward_on_absolute_values():
    # Dense: |A|^T S and S |W|^T; LayerNorm: r (|h| + mean|h| + |xhat| mean(|h| |xhat|))
    with jax.enable_x64(True):
        net = fl.Sequential(fl.Dense(4), fl.LayerNorm())
        params = net.init(jax.random.key(0), (3,), jnp.float64)
        params[1] = {"scale": -jnp.arange(1.0, 5.0), "bias": jnp.ones(4)}
        x = jax.random.normal(jax.random.key(1), (2, 3), jnp.float64)
        _, caches = net.forward(params, x)
        S = jnp.abs(jax.random.normal(jax.random.key(2), (2, 4), jnp.float64))
        grads, S_in, cots = _abs_trace(net, params, caches, S)
        xhat, r = caches[1]
        h = S * jnp.abs(params[1]["scale"])[None]
        S_mid = r * (h + jnp.mean(h, -1, keepdims=True)
                     + jnp.abs(xhat) * jnp.mean(h * jnp.abs(xhat), -1, keepdims=True))
        np.testing.assert_allclose(cots[1], S)
        np.testing.assert_allclose(cots[0], S_mid)
        np.testing.assert_allclose(grads[1]["scale"], jnp.sum(S * jnp.abs(xhat), 0))
        np.testing.assert_allclose(grads[0]["W"], jnp.abs(x).T @ S_mid)
        np.testing.assert_allclose(S_in, S_mid @ jnp.abs(params[0]["W"]).T)
