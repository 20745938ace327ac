"""Minibatch training with the hand-derived gradients.

Each step is the update of the derivation, through any optimizer with optax's
``init``/``update`` interface::

    G      = dJ_B/dparams                  the delta recursion on minibatch B
    params := params + update(G)           plain SGD: W := W - eta dJ/dW

One epoch is one jitted ``lax.scan`` over the minibatches (no Python per step):

- the epoch's order is ``jax.random.permutation(fold_in(key, epoch), m)``, so
  epoch e's shuffle depends only on the base key and e (resuming is exact);
- the m rows are padded to ``ceil(m / B)`` batches of B rows; in a batch with
  r real rows each real row weighs 1/r and each padded row 0, so
  J_B = sum_i w_i L_i + (l2/2) sum ||W||^2 is the mean over the real rows and
  nothing is dropped.

The targets follow the core's rules (``value_and_grad`` accepts exactly the
same ``y``). Classification data give integer labels y of shape (m,), for a
loss that takes them (``softmax_cross_entropy``): they mean one-hot targets
of width n_L, and accuracy is the share of rows whose largest output is the
label. The trainer holds the labels, so it checks 0 <= y < n_L (on the
labels' own integer type: nothing wraps around). Regression data give
targets (m, n_L).

How batches are drawn is the one part of :func:`fit` that varies: a batch
sampler (:class:`BatchSampler`). :class:`ShuffledEpochs` (the default) and
:class:`PoissonEpochs` (``fit(dp=...)``) are built in; any object with this
interface plugs in with ``fit(..., sampler=...)`` and gets the same loop,
history records, callback (progress bar, early stopping, checkpoints) and
exact resume::

    class MySampler(BatchSampler):
        unit = "iter"                  # the records' counter; state.epoch counts it
        private = False                # True only for a sampler that implements dp=
        dp_plan = None                 # what state.dp holds after the call

        def prepare(self, call: FitCall) -> None: ...
            # check the call (call.arrays() checks example arrays), keep what rounds need
        def stops(self, position: int, length: int | None) -> Sequence[int]: ...
            # the positions where this call's rounds end (evaluate, record, callback)
        def evaluate(self, params, position: int) -> dict: ...
            # {part: {metric: scalar}}: the record of a fresh run's position 0
        def advance(self, params, opt_state, key, start: int, stop: int)
                -> tuple[params, opt_state, dict]: ...
            # train units start..stop-1 (each step's randomness from fold_in(key, t)),
            # then evaluate as above; jit it with a static Step (Step.of(model, loss,
            # optimizer, mesh)) for the update
        def extra(self, position: int) -> dict: ...   # optional: more record fields

nanoGPT's loop is such a sampler: ``unit = "iter"``, ``stops`` every
``eval_interval`` iterations up to ``max_iters`` (``fit(..., epochs=None)``),
``advance`` a ``lax.scan`` of :class:`Step` over random windows, ``evaluate``
the mean loss of ``eval_iters`` random batches of each split.
``tests/test_fit_samplers.py`` plugs one in from outside the library.

Training runs in float32 or float64: half-precision params (float16,
bfloat16) are refused, since the optimizer's state and updates would be half
precision too (adam's epsilon is 0 in float16 and its second moment
underflows: one epoch can make every parameter NaN). Cast them first:
``jax.tree.map(lambda a: a.astype(jnp.float32), params)``.

Example::

    >>> import jax, functional_bp as fbp
    >>> from functional_bp.datasets import load_dataset
    >>> from functional_bp.train import fit, init_state, sgd
    >>> data = load_dataset("xor")
    >>> params = fbp.init_mlp(jax.random.key(0), [2, 8, 2])
    >>> opt = sgd(0.5)
    >>> state = init_state(params, optimizer=opt, key=jax.random.key(1))
    >>> state, history = fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
    ...                      activations=["tanh", "identity"], loss="softmax_cross_entropy",
    ...                      optimizer=opt, epochs=20, batch_size=16)
    >>> history[-1]["test_accuracy"] > 0.9
    True
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate, privacy
from .backprop import backprop_from_arrays, backprop_net_arrays
from .checkpoint import CheckpointError, load_checkpoint, save_params
from .layers import Dropout, Layer
from .mlp import forward_trace
from .network import add_l2, network_view
from .network import forward as network_forward
from .parallel import DataParallelStep, check_mesh

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "exponential", "warmup-cosine")


class TrainState(NamedTuple):
    """Everything that determines the rest of a run.

    Attributes:
      params: list of ``{"W", "b"}`` dicts, or a network's params.
      opt_state: the optimizer's state (a pytree).
      key: the base key of the shuffle schedule; epoch e uses ``fold_in(key, e)``.
      epoch: the number of epochs completed.
      dp: the :class:`functional_bp.privacy.DPPlan` of a private run (``fit``
        with ``dp=``), None otherwise; it travels in checkpoints.
    """

    params: Any
    opt_state: Any
    key: jax.Array
    epoch: int
    dp: Any = None


# --- optimizers ------------------------------------------------------------
class GradientTransformation(NamedTuple):
    """The optax interface: ``init(params) -> state``, ``update(g, state, params)``."""

    init: Callable
    update: Callable


def sgd(learning_rate: float) -> GradientTransformation:
    """Plain SGD, W := W - eta dJ/dW, with no dependency on optax; eta finite and > 0."""
    if isinstance(learning_rate, (int, float, np.integer, np.floating)) and not (
            not isinstance(learning_rate, bool) and 0 < learning_rate < float("inf")):
        raise ValueError(f"sgd(learning_rate): a finite number > 0 (eta in W := W - eta "
                         f"dJ/dW; a negative one climbs the loss); got {learning_rate!r}")

    def update(grads, state, params=None):
        return jax.tree.map(lambda g: -learning_rate * g, grads), state

    return GradientTransformation(lambda params: (), update)


def _optax(what):
    try:
        import optax
    except ImportError:
        raise ImportError(
            f"{what} needs optax, which is not installed; install the training extra: "
            "pip install 'functional_bp[train]'"
        ) from None
    return optax


def make_schedule(name: str, learning_rate: float, *, total_steps: int = 0,
                  warmup_steps: int = 0, decay_rate: float = 0.1,
                  final_fraction: float = 0.0):
    """A learning-rate schedule eta(t) by name, t the optimizer step (optax schedules).

    - ``"constant"``: eta(t) = eta (returned as the float itself).
    - ``"cosine"``: eta(t) = eta (f + (1 - f) (1 + cos(pi t / T)) / 2) for t <= T,
      then f eta (``optax.cosine_decay_schedule``, alpha = f).
    - ``"exponential"``: eta(t) = eta r^(t / T) (``optax.exponential_decay``): eta r
      at the end of the run, and decaying on if the run is resumed past T.
    - ``"warmup-cosine"``: linear from 0 to eta over the first ``warmup_steps``, then
      cosine down to f eta at step T (``optax.warmup_cosine_decay_schedule``).

    Args:
      name: one of :data:`SCHEDULES`.
      learning_rate: the peak (and starting, but for warm-up) rate eta > 0.
      total_steps: T, the optimizer steps of the whole run (not needed for constant).
      warmup_steps: for ``"warmup-cosine"``, 0 <= warmup_steps < T.
      decay_rate: r in (0, 1] for ``"exponential"``.
      final_fraction: f in [0, 1] for the cosine schedules.

    Example::

        >>> sched = make_schedule("cosine", 0.1, total_steps=100)
        >>> [round(float(sched(t)), 6) for t in (0, 50, 100)]
        [0.1, 0.05, 0.0]
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names are {list(SCHEDULES)}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}")
    if name == "constant":
        return learning_rate
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) \
            or total_steps < 1:
        raise ValueError(f"schedule {name!r} needs total_steps, the run's optimizer "
                         f"steps, as a positive integer; got {total_steps!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}); "
                         f"got {warmup_steps}")
    if not 0 < decay_rate <= 1:
        raise ValueError(f"decay_rate must be in (0, 1]; got {decay_rate}")
    if not 0 <= final_fraction <= 1:
        raise ValueError(f"final_fraction must be in [0, 1]; got {final_fraction}")
    optax = _optax(f"schedule {name!r}")
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total_steps, alpha=final_fraction)
    if name == "exponential":
        return optax.exponential_decay(learning_rate, total_steps, decay_rate)
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, total_steps, end_value=final_fraction * learning_rate)


def matrices(params):
    """The weight-decay mask of nanoGPT's rule: True for each leaf with two or more axes.

    Weight matrices, embeddings and kernels are decayed; biases, gains and
    other vectors are not (the AdamW rule of nanoGPT's ``configure_optimizers``).

    Example::

        >>> import jax.numpy as jnp
        >>> matrices([{"W": jnp.ones((3, 4)), "b": jnp.ones(4)}])
        [{'W': True, 'b': False}]
    """
    return jax.tree.map(lambda a: jnp.ndim(a) >= 2, params)


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9,
                   betas=(0.9, 0.999), weight_decay: float = 0.0, decay_mask=matrices,
                   grad_clip: float | None = None):
    """An optimizer by name: ``"sgd"`` (built in), ``"momentum"``, ``"adam"``, ``"adamw"`` (optax).

    Any optax ``GradientTransformation`` can be passed to :func:`fit` directly;
    this is the short list the command line offers. ``learning_rate`` is a
    positive number or a schedule ``t -> eta(t)`` (see :func:`make_schedule`;
    with a schedule, ``"sgd"`` is optax's).

    Args:
      name: one of :data:`OPTIMIZERS`.
      learning_rate: eta > 0 or a schedule.
      momentum: for ``"momentum"``.
      betas: (beta1, beta2) for ``"adam"`` and ``"adamw"``, each in [0, 1).
      weight_decay: lambda >= 0, for ``"adamw"`` only: decoupled decay
        p := p - eta lambda p on the leaves ``decay_mask`` selects (for the
        other optimizers use ``fit``'s ``l2``).
      decay_mask: ``params -> pytree of bools`` [:func:`matrices`: the leaves
        with two or more axes, nanoGPT's rule].
      grad_clip: c > 0 or None: the gradient is first scaled by
        min(1, c / ||g||), ||g|| the global norm over all leaves
        (``optax.clip_by_global_norm``).

    Example::

        >>> opt = make_optimizer("adamw", 1e-3, betas=(0.9, 0.99), weight_decay=0.1,
        ...                      grad_clip=1.0)
        >>> callable(opt.update)
        True
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names are {list(OPTIMIZERS)}")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}")
    if not (isinstance(weight_decay, (int, float, np.integer, np.floating))
            and not isinstance(weight_decay, bool) and 0 <= weight_decay < float("inf")):
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
    if weight_decay and name != "adamw":
        raise ValueError(f"weight_decay={weight_decay!r} is for 'adamw' (decoupled decay); "
                         f"for {name!r} use fit's l2= (the decay in the objective)")
    if grad_clip is not None and not (
            isinstance(grad_clip, (int, float, np.integer, np.floating))
            and not isinstance(grad_clip, bool) and 0 < grad_clip < float("inf")):
        raise ValueError(f"grad_clip must be a finite number > 0 or None; got {grad_clip!r}")
    b1, b2 = betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be two numbers in [0, 1); got {betas!r}")
    if name == "sgd" and not callable(learning_rate) and grad_clip is None:
        return sgd(learning_rate)
    optax = _optax(f"optimizer {name!r}" + (" with a schedule or grad_clip"
                                            if name == "sgd" else ""))
    if name == "sgd":
        opt = optax.sgd(learning_rate)
    elif name == "momentum":
        opt = optax.sgd(learning_rate, momentum=momentum)
    elif name == "adam":
        opt = optax.adam(learning_rate, b1=b1, b2=b2)
    else:
        opt = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                          mask=decay_mask)
    if grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    return opt


def _apply(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


# --- one step, one epoch -----------------------------------------------------
def _step_grads(params, x, y, w, l2, activations, loss, key=None):
    """(J_B, dJ_B/dparams) on one minibatch, weights w (B,) in place of 1/B.

    ``activations`` is the model: the activations tuple (the MLP) or a
    network, whose Dropout layers draw their masks from ``key``.
    """
    if isinstance(activations, Layer):
        view = network_view(activations, params)
        r = backprop_net_arrays(view.to_net(params), x, y, l2, key, view=view, loss=loss,
                                weights=w)
    else:
        r = backprop_from_arrays(params, x, y, l2, activations, loss, weights=w)
    return r.loss, r.grads


def _uses_key(model) -> bool:
    """Whether the model has a Dropout layer that is active in training."""
    return isinstance(model, Layer) and any(
        isinstance(layer, Dropout) and layer.rate > 0 for layer in model.leaves())


def _step_grads_on(mesh):
    """The step's gradient on one device, or with the rows split over ``mesh``."""
    return _step_grads if mesh is None else DataParallelStep(check_mesh(mesh))


def batch_plan(key, m: int, batch_size: int, dtype=jnp.float32):
    """The epoch's minibatches: row indices (n_batches, B) and weights (n_batches, B).

    Rows are a random permutation of range(m), padded with row 0 up to
    n_batches * B; a batch with r real rows gives them weight 1/r and its
    padded rows weight 0.
    """
    n_batches = -(-m // batch_size)
    counts = np.minimum(batch_size, m - batch_size * np.arange(n_batches))
    real = np.arange(batch_size)[None, :] < counts[:, None]
    w = np.where(real, 1.0 / counts[:, None], 0.0)
    perm = jax.random.permutation(key, m)
    pad = jnp.zeros((n_batches * batch_size - m,), perm.dtype)
    idx = jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)
    return idx, jnp.asarray(w, dtype=dtype)


class Step(NamedTuple):
    """One optimizer step on a weighted batch, for a compiled training loop.

    Hashable and equal by its fields, so it can be a static argument of
    ``jax.jit`` (the compiled round of a :class:`BatchSampler`).

    Attributes:
      model: the static model (the activations tuple or a network).
      loss: the :class:`functional_bp.losses.Loss`.
      optimizer: anything with optax's ``init``/``update``.
      grads: ``(params, x, y, w, l2, model, loss[, key]) -> (J_B, G)``; the
        hand-derived gradient on one device, or split over a mesh
        (:func:`Step.of` picks it).
    """

    model: Any
    loss: Any
    optimizer: Any
    grads: Callable = _step_grads

    @classmethod
    def of(cls, model, loss, optimizer, mesh=None) -> "Step":
        """The step of a model and loss (resolved, static), on one device or over ``mesh``."""
        return cls(model, loss, optimizer, _step_grads_on(mesh))

    def __call__(self, params, opt_state, x, y, w, l2, key=None):
        """``(params, opt_state, J_B)`` after one step on rows x, y with weights w.

        J_B = sum_i w_i L_i + (l2/2) sum ||W||^2 and G = dJ_B/dparams by the
        delta recursion; ``key`` draws the Dropout masks (ignored without
        Dropout).
        """
        J, G = self.grads(params, x, y, w, l2, self.model, self.loss,
                          *([key] if _uses_key(self.model) else []))
        params, opt_state = self.update(params, opt_state, G)
        return params, opt_state, J

    def update(self, params, opt_state, G):
        """``(params, opt_state)`` after the optimizer's update for the gradient ``G``."""
        updates, opt_state = self.optimizer.update(G, opt_state, params)
        return _apply(params, updates), opt_state


def _epoch(params, opt_state, key, x, y, l2, activations, loss, optimizer, batch_size,
           step_grads=_step_grads):
    """One pass over (x, y) in shuffled minibatches: a lax.scan of update steps.

    ``step_grads`` computes one step's ``(J_B, G)``; a variant with the same
    signature (e.g. one that splits the batch over devices) can replace it.
    """
    idx, weights = batch_plan(key, x.shape[0], batch_size, y.dtype)
    # Dropout masks: one key per step, apart from the shuffle's key.
    step_keys = jax.random.split(jax.random.fold_in(key, 1), idx.shape[0])
    one_step = Step(activations, loss, optimizer, step_grads)

    def step(carry, batch):
        params, opt_state = carry
        i, w, k = batch
        params, opt_state, J = one_step(params, opt_state, x[i], y[i], w, l2, k)
        return (params, opt_state), J

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               (idx, weights, step_keys))
    return params, opt_state, losses


@partial(jax.jit, static_argnames=("activations", "loss", "optimizer", "batch_size",
                                   "step_grads"))
def _train_epoch(params, opt_state, base_key, epoch, x, y, l2, *, activations, loss,
                 optimizer, batch_size, step_grads=_step_grads):
    key = jax.random.fold_in(base_key, epoch)
    return _epoch(params, opt_state, key, x, y, l2, activations, loss, optimizer,
                  batch_size, step_grads)


def _metrics_of(params, x, y, labels, activations, loss):
    if isinstance(activations, Layer):  # a network, in evaluation mode (no dropout)
        a = network_forward(activations, params, x)[0]
    else:
        a = forward_trace(params, x, activations)[1][-1]
    out = {"loss": jnp.mean(loss.value(a, y))}
    if labels is not None:
        out["accuracy"] = jnp.mean(jnp.argmax(a, axis=-1) == labels)
    return out


@partial(jax.jit, static_argnames=("activations", "loss"))
def _metrics(params, sets, *, activations, loss):
    """{part: {"loss", "accuracy"?}} for each part (x, y, labels) of ``sets``."""
    return {part: _metrics_of(params, *data, activations, loss) for part, data in sets.items()}


@partial(jax.jit, static_argnames=("activations", "loss", "optimizer", "batch_size",
                                   "step_grads"))
def _fit_epoch(params, opt_state, base_key, epoch, x, y, l2, sets, *, activations, loss,
               optimizer, batch_size, step_grads=_step_grads):
    """One epoch and the metrics after it, in one compiled program (one dispatch)."""
    params, opt_state, _ = _train_epoch(params, opt_state, base_key, epoch, x, y, l2,
                                        activations=activations, loss=loss,
                                        optimizer=optimizer, batch_size=batch_size,
                                        step_grads=step_grads)
    return params, opt_state, _metrics(params, sets, activations=activations, loss=loss)


@partial(jax.jit, static_argnames=("plan", "step", "mesh"))
def _private_fit_epoch(params, opt_state, key, epoch, x, y, l2, sets, *, plan, step, mesh=None):
    """One private epoch and the metrics after it, in one compiled program.

    Steps t = epoch * S, ..., (epoch + 1) * S - 1 (S = ``privacy.steps_per_epoch``),
    each: g = :func:`functional_bp.privacy.private_grad` with ``step_key(key, t)``,
    plus the weight decay l2 W (it does not depend on the data, so it costs no
    privacy), then the optimizer's update. Everything random in step t comes
    from its key: a run resumed at any epoch repeats the uninterrupted one
    exactly. ``x``, ``y`` are the whole training set, validated (targets, not labels).
    """
    spe = privacy.steps_per_epoch(plan.num_examples, plan.batch_size)
    model, loss = step.model, step.loss

    def one(carry, t):
        params, opt_state = carry
        g = privacy.private_step_grad(params, (x, y), privacy.step_key(key, t), plan,
                                      model=model, loss=loss, mesh=mesh)
        return step.update(params, opt_state, add_l2(g, params, l2, model)), None

    (params, opt_state), _ = jax.lax.scan(one, (params, opt_state),
                                          epoch * spe + jnp.arange(spe))
    return params, opt_state, _metrics(params, sets, activations=model, loss=loss)


# --- validation ----------------------------------------------------------------
def _prepare(params, data, model, loss, part="data"):
    """Validate once; return (model, Loss, x, targets, labels or None).

    The target rules are the core's (:func:`_validate.prepare_model`): integer
    labels (m,) only for a loss that takes them, made one-hot there. The
    labels are also kept, as int32, for the accuracy; they are on the host
    here, so their range is checked (:func:`_check_labels`) before any cast.
    ``model`` comes back static and resolved: the activations tuple or the network.
    """
    x, y = _validate.array_batch(data)
    view, _, loss, x, targets = _validate.prepare_model(params, (x, y), model, loss)
    _validate.check_token_values(model, data[0], f"{part}: x")
    _validate.check_finite_values(x, f"{part}: x")
    _validate.check_finite_values(targets, f"{part}: y")
    _validate.check_label_values(y, targets.shape[1:], part)  # (m,) or a sequence's (m, T)
    labels = None
    if targets.ndim == 2 and np.ndim(y) == 1:  # labels, accepted by the loss
        labels = jnp.asarray(_check_labels(y, targets.shape[1], part), dtype=jnp.int32)
    if not isinstance(model, Layer):
        model = tuple(layer.fn for layer in view.net.layers[1::2])
    return model, loss, x, targets, labels


def _check_labels(y, n_L, part):
    """Integer labels y (m,) as a host array, after checking 0 <= y < n_L.

    The core cannot check them under tracing (a label outside [0, n_L) gives an
    all-zero target row there); the trainer holds them, so it does. The check
    runs on the labels' own integer type: an int64 label of 2**32 is refused,
    not wrapped to 0 by a cast to int32.
    """
    if isinstance(y, jax.core.Tracer):
        return y
    labels = np.asarray(y)
    _validate.check_label_values(labels, (n_L,), part)
    return labels


def _check_training_dtype(params):
    """Refuse to train half-precision params (float16, bfloat16).

    The optimizer's state and update would be half precision too: adam's
    epsilon 1e-8 is 0 in float16 and its second moment underflows, so one
    epoch can turn every parameter into NaN, and an SGD update smaller than
    half an ulp of a weight is lost. Training runs in float32 or float64.
    """
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating) \
                and jnp.finfo(dtype).bits < 32:
            raise TypeError(
                f"fit and train_epoch train in float32 or float64; the params have dtype "
                f"{jnp.dtype(dtype).name}, in which the optimizer's state and updates "
                "underflow (adam turns them into NaN). Cast them before init_state: "
                "params = jax.tree.map(lambda a: a.astype(jnp.float32), params)"
            )


def _model(activations, network, mesh=None):
    """The static model of a training call (activations tuple or network)."""
    model = _validate.resolve_model(activations, network)
    if mesh is not None and _uses_key(model):
        raise ValueError(
            "training with Dropout and mesh= is not supported: the data-parallel step runs "
            "without dropout masks; drop mesh= or the Dropout layers"
        )
    return _validate.static_config(model)[0]


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return int(batch_size)


# --- batch samplers: the part of a run that varies ------------------------------------
class FitCall(NamedTuple):
    """What :func:`fit` hands a :class:`BatchSampler`: the call, with its common checks done.

    ``l2`` has been checked, the params' dtype too, and ``model`` resolved
    (static); the data are as given (the sampler checks them its own way, or
    with :meth:`arrays`).

    Attributes:
      state: the :class:`TrainState` the call starts from.
      train, test, val: the data as given to ``fit``.
      model: the static model: the activations (the dense chain) or a network.
      loss: the loss as given (a name or a Loss).
      optimizer: anything with optax's ``init``/``update``.
      l2: the weight decay l2 >= 0 of the objective.
      mesh: a checked :class:`jax.sharding.Mesh`, or None.
      length: ``fit``'s ``epochs`` argument: how many units to run now
        (None: the sampler decides, e.g. up to its ``max_iters``).
      dp: the :class:`functional_bp.privacy.DPConfig`, or None.
    """

    state: Any
    train: Any
    test: Any
    val: Any
    model: Any
    loss: Any
    optimizer: Any
    l2: Any
    mesh: Any
    length: Any
    dp: Any

    def arrays(self) -> "Arrays":
        """The example-array form of the data, checked (:class:`Arrays`)."""
        model, loss, x, y, labels = _prepare(self.state.params, self.train, self.model,
                                             self.loss, "train")
        sets = {"train": (x, y, labels)}
        for part in ("test", "val"):
            if getattr(self, part) is not None:
                sets[part] = _prepare(self.state.params, getattr(self, part), model, loss,
                                      part)[2:]
        return Arrays(model, loss, x, y, sets)


class Arrays(NamedTuple):
    """Examples as arrays, checked as the core checks them (:meth:`FitCall.arrays`).

    Attributes:
      model: the static model, resolved (the activations tuple or the network).
      loss: the :class:`functional_bp.losses.Loss`.
      x, y: the training set (targets, labels made one-hot).
      sets: ``{part: (x, y, labels or None)}`` for ``"train"`` and the
        held-out parts given, what :func:`evaluate_sets` takes.
    """

    model: Any
    loss: Any
    x: Any
    y: Any
    sets: dict


def evaluate_sets(params, sets, *, model, loss):
    """``{part: {"loss": mean L, "accuracy"?}}`` for each part of ``sets`` (jitted, on device).

    The network runs in evaluation mode (no dropout); accuracy is reported
    for labels. What the epoch samplers record after each epoch.
    """
    return _metrics(params, sets, activations=model, loss=loss)


class BatchSampler:
    """How a run draws its batches: the one part of :func:`fit` that varies.

    ``fit`` runs one loop for every sampler: it checks the common arguments,
    calls :meth:`prepare` once, records the untrained network (a fresh run),
    then for each ``stop`` of :meth:`stops` calls :meth:`advance` and makes
    one history record ``{unit: stop, "<part>_<metric>": value, ...,
    **extra(stop)}``, hands it to the callback (progress bar, early stopping,
    checkpoints) and goes on unless the callback says stop. ``state.epoch``
    counts the units done (epochs, or iterations), so one checkpoint format
    (:func:`save_state`) and exact resume serve every sampler: a round must
    be a pure function of ``(params, opt_state, key, start, stop)``, drawing
    everything random from ``key`` folded with the step index.

    The interface (override all but :meth:`extra`)::

        unit: str                        # the history's counter: "epoch", "iter"
        private: bool = False            # True: it implements fit(dp=...)
        dp_plan = None                   # after prepare: what state.dp holds
        prepare(call: FitCall) -> None   # check the call, keep what the rounds need
        stops(position: int, length: int | None) -> Sequence[int]
                                         # where the rounds of this call end
        evaluate(params, position) -> {part: {metric: scalar}}
                                         # the record of a fresh run's position 0
        advance(params, opt_state, key, start: int, stop: int)
            -> (params, opt_state, {part: {metric: scalar}})
                                         # train units start..stop, then evaluate
        extra(position) -> dict          # more record fields (Poisson: epsilon)

    The built-in samplers are :class:`ShuffledEpochs` (the default) and
    :class:`PoissonEpochs` (``fit(dp=...)``). A sampler of random windows of
    text for a fixed number of iterations (nanoGPT's loop) is the same shape
    with ``unit = "iter"``, ``stops`` the multiples of ``eval_interval`` up to
    ``max_iters`` (and ``max_iters`` itself), ``advance`` a jitted
    ``lax.scan`` over steps t = start..stop-1 of :class:`Step` on windows
    drawn from ``fold_in(key, t)``, then the mean loss of ``eval_iters``
    random batches of each split. :class:`Step` is the optimizer step every
    sampler shares; the test ``tests/test_fit_samplers.py`` plugs in such
    a sampler without any change to ``fit``.
    """

    unit = "epoch"
    private = False
    dp_plan = None

    def prepare(self, call: FitCall) -> None:  # pragma: no cover - the interface
        raise NotImplementedError

    def stops(self, position: int, length):  # pragma: no cover - the interface
        raise NotImplementedError

    def evaluate(self, params, position: int):  # pragma: no cover - the interface
        raise NotImplementedError

    def advance(self, params, opt_state, key, start: int, stop: int):  # pragma: no cover
        raise NotImplementedError

    def extra(self, position: int) -> dict:
        """Record fields beyond the metrics at ``position`` (none by default)."""
        return {}


class _EpochSampler(BatchSampler):
    """Epochs over example arrays: what the shuffled and the Poisson samplers share."""

    def __init__(self, batch_size: int = 32):
        self.batch_size = _check_batch_size(batch_size)

    def prepare(self, call: FitCall) -> None:
        self.stops(call.state.epoch, call.length)  # the epochs, checked first
        self.data = call.arrays()
        self.batch = min(self.batch_size, self.data.x.shape[0])
        self.l2, self.mesh = call.l2, call.mesh
        self.step = Step.of(self.data.model, self.data.loss, call.optimizer, call.mesh)

    def stops(self, position, length):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"epochs must be a non-negative integer; got {length!r}")
        return range(position + 1, position + int(length) + 1)

    def evaluate(self, params, position):
        return evaluate_sets(params, self.data.sets, model=self.data.model, loss=self.data.loss)


class ShuffledEpochs(_EpochSampler):
    """Epochs of shuffled minibatches of ``batch_size`` rows (the default of :func:`fit`).

    Epoch e's order is ``jax.random.permutation(fold_in(key, e), m)``; the
    last batch is padded with weight-0 rows (see :func:`batch_plan`).
    """

    def advance(self, params, opt_state, key, start, stop):
        d = self.data
        for epoch in range(start, stop):
            params, opt_state, metrics = _fit_epoch(
                params, opt_state, key, epoch, d.x, d.y, self.l2, d.sets,
                activations=d.model, loss=d.loss, optimizer=self.step.optimizer,
                batch_size=self.batch, step_grads=self.step.grads)
        return params, opt_state, metrics


class PoissonEpochs(_EpochSampler):
    """Private epochs of Poisson batches (DP-SGD), what ``fit(dp=...)`` uses.

    Each epoch is ``round(N / batch_size)`` steps; step t samples every
    example with probability q = batch_size / N from ``step_key(key, t)``
    and takes :func:`functional_bp.privacy.private_grad`'s step plus l2 W.
    The plan (:func:`functional_bp.privacy.fit_plan`) is made or checked
    against the state's in :meth:`prepare`; each record gets ``epsilon``.
    """

    private = True

    def prepare(self, call: FitCall) -> None:
        super().prepare(call)
        if call.dp is None:
            raise ValueError("PoissonEpochs draws the batches of private training: pass "
                             "dp=DPConfig(...) to fit")
        self.dp_plan = privacy.fit_plan(call.dp, call.state.dp,
                                        num_examples=self.data.x.shape[0],
                                        batch_size=self.batch, epoch=call.state.epoch,
                                        epochs=call.length)
        privacy.check_private_model(self.data.model)
        if call.state.key is None:
            raise ValueError("state.key is None: private training draws each step's batch "
                             "and noise from it (privacy.step_key(state.key, t)); make the "
                             "state with init_state(params, optimizer=..., "
                             "key=jax.random.key(seed))")

    def advance(self, params, opt_state, key, start, stop):
        d = self.data
        for epoch in range(start, stop):
            params, opt_state, metrics = _private_fit_epoch(
                params, opt_state, key, epoch, d.x, d.y, self.l2, d.sets, plan=self.dp_plan,
                step=self.step, mesh=self.mesh)
        return params, opt_state, metrics

    def extra(self, position):
        return privacy.epoch_record(self.dp_plan, position)


# --- public API --------------------------------------------------------------------
def init_state(params, *, optimizer, key) -> TrainState:
    """A fresh :class:`TrainState`: epoch 0, ``optimizer.init(params)``.

    ``params`` are an MLP's (``init_mlp``) or a network's (``network.init``);
    they are checked against the model by :func:`fit`.
    """
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError(
            "params must be a non-empty list, as returned by init_mlp or network.init; got "
            f"{type(params).__name__}"
        )
    params = _validate.params_as_arrays(params)
    return TrainState(params, optimizer.init(params), key, 0)


def train_epoch(state: TrainState, data, *, activations=None, network=None, loss, optimizer,
                batch_size, l2=0.0, mesh=None):
    """One epoch over ``data = (x, y)``: returns ``(new_state, minibatch_losses)``.

    ``minibatch_losses`` has one J_B per step, shape (ceil(m / B),). With a
    ``mesh``, each step's minibatch is split over its ``"data"`` axis (see
    :func:`fit`).
    """
    _validate.check_l2(l2)
    _check_training_dtype(state.params)
    acts, loss, x, y, _ = _prepare(state.params, data, _model(activations, network, mesh), loss,
                                   "data")
    batch_size = min(_check_batch_size(batch_size), x.shape[0])
    if state.dp is not None:
        raise ValueError("train_epoch takes non-private steps, and this state comes from a "
                         "private run; continue it with fit(..., dp=) and its DPConfig")
    params, opt_state, losses = _train_epoch(
        state.params, state.opt_state, state.key, state.epoch, x, y, l2,
        activations=acts, loss=loss, optimizer=optimizer, batch_size=batch_size,
        step_grads=_step_grads_on(mesh))
    return TrainState(params, opt_state, state.key, state.epoch + 1), losses


def evaluate(params, data, *, activations=None, network=None, loss) -> dict:
    """``{"loss": mean L}`` over ``data = (x, y)``, plus ``"accuracy"`` for labels.

    The loss is the mean per-example loss L (without the l2 term); accuracy is
    the share of rows whose largest output is the label.
    """
    acts, loss, x, y, labels = _prepare(params, data, _model(activations, network), loss)
    out = _metrics(params, {"data": (x, y, labels)}, activations=acts, loss=loss)
    return {k: float(v) for k, v in out["data"].items()}


def _record(unit, position, metrics, extra):
    """One history entry from {part: {name: value}}: every metric as a Python float."""
    record = {unit: int(position)}
    for part, values in jax.device_get(metrics).items():
        record.update({f"{part}_{k}": float(v) for k, v in values.items()})
    record.update(extra)
    return record


def fit(state: TrainState, train, test=None, *, activations=None, network=None, loss,
        optimizer, epochs=None, batch_size=None, l2=0.0, callback=None, mesh=None, val=None,
        dp=None, sampler=None):
    """Train for ``epochs`` more epochs from ``state``; evaluate after each one.

    One loop for every way of drawing batches: ``sampler`` (a
    :class:`BatchSampler`) is the part that varies; by default
    :class:`ShuffledEpochs` (``batch_size``), or :class:`PoissonEpochs` with
    ``dp=``. The records, the callback, the state and so the checkpoints are
    the same for all.

    Args:
      state: from :func:`init_state` (a new run) or :func:`load_state` (resuming).
      train: ``(x, y)``: x (m, n_0); y integer labels (m,) in [0, n_L) for a
        loss that takes labels (``softmax_cross_entropy``), or targets (m, n_L):
        the rules of :func:`functional_bp.value_and_grad`.
      test: optional held-out ``(x, y)`` of the same kind.
      val: optional validation ``(x, y)`` of the same kind, evaluated after each
        epoch as ``val_loss`` (and ``val_accuracy``): what early stopping watches.
      activations: one name or Activation per layer (static), for the dense chain, or
      network: a :class:`functional_bp.layers.Sequential` (static); its Dropout
        layers draw a fresh mask each step from the state's key.
      loss: a loss name or Loss (static).
      optimizer: anything with optax's ``init``/``update`` (``sgd``,
        ``make_optimizer``, any ``optax.GradientTransformation``, e.g.
        ``make_optimizer("adamw", 1e-3, weight_decay=0.1, grad_clip=1.0)``:
        weight decay on the leaves with two or more axes only, gradients
        clipped to global norm 1).
      epochs: how many epochs (the sampler's units) to run now; None lets a
        sampler that knows its length decide (the epoch samplers need it).
      batch_size: rows per minibatch B (B > m means one batch of all rows), for
        the default samplers [32]; with ``sampler=`` it is refused (give it to
        the sampler).
      l2: weight decay on the W's, a real number >= 0 (checked). It is an
        ordinary input of the compiled epoch: a new value does not recompile.
      callback: optional ``f(record)`` called with each history entry, right
        after its epoch; if it has a parameter named ``state`` it is called as
        ``f(record, state=...)`` with the :class:`TrainState` after that epoch.
        A true return value stops training after that epoch (see
        :class:`EarlyStopping`, which also keeps the best state). Without a
        callback, each epoch and its metrics run as one compiled program queued
        behind the last, and the metrics are read from the device once, at the end.
      mesh: optional :class:`jax.sharding.Mesh` with a ``"data"`` axis: each
        step's minibatch is split over it and its gradient computed by
        :func:`functional_bp.data_parallel_value_and_grad`'s array-level core
        (same results as one device, up to rounding).
      dp: optional :class:`functional_bp.privacy.DPConfig`: private training
        (DP-SGD). Each epoch is round(N / batch_size) steps; each step samples
        a Poisson batch (every example with probability q = batch_size / N),
        takes (sum of the clipped g_i + N(0, sigma^2 C^2 I)) / (q N)
        (:func:`functional_bp.privacy.private_grad`), adds l2 W, and applies
        the optimizer. Every record gets ``epsilon`` (at the plan's delta, from
        the accountant); ``state.dp`` holds the plan, and a resumed run must
        pass the same configuration (see :func:`functional_bp.privacy.fit_plan`
        for what is refused). With ``mesh``, each device clips its rows and
        the noise is added once, after the sum. Dropout layers are refused.
      sampler: optional :class:`BatchSampler`: how batches are drawn, and
        what a record holds (its ``unit`` names the counter instead of
        ``epoch``).

    Returns:
      ``(state, history)``: history is a list of dicts with ``epoch``,
      ``train_loss``, ``test_loss`` (``val_loss``) and, for labels,
      ``train_accuracy`` and ``test_accuracy`` (``val_accuracy``) (losses are
      the mean L, without the l2 term). A
      fresh run (``state.epoch == 0``) starts with the untrained network as
      epoch 0.

    Raises:
      ValueError: ``y`` of a shape the loss does not take (as the core), a
        label outside [0, n_L) (the message names the part, the largest or
        smallest label and n_L), ``l2`` negative, NaN or infinite.
      TypeError: half-precision params (cast them to float32), ``l2`` not a
        real number.
    """
    if epochs is not None and (isinstance(epochs, bool)
                               or not isinstance(epochs, (int, np.integer)) or epochs < 0):
        raise ValueError(f"epochs must be a non-negative integer; got {epochs!r}")
    _validate.check_l2(l2)
    _check_training_dtype(state.params)
    model = _model(activations, network, mesh)
    if sampler is None:
        sampler = (ShuffledEpochs if dp is None else PoissonEpochs)(
            32 if batch_size is None else batch_size)
    elif batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r} is for fit's default samplers; with "
                         f"sampler={type(sampler).__name__}(...), give the batch size to the "
                         "sampler")
    private = bool(getattr(sampler, "private", False))  # duck-typed samplers too
    extra = getattr(sampler, "extra", lambda position: {})
    unit = getattr(sampler, "unit", "epoch")
    if dp is not None and not private:
        raise ValueError(f"dp= needs a private sampler; {type(sampler).__name__} draws its "
                         "batches without the Poisson sampling the accounting assumes: leave "
                         "sampler= out (fit(dp=) uses PoissonEpochs)")
    if state.dp is not None and not private:
        privacy.check_continued_privately(state.dp)
    sampler.prepare(FitCall(state, train, test, val, model, loss, optimizer, l2,
                            None if mesh is None else check_mesh(mesh), epochs, dp))
    stops = sampler.stops(state.epoch, epochs)
    history, pending = [], []  # pending: (position, metrics still on the device)
    call = _callback_caller(callback)

    def record(position, metrics):
        # Without a callback nothing waits for the device: the next round is
        # queued while this one runs, and the metrics are read at the end.
        pending.append((position, metrics))
        if callback is not None:
            history.append(_record(unit, *pending.pop(), extra(position)))
            return call(history[-1], state)
        return False

    stop = state.epoch == 0 and record(0, sampler.evaluate(state.params, 0))
    for end in (stops if not stop else ()):
        params, opt_state, metrics = sampler.advance(state.params, state.opt_state, state.key,
                                                     state.epoch, end)
        state = TrainState(params, opt_state, state.key, int(end),
                           getattr(sampler, "dp_plan", None))
        if record(state.epoch, metrics):
            break
    history.extend(_record(unit, p, m, extra(p)) for p, m in pending)
    return state, history


def _callback_caller(callback):
    """``(record, state) -> bool``: calls ``callback`` with the state if it takes one."""
    if callback is None:
        return None
    try:
        inspect.signature(callback).bind({}, state=None)
    except (TypeError, ValueError):  # no ``state`` parameter (or no signature)
        return lambda record, state: bool(callback(record))
    return lambda record, state: bool(callback(record, state=state))


class EarlyStopping:
    """A :func:`fit` callback: stop when ``monitor`` has not improved for ``patience`` epochs.

    An epoch improves when its ``record[monitor] < best - min_delta``; after
    ``patience`` epochs in a row without improvement the callback returns True
    and ``fit`` stops. Whatever the patience, it keeps the state of the best
    epoch: after ``fit``, ``best_state`` is that :class:`TrainState` (its
    ``epoch`` says which), ``best_record`` its history entry. A NaN value never
    improves.

    Args:
      patience: epochs without improvement before stopping; None never stops
        (the best state is still kept).
      monitor: the history key to minimise [``"val_loss"``: pass ``val=`` to fit].
      min_delta: the smallest decrease that counts as an improvement.

    Example::

        >>> import jax, functional_bp as fbp
        >>> from functional_bp.datasets import load_dataset
        >>> from functional_bp.train import EarlyStopping, fit, init_state, sgd
        >>> data = load_dataset("xor")
        >>> opt, stop = sgd(0.5), EarlyStopping(patience=3)
        >>> state = init_state(fbp.init_mlp(jax.random.key(0), [2, 8, 2]), optimizer=opt,
        ...                    key=jax.random.key(1))
        >>> state, history = fit(state, (data.x_train, data.y_train),
        ...                      val=(data.x_test, data.y_test), activations=["tanh", "identity"],
        ...                      loss="softmax_cross_entropy", optimizer=opt, epochs=200,
        ...                      batch_size=16, callback=stop)
        >>> best = min(history, key=lambda r: r["val_loss"])
        >>> stop.best_state.epoch == best["epoch"], len(history) - 1 - best["epoch"] <= 3
        (True, True)
        >>> state = stop.best_state  # keep the best parameters
    """

    def __init__(self, patience: int | None = None, *, monitor: str = "val_loss",
                 min_delta: float = 0.0):
        if patience is not None and (isinstance(patience, bool) or not isinstance(
                patience, (int, np.integer)) or patience < 1):
            raise ValueError(f"patience must be a positive integer or None; got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0; got {min_delta!r}")
        self.patience, self.monitor, self.min_delta = patience, monitor, min_delta
        self.best_state, self.best_record, self.wait = None, None, 0

    @property
    def best(self) -> float:
        """The best value of ``monitor`` so far (inf before the first epoch)."""
        return float("inf") if self.best_record is None else self.best_record[self.monitor]

    def __call__(self, record: dict, state: TrainState) -> bool:
        if self.monitor not in record:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which the history does not "
                f"have (it has {sorted(record)}); pass val=(x, y) to fit for 'val_loss'"
            )
        value = record[self.monitor]
        if value < self.best - self.min_delta:  # False for NaN
            self.best_state, self.best_record, self.wait = state, dict(record), 0
        else:
            self.wait += 1
        return self.patience is not None and self.wait >= self.patience


# --- saving and resuming ------------------------------------------------------------
def save_state(path, state: TrainState, *, activations=None, network=None, loss=None,
               metadata=None):
    """Write params, optimizer state, key schedule and epoch to one checkpoint.

    The optimizer state is flattened with ``jax.tree_util``; its leaves are
    stored as ``extra/opt/<i>``. :func:`load_state` rebuilds the tree from
    ``optimizer.init(params)``.
    """
    leaves = jax.tree_util.tree_leaves(state.opt_state)
    extra = {f"opt/{i}": leaf for i, leaf in enumerate(leaves)}
    extra["key"] = jax.random.key_data(state.key)
    extra["epoch"] = np.asarray(state.epoch, dtype=np.int64)
    meta = dict(metadata or {}, epoch=int(state.epoch), opt_leaves=len(leaves))
    if state.dp is not None:  # a private run: its plan, steps taken and epsilon
        meta["dp"] = privacy.checkpoint_metadata(state.dp, state.epoch)
    return save_params(path, state.params, activations=activations, network=network, loss=loss,
                       metadata=meta, extra=extra)


def load_state(path, *, optimizer, sizes=None):
    """Read a checkpoint written by :func:`save_state`: ``(TrainState, metadata)``.

    For a network checkpoint, the rebuilt network is
    ``functional_bp.layers.from_config(metadata["network"])``.

    Raises:
      CheckpointError: the file holds no training state, or its optimizer state
        does not fit ``optimizer`` (another optimizer than the one it was
        saved with).
    """
    ckpt = load_checkpoint(path, sizes=sizes)
    if "key" not in ckpt.extra or "epoch" not in ckpt.extra:
        raise CheckpointError(
            f"{path}: holds params only, no training state (key schedule, optimizer "
            "state); it can be evaluated or checked but not resumed"
        )
    template, treedef = jax.tree_util.tree_flatten(optimizer.init(ckpt.params))
    saved = [ckpt.extra.get(f"opt/{i}") for i in range(ckpt.metadata.get("opt_leaves", -1))]
    if len(saved) != len(template) or any(
        s is None or s.shape != np.shape(t) or s.dtype != np.asarray(t).dtype
        for s, t in zip(saved, template)
    ):
        raise CheckpointError(
            f"{path}: the saved optimizer state ({len(saved)} arrays) does not fit "
            f"this optimizer ({len(template)} arrays); resume with the optimizer the "
            "run was saved with"
        )
    opt_state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(s) for s in saved])
    key = jax.random.wrap_key_data(jnp.asarray(ckpt.extra["key"]))
    epoch = int(ckpt.extra["epoch"])
    dp = None
    if "dp" in ckpt.metadata:
        try:
            dp = privacy.plan_from_metadata(ckpt.metadata["dp"], epoch=epoch, where=str(path),
                                            history=ckpt.metadata.get("history"))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    return TrainState(ckpt.params, opt_state, key, epoch, dp), ckpt.metadata
