"""Embedding against jax.grad: random embedding models, repeated indices, a wrong backward.

Hypothesis draws an Embedding on (m,) or (m, T) indices from a vocabulary of
1-6 rows (so indices repeat, within an example and across examples),
optionally a Dense on every position, then Flatten and a head
(tests/conv_strategies.py). Every leaf and every layer's cotangent match
``jax.grad`` of the plain objective (there is no dJ/dX for integer
indices), and per-example gradients, norms and the clipped gradient match
``jax.vmap(jax.grad)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings

import functional_bp as fbp
from functional_bp.layers import Activation, Dense, Embedding, Flatten, Sequential
from helpers import profile_share
from conv_strategies import check, check_backprop, check_per_example, embedding_cases, make_layer_case



def edge_cases(dtype):
    d = dict(dtype=dtype)
    return [
        # (m,) indices, one row of W
        make_layer_case(Sequential(Embedding(1, 3), Dense(2)), (), 4, "softmax_cross_entropy",
                        target_kind="labels", vocab=1, seed=1, **d),
        # every position of an example on the same row: the per-example norm's cross terms
        make_layer_case(Sequential(Embedding(5, 2), Flatten(), Dense(3)), (4,), 3, "mse",
                        x=np.array([[2, 2, 2, 2], [0, 1, 0, 1], [4, 3, 2, 1]]), seed=2, **d),
        # a Dense on each position before the head, l2 on every W (the table's too)
        make_layer_case(Sequential(Embedding(3, 4), Dense(2), Activation("tanh"), Flatten(),
                                   Dense(2)), (5,), 2, "sigmoid_cross_entropy",
                        target_kind="binary", l2=0.5, vocab=3, seed=3, **d),
    ]


def _with_examples(dtype):
    def decorate(f):
        for case in reversed(edge_cases(dtype)):
            f = example(case)(f)
        return f
    return decorate


@settings(max_examples=profile_share(10))
@given(embedding_cases())
def test_embedding_float32(case):
    check(case)


@_with_examples(jnp.float64)
@settings(max_examples=profile_share(10))
@given(embedding_cases(jnp.float64))
def test_embedding_float64(case):
    check(case)


# --- wrong rules fail the same comparison ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OverwritingEmbedding(Embedding):
    """dW[v] = the cotangent of the last position that looked v up (written, not added)."""

    def backward(self, params, cache, dy):
        dW = jnp.zeros_like(params["W"]).at[cache.reshape(-1)].set(dy.reshape(-1, dy.shape[-1]))
        return {"W": dW}, None


@dataclasses.dataclass(frozen=True)
class RepeatsIgnoredNorm(Embedding):
    """||dL_n/dW||^2 as sum_t ||G[n, t]||^2: wrong when an example repeats an index."""

    def sq_norms(self, params, cache, dy):
        return jnp.sum(dy * dy, axis=tuple(range(1, dy.ndim)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("wrong, checker", [(OverwritingEmbedding(4, 3), check_backprop),
                                            (RepeatsIgnoredNorm(4, 3), check_per_example)],
                         ids=["overwriting instead of adding", "repeats ignored in the norm"])
def test_a_wrong_rule_is_caught(wrong, checker, dtype):
    net = Sequential(Embedding(4, 3), Flatten(), Dense(2))
    x = np.array([[1, 3, 1], [0, 0, 2], [3, 2, 1]])  # repeats within and across examples
    case = make_layer_case(net, (3,), 3, "mse", dtype=dtype, x=x, seed=4)
    with jax.enable_x64(dtype == jnp.float64):
        checker(case)
        with pytest.raises(AssertionError, match="over rtol"):
            checker(case, network=Sequential(wrong, *net.layers[1:]))


# --- the rules, directly ------------------------------------------------------------------

def test_repeated_indices_add_their_cotangents():
    emb = Embedding(4, 2)
    params, _ = emb.init(jax.random.key(0), (3,))
    x = jnp.array([[3, 1, 3], [3, 0, 0]])
    _, cache = emb.forward(params, x)
    G = jnp.arange(12.0).reshape(2, 3, 2)
    dW = emb.backward(params, cache, G)[0]["W"]
    np.testing.assert_array_equal(dW, [[8 + 10, 9 + 11], [2, 3], [0, 0], [0 + 4 + 6, 1 + 5 + 7]])
    # example 1's own gradient touches rows 0 (twice) and 3: its norm has the cross term
    sq = emb.sq_norms(params, cache, G)
    np.testing.assert_allclose(sq[1], 6**2 + 7**2 + 18**2 + 20**2)


def test_indices_out_of_range_give_nan_rows_not_other_rows():
    emb = Embedding(3, 2)
    params, _ = emb.init(jax.random.key(0), ())
    y, _ = emb.forward(params, jnp.array([0, 3, -1, 2]))
    assert bool(jnp.all(jnp.isnan(y[1]))) and bool(jnp.all(jnp.isnan(y[2])))
    np.testing.assert_array_equal(y[0], params["W"][0])
    np.testing.assert_array_equal(y[3], params["W"][2])


def test_float_inputs_and_wrong_shapes_are_refused():
    net = Sequential(Embedding(5, 2), Flatten(), Dense(2))
    params = net.init(jax.random.key(0), (3,))
    y = jnp.zeros((2,), jnp.int32)
    with pytest.raises(TypeError, match="must be integer indices; got dtype float32"):
        fbp.value_and_grad(params, (jnp.zeros((2, 3)), y), network=net,
                           loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"\(Embedding\): inputs are \(m,\) or \(m, T\)"):
        net.init(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match=r"Embedding\(vocab_size\): a positive integer"):
        Embedding(0, 2)


def test_public_functions_on_an_embedding_model():
    net = Sequential(Embedding(6, 3), Flatten(), Dense(2))
    params = net.init(jax.random.key(0), (4,))
    x = jnp.array([[1, 2, 1, 5], [0, 0, 0, 0], [5, 4, 3, 2]])
    y = jnp.array([0, 1, 1])
    kw = dict(network=net, loss="softmax_cross_entropy")
    r = fbp.backprop(params, (x, y), **kw)
    assert r.input_grad is None  # no gradient with respect to indices
    g_ref = jax.grad(lambda p: fbp.objective(p, (x, y), **kw))(params)
    np.testing.assert_allclose(r.grads[0]["W"], g_ref[0]["W"], rtol=1e-6, atol=1e-7)
    assert fbp.per_example_grads(params, (x, y), **kw)[0]["W"].shape == (3, 6, 3)
