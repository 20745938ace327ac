"""A gradient checker: a hand-derived gradient against ``jax.grad``, leaf by leaf.

This is how a user verifies their own activation, loss, layer or backward
pass. For each leaf of the gradient pytree (``layer 1 W``, ``layer 1 b``, ...
for an MLP's params; ``layer 3.2 W`` for the W of the second layer inside a
network's third layer), the error is the one the library's own test suite uses::

    error = max |ours - ref| / max |ref|      (max |ours - ref| when ref == 0)

with ``ref = jax.grad(objective_fn)(params, *args)``. A leaf passes when its
error is at most the tolerance: by default 1e-10 for float64 leaves and 2e-5
for float32 leaves. A correct hand-derived gradient differs from autodiff by
rounding only (a few hundred ulps of the leaf's largest entry at most); a
wrong equation is off by O(1).

Optionally (``finite_differences=True``) each leaf is also checked against
central differences of the objective, computed in float64 (params and
floating arguments are cast up under ``jax.enable_x64``): along
``fd_directions`` random unit directions v of that leaf,

    fd = (J(p + h v) - J(p - h v)) / (2 h),   error = |fd - <g, v>| / ||g||

with ``g`` the hand-derived gradient evaluated in float64. Truncation error is
O(h^2) and rounding O(eps / h), so with h = 1e-5 a smooth objective gives
errors near 1e-9; the default tolerance is 1e-6. Central differences are not
meaningful across a kink (relu at z = 0): use them with smooth activations.
This check does not rely on ``jax.grad`` at all, so it also catches an
objective whose autodiff is itself wrong (a custom rule somewhere inside it).

Two ways to call it: with any pair of functions,
``check_gradients(grad_fn, objective_fn, params, *args)``; or, for the
library's own hand-derived backward pass, ``check_gradients(params, batch,
network=net, loss=...)`` (or ``activations=`` for the dense chain), which
checks :func:`functional_bp.grad` against ``jax.grad`` of
:func:`functional_bp.objective` and adds a row ``dJ/dX`` for the input
gradient (the first layer's backward ``dx``, which no parameter gradient
depends on). A layer whose backward is wrong shows up in the rows of its own
parameters and of every layer before it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-5}
"""Default tolerance per dtype of the reference leaf."""

FD_RTOL = 1e-6
"""Default tolerance of the float64 central-difference check."""

ZERO_NOTE = "both zero"
"""The note of a row whose gradient and reference are exactly zero."""

INPUT_ROW = "dJ/dX"
"""The name of the input-gradient row that the ``network=``/``activations=`` form adds."""


@dataclass(frozen=True)
class GradientRow:
    """The comparison for one leaf.

    Attributes:
      name: a readable leaf name, e.g. ``"layer 2 W"``.
      shape: the reference leaf's shape.
      dtype: the reference leaf's dtype name.
      max_abs_error: max |ours - ref| (inf if shapes differ or ours is not finite).
      rel_error: max_abs_error / max |ref| (absolute when ref is all zero).
      tolerance: the tolerance the relative error is held to.
      fd_error: worst central-difference error, or None when not run.
      fd_tolerance: its tolerance, or None when not run.
      note: what went wrong beyond the numbers (a shape mismatch, NaN), or
        ``"both zero"`` when ours and the reference are exactly zero (a pass
        that proves little: a dead unit, a saturated loss), or "".
    """

    name: str
    shape: tuple
    dtype: str
    max_abs_error: float
    rel_error: float
    tolerance: float
    fd_error: float | None = None
    fd_tolerance: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        fd_ok = self.fd_error is None or self.fd_error <= self.fd_tolerance
        return self.rel_error <= self.tolerance and fd_ok


@dataclass(frozen=True)
class GradientReport:
    """The result of :func:`check_gradients`: one :class:`GradientRow` per leaf.

    ``str(report)`` is a table; :meth:`raise_if_failed` raises AssertionError
    with that table when any leaf is over its tolerance.
    """

    rows: tuple

    @property
    def ok(self) -> bool:
        """Whether every leaf passes (both checks, when finite differences ran)."""
        return all(r.ok for r in self.rows)

    @property
    def max_error(self) -> float:
        """The largest relative error against ``jax.grad`` over all leaves."""
        return max((r.rel_error for r in self.rows), default=0.0)

    @property
    def failed(self) -> list:
        """The rows that are over their tolerance."""
        return [r for r in self.rows if not r.ok]

    def __str__(self) -> str:
        with_fd = any(r.fd_error is not None for r in self.rows)
        header = ["leaf", "shape", "dtype", "max |error|", "rel. error", "tolerance"]
        if with_fd:
            header += ["fd error", "fd tol."]
        header += ["ok"]
        body = []
        for r in self.rows:
            cells = [r.name, _shape_str(r.shape), r.dtype, _num(r.max_abs_error),
                     _num(r.rel_error), _num(r.tolerance)]
            if with_fd:
                cells += [_num(r.fd_error), _num(r.fd_tolerance)]
            cells += [("yes" if r.ok else "NO") + (f" ({r.note})" if r.note else "")]
            body.append(cells)
        widths = [max(len(row[j]) for row in [header] + body) for j in range(len(header))]
        right = {3, 4, 5, 6, 7} & set(range(len(header) - 1))

        def line(cells):
            return "  ".join(
                c.rjust(w) if j in right else c.ljust(w)
                for j, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        lines = [line(header), line(["-" * w for w in widths])]
        lines += [line(cells) for cells in body]
        n, bad = len(self.rows), len(self.failed)
        what = f"{n} leaves"
        if any(r.name == INPUT_ROW for r in self.rows):  # the library form's dJ/dX row
            what = f"{n - 1} leaves and {INPUT_ROW}"
        summary = (
            f"all {what} within tolerance" if bad == 0
            else f"{bad} of {what} over tolerance"
        )
        lines.append(f"{summary} (max rel. error {self.max_error:.3g} against jax.grad)")
        zero = [r.name for r in self.rows if r.note == ZERO_NOTE]
        if zero:
            lines.append(f"note: {len(zero)} of {n} are exactly zero on both sides, which "
                         "proves nothing about them (dead units, or a loss saturated on "
                         "these rows): check on other rows or parameters")
        return "\n".join(lines)

    def raise_if_failed(self) -> "GradientReport":
        """Raise AssertionError with the table if any leaf fails; else return self."""
        if not self.ok:
            raise AssertionError("gradient check failed:\n" + str(self))
        return self


def _num(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def leaf_name(path) -> str:
    """A readable name for a params leaf, from its pytree path.

    Layer indices count from 1; a layer inside a container (a ``Residual`` or
    ``Sequential``) is numbered after it with a dot: ``(SequenceKey(0),
    DictKey('W'))`` -> ``"layer 1 W"``, ``(SequenceKey(2), SequenceKey(1),
    DictKey('W'))`` -> ``"layer 3.2 W"``. Any other path is written readably
    (``"enc[0]"``, ``"scale"``).

    Example::

        >>> from jax.tree_util import DictKey, SequenceKey
        >>> leaf_name((SequenceKey(2), SequenceKey(1), DictKey("W")))
        'layer 3.2 W'
    """
    kinds = [type(k).__name__ for k in path]
    if len(kinds) >= 2 and kinds[-1] == "DictKey" and \
            all(k == "SequenceKey" for k in kinds[:-1]):
        where = ".".join(str(k.idx + 1) for k in path[:-1])
        return f"layer {where} {path[-1].key}"
    if not path:
        return "params"
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.SequenceKey):
            parts.append(f"[{k.idx}]")
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(f".{k.key}")
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(f".{k.name}")
        else:
            parts.append(str(k))
    return "".join(parts).lstrip(".")


def _errors(ours, ref) -> tuple[float, float, str]:
    """(max abs error, relative error, note) of one leaf, as in the test suite."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf"), float("inf"), f"shape {_shape_str(ours.shape)}"
    if not np.all(np.isfinite(ours)):
        return float("inf"), float("inf"), "not finite"
    diff = float(np.max(np.abs(ours - ref), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    note = ZERO_NOTE if scale == 0 and diff == 0 and ref.size else ""
    return diff, (diff / scale if scale > 0 else diff), note


def _default_rtol(dtype, name) -> float:
    try:
        return DEFAULT_RTOL[jnp.dtype(dtype)]
    except KeyError:
        raise TypeError(
            f"{name}: no default tolerance for dtype {jnp.dtype(dtype).name} (defaults "
            f"exist for {sorted(d.name for d in DEFAULT_RTOL)}); pass rtol explicitly"
        ) from None


def _to_float64(tree):
    def cast(v):
        if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating):
            return jnp.asarray(v, dtype=jnp.float64)
        return v

    return jax.tree_util.tree_map(cast, tree)


def _finite_difference_errors(grad_fn, objective_fn, params, args, *, key, directions,
                              step) -> list[float]:
    """Worst |fd - <g, v>| / ||g|| per leaf, all in float64."""
    with jax.enable_x64(True):
        params64, args64 = _to_float64(params), _to_float64(tuple(args))
        g_leaves = jax.tree_util.tree_leaves(grad_fn(params64, *args64))
        p_leaves, treedef = jax.tree_util.tree_flatten(params64)
        errors = []
        for i, (p, g) in enumerate(zip(p_leaves, g_leaves)):
            g = jnp.asarray(g, jnp.float64)
            scale = float(jnp.linalg.norm(g))
            worst = 0.0
            for k in jax.random.split(jax.random.fold_in(key, i), directions):
                v = jax.random.normal(k, p.shape, jnp.float64)
                v = v / jnp.maximum(jnp.linalg.norm(v), 1e-300)

                def J(t):
                    leaves = list(p_leaves)
                    leaves[i] = p + t * v
                    return float(objective_fn(treedef.unflatten(leaves), *args64))

                fd = (J(step) - J(-step)) / (2 * step)
                err = abs(fd - float(jnp.vdot(g, v)))
                worst = max(worst, err / scale if scale > 0 else err)
            errors.append(worst)
    return errors


def check_gradients(
    *args,
    network=None,
    activations=None,
    loss=None,
    l2: float = 0.0,
    dropout_key=None,
    rtol: float | None = None,
    finite_differences: bool = False,
    fd_directions: int = 3,
    fd_step: float = 1e-5,
    fd_rtol: float = FD_RTOL,
    key=None,
) -> GradientReport:
    """Compare a hand-derived gradient with ``jax.grad`` of the objective, leaf by leaf.

    Two forms::

        check_gradients(grad_fn, objective_fn, params, *args)          # any gradient
        check_gradients(params, batch, network=net, loss=..., l2=...)  # the library's

    The first compares ``grad_fn(params, *args)`` with
    ``jax.grad(objective_fn)(params, *args)``. The second (``network=`` or
    ``activations=``) compares :func:`functional_bp.grad` with ``jax.grad`` of
    :func:`functional_bp.objective` (the plain-JAX reference), and adds a row
    ``dJ/dX``: the hand-derived input gradient (``backprop(...).input_grad``)
    against ``jax.grad`` of the objective with respect to x (for floating x).

    Per leaf: error = max|ours - ref| / max|ref| against the tolerance ``rtol``
    (default by the reference leaf's dtype: float64 1e-10, float32 2e-5).
    With ``finite_differences=True``, each parameter leaf is also checked in
    float64 against central differences (J(p + h v) - J(p - h v)) / 2h along
    ``fd_directions`` random unit directions v (see the module docstring).

    Args:
      *args: ``grad_fn, objective_fn, params, *rest``: ``grad_fn(params,
        *rest) -> grads`` (same pytree structure as params) and
        ``objective_fn(params, *rest) -> scalar`` (differentiable by JAX);
        params any pytree of floating arrays; ``rest`` passed to both
        unchanged (a batch, for instance). With ``network=`` or
        ``activations=``: ``params, batch``, as for :func:`functional_bp.grad`.
      network: a :class:`functional_bp.layers.Sequential`: check the
        library's backward pass through this network's layers, or
      activations: one activation per layer: the same for the dense chain.
      loss: with ``network``/``activations``: the loss name or object.
      l2: with ``network``/``activations``: the weight decay.
      dropout_key: with ``network``: the ``jax.random`` key of the Dropout
        layers (None: evaluation mode, no dropout), the same for both sides.
      rtol: one tolerance for every leaf, overriding the dtype defaults.
      finite_differences: also run the float64 central-difference check.
      fd_directions: random directions per leaf for that check.
      fd_step: the step h.
      fd_rtol: the tolerance of that check.
      key: a ``jax.random`` key for the directions (default ``key(0)``).

    Returns:
      A :class:`GradientReport`: ``rows``, ``ok``, ``max_error``; print it for
      a table, or call ``raise_if_failed()``.

    Raises:
      TypeError: the arguments fit neither form; the gradient's pytree
        structure differs from the reference's; or a leaf's dtype has no
        default tolerance and ``rtol`` is None.

    Example::

        >>> import functools, jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> batch = (jnp.ones((5, 3)), jnp.zeros((5, 2)))
        >>> kw = dict(activations=["tanh", "identity"], loss="quadratic")
        >>> report = fbp.check_gradients(functools.partial(fbp.grad, **kw),
        ...                              functools.partial(fbp.objective, **kw),
        ...                              params, batch)
        >>> report.ok, [r.name for r in report.rows]
        (True, ['layer 1 W', 'layer 1 b', 'layer 2 W', 'layer 2 b'])

    A network, by its own layers' backward passes::

        >>> from functional_bp import layers as fl
        >>> net = fl.Sequential(fl.Dense(4), fl.Residual(fl.LayerNorm(), fl.Dense(4)),
        ...                     fl.Dense(2))
        >>> params = net.init(jax.random.key(0), (3,))
        >>> report = fbp.check_gradients(params, batch, network=net, loss="mse")
        >>> report.ok, [r.name for r in report.rows][:4]
        (True, ['layer 1 W', 'layer 1 b', 'layer 2.1 bias', 'layer 2.1 scale'])
        >>> report.rows[-1].name
        'dJ/dX'
    """
    library = network is not None or activations is not None
    if library:
        grad_fn, objective_fn, params, args, input_row = _library_form(
            args, network, activations, loss, l2, dropout_key)
    else:
        if loss is not None or l2 != 0.0 or dropout_key is not None:
            raise TypeError("check_gradients: loss=, l2= and dropout_key= go with network= "
                            "or activations=; with your own functions, bind them into "
                            "grad_fn and objective_fn (functools.partial)")
        if len(args) < 3 or not (callable(args[0]) and callable(args[1])):
            raise TypeError(
                "check_gradients takes (grad_fn, objective_fn, params, *args) with two "
                f"functions first, or (params, batch, network=..., loss=...); got "
                f"{len(args)} positional argument(s)"
                + ("" if len(args) < 2 else f" starting with {type(args[0]).__name__}, "
                   f"{type(args[1]).__name__}")
            )
        grad_fn, objective_fn, params, *args = args
        input_row = None
    ours = grad_fn(params, *args)
    ref = jax.grad(objective_fn)(params, *args)
    ours_def = jax.tree_util.tree_structure(ours)
    ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(ref)
    if ours_def != ref_def:
        raise TypeError(
            "grad_fn returned a pytree of a different structure than params:\n"
            f"  got      {ours_def}\n  expected {ref_def}"
        )
    fd_errors = [None] * len(ref_leaves)
    if finite_differences:
        fd_errors = _finite_difference_errors(
            grad_fn, objective_fn, params, args,
            key=jax.random.key(0) if key is None else key,
            directions=fd_directions, step=fd_step,
        )
    rows = [_row(leaf_name(path), o, r, rtol, fd, fd_rtol)
            for (path, r), o, fd in zip(ref_leaves, jax.tree_util.tree_leaves(ours), fd_errors)]
    if input_row is not None:
        rows.append(_row(INPUT_ROW, *input_row(), rtol, None, fd_rtol))
    return GradientReport(rows=tuple(rows))


def compare(name: str, ours, ref, rtol: float | None = None, *,
            scale: float | None = None) -> GradientRow:
    """One :class:`GradientRow`: the array ``ours`` against the reference ``ref``.

    The error and the default tolerance of :func:`check_gradients` (relative
    to max |ref|; 1e-10 for float64, 2e-5 for float32), for quantities that
    are not a ``jax.grad`` (per-example norms, clipped gradients). ``scale``,
    when given, replaces max |ref| as the leaf's scale: for a sum whose terms
    cancel, the size of the terms (max_j sum_i |t_ij|) is the scale rounding
    errors are relative to.

    Example::

        >>> import jax.numpy as jnp
        >>> compare("norms", jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0])).ok
        True
    """
    row = _row(name, jnp.asarray(ours), jnp.asarray(ref), rtol, None, None)
    if scale is None or not np.isfinite(row.max_abs_error):
        return row
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"compare({name!r}): scale must be > 0; got {scale}")
    return replace(row, rel_error=row.max_abs_error / scale)


def _row(name, ours, ref, rtol, fd, fd_rtol) -> GradientRow:
    abs_err, rel_err, note = _errors(ours, ref)
    tol = _default_rtol(ref.dtype, name) if rtol is None else float(rtol)
    return GradientRow(
        name=name, shape=tuple(ref.shape), dtype=jnp.dtype(ref.dtype).name,
        max_abs_error=abs_err, rel_error=rel_err, tolerance=tol,
        fd_error=fd, fd_tolerance=None if fd is None else float(fd_rtol), note=note,
    )


def _library_form(args, network, activations, loss, l2, dropout_key):
    """(grad_fn, objective_fn, params, (batch,), input row) for the library's own backward."""
    from .backprop import backprop, grad
    from .mlp import objective

    if len(args) != 2 or callable(args[0]):
        raise TypeError(
            "check_gradients with network= or activations= takes (params, batch); got "
            f"{len(args)} positional argument(s)"
            + (" starting with a function (that is the other form: drop network=/"
               "activations= and pass grad_fn, objective_fn, params, *args)"
               if args and callable(args[0]) else "")
        )
    if loss is None:
        raise TypeError("check_gradients with network= or activations= needs loss= (a loss "
                        "name such as 'softmax_cross_entropy', or a Loss)")
    if dropout_key is not None and network is None:
        raise TypeError("check_gradients: dropout_key= goes with network= (the dense chain "
                        "has no Dropout)")
    params, batch = args
    kw = dict(activations=activations, network=network, loss=loss, l2=l2)
    if network is not None:
        kw["key"] = dropout_key

    def grad_fn(p, b):
        return grad(p, b, **kw)

    def objective_fn(p, b):
        return objective(p, b, **kw)

    input_row = None
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    if x is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating):
        y = batch[1]

        def input_row():
            ours = backprop(params, batch, **kw).input_grad
            ref = jax.grad(lambda x_: objective(params, (x_, y), **kw))(jnp.asarray(x))
            return ours, ref

    return grad_fn, objective_fn, params, (batch,), input_row
