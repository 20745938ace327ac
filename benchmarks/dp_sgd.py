"""DP-SGD clipping from the deltas against jax.vmap(jax.grad) plus clipping.

Implementations, on the same params and batch (float32, default shape
[784, 1024, 1024, 10], batch 256, relu/relu/identity, softmax cross-entropy):

- ``clipped_grad``: ``functional_bp.clipped_grad``, the public call: one
  forward, one backward with each example's weight 1, norms from
  ||a_i||^2 ||delta_i||^2, then dW = A^T (c/m ⊙ G);
- ``vmap(grad) + clip``: ``jax.jit`` of ``jax.vmap(jax.grad(L_i))`` of the
  plain single-example objective, the global norm of each example's full
  gradient, ``min(1, C/||g_i||)``, and the mean of the clipped gradients;
- ``per_example_grad_norms`` against ``vmap(grad) norms`` (the same vmap,
  then only the norms).

Before timing, the results of each pair are compared per leaf (max |ours -
ref| / max |ref|). Times are medians over randomised alternating blocks after
warm-up (:mod:`timing`); one sample is the mean of back-to-back calls lasting
at least ``min_sample_s`` (0.5 s), as in a training loop. Before each switch
of implementation the run pauses ``settle_s`` and makes one untimed call (see
:func:`compare_settled`). The CPU is shared: the script prints the load
average before and after, and the times of ours roughly double when another
process keeps one of the two cores busy. Memory is what XLA's compiled program reports
(``jax.jit(f).lower(...).compile().memory_analysis()``): the temporary buffers
it allocates on top of its arguments and outputs. That is deterministic and
needs no subprocesses; the vmap route's temporaries are dominated by the m
per-example gradients (m x number of parameters x 4 bytes).

Run::

    python benchmarks/dp_sgd.py            # prints a table
    python benchmarks/dp_sgd.py --blocks 3 # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timing  # noqa: E402

import functional_bp as fbp  # noqa: E402
from functional_bp import _validate  # noqa: E402
from functional_bp.mlp import objective_from_arrays  # noqa: E402

SIZES = [784, 1024, 1024, 10]
M = 256
CLIP_NORM = 1.0
TARGET_SPEEDUP = 100.0


def problem(sizes=SIZES, m=M, *, seed=0):
    """params, batch and configuration for one benchmark shape (float32)."""
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = fbp.init_mlp(kp, sizes)
    x = jax.random.normal(kx, (m, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (m,), 0, sizes[-1])
    kw = dict(activations=("relu",) * (len(sizes) - 2) + ("identity",),
              loss="softmax_cross_entropy")
    return params, (x, y), kw


def vmap_route(params, batch, *, activations, loss, clip_norm):
    """jitted (clipped mean, norms) by jax.vmap(jax.grad) of the plain objective."""
    acts, loss_obj, x, y = _validate.prepare(params, batch, activations, loss)

    def L_i(params, x_i, y_i):
        return objective_from_arrays(params, x_i[None, :], y_i[None, :], 0.0, acts,
                                     loss_obj)

    def per_example(params, x, y):
        return jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(params, x, y)

    def norms(params, x, y):
        g = per_example(params, x, y)
        return jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)
                            for v in jax.tree_util.tree_leaves(g)))

    def clipped(params, x, y):
        g = per_example(params, x, y)
        n = jnp.sqrt(sum(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)
                         for v in jax.tree_util.tree_leaves(g)))
        c = jnp.minimum(1.0, clip_norm / n)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(c, v, axes=1) / x.shape[0], g)

    return jax.jit(clipped), jax.jit(norms), (params, x, y), (acts, loss_obj)


def temp_mib(jitted, *args, **kwargs) -> float:
    """Temporary buffer size (MiB) of the compiled program, from XLA."""
    ma = jitted.lower(*args, **kwargs).compile().memory_analysis()
    return ma.temp_size_in_bytes / 2**20 if ma is not None else float("nan")


def _max_rel_error(ours, ref) -> float:
    errs = []
    for o, r in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        o, r = np.asarray(o, np.float64), np.asarray(r, np.float64)
        scale = np.max(np.abs(r))
        errs.append(np.max(np.abs(o - r)) / scale if scale > 0 else np.max(np.abs(o)))
    return float(max(errs))


def compare_settled(impls, *, warmup, blocks, reps, min_sample_s, seed, settle_s):
    """:func:`timing.compare` with a settling pause and one untimed call per switch.

    The vmap route frees gigabytes at the end of every call, and the kernel
    work of that (unmapping, then zeroing fresh pages for the next
    allocation) lands on whatever runs next. So each time the order switches
    to an implementation, wait ``settle_s`` and make one untimed call first;
    the samples that follow are timed as in :func:`timing.compare`. (In one
    process on the 2-core CPU, the ten or so calls of ours right after one
    vmap call took about 43 ms each against 27 ms before it.)
    """
    return timing.compare(impls, warmup=warmup, blocks=blocks, reps=reps,
                          min_sample_s=min_sample_s, seed=seed, settle_s=settle_s)


def _ready(fn):
    return lambda: jax.block_until_ready(fn())


def run(sizes=SIZES, m=M, *, clip_norm=CLIP_NORM, blocks=5, reps=1, warmup=2,
        min_sample_s=0.5, settle_s=1.0, seed=0, log=print) -> list[dict]:
    """Time and size both routes; one row per (quantity, implementation).

    Returns:
      rows with keys ``quantity`` ("clipped gradient" or "per-example norms"),
      ``impl``, ``median_s``, ``iqr_s``, ``speedup`` (the vmap route's time over
      ours, paired by block; 1.0 for the vmap row), ``temp_mib``,
      ``max_rel_error`` (against the vmap route), ``sizes``, ``m``.
    """
    params, batch, kw = problem(sizes, m, seed=seed)
    clipped_ref, norms_ref, args, (acts, loss_obj) = vmap_route(
        params, batch, clip_norm=clip_norm, **kw)
    ours_clip = partial(fbp.clipped_grad, params, batch, clip_norm=clip_norm, **kw)
    ours_norms = partial(fbp.per_example_grad_norms, params, batch, **kw)

    # Memory of the compiled programs (ours: the public calls traced into one program).
    mem = {
        "clipped_grad": temp_mib(jax.jit(lambda p, x, y: fbp.clipped_grad(
            p, (x, y), clip_norm=clip_norm, **kw)), *args),
        "vmap(grad) + clip": temp_mib(clipped_ref, *args),
        "per_example_grad_norms": temp_mib(jax.jit(lambda p, x, y: fbp.per_example_grad_norms(
            p, (x, y), **kw)), *args),
        "vmap(grad) norms": temp_mib(norms_ref, *args),
    }
    impls = {
        "clipped_grad": _ready(ours_clip),
        "vmap(grad) + clip": _ready(lambda: clipped_ref(*args)),
        "per_example_grad_norms": _ready(ours_norms),
        "vmap(grad) norms": _ready(lambda: norms_ref(*args)),
    }
    err = {
        "clipped_grad": _max_rel_error(ours_clip(), clipped_ref(*args)),
        "per_example_grad_norms": _max_rel_error(ours_norms(), norms_ref(*args)),
    }
    log(f"dp-sgd: max rel. errors against the vmap route {err}; timing ...")
    t = compare_settled(impls, warmup=warmup, blocks=blocks, reps=reps,
                        min_sample_s=min_sample_s, seed=seed, settle_s=settle_s)
    rows = []
    for quantity, ours, ref in [("clipped gradient", "clipped_grad", "vmap(grad) + clip"),
                                ("per-example norms", "per_example_grad_norms",
                                 "vmap(grad) norms")]:
        for name in (ours, ref):
            rows.append({
                "quantity": quantity, "impl": name, "median_s": t[name].median,
                "iqr_s": t[name].iqr,
                "speedup": timing.paired_ratio(t[ref], t[name]),
                "temp_mib": mem[name], "max_rel_error": err.get(name, 0.0),
                "sizes": list(sizes), "m": m,
            })
    return rows


def format_table(rows) -> str:
    head = f"{'quantity':<18} {'implementation':<24} {'median':>10} {'speedup':>9} " \
           f"{'temp memory':>12} {'rel. error':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['quantity']:<18} {r['impl']:<24} {r['median_s'] * 1e3:>8.1f}ms "
            f"{r['speedup']:>8.3g}x {r['temp_mib']:>8.1f} MiB {r['max_rel_error']:>10.1e}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--m", type=int, default=M)
    ap.add_argument("--clip-norm", type=float, default=CLIP_NORM)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-sample-s", type=float, default=0.5)
    ap.add_argument("--settle-s", type=float, default=1.0)
    a = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(a.sizes, a.m, clip_norm=a.clip_norm, blocks=a.blocks, reps=a.reps,
               warmup=a.warmup, min_sample_s=a.min_sample_s,
               settle_s=a.settle_s)
    print(f"{jax.default_backend()}, {jax.device_count()} device(s), float32, "
          f"sizes {a.sizes}, batch {a.m}, clip_norm {a.clip_norm}")
    print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(format_table(rows))
    speedup = rows[0]["speedup"]
    print(f"clipped_grad is {speedup:.3g}x faster than vmap(grad) + clip "
          f"(target >= {TARGET_SPEEDUP:.0f}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
