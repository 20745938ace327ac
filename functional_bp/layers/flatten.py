"""Flatten: (m, d_1, ..., d_k) -> (m, d_1 ... d_k), in row-major (C) order.

Forward: Y = reshape(X). Backward: each Y entry is one X entry, so
dJ/dX = reshape(dJ/dY) back to X's shape. No parameters.

Example::

    >>> import jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> fl.Flatten().init(None, (4, 3))[1]
    (12,)
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from .base import Layer


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """Merge every axis but the batch axis."""

    def init(self, key, input_shape, dtype=jnp.float32):
        return {}, (math.prod(input_shape),)

    def forward(self, params, x, key=None):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, params, cache, dy):
        return {}, dy.reshape(cache)
