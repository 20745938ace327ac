"""``functional-bp train``: the options, then :func:`functional_bp.experiment.train`.

The work (data by name, the model from its text form, the run with its
checkpoints and plots) is in :mod:`functional_bp.experiment`; recipes are in
:mod:`functional_bp.recipes`. This module reads the options, reports the
result and turns configuration errors into usage errors.
"""

from __future__ import annotations

import shlex
import sys

from .. import experiment, recipes
from ..activations import ACTIVATIONS
from ..experiment import DEFAULT_EPOCHS, DEFAULT_SAVE_EVERY, TRAIN_DEFAULTS, ConfigError
from ..losses import LOSSES
from ..mlp import SCHEMES
from ._args import (UsageError, closed_fraction, fraction, model_names, non_negative_float,
                    non_negative_int, positive_float, positive_int, unit_fraction)

OPTIMIZERS = ("sgd", "momentum", "adam")  # functional_bp.train's
SCHEDULES = ("constant", "cosine", "exponential", "warmup-cosine")
RUN_OPTIONS = ("out", "save_every", "resume", "quiet", "devices", "epochs", "steps", "recipe")
"""Options that are not part of the run's configuration (TRAIN_DEFAULTS)."""


def _data_options(p, d):
    g = p.add_argument_group("data")
    g.add_argument("--data", help="built-in name (digits, xor, moons, spirals, sine, mnist1d), "
                   "a .npz (X, y; optionally x_test, y_test) / .csv (last column the "
                   "target) file, or token data for a --model gpt: text:PATH (a UTF-8 text, "
                   "characters as tokens, nanoGPT's split) or sort (minGPT's sorting demo) "
                   f"[{d['data']}]")
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


def _network_options(p):
    g = p.add_argument_group("network")
    g.add_argument("--model", metavar="NAME|TEXT",
                   help=f"a named network ({model_names()}), optionally "
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


def _optimization_options(p):
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


def _language_model_options(p):
    g = p.add_argument_group("language models (--data text:PATH or sort; iterations, AdamW)")
    g.add_argument("--max-iters", type=positive_int, metavar="N",
                   help="iterations of random batches; a private text run (--dp-clip) rounds "
                   "them up to whole epochs of its N blocks [text 5000, sort 2000]")
    g.add_argument("--eval-interval", type=positive_int, metavar="N",
                   help="evaluate (and checkpoint) every N iterations and at the end [250]")
    g.add_argument("--eval-iters", type=positive_int, metavar="N",
                   help="text: random batches per split in each loss estimate [200]")
    g.add_argument("--lr-decay-iters", type=positive_int, metavar="N",
                   help="text: the cosine reaches --min-lr at this iteration [--max-iters]")
    g.add_argument("--min-lr", type=non_negative_float, metavar="LR",
                   help="text: the learning rate after the cosine decay [0.0001]")
    g.add_argument("--warmup-iters", type=non_negative_int, metavar="N",
                   help="text: iterations of linear warm-up [100]")
    g.add_argument("--grad-clip", type=non_negative_float, metavar="C",
                   help="clip the gradient to global norm C (0: off) [1.0]")
    g.add_argument("--weight-decay", type=non_negative_float, metavar="L",
                   help="AdamW's decoupled weight decay, on the parameters with two or more "
                   "axes only [0.1]")


def _privacy_options(p):
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


def _run_options(p):
    g = p.add_argument_group("run")
    g.add_argument("--recipe", metavar="NAME",
                   help="start from a shipped recipe, the settings of a published number "
                   "(every option given overrides it); 'list' prints the recipes and what "
                   "each reproduces [none]")
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


def add(sub):
    """Add ``train`` and its options (each option's default in brackets in its help)."""
    p = sub.add_parser(
        "train", help="train a network with the hand-derived gradients",
        description="Train a network (the dense chain of --hidden, or a --model) by "
        "minibatch gradient descent with the hand-derived backward pass; write "
        "metrics.json, params.npz and curves.png (and best.npz with a validation part) "
        "into --out. Each option's default is in brackets.",
    )
    _data_options(p, TRAIN_DEFAULTS)
    _network_options(p)
    _optimization_options(p)
    _language_model_options(p)
    _privacy_options(p)
    _run_options(p)
    return p


def list_recipes(file=None):
    """``--recipe list``: each recipe, what it reproduces, and its command."""
    for name in recipes.names():
        r = recipes.load(name)
        data = "" if r.needs_data is None else f" --data {r.needs_data.split(',')[0]}"
        print(f"{name}\n    reproduces: {r.reproduces}\n    command: functional-bp "
              f"{shlex.join(r.argv())}{data} --seed S  (S in {list(r.seeds)})"
              + ("" if r.needs_data is None else f"\n    --data: {r.needs_data}"), file=file)
    return 0


def _recipe(args, parser):
    """The recipe of --recipe with its settings read through the options' own types."""
    try:
        recipe = recipes.load(args.recipe)
    except (KeyError, ValueError) as e:
        raise UsageError("--recipe", e.args[0]) from None
    if recipe.needs_data and args.data is None and args.resume is None:
        raise UsageError("--data", f"the recipe {recipe.name} needs --data {recipe.needs_data}")
    parsed = parser.parse_args(recipe.argv()[1:])
    settings = {k: getattr(parsed, k) for k in recipe.settings}
    if args.epochs is None and args.steps is None:
        args.epochs, args.steps = parsed.epochs, parsed.steps
    return recipe.__class__(**{**recipe.__dict__, "settings": settings})


def _given(args):
    return {k: getattr(args, k) for k in TRAIN_DEFAULTS
            if k != "recipe" and getattr(args, k, None) is not None}


def _report(result, args):
    """The summary line (and the resume command of an interrupted run); the exit status."""
    s, good = experiment.summary, result.state
    if result.history and "iter" in result.history[-1]:
        return _report_iterations(result, args)
    if result.status == "diverged":
        bad = result.diverged
        print(f"functional-bp train: error: the loss became "
              f"{'nan' if any(v != v for v in bad.values()) else 'infinite'} at epoch "
              f"{bad['epoch']} ({s(bad)}); training stopped. {result.paths['params.npz']} "
              f"holds epoch {good.epoch}, the last with a finite loss. Try a smaller --lr "
              f"(now {result.config['lr']:g}), a schedule, or check the data for extreme "
              "values.", file=sys.stderr)
        return 1
    best, n = result.best, result.state.epoch
    outputs = "{metrics.json,params.npz,curves.png" + (",best.npz}" if best else "}")
    note = "" if best is None else f"; best epoch {best['epoch']}: {s(best)}"
    print(f"{result.data.name}: {n} epoch{'' if n == 1 else 's'} ({result.status}), "
          f"{s(result.history[-1])}{note}"
          f"{experiment.dp_note(result.plan, len(result.data.x_train))}, "
          f"{result.seconds:.1f} s -> {args.out}/{outputs}")
    if result.status == "interrupted":
        command = ["functional-bp", "train", "--resume", result.paths["params.npz"],
                   "--epochs", str(result.end - n), "--out", args.out]
        print(f"resume with: {shlex.join(command)}", file=sys.stderr)
        return 130
    return 0


def _report_iterations(result, args):
    """The summary of a language-model run (iterations); the exit status."""
    last, n = result.history[-1], result.state.epoch
    if result.status == "diverged":
        held = [r["iter"] for r in result.history if r.get("epoch", r["iter"]) == n]
        print(f"functional-bp train: error: the loss became nan or infinite at iteration "
              f"{result.diverged['iter']}; training stopped. {result.paths['params.npz']} "
              f"holds iteration {held[-1] if held else n}, the last evaluated with a finite "
              f"loss. Try a smaller --lr (now {result.config['lr']:g}).", file=sys.stderr)
        return 1
    held = "val_loss" if "val_loss" in last else "test_loss"
    note = "" if result.best is None else f"; best at iter {result.best['iter']}: val loss " \
        f"{result.best['val_loss']:.4f}"
    outputs = "{metrics.json,params.npz,curves.png" + (",best.npz}" if result.best else "}")
    count, private = f"{n} iterations", ""
    if result.plan is not None:  # a private run: epochs of blocks (functional_bp.lm_run)
        count = f"{last['iter']} iterations, {n} epoch{'' if n == 1 else 's'}"
        unit = result.privacy_unit
        private = experiment.dp_note(result.plan, result.plan.num_examples) + (
            "" if "epsilon" not in last else f", epsilon {last['epsilon']:.3g} for "
            f"{unit['protects']}")
    print(f"{result.data.name}: {count} ({result.status}), train loss "
          f"{last['train_loss']:.4f}, {held.replace('_', ' ')} {last[held]:.4f}{note}"
          f"{private}, {result.seconds:.1f} s -> {args.out}/{outputs}")
    if result.status == "interrupted":
        command = ["functional-bp", "train", "--resume", result.paths["params.npz"],
                   "--out", args.out]
        print(f"resume with: {shlex.join(command)}", file=sys.stderr)
        return 130
    return 0


def run(args, parser=None):
    """Run ``functional-bp train`` with the parsed ``args``; the exit status."""
    if args.recipe == "list":
        return list_recipes()
    try:
        experiment.check_out(args.out)  # before anything slow
        recipe = None if args.recipe is None else _recipe(args, parser)
        config, meta = experiment.run_config(_given(args), resume=args.resume, recipe=recipe)
        if recipe is None and args.resume is None:
            hint = recipes.suggestion(config)
            if hint is not None:
                print(f"note: --recipe {hint.name} reproduces {hint.reproduces} "
                      f"(functional-bp {shlex.join(hint.argv())})", file=sys.stderr)
        result = experiment.train(config, out=args.out, resume=args.resume, metadata=meta,
                                  epochs=args.epochs, steps=args.steps,
                                  save_every=args.save_every, quiet=args.quiet,
                                  devices=args.devices, given=_given(args))
    except ConfigError as e:
        raise UsageError.of(e) from None
    return _report(result, args)
