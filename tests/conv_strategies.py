"""Random convolutional and embedding networks, and the checks they go through.

:func:`cnn_cases` draws tiny CNNs, 1-D or 2-D: one to three blocks of a
convolution (1-4 output channels, kernel 1-3 per axis, stride 1-3, dilation
1-2, padding "VALID", "SAME" or explicit (lo, hi) pairs), an optional
activation and an optional max or average pool (window 1-3, stride default or
1-3, padding "VALID", "SAME" or explicit pairs smaller than the window), then
Flatten, an optional hidden Dense layer and a Dense head; inputs of 1-9
positions (1-6 per axis in 2-D) and 1-3 channels, batches of 1-5, any loss.
A drawn convolution or pool that would not fit its input switches to "SAME"
padding (which always fits). :func:`embedding_cases` draws an Embedding on
(m,) or (m, T) indices from a small vocabulary (so indices repeat within an
example), optionally a Dense on (m, T, F), then Flatten and a head.

The references are ``jax.grad`` of the plain-JAX objective
(``functional_bp.network.objective_from_arrays``) with respect to params,
zero offsets at every layer's output and x (not for integer x), and
``jax.vmap(jax.grad)`` of the one-example objective: the functions of
tests/network_strategies.py, shared with the layers engine's tests.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import functional_bp as fbp
from functional_bp.backprop import Backprop
from functional_bp.layers import (  # noqa: F401  (the names a case's recipe uses)
    Activation,
    AvgPool1D,
    AvgPool2D,
    Conv1D,
    Conv2D,
    Dense,
    Embedding,
    Flatten,
    MaxPool1D,
    MaxPool2D,
    Reshape,
    Sequential,
)
from functional_bp.layers.conv import out_sizes, resolve_padding
from functional_bp.network import objective_from_arrays
from helpers import assert_backprop_close, assert_tree_close, rtol_for
from network_strategies import (
    NetCase,
    clipped_mean,
    fill,
    per_example_norms,
    prepared,
    reference_per_example,
    zero_offsets,
)
from strategies import LOSS_NAMES, TARGET_KINDS, make_targets

# Activations between convolutions: smooth ones and relu (whose zeros make ties in max pools).
CONV_ACTIVATIONS = ["relu", "tanh", "sigmoid", "identity", "softplus"]


def make_layer_case(net, input_shape, m, loss, *, l2=0.0, dtype=jnp.float32, seed=0,
                    x_scale=1.0, target_kind=None, vocab=None, x=None):
    """A NetCase for ``net``; integer inputs in [0, vocab) when ``vocab`` is given.

    ``x`` (NumPy), when given, replaces the drawn inputs (ties, say).
    """
    rng = np.random.default_rng(seed)
    input_shape = tuple(input_shape)
    with jax.enable_x64(jnp.dtype(dtype) == jnp.dtype("float64")):
        spec = jax.eval_shape(lambda k: net.init(k, input_shape, dtype), jax.random.key(0))
        n_L = net.output_shape(input_shape)[-1]
        params = jax.tree_util.tree_map(  # kernels N(0, 1 / fan_in): the classic scheme
            lambda s: jnp.asarray(fill(s, rng, "classic"), dtype), spec)
        given = x
        if x is not None:
            x = np.asarray(x)
            x = jnp.asarray(x, jnp.int32 if np.issubdtype(x.dtype, np.integer) else dtype)
        elif vocab is None:
            x = jnp.asarray(x_scale * rng.standard_normal((m, *input_shape)), dtype)
        else:
            x = jnp.asarray(rng.integers(0, vocab, size=(m, *input_shape)), jnp.int32)
        target_kind = target_kind or TARGET_KINDS[loss][0]
        y = make_targets(rng, target_kind, m, n_L, dtype)
    recipe = (f"make_layer_case({net!r}, {input_shape}, {m}, {loss!r}, l2={l2}, "
              f"dtype=jnp.{jnp.dtype(dtype).name}, seed={seed}, x_scale={x_scale}, "
              f"target_kind={target_kind!r}, vocab={vocab}"
              + ("" if given is None else f", x=np.array({np.asarray(given).tolist()})") + ")")
    return NetCase(net, params, x, y, loss, float(l2), dtype, None, target_kind, recipe)


# --- the strategies ------------------------------------------------------------------

def _fits(layer, shape):
    try:
        layer.check_input(shape, "drawn")
    except ValueError:
        return False
    return True


def _out_shape(layer, shape):
    k, s, d = layer._geometry()
    pads = resolve_padding(layer.padding, shape[:-1], k, s, d)
    return (*out_sizes(shape[:-1], k, s, d, pads), getattr(layer, "features", shape[-1]))


def _axis_ints(draw, ndim, lo, hi, label):
    values = tuple(draw(st.integers(lo, hi), label=label) for _ in range(ndim))
    return values[0] if ndim == 1 or draw(st.booleans(), label=label + " as int") and \
        len(set(values)) == 1 else values


def _padding(draw, ndim, below, label):
    kind = draw(st.sampled_from(["VALID", "SAME", "pairs"]), label=label)
    if kind != "pairs":
        return kind
    pairs = tuple((draw(st.integers(0, below), label=label + " lo"),
                   draw(st.integers(0, below), label=label + " hi")) for _ in range(ndim))
    return pairs[0] if ndim == 1 and draw(st.booleans(), label="one pair") else pairs


@st.composite
def cnn_networks(draw, ndim):
    """(network, input_shape): conv blocks with pools, Flatten, a Dense head."""
    sizes = tuple(draw(st.integers(1, 9 if ndim == 1 else 6), label="size") for _ in range(ndim))
    input_shape = shape = (*sizes, draw(st.integers(1, 3), label="c_in"))
    Conv, pools = ((Conv1D, (MaxPool1D, AvgPool1D)) if ndim == 1
                   else (Conv2D, (MaxPool2D, AvgPool2D)))
    layers = []
    for _ in range(draw(st.integers(1, 3 if ndim == 1 else 2), label="blocks")):
        k = _axis_ints(draw, ndim, 1, 3, "kernel")
        conv = Conv(draw(st.integers(1, 4), label="features"), k,
                    stride=_axis_ints(draw, ndim, 1, 3, "stride"),
                    padding=_padding(draw, ndim, 2, "padding"),
                    dilation=_axis_ints(draw, ndim, 1, 2, "dilation"))
        if not _fits(conv, shape):
            conv = Conv(conv.features, k, conv.stride, "SAME", conv.dilation)
        layers.append(conv)
        shape = _out_shape(conv, shape)
        if draw(st.booleans(), label="activation"):
            layers.append(Activation(draw(st.sampled_from(CONV_ACTIVATIONS), label="g")))
        if draw(st.booleans(), label="pool"):
            window = _axis_ints(draw, ndim, 1, 3, "window")
            stride = (None if draw(st.booleans(), label="default stride")
                      else _axis_ints(draw, ndim, 1, 3, "pool stride"))
            below = (min(window) if isinstance(window, tuple) else window) - 1
            pool = draw(st.sampled_from(pools), label="pool type")(
                window, stride, _padding(draw, ndim, below, "pool padding"))
            if not _fits(pool, shape):
                pool = type(pool)(window, stride, "SAME")
            layers.append(pool)
            shape = _out_shape(pool, shape)
    layers.append(Flatten())
    if draw(st.booleans(), label="hidden dense"):
        layers += [Dense(draw(st.integers(1, 5), label="hidden")), Activation("tanh")]
    layers.append(Dense(draw(st.integers(1, 4), label="n_L")))
    return Sequential(*layers), input_shape


@st.composite
def _problem(draw):
    """(m, loss, target kind, l2, seed) for a drawn network."""
    loss = draw(st.sampled_from(LOSS_NAMES), label="loss")
    return dict(m=draw(st.integers(1, 5), label="m"), loss=loss,
                target_kind=draw(st.sampled_from(TARGET_KINDS[loss]), label="target_kind"),
                l2=draw(st.sampled_from([0.0, 0.0, 1e-3, 0.5]), label="l2"),
                seed=draw(st.integers(0, 2**31 - 1), label="seed"))


@st.composite
def cnn_cases(draw, ndim, dtype=jnp.float32):
    """A random 1-D (ndim=1) or 2-D CNN, a batch, a loss, targets and l2."""
    net, input_shape = draw(cnn_networks(ndim), label="network")
    p = draw(_problem(), label="problem")
    return make_layer_case(net, input_shape, p.pop("m"), p.pop("loss"), dtype=dtype, **p)


@st.composite
def embedding_cases(draw, dtype=jnp.float32):
    """An Embedding on (m,) or (m, T) indices of a small vocabulary, then a head."""
    vocab = draw(st.integers(1, 6), label="vocab")
    input_shape = draw(st.sampled_from([(), (1,), (2,), (3,), (5,)]), label="input shape")
    layers = [Embedding(vocab, draw(st.integers(1, 4), label="features"))]
    if draw(st.booleans(), label="dense on positions"):
        layers += [Dense(draw(st.integers(1, 4), label="width")), Activation("tanh")]
    if input_shape:
        layers.append(Flatten())
    layers.append(Dense(draw(st.integers(1, 4), label="n_L")))
    p = draw(_problem(), label="problem")
    return make_layer_case(Sequential(*layers), input_shape, p.pop("m"), p.pop("loss"),
                           dtype=dtype, vocab=vocab, **p)


# --- the references and the checks -------------------------------------------------------

def reference_backprop(case) -> Backprop:
    """Loss, grads, every layer's cotangent, and dJ/dX for float x, all by jax.grad of J."""
    loss, x, y = prepared(case)
    offsets = zero_offsets(case.net, x.shape[1:], x.shape[0], x.dtype
                           if jnp.issubdtype(x.dtype, jnp.floating) else y.dtype)[0]
    return _reference(case.params, x, y, offsets, case.l2, net=case.net, loss=loss)


@partial(jax.jit, static_argnames=("net", "loss"))
def _reference(params, x, y, offsets, l2, *, net, loss):
    def J(params, x, offsets):
        return objective_from_arrays(net, params, x, y, l2, loss, None, offsets)

    if not jnp.issubdtype(x.dtype, jnp.floating):  # indices: no dJ/dX
        value, (g, go) = jax.value_and_grad(J, argnums=(0, 2))(params, x, offsets)
        return Backprop(loss=value, grads=g, deltas=go, input_grad=None)
    value, (g, gx, go) = jax.value_and_grad(J, argnums=(0, 1, 2))(params, x, offsets)
    return Backprop(loss=value, grads=g, deltas=go, input_grad=gx)


def check_backprop(case, network=None):
    """Loss, every grad leaf, every layer's cotangent and dJ/dX against jax.grad.

    ``network`` (same params structure) replaces the case's network on our
    side only: a deliberately wrong layer must fail this comparison.
    """
    kw = case.kwargs()
    if network is not None:
        kw["network"] = network
    ours = fbp.backprop(case.params, case.batch, **kw)
    return assert_backprop_close(ours, reference_backprop(case), rtol_for(case.dtype))


def check_per_example(case, network=None, with_grads=True):
    """Per-example grads, norms and the clipped gradient against jax.vmap(jax.grad).

    ``with_grads`` False: the norms and the clipped gradient only (what a
    change of per-example norm rule can change).
    """
    rtol = rtol_for(case.dtype)
    kw = case.kwargs(with_l2=False)
    if network is not None:
        kw["network"] = network
    ref = reference_per_example(case)
    errs = {}
    if with_grads:
        errs.update(assert_tree_close(fbp.per_example_grads(case.params, case.batch, **kw), ref,
                                      rtol, "per_example_grads"))
    ref_norms = per_example_norms(ref)
    errs.update(assert_tree_close(fbp.per_example_grad_norms(case.params, case.batch, **kw),
                                  ref_norms, rtol, "norms"))
    clip_norm = float(np.median(ref_norms)) or 1.0  # about half the examples are clipped
    got = fbp.clipped_grad(case.params, case.batch, clip_norm=clip_norm, **kw)
    errs.update(assert_tree_close(got, clipped_mean(ref, clip_norm), rtol, "clipped_grad"))
    return errs


def _forced(base, form):
    """``base`` (a convolution class) whose per-example norm takes ``form`` whatever the shapes."""
    return dataclasses.dataclass(frozen=True)(type(
        f"{form.title().replace('_', '')}{base.__name__}", (base,),
        {"norm_form": lambda self, input_shape: form}))


# Convolutions whose per-example norm takes one form whatever the shapes, so that every
# drawn CNN proves every form (the shapes alone would pick one per layer).
FORCED = {form: {base: _forced(base, form) for base in (Conv1D, Conv2D)}
          for form in ("gram", "input_gram", "direct")}


def with_norm_form(net, form):
    """``net`` (a flat Sequential) with every convolution's per-example norm in ``form``."""
    def swap(layer):
        cls = FORCED[form].get(type(layer))
        return layer if cls is None else cls(**{f.name: getattr(layer, f.name)
                                               for f in dataclasses.fields(layer)})
    return Sequential(*map(swap, net.layers))


def check_norm_forms(case):
    """The norms and the clipped gradient with every convolution in each form in turn."""
    with jax.enable_x64(jnp.dtype(case.dtype) == jnp.float64):
        for form in FORCED:
            check_per_example(case, network=with_norm_form(case.net, form), with_grads=False)


def check(case):
    """Both comparisons, backprop and per-example, in the case's dtype."""
    with jax.enable_x64(jnp.dtype(case.dtype) == jnp.float64):
        check_backprop(case)
        check_per_example(case)
