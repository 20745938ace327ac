"""The command line: ``functional-bp train`` and ``functional-bp check``.

One small function per subcommand (``cmd_<name>``) and one that registers its
options (``add_<name>``); :data:`COMMANDS` lists them, so a new subcommand is
one pair of functions and one entry.

Examples::

    functional-bp train --out runs/digits            # the defaults: digits, 97%+
    functional-bp train --data moons --hidden 16 16 --activation tanh --epochs 100
    functional-bp train --resume runs/digits/params.npz --epochs 10 --out runs/more
    functional-bp check runs/digits/params.npz       # the per-layer proof
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .activations import ACTIVATIONS
from .bench import add_bench, cmd_bench
from .losses import LOSSES
from .mlp import SCHEMES


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


# --- train ---------------------------------------------------------------------------
TRAIN_DEFAULTS = dict(
    data="digits", task="auto", test_fraction=0.2, standardize=True,
    hidden=[256], activation=["relu"], output_activation="identity", loss=None,
    init="he", optimizer="adam", lr=1e-3, momentum=0.9, batch_size=32, l2=0.0, seed=0,
)
"""The configuration of a run with no options. ``loss=None`` means
``softmax_cross_entropy`` for classification and ``mse`` for regression."""


def add_train(sub):
    p = sub.add_parser(
        "train", help="train a network with the hand-derived gradients",
        description="Train an MLP by minibatch gradient descent with the hand-derived "
        "backward pass; write metrics.json, params.npz and curves.png into --out.",
    )
    d = TRAIN_DEFAULTS
    p.add_argument("--data", help=f"built-in name (digits, xor, moons, spirals, sine) or "
                   f"a .npz (X, y) / .csv (last column the target) file [{d['data']}]")
    p.add_argument("--task", choices=["auto", "classification", "regression"],
                   help="for data files: what the target is [auto]")
    p.add_argument("--test-fraction", type=fraction, help="held-out share [0.2]")
    p.add_argument("--no-standardize", dest="standardize", action="store_const",
                   const=False, help="feed the features as they are (default: shift and "
                   "scale each to mean 0, std 1 on the training part)")
    p.add_argument("--hidden", type=positive_int, nargs="*", metavar="N",
                   help="hidden layer widths; none for a linear model [256]")
    p.add_argument("--activation", nargs="+", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help=f"one for every hidden layer, or one per hidden layer; "
                   f"{', '.join(sorted(ACTIVATIONS))} [relu]")
    p.add_argument("--output-activation", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help="activation of the last layer [identity]")
    p.add_argument("--loss", choices=sorted(LOSSES),
                   help="[softmax_cross_entropy for classes, mse for regression]")
    p.add_argument("--init", choices=sorted(SCHEMES), help="weight init scheme [he]")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], help="[adam]")
    p.add_argument("--lr", type=positive_float, help="learning rate eta [0.001]")
    p.add_argument("--momentum", type=non_negative_float, help="for --optimizer momentum [0.9]")
    p.add_argument("--batch-size", type=positive_int, help="rows per minibatch [32]")
    p.add_argument("--l2", type=non_negative_float, help="weight decay on the W's [0]")
    p.add_argument("--seed", type=non_negative_int, help="fixes split, init and shuffles [0]")
    p.add_argument("--epochs", type=non_negative_int, default=50,
                   help="epochs to run (more epochs, with --resume) [50]")
    p.add_argument("--out", default="run", metavar="DIR", help="output folder [run]")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its params.npz (its configuration is kept)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--devices", type=positive_int, metavar="N",
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


def _train_config(args):
    """The run's configuration: defaults, or the checkpoint's when resuming."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.resume is None:
        return {**TRAIN_DEFAULTS, **given}, None
    from .checkpoint import read_metadata

    try:
        meta = read_metadata(args.resume)
    except (OSError, ValueError) as e:
        raise UsageError("--resume", str(e)) from None
    config = meta.get("config")
    if not isinstance(config, dict) or set(config) != set(TRAIN_DEFAULTS):
        raise UsageError("--resume", f"{args.resume} was not written by 'functional-bp train'")
    for k, v in given.items():
        if v != config[k]:
            raise UsageError(
                "--" + k.replace("_", "-"),
                f"{v!r} differs from the resumed run's {config[k]!r}; a resumed run "
                "keeps its configuration",
            )
    return config, meta


def _layers(config, data):
    hidden, acts = list(config["hidden"]), list(config["activation"])
    if len(acts) == 1:
        acts = acts * len(hidden)
    elif len(acts) != len(hidden):
        raise UsageError("--activation", f"give one name, or one per hidden layer "
                         f"({len(hidden)}); got {len(acts)}")
    sizes = [data.n_features, *hidden, data.n_outputs]
    return sizes, acts + [config["output_activation"]]


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
    keys = [("train_loss", "train loss {:.4f}"), ("test_loss", "test loss {:.4f}"),
            ("train_accuracy", "train acc {:.2%}"), ("test_accuracy", "test acc {:.2%}")]
    return ", ".join(fmt.format(record[k]) for k, fmt in keys if k in record)


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
        for part, style in (("train", "-"), ("test", "--")):
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


def cmd_train(args):
    t_start = time.perf_counter()
    config, resumed = _train_config(args)
    try:  # the optional extra
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the curves need matplotlib: pip install 'functional_bp[train]'") from None
    import jax

    from . import __version__, init_mlp
    from .checkpoint import CheckpointError
    from .datasets import load_dataset, standardize
    from .train import fit, init_state, load_state, make_optimizer, save_state

    try:
        data = load_dataset(config["data"], seed=config["seed"], task=config["task"],
                            test_fraction=config["test_fraction"])
    except (OSError, ValueError) as e:
        raise UsageError("--data", str(e)) from None
    if config["standardize"]:
        data, _, _ = standardize(data)
    loss = config["loss"] or ("mse" if data.n_classes is None else "softmax_cross_entropy")
    sizes, activations = _layers(config, data)
    optimizer = make_optimizer(config["optimizer"], config["lr"], momentum=config["momentum"])
    mesh = _data_mesh(args.devices)

    history = []
    if resumed is None:
        k_init, k_shuffle = jax.random.split(jax.random.key(config["seed"]))
        params = init_mlp(k_init, sizes, scheme=config["init"])
        state = init_state(params, optimizer=optimizer, key=k_shuffle)
    else:
        try:
            state, meta = load_state(args.resume, optimizer=optimizer, sizes=sizes)
        except (OSError, CheckpointError) as e:
            raise UsageError("--resume", str(e)) from None
        history = list(meta.get("history", []))

    bar, start = _progress(args.epochs, args.quiet), state.epoch

    def on_epoch(record):
        if bar is not None and record["epoch"] > start:
            bar.update(1)
            bar.set_postfix_str(_summary(record).replace("train ", ""))

    state, new = fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
                     activations=activations, loss=loss, optimizer=optimizer,
                     epochs=args.epochs, batch_size=config["batch_size"], l2=config["l2"],
                     callback=on_epoch, mesh=mesh)
    if bar is not None:
        bar.close()
    history += new
    train_seconds = time.perf_counter() - t_start

    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "params.npz")
    save_state(ckpt, state, activations=activations, loss=loss,
               metadata={"config": config, "history": history})
    final = history[-1]
    metrics = {
        "version": __version__,
        "config": {**config, "loss": loss, "epochs": state.epoch},
        "sizes": sizes,
        "activations": activations,
        "dataset": {"name": data.name, "task": data.task, "n_train": len(data.x_train),
                    "n_test": len(data.x_test)},
        "history": history,
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final["test_loss"],
        "resumed_from": args.resume,
        "seconds": round(train_seconds, 3),
        "devices": args.devices or 1,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_curves(history, os.path.join(args.out, "curves.png"),
                title=f"{data.name}: {sizes}, {config['optimizer']}, batch {config['batch_size']}")
    print(f"{data.name}: {state.epoch} epochs, {_summary(final)}, "
          f"{train_seconds:.1f} s -> {args.out}/{{metrics.json,params.npz,curves.png}}")
    return 0


# --- check ------------------------------------------------------------------------------
def add_check(sub):
    p = sub.add_parser(
        "check", help="compare the hand-derived gradients with jax.grad, layer by layer",
        description="Load a checkpoint (or build a random network) and print, for every "
        "W and b, the largest relative error between the hand-derived gradient and "
        "jax.grad of the plain objective.",
    )
    p.add_argument("checkpoint", nargs="?", help="a params.npz written by 'train'")
    p.add_argument("--sizes", type=positive_int, nargs="+", metavar="N",
                   help="layer widths n_0 ... n_L of a random network [64 32 10]")
    p.add_argument("--activation", nargs="+", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help="for a random network: one for every hidden layer, or one per "
                   "hidden layer [relu]")
    p.add_argument("--output-activation", choices=sorted(ACTIVATIONS), metavar="NAME",
                   default="identity", help="for a random network [identity]")
    p.add_argument("--loss", choices=sorted(LOSSES),
                   help="[the checkpoint's, else softmax_cross_entropy]")
    p.add_argument("--batch", type=positive_int, default=32, help="rows of the random batch [32]")
    p.add_argument("--l2", type=non_negative_float, default=0.0, help="weight decay [0]")
    p.add_argument("--seed", type=non_negative_int, default=0, help="[0]")
    p.add_argument("--float64", action="store_true", help="check in float64 (tolerance 1e-10)")
    p.add_argument("--finite-differences", action="store_true",
                   help="also compare with float64 central differences (smooth activations)")
    return p


def _check_network(args):
    """(params, activations, loss) from the checkpoint or a random network."""
    import jax

    from . import init_mlp

    if args.checkpoint is not None:
        if args.sizes or args.activation:
            raise UsageError("--sizes", "give a checkpoint or --sizes/--activation, not both")
        from .checkpoint import load_checkpoint

        try:
            ckpt = load_checkpoint(args.checkpoint)
        except (OSError, ValueError) as e:
            raise UsageError("checkpoint", str(e)) from None
        activations = ckpt.metadata.get("activations")
        if not activations:
            raise UsageError("checkpoint", f"{args.checkpoint} records no activations")
        return ckpt.params, activations, args.loss or ckpt.metadata.get("loss") or \
            "softmax_cross_entropy"
    sizes = args.sizes or [64, 32, 10]
    if len(sizes) < 2:
        raise UsageError("--sizes", "give at least two widths, n_0 and n_L")
    acts = args.activation or ["relu"]
    if len(acts) == 1:
        acts = acts * (len(sizes) - 2)
    elif len(acts) != len(sizes) - 2:
        raise UsageError("--activation", f"give one name, or one per hidden layer "
                         f"({len(sizes) - 2}); got {len(acts)}")
    params = init_mlp(jax.random.key(args.seed), sizes)
    return params, acts + [args.output_activation], args.loss or "softmax_cross_entropy"


def _random_batch(key, m, n_0, n_L, loss, dtype):
    import jax

    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (m, n_0), dtype)
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

    from . import grad, objective
    from .checking import check_gradients

    params, activations, loss = _check_network(args)
    ctx = jax.enable_x64(True) if args.float64 else contextlib.nullcontext()
    with ctx:
        dtype = jnp.float64 if args.float64 else jnp.float32
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        n_0, n_L = params[0]["W"].shape[0], params[-1]["W"].shape[1]
        batch = _random_batch(jax.random.key(args.seed + 1), args.batch, n_0, n_L, loss, dtype)
        kw = dict(activations=activations, loss=loss, l2=args.l2)
        report = check_gradients(lambda p, b: grad(p, b, **kw),
                                 lambda p, b: objective(p, b, **kw),
                                 params, batch, finite_differences=args.finite_differences)
    source = args.checkpoint or "random network"
    print(f"{source}: activations {activations}, loss {loss}, batch {args.batch}, "
          f"{jnp.dtype(dtype).name}")
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
