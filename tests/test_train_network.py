"""Training a network (network=): the scanned epoch equals a loop of jax.grad steps,
Dropout draws one mask per step, and checkpoints record and rebuild the network."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp.checkpoint import load_checkpoint
from functional_bp.losses import get_loss
from functional_bp.network import objective_from_arrays
from functional_bp.train import batch_plan, init_state, load_state, save_state, train_epoch
from helpers import assert_tree_close, rtol_for

NET = fl.Sequential(fl.Dense(5), fl.Activation("tanh"),
                    fl.Residual(fl.LayerNorm(), fl.Dense(5), fl.Activation("gelu")),
                    fl.Dense(3))


def _data(m, dtype):
    kx, ky = jax.random.split(jax.random.key(m))
    return jax.random.normal(kx, (m, 4), dtype), jax.random.randint(ky, (m,), 0, 3)


@pytest.mark.parametrize("net", [NET, fl.Sequential(*NET.layers[:3], fl.Dropout(0.3),
                                                     NET.layers[3])])
def test_network_epoch_equals_loop_of_autodiff_steps(net):
    """Each step: jax.grad of the plain objective on the real rows, with that step's dropout key."""
    m, B, l2, loss = 10, 4, 0.01, "softmax_cross_entropy"
    with jax.enable_x64(True):
        x, labels = _data(m, jnp.float64)
        params = net.init(jax.random.key(1), (4,), dtype=jnp.float64)
        opt, ks = optax.adam(0.01), jax.random.key(2)
        state = init_state(params, optimizer=opt, key=ks)
        for _ in range(2):
            state, _ = train_epoch(state, (x, labels), network=net, loss=loss, optimizer=opt,
                                   batch_size=B, l2=l2)

        y = jax.nn.one_hot(labels, 3, dtype=jnp.float64)

        def J(p, xb, yb, wb, key):
            return objective_from_arrays(net, p, xb, yb, l2, get_loss(loss), key, weights=wb)

        @jax.jit
        def step(p, opt_state, xb, yb, wb, key):
            updates, opt_state = opt.update(jax.grad(J)(p, xb, yb, wb, key), opt_state, p)
            return optax.apply_updates(p, updates), opt_state

        ref, opt_state = params, opt.init(params)
        for epoch in range(2):
            key = jax.random.fold_in(ks, epoch)
            idx, w = batch_plan(key, m, B, jnp.float64)
            keys = jax.random.split(jax.random.fold_in(key, 1), idx.shape[0])
            for rows, wb, k in zip(idx, w, keys):
                # padded rows (weight 0) stay in the batch, as in the scan: the dropout
                # masks depend on the batch's shape
                ref, opt_state = step(ref, opt_state, x[rows], y[rows], wb, k)
        assert_tree_close(state.params, ref, rtol_for(jnp.float64), "params")


def test_dropout_changes_training_and_is_reproducible():
    x, labels = _data(16, jnp.float32)
    net = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dropout(0.5), fl.Dense(3))
    plain = fl.Sequential(fl.Dense(8), fl.Activation("relu"), fl.Dense(3))
    params = net.init(jax.random.key(0), (4,))
    opt = optax.sgd(0.1)
    kw = dict(loss="softmax_cross_entropy", optimizer=opt, batch_size=4)
    runs = [train_epoch(init_state(p, optimizer=opt, key=jax.random.key(3)), (x, labels),
                        network=n, **kw)[0].params
            for n, p in ((net, params), (net, params), (plain, params[:2] + params[3:]))]
    assert_tree_close(runs[0], runs[1], 0.0)
    assert not np.allclose(runs[0][0]["W"], runs[2][0]["W"])


def test_network_checkpoint_records_and_rebuilds_the_network(tmp_path):
    x, labels = _data(12, jnp.float32)
    params = NET.init(jax.random.key(0), (4,))
    opt = optax.adam(0.01)
    kw = dict(network=NET, loss="softmax_cross_entropy", optimizer=opt, batch_size=4)
    state = init_state(params, optimizer=opt, key=jax.random.key(1))
    state, _ = fbp.fit(state, (x, labels), epochs=2, **kw)
    path = tmp_path / "net.npz"
    save_state(path, state, network=NET, loss="softmax_cross_entropy")
    ckpt = load_checkpoint(path)
    assert ckpt.network == NET and ckpt.metadata["network"] == fl.to_config(NET)
    # resuming: 2 + 2 epochs equal 4 in one go, bitwise
    loaded, meta = load_state(path, optimizer=opt)
    resumed, _ = fbp.fit(loaded, (x, labels), epochs=2, **dict(kw, network=ckpt.network))
    straight, _ = fbp.fit(init_state(params, optimizer=opt, key=jax.random.key(1)),
                          (x, labels), epochs=4, **kw)
    assert_tree_close(resumed.params, straight.params, 0.0)


def test_a_user_activation_cannot_be_recorded(tmp_path):
    cube = fbp.Activation("cube", lambda z: z ** 3, lambda z: 3 * z ** 2)
    net = fl.Sequential(fl.Dense(3), fl.Activation(cube))
    params = net.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="user-defined activation cannot be written"):
        fbp.save_params(tmp_path / "p.npz", params, network=net)


def test_dropout_with_a_mesh_is_refused():
    x, labels = _data(8, jnp.float32)
    net = fl.Sequential(fl.Dense(3), fl.Dropout(0.2))
    state = init_state(net.init(jax.random.key(0), (4,)), optimizer=optax.sgd(0.1),
                       key=jax.random.key(1))
    with pytest.raises(ValueError, match="Dropout and mesh="):
        fbp.fit(state, (x, labels), network=net, loss="softmax_cross_entropy",
                optimizer=optax.sgd(0.1), epochs=1, mesh=fbp.parallel.data_mesh())
