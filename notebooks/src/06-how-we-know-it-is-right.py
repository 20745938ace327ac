# %% [markdown]
# # 6. How we know it is right
#
# A hand-derived gradient is easy to get almost right. The derivations in
# notebooks 1 to 4 were each checked at one or two points; this notebook is
# about checking systematically, and about what a check can and cannot see.
#
# 1. **The reference.** `jax.grad` of the plain forward computation: it never
#    goes through our backward pass, so it is an independent answer.
# 2. **The comparison.** Leaf by leaf (each layer's $W$ and $b$ on its own),
#    relative to the leaf's largest entry, with a tolerance set by the dtype
#    (float64: $10^{-10}$, float32: $2\cdot10^{-5}$). `fbp.check_gradients`
#    does exactly this and prints a table.
# 3. **Many random cases.** The library's test suite draws networks, batches,
#    activations and losses at random with `hypothesis`; we run a small
#    version of it here.
# 4. **Wrong derivations must fail.** We make three slips that are easy to
#    make and watch the checker catch each, and also see which test cases let
#    them slip through.
#
# The last part uses the same rows of the deltas for something new:
# per-example gradients and the clipping step of differentially private SGD,
# all from a single backward pass.

# %%
import functools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import functional_bp as fbp
from functional_bp.activations import ACTIVATIONS
from functional_bp.losses import LOSSES

RTOL = 1e-10  # float64


def make_problem(sizes, m, *, seed=0):
    """float64 params (Glorot scale, non-zero biases) and a batch (x, y) of m rows."""
    rng = np.random.default_rng(seed)
    params = [{"W": jnp.asarray(rng.normal(0, np.sqrt(2 / (n_in + n_out)), (n_in, n_out))),
               "b": jnp.asarray(0.1 * rng.normal(size=n_out))}
              for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    x = jnp.asarray(rng.normal(size=(m, sizes[0])))
    y = jnp.asarray(rng.normal(size=(m, sizes[-1])))
    return params, (x, y)


def rel_err(ours, ref):
    """max |ours - ref| relative to max |ref| (absolute where ref is all zero)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    scale, diff = np.max(np.abs(ref)), np.max(np.abs(ours - ref))
    return diff / scale if scale > 0 else diff

# %% [markdown]
# ## The checker
#
# `fbp.check_gradients(grad_fn, objective_fn, params, batch)` evaluates our
# gradient and `jax.grad(objective_fn)` at the same point and reports, per
# leaf, $\max|\text{ours} - \text{ref}| \,/\, \max|\text{ref}|$. Why relative
# to the whole leaf: entries of a gradient can be near zero by cancellation,
# where a per-entry relative error means nothing; and why per leaf: a wrong
# bias gradient of size $10^{-3}$ must not hide behind a correct weight
# gradient of size $10$.
#
# Why $10^{-10}$ in float64: both sides compute the same sums and products,
# possibly in another order, so they differ by rounding, a few hundred units
# of $2.2\cdot10^{-16}$ at most for networks of this size. A wrong formula is
# off by a factor or a term, errors of order 1.

# %%
names = ["tanh", "sigmoid", "identity"]
kw = dict(activations=names, loss="mse")
params, batch = make_problem([4, 6, 5, 3], m=8)
report = fbp.check_gradients(functools.partial(fbp.grad, **kw),
                             functools.partial(fbp.objective, **kw), params, batch)
print(report.raise_if_failed())

# %% [markdown]
# ## The hypothesis suite in miniature
#
# One fixed case proves little: a bug can hide in the one configuration we
# did not try. The test suite therefore states a *property*, "for every
# network, batch, activations, loss and weight penalty, the hand-derived
# loss, gradients, deltas and input gradient equal `jax.grad`'s", and lets
# `hypothesis` draw the cases: depth, widths, batch size (one included), an
# independent activation per layer, the loss and $\ell_2$. The suite draws
# up to 6 layers of up to 32 units and batches up to 32 rows; here the
# ranges are smaller and we draw 15 cases, to keep the notebook quick. The
# deltas are compared with `jax.grad` with respect to offsets added to each
# $Z^l$, the input gradient with `jax.grad` with respect to $X$.

# %%
@functools.partial(jax.jit, static_argnames=("activations", "loss"))
@functools.partial(jax.value_and_grad, argnums=(0, 1, 6))
def reference(params, x, y, activations, loss, l2, offsets):
    """J and its gradients w.r.t. params, x and offsets on each Z^l, by autodiff."""
    a = x
    for p, act, o in zip(params, activations, offsets):
        a = ACTIVATIONS[act].g(a @ p["W"] + p["b"][None, :] + o)
    J = jnp.mean(LOSSES[loss].value(a, y))
    return J + 0.5 * l2 * sum(jnp.sum(p["W"] ** 2) for p in params)


@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 8), min_size=depth + 1, max_size=depth + 1))
    m = draw(st.integers(1, 8))
    acts = draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=depth,
                         max_size=depth))
    loss = draw(st.sampled_from(sorted(LOSSES)))
    l2 = draw(st.sampled_from([0.0, 0.1]))
    seed = draw(st.integers(0, 2**31 - 1))
    params, (x, y) = make_problem(sizes, m, seed=seed)
    return params, x, y, tuple(acts), loss, l2


seen = []


@settings(max_examples=15, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_backprop_equals_autodiff(problem):
    params, x, y, acts, loss, l2 = problem
    r = fbp.backprop(params, (x, y), activations=acts, loss=loss, l2=l2)
    offsets = [jnp.zeros_like(G) for G in r.deltas]
    J, (g_params, g_x, g_offsets) = reference(params, x, y, acts, loss, l2, offsets)
    assert rel_err(r.loss, J) < RTOL
    for l in range(len(params)):
        assert rel_err(r.grads[l]["W"], g_params[l]["W"]) < RTOL, f"layer {l + 1} W"
        assert rel_err(r.grads[l]["b"], g_params[l]["b"]) < RTOL, f"layer {l + 1} b"
        assert rel_err(r.deltas[l], g_offsets[l]) < RTOL, f"G^{l + 1}"
    assert rel_err(r.input_grad, g_x) < RTOL
    seen.append((len(params), x.shape[0], loss))


test_backprop_equals_autodiff()
print(f"{len(seen)} random cases passed: depths {sorted({d for d, _, _ in seen})}, "
      f"batch sizes {sorted({m for _, m, _ in seen})},\nlosses {sorted({l for _, _, l in seen})}")

# %% [markdown]
# ## Three easy mistakes, and the checker catching them
#
# To see the checker fail, we need a backward pass we can break. Here is
# notebook 4's recursion, written out in a few lines, with a switch for each
# of three slips:
#
# * **`"no g'"`**: the recursion without the activation's slope,
#   $G^l = G^{l+1} W^{l+1,T}$ instead of $(G^{l+1} W^{l+1,T}) \odot g^{l\prime}(Z^l)$.
#   It is easy to drop when one thinks of backpropagation as "multiply by
#   the transposed weights".
# * **`"mse 2/n"`**: the output delta of the mean squared error with
#   $\frac{2}{n_L}$ instead of $\frac{2}{m\, n_L}$. The MSE of a batch is
#   the mean of $m\cdot n_L$ squared errors; differentiating the
#   per-example formula and forgetting the batch's $1/m$ gives this.
# * **`"bias not summed"`**: the bias gradient taken as $G^l$ itself,
#   one row per example, instead of the sum of its rows. A variant,
#   **`"bias averaged"`**, averages the rows and so divides by $m$ twice.

# %%
def backward(params, batch, activations, *, bug=None, weights=None):
    """Notebook 4's recursion for the MSE loss, with optional deliberate bugs.

    weights (m,), when given, replace the 1/m of each example (used below).
    """
    x, y = batch
    m, n_L = y.shape
    acts = [ACTIVATIONS[a] for a in activations]
    Zs, As = [], [x]
    for p, act in zip(params, acts):
        Zs.append(As[-1] @ p["W"] + p["b"][None, :])
        As.append(act.g(Zs[-1]))
    w = jnp.full((m,), 1 / m) if weights is None else weights
    scale = (2 / n_L) * (1.0 if bug == "mse 2/n" else w[:, None])
    G = scale * (As[-1] - y) * acts[-1].dg(Zs[-1])              # G^L
    grads = [None] * len(params)
    for l in reversed(range(len(params))):
        if bug == "bias not summed":
            db = G
        elif bug == "bias averaged":
            db = jnp.mean(G, axis=0)
        else:
            db = jnp.sum(G, axis=0)
        grads[l] = {"W": As[l].T @ G, "b": db}
        if l > 0:
            G = G @ params[l]["W"].T                                 # G^{l+1} W^{l+1,T}
            if bug != "no g'":
                G = G * acts[l - 1].dg(Zs[l - 1])                    # ... times g'(Z^l)
    return grads


def check(bug, params, batch, activations):
    grad_fn = lambda p, b: backward(p, b, activations, bug=bug)
    objective_fn = functools.partial(fbp.objective, activations=activations, loss="mse")
    return fbp.check_gradients(grad_fn, objective_fn, params, batch)


print("the correct recursion:")
print(check(None, params, batch, names).raise_if_failed())

# %%
for bug in ["no g'", "mse 2/n", "bias not summed", "bias averaged"]:
    report = check(bug, params, batch, names)
    print(f"\nbug {bug!r}:\n{report}")
    assert not report.ok, f"the checker missed {bug!r}"

# %% [markdown]
# All four are caught, and the table says where. Without $g'$, the last
# layer is still right (its delta never went through the recursion) and
# every earlier layer is wrong. The $2/n$ slip makes every leaf $m$ times too
# large. The unsummed bias gradient has the wrong shape, $(m, n_l)$ instead
# of $(n_l,)$, and the averaged one is $m$ times too small.
#
# ## Where each mistake hides
#
# A checker can only see what the test case exercises. Each of these bugs
# passes on some cases:
#
# * with the identity as every hidden activation, $g' = 1$, so dropping it
#   changes nothing;
# * with a batch of one example, $m = 1$, so a missing or doubled $1/m$
#   changes nothing, and $G^l$ with one row summed is $G^l$ averaged.
#
# This is why the suite draws batch sizes from 1 up and an independent
# activation for each layer: a single "typical" case (identity layers, or a
# one-example batch) would let these through.

# %%
linear = ["identity", "identity", "identity"]
p_lin, b_lin = make_problem([4, 6, 5, 3], m=8)
assert check("no g'", p_lin, b_lin, linear).ok
p_one, b_one = make_problem([4, 6, 5, 3], m=1)
assert check("mse 2/n", p_one, b_one, names).ok
assert check("bias averaged", p_one, b_one, names).ok
print("missed, as expected: 'no g\\'' with identity layers; 'mse 2/n' and "
      "'bias averaged' with m = 1")
assert not check("no g'", params, batch, names).ok
assert not check("mse 2/n", params, batch, names).ok

# %% [markdown]
# ## Per-example gradients from the rows of the deltas
#
# Notebook 4 found that row $i$ of $G^l$ is $\frac1m \delta^l_i$, example
# $i$'s own delta. The gradient of example $i$'s own loss $L_i$ (no $1/m$)
# is therefore available from the same backward pass, for every $i$ at
# once:
#
# $$\frac{\partial L_i}{\partial W^l} = a^{l-1,T}_i\, \delta^l_i
#     = m\; A^{l-1,T}_{i,:}\, G^l_{i,:}, \qquad
#   \frac{\partial L_i}{\partial b^l} = m\; G^l_{i,:} .$$
#
# The batch gradient $A^{l-1,T} G^l$ is the sum of these outer products;
# keeping them apart instead gives all $m$ per-example gradients. The
# reference is `jax.vmap` of `jax.grad` of the loss of one example.
#
# Their sizes need even less. The Frobenius norm of an outer product is the
# product of the two vectors' norms, $\lVert u^T v\rVert_F = \lVert u\rVert\,\lVert v\rVert$,
# so the norm of example $i$'s full gradient (all $W$ and $b$ together) is
#
# $$\lVert g_i \rVert^2 = m^2 \sum_{l=1}^{L} \big(\lVert A^{l-1}_{i,:}\rVert^2 + 1\big)\,
#   \lVert G^l_{i,:}\rVert^2,$$
#
# computed from the activations and deltas without forming any
# per-example gradient.

# %%
m = batch[0].shape[0]
r = fbp.backprop(params, batch, **kw)
Zs, As = [], [batch[0]]
for p, a in zip(params, names):
    Zs.append(As[-1] @ p["W"] + p["b"][None, :])
    As.append(ACTIVATIONS[a].g(Zs[-1]))

per_example = [{"W": m * jnp.einsum("ij,ik->ijk", As[l], r.deltas[l]),
                "b": m * r.deltas[l]} for l in range(len(params))]


def loss_one(params, x, y):  # example i's own loss, no 1/m
    return fbp.objective(params, (x[None, :], y[None, :]), **kw)


ref = jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(params, *batch)
for l in range(len(params)):
    assert rel_err(per_example[l]["W"], ref[l]["W"]) < RTOL
    assert rel_err(per_example[l]["b"], ref[l]["b"]) < RTOL
print("per-example gradients: shapes", [g["W"].shape for g in per_example], "(= jax.vmap(jax.grad))")

norms = m * jnp.sqrt(sum((jnp.sum(As[l] ** 2, axis=1) + 1) * jnp.sum(r.deltas[l] ** 2, axis=1)
                         for l in range(len(params))))
ref_norms = jnp.sqrt(sum(jnp.sum(leaf.reshape(m, -1) ** 2, axis=1)
                         for leaf in jax.tree.leaves(ref)))
assert rel_err(norms, ref_norms) < RTOL
print("per-example norms from the deltas:", np.round(np.asarray(norms), 4))

# %% [markdown]
# ## The clipping step of DP-SGD, as one weighted backward pass
#
# Differentially private SGD bounds each example's influence: each
# per-example gradient is scaled down to norm at most $c$, the results are
# summed, Gaussian noise of scale $\sigma c$ is added, and the sum is divided
# by $m$:
#
# $$\hat g = \frac1m\Big[\sum_{i} g_i \min\Big(1, \frac{c}{\lVert g_i\rVert}\Big)
#   + \mathcal N(0, \sigma^2 c^2 I)\Big].$$
#
# The sum $\sum_i s_i\, g_i$ with scalars $s_i = \min(1, c/\lVert g_i\rVert)$
# is the gradient of the weighted objective $\sum_i \frac{s_i}{m} L_i$. So
# after the norms (one backward pass, above), a second backward pass with
# weight $s_i/m$ on each example instead of $1/m$ gives the clipped sum
# directly: only the rows of $G^L$ change, and the recursion does the rest.
# No per-example gradient is ever stored. Below, with no noise
# ($\sigma = 0$), against the direct computation from the `jax.vmap`
# per-example gradients.

# %%
clip_norm = float(jnp.median(norms))  # clip about half of the examples
s = jnp.minimum(1.0, clip_norm / norms)
clipped = backward(params, batch, names, weights=s / m)

direct = jax.tree.map(lambda g: jnp.tensordot(s, g, axes=1) / m, ref)
for l in range(len(params)):
    assert rel_err(clipped[l]["W"], direct[l]["W"]) < RTOL
    assert rel_err(clipped[l]["b"], direct[l]["b"]) < RTOL
print(f"clip norm {clip_norm:.4f}: {int(jnp.sum(s < 1))} of {m} examples scaled down; "
      "the weighted backward pass equals the clipped sum of per-example gradients")

# %% [markdown]
# ## The same with the library
#
# `fbp.per_example_grads`, `fbp.per_example_grad_norms` and
# `fbp.clipped_grad` implement exactly these three steps: the outer products
# of the rows, the norms from the rows, and the clipped mean as one weighted
# pass. They must agree with the `jax.vmap` references above. With
# `noise_multiplier` $\sigma > 0$ and a random key, `clipped_grad` also adds
# the Gaussian noise: the difference from the noiseless result, in units of
# $\sigma c / m$, should look like draws from a standard normal.

# %%
lib_grads = fbp.per_example_grads(params, batch, **kw)
lib_norms = fbp.per_example_grad_norms(params, batch, **kw)
lib_clipped = fbp.clipped_grad(params, batch, **kw, clip_norm=clip_norm)
for l in range(len(params)):
    for leaf in ["W", "b"]:
        assert rel_err(lib_grads[l][leaf], ref[l][leaf]) < RTOL
        assert rel_err(lib_clipped[l][leaf], direct[l][leaf]) < RTOL
assert rel_err(lib_norms, ref_norms) < RTOL
print("per_example_grads, per_example_grad_norms, clipped_grad: equal to the vmap references")

sigma = 1.1
noisy = fbp.clipped_grad(params, batch, **kw, clip_norm=clip_norm, noise_multiplier=sigma,
                         key=jax.random.key(7))
noise = np.concatenate([np.ravel(n - c) for n, c in
                        zip(jax.tree.leaves(noisy), jax.tree.leaves(lib_clipped))])
noise = noise * m / (sigma * clip_norm)
print(f"noise in units of sigma c / m over {noise.size} parameters: "
      f"mean {noise.mean():.2f}, standard deviation {noise.std():.2f}")
assert abs(noise.mean()) < 0.5 and abs(noise.std() - 1) < 0.4
