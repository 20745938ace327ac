"""Checking what a private run relied on: per-example norms and the clipped gradient.

A private step does not use the ordinary gradient: it uses each example's
gradient norm ||g_i|| (to clip) and the clipped sum
sum_i g_i min(1, C / ||g_i||), divided by the expected batch size q N. Both
are computed by hand-derived code (:func:`functional_bp.per_example_grad_norms`
and :func:`functional_bp.privacy.private_batch_grad`), so a check of a private
run compares both with plain autodiff::

    ref g_i   = jax.vmap(jax.grad(L_i))(params)         (each example alone)
    ref norms = ||ref g_i||
    ref step  = sum_i ref g_i min(1, C / ||ref g_i||) / (q N)     (in float64)

The clipped step is a sum whose terms can cancel (near a minimum the mean
gradient is far smaller than each example's), so its error is measured
against the size of its terms, max_j sum_i |c_i g_ij| / (q N), the scale
float rounding is relative to; a wrong clip factor or a wrong per-example
gradient is off by a fraction of that scale.

The noise is not checked (it is random; its scale sigma C / (q N) is
:attr:`DPPlan.noise_std`, tested in the test suite).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..checking import GradientReport, compare, leaf_name
from ..mlp import objective
from ..per_example import per_example_grad_norms
from .config import DPPlan, check_plan, plan_from_metadata
from .step import private_batch_grad

NORMS_ROW = "||g_i|| per example"


def without_noise(plan: DPPlan) -> DPPlan:
    """The same plan with sigma = 0 and no accounting: the step's deterministic part.

    Example::

        >>> from functional_bp.privacy import DPConfig
        >>> p = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(
        ...     num_examples=100, batch_size=10, steps=5)
        >>> without_noise(p).noise_multiplier, without_noise(p).clip_norm
        (0.0, 1.0)
    """
    check_plan(plan)
    return dataclasses.replace(plan, noise_multiplier=0.0, accountant=None, delta=None,
                               delta_is_default=False, target_epsilon=None)


def check_private_gradients(params, batch, plan: DPPlan, *, activations=None, network=None,
                            loss, rtol=None) -> GradientReport:
    """Per-example norms and the clipped step of ``plan`` against ``jax.vmap(jax.grad)``.

    Rows: ``||g_i|| per example`` (shape (m,)), then ``clipped <leaf>`` for
    each parameter leaf: :func:`~functional_bp.privacy.private_batch_grad`
    on every row of ``batch`` with the noise set to zero (the code path of
    the private step, sigma = 0) against the clipped sum of autodiff's
    per-example gradients over q N. Tolerances as in
    :func:`functional_bp.checking.check_gradients`.

    Args:
      params: the params (an MLP's or a network's).
      batch: ``(x, y)``, as for :func:`functional_bp.grad`; every row counts
        as sampled.
      plan: the run's :class:`DPPlan` (its clip norm and q N).
      activations, network, loss: the model, as for :func:`functional_bp.grad`.
      rtol: optional tolerance for every row.

    Returns:
      A :class:`functional_bp.checking.GradientReport`.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> from functional_bp.privacy import DPConfig
        >>> plan = DPConfig(clip_norm=0.5, noise_multiplier=1.0).plan(
        ...     num_examples=100, batch_size=8, steps=5)
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> x = jax.random.normal(jax.random.key(1), (8, 3))
        >>> y = jax.nn.one_hot(jnp.arange(8) % 2, 2)
        >>> check_private_gradients(params, (x, y), plan, activations=["tanh", "identity"],
        ...                         loss="softmax_cross_entropy").ok
        True
    """
    check_plan(plan)
    x, y = batch
    kw = dict(activations=activations, network=network, loss=loss)
    ours_norms = per_example_grad_norms(params, (x, y), **kw)

    def example_grad(xi, yi):
        return jax.grad(lambda p: objective(p, (xi[None], yi[None]), **kw))(params)

    per_example = jax.vmap(example_grad)(jnp.asarray(x), jnp.asarray(y))
    leaves = jax.tree_util.tree_leaves(per_example)
    m = leaves[0].shape[0]
    ref_norms = jnp.sqrt(sum(jnp.sum(jnp.reshape(g, (m, -1)) ** 2, axis=1) for g in leaves))
    # the reference step in float64 on the host, as the test suite forms it
    wide = [np.asarray(g, np.float64) for g in leaves]
    norms64 = np.sqrt(sum(np.sum(g.reshape(m, -1) ** 2, axis=1) for g in wide))
    factors = np.minimum(1.0, plan.clip_norm / np.maximum(norms64, 1e-300))
    ref_step = [np.tensordot(factors, g, axes=1) / plan.denominator for g in wide]
    scales = [np.max(np.tensordot(factors, np.abs(g), axes=1), initial=0.0) / plan.denominator
              for g in wide]
    ours_step = private_batch_grad(params, (x, y), np.ones(m, bool), jax.random.key(0),
                                   without_noise(plan), **kw)
    rows = [compare(NORMS_ROW, ours_norms, ref_norms, rtol)]
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(per_example)[0]]
    for path, ours, ref, scale, g in zip(paths, jax.tree_util.tree_leaves(ours_step), ref_step,
                                         scales, leaves):
        rows.append(compare(f"clipped {leaf_name(path)}", ours, ref.astype(g.dtype), rtol,
                            scale=scale if scale > 0 else None))
    return GradientReport(rows=tuple(rows))


def checkpoint_plan(metadata: dict, where: str = "checkpoint") -> DPPlan | None:
    """The :class:`DPPlan` a checkpoint's metadata records (cross-checked), or None.

    None for a checkpoint of a run that was not private. The record is
    checked as :func:`functional_bp.privacy.plan_from_metadata` checks it.
    """
    if not isinstance(metadata, dict) or metadata.get("dp") is None:
        return None
    return plan_from_metadata(metadata["dp"], epoch=int(metadata.get("epoch", 0)), where=where,
                              history=metadata.get("history"))
