"""check_gradients: passes the library's own gradient, catches wrong ones, prints a table."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import functional_bp as fbp
from functional_bp.activations import Activation
from functional_bp.checking import GradientReport, GradientRow
from strategies import cases, make_case
from helpers import rtol_for


def _profile_share(divisor):
    """A share of the profile's max_examples: these properties compile per draw."""
    return max(3, settings.default.max_examples // divisor)


def _fns(case):
    kw = case.kwargs()
    return partial(fbp.grad, **kw), partial(fbp.objective, **kw)


def _check_case(case):
    grad_fn, objective_fn = _fns(case)
    report = fbp.check_gradients(grad_fn, objective_fn, case.params, case.batch)
    assert report.ok, str(report)
    L = len(case.params)
    assert [r.name for r in report.rows] == [
        f"layer {l} {k}" for l in range(1, L + 1) for k in ("W", "b")
    ]
    assert all(r.tolerance == rtol_for(case.dtype) for r in report.rows)
    assert report.max_error == max(r.rel_error for r in report.rows)
    return report


@settings(max_examples=_profile_share(6))  # each drawn shape compiles two programs
@given(cases())
def test_library_gradient_passes_float32(case):
    _check_case(case)


@settings(max_examples=_profile_share(10))
@given(cases(dtype=jnp.float64))
def test_library_gradient_passes_float64(case):
    with jax.enable_x64(True):
        _check_case(case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("layer,key", [(0, "W"), (1, "b"), (2, "W")])
def test_a_wrong_leaf_is_caught_and_named(dtype, layer, key):
    case = make_case([4, 5, 3, 2], 6, ["tanh", "relu", "identity"], "quadratic",
                     l2=1e-3, dtype=dtype, seed=1)
    grad_fn, objective_fn = _fns(case)

    def forgot_one_over_m(params, batch):  # a classic slip: the sum, not the mean
        g = grad_fn(params, batch)
        g[layer][key] = g[layer][key] * batch[0].shape[0]
        return g

    with jax.enable_x64(dtype == jnp.float64):
        report = fbp.check_gradients(forgot_one_over_m, objective_fn, case.params,
                                     case.batch)
        assert not report.ok
        assert [r.name for r in report.failed] == [f"layer {layer + 1} {key}"]
        with pytest.raises(AssertionError, match=f"layer {layer + 1} {key}"):
            report.raise_if_failed()
        assert fbp.check_gradients(grad_fn, objective_fn, case.params,
                                   case.batch).raise_if_failed().ok


def test_a_wrong_custom_activation_derivative_is_caught():
    # g(z) = z^3 with g'(z) written as 2 z^2: jax.grad of the objective uses g,
    # the hand-derived backward uses the wrong g'.
    cube_bad = Activation("cube", lambda z: z**3, lambda z: 2 * z**2)
    case = make_case([3, 4, 2], 5, ["tanh", "identity"], "mse", seed=3)
    kw = dict(activations=[cube_bad, "identity"], loss="mse")
    report = fbp.check_gradients(partial(fbp.grad, **kw), partial(fbp.objective, **kw),
                                 case.params, case.batch)
    assert {r.name for r in report.failed} == {"layer 1 W", "layer 1 b"}


def test_finite_differences_pass_for_a_correct_gradient():
    case = make_case([3, 6, 4, 2], 7, ["tanh", "softplus", "identity"],
                     "softmax_cross_entropy", l2=0.1, seed=4, target_kind="labels")
    grad_fn, objective_fn = _fns(case)
    report = fbp.check_gradients(grad_fn, objective_fn, case.params, case.batch,
                                 finite_differences=True)
    assert report.ok, str(report)
    assert all(r.fd_error is not None and r.fd_error <= 1e-6 for r in report.rows)
    assert "fd error" in str(report)


def test_finite_differences_catch_what_jax_grad_cannot():
    # An objective whose own autodiff rule is wrong (a custom_jvp doubling the
    # derivative of sin): grad_fn agrees with jax.grad, central differences do not.
    @jax.custom_jvp
    def sin(x):
        return jnp.sin(x)

    sin.defjvp(lambda primals, tangents: (jnp.sin(primals[0]),
                                          2 * jnp.cos(primals[0]) * tangents[0]))

    def objective_fn(p):
        return jnp.sum(sin(p["u"])) + jnp.sum(p["v"] ** 2)

    params = {"u": jnp.linspace(0.1, 1.0, 4), "v": jnp.ones((2, 3))}
    report = fbp.check_gradients(jax.grad(objective_fn), objective_fn, params,
                                 finite_differences=True)
    assert all(r.rel_error == 0.0 for r in report.rows)
    assert [r.name for r in report.failed] == ["u"]
    assert report.rows[0].fd_error > 0.1


def test_any_pytree_gets_readable_names():
    params = {"enc": [jnp.ones((2, 2)), jnp.ones(3)], "scale": jnp.float32(2.0)}

    def objective_fn(p):
        return jnp.sum(p["enc"][0] ** 2) + p["scale"] * jnp.sum(p["enc"][1])

    def grad_fn(p):
        return {"enc": [2 * p["enc"][0], p["scale"] * jnp.ones(3)],
                "scale": jnp.sum(p["enc"][1])}

    report = fbp.check_gradients(grad_fn, objective_fn, params)
    assert report.ok
    assert [r.name for r in report.rows] == ["enc[0]", "enc[1]", "scale"]
    table = str(report).splitlines()
    assert table[0].split()[:3] == ["leaf", "shape", "dtype"]
    assert len(table) == 2 + 3 + 1
    assert table[-1].startswith("all 3 leaves within tolerance")


def test_shape_mismatch_and_nan_fail_with_a_note():
    params = [{"W": jnp.ones((2, 3)), "b": jnp.ones(3)}]

    def objective_fn(p):
        return jnp.sum(p[0]["W"]) + jnp.sum(p[0]["b"])

    def grad_fn(p):
        return [{"W": jnp.ones((3, 2)), "b": jnp.full(3, jnp.nan)}]

    report = fbp.check_gradients(grad_fn, objective_fn, params)
    assert [r.note for r in report.rows] == ["shape (3, 2)", "not finite"]
    assert not report.ok and report.max_error == float("inf")
    assert "NO (shape (3, 2))" in str(report)


def test_wrong_structure_raises_type_error():
    params = [{"W": jnp.ones((2, 3)), "b": jnp.ones(3)}]
    with pytest.raises(TypeError, match="different structure"):
        fbp.check_gradients(lambda p: [p[0]["W"]], lambda p: jnp.sum(p[0]["W"]), params)


def test_explicit_rtol_and_unknown_dtype():
    params = {"w": jnp.ones(3, jnp.float16)}

    def objective_fn(p):
        return jnp.sum(p["w"] ** 2)

    def grad_fn(p):
        return {"w": 2 * p["w"] * jnp.float16(1.001)}

    with pytest.raises(TypeError, match="pass rtol explicitly"):
        fbp.check_gradients(grad_fn, objective_fn, params)
    assert fbp.check_gradients(grad_fn, objective_fn, params, rtol=1e-2).ok
    assert not fbp.check_gradients(grad_fn, objective_fn, params, rtol=1e-4).ok


def test_row_and_report_are_plain_data():
    row = GradientRow("layer 1 W", (2, 2), "float32", 1.0, 0.5, 0.1)
    report = GradientReport(rows=(row,))
    assert not row.ok and not report.ok and report.failed == [row]
    assert np.isclose(report.max_error, 0.5)
