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


# --- l2: known bad values are refused at the call, in every function that takes l2 ---------
def _l2_callers():
    import jax

    from functional_bp.train import fit, init_state, sgd, train_epoch

    batch = (X, Y)

    def fit_with(l2):
        state = init_state(PARAMS, optimizer=sgd(0.1), key=jax.random.key(0))
        return fit(state, batch, activations=ACTS, loss="mse", optimizer=sgd(0.1), epochs=1,
                   l2=l2)

    def train_epoch_with(l2):
        state = init_state(PARAMS, optimizer=sgd(0.1), key=jax.random.key(0))
        return train_epoch(state, batch, activations=ACTS, loss="mse", optimizer=sgd(0.1),
                           batch_size=2, l2=l2)

    core = {f.__name__: (lambda f: lambda l2: f(PARAMS, batch, activations=ACTS, loss="mse",
                                                 l2=l2))(f) for f in WITH_LOSS}
    return {
        **core,
        "data_parallel_value_and_grad": lambda l2: fbp.data_parallel_value_and_grad(
            PARAMS, batch, activations=ACTS, loss="mse", l2=l2),
        "custom_vjp_objective": lambda l2: fbp.custom_vjp_objective(
            activations=ACTS, loss="mse", l2=l2)(PARAMS, batch),
        "fit": fit_with,
        "train_epoch": train_epoch_with,
    }


L2_CALLERS = sorted(_l2_callers())
BAD_L2_VALUES = {
    "negative": (-1e-3, ValueError, r"l2 must be finite and >= 0.*got -0.001"),
    "nan": (float("nan"), ValueError, r"l2 must be finite and >= 0.*got nan"),
    "inf": (float("inf"), ValueError, r"l2 must be finite and >= 0.*got inf"),
    "complex": (1e-3 + 0j, TypeError, r"l2 must be a real number"),
    "bool": (True, TypeError, r"l2 must be a real number.*bool"),
    "numpy negative": (np.float32(-1.0), ValueError, r"l2 must be finite and >= 0"),
    "numpy bool": (np.bool_(True), TypeError, r"l2 must be a real number"),
    "array nan": (jnp.asarray(np.nan, jnp.float32), ValueError, r"l2 must be finite"),
    "array negative": (jnp.asarray(-0.5), ValueError, r"l2 must be finite and >= 0.*-0.5"),
    "complex array": (jnp.asarray(1 + 1j), TypeError, r"l2 must be a real number.*complex"),
    "bool array": (jnp.asarray(True), TypeError, r"l2 must be a real number.*bool"),
    "wrong shape": (jnp.ones(3), ValueError, r"l2 must be a scalar.*shape \(3,\)"),
    "a string": ("0.1", TypeError, r"l2 must be a real number.*str"),
}


@pytest.mark.parametrize("name", L2_CALLERS)
@pytest.mark.parametrize("bad", sorted(BAD_L2_VALUES))
def test_known_bad_l2_is_refused_naming_l2(name, bad):
    value, error, message = BAD_L2_VALUES[bad]
    with pytest.raises(error, match=message):
        _l2_callers()[name](value)


@pytest.mark.parametrize("name", L2_CALLERS)
@pytest.mark.parametrize("good", [0, 0.0, 1e-3, np.float32(0.01), jnp.asarray(0.01), 2])
def test_valid_l2_values_are_accepted(name, good):
    _l2_callers()[name](good)


def test_traced_l2_of_the_wrong_shape_is_named():
    import jax

    def f(l2):
        return fbp.value_and_grad(PARAMS, (X, Y), activations=ACTS, loss="mse", l2=l2)[0]

    with pytest.raises(ValueError, match=r"l2 must be a scalar.*shape \(2,\)"):
        jax.jit(f)(jnp.ones(2))
    # a traced scalar cannot be checked by value: it is the number it carries
    assert jnp.allclose(jax.jit(f)(jnp.asarray(0.25)), f(0.25))


# --- a user's activation whose dg is not elementwise: the error names the layer ------------
def _bad_activation(kind):
    import jax

    dg = {
        "scalar": lambda z: jnp.asarray(1.0, z.dtype),  # broadcasts silently
        "rows": lambda z: jnp.ones(z.shape[:1], z.dtype),  # (m,): broadcasts when m == n_l
        "dtype": lambda z: (z > 0).astype(jnp.int32),
    }[kind]
    return fbp.Activation("swish", lambda z: z * jax.nn.sigmoid(z), dg)


@pytest.mark.parametrize("kind", ["scalar", "rows", "dtype"])
@pytest.mark.parametrize("fn", WITH_LOSS + [fbp.per_example_grads])
def test_wrong_dg_names_the_layer_with_activations(fn, kind):
    # m == n_2 == 4: a dg of shape (m,) would broadcast against Z^2 (m, n_2)
    params = [layer((3, 4), (4,)), layer((4, 4), (4,)), layer((4, 2), (2,))]
    acts = ["relu", _bad_activation(kind), "identity"]
    with pytest.raises(ValueError, match=r"layer 2 \(activation 'swish'\): dg\(z\) must have "
                                         r"the shape and dtype of z, \(4, 4\) float32"):
        fn(params, (jnp.ones((4, 3)), jnp.zeros((4, 2))), activations=acts, loss="mse")


@pytest.mark.parametrize("kind", ["scalar", "rows", "dtype"])
def test_wrong_dg_names_the_layer_with_a_network(kind):
    import jax

    from functional_bp import layers as fl

    bad = fl.Activation(_bad_activation(kind))
    batch = (jnp.ones((4, 3)), jnp.zeros((4, 2)))
    net = fl.Sequential(fl.Dense(4), bad, fl.Dense(2))
    params = net.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"layer 2 \(activation 'swish'\): dg\(z\) must have"):
        fbp.value_and_grad(params, batch, network=net, loss="mse")
    nested = fl.Sequential(fl.Dense(4), fl.Residual(fl.Dense(4), bad), fl.Dense(2))
    params = nested.init(jax.random.key(0), (3,))
    for fn in (fbp.grad, fbp.backprop, fbp.clipped_grad):
        kwargs = {"clip_norm": 1.0} if fn is fbp.clipped_grad else {}
        with pytest.raises(ValueError, match=r"layer 2\.layer 2 \(activation 'swish'\)"):
            fn(params, batch, network=nested, loss="mse", **kwargs)


def test_a_correct_custom_activation_still_works():
    import jax

    swish = fbp.Activation("swish", lambda z: z * jax.nn.sigmoid(z),
                           lambda z: jax.nn.sigmoid(z) * (1 + z * (1 - jax.nn.sigmoid(z))))
    params = [layer((3, 4), (4,)), layer((4, 2), (2,))]
    params[0]["W"] = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    ours = fbp.grad(params, (X, Y), activations=[swish, "identity"], loss="mse")
    ref = jax.grad(fbp.objective)(params, (X, Y), activations=[swish, "identity"], loss="mse")
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


# --- static configuration that arrives traced ----------------------------------------------
@pytest.mark.parametrize("what", ["activations", "loss", "network"])
def test_traced_configuration_says_it_is_static_and_how_to_jit(what):
    import jax

    def f(params, batch, config):
        kwargs = {"activations": ACTS, "loss": "mse"}
        if what == "network":
            kwargs.pop("activations")
        kwargs[what] = config
        return fbp.value_and_grad(params, batch, **kwargs)

    with pytest.raises(TypeError, match=rf"{what} is static configuration.*functools\.partial"
                                        r".*static_argnames"):
        jax.jit(f)(PARAMS, (X, Y), jnp.zeros(2))


def test_the_documented_ways_to_jit_give_the_direct_result():
    import functools

    import jax

    direct = fbp.value_and_grad(PARAMS, (X, Y), activations=ACTS, loss="mse", l2=0.1)
    with_partial = jax.jit(functools.partial(fbp.value_and_grad, activations=ACTS, loss="mse"))
    with_static = jax.jit(fbp.value_and_grad, static_argnames=("activations", "loss"))
    for J, grads in (with_partial(PARAMS, (X, Y), l2=0.1),
                     with_static(PARAMS, (X, Y), activations=tuple(ACTS), loss="mse", l2=0.1)):
        np.testing.assert_allclose(J, direct[0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(direct[1])):
            np.testing.assert_allclose(a, b, rtol=1e-6)


# --- params given as nested Python lists ---------------------------------------------------
def test_a_layer_given_as_a_list_is_named():
    with pytest.raises(TypeError, match=r"layer 1: expected a dict with keys 'W' and 'b', "
                                        r"got list"):
        fbp.grad([[p["W"], p["b"]] for p in PARAMS], (X, Y), activations=ACTS, loss="mse")
