"""fit's one loop with a batch sampler as the part that varies; the optimizer's options.

A third sampler is written here, outside the library, the way nanoGPT's loop
draws its batches (random draws for a fixed number of iterations, evaluation
every ``eval_interval`` steps on both splits from ``eval_iters`` random
batches): it plugs into ``fit`` with no change to the loop, and gets the
records, the callback, checkpoints and exact resume that every run gets.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp.train import (BatchSampler, FitCall, ShuffledEpochs, Step, fit, init_state,
                                 load_state, make_optimizer, matrices, save_state, sgd)

from helpers import assert_tree_close, rtol_for

optax = pytest.importorskip("optax")

ACTS = ("tanh", "identity")
LOSS = "softmax_cross_entropy"


def _data(n=96, n_in=4, classes=3, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, n_in))
    return x, jnp.argmax(x[:, :classes], axis=1)


def _state(opt, seed=1):
    params = fbp.init_mlp(jax.random.key(seed), [4, 8, 3])
    return init_state(params, optimizer=opt, key=jax.random.key(seed + 7))


class RandomIterations(BatchSampler):
    """nanoGPT's loop on example arrays: ``max_iters`` steps of ``batch_size`` random rows.

    Step t draws its rows from ``fold_in(key, t)``; every ``eval_interval``
    steps (and at ``max_iters``) the mean loss over ``eval_iters`` random
    batches of each split is recorded.
    """

    unit = "iter"

    def __init__(self, *, batch_size, max_iters, eval_interval, eval_iters):
        self.batch_size, self.max_iters = batch_size, max_iters
        self.eval_interval, self.eval_iters = eval_interval, eval_iters

    def prepare(self, call: FitCall) -> None:
        d = call.arrays()  # the checks every example-array sampler shares
        self.step = Step.of(d.model, d.loss, call.optimizer, call.mesh)
        self.splits = {part: (x, y) for part, (x, y, _) in d.sets.items()}
        self.l2 = call.l2
        self.key = call.state.key

    def stops(self, position, length):
        end = self.max_iters if length is None else min(position + length, self.max_iters)
        return sorted({*range(position + self.eval_interval, end, self.eval_interval)}
                      | ({end} if end > position else set()))

    def evaluate(self, params, position):
        return _estimate(params, self.splits, jax.random.fold_in(jax.random.fold_in(self.key, 10**6), position),
                         step=self.step, batch=self.batch_size, iters=self.eval_iters)

    def advance(self, params, opt_state, key, start, stop):
        x, y = self.splits["train"]
        params, opt_state = _iterations(params, opt_state, key, jnp.arange(start, stop), x, y,
                                        self.l2, step=self.step, batch=self.batch_size)
        return params, opt_state, self.evaluate(params, stop)


@partial(jax.jit, static_argnames=("step", "batch"))
def _iterations(params, opt_state, key, steps, x, y, l2, *, step, batch):
    w = jnp.full((batch,), 1.0 / batch, y.dtype)

    def one(carry, t):
        params, opt_state = carry
        rows = jax.random.randint(jax.random.fold_in(key, t), (batch,), 0, x.shape[0])
        params, opt_state, J = step(params, opt_state, x[rows], y[rows], w, l2)
        return (params, opt_state), J

    (params, opt_state), _ = jax.lax.scan(one, (params, opt_state), steps)
    return params, opt_state


@partial(jax.jit, static_argnames=("step", "batch", "iters"))
def _estimate(params, splits, key, *, step, batch, iters):
    out = {}
    for i, (part, (x, y)) in enumerate(sorted(splits.items())):
        rows = jax.random.randint(jax.random.fold_in(key, i), (iters * batch,), 0, x.shape[0])
        a = fbp.forward(params, x[rows], activations=step.model)
        out[part] = {"loss": jnp.mean(step.loss.value(a, y[rows]))}
    return out


def _sampler():
    return RandomIterations(batch_size=8, max_iters=40, eval_interval=10, eval_iters=3)


def test_a_third_sampler_plugs_into_fit_with_records_at_its_evaluations():
    x, y = _data()
    opt = sgd(0.3)
    seen = []
    state, history = fit(_state(opt), (x, y), val=(x[:32], y[:32]), activations=ACTS,
                         loss=LOSS, optimizer=opt, sampler=_sampler(),
                         callback=lambda r, state: seen.append((r["iter"], state.epoch)))
    assert [r["iter"] for r in history] == [0, 10, 20, 30, 40] == [s for s, _ in seen]
    assert [e for _, e in seen] == [0, 10, 20, 30, 40] and state.epoch == 40
    assert set(history[-1]) == {"iter", "train_loss", "val_loss"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_the_third_sampler_resumes_exactly_through_a_checkpoint(tmp_path):
    x, y = _data()
    opt = make_optimizer("adamw", 1e-2, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)
    full, history = fit(_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                        sampler=_sampler())
    half, first = fit(_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                      epochs=20, sampler=_sampler())
    assert half.epoch == 20 and [r["iter"] for r in first] == [0, 10, 20]
    save_state(tmp_path / "run.npz", half, activations=list(ACTS), loss=LOSS)
    resumed, _ = load_state(tmp_path / "run.npz", optimizer=opt)
    resumed, rest = fit(resumed, (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                        sampler=_sampler())
    assert [r["iter"] for r in rest] == [30, 40] and resumed.epoch == 40
    for u, v in zip(jax.tree_util.tree_leaves(resumed.params),
                    jax.tree_util.tree_leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert rest == history[3:]


def test_the_default_sampler_is_the_shuffled_epochs_of_batch_size():
    x, y = _data()
    opt = sgd(0.3)
    a, ha = fit(_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=3,
                batch_size=16)
    b, hb = fit(_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=3,
                sampler=ShuffledEpochs(16))
    assert ha == hb and [r["epoch"] for r in ha] == [0, 1, 2, 3]
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_sampler_misuse_is_refused():
    x, y = _data()
    opt = sgd(0.3)
    kw = dict(activations=ACTS, loss=LOSS, optimizer=opt)
    with pytest.raises(ValueError, match="give the batch size to the sampler"):
        fit(_state(opt), (x, y), **kw, epochs=1, batch_size=8, sampler=ShuffledEpochs(8))
    with pytest.raises(ValueError, match="dp= needs a private sampler"):
        fit(_state(opt), (x, y), **kw, sampler=_sampler(),
            dp=fbp.privacy.DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    with pytest.raises(ValueError, match="epochs must be a non-negative integer; got None"):
        fit(_state(opt), (x, y), **kw)


def test_a_private_state_is_not_continued_by_a_non_private_sampler():
    pytest.importorskip("dp_accounting")
    x, y = _data()
    opt = sgd(0.3)
    kw = dict(activations=ACTS, loss=LOSS, optimizer=opt)
    state, _ = fit(_state(opt), (x, y), **kw, epochs=1, batch_size=16,
                   dp=fbp.privacy.DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    with pytest.raises(ValueError, match="comes from a private run"):
        fit(state, (x, y), **kw, sampler=_sampler())


# ----------------------------------------------------------------- the optimizer's options

def test_adamw_decays_only_the_leaves_with_two_or_more_axes():
    params = [{"W": jnp.full((3, 4), 2.0), "b": jnp.full((4,), 2.0)},
              {"W": jnp.full((2, 3, 4), -1.0), "scale": jnp.full((4,), 3.0)}]
    lr, wd = 0.1, 0.5
    opt = make_optimizer("adamw", lr, weight_decay=wd)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)
    expected = jax.tree.map(lambda p, m: -lr * wd * p if m else jnp.zeros_like(p), params,
                            matrices(params))
    assert_tree_close(updates, expected, rtol_for(jnp.float32))
    assert float(jnp.abs(updates[0]["b"]).max()) == 0 == float(jnp.abs(updates[1]["scale"]).max())
    assert float(jnp.abs(updates[1]["W"]).max()) > 0  # a 3-axis kernel is decayed


def test_grad_clip_scales_the_gradient_to_the_global_norm():
    params = [{"W": jnp.ones((2, 2)), "b": jnp.ones(2)}]
    g = [{"W": jnp.array([[3.0, 0.0], [0.0, 0.0]]), "b": jnp.array([0.0, 4.0])}]  # norm 5
    opt = make_optimizer("sgd", 1.0, grad_clip=1.0)
    updates, _ = opt.update(g, opt.init(params), params)
    assert_tree_close(updates, jax.tree.map(lambda a: -a / 5.0, g), rtol_for(jnp.float32))
    small = jax.tree.map(lambda a: a / 10, g)  # norm 0.5: unchanged
    updates, _ = opt.update(small, opt.init(params), params)
    assert_tree_close(updates, jax.tree.map(lambda a: -a, small), rtol_for(jnp.float32))


def test_adamw_with_clipping_equals_the_optax_chain_written_out():
    x, y = _data()
    ours = make_optimizer("adamw", 1e-2, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)
    theirs = optax.chain(optax.clip_by_global_norm(1.0),
                         optax.adamw(1e-2, b1=0.9, b2=0.99, weight_decay=0.1,
                                     mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))
    a, _ = fit(_state(ours), (x, y), activations=ACTS, loss=LOSS, optimizer=ours, epochs=2,
               batch_size=16)
    b, _ = fit(_state(theirs), (x, y), activations=ACTS, loss=LOSS, optimizer=theirs,
               epochs=2, batch_size=16)
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="adam", weight_decay=0.1), "is for 'adamw'"),
    (dict(name="adamw", weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
    (dict(name="adamw", grad_clip=0.0), "grad_clip must be a finite number > 0"),
    (dict(name="adamw", grad_clip=float("inf")), "grad_clip must be a finite number > 0"),
    (dict(name="adamw", betas=(0.9, 1.0)), "betas must be two numbers in"),
])
def test_optimizer_options_are_checked(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, 1e-3, **kwargs)
