"""The command line with --model: named networks and text stacks are trained through
fit(network=), their checkpoints record the network, --resume and check rebuild it."""

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_bp as fbp
from functional_bp import models
from functional_bp import layers as fl
from functional_bp.checkpoint import load_checkpoint
from functional_bp.cli import main
from functional_bp.models import MODELS, build
from functional_bp.train import init_state, save_state

# a narrow residual MLP keeps each epoch short; the rest of the run is the defaults
RESMLP = ["--data", "digits", "--model", "resmlp width=16 blocks=1", "--batch-size", "64",
          "--quiet", "--save-every", "0"]
TEXT = "dense 16, tanh, res(layernorm, dense 16, relu), dense 10"


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage:" in err and "Traceback" not in err
    return err


def _train(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["train", *args, "--out", str(out)]) == 0
    return out


def _assert_same_checkpoint(a, b):
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a.network == b.network
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert sorted(a.extra) == sorted(b.extra)
    for k in a.extra:
        np.testing.assert_array_equal(a.extra[k], b.extra[k])


def test_resmlp_writes_a_network_checkpoint_that_resumes_exactly_and_checks(tmp_path,
                                                                            capsys):
    full = _train(tmp_path, "full", *RESMLP, "--epochs", "2")
    half = _train(tmp_path, "half", *RESMLP, "--epochs", "1")
    ckpt = load_checkpoint(half / "params.npz")
    assert isinstance(ckpt.network, fl.Sequential)
    assert any(isinstance(layer, fl.Residual) for layer in ckpt.network.layers)
    assert ckpt.metadata["config"]["model"] == "resmlp width=16 blocks=1"
    assert ckpt.network == models.resmlp(10, width=16, blocks=1)
    assert ckpt.metadata["input_shape"] == [64]
    metrics = json.loads((half / "metrics.json").read_text())
    assert metrics["network"] == fl.to_config(ckpt.network) and metrics["sizes"] is None
    assert metrics["n_params"] == sum(a.size for a in jax.tree_util.tree_leaves(ckpt.params))

    # --resume rebuilds the network from the checkpoint: no --model restated
    more = _train(tmp_path, "more", "--resume", str(half / "params.npz"), "--epochs", "1",
                  "--quiet")
    _assert_same_checkpoint(full / "params.npz", more / "params.npz")
    history = json.loads((more / "metrics.json").read_text())["history"]
    assert history == json.loads((full / "metrics.json").read_text())["history"]

    # the check rebuilds it too; leaves inside the residual blocks are named by path
    capsys.readouterr()
    assert main(["check", str(more / "params.npz")]) == 0
    out = capsys.readouterr().out
    assert "--model resmlp width=16 blocks=1" in out and "PASS" in out and "dJ/dX" in out
    assert any(line.startswith("layer ") and "." in line.split()[1]
               for line in out.splitlines())
    assert main(["check", str(more / "params.npz"), "--data", "digits", "--float64",
                 "--batch", "16"]) == 0
    assert "16 rows of digits" in capsys.readouterr().out

    # restating the dense chain's options, or another model, is refused
    for extra, option in [(["--hidden", "8"], "--hidden"),
                          (["--model", "mlp"], "--model")]:
        err = _usage_error(capsys, ["train", "--resume", str(half / "params.npz"), *extra,
                                    "--out", str(tmp_path / "x")])
        assert f"argument {option}" in err


def test_text_model_trains_and_the_dense_chain_options_are_refused_with_it(tmp_path,
                                                                           capsys):
    run = _train(tmp_path, "text", "--data", "digits", "--model", TEXT, "--epochs", "1",
                 "--quiet", "--batch-size", "128")
    ckpt = load_checkpoint(run / "params.npz")
    assert ckpt.metadata["config"]["model"] == TEXT
    assert [type(layer).__name__ for layer in ckpt.network.layers][:3] == [
        "Dense", "Activation", "Residual"]
    for extra, option in [(["--hidden", "8"], "--hidden"),
                          (["--activation", "tanh"], "--activation"),
                          (["--init", "glorot"], "--init")]:
        err = _usage_error(capsys, ["train", "--model", "resmlp", *extra,
                                    "--out", str(tmp_path / "x")])
        assert f"argument {option}" in err and "--model" in err


def test_named_model_options_reach_the_network(tmp_path):
    run = _train(tmp_path, "small", "--data", "digits", "--model",
                 "resmlp width=12 blocks=1 activation=tanh", "--epochs", "1", "--quiet")
    net = load_checkpoint(run / "params.npz").network
    assert net == models.resmlp(10, width=12, blocks=1, activation="tanh")
    assert sum(isinstance(layer, fl.Residual) for layer in net.layers) == 1


@pytest.mark.parametrize("text", ["dense", "dense 16, swish", "res(dense 16", "nosuchmodel",
                                  "dense 16, relu, dense 16", "resmlp depth=3",
                                  "mlp hidden=64,x", "cnn channels=0"])
def test_a_bad_model_is_a_usage_error_naming_model(tmp_path, capsys, text):
    """Unknown words, missing widths, unclosed blocks, a stack whose output does not fit
    the data's 10 classes, unknown or malformed options of a named model: exit 2, naming
    --model, before any training."""
    err = _usage_error(capsys, ["train", "--model", text, "--epochs", "1", "--quiet",
                                "--out", str(tmp_path / "x")])
    assert "argument --model" in err
    assert not (tmp_path / "x" / "params.npz").exists()


def test_a_model_with_dropout_trains_checks_with_its_masks_and_refuses_devices(tmp_path,
                                                                              capsys):
    text = "dense 8, relu, dropout 0.3, dense 2"
    run = _train(tmp_path, "drop", "--data", "xor", "--model", text, "--epochs", "2",
                 "--quiet")
    assert any(isinstance(layer, fl.Dropout)
               for layer in load_checkpoint(run / "params.npz").network.layers)
    capsys.readouterr()
    assert main(["check", str(run / "params.npz"), "--float64"]) == 0
    out = capsys.readouterr().out
    assert "dropout on" in out and "PASS" in out
    err = _usage_error(capsys, ["train", "--data", "xor", "--model", text, "--devices", "2",
                                "--out", str(tmp_path / "x")])
    assert "argument --devices" in err and "Dropout" in err


VECTOR_MODELS = [name for name in MODELS if not build(name, 10).integer_input]
"""The named models that take real vectors (a token model such as gpt has its own tests)."""


@pytest.mark.parametrize("name", VECTOR_MODELS)
def test_check_a_random_named_model(name, capsys):
    assert main(["check", "--model", name, "--input-shape", "40", "--outputs", "10",
                 "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert f"--model {name}" in out and "PASS" in out


def test_check_model_argument_errors(tmp_path, capsys):
    for argv, option in [
        (["check", "--model", "resmlp", "--sizes", "4", "3"], "--sizes"),
        (["check", "--input-shape", "8"], "--input-shape"),
        (["check", "--model", "dense 16, relu, dense 16"], "--model"),
    ]:
        assert f"argument {option}" in _usage_error(capsys, argv)


@dataclasses.dataclass(frozen=True)
class DenseForgetsTranspose(fl.Dense):
    """A square Dense whose backward returns G W, not G W^T, for dJ/dA."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, dy @ params["W"]


if hasattr(fl, "register"):  # a checkpoint rebuilds registered layer types only
    fl.register(DenseForgetsTranspose, "denseforgetstranspose")


def test_check_fails_on_a_checkpoint_whose_layer_has_a_wrong_backward(tmp_path, capsys):
    """check rebuilds the recorded network (layer types by name) and its report fails."""
    net = fl.Sequential(fl.Dense(6), fl.Activation("tanh"), DenseForgetsTranspose(6),
                        fl.Activation("tanh"), fl.Dense(3))
    params = net.init(jax.random.key(0), (5,))
    opt = optax.adam(1e-3)
    path = tmp_path / "bad.npz"
    save_state(path, init_state(params, optimizer=opt, key=jax.random.key(1)), network=net,
               loss="softmax_cross_entropy", metadata={"input_shape": [5]})
    assert load_checkpoint(path).network == net
    capsys.readouterr()
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    failed = [line.split()[:3] for line in out.splitlines() if line.rstrip().endswith("NO")]
    assert failed == [["layer", "1", "W"], ["layer", "1", "b"], ["dJ/dX", "(32,", "5)"]]
    assert "FAIL" in out


@pytest.mark.skipif(importlib.util.find_spec("mnist1d") is None,
                    reason="the mnist1d extra is not installed")
def test_mnist1d_cnn_end_to_end(tmp_path, capsys):
    """(m, 40) signals into the 1-D CNN: one epoch, a checkpoint, the check on real rows."""
    out = _train(tmp_path, "cnn", "--data", "mnist1d", "--model", "cnn", "--epochs", "1",
                 "--quiet", "--batch-size", "128")
    ckpt = load_checkpoint(out / "params.npz")
    assert ckpt.metadata["input_shape"] == [40]
    assert any(isinstance(layer, fl.Conv1D) for layer in ckpt.network.leaves())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["n_train"] == 4000 and metrics["test_accuracy"] > 0.1
    x = jnp.zeros((2, 40))
    assert fbp.forward(ckpt.params, x, network=ckpt.network).shape == (2, 10)
    capsys.readouterr()
    assert main(["check", str(out / "params.npz"), "--data", "mnist1d", "--batch", "8"]) == 0
    assert "PASS" in capsys.readouterr().out
