"""Recipes (--recipe), the library behind the command line, and token data for an Embedding."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from functional_bp import experiment, recipes
from functional_bp.checkpoint import load_checkpoint, read_metadata
from functional_bp.cli import build_parser, main

HAS_MNIST1D = importlib.util.find_spec("mnist1d") is not None


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("name", recipes.names())
def test_every_shipped_recipe_reads_as_train_options(name):
    recipe = recipes.load(name)
    assert recipe.reproduces and recipe.settings and recipe.name == name
    parsed = build_parser()[1]["train"].parse_args(recipe.argv()[1:])
    for key, value in recipe.settings.items():  # the options' own types give the same values
        assert getattr(parsed, key) == value, (key, getattr(parsed, key), value)
    assert parsed.epochs == recipe.epochs


def test_the_published_tables_have_their_recipes():
    names = set(recipes.names())
    cells = {f"{d}-dp-eps{e}" for d in ("digits", "mnist1d") for e in (1, 3, 8)}
    rows = {"mnist1d-logistic", "mnist1d-mlp", "mnist1d-cnn"}
    assert {"digits", "digits-nonprivate", "mnist1d-nonprivate"} | cells | rows <= names


def test_recipe_list_prints_each_recipe_and_what_it_reproduces(capsys):
    assert main(["train", "--recipe", "list"]) == 0
    out = capsys.readouterr().out
    for name in recipes.names():
        assert f"{name}\n    reproduces: {recipes.load(name).reproduces}" in out
    assert "functional-bp train --data mnist1d --model cnn" in out


def test_options_override_the_recipe_and_the_recipe_is_recorded(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--recipe", "digits-nonprivate", "--seed", "1", "--epochs", "1",
                 "--lr", "0.02", "--quiet", "--out", str(out)]) == 0
    assert "digits: 1 epoch (finished)" in capsys.readouterr().out  # not "1 epochs"
    config = _metrics(out)["config"]
    recipe = recipes.load("digits-nonprivate")
    assert config["recipe"] == "digits-nonprivate" and config["seed"] == 1
    assert config["lr"] == 0.02 != recipe.settings["lr"]               # the option wins
    assert config["batch_size"] == recipe.settings["batch_size"]      # the recipe's
    assert config["epochs"] == 1 != recipe.epochs
    assert read_metadata(out / "params.npz")["config"]["recipe"] == "digits-nonprivate"
    err = _usage_error(capsys, ["train", "--recipe", "digits", "--resume",
                                str(out / "params.npz"), "--out", str(out)])
    assert "argument --recipe" in err and "drop --recipe" in err
    err = _usage_error(capsys, ["train", "--recipe", "no-such", "--out", str(out)])
    assert "argument --recipe" in err and "mnist1d-cnn" in err


def test_a_recipe_is_one_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny-xor.toml").write_text(
        'reproduces = "a test"\nseeds = [0]\n\n[train]\ndata = "xor"\nhidden = [4]\n'
        'epochs = 2\n')
    monkeypatch.setattr(recipes, "FOLDER", tmp_path)
    assert recipes.names() == ["tiny-xor"]
    assert main(["train", "--recipe", "tiny-xor", "--quiet", "--out", str(tmp_path / "o")]) == 0
    metrics = _metrics(tmp_path / "o")
    assert metrics["sizes"] == [2, 4, 2] and metrics["config"]["epochs"] == 2
    (tmp_path / "bad.toml").write_text('reproduces = "x"\n[train]\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="bad.toml.*learning_rate"):
        recipes.load("bad")


def test_the_published_row_names_its_recipe():
    config = {**experiment.TRAIN_DEFAULTS, "data": "mnist1d", "model": "cnn"}
    assert recipes.suggestion(config).name == "mnist1d-cnn"
    assert recipes.suggestion({**experiment.TRAIN_DEFAULTS, "data": "mnist1d", "model": "mlp"}
                              ).name == "mnist1d-mlp"
    assert recipes.suggestion({**experiment.TRAIN_DEFAULTS, "data": "mnist1d",
                               "hidden": []}).name == "mnist1d-logistic"
    same = {**config, **recipes.load("mnist1d-cnn").settings}
    assert recipes.suggestion(same) is None  # already the recipe's settings: no note
    assert recipes.suggestion(experiment.TRAIN_DEFAULTS) is None


@pytest.mark.skipif(not HAS_MNIST1D, reason="the mnist1d extra is not installed")
def test_mnist1d_cnn_without_its_recipe_prints_the_note(tmp_path, capsys):
    assert main(["train", "--data", "mnist1d", "--model", "cnn", "--epochs", "0", "--quiet",
                 "--out", str(tmp_path / "c")]) == 0
    assert "note: --recipe mnist1d-cnn reproduces" in capsys.readouterr().err


def test_the_command_line_is_the_library(tmp_path, capsys):
    """train from Python (experiment.run_config + experiment.train) = the same command."""
    argv = ["train", "--data", "xor", "--hidden", "4", "--epochs", "2", "--seed", "3",
            "--lr", "0.01", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    config, _ = experiment.run_config({"data": "xor", "hidden": [4], "seed": 3, "lr": 0.01})
    result = experiment.train(config, out=tmp_path / "py", epochs=2, quiet=True)
    assert result.status == "finished" and result.state.epoch == 2
    a, b = (load_checkpoint(tmp_path / k / "params.npz").params for k in ("cli", "py"))
    for la, lb in zip(a, b):
        for k in la:
            np.testing.assert_array_equal(np.asarray(la[k]), np.asarray(lb[k]))
    with pytest.raises(experiment.ConfigError) as info:
        experiment.run_config({"data": "xor", "model": "cnn", "hidden": [3]})
    assert info.value.option == "hidden" and info.value.flag == "--hidden"


# --- an Embedding-first model on token data ------------------------------------------
@pytest.fixture
def tokens(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (120, 6))
    path = tmp_path / "tokens.npz"
    np.savez(path, X=x, y=(x.sum(1) > 27).astype(int))
    return path


MODEL = "embedding 10 4, flatten, dense 2"


def test_an_embedding_model_trains_on_token_features(tokens, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["train", "--data", str(tokens), "--no-standardize", "--model", MODEL,
                 "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    metrics = _metrics(out)
    assert metrics["status"] == "finished" and len(metrics["history"]) == 3
    assert all(np.isfinite(r["train_loss"]) for r in metrics["history"])
    capsys.readouterr()
    assert main(["check", str(out / "params.npz")]) == 0
    assert "PASS" in capsys.readouterr().out


def test_an_embedding_model_on_other_data_is_a_usage_error(tokens, tmp_path, capsys):
    err = _usage_error(capsys, ["train", "--data", str(tokens), "--model", MODEL,
                                "--out", str(tmp_path / "x")])  # standardized features
    assert "argument --model" in err and "integer token indices in [0, 10)" in err
    assert "--no-standardize" in err
    err = _usage_error(capsys, ["train", "--data", str(tokens), "--no-standardize",
                                "--model", "embedding 5 4, flatten, dense 2",
                                "--out", str(tmp_path / "x")])  # indices past the vocabulary
    assert "argument --data" in err and "[0, 5)" in err and "from 0 to 9" in err
    err = _usage_error(capsys, ["train", "--data", "moons", "--no-standardize",
                                "--model", MODEL, "--out", str(tmp_path / "x")])
    assert "argument --data" in err and "not all whole numbers" in err
