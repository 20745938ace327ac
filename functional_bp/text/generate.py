"""Autoregressive sampling from a network of tokens to logits, as nanoGPT's ``model.generate``.

Each step feeds the last ``block_size`` tokens to the network, takes the
logits at the last position, divides them by the temperature, keeps the
``top_k`` largest (the rest set to -inf, as nanoGPT does), and draws the next
token from their softmax; the token is appended and the step repeats.

The window has a fixed shape, so there is one compilation for any number of
tokens and any prompt length: the context is held left-aligned in a buffer of
block_size tokens, positions 0 .. n - 1 (n = min(tokens so far, block_size),
nanoGPT's ``idx[:, -block_size:]``), the positions after n padded with token 0.
The network must be causal (its output at position t depends on positions
<= t only, as a GPT with causal attention is), so the padding never reaches
the logits at position n - 1; a network with non-causal attention is refused.
Once the buffer is full it shifts left by one each step.

Step t draws from ``jax.random.fold_in(key, t)``: the same key, prompt and
settings give the same tokens, streamed (:func:`generate_stream`) or not
(:func:`generate`). ``temperature=0`` is greedy decoding (the argmax; no key
needed).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> net = fl.Sequential(fl.Embedding(5, 8), fl.Dense(5))     # a stand-in: tokens to logits
    >>> params = net.init(jax.random.key(0), (4,))
    >>> out = generate(params, [1, 2], network=net, steps=6, key=jax.random.key(1), block_size=4)
    >>> out.shape, out[:2].tolist()
    ((8,), [1, 2])
    >>> bool((out == generate(params, [1, 2], network=net, steps=6, key=jax.random.key(1),
    ...                      block_size=4)).all())
    True
"""

from __future__ import annotations

from functools import partial
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def _leaves(network):
    return list(network.leaves()) if hasattr(network, "leaves") else [network]


def window_length(network, block_size=None) -> int:
    """The window: ``block_size`` if given, else the network's positional table's max_length."""
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
                or block_size < 1:
            raise ValueError(f"block_size must be a positive integer; got {block_size!r}")
        tables = [leaf.max_length for leaf in _leaves(network)
                  if getattr(leaf, "max_length", None) is not None]
        if tables and block_size > min(tables):
            raise ValueError(f"block_size={block_size} is longer than the network's positional "
                             f"table (max_length {min(tables)}); use at most {min(tables)}")
        return int(block_size)
    tables = [leaf.max_length for leaf in _leaves(network)
              if getattr(leaf, "max_length", None) is not None]
    if not tables:
        raise ValueError("generate: the network has no positional table to take the window "
                         "from; give block_size= (the context length it was trained on)")
    return int(min(tables))


def _vocab_size(network):
    for leaf in _leaves(network):
        if getattr(leaf, "vocab_size", None) is not None:
            return int(leaf.vocab_size)
    return None


@partial(jax.jit, static_argnames=("network", "top_k", "greedy"))
def _step(params, buf, n, key, t, temperature, network, top_k, greedy):
    """Next token of every row from window ``buf`` (m, W) holding n tokens; the updated window."""
    logits, _ = network.forward(params, buf)                          # (m, W, V)
    last = jax.lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)   # (m, V)
    if greedy:
        tok = jnp.argmax(last, axis=-1)
    else:
        last = last / temperature
        if top_k is not None:
            kth = jax.lax.top_k(last, top_k)[0][:, -1:]                 # k-th largest per row
            last = jnp.where(last < kth, -jnp.inf, last)
        tok = jax.random.categorical(jax.random.fold_in(key, t), last, axis=-1)
    tok = tok.astype(buf.dtype)
    W = buf.shape[1]
    full = n == W
    buf = jnp.where(full, jnp.roll(buf, -1, axis=1), buf)              # drop the oldest
    buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, jnp.where(full, W - 1, n)))
    return buf, jnp.minimum(n + 1, W), tok


def _prepare(params, prompt_tokens, network, steps, key, temperature, top_k, block_size):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy); got "
                         f"{temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
    if key is None and temperature > 0:
        raise ValueError("generate: sampling needs key= (a jax.random key); or temperature=0 "
                         "for greedy decoding")
    for leaf in _leaves(network):
        if getattr(leaf, "causal", True) is False:
            raise ValueError(f"generate: {leaf!r} is not causal; generation needs a causal "
                             "network (each position sees only the ones before it)")
    prompt = np.asarray(prompt_tokens)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] < 1 or prompt.shape[0] < 1 or (
            prompt.size and not np.issubdtype(prompt.dtype, np.integer)):
        raise ValueError(f"prompt_tokens must be integer tokens (T,) or (m, T) with T >= 1; "
                         f"got shape {prompt.shape}, dtype {prompt.dtype}")
    rows = prompt.reshape(-1, prompt.shape[-1]).astype(np.int64)
    W = window_length(network, block_size)
    out_shape = network.output_shape((W,))
    if len(out_shape) != 2:
        raise ValueError(f"generate: the network must map tokens (m, T) to logits (m, T, V); "
                         f"for (m, {W}) it gives (m, {', '.join(map(str, out_shape))})")
    V = _vocab_size(network) or out_shape[-1]
    bad = (rows < 0) | (rows >= V)
    if bad.any():
        raise ValueError(f"prompt_tokens: token {int(rows[bad][0])} is outside the vocabulary "
                         f"of {V} (tokens 0..{V - 1})")
    if top_k is not None:
        top_k = min(int(top_k), out_shape[-1])
    network.check(params, (W,))
    m, T = rows.shape
    n = min(T, W)
    buf = np.zeros((m, W), np.int32)
    buf[:, :n] = rows[:, T - n:]                  # the last W tokens, left-aligned
    return prompt, rows, buf, n, top_k


def generate_stream(params, prompt_tokens, *, network, steps: int, key, temperature=1.0,
                    top_k=None, block_size=None) -> Iterator[jax.Array]:
    """The generated tokens one step at a time: yields (m,) int32 (a scalar for a (T,) prompt).

    The arguments are those of :func:`generate`; the tokens are the same.
    Each token is a device array; turning it into a number waits for it (as
    a command line printing the text as it comes does).
    """
    prompt, rows, buf, n, top_k = _prepare(params, prompt_tokens, network, steps, key,
                                           temperature, top_k, block_size)
    greedy = temperature == 0
    key = jax.random.key(0) if key is None else key
    temp = jnp.asarray(temperature if not greedy else 1.0, jnp.float32)

    def tokens(buf, n):       # checked above, before the first token is asked for
        buf, n = jnp.asarray(buf), jnp.asarray(n, jnp.int32)
        for t in range(steps):
            buf, n, tok = _step(params, buf, n, key, jnp.asarray(t, jnp.int32), temp,
                                network=network, top_k=top_k, greedy=greedy)
            yield tok if prompt.ndim == 2 else tok[0]

    return tokens(buf, n)


def generate(params, prompt_tokens, *, network, steps: int, key, temperature=1.0, top_k=None,
             block_size=None) -> np.ndarray:
    """Sample ``steps`` tokens after ``prompt_tokens``: the prompt and the new tokens together.

    Args:
      params: the network's params.
      prompt_tokens: integer tokens, (T,) or (m, T) for m prompts at once,
        each in [0, V); T >= 1 (longer than the window: its last block_size
        tokens are the context, as in nanoGPT).
      network: a causal network mapping tokens (m, T) to logits (m, T, V), e.g.
        ``functional_bp.models.gpt(...)``; run without dropout.
      steps: how many tokens to generate.
      key: a ``jax.random`` key; step t draws from ``fold_in(key, t)``. Not
        needed for temperature 0.
      temperature: the logits are divided by it before the softmax (nanoGPT's
        ``temperature``); 0 means greedy decoding (the argmax).
      top_k: keep only the k largest logits of each step (nanoGPT's ``top_k``).
      block_size: the window; by default the network's positional table's
        ``max_length`` (required for a network without one).

    Returns:
      int32 tokens: (T + steps,) for a (T,) prompt, (m, T + steps) for (m, T).
    """
    prompt = np.asarray(prompt_tokens)
    new = list(generate_stream(params, prompt_tokens, network=network, steps=steps, key=key,
                               temperature=temperature, top_k=top_k, block_size=block_size))
    axis = prompt.ndim - 1
    tail = (np.stack([np.asarray(t) for t in new], axis=axis) if new
            else np.zeros(prompt.shape[:-1] + (0,), np.int32))
    return np.concatenate([prompt.astype(np.int32), tail.astype(np.int32)], axis=axis)
