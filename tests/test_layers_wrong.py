"""The comparison can fail: a plausible wrong backward of each layer type is caught.

Each twin below subclasses a layer and overrides its ``backward`` (for
Residual, ``backward_trace``, where the skip is added) with one classic
slip. Put in a network where the slip matters (a layer with parameters
upstream, m > 1), it must make the same comparisons the property tests use
fail: ``helpers.assert_backprop_close`` against ``jax.grad`` (with the
float64-truth fallback on for float32, so the fallback is shown not to
excuse a wrong equation) and the per-example comparison (per-example grads, norms and the
clipped gradient) against ``jax.vmap(jax.grad)`` (or ``jax.jacrev`` with a
dropout key). A slip that only shows across rows (the bias averaged) cannot
change a one-row gradient; the clipped gradient, one weighted backward pass
over the batch, catches it. The correct
layer passes both on the same case.
"""

import jax
import jax.numpy as jnp
import pytest

from functional_bp.layers import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Residual,
    Sequential,
)
from network_strategies import compare_backprop, compare_per_example, make_net_case


def _rows(v, like):
    return v.reshape((1,) * (like.ndim - 1) + (-1,))


class LayerNormWithoutMean(LayerNorm):
    """dJ/dx = r (h - xhat mean(h xhat)): the path through mu forgotten."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        xhat, r = cache
        h = dy * _rows(params["scale"], dy)
        return grads, r * (h - xhat * jnp.mean(h * xhat, axis=-1, keepdims=True))


class LayerNormWithoutXhat(LayerNorm):
    """dJ/dx = r (h - mean(h)): the path through the variance forgotten."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        xhat, r = cache
        h = dy * _rows(params["scale"], dy)
        return grads, r * (h - jnp.mean(h, axis=-1, keepdims=True))


class ResidualWithoutSkip(Residual):
    """dJ/dX = f's backward of dJ/dY only: the skip path dropped."""

    def backward_trace(self, params, caches, dy):
        return Sequential.backward_trace(self, params, caches, dy)


class DenseWNotTransposed(Dense):
    """dJ/dA = G W (square W, so the shapes cannot tell)."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, dy @ params["W"]


class DenseGradTransposed(Dense):
    """dJ/dW = (A^T G)^T (square W)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return grads | {"W": grads["W"].T}, dx


class DenseBiasAveraged(Dense):
    """dJ/db = the mean of the rows of G instead of their sum."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return grads | {"b": jnp.mean(dy.reshape(-1, dy.shape[-1]), axis=0)}, dx


class ActivationWithoutGPrime(Activation):
    """dJ/dZ = dJ/dA: g'(Z) forgotten."""

    def backward(self, params, cache, dy):
        return {}, dy


class DropoutIgnoringMask(Dropout):
    """dJ/dX = dJ/dY: the forward's mask (and 1/(1 - rate)) forgotten."""

    def backward(self, params, cache, dy):
        return {}, dy


class FlattenWrongOrder(Flatten):
    """dJ/dX: each row unflattened in column-major order instead of the forward's row-major."""

    def backward(self, params, cache, dy):
        m, axes = cache[0], cache[1:]
        k = len(axes)
        back = dy.reshape((m, *axes[::-1]))
        return {}, back.transpose((0, *range(k, 0, -1)))


def _net(*layers):
    return Sequential(*layers)


# (name, the wrong layer, the right one, the network around it, input shape, loss, dropout seed)
TWINS = [
    ("LayerNorm without the mean term", LayerNormWithoutMean(), LayerNorm(),
     lambda L: _net(Dense(5), Activation("tanh"), L, Dense(3)), (4,), "softmax_cross_entropy",
     None),
    ("LayerNorm without the xhat term", LayerNormWithoutXhat(), LayerNorm(),
     lambda L: _net(Dense(5), Activation("tanh"), L, Dense(3)), (4,), "mse", None),
    ("Residual dropping the skip",
     ResidualWithoutSkip(LayerNorm(), Dense(4), Activation("relu")),
     Residual(LayerNorm(), Dense(4), Activation("relu")),
     lambda L: _net(Dense(4), L, Dense(2)), (3,), "mse", None),
    ("Dense with W instead of W^T", DenseWNotTransposed(4), Dense(4),
     lambda L: _net(Dense(4), Activation("tanh"), L, Dense(2)), (3,), "quadratic", None),
    ("Dense with dW transposed", DenseGradTransposed(4), Dense(4),
     lambda L: _net(Dense(4), Activation("tanh"), L, Dense(2)), (3,), "quadratic", None),
    ("Dense with the bias averaged", DenseBiasAveraged(4), Dense(4),
     lambda L: _net(L, Activation("gelu"), Dense(2)), (3,), "sigmoid_cross_entropy", None),
    ("Activation without g'", ActivationWithoutGPrime("tanh"), Activation("tanh"),
     lambda L: _net(Dense(4), L, Dense(2)), (3,), "mse", None),
    ("Dropout ignoring the mask", DropoutIgnoringMask(0.5), Dropout(0.5),
     lambda L: _net(Dense(6), Activation("elu"), L, Dense(2)), (3,), "mse", 3),
    ("Flatten in the wrong order", FlattenWrongOrder(), Flatten(),
     lambda L: _net(Dense(5), Activation("tanh"), L, Dense(2)), (3, 4), "mse", None),
]
IDS = [t[0] for t in TWINS]
DTYPES = [jnp.float32, jnp.float64]


def _case(twin, layer, dtype):
    _, _, _, build, input_shape, loss, dropout_seed = twin
    return make_net_case(build(layer), input_shape, 6, loss, dtype=dtype, seed=1,
                         target_kind="binary" if loss == "sigmoid_cross_entropy" else None,
                         dropout_seed=dropout_seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("twin", TWINS, ids=IDS)
def test_wrong_backward_is_caught(twin, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        wrong = _case(twin, twin[1], dtype)
        with pytest.raises(AssertionError, match="over rtol"):
            compare_backprop(wrong)
        with pytest.raises(AssertionError, match="over rtol"):
            compare_per_example(wrong)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("twin", TWINS, ids=IDS)
def test_right_backward_passes_the_same_case(twin, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        right = _case(twin, twin[2], dtype)
        compare_backprop(right)
        compare_per_example(right)
        # the same numbers: only the layer's class differs between the twins
        wrong = _case(twin, twin[1], dtype)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                         wrong.params, right.params))
