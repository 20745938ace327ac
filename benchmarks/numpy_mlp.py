"""The no-JAX baseline: the same equations, written with NumPy alone.

Row layout, as in the library (examples are rows)::

    Z^l = A^{l-1} W^l + b^l,  A^l = g^l(Z^l),  J = (1/m) sum_i L(a^L_i, y_i)
    G^L = (1/m) dL/da ⊙ g^L'(Z^L)
    G^l = (G^{l+1} W^{l+1,T}) ⊙ g^l'(Z^l)
    dJ/dW^l = A^{l-1,T} G^l,   dJ/db^l = sum of the rows of G^l

Only what the benchmarks use is here: the activations relu, tanh, identity
and the losses quadratic and softmax_cross_entropy (float targets (m, n_L)).
Every array keeps the dtype of the params (float32 in the benchmarks).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> params = [{"W": rng.normal(size=(3, 4)).astype(np.float32),
    ...            "b": np.zeros(4, np.float32)},
    ...           {"W": rng.normal(size=(4, 2)).astype(np.float32),
    ...            "b": np.zeros(2, np.float32)}]
    >>> x = rng.normal(size=(5, 3)).astype(np.float32)
    >>> y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1]]
    >>> J, grads = value_and_grad(params, x, y, activations=("relu", "identity"),
    ...                           loss="softmax_cross_entropy")
    >>> [g["W"].shape for g in grads], grads[0]["W"].dtype
    ([(3, 4), (4, 2)], dtype('float32'))
"""

from __future__ import annotations

import numpy as np


def _relu(z):
    return np.maximum(z, 0)


def _relu_prime(z):
    return (z > 0).astype(z.dtype)


def _tanh_prime(z):
    t = np.tanh(z)
    return 1 - t * t


ACTIVATIONS = {
    # name: (g, g')
    "identity": (lambda z: z, None),  # g' = 1: the product is skipped
    "relu": (_relu, _relu_prime),
    "tanh": (np.tanh, _tanh_prime),
}


def _quadratic(a, y):
    r = a - y
    return 0.5 * np.sum(r * r, axis=1), r


def _softmax_cross_entropy(a, y):
    shifted = a - np.max(a, axis=1, keepdims=True)
    e = np.exp(shifted)
    s = np.sum(e, axis=1, keepdims=True)
    log_p = shifted - np.log(s)
    return -np.sum(y * log_p, axis=1), (e / s) * np.sum(y, axis=1, keepdims=True) - y


LOSSES = {
    # name: (a, y) -> (per-example L (m,), dL/da (m, n_L))
    "quadratic": _quadratic,
    "softmax_cross_entropy": _softmax_cross_entropy,
}


def value_and_grad(params, x, y, *, activations, loss):
    """(J, grads) by the delta recursion, in NumPy; grads shaped like params."""
    zs, As = [], [x]
    for layer, name in zip(params, activations):
        z = As[-1] @ layer["W"] + layer["b"]
        zs.append(z)
        As.append(ACTIVATIONS[name][0](z))
    m = x.shape[0]
    per_example, dL_da = LOSSES[loss](As[-1], y)
    J = per_example.mean()

    grads = [None] * len(params)
    delta = dL_da * x.dtype.type(1 / m)  # G^L before g^L'
    for l in reversed(range(len(params))):
        dg = ACTIVATIONS[activations[l]][1]
        if dg is not None:
            delta = delta * dg(zs[l])
        grads[l] = {"W": As[l].T @ delta, "b": delta.sum(axis=0)}
        if l > 0:
            delta = delta @ params[l]["W"].T  # dJ/dA^{l}, times g' next round
    return J, grads
