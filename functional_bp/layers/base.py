"""What every layer is: a few pure functions, and the rules they follow.

A layer is static, hashable configuration (a frozen dataclass) with:

- ``init(key, input_shape, dtype) -> (params, output_shape)``; shapes exclude the
  batch axis m; ``params`` is a dict of arrays (``{}`` without parameters);
- ``forward(params, x, key=None) -> (y, cache)``: x (m, *input_shape),
  y (m, *output_shape); the cache holds exactly what the backward needs;
- ``backward(params, cache, dy) -> (dparams, dx)``: given the cotangent
  dy = dJ/dY, the layer's gradients and dJ/dX, derived by hand with the
  chain rule for tensors, dJ/dX_k = sum_j dJ/dY_j dY_j/dX_k;
- for layers with parameters, ``sq_norms(params, cache, dy) -> (m,)``: the
  squared norm of each example's own parameter gradient, when row i of dy
  is example i's own dL_i/dY_i (weight 1).

Containers (:class:`~functional_bp.layers.Sequential`,
:class:`~functional_bp.layers.Residual`) run their layers' functions; the
three ``*_trace`` methods below are how every layer, leaf or container,
exposes its cotangents to the per-example machinery: a leaf's cotangent is
its dy; a container's is the list of its layers' cotangents (the same nesting
as its params).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def rows(c, t):
    """c (m,) broadcast against the rows of t (m, ...): c[:, None, ..., None]."""
    return c.reshape(c.shape + (1,) * (t.ndim - 1))


def sum_rows(t):
    """Each example's sum of squares of t (m, ...): shape (m,)."""
    return jnp.sum(t * t, axis=tuple(range(1, t.ndim)))


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base class: the defaults of a leaf layer without parameters."""

    #: whether the layer mixes the rows of a batch (batch norm would): the
    #: per-example functions then refuse it, since row i of the cotangent is
    #: no longer example i's own.
    couples_examples = False
    #: whether the layer takes integer inputs (an embedding)
    integer_input = False
    #: the keys of its params that weight decay (l2) applies to: none by default;
    #: Dense, the convolutions and the embeddings declare their kernel ``("W",)``
    decayed_params = ()

    def init(self, key, input_shape, dtype=jnp.float32):
        return {}, tuple(input_shape)

    def forward(self, params, x, key=None):  # pragma: no cover - every layer overrides
        raise NotImplementedError

    def backward(self, params, cache, dy):  # pragma: no cover - every layer overrides
        raise NotImplementedError

    def init_with_shape(self, key, input_shape, dtype=jnp.float32):
        """``(params, output_shape)``: what containers call (``Sequential.init`` returns params only)."""
        return self.init(key, input_shape, dtype)

    def sq_norms(self, params, cache, dy):
        """No parameters: no contribution to an example's gradient norm."""
        return None

    # --- the uniform interface used by the engine (containers override) ---
    def forward_offsets(self, params, x, key, offsets):
        """forward, then ``y + offsets`` (the reference for the cotangent dJ/dY)."""
        y, cache = self.forward(params, x, key)
        return (y if offsets is None else y + offsets), cache

    def backward_trace(self, params, cache, dy):
        """``(dparams, dx, cotangent)``; a leaf's cotangent is dy itself."""
        dparams, dx = self.backward(params, cache, dy)
        return dparams, dx, dy

    def sq_norms_trace(self, params, cache, cot):
        return self.sq_norms(params, cache, cot)

    def scaled_grads(self, params, cache, cot, c):
        """dparams for the cotangent with row i scaled by c_i (the backward is linear in dy)."""
        if not jax.tree_util.tree_leaves(params):
            return params
        return self.backward(params, cache, rows(c, cot) * cot)[0]

    def clipping_trace(self, params, cache, cot):
        """``(sq_norms, grads_of)``: each example's squared norm (m,) or None, and c -> dparams.

        ``grads_of(c)`` is sum_i c_i dL_i/dparams, the clipped sum once the
        clip factors c (m,) are known. By default the norms are
        :meth:`sq_norms` and ``grads_of`` runs the parameter backward again on
        the cotangent with row i scaled by c_i (:meth:`scaled_grads`). A layer
        whose norm forms each example's gradient anyway (a direct form)
        returns the c-weighted sum of those instead, which skips that second
        backward.
        """
        return (self.sq_norms_trace(params, cache, cot),
                lambda c: self.scaled_grads(params, cache, cot, c))

    def per_example_grads_trace(self, params, cache, cot):
        """Each example's own dparams (leading axis m): this layer's backward on one row at a time.

        The cache's arrays carry the batch axis first (every layer with
        parameters keeps its cache that way).
        """
        if not jax.tree_util.tree_leaves(params):
            return params
        one = lambda t: t[None]  # noqa: E731  (a batch of one example)
        return jax.vmap(lambda c, d: self.backward(params, jax.tree_util.tree_map(one, c),
                                                   one(d))[0])(cache, cot)

    def check(self, params, input_shape, where: str):
        """Check ``params`` against what ``init`` makes for ``input_shape``; return the output shape."""
        expected, out_shape = abstract_init(self, input_shape)
        _compare(params, expected, f"{where} ({self!r})", input_shape)
        return out_shape

    def check_input(self, input_shape, where: str):
        """Raise when ``input_shape`` cannot feed this layer (overridden where it matters)."""


def positive_int(where: str, value) -> int:
    """``value`` as a Python int when it is an integer > 0 (NumPy integers too), else a ValueError.

    ``where`` names the option, e.g. ``"Dense(features)"``. Booleans are refused.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
            and value > 0:
        return int(value)
    raise ValueError(f"{where}: a positive integer; got {value!r}")


def flag(where: str, value) -> bool:
    """``value`` as a Python bool when it is ``True`` or ``False`` (NumPy's too), else a ValueError.

    Strings and numbers are refused: ``bias="no"`` would otherwise read as True.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{where}: True or False; got {value!r}")


def real_number(where: str, value, rule: str, ok) -> float:
    """``value`` as a Python float when it is a finite real number with ``ok(value)``.

    Python and NumPy numbers, and 0-d NumPy or concrete JAX arrays, are
    accepted; booleans, NaN and infinities are refused, with ``rule`` (e.g.
    ``"a number > 0"``) in the message. A traced value cannot be a layer's
    option (options are static configuration).
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{where}: a layer's options are static configuration (they select "
                        f"the compiled program); got a traced value {value!r}: pass a number")
    number = isinstance(value, (int, float, np.integer, np.floating)) or (
        isinstance(value, (np.ndarray, jax.Array)) and value.shape == ()
        and (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)))
    if number and not isinstance(value, (bool, np.bool_)):
        v = float(value)
        if math.isfinite(v) and ok(v):
            return v
    raise ValueError(f"{where}: {rule}; got {value!r}")


def check_input_shape(input_shape, where: str = "input_shape") -> tuple:
    """``input_shape`` as a tuple of positive ints (one example's shape, no batch axis).

    An int alone (``net.init(key, 4)``), a non-integer entry or an axis of
    size 0 (which would make a layer divide by zero or normalise nothing) is
    refused with the fix.
    """
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        raise TypeError(f"{where} must be a tuple, one example's shape without the batch "
                        f"axis; got the int {input_shape!r}: pass ({int(input_shape)},)")
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
            for n in input_shape):
        raise TypeError(f"{where} must be a tuple of ints, one example's shape without the "
                        f"batch axis, e.g. (64,) or (28, 28, 1); got {input_shape!r}")
    shape = tuple(int(n) for n in input_shape)
    if any(n <= 0 for n in shape):
        raise ValueError(f"{where}: every axis of an example needs at least one entry; got "
                         f"{shape}: an axis of size {min(shape)} holds no data (check how the "
                         "data were sliced or reshaped)")
    return shape


def check_key(key, where: str = "key"):
    """Raise unless ``key`` is a ``jax.random`` key (new-style, or the raw uint32 pair)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jnp.issubdtype(dtype, jax.dtypes.prng_key)
                              or (dtype == jnp.uint32 and getattr(key, "shape", None) == (2,))):
        return key
    raise TypeError(f"{where} must be a jax.random key, e.g. jax.random.key(0); got {key!r}")


def abstract_init(layer, input_shape):
    """``layer.init_with_shape`` traced abstractly: (params as ShapeDtypeStructs, output shape)."""
    box = {}

    def init(key):
        params, box["out"] = layer.init_with_shape(key, tuple(input_shape))
        return params

    return jax.eval_shape(init, jax.random.key(0)), tuple(box["out"])


def _shape(v):
    return tuple(getattr(v, "shape", jnp.shape(v)))


def _compare(params, expected, where, input_shape):
    if not isinstance(params, dict):
        raise TypeError(
            f"{where}: params must be a dict with keys {sorted(expected)}; got "
            f"{type(params).__name__}"
        )
    if set(params) != set(expected):
        raise ValueError(
            f"{where}: params must have exactly the keys {sorted(expected)}; got "
            f"{sorted(params)} (use net.init(key, input_shape) to build them)"
        )
    for name, want in expected.items():
        got = _shape(params[name])
        if got != want.shape:
            raise ValueError(
                f"{where}: {name} must have shape {want.shape} for inputs of shape "
                f"(m, {', '.join(map(str, input_shape))}); got {got}: either the inputs "
                "(x, or the previous layer's output) have the wrong shape, or these params "
                "were made for another input shape (net.init(key, input_shape))"
            )
        dtype = getattr(params[name], "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{where}: {name} must be a floating-point array; got dtype {dtype}")
