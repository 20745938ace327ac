"""Per-example gradients, norms and DP-SGD clipping against jax.vmap(jax.grad(L_i))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings

import functional_bp as fbp
from functional_bp import _validate
from functional_bp.mlp import objective_from_arrays
from helpers import assert_tree_close, rtol_for
from helpers import profile_share
from strategies import cases, make_case



def reference_per_example(case):
    """jax.vmap over examples of jax.grad of the plain objective on a 1-row batch."""
    acts, loss, x, y = _validate.prepare(case.params, case.batch, case.activations,
                                         case.loss)

    def L_i(params, x_i, y_i):
        return objective_from_arrays(params, x_i[None, :], y_i[None, :], 0.0, acts, loss)

    return jax.jit(jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0)))(case.params, x, y)


def naive_clipped(per_example, clip_norm):
    """vmap-of-grad route: norms from the full per-example gradients, clip, mean."""
    leaves = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(per_example)]
    m = leaves[0].shape[0]
    norms = np.sqrt(sum(np.sum(g.reshape(m, -1) ** 2, axis=1) for g in leaves))
    with np.errstate(divide="ignore"):
        c = np.minimum(1.0, clip_norm / norms)
    return jax.tree_util.tree_map(
        lambda g: np.tensordot(c, np.asarray(g, np.float64), axes=1) / m, per_example
    ), norms


def reference_norms(per_example):
    leaves = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(per_example)]
    m = leaves[0].shape[0]
    return np.sqrt(sum(np.sum(g.reshape(m, -1) ** 2, axis=1) for g in leaves))


def check_case(case):
    kw = case.kwargs(with_l2=False)
    rtol = rtol_for(case.dtype)
    ref = reference_per_example(case)
    assert_tree_close(fbp.per_example_grads(case.params, case.batch, **kw), ref, rtol,
                      "per_example_grads")
    ref_norms = reference_norms(ref)
    assert_tree_close(fbp.per_example_grad_norms(case.params, case.batch, **kw),
                      ref_norms, rtol, "norms")
    # A clip norm that clips about half the examples.
    clip_norm = float(np.median(ref_norms)) or 1.0
    want, _ = naive_clipped(ref, clip_norm)
    got = fbp.clipped_grad(case.params, case.batch, clip_norm=clip_norm, **kw)
    assert_tree_close(got, want, rtol, "clipped_grad")


@example(make_case([3, 1], 1, ["identity"], "quadratic"))  # one layer, one example
@example(make_case([2, 5, 4, 3], 6, ["relu", "tanh", "identity"], "softmax_cross_entropy",
                   target_kind="labels", seed=3))
@settings(max_examples=profile_share(5))  # each drawn shape compiles four programs
@given(cases())
def test_per_example_float32(case):
    check_case(case)


@settings(max_examples=profile_share(8))
@given(cases(dtype=jnp.float64))
def test_per_example_float64(case):
    with jax.enable_x64(True):
        check_case(case)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_clipping_is_the_mean_gradient(dtype):
    case = make_case([4, 6, 3], 8, ["gelu", "identity"], "sigmoid_cross_entropy",
                     dtype=dtype, seed=5, target_kind="binary")
    kw = case.kwargs(with_l2=False)
    with jax.enable_x64(dtype == jnp.float64):
        got = fbp.clipped_grad(case.params, case.batch, clip_norm=1e30, **kw)
        assert_tree_close(got, fbp.grad(case.params, case.batch, **kw), rtol_for(dtype))
        # A tiny clip norm: every example is scaled to norm C, so the mean has norm <= C.
        C = 1e-3
        g = fbp.clipped_grad(case.params, case.batch, clip_norm=C, **kw)
        total = np.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree_util.tree_leaves(g)))
        assert 0 < total <= C * (1 + rtol_for(dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_zero_gradient_examples_are_finite(dtype):
    # One identity layer and quadratic loss: an example with x_i = 0 and y_i = b
    # has a = b = y exactly, so its gradient is exactly zero.
    case = make_case([3, 2], 4, ["identity"], "quadratic", dtype=dtype, seed=7)
    b = case.params[0]["b"]
    with jax.enable_x64(dtype == jnp.float64):
        x = case.x.at[1].set(0.0).at[3].set(0.0)
        y = case.y.at[1].set(b).at[3].set(b)
        kw = case.kwargs(with_l2=False)
        for xb, yb in [(x, y), (jnp.zeros_like(x), jnp.broadcast_to(b, y.shape))]:
            norms = fbp.per_example_grad_norms(case.params, (xb, yb), **kw)
            assert float(norms[1]) == 0.0 and float(norms[3]) == 0.0
            got = fbp.clipped_grad(case.params, (xb, yb), clip_norm=0.5, **kw)
            assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(got))
            ref_case = make_case([3, 2], 4, ["identity"], "quadratic", dtype=dtype, seed=7)
            ref_case.x, ref_case.y = xb, yb
            want, _ = naive_clipped(reference_per_example(ref_case), 0.5)
            assert_tree_close(got, want, rtol_for(dtype))


def test_noise_has_the_documented_scale():
    case = make_case([64, 128, 32], 16, ["tanh", "identity"], "quadratic", seed=8)
    kw = dict(case.kwargs(with_l2=False), clip_norm=0.7)
    m = case.x.shape[0]
    clean = fbp.clipped_grad(case.params, case.batch, **kw)
    noisy = fbp.clipped_grad(case.params, case.batch, noise_multiplier=2.0,
                             key=jax.random.key(0), **kw)
    again = fbp.clipped_grad(case.params, case.batch, noise_multiplier=2.0,
                             key=jax.random.key(0), **kw)
    other = fbp.clipped_grad(case.params, case.batch, noise_multiplier=2.0,
                             key=jax.random.key(1), **kw)
    noise = np.concatenate([np.ravel(n - c) for n, c in zip(
        jax.tree_util.tree_leaves(noisy), jax.tree_util.tree_leaves(clean))])
    # ~12k independent normals with std 2 * 0.7 / m: the sample std is within 3%.
    assert abs(noise.std() / (2.0 * 0.7 / m) - 1) < 0.03
    assert abs(noise.mean()) < 5 * noise.std() / np.sqrt(noise.size)
    assert_tree_close(again, noisy, 0.0)
    assert not np.allclose(np.ravel(other[0]["W"]), np.ravel(noisy[0]["W"]))


def test_under_jit_and_vmap_over_batches():
    case = make_case([5, 7, 3], 6, ["softplus", "identity"], "mse", seed=9)
    kw = case.kwargs(with_l2=False)
    xs = jnp.stack([case.x, 2 * case.x, -case.x])
    ys = jnp.stack([case.y, case.y, 0 * case.y])
    norms = jax.jit(jax.vmap(
        lambda x, y: fbp.per_example_grad_norms(case.params, (x, y), **kw)))(xs, ys)
    for k in range(3):
        case.x, case.y = xs[k], ys[k]
        assert_tree_close(norms[k], reference_norms(reference_per_example(case)),
                          rtol_for(jnp.float32))


def test_bad_inputs():
    case = make_case([3, 4, 2], 5, ["relu", "identity"], "mse")
    kw = case.kwargs(with_l2=False)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        fbp.clipped_grad(case.params, case.batch, clip_norm=0.0, **kw)
    with pytest.raises(ValueError, match="needs a random key"):
        fbp.clipped_grad(case.params, case.batch, clip_norm=1.0, noise_multiplier=1.0, **kw)
    with pytest.raises(ValueError, match="noise_multiplier must be finite and >= 0"):
        fbp.clipped_grad(case.params, case.batch, clip_norm=1.0, noise_multiplier=-1.0,
                         key=jax.random.key(0), **kw)
    bad = [case.params[0], {"W": case.params[1]["W"], "b": jnp.zeros((3,))}]
    for fn in (fbp.per_example_grads, fbp.per_example_grad_norms):
        with pytest.raises(ValueError, match="layer 2: b must have shape"):
            fn(bad, case.batch, **kw)
    with pytest.raises(ValueError, match="unknown activation"):
        fbp.per_example_grad_norms(case.params, case.batch, activations=["relu", "nope"],
                                   loss="mse")


# Issue "Nothing silent": a missing key must be an error whenever the noise can be
# non-zero, in every form the noise multiplier can take.
@pytest.mark.parametrize("form", ["python", "array", "numpy", "traced"])
def test_noise_without_key_is_an_error_in_every_form(form):
    case = make_case([3, 4, 2], 5, ["relu", "identity"], "mse")
    kw = dict(case.kwargs(with_l2=False), clip_norm=1.0)
    sigma = {"python": 1.0, "array": jnp.asarray(1.0), "numpy": np.float32(1.0),
             "traced": None}[form]
    with pytest.raises(ValueError, match="needs a random key"):
        if form == "traced":
            jax.jit(lambda s: fbp.clipped_grad(case.params, case.batch, noise_multiplier=s,
                                               **kw))(1.0)
        else:
            fbp.clipped_grad(case.params, case.batch, noise_multiplier=sigma, **kw)
    # A zero known at the call needs no key and adds nothing.
    for zero in (0.0, 0, jnp.asarray(0.0), np.float64(0.0)):
        got = fbp.clipped_grad(case.params, case.batch, noise_multiplier=zero, **kw)
        assert_tree_close(got, fbp.clipped_grad(case.params, case.batch, **kw), 0.0)


@pytest.mark.parametrize("form", ["python", "array", "traced"])
def test_clip_norm_inf_is_no_clipping_exactly(form):
    case = make_case([4, 6, 3], 8, ["tanh", "identity"], "softmax_cross_entropy", seed=3)
    kw = case.kwargs(with_l2=False)
    clip = {"python": float("inf"), "array": jnp.asarray(jnp.inf)}.get(form)
    if form == "traced":
        got = jax.jit(lambda C: fbp.clipped_grad(case.params, case.batch, clip_norm=C,
                                                 **kw))(jnp.inf)
    else:
        got = fbp.clipped_grad(case.params, case.batch, clip_norm=clip, **kw)
    assert_tree_close(got, fbp.grad(case.params, case.batch, **kw), rtol_for(jnp.float32))
    with pytest.raises(ValueError, match="infinite noise"):
        fbp.clipped_grad(case.params, case.batch, clip_norm=clip if clip is not None
                         else jnp.inf, noise_multiplier=1.0, key=jax.random.key(0), **kw)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_known_bad_clip_norm_is_rejected_in_every_form(bad):
    case = make_case([3, 4, 2], 5, ["relu", "identity"], "mse")
    kw = case.kwargs(with_l2=False)
    for C in (bad, jnp.asarray(bad), np.float32(bad)):
        with pytest.raises(ValueError, match="clip_norm must be > 0"):
            fbp.clipped_grad(case.params, case.batch, clip_norm=C, **kw)
    with pytest.raises(TypeError, match="clip_norm must be a real scalar"):
        fbp.clipped_grad(case.params, case.batch, clip_norm=jnp.ones(2), **kw)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_traced_bad_clip_norm_gives_a_zero_step_never_nan_or_uphill(bad):
    # Under the user's jit the value cannot be checked: the documented guard
    # treats it as C = 0, so every example with a non-zero gradient weighs 0.
    case = make_case([3, 4, 2], 5, ["relu", "identity"], "mse", seed=4)
    kw = case.kwargs(with_l2=False)
    got = jax.jit(lambda C: fbp.clipped_grad(case.params, case.batch, clip_norm=C,
                                             **kw))(bad)
    for leaf in jax.tree_util.tree_leaves(got):
        assert bool(jnp.all(leaf == 0)), leaf
