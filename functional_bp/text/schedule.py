"""nanoGPT's learning-rate schedule: linear warm-up, cosine decay to min_lr, then constant.

nanoGPT's ``train.py`` (``get_lr``), for iteration it = 0, 1, ...::

    it <  warmup_iters:         lr (it + 1) / (warmup_iters + 1)
    it >  lr_decay_iters:       min_lr
    otherwise, with r = (it - warmup_iters) / (lr_decay_iters - warmup_iters):
                                min_lr + (1 + cos(pi r)) / 2 (lr - min_lr)

This is optax's ``warmup_cosine_decay_schedule`` with the warm-up starting at
lr / (warmup_iters + 1) instead of 0, in exact arithmetic and in float64 (to a
relative 1e-15), but not in float32: optax writes the warm-up as
(init - peak)(1 - it / warmup_iters) + peak, which cancels; with a warm-up of
2,000 its first rate is off by a relative 1.2e-4. So the formula is written
here, term by term as nanoGPT's. In float32 its largest relative difference
from nanoGPT's float64 values, over iterations 0 .. 2,499 of nanoGPT's
Shakespeare schedule (1e-3, 100, 2000, 1e-4), is 3.5e-7. It is an optax
schedule: it takes the step count as an integer array, can be traced, and
computes in the default float dtype (float64 under ``jax_enable_x64``).

Example::

    >>> lr = nanogpt_lr_schedule(1e-3, warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4)
    >>> [round(float(lr(it)), 8) for it in (0, 99, 100, 1050, 2000, 5000)]
    [9.9e-06, 0.0009901, 0.001, 0.00055, 0.0001, 0.0001]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def nanogpt_lr_schedule(learning_rate: float, *, warmup_iters: int, lr_decay_iters: int,
                        min_lr: float):
    """nanoGPT's ``get_lr`` as an optax schedule: iteration (from 0) -> learning rate.

    Args:
      learning_rate: the peak rate (nanoGPT's ``learning_rate``), > 0.
      warmup_iters: iterations of linear warm-up, 0 <= warmup_iters < lr_decay_iters.
      lr_decay_iters: the iteration at which the cosine reaches ``min_lr``.
      min_lr: the final rate, 0 <= min_lr.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}")
    if not min_lr >= 0:
        raise ValueError(f"min_lr must be at least 0; got {min_lr}")
    for name, v in (("warmup_iters", warmup_iters), ("lr_decay_iters", lr_decay_iters)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
    if not warmup_iters < lr_decay_iters:
        raise ValueError(f"warmup_iters ({warmup_iters}) must be less than lr_decay_iters "
                         f"({lr_decay_iters}): the cosine decay runs between them")
    lr, warmup, decay = float(learning_rate), int(warmup_iters), int(lr_decay_iters)
    min_lr = float(min_lr)

    def schedule(it):
        it = jnp.asarray(it)
        t = it.astype(jnp.result_type(float))
        warm = lr * (t + 1) / (warmup + 1)                          # 1) linear warm-up
        ratio = jnp.clip((t - warmup) / (decay - warmup), 0.0, 1.0)
        cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)   # 3) cosine
        return jnp.where(it < warmup, warm, jnp.where(it > decay, min_lr, cosine))  # 2) after

    return schedule
