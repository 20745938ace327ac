"""Activation: A = g(Z) elementwise, for any shape.

Forward: A = g(Z). Backward: A_j depends only on Z_j, with slope g'(Z_j), so
the chain rule's sum has one term::

    dJ/dZ = dJ/dA ⊙ g'(Z)

Following a Dense layer this is the derivation's G^l = (G^{l+1} W^{l+1,T}) ⊙ g'(Z^l).
No parameters. ``g`` is one of the built-in names or a user
:class:`functional_bp.Activation` (or a ``(g, dg)`` pair).

Example::

    >>> import jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> layer = fl.Activation("tanh")
    >>> a, z = layer.forward({}, jnp.zeros((2, 3)))
    >>> layer.backward({}, z, jnp.ones((2, 3)))[1]      # tanh'(0) = 1
    Array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ..activations import Activation as ActivationFn
from ..activations import get_activation
from .base import Layer


@dataclasses.dataclass(frozen=True)
class Activation(Layer):
    """A = g(Z) elementwise; the backward multiplies by the hand-written g'(Z)."""

    fn: Any

    def __post_init__(self):
        if not isinstance(self.fn, ActivationFn):
            object.__setattr__(self, "fn", get_activation(self.fn))

    def __repr__(self):
        return f"Activation({self.fn.name!r})"

    def forward(self, params, z, key=None):
        return self.fn.g(z), z  # the backward needs Z

    def backward(self, params, cache, dy):
        z = cache
        dg = jnp.asarray(self.fn.dg(z))
        self._same_as_z(z, dg, None)
        return {}, dy * dg  # dJ/dZ = dJ/dA ⊙ g'(Z)

    def check_derivative(self, z, where: str):
        """Raise unless dg(z) has the shape and dtype of z; traced abstractly, nothing computed.

        ``z`` is the input this layer will see (an array or a
        ``jax.ShapeDtypeStruct``); ``where`` names the layer in the message,
        e.g. ``"layer 2"``. A ``dg`` that returns a scalar, or an (m,) vector
        that happens to broadcast against z, would otherwise give wrong
        gradients without an error.
        """
        dg = jax.eval_shape(lambda z: jnp.asarray(self.fn.dg(z)), z)
        self._same_as_z(z, dg, where)

    def _same_as_z(self, z, dg, where):
        if dg.shape != z.shape or dg.dtype != z.dtype:
            what = f"activation {self.fn.name!r}"
            raise ValueError(
                f"{what if where is None else f'{where} ({what})'}: dg(z) must have the shape "
                f"and dtype of z, {tuple(z.shape)} {z.dtype}; got {tuple(dg.shape)} "
                f"{dg.dtype}: write dg elementwise, e.g. with jnp.ones_like(z) for a constant"
            )
