"""Training: the scanned epoch equals a plain loop of jax.grad steps; loss falls; resume is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_bp as fbp
from functional_bp.checkpoint import CheckpointError, save_params
from functional_bp.datasets import BUILTIN, load_dataset
from functional_bp.losses import get_loss
from functional_bp.activations import get_activation
from functional_bp.mlp import objective_from_arrays
from functional_bp.train import (batch_plan, evaluate, fit, init_state, load_state,
                                 make_optimizer, save_state, sgd, train_epoch)
from helpers import assert_tree_close, rtol_for


def test_batch_plan_covers_every_row_once_with_mean_weights():
    m, B = 10, 4
    idx, w = batch_plan(jax.random.key(0), m, B)
    idx, w = np.asarray(idx), np.asarray(w)
    assert idx.shape == w.shape == (3, 4)
    real = w > 0
    assert sorted(idx[real].tolist()) == list(range(m))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    assert real.sum(axis=1).tolist() == [4, 4, 2]  # the last partial batch is kept


OPTIMIZERS = {
    "sgd": lambda: (sgd(0.3), optax.sgd(0.3)),
    "momentum": lambda: (make_optimizer("momentum", 0.1), optax.sgd(0.1, momentum=0.9)),
    "adam": lambda: (make_optimizer("adam", 0.01), optax.adam(0.01)),
}


@pytest.mark.parametrize(
    "opt_name, m, B",
    [(name, 10, 4) for name in sorted(OPTIMIZERS)]  # a partial last batch
    + [("sgd", 7, 7), ("sgd", 5, 16), ("adam", 9, 1)],  # exact fit, B > m, batch of one
)
def test_epoch_equals_loop_of_autodiff_steps(opt_name, m, B):
    """Each step: jax.grad of the plain objective on exactly the real rows of the batch."""
    with jax.enable_x64(True):
        acts, loss, l2 = ["tanh", "sigmoid", "identity"], "softmax_cross_entropy", 0.01
        kp, kx, ky, ks = jax.random.split(jax.random.key(m * 100 + B), 4)
        params = fbp.init_mlp(kp, [3, 5, 4, 3], dtype=jnp.float64)
        x = jax.random.normal(kx, (m, 3), jnp.float64)
        labels = jax.random.randint(ky, (m,), 0, 3)
        ours_opt, ref_opt = OPTIMIZERS[opt_name]()

        state = init_state(params, optimizer=ours_opt, key=ks)
        for _ in range(2):
            state, _ = train_epoch(state, (x, labels), activations=acts, loss=loss,
                                   optimizer=ours_opt, batch_size=B, l2=l2)

        act_objs = tuple(get_activation(a) for a in acts)
        J = lambda p, xb, yb: objective_from_arrays(p, xb, yb, l2, act_objs, get_loss(loss))

        @jax.jit
        def step(p, opt_state, xb, yb):
            updates, opt_state = ref_opt.update(jax.grad(J)(p, xb, yb), opt_state, p)
            return optax.apply_updates(p, updates), opt_state

        ref, opt_state = params, ref_opt.init(params)
        y = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
        for epoch in range(2):
            idx, w = batch_plan(jax.random.fold_in(ks, epoch), m, min(B, m))
            for rows, weights in zip(np.asarray(idx), np.asarray(w)):
                rows = rows[weights > 0]
                ref, opt_state = step(ref, opt_state, x[rows], y[rows])
        assert state.epoch == 2
        assert_tree_close(state.params, ref, rtol_for(jnp.float64), "params")


def _run(name, epochs, hidden=16, seed=0, lr=0.01, state=None, data=None):
    data = data or load_dataset(name, seed=seed)
    sizes = [data.n_features, hidden, data.n_outputs]
    loss = "mse" if data.n_classes is None else "softmax_cross_entropy"
    opt = make_optimizer("adam", lr)
    if state is None:
        state = init_state(fbp.init_mlp(jax.random.key(seed), sizes), optimizer=opt,
                           key=jax.random.key(seed + 1))
    return fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
               activations=["tanh", "identity"], loss=loss, optimizer=opt, epochs=epochs,
               batch_size=32)


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_decreases_on_every_builtin_dataset(name):
    state, history = _run(name, epochs=5, lr=0.03)
    assert [r["epoch"] for r in history] == list(range(6))
    assert history[-1]["train_loss"] < 0.95 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert ("test_accuracy" in history[-1]) == (name != "sine")


def test_short_digits_run_clears_90_percent():
    _, history = _run("digits", epochs=3, hidden=32)
    assert history[-1]["test_accuracy"] > 0.90


def test_same_seed_same_run():
    a, ha = _run("moons", epochs=2)
    b, hb = _run("moons", epochs=2)
    assert ha == hb
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_resume_is_bitwise_exact(tmp_path):
    """N epochs, save, load, N more == 2N epochs in one run (params, optimizer state)."""
    data = load_dataset("xor", seed=0)
    full, full_history = _run("xor", epochs=4, data=data)
    half, _ = _run("xor", epochs=2, data=data)
    save_state(tmp_path / "ckpt.npz", half, activations=["tanh", "identity"])
    loaded, meta = load_state(tmp_path / "ckpt.npz", optimizer=make_optimizer("adam", 0.01))
    assert loaded.epoch == 2 and meta["epoch"] == 2
    resumed, history = _run("xor", epochs=2, data=data, state=loaded)
    assert [r["epoch"] for r in history] == [3, 4]
    assert history == full_history[3:]
    assert resumed.epoch == full.epoch == 4
    for u, v in zip(jax.tree.leaves((resumed.params, resumed.opt_state)),
                    jax.tree.leaves((full.params, full.opt_state))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_load_state_rejects_other_optimizer_and_params_only(tmp_path):
    state, _ = _run("xor", epochs=1)
    save_state(tmp_path / "adam.npz", state)
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):
        load_state(tmp_path / "adam.npz", optimizer=make_optimizer("momentum", 0.1))
    save_params(tmp_path / "params.npz", state.params)
    with pytest.raises(CheckpointError, match="params only"):
        load_state(tmp_path / "params.npz", optimizer=make_optimizer("adam", 0.01))


def test_evaluate_counts_correct_rows():
    params = [{"W": jnp.eye(2), "b": jnp.zeros(2)}]
    x = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    labels = jnp.array([0, 1, 1, 1])
    out = evaluate(params, (x, labels), activations=["identity"], loss="softmax_cross_entropy")
    assert out["accuracy"] == 0.75
    ref = float(jnp.mean(-jax.nn.log_softmax(x)[jnp.arange(4), labels]))
    assert abs(out["loss"] - ref) <= 1e-6 * abs(ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(batch_size=0), "batch_size"), (dict(epochs=-1), "epochs"),
     (dict(activations=["tanh"]), "activations")],
)
def test_fit_validates_arguments(kwargs, match):
    data = load_dataset("xor")
    params = fbp.init_mlp(jax.random.key(0), [2, 4, 2])
    opt = sgd(0.1)
    base = dict(activations=["tanh", "identity"], loss="softmax_cross_entropy", optimizer=opt,
                epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=match):
        fit(init_state(params, optimizer=opt, key=jax.random.key(0)),
            (data.x_train, data.y_train), **{**base, **kwargs})


def test_make_optimizer_rejects_unknown_names_and_bad_rates():
    with pytest.raises(ValueError, match="valid names"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="positive"):
        make_optimizer("sgd", 0.0)
