"""The reference and the comparison every gradient test uses.

The reference is ``jax.grad`` of the plain-JAX objective, never of anything
that goes through the library's own backward pass:

- grads:      jax.grad of J with respect to params;
- deltas:     jax.grad of J with respect to zero offsets added to each Z^l
              (so the reference G^l = dJ/dZ^l);
- input_grad: jax.grad of J with respect to x.

Comparison is per leaf: the error of a leaf is max|ours - ref| / max|ref| (and
max|ours| when the reference leaf is exactly zero), so an error in one small
layer cannot hide behind a large one.

Tolerances, by dtype:
- float64: 1e-10. Both sides evaluate the same products and sums of a
  network of at most a few dozen layers and widths, in a different order at
  most; rounding then stays within a few hundred ulps (2.2e-16 each) of the
  leaf's largest entry, far below 1e-10. A wrong equation is off by O(1).
- float32: 2e-5, i.e. about 1e-5 of the leaf's scale. Same argument with
  eps = 1.2e-7: a few dozen roundings along the longest chain of the
  recursion, with a margin of a few.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import _validate
from functional_bp.backprop import Backprop
from functional_bp.mlp import forward_trace, objective_from_arrays

RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 2e-5}


def rtol_for(dtype):
    return RTOL[jnp.dtype(dtype)]


def leaf_error(ours, ref) -> float:
    """max|ours - ref| relative to max|ref| (absolute when ref is all zero)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    if not np.all(np.isfinite(ours)):
        return float("inf")
    diff = float(np.max(np.abs(ours - ref), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    return diff / scale if scale > 0 else diff


def tree_errors(ours, ref, prefix="") -> dict[str, float]:
    """Per-leaf errors keyed by the leaf's path, e.g. 'grads[1]['W']'."""
    ours_leaves = jax.tree_util.tree_flatten_with_path(ours)[0]
    ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(ref)
    if jax.tree_util.tree_structure(ours) != ref_def:
        raise AssertionError(
            f"{prefix}: structure differs: {jax.tree_util.tree_structure(ours)} vs {ref_def}"
        )
    return {
        prefix + jax.tree_util.keystr(path): leaf_error(o, r)
        for (path, o), (_, r) in zip(ours_leaves, ref_leaves)
    }


def assert_tree_close(ours, ref, rtol, prefix="") -> dict[str, float]:
    """Assert each leaf's error <= rtol; return the errors."""
    errs = tree_errors(ours, ref, prefix)
    bad = {k: v for k, v in errs.items() if not v <= rtol}
    if bad:
        raise AssertionError(
            f"leaves over rtol={rtol:g}: "
            + ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        )
    return errs


_calls = [0]


def reference_backprop(params, batch, *, activations, loss, l2=0.0) -> Backprop:
    """Loss, grads, deltas and input gradient, all by jax.grad of the objective."""
    # Thousands of drawn shapes (the thorough profile) mean thousands of
    # compiled programs; dropping them now and then keeps the process small.
    _calls[0] += 1
    if _calls[0] % 200 == 0:
        jax.clear_caches()
    acts, loss_obj, x, y = _validate.prepare(params, batch, activations, loss)
    return _reference(params, x, y, l2, activations=acts, loss=loss_obj)


@partial(jax.jit, static_argnames=("activations", "loss"))
def _reference(params, x, y, l2, *, activations, loss):
    zeros = [jnp.zeros((x.shape[0], p["W"].shape[1]), x.dtype) for p in params]

    def J(params, x, offsets):
        return objective_from_arrays(params, x, y, l2, activations, loss, offsets)

    value, (g_params, g_x, g_offsets) = jax.value_and_grad(J, argnums=(0, 1, 2))(
        params, x, zeros
    )
    return Backprop(loss=value, grads=g_params, deltas=g_offsets, input_grad=g_x)


def backprop_errors(ours: Backprop, ref: Backprop) -> dict[str, float]:
    """Per-leaf errors of loss, every grad leaf, every delta and dJ/dX."""
    errs = {}
    errs.update(tree_errors(ours.loss, ref.loss, "loss"))
    errs.update(tree_errors(ours.grads, ref.grads, "grads"))
    errs.update(tree_errors(list(ours.deltas), list(ref.deltas), "deltas"))
    errs.update(tree_errors(ours.input_grad, ref.input_grad, "input_grad"))
    return errs


def _to_float64(tree):
    """Floating leaves as float64 (call inside ``jax.enable_x64``); labels as they are."""
    up = lambda t: jnp.asarray(t, jnp.float64) if jnp.issubdtype(t.dtype, jnp.floating) else t
    return jax.tree.map(up, tree)


def reference_in_float64(params, batch, **kwargs) -> Backprop:
    """The jax.grad reference of a float32 problem, computed in float64: the truth."""
    with jax.enable_x64(True):
        return reference_backprop(_to_float64(params), _to_float64(tuple(batch)), **kwargs)


def float64_truth(params, batch, **kwargs):
    """The ``truth`` argument of :func:`assert_backprop_close` for this problem.

    A callable, so the float64 reference and the summand scales are computed
    only for a case that needs them.
    """
    def truth():
        t = reference_in_float64(params, batch, **kwargs)
        return t, summand_scales(params, batch, t, **kwargs)

    return truth


def summand_scales(params, batch, truth: Backprop, *, activations, loss, l2=0.0) -> Backprop:
    """The size of what is summed into each leaf: the recursion on absolute values.

    S^L = |G^L| (from the float64 truth), S^l = (S^{l+1} |W^{l+1}|^T) ⊙ |g^l'(Z^l)|,
    and for the leaves |A^{l-1}|^T S^l + |l2 W^l|, the column sums of S^l and
    S^1 |W^1|^T. Rounding a float32 sum can move its result by about
    eps * (sum of |terms|), so these, not the leaves themselves, are the scale
    against which float32 rounding is measured when terms cancel.
    """
    with jax.enable_x64(True):
        params = _to_float64(params)
        acts, _, x, _ = _validate.prepare(params, _to_float64(tuple(batch)), activations, loss)
        zs, As = forward_trace(params, x, acts)
        S = jnp.abs(truth.deltas[-1])
        grads, deltas = [None] * len(params), [None] * len(params)
        for l in reversed(range(len(params))):
            absW = jnp.abs(params[l]["W"])
            deltas[l] = S
            grads[l] = {"W": jnp.abs(As[l]).T @ S + abs(l2) * absW, "b": jnp.sum(S, axis=0)}
            back = S @ absW.T
            if l > 0:
                S = back * jnp.abs(acts[l - 1].dg(zs[l - 1]))
        return Backprop(jnp.abs(truth.loss), grads, deltas, back)


def assert_backprop_close(ours: Backprop, ref: Backprop, rtol, truth=None) -> dict[str, float]:
    """Compare loss, every grad leaf, every delta and dJ/dX, each on its own.

    A float32 leaf that is a sum with heavy cancellation (a bias gradient whose
    rows nearly cancel, say) can differ from the float32 reference by more than
    rtol of its own small scale through rounding alone. For such a leaf, when
    ``truth`` is given (a callable returning ``(float64 reference, summand
    scales)``, see :func:`summand_scales`), the leaf passes if
    max|ours - truth| <= rtol * max(summand scale): still 2e-5 in float32, but
    of the size of the terms the leaf sums. A wrong equation is off by O(1) of
    that scale and fails.
    """
    errs = backprop_errors(ours, ref)
    bad = {k for k, v in errs.items() if not v <= rtol}
    if bad and truth is not None:
        t, scales = truth()
        diffs = _abs_diffs(ours, t)
        sizes = _abs_diffs(scales, jax.tree.map(jnp.zeros_like, scales))
        for k in sorted(bad):
            if diffs[k] <= rtol * sizes[k]:
                bad.discard(k)
    if bad:
        raise AssertionError(
            f"leaves over rtol={rtol:g}: "
            + ", ".join(f"{k}: {errs[k]:.3g}" for k in sorted(bad))
        )
    return errs


def _abs_diffs(a: Backprop, b: Backprop) -> dict[str, float]:
    out = {}
    for name in ("loss", "grads", "deltas", "input_grad"):
        ta, tb = getattr(a, name), getattr(b, name)
        la = jax.tree_util.tree_flatten_with_path(list(ta) if name == "deltas" else ta)[0]
        lb = jax.tree_util.tree_leaves(list(tb) if name == "deltas" else tb)
        for (path, u), v in zip(la, lb):
            d = np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))
            out[name + jax.tree_util.keystr(path)] = float(np.max(d, initial=0.0))
    return out


def log_errors(dtype, errs: dict[str, float]) -> None:
    """Append the worst error of a case to $FBP_ERROR_LOG, when set.

    Used to report the worst errors seen per dtype after a long (thorough) run:
    ``FBP_ERROR_LOG=errs.tsv HYPOTHESIS_PROFILE=thorough pytest ...``.
    """
    import os

    path = os.environ.get("FBP_ERROR_LOG")
    if path and errs:
        worst = max(errs, key=errs.get)
        with open(path, "a") as f:
            f.write(f"{jnp.dtype(dtype).name}\t{errs[worst]:.3e}\t{worst}\n")


def profile_share(divisor: int) -> int:
    """A share of the hypothesis profile's max_examples, at least 3.

    For properties whose every draw compiles new programs (new shapes under
    jit): the `ci` profile's 40 examples divided by ``divisor``.
    """
    from hypothesis import settings

    return max(3, settings.default.max_examples // divisor)


class CtrlCAfter:
    """Stands in for experiment.Interrupt: Ctrl-C is 'pressed' once ``n`` evaluations are seen."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.seen += 1
        return self.seen >= self.n
