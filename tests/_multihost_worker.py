"""One process of the multi-host test (launched by tests/test_multihost.py).

Usage: python _multihost_worker.py COORDINATOR_PORT PROCESS_ID NUM_PROCESSES OUT.npz

Every process builds the same float64 problem from the same seed, keeps only
its own share of the rows (process p gets block p of m_local rows), builds the
global batch from the shares, and computes the data-parallel loss and
gradient and a few plain gradient-descent steps; and the gradient of a
small batch that every process holds in full, and two epochs of the trainer
(``fit(..., mesh=...)``) on data every process holds in full. It also gathers the global
batch back, so the parent can check that each process fed its own rows.
Results go to OUT.npz; the parent compares them with one process on one device.
"""

import os
import sys

port, process_id, num_processes, out = sys.argv[1:5]
process_id, num_processes = int(process_id), int(num_processes)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_matmul_precision", "highest")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=60,
)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import functional_bp as fbp  # noqa: E402
from functional_bp import parallel  # noqa: E402
from functional_bp.train import fit, init_state, sgd  # noqa: E402

# The problem, shared with the parent (tests/test_multihost.py: PROBLEM).
SIZES, M_LOCAL, SEED, STEPS, LR = [5, 7, 3], 6, 0, 3, 0.5
KW = dict(activations=("tanh", "identity"), loss="softmax_cross_entropy", l2=0.01)


def local(a):
    """This process's copy of a replicated result, as numpy."""
    return np.asarray(a.addressable_data(0))


def main():
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    m = M_LOCAL * num_processes
    kp, kx, ky = jax.random.split(jax.random.key(SEED), 3)
    params = fbp.init_mlp(kp, SIZES, dtype=jnp.float64)
    x_all = np.asarray(jax.random.normal(kx, (m, SIZES[0]), dtype=jnp.float64))
    y_all = np.asarray(jax.random.randint(ky, (m,), 0, SIZES[-1]))
    rows = slice(process_id * M_LOCAL, (process_id + 1) * M_LOCAL)

    mesh = parallel.data_mesh()  # every process's devices
    x = parallel.shard_rows(x_all[rows], mesh)  # this process feeds only its rows
    y = parallel.shard_rows(y_all[rows], mesh)
    params = parallel.replicate(params, mesh)

    J, grads = fbp.data_parallel_value_and_grad(params, (x, y), mesh=mesh, **KW)
    result = {
        "problem": np.array([*SIZES, M_LOCAL, SEED, STEPS, LR, KW["l2"]]),
        "J": local(J),
        "x_gathered": multihost_utils.process_allgather(x, tiled=True),
    }
    result.update({f"grad_{l}_{k}": local(g[k]) for l, g in enumerate(grads) for k in g})

    # A batch every process holds in full (m = 5, not a multiple of 4 devices).
    J, grads = fbp.data_parallel_value_and_grad(params, (x_all[:5], y_all[:5]), mesh=mesh,
                                                **KW)
    result["J_held"] = local(J)
    result.update({f"held_{l}_{k}": local(g[k]) for l, g in enumerate(grads) for k in g})

    # The trainer's fused epochs across both processes (each holds all rows).
    opt = sgd(LR)
    state, _ = fit(init_state(params, optimizer=opt, key=jax.random.key(SEED + 1)),
                   (x_all, y_all), optimizer=opt, epochs=2, batch_size=5, mesh=mesh, **KW)
    result.update({f"fit_{l}_{k}": local(p[k]) for l, p in enumerate(state.params) for k in p})

    for _ in range(STEPS):  # plain gradient descent, every step data-parallel
        _, g = fbp.data_parallel_value_and_grad(params, (x, y), mesh=mesh, **KW)
        params = jax.tree.map(lambda p, d: p - LR * d, params, g)
    result.update({f"trained_{l}_{k}": local(p[k]) for l, p in enumerate(params) for k in p})
    np.savez(out, **result)


if __name__ == "__main__":
    try:
        main()
    finally:
        jax.distributed.shutdown()
