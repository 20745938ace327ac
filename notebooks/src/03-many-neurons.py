# %% [markdown]
# # 3. Layers with many neurons
#
# Now each layer $l$ has $n_l$ units. We still look at **one example**: its
# activations form a vector per layer, $a^{l} = (a^l_1, \dots, a^l_{n_l})$.
# We follow the library's row layout (the README's notation): a single
# example's activations are a row, $W^l$ has shape $(n_{l-1}, n_l)$, and the
# entry $W^l_{ij}$ is the weight from unit $i$ of layer $l-1$ to unit $j$ of
# layer $l$:
#
# $$z^l_j = \sum_{i=1}^{n_{l-1}} a^{l-1}_i W^l_{ij} + b^l_j,
# \qquad\text{as rows:}\qquad z^l = a^{l-1} W^l + b^l, \qquad a^l = g^l(z^l).$$
#
# The cost of the example is $C = \frac12 \lVert a^L - y \rVert^2$. As before
# $\delta^l := \partial C/\partial z^l$, now a vector of length $n_l$: entry
# $j$ says how the cost reacts to unit $j$'s input sum. We derive everything
# entry by entry with the chain rule, then collect the entries into vectors and
# matrices, and check each formula against `jax.grad`.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp.activations import ACTIVATIONS
from functional_bp.losses import LOSSES

RTOL = 1e-12


def rel_err(ours, ref):
    """max |ours - ref| relative to max |ref|: the size of a leaf, not of an entry."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


sizes = [4, 5, 3, 2]  # n_0, n_1, n_2, n_3
names = ["tanh", "sigmoid", "identity"]
acts = [ACTIVATIONS[n] for n in names]
L = len(names)

k_params, k_x, k_y = jax.random.split(jax.random.key(3), 3)
params = fbp.init_mlp(k_params, sizes, scheme="glorot", dtype=jnp.float64)
params = [{"W": p["W"], "b": 0.1 * jnp.arange(1.0, p["b"].size + 1)} for p in params]
x = jax.random.normal(k_x, (sizes[0],))  # one example: a vector of length n_0
y = jax.random.normal(k_y, (sizes[-1],))


def cost(params, x, offsets=None):
    """Plain forward pass for one example; offsets (if given) are added to each z^l."""
    a = x
    for l, (p, act) in enumerate(zip(params, acts)):
        z = a @ p["W"] + p["b"] + (0.0 if offsets is None else offsets[l])
        a = act.g(z)
    return 0.5 * jnp.sum((a - y) ** 2)


# the forward pass, keeping every z^l and a^l
zs, As = [], [x]
for p, act in zip(params, acts):
    zs.append(As[-1] @ p["W"] + p["b"])
    As.append(act.g(zs[-1]))

# the references: jax.grad with respect to the params, to offsets on z^l, to x
ref_grads = jax.grad(cost)(params, x)
ref_deltas = jax.grad(lambda o: cost(params, x, o))([jnp.zeros(n) for n in sizes[1:]])
ref_dx = jax.grad(cost, argnums=1)(params, x)

# %% [markdown]
# ## The output layer
#
# Unit $j$ of the last layer feeds only its own activation $a^L_j = g^L(z^L_j)$,
# so a single term survives the chain rule:
#
# $$\delta^L_j = \frac{\partial C}{\partial a^L_j}\, g^{L\prime}(z^L_j)
# \qquad\Longrightarrow\qquad
# \delta^L = \nabla_{a} C \odot g^{L\prime}(z^L),$$
#
# with $\odot$ the entrywise product and $\nabla_a C = a^L - y$ for the
# quadratic cost.

# %%
delta_L = (As[L] - y) * acts[L - 1].dg(zs[L - 1])
assert rel_err(delta_L, ref_deltas[L - 1]) < RTOL
print("delta^L =", np.round(np.asarray(delta_L), 6), "  shape", delta_L.shape)

# %% [markdown]
# ## Going back one layer
#
# Unit $i$ of layer $l$ feeds **every** unit of layer $l+1$: its activation
# appears in each $z^{l+1}_j = \sum_i g^l(z^l_i) W^{l+1}_{ij} + b^{l+1}_j$.
# The multivariate chain rule adds up the paths through all of them:
#
# $$\delta^l_i = \sum_{j=1}^{n_{l+1}}
#     \frac{\partial C}{\partial z^{l+1}_j}\,\frac{\partial z^{l+1}_j}{\partial z^l_i}
#   = \sum_{j} \delta^{l+1}_j\, W^{l+1}_{ij}\, g^{l\prime}(z^l_i)
#   = g^{l\prime}(z^l_i) \sum_j W^{l+1}_{ij}\, \delta^{l+1}_j .$$
#
# The sum over $j$ is row $i$ of $W^{l+1}$ dotted with $\delta^{l+1}$. With
# $\delta$ as a row vector that is a product with the transpose:
#
# $$\delta^l = \big(\delta^{l+1}\, W^{l+1,T}\big) \odot g^{l\prime}(z^l).$$
#
# Shapes: $(1, n_{l+1}) \times (n_{l+1}, n_l) \to (1, n_l)$, the width of
# layer $l$, as it must be. This is the chain of notebook 2 with the number
# $w^{l+1}$ replaced by a matrix: the error at each unit is sent back along
# the same weights that carried the signal forward.

# %%
deltas = [None] * L
deltas[L - 1] = delta_L
for l in reversed(range(L - 1)):  # list index l is layer l+1 of the equations
    deltas[l] = (deltas[l + 1] @ params[l + 1]["W"].T) * acts[l].dg(zs[l])

# the same entry by entry, straight from the sum over j
for l in range(L - 1):
    W_next = params[l + 1]["W"]
    by_index = [acts[l].dg(zs[l][i]) * sum(W_next[i, j] * deltas[l + 1][j]
                                           for j in range(W_next.shape[1]))
                for i in range(W_next.shape[0])]
    assert rel_err(jnp.array(by_index), deltas[l]) < RTOL

for l in range(L):
    assert rel_err(deltas[l], ref_deltas[l]) < RTOL
    print(f"delta^{l + 1}: shape {deltas[l].shape}, rel. error vs jax.grad "
          f"{rel_err(deltas[l], ref_deltas[l]):.1e}")

# %% [markdown]
# ## The weights and biases
#
# The weight $W^l_{ij}$ appears in exactly one input sum, $z^l_j$, with the
# coefficient $a^{l-1}_i$. The bias $b^l_j$ appears only in $z^l_j$, with
# coefficient 1. So
#
# $$\frac{\partial C}{\partial W^l_{ij}} = a^{l-1}_i\, \delta^l_j, \qquad
#   \frac{\partial C}{\partial b^l_j} = \delta^l_j,$$
#
# and collected into arrays of the shapes of $W^l$ and $b^l$:
#
# $$\underbrace{\frac{\partial C}{\partial W^l}}_{(n_{l-1},\, n_l)}
#   = \underbrace{a^{l-1,T}}_{(n_{l-1},\, 1)}\; \underbrace{\delta^l}_{(1,\, n_l)},
#   \qquad \frac{\partial C}{\partial b^l} = \delta^l .$$
#
# The weight gradient of one example is an outer product: a column (the
# inputs to the layer) times a row (the deltas of the layer). One more step
# of the recursion gives the derivative with respect to the input itself,
# $\partial C / \partial x = \delta^1 W^{1,T}$, handy for checking and for
# inputs that are themselves learned.

# %%
grads = [{"W": jnp.outer(As[l], deltas[l]), "b": deltas[l]} for l in range(L)]
dC_dx = deltas[0] @ params[0]["W"].T

print(f"{'layer':>5} {'W^l':>8} {'a^(l-1)':>8} {'delta^l':>8} {'dC/dW^l':>8}   rel. errors (W, b)")
for l in range(L):
    eW = rel_err(grads[l]["W"], ref_grads[l]["W"])
    eb = rel_err(grads[l]["b"], ref_grads[l]["b"])
    assert eW < RTOL and eb < RTOL
    print(f"{l + 1:>5} {str(params[l]['W'].shape):>8} {str(As[l].shape):>8} "
          f"{str(deltas[l].shape):>8} {str(grads[l]['W'].shape):>8}   {eW:.1e}, {eb:.1e}")
assert rel_err(dC_dx, ref_dx) < RTOL
print("dC/dx = delta^1 W^1T agrees with jax.grad:", rel_err(dC_dx, ref_dx) < RTOL)

# %% [markdown]
# ## The same equations in the textbook's column convention
#
# Many texts store the transposed weights, $\overline W^l := W^{l,T}$ of
# shape $(n_l, n_{l-1})$, and treat activations and deltas as column
# vectors: $z^l = \overline W^l a^{l-1} + b^l$. Then the equations read
#
# $$\delta^L = \nabla_a C \odot g^{L\prime}(z^L), \qquad
#   \delta^l = \big(\overline W^{l+1}\big)^T \delta^{l+1} \odot g^{l\prime}(z^l), \qquad
#   \frac{\partial C}{\partial \overline W^l} = \delta^l\, a^{l-1,T}, \qquad
#   \frac{\partial C}{\partial b^l} = \delta^l .$$
#
# These are the same numbers: transposing both sides of the row-layout
# equations gives them. We compute them with column vectors of shape
# $(n, 1)$ and compare.

# %%
W_col = [p["W"].T for p in params]                        # (n_l, n_{l-1})
a_col = [a[:, None] for a in As]                          # (n_l, 1)
z_col = [W @ a + p["b"][:, None] for W, a, p in zip(W_col, a_col, params)]
d_col = [None] * L
d_col[L - 1] = (a_col[L] - y[:, None]) * acts[L - 1].dg(z_col[L - 1])
for l in reversed(range(L - 1)):
    d_col[l] = (W_col[l + 1].T @ d_col[l + 1]) * acts[l].dg(z_col[l])
dW_col = [d_col[l] @ a_col[l].T for l in range(L)]        # (n_l, n_{l-1})

for l in range(L):
    assert rel_err(d_col[l][:, 0], ref_deltas[l]) < RTOL
    assert rel_err(dW_col[l].T, ref_grads[l]["W"]) < RTOL
print("column convention: delta^l and dC/dW^l (transposed) agree with jax.grad")

# %% [markdown]
# ## The library does the same
#
# `fbp.backprop` runs exactly this recursion on a batch (notebook 4); a batch
# of one example is the case above. Its `deltas` are $\delta^l$ as rows of
# shape $(1, n_l)$, its `grads` the outer products, its `input_grad` is
# $\partial C/\partial x$.

# %%
r = fbp.backprop(params, (x[None, :], y[None, :]), activations=names, loss="quadratic")
for l in range(L):
    assert rel_err(r.deltas[l][0], ref_deltas[l]) < RTOL
    assert rel_err(r.grads[l]["W"], ref_grads[l]["W"]) < RTOL
    assert rel_err(r.grads[l]["b"], ref_grads[l]["b"]) < RTOL
assert rel_err(r.input_grad[0], ref_dx) < RTOL
print("fbp.backprop with m = 1: deltas, grads and input_grad agree with jax.grad")

# %% [markdown]
# ## Other costs change only $\nabla_a C$
#
# Nothing above depended on the quadratic cost except the vector
# $\nabla_a C$ in $\delta^L$. Each of the library's losses carries its
# gradient, written by hand next to its value. For the cross-entropies the
# network's output is a vector of logits, usually with the identity as last
# activation, and the product collapses to a famous short form: for softmax
# cross-entropy with a one-hot $y$, $\delta^L = \mathrm{softmax}(z^L) - y$;
# for sigmoid cross-entropy, $\delta^L = \sigma(z^L) - y$. The cell checks
# $\delta^L = \nabla_a C \odot g^{L\prime}(z^L)$ for every loss, with both a
# tanh and an identity output layer.

# %%
z_L = jnp.array([0.3, -1.2, 2.0])
y_L = jnp.array([0.0, 1.0, 0.0])
for loss_name, loss in LOSSES.items():
    for out_name in ["identity", "tanh"]:
        out = ACTIVATIONS[out_name]
        ours = loss.grad(out.g(z_L)[None, :], y_L[None, :])[0] * out.dg(z_L)
        ref = jax.grad(lambda z: loss.value(out.g(z)[None, :], y_L[None, :])[0])(z_L)
        assert rel_err(ours, ref) < RTOL, (loss_name, out_name)
    print(f"{loss_name:22s} delta^L (identity output) = {np.round(np.asarray(ours), 4)}")
softmax = jnp.exp(z_L) / jnp.sum(jnp.exp(z_L))
np.testing.assert_allclose(LOSSES["softmax_cross_entropy"].grad(z_L[None], y_L[None])[0],
                           softmax - y_L, rtol=RTOL)

# %% [markdown]
# ## Summary for one example
#
# | step | equation (row layout) | shape |
# |---|---|---|
# | output delta | $\delta^L = \nabla_a C \odot g^{L\prime}(z^L)$ | $(1, n_L)$ |
# | recursion | $\delta^l = (\delta^{l+1} W^{l+1,T}) \odot g^{l\prime}(z^l)$ | $(1, n_l)$ |
# | weights | $\partial C/\partial W^l = a^{l-1,T} \delta^l$ | $(n_{l-1}, n_l)$ |
# | biases | $\partial C/\partial b^l = \delta^l$ | $(1, n_l)$ |
# | input | $\partial C/\partial x = \delta^1 W^{1,T}$ | $(1, n_0)$ |
#
# Next, [notebook 4](04-batches-and-layouts.ipynb) processes many examples at
# once: the vectors become matrices with one row per example, the cost
# becomes an average, and the bias gradient becomes a sum over the batch.
