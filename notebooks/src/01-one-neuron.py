# %% [markdown]
# # 1. One neuron
#
# The smallest network there is: one input $x$, one weight $w$, one bias $b$
# and one activation function $g$. Everything later in this series (layers,
# matrices, batches) reuses the two ideas of this notebook: the chain rule,
# and the factor $\delta$ that every parameter's derivative shares.
#
# The neuron computes
#
# $$z = w x + b, \qquad a = g(z),$$
#
# and for a target $y$ we measure the miss with the quadratic cost
#
# $$C = \tfrac12 (a - y)^2 .$$
#
# Every formula below is followed by a cell that evaluates it and asserts that
# it agrees with `jax.grad`, the automatic derivative of the same plain code.
# We work in float64, so "agrees" means to about $10^{-12}$ relative error:
# a wrong formula is off by far more than rounding could explain.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # exactness is the point here

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functional_bp as fbp

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})
RTOL = 1e-12  # float64: far above rounding, far below any real mistake

# %% [markdown]
# ## The forward pass, and the derivative of $g$
#
# We take the logistic sigmoid $g(z) = 1/(1 + e^{-z})$. Its derivative can be
# written with $g$ itself: $g'(z) = g(z)\,(1 - g(z))$. We write $g'$ by hand
# and compare it with `jax.grad(g)` at a few points before trusting it.

# %%
def g(z):
    return 1 / (1 + jnp.exp(-z))


def g_prime(z):  # written by hand: g' = g (1 - g)
    return g(z) * (1 - g(z))


def cost(w, b, x, y):
    z = w * x + b
    a = g(z)
    return 0.5 * (a - y) ** 2


zs = jnp.linspace(-6.0, 6.0, 25)
np.testing.assert_allclose(g_prime(zs), jax.vmap(jax.grad(g))(zs), rtol=RTOL)
print("g'(z) = g(z)(1 - g(z)) matches jax.grad(g) at", zs.size, "points")

# %% [markdown]
# ## The chain rule
#
# The cost depends on $w$ only through $z$, and on $z$ only through $a$. The
# chain rule multiplies the three local rates of change along that path:
#
# $$\frac{\partial C}{\partial w}
#   = \frac{\partial C}{\partial a}\,\frac{\partial a}{\partial z}\,\frac{\partial z}{\partial w}
#   = (a - y)\; g'(z)\; x .$$
#
# For the bias the path is the same except for the last link:
# $\partial z/\partial b = 1$, so
#
# $$\frac{\partial C}{\partial b} = (a - y)\; g'(z) .$$

# %%
w, b = 0.7, -0.3   # the parameters
x, y = 1.8, 0.25   # one example

z = w * x + b
a = g(z)
dC_dw = (a - y) * g_prime(z) * x
dC_db = (a - y) * g_prime(z)

ref_w, ref_b = jax.grad(cost, argnums=(0, 1))(w, b, x, y)
np.testing.assert_allclose(dC_dw, ref_w, rtol=RTOL)
np.testing.assert_allclose(dC_db, ref_b, rtol=RTOL)
print(f"dC/dw: by hand {float(dC_dw):.15f}   jax.grad {float(ref_w):.15f}")
print(f"dC/db: by hand {float(dC_db):.15f}   jax.grad {float(ref_b):.15f}")

# %% [markdown]
# ## The shared factor $\delta$
#
# Both derivatives start with the same product $(a - y)\,g'(z)$. It is the
# rate at which the cost changes when the neuron's input sum $z$ is nudged,
# $\partial C / \partial z$, and it gets a name of its own:
#
# $$\delta := \frac{\partial C}{\partial z} = (a - y)\, g'(z),
# \qquad \frac{\partial C}{\partial w} = \delta\, x,
# \qquad \frac{\partial C}{\partial b} = \delta .$$
#
# Read it this way: $w$ and $b$ act on the cost only by moving $z$; the bias
# moves $z$ one-for-one, the weight moves it by $x$ per unit. Once $\delta$ is
# known, each parameter's derivative is one multiplication away. With more
# layers, $\delta$ is what gets passed backwards from layer to layer: that is
# the whole of backpropagation.
#
# To check $\delta$ itself we need $C$ as a function of $z$, so that
# `jax.grad` can differentiate with respect to $z$ directly.

# %%
delta = (a - y) * g_prime(z)

cost_of_z = lambda z: 0.5 * (g(z) - y) ** 2
np.testing.assert_allclose(delta, jax.grad(cost_of_z)(z), rtol=RTOL)
np.testing.assert_allclose(delta * x, ref_w, rtol=RTOL)
np.testing.assert_allclose(delta, ref_b, rtol=RTOL)
print(f"delta = dC/dz = {float(delta):.6f};  dC/dw = delta * x,  dC/db = delta  (checked)")

# %% [markdown]
# ## Many examples: the cost is an average
#
# With $m$ examples $(x_i, y_i)$ we minimise the average cost
#
# $$J(w, b) = \frac1m \sum_{i=1}^m C_i, \qquad C_i = \tfrac12 (a_i - y_i)^2 .$$
#
# A derivative of a sum is the sum of the derivatives, so each example gets its
# own $\delta_i = (a_i - y_i)\,g'(z_i)$ and
#
# $$\frac{\partial J}{\partial w} = \frac1m \sum_i \delta_i\, x_i, \qquad
#   \frac{\partial J}{\partial b} = \frac1m \sum_i \delta_i .$$
#
# This one neuron is also the smallest network the library builds: layer
# widths `[1, 1]`, activation `"sigmoid"`, loss `"quadratic"`. Its $W^1$ is a
# $1\times 1$ matrix, its $b^1$ a vector of length 1, and its delta
# $G^1 = \partial J/\partial Z^1$ holds $\delta_i / m$ in row $i$ (notebook 4
# explains the $1/m$). We check the formula against `jax.grad`, and the
# library's hand-derived backward pass against both.

# %%
key_x, key_noise = jax.random.split(jax.random.key(0))
m = 40
xs = jax.random.uniform(key_x, (m,), minval=-4.0, maxval=4.0)
w_true, b_true = 1.5, -0.5
ys = g(w_true * xs + b_true) + 0.03 * jax.random.normal(key_noise, (m,))


def J(w, b):
    return jnp.mean(cost(w, b, xs, ys))


def grad_by_hand(w, b):
    z = w * xs + b
    delta = (g(z) - ys) * g_prime(z)  # one delta per example
    return jnp.mean(delta * xs), jnp.mean(delta)


w0, b0 = -1.0, 1.0
hand = grad_by_hand(w0, b0)
ref = jax.grad(J, argnums=(0, 1))(w0, b0)
np.testing.assert_allclose(hand, ref, rtol=RTOL)

params = [{"W": jnp.array([[w0]]), "b": jnp.array([b0])}]
batch = (xs[:, None], ys[:, None])
kw = dict(activations=["sigmoid"], loss="quadratic")
result = fbp.backprop(params, batch, **kw)
np.testing.assert_allclose(result.grads[0]["W"][0, 0], ref[0], rtol=RTOL)
np.testing.assert_allclose(result.grads[0]["b"][0], ref[1], rtol=RTOL)
z0 = w0 * xs + b0
np.testing.assert_allclose(m * result.deltas[0][:, 0], (g(z0) - ys) * g_prime(z0), rtol=RTOL)
print("dJ/dw, dJ/db by hand:", np.round(np.array(hand), 8))
print("jax.grad            :", np.round(np.array(ref), 8))
print("fbp.backprop        :", np.round([float(result.grads[0]["W"][0, 0]),
                                         float(result.grads[0]["b"][0])], 8))

# %% [markdown]
# ## Gradient descent
#
# With the gradient in hand, fitting is a loop: step against the gradient,
# $w \leftarrow w - \eta\,\partial J/\partial w$ and
# $b \leftarrow b - \eta\,\partial J/\partial b$, with step size $\eta$.
# The loop below uses only the hand-written gradient; every 50 steps it
# asserts agreement with `jax.grad` at the current parameters, so the check
# covers the whole path of the fit, not just its starting point.
#
# One subtlety of the check: near the minimum the gradient is an average of
# terms $\delta_i x_i$ that nearly cancel. Rounding then errs relative to the
# size of those terms, not of their tiny sum, so that is the scale the
# tolerance is taken against.

# %%
def check_against_autodiff(w, b):
    z = w * xs + b
    terms = (g(z) - ys) * g_prime(z) * jnp.maximum(1.0, jnp.abs(xs))
    np.testing.assert_allclose(grad_by_hand(w, b), jax.grad(J, argnums=(0, 1))(w, b),
                               rtol=0, atol=RTOL * float(jnp.max(jnp.abs(terms))))


eta, steps = 4.0, 200
step = jax.jit(lambda w, b: tuple(p - eta * d for p, d in zip((w, b), grad_by_hand(w, b))))

w, b = w0, b0
history = [float(J(w, b))]
for t in range(1, steps + 1):
    if t % 50 == 0:
        check_against_autodiff(w, b)
    w, b = step(w, b)
    history.append(float(J(w, b)))

print(f"cost {history[0]:.4f} -> {history[-1]:.6f};  "
      f"w = {float(w):.3f} (data made with {w_true}),  b = {float(b):.3f} ({b_true})")
assert history[-1] < 0.01 * history[0]

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.4))
ax0.semilogy(history)
ax0.set(xlabel="gradient-descent step", ylabel="cost J", title="the cost falls")
grid = jnp.linspace(-4, 4, 200)
ax1.scatter(xs, ys, s=12, color="0.4", label="data")
ax1.plot(grid, g(w0 * grid + b0), "--", label="start")
ax1.plot(grid, g(w * grid + b), label="after descent")
ax1.set(xlabel="x", ylabel="a = g(wx + b)", title="the fit")
ax1.legend(loc="upper left", fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## What carries over
#
# * The derivative with respect to a parameter is the product of local rates
#   of change along the path from that parameter to the cost.
# * All paths out of a neuron pass through its input sum $z$, so the factor
#   $\delta = \partial C/\partial z$ is computed once and reused: weights
#   multiply it by their input, biases take it as it is.
# * Over a data set the cost is an average, so the gradient is the average of
#   the per-example gradients.
#
# Next, [notebook 2](02-chain-of-neurons.ipynb) stacks neurons one after the
# other and finds how $\delta$ travels backwards through them.
