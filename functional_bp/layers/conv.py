"""Conv1D and Conv2D: cross-correlation over channels-last inputs, the backward by hand.

Shapes (1-D; 2-D adds a second spatial axis everywhere, kernel (k_h, k_w))::

    X (m, L, c_in)   W (k, c_in, c_out)   b (c_out,)   Y (m, T, c_out)

with stride s, dilation d and padding (lo, hi): X is padded with zeros to
Xp (length L + lo + hi, Xp[u] = X[u - lo]) and
T = floor((L + lo + hi - (k - 1) d - 1) / s) + 1.

Forward (cross-correlation, as ``jax.lax.conv_general_dilated`` with
NWC/WIO)::

    Y[n, t, o] = sum_{j, c} Xp[n, t s + j d, c] W[j, c, o] + b[o]

Index form and matrix form, side by side. Unfold example n into the patch
matrix P_n (T, k c_in), row t = the k taps Xp[n, t s + j d, :] laid end to
end (:func:`unfold`); then the layer is a Dense layer on patches,
Y_n = P_n W_mat + b with W_mat = W reshaped to (k c_in, c_out). With
G = dJ/dY, the tensor chain rule dJ/dX_k = sum_j dJ/dY_j dY_j/dX_k gives::

    index form                                            matrix form
    dW[j, c, o] = sum_{n, t} Xp[n, t s + j d, c] G[n, t, o]   dW_mat = sum_n P_n^T G_n
    db[o]       = sum_{n, t} G[n, t, o]                      db = 1^T G (all rows)
    dXp[n, v, c] = sum_{t, j: t s + j d = v} sum_o G[n, t, o] W[j, c, o]
                                                          dP_n = G_n W_mat^T, folded back
    dX[n, u]    = dXp[n, u + lo]                          (the padding is dropped)

- dW is a correlation of the (padded) input with the cotangent: the cotangent
  plays the kernel, its taps s apart (rhs dilation s), sliding d at a time
  (window stride d); the examples are summed as the contracted "feature" axis.
- dX is a transposed convolution: spread G out with s - 1 zeros between
  entries (lhs dilation s; the stride), pad it by (k - 1) d - lo at the low
  end, and correlate it with the kernel flipped in space and transposed in
  its channels (W[k - 1 - j, c, o] seen as (k, c_out, c_in)), at dilation d:
  a "full" correlation with the flipped kernel. Substituting j = k - 1 - j'
  in the index form above gives exactly that correlation.
- db sums G over examples and positions.

Each is one ``jax.lax.conv_general_dilated`` call written from these
formulas (no autodiff or transposition utility), the same primitive as the
forward.

Per example, dL_n/dW_mat = P_n^T G_n is a Dense layer's gradient on T rows,
so its squared norm (:meth:`_Conv.sq_norms`) is either
||P_n^T G_n||_F^2 = sum_j ||V_{n,j}^T G_n||^2 (the direct form, one product
per tap j on a strided view V_{n,j} of X, the patches never formed; cost
T K c_in c_out per example, K the taps) or <P_n P_n^T, G_n G_n^T> (the Gram
form over positions, cost T^2 (K c_in + c_out); or, with P_n P_n^T summed
from windows of the input's own Gram, S^2 c_in + T^2 (K + c_out) over the S
input positions read), plus ||1^T G_n||^2 for the bias; each layer takes the
cheapest for its shapes (:meth:`_Conv.norm_form`). In the direct form the
clipped gradient reuses each example's P_n^T G_n (:meth:`_Conv.clipping_trace`).

Padding: "VALID" (none), "SAME" (XLA's rule: total
max((ceil(n/s) - 1) s + (k - 1) d + 1 - n, 0), lo = total // 2, hi the rest),
an int p (p on both sides of every spatial axis), or explicit (lo, hi) pairs,
one per spatial axis (for Conv1D a single pair is accepted too).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from functional_bp import layers as fl
    >>> conv = fl.Conv1D(4, 3, stride=2, padding="SAME")
    >>> params, out = conv.init(jax.random.key(0), (9, 2))
    >>> params["W"].shape, out
    ((3, 2, 4), (5, 4))
    >>> y, cache = conv.forward(params, jnp.ones((1, 9, 2)))
    >>> grads, dx = conv.backward(params, cache, jnp.ones_like(y))
    >>> grads["W"].shape, dx.shape
    ((3, 2, 4), (1, 9, 2))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .base import Layer, positive_int, real_number, sum_rows

_SPATIAL = {1: "W", 2: "HW"}


# --- window geometry, shared with pooling -----------------------------------------
def as_tuple(value, n: int, what: str) -> tuple:
    """An int, or n ints, as a tuple of n positive ints (else a ValueError naming ``what``)."""
    items = (value,) * n if isinstance(value, (int, np.integer)) else value
    if not (isinstance(items, (tuple, list)) and len(items) == n
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in items)):
        raise ValueError(f"{what}: a positive integer or {n} of them; got {value!r}")
    return tuple(int(v) for v in items)


def plain_ints(value):
    """An int, or a list or tuple of ints, with NumPy integers made Python ints (lists: tuples).

    Options are recorded in checkpoints as JSON, which has no NumPy types.
    """
    if isinstance(value, (int, np.integer)):
        return int(value)
    return tuple(int(v) for v in value)


def canonical_padding(padding, n: int, what: str):
    """ "VALID", "SAME", or a tuple of n (lo, hi) pairs of ints >= 0 (lists become tuples)."""
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        return padding.upper()
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
        return ((int(padding), int(padding)),) * n
    pairs = padding
    if (n == 1 and isinstance(pairs, (tuple, list)) and len(pairs) == 2
            and all(isinstance(v, (int, np.integer)) for v in pairs)):
        pairs = (pairs,)
    if (isinstance(pairs, (tuple, list)) and len(pairs) == n
            and all(isinstance(p, (tuple, list)) and len(p) == 2
                    and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                            and v >= 0 for v in p) for p in pairs)):
        return tuple((int(lo), int(hi)) for lo, hi in pairs)
    raise ValueError(
        f"{what}: 'VALID', 'SAME', an int >= 0, or {n} (low, high) pair(s) of ints >= 0; "
        f"got {padding!r}"
    )


def resolve_padding(padding, sizes, window, stride, dilation) -> tuple:
    """The (lo, hi) pair of each spatial axis; "SAME" follows XLA's rule (see the module doc)."""
    if padding == "VALID":
        return ((0, 0),) * len(sizes)
    if padding == "SAME":
        pairs = []
        for n, k, s, d in zip(sizes, window, stride, dilation):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    return tuple(padding)


def out_sizes(sizes, window, stride, dilation, pads) -> tuple:
    """T = floor((n + lo + hi - (k - 1) d - 1) / s) + 1 on each spatial axis (may be <= 0)."""
    return tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                 for n, k, s, d, (lo, hi) in zip(sizes, window, stride, dilation, pads))


def taps(window) -> list:
    """The kernel's tap indices in row-major order: (0,), (1,), ... or (0, 0), (0, 1), ..."""
    return list(itertools.product(*(range(k) for k in window)))


def read_span(T, window, stride, dilation) -> tuple:
    """The padded input positions the windows read, per axis: (T - 1) s + (k - 1) d + 1."""
    return tuple((t - 1) * s + (k - 1) * d + 1 for t, k, s, d in zip(T, window, stride, dilation))


def tap_views(x, window, stride, dilation, pads, pad_value=0.0) -> list:
    """The K = prod(window) shifted views of x, one per tap (row-major): each (m, *T, C).

    View j is ``V_j[n, t, c] = Xp[n, t s + j d, c]``, Xp being x padded with
    ``pad_value``: a strided slice of Xp, the taps' column block of the patch
    matrices.
    """
    sp = len(window)
    T = out_sizes(x.shape[1:1 + sp], window, stride, dilation, pads)
    xp = lax.pad(x, jnp.asarray(pad_value, x.dtype),
                 [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
    views = []
    for j in taps(window):
        start = [0] + [jj * d for jj, d in zip(j, dilation)] + [0]
        limit = ([x.shape[0]] + [jj * d + (t - 1) * s + 1
                                 for jj, d, t, s in zip(j, dilation, T, stride)] + [x.shape[-1]])
        views.append(lax.slice(xp, start, limit, [1, *stride, 1]))
    return views


def unfold(x, window, stride, dilation, pads, pad_value=0.0):
    """The unfolded patches: x (m, *S, C) -> (m, *T, K, C), K = prod(window) taps, row-major.

    ``[n, t, j, c] = Xp[n, t s + j d, c]``, Xp being x padded with ``pad_value``
    (the :func:`tap_views` stacked). A patch's entries (j, c) laid end to end
    are row t of the patch matrix P_n.
    """
    return jnp.stack(tap_views(x, window, stride, dilation, pads, pad_value), axis=-2)


def fold(cols, sizes, window, stride, dilation, pads):
    """The adjoint of :func:`unfold`: cols (m, *T, K, C) -> (m, *S, C), overlaps added.

    ``dX[n, u] = sum_{t, j: t s + j d = u + lo} cols[n, t, j]``: each tap's
    (T,) slab is spread s apart (interior padding s - 1), shifted to j d - lo,
    and the taps are summed; what falls in the padding is dropped (negative
    padding crops).

    Windows that do not overlap ((k - 1) d + 1 <= s on every axis, as in a
    pool whose stride is its window) need no sum: padded position v = t s + j d
    holds at most one entry, so the taps are spread d apart inside blocks of s
    (interior padding d - 1), the blocks laid end to end (a transpose and a
    reshape: v = t s + r) and the result shifted by -lo. This is one pass over
    the output instead of K padded copies added together, which XLA cannot
    always fuse (the clipped gradient's backward reads the same cotangent
    twice).
    """
    sp = len(window)
    T = cols.shape[1:1 + sp]
    zero = jnp.zeros((), cols.dtype)
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    if all(span <= s for span, s in zip(spans, stride)):
        m, c = cols.shape[0], cols.shape[-1]
        blocks = lax.pad(cols.reshape(m, *T, *window, c), zero,
                         [(0, 0, 0)] * (1 + sp)
                         + [(0, s - span, d - 1) for s, span, d in zip(stride, spans, dilation)]
                         + [(0, 0, 0)])                              # (m, *T, *s, C)
        order = [0, *(a for i in range(sp) for a in (1 + i, 1 + sp + i)), 1 + 2 * sp]
        v = blocks.transpose(order).reshape(m, *(t * s for t, s in zip(T, stride)), c)
        return lax.pad(v, zero, [(0, 0, 0)] + [(-lo, n + lo - t * s, 0) for n, t, s, (lo, _)
                                               in zip(sizes, T, stride, pads)] + [(0, 0, 0)])
    out = None
    for i, j in enumerate(taps(window)):
        config = [(0, 0, 0)]
        for jj, d, t, s, n, (lo, _) in zip(j, dilation, T, stride, sizes, pads):
            low = jj * d - lo
            config.append((low, n - low - ((t - 1) * s + 1), s - 1))
        config.append((0, 0, 0))
        part = lax.pad(cols[..., i, :], zero, config)
        out = part if out is None else out + part
    return out


def check_window(layer, input_shape, where, window, stride, dilation, what="kernel"):
    """Raise unless input_shape is (*spatial, channels) with room for one window."""
    sp = len(window)
    name = type(layer).__name__
    if len(input_shape) != sp + 1:
        axes = "(length, channels)" if sp == 1 else "(height, width, channels)"
        hint = ""
        if len(input_shape) == sp:
            hint = (f": add a channel axis with Reshape({(*input_shape, 1)}) "
                    f"(text form reshape:{':'.join(map(str, (*input_shape, 1)))})")
        raise ValueError(f"{where} ({name}): needs inputs of shape {axes} per example; got "
                         f"{tuple(input_shape)}{hint}")
    pads = resolve_padding(layer.padding, input_shape[:sp], window, stride, dilation)
    T = out_sizes(input_shape[:sp], window, stride, dilation, pads)
    if min(T) < 1:
        span = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))
        raise ValueError(
            f"{where} ({name}): the {what} spans {span} (dilation included) but the padded "
            f"input is only {tuple(n + lo + hi for n, (lo, hi) in zip(input_shape, pads))}: "
            f"use a smaller {what}, padding='SAME', or a longer input"
        )
    return pads, T


# --- the layers ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Conv(Layer):
    features: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = "VALID"
    dilation: Any = 1
    scale: float = 2.0

    ndim = 0  # spatial axes, set by the subclasses
    decayed_params = ("W",)  # weight decay on the kernel, not the bias

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "features", positive_int(f"{name}(features)", self.features))
        object.__setattr__(self, "scale", real_number(
            f"{name}(scale)", self.scale, "a finite number >= 0 (W ~ N(0, scale / fan_in))",
            lambda v: v >= 0))
        for field in ("kernel_size", "stride", "dilation"):
            value = getattr(self, field)
            as_tuple(value, self.ndim, f"{name}({field})")
            object.__setattr__(self, field, plain_ints(value))
        object.__setattr__(self, "padding",
                           canonical_padding(self.padding, self.ndim, f"{name}(padding)"))

    # static geometry
    def _geometry(self):
        n = self.ndim
        return (as_tuple(self.kernel_size, n, ""), as_tuple(self.stride, n, ""),
                as_tuple(self.dilation, n, ""))

    def _dims(self, lhs, rhs, out):
        return lax.conv_dimension_numbers((1,) * (self.ndim + 2), (1,) * (self.ndim + 2),
                                          (lhs, rhs, out))

    def check_input(self, input_shape, where):
        check_window(self, input_shape, where, *self._geometry())

    def init(self, key, input_shape, dtype=jnp.float32):
        k, s, d = self._geometry()
        _, T = check_window(self, input_shape, "init", k, s, d)
        c_in = input_shape[-1]
        fan_in = math.prod(k) * c_in
        W = (self.scale / fan_in) ** 0.5 * jax.random.normal(key, (*k, c_in, self.features), dtype)
        return {"W": W, "b": jnp.zeros((self.features,), dtype)}, (*T, self.features)

    def forward(self, params, x, key=None):
        k, s, d = self._geometry()
        sp = _SPATIAL[self.ndim]
        pads = resolve_padding(self.padding, x.shape[1:-1], k, s, d)
        y = lax.conv_general_dilated(x, params["W"], s, pads, rhs_dilation=d,
                                     dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"))
        return y + params["b"].reshape((1,) * (y.ndim - 1) + (-1,)), x  # the backward needs X

    def backward(self, params, cache, dy):
        x, G, W = cache, dy, params["W"]
        k, s, d = self._geometry()
        sp = _SPATIAL[self.ndim]
        S, T = x.shape[1:-1], G.shape[1:-1]
        pads = resolve_padding(self.padding, S, k, s, d)
        # dW[j, c, o] = sum_{n, t} Xp[n, t s + j d, c] G[n, t, o]: X (examples as the
        # contracted feature axis, channels as the batch axis) correlated with G as the
        # kernel, its taps s apart, sliding d at a time; the high padding ends where the
        # last window does (entries past it never reached Y).
        dW_pads = [(lo, (t - 1) * ss + (kk - 1) * dd + 1 - n - lo)
                   for n, kk, ss, dd, t, (lo, _) in zip(S, k, s, d, T, pads)]
        dW = lax.conv_general_dilated(x, G, d, dW_pads, rhs_dilation=s,
                                      dimension_numbers=(f"C{sp}N", f"I{sp}O", f"{sp}NC"))
        # db[o] = sum_{n, t} G[n, t, o]
        db = jnp.sum(G, axis=tuple(range(G.ndim - 1)))
        # dX[n, u, c] = sum_{t, j: t s + j d = u + lo} sum_o G[n, t, o] W[j, c, o]:
        # G spread s apart (lhs dilation s), padded by (k - 1) d - lo, correlated with the
        # flipped kernel W[k - 1 - j] whose channels swap roles (c_out in, c_in out).
        dx_pads = [((kk - 1) * dd - lo, n + lo - (t - 1) * ss - 1)
                   for n, kk, ss, dd, t, (lo, _) in zip(S, k, s, d, T, pads)]
        W_flipped = jnp.flip(W, axis=tuple(range(self.ndim)))
        dx = lax.conv_general_dilated(G, W_flipped, (1,) * self.ndim, dx_pads, lhs_dilation=s,
                                      rhs_dilation=d,
                                      dimension_numbers=(f"N{sp}C", f"{sp}OI", f"N{sp}C"))
        return {"W": dW, "b": db}, dx

    def patches(self, x):
        """The patch matrices P_n: (m, T_total, K c_in), rows in row-major position order."""
        k, s, d = self._geometry()
        pads = resolve_padding(self.padding, x.shape[1:-1], k, s, d)
        cols = unfold(x, k, s, d, pads)
        return cols.reshape(x.shape[0], -1, math.prod(k) * x.shape[-1])

    def norm_costs(self, input_shape) -> dict:
        """Multiply-adds per example of the three forms of :meth:`sq_norms`, for one example's shape.

        With P output positions, K = prod(kernel_size) taps, c_in and c_out
        channels, and S the input positions the windows read (padding
        included; (T - 1) s + (k - 1) d + 1 along each axis)::

            direct      P K c_in c_out                each example's gradient
            gram        P^2 (K c_in + c_out)          U U^T from the unfolded patches
            input_gram  S^2 c_in + K P^2 + P^2 c_out  U U^T from the input's Gram

        >>> from functional_bp import layers as fl
        >>> fl.Conv2D(64, 3, padding="SAME").norm_costs((7, 7, 64))
        {'direct': 1806336, 'gram': 1536640, 'input_gram': 595177}
        """
        k, s, d = self._geometry()
        pads = resolve_padding(self.padding, input_shape[:-1], k, s, d)
        T = out_sizes(input_shape[:-1], k, s, d, pads)
        P, S = math.prod(T), math.prod(read_span(T, k, s, d))
        K, c_in, c_out = math.prod(k), input_shape[-1], self.features
        return {"direct": P * K * c_in * c_out, "gram": P * P * (K * c_in + c_out),
                "input_gram": S * S * c_in + K * P * P + P * P * c_out}

    def norm_form(self, input_shape) -> str:
        """``"direct"``, ``"gram"`` or ``"input_gram"``: the cheapest of :meth:`norm_costs`.

        A tie goes to the earlier in that order.

        >>> from functional_bp import layers as fl
        >>> fl.Conv2D(32, 3, padding="SAME").norm_form((28, 28, 1))   # 784 positions
        'direct'
        >>> fl.Conv1D(25, 3, stride=2, padding=1).norm_form((10, 25))  # 5 positions
        'gram'
        >>> fl.Conv2D(64, 3, padding="SAME").norm_form((7, 7, 64))     # stride 1, 49 positions
        'input_gram'
        """
        costs = self.norm_costs(input_shape)
        return min(costs, key=costs.get)  # dicts keep their order: ties go to the earlier

    def sq_norms(self, params, cache, dy, form=None):
        """||dL_n/dW||^2 + ||dL_n/db||^2 per example, (m,), from X (the cache) and G = dy.

        Example n's weight gradient is U_n^T G_n, U_n (P, K c_in) its patch
        matrix and G_n (P, c_out) its cotangent; the tap views V_{n,j} (P,
        c_in) (:func:`tap_views`) are U_n's column blocks, so U_n^T G_n is
        the stack of the V_{n,j}^T G_n. Three exact forms (costs in
        :meth:`norm_costs`):

        - direct: ||U_n^T G_n||^2 = sum_j ||V_{n,j}^T G_n||^2, one batched
          (c_in, P) x (P, c_out) product per tap on a strided view of X
          (:meth:`example_grads`: each example's gradient, K c_in c_out
          numbers, without unfolding the patches);
        - gram and input_gram: <U_n U_n^T, G_n G_n^T>, both (P, P) over
          positions; they keep the cross terms t != t' (overlapping or not,
          every pair of positions counts) and differ in how U_n U_n^T is
          formed (:meth:`patch_gram`).

        ``form`` None takes :meth:`norm_form`'s choice for X's shape. The bias
        adds ||1^T G_n||^2. (A convolution with one feature group per example
        computes the direct form too, but XLA's CPU backend runs it slower
        than the per-tap products.)
        """
        x, m = cache, cache.shape[0]
        form = self.norm_form(x.shape[1:]) if form is None else form
        G = dy.reshape(m, -1, dy.shape[-1])                               # (m, P, c_out)
        if form in ("gram", "input_gram"):
            w = jnp.sum(self.patch_gram(x, form) * jnp.einsum("mto,mso->mts", G, G), axis=(1, 2))
        elif form == "direct":
            w = sum_rows(self.example_grads(x, dy))
        else:
            raise ValueError(f"{type(self).__name__}.sq_norms(form): 'direct', 'gram', "
                             f"'input_gram' or None; got {form!r}")
        return w + sum_rows(jnp.sum(G, axis=1))

    def patch_gram(self, x, form="gram"):
        """U_n U_n^T for every example, (m, P, P), positions in row-major order.

        - ``"gram"``: from the unfolded patches U (m, P, K c_in):
          P^2 K c_in multiply-adds per example;
        - ``"input_gram"``: entry (t, t') is sum_j <Xp[t s + j d], Xp[t' s + j d]>,
          the sum over the K taps of strided windows of the padded input's
          own Gram XX[u, u'] = <Xp[u], Xp[u']> (S x S over the S positions
          the windows read): S^2 c_in + K P^2 per example, far less than the
          patches' when the stride is 1 and the taps many.
        """
        k, s, d = self._geometry()
        pads = resolve_padding(self.padding, x.shape[1:-1], k, s, d)
        m, c = x.shape[0], x.shape[-1]
        if form == "gram":
            U = jnp.concatenate([v.reshape(m, -1, c) for v in tap_views(x, k, s, d, pads)],
                                axis=-1)                                  # (m, P, K c_in)
            return jnp.einsum("mtk,msk->mts", U, U)
        T = out_sizes(x.shape[1:-1], k, s, d, pads)
        span = read_span(T, k, s, d)
        # Xp: padded, and cropped where no window reads (a negative high padding)
        xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [
            (lo, n_read - n - lo, 0) for n, n_read, (lo, _) in zip(x.shape[1:-1], span, pads)]
            + [(0, 0, 0)]).reshape(m, -1, c)
        XX = jnp.einsum("muc,mvc->muv", xp, xp).reshape(m, *span, *span)
        A = None
        for j in taps(k):
            start = [jj * dd for jj, dd in zip(j, d)]
            limit = [jj * dd + (t - 1) * ss + 1 for jj, dd, t, ss in zip(j, d, T, s)]
            window = lax.slice(XX, [0, *start, *start], [m, *limit, *limit], [1, *s, *s])
            A = window if A is None else A + window
        return A.reshape(m, math.prod(T), math.prod(T))

    def example_grads(self, x, dy):
        """Each example's own dL_n/dW, (m, *kernel_size, c_in, c_out): the direct form's blocks.

        Tap j's block is V_{n,j}^T G_n, V_{n,j} (P, c_in) the strided view of
        X for that tap (:func:`tap_views`) and G_n (P, c_out) the example's
        cotangent: one batched product per tap, P c_in c_out multiply-adds
        per example each, without unfolding the patches.
        """
        k, s, d = self._geometry()
        m, c_in, c_out = x.shape[0], x.shape[-1], dy.shape[-1]
        views = tap_views(x, k, s, d, resolve_padding(self.padding, x.shape[1:-1], k, s, d))
        G = dy.reshape(m, -1, c_out)
        blocks = [jnp.einsum("mtc,mto->mco", v.reshape(m, -1, c_in), G) for v in views]
        return jnp.stack(blocks, axis=1).reshape(m, *k, c_in, c_out)

    def clipping_trace(self, params, cache, dy):
        """The norms and c -> the clipped sum; in the direct form without a second backward.

        The direct form has formed each example's dL_n/dW (:meth:`example_grads`),
        so the clipped sum is sum_n c_n dL_n/dW (m K c_in c_out multiply-adds)
        instead of the weight gradient's convolution again on the scaled
        cotangent (P K c_in c_out per example); db = sum_n c_n 1^T G_n. The
        Gram form keeps the default (:meth:`Layer.clipping_trace`).
        """
        if self.norm_form(cache.shape[1:]) != "direct":
            return super().clipping_trace(params, cache, dy)
        g = self.example_grads(cache, dy)                                 # (m, *k, c_in, c_out)
        g_b = jnp.sum(dy.reshape(dy.shape[0], -1, dy.shape[-1]), axis=1)  # (m, c_out)
        return sum_rows(g) + sum_rows(g_b), lambda c: {"W": jnp.tensordot(c, g, axes=1),
                                                       "b": c @ g_b}


@dataclasses.dataclass(frozen=True)
class Conv1D(_Conv):
    """1-D cross-correlation: (m, L, c_in) -> (m, T, features); W (k, c_in, c_out), b (c_out,).

    Args:
      features: c_out, the number of output channels.
      kernel_size: k.
      stride: s (default 1).
      padding: "VALID" (default), "SAME", an int, or a (lo, hi) pair.
      dilation: d (default 1): the taps are d apart.
      scale: W ~ N(0, scale / (k c_in)) at init ("he": 2).
    """

    ndim = 1


@dataclasses.dataclass(frozen=True)
class Conv2D(_Conv):
    """2-D cross-correlation: (m, H, W, c_in) -> (m, T_h, T_w, features); W (k_h, k_w, c_in, c_out).

    Args as :class:`Conv1D`, each an int or a pair (height, width); explicit
    padding is two (lo, hi) pairs.
    """

    ndim = 2
