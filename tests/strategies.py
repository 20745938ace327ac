"""Hypothesis strategies: every randomly drawn network and batch comes from here.

A :class:`Case` is a complete problem: params, a batch (x, y), one activation
per layer, a loss and an l2 weight. Sizes follow the core's specification:
depth 1-6, widths 1-32, batch 1-32, an independent activation per layer, any
loss, l2 zero or not, and targets of every kind the loss accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from functional_bp import ACTIVATIONS, LOSSES, init_mlp

ACTIVATION_NAMES = sorted(ACTIVATIONS)
LOSS_NAMES = sorted(LOSSES)
TARGET_KINDS = {
    "quadratic": ["reals"],
    "mse": ["reals"],
    "softmax_cross_entropy": ["one_hot", "labels", "soft", "soft_unnormalised", "reals"],
    "sigmoid_cross_entropy": ["binary", "soft", "reals"],
}


@dataclass
class Case:
    params: Any
    x: jax.Array
    y: jax.Array
    activations: tuple
    loss: str
    l2: float
    dtype: Any
    target_kind: str = "reals"

    @property
    def batch(self):
        return (self.x, self.y)

    @property
    def sizes(self):
        return [self.params[0]["W"].shape[0]] + [p["W"].shape[1] for p in self.params]

    def kwargs(self, with_l2=True):
        kw = dict(activations=self.activations, loss=self.loss)
        if with_l2:
            kw["l2"] = self.l2
        return kw

    def __repr__(self):  # short, so failing examples are readable
        return (
            f"Case(sizes={self.sizes}, m={self.x.shape[0]}, activations={self.activations}, "
            f"loss={self.loss!r}, l2={self.l2}, dtype={jnp.dtype(self.dtype).name}, "
            f"target_kind={self.target_kind!r})"
        )


def make_targets(key, kind, m, n, dtype):
    """Targets of one kind: one-hot, integer labels, soft, binary or any reals."""
    if kind == "labels":
        return jax.random.randint(key, (m,), 0, n)
    if kind == "one_hot":
        return jax.nn.one_hot(jax.random.randint(key, (m,), 0, n), n, dtype=dtype)
    if kind == "soft":  # non-negative rows summing to one
        return jax.nn.softmax(jax.random.normal(key, (m, n), dtype=dtype), axis=-1)
    if kind == "soft_unnormalised":  # non-negative rows not summing to one
        return jax.random.uniform(key, (m, n), dtype=dtype, minval=0.0, maxval=2.0)
    if kind == "binary":
        return jax.random.bernoulli(key, 0.5, (m, n)).astype(dtype)
    if kind == "reals":
        return jax.random.normal(key, (m, n), dtype=dtype)
    raise ValueError(kind)


def make_case(sizes, m, activations, loss, *, l2=0.0, dtype=jnp.float32, seed=0,
              x_scale=1.0, target_kind=None, scheme="glorot"):
    """Build a Case deterministically from its description.

    float64 cases are built with x64 enabled, so they really are float64; the
    test that uses them must run under ``with jax.enable_x64(True):`` too.
    """
    if jnp.dtype(dtype) == jnp.dtype("float64"):
        with jax.enable_x64(True):
            return _make_case(sizes, m, activations, loss, l2, dtype, seed, x_scale,
                              target_kind, scheme)
    return _make_case(sizes, m, activations, loss, l2, dtype, seed, x_scale,
                      target_kind, scheme)


def _make_case(sizes, m, activations, loss, l2, dtype, seed, x_scale, target_kind,
               scheme):
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = init_mlp(kp, list(sizes), scheme=scheme, dtype=dtype)
    # Non-zero biases, so a wrong bias gradient cannot hide behind b = 0.
    params = [
        {"W": p["W"], "b": 0.1 * jax.random.normal(k, p["b"].shape, dtype=dtype)}
        for p, k in zip(params, jax.random.split(kp, len(params)))
    ]
    x = x_scale * jax.random.normal(kx, (m, sizes[0]), dtype=dtype)
    target_kind = target_kind or TARGET_KINDS[loss][0]
    y = make_targets(ky, target_kind, m, sizes[-1], dtype)
    return Case(params, x, y, tuple(activations), loss, float(l2), dtype, target_kind)


@st.composite
def cases(draw, dtype=jnp.float32, max_depth=6, max_width=32, max_batch=32):
    """A random network, batch, activations, loss, targets and l2."""
    depth = draw(st.integers(1, max_depth), label="depth")
    sizes = draw(st.lists(st.integers(1, max_width), min_size=depth + 1,
                          max_size=depth + 1), label="sizes")
    m = draw(st.integers(1, max_batch), label="m")
    activations = draw(st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=depth,
                                max_size=depth), label="activations")
    loss = draw(st.sampled_from(LOSS_NAMES), label="loss")
    target_kind = draw(st.sampled_from(TARGET_KINDS[loss]), label="target_kind")
    l2 = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.5]), label="l2")
    x_scale = draw(st.sampled_from([0.1, 1.0, 3.0]), label="x_scale")
    scheme = draw(st.sampled_from(["he", "glorot", "classic"]), label="scheme")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    return make_case(sizes, m, activations, loss, l2=l2, dtype=dtype, seed=seed,
                     x_scale=x_scale, target_kind=target_kind, scheme=scheme)
