"""The private step: clipped sums, the noise, and the DP-SGD gradient of a batch or a step.

    g~ = ( sum_{i in batch} clip(g_i, C) + N(0, sigma^2 C^2 I) ) / (q N)

with clip(g, C) = g min(1, C / ||g||) and g_i example i's own gradient. The
division is by the expected batch size q N, not by the sampled size: the
sampled size |B| depends on who is in the dataset, so dividing by it would
release it without noise and change the sensitivity; q N is public. The
estimate is unbiased for the mean clipped gradient.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from .. import _validate, per_example
from ..per_example import gaussian_noise
from ..parallel import DATA, check_mesh, pad_rows
from ..layers import Dropout, Layer
from .config import DPPlan, check_plan
from .sampling import chunk_rows, num_chunks, poisson_mask, sampled_order


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
    x, y, weights = pad_rows(x, y, mesh.shape[DATA], weights)

    def local(params, x, y, w):
        total = _weighted_clipped_sum(params, (x, y), (w, clip_norm), model, loss)
        return jax.lax.psum(total, DATA)  # the one cross-device sum

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA), P(DATA), P(DATA)),
                         out_specs=P())(params, x, y, weights)


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
      weights: (rows,) the inclusion mask: 1 for a sampled example, 0 for
        padding. Any other value changes the sensitivity (5.0 counts an
        example five times the clip norm while the noise is sized for one),
        so only a 0/1 mask passes (:func:`check_inclusion_mask`): a boolean
        array, or a concrete numeric one whose entries are all 0 or 1.
      noise_key: a ``jax.random`` key (required: there is no noiseless form).
      plan: a :class:`DPPlan`.
      activations, network, loss: as in :func:`functional_bp.grad` (a network
        must have no layer that couples examples, and no Dropout: both are
        refused, see :func:`check_private_model`).

    Returns:
      Params-shaped gradients.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from functional_bp.privacy import DPConfig
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
    batch = tuple(batch)
    weights = check_inclusion_mask(weights, rows=np.shape(batch[0])[0])
    model = check_private_model(_static(activations, network))
    _validate.check_concrete_values(model, params, *batch, loss)
    return _private_batch_grad(params, batch, weights, noise_key, plan, model=model, loss=loss)


def check_inclusion_mask(weights, *, rows: int):
    """``weights`` if it is a 0/1 inclusion mask of ``rows`` entries; else a clear error.

    A boolean array passes (traced or not). A numeric array must be concrete
    (its values are checked on the host) with every entry 0 or 1: a weight
    of 5 would count an example five times the clip norm while the noise is
    sized for one, and a negative one would subtract it, so either breaks the
    guarantee. Under ``jax.jit`` pass a boolean mask (e.g. ``weights > 0``
    where the weights are known to be 0/1).

    Example::

        >>> import numpy as np
        >>> check_inclusion_mask(np.array([1.0, 0.0, 1.0]), rows=3)
        array([1., 0., 1.])
        >>> check_inclusion_mask(np.array([5.0, 0.0, 1.0]), rows=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: weights must be a 0/1 inclusion mask ...
    """
    shape = np.shape(weights)
    if shape != (rows,):
        raise ValueError(f"weights must have shape (rows,) = ({rows},), one 0/1 entry per row "
                         f"of the batch; got shape {shape}")
    dtype = weights.dtype if hasattr(weights, "dtype") else np.asarray(weights).dtype
    if np.dtype(dtype) == np.bool_:
        return weights
    if isinstance(weights, jax.core.Tracer):
        raise TypeError(
            f"weights is a traced {np.dtype(dtype).name} array, whose values cannot be checked "
            "to be 0 or 1; under jax.jit pass a boolean inclusion mask (True for a sampled "
            "example), or call private_batch_grad outside jit")
    values = np.asarray(weights)
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"weights must be a 0/1 inclusion mask (1 for a sampled example, 0 for padding); "
            f"weights[{i}] = {values[i]!r}. Any other weight changes the sensitivity the noise "
            "is sized for (a weight of 5 counts one example five times the clip norm); to "
            "weight examples, clip them yourself and account for it")
    return weights


def check_private_model(model):
    """``model`` (the static activations tuple or network) if the private step can run it.

    The one rule for every private entry (:func:`private_grad`,
    :func:`private_batch_grad`, the trainer's ``fit(dp=)``): a network with
    an active Dropout layer (rate > 0) is refused, because the private step
    runs the network without dropout masks, so it would silently train
    another model than the one given. (A layer that couples examples is
    refused by the per-example machinery itself.)
    """
    if isinstance(model, Layer) and any(isinstance(layer, Dropout) and layer.rate > 0
                                        for layer in model.leaves()):
        raise ValueError("dp= with Dropout layers is not supported: the private step runs "
                         "the network without dropout masks; drop the Dropout layers "
                         "(or give them rate 0)")
    return model


def _check_plan_and_key(plan, key):
    check_plan(plan)
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
        >>> from functional_bp.privacy import DPConfig, step_key
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
        mesh = check_mesh(mesh)
    model = check_private_model(_static(activations, network))
    _validate.check_concrete_values(model, params, x, y, loss)
    return private_step_grad(params, (x, y), key, plan, model=model, loss=loss, mesh=mesh)


@partial(jax.jit, static_argnames=("plan", "model", "loss", "mesh"))
def private_step_grad(params, data, key, plan, *, model, loss, mesh=None):
    """:func:`private_grad` for a checked call: the model static and resolved, no checks.

    What a compiled training loop calls inside its ``lax.scan`` (the
    trainer's private epoch): ``model`` is the activations tuple or the
    network as :func:`functional_bp._validate.static_config` gives it,
    ``data`` the validated training set, ``plan`` a checked :class:`DPPlan`.
    """
    x, y = data
    dtype = _validate.network_dtype(params)
    sample_key, noise_key = jax.random.split(key)
    cap = plan.capacity
    mask = poisson_mask(sample_key, plan.num_examples, plan.sampling_probability)
    order, size = sampled_order(mask, cap)

    def chunk_sum(j):
        indices, weights = chunk_rows(order, size, j, cap, dtype)
        return _clipped_sum(params, x[indices], y[indices], weights, plan.clip_norm, model,
                            loss, mesh)

    def body(carry):
        j, total = carry
        return j + 1, jax.tree_util.tree_map(jnp.add, total, chunk_sum(j))

    _, total = jax.lax.while_loop(lambda c: c[0] < num_chunks(size, cap), body,
                                  (jnp.int32(1), chunk_sum(0)))
    return _noisy_mean(total, noise_key, plan)

