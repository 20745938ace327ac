# %% [markdown]
# # 5. Training on digits with the library
#
# Notebooks 1 to 4 derived the backward pass; this one uses it. We train a
# small network on scikit-learn's bundled 8x8 handwritten digits (1,797
# images, 64 pixels each, ten classes) with the library's trainer,
# `functional_bp.train.fit`. Every update step calls the hand-derived
# recursion of notebook 4 on a minibatch $B$ and takes a step against it:
#
# $$W^l \leftarrow W^l - \eta\,\Big(A^{l-1,T} G^l + \ell_2\, W^l\Big), \qquad
#   b^l \leftarrow b^l - \eta\, \mathbf 1^T G^l,$$
#
# where the $\ell_2 W^l$ term is the gradient of the weight penalty
# $\frac{\ell_2}{2}\sum_l \lVert W^l\rVert^2$ that $J$ includes when
# $\ell_2 > 0$. We look at the learning curves, at the digits the network
# gets wrong, at what $\ell_2$ changes, and finally check the gradient of the
# trained network layer by layer against `jax.grad`.
#
# Training runs in float32, as usual; the final check also runs in float64.
# The training is kept short (a few seconds) so the notebook runs quickly.

# %%
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import functional_bp as fbp
from functional_bp.datasets import load_dataset
from functional_bp.train import fit, init_state, sgd

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})

data = load_dataset("digits", seed=0)
train = (data.x_train, data.y_train)
test = (data.x_test, data.y_test)
print(f"train {data.x_train.shape}, test {data.x_test.shape}, classes {data.n_classes}")

sizes = [64, 64, 10]
kw = dict(activations=["relu", "identity"], loss="softmax_cross_entropy")
params0 = fbp.init_mlp(jax.random.key(0), sizes)

# %% [markdown]
# ## Before training: the gradient on one minibatch
#
# A first check, on the untrained network and one minibatch of 32 examples:
# the library's hand-derived gradient against `jax.grad` of the plain
# objective, leaf by leaf, with `fbp.check_gradients`. In float32 a leaf
# passes when its error is at most $2\cdot10^{-5}$ of the leaf's largest
# entry.

# %%
x_b = jnp.asarray(data.x_train[:32])
y_b = jnp.asarray(data.y_train[:32])
report = fbp.check_gradients(functools.partial(fbp.grad, **kw),
                             functools.partial(fbp.objective, **kw),
                             params0, (x_b, y_b))
print(report.raise_if_failed())  # raises AssertionError with the table if a leaf fails

# %% [markdown]
# ## Training and the learning curves
#
# Plain minibatch gradient descent: batches of 32, step size $\eta = 0.1$,
# 25 passes over the training set. `fit` evaluates the loss and accuracy on
# both parts after every epoch.

# %%
epochs, eta, batch_size = 25, 0.1, 32


def train_run(l2):
    state = init_state(params0, optimizer=sgd(eta), key=jax.random.key(1))
    state, history = fit(state, train, test, **kw, optimizer=sgd(eta), epochs=epochs,
                         batch_size=batch_size, l2=l2)
    return state.params, history


params, history = train_run(l2=0.0)
curve = {k: [h[k] for h in history] for k in history[0]}
print(f"after {epochs} epochs: train accuracy {curve['train_accuracy'][-1]:.3f}, "
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
fig.tight_layout()

# %% [markdown]
# ## The digits it gets wrong
#
# The test images whose largest output is not the true class, with the true
# label and the network's answer (the first 24 of them). At 8x8 pixels some
# are ambiguous to the eye as well.

# %%
logits = fbp.forward(params, jnp.asarray(data.x_test), activations=kw["activations"])
predicted = np.asarray(jnp.argmax(logits, axis=1))
wrong = np.flatnonzero(predicted != data.y_test)
print(f"{wrong.size} of {data.y_test.size} test digits misclassified")

shown = wrong[:24]
fig, axes = plt.subplots(3, 8, figsize=(8, 3.6))
for ax in axes.ravel():
    ax.axis("off")
for ax, i in zip(axes.ravel(), shown):
    ax.imshow(data.x_test[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{data.y_test[i]} as {predicted[i]}", fontsize=9)
fig.suptitle("misclassified test digits: true label as predicted label", fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## The effect of $\ell_2$
#
# The penalty $\frac{\ell_2}{2}\sum_l \lVert W^l \rVert^2$ adds $\ell_2 W^l$
# to each weight gradient, so every step also shrinks the weights by the
# factor $(1 - \eta\ell_2)$: "weight decay". Biases are not penalised. First
# the formula: the library's gradient with $\ell_2 > 0$ against `jax.grad`.
# Then the same training with three values of $\ell_2$. Larger values keep
# the weights smaller, the training loss cannot go as low, and the gap between
# training and test loss narrows. (On this short run the penalty does not
# buy a better test score; its effect on the weights is the point here.)

# %%
kw_l2 = dict(kw, l2=1e-2)
fbp.check_gradients(functools.partial(fbp.grad, **kw_l2),
                    functools.partial(fbp.objective, **kw_l2),
                    params0, (x_b, y_b)).raise_if_failed()
print("the gradient with the l2 term agrees with jax.grad")

runs = {0.0: (params, curve)}
for l2 in [1e-3, 3e-2]:
    p, h = train_run(l2)
    runs[l2] = (p, {k: [r[k] for r in h] for k in h[0]})

print(f"{'l2':>6} {'sum ||W||^2':>12} {'train loss':>11} {'test loss':>10} "
      f"{'train acc':>10} {'test acc':>9}")
for l2, (p, c) in runs.items():
    w2 = sum(float(jnp.sum(layer["W"] ** 2)) for layer in p)
    print(f"{l2:6g} {w2:12.1f} {c['train_loss'][-1]:11.4f} {c['test_loss'][-1]:10.4f} "
          f"{c['train_accuracy'][-1]:10.3f} {c['test_accuracy'][-1]:9.3f}")
norms = [sum(float(jnp.sum(layer["W"] ** 2)) for layer in p) for p, _ in runs.values()]
assert norms[0] > norms[1] > norms[2]
gaps = [c["test_loss"][-1] - c["train_loss"][-1] for _, c in runs.values()]
assert gaps[2] < gaps[0]

fig, ax = plt.subplots(figsize=(6, 3.3))
for (l2, (_, c)), color in zip(runs.items(), ["C0", "C1", "C3"]):
    ax.plot(c["epoch"], c["train_loss"], color=color, label=f"l2 = {l2:g}, train")
    ax.plot(c["epoch"], c["test_loss"], "--", color=color, label=f"l2 = {l2:g}, test")
ax.set(xlabel="epoch", ylabel="mean cross-entropy", yscale="log",
       title="loss with weight decay")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()

# %% [markdown]
# ## The trained network, checked layer by layer
#
# The gradient check at the start was at random weights. Trained weights are
# a different regime (larger, more confident outputs, more relu units
# switched off), so we check again at the end, on the whole training set,
# with the weight penalty on. The table lists each layer's $W$ and $b$
# separately: an error in one small layer cannot hide behind a large one.
# First in float32 (the training precision), then with the same weights and
# data cast to float64, where the agreement is near machine precision.

# %%
full = (jnp.asarray(data.x_train), jnp.asarray(data.y_train))
trained, _ = runs[1e-3]
kw_trained = dict(kw, l2=1e-3)
grad_fn = functools.partial(fbp.grad, **kw_trained)
objective_fn = functools.partial(fbp.objective, **kw_trained)

report32 = fbp.check_gradients(grad_fn, objective_fn, trained, full)
print("float32\n" + str(report32.raise_if_failed()))

with jax.enable_x64(True):
    trained64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), trained)
    full64 = (jnp.asarray(full[0], jnp.float64), full[1])
    report64 = fbp.check_gradients(grad_fn, objective_fn, trained64, full64)
print("\nfloat64\n" + str(report64.raise_if_failed()))
