"""DP-SGD as a product: configuration checks, Poisson sampling, accounting, the private step.

The statistical tests use fixed keys, so each run is deterministic; the
stated false-alarm rate is the probability that a correct implementation
fails the test for a key drawn at random (every threshold is at least 5
standard deviations, Bonferroni-corrected where several are tested).
"""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import privacy
from functional_bp.privacy import DPConfig, DPPlan

from helpers import assert_tree_close, rtol_for

dp_accounting = pytest.importorskip("dp_accounting")

ACTS = ("relu", "identity")
LOSS = "softmax_cross_entropy"


def _problem(n=60, sizes=(5, 7, 3), dtype=jnp.float32, seed=0):
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(kp, list(sizes), dtype=dtype)
    x = 3.0 * jax.random.normal(kx, (n, sizes[0]), dtype)  # large inputs: many clipped rows
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    return params, x, y


# ----------------------------------------------------------------- Poisson sampling

def test_poisson_inclusion_rate_independence_and_batch_size_variance():
    """Each example joins each step independently with probability q.

    N = 200, q = 0.1, T = 4000 steps (800,000 Bernoulli draws). Checks, each at
    >= 5 standard deviations: the overall rate (two-sided false alarm 5.7e-7),
    every example's own rate (200 tests at 5.5 sd: 200 x 3.8e-8 = 7.6e-6), and
    the variance of the batch size |B| against N q (1 - q) (5 sd of the sample
    variance: ~6e-7 under the normal approximation), which fixed-size or
    correlated sampling would fail.
    """
    N, q, T = 200, 0.1, 4000
    keys = jax.vmap(lambda t: privacy.step_key(jax.random.key(7), t))(jnp.arange(T))
    masks = np.asarray(jax.vmap(lambda k: privacy.poisson_mask(k, N, q))(keys))
    assert masks.shape == (T, N) and masks.dtype == bool

    total = masks.sum()
    z = (total - T * N * q) / math.sqrt(T * N * q * (1 - q))
    assert abs(z) < 5.0, z

    per_example = masks.sum(axis=0)
    z_i = (per_example - T * q) / math.sqrt(T * q * (1 - q))
    assert np.max(np.abs(z_i)) < 5.5, np.max(np.abs(z_i))

    sizes = masks.sum(axis=1).astype(np.float64)
    var = N * q * (1 - q)
    kurt = (1 - 6 * q * (1 - q)) / var  # excess kurtosis of Binomial(N, q)
    rel_sd = math.sqrt((2 + kurt) / (T - 1))
    assert abs(sizes.var(ddof=1) / var - 1) < 5 * rel_sd, sizes.var(ddof=1)


@pytest.mark.parametrize("capacity", [5, 12, 40])
def test_poisson_batch_chunks_are_the_mask_in_order_with_zero_weight_padding(capacity):
    """Chunks 0..k-1 list exactly the sampled examples, weight 1; padding has weight 0."""
    N, q = 50, 0.3
    for t in range(5):
        key = privacy.step_key(jax.random.key(3), t)
        mask = np.asarray(privacy.poisson_mask(key, N, q))
        sampled = np.flatnonzero(mask)
        chunks = [privacy.poisson_batch(key, N, q, capacity, chunk=j) for j in range(4)]
        size = int(chunks[0].size)
        assert size == mask.sum()
        k = int(privacy.num_chunks(size, capacity))
        assert k == max(1, math.ceil(size / capacity))
        got = []
        for j, b in enumerate(chunks):
            w = np.asarray(b.weights)
            assert b.indices.shape == (capacity,) and w.shape == (capacity,)
            assert set(np.unique(w)) <= {0.0, 1.0}
            real = min(max(size - j * capacity, 0), capacity)
            np.testing.assert_array_equal(w, np.arange(capacity) < real)  # ones, then zeros
            idx = np.asarray(b.indices)
            assert np.all((idx >= 0) & (idx < N))  # padding rows are valid rows too
            got += list(idx[:real])
        np.testing.assert_array_equal(got, sampled)


def test_poisson_capacity_is_the_binomial_tail_quantile():
    """P(|B| > c) <= p < P(|B| > c - 1), against scipy's binomial survival function."""
    binom = pytest.importorskip("scipy.stats").binom
    for N, q in [(1437, 32 / 1437), (60000, 256 / 60000), (100, 0.1), (10, 0.05),
                 (1000, 0.5), (7, 1 / 7)]:
        for p in (1e-3, 1e-6, 1e-12):
            c = privacy.poisson_capacity(N, q, p)
            assert binom.sf(c, N, q) <= p < binom.sf(c - 1, N, q), (N, q, p, c)
    assert privacy.poisson_capacity(30, 1.0) == 30


# ----------------------------------------------------------------- accounting

@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_epsilon_matches_dp_accounting_called_directly(name):
    q, sigma, T, delta = 32 / 1437, 1.1, 450, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), T)
    acc = (dp_accounting.rdp.RdpAccountant() if name == "rdp"
           else dp_accounting.pld.PLDAccountant())
    direct = acc.compose(event).get_epsilon(delta)
    ours = privacy.epsilon(T, sampling_probability=q, noise_multiplier=sigma, delta=delta,
                           accountant=name)
    assert ours == direct
    plan = DPConfig(clip_norm=1.0, noise_multiplier=sigma, delta=delta, accountant=name).plan(
        num_examples=1437, batch_size=32, steps=T)
    assert plan.epsilon() == direct
    assert 0 < direct < 10  # a real number, not inf or 0
    assert privacy.epsilon(0, sampling_probability=q, noise_multiplier=sigma, delta=delta) == 0


def test_pld_is_tighter_than_rdp_and_epsilon_grows_with_steps():
    kw = dict(sampling_probability=0.02, noise_multiplier=1.0, delta=1e-5)
    rdp = [privacy.epsilon(T, accountant="rdp", **kw) for T in (100, 1000)]
    pld = privacy.epsilon(1000, accountant="pld", **kw)
    assert rdp[0] < rdp[1] and pld < rdp[1]


@pytest.mark.parametrize("name,T,N", [("rdp", 450, 1437), ("pld", 10, 320)])
def test_calibration_round_trips(name, T, N):
    """calibrate(eps) gives sigma with epsilon(sigma) <= eps, and no smaller sigma does.

    (PLD calibration takes ~10 accountant runs of ~0.5 s: a short run keeps it quick.)
    """
    q, delta, target = 32 / N, 1e-5, 2.0
    sigma = privacy.calibrate_noise_multiplier(target, delta=delta, steps=T,
                                               sampling_probability=q, accountant=name)
    eps = lambda s: privacy.epsilon(T, sampling_probability=q, noise_multiplier=s,  # noqa: E731
                                    delta=delta, accountant=name)
    assert eps(sigma) <= target
    assert eps(sigma) > target * (1 - 1e-3)
    assert eps(sigma * (1 - 1e-3)) > target

def test_a_target_epsilon_plan_uses_the_calibrated_noise():
    q, T, target = 32 / 1437, 450, 2.0
    plan = DPConfig(clip_norm=1.0, target_epsilon=target, delta=1e-6).plan(
        num_examples=1437, batch_size=32, steps=T)
    sigma = privacy.calibrate_noise_multiplier(target, delta=1e-6, steps=T,
                                               sampling_probability=q)
    assert plan.noise_multiplier == sigma and plan.epsilon() <= target
    assert plan.target_epsilon == target and not plan.delta_is_default


def test_default_delta_is_below_one_over_n_and_stated():
    for N in (1, 9, 10, 1437, 60000, 10**6):
        d = privacy.default_delta(N)
        assert d <= 1 / (10 * N) < 10 * d
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(num_examples=1437,
                                                             batch_size=32, steps=10)
    assert plan.delta == 1e-5 and plan.delta_is_default
    assert "delta 1e-05 (default" in plan.describe()


def test_plan_is_hashable_and_json_ready():
    plan = DPConfig(clip_norm=0.5, noise_multiplier=1.2).plan(num_examples=100, batch_size=10,
                                                             steps=20)
    assert hash(plan) == hash(DPConfig(clip_norm=0.5, noise_multiplier=1.2).plan(
        num_examples=100, batch_size=10, steps=20))
    d = json.loads(json.dumps(plan.as_dict()))
    assert d["noise_multiplier"] == 1.2 and d["capacity"] == plan.capacity
    assert DPPlan(**d) == plan


# ----------------------------------------------------------------- the private step

def _L_i(params, x_i, y_i):
    """Example i's own loss, from the plain-JAX objective (the reference)."""
    return fbp.objective(params, (x_i[None, :], y_i[None]), activations=ACTS, loss=LOSS)


_vmap_grad = jax.jit(jax.vmap(jax.grad(_L_i), in_axes=(None, 0, 0)))


def _reference(params, x, y, key, *, N, batch_size, clip_norm, sigma):
    """By hand: the documented sample and noise, jax.vmap(jax.grad) per example, clipping."""
    sample_key, noise_key = jax.random.split(key)
    mask = np.asarray(jax.random.bernoulli(sample_key, batch_size / N, (N,)))
    idx = np.flatnonzero(mask)

    # every example's gradient (one shape, one compilation), then the sampled rows
    g = _vmap_grad(params, x, y)
    leaves, treedef = jax.tree_util.tree_flatten(g)
    leaves = [np.asarray(v, np.float64)[idx] for v in leaves]
    sq = sum(np.sum(v.reshape(len(idx), -1) ** 2, axis=1) for v in leaves)
    c = np.minimum(1.0, clip_norm / np.sqrt(sq))
    # one draw of a normal per parameter, cut into the leaves in tree_leaves order
    sizes = [int(np.prod(v.shape[1:])) for v in leaves]
    z = np.asarray(jax.random.normal(noise_key, (sum(sizes),), x.dtype), np.float64)
    out = []
    for v, end, size in zip(leaves, np.cumsum(sizes), sizes):
        clipped = np.tensordot(c, v, axes=1)
        noise = sigma * clip_norm * z[end - size:end].reshape(v.shape[1:])
        out.append((clipped + noise) / batch_size)
    return treedef.unflatten(out), len(idx), c


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_private_grad_equals_vmap_grad_clipped_by_hand_plus_the_same_noise(dtype, sigma):
    """Poisson sample, overflow chunks (capacity 4 < |B|), clipping, noise, / (q N)."""
    with jax.enable_x64(dtype == jnp.float64):
        N, m, C = 60, 10, 5.0  # per-example norms here range over about 2..15
        params, x, y = _problem(N, dtype=dtype)
        acct = "rdp" if sigma else None
        plan = DPConfig(clip_norm=C, noise_multiplier=sigma, accountant=acct).plan(
            num_examples=N, batch_size=m, steps=5, capacity=4)
        sizes, factors = [], []
        for t in range(4):
            key = privacy.step_key(jax.random.key(11), t)
            ours = privacy.private_grad(params, (x, y), key, plan, activations=ACTS, loss=LOSS)
            ref, size, c = _reference(params, x, y, key, N=N, batch_size=m, clip_norm=C,
                                      sigma=sigma)
            sizes.append(size)
            factors += list(c)
            assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(params)
            assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(ours))
            assert_tree_close(ours, ref, rtol_for(dtype), prefix=f"step {t}")
        assert max(sizes) > 2 * plan.capacity  # three chunks or more were summed
        assert min(factors) < 1 and max(factors) == 1  # some rows clipped, some not


def test_private_batch_grad_ignores_padded_rows():
    """Rows of weight 0 contribute nothing, whatever they hold."""
    N, m, C, sigma = 60, 10, 0.5, 0.8
    params, x, y = _problem(N)
    plan = DPConfig(clip_norm=C, noise_multiplier=sigma).plan(num_examples=N, batch_size=m,
                                                              steps=5)
    key = privacy.step_key(jax.random.key(5), 0)
    sample_key, noise_key = jax.random.split(key)
    b = privacy.poisson_batch(sample_key, N, plan.sampling_probability, plan.capacity)
    assert int(b.size) <= plan.capacity
    ours = privacy.private_batch_grad(params, (x[b.indices], y[b.indices]), b.weights,
                                      noise_key, plan, activations=ACTS, loss=LOSS)
    # the same rows' padding replaced by other examples: the same gradient
    other = jnp.where(b.weights > 0, b.indices, (b.indices + 17) % N)
    again = privacy.private_batch_grad(params, (x[other], y[other]), b.weights, noise_key,
                                       plan, activations=ACTS, loss=LOSS)
    assert_tree_close(again, ours, rtol_for(jnp.float32))
    ref, _, _ = _reference(params, x, y, key, N=N, batch_size=m, clip_norm=C, sigma=sigma)
    assert_tree_close(ours, ref, rtol_for(jnp.float32))


def test_noise_variance_is_sigma_c_over_expected_batch_size_squared():
    """Per coordinate, Var = (sigma C / (q N))^2, and the mean is 0.

    The noise is the private step minus the same step without noise (same key,
    same sample). 200 steps x 785 coordinates = 157,000 draws: the sample
    variance's relative standard deviation is sqrt(2/n) = 0.36%, the test
    allows 5 of them (false alarm 5.7e-7); the mean is tested at 5 sd too.
    Each leaf is also tested on its own at 5.5 sd (4 leaves: < 2e-7).
    """
    N, m, C, sigma, T = 40, 8, 0.7, 1.9, 200
    params, x, y = _problem(N, sizes=(20, 30, 5))
    noisy = DPConfig(clip_norm=C, noise_multiplier=sigma).plan(num_examples=N, batch_size=m,
                                                               steps=T)
    clean = DPConfig(clip_norm=C, noise_multiplier=0.0, accountant=None).plan(
        num_examples=N, batch_size=m, steps=T)
    keys = jax.vmap(lambda t: privacy.step_key(jax.random.key(2), t))(jnp.arange(T))
    run = lambda plan: jax.vmap(  # noqa: E731
        lambda k: privacy.private_grad(params, (x, y), k, plan, activations=ACTS, loss=LOSS))(keys)
    diff = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b),
                                  run(noisy), run(clean))
    expected_var = (sigma * C / m) ** 2  # q N = m
    leaves = [v.reshape(-1) for v in jax.tree_util.tree_leaves(diff)]
    allv = np.concatenate(leaves)
    n = allv.size
    assert n == T * (20 * 30 + 30 + 30 * 5 + 5)
    assert abs(allv.mean()) < 5 * math.sqrt(expected_var / n)
    assert abs(np.mean(allv**2) / expected_var - 1) < 5 * math.sqrt(2 / n)
    for v in leaves:
        assert abs(np.mean(v**2) / expected_var - 1) < 5.5 * math.sqrt(2 / v.size)


def test_a_resumed_run_redraws_the_same_batch_and_noise():
    N, m = 60, 10
    params, x, y = _problem(N)
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(num_examples=N, batch_size=m,
                                                             steps=5)
    run_key = jax.random.key(42)
    first = [privacy.private_grad(params, (x, y), privacy.step_key(run_key, t), plan,
                                  activations=ACTS, loss=LOSS) for t in range(3)]
    resumed = privacy.private_grad(params, (x, y), privacy.step_key(jax.random.key(42), 2),
                                   plan, activations=list(ACTS), loss=LOSS)
    for a, b in zip(jax.tree_util.tree_leaves(first[2]), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][0]["W"], first[1][0]["W"])


# ----------------------------------------------------------------- refusals

BAD_CONFIGS = [
    (dict(clip_norm=0.0, noise_multiplier=1.0), ValueError, "clip_norm must be finite and > 0"),
    (dict(clip_norm=-1.0, noise_multiplier=1.0), ValueError, "clip_norm"),
    (dict(clip_norm=math.inf, noise_multiplier=1.0), ValueError, "clip_norm"),
    (dict(clip_norm=math.nan, noise_multiplier=1.0), ValueError, "clip_norm"),
    (dict(clip_norm=True, noise_multiplier=1.0), TypeError, "clip_norm must be a real number"),
    (dict(clip_norm="1", noise_multiplier=1.0), TypeError, "clip_norm"),
    (dict(clip_norm=1.0), ValueError, "got neither"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=3.0), ValueError, "got both"),
    (dict(clip_norm=1.0, noise_multiplier=-0.1), ValueError, "noise_multiplier must be"),
    (dict(clip_norm=1.0, noise_multiplier=math.inf), ValueError, "noise_multiplier must be"),
    (dict(clip_norm=1.0, noise_multiplier=0.0), ValueError, "zero noise has no finite epsilon"),
    (dict(clip_norm=1.0, noise_multiplier=0.0, accountant="pld"), ValueError, "zero noise"),
    (dict(clip_norm=1.0, target_epsilon=0.0), ValueError, "target_epsilon must be"),
    (dict(clip_norm=1.0, target_epsilon=math.inf), ValueError, "target_epsilon must be"),
    (dict(clip_norm=1.0, target_epsilon=3.0, accountant=None), ValueError,
     "needs an accountant"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, delta=0.0), ValueError, "delta must be in"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, delta=1.0), ValueError, "delta must be in"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, accountant=None), ValueError,
     "has no effect"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, sampling="uniform"), ValueError,
     "sampling must be one of"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, accountant="gdp"), ValueError,
     "accountant must be one of"),
    (dict(clip_norm=1.0, noise_multiplier=1.0, sampling="shuffle"), ValueError,
     "does not hold for shuffled"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_CONFIGS)
def test_bad_configurations_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        DPConfig(**kwargs)


def test_shuffle_without_accounting_is_allowed_and_says_so():
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0, sampling="shuffle",
                    accountant=None).plan(num_examples=100, batch_size=10, steps=5)
    assert plan.capacity == 10 and "no privacy claim" in plan.describe()
    with pytest.raises(ValueError, match="no privacy claim"):
        plan.epsilon()
    params, x, y = _problem(100)
    with pytest.raises(ValueError, match="call private_batch_grad"):
        privacy.private_grad(params, (x, y), jax.random.key(0), plan, activations=ACTS,
                             loss=LOSS)


@pytest.mark.parametrize("plan_kwargs,error,match", [
    (dict(num_examples=100, batch_size=10, steps=5), None, None),
    (dict(num_examples=1000, batch_size=10, steps=5), ValueError, "promises nothing"),
    (dict(num_examples=10, batch_size=11, steps=5), ValueError, "larger than num_examples"),
    (dict(num_examples=0, batch_size=1, steps=5), ValueError, "num_examples must be >= 1"),
    (dict(num_examples=10, batch_size=2, steps=0), ValueError, "steps must be >= 1"),
    (dict(num_examples=10, batch_size=2.0, steps=1), TypeError, "batch_size must be an integer"),
])
def test_plan_checks_delta_against_the_dataset(plan_kwargs, error, match):
    cfg = DPConfig(clip_norm=1.0, noise_multiplier=1.0, delta=1e-3)
    if error is None:
        assert cfg.plan(**plan_kwargs).delta == 1e-3
    else:
        with pytest.raises(error, match=match):
            cfg.plan(**plan_kwargs)


def test_accounting_and_step_refusals():
    kw = dict(sampling_probability=0.01, noise_multiplier=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="zero noise"):
        privacy.epsilon(10, **{**kw, "noise_multiplier": 0.0})
    with pytest.raises(ValueError, match="sampling_probability must be in"):
        privacy.epsilon(10, **{**kw, "sampling_probability": 0.0})
    with pytest.raises(ValueError, match="sampling_probability must be in"):
        privacy.epsilon(10, **{**kw, "sampling_probability": 1.5})
    with pytest.raises(ValueError, match="accountant must be one of"):
        privacy.epsilon(10, accountant="moments", **kw)
    params, x, y = _problem(60)
    plan = DPConfig(clip_norm=1.0, noise_multiplier=1.0).plan(num_examples=60, batch_size=10,
                                                             steps=5)
    with pytest.raises(ValueError, match="need a random key"):
        privacy.private_grad(params, (x, y), None, plan, activations=ACTS, loss=LOSS)
    with pytest.raises(TypeError, match="plan must be a DPPlan"):
        privacy.private_grad(params, (x, y), jax.random.key(0), plan.as_dict(),
                             activations=ACTS, loss=LOSS)
    with pytest.raises(ValueError, match="num_examples=60"):
        privacy.private_grad(params, (x[:50], y[:50]), jax.random.key(0), plan,
                             activations=ACTS, loss=LOSS)


def test_missing_dp_accounting_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"functional_bp\[dp\]"):
        privacy.epsilon(10, sampling_probability=0.01, noise_multiplier=1.0, delta=1e-5)
    # sampling and the private step need only JAX
    assert privacy.poisson_capacity(100, 0.1) > 10
