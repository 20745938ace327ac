"""Reshape: each example to a given shape, in row-major (C) order.

Forward: Y = reshape(X) from (m, *input_shape) to (m, *shape); one entry of
``shape`` may be -1 (inferred). Each Y entry is one X entry, so the backward
reshapes the cotangent back: dJ/dX = reshape(dJ/dY). No parameters. Its
common use: ``Reshape((40, 1))`` gives a 1-D signal of 40 samples the channel
axis a :class:`~functional_bp.layers.Conv1D` reads.

Example::

    >>> from functional_bp import layers as fl
    >>> fl.Reshape((-1, 1)).init(None, (40,))[1]
    (40, 1)
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from .base import Layer


@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """Reshape each example to ``shape`` (one entry may be -1)."""

    shape: tuple[int, ...]

    def __post_init__(self):
        shape = self.shape
        if not (isinstance(shape, (tuple, list)) and shape
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                        and (v > 0 or v == -1) for v in shape) and list(shape).count(-1) <= 1):
            hint = f" (a tuple: ({int(shape)},))" if isinstance(shape, (int, np.integer)) else ""
            raise ValueError(f"Reshape(shape): a tuple of positive ints, at most one -1; "
                             f"got {shape!r}{hint}")
        object.__setattr__(self, "shape", tuple(int(v) for v in shape))

    def _target(self, input_shape, where="init"):
        size = math.prod(input_shape)
        known = math.prod(v for v in self.shape if v != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(f"{where} ({self!r}): cannot reshape an example of shape "
                             f"{tuple(input_shape)} ({size} entries) to {self.shape}")
        return tuple(size // known if v == -1 else v for v in self.shape)

    def check_input(self, input_shape, where):
        self._target(input_shape, where)

    def init(self, key, input_shape, dtype=jnp.float32):
        return {}, self._target(input_shape)

    def forward(self, params, x, key=None):
        return x.reshape(x.shape[0], *self._target(x.shape[1:])), x.shape

    def backward(self, params, cache, dy):
        return {}, dy.reshape(cache)
