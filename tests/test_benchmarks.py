"""Smoke test of the benchmark harness, at the tiny shape only.

No timing is asserted: the harness must run end to end, write its block of
the results file without touching other blocks, and its baselines must
compute the same loss and gradients as ``jax.grad`` of the plain objective
(otherwise the table would compare different computations).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from functional_bp import init_mlp, objective
from helpers import assert_tree_close, rtol_for

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name):
    """Import benchmarks/<name>.py without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _load_with_siblings(name):
    """:func:`_load` for a script that imports other benchmark scripts (benchmarks/ on
    sys.path while it is imported only)."""
    sys.path.insert(0, str(BENCH))
    try:
        return _load(name)
    finally:
        sys.path.remove(str(BENCH))


def _problem(loss):
    sizes = [8, 16, 1] if loss == "quadratic" else [6, 9, 7, 4]
    kp, kx, ky = jax.random.split(jax.random.key(3), 3)
    params = init_mlp(kp, sizes)
    x = jax.random.normal(kx, (11, sizes[0]))
    if loss == "quadratic":
        y = jax.random.normal(ky, (11, 1))
    else:
        y = jax.nn.one_hot(jax.random.randint(ky, (11,), 0, sizes[-1]), sizes[-1])
    acts = ("tanh", "relu", "identity")[-(len(sizes) - 1):]
    return params, x, y, acts


def _reference(params, x, y, acts, loss):
    return jax.value_and_grad(
        lambda p: objective(p, (x, y), activations=acts, loss=loss)
    )(params)


@pytest.mark.parametrize("loss", ["quadratic", "softmax_cross_entropy"])
def test_numpy_baseline_matches_jax_grad(loss):
    numpy_mlp = _load("numpy_mlp")
    params, x, y, acts = _problem(loss)
    J_ref, g_ref = _reference(params, x, y, acts, loss)
    J, g = numpy_mlp.value_and_grad(
        jax.tree.map(np.asarray, params), np.asarray(x), np.asarray(y),
        activations=acts, loss=loss,
    )
    assert g[0]["W"].dtype == np.float32
    assert_tree_close(J, J_ref, rtol_for(np.float32), "loss")
    assert_tree_close(g, g_ref, rtol_for(np.float32), "grads")


@pytest.mark.parametrize("loss", ["quadratic", "softmax_cross_entropy"])
def test_torch_baseline_matches_jax_grad(loss):
    pytest.importorskip("torch")
    torch_mlp = _load("torch_mlp")
    params, x, y, acts = _problem(loss)
    J_ref, g_ref = _reference(params, x, y, acts, loss)
    step, _ = torch_mlp.make_step(
        jax.tree.map(np.asarray, params), np.asarray(x), np.asarray(y),
        activations=acts, loss=loss, threads=1,
    )
    J, grads = step()
    assert_tree_close(float(J.detach()), J_ref, rtol_for(np.float32), "loss")
    assert_tree_close(torch_mlp.to_params(grads), g_ref, rtol_for(np.float32), "grads")


def test_step_flops_counts_the_matmuls():
    grad_step = _load_with_siblings("grad_step")
    # [2, 3, 4] with m = 5: forward 2*5*(6+12), dW 2*5*(6+12), G W^T for layer 2 only 2*5*12
    assert grad_step.step_flops([2, 3, 4], 5) == 2 * 5 * (18 + 18 + 12)


def test_write_block_replaces_its_own_label_only(tmp_path):
    report = _load("report")
    out = tmp_path / "RESULTS.md"
    report.write_block(out, "cpu", "first cpu")
    report.write_block(out, "gpu", "the gpu")
    report.write_block(out, "cpu", "second cpu")
    text = out.read_text()
    assert text.startswith(report.HEADER)
    assert "second cpu" in text and "first cpu" not in text and "the gpu" in text
    assert text.count("<!-- run:cpu begin -->") == 1
    assert text.index("run:cpu begin") < text.index("run:gpu begin")


def test_timing_compare_alternates_every_implementation():
    timing = _load("timing")
    calls = []
    t = timing.compare(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        warmup=1, blocks=3, reps=2, min_sample_s=0.0, seed=1,
    )
    assert [len(t[k].blocks) for k in "ab"] == [3, 3]
    assert all(len(b) == 2 for k in "ab" for b in t[k].blocks)
    assert t["a"].number == t["b"].number == 1
    assert calls.count("a") == calls.count("b")


def test_harness_runs_at_the_tiny_shape(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [
        sys.executable, str(BENCH / "run.py"), "--shapes", "tiny",
        "--sections", "grad-step,scan", "--blocks", "2", "--reps", "1", "--warmup", "1",
        "--min-sample-s", "0.001", "--compile-reps", "1", "--peak-n", "64",
        "--torch-threads", "1", "--label", "smoke", "--out", str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- run:smoke begin -->" in text and "<!-- run:smoke end -->" in text
    for heading in ("### Targets", "### One gradient step", "### Compiled programs",
                    "### First call", "SGD steps at the tiny shape"):
        assert heading in text, heading
    assert "| tiny | [8, 16, 1] / 32 |" in text
    assert "--shapes tiny" in text  # the exact command is recorded


def test_bench_command_finds_the_script_in_a_checkout():
    from functional_bp import bench

    assert bench.find_script() == BENCH / "run.py"


def test_bench_command_explains_a_missing_checkout(monkeypatch, capsys):
    from functional_bp import bench

    monkeypatch.setattr(bench, "find_script", lambda: None)
    assert bench.main(["--shapes", "tiny"]) == 2
    assert "benchmarks/run.py was not found" in capsys.readouterr().err


def test_cli_passes_every_bench_argument_to_the_harness():
    from functional_bp.cli import build_parser

    argv = ["bench", "--shapes", "tiny", "--help", "--out", "x.md"]
    args = build_parser()[0].parse_args(argv)
    assert args.command == "bench" and args.bench_args == argv[1:]


def test_gpt_bench_counts_the_flops_of_each_dot():
    gpt_bench = _load_with_siblings("gpt_bench")
    a, b = jax.numpy.ones((3, 4)), jax.numpy.ones((2, 4, 5))
    text = jax.jit(lambda a, b: jax.numpy.einsum("ik,jkl->jil", a, b)).lower(a, b).compile().as_text()
    dots = gpt_bench.dot_inventory(text)
    assert sum(dots.values()) == 1
    assert sum(f * n for (_, _, _, f), n in dots.items()) == 2 * 2 * 3 * 5 * 4  # 2 (batch) 3 5 k=4


def test_gpt_bench_runs_at_the_tiny_shape(tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(BENCH / "gpt_bench.py"), "--shapes", "tiny", "--blocks", "1",
           "--reps", "1", "--warmup", "0", "--min-sample-s", "0", "--vmap-blocks", "1",
           "--cpu-steps", "1", "--label", "smoke", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "<!-- run:smoke begin -->" in text and "<!-- run:smoke end -->" in text
    assert "### Shape `tiny`" in text and "--shapes tiny" in text
    for row in ("| ours / `jax.value_and_grad` ≤ 1.05 |", "| train step: ours |",
                "| vmap(grad) + clip |", "| train step: jax.value_and_grad |"):
        assert row in text, row
    # the implementations compute the same numbers, or the timings compare nothing
    assert "vs jax.value_and_grad |" in text and "vs vmap(grad) + clip |" in text
    assert "above 2e-5" not in text


def test_dp_peers_runs_on_the_tiny_gpt_and_cnn(tmp_path):
    """The GPT and CNN rows of dp_peers.py, end to end; torch, opacus and jax-privacy optional."""
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(BENCH / "dp_peers.py"), "--networks", "gpt-tiny", "mnist1d-cnn",
           "--batch", "3", "--blocks", "1", "--warmup", "0", "--min-sample-s", "0",
           "--settle-s", "-1", "--label", "smoke", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for mark in ("begin", "end"):
        assert f"<!-- run:smoke, GPT and CNNs {mark} -->" in text
    assert "<!-- run:smoke begin -->" not in text  # no MLP asked for, no MLP block
    assert "--networks gpt-tiny mnist1d-cnn" in text  # the exact command is recorded
    for name in ("gpt-tiny", "mnist1d-cnn"):
        assert f"### {name}: " in text, name
        # every implementation that ran computed the reference's numbers, or the times mean nothing
        assert f"| {name}: every implementation agrees within 2e-05 | all | yes |" in text, name
    for row in ("| functional_bp.clipped_grad | ", "| step: functional_bp.clipped_grad | ",
                "| jax.vmap(jax.grad) + clip | ", "| functional_bp.value_and_grad (non-private) | "):
        assert text.count(row) == 2, row
    assert "e-0" in text.split("| functional_bp.clipped_grad | ")[1].split("\n")[0]  # its error
    for package in ("torch", "jax_privacy"):
        if importlib.util.find_spec(package) is None:
            print(f"note: {package} is not installed here: its rows were skipped")
            assert f"{package} is not installed" in text
