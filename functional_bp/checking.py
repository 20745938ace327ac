"""A gradient checker: a hand-derived gradient against ``jax.grad``, leaf by leaf.

This is how a user verifies their own activation, loss or backward pass. For
each leaf of the gradient pytree (``layer 1 W``, ``layer 1 b``, ... for the
library's params), the error is the one the library's own test suite uses::

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-5}
"""Default tolerance per dtype of the reference leaf."""

FD_RTOL = 1e-6
"""Default tolerance of the float64 central-difference check."""


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
      note: what went wrong beyond the numbers (a shape mismatch, NaN), or "".
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
            cells += ["yes" if r.ok else "NO" + (f" ({r.note})" if r.note else "")]
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
        summary = (
            f"all {n} leaves within tolerance" if bad == 0
            else f"{bad} of {n} leaves over tolerance"
        )
        lines.append(f"{summary} (max rel. error {self.max_error:.3g} against jax.grad)")
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
    """``(SequenceKey(0), DictKey('W'))`` -> ``"layer 1 W"``; any other path readably."""
    kinds = [type(k).__name__ for k in path]
    if kinds == ["SequenceKey", "DictKey"]:
        return f"layer {path[0].idx + 1} {path[1].key}"
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
    return diff, (diff / scale if scale > 0 else diff), ""


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
    grad_fn: Callable,
    objective_fn: Callable,
    params: Any,
    *args,
    rtol: float | None = None,
    finite_differences: bool = False,
    fd_directions: int = 3,
    fd_step: float = 1e-5,
    fd_rtol: float = FD_RTOL,
    key=None,
) -> GradientReport:
    """Compare ``grad_fn(params, *args)`` with ``jax.grad(objective_fn)(params, *args)``.

    Per leaf: error = max|ours - ref| / max|ref| against the tolerance ``rtol``
    (default by the reference leaf's dtype: float64 1e-10, float32 2e-5).
    With ``finite_differences=True``, each leaf is also checked in float64
    against central differences (J(p + h v) - J(p - h v)) / 2h along
    ``fd_directions`` random unit directions v (see the module docstring).

    Args:
      grad_fn: ``(params, *args) -> grads``, the gradient to check (same
        pytree structure as params).
      objective_fn: ``(params, *args) -> scalar``, differentiable by JAX.
      params: any pytree of floating arrays (for the library: a list of
        ``{"W", "b"}`` dicts, whose leaves are named ``layer l W``/``layer l b``).
      *args: passed to both functions unchanged (a batch, for instance).
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
      TypeError: the gradient's pytree structure differs from the reference's,
        or a leaf's dtype has no default tolerance and ``rtol`` is None.

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
    """
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
    rows = []
    for (path, r), o, fd in zip(ref_leaves, jax.tree_util.tree_leaves(ours), fd_errors):
        name = leaf_name(path)
        abs_err, rel_err, note = _errors(o, r)
        tol = _default_rtol(r.dtype, name) if rtol is None else float(rtol)
        rows.append(GradientRow(
            name=name, shape=tuple(r.shape), dtype=jnp.dtype(r.dtype).name,
            max_abs_error=abs_err, rel_error=rel_err, tolerance=tol,
            fd_error=fd, fd_tolerance=None if fd is None else float(fd_rtol), note=note,
        ))
    return GradientReport(rows=tuple(rows))
