"""A network's forward pass, its objective J, and the MLP as one network among many.

    J = sum_i w_i L(Y_i, y_i) + (l2/2) sum ||W||_F^2       (w_i = 1/m: the mean)

The weight decay applies to every parameter named ``W`` (the weights of
Dense layers and of any layer whose kernel is called W); biases, LayerNorm's
scale and shift are not decayed. ``objective_from_arrays`` is plain JAX: its
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

from .layers import Activation, Dense, Sequential


def forward(net, params, x, key=None, offsets=None):
    """The network output and every layer's cache (offsets: see :func:`objective_from_arrays`)."""
    return net.forward_offsets(params, x, key, offsets)


def is_weight(path) -> bool:
    last = path[-1] if path else None
    return getattr(last, "key", None) == "W"


def l2_penalty(params, l2):
    """(l2/2) sum ||W||^2 over every leaf named ``W``."""
    squares = [jnp.sum(v * v) for p, v in jax.tree_util.tree_leaves_with_path(params)
               if is_weight(p)]
    return 0.5 * l2 * sum(squares) if squares else 0.0


def add_l2(grads, params, l2):
    """grads + l2 W on every leaf named ``W``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, g, w: g + l2 * w if is_weight(p) else g, grads, params)


def data_term(loss, out, y, weights):
    """sum_i w_i L_i, or the mean when ``weights`` is None."""
    values = loss.value(out, y)
    return jnp.mean(values) if weights is None else jnp.sum(weights * values)


def objective_from_arrays(net, params, x, y, l2, loss, key=None, offsets=None, weights=None):
    """J for validated arrays, in plain JAX (the autodiff reference).

    ``offsets``, when given, are arrays added to each layer's output (nested
    like params): ``jax.grad`` with respect to zero offsets is the reference
    for the cotangents dJ/dY.
    """
    out, _ = forward(net, params, x, key, offsets)
    return data_term(loss, out, y, weights) + l2_penalty(params, l2)


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
