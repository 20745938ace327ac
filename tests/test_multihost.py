"""Two processes on 127.0.0.1, two host devices each, one global gradient.

tests/_multihost_worker.py is launched twice with ``jax.distributed``
(coordinator on a free local port, CPU collectives through gloo); each process
feeds only its own rows. Both must return the loss, the gradient and the
parameters after a few gradient-descent steps of one process on one device,
computed here with the plain-JAX reference (jax.grad of the objective), and
the same for a 5-row batch that every process holds in full; and two epochs
of ``fit(..., mesh=...)`` across both processes equal ``fit()`` on one device.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import functional_bp as fbp
from helpers import assert_tree_close
from functional_bp import _validate
from functional_bp.mlp import objective_from_arrays
from functional_bp.train import fit, init_state, sgd

WORKER = Path(__file__).parent / "_multihost_worker.py"
NUM_PROCESSES = 2
# The worker's problem (tests/_multihost_worker.py): keep the two in step.
SIZES, M_LOCAL, SEED, STEPS, LR = [5, 7, 3], 6, 0, 3, 0.5
KW = dict(activations=("tanh", "identity"), loss="softmax_cross_entropy", l2=0.01)
PROBLEM = [*SIZES, M_LOCAL, SEED, STEPS, LR, KW["l2"]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(tmp_path, timeout=120):
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    procs, logs = [], []
    try:
        for i in range(NUM_PROCESSES):
            log = open(tmp_path / f"process_{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(port), str(i), str(NUM_PROCESSES),
                 str(tmp_path / f"process_{i}.npz")],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            ))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    output = "\n".join(
        f"--- process {i} ---\n" + (tmp_path / f"process_{i}.log").read_text()[-4000:]
        for i in range(NUM_PROCESSES)
    )
    assert codes == [0] * NUM_PROCESSES, output
    return [dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(NUM_PROCESSES)]


def single_process_reference():
    """Loss, gradient and trained params on one device, by jax.grad of J."""
    m = M_LOCAL * NUM_PROCESSES
    kp, kx, ky = jax.random.split(jax.random.key(SEED), 3)
    params = fbp.init_mlp(kp, SIZES, dtype=jnp.float64)
    x_all = jax.random.normal(kx, (m, SIZES[0]), dtype=jnp.float64)
    y_all = jax.random.randint(ky, (m,), 0, SIZES[-1])
    acts, loss, x, y = _validate.prepare(params, (x_all, y_all), KW["activations"],
                                         KW["loss"])
    J_of = jax.jit(jax.value_and_grad(
        lambda p: objective_from_arrays(p, x, y, KW["l2"], acts, loss)))
    J, grads = J_of(params)
    held = jax.value_and_grad(
        lambda p: objective_from_arrays(p, x[:5], y[:5], KW["l2"], acts, loss))(params)
    opt = sgd(LR)
    fitted, _ = fit(init_state(params, optimizer=opt, key=jax.random.key(SEED + 1)),
                    (x_all, y_all), optimizer=opt, epochs=2, batch_size=5, **KW)
    assert float(jnp.max(jnp.abs(fitted.params[0]["W"] - params[0]["W"]))) > 1e-3
    for _ in range(STEPS):
        params = jax.tree.map(lambda p, d: p - LR * d, params, J_of(params)[1])
    return x, J, grads, params, held, fitted.params


def as_params(result, prefix):
    return [{k: result[f"{prefix}_{l}_{k}"] for k in ("W", "b")}
            for l in range(len(SIZES) - 1)]


def test_two_processes_equal_one(tmp_path):
    results = run_processes(tmp_path)
    with jax.enable_x64(True):
        x, J, grads, trained, (J_held, grads_held), fitted = single_process_reference()
        for i, r in enumerate(results):
            assert r["problem"].tolist() == PROBLEM, "worker and test disagree"
            # Each process fed its own block of rows; together they are the batch.
            np.testing.assert_array_equal(r["x_gathered"], np.asarray(x))
            assert_tree_close(r["J"], J, 1e-10, f"process {i}: loss")
            assert_tree_close(as_params(r, "grad"), grads, 1e-10, f"process {i}: grads")
            assert_tree_close(as_params(r, "trained"), trained, 1e-10,
                              f"process {i}: trained")
            assert_tree_close(r["J_held"], J_held, 1e-10, f"process {i}: held loss")
            assert_tree_close(as_params(r, "held"), grads_held, 1e-10,
                              f"process {i}: held grads")
            # fit(mesh=...) over both processes equals fit() on one device.
            assert_tree_close(as_params(r, "fit"), fitted, 1e-10, f"process {i}: fit")
