"""Differentially private training: the configuration, Poisson sampling, the accountant, the step.

DP-SGD with Poisson subsampling. At every step each of the N training
examples joins the batch independently with probability q; the step's
gradient is::

    g~ = ( sum_{i in batch} clip(g_i, C) + N(0, sigma^2 C^2 I) ) / (q N)

with clip(g, C) = g min(1, C / ||g||) and g_i example i's own gradient. The
privacy loss of T such steps is what Google's ``dp-accounting`` package
computes for the event ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), T)``
(add-or-remove-one neighbouring datasets), with its RDP or PLD accountant.

Design decisions (each is documented where it is implemented):

- **Division by the expected batch size q N**, not by the sampled size: the
  sampled size |B| depends on who is in the dataset, so dividing by it would
  release it without noise and change the sensitivity; q N is public. The
  estimate is unbiased for the mean clipped gradient.
- **A fixed compiled shape**: the sampled indices are laid out in chunks of a
  fixed ``capacity`` (rows beyond the sampled size get weight 0); the
  capacity is chosen so that a second chunk is needed with probability at
  most 1e-6 per step, and when it is needed it is processed, never dropped
  (:func:`private_grad` loops over ``ceil(|B| / capacity)`` chunks).
- **Keys**: everything random in step t is a pure function of
  ``jax.random.fold_in(key, t)`` (:func:`step_key`), so a resumed run redraws
  the same batches and the same noise.
- **delta** defaults to the largest power of ten not above 1 / (10 N)
  (:func:`default_delta`); a delta >= 1/N is refused: a mechanism that
  publishes one random example in the clear already meets (0, 1/N)-DP, so
  such a delta promises nothing.
- **Shuffled fixed-size batches** are allowed only without accounting: the
  Poisson analysis does not cover them, and reporting its epsilon for them
  would claim a guarantee the run does not have.

``dp-accounting`` is imported only by the functions that account (the ``dp``
extra: ``pip install 'functional_bp[dp]'``); sampling and the private step
need only JAX.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate, per_example

SAMPLINGS = ("poisson", "shuffle")
ACCOUNTANTS = ("rdp", "pld")
OVERFLOW_PROBABILITY = 1e-6


# ----------------------------------------------------------------- checks

def _real(value, name) -> float:
    """``value`` as a Python float, or a TypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} "
                        f"({type(value).__name__})")
    return float(value)


def _count(value, name, *, low=1) -> int:
    """``value`` as a Python int >= ``low``, or a clear error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    return int(value)


def _probability(q) -> float:
    q = _real(q, "sampling_probability")
    if not 0 < q <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1]; got {q}: it is the expected "
                         "batch size over the number of training examples")
    return q


def _check_delta(delta, num_examples) -> float:
    delta = _real(delta, "delta")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); got {delta}")
    if num_examples is not None and delta >= 1 / num_examples:
        raise ValueError(
            f"delta={delta:g} is not below 1/N = 1/{num_examples} = {1 / num_examples:.3g}: "
            "publishing one random training example in the clear already meets "
            f"(0, 1/N)-DP, so this delta promises nothing; pass a smaller delta "
            f"(e.g. the default {default_delta(num_examples):g}) or leave delta=None"
        )
    return delta


def _dp_accounting():
    """The ``dp_accounting`` module, or an ImportError that says how to install it."""
    try:
        import dp_accounting
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "privacy accounting needs the dp-accounting package, which is the 'dp' extra: "
            "pip install 'functional_bp[dp]' (or pip install dp-accounting)"
        ) from err
    return dp_accounting


# ----------------------------------------------------------------- configuration

def default_delta(num_examples: int) -> float:
    """The default delta: the largest power of ten not above 1 / (10 N).

    delta is the probability with which the epsilon guarantee may fail; it must
    be well below 1/N (see the module docstring). N = 1437 gives 1e-5,
    N = 60000 gives 1e-6.

    Example::

        >>> default_delta(1437), default_delta(60000), default_delta(1000)
        (1e-05, 1e-06, 0.0001)
    """
    n = _count(num_examples, "num_examples")
    exponent = 0
    while 10**exponent < 10 * n:  # integers: exact at powers of ten
        exponent += 1
    return 10.0**-exponent


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """What the user asks for: clipping, noise (or a target epsilon), delta, sampling.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` is given. The
    configuration is checked when it is made; the checks that need the
    dataset (delta < 1/N) and the calibration of the noise happen in
    :meth:`plan`.

    Args:
      clip_norm: C, finite and > 0: each example's gradient is scaled to norm
        at most C, which bounds one example's influence on the sum.
      noise_multiplier: sigma >= 0, the noise standard deviation in units of C.
        0 (clipping only) is allowed only with ``accountant=None``: zero noise
        has no finite epsilon.
      target_epsilon: epsilon > 0 to reach after the planned number of steps;
        sigma is then calibrated by :func:`calibrate_noise_multiplier`.
      delta: in (0, 1/N); None means :func:`default_delta`. Not allowed
        without an accountant (it would have no effect).
      sampling: ``"poisson"`` (default: the sampling the accountant's analysis
        assumes) or ``"shuffle"`` (fixed-size batches of a shuffled epoch, not
        covered by that analysis, hence only with ``accountant=None``).
      accountant: ``"rdp"`` (default), ``"pld"`` (tighter, slower), or None for
        no accounting (no privacy claim is made).

    Raises:
      TypeError, ValueError: any configuration that would silently break or
        misstate the guarantee (see the module docstring).

    Example::

        >>> DPConfig(clip_norm=1.0, noise_multiplier=1.1).sampling
        'poisson'
        >>> DPConfig(clip_norm=1.0, noise_multiplier=0.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: noise_multiplier=0 with accountant='rdp': zero noise has no finite epsilon, ...
    """

    clip_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    sampling: str = "poisson"
    accountant: str | None = "rdp"

    def __post_init__(self):
        C = _real(self.clip_norm, "clip_norm")
        if not (C > 0 and math.isfinite(C)):
            raise ValueError(f"clip_norm must be finite and > 0; got {C}: the noise is "
                             "calibrated to the clip norm, so an infinite or zero C has no "
                             "guarantee; pass e.g. clip_norm=1.0")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}; got {self.sampling!r}")
        if self.accountant is not None and self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS} or None; "
                             f"got {self.accountant!r}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            given = "both" if self.noise_multiplier is not None else "neither"
            raise ValueError(f"pass exactly one of noise_multiplier=sigma and "
                             f"target_epsilon=epsilon; got {given}")
        if self.noise_multiplier is not None:
            sigma = _real(self.noise_multiplier, "noise_multiplier")
            if not (sigma >= 0 and math.isfinite(sigma)):
                raise ValueError(f"noise_multiplier must be finite and >= 0; got {sigma}")
            if sigma == 0 and self.accountant is not None:
                raise ValueError(
                    f"noise_multiplier=0 with accountant={self.accountant!r}: zero noise has no "
                    "finite epsilon, so there is nothing to account; pass noise_multiplier > 0, "
                    "or accountant=None for clipping without a privacy claim"
                )
        if self.target_epsilon is not None:
            eps = _real(self.target_epsilon, "target_epsilon")
            if not (eps > 0 and math.isfinite(eps)):
                raise ValueError(f"target_epsilon must be finite and > 0; got {eps}")
            if self.accountant is None:
                raise ValueError("target_epsilon needs an accountant to calibrate the noise; "
                                 "pass accountant='rdp' or 'pld', or a noise_multiplier")
        if self.delta is not None:
            if self.accountant is None:
                raise ValueError("delta is given but accountant=None: without accounting it "
                                 "has no effect; pass accountant='rdp' or 'pld', or drop delta")
            _check_delta(self.delta, None)
        if self.sampling == "shuffle" and self.accountant is not None:
            raise ValueError(
                f"sampling='shuffle' with accountant={self.accountant!r}: the accountant "
                "analyses Poisson subsampling, and its epsilon does not hold for shuffled "
                "fixed-size batches; use sampling='poisson', or accountant=None (no privacy "
                "claim)"
            )

    def plan(self, *, num_examples: int, batch_size: int, steps: int,
             capacity: int | None = None) -> "DPPlan":
        """Resolve the configuration for a dataset and a run: delta, sigma, q, capacity, epsilon.

        Args:
          num_examples: N, the number of training examples.
          batch_size: the expected batch size q N (Poisson) or the batch size
            (shuffle); 1 <= batch_size <= N.
          steps: the number of training steps T planned (the calibration
            target for ``target_epsilon``).
          capacity: rows per compiled chunk; None: :func:`poisson_capacity`.

        Returns:
          A :class:`DPPlan`.

        Example::

            >>> p = DPConfig(clip_norm=1.0, noise_multiplier=1.1).plan(
            ...     num_examples=1437, batch_size=32, steps=450)
            >>> p.delta, p.sampling_probability == 32 / 1437, round(p.epsilon(), 2)
            (1e-05, True, 2.75)
        """
        N = _count(num_examples, "num_examples")
        m = _count(batch_size, "batch_size")
        if m > N:
            raise ValueError(f"batch_size={m} is larger than num_examples={N}")
        T = _count(steps, "steps")
        q = m / N
        delta = None
        if self.accountant is not None:
            delta = default_delta(N) if self.delta is None else _check_delta(self.delta, N)
        sigma = self.noise_multiplier
        if sigma is None:
            sigma = calibrate_noise_multiplier(self.target_epsilon, delta=delta, steps=T,
                                               sampling_probability=q,
                                               accountant=self.accountant)
        if self.sampling == "shuffle":
            if capacity is not None and capacity != m:
                raise ValueError(f"sampling='shuffle' has batches of exactly batch_size={m} "
                                 f"rows; got capacity={capacity}")
            capacity = m
        elif capacity is None:
            capacity = poisson_capacity(N, q)
        else:
            capacity = min(_count(capacity, "capacity"), N)
        return DPPlan(clip_norm=float(self.clip_norm), noise_multiplier=float(sigma),
                      delta=delta, delta_is_default=self.delta is None and delta is not None,
                      sampling=self.sampling, accountant=self.accountant, num_examples=N,
                      batch_size=m, steps=T, capacity=capacity,
                      target_epsilon=self.target_epsilon)


@dataclasses.dataclass(frozen=True)
class DPPlan:
    """A resolved DP configuration: everything a private run uses, fixed and hashable.

    Made by :meth:`DPConfig.plan`. Hashable, so it can be a static argument
    of ``jax.jit``; :meth:`as_dict` is what goes into metrics and checkpoints.
    """

    clip_norm: float
    noise_multiplier: float
    delta: float | None
    delta_is_default: bool
    sampling: str
    accountant: str | None
    num_examples: int
    batch_size: int
    steps: int
    capacity: int
    target_epsilon: float | None = None

    @property
    def sampling_probability(self) -> float:
        """q = batch_size / N (Poisson: each example's chance to be in a step's batch)."""
        return self.batch_size / self.num_examples

    @property
    def denominator(self) -> int:
        """What the noisy sum is divided by: the expected batch size q N = ``batch_size``."""
        return self.batch_size

    @property
    def noise_std(self) -> float:
        """The standard deviation of the noise on each coordinate of the step: sigma C / (q N)."""
        return self.noise_multiplier * self.clip_norm / self.denominator

    def epsilon(self, steps: int | None = None) -> float:
        """epsilon at ``delta`` after ``steps`` steps (default: the planned ``steps``).

        Raises ValueError when the plan has no accountant.
        """
        if self.accountant is None:
            raise ValueError("this plan has accountant=None: it makes no privacy claim; "
                             "make the DPConfig with accountant='rdp' or 'pld'")
        return epsilon(self.steps if steps is None else steps,
                       sampling_probability=self.sampling_probability,
                       noise_multiplier=self.noise_multiplier, delta=self.delta,
                       accountant=self.accountant)

    def describe(self) -> str:
        """One line for logs and summaries.

        Example::

            >>> DPConfig(clip_norm=1.0, noise_multiplier=1.1).plan(
            ...     num_examples=1437, batch_size=32, steps=450).describe()
            'DP-SGD: clip 1, sigma 1.1, Poisson q=0.02227 (expected batch 32, capacity 62), 450 steps, epsilon 2.75 at delta 1e-05 (default: the largest power of ten <= 1/(10 N)), rdp accountant'
        """
        head = (f"DP-SGD: clip {self.clip_norm:g}, sigma {self.noise_multiplier:.4g}, ")
        if self.sampling == "poisson":
            head += (f"Poisson q={self.sampling_probability:.4g} (expected batch "
                     f"{self.batch_size}, capacity {self.capacity}), ")
        else:
            head += f"shuffled batches of {self.batch_size}, "
        head += f"{self.steps} steps, "
        if self.accountant is None:
            return head + "no accounting (no privacy claim)"
        note = " (default: the largest power of ten <= 1/(10 N))" if self.delta_is_default else ""
        return (head + f"epsilon {self.epsilon():.3g} at delta {self.delta:g}{note}, "
                f"{self.accountant} accountant")

    def as_dict(self) -> dict:
        """The plan as plain numbers and strings (JSON-ready)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------- accounting

def dp_event(sampling_probability: float, noise_multiplier: float, steps: int):
    """The ``dp_accounting`` event of ``steps`` Poisson-sampled Gaussian steps.

    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``.

    Example::

        >>> type(dp_event(0.01, 1.0, 100)).__name__
        'SelfComposedDpEvent'
    """
    dpa = _dp_accounting()
    return dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(sampling_probability, dpa.GaussianDpEvent(noise_multiplier)),
        steps)


def _make_accountant(name):
    dpa = _dp_accounting()
    if name == "rdp":
        return dpa.rdp.RdpAccountant()
    if name == "pld":
        return dpa.pld.PLDAccountant()
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {name!r}")


def epsilon(steps: int, *, sampling_probability: float, noise_multiplier: float,
            delta: float, accountant: str = "rdp") -> float:
    """epsilon of DP-SGD after ``steps`` steps, at ``delta``, from ``dp-accounting``.

    The event is :func:`dp_event` (add-or-remove-one neighbours); ``"rdp"``
    is ``dp_accounting.rdp.RdpAccountant()`` and ``"pld"`` is
    ``dp_accounting.pld.PLDAccountant()``, both with their default settings.

    Args:
      steps: T >= 0 (0 gives 0).
      sampling_probability: q in (0, 1].
      noise_multiplier: sigma > 0 (0 is refused: its epsilon is infinite).
      delta: in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.

    Example::

        >>> round(epsilon(450, sampling_probability=32 / 1437, noise_multiplier=1.1,
        ...               delta=1e-5), 3)
        2.749
    """
    T = _count(steps, "steps", low=0)
    q = _probability(sampling_probability)
    sigma = _real(noise_multiplier, "noise_multiplier")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"noise_multiplier must be finite and > 0 for accounting; got {sigma}: "
                         "zero noise has no finite epsilon")
    delta = _check_delta(delta, None)
    if T == 0:
        return 0.0
    acc = _make_accountant(accountant)
    return float(acc.compose(dp_event(q, sigma, T)).get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon: float, *, delta: float, steps: int,
                               sampling_probability: float, accountant: str = "rdp") -> float:
    """The smallest sigma whose epsilon after ``steps`` steps is at most ``target_epsilon``.

    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on sigma, with a
    fresh accountant per trial, tolerance 1e-6), which returns a value on the
    feasible side; the result is checked once more here.

    Example::

        >>> s = calibrate_noise_multiplier(3.0, delta=1e-5, steps=450,
        ...                                sampling_probability=32 / 1437)
        >>> epsilon(450, sampling_probability=32 / 1437, noise_multiplier=s, delta=1e-5) <= 3.0
        True
    """
    eps = _real(target_epsilon, "target_epsilon")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"target_epsilon must be finite and > 0; got {eps}")
    T = _count(steps, "steps")
    q = _probability(sampling_probability)
    delta = _check_delta(delta, None)
    _make_accountant(accountant)  # the name is checked before the search
    dpa = _dp_accounting()
    sigma = float(dpa.calibrate_dp_mechanism(lambda: _make_accountant(accountant),
                                             lambda s: dp_event(q, s, T), eps, delta))
    got = epsilon(T, sampling_probability=q, noise_multiplier=sigma, delta=delta,
                  accountant=accountant)
    if not got <= eps:
        raise RuntimeError(f"calibration returned sigma={sigma} with epsilon {got} > target "
                           f"{eps}; please report this")
    return sigma


# ----------------------------------------------------------------- Poisson sampling

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
    N = _count(num_examples, "num_examples")
    q = _probability(sampling_probability)
    p = _real(overflow_probability, "overflow_probability")
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


def _sampled_order(mask, capacity):
    """(indices of the sampled examples in increasing order, padded with 0; |B|)."""
    n = mask.shape[0]
    order = jnp.nonzero(mask, size=n + capacity, fill_value=0)[0].astype(jnp.int32)
    return order, jnp.sum(mask, dtype=jnp.int32)


def _chunk(order, size, chunk, capacity, dtype):
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
    order, size = _sampled_order(mask, capacity)
    indices, weights = _chunk(order, size, chunk, capacity, dtype)
    return PoissonBatch(indices, weights, size)


# ----------------------------------------------------------------- the private step

def _weighted_clipped_sum_traced(params, x, y, weights, clip_norm, *, view, loss):
    dtype = _validate.network_dtype(params)
    grads = per_example.clipped_sum_from_arrays(
        params, x, y, jnp.asarray(clip_norm, dtype), jnp.zeros((), dtype), None, view=view,
        loss=loss, weights=weights.astype(dtype), noise_scale=1.0)
    return view.grads(grads)


# The core's weighted clipped sum, jitted with its input checks run while tracing.
_weighted_clipped_sum = _validate.jit_with_checks(_weighted_clipped_sum_traced)


def _clipped_sum(params, x, y, weights, clip_norm, model, loss, mesh=None):
    """sum_i w_i clip(g_i, C) over the rows of a padded batch (w_i in {0, 1}).

    One backward pass with each example's weight 1, the norms from the
    cotangents, then each layer's parameter backward on its cotangent with
    row i scaled by w_i c_i: dW^l = A^{l-1,T} (w c ⊙ G^l) for the dense chain
    (``per_example.clipped_sum_from_arrays``, without its noise: the noise is
    added once per step, after every chunk, by :func:`_noisy_mean`).
    ``model`` is the activations tuple (the MLP) or a network.

    With a ``mesh``, the rows are split over its ``"data"`` axis: each device
    computes the clipped sum of its own rows (clipping is per example, so the
    split changes nothing) and one ``psum`` adds them. No noise is drawn
    there: the caller adds it once, to the summed result, so the step has
    the noise of one device whatever the number of devices.
    """
    if mesh is None:
        return _weighted_clipped_sum(params, (x, y), (weights, clip_norm), model, loss)
    from jax.sharding import PartitionSpec as P

    from .parallel import DATA, pad_rows

    x, y, weights = pad_rows(x, y, mesh.shape[DATA], weights)

    def local(params, x, y, w):
        total = _weighted_clipped_sum(params, (x, y), (w, clip_norm), model, loss)
        return jax.lax.psum(total, DATA)  # the one cross-device sum

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA), P(DATA), P(DATA)),
                         out_specs=P())(params, x, y, weights)


def gaussian_noise(key, like, std):
    """A pytree shaped like ``like``: independent N(0, std^2) on every coordinate.

    One key per leaf, ``jax.random.split(key, number of leaves)`` in
    ``jax.tree_util.tree_leaves`` order, and ``std * jax.random.normal(k,
    leaf.shape, leaf.dtype)`` for each.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> gaussian_noise(jax.random.key(0), [{"W": jnp.zeros((2, 3))}], 0.5)[0]["W"].shape
        (2, 3)
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([std * jax.random.normal(k, g.shape, g.dtype)
                              for g, k in zip(leaves, keys)])


def _static(activations, network=None):
    """The static model of a call: the activations tuple (the MLP) or the network."""
    return _validate.static_config(_validate.resolve_model(activations, network))[0]


def private_batch_grad(params, batch, weights, noise_key, plan: DPPlan, *, activations=None,
                       network=None, loss):
    """The DP-SGD gradient of one padded batch: (sum_i w_i clip(g_i, C) + noise) / (q N).

    noise ~ N(0, sigma^2 C^2 I) from :func:`gaussian_noise` with
    ``noise_key``; q N is ``plan.denominator`` (the expected batch size, a
    public number; see the module docstring).

    Args:
      params: the MLP params.
      batch: ``(x, y)`` with ``capacity`` rows (padded rows are any valid rows).
      weights: (capacity,) 1 for a sampled example, 0 for padding. Any other
        value changes the sensitivity: only 0/1 masks keep the guarantee.
      noise_key: a ``jax.random`` key (required: there is no noiseless form).
      plan: a :class:`DPPlan`.
      activations, network, loss: as in :func:`functional_bp.grad` (a network
        must have no layer that couples examples: it is refused).

    Returns:
      Params-shaped gradients.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> params = __import__("functional_bp").init_mlp(jax.random.key(0), [3, 4, 2])
        >>> plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(
        ...     num_examples=100, batch_size=4, steps=10)
        >>> x, y = jnp.ones((plan.capacity, 3)), jnp.zeros((plan.capacity, 2))
        >>> w = jnp.zeros(plan.capacity).at[:3].set(1.0)
        >>> g = private_batch_grad(params, (x, y), w, jax.random.key(1), plan,
        ...                        activations=["relu", "identity"], loss="mse")
        >>> g[0]["W"].shape
        (3, 4)
    """
    _check_plan_and_key(plan, noise_key)
    return _private_batch_grad(params, tuple(batch), weights, noise_key, plan,
                               model=_static(activations, network), loss=loss)


def _check_plan_and_key(plan, key):
    if not isinstance(plan, DPPlan):
        raise TypeError(f"plan must be a DPPlan (from DPConfig(...).plan(...)); "
                        f"got {type(plan).__name__}")
    if key is None:
        raise ValueError("key is None: the DP noise and the sampling need a random key; pass "
                         "step_key(jax.random.key(seed), step)")


@partial(jax.jit, static_argnames=("plan", "model", "loss"))
def _private_batch_grad(params, batch, weights, noise_key, plan, *, model, loss):
    x, y = batch
    total = _clipped_sum(params, x, y, weights.astype(_validate.network_dtype(params)),
                         plan.clip_norm, model, loss)
    return _noisy_mean(total, noise_key, plan)


def _noisy_mean(total, noise_key, plan):
    """(total + N(0, sigma^2 C^2 I)) / (q N)."""
    noise = gaussian_noise(noise_key, total, plan.noise_multiplier * plan.clip_norm)
    return jax.tree_util.tree_map(lambda s, z: (s + z) / plan.denominator, total, noise)


def private_grad(params, data, key, plan: DPPlan, *, activations=None, network=None, loss,
                 mesh=None):
    """One DP-SGD step's gradient on the whole training set, with Poisson sampling.

    With ``sample_key, noise_key = jax.random.split(key)``: the batch is the
    Poisson sample of :func:`poisson_batch` ``(sample_key, N, q, capacity)``;
    its chunks (one, except with probability ``P(|B| > capacity)``) are summed
    by a ``lax.while_loop`` so that no sampled example is ever dropped; then
    the noise and the division of :func:`private_batch_grad`::

        g~ = (sum_{i in B} clip(g_i, C) + N(0, sigma^2 C^2 I)) / (q N)

    Args:
      params: the MLP params.
      data: ``(x, y)``, all N training examples (x (N, n_0)).
      key: the step's key, :func:`step_key` ``(run_key, t)``.
      plan: a :class:`DPPlan` with ``sampling="poisson"`` and
        ``num_examples == N``.
      activations, network, loss: as in :func:`private_batch_grad`.
      mesh: optional :class:`jax.sharding.Mesh` with a ``"data"`` axis: each
        chunk's rows are split over it and their clipped sums added by one
        ``psum``; the noise is drawn once, from the same key, and added after
        that sum (the same step as on one device, up to rounding).

    Returns:
      Params-shaped gradients.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> x, y = jnp.ones((100, 3)), jnp.zeros((100, 2))
        >>> plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(
        ...     num_examples=100, batch_size=10, steps=50)
        >>> g = private_grad(params, (x, y), step_key(jax.random.key(1), 0), plan,
        ...                  activations=["relu", "identity"], loss="mse")
        >>> g[1]["b"].shape
        (2,)
    """
    _check_plan_and_key(plan, key)
    if plan.sampling != "poisson":
        raise ValueError(f"private_grad draws Poisson samples; this plan has sampling="
                         f"{plan.sampling!r}: call private_batch_grad on each shuffled batch")
    x, y = data
    n = np.shape(x)[0]
    if n != plan.num_examples:
        raise ValueError(f"data has {n} examples but the plan was made for num_examples="
                         f"{plan.num_examples}: q and the accounting would be wrong; make the "
                         "plan with the training set's size")
    if mesh is not None:
        from .parallel import check_mesh

        mesh = check_mesh(mesh)
    return _private_grad(params, (x, y), key, plan, model=_static(activations, network),
                         loss=loss, mesh=mesh)


@partial(jax.jit, static_argnames=("plan", "model", "loss", "mesh"))
def _private_grad(params, data, key, plan, *, model, loss, mesh=None):
    x, y = data
    dtype = _validate.network_dtype(params)
    sample_key, noise_key = jax.random.split(key)
    cap = plan.capacity
    mask = poisson_mask(sample_key, plan.num_examples, plan.sampling_probability)
    order, size = _sampled_order(mask, cap)

    def chunk_sum(j):
        indices, weights = _chunk(order, size, j, cap, dtype)
        return _clipped_sum(params, x[indices], y[indices], weights, plan.clip_norm, model,
                            loss, mesh)

    def body(carry):
        j, total = carry
        return j + 1, jax.tree_util.tree_map(jnp.add, total, chunk_sum(j))

    _, total = jax.lax.while_loop(lambda c: c[0] < num_chunks(size, cap), body,
                                  (jnp.int32(1), chunk_sum(0)))
    return _noisy_mean(total, noise_key, plan)


# ----------------------------------------------------------------- private training (fit)

def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Private steps per epoch: round(N / expected batch size), at least 1.

    With Poisson sampling an epoch is not a pass over the data (an example
    may be drawn twice or not at all); it is the number of steps that draws
    N examples on average, so epochs stay comparable with shuffled training.

    Example::

        >>> steps_per_epoch(1437, 32), steps_per_epoch(60000, 256), steps_per_epoch(10, 64)
        (45, 234, 1)
    """
    N = _count(num_examples, "num_examples")
    m = _count(batch_size, "batch_size")
    return max(1, round(N / m))


def _differences(plan: DPPlan, saved: DPPlan) -> str:
    a, b = dataclasses.asdict(plan), dataclasses.asdict(saved)
    return "; ".join(f"{k}: saved {b[k]!r}, now {a[k]!r}" for k in a if a[k] != b[k])


def fit_plan(dp, saved, *, num_examples: int, batch_size: int, epoch: int, epochs: int):
    """The :class:`DPPlan` of a :func:`functional_bp.train.fit` call, or None (not private).

    Args:
      dp: the :class:`DPConfig` given to ``fit`` (or None).
      saved: the plan the state was trained with (``state.dp``; None for a
        new or non-private run).
      num_examples: N, the training set's size.
      batch_size: the expected batch size q N.
      epoch: the state's epoch (epochs already run).
      epochs: the epochs this call runs.

    A new private run plans ``epochs * steps_per_epoch`` steps (the
    calibration target of ``target_epsilon``). A resumed one re-makes the plan
    from ``dp`` for the saved number of planned steps and requires it to equal
    the saved plan, so the accounting goes on with exactly the same q, sigma,
    C, delta and accountant.

    Raises:
      TypeError: ``dp`` is not a DPConfig.
      ValueError: a private state continued without ``dp`` (it would train on
        without noise), a non-private state with epochs behind it continued
        with ``dp`` (those epochs are not accounted), a resumed run whose
        ``dp`` gives another plan, a ``target_epsilon`` run taken past the
        steps it was calibrated for, or ``sampling="shuffle"`` (fit samples
        Poisson batches: the shuffled form is for :func:`private_batch_grad`).
    """
    if dp is None:
        if saved is not None:
            raise ValueError(
                f"the state comes from a private run ({saved.describe()}); continuing it "
                "without dp= would train on the same data without noise or clipping and "
                "void its guarantee; pass dp= the DPConfig it was trained with")
        return None
    if not isinstance(dp, DPConfig):
        raise TypeError(f"dp must be a functional_bp.privacy.DPConfig, e.g. DPConfig("
                        f"clip_norm=1.0, noise_multiplier=1.1); got {type(dp).__name__}")
    if dp.sampling != "poisson":
        raise ValueError(f"fit draws Poisson batches; dp has sampling={dp.sampling!r}: use "
                         "sampling='poisson' (or private_batch_grad on your own batches)")
    spe = steps_per_epoch(num_examples, batch_size)
    if saved is None:
        if epoch != 0:
            raise ValueError(
                f"the state has {epoch} epochs of training without dp=: those steps saw the "
                "data without noise and are in no accounting, so a privacy claim cannot start "
                "here; start the private run from init_state (epoch 0)")
        return dp.plan(num_examples=num_examples, batch_size=batch_size,
                       steps=max(epochs, 1) * spe)
    if not isinstance(saved, DPPlan):
        raise TypeError(f"state.dp must be a DPPlan or None; got {type(saved).__name__}")
    plan = dp.plan(num_examples=num_examples, batch_size=batch_size, steps=saved.steps)
    # the same delta, given or by default, is the same accounting
    plan = dataclasses.replace(plan, delta_is_default=saved.delta_is_default)
    if plan != saved:
        raise ValueError(
            "resuming a private run with a different DP configuration would break its "
            f"accounting: {_differences(plan, saved)}. Resume with the configuration it was "
            "trained with (its plan is in the checkpoint's metadata['dp']['plan']) on the "
            "same training set and batch size, or start a new run")
    end = (epoch + epochs) * spe
    if saved.target_epsilon is not None and end > saved.steps:
        raise ValueError(
            f"this run was calibrated to reach epsilon={saved.target_epsilon:g} after "
            f"{saved.steps} steps ({saved.steps // spe} epochs); running to epoch "
            f"{epoch + epochs} ({end} steps) would spend epsilon "
            f"{saved.epsilon(end):.4g}: run at most {max(saved.steps // spe - epoch, 0)} more "
            "epochs, or start a new run with a larger target or more epochs")
    return plan


def epoch_record(plan: DPPlan, epoch: int) -> dict:
    """What an epoch's history record gets from a private run: ``{"epsilon": eps}``.

    eps is the accountant's epsilon at ``plan.delta`` after ``epoch *
    steps_per_epoch`` steps; a plan without an accountant adds nothing (it
    makes no claim).
    """
    if plan.accountant is None:
        return {}
    return {"epsilon": plan.epsilon(epoch * steps_per_epoch(plan.num_examples,
                                                            plan.batch_size))}


def checkpoint_metadata(plan: DPPlan, epoch: int) -> dict:
    """``{"plan": plan.as_dict(), "steps": steps taken, "epsilon": ...}`` for a checkpoint."""
    steps = epoch * steps_per_epoch(plan.num_examples, plan.batch_size)
    return {"plan": plan.as_dict(), "steps": steps, **epoch_record(plan, epoch)}


def plan_from_metadata(meta: dict, *, epoch: int, where: str = "checkpoint") -> DPPlan:
    """The :class:`DPPlan` recorded by :func:`checkpoint_metadata`, checked against ``epoch``."""
    try:
        plan = DPPlan(**meta["plan"])
        steps = int(meta["steps"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: its DP record {meta!r} is not a plan and a step count "
                         f"({err})") from None
    expected = epoch * steps_per_epoch(plan.num_examples, plan.batch_size)
    if steps != expected:
        raise ValueError(f"{where}: records {steps} private steps, but epoch {epoch} means "
                         f"{expected}; the checkpoint is inconsistent")
    return plan


@partial(jax.jit, static_argnames=("plan", "model", "loss", "optimizer", "mesh"))
def fit_epoch(params, opt_state, key, epoch, x, y, l2, sets, *, plan, model, loss, optimizer,
              mesh=None):
    """One private epoch and the metrics after it, in one compiled program.

    Steps t = epoch * S, ..., (epoch + 1) * S - 1 (S = :func:`steps_per_epoch`),
    each: g = :func:`private_grad` with ``step_key(key, t)``, plus the weight
    decay l2 W (it does not depend on the data, so it costs no privacy), then
    the optimizer's update. Everything random in step t comes from its key:
    a run resumed at any epoch repeats the uninterrupted one exactly.
    ``x``, ``y`` are the whole training set, validated (targets, not labels).
    """
    from .network import add_l2
    from .train import _apply, _metrics

    spe = steps_per_epoch(plan.num_examples, plan.batch_size)

    def step(carry, t):
        params, opt_state = carry
        g = _private_grad(params, (x, y), step_key(key, t), plan, model=model, loss=loss,
                          mesh=mesh)
        updates, opt_state = optimizer.update(add_l2(g, params, l2), opt_state, params)
        return (_apply(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state),
                                          epoch * spe + jnp.arange(spe))
    return params, opt_state, _metrics(params, sets, activations=model, loss=loss)
