"""The trainer applies the core's rules, checks what it holds on the host, and keeps structure.

- targets: ``fit``/``train_epoch``/``evaluate`` accept or refuse ``y`` exactly as
  ``value_and_grad`` does (one place for the rules);
- labels: integer labels outside [0, n_L) are refused by the trainer (it holds
  them), with no int32 wrap-around; the core keeps its documented all-zero row;
- half precision: refused by the trainer with the dtype and the fix;
- params as a tuple give tuples back, from every public function; nested
  Python lists in the layer dicts are accepted;
- the compiled configurations of each public function are a bounded LRU cache.
"""

import functools
import gc
import importlib
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import _validate
from functional_bp import layers as fl
from functional_bp.datasets import load_dataset
from functional_bp.train import (evaluate, fit, init_state, make_optimizer, sgd, train_epoch)

from helpers import assert_tree_close

ACTS = ["tanh", "identity"]
X = jax.random.normal(jax.random.key(1), (6, 3))
LABELS = jnp.array([0, 1, 1, 0, 1, 0])


def _params(dtype=jnp.float32):
    return fbp.init_mlp(jax.random.key(0), [3, 4, 2], dtype=dtype)


def _fit(params, data, *, loss="softmax_cross_entropy", optimizer=None, epochs=1, **kwargs):
    opt = optimizer or sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(2))
    return fit(state, data, activations=ACTS, loss=loss, optimizer=opt, epochs=epochs,
               batch_size=4, **kwargs)


# --- one place for the target rules -------------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "quadratic", "sigmoid_cross_entropy"])
def test_labels_for_a_loss_without_labels_are_refused_as_the_core_refuses_them(loss):
    with pytest.raises(ValueError) as core:
        fbp.value_and_grad(_params(), (X, LABELS), activations=ACTS, loss=loss)
    assert "must have shape (m, 2)" in str(core.value)
    state = init_state(_params(), optimizer=sgd(0.1), key=jax.random.key(2))
    calls = {
        "fit": lambda: _fit(_params(), (X, LABELS), loss=loss),
        "fit test=": lambda: _fit(_params(), (X, jnp.zeros((6, 2))), loss=loss,
                                  test=(X, LABELS)),
        "train_epoch": lambda: train_epoch(state, (X, LABELS), activations=ACTS, loss=loss,
                                           optimizer=sgd(0.1), batch_size=4),
        "evaluate": lambda: evaluate(_params(), (X, LABELS), activations=ACTS, loss=loss),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as trainer:
            call()
        assert str(trainer.value) == str(core.value), name


def test_labels_still_train_with_a_loss_that_takes_them():
    data = load_dataset("xor")
    state, history = _fit(fbp.init_mlp(jax.random.key(0), [2, 8, 2]),
                          (data.x_train, data.y_train), epochs=30,
                          optimizer=sgd(0.5), test=(data.x_test, data.y_test))
    assert history[-1]["train_accuracy"] > 0.9 and history[-1]["test_accuracy"] > 0.9
    # the same run with the one-hot targets written out: the same training, no accuracy
    onehot = (data.x_train, jax.nn.one_hot(data.y_train, 2))
    _, same = _fit(fbp.init_mlp(jax.random.key(0), [2, 8, 2]), onehot, epochs=30,
                   optimizer=sgd(0.5))
    assert same[-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-6)
    assert "train_accuracy" not in same[-1]


# --- labels the trainer holds are checked on the host --------------------------------------
@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2, 0, 1, 0]), r"train: .*\[0, 2\) .*n_L=2.*the largest label is 2"),
    (np.array([0, 1, 7, 0, 1, 0]), r"the largest label is 7"),
    (np.array([0, 1, -1, 0, 1, 0]), r"n_L=2.*the smallest label is -1"),
    # 2**32 would become 0 after a cast to int32: refused, not wrapped
    (np.array([0, 1, 2**32, 0, 1, 0], np.int64), r"n_L=2.*the largest label is 4294967296"),
    (np.array([0, 1, 2**32 + 1, 0, 1, 0], np.int64), r"the largest label is 4294967297"),
    (np.array([0, 1, -2**32, 0, 1, 0], np.int64), r"the smallest label is -4294967296"),
    (jnp.array([0, 1, 5, 0, 1, 0]), r"the largest label is 5"),
])
def test_out_of_range_labels_are_refused_by_the_trainer(labels, message):
    with pytest.raises(ValueError, match=message):
        _fit(_params(), (X, labels))
    state = init_state(_params(), optimizer=sgd(0.1), key=jax.random.key(2))
    with pytest.raises(ValueError, match=message.replace("train: ", "data: ")):
        train_epoch(state, (X, labels), activations=ACTS, loss="softmax_cross_entropy",
                    optimizer=sgd(0.1), batch_size=4)
    with pytest.raises(ValueError, match=message.replace("train: ", "data: ")):
        evaluate(_params(), (X, labels), activations=ACTS, loss="softmax_cross_entropy")


@pytest.mark.parametrize("part", ["test", "val"])
def test_out_of_range_labels_of_a_held_out_part_name_the_part(part):
    with pytest.raises(ValueError, match=rf"{part}: .*the largest label is 3"):
        _fit(_params(), (X, LABELS), **{part: (X, np.array([0, 3, 1, 0, 1, 0]))})


def test_the_core_keeps_its_documented_all_zero_row_for_labels_under_tracing():
    labels = jnp.array([0, 1, 5, 0, 1, -1])  # two rows out of range
    targets = jax.nn.one_hot(labels, 2)
    assert float(targets[2].sum()) == 0 and float(targets[5].sum()) == 0
    kwargs = dict(activations=ACTS, loss="softmax_cross_entropy")
    ours = jax.jit(lambda y: fbp.value_and_grad(_params(), (X, y), **kwargs))(labels)
    ref = fbp.value_and_grad(_params(), (X, targets), **kwargs)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    assert_tree_close(ours[1], ref[1], 2e-5)


# --- half precision ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_half_precision_training_is_refused_with_the_fix(dtype, optimizer):
    opt = make_optimizer(optimizer, 1e-2)
    message = (rf"train in float32 or float64; the params have dtype {jnp.dtype(dtype).name}"
               r".*astype\(jnp\.float32\)")
    with pytest.raises(TypeError, match=message):
        _fit(_params(dtype), (X, LABELS), optimizer=opt)
    state = init_state(_params(dtype), optimizer=opt, key=jax.random.key(2))
    with pytest.raises(TypeError, match=message):
        train_epoch(state, (X, LABELS), activations=ACTS, loss="softmax_cross_entropy",
                    optimizer=opt, batch_size=4)


def test_the_fix_trains_what_half_precision_turned_into_nan():
    # the run the message refuses, cast to float32 as it says: finite, and it learns
    data = load_dataset("xor")
    half = jax.tree.map(lambda a: a.astype(jnp.float16),
                        fbp.init_mlp(jax.random.key(0), [2, 8, 2]))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), half)
    _, history = _fit(params, (data.x_train, data.y_train), epochs=3,
                      optimizer=make_optimizer("adam", 1e-2))
    assert all(np.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # evaluation in half precision stays allowed (no optimizer state involved)
    assert np.isfinite(evaluate(half, (data.x_test, data.y_test), activations=ACTS,
                                loss="softmax_cross_entropy")["loss"])


# --- structure: tuples stay tuples, nested lists are accepted --------------------------------
NET = fl.Sequential(fl.Dense(4), fl.Activation("tanh"),
                    fl.Residual(fl.Dense(4), fl.Activation("relu")), fl.Dense(2))


def _as_tuples(tree):
    return tuple(_as_tuples(t) for t in tree) if isinstance(tree, (list, tuple)) else tree


def _public_grads(params, model):
    """Every public function's params-shaped result, by name."""
    batch = (X, LABELS)
    cfg = dict(model, loss="softmax_cross_entropy")
    opt = sgd(0.1)
    state = init_state(params, optimizer=opt, key=jax.random.key(2))
    return {
        "grad": fbp.grad(params, batch, **cfg, l2=0.1),
        "value_and_grad": fbp.value_and_grad(params, batch, **cfg, l2=0.1)[1],
        "backprop": fbp.backprop(params, batch, **cfg, l2=0.1).grads,
        "jax.grad(objective)": jax.grad(functools.partial(fbp.objective, **cfg, l2=0.1))(
            params, batch),
        "per_example_grads": jax.tree.map(lambda g: g.sum(0),
                                          fbp.per_example_grads(params, batch, **cfg)),
        "clipped_grad": fbp.clipped_grad(params, batch, **cfg, clip_norm=1e9),
        "custom_vjp_objective": jax.grad(fbp.custom_vjp_objective(**cfg, l2=0.1))(
            params, batch),
        "data_parallel_value_and_grad": fbp.data_parallel_value_and_grad(
            params, batch, **cfg, l2=0.1)[1],
        "fit": fit(state, batch, **cfg, optimizer=opt, epochs=1, batch_size=4)[0].params,
        "train_epoch": train_epoch(state, batch, **cfg, optimizer=opt, batch_size=4)[0].params,
    }


@pytest.mark.parametrize("form", ["activations", "network"])
def test_params_as_a_tuple_give_tuples_back_from_every_public_function(form):
    if form == "activations":
        params, model = _params(), {"activations": ACTS}
    else:
        params, model = NET.init(jax.random.key(0), (3,)), {"network": NET}
    as_list = _public_grads(params, model)
    as_tuple = _public_grads(_as_tuples(params), model)
    assert sorted(as_list) == sorted(as_tuple)
    for name in as_list:
        want = jax.tree_util.tree_structure(params)
        assert jax.tree_util.tree_structure(as_list[name]) == want, name
        want = jax.tree_util.tree_structure(_as_tuples(params))
        assert jax.tree_util.tree_structure(as_tuple[name]) == want, name
        for a, b in zip(jax.tree.leaves(as_tuple[name]), jax.tree.leaves(as_list[name])):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_nested_python_lists_in_the_layer_dicts_are_accepted():
    params = _params()
    nested = [{"W": np.asarray(p["W"]).tolist(), "b": np.asarray(p["b"]).tolist()}
              for p in params]
    assert isinstance(nested[0]["W"][0][0], float)
    ours, ref = _public_grads(nested, {"activations": ACTS}), _public_grads(params,
                                                                            {"activations": ACTS})
    for name in ref:
        if name in ("custom_vjp_objective", "jax.grad(objective)"):
            # jax.grad differentiates each number it is given: one derivative per number
            assert jax.tree_util.tree_structure(ours[name]) == \
                jax.tree_util.tree_structure(nested)
            ours[name] = _validate.params_as_arrays(ours[name])
        assert_tree_close(ours[name], ref[name], 2e-5)
    np.testing.assert_array_equal(fbp.forward(nested, X, activations=ACTS),
                                  fbp.forward(params, X, activations=ACTS))


# --- the compiled configurations are a bounded LRU cache -------------------------------------
def test_python_number_configurations_are_kept_in_a_bounded_lru_cache(monkeypatch):
    monkeypatch.setattr(_validate, "COMPILED_CACHE_SIZE", 3)
    backprop_module = importlib.import_module("functional_bp.backprop")
    cache = backprop_module._value_and_grad.compiled
    cache.clear()
    batch, cfg = (X, LABELS), dict(activations=ACTS, loss="softmax_cross_entropy")
    dropped = []
    for i in range(8):
        fbp.value_and_grad(_params(), batch, **cfg, l2=0.01 * (i + 1))
        assert len(cache) == min(i + 1, 3)
        dropped.append(weakref.ref(next(reversed(cache.values()))))
    assert [key[2][0] for key in cache] == [0.06, 0.07, 0.08]
    # least recently used, not first in: a hit keeps 0.06, the next value drops 0.07
    fbp.value_and_grad(_params(), batch, **cfg, l2=0.06)
    fbp.value_and_grad(_params(), batch, **cfg, l2=0.09)
    assert [key[2][0] for key in cache] == [0.08, 0.06, 0.09]
    # the dropped programs are freed, not only forgotten
    gc.collect()
    assert [ref() is None for ref in dropped] == [True] * 5 + [False, True, False]
    # an array l2 is one program for every value (the documented way to sweep)
    cache.clear()
    for i in range(8):
        fbp.value_and_grad(_params(), batch, **cfg, l2=jnp.asarray(0.01 * (i + 1)))
    assert len(cache) == 1


def test_the_default_bound_is_documented():
    assert _validate.COMPILED_CACHE_SIZE == 32
    assert "COMPILED_CACHE_SIZE" in _validate.jit_with_checks.__doc__
