"""Losses: each one is a pair (L, dL/da) with the gradient written by hand.

``value(a, y)`` is the per-example loss, shape (m,), for outputs ``a`` and
targets ``y`` of shape (m, n_L); ``grad(a, y)`` is dL/da, shape (m, n_L), for
each example's own L (no 1/m: the backward pass applies it once, in G^L).

| name | L(a, y) per example | dL/da |
|---|---|---|
| quadratic | 1/2 sum_j (a_j - y_j)^2 | a - y |
| mse | 1/n_L sum_j (a_j - y_j)^2 | 2 (a - y) / n_L |
| softmax_cross_entropy | -sum_j y_j log softmax(a)_j | softmax(a) sum_j y_j - y |
| sigmoid_cross_entropy | sum_j softplus(a_j) - y_j a_j | sigmoid(a) - y |

The cross-entropy gradients are the fused forms: they never go through a log,
so they stay finite for logits up to |a| = 1e4, and they hold for any real
targets (one-hot, soft labels that do not sum to one, anything).

Example::

    >>> import jax.numpy as jnp
    >>> from functional_bp.losses import LOSSES
    >>> ce = LOSSES["softmax_cross_entropy"]
    >>> a = jnp.array([[1e4, 0.0]]); y = jnp.array([[0.0, 1.0]])
    >>> ce.value(a, y).tolist(), ce.grad(a, y).tolist()
    ([10000.0], [[1.0, -1.0]])
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Loss(NamedTuple):
    """A per-example loss L(a, y) and its hand-written gradient dL/da.

    Attributes:
      name: a label used in errors and reports.
      value: ``(a, y) -> L``, shapes (m, n) x (m, n) -> (m,).
      grad: ``(a, y) -> dL/da``, shapes (m, n) x (m, n) -> (m, n).
      accepts_labels: whether integer class labels of shape (m,) are accepted
        as ``y`` (they mean the one-hot rows).
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    accepts_labels: bool = False


def quadratic(a, y):
    r = a - y
    return 0.5 * jnp.sum(r * r, axis=-1)


def quadratic_grad(a, y):
    return a - y


def mse(a, y):
    r = a - y
    return jnp.sum(r * r, axis=-1) / a.shape[-1]


def mse_grad(a, y):
    return (2 / a.shape[-1]) * (a - y)


def softmax_cross_entropy(a, y):
    return -jnp.sum(y * jax.nn.log_softmax(a, axis=-1), axis=-1)


def softmax_cross_entropy_grad(a, y):
    return jax.nn.softmax(a, axis=-1) * jnp.sum(y, axis=-1, keepdims=True) - y


def sigmoid_cross_entropy(a, y):
    return jnp.sum(jnp.logaddexp(a, jnp.zeros_like(a)) - y * a, axis=-1)


def sigmoid_cross_entropy_grad(a, y):
    return jax.lax.logistic(a) - y


LOSSES: dict[str, Loss] = {
    "quadratic": Loss("quadratic", quadratic, quadratic_grad),
    "mse": Loss("mse", mse, mse_grad),
    "softmax_cross_entropy": Loss(
        "softmax_cross_entropy", softmax_cross_entropy, softmax_cross_entropy_grad,
        accepts_labels=True,
    ),
    "sigmoid_cross_entropy": Loss(
        "sigmoid_cross_entropy", sigmoid_cross_entropy, sigmoid_cross_entropy_grad
    ),
}
"""The built-in losses by name."""


def get_loss(spec) -> Loss:
    """Turn a name or a :class:`Loss` into a Loss; clear errors otherwise."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        try:
            return LOSSES[spec]
        except KeyError:
            raise ValueError(
                f"unknown loss {spec!r}; valid names are {sorted(LOSSES)}, "
                "or pass Loss(name, value, grad)"
            ) from None
    raise TypeError(
        f"loss must be a name from {sorted(LOSSES)} or a Loss(name, value, grad); "
        f"got {spec!r}"
    )
