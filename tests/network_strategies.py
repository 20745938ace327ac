"""Random networks for the layers engine, and their autodiff references.

A :class:`NetCase` is a complete problem for ``network=``: a
:class:`~functional_bp.layers.Sequential`, its params, a batch (x, y), a
loss, an l2 weight and, when the network has Dropout layers, the seed of the
key that draws the masks. :func:`net_cases` draws them from every layer type
of the engine: Dense (on inputs with extra axes too), Activation (any of the
built-ins), LayerNorm anywhere its axis is wider than one, Dropout, Flatten
and Residual blocks, nested. Sizes are tiny (widths up to 8, batch up to 8):
the property is in the structure, and every drawn shape compiles anew.

The references, all from ``jax.grad`` of the plain-JAX objective
:func:`functional_bp.network.objective_from_arrays`, never through the
library's backward:

- grads, dJ/dX: ``jax.grad`` of J with respect to params and x;
- the cotangent at every layer's output: ``jax.grad`` of J with respect to
  zero ``offsets`` added to each layer's output (nested like params);
- per-example gradients: ``jax.vmap(jax.grad)`` of the one-example objective;
  with a dropout key, ``jax.jacrev`` of the vector of per-example losses of
  the whole batch under that key instead (the masks are drawn for the batch's
  shape, so example i's mask depends on the batch it sits in).

Arrays are drawn with NumPy, so drawing a case compiles nothing. Nothing
here is keyed by layer type: parameters are drawn by their shape
(:func:`fill`), the float64 truth's summand scales come from each layer's
own backward evaluated on absolute values (:func:`abs_backward`), and the
weight decay from :func:`functional_bp.network.decay_mask`. A new layer type
needs only a line in :func:`_blocks` to be drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from jax import lax
from jax.extend import core as jax_core

import functional_bp as fbp
from functional_bp import _validate
from functional_bp import layers as fl
from functional_bp.backprop import Backprop
from functional_bp.layers import (  # noqa: F401  (the names a case's recipe uses)
    Activation,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Residual,
    Sequential,
)
from functional_bp.layers.base import abstract_init
from functional_bp.network import decay_mask, objective_from_arrays
from functional_bp.network import forward as net_forward
from helpers import assert_backprop_close, rtol_for, tree_errors
from strategies import ACTIVATION_NAMES, LOSS_NAMES, SCHEME_VARIANCE, TARGET_KINDS, make_targets

MAX_WIDTH = 8
MAX_BATCH = 8


@dataclass(repr=False)
class NetCase:
    net: Sequential
    params: Any
    x: jax.Array
    y: jax.Array
    loss: str
    l2: float
    dtype: Any
    dropout_seed: int | None = None
    target_kind: str = "reals"
    recipe: str = ""

    @property
    def batch(self):
        return (self.x, self.y)

    @property
    def key(self):
        """The dropout key (None: evaluation, dropout off)."""
        return None if self.dropout_seed is None else jax.random.key(self.dropout_seed)

    def kwargs(self, with_l2=True):
        kw = dict(network=self.net, loss=self.loss, key=self.key)
        if with_l2:
            kw["l2"] = self.l2
        return kw

    def __repr__(self):
        # The make_net_case(...) call that rebuilds this case: paste it into an
        # @example to keep a counterexample.
        return self.recipe or object.__repr__(self)

    def _repr_pretty_(self, p, cycle):  # how hypothesis prints a falsifying example
        p.text(repr(self))


def leaf_layers(net):
    """Every leaf layer of a network, depth first."""
    return list(net.leaves())


def has_dropout(net) -> bool:
    return any(isinstance(layer, Dropout) for layer in leaf_layers(net))


def fill(spec, rng, scheme="glorot"):
    """A parameter leaf drawn with NumPy from its shape alone, whatever its name or layer.

    A leaf with two or more axes is a kernel: N(0, var) with ``var`` the
    scheme's (he, glorot, classic) for fan-in prod(shape[:-1]) and fan-out
    shape[-1]. Any other leaf (a bias, a scale, a shift) is N(0, 0.5^2):
    neither 0 nor 1, so a dropped bias or scale shows.
    """
    shape = tuple(spec.shape)
    if len(shape) >= 2:
        std = SCHEME_VARIANCE[scheme](int(np.prod(shape[:-1])), shape[-1]) ** 0.5
        return std * rng.standard_normal(shape)
    return 0.5 * rng.standard_normal(shape)


def make_net_case(net, input_shape, m, loss, *, l2=0.0, dtype=jnp.float32, seed=0,
                  x_scale=1.0, target_kind=None, scheme="glorot", dropout_seed=None):
    """Build a NetCase deterministically from its description.

    float64 cases are built with x64 enabled, so they really are float64; the
    test that uses them must run under ``with jax.enable_x64(True):`` too.
    """
    rng = np.random.default_rng(seed)
    input_shape = tuple(input_shape)
    x64 = jnp.dtype(dtype) == jnp.dtype("float64")
    with jax.enable_x64(x64):
        spec = jax.eval_shape(lambda k: net.init(k, input_shape, dtype), jax.random.key(0))
        n_L = net.output_shape(input_shape)[-1]
        params = jax.tree_util.tree_map(
            lambda s: jnp.asarray(fill(s, rng, scheme), dtype), spec)
        x = jnp.asarray(x_scale * rng.standard_normal((m, *input_shape)), dtype)
        target_kind = target_kind or TARGET_KINDS[loss][0]
        y = make_targets(rng, target_kind, m, n_L, dtype)
    recipe = (
        f"make_net_case({net!r}, {input_shape}, {m}, {loss!r}, l2={l2}, "
        f"dtype=jnp.{jnp.dtype(dtype).name}, seed={seed}, x_scale={x_scale}, "
        f"target_kind={target_kind!r}, scheme={scheme!r}, dropout_seed={dropout_seed})"
    )
    return NetCase(net, params, x, y, loss, float(l2), dtype, dropout_seed, target_kind, recipe)


# --- the strategies ------------------------------------------------------------------

@st.composite
def _blocks(draw, width, nest, max_blocks):
    """(layers, output width): a run of blocks on inputs of the given last-axis width."""
    layers = []
    for _ in range(draw(st.integers(1, max_blocks), label="blocks")):
        kinds = ["dense", "activation", "dropout"]
        if width >= 2:  # LayerNorm over a width-1 axis is rejected (its output is constant)
            kinds.append("layernorm")
        if nest > 0:
            kinds.append("residual")
        kind = draw(st.sampled_from(kinds), label="kind")
        if kind == "dense":
            width = draw(st.integers(1, MAX_WIDTH), label="features")
            layers.append(Dense(width))
        elif kind == "activation":
            layers.append(Activation(draw(st.sampled_from(ACTIVATION_NAMES), label="g")))
        elif kind == "dropout":
            layers.append(Dropout(draw(st.sampled_from([0.0, 0.25, 0.5]), label="rate")))
        elif kind == "layernorm":
            layers.append(LayerNorm())
        else:  # y = x + f(x): f ends at the width it started from
            body, out = draw(_blocks(width, nest - 1, 3), label="residual body")
            if out != width:
                body.append(Dense(width))
            layers.append(Residual(*body))
    return layers, width


@st.composite
def networks(draw, max_nest=2, max_blocks=4):
    """(network, input_shape): a body of random blocks, then Flatten (extra axes) and a head.

    Inputs are (n_0,), or (T, n_0) and (T_1, T_2, n_0) with extra axes that
    Dense, Activation, LayerNorm and Dropout carry along until Flatten.
    """
    n_0 = draw(st.integers(1, MAX_WIDTH), label="n_0")
    extra = draw(st.sampled_from([(), (), (), (1,), (2,), (3,), (2, 2)]), label="extra axes")
    body, width = draw(_blocks(n_0, max_nest, max_blocks), label="body")
    if extra:
        body.append(Flatten())
        width = width * int(np.prod(extra))
        if draw(st.booleans(), label="blocks after Flatten"):
            more, width = draw(_blocks(width, max_nest, 2), label="after Flatten")
            body += more
    n_L = draw(st.integers(1, MAX_WIDTH), label="n_L")
    head = [Dense(n_L)]
    if draw(st.booleans(), label="output activation"):
        head.append(Activation(draw(st.sampled_from(ACTIVATION_NAMES), label="g_L")))
    if n_L >= 2 and draw(st.integers(0, 4), label="output layer norm") == 0:
        head.append(LayerNorm())
    return Sequential(*body, *head), (*extra, n_0)


@st.composite
def net_cases(draw, dtype=jnp.float32):
    """A random network, batch, loss, targets, l2 and (with Dropout) a key."""
    net, input_shape = draw(networks(), label="network")
    m = draw(st.integers(1, MAX_BATCH), label="m")
    loss = draw(st.sampled_from(LOSS_NAMES), label="loss")
    target_kind = draw(st.sampled_from(TARGET_KINDS[loss]), label="target_kind")
    l2 = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.5]), label="l2")
    x_scale = draw(st.sampled_from([0.1, 1.0, 3.0]), label="x_scale")
    scheme = draw(st.sampled_from(["he", "glorot", "classic"]), label="scheme")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    dropout_seed = None
    if has_dropout(net) and draw(st.integers(0, 3), label="evaluation mode") > 0:
        dropout_seed = draw(st.integers(0, 2**16), label="dropout seed")
    return make_net_case(net, input_shape, m, loss, l2=l2, dtype=dtype, seed=seed,
                         x_scale=x_scale, target_kind=target_kind, scheme=scheme,
                         dropout_seed=dropout_seed)


# --- the references ------------------------------------------------------------------

def zero_offsets(layer, input_shape, m, dtype):
    """(zeros nested like params, one per leaf layer's output, output shape)."""
    if isinstance(layer, Sequential):
        out, shape = [], tuple(input_shape)
        for sub in layer.layers:
            o, shape = zero_offsets(sub, shape, m, dtype)
            out.append(o)
        return out, shape
    shape = abstract_init(layer, tuple(input_shape))[1]
    return jnp.zeros((m, *shape), dtype), shape


def prepared(case):
    """(Loss, x, y) as every public function sees them (labels one-hot, arrays cast)."""
    _, _, loss, x, y = _validate.prepare_model(case.params, case.batch, case.net, case.loss)
    return loss, x, y


_calls = [0]


def _every_so_often_clear():
    # Hundreds of drawn shapes mean hundreds of compiled programs; dropping
    # them now and then keeps the process small.
    _calls[0] += 1
    if _calls[0] % 100 == 0:
        jax.clear_caches()


def reference_backprop(case) -> Backprop:
    """Loss, grads, every layer's cotangent and dJ/dX, all by jax.grad of the objective."""
    _every_so_often_clear()
    loss, x, y = prepared(case)
    offsets = zero_offsets(case.net, x.shape[1:], x.shape[0], x.dtype)[0]
    return _reference(case.params, x, y, offsets, case.l2, case.key, net=case.net, loss=loss)


@partial(jax.jit, static_argnames=("net", "loss"))
def _reference(params, x, y, offsets, l2, key, *, net, loss):
    def J(params, x, offsets):
        return objective_from_arrays(net, params, x, y, l2, loss, key, offsets)

    value, (g_params, g_x, g_offsets) = jax.value_and_grad(J, argnums=(0, 1, 2))(
        params, x, offsets)
    return Backprop(loss=value, grads=g_params, deltas=g_offsets, input_grad=g_x)


def reference_per_example(case, key=None):
    """Each example's own gradient (no 1/m, no l2), leaves (m, *leaf shape).

    Without a key: ``jax.vmap(jax.grad)`` of the objective on a one-example
    batch. With a dropout key: ``jax.jacrev`` of the vector (L_1, ..., L_m)
    of the whole batch's forward under that key (row i of the Jacobian is
    dL_i/dparams; no layer couples examples, so only L_i depends on example
    i's row, but its mask is drawn for the batch's shape).
    """
    _every_so_often_clear()
    loss, x, y = prepared(case)
    if key is None:
        return _vmap_grad(case.params, x, y, net=case.net, loss=loss)
    return _jacrev_losses(case.params, x, y, key, net=case.net, loss=loss)


@partial(jax.jit, static_argnames=("net", "loss"))
def _vmap_grad(params, x, y, *, net, loss):
    def L_i(params, x_i, y_i):
        return objective_from_arrays(net, params, x_i[None], y_i[None], 0.0, loss)

    return jax.vmap(jax.grad(L_i), in_axes=(None, 0, 0))(params, x, y)


@partial(jax.jit, static_argnames=("net", "loss"))
def _jacrev_losses(params, x, y, key, *, net, loss):
    def losses(params):
        out, _ = net_forward(net, params, x, key)
        return loss.value(out, y)

    return jax.jacrev(losses)(params)


def per_example_norms(per_example):
    """||g_i|| over every leaf, in float64."""
    leaves = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(per_example)]
    m = leaves[0].shape[0]
    return np.sqrt(sum(np.sum(g.reshape(m, -1) ** 2, axis=1) for g in leaves))


def clipped_mean(per_example, clip_norm):
    """(1/m) sum_i min(1, C/||g_i||) g_i from the full per-example gradients (float64)."""
    norms = per_example_norms(per_example)
    with np.errstate(divide="ignore"):
        c = np.minimum(1.0, clip_norm / norms)
    m = norms.shape[0]
    return jax.tree_util.tree_map(
        lambda g: np.tensordot(c, np.asarray(g, np.float64), axes=1) / m, per_example)


# --- the float64 truth of a float32 case (for leaves whose terms cancel) ----------------

@dataclass(frozen=True, eq=False)
class _FixedScale(fl.Layer):
    """Dropout with its mask given (the float32 run's), so the float64 truth keeps the masks."""

    scale: Any

    def forward(self, params, x, key=None):
        return x * self.scale, None

    def backward(self, params, cache, dy):
        return {}, dy * self.scale


def _masks_kept(net, caches, row=None):
    """``net`` with each Dropout replaced by its forward's mask (M / (1 - rate), in float64).

    ``row``: keep only that example's row of each mask (for a one-example batch).
    """
    if isinstance(net, Sequential):
        return type(net)(*(_masks_kept(l, c, row) for l, c in zip(net.layers, caches)))
    if isinstance(net, Dropout) and caches is not None:
        scale = jnp.asarray(caches, jnp.float64)
        if row is not None:
            scale = jax.lax.dynamic_slice_in_dim(scale, row, 1, axis=0)
        return _FixedScale(scale)
    return net


# Primitives that are linear in each argument that carries the cotangent: evaluated as
# they are, on absolute values. ``sub`` becomes ``add`` and ``neg`` the identity.
_LINEAR = {"add", "add_any", "mul", "div", "dot_general", "reduce_sum", "broadcast_in_dim",
           "reshape", "transpose", "squeeze", "expand_dims", "slice", "dynamic_slice",
           "dynamic_update_slice", "pad", "concatenate", "convert_element_type", "copy",
           "copy_p", "rev", "scatter-add", "scatter_add", "gather", "select_n",
           "conv_general_dilated", "cumsum", "reduce_precision", "split", "squeeze",
           "sharding_constraint"}
_CALLS = {"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call"}


def _absolute(v):
    return jnp.abs(v) if jnp.issubdtype(jnp.result_type(v), jnp.inexact) else v


def _abs_eval(jaxpr, consts, args, carries):
    """Evaluate ``jaxpr``; where an equation touches a cotangent, every term by its absolute value."""
    env = {}

    def read(v):
        return (v.val, False) if isinstance(v, jax_core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = (c, False)
    for v, a, t in zip(jaxpr.invars, args, carries):
        env[v] = (a, t)
    for eqn in jaxpr.eqns:
        vals, ts = (list(x) for x in zip(*map(read, eqn.invars))) if eqn.invars else ([], [])
        name = eqn.primitive.name
        if not any(ts):  # does not touch the cotangent: its exact value
            out = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
        else:
            vals = [v if t else _absolute(v) for v, t in zip(vals, ts)]
            if name in _CALLS:
                inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
                closed = inner if hasattr(inner, "consts") else jax_core.ClosedJaxpr(inner, ())
                out = _abs_eval(closed.jaxpr, closed.consts, vals, ts)
            elif name == "sub":
                out = lax.add(*vals)
            elif name == "neg":
                out = vals[0]
            elif name in _LINEAR and not (name in ("mul", "dot_general", "conv_general_dilated")
                                          and all(ts)) and not (name == "div" and ts[1]):
                out = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
            else:
                raise TypeError(f"abs_backward: the backward applies {name!r} to the cotangent, "
                                "which is not linear there (or has no rule here); a backward "
                                "must be linear in dy")
        outs = out if eqn.primitive.multiple_results else [out]
        for v, o in zip(eqn.outvars, outs):
            env[v] = (o, any(ts))
    return [read(v)[0] for v in jaxpr.outvars]


def abs_backward(fn, S):
    """``fn(S)``, linear in S >= 0, with every term replaced by its absolute value.

    ``fn`` is a layer's (or a network's) backward as written, closing over
    its params and cache; each equation of its program that touches the
    cotangent is evaluated on the absolute values of its operands (a
    difference becomes a sum, a negation the identity), every value computed
    from the params and the cache alone exactly as the layer computes it.
    Each result is then the size of the terms the true result sums: rounding
    a float32 sum moves it by about eps times that. No table of layer types:
    a new layer's backward is read as it is.
    """
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(S)
    flat_S = jax.tree_util.tree_leaves(S)
    outs = _abs_eval(closed.jaxpr, closed.consts, [jnp.abs(t) for t in flat_S],
                     [True] * len(flat_S))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes),
                                        [_absolute(o) for o in outs])


def _abs_trace(net, params, cache, S):
    """(grad scales, S at the input, cotangent scales): ``net.backward_trace`` on absolute values."""
    return abs_backward(lambda dy: net.backward_trace(params, cache, dy), S)


def float64_truth(case):
    """The ``truth`` argument of :func:`helpers.assert_backprop_close` for a network case.

    A callable giving (the jax.grad reference computed in float64, with the
    float32 run's dropout masks; the summand scales from :func:`_abs_trace`).
    """
    def truth():
        loss, x, y = prepared(case)
        caches = net_forward(case.net, case.params, x, case.key)[1]
        with jax.enable_x64(True):
            up = lambda t: jnp.asarray(t, jnp.float64)  # noqa: E731
            net = _masks_kept(case.net, caches)
            params, x64, y64 = jax.tree.map(up, case.params), up(x), up(y)
            offsets = zero_offsets(net, x64.shape[1:], x64.shape[0], jnp.float64)[0]

            def J(params, x, offsets):
                return objective_from_arrays(net, params, x, y64, case.l2, loss, None, offsets)

            value, (g, gx, go) = jax.value_and_grad(J, argnums=(0, 1, 2))(params, x64, offsets)
            t = Backprop(value, g, go, gx)
            out, caches64 = net_forward(net, params, x64)
            S = jnp.abs(_last_cotangent(go))
            grads, S_in, cots = _abs_trace(net, params, caches64, S)
            grads = jax.tree_util.tree_map(
                lambda gs, w, d: gs + abs(case.l2) * jnp.abs(w) if d else gs,
                grads, params, decay_mask(net, params))
            scales = Backprop(jnp.abs(value), grads, cots, S_in)
        return t, scales

    return truth


def _last_cotangent(cots):
    """The cotangent at the network's output: the last entry, descending into containers."""
    while isinstance(cots, list):
        cots = cots[-1]
    return cots


def per_example_truth(case, key=None):
    """The float64 truth of a float32 case's per-example gradients, and their summand scales.

    A callable giving two trees with leaves (m, *leaf shape): ``jax.vmap``
    over examples of ``jax.grad`` of L_i in float64 (each example with its
    row of the float32 run's dropout masks under ``key``), and
    :func:`_abs_trace` of the same one-example batches (the size of the terms
    each entry of g_i sums).
    """
    def truth():
        loss, x, y = prepared(case)
        caches = net_forward(case.net, case.params, x, key)[1]
        with jax.enable_x64(True):
            up = lambda t: jnp.asarray(t, jnp.float64)  # noqa: E731
            params, x64, y64 = jax.tree.map(up, case.params), up(x), up(y)

            def one(i, x_i, y_i):
                net = _masks_kept(case.net, caches, row=i)

                def L_i(params):
                    out, _ = net_forward(net, params, x_i[None])
                    return loss.value(out, y_i[None])[0]

                out, c = net_forward(net, params, x_i[None])
                S = jnp.abs(loss.grad(out, y_i[None]))
                return jax.grad(L_i)(params), _abs_trace(net, params, c, S)[0]

            return jax.vmap(one)(jnp.arange(x.shape[0]), x64, y64)

    return truth


def clipped_truth(per_example_truth_fn, clip_norm):
    """The ``truth`` of a clipped mean: (1/m) sum_i c_i g_i and (1/m) sum_i c_i S_i in float64."""
    def truth():
        t, s = per_example_truth_fn()
        return clipped_mean(t, clip_norm), clipped_mean_with(t, s, clip_norm)

    return truth


def clipped_mean_with(per_example, scales, clip_norm):
    """(1/m) sum_i min(1, C/||g_i||) S_i: the clip factors of ``per_example`` applied to ``scales``."""
    norms = per_example_norms(per_example)
    with np.errstate(divide="ignore"):
        c = np.minimum(1.0, clip_norm / norms)
    return jax.tree_util.tree_map(
        lambda g: np.tensordot(c, np.asarray(g, np.float64), axes=1) / norms.shape[0], scales)


def norms_truth(per_example_truth_fn):
    """The ``truth`` of the norms: ||g_i|| in float64, and ||S_i|| (|‖g̃_i‖ - ‖g_i‖| <= ‖g̃_i - g_i‖)."""
    def truth():
        t, s = per_example_truth_fn()
        return per_example_norms(t), per_example_norms(s)

    return truth


def assert_close_or_truth(ours, ref, rtol, prefix, truth=None) -> dict[str, float]:
    """``helpers.assert_tree_close``, with the float64-truth rule of ``assert_backprop_close``.

    A leaf passes when max|ours - ref| <= rtol max|ref|, or, when ``truth``
    is given (a callable giving (float64 truth, summand scales) trees), when
    max|ours - truth| <= rtol max(summand scale): float32 rounding measured
    against the size of the terms the leaf sums, for leaves whose terms cancel.
    """
    errs = tree_errors(ours, ref, prefix)
    bad = {k for k, v in errs.items() if not v <= rtol}
    if bad and truth is not None:
        t, scales = truth()
        for (path, o), tv, sv in zip(jax.tree_util.tree_flatten_with_path(ours)[0],
                                     jax.tree_util.tree_leaves(t),
                                     jax.tree_util.tree_leaves(scales)):
            k = prefix + jax.tree_util.keystr(path)
            if k in bad:
                diff = np.max(np.abs(np.asarray(o, np.float64) - np.asarray(tv, np.float64)),
                              initial=0.0)
                if diff <= rtol * np.max(np.abs(np.asarray(sv, np.float64)), initial=0.0):
                    bad.discard(k)
    if bad:
        raise AssertionError(f"leaves over rtol={rtol:g}: "
                             + ", ".join(f"{k}: {errs[k]:.3g}" for k in sorted(bad)))
    return errs


# --- the comparisons (the property tests and the wrong twins use these) -----------------

def compare_backprop(case) -> dict[str, float]:
    """``fbp.backprop(network=)`` against :func:`reference_backprop`, per leaf; the errors.

    Loss, every grad leaf, every layer's cotangent and dJ/dX, with
    ``helpers.assert_backprop_close`` (and, for float32, its float64 truth).
    """
    rtol = rtol_for(case.dtype)
    ours = fbp.backprop(case.params, case.batch, **case.kwargs())
    truth = float64_truth(case) if jnp.dtype(case.dtype) == jnp.float32 else None
    return assert_backprop_close(ours, reference_backprop(case), rtol, truth)


def compare_per_example(case) -> dict[str, float]:
    """Per-example grads, their norms and the clipped gradient against the reference; the errors.

    The reference is :func:`reference_per_example` under the call's dropout
    key; ``clipped_grad`` draws its masks from ``fold_in(key, 1)`` (the key
    itself is the noise's), so its reference uses that key. The clip norm is
    the median norm (about half the examples are clipped).
    """
    rtol = rtol_for(case.dtype)
    f32 = jnp.dtype(case.dtype) == jnp.float32
    kw = case.kwargs(with_l2=False)
    ref = reference_per_example(case, case.key)
    truth = per_example_truth(case, case.key) if f32 else None
    errs = assert_close_or_truth(fbp.per_example_grads(case.params, case.batch, **kw), ref, rtol,
                                 "per_example_grads", truth)
    errs.update(assert_close_or_truth(
        fbp.per_example_grad_norms(case.params, case.batch, **kw), per_example_norms(ref), rtol,
        "norms", truth and norms_truth(truth)))
    clip_key = None if case.key is None else jax.random.fold_in(case.key, 1)
    ref_clip, truth_clip = ref, truth
    if clip_key is not None:
        ref_clip = reference_per_example(case, clip_key)
        truth_clip = per_example_truth(case, clip_key) if f32 else None
    clip_norm = float(np.median(per_example_norms(ref_clip))) or 1.0
    got = fbp.clipped_grad(case.params, case.batch, clip_norm=clip_norm, **kw)
    errs.update(assert_close_or_truth(got, clipped_mean(ref_clip, clip_norm), rtol,
                                      "clipped_grad",
                                      truth_clip and clipped_truth(truth_clip, clip_norm)))
    return errs
