"""Multi-device tests of data_parallel_value_and_grad, on 4 host devices.

Not collected by default (the name does not start with ``test_``):
tests/test_parallel.py runs this file with pytest in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``, so the rest of the
suite keeps one device. Every test compares with the single-device reference,
``jax.grad`` of the plain-JAX objective (tests/helpers.py), per leaf.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from jax.sharding import NamedSharding, PartitionSpec as P

import functional_bp as fbp
from functional_bp import parallel
from helpers import assert_tree_close, reference_backprop, rtol_for
from strategies import cases, make_case

D = 4
pytestmark = pytest.mark.skipif(
    jax.device_count() != D, reason=f"needs {D} devices (run through test_parallel.py)"
)

PROBLEMS = {
    "softmax_ce": ([5, 7, 3], ("tanh", "identity"), "softmax_cross_entropy", "labels", 0.1),
    "quadratic": ([4, 6, 5, 2], ("relu", "gelu", "identity"), "quadratic", "reals", 0.0),
    "sigmoid_ce": ([3, 8, 4], ("elu", "sigmoid"), "sigmoid_cross_entropy", "binary", 1e-3),
    "mse": ([6, 2], ("softplus",), "mse", "reals", 0.5),
}
# (problem, m): m divisible by D and not, including m < D and m = 1.
FLOAT64_CASES = [("softmax_ce", 1), ("softmax_ce", 8), ("quadratic", 5), ("quadratic", 4),
                 ("sigmoid_ce", 3), ("sigmoid_ce", 7), ("mse", 13)]
FLOAT32_CASES = [("softmax_ce", 5), ("quadratic", 8)]


def check_against_reference(case, mesh=None):
    J, grads = fbp.data_parallel_value_and_grad(case.params, case.batch, mesh=mesh,
                                                **case.kwargs())
    ref = reference_backprop(case.params, case.batch, **case.kwargs())
    rtol = rtol_for(case.dtype)
    assert_tree_close(J, ref.loss, rtol, "loss")
    assert_tree_close(grads, ref.grads, rtol, "grads")
    # Also against the single-device hand-derived pass: the same equations.
    J1, grads1 = fbp.value_and_grad(case.params, case.batch, **case.kwargs())
    assert_tree_close(grads, grads1, rtol, "grads vs value_and_grad")
    assert_tree_close(J, J1, rtol, "loss vs value_and_grad")
    return J, grads


def test_four_devices():
    assert jax.device_count() == D


@pytest.mark.parametrize("name, m", FLOAT64_CASES)
def test_float64_any_batch_size(name, m):
    sizes, acts, loss, kind, l2 = PROBLEMS[name]
    case = make_case(sizes, m, acts, loss, l2=l2, dtype=jnp.float64, seed=m,
                     target_kind=kind)
    with jax.enable_x64(True):
        check_against_reference(case)


@pytest.mark.parametrize("name, m", FLOAT32_CASES)
def test_float32_any_batch_size(name, m):
    sizes, acts, loss, kind, l2 = PROBLEMS[name]
    case = make_case(sizes, m, acts, loss, l2=l2, dtype=jnp.float32, seed=m,
                     target_kind=kind)
    check_against_reference(case)


@settings(max_examples=6)  # each example compiles for 4 devices
@given(case=cases(dtype=jnp.float64))
def test_float64_property(case):
    with jax.enable_x64(True):
        check_against_reference(case)


def _meshes():
    devices = jax.devices()
    return {
        "explicit": jax.make_mesh((D,), ("data",)),
        "data_and_model": jax.make_mesh((2, 2), ("data", "model")),
        "model_and_data": jax.make_mesh((2, 2), ("model", "data")),
        "two_of_four": parallel.data_mesh(devices[1:3]),
        "one_device": parallel.data_mesh(devices[:1]),
    }


@pytest.mark.parametrize("name", list(_meshes()))
def test_meshes(name, m=6):
    mesh = _meshes()[name]
    case = make_case([4, 5, 3], m, ("tanh", "identity"), "softmax_cross_entropy",
                     l2=0.1, dtype=jnp.float64, seed=1, target_kind="soft")
    with jax.enable_x64(True):
        J, grads = check_against_reference(case, mesh)
    # Results are replicated over the mesh's devices.
    for leaf in [J, *jax.tree.leaves(grads)]:
        assert leaf.sharding.is_fully_replicated
        assert leaf.sharding.device_set == set(mesh.devices.flat)


def test_rows_really_split():
    """The compiled computation has one all-reduce, and each device sees m/D rows."""
    case = make_case([4, 5, 3], 8, ("tanh", "identity"), "quadratic", seed=2)
    mesh = parallel.data_mesh()
    x = parallel.shard_rows(case.x, mesh)
    assert [s.data.shape for s in x.addressable_shards] == [(2, 4)] * D
    hlo = jax.jit(
        lambda p, x, y: parallel.value_and_grad_from_arrays(
            p, x, y, 0.0, tuple(fbp.ACTIVATIONS[a] for a in case.activations),
            fbp.LOSSES[case.loss], mesh)
    ).lower(case.params, x, case.y).compile().as_text()
    assert hlo.count("all-reduce(") + hlo.count("all-reduce-start(") == 1


def test_presharded_input_and_jit():
    case = make_case([4, 5, 3], 8, ("relu", "identity"), "softmax_cross_entropy",
                     dtype=jnp.float64, seed=3, target_kind="labels")
    with jax.enable_x64(True):
        mesh = parallel.data_mesh()
        batch = (parallel.shard_rows(case.x, mesh), parallel.shard_rows(case.y, mesh))
        params = parallel.replicate(case.params, mesh)
        f = jax.jit(lambda p, b: fbp.data_parallel_value_and_grad(
            p, b, mesh=mesh, **case.kwargs()))
        J, grads = f(params, batch)
        ref = reference_backprop(case.params, case.batch, **case.kwargs())
        assert_tree_close(J, ref.loss, 1e-10, "loss")
        assert_tree_close(grads, ref.grads, 1e-10, "grads")


def test_summing_twice_is_caught():
    """A second psum (the shard_map trap) multiplies by D: the comparison fails."""
    case = make_case([4, 5, 3], 8, ("tanh", "identity"), "quadratic",
                     dtype=jnp.float64, seed=4)
    with jax.enable_x64(True):
        mesh = parallel.data_mesh()
        acts = tuple(fbp.ACTIVATIONS[a] for a in case.activations)
        x, y, w = parallel.pad_rows(case.x, case.y, D)
        once = parallel.sharded_value_and_grad(case.params, x, y, w, acts,
                                               fbp.LOSSES["quadratic"], mesh)[1]
        twice = jax.shard_map(lambda g: jax.lax.psum(g, "data"), mesh=mesh,
                              in_specs=P(), out_specs=P())(once)
        ref = reference_backprop(case.params, case.batch, **case.kwargs()).grads
        assert_tree_close(once, ref, 1e-10)
        with pytest.raises(AssertionError):
            assert_tree_close(twice, ref, 1e-10)
        np.testing.assert_allclose(twice[0]["W"], D * np.asarray(ref[0]["W"]), rtol=1e-12)


def test_padding_rows_do_not_count():
    """With m = 5 on 4 devices, 3 padding rows: weights 1/5 on real rows, 0 else."""
    case = make_case([3, 2], 5, ("identity",), "quadratic", dtype=jnp.float64, seed=5)
    with jax.enable_x64(True):
        x, y, w = parallel.pad_rows(case.x, case.y, D)
        assert x.shape == (8, 3) and y.shape == (8, 2)
        np.testing.assert_array_equal(w, [0.2] * 5 + [0.0] * 3)
        mesh = jax.make_mesh((D,), ("data",))
        sharded = NamedSharding(mesh, P("data"))
        assert jax.device_put(x, sharded).addressable_shards[3].data.shape == (2, 3)


# --- training: the fused epoch, data parallel ------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_data_parallel_training_equals_one_device(dtype):
    """fit(mesh=...) equals fit() on one device, up to rounding: m = 47 rows in
    minibatches of B = 10 (neither a multiple of 4; the last batch has 7 rows)."""
    from functional_bp.train import fit, init_state, sgd

    with jax.enable_x64(dtype == jnp.float64):
        kp, kx, ky, ks = jax.random.split(jax.random.key(7), 4)
        params = fbp.init_mlp(kp, [3, 8, 4], dtype=dtype)
        x = jax.random.normal(kx, (47, 3), dtype=dtype)
        y = jax.random.randint(ky, (47,), 0, 4)
        opt = sgd(0.3)
        kw = dict(activations=("tanh", "identity"), loss="softmax_cross_entropy",
                  optimizer=opt, epochs=3, batch_size=10, l2=1e-3)
        one, hist_one = fit(init_state(params, optimizer=opt, key=ks), (x, y), **kw)
        many, hist_many = fit(init_state(params, optimizer=opt, key=ks), (x, y),
                              mesh=parallel.data_mesh(), **kw)
        rtol = rtol_for(dtype)
        assert len(many.params[0]["W"].sharding.device_set) == D  # really on 4 devices
        assert_tree_close(many.params, one.params, rtol, "trained params")
        moved = jax.tree.map(lambda a, b: a - b, one.params, params)
        assert min(float(jnp.max(jnp.abs(d))) for d in jax.tree.leaves(moved)) > 1e-3
        for a, b in zip(hist_many, hist_one):
            assert abs(a["train_loss"] - b["train_loss"]) <= rtol * abs(b["train_loss"])


# --- networks (network=): the same split, any layers --------------------------------
@pytest.mark.parametrize("m", [3, 7])
def test_network_data_parallel_equals_reference(m):
    from functional_bp import layers as fl

    net = fl.Sequential(fl.Dense(6), fl.Activation("gelu"),
                        fl.Residual(fl.LayerNorm(), fl.Dense(6), fl.Activation("tanh")),
                        fl.Dense(3))
    with jax.enable_x64(True):
        params = net.init(jax.random.key(m), (4,), dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (m, 4), jnp.float64)
        y = jax.random.randint(jax.random.key(2), (m,), 0, 3)
        kw = dict(network=net, loss="softmax_cross_entropy", l2=0.1)
        J, grads = fbp.data_parallel_value_and_grad(params, (x, y), **kw)
        J_ref, ref = jax.value_and_grad(lambda p: fbp.objective(p, (x, y), **kw))(params)
        assert_tree_close(J, J_ref, rtol_for(jnp.float64), "loss")
        assert_tree_close(grads, ref, rtol_for(jnp.float64), "grads")


def test_cli_devices(tmp_path):
    """functional-bp train --devices 4 writes the same params as --devices 1."""
    from functional_bp.cli import main

    common = ["train", "--data", "xor", "--hidden", "8", "--activation", "tanh",
              "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "10", "--epochs", "3",
              "--quiet"]
    for n in (1, 4):
        assert main(common + ["--devices", str(n), "--out", str(tmp_path / f"d{n}")]) == 0
    one, four = (np.load(tmp_path / f"d{n}" / "params.npz") for n in (1, 4))
    weights = [k for k in one.files if k[0] in "Wb" and k[1:].isdigit()]
    assert len(weights) == 4, one.files  # W1, b1, W2, b2
    for k in weights:
        assert_tree_close(four[k], one[k], 2e-5, k)
    with pytest.raises(SystemExit):
        main(common + ["--devices", "5", "--out", str(tmp_path / "d5")])


# --- a GPT (token inputs, sequence labels with unscored positions) -------------------
@pytest.mark.parametrize("m", [4, 6])
def test_gpt_data_parallel_equals_one_device(m):
    from functional_bp import models

    net = models.gpt(vocab_size=7, block_size=5, n_layer=1, n_head=2, n_embd=8, dropout=0.1)
    with jax.enable_x64(True):
        params = net.init(jax.random.key(m), (5,), dtype=jnp.float64)
        x = jax.random.randint(jax.random.key(1), (m, 5), 0, 7)
        y = jax.random.randint(jax.random.key(2), (m, 5), -1, 7)  # -1: not scored
        kw = dict(network=net, loss="softmax_cross_entropy", l2=0.1)
        J, grads = fbp.data_parallel_value_and_grad(params, (x, y), **kw)
        J_one, one = fbp.value_and_grad(params, (x, y), **kw)
        assert_tree_close(J, J_one, rtol_for(jnp.float64), "loss")
        assert_tree_close(grads, one, rtol_for(jnp.float64), "grads")


def test_gpt_data_parallel_fit_equals_one_device():
    """fit(mesh=...) of a GPT on token windows equals fit() on one device (float64)."""
    from functional_bp import models
    from functional_bp.train import fit, init_state, sgd

    net = models.gpt(vocab_size=7, block_size=5, n_layer=1, n_head=2, n_embd=8)
    with jax.enable_x64(True):
        params = net.init(jax.random.key(3), (5,), dtype=jnp.float64)
        x = jax.random.randint(jax.random.key(4), (23, 5), 0, 7)
        y = jnp.concatenate([x[:, 1:], jnp.full((23, 1), -1, x.dtype)], axis=1)  # next token
        opt = sgd(0.5)
        kw = dict(network=net, loss="softmax_cross_entropy", optimizer=opt, epochs=2,
                  batch_size=6)
        ks = jax.random.key(5)
        one, hist_one = fit(init_state(params, optimizer=opt, key=ks), (x, y), **kw)
        many, hist_many = fit(init_state(params, optimizer=opt, key=ks), (x, y),
                              mesh=parallel.data_mesh(), **kw)
        assert_tree_close(many.params, one.params, rtol_for(jnp.float64), "trained params")
        moved = jax.tree.map(lambda a, b: a - b, one.params, params)
        assert max(float(jnp.max(jnp.abs(d))) for d in jax.tree.leaves(moved)) > 1e-3
        assert abs(hist_many[-1]["train_loss"] - hist_one[-1]["train_loss"]) <= 1e-10
