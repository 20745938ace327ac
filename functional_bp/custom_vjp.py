"""The bridge to autodiff: an objective whose ``jax.grad`` runs our backward pass.

``jax.custom_vjp`` pairs a function with a hand-written reverse rule::

    fwd(params, x, y)  -> J, residuals (params, Z^1..Z^L, A^0..A^L, y)
    bwd(residuals, c)  -> c * (dJ/dparams, dJ/dX, dJ/dY)

where ``bwd`` is the delta recursion of :mod:`functional_bp.backprop` run on
the saved Z's and A's (no second forward pass) and ``c`` is the cotangent of
J (1 under ``jax.grad``). ``jax.grad``, ``jax.value_and_grad``, ``jax.vjp``,
``jax.jit``, ``jax.vmap`` and optax all work through it.

It is reverse mode only: ``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian``
(forward over reverse) raise a TypeError for a custom_vjp function. For those,
use :func:`functional_bp.objective` (plain JAX), whose derivatives of every
order JAX computes itself.

The targets y get a zero cotangent: the rule derives dJ/dparams and dJ/dX
only. Differentiate :func:`functional_bp.objective` if you need dJ/dY.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from . import _validate
from .activations import get_activation
from .backprop import backward
from .losses import get_loss
from .mlp import forward_trace, l2_penalty


def backward_from_trace(params, zs, As, y, l2, activations, loss):
    """The delta recursion on a saved forward pass: ``(grads, dJ/dX)``.

    ``zs = [Z^1..Z^L]``, ``As = [A^0..A^L]`` as returned by
    :func:`~functional_bp.mlp.forward_trace`; the equations are those of
    :mod:`functional_bp.backprop` with weights 1/m.
    """
    m = As[0].shape[0]
    weights = jnp.full((m,), 1 / m, dtype=As[0].dtype)
    grads, _, input_grad = backward(params, zs, As, y, l2, activations, loss, weights)
    return grads, input_grad


def make_custom_vjp_objective(backward: Callable, *, activations: Sequence, loss,
                              l2: float = 0.0):
    """:func:`custom_vjp_objective` with the reverse rule as a parameter.

    ``backward(params, zs, As, y, l2, activations, loss) -> (grads, dJ/dX)``
    is installed as the rule. :func:`custom_vjp_objective` passes
    :func:`backward_from_trace`; tests pass a deliberately wrong rule to show
    that theirs is the one ``jax.grad`` runs.
    """
    if isinstance(activations, str) or not isinstance(activations, Sequence):
        raise TypeError(
            f"activations must be a sequence with one entry per layer; got {activations!r}"
        )
    acts = tuple(get_activation(a, layer=l) for l, a in enumerate(activations, 1))
    loss_obj = get_loss(loss)

    @jax.custom_vjp
    def J(params, x, y):
        _, As = forward_trace(params, x, acts)
        return jnp.mean(loss_obj.value(As[-1], y)) + l2_penalty(params, l2)

    def J_fwd(params, x, y):
        zs, As = forward_trace(params, x, acts)
        value = jnp.mean(loss_obj.value(As[-1], y)) + l2_penalty(params, l2)
        return value, (params, zs, As, y)

    def J_bwd(residuals, c):
        params, zs, As, y = residuals
        grads, input_grad = backward(params, zs, As, y, l2, acts, loss_obj)
        scale = lambda g: c * g  # noqa: E731  (c is the cotangent of the scalar J)
        return (jax.tree_util.tree_map(scale, grads), scale(input_grad),
                jnp.zeros_like(y))

    J.defvjp(J_fwd, J_bwd)

    @jax.jit
    def J_checked(params, batch):  # the checks run while tracing
        _, _, x, y = _validate.prepare(params, batch, acts, loss_obj)
        return J(params, x, y)

    def objective(params, batch):
        """J(params, batch), equal to functional_bp.objective; jax.grad runs our rule."""
        return J_checked(params, _validate.array_batch(batch))

    return objective


def custom_vjp_objective(*, activations, loss, l2=0.0):
    """A function ``f(params, batch)`` equal to ``objective``, differentiated by our rule.

    ``jax.grad(f)`` runs the hand-derived backward pass (through
    ``jax.custom_vjp``), so ``f`` drops into any JAX or optax training loop.
    It works under ``jax.jit`` and ``jax.vmap``; it is reverse mode only
    (``jax.jvp`` and ``jax.hessian`` raise: use :func:`functional_bp.objective`
    for those). The targets get a zero cotangent.

    Args:
      activations: one name or :class:`~functional_bp.Activation` per layer.
      loss: a loss name or :class:`~functional_bp.Loss`.
      l2: weight decay on the W's.

    Returns:
      ``f(params, batch) -> J``, a scalar.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> f = fbp.custom_vjp_objective(activations=["tanh", "identity"], loss="mse")
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> grads = jax.grad(f)(params, (jnp.ones((5, 3)), jnp.zeros((5, 2))))
        >>> grads[1]["b"].shape
        (2,)
    """
    return make_custom_vjp_objective(backward_from_trace, activations=activations,
                                     loss=loss, l2=l2)
