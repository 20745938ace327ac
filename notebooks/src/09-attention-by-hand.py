# %% [markdown]
# # 9. Attention by hand
#
# Attention is the layer a transformer adds to the ones of the earlier
# notebooks. Its backward follows from the same tensor chain rule,
# $\partial J/\partial X_k = \sum_j \partial J/\partial Y_j\,\partial Y_j/\partial X_k$,
# applied to three small steps: a matrix product, a softmax, a matrix product.
# We derive the softmax's backward first (its Jacobian, then the form that
# never builds it), then one head's attention index by index, then the
# multi-head layer `functional_bp.layers.Attention`, and finally a whole small
# GPT (`functional_bp.models.gpt`), each step checked against `jax.grad` in
# float64.
#
# One head, for one example, with $T$ positions and head size $d$:
#
# $$S = \frac{Q K^\top}{\sqrt d}, \qquad S_{tt'} = -\infty \ \text{for}\ t' > t \ \text{(causal)},
# \qquad P = \operatorname{softmax}_{t'}(S), \qquad O = P V,$$
#
# with $Q, K, V$ of shape $(T, d)$, $S$ and $P$ of shape $(T, T)$ and $O$ of
# shape $(T, d)$.

# %%
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functional_bp as fbp
from functional_bp import layers as fl
from functional_bp import models

jax.config.update("jax_enable_x64", True)  # float64 for the checks: errors near 1e-16
plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})
rng = np.random.default_rng(0)


def rel_err(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))) / jnp.max(jnp.abs(jnp.asarray(b))))


# %% [markdown]
# ## The softmax's backward
#
# For one row $s \in \mathbb R^T$, $p_j = e^{s_j} / \sum_k e^{s_k}$. Its
# Jacobian: $\partial p_j / \partial s_k = p_j \delta_{jk} - p_j p_k$, i.e.
#
# $$\frac{\partial p}{\partial s} = \operatorname{diag}(p) - p\,p^\top .$$
#
# (We compute $p$ from $s - \max_k s_k$: the same $p$, no overflow.)

# %%
def softmax(s):
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


T = 5
s = rng.standard_normal(T)
p = softmax(s)
jacobian = jnp.diag(p) - jnp.outer(p, p)
print(f"Jacobian against jax.jacobian: {rel_err(jacobian, jax.jacobian(softmax)(s)):.1e}")
assert rel_err(jacobian, jax.jacobian(softmax)(s)) < 1e-12

# %% [markdown]
# The backward applies the transposed Jacobian to the cotangent
# $dp = \partial J/\partial p$ (the Jacobian is symmetric):
#
# $$ds_k = \sum_j dp_j\, (p_j \delta_{jk} - p_j p_k) = p_k \Big(dp_k - \sum_j dp_j\, p_j\Big),
# \qquad\text{for all rows at once:}\qquad
# dS = P \odot \big(dP - \operatorname{rowsum}(dP \odot P)\big).$$
#
# The row sum is one number per row: the $T \times T$ Jacobian of each row is
# never formed. Check it on a whole $(T, T)$ matrix of scores, against
# `jax.grad` of $J = \sum dP \odot \operatorname{softmax}(S)$ (whose gradient
# with respect to the softmax's output is $dP$ exactly), and show that the
# form without the row-sum term is wrong.

# %%
S = rng.standard_normal((T, T))
dP = rng.standard_normal((T, T))
P = softmax(S)
dS = P * (dP - jnp.sum(dP * P, axis=-1, keepdims=True))
dS_by_jacobian = jnp.stack([(jnp.diag(P[t]) - jnp.outer(P[t], P[t])).T @ dP[t] for t in range(T)])
dS_ref = jax.grad(lambda S: jnp.sum(dP * softmax(S)))(S)
print(f"row-sum form: {rel_err(dS, dS_ref):.1e}, Jacobian form: {rel_err(dS_by_jacobian, dS_ref):.1e}")
assert rel_err(dS, dS_ref) < 1e-12 and rel_err(dS_by_jacobian, dS_ref) < 1e-12

wrong = P * dP  # the diagonal of the Jacobian only: the row-sum term forgotten
print(f"without the row sum: {rel_err(wrong, dS_ref):.2f}")
assert rel_err(wrong, dS_ref) > 0.1

# %% [markdown]
# **The causal mask.** Setting $S_{tt'} = -\infty$ for $t' > t$ makes
# $P_{tt'} = e^{-\infty} = 0$ exactly, so the same formula gives
# $dS_{tt'} = 0 \cdot (\dots) = 0$ exactly there: the mask needs no line of
# its own in the backward. Scores of order $10^3$ do not overflow, because
# each row is shifted by its own maximum, which is finite (the diagonal is
# never masked).

# %%
mask = jnp.tril(jnp.ones((T, T), bool))


def causal_softmax(S):
    return softmax(jnp.where(mask, S, -jnp.inf))


S_big = 1e3 * rng.standard_normal((T, T))
for scores in (S, S_big):
    P = causal_softmax(scores)
    dS = P * (dP - jnp.sum(dP * P, axis=-1, keepdims=True))
    dS_ref = jax.grad(lambda S: jnp.sum(dP * causal_softmax(S)))(scores)
    assert bool(jnp.all(jnp.isfinite(P))) and bool(jnp.all(jnp.isfinite(dS)))
    assert bool(jnp.all(P[~mask] == 0)) and bool(jnp.all(dS[~mask] == 0))
    assert float(jnp.max(jnp.abs(dS - dS_ref))) <= 1e-12 * max(1.0, float(jnp.max(jnp.abs(dS_ref))))
    print(f"scores of size {float(jnp.max(jnp.abs(scores))):8.1f}: masked entries exactly 0, "
          f"max |dS - jax.grad| = {float(jnp.max(jnp.abs(dS - dS_ref))):.1e}")

# %% [markdown]
# ## One head, index by index
#
# The forward, one index at a time:
#
# $$S_{tt'} = \frac{1}{\sqrt d}\sum_c Q_{tc} K_{t'c}, \qquad
#   O_{tc} = \sum_{t'} P_{tt'} V_{t'c}.$$
#
# Given $G = dO = \partial J / \partial O$, undo the lines in reverse.
# $O_{tc}$ depends on $V_{t'c}$ with slope $P_{tt'}$ and on $P_{tt'}$ with slope
# $V_{t'c}$; $S_{tt'}$ depends on $Q_{tc}$ with slope $K_{t'c}/\sqrt d$ and on
# $K_{t'c}$ with slope $Q_{tc}/\sqrt d$. Summing over every output entry that
# each input reaches:
#
# $$dV_{t'c} = \sum_t P_{tt'}\, G_{tc}, \qquad dP_{tt'} = \sum_c G_{tc} V_{t'c},$$
# $$dS_{tt'} = P_{tt'}\Big(dP_{tt'} - \sum_{u} dP_{tu} P_{tu}\Big),$$
# $$dQ_{tc} = \frac{1}{\sqrt d}\sum_{t'} dS_{tt'} K_{t'c}, \qquad
#   dK_{t'c} = \frac{1}{\sqrt d}\sum_{t} dS_{tt'} Q_{tc}.$$

# %%
T, d = 4, 3
Q, K, V = (rng.standard_normal((T, d)) for _ in range(3))
G = rng.standard_normal((T, d))


def head_loops(Q, K, V, causal=True):
    """The forward, one index at a time: O and the cache P."""
    S = np.zeros((T, T))
    for t in range(T):
        for u in range(T):
            S[t, u] = sum(Q[t, c] * K[u, c] for c in range(d)) / math.sqrt(d)
            if causal and u > t:
                S[t, u] = -np.inf
    P = np.asarray(softmax(S))
    O = np.zeros((T, d))
    for t in range(T):
        for c in range(d):
            O[t, c] = sum(P[t, u] * V[u, c] for u in range(T))
    return O, P


def head_backward_loops(Q, K, V, P, G):
    dV, dP, dS, dQ, dK = (np.zeros(shape) for shape in [(T, d), (T, T), (T, T), (T, d), (T, d)])
    for u in range(T):                                    # O = P V
        for c in range(d):
            dV[u, c] = sum(P[t, u] * G[t, c] for t in range(T))
    for t in range(T):
        for u in range(T):
            dP[t, u] = sum(G[t, c] * V[u, c] for c in range(d))
    for t in range(T):                                    # P = softmax(S)
        row = sum(dP[t, v] * P[t, v] for v in range(T))
        for u in range(T):
            dS[t, u] = P[t, u] * (dP[t, u] - row)
    for t in range(T):                                    # S = Q K^T / sqrt(d)
        for c in range(d):
            dQ[t, c] = sum(dS[t, u] * K[u, c] for u in range(T)) / math.sqrt(d)
            dK[t, c] = sum(dS[u, t] * Q[u, c] for u in range(T)) / math.sqrt(d)
    return dQ, dK, dV


def head(Q, K, V, causal=True):
    """The same head in plain jax.numpy: the reference for jax.grad."""
    S = Q @ K.T / math.sqrt(Q.shape[-1])
    if causal:
        S = jnp.where(jnp.tril(jnp.ones((len(Q), len(K)), bool)), S, -jnp.inf)
    return softmax(S) @ V


O, P_head = head_loops(Q, K, V)
assert rel_err(O, head(Q, K, V)) < 1e-12
ref = jax.grad(lambda Q, K, V: jnp.sum(G * head(Q, K, V)), argnums=(0, 1, 2))(Q, K, V)
for name, ours, r in zip(["dQ", "dK", "dV"], head_backward_loops(Q, K, V, P_head, G), ref):
    print(f"{name}: relative error against jax.grad {rel_err(ours, r):.1e}")
    assert rel_err(ours, r) < 1e-12

# %% [markdown]
# Each loop is a matrix product, so the backward of one head is five lines:
#
# | forward | backward |
# |---|---|
# | $O = P V$ | $dV = P^\top G$, $\quad dP = G V^\top$ |
# | $P = \operatorname{softmax}(S)$ | $dS = P \odot (dP - \operatorname{rowsum}(dP \odot P))$ |
# | $S = Q K^\top / \sqrt d$ | $dQ = dS\, K / \sqrt d$, $\quad dK = dS^\top Q / \sqrt d$ |
#
# The backward needs $P$ (three times) and $Q, K, V$; it does not need $S$.

# %%
dV = P_head.T @ G
dP = G @ V.T
dS = P_head * (dP - np.sum(dP * P_head, axis=-1, keepdims=True))
dQ, dK = dS @ K / math.sqrt(d), dS.T @ Q / math.sqrt(d)
for name, ours, r in zip(["dQ", "dK", "dV"], (dQ, dK, dV), ref):
    assert rel_err(ours, r) < 1e-12
print("matrix form: dQ, dK, dV agree with jax.grad")

fig, axes = plt.subplots(1, 2, figsize=(7, 3))
for ax, M, title in zip(axes, (P_head, dS), ("P (causal)", "dS")):
    lim = np.max(np.abs(M))
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(title=title, xlabel="key position t'", ylabel="query position t")
    fig.colorbar(im, ax=ax, shrink=0.8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Above the diagonal both are exactly 0: a position attends to the past only,
# and no gradient flows to the scores of the future.
#
# ## Many heads: `fl.Attention`
#
# The layer takes one input $X$ of shape $(m, T, 3C)$, laid out as
# $[Q \mid K \mid V]$ along the last axis ($C = H d$ for $H$ heads of size $d$),
# as nanoGPT's `c_attn(x).split(C)`; head $h$ uses columns $hd \dots (h+1)d-1$
# of each of $Q$, $K$ and $V$ (nanoGPT's `.view(B, T, H, d)`: contiguous, not
# interleaved). The output $(m, T, C)$ holds the heads' $O_h$ side by side, and
# the input cotangent is $[dQ \mid dK \mid dV]$ in the same layout. Build it
# from the one-head function, head by head and example by example, and
# compare it with the layer, forward and backward, and both with `jax.grad`.

# %%
m, T, H, d = 2, 5, 3, 2
C = H * d
X = rng.standard_normal((m, T, 3 * C))
G = rng.standard_normal((m, T, C))


def attention_by_heads(X):
    out = []
    for n in range(m):
        q, k, v = jnp.split(X[n], 3, axis=-1)
        cols = [slice(h * d, (h + 1) * d) for h in range(H)]
        out.append(jnp.concatenate([head(q[:, c], k[:, c], v[:, c]) for c in cols], axis=-1))
    return jnp.stack(out)


layer = fl.Attention(num_heads=H)
Y, cache = layer.forward({}, X)
assert rel_err(Y, attention_by_heads(X)) < 1e-12
_, dX = layer.backward({}, cache, G)
dX_ref = jax.grad(lambda X: jnp.sum(G * attention_by_heads(X)))(X)
print(f"Attention forward: {rel_err(Y, attention_by_heads(X)):.1e}, dX: {rel_err(dX, dX_ref):.1e}")
assert rel_err(dX, dX_ref) < 1e-12
print("cache:", [a.shape for a in cache], "- the input and P, m H T^2 =", m * H * T * T, "numbers")

# %% [markdown]
# The cache holds the input and $P$. $P$ is $m H T^2$ numbers, which
# outgrows the input ($m T \cdot 3C$) once $T > 3d$: at nanoGPT's GPU shape
# ($m$ 64, $H$ 6, $T$ 256, $d$ 64) it is 25.2 million numbers per layer,
# against 18.9 million for the input. Keeping it saves recomputing
# $Q K^\top$ and the softmax in the backward.
#
# ## A whole GPT
#
# `models.gpt` is nanoGPT's model: a token embedding and a learned positional
# embedding, then per block a residual attention branch (LayerNorm,
# Dense(3C), Attention, Dense(C)) and a residual MLP branch (LayerNorm,
# Dense(4C), GELU, Dense(C)), then a final LayerNorm and the head. Every layer
# runs its own hand-written backward. The labels are the next tokens, with
# $-1$ on the positions that are not scored: each example's loss is the mean
# over its scored positions. Every parameter leaf is compared with `jax.grad`
# of the plain objective.

# %%
V, block = 7, 6
net = models.gpt(vocab_size=V, block_size=block, n_layer=2, n_head=2, n_embd=6,
                 activation="gelu_tanh")
params = net.init(jax.random.key(0), (block,), jnp.float64)
tokens = rng.integers(0, V, (3, block)).astype(np.int32)
labels = np.concatenate([tokens[:, 1:], rng.integers(0, V, (3, 1))], axis=1).astype(np.int32)
labels[0, :3] = -1                                       # example 0: only the last 3 scored
kw = dict(network=net, loss="softmax_cross_entropy")

J, grads = fbp.value_and_grad(params, (tokens, labels), **kw)
grads_ref = jax.grad(fbp.objective)(params, (tokens, labels), **kw)
worst = 0.0
for (path, ours), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref)):
    worst = max(worst, rel_err(ours, r))
    assert rel_err(ours, r) < 1e-10, (jax.tree_util.keystr(path), rel_err(ours, r))
print(f"J = {float(J):.6f}; {len(jax.tree.leaves(grads))} parameter arrays, worst relative "
      f"error against jax.grad {worst:.1e}")

# %% [markdown]
# And each example's gradient norm, from the layers' caches and cotangents
# (no per-example gradient formed), against `jax.vmap(jax.grad)` of the
# one-sequence objective:

# %%
norms = fbp.per_example_grad_norms(params, (tokens, labels), **kw)
g_i = jax.vmap(lambda t, l: jax.grad(fbp.objective)(params, (t[None], l[None]), **kw))(
    tokens, labels)
norms_ref = jnp.sqrt(sum(jnp.sum(g.reshape(3, -1) ** 2, axis=1) for g in jax.tree.leaves(g_i)))
print("per-example norms:", np.round(np.asarray(norms), 6), f" error: {rel_err(norms, norms_ref):.1e}")
assert rel_err(norms, norms_ref) < 1e-10

# %% [markdown]
# Attention's backward is the Dense rule twice and the softmax's row-sum
# form once; everything else in a GPT is a layer of the earlier notebooks
# applied at every position.
