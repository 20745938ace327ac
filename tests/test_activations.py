"""Each activation's hand-written g' equals jax.grad of its g, kinks included.

Evaluated elementwise on a grid that contains the kink z = 0, small and
moderate values, and saturated values up to |z| = 1e3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from functional_bp import ACTIVATIONS
from functional_bp.activations import get_activation

GRID = np.concatenate([
    [0.0, -0.0, 1e-6, -1e-6],
    np.linspace(-6, 6, 49),
    [-1e3, -300.0, -88.0, -30.0, 30.0, 88.0, 300.0, 1e3],
])


def autodiff_prime(g, z):
    return jax.vmap(jax.grad(g))(z)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_jax_grad_float64(name):
    act = ACTIVATIONS[name]
    with jax.enable_x64(True):
        z = jnp.asarray(GRID, dtype=jnp.float64)
        # atol: g' is at most about 1 here, and jax differentiates expm1 as
        # expm1(z) + 1, which is only accurate to ~eps absolute (1e-16), so
        # tiny derivatives (elu at z = -30) agree to 1e-15 absolute.
        np.testing.assert_allclose(act.dg(z), autodiff_prime(act.g, z), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_finite_and_correct_when_saturated_float32(name):
    act = ACTIVATIONS[name]
    z = jnp.asarray(GRID, dtype=jnp.float32)
    g, dg = act.g(z), act.dg(z)
    assert g.dtype == dg.dtype == jnp.float32
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(dg))
    # float32 against float64 truth: relative error ~ eps32 of the larger of |value|, 1.
    with jax.enable_x64(True):
        z64 = jnp.asarray(GRID, dtype=jnp.float64)
        g64, dg64 = act.g(z64), act.dg(z64)
    np.testing.assert_allclose(g, g64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dg, dg64, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, expected", [("relu", 0.0), ("leaky_relu", 1.0),
                                            ("identity", 1.0), ("elu", 1.0)])
def test_convention_at_zero(name, expected):
    act = ACTIVATIONS[name]
    assert float(act.dg(jnp.zeros(()))) == expected
    assert float(jax.grad(act.g)(jnp.zeros(()))) == expected  # the reference agrees


def test_pairs_and_names_resolve():
    pair = (jnp.sin, jnp.cos)
    act = get_activation(pair)
    assert act.g is jnp.sin and act.dg is jnp.cos
    with pytest.raises(ValueError, match="valid names"):
        get_activation("relu6")
    with pytest.raises(TypeError, match="layer 2"):
        get_activation(3, layer=2)
