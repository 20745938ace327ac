"""data_parallel_value_and_grad: input errors and the one-device case here; the
multi-device tests in tests/_parallel_worker.py, run in a subprocess with 4 host
devices (so this process, and the rest of the suite, keeps one device).
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import parallel
from helpers import assert_tree_close, reference_backprop, rtol_for
from strategies import make_case

TESTS = Path(__file__).parent


def run_with_host_devices(n, *pytest_args, timeout=600):
    """Run pytest on the given args in a fresh process that sees n host devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"  # host devices: the same on any machine
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "--rootdir", str(TESTS.parent), *pytest_args],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_on_four_devices():
    r = run_with_host_devices(4, str(TESTS / "_parallel_worker.py"))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("m", [1, 6])
def test_one_device_equals_reference(dtype, m):
    case = make_case([4, 6, 3], m, ("gelu", "identity"), "softmax_cross_entropy",
                     l2=0.1, dtype=dtype, seed=m, target_kind="labels")
    with jax.enable_x64(dtype == jnp.float64):
        J, grads = fbp.data_parallel_value_and_grad(case.params, case.batch,
                                                    **case.kwargs())
        ref = reference_backprop(case.params, case.batch, **case.kwargs())
        assert_tree_close(J, ref.loss, rtol_for(dtype), "loss")
        assert_tree_close(grads, ref.grads, rtol_for(dtype), "grads")
        assert [g["W"].dtype for g in grads] == [jnp.dtype(dtype)] * 2


def _case():
    return make_case([3, 4, 2], 5, ("relu", "identity"), "quadratic")


def test_mesh_without_data_axis():
    case = _case()
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match=r"no axis named 'data'.*\('batch',\)"):
        fbp.data_parallel_value_and_grad(case.params, case.batch, mesh=mesh,
                                         **case.kwargs())


def test_mesh_of_the_wrong_type():
    case = _case()
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        fbp.data_parallel_value_and_grad(case.params, case.batch, mesh=jax.devices(),
                                         **case.kwargs())


def test_empty_batch():
    case = _case()
    batch = (jnp.zeros((0, 3)), jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="empty"):
        fbp.data_parallel_value_and_grad(case.params, batch, **case.kwargs())


def test_other_input_errors_are_the_cores():
    case = _case()
    with pytest.raises(ValueError, match="unknown loss"):
        fbp.data_parallel_value_and_grad(case.params, case.batch,
                                         activations=case.activations, loss="hinge")
    with pytest.raises(ValueError, match=r"shape \(m, 3\)"):
        fbp.data_parallel_value_and_grad(case.params, (case.x[:, :2], case.y),
                                         **case.kwargs())


def test_pad_rows_weights_are_the_true_mean():
    x, y = jnp.arange(10.0).reshape(5, 2), jnp.ones((5, 1))
    xp, yp, w = parallel.pad_rows(x, y, 4)
    assert xp.shape == (8, 2) and yp.shape == (8, 1)
    np.testing.assert_array_equal(np.asarray(xp[5:]), np.repeat(np.asarray(x[-1:]), 3, 0))
    np.testing.assert_allclose(np.asarray(w), [0.2] * 5 + [0.0] * 3)
    xp, _, w = parallel.pad_rows(x, y, 5)
    assert xp.shape == (5, 2)
    np.testing.assert_allclose(np.asarray(w), [0.2] * 5)


def test_cli_more_devices_than_there_are(capsys):
    from functional_bp.cli import main

    n = jax.device_count() + 1
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "xor", "--epochs", "1", "--quiet", "--devices", str(n)])
    assert e.value.code == 2
    assert f"--devices: {n} devices asked for" in capsys.readouterr().err
