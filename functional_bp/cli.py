"""The command line: ``functional-bp train`` and ``functional-bp check``.

One small function per subcommand (``cmd_<name>``) and one that registers its
options (``add_<name>``); :data:`COMMANDS` lists them, so a new subcommand is
one pair of functions and one entry.

Examples (docs/cli.md has one for every option)::

    functional-bp train --out runs/digits            # the defaults: digits, 97%+
    functional-bp train --data moons --hidden 16 16 --activation tanh --epochs 100
    functional-bp train --resume runs/digits/params.npz --epochs 10 --out runs/more
    functional-bp train --data mnist1d --val-fraction 0.1 --patience 10 --schedule cosine
    functional-bp train --data mnist1d --model cnn --out runs/cnn   # a named network
    functional-bp train --model "resmlp width=64 blocks=1"      # ... with its options
    functional-bp train --model "dense 64, relu, res(layernorm, dense 64, relu), dense 10"
    functional-bp check runs/digits/params.npz       # the per-layer proof
    functional-bp check runs/digits/params.npz --data digits   # ... on real rows
    functional-bp check --model resmlp --data digits            # a random network
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time

from .activations import ACTIVATIONS
from .bench import add_bench, cmd_bench
from .datasets import BUILTIN
from .losses import LOSSES
from .mlp import SCHEMES

OPTIMIZERS = ("sgd", "momentum", "adam")  # functional_bp.train's, without importing jax
SCHEDULES = ("constant", "cosine", "exponential", "warmup-cosine")
MODEL_NAMES = ("mlp", "resmlp", "cnn")  # functional_bp.models' named networks, without jax


class UsageError(Exception):
    """A bad argument: reported as ``error: argument OPTION: message`` with usage."""

    def __init__(self, option, message):
        super().__init__(f"argument {option}: {message}")


# --- argument types -------------------------------------------------------------
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def fraction(text):
    value = non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def unit_fraction(text):
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def closed_fraction(text):
    value = non_negative_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


# --- train ---------------------------------------------------------------------------
TRAIN_DEFAULTS = dict(
    data="digits", test_data=None, task="auto", test_fraction=None, split_seed=None,
    val_fraction=None, standardize=True,
    model=None, hidden=[256], activation=["relu"], output_activation="identity", loss=None,
    init="he", optimizer="adam", lr=1e-3, momentum=0.9, schedule="constant",
    warmup_steps=None, decay_rate=0.1, final_lr_fraction=0.0, batch_size=32, l2=0.0,
    seed=0, patience=None, dp_clip=None, dp_noise=None, dp_epsilon=None, dp_delta=None,
)
"""The configuration of a run with no options (what a resumed run keeps).

``None`` means: ``model`` the dense chain of ``hidden`` and ``activation``;
``test_fraction`` 0.2 unless the data come with their test
part; ``split_seed`` the value of ``seed``; ``val_fraction`` no validation
part; ``loss`` ``softmax_cross_entropy`` for classification and ``mse`` for
regression; ``warmup_steps`` a tenth of the schedule's steps; ``patience``
never stop early; ``dp_clip`` None: no differential privacy (``dp_delta`` None:
the largest power of ten <= 1/(10 N)). A run also records ``schedule_steps``,
the horizon T of its
learning-rate schedule (None for ``constant``)."""

DEFAULT_EPOCHS = 50
DEFAULT_SAVE_EVERY = 10


def add_train(sub):
    p = sub.add_parser(
        "train", help="train a network with the hand-derived gradients",
        description="Train a network (the dense chain of --hidden, or a --model) by "
        "minibatch gradient descent with the hand-derived backward pass; write metrics.json, params.npz and curves.png (and best.npz "
        "with a validation part) into --out. Each option's default is in brackets.",
    )
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--data", help="built-in name (digits, xor, moons, spirals, sine, mnist1d) "
                   "or a .npz (X, y; optionally x_test, y_test) / .csv (last column the "
                   f"target) file [{d['data']}]")
    g.add_argument("--test-data", metavar="FILE", help="the test part from this file (same "
                   "format as --data) instead of a split of --data [none: split --data]")
    g.add_argument("--task", choices=["auto", "classification", "regression"],
                   help="for data files: what the target is; auto refuses to guess when "
                   "whole-number targets could be either [auto]")
    g.add_argument("--test-fraction", type=fraction, help="held-out share, when the data "
                   "have no given test part [0.2]")
    g.add_argument("--split-seed", type=non_negative_int, metavar="N",
                   help="fixes the synthetic draws and the test and validation splits "
                   "[the value of --seed]")
    g.add_argument("--val-fraction", type=fraction, metavar="F",
                   help="share of the training part held out for validation; the best "
                   "epoch by validation loss is kept in best.npz [none]")
    g.add_argument("--no-standardize", dest="standardize", action="store_const",
                   const=False, help="feed the features as they are [off: each feature is "
                   "shifted and scaled to mean 0, std 1 on the training part]")
    g = p.add_argument_group("network")
    g.add_argument("--model", metavar="NAME|TEXT",
                   help="a named network (" + ", ".join(MODEL_NAMES) + "), optionally "
                   "with options (\"resmlp width=64 blocks=1\"), or a layer stack in the "
                   "compact text form (\"dense 64, relu, dense 10\"; see docs/cli.md), "
                   "whose output must fit the data [none: the dense chain of --hidden and "
                   "--activation]")
    g.add_argument("--hidden", type=positive_int, nargs="*", metavar="N",
                   help="hidden layer widths of the dense chain; none for a linear model "
                   "[256]")
    g.add_argument("--activation", nargs="+", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help=f"of the dense chain: one for every hidden layer, or one per hidden "
                   f"layer; {', '.join(sorted(ACTIVATIONS))} [relu]")
    g.add_argument("--output-activation", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help="activation of the last layer [identity]")
    g.add_argument("--loss", choices=sorted(LOSSES),
                   help="[softmax_cross_entropy for classes, mse for regression]")
    g.add_argument("--init", choices=sorted(SCHEMES), help="weight init scheme of the dense "
                   "chain (a --model's layers use their own, he for Dense) [he]")
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), help="[adam]")
    g.add_argument("--lr", type=positive_float, help="learning rate eta (the peak, with a "
                   "schedule) [0.001]")
    g.add_argument("--momentum", type=non_negative_float, help="for --optimizer momentum [0.9]")
    g.add_argument("--schedule", choices=list(SCHEDULES),
                   help="learning rate over the run's steps (optax schedules) [constant]")
    g.add_argument("--warmup-steps", type=non_negative_int, metavar="N",
                   help="for warmup-cosine: steps of linear warm-up from 0 to --lr "
                   "[a tenth of the run's steps]")
    g.add_argument("--decay-rate", type=unit_fraction, metavar="R",
                   help="for exponential: the rate ends at R * --lr [0.1]")
    g.add_argument("--final-lr-fraction", type=closed_fraction, metavar="F",
                   help="for cosine and warmup-cosine: the rate ends at F * --lr [0]")
    g.add_argument("--batch-size", type=positive_int, help="rows per minibatch [32]")
    g.add_argument("--l2", type=non_negative_float, help="weight decay on the W's [0]")
    g.add_argument("--seed", type=non_negative_int, help="fixes the init and the shuffles "
                   "(and the split, unless --split-seed) [0]")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=non_negative_int,
                        help=f"epochs to run (more epochs, with --resume) [{DEFAULT_EPOCHS}]")
    length.add_argument("--steps", type=positive_int, metavar="N",
                        help="optimizer steps to run instead of --epochs, rounded up to "
                        "whole epochs [none: --epochs decides]")
    g.add_argument("--patience", type=positive_int, metavar="N",
                   help="with --val-fraction: stop after N epochs without a lower "
                   "validation loss [none: run every epoch]")
    g = p.add_argument_group("differential privacy (DP-SGD, Poisson sampling; needs the dp "
                             "extra)")
    g.add_argument("--dp-clip", type=positive_float, metavar="C",
                   help="train privately: clip each example's gradient to norm C, sample "
                   "each step's batch by Poisson sampling (expected size --batch-size, "
                   "round(N / batch size) steps per epoch) and add Gaussian noise; give "
                   "--dp-noise or --dp-epsilon too [none: not private]")
    noise = g.add_mutually_exclusive_group()
    noise.add_argument("--dp-noise", type=positive_float, metavar="SIGMA",
                       help="with --dp-clip: the noise multiplier sigma (noise std sigma*C "
                       "on the sum) [none]")
    noise.add_argument("--dp-epsilon", type=positive_float, metavar="EPS",
                       help="with --dp-clip: the target epsilon after the run's epochs; "
                       "sigma is calibrated to it [none]")
    g.add_argument("--dp-delta", type=fraction, metavar="DELTA",
                   help="with --dp-clip: the delta of the (epsilon, delta) guarantee, "
                   "below 1/N [the largest power of ten <= 1/(10 N), below 1/N: 1e-05 "
                   "for digits, 1438 training rows]")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="run", metavar="DIR", help="output folder [run]")
    g.add_argument("--save-every", type=non_negative_int, default=DEFAULT_SAVE_EVERY,
                   metavar="N", help="write params.npz and metrics.json every N epochs "
                   f"(0: only at the end); Ctrl-C also saves [{DEFAULT_SAVE_EVERY}]")
    g.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its params.npz (its configuration is kept) "
                   "[none]")
    g.add_argument("--quiet", action="store_true", help="no progress bar [off]")
    g.add_argument("--devices", type=positive_int, metavar="N",
                   help="split each minibatch over the first N devices (data parallel) [1]")
    return p


def _data_mesh(n):
    """None for one device, else a mesh with a "data" axis over the first n devices."""
    if n is None or n == 1:
        return None
    import jax

    from .parallel import data_mesh

    if n > jax.device_count():
        raise UsageError("--devices", f"{n} devices asked for, {jax.device_count()} "
                         "available (on CPU, XLA_FLAGS=--xla_force_host_platform_device_"
                         "count=N makes N host devices)")
    return data_mesh(jax.devices()[:n])


def check_out(out):
    """Fail early, before any training, when ``--out`` cannot receive the outputs.

    ``out`` must be a folder or not exist yet; its nearest existing ancestor
    must be a folder in which a file can be created (tried, then removed).
    """
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError("--out", f"{out} is a file, not a folder; give a folder path")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError("--out", f"{out} cannot be created: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".functional-bp-write-test-", dir=probe)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        where = out if probe == path else f"{probe} (to create {out})"
        raise UsageError("--out", f"cannot write into {where}: {e.strerror}; give a "
                         "writable folder") from None
    return path


def _is_file(name):
    return name not in BUILTIN


def _given(args):
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k, None) is not None}
    for k in ("data", "test_data"):  # files are recorded by absolute path
        if k in given and _is_file(given[k]):
            given[k] = os.path.abspath(given[k])
    return given


def _train_config(args):
    """The run's configuration: defaults, or the checkpoint's when resuming."""
    given = _given(args)
    if args.resume is None:
        config = {**TRAIN_DEFAULTS, **given}
        _check_model_options(config, given, resumed=False)
        if config["model"] is not None:  # the dense chain's options do not apply
            config.update(hidden=None, activation=None, init=None)
        return config, None
    from .checkpoint import read_metadata

    try:
        meta = read_metadata(args.resume)
    except (OSError, ValueError) as e:
        raise UsageError("--resume", str(e)) from None
    config = meta.get("config")
    if not isinstance(config, dict) or not {"data", "hidden", "optimizer"} <= set(config) \
            or not set(config) <= set(TRAIN_DEFAULTS) | {"schedule_steps"}:
        raise UsageError("--resume", f"{args.resume} was not written by 'functional-bp train'")
    config = {**TRAIN_DEFAULTS, **config}  # a run from before an option existed: its default
    _check_model_options(config, given, resumed=True)
    for k, v in given.items():
        if v != config[k]:
            raise UsageError(
                "--" + k.replace("_", "-"),
                f"{v!r} differs from the resumed run's {config[k]!r}; a resumed run "
                "keeps its configuration",
            )
    return config, meta


DENSE_CHAIN_OPTIONS = ("hidden", "activation", "init")


def _check_model_options(config, given, *, resumed):
    """--hidden, --activation and --init describe the dense chain: refused with --model."""
    if config["model"] is None:
        return
    for k in DENSE_CHAIN_OPTIONS:
        if k in given:
            where = " (the resumed run's)" if resumed else ""
            raise UsageError(f"--{k}", f"goes with the dense chain; --model "
                             f"{config['model']!r}{where} sets its own layers: drop --{k}")


def _network(text, input_shape, n_outputs, output_activation, option="--model"):
    """The Sequential of --model NAME|TEXT for examples of ``input_shape``, or a usage error.

    A named model (:data:`MODEL_NAMES`) or a text stack from
    :mod:`functional_bp.models`, ending in ``n_outputs`` outputs; an
    ``output_activation`` other than identity is appended as its last layer.
    """
    from .layers import Activation, Sequential

    try:
        net = build_model(text, n_outputs)
    except (ValueError, TypeError) as e:
        raise UsageError(option, str(e)) from None
    if output_activation not in (None, "identity"):
        net = Sequential(*net.layers, Activation(output_activation))
    _check_fits(net, input_shape, n_outputs, option, f"{text!r}")
    return net


def build_model(text, n_outputs):
    """``--model``: a named model, optionally with ``name=value`` options, or a text stack.

    ``"resmlp"`` is ``models.resmlp(n_outputs)``; ``"resmlp width=64 blocks=1"``
    passes the options to it (each converted to the type of its default; a
    tuple such as mlp's ``hidden`` is written ``hidden=64,64``); anything else
    is a text stack for :func:`functional_bp.models.build`.

    Example::

        >>> build_model("mlp hidden=32,16 activation=tanh", 10).layers[1:4]
        (Dense(features=32, scale=2.0), Activation('tanh'), Dense(features=16, scale=2.0))
    """
    import inspect

    from . import models

    name, *words = text.split()
    fn = models.MODELS.get(name.lower())
    if fn is None or not words:
        return models.build(text, n_outputs)
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if k != "n_outputs"}
    def show(v):
        if isinstance(v, float):
            return f"{v:g}"
        return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)

    known = ", ".join(f"{k}={show(v)}" for k, v in defaults.items())
    options = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or key not in defaults:
            raise ValueError(f"{text!r}: a named model takes options as name=value; {name} "
                             f"takes {known} (the defaults); got {word!r}")
        default = defaults[key]
        try:
            if isinstance(default, tuple):
                options[key] = tuple(int(v) for v in value.split(",") if v)
            elif isinstance(default, (int, float)):
                options[key] = type(default)(value)
            else:
                options[key] = value
        except ValueError:
            raise ValueError(f"{text!r}: {key} takes "
                             + ("integers separated by commas" if isinstance(default, tuple)
                                else f"a{'n integer' if isinstance(default, int) else ' number'}")
                             + f" like its default {key}={show(default)}; got {value!r}") \
                from None
    return fn(n_outputs, **options)


def _check_fits(net, input_shape, n_outputs, option, what):
    """A usage error unless ``net`` maps one example of ``input_shape`` to (n_outputs,)."""
    try:
        out = tuple(net.output_shape(tuple(input_shape)))
    except (ValueError, TypeError) as e:
        raise UsageError(option, f"{what} does not take examples of shape "
                         f"{tuple(input_shape)}: {e}") from None
    if n_outputs is not None and out != (n_outputs,):
        raise UsageError(option, f"{what} maps an example of shape {tuple(input_shape)} to "
                         f"shape {out}; the data need ({n_outputs},): end the stack with "
                         f"a flatten and a dense {n_outputs}")


def _resumed_network(path, meta, input_shape, n_outputs):
    """The network a --model run recorded in its checkpoint, checked against the data."""
    from .layers import from_config

    if "network" not in meta:
        raise UsageError("--resume", f"{path} holds a dense chain, but its configuration "
                         "names a --model; it was not written by 'functional-bp train'")
    try:
        net = from_config(meta["network"])
    except (ValueError, TypeError) as e:
        raise UsageError("--resume", f"{path}: the recorded network cannot be rebuilt: {e}") \
            from None
    _check_fits(net, input_shape, n_outputs, "--resume", f"the network recorded in {path}")
    return net


def _has_dropout(net):
    from .layers import Dropout

    return any(isinstance(layer, Dropout) for layer in net.leaves())


def _load_data(config, args):
    """The run's Dataset (split, validation part, standardized), or a usage error."""
    from .datasets import load_dataset, standardize

    seed = config["seed"] if config["split_seed"] is None else config["split_seed"]
    try:
        data = load_dataset(config["data"], seed=seed, task=config["task"],
                            test_fraction=config["test_fraction"], test=config["test_data"],
                            val_fraction=config["val_fraction"])
    except (OSError, ValueError) as e:
        message = str(e)
        if "test_fraction=" in message:
            option = "--test-fraction"
        elif config["test_data"] and message.startswith(f"{config['test_data']}:"):
            option = "--test-data"
        elif "val_fraction" in message or "validation part" in message:
            option = "--val-fraction"
        else:
            option = "--data"
        if args.resume is not None and getattr(args, option[2:].replace("-", "_")) is None:
            # the user never gave this option: it comes from the checkpoint
            message = (f"the resumed run's data ({option} {config[option[2:].replace('-', '_')]}"
                       f", recorded in {args.resume}) cannot be loaded: {message}")
            option = "--resume"
        raise UsageError(option, message) from None
    if config["standardize"]:
        data, _, _ = standardize(data)
    return data


def _layers(config, data):
    hidden, acts = list(config["hidden"]), list(config["activation"])
    if len(acts) == 1:
        acts = acts * len(hidden)
    elif len(acts) != len(hidden):
        raise UsageError("--activation", f"give one name, or one per hidden layer "
                         f"({len(hidden)}); got {len(acts)}")
    sizes = [data.n_features, *hidden, data.n_outputs]
    return sizes, acts + [config["output_activation"]]


def _optimizer(config):
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
        option = "--warmup-steps" if "warmup" in str(e) else "--schedule"
        raise UsageError(option, str(e)) from None
    return make_optimizer(config["optimizer"], lr, momentum=config["momentum"])


def _dp_config(config):
    """The run's :class:`~functional_bp.privacy.DPConfig` from the --dp-* options, or None."""
    given = [k for k in ("dp_noise", "dp_epsilon", "dp_delta") if config[k] is not None]
    if config["dp_clip"] is None:
        if given:
            option = "--" + given[0].replace("_", "-")
            raise UsageError(option, "goes with --dp-clip C (private training); give --dp-clip")
        return None
    if config["dp_noise"] is None and config["dp_epsilon"] is None:
        raise UsageError("--dp-clip", "private training needs the noise: give --dp-noise "
                         "SIGMA or a target --dp-epsilon EPS")
    from .privacy import DPConfig

    try:
        return DPConfig(clip_norm=config["dp_clip"], noise_multiplier=config["dp_noise"],
                        target_epsilon=config["dp_epsilon"], delta=config["dp_delta"])
    except (TypeError, ValueError) as e:
        raise UsageError("--dp-clip", str(e)) from None


def _dp_plan(dp, state, n_train, batch_size, epochs, args):
    """The private run's plan (None when not private), or a usage error naming the option."""
    from .privacy import fit_plan

    try:
        return fit_plan(dp, state.dp, num_examples=n_train,
                        batch_size=min(batch_size, n_train), epoch=state.epoch, epochs=epochs)
    except ValueError as e:
        message = str(e)
        option = ("--dp-delta" if "delta=" in message else
                  "--epochs" if "calibrated" in message else
                  "--resume" if args.resume is not None else "--dp-clip")
        raise UsageError(option, message) from None


def _dp_note(plan, n_train):
    """The summary line's privacy part: '; DP-SGD epsilon E at delta D (...)'."""
    if plan is None:
        return ""
    if plan.accountant is None:
        return "; DP-SGD without accounting (no privacy claim)"
    note = (f" (the default: below 1/N = 1/{n_train})" if plan.delta_is_default else "")
    return (f"; DP-SGD clip {plan.clip_norm:g}, sigma {plan.noise_multiplier:.4g}, "
            f"delta {plan.delta:g}{note}")


def _run_length(args, steps_per_epoch):
    """Epochs to run now: --epochs, or --steps rounded up to whole epochs (with a note)."""
    if args.steps is None:
        return DEFAULT_EPOCHS if args.epochs is None else args.epochs
    epochs = -(-args.steps // steps_per_epoch)
    if epochs * steps_per_epoch != args.steps:
        print(f"--steps {args.steps}: rounded up to {epochs} whole epochs of "
              f"{steps_per_epoch} steps = {epochs * steps_per_epoch} steps", file=sys.stderr)
    return epochs


def _progress(epochs, quiet):
    """A tqdm bar over epochs (a no-op when tqdm is missing or --quiet)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if quiet or tqdm is None:
        return None
    return tqdm(total=epochs, desc="train", unit="epoch", file=sys.stderr,
                dynamic_ncols=True)


def _summary(record):
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

    epochs = [r["epoch"] for r in history]
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
        ax.set_xlabel("epoch")
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


class _Interrupt:
    """While active, the first Ctrl-C asks for a stop after the current epoch."""

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


def cmd_train(args):
    t_start = time.perf_counter()
    check_out(args.out)  # before anything slow
    config, resumed = _train_config(args)
    try:  # the optional extra
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the curves need matplotlib: pip install 'functional_bp[train]'") from None
    import jax

    from . import __version__, init_mlp
    from .checkpoint import CheckpointError, write_json_atomically
    from .layers import to_config
    from .privacy import checkpoint_metadata
    from .train import EarlyStopping, fit, init_state, load_state, save_state

    if config["patience"] is not None and config["val_fraction"] is None:
        raise UsageError("--patience", "early stopping watches the validation loss: give "
                         "--val-fraction too")
    data = _load_data(config, args)
    loss = config["loss"] or ("mse" if data.n_classes is None else "softmax_cross_entropy")
    input_shape = tuple(data.x_train.shape[1:])
    if config["model"] is None:  # the dense chain
        if resumed is not None and "network" in resumed:
            raise UsageError("--resume", f"{args.resume} holds a network, but its "
                             "configuration names none (no --model); it was not written by "
                             "'functional-bp train'")
        sizes, activations = _layers(config, data)
        net = None
        model = dict(activations=activations)
    else:
        sizes = activations = None
        net = (_network(config["model"], input_shape, data.n_outputs,
                        config["output_activation"]) if resumed is None
               else _resumed_network(args.resume, resumed, input_shape, data.n_outputs))
        model = dict(network=net)
        if args.devices not in (None, 1) and _has_dropout(net):
            raise UsageError("--devices", f"--model {config['model']!r} has Dropout, whose "
                             "masks are drawn per batch on one device: drop --devices")
    dp = _dp_config(config)
    if dp is not None:
        from .privacy import steps_per_epoch as private_steps

        steps_per_epoch = private_steps(len(data.x_train),
                                        min(config["batch_size"], len(data.x_train)))
        if net is not None and _has_dropout(net):
            raise UsageError("--dp-clip", f"--model {config['model']!r} has Dropout, which "
                             "private training does not support: drop it")
    else:
        steps_per_epoch = -(-len(data.x_train) // min(config["batch_size"],
                                                      len(data.x_train)))
    epochs = _run_length(args, steps_per_epoch)
    if resumed is None:
        config["schedule_steps"] = (None if config["schedule"] == "constant"
                                    else max(epochs, 1) * steps_per_epoch)
    optimizer = _optimizer(config)
    mesh = _data_mesh(args.devices)

    history = []
    if resumed is None:
        k_init, k_shuffle = jax.random.split(jax.random.key(config["seed"]))
        params = (init_mlp(k_init, sizes, scheme=config["init"]) if net is None
                  else net.init(k_init, input_shape))
        state = init_state(params, optimizer=optimizer, key=k_shuffle)
    else:
        try:
            state, meta = load_state(args.resume, optimizer=optimizer, sizes=sizes)
        except (OSError, CheckpointError) as e:
            raise UsageError("--resume", str(e)) from None
        history = list(meta.get("history", []))
    start, end = state.epoch, state.epoch + epochs
    plan = _dp_plan(dp, state, len(data.x_train), config["batch_size"], epochs, args)
    stopper = None if config["val_fraction"] is None else EarlyStopping(config["patience"])
    if stopper is not None and resumed is not None:
        _resumed_stopper(stopper, history, args.resume, optimizer, sizes, start)

    n_params = sum(int(a.size) for a in jax.tree_util.tree_leaves(state.params))
    os.makedirs(args.out, exist_ok=True)
    paths = {k: os.path.join(args.out, k) for k in
             ("params.npz", "best.npz", "metrics.json", "curves.png")}
    saved = {"best": None}

    def metrics(state, history, status, best=None):
        final = history[-1]
        shown = best or final  # with a validation part: the best epoch's test results
        return json_safe({
            "version": __version__,
            "status": status,
            "config": {**config, "loss": loss, "epochs": state.epoch},
            "sizes": sizes,
            "activations": activations,
            "network": None if net is None else to_config(net),
            "n_params": n_params,
            "dataset": {"name": data.name, "task": data.task, "n_train": len(data.x_train),
                        "n_val": None if data.x_val is None else len(data.x_val),
                        "n_test": len(data.x_test)},
            "history": history,
            "best_epoch": None if best is None else best["epoch"],
            "test_accuracy": shown.get("test_accuracy"),
            "test_loss": shown["test_loss"],
            "resumed_from": args.resume,
            "seconds": round(time.perf_counter() - t_start, 3),
            "devices": args.devices or 1,
            "dp": None if plan is None else checkpoint_metadata(plan, state.epoch),
        })

    def save(state, history, status):
        """params.npz (resumable), best.npz (if a newer best), metrics.json: each atomic."""
        upto = [r for r in history if r["epoch"] <= state.epoch]
        save_state(paths["params.npz"], state, loss=loss, **model,
                   metadata={"config": config, "input_shape": list(input_shape),
                             "history": json_safe(upto)})
        best = None if stopper is None else stopper.best_record
        if best is not None and saved["best"] != best["epoch"]:
            save_state(paths["best.npz"], stopper.best_state, loss=loss, **model,
                       metadata={"config": config, "input_shape": list(input_shape),
                                 "history": json_safe([r for r in history
                                                       if r["epoch"] <= best["epoch"]])})
            saved["best"] = best["epoch"]
        write_json_atomically(paths["metrics.json"], metrics(state, history, status, best))

    bar = _progress(epochs, args.quiet)
    run = {"history": history, "good": state, "diverged": None, "early": False}

    def on_epoch(record, state):
        run["history"].append(record)
        if bar is not None and record["epoch"] > start:
            bar.update(1)
            bar.set_postfix_str(_summary(record).replace("train ", ""))
        if not _finite(record):
            run["diverged"] = record
            return True
        run["good"] = state
        if stopper is not None and stopper(record, state):
            run["early"] = True
            return True
        if interrupt.requested:
            return True
        if args.save_every and record["epoch"] > start and \
                (record["epoch"] - start) % args.save_every == 0 and record["epoch"] < end:
            save(state, run["history"], "running")
        return False

    with _Interrupt() as interrupt:
        state, _ = fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
                       val=None if data.x_val is None else (data.x_val, data.y_val),
                       **model, loss=loss, optimizer=optimizer,
                       epochs=epochs, batch_size=config["batch_size"], l2=config["l2"],
                       callback=on_epoch, mesh=mesh, dp=dp)
    if bar is not None:
        bar.close()
    history = run["history"]
    seconds = time.perf_counter() - t_start
    shape = sizes if net is None else f"--model {config['model']}"
    title = f"{data.name}: {shape}, {config['optimizer']}, batch {config['batch_size']}"

    if run["diverged"] is not None:
        bad, good = run["diverged"], run["good"]
        save(good, history, "diverged")
        plot_curves(history, paths["curves.png"], title=title)
        print(f"functional-bp train: error: the loss became "
              f"{'nan' if any(v != v for v in bad.values()) else 'infinite'} at epoch "
              f"{bad['epoch']} ({_summary(bad)}); training stopped. {paths['params.npz']} "
              f"holds epoch {good.epoch}, the last with a finite loss. Try a smaller --lr "
              f"(now {config['lr']:g}), a schedule, or check the data for extreme values.",
              file=sys.stderr)
        return 1
    interrupted = interrupt.requested and state.epoch < end
    status = ("interrupted" if interrupted else
              "stopped early" if run["early"] else "finished")
    save(state, history, status)
    plot_curves(history, paths["curves.png"], title=title)
    best = None if stopper is None else stopper.best_record
    outputs = "{metrics.json,params.npz,curves.png" + (",best.npz}" if best else "}")
    note = "" if best is None else f"; best epoch {best['epoch']}: {_summary(best)}"
    print(f"{data.name}: {state.epoch} epochs ({status}), {_summary(history[-1])}{note}"
          f"{_dp_note(plan, len(data.x_train))}, {seconds:.1f} s -> {args.out}/{outputs}")
    if interrupted:
        command = ["functional-bp", "train", "--resume", paths["params.npz"], "--epochs",
                   str(end - state.epoch), "--out", args.out]
        print(f"resume with: {shlex.join(command)}", file=sys.stderr)
        return 130
    return 0


# --- check ------------------------------------------------------------------------------
def add_check(sub):
    p = sub.add_parser(
        "check", help="compare the hand-derived gradients with jax.grad, layer by layer",
        description="Load a checkpoint (or build a random network) and print, for every "
        "parameter leaf (W, b, ...; 'layer 3.2 W' is layer 2 inside layer 3) and for "
        "dJ/dX, the largest relative error between the hand-derived gradient and "
        "jax.grad of the plain objective. A network checkpoint rebuilds its network.",
    )
    p.add_argument("checkpoint", nargs="?", help="a params.npz written by 'train'")
    p.add_argument("--model", metavar="NAME|TEXT",
                   help="a random network: a named model (" + ", ".join(MODEL_NAMES) + ") "
                   "or a text stack, as for train [none: the dense chain of --sizes]")
    p.add_argument("--input-shape", type=positive_int, nargs="+", metavar="N",
                   help="the shape of one example, for --model (or a network checkpoint "
                   "that records none) [64; with --data: the data's]")
    p.add_argument("--outputs", type=positive_int, metavar="N",
                   help="outputs of a random --model [10; with --data: the data's]")
    p.add_argument("--sizes", type=positive_int, nargs="+", metavar="N",
                   help="layer widths n_0 ... n_L of a random network [64 32 10; with "
                   "--data: n_0 32 n_L of the data]")
    p.add_argument("--activation", nargs="+", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help="for a random network: one for every hidden layer, or one per "
                   "hidden layer [relu]")
    p.add_argument("--output-activation", choices=sorted(ACTIVATIONS), metavar="NAME",
                   default="identity", help="for a random network [identity]")
    p.add_argument("--loss", choices=sorted(LOSSES),
                   help="[the checkpoint's, else softmax_cross_entropy]")
    p.add_argument("--data", help="check on the first --batch training rows of this data "
                   "set (built-in name or file, as for train; a checkpoint's run settings "
                   "are used) [none: a random batch]")
    p.add_argument("--task", choices=["auto", "classification", "regression"],
                   help="with --data, for files: what the target is [the checkpoint's, else "
                   "auto]")
    p.add_argument("--batch", type=positive_int, default=32,
                   help="rows of the batch [32]")
    p.add_argument("--l2", type=non_negative_float, default=0.0, help="weight decay [0]")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="fixes the random network and batch [0]")
    p.add_argument("--float64", action="store_true",
                   help="check in float64 (tolerance 1e-10) [off: float32, tolerance 2e-5]")
    p.add_argument("--finite-differences", action="store_true",
                   help="also compare with float64 central differences (smooth "
                   "activations) [off]")
    return p


def _check_data(args, config):
    """The Dataset for ``check --data``, with a run's settings when it has them."""
    from .datasets import load_dataset, standardize

    config = {**TRAIN_DEFAULTS, **(config or {})}
    seed = config["seed"] if config["split_seed"] is None else config["split_seed"]
    try:
        data = load_dataset(args.data, seed=seed, task=args.task or config["task"])
    except (OSError, ValueError) as e:
        raise UsageError("--data", str(e)) from None
    return standardize(data)[0] if config["standardize"] else data


def _data_batch(args, data, input_shape, n_L, dtype):
    """The first --batch training rows as (x, y), y one-hot for classes."""
    import jax
    import jax.numpy as jnp

    shape = tuple(data.x_train.shape[1:])
    if shape != tuple(input_shape):
        what = (f"{data.n_features} features; the network takes n_0 = {input_shape[0]}"
                if len(shape) == len(input_shape) == 1 else
                f"examples of shape {shape}; the network takes {tuple(input_shape)}")
        raise UsageError("--data", f"{args.data} has {what}")
    x, y = data.x_train[:args.batch], data.y_train[:args.batch]
    if data.n_classes is None:
        if y.shape[1] != n_L:
            raise UsageError("--data", f"{args.data} has regression targets of width "
                             f"{y.shape[1]}; the network has n_L = {n_L} outputs")
        return jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    if data.n_classes > n_L:
        raise UsageError("--data", f"{args.data} has {data.n_classes} classes (labels up to "
                         f"{data.n_classes - 1}); the network has n_L = {n_L} outputs")
    return jnp.asarray(x, dtype), jax.nn.one_hot(y, n_L, dtype=dtype)


class _Checked:
    """What ``check`` checks: params, the model (activations= or network=), loss, shapes."""

    def __init__(self, params, model, loss, input_shape, n_L, describe):
        self.params, self.model, self.loss = params, model, loss
        self.input_shape, self.n_L, self.describe = tuple(input_shape), n_L, describe


def _network_outputs(net, input_shape, option):
    """n_L of a network for examples of ``input_shape`` (its output must be a vector)."""
    _check_fits(net, input_shape, None, option, "the network")
    out = tuple(net.output_shape(tuple(input_shape)))
    if len(out) != 1:
        raise UsageError(option, f"the network maps an example to shape {out}; the losses "
                         "take one vector of outputs per example (end with a flatten and a "
                         "dense layer)")
    return out[0]


def _check_network(args, data=None):
    """The checkpoint's network and params, or a random one (dense chain or --model)."""
    import jax

    from . import init_mlp

    default_loss = "mse" if data is not None and data.n_classes is None else \
        "softmax_cross_entropy"
    if args.checkpoint is not None:
        for option in ("sizes", "activation", "model", "outputs"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option}", "describes a random network: give a "
                                 f"checkpoint or --{option}, not both")
        from .checkpoint import load_checkpoint

        try:
            ckpt = load_checkpoint(args.checkpoint)
        except (OSError, ValueError) as e:
            raise UsageError("checkpoint", str(e)) from None
        loss = args.loss or ckpt.metadata.get("loss") or default_loss
        if ckpt.network is not None:
            net = ckpt.network
            recorded = ckpt.metadata.get("input_shape")
            input_shape = (args.input_shape or (None if data is None else
                                                list(data.x_train.shape[1:])) or recorded)
            if not input_shape:
                raise UsageError("checkpoint", f"{args.checkpoint} records a network but not "
                                 "the shape of its examples: give --input-shape or --data")
            n_L = _network_outputs(net, input_shape, "checkpoint")
            config = ckpt.metadata.get("config")
            name = config.get("model") if isinstance(config, dict) else None
            return _Checked(ckpt.params, dict(network=net), loss, input_shape, n_L,
                            f"--model {name}" if name else f"network {net!r}")
        if args.input_shape is not None:
            raise UsageError("--input-shape", f"{args.checkpoint} holds a dense chain, whose "
                             "first W fixes n_0: drop --input-shape")
        activations = ckpt.metadata.get("activations")
        if not activations:
            raise UsageError("checkpoint", f"{args.checkpoint} records no activations")
        sizes = [ckpt.params[0]["W"].shape[0]] + [p["W"].shape[1] for p in ckpt.params]
        return _Checked(ckpt.params, dict(activations=activations), loss, sizes[:1],
                        sizes[-1], f"activations {activations}")
    if args.model is not None:
        for option in ("sizes", "activation"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option}", f"describes the dense chain; --model "
                                 f"{args.model!r} sets its own layers: drop --{option}")
        input_shape = args.input_shape or ([64] if data is None else
                                           list(data.x_train.shape[1:]))
        n_L = args.outputs or (10 if data is None else data.n_outputs)
        net = _network(args.model, input_shape, n_L, args.output_activation)
        params = net.init(jax.random.key(args.seed), tuple(input_shape))
        return _Checked(params, dict(network=net), args.loss or default_loss, input_shape,
                        n_L, f"--model {args.model}")
    for option in ("input_shape", "outputs"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise UsageError(flag, "goes with --model (the dense chain's widths are --sizes)")
    sizes = args.sizes or ([64, 32, 10] if data is None else
                           [data.n_features, 32, data.n_outputs])
    if len(sizes) < 2:
        raise UsageError("--sizes", "give at least two widths, n_0 and n_L")
    acts = args.activation or ["relu"]
    if len(acts) == 1:
        acts = acts * (len(sizes) - 2)
    elif len(acts) != len(sizes) - 2:
        raise UsageError("--activation", f"give one name, or one per hidden layer "
                         f"({len(sizes) - 2}); got {len(acts)}")
    params = init_mlp(jax.random.key(args.seed), sizes)
    activations = acts + [args.output_activation]
    return _Checked(params, dict(activations=activations), args.loss or default_loss,
                    sizes[:1], sizes[-1], f"activations {activations}")


def _random_batch(key, m, input_shape, n_L, loss, dtype, vocab_size=None):
    """Random rows: x normal (integers below ``vocab_size`` for an embedding), y by loss."""
    import jax

    kx, ky = jax.random.split(key)
    if vocab_size is None:
        x = jax.random.normal(kx, (m, *input_shape), dtype)
    else:
        x = jax.random.randint(kx, (m, *input_shape), 0, vocab_size)
    if loss == "softmax_cross_entropy":
        y = jax.nn.one_hot(jax.random.randint(ky, (m,), 0, n_L), n_L, dtype=dtype)
    elif loss == "sigmoid_cross_entropy":
        y = jax.random.bernoulli(ky, 0.5, (m, n_L)).astype(dtype)
    else:
        y = jax.random.normal(ky, (m, n_L), dtype)
    return x, y


def cmd_check(args):
    import contextlib

    import jax
    import jax.numpy as jnp

    from .checking import check_gradients

    data = None
    if args.data is not None:
        config = None
        if args.checkpoint is not None:
            from .checkpoint import read_metadata

            try:
                config = read_metadata(args.checkpoint).get("config")
            except (OSError, ValueError) as e:
                raise UsageError("checkpoint", str(e)) from None
        data = _check_data(args, config if isinstance(config, dict) else None)
    elif args.task is not None:
        raise UsageError("--task", "goes with --data")
    checked = _check_network(args, data)
    net = checked.model.get("network")
    first = None if net is None else next(net.leaves(), None)
    dropout_key = (jax.random.key(args.seed + 2) if net is not None and _has_dropout(net)
                   else None)
    ctx = jax.enable_x64(True) if args.float64 else contextlib.nullcontext()
    with ctx:
        dtype = jnp.float64 if args.float64 else jnp.float32
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), checked.params)
        if data is None:
            batch = _random_batch(jax.random.key(args.seed + 1), args.batch,
                                  checked.input_shape, checked.n_L, checked.loss, dtype,
                                  vocab_size=getattr(first, "vocab_size", None)
                                  if getattr(first, "integer_input", False) else None)
        else:
            batch = _data_batch(args, data, checked.input_shape, checked.n_L, dtype)
        report = check_gradients(params, batch, **checked.model, loss=checked.loss,
                                 l2=args.l2, finite_differences=args.finite_differences,
                                 **({} if dropout_key is None else
                                    dict(dropout_key=dropout_key)))
    source = args.checkpoint or "random network"
    rows = f"{len(batch[0])} rows of {args.data}" if data is not None else f"{args.batch} random rows"
    dropout = "" if dropout_key is None else ", dropout on (one fixed key for both sides)"
    print(f"{source}: {checked.describe}, loss {checked.loss}, batch {rows}, "
          f"{jnp.dtype(dtype).name}{dropout}")
    print(report)
    print("PASS: the hand-derived gradients equal jax.grad" if report.ok
          else f"FAIL: {len(report.failed)} leaf(s) over tolerance")
    return 0 if report.ok else 1


# --- entry point ---------------------------------------------------------------------
COMMANDS = {"train": (add_train, cmd_train), "check": (add_check, cmd_check),
            "bench": (add_bench, cmd_bench)}
"""name -> (function adding its subparser, function running it)."""


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="functional-bp",
        description="Backpropagation derived by hand, in JAX, checked against jax.grad.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {name: add(sub) for name, (add, _) in COMMANDS.items()}
    return parser, subparsers


def main(argv=None) -> int:
    """Run ``functional-bp``; returns the exit status (argparse exits 2 on bad usage)."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except UsageError as e:
        subparsers[args.command].error(str(e))
    except ImportError as e:
        print(f"functional-bp {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
