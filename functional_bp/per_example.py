"""Per-example gradients, their norms, and DP-SGD clipping, all from the cotangents.

Run the backward loop with weight 1 on every example (instead of 1/m): row i
of the cotangent at each layer's output is then example i's own dL_i/dY_i,
and each layer with parameters gives example i's squared gradient norm from
its cache and that cotangent (``layer.sq_norms``), without forming the
per-example gradients. For the dense chain (row i of G^l is ``delta_i^l``,
row i of A^{l-1} is ``a_i^{l-1}``)::

    dL_i/dW^l = outer(a_i^{l-1}, delta_i^l)             (n_{l-1}, n_l)
    dL_i/db^l = delta_i^l                               (n_l,)
    ||g_i||^2 = sum_l (||a_i^{l-1}||^2 + 1) ||delta_i^l||^2

(the squared Frobenius norm of an outer product is the product of the squared
norms). The norms therefore need O(m * sum of widths) memory, never the
O(m * number of parameters) of the per-example gradients themselves.

Clipping each example to ``clip_norm`` C multiplies its gradient by
c_i = min(1, C / ||g_i||). Every layer's parameter gradient is linear in its
cotangent, and row i of a cotangent only carries example i (no layer here
couples examples), so the clipped mean is each layer's parameter backward on
its saved cotangent with row i scaled by c_i / m::

    dW^l = A^{l-1,T} (c/m ⊙ G^l),    db^l = sum of the rows of (c/m ⊙ G^l)

An example whose gradient is exactly zero gets c_i = 1: there is no 0/0, in
any branch. A layer that couples examples (``couples_examples``) makes these
functions raise: row i would no longer be example i's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate
from .backprop import output_cotangent
from .network import forward


def _cotangents(net, params, x, y, loss, key):
    """(caches, cotangents) of a backward pass with weight 1 on every example."""
    if net.couples_examples:
        raise ValueError(
            f"{net!r} has a layer that couples the examples of a batch: per-example "
            "gradients, their norms and DP clipping would be wrong; remove that layer"
        )
    out, caches = forward(net, params, x, key)
    ones = jnp.ones((x.shape[0],), dtype=out.dtype)
    # Only the cotangents are used: XLA drops the parameter gradients computed beside them.
    _, _, cots = net.backward_trace(params, caches, output_cotangent(loss, out, y, ones))
    return caches, cots


def _norms(sq, cots, m):
    """||g_i|| (m,) from the summed squared norms (None: no layer has parameters)."""
    return jnp.sqrt(jnp.zeros((m,), cots_dtype(cots)) if sq is None else sq)


def clip_factors(norms, clip_norm):
    """c_i = min(1, C / ||g_i||), shape (m,), with a guard that cannot give NaN or flip a sign.

    - C = inf: c_i = 1 exactly (no clipping);
    - ||g_i|| = 0: c_i = 1 (no 0/0);
    - C <= 0 or NaN (only possible when C is traced, since known values are
      rejected at the call): treated as C = 0, so c_i = 0 for every example
      with a non-zero gradient: the step is zero, never NaN and never uphill.
    """
    C = jnp.where(clip_norm > 0, clip_norm, 0)
    # norms <= C covers C = inf and norms = C = 0; the division is only taken when norms > C >= 0.
    return jnp.where(norms <= C, 1, C / jnp.where(norms <= C, 1, norms)).astype(norms.dtype)


def per_example_grads_from_arrays(params, x, y, key=None, *, view, loss):
    """Per-example gradients for validated arrays: leaves (m, *leaf shape)."""
    caches, cots = _cotangents(view.net, params, x, y, loss, key)
    return view.grads(view.net.per_example_grads_trace(params, caches, cots))


def per_example_grad_norms_from_arrays(params, x, y, key=None, *, view, loss):
    """||g_i|| for validated arrays, shape (m,), without forming any g_i."""
    caches, cots = _cotangents(view.net, params, x, y, loss, key)
    return _norms(view.net.sq_norms_trace(params, caches, cots), cots, x.shape[0])


def cots_dtype(cots):
    return jax.tree_util.tree_leaves(cots)[0].dtype


def clipped_sum_from_arrays(params, x, y, clip_norm, noise_multiplier, key, *, view, loss,
                            weights, noise_scale):
    """sum_i w_i clip(g_i) + noise_scale * N(0, (noise_multiplier * C)^2 I), network params.

    ``weights`` (m,): w_i = 1/m gives the mean; zero weights mask padded rows.
    ``key`` None: no noise. With Dropout layers, the dropout masks use
    ``fold_in(key, 1)`` and the noise ``key`` itself.
    """
    net = view.net
    dropout_key = None if key is None else jax.random.fold_in(key, 1)
    caches, cots = _cotangents(net, params, x, y, loss, dropout_key)
    sq, grads_of = net.clipping_trace(params, caches, cots)
    grads = grads_of(clip_factors(_norms(sq, cots, x.shape[0]), clip_norm) * weights)
    if key is None:
        return grads
    std = noise_multiplier * jnp.where(clip_norm > 0, clip_norm, 0) * noise_scale
    return jax.tree_util.tree_map(jnp.add, grads, gaussian_noise(key, grads, std))


def gaussian_noise(key, like, std):
    """A pytree shaped like ``like``: independent N(0, std^2) on every coordinate.

    One draw of n = (number of coordinates) normals, ``std *
    jax.random.normal(key, (n,))``, cut into the leaves in
    ``jax.tree_util.tree_leaves`` order (each slice reshaped to its leaf and
    cast to its dtype). A single draw costs one random-bits pass whatever
    the number of leaves; a key per leaf would add a split and a separate
    pass for each.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> z = gaussian_noise(jax.random.key(0), [{"W": jnp.zeros((2, 3)), "b": jnp.zeros(3)}], 0.5)
        >>> z[0]["W"].shape, z[0]["b"].shape
        ((2, 3), (3,))
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if not leaves:
        return like
    sizes = [int(np.prod(v.shape)) for v in leaves]
    z = std * jax.random.normal(key, (sum(sizes),), jnp.result_type(*leaves))
    ends = np.cumsum(sizes)
    return treedef.unflatten([z[e - n:e].reshape(v.shape).astype(v.dtype)
                              for v, n, e in zip(leaves, sizes, ends)])


def _clipped_grad_traced(params, x, y, clip_norm, noise_multiplier, key, *, view, loss):
    """The DP-SGD gradient for validated arrays: the mean of the clipped g_i plus noise / m."""
    m = x.shape[0]
    dtype = _validate.network_dtype(params)
    clip_norm, noise_multiplier = (jnp.asarray(v, dtype) for v in (clip_norm, noise_multiplier))
    w = jnp.full((m,), 1 / m, dtype=clip_norm.dtype)
    grads = clipped_sum_from_arrays(params, x, y, clip_norm, noise_multiplier, key, view=view,
                                    loss=loss, weights=w, noise_scale=1 / m)
    return view.grads(grads)


# Jitted, with the input checks run while tracing (once per shapes/dtypes/config).
_per_example_grads = _validate.jit_with_checks(per_example_grads_from_arrays)
_per_example_grad_norms = _validate.jit_with_checks(per_example_grad_norms_from_arrays)
_clipped_grad = _validate.jit_with_checks(_clipped_grad_traced)


def per_example_grads(params, batch, *, activations=None, network=None, loss, key=None):
    """Each example's own gradient: dL_i/dW^l = outer(a_i^{l-1}, delta_i^l), dL_i/db^l = delta_i^l.

    L_i is example i's own loss: no 1/m and no l2 term. Equal to
    ``jax.vmap(jax.grad(L_i))`` over the examples, from one backward pass.

    Args:
      params: list of ``{"W": (n_{l-1}, n_l), "b": (n_l,)}`` dicts, or a
        network's params.
      batch: ``(x, y)``, x (m, n_0) (or (m, *input_shape)), y (m, n_L) (or
        integer labels (m,) for ``softmax_cross_entropy``).
      activations: one name or :class:`~functional_bp.Activation` per layer, or
      network: a :class:`functional_bp.layers.Sequential` (no layer may
        couple examples).
      loss: a loss name or :class:`~functional_bp.Loss`.
      key: a ``jax.random`` key for Dropout layers (None: evaluation).

    Returns:
      The params structure with a leading axis m on every leaf: W^l leaves
      (m, n_{l-1}, n_l), b^l leaves (m, n_l).

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> g = fbp.per_example_grads(params, (jnp.ones((5, 3)), jnp.zeros((5, 2))),
        ...                           activations=["relu", "identity"], loss="mse")
        >>> g[0]["W"].shape, g[1]["b"].shape
        ((5, 3, 4), (5, 2))
    """
    model = _validate.resolve_model(activations, network)
    return _per_example_grads(params, batch, (key,), model, loss)


def per_example_grad_norms(params, batch, *, activations=None, network=None, loss, key=None):
    """The global L2 norm of each example's own gradient, shape (m,).

    ||g_i||^2 = sum over layers of each layer's ``sq_norms`` from its cache and
    cotangent; for the dense chain sum_l (||a_i^{l-1}||^2 + 1) ||delta_i^l||^2,
    memory O(m * sum of widths): no per-example gradient is formed.
    Arguments as in :func:`per_example_grads`.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> fbp.per_example_grad_norms(params, (jnp.ones((5, 3)), jnp.zeros((5, 2))),
        ...                            activations=["relu", "identity"], loss="mse").shape
        (5,)
    """
    model = _validate.resolve_model(activations, network)
    return _per_example_grad_norms(params, batch, (key,), model, loss)


def _known_value(v, name):
    """The value of a Python number or concrete array as a float; None when traced."""
    if isinstance(v, jax.core.Tracer):
        return None
    value = np.asarray(v)
    if value.shape != () or not (np.issubdtype(value.dtype, np.floating)
                                 or np.issubdtype(value.dtype, np.integer)) \
            or isinstance(v, bool) or value.dtype == bool:
        raise TypeError(f"{name} must be a real scalar; got {v!r}")
    return float(value)


def check_privacy_args(clip_norm, noise_multiplier, key):
    """Reject every DP-SGD configuration that would silently weaken the guarantee.

    Values that are known at the call (Python numbers, NumPy or concrete JAX
    arrays) are checked: ``clip_norm`` > 0 (``inf`` means no clipping),
    ``noise_multiplier`` >= 0 and finite, and not both ``clip_norm=inf`` and
    noise (infinite noise). A missing ``key`` is an error whenever the noise
    can be non-zero, i.e. unless ``noise_multiplier`` is known to be 0: an
    array or traced ``noise_multiplier`` always needs a key. A traced
    ``clip_norm`` cannot be checked; :func:`clip_factors` then treats a value
    <= 0 or NaN as 0 (a zero step, never NaN and never uphill).
    """
    C = _known_value(clip_norm, "clip_norm")
    sigma = _known_value(noise_multiplier, "noise_multiplier")
    if C is not None and not C > 0:
        raise ValueError(
            f"clip_norm must be > 0 (inf for no clipping); got {C}: pass the largest "
            "per-example gradient norm to keep, e.g. clip_norm=1.0"
        )
    if sigma is not None and not (sigma >= 0 and np.isfinite(sigma)):
        raise ValueError(f"noise_multiplier must be finite and >= 0; got {sigma}")
    if C == np.inf and sigma is not None and sigma > 0:
        raise ValueError(
            "clip_norm=inf (no clipping) with noise_multiplier > 0 asks for infinite "
            "noise: the noise scale is noise_multiplier * clip_norm; pass a finite clip_norm"
        )
    if key is None and sigma != 0:
        shown = "an array or traced value" if sigma is None else sigma
        raise ValueError(
            f"noise_multiplier ({shown}) may be non-zero, and key is None: the DP noise "
            "needs a random key; pass key=jax.random.key(...) (or noise_multiplier=0.0 "
            "for clipping without noise)"
        )


def clipped_grad(params, batch, *, activations=None, network=None, loss, clip_norm,
                 noise_multiplier=0.0, key=None):
    """The DP-SGD gradient, as one weighted backward pass.

    (1/m) [sum_i g_i min(1, C / ||g_i||) + N(0, (noise_multiplier * C)^2 I)]
    with C = ``clip_norm`` and g_i example i's own gradient (no l2). The clip
    factors c_i = C / max(||g_i||, C) scale the rows of the deltas:
    dW^l = A^{l-1,T} (c/m ⊙ G^l). An example whose gradient is zero gets
    c_i = 1 (no 0/0).

    Args:
      params, batch, activations, loss: as in :func:`per_example_grads`.
      clip_norm: C > 0; ``inf`` means no clipping (exactly). Under a user's
        ``jax.jit`` a traced C cannot be checked: a traced C <= 0 or NaN gives
        a zero step (see :func:`clip_factors`), never NaN or an uphill step.
      noise_multiplier: the noise standard deviation in units of C. ``key``
        is required unless it is known to be 0 (a Python number or concrete
        array equal to 0): an array or traced value always needs a key.
      key: a ``jax.random`` key for the Gaussian noise (one independent
        normal per parameter); Dropout layers, if any, draw their masks from
        ``jax.random.fold_in(key, 1)``. With ``key=None`` no noise is added
        (and Dropout is off).

    Returns:
      Params-shaped gradients.

    Raises:
      ValueError: ``clip_norm`` <= 0 or NaN, ``noise_multiplier`` < 0 or not
        finite (checked where the values are known), infinite noise, or noise
        that may be non-zero without a key.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> g = fbp.clipped_grad(params, (jnp.ones((5, 3)), jnp.zeros((5, 2))),
        ...                      activations=["relu", "identity"], loss="mse",
        ...                      clip_norm=1.0, noise_multiplier=1.1,
        ...                      key=jax.random.key(1))
        >>> g[0]["W"].shape
        (3, 4)
    """
    check_privacy_args(clip_norm, noise_multiplier, key)
    model = _validate.resolve_model(activations, network)
    return _clipped_grad(params, batch, (clip_norm, noise_multiplier, key), model, loss)
