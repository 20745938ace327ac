"""A network's forward pass, its objective J, and the MLP as one network among many.

    J = sum_i w_i L(Y_i, y_i) + (l2/2) sum ||W||_F^2       (w_i = 1/m: the mean)

The weight decay applies to the parameters each layer declares in its class
attribute ``decayed_params`` (a tuple of its params' keys; the default, in
:class:`~functional_bp.layers.Layer`, is none): the kernels ``W`` of Dense,
Conv1D, Conv2D, Embedding and PositionalEmbedding. Biases, LayerNorm's scale
and shift, and every parameter of a layer that declares none are not decayed;
a parameter's name plays no part. :func:`decay_mask` gives the rule as a tree.
``objective_from_arrays`` is plain JAX: its
``jax.grad`` is the reference every hand-derived gradient is tested against.

The ``activations=`` form of the public functions is the network
``Dense(n_1), Activation(g^1), ..., Dense(n_L), Activation(g^L)``; its params
list ``[{"W", "b"}, ...]`` is the network's params without the empty
Activation entries (:class:`MLPView` converts both ways).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .layers import Activation, Dense, Layer, Sequential
from .losses import example_losses


def forward(net, params, x, key=None, offsets=None):
    """The network output and every layer's cache (offsets: see :func:`objective_from_arrays`)."""
    return net.forward_offsets(params, x, key, offsets)


def decay_mask(model, params):
    """True at each leaf of ``params`` that weight decay applies to, nested like ``params``.

    ``model``: the network whose params these are (a
    :class:`~functional_bp.layers.Layer`; its params in its own nesting,
    lists or tuples), a :class:`NetworkView`, or, for the MLP's params (a list
    of Dense layers' dicts), the MLP's activations, an :class:`MLPView` or
    None. A leaf layer's entry is ``{key: key in layer.decayed_params}``.

    Example::

        >>> from functional_bp import layers as fl
        >>> net = fl.Sequential(fl.Dense(3), fl.Activation("relu"), fl.LayerNorm())
        >>> import jax; params = net.init(jax.random.key(0), (2,))
        >>> decay_mask(net, params)
        [{'W': True, 'b': False}, {}, {'scale': False, 'bias': False}]
    """
    if isinstance(model, NetworkView):
        model = model.net
    if isinstance(model, Sequential):
        return type(params)(decay_mask(layer, p) for layer, p in zip(model.layers, params))
    if isinstance(model, Layer):
        return {k: k in model.decayed_params for k in params}
    return type(params)(decay_mask(Dense(1), p) for p in params)  # the MLP: Dense layers


def l2_penalty(params, l2, model):
    """(l2/2) sum ||w||^2 over the decayed leaves w (:func:`decay_mask` of ``model``)."""
    squares = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda w, d: jnp.sum(w * w) if d else None, params, decay_mask(model, params)))
    return 0.5 * l2 * sum(squares) if squares else 0.0


def add_l2(grads, params, l2, model):
    """grads + l2 w on the decayed leaves w (:func:`decay_mask` of ``model``)."""
    return jax.tree_util.tree_map(lambda g, w, d: g + l2 * w if d else g,
                                  grads, params, decay_mask(model, params))


def data_term(loss, out, y, weights):
    """sum_i w_i L_i, or the mean when ``weights`` is None (L_i: :func:`~functional_bp.losses.example_losses`)."""
    values = example_losses(loss, out, y)
    return jnp.mean(values) if weights is None else jnp.sum(weights * values)


def objective_from_arrays(net, params, x, y, l2, loss, key=None, offsets=None, weights=None):
    """J for validated arrays, in plain JAX (the autodiff reference).

    ``offsets``, when given, are arrays added to each layer's output (nested
    like params): ``jax.grad`` with respect to zero offsets is the reference
    for the cotangents dJ/dY.
    """
    out, _ = forward(net, params, x, key, offsets)
    return data_term(loss, out, y, weights) + l2_penalty(params, l2, net)


# --- the MLP (activations=) as the dense-and-activation network -------------------
@lru_cache(maxsize=256)
def mlp_network(activations: tuple, widths: tuple) -> Sequential:
    """Dense(n_1), Activation(g^1), ..., Dense(n_L), Activation(g^L)."""
    layers = []
    for n, g in zip(widths, activations):
        layers += [Dense(n), Activation(g)]
    return Sequential(*layers)


class MLPView(NamedTuple):
    """Converts between the MLP's params ``[{"W","b"}]*L`` and its network's ``[{W,b}, {}, ...]``."""

    net: Sequential
    container: type = list  # the user's params container, kept in the gradients

    def to_net(self, params):
        return [entry for p in params for entry in (p, {})]

    def grads(self, tree):
        """The Dense entries of a network-shaped tree, in the MLP's (list or tuple) structure."""
        return self.container(tree[0::2])

    def deltas(self, cots):
        """G^l = dJ/dZ^l: the cotangents at the Dense outputs."""
        return cots[0::2]


class NetworkView(NamedTuple):
    """The ``network=`` form: the params are the network's own.

    ``structure``, when set, is the tree structure of params given with
    tuples in place of lists: ``to_net`` makes them lists (the network's
    structure) and ``grads`` gives results back in the user's structure.
    """

    net: Sequential
    structure: Any = None

    def to_net(self, params):
        return params if self.structure is None else _as_lists(params)

    def grads(self, tree):
        if self.structure is None:
            return tree
        return self.structure.unflatten(jax.tree_util.tree_leaves(tree))

    def deltas(self, cots):
        return cots


def _as_lists(tree):
    return [_as_lists(t) for t in tree] if isinstance(tree, (list, tuple)) else tree


def _has_tuple(tree) -> bool:
    return isinstance(tree, tuple) or (isinstance(tree, list) and any(map(_has_tuple, tree)))


def network_view(net, params) -> NetworkView:
    """The view of ``network=`` params, remembering their structure when it has tuples."""
    return NetworkView(net, jax.tree_util.tree_structure(params) if _has_tuple(params) else None)
