"""``functional-bp check``: the hand-derived gradients against ``jax.grad``, leaf by leaf.

A thin layer over :func:`functional_bp.check_gradients`: the network comes
from a checkpoint (:func:`functional_bp.checkpoint.load_checkpoint`) or is
built at random (:func:`functional_bp.experiment.network`), the batch from
the data (:func:`functional_bp.datasets.load_dataset`) or at random.
"""

from __future__ import annotations

from ..activations import ACTIVATIONS
from ..experiment import TRAIN_DEFAULTS, ConfigError, check_fits, has_dropout, network
from ..losses import LOSSES
from ._args import UsageError, model_names, non_negative_float, non_negative_int, positive_int


def _usage(fn, *args):
    """``fn(*args)``, its configuration errors as usage errors."""
    try:
        return fn(*args)
    except ConfigError as e:
        raise UsageError.of(e) from None


def add(sub):
    """Add ``check`` and its options."""
    p = sub.add_parser(
        "check", help="compare the hand-derived gradients with jax.grad, layer by layer",
        description="Load a checkpoint (or build a random network) and print, for every "
        "parameter leaf (W, b, ...; 'layer 3.2 W' is layer 2 inside layer 3) and for "
        "dJ/dX, the largest relative error between the hand-derived gradient and "
        "jax.grad of the plain objective. A network checkpoint rebuilds its network.",
    )
    p.add_argument("checkpoint", nargs="?", help="a params.npz written by 'train'")
    p.add_argument("--model", metavar="NAME|TEXT",
                   help=f"a random network: a named model ({model_names()}) "
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
    from ..datasets import load_dataset, standardize

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
    try:
        check_fits(net, input_shape, None, option, "the network")
    except ConfigError as e:
        raise UsageError(option, e.message) from None
    out = tuple(net.output_shape(tuple(input_shape)))
    if len(out) != 1 and not (len(out) == 2 and out[0] == tuple(input_shape)[0]):
        raise UsageError(option, f"the network maps an example to shape {out}; the losses "
                         "take one vector of outputs per example, or one per position of a "
                         "sequence (end with a flatten and a dense layer)")
    return out[-1]


def _checkpoint_network(args, data, default_loss):
    """The checkpoint's network (or dense chain) and params."""
    for option in ("sizes", "activation", "model", "outputs"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option}", "describes a random network: give a "
                             f"checkpoint or --{option}, not both")
    from ..checkpoint import load_checkpoint

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


def _random_network(args, data, default_loss):
    """A random network: a --model, or the dense chain of --sizes."""
    import jax

    from .. import init_mlp

    if args.model is not None:
        for option in ("sizes", "activation"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option}", f"describes the dense chain; --model "
                                 f"{args.model!r} sets its own layers: drop --{option}")
        input_shape = args.input_shape or ([64] if data is None else
                                           list(data.x_train.shape[1:]))
        n_L = args.outputs or (10 if data is None else data.n_outputs)
        net = _usage(network, args.model, input_shape, n_L, args.output_activation)
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


def _check_network(args, data=None):
    """The checkpoint's network and params, or a random one (dense chain or --model)."""
    default_loss = "mse" if data is not None and data.n_classes is None else \
        "softmax_cross_entropy"
    if args.checkpoint is not None:
        return _checkpoint_network(args, data, default_loss)
    return _random_network(args, data, default_loss)


def _random_batch(key, m, input_shape, n_L, loss, dtype, vocab_size=None, positions=()):
    """Random rows: x normal (integers below ``vocab_size`` for an embedding), y by loss.

    ``positions``: ``(T,)`` for a sequence model (outputs (m, T, n_L)), else ``()``.
    """
    import jax

    kx, ky = jax.random.split(key)
    if vocab_size is None:
        x = jax.random.normal(kx, (m, *input_shape), dtype)
    else:
        x = jax.random.randint(kx, (m, *input_shape), 0, vocab_size)
    rows = (m, *positions)   # a sequence model's outputs: one row per position
    if loss == "softmax_cross_entropy" and positions:  # labels, a quarter not scored (-1)
        y = jax.random.randint(ky, rows, -(n_L // 3 + 1), n_L).clip(-1)
    elif loss == "softmax_cross_entropy":
        y = jax.nn.one_hot(jax.random.randint(ky, rows, 0, n_L), n_L, dtype=dtype)
    elif loss == "sigmoid_cross_entropy":
        y = jax.random.bernoulli(ky, 0.5, (*rows, n_L)).astype(dtype)
    else:
        y = jax.random.normal(ky, (*rows, n_L), dtype)
    return x, y


def _positions(checked):
    """``(T,)`` when the checked network outputs one row per position of a sequence."""
    net = checked.model.get("network")
    if net is None:
        return ()
    out = tuple(net.output_shape(checked.input_shape))
    return out[:1] if len(out) == 2 else ()


def run(args, parser=None):
    """Run ``functional-bp check`` with the parsed ``args``; the exit status."""
    import contextlib

    import jax
    import jax.numpy as jnp

    from ..checking import check_gradients

    data = None
    if args.data is not None:
        config = None
        if args.checkpoint is not None:
            from ..checkpoint import read_metadata

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
    dropout_key = (jax.random.key(args.seed + 2) if net is not None and has_dropout(net)
                   else None)
    ctx = jax.enable_x64(True) if args.float64 else contextlib.nullcontext()
    with ctx:
        dtype = jnp.float64 if args.float64 else jnp.float32
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), checked.params)
        if data is None:
            batch = _random_batch(jax.random.key(args.seed + 1), args.batch,
                                  checked.input_shape, checked.n_L, checked.loss, dtype,
                                  vocab_size=getattr(first, "vocab_size", None)
                                  if getattr(first, "integer_input", False) else None,
                                  positions=_positions(checked))
        else:
            batch = _data_batch(args, data, checked.input_shape, checked.n_L, dtype)
        report = check_gradients(params, batch, **checked.model, loss=checked.loss,
                                 l2=args.l2, finite_differences=args.finite_differences,
                                 **({} if dropout_key is None else
                                    dict(dropout_key=dropout_key)))
        private = _private_report(args.checkpoint, params, batch, checked)
    rows = f"{len(batch[0])} rows of {args.data}" if data is not None else f"{args.batch} random rows"
    dropout = "" if dropout_key is None else ", dropout on (one fixed key for both sides)"
    return _print(f"{args.checkpoint or 'random network'}: {checked.describe}, loss "
                  f"{checked.loss}, batch {rows}, {jnp.dtype(dtype).name}{dropout}",
                  report, private)


def _print(title, report, private):
    """The report (and the private run's), PASS or FAIL; the exit status."""
    print(title)
    print(report)
    print("PASS: the hand-derived gradients equal jax.grad" if report.ok
          else f"FAIL: {len(report.failed)} leaf(s) over tolerance")
    if private is not None:  # a private run relied on the norms and the clipped step
        plan, preport = private
        print(f"\nprivate run (clip {plan.clip_norm:g}, divided by q N = {plan.denominator}): "
              "per-example norms and the clipped step (noise set to 0) against "
              "jax.vmap(jax.grad)")
        print(preport)
        print("PASS: the per-example norms and the clipped step equal jax.vmap(jax.grad) "
              "(the noise, random, is not checked)" if preport.ok
              else f"FAIL: {len(preport.failed)} row(s) over tolerance")
    return 0 if report.ok and (private is None or private[1].ok) else 1


def _private_report(checkpoint, params, batch, checked):
    """(plan, report) of the private-step check for a private run's checkpoint, else None."""
    if checkpoint is None:
        return None
    from ..checkpoint import read_metadata
    from ..privacy import check_private_gradients, checkpoint_plan

    try:
        plan = checkpoint_plan(read_metadata(checkpoint), str(checkpoint))
    except (OSError, ValueError) as e:
        raise UsageError("checkpoint", str(e)) from None
    if plan is None:
        return None
    return plan, check_private_gradients(params, batch, plan, **checked.model,
                                         loss=checked.loss)
