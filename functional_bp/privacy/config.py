"""DP configuration: what the user asks for (DPConfig), the resolved plan (DPPlan), its record.

:class:`DPConfig` is checked when it is made; :meth:`DPConfig.plan` resolves it
for a dataset and a run into a :class:`DPPlan` (delta, sigma, q, capacity),
and :func:`check_plan` validates a plan wherever one enters (a plan can be
built or edited by hand). The run's record (:func:`fit_plan`,
:func:`epoch_record`, :func:`checkpoint_metadata`, :func:`plan_from_metadata`)
ties a plan to the steps taken and the epsilon spent.
"""

from __future__ import annotations

import dataclasses
import math

from ._checks import count, real
from .accounting import ACCOUNTANTS, calibrate_noise_multiplier, check_delta, default_delta, epsilon
from .sampling import poisson_capacity

SAMPLINGS = ("poisson", "shuffle")
EPSILON_RTOL = 1e-6  # a recorded epsilon and the accountant's, recomputed at load


def _check_fields(obj, *, for_config: bool) -> None:
    """The checks a :class:`DPConfig` and a :class:`DPPlan` share (one rule, one place)."""
    C = real(obj.clip_norm, "clip_norm")
    if not (C > 0 and math.isfinite(C)):
        raise ValueError(f"clip_norm must be finite and > 0; got {C}: the noise is "
                         "calibrated to the clip norm, so an infinite or zero C has no "
                         "guarantee; pass e.g. clip_norm=1.0")
    if obj.sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}; got {obj.sampling!r}")
    if obj.accountant is not None and obj.accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS} or None; "
                         f"got {obj.accountant!r}")
    if for_config and (obj.noise_multiplier is None) == (obj.target_epsilon is None):
        given = "both" if obj.noise_multiplier is not None else "neither"
        raise ValueError(f"pass exactly one of noise_multiplier=sigma and "
                         f"target_epsilon=epsilon; got {given}")
    if obj.noise_multiplier is not None:
        sigma = real(obj.noise_multiplier, "noise_multiplier")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {sigma}")
        if sigma == 0 and obj.accountant is not None:
            raise ValueError(
                f"noise_multiplier=0 with accountant={obj.accountant!r}: zero noise has no "
                "finite epsilon, so there is nothing to account; pass noise_multiplier > 0, "
                "or accountant=None for clipping without a privacy claim"
            )
    if obj.target_epsilon is not None:
        eps = real(obj.target_epsilon, "target_epsilon")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"target_epsilon must be finite and > 0; got {eps}")
        if obj.accountant is None:
            raise ValueError("target_epsilon needs an accountant to calibrate the noise; "
                             "pass accountant='rdp' or 'pld', or a noise_multiplier")
    if obj.delta is not None:
        if obj.accountant is None:
            raise ValueError("delta is given but accountant=None: without accounting it "
                             "has no effect; pass accountant='rdp' or 'pld', or drop delta")
        check_delta(obj.delta, None)
    if obj.sampling == "shuffle" and obj.accountant is not None:
        raise ValueError(
            f"sampling='shuffle' with accountant={obj.accountant!r}: the accountant "
            "analyses Poisson subsampling, and its epsilon does not hold for shuffled "
            "fixed-size batches; use sampling='poisson', or accountant=None (no privacy "
            "claim)"
        )


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
        _check_fields(self, for_config=True)

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
        N = count(num_examples, "num_examples")
        m = count(batch_size, "batch_size")
        if m > N:
            raise ValueError(f"batch_size={m} is larger than num_examples={N}")
        T = count(steps, "steps")
        q = m / N
        delta = None
        if self.accountant is not None:
            delta = default_delta(N) if self.delta is None else check_delta(self.delta, N)
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
            capacity = min(count(capacity, "capacity"), N)
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

    def __post_init__(self):
        check_plan(self)

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


def check_plan(plan) -> DPPlan:
    """``plan`` if it is a :class:`DPPlan` that :meth:`DPConfig.plan` could have made; else an error.

    A plan can be made by hand, edited (``dataclasses.replace``) or read from
    a file; every function that takes one checks it here (a DPPlan also
    checks itself when it is made). On top of :class:`DPConfig`'s checks
    (clip norm finite and > 0, noise 0 only without an accountant, shuffled
    batches only without one, delta only with one): sigma is given, delta is
    given exactly when there is an accountant and is below 1/N, N, the batch
    size, the steps and the capacity are positive integers with
    batch_size <= N and capacity <= N (shuffle: capacity == batch_size).

    Raises:
      TypeError: not a DPPlan, or a field of the wrong type.
      ValueError: a field out of range, named, with the fix.

    Example::

        >>> import dataclasses
        >>> plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(
        ...     num_examples=100, batch_size=10, steps=5)
        >>> check_plan(plan) is plan
        True
        >>> dataclasses.replace(plan, batch_size=200)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: invalid DPPlan: batch_size=200 is larger than num_examples=100...
    """
    if not isinstance(plan, DPPlan):
        raise TypeError(f"plan must be a DPPlan (from DPConfig(...).plan(...)); "
                        f"got {type(plan).__name__}")
    try:
        _check_plan_fields(plan)
    except (TypeError, ValueError) as err:
        raise type(err)(f"invalid DPPlan: {err}. Make plans with DPConfig(...).plan(...) "
                        "rather than by hand or by editing one") from None
    return plan


def _check_plan_fields(plan) -> None:
    _check_fields(plan, for_config=False)
    if plan.noise_multiplier is None:
        raise TypeError("noise_multiplier is None: a plan has a resolved sigma")
    N = count(plan.num_examples, "num_examples")
    m = count(plan.batch_size, "batch_size")
    count(plan.steps, "steps")
    cap = count(plan.capacity, "capacity")
    if m > N:
        raise ValueError(f"batch_size={m} is larger than num_examples={N}")
    if cap > N:
        raise ValueError(f"capacity={cap} is larger than num_examples={N}")
    if plan.sampling == "shuffle" and cap != m:
        raise ValueError(f"sampling='shuffle' has batches of exactly batch_size={m} rows; "
                         f"got capacity={cap}")
    if not isinstance(plan.delta_is_default, bool):
        raise TypeError(f"delta_is_default must be True or False; got {plan.delta_is_default!r}")
    if plan.accountant is not None:
        if plan.delta is None:
            raise ValueError(f"delta is None with accountant={plan.accountant!r}: epsilon is "
                             "stated at a delta")
        check_delta(plan.delta, N)
    elif plan.delta_is_default:
        raise ValueError("delta_is_default=True without an accountant (there is no delta)")



def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Private steps per epoch: round(N / expected batch size), at least 1.

    With Poisson sampling an epoch is not a pass over the data (an example
    may be drawn twice or not at all); it is the number of steps that draws
    N examples on average, so epochs stay comparable with shuffled training.

    Example::

        >>> steps_per_epoch(1437, 32), steps_per_epoch(60000, 256), steps_per_epoch(10, 64)
        (45, 234, 1)
    """
    N = count(num_examples, "num_examples")
    m = count(batch_size, "batch_size")
    return max(1, round(N / m))


def _differences(plan: DPPlan, saved: DPPlan) -> str:
    a, b = dataclasses.asdict(plan), dataclasses.asdict(saved)
    return "; ".join(f"{k}: saved {b[k]!r}, now {a[k]!r}" for k in a if a[k] != b[k])


def check_continued_privately(saved) -> None:
    """Refuse to continue a private state (``saved``, its plan) without privacy.

    Training it on without ``dp=`` (or with a sampler that is not private)
    would see the same data without noise or clipping and void its guarantee.
    """
    if saved is not None:
        raise ValueError(
            f"the state comes from a private run ({saved.describe()}); continuing it "
            "without dp= would train on the same data without noise or clipping and "
            "void its guarantee; pass dp= the DPConfig it was trained with")


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
        check_continued_privately(saved)
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
    check_plan(saved)
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


def plan_from_metadata(meta: dict, *, epoch: int, where: str = "checkpoint",
                       history=None) -> DPPlan:
    """The :class:`DPPlan` recorded by :func:`checkpoint_metadata`, cross-checked.

    The record must add up: the plan is a valid plan (:func:`check_plan`),
    the steps are ``epoch * steps_per_epoch``, the recorded epsilon is the
    accountant's epsilon for that plan after those steps (a plan without an
    accountant records none), a ``target_epsilon`` plan reaches at most its
    target after its planned steps, and every ``epsilon`` in ``history`` (the
    run's records, if given) is the plan's epsilon at that record's epoch.
    An edited record (say sigma raised from 1 to 5, which would lower the
    epsilon reported from then on) is refused, since its recorded epsilon is
    that of the sigma actually used.

    What this cannot prove: the record is not signed, so someone who edits
    the plan, the epsilon and the history consistently (or trains without
    noise and writes a record) is not caught; the check catches records that
    do not add up, by accident or by a partial edit. See
    docs/private-training.md.

    Raises:
      ValueError: a record that is not a plan and a step count, or that
        does not add up (the message says which number and what it should be).
    """
    try:
        plan = DPPlan(**meta["plan"])
        steps = int(meta["steps"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: its DP record {meta!r} is not a plan and a step count "
                         f"({err})") from None
    spe = steps_per_epoch(plan.num_examples, plan.batch_size)
    expected = epoch * spe
    if steps != expected:
        raise ValueError(f"{where}: records {steps} private steps, but epoch {epoch} means "
                         f"{expected}; the checkpoint is inconsistent")
    refuse = (f"{where}: its DP record does not add up ({{}}); it was edited or damaged, and "
              "resuming from it would misstate the privacy spent. Resume from an unedited "
              "checkpoint, or start a new run")
    if plan.accountant is None:
        if meta.get("epsilon") is not None:
            raise ValueError(refuse.format("it records an epsilon but its plan has no "
                                           "accountant"))
        return plan
    claims = [("the recorded epsilon", steps, meta.get("epsilon"))]
    for record in history or ():
        if isinstance(record, dict) and "epsilon" in record:
            claims.append((f"the epsilon of epoch {record.get('epoch')} in the history",
                           int(record.get("epoch", -1)) * spe, record["epsilon"]))
    for what, at, recorded in claims:
        if at < 0:
            raise ValueError(refuse.format(f"{what}: a record without its epoch"))
        if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
            raise ValueError(refuse.format(f"{what} is {recorded!r}, not a number"))
        honest = plan.epsilon(at)
        if not math.isclose(recorded, honest, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
            raise ValueError(refuse.format(
                f"{what} is {recorded:.6g}, but the plan it records (sigma "
                f"{plan.noise_multiplier:.6g}, q {plan.sampling_probability:.6g}, delta "
                f"{plan.delta:g}, {plan.accountant}) gives {honest:.6g} after {at} steps"))
    if plan.target_epsilon is not None:
        planned = plan.epsilon(plan.steps)
        if planned > plan.target_epsilon * (1 + EPSILON_RTOL):
            raise ValueError(refuse.format(
                f"the plan claims target epsilon {plan.target_epsilon:g} after {plan.steps} "
                f"steps, but its sigma {plan.noise_multiplier:.6g} gives {planned:.6g}"))
    return plan
