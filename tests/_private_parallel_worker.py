"""Data-parallel private training on 4 host devices (run by tests/test_private_fit.py).

Not collected by default (the name does not start with ``test_``): it needs
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. The private step with
``mesh=`` must clip each device's rows, add the partial sums once, and add
the noise once: the same step as on one device, so the injected noise has
variance (sigma C / (q N))^2 per coordinate, not D times that.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import privacy
from functional_bp.parallel import data_mesh
from functional_bp.privacy import DPConfig
from functional_bp.train import fit, init_state, sgd
from helpers import assert_tree_close, rtol_for

D = 4
pytestmark = pytest.mark.skipif(
    jax.device_count() != D, reason=f"needs {D} devices (run through test_private_fit.py)"
)
ACTS = ("relu", "identity")
LOSS = "softmax_cross_entropy"


def _problem(n, sizes=(6, 10, 3), seed=0):
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(kp, list(sizes))
    return params, 3.0 * jax.random.normal(kx, (n, sizes[0])), jax.random.randint(ky, (n,), 0,
                                                                                  sizes[-1])


def test_the_sharded_clipped_sum_equals_one_device():
    """Without noise: each device's clipped rows, summed once (capacity 7: not a multiple of 4,
    and several chunks in some steps)."""
    params, x, y = _problem(50)
    plan = DPConfig(clip_norm=1.0, noise_multiplier=0.0, accountant=None).plan(
        num_examples=50, batch_size=10, steps=1, capacity=7)
    mesh = data_mesh()
    for t in range(4):
        key = privacy.step_key(jax.random.key(1), t)
        one = privacy.private_grad(params, (x, y), key, plan, activations=ACTS, loss=LOSS)
        four = privacy.private_grad(params, (x, y), key, plan, activations=ACTS, loss=LOSS,
                                    mesh=mesh)
        assert_tree_close(four, one, rtol_for(jnp.float32), prefix=f"step {t}")


def test_the_noise_is_added_once_with_the_single_device_variance():
    """noise = step(sigma) - step(0) with the same keys, on 4 devices and on one.

    200 steps x 103 coordinates = 20,600 draws: the sample variance's relative
    standard deviation is sqrt(2/n) = 1%; the test allows 5 of them (false
    alarm 5.7e-7). Noise added on every device before the sum would have 4
    times the variance (300 standard deviations away). The 4-device noise is
    also the single-device noise itself, draw for draw.
    """
    N, m, C, sigma, T = 40, 8, 0.7, 1.9, 200
    params, x, y = _problem(N)
    noisy = DPConfig(clip_norm=C, noise_multiplier=sigma).plan(num_examples=N, batch_size=m,
                                                               steps=T)
    clean = DPConfig(clip_norm=C, noise_multiplier=0.0, accountant=None).plan(
        num_examples=N, batch_size=m, steps=T)
    mesh = data_mesh()
    keys = [privacy.step_key(jax.random.key(2), t) for t in range(T)]

    def noise(mesh):
        step = jax.jit(lambda k, plan: privacy.private_grad(
            params, (x, y), k, plan, activations=ACTS, loss=LOSS, mesh=mesh),
            static_argnums=1)
        out = []
        for k in keys:
            a, b = step(k, noisy), step(k, clean)
            out.append(np.concatenate([np.asarray(u, np.float64).ravel()
                                       - np.asarray(v, np.float64).ravel()
                                       for u, v in zip(jax.tree_util.tree_leaves(a),
                                                       jax.tree_util.tree_leaves(b))]))
        return np.concatenate(out)

    four, one = noise(mesh), noise(None)
    n = four.size
    assert n == T * (6 * 10 + 10 + 10 * 3 + 3)
    expected = (sigma * C / m) ** 2
    for z in (four, one):
        assert abs(z.mean()) < 5 * math.sqrt(expected / n)
        assert abs(np.mean(z**2) / expected - 1) < 5 * math.sqrt(2 / n), np.mean(z**2) / expected
    np.testing.assert_allclose(four, one, rtol=0, atol=1e-5 * math.sqrt(expected))


def test_fit_with_a_mesh_equals_fit_on_one_device():
    params, x, y = _problem(96)
    opt = sgd(0.1)
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.1)
    kw = dict(activations=ACTS, loss=LOSS, optimizer=opt, epochs=2, batch_size=12, dp=dp)
    one, h1 = fit(init_state(params, optimizer=opt, key=jax.random.key(5)), (x, y), **kw)
    four, h4 = fit(init_state(params, optimizer=opt, key=jax.random.key(5)), (x, y),
                   mesh=data_mesh(), **kw)
    assert_tree_close(four.params, one.params, rtol_for(jnp.float32))
    assert [r["epsilon"] for r in h4] == [r["epsilon"] for r in h1]
