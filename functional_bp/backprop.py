"""The hand-derived backward pass: the delta recursion, in row layout.

With G^l := dJ/dZ^l, shape (m, n_l)::

    G^L     = (1/m) dL/da(A^L, Y) ⊙ g^L'(Z^L)
    G^l     = (G^{l+1} W^{l+1,T}) ⊙ g^l'(Z^l)        l = L-1, ..., 1
    dJ/dW^l = A^{l-1,T} G^l + l2 W^l
    dJ/db^l = sum of the rows of G^l
    dJ/dX   = G^1 W^{1,T}

Row i of G^l is (1/m) times example i's own gradient with respect to z^l_i:
that is what per-example gradients and clipping are built on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _validate
from .mlp import forward_trace, l2_penalty


class Backprop(NamedTuple):
    """Everything one backward pass produces (a pytree: works under jit/vmap).

    Attributes:
      loss: J, a scalar.
      grads: dJ/dparams, the same structure, shapes and dtypes as params.
      deltas: [G^1, ..., G^L], G^l = dJ/dZ^l of shape (m, n_l).
      input_grad: dJ/dX, shape (m, n_0).
    """

    loss: jax.Array
    grads: Any
    deltas: list
    input_grad: jax.Array


def output_delta(a_L, z_L, y, act_L, loss, weights):
    """G^L = w ⊙ dL/da ⊙ g^L'(Z^L), with the loss's fused dL/da; w_i = 1/m usually."""
    return (weights[:, None] * loss.grad(a_L, y)) * act_L.dg(z_L)


def backward(params, zs, As, y, l2, activations, loss, weights):
    """The delta recursion on a saved forward pass: ``(grads, deltas, dJ/dX)``.

    ``zs = [Z^1..Z^L]`` and ``As = [A^0..A^L]`` as from
    :func:`~functional_bp.mlp.forward_trace`; ``weights`` (m,) are the w_i of
    J = sum_i w_i L_i (1/m for the mean).
    """
    L = len(params)
    grads, deltas = [None] * L, [None] * L
    delta = output_delta(As[-1], zs[-1], y, activations[-1], loss, weights)  # G^L
    for l in reversed(range(L)):  # l indexes layer l+1 of the equations
        W, a_prev = params[l]["W"], As[l]
        deltas[l] = delta
        grads[l] = {"W": a_prev.T @ delta + l2 * W, "b": jnp.sum(delta, axis=0)}
        back = delta @ W.T  # G^{l+1} W^{l+1,T}: dJ/dA^l
        if l > 0:
            delta = back * activations[l - 1].dg(zs[l - 1])
    return grads, deltas, back


def backprop_from_arrays(params, x, y, l2, activations, loss, weights=None) -> Backprop:
    """The forward pass and the delta recursion on validated arrays (x (m, n_0), y (m, n_L)).

    ``weights`` (m,), when given, replaces the 1/m of the mean:
    J = sum_i w_i L(a_i, y_i) + (l2/2) sum ||W||^2. Masking padded rows
    (w_i = 0) and averaging over a true count smaller than m use it.
    """
    m = x.shape[0]
    zs, As = forward_trace(params, x, activations)
    if weights is None:
        weights = jnp.full((m,), 1 / m, dtype=x.dtype)
        J = jnp.mean(loss.value(As[-1], y)) + l2_penalty(params, l2)
    else:
        J = jnp.sum(weights * loss.value(As[-1], y)) + l2_penalty(params, l2)
    grads, deltas, input_grad = backward(params, zs, As, y, l2, activations, loss, weights)
    return Backprop(loss=J, grads=grads, deltas=deltas, input_grad=input_grad)


def _loss_and_grads(params, x, y, l2, activations, loss):
    r = backprop_from_arrays(params, x, y, l2, activations, loss)
    return r.loss, r.grads


# Jitted, with the input checks run while tracing (once per shapes/dtypes/config).
_backprop = _validate.jit_with_checks(backprop_from_arrays)
_value_and_grad = _validate.jit_with_checks(_loss_and_grads)


def backprop(params, batch, *, activations, loss, l2=0.0) -> Backprop:
    """Loss, gradients, every delta G^l and dJ/dX, by the hand-derived recursion.

    Args:
      params: list of ``{"W": (n_{l-1}, n_l), "b": (n_l,)}`` dicts.
      batch: ``(x, y)`` with x (m, n_0) and y (m, n_L) (or integer labels (m,)
        for ``softmax_cross_entropy``).
      activations: one name or :class:`~functional_bp.Activation` per layer.
      loss: a loss name or :class:`~functional_bp.losses.Loss`.
      l2: weight decay on the W's (J gains (l2/2) sum ||W^l||^2).

    Returns:
      :class:`Backprop` with fields ``loss``, ``grads``, ``deltas``,
      ``input_grad``.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> batch = (jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1]))
        >>> r = fbp.backprop(params, batch, activations=["relu", "identity"],
        ...                  loss="softmax_cross_entropy")
        >>> [d.shape for d in r.deltas], r.input_grad.shape
        ([(5, 4), (5, 2)], (5, 3))
    """
    return _backprop(params, batch, (l2,), activations, loss)


def value_and_grad(params, batch, *, activations, loss, l2=0.0):
    """``(J, dJ/dparams)`` by the hand-derived backward pass.

    Same arguments as :func:`backprop`; equals
    ``jax.value_and_grad(objective)(params, batch, ...)``.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 1])
        >>> J, grads = fbp.value_and_grad(params, (jnp.ones((5, 3)), jnp.zeros((5, 1))),
        ...                               activations=["tanh", "identity"], loss="mse")
        >>> grads[0]["W"].shape
        (3, 4)
    """
    return _value_and_grad(params, batch, (l2,), activations, loss)


def grad(params, batch, *, activations, loss, l2=0.0):
    """dJ/dparams only; see :func:`value_and_grad`."""
    return value_and_grad(params, batch, activations=activations, loss=loss, l2=l2)[1]
