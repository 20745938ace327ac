"""Bad input gets a clear ValueError/TypeError at the call, before anything is computed.

Every message names the problem and the fix: the layer, the expected and the
actual shape, or the valid names. Each check is exercised through every core
public function that takes the argument.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp

rng = np.random.default_rng(0)
PARAMS = [
    {"W": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), "b": jnp.zeros(4)},
    {"W": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32), "b": jnp.zeros(2)},
]
X = jnp.ones((5, 3))
Y = jnp.zeros((5, 2))
ACTS = ["relu", "identity"]

WITH_LOSS = [fbp.objective, fbp.value_and_grad, fbp.grad, fbp.backprop]


def call(fn, params=PARAMS, x=X, y=Y, activations=ACTS, loss="mse"):
    if fn is fbp.forward:
        return fn(params, x, activations=activations)
    return fn(params, (x, y), activations=activations, loss=loss)


ALL = [fbp.forward] + WITH_LOSS


def layer(W_shape, b_shape, **extra):
    return {"W": jnp.zeros(W_shape), "b": jnp.zeros(b_shape), **extra}


@pytest.mark.parametrize("fn", ALL)
def test_wrong_number_of_activations(fn):
    with pytest.raises(ValueError, match="got 3 activations for a network of 2 layers"):
        call(fn, activations=["relu"] * 3)


@pytest.mark.parametrize("fn", ALL)
def test_activations_as_a_single_string(fn):
    with pytest.raises(TypeError, match="one entry per layer"):
        call(fn, activations="relu")


@pytest.mark.parametrize("fn", ALL)
def test_unknown_activation(fn):
    with pytest.raises(ValueError, match=r"layer 2: unknown activation 'softmax'.*'gelu'"):
        call(fn, activations=["relu", "softmax"])


@pytest.mark.parametrize("fn", WITH_LOSS)
def test_unknown_loss(fn):
    with pytest.raises(ValueError, match=r"unknown loss 'cross_entropy'.*softmax_cross_entropy"):
        call(fn, loss="cross_entropy")


@pytest.mark.parametrize("fn", ALL)
def test_width_mismatch_between_layers(fn):
    params = [layer((3, 4), (4,)), layer((5, 2), (2,))]
    with pytest.raises(ValueError, match=r"layer 2: W has shape \(5, 2\).*expected W of shape \(4, 2\)"):
        call(fn, params=params)


@pytest.mark.parametrize("fn", ALL)
def test_x_width_mismatch(fn):
    with pytest.raises(ValueError, match=r"x has 7 features but layer 1 expects n_0=3.*\(m, 3\)"):
        call(fn, x=jnp.ones((5, 7)))


@pytest.mark.parametrize("fn", WITH_LOSS)
def test_y_width_mismatch(fn):
    with pytest.raises(ValueError, match=r"y has width 3 but the network outputs n_L=2.*\(5, 2\)"):
        call(fn, y=jnp.zeros((5, 3)))


@pytest.mark.parametrize("fn", WITH_LOSS)
def test_row_counts_differ(fn):
    with pytest.raises(ValueError, match="x has 5 rows but y has 4 rows"):
        call(fn, y=jnp.zeros((4, 2)))


@pytest.mark.parametrize("fn", ALL)
def test_empty_batch(fn):
    with pytest.raises(ValueError, match="batch is empty"):
        call(fn, x=jnp.ones((0, 3)), y=jnp.zeros((0, 2)))


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("shape", [(3,), (2, 5, 3), ()])
def test_x_not_2d(fn, shape):
    with pytest.raises(ValueError, match=r"x must be 2-D \(m examples, n_0=3 features\)"):
        call(fn, x=jnp.ones(shape))


@pytest.mark.parametrize("fn", ALL)
def test_layer_dict_missing_key(fn):
    with pytest.raises(ValueError, match=r"layer 1: .*missing \['b'\]"):
        call(fn, params=[{"W": jnp.zeros((3, 4))}, PARAMS[1]])


@pytest.mark.parametrize("fn", ALL)
def test_layer_dict_extra_key(fn):
    with pytest.raises(ValueError, match=r"layer 2: .*extra \['gamma'\]"):
        call(fn, params=[PARAMS[0], layer((4, 2), (2,), gamma=jnp.ones(2))])


@pytest.mark.parametrize("fn", ALL)
def test_bias_as_a_column_vector(fn):
    params = [PARAMS[0], layer((4, 2), (2, 1))]
    with pytest.raises(ValueError, match=r"layer 2: b must have shape \(2,\).*got \(2, 1\).*column"):
        call(fn, params=params)


@pytest.mark.parametrize("fn", ALL)
def test_params_not_a_list_of_dicts(fn):
    with pytest.raises(TypeError, match="one dict"):
        call(fn, params={"W": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
    with pytest.raises(TypeError, match="layer 1: expected a dict"):
        call(fn, params=[(jnp.zeros((3, 2)), jnp.zeros(2))])


@pytest.mark.parametrize("fn", WITH_LOSS)
def test_y_rank_the_loss_cannot_take(fn):
    with pytest.raises(ValueError, match=r"y for loss mse must have shape \(m, 2\); got shape \(5,\)"):
        call(fn, y=jnp.zeros(5))
    with pytest.raises(ValueError, match=r"y for loss softmax_cross_entropy must have shape "
                                         r"\(m, 2\) or integer labels \(m,\)"):
        call(fn, y=jnp.zeros((5, 2, 1)), loss="softmax_cross_entropy")


@pytest.mark.parametrize("fn", WITH_LOSS)
def test_float_labels_for_softmax(fn):
    with pytest.raises(TypeError, match="class labels and must be integers"):
        call(fn, y=jnp.zeros(5), loss="softmax_cross_entropy")


def test_batch_not_a_pair():
    with pytest.raises(TypeError, match=r"batch must be a pair \(x, y\)"):
        fbp.grad(PARAMS, X, activations=ACTS, loss="mse")


def test_init_mlp_errors():
    import jax

    with pytest.raises(ValueError, match="at least two positive integers"):
        fbp.init_mlp(jax.random.key(0), [3])
    with pytest.raises(ValueError, match="at least two positive integers"):
        fbp.init_mlp(jax.random.key(0), [3, 0, 2])
    with pytest.raises(ValueError, match=r"unknown scheme 'xavier'.*'glorot'"):
        fbp.init_mlp(jax.random.key(0), [3, 2], scheme="xavier")
    with pytest.raises(TypeError, match="floating"):
        fbp.init_mlp(jax.random.key(0), [3, 2], dtype=jnp.int32)
