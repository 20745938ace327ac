"""Language models by iterations: the samplers in fit, nanoGPT's and minGPT's AdamW, the runs
from the command line (text and sort), and sampling from a checkpoint. Small generated texts
only."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from functional_bp import experiment, models
from functional_bp.cli import main
from functional_bp.datasets import data_name, is_token_data
from functional_bp.lm import (RandomProblems, RandomWindows, mingpt_optimizer,
                              nanogpt_optimizer)
from functional_bp.text import load_text, nanogpt_lr_schedule, sort_problems
from functional_bp.train import fit, init_state, load_state, matrices, save_state

from helpers import CtrlCAfter, assert_tree_close, rtol_for

pytest.importorskip("optax")

LOSS = "softmax_cross_entropy"


def _text(tmp_path, n=1500, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the cat", "a dog", "sat on", "the mat", "ran far", "big hat"]
    path = tmp_path / "tiny.txt"
    path.write_text(" ".join(rng.choice(words, n // 6)) + "\n", encoding="utf-8")
    return path


def _net(vocab, block=8, dropout=0.0):
    return models.gpt(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=8,
                      dropout=dropout, bias=False)


# ------------------------------------------------------------------------ the optimizers
def test_nanogpt_adamw_decays_only_the_leaves_with_two_or_more_axes():
    net = models.gpt(vocab_size=7, block_size=4, n_layer=1, n_head=2, n_embd=8)  # with biases
    params = net.init(jax.random.key(0), (4,))
    mask = jax.tree_util.tree_leaves(matrices(params))
    assert any(mask) and not all(mask)  # embeddings, kernels; and biases, LayerNorm gains
    opt = nanogpt_optimizer(1e-3, warmup_iters=100, lr_decay_iters=2000)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)  # step 0: only the decay moves
    lr0 = float(nanogpt_lr_schedule(1e-3, warmup_iters=100, lr_decay_iters=2000,
                                    min_lr=1e-4)(0))
    expected = jax.tree.map(lambda p, m: -lr0 * 0.1 * p if m else jnp.zeros_like(p), params,
                            matrices(params))
    assert_tree_close(updates, expected, rtol_for(jnp.float32))
    for u, m in zip(jax.tree_util.tree_leaves(updates), mask):
        assert (float(jnp.abs(u).max()) > 0) == m


def test_mingpt_adamw_has_minGPTs_betas_and_decays_only_matrices():
    params = [{"W": jnp.full((3, 4), 2.0), "b": jnp.full((4,), 2.0)}]
    opt = mingpt_optimizer(5e-4)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    assert_tree_close(updates, [{"W": -5e-4 * 0.1 * params[0]["W"], "b": jnp.zeros(4)}],
                      rtol_for(jnp.float32))
    g1 = [{"W": jnp.ones((3, 4)), "b": jnp.ones(4)}]
    g2 = [{"W": -jnp.ones((3, 4)), "b": jnp.ones(4)}]
    s = opt.init(params)
    _, s = opt.update(jax.tree.map(lambda a: a * 0.1, g1), s, params)   # norm 0.4: not clipped
    u, _ = opt.update(jax.tree.map(lambda a: a * 0.1, g2), s, params)
    # b after two steps of gradient 0.1: m = (1-b1)(0.1 b1 + 0.1), v = (1-b2)(0.01 b2 + 0.01),
    # each bias-corrected
    b1, b2 = 0.9, 0.95
    m = (1 - b1) * (0.1 * b1 + 0.1) / (1 - b1 ** 2)
    v = (1 - b2) * (0.01 * b2 + 0.01) / (1 - b2 ** 2)
    np.testing.assert_allclose(float(u[0]["b"][0]), -5e-4 * m / (np.sqrt(v) + 1e-8), rtol=2e-5)


def test_the_gradient_is_clipped_to_global_norm_one_before_adamw():
    params = [{"W": jnp.ones((2, 2)), "b": jnp.ones(2)}]
    g1 = [{"W": jnp.array([[6.0, 0.0], [0.0, 0.0]]), "b": jnp.array([0.0, 8.0])}]  # norm 10
    g2 = [{"W": jnp.full((2, 2), 0.1), "b": jnp.full((2,), 0.1)}]  # norm 0.24, every entry

    def run(opt, grads):
        s, out = opt.init(params), None
        for g in grads:
            out, s = opt.update(g, s, params)
        return out

    kw = dict(warmup_iters=1, lr_decay_iters=10, weight_decay=0.0)
    clipped = run(nanogpt_optimizer(1e-3, grad_clip=1.0, **kw), [g1, g2])
    by_hand = run(nanogpt_optimizer(1e-3, grad_clip=None, **kw),
                  [jax.tree.map(lambda a: a / 10, g1), g2])   # g1 scaled to norm 1, g2 kept
    unclipped = run(nanogpt_optimizer(1e-3, grad_clip=None, **kw), [g1, g2])
    assert_tree_close(clipped, by_hand, rtol_for(jnp.float32))
    # the wrong twin: without the clip, step 1's large gradient weighs more against step 2's
    assert not np.allclose(np.asarray(clipped[0]["b"]), np.asarray(unclipped[0]["b"]),
                           rtol=1e-2)


# ------------------------------------------------------------------------ the samplers
def _window_run(tmp_path, dropout=0.0):
    corpus = load_text(_text(tmp_path))
    net = _net(corpus.vocab_size, dropout=dropout)
    opt = nanogpt_optimizer(1e-2, warmup_iters=2, lr_decay_iters=30)
    state = init_state(net.init(jax.random.key(0), (8,)), optimizer=opt, key=jax.random.key(1))
    kw = dict(network=net, loss=LOSS, optimizer=opt)
    return corpus, net, opt, state, kw


def _sampler(max_iters=30):
    return RandomWindows(batch_size=4, block_size=8, max_iters=max_iters, eval_interval=10,
                         eval_iters=3)


def test_the_window_sampler_records_iterations_and_both_splits(tmp_path):
    corpus, net, opt, state, kw = _window_run(tmp_path)
    seen = []
    state, history = fit(state, corpus.train, val=corpus.val, **kw,
                         sampler=RandomWindows(batch_size=4, block_size=8, max_iters=25,
                                               eval_interval=10, eval_iters=3),
                         callback=lambda r, state: seen.append(state.epoch))
    assert [r["iter"] for r in history] == [0, 10, 20, 25] == seen and state.epoch == 25
    assert all(set(r) == {"iter", "train_loss", "val_loss"} for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert abs(history[0]["train_loss"] - np.log(corpus.vocab_size)) < 0.2  # untrained: uniform


def test_an_iteration_run_resumes_exactly_through_a_checkpoint(tmp_path):
    corpus, net, opt, state0, kw = _window_run(tmp_path, dropout=0.1)
    full, history = fit(state0, corpus.train, val=corpus.val, **kw, sampler=_sampler())
    half, first = fit(state0, corpus.train, val=corpus.val, **kw, epochs=10, sampler=_sampler())
    assert half.epoch == 10 and [r["iter"] for r in first] == [0, 10]
    save_state(tmp_path / "run.npz", half, network=net, loss=LOSS)
    resumed, _ = load_state(tmp_path / "run.npz", optimizer=opt)
    resumed, rest = fit(resumed, corpus.train, val=corpus.val, **kw, sampler=_sampler())
    assert resumed.epoch == 30 and rest == history[2:]
    for u, v in zip(jax.tree_util.tree_leaves(resumed.params),
                    jax.tree_util.tree_leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    other, _ = fit(state0._replace(key=jax.random.key(2)), corpus.train, val=corpus.val, **kw,
                   sampler=_sampler())  # the wrong twin: another key, other params
    assert not np.array_equal(np.asarray(other.params[0]["W"]), np.asarray(full.params[0]["W"]))


def test_the_samplers_refuse_what_they_cannot_train(tmp_path):
    corpus, net, opt, state, kw = _window_run(tmp_path)
    with pytest.raises(ValueError, match="pass the validation tokens as val="):
        fit(state, corpus.train, corpus.val, **kw, sampler=_sampler())
    with pytest.raises(ValueError, match="block_size"):
        fit(state, corpus.train[:5], **kw, sampler=_sampler())
    with pytest.raises(ValueError, match="leave l2 at 0"):
        fit(state, corpus.train, **kw, l2=0.1, sampler=_sampler())
    with pytest.raises(ValueError, match="max_iters must be a positive integer"):
        RandomWindows(batch_size=4, block_size=8, max_iters=0)


def test_the_sort_task_trains_by_random_problems_and_its_loss_falls():
    x, y, xt, yt = sort_problems()
    net = models.gpt(vocab_size=3, block_size=11, n_layer=1, n_head=2, n_embd=16)
    opt = mingpt_optimizer(5e-3)
    state = init_state(net.init(jax.random.key(0), (11,)), optimizer=opt, key=jax.random.key(1))
    state, history = fit(state, (x, y), (xt, yt), network=net, loss=LOSS, optimizer=opt,
                         sampler=RandomProblems(batch_size=32, max_iters=60, eval_interval=30))
    assert [r["iter"] for r in history] == [0, 30, 60]
    assert set(history[-1]) == {"iter", "train_loss", "test_loss"}
    assert history[-1]["test_loss"] < 0.8 * history[0]["test_loss"]


# ------------------------------------------------------------------------ data by name
def test_token_data_keep_their_names_and_are_not_standardized(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data_name("sort") == "sort" and is_token_data("sort")
    assert data_name("text:a.txt") == f"text:{tmp_path / 'a.txt'}"
    assert not is_token_data("digits") and data_name("digits") == "digits"
    config, _ = experiment.run_config({"data": "sort", "model": "gpt"})
    assert config["data"] == "sort"
    data = experiment.load_data(config)  # standardize is on by default: not for tokens
    assert data.x_train.dtype == np.int32 and set(np.unique(data.x_train)) == {0, 1, 2}


# ------------------------------------------------------------------------ the command line
MODEL = "gpt n_layer=1 n_head=2 n_embd=8 block_size=16 bias=False"


def _train_text(tmp_path, *extra):
    path = _text(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--data", f"text:{path}", "--model", MODEL, "--batch-size", "4",
                 "--max-iters", "20", "--warmup-iters", "2", "--eval-interval", "10",
                 "--eval-iters", "2", "--out", str(out), "--quiet", *extra])
    return code, out


def test_a_text_run_from_the_command_line_and_samples_from_it(tmp_path, capsys):
    code, out = _train_text(tmp_path)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["iter"] for e in metrics["evals"]] == [0, 10, 20]
    assert all(set(e) == {"iter", "train_loss", "val_loss"} for e in metrics["evals"])
    assert metrics["val_loss"] == metrics["evals"][-1]["val_loss"]
    assert metrics["train_loss"] == metrics["evals"][-1]["train_loss"]
    assert metrics["train_seconds"] > 0 and metrics["status"] == "finished"
    assert metrics["config"]["lr_decay_iters"] == 20 and metrics["config"]["grad_clip"] == 1.0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    corpus = load_text(tmp_path / "tiny.txt")
    for name in ("params.npz", "best.npz"):
        state, meta = load_state(out / name,
                                 optimizer=nanogpt_optimizer(warmup_iters=2, lr_decay_iters=20))
        assert meta["vocab"] == corpus.vocab
    assert state.epoch == min(metrics["evals"], key=lambda e: e["val_loss"])["iter"]
    capsys.readouterr()
    args = ["sample", "--from", str(out), "--prompt", "the ", "--tokens", "30"]
    assert main(args + ["--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--seed", "1"]) == 0
    again = capsys.readouterr().out
    assert main(args + ["--seed", "2"]) == 0
    other = capsys.readouterr().out
    assert first == again and first != other
    assert first.startswith("the ") and len(first) == len("the ") + 30 + 1
    assert set(first) <= set(corpus.vocab) | {"\n"}


def test_sample_refuses_a_prompt_outside_the_vocabulary(tmp_path, capsys):
    code, out = _train_text(tmp_path)
    assert code == 0
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--from", str(out), "--prompt", "the Zebra!"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--prompt" in err and "'Z'" in err and "'!'" in err and "not in the vocabulary" in err


def test_a_sort_run_from_the_command_line_records_its_test_accuracy(tmp_path):
    out = tmp_path / "sort"
    assert main(["train", "--data", "sort", "--model", "gpt n_layer=1 n_head=2 n_embd=16",
                 "--batch-size", "32", "--lr", "5e-3", "--max-iters", "40",
                 "--eval-interval", "20", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["network"]["layers"][1]["max_length"] == 11  # block_size from the data
    assert [e["iter"] for e in metrics["evals"]] == [0, 20, 40]
    assert metrics["evals"][-1]["test_loss"] < metrics["evals"][0]["test_loss"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["config"]["optimizer"] == "adamw"


def test_the_recipe_needs_its_text_and_says_where_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "shakespeare-char-cpu", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data" in err and "tinyshakespeare/input.txt" in err


def test_options_of_other_runs_are_refused_for_a_language_model(tmp_path, capsys):
    path = _text(tmp_path)
    for extra, flag in ((["--epochs", "3"], "--epochs"), (["--l2", "0.1"], "--l2"),
                        (["--optimizer", "sgd"], "--optimizer")):
        with pytest.raises(SystemExit):
            main(["train", "--data", f"text:{path}", "--model", MODEL, "--out",
                  str(tmp_path / "x"), "--quiet", *extra])
        assert f"argument {flag}" in capsys.readouterr().err


def test_an_interrupted_text_run_resumes_exactly_from_the_command_line(tmp_path, monkeypatch,
                                                                      capsys):
    code, full = _train_text(tmp_path, "--model", "gpt n_layer=1 n_head=2 n_embd=8 "
                             "block_size=16 bias=False dropout=0.1", "--out",
                             str(tmp_path / "full"))
    assert code == 0
    path = tmp_path / "tiny.txt"
    args = ["train", "--data", f"text:{path}", "--model", "gpt n_layer=1 n_head=2 n_embd=8 "
            "block_size=16 bias=False dropout=0.1", "--batch-size", "4", "--max-iters", "20",
            "--warmup-iters", "2", "--eval-interval", "10", "--eval-iters", "2", "--quiet"]
    monkeypatch.setattr(experiment, "Interrupt", CtrlCAfter(2))  # after iteration 10
    assert main(args + ["--out", str(tmp_path / "half")]) == 130
    assert "resume with: functional-bp train --resume" in capsys.readouterr().err
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert half["status"] == "interrupted" and half["iter"] == 10
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "half" / "params.npz"), "--quiet",
                 "--out", str(tmp_path / "rest")]) == 0
    opt = nanogpt_optimizer(warmup_iters=2, lr_decay_iters=20)
    a, _ = load_state(tmp_path / "full" / "params.npz", optimizer=opt)
    b, meta = load_state(tmp_path / "rest" / "params.npz", optimizer=opt)
    assert a.epoch == b.epoch == 20
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    full_m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    rest_m = json.loads((tmp_path / "rest" / "metrics.json").read_text())
    assert rest_m["evals"] == full_m["evals"]
    assert rest_m["train_seconds"] > half["train_seconds"] > 0  # the loop's time, both parts
