"""The core property in float64: every leaf within 1e-10 of jax.grad.

Each test enables x64 only inside its own body (``jax.enable_x64``), so the
rest of the suite keeps JAX's float32 default.
"""

import jax
import jax.numpy as jnp
from hypothesis import example, given

import functional_bp as fbp
from helpers import assert_backprop_close, log_errors, reference_backprop, rtol_for
from strategies import cases, make_case

F64 = jnp.float64


def check_case(case):
    with jax.enable_x64(True):
        assert case.x.dtype == F64 and case.params[0]["W"].dtype == F64
        ours = fbp.backprop(case.params, case.batch, **case.kwargs())
        ref = reference_backprop(case.params, case.batch, **case.kwargs())
        assert all(leaf.dtype == F64 for leaf in jax.tree_util.tree_leaves(ours.grads))
        errs = assert_backprop_close(ours, ref, rtol_for(F64))
        log_errors(F64, errs)


@example(case=make_case([1, 1, 1, 1], 1, ["sigmoid"] * 3, "quadratic", dtype=F64, seed=1))
@example(case=make_case([6] + [8] * 11 + [3], 5, ["tanh"] * 11 + ["identity"],
                        "softmax_cross_entropy", dtype=F64, seed=5, target_kind="labels"))
@example(case=make_case([4, 6, 5], 8, ["relu", "identity"], "softmax_cross_entropy",
                        dtype=F64, seed=7, target_kind="soft_unnormalised"))
@example(case=make_case([3, 8, 8, 2], 6, ["sigmoid", "tanh", "identity"],
                        "sigmoid_cross_entropy", dtype=F64, seed=14, x_scale=1e3,
                        target_kind="binary"))
@given(case=cases(dtype=F64))
def test_backprop_matches_jax_grad_float64(case):
    check_case(case)
