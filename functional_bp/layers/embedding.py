"""Embedding: integer indices to rows of a table W, the backward a scatter-add.

Shapes: X (m,) or (m, T) integers in [0, vocab_size); W (vocab_size, features);
Y (m, features) or (m, T, features)::

    Y[n, t, :] = W[X[n, t], :]

Backward. Y[n, t, f] depends on W[v, f] with slope 1 when X[n, t] = v and
not otherwise, so the chain rule's sum collects, for each row v of W, the
cotangent rows of every position that looked it up::

    dW[v, :] = sum_{n, t: X[n, t] = v} G[n, t, :]

a scatter-add (an index that occurs several times, in one example or in
several, adds all its cotangent rows; writing them instead of adding would
keep only one). In matrix form, with A the one-hot rows of X (mT, vocab),
Y = A W and dW = A^T G: a Dense layer on one-hot inputs. X holds integers:
there is no gradient with respect to it, and the backward returns None for
dJ/dX (an Embedding is the first layer of a network).

Per example, dL_n/dW = A_n^T G_n touches only the rows example n looks up;
by the Dense rule in Gram form,
``||A_n^T G_n||^2 = <A_n A_n^T, G_n G_n^T> = sum_{t, t'} [X[n,t] = X[n,t']] <G[n,t], G[n,t']>``,
so repeated indices within an example are counted with their cross terms
(for X (m,), T = 1: ||G[n]||^2).

Indices outside [0, vocab_size) (negative ones included) are refused with an
error naming the layer, the index and the range by every public function
(``value_and_grad``, ``grad``, ``backprop``, ``objective``, ``forward``, the
per-example functions, ``clipped_grad``, the private gradients) and by
``fit``, wherever the values are known at the call: NumPy arrays and concrete
JAX arrays (``functional_bp._validate.check_token_values``). Traced indices,
inside a user's own ``jax.jit``, ``jax.vmap`` or ``jax.grad``, have no values
yet and cannot be checked: there an out-of-range index gives a row of NaN in
the forward (so a NaN loss), never another row's values, and adds nothing to
dW. Check such data before the traced call.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> emb = fl.Embedding(5, 2)
    >>> params, out = emb.init(jax.random.key(0), (3,))
    >>> params["W"].shape, out
    ((5, 2), (3, 2))
    >>> y, cache = emb.forward(params, jnp.array([[1, 4, 1]]))
    >>> emb.backward(params, cache, jnp.ones((1, 3, 2)))[0]["W"][:, 0]   # row 1 twice
    Array([0., 2., 0., 0., 1.], dtype=float32)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .base import Layer, positive_int, real_number


@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    """Y = W[X]: integer inputs (m,) or (m, T) to (m, features) or (m, T, features).

    Args:
      vocab_size: the number of rows of W (indices run over 0 .. vocab_size - 1).
      features: the width of each row.
      scale: W ~ N(0, scale) at init.
    """

    vocab_size: int
    features: int
    scale: float = 1.0

    integer_input = True
    decayed_params = ("W",)  # weight decay on the table

    def __post_init__(self):
        for name in ("vocab_size", "features"):
            object.__setattr__(self, name, positive_int(f"Embedding({name})", getattr(self, name)))
        object.__setattr__(self, "scale", real_number(
            "Embedding(scale)", self.scale, "a finite number >= 0 (W ~ N(0, scale))",
            lambda v: v >= 0))

    def init(self, key, input_shape, dtype=jnp.float32):
        W = self.scale ** 0.5 * jax.random.normal(key, (self.vocab_size, self.features), dtype)
        return {"W": W}, (*input_shape, self.features)

    def check_input(self, input_shape, where):
        if len(input_shape) > 1:
            raise ValueError(f"{where} (Embedding): inputs are (m,) or (m, T) indices; got "
                             f"(m, {', '.join(map(str, input_shape))})")

    def forward(self, params, x, key=None):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{self!r}: takes integer indices (the first layer of a network); "
                            f"got dtype {x.dtype}")
        # Negative indices would wrap around; send them out of range too (a NaN row).
        idx = jnp.where(x < 0, self.vocab_size, x)
        y = jnp.take(params["W"], idx, axis=0, mode="fill", fill_value=jnp.nan)
        return y, x  # the backward needs the indices

    def backward(self, params, cache, dy):
        x, G = cache, dy
        F = G.shape[-1]
        # dW[v] = sum of G[n, t] over the positions with X[n, t] = v: add, never overwrite.
        idx = jnp.where(x < 0, self.vocab_size, x).reshape(-1)   # out of range: dropped
        dW = jnp.zeros_like(params["W"]).at[idx].add(G.reshape(-1, F), mode="drop")
        return {"W": dW}, None  # no gradient with respect to integer indices

    def sq_norms(self, params, cache, dy):
        m, F = dy.shape[0], dy.shape[-1]
        x, G = cache.reshape(m, -1), dy.reshape(m, -1, F)
        same = (x[:, :, None] == x[:, None, :]).astype(G.dtype)   # A_n A_n^T
        return jnp.sum(same * jnp.einsum("mtf,msf->mts", G, G), axis=(1, 2))
