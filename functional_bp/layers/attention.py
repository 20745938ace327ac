"""Attention: multi-head scaled dot-product attention, its backward by hand.

Shapes: X (m, T, 3C) laid out as [Q | K | V] along the last axis, each
(m, T, C), C = H d for H heads of size d; head h uses columns h d .. (h+1) d - 1
of each of Q, K and V (nanoGPT's ``c_attn(x).split(C)`` then
``.view(B, T, H, d)``). Y (m, T, C): the heads' outputs side by side. The
layer has no parameters: the projections are the Dense layers around it.

Forward, per example and head (Q_h, K_h, V_h: T x d)::

    S   = Q_h K_h^T / sqrt(d)                     (T x T scores)
    S[t, t'] = -inf for t' > t   when causal      (a position sees only the past)
    P   = softmax(S) over t'                      (rows shifted by their maximum)
    O_h = P V_h                                   (T x d)

Backward, given dO_h = dJ/dO_h, undoing the forward lines in reverse:

- ``O_h = P V_h`` (a matrix product, the Dense rule): dV_h = P^T dO_h and
  dP = dO_h V_h^T.
- ``P = softmax(S)``, row by row: dP_j/dS_k = P_j (delta_jk - P_k), so the
  chain rule sum_j dP_j P_j (delta_jk - P_k) gives::

      dS = P ⊙ (dP - rowsum(dP ⊙ P))

  A masked entry has P = 0 exactly, so its dS is exactly 0: the mask needs no
  line of its own in the backward.
- ``S = Q_h K_h^T / sqrt(d)`` (the Dense rule on both factors):
  dQ_h = dS K_h / sqrt(d) and dK_h = dS^T Q_h / sqrt(d).

dJ/dX is [dQ | dK | dV] in the input's layout.

Memory: the cache holds the input X (m, T, 3C) and the probabilities P,
m H T^2 numbers. P is kept because three of the backward's products (dV, the
row sums, dS) need it and recomputing it would cost a second Q K^T and
softmax; at nanoGPT's CPU shape (m 12, H 4, T 64) that is 197k floats, at
T 1024 with 12 heads about 12.6M per example. Nothing else is kept: S and the
row maxima are not needed once P is known.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> att = fl.Attention(num_heads=2)
    >>> x = jax.random.normal(jax.random.key(0), (1, 3, 12))   # C = 4, two heads of 2
    >>> y, (x_cached, P) = att.forward({}, x)
    >>> y.shape, P.shape                                         # P: (m, H, T, T)
    ((1, 3, 4), (1, 2, 3, 3))
    >>> bool(P[0, 0, 0, 1] == 0)                                  # causal: t=0 sees only itself
    True
    >>> _, dx = att.backward({}, (x_cached, P), jnp.ones((1, 3, 4)))
    >>> dx.shape
    (1, 3, 12)
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from .base import Layer, flag, positive_int


@dataclasses.dataclass(frozen=True)
class Attention(Layer):
    """Multi-head attention on [Q | K | V] inputs (m, T, 3C) to outputs (m, T, C).

    Args:
      num_heads: H; C must be a multiple of it (head size d = C / H).
      causal: mask the future (position t attends to t' <= t), as a GPT does.
    """

    num_heads: int
    causal: bool = True

    def __post_init__(self):
        object.__setattr__(self, "num_heads", positive_int("Attention(num_heads)", self.num_heads))
        object.__setattr__(self, "causal", flag("Attention(causal)", self.causal))

    def init(self, key, input_shape, dtype=jnp.float32):
        return {}, (*input_shape[:-1], input_shape[-1] // 3)

    def check_input(self, input_shape, where):
        shape = ", ".join(map(str, input_shape))
        if len(input_shape) != 2:
            raise ValueError(f"{where} ({self!r}): takes (m, T, 3C) inputs [Q | K | V]; got "
                             f"(m, {shape}) (put Dense(3 * C) before it)")
        width = input_shape[-1]
        if width % 3 or (width // 3) % self.num_heads:
            C = width / 3
            raise ValueError(
                f"{where} ({self!r}): the input's last axis is [Q | K | V], 3C wide, with C a "
                f"multiple of num_heads={self.num_heads}; got width {width} (C = {C:g}): make "
                f"the Dense before it 3 * C wide with C divisible by {self.num_heads}, or change "
                "num_heads")

    def _heads(self, t):
        """(m, T, C) -> (m, T, H, d): head h is columns h d .. (h+1) d - 1."""
        m, T, C = t.shape
        return t.reshape(m, T, self.num_heads, C // self.num_heads)

    def forward(self, params, x, key=None):
        q, k, v = map(self._heads, jnp.split(x, 3, axis=-1))
        m, T, H, d = q.shape
        S = jnp.einsum("mthd,mshd->mhts", q, k) / math.sqrt(d)      # S = Q K^T / sqrt(d)
        if self.causal:
            S = jnp.where(jnp.tril(jnp.ones((1, 1, T, T), bool)), S, -jnp.inf)  # t' > t: -inf
        E = jnp.exp(S - jnp.max(S, axis=-1, keepdims=True))         # shifted: no overflow
        P = E / jnp.sum(E, axis=-1, keepdims=True)                  # P = softmax(S)
        O = jnp.einsum("mhts,mshd->mthd", P, v)                     # O = P V
        return O.reshape(m, T, H * d), (x, P)

    def backward(self, params, cache, dy):
        x, P = cache
        q, k, v = map(self._heads, jnp.split(x, 3, axis=-1))
        dO = self._heads(dy)
        m, T, H, d = q.shape
        # O = P V
        dV = jnp.einsum("mhts,mthd->mshd", P, dO)                    # dV = P^T dO
        dP = jnp.einsum("mthd,mshd->mhts", dO, v)                    # dP = dO V^T
        # P = softmax(S)  (masked entries: P = 0, so dS = 0)
        dS = P * (dP - jnp.sum(dP * P, axis=-1, keepdims=True))      # P ⊙ (dP - rowsum(dP ⊙ P))
        # S = Q K^T / sqrt(d)
        dQ = jnp.einsum("mhts,mshd->mthd", dS, k) / math.sqrt(d)     # dQ = dS K / sqrt(d)
        dK = jnp.einsum("mhts,mthd->mshd", dS, q) / math.sqrt(d)     # dK = dS^T Q / sqrt(d)
        dx = jnp.concatenate([t.reshape(m, T, H * d) for t in (dQ, dK, dV)], axis=-1)
        return {}, dx                                                # [dQ | dK | dV]
