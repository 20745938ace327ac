"""Argument checks shared by the privacy modules: a clear error naming the argument."""

from __future__ import annotations

import numpy as np


def real(value, name) -> float:
    """``value`` as a Python float, or a TypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} "
                        f"({type(value).__name__})")
    return float(value)


def count(value, name, *, low=1) -> int:
    """``value`` as a Python int >= ``low``, or a clear error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    return int(value)


def probability(q) -> float:
    """q as a Python float in (0, 1], or a clear error naming ``sampling_probability``."""
    q = real(q, "sampling_probability")
    if not 0 < q <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1]; got {q}: it is the expected "
                         "batch size over the number of training examples")
    return q
