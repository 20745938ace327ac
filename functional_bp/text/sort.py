"""minGPT's sorting demo (``demo.ipynb``): learn to sort 6 digits from {0, 1, 2}, made locally.

One problem is 6 digits; the sequence the model reads is the digits followed
by their sorted order but for its last digit (11 tokens), and the targets are
that sequence shifted by one, with -1 (not scored) where the model is still
reading the input::

    digits  0 0 2 1 0 1     sorted  0 0 0 1 1 2
    x       0 0 2 1 0 1 0 0 0 1 1
    y      -1 -1 -1 -1 -1 0 0 0 1 1 2

All 3^6 = 729 problems are split once and for all, as minGPT does, by a hash
of the problem: a problem is in the test part when its hash is 0 modulo 4
(about a quarter). minGPT hashes with Python's ``hash()``, which changes from
process to process; here the hash is SHA-256 of the digits' bytes (its first 8
bytes, big-endian), so the split is the same everywhere: 545 training and 184
test problems. (With 3 digits, minGPT's re-sampling of problems with more than
3 distinct digits never applies, so its training draws are uniform over the
training problems.)

The test accuracy is minGPT's: the fraction of test problems whose 6 greedily
decoded outputs (argmax, each fed back in) are all right (:func:`sort_accuracy`).

Example::

    >>> x_train, y_train, x_test, y_test = sort_problems()
    >>> x_train.shape, x_test.shape
    ((545, 11), (184, 11))
    >>> x_train[0].tolist(), y_train[0].tolist()
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [-1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0])
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

SORT_LENGTH = 6
"""Digits per problem (minGPT's ``length``)."""
SORT_DIGITS = 3
"""The digits are 0 .. SORT_DIGITS - 1 (minGPT's ``num_digits``): the vocabulary size."""


def is_test_problem(digits) -> bool:
    """Whether a problem (a sequence of digits) is in the test part: SHA-256 hash mod 4 == 0.

    Example::

        >>> is_test_problem([0, 0, 2, 1, 0, 1]), is_test_problem((0, 0, 2, 1, 0, 1))
        (False, False)
    """
    h = int.from_bytes(hashlib.sha256(bytes(int(d) for d in digits)).digest()[:8], "big")
    return h % 4 == 0


def sort_sequences(digits) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` for problems ``digits`` (m, length): x (m, 2 length - 1), y the same with -1s.

    x is the digits then their sorted order without its last digit; y is
    x shifted by one (the sorted digits at the last ``length`` positions) with
    the first ``length - 1`` targets -1.

    Example::

        >>> x, y = sort_sequences(np.array([[0, 0, 2, 1, 0, 1]]))
        >>> x.tolist(), y.tolist()
        ([[0, 0, 2, 1, 0, 1, 0, 0, 0, 1, 1]], [[-1, -1, -1, -1, -1, 0, 0, 0, 1, 1, 2]])
    """
    digits = np.asarray(digits, dtype=np.int32)
    if digits.ndim != 2 or digits.shape[1] < 1:
        raise ValueError(f"digits must be (m, length) with length >= 1; got shape {digits.shape}")
    length = digits.shape[1]
    cat = np.concatenate([digits, np.sort(digits, axis=1)], axis=1)
    x, y = cat[:, :-1].copy(), cat[:, 1:].copy()
    y[:, :length - 1] = -1
    return x, y


def sort_problems(length: int = SORT_LENGTH, num_digits: int = SORT_DIGITS):
    """Every problem, split by :func:`is_test_problem`: ``(x_train, y_train, x_test, y_test)``.

    The num_digits ** length problems in lexicographic order; x (m, 2 length - 1)
    int32 tokens, y the same shape, int32, -1 where not scored.
    """
    for name, v in (("length", length), ("num_digits", num_digits)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"sort task: {name} must be a positive integer; got {v!r}")
    if num_digits > 256:
        raise ValueError(f"sort task: num_digits must be at most 256; got {num_digits}")
    problems = np.array(list(itertools.product(range(num_digits), repeat=length)),
                        dtype=np.int32)
    test = np.array([is_test_problem(p) for p in problems])
    x, y = sort_sequences(problems)
    return x[~test], y[~test], x[test], y[test]


def sort_accuracy(forward, params, x, y, *, length: int = SORT_LENGTH) -> float:
    """minGPT's score: the fraction of problems whose greedily decoded outputs are all right.

    The first ``length`` tokens of each row of x are the problem; the model
    then appends ``length`` tokens one at a time, each the argmax of its
    logits at the last position, fed back in (minGPT's
    ``generate(inp, n, do_sample=False)``); a problem counts when all
    ``length`` match the last ``length`` targets of y.

    Args:
      forward: ``forward(params, tokens) -> logits``, tokens (m, T) int32,
        logits (m, T, V); the model in evaluation mode (no dropout).
      params: passed to ``forward``.
      x, y: (m, 2 length - 1) as from :func:`sort_problems`.

    Returns:
      The fraction in [0, 1].

    Example::

        >>> import jax.numpy as jnp
        >>> x, y, xt, yt = sort_problems()
        >>> def oracle(params, tokens):     # puts the next sorted digit's logit up
        ...     n = tokens.shape[1] - SORT_LENGTH
        ...     nxt = jnp.sort(tokens[:, :SORT_LENGTH], axis=1)[:, n]
        ...     return jnp.eye(3)[nxt][:, None, :].repeat(tokens.shape[1], axis=1)
        >>> sort_accuracy(oracle, None, xt, yt)
        1.0
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape != y.shape or x.shape[1] < 2 * length - 1:
        raise ValueError(f"sort_accuracy: x and y must both be (m, {2 * length - 1}); got "
                         f"{x.shape} and {y.shape}")
    tokens = x[:, :length].astype(np.int32)
    for _ in range(length):
        logits = forward(params, tokens)
        if getattr(logits, "ndim", 0) != 3 or tuple(logits.shape[:2]) != tokens.shape:
            raise ValueError(
                f"sort_accuracy: forward must map tokens {tokens.shape} to logits "
                f"({tokens.shape[0]}, {tokens.shape[1]}, V); got "
                f"{getattr(logits, 'shape', type(logits).__name__)}")
        nxt = np.asarray(np.argmax(logits[:, -1, :], axis=-1), dtype=np.int32)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    correct = np.all(tokens[:, length:] == y[:, -length:], axis=1)
    return float(np.mean(correct))
