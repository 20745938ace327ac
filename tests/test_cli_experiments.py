"""Options for real experiments: validation and early stopping, schedules, --steps,
check on the user's data, --help defaults, and docs/cli.md in sync with --help."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp.checkpoint import load_checkpoint
from functional_bp.datasets import load_dataset
from functional_bp.cli import build_parser, main
from functional_bp.train import EarlyStopping, fit, init_state, make_optimizer, make_schedule, sgd

SMALL = ["--data", "xor", "--hidden", "4", "--activation", "tanh", "--quiet"]
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cli.md")


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_fit_callback_stops_and_early_stopping_keeps_the_best_state():
    data = load_dataset("moons", val_fraction=0.25)
    opt = sgd(2.0)  # large steps: the validation loss goes up and down
    state0 = init_state(fbp.init_mlp(jax.random.key(0), [2, 16, 2]), optimizer=opt,
                        key=jax.random.key(1))
    kw = dict(activations=["tanh", "identity"], loss="softmax_cross_entropy", optimizer=opt,
              batch_size=32)
    seen = []
    state, history = fit(state0, (data.x_train, data.y_train), epochs=10,
                         callback=lambda r: seen.append(r) or r["epoch"] == 3, **kw)
    assert state.epoch == 3 and [r["epoch"] for r in history] == [0, 1, 2, 3] == \
        [r["epoch"] for r in seen]

    stop = EarlyStopping(patience=2)
    state, history = fit(state0, (data.x_train, data.y_train), (data.x_test, data.y_test),
                         val=(data.x_val, data.y_val), epochs=60, callback=stop, **kw)
    val = [r["val_loss"] for r in history]
    best = int(np.argmin(val))
    assert stop.best_record["epoch"] == best == stop.best_state.epoch
    assert state.epoch < 60 and state.epoch - best == 2  # stopped 2 epochs after the best
    # the kept state is the best epoch's: re-evaluating it gives the recorded val loss
    again = fbp.train.evaluate(stop.best_state.params, (data.x_val, data.y_val),
                               activations=kw["activations"], loss=kw["loss"])
    np.testing.assert_allclose(again["loss"], val[best], rtol=1e-5)
    with pytest.raises(ValueError, match="pass val="):
        fit(state0, (data.x_train, data.y_train), epochs=1, callback=EarlyStopping(2), **kw)


def test_val_fraction_and_patience_keep_and_save_the_best_epoch(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "moons", "--hidden", "16", "--activation", "tanh",
                 "--quiet", "--optimizer", "sgd", "--lr", "2", "--val-fraction", "0.25",
                 "--patience", "2", "--epochs", "60", "--out", str(out)]) == 0
    m = _metrics(out)
    val = [r["val_loss"] for r in m["history"]]
    best = int(np.argmin(val))
    assert m["status"] == "stopped early" and m["config"]["epochs"] == best + 2 < 60
    assert m["best_epoch"] == best and m["dataset"]["n_val"] == 80
    assert m["test_accuracy"] == m["history"][best]["test_accuracy"]  # the best epoch's
    assert load_checkpoint(out / "best.npz").metadata["epoch"] == best
    assert load_checkpoint(out / "params.npz").metadata["epoch"] == best + 2  # resumable


def test_schedules_match_their_formulas():
    lr, T = 0.1, 100
    cos = make_schedule("cosine", lr, total_steps=T, final_fraction=0.1)
    for t in (0, 30, 100, 150):
        want = lr * (0.1 + 0.9 * (1 + math.cos(math.pi * min(t, T) / T)) / 2)
        np.testing.assert_allclose(float(cos(t)), want, rtol=1e-6)
    exp = make_schedule("exponential", lr, total_steps=T, decay_rate=0.1)
    np.testing.assert_allclose([float(exp(t)) for t in (0, 50, 100)],
                               [lr, lr * 0.1 ** 0.5, lr * 0.1], rtol=1e-6)
    warm = make_schedule("warmup-cosine", lr, total_steps=T, warmup_steps=10)
    np.testing.assert_allclose([float(warm(t)) for t in (0, 5, 10, 100)],
                               [0.0, lr / 2, lr, 0.0], atol=1e-8)
    assert make_schedule("constant", lr) == lr
    # sgd with a schedule is optax's sgd with it: one step uses eta(0), the next eta(1)
    g = {"w": np.ones(3, np.float32)}
    ours = make_optimizer("sgd", warm)
    s = ours.init(g)
    for t in range(3):
        u, s = ours.update(g, s, g)
        np.testing.assert_allclose(u["w"], -float(warm(t)) * g["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        make_schedule("warmup-cosine", lr, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="needs total_steps"):
        make_schedule("cosine", lr)


def test_steps_and_a_schedule_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"  # xor: 320 training rows, batch 32: 10 steps per epoch
    assert main(["train", *SMALL, "--steps", "25", "--schedule", "warmup-cosine",
                 "--warmup-steps", "5", "--out", str(out)]) == 0
    assert "rounded up to 3 whole epochs of 10 steps = 30 steps" in capsys.readouterr().err
    m = _metrics(out)
    assert m["config"]["epochs"] == 3 and m["config"]["schedule_steps"] == 30
    assert m["config"]["schedule"] == "warmup-cosine" and m["config"]["warmup_steps"] == 5
    # the optimizer state's step count is the number of steps taken
    counts = [v for k, v in load_checkpoint(out / "params.npz").extra.items()
              if k.startswith("opt/") and v.dtype == np.int32 and v.shape == ()]
    assert counts and all(int(c) == 30 for c in counts)
    # resuming keeps the schedule's horizon: 1 more epoch runs steps 30..39 on the tail
    assert main(["train", "--resume", str(out / "params.npz"), "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "more")]) == 0
    assert _metrics(tmp_path / "more")["config"]["schedule_steps"] == 30


@pytest.mark.parametrize("argv, option", [
    (["--epochs", "2", "--steps", "10"], "--steps"),
    (["--patience", "3"], "--patience"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--schedule", "linear"], "--schedule"),
    (["--decay-rate", "0"], "--decay-rate"),
    (["--final-lr-fraction", "2"], "--final-lr-fraction"),
    (["--schedule", "warmup-cosine", "--epochs", "1", "--warmup-steps", "500"], "--warmup-steps"),
    (["--save-every", "-1"], "--save-every"),
    (["--split-seed", "x"], "--split-seed"),
])
def test_new_options_give_usage_errors(tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


def test_check_on_the_users_own_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out / "params.npz"), "--data", "xor", "--batch", "16"]) == 0
    report = capsys.readouterr().out
    assert "16 rows of xor" in report and "PASS" in report
    assert main(["check", "--data", "sine", "--float64"]) == 0  # a random network [1, 32, 1]
    report = capsys.readouterr().out
    assert "layer 2 W  (32, 1)" in report and "loss mse" in report and "PASS" in report
    for argv, option, words in [
        (["check", str(out / "params.npz"), "--data", "digits"], "--data", "64 features"),
        (["check", "--data", "xor", "--sizes", "2", "4", "1"], "--data", "2 classes"),
        (["check", "--task", "regression"], "--task", "goes with --data"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument {option}" in err and words in err


def _options(name):
    parser, subparsers = build_parser()
    return [a for a in subparsers[name]._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", ["train", "check"])
def test_help_states_every_default(command, capsys):
    for action in _options(command):
        assert re.search(r"\[[^\]]+\]\s*$", action.help or ""), \
            f"{command} {action.option_strings[0]}: no [default] in {action.help!r}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "[0.001]" in capsys.readouterr().out or command == "check"


@pytest.mark.parametrize("command", ["train", "check"])
def test_docs_options_table_lists_every_option(command):
    text = open(DOCS).read()
    heading = f"<!-- options:{command} -->"
    assert heading in text, f"docs/cli.md has no {heading} table"
    table = text.split(heading, 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"`(--[a-z0-9-]+)", table))
    options = {s for a in _options(command) for s in a.option_strings if s.startswith("--")}
    assert options - documented == set(), f"missing from docs/cli.md: {options - documented}"
    assert documented - options == set(), f"not options of {command}: {documented - options}"
