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
from .losses import Loss

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


def forward_trace(params, x, activations: Sequence[Activation], z_offsets=None):
    """The forward pass keeping every layer: returns ``(zs, As)``.

    ``zs[l-1] = Z^l`` (m, n_l) for l = 1..L and ``As[l] = A^l`` for l = 0..L
    (``As[0] = x``). ``z_offsets``, when given, is a list of arrays added to
    each Z^l: ``jax.grad`` with respect to zero offsets gives dJ/dZ^l, the
    reference for the deltas.
    """
    zs, As = [], [x]
    a = x
    for l, (layer, act) in enumerate(zip(params, activations)):
        z = a @ layer["W"] + layer["b"][None, :]
        if z_offsets is not None:
            z = z + z_offsets[l]
        a = act.g(z)
        zs.append(z)
        As.append(a)
    return zs, As


def l2_penalty(params, l2):
    """(l2/2) sum_l ||W^l||_F^2 (biases are not regularised)."""
    return 0.5 * l2 * sum(jnp.sum(layer["W"] ** 2) for layer in params)


def objective_from_arrays(params, x, y, l2, activations, loss: Loss, z_offsets=None):
    """J for already-validated arrays; plain JAX, the autodiff reference."""
    _, As = forward_trace(params, x, activations, z_offsets)
    return jnp.mean(loss.value(As[-1], y)) + l2_penalty(params, l2)


@partial(jax.jit, static_argnames=("activations",))
def _forward(params, x, *, activations):
    # The checks run while tracing: once per new shapes, dtypes and activations.
    sizes = _validate.check_params(params)
    acts = _validate.check_activations(activations, len(params))
    x = _validate.check_x(x, sizes[0], dtype=_validate.params_dtype(params))
    return forward_trace(params, x, acts)[1][-1]


_objective = _validate.jit_with_checks(objective_from_arrays)


def forward(params, x, *, activations):
    """The network output A^L, shape (m, n_L), for inputs x of shape (m, n_0).

    Example::

        >>> import jax, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [4, 8, 3])
        >>> fbp.forward(params, jax.numpy.ones((5, 4)), activations=["relu", "identity"]).shape
        (5, 3)
    """
    activations, _ = _validate.static_config(activations)
    return _forward(params, _validate.as_array(x), activations=activations)


def objective(params, batch, *, activations, loss, l2=0.0):
    """J = (1/m) sum_i L(a^L_i, y_i) + (l2/2) sum_l ||W^l||^2, in plain JAX.

    This is the reference: ``jax.grad(objective)`` is what every hand-derived
    gradient of the library must equal.

    Args:
      params: list of ``{"W", "b"}`` dicts (see :func:`init_mlp`).
      batch: ``(x, y)``, x of shape (m, n_0), y of shape (m, n_L) (or integer
        labels of shape (m,) for ``softmax_cross_entropy``).
      activations: one name or :class:`Activation` per layer.
      loss: a loss name or :class:`~functional_bp.losses.Loss`.
      l2: weight decay on the W's.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [2, 3, 1])
        >>> J = fbp.objective(params, (jnp.ones((4, 2)), jnp.zeros((4, 1))),
        ...                   activations=["tanh", "identity"], loss="quadratic")
        >>> J.shape
        ()
    """
    return _objective(params, batch, (l2,), activations, loss)
