"""Test accuracy on digits: scikit-learn's MLPClassifier next to functional_bp, one run.

Both sides get the same stratified 80/20 split (``load_dataset("digits",
seed=s)``, pixels in [0, 1]) and the same budget: one hidden layer of 128
relu units, softmax output, adam with learning rate 1e-3, batch 32, 50 epochs.

- scikit-learn: ``MLPClassifier(hidden_layer_sizes=(128,), activation="relu",
  batch_size=32, max_iter=50, n_iter_no_change=50, random_state=s)`` (its
  defaults otherwise: adam, lr 1e-3, alpha 1e-4, Glorot-uniform init);
  ``n_iter_no_change=50`` makes it run all 50 epochs instead of stopping early.
- functional_bp, same architecture: Glorot init (the same variance as
  scikit-learn's), l2 = alpha / batch = 1e-4 / 32 (scikit-learn divides its
  penalty by the batch size), no feature scaling.
- functional_bp, the defaults of ``functional-bp train`` (features
  standardized, 256 hidden units), for reference.

Run from the repository root::

    python benchmarks/sklearn_reference.py            # seeds 0-4
    python benchmarks/sklearn_reference.py --seeds 0
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import functional_bp as fbp
from functional_bp.cli import TRAIN_DEFAULTS
from functional_bp.datasets import load_dataset, standardize
from functional_bp.train import fit, init_state, make_optimizer

EPOCHS, BATCH, HIDDEN, LR, ALPHA = 50, 32, 128, 1e-3, 1e-4


def sklearn_accuracy(data, seed):
    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="adam",
                        learning_rate_init=LR, alpha=ALPHA, batch_size=BATCH,
                        max_iter=EPOCHS, n_iter_no_change=EPOCHS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(data.x_train, data.y_train)
    return clf.score(data.x_test, data.y_test)


def ours_accuracy(data, seed, *, hidden, scheme, l2, lr, batch_size, epochs):
    k_init, k_shuffle = jax.random.split(jax.random.key(seed))
    sizes = [data.n_features, *hidden, data.n_outputs]
    params = fbp.init_mlp(k_init, sizes, scheme=scheme)
    opt = make_optimizer("adam", lr)
    state = init_state(params, optimizer=opt, key=k_shuffle)
    _, history = fit(state, (data.x_train, data.y_train), (data.x_test, data.y_test),
                     activations=["relu"] * len(hidden) + ["identity"],
                     loss="softmax_cross_entropy", optimizer=opt, epochs=epochs,
                     batch_size=batch_size, l2=l2)
    return history[-1]["test_accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    d = TRAIN_DEFAULTS
    rows = []
    print("| seed | scikit-learn MLPClassifier | functional_bp, same setup | "
          "functional_bp, `functional-bp train` defaults |")
    print("|---|---|---|---|")
    t0 = time.perf_counter()
    for seed in args.seeds:
        data = load_dataset("digits", seed=seed)
        row = (
            sklearn_accuracy(data, seed),
            ours_accuracy(data, seed, hidden=[HIDDEN], scheme="glorot", l2=ALPHA / BATCH,
                          lr=LR, batch_size=BATCH, epochs=EPOCHS),
            ours_accuracy(standardize(data)[0], seed, hidden=d["hidden"], scheme=d["init"],
                          l2=d["l2"], lr=d["lr"], batch_size=d["batch_size"], epochs=EPOCHS),
        )
        rows.append(row)
        print(f"| {seed} | " + " | ".join(f"{a:.2%}" for a in row) + " |", flush=True)
    mean = np.mean(rows, axis=0)
    print("| mean | " + " | ".join(f"{a:.2%}" for a in mean) + " |")
    print(f"\n{len(args.seeds)} seeds, {time.perf_counter() - t0:.0f} s; test sets of "
          f"{len(data.x_test)} images (one image = {1 / len(data.x_test):.2%})")


if __name__ == "__main__":
    main()
