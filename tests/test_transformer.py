"""Transformer layers (Attention, PositionalEmbedding, bias-free Dense and LayerNorm,
gelu_tanh) and losses on sequences, against jax.grad.

Hypothesis draws random GPT-like stacks: 1-3 blocks, 1-4 heads of size 1-8,
T from 1 to the block size, vocabularies of 2-20, causal or not, with or
without biases, gelu or gelu_tanh, dropout with a fixed key or none, integer
labels with -1 (unscored) positions or real targets, token inputs (m, T) or
feature inputs (m, T, C). Every parameter leaf, every layer's cotangent and,
for feature inputs, dJ/dX are compared per leaf with ``jax.grad`` of the
plain-JAX objective on the same params and data, in the same dtype: float64
to 1e-10 and float32 to 2e-5 of the leaf's scale (see tests/helpers.py for
why). Per-example norms and clipped gradients are
compared with ``jax.vmap(jax.grad)`` of the one-sequence objective (with a
dropout key: ``jax.jacrev`` of the batch's per-example losses).

Each new backward has a deliberately wrong twin that the same comparison
must reject (see ``WRONG_TWINS``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import functional_bp as fbp
from functional_bp import _validate, models
from functional_bp import layers as fl
from functional_bp.activations import gelu_prime
from functional_bp.losses import example_losses
from functional_bp.network import forward as net_forward
from functional_bp.network import objective_from_arrays
from helpers import profile_share, rtol_for, tree_errors
from network_strategies import _every_so_often_clear, zero_offsets

# --- a case: a network, its params, a batch --------------------------------------------


@dataclasses.dataclass(repr=False)
class Case:
    net: fl.Sequential
    params: list
    x: np.ndarray
    y: np.ndarray
    loss: str
    dtype: object
    dropout_seed: int | None
    recipe: str

    @property
    def key(self):
        return None if self.dropout_seed is None else jax.random.key(self.dropout_seed)

    @property
    def tokens(self):
        return self.net.integer_input

    def __repr__(self):
        return self.recipe


def stack(*, vocab, block, n_layer, heads, head_size, causal=True, bias=True, act="gelu",
          dropout=0.0, tokens=True, attention=fl.Attention, positional=fl.PositionalEmbedding):
    """A GPT (nanoGPT's layout) with the options nanoGPT lacks: causal, the activation, feature inputs."""
    C = heads * head_size
    blocks = []
    for _ in range(n_layer):
        blocks += [fl.Residual(fl.LayerNorm(bias=bias), fl.Dense(3 * C, bias=bias),
                               attention(heads, causal=causal), fl.Dense(C, bias=bias),
                               fl.Dropout(dropout)),
                   fl.Residual(fl.LayerNorm(bias=bias), fl.Dense(4 * C, bias=bias),
                               fl.Activation(act), fl.Dense(C, bias=bias), fl.Dropout(dropout))]
    first = [fl.Embedding(vocab, C)] if tokens else []
    return fl.Sequential(*first, positional(block), fl.Dropout(dropout), *blocks,
                         fl.LayerNorm(bias=bias), fl.Dense(vocab, bias=False))


def make_case(*, vocab=5, block=4, n_layer=1, heads=2, head_size=2, T=3, m=2, causal=True,
              bias=True, act="gelu", dropout=0.0, tokens=True, targets="labels", unscored=0.3,
              dtype=jnp.float32, seed=0, dropout_seed=None, attention=fl.Attention,
              positional=fl.PositionalEmbedding):
    """A deterministic case from its description (the @example form of a drawn case)."""
    recipe = (f"make_case(vocab={vocab}, block={block}, n_layer={n_layer}, heads={heads}, "
              f"head_size={head_size}, T={T}, m={m}, causal={causal}, bias={bias}, act={act!r}, "
              f"dropout={dropout}, tokens={tokens}, targets={targets!r}, unscored={unscored}, "
              f"dtype=jnp.{jnp.dtype(dtype).name}, seed={seed}, dropout_seed={dropout_seed})")
    net = stack(vocab=vocab, block=block, n_layer=n_layer, heads=heads, head_size=head_size,
                causal=causal, bias=bias, act=act, dropout=dropout, tokens=tokens,
                attention=attention, positional=positional)
    rng = np.random.default_rng(seed)
    C = heads * head_size
    with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
        params = net.init(jax.random.key(seed), (T,) if tokens else (T, C), dtype)

        def fill(path, v):  # biases and scales away from 0 and 1, so a dropped term shows
            name = getattr(path[-1], "key", None)
            if name in ("b", "bias"):
                return v + jnp.asarray(0.1 * rng.standard_normal(v.shape), dtype)
            if name == "scale":
                return v + jnp.asarray(0.3 * rng.standard_normal(v.shape), dtype)
            return v
        params = jax.tree_util.tree_map_with_path(fill, params)
    x = (rng.integers(0, vocab, (m, T)).astype(np.int32) if tokens
         else rng.standard_normal((m, T, C)).astype(jnp.dtype(dtype)))
    if targets == "labels":
        y = rng.integers(0, vocab, (m, T)).astype(np.int32)
        y[rng.random((m, T)) < unscored] = -1
        loss = "softmax_cross_entropy"
    else:
        y = rng.standard_normal((m, T, vocab)).astype(jnp.dtype(dtype))
        loss = "mse"
    return Case(net, params, x, y, loss, dtype, dropout_seed, recipe)


@st.composite
def cases(draw, dtype):
    block = draw(st.integers(1, 6), label="block")
    targets = draw(st.sampled_from(["labels", "labels", "reals"]), label="targets")
    dropout = draw(st.sampled_from([0.0, 0.0, 0.25]), label="dropout")
    heads = draw(st.integers(1, 4), label="heads")
    # C = heads * head_size >= 3: LayerNorm over 2 features outputs +-1 whatever the input,
    # so its input gradient is 0 and both sides would compare rounding noise.
    head_size = draw(st.integers(-(-3 // heads), 8), label="head_size")
    return make_case(
        vocab=draw(st.integers(2, 20), label="vocab"), block=block,
        n_layer=draw(st.integers(1, 3), label="n_layer"), heads=heads, head_size=head_size,
        T=draw(st.integers(1, block), label="T"), m=draw(st.integers(1, 4), label="m"),
        causal=draw(st.booleans(), label="causal"), bias=draw(st.booleans(), label="bias"),
        act=draw(st.sampled_from(["gelu", "gelu_tanh"]), label="act"), dropout=dropout,
        tokens=draw(st.booleans(), label="tokens"), targets=targets,
        unscored=draw(st.sampled_from([0.0, 0.3, 1.0]), label="unscored"), dtype=dtype,
        seed=draw(st.integers(0, 2**16), label="seed"),
        dropout_seed=draw(st.integers(0, 2**16), label="dropout_seed") if dropout else None)


# --- the references: jax.grad of the plain-JAX objective --------------------------------

def reference(case):
    """(J, grads, cotangents, dJ/dX) by jax.grad of the plain-JAX objective, in the case's dtype."""
    with jax.enable_x64(jnp.dtype(case.dtype) == jnp.float64):
        loss, x, y = _prepared(case)
        params = case.params
        offsets = zero_offsets(case.net, x.shape[1:], x.shape[0], x.dtype if not case.tokens
                                else case.dtype)[0]
        argnums = (0, 2) if case.tokens else (0, 1, 2)

        def J(params, x, offsets):
            return objective_from_arrays(case.net, params, x, y, 0.0, loss, case.key, offsets)

        value, grads = jax.value_and_grad(J, argnums=argnums)(params, x, offsets)
        if case.tokens:
            return value, grads[0], grads[1], None
        return value, grads[0], grads[2], grads[1]


def per_example_reference(case, key):
    """Each example's own gradient (no 1/m), leaves (m, ...), dropout masks from ``key``."""
    with jax.enable_x64(jnp.dtype(case.dtype) == jnp.float64):
        loss, x, y = _prepared(case)
        params = case.params
        if key is None:
            def L_i(params, x_i, y_i):
                out, _ = net_forward(case.net, params, x_i[None])
                return example_losses(loss, out, y_i[None])[0]
            return jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(params, x, y)

        def losses(params):  # the masks are drawn for the whole batch's shape
            out, _ = net_forward(case.net, params, x, key)
            return example_losses(loss, out, y)
        return jax.jacrev(losses)(params)


def _prepared(case):
    _, _, loss, x, y = _validate.prepare_model(case.params, (case.x, case.y), case.net, case.loss)
    return loss, x, y


def check(errs, rtol, what):
    bad = {k: v for k, v in errs.items() if not v <= rtol}
    assert not bad, f"{what}: leaves over rtol={rtol:g}: " + ", ".join(
        f"{k}: {v:.3g}" for k, v in sorted(bad.items()))


def compare_backprop(case):
    """Loss, every grad leaf, every cotangent and dJ/dX against :func:`reference`, per leaf."""
    _every_so_often_clear()
    rtol = rtol_for(case.dtype)
    ours = fbp.backprop(case.params, (case.x, case.y), network=case.net, loss=case.loss,
                        key=case.key)
    J, grads, cots, dx = reference(case)
    errs = tree_errors(ours.loss, J, "loss")
    errs.update(tree_errors(ours.grads, grads, "grads"))
    errs.update(tree_errors(ours.deltas, cots, "cotangents"))
    if dx is not None:
        errs.update(tree_errors(ours.input_grad, dx, "input_grad"))
    check(errs, rtol, "backprop")
    _report(case, ours.grads, grads, "grad")
    _report(case, ours.deltas, cots, "cotangent")
    return errs


def _report(case, ours, ref, what):
    """With $FBP_TRANSFORMER_REPORT set, append each leaf's error and its layer's type.

    ``what``: "grad" (a parameter leaf of the layer) or "cotangent" (dJ/dY at
    the layer's output; for the Dense before an Attention, its cotangent is
    Attention's dJ/dX).

    ``FBP_TRANSFORMER_REPORT=/tmp/t.tsv pytest tests/test_transformer.py`` then
    gives the worst error per layer type and dtype (the closing notes' table).
    """
    import os

    path = os.environ.get("FBP_TRANSFORMER_REPORT")
    if not path:
        return
    rows = []
    for (keys, o), r in zip(jax.tree_util.tree_flatten_with_path(ours)[0],
                            jax.tree_util.tree_leaves(ref)):
        layer = case.net
        for k in (keys[:-1] if what == "grad" else keys):  # list indices down to the layer
            layer = layer.layers[k.idx]
        rows.append(f"{jnp.dtype(case.dtype).name}\t{what}\t{type(layer).__name__}\t"
                    f"{tree_errors(o, r)['']:.3e}\n")
    with open(path, "a") as f:
        f.writelines(rows)


def _norms(per_example):
    leaves = [np.asarray(t, np.float64) for t in jax.tree_util.tree_leaves(per_example)]
    m = leaves[0].shape[0]
    return np.sqrt(sum(np.sum(t.reshape(m, -1) ** 2, axis=1) for t in leaves))


def compare_per_example(case):
    """Per-example norms and the clipped gradient against vmap(grad) (or jacrev), per leaf."""
    rtol = rtol_for(case.dtype)
    kw = dict(network=case.net, loss=case.loss, key=case.key)
    g = per_example_reference(case, case.key)
    norms = _norms(g)
    errs = tree_errors(fbp.per_example_grad_norms(case.params, (case.x, case.y), **kw), norms,
                       "norms")
    check(errs, rtol, "per_example_grad_norms")
    if case.key is not None:  # clipped_grad draws its masks from fold_in(key, 1)
        g = per_example_reference(case, jax.random.fold_in(case.key, 1))
        norms = _norms(g)
    m = norms.shape[0]
    C = float(np.median(norms)) or 1.0
    with np.errstate(divide="ignore"):
        c = np.minimum(1.0, C / norms)
    want = jax.tree.map(lambda t: np.tensordot(c, np.asarray(t, np.float64), axes=1) / m, g)
    got = fbp.clipped_grad(case.params, (case.x, case.y), clip_norm=C, **kw)
    clip_errs = tree_errors(got, want, "clipped_grad")
    check(clip_errs, rtol, "clipped_grad")
    errs.update(clip_errs)
    return errs


# --- the properties ---------------------------------------------------------------------

@settings(max_examples=profile_share(4))
@given(case=cases(jnp.float32))
@example(case=make_case(T=1, heads=1, head_size=3, vocab=2, m=1))   # T 1, one head, batch 1
@example(case=make_case(heads=3, head_size=1, T=4, block=4))      # head size 1
@example(case=make_case(tokens=False, targets="reals", bias=False, causal=False))
def test_backprop_float32(case):
    compare_backprop(case)


@settings(max_examples=profile_share(8))
@given(case=cases(jnp.float64))
def test_backprop_float64(case):
    with jax.enable_x64(True):
        compare_backprop(case)


@settings(max_examples=profile_share(8))
@given(case=cases(jnp.float32))
@example(case=make_case(m=3, T=4, unscored=0.5, dropout=0.25, dropout_seed=3))
def test_per_example_float32(case):
    compare_per_example(case)


@settings(max_examples=profile_share(10))
@given(case=cases(jnp.float64))
def test_per_example_float64(case):
    with jax.enable_x64(True):
        compare_per_example(case)


# --- wrong twins: each a plausible mistake in one new backward, caught by the same check ---

class _NoMaskInBackward(fl.Attention):
    """Recomputes P in the backward from Q and K, forgetting the causal mask."""

    def backward(self, params, cache, dy):
        x, P = cache
        q, k, _ = map(self._heads, jnp.split(x, 3, axis=-1))
        S = jnp.einsum("mthd,mshd->mhts", q, k) / math.sqrt(q.shape[-1])
        return super().backward(params, (x, jax.nn.softmax(S, axis=-1)), dy)


class _NoRowSum(fl.Attention):
    """The softmax backward as dS = P ⊙ dP (the row-sum term dropped)."""

    def backward(self, params, cache, dy):
        x, P = cache
        q, k, v = map(self._heads, jnp.split(x, 3, axis=-1))
        dO = self._heads(dy)
        m, T, H, d = q.shape
        dV = jnp.einsum("mhts,mthd->mshd", P, dO)
        dS = P * jnp.einsum("mthd,mshd->mhts", dO, v)
        dQ = jnp.einsum("mhts,mshd->mthd", dS, k) / math.sqrt(d)
        dK = jnp.einsum("mhts,mthd->mshd", dS, q) / math.sqrt(d)
        return {}, jnp.concatenate([t.reshape(m, T, H * d) for t in (dQ, dK, dV)], axis=-1)


class _NoScaleInDK(fl.Attention):
    """dK without its 1/sqrt(d)."""

    def backward(self, params, cache, dy):
        _, dx = super().backward(params, cache, dy)
        C = dx.shape[-1] // 3
        d = C // self.num_heads
        return {}, dx.at[..., C:2 * C].multiply(math.sqrt(d))


class _InterleavedHeads(fl.Attention):
    """The backward reads head h from columns h, h + H, h + 2H, ... (interleaved, not contiguous)."""

    def _heads(self, t):
        m, T, C = t.shape
        return t.reshape(m, T, C // self.num_heads, self.num_heads).swapaxes(2, 3)

    def forward(self, params, x, key=None):  # the forward stays right
        return fl.Attention.forward(fl.Attention(self.num_heads, self.causal), params, x, key)

    def backward(self, params, cache, dy):
        _, dx = super().backward(params, cache, dy)
        return {}, dx


class _PositionsNotSummed(fl.PositionalEmbedding):
    """dW[:T] from the mean over examples instead of the sum."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {"W": grads["W"] / dy.shape[0]}, dx


_GELU_TANH_WRONG = fbp.Activation("gelu_tanh (exact gelu's derivative)",
                                  fbp.ACTIVATIONS["gelu_tanh"].g, gelu_prime)

WRONG_TWINS = {
    "causal mask forgotten in the backward": dict(attention=_NoMaskInBackward, causal=True),
    "softmax backward without its row sum": dict(attention=_NoRowSum),
    "1/sqrt(d) missing from dK": dict(attention=_NoScaleInDK, head_size=4),
    "heads interleaved instead of contiguous": dict(attention=_InterleavedHeads, heads=2,
                                                    head_size=3),
    "positional gradient not summed over examples": dict(positional=_PositionsNotSummed),
    "gelu_tanh with the exact GELU's derivative": dict(act=_GELU_TANH_WRONG),
}


@pytest.mark.parametrize("name", sorted(WRONG_TWINS))
def test_wrong_twins_are_caught(name):
    case = make_case(**{**dict(m=3, T=4, block=4, heads=2, head_size=2, unscored=0.0,
                               tokens=False, seed=1), **WRONG_TWINS[name]})
    with pytest.raises(AssertionError, match="leaves over rtol"):
        compare_backprop(case)


# --- the loss on sequences, by its definition ----------------------------------------

def test_sequence_loss_is_the_mean_over_scored_positions():
    """J = (1/m) sum_i (mean over example i's scored positions of -log softmax(a)[label])."""
    rng = np.random.default_rng(0)
    m, T, V = 3, 5, 4
    a = rng.standard_normal((m, T, V))
    labels = rng.integers(0, V, (m, T))
    labels[0, [1, 3]] = -1
    labels[2, :] = -1                      # no scored position: L_2 = 0
    net = fl.Sequential(fl.Dense(V))
    with jax.enable_x64(True):
        params = [{"W": jnp.eye(V, dtype=jnp.float64), "b": jnp.zeros(V, jnp.float64)}]
        J = fbp.objective(params, (jnp.asarray(a), labels), network=net,
                          loss="softmax_cross_entropy")
    logp = a - np.log(np.sum(np.exp(a), axis=-1, keepdims=True))
    per_example = []
    for i in range(m):
        scored = [t for t in range(T) if labels[i, t] >= 0]
        per_example.append(np.mean([-logp[i, t, labels[i, t]] for t in scored]) if scored else 0.0)
    assert abs(float(J) - np.mean(per_example)) <= 1e-12 * abs(np.mean(per_example))
    # with every example scored at the same positions it is PyTorch's flattened mean
    full = rng.integers(0, V, (m, T))
    with jax.enable_x64(True):
        J = fbp.objective(params, (jnp.asarray(a), full), network=net,
                          loss="softmax_cross_entropy")
    flat = -logp.reshape(-1, V)[np.arange(m * T), full.reshape(-1)]
    assert abs(float(J) - flat.mean()) <= 1e-12 * flat.mean()


def test_large_scores_float32_no_overflow_and_masked_entries_exactly_zero():
    att = fl.Attention(2, causal=True)
    x = 1e3 * jax.random.normal(jax.random.key(0), (2, 6, 12), jnp.float32)  # scores ~1e5
    y, (xc, P) = att.forward({}, x)
    _, dx = att.backward({}, (xc, P), jnp.ones_like(y))
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(dx)))
    future = ~np.tril(np.ones((6, 6), bool))
    assert np.all(np.asarray(P)[:, :, future] == 0)
    # dS at the masked entries is exactly 0: the backward through P alone
    dP = jnp.ones_like(P)
    dS = P * (dP - jnp.sum(dP * P, axis=-1, keepdims=True))
    assert np.all(np.asarray(dS)[:, :, future] == 0)


def test_clear_errors_for_bad_transformer_inputs():
    net = models.gpt(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8)
    params = net.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"T=6 positions.*max_length=4"):
        fbp.value_and_grad(params, (jnp.zeros((2, 6), jnp.int32), jnp.zeros((2, 6), jnp.int32)),
                           network=net, loss="softmax_cross_entropy")
    bad = fl.Sequential(fl.Dense(9), fl.Attention(2))   # C = 3: not a multiple of 2 heads
    with pytest.raises(ValueError, match=r"num_heads=2.*width 9"):
        bad.init(jax.random.key(0), (4, 3))
    with pytest.raises(ValueError, match=r"n_embd=10 must be a multiple of n_head=4"):
        models.gpt(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match=r"labels y must have shape \(2, 4\)"):
        fbp.value_and_grad(params, (jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 3), jnp.int32)),
                           network=net, loss="softmax_cross_entropy")


def test_gpt_layout_and_init_are_nanogpts():
    n_layer, C, V = 2, 16, 11
    net = models.gpt(vocab_size=V, block_size=8, n_layer=n_layer, n_head=4, n_embd=C, bias=False)
    params = net.init(jax.random.key(0), (8,))
    shapes = [jax.tree.map(jnp.shape, p) for p in params]
    assert shapes[0] == {"W": (V, C)} and shapes[1] == {"W": (8, C)}
    assert shapes[3] == [{"scale": (C,)}, {"W": (C, 3 * C)}, {}, {"W": (C, C)}, {}]
    assert shapes[4] == [{"scale": (C,)}, {"W": (C, 4 * C)}, {}, {"W": (4 * C, C)}, {}]
    assert shapes[-2] == {"scale": (C,)} and shapes[-1] == {"W": (C, V)}
    big = models.gpt(vocab_size=64, block_size=64, n_layer=n_layer, n_head=4, n_embd=256)
    p = big.init(jax.random.key(1), (64,))
    std = lambda w: float(jnp.std(w))  # noqa: E731
    assert abs(std(p[0]["W"]) - 0.02) < 0.002 and abs(std(p[1]["W"]) - 0.02) < 0.002
    assert abs(std(p[3][1]["W"]) - 0.02) < 0.002                      # c_attn
    assert abs(std(p[3][3]["W"]) - 0.02 / math.sqrt(2 * n_layer)) < 0.002   # attn c_proj
    assert abs(std(p[4][3]["W"]) - 0.02 / math.sqrt(2 * n_layer)) < 0.002   # mlp c_proj
    assert float(jnp.max(jnp.abs(p[3][1]["b"]))) == 0.0


def test_gpt_network_survives_a_checkpoint_config():
    net = models.gpt(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=0.1,
                     bias=False, activation="gelu_tanh")
    assert fl.from_config(fl.to_config(net)) == net


def test_text_form_writes_an_attention_block():
    text = ("embedding 11 8, posemb 6, res(layernorm bias=false, dense 24 bias=false, "
            "attention 2 causal=false, dense 8), res(layernorm, dense 32, gelu_tanh, dense 8), "
            "layernorm, dense 11 bias=false")
    want = fl.Sequential(
        fl.Embedding(11, 8), fl.PositionalEmbedding(6),
        fl.Residual(fl.LayerNorm(bias=False), fl.Dense(24, bias=False),
                    fl.Attention(2, causal=False), fl.Dense(8)),
        fl.Residual(fl.LayerNorm(), fl.Dense(32), fl.Activation("gelu_tanh"), fl.Dense(8)),
        fl.LayerNorm(), fl.Dense(11, bias=False))
    assert models.build(text) == want
    assert models.build("gpt n_layer=2 n_head=2 n_embd=8 block_size=6", 11) == models.gpt(
        vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)


def test_cli_check_runs_the_gradient_check_on_a_gpt(capsys):
    from functional_bp.cli import main

    code = main(["check", "--model", "gpt n_layer=1 n_head=2 n_embd=8 dropout=0.1",
                 "--input-shape", "6", "--outputs", "5", "--batch", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "layer 1 W" in out and "(5, 8)" in out   # the embedding's table
    assert "dropout on" in out


@pytest.mark.parametrize("make, match", [
    (lambda: fl.Dense(3, bias="no"), r"Dense\(bias\): True or False"),
    (lambda: fl.LayerNorm(bias=0), r"LayerNorm\(bias\): True or False"),
    (lambda: fl.Attention(2, causal="yes"), r"Attention\(causal\): True or False"),
    (lambda: fl.Attention(0), r"Attention\(num_heads\): a positive integer"),
    (lambda: fl.PositionalEmbedding(4, scale=float("nan")), r"PositionalEmbedding\(scale\)"),
    (lambda: fl.PositionalEmbedding(4, scale=-1.0), r"PositionalEmbedding\(scale\)"),
    (lambda: fl.PositionalEmbedding(0), r"PositionalEmbedding\(max_length\)"),
])
def test_transformer_layer_options_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_options_become_python_values():
    att = fl.Attention(np.int64(2), causal=np.bool_(False))
    assert type(att.num_heads) is int and att.causal is False
    assert fl.from_config(fl.to_config(fl.Sequential(att))) == fl.Sequential(fl.Attention(2, False))


class _PositionNormOfTheSum(fl.PositionalEmbedding):
    """Each example's norm from the batch's summed cotangent instead of its own rows."""

    def sq_norms(self, params, cache, dy):
        total = jnp.sum(dy, axis=0, keepdims=True)
        return jnp.broadcast_to(jnp.sum(total * total), dy.shape[:1])


def test_wrong_positional_norm_is_caught():
    """The per-example comparison rejects a PositionalEmbedding norm that mixes the examples."""
    case = make_case(m=3, T=4, block=4, heads=2, head_size=2, unscored=0.0, tokens=False,
                     seed=2, positional=_PositionNormOfTheSum)
    with pytest.raises(AssertionError, match="leaves over rtol"):
        compare_per_example(case)
