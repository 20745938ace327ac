# %% [markdown]
# # 4. Batches, the $1/m$, and the two layouts
#
# Training averages the cost over $m$ examples:
#
# $$J = \frac1m \sum_{i=1}^m L(a^L_i, y_i),$$
#
# where $a^L_i$ is the network's output for example $i$ and $L$ is the
# per-example loss. (The library also adds $\frac{\ell_2}{2}\sum_l \lVert W^l
# \rVert^2$ when asked; here $\ell_2 = 0$.) Instead of running notebook 3 once
# per example, we stack the examples into matrices and run every step for all
# of them at once. This notebook works out what changes: the shapes, where the
# $1/m$ goes, why the weight gradient becomes a matrix product and the bias
# gradient a sum over the batch. Then it does the same in the textbook's
# column layout and shows that the two give identical numbers.
#
# Throughout, the loss is the mean squared error over the $n_L$ outputs,
# $L(a, y) = \frac1{n_L} \sum_j (a_j - y_j)^2$, so that $J$ is the mean of
# all $m \cdot n_L$ squared errors of the batch.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from functional_bp.activations import ACTIVATIONS

RTOL = 1e-12


def rel_err(ours, ref):
    """max |ours - ref| relative to max |ref|."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


sizes = [3, 6, 4, 2]
names = ["tanh", "softplus", "identity"]
acts = [ACTIVATIONS[n] for n in names]
L_layers = len(names)
m = 5

k_params, k_x, k_y = jax.random.split(jax.random.key(4), 3)
params = fbp.init_mlp(k_params, sizes, scheme="glorot", dtype=jnp.float64)
params = [{"W": p["W"], "b": 0.1 * jnp.arange(1.0, p["b"].size + 1)} for p in params]
X = jax.random.normal(k_x, (m, sizes[0]))   # one example per row
Y = jax.random.normal(k_y, (m, sizes[-1]))


def mse(a, y):  # one example's loss
    return jnp.mean((a - y) ** 2)


def J_rows(params, X, offsets=None):
    """The objective in plain JAX, row layout; offsets (if given) are added to each Z^l."""
    A = X
    for l, (p, act) in enumerate(zip(params, acts)):
        Z = A @ p["W"] + p["b"][None, :] + (0.0 if offsets is None else offsets[l])
        A = act.g(Z)
    return jnp.mean(jax.vmap(mse)(A, Y))


zero_offsets = [jnp.zeros((m, n)) for n in sizes[1:]]
ref_grads, ref_dX, ref_G = jax.jit(jax.grad(J_rows, argnums=(0, 1, 2)))(params, X, zero_offsets)

# %% [markdown]
# ## The forward pass on a batch
#
# Row $i$ of $X$ (shape $(m, n_0)$) is example $i$. With $A^0 = X$,
#
# $$Z^l = A^{l-1} W^l + \mathbf 1\, b^l, \qquad A^l = g^l(Z^l),$$
#
# where $\mathbf 1$ is a column of $m$ ones: $\mathbf 1\, b^l$ is the row
# $b^l$ repeated $m$ times (NumPy's broadcasting; we write `b[None, :]`).
# Row $i$ of $A^{l-1} W^l$ depends only on row $i$ of $A^{l-1}$, so row $i$
# of every $Z^l$ and $A^l$ is exactly example $i$'s vector from notebook 3.
# Shapes: $(m, n_{l-1}) \times (n_{l-1}, n_l) \to (m, n_l)$.

# %%
Zs, As = [], [X]
for p, act in zip(params, acts):
    Zs.append(As[-1] @ p["W"] + p["b"][None, :])
    As.append(act.g(Zs[-1]))


def forward_one(x):  # notebook 3, one example as a vector
    a = x
    for p, act in zip(params, acts):
        a = act.g(a @ p["W"] + p["b"])
    return a


for i in range(m):
    assert rel_err(As[-1][i], forward_one(X[i])) < RTOL
print("shapes of Z^l:", [Z.shape for Z in Zs], "; row i = example i's z^l")

# %% [markdown]
# ## The deltas of a batch, and where the $1/m$ goes
#
# Define $G^l := \partial J / \partial Z^l$, a matrix of the same shape as
# $Z^l$, $(m, n_l)$. Example $i$'s loss depends only on row $i$ of $Z^l$,
# and $J$ weighs it by $1/m$, so
#
# $$G^l_{i,:} = \frac1m\, \delta^l_i, \qquad \delta^l_i := \frac{\partial L(a^L_i, y_i)}{\partial z^l_i}
#   \quad\text{(example } i\text{'s own delta, as in notebook 3)}.$$
#
# At the output, with $\nabla_A L$ the matrix whose row $i$ is
# $\partial L(a^L_i, y_i)/\partial a^L_i$:
#
# $$G^L = \frac1m\, \nabla_A L \odot g^{L\prime}(Z^L), \qquad
#   \text{for the MSE: } \nabla_A L = \frac{2}{n_L}(A^L - Y), \text{ so }
#   G^L = \frac{2}{m\, n_L} (A^L - Y) \odot g^{L\prime}(Z^L).$$
#
# Going back, each row follows notebook 3's recursion, and written for all rows
# at once it is the same formula with capital letters:
#
# $$G^l = \big(G^{l+1} W^{l+1,T}\big) \odot g^{l\prime}(Z^l).$$
#
# The recursion is linear in $G^{l+1}$, so the $1/m$ put in at the output is
# carried through every layer: it appears **once**, in $G^L$, and nowhere else.
#
# The check below compares each $G^l$ with `jax.grad` with respect to offsets
# on $Z^l$, and compares $m\,G^l$ row by row with each example's own delta,
# computed by `jax.vmap` over the single-example code.

# %%
n_L = sizes[-1]
G = [None] * L_layers
G[-1] = (2 / (m * n_L)) * (As[-1] - Y) * acts[-1].dg(Zs[-1])
for l in reversed(range(L_layers - 1)):
    G[l] = (G[l + 1] @ params[l + 1]["W"].T) * acts[l].dg(Zs[l])


def loss_one(x, y, offsets):  # one example's loss, offsets on its z^l
    a = x
    for p, act, o in zip(params, acts, offsets):
        a = act.g(a @ p["W"] + p["b"] + o)
    return mse(a, y)


per_example_deltas = jax.vmap(jax.grad(loss_one, argnums=2), in_axes=(0, 0, None))(
    X, Y, [jnp.zeros(n) for n in sizes[1:]])
for l in range(L_layers):
    assert rel_err(G[l], ref_G[l]) < RTOL
    assert rel_err(m * G[l], per_example_deltas[l]) < RTOL
print("G^l = dJ/dZ^l agrees with jax.grad for l = 1..L, and m G^l stacks the examples' own deltas")

# %% [markdown]
# ## The weight gradient: a matrix product sums over the batch
#
# Every example uses the same $W^l$, so its derivative collects one
# contribution per example, each the outer product of notebook 3:
#
# $$\frac{\partial J}{\partial W^l} = \sum_{i=1}^m a^{l-1,T}_i\, G^l_{i,:}
#   = A^{l-1,T}\, G^l .$$
#
# The matrix product does the sum over examples: entry $(j, k)$ of
# $A^{l-1,T} G^l$ is $\sum_i A^{l-1}_{ij} G^l_{ik}$. Shapes:
# $(n_{l-1}, m) \times (m, n_l) \to (n_{l-1}, n_l)$, the shape of $W^l$; the
# batch dimension $m$ is contracted away. Since $G^l$ carries the $1/m$, this
# is the *average* of the per-example gradients, with no further division.

# %%
dW = [As[l].T @ G[l] for l in range(L_layers)]
for l in range(L_layers):
    sum_of_outer_products = sum(jnp.outer(As[l][i], G[l][i]) for i in range(m))
    assert rel_err(dW[l], sum_of_outer_products) < RTOL
    assert rel_err(dW[l], ref_grads[l]["W"]) < RTOL
    print(f"layer {l + 1}: A^T {As[l].T.shape} @ G {G[l].shape} -> dJ/dW {dW[l].shape}  (= jax.grad)")

# %% [markdown]
# ## The bias gradient: broadcast forward, sum backward
#
# The bias is added to every row: $Z^l_{ij} = (A^{l-1} W^l)_{ij} + b^l_j$ for
# all $i$. So $b^l_j$ touches the $m$ entries $Z^l_{1j}, \dots, Z^l_{mj}$,
# each with slope 1, and the chain rule adds their deltas:
#
# $$\frac{\partial J}{\partial b^l_j} = \sum_{i=1}^m G^l_{ij}, \qquad
#   \frac{\partial J}{\partial b^l} = \mathbf 1^T G^l
#   \quad\text{(the sum of the rows of } G^l\text{, one total per column)}.$$
#
# This is the general rule behind broadcasting: a value that is copied to $m$
# places in the forward pass receives the sum of the $m$ gradients in the
# backward pass. Two slips are common. Keeping $G^l$ itself as "the bias
# gradient" gives an $(m, n_l)$ array, one row per example, not the gradient
# of $J$. Averaging the rows instead of summing them divides by $m$ a second
# time (the $1/m$ is already inside $G^l$).

# %%
db = [jnp.sum(G[l], axis=0) for l in range(L_layers)]
for l in range(L_layers):
    assert rel_err(db[l], ref_grads[l]["b"]) < RTOL
    assert rel_err(jnp.ones(m) @ G[l], db[l]) < RTOL
wrong = jnp.mean(G[0], axis=0)
print(f"sum of rows: agrees with jax.grad;  mean of rows: off by a factor "
      f"{float(db[0][0] / wrong[0]):.0f} = m")

# %% [markdown]
# ## The input gradient
#
# One more step of the recursion gives $\partial J / \partial X = G^1 W^{1,T}$,
# shape $(m, n_0)$: row $i$ is $\frac1m$ times example $i$'s own input
# gradient (each example's loss depends on its own row of $X$ only).

# %%
dX = G[0] @ params[0]["W"].T
assert rel_err(dX, ref_dX) < RTOL
print("dJ/dX =", dX.shape, "agrees with jax.grad")

# %% [markdown]
# ## Why the average: a check on the $1/m$
#
# Because $J$ is a mean, repeating every example twice changes nothing: the
# same $J$, the same gradients. A sum would double them. This is a cheap
# test that catches a $1/m$ forgotten or applied twice, and the library's
# hand-derived backward pass passes it, along with agreeing with our matrices.

# %%
kw = dict(activations=names, loss="mse")
r = fbp.backprop(params, (X, Y), **kw)
r2 = fbp.backprop(params, (jnp.concatenate([X, X]), jnp.concatenate([Y, Y])), **kw)
for l in range(L_layers):
    assert rel_err(r.deltas[l], G[l]) < RTOL
    assert rel_err(r.grads[l]["W"], dW[l]) < RTOL and rel_err(r.grads[l]["b"], db[l]) < RTOL
    assert rel_err(r2.grads[l]["W"], r.grads[l]["W"]) < RTOL
    assert rel_err(r2.grads[l]["b"], r.grads[l]["b"]) < RTOL
assert rel_err(r.input_grad, dX) < RTOL
print(f"J = {float(r.loss):.6f} for the batch, {float(r2.loss):.6f} for the batch twice; "
      "same gradients")

# %% [markdown]
# ## The column layout
#
# The textbook derivation usually keeps each example as a column. With
# $\overline A^0 = X^T$ of shape $(n_0, m)$, weights
# $\overline W^l = W^{l,T}$ of shape $(n_l, n_{l-1})$ and biases as columns
# $\overline b^l$ of shape $(n_l, 1)$:
#
# $$\overline Z^l = \overline W^l \overline A^{l-1} + \overline b^l \mathbf 1^T, \qquad
#   \overline G^L = \frac1m \nabla_{\overline A} L \odot g^{L\prime}(\overline Z^L), \qquad
#   \overline G^l = \big(\overline W^{l+1,T}\, \overline G^{l+1}\big) \odot g^{l\prime}(\overline Z^l),$$
#
# $$\frac{\partial J}{\partial \overline W^l} = \overline G^l\, \overline A^{l-1,T}, \qquad
#   \frac{\partial J}{\partial \overline b^l} = \overline G^l\, \mathbf 1
#   \quad\text{(the sum of the columns: one total per row)}.$$
#
# Every matrix is the transpose of its row-layout twin, and every equation is
# the transpose of the row-layout one, using $(PQ)^T = Q^T P^T$. Below the
# column form gets its own plain-JAX objective, differentiated by `jax.grad`
# on its own, and its hand-derived gradients are compared both with that and,
# transposed, with the row-layout results above.

# %%
W_col = [p["W"].T for p in params]            # (n_l, n_{l-1})
b_col = [p["b"][:, None] for p in params]     # (n_l, 1)
A0_col = X.T                                  # (n_0, m)


def J_cols(W_col, b_col, A0):
    A = A0
    for W, b, act in zip(W_col, b_col, acts):
        A = act.g(W @ A + b @ jnp.ones((1, m)))
    return jnp.mean(jnp.mean((A - Y.T) ** 2, axis=0))


Zc, Ac = [], [A0_col]
for W, b, act in zip(W_col, b_col, acts):
    Zc.append(W @ Ac[-1] + b @ jnp.ones((1, m)))
    Ac.append(act.g(Zc[-1]))
Gc = [None] * L_layers
Gc[-1] = (2 / (m * n_L)) * (Ac[-1] - Y.T) * acts[-1].dg(Zc[-1])
for l in reversed(range(L_layers - 1)):
    Gc[l] = (W_col[l + 1].T @ Gc[l + 1]) * acts[l].dg(Zc[l])
dW_col = [Gc[l] @ Ac[l].T for l in range(L_layers)]
db_col = [Gc[l] @ jnp.ones((m, 1)) for l in range(L_layers)]

ref_W_col, ref_b_col = jax.grad(J_cols, argnums=(0, 1))(W_col, b_col, A0_col)
for l in range(L_layers):
    assert rel_err(dW_col[l], ref_W_col[l]) < RTOL and rel_err(db_col[l], ref_b_col[l]) < RTOL
    assert rel_err(Gc[l].T, G[l]) < RTOL                      # the same deltas, transposed
    assert rel_err(dW_col[l].T, dW[l]) < RTOL                 # the same gradients
    assert rel_err(db_col[l][:, 0], db[l]) < RTOL
    print(f"layer {l + 1}: column G {Gc[l].shape} = row G{G[l].shape} transposed; "
          f"dJ/dW {dW_col[l].shape} vs {dW[l].shape}")

# %% [markdown]
# The library has the column layout too, in `functional_bp.columns`, written
# in these column equations (not by transposing the row code).
# `columns.to_columns` converts row-layout params exactly (a transpose and a
# reshape) and `columns.to_rows` converts back. Its deltas, gradients and
# input gradient match the column matrices above.

# %%
from functional_bp import columns

rc = columns.backprop(columns.to_columns(params), (X.T, Y.T), activations=names, loss="mse")
for l in range(L_layers):
    assert rel_err(rc.deltas[l], Gc[l]) < RTOL
    assert rel_err(rc.grads[l]["W"], dW_col[l]) < RTOL
    assert rel_err(rc.grads[l]["b"], db_col[l]) < RTOL
assert rel_err(rc.input_grad, dX.T) < RTOL
back_to_rows = columns.to_rows(rc.grads)
assert all(rel_err(back_to_rows[l][k], r.grads[l][k]) < RTOL
           for l in range(L_layers) for k in ("W", "b"))
print("functional_bp.columns.backprop agrees with the column matrices, "
      "and to_rows of its gradients with fbp.backprop")

# %% [markdown]
# ## Side by side
#
# | | row layout (the library's) | column layout (the textbooks') |
# |---|---|---|
# | data | $X$: $(m, n_0)$, one example per row | $X^T$: $(n_0, m)$, one per column |
# | weights | $W^l$: $(n_{l-1}, n_l)$ | $\overline W^l = W^{l,T}$: $(n_l, n_{l-1})$ |
# | forward | $Z^l = A^{l-1}W^l + \mathbf 1 b^l$ | $\overline Z^l = \overline W^l \overline A^{l-1} + \overline b^l \mathbf 1^T$ |
# | output delta | $G^L = \frac1m \nabla_A L \odot g'(Z^L)$ | its transpose |
# | recursion | $G^l = (G^{l+1}W^{l+1,T}) \odot g'(Z^l)$ | $\overline G^l = (\overline W^{l+1,T}\overline G^{l+1}) \odot g'(\overline Z^l)$ |
# | weights | $A^{l-1,T} G^l$ | $\overline G^l\, \overline A^{l-1,T}$ |
# | biases | sum of the rows of $G^l$ | sum of the columns of $\overline G^l$ |
#
# The arithmetic is identical; only the storage is transposed. The library
# uses rows because data arrives that way (`X[i]` is example $i$) and because
# row $i$ of each $G^l$ is then example $i$'s own delta, which
# [notebook 6](06-how-we-know-it-is-right.ipynb) uses for per-example
# gradients and clipping.
