"""How a public call runs: checks once per trace, numbers compiled in, arrays dynamic.

Each public function is one jitted function per configuration (activations,
loss, and the Python numbers among its arguments such as ``l2`` or
``clip_norm``); its input checks run while tracing. These tests pin down
what that must not change: every value of a number gets its own correct
result, an array argument stays differentiable, nested lists are accepted,
and a repeated call does not run the checks again.
"""

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp import _validate
from helpers import assert_tree_close, rtol_for
from strategies import make_case

F32 = jnp.float32


def test_each_python_l2_gives_its_own_result():
    case = make_case([3, 5, 2], 7, ["tanh", "identity"], "mse", seed=31)
    kw = case.kwargs(with_l2=False)
    penalty = 0.5 * sum(float(jnp.sum(layer["W"] ** 2)) for layer in case.params)
    J0 = float(fbp.value_and_grad(case.params, case.batch, **kw, l2=0.0)[0])
    for l2 in (0.5, 0.0, 2, 0.25):
        J, grads = fbp.value_and_grad(case.params, case.batch, **kw, l2=l2)
        np.testing.assert_allclose(float(J), J0 + l2 * penalty, rtol=1e-6)
        assert_tree_close(grads, jax.grad(fbp.objective)(case.params, case.batch, **kw, l2=l2),
                          rtol_for(F32))


def test_l2_as_an_array_stays_dynamic_and_differentiable():
    case = make_case([3, 5, 2], 7, ["relu", "identity"], "mse", seed=32)
    kw = case.kwargs(with_l2=False)
    penalty = 0.5 * sum(jnp.sum(layer["W"] ** 2) for layer in case.params)

    def J_of(l2):
        return fbp.value_and_grad(case.params, case.batch, **kw, l2=l2)[0]

    np.testing.assert_allclose(jax.grad(J_of)(jnp.asarray(0.3, F32)), penalty, rtol=1e-6)
    # a sweep over an array of l2 values under vmap
    Js = jax.vmap(J_of)(jnp.asarray([0.0, 0.1, 0.2], F32))
    np.testing.assert_allclose(Js[2] - Js[0], 0.2 * penalty, rtol=1e-5)


def test_clip_norm_as_a_number_or_an_array_agree():
    case = make_case([3, 5, 2], 7, ["tanh", "identity"], "mse", seed=33)
    kw = case.kwargs(with_l2=False)
    a = fbp.clipped_grad(case.params, case.batch, **kw, clip_norm=0.05)
    b = fbp.clipped_grad(case.params, case.batch, **kw, clip_norm=jnp.asarray(0.05, F32))
    assert_tree_close(a, b, rtol_for(F32))


def test_nested_lists_are_accepted_as_arrays():
    case = make_case([3, 4, 2], 5, ["tanh", "identity"], "mse", seed=34)
    kw = case.kwargs()
    as_lists = (np.asarray(case.x).tolist(), np.asarray(case.y).tolist())
    assert_tree_close(fbp.value_and_grad(case.params, as_lists, **kw),
                      fbp.value_and_grad(case.params, case.batch, **kw), 0.0)


def test_the_checks_run_once_per_new_shape(monkeypatch):
    calls = []
    prepare = _validate.prepare_model

    def counting(*args):
        calls.append(1)
        return prepare(*args)

    monkeypatch.setattr(_validate, "prepare_model", counting)
    jax.clear_caches()
    case = make_case([3, 7, 5], 11, ["softplus", "identity"], "mse", seed=35)
    kw = case.kwargs()
    for _ in range(3):
        fbp.value_and_grad(case.params, case.batch, **kw)
    assert len(calls) == 1, "a repeated call with the same shapes ran the checks again"
    fbp.value_and_grad(case.params, (case.x[:4], case.y[:4]), **kw)
    assert len(calls) == 2, "a new batch size must be checked"
