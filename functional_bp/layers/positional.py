"""PositionalEmbedding: a learned vector added at each position of a sequence.

Shapes: X, Y (m, T, C); W (max_length, C), T <= max_length::

    Y[n, t, :] = X[n, t, :] + W[t, :]          (W[:T] broadcast over the m examples)

Backward, from the chain rule dJ/dX_k = sum_j dJ/dY_j dY_j/dX_k with
G = dJ/dY: Y[n, t, c] depends on X[n, t, c] with slope 1 and on W[t, c] with
slope 1 for every example n, so::

    dJ/dX = G
    dJ/dW[t] = sum_n G[n, t]     for t < T,      dJ/dW[t] = 0 for t >= T

(the rows past the sequence length are never used, so their gradient is 0).

Per example n: dL_n/dW[:T] = G_n, the example's own (T, C) cotangent, so
``||dL_n/dW||^2 = ||G_n||_F^2``: the norm needs no per-example gradient.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> pos = fl.PositionalEmbedding(8)
    >>> params, out = pos.init(jax.random.key(0), (5, 4))
    >>> params["W"].shape, out
    ((8, 4), (5, 4))
    >>> y, cache = pos.forward(params, jnp.zeros((2, 5, 4)))
    >>> grads, dx = pos.backward(params, cache, jnp.ones((2, 5, 4)))
    >>> grads["W"][:, 0].tolist()      # rows 0..4 used by both examples, rows 5..7 unused
    [2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .base import Layer, positive_int, real_number, sum_rows


@dataclasses.dataclass(frozen=True)
class PositionalEmbedding(Layer):
    """Y = X + W[:T]: learned positions for inputs (m, T, C), T <= ``max_length``.

    Args:
      max_length: the number of rows of W, the longest sequence it takes
        (a GPT's block size).
      scale: W ~ N(0, scale) at init (the variance; GPT-2 uses 0.02^2).
    """

    max_length: int
    scale: float = 1.0

    decayed_params = ("W",)  # weight decay on the table

    def __post_init__(self):
        object.__setattr__(self, "max_length",
                           positive_int("PositionalEmbedding(max_length)", self.max_length))
        object.__setattr__(self, "scale", real_number(
            "PositionalEmbedding(scale)", self.scale, "a finite number >= 0 (W ~ N(0, scale))",
            lambda v: v >= 0))

    def init(self, key, input_shape, dtype=jnp.float32):
        W = self.scale ** 0.5 * jax.random.normal(key, (self.max_length, input_shape[-1]), dtype)
        return {"W": W}, tuple(input_shape)

    def check_input(self, input_shape, where):
        if len(input_shape) != 2:
            raise ValueError(
                f"{where} ({self!r}): takes sequences of feature vectors (m, T, C); got "
                f"(m, {', '.join(map(str, input_shape))}) (put it after an Embedding of "
                "(m, T) tokens)")
        if input_shape[0] > self.max_length:
            raise ValueError(
                f"{where} ({self!r}): the sequence has T={input_shape[0]} positions but the "
                f"layer has learned only max_length={self.max_length}: feed at most "
                f"{self.max_length} positions (crop the context to the last {self.max_length} "
                "tokens), or build the model with a larger block size")

    def forward(self, params, x, key=None):
        T = x.shape[1]
        return x + params["W"][None, :T], None  # the backward needs nothing (T is dy's)

    def backward(self, params, cache, dy):
        G = dy
        T = G.shape[1]
        dW_used = jnp.sum(G, axis=0)                                     # sum_n G[n, t]
        dW = jnp.zeros_like(params["W"]).at[:T].set(dW_used)             # rows t >= T: 0
        return {"W": dW}, G                                              # dJ/dX = G

    def sq_norms(self, params, cache, dy):
        return sum_rows(dy)  # ||G_n||_F^2

    def per_example_grads_trace(self, params, cache, cot):
        T = cot.shape[1]
        return {"W": jnp.zeros((cot.shape[0],) + params["W"].shape, cot.dtype).at[:, :T].set(cot)}
