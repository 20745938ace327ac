"""Max and average pooling over windows of channels-last inputs, the backward by hand.

Shapes (1-D; 2-D adds a second spatial axis): X (m, L, C) -> Y (m, T, C),
each channel pooled on its own. ``window`` k, ``stride`` s (default: the
window, so windows tile), padding "VALID" (default), "SAME" (XLA's rule, as
for convolutions), an int, or explicit (lo, hi) pairs, each smaller than the
window (so that every window holds at least one real entry). T =
floor((L + lo + hi - k) / s) + 1; a window that does not tile the input leaves
its last entries unread (their gradient is 0).

With the unfolded windows U[n, t, j, c] = Xp[n, t s + j, c] (j the taps in
row-major order, see :func:`~functional_bp.layers.conv.unfold`):

Max pooling::

    Y[n, t, c] = U[n, t, j*, c],   j* = the first j (row-major) with the largest U[n, t, j, c]
    dX[n, u, c] = sum_{t: t s + j*(n, t, c) = u + lo} G[n, t, c]

Y takes one entry of each window, so each window's cotangent G[n, t, c]
goes to that one entry: its arg-max. Ties: the first of the tied entries in
row-major order (lowest row, then lowest column) wins, alone; the cotangent
is never split, so sum dX = sum G exactly (when no window is all
padding, which the padding rule above guarantees). Padding is -inf: it
never wins.

Average pooling::

    Y[n, t, c] = (1 / N_t) sum_j U[n, t, j, c]
    dX[n, u, c] = sum_{t, j: t s + j = u + lo} G[n, t, c] / N_t

The divisor N_t is the number of real (not padding) entries of window t: with
padding, a window at the border averages only the input it covers (the
padding is neither counted nor summed; for "VALID", N_t = k, or k_h k_w).

Both backward passes are the fold (the adjoint of unfolding) of the
per-window contributions. No parameters.

Example::

    >>> import jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> pool = fl.MaxPool1D(2)
    >>> x = jnp.array([[[1.0], [3.0], [2.0], [2.0], [5.0]]])   # (m=1, L=5, C=1)
    >>> y, cache = pool.forward({}, x)
    >>> y[0, :, 0]
    Array([3., 2.], dtype=float32)
    >>> pool.backward({}, cache, jnp.ones_like(y))[1][0, :, 0]   # tie: the first 2 wins
    Array([0., 1., 1., 0., 0.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from .base import Layer
from .conv import (as_tuple, canonical_padding, check_window, fold, plain_ints, resolve_padding,
                   unfold)


@dataclasses.dataclass(frozen=True)
class _Pool(Layer):
    window: Any
    stride: Any = None
    padding: Any = "VALID"

    ndim = 0

    def __post_init__(self):
        name = type(self).__name__
        for field in ("window", "stride"):
            value = getattr(self, field)
            if value is None:
                continue
            as_tuple(value, self.ndim, f"{name}({field})")
            object.__setattr__(self, field, plain_ints(value))
        padding = canonical_padding(self.padding, self.ndim, f"{name}(padding)")
        object.__setattr__(self, "padding", padding)
        k = as_tuple(self.window, self.ndim, "")
        if isinstance(padding, tuple) and any(lo >= kk or hi >= kk
                                              for (lo, hi), kk in zip(padding, k)):
            raise ValueError(
                f"{name}(padding): each side must be smaller than the window {k} so that "
                f"every window holds an input entry; got {padding!r}"
            )

    def _geometry(self):
        k = as_tuple(self.window, self.ndim, "")
        s = k if self.stride is None else as_tuple(self.stride, self.ndim, "")
        return k, s, (1,) * self.ndim

    def check_input(self, input_shape, where):
        check_window(self, input_shape, where, *self._geometry(), what="window")

    def init(self, key, input_shape, dtype=jnp.float32):
        _, T = check_window(self, input_shape, "init", *self._geometry(), what="window")
        return {}, (*T, input_shape[-1])

    def _pads(self, x_shape):
        return resolve_padding(self.padding, x_shape[1:-1], *self._geometry())


@dataclasses.dataclass(frozen=True)
class _MaxPool(_Pool):
    def forward(self, params, x, key=None):
        k, s, d = self._geometry()
        pads = self._pads(x.shape)
        U = unfold(x, k, s, d, pads, pad_value=-jnp.inf)         # (m, *T, K, C)
        j_star = jnp.argmax(U, axis=-2)                           # the first maximum: ties
        y = jnp.take_along_axis(U, j_star[..., None, :], axis=-2)[..., 0, :]
        return y, (j_star, x.shape)  # the backward needs only where each maximum was

    def backward(self, params, cache, dy):
        j_star, x_shape = cache
        k, s, d = self._geometry()
        K = math.prod(k)
        # Window t's cotangent goes to its arg-max tap alone, then the windows fold back.
        tap = jnp.arange(K).reshape((1,) * (j_star.ndim - 1) + (K, 1))
        onehot = (j_star[..., None, :] == tap).astype(dy.dtype)
        cols = onehot * dy[..., None, :]
        return {}, fold(cols, x_shape[1:-1], k, s, d, self._pads(x_shape))


@dataclasses.dataclass(frozen=True)
class _AvgPool(_Pool):
    def counts(self, sizes):
        """N_t, the real entries of each window, shape (*T, 1): known before tracing (NumPy).

        Per axis, window t covers padded positions t s .. t s + k - 1, of which
        those in lo .. lo + n - 1 are real; N_t is the product over the axes.
        """
        k, s, d = self._geometry()
        pads = resolve_padding(self.padding, sizes, k, s, d)
        N = np.ones((), np.float64)
        for n, kk, ss, (lo, hi) in zip(sizes, k, s, pads):
            t = np.arange((n + lo + hi - kk) // ss + 1)
            per_axis = np.minimum(t * ss + kk, lo + n) - np.maximum(t * ss, lo)
            N = np.multiply.outer(N, per_axis)
        return N[..., None]

    def forward(self, params, x, key=None):
        k, s, d = self._geometry()
        N = self.counts(x.shape[1:-1]).astype(x.dtype)
        y = jnp.sum(unfold(x, k, s, d, self._pads(x.shape)), axis=-2) / N[None]
        return y, x.shape

    def backward(self, params, cache, dy):
        x_shape = cache
        k, s, d = self._geometry()
        N = self.counts(x_shape[1:-1]).astype(dy.dtype)
        # Each of window t's entries gets G[t] / N_t; padding entries fall off in the fold.
        cols = jnp.broadcast_to((dy / N[None])[..., None, :],
                                (*dy.shape[:-1], math.prod(k), dy.shape[-1]))
        return {}, fold(cols, x_shape[1:-1], k, s, d, self._pads(x_shape))


@dataclasses.dataclass(frozen=True)
class MaxPool1D(_MaxPool):
    """Max over windows of a (m, L, C) input; ``MaxPool1D(window, stride=None, padding="VALID")``."""

    ndim = 1


@dataclasses.dataclass(frozen=True)
class MaxPool2D(_MaxPool):
    """Max over (k_h, k_w) windows of a (m, H, W, C) input; ties go to the first in row-major order."""

    ndim = 2


@dataclasses.dataclass(frozen=True)
class AvgPool1D(_AvgPool):
    """Mean over windows of a (m, L, C) input (padding neither summed nor counted)."""

    ndim = 1


@dataclasses.dataclass(frozen=True)
class AvgPool2D(_AvgPool):
    """Mean over (k_h, k_w) windows of a (m, H, W, C) input (padding neither summed nor counted)."""

    ndim = 2
