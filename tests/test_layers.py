"""The layers engine against jax.grad, on random networks of every layer type.

The proof of issue 11. Hypothesis draws networks (tests/network_strategies.py):
Dense (also on inputs with extra axes), every built-in Activation, LayerNorm
anywhere its axis is wider than one, Dropout with a fixed key (or none:
evaluation), Flatten, and Residual blocks, nested; any loss, l2 or not,
float32 and float64, batches of 1 to 8. For each:

- every parameter leaf, the cotangent dJ/dY at every layer's output and dJ/dX
  of ``fbp.backprop(..., network=)`` match ``jax.grad`` of the plain
  objective (with respect to params, x, and zero offsets added to each
  layer's output), per leaf: float64 1e-10, float32 2e-5 of the leaf's scale
  (tests/helpers.py, with its float64-truth fallback for float32 leaves whose
  terms cancel);
- per-example gradients, their norms and the clipped gradient match
  ``jax.vmap(jax.grad)`` of the one-example objective, or, for a network run
  with a dropout key, ``jax.jacrev`` of the per-example losses of the whole
  batch under the same key (the masks are drawn for the batch's shape);
- the ``activations=`` MLP is exactly the Dense/Activation network.

Counts and worst errors: ``FBP_LAYERS_REPORT=report.txt pytest tests/test_layers.py``
writes the number of examples run per dtype and the worst error per layer
type and quantity into ``report.txt`` (also with ``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp.layers import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Residual,
    Sequential,
)
from helpers import assert_tree_close, rtol_for
from helpers import profile_share
from network_strategies import (
    compare_backprop,
    compare_per_example,
    make_net_case,
    net_cases,
)
from strategies import cases



# --- counts and worst errors, per dtype and layer type -------------------------------

COUNTS: dict = defaultdict(int)  # (property, dtype) -> examples run
WORST: dict = defaultdict(float)  # (dtype, layer type, quantity) -> worst per-leaf error
FALLBACK: dict = defaultdict(int)  # (dtype, layer type) -> leaves passed on the float64 truth


def _layer_of(net, key: str):
    """The leaf layer a leaf path such as ``grads[2][1]['W']`` belongs to, and whether
    it sits inside a Residual."""
    layer, in_residual = net, False
    for i in re.findall(r"\[(\d+)\]", key):
        if not isinstance(layer, Sequential):
            break
        layer = layer.layers[int(i)]
        in_residual = in_residual or isinstance(layer, Residual)
    return layer, in_residual


def record(case, errs: dict, rtol: float):
    dtype = jnp.dtype(case.dtype).name
    for key, err in errs.items():
        quantity = key.split("[", 1)[0]
        if quantity in ("grads", "deltas", "per_example_grads", "clipped_grad"):
            layer, in_res = _layer_of(case.net, key)
            kinds = [type(layer).__name__] + (["Residual (leaves inside)"] if in_res else [])
        else:  # loss, input_grad, norms
            kinds = ["network"]
        for kind in kinds:
            if err > rtol:  # passed on the float64 truth (helpers.assert_backprop_close)
                FALLBACK[(dtype, kind)] += 1
            else:
                WORST[(dtype, kind, quantity)] = max(WORST[(dtype, kind, quantity)], err)


def _write_report():
    path = os.environ.get("FBP_LAYERS_REPORT")
    if not path or not COUNTS:
        return
    lines = ["examples run (property, dtype):"]
    lines += [f"  {p:<28} {d:<8} {n}" for (p, d), n in sorted(COUNTS.items())]
    lines.append("worst per-leaf error (dtype, layer type, quantity):")
    lines += [f"  {d:<8} {k:<26} {q:<18} {e:.2e}" for (d, k, q), e in sorted(WORST.items())]
    if FALLBACK:
        lines.append("float32 leaves over 2e-5 of their own scale that passed on the float64 "
                     "truth (2e-5 of their summands' scale):")
        lines += [f"  {d:<8} {k:<26} {n}" for (d, k), n in sorted(FALLBACK.items())]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")



# --- the checks ----------------------------------------------------------------------

def check_backprop(case):
    """Loss, every grad leaf, every layer's cotangent and dJ/dX against jax.grad."""
    record(case, compare_backprop(case), rtol_for(case.dtype))
    COUNTS[("backprop", jnp.dtype(case.dtype).name)] += 1
    _write_report()  # after every example: a run stopped by a time limit still reports


def check_per_example(case):
    """Per-example grads, norms and the clipped gradient against vmap(grad) (or jacrev)."""
    record(case, compare_per_example(case), rtol_for(case.dtype))
    COUNTS[("per_example", jnp.dtype(case.dtype).name)] += 1
    _write_report()


# --- edge cases, kept as explicit examples -------------------------------------------

def edge_cases(dtype):
    f64 = dict(dtype=dtype)
    return [
        # a batch of one
        make_net_case(Sequential(Dense(3), Activation("tanh"), LayerNorm(), Dense(2)), (4,), 1,
                      "softmax_cross_entropy", target_kind="labels", seed=1, **f64),
        # a Residual around a single layer, of each kind
        make_net_case(Sequential(Dense(4), Residual(LayerNorm()), Residual(Activation("gelu")),
                                 Residual(Dense(4)), Residual(Dropout(0.5)), Dense(2)),
                      (3,), 5, "mse", l2=0.5, seed=2, dropout_seed=7, **f64),
        # nested Residuals, dropout inside
        make_net_case(Sequential(Dense(5), Residual(LayerNorm(), Residual(
            Dense(5), Activation("relu"), Residual(LayerNorm())), Dropout(0.25)), Dense(3)),
                      (2,), 6, "sigmoid_cross_entropy", target_kind="binary", seed=3,
                      dropout_seed=11, **f64),
        # Dense on (m, T, n): the Gram form (T (n_in + n_out) < n_in n_out) ...
        make_net_case(Sequential(Dense(6), Activation("tanh"), LayerNorm(), Flatten(),
                                 Dense(3)), (2, 6), 4, "quadratic", seed=4, **f64),
        # ... and the direct form, with two extra axes
        make_net_case(Sequential(Dense(3), Residual(LayerNorm(), Dense(3)), Flatten(), Dense(2)),
                      (5, 2, 2), 3, "mse", seed=5, **f64),
        # the output through a LayerNorm, then the loss
        make_net_case(Sequential(Dense(4), Activation("softplus"), Dense(3), LayerNorm()),
                      (3,), 7, "softmax_cross_entropy", target_kind="soft", seed=6, **f64),
    ]


def _with_examples(dtype):
    def decorate(f):
        for case in reversed(edge_cases(dtype)):
            f = example(case)(f)
        return f
    return decorate


@_with_examples(jnp.float32)
@settings(max_examples=profile_share(3))
@given(net_cases())
def test_backprop_float32(case):
    check_backprop(case)


@_with_examples(jnp.float64)
@settings(max_examples=profile_share(6))
@given(net_cases(dtype=jnp.float64))
def test_backprop_float64(case):
    with jax.enable_x64(True):
        check_backprop(case)


@_with_examples(jnp.float32)
@settings(max_examples=profile_share(6))
@given(net_cases())
def test_per_example_float32(case):
    check_per_example(case)


@_with_examples(jnp.float64)
@settings(max_examples=profile_share(10))
@given(net_cases(dtype=jnp.float64))
def test_per_example_float64(case):
    with jax.enable_x64(True):
        check_per_example(case)


# --- the MLP is the Dense/Activation network -----------------------------------------

def mlp_as_network(case):
    net = Sequential(*(layer for p, g in zip(case.params, case.activations)
                       for layer in (Dense(p["W"].shape[1]), Activation(g))))
    return net, [entry for p in case.params for entry in (p, {})]


def _assert_same(a, b, where):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), where
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=where)


@settings(max_examples=profile_share(8))
@given(cases(max_depth=4, max_width=8, max_batch=8))
def test_mlp_is_the_dense_activation_network(case):
    """Every public result of ``activations=`` equals the network's, bit for bit."""
    net, net_params = mlp_as_network(case)
    mlp = dict(activations=case.activations, loss=case.loss)
    nw = dict(network=net, loss=case.loss)
    a = fbp.backprop(case.params, case.batch, l2=case.l2, **mlp)
    b = fbp.backprop(net_params, case.batch, l2=case.l2, **nw)
    _assert_same(a.loss, b.loss, "loss")
    _assert_same(a.grads, b.grads[0::2], "grads")
    assert b.grads[1::2] == [{}] * len(case.params)
    _assert_same(list(a.deltas), b.deltas[0::2], "deltas: G^l is the cotangent at Dense l")
    _assert_same(a.input_grad, b.input_grad, "input_grad")
    _assert_same(fbp.forward(case.params, case.x, activations=case.activations),
                 fbp.forward(net_params, case.x, network=net), "forward")
    _assert_same(fbp.objective(case.params, case.batch, l2=case.l2, **mlp),
                 fbp.objective(net_params, case.batch, l2=case.l2, **nw), "objective")
    _assert_same(fbp.per_example_grads(case.params, case.batch, **mlp),
                 fbp.per_example_grads(net_params, case.batch, **nw)[0::2], "per_example_grads")
    _assert_same(fbp.per_example_grad_norms(case.params, case.batch, **mlp),
                 fbp.per_example_grad_norms(net_params, case.batch, **nw), "norms")
    _assert_same(fbp.clipped_grad(case.params, case.batch, clip_norm=0.5, **mlp),
                 fbp.clipped_grad(net_params, case.batch, clip_norm=0.5, **nw)[0::2],
                 "clipped_grad")


# --- Dense.sq_norms: the Gram and the direct form ------------------------------------

def _intermediate_shapes(f, *args):
    """Shapes of every value computed by f (from its jaxpr)."""
    jaxpr = jax.make_jaxpr(f)(*args)
    return {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}


@pytest.mark.parametrize("extra, n_in, n_out, form", [
    ((2,), 6, 6, "gram"),       # T (n_in + n_out) = 24 < n_in n_out = 36
    ((2, 2), 12, 8, "gram"),    # T = 4: 80 < 96
    ((7,), 3, 2, "direct"),     # 35 >= 6
    ((2, 2), 5, 3, "direct"),   # T = 4: 32 >= 15
])
def test_dense_sq_norms_gram_and_direct(extra, n_in, n_out, form):
    """Each example's ||A_i^T G_i||^2 both ways, each checked against vmap(grad)."""
    m, T = 3, int(np.prod(extra))
    gram = T * (n_in + n_out) < n_in * n_out
    assert gram == (form == "gram"), "the shapes must select the form the case names"
    net = Sequential(Dense(n_out), Flatten(), Dense(2))
    case = make_net_case(net, (*extra, n_in), m, "mse", seed=8)
    layer, (p1, _, _) = net.layers[0], case.params
    x = case.x
    dy = jnp.asarray(np.random.default_rng(0).standard_normal((m, *extra, n_out)), jnp.float32)
    shapes = _intermediate_shapes(layer.sq_norms, p1, x, dy)
    assert ((m, T, T) in shapes) == gram and ((m, n_in, n_out) in shapes) == (not gram)
    assert layer.norm_form(x.shape[1:]) == form
    # the whole network's per-example gradients, norms and clipped gradient (the direct
    # form's clipped sum reuses its blocks A_i^T G_i) against the reference
    compare_per_example(case)
    # and the layer's own sum of squares against its per-example gradient
    g = np.asarray(np.einsum("mtk,mtj->mkj", np.asarray(x).reshape(m, T, n_in),
                             np.asarray(dy).reshape(m, T, n_out)), np.float64)
    gb = np.asarray(dy, np.float64).reshape(m, T, n_out).sum(axis=1)
    want = (g ** 2).sum(axis=(1, 2)) + (gb ** 2).sum(axis=1)
    assert_tree_close(layer.sq_norms(p1, x, dy), want, rtol_for(jnp.float32), "sq_norms")


class _DenseGramWithoutCrossTerms(Dense):
    """The Gram form summed over t = t' only: sum_t ||a_t||^2 ||g_t||^2 (no t != t' terms)."""

    def sq_norms(self, params, cache, dy):
        assert self.norm_form(cache.shape[1:]) == "gram"  # the form this twin stands in for
        a, g = cache.reshape(cache.shape[0], -1, cache.shape[-1]), dy.reshape(dy.shape[0], -1,
                                                                             dy.shape[-1])
        w = jnp.sum(jnp.sum(a * a, -1) * jnp.sum(g * g, -1), axis=1)
        return w + jnp.sum(jnp.sum(g, axis=1) ** 2, axis=-1)


def test_a_dense_gram_form_without_its_cross_position_terms_is_caught():
    """The wrong twin fails the comparison that the right Gram form passes on the same case."""
    def case_for(layer):
        return make_net_case(Sequential(layer, Flatten(), Dense(2)), (2, 6), 3, "mse", seed=8)

    compare_per_example(case_for(Dense(6)))  # T (n_in + n_out) = 24 < 36: the Gram form
    with pytest.raises(AssertionError, match="norms"):
        compare_per_example(case_for(_DenseGramWithoutCrossTerms(6)))


# --- errors -------------------------------------------------------------------------

NET = Sequential(Dense(4), Activation("relu"), Residual(LayerNorm(), Dense(4)), Dense(2))


def _batch(m=3, n=3):
    return jnp.ones((m, n)), jnp.zeros((m, 2))


def _params():
    return NET.init(jax.random.key(0), (3,))


def test_layernorm_over_a_width_one_axis_is_rejected():
    """Its output would be the bias alone, whatever the input: rejected with the fix."""
    net = Sequential(Dense(1), LayerNorm(), Dense(2))
    with pytest.raises(ValueError, match=r"layer 2 \(LayerNorm\).*width 1"):
        net.init(jax.random.key(0), (3,))
    params = [{"W": jnp.ones((3, 1)), "b": jnp.ones(1)},
              {"scale": jnp.ones(1), "bias": jnp.zeros(1)},
              {"W": jnp.ones((1, 2)), "b": jnp.zeros(2)}]
    with pytest.raises(ValueError, match=r"layer 2 \(LayerNorm\).*width 1"):
        fbp.value_and_grad(params, _batch(), network=net, loss="mse")


def test_params_must_be_a_list_with_one_entry_per_layer():
    params = _params()
    with pytest.raises(TypeError, match=r"one entry per layer \(4 .*got 3 entries"):
        fbp.value_and_grad(params[:3], _batch(), network=NET, loss="mse")
    with pytest.raises(TypeError, match=r"got dict"):
        fbp.value_and_grad({"W": 1}, _batch(), network=NET, loss="mse")
    inner = [params[0], params[1], params[2][:1], params[3]]
    with pytest.raises(TypeError, match=r"layer 3: params must be a list .*\(2 for Residual"):
        fbp.value_and_grad(inner, _batch(), network=NET, loss="mse")


def test_params_keys_and_shapes_name_the_layer():
    params = _params()
    bad = [params[0], params[1], [params[2][0], {"W": params[2][1]["W"]}], params[3]]
    with pytest.raises(ValueError, match=r"layer 3\.layer 2 \(Dense.*exactly the keys \['W', 'b'\]"):
        fbp.value_and_grad(bad, _batch(), network=NET, loss="mse")
    bad = [params[0], params[1], [{"scale": jnp.ones(5), "bias": jnp.zeros(4)}, params[2][1]],
           params[3]]
    with pytest.raises(ValueError, match=r"layer 3\.layer 1 \(LayerNorm.*scale must have shape "
                                         r"\(4,\).*got \(5,\)"):
        fbp.value_and_grad(bad, _batch(), network=NET, loss="mse")
    bad = [params[0] | {"W": jnp.ones((4, 4))}] + params[1:]
    with pytest.raises(ValueError, match=r"layer 1 \(Dense.*W must have shape \(3, 4\).*got \(4, 4\)"):
        fbp.per_example_grads(bad, _batch(), network=NET, loss="mse")
    with pytest.raises(ValueError, match=r"layer 1 \(Dense.*W must have shape \(5, 4\)"):
        fbp.clipped_grad(params, _batch(n=5), network=NET, loss="mse", clip_norm=1.0)


def test_residual_that_changes_the_shape_names_the_layer():
    net = Sequential(Dense(4), Residual(LayerNorm(), Dense(3)), Dense(2))
    with pytest.raises(ValueError, match=r"^Residual\(LayerNorm\(eps=1e-05\), Dense.*maps shape \(4,\) to \(3,\).*"
                                         r"Dense\(4\)"):
        net.init(jax.random.key(0), (3,))
    # params that fit each layer but not the skip: caught at the call, naming the position
    params = [{"W": jnp.ones((3, 4)), "b": jnp.zeros(4)},
              [{"scale": jnp.ones(4), "bias": jnp.zeros(4)},
               {"W": jnp.ones((4, 3)), "b": jnp.zeros(3)}],
              {"W": jnp.ones((3, 2)), "b": jnp.zeros(2)}]
    with pytest.raises(ValueError, match=r"layer 2: Residual.*maps shape \(4,\) to \(3,\)"):
        fbp.backprop(params, _batch(), network=net, loss="mse")


def test_a_layer_that_couples_examples_is_refused_by_the_per_example_functions():
    class CouplesRows(fl.Flatten):
        couples_examples = True

    net = Sequential(Dense(2), CouplesRows())
    params = net.init(jax.random.key(0), (3,))
    fbp.value_and_grad(params, _batch(), network=net, loss="mse")  # fine for the mean gradient
    for f in (fbp.per_example_grads, fbp.per_example_grad_norms):
        with pytest.raises(ValueError, match="couples the examples"):
            f(params, _batch(), network=net, loss="mse")
    with pytest.raises(ValueError, match="couples the examples"):
        fbp.clipped_grad(params, _batch(), network=net, loss="mse", clip_norm=1.0)


def test_a_network_prints_as_the_call_that_builds_it():
    """Errors name layers by their repr: it reads as the constructor call, Residual included."""
    net = Sequential(Dense(4), Residual(LayerNorm(), Residual(Dropout(0.5))), Flatten())
    assert repr(net.layers[1]) == (
        "Residual(LayerNorm(eps=1e-05), Residual(Dropout(rate=0.5)))")
    assert eval(repr(net)) == net
