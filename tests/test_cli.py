"""The command line: outputs, resume, the gradient check, and usage errors for bad arguments."""

import json
import subprocess
import sys

import numpy as np
import pytest

from functional_bp.checkpoint import load_checkpoint
from functional_bp.cli import main

SMALL = ["--data", "xor", "--hidden", "8", "--activation", "tanh", "--quiet"]


def _train(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["train", *SMALL, "--out", str(out), *args]) == 0
    return out


def test_train_writes_metrics_params_and_curves(tmp_path, capsys):
    out = _train(tmp_path, "run", "--epochs", "3")
    summary = capsys.readouterr().out
    assert "xor: 3 epochs" in summary and "test acc" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [0, 1, 2, 3]
    assert metrics["test_accuracy"] == metrics["history"][-1]["test_accuracy"]
    assert metrics["config"]["hidden"] == [8] and metrics["sizes"] == [2, 8, 2]
    ckpt = load_checkpoint(out / "params.npz", sizes=[2, 8, 2])
    assert ckpt.metadata["activations"] == ["tanh", "identity"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_run_has_no_accuracy(tmp_path):
    out = tmp_path / "sine"
    assert main(["train", "--data", "sine", "--hidden", "8", "--epochs", "2", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["config"]["loss"] == "mse"
    assert (out / "curves.png").exists()


def test_resume_from_the_command_line_is_exact(tmp_path):
    full = _train(tmp_path, "full", "--epochs", "4")
    half = _train(tmp_path, "half", "--epochs", "2")
    more = tmp_path / "more"
    assert main(["train", "--resume", str(half / "params.npz"), "--epochs", "2", "--quiet",
                 "--out", str(more)]) == 0
    a, b = load_checkpoint(full / "params.npz"), load_checkpoint(more / "params.npz")
    for la, lb in zip(a.params, b.params):
        for k in ("W", "b"):
            np.testing.assert_array_equal(np.asarray(la[k]), np.asarray(lb[k]))
    for k in a.extra:
        np.testing.assert_array_equal(a.extra[k], b.extra[k])
    history = json.loads((more / "metrics.json").read_text())["history"]
    assert history == json.loads((full / "metrics.json").read_text())["history"]


def test_defaults_reach_97_percent_on_digits(tmp_path):
    out = tmp_path / "digits"
    assert main(["train", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "digits" and metrics["config"]["epochs"] == 50
    assert metrics["test_accuracy"] >= 0.97


def test_check_a_trained_checkpoint_and_a_random_network(tmp_path, capsys):
    out = _train(tmp_path, "run", "--epochs", "1")
    capsys.readouterr()
    assert main(["check", str(out / "params.npz")]) == 0
    table = capsys.readouterr().out
    for leaf in ("layer 1 W", "layer 1 b", "layer 2 W", "layer 2 b"):
        assert leaf in table
    assert "PASS" in table
    assert main(["check", "--sizes", "4", "6", "5", "3", "--activation", "gelu", "elu",
                 "--loss", "sigmoid_cross_entropy", "--float64"]) == 0
    table = capsys.readouterr().out
    assert "layer 3 b" in table and "float64" in table and "PASS" in table


def test_python_dash_m_runs_the_cli(tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "functional_bp", "train", *SMALL, "--epochs",
                        "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.json", "params.npz"]


@pytest.mark.parametrize(
    "argv, option",
    [
        ([], "COMMAND"),
        (["fly"], "COMMAND"),
        (["train", "--hidden", "8", "x"], "--hidden"),
        (["train", "--hidden", "0"], "--hidden"),
        (["train", "--epochs", "-1"], "--epochs"),
        (["train", "--lr", "0"], "--lr"),
        (["train", "--lr", "fast"], "--lr"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--test-fraction", "1.5"], "--test-fraction"),
        (["train", "--optimizer", "rmsprop"], "--optimizer"),
        (["train", "--activation", "swish"], "--activation"),
        (["train", "--loss", "hinge"], "--loss"),
        (["train", "--data", "missing.npz"], "--data"),
        (["train", "--data", "mnist"], "--data"),
        (["train", "--hidden", "8", "8", "--activation", "relu", "tanh", "elu"], "--activation"),
        (["train", "--resume", "missing.npz"], "--resume"),
        (["check", "missing.npz"], "checkpoint"),
        (["check", "--sizes", "3"], "--sizes"),
        (["check", "--sizes", "3", "4", "2", "--activation", "relu", "relu"], "--activation"),
    ],
)
def test_bad_arguments_give_a_usage_error_naming_the_argument(argv, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path)] if argv[:1] == ["train"] else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and option in err and "Traceback" not in err


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    run = _train(tmp_path, "run", "--epochs", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run / "params.npz"), "--hidden", "16", "--quiet",
              "--out", str(tmp_path / "again")])
    assert "--hidden" in capsys.readouterr().err
