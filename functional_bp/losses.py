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

import math
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


# --- sequences: outputs (m, T, n_L), one loss per position --------------------------
def example_losses(loss: Loss, a, y):
    """Each example's L_i, shape (m,): for outputs a (m, n_L), ``loss.value(a, y)``.

    For sequence outputs a (m, T, n_L) (any axes between the first and the
    last are positions) the loss is taken at every position and L_i is the
    mean over example i's positions, so J = (1/m) sum_i L_i is the mean over
    all m T positions (PyTorch's ``F.cross_entropy`` on the flattened logits).
    Unscored positions (label -1) reach this function as zero target rows
    with the scored ones reweighted: see :func:`sequence_targets`.
    """
    values = loss.value(a, y)
    return values if values.ndim == 1 else jnp.mean(values.reshape(values.shape[0], -1), axis=1)


def example_loss_grads(loss: Loss, a, y):
    """dL_i/da for :func:`example_losses`: ``loss.grad(a, y)`` over the number of positions."""
    positions = math.prod(a.shape[1:-1])
    g = loss.grad(a, y)
    return g if positions == 1 else g / positions


def sequence_targets(labels, n_L: int, dtype):
    """Integer labels (m, T), -1 unscored, as targets (m, T, n_L) for a softmax cross-entropy.

    Example i's loss is the mean over its n_i scored positions. The
    softmax cross-entropy is linear in its targets y (L = -sum_j y_j
    log softmax(a)_j, dL/da = softmax(a) sum_j y_j - y), so that mean is the
    mean over all T positions (:func:`example_losses`) with targets::

        y[i, t] = (T / n_i) onehot(labels[i, t])    when labels[i, t] >= 0
        y[i, t] = 0                                  when labels[i, t] = -1

    (an unscored position then has loss 0 and gradient 0 exactly; an example
    with no scored position has L_i = 0). This equals PyTorch's
    ``F.cross_entropy(..., ignore_index=-1)`` whenever every example has the
    same number of scored positions; otherwise PyTorch weighs each scored
    position equally across the batch, and this weighs each example equally.

    Example::

        >>> import jax.numpy as jnp
        >>> sequence_targets(jnp.array([[2, -1]]), 3, jnp.float32).tolist()
        [[[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]]
    """
    T = labels.shape[1]
    scored = labels >= 0
    n = jnp.sum(scored, axis=1, keepdims=True)
    weight = jnp.where(scored, T / jnp.maximum(n, 1), 0).astype(dtype)
    return jax.nn.one_hot(labels, n_L, dtype=dtype) * weight[..., None]
