"""custom_vjp_objective: jax.grad of it runs our rule, and equals jax.grad of objective."""

import jax
import jax.numpy as jnp
import optax
import pytest
from hypothesis import given, settings

import functional_bp as fbp
from functional_bp.custom_vjp import backward_from_trace, make_custom_vjp_objective
from helpers import assert_tree_close, reference_backprop, rtol_for
from helpers import profile_share
from strategies import cases, make_case



def check_case(case):
    f = fbp.custom_vjp_objective(**case.kwargs())
    ref = reference_backprop(case.params, case.batch, **case.kwargs())
    rtol = rtol_for(case.dtype)
    J, (g_params, g_x) = jax.value_and_grad(
        lambda params, x: f(params, (x, case.y)), argnums=(0, 1))(case.params, case.x)
    assert_tree_close(J, ref.loss, rtol, "loss")
    assert_tree_close(g_params, ref.grads, rtol, "grads")
    assert_tree_close(g_x, ref.input_grad, rtol, "input_grad")


@settings(max_examples=profile_share(5))  # each drawn shape compiles two programs
@given(cases())
def test_grad_equals_autodiff_float32(case):
    check_case(case)


@settings(max_examples=profile_share(8))
@given(cases(dtype=jnp.float64))
def test_grad_equals_autodiff_float64(case):
    with jax.enable_x64(True):
        check_case(case)


CASE = dict(sizes=[4, 6, 5, 3], m=7, activations=["tanh", "elu", "identity"],
            loss="softmax_cross_entropy", l2=0.01, target_kind="labels", seed=11)


def _case(dtype=jnp.float32):
    c = dict(CASE)
    return make_case(c.pop("sizes"), c.pop("m"), c.pop("activations"), c.pop("loss"),
                     dtype=dtype, **c)


def test_our_rule_is_the_one_that_runs():
    case = _case()
    calls = []

    def recording_backward(*args):
        calls.append(1)
        return backward_from_trace(*args)

    f = make_custom_vjp_objective(recording_backward, **case.kwargs())
    g = jax.grad(f)(case.params, case.batch)
    assert calls, "the installed backward was never called"
    assert_tree_close(g, reference_backprop(case.params, case.batch, **case.kwargs()).grads,
                      rtol_for(case.dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_wrong_rule_installed_the_same_way_fails(dtype):
    def forgets_the_l2_term(net, params, caches, out, y, l2, loss):
        return backward_from_trace(net, params, caches, out, y, 0.0, loss)

    def sums_instead_of_averaging(net, params, caches, out, y, l2, loss):
        grads, input_grad = backward_from_trace(net, params, caches, out, y, l2, loss)
        m = out.shape[0]
        return [g and {"W": g["W"], "b": m * g["b"]} for g in grads], input_grad

    case = _case(dtype)
    with jax.enable_x64(dtype == jnp.float64):
        ref = reference_backprop(case.params, case.batch, **case.kwargs()).grads
        for wrong in (forgets_the_l2_term, sums_instead_of_averaging):
            f = make_custom_vjp_objective(wrong, **case.kwargs())
            # The value is still right: only the rule is wrong.
            assert_tree_close(f(case.params, case.batch),
                              fbp.objective(case.params, case.batch, **case.kwargs()),
                              rtol_for(dtype))
            with pytest.raises(AssertionError, match="leaves over rtol"):
                assert_tree_close(jax.grad(f)(case.params, case.batch), ref,
                                  rtol_for(dtype))


def test_under_jit_and_vmap_over_batches():
    case = _case()
    f = fbp.custom_vjp_objective(**case.kwargs())
    xs = jnp.stack([case.x, 0.5 * case.x, -case.x, case.x[::-1]])
    ys = jnp.stack([case.y, case.y[::-1], case.y, case.y])
    grads = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0)))(case.params, (xs, ys))
    for k in range(xs.shape[0]):
        ref = reference_backprop(case.params, (xs[k], ys[k]), **case.kwargs()).grads
        assert_tree_close(jax.tree_util.tree_map(lambda g: g[k], grads), ref,
                          rtol_for(jnp.float32), f"batch {k}")


def test_in_an_optax_update():
    case = _case()
    f = fbp.custom_vjp_objective(**case.kwargs())
    opt = optax.adam(1e-2)

    def train(loss_fn):
        @jax.jit
        def step(params, state):
            grads = jax.grad(loss_fn)(params, case.batch)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params, state = case.params, opt.init(case.params)
        for _ in range(5):
            params, state = step(params, state)
        return params

    ours = train(f)
    ref = train(lambda p, b: fbp.objective(p, b, **case.kwargs()))
    assert_tree_close(ours, ref, rtol_for(jnp.float32))
    assert fbp.objective(ours, case.batch, **case.kwargs()) < f(case.params, case.batch)


def test_reverse_mode_only():
    case = _case()
    f = fbp.custom_vjp_objective(**case.kwargs())
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda p: f(p, case.batch), (case.params,), (case.params,))
    # The documented alternative: the plain objective has every derivative.
    H = jax.hessian(lambda p: fbp.objective(p, case.batch, **case.kwargs()))(case.params)
    assert H[0]["b"][0]["b"].shape == (6, 6)


def test_bad_inputs():
    case = _case()
    f = fbp.custom_vjp_objective(**case.kwargs())
    bad = [case.params[0], {"W": case.params[1]["W"], "b": jnp.zeros((5, 1))},
           case.params[2]]
    with pytest.raises(ValueError, match="layer 2: b must have shape"):
        f(bad, case.batch)
    with pytest.raises(ValueError, match="x has 3 features"):
        f(case.params, (case.x[:, :3], case.y))
    with pytest.raises(ValueError, match="unknown activation"):
        fbp.custom_vjp_objective(activations=["tanh", "swish"], loss="mse")
    with pytest.raises(ValueError, match="unknown loss"):
        fbp.custom_vjp_objective(activations=["tanh"], loss="hinge")
    with pytest.raises(TypeError, match="sequence with one entry per layer"):
        fbp.custom_vjp_objective(activations="tanh", loss="mse")
