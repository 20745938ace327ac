"""Convolutions and pooling against jax.grad: random CNNs, edge cases, wrong backwards.

Hypothesis draws tiny 1-D and 2-D CNNs (tests/conv_strategies.py: random
channels, kernels, strides, paddings, dilations, max and average pools, then
Flatten and Dense heads, any loss, l2 or not). For each, every parameter
leaf, the cotangent at every layer's output and dJ/dX of ``fbp.backprop``
match ``jax.grad`` of the plain objective (float64 1e-10, float32 2e-5 of the
leaf's scale), and per-example gradients, their norms and the clipped
gradient match ``jax.vmap(jax.grad)`` of the one-example objective. A wrong
backward of each kind fails the same comparison.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from jax import lax

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp.layers import (
    Activation,
    AvgPool1D,
    AvgPool2D,
    Conv1D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool1D,
    MaxPool2D,
    Sequential,
)
from functional_bp.layers import conv as conv_module
from functional_bp.layers import pool as pool_module
from functional_bp.layers.conv import resolve_padding, unfold
from helpers import profile_share
from conv_strategies import (
    check,
    check_backprop,
    check_norm_forms,
    check_per_example,
    cnn_cases,
    make_layer_case,
)



# --- edge cases, also run as explicit examples of the properties ----------------------

def edge_cases(dtype):
    d = dict(dtype=dtype)
    return [
        # stride larger than the kernel (entries no window reads), in a conv and a pool
        make_layer_case(Sequential(Conv1D(2, 2, stride=3), Activation("tanh"),
                                   MaxPool1D(1, stride=2), Flatten(), Dense(3)),
                        (8, 2), 3, "softmax_cross_entropy", target_kind="labels", seed=1, **d),
        # windows that do not tile the input (the last entries unread)
        make_layer_case(Sequential(Conv1D(3, 2), MaxPool1D(3), AvgPool1D(2, stride=3),
                                   Flatten(), Dense(2)), (12, 1), 4, "mse", seed=2, **d),
        # a length-1 input, one channel, "SAME" padding around it
        make_layer_case(Sequential(Conv1D(2, 3, padding="SAME"), Activation("relu"),
                                   MaxPool1D(1), Conv1D(1, 1), Flatten(), Dense(2)),
                        (1, 1), 2, "quadratic", seed=3, **d),
        # a single channel everywhere, 2-D, stride larger than kernel and non-tiling pool
        make_layer_case(Sequential(Conv2D(1, (2, 1), stride=(3, 2)), MaxPool2D(2, padding="SAME"),
                                   Flatten(), Dense(1)), (7, 5, 1), 3, "mse", l2=0.5, seed=4, **d),
        # explicit padding wider than the kernel (outputs that see only padding and b)
        make_layer_case(Sequential(Conv2D(2, 1, padding=((2, 1), (0, 3)), dilation=2),
                                   AvgPool2D(3, stride=2, padding=((1, 2), (2, 0))),
                                   Flatten(), Dense(3)),
                        (3, 2, 2), 2, "sigmoid_cross_entropy", target_kind="binary", seed=5, **d),
        # "SAME" with stride and dilation on both axes, overlapping max-pool windows
        make_layer_case(Sequential(Conv2D(3, (3, 2), stride=(2, 3), padding="SAME",
                                          dilation=(2, 1)), Activation("softplus"),
                                   MaxPool2D((2, 3), stride=1, padding=((1, 0), (1, 2))),
                                   Flatten(), Dense(2)), (6, 7, 2), 3, "mse", seed=6, **d),
        # per-example norms: the Gram form (few positions T, wide patches) ...
        make_layer_case(Sequential(Conv1D(8, 3), Flatten(), Dense(2)), (4, 4), 3, "mse",
                        seed=7, **d),
        # ... the Gram form from the input's Gram (stride 1, 4 positions, 8 channels) ...
        make_layer_case(Sequential(Conv1D(8, 3, padding="SAME"), Activation("tanh"), Flatten(),
                                   Dense(2)), (4, 8), 3, "mse", seed=12, **d),
        # ... and the direct form (many positions, narrow patches)
        make_layer_case(Sequential(Conv1D(1, 1), Flatten(), Dense(2)), (9, 1), 3, "mse",
                        seed=8, **d),
        # 2-D: the Gram form with stride, dilation and "SAME" (4 positions, patches of 12) ...
        make_layer_case(Sequential(Conv2D(8, 2, stride=2, padding="SAME", dilation=(1, 2)),
                                   Activation("tanh"), Flatten(), Dense(2)), (3, 4, 3), 3, "mse",
                        seed=9, **d),
        # ... and the direct form with stride and explicit padding, then a tiling max pool
        make_layer_case(Sequential(Conv2D(2, (3, 2), stride=(2, 1), padding=((1, 2), (0, 1))),
                                   MaxPool2D(2), Flatten(), Dense(2)), (7, 6, 2), 3, "mse",
                        seed=10, **d),
    ]


def _with_examples(dtype, ndim):
    def decorate(f):
        for case in reversed(edge_cases(dtype)):
            if isinstance(case.net.layers[0], Conv1D) == (ndim == 1):
                f = example(case)(f)
        return f
    return decorate


# Each drawn CNN is checked as its layers chose their per-example norm forms, then with
# every convolution forced into each form (direct, gram, input_gram).

@settings(max_examples=profile_share(10))
@given(cnn_cases(1))
def test_cnn1d_float32(case):
    check(case)
    check_norm_forms(case)


@_with_examples(jnp.float64, 1)
@settings(max_examples=profile_share(10))
@given(cnn_cases(1, jnp.float64))
def test_cnn1d_float64(case):
    check(case)
    check_norm_forms(case)


@settings(max_examples=profile_share(10))
@given(cnn_cases(2))
def test_cnn2d_float32(case):
    check(case)
    check_norm_forms(case)


@_with_examples(jnp.float64, 2)
@settings(max_examples=profile_share(10))
@given(cnn_cases(2, jnp.float64))
def test_cnn2d_float64(case):
    check(case)
    check_norm_forms(case)


# --- a wrong backward of each kind fails the same comparison ---------------------------

@dataclasses.dataclass(frozen=True)
class KernelNotFlipped1D(Conv1D):
    """dX correlated with W itself instead of the flipped kernel."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        flipped = dict(params, W=jnp.flip(params["W"], axis=0))  # flipped twice: not flipped
        return grads, super().backward(flipped, cache, dy)[1]


@dataclasses.dataclass(frozen=True)
class KernelNotFlipped2D(Conv2D):
    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        flipped = dict(params, W=jnp.flip(params["W"], axis=(0, 1)))
        return grads, super().backward(flipped, cache, dy)[1]


@dataclasses.dataclass(frozen=True)
class StrideIgnoredInDW(Conv1D):
    """dW[j] = sum_t Xp[t + j d] G[t]: the taps of G read 1 apart instead of s apart."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        x, (k,), (s,), (d,) = cache, *self._geometry()
        (lo, _), = resolve_padding(self.padding, x.shape[1:-1], (k,), (s,), (d,))
        T = dy.shape[1]
        hi = (T - 1) + (k - 1) * d + 1 - x.shape[1] - lo
        grads["W"] = lax.conv_general_dilated(x, dy, (d,), [(lo, hi)],
                                              dimension_numbers=("CWN", "IWO", "WNC"))
        return grads, dx


@dataclasses.dataclass(frozen=True)
class PatchNormsFactorised(Conv1D):
    """||P^T G||^2 taken as ||P||^2 ||G||^2 (true for one position only)."""

    def sq_norms(self, params, cache, dy):
        P = self.patches(cache)
        sq = lambda t: jnp.sum(t * t, axis=tuple(range(1, t.ndim)))  # noqa: E731
        return sq(P) * sq(dy) + sq(jnp.sum(dy, axis=1))


@dataclasses.dataclass(frozen=True)
class GramWithoutCrossTerms1D(Conv1D):
    """The Gram form summed over t = t' only: sum_t ||U_t||^2 ||G_t||^2 (no t != t' terms)."""

    def sq_norms(self, params, cache, dy):
        assert self.norm_form(cache.shape[1:]) == "gram"  # the form this twin stands in for
        U, G = self.patches(cache), dy
        sq = lambda t, axis: jnp.sum(t * t, axis=axis)  # noqa: E731
        return jnp.sum(sq(U, -1) * sq(G, -1), axis=1) + sq(jnp.sum(G, axis=1), -1)


@dataclasses.dataclass(frozen=True)
class StrideIgnoredInNorm1D(Conv1D):
    """The direct form's per-example blocks on taps read at t + j d (stride 1), not t s + j d.

    Both the norm and the clipped sum (which reuses the blocks) go wrong.
    """

    def example_grads(self, x, dy):
        assert self.norm_form(x.shape[1:]) == "direct"
        (k,), _, (d,) = self._geometry()
        pads = resolve_padding(self.padding, x.shape[1:-1], *self._geometry())
        T = dy.shape[1]
        views = [v[:, :T] for v in conv_module.tap_views(x, (k,), (1,), (d,), pads)]
        return jnp.stack([jnp.einsum("mtc,mto->mco", v, dy) for v in views], axis=1)


@dataclasses.dataclass(frozen=True)
class InputGramStrideIgnored1D(Conv1D):
    """The input-Gram form (forced) with its windows read at t + j d (stride 1), not t s + j d."""

    def norm_form(self, input_shape):
        return "input_gram"

    def patch_gram(self, x, form="gram"):
        unstrided = Conv1D(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                              "stride": 1})
        P = self.patches(x).shape[1]  # the strided layer's positions
        return unstrided.patch_gram(x, "input_gram")[:, :P, :P]


@dataclasses.dataclass(frozen=True)
class SpreadMaxPool(MaxPool1D):
    """Each window's cotangent spread evenly over the window instead of sent to its arg-max."""

    def backward(self, params, cache, dy):
        j_star, x_shape = cache
        k, s, d = self._geometry()
        cols = jnp.broadcast_to((dy / k[0])[..., None, :], (*dy.shape[:-1], k[0], dy.shape[-1]))
        return {}, pool_module.fold(cols, x_shape[1:-1], k, s, d, self._pads(x_shape))


@dataclasses.dataclass(frozen=True)
class PaddingCountedAvgPool(AvgPool1D):
    """The divisor counting the padding (always the window size)."""

    def counts(self, sizes):
        return np.full_like(super().counts(sizes), math.prod(self._geometry()[0]))


def _swap(net, wrong):
    """``net`` with each layer of the wrong layer's base type replaced by the wrong one."""
    base = type(wrong).__mro__[1]
    return Sequential(*(dataclasses.replace(wrong, **{f.name: getattr(layer, f.name)
                                                      for f in dataclasses.fields(layer)})
                        if type(layer) is base else layer for layer in net.layers))


WRONG = [
    ("kernel not flipped in dX (1-D)", KernelNotFlipped1D(1, 1), check_backprop,
     Sequential(Conv1D(3, 3, padding="SAME"), Activation("tanh"), Conv1D(2, 2), Flatten(),
                Dense(2)), (7, 2)),
    ("kernel not flipped in dX (2-D)", KernelNotFlipped2D(1, 1), check_backprop,
     Sequential(Conv2D(2, (2, 3)), Activation("tanh"), Conv2D(2, 2), Flatten(), Dense(2)),
     (5, 5, 2)),
    ("stride ignored in dW", StrideIgnoredInDW(1, 1), check_backprop,
     Sequential(Conv1D(3, 3, stride=2), Flatten(), Dense(2)), (9, 2)),
    ("per-example norm factorised", PatchNormsFactorised(1, 1), check_per_example,
     Sequential(Conv1D(3, 2), Flatten(), Dense(2)), (5, 2)),
    # Conv1D(8, 3) on (4, 4): 2 positions, patches of 12: the Gram form is chosen
    ("Gram form without its cross-position terms", GramWithoutCrossTerms1D(1, 1),
     check_per_example, Sequential(Conv1D(8, 3), Activation("tanh"), Flatten(), Dense(2)),
     (4, 4)),
    # Conv1D(3, 2, stride=2) on (9, 2): 4 positions, patches of 4: the direct form is chosen
    ("direct-form norm ignoring the stride", StrideIgnoredInNorm1D(1, 1), check_per_example,
     Sequential(Conv1D(3, 2, stride=2), Activation("tanh"), Flatten(), Dense(2)), (9, 2)),
    # the same layer, its norm forced into the input-Gram form
    ("input-Gram norm ignoring the stride", InputGramStrideIgnored1D(1, 1), check_per_example,
     Sequential(Conv1D(3, 2, stride=2), Activation("tanh"), Flatten(), Dense(2)), (9, 2)),
    ("max-pool gradient spread over the window", SpreadMaxPool(1), check_backprop,
     Sequential(Conv1D(2, 2), MaxPool1D(2), Flatten(), Dense(2)), (9, 1)),
    ("average-pool divisor counting the padding", PaddingCountedAvgPool(1), check_backprop,
     Sequential(Conv1D(2, 2), AvgPool1D(3, stride=2, padding="SAME"), Flatten(), Dense(2)),
     (8, 1)),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name, wrong, checker, net, input_shape", WRONG,
                         ids=[w[0] for w in WRONG])
def test_a_wrong_backward_is_caught(name, wrong, checker, net, input_shape, dtype):
    case = make_layer_case(net, input_shape, 4, "mse", dtype=dtype, seed=11)
    bad = _swap(net, wrong)
    assert bad != net
    with jax.enable_x64(dtype == jnp.float64):
        checker(case)  # the right layer passes
        with pytest.raises(AssertionError, match="over rtol"):
            checker(case, network=bad)


# --- the documented rules, checked directly --------------------------------------------

def test_max_pool_ties_go_to_the_first_in_row_major_order():
    # one 3x3 window holding three tied maxima: (0, 2), (1, 0), (2, 1)
    x = jnp.array([[1.0, 2.0, 7.0], [7.0, 0.0, 3.0], [4.0, 7.0, 7.0]]).reshape(1, 3, 3, 1)
    y, cache = MaxPool2D(3).forward({}, x)
    dx = MaxPool2D(3).backward({}, cache, jnp.full_like(y, 5.0))[1][0, :, :, 0]
    want = np.zeros((3, 3))
    want[0, 2] = 5.0  # row 0 comes first; one winner, not split
    np.testing.assert_array_equal(dx, want)
    # 1-D, overlapping windows (stride 1): each window's cotangent goes to one entry
    x1 = jnp.array([3.0, 3.0, 1.0, 3.0]).reshape(1, 4, 1)
    y1, c1 = MaxPool1D(2, stride=1).forward({}, x1)
    dx1 = MaxPool1D(2, stride=1).backward({}, c1, jnp.array([1.0, 10.0, 100.0]).reshape(1, 3, 1))
    np.testing.assert_array_equal(dx1[1].ravel(), [1.0, 10.0, 0.0, 100.0])


def _loop_max_pool_backward(x, dy, window, stride, pads):
    """The tie rule by plain loops: each window's cotangent to its first maximum (row-major)."""
    (kh, kw), (sh, sw), ((lo_h, _), (lo_w, _)) = window, stride, pads
    dx = np.zeros(x.shape)
    m, H, W, C = x.shape
    for n, th, tw, c in np.ndindex(dy.shape):
        best, where = -np.inf, None
        for jh, jw in np.ndindex(kh, kw):  # row-major
            u, v = th * sh + jh - lo_h, tw * sw + jw - lo_w
            if 0 <= u < H and 0 <= v < W and x[n, u, v, c] > best:  # strict: the first wins
                best, where = x[n, u, v, c], (u, v)
        dx[n, where[0], where[1], c] += dy[n, th, tw, c]
    return dx


def test_max_pool_gradient_sums_stay_exact_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(3, 6, 5, 2)).astype(np.float32)  # many ties
    pool = MaxPool2D((2, 3), stride=(1, 2), padding="SAME")
    y, cache = pool.forward({}, jnp.asarray(x))
    dy = rng.integers(-8, 9, size=y.shape).astype(np.float32)  # sums exact in float32
    dx = np.asarray(pool.backward({}, cache, jnp.asarray(dy))[1])
    assert dx.sum() == dy.sum()
    pads = resolve_padding("SAME", (6, 5), (2, 3), (1, 2), (1, 1))
    np.testing.assert_array_equal(dx, _loop_max_pool_backward(x, dy, (2, 3), (1, 2), pads))


def test_avg_pool_divides_by_the_real_entries_of_each_window():
    x = jnp.full((1, 5, 4, 1), 3.0)
    pool = AvgPool2D(3, stride=2, padding="SAME")
    y, cache = pool.forward({}, x)
    np.testing.assert_allclose(y, 3.0)  # the padding is neither summed nor counted
    N = pool.counts((5, 4))[..., 0]
    # SAME: rows padded (1, 1), windows over padded rows 0-2, 2-4, 4-6 hold 2, 3, 2 real
    # rows; columns padded (0, 1), windows 0-2, 2-4 hold 3, 2 real columns
    np.testing.assert_array_equal(N, [[6, 4], [9, 6], [6, 4]])
    dx = pool.backward({}, cache, jnp.ones_like(y))[1]
    assert abs(float(jnp.sum(dx)) - y.size) < 1e-5  # each window hands on exactly its cotangent


def test_same_padding_is_xlas_rule():
    for n, k, s, d in [(7, 3, 2, 1), (8, 2, 3, 2), (1, 3, 1, 1), (5, 4, 4, 1), (6, 3, 1, 3)]:
        want = lax.padtype_to_pads((n,), ((k - 1) * d + 1,), (s,), "SAME")
        assert resolve_padding("SAME", (n,), (k,), (s,), (d,)) == tuple(map(tuple, want))
        _, out = Conv1D(1, k, stride=s, padding="SAME", dilation=d).init(
            jax.random.key(0), (n, 1))
        assert out == (-(-n // s), 1)


def test_conv_is_a_dense_layer_on_unfolded_patches():
    """The matrix form of the docstring: Y_n = P_n W_mat + b, dW_mat = sum_n P_n^T G_n."""
    with jax.enable_x64(True):
        conv = Conv2D(3, (2, 3), stride=(2, 1), padding="SAME", dilation=(1, 2))
        params, _ = conv.init(jax.random.key(0), (5, 6, 2), jnp.float64)
        params["b"] = jnp.arange(3.0)
        x = jax.random.normal(jax.random.key(1), (2, 5, 6, 2), jnp.float64)
        y, cache = conv.forward(params, x)
        P = conv.patches(x)                                   # (m, T, K c_in)
        W_mat = params["W"].reshape(-1, 3)
        np.testing.assert_allclose((P @ W_mat + params["b"][None, None, :]).reshape(y.shape), y,
                                   rtol=1e-12, atol=1e-12)
        G = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
        grads, _ = conv.backward(params, cache, G)
        dW_mat = jnp.einsum("mtk,mto->ko", P, G.reshape(2, -1, 3))
        np.testing.assert_allclose(grads["W"].reshape(-1, 3), dW_mat, rtol=1e-12, atol=1e-12)


def test_unfold_reads_each_tap_at_t_s_plus_j_d():
    x = jnp.arange(10.0).reshape(1, 10, 1)
    cols = unfold(x, (3,), (2,), (2,), ((1, 0),))[0, :, :, 0]
    # padded x: [0, 0, 1, ..., 9]; row t = xp[2t], xp[2t + 2], xp[2t + 4]
    np.testing.assert_array_equal(cols, [[0, 1, 3], [1, 3, 5], [3, 5, 7], [5, 7, 9]])


# --- the per-example norm's form, chosen per layer from the shapes ----------------------

NORM_FORMS = [
    # layer, one example's input shape, positions P, input positions read S, taps K, c_out,
    # the form
    (Conv2D(32, 3, padding="SAME"), (28, 28, 1), 784, 900, 9, 32, "direct"),  # cnn_bench.py
    (Conv2D(64, 3, padding="SAME"), (14, 14, 32), 196, 256, 9, 64, "direct"),
    (Conv2D(64, 3, padding="SAME"), (7, 7, 64), 49, 81, 9, 64, "input_gram"),
    (Conv1D(25, 5, stride=2, padding=1), (40, 1), 19, 41, 5, 25, "direct"),  # models.cnn
    (Conv1D(25, 3, stride=2, padding=1), (19, 25), 10, 21, 3, 25, "gram"),
    (Conv1D(25, 3, stride=2, padding=1), (10, 25), 5, 11, 3, 25, "gram"),
    (Conv1D(4, 3, stride=3, dilation=2), (20, 2), 6, 20, 3, 4, "direct"),  # T = (20 - 5) // 3 + 1
    (Conv2D(8, 2, stride=2, padding="SAME", dilation=(1, 2)), (3, 4, 3), 4, 20, 4, 8, "gram"),
    # a tie (16 (12 + 6) = 4 * 12 * 6) goes to the direct form
    (Conv2D(6, 2, stride=2, padding="SAME", dilation=(1, 2)), (3, 4, 3), 4, 20, 4, 6, "direct"),
    (Conv1D(8, 3, padding="SAME"), (4, 8), 4, 6, 3, 8, "input_gram"),
]


def _dot_shapes(f, *args):
    """The output shapes of every dot_general in f's jaxpr (nested ones included)."""
    text = str(jax.make_jaxpr(f)(*args))
    return {tuple(map(int, dims.split(","))) for dims in
            re.findall(r":f32\[(\d+(?:,\d+)*)\] = dot_general", text)}


@pytest.mark.parametrize("layer, shape, P, S, K, c_out, form", NORM_FORMS,
                         ids=[f"{type(r[0]).__name__}{r[1]}" for r in NORM_FORMS])
def test_each_layer_takes_the_cheapest_norm_form_for_its_shapes(layer, shape, P, S, K, c_out,
                                                                 form):
    c_in = shape[-1]
    assert layer.norm_costs(shape) == {"direct": P * K * c_in * c_out,
                                       "gram": P * P * (K * c_in + c_out),
                                       "input_gram": S * S * c_in + K * P * P + P * P * c_out}
    assert layer.norm_form(shape) == form
    # ... and runs it: the Gram forms multiply (P, P) matrices per example (input_gram after
    # an (S, S) Gram of the input), the direct form forms each tap's (c_in, c_out) block of
    # the example's weight gradient
    m = 2
    params, out = layer.init(jax.random.key(0), shape)
    x = jax.ShapeDtypeStruct((m, *shape), jnp.float32)
    dy = jax.ShapeDtypeStruct((m, *out), jnp.float32)
    shapes = _dot_shapes(lambda x, dy: layer.sq_norms(params, x, dy), x, dy)
    ran = ((m, P, P) in shapes, (m, S, S) in shapes, (m, c_in, c_out) in shapes)
    assert ran == {"gram": (True, False, False), "input_gram": (True, True, False),
                   "direct": (False, False, True)}[form], shapes


def test_a_norm_form_that_does_not_exist_is_named():
    conv = Conv1D(2, 3)
    params, out = conv.init(jax.random.key(0), (5, 1))
    with pytest.raises(ValueError, match=r"Conv1D.sq_norms\(form\): 'direct', 'gram', "
                                         r"'input_gram' or None"):
        conv.sq_norms(params, jnp.ones((1, 5, 1)), jnp.ones((1, *out)), form="ghost")


def test_fold_without_overlap_equals_the_sum_of_spread_taps():
    """fold's reshape path (windows that do not overlap) against the padded-copies sum."""
    rng = np.random.default_rng(0)
    for window, stride, dilation, sizes, pads in [
            ((2, 2), (2, 2), (1, 1), (28, 28), ((0, 0), (0, 0))),  # a tiling pool
            ((2, 3), (3, 4), (1, 1), (7, 9), ((1, 0), (0, 2))),    # gaps and padding
            ((2,), (5,), (2,), (11,), ((2, 1),)),                 # dilation inside the block
            ((3,), (3,), (1,), (10,), ((0, 0),))]:                # an unread tail
        T = conv_module.out_sizes(sizes, window, stride, dilation, pads)
        cols = jnp.asarray(rng.standard_normal((2, *T, math.prod(window), 3)))
        want = 0
        for i, j in enumerate(conv_module.taps(window)):  # the definition, tap by tap
            config = [(0, 0, 0)] + [(jj * d - lo, n - (jj * d - lo) - ((t - 1) * s + 1), s - 1)
                                    for jj, d, t, s, n, (lo, _) in
                                    zip(j, dilation, T, stride, sizes, pads)] + [(0, 0, 0)]
            want = want + lax.pad(cols[..., i, :], 0.0, config)
        got = conv_module.fold(cols, sizes, window, stride, dilation, pads)
        np.testing.assert_array_equal(got, want)


def test_backward_code_uses_no_autodiff():
    for module in (conv_module, pool_module, fl.embedding):
        source = inspect.getsource(module)
        assert not re.search(r"\b(grad|vjp|jvp|linear_transpose|jacrev|jacfwd|custom_vjp)\(",
                             source), module.__name__


# --- errors and configuration --------------------------------------------------------

def test_a_1d_signal_without_a_channel_axis_names_the_fix():
    net = Sequential(Conv1D(4, 3), Flatten(), Dense(2))
    with pytest.raises(ValueError, match=r"layer 1 \(Conv1D\).*\(length, channels\).*Reshape"):
        net.init(jax.random.key(0), (40,))


@pytest.mark.parametrize("layer, shape, message", [
    (Conv1D(2, 5), (3, 1), r"kernel spans \(5,\).*padded input is only \(3,\)"),
    (Conv1D(2, 3, dilation=3), (6, 1), r"kernel spans \(7,\)"),
    (MaxPool2D(3), (2, 5, 1), r"window spans \(3, 3\)"),
    (Conv2D(2, 3), (5, 5), r"\(height, width, channels\)"),
])
def test_shapes_that_cannot_feed_a_layer_are_named(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        Sequential(layer, Flatten(), Dense(1)).init(jax.random.key(0), shape)


@pytest.mark.parametrize("make, message", [
    (lambda: Conv1D(0, 3), r"Conv1D\(features\)"),
    (lambda: Conv1D(2, (3, 3)), r"Conv1D\(kernel_size\): a positive integer or 1"),
    (lambda: Conv2D(2, 3, stride=0), r"Conv2D\(stride\)"),
    (lambda: Conv1D(2, 3, padding="FULL"), r"Conv1D\(padding\)"),
    (lambda: Conv2D(2, 3, padding=(1, 1)), r"Conv2D\(padding\)"),
    (lambda: MaxPool1D(2, padding=2), r"smaller than the window"),
    (lambda: AvgPool2D((2, 3), padding=((0, 0), (3, 0))), r"smaller than the window"),
])
def test_bad_options_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layers_round_trip_through_config():
    net = Sequential(Conv1D(3, 5, stride=2, padding=(1, 2)), MaxPool1D(2, padding="SAME"),
                     Conv2D(4, (2, 3), dilation=(1, 2), padding=((1, 0), (2, 2))),
                     AvgPool2D((2, 2), stride=1), fl.Reshape((-1, 1)),
                     fl.Embedding(7, 3), Flatten(), Dense(2))
    import json
    again = fl.from_config(json.loads(json.dumps(fl.to_config(net))))
    assert again == net and hash(again) == hash(net)


def test_public_functions_run_under_jit_on_a_cnn():
    net = Sequential(Conv1D(4, 3, stride=2, padding="SAME"), Activation("relu"),
                     MaxPool1D(2), Flatten(), Dense(3))
    params = net.init(jax.random.key(0), (10, 2))
    x = jax.random.normal(jax.random.key(1), (6, 10, 2))
    y = jnp.arange(6) % 3
    kw = dict(network=net, loss="softmax_cross_entropy")
    J, g = jax.jit(lambda p: fbp.value_and_grad(p, (x, y), **kw))(params)
    J_ref, g_ref = jax.value_and_grad(lambda p: fbp.objective(p, (x, y), **kw))(params)
    np.testing.assert_allclose(J, J_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
