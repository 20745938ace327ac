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

from functional_bp import ACTIVATIONS, LOSSES

ACTIVATION_NAMES = sorted(ACTIVATIONS)
LOSS_NAMES = sorted(LOSSES)
TARGET_KINDS = {
    "quadratic": ["reals"],
    "mse": ["reals"],
    "softmax_cross_entropy": ["one_hot", "labels", "soft", "soft_unnormalised", "reals"],
    "sigmoid_cross_entropy": ["binary", "soft", "reals"],
}


@dataclass(repr=False)
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

    recipe: str = ""

    def __repr__(self):
        # The make_case(...) call that rebuilds this case: paste it into an
        # @example to keep a counterexample.
        return self.recipe or object.__repr__(self)

    def _repr_pretty_(self, p, cycle):  # how hypothesis prints a falsifying example
        p.text(repr(self))


def make_targets(rng, kind, m, n, dtype):
    """Targets of one kind: one-hot, integer labels, soft, binary or any reals."""
    if kind == "labels":
        return jnp.asarray(rng.integers(0, n, size=m), dtype=jnp.int32)
    if kind == "one_hot":
        return jnp.asarray(np.eye(n)[rng.integers(0, n, size=m)], dtype=dtype)
    if kind == "soft":  # non-negative rows summing to one
        e = np.exp(rng.standard_normal((m, n)))
        return jnp.asarray(e / e.sum(axis=1, keepdims=True), dtype=dtype)
    if kind == "soft_unnormalised":  # non-negative rows not summing to one
        return jnp.asarray(rng.uniform(0.0, 2.0, size=(m, n)), dtype=dtype)
    if kind == "binary":
        return jnp.asarray(rng.integers(0, 2, size=(m, n)), dtype=dtype)
    if kind == "reals":
        return jnp.asarray(rng.standard_normal((m, n)), dtype=dtype)
    raise ValueError(kind)


SCHEME_VARIANCE = {
    "he": lambda n_in, n_out: 2.0 / n_in,
    "glorot": lambda n_in, n_out: 2.0 / (n_in + n_out),
    "classic": lambda n_in, n_out: 1.0 / n_in,
}


def make_case(sizes, m, activations, loss, *, l2=0.0, dtype=jnp.float32, seed=0,
              x_scale=1.0, target_kind=None, scheme="glorot"):
    """Build a Case deterministically from its description.

    Arrays are drawn with NumPy (no JAX compilation per drawn shape) and then
    converted; float64 cases are converted with x64 enabled, so they really are
    float64; the test that uses them must run under ``with
    jax.enable_x64(True):`` too.
    """
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        std = SCHEME_VARIANCE[scheme](n_in, n_out) ** 0.5
        # Non-zero biases, so a wrong bias gradient cannot hide behind b = 0.
        params.append({"W": std * rng.standard_normal((n_in, n_out)),
                       "b": 0.1 * rng.standard_normal(n_out)})
    x = x_scale * rng.standard_normal((m, sizes[0]))
    target_kind = target_kind or TARGET_KINDS[loss][0]
    with jax.enable_x64(jnp.dtype(dtype) == jnp.dtype("float64")):
        params = jax.tree.map(lambda t: jnp.asarray(t, dtype=dtype), params)
        x = jnp.asarray(x, dtype=dtype)
        y = make_targets(rng, target_kind, m, sizes[-1], dtype)
    recipe = (
        f"make_case({list(sizes)}, {m}, {list(activations)}, {loss!r}, l2={l2}, "
        f"dtype=jnp.{jnp.dtype(dtype).name}, seed={seed}, x_scale={x_scale}, "
        f"target_kind={target_kind!r}, scheme={scheme!r})"
    )
    return Case(params, x, y, tuple(activations), loss, float(l2), dtype, target_kind,
                recipe)


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
