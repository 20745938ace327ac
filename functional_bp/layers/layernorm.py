"""LayerNorm over the last axis, with a learned scale and shift.

Shapes: X, Y (m, ..., d); scale gamma and bias beta (d,). For each row x
(one example, or one position of an example) of length d::

    mu = (1/d) sum_k x_k,   var = (1/d) sum_k (x_k - mu)^2   (biased)
    r  = 1 / sqrt(var + eps)
    xhat_k = (x_k - mu) r
    y_k    = gamma_k xhat_k + beta_k

Backward. With dy = dJ/dY, the parameters act elementwise::

    dJ/dgamma = sum over rows of dy ⊙ xhat,   dJ/dbeta = sum over rows of dy

and h := dJ/dxhat = dy ⊙ gamma. The Jacobian of xhat in x is not diagonal:
every xhat_j depends on every x_k through mu and r. With
dmu/dx_k = 1/d and dr/dx_k = -r^3 (x_k - mu)/d = -r^2 xhat_k / d::

    dxhat_j/dx_k = r (delta_jk - 1/d) - r xhat_j xhat_k / d

so, by the chain rule dJ/dx_k = sum_j h_j dxhat_j/dx_k, three terms::

    dJ/dx = r (h - mean(h) - xhat ⊙ mean(h ⊙ xhat))

(the scaled cotangent, minus its mean, minus the normalised input times the
mean of their product; the means are over the last axis). The cache holds
xhat and r, nothing else.

Per example i (rows t of example i): dL_i/dgamma = sum_t dy_it ⊙ xhat_it and
dL_i/dbeta = sum_t dy_it, so ||g_i||^2 is the sum of their squared norms.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> ln = fl.LayerNorm()
    >>> params, _ = ln.init(None, (4,))
    >>> y, cache = ln.forward(params, jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    >>> float(jnp.round(y.mean(), 6)), float(jnp.round((y ** 2).mean(), 4))
    (0.0, 1.0)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .base import Layer, flag, real_number, sum_rows


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalise the last axis to mean 0 and variance 1, then y = gamma ⊙ xhat + beta.

    With ``bias=False`` there is no beta: params ``{"scale"}`` only, y = gamma ⊙ xhat.
    """

    eps: float = 1e-5
    bias: bool = True

    def __repr__(self):  # bias shown only when off
        return f"LayerNorm(eps={self.eps!r}" + (")" if self.bias else ", bias=False)")

    def __post_init__(self):
        object.__setattr__(self, "eps", real_number(
            "LayerNorm(eps)", self.eps, "a finite number > 0 added to the variance (default "
            "1e-5)", lambda v: v > 0))
        object.__setattr__(self, "bias", flag("LayerNorm(bias)", self.bias))

    def init(self, key, input_shape, dtype=jnp.float32):
        d = input_shape[-1]
        params = {"scale": jnp.ones((d,), dtype)}
        if self.bias:
            params["bias"] = jnp.zeros((d,), dtype)
        return params, tuple(input_shape)

    def check_input(self, input_shape, where):
        if len(input_shape) == 0:
            raise ValueError(f"{where} (LayerNorm): needs inputs with a feature axis; got scalars")
        if input_shape[-1] == 1:  # xhat = 0 for every input: y = beta, a constant
            raise ValueError(
                f"{where} (LayerNorm): normalises the last axis, which has width 1 here (inputs "
                f"(m, {', '.join(map(str, input_shape))})): every value would become 0 and the "
                "output the bias alone, whatever the input; put LayerNorm where the last axis "
                "is wider, or drop it"
            )

    def forward(self, params, x, key=None):
        row = (1,) * (x.ndim - 1) + (-1,)
        mu = jnp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        r = 1 / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + self.eps)
        xhat = xc * r
        y = params["scale"].reshape(row) * xhat
        if self.bias:
            y = y + params["bias"].reshape(row)
        return y, (xhat, r)

    def backward(self, params, cache, dy):
        xhat, r = cache
        d = xhat.shape[-1]
        grads = {"scale": jnp.sum((dy * xhat).reshape(-1, d), axis=0)}  # sum dy ⊙ xhat
        if self.bias:
            grads["bias"] = jnp.sum(dy.reshape(-1, d), axis=0)           # sum dy
        h = dy * params["scale"].reshape((1,) * (dy.ndim - 1) + (-1,))   # dJ/dxhat
        dx = r * (h - jnp.mean(h, axis=-1, keepdims=True)
                  - xhat * jnp.mean(h * xhat, axis=-1, keepdims=True))
        return grads, dx

    def sq_norms(self, params, cache, dy):
        xhat, _ = cache
        m, d = dy.shape[0], dy.shape[-1]
        dscale = jnp.sum((dy * xhat).reshape(m, -1, d), axis=1)
        if not self.bias:
            return sum_rows(dscale)
        dbias = jnp.sum(dy.reshape(m, -1, d), axis=1)
        return sum_rows(dscale) + sum_rows(dbias)
