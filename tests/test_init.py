"""init_mlp: shapes, dtypes, zero biases and the variance of each scheme."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp


@pytest.mark.parametrize("scheme, variance", [
    ("he", lambda n_in, n_out: 2 / n_in),
    ("glorot", lambda n_in, n_out: 2 / (n_in + n_out)),
    ("classic", lambda n_in, n_out: 1 / n_in),
])
def test_scheme_variances(scheme, variance):
    sizes = [400, 300, 200]
    params = fbp.init_mlp(jax.random.key(1), sizes, scheme=scheme)
    for p, n_in, n_out in zip(params, sizes[:-1], sizes[1:]):
        assert p["W"].shape == (n_in, n_out) and p["b"].shape == (n_out,)
        assert np.all(np.asarray(p["b"]) == 0)
        # 6e4+ samples: the sample variance is within 2% of the truth (>5 sigma).
        np.testing.assert_allclose(np.var(np.asarray(p["W"])), variance(n_in, n_out), rtol=0.02)


def test_dtype_and_determinism():
    a = fbp.init_mlp(jax.random.key(3), [4, 5, 2])
    b = fbp.init_mlp(jax.random.key(3), [4, 5, 2])
    c = fbp.init_mlp(jax.random.key(4), [4, 5, 2])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(a))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    assert not np.array_equal(a[0]["W"], c[0]["W"])
    with jax.enable_x64(True):
        d = fbp.init_mlp(jax.random.key(3), [4, 5, 2], dtype=jnp.float64)
        assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(d))
