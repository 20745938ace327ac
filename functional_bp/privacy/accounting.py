"""Privacy accounting: delta's default and its check, the DP event, epsilon, calibration.

The privacy loss of T DP-SGD steps with Poisson sampling probability q and
noise multiplier sigma is what Google's ``dp-accounting`` package computes
for the event ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), T)``
(add-or-remove-one neighbouring datasets), with its RDP or PLD accountant.
``dp-accounting`` is imported only by the functions that account (the ``dp``
extra: ``pip install 'functional_bp[dp]'``).
"""

from __future__ import annotations

import math

from ._checks import count, probability, real

ACCOUNTANTS = ("rdp", "pld")


def check_delta(delta, num_examples) -> float:
    """delta in (0, 1), and below 1/N when ``num_examples`` N is given; else a clear error."""
    delta = real(delta, "delta")
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


def default_delta(num_examples: int) -> float:
    """The default delta: the largest power of ten not above 1 / (10 N).

    delta is the probability with which the epsilon guarantee may fail; it must
    be well below 1/N (see the module docstring). N = 1437 gives 1e-5,
    N = 60000 gives 1e-6.

    Example::

        >>> default_delta(1437), default_delta(60000), default_delta(1000)
        (1e-05, 1e-06, 0.0001)
    """
    n = count(num_examples, "num_examples")
    exponent = 0
    while 10**exponent < 10 * n:  # integers: exact at powers of ten
        exponent += 1
    return 10.0**-exponent



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
    T = count(steps, "steps", low=0)
    q = probability(sampling_probability)
    sigma = real(noise_multiplier, "noise_multiplier")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"noise_multiplier must be finite and > 0 for accounting; got {sigma}: "
                         "zero noise has no finite epsilon")
    delta = check_delta(delta, None)
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
    eps = real(target_epsilon, "target_epsilon")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"target_epsilon must be finite and > 0; got {eps}")
    T = count(steps, "steps")
    q = probability(sampling_probability)
    delta = check_delta(delta, None)
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

