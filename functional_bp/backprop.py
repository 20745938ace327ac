"""The hand-derived backward pass: the loop over layers in reverse.

For any network the cotangent at the output is dJ/dY^L = w ⊙ dL/dY (the
loss's fused gradient, w_i = 1/m for the mean), and each layer, last to
first, turns the cotangent at its output into its parameter gradients and
the cotangent at its input (:meth:`Sequential.backward_trace
<functional_bp.layers.Sequential.backward_trace>`)::

    for layer in reversed(layers):
        dparams[layer], dy = layer.backward(params[layer], cache[layer], dy)

For the dense-and-activation network of the derivation (the
``activations=`` form), with G^l := dJ/dZ^l, shape (m, n_l), the cotangent
at the output of Dense layer l, the same loop reads::

    G^L     = (1/m) dL/da(A^L, Y) ⊙ g^L'(Z^L)           Activation L's backward
    dJ/dW^l = A^{l-1,T} G^l + l2 W^l                     Dense l's backward
    dJ/db^l = sum of the rows of G^l                     Dense l's backward
    G^l     = (G^{l+1} W^{l+1,T}) ⊙ g^l'(Z^l)            Dense l+1's, then Activation l's
    dJ/dX   = G^1 W^{1,T}                                Dense 1's backward

Row i of G^l is (1/m) times example i's own gradient with respect to z^l_i:
that is what per-example gradients and clipping are built on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _validate
from .losses import example_loss_grads
from .network import MLPView, add_l2, data_term, forward, l2_penalty, mlp_network


class Backprop(NamedTuple):
    """Everything one backward pass produces (a pytree: works under jit/vmap).

    Attributes:
      loss: J, a scalar.
      grads: dJ/dparams, the same structure, shapes and dtypes as params.
      deltas: the cotangents. With ``activations=``: [G^1, ..., G^L],
        G^l = dJ/dZ^l of shape (m, n_l). With ``network=``: dJ/dY at every
        layer's output, nested like params (a list for a Residual or
        Sequential).
      input_grad: dJ/dX, the shape of x.
    """

    loss: jax.Array
    grads: Any
    deltas: Any
    input_grad: jax.Array


def output_cotangent(loss, out, y, weights):
    """dJ/dY^L = w ⊙ dL/dY, row by row (w_i = 1/m for the mean; L_i averages a sequence's positions)."""
    return weights.reshape((-1,) + (1,) * (out.ndim - 1)) * example_loss_grads(loss, out, y)


def network_backprop(net, params, x, y, l2, loss, key=None, weights=None):
    """``(J, grads, cotangents, dJ/dX)`` for validated arrays: one forward, one backward loop."""
    out, caches = forward(net, params, x, key)
    m = x.shape[0]
    w = jnp.full((m,), 1 / m, dtype=out.dtype) if weights is None else weights
    J = data_term(loss, out, y, weights) + l2_penalty(params, l2, net)
    grads, dx, cots = net.backward_trace(params, caches, output_cotangent(loss, out, y, w))
    return J, add_l2(grads, params, l2, net), cots, dx


def backprop_net_arrays(params, x, y, l2, key, *, view, loss, weights=None) -> Backprop:
    """:class:`Backprop` for validated network params and arrays, in the user's structure."""
    J, grads, cots, dx = network_backprop(view.net, params, x, y, l2, loss, key, weights)
    return Backprop(loss=J, grads=view.grads(grads), deltas=view.deltas(cots), input_grad=dx)


def backprop_from_arrays(params, x, y, l2, activations, loss, weights=None) -> Backprop:
    """The MLP's :class:`Backprop` on validated arrays (x (m, n_0), y (m, n_L)).

    ``weights`` (m,), when given, replaces the 1/m of the mean:
    J = sum_i w_i L(a_i, y_i) + (l2/2) sum ||W||^2. Masking padded rows
    (w_i = 0) and averaging over a true count smaller than m use it.
    """
    view = MLPView(mlp_network(tuple(activations), tuple(p["W"].shape[1] for p in params)),
                   type(params))
    return backprop_net_arrays(view.to_net(params), x, y, l2, None, view=view, loss=loss,
                               weights=weights)


def _loss_and_grads(params, x, y, l2, key, *, view, loss):
    r = backprop_net_arrays(params, x, y, l2, key, view=view, loss=loss)
    return r.loss, r.grads


# Jitted, with the input checks run while tracing (once per shapes/dtypes/config).
_backprop = _validate.jit_with_checks(backprop_net_arrays)
_value_and_grad = _validate.jit_with_checks(_loss_and_grads)


def backprop(params, batch, *, activations=None, network=None, loss, l2=0.0,
             key=None) -> Backprop:
    """Loss, gradients, every layer's cotangent and dJ/dX, by the hand-derived backward pass.

    Args:
      params: with ``activations=``, a list of ``{"W": (n_{l-1}, n_l), "b": (n_l,)}``
        dicts (:func:`~functional_bp.init_mlp`); with ``network=``, what
        ``network.init`` returns.
      batch: ``(x, y)`` with x (m, n_0) (for a network, (m, *input_shape)) and
        y (m, n_L) (or integer labels (m,) for ``softmax_cross_entropy``).
      activations: one name or :class:`~functional_bp.Activation` per layer
        (the dense chain), or
      network: a :class:`functional_bp.layers.Sequential`.
      loss: a loss name or :class:`~functional_bp.losses.Loss`.
      l2: weight decay on every W (J gains (l2/2) sum ||W||^2), a real number
        >= 0. A Python number is compiled in: each new value compiles a new
        program (the last ``_validate.COMPILED_CACHE_SIZE`` are kept). To sweep
        it without recompiling, pass an array, ``l2=jnp.asarray(value)``.
      key: a ``jax.random`` key for Dropout layers (None: evaluation, no dropout).

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
    model = _validate.resolve_model(activations, network)
    return _backprop(params, batch, (l2, key), model, loss)


def value_and_grad(params, batch, *, activations=None, network=None, loss, l2=0.0, key=None):
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
    model = _validate.resolve_model(activations, network)
    return _value_and_grad(params, batch, (l2, key), model, loss)


def grad(params, batch, *, activations=None, network=None, loss, l2=0.0, key=None):
    """dJ/dparams only; see :func:`value_and_grad`."""
    return value_and_grad(params, batch, activations=activations, network=network, loss=loss,
                          l2=l2, key=key)[1]
