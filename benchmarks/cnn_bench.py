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
- ``clipped_grad``: ``fbp.clipped_grad`` (clip norm 1, no noise);
- ``vmap(grad) + clip``: ``jax.vmap(jax.grad)`` of the one-example objective,
  then the norms, the clip factors and the mean.

The notes compare the compiled programs (XLA's optimised HLO): the number of
each kind of heavy operation (convolutions, dots, scatters, gathers,
reduce-windows, select-and-scatters, pads), which is where a gap between two
programs computing the same gradient comes from.

    python benchmarks/cnn_bench.py               # writes the "CNN benchmark" block of RESULTS.md
    python benchmarks/cnn_bench.py --quick --out /tmp/r.md
"""

from __future__ import annotations

import argparse
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


def measure(name, net, input_shape, m, *, clip_norm, timing_kw, log):
    import jax
    import jax.numpy as jnp

    import functional_bp as fbp
    from functional_bp import _validate
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
             "vmap(grad) + clip": (vmap_clip, (params, x, y1))}
    compiled = {k: f.lower(*a).compile() for k, (f, a) in calls.items()}
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
    t = timing.compare(impls, **timing_kw)
    for k, v in t.items():
        log(f"  {k:<20} {report.fmt_time(v.median)}")
    return {"timings": t, "agree": agree,
            "ops": {k: op_counts(c) for k, c in compiled.items()},
            "temp": {k: (c.memory_analysis().temp_size_in_bytes
                         if c.memory_analysis() is not None else float("nan"))
                     for k, c in compiled.items()}}


def render(results, *, command, machine, versions, elapsed):
    rows, notes = [], []
    for name, r in results.items():
        t = r["timings"]
        ratio = timing.paired_ratio(t["value_and_grad"], t["jax.value_and_grad"])
        speedup = timing.paired_ratio(t["vmap(grad) + clip"], t["clipped_grad"])
        private = timing.paired_ratio(t["clipped_grad"], t["value_and_grad"])
        rows.append((name, report.fmt_time(t["value_and_grad"].median),
                     report.fmt_time(t["jax.value_and_grad"].median),
                     f"**{ratio:.2f}** ({'meets' if ratio <= TARGET else 'misses'} "
                     f"<= {TARGET:.2f})",
                     report.fmt_time(t["clipped_grad"].median),
                     report.fmt_time(t["vmap(grad) + clip"].median),
                     f"{speedup:.1f}x", f"{private:.2f}x"))
        ops = r["ops"]
        kinds = [k for k in OPS if any(ops[i][k] for i in ops)]
        notes.append(f"**{name}**: largest relative difference, ours against the reference: "
                     f"value_and_grad {r['agree']['value_and_grad']:.1e}, clipped_grad "
                     f"{r['agree']['clipped_grad']:.1e}. Compiled programs (optimised HLO "
                     "instructions of each kind; temporary memory):")
        notes.append("")
        notes.append(report.table(
            ["program"] + kinds + ["temp memory"],
            [(k, *(ops[k][o] for o in kinds), report.fmt_bytes(r["temp"][k])) for k in ops]))
        notes.append("")
    return "\n".join([
        f"{report.now()}, {elapsed:.0f} s in all. Command:", "",
        f"```\n{command}\n```", "",
        "Float32, jitted calls, times per call (median over alternating blocks); ratio = "
        "ours / jax.jit(jax.value_and_grad(objective)), paired by block; vmap speedup = "
        "the jax.vmap(jax.grad) route's time / clipped_grad's; privacy cost = clipped_grad / "
        "our value_and_grad.", "",
        report.table(["problem", "value_and_grad", "jax.value_and_grad", "ratio",
                      "clipped_grad", "vmap(grad) + clip", "vmap speedup", "privacy cost"],
                     rows), "",
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
    body = f"## {label}\n\n" + render(results, command=command, machine=machine,
                                       versions=report.versions(),
                                       elapsed=time.perf_counter() - t0)
    report.write_block(Path(a.out), label, body)
    print(f"wrote the block {label!r} of {a.out}")
    return results


if __name__ == "__main__":
    main()
