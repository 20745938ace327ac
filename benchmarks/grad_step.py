"""One gradient step (loss and every grad), side by side, at the issue's shapes.

Implementations, all on the same params and batch (float32):

- ``ours``: ``functional_bp.value_and_grad`` called as is (the public call:
  one jit dispatch; its input checks run while tracing, once per shape);
- ``ours, jitted``: ``jax.jit(partial(functional_bp.value_and_grad, ...))``,
  wrapped in ``jax.jit`` exactly as the reference is;
- ``jax.value_and_grad``: ``jax.jit(jax.value_and_grad(objective))``;
- ``numpy``: the same equations in NumPy (:mod:`numpy_mlp`);
- ``torch``: PyTorch eager autograd (:mod:`torch_mlp`), when torch imports.

Before timing, every implementation's loss and grads are compared per leaf
with ``jax.value_and_grad`` (max |ours - ref| / max |ref|), so the table can
only put side by side steps that compute the same numbers.

Besides the times: GFLOP/s of the step (matmul FLOPs counted by hand, see
:func:`step_flops`), the fraction of a float32 matmul peak measured in the same
run (:func:`matmul`), the compiled HLO of ours and of the reference
summarised side by side (:func:`hlo_summary`), and the time of a first call on
a fresh shape (trace, compile and one run) after ``jax.clear_caches()``.
:data:`AGAIN` is a second, separately jitted copy of the reference, timed in
the same blocks: the spread between two copies of one program is the noise
floor of the run, the scale against which a ratio near 1 is read.
"""

from __future__ import annotations

import re
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp

import numpy_mlp
import timing
import torch_mlp

AGAIN = "jax.value_and_grad, again"

# name: (layer widths [n_0, ..., n_L], batch size m)
SHAPES = {
    "tiny": ([8, 16, 1], 32),
    "digits": ([64, 128, 10], 128),
    "mnist": ([784, 256, 128, 10], 256),
    "wide": ([1024, 1024, 1024, 1024], 512),
    "deep": ([64] + [64] * 16 + [10], 128),
}


def problem(sizes, m, *, seed=0):
    """params, x, y (float32), activations and loss for one benchmark shape.

    Hidden layers are relu and the last is identity; a single output is a
    regression (quadratic loss), several are classes (softmax cross-entropy on
    one-hot float targets, so that no implementation pays for a label
    conversion the others skip).
    """
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(kp, sizes, dtype=jnp.float32)
    x = jax.random.normal(kx, (m, sizes[0]), jnp.float32)
    n_L = sizes[-1]
    if n_L == 1:
        loss = "quadratic"
        y = jax.random.normal(ky, (m, 1), jnp.float32)
    else:
        loss = "softmax_cross_entropy"
        y = jax.nn.one_hot(jax.random.randint(ky, (m,), 0, n_L), n_L, dtype=jnp.float32)
    activations = ("relu",) * (len(sizes) - 2) + ("identity",)
    return params, x, y, activations, loss


def step_flops(sizes, m) -> int:
    """Matmul FLOPs of one step: 2 m n_in n_out per product.

    Forward Z^l = A^{l-1} W^l and dJ/dW^l = A^{l-1,T} G^l for every layer, and
    G^l W^{l,T} for every layer but the first (dJ/dX is not asked for, and XLA
    drops it): 6 m sum(n_in n_out) - 2 m n_0 n_1. Elementwise work is left out.
    """
    per_layer = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return 6 * m * sum(per_layer) - 2 * m * per_layer[0]


def _ready(out):
    return jax.block_until_ready(out)


def implementations(params, x, y, activations, loss, *, with_numpy=True, with_torch=True,
                    torch_threads=None):
    """name -> (step callable, function giving (J, grads as params-like NumPy))."""
    kw = dict(activations=activations, loss=loss)
    batch = (x, y)
    ref = jax.jit(jax.value_and_grad(partial(fbp.objective, **kw)))

    ours_jit = jax.jit(partial(fbp.value_and_grad, **kw))
    impls = {
        "ours": (
            lambda: _ready(fbp.value_and_grad(params, batch, **kw)),
            lambda: fbp.value_and_grad(params, batch, **kw),
        ),
        "ours, jitted": (lambda: _ready(ours_jit(params, batch)), lambda: ours_jit(params, batch)),
        "jax.value_and_grad": (lambda: _ready(ref(params, batch)), lambda: ref(params, batch)),
    }
    if with_numpy:
        np_params = jax.tree.map(np.asarray, params)
        np_x, np_y = np.asarray(x), np.asarray(y)
        run = partial(numpy_mlp.value_and_grad, np_params, np_x, np_y, **kw)
        impls["numpy"] = (run, run)
    if with_torch and torch_mlp.available():
        want_cuda = jax.default_backend() == "gpu"
        step, _ = torch_mlp.make_step(
            jax.tree.map(np.asarray, params), np.asarray(x), np.asarray(y),
            want_cuda=want_cuda, threads=torch_threads, **kw,
        )

        def torch_result(step=step):
            J, grads = step()
            return float(J.detach()), torch_mlp.to_params(grads)

        impls["torch"] = (step, torch_result)
    return impls


def max_leaf_error(result, reference) -> float:
    """Largest per-leaf max|a - b| / max|b| over the loss and every grad leaf."""
    (J, grads), (J_ref, grads_ref) = result, reference
    pairs = [(J, J_ref)] + list(zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)))
    err = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = np.max(np.abs(b), initial=0.0)
        diff = np.max(np.abs(a - b), initial=0.0)
        err = max(err, diff / scale if scale > 0 else diff)
    return float(err)


_DOT = re.compile(r"= \S+ dot\(")
_ENTRY_INSTR = re.compile(r"^\s+(ROOT )?%\S+ = ", re.M)


def hlo_summary(fn, *args) -> dict:
    """Counts read off the compiled HLO of ``jax.jit(fn)(*args)``.

    dots: dot instructions anywhere (inside fusions too); entry_ops: the
    instructions of the entry computation (fusions count as one); flops,
    bytes: XLA's own cost analysis.
    """
    return compiled_summary(jax.jit(fn).lower(*args).compile())


def compiled_summary(compiled) -> dict:
    """:func:`hlo_summary` of a program already compiled (``jax.jit(f).lower(...).compile()``)."""
    text = compiled.as_text()
    entry = text[text.index("ENTRY"):]
    entry = entry[: entry.index("\n}") if "\n}" in entry else len(entry)]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    return {
        "dots": len(_DOT.findall(text)),
        "entry_ops": len(_ENTRY_INSTR.findall(entry)),
        "flops": float(cost.get("flops", float("nan"))),
        "bytes": float(cost.get("bytes accessed", float("nan"))),
    }


def matmul(n: int):
    """A zero-argument callable: one float32 (n, n) @ (n, n) ``jnp.dot`` under jit.

    Its rate, 2 n^3 FLOPs per call, is the matmul peak the steps are measured
    against; it is timed inside every shape's alternating blocks, so the peak
    and the steps see the same state of the machine.
    """
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return lambda: _ready(dot(a, b))


def first_call_seconds(params, x, y, activations, loss, *, reps: int) -> dict:
    """Median seconds of a first call (trace + compile + run) after clear_caches."""
    kw = dict(activations=activations, loss=loss)
    batch = (x, y)
    out = {"ours": [], "jax.value_and_grad": []}
    for _ in range(reps):
        for name in out:
            jax.clear_caches()
            t0 = time.perf_counter()
            if name == "ours":
                _ready(fbp.value_and_grad(params, batch, **kw))
            else:
                _ready(jax.jit(jax.value_and_grad(partial(fbp.objective, **kw)))(params, batch))
            out[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in out.items()}


def run(shape_names, *, blocks, reps, warmup, min_sample_s, seed=0,
        with_numpy=True, with_torch=True, torch_threads=None, compile_reps=3,
        peak_n=2048, log=print) -> list[dict]:
    """Time every implementation at each shape; one result dict per shape.

    Besides the implementations, each shape's blocks time :data:`AGAIN` (a
    second jit of the reference: the noise floor) and the matmul of the peak.
    """
    rows = []
    for name in shape_names:
        sizes, m = SHAPES[name]
        params, x, y, activations, loss = problem(sizes, m, seed=seed)
        impls = implementations(params, x, y, activations, loss,
                                with_numpy=with_numpy, with_torch=with_torch,
                                torch_threads=torch_threads)
        reference = impls["jax.value_and_grad"][1]()
        errors = {k: max_leaf_error(result(), reference) for k, (_, result) in impls.items()}
        steps = {k: step for k, (step, _) in impls.items()}
        again = jax.jit(jax.value_and_grad(partial(fbp.objective, activations=activations,
                                                   loss=loss)))
        steps[AGAIN] = lambda: _ready(again(params, (x, y)))
        steps["matmul peak"] = matmul(peak_n)
        log(f"[grad-step] {name} {sizes}/{m}: timing {', '.join(steps)}")
        timings = timing.compare(
            steps,
            warmup=warmup, blocks=blocks, reps=reps, min_sample_s=min_sample_s, seed=seed,
        )
        kw = dict(activations=activations, loss=loss)
        hlo = {
            "ours": hlo_summary(lambda p, b: fbp.value_and_grad(p, b, **kw), params, (x, y)),
            "jax.value_and_grad": hlo_summary(
                jax.value_and_grad(partial(fbp.objective, **kw)), params, (x, y)),
        }
        first = first_call_seconds(params, x, y, activations, loss, reps=compile_reps)
        rows.append({
            "shape": name, "sizes": sizes, "m": m, "loss": loss,
            "flops": step_flops(sizes, m), "peak_n": peak_n,
            "timings": timings, "errors": errors, "hlo": hlo, "first_call": first,
        })
    return rows
