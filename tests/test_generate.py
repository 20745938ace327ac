"""Sampling: generate against nanoGPT's model.generate written out, one compilation, refusals.

The networks here are stand-ins for a GPT (tokens (m, T) to logits (m, T, V)):
an Embedding, a causal mixing layer defined below (each position sees the
positions before it, plus its own index, so the window's placement matters),
and a Dense head, with small integer weights so every logit is an exact
integer in float32 and the reference, which runs the network on the growing
context as nanoGPT does, gives the very same logits.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from functional_bp import layers as fl
from functional_bp.layers import Layer
from functional_bp.text import generate, generate_stream, window_length

V = 7
TRACES = []


@dataclasses.dataclass(frozen=True)
class CausalMix(Layer):
    """Y[:, t] = sum_{s <= t} X[:, s] + t: causal and position-dependent (a test stand-in)."""

    max_length: int = 6

    def forward(self, params, x, key=None):
        TRACES.append(x.shape)                      # runs once per trace
        T = x.shape[1]
        return jnp.cumsum(x, axis=1) + jnp.arange(T, dtype=x.dtype)[None, :, None], None


@dataclasses.dataclass(frozen=True)
class Bidirectional(Layer):
    causal: bool = False

    def forward(self, params, x, key=None):
        return x, None


def integer_network(seed=0, max_length=6):
    net = fl.Sequential(fl.Embedding(V, 3), CausalMix(max_length), fl.Dense(V))
    params = net.init(jax.random.key(seed), (max_length,))
    rng = np.random.default_rng(seed)
    ints = lambda a: jnp.asarray(rng.integers(-3, 4, a.shape), a.dtype)  # noqa: E731
    return net, jax.tree.map(ints, params)


def nanogpt_generate(net, params, idx, steps, key, block_size, temperature=1.0, top_k=None):
    """nanoGPT's GPT.generate, with step t drawing from fold_in(key, t) (0: greedy)."""
    idx = np.asarray(idx, np.int32)
    for t in range(steps):
        idx_cond = idx if idx.shape[1] <= block_size else idx[:, -block_size:]
        logits = net.forward(params, jnp.asarray(idx_cond))[0][:, -1, :]
        if temperature == 0:
            nxt = np.asarray(jnp.argmax(logits, axis=-1))
        else:
            logits = logits / temperature
            if top_k is not None:
                v = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0]
                logits = jnp.where(logits < v[:, [-1]], -jnp.inf, logits)
            nxt = np.asarray(jax.random.categorical(jax.random.fold_in(key, t), logits, axis=-1))
        idx = np.concatenate([idx, nxt[:, None].astype(np.int32)], axis=1)
    return idx


@pytest.mark.parametrize("temperature, top_k", [(0, None), (1.0, None), (0.7, 3), (1.5, 1)])
@pytest.mark.parametrize("prompt_len", [2, 9])          # shorter and longer than the window
def test_generate_is_nanogpts_loop(temperature, top_k, prompt_len):
    net, params = integer_network()
    prompt = np.random.default_rng(prompt_len).integers(0, V, (3, prompt_len))
    key = jax.random.key(11)
    got = generate(params, prompt, network=net, steps=10, key=key, temperature=temperature,
                   top_k=top_k)
    want = nanogpt_generate(net, params, prompt, 10, key, 6, temperature, top_k)
    assert got.shape == (3, prompt_len + 10) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_one_compilation_for_many_tokens_and_prompts():
    net, params = integer_network(max_length=6)
    generate(params, [1, 2], network=net, steps=2, key=jax.random.key(0), temperature=0.9)
    TRACES.clear()
    for prompt, temperature in (([3], 0.9), ([1, 2, 3, 4, 5, 6, 0, 1], 1.3), ([2, 2], 0.5)):
        out = generate(params, prompt, network=net, steps=40, key=jax.random.key(1),
                       temperature=temperature)
        assert out.shape == (len(prompt) + 40,)
    assert TRACES == []                                 # no new trace after the first call
    generate(params, [[1]] * 5, network=net, steps=40, key=jax.random.key(1))
    assert TRACES == [(5, 6, 3)]                        # a new batch size: one new trace


def float_network(seed=0):
    """Small random logits (no ties, no near-certain draws): Embedding then Dense."""
    net = fl.Sequential(fl.Embedding(V, 4, scale=0.3), fl.Dense(V))
    return net, net.init(jax.random.key(seed), (8,))


def test_deterministic_per_key_and_streamed_alike():
    net, params = float_network()
    kw = dict(network=net, steps=30, block_size=8)
    a = generate(params, [1, 2, 3], key=jax.random.key(4), **kw)
    b = generate(params, [1, 2, 3], key=jax.random.key(4), **kw)
    c = generate(params, [1, 2, 3], key=jax.random.key(5), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    streamed = [int(t) for t in generate_stream(params, [1, 2, 3], key=jax.random.key(4), **kw)]
    assert streamed == a[3:].tolist()
    kw["steps"] = 0
    assert generate(params, [1, 2, 3], key=jax.random.key(4), **kw).tolist() == [1, 2, 3]


def test_top_k_keeps_the_k_largest_and_top_1_is_greedy():
    net, params = float_network(seed=3)
    prompt = np.random.default_rng(0).integers(0, V, (50, 2))
    kw = dict(network=net, block_size=8)
    greedy = generate(params, prompt, steps=8, key=None, temperature=0, **kw)
    top1 = generate(params, prompt, steps=8, key=jax.random.key(2), top_k=1, **kw)
    np.testing.assert_array_equal(top1, greedy)
    out = generate(params, prompt, steps=1, key=jax.random.key(2), top_k=2, **kw)
    logits = np.asarray(net.forward(params, jnp.asarray(prompt))[0][:, -1, :])
    kth = np.sort(logits, axis=1)[:, -2]
    assert np.all(logits[np.arange(50), out[:, -1]] >= kth)
    assert np.any(logits[np.arange(50), out[:, -1]] < np.max(logits, axis=1))   # not greedy


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_frequencies_are_the_softmax_of_logits_over_temperature(temperature):
    net = fl.Sequential(fl.Embedding(1, 4), fl.Dense(V))
    params = net.init(jax.random.key(0), (1,))
    m = 20_000
    out = generate(params, np.zeros((m, 1), np.int64), network=net, steps=1,
                   key=jax.random.key(9), temperature=temperature, block_size=1)
    logits = np.asarray(net.forward(params, jnp.zeros((1, 1), jnp.int32))[0][0, 0], np.float64)
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p /= p.sum()
    counts = np.bincount(out[:, -1], minlength=V)
    sigma = np.sqrt(m * p * (1 - p))
    assert np.all(np.abs(counts - m * p) < 5 * sigma + 1), (counts, m * p)
    other = 1.0 / temperature          # the wrong twin: multiplying by the temperature
    q = np.exp(logits / other - np.max(logits / other))
    q /= q.sum()
    assert np.any(np.abs(counts - m * q) >= 5 * np.sqrt(m * q * (1 - q)) + 1)


def test_window_comes_from_the_positional_table():
    net, _ = integer_network(max_length=5)
    assert window_length(net) == 5 and window_length(net, 3) == 3
    with pytest.raises(ValueError, match=r"block_size=6 is longer than the network's "
                                         r"positional table \(max_length 5\)"):
        window_length(net, 6)
    with pytest.raises(ValueError, match="give block_size="):
        window_length(fl.Sequential(fl.Embedding(V, 3), fl.Dense(V)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_tokens=[1, 7]), r"token 7 is outside the vocabulary of 7 \(tokens 0..6\)"),
    (dict(prompt_tokens=[-1]), "token -1 is outside the vocabulary"),
    (dict(prompt_tokens=[]), r"prompt_tokens must be integer tokens \(T,\) or \(m, T\)"),
    (dict(prompt_tokens=[0.5]), "prompt_tokens must be integer tokens"),
    (dict(key=None), "sampling needs key="),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(top_k=0), "top_k must be a positive integer or None"),
    (dict(steps=-2), "steps must be a non-negative integer"),
])
def test_refusals(kwargs, message):
    net, params = integer_network()
    args = dict(prompt_tokens=[1, 2], network=net, steps=3, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(params, **args)


def test_refuses_non_causal_networks_and_wrong_params():
    net = fl.Sequential(fl.Embedding(V, 3), Bidirectional(), fl.Dense(V))
    params = net.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Bidirectional\(causal=False\) is not causal"):
        generate(params, [1], network=net, steps=2, key=jax.random.key(0), block_size=4)
    net, params = integer_network()
    with pytest.raises(ValueError, match="W must have shape"):
        generate([params[0], params[1], {"W": params[2]["W"][:, :3], "b": params[2]["b"]}], [1],
                 network=net, steps=2, key=jax.random.key(0))
    greedy = generate(params, [1], network=net, steps=9, key=None, temperature=0)  # no key
    np.testing.assert_array_equal(greedy, generate(params, [1], network=net, steps=9,
                                                   key=jax.random.key(3), temperature=0))
