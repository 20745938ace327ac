"""The column layout equals jax.grad of the plain objective, and the row layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import functional_bp as fbp
from functional_bp import columns
from helpers import assert_tree_close, reference_backprop, rtol_for
from helpers import profile_share
from strategies import cases, make_case



def column_batch(case):
    y = case.y if case.y.ndim == 1 else case.y.T
    return case.x.T, y


def check_case(case):
    rtol = rtol_for(case.dtype)
    cparams = columns.to_columns(case.params)
    ours = columns.backprop(cparams, column_batch(case), **case.kwargs())
    ref = reference_backprop(case.params, case.batch, **case.kwargs())  # jax.grad, rows
    assert_tree_close(ours.loss, ref.loss, rtol, "loss")
    assert_tree_close(ours.grads, columns.to_columns(ref.grads), rtol, "grads")
    assert_tree_close([d.T for d in ours.deltas], list(ref.deltas), rtol, "deltas")
    assert_tree_close(ours.input_grad.T, ref.input_grad, rtol, "input_grad")
    # The two hand-derived layouts agree to rounding.
    rows = fbp.backprop(case.params, case.batch, **case.kwargs())
    assert_tree_close(columns.to_rows(ours.grads), rows.grads, rtol, "rows vs columns")
    J, grads = columns.value_and_grad(cparams, column_batch(case), **case.kwargs())
    assert_tree_close((J, grads), (ours.loss, ours.grads), 0.0)


@settings(max_examples=profile_share(6))  # each drawn shape compiles three programs
@given(cases())
def test_columns_float32(case):
    check_case(case)


@settings(max_examples=profile_share(10))
@given(cases(dtype=jnp.float64))
def test_columns_float64(case):
    with jax.enable_x64(True):
        check_case(case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_converters_are_exact_inverses(dtype):
    case = make_case([5, 3, 2], 1, ["relu", "identity"], "mse", dtype=dtype)
    with jax.enable_x64(dtype == jnp.float64):
        c = columns.to_columns(case.params)
        assert [(p["W"].shape, p["b"].shape) for p in c] == [((3, 5), (3, 1)),
                                                              ((2, 3), (2, 1))]
        back = columns.to_rows(c)
        for p, q in zip(back, case.params):
            for k in ("W", "b"):
                assert q[k].dtype == p[k].dtype and np.array_equal(p[k], q[k])


def test_column_errors_speak_columns():
    case = make_case([4, 3, 2], 5, ["tanh", "identity"], "softmax_cross_entropy",
                     target_kind="labels")
    c = columns.to_columns(case.params)
    kw = case.kwargs()
    with pytest.raises(ValueError, match=r"layer 2: b must be a column of shape \(2, 1\)"):
        columns.value_and_grad([c[0], {"W": c[1]["W"], "b": c[1]["b"][:, 0]}],
                               column_batch(case), **kw)
    with pytest.raises(ValueError, match=r"layer 2: W has shape \(3, 2\) but layer 1 outputs width 3"):
        columns.value_and_grad([c[0], {"W": c[1]["W"].T, "b": c[1]["b"]}],
                               column_batch(case), **kw)
    with pytest.raises(ValueError, match=r"x must have shape \(n_0=4, m\)"):
        columns.value_and_grad(c, case.batch, **kw)  # rows passed as columns
    with pytest.raises(ValueError, match=r"y must have shape \(2, 5\)"):
        columns.value_and_grad(c, (case.x.T, jnp.zeros((5, 2))), **kw)
    with pytest.raises(ValueError, match="b must have shape"):  # row check in to_columns
        columns.to_columns(c)
    with pytest.raises(ValueError, match="b must be a column"):
        columns.to_rows(case.params)
