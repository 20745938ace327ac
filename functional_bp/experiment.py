"""A training run from a configuration: its data, its model, checkpoints, metrics and plots.

What ``functional-bp train`` does, as library functions a Python user calls
the same way: :func:`run_config` merges the defaults (:data:`TRAIN_DEFAULTS`),
a recipe (:mod:`functional_bp.recipes`) and the options given, or reads a
checkpoint's configuration to resume; :func:`load_data` loads and prepares
the data by name; :func:`network` builds a model from its text form and
checks that it fits the data; :func:`train` runs the whole job (``fit`` with
checkpoints every ``save_every`` epochs, Ctrl-C saving, early stopping,
``metrics.json``, ``curves.png``) and returns a :class:`RunResult`.

A configuration that cannot be run raises :class:`ConfigError`, whose
``option`` names the setting (``"model"``, ``"dp_clip"``, ...), the command
line's ``--model``, ``--dp-clip``.

Example (a short run on the XOR data, written into a temporary folder)::

    >>> import tempfile
    >>> from functional_bp import experiment
    >>> config, _ = experiment.run_config({"data": "xor", "hidden": [8], "lr": 0.01})
    >>> with tempfile.TemporaryDirectory() as out:
    ...     result = experiment.train(config, out=out, epochs=3, quiet=True)
    >>> result.status, result.state.epoch, sorted(result.paths)[:2]
    ('finished', 3, ['best.npz', 'curves.png'])
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import tempfile
import threading
import time

from .datasets import data_name, is_token_data

TRAIN_DEFAULTS = dict(
    data="digits", test_data=None, task="auto", test_fraction=None, split_seed=None,
    val_fraction=None, standardize=True,
    model=None, hidden=[256], activation=["relu"], output_activation="identity", loss=None,
    init="he", optimizer="adam", lr=1e-3, momentum=0.9, schedule="constant",
    warmup_steps=None, decay_rate=0.1, final_lr_fraction=0.0, batch_size=32, l2=0.0,
    seed=0, patience=None, dp_clip=None, dp_noise=None, dp_epsilon=None, dp_delta=None,
    recipe=None, max_iters=None, eval_interval=None, eval_iters=None, lr_decay_iters=None,
    min_lr=None, warmup_iters=None, grad_clip=None, weight_decay=None,
)
"""The configuration of a run with no options (what a resumed run keeps).

``None`` means: ``model`` the dense chain of ``hidden`` and ``activation``;
``test_fraction`` 0.2 unless the data come with their test
part; ``split_seed`` the value of ``seed``; ``val_fraction`` no validation
part; ``loss`` ``softmax_cross_entropy`` for classification and ``mse`` for
regression; ``warmup_steps`` a tenth of the schedule's steps; ``patience``
never stop early; ``dp_clip`` None: no differential privacy (``dp_delta`` None:
the largest power of ten <= 1/(10 N)); ``recipe`` the name of the recipe the
run started from (:mod:`functional_bp.recipes`), None for none. The
settings from ``max_iters`` on are those of a language-model run on token
data (``sort``, ``text:PATH``; :mod:`functional_bp.lm_run`), None there
meaning its defaults (nanoGPT's or minGPT's). A run also
records ``schedule_steps``, the horizon T of its learning-rate schedule (None
for ``constant``)."""

DEFAULT_EPOCHS = 50
DEFAULT_SAVE_EVERY = 10
DENSE_CHAIN_OPTIONS = ("hidden", "activation", "init")


class ConfigError(ValueError):
    """A configuration that cannot be run; ``option`` names the setting at fault.

    ``option`` is a key of :data:`TRAIN_DEFAULTS` or one of ``"out"``,
    ``"resume"``, ``"epochs"``, ``"devices"``; the command line reports it as
    ``--option-name``.
    """

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option, self.message = option, message

    @property
    def flag(self) -> str:
        """The command-line spelling of ``option``: ``"--dp-clip"`` for ``"dp_clip"``."""
        return "--" + self.option.replace("_", "-")


# --- the configuration ------------------------------------------------------------
def check_out(out):
    """Fail early, before any training, when ``out`` cannot receive the outputs.

    ``out`` must be a folder or not exist yet; its nearest existing ancestor
    must be a folder in which a file can be created (tried, then removed).
    Returns the absolute path.
    """
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("out", f"{out} is a file, not a folder; give a folder path")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError("out", f"{out} cannot be created: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".functional-bp-write-test-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        where = out if probe == path else f"{probe} (to create {out})"
        raise ConfigError("out", f"cannot write into {where}: {e.strerror}; give a "
                          "writable folder") from None
    return path


def _absolute_files(given):
    """Data files are recorded by absolute path (a resumed run works from any folder)."""
    given = dict(given)
    for k in ("data", "test_data"):
        if given.get(k) is not None:
            given[k] = data_name(given[k])
    return given


def run_config(given=None, *, resume=None, recipe=None):
    """The run's configuration and, when resuming, the checkpoint's metadata.

    Args:
      given: the settings chosen (keys of :data:`TRAIN_DEFAULTS`); the rest
        are the recipe's, then the defaults.
      resume: a ``params.npz`` written by :func:`train`: its configuration is
        kept, and ``given`` may only restate it.
      recipe: a :class:`functional_bp.recipes.Recipe` whose settings come
        before the defaults (not with ``resume``: a resumed run keeps its own).

    Returns:
      ``(config, metadata)``; metadata is None for a new run.
    """
    given = _absolute_files({k: v for k, v in (given or {}).items() if v is not None})
    unknown = set(given) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"not a setting of a training run; the "
                          f"settings are {', '.join(TRAIN_DEFAULTS)}")
    if resume is None:
        base = {} if recipe is None else {**_absolute_files(recipe.settings),
                                          "recipe": recipe.name}
        config = {**TRAIN_DEFAULTS, **base, **given}
        check_model_options(config, {**base, **given}, resumed=False)
        if config["model"] is not None:  # the dense chain's options do not apply
            config.update(hidden=None, activation=None, init=None)
        return config, None
    if recipe is not None:
        raise ConfigError("recipe", f"a resumed run keeps its configuration ({resume} "
                          "records its recipe, if any): drop --recipe")
    from .checkpoint import read_metadata

    try:
        meta = read_metadata(resume)
    except (OSError, ValueError) as e:
        raise ConfigError("resume", str(e)) from None
    config = meta.get("config")
    if not isinstance(config, dict) or not {"data", "hidden", "optimizer"} <= set(config) \
            or not set(config) <= set(TRAIN_DEFAULTS) | {"schedule_steps"}:
        raise ConfigError("resume", f"{resume} was not written by 'functional-bp train'")
    config = {**TRAIN_DEFAULTS, **config}  # a run from before an option existed: its default
    check_model_options(config, given, resumed=True)
    for k, v in given.items():
        if v != config[k]:
            raise ConfigError(k, f"{v!r} differs from the resumed run's {config[k]!r}; a "
                              "resumed run keeps its configuration")
    return config, meta


def check_model_options(config, given, *, resumed):
    """``hidden``, ``activation`` and ``init`` describe the dense chain: refused with a model."""
    if config["model"] is None:
        return
    for k in DENSE_CHAIN_OPTIONS:
        if k in given:
            where = " (the resumed run's)" if resumed else ""
            raise ConfigError(k, f"goes with the dense chain; --model "
                              f"{config['model']!r}{where} sets its own layers: drop --{k}")


# --- the model --------------------------------------------------------------------
def build_model(text, n_outputs):
    """A named model, optionally with ``name=value`` options, or a text stack.

    ``"resmlp"`` is ``models.resmlp(n_outputs)``; ``"resmlp width=64 blocks=1"``
    passes the options to it (each converted to the type of its default; a
    tuple such as mlp's ``hidden`` is written ``hidden=64,64``); anything else
    is a text stack for :func:`functional_bp.models.build`.

    Example::

        >>> build_model("mlp hidden=32,16 activation=tanh", 10).layers[1:4]
        (Dense(features=32, scale=2.0), Activation('tanh'), Dense(features=16, scale=2.0))
    """
    from . import models

    return models.build(text, n_outputs)  # named models' options are read there


def check_fits(net, input_shape, n_outputs, option, what):
    """A :class:`ConfigError` unless ``net`` maps one example of ``input_shape`` to (n_outputs,)."""
    try:
        out = tuple(net.output_shape(tuple(input_shape)))
    except (ValueError, TypeError) as e:
        raise ConfigError(option, f"{what} does not take examples of shape "
                          f"{tuple(input_shape)}: {e}") from None
    # a sequence model maps (T,) tokens or (T, C) features to (T, n_outputs)
    sequence = (len(out) == 2 and len(input_shape) >= 1 and out[0] == input_shape[0])
    if n_outputs is not None and out != (n_outputs,) and not (sequence and out[1] == n_outputs):
        raise ConfigError(option, f"{what} maps an example of shape {tuple(input_shape)} to "
                          f"shape {out}; the data need ({n_outputs},) (or "
                          f"({input_shape[0] if input_shape else 'T'}, {n_outputs}) per position "
                          f"for a sequence): end the stack with a flatten and a dense {n_outputs}")


def network(text, input_shape, n_outputs, output_activation=None, option="model"):
    """The Sequential of a model name or text for examples of ``input_shape``.

    A named model (``functional_bp.models.MODELS``, with options, see
    :func:`build_model`) or a text stack, ending in ``n_outputs`` outputs; an
    ``output_activation`` other than identity is appended as its last layer.
    """
    from .layers import Activation, Sequential

    try:
        net = build_model(text, n_outputs)
    except (ValueError, TypeError) as e:
        raise ConfigError(option, str(e)) from None
    if output_activation not in (None, "identity"):
        net = Sequential(*net.layers, Activation(output_activation))
    check_fits(net, input_shape, n_outputs, option, f"{text!r}")
    return net


def resumed_network(path, meta, input_shape, n_outputs):
    """The network a run recorded in its checkpoint, checked against the data."""
    from .layers import from_config

    if "network" not in meta:
        raise ConfigError("resume", f"{path} holds a dense chain, but its configuration "
                          "names a --model; it was not written by 'functional-bp train'")
    try:
        net = from_config(meta["network"])
    except (ValueError, TypeError) as e:
        raise ConfigError("resume", f"{path}: the recorded network cannot be rebuilt: {e}") \
            from None
    check_fits(net, input_shape, n_outputs, "resume", f"the network recorded in {path}")
    return net


def has_dropout(net):
    """Whether any layer of ``net`` is a Dropout with a rate above 0 (rate 0 is the identity)."""
    from .layers import Dropout

    return any(isinstance(layer, Dropout) and layer.rate > 0 for layer in net.leaves())


def dense_chain(config, data):
    """``(sizes, activations)`` of the dense chain of ``hidden`` and ``activation``."""
    hidden, acts = list(config["hidden"]), list(config["activation"])
    if len(acts) == 1:
        acts = acts * len(hidden)
    elif len(acts) != len(hidden):
        raise ConfigError("activation", f"give one name, or one per hidden layer "
                          f"({len(hidden)}); got {len(acts)}")
    return [data.n_features, *hidden, data.n_outputs], acts + [config["output_activation"]]


# --- the data ---------------------------------------------------------------------
def load_data(config):
    """The run's Dataset (split, validation part, standardized as configured).

    A data set that cannot be loaded raises :class:`ConfigError` naming the
    setting at fault (``data``, ``test_data``, ``test_fraction``,
    ``val_fraction``).
    """
    from .datasets import load_dataset, standardize

    seed = config["seed"] if config["split_seed"] is None else config["split_seed"]
    try:
        data = load_dataset(config["data"], seed=seed, task=config["task"],
                            test_fraction=config["test_fraction"], test=config["test_data"],
                            val_fraction=config["val_fraction"])
    except (OSError, ValueError) as e:
        message = str(e)
        if "test_fraction=" in message:
            option = "test_fraction"
        elif config["test_data"] and message.startswith(f"{config['test_data']}:"):
            option = "test_data"
        elif "val_fraction" in message or "validation part" in message:
            option = "val_fraction"
        else:
            option = "data"
        raise ConfigError(option, message) from None
    if config["standardize"] and not is_token_data(config["data"]):  # tokens stay tokens
        data, _, _ = standardize(data)
    return data


def token_data(net, data, config):
    """``data`` with integer features for a network whose first layer takes token indices.

    An Embedding-first network takes integer indices in [0, vocab_size). The
    features of a data file are read as floats; when they are whole numbers
    in range (and not standardized) they are converted, otherwise a
    :class:`ConfigError` says which data the network needs.
    """
    import numpy as np

    first = next(net.leaves(), None)
    if not getattr(first, "integer_input", False):
        return data
    vocab = first.vocab_size
    need = (f"--model {config['model']!r} starts with {first!r}, which takes integer token "
            f"indices in [0, {vocab}): give data whose features are such indices")
    if config["standardize"] and not np.issubdtype(data.x_train.dtype, np.integer):
        raise ConfigError("model", f"{need}, with --no-standardize (standardized features "
                          "are not token indices)")
    parts = {k: getattr(data, k) for k in ("x_train", "x_val", "x_test")}
    for k, x in parts.items():
        if x is None:
            continue
        if not np.all(np.equal(np.mod(x, 1), 0)) or x.min() < 0 or x.max() >= vocab:
            raise ConfigError("data", f"{need}; {config['data']} has features from "
                              f"{x.min():g} to {x.max():g}"
                              + ("" if np.all(np.equal(np.mod(x, 1), 0))
                                 else ", not all whole numbers"))
        parts[k] = x.astype(np.int32)
    return data._replace(**parts)


# --- optimization and privacy -----------------------------------------------------
def optimizer(config):
    """The run's optimizer, with its learning-rate schedule."""
    from .train import make_optimizer, make_schedule

    T = config.get("schedule_steps")
    warmup = config["warmup_steps"]
    if warmup is None:
        warmup = (T or 0) // 10
    try:
        lr = make_schedule(config["schedule"], config["lr"], total_steps=T or 0,
                           warmup_steps=warmup, decay_rate=config["decay_rate"],
                           final_fraction=config["final_lr_fraction"])
    except ValueError as e:
        raise ConfigError("warmup_steps" if "warmup" in str(e) else "schedule", str(e)) \
            from None
    return make_optimizer(config["optimizer"], lr, momentum=config["momentum"])


def dp_config(config):
    """The run's :class:`~functional_bp.privacy.DPConfig` from the dp_* settings, or None."""
    given = [k for k in ("dp_noise", "dp_epsilon", "dp_delta") if config[k] is not None]
    if config["dp_clip"] is None:
        if given:
            raise ConfigError(given[0], "goes with --dp-clip C (private training); give "
                              "--dp-clip")
        return None
    if config["dp_noise"] is None and config["dp_epsilon"] is None:
        raise ConfigError("dp_clip", "private training needs the noise: give --dp-noise "
                          "SIGMA or a target --dp-epsilon EPS")
    from .privacy import DPConfig

    try:
        return DPConfig(clip_norm=config["dp_clip"], noise_multiplier=config["dp_noise"],
                        target_epsilon=config["dp_epsilon"], delta=config["dp_delta"])
    except (TypeError, ValueError) as e:
        raise ConfigError("dp_clip", str(e)) from None


def dp_plan(dp, state, n_train, batch_size, epochs, resumed):
    """The private run's plan (None when not private), or a :class:`ConfigError`."""
    from .privacy import fit_plan

    try:
        return fit_plan(dp, state.dp, num_examples=n_train,
                        batch_size=min(batch_size, n_train), epoch=state.epoch, epochs=epochs)
    except ValueError as e:
        message = str(e)
        option = ("dp_delta" if "delta=" in message else
                  "epochs" if "calibrated" in message else
                  "resume" if resumed else "dp_clip")
        raise ConfigError(option, message) from None


def dp_note(plan, n_train):
    """The summary line's privacy part: '; DP-SGD clip C, sigma S, delta D (...)'."""
    if plan is None:
        return ""
    if plan.accountant is None:
        return "; DP-SGD without accounting (no privacy claim)"
    note = (f" (the default: below 1/N = 1/{n_train})" if plan.delta_is_default else "")
    return (f"; DP-SGD clip {plan.clip_norm:g}, sigma {plan.noise_multiplier:.4g}, "
            f"delta {plan.delta:g}{note}")


def steps_per_epoch(config, n_train, private):
    """Optimizer steps in one epoch: ceil(N / B), or round(N / B) for Poisson batches."""
    batch = min(config["batch_size"], n_train)
    if private:
        from .privacy import steps_per_epoch as private_steps

        return private_steps(n_train, batch)
    return -(-n_train // batch)


def run_length(epochs, steps, per_epoch):
    """``(epochs, note)``: ``epochs``, or ``steps`` rounded up to whole epochs (and why)."""
    if steps is None:
        return (DEFAULT_EPOCHS if epochs is None else epochs), None
    n = -(-steps // per_epoch)
    note = None if n * per_epoch == steps else (
        f"--steps {steps}: rounded up to {n} whole epochs of {per_epoch} steps = "
        f"{n * per_epoch} steps")
    return n, note


# --- reporting --------------------------------------------------------------------
def summary(record):
    """One history entry as 'train loss L, test loss L, train acc A%, ...'."""
    keys = [("train_loss", "train loss {:.4f}"), ("val_loss", "val loss {:.4f}"),
            ("test_loss", "test loss {:.4f}"), ("train_accuracy", "train acc {:.2%}"),
            ("val_accuracy", "val acc {:.2%}"), ("test_accuracy", "test acc {:.2%}"),
            ("epsilon", "epsilon {:.3g}")]
    return ", ".join(fmt.format(record[k]) for k, fmt in keys if k in record)


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _finite(record):
    return all(math.isfinite(v) for k, v in record.items() if k.endswith("_loss"))


def plot_curves(history, path, title=""):
    """Loss (and accuracy, when there is one) per epoch, train and test, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = "iter" if "iter" in history[0] else "epoch"
    epochs = [r[unit] for r in history]
    panels = [("loss", "mean loss")]
    if "train_accuracy" in history[0]:
        panels.append(("accuracy", "accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for part, style in (("train", "-"), ("val", ":"), ("test", "--")):
            key = f"{part}_{metric}"
            if key in history[0]:
                ax.plot(epochs, [r[key] for r in history], style, label=part)
        if metric == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("iteration" if unit == "iter" else "epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if metric == "accuracy":
        final = history[-1].get("test_accuracy")
        if final is not None:
            ax.set_title(f"test accuracy {final:.2%}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _progress(epochs, quiet):
    """A tqdm bar over epochs (None when tqdm is missing or ``quiet``)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        return None
    return tqdm(total=epochs, desc="train", unit="epoch", file=sys.stderr,
                dynamic_ncols=True)


class Interrupt:
    """While active (in the main thread), the first Ctrl-C asks for a stop after this epoch."""

    def __init__(self):
        self.requested, self._old = False, None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one aborts
        print("\ninterrupted: saving after this epoch (Ctrl-C again to abort without "
              "saving)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _resumed_stopper(stopper, history, resume, optimizer, sizes, start):
    """Seed early stopping with the resumed run's best epoch (its best.npz)."""
    from .checkpoint import CheckpointError
    from .train import load_state

    records = [r for r in history if r.get("val_loss") is not None]
    if not records:
        return
    best = min(records, key=lambda r: r["val_loss"])
    path = os.path.join(os.path.dirname(os.path.abspath(resume)), "best.npz")
    try:
        state, _ = load_state(path, optimizer=optimizer, sizes=sizes)
    except (OSError, CheckpointError):
        state = None
    if state is None or state.epoch != best["epoch"]:
        print(f"note: {path} does not hold the resumed run's best epoch "
              f"{best['epoch']}; early stopping starts afresh", file=sys.stderr)
        return
    stopper.best_state, stopper.best_record = state, dict(best)
    stopper.wait = start - best["epoch"]


def data_mesh(n):
    """None for one device, else a mesh with a "data" axis over the first n devices."""
    if n is None or n == 1:
        return None
    import jax

    from .parallel import data_mesh as mesh_of

    if n > jax.device_count():
        raise ConfigError("devices", f"{n} devices asked for, {jax.device_count()} "
                          "available (on CPU, XLA_FLAGS=--xla_force_host_platform_device_"
                          "count=N makes N host devices)")
    return mesh_of(jax.devices()[:n])


# --- the run ----------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    """What :func:`train` did.

    Attributes:
      status: ``"finished"``, ``"stopped early"``, ``"interrupted"`` or
        ``"diverged"`` (the loss became NaN or infinite).
      state: the last state (for a diverged run: the last with a finite loss).
      history: one record per epoch, the resumed run's included.
      best: the best epoch's record by validation loss, or None.
      data: the :class:`~functional_bp.datasets.Dataset` trained on.
      config: the configuration, as recorded.
      plan: the private run's :class:`~functional_bp.privacy.DPPlan`, or None.
      paths: the output files by name (``params.npz``, ``best.npz``, ...).
      end: the epoch the run was asked to reach.
      diverged: the first record with a non-finite loss, or None.
      seconds: from the start of :func:`train` to the end of training.
      privacy_unit: a private text run's unit of privacy
        (:func:`functional_bp.lm.privacy_unit`), or None.
    """

    status: str
    state: object
    history: list
    best: dict | None
    data: object
    config: dict
    plan: object
    paths: dict
    end: int
    diverged: dict | None = None
    seconds: float = 0.0
    privacy_unit: dict | None = None


@dataclasses.dataclass
class _Job:
    """The run's parts, built from the configuration before training."""

    config: dict
    data: object
    loss: str
    input_shape: tuple
    net: object
    sizes: list | None
    activations: list | None
    dp: object
    epochs: int


def _model(config, data, resume, meta, devices):
    """``(net, sizes, activations)``: the dense chain, the model, or the resumed network."""
    input_shape = tuple(data.x_train.shape[1:])
    if config["model"] is None:
        if meta is not None and "network" in meta:
            raise ConfigError("resume", f"{resume} holds a network, but its configuration "
                              "names none (no --model); it was not written by "
                              "'functional-bp train'")
        return (None, *dense_chain(config, data))
    net = (network(config["model"], input_shape, data.n_outputs, config["output_activation"])
           if meta is None else resumed_network(resume, meta, input_shape, data.n_outputs))
    if devices not in (None, 1) and has_dropout(net):
        raise ConfigError("devices", f"--model {config['model']!r} has Dropout, whose "
                          "masks are drawn per batch on one device: drop --devices")
    if config["dp_clip"] is not None and has_dropout(net):
        raise ConfigError("dp_clip", f"--model {config['model']!r} has Dropout, which "
                          "private training does not support: drop it")
    return net, None, None


def _prepare(config, *, resume, meta, epochs, steps, devices, given):
    """The :class:`_Job` of a configuration: data, model, loss, privacy and length."""
    if config["patience"] is not None and config["val_fraction"] is None:
        raise ConfigError("patience", "early stopping watches the validation loss: give "
                          "--val-fraction too")
    try:
        data = load_data(config)
    except ConfigError as e:
        if resume is not None and e.option not in given:  # it comes from the checkpoint
            raise ConfigError("resume", f"the resumed run's data ({e.flag} "
                              f"{config[e.option]}, recorded in {resume}) cannot be loaded: "
                              f"{e.message}") from None
        raise
    loss = config["loss"] or ("mse" if data.n_classes is None else "softmax_cross_entropy")
    net, sizes, activations = _model(config, data, resume, meta, devices)
    if net is not None:
        data = token_data(net, data, config)
    dp = dp_config(config)
    epochs, note = run_length(epochs, steps,
                              steps_per_epoch(config, len(data.x_train), dp is not None))
    if note:
        print(note, file=sys.stderr)
    if meta is None:
        config["schedule_steps"] = (None if config["schedule"] == "constant" else
                                    max(epochs, 1) * steps_per_epoch(
                                        config, len(data.x_train), dp is not None))
    return _Job(config, data, loss, tuple(data.x_train.shape[1:]), net, sizes, activations,
                dp, epochs)


def _metrics(job, run, state, history, status, best):
    """The content of metrics.json."""
    import jax

    from . import __version__
    from .layers import to_config
    from .privacy import checkpoint_metadata

    data, final = job.data, history[-1]
    shown = best or final  # with a validation part: the best epoch's test results
    return json_safe({
        "version": __version__,
        "status": status,
        "config": {**job.config, "loss": job.loss, "epochs": state.epoch},
        "sizes": job.sizes,
        "activations": job.activations,
        "network": None if job.net is None else to_config(job.net),
        "n_params": sum(int(a.size) for a in jax.tree_util.tree_leaves(state.params)),
        "dataset": {"name": data.name, "task": data.task, "n_train": len(data.x_train),
                    "n_val": None if data.x_val is None else len(data.x_val),
                    "n_test": len(data.x_test)},
        "history": history,
        "best_epoch": None if best is None else best["epoch"],
        "test_accuracy": shown.get("test_accuracy"),
        "test_loss": shown["test_loss"],
        "resumed_from": run["resume"],
        "seconds": round(time.perf_counter() - run["t_start"], 3),
        "devices": run["devices"] or 1,
        "dp": None if run["plan"] is None else checkpoint_metadata(run["plan"], state.epoch),
    })


def _saver(job, run, paths, stopper):
    """save(state, history, status): params.npz, best.npz (if a newer best), metrics.json."""
    from .checkpoint import write_json_atomically
    from .train import save_state

    model = dict(activations=job.activations) if job.net is None else dict(network=job.net)
    saved = {"best": None}

    def write(path, state, history):
        save_state(path, state, loss=job.loss, **model,
                   metadata={"config": job.config, "input_shape": list(job.input_shape),
                             "history": json_safe(history)})

    def save(state, history, status):
        write(paths["params.npz"], state, [r for r in history if r["epoch"] <= state.epoch])
        best = None if stopper is None else stopper.best_record
        if best is not None and saved["best"] != best["epoch"]:
            write(paths["best.npz"], stopper.best_state,
                  [r for r in history if r["epoch"] <= best["epoch"]])
            saved["best"] = best["epoch"]
        write_json_atomically(paths["metrics.json"],
                              _metrics(job, run, state, history, status, best))
    return save


def _initial_state(job, optimizer, resume):
    """``(state, history)``: fresh from the seed, or the checkpoint's."""
    import jax

    from . import init_mlp
    from .checkpoint import CheckpointError
    from .train import init_state, load_state

    if resume is None:
        k_init, k_shuffle = jax.random.split(jax.random.key(job.config["seed"]))
        params = (init_mlp(k_init, job.sizes, scheme=job.config["init"]) if job.net is None
                  else job.net.init(k_init, job.input_shape))
        return init_state(params, optimizer=optimizer, key=k_shuffle), []
    try:
        state, meta = load_state(resume, optimizer=optimizer, sizes=job.sizes)
    except (OSError, CheckpointError) as e:
        raise ConfigError("resume", str(e)) from None
    return state, list(meta.get("history", []))


def train(config, *, out, resume=None, metadata=None, epochs=None, steps=None,
          save_every=DEFAULT_SAVE_EVERY, quiet=False, devices=None, given=()):
    """Run the training job of ``config`` (from :func:`run_config`) into the folder ``out``.

    Writes ``params.npz`` (resumable: params, optimizer state, keys, the
    configuration), ``metrics.json``, ``curves.png`` and, with a validation
    part, ``best.npz``; every ``save_every`` epochs (0: only at the end) and
    when Ctrl-C stops the run after its current epoch.

    Args:
      config: the run's configuration (:data:`TRAIN_DEFAULTS`' keys).
      out: the output folder (created; see :func:`check_out`).
      resume, metadata: the checkpoint to continue and its metadata (the
        second value of :func:`run_config`).
      epochs, steps: the run's length, epochs or optimizer steps rounded up
        to whole epochs [:data:`DEFAULT_EPOCHS` epochs].
      quiet: no progress bar.
      devices: split each minibatch over this many devices.
      given: the settings chosen explicitly (an error about another one
        blames the resumed checkpoint).
    """
    t_start = time.perf_counter()
    try:  # the optional extra, before any training
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the curves need matplotlib: pip install 'functional_bp[train]'") \
            from None
    if is_token_data(config["data"]):  # a language model: iterations (functional_bp.lm_run)
        from . import lm_run

        if epochs is not None or steps is not None or devices not in (None, 1):
            option = "epochs" if epochs is not None else "steps" if steps is not None \
                else "devices"
            raise ConfigError(option, f"a language-model run on {config['data']!r} is "
                              "measured in iterations: give --max-iters instead")
        return lm_run.train(config, out=out, resume=resume, metadata=metadata, quiet=quiet,
                            given=given)
    from .train import EarlyStopping, fit

    config = dict(config)
    job = _prepare(config, resume=resume, meta=metadata, epochs=epochs, steps=steps,
                   devices=devices, given=set(given))
    opt = optimizer(config)
    mesh = data_mesh(devices)
    state, history = _initial_state(job, opt, resume)
    start, end = state.epoch, state.epoch + job.epochs
    plan = dp_plan(job.dp, state, len(job.data.x_train), config["batch_size"], job.epochs,
                   resume is not None)
    stopper = None if config["val_fraction"] is None else EarlyStopping(config["patience"])
    if stopper is not None and resume is not None:
        _resumed_stopper(stopper, history, resume, opt, job.sizes, start)
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, k) for k in
             ("params.npz", "best.npz", "metrics.json", "curves.png")}
    run = {"history": history, "good": state, "diverged": None, "early": False,
           "resume": resume, "t_start": t_start, "devices": devices, "plan": plan}
    save = _saver(job, run, paths, stopper)
    bar = _progress(job.epochs, quiet)

    def on_epoch(record, state):
        run["history"].append(record)
        if bar is not None and record["epoch"] > start:
            bar.update(1)
            bar.set_postfix_str(summary(record).replace("train ", ""))
        if not _finite(record):
            run["diverged"] = record
            return True
        run["good"] = state
        if stopper is not None and stopper(record, state):
            run["early"] = True
            return True
        if interrupt.requested:
            return True
        if save_every and record["epoch"] > start and \
                (record["epoch"] - start) % save_every == 0 and record["epoch"] < end:
            save(state, run["history"], "running")
        return False

    data = job.data
    model = dict(activations=job.activations) if job.net is None else dict(network=job.net)
    with Interrupt() as interrupt:
        state, _ = fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
                       val=None if data.x_val is None else (data.x_val, data.y_val),
                       **model, loss=job.loss, optimizer=opt, epochs=job.epochs,
                       batch_size=config["batch_size"], l2=config["l2"],
                       callback=on_epoch, mesh=mesh, dp=job.dp)
    if bar is not None:
        bar.close()
    shape = job.sizes if job.net is None else f"--model {config['model']}"
    title = f"{data.name}: {shape}, {config['optimizer']}, batch {config['batch_size']}"
    if run["diverged"] is not None:
        status, state = "diverged", run["good"]
    else:
        status = ("interrupted" if interrupt.requested and state.epoch < end else
                  "stopped early" if run["early"] else "finished")
    save(state, run["history"], status)
    plot_curves(run["history"], paths["curves.png"], title=title)
    return RunResult(status, state, run["history"],
                     None if stopper is None else stopper.best_record, data, config, plan,
                     paths, end, run["diverged"], time.perf_counter() - t_start)
