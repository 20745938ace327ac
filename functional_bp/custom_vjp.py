"""The bridge to autodiff: an objective whose ``jax.grad`` runs our backward pass.

``jax.custom_vjp`` pairs a function with a hand-written reverse rule::

    fwd(params, x, y)  -> J, residuals (params, every layer's cache, the output, y)
    bwd(residuals, c)  -> c * (dJ/dparams, dJ/dX, dJ/dY)

where ``bwd`` is the backward loop of :mod:`functional_bp.backprop` run on the
saved caches (for the MLP: the Z's and A's; no second forward pass) and ``c``
is the cotangent of J (1 under ``jax.grad``). ``jax.grad``, ``jax.value_and_grad``, ``jax.vjp``,
``jax.jit``, ``jax.vmap`` and optax all work through it.

It is reverse mode only: ``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian``
(forward over reverse) raise a TypeError for a custom_vjp function. For those,
use :func:`functional_bp.objective` (plain JAX), whose derivatives of every
order JAX computes itself.

The targets y get a zero cotangent: the rule derives dJ/dparams and dJ/dX
only. Differentiate :func:`functional_bp.objective` if you need dJ/dY.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from . import _validate
from .backprop import output_cotangent
from .layers import Layer
from .losses import get_loss
from .network import add_l2, data_term, forward, l2_penalty


def backward_from_trace(net, params, caches, out, y, l2, loss):
    """The backward loop on a saved forward pass: ``(grads, dJ/dX)`` (network params).

    ``caches`` and ``out`` are what ``net.forward`` returned; the weights are 1/m.
    """
    m = out.shape[0]
    dy = output_cotangent(loss, out, y, jnp.full((m,), 1 / m, dtype=out.dtype))
    grads, dx = net.backward(params, caches, dy)
    return add_l2(grads, params, l2, net), dx


def make_custom_vjp_objective(backward: Callable, *, activations=None, network=None, loss,
                              l2: float = 0.0):
    """:func:`custom_vjp_objective` with the reverse rule as a parameter.

    ``backward(net, params, caches, out, y, l2, loss) -> (grads, dJ/dX)``
    (network params) is installed as the rule. :func:`custom_vjp_objective`
    passes :func:`backward_from_trace`; tests pass a deliberately wrong rule
    to show that theirs is the one ``jax.grad`` runs.
    """
    _validate.check_l2(l2)
    model = _validate.resolve_model(activations, network)
    if not isinstance(model, Layer):
        model, _ = _validate.static_config(model)
        _validate.check_activations(model, len(model))
    loss_obj = get_loss(loss)

    def make(view):
        net = view.net

        @jax.custom_vjp
        def J(params, x, y):
            out, _ = forward(net, view.to_net(params), x)
            return data_term(loss_obj, out, y, None) + l2_penalty(params, l2, view)

        def J_fwd(params, x, y):
            net_params = view.to_net(params)
            out, caches = forward(net, net_params, x)
            value = data_term(loss_obj, out, y, None) + l2_penalty(params, l2, view)
            return value, (net_params, caches, out, y)

        def J_bwd(residuals, c):
            net_params, caches, out, y = residuals
            grads, input_grad = backward(net, net_params, caches, out, y, l2, loss_obj)
            scale = lambda g: c * g  # noqa: E731  (c is the cotangent of the scalar J)
            return (jax.tree_util.tree_map(scale, view.grads(grads)), scale(input_grad),
                    jnp.zeros_like(y))

        J.defvjp(J_fwd, J_bwd)
        return J

    @jax.jit
    def J_checked(params, batch):  # the checks run while tracing
        view, _, _, x, y = _validate.prepare_model(params, batch, model, loss_obj)
        return make(view)(params, x, y)

    def objective(params, batch):
        """J(params, batch), equal to functional_bp.objective; jax.grad runs our rule."""
        params, batch = _validate.params_as_arrays(params), _validate.array_batch(batch)
        _validate.check_concrete_values(model, params, *batch, loss_obj)
        return J_checked(params, batch)

    return objective


def custom_vjp_objective(*, activations=None, network=None, loss, l2=0.0):
    """A function ``f(params, batch)`` equal to ``objective``, differentiated by our rule.

    ``jax.grad(f)`` runs the hand-derived backward pass (through
    ``jax.custom_vjp``), so ``f`` drops into any JAX or optax training loop.
    It works under ``jax.jit`` and ``jax.vmap``; it is reverse mode only
    (``jax.jvp`` and ``jax.hessian`` raise: use :func:`functional_bp.objective`
    for those). The targets get a zero cotangent. Dropout layers run in
    evaluation mode (no key).

    Args:
      activations: one name or :class:`~functional_bp.Activation` per layer, or
      network: a :class:`functional_bp.layers.Sequential`.
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
                                     network=network, loss=loss, l2=l2)
