"""Dense: Z = A W + b, the linear layer of the derivation.

Shapes (row layout; ``...`` are optional extra axes such as a sequence, T
positions in all)::

    A (m, ..., n_in)   W (n_in, n_out)   b (n_out,)   Z (m, ..., n_out)

Forward: Z = A W + b (b broadcast over the rows).

Backward, from the tensor chain rule dJ/dX_k = sum_j dJ/dY_j dY_j/dX_k with
G = dJ/dZ: Z_{rj} = sum_k A_{rk} W_{kj} + b_j depends on W_{kj} through A_{rk}
for every row r, on b_j with slope 1 for every row, and on A_{rk} through
W_{kj} for every j::

    dJ/dW = A^T G            (rows r run over examples and extra axes)
    dJ/db = sum of the rows of G
    dJ/dA = G W^T

Per example (G_i, A_i: the T rows of example i, G_i = dL_i/dZ_i):
dL_i/dW = A_i^T G_i and dL_i/db = 1^T G_i, so::

    ||dL_i/dW||^2 = ||A_i^T G_i||_F^2 = <A_i A_i^T, G_i G_i^T>    (T = 1: ||a_i||^2 ||g_i||^2)
    ||dL_i/db||^2 = ||1^T G_i||^2

With extra axes the Gram form costs about T^2 (n_in + n_out) per example and
the direct form T n_in n_out; the cheaper one is used (ghost clipping,
:meth:`Dense.norm_form`). The direct form forms each example's A_i^T G_i, so
the clipped gradient reuses them (:meth:`Dense.clipping_trace`).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> layer = fl.Dense(3)
    >>> params, out = layer.init(jax.random.key(0), (4,))
    >>> params["W"].shape, params["b"].shape, out
    ((4, 3), (3,), (3,))
    >>> z, cache = layer.forward(params, jnp.ones((2, 4)))
    >>> grads, dA = layer.backward(params, cache, jnp.ones((2, 3)))
    >>> grads["W"].shape, dA.shape
    ((4, 3), (2, 4))
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .base import Layer, flag, positive_int, real_number, sum_rows


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """Z = A W + b over the last axis; ``init`` draws W ~ N(0, scale / n_in) ("he": scale 2).

    With ``bias=False`` there is no b: params ``{"W"}`` only, Z = A W (nanoGPT's
    ``bias=False``).
    """

    features: int
    scale: float = 2.0
    bias: bool = True

    decayed_params = ("W",)  # weight decay on the kernel, not the bias

    def __repr__(self):  # bias shown only when off, so reprs of biased layers stay short
        return (f"Dense(features={self.features!r}, scale={self.scale!r}"
                + (")" if self.bias else ", bias=False)"))

    def __post_init__(self):
        object.__setattr__(self, "features", positive_int("Dense(features)", self.features))
        object.__setattr__(self, "scale", real_number(
            "Dense(scale)", self.scale, "a finite number >= 0 (W ~ N(0, scale / n_in); 2 is "
            "'he', 1 'lecun')", lambda v: v >= 0))
        object.__setattr__(self, "bias", flag("Dense(bias)", self.bias))

    def init(self, key, input_shape, dtype=jnp.float32):
        n_in = input_shape[-1]
        W = (self.scale / n_in) ** 0.5 * jax.random.normal(key, (n_in, self.features), dtype)
        params = {"W": W, "b": jnp.zeros((self.features,), dtype)} if self.bias else {"W": W}
        return params, (*input_shape[:-1], self.features)

    def check_input(self, input_shape, where):
        if len(input_shape) == 0:
            raise ValueError(f"{where} (Dense): needs inputs with a feature axis; got scalars")

    def forward(self, params, x, key=None):
        z = x @ params["W"]
        if self.bias:
            z = z + params["b"].reshape((1,) * (x.ndim - 1) + (-1,))
        return z, x  # the backward needs A

    def backward(self, params, cache, dy):
        a, delta, W = cache, dy, params["W"]
        a2, delta2 = a.reshape(-1, a.shape[-1]), delta.reshape(-1, delta.shape[-1])
        grads = {"W": a2.T @ delta2}                     # A^T G
        if self.bias:
            grads["b"] = jnp.sum(delta2, axis=0)         # 1^T G
        return grads, delta @ W.T  # dJ/dA = G W^T

    def norm_form(self, input_shape) -> str:
        """How :meth:`sq_norms` works for one example's input shape (n_in,) or (..., n_in).

        ``"rows"`` without extra axes ((||a_i||^2 + 1) ||g_i||^2); with T
        positions, ``"gram"`` when T^2 (n_in + n_out) < T n_in n_out (the
        two (T, T) Grams), else ``"direct"`` (each example's A_i^T G_i).

        >>> from functional_bp import layers as fl
        >>> fl.Dense(384).norm_form((64, 128)), fl.Dense(8).norm_form((64, 4)), fl.Dense(8).norm_form((4,))
        ('gram', 'direct', 'rows')
        """
        if len(input_shape) == 1:
            return "rows"
        T, n_in, n_out = math.prod(input_shape[:-1]), input_shape[-1], self.features
        return "gram" if T * T * (n_in + n_out) < T * n_in * n_out else "direct"

    def example_grads(self, a, delta):
        """Each example's dL_i/dW = A_i^T G_i, (m, n_in, n_out), from A (m, ..., n_in), G (m, ..., n_out)."""
        m = a.shape[0]
        return jnp.einsum("mtk,mtj->mkj", a.reshape(m, -1, a.shape[-1]),
                          delta.reshape(m, -1, delta.shape[-1]))

    def sq_norms(self, params, cache, dy):
        a, delta = cache, dy
        form = self.norm_form(a.shape[1:])
        if form == "rows":  # one row per example
            return (sum_rows(a) + self.bias) * sum_rows(delta)
        m, n_in, n_out = a.shape[0], a.shape[-1], delta.shape[-1]
        if form == "gram":
            a, delta = a.reshape(m, -1, n_in), delta.reshape(m, -1, n_out)
            w = jnp.sum(jnp.einsum("mtk,msk->mts", a, a) * jnp.einsum("mtj,msj->mts", delta, delta),
                        axis=(1, 2))
        else:
            w = sum_rows(self.example_grads(a, delta))
        return w + sum_rows(jnp.sum(delta.reshape(m, -1, n_out), axis=1)) if self.bias else w

    def clipping_trace(self, params, cache, dy):
        """In the direct form the clipped dW is sum_i c_i A_i^T G_i, from the blocks the norm formed.

        That replaces the second A^T (c ⊙ G) product (T n_in n_out multiply-adds
        per example) by an m-term sum; the other forms keep the default.
        """
        if self.norm_form(cache.shape[1:]) != "direct":
            return super().clipping_trace(params, cache, dy)
        m = dy.shape[0]
        g = self.example_grads(cache, dy)                                 # (m, n_in, n_out)
        if not self.bias:
            return sum_rows(g), lambda c: {"W": jnp.tensordot(c, g, axes=1)}
        g_b = jnp.sum(dy.reshape(m, -1, dy.shape[-1]), axis=1)            # (m, n_out)
        return sum_rows(g) + sum_rows(g_b), lambda c: {"W": jnp.tensordot(c, g, axes=1),
                                                       "b": c @ g_b}
