"""Language models trained by iterations, as nanoGPT and minGPT do: samplers and optimizers.

:func:`functional_bp.train.fit` runs one loop for every way of drawing
batches; the samplers here are nanoGPT's and minGPT's (see
:class:`functional_bp.train.BatchSampler`), with ``unit = "iter"``, and the
private one of a text, by epochs as every private run:

- :class:`RandomWindows` (nanoGPT's ``train.py``): ``max_iters`` steps, step t
  drawing ``batch_size`` random windows of block_size + 1 tokens of the
  training split from ``fold_in(key, t)``
  (:func:`functional_bp.text.random_windows`: x the first block_size, y the
  next token of each); every ``eval_interval`` steps and at the end, the mean
  loss of ``eval_iters`` random batches of each split
  (:func:`functional_bp.text.estimate_loss`). Records
  ``{"iter", "train_loss", "val_loss"}``.
- :class:`RandomProblems` (minGPT's trainer on its sort task): step t draws
  ``batch_size`` rows of the training problems uniformly with replacement
  (minGPT's ``RandomSampler(replacement=True)``); evaluations are the exact
  mean loss over all training and test problems: ``{"iter", "train_loss",
  "test_loss"}``.
- :class:`PoissonBlocks` (private training, ``fit(dp=...)``): the training
  split cut into non-overlapping blocks of block_size + 1 tokens, each block
  one example of :class:`functional_bp.train.PoissonEpochs` (Poisson
  sampling, clipping, noise, the accountant); epochs of round(N / batch_size)
  steps; the estimate of :class:`RandomWindows`. Epsilon protects one block
  (:func:`privacy_unit`).

Each step is the hand-derived gradient of the mean loss over the batch's
scored positions (every example weighs 1/B; :func:`functional_bp.losses.sequence_targets`)
and the optimizer's update (:class:`functional_bp.train.Step`). Everything
random in step t comes from ``fold_in(key, t)`` and in the evaluation at
iteration i from ``fold_in(fold_in(key, EVAL_STREAM), i)``: a run resumed from
any checkpoint repeats the uninterrupted one exactly.

The optimizers (:func:`nanogpt_optimizer`, :func:`mingpt_optimizer`) are
``make_optimizer("adamw", ...)``: optax's ``chain(clip_by_global_norm(c),
adamw(..., mask=matrices))``, so the weight decay falls on the leaves with two
or more axes only (matrices, embeddings), never on biases or LayerNorm gains.

Example (a tiny GPT on a repeated text, 20 iterations)::

    >>> import jax, numpy as np
    >>> from functional_bp import models
    >>> from functional_bp.train import fit, init_state
    >>> tokens = np.tile(np.arange(5, dtype=np.uint16), 40)
    >>> net = models.gpt(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
    >>> opt = nanogpt_optimizer(warmup_iters=2, lr_decay_iters=20)
    >>> state = init_state(net.init(jax.random.key(0), (8,)), optimizer=opt,
    ...                    key=jax.random.key(1))
    >>> sampler = RandomWindows(batch_size=4, block_size=8, max_iters=20, eval_interval=10,
    ...                         eval_iters=2)
    >>> state, history = fit(state, tokens[:150], val=tokens[150:], network=net,
    ...                      loss="softmax_cross_entropy", optimizer=opt, sampler=sampler)
    >>> [r["iter"] for r in history], sorted(history[-1])
    ([0, 10, 20], ['iter', 'train_loss', 'val_loss'])
    >>> history[-1]["train_loss"] < history[0]["train_loss"]
    True
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import privacy
from .layers import Layer
from .losses import example_losses, get_loss, sequence_targets
from .network import forward as network_forward
from .text.batches import estimate_loss, random_windows, text_blocks
from .text.schedule import nanogpt_lr_schedule
from .train import BatchSampler, FitCall, PoissonEpochs, Step, make_optimizer

EVAL_STREAM = 1 << 30
"""Evaluations draw from ``fold_in(key, EVAL_STREAM)``, apart from the steps' ``fold_in(key, t)``."""

NANOGPT = dict(lr=1e-3, warmup_iters=100, min_lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1,
               grad_clip=1.0, eval_interval=250, eval_iters=200)
"""nanoGPT's ``config/train_shakespeare_char.py`` and ``train.py`` defaults for a character run."""

MINGPT = dict(betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0)
"""minGPT's trainer (``mingpt/trainer.py``): AdamW betas, weight decay, gradient clipping."""


def nanogpt_optimizer(learning_rate=NANOGPT["lr"], *, warmup_iters=NANOGPT["warmup_iters"],
                      lr_decay_iters, min_lr=NANOGPT["min_lr"], betas=NANOGPT["betas"],
                      weight_decay=NANOGPT["weight_decay"], grad_clip=NANOGPT["grad_clip"]):
    """nanoGPT's AdamW: :func:`functional_bp.text.nanogpt_lr_schedule`, decay on matrices, clipping.

    ``make_optimizer("adamw", nanogpt_lr_schedule(lr, ...), betas=betas,
    weight_decay=weight_decay, grad_clip=grad_clip)``; ``grad_clip=None``
    turns clipping off (nanoGPT's ``grad_clip=0``).
    """
    schedule = nanogpt_lr_schedule(learning_rate, warmup_iters=warmup_iters,
                                   lr_decay_iters=lr_decay_iters, min_lr=min_lr)
    return make_optimizer("adamw", schedule, betas=betas, weight_decay=weight_decay,
                          grad_clip=grad_clip)


def mingpt_optimizer(learning_rate, *, betas=MINGPT["betas"],
                     weight_decay=MINGPT["weight_decay"], grad_clip=MINGPT["grad_clip"]):
    """minGPT's AdamW: a constant rate, betas (0.9, 0.95), decay 0.1 on matrices, clipping at 1."""
    return make_optimizer("adamw", learning_rate, betas=betas, weight_decay=weight_decay,
                          grad_clip=grad_clip)


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return int(v)


class _Iterations(BatchSampler):
    """``max_iters`` steps of random batches, evaluated every ``eval_interval`` steps and at the end.
    """

    unit = "iter"

    def __init__(self, *, batch_size, max_iters, eval_interval):
        self.batch_size = _positive("batch_size", batch_size)
        self.max_iters = _positive("max_iters", max_iters)
        self.eval_interval = _positive("eval_interval", eval_interval)

    def stops(self, position, length):
        end = self.max_iters if length is None else min(position + int(length), self.max_iters)
        return sorted({*range((position // self.eval_interval + 1) * self.eval_interval, end,
                              self.eval_interval)} | ({end} if end > position else set()))

    def _prepare_model(self, call: FitCall):
        if not isinstance(call.model, Layer):
            raise ValueError(f"{type(self).__name__} trains a network of tokens to logits (e.g. "
                             "models.gpt); pass network=, not activations=")
        if call.l2:
            raise ValueError(f"{type(self).__name__}: l2={call.l2!r}; the weight decay of a "
                             "language model is the optimizer's (nanogpt_optimizer's "
                             "weight_decay, on the matrices only): leave l2 at 0")
        self.model, self.loss = call.model, get_loss(call.loss)
        self.vocab = call.model.output_shape((1,))[-1]
        self.step = Step.of(self.model, self.loss, call.optimizer, call.mesh)
        self.key = call.state.key
        if self.key is None:
            raise ValueError("state.key is None: the batches are drawn from it; make the "
                             "state with init_state(..., key=jax.random.key(seed))")

    def _eval_key(self, position):
        return _eval_key(self.key, position)


def _eval_key(key, position):
    """The key of the evaluation at ``position``, apart from every step's ``fold_in(key, t)``."""
    return jax.random.fold_in(jax.random.fold_in(key, EVAL_STREAM), position)


@partial(jax.jit, static_argnames=("step", "vocab", "batch", "block"))
def _window_steps(params, opt_state, key, steps, tokens, *, step, vocab, batch, block):
    w = jnp.full((batch,), 1.0 / batch, jnp.float32)

    def one(carry, t):
        params, opt_state = carry
        k_batch, k_drop = jax.random.split(jax.random.fold_in(key, t))
        x, y = random_windows(k_batch, tokens, batch_size=batch, block_size=block)
        params, opt_state, J = step(params, opt_state, x, sequence_targets(y, vocab, w.dtype),
                                    w, 0.0, k_drop)
        return (params, opt_state), J

    (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), steps)
    return params, opt_state, losses


@partial(jax.jit, static_argnames=("model", "loss", "vocab"))
def _batch_loss(params, x, y, *, model, loss, vocab):
    """The mean loss of a batch of token sequences, the network in evaluation mode."""
    a = network_forward(model, params, x)[0]
    return jnp.mean(example_losses(loss, a, sequence_targets(y, vocab, a.dtype)))


def _estimate(params, splits, key, *, model, loss, vocab, eval_iters, batch_size, block_size):
    """``{part: {"loss": estimate}}``: nanoGPT's estimate of each split's loss.

    The mean loss of ``eval_iters`` random batches of ``batch_size`` windows
    of each split (:func:`functional_bp.text.estimate_loss`), split i from
    ``fold_in(key, i)``, the network in evaluation mode. The one estimator of
    every text run, private (:class:`PoissonBlocks`) or not
    (:class:`RandomWindows`), so their losses compare.
    """
    loss_fn = partial(_batch_loss, model=model, loss=loss, vocab=vocab)
    return {part: {"loss": estimate_loss(loss_fn, params, tokens, key=jax.random.fold_in(key, i),
                                         eval_iters=eval_iters, batch_size=batch_size,
                                         block_size=block_size)}
            for i, (part, tokens) in enumerate(splits.items())}


def _token_splits(call: FitCall, name, vocab, batch_size, block_size):
    """``{"train": tokens, "val": tokens}`` (the parts given), on the device, checked."""
    if call.test is not None:
        raise ValueError(f"{name} evaluates the training and validation splits: pass the "
                         "validation tokens as val=, not test=")
    splits = {}
    for part, tokens in (("train", call.train), ("val", call.val)):
        if tokens is None:
            continue
        tokens = jnp.asarray(tokens) if hasattr(tokens, "dtype") else tokens
        random_windows(jax.random.key(0), tokens, batch_size=batch_size,
                       block_size=block_size)   # checks the split (named there)
        if int(tokens.max()) >= vocab:
            raise ValueError(f"fit: {part} holds token {int(tokens.max())}, outside the "
                             f"network's vocabulary of {vocab}")
        splits[part] = tokens
    return splits


class RandomWindows(_Iterations):
    """nanoGPT's loop: random windows of a token stream, ``max_iters`` iterations.

    ``fit(state, train_tokens, val=val_tokens, network=..., loss=..., optimizer=...,
    sampler=RandomWindows(...))``: ``train`` and ``val`` are the (n,) integer
    token splits (a :class:`functional_bp.text.CharCorpus`'s ``train`` and ``val``).

    Args:
      batch_size: windows per step (nanoGPT's ``batch_size``).
      block_size: tokens of context (nanoGPT's ``block_size``); the network
        must take (B, block_size) tokens.
      max_iters: the run's iterations; ``fit(epochs=n)`` runs n of them now.
      eval_interval: iterations between evaluations [250].
      eval_iters: batches per split in each evaluation [200].
    """

    def __init__(self, *, batch_size, block_size, max_iters, eval_interval=NANOGPT["eval_interval"],
                 eval_iters=NANOGPT["eval_iters"]):
        super().__init__(batch_size=batch_size, max_iters=max_iters, eval_interval=eval_interval)
        self.block_size = _positive("block_size", block_size)
        self.eval_iters = _positive("eval_iters", eval_iters)

    def prepare(self, call: FitCall) -> None:
        self._prepare_model(call)
        self.splits = _token_splits(call, "RandomWindows", self.vocab, self.batch_size,
                                    self.block_size)
        try:
            out = call.model.output_shape((self.block_size,))
        except (ValueError, TypeError) as e:
            raise ValueError(f"RandomWindows: the network does not take windows of "
                             f"block_size={self.block_size} tokens: {e}") from None
        if len(out) != 2:
            raise ValueError(f"RandomWindows: the network must map tokens (B, T) to logits "
                             f"(B, T, V); it gives (B, {', '.join(map(str, out))})")

    def evaluate(self, params, position):
        return _estimate(params, self.splits, self._eval_key(position), model=self.model,
                         loss=self.loss, vocab=self.vocab, eval_iters=self.eval_iters,
                         batch_size=self.batch_size, block_size=self.block_size)

    def advance(self, params, opt_state, key, start, stop):
        params, opt_state, _ = _window_steps(
            params, opt_state, key, jnp.arange(start, stop), self.splits["train"],
            step=self.step, vocab=self.vocab, batch=self.batch_size, block=self.block_size)
        return params, opt_state, self.evaluate(params, stop)


def privacy_unit(n_tokens: int, block_size: int, what: str = "tokens") -> dict:
    """What epsilon protects in a private text run: one block of ``block_size + 1`` tokens.

    The training split of ``n_tokens`` tokens is cut into
    ``num_blocks = n_tokens // (block_size + 1)`` non-overlapping blocks
    (:func:`functional_bp.text.text_blocks`); the last ``dropped`` tokens are
    not trained on. Each block is one example of the Poisson sampling and of
    the accountant (N = num_blocks), so the (epsilon, delta) guarantee is for
    adding or removing one block. A text of one person that spans k blocks is
    protected by group privacy only (roughly k epsilon), not by epsilon.
    ``what`` names the tokens in the sentence (``"characters"`` for a
    character corpus).

    Example::

        >>> u = privacy_unit(1_003_854, 64)
        >>> u["num_blocks"], u["block_tokens"], u["dropped_tokens"]
        (15443, 65, 59)
        >>> print(u["protects"])  # doctest: +NORMALIZE_WHITESPACE
        one block of 65 consecutive tokens (the training text cut into 15443
        non-overlapping blocks; its last 59 tokens unused); a longer text of one person
        only by group privacy
    """
    T = _positive("block_size", block_size)
    n = int(n_tokens)
    num_blocks, dropped = n // (T + 1), n % (T + 1)
    return {"unit": "block", "block_tokens": T + 1, "num_blocks": num_blocks,
            "dropped_tokens": dropped,
            "protects": f"one block of {T + 1} consecutive {what} (the training text cut into "
                        f"{num_blocks} non-overlapping blocks; its last {dropped} {what} "
                        "unused); a longer text of one person only by group privacy"}


class PoissonBlocks(PoissonEpochs):
    """Private training on a token stream (DP-SGD): Poisson batches of non-overlapping blocks.

    ``fit(state, train_tokens, val=val_tokens, network=..., loss=..., optimizer=...,
    epochs=E, dp=DPConfig(...), sampler=PoissonBlocks(...))``: ``train`` and
    ``val`` are (n,) integer token splits, as for :class:`RandomWindows`.

    The unit of privacy is one block. The training split is cut into
    N = n // (block_size + 1) non-overlapping blocks of block_size + 1 tokens
    (:func:`functional_bp.text.text_blocks`: x = block[:-1], y = block[1:];
    the remainder dropped), and these N blocks are the examples of
    :class:`functional_bp.train.PoissonEpochs`: round(N / batch_size) steps
    per epoch, each sampling every block with probability q = batch_size / N,
    clipping each block's gradient (of its loss, the mean over its block_size
    positions) to the clip norm, adding the noise to the sum and dividing by
    q N (:func:`functional_bp.privacy.private_grad`); the accountant
    counts steps of that q. Overlapping random windows (nanoGPT's) would put
    one character into up to block_size + 1 examples, so that the accountant's
    N and q would misstate the guarantee; they are not used here. Epsilon
    protects one block of block_size + 1 consecutive tokens
    (:func:`privacy_unit`).

    Records are per epoch, as every private run's (``state.epoch`` counts
    epochs, so the checkpoint's DP record is shared): ``{"epoch",
    "train_loss", "val_loss", "iter", "epsilon"}`` at every ``eval_every``-th
    epoch and at the end, ``iter`` = epoch * steps per epoch. The losses are
    the estimate of :class:`RandomWindows` (``eval_iters`` random windows of
    batch_size of each split, from ``fold_in(fold_in(key, EVAL_STREAM),
    epoch)``), so a private run and a non-private one compare.

    Args:
      batch_size: the expected batch size q N (blocks per step on average).
      block_size: tokens of context; the network must take (B, block_size) tokens.
      eval_every: epochs between evaluations [1].
      eval_iters: batches per split in each evaluation [200].

    Example (a tiny GPT on a repeated text, 2 private epochs)::

        >>> import jax, numpy as np
        >>> from functional_bp import models
        >>> from functional_bp.privacy import DPConfig
        >>> from functional_bp.train import fit, init_state
        >>> tokens = np.tile(np.arange(5, dtype=np.uint16), 60)
        >>> net = models.gpt(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
        >>> opt = nanogpt_optimizer(warmup_iters=1, lr_decay_iters=6)
        >>> state = init_state(net.init(jax.random.key(0), (8,)), optimizer=opt,
        ...                    key=jax.random.key(1))
        >>> sampler = PoissonBlocks(batch_size=8, block_size=8, eval_iters=2)
        >>> state, history = fit(state, tokens[:250], val=tokens[250:], network=net,
        ...                      loss="softmax_cross_entropy", optimizer=opt, epochs=2,
        ...                      dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0),
        ...                      sampler=sampler)
        >>> state.dp.num_examples, [(r["epoch"], r["iter"]) for r in history]  # 250 // 9 blocks
        (27, [(0, 0), (1, 3), (2, 6)])
        >>> sorted(history[-1])
        ['epoch', 'epsilon', 'iter', 'train_loss', 'val_loss']
    """

    def __init__(self, *, batch_size, block_size, eval_every=1,
                 eval_iters=NANOGPT["eval_iters"]):
        super().__init__(_positive("batch_size", batch_size))
        self.block_size = _positive("block_size", block_size)
        self.eval_every = _positive("eval_every", eval_every)
        self.eval_iters = _positive("eval_iters", eval_iters)

    def prepare(self, call: FitCall) -> None:
        if not isinstance(call.model, Layer):
            raise ValueError("PoissonBlocks trains a network of tokens to logits (e.g. "
                             "models.gpt); pass network=, not activations=")
        if call.l2:
            raise ValueError(f"PoissonBlocks: l2={call.l2!r}; the weight decay of a language "
                             "model is the optimizer's (nanogpt_optimizer's weight_decay, on "
                             "the matrices only): leave l2 at 0")
        self.vocab = call.model.output_shape((1,))[-1]
        splits = _token_splits(call, "PoissonBlocks", self.vocab, self.batch_size,
                               self.block_size)
        if "train" not in splits:
            raise ValueError("PoissonBlocks: train must be the (n,) training tokens")
        x, y = text_blocks(np.asarray(call.train), self.block_size)
        # The blocks are the examples: PoissonEpochs samples, clips, noises and accounts them.
        super().prepare(call._replace(train=(x, y), val=None, test=None))
        self.data = self.data._replace(sets={})  # evaluated by the text's estimate instead
        self.splits, self.key = splits, call.state.key
        self.steps_per_epoch = privacy.steps_per_epoch(self.dp_plan.num_examples, self.batch)

    def stops(self, position, length):
        ends = super().stops(position, length)   # checks length: epochs, required
        end = position + len(ends)
        return [e for e in ends if e % self.eval_every == 0 or e == end]

    def evaluate(self, params, position):
        return _estimate(params, self.splits, _eval_key(self.key, position),
                         model=self.data.model, loss=self.data.loss, vocab=self.vocab,
                         eval_iters=self.eval_iters, batch_size=self.batch,
                         block_size=self.block_size)

    def advance(self, params, opt_state, key, start, stop):
        params, opt_state, _ = super().advance(params, opt_state, key, start, stop)
        return params, opt_state, self.evaluate(params, stop)

    def extra(self, position):
        return {"iter": position * self.steps_per_epoch, **super().extra(position)}


@partial(jax.jit, static_argnames=("step", "vocab", "batch"))
def _row_steps(params, opt_state, key, steps, x, y, *, step, vocab, batch):
    w = jnp.full((batch,), 1.0 / batch, jnp.float32)

    def one(carry, t):
        params, opt_state = carry
        k_batch, k_drop = jax.random.split(jax.random.fold_in(key, t))
        rows = jax.random.randint(k_batch, (batch,), 0, x.shape[0])
        params, opt_state, J = step(params, opt_state, x[rows],
                                    sequence_targets(y[rows], vocab, w.dtype), w, 0.0, k_drop)
        return (params, opt_state), J

    (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), steps)
    return params, opt_state, losses


class RandomProblems(_Iterations):
    """minGPT's loop on fixed sequences: random rows, ``max_iters`` iterations.

    ``fit(state, (x, y), (x_test, y_test), network=..., sampler=RandomProblems(...))``
    with x (m, T) int tokens and y (m, T) int labels, -1 where not scored
    (:func:`functional_bp.text.sort_problems`). Step t trains on
    ``batch_size`` rows drawn uniformly with replacement; each evaluation is
    the exact mean loss over every row of each part given.
    """

    def prepare(self, call: FitCall) -> None:
        self._prepare_model(call)
        self.parts = {}
        for part in ("train", "val", "test"):
            data = getattr(call, part)
            if data is None:
                continue
            x, y = (np.asarray(a) for a in data)
            if x.ndim != 2 or y.shape != x.shape or not (
                    np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
                raise ValueError(f"fit: {part} must be integer tokens x (m, T) and labels y "
                                 f"(m, T); got x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")
            if x.min() < 0 or x.max() >= self.vocab or y.min() < -1 or y.max() >= self.vocab:
                raise ValueError(f"fit: {part}: tokens must be in [0, {self.vocab}) and labels "
                                 f"in [0, {self.vocab}) or -1 (not scored)")
            self.parts[part] = (jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32))

    def evaluate(self, params, position):
        return {part: {"loss": _batch_loss(params, x, y, model=self.model, loss=self.loss,
                                           vocab=self.vocab)}
                for part, (x, y) in self.parts.items()}

    def advance(self, params, opt_state, key, start, stop):
        x, y = self.parts["train"]
        params, opt_state, _ = _row_steps(params, opt_state, key, jnp.arange(start, stop), x, y,
                                          step=self.step, vocab=self.vocab,
                                          batch=self.batch_size)
        return params, opt_state, self.evaluate(params, stop)
