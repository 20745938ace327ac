# %% [markdown]
# # 2. A chain of neurons
#
# Notebook 1 differentiated one neuron. Now put neurons one after another,
# each feeding the next, still one neuron per layer. Layer $l$ has its own
# weight $w^l$, bias $b^l$ and activation $g^l$; the input is called
# $a^0 = x$ so that every layer looks the same:
#
# $$z^l = w^l a^{l-1} + b^l, \qquad a^l = g^l(z^l), \qquad l = 1, \dots, L,$$
#
# and the cost is $C = \frac12 (a^L - y)^2$. The question is how the
# derivative with respect to an early weight, far from the cost, is found
# without redoing the whole chain rule for every parameter. The answer is a
# recursion for $\delta^l := \partial C / \partial z^l$ that runs from the
# output back to the input.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functional_bp as fbp
from functional_bp.activations import ACTIVATIONS

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})
RTOL = 1e-12

# %% [markdown]
# ## Two layers
#
# The last layer is notebook 1 again, with $a^1$ in the place of $x$:
#
# $$\delta^2 = (a^2 - y)\, g^{2\prime}(z^2), \qquad
#   \frac{\partial C}{\partial w^2} = \delta^2 a^1, \qquad
#   \frac{\partial C}{\partial b^2} = \delta^2 .$$
#
# The first layer's parameters reach the cost only through $z^1$, and $z^1$
# reaches it only through $z^2 = w^2 g^1(z^1) + b^2$. So
#
# $$\delta^1 = \frac{\partial C}{\partial z^1}
#   = \frac{\partial C}{\partial z^2}\,\frac{\partial z^2}{\partial z^1}
#   = \delta^2\, w^2\, g^{1\prime}(z^1), \qquad
#   \frac{\partial C}{\partial w^1} = \delta^1 a^0, \qquad
#   \frac{\partial C}{\partial b^1} = \delta^1 .$$
#
# The new ingredient is the middle step: to go back one layer, multiply by the
# weight that connects the layers and by the slope of the activation in
# between. We check all four derivatives, and both deltas, against
# `jax.grad`. For the deltas, the plain forward pass takes optional offsets
# added to each $z^l$; the derivative of the cost with respect to an offset at
# zero is exactly $\partial C/\partial z^l$.

# %%
sigmoid, tanh = ACTIVATIONS["sigmoid"], ACTIVATIONS["tanh"]


def chain_cost(ws, bs, x, y, acts, offsets=None):
    """Plain forward pass of a chain of single neurons; the autodiff reference."""
    a = x
    for l, (w, b, act) in enumerate(zip(ws, bs, acts)):
        z = w * a + b + (0.0 if offsets is None else offsets[l])
        a = act.g(z)
    return 0.5 * (a - y) ** 2


ws, bs = [0.9, -1.4], [0.2, 0.5]
acts = [tanh, sigmoid]
x, y = 0.8, 0.1

z1 = ws[0] * x + bs[0]; a1 = acts[0].g(z1)
z2 = ws[1] * a1 + bs[1]; a2 = acts[1].g(z2)
delta2 = (a2 - y) * acts[1].dg(z2)
delta1 = delta2 * ws[1] * acts[0].dg(z1)
hand = {"w": [delta1 * x, delta2 * a1], "b": [delta1, delta2]}

ref_w, ref_b = jax.grad(chain_cost, argnums=(0, 1))(ws, bs, x, y, acts)
ref_deltas = jax.grad(lambda o: chain_cost(ws, bs, x, y, acts, o))([0.0, 0.0])
np.testing.assert_allclose(hand["w"], ref_w, rtol=RTOL)
np.testing.assert_allclose(hand["b"], ref_b, rtol=RTOL)
np.testing.assert_allclose([delta1, delta2], ref_deltas, rtol=RTOL)
print("delta^1, delta^2 :", np.round([float(delta1), float(delta2)], 10))
print("dC/dw^1, dC/dw^2 :", np.round([float(v) for v in hand["w"]], 10), " (= jax.grad)")

# %% [markdown]
# ## $L$ layers: the delta recursion
#
# Nothing in the two-layer argument used the fact that there were two layers.
# For any depth, starting at the output:
#
# $$\delta^L = (a^L - y)\, g^{L\prime}(z^L), \qquad
#   \delta^l = \delta^{l+1}\, w^{l+1}\, g^{l\prime}(z^l) \quad (l = L-1, \dots, 1),$$
#
# $$\frac{\partial C}{\partial w^l} = \delta^l a^{l-1}, \qquad
#   \frac{\partial C}{\partial b^l} = \delta^l .$$
#
# The forward pass keeps every $z^l$ and $a^l$; the backward pass walks the
# layers in reverse, and each step costs a couple of multiplications. All $2L$
# derivatives come out of one backward sweep that costs about as much as the
# forward pass. Computing each derivative separately by its own chain of
# factors would cost $O(L^2)$ instead: the recursion shares the partial
# products.
#
# Below, a depth-6 chain with a different activation in each layer. The same
# chain is also a network the library understands: layer widths
# `[1, 1, ..., 1]`, where each $W^l$ is a $1\times 1$ matrix; its backward
# pass must give the same deltas and gradients.

# %%
def backprop_chain(ws, bs, acts, x, y):
    """The delta recursion for a chain of single neurons: (deltas, dC/dw, dC/db)."""
    zs, As = [], [jnp.asarray(x, dtype=jnp.float64)]  # forward: keep z^l and a^l
    for w, b, act in zip(ws, bs, acts):
        zs.append(w * As[-1] + b)
        As.append(act.g(zs[-1]))
    L = len(ws)
    deltas = [None] * L
    deltas[L - 1] = (As[L] - y) * acts[L - 1].dg(zs[L - 1])  # delta^L
    for l in reversed(range(L - 1)):  # delta^l from delta^{l+1}
        deltas[l] = deltas[l + 1] * ws[l + 1] * acts[l].dg(zs[l])
    dC_dw = [deltas[l] * As[l] for l in range(L)]  # As[l] is a^{l-1} of layer l+1
    return deltas, dC_dw, list(deltas)


names6 = ["tanh", "sigmoid", "softplus", "elu", "tanh", "sigmoid"]
acts6 = [ACTIVATIONS[n] for n in names6]
key_w, key_b = jax.random.split(jax.random.key(1))
ws6 = list(1.5 * jax.random.normal(key_w, (6,)))
bs6 = list(0.5 * jax.random.normal(key_b, (6,)))
x, y = 0.7, 0.9

deltas, dC_dw, dC_db = backprop_chain(ws6, bs6, acts6, x, y)
ref_w, ref_b = jax.grad(chain_cost, argnums=(0, 1))(ws6, bs6, x, y, acts6)
ref_deltas = jax.grad(lambda o: chain_cost(ws6, bs6, x, y, acts6, o))([0.0] * 6)
np.testing.assert_allclose(dC_dw, ref_w, rtol=RTOL)
np.testing.assert_allclose(dC_db, ref_b, rtol=RTOL)
np.testing.assert_allclose(deltas, ref_deltas, rtol=RTOL)

params = [{"W": jnp.reshape(w, (1, 1)), "b": jnp.reshape(b, (1,))} for w, b in zip(ws6, bs6)]
r = fbp.backprop(params, (jnp.array([[x]]), jnp.array([[y]])), activations=names6,
                 loss="quadratic")
np.testing.assert_allclose([d[0, 0] for d in r.deltas], ref_deltas, rtol=RTOL)
np.testing.assert_allclose([p["W"][0, 0] for p in r.grads], ref_w, rtol=RTOL)
for l, d in enumerate(deltas, start=1):
    print(f"delta^{l} = {float(d): .3e}")
print("recursion, jax.grad and fbp.backprop agree on every delta and gradient")

# %% [markdown]
# ## Vanishing gradients
#
# Unroll the recursion and $\delta^l$ is a product:
#
# $$\delta^l = \delta^L \prod_{k=l}^{L-1} w^{k+1}\, g^{k\prime}(z^k).$$
#
# Each layer between $l$ and the output contributes one factor
# $w^{k+1} g^{k\prime}(z^k)$. If those factors are typically smaller than one,
# $|\delta^l|$ shrinks geometrically as we move towards the input, and so do
# the gradients of the early layers, which then barely learn. The sigmoid makes
# this likely: its slope $g'(z) = g(z)(1 - g(z))$ is at most $1/4$ (at
# $z = 0$). The slope of tanh reaches 1 at $z = 0$, and relu's is exactly 1
# wherever the unit is active.
#
# **A chain of 30 neurons**, all with $w^l = 1$, $b^l = 0$ and input
# $x = 0.5$. With the sigmoid every factor is a slope below $1/4$; with tanh
# the $z^l$ drift slowly towards 0, where the slope is close to 1; with relu
# every factor is exactly 1. The recursion's deltas are checked against
# `jax.grad` for each activation.

# %%
depth = 30
chain_delta = {}
for name in ["sigmoid", "tanh", "relu"]:
    acts_c = [ACTIVATIONS[name]] * depth
    ws_c, bs_c = [1.0] * depth, [0.0] * depth
    d, _, _ = backprop_chain(ws_c, bs_c, acts_c, 0.5, 2.0)
    ref = jax.grad(lambda o: chain_cost(ws_c, bs_c, 0.5, 2.0, acts_c, o))([0.0] * depth)
    np.testing.assert_allclose(d, ref, rtol=RTOL)
    chain_delta[name] = np.abs(np.array(d))
    print(f"{name:8s} |delta^1| / |delta^L| = {chain_delta[name][0] / chain_delta[name][-1]:.2e}")

# %% [markdown]
# **Wide layers.** The same happens in real networks. Below, networks of 20
# layers of 32 units each, with random weights at the usual scale for each
# activation (Glorot for sigmoid and tanh, He for relu, see `fbp.init_mlp`),
# a batch of 64 random inputs and the quadratic loss. The size of
# $\delta^l$ is measured as the root mean square of the entries of $G^l$, the
# library's deltas (notebook 3 introduces the matrix form; for now $G^l$ simply
# holds every unit's and every example's $\delta$). Every $G^l$ is checked
# against `jax.grad` with respect to offsets added to $Z^l$, exactly as
# for the chain.

# %%
def net_cost(params, x, y, acts, offsets):
    """Plain forward pass of a layered network with offsets on each Z^l."""
    a = x
    for p, act, o in zip(params, acts, offsets):
        a = act.g(a @ p["W"] + p["b"] + o)
    return jnp.mean(0.5 * jnp.sum((a - y) ** 2, axis=1))


def rel_err(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


width, m, depth_wide = 32, 64, 20
kx, ky, kp = jax.random.split(jax.random.key(2), 3)
x = jax.random.normal(kx, (m, width))
y = jax.random.normal(ky, (m, 1))
wide_delta = {}
for name, scheme in [("sigmoid", "glorot"), ("tanh", "glorot"), ("relu", "he")]:
    params = fbp.init_mlp(kp, [width] * depth_wide + [1], scheme=scheme, dtype=jnp.float64)
    acts_n = [name] * (depth_wide - 1) + ["identity"]
    r = fbp.backprop(params, (x, y), activations=acts_n, loss="quadratic")
    offsets = [jnp.zeros_like(G) for G in r.deltas]
    ref = jax.grad(net_cost, argnums=4)(params, x, y, [ACTIVATIONS[n] for n in acts_n], offsets)
    assert max(rel_err(G, G_ref) for G, G_ref in zip(r.deltas, ref)) < RTOL
    wide_delta[name] = np.array([float(jnp.sqrt(jnp.mean(G**2))) for G in r.deltas])
    print(f"{name:8s} rms(G^1) / rms(G^L-1) = {wide_delta[name][0] / wide_delta[name][-2]:.2e}")

# %%
colors = {"sigmoid": "C3", "tanh": "C0", "relu": "C2"}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, c in colors.items():
    axes[0].semilogy(range(1, depth + 1), chain_delta[name], "o-", ms=3, color=c, label=name)
    axes[1].semilogy(range(1, depth_wide + 1), wide_delta[name], "o-", ms=3, color=c, label=name)
axes[0].set(title="chain of 30 single neurons (w = 1, b = 0)", ylabel=r"$|\delta^l|$")
axes[1].set(title="20 layers of 32 units, random weights", ylabel=r"rms of $G^l$")
for ax in axes:
    ax.set_xlabel(r"layer $l$   (the backward pass runs from right to left)")
    ax.legend(fontsize=8)
fig.tight_layout()

assert chain_delta["sigmoid"][0] / chain_delta["sigmoid"][-1] < 1e-15
assert wide_delta["sigmoid"][0] / wide_delta["sigmoid"][-2] < 1e-6
assert wide_delta["relu"][0] / wide_delta["relu"][-2] > 1e-2

# %% [markdown]
# With sigmoid units, $\delta$ loses about a factor of four or more per layer
# in both settings: the first layers of a deep sigmoid network receive
# gradients many orders of magnitude smaller than the last ones. Tanh and
# relu keep $\delta$ at a workable size (in the wide networks, with the
# initialisation suited to each). The
# recursion explains why: the size of $\delta^l$ is set by the product of the
# weights and the activation slopes on the way back.
#
# Next, [notebook 3](03-many-neurons.ipynb) lets each layer have many neurons,
# which turns these products of numbers into products of matrices.
