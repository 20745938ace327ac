"""Dropout: Y = X ⊙ M / (1 - rate), M_j ~ Bernoulli(1 - rate), drawn from the call's key.

Inverted dropout: the expected value of Y is X, so evaluation (``key=None``)
is the identity. Backward: Y_j depends on X_j alone with slope M_j / (1 - rate),
the same mask as the forward (kept in the cache)::

    dJ/dX = dJ/dY ⊙ M / (1 - rate)

Each example's row has its own mask, so examples stay independent
(per-example gradients and clipping remain exact). No parameters.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> y, _ = fl.Dropout(0.5).forward({}, jnp.ones((2, 4)), jax.random.key(0))
    >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> fl.Dropout(0.5).forward({}, jnp.ones((1, 2)))[0]    # no key: evaluation
    Array([[1., 1.]], dtype=float32)
"""

from __future__ import annotations

import dataclasses

import jax

from .base import Layer, real_number


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Zero each entry with probability ``rate`` in training (a key given), identity without."""

    rate: float

    def __post_init__(self):
        object.__setattr__(self, "rate", real_number(
            "Dropout(rate)", self.rate, "a number in [0, 1), the share of entries zeroed",
            lambda v: 0 <= v < 1))

    def forward(self, params, x, key=None):
        if key is None or self.rate == 0:
            return x, None
        keep = jax.random.bernoulli(key, 1 - self.rate, x.shape)
        scale = (keep / (1 - self.rate)).astype(x.dtype)  # M / (1 - rate)
        return x * scale, scale

    def backward(self, params, cache, dy):
        return {}, (dy if cache is None else dy * cache)
