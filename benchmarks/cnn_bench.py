"""CNNs: our hand-derived backward against jax.value_and_grad, and the clipped gradient.

Two problems, float32:

- ``mnist1d-cnn``: :func:`functional_bp.models.cnn` (three Conv1D of 25
  channels, the MNIST-1D paper's network) on (100, 40) signals, its training
  batch;
- ``2d-cnn``: Conv2D(32, 3, SAME), ReLU, MaxPool2D(2), Conv2D(64, 3, SAME),
  ReLU, MaxPool2D(2), Conv2D(64, 3, SAME), ReLU, Flatten, Dense(10) on
  (128, 28, 28, 1) images.

Timed (benchmarks/timing.py: warm-up, randomised alternating blocks, medians,
paired ratios), each a jitted call on arrays already on the device:

- ``value_and_grad``: ``fbp.value_and_grad(..., network=)`` (ours);
- ``jax.value_and_grad``: ``jax.jit(jax.value_and_grad(fbp.objective))``
  (target: ours / this <= 1.10);
- ``clipped_grad``: ``fbp.clipped_grad`` (clip norm 1, no noise; target:
  clipped_grad / our value_and_grad <= 1.30);
- ``clipped_grad + noise``: the same with noise multiplier 1 (the private
  step's gradient);
- ``vmap(grad) + clip``: ``jax.vmap(jax.grad)`` of the one-example objective,
  then the norms, the clip factors and the mean;
- ``noise: jax.random.normal``: one Gaussian per parameter, drawn as the
  private step draws them (``per_example.gaussian_noise``, jitted), against
  ``noise: NumPy`` (the same number of float32 normals from
  ``numpy.random.Generator.standard_normal``, the floor on this machine), in
  the same alternating blocks; the private step's own cost of the noise is
  ``clipped_grad + noise`` less ``clipped_grad`` (target: at most the NumPy
  floor);
- ``norm: layer i``: each convolution's per-example squared norm alone
  (``layer.sq_norms`` on arrays of its cache's and cotangent's shapes), with
  the form it chose (:meth:`norm_form`: direct, gram or input_gram) and the
  three forms' multiply-adds per example: where the clipped gradient's
  extra time goes, layer by layer.

The notes compare the compiled programs (XLA's optimised HLO): the number of
each kind of heavy operation (convolutions, dots, scatters, gathers,
reduce-windows, select-and-scatters, pads), and XLA's flop and byte counts
(``cost_analysis``), which is where a gap between two programs computing the
same gradient comes from.

    python benchmarks/cnn_bench.py               # writes the "CNN benchmark" block of RESULTS.md
    python benchmarks/cnn_bench.py --quick --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import timing  # noqa: E402

TARGET = 1.10
PRIVATE_TARGET = 1.30  # clipped_grad / our value_and_grad
OPS = ("convolution", "dot", "scatter", "gather", "reduce-window", "select-and-scatter",
       "pad", "slice", "fusion")


def problems():
    from functional_bp import layers as fl
    from functional_bp import models

    cnn2d = fl.Sequential(
        fl.Conv2D(32, 3, padding="SAME"), fl.Activation("relu"), fl.MaxPool2D(2),
        fl.Conv2D(64, 3, padding="SAME"), fl.Activation("relu"), fl.MaxPool2D(2),
        fl.Conv2D(64, 3, padding="SAME"), fl.Activation("relu"), fl.Flatten(), fl.Dense(10))
    return {"mnist1d-cnn": (models.cnn(10), (40,), 100), "2d-cnn": (cnn2d, (28, 28, 1), 128)}


def op_counts(compiled) -> Counter:
    """How many instructions of each heavy kind the optimised HLO holds."""
    text = compiled.as_text()
    counts = Counter()
    for op in OPS:
        counts[op] = len(re.findall(rf"= \S+ {re.escape(op)}\(", text))
    return counts


def conv_norms(net, input_shape, m):
    """{label: (jitted sq_norms, args, form, costs)} for each convolution of a flat network."""
    import jax
    import jax.numpy as jnp

    from functional_bp.layers.base import abstract_init
    from functional_bp.layers.conv import Conv1D, Conv2D

    out, shape = {}, tuple(input_shape)
    keys = iter(jax.random.split(jax.random.key(1), 3 * len(net.layers)))
    for i, layer in enumerate(net.layers):
        _, out_shape = abstract_init(layer, shape)
        if isinstance(layer, (Conv1D, Conv2D)):
            params = layer.init(next(keys), shape)[0]
            x = jax.random.normal(next(keys), (m, *shape), jnp.float32)
            dy = jax.random.normal(next(keys), (m, *out_shape), jnp.float32)
            f = jax.jit(lambda p, x, dy, layer=layer: layer.sq_norms(p, x, dy))
            label = f"norm: layer {i} ({type(layer).__name__})"
            out[label] = (f, (params, x, dy), layer.norm_form(shape), layer.norm_costs(shape),
                          shape)
        shape = tuple(out_shape)
    return out


def measure(name, net, input_shape, m, *, clip_norm, timing_kw, log):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import functional_bp as fbp
    from functional_bp import _validate, per_example
    from functional_bp.network import objective_from_arrays

    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = net.init(kp, input_shape)
    x = jax.random.normal(kx, (m, *input_shape), jnp.float32)
    y = jax.random.randint(ky, (m,), 0, 10)
    kw = dict(network=net, loss="softmax_cross_entropy")
    _, _, loss, _, y1 = _validate.prepare_model(params, (x, y), net, kw["loss"])

    ours_vg = jax.jit(lambda p, x, y: fbp.value_and_grad(p, (x, y), **kw))
    ref_vg = jax.jit(jax.value_and_grad(lambda p, x, y: fbp.objective(p, (x, y), **kw)))
    ours_clip = jax.jit(lambda p, x, y: fbp.clipped_grad(p, (x, y), clip_norm=clip_norm, **kw))
    ours_noisy = jax.jit(lambda p, x, y, k: fbp.clipped_grad(p, (x, y), clip_norm=clip_norm,
                                                            noise_multiplier=1.0, key=k, **kw))
    leaves = jax.tree_util.tree_leaves(params)
    n_params = sum(v.size for v in leaves)

    jax_noise = jax.jit(lambda key: per_example.gaussian_noise(key, params, 1.0))  # the step's draw

    rng = np.random.default_rng(0)

    def L_i(p, x_i, y_i):
        return objective_from_arrays(net, p, x_i[None], y_i[None], 0.0, loss)

    @jax.jit
    def vmap_clip(p, x, y1):
        g = jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(p, x, y1)
        n = jnp.sqrt(sum(jnp.sum(v.reshape(m, -1) ** 2, axis=1)
                         for v in jax.tree_util.tree_leaves(g)))
        c = jnp.minimum(1.0, clip_norm / n)
        return jax.tree_util.tree_map(lambda v: jnp.tensordot(c, v, axes=1) / m, g)

    calls = {"value_and_grad": (ours_vg, (params, x, y)),
             "jax.value_and_grad": (ref_vg, (params, x, y)),
             "clipped_grad": (ours_clip, (params, x, y)),
             "clipped_grad + noise": (ours_noisy, (params, x, y, jax.random.key(2))),
             "vmap(grad) + clip": (vmap_clip, (params, x, y1))}
    compiled = {k: f.lower(*a).compile() for k, (f, a) in calls.items()}
    norms = conv_norms(net, input_shape, m)
    # agreement first: the same numbers, or the timing means nothing
    agree = {}
    for a_name, b_name in (("value_and_grad", "jax.value_and_grad"),
                           ("clipped_grad", "vmap(grad) + clip")):
        a = jax.tree_util.tree_leaves(calls[a_name][0](*calls[a_name][1]))
        b = jax.tree_util.tree_leaves(calls[b_name][0](*calls[b_name][1]))
        agree[a_name] = max(float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(v)),
                                                                       1e-30))
                            for u, v in zip(a, b))
    log(f"{name}: agreement {agree}")
    impls = {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, a) in calls.items()}
    impls["noise: jax.random.normal"] = lambda: jax.block_until_ready(
        jax_noise(jax.random.key(3)))
    impls["noise: NumPy"] = lambda: rng.standard_normal(n_params, dtype=np.float32)
    for k, (f, a, *_) in norms.items():
        impls[k] = lambda f=f, a=a: jax.block_until_ready(f(*a))
    t = timing.compare(impls, **timing_kw)
    for k, v in t.items():
        log(f"  {k:<28} {report.fmt_time(v.median)}")
    cost = {}
    for k, c in compiled.items():
        ca = c.cost_analysis()
        ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
        cost[k] = (ca.get("flops", float("nan")), ca.get("bytes accessed", float("nan")))
    return {"timings": t, "agree": agree, "n_params": n_params, "cost": cost,
            "norms": {k: v[2:] for k, v in norms.items()},
            "ops": {k: op_counts(c) for k, c in compiled.items()},
            "temp": {k: (c.memory_analysis().temp_size_in_bytes
                         if c.memory_analysis() is not None else float("nan"))
                     for k, c in compiled.items()}}


def render(results, *, command, machine, versions, elapsed):
    rows, noise_rows, notes = [], [], []
    for name, r in results.items():
        t = r["timings"]
        ratio = timing.paired_ratio(t["value_and_grad"], t["jax.value_and_grad"])
        speedup = timing.paired_ratio(t["vmap(grad) + clip"], t["clipped_grad"])
        private = timing.paired_ratio(t["clipped_grad"], t["value_and_grad"])
        noisy = timing.paired_ratio(t["clipped_grad + noise"], t["value_and_grad"])
        rows.append((name, report.fmt_time(t["value_and_grad"].median),
                     report.fmt_time(t["jax.value_and_grad"].median),
                     f"**{ratio:.2f}** ({'meets' if ratio <= TARGET else 'misses'} "
                     f"<= {TARGET:.2f})",
                     report.fmt_time(t["clipped_grad"].median),
                     report.fmt_time(t["vmap(grad) + clip"].median),
                     f"{speedup:.1f}x",
                     f"**{private:.2f}x** ({'meets' if private <= PRIVATE_TARGET else 'misses'} "
                     f"<= {PRIVATE_TARGET:.2f})",
                     f"{noisy:.2f}x"))
        jn, npn = t["noise: jax.random.normal"], t["noise: NumPy"]
        in_step = t["clipped_grad + noise"].median - t["clipped_grad"].median
        noise_rows.append((name, f"{r['n_params']:,}", report.fmt_time(jn.median),
                           report.fmt_time(npn.median), f"{timing.paired_ratio(jn, npn):.2f}",
                           f"{jn.median / t['value_and_grad'].median:.3f}",
                           f"{npn.median / t['value_and_grad'].median:.3f}",
                           f"{in_step * 1e6:+.0f} µs ({'meets' if in_step <= npn.median else 'misses'}"
                           " <= NumPy)"))
        ops = r["ops"]
        kinds = [k for k in OPS if any(ops[i][k] for i in ops)]
        notes.append(f"**{name}**: largest relative difference, ours against the reference: "
                     f"value_and_grad {r['agree']['value_and_grad']:.1e}, clipped_grad "
                     f"{r['agree']['clipped_grad']:.1e}. Compiled programs (optimised HLO "
                     "instructions of each kind; XLA's flop and byte counts; temporary memory):")
        notes.append("")
        notes.append(report.table(
            ["program"] + kinds + ["GFLOP", "MB accessed", "temp memory"],
            [(k, *(ops[k][o] for o in kinds), f"{r['cost'][k][0] / 1e9:.2f}",
              f"{r['cost'][k][1] / 1e6:.0f}", report.fmt_bytes(r["temp"][k])) for k in ops]))
        notes.append("")
        if r["norms"]:
            step = t["value_and_grad"].median
            notes.append(f"**{name}**, each convolution's per-example norm alone (batch of the "
                         "problem; multiply-adds per example of each form; time and share of "
                         "our value_and_grad):")
            notes.append("")
            notes.append(report.table(
                ["layer", "input (per example)", "direct P K c_in c_out",
                 "gram P^2 (K c_in + c_out)", "input_gram S^2 c_in + P^2 (K + c_out)", "form",
                 "time", "/ value_and_grad"],
                [(k.removeprefix("norm: "), str(shape), f"{c['direct']:,}", f"{c['gram']:,}",
                  f"{c['input_gram']:,}", form, report.fmt_time(t[k].median),
                  f"{t[k].median / step:.2f}")
                 for k, (form, c, shape) in r["norms"].items()]))
            notes.append("")
    return "\n".join([
        f"{report.now()}, {elapsed:.0f} s in all. Command:", "",
        f"```\n{command}\n```", "",
        "Float32, jitted calls, times per call (median over alternating blocks); ratio = "
        "ours / jax.jit(jax.value_and_grad(objective)), paired by block; vmap speedup = "
        "the jax.vmap(jax.grad) route's time / clipped_grad's; privacy cost = clipped_grad / "
        "our value_and_grad (no noise; with noise multiplier 1 in the last column).", "",
        report.table(["problem", "value_and_grad", "jax.value_and_grad", "ratio",
                      "clipped_grad", "vmap(grad) + clip", "vmap speedup", "privacy cost",
                      "with noise"],
                     rows), "",
        "The noise: one Gaussian per parameter with jax.random.normal (jitted, "
        "per_example.gaussian_noise, as the private step draws it) against as many float32 "
        "normals from NumPy's Generator.standard_normal, in the same blocks; ratio paired by "
        "block; each also as a fraction of our value_and_grad; the last column is what the "
        "noise adds to the private step (median of clipped_grad + noise less median of "
        "clipped_grad), against the NumPy floor.", "",
        report.table(["problem", "parameters", "jax.random.normal", "NumPy", "ratio",
                      "jax / step", "NumPy / step", "in the step"], noise_rows), "",
        *notes,
        report.kv_table(machine + versions),
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", nargs="+", default=list(problems()),
                   choices=list(problems()))
    p.add_argument("--quick", action="store_true", help="2 blocks, short samples")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--label", default=None)
    a = p.parse_args(argv)
    timing_kw = dict(warmup=2, blocks=2 if a.quick else a.blocks, reps=1 if a.quick else 3,
                     min_sample_s=0.05 if a.quick else 0.3, seed=0)
    machine = report.machine()
    t0 = time.perf_counter()
    results = {}
    for name in a.problems:
        net, shape, m = problems()[name]
        results[name] = measure(name, net, shape, m, clip_norm=1.0, timing_kw=timing_kw,
                                log=print)
    args = list(argv if argv is not None else sys.argv[1:])
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    command = ("python benchmarks/cnn_bench.py " + " ".join(args)).strip()
    label = a.label or f"CNN benchmark: {report.default_label()}"
    machine.append(("load average at end", " ".join(f"{v:.2f}" for v in os.getloadavg())))
    body = f"## {label}\n\n" + render(results, command=command, machine=machine,
                                       versions=report.versions(),
                                       elapsed=time.perf_counter() - t0)
    report.write_block(Path(a.out), label, body)
    print(f"wrote the block {label!r} of {a.out}")
    return results


if __name__ == "__main__":
    main()
