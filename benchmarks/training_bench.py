"""Training throughput on digits: fused epochs, a Python loop, scikit-learn.

The same problem for all three: scikit-learn's 8x8 digits (the library's
``load_dataset("digits")`` split), a [64, 128, 10] network, relu then
identity logits, softmax cross-entropy, Adam with learning rate 1e-3, batch
32, 50 epochs, no weight decay, the same initial params:

- ``fused``: ``functional_bp.train.fit``, one jitted ``lax.scan`` per epoch
  (metrics on the training set recorded after each epoch, as ``fit`` does);
- ``python loop``: the same shuffles (``train.batch_plan``), one jitted step
  per minibatch (gather, ``functional_bp.value_and_grad``, Adam) called from
  a Python ``for``;
- ``sklearn``: ``MLPClassifier`` of ``benchmarks/sklearn_reference.py``.

Two times per implementation: end to end (the first run in a fresh process
state, after ``jax.clear_caches()``: tracing and compilation included) and
steady state (the median of ``reps`` further runs). Test accuracy is that of
the trained network on the held-out split.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import functional_bp as fbp
from functional_bp.datasets import load_dataset
from functional_bp import train

from report import fmt_time, table

SIZES = [64, 128, 10]
ACTIVATIONS = ("relu", "identity")
LOSS = "softmax_cross_entropy"
BATCH = 32
LEARNING_RATE = 1e-3


def _accuracy(params, data):
    return train.evaluate(params, (data.x_test, data.y_test), activations=ACTIVATIONS,
                          loss=LOSS)["accuracy"]


def fused(data, *, epochs, seed):
    """``params -> trained params`` with ``train.fit``.

    The optimizer is made once: it is a static argument of the compiled epoch,
    so a new optimizer object means a new compilation.
    """
    opt = train.make_optimizer("adam", LEARNING_RATE)
    train_set = (data.x_train, data.y_train)

    def run(params):
        state = train.init_state(params, optimizer=opt, key=jax.random.key(seed))
        state, _ = train.fit(state, train_set, activations=ACTIVATIONS, loss=LOSS,
                             optimizer=opt, epochs=epochs, batch_size=BATCH)
        return jax.block_until_ready(state.params)

    return run


def python_loop(data, *, epochs, seed):
    """``params -> trained params``: the same epochs, one jitted step per minibatch."""
    opt = train.make_optimizer("adam", LEARNING_RATE)
    x = jnp.asarray(data.x_train)
    y = jax.nn.one_hot(jnp.asarray(data.y_train), SIZES[-1], dtype=jnp.float32)
    m = x.shape[0]
    kw = dict(activations=ACTIVATIONS, loss=LOSS)

    @jax.jit
    def step(params, opt_state, x, y, rows):
        J, G = fbp.value_and_grad(params, (x[rows], y[rows]), **kw)
        updates, opt_state = opt.update(G, opt_state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

    def run(params):
        opt_state = opt.init(params)
        base = jax.random.key(seed)
        for epoch in range(epochs):
            idx, _ = train.batch_plan(jax.random.fold_in(base, epoch), m, BATCH)
            perm = idx.reshape(-1)[:m]  # the real rows, in the epoch's order
            for start in range(0, m, BATCH):
                params, opt_state = step(params, opt_state, x, y, perm[start:start + BATCH])
        return jax.block_until_ready(params)

    return run


def _time_runs(fn, reps, *, fresh):
    """(end-to-end seconds, steady-state median seconds, last result)."""
    if fresh:
        jax.clear_caches()
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), result


def run(*, epochs=50, reps=3, seed=0, log=print) -> dict:
    data = load_dataset("digits", seed=seed)
    params = fbp.init_mlp(jax.random.key(seed), SIZES)
    rows = {}
    for name, make in (("fused", fused), ("python loop", python_loop)):
        log(f"[training] digits {SIZES}, batch {BATCH}, {epochs} epochs: {name}")
        program = make(data, epochs=epochs, seed=seed)
        first, steady, trained = _time_runs(lambda: program(params), reps, fresh=True)
        rows[name] = {"end_to_end": first, "steady": steady,
                      "test_accuracy": _accuracy(trained, data)}
    try:
        import sklearn_reference
    except ImportError:
        sklearn_reference = None
    if sklearn_reference is not None:
        log(f"[training] digits: scikit-learn MLPClassifier, {epochs} epochs")
        rows["sklearn"] = sklearn_row(sklearn_reference, data, epochs=epochs, reps=reps,
                                      seed=seed)
    return {"epochs": epochs, "reps": reps, "m_train": int(data.x_train.shape[0]),
            "m_test": int(data.x_test.shape[0]), "rows": rows}


def sklearn_row(sklearn_reference, data, *, epochs, reps, seed) -> dict:
    """Time scikit-learn's MLPClassifier on the same split (see sklearn_reference)."""
    def fit():
        return sklearn_reference.fit_mlp_classifier(
            data.x_train, data.y_train, hidden=SIZES[1], batch_size=BATCH, epochs=epochs,
            learning_rate=LEARNING_RATE, seed=seed)

    first, steady, clf = _time_runs(fit, reps, fresh=False)
    return {"end_to_end": first, "steady": steady,
            "test_accuracy": float(clf.score(data.x_test, data.y_test))}


def render(res, *, target) -> tuple[str, list]:
    rows = res["rows"]
    out = [f"### Training on digits: [64, 128, 10], relu, Adam 1e-3, batch {BATCH}, "
           f"{res['epochs']} epochs\n",
           f"{res['m_train']} training and {res['m_test']} test images. End to end: the first "
           f"run (compilation included); steady state: the median of {res['reps']} more runs.\n"]
    fused_t = rows["fused"]["steady"]
    out.append(table(
        ["implementation", "end to end", "steady state", "steady / fused", "test accuracy"],
        [[name, fmt_time(r["end_to_end"]), fmt_time(r["steady"]),
          f"{r['steady'] / fused_t:.1f}×", f"{r['test_accuracy']:.4f}"]
         for name, r in rows.items()],
    ))
    targets = []
    if "sklearn" in rows:
        sk, fu = rows["sklearn"], rows["fused"]
        speed = sk["steady"] / fu["steady"]
        ok = speed >= target and fu["test_accuracy"] >= sk["test_accuracy"]
        targets.append((f"fused training ≥ {target:g}× faster than MLPClassifier in steady "
                        "state, at equal or better test accuracy",
                        f"{speed:.1f}×, accuracy {fu['test_accuracy']:.4f} vs "
                        f"{sk['test_accuracy']:.4f}", ok))
    return "\n".join(out), targets
