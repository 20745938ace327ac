"""Input checks shared by every public function.

They look at shapes, dtypes, names and structure only (never at values), so
they cost no device synchronisation and work on tracers under ``jax.jit`` and
``jax.vmap``. Each error names the layer and the expected and actual shape, or
lists the valid names. The exception is integer data whose values decide
whether the result means anything, token indices and class labels: where
their values are known at the call (not traced) they are checked on the host
(:func:`check_concrete_values`).

:func:`jit_with_checks` runs them while tracing: ``jax.jit`` caches a trace on
the shapes, dtypes and static configuration of its arguments, so the checks
run once per new combination and a repeated call costs one jit dispatch, the
same as ``jax.jit(jax.value_and_grad(objective))``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import lru_cache, partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .activations import ACTIVATIONS, Activation, get_activation
from .layers import Activation as ActivationLayer
from .layers import Layer, Sequential
from .losses import Loss, get_loss, sequence_targets
from .network import MLPView, mlp_network, network_view


def _shape(v):
    return tuple(getattr(v, "shape", np.shape(v)))


def check_params(params) -> list[int]:
    """Check the params structure; return the layer widths [n_0, ..., n_L]."""
    if isinstance(params, dict) or not isinstance(params, (list, tuple)):
        raise TypeError(
            "params must be a list with one dict {'W': W, 'b': b} per layer "
            f"(as returned by init_mlp); got {type(params).__name__}"
        )
    if len(params) == 0:
        raise ValueError("params is empty: a network needs at least one layer")
    sizes: list[int] = []
    for l, layer in enumerate(params, start=1):
        if not isinstance(layer, dict):
            raise TypeError(
                f"layer {l}: expected a dict with keys 'W' and 'b', got "
                f"{type(layer).__name__}"
            )
        keys = set(layer)
        if keys != {"W", "b"}:
            missing, extra = sorted({"W", "b"} - keys), sorted(keys - {"W", "b"})
            raise ValueError(
                f"layer {l}: a layer dict has exactly the keys 'W' and 'b'; "
                f"missing {missing}, extra {extra}"
            )
        W_shape, b_shape = _shape(layer["W"]), _shape(layer["b"])
        if len(W_shape) != 2:
            raise ValueError(
                f"layer {l}: W must be 2-D (n_{l-1}, n_{l}) in row layout; got "
                f"shape {W_shape}"
            )
        n_in, n_out = W_shape
        if n_in == 0 or n_out == 0:
            raise ValueError(
                f"layer {l}: W has shape {W_shape}: a layer of width 0 holds no units; every "
                "width needs at least one (init_mlp(key, [n_0, ..., n_L]) with each n >= 1)"
            )
        if l == 1:
            sizes.append(n_in)
        elif n_in != sizes[-1]:
            raise ValueError(
                f"layer {l}: W has shape {W_shape} but layer {l-1} outputs width "
                f"{sizes[-1]}; expected W of shape ({sizes[-1]}, {n_out})"
            )
        if b_shape != (n_out,):
            hint = (
                " (a column vector is the column layout; in row layout b is 1-D,"
                " see functional_bp.columns.to_rows)"
                if b_shape == (n_out, 1)
                else ""
            )
            raise ValueError(
                f"layer {l}: b must have shape ({n_out},) to match W {W_shape}; "
                f"got {b_shape}{hint}"
            )
        for name in ("W", "b"):
            dtype = getattr(layer[name], "dtype", None)
            if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"layer {l}: {name} must be a floating-point array; got dtype {dtype}"
                )
        sizes.append(n_out)
    return sizes


def check_activations(activations, n_layers: int) -> tuple[Activation, ...]:
    """Resolve one activation per layer, or raise a clear error."""
    if isinstance(activations, (str, Activation)) or not isinstance(
        activations, Sequence
    ):
        raise TypeError(
            "activations must be a sequence with one entry per layer "
            f"({n_layers} here), e.g. {['relu'] * (n_layers - 1) + ['identity']}; "
            f"got {activations!r}"
        )
    if len(activations) != n_layers:
        raise ValueError(
            f"got {len(activations)} activations for a network of {n_layers} "
            f"layers; pass exactly one per layer"
        )
    return tuple(get_activation(a, layer=l) for l, a in enumerate(activations, 1))


def check_x(x, n_0: int, *, dtype):
    """Check the input batch x of shape (m, n_0) and cast it to ``dtype``."""
    shape = _shape(x)
    if len(shape) != 2:
        raise ValueError(
            f"x must be 2-D (m examples, n_0={n_0} features); got shape {shape}"
            + (" (use x[None, :] for a single example)" if len(shape) == 1 else "")
        )
    if shape[0] == 0:
        raise ValueError("the batch is empty: x has 0 rows; pass at least one example")
    if shape[1] != n_0:
        raise ValueError(
            f"x has {shape[1]} features but layer 1 expects n_0={n_0}: x must have "
            f"shape (m, {n_0}); got {shape}"
        )
    return _as_dtype(x, dtype)


def check_y(y, m: int, n_L: int, loss: Loss, *, dtype):
    """Check targets y (m, n_L), or integer labels (m,) where the loss takes them."""
    shape = _shape(y)
    y_dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if len(shape) == 1 and loss.accepts_labels:
        if not jnp.issubdtype(y_dtype, jnp.integer):
            raise TypeError(
                f"1-D targets for {loss.name} are class labels and must be integers; "
                f"got dtype {y_dtype} (pass float targets with shape (m, {n_L}))"
            )
        if shape[0] != m:
            raise ValueError(f"x has {m} rows but y has {shape[0]} labels")
        return jax.nn.one_hot(y, n_L, dtype=dtype)
    if len(shape) != 2:
        takes = f"(m, {n_L})" + (" or integer labels (m,)" if loss.accepts_labels else "")
        raise ValueError(
            f"y for loss {loss.name} must have shape {takes}; got shape {shape}"
        )
    if shape[0] != m:
        raise ValueError(f"x has {m} rows but y has {shape[0]} rows")
    if shape[1] != n_L:
        raise ValueError(
            f"y has width {shape[1]} but the network outputs n_L={n_L}: expected "
            f"y of shape ({m}, {n_L})"
        )
    return _as_dtype(y, dtype)


def check_sequence_y(y, m: int, T: int, n_L: int, loss: Loss, *, dtype):
    """Check targets (m, T, n_L), or integer labels (m, T) (-1: not scored) for sequence outputs."""
    shape = _shape(y)
    y_dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    labels = " or integer labels (m, T) (-1: not scored)" if loss.accepts_labels else ""
    if len(shape) == 2 and loss.accepts_labels:
        if not jnp.issubdtype(y_dtype, jnp.integer):
            raise TypeError(
                f"y of shape {shape} for the sequence output (m, {T}, {n_L}) holds class labels "
                f"and must be integers; got dtype {y_dtype}")
        if shape != (m, T):
            raise ValueError(f"the network outputs (m, T, n_L) = ({m}, {T}, {n_L}): labels y "
                             f"must have shape ({m}, {T}); got {shape}")
        return sequence_targets(jnp.asarray(y), n_L, dtype)
    if shape != (m, T, n_L):
        raise ValueError(
            f"the network outputs a sequence (m, T, n_L) = ({m}, {T}, {n_L}): y for loss "
            f"{loss.name} must have shape ({m}, {T}, {n_L}){labels}; got shape {shape}")
    return _as_dtype(y, dtype)


def _as_dtype(v, dtype):
    """v as a JAX array of ``dtype``; a no-op (no dispatch) when it already is one."""
    if isinstance(v, jax.Array) and v.dtype == dtype:
        return v
    return jnp.asarray(v, dtype=dtype)


def check_batch(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch must be a pair (x, y); got {type(batch).__name__}")
    return batch


def params_dtype(params):
    """The dtype of W^1 (read directly: ``jnp.result_type`` costs ~30 µs a call)."""
    W = params[0]["W"]
    return W.dtype if hasattr(W, "dtype") else jnp.result_type(W)


def prepare(params, batch, activations, loss):
    """Validate everything; return (activations tuple, Loss, x, y) ready to trace."""
    sizes = check_params(params)
    acts = check_activations(activations, len(params))
    loss = get_loss(loss)
    x, y = check_batch(batch)
    dtype = params_dtype(params)
    x = check_x(x, sizes[0], dtype=dtype)
    y = check_y(y, x.shape[0], sizes[-1], loss, dtype=dtype)
    return acts, loss, x, y


def resolve_model(activations, network):
    """The static model of a public call: the ``activations`` sequence or the ``network``.

    (Traced configuration is refused by :func:`static_config`, on the first
    call of each configuration.)
    """
    if (activations is None) == (network is None):
        raise TypeError(
            "pass exactly one of activations= (the dense chain, one activation per layer) "
            "and network= (a functional_bp.layers.Sequential); got "
            + ("neither" if activations is None else "both")
        )
    if network is not None and not isinstance(network, Sequential):
        reject_traced_config("network", network)
        raise TypeError(
            "network must be a functional_bp.layers.Sequential, e.g. "
            "Sequential(Dense(64), Activation('relu'), Dense(10)); got "
            f"{type(network).__name__} (wrap a single layer: Sequential(layer))"
        )
    return activations if network is None else network


def network_dtype(params):
    """The dtype of the first floating leaf of a network's params (float32 when none)."""
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            return dtype
    return jnp.dtype(jnp.float32)


def check_network_x(x, net, params):
    """Check x (m, *input_shape) for ``net``; return (x cast to the params dtype, output shape)."""
    shape = _shape(x)
    if len(shape) < 2 and not net.integer_input:
        raise ValueError(
            f"x must have a batch axis and the example's axes, (m, ...); got shape {shape}"
            + (" (use x[None, :] for a single example)" if len(shape) == 1 else "")
        )
    if len(shape) < 1 or shape[0] == 0:
        raise ValueError("the batch is empty: x has 0 rows; pass at least one example")
    if 0 in shape[1:]:
        raise ValueError(f"x has shape {shape}: an example axis of size 0 holds no data (every "
                         "axis after the batch axis needs at least one entry)")
    out = net.check(params, shape[1:])
    if len(out) not in (1, 2):
        raise ValueError(
            f"the network's output must be (m, n_L), or (m, T, n_L) for a sequence, for the "
            f"loss; it is (m, {', '.join(map(str, out))}) for x of shape {shape}: end the "
            "network with Flatten() and a Dense layer"
        )
    if net.integer_input:
        x_dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        if not jnp.issubdtype(x_dtype, jnp.integer):
            raise TypeError(f"x for {net.layers[0]!r} must be integer indices; got dtype {x_dtype}")
        return jnp.asarray(x), out
    return _as_dtype(x, network_dtype(params)), out


# --- values of concrete arrays: tokens and labels, checked on the host ------------------
def _host_values(v):
    """``v`` as a NumPy array when its values are known at the call, else None.

    A tracer (under a user's ``jax.jit``, ``jax.vmap`` or ``jax.grad``) has no
    values yet, and an array spread over other processes cannot be read here:
    neither can be checked. A concrete JAX array costs one read of its values.
    """
    if isinstance(v, jax.core.Tracer):
        return None
    if isinstance(v, jax.Array) and not v.is_fully_addressable:
        return None
    return np.asarray(v)


@jax.jit
def _min_max(v):
    return jnp.min(v), jnp.max(v)


def _value_range(v, on_device=None):
    """``(min, max)`` of ``v``'s values when they are known at the call, else None.

    NumPy arrays and JAX arrays on the host are read directly; a JAX array on
    an accelerator is reduced there (``on_device`` None: decided by where it
    lives), so only two numbers cross to the host. Empty, traced or not fully
    addressable arrays give None.
    """
    if isinstance(v, jax.Array) and not isinstance(v, jax.core.Tracer) \
            and v.is_fully_addressable and v.size and (
                any(d.platform != "cpu" for d in v.devices()) if on_device is None
                else on_device):
        low, high = jax.device_get(_min_max(v))
        return low, high
    values = _host_values(v)
    if values is None or values.size == 0:
        return None
    return values.min(), values.max()


def _is_integer_array(v) -> bool:
    dtype = getattr(v, "dtype", None)
    if dtype is None:
        dtype = np.asarray(v).dtype
    return jnp.issubdtype(dtype, jnp.integer)


def check_token_values(net, x, where: str = "x"):
    """Raise unless every index of ``x`` lies in [0, vocab_size) of ``net``'s first layer.

    Only for a network whose first layer takes integer indices (an
    :class:`~functional_bp.layers.Embedding`) and only when ``x``'s values are
    known (a NumPy array or a concrete JAX array; a traced ``x`` cannot be
    checked, see the Embedding's docstring). ``where`` names the argument
    in the message. Shapes and dtypes are checked elsewhere.
    """
    if not isinstance(net, Sequential) or not net.integer_input or not _is_integer_array(x):
        return
    layer, name = net, []
    while isinstance(layer, Sequential):
        layer, name = layer.layers[0], name + ["layer 1"]
    vocab = getattr(layer, "vocab_size", None)
    known = None if vocab is None else _value_range(x)
    if known is None:
        return
    low, high = known
    if low < 0 or high >= vocab:
        bad = (f"the largest index is {high}" if high >= vocab else
               f"the smallest index is {low} (negative indices are not counted from the end)")
        raise ValueError(
            f"{where}: token indices for {'.'.join(name)} ({layer!r}) must lie in "
            f"[0, vocab_size) = [0, {vocab}); {bad}. Map the tokens to 0..{vocab - 1} "
            f"(e.g. one id for unknown tokens), or build the Embedding with a vocab_size "
            f"larger than every index"
        )


def check_label_values(y, out_shape, where: str = "y"):
    """Raise unless integer class labels ``y`` lie in [0, n_L) (-1 allowed for sequences).

    ``out_shape`` is one example's output shape (no batch axis). Labels are:

    - ``y`` (m,) for an output (n_L,): each in [0, n_L);
    - ``y`` (m, T) for a sequence output (T, n_L): each in [0, n_L), or -1,
      which marks a position that is not scored.

    Anything else (float targets, shapes the shape checks refuse) is left to
    those checks; a traced ``y`` cannot be checked (its values are unknown).
    """
    shape, out_shape = _shape(y), tuple(out_shape)
    if not out_shape or not _is_integer_array(y):
        return
    if len(out_shape) == 1 and len(shape) == 1:
        lowest = 0
    elif len(out_shape) == 2 and len(shape) == 2 and shape[1] == out_shape[0]:
        lowest = -1  # a sequence: -1 marks an unscored position
    else:
        return
    known = _value_range(y)
    if known is None:
        return
    n_L = out_shape[-1]
    low, high = known
    if low < lowest or high >= n_L:
        bad = f"the largest label is {high}" if high >= n_L else f"the smallest label is {low}"
        also = ", or -1 for a position that is not scored," if lowest == -1 else ""
        raise ValueError(
            f"{where}: integer labels must be class indices in [0, n_L) = [0, {n_L}){also} "
            f"for a network with n_L={n_L} outputs; {bad}. Give the last layer one output "
            "per class, or remap the labels to 0..n_L-1"
        )


def check_finite_values(v, where: str):
    """Raise when ``v``, a floating array whose values are known, holds NaN or infinities.

    For the data a trainer holds (checked once per :func:`functional_bp.train.fit`):
    a NaN feature does not always show in the loss (ReLU maps NaN to 0) while
    the gradients it gives make the params NaN. Traced or integer arrays are
    skipped.
    """
    dtype = getattr(v, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or not np.ndim(v):
        return
    values = _host_values(v)
    if values is None:
        return
    bad = ~np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{where} holds NaN or infinite values in {int(bad.sum())} row(s), first at row "
            f"{int(np.flatnonzero(bad)[0])}: remove or impute them first (a NaN feature can "
            "leave the loss finite, ReLU maps it to 0, while the params become NaN)"
        )


@lru_cache(maxsize=64)
def _network_output_shape(net, input_shape):
    try:
        return tuple(net.output_shape(input_shape))
    except Exception:  # noqa: BLE001  (a bad shape: the traced checks report it)
        return None


def check_concrete_values(model, params, x, y=None, loss=None):
    """The value checks of a public call, on the host, before anything is traced.

    Token indices of an Embedding-first network (:func:`check_token_values`)
    and integer class labels (:func:`check_label_values`), where their values
    are known. Skipped silently when the shapes are wrong (the traced checks
    then raise the shape error) or the arrays are traced.
    """
    check_token_values(model, x)
    if y is None or not _is_integer_array(y):
        return
    try:
        if not get_loss(loss).accepts_labels:
            return
        if isinstance(model, Layer):
            out = _network_output_shape(model, _shape(x)[1:])
        else:
            out = (_shape(params[-1]["W"])[-1],)
    except Exception:  # noqa: BLE001  (malformed: the traced checks report it)
        return
    if out is not None:
        check_label_values(y, out)


def prepare_model(params, batch, model, loss):
    """Validate everything for either form; return ``(view, net_params, loss, x, y)``.

    ``model`` is an activations sequence (the MLP) or a ``Sequential``;
    ``view`` converts between the user's params structure and the network's.
    The derivative ``dg`` of every user-written activation is checked against
    the shape and dtype of its input (abstractly, while tracing), so a
    mistake is reported with the layer's number.
    """
    reject_traced_config("loss", loss)
    loss = get_loss(loss)
    x, y = check_batch(batch)
    if isinstance(model, Layer):
        view = network_view(model, params)
        params = view.to_net(params)
        x, out = check_network_x(x, model, params)
        check_network_derivatives(model, params, x)
        if len(out) == 2:
            y = check_sequence_y(y, x.shape[0], *out, loss, dtype=network_dtype(params))
        else:
            y = check_y(y, x.shape[0], out[0], loss, dtype=network_dtype(params))
        return view, params, loss, x, y
    sizes = check_params(params)
    acts = check_activations(model, len(params))
    view = MLPView(mlp_network(acts, tuple(sizes[1:])), type(params))
    dtype = params_dtype(params)
    x = check_x(x, sizes[0], dtype=dtype)
    for l, (layer, n) in enumerate(zip(view.net.layers[1::2], sizes[1:]), 1):
        if not _builtin(layer):
            layer.check_derivative(jax.ShapeDtypeStruct((x.shape[0], n), dtype), f"layer {l}")
    y = check_y(y, x.shape[0], sizes[-1], loss, dtype=dtype)
    return view, view.to_net(params), loss, x, y


def _builtin(layer) -> bool:
    """Whether an Activation layer holds one of the built-in (tested) activations."""
    return ACTIVATIONS.get(layer.fn.name) is layer.fn


def check_network_derivatives(net, params, x):
    """Check every user-written activation's dg in ``net`` on the input it will see.

    The inputs Z of the Activation layers are their forward caches, found by
    tracing the forward abstractly (``jax.eval_shape``, nothing computed);
    layers are named as :meth:`Sequential.check` names them ("layer 3.layer 2"
    for the second layer of the third). Networks with built-in activations
    only skip the trace.
    """
    if all(_builtin(l) for l in net.leaves() if isinstance(l, ActivationLayer)):
        return
    caches = jax.eval_shape(lambda p, x: net.forward(p, x)[1], params, x)

    def walk(layers, caches, prefix):
        for i, (layer, cache) in enumerate(zip(layers, caches), 1):
            where = f"{prefix}layer {i}"
            if isinstance(layer, Sequential):
                walk(layer.layers, cache, where + ".")
            elif isinstance(layer, ActivationLayer) and not _builtin(layer):
                layer.check_derivative(cache, where)

    walk(net.layers, caches, "")


def static_config(activations, loss=None):
    """``(activations, loss)`` made hashable (compiled-in configuration): a list becomes a tuple.

    Anything still unhashable is resolved here, so the error a user sees is
    ours (which entry, which names are valid), not jit's "non-hashable static
    argument".
    """
    reject_traced_config("activations", activations)
    reject_traced_config("loss", loss)
    if isinstance(activations, list):
        activations = tuple(activations)
    try:
        hash(activations)
    except TypeError:
        n = len(activations) if isinstance(activations, Sequence) else 0
        activations = check_activations(activations, n)
    try:
        hash(loss)
    except TypeError:
        loss = get_loss(loss)
    return activations, loss


def as_array(v):
    """v as is when it is an array, else (nested lists) a NumPy array.

    jit would otherwise flatten a nested list into one scalar argument per entry.
    """
    return v if hasattr(v, "shape") else np.asarray(v)


def array_batch(batch):
    """The pair (x, y), each through :func:`as_array`."""
    x, y = check_batch(batch)
    return as_array(x), as_array(y)


def _is_number(v) -> bool:
    return type(v) in (int, float) and v == v  # a NaN would never find its trace again


def _is_traced(v) -> bool:
    return isinstance(v, (jax.core.Tracer, jax.Array))


def reject_traced_config(name: str, value):
    """Raise when static configuration arrives as an array or a tracer.

    ``activations``, ``network`` and ``loss`` choose the program itself, so
    they cannot be traced arguments of ``jax.jit`` or ``jax.vmap``.
    """
    entries = value if isinstance(value, (list, tuple)) else (value,)
    if any(_is_traced(v) for v in entries):
        raise TypeError(
            f"{name} is static configuration (it selects the compiled program), but it "
            f"arrived as an array or traced value: {value!r}. Keep the configuration out "
            "of the arguments jax.jit or jax.vmap trace, e.g. jax.jit(functools.partial("
            "fbp.value_and_grad, activations=('relu', 'identity'), loss='mse')) or "
            "jax.jit(fbp.value_and_grad, static_argnames=('activations', 'loss')) with "
            "activations given as a tuple (a jitted function cannot take strings as array "
            "arguments)"
        )


def check_l2(l2):
    """Check the weight decay ``l2``: a real scalar, and finite and >= 0 where its value is known.

    Python numbers, NumPy arrays and concrete JAX arrays are checked at the
    call (a concrete JAX array costs one read of its value); a traced ``l2``
    (under a user's ``jax.jit``, ``jax.vmap`` or ``jax.grad``) has its shape
    and dtype checked, its value cannot be.
    """
    if isinstance(l2, (bool, np.bool_)) or isinstance(l2, complex) or (
            not isinstance(l2, (int, float)) and not hasattr(l2, "dtype")):
        raise TypeError(
            f"l2 must be a real number >= 0 (the weight decay); got {l2!r} of type "
            f"{type(l2).__name__}: pass e.g. l2=1e-4, or 0.0 for none"
        )
    if isinstance(l2, (int, float)):
        value = l2
    else:
        shape, dtype = _shape(l2), l2.dtype
        if dtype == bool or not (jnp.issubdtype(dtype, jnp.floating)
                                 or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(
                f"l2 must be a real number >= 0; got an array of dtype {dtype}: pass a "
                "float, e.g. jnp.asarray(1e-4)"
            )
        if shape != ():
            raise ValueError(
                f"l2 must be a scalar (shape ()), one weight decay for every W; got an "
                f"array of shape {shape}: pass a number or a 0-d array"
            )
        if isinstance(l2, jax.core.Tracer):
            return
        value = float(np.asarray(l2))
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(
            f"l2 must be finite and >= 0 (the weight decay (l2/2) sum ||W||^2); got {value}: "
            "pass e.g. l2=1e-4, or 0.0 for none"
        )


def params_as_arrays(params):
    """``params`` with every dict entry given as (nested) Python lists or numbers made an array.

    Lists and tuples outside the dicts are structure (layers) and are kept;
    inside a layer's dict, a list such as ``{"W": [[1.0, 2.0]], ...}`` is one
    array (``jnp.asarray``: the default float dtype). Without this, jit would
    flatten it into one scalar argument per number. Returns ``params`` itself
    (no copy) when there is nothing to convert.
    """
    try:  # the usual case, a flat list of dicts of arrays: one pass, no recursion
        if all(hasattr(v, "shape") for p in params for v in p.values()):
            return params
    except (AttributeError, TypeError):
        pass
    if isinstance(params, dict):
        if all(hasattr(v, "shape") for v in params.values()):
            return params
        return {k: jnp.asarray(v) if isinstance(v, (list, tuple, int, float)) else v
                for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        converted = [params_as_arrays(p) for p in params]
        if all(c is p for c, p in zip(converted, params)):
            return params
        return type(params)(converted)
    return params


COMPILED_CACHE_SIZE = 32
"""How many compiled configurations each public function keeps (least recently used first out)."""


def jit_with_checks(from_arrays: Callable) -> Callable:
    """``from_arrays(net_params, x, y, *args, view, loss)`` as a public entry
    ``f(params, batch, args, model, loss)``: jitted, checks run while tracing.

    - ``model`` is the ``activations`` sequence (the MLP) or a network
      (``layers.Sequential``); :func:`prepare_model` validates the call and
      gives ``from_arrays`` the network's params and a ``view`` that maps
      results back to the user's structure (a list stays a list, a tuple a
      tuple).
    - The checks depend only on what jit caches a trace on: the structure,
      shapes and dtypes of ``params`` and ``batch`` and the static
      configuration. Running them inside the trace checks every new
      combination once and costs nothing on the calls that reuse a trace;
      errors are still raised at the call (tracing happens inside it).
      ``from_arrays``'s argument named ``l2``, if any, is checked at every
      call by :func:`check_l2` (its value may change without a new trace).
    - The configuration (the model, the loss, and the Python numbers among
      ``args`` such as ``l2`` or ``clip_norm``) is compiled in: one
      ``jax.jit`` of a ``partial`` per configuration, called with arrays
      only. That is how ``jax.jit(jax.value_and_grad(partial(objective,
      ...)))`` is called, so a repeated call costs the same dispatch. A new
      number compiles anew; arrays (and tracers, under a user's jit or vmap)
      stay dynamic. To sweep a value (``l2=jnp.asarray(v)`` for each v)
      without recompiling, pass it as an array: one program serves every value.
    - The compiled configurations are kept in a least-recently-used cache of
      :data:`COMPILED_CACHE_SIZE` entries per public function (``f.compiled``,
      an ``OrderedDict``); the oldest is dropped, with its programs, when a
      new one would exceed it, so a sweep over Python numbers cannot grow
      memory without bound (it still compiles once per value).
    - Params given as nested Python lists inside the layer dicts are made
      arrays (:func:`params_as_arrays`); the batch goes through
      :func:`array_batch`.
    - Values that decide whether the result means anything are checked at
      every call where they are known (not traced): the token indices of an
      Embedding-first network and integer class labels
      (:func:`check_concrete_values`; one read of each integer array).
    """
    names = [p.name for p in inspect.signature(from_arrays).parameters.values()
             if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][3:]
    l2_at = names.index("l2") if "l2" in names else None

    def traced(params, batch, *args, model, loss, numbers):
        view, net_params, loss, x, y = prepare_model(params, batch, model, loss)
        args = tuple(a if n is None else n for a, n in zip(args, numbers))
        return from_arrays(net_params, x, y, *args, view=view, loss=loss)

    compiled: OrderedDict = OrderedDict()

    def call(params, batch, args, model, loss):
        # A configuration seen before (found in the cache) was checked when it was
        # compiled: a Python-number l2 is part of the key, and traced configuration
        # is never hashable. Only values that are not in the key are checked again.
        numbers = tuple(a if _is_number(a) else None for a in args)
        try:
            key = (tuple(model) if type(model) is list else model, loss, numbers)
            f = compiled.get(key)
        except TypeError:  # unhashable configuration: resolved (or refused) below
            f = None
        if f is None:
            if l2_at is not None:
                check_l2(args[l2_at])
            model, loss = static_config(model, loss)
            key = (model, loss, numbers)
            f = compiled.get(key)
            if f is None:
                f = compiled[key] = jax.jit(partial(traced, model=model, loss=loss,
                                                    numbers=numbers))
                while len(compiled) > COMPILED_CACHE_SIZE:
                    compiled.popitem(last=False)
        elif l2_at is not None and numbers[l2_at] is None:
            check_l2(args[l2_at])  # an array (or NaN) l2: its value is not in the key
        compiled.move_to_end(key)
        params = params_as_arrays(params)
        batch = array_batch(batch)
        check_concrete_values(model, params, *batch, loss)
        return f(params, batch, *(None if n is not None else a for a, n in zip(args, numbers)))

    call.compiled = compiled
    return call
