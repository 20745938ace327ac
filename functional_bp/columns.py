"""The column layout of the textbook derivation: examples are columns.

Shapes: x (n_0, m), y (n_L, m) (or integer labels (m,) for
``softmax_cross_entropy``), W^l (n_l, n_{l-1}), b^l (n_l, 1). With
delta^l := dJ/dZ^l of shape (n_l, m)::

    A^0     = X
    Z^l     = W^l A^{l-1} + b^l                 b^l broadcast over the columns
    A^l     = g^l(Z^l)
    J       = (1/m) sum_i L(a^L_i, y_i) + (l2/2) sum_l ||W^l||_F^2

    delta^L = (1/m) dL/da(A^L, Y) ⊙ g^L'(Z^L)   the loss applied to each column
    delta^l = (W^{l+1,T} delta^{l+1}) ⊙ g^l'(Z^l)
    dJ/dW^l = delta^l A^{l-1,T} + l2 W^l
    dJ/db^l = delta^l summed over the columns   (n_l, 1)
    dJ/dX   = W^{1,T} delta^1                   (n_0, m)

These are the row equations of :mod:`functional_bp.backprop` transposed,
term by term (Z^l = (A^{l-1,T} W^{l,T} + b^{l,T})^T, and so on), so the
code does exactly that: it checks the column-layout shapes, transposes the
inputs and params (no arithmetic), runs the layers engine's one backward pass,
and transposes every result back. The dense layer's backward lives in one
place (:mod:`functional_bp.layers.dense`). :func:`to_columns` and
:func:`to_rows` convert params exactly (a transpose and a reshape).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate
from .backprop import Backprop
from .backprop import backprop_from_arrays as row_backprop
from .losses import get_loss


def _shape(v):
    return tuple(getattr(v, "shape", np.shape(v)))


def check_params(params) -> list[int]:
    """Check column-layout params; return the widths [n_0, ..., n_L]."""
    if isinstance(params, dict) or not isinstance(params, (list, tuple)) or not params:
        raise TypeError(
            "params must be a non-empty list with one dict {'W': W, 'b': b} per layer; "
            f"got {type(params).__name__}"
        )
    sizes: list[int] = []
    for l, layer in enumerate(params, start=1):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            raise ValueError(f"layer {l}: expected a dict with exactly the keys 'W' and 'b'")
        W_shape, b_shape = _shape(layer["W"]), _shape(layer["b"])
        if len(W_shape) != 2:
            raise ValueError(
                f"layer {l}: W must be 2-D (n_{l}, n_{l-1}) in column layout; got {W_shape}"
            )
        n_out, n_in = W_shape
        if l == 1:
            sizes.append(n_in)
        elif n_in != sizes[-1]:
            raise ValueError(
                f"layer {l}: W has shape {W_shape} but layer {l-1} outputs width "
                f"{sizes[-1]}; expected W of shape ({n_out}, {sizes[-1]})"
            )
        if b_shape != (n_out, 1):
            hint = " (a 1-D b is the row layout; see to_columns)" if b_shape == (n_out,) else ""
            raise ValueError(
                f"layer {l}: b must be a column of shape ({n_out}, 1) to match W "
                f"{W_shape}; got {b_shape}{hint}"
            )
        for name in ("W", "b"):
            dtype = getattr(layer[name], "dtype", None)
            if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"layer {l}: {name} must be floating-point; got {dtype}")
        sizes.append(n_out)
    return sizes


def _check_x(x, n_0, dtype):
    shape = _shape(x)
    if len(shape) != 2 or shape[0] != n_0 or shape[1] == 0:
        raise ValueError(
            f"x must have shape (n_0={n_0}, m) in column layout (one example per "
            f"column, m >= 1); got {shape}"
        )
    return jnp.asarray(x, dtype=dtype)


def _check_y(y, m, n_L, loss, dtype):
    shape = _shape(y)
    y_dtype = getattr(y, "dtype", np.asarray(y).dtype)
    if len(shape) == 1 and loss.accepts_labels:
        if not jnp.issubdtype(y_dtype, jnp.integer):
            raise TypeError(f"1-D targets are class labels and must be integers; got {y_dtype}")
        if shape[0] != m:
            raise ValueError(f"x has {m} columns but y has {shape[0]} labels")
        _validate.check_label_values(y, (n_L,))  # where known: 0 <= y < n_L
        return jax.nn.one_hot(y, n_L, dtype=dtype, axis=0)  # (n_L, m)
    if shape != (n_L, m):
        takes = f"({n_L}, {m})" + (f" or integer labels ({m},)" if loss.accepts_labels else "")
        raise ValueError(f"y must have shape {takes} in column layout; got {shape}")
    return jnp.asarray(y, dtype=dtype)


def _prepare(params, batch, activations, loss):
    sizes = check_params(params)
    acts = _validate.check_activations(activations, len(params))
    loss = get_loss(loss)
    x, y = _validate.check_batch(batch)
    dtype = jnp.result_type(params[0]["W"])
    x = _check_x(x, sizes[0], dtype)
    y = _check_y(y, x.shape[1], sizes[-1], loss, dtype)
    return acts, loss, x, y


def backprop_from_arrays(params, x, y, l2, activations, loss) -> Backprop:
    """The column-layout Backprop on validated arrays (x (n_0, m), y (n_L, m)).

    Transposes in, the row engine's backward, transposes out: delta^l (n_l, m) is
    the transpose of the row layout's G^l.
    """
    rows = [{"W": p["W"].T, "b": p["b"][:, 0]} for p in params]
    r = row_backprop(rows, x.T, y.T, l2, activations, loss)
    grads = [{"W": g["W"].T, "b": g["b"][:, None]} for g in r.grads]
    return Backprop(loss=r.loss, grads=grads, deltas=[d.T for d in r.deltas],
                    input_grad=r.input_grad.T)


@partial(jax.jit, static_argnames=("activations", "loss"))
def _backprop(params, x, y, l2, *, activations, loss):
    return backprop_from_arrays(params, x, y, l2, activations, loss)


def backprop(params, batch, *, activations, loss, l2=0.0) -> Backprop:
    """Loss, gradients, deltas (n_l, m) and dJ/dX (n_0, m), in column layout.

    Args:
      params: list of ``{"W": (n_l, n_{l-1}), "b": (n_l, 1)}`` dicts.
      batch: ``(x, y)`` with x (n_0, m) and y (n_L, m) (or integer labels
        (m,) for ``softmax_cross_entropy``).
      activations, loss, l2: as in :func:`functional_bp.backprop`.

    Returns:
      :class:`~functional_bp.Backprop`, every array in column layout.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> from functional_bp import columns
        >>> params = columns.to_columns(fbp.init_mlp(jax.random.key(0), [3, 4, 2]))
        >>> r = columns.backprop(params, (jnp.ones((3, 5)), jnp.array([0, 1, 1, 0, 1])),
        ...                      activations=["relu", "identity"],
        ...                      loss="softmax_cross_entropy")
        >>> [d.shape for d in r.deltas], r.grads[0]["b"].shape, r.input_grad.shape
        ([(4, 5), (2, 5)], (4, 1), (3, 5))
    """
    _validate.check_l2(l2)
    acts, loss, x, y = _prepare(params, batch, activations, loss)
    return _backprop(params, x, y, l2, activations=acts, loss=loss)


def value_and_grad(params, batch, *, activations, loss, l2=0.0):
    """``(J, dJ/dparams)`` in column layout; see :func:`backprop`.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> from functional_bp import columns
        >>> params = columns.to_columns(fbp.init_mlp(jax.random.key(0), [3, 4, 1]))
        >>> J, grads = columns.value_and_grad(params, (jnp.ones((3, 5)), jnp.zeros((1, 5))),
        ...                                   activations=["tanh", "identity"], loss="mse")
        >>> grads[0]["W"].shape, grads[0]["b"].shape
        ((4, 3), (4, 1))
    """
    r = backprop(params, batch, activations=activations, loss=loss, l2=l2)
    return r.loss, r.grads


def to_columns(params):
    """Row-layout params -> column layout: W^T, b as an (n_l, 1) column. Exact.

    Example::

        >>> import jax, functional_bp as fbp
        >>> from functional_bp.columns import to_columns
        >>> [(p["W"].shape, p["b"].shape) for p in to_columns(fbp.init_mlp(jax.random.key(0), [3, 4]))]
        [((4, 3), (4, 1))]
    """
    _validate.check_params(params)
    return [{"W": layer["W"].T, "b": layer["b"][:, None]} for layer in params]


def to_rows(params):
    """Column-layout params -> row layout: W^T, b as a 1-D (n_l,). Exact.

    Example::

        >>> import jax, functional_bp as fbp
        >>> from functional_bp.columns import to_columns, to_rows
        >>> p = fbp.init_mlp(jax.random.key(0), [3, 4])
        >>> bool((to_rows(to_columns(p))[0]["W"] == p[0]["W"]).all())
        True
    """
    check_params(params)
    return [{"W": layer["W"].T, "b": layer["b"][:, 0]} for layer in params]
