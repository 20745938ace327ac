"""Sequential and Residual: the containers, whose backward is the loop of the derivation.

A network is a :class:`Sequential` of layers. Its forward runs each layer in
order, keeping each cache; its backward runs them in reverse, each layer
turning the cotangent at its output into the cotangent at its input::

    for layer in reversed(layers):
        dparams[layer], dy = layer.backward(params[layer], cache[layer], dy)

For the derivation's network (Dense, Activation, Dense, ..., Activation) the
cotangent at the output of Dense layer l is G^l = dJ/dZ^l, and the loop is
the delta recursion: Activation's backward gives G^l = dJ/dA^l ⊙ g'(Z^l),
Dense's gives dW^l = A^{l-1,T} G^l, db^l = 1^T G^l and dJ/dA^{l-1} = G^l W^{l,T}.

:class:`Residual` wraps a sub-network f as Y = X + f(X). Y depends on X
directly (slope 1) and through f, so the chain rule adds the two paths::

    dJ/dX = dJ/dY + (f's backward of dJ/dY)

Params and gradients of a container are the list of its layers' entries
(``{}`` for a layer without parameters).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> net = fl.Sequential(fl.Dense(8), fl.Residual(fl.LayerNorm(), fl.Dense(8),
    ...                     fl.Activation("relu")), fl.Dense(2))
    >>> params = net.init(jax.random.key(0), (3,))
    >>> [type(p).__name__ for p in params], net.output_shape((3,))
    (['dict', 'list', 'dict'], (2,))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .base import Layer, abstract_init, check_input_shape, check_key


def _key(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def _describe(layer):
    return repr(layer) if not isinstance(layer, Sequential) else type(layer).__name__


@dataclasses.dataclass(frozen=True, init=False)
class Sequential(Layer):
    """Layers applied in order: ``Sequential(Dense(64), Activation("relu"), Dense(10))``."""

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers, 1):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"{type(self).__name__}: layer {i} must be a layer such as Dense(10) or "
                    f"Activation('relu'); got {layer!r}"
                )
        object.__setattr__(self, "layers", tuple(layers))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.layers))})"

    @property
    def couples_examples(self):
        return any(layer.couples_examples for layer in self.layers)

    @property
    def integer_input(self):
        return bool(self.layers) and self.layers[0].integer_input

    def leaves(self):
        """Every leaf layer, depth first."""
        for layer in self.layers:
            yield from (layer.leaves() if isinstance(layer, Sequential) else (layer,))

    # --- init and shapes --------------------------------------------------
    def init_with_shape(self, key, input_shape, dtype=jnp.float32):
        shape = tuple(input_shape)
        keys = jax.random.split(key, max(len(self.layers), 1))
        params = []
        for i, (layer, k) in enumerate(zip(self.layers, keys), 1):
            layer.check_input(shape, f"layer {i}")
            p, shape = layer.init_with_shape(k, shape, dtype)
            params.append(p)
        return params, shape

    def init(self, key, input_shape, dtype=jnp.float32):
        """The parameters for inputs of shape (m, *input_shape): a list, one entry per layer.

        Args:
          key: a ``jax.random`` key.
          input_shape: the shape of one example (no batch axis), e.g. ``(64,)``.
          dtype: a floating dtype (float64 needs ``jax_enable_x64``).
        """
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating dtype; got {dtype}")
        return self.init_with_shape(check_key(key), check_input_shape(input_shape), dtype)[0]

    def output_shape(self, input_shape):
        """The shape of one example's output (no batch axis)."""
        return abstract_init(self, check_input_shape(input_shape))[1]

    def check(self, params, input_shape, where="network"):
        if not isinstance(params, (list, tuple)) or len(params) != len(self.layers):
            raise TypeError(
                f"{where}: params must be a list with one entry per layer ({len(self.layers)} "
                f"for {_describe(self)}); got "
                + (f"{len(params)} entries" if isinstance(params, (list, tuple))
                   else type(params).__name__)
                + " (build them with net.init(key, input_shape))"
            )
        shape = tuple(input_shape)
        prefix = "" if where == "network" else where + "."
        for i, (layer, p) in enumerate(zip(self.layers, params), 1):
            layer.check_input(shape, f"{prefix}layer {i}")
            shape = layer.check(p, shape, f"{prefix}layer {i}")
        return shape

    # --- forward and backward ---------------------------------------------
    def forward_offsets(self, params, x, key, offsets):
        caches = []
        for i, (layer, p) in enumerate(zip(self.layers, params)):
            x, cache = layer.forward_offsets(p, x, _key(key, i),
                                             None if offsets is None else offsets[i])
            caches.append(cache)
        return x, caches

    def forward(self, params, x, key=None):
        return self.forward_offsets(params, x, key, None)

    def backward_trace(self, params, caches, dy):
        n = len(self.layers)
        grads, cots = [None] * n, [None] * n
        for i in reversed(range(n)):  # for layer in reversed(layers)
            grads[i], dy, cots[i] = self.layers[i].backward_trace(params[i], caches[i], dy)
        return grads, dy, cots

    def backward(self, params, caches, dy):
        grads, dx, _ = self.backward_trace(params, caches, dy)
        return grads, dx

    # --- per example ------------------------------------------------------
    def sq_norms_trace(self, params, caches, cots):
        parts = [layer.sq_norms_trace(p, cache, cot)
                 for layer, p, cache, cot in zip(self.layers, params, caches, cots)]
        parts = [s for s in parts if s is not None]
        return sum(parts[1:], parts[0]) if parts else None

    def per_example_grads_trace(self, params, caches, cots):
        return [layer.per_example_grads_trace(p, cache, cot)
                for layer, p, cache, cot in zip(self.layers, params, caches, cots)]

    def clipping_trace(self, params, caches, cots):
        parts = [layer.clipping_trace(p, cache, cot)
                 for layer, p, cache, cot in zip(self.layers, params, caches, cots)]
        sq = [s for s, _ in parts if s is not None]
        return (sum(sq[1:], sq[0]) if sq else None), lambda c: [f(c) for _, f in parts]


@dataclasses.dataclass(frozen=True, init=False, repr=False)  # Sequential's repr: Residual(...)
class Residual(Sequential):
    """Y = X + f(X), f the ``Sequential`` of the given layers (its output shape must be X's)."""

    def init_with_shape(self, key, input_shape, dtype=jnp.float32):
        params, shape = super().init_with_shape(key, input_shape, dtype)
        self._same_shape(input_shape, shape, "")
        return params, shape

    def init(self, key, input_shape, dtype=jnp.float32):
        return self.init_with_shape(key, input_shape, dtype)

    def check(self, params, input_shape, where="network"):
        shape = super().check(params, input_shape, where)
        self._same_shape(input_shape, shape, f"{where}: ")
        return shape

    def _same_shape(self, input_shape, shape, where):
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"{where}{self!r}: the body maps shape {tuple(input_shape)} to {tuple(shape)}; "
                "y = x + f(x) needs f to keep the shape (end the body with "
                f"Dense({input_shape[-1] if input_shape else 1}) for example)"
            )

    def forward_offsets(self, params, x, key, offsets):
        fx, caches = super().forward_offsets(params, x, key, offsets)
        return x + fx, caches

    def backward_trace(self, params, caches, dy):
        grads, dx_f, cots = super().backward_trace(params, caches, dy)
        return grads, dy + dx_f, cots  # the skip path plus the path through f
