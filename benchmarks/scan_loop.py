"""100 SGD steps: one ``lax.scan`` against a Python loop of jitted steps.

Both run the same update, params <- params - lr * dJ/dparams with the grads of
``functional_bp.value_and_grad``, over the same 100 batches. The loop
dispatches one compiled step per iteration from Python; the scan is a single
compiled program, so the per-step dispatch cost disappears. At small shapes
that cost is most of a step, which is what this section measures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import functional_bp as fbp

import grad_step
import timing


def programs(params, xs, ys, activations, loss, lr=0.05):
    """(loop, scan): each runs len(xs) SGD steps from ``params``, returns params.

    The loop iterates in Python over batches sliced beforehand (no indexing
    inside the timed loop) and calls one jitted step each time; the scan is
    one jitted ``lax.scan`` over the stacked batches.
    """
    kw = dict(activations=activations, loss=loss)

    def sgd(params, x, y):
        J, grads = fbp.value_and_grad(params, (x, y), **kw)
        return jax.tree.map(lambda W, G: W - lr * G, params, grads), J

    step = jax.jit(sgd)
    batches = [(xs[i], ys[i]) for i in range(xs.shape[0])]

    def loop():
        p = params
        for x, y in batches:
            p, _ = step(p, x, y)
        return jax.block_until_ready(p)

    @jax.jit
    def scanned(params, xs, ys):
        return jax.lax.scan(lambda p, xy: sgd(p, *xy), params, (xs, ys))[0]

    def scan():
        return jax.block_until_ready(scanned(params, xs, ys))

    return loop, scan


def run(shape="tiny", *, steps=100, blocks, reps, warmup, min_sample_s, seed=0, log=print):
    """Time both programs; returns the timings (per 100-step run) and their agreement."""
    sizes, m = grad_step.SHAPES[shape]
    params, _, _, activations, loss = grad_step.problem(sizes, m, seed=seed)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    xs = jax.random.normal(kx, (steps, m, sizes[0]), jnp.float32)
    ys = jax.random.normal(ky, (steps, m, sizes[-1]), jnp.float32)
    if loss == "softmax_cross_entropy":
        ys = jax.nn.one_hot(jnp.argmax(ys, -1), sizes[-1], dtype=jnp.float32)
    loop, scan = programs(params, xs, ys, activations, loss)
    log(f"[scan] {shape} {sizes}/{m}: {steps} steps, python loop vs lax.scan")
    timings = timing.compare(
        {"python loop": loop, "lax.scan": scan},
        warmup=warmup, blocks=blocks, reps=reps, min_sample_s=min_sample_s, seed=seed,
    )
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(loop()), jax.tree.leaves(scan()))
    )
    return {"shape": shape, "sizes": sizes, "m": m, "steps": steps,
            "timings": timings, "max_abs_diff": diff}
