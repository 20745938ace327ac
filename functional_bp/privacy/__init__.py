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

The modules, in import order (each imports only those before it):

- :mod:`~functional_bp.privacy.accounting`: delta, the DP event, epsilon, calibration;
- :mod:`~functional_bp.privacy.sampling`: Poisson sampling in fixed-shape chunks;
- :mod:`~functional_bp.privacy.config`: :class:`DPConfig`, :class:`DPPlan`,
  :func:`check_plan`, and the run's record (checkpoints, resumption);
- :mod:`~functional_bp.privacy.step`: the clipped, noised gradient;
- :mod:`~functional_bp.privacy.check`: the per-example norms and the clipped
  step checked against ``jax.vmap(jax.grad)`` (what ``functional-bp check``
  adds for a checkpoint of a private run).

The private epoch of the trainer is :func:`functional_bp.train.fit`'s (its
Poisson batch sampler); every name below is importable from
``functional_bp.privacy``.
"""

from .accounting import (ACCOUNTANTS, calibrate_noise_multiplier, check_delta, default_delta,
                         dp_event, epsilon)
from .config import (SAMPLINGS, DPConfig, DPPlan, check_continued_privately, check_plan,
                     checkpoint_metadata, epoch_record, fit_plan, plan_from_metadata,
                     steps_per_epoch)
from .sampling import (OVERFLOW_PROBABILITY, PoissonBatch, num_chunks, poisson_batch,
                       poisson_capacity, poisson_mask, step_key)
from .step import (check_inclusion_mask, check_private_model, gaussian_noise, private_batch_grad,
                   private_grad, private_step_grad)
from .check import check_private_gradients, checkpoint_plan, without_noise

__all__ = [
    "ACCOUNTANTS", "OVERFLOW_PROBABILITY", "SAMPLINGS", "DPConfig", "DPPlan", "PoissonBatch",
    "calibrate_noise_multiplier", "check_continued_privately", "check_delta",
    "check_inclusion_mask", "check_plan", "check_private_model", "checkpoint_metadata",
    "default_delta", "dp_event", "epoch_record", "epsilon", "fit_plan", "gaussian_noise",
    "num_chunks", "plan_from_metadata", "poisson_batch", "poisson_capacity", "poisson_mask",
    "private_batch_grad", "private_grad", "private_step_grad", "step_key", "steps_per_epoch",
    "check_private_gradients", "checkpoint_plan", "without_noise",
]
