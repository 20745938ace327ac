# %% [markdown]
# # 7. Layers: the same recursion for any layer
#
# Notebooks 1 to 4 derived the backward pass of one architecture: dense
# layers, each followed by an elementwise activation. Written layer by layer,
# that derivation is a loop: each layer receives the cotangent
# $\partial J/\partial Y$ at its output and hands back its parameter gradients
# and the cotangent $\partial J/\partial X$ at its input. Nothing in the loop
# cares what the layer computes. All a layer needs is the chain rule for
# tensors of any shape,
#
# $$\frac{\partial J}{\partial X_k} = \sum_j \frac{\partial J}{\partial Y_j}\,
#   \frac{\partial Y_j}{\partial X_k},$$
#
# summed over every entry $j$ of its output. For a dense layer and an
# activation the sum is a matrix product and an elementwise product. This
# notebook takes a layer where it is neither, **layer normalisation**, derives
# its backward with the rule above one step at a time, checks each step
# against `jax.grad`, and then uses it: the library's layers engine composes it
# with dense layers and residual connections into a network whose gradient is
# again checked, and which we train on the digits.
#
# Everything runs in float64 except the training.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functional_bp as fbp
from functional_bp import layers as fl

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})


def rel_err(ours, ref):
    """max |ours - ref| relative to max |ref|."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


RTOL = 1e-10
rng = np.random.default_rng(0)
m, d = 4, 5
x = jnp.asarray(rng.normal(size=(m, d)))
gamma = jnp.asarray(1 + 0.5 * rng.normal(size=d))
beta = jnp.asarray(0.1 * rng.normal(size=d))
eps = 1e-5

# %% [markdown]
# ## The forward pass
#
# Each row $x$ of length $d$ (one example) is normalised to mean 0 and
# variance 1, then scaled and shifted by learned vectors $\gamma$, $\beta$:
#
# $$\begin{aligned}
#   \mu &= \tfrac1d\sum_k x_k, \qquad \sigma^2 = \tfrac1d\sum_k (x_k-\mu)^2,
#   \qquad r = \frac{1}{\sqrt{\sigma^2+\epsilon}}, \\
#   \hat x_k &= (x_k-\mu)\,r, \qquad y_k = \gamma_k\hat x_k + \beta_k.
# \end{aligned}$$
#
# Shapes: $x, \hat x, y$ are $(m, d)$; $\mu, r$ one number per row, kept as
# $(m, 1)$ so they broadcast; $\gamma, \beta$ are $(d,)$.

# %%
def layernorm(x, gamma, beta):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    r = 1 / jnp.sqrt(jnp.mean((x - mu) ** 2, axis=-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    return gamma[None, :] * xhat + beta[None, :], xhat, r


y, xhat, r = layernorm(x, gamma, beta)
print("row means of xhat:", np.round(np.asarray(xhat.mean(axis=1)), 12))
print("row variances of xhat:", np.round(np.asarray(xhat.var(axis=1)), 4))

# %% [markdown]
# ## The parameters: one term each
#
# Let $\bar y = \partial J/\partial y$ be the cotangent arriving from above
# (any $(m, d)$ array; below, a random one). $y_{ik}$ depends on $\gamma_k$
# only through the product $\gamma_k \hat x_{ik}$, in every row $i$, so the
# chain-rule sum over the entries of $y$ keeps one term per row:
#
# $$\frac{\partial J}{\partial\gamma_k} = \sum_i \bar y_{ik}\,\hat x_{ik},
#   \qquad \frac{\partial J}{\partial\beta_k} = \sum_i \bar y_{ik}.$$
#
# The check: for a fixed $\bar y$, $J = \sum_{ik}\bar y_{ik}\,y_{ik}$ has exactly
# that cotangent, so `jax.grad` of it is the reference.

# %%
ybar = jnp.asarray(rng.normal(size=(m, d)))


def J(x, gamma, beta):
    return jnp.sum(ybar * layernorm(x, gamma, beta)[0])


g_ref = jax.grad(J, argnums=(0, 1, 2))(x, gamma, beta)
dgamma = jnp.sum(ybar * xhat, axis=0)
dbeta = jnp.sum(ybar, axis=0)
print(f"dJ/dgamma: {rel_err(dgamma, g_ref[1]):.1e}   dJ/dbeta: {rel_err(dbeta, g_ref[2]):.1e}")
assert rel_err(dgamma, g_ref[1]) < RTOL and rel_err(dbeta, g_ref[2]) < RTOL

# %% [markdown]
# ## The input: a Jacobian that is not diagonal
#
# Through $\gamma$ first: $h := \partial J/\partial\hat x = \bar y\odot\gamma$.
# Then $\hat x$ in $x$, one row at a time. An activation's output $j$ depends
# on its input $j$ alone; here every $\hat x_j$ depends on every $x_k$, through
# $\mu$ and through $r$. The pieces:
#
# $$\begin{aligned}
#   \frac{\partial\mu}{\partial x_k} &= \frac1d, \qquad
#   \frac{\partial\sigma^2}{\partial x_k} = \frac2d (x_k-\mu)
#   \quad(\text{the } \textstyle\sum_j (x_j-\mu) = 0 \text{ term drops}), \\
#   \frac{\partial r}{\partial x_k} &= -\tfrac12 r^3\,\frac{\partial\sigma^2}{\partial x_k}
#   = -\frac{r^2\,\hat x_k}{d}.
# \end{aligned}$$
#
# By the product rule on $\hat x_j = (x_j-\mu)\,r$:
#
# $$\frac{\partial\hat x_j}{\partial x_k}
#   = r\Big(\delta_{jk} - \frac1d\Big) + (x_j-\mu)\frac{\partial r}{\partial x_k}
#   = r\Big(\delta_{jk} - \frac1d - \frac{\hat x_j\hat x_k}{d}\Big).$$
#
# We build this $d\times d$ matrix for each row and compare it with
# `jax.jacobian` of the same row's $\hat x$.

# %%
def xhat_row(row):
    mu = jnp.mean(row)
    return (row - mu) / jnp.sqrt(jnp.mean((row - mu) ** 2) + eps)


for i in range(m):
    jac = r[i, 0] * (jnp.eye(d) - 1 / d - jnp.outer(xhat[i], xhat[i]) / d)
    err = rel_err(jac, jax.jacobian(xhat_row)(x[i]))
    assert err < RTOL, err
print(f"the {m} Jacobians d xhat / d x agree with jax.jacobian (last error {err:.1e})")

# %% [markdown]
# ## The chain-rule sum, collapsed
#
# $\partial J/\partial x_k = \sum_j h_j\,\partial\hat x_j/\partial x_k$. With the
# Jacobian above the sum splits into three terms, and two of them are means
# over the row:
#
# $$\begin{aligned}
#   \frac{\partial J}{\partial x_k}
#   &= r\Big(h_k - \frac1d\sum_j h_j - \hat x_k\,\frac1d\sum_j h_j\hat x_j\Big),
#   \\
#   \frac{\partial J}{\partial x} &= r\,\big(h - \overline{h} - \hat x\odot\overline{h\odot\hat x}\big).
# \end{aligned}$$
#
# The first mean is the path through $\mu$, the second the path through the
# variance. The cache needs $\hat x$ and $r$ only, and the $d\times d$ Jacobian
# is never formed: a few elementwise passes and two row means. Three checks:
# the explicit sum with the Jacobian, the collapsed formula, and the library's
# `LayerNorm.backward`, each against `jax.grad`.

# %%
h = ybar * gamma[None, :]
dx_sum = jnp.stack([h[i] @ (r[i, 0] * (jnp.eye(d) - 1 / d - jnp.outer(xhat[i], xhat[i]) / d))
                    for i in range(m)])
dx = r * (h - h.mean(axis=-1, keepdims=True) - xhat * (h * xhat).mean(axis=-1, keepdims=True))

ln = fl.LayerNorm(eps=eps)
params = {"scale": gamma, "bias": beta}
y_lib, cache = ln.forward(params, x)
grads_lib, dx_lib = ln.backward(params, cache, ybar)

for name, value in [("explicit sum", dx_sum), ("collapsed formula", dx),
                    ("LayerNorm.backward", dx_lib)]:
    print(f"dJ/dx by the {name:<18}: {rel_err(value, g_ref[0]):.1e}")
    assert rel_err(value, g_ref[0]) < RTOL
assert rel_err(grads_lib["scale"], g_ref[1]) < RTOL and rel_err(grads_lib["bias"], g_ref[2]) < RTOL

# %% [markdown]
# ## Either path forgotten
#
# The two means are easy to lose. Dropping the path through $\mu$ leaves a
# gradient whose rows no longer sum to zero (the true one does: adding a
# constant to a row changes nothing after normalisation); dropping the path
# through the variance leaves one that is not orthogonal to $\hat x$. Both are
# off by order one.

# %%
no_mean = r * (h - xhat * (h * xhat).mean(axis=-1, keepdims=True))
no_var = r * (h - h.mean(axis=-1, keepdims=True))
print(f"without the mean term:  error {rel_err(no_mean, g_ref[0]):.2f}")
print(f"without the xhat term:  error {rel_err(no_var, g_ref[0]):.2f}")
print("row sums of the true dJ/dx:", np.round(np.asarray(dx.sum(axis=1)), 12))
assert rel_err(no_mean, g_ref[0]) > 1e-2 and rel_err(no_var, g_ref[0]) > 1e-2

# %% [markdown]
# ## Residual connections: two paths add
#
# A residual block computes $Y = X + f(X)$. $Y$ depends on $X$ directly, with
# slope 1, and through $f$; the chain rule adds the two:
# $\partial J/\partial X = \bar Y + (\text{f's backward of } \bar Y)$. In the
# engine that is the whole of `Residual`'s backward: run the body's loop, add
# the cotangent that came in. A check with the body LayerNorm, Dense, tanh:

# %%
block = fl.Residual(fl.LayerNorm(), fl.Dense(d), fl.Activation("tanh"))
p_block, _ = block.init(jax.random.key(0), (d,), jnp.float64)  # a layer: (params, output shape)
out, caches = block.forward(p_block, x)
g_block, dx_block = block.backward(p_block, caches, ybar)


def J_block(x, p):
    return jnp.sum(ybar * block.forward(p, x)[0])


ref_x, ref_p = jax.grad(J_block, argnums=(0, 1))(x, p_block)
print(f"dJ/dX through the block: {rel_err(dx_block, ref_x):.1e}")
assert rel_err(dx_block, ref_x) < RTOL
for got, want in zip(jax.tree.leaves(g_block), jax.tree.leaves(ref_p)):
    assert rel_err(got, want) < RTOL

# %% [markdown]
# ## A network of layers, checked
#
# `fl.Sequential` runs the loop `for layer in reversed(layers): dparams, dy =
# layer.backward(params, cache, dy)`. Every public function takes it as
# `network=`. A residual MLP for the 8x8 digits: a dense layer into width 64,
# two residual blocks, a final LayerNorm and the dense output layer. The
# library's `check_gradients` compares every parameter leaf and $\partial J/\partial X$
# with `jax.grad` of the plain objective:

# %%
from functional_bp.datasets import load_dataset
from functional_bp.train import fit, init_state, make_optimizer

data = load_dataset("digits", seed=0)
train = (data.x_train, data.y_train)
test = (data.x_test, data.y_test)

width = 64
net = fl.Sequential(
    fl.Dense(width), fl.Activation("relu"),
    fl.Residual(fl.LayerNorm(), fl.Dense(width), fl.Activation("relu")),
    fl.Residual(fl.LayerNorm(), fl.Dense(width), fl.Activation("relu")),
    fl.Dropout(0.1),
    fl.LayerNorm(), fl.Dense(data.n_classes),
)
kw = dict(network=net, loss="softmax_cross_entropy")
p64 = net.init(jax.random.key(0), (64,), jnp.float64)
batch64 = (jnp.asarray(data.x_train[:32], jnp.float64), jnp.asarray(data.y_train[:32]))
report = fbp.check_gradients(p64, batch64, **kw, l2=1e-3, dropout_key=jax.random.key(1))
print(report.raise_if_failed())

# %% [markdown]
# `backprop` also returns the cotangent at every layer's output, nested like
# the params: the generalisation of the deltas $G^l$. Their shapes:

# %%
r64 = fbp.backprop(p64, batch64, **kw, key=jax.random.key(1))
for i, (layer, cot) in enumerate(zip(net.layers, r64.deltas), 1):
    shapes = [c.shape for c in cot] if isinstance(cot, list) else cot.shape
    print(f"{i}. {type(layer).__name__:<10} dJ/dY {shapes}")

# %% [markdown]
# ## Training it
#
# The library's trainer takes the network like the MLP; its Dropout layer
# draws a fresh mask at every step from the state's key, and evaluation runs
# without dropout. Adam, step size $10^{-3}$, batches of 32, 20 epochs, in
# float32.

# %%
params = net.init(jax.random.key(2), (64,))
opt = make_optimizer("adam", 1e-3)
state = init_state(params, optimizer=opt, key=jax.random.key(3))
state, history = fit(state, train, test, **kw, optimizer=opt, epochs=20, batch_size=32)
curve = {k: [h[k] for h in history] for k in history[0]}
print(f"after {curve['epoch'][-1]} epochs: train accuracy {curve['train_accuracy'][-1]:.3f}, "
      f"test accuracy {curve['test_accuracy'][-1]:.3f}")
assert curve["test_accuracy"][-1] > 0.9

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.3))
ax0.plot(curve["epoch"], curve["train_loss"], label="train")
ax0.plot(curve["epoch"], curve["test_loss"], label="test")
ax0.set(xlabel="epoch", ylabel="mean cross-entropy", yscale="log", title="loss")
ax1.plot(curve["epoch"], curve["train_accuracy"], label="train")
ax1.plot(curve["epoch"], curve["test_accuracy"], label="test")
ax1.set(xlabel="epoch", ylabel="accuracy", ylim=(0.5, 1.005), title="accuracy")
for ax in (ax0, ax1):
    ax.legend()
fig.suptitle("residual MLP with layer norms on the 8x8 digits", fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## Per-example gradients, from the same cotangents
#
# Each layer with parameters also gives each example's squared gradient norm
# from its cache and its cotangent (LayerNorm: the squared norms of
# $\sum_t \bar y_{it}\odot\hat x_{it}$ and $\sum_t \bar y_{it}$), so the
# per-example norms of DP-SGD need no per-example gradients. Against
# `jax.vmap(jax.grad)` of the one-example objective (in evaluation mode, no
# dropout key):

# %%
from functional_bp.losses import get_loss
from functional_bp.network import objective_from_arrays

x_b, y_b = batch64
y_1h = jax.nn.one_hot(y_b, data.n_classes, dtype=jnp.float64)


def L_i(p, x_i, y_i):
    return objective_from_arrays(net, p, x_i[None], y_i[None], 0.0,
                                 get_loss("softmax_cross_entropy"))


per_example = jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(p64, x_b, y_1h)
ref_norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                         for g in jax.tree.leaves(per_example)))
norms = fbp.per_example_grad_norms(p64, batch64, **kw)
print(f"per-example norms: {rel_err(norms, ref_norms):.1e}")
assert rel_err(norms, ref_norms) < RTOL
