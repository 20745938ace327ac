"""A language-model run from a configuration: ``functional-bp train`` on ``text:PATH`` or ``sort``.

:func:`functional_bp.experiment.train` hands token data here. The run is
:func:`functional_bp.train.fit` with an iteration sampler
(:class:`functional_bp.lm.RandomWindows` for a text,
:class:`functional_bp.lm.RandomProblems` for minGPT's sort task), the same
checkpoint format (:func:`functional_bp.train.save_state`, the vocabulary in
its metadata), Ctrl-C saving and exact resume as every run:

- text (nanoGPT's defaults, ``config/train_shakespeare_char.py`` and
  ``train.py``): AdamW (betas 0.9, 0.99; weight decay 0.1 on the matrices),
  gradient clipping at global norm 1, learning rate 1e-3 with 100 warm-up
  iterations and a cosine to ``min_lr`` 1e-4 at ``lr_decay_iters``
  [``max_iters``], evaluation every 250 iterations from 200 batches of each
  split, ``max_iters`` 5000;
- sort (minGPT's trainer): AdamW (betas 0.9, 0.95; weight decay 0.1),
  clipping at 1, a constant rate, ``max_iters`` 2000; ``test_accuracy`` is
  :func:`functional_bp.text.sort_accuracy` after the run.
- a private text run (``--dp-clip C`` with ``--dp-noise`` or ``--dp-epsilon``):
  :class:`functional_bp.lm.PoissonBlocks` with ``fit(dp=...)``. The examples
  are the N non-overlapping blocks of block_size + 1 characters of the
  training split, so epsilon protects one block
  (:func:`functional_bp.lm.privacy_unit`; delta by default the largest power
  of ten <= 1/(10 N)). The run is whole epochs of round(N / batch_size)
  steps: ``max_iters`` is rounded up to them (said on stderr; with it
  ``lr_decay_iters`` when that was ``max_iters``), evaluations come every
  max(1, round(eval_interval / steps per epoch)) epochs and at the end, by the
  same estimate as the non-private run; the same optimizer and schedule, one
  optimizer step per private step. A model with Dropout is refused (the
  private step runs without masks), as is the sort task.

Writes into ``out``: ``params.npz`` and ``metrics.json`` at every evaluation
(and when stopped), ``best.npz`` (text: the evaluation with the lowest
validation loss), ``curves.png`` at the end. ``metrics.json`` holds
``evals`` (the records ``{"iter", "train_loss", "val_loss"}``, or
``test_loss`` for sort; a private run's also ``epoch`` and ``epsilon``), the
final ``train_loss`` and ``val_loss``, a private run's ``dp`` (its plan, steps
and epsilon, as in the checkpoint) and ``privacy_unit``,
``train_seconds`` (the wall time of the training loop, compilation and
evaluations included, as nanoGPT's times are; a resumed run adds its time to
the checkpoint's), and for sort
``test_accuracy``.
"""

from __future__ import annotations

import math
import os
import sys
import time

from . import experiment
from .experiment import ConfigError, RunResult

TEXT_DEFAULTS = dict(max_iters=5000, eval_interval=250, eval_iters=200, warmup_iters=100,
                     min_lr=1e-4, grad_clip=1.0, weight_decay=0.1)
"""A text run's defaults (nanoGPT's Shakespeare configuration); lr_decay_iters = max_iters."""
SORT_DEFAULTS = dict(max_iters=2000, eval_interval=250, grad_clip=1.0, weight_decay=0.1)
"""A sort run's defaults (minGPT's demo and trainer)."""
NOT_FOR_TOKENS = {"hidden": None, "activation": None, "init": None, "schedule": "constant",
                  "l2": 0.0, "val_fraction": None, "test_fraction": None, "test_data": None,
                  "patience": None, "warmup_steps": None,
                  "output_activation": "identity", "loss": None, "momentum": 0.9}
"""Settings of example-array runs that a language-model run does not take (their neutral value)."""


def is_token_run(config) -> bool:
    """Whether ``config["data"]`` is token data (``sort`` or ``text:PATH``)."""
    from .datasets import is_token_data

    return is_token_data(config["data"])


def _settings(config, given, text):
    """Fill the language model's settings into ``config``; refuse the ones that do not apply."""
    for k, neutral in NOT_FOR_TOKENS.items():
        if k in given and given[k] != neutral:
            raise ConfigError(k, f"does not apply to a language-model run on {config['data']!r} "
                              "(iterations of random batches, nanoGPT's or minGPT's AdamW): "
                              f"drop --{k.replace('_', '-')}")
    if config["optimizer"] not in ("adam", "adamw"):
        raise ConfigError("optimizer", "a language-model run uses AdamW (nanoGPT's or "
                          "minGPT's settings): drop --optimizer")
    config["optimizer"] = "adamw"
    defaults = TEXT_DEFAULTS if text else SORT_DEFAULTS
    for k, v in defaults.items():
        if config.get(k) is None:
            config[k] = v
    if text:
        if config["lr_decay_iters"] is None:
            config["lr_decay_iters"] = config["max_iters"]
        if not config["warmup_iters"] < config["lr_decay_iters"]:
            raise ConfigError("warmup_iters", f"{config['warmup_iters']} warm-up iterations, "
                              f"not fewer than --lr-decay-iters {config['lr_decay_iters']} "
                              "(the cosine "
                              "decay runs between them): give a smaller --warmup-iters")
    else:
        for k in ("lr_decay_iters", "min_lr", "warmup_iters", "eval_iters"):
            if config.get(k) is not None:
                raise ConfigError(k, "applies to a text run (nanoGPT's schedule and estimate); "
                                  "the sort task runs minGPT's constant rate and exact "
                                  f"evaluation: drop --{k.replace('_', '-')}")
    if config["model"] is None:
        raise ConfigError("model", f"{config['data']!r} trains a GPT: give --model, e.g. "
                          "--model \"gpt n_layer=4 n_head=4 n_embd=128\"")
    dp_given = [k for k in ("dp_clip", "dp_noise", "dp_epsilon", "dp_delta") if config[k]
                is not None]
    if not text and dp_given:
        raise ConfigError(dp_given[0], "private training of a language model is offered on a "
                          "text (--data text:PATH, one block of characters per example); the "
                          f"sort task has none: drop --{dp_given[0].replace('_', '-')}")
    experiment.dp_config(config)  # the noise, epsilon or delta only with --dp-clip


def optimizer(config):
    """The run's AdamW (:func:`functional_bp.lm.nanogpt_optimizer` or ``mingpt_optimizer``)."""
    from .lm import mingpt_optimizer, nanogpt_optimizer

    clip = config["grad_clip"] or None
    try:
        if config["data"] == "sort":
            return mingpt_optimizer(config["lr"], weight_decay=config["weight_decay"],
                                    grad_clip=clip)
        return nanogpt_optimizer(config["lr"], warmup_iters=config["warmup_iters"],
                                 lr_decay_iters=config["lr_decay_iters"],
                                 min_lr=config["min_lr"], weight_decay=config["weight_decay"],
                                 grad_clip=clip)
    except ValueError as e:
        raise ConfigError("lr", str(e)) from None


def model_text(text, block_size):
    """A ``gpt`` model text with ``block_size=`` added when not given (the data's, for sort)."""
    words = text.split()
    if block_size is None or not words or words[0].lower() != "gpt" \
            or any(w.startswith("block_size=") for w in words[1:]):
        return text
    return f"{text} block_size={block_size}"


def _network(config, vocab, block, resume, meta):
    from .layers import from_config
    from .models import build

    if meta is not None:
        try:
            return from_config(meta["network"])
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError("resume", f"{resume}: the recorded network cannot be rebuilt: "
                              f"{e}") from None
    text = model_text(config["model"], block)
    try:
        net = build(text, vocab)
    except (ValueError, TypeError) as e:
        raise ConfigError("model", str(e)) from None
    from .text import window_length

    try:
        T = window_length(net) if block is None else block
        out = tuple(net.output_shape((T,)))
    except (ValueError, TypeError) as e:
        raise ConfigError("model", f"{text!r} does not take token windows: {e}") from None
    if out != (T, vocab):
        raise ConfigError("model", f"{text!r} maps {T} tokens to shape {out}; the data need "
                          f"logits ({T}, {vocab}) (a vocabulary of {vocab})")
    return net


def _private(config, data, net, block, given, new):
    """A private text run's parts: ``(DPConfig, PoissonBlocks, unit, steps per epoch, epochs)``.

    The examples are the N non-overlapping blocks of ``block + 1`` characters
    of the training split (:func:`functional_bp.lm.privacy_unit`); the run is
    whole epochs of round(N / batch size) steps, so a new run's ``max_iters``
    is rounded up to whole epochs (said on stderr; ``lr_decay_iters``
    follows it when it was ``max_iters``), and the run evaluates every
    max(1, round(eval_interval / steps per epoch)) epochs and at the end.
    """
    from .lm import PoissonBlocks, privacy_unit
    from .privacy import steps_per_epoch

    if experiment.has_dropout(net):
        raise ConfigError("dp_clip", f"--model {config['model']!r} has Dropout, which private "
                          "training does not support (the private step runs the network "
                          "without dropout masks, so it would train another model): give "
                          "dropout=0 in --model, or drop --dp-clip")
    dp = experiment.dp_config(config)
    unit = privacy_unit(len(data.train), block, what="characters")
    n = unit["num_blocks"]
    spe = steps_per_epoch(n, min(config["batch_size"], n))
    asked = config["max_iters"]
    if new and asked % spe:
        epochs = -(-asked // spe)
        print(f"--max-iters {asked}: a private run trains whole epochs of round(N / batch "
              f"size) = {spe} steps (N = {n} blocks of {block + 1} characters): rounded up "
              f"to {epochs} epochs = {epochs * spe} iterations", file=sys.stderr)
        if config["lr_decay_iters"] == asked and "lr_decay_iters" not in given:
            config["lr_decay_iters"] = epochs * spe
        config["max_iters"] = epochs * spe
    elif asked % spe:
        raise ConfigError("resume", f"the resumed run's max_iters {asked} is not a whole number "
                          f"of its private epochs of {spe} steps: the checkpoint was not "
                          "written by a private text run")
    sampler = PoissonBlocks(batch_size=config["batch_size"], block_size=block,
                            eval_every=max(1, round(config["eval_interval"] / spe)),
                            eval_iters=config["eval_iters"])
    return dp, sampler, unit, spe, config["max_iters"] // spe


def _bar(total, start, quiet):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if quiet:
        return None
    return tqdm(total=total, initial=start, desc="train", unit="iter", file=sys.stderr,
                dynamic_ncols=True)


def train(config, *, out, resume=None, metadata=None, quiet=False, given=()):
    """Run the language-model job of ``config`` into ``out`` (see the module docstring)."""
    import jax

    from . import __version__
    from .checkpoint import CheckpointError, write_json_atomically
    from .layers import to_config
    from .privacy import checkpoint_metadata
    from .lm import RandomProblems, RandomWindows
    from .text import CharCorpus, sort_accuracy, window_length
    from .train import EarlyStopping, fit, init_state, load_state, save_state

    t_start = time.perf_counter()
    config = dict(config)
    given = {k: config[k] for k in given if k in config}
    text = config["data"] != "sort"
    if metadata is None:
        _settings(config, given, text)
    private = config["dp_clip"] is not None
    dp = unit = epochs = None
    spe = 1  # iterations per state.epoch: a private run counts epochs

    def iters(st):
        return st.epoch * spe
    data = experiment.load_data(config)
    if text:
        assert isinstance(data, CharCorpus)
        vocab, vocab_size = data.vocab, data.vocab_size
        net = _network(config, vocab_size, None, resume, metadata)
        block = window_length(net)
        try:
            data.check_block(block)
        except ValueError as e:
            raise ConfigError("data", str(e)) from None
        if private:
            dp, sampler, unit, spe, epochs = _private(config, data, net, block, given,
                                                      metadata is None)
        else:
            sampler = RandomWindows(batch_size=config["batch_size"], block_size=block,
                                    max_iters=config["max_iters"],
                                    eval_interval=config["eval_interval"],
                                    eval_iters=config["eval_iters"])
        parts = dict(train=data.train, val=data.val)
        dataset = {"name": data.name, "vocab_size": vocab_size, "n_train": len(data.train),
                   "n_val": len(data.val)}
    else:
        vocab, vocab_size, block = None, data.n_classes, data.x_train.shape[1]
        net = _network(config, vocab_size, block, resume, metadata)
        sampler = RandomProblems(batch_size=config["batch_size"], max_iters=config["max_iters"],
                                 eval_interval=config["eval_interval"])
        parts = dict(train=(data.x_train, data.y_train), test=(data.x_test, data.y_test))
        dataset = {"name": data.name, "vocab_size": vocab_size, "n_train": len(data.x_train),
                   "n_test": len(data.x_test)}
    opt = optimizer(config)
    if resume is None:
        k_init, k_run = jax.random.split(jax.random.key(config["seed"]))
        state = init_state(net.init(k_init, (block,)), optimizer=opt, key=k_run)
        history, before = [], 0.0
    else:
        try:
            state, meta = load_state(resume, optimizer=opt)
        except (OSError, CheckpointError) as e:
            raise ConfigError("resume", str(e)) from None
        history = list(meta.get("history", []))
        before = float(meta.get("train_seconds", 0.0))  # the loop's time before the resume
    plan = None if dp is None else experiment.dp_plan(
        dp, state, unit["num_blocks"], config["batch_size"], epochs - state.epoch,
        resume is not None)
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, k) for k in
             ("params.npz", "best.npz", "metrics.json", "curves.png")}
    stopper = EarlyStopping(None) if text else None
    if stopper is not None and history:
        best = min(history, key=lambda r: r["val_loss"])
        try:
            best_state, _ = load_state(paths["best.npz"] if resume is None else os.path.join(
                os.path.dirname(os.path.abspath(resume)), "best.npz"), optimizer=opt)
            if iters(best_state) == best["iter"]:
                stopper.best_state, stopper.best_record = best_state, dict(best)
        except (OSError, CheckpointError):
            pass
    run = {"history": history, "good": state, "diverged": None, "seconds": 0.0,
           "saved_best": None, "accuracy": None}
    meta_common = {"config": config, "input_shape": [block], "vocab": vocab}

    def write(path, st, records):
        save_state(path, st, network=net, loss="softmax_cross_entropy",
                   metadata={**meta_common, "history": experiment.json_safe(records),
                             "train_seconds": before + run["seconds"]})

    def metrics(st, status):
        final = run["history"][-1]
        return experiment.json_safe({
            "version": __version__, "status": status,
            "config": {**config, "loss": "softmax_cross_entropy", "iters": iters(st),
                       **({} if plan is None else {"epochs": st.epoch})},
            "network": to_config(net),
            "n_params": sum(int(a.size) for a in jax.tree_util.tree_leaves(st.params)),
            "dataset": dataset, "evals": run["history"], "iter": final["iter"],
            "train_loss": final.get("train_loss"), "val_loss": final.get("val_loss"),
            "test_loss": final.get("test_loss"), "test_accuracy": run["accuracy"],
            "best_iter": None if stopper is None or stopper.best_record is None
            else stopper.best_record["iter"],
            "train_seconds": round(before + run["seconds"], 3), "resumed_from": resume,
            "dp": None if plan is None else checkpoint_metadata(plan, st.epoch),
            "privacy_unit": unit,
        })

    def save(st, status):
        write(paths["params.npz"], st, [r for r in run["history"] if r["iter"] <= iters(st)])
        best = None if stopper is None else stopper.best_record
        if best is not None and run["saved_best"] != best["iter"]:
            write(paths["best.npz"], stopper.best_state,
                  [r for r in run["history"] if r["iter"] <= best["iter"]])
            run["saved_best"] = best["iter"]
        write_json_atomically(paths["metrics.json"], metrics(st, status))

    start = iters(state)
    bar = _bar(config["max_iters"], start, quiet)
    clock = {"iter": start, "t": time.perf_counter()}

    def on_eval(record, state):
        now = time.perf_counter()
        run["history"].append(record)
        if record["iter"] > clock["iter"]:
            ms = 1e3 * (now - clock["t"]) / (record["iter"] - clock["iter"])
            if bar is not None:
                bar.update(record["iter"] - clock["iter"])
                bar.set_postfix_str(f"loss {record['train_loss']:.4f}"
                                    + (f", val {record['val_loss']:.4f}" if text else
                                       f", test {record['test_loss']:.4f}")
                                    + f", {ms:.1f} ms/iter")
        if not all(math.isfinite(v) for k, v in record.items() if k.endswith("_loss")):
            run["diverged"] = record
            return True
        run["good"] = state
        if stopper is not None:
            stopper(record, state)
        run["seconds"] += now - clock["t"]
        if record["iter"] > start:
            save(state, "running")
        clock.update(iter=record["iter"], t=time.perf_counter())
        return interrupt.requested

    with experiment.Interrupt() as interrupt:
        clock["t"] = time.perf_counter()
        state, _ = fit(state, parts["train"], parts.get("test"), val=parts.get("val"),
                       network=net, loss="softmax_cross_entropy", optimizer=opt,
                       sampler=sampler, callback=on_eval, dp=dp,
                       epochs=None if dp is None else epochs - state.epoch)
    if bar is not None:
        bar.close()
    if run["diverged"] is not None:
        status, state = "diverged", run["good"]
    else:
        status = ("interrupted" if interrupt.requested and iters(state) < config["max_iters"]
                  else "finished")
    if not text and status == "finished":
        forward = jax.jit(lambda p, t: net.forward(p, t)[0])
        run["accuracy"] = sort_accuracy(forward, state.params, data.x_test, data.y_test)
    save(state, status)
    experiment.plot_curves(run["history"], paths["curves.png"],
                           title=f"{data.name}: --model {config['model']}, batch "
                           f"{config['batch_size']}")
    return RunResult(status, state, run["history"],
                     None if stopper is None else stopper.best_record, data, config, plan,
                     paths, config["max_iters"], run["diverged"], run["seconds"], unit)
