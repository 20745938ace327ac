"""Private training through fit(dp=...): the steps, epsilon in the history, checkpoints,
exact resumption, the network form, and every refusal.

The step itself (Poisson sample, clipping, noise, division by q N) is tested
against jax.vmap(jax.grad) in test_privacy.py; here fit is checked against a
hand-written loop of those steps, and the network form against vmap(grad)
of the plain objective.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp import privacy
from functional_bp.checkpoint import read_metadata
from functional_bp.privacy import DPConfig
from functional_bp.train import fit, init_state, load_state, save_state, sgd, train_epoch

from helpers import assert_tree_close, rtol_for

pytest.importorskip("dp_accounting")

ACTS = ("relu", "identity")
LOSS = "softmax_cross_entropy"
N, B = 120, 12  # 10 private steps per epoch


def _data(n=N, n_in=5, classes=3, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = 2.0 * jax.random.normal(kx, (n, n_in))
    y = jax.random.randint(ky, (n,), 0, classes)
    return x, y


def _mlp_state(opt, seed=1, sizes=(5, 16, 3)):
    params = fbp.init_mlp(jax.random.key(seed), list(sizes))
    return init_state(params, optimizer=opt, key=jax.random.key(seed + 100))


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _adam():
    return pytest.importorskip("optax").adam(1e-2)


# ----------------------------------------------------------------- the steps and epsilon

def test_fit_takes_the_private_steps_of_private_grad_then_the_optimizer():
    """One epoch of fit(dp=) equals round(N/B) hand-written steps of private_grad + l2 W + SGD."""
    x, y = _data()
    opt, l2, lr = sgd(0.1), 1e-3, 0.1
    state = _mlp_state(opt)
    dp = DPConfig(clip_norm=0.8, noise_multiplier=1.3)
    new, history = fit(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=2,
                       batch_size=B, l2=l2, dp=dp)
    plan = new.dp
    assert plan == dp.plan(num_examples=N, batch_size=B, steps=2 * 10)
    assert privacy.steps_per_epoch(N, B) == 10

    params = state.params
    for t in range(20):
        g = privacy.private_grad(params, (x, y), privacy.step_key(state.key, t), plan,
                                 activations=ACTS, loss=LOSS)
        params = jax.tree.map(lambda p, gp, name: p - lr * (gp + (l2 * p if name else 0)),
                              params, g, [{"W": True, "b": False}] * 2)
    assert_tree_close(new.params, params, rtol_for(jnp.float32))
    assert new.epoch == 2 and [r["epoch"] for r in history] == [0, 1, 2]


def test_epsilon_after_each_epoch_is_the_accountants_at_the_plans_delta():
    x, y = _data()
    opt = sgd(0.1)
    records = []
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.1)
    state, history = fit(_mlp_state(opt), (x, y), (x[:30], y[:30]), activations=ACTS,
                         loss=LOSS, optimizer=opt, epochs=3, batch_size=B, dp=dp,
                         callback=records.append)
    assert records == history  # the callback sees epsilon too
    plan = state.dp
    assert plan.delta == privacy.default_delta(N) == 1e-4 < 1 / N
    expected = [0.0] + [privacy.epsilon(10 * e, sampling_probability=B / N,
                                        noise_multiplier=1.1, delta=plan.delta)
                        for e in (1, 2, 3)]
    assert [r["epsilon"] for r in history] == expected
    assert 0 < expected[1] < expected[2] < expected[3]
    # without a callback the same records (metrics read at the end)
    _, again = fit(_mlp_state(opt), (x, y), (x[:30], y[:30]), activations=ACTS, loss=LOSS,
                   optimizer=opt, epochs=3, batch_size=B, dp=dp)
    assert again == history


def test_non_private_fit_has_no_epsilon_and_no_plan():
    x, y = _data()
    opt = sgd(0.1)
    state, history = fit(_mlp_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                         epochs=1, batch_size=B)
    assert state.dp is None and all("epsilon" not in r for r in history)


def test_target_epsilon_is_reached_at_the_planned_epochs_and_not_exceeded():
    x, y = _data()
    opt = sgd(0.1)
    dp = DPConfig(clip_norm=1.0, target_epsilon=2.0)
    state, history = fit(_mlp_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                         epochs=2, batch_size=B, dp=dp)
    assert state.dp.steps == 20 and history[-1]["epsilon"] <= 2.0
    assert history[-1]["epsilon"] > 1.99  # calibrated, not merely below
    with pytest.raises(ValueError, match="calibrated to reach epsilon=2 after 20 steps"):
        fit(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=1,
            batch_size=B, dp=dp)


# ----------------------------------------------------------------- checkpoints and resumption

def test_a_resumed_private_run_equals_the_uninterrupted_one_bitwise(tmp_path):
    """2 epochs, checkpoint, load, 2 more == 4 epochs: params, optimizer state, epsilon."""
    x, y = _data()
    opt = _adam()
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0)
    kw = dict(activations=ACTS, loss=LOSS, optimizer=opt, batch_size=B, l2=1e-4, dp=dp)
    full, full_history = fit(_mlp_state(opt), (x, y), epochs=4, **kw)

    half, first = fit(_mlp_state(opt), (x, y), epochs=2, **kw)
    path = tmp_path / "ckpt.npz"
    save_state(path, half, activations=list(ACTS), loss=LOSS)
    meta = read_metadata(path)
    assert meta["dp"]["plan"] == half.dp.as_dict() and meta["dp"]["steps"] == 20
    assert meta["dp"]["epsilon"] == first[-1]["epsilon"]
    loaded, _ = load_state(path, optimizer=opt)
    assert loaded.dp == half.dp and loaded.epoch == 2
    resumed, rest = fit(loaded, (x, y), epochs=2, **kw)

    _leaves_equal(resumed.params, full.params)
    _leaves_equal(resumed.opt_state, full.opt_state)
    assert first + rest == full_history  # epsilon goes on from step 20, exactly
    assert resumed.epoch == 4


def test_resuming_with_a_different_dp_configuration_is_refused(tmp_path):
    x, y = _data()
    opt = sgd(0.1)
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0)
    kw = dict(activations=ACTS, loss=LOSS, optimizer=opt, epochs=1)
    state, _ = fit(_mlp_state(opt), (x, y), batch_size=B, dp=dp, **kw)
    save_state(tmp_path / "c.npz", state, activations=list(ACTS), loss=LOSS)
    state, _ = load_state(tmp_path / "c.npz", optimizer=opt)
    for other, what in [(DPConfig(clip_norm=2.0, noise_multiplier=1.0), "clip_norm"),
                        (DPConfig(clip_norm=1.0, noise_multiplier=0.9), "noise_multiplier"),
                        (DPConfig(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5), "delta"),
                        (DPConfig(clip_norm=1.0, noise_multiplier=1.0, accountant="pld"),
                         "accountant")]:
        with pytest.raises(ValueError, match=f"different DP configuration.*{what}: saved"):
            fit(state, (x, y), batch_size=B, dp=other, **kw)
    with pytest.raises(ValueError, match="different DP configuration.*batch_size"):
        fit(state, (x, y), batch_size=2 * B, dp=dp, **kw)
    with pytest.raises(ValueError, match="different DP configuration.*num_examples"):
        fit(state, (x[:100], y[:100]), batch_size=B, dp=dp, **kw)
    with pytest.raises(ValueError, match="without dp= would train on"):
        fit(state, (x, y), batch_size=B, **kw)
    with pytest.raises(ValueError, match="train_epoch takes non-private steps"):
        train_epoch(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, batch_size=B)
    fit(state, (x, y), batch_size=B, dp=dp, **kw)  # the same configuration goes on
    # the default delta given explicitly is the same accounting
    assert state.dp.delta_is_default and state.dp.delta == 1e-4
    fit(state, (x, y), batch_size=B, dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0,
                                                   delta=1e-4), **kw)


def test_dp_after_non_private_epochs_is_refused():
    x, y = _data()
    opt = sgd(0.1)
    state, _ = fit(_mlp_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt,
                   epochs=1, batch_size=B)
    with pytest.raises(ValueError, match="1 epochs of training without dp="):
        fit(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=1,
            batch_size=B, dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))


# ----------------------------------------------------------------- the network form

def _vmap_reference(net, params, x, y, key, *, m, clip_norm):
    """The noiseless private step by hand: the documented sample, vmap(grad), clipping, / m."""
    sample_key, _ = jax.random.split(key)
    idx = np.flatnonzero(np.asarray(jax.random.bernoulli(sample_key, m / x.shape[0],
                                                         (x.shape[0],))))

    def L_i(p, xi, yi):
        return fbp.objective(p, (xi[None], yi[None]), network=net, loss=LOSS)

    g = jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(params, x[idx], y[idx])
    leaves, treedef = jax.tree_util.tree_flatten(g)
    sq = sum(np.sum(np.asarray(v, np.float64).reshape(len(idx), -1) ** 2, 1) for v in leaves)
    c = np.minimum(1.0, clip_norm / np.sqrt(sq))
    assert c.min() < 1  # some examples clipped
    return treedef.unflatten([np.tensordot(c, np.asarray(v, np.float64), 1) / m
                              for v in leaves])


def test_private_grad_of_a_network_equals_vmap_grad_clipped_by_hand():
    net = fl.Sequential(fl.Dense(8), fl.Activation("tanh"),
                        fl.Residual(fl.LayerNorm(), fl.Dense(8), fl.Activation("gelu")),
                        fl.Dense(3))
    x, y = _data(60)
    params = net.init(jax.random.key(3), (5,))
    plan = DPConfig(clip_norm=0.5, noise_multiplier=0.0, accountant=None).plan(
        num_examples=60, batch_size=10, steps=1)
    for t in range(3):
        key = privacy.step_key(jax.random.key(9), t)
        ours = privacy.private_grad(params, (x, y), key, plan, network=net, loss=LOSS)
        ref = _vmap_reference(net, params, x, y, key, m=10, clip_norm=0.5)
        assert_tree_close(ours, ref, rtol_for(jnp.float32), prefix=f"step {t}")


def test_fit_network_form_equals_the_dense_chain_form():
    """The MLP as Dense/Activation layers: the same private run, step for step."""
    x, y = _data()
    opt = sgd(0.1)
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.2)
    mlp_state = _mlp_state(opt)
    net = fl.Sequential(fl.Dense(16), fl.Activation("relu"), fl.Dense(3),
                        fl.Activation("identity"))
    net_params = [mlp_state.params[0], {}, mlp_state.params[1], {}]
    net_state = init_state(net_params, optimizer=opt, key=mlp_state.key)
    a, ha = fit(mlp_state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=2,
                batch_size=B, dp=dp)
    b, hb = fit(net_state, (x, y), network=net, loss=LOSS, optimizer=opt, epochs=2,
                batch_size=B, dp=dp)
    assert_tree_close([b.params[0], b.params[2]], a.params, rtol_for(jnp.float32))
    assert [r["epsilon"] for r in ha] == [r["epsilon"] for r in hb]


# ----------------------------------------------------------------- safety

@dataclasses.dataclass(frozen=True)
class BatchCentre(fl.Layer):
    """y = x - the batch mean of x: row i depends on every example."""

    couples_examples = True

    def forward(self, params, x, key=None):
        return x - jnp.mean(x, axis=0, keepdims=True), None

    def backward(self, params, cache, dy):
        return {}, dy - jnp.mean(dy, axis=0, keepdims=True)


def test_layers_that_couple_examples_are_refused_by_the_private_step_and_fit():
    net = fl.Sequential(fl.Dense(6), BatchCentre(), fl.Activation("relu"), fl.Dense(3))
    x, y = _data()
    params = net.init(jax.random.key(0), (5,))
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(num_examples=N, batch_size=B,
                                                              steps=10)
    with pytest.raises(ValueError, match="couples the examples"):
        privacy.private_grad(params, (x, y), jax.random.key(0), plan, network=net, loss=LOSS)
    with pytest.raises(ValueError, match="couples the examples"):
        privacy.private_batch_grad(params, (x[:plan.capacity], y[:plan.capacity]),
                                   jnp.ones(plan.capacity), jax.random.key(0), plan,
                                   network=net, loss=LOSS)
    opt = sgd(0.1)
    with pytest.raises(ValueError, match="couples the examples"):
        fit(init_state(params, optimizer=opt, key=jax.random.key(1)), (x, y), network=net,
            loss=LOSS, optimizer=opt, epochs=1, batch_size=B,
            dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    # the same network trains without dp (the ordinary gradient is exact)
    fit(init_state(params, optimizer=opt, key=jax.random.key(1)), (x, y), network=net,
        loss=LOSS, optimizer=opt, epochs=1, batch_size=B)


def test_noise_without_a_key_and_zero_noise_accounting_are_refused():
    x, y = _data()
    opt = sgd(0.1)
    state = _mlp_state(opt)._replace(key=None)
    with pytest.raises(ValueError, match="state.key is None"):
        fit(state, (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=1,
            batch_size=B, dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    with pytest.raises(ValueError, match="zero noise has no finite epsilon"):
        DPConfig(clip_norm=1.0, noise_multiplier=0.0)
    # clipping without noise trains, and claims nothing
    s, h = fit(_mlp_state(opt), (x, y), activations=ACTS, loss=LOSS, optimizer=opt, epochs=1,
               batch_size=B, dp=DPConfig(clip_norm=1.0, noise_multiplier=0.0, accountant=None))
    assert s.dp.accountant is None and all("epsilon" not in r for r in h)


def test_other_refusals():
    x, y = _data()
    opt = sgd(0.1)
    kw = dict(loss=LOSS, optimizer=opt, epochs=1, batch_size=B)
    with pytest.raises(TypeError, match="dp must be a functional_bp.privacy.DPConfig"):
        fit(_mlp_state(opt), (x, y), activations=ACTS, dp={"clip_norm": 1.0}, **kw)
    with pytest.raises(ValueError, match="fit draws Poisson batches"):
        fit(_mlp_state(opt), (x, y), activations=ACTS, **kw,
            dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0, sampling="shuffle",
                        accountant=None))
    net = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dropout(0.5), fl.Dense(3))
    state = init_state(net.init(jax.random.key(0), (5,)), optimizer=opt, key=jax.random.key(1))
    with pytest.raises(ValueError, match="Dropout layers is not supported"):
        fit(state, (x, y), network=net, dp=DPConfig(clip_norm=1.0, noise_multiplier=1.0), **kw)


# ----------------------------------------------------------------- data parallel

def test_data_parallel_private_training_adds_the_noise_once_on_four_devices():
    """tests/_private_parallel_worker.py on 4 host devices (a fresh process)."""
    from test_parallel import TESTS, run_with_host_devices

    r = run_with_host_devices(4, str(TESTS / "_private_parallel_worker.py"))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]


# ----------------------------------------------------------------- the command line

SMALL = ["--data", "xor", "--hidden", "8", "--activation", "tanh", "--quiet",
         "--batch-size", "32", "--lr", "0.01"]  # xor: 320 training rows, 10 steps per epoch


def _cli_metrics(out):
    import json

    return json.loads((out / "metrics.json").read_text())


def test_cli_private_run_records_epsilon_and_resume_continues_the_accounting(tmp_path, capsys):
    from functional_bp.cli import main

    dp = ["--dp-clip", "1.0", "--dp-noise", "1.1"]
    assert main(["train", *SMALL, *dp, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    line = capsys.readouterr().out
    assert "epsilon" in line and "delta 0.0001 (the default: below 1/N = 1/320)" in line
    full = _cli_metrics(tmp_path / "full")
    eps = [privacy.epsilon(10 * e, sampling_probability=32 / 320, noise_multiplier=1.1,
                           delta=1e-4) for e in (1, 2, 3)]
    assert [r["epsilon"] for r in full["history"]] == [0.0, *eps]
    assert full["dp"]["steps"] == 30 and full["dp"]["epsilon"] == eps[-1]
    assert full["dp"]["plan"]["noise_multiplier"] == 1.1
    assert f"epsilon {eps[-1]:.3g}" in line

    assert main(["train", *SMALL, *dp, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--resume", str(tmp_path / "a" / "params.npz"), "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "b")]) == 0
    resumed = _cli_metrics(tmp_path / "b")
    assert resumed["history"] == full["history"]  # the same losses, accuracies and epsilon
    opt = _adam()  # the command line's default optimizer
    a, _ = load_state(tmp_path / "b" / "params.npz", optimizer=opt)
    b, _ = load_state(tmp_path / "full" / "params.npz", optimizer=opt)
    _leaves_equal(a.params, b.params)
    assert (a.dp.steps, b.dp.steps) == (20, 30)  # planned: 2 and 3 epochs; the rest is equal
    assert dataclasses.replace(a.dp, steps=30) == b.dp


@pytest.mark.parametrize("argv, option, words", [
    (["--dp-noise", "1.0"], "--dp-noise", "goes with --dp-clip"),
    (["--dp-delta", "1e-5"], "--dp-delta", "goes with --dp-clip"),
    (["--dp-clip", "1.0"], "--dp-clip", "give --dp-noise SIGMA or a target --dp-epsilon"),
    (["--dp-clip", "1.0", "--dp-noise", "1.0", "--dp-epsilon", "3"], "--dp-epsilon",
     "not allowed with argument --dp-noise"),
    (["--dp-clip", "1.0", "--dp-noise", "1.0", "--dp-delta", "0.01"], "--dp-delta",
     "promises nothing"),
    (["--dp-clip", "0", "--dp-noise", "1.0"], "--dp-clip", "expected a positive number"),
    (["--dp-clip", "1", "--dp-noise", "0"], "--dp-noise", "expected a positive number"),
])
def test_cli_dp_usage_errors(tmp_path, capsys, argv, option, words):
    from functional_bp.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--epochs", "1", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}" in err and words in err, err
    assert "Traceback" not in err


def test_cli_resume_refuses_another_dp_configuration_and_more_than_the_target(tmp_path,
                                                                              capsys):
    from functional_bp.cli import main

    out = tmp_path / "r"
    assert main(["train", *SMALL, "--dp-clip", "1", "--dp-epsilon", "2", "--epochs", "2",
                 "--out", str(out)]) == 0
    ckpt = str(out / "params.npz")
    for argv, option, words in [
            (["--dp-clip", "2"], "--dp-clip", "differs from the resumed run's"),
            (["--dp-noise", "1.0"], "--dp-noise", "differs from the resumed run's"),
            (["--epochs", "1"], "--epochs", "calibrated to reach epsilon=2 after 20 steps")]:
        with pytest.raises(SystemExit) as info:
            main(["train", "--resume", ckpt, "--quiet", *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument {option}" in err and words in err, err
