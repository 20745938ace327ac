"""PyTorch eager autograd on the same network: optional, only when torch imports.

The network, loss and data are the ones of the JAX step (row layout,
``Z = A W + b``), copied into torch tensors on the device JAX uses (CUDA when
JAX runs on a GPU and torch sees one, the CPU otherwise). One step is
``torch.autograd.grad`` of J with respect to every W and b, then a device
synchronisation, so that its time covers the whole step.
"""

from __future__ import annotations

import os

import numpy as np


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def setup(threads: int | None = None, *, want_cuda: bool = False):
    """Import torch, set its CPU threads (default: the cores this process may use)."""
    import torch

    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = "cuda" if want_cuda and torch.cuda.is_available() else "cpu"
    return torch, device


def make_step(params, x, y, *, activations, loss, want_cuda: bool = False, threads=None):
    """A zero-argument callable running one loss-and-grads step in eager mode.

    Args:
      params: list of {"W", "b"} (any arrays NumPy can read).
      x, y: float arrays (m, n_0) and (m, n_L).
      activations: names among relu, tanh, identity.
      loss: "quadratic" or "softmax_cross_entropy".

    Returns:
      ``(step, device)``; ``step()`` returns ``(J, [dW1, db1, dW2, ...])``.
    """
    torch, device = setup(threads, want_cuda=want_cuda)
    t = lambda a: torch.from_numpy(np.array(a)).to(device)  # noqa: E731
    leaves = []
    for layer in params:
        leaves += [t(layer["W"]).requires_grad_(), t(layer["b"]).requires_grad_()]
    tx, ty = t(x), t(y)
    g = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda z: z}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def objective():
        a = tx
        for l, name in enumerate(activations):
            a = g[name](a @ leaves[2 * l] + leaves[2 * l + 1])
        if loss == "quadratic":
            per_example = 0.5 * ((a - ty) ** 2).sum(dim=1)
        elif loss == "softmax_cross_entropy":
            per_example = -(ty * torch.log_softmax(a, dim=1)).sum(dim=1)
        else:
            raise ValueError(f"unknown loss {loss!r}")
        return per_example.mean()

    def step():
        J = objective()
        grads = torch.autograd.grad(J, leaves)
        sync()
        return J, grads

    return step, device


def to_params(grads):
    """torch grads [dW1, db1, ...] -> list of {"W", "b"} NumPy dicts."""
    arrays = [g.detach().cpu().numpy() for g in grads]
    return [{"W": arrays[i], "b": arrays[i + 1]} for i in range(0, len(arrays), 2)]
