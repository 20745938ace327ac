"""Data parallel: the hand-derived gradient, with the batch split over devices.

The rows of the batch are split over the ``"data"`` axis of a
:class:`jax.sharding.Mesh`; the parameters are replicated. With D devices and
the batch padded from m to a multiple of D rows, device d holds the rows
i in I_d and computes, by the hand-derived recursion on its rows alone::

    J_d     = sum_{i in I_d} w_i L(a^L_i, y_i)
    G^L_d   = w ⊙ dL/da ⊙ g^L'(Z^L_d),   G^l_d = (G^{l+1}_d W^{l+1,T}) ⊙ g^l'(Z^l_d)
    dW^l_d  = A^{l-1,T}_d G^l_d,         db^l_d = sum of the rows of G^l_d

with w_i = 1/m for a real row and w_i = 0 for a padding row. One ``psum``
over ``"data"`` then gives the exact global mean (the sums over I_d add up to
the sum over all m rows), and the l2 term is added once, after the sum::

    J       = sum_d J_d + (l2/2) sum_l ||W^l||^2
    dJ/dW^l = sum_d dW^l_d + l2 W^l,     dJ/db^l = sum_d db^l_d

Nothing is differentiated through ``shard_map``: under ``shard_map``, the
autodiff gradient with respect to a replicated input already comes summed over
the axis, and summing it again would multiply it by D. Here the gradients are
computed by hand inside and summed exactly once.

The same code runs across several processes after
``jax.distributed.initialize()``: the mesh then spans every process's devices
and each process feeds its own rows (see :func:`shard_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import _validate
from .backprop import backprop_net_arrays
from .network import MLPView, add_l2, l2_penalty, mlp_network

DATA = "data"
"""The name of the mesh axis the batch's rows are split over."""


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (all devices by default).

    After ``jax.distributed.initialize()``, "all devices" means the devices of
    every process.

    Example::

        >>> import functional_bp as fbp
        >>> fbp.parallel.data_mesh().axis_names
        ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def check_mesh(mesh) -> Mesh:
    """Return ``mesh`` (or the default one) after checking it has a ``"data"`` axis."""
    if mesh is None:
        return data_mesh()
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh with an axis named {DATA!r}; "
            f"got {type(mesh).__name__}"
        )
    if DATA not in mesh.axis_names:
        raise ValueError(
            f"the mesh has no axis named {DATA!r} to split the batch over; its "
            f"axes are {mesh.axis_names}. Build one with "
            f"jax.make_mesh((n,), ({DATA!r},)) or functional_bp.parallel.data_mesh()"
        )
    return mesh


def pad_rows(x, y, n_shards, weights=None):
    """Pad x (m, n_0) and y (m, n_L) to a multiple of ``n_shards`` rows; weights.

    Returns ``(x, y, w)`` with m_pad = n_shards * ceil(m / n_shards) rows and
    w (m_pad,) equal to ``weights`` (1/m on every row by default) on the m
    given rows and 0 on the padding rows, so sum_i w_i L_i is still the mean
    over the true m. Padding rows repeat the last row, so they are as finite
    as it is (0 * finite = 0).
    """
    m = x.shape[0]
    pad = -m % n_shards
    w = jnp.full((m,), 1 / m, dtype=y.dtype) if weights is None else weights
    if pad:
        rows = lambda t: jnp.pad(t, ((0, pad),) + ((0, 0),) * (t.ndim - 1), mode="edge")  # noqa: E731
        x, y = rows(x), rows(y)
        w = jnp.pad(w, (0, pad))  # zeros: padding rows do not count
    return x, y, w


def _view(model, params):
    """The view of the activations= (MLP) or network= form, for params already checked."""
    if isinstance(model, tuple):
        return MLPView(mlp_network(model, tuple(p["W"].shape[1] for p in params)), type(params))
    from .network import network_view

    return network_view(model, params)


def sharded_value_and_grad(params, x, y, w, activations, loss, mesh):
    """Sum over all rows of w_i L_i and its gradient, the rows split over ``"data"``.

    The array-level core, usable inside ``jax.jit`` and ``lax.scan``: x (m, n_0),
    y (m, n_L) and w (m,) are validated arrays with m a multiple of the size of
    the mesh's ``"data"`` axis; no l2 term. Returns ``(J, grads)``, both
    replicated on every device.
    """

    view = _view(activations, params)

    def local(params, x, y, w):
        r = backprop_net_arrays(view.to_net(params), x, y, 0.0, None, view=view, loss=loss,
                                weights=w)
        return jax.lax.psum((r.loss, r.grads), DATA)  # the one cross-device sum

    axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[DATA]
    if axis_type == jax.sharding.AxisType.Explicit:
        # An explicit mesh wants the split stated on the arrays' types.
        x, y, w = jax.reshard((x, y, w), NamedSharding(mesh, P(DATA)))
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(DATA), P(DATA), P(DATA)), out_specs=P()
    )(params, x, y, w)


def value_and_grad_from_arrays(params, x, y, l2, activations, loss, mesh,
                               weights=None):
    """``(J, grads)`` for validated arrays x (m, n_0), y (m, n_L), any m >= 1.

    Pads to a multiple of the data-axis size, runs
    :func:`sharded_value_and_grad`, and adds the l2 term once. ``weights``
    (m,) replace the 1/m of the mean when given (the trainer's minibatch
    weights). Traceable: usable inside ``jax.jit`` and ``lax.scan``.
    """
    x, y, w = pad_rows(x, y, mesh.shape[DATA], weights)
    J, grads = sharded_value_and_grad(params, x, y, w, activations, loss, mesh)
    return J + l2_penalty(params, l2, activations), add_l2(grads, params, l2, activations)


@dataclass(frozen=True)
class DataParallelStep:
    """One training step's gradient with the minibatch split over ``mesh``.

    Called as ``step(params, x, y, w, l2, activations, loss) -> (J_B, G)``,
    the signature of the trainer's per-step gradient, with w (B,) the
    minibatch weights (1/r on r real rows, 0 on padded ones). Hashable and equal by mesh, so it can be a static argument of a jitted
    epoch (see :func:`functional_bp.train.fit`).
    """

    mesh: Mesh

    def __call__(self, params, x, y, w, l2, activations, loss):
        return value_and_grad_from_arrays(params, x, y, l2, activations, loss,
                                          self.mesh, weights=w)


@partial(jax.jit, static_argnames=("activations", "loss", "mesh"))
def _data_parallel_value_and_grad(params, x, y, l2, *, activations, loss, mesh):
    return value_and_grad_from_arrays(params, x, y, l2, activations, loss, mesh)


def data_parallel_value_and_grad(params, batch, *, activations=None, network=None, loss,
                                 l2=0.0, mesh=None):
    """``(J, dJ/dparams)`` with the batch's rows split over the devices of a mesh.

    Equal to :func:`functional_bp.value_and_grad` (up to the order of the
    sums): each device runs the hand-derived backward pass on its rows with
    weights w_i = 1/m (0 on padding rows), then one ``psum`` over the
    ``"data"`` axis adds the partial sums, and l2 W^l is added once::

        J = sum_d sum_{i in I_d} w_i L(a^L_i, y_i) + (l2/2) sum_l ||W^l||^2

    Any batch size m >= 1 works: the batch is padded to a multiple of the
    number of devices on the data axis, and the mean still divides by the true m.

    Args:
      params: list of ``{"W": (n_{l-1}, n_l), "b": (n_l,)}`` dicts, replicated.
      batch: ``(x, y)`` with x (m, n_0) and y (m, n_L) (or integer labels (m,)
        for ``softmax_cross_entropy``). In several processes, global arrays
        whose rows each process fed (see :func:`shard_rows`).
      activations: one name or :class:`~functional_bp.Activation` per layer, or
      network: a :class:`functional_bp.layers.Sequential` (Dropout runs in
        evaluation mode here).
      loss: a loss name or :class:`~functional_bp.losses.Loss`.
      l2: weight decay on the W's.
      mesh: a :class:`jax.sharding.Mesh` with an axis named ``"data"`` (other
        axes, if any, hold replicas); ``None`` means all devices
        (:func:`data_mesh`).

    Returns:
      ``(J, grads)``: a scalar and a params-shaped pytree, replicated on every
      device of the mesh.

    Example::

        >>> import jax, jax.numpy as jnp, functional_bp as fbp
        >>> params = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
        >>> batch = (jnp.ones((5, 3)), jnp.array([0, 1, 1, 0, 1]))
        >>> J, grads = fbp.data_parallel_value_and_grad(
        ...     params, batch, activations=["relu", "identity"],
        ...     loss="softmax_cross_entropy")
        >>> grads[1]["W"].shape
        (4, 2)
    """
    mesh = check_mesh(mesh)
    _validate.check_l2(l2)
    model = _validate.resolve_model(activations, network)
    params = _validate.params_as_arrays(params)
    batch = _validate.array_batch(batch)
    view, _, loss, x, y = _validate.prepare_model(params, batch, model, loss)
    _validate.check_concrete_values(model, params, *batch, loss)
    if network is None:  # the activations, resolved (the MLP's Activation layers)
        model = tuple(layer.fn for layer in view.net.layers[1::2])
    return _data_parallel_value_and_grad(params, x, y, l2, activations=model,
                                         loss=loss, mesh=mesh)


def shard_rows(local_rows, mesh=None):
    """A global array from each process's own rows, split over ``"data"``.

    In a multi-process run every process calls this with its own block of
    rows (all processes the same number of rows); the result is one global
    array whose rows are the processes' blocks, placed in the mesh's device
    order (process order for :func:`data_mesh`, where process p's block is
    rows p m_local to (p + 1) m_local). In a single process it just places the
    rows on the mesh.

    Args:
      local_rows: this process's rows, shape (m_local, ...); m_local times the
        process count must be a multiple of the data-axis size.
      mesh: as in :func:`data_parallel_value_and_grad`.

    Returns:
      A :class:`jax.Array` of shape (m_local * process_count, ...).
    """
    mesh = check_mesh(mesh)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA)),
                                                  local_rows)


def replicate(tree, mesh=None):
    """Place a pytree (e.g. params), identical in every process, on every device."""
    mesh = check_mesh(mesh)
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, a), tree
    )
