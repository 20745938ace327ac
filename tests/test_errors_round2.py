"""Nothing silent, round two: token indices, labels, standardize, layer options, checkpoints.

Each test feeds an input that gave a NaN, a wrong number or an unusable error
before, and checks the clear error (or the correct result) now.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import _validate
from functional_bp import layers as fl
from functional_bp.checkpoint import CheckpointError, load_checkpoint, save_params
from functional_bp.datasets import Dataset, load_file, standardize
from functional_bp.train import fit, init_state, sgd

CE = "softmax_cross_entropy"


# --- token indices of an Embedding-first network ------------------------------------------
def _token_net():
    net = fl.Sequential(fl.Embedding(5, 3), fl.Flatten(), fl.Dense(2))
    return net, net.init(jax.random.key(0), (4,))


def _calls(net, params):
    """Every public function that takes a batch, as f(batch)."""
    kw = dict(network=net, loss=CE)
    return {
        "value_and_grad": lambda b: fbp.value_and_grad(params, b, **kw),
        "grad": lambda b: fbp.grad(params, b, **kw),
        "backprop": lambda b: fbp.backprop(params, b, **kw),
        "objective": lambda b: fbp.objective(params, b, **kw),
        "forward": lambda b: fbp.forward(params, b[0], network=net),
        "per_example_grads": lambda b: fbp.per_example_grads(params, b, **kw),
        "per_example_grad_norms": lambda b: fbp.per_example_grad_norms(params, b, **kw),
        "clipped_grad": lambda b: fbp.clipped_grad(params, b, clip_norm=1.0, **kw),
        "custom_vjp_objective": lambda b: fbp.custom_vjp_objective(**kw)(params, b),
        "data_parallel_value_and_grad": lambda b: fbp.data_parallel_value_and_grad(
            params, b, **kw),
    }


_GOOD_TOKENS = np.array([[0, 1, 2, 4], [1, 1, 1, 1]])


@pytest.mark.parametrize("name", list(_calls(*_token_net())))
@pytest.mark.parametrize("tokens, bad", [
    (np.array([[0, 1, 2, 5], [1, 1, 1, 1]]), r"the largest index is 5"),
    (jnp.array([[0, 1, 2, 3], [1, -1, 1, 1]]), r"the smallest index is -1"),
    (np.array([[0, 1, 2, 3], [1, 1, 1, 2**40]], np.int64), r"the largest index is 1099511627776"),
])
def test_embedding_indices_out_of_range_refused_by_every_public_function(name, tokens, bad):
    net, params = _token_net()
    f = _calls(net, params)[name]
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"x: token indices for layer 1 \(Embedding\(vocab_size=5.*"
                                         r"\[0, vocab_size\) = \[0, 5\); " + bad):
        f((tokens, y))
    f((_GOOD_TOKENS, y))  # in range: runs


def test_embedding_indices_and_labels_checked_by_the_private_gradients():
    from functional_bp.privacy import DPConfig, private_batch_grad, private_grad, step_key

    net, params = _token_net()
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(num_examples=8, batch_size=4,
                                                              steps=10)
    x, y = np.array([[0, 1, 2, 4]] * 8), np.zeros(8, np.int64)
    calls = [
        lambda x, y: private_grad(params, (x, y), step_key(jax.random.key(1), 0), plan,
                                  network=net, loss=CE),
        lambda x, y: private_batch_grad(params, (x, y), jnp.ones(8), jax.random.key(2), plan,
                                        network=net, loss=CE),
    ]
    assert plan.capacity == 8
    for f in calls:
        with pytest.raises(ValueError, match=r"x: token indices .*the largest index is 5"):
            f(x + 1, y)
        with pytest.raises(ValueError, match=r"y: integer labels .*the largest label is 2"):
            f(x, y + 2)
        f(x, y)


def test_check_gradients_refuses_out_of_range_indices():
    net, params = _token_net()
    with pytest.raises(ValueError, match=r"x: token indices .*the smallest index is -1"):
        fbp.check_gradients(params, (_GOOD_TOKENS - 1, np.array([0, 1])), network=net, loss=CE)


def test_embedding_indices_nested_first_layer_named():
    net = fl.Sequential(fl.Sequential(fl.Embedding(5, 3), fl.Flatten()), fl.Dense(2))
    params = net.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"layer 1\.layer 1 \(Embedding"):
        fbp.value_and_grad(params, (_GOOD_TOKENS + 1, np.array([0, 1])), network=net, loss=CE)


def test_embedding_indices_checked_by_fit():
    net, params = _token_net()
    opt = sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(1))
    x = np.array([[0, 1, 2, 3]] * 6 + [[0, 1, 2, 9]])
    y = np.zeros(7, np.int32)
    with pytest.raises(ValueError, match=r"train: x: token indices .*the largest index is 9"):
        fit(state, (x, y), network=net, loss=CE, optimizer=opt, epochs=1, batch_size=4)
    with pytest.raises(ValueError, match=r"test: x: token indices .*the smallest index is -3"):
        fit(state, (x[:6], y[:6]), (x[:6] - 3, y[:6]), network=net, loss=CE, optimizer=opt,
            epochs=1, batch_size=4)


def test_traced_embedding_indices_cannot_be_checked():
    """Inside a user's jit the indices are tracers: no error, a NaN loss (documented)."""
    net, params = _token_net()
    f = jax.jit(lambda x: fbp.value_and_grad(params, (x, jnp.array([0, 1])), network=net,
                                             loss=CE)[0])
    assert np.isnan(float(f(jnp.array([[0, 1, 2, 5], [1, 1, 1, 1]]))))
    assert np.isfinite(float(f(jnp.asarray(_GOOD_TOKENS))))


# --- class labels given to the core functions ---------------------------------------------
@pytest.mark.parametrize("labels, bad", [
    (np.array([0, 1, 3, 0]), r"the largest label is 3"),
    (np.array([0, -1, 1, 0]), r"the smallest label is -1"),
    (jnp.array([0, 1, 2, 7]), r"the largest label is 7"),
    (np.array([0, 1, 2**32, 0], np.int64), r"the largest label is 4294967296"),
])
def test_labels_out_of_range_refused_by_core_functions(labels, bad):
    params = fbp.init_mlp(jax.random.key(0), [3, 4, 3])
    acts = ["relu", "identity"]
    x = np.ones((4, 3), np.float32)
    message = r"y: integer labels must be class indices in \[0, n_L\) = \[0, 3\).*n_L=3.*" + bad
    for f in (fbp.value_and_grad, fbp.grad, fbp.objective, fbp.backprop, fbp.per_example_grads,
              fbp.per_example_grad_norms, fbp.data_parallel_value_and_grad):
        with pytest.raises(ValueError, match=message):
            f(params, (x, labels), activations=acts, loss=CE)
    with pytest.raises(ValueError, match=message):
        fbp.clipped_grad(params, (x, labels), activations=acts, loss=CE, clip_norm=1.0)
    with pytest.raises(ValueError, match=message):
        fbp.custom_vjp_objective(activations=acts, loss=CE)(params, (x, labels))
    J, _ = fbp.value_and_grad(params, (x, np.array([0, 1, 2, 0])), activations=acts, loss=CE)
    assert J > 0


def test_labels_out_of_range_refused_for_a_network():
    net = fl.Sequential(fl.Dense(4), fl.Activation("relu"), fl.Dense(2))
    params = net.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"\[0, 2\).*the largest label is 2"):
        fbp.value_and_grad(params, (np.ones((3, 3)), np.array([0, 1, 2])), network=net, loss=CE)


def test_label_values_of_a_sequence_output_allow_minus_one():
    """(m, T) labels for an output (T, n_L): -1 marks an unscored position, nothing else below 0."""
    _validate.check_label_values(np.array([[0, -1, 2], [2, 1, -1]]), (3, 3))
    with pytest.raises(ValueError, match=r"or -1 for a position that is not scored.*"
                                         r"the smallest label is -2"):
        _validate.check_label_values(np.array([[0, -2, 2], [2, 1, -1]]), (3, 3))
    with pytest.raises(ValueError, match=r"\[0, 3\).*the largest label is 3"):
        _validate.check_label_values(np.array([[0, 1, 3], [2, 1, -1]]), (3, 3))
    with pytest.raises(ValueError, match=r"the smallest label is -1"):  # not a sequence: no -1
        _validate.check_label_values(np.array([0, -1, 2]), (3,))
    _validate.check_label_values(jnp.array([0.0, 7.0]), (3,))  # float targets: not labels
    _validate.check_label_values(np.array([[0, 9]]), (3,))     # shape checks report this one


# --- standardize --------------------------------------------------------------------------
def _dataset(x):
    y = np.zeros(len(x), np.int32)
    return Dataset("t", x, y, x[:5].copy(), y[:5], 2)


def test_standardize_a_feature_of_scale_1e30():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    x[:, 1] *= 1e30
    x[:, 2] = x[:, 2] * 1e-30 + 5.0e-30
    s, mean, std = standardize(_dataset(x))
    np.testing.assert_allclose(s.x_train.std(axis=0), 1, rtol=1e-5)
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)
    np.testing.assert_allclose(s.x_train[:, 1], (x[:, 1] - mean[1]) / std[1], rtol=1e-5)


def test_standardize_refuses_what_cannot_be_standardized():
    x = np.ones((10, 3), np.float32)
    x[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 feature.*feature 2"):
        standardize(_dataset(x))


# --- layer options ------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: fl.Dense(3, scale=float("nan")), r"Dense\(scale\): a finite number >= 0.*got nan"),
    (lambda: fl.Dense(3, scale=-2), r"Dense\(scale\): a finite number >= 0.*got -2"),
    (lambda: fl.Dense(3, scale=float("inf")), r"Dense\(scale\)"),
    (lambda: fl.Dense(3, scale="2"), r"Dense\(scale\)"),
    (lambda: fl.LayerNorm(eps=float("inf")), r"LayerNorm\(eps\): a finite number > 0.*got inf"),
    (lambda: fl.LayerNorm(eps=float("nan")), r"LayerNorm\(eps\)"),
    (lambda: fl.LayerNorm(eps=0), r"LayerNorm\(eps\)"),
    (lambda: fl.Dropout(float("nan")), r"Dropout\(rate\): a number in \[0, 1\)"),
    (lambda: fl.Dropout(True), r"Dropout\(rate\).*got True"),
    (lambda: fl.Dropout(np.float32(1.0)), r"Dropout\(rate\)"),
    (lambda: fl.Embedding(5, 3, scale=float("nan")), r"Embedding\(scale\)"),
    (lambda: fl.Conv1D(4, 3, scale=-1.0), r"Conv1D\(scale\)"),
    (lambda: fl.Conv2D(4, 3, scale=float("inf")), r"Conv2D\(scale\)"),
    (lambda: fl.Reshape(4), r"Reshape\(shape\).*\(a tuple: \(4,\)\)"),
    (lambda: fl.Dense(np.bool_(True)), r"Dense\(features\): a positive integer"),
])
def test_layer_options_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_scalars_accepted_wherever_a_python_number_is():
    cases = [
        (fl.Dropout(np.float32(0.5)), fl.Dropout(0.5)),
        (fl.Dense(np.int64(3), scale=np.float32(1.0)), fl.Dense(3, scale=1.0)),
        (fl.LayerNorm(eps=np.float64(1e-5)), fl.LayerNorm(eps=1e-5)),
        (fl.Embedding(np.int32(5), np.int64(3), scale=np.float32(0.5)), fl.Embedding(5, 3, 0.5)),
        (fl.Conv1D(np.int64(4), np.int64(3), stride=np.int32(2), padding=np.int64(1)),
         fl.Conv1D(4, 3, stride=2, padding=1)),
        (fl.MaxPool2D((np.int64(2), 2)), fl.MaxPool2D((2, 2))),
        (fl.Reshape((np.int64(4), -1)), fl.Reshape((4, -1))),
    ]
    for made, plain in cases:
        assert made == plain
        assert repr(made) == repr(plain)
        json.dumps(fl.to_config(fl.Sequential(made)))  # checkpoints record options as JSON


def test_init_with_an_int_shape():
    net = fl.Sequential(fl.Dense(3))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple.*got the int 4: pass \(4,\)"):
        net.init(jax.random.key(0), 4)
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints"):
        net.init(jax.random.key(0), (4.0,))
    assert net.init(jax.random.key(0), (np.int64(4),))[0]["W"].shape == (4, 3)


@pytest.mark.parametrize("net, shape", [
    (fl.Sequential(fl.Dense(3)), (0,)),
    (fl.Sequential(fl.Conv1D(2, 3)), (5, 0)),
    (fl.Sequential(fl.LayerNorm(), fl.Dense(2)), (4, 0)),
    (fl.Sequential(fl.Embedding(4, 2), fl.Flatten(), fl.Dense(2)), (0,)),
])
def test_zero_size_axis_refused(net, shape):
    with pytest.raises(ValueError, match=r"every axis of an example needs at least one entry"):
        net.init(jax.random.key(0), shape)


def test_zero_size_feature_axis_of_x_refused():
    net = fl.Sequential(fl.Dense(3))
    params = net.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match=r"x has shape \(3, 0\): an example axis of size 0"):
        fbp.value_and_grad(params, (jnp.ones((3, 0)), jnp.ones((3, 3))), network=net,
                           loss="mse")
    mlp = [{"W": jnp.ones((0, 3)), "b": jnp.ones(3)}]
    with pytest.raises(ValueError, match=r"layer 1: W has shape \(0, 3\): a layer of width 0"):
        fbp.value_and_grad(mlp, (jnp.ones((3, 0)), jnp.ones((3, 3))), activations=["identity"],
                           loss="mse")


@pytest.mark.parametrize("x, message", [
    (np.zeros((0, 3)), r"X has shape \(0, 3\): no examples \(0 rows\)"),
    (np.zeros((4, 0)), r"X has shape \(4, 0\): no features \(0 columns\)"),
])
def test_npz_without_examples_or_features(tmp_path, x, message):
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=np.zeros(len(x), np.int64))
    with pytest.raises(ValueError, match=message):
        load_file(path)


def test_npz_values_beyond_float32(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2))
    x[3, 1] = 1e39  # finite in float64, infinite in float32
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=np.arange(20) % 2)
    with pytest.raises(ValueError, match=r"beyond float32's range.*1 row\(s\), first at row 3"):
        load_file(path)


# --- network checkpoints against their network --------------------------------------------
def _mlp_net(width=8):
    return fl.Sequential(fl.Dense(width), fl.Activation("relu"), fl.Dense(3))


def test_checkpoint_missing_a_leaf_refused_at_load(tmp_path):
    net = _mlp_net()
    params = net.init(jax.random.key(0), (4,))
    path = tmp_path / "c.npz"
    save_params(path, params, network=net)
    arrays = dict(np.load(path))
    del arrays["p/2/W"]
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"layer 3 \(Dense\(features=3.*\): p/2/W missing"):
        load_checkpoint(path)


def test_checkpoint_leaf_of_the_wrong_shape_refused_at_load(tmp_path):
    net = _mlp_net()
    path = tmp_path / "c.npz"
    save_params(path, net.init(jax.random.key(0), (4,)), network=net)
    arrays = dict(np.load(path))
    arrays["p/2/b"] = np.zeros(5, np.float32)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"layer 3 .*p/2/b \(5,\).*fit no input"):
        load_checkpoint(path)


def test_save_params_refuses_params_of_another_network(tmp_path):
    params = _mlp_net(8).init(jax.random.key(0), (4,))
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match=r"layer 1 \(Dense\(features=5.*p/0/W \(4, 8\)"):
        save_params(path, params, network=_mlp_net(5))
    with pytest.raises(ValueError, match=r"one entry per layer \(4\); got 3"):
        save_params(path, params, network=fl.Sequential(*_mlp_net().layers, fl.Dense(2)))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(features=8.*\): p/1/W, p/1/b missing"):
        save_params(path, params, network=fl.Sequential(fl.Dense(8), fl.Dense(8), fl.Dense(3)))
    assert not path.exists()


def test_save_params_checks_the_chain_with_a_recorded_input_shape(tmp_path):
    net = _mlp_net()
    params = net.init(jax.random.key(0), (4,))
    params[2] = fl.Dense(3).init(jax.random.key(1), (5,))[0]  # layer 3 made for width 5
    with pytest.raises(ValueError, match=r"layer 3 .*W must have shape \(8, 3\).*got \(5, 3\)"):
        save_params(tmp_path / "c.npz", params, network=net, metadata={"input_shape": [4]})


@pytest.mark.parametrize("net, shape", [
    (_mlp_net(), (4,)),
    (fl.Sequential(fl.Reshape((-1, 1)), fl.Conv1D(4, 3, padding="SAME"), fl.MaxPool1D(2),
                   fl.Flatten(), fl.Dense(2)), (40,)),
    (fl.Sequential(fl.Conv2D(3, (3, 2), stride=2), fl.AvgPool2D(2), fl.Flatten(),
                   fl.Dense(2)), (9, 9, 2)),
    (fl.Sequential(fl.Embedding(10, 4), fl.LayerNorm(), fl.Flatten(), fl.Dense(2)), (6,)),
    (fl.Sequential(fl.Dense(6), fl.Residual(fl.LayerNorm(), fl.Dense(6),
                                            fl.Activation("gelu")), fl.Dense(2)), (3,)),
])
def test_network_checkpoints_round_trip(tmp_path, net, shape):
    params = net.init(jax.random.key(0), shape)
    path = tmp_path / "c.npz"
    save_params(path, params, network=net, metadata={"input_shape": list(shape)})
    back = load_checkpoint(path)
    assert back.network == net
    jax.tree_util.tree_map(np.testing.assert_array_equal, back.params, params)
    save_params(path, params, network=net)  # no input shape recorded: leaf by leaf only
    assert load_checkpoint(path).network == net


# --- found beyond the list ----------------------------------------------------------------
def test_standardize_features_near_the_float32_limit():
    x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    x[:, 0] = 3e38
    x[0, 0] = -3e38  # x - mean overflows float32: redone in float64
    s, _, _ = standardize(_dataset(x))
    np.testing.assert_allclose(s.x_train[:, 0], [-3.0] + [1 / 3] * 9, rtol=1e-6)
    far = _dataset(x)._replace(x_train=x[:, 1:] * 1e-3, x_test=np.full((2, 1), 3e38, np.float32))
    with pytest.raises(ValueError, match=r"x_test's feature 0 .*beyond float32's range"):
        standardize(far)


def test_npz_complex_features_and_regression_targets_beyond_float32(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, X=np.ones((10, 2)) * (1 + 1j), y=np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"X is complex .*imaginary part would be dropped"):
        load_file(path)
    np.savez(path, X=np.ones((10, 2)), y=np.linspace(0, 1e39, 10))
    with pytest.raises(ValueError, match=r"y holds values beyond float32's range"):
        load_file(path, task="regression")


def test_layer_options_from_jax_scalars_and_keys():
    assert fl.Dropout(jnp.asarray(0.5)) == fl.Dropout(0.5)
    with pytest.raises(TypeError, match=r"Dropout\(rate\): a layer's options are static"):
        jax.jit(lambda r: fl.Dropout(r))(0.5)
    net = fl.Sequential(fl.Dense(3))
    for key in (0, None):
        with pytest.raises(TypeError, match=r"key must be a jax.random key"):
            net.init(key, (2,))
    assert net.init(jax.random.PRNGKey(0), (2,))[0]["W"].shape == (2, 3)


def test_fit_checks_sequence_labels():
    """fit refuses (m, T) labels outside [0, n_L) for a sequence output; -1 (not scored) trains."""
    net = fl.Sequential(fl.Embedding(10, 6), fl.Dense(10))
    params = net.init(jax.random.key(0), (8,))
    x = np.arange(16).reshape(2, 8) % 10
    y = (x + 1) % 10
    try:
        fbp.value_and_grad(params, (x, y), network=net, loss=CE)
    except ValueError as e:  # sequence outputs (m, T, n_L) are not trained by this tree yet
        pytest.skip(f"sequence outputs not supported: {e}")
    opt = sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(1))
    y[0, 3] = 12
    with pytest.raises(ValueError, match=r"train: .*or -1 for a position that is not scored.*"
                                         r"the largest label is 12"):
        fit(state, (x, y), network=net, loss=CE, optimizer=opt, epochs=1, batch_size=2)
    y[0, 3] = -1
    _, history = fit(state, (x, y), network=net, loss=CE, optimizer=opt, epochs=1, batch_size=2)
    assert np.isfinite(history[-1]["train_loss"])


def test_cli_refuses_a_network_checkpoint_missing_a_leaf(tmp_path, capsys):
    """check and --resume name the layer and the leaf (were: a traceback, a blamed optimizer)."""
    from functional_bp.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "xor", "--model", "dense 8, relu, dense 2", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    arrays = dict(np.load(out / "params.npz"))
    del arrays["p/2/W"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    capsys.readouterr()
    for argv in (["check", str(bad)],
                 ["train", "--resume", str(bad), "--epochs", "2", "--quiet", "--out",
                  str(tmp_path / "more")]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert re.search(r"layer 3 \(Dense\(features=2.*\): p/2/W missing", capsys.readouterr().err)


def test_column_layout_checks_labels_and_l2():
    from functional_bp import columns

    params = columns.to_columns(fbp.init_mlp(jax.random.key(0), [3, 4, 2]))
    x, acts = np.ones((3, 4), np.float32), ["relu", "identity"]
    with pytest.raises(ValueError, match=r"y: integer labels .*\[0, 2\).*the largest label is 2"):
        columns.value_and_grad(params, (x, np.array([0, 1, 2, 1])), activations=acts, loss=CE)
    with pytest.raises(ValueError, match=r"l2 must be finite and >= 0"):
        columns.value_and_grad(params, (x, np.array([0, 1, 1, 1])), activations=acts, loss=CE,
                               l2=-1.0)
    J, _ = columns.value_and_grad(params, (x, np.array([0, 1, 1, 1])), activations=acts, loss=CE)
    assert J > 0


def test_fit_refuses_non_finite_data_and_a_bad_learning_rate():
    """NaN features left the loss finite (ReLU maps NaN to 0) while W^1 became NaN."""
    net = fl.Sequential(fl.Dense(4), fl.Activation("relu"), fl.Dense(2))
    params = net.init(jax.random.key(0), (3,))
    opt = sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(1))
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    y = np.arange(12) % 2
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"train: x holds NaN or infinite values in 1 row\(s\), "
                                         r"first at row 7"):
        fit(state, (bad, y), network=net, loss=CE, optimizer=opt, epochs=1, batch_size=4)
    targets = np.eye(2, dtype=np.float32)[y]
    targets[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"test: y holds NaN or infinite values .*row 2"):
        fit(state, (x, y), (x, targets), network=net, loss=CE, optimizer=opt, epochs=1,
            batch_size=4)
    for rate in (-1.0, float("nan"), float("inf"), 0):
        with pytest.raises(ValueError, match=r"sgd\(learning_rate\): a finite number > 0"):
            sgd(rate)


@pytest.mark.parametrize("on_device", [True, False])
def test_value_range_on_the_host_and_on_the_device(on_device):
    """The accelerator route (a reduction, two numbers to the host) and the host route agree."""
    v = jnp.array([[3, -2], [7, 0]])
    assert tuple(map(int, _validate._value_range(v, on_device))) == (-2, 7)
    assert _validate._value_range(jnp.zeros((0, 3), jnp.int32), on_device) is None
    assert _validate._value_range(np.array([4, 1]), on_device) == (1, 4)
