"""The core property: hand-derived backprop equals jax.grad of the objective.

For every drawn network, batch, activation list, loss and l2, the value, every
gradient leaf, every delta G^l = dJ/dZ^l and dJ/dX must match the reference
(``tests/helpers.py``) leaf by leaf, within the float32 tolerance stated there.
float64 runs the same property in ``test_float64.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given

import functional_bp as fbp
from helpers import (
    assert_backprop_close,
    assert_tree_close,
    float64_truth,
    log_errors,
    reference_backprop,
    rtol_for,
)
from strategies import cases, make_case

F32 = jnp.float32


def check_case(case):
    """Our backprop against the jax.grad reference, per leaf; returns the errors."""
    ours = fbp.backprop(case.params, case.batch, **case.kwargs())
    ref = reference_backprop(case.params, case.batch, **case.kwargs())
    truth = float64_truth(case.params, case.batch, **case.kwargs())
    errs = assert_backprop_close(ours, ref, rtol_for(case.dtype), truth)
    log_errors(case.dtype, errs)
    return ours


# The single-neuron chain of the scalar derivation: z = w x + b, a = g(z).
@example(case=make_case([1, 1], 1, ["sigmoid"], "quadratic", seed=1))
@example(case=make_case([1, 1, 1, 1], 1, ["sigmoid"] * 3, "quadratic", seed=2))
# Batch of one, width one, and a deep (12-layer) network.
@example(case=make_case([5, 7, 3], 1, ["tanh", "identity"], "mse", seed=3))
@example(case=make_case([1] * 8, 9, ["tanh", "relu", "elu", "gelu", "softplus",
                                      "leaky_relu", "sigmoid"], "quadratic", seed=4))
@example(case=make_case([6] + [8] * 11 + [3], 5, ["tanh"] * 11 + ["identity"],
                        "softmax_cross_entropy", seed=5, target_kind="labels"))
# Each kind of target.
@example(case=make_case([4, 6, 5], 8, ["relu", "identity"], "softmax_cross_entropy",
                        seed=6, target_kind="one_hot"))
@example(case=make_case([4, 6, 5], 8, ["relu", "identity"], "softmax_cross_entropy",
                        seed=7, target_kind="soft_unnormalised"))
@example(case=make_case([4, 6, 5], 8, ["relu", "identity"], "softmax_cross_entropy",
                        seed=8, target_kind="reals"))
@example(case=make_case([4, 6, 5], 8, ["gelu", "identity"], "softmax_cross_entropy",
                        seed=9, target_kind="labels"))
@example(case=make_case([4, 6, 3], 8, ["elu", "identity"], "sigmoid_cross_entropy",
                        seed=10, target_kind="soft"))
@example(case=make_case([4, 6, 3], 8, ["elu", "sigmoid"], "sigmoid_cross_entropy",
                        seed=11, target_kind="reals"))
# Found by the thorough profile: bias gradients whose rows cancel 30-fold.
@example(case=make_case([30, 4, 1, 24, 4, 32, 21], 6, ['sigmoid', 'leaky_relu', 'elu', 'sigmoid',
                        'sigmoid', 'leaky_relu'], 'sigmoid_cross_entropy', seed=80085, x_scale=0.1,
                        target_kind='binary'))
# Logits up to |a| ~ 1e4 and saturated hidden units (|z| ~ 1e3).
@example(case=make_case([3, 4], 6, ["identity"], "softmax_cross_entropy", seed=12,
                        x_scale=1e4, target_kind="soft"))
@example(case=make_case([3, 4], 6, ["identity"], "sigmoid_cross_entropy", seed=13,
                        x_scale=1e4, target_kind="binary"))
@example(case=make_case([3, 8, 8, 2], 6, ["sigmoid", "tanh", "identity"],
                        "softmax_cross_entropy", seed=14, x_scale=1e3, target_kind="one_hot"))
@example(case=make_case([3, 8, 8, 2], 6, ["softplus", "elu", "gelu"],
                        "sigmoid_cross_entropy", seed=15, x_scale=1e3, target_kind="binary"))
@example(case=make_case([3, 8, 2], 6, ["relu", "identity"], "mse", seed=16, l2=0.5))
@given(case=cases(dtype=F32))
def test_backprop_matches_jax_grad_float32(case):
    check_case(case)


@pytest.mark.parametrize("scale", [1e3, 1e4])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "sigmoid_cross_entropy"])
def test_huge_logits_and_saturated_units_stay_finite(loss, scale):
    kind = "one_hot" if loss == "softmax_cross_entropy" else "binary"
    case = make_case([3, 16, 16, 4], 8, ["sigmoid", "tanh", "identity"], loss,
                     seed=20, x_scale=scale, target_kind=kind)
    # Make the logits themselves huge: scale the last layer.
    case.params[-1]["W"] = case.params[-1]["W"] * scale
    r = check_case(case)
    for leaf in jax.tree_util.tree_leaves(r):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _kink_case(activation):
    """x = 0 and b^1 = 0 make every Z^1 exactly 0: the activation's kink."""
    case = make_case([3, 4, 2], 5, [activation, "identity"], "quadratic", seed=21)
    case.params[0]["b"] = jnp.zeros_like(case.params[0]["b"])
    case.x = jnp.zeros_like(case.x)
    return case


def test_relu_kink_gives_exact_zero_delta():
    case = _kink_case("relu")
    r = check_case(case)
    assert np.all(np.asarray(r.deltas[0]) == 0.0)  # relu'(0) = 0, exactly
    assert np.all(np.asarray(r.grads[0]["b"]) == 0.0)


def test_leaky_relu_kink_uses_slope_one():
    case = _kink_case("leaky_relu")
    r = check_case(case)
    back = r.deltas[1] @ case.params[1]["W"].T  # dJ/dA^1
    np.testing.assert_array_equal(np.asarray(r.deltas[0]), np.asarray(back))


def test_value_and_grad_and_grad_agree_with_backprop():
    case = make_case([4, 5, 3], 6, ["tanh", "identity"], "softmax_cross_entropy",
                     seed=22, l2=0.1, target_kind="labels")
    r = fbp.backprop(case.params, case.batch, **case.kwargs())
    J, g = fbp.value_and_grad(case.params, case.batch, **case.kwargs())
    g2 = fbp.grad(case.params, case.batch, **case.kwargs())
    assert float(J) == float(r.loss)
    assert_tree_close(g, r.grads, 0.0)
    assert_tree_close(g2, r.grads, 0.0)
    J_ref = fbp.objective(case.params, case.batch, **case.kwargs())
    assert_tree_close(J, J_ref, rtol_for(F32))


def test_grads_have_the_structure_shapes_and_dtypes_of_params():
    case = make_case([4, 5, 3], 6, ["relu", "identity"], "mse", seed=23)
    g = fbp.grad(case.params, case.batch, **case.kwargs())
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(case.params)
    for gl, pl in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(case.params)):
        assert gl.shape == pl.shape and gl.dtype == pl.dtype


def test_integer_labels_mean_one_hot_rows():
    case = make_case([4, 5, 3], 6, ["relu", "identity"], "softmax_cross_entropy",
                     seed=24, target_kind="labels")
    one_hot = jax.nn.one_hot(case.y, 3, dtype=F32)
    a = fbp.backprop(case.params, case.batch, **case.kwargs())
    b = fbp.backprop(case.params, (case.x, one_hot), **case.kwargs())
    assert_tree_close(a, b, 0.0)


def test_works_under_user_jit_and_vmap():
    case = make_case([4, 5, 3], 6, ["gelu", "identity"], "mse", seed=25, l2=0.01)
    kw = case.kwargs()
    jitted = jax.jit(lambda p, b: fbp.value_and_grad(p, b, **kw))
    assert_tree_close(jitted(case.params, case.batch),
                      fbp.value_and_grad(case.params, case.batch, **kw), 1e-6)

    # vmap over a stack of 3 batches equals a loop over them.
    xs = jnp.stack([case.x, 2 * case.x, -case.x])
    ys = jnp.stack([case.y, case.y + 1, case.y * 0.5])
    batched = jax.vmap(lambda x, y: fbp.value_and_grad(case.params, (x, y), **kw))(xs, ys)
    for i in range(3):
        one = fbp.value_and_grad(case.params, (xs[i], ys[i]), **kw)
        assert_tree_close(jax.tree.map(lambda t: t[i], batched), one, rtol_for(F32))

    # vmap over the params (an ensemble of networks) as well.
    stacked = jax.tree.map(lambda *t: jnp.stack(t), case.params, jax.tree.map(lambda t: 2 * t, case.params))
    ens = jax.vmap(lambda p: fbp.grad(p, case.batch, **kw))(stacked)
    assert_tree_close(jax.tree.map(lambda t: t[0], ens),
                      fbp.grad(case.params, case.batch, **kw), rtol_for(F32))


def test_user_activation_as_a_pair():
    def swish(z):
        return z * jax.nn.sigmoid(z)

    def swish_prime(z):
        s = jax.nn.sigmoid(z)
        return s + z * s * (1 - s)

    case = make_case([4, 6, 2], 7, ["tanh", "identity"], "mse", seed=26)
    for act in [(swish, swish_prime), fbp.Activation("swish", swish, swish_prime)]:
        case.activations = (act, "identity")
        check_case(case)


def test_a_wrong_user_derivative_is_caught():
    case = make_case([4, 6, 2], 7, ["tanh", "identity"], "mse", seed=27)
    case.activations = ((jnp.tanh, lambda z: 1 - jnp.tanh(z)), "identity")
    with pytest.raises(AssertionError, match=r"grads\[0\]"):
        check_case(case)
