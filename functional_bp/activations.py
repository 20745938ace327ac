"""Activations: each one is a pair (g, g') with the derivative written by hand.

Every function here maps an array ``z`` of any shape to an array of the same
shape and dtype. The derivative ``dg`` is the elementwise derivative g'(z); the
backward pass multiplies by it (``delta = (...) * g'(z)``), so nothing in the
library's backward path ever calls ``jax.grad``.

Conventions at kinks (chosen so they also equal what ``jax.grad`` gives for the
forward written with ``jnp.where``): relu'(0) = 0, leaky_relu'(0) = 1.

All pairs are safe for |z| up to 1e3 in float32: no inf or NaN where the true
value is finite (``sigmoid`` uses ``lax.logistic``, ``softplus`` uses
``logaddexp``, ``elu`` never evaluates ``exp`` of a large positive number, even
in the branch a ``where`` discards).

A user-supplied activation is an :class:`Activation` (or a plain ``(g, dg)``
pair of callables, which is wrapped into one)::

    >>> import jax.numpy as jnp
    >>> import functional_bp as fbp
    >>> cube = fbp.Activation(name="cube", g=lambda z: z**3, dg=lambda z: 3 * z**2)
    >>> float(cube.dg(jnp.asarray(2.0)))
    12.0

Keep the same object (or the same functions) between calls: activations are
static configuration, so new function objects mean a new compilation.

A user's ``dg`` must be elementwise: return an array of z's shape and dtype
(``jnp.ones_like(z)``, not ``1.0``). Every public function checks this while
tracing, before anything is computed, and the error names the layer, e.g.
``layer 2 (activation 'cube')``: a scalar or an (m,) vector would otherwise
broadcast into wrong gradients.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

Array = jax.Array


class Activation(NamedTuple):
    """An activation function g and its hand-written derivative g'.

    Attributes:
      name: a label used in error messages and reports.
      g: ``z -> g(z)``, elementwise.
      dg: ``z -> g'(z)``, elementwise, written by hand.
    """

    name: str
    g: Callable[[Array], Array]
    dg: Callable[[Array], Array]


# --- identity -------------------------------------------------------------
def identity(z):
    return z


def identity_prime(z):
    return jnp.ones_like(z)


# --- sigmoid: g = 1 / (1 + e^-z), g' = g (1 - g) --------------------------
def sigmoid(z):
    return jax.lax.logistic(z)


def sigmoid_prime(z):
    s = jax.lax.logistic(z)
    return s * (1 - s)


# --- tanh: g' = 1 - tanh^2 -------------------------------------------------
def tanh(z):
    return jnp.tanh(z)


def tanh_prime(z):
    t = jnp.tanh(z)
    return 1 - t * t


# --- relu: g = max(z, 0), g'(0) = 0 ----------------------------------------
def relu(z):
    return jnp.where(z > 0, z, jnp.zeros_like(z))


def relu_prime(z):
    return (z > 0).astype(z.dtype)


# --- leaky_relu: g = z if z >= 0 else 0.01 z, g'(0) = 1 --------------------
LEAKY_SLOPE = 0.01


def leaky_relu(z):
    return jnp.where(z >= 0, z, LEAKY_SLOPE * z)


def leaky_relu_prime(z):
    return jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, LEAKY_SLOPE))


# --- softplus: g = log(1 + e^z), g' = sigmoid(z) ---------------------------
def softplus(z):
    return jnp.logaddexp(z, jnp.zeros_like(z))


def softplus_prime(z):
    return jax.lax.logistic(z)


# --- elu: g = z if z > 0 else e^z - 1, g' = 1 if z > 0 else e^z -----------
def _nonpositive_part(z):
    # z where z <= 0, else 0: exp() below never sees a large positive number,
    # so the branch a `where` discards cannot overflow (no inf * 0 = NaN).
    return jnp.where(z > 0, jnp.zeros_like(z), z)


def elu(z):
    return jnp.where(z > 0, z, jnp.expm1(_nonpositive_part(z)))


def elu_prime(z):
    return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(_nonpositive_part(z)))


# --- gelu (exact): g = z Phi(z), g' = Phi(z) + z phi(z) ---------------------
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(z):
    # Phi(z) = erfc(-z / sqrt 2) / 2: accurate in the left tail too.
    return 0.5 * erfc(-z * _INV_SQRT2)


def gelu(z):
    return z * _normal_cdf(z)


def gelu_prime(z):
    normal_pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return _normal_cdf(z) + z * normal_pdf


# --- gelu_tanh: the tanh approximation of GPT-2 (nanoGPT's NewGELU, llm.c) ---
#   g  = (1/2) z (1 + tanh u),  u = sqrt(2/pi) (z + 0.044715 z^3)
#   g' = (1/2) (1 + tanh u) + (1/2) z (1 - tanh^2 u) du/dz,
#        du/dz = sqrt(2/pi) (1 + 3 * 0.044715 z^2)
# Written with s = (1 + tanh u)/2 = sigmoid(2u) and 1 - tanh^2 u = 4 s (1 - s), so
# the left tail (1 + tanh u near 0) loses no digits to cancellation:
#   g = z s,   g' = s + 2 z s (1 - s) du/dz
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def _gelu_tanh_2u(z):
    return 2 * _SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z)


def gelu_tanh(z):
    return z * jax.lax.logistic(_gelu_tanh_2u(z))


def gelu_tanh_prime(z):
    two_u = _gelu_tanh_2u(z)
    s, one_minus_s = jax.lax.logistic(two_u), jax.lax.logistic(-two_u)
    du_dz = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * z * z)
    return s + 2 * z * s * one_minus_s * du_dz


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", identity, identity_prime),
    "sigmoid": Activation("sigmoid", sigmoid, sigmoid_prime),
    "tanh": Activation("tanh", tanh, tanh_prime),
    "relu": Activation("relu", relu, relu_prime),
    "leaky_relu": Activation("leaky_relu", leaky_relu, leaky_relu_prime),
    "softplus": Activation("softplus", softplus, softplus_prime),
    "elu": Activation("elu", elu, elu_prime),
    "gelu": Activation("gelu", gelu, gelu_prime),
    "gelu_tanh": Activation("gelu_tanh", gelu_tanh, gelu_tanh_prime),
}
"""The built-in activations by name."""


def get_activation(spec, *, layer: int | None = None) -> Activation:
    """Turn a name, an :class:`Activation` or a ``(g, dg)`` pair into an Activation.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
      TypeError: anything else.
    """
    where = "" if layer is None else f"layer {layer}: "
    if isinstance(spec, Activation):
        if not (callable(spec.g) and callable(spec.dg)):
            raise TypeError(f"{where}Activation {spec.name!r} needs callable g and dg")
        return spec
    if isinstance(spec, str):
        try:
            return ACTIVATIONS[spec]
        except KeyError:
            raise ValueError(
                f"{where}unknown activation {spec!r}; valid names are "
                f"{sorted(ACTIVATIONS)}, or pass Activation(name, g, dg)"
            ) from None
    if isinstance(spec, tuple) and len(spec) == 2 and all(map(callable, spec)):
        g, dg = spec
        return Activation(getattr(g, "__name__", "custom"), g, dg)
    raise TypeError(
        f"{where}an activation must be a name from {sorted(ACTIVATIONS)}, an "
        f"Activation(name, g, dg), or a (g, dg) pair of callables; got {spec!r}"
    )
