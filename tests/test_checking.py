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
from helpers import profile_share



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


@settings(max_examples=profile_share(6))  # each drawn shape compiles two programs
@given(cases())
def test_library_gradient_passes_float32(case):
    _check_case(case)


@settings(max_examples=profile_share(10))
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


# --- the library form: check_gradients(params, batch, network=..., loss=...) ----------
from functional_bp import layers as fl  # noqa: E402


class _DoubledW(fl.Dense):
    """A Dense layer whose backward returns 2 A^T G for dJ/dW (a wrong equation)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {**grads, "W": 2 * grads["W"]}, dx


class _NoTransposeDx(fl.Dense):
    """A square Dense layer whose backward returns G W for dJ/dA instead of G W^T."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, dy @ params["W"]


class _LayerNormWithoutMean(fl.LayerNorm):
    """LayerNorm whose dx drops the mean term (a classic slip named in the issue)."""

    def backward(self, params, cache, dy):
        dparams, dx = super().backward(params, cache, dy)
        return dparams, dx + jnp.mean(dy * params["scale"][None, :], axis=-1, keepdims=True)


def _net(inner=fl.Dense(5), first=fl.Dense(5), norm=fl.LayerNorm()):
    return fl.Sequential(first, fl.Activation("tanh"),
                         fl.Residual(norm, inner, fl.Activation("gelu")), fl.Dense(3))


def _net_batch(net, dtype, m=6, seed=0):
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (m, 4), dtype)
    return net.init(kp, (4,), dtype=dtype), (x, jax.random.randint(ky, (m,), 0, 3))


NET_LEAVES = ["layer 1 W", "layer 1 b", "layer 3.1 bias", "layer 3.1 scale", "layer 3.2 W",
              "layer 3.2 b", "layer 4 W", "layer 4 b", "dJ/dX"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_network_form_passes_and_names_leaves_by_their_path(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        net = _net()
        params, batch = _net_batch(net, dtype)
        report = fbp.check_gradients(params, batch, network=net,
                                     loss="softmax_cross_entropy", l2=0.01)
        assert report.ok, str(report)
        assert [r.name for r in report.rows] == NET_LEAVES
        assert all(r.tolerance == rtol_for(dtype) for r in report.rows)
        assert report.rows[-1].shape == (6, 4)
        assert "layer 3.2 W" in str(report) and "dJ/dX" in str(report)


@pytest.mark.parametrize("net,failed", [
    # the wrong dW shows in that leaf alone
    (_net(inner=_DoubledW(5)), {"layer 3.2 W"}),
    # a wrong dx inside the residual reaches every layer before it
    (_net(inner=_NoTransposeDx(5)), {"layer 1 W", "layer 1 b", "layer 3.1 bias",
                                     "layer 3.1 scale", "dJ/dX"}),
    (_net(norm=_LayerNormWithoutMean()), {"layer 1 W", "layer 1 b", "dJ/dX"}),
    # the first layer's dx feeds no parameter gradient: only the dJ/dX row sees it
    (_net(first=_NoTransposeDx(4), inner=fl.Dense(4)), {"dJ/dX"}),
])
def test_network_form_catches_a_wrong_layer_backward(net, failed):
    params, batch = _net_batch(net, jnp.float32, seed=1)
    report = fbp.check_gradients(params, batch, network=net, loss="softmax_cross_entropy")
    assert {r.name for r in report.failed} == failed, str(report)
    assert min(r.rel_error for r in report.failed) > 1e-3  # O(1), not rounding
    with pytest.raises(AssertionError, match="over tolerance"):
        report.raise_if_failed()


def test_network_form_with_dropout_uses_one_key_for_both_sides():
    net = fl.Sequential(fl.Dense(6), fl.Activation("relu"), fl.Dropout(0.5), fl.Dense(3))
    params, batch = _net_batch(net, jnp.float32, m=8)
    k = jax.random.key(7)
    report = fbp.check_gradients(params, batch, network=net, loss="softmax_cross_entropy",
                                 dropout_key=k)
    assert report.ok, str(report)
    # the key matters: the gradient with dropout differs from the one without
    with_key = fbp.grad(params, batch, network=net, loss="softmax_cross_entropy", key=k)
    without = fbp.grad(params, batch, network=net, loss="softmax_cross_entropy")
    assert not np.allclose(with_key[0]["W"], without[0]["W"])


def test_activations_form_and_finite_differences():
    case = make_case([3, 6, 2], 5, ["tanh", "identity"], "mse", l2=0.1, seed=2)
    kw = case.kwargs()
    report = fbp.check_gradients(case.params, case.batch, finite_differences=True, **kw)
    assert report.ok, str(report)
    assert [r.name for r in report.rows] == ["layer 1 W", "layer 1 b", "layer 2 W",
                                             "layer 2 b", "dJ/dX"]
    assert all(r.fd_error is not None for r in report.rows[:-1])
    # the same numbers as the two-function form
    grad_fn, objective_fn = _fns(case)
    plain = fbp.check_gradients(grad_fn, objective_fn, case.params, case.batch)
    assert [r.rel_error for r in plain.rows] == [r.rel_error for r in report.rows[:-1]]


def test_bad_calls_say_which_form_they_missed():
    net = _net()
    params, batch = _net_batch(net, jnp.float32)
    loss = "softmax_cross_entropy"
    for call, words in [
        (lambda: fbp.check_gradients(params, batch, network=net), "needs loss="),
        (lambda: fbp.check_gradients(params, batch, batch, network=net, loss=loss),
         "takes \\(params, batch\\); got 3"),
        (lambda: fbp.check_gradients(fbp.grad, fbp.objective, params, batch, network=net,
                                     loss=loss), "starting with a function"),
        (lambda: fbp.check_gradients(params, batch), "two functions first"),
        (lambda: fbp.check_gradients(fbp.grad, fbp.objective, params, batch, loss=loss),
         "go with network="),
        (lambda: fbp.check_gradients(params, batch, activations=["relu"], loss=loss,
                                     dropout_key=jax.random.key(0)), "goes with network="),
    ]:
        with pytest.raises(TypeError, match=words):
            call()


def test_rows_that_are_zero_on_both_sides_are_flagged():
    """A dead relu layer passes with zero error, and the report says that proves nothing."""
    net = fl.Sequential(fl.Dense(4), fl.Activation("relu"), fl.Dense(3))
    params = net.init(jax.random.key(0), (4,))
    params[0]["b"] = jnp.full((4,), -100.0)  # every unit of layer 1 is dead on these rows
    _, batch = _net_batch(net, jnp.float32, m=5)  # unbalanced labels: dJ/db^3 is not 0
    report = fbp.check_gradients(params, batch, network=net, loss="softmax_cross_entropy")
    assert report.ok, str(report)
    assert [r.name for r in report.rows if r.note == "both zero"] == [
        "layer 1 W", "layer 1 b", "layer 3 W", "dJ/dX"]
    table = str(report)
    assert "yes (both zero)" in table and "note: 4 of 5 are exactly zero" in table
