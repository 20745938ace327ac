"""Nothing silent in the privacy record: an edited checkpoint record, a weighted mask, a
hand-made plan, Dropout in the private step.

Each test fails on the code before these checks: there the edited record
resumed with a lower epsilon, weights of 5 and -1 ran, edited plans were
used as given, and private_grad ran a Dropout network without its masks.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp import privacy
from functional_bp.checkpoint import CheckpointError
from functional_bp.privacy import DPConfig, DPPlan
from functional_bp.train import fit, init_state, load_state, save_state, sgd

from helpers import assert_tree_close, rtol_for

pytest.importorskip("dp_accounting")

ACTS = ("relu", "identity")
LOSS = "softmax_cross_entropy"
N, B = 120, 12  # 10 private steps per epoch


def _data(n=N, n_in=5, classes=3):
    kx, ky = jax.random.split(jax.random.key(0))
    return 2.0 * jax.random.normal(kx, (n, n_in)), jax.random.randint(ky, (n,), 0, classes)


def _plan(**kw):
    return DPConfig(clip_norm=1.0, noise_multiplier=1.0, **kw).plan(
        num_examples=N, batch_size=B, steps=30)


# ----------------------------------------------------------------- the checkpoint's DP record

@pytest.fixture(scope="module")
def private_checkpoint(tmp_path_factory):
    """A private run of 3 epochs (30 steps, sigma 1) saved with its history."""
    x, y = _data()
    opt = sgd(0.1)
    state = init_state(fbp.init_mlp(jax.random.key(1), [5, 8, 3]), optimizer=opt,
                       key=jax.random.key(2))
    state, history = fit(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=3,
                         batch_size=B, dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    path = tmp_path_factory.mktemp("dp") / "params.npz"
    save_state(path, state, activations=list(ACTS), loss=LOSS, metadata={"history": history})
    return path, opt


def _edited(path, tmp_path, edit):
    """A copy of the checkpoint at ``path`` whose metadata went through ``edit(meta)``."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["__meta__"]))
    edit(meta)
    arrays["__meta__"] = np.array(json.dumps(meta))
    out = tmp_path / "edited.npz"
    np.savez(out, **arrays)
    return out


def test_an_unedited_private_checkpoint_loads_with_its_plan(private_checkpoint):
    path, opt = private_checkpoint
    state, meta = load_state(path, optimizer=opt)
    assert state.dp.noise_multiplier == 1.0 and meta["dp"]["steps"] == 30
    assert meta["dp"]["epsilon"] == pytest.approx(state.dp.epsilon(30), rel=1e-12)


def test_a_raised_noise_multiplier_in_the_record_is_refused_at_load(private_checkpoint,
                                                                    tmp_path):
    path, opt = private_checkpoint

    def raise_sigma(meta):
        meta["dp"]["plan"]["noise_multiplier"] = 5.0

    edited = _edited(path, tmp_path, raise_sigma)
    honest = privacy.epsilon(30, sampling_probability=B / N, noise_multiplier=1.0, delta=1e-4)
    claimed = privacy.epsilon(30, sampling_probability=B / N, noise_multiplier=5.0, delta=1e-4)
    assert claimed < honest / 3  # what resuming from the edit would have reported
    with pytest.raises(CheckpointError, match=r"does not add up .*recorded epsilon is "
                                              r"[0-9.]+, but .*sigma 5"):
        load_state(edited, optimizer=opt)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["dp"].__setitem__("epsilon", m["dp"]["epsilon"] / 2), "recorded epsilon"),
    (lambda m: m["dp"].pop("epsilon"), "recorded epsilon is None"),
    (lambda m: (m["dp"]["plan"].__setitem__("noise_multiplier", 5.0),
                m["dp"].__setitem__("epsilon", privacy.epsilon(
                    30, sampling_probability=B / N, noise_multiplier=5.0, delta=1e-4))),
     "epsilon of epoch 1 in the history"),
    (lambda m: m["dp"]["plan"].__setitem__("accountant", None), "invalid DPPlan"),
    (lambda m: m["dp"]["plan"].__setitem__("batch_size", 10 * N), "invalid DPPlan"),
])
def test_other_edits_of_the_record_are_refused(private_checkpoint, tmp_path, edit, words):
    path, opt = private_checkpoint
    with pytest.raises(CheckpointError, match=words):
        load_state(_edited(path, tmp_path, edit), optimizer=opt)


def test_a_target_epsilon_plan_whose_sigma_misses_its_target_is_refused():
    plan = DPConfig(clip_norm=1.0, target_epsilon=2.0).plan(num_examples=N, batch_size=B,
                                                           steps=30)
    lowered = dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier / 2)
    meta = privacy.checkpoint_metadata(lowered, 3)  # consistent epsilon, missed target
    with pytest.raises(ValueError, match="target epsilon 2 after 30 steps"):
        privacy.plan_from_metadata(meta, epoch=3)
    assert privacy.plan_from_metadata(privacy.checkpoint_metadata(plan, 3), epoch=3) == plan


# ----------------------------------------------------------------- the inclusion mask

@pytest.mark.parametrize("bad", [5.0, -1.0, 0.5, np.nan])
def test_private_batch_grad_takes_only_a_0_1_inclusion_mask(bad):
    x, y = _data()
    plan = _plan()
    params = fbp.init_mlp(jax.random.key(0), [5, 4, 3])
    rows = plan.capacity
    w = np.zeros(rows, np.float32)
    w[:3] = 1.0
    w[1] = bad
    with pytest.raises(ValueError, match=r"0/1 inclusion mask .*weights\[1\]"):
        privacy.private_batch_grad(params, (x[:rows], y[:rows]), w, jax.random.key(1), plan,
                                   activations=ACTS, loss=LOSS)


def test_a_boolean_mask_equals_the_0_1_mask_and_is_the_form_under_jit():
    x, y = _data()
    plan = _plan()
    params = fbp.init_mlp(jax.random.key(0), [5, 4, 3])
    rows = plan.capacity
    mask = np.arange(rows) < 5
    kw = dict(activations=ACTS, loss=LOSS)
    a = privacy.private_batch_grad(params, (x[:rows], y[:rows]), mask.astype(np.float32),
                                   jax.random.key(1), plan, **kw)
    b = privacy.private_batch_grad(params, (x[:rows], y[:rows]), mask, jax.random.key(1),
                                   plan, **kw)
    assert_tree_close(a, b, rtol_for(jnp.float32))
    step = jax.jit(lambda w: privacy.private_batch_grad(params, (x[:rows], y[:rows]), w,
                                                        jax.random.key(1), plan, **kw))
    assert_tree_close(step(jnp.asarray(mask)), b, rtol_for(jnp.float32))
    with pytest.raises(TypeError, match="boolean inclusion mask"):
        step(jnp.asarray(mask, jnp.float32))
    with pytest.raises(ValueError, match=r"shape \(rows,\)"):
        privacy.private_batch_grad(params, (x[:rows], y[:rows]), mask[:-1], jax.random.key(1),
                                   plan, **kw)


# ----------------------------------------------------------------- plans made or edited by hand

@pytest.mark.parametrize("change, error, words", [
    (dict(noise_multiplier=0.0), ValueError, "noise_multiplier=0 with accountant='rdp'"),
    (dict(batch_size=N + 1), ValueError, "batch_size=121 is larger than num_examples=120"),
    (dict(clip_norm=float("inf")), ValueError, "clip_norm must be finite"),
    (dict(clip_norm=0.0), ValueError, "clip_norm must be finite"),
    (dict(noise_multiplier=float("nan")), ValueError, "noise_multiplier must be finite"),
    (dict(delta=None), ValueError, "delta is None with accountant='rdp'"),
    (dict(delta=0.5), ValueError, "not below 1/N"),
    (dict(capacity=0), ValueError, "capacity must be >= 1"),
    (dict(capacity=N + 5), ValueError, "capacity=125 is larger than num_examples"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(num_examples=12.5), TypeError, "num_examples must be an integer"),
    (dict(accountant="moments"), ValueError, "accountant must be one of"),
    (dict(sampling="shuffle"), ValueError, "sampling='shuffle' with accountant='rdp'"),
    (dict(target_epsilon=-1.0), ValueError, "target_epsilon must be finite and > 0"),
])
def test_an_edited_plan_is_refused_when_it_is_made(change, error, words):
    with pytest.raises(error, match=f"invalid DPPlan: .*{words}"):
        dataclasses.replace(_plan(), **change)


def _forced(plan, **change):
    """A plan whose fields were overwritten after its checks (as a pickle or a hack can)."""
    for k, v in change.items():
        object.__setattr__(plan, k, v)
    return plan


def test_a_plan_is_checked_again_wherever_it_enters():
    x, y = _data()
    params = fbp.init_mlp(jax.random.key(0), [5, 4, 3])
    kw = dict(activations=ACTS, loss=LOSS)
    match = "invalid DPPlan: noise_multiplier=0 with accountant='rdp'"
    with pytest.raises(ValueError, match=match):
        privacy.private_grad(params, (x, y), jax.random.key(0),
                             _forced(_plan(), noise_multiplier=0.0), **kw)
    plan = _forced(_plan(), noise_multiplier=0.0)
    rows = _plan().capacity
    with pytest.raises(ValueError, match=match):
        privacy.private_batch_grad(params, (x[:rows], y[:rows]), np.ones(rows, bool),
                                   jax.random.key(0), plan, **kw)
    with pytest.raises(ValueError, match=match):
        privacy.check_plan(plan)
    opt = sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(1))
    state = state._replace(epoch=3, dp=_forced(_plan(), noise_multiplier=0.0))
    with pytest.raises(ValueError, match=match):
        fit(state, (x, y), **kw, optimizer=opt, epochs=1, batch_size=B,
            dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    with pytest.raises(TypeError, match="plan must be a DPPlan"):
        privacy.check_plan(dataclasses.asdict(_plan()))


def test_a_valid_hand_made_plan_is_accepted():
    plan = DPPlan(clip_norm=1.0, noise_multiplier=1.0, delta=1e-4, delta_is_default=False,
                  sampling="poisson", accountant="rdp", num_examples=N, batch_size=B,
                  steps=30, capacity=40)
    assert privacy.check_plan(plan) is plan


# ----------------------------------------------------------------- Dropout: one rule

def test_private_grad_refuses_dropout_as_fit_does():
    net = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dropout(0.5), fl.Dense(3))
    x, y = _data()
    params = net.init(jax.random.key(0), (5,))
    plan = _plan()
    rows = plan.capacity
    words = "dp= with Dropout layers is not supported"
    with pytest.raises(ValueError, match=words):
        privacy.private_grad(params, (x, y), jax.random.key(0), plan, network=net, loss=LOSS)
    with pytest.raises(ValueError, match=words):
        privacy.private_batch_grad(params, (x[:rows], y[:rows]), np.ones(rows, bool),
                                   jax.random.key(0), plan, network=net, loss=LOSS)
    opt = sgd(0.1)
    with pytest.raises(ValueError, match=words):
        fit(init_state(params, optimizer=opt, key=jax.random.key(1)), (x, y), network=net,
            loss=LOSS, optimizer=opt, epochs=1, batch_size=B,
            dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    # rate 0 is the identity: all three accept it
    off = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dropout(0.0), fl.Dense(3))
    g = privacy.private_grad(params, (x, y), jax.random.key(0), plan, network=off, loss=LOSS)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(g))


# ----------------------------------------------------------------- check on a private run

def test_check_private_gradients_passes_and_catches_wrong_norms_or_clipping(monkeypatch):
    plan = _plan()
    net = fl.Sequential(fl.Dense(6), fl.Activation("tanh"), fl.Dense(3))
    params = net.init(jax.random.key(3), (5,))
    x, y = _data()
    batch = (x[:16], jax.nn.one_hot(y[:16], 3))
    report = privacy.check_private_gradients(params, batch, plan, network=net, loss=LOSS)
    assert report.ok, str(report)
    names = [r.name for r in report.rows]
    assert names[0] == "||g_i|| per example" and report.rows[0].shape == (16,)
    assert len(names) == 5 and all(n.startswith("clipped layer") for n in names[1:])
    # some rows are clipped, some not: the comparison covers both branches of min(1, C/||g||)
    norms = fbp.per_example_grad_norms(params, batch, network=net, loss=LOSS)
    assert bool(jnp.any(norms > plan.clip_norm)) and bool(jnp.any(norms < plan.clip_norm))
    # the wrong twins: norms 0.1% off, and a step clipped at 1.01 C, are caught
    from functional_bp.privacy import check as private_check

    with monkeypatch.context() as mp:
        mp.setattr(private_check, "per_example_grad_norms",
                   lambda *a, **k: 1.001 * fbp.per_example_grad_norms(*a, **k))
        wrong = privacy.check_private_gradients(params, batch, plan, network=net, loss=LOSS)
    assert [r.name for r in wrong.failed] == ["||g_i|| per example"]
    with monkeypatch.context() as mp:
        mp.setattr(private_check, "private_batch_grad",
                   lambda p, b, w, k, plan, **kw: privacy.private_batch_grad(
                       p, b, w, k, dataclasses.replace(plan, clip_norm=1.01 * plan.clip_norm),
                       **kw))
        wrong = privacy.check_private_gradients(params, batch, plan, network=net, loss=LOSS)
    assert len(wrong.failed) == 4 and all(r.name.startswith("clipped") for r in wrong.failed)


def test_check_on_a_private_checkpoint_checks_the_norms_and_the_clipped_step(tmp_path, capsys):
    from functional_bp.cli import main

    small = ["--data", "xor", "--hidden", "8", "--activation", "tanh", "--quiet",
             "--batch-size", "32", "--lr", "0.01"]
    out = tmp_path / "run"
    assert main(["train", *small, "--dp-clip", "0.05", "--dp-noise", "1.1", "--epochs", "1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out / "params.npz")]) == 0
    text = capsys.readouterr().out
    assert "private run (clip 0.05, divided by q N = 32)" in text
    assert "||g_i|| per example" in text and "clipped layer 1 W" in text
    assert "PASS: the per-example norms and the clipped step equal jax.vmap(jax.grad)" in text
    # a run that was not private gets the ordinary check only
    assert main(["train", *small, "--epochs", "1", "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "plain" / "params.npz")]) == 0
    assert "private run" not in capsys.readouterr().out
