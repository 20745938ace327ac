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

OPTIMIZERS = ("sgd", "momentum", "adam")
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
    """Plain SGD, W := W - eta dJ/dW, with no dependency on optax."""

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


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9):
    """An optimizer by name: ``"sgd"`` (built in), ``"momentum"`` or ``"adam"`` (optax).

    Any optax ``GradientTransformation`` can be passed to :func:`fit` directly;
    this is the short list the command line offers. ``learning_rate`` is a
    positive number or a schedule ``t -> eta(t)`` (see :func:`make_schedule`;
    with a schedule, ``"sgd"`` is optax's).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names are {list(OPTIMIZERS)}")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive; got {learning_rate}")
    if name == "sgd" and not callable(learning_rate):
        return sgd(learning_rate)
    optax = _optax(f"optimizer {name!r}" + (" with a schedule" if name == "sgd" else ""))
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    return optax.adam(learning_rate)


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


def _epoch(params, opt_state, key, x, y, l2, activations, loss, optimizer, batch_size,
           step_grads=_step_grads):
    """One pass over (x, y) in shuffled minibatches: a lax.scan of update steps.

    ``step_grads`` computes one step's ``(J_B, G)``; a variant with the same
    signature (e.g. one that splits the batch over devices) can replace it.
    """
    idx, weights = batch_plan(key, x.shape[0], batch_size, y.dtype)
    # Dropout masks: one key per step, apart from the shuffle's key.
    step_keys = jax.random.split(jax.random.fold_in(key, 1), idx.shape[0])
    with_key = _uses_key(activations)

    def step(carry, batch):
        params, opt_state = carry
        i, w, k = batch
        J, G = step_grads(params, x[i], y[i], w, l2, activations, loss, *([k] if with_key else []))
        updates, opt_state = optimizer.update(G, opt_state, params)
        return (_apply(params, updates), opt_state), J

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


@partial(jax.jit, static_argnames=("plan", "model", "loss", "optimizer", "mesh"))
def _private_fit_epoch(params, opt_state, key, epoch, x, y, l2, sets, *, plan, model, loss,
                       optimizer, mesh=None):
    """One private epoch and the metrics after it, in one compiled program.

    Steps t = epoch * S, ..., (epoch + 1) * S - 1 (S = ``privacy.steps_per_epoch``),
    each: g = :func:`functional_bp.privacy.private_grad` with ``step_key(key, t)``,
    plus the weight decay l2 W (it does not depend on the data, so it costs no
    privacy), then the optimizer's update. Everything random in step t comes
    from its key: a run resumed at any epoch repeats the uninterrupted one
    exactly. ``x``, ``y`` are the whole training set, validated (targets, not labels).
    """
    spe = privacy.steps_per_epoch(plan.num_examples, plan.batch_size)

    def step(carry, t):
        params, opt_state = carry
        g = privacy.private_step_grad(params, (x, y), privacy.step_key(key, t), plan,
                                      model=model, loss=loss, mesh=mesh)
        updates, opt_state = optimizer.update(add_l2(g, params, l2, model), opt_state, params)
        return (_apply(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state),
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


def _record(epoch, metrics, plan=None):
    """One history entry from {part: {name: value}}: every metric as a Python float.

    A private run (``plan``) adds ``epsilon``, spent after ``epoch`` epochs.
    """
    record = {"epoch": int(epoch)}
    for part, values in jax.device_get(metrics).items():
        record.update({f"{part}_{k}": float(v) for k, v in values.items()})
    if plan is not None:
        record.update(privacy.epoch_record(plan, epoch))
    return record


def fit(state: TrainState, train, test=None, *, activations=None, network=None, loss,
        optimizer, epochs,
        batch_size=32, l2=0.0, callback=None, mesh=None, val=None, dp=None):
    """Train for ``epochs`` more epochs from ``state``; evaluate after each one.

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
        ``make_optimizer``, any ``optax.GradientTransformation``).
      epochs: how many epochs to run now.
      batch_size: rows per minibatch B (B > m means one batch of all rows).
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
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer; got {epochs!r}")
    _validate.check_l2(l2)
    _check_training_dtype(state.params)
    acts, loss, x, y, labels = _prepare(state.params, train, _model(activations, network, mesh),
                                        loss, "train")
    batch_size = min(_check_batch_size(batch_size), x.shape[0])
    step_grads = _step_grads_on(mesh)
    plan = privacy.fit_plan(dp, state.dp, num_examples=x.shape[0], batch_size=batch_size,
                            epoch=state.epoch, epochs=epochs)
    if plan is not None:
        privacy.check_private_model(acts)
    if plan is not None and state.key is None:
        raise ValueError("state.key is None: private training draws each step's batch and "
                         "noise from it (privacy.step_key(state.key, t)); make the state with "
                         "init_state(params, optimizer=..., key=jax.random.key(seed))")
    sets = {"train": (x, y, labels)}
    if test is not None:
        sets["test"] = _prepare(state.params, test, acts, loss, "test")[2:]
    if val is not None:
        sets["val"] = _prepare(state.params, val, acts, loss, "val")[2:]
    history, pending = [], []  # pending: (epoch, metrics still on the device)
    call = _callback_caller(callback)

    def record(epoch, metrics):
        # Without a callback nothing waits for the device: the next epoch is
        # queued while this one runs, and the metrics are read at the end.
        pending.append((epoch, metrics))
        if callback is not None:
            history.append(_record(*pending.pop(), plan))
            return call(history[-1], state)
        return False

    stop = state.epoch == 0 and record(0, _metrics(state.params, sets, activations=acts,
                                                   loss=loss))
    for _ in range(epochs if not stop else 0):
        if plan is None:
            params, opt_state, metrics = _fit_epoch(
                state.params, state.opt_state, state.key, state.epoch, x, y, l2, sets,
                activations=acts, loss=loss, optimizer=optimizer, batch_size=batch_size,
                step_grads=step_grads)
        else:
            params, opt_state, metrics = _private_fit_epoch(
                state.params, state.opt_state, state.key, state.epoch, x, y, l2, sets,
                plan=plan, model=acts, loss=loss, optimizer=optimizer,
                mesh=None if mesh is None else step_grads.mesh)
        state = TrainState(params, opt_state, state.key, state.epoch + 1, plan)
        if record(state.epoch, metrics):
            break
    history.extend(_record(*p, plan) for p in pending)
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
