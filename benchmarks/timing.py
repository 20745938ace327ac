"""Side-by-side timing: warm-up, randomised alternating blocks, medians.

Every implementation is a zero-argument callable that runs one step and
returns only when its result is ready (JAX results are blocked on, CUDA
streams synchronised). Timing them one after the other would let a slow
drift of the machine (another process starting, the clock changing) land on
one implementation only; so the runs are interleaved:

    for block in 1..B:
        for impl in a random permutation of the implementations:
            take `reps` samples of impl, each the mean of `number` calls

``number`` is calibrated per implementation so that one sample lasts at least
``min_sample_s`` (short steps are averaged over many calls, long steps are
timed one call at a time). The summary of an implementation is the median of
its samples; the ratio of two implementations is the median, over blocks, of
the ratio of their block medians (paired, so drift between blocks cancels).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timing:
    """Per-call times (seconds) of one implementation, grouped by block."""

    name: str
    number: int
    blocks: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [s for block in self.blocks for s in block]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the samples."""
        q = statistics.quantiles(self.samples, n=4) if len(self.samples) > 1 else None
        return (q[0], q[2]) if q else (self.median, self.median)

    def block_medians(self) -> list[float]:
        return [statistics.median(b) for b in self.blocks]


def calibrate(fn: Callable[[], object], min_sample_s: float, max_number: int = 100_000) -> int:
    """The number of calls per sample so that one sample lasts >= min_sample_s."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    number = 1
    while one * number < min_sample_s and number < max_number:
        number *= 2
    if number > 1:  # measure again over the chosen count, then refine once
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        one = (time.perf_counter() - t0) / number
        number = max(1, min(max_number, int(min_sample_s / max(one, 1e-9)) + 1))
    return number


def sample(fn: Callable[[], object], number: int) -> float:
    """Mean seconds per call over ``number`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def compare(
    impls: dict[str, Callable[[], object]],
    *,
    warmup: int = 3,
    blocks: int = 10,
    reps: int = 3,
    min_sample_s: float = 0.02,
    seed: int = 0,
    settle_s: float | None = None,
) -> dict[str, Timing]:
    """Time every implementation in randomised alternating blocks.

    Args:
      impls: name -> a callable running one step to completion.
      warmup: calls of each implementation before any timing (compilation,
        caches, thread pools).
      blocks: number of blocks; each implementation runs once per block, in an
        order shuffled anew for every block.
      reps: samples per implementation per block.
      min_sample_s: the shortest duration of one sample (see :func:`calibrate`);
        0: one call per sample, without a calibration call (for steps of seconds).
      seed: seed of the block orders.
      settle_s: when given, each time the order switches to an
        implementation, wait this long and make one untimed call before its
        samples (for implementations whose clean-up lands on the next call).

    Returns:
      name -> :class:`Timing`.

    Example::

        >>> t = compare({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))},
        ...             warmup=1, blocks=2, reps=2, min_sample_s=1e-4)
        >>> sorted(t), len(t["a"].samples)
        (['a', 'b'], 4)
    """
    for fn in impls.values():
        for _ in range(warmup):
            fn()
    timings = {
        name: Timing(name, calibrate(fn, min_sample_s) if min_sample_s > 0 else 1)
        for name, fn in impls.items()
    }
    order = list(impls)
    rng = random.Random(seed)
    for _ in range(blocks):
        rng.shuffle(order)
        for name in order:
            fn, t = impls[name], timings[name]
            if settle_s is not None:
                time.sleep(settle_s)
                fn()
            t.blocks.append([sample(fn, t.number) for _ in range(reps)])
    return timings


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over blocks of (num's block median / den's block median)."""
    return statistics.median(
        a / b for a, b in zip(num.block_medians(), den.block_medians())
    )
