"""The network: initialisation, the forward pass, and the objective J.

Row layout (examples are rows)::

    A^0 = X                    (m, n_0)
    Z^l = A^{l-1} W^l + b^l    W^l: (n_{l-1}, n_l), b^l: (n_l,)
    A^l = g^l(Z^l)             l = 1..L
    J   = (1/m) sum_i L(a^L_i, y_i) + (l2/2) sum_l ||W^l||_F^2

``objective`` is written in plain JAX with no custom rules: ``jax.grad`` of it
is the reference every hand-derived gradient in this library is tested against.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from . import _validate
from .activations import Activation
from .layers import Layer
from .losses import Loss
from .network import MLPView, mlp_network
from .network import forward as network_forward
from .network import l2_penalty as network_l2_penalty
from .network import objective_from_arrays as network_objective

SCHEMES = {
    # name: variance of each entry of W^l as a function of (n_in, n_out)
    "he": lambda n_in, n_out: 2.0 / n_in,
    "glorot": lambda n_in, n_out: 2.0 / (n_in + n_out),
    "classic": lambda n_in, n_out: 1.0 / n_in,
}


def init_mlp(key, sizes: Sequence[int], *, scheme: str = "he", dtype=jnp.float32):
    """Random parameters for a network with layer widths ``sizes = [n_0, ..., n_L]``.

    Each W^l has shape (n_{l-1}, n_l) with entries drawn from N(0, s^2), and
    each b^l = 0 with shape (n_l,):

    - ``"he"``: s^2 = 2 / n_{l-1}, for relu-like activations (the default);
    - ``"glorot"``: s^2 = 2 / (n_{l-1} + n_l), for tanh and sigmoid;
    - ``"classic"``: s^2 = 1 / n_{l-1}, the N(0, 1/n_in) of the textbooks.

    Args:
      key: a ``jax.random`` key.
      sizes: at least two positive integers.
      scheme: one of ``"he"``, ``"glorot"``, ``"classic"``.
      dtype: a floating dtype (float64 needs ``jax_enable_x64``).

    Returns:
      A list of ``{"W": W^l, "b": b^l}`` dicts, l = 1..L.

    Example::

        >>> import jax, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [4, 8, 3])
        >>> [(p["W"].shape, p["b"].shape) for p in params]
        [((4, 8), (8,)), ((8, 3), (3,))]
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes
    ):
        raise ValueError(
            f"sizes must be at least two positive integers [n_0, ..., n_L]; got {sizes}"
        )
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid names are {sorted(SCHEMES)}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dtype}")
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
        std = SCHEMES[scheme](n_in, n_out) ** 0.5
        W = std * jax.random.normal(k, (n_in, n_out), dtype=dtype)
        params.append({"W": W, "b": jnp.zeros((n_out,), dtype=dtype)})
    return params


def _mlp(params, activations):
    """The MLP's network and params view (widths read from the W shapes)."""
    view = MLPView(mlp_network(tuple(activations), tuple(p["W"].shape[1] for p in params)))
    return view, view.to_net(params)


def forward_trace(params, x, activations: Sequence[Activation], z_offsets=None):
    """The MLP's forward pass keeping every layer: returns ``(zs, As)``.

    ``zs[l-1] = Z^l`` (m, n_l) for l = 1..L and ``As[l] = A^l`` for l = 0..L
    (``As[0] = x``). ``z_offsets``, when given, is a list of arrays added to
    each Z^l: ``jax.grad`` with respect to zero offsets gives dJ/dZ^l, the
    reference for the deltas.
    """
    view, net_params = _mlp(params, activations)
    offsets = None if z_offsets is None else [o for z in z_offsets for o in (z, None)]
    out, caches = network_forward(view.net, net_params, x, None, offsets)
    return caches[1::2], caches[0::2] + [out]  # Dense caches A^{l-1}, Activation caches Z^l


def l2_penalty(params, l2):
    """(l2/2) sum_l ||W^l||_F^2 (biases are not regularised)."""
    return network_l2_penalty(params, l2, None)


def objective_from_arrays(params, x, y, l2, activations, loss: Loss, z_offsets=None):
    """The MLP's J for already-validated arrays; plain JAX, the autodiff reference."""
    _, As = forward_trace(params, x, activations, z_offsets)
    return jnp.mean(loss.value(As[-1], y)) + l2_penalty(params, l2)


def _objective_net(params, x, y, l2, key, *, view, loss):
    return network_objective(view.net, params, x, y, l2, loss, key)


@partial(jax.jit, static_argnames=("model",))
def _forward(params, x, key, *, model):
    # The checks run while tracing: once per new shapes, dtypes and model.
    if isinstance(model, Layer):
        x, _ = _validate.check_network_x(x, model, params)
        return network_forward(model, params, x, key)[0]
    sizes = _validate.check_params(params)
    acts = _validate.check_activations(model, len(params))
    x = _validate.check_x(x, sizes[0], dtype=_validate.params_dtype(params))
    view, net_params = _mlp(params, acts)
    return network_forward(view.net, net_params, x)[0]


_objective = _validate.jit_with_checks(_objective_net)


def forward(params, x, *, activations=None, network=None, key=None):
    """The network output, shape (m, n_L), for inputs x of shape (m, n_0) (or (m, *input_shape)).

    Args:
      params: MLP params (:func:`init_mlp`) or a network's (``network.init``).
      x: the inputs, one example per row.
      activations: one activation per layer (the dense chain), or
      network: a :class:`functional_bp.layers.Sequential`.
      key: a ``jax.random`` key for Dropout layers (None: evaluation).

    Example::

        >>> import jax, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [4, 8, 3])
        >>> fbp.forward(params, jax.numpy.ones((5, 4)), activations=["relu", "identity"]).shape
        (5, 3)
    """
    model = _validate.resolve_model(activations, network)
    model, _ = _validate.static_config(model)
    x = _validate.as_array(x)
    _validate.check_token_values(model, x)
    return _forward(_validate.params_as_arrays(params), x, key, model=model)


def objective(params, batch, *, activations=None, network=None, loss, l2=0.0, key=None):
    """J = (1/m) sum_i L(a^L_i, y_i) + (l2/2) sum ||W||^2, in plain JAX.

    This is the reference: ``jax.grad(objective)`` is what every hand-derived
    gradient of the library must equal.

    Args:
      params: list of ``{"W", "b"}`` dicts (see :func:`init_mlp`), or a
        network's params.
      batch: ``(x, y)``, x of shape (m, n_0), y of shape (m, n_L) (or integer
        labels of shape (m,) for ``softmax_cross_entropy``).
      activations: one name or :class:`Activation` per layer, or
      network: a :class:`functional_bp.layers.Sequential`.
      loss: a loss name or :class:`~functional_bp.losses.Loss`.
      l2: weight decay on the W's.
      key: a ``jax.random`` key for Dropout layers (None: evaluation).

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [2, 3, 1])
        >>> J = fbp.objective(params, (jnp.ones((4, 2)), jnp.zeros((4, 1))),
        ...                   activations=["tanh", "identity"], loss="quadratic")
        >>> J.shape
        ()
    """
    model = _validate.resolve_model(activations, network)
    return _objective(params, batch, (l2, key), model, loss)
