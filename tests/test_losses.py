"""Each loss's hand-written dL/da equals jax.grad of its L, for any targets.

Cross-entropy gradients are the fused forms (softmax(a) sum(y) - y and
sigmoid(a) - y); they must stay finite and exact for logits up to |a| = 1e4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from functional_bp import LOSSES

RNG = np.random.default_rng(0)
TARGETS = {
    "one_hot": np.eye(5)[RNG.integers(0, 5, 7)],
    "soft": RNG.dirichlet(np.ones(5), 7),
    "soft_unnormalised": RNG.uniform(0, 2, (7, 5)),
    "reals": RNG.standard_normal((7, 5)),
}


def autodiff_grad(loss, a, y):
    return jax.grad(lambda a: jnp.sum(loss.value(a, y)))(a)


@pytest.mark.parametrize("kind", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_grad_matches_jax_grad_float64(name, kind, scale):
    loss = LOSSES[name]
    with jax.enable_x64(True):
        a = jnp.asarray(scale * RNG.standard_normal((7, 5)))
        y = jnp.asarray(TARGETS[kind])
        assert loss.value(a, y).shape == (7,)
        np.testing.assert_allclose(loss.grad(a, y), autodiff_grad(loss, a, y),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "sigmoid_cross_entropy"])
@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_huge_logits_are_finite_and_exact_float32(name, kind):
    loss = LOSSES[name]
    a = jnp.asarray(1e4 * np.sign(RNG.standard_normal((7, 5))), dtype=jnp.float32)
    y = jnp.asarray(TARGETS[kind], dtype=jnp.float32)
    value, grad = loss.value(a, y), loss.grad(a, y)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    with jax.enable_x64(True):  # the same computation in float64 is the truth
        a64, y64 = jnp.asarray(a, jnp.float64), jnp.asarray(y, jnp.float64)
        np.testing.assert_allclose(value, loss.value(a64, y64), rtol=1e-6)
        np.testing.assert_allclose(grad, autodiff_grad(loss, a64, y64), rtol=1e-6, atol=1e-6)


def test_softmax_cross_entropy_of_a_confident_right_answer_is_zero():
    loss = LOSSES["softmax_cross_entropy"]
    a = jnp.array([[1e4, -1e4, 0.0]])
    y = jnp.array([[1.0, 0.0, 0.0]])
    assert float(loss.value(a, y)[0]) == 0.0
    np.testing.assert_array_equal(loss.grad(a, y), [[0.0, 0.0, 0.0]])


def test_definitions():
    a = jnp.array([[1.0, 2.0]])
    y = jnp.array([[0.0, 4.0]])
    assert float(LOSSES["quadratic"].value(a, y)[0]) == 0.5 * (1 + 4)
    assert float(LOSSES["mse"].value(a, y)[0]) == (1 + 4) / 2
