"""Language models trained by iterations, as nanoGPT and minGPT do: samplers and optimizers.

:func:`functional_bp.train.fit` runs one loop for every way of drawing
batches; the samplers here are nanoGPT's and minGPT's (see
:class:`functional_bp.train.BatchSampler`), with ``unit = "iter"``:

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

from .layers import Layer
from .losses import example_losses, get_loss, sequence_targets
from .network import forward as network_forward
from .text.batches import estimate_loss, random_windows
from .text.schedule import nanogpt_lr_schedule
from .train import BatchSampler, FitCall, Step, make_optimizer

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
        return jax.random.fold_in(jax.random.fold_in(self.key, EVAL_STREAM), position)


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
        if call.test is not None:
            raise ValueError("RandomWindows evaluates the training and validation splits: pass "
                             "the validation tokens as val=, not test=")
        self.splits = {}
        for part, tokens in (("train", call.train), ("val", call.val)):
            if tokens is None:
                continue
            tokens = jnp.asarray(tokens) if hasattr(tokens, "dtype") else tokens
            random_windows(jax.random.key(0), tokens, batch_size=self.batch_size,
                           block_size=self.block_size)   # checks the split (named there)
            if int(tokens.max()) >= self.vocab:
                raise ValueError(f"fit: {part} holds token {int(tokens.max())}, outside the "
                                 f"network's vocabulary of {self.vocab}")
            self.splits[part] = tokens
        try:
            out = call.model.output_shape((self.block_size,))
        except (ValueError, TypeError) as e:
            raise ValueError(f"RandomWindows: the network does not take windows of "
                             f"block_size={self.block_size} tokens: {e}") from None
        if len(out) != 2:
            raise ValueError(f"RandomWindows: the network must map tokens (B, T) to logits "
                             f"(B, T, V); it gives (B, {', '.join(map(str, out))})")

    def evaluate(self, params, position):
        loss_fn = partial(_batch_loss, model=self.model, loss=self.loss, vocab=self.vocab)
        key = self._eval_key(position)
        return {part: {"loss": estimate_loss(loss_fn, params, tokens,
                                             key=jax.random.fold_in(key, i),
                                             eval_iters=self.eval_iters,
                                             batch_size=self.batch_size,
                                             block_size=self.block_size)}
                for i, (part, tokens) in enumerate(self.splits.items())}

    def advance(self, params, opt_state, key, start, stop):
        params, opt_state, _ = _window_steps(
            params, opt_state, key, jnp.arange(start, stop), self.splits["train"],
            step=self.step, vocab=self.vocab, batch=self.batch_size, block=self.block_size)
        return params, opt_state, self.evaluate(params, stop)


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
