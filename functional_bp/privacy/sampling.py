"""Poisson sampling for DP-SGD: the step's key, the mask, fixed-shape chunks, their capacity.

At every step each of the N training examples joins the batch independently
with probability q. The sampled indices are laid out in chunks of a fixed
``capacity`` (rows beyond the sampled size get weight 0), chosen so that a
second chunk is needed with probability at most 1e-6 per step
(:func:`poisson_capacity`); when it is needed it is processed, never dropped.
Everything random in step t is a pure function of ``jax.random.fold_in(key,
t)`` (:func:`step_key`). Needs only JAX.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import count, probability, real

OVERFLOW_PROBABILITY = 1e-6


def poisson_capacity(num_examples: int, sampling_probability: float,
                     overflow_probability: float = OVERFLOW_PROBABILITY) -> int:
    """The smallest c with P(|B| > c) <= ``overflow_probability``, |B| ~ Binomial(N, q).

    The binomial tail is summed exactly (log-pmf by the ratio
    pmf(k+1)/pmf(k) = (N-k)/(k+1) q/(1-q)) over k up to mean + 40 sd + 50;
    the mass beyond is below 1e-30 (Bernstein's inequality) and is counted
    as if it were all there. A step whose sample is larger than the capacity
    processes the rest in further chunks (:func:`private_grad`): the
    capacity sets the compiled shape and the cost, never which examples count.

    Example::

        >>> poisson_capacity(1437, 32 / 1437), poisson_capacity(60000, 256 / 60000)
        (62, 335)
    """
    N = count(num_examples, "num_examples")
    q = probability(sampling_probability)
    p = real(overflow_probability, "overflow_probability")
    if not 0 < p < 1:
        raise ValueError(f"overflow_probability must be in (0, 1); got {p}")
    if q == 1:
        return N
    mean, sd = N * q, math.sqrt(N * q * (1 - q))
    lo = int(math.floor(mean))
    hi = min(N, int(math.ceil(mean + 40 * sd + 50)))
    log_pmf_lo = (math.lgamma(N + 1) - math.lgamma(lo + 1) - math.lgamma(N - lo + 1)
                  + lo * math.log(q) + (N - lo) * math.log1p(-q))
    k = np.arange(lo, hi, dtype=np.float64)
    steps = np.log(N - k) - np.log(k + 1) + math.log(q) - math.log1p(-q)
    log_pmf = np.concatenate([[log_pmf_lo], log_pmf_lo + np.cumsum(steps)])  # k = lo..hi
    pmf = np.exp(log_pmf)
    beyond = 1e-30 if hi < N else 0.0
    # tail[j] = P(|B| > lo + j) = sum of pmf(k) for k = lo+j+1 .. hi, plus what lies beyond hi
    tail = np.concatenate([np.cumsum(pmf[::-1])[::-1][1:], [0.0]]) + beyond
    c = lo + int(np.argmax(tail <= p))
    return max(1, min(c, N))


class PoissonBatch(NamedTuple):
    """One chunk of a step's Poisson sample.

    Attributes:
      indices: (capacity,) int32 example indices; positions past the sample
        hold index 0 (any valid index) with weight 0.
      weights: (capacity,) 1 for a sampled example, 0 for padding.
      size: the number |B| of examples sampled in this step (all chunks).
    """

    indices: jax.Array
    weights: jax.Array
    size: jax.Array


def step_key(key, step):
    """The key of training step ``step``: ``jax.random.fold_in(key, step)``.

    Everything random in a step (its sample, its noise) comes from this key,
    so a run resumed at step t draws exactly what the uninterrupted run drew.

    Example::

        >>> import jax
        >>> k = jax.random.key(0)
        >>> bool((jax.random.key_data(step_key(k, 3)) == jax.random.key_data(step_key(k, 3))).all())
        True
    """
    return jax.random.fold_in(key, step)


def poisson_mask(key, num_examples: int, sampling_probability) -> jax.Array:
    """(N,) bool: example i is in the batch, independently with probability q.

    Example::

        >>> import jax
        >>> poisson_mask(jax.random.key(0), 5, 0.5).shape
        (5,)
    """
    return jax.random.bernoulli(key, sampling_probability, (num_examples,))


def sampled_order(mask, capacity):
    """(indices of the sampled examples in increasing order, padded with 0; |B|)."""
    n = mask.shape[0]
    order = jnp.nonzero(mask, size=n + capacity, fill_value=0)[0].astype(jnp.int32)
    return order, jnp.sum(mask, dtype=jnp.int32)


def chunk_rows(order, size, chunk, capacity, dtype):
    start = chunk * capacity
    indices = jax.lax.dynamic_slice(order, (start,), (capacity,))
    weights = (start + jnp.arange(capacity) < size).astype(dtype)
    return indices, weights


def num_chunks(size, capacity):
    """ceil(|B| / capacity), at least 1: the chunks a step's sample fills."""
    return jnp.maximum(1, (size + capacity - 1) // capacity)


@partial(jax.jit, static_argnames=("num_examples", "capacity", "dtype"))
def poisson_batch(key, num_examples: int, sampling_probability, capacity: int, chunk=0,
                  dtype=jnp.float32) -> PoissonBatch:
    """Chunk ``chunk`` of the Poisson sample drawn from ``key``, as fixed-shape arrays.

    The sample is :func:`poisson_mask` ``(key, N, q)``; its examples, in
    increasing index order, fill chunks of ``capacity`` rows; chunk j holds
    sampled examples j*capacity .. (j+1)*capacity - 1 with weight 1 and
    padding with weight 0. Chunk 0 is the whole batch except with
    probability ``P(|B| > capacity)`` (see :func:`poisson_capacity`);
    :func:`num_chunks` says how many chunks the sample fills.

    Args:
      key: the step's key (see :func:`step_key`).
      num_examples: N (static).
      sampling_probability: q.
      capacity: rows per chunk (static).
      chunk: which chunk (default 0).
      dtype: the weights' dtype (static).

    Returns:
      :class:`PoissonBatch` ``(indices, weights, size)``.

    Example::

        >>> import jax
        >>> b = poisson_batch(jax.random.key(0), 100, 0.1, 20)
        >>> b.indices.shape, b.weights.shape, int(b.weights.sum()) == min(int(b.size), 20)
        ((20,), (20,), True)
    """
    mask = poisson_mask(key, num_examples, sampling_probability)
    order, size = sampled_order(mask, capacity)
    indices, weights = chunk_rows(order, size, chunk, capacity, dtype)
    return PoissonBatch(indices, weights, size)

